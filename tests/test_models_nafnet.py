"""NAFNet, Baseline, TLC, ConditionalNAFNet and NAFFT-Net against the official vectors and by property."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from refusion.official.checkpoints import load_official
from refusion.models import MODELS, Baseline, ConditionalNAFNet, NAFFTNet, NAFNet, build_model
from refusion.models.blocks import LayerNorm2d
from refusion.models.nafft import DOConv2d, EfficientChannelAttention, FFTSkipBlock, eca_kernel_size
from refusion.models.nafnet import LocalAvgPool2d, box_mean, convert_to_local_pooling, local_pooling
from refusion.benchmarks.perf import activate_skip_gains

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = Path(__file__).parent / "data"
SPECS = json.loads((DATA / "networks.json").read_text())
COUNTS = json.loads((DATA / "param_counts.json").read_text())["counts"]
SMALL = dict(width=16, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def rel_err(got, ref) -> float:
    got = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else got
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def official(name: str, cls, **extra):
    """(model loaded from the official state dict, npz arrays, networks.json entry)."""
    spec = SPECS[name]
    kwargs = {k: v for k, v in spec["kwargs"].items() if k not in ("train_size", "fast_imp")}
    model = cls(**kwargs, **extra).eval()
    load_official(model, DATA / spec["files"]["state_dict"])
    return model, np.load(DATA / spec["files"]["io"]), spec


# ------------------------------------------------------------------ NAFNet / Baseline (official)

@pytest.mark.parametrize("name, cls", [("nafnet_small", NAFNet), ("baseline_small", Baseline)])
def test_regressor_matches_official_odd_size(name, cls):
    model, ref, _ = official(name, cls)
    x = torch.from_numpy(ref["input"])
    assert x.shape[-2:] == (37, 45)  # odd sizes: padding and cropping are exercised
    with torch.no_grad():
        assert rel_err(model(x), ref["output"]) < 1e-5
        assert rel_err(model.double()(x.double()), ref["output_f64"]) < 1e-10


def test_tlc_matches_official_local_network():
    model, ref, spec = official("nafnet_local_small", NAFNet)
    x = torch.from_numpy(ref["input"])
    train_size = spec["kwargs"]["train_size"]
    with torch.no_grad():
        global_out = model(x)
        with local_pooling(model, train_size):
            kernels = {n: list(m.kernel_size) for n, m in model.named_modules() if isinstance(m, LocalAvgPool2d)}
            local32 = model(x)
            local64 = model.double()(x.double())
        restored = model.float()(x)
    expected = {e["module"]: e["kernel_size"] for e in spec["avgpool2d_after_convert"]}
    assert kernels == expected
    assert rel_err(local32, ref["output"]) < 1e-5
    assert rel_err(local64, ref["output_f64"]) < 1e-10
    assert rel_err(global_out, ref["output"]) > 1e-4  # 30x the tolerance: the local windows matter
    assert torch.equal(restored, global_out)  # the context manager restores global pooling


def test_tlc_on_input_smaller_than_window_equals_global_pooling():
    model, _, _ = official("nafnet_small", NAFNet)
    x = torch.rand(1, 3, 40, 44)
    with torch.no_grad():
        expected = model(x)
        replaced = convert_to_local_pooling(model, (64, 64))  # window 96 > 40x44 at every level
        got = model(x)
    assert len(replaced) == 5
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_box_mean_equals_brute_force_window_mean():
    x = torch.randn(2, 3, 13, 17, dtype=torch.float64)
    for kernel in [(4, 6), (13, 5), (20, 3)]:
        k1, k2 = min(kernel[0], 13), min(kernel[1], 17)
        valid = F.avg_pool2d(x, (k1, k2), stride=1)
        dh, dw = 13 - valid.shape[-2], 17 - valid.shape[-1]
        expected = F.pad(valid, (dw // 2, (dw + 1) // 2, dh // 2, (dh + 1) // 2), mode="replicate")
        torch.testing.assert_close(box_mean(x, kernel), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(box_mean(x, (13, 17)), x.mean((-2, -1), keepdim=True))


# ------------------------------------------------------------------ ConditionalNAFNet (official)

@pytest.mark.parametrize("name, intro_skip", [("cnafnet_refusion_small", False), ("cnafnet_latent_small", True)])
def test_conditional_nafnet_matches_official(name, intro_skip):
    model, ref, spec = official(name, ConditionalNAFNet, add_intro_skip=intro_skip)
    x_t, mu = torch.from_numpy(ref["x_t"]), torch.from_numpy(ref["cond"])
    t_int, t_vec = spec["t_int"], torch.from_numpy(ref["t_vec"])
    with torch.no_grad():
        for t in (t_int, float(t_int), torch.tensor(t_int)):
            assert rel_err(model(x_t, mu, t), ref["output_t_int"]) < 1e-5
        assert rel_err(model(x_t, mu, t_vec), ref["output_t_vec"]) < 1e-5
        model.double()
        assert rel_err(model(x_t.double(), mu.double(), t_int), ref["output_t_int_f64_ln1e5"]) < 1e-10
        assert rel_err(model(x_t.double(), mu.double(), t_vec), ref["output_t_vec_f64_ln1e5"]) < 1e-10
        model.register_to_config(add_intro_skip=not intro_skip)  # the other variant is another function
        assert rel_err(model(x_t.double(), mu.double(), t_vec), ref["output_t_vec_f64_ln1e5"]) > 1e-3


def test_conditional_nafnet_cond_channels():
    torch.manual_seed(0)
    net = ConditionalNAFNet(img_channel=2, cond_channels=3, **SMALL).eval()
    for p in net.parameters():  # leave skip-init: make every block act
        if torch.all(p == 0):
            p.data.normal_(0, 0.3)
    x_t, mu, cond = torch.rand(2, 2, 11, 9), torch.rand(2, 2, 11, 9), torch.rand(2, 3, 11, 9)
    with torch.no_grad():
        out = net(x_t, mu, torch.tensor([3, 70]), cond=cond)
        other = net(x_t, mu, torch.tensor([3, 70]), cond=cond.flip(-1))
    assert out.shape == x_t.shape and not torch.allclose(out, other)
    with pytest.raises(ValueError, match="cond must have shape"):
        net(x_t, mu, 5)
    with pytest.raises(ValueError, match=r"\(2,\) tensor"):
        net(x_t, mu, torch.tensor([1, 2, 3]), cond=cond)


# ------------------------------------------------------------------ sizes

def meta_count(cls, kwargs) -> int:
    with torch.device("meta"):
        model = cls(**kwargs)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "config",
    [k for k in COUNTS if k.startswith(("NAFNet-", "Baseline-"))]
    + ["ConditionalNAFNet-deshadow", "ConditionalNAFNet-latent-dehazing"],
)
def test_full_size_parameter_counts(config):
    entry = COUNTS[config]
    assert meta_count(MODELS[entry["class_counted"]], entry["kwargs"]) == entry["num_params"]


def test_refusion_counts_are_the_documented_ones():
    assert COUNTS["ConditionalNAFNet-deshadow"]["num_params"] == 76_608_387
    assert COUNTS["ConditionalNAFNet-latent-dehazing"]["num_params"] == 76_617_032
    assert meta_count(ConditionalNAFNet, {}) == 76_608_387  # the defaults are Refusion's network


# ------------------------------------------------------------------ training-time properties

def small_models():
    torch.manual_seed(0)
    return {
        "NAFNet": NAFNet(**SMALL),
        "Baseline": Baseline(**SMALL),
        "NAFFTNet": NAFFTNet(**SMALL),
        "ConditionalNAFNet": ConditionalNAFNet(cond_channels=1, **SMALL),
    }


def run(name, model, x):
    if name == "ConditionalNAFNet":
        return model(x, x.flip(-1), torch.tensor([5, 60]), cond=x[:, :1])
    return model(x)


def test_gradients_reach_every_parameter():
    x = torch.rand(2, 3, 19, 21)
    for name, model in small_models().items():
        with torch.no_grad():  # leave skip-init (beta = gamma = 0 would block the in-block gradients)
            for p in model.parameters():
                if torch.all(p == 0):
                    p.normal_(0, 0.3)
        run(name, model, x).square().mean().backward()
        dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
        assert not dead, f"{name}: no gradient for {dead}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_autocast_has_no_nan(dtype):
    x = torch.rand(2, 3, 19, 21)
    for name, model in small_models().items():
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
            out = run(name, model.eval(), x)
        assert out.shape == x.shape and torch.isfinite(out).all(), name


def test_bfloat16_weights_run_and_stay_close_to_float32():
    """Networks cast whole to bfloat16 (the fast CPU inference path) run, with a bf16-sized error."""
    x = torch.rand(2, 3, 19, 21)
    for name, model in small_models().items():
        model = model.eval()
        with torch.no_grad():
            ref = run(name, model, x)
            out = run(name, model.to(torch.bfloat16), x.to(torch.bfloat16)).float()
        assert torch.isfinite(out).all(), name
        assert (out - ref).abs().max() < 0.1 * ref.abs().max().clamp_min(1.0), name


def test_torch_compile_matches_eager():
    model = NAFNet(width=8, enc_blk_nums=[1], dec_blk_nums=[1]).eval()
    x = torch.rand(1, 3, 16, 20)
    compiled = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


def test_layer_norm_2d_is_the_per_pixel_channel_layer_norm():
    norm = LayerNorm2d(5)
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    mean, var = x.mean(1, keepdim=True), x.var(1, unbiased=False, keepdim=True)
    expected = (x - mean) / (var + 1e-6).sqrt() * norm.weight.double().view(1, -1, 1, 1) + norm.bias.double().view(1, -1, 1, 1)
    torch.testing.assert_close(norm.double()(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["NAFNet", "Baseline", "NAFFTNet", "ConditionalNAFNet"])
def test_save_pretrained_round_trip(pretrained_round_trip, name):
    pretrained_round_trip(small_models()[name].eval(), MODELS[name], lambda net, x: run(name, net, x))
    assert type(build_model(name, **SMALL)) is MODELS[name]


# ------------------------------------------------------------------ NAFFT-Net parts

def test_nafftnet_shapes_and_fold_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = NAFFTNet(width=8, enc_blk_nums=[1, 2], dec_blk_nums=[1, 1]).eval()
    for p in model.parameters():
        if torch.all(p == 0):
            p.data.normal_(0, 0.3)  # nonzero D: the composed kernel differs from W alone
    x = torch.rand(2, 3, 23, 30)
    with torch.no_grad():
        before = model(x)
        model.fold()
        after = model(x)
    assert before.shape == x.shape
    assert not any(isinstance(m, DOConv2d) for m in model.modules())
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
    model.save_pretrained(tmp_path)  # the folded network is the do_conv=False one
    assert NAFFTNet.from_pretrained(tmp_path).config.do_conv is False


@pytest.mark.parametrize("groups, d_mul", [(1, None), (4, 12), (8, None)])
def test_doconv_fold_equals_composed_convolution(groups, d_mul):
    torch.manual_seed(1)
    conv = DOConv2d(8, 8, 3, padding=1, groups=groups, d_mul=d_mul)
    with torch.no_grad():
        conv.D.normal_(0, 0.5)
    x = torch.randn(2, 8, 9, 7, dtype=torch.float64)
    conv.double()
    folded = conv.fold()
    assert type(folded) is torch.nn.Conv2d
    torch.testing.assert_close(folded(x), conv(x), rtol=1e-12, atol=1e-12)
    # composed kernel = sum_s (D + I)[i, m, s] W[o, i, s], written out channel by channel
    d = conv.D + torch.eye(9, conv.D.shape[-1], dtype=torch.float64)
    per_group = 8 // groups
    for o in range(8):
        for i in range(per_group):
            i_global = (o // per_group) * per_group + i
            expected = d[i_global] @ conv.W[o, i]
            torch.testing.assert_close(folded.weight[o, i].reshape(-1), expected)


def test_fft_skip_block_is_exact_on_known_inputs():
    torch.manual_seed(2)
    block = FFTSkipBlock(3).double()
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    # independent numpy evaluation of rfft2 -> 1x1 conv -> ReLU -> 1x1 conv -> irfft2
    spec = np.fft.rfft2(x.numpy(), norm="ortho")
    feats = np.concatenate([spec.real, spec.imag], axis=1)
    w1, b1 = block.conv1.weight.detach().numpy()[..., 0, 0], block.conv1.bias.detach().numpy()
    w2, b2 = block.conv2.weight.detach().numpy()[..., 0, 0], block.conv2.bias.detach().numpy()
    hidden = np.maximum(np.einsum("oc,nchw->nohw", w1, feats) + b1[:, None, None], 0)
    out = np.einsum("oc,nchw->nohw", w2, hidden) + b2[:, None, None]
    expected = np.fft.irfft2(out[:, :3] + 1j * out[:, 3:], s=(6, 7), norm="ortho")
    np.testing.assert_allclose(block(x).detach().numpy(), expected, rtol=1e-10, atol=1e-12)
    # identity filters (ReLU kept inactive by a bias shift) give back the input exactly
    with torch.no_grad():
        eye = torch.eye(6, dtype=torch.float64)[..., None, None]
        block.conv1.weight.copy_(eye), block.conv1.bias.fill_(100.0)
        block.conv2.weight.copy_(eye), block.conv2.bias.fill_(-100.0)
    torch.testing.assert_close(block(x), x, rtol=1e-10, atol=1e-10)
    block.residual = True
    torch.testing.assert_close(block(x), 2 * x, rtol=1e-10, atol=1e-10)


def test_eca_kernel_size_and_multiplicative_weights():
    assert [eca_kernel_size(c) for c in (8, 16, 32, 64, 128, 256, 512)] == [3, 3, 3, 3, 5, 5, 5]
    torch.manual_seed(3)
    eca = EfficientChannelAttention(64)
    assert eca.conv.kernel_size == (3,)
    x = torch.randn(2, 64, 5, 6)
    weights = eca(x)
    pooled = x.mean((-2, -1))
    expected = torch.sigmoid(F.conv1d(pooled[:, None], eca.conv.weight, padding=1))[:, 0]
    torch.testing.assert_close(weights[..., 0, 0], expected)
    block_input = torch.randn(1, 16, 4, 4)
    net = NAFFTNet(**SMALL)
    blk = net.encoders[0][0]
    torch.testing.assert_close(blk.attend_and_project(block_input), blk.conv3(block_input * blk.eca(block_input)))


@pytest.mark.parametrize("make", [lambda: NAFNet(**SMALL), lambda: Baseline(**SMALL), lambda: NAFFTNet(**SMALL)],
                         ids=["NAFNet", "Baseline", "NAFFTNet"])
def test_single_image_attention_fold_equals_the_per_pixel_product(make):
    # one image: the channel weights are folded into conv3's weight; a batch takes the plain product
    torch.manual_seed(5)
    net = activate_skip_gains(make(), 0.5).eval()
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    net.double()
    with torch.no_grad():
        single = net(x)
        batched = net(torch.cat([x, torch.rand_like(x)]))[:1]
        block = net.encoders[0][0]
        feature = torch.randn(1, block.conv3.in_channels, 8, 8, dtype=torch.float64)
        attention = getattr(block, block.attention_key)
        folded = block.attend_and_project(feature)
        plain = block.conv3(feature * attention(feature))
    torch.testing.assert_close(single, batched, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(folded, plain, rtol=1e-12, atol=1e-12)

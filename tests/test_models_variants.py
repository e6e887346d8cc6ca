"""The official task variants of the IR-SDE noise networks (denoising-sde, latent-bokeh, stereo-sr)
against outputs of the official code (tests/data/variants, see NETWORKS.md there)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from refusion.models import (
    MODELS,
    BokehNAFNet,
    ConditionalUNet,
    StereoNAFNet,
    UnconditionalNAFNet,
    UnconditionalUNet,
    build_model,
)
from refusion.models.blocks import time_steps
from refusion.models.nafnet import local_pooling

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = Path(__file__).parent / "data" / "variants"
SPECS = {**json.loads((DATA / "variants.json").read_text()), **json.loads((DATA / "variants_extra.json").read_text())}
F64 = np.load(DATA / "variants_f64_ln1e5.npz")

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def rel_err(got: torch.Tensor, ref: np.ndarray) -> float:
    return float(np.abs(got.detach().numpy() - ref).max() / np.abs(ref).max())


def official(name: str, cls):
    """(network with the official weights loaded strictly, npz arrays as tensors, variants.json entry)."""
    spec = SPECS[name]
    net = cls(**spec["kwargs"]).eval()
    net.load_state_dict(torch.load(DATA / f"net_{name}.pt", weights_only=True), strict=True)
    assert sum(p.numel() for p in net.parameters()) == spec["num_params"]
    ref = np.load(DATA / f"net_{name}.npz")
    return net, ref, {k: torch.from_numpy(ref[k]) for k in ref}, spec


def check_float64(net, call, ref32: np.ndarray, ref64: np.ndarray) -> None:
    """``call(net, dtype)`` in float64 equals the official float64 run and the float32 one to its rounding."""
    with torch.no_grad():
        out = call(net.double(), torch.float64)
    net.float()
    assert out.dtype == torch.float64
    assert rel_err(out, ref64) < 1e-12
    assert rel_err(out, ref32) < 1e-5


# ------------------------------------------------------------------ UnconditionalNAFNet (denoising-sde)

def test_unconditional_nafnet_matches_official():
    net, ref, a, spec = official("cnafnet_denoise_small", UnconditionalNAFNet)
    x, t_int = a["x_t"], spec["t_int"]
    assert x.shape[-2:] == (19, 26)  # not multiples of 4: padding and cropping are exercised
    with torch.no_grad():
        for t in (t_int, float(t_int), torch.tensor(t_int), torch.tensor([t_int])):
            assert rel_err(net(x, t), ref["output_t_int"]) < 1e-5
        assert rel_err(net(x, a["t_vec"]), ref["output_t_vec"]) < 1e-5
    for key, t in (("output_t_int", t_int), ("output_t_vec", a["t_vec"])):
        check_float64(net, lambda n, d, t=t: n(x.to(d), t), ref[key], F64[f"denoise_{key}_f64_ln1e5"])


def test_unconditional_nafnet_rejects_a_conditional_input():
    net = UnconditionalNAFNet(img_channel=3, width=8, enc_blk_nums=[1], dec_blk_nums=[1]).eval()
    with pytest.raises(ValueError, match=r"x must be \(B, 3, H, W\)"):
        net(torch.rand(1, 6, 8, 8), 3)
    with pytest.raises(ValueError, match="3 entries"):
        net(torch.rand(2, 3, 8, 8), torch.tensor([1, 2, 3]))


# ------------------------------------------------------------------ BokehNAFNet (latent-bokeh)

def lens(a: dict, rows=slice(None)) -> list:
    return [a["src_lens"][rows], a["tgt_lens"][rows], a["disparity"][rows]]


def test_bokeh_nafnet_matches_official():
    net, ref, a, _ = official("cnafnet_bokeh_small", BokehNAFNet)
    assert a["x_t"].shape[-2:] == (14, 18)
    with torch.no_grad():
        assert rel_err(net(a["x_t"], a["cond"], a["t_vec"], lens_info=lens(a)), ref["output_t_vec"]) < 1e-5
        # one sample with Python scalars for the step and the lens values
        for i in range(a["x_t"].shape[0]):
            values = [float(v[i]) for v in lens(a)]
            out = net(a["x_t"][i:i + 1], a["cond"][i:i + 1], int(a["t_vec"][i]), values)
            assert rel_err(out, ref["output_t_vec"][i:i + 1]) < 1e-5
        # the lens information reaches the output (the comparisons above are not blind to it)
        swapped = net(a["x_t"], a["cond"], a["t_vec"], lens_info=[a["tgt_lens"], a["src_lens"], a["disparity"]])
        assert rel_err(swapped, ref["output_t_vec"]) > 1e-3
    check_float64(net, lambda n, d: n(a["x_t"].to(d), a["cond"].to(d), a["t_vec"], [v.to(d) for v in lens(a)]),
                  ref["output_t_vec"], F64["bokeh_output_t_vec_f64_ln1e5"])


def test_bokeh_nafnet_official_keys():
    with torch.device("meta"):
        keys = BokehNAFNet(img_channel=4, width=16, enc_blk_nums=[1], dec_blk_nums=[1]).state_dict()
    assert {"time_mlp.0.weight", "time_mlp.2.weight", "cam_mlp.0.weight", "cam_mlp.2.weight"} <= set(keys)
    assert {"middle_blks.0.time_mlp.1.weight", "middle_blks.0.cam_mlp.1.weight"} <= set(keys)
    assert not any(k.endswith(".mlp.1.weight") for k in keys)
    assert tuple(keys["cam_mlp.0.weight"].shape) == (128, 48) and tuple(keys["intro.weight"].shape) == (16, 8, 3, 3)


def test_bokeh_nafnet_validates_lens_info():
    net = BokehNAFNet(img_channel=4, width=8, enc_blk_nums=[1], dec_blk_nums=[1]).eval()
    x = torch.rand(2, 4, 8, 8)
    with pytest.raises(ValueError, match=r"lens_info must be a list \[src_lens, tgt_lens, disparity\]"):
        net(x, x, 3, lens_info=[1.0, 2.0])
    with pytest.raises(ValueError, match="lens_info disparity has 3 entries"):
        net(x, x, 3, lens_info=[1.0, 2.0, torch.tensor([1.0, 2.0, 3.0])])
    with torch.no_grad():  # scalars and (B,) tensors mix
        assert net(x, x, torch.tensor([3, 4]), lens_info=[1.8, torch.tensor([2.0, 16.0]), 40.0]).shape == x.shape


# ------------------------------------------------------------------ StereoNAFNet (stereo-sr)

def test_stereo_nafnet_matches_official():
    net, ref, a, spec = official("cnafnet_stereo_small", StereoNAFNet)
    x_t, mu, t = a["x_t"], a["cond"], spec["t_int"]
    assert x_t.shape[1] == 6
    with torch.no_grad():
        for step in (t, float(t), torch.tensor(t), torch.tensor([t])):
            assert rel_err(net(x_t, mu, step), ref["output_t_int"]) < 1e-5
        # a batch of two pairs with a step per pair: the first pair is the official one
        pairs = net(torch.cat([x_t, x_t.flip(-1)]), torch.cat([mu, mu.flip(-1)]), torch.tensor([t, 9]))
        assert rel_err(pairs[:1], ref["output_t_int"]) < 1e-5
        assert rel_err(pairs[1:], net(x_t.flip(-1), mu.flip(-1), 9).numpy()) < 1e-5
        # the cross-view attention matters: the left output depends on the right view
        other = net(torch.cat([x_t[:, :3], x_t[:, 3:].flip(-1)], 1), mu, t)
        assert (other[:, :3] - torch.from_numpy(ref["output_t_int"][:, :3])).abs().max() > 1e-3
    check_float64(net, lambda n, d: n(x_t.to(d), mu.to(d), t), ref["output_t_int"], F64["stereo_output_t_int_f64_ln1e5"])


def test_stereo_nafnet_pads_odd_sizes_and_validates():
    net, _, a, _ = official("cnafnet_stereo_small", StereoNAFNet)
    x_t, mu = a["x_t"][..., :15, :37], a["cond"][..., :15, :37]
    with torch.no_grad():
        out = net(x_t, mu, 20)
        padded = net(F.pad(x_t, (0, 3, 0, 1)), F.pad(mu, (0, 3, 0, 1)), 20)  # zero padding, as the network pads
    assert out.shape == x_t.shape
    torch.testing.assert_close(out, padded[..., :15, :37], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"x_t must be \(B, 6, H, W\)"):
        net(x_t[:, :3], mu[:, :3], 20)
    with pytest.raises(ValueError, match="both sides must be >= 13"):
        net(x_t[..., :12, :], mu[..., :12, :], 20)
    with pytest.raises(ValueError, match="must have the same shape"):
        net(x_t, mu[..., :14, :], 20)


# ------------------------------------------------------------------ UnconditionalUNet (denoising-sde)

def test_unconditional_unet_matches_official():
    net, ref, a, spec = official("cunet_denoise_small", UnconditionalUNet)
    x, t_int = a["x"], spec["t_int"]
    assert x.shape[-2:] == (30, 26)  # reflect padding to multiples of 4
    with torch.no_grad():
        for t in (t_int, float(t_int), torch.tensor(t_int)):
            assert rel_err(net(x, t), ref["output_t_int"]) < 1e-5
        assert rel_err(net(x, a["t_vec"]), ref["output_t_vec"]) < 1e-5
        # the softmax middle attention is visible in the output at 100x the tolerance
        attn = net.mid_attn.fn.fn.to_out
        kept = attn.weight.clone()
        attn.weight.zero_()
        assert rel_err(net(x, a["t_vec"]), ref["output_t_vec"]) > 1e-3
        attn.weight.copy_(kept)
    for key, t in (("output_t_int", t_int), ("output_t_vec", a["t_vec"])):
        check_float64(net, lambda n, d, t=t: n(x.to(d), t), ref[key], ref[f"{key}_f64_ln1e5"])


def test_unconditional_unet_shares_the_conditional_keys():
    """The official denoising-sde U-Net has the deshadow keys except the init conv's input channels
    and the middle attention (softmax ``Attention``: ``to_out`` is a conv, no LayerNorm)."""
    with torch.device("meta"):
        plain = UnconditionalUNet(in_nc=3, out_nc=3, nf=8, depth=2).state_dict()
        conditional = ConditionalUNet(in_nc=3, out_nc=3, nf=8, depth=2).state_dict()
    mid_linear = {"mid_attn.fn.fn.to_out.0.weight", "mid_attn.fn.fn.to_out.0.bias", "mid_attn.fn.fn.to_out.1.g"}
    mid_softmax = {"mid_attn.fn.fn.to_out.weight", "mid_attn.fn.fn.to_out.bias"}
    assert set(plain) == (set(conditional) - mid_linear) | mid_softmax
    different = {k for k in set(plain) & set(conditional) if plain[k].shape != conditional[k].shape}
    assert different == {"init_conv.weight"}
    assert tuple(plain["init_conv.weight"].shape) == (8, 3, 7, 7)


def test_unconditional_unet_rejects_a_conditional_input():
    net = UnconditionalUNet(in_nc=3, out_nc=3, nf=4, depth=1)
    with pytest.raises(ValueError, match=r"x must be \(B, 3, H, W\)"):
        net(torch.rand(1, 6, 8, 8), 1)
    with pytest.raises(ValueError, match="UnconditionalUNet: nf must be >= 1"):
        UnconditionalUNet(nf=0)


# ------------------------------------------------------------------ all four

# official classes at commit 2598d73 built (on the meta device) with the task's option file
OFFICIAL_COUNTS = [
    # denoising-sde/options/test/ir-sde.yml
    (UnconditionalUNet, {"in_nc": 3, "out_nc": 3, "nf": 64, "depth": 4}, 137_137_091),
    # denoising-sde/options/test/refusion.yml
    (UnconditionalNAFNet, {"width": 64, "enc_blk_nums": [1, 1, 1, 28], "middle_blk_num": 1,
                           "dec_blk_nums": [1, 1, 1, 1]}, 76_606_659),
    # latent-bokeh/options/bokeh/test/refusion.yml
    (BokehNAFNet, {"img_channel": 4, "width": 64, "enc_blk_nums": [2, 2, 4, 8], "middle_blk_num": 12,
                   "dec_blk_nums": [2, 2, 2, 2]}, 131_467_716),
    # stereo-sr/options/ssr/test/refusion.yml
    (StereoNAFNet, {"width": 64, "enc_blk_nums": [1, 1, 1, 28], "middle_blk_num": 1,
                    "dec_blk_nums": [1, 1, 1, 1]}, 112_033_667),
]


@pytest.mark.parametrize("cls, kwargs, count", OFFICIAL_COUNTS, ids=lambda v: getattr(v, "__name__", ""))
def test_official_parameter_counts(cls, kwargs, count):
    with torch.device("meta"):
        assert sum(p.numel() for p in cls(**kwargs).parameters()) == count


SMALL_NAF = {"width": 8, "middle_blk_num": 1, "enc_blk_nums": [1, 1], "dec_blk_nums": [1, 1]}
T2 = torch.tensor([5, 60])
SMALL = {
    "UnconditionalNAFNet": (lambda: UnconditionalNAFNet(**SMALL_NAF), lambda net, x: net(x, T2)),
    "BokehNAFNet": (lambda: BokehNAFNet(**SMALL_NAF),
                    lambda net, x: net(x, x.flip(-1), T2, [torch.tensor([1.8, 16.0]), torch.tensor([16.0, 1.8]), 30.0])),
    "StereoNAFNet": (lambda: StereoNAFNet(**SMALL_NAF),
                     lambda net, x: net(torch.cat([x, x.flip(-2)], 1), torch.cat([x.flip(-1), x], 1), T2)),
    "UnconditionalUNet": (lambda: UnconditionalUNet(in_nc=3, out_nc=3, nf=4, depth=2), lambda net, x: net(x, T2)),
}


def build_small(name: str):
    torch.manual_seed(0)
    net = SMALL[name][0]()
    with torch.no_grad():  # leave skip-init (beta = gamma = 0 would block the in-block gradients)
        for key, p in net.named_parameters():
            if key.endswith(("beta", "gamma")):
                p.normal_(0, 0.5)
    return net


@pytest.mark.parametrize("name", sorted(SMALL))
def test_gradients_reach_every_parameter(name):
    net = build_small(name)
    # 32 x 32: the stereo attention at the deepest level then sees 2 x 2 pixels (one pixel gives Q no gradient)
    SMALL[name][1](net, torch.rand(2, 3, 32, 32)).square().mean().backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead


@pytest.mark.parametrize("name", sorted(SMALL))
def test_bf16_autocast_is_close_to_float32(name):
    net, forward = build_small(name).eval(), SMALL[name][1]
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        ref = forward(net, x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = forward(net, x).float()
    assert torch.isfinite(low).all()
    assert (low - ref).abs().max() < 0.05 * ref.abs().max()


@pytest.mark.parametrize("name", sorted(SMALL))
def test_save_and_load_pretrained_round_trip(name, pretrained_round_trip):
    pretrained_round_trip(build_small(name).eval(), MODELS[name], SMALL[name][1])


@pytest.mark.parametrize("name", ["UnconditionalNAFNet", "BokehNAFNet", "StereoNAFNet"])
def test_local_pooling_runs_on_each_nafnet_variant(name):
    net, forward = build_small(name).eval(), SMALL[name][1]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        global_out = forward(net, x)
        with local_pooling(net, train_size=(16, 16)):
            local_out = forward(net, x)
        assert torch.equal(forward(net, x), global_out)
    assert (local_out - global_out).abs().max() > 1e-6


def test_table_builds_each_variant():
    for name in SMALL:
        assert type(build_model(name, **({"nf": 4, "depth": 1} if "UNet" in name else SMALL_NAF))).__name__ == name


def test_python_float_steps_are_not_rounded_to_float32():
    assert time_steps(0.1, 1, torch.float64, torch.device("cpu")).item() == 0.1
    assert time_steps(0.1, 4, torch.float32, torch.device("cpu")).dtype == torch.float32
    assert time_steps(torch.tensor([1, 2]), 2, torch.bfloat16, torch.device("cpu")).dtype == torch.float32

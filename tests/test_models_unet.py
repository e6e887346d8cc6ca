"""HINet, ConditionalUNet and LatentUNet against the official networks' weights, outputs and sizes."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from refusion.models import MODELS, build_model, final_output
from refusion.models.conditional_unet import ConditionalUNet
from refusion.models.hinet import HINet
from refusion.models.latent_unet import LatentUNet

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = Path(__file__).parent / "data"
NETWORKS = json.loads((DATA / "networks.json").read_text())
COUNTS = json.loads((DATA / "param_counts.json").read_text())["counts"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def rel_err(got: torch.Tensor, ref: np.ndarray) -> float:
    return float(np.abs(got.detach().numpy() - ref).max() / np.abs(ref).max())


def official(name: str, cls):
    spec = NETWORKS[name]
    net = cls(**spec["kwargs"]).eval()
    state = torch.load(DATA / f"net_{name}.pt", weights_only=True)
    net.load_state_dict(state, strict=True)
    return net, np.load(DATA / f"net_{name}.npz"), spec


def meta_count(cls, kwargs) -> int:
    with torch.device("meta"):
        net = cls(**kwargs)
    return sum(p.numel() for p in net.parameters())


def small_latent_unet() -> LatentUNet:
    torch.manual_seed(0)
    return LatentUNet(in_ch=3, out_ch=3, ch=4, ch_mult=[1, 2, 2], embed_dim=4)


# ---------------------------------------------------------------- HINet

def test_hinet_matches_official_outputs():
    net, ref, spec = official("hinet_small", HINet)
    assert sum(p.numel() for p in net.parameters()) == spec["num_params"]
    x = torch.from_numpy(ref["input"])
    with torch.no_grad():
        stage1, stage2 = net(x)
        assert rel_err(stage1, ref["output_stage1"]) < 1e-5
        assert rel_err(stage2, ref["output_stage2"]) < 1e-5
        stage1, stage2 = net.double()(x.double())
    assert rel_err(stage1, ref["output_stage1_f64"]) < 1e-10
    assert rel_err(stage2, ref["output_stage2_f64"]) < 1e-10


@pytest.mark.parametrize("config", ["HINet-GoPro", "HINet-SIDD", "HINet-SIDD-0.5x"])
def test_hinet_parameter_counts(config):
    assert meta_count(HINet, COUNTS[config]["kwargs"]) == COUNTS[config]["num_params"]


def test_hinet_pads_any_size_and_crops_back():
    net, _, _ = official("hinet_small", HINet)
    x = torch.rand(1, 3, 13, 19, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = net(x)
        padded = torch.nn.functional.pad(x, (0, 1, 0, 3), mode="reflect")  # to multiples of 4
        ref = net(padded)
    for got, want in zip(out, ref):
        assert got.shape == x.shape
        torch.testing.assert_close(got, want[..., :13, :19], rtol=1e-5, atol=1e-6)
    assert final_output(out) is out[1]


# ---------------------------------------------------------------- ConditionalUNet

def test_conditional_unet_matches_official_outputs():
    net, ref, spec = official("cunet_small", ConditionalUNet)
    x_t, mu = torch.from_numpy(ref["x_t"]), torch.from_numpy(ref["cond"])
    t_vec = torch.from_numpy(ref["t_vec"])
    with torch.no_grad():
        assert rel_err(net(x_t, mu, spec["t_int"]), ref["output_t_int"]) < 1e-5
        assert rel_err(net(x_t, mu, float(spec["t_int"])), ref["output_t_int"]) < 1e-5
        assert rel_err(net(x_t, mu, torch.tensor(spec["t_int"])), ref["output_t_int"]) < 1e-5
        assert rel_err(net(x_t, mu, t_vec), ref["output_t_vec"]) < 1e-5
        # float64 network: same function up to float32 rounding of the reference
        out64 = net.double()(x_t.double(), mu.double(), t_vec)
    assert out64.dtype == torch.float64
    assert rel_err(out64, ref["output_t_vec"]) < 1e-5


def test_conditional_unet_float64_matches_official_float64():
    """The whole network in float64, time embedding included (a float32 sinusoid costs ~6e-10)."""
    net, ref, spec = official("cunet_small", ConditionalUNet)
    net.double()
    x_t, mu = torch.from_numpy(ref["x_t"]).double(), torch.from_numpy(ref["cond"]).double()
    with torch.no_grad():
        for t in (spec["t_int"], float(spec["t_int"]), torch.tensor(spec["t_int"])):
            assert rel_err(net(x_t, mu, t), ref["output_t_int_f64_ln1e5"]) < 1e-12
        assert rel_err(net(x_t, mu, torch.from_numpy(ref["t_vec"])), ref["output_t_vec_f64_ln1e5"]) < 1e-12


def test_conditional_unet_parameter_count():
    entry = COUNTS["ConditionalUNet-IR-SDE-deshadow"]
    assert entry["kwargs"] == {"in_nc": 3, "out_nc": 3, "nf": 64, "depth": 4}
    assert meta_count(ConditionalUNet, entry["kwargs"]) == entry["num_params"] == 137_147_523


def test_conditional_unet_cond_channels_and_odd_sizes():
    torch.manual_seed(0)
    net = ConditionalUNet(in_nc=2, out_nc=2, nf=4, depth=2, cond_channels=3).eval()
    x_t, mu, cond = torch.rand(2, 2, 11, 9), torch.rand(2, 2, 11, 9), torch.rand(2, 3, 11, 9)
    with torch.no_grad():
        out = net(x_t, mu, torch.tensor([3, 70]), cond=cond)
        other = net(x_t, mu, torch.tensor([3, 70]), cond=cond.flip(-1))
    assert out.shape == x_t.shape
    assert not torch.allclose(out, other)  # the extra channels reach the output
    with pytest.raises(ValueError, match="cond must have shape"):
        net(x_t, mu, 5)
    with pytest.raises(ValueError, match="3 entries"):
        ConditionalUNet(in_nc=2, out_nc=2, nf=4, depth=2)(x_t, mu, torch.tensor([1, 2, 3]))


# ---------------------------------------------------------------- LatentUNet

OFFICIAL_LATENT_KEYS = {  # official names and shapes of the dehazing autoencoder (UNet_arch.py)
    "init_conv.weight": (8, 3, 3, 3),
    "encoder.0.3.weight": (32, 8, 4, 4),
    "encoder.3.2.fn.fn.to_qkv.weight": (384, 64, 1, 1),
    "encoder.3.2.fn.norm.g": (1, 64, 1, 1),
    "encoder.3.3.weight": (128, 64, 3, 3),
    "decoder.0.2.fn.fn.to_out.1.g": (1, 128, 1, 1),
    "decoder.0.3.1.weight": (64, 128, 3, 3),
    "decoder.3.0.res_conv.weight": (32, 40, 1, 1),
    "decoder.3.3.weight": (8, 32, 3, 3),
    "latent_conv.weight": (8, 128, 1, 1),
    "post_latent_conv.weight": (128, 8, 1, 1),
    "final_conv.bias": (3,),
}


def test_latent_unet_matches_official_encode_and_decode():
    """encode LQ and GT, decode each latent with the LQ skips (latent replacement), forward; float32 and float64."""
    spec = json.loads((DATA / "net_unet_ae_small.json").read_text())
    net = LatentUNet(**spec["kwargs"]).eval()
    net.load_state_dict(torch.load(DATA / "net_unet_ae_small.pt", weights_only=True), strict=True)
    assert sum(p.numel() for p in net.parameters()) == spec["num_params"]
    ref = np.load(DATA / "net_unet_ae_small.npz")
    assert ref["input_lq"].shape[-2:] == (21, 30)  # reflect padding to multiples of 8, cropped back
    for dtype, suffix, tol in ((torch.float32, "", 1e-5), (torch.float64, "_f64_ln1e5", 1e-12)):
        net.to(dtype)
        lq, gt = (torch.from_numpy(ref[k]).to(dtype) for k in ("input_lq", "input_gt"))
        with torch.no_grad():
            latent_lq, skips_lq = net.encode(lq)
            latent_gt, _ = net.encode(gt)
            got = {
                "latent_lq": latent_lq,
                "latent_gt": latent_gt,
                "decode_latent_lq_hidden_lq": net.decode(latent_lq, skips_lq),
                "decode_latent_gt_hidden_lq": net.decode(latent_gt, skips_lq),
                "forward_lq": net(lq),
            }
        for key, value in got.items():
            assert value.dtype == dtype
            assert rel_err(value, ref[key + suffix]) < tol, (key, dtype)


def test_latent_unet_official_size_and_keys():
    entry = COUNTS["UNet-latent-dehazing-AE"]
    assert meta_count(LatentUNet, entry["kwargs"]) == entry["num_params"] == 2_007_859
    with torch.device("meta"):
        state = LatentUNet(**entry["kwargs"]).state_dict()
    assert len(state) == 69
    for key, shape in OFFICIAL_LATENT_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    # linear attention only at the deepest level
    assert {k.split(".fn.")[0] for k in state if ".fn." in k} == {"encoder.3.2", "decoder.0.2"}


def test_latent_unet_encode_decode_shapes():
    net = LatentUNet().eval()
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        latent, skips = net.encode(x)
        assert latent.shape == (1, 8, 4, 6)
        assert net.decode(latent, skips).shape == x.shape
        odd = torch.rand(1, 3, 37, 50)
        latent, skips = net.encode(odd)
        assert latent.shape == (1, 8, 6, 8)  # padded to 48 x 64
        assert net(odd).shape == odd.shape
    with pytest.raises(ValueError, match="latent must be"):
        net.decode(latent[:, :4], skips)


def test_latent_unet_tiled_equals_whole():
    torch.manual_seed(0)
    net = LatentUNet().eval()  # the dehazing setting, attention included
    x, gt = torch.rand(2, 1, 3, 104, 92).unbind(0)  # padded to 112 x 96; interior tile edges exist
    with torch.no_grad():
        latent, skips = net.encode(x)
        whole = net.decode(latent, skips)
        latent_t, skips_t = net.encode_tiled(x, tile=48, overlap=32)
        torch.testing.assert_close(latent_t, latent, rtol=1e-5, atol=1e-6)
        for a, b in zip(skips_t, skips):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(net.decode_tiled(latent, skips, tile=48, overlap=32), whole, rtol=1e-5, atol=1e-6)
        # latent replacement: decode a latent with the LQ image's skips recomputed per tile
        latent_gt, _ = net.encode(gt)
        replaced = net.decode(latent_gt, skips)
        torch.testing.assert_close(net.decode_from_lq(latent_gt, x, tile=48, overlap=40), replaced, rtol=1e-5, atol=1e-6)
        assert net.encode_tiled(x, tile=48, overlap=32, return_skips=False)[1] is None
        # too little context is visibly wrong, so the comparisons above can fail
        assert (net.decode_tiled(latent, skips, tile=48, overlap=0) - whole).abs().max() > 1e-3
    with pytest.raises(ValueError, match="multiple of 8"):
        net.encode_tiled(x, tile=60, overlap=8)


# ---------------------------------------------------------------- all three

SMALL = {
    "HINet": (lambda: HINet(in_chn=3, wf=4, depth=3, hin_position_left=0, hin_position_right=1),
              lambda net, x: sum(o.square().mean() for o in net(x))),
    "ConditionalUNet": (lambda: ConditionalUNet(in_nc=3, out_nc=3, nf=4, depth=2),
                        lambda net, x: net(x, x.flip(-1), torch.tensor([5, 9])).square().mean()),
    "LatentUNet": (small_latent_unet, lambda net, x: net(x).square().mean()),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    build, loss_fn = SMALL[name]
    net = build()
    loss_fn(net, torch.rand(2, 3, 16, 16)).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("name", sorted(SMALL))
def test_bf16_autocast_is_finite(name):
    torch.manual_seed(0)
    build, loss_fn = SMALL[name]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss_fn(build().eval(), torch.rand(2, 3, 16, 16))
    assert torch.isfinite(value)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_save_and_load_pretrained_round_trip(name, pretrained_round_trip):
    torch.manual_seed(0)
    build, loss_fn = SMALL[name]
    pretrained_round_trip(build().eval(), MODELS[name], loss_fn)


def test_table_builds_each_network():
    assert build_model("LatentUNet", ch=4, ch_mult=[1, 2], embed_dim=2).config.embed_dim == 2
    assert isinstance(build_model("HINet", wf=4, depth=2), HINet)
    assert isinstance(build_model("ConditionalUNet", nf=4, depth=1), ConditionalUNet)

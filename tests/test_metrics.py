"""PSNR / SSIM / LPIPS against the reference values of tests/data/metrics (BasicSR and lpips 0.1.4)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from refusion.evaluation import lpips_weights, metrics
from refusion.evaluation.lpips_weights import LPIPSUnavailable

DATA = Path(__file__).parent / "data" / "metrics"
REF = json.loads((DATA / "values.json").read_text())
PAIRS = {p["id"]: p for p in REF["pairs"]}
SETTINGS = ("crop0", "crop0_y", "crop4", "crop4_y")
# our float64 maths reproduces BasicSR's to ~1e-13: far tighter than the suggested 1e-4 dB / 1e-5
PSNR_TOL = 1e-10
SSIM_TOL = 1e-10
# float32 CPU network; the reference varied by < 1e-7 with the thread count
LPIPS_TOL = 1e-5


def _load(rel: str, sha256: str | None = None) -> np.ndarray:
    path = DATA / rel
    if sha256 is not None:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256, f"{path} differs from the reference file"
    return np.array(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def images() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {pid: (_load(p["gt"], p["gt_sha256"]), _load(p["degraded"], p["degraded_sha256"]))
            for pid, p in PAIRS.items()}


@pytest.fixture(scope="module")
def real_weights() -> dict[str, dict[str, torch.Tensor]]:
    """The LPIPS tests need the real backbones; CI installs them before pytest, so missing is a failure."""
    try:
        return {net: lpips_weights.load_backbone(net) for net in lpips_weights.NETS}
    except LPIPSUnavailable as err:
        pytest.fail(f"LPIPS weights are required for this test: {err}")


# ---------------------------------------------------------------------------------------------
# PSNR / SSIM
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("pair_id", sorted(PAIRS))
def test_psnr_ssim_match_basicsr(images, pair_id, setting):
    gt, degraded = images[pair_id]
    ref = PAIRS[pair_id]["basicsr"][setting]
    kwargs = dict(crop_border=ref["crop_border"], test_y_channel=ref["test_y_channel"])
    assert metrics.psnr(degraded, gt, **kwargs) == pytest.approx(ref["psnr"], abs=PSNR_TOL, rel=0)
    assert metrics.ssim(degraded, gt, **kwargs) == pytest.approx(ref["ssim"], abs=SSIM_TOL, rel=0)


def test_y_channel_weights_follow_rgb_order(images):
    # the diagnostics are what BasicSR gives when handed RGB arrays (R and B weights swapped)
    for pid, (gt, degraded) in images.items():
        wrong = PAIRS[pid]["diagnostics"]["crop4_y_with_rgb_arrays"]
        assert abs(metrics.psnr(degraded, gt, 4, True) - wrong["psnr"]) > 1e-3
        assert abs(metrics.ssim(degraded, gt, 4, True) - wrong["ssim"]) > 1e-4


def test_rgb_to_y_values():
    img = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]]], dtype=np.uint8)
    y = metrics.rgb_to_y(img)[0, :, 0]
    np.testing.assert_allclose(y, [16 + 65.481, 16 + 128.553, 16 + 24.966, 235.0, 16.0], atol=2e-5)


def test_input_forms_agree(images):
    gt, degraded = images["china_noise25_odd"]
    forms = {
        "uint8 HWC": (degraded, gt),
        "float CHW tensor": (torch.from_numpy(degraded).permute(2, 0, 1) / 255.0,
                             torch.from_numpy(gt).permute(2, 0, 1) / 255.0),
        "float64 HWC numpy": (degraded / 255.0, gt / 255.0),
        "NCHW tensor, N=1": (torch.from_numpy(degraded).permute(2, 0, 1)[None] / 255.0,
                             torch.from_numpy(gt).permute(2, 0, 1)[None].double() / 255.0),
        "uint8 CHW tensor": (torch.from_numpy(degraded).permute(2, 0, 1), torch.from_numpy(gt).permute(2, 0, 1)),
    }
    ref = PAIRS["china_noise25_odd"]["basicsr"]["crop4_y"]
    for name, (a, b) in forms.items():
        assert metrics.psnr(a, b, 4, True) == pytest.approx(ref["psnr"], abs=PSNR_TOL, rel=0), name
        assert metrics.ssim(a, b, 4, True) == pytest.approx(ref["ssim"], abs=SSIM_TOL, rel=0), name


def test_float_inputs_are_clipped_and_rounded_like_tensor2img():
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)
    # within half a step of each level, plus out-of-range values that must clip to 0 and 255
    noisy = (u8.astype(np.float64) + rng.uniform(-0.45, 0.45, u8.shape)) / 255.0
    noisy[0, 0] = [-0.3, 1.7, 1.0]
    expected = u8.copy()
    expected[0, 0] = [0, 255, 255]
    np.testing.assert_array_equal(metrics.to_uint8_image(noisy), expected)
    chw = torch.from_numpy(noisy.transpose(2, 0, 1)).float()
    np.testing.assert_array_equal(metrics.to_uint8_image(chw), expected)


def test_identical_images():
    img = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert metrics.psnr(img, img) == float("inf")
    assert metrics.ssim(img, img) == pytest.approx(1.0, abs=1e-15)


def test_psnr_formula_on_constant_error():
    a = np.full((12, 12, 3), 100, np.uint8)
    b = a + 5  # MSE = 25
    assert metrics.psnr(a, b) == pytest.approx(10 * np.log10(255.0 ** 2 / 25.0), abs=1e-12)


@pytest.mark.parametrize("call, message", [
    (lambda a: metrics.psnr(a, a[:-1]), "shapes differ"),
    (lambda a: metrics.psnr(a, a, crop_border=-1), "crop_border"),
    (lambda a: metrics.psnr(a, a, crop_border=10), "leaves nothing"),
    (lambda a: metrics.ssim(a, a, crop_border=5), "at least 11x11"),
    (lambda a: metrics.psnr(a.astype(np.uint16), a.astype(np.uint16)), "uint16"),
    (lambda a: metrics.psnr(np.full(a.shape, np.nan), a), "NaN"),
    (lambda a: metrics.psnr(a[None].repeat(2, 0), a[None].repeat(2, 0)), "batch of 2"),
    (lambda a: metrics.psnr(a[..., :2], a[..., :2]), "channel"),
])
def test_bad_inputs_raise_clear_errors(call, message):
    a = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises((ValueError, TypeError), match=message):
        call(a)


# ---------------------------------------------------------------------------------------------
# LPIPS
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_matches_reference(real_weights, images, net):
    same_size = [pid for pid in sorted(PAIRS) if images[pid][0].shape == (128, 160, 3)]
    to_batch = lambda k: torch.stack([torch.from_numpy(images[p][k]).permute(2, 0, 1) for p in same_size]) / 255.0
    got = metrics.lpips(to_batch(0), to_batch(1), net=net)  # one batched call
    assert got.shape == (len(same_size),)
    for pid, value in zip(same_size, got.tolist()):
        assert value == pytest.approx(PAIRS[pid]["lpips"][net], abs=LPIPS_TOL, rel=0), pid
    gt, degraded = images["china_noise25_odd"]  # odd size, single uint8 HWC pair
    assert metrics.lpips(gt, degraded, net=net) == pytest.approx(
        PAIRS["china_noise25_odd"]["lpips"][net], abs=LPIPS_TOL, rel=0)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_author_examples(real_weights, net):
    ex = REF["lpips_examples"]
    img = {k: _load(v["path"], v["sha256"]) for k, v in ex["files"].items()}
    for other in ("ex_p0", "ex_p1"):
        value = metrics.lpips(img["ex_ref"], img[other], net=net)
        assert value == pytest.approx(ex[net][f"ex_ref_vs_{other}"], abs=LPIPS_TOL, rel=0)
        if net == "alex":
            assert round(value, 3) == ex["published_alex_rounded"][f"ex_ref_vs_{other}"]


def test_lpips_model_is_frozen_with_real_backbone(real_weights):
    model = metrics.get_lpips_model("alex")
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    first_conv = model.net.slice1[0].weight
    assert first_conv.double().sum().item() == pytest.approx(lpips_weights.EXPECTED_FIRST_SUM["alex"], abs=5e-6)
    assert metrics.get_lpips_model("alex") is model  # built once per net and device


def test_metric_set_batch_agrees_with_pairs(real_weights, images):
    crops = [(images[p][1][:48, :64], images[p][0][:48, :64]) for p in ("astronaut_noise25", "chelsea_blur")]
    restored = torch.stack([torch.from_numpy(r).permute(2, 0, 1) for r, _ in crops]) / 255.0
    gt = torch.stack([torch.from_numpy(g).permute(2, 0, 1) for _, g in crops]) / 255.0
    batch = metrics.MetricSet(crop_border=4, test_y_channel=True).evaluate_batch(restored, gt)
    for (r, g), result in zip(crops, batch):
        single = metrics.evaluate_pair(r, g, crop_border=4, test_y_channel=True)
        assert set(single) == {"psnr", "ssim", "lpips", "lpips_unavailable"}
        assert result["psnr"] == single["psnr"] == metrics.psnr(r, g, 4, True)
        assert result["ssim"] == single["ssim"] == metrics.ssim(r, g, 4, True)
        assert result["lpips"] == pytest.approx(single["lpips"], abs=1e-6)
        assert result["lpips_unavailable"] is None
    assert batch[0]["lpips"] != pytest.approx(batch[1]["lpips"], abs=1e-3)
    assert set(metrics.evaluate_pair(*crops[0], lpips_net=None)) == {"psnr", "ssim"}


def test_torchvision_cache_is_used_when_present(real_weights, empty_weight_cache):
    # a torchvision-format file (features + a zero classifier head) in an otherwise empty setup
    features = real_weights["alex"]
    head = {f"classifier.{i}.{kind}": torch.zeros(1).expand(shape) for i, n_in, n_out in
            ((1, 9216, 4096), (4, 4096, 4096), (6, 4096, 1000))
            for kind, shape in (("weight", (n_out, n_in)), ("bias", (n_out,)))}
    target = lpips_weights.torchvision_cache_path("alex")
    target.parent.mkdir(parents=True)
    torch.save({**features, **head}, target)
    assert lpips_weights.backbone_source("alex") == target
    ex = REF["lpips_examples"]
    ref, p1 = (_load(ex["files"][k]["path"]) for k in ("ex_ref", "ex_p1"))
    assert metrics.lpips(ref, p1) == pytest.approx(ex["alex"]["ex_ref_vs_ex_p1"], abs=LPIPS_TOL, rel=0)


def test_missing_weights_raise_unavailable_with_command(empty_weight_cache):
    a = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(LPIPSUnavailable) as err:
        metrics.lpips(a, a, net="vgg")
    message = str(err.value)
    assert f"REFUSION_CACHE_DIR={empty_weight_cache / 'cache'} python -m refusion.evaluation.lpips_weights install" in message
    assert str(empty_weight_cache / "cache" / "lpips" / "vgg.safetensors") in message


def test_metric_set_reports_unavailable_lpips(empty_weight_cache):
    a = np.full((32, 32, 3), 10, np.uint8)
    result = metrics.evaluate_pair(a, a + 1)
    assert result["psnr"] == pytest.approx(10 * np.log10(255.0 ** 2), abs=1e-12)
    assert result["lpips"] is None
    assert "python -m refusion.evaluation.lpips_weights install" in result["lpips_unavailable"]


def test_corrupt_cached_weights_are_unavailable(empty_weight_cache):
    path = lpips_weights.weights_path("alex")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(LPIPSUnavailable, match="--force"):
        metrics.lpips(np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32, 3), np.uint8))

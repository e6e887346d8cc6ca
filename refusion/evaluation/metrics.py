"""Image quality metrics: PSNR and SSIM under the BasicSR protocol, LPIPS with the real backbones.

Inputs. The primary form is a uint8 RGB image, HWC, 0..255 (what a saved PNG decodes to). Float
images in [0, 1] (numpy or torch, CHW or HWC, optionally with a leading batch axis of 1) are
quantised exactly as BasicSR's ``tensor2img`` does: cast to float32, clip to [0, 1], multiply by
255, round half to even, uint8. So a network output and the PNG written from it score the same.

PSNR / SSIM (BasicSR ``calculate_psnr`` / ``calculate_ssim``, numpy versions):
``crop_border`` pixels are dropped from every edge; with ``test_y_channel`` the image is replaced
by its ITU-R BT.601 luma ``16 + (65.481 R + 128.553 G + 24.966 B) / 255`` (float, not rounded);
then float64 maths. SSIM uses an 11x11 Gaussian window (sigma 1.5), population statistics,
the "valid" region only, and averages the per-channel values. Our images are RGB: BasicSR's own
arrays are BGR, so its ``bgr2ycbcr`` weights are applied here to the reversed channel order.

LPIPS (``lpips`` package, version 0.1): inputs RGB, NCHW, ``x / 127.5 - 1``. The backbones are the
real ImageNet weights from :mod:`refusion.evaluation.lpips_weights`; when they are not installed,
:class:`LPIPSUnavailable` says which command installs them. A randomly initialised backbone is
never used.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Union

import numpy as np
import torch

from refusion.evaluation import lpips_weights
from refusion.evaluation.lpips_weights import LPIPSUnavailable

__all__ = ["psnr", "ssim", "lpips", "to_uint8_image", "rgb_to_y", "MetricSet", "evaluate_pair",
           "mean_results", "LPIPSUnavailable", "get_lpips_model"]

ImageLike = Union[np.ndarray, torch.Tensor]

# BT.601 luma weights on 0..255 values, R, G, B order
Y_WEIGHTS_RGB = np.array([65.481, 128.553, 24.966])
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = (0.01 * 255) ** 2
SSIM_C2 = (0.03 * 255) ** 2
LPIPS_NETS = ("alex", "vgg")


# ---------------------------------------------------------------------------------------------
# Input conversion
# ---------------------------------------------------------------------------------------------

def _channels_last(x: np.ndarray, name: str, input_order: str, is_torch: bool) -> np.ndarray:
    """Return ``x`` (2-D or 3-D) as HWC."""
    if x.ndim == 2:
        return x[..., None]
    if x.ndim != 3:
        raise ValueError(f"{name}: expected an image of 2 or 3 dimensions (HW, HWC or CHW), got shape {tuple(x.shape)}")
    if input_order == "auto":
        first, last = x.shape[0] in (1, 3), x.shape[-1] in (1, 3)
        if first and last:  # ambiguous, e.g. 3x3x3: the container's convention decides
            input_order = "CHW" if is_torch else "HWC"
        elif first or last:
            input_order = "CHW" if first else "HWC"
        else:
            raise ValueError(f"{name}: cannot find a channel axis of size 1 or 3 in shape {tuple(x.shape)}")
    if input_order == "CHW":
        x = x.transpose(1, 2, 0)
    elif input_order != "HWC":
        raise ValueError(f"input_order={input_order!r} is not allowed; use 'auto', 'HWC' or 'CHW'")
    if x.shape[-1] not in (1, 3):
        raise ValueError(f"{name}: expected 1 or 3 channels, got shape {tuple(x.shape)} as HWC")
    return x


def to_uint8_image(img: ImageLike, name: str = "image", input_order: str = "auto") -> np.ndarray:
    """Convert an image to uint8 HWC (0..255) the way BasicSR's ``tensor2img`` does.

    uint8 inputs are used as they are; float inputs are taken to be in [0, 1] and are clipped,
    scaled by 255 and rounded. A leading batch axis of size 1 is dropped.
    """
    is_torch = isinstance(img, torch.Tensor)
    if is_torch:
        x = img.detach().cpu()
        x = x.numpy() if x.dtype == torch.uint8 else x.float().numpy()
    elif isinstance(img, np.ndarray):
        x = img
    else:
        raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(img).__name__}")
    if x.ndim == 4:
        if x.shape[0] != 1:
            raise ValueError(f"{name}: a batch of {x.shape[0]} images was given where one image is expected "
                             f"(shape {tuple(x.shape)}); call the metric per image")
        x = x[0]
    x = _channels_last(x, name, input_order, is_torch)
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{name}: dtype {x.dtype} is not allowed; use uint8 in 0..255 or float in [0, 1]")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or Inf values")
    return (np.clip(x, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma of a uint8 RGB HWC image as float64 HxWx1 in 16..235, not rounded.

    Follows BasicSR's ``to_y_channel`` step by step, float32 roundings included (scale to [0, 1]
    in float32, weighted sum in float64, result stored as float32 and scaled back to 0..255), so
    values agree with BasicSR's to ~1e-12 rather than ~1e-7.
    """
    unit = img.astype(np.float32) / np.float32(255.0)
    y = (np.dot(unit, Y_WEIGHTS_RGB) + 16.0) / 255.0
    return (y.astype(np.float32) * np.float32(255.0)).astype(np.float64)[..., None]


def _prepare_pair(a: ImageLike, b: ImageLike, crop_border: int, test_y_channel: bool,
                  input_order: str) -> tuple[np.ndarray, np.ndarray]:
    img_a = to_uint8_image(a, "first image", input_order)
    img_b = to_uint8_image(b, "second image", input_order)
    if img_a.shape != img_b.shape:
        raise ValueError(f"image shapes differ: {img_a.shape} and {img_b.shape} (HWC)")
    if not isinstance(crop_border, (int, np.integer)) or isinstance(crop_border, bool) or crop_border < 0:
        raise ValueError(f"crop_border must be a non-negative int, got {crop_border!r}")
    if crop_border:
        if 2 * crop_border >= min(img_a.shape[:2]):
            raise ValueError(f"crop_border={crop_border} leaves nothing of a {img_a.shape[0]}x{img_a.shape[1]} image")
        img_a = img_a[crop_border:-crop_border, crop_border:-crop_border]
        img_b = img_b[crop_border:-crop_border, crop_border:-crop_border]
    if test_y_channel and img_a.shape[-1] == 3:
        return rgb_to_y(img_a), rgb_to_y(img_b)
    return img_a.astype(np.float64), img_b.astype(np.float64)


# ---------------------------------------------------------------------------------------------
# PSNR and SSIM
# ---------------------------------------------------------------------------------------------

def psnr(a: ImageLike, b: ImageLike, crop_border: int = 0, test_y_channel: bool = False,
         input_order: str = "auto") -> float:
    """Peak signal-to-noise ratio in dB on the 0..255 scale (BasicSR protocol); ``inf`` when equal."""
    img_a, img_b = _prepare_pair(a, b, crop_border, test_y_channel, input_order)
    mse = np.mean((img_a - img_b) ** 2)
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(255.0 * 255.0 / mse))


def _gaussian_window_1d() -> np.ndarray:
    # cv2.getGaussianKernel(11, 1.5): exp(-x^2 / (2 sigma^2)) normalised to sum 1
    x = np.arange(SSIM_WINDOW, dtype=np.float64) - (SSIM_WINDOW - 1) / 2
    g = np.exp(-(x ** 2) / (2 * SSIM_SIGMA ** 2))
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable correlation of a 2-D array with the window ``outer(g, g)``, valid region only."""
    k = len(g)
    h, w = x.shape[0] - k + 1, x.shape[1] - k + 1
    rows = sum(g[i] * x[i:i + h, :] for i in range(k))
    return sum(g[i] * rows[:, i:i + w] for i in range(k))


def _ssim_channel(x: np.ndarray, y: np.ndarray) -> float:
    g = _gaussian_window_1d()
    mu_x, mu_y = _filter_valid(x, g), _filter_valid(y, g)
    var_x = _filter_valid(x * x, g) - mu_x ** 2
    var_y = _filter_valid(y * y, g) - mu_y ** 2
    cov = _filter_valid(x * y, g) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)) / (
        (mu_x ** 2 + mu_y ** 2 + SSIM_C1) * (var_x + var_y + SSIM_C2))
    return float(ssim_map.mean())


def ssim(a: ImageLike, b: ImageLike, crop_border: int = 0, test_y_channel: bool = False,
         input_order: str = "auto") -> float:
    """Structural similarity (BasicSR protocol): mean over channels of the mean SSIM map."""
    img_a, img_b = _prepare_pair(a, b, crop_border, test_y_channel, input_order)
    if min(img_a.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels after crop_border={crop_border}, "
                         f"got {img_a.shape[0]}x{img_a.shape[1]}")
    return float(np.mean([_ssim_channel(img_a[..., c], img_b[..., c]) for c in range(img_a.shape[-1])]))


# ---------------------------------------------------------------------------------------------
# LPIPS
# ---------------------------------------------------------------------------------------------

_LPIPS_MODELS: dict[tuple, torch.nn.Module] = {}


def _build_lpips(net: str, device: torch.device) -> torch.nn.Module:
    import lpips as lpips_package

    state = lpips_weights.load_backbone(net)  # raises LPIPSUnavailable with the install command
    with warnings.catch_warnings():  # lpips 0.1.4 still calls torchvision with pretrained=...
        warnings.simplefilter("ignore", UserWarning)
        # pnet_rand: build the backbone without downloading; the real weights are copied in below
        model = lpips_package.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    # lpips keeps torchvision's index as the module name inside its slices: slice{s}.{j}.weight
    backbone = dict(model.net.named_parameters())
    by_index = {name.split(".", 1)[1]: name for name in backbone}
    if set(by_index) != {k.split(".", 1)[1] for k in state}:
        raise RuntimeError(f"lpips {net!r} backbone parameters {sorted(by_index)} do not match the weights' "
                           f"{sorted(state)}; the lpips package layout has changed")
    with torch.no_grad():
        for key, value in state.items():
            backbone[by_index[key.split(".", 1)[1]]].copy_(value)
    model.eval().requires_grad_(False)
    return model.to(device)


def get_lpips_model(net: str = "alex", device: str | torch.device = "cpu") -> torch.nn.Module:
    """The LPIPS model for ``net`` on ``device`` with the real backbone, built once and cached."""
    if net not in LPIPS_NETS:
        raise ValueError(f"net={net!r} is not supported; allowed: {', '.join(LPIPS_NETS)}")
    device = torch.device(device)
    source = lpips_weights.backbone_source(net)
    # the source file is part of the key, so a (re)install or another cache dir builds afresh
    key = (net, str(device), str(source), source.stat().st_mtime_ns)
    if key not in _LPIPS_MODELS:
        _LPIPS_MODELS[key] = _build_lpips(net, device)
    return _LPIPS_MODELS[key]


def _to_lpips_input(x: ImageLike, name: str, device: torch.device) -> torch.Tensor:
    """NCHW float32 in [-1, 1] on ``device``, quantised to 8 bits as for PSNR/SSIM."""
    if isinstance(x, torch.Tensor) and x.ndim == 4:
        if x.shape[1] not in (1, 3):
            raise ValueError(f"{name}: a batch must be NCHW with 1 or 3 channels, got shape {tuple(x.shape)}")
        if x.dtype == torch.uint8:
            batch = x.to(device=device, dtype=torch.float32)
        elif x.is_floating_point():
            x = x.detach().to(device=device, dtype=torch.float32)
            if not torch.isfinite(x).all():
                raise ValueError(f"{name}: contains NaN or Inf values")
            batch = (x.clamp(0.0, 1.0) * 255.0).round()
        else:
            raise TypeError(f"{name}: dtype {x.dtype} is not allowed; use uint8 in 0..255 or float in [0, 1]")
    else:
        hwc = to_uint8_image(x, name)
        batch = torch.from_numpy(hwc.copy()).permute(2, 0, 1)[None].to(device=device, dtype=torch.float32)
    if batch.shape[1] == 1:  # grey: the backbones expect RGB
        batch = batch.expand(-1, 3, -1, -1)
    return batch / 127.5 - 1.0


def lpips(a: ImageLike, b: ImageLike, net: str = "alex",
          device: str | torch.device | None = None) -> float | torch.Tensor:
    """LPIPS distance (lower is more similar) with the real AlexNet or VGG16 backbone.

    One image each (uint8 HWC, or float in [0, 1] as HWC/CHW) gives a float; NCHW tensors (float in
    [0, 1] or uint8) give a CPU float32 tensor of N distances. ``device`` defaults to the device of
    ``a`` when it is a tensor, else the CPU. Raises :class:`LPIPSUnavailable` when the weights are
    not installed.
    """
    if device is None:
        device = a.device if isinstance(a, torch.Tensor) else "cpu"
    device = torch.device(device)
    model = get_lpips_model(net, device)
    x = _to_lpips_input(a, "first image", device)
    y = _to_lpips_input(b, "second image", device)
    if x.shape != y.shape:
        raise ValueError(f"image shapes differ: {tuple(x.shape)} and {tuple(y.shape)} (NCHW)")
    tf32 = torch.backends.cudnn.allow_tf32
    try:
        if device.type == "cuda":  # TF32 convolutions move LPIPS past the reference tolerance
            torch.backends.cudnn.allow_tf32 = False
        with torch.inference_mode():
            dist = model(x, y).reshape(-1).float().cpu()
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    batched = isinstance(a, torch.Tensor) and a.ndim == 4
    return dist if batched else float(dist[0])


# ---------------------------------------------------------------------------------------------
# The set of metrics reported by evaluation and validation
# ---------------------------------------------------------------------------------------------

class MetricSet:
    """PSNR, SSIM and (optionally) LPIPS of restored images against ground truth, one protocol.

    ``lpips_net=None`` leaves LPIPS out. When LPIPS is asked for but its weights are missing, the
    result says so instead of failing: ``lpips`` is None and ``lpips_unavailable`` holds the
    reason with the install command (checked once per MetricSet).
    """

    def __init__(self, crop_border: int = 0, test_y_channel: bool = False, lpips_net: str | None = "alex",
                 device: str | torch.device | None = None):
        if lpips_net is not None and lpips_net not in LPIPS_NETS:
            raise ValueError(f"lpips_net={lpips_net!r} is not allowed; use one of {LPIPS_NETS} or None")
        self.crop_border = crop_border
        self.test_y_channel = test_y_channel
        self.lpips_net = lpips_net
        self.device = device
        self._lpips_reason: str | None = None

    def _lpips_fields(self, restored: ImageLike, gt: ImageLike) -> dict[str, Any]:
        if self.lpips_net is None:
            return {}
        if self._lpips_reason is None:
            try:
                return {"lpips": lpips(restored, gt, self.lpips_net, self.device), "lpips_unavailable": None}
            except LPIPSUnavailable as err:
                self._lpips_reason = str(err)
        return {"lpips": None, "lpips_unavailable": self._lpips_reason}

    def __call__(self, restored: ImageLike, gt: ImageLike) -> dict[str, Any]:
        """``{"psnr", "ssim"}`` plus ``{"lpips", "lpips_unavailable"}`` when LPIPS is asked for."""
        out: dict[str, Any] = {
            "psnr": psnr(restored, gt, self.crop_border, self.test_y_channel),
            "ssim": ssim(restored, gt, self.crop_border, self.test_y_channel),
        }
        out.update(self._lpips_fields(restored, gt))
        return out

    def evaluate_batch(self, restored: torch.Tensor, gt: torch.Tensor) -> list[dict[str, Any]]:
        """One result dict per image of two NCHW batches; LPIPS runs once on the whole batch."""
        if restored.ndim != 4 or restored.shape != gt.shape:
            raise ValueError(f"expected two NCHW batches of equal shape, got {tuple(restored.shape)} "
                             f"and {tuple(gt.shape)}")
        results = [{"psnr": psnr(r, g, self.crop_border, self.test_y_channel, "CHW"),
                    "ssim": ssim(r, g, self.crop_border, self.test_y_channel, "CHW")}
                   for r, g in zip(restored, gt)]
        if self.lpips_net is not None:
            fields = self._lpips_fields(restored, gt)
            values = fields["lpips"]
            for i, res in enumerate(results):
                res.update(lpips=None if values is None else float(values[i]),
                           lpips_unavailable=fields["lpips_unavailable"])
        return results


def evaluate_pair(restored: ImageLike, gt: ImageLike, crop_border: int = 0, test_y_channel: bool = False,
                  lpips_net: str | None = "alex", device: str | torch.device | None = None) -> dict[str, Any]:
    """PSNR, SSIM and LPIPS of one restored image against its ground truth (see :class:`MetricSet`)."""
    return MetricSet(crop_border, test_y_channel, lpips_net, device)(restored, gt)


def mean_results(results: list[dict[str, Any]]) -> dict[str, float | None]:
    """Average each metric over a list of result dicts (None when any value is missing; inf kept)."""
    keys = [k for k in ("psnr", "ssim", "lpips") if results and k in results[0]]
    out: dict[str, float | None] = {}
    for key in keys:
        values = [r[key] for r in results]
        out[key] = None if any(v is None for v in values) else float(math.fsum(values) / len(values))
    return out

"""Conversion of user images (torch tensor, numpy array, PIL image) to a float32 batch and back.

``sample`` and ``restore`` accept what users have at hand and return the same kind:
- torch tensor (B, C, H, W) or (C, H, W), float in [0, 1] (any float dtype/device) -> same shape,
  dtype and device;
- numpy array (H, W, C) or (H, W): uint8 (0..255), uint16 (0..65535) or float in [0, 1] -> same
  shape and dtype;
- PIL image (converted to RGB; a palette/greyscale/alpha image becomes 3-channel RGB) -> RGB PIL
  image of mode "RGB";
- a list of PIL images of one size -> a list of PIL images.

Policy for values (documented in docs/inference.md): NaN or Inf is refused (ValueError); float
values outside [0, 1] are clamped with a warning (a stray -1e-3 from a previous resize is common
and harmless, and the SDE's mu must lie in the range it was trained on).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["InputKind", "to_batch", "from_batch", "tensor_to_pil", "tensor_to_numpy", "split_views", "join_views"]


@dataclass(frozen=True)
class InputKind:
    """How the user's image looked, so the result can be given back in the same form."""

    kind: str                    # "pt" | "np" | "pil" | "pil_list"
    batched: bool = True         # tensor had a batch axis
    dtype: Any = None            # torch or numpy dtype of the input
    device: Any = None           # torch device of a tensor input
    greyscale: bool = False      # numpy (H, W) input


def _check_and_clamp(x: torch.Tensor, what: str) -> torch.Tensor:
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contains NaN or Inf values; refusing to restore it")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        warnings.warn(f"{what} has values in [{lo:.4g}, {hi:.4g}], outside [0, 1]; clamping to [0, 1]",
                      stacklevel=3)
        x = x.clamp(0.0, 1.0)
    return x


def _pil_to_tensor(img) -> torch.Tensor:
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def to_batch(image: Any) -> tuple[torch.Tensor, InputKind]:
    """Return a float32 (B, C, H, W) tensor in [0, 1] and a description of the input's form."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        Image = None
    if isinstance(image, torch.Tensor):
        if image.dim() not in (3, 4):
            raise ValueError(f"image tensor must be (C, H, W) or (B, C, H, W), got shape {tuple(image.shape)}")
        if not image.is_floating_point():
            raise ValueError(f"image tensor must be a float tensor in [0, 1], got dtype {image.dtype}")
        kind = InputKind("pt", batched=image.dim() == 4, dtype=image.dtype, device=image.device)
        x = image if image.dim() == 4 else image[None]
        return _check_and_clamp(x.detach().float(), "input image tensor"), kind
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3):
            raise ValueError(f"numpy image must be (H, W, C) or (H, W), got shape {image.shape}")
        if image.dtype == np.uint8:
            x = image.astype(np.float32) / 255.0
        elif image.dtype == np.uint16:
            x = image.astype(np.float32) / 65535.0
        elif np.issubdtype(image.dtype, np.floating):
            x = image.astype(np.float32)
        else:
            raise ValueError(f"numpy image dtype must be uint8, uint16 or float, got {image.dtype}")
        greyscale = image.ndim == 2
        x = x[:, :, None] if greyscale else x
        t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None]
        kind = InputKind("np", dtype=image.dtype, greyscale=greyscale)
        return _check_and_clamp(t, "input numpy image"), kind
    if Image is not None and isinstance(image, Image.Image):
        return _pil_to_tensor(image)[None], InputKind("pil")
    if isinstance(image, (list, tuple)) and image and Image is not None and all(
            isinstance(i, Image.Image) for i in image):
        sizes = {i.size for i in image}
        if len(sizes) != 1:
            raise ValueError(f"a list of PIL images must share one size, got sizes {sorted(sizes)}")
        return torch.stack([_pil_to_tensor(i) for i in image]), InputKind("pil_list")
    raise TypeError(
        "image must be a torch tensor (C,H,W)/(B,C,H,W) in [0,1], a numpy array (H,W,C) "
        f"(uint8, uint16 or float in [0,1]), a PIL image or a list of PIL images; got {type(image).__name__}")


def tensor_to_numpy(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [0, 1] -> float32 numpy (B, H, W, C)."""
    return x.detach().float().cpu().permute(0, 2, 3, 1).numpy()


def tensor_to_pil(x: torch.Tensor) -> list:
    """(B, 3 or 1, H, W) in [0, 1] -> list of PIL images (RGB or L), rounded to 8 bits."""
    from PIL import Image

    arr = (tensor_to_numpy(x) * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
    return [Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a) for a in arr]


def from_batch(x: torch.Tensor, kind: InputKind) -> Any:
    """Give a (B, C, H, W) float result in [0, 1] back in the form described by ``kind``."""
    if kind.kind == "pt":
        y = x.to(device=kind.device, dtype=kind.dtype)
        return y if kind.batched else y[0]
    if kind.kind == "np":
        arr = tensor_to_numpy(x)[0]
        if kind.greyscale:
            arr = arr[:, :, 0] if arr.shape[2] == 1 else arr
        if kind.dtype == np.uint8:
            return (arr * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
        if kind.dtype == np.uint16:
            return (arr * 65535.0 + 0.5).clip(0, 65535).astype(np.uint16)
        return arr.astype(kind.dtype)
    if kind.kind == "pil":
        return tensor_to_pil(x)[0]
    if kind.kind == "pil_list":
        return tensor_to_pil(x)
    raise ValueError(f"unknown input kind {kind.kind!r}")


def split_views(x: torch.Tensor) -> torch.Tensor:
    """(B, 2C, H, W) stereo pairs (left channels first) -> (2B, C, H, W): all left views, then all right."""
    if x.dim() != 4 or x.shape[1] % 2:
        raise ValueError(f"stereo pairs must be (B, 2C, H, W) with the views on channels, got {tuple(x.shape)}")
    return torch.cat(x.chunk(2, dim=1), dim=0)


def join_views(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Left and right views (B, C, H, W) -> (B, 2C, H, W), the layout StereoNAFNet takes."""
    if left.shape != right.shape:
        raise ValueError(f"the stereo views differ in shape: left {tuple(left.shape)}, right {tuple(right.shape)}")
    return torch.cat([left, right], dim=1)

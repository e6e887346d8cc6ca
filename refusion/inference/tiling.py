"""Overlapped tiles with smooth blending, for any image -> image function.

A large image is cut into tiles of ``tile`` x ``tile`` pixels that overlap their neighbours by
``overlap`` pixels; each tile goes through the function and the outputs are blended back with
separable raised-cosine weights. Within an overlap the weights are exactly zero for the
``overlap // 4`` pixels nearest a tile's inner edge (where a tile lacks context), ramp smoothly over
the middle half, and the weights of all tiles sum to one at every pixel. So a function whose
receptive-field radius is at most ``overlap // 4`` pixels gives the same result tiled as on the
whole image (up to float rounding); wider receptive fields (global pooling, attention) give
seams that the ramp hides.

Tiles start at multiples of ``multiple`` and have a size that is a multiple of it, so a U-Net
that pads to 2^levels sees no padding inside the image and tiles of a downsampling
autoencoder map onto whole latent pixels. The image is reflect-padded to a multiple first and
the output cropped back.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["TileSpec", "validate_tiling", "tile_starts", "blend_weights_1d", "tile_layout", "tiled_apply"]


@dataclass(frozen=True)
class TileSpec:
    """One tile: rows ``top:top+height``, columns ``left:left+width`` of the (padded) image."""

    top: int
    left: int
    height: int
    width: int


def validate_tiling(tile: int, overlap: int, multiple: int = 1) -> None:
    """Raise ValueError naming the argument when ``tile``/``overlap``/``multiple`` cannot work."""
    if not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"multiple must be a positive int, got {multiple!r}")
    if not isinstance(tile, int) or tile < 1:
        raise ValueError(f"tile_size must be a positive int, got {tile!r}")
    if tile % multiple:
        raise ValueError(f"tile_size must be a multiple of {multiple} for this network, got {tile}")
    if not isinstance(overlap, int) or overlap < 0:
        raise ValueError(f"tile_overlap must be an int >= 0, got {overlap!r}")
    if overlap >= tile:
        raise ValueError(f"tile_overlap must be smaller than tile_size ({tile}), got {overlap}")


def tile_starts(length: int, tile: int, overlap: int, multiple: int = 1) -> list[int]:
    """Start offsets of tiles covering ``[0, length)``; ``length`` and ``tile`` are multiples of ``multiple``.

    Consecutive tiles overlap by at least ``overlap``; the last tile ends exactly at ``length``.
    """
    if length <= tile:
        return [0]
    stride = max(multiple, (tile - overlap) // multiple * multiple)
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def _ramp(n_margin: int, n_ramp: int) -> torch.Tensor:
    """Rising edge: ``n_margin`` zeros then ``n_ramp`` samples of sin^2 strictly inside (0, 1)."""
    ramp = torch.sin(0.5 * math.pi * (torch.arange(n_ramp, dtype=torch.float64) + 0.5) / n_ramp) ** 2
    return torch.cat([torch.zeros(n_margin, dtype=torch.float64), ramp])


def blend_weights_1d(length: int, tile: int, overlap: int, multiple: int = 1) -> list[torch.Tensor]:
    """Per-tile float64 weights along one axis (one tensor per start); they sum to 1 at every index."""
    starts = tile_starts(length, tile, overlap, multiple)
    size = min(tile, length)
    margin = overlap // 4
    edge = _ramp(margin, overlap - 2 * margin) if overlap > 0 else torch.zeros(0, dtype=torch.float64)
    raw = []
    for i, start in enumerate(starts):
        w = torch.ones(size, dtype=torch.float64)
        if i > 0 and len(edge):                 # a neighbour before: fade in
            w[: len(edge)] = edge
        if i < len(starts) - 1 and len(edge):   # a neighbour after: fade out
            w[size - len(edge):] = w[size - len(edge):] * edge.flip(0)
        raw.append(w)
    total = torch.zeros(length, dtype=torch.float64)
    for start, w in zip(starts, raw):
        total[start:start + size] += w
    # exact complementarity holds where neighbours overlap by exactly `overlap`; the last tile
    # (aligned to the end) may overlap more, so normalise to make the sum exactly one everywhere
    return [w / total[start:start + size] for start, w in zip(starts, raw)]


def tile_layout(height: int, width: int, tile: int, overlap: int, multiple: int = 1
                ) -> list[tuple[TileSpec, torch.Tensor]]:
    """Tiles of an image of ``height`` x ``width`` (multiples of ``multiple``) with their 2-D float64 weights."""
    validate_tiling(tile, overlap, multiple)
    if height % multiple or width % multiple:
        raise ValueError(f"image size {height}x{width} must be a multiple of {multiple} (pad it first)")
    rows = list(zip(tile_starts(height, tile, overlap, multiple), blend_weights_1d(height, tile, overlap, multiple)))
    cols = list(zip(tile_starts(width, tile, overlap, multiple), blend_weights_1d(width, tile, overlap, multiple)))
    return [
        (TileSpec(top, left, len(wy), len(wx)), wy[:, None] * wx[None, :])
        for top, wy in rows for left, wx in cols
    ]


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def tiled_apply(
    fn: Callable[..., torch.Tensor],
    inputs: torch.Tensor | Sequence[torch.Tensor],
    tile: int,
    overlap: int = 32,
    multiple: int = 8,
    *,
    out_device: torch.device | str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Apply ``fn`` tile by tile to same-size image tensors (B, C_i, H, W) and blend the outputs.

    ``inputs`` is one tensor or a sequence of tensors sharing B, H, W; ``fn`` receives the
    matching tile of each (positionally) and must return a (B, C_out, h, w) tensor for a tile of
    h x w pixels (C_out may differ from the input channels). ``out_device`` (default: the
    first input's device) is where the full-size output is accumulated, so a huge image can
    stay in host memory while the tiles run on an accelerator. ``progress`` shows a tqdm bar
    over the tiles.
    """
    tensors = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
    if not tensors:
        raise ValueError("tiled_apply needs at least one input tensor")
    for i, t in enumerate(tensors):
        if t.dim() != 4:
            raise ValueError(f"tiled_apply input {i} must be (B, C, H, W), got shape {tuple(t.shape)}")
        if t.shape[0] != tensors[0].shape[0] or t.shape[-2:] != tensors[0].shape[-2:]:
            raise ValueError(f"tiled_apply inputs must share batch and spatial size: "
                             f"{[tuple(s.shape) for s in tensors]}")
    validate_tiling(tile, overlap, multiple)
    height, width = tensors[0].shape[-2:]
    padded = [_pad_to_multiple(t, multiple) for t in tensors]
    ph, pw = padded[0].shape[-2:]
    out_device = torch.device(out_device) if out_device is not None else tensors[0].device
    out = None
    layout = tile_layout(ph, pw, tile, overlap, multiple)
    if progress:
        from tqdm.auto import tqdm

        layout = tqdm(layout, desc="tiles", leave=False)
    for spec, weight in layout:
        rows = slice(spec.top, spec.top + spec.height)
        cols = slice(spec.left, spec.left + spec.width)
        y = fn(*(t[..., rows, cols] for t in padded))
        if y.dim() != 4 or y.shape[0] != tensors[0].shape[0] or y.shape[-2:] != (spec.height, spec.width):
            raise ValueError(f"tiled function returned shape {tuple(y.shape)} for a tile of "
                             f"{spec.height}x{spec.width}; it must keep batch size and spatial size")
        if out is None:
            out = torch.zeros(y.shape[0], y.shape[1], ph, pw, dtype=y.dtype, device=out_device)
        w = weight.to(device=y.device, dtype=y.dtype)
        out[..., rows, cols] += (y * w).to(out_device)
    return out[..., :height, :width]

"""Lens information of the bokeh task: per image the source lens, the target lens and the disparity.

The file is the ``meta.txt`` of EBB! / the NTIRE 2023 Bokeh Effect Transformation dataset, read as the
official latent-bokeh data code reads it: one line per image, ``id, src_lens, tgt_lens, disparity``

    00000, Sony50mmf1.8BS, Sony50mmf16.0BS, 35

``id`` is the image name up to its first dot (``00000.src.jpg`` and ``00000.png`` are both ``00000``).
A lens is ``Canon50mmf<N>`` or ``Sony50mmf<N>`` (an optional ``BS`` suffix is dropped) or a plain signed
f-number; the official encoding turns it into one number: Canon -> -N, Sony -> +N, times
``LENS_SCALE`` (10), so Sony50mmf1.8BS is 18, Canon50mmf1.4BS is -14 and Sony50mmf16.0BS (all in focus)
160. The disparity (the blur strength) is used as it is. These three numbers, in this order, are the
``lens_info`` the official network embeds (``refusion.models.BokehNAFNet``).

In range: an f-number N in (0, ``MAX_F_NUMBER``], a finite disparity >= 0. Anything else, a malformed
line, an id given twice or an image without an entry is a ``LensMetadataError`` naming the file, the
line and the value.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import NamedTuple

import torch

__all__ = ["LensInfo", "LensMetadataError", "LENS_INFO_KEYS", "LENS_SCALE", "MAX_F_NUMBER", "ALL_IN_FOCUS", "lens_value",
           "lens_info", "read_lens_metadata", "lens_info_for", "lens_id", "format_lens_line", "lens_batch",
           "lens_arguments"]

LENS_INFO_KEYS = ("src_lens", "tgt_lens", "disparity")
LENS_SCALE = 10.0            # official lenstr2tensor(lens, scale=10.)
MAX_F_NUMBER = 64.0          # the smallest aperture of ordinary photographic lenses
ALL_IN_FOCUS = 100.0         # an encoded lens above this (Sony f/10 and narrower) renders all in focus (official use_swap)
LENS_MAKERS = {"canon": -1.0, "sony": 1.0}   # the official encoding's sign of each maker
_LENS_NAME = re.compile(r"^(canon|sony)50mmf([0-9]*\.?[0-9]+)(bs)?$", re.IGNORECASE)


class LensMetadataError(ValueError):
    """Lens information that is missing, malformed or out of range; the message names the file and key."""


class LensInfo(NamedTuple):
    """The encoded [src_lens, tgt_lens, disparity] of one image (official scaling)."""
    src_lens: float
    tgt_lens: float
    disparity: float


def _f_number_value(sign: float, f_number: float, where: str) -> float:
    if not (math.isfinite(f_number) and 0 < f_number <= MAX_F_NUMBER):
        raise LensMetadataError(f"{where}: f-number {f_number:g} is out of range: expected 0 < N <= {MAX_F_NUMBER:g}")
    return sign * f_number * LENS_SCALE


def lens_value(text: str | float, *, where: str = "lens") -> float:
    """The official number of one lens: ``Canon50mmf1.4BS`` -> -14.0, ``Sony50mmf16.0`` -> 160.0, a plain
    signed f-number ``-1.4`` -> -14.0. Unknown names and f-numbers out of range raise, naming ``where``."""
    if isinstance(text, bool):
        raise LensMetadataError(f"{where}: {text!r} is not a lens")
    if isinstance(text, (int, float)):
        number = float(text)
    else:
        name = str(text).strip()
        match = _LENS_NAME.match(name)
        if match:
            return _f_number_value(LENS_MAKERS[match.group(1).lower()], float(match.group(2)), where)
        try:
            number = float(name)
        except ValueError:
            raise LensMetadataError(f"{where}: unknown lens {name!r}; expected Canon50mmf<N> or Sony50mmf<N> "
                                    f"(optionally ending in BS) or a signed f-number (Canon negative)") from None
    if number == 0 or not math.isfinite(number):
        raise LensMetadataError(f"{where}: lens {text!r} is out of range: a signed f-number, 0 < |N| <= "
                                f"{MAX_F_NUMBER:g} (Canon negative, Sony positive)")
    return _f_number_value(math.copysign(1.0, number), abs(number), where)


def _disparity_value(text: str | float, where: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise LensMetadataError(f"{where}: disparity {text!r} is not a number") from None
    if isinstance(text, bool) or not math.isfinite(value) or value < 0:
        raise LensMetadataError(f"{where}: disparity {text!r} is out of range: expected a finite number >= 0")
    return value


def lens_info(src_lens: str | float, tgt_lens: str | float, disparity: str | float, *,
              where: str = "lens information") -> LensInfo:
    """Encode one image's [source lens, target lens, disparity] (see :func:`lens_value`)."""
    return LensInfo(lens_value(src_lens, where=f"{where}: src_lens"),
                    lens_value(tgt_lens, where=f"{where}: tgt_lens"),
                    _disparity_value(disparity, f"{where}: disparity"))


def lens_id(name: str) -> str:
    """The metadata id of an image name or stem: everything before the first dot (official)."""
    return Path(name).name.split(".")[0]


def read_lens_metadata(path: str | os.PathLike) -> dict[str, LensInfo]:
    """id -> LensInfo of a ``meta.txt`` (lines ``id, src_lens, tgt_lens, disparity``; blank lines and
    lines starting with ``#`` are skipped)."""
    path = Path(path)
    if not path.is_file():
        raise LensMetadataError(f"lens metadata file {str(path)!r} does not exist")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise LensMetadataError(f"lens metadata file {str(path)!r} cannot be read: {exc}") from None
    table: dict[str, LensInfo] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{number}"
        parts = [part.strip() for part in line.split(",")]
        if len(parts) != 4 or not parts[0]:
            raise LensMetadataError(f"{where}: expected 'id, src_lens, tgt_lens, disparity' (4 comma-separated "
                                    f"fields), got {line.strip()!r}")
        key = lens_id(parts[0])
        if key in table:
            raise LensMetadataError(f"{where}: id {key!r} is listed twice")
        table[key] = lens_info(*parts[1:], where=f"{where} (id {key!r})")
    if not table:
        raise LensMetadataError(f"lens metadata file {str(path)!r} holds no entries")
    return table


def lens_info_for(table: dict[str, LensInfo], name: str, *, source: str | os.PathLike, image: str | None = None
                  ) -> LensInfo:
    """The entry of image ``name`` (a stem or file name); a missing one names the image and ``source``."""
    for key in (Path(name).stem, lens_id(name)):
        if key in table:
            return table[key]
    raise LensMetadataError(f"lens metadata {str(source)!r} has no entry for image {image or name!r} "
                            f"(id {lens_id(name)!r}); every image needs a line 'id, src_lens, tgt_lens, disparity'")


def format_lens_line(image_id: str, src_lens: str, tgt_lens: str, disparity: float) -> str:
    """One ``meta.txt`` line, as the dataset writes it: ``00000, Sony50mmf1.8BS, Sony50mmf16.0BS, 35``."""
    value = f"{disparity:g}"
    return f"{image_id}, {src_lens}, {tgt_lens}, {value}"


def lens_batch(value, batch_size: int):
    """Lens information for a batch as a float32 (B, 3) tensor: from a (B, 3) / (3,) tensor or array, a
    LensInfo, or a sequence [src_lens, tgt_lens, disparity] of scalars or (B,) values (each already
    encoded as :func:`lens_info` encodes it). A (3,) value is repeated over the batch."""
    if isinstance(value, torch.Tensor) or hasattr(value, "__array__"):
        table = torch.as_tensor(value, dtype=torch.float32)
    elif isinstance(value, (list, tuple)) and len(value) == len(LENS_INFO_KEYS):
        columns = [torch.as_tensor(v, dtype=torch.float32).reshape(-1) for v in value]
        if any(c.numel() not in (1, batch_size) for c in columns):
            raise LensMetadataError(f"lens_info: each of {', '.join(LENS_INFO_KEYS)} must be a scalar or have "
                                    f"{batch_size} values (one per image), got {[c.numel() for c in columns]}")
        table = torch.stack([c.expand(batch_size) for c in columns], dim=1)
    else:
        raise LensMetadataError(f"lens_info must be [{', '.join(LENS_INFO_KEYS)}] or a ({batch_size}, 3) tensor, "
                                f"got {type(value).__name__}")
    if table.shape == (len(LENS_INFO_KEYS),):
        table = table.expand(batch_size, -1)
    if table.shape != (batch_size, len(LENS_INFO_KEYS)):
        raise LensMetadataError(f"lens_info must hold [{', '.join(LENS_INFO_KEYS)}] for each of the {batch_size} "
                                f"images: shape ({batch_size}, 3), got {tuple(table.shape)}")
    if not bool(torch.isfinite(table).all()):
        raise LensMetadataError("lens_info holds NaN or Inf")
    return table.contiguous()


def lens_arguments(table) -> list:
    """The network's ``lens_info=`` argument: the (B,) columns [src_lens, tgt_lens, disparity] of a (B, 3) table."""
    return list(table.unbind(dim=1))

"""Paired GT/LQ datasets: pairing folders by file stem, conditioning inputs, crops/flips/rotations.

Image files are read and written by `refusion.data.image_io`.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from refusion.data.image_io import IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS, read_image_raw
from refusion.data.lens import ALL_IN_FOCUS, lens_info_for, read_lens_metadata

__all__ = ["PairedImageDataset", "find_pairs", "find_stereo_pairs", "stereo_groups", "load_condition_vectors"]


# ----------------------------------------------------------------------------------------------
# Pairing


def _list_images(folder: Path, role: str) -> tuple[dict[str, Path], list[str]]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{role} folder '{folder}' does not exist or is not a directory")
    images: dict[str, Path] = {}
    unreadable: list[str] = []
    others: list[str] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.suffix.lower() not in IMAGE_EXTENSIONS:
            if not entry.is_dir():
                others.append(entry.name)
            continue
        if not entry.is_file() or not os.access(entry, os.R_OK):
            unreadable.append(f"{entry} (not a readable file)")
            continue
        if entry.stat().st_size == 0:
            unreadable.append(f"{entry} (empty file)")
            continue
        if entry.stem in images:
            raise ValueError(f"{role} folder '{folder}' holds two images named '{entry.stem}': "
                             f"'{images[entry.stem].name}' and '{entry.name}'")
        images[entry.stem] = entry
    if not images and not unreadable:
        hint = f"; it holds other files such as {_few(others)}" if others else ""
        raise FileNotFoundError(f"{role} folder '{folder}' has no images ({', '.join(IMAGE_EXTENSIONS)}){hint}")
    return images, unreadable


def _few(names: Sequence[str], count: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:count])
    return shown + (f" and {len(names) - count} more" if len(names) > count else "")


def find_pairs(gt_dir: str | os.PathLike, lq_dir: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """Match GT and LQ images by file stem (extensions may differ); sorted by name.

    Hidden files and non-image files are ignored. Unmatched names on either side and unreadable or
    empty image files are one error that lists them (the first few and a count).
    """
    gt_dir, lq_dir = Path(gt_dir), Path(lq_dir)
    gt, gt_bad = _list_images(gt_dir, "GT")
    lq, lq_bad = _list_images(lq_dir, "LQ")
    only_gt = sorted(set(gt) - set(lq))
    only_lq = sorted(set(lq) - set(gt))
    problems = []
    if only_gt:
        problems.append(f"{len(only_gt)} GT image(s) without an LQ partner in '{lq_dir}': "
                        f"{_few([gt[n].name for n in only_gt])}")
    if only_lq:
        problems.append(f"{len(only_lq)} LQ image(s) without a GT partner in '{gt_dir}': "
                        f"{_few([lq[n].name for n in only_lq])}")
    bad = gt_bad + lq_bad
    if bad:
        problems.append(f"{len(bad)} unreadable entr{'y' if len(bad) == 1 else 'ies'}: {_few(bad)}")
    if problems:
        raise ValueError(f"cannot pair '{gt_dir}' with '{lq_dir}' (pairs match by file stem):\n  "
                         + "\n  ".join(problems))
    return [(name, gt[name], lq[name]) for name in sorted(gt)]



# Flickr1024 / NTIRE stereo naming: <id>_L.<ext> and <id>_R.<ext>
STEREO_SUFFIXES = ("_L", "_R")


def stereo_groups(names: Sequence[str], paths: dict[str, Path] | None = None) -> list[str]:
    """The pair ids of ``<id>_L`` / ``<id>_R`` names, sorted; a view without its partner (or a name
    that is no view) is one ValueError listing them."""
    ids: dict[str, set[str]] = {}
    strays = []
    for name in names:
        suffix = name[-2:]
        if suffix in STEREO_SUFFIXES and len(name) > 2:
            ids.setdefault(name[:-2], set()).add(suffix)
        else:
            strays.append(name)
    lonely = sorted(f"{i}{next(iter(s))}" for i, s in ids.items() if len(s) == 1)
    problems = []
    if lonely:
        shown = [str(paths[n]) if paths else n for n in lonely]
        problems.append(f"{len(lonely)} view(s) without their partner view: {_few(shown)} "
                        f"(each <id>_L needs an <id>_R and the other way round)")
    if strays:
        shown = [str(paths[n]) if paths else n for n in strays]
        problems.append(f"{len(strays)} image(s) not named as a stereo view (<id>_L / <id>_R): {_few(shown)}")
    if problems:
        raise ValueError("stereo pairs: " + "; ".join(problems))
    return sorted(i for i, s in ids.items() if len(s) == 2)


def find_stereo_pairs(gt_dir: str | os.PathLike, lq_dir: str | os.PathLike
                      ) -> list[tuple[str, tuple[Path, Path], tuple[Path, Path]]]:
    """GT/LQ stereo pairs: ``(id, (gt_L, gt_R), (lq_L, lq_R))``, matched by file stem as find_pairs."""
    pairs = {name: (gt, lq) for name, gt, lq in find_pairs(gt_dir, lq_dir)}
    ids = stereo_groups(list(pairs), {n: g for n, (g, _) in pairs.items()})
    return [(i, (pairs[i + "_L"][0], pairs[i + "_R"][0]), (pairs[i + "_L"][1], pairs[i + "_R"][1])) for i in ids]


# ----------------------------------------------------------------------------------------------
# Conditioning inputs


def load_condition_vectors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a name -> vector table (bokeh lens metadata, ...) from JSON or CSV.

    JSON: an object `{"0001": [1.8, 0.5], ...}`. CSV: rows `name,v1,v2,...`, with an optional header
    row. Names are image stems (an image extension on a name is ignored). All vectors have one length.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"conditioning file '{path}' does not exist")
    suffix = path.suffix.lower()
    if suffix == ".json":
        table = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(table, dict):
            raise ValueError(f"conditioning file '{path}': expected a JSON object name -> list of numbers")
        items = list(table.items())
    elif suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            rows = [row for row in csv.reader(f) if row and any(cell.strip() for cell in row)]
        if rows and not _is_number(rows[0][1] if len(rows[0]) > 1 else ""):
            rows = rows[1:]  # header
        items = [(row[0].strip(), row[1:]) for row in rows]
    else:
        raise ValueError(f"conditioning file '{path}': unsupported extension {path.suffix!r}, use .json or .csv")
    vectors: dict[str, np.ndarray] = {}
    for name, values in items:
        values = [values] if isinstance(values, (int, float)) else values
        if not isinstance(values, list) or not values or not all(_is_number(v) for v in values):
            raise ValueError(f"conditioning file '{path}': entry {name!r} must be a non-empty list of numbers, got {values!r}")
        vector = np.asarray([float(v) for v in values], dtype=np.float32)
        if not np.isfinite(vector).all():
            raise ValueError(f"conditioning file '{path}': entry {name!r} holds NaN or Inf")
        stem = Path(name).stem if Path(name).suffix.lower() in IMAGE_EXTENSIONS else name
        vectors[stem] = vector
    lengths = {len(v) for v in vectors.values()}
    if len(lengths) > 1:
        raise ValueError(f"conditioning file '{path}': vectors have different lengths {sorted(lengths)}")
    if not vectors:
        raise ValueError(f"conditioning file '{path}' holds no entries")
    return vectors


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


# ----------------------------------------------------------------------------------------------
# Dataset


class PairedImageDataset(torch.utils.data.Dataset):
    """Paired GT/LQ images from two folders matched by file stem (see `find_pairs`).

    Items: `{"gt": float32 CHW, "lq": float32 CHW, "name": str}` and `"cond"` when `cond` is given:
    a folder of second-view images (stereo; LQ-sized, cropped and augmented with the LQ) or a
    JSON/CSV file of per-image vectors (bokeh lens metadata), delivered as a (D, h, w) map that
    repeats the vector over the LQ crop, so that every network takes `cond` as extra channels.
    `lens` (bokeh, the official formulation): a ``meta.txt`` of lens information (refusion.data.lens);
    items then carry `"lens_info"`, the float32 (3,) [src_lens, tgt_lens, disparity] of the pair,
    which crops and flips leave as it is. `lens_swap` (the official `use_swap`, training crops only): with
    p = 0.5, a pair whose source or target lens is all in focus (encoded > ALL_IN_FOCUS) is served the
    other way round, GT as LQ and LQ as GT with the two lenses exchanged, so the network also learns to
    take the blur away.

    Training: `gt_size` random aligned crops (LQ crop `gt_size // scale` at the same place),
    `use_flip` (horizontal and vertical, each with p = 0.5) and `use_rot` (rotation by k * 90
    degrees, k uniform in 0..3). The random draws come from `seed`, `set_epoch(epoch)` and the item
    index when `seed` is given (a pure function: a resumed run sees the same crops), otherwise from
    the torch RNG of the process or DataLoader worker. Validation: `gt_size=None` gives whole images.
    `cache=True` decodes every image once at construction (uint8/uint16, 3-6 bytes per pixel pair),
    which also finds every unreadable file before training starts.
    """

    def __init__(
        self,
        gt: str | os.PathLike,
        lq: str | os.PathLike,
        *,
        gt_size: int | None = None,
        use_flip: bool = False,
        use_rot: bool = False,
        cond: str | os.PathLike | None = None,
        scale: int = 1,
        max_images: int | None = None,
        cache: bool = True,
        seed: int | None = None,
        max_pixels: int | None = MAX_IMAGE_PIXELS,
        stereo: bool = False,
        lens: str | os.PathLike | None = None,
        lens_swap: bool = False,
    ):
        if not isinstance(scale, int) or scale < 1:
            raise ValueError(f"PairedImageDataset: scale={scale!r}, expected an integer >= 1")
        if gt_size is not None and (not isinstance(gt_size, int) or gt_size < 1 or gt_size % scale):
            raise ValueError(f"PairedImageDataset: gt_size={gt_size!r}, expected a positive integer divisible by scale={scale}")
        if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
            raise ValueError(f"PairedImageDataset: max_images={max_images!r}, expected a positive integer or None")
        self.gt_size, self.scale = gt_size, scale
        self.use_flip, self.use_rot = bool(use_flip), bool(use_rot)
        self.seed, self.epoch, self.max_pixels = seed, 0, max_pixels
        if stereo and use_rot:
            raise ValueError("PairedImageDataset: use_rot with stereo=True would turn the horizontal disparity "
                             "between the views vertical; use flips only")
        if stereo and cond is not None:
            raise ValueError("PairedImageDataset: stereo=True carries the partner view itself; cond must be None")
        if lens_swap and (lens is None or scale != 1):
            raise ValueError("PairedImageDataset: lens_swap exchanges the source and target images and lenses; it "
                             f"needs lens=meta.txt and images of equal size (got lens={lens!r}, scale={scale})")
        self.stereo, self.lens_swap = bool(stereo), bool(lens_swap)
        self.pairs = (find_stereo_pairs(gt, lq) if stereo else find_pairs(gt, lq))[:max_images]
        self.cond_images: dict[str, Path] | None = None
        self.cond_vectors: dict[str, np.ndarray] | None = None
        self.cond_channels = 0
        if cond is not None:
            self._setup_cond(Path(cond))
        # bokeh: the [src_lens, tgt_lens, disparity] of each pair (refusion.data.lens), checked here, once
        self.lens_info = None
        if lens is not None:
            table = read_lens_metadata(lens)
            self.lens_info = [torch.tensor(lens_info_for(table, name, source=lens, image=str(lq_path)), dtype=torch.float32)
                              for name, _, lq_path in self.pairs]
        self._cache = [self._load(i) for i in range(len(self.pairs))] if cache else None

    def _setup_cond(self, cond: Path) -> None:
        names = [name for name, _, _ in self.pairs]
        if cond.is_dir():
            self.cond_images, unreadable = _list_images(cond, "conditioning")
            if unreadable:
                raise ValueError(f"conditioning folder '{cond}': {len(unreadable)} unreadable entries: {_few(unreadable)}")
            table, self.cond_channels = self.cond_images, 3
        else:
            self.cond_vectors = load_condition_vectors(cond)
            table, self.cond_channels = self.cond_vectors, len(next(iter(self.cond_vectors.values())))
        missing = [n for n in names if n not in table]
        if missing:
            raise ValueError(f"conditioning '{cond}' has no entry for {len(missing)} image(s): {_few(missing)}")

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's random draws (used when `seed` is set)."""
        self.epoch = int(epoch)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        if self.stereo:
            return self._load_stereo(index)
        name, gt_path, lq_path = self.pairs[index]
        gt = read_image_raw(gt_path, max_pixels=self.max_pixels)
        lq = read_image_raw(lq_path, max_pixels=self.max_pixels)
        self._check_sizes(gt, lq, gt_path, lq_path)
        cond = None
        if self.cond_images is not None:
            cond_path = self.cond_images[name]
            cond = read_image_raw(cond_path, max_pixels=self.max_pixels)
            if cond.shape[:2] != lq.shape[:2]:
                raise ValueError(f"size mismatch: conditioning image '{cond_path}' is {cond.shape[1]}x{cond.shape[0]}, "
                                 f"LQ '{lq_path}' is {lq.shape[1]}x{lq.shape[0]}")
        return gt, lq, cond

    def _load_stereo(self, index: int) -> tuple[np.ndarray, np.ndarray, None]:
        """Both views, left then right on the channel axis: every crop and flip then cuts both alike."""
        _, gt_paths, lq_paths = self.pairs[index]
        gts = [read_image_raw(p, max_pixels=self.max_pixels) for p in gt_paths]
        lqs = [read_image_raw(p, max_pixels=self.max_pixels) for p in lq_paths]
        for gt, lq, gt_path, lq_path in zip(gts, lqs, gt_paths, lq_paths):
            self._check_sizes(gt, lq, gt_path, lq_path)
        for views, paths in ((gts, gt_paths), (lqs, lq_paths)):
            if views[0].shape != views[1].shape or views[0].dtype != views[1].dtype:
                raise ValueError(f"stereo views differ: '{paths[0]}' is {views[0].shape[1]}x{views[0].shape[0]} "
                                 f"({views[0].dtype}), '{paths[1]}' is {views[1].shape[1]}x{views[1].shape[0]} "
                                 f"({views[1].dtype})")
        return np.concatenate(gts, axis=2), np.concatenate(lqs, axis=2), None

    def _check_sizes(self, gt: np.ndarray, lq: np.ndarray, gt_path: Path, lq_path: Path) -> None:
        (gh, gw), (lh, lw) = gt.shape[:2], lq.shape[:2]
        if (gh, gw) != (lh * self.scale, lw * self.scale):
            expected = f"GT = {self.scale} x LQ" if self.scale > 1 else "equal sizes"
            raise ValueError(f"size mismatch ({expected}): GT '{gt_path}' is {gw}x{gh}, LQ '{lq_path}' is {lw}x{lh}")
        if self.gt_size is not None and min(gh, gw) < self.gt_size:
            raise ValueError(f"GT '{gt_path}' is {gw}x{gh}, smaller than gt_size={self.gt_size}")

    def _draws(self, index: int, lq_height: int, lq_width: int, lq_size: int
               ) -> tuple[int, int, bool, bool, int, bool]:
        """(top, left, hflip, vflip, quarter turns, lens swap) of one item."""
        # the swap coin comes last and only with lens_swap: the other draws stay those of a dataset without it
        spans = (lq_height - lq_size + 1, lq_width - lq_size + 1, 2, 2, 4) + ((2,) if self.lens_swap else ())
        if self.seed is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            top, left, hflip, vflip, turns, *swap = (int(rng.integers(span)) for span in spans)
        else:
            top, left, hflip, vflip, turns, *swap = (int(torch.randint(span, ())) for span in spans)
        return (top, left, bool(hflip and self.use_flip), bool(vflip and self.use_flip),
                turns if self.use_rot else 0, bool(swap and swap[0]))

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.pairs):
            raise IndexError(f"PairedImageDataset index {index} out of range for {len(self.pairs)} pairs")
        gt, lq, cond = self._cache[index] if self._cache is not None else self._load(index)
        lens = None if self.lens_info is None else self.lens_info[index].clone()
        if self.gt_size is not None:
            lq_size, s = self.gt_size // self.scale, self.scale
            top, left, hflip, vflip, turns, swap = self._draws(index, lq.shape[0], lq.shape[1], lq_size)
            if swap and bool((lens[:2] > ALL_IN_FOCUS).any()):
                # the official use_swap: a pair with an all-in-focus side also teaches the way back
                gt, lq, lens = lq, gt, lens[[1, 0, 2]]
            gt = gt[top * s:(top + lq_size) * s, left * s:(left + lq_size) * s]
            lq = lq[top:top + lq_size, left:left + lq_size]
            cond = None if cond is None else cond[top:top + lq_size, left:left + lq_size]
            gt, lq, cond = (_augment(a, hflip, vflip, turns, stereo=self.stereo) for a in (gt, lq, cond))
        item: dict[str, Any] = {"gt": _chw(gt), "lq": _chw(lq), "name": self.pairs[index][0]}
        if cond is not None:
            item["cond"] = _chw(cond)
        elif self.cond_vectors is not None:
            vector = torch.from_numpy(self.cond_vectors[item["name"]])
            item["cond"] = vector[:, None, None].expand(-1, lq.shape[0], lq.shape[1]).contiguous()
        if lens is not None:
            item["lens_info"] = lens
        return item


def _augment(array: np.ndarray | None, hflip: bool, vflip: bool, turns: int, *, stereo: bool = False
             ) -> np.ndarray | None:
    if array is None:
        return None
    if hflip:
        array = array[:, ::-1]
        if stereo:   # a mirrored stereo pair: the mirrored left view is the right one and vice versa
            half = array.shape[2] // 2
            array = np.concatenate([array[..., half:], array[..., :half]], axis=2)
    if vflip:
        array = array[::-1]
    return np.rot90(array, turns) if turns else array


def _chw(array: np.ndarray) -> torch.Tensor:
    # transpose while the samples are still 1-2 bytes, then scale in one pass (same values as read_image)
    planar = np.ascontiguousarray(array.transpose(2, 0, 1))
    if planar.dtype.kind == "f":
        return torch.from_numpy(planar.astype(np.float32, copy=False))
    peak = np.float32(np.iinfo(planar.dtype).max)
    return torch.from_numpy(np.divide(planar, peak, dtype=np.float32))

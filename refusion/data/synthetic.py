"""Paired GT/LQ datasets built offline from the photographs that ship inside installed packages.

`build_dataset(out, task, seed=0)` crops the bundled photographs (scikit-image, scikit-learn,
matplotlib), degrades each crop with `refusion.data.degradations`, and writes

    out/{train,val,test}/{gt,lq}/<photo>_<k>.png     8-bit PNG pairs
    out/{train,val,test}/meta.txt                    rendering tasks (bokeh): the lens information
    out/manifest.json                                seed, task, parameters, files and sha256

Splits are made by source photograph, so no test or validation photo is ever seen in training.
Every random draw comes from a generator keyed by (seed, photo, crop) for the crop and by
(seed, task, photo, crop) for the degradation: the same seed gives a byte-identical dataset, and
the GT crops are the same for every degradation task. A rendering task (``degradations.RENDERINGS``,
bokeh) renders both sides from the crop (source lens -> lq, target lens -> gt) and lists each pair's
lens information in the split's ``meta.txt`` (``<photo>_<k>, src_lens, tgt_lens, disparity``, the
format refusion.data.lens reads).
"""

from __future__ import annotations

import inspect
import json
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image

from refusion.data import degradations
from refusion.checksums import sha256_file
from refusion.data.image_io import write_image
from refusion.data.lens import format_lens_line

MANIFEST_VERSION = 1


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(filename)

    return load


def _grace_hopper() -> np.ndarray:
    import matplotlib.cbook

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        return np.asarray(Image.open(f).convert("RGB"))


# Colour photographs bundled with the wheels (no download). The split is fixed so that every seed
# and every task shares one test set; the two motorcycle views are one scene and stay together.
SOURCES: dict[str, tuple[str, str, Callable[[], np.ndarray]]] = {
    "astronaut": ("train", "skimage.data.astronaut", _skimage("astronaut")),
    "hubble": ("train", "skimage.data.hubble_deep_field", _skimage("hubble_deep_field")),
    "ihc": ("train", "skimage.data.immunohistochemistry", _skimage("immunohistochemistry")),
    "motorcycle_left": ("train", "skimage.data.stereo_motorcycle[0]", lambda: _skimage("stereo_motorcycle")()[0]),
    "motorcycle_right": ("train", "skimage.data.stereo_motorcycle[1]", lambda: _skimage("stereo_motorcycle")()[1]),
    "retina": ("train", "skimage.data.retina", _skimage("retina")),
    "rocket": ("train", "skimage.data.rocket", _skimage("rocket")),
    "china": ("train", "sklearn.datasets.load_sample_image('china.jpg')", _sklearn("china.jpg")),
    "flower": ("train", "sklearn.datasets.load_sample_image('flower.jpg')", _sklearn("flower.jpg")),
    "chelsea": ("val", "skimage.data.chelsea", _skimage("chelsea")),
    "coffee": ("test", "skimage.data.coffee", _skimage("coffee")),
    "grace_hopper": ("test", "matplotlib sample_data grace_hopper.jpg", _grace_hopper),
}
SPLITS = ("train", "val", "test")


def _key(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def _rng(seed: int, *keys: str | int) -> np.random.Generator:
    spawn = tuple(_key(k) if isinstance(k, str) else int(k) for k in keys)
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=spawn))


def load_source(name: str) -> np.ndarray:
    """A bundled photograph as uint8 HWC RGB; a clear error if the package no longer ships it."""
    split, origin, load = SOURCES[name]
    try:
        photo = np.asarray(load())
    except Exception as exc:
        raise RuntimeError(f"source photograph {name!r} ({origin}) could not be loaded offline: {exc}") from exc
    if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
        raise RuntimeError(f"source photograph {name!r} ({origin}) is {photo.dtype} {photo.shape}, expected uint8 HxWx3")
    return photo


def random_crop(photo: np.ndarray, size: int, rng: np.random.Generator, attempts: int = 40) -> np.ndarray:
    """A size x size float32 crop of a random window, rescaled so the crop holds more than pixels.

    The window side is between `size` and the photo's short side (at most 4x `size`), resampled
    with Lanczos. Nearly flat or black windows (space, fundus borders) are redrawn.
    """
    height, width = photo.shape[:2]
    if min(height, width) < size:
        raise ValueError(f"photo of {width}x{height} is smaller than the crop size {size}")
    image = Image.fromarray(photo)
    crop = None
    for _ in range(attempts):
        side = int(rng.integers(size, min(height, width, 4 * size) + 1))
        left, top = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
        window = image.resize((size, size), Image.Resampling.LANCZOS, box=(left, top, left + side, top + side))
        crop = np.asarray(window, dtype=np.float32) / 255.0
        if crop.mean() > 0.08 and crop.std() > 0.04:
            break
    return crop


def _split_counts(photos: list[str], total: int | None, per_image: int | None) -> dict[str, int]:
    if per_image is not None:
        return {name: per_image for name in photos}
    return {name: total // len(photos) + (i < total % len(photos)) for i, name in enumerate(photos)}




def _task_function(task: str) -> Callable:
    functions = {**degradations.DEGRADATIONS, **degradations.RENDERINGS}
    if task not in functions:
        raise ValueError(f"unknown task {task!r}; choose from {sorted(functions)}")
    return functions[task]


def default_parameters(task: str) -> dict:
    """The degradation's parameters (keyword defaults of its function) as JSON-friendly values."""
    signature = inspect.signature(_task_function(task))
    return {name: list(p.default) if isinstance(p.default, tuple) else p.default
            for name, p in signature.parameters.items() if p.kind is p.KEYWORD_ONLY}


def task_parameters(task: str, params: dict | None = None) -> dict:
    """The parameters a dataset of ``task`` is degraded with: the defaults, with ``params`` in place of
    those it names (JSON-friendly: a (low, high) pair becomes a list, as the manifest stores it)."""
    parameters = default_parameters(task)
    unknown = sorted(set(params or {}) - set(parameters))
    if unknown:
        raise ValueError(f"task {task!r} has no parameter {', '.join(map(repr, unknown))}; "
                         f"its parameters are {', '.join(parameters)}")
    return {**parameters, **{name: list(v) if isinstance(v, tuple) else v for name, v in (params or {}).items()}}


def build_dataset(
    out: str | Path,
    task: str,
    *,
    seed: int = 0,
    size: int = 128,
    num_train: int = 60,
    num_val: int = 4,
    num_test: int = 6,
    crops_per_image: int | None = None,
    params: dict | None = None,
    overwrite: bool = False,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> dict:
    """Build `out/{train,val,test}/{gt,lq}` and `out/manifest.json`; returns the manifest.

    `num_train/num_val/num_test` crops are spread evenly over each split's photographs, unless
    `crops_per_image` is given, which takes that many crops from every photograph. `params` replaces
    keyword defaults of the degradation (``{"sigma": 25}`` for noise: one level instead of a range);
    the manifest lists the parameters used. The folder is written next to `out` and renamed at the
    end, so `out` is complete or absent.
    """
    function = _task_function(task)
    parameters = task_parameters(task, params)
    if not isinstance(size, int) or size < 16:
        raise ValueError(f"size={size!r}: expected an integer >= 16")
    for name, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test), ("crops_per_image", crops_per_image)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name}={value!r}: expected a positive integer")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"output folder '{out}' exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    totals = {"train": num_train, "val": num_val, "test": num_test}
    jobs = []
    for split in SPLITS:
        photos = sorted(name for name, (s, _, _) in SOURCES.items() if s == split)
        for photo, count in _split_counts(photos, totals[split], crops_per_image).items():
            jobs += [(split, photo, k) for k in range(count)]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the dataset is an ordinary folder
    try:
        files, metadata = _write_pairs(staging, task, seed, size, jobs, progress, dict(params or {}))
        manifest = {
            "format_version": MANIFEST_VERSION,
            "task": task,
            "seed": seed,
            "size": size,
            "degradation": {"function": f"refusion.data.degradations.{function.__name__}",
                            "parameters": parameters},
            "sources": {name: {"split": split, "origin": origin} for name, (split, origin, _) in SOURCES.items()},
            "counts": {split: sum(1 for f in files if f["split"] == split) for split in SPLITS},
            "files": files,
            "metadata": metadata,
            "versions": _versions(),
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _write_pairs(root: Path, task: str, seed: int, size: int, jobs: list, progress,
                 params: dict) -> tuple[list[dict], dict]:
    """The image pairs, and for a rendering task each split's meta.txt ({split: {path, sha256}})."""
    photos: dict[str, np.ndarray] = {}
    files = []
    lines: dict[str, list[str]] = {}
    for split, photo, k in (progress(jobs) if progress else jobs):
        if photo not in photos:
            photos[photo] = load_source(photo)
        gt = random_crop(photos[photo], size, _rng(seed, "crop", photo, k))
        rng = _rng(seed, "degrade", task, photo, k)
        if task in degradations.RENDERINGS:
            lq, gt, lens = degradations.RENDERINGS[task](gt, rng, **params)
            lines.setdefault(split, []).append(format_lens_line(f"{photo}_{k:03d}", *lens))
        else:
            lq = degradations.degrade(task, gt, rng, **params)
        name = f"{photo}_{k:03d}.png"
        gt_path = write_image(root / split / "gt" / name, gt)
        lq_path = write_image(root / split / "lq" / name, lq)
        files.append({"split": split, "name": name, "source": photo,
                      "gt": f"{split}/gt/{name}", "lq": f"{split}/lq/{name}",
                      "gt_sha256": sha256_file(gt_path), "lq_sha256": sha256_file(lq_path)})
    metadata = {}
    for split, split_lines in lines.items():
        path = root / split / "meta.txt"
        path.write_text("".join(f"{line}\n" for line in split_lines), encoding="utf-8")
        metadata[split] = {"path": f"{split}/meta.txt", "sha256": sha256_file(path)}
    return files, metadata


def _versions() -> dict[str, str]:
    import PIL
    import scipy
    import skimage
    import sklearn

    return {"numpy": np.__version__, "pillow": PIL.__version__, "scipy": scipy.__version__,
            "scikit-image": skimage.__version__, "scikit-learn": sklearn.__version__}


def verify_dataset(root: str | Path) -> list[str]:
    """Files of a built dataset whose sha256 differs from its manifest (or that are missing)."""
    root = Path(root)
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    bad = []
    for entry in manifest["files"]:
        for role in ("gt", "lq"):
            path = root / entry[role]
            if not path.is_file() or sha256_file(path) != entry[f"{role}_sha256"]:
                bad.append(entry[role])
    for entry in manifest.get("metadata", {}).values():
        path = root / entry["path"]
        if not path.is_file() or sha256_file(path) != entry["sha256"]:
            bad.append(entry["path"])
    return bad

"""Image I/O and paired GT/LQ datasets.

Images travel through the package as float32 HWC RGB arrays in [0, 1] (numpy) and as float32 CHW
tensors (torch). Everything that reads a file raises `ImageReadError` naming the file and the problem,
so a bad file in a folder of thousands is found at once.

Decoders: Pillow for everything it represents exactly; OpenCV for 16-bit colour PNG (Pillow keeps
only the top 8 bits of each sample) and tifffile for 16-bit colour TIFF (same reason).
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".ppm", ".pgm")
# Largest image read_image accepts unless told otherwise; 6000x4000 (24 MP) fits with room to spare.
MAX_IMAGE_PIXELS = 200_000_000

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*")
_PIL_LIMIT_LOCK = threading.Lock()
# EXIF orientation -> how to turn the stored array upright (the same table as PIL.ImageOps.exif_transpose).
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


class ImageReadError(ValueError):
    """A file that is not a readable image; `path` and `reason` say which and why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image '{self.path}': {reason}")

    def __reduce__(self):  # picklable across DataLoader worker processes
        return (type(self), (self.path, self.reason))


class _Unrecognised(ImageReadError):
    """Pillow does not know the format (tifffile may still read a TIFF)."""


# ----------------------------------------------------------------------------------------------
# Reading


def read_image(path: str | os.PathLike, *, max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read an image file as float32 HWC RGB in [0, 1].

    8- and 16-bit PNG/JPEG/TIFF (and BMP/WebP/PPM through Pillow). Grayscale is repeated to three
    channels, palette images are expanded, the EXIF orientation is applied. An alpha channel is
    dropped when it is fully opaque; a transparent image is refused (there is no right background
    colour to composite on for restoration). Images above `max_pixels` are refused before decoding
    (decompression bombs); pass None to lift the limit.
    """
    raw = read_image_raw(path, max_pixels=max_pixels)
    return _to_unit_float(raw)


def read_image_raw(path: str | os.PathLike, *, max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Like `read_image` but keeps the stored sample type: uint8, uint16 or float32 (HWC RGB).

    Datasets cache these (2-4x smaller than float32) and convert crops on the fly.
    """
    path = Path(path)
    try:
        return _decode(path, max_pixels)
    except ImageReadError:
        raise
    except Exception as exc:  # any decoder failure on hostile bytes becomes a clear, named error
        raise ImageReadError(path, f"corrupt or truncated image data ({type(exc).__name__}: {exc})") from exc


def image_bit_depth(path: str | os.PathLike) -> int:
    """Bits per sample of the stored image: 8, or 16 for anything deeper (16-bit, 32-bit float)."""
    path = Path(path)
    header = _check_file(path)
    if header.startswith(_PNG_SIGNATURE):
        return 16 if _png_ihdr(path, header)[0] == 16 else 8
    try:
        if header.startswith(_TIFF_SIGNATURES):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                return 16 if tif.pages[0].bitspersample > 8 else 8
        with _open_pil(path, None) as im:
            if im.mode in ("I", "F") or im.mode.startswith("I;16"):
                return 16
            return 8
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(path, f"{type(exc).__name__}: {exc}") from exc


def _check_file(path: Path) -> bytes:
    if not path.exists():
        raise ImageReadError(path, "no such file")
    if not path.is_file():
        raise ImageReadError(path, "not a regular file")
    try:
        with open(path, "rb") as f:
            header = f.read(32)
    except OSError as exc:
        raise ImageReadError(path, f"cannot open: {exc.strerror or exc}") from exc
    if not header:
        raise ImageReadError(path, "empty file (0 bytes)")
    return header


def _png_ihdr(path: Path, header: bytes) -> tuple[int, int]:
    """(bit depth, colour type) from the PNG IHDR chunk."""
    if len(header) < 26 or header[12:16] != b"IHDR":
        raise ImageReadError(path, "PNG signature without an IHDR chunk")
    return header[24], header[25]


def _open_pil(path: Path, max_pixels: int | None) -> Image.Image:
    """Open (header only) with our pixel limit instead of Pillow's global one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(path)
        except Image.DecompressionBombError:
            # Pillow's own limit is lower than ours: read the header without it, then apply ours.
            with _PIL_LIMIT_LOCK:
                previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
                try:
                    im = Image.open(path)
                finally:
                    Image.MAX_IMAGE_PIXELS = previous
        except Image.UnidentifiedImageError as exc:
            raise _Unrecognised(path, "not an image file (format not recognised)") from exc
    try:
        _check_pixels(path, *im.size, max_pixels)
    except ImageReadError:
        im.close()
        raise
    return im


def _check_pixels(path: Path, width: int, height: int, max_pixels: int | None) -> None:
    """Refuse decompression bombs from the declared size, before any pixel is decoded."""
    if max_pixels is not None and width * height > max_pixels:
        raise ImageReadError(
            path,
            f"image is {width}x{height} = {width * height / 1e6:.1f} megapixels, above the limit of "
            f"{max_pixels / 1e6:.1f} megapixels (possible decompression bomb); raise max_pixels "
            f"(or refusion.data.MAX_IMAGE_PIXELS) to read it",
        )
    if width <= 0 or height <= 0:
        raise ImageReadError(path, f"image has zero size ({width}x{height})")


def _tiff_bits(im: Image.Image) -> tuple[int, ...]:
    bits = im.tag_v2.get(258, (8,))
    return tuple(bits) if isinstance(bits, (tuple, list)) else (int(bits),)


def _decode(path: Path, max_pixels: int | None) -> np.ndarray:
    header = _check_file(path)
    is_tiff = header.startswith(_TIFF_SIGNATURES)
    try:
        im = _open_pil(path, max_pixels)
    except ImageReadError as exc:
        if not (is_tiff and isinstance(exc, _Unrecognised)):
            raise
        im = None
    except Exception:
        if not is_tiff:
            raise
        im = None
    if im is None:  # a TIFF that Pillow cannot represent (float RGB, ...): tifffile alone
        return _upright(_drop_opaque_alpha(path, _decode_tiff_deep(path, max_pixels)), _tiff_orientation(path))
    with im:
        orientation = _exif_orientation(im)
        if header.startswith(_PNG_SIGNATURE) and _png_ihdr(path, header) in ((16, 2), (16, 4), (16, 6)):
            im.load()  # Pillow validates the whole stream (truncation, CRC) ...
            array = _decode_png16_colour(path)  # ... OpenCV keeps all 16 bits
        elif is_tiff and max(_tiff_bits(im)) > 8 and len(im.getbands()) > 1:
            array = _decode_tiff_deep(path, max_pixels)
        else:
            im.load()
            array = _pil_to_array(path, im)
    return _upright(_drop_opaque_alpha(path, array), orientation)


def _upright(array: np.ndarray, orientation: int) -> np.ndarray:
    if orientation in _ORIENT:
        array = _ORIENT[orientation](array)
    return np.ascontiguousarray(array)


def _exif_orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # a malformed EXIF block must not make an otherwise good image unreadable
        return 1


def _pil_to_array(path: Path, im: Image.Image) -> np.ndarray:
    """Pillow image -> HW(C) array, channels 1 (gray), 2 (gray+alpha), 3 or 4 (RGBA)."""
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode == "1":
        im = im.convert("L")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        im = im.convert("RGB")
    elif mode in ("RGBa", "La"):  # premultiplied alpha
        im = im.convert("RGBA" if mode == "RGBa" else "LA")
    if im.mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16)
    if im.mode == "I":
        array = np.asarray(im)
        if array.min() < 0 or array.max() > 65535:
            raise ImageReadError(path, f"32-bit integer samples outside 0..65535 (mode {mode})")
        return array.astype(np.uint16)
    if im.mode == "F":
        return _check_float(path, np.asarray(im, dtype=np.float32))
    if im.mode not in ("L", "LA", "RGB", "RGBA"):
        raise ImageReadError(path, f"unsupported Pillow mode {mode!r}")
    return np.asarray(im)


def _decode_png16_colour(path: Path) -> np.ndarray:
    import cv2

    data = np.fromfile(path, dtype=np.uint8)  # np.fromfile + imdecode handle non-ASCII paths
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ImageReadError(path, "16-bit PNG could not be decoded")
    if array.ndim == 3 and array.shape[2] == 3:
        return array[:, :, ::-1]
    if array.ndim == 3 and array.shape[2] == 4:
        return array[:, :, [2, 1, 0, 3]]
    return array


def _tiff_orientation(path: Path) -> int:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags.get(274)
        return int(tag.value) if tag is not None else 1


def _decode_tiff_deep(path: Path, max_pixels: int | None) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        _check_pixels(path, page.imagewidth, page.imagelength, max_pixels)
        if page.photometric not in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.MINISBLACK):
            raise ImageReadError(path, f"deep TIFF with photometric {page.photometric.name} is not supported")
        array = page.asarray()
        axes = page.axes
    if "S" in axes and axes.index("S") != len(axes) - 1:  # planar configuration: samples first
        array = np.moveaxis(array, axes.index("S"), -1)
    if array.ndim != 3 or array.shape[2] > 4:
        raise ImageReadError(path, f"TIFF array of shape {array.shape} (axes {axes}) is not an image")
    if array.dtype in (np.uint8, np.uint16):
        return array
    if array.dtype.kind == "f":
        return _check_float(path, array.astype(np.float32))
    raise ImageReadError(path, f"TIFF samples of type {array.dtype} are not supported (use 8/16-bit unsigned or float)")


def _check_float(path: Path, array: np.ndarray) -> np.ndarray:
    if not np.isfinite(array).all():
        raise ImageReadError(path, "floating-point image contains NaN or Inf")
    if array.min() < -1e-3 or array.max() > 1 + 1e-3:
        raise ImageReadError(
            path, f"floating-point image values span [{array.min():g}, {array.max():g}], expected [0, 1]"
        )
    return np.clip(array, 0.0, 1.0)


def _drop_opaque_alpha(path: Path, array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        array = array[:, :, None]
    channels = array.shape[2]
    if channels in (2, 4):
        alpha = array[:, :, -1]
        full = 1.0 if array.dtype.kind == "f" else np.iinfo(array.dtype).max
        if alpha.min() < full:
            share = float((alpha < full).mean())
            raise ImageReadError(
                path,
                f"image has an alpha channel with transparent pixels ({share:.1%} not opaque); "
                "flatten it onto a background first",
            )
        array = array[:, :, :-1]
        channels -= 1
    if channels == 1:
        array = np.repeat(array, 3, axis=2)
    elif channels != 3:
        raise ImageReadError(path, f"unsupported channel count {channels}")
    return array


def _to_unit_float(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    return array.astype(np.float32, copy=False)


# ----------------------------------------------------------------------------------------------
# Writing and tensors


def write_image(path: str | os.PathLike, array: np.ndarray, bit_depth: int = 8, *, quality: int = 95) -> Path:
    """Write an HWC RGB (or HW gray) image as PNG, TIFF or JPEG, atomically (temp file + rename).

    Float arrays are taken as [0, 1] (clipped) and rounded to `bit_depth` (8 or 16; JPEG is 8 only);
    uint8 / uint16 arrays are written as they are when their type matches `bit_depth`.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".tif", ".tiff", ".jpg", ".jpeg"):
        raise ValueError(f"write_image: unsupported extension {path.suffix!r} in '{path}'; use .png, .tif, .tiff, .jpg")
    if bit_depth not in (8, 16):
        raise ValueError(f"write_image: bit_depth={bit_depth!r}, expected 8 or 16")
    if bit_depth == 16 and suffix in (".jpg", ".jpeg"):
        raise ValueError(f"write_image: JPEG holds 8 bits only; bit_depth=16 asked for '{path}'")
    samples = _quantise(np.asarray(array), bit_depth)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        _encode(Path(tmp), samples, suffix, quality)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _quantise(array: np.ndarray, bit_depth: int) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"write_image: array of shape {array.shape}, expected HxWx3 (RGB) or HxW (gray)")
    target = np.uint8 if bit_depth == 8 else np.uint16
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise ValueError("write_image: array contains NaN or Inf")
        peak = np.iinfo(target).max
        return np.round(np.clip(array, 0.0, 1.0) * peak).astype(target)
    if array.dtype != target:
        raise ValueError(f"write_image: {array.dtype} array with bit_depth={bit_depth}; pass {np.dtype(target)} or float in [0, 1]")
    return array


def _encode(tmp: Path, samples: np.ndarray, suffix: str, quality: int) -> None:
    if suffix in (".tif", ".tiff"):
        import tifffile

        photometric = "rgb" if samples.ndim == 3 else "minisblack"
        tifffile.imwrite(tmp, samples, photometric=photometric, compression="zlib")
    elif samples.dtype == np.uint16:  # 16-bit PNG: Pillow cannot write 16-bit colour
        import cv2

        bgr = samples[:, :, ::-1] if samples.ndim == 3 else samples
        ok, data = cv2.imencode(".png", np.ascontiguousarray(bgr))
        if not ok:
            raise OSError(f"write_image: OpenCV failed to encode '{tmp}'")
        data.tofile(tmp)
    elif suffix == ".png":
        Image.fromarray(samples).save(tmp, format="PNG")
    else:
        Image.fromarray(samples).save(tmp, format="JPEG", quality=quality, subsampling=0)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HWC float image -> float32 CHW tensor (a copy)."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"to_tensor: expected an HWC array, got shape {image.shape}")
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))


def from_tensor(tensor: torch.Tensor) -> np.ndarray:
    """CHW tensor -> float32 HWC numpy array."""
    if tensor.ndim != 3:
        raise ValueError(f"from_tensor: expected a CHW tensor, got shape {tuple(tensor.shape)}")
    return tensor.detach().to("cpu", torch.float32).permute(1, 2, 0).contiguous().numpy()


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
        self.pairs = find_pairs(gt, lq)[:max_images]
        self.cond_images: dict[str, Path] | None = None
        self.cond_vectors: dict[str, np.ndarray] | None = None
        self.cond_channels = 0
        if cond is not None:
            self._setup_cond(Path(cond))
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
        name, gt_path, lq_path = self.pairs[index]
        gt = read_image_raw(gt_path, max_pixels=self.max_pixels)
        lq = read_image_raw(lq_path, max_pixels=self.max_pixels)
        (gh, gw), (lh, lw) = gt.shape[:2], lq.shape[:2]
        if (gh, gw) != (lh * self.scale, lw * self.scale):
            expected = f"GT = {self.scale} x LQ" if self.scale > 1 else "equal sizes"
            raise ValueError(f"size mismatch ({expected}): GT '{gt_path}' is {gw}x{gh}, LQ '{lq_path}' is {lw}x{lh}")
        if self.gt_size is not None and min(gh, gw) < self.gt_size:
            raise ValueError(f"GT '{gt_path}' is {gw}x{gh}, smaller than gt_size={self.gt_size}")
        cond = None
        if self.cond_images is not None:
            cond_path = self.cond_images[name]
            cond = read_image_raw(cond_path, max_pixels=self.max_pixels)
            if cond.shape[:2] != lq.shape[:2]:
                raise ValueError(f"size mismatch: conditioning image '{cond_path}' is {cond.shape[1]}x{cond.shape[0]}, "
                                 f"LQ '{lq_path}' is {lw}x{lh}")
        return gt, lq, cond

    def _draws(self, index: int, lq_height: int, lq_width: int, lq_size: int) -> tuple[int, int, bool, bool, int]:
        """(top, left, hflip, vflip, quarter turns) of one item."""
        spans = (lq_height - lq_size + 1, lq_width - lq_size + 1, 2, 2, 4)
        if self.seed is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            top, left, hflip, vflip, turns = (int(rng.integers(span)) for span in spans)
        else:
            top, left, hflip, vflip, turns = (int(torch.randint(span, ())) for span in spans)
        return top, left, bool(hflip and self.use_flip), bool(vflip and self.use_flip), turns if self.use_rot else 0

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.pairs):
            raise IndexError(f"PairedImageDataset index {index} out of range for {len(self.pairs)} pairs")
        gt, lq, cond = self._cache[index] if self._cache is not None else self._load(index)
        if self.gt_size is not None:
            lq_size, s = self.gt_size // self.scale, self.scale
            top, left, hflip, vflip, turns = self._draws(index, lq.shape[0], lq.shape[1], lq_size)
            gt = gt[top * s:(top + lq_size) * s, left * s:(left + lq_size) * s]
            lq = lq[top:top + lq_size, left:left + lq_size]
            cond = None if cond is None else cond[top:top + lq_size, left:left + lq_size]
            gt, lq, cond = (_augment(a, hflip, vflip, turns) for a in (gt, lq, cond))
        item: dict[str, Any] = {"gt": _chw(gt), "lq": _chw(lq), "name": self.pairs[index][0]}
        if cond is not None:
            item["cond"] = _chw(cond)
        elif self.cond_vectors is not None:
            vector = torch.from_numpy(self.cond_vectors[item["name"]])
            item["cond"] = vector[:, None, None].expand(-1, lq.shape[0], lq.shape[1]).contiguous()
        return item


def _augment(array: np.ndarray | None, hflip: bool, vflip: bool, turns: int) -> np.ndarray | None:
    if array is None:
        return None
    if hflip:
        array = array[:, ::-1]
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

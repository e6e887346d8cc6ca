"""Image files <-> arrays: reading, writing and tensor conversion.

Images travel through the package as float32 HWC RGB arrays in [0, 1] (numpy) and as float32 CHW
tensors (torch). Everything that reads a file raises `ImageReadError` naming the file and the problem,
so a bad file in a folder of thousands is found at once.

Decoders: Pillow for everything it represents exactly; OpenCV for 16-bit colour PNG (Pillow keeps
only the top 8 bits of each sample) and tifffile for 16-bit colour TIFF (same reason).
"""

from __future__ import annotations

import os
import re
import secrets
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".ppm", ".pgm")
# Largest image read_image accepts unless told otherwise; 6000x4000 (24 MP) fits with room to spare.
MAX_IMAGE_PIXELS = 200_000_000

# Temporaries of atomic_output: ".<target name>.<8 hex digits>.partial"
PARTIAL_SUFFIX = ".partial"
_PARTIAL_NAME = re.compile(r"\.(.+)\.[0-9a-f]{8}" + re.escape(PARTIAL_SUFFIX))

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


def image_pixels(path: str | os.PathLike) -> int | None:
    """Width x height the file declares, from its header (nothing is decoded); None when the header
    cannot be read (reading the image says why)."""
    path = Path(path)
    try:
        with _open_pil(path, None) as im:
            return im.size[0] * im.size[1]
    except Exception:
        pass
    try:   # TIFFs Pillow does not open (32-bit float, deep colour)
        import tifffile

        with tifffile.TiffFile(path) as tif:
            return int(tif.pages[0].imagewidth) * int(tif.pages[0].imagelength)
    except Exception:
        return None


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
            f"{max_pixels / 1e6:.1f} megapixels (possible decompression bomb); pass a larger "
            f"max_pixels= to read_image to read it",
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
    with atomic_output(path) as tmp:
        _encode(tmp, samples, suffix, quality)
    return path


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file beside `path` for the block to write; renamed onto `path` when the block ends,
    removed when it raises.

    Readers never see a partly written file under the final name: a killed process leaves only a hidden
    ``.<name>.<8 hex digits>.partial`` file, which `remove_partial_files` clears and no image listing
    picks up. The file gets the usual permissions (0o666 less the umask), as a plain ``open`` would.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # O_EXCL: never another's file
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_partial_files(folder: str | os.PathLike, names: Iterable[str] | None = None) -> list[Path]:
    """Delete the temporaries that `atomic_output` left in `folder` (not its subfolders) when its process
    was killed: those of the target file `names`, or all of them. Returns the files removed.

    Only for a folder no running process is writing into: a live writer's temporary would go too.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    targets = None if names is None else set(names)
    removed = []
    for entry in folder.iterdir():
        match = _PARTIAL_NAME.fullmatch(entry.name)
        if match and (targets is None or match.group(1) in targets) and entry.is_file():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return sorted(removed)


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

"""Hostile image files: every decoder path fuzzed, decompression bombs in every format, and the
restore command on a folder of hostile files with a model trained by the engine.

Contract (refusion/data/paired.py, tools/restore.py): a file gives an upright float32 RGB image in [0, 1]
or an ImageReadError naming it; a declared size above the pixel limit is refused before decoding;
the restore command restores what it can, reports the rest, and never overwrites an input (nor one
of its own outputs with another).
"""
from __future__ import annotations

import io
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from refusion.data.image_io import ImageReadError, image_bit_depth, read_image, write_image
from test_training import make_pairs, one_thread, tiny_recipe_dict  # noqa: F401 (autouse fixture)

ROOT = Path(__file__).resolve().parents[1]
from refusion.cli import restore as restore_tool

RNG = np.random.default_rng(7)
FUZZ_PIXEL_LIMIT = 4_000_000   # a mutated header may declare a big image: keep each decode small


def _pil_bytes(mode: str, fmt: str, size=(20, 12), **kwargs) -> bytes:
    rgba = Image.fromarray(RNG.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8), "RGBA")
    image = rgba if mode == "RGBA" else rgba.convert("RGB").convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _write_bytes(array: np.ndarray, suffix: str, bit_depth: int) -> bytes:
    buffer = io.BytesIO()
    if suffix == ".png":  # 16-bit colour PNG: the OpenCV decoder path
        import cv2

        ok, data = cv2.imencode(".png", array[:, :, ::-1])
        assert ok
        return data.tobytes()
    tifffile.imwrite(buffer, array, photometric="rgb")
    return buffer.getvalue()


def seed_files() -> dict[str, bytes]:
    """One small valid file per decoder path of read_image."""
    deep = RNG.integers(0, 65536, (12, 20, 3), dtype=np.uint16)
    seeds = {f"png_{mode}": _pil_bytes(mode, "PNG") for mode in ("RGB", "L", "LA", "P", "RGBA", "1")}
    seeds.update({
        "jpeg": _pil_bytes("RGB", "JPEG"), "jpeg_grey": _pil_bytes("L", "JPEG"),
        "jpeg_cmyk": _pil_bytes("CMYK", "JPEG"), "gif": _pil_bytes("P", "GIF"), "bmp": _pil_bytes("RGB", "BMP"),
        "webp": _pil_bytes("RGB", "WEBP"), "ppm": _pil_bytes("RGB", "PPM"), "tiff8": _pil_bytes("RGB", "TIFF"),
        "png16_rgb": _write_bytes(deep, ".png", 16), "tiff16_rgb": _write_bytes(deep, ".tif", 16),
        "tiff_float": _write_bytes(RNG.random((12, 20, 3)).astype(np.float32), ".tif", 32),
    })
    return seeds


SEEDS = seed_files()


def check_result_or_named_error(path: Path) -> str:
    """read_image and image_bit_depth give a valid result or an ImageReadError naming the file."""
    try:
        image = read_image(path, max_pixels=FUZZ_PIXEL_LIMIT)
    except ImageReadError as exc:
        assert exc.path == str(path) and str(path) in str(exc) and exc.reason
        outcome = "refused"
    else:
        assert image.dtype == np.float32 and image.ndim == 3 and image.shape[2] == 3
        assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0
        outcome = "read"
    try:
        assert image_bit_depth(path) in (8, 16)
    except ImageReadError as exc:
        assert str(path) in str(exc)
    return outcome


def _mutate(data: bytes, kind: str, where: float, values: list[int]) -> bytes:
    out = bytearray(data)
    at = int(where * len(out))
    if kind == "truncate":
        return bytes(out[:at])
    if kind == "flip":
        for i, v in enumerate(values):
            out[(at + 7 * i) % len(out)] ^= v or 1
        return bytes(out)
    if kind == "size_field":  # a 32-bit word with an extreme value: sizes, offsets, lengths
        out[at:at + 4] = struct.pack(">I", [0, 1, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF][values[0] % 5])
        return bytes(out)
    return bytes(out[:at]) + bytes(values) + bytes(out[at:])  # insert junk


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.sampled_from(sorted(SEEDS)), kind=st.sampled_from(["truncate", "flip", "size_field", "insert"]),
       where=st.floats(0, 0.999), values=st.lists(st.integers(0, 255), min_size=1, max_size=8))
def test_fuzz_every_decoder_path(tmp_path, seed, kind, where, values):
    path = tmp_path / "fuzz ü.img"
    path.write_bytes(_mutate(SEEDS[seed], kind, where, values))
    check_result_or_named_error(path)


def test_unmutated_seeds_all_read(tmp_path):
    for name, data in SEEDS.items():
        path = tmp_path / f"{name}.img"
        path.write_bytes(data)
        if name == "png_RGBA":   # random alpha: transparent pixels are refused by design
            with pytest.raises(ImageReadError, match="transparent"):
                read_image(path)
            continue
        assert read_image(path).shape == (12, 20, 3), name


# --------------------------------------------------------------------------- decompression bombs


def _tiff_set_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite ImageWidth (256) / ImageLength (257) in the first IFD of a little-endian TIFF."""
    out = bytearray(data)
    assert out[:4] == b"II*\x00"
    ifd = struct.unpack_from("<I", out, 4)[0]
    for i in range(struct.unpack_from("<H", out, ifd)[0]):
        entry = ifd + 2 + 12 * i
        tag, kind = struct.unpack_from("<HH", out, entry)
        if tag in (256, 257):
            value = width if tag == 256 else height
            if kind == 3:
                struct.pack_into("<H", out, entry + 8, min(value, 0xFFFF))
            else:
                struct.pack_into("<I", out, entry + 8, value)
    return bytes(out)


def _jpeg_set_size(data: bytes, width: int, height: int) -> bytes:
    out = bytearray(data)
    sof = out.index(b"\xff\xc0")
    struct.pack_into(">HH", out, sof + 5, height, width)
    return bytes(out)


def _bmp_set_size(data: bytes, width: int, height: int) -> bytes:
    out = bytearray(data)
    struct.pack_into("<ii", out, 18, width, height)
    return bytes(out)


def _gif_set_size(data: bytes, width: int, height: int) -> bytes:
    out = bytearray(data)
    struct.pack_into("<HH", out, 6, width, height)
    table = 3 * 2 ** ((out[10] & 7) + 1) if out[10] & 0x80 else 0
    descriptor = out.index(b"\x2c", 13 + table)
    struct.pack_into("<HH", out, descriptor + 5, width, height)
    return bytes(out)


def _webp_set_size(data: bytes, width: int, height: int) -> bytes:
    out = bytearray(data)
    start = out.index(b"\x9d\x01\x2a")  # VP8 key frame start code, then 14-bit width and height
    struct.pack_into("<HH", out, start + 3, width & 0x3FFF, height & 0x3FFF)
    return bytes(out)


def _png_set_size(data: bytes, width: int, height: int) -> bytes:
    import zlib

    out = bytearray(data)
    struct.pack_into(">II", out, 16, width, height)
    struct.pack_into(">I", out, 29, zlib.crc32(bytes(out[12:29])))
    return bytes(out)


BOMBS = {
    "png": (lambda: _png_set_size(SEEDS["png_RGB"], 100_000, 100_000), "100000x100000"),
    "png16_opencv_path": (lambda: _png_set_size(SEEDS["png16_rgb"], 60_000, 60_000), "60000x60000"),
    "jpeg": (lambda: _jpeg_set_size(SEEDS["jpeg"], 65_000, 65_000), "65000x65000"),
    "gif": (lambda: _gif_set_size(SEEDS["gif"], 65_535, 65_535), "65535x65535"),
    "bmp": (lambda: _bmp_set_size(SEEDS["bmp"], 100_000, 100_000), "100000x100000"),
    "webp": (lambda: _webp_set_size(SEEDS["webp"], 16_383, 16_383), "16383x16383"),
    "ppm": (lambda: SEEDS["ppm"].replace(b"20 12", b"90000 90000", 1), "90000x90000"),
    "tiff8": (lambda: _tiff_set_size(SEEDS["tiff8"], 65_535, 65_535), "65535x65535"),
    "tiff16_tifffile_path": (lambda: _tiff_set_size(SEEDS["tiff16_rgb"], 70_000, 70_000), "70000x70000"),
    "tiff_float_tifffile_path": (lambda: _tiff_set_size(SEEDS["tiff_float"], 70_000, 70_000), "70000x70000"),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_decompression_bombs_refused_before_decoding(tmp_path, name):
    make, size = BOMBS[name]
    path = tmp_path / f"bomb {name}.img"
    path.write_bytes(make())
    started = time.perf_counter()
    with pytest.raises(ImageReadError, match="decompression bomb") as info:
        read_image(path)
    assert size in str(info.value) and str(path) in str(info.value)
    assert "limit of 200.0 megapixels" in str(info.value)
    assert time.perf_counter() - started < 5.0   # refused from the header, nothing decoded


# ------------------------------------------------------------------ the restore command, end to end


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A regressor run directory written by the training engine (2 steps of a tiny NAFNet)."""
    from refusion.config import recipe_from_dict
    from refusion.training import train

    root = tmp_path_factory.mktemp("hostile_run")
    data = make_pairs(root / "pairs", n_train=2, n_val=0, size=32)
    return train(recipe_from_dict(tiny_recipe_dict("regressor", data, root / "run ü", total_iters=2,
                                                   checkpoint_every=2)))


def run_restore(*args: str | Path) -> int:
    return restore_tool.main([str(a) for a in args] + ["--no-progress"])


HOSTILE_FILES = {
    "zero_size.png": lambda: b"",
    "text pretending.jpg": lambda: b"GIF89a? no, plain text\n" * 3,
    "html.png": lambda: b"<html><body>not an image</body></html>",
    "bomb.png": BOMBS["png"][0],
    "bomb.jpg": BOMBS["jpeg"][0],
    "cut.png": lambda: SEEDS["png_RGB"][:60],
    "cut16.png": lambda: SEEDS["png16_rgb"][:-40],
    "cut.jpg": lambda: SEEDS["jpeg"][:150],
}
GOOD_FILES = {
    "grey.png": lambda: SEEDS["png_L"], "grey alpha.png": lambda: SEEDS["png_LA"],
    "palette.png": lambda: SEEDS["png_P"], "deep 16.png": lambda: SEEDS["png16_rgb"],
    "deep 16.tif": lambda: SEEDS["tiff16_rgb"], "float.tif": lambda: SEEDS["tiff_float"],
    "cmyk.jpg": lambda: SEEDS["jpeg_cmyk"], "rotated.jpg": lambda: _pil_bytes("RGB", "JPEG", exif=_exif(6)),
    "bitmap.bmp": lambda: SEEDS["bmp"], "web.webp": lambda: SEEDS["webp"],
}


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


@settings(max_examples=10, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=st.lists(st.sampled_from(sorted(HOSTILE_FILES)), min_size=1, max_size=3, unique=True),
       good=st.lists(st.sampled_from(sorted(GOOD_FILES)), min_size=1, max_size=3, unique=True),
       prefix=st.text(alphabet="aé ü_-ñ中 ", min_size=0, max_size=5))
def test_restore_command_on_hostile_folders(tmp_path_factory, trained_run, capsys, bad, good, prefix):
    folder = tmp_path_factory.mktemp("hostile") / f"in {prefix}dir"
    folder.mkdir()
    files = {}
    for name in bad + good:
        path = folder / f"{prefix}{name}"
        path.write_bytes((HOSTILE_FILES | GOOD_FILES)[name]())
        files[name] = path
    before = {p: p.read_bytes() for p in files.values()}
    out = folder.parent / f"out {prefix}"
    code = run_restore(folder, "-o", out, "--model", trained_run)
    captured = capsys.readouterr()
    assert code == 1                                            # some failed, reported at the end
    assert {p: p.read_bytes() for p in files.values()} == before  # inputs untouched
    assert f"{len(good)} of {len(files)} images restored" in captured.out
    for name in bad:
        assert f"failed: {files[name]}" in captured.err
    for name in good:
        result = read_image(restore_tool.output_path(out, files[name]))
        assert result.shape == ((20, 12, 3) if name == "rotated.jpg" else (12, 20, 3)), name
    assert len(list(out.iterdir())) == len(good)                # nothing half-written left behind
    deep = restore_tool.output_path(out, files["deep 16.png"]) if "deep 16.png" in good else None
    if deep is not None:
        assert image_bit_depth(deep) == 16


def test_outputs_of_two_inputs_never_collide(tmp_path, trained_run, capsys):
    # "a.bmp" is written as "a.bmp.png": an input already named "a.bmp.png" must not be clobbered
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.bmp").write_bytes(SEEDS["bmp"])
    (folder / "a.bmp.png").write_bytes(SEEDS["png_RGB"])
    before = {p: p.read_bytes() for p in folder.iterdir()}
    code = run_restore(folder, "-o", tmp_path / "out", "--model", trained_run)
    err = capsys.readouterr().err
    assert code == 2
    assert "a.bmp" in err and "a.bmp.png" in err and "same output" in err
    assert not (tmp_path / "out").exists()
    assert {p: p.read_bytes() for p in folder.iterdir()} == before


def test_input_that_links_into_the_output_folder_is_not_overwritten(tmp_path, trained_run, capsys):
    out = tmp_path / "out"
    out.mkdir()
    target = out / "photo.png"
    target.write_bytes(SEEDS["png_RGB"])
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "photo.png").symlink_to(target)
    assert run_restore(folder, "-o", out, "--model", trained_run) == 2
    assert "would replace the input file" in capsys.readouterr().err
    assert target.read_bytes() == SEEDS["png_RGB"]


def test_restored_image_is_the_models_output(tmp_path, trained_run):
    # not only "a file appeared": the result is the trained network applied to the image
    from refusion.inference.model import load_model

    path = tmp_path / "in" / "x y.png"
    path.parent.mkdir()
    write_image(path, RNG.random((16, 24, 3)))
    assert run_restore(path, "-o", tmp_path / "out", "--model", trained_run) == 0
    net = load_model(trained_run).network
    with torch.no_grad():
        expected = net(torch.from_numpy(read_image(path)).permute(2, 0, 1)[None]).clamp(0, 1)
    got = read_image(tmp_path / "out" / "x y.png")
    assert np.abs(got - expected[0].permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6

"""Image I/O (refusion.data.image_io), pairing and the paired dataset (refusion.data)."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from refusion.data.paired import PairedImageDataset, find_pairs, load_condition_vectors
from refusion.data.image_io import ImageReadError, from_tensor, image_bit_depth, read_image, to_tensor, write_image

RNG = np.random.default_rng(1234)


def random_uint8(h=12, w=17, c=3):
    return RNG.integers(0, 256, (h, w, c), dtype=np.uint8) if c else RNG.integers(0, 256, (h, w), dtype=np.uint8)


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


# ------------------------------------------------------------------------------------ round trips


def test_8bit_png_round_trip_is_exact(tmp_path):
    samples = random_uint8()
    path = write_image(tmp_path / "a.png", samples)
    assert image_bit_depth(path) == 8
    np.testing.assert_array_equal(read_image(path), samples.astype(np.float32) / 255)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".tiff"])
@pytest.mark.parametrize("channels", [3, 0])
def test_16bit_round_trip_is_exact(tmp_path, suffix, channels):
    shape = (9, 13, 3) if channels else (9, 13)
    samples = RNG.integers(0, 65536, shape, dtype=np.uint16)
    path = write_image(tmp_path / f"deep{suffix}", samples, bit_depth=16)
    assert image_bit_depth(path) == 16
    got = read_image(path)
    want = samples.astype(np.float32) / 65535
    if not channels:
        want = np.repeat(want[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(got, want)


def test_float_write_rounds_to_nearest_level(tmp_path):
    image = RNG.random((8, 8, 3), dtype=np.float32)
    for depth, peak in ((8, 255), (16, 65535)):
        got = read_image(write_image(tmp_path / f"f{depth}.png", image, bit_depth=depth))
        np.testing.assert_array_equal(got, np.round(image * peak).astype(np.float32) / peak)


def test_jpeg_round_trip_and_depth_errors(tmp_path):
    smooth = np.broadcast_to(np.linspace(0, 1, 32, dtype=np.float32)[None, :, None], (16, 32, 3))
    got = read_image(write_image(tmp_path / "a.jpg", smooth))
    assert np.abs(got - smooth).max() < 0.03
    with pytest.raises(ValueError, match="JPEG holds 8 bits only"):
        write_image(tmp_path / "b.jpg", smooth, bit_depth=16)
    with pytest.raises(ValueError, match="unsupported extension '.gif'"):
        write_image(tmp_path / "b.gif", smooth)
    with pytest.raises(ValueError, match="NaN or Inf"):
        write_image(tmp_path / "c.png", np.full((4, 4, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="uint16 array with bit_depth=8"):
        write_image(tmp_path / "d.png", np.zeros((4, 4, 3), np.uint16))


def test_write_is_atomic(tmp_path, monkeypatch):
    import refusion.data.image_io as image_io

    target = write_image(tmp_path / "keep.png", random_uint8())
    before = target.read_bytes()

    def broken_encode(tmp, samples, suffix, quality):
        Path(tmp).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(image_io, "_encode", broken_encode)
    with pytest.raises(OSError, match="disk full"):
        write_image(target, random_uint8())
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.png"]


def test_written_files_get_the_umask_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    os.umask(umask)
    path = write_image(tmp_path / "shared.png", random_uint8())
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask   # not the 0o600 of a private temp file


def test_a_killed_writer_leaves_only_a_partial_file_that_cleanup_removes(tmp_path):
    from refusion.data.image_io import atomic_output, remove_partial_files

    target = tmp_path / "a.png"
    write_image(tmp_path / "b.png", random_uint8())
    writing = atomic_output(target)
    tmp = writing.__enter__()          # the process dies inside the block: no __exit__, no rename
    tmp.write_bytes(b"half an image")
    assert not target.exists() and tmp.parent == tmp_path and tmp.name.startswith(".a.png.")
    (tmp_path / ".a.png.hidden").write_bytes(b"not ours")
    assert remove_partial_files(tmp_path, names=["b.png"]) == []
    assert remove_partial_files(tmp_path) == [tmp]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a.png.hidden", "b.png"]
    with atomic_output(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a.png.hidden", "a.png", "b.png"]


def test_unicode_and_spaces_in_paths(tmp_path):
    samples = random_uint8()
    for suffix, depth in ((".png", 8), (".png", 16), (".tif", 16), (".jpg", 8)):
        path = tmp_path / "données d'été" / f"ü 图像 a{suffix}"
        write_image(path, samples.astype(np.float32) / 255, bit_depth=depth)
        assert read_image(path).shape == (12, 17, 3)


def test_tensor_helpers():
    image = RNG.random((5, 7, 3), dtype=np.float32)
    tensor = to_tensor(image)
    assert tensor.shape == (3, 5, 7) and tensor.dtype == torch.float32
    np.testing.assert_array_equal(from_tensor(tensor), image)
    with pytest.raises(ValueError, match="HWC"):
        to_tensor(image[:, :, 0])
    with pytest.raises(ValueError, match="CHW"):
        from_tensor(tensor[None])


# ----------------------------------------------------------------------------------- modes, EXIF


def test_grayscale_palette_and_bilevel_become_rgb(tmp_path):
    gray = random_uint8(c=0)
    Image.fromarray(gray).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), np.repeat(gray[:, :, None], 3, 2) / np.float32(255))
    rgb = random_uint8()
    palette = Image.fromarray(rgb).quantize(colors=16)
    palette.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), np.asarray(palette.convert("RGB")) / np.float32(255))
    Image.fromarray(gray > 128).save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_image(tmp_path / "b.png")[:, :, 1], (gray > 128).astype(np.float32))


def test_opaque_alpha_is_dropped_transparent_is_refused(tmp_path):
    rgba = np.concatenate([random_uint8(), np.full((12, 17, 1), 255, np.uint8)], axis=2)
    Image.fromarray(rgba).save(tmp_path / "opaque.png")
    np.testing.assert_array_equal(read_image(tmp_path / "opaque.png"), rgba[:, :, :3] / np.float32(255))
    rgba[0, 0, 3] = 10
    Image.fromarray(rgba).save(tmp_path / "clear.png")
    with pytest.raises(ImageReadError, match=r"clear\.png.*transparent pixels"):
        read_image(tmp_path / "clear.png")
    Image.fromarray(rgba[:, :, [0, 3]], mode="LA").save(tmp_path / "la.png")
    with pytest.raises(ImageReadError, match="alpha"):
        read_image(tmp_path / "la.png")
    palette = Image.fromarray(random_uint8()).quantize(colors=8)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "ptrans.png", transparency=0)
    with pytest.raises(ImageReadError, match="transparent"):
        read_image(tmp_path / "ptrans.png")


def test_16bit_colour_png_with_alpha(tmp_path):
    import cv2

    samples = RNG.integers(0, 65536, (6, 5, 4), dtype=np.uint16)
    samples[:, :, 3] = 65535
    cv2.imwrite(str(tmp_path / "a.png"), samples[:, :, [2, 1, 0, 3]])
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), samples[:, :, :3] / np.float32(65535))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path, orientation):
    image = Image.fromarray(random_uint8(6, 10))
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(tmp_path / "o.png", exif=exif)
    want = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")).convert("RGB"))
    np.testing.assert_array_equal(read_image(tmp_path / "o.png"), want / np.float32(255))


def test_exif_rotation_on_16bit_png(tmp_path):
    samples = RNG.integers(0, 65536, (4, 7, 3), dtype=np.uint16)
    write_image(tmp_path / "deep.png", samples, bit_depth=16)
    # add an eXIf chunk (orientation 6: rotate 90 degrees clockwise) before IEND
    exif = Image.Exif()
    exif[0x0112] = 6
    data = (tmp_path / "deep.png").read_bytes()
    data = data[:-12] + png_chunk(b"eXIf", exif.tobytes()[6:]) + data[-12:]
    (tmp_path / "deep.png").write_bytes(data)
    np.testing.assert_array_equal(read_image(tmp_path / "deep.png"), np.rot90(samples, -1) / np.float32(65535))


# ---------------------------------------------------------------------------------- hostile files


def _valid_bytes(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(random_uint8(24, 24)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("name, content", [
    ("empty.png", b""),
    ("text.png", b"this is not an image\n" * 5),
    ("cut.png", _valid_bytes("PNG")[:150]),
    ("cut.jpg", _valid_bytes("JPEG")[:400]),
    ("cut.tif", _valid_bytes("TIFF")[:300]),
])
def test_bad_files_raise_named_error(tmp_path, name, content):
    path = tmp_path / "dir with space" / name
    path.parent.mkdir()
    path.write_bytes(content)
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert str(path) in str(info.value) and info.value.path == str(path)


def test_truncated_16bit_colour_png(tmp_path):
    path = write_image(tmp_path / "deep.png", RNG.integers(0, 65536, (32, 32, 3), dtype=np.uint16), bit_depth=16)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(ImageReadError, match="deep.png"):
        read_image(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match="not a regular file"):
        read_image(tmp_path)


def test_decompression_bomb_refused_by_header(tmp_path):
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + png_chunk(b"IEND", b"")
    (tmp_path / "bomb.png").write_bytes(bomb)
    limit_before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageReadError, match=r"bomb\.png.*100000x100000 = 10000\.0 megapixels.*limit of 200\.0"):
        read_image(tmp_path / "bomb.png")
    assert Image.MAX_IMAGE_PIXELS == limit_before
    small = write_image(tmp_path / "small.png", random_uint8(100, 100))
    with pytest.raises(ImageReadError, match="max_pixels"):
        read_image(small, max_pixels=9_999)
    assert read_image(small, max_pixels=10_000).shape == (100, 100, 3)


def _mutations():
    seeds = st.sampled_from([_valid_bytes("PNG"), _valid_bytes("JPEG"), _valid_bytes("TIFF"), _valid_bytes("BMP")])
    cut = st.tuples(seeds, st.floats(0, 1)).map(lambda a: a[0][: int(len(a[0]) * a[1])])
    flips = st.tuples(seeds, st.lists(st.tuples(st.floats(0, 0.999), st.integers(1, 255)), min_size=1, max_size=6))
    flipped = flips.map(lambda a: _flip(*a))
    return st.one_of(st.binary(max_size=300), cut, flipped)


def _flip(data: bytes, edits) -> bytes:
    out = bytearray(data)
    for where, mask in edits:
        out[int(where * len(out))] ^= mask
    return bytes(out)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=_mutations())
def test_fuzz_result_or_image_read_error(tmp_path, content):
    path = tmp_path / "fuzz.png"
    path.write_bytes(content)
    try:
        image = read_image(path, max_pixels=4_000_000)
    except ImageReadError as exc:
        assert str(path) in str(exc)
        return
    assert image.dtype == np.float32 and image.ndim == 3 and image.shape[2] == 3
    assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1


# ----------------------------------------------------------------------------------------- pairing


def _folder(root: Path, names: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        write_image(root / name, random_uint8(4, 4))
    return root


def test_find_pairs_matches_stems_sorted_and_skips_hidden(tmp_path):
    gt = _folder(tmp_path / "gt", ["b.png", "a.png", "c.tif"])
    lq = _folder(tmp_path / "lq", ["c.png", "a.jpg", "b.png", ".hidden.png"])
    (lq / "notes.txt").write_text("not an image")
    pairs = find_pairs(gt, lq)
    assert [(n, g.name, q.name) for n, g, q in pairs] == [("a", "a.png", "a.jpg"), ("b", "b.png", "b.png"), ("c", "c.tif", "c.png")]


def test_find_pairs_reports_unmatched_and_unreadable(tmp_path):
    gt = _folder(tmp_path / "gt", ["shared.png"] + [f"gt_only_{i}.png" for i in range(7)])
    lq = _folder(tmp_path / "lq", ["shared.png", "lq_only.png"])
    (lq / "broken.png").write_bytes(b"")
    with pytest.raises(ValueError) as info:
        find_pairs(gt, lq)
    message = str(info.value)
    assert "7 GT image(s) without an LQ partner" in message
    assert "'gt_only_0.png', 'gt_only_1.png', 'gt_only_2.png', 'gt_only_3.png', 'gt_only_4.png' and 2 more" in message
    assert "LQ image(s) without a GT partner" in message and "'lq_only.png'" in message
    assert "1 unreadable entry" in message and "broken.png (empty file)" in message


def test_find_pairs_folder_errors(tmp_path):
    gt = _folder(tmp_path / "gt", ["a.png", "a.jpg"])
    lq = _folder(tmp_path / "lq", ["a.png"])
    with pytest.raises(ValueError, match="two images named 'a'"):
        find_pairs(gt, lq)
    with pytest.raises(FileNotFoundError, match="LQ folder .*missing"):
        find_pairs(lq, tmp_path / "missing")
    (tmp_path / "npy").mkdir()
    (tmp_path / "npy" / "x.npy").write_bytes(b"0")
    with pytest.raises(FileNotFoundError, match="has no images.*'x.npy'"):
        find_pairs(lq, tmp_path / "npy")


# ----------------------------------------------------------------------------------------- dataset


def _paired(tmp_path: Path, count=3, size=(40, 52), scale=1, with_cond=False) -> tuple[Path, Path]:
    """LQ = 255 - GT (GT is block-constant when scale > 1), a relation every augmentation keeps."""
    gt_dir, lq_dir = tmp_path / "gt", tmp_path / "lq"
    for i in range(count):
        base = random_uint8(size[0] // scale, size[1] // scale)
        write_image(gt_dir / f"img{i}.png", np.repeat(np.repeat(base, scale, 0), scale, 1))
        write_image(lq_dir / f"img{i}.png", 255 - base)
        if with_cond:
            write_image(tmp_path / "view2" / f"img{i}.png", base)
    return gt_dir, lq_dir


def test_crops_flips_rotations_stay_aligned(tmp_path):
    gt, lq = _paired(tmp_path)
    dataset = PairedImageDataset(gt, lq, gt_size=16, use_flip=True, use_rot=True, seed=3)
    full = [read_image(p) for _, p, _ in dataset.pairs]
    variants = set()
    for epoch in range(12):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            item = dataset[index]
            assert item["gt"].shape == item["lq"].shape == (3, 16, 16) and item["gt"].dtype == torch.float32
            torch.testing.assert_close(item["lq"], 1 - item["gt"], rtol=0, atol=1e-6)
            crop = item["gt"].permute(1, 2, 0).numpy()
            found = [k for k in range(8) if _in_image(_dihedral(crop, k), full[index])]
            assert found, "the crop is not a flipped/rotated window of its GT"
            variants.add(found[0])
    assert len(variants) >= 5  # flips and rotations are drawn


def _dihedral(a: np.ndarray, k: int) -> np.ndarray:
    a = np.rot90(a, -(k % 4))
    return a[:, ::-1] if k >= 4 else a


def _in_image(window: np.ndarray, image: np.ndarray) -> bool:
    h, w = window.shape[:2]
    for top in range(image.shape[0] - h + 1):
        for left in np.flatnonzero((image[top, : image.shape[1] - w + 1] == window[0, 0]).all(axis=1)):
            if np.array_equal(image[top:top + h, left:left + w], window):
                return True
    return False


def test_super_resolution_scale_crops(tmp_path):
    gt, lq = _paired(tmp_path, size=(40, 48), scale=2)
    dataset = PairedImageDataset(gt, lq, gt_size=16, scale=2, use_flip=True, use_rot=True, seed=0)
    for index in range(len(dataset)):
        item = dataset[index]
        assert item["lq"].shape == (3, 8, 8) and item["gt"].shape == (3, 16, 16)
        upsampled = (1 - item["lq"]).repeat_interleave(2, 1).repeat_interleave(2, 2)
        torch.testing.assert_close(item["gt"], upsampled, rtol=0, atol=1e-6)


def test_seeded_draws_are_a_function_of_seed_epoch_index(tmp_path):
    gt, lq = _paired(tmp_path)
    first = PairedImageDataset(gt, lq, gt_size=16, use_flip=True, use_rot=True, seed=7)
    second = PairedImageDataset(gt, lq, gt_size=16, use_flip=True, use_rot=True, seed=7, cache=False)
    for index in (2, 0, 1, 2):
        torch.testing.assert_close(first[index]["gt"], second[index]["gt"], rtol=0, atol=0)
    before = first[0]["gt"].clone()
    first.set_epoch(1)
    assert not torch.equal(first[0]["gt"], before)
    other = PairedImageDataset(gt, lq, gt_size=16, use_flip=True, use_rot=True, seed=8)
    assert not all(torch.equal(first[i]["gt"], other[i]["gt"]) for i in range(3))


def test_unseeded_draws_follow_torch_rng_and_dataloader(tmp_path):
    gt, lq = _paired(tmp_path, count=4)
    dataset = PairedImageDataset(gt, lq, gt_size=16, use_flip=True, use_rot=True)

    def batches():
        torch.manual_seed(5)
        loader = torch.utils.data.DataLoader(dataset, batch_size=2, shuffle=True, num_workers=2)
        return [(b["name"], b["gt"]) for b in loader]

    first, second = batches(), batches()
    for (names_a, gt_a), (names_b, gt_b) in zip(first, second):
        assert names_a == names_b and torch.equal(gt_a, gt_b)


def test_whole_images_for_validation(tmp_path):
    gt, lq = _paired(tmp_path, count=5)
    dataset = PairedImageDataset(gt, lq, max_images=2)
    assert len(dataset) == 2
    item = dataset[1]
    assert item["name"] == "img1" and item["gt"].shape == (3, 40, 52)
    np.testing.assert_array_equal(from_tensor(item["gt"]), read_image(gt / "img1.png"))
    with pytest.raises(IndexError):
        dataset[2]


def test_dataset_size_errors_name_the_files(tmp_path):
    gt, lq = _paired(tmp_path)
    write_image(lq / "img1.png", random_uint8(40, 50))
    with pytest.raises(ValueError, match=r"GT '.*img1.png' is 52x40, LQ '.*img1.png' is 50x40"):
        PairedImageDataset(gt, lq)
    lazy = PairedImageDataset(gt, lq, cache=False)
    with pytest.raises(ValueError, match="size mismatch"):
        lazy[1]
    with pytest.raises(ValueError, match=r"GT '.*img0.png' is 52x40, smaller than gt_size=48"):
        PairedImageDataset(gt, lq, gt_size=48, max_images=1)
    with pytest.raises(ValueError, match="gt_size=15, expected a positive integer divisible by scale=2"):
        PairedImageDataset(gt, lq, gt_size=15, scale=2)


def test_condition_vectors_from_json_and_csv(tmp_path):
    gt, lq = _paired(tmp_path)
    (tmp_path / "lens.json").write_text(json.dumps({"img0": [1.8, 0.5], "img1.png": [2.8, 1.0], "img2": [16, 0]}))
    (tmp_path / "lens.csv").write_text("name,src_f,tgt_f\nimg0,1.8,0.5\nimg1,2.8,1.0\nimg2,16,0\n")
    assert load_condition_vectors(tmp_path / "lens.csv").keys() == load_condition_vectors(tmp_path / "lens.json").keys()
    for table in ("lens.json", "lens.csv"):
        dataset = PairedImageDataset(gt, lq, gt_size=16, cond=tmp_path / table, seed=0)
        assert dataset.cond_channels == 2
        cond = dataset[1]["cond"]
        assert cond.shape == (2, 16, 16)
        torch.testing.assert_close(cond[:, 5, 7], torch.tensor([2.8, 1.0]))
        assert torch.equal(cond.amin((1, 2)), cond.amax((1, 2)))
    (tmp_path / "short.json").write_text(json.dumps({"img0": [1.0, 2.0]}))
    with pytest.raises(ValueError, match=r"no entry for 2 image\(s\): 'img1', 'img2'"):
        PairedImageDataset(gt, lq, cond=tmp_path / "short.json")
    (tmp_path / "bad.json").write_text(json.dumps({"img0": ["f/1.8"]}))
    with pytest.raises(ValueError, match="entry 'img0' must be a non-empty list of numbers"):
        load_condition_vectors(tmp_path / "bad.json")


def test_second_view_folder_is_cropped_with_lq(tmp_path):
    gt, lq = _paired(tmp_path, with_cond=True)
    dataset = PairedImageDataset(gt, lq, gt_size=16, use_flip=True, use_rot=True, cond=tmp_path / "view2", seed=1)
    for index in range(3):
        item = dataset[index]
        torch.testing.assert_close(item["cond"], item["gt"], rtol=0, atol=0)


def test_float_tiff_and_cmyk(tmp_path):
    import tifffile

    values = RNG.random((5, 6, 3), dtype=np.float32)
    tifffile.imwrite(tmp_path / "f.tif", values, photometric="rgb")
    np.testing.assert_array_equal(read_image(tmp_path / "f.tif"), values)
    assert image_bit_depth(tmp_path / "f.tif") == 16
    tifffile.imwrite(tmp_path / "hdr.tif", values * 4, photometric="rgb")
    with pytest.raises(ImageReadError, match=r"hdr\.tif.*expected \[0, 1\]"):
        read_image(tmp_path / "hdr.tif")
    cmyk = Image.fromarray(random_uint8()).convert("CMYK")
    cmyk.save(tmp_path / "c.jpg", quality=100)
    want = np.asarray(Image.open(tmp_path / "c.jpg").convert("RGB")) / np.float32(255)
    np.testing.assert_array_equal(read_image(tmp_path / "c.jpg"), want)

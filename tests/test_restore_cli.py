"""tools/restore.py: folders, corrupt files, bit depth, no overwrite of inputs, unusual paths."""
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from refusion.data.image_io import image_bit_depth, read_image, write_image
from refusion.models.conditional_nafnet import ConditionalNAFNet
from refusion.models.nafnet import NAFNet
from refusion.schedulers.ir_sde import IRSDEScheduler

ROOT = Path(__file__).resolve().parents[1]
from refusion.cli import restore as restore_tool
from same_results import assert_same_images


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def write_run(root: Path, task: str, net, scheduler=None) -> Path:
    """A run folder as the engine leaves it, as far as restore reads it: recipe task, model/, scheduler/."""
    root.mkdir(parents=True)
    (root / "recipe.yml").write_text(yaml.safe_dump({"task": task}))
    net.save_pretrained(root / "model")
    if scheduler is not None:
        scheduler.save_pretrained(root / "scheduler")
    return root


def make_run(root: Path, task: str) -> Path:
    torch.manual_seed(0)
    if task == "regressor":
        net = NAFNet(width=8, middle_blk_num=1, enc_blk_nums=[1], dec_blk_nums=[1])
        with torch.no_grad():   # a visible, deterministic change of the image
            net.ending.weight.mul_(0).add_(0.01)
            net.ending.bias.fill_(0.003)
        return write_run(root, task, net)
    net = ConditionalNAFNet(img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1], dec_blk_nums=[1])
    return write_run(root, task, net, IRSDEScheduler(sampler="ode"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    return {"regressor": make_run(base / "nafnet", "regressor"), "sde": make_run(base / "sde run", "sde")}


def make_inputs(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = {
        "png8": folder / "plain.png",
        "png16": folder / "deep 16bit.png",
        "unicode": folder / "ünïcødé photo.jpg",
        "truncated": folder / "broken.png",
        "fake": folder / "not an image.jpg",
    }
    write_image(files["png8"], rng.random((24, 32, 3)), bit_depth=8)
    write_image(files["png16"], rng.random((24, 32, 3)), bit_depth=16)
    Image.fromarray((rng.random((24, 32, 3)) * 255).astype(np.uint8)).save(files["unicode"], quality=95)
    good = folder / "_tmp.png"
    write_image(good, rng.random((24, 32, 3)))
    files["truncated"].write_bytes(good.read_bytes()[:60])
    good.unlink()
    files["fake"].write_text("this is text, not a JPEG")
    return files


def test_folder_with_corrupt_files_restores_the_rest_and_fails_at_the_end(tmp_path, runs, capsys):
    inputs = make_inputs(tmp_path / "in put")
    before = {p: p.read_bytes() for p in inputs.values()}
    out = tmp_path / "out ü"
    code = restore_tool.main([str(tmp_path / "in put"), "-o", str(out), "--model", str(runs["regressor"]),
                              "--no-progress", "--tile", "16", "--overlap", "4"])
    captured = capsys.readouterr()
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == sorted(["plain.png", "deep 16bit.png", "ünïcødé photo.jpg"])
    assert "3 of 5 images restored" in captured.out and "2 failed" in captured.out
    assert "broken.png" in captured.err and "not an image.jpg" in captured.err
    assert {p: p.read_bytes() for p in inputs.values()} == before            # inputs untouched
    # bit depth kept: the 16-bit input gives a 16-bit output with real 16-bit values
    assert image_bit_depth(out / "deep 16bit.png") == 16 and image_bit_depth(out / "plain.png") == 8
    deep = np.asarray(Image.open(out / "deep 16bit.png"))
    raw16 = read_image(out / "deep 16bit.png")
    assert raw16.shape == (24, 32, 3)
    assert np.any(np.round(raw16 * 65535) % 257 != 0), deep.dtype
    restored, source = read_image(out / "plain.png"), read_image(inputs["png8"])
    assert 0.005 < np.abs(restored - source).mean() < 0.2                      # the model changed it


def test_sde_model_on_a_single_file(tmp_path, runs, capsys):
    inputs = make_inputs(tmp_path / "in")
    out = tmp_path / "out"
    args = [str(inputs["png16"]), "-o", str(out), "--model", str(runs["sde"]), "--steps", "3", "--seed", "1",
            "--no-progress"]
    assert restore_tool.main(args) == 0
    assert "1 of 1 images restored" in capsys.readouterr().out
    first = tmp_path / "first.png"
    (out / "deep 16bit.png").rename(first)
    assert image_bit_depth(first) == 16
    assert restore_tool.main(args) == 0
    assert_same_images(out / "deep 16bit.png", first)         # same seed, same result (the model loaded again)
    assert restore_tool.main(args[:-3] + ["--seed", "2", "--no-progress"]) == 0
    assert np.abs(read_image(out / "deep 16bit.png") - read_image(first)).max() > 0.01    # another seed


def test_refuses_to_overwrite_inputs(tmp_path, runs, capsys):
    inputs = make_inputs(tmp_path / "in")
    before = {p: p.read_bytes() for p in inputs.values()}
    args = ["--model", str(runs["regressor"]), "--no-progress"]
    assert restore_tool.main([str(tmp_path / "in"), "-o", str(tmp_path / "in"), *args]) == 2
    assert "is the input folder" in capsys.readouterr().err
    assert restore_tool.main([str(inputs["png8"]), "-o", str(tmp_path / "in" / "."), *args]) == 2
    # an output folder holding a link to an input under the output's name
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "plain.png").symlink_to(inputs["png8"])
    assert restore_tool.main([str(inputs["png8"]), "-o", str(linked), *args]) == 2
    assert "would replace the input file" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in inputs.values()} == before


def test_usage_errors_are_reported(tmp_path, runs, capsys):
    assert restore_tool.main([str(tmp_path / "missing"), "-o", str(tmp_path / "o"), "--model",
                              str(runs["regressor"])]) == 2
    assert "neither a file nor a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert restore_tool.main([str(tmp_path / "empty"), "-o", str(tmp_path / "o"), "--model",
                              str(runs["regressor"])]) == 2
    assert "no images" in capsys.readouterr().err
    inputs = make_inputs(tmp_path / "in")
    assert restore_tool.main([str(inputs["png8"]), "-o", str(tmp_path / "o"), "--model", str(tmp_path)]) == 2
    assert "recipe.yml" in capsys.readouterr().err


# ---------------------------------------------------------------- hostile inputs (fuzz)
def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares a huge size and that holds no pixel data (decompression bomb shape)."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def _image_bytes(mode: str, fmt: str, size=(20, 12), exif_orientation: int | None = None) -> bytes:
    import io

    rng = np.random.default_rng(len(mode) + size[0])
    if mode == "I;16":
        img = Image.fromarray((rng.random(size[::-1]) * 65535).astype(np.uint16))
    else:
        img = Image.fromarray((rng.random((*size[::-1], 4)) * 255).astype(np.uint8), "RGBA")
        img = img.convert("RGB").convert(mode) if mode != "RGBA" else img
    buf = io.BytesIO()
    kwargs = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


HOSTILE = {
    "png_L": lambda: (".png", _image_bytes("L", "PNG")),
    "png_LA": lambda: (".png", _image_bytes("LA", "PNG")),
    "png_RGBA_transparent": lambda: (".png", _image_bytes("RGBA", "PNG")),
    "png_palette": lambda: (".png", _image_bytes("P", "PNG")),
    "png_16bit_grey": lambda: (".png", _image_bytes("I;16", "PNG")),
    "jpeg_exif_rotated": lambda: (".jpg", _image_bytes("RGB", "JPEG", exif_orientation=6)),
    "bmp": lambda: (".bmp", _image_bytes("RGB", "BMP")),
    "truncated_png": lambda: (".png", _image_bytes("RGB", "PNG")[:70]),
    "truncated_jpeg": lambda: (".jpg", _image_bytes("RGB", "JPEG")[:200]),
    "zero_size": lambda: (".png", b""),
    "huge_declared": lambda: (".png", _png_header_only(200_000, 200_000)),
    "text_as_png": lambda: (".png", "plain text pretending to be a PNG".encode()),
    "random_bytes_jpeg": lambda: (".jpeg", bytes(range(256)) * 3),
}

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is in the dev extras
    given = None


if given is not None:
    @settings(max_examples=12, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(kinds=st.lists(st.sampled_from(sorted(HOSTILE)), min_size=1, max_size=4),
           stems=st.lists(st.text(alphabet="aé ü_-ñ中", min_size=1, max_size=8), min_size=4, max_size=4,
                          unique_by=lambda s: s.strip().lower()))
    def test_hostile_inputs_never_crash_the_batch_nor_touch_inputs(tmp_path_factory, runs, kinds, stems):
        folder = tmp_path_factory.mktemp("hostile") / "in dir é"
        folder.mkdir()
        files = []
        for i, (kind, stem) in enumerate(zip(kinds, stems)):
            suffix, data = HOSTILE[kind]()
            path = folder / f"{stem.strip() or 'x'}{i}{suffix}"
            path.write_bytes(data)
            files.append((kind, path))
        before = {p: p.read_bytes() for _, p in files}
        out = folder.parent / "out ü"
        code = restore_tool.main([str(folder), "-o", str(out), "--model", str(runs["regressor"]), "--no-progress"])
        assert {p: p.read_bytes() for _, p in files} == before
        restored = {p.name for p in out.iterdir()} if out.exists() else set()
        failed = 0
        for kind, path in files:
            name = restore_tool.output_path(out, path).name
            if name in restored:
                img = read_image(out / name)
                assert img.ndim == 3 and img.shape[2] == 3
                if kind == "jpeg_exif_rotated":
                    assert img.shape[:2] == (20, 12)          # stored 20 wide x 12 high, rotated upright
                if kind == "png_16bit_grey":
                    assert image_bit_depth(out / name) == 16
            else:
                failed += 1
                assert kind not in ("png_L", "png_LA", "png_palette", "png_16bit_grey", "jpeg_exif_rotated", "bmp")
        assert code == (1 if failed else 0)


def test_two_inputs_with_one_output_name_are_refused(tmp_path, runs, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a.bmp")
    write_image(folder / "a.bmp.png", np.zeros((8, 8, 3)))
    assert restore_tool.main([str(folder), "-o", str(tmp_path / "out"), "--model", str(runs["regressor"])]) == 2
    assert "same output" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_broken_model_weights_are_a_usage_error(tmp_path, runs, capsys):
    import shutil

    run = tmp_path / "broken"
    shutil.copytree(runs["regressor"], run)
    weights = run / "model" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    inputs = make_inputs(tmp_path / "in")
    assert restore_tool.main([str(inputs["png8"]), "-o", str(tmp_path / "out"), "--model", str(run)]) == 2
    assert str(weights) in capsys.readouterr().err
    weights.unlink()
    torch.save({"w": torch.zeros(1)}, weights.with_suffix(".bin"))          # a pickle is never read
    assert restore_tool.main([str(inputs["png8"]), "-o", str(tmp_path / "out"), "--model", str(run)]) == 2
    assert "safetensors only" in capsys.readouterr().err

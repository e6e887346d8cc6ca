"""`refusion restore` split between processes, resumable (--skip-existing), with a --summary manifest.

The two-process tests launch real CPU processes the way tests/test_multiprocess.py does
(`accelerate launch --multi_gpu`, ACCELERATE_USE_CPU); the kill is injected by a wrapper around
tools/restore.py that SIGKILLs process 1 halfway through writing its second image.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from refusion.cli import restore as restore_tool
from refusion.data.image_io import write_image
from refusion.models import StereoNAFNet
from refusion.schedulers.ir_sde import IRSDEScheduler
from test_multiprocess import TIMEOUT_S, free_port
from same_results import assert_same_folders, assert_same_images
from test_restore_cli import make_run

ROOT = Path(__file__).resolve().parents[1]
STEPS = "4"   # sampling steps: the step bars read "n/4", the image bars of a 3 + 2 split "n/3" and "n/2"

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def sde_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "sde", "sde")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(5):   # 5 over 2 processes: shares of 3 and 2
        write_image(folder / f"img{i}.png", rng.random((16, 24, 3)))
    return folder


def sde_args(photos: Path, out: Path, run: Path, *extra: str) -> list[str]:
    # a stochastic sampler: an image's noise (seeded per image) shows in every output pixel
    return [str(photos), "-o", str(out), "--model", str(run), "--steps", STEPS, "--sampler", "mr_sde", *extra]


@pytest.fixture(scope="module")
def one_process(photos, sde_run, tmp_path_factory) -> Path:
    """The output folder of a plain one-process run (torch on one thread, as in each launched process)."""
    out = tmp_path_factory.mktemp("one") / "out"
    assert restore_tool.main(sde_args(photos, out, sde_run, "--no-progress")) == 0
    return out


def launch(*command: str) -> subprocess.CompletedProcess:
    """`accelerate launch` of two CPU processes running `command` (a script and its arguments, or -m ...)."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(free_port())]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true")
    return subprocess.run(launcher + list(command), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def entries(summary: Path) -> dict[str, dict]:
    return {Path(e["input"]).name: e for e in json.loads(summary.read_text())["images"]}


@pytest.mark.slow
def test_two_processes_write_each_image_once_as_one_process_does(photos, sde_run, one_process, tmp_path):
    out, summary = tmp_path / "out", tmp_path / "summary.json"
    result = launch("-m", "refusion", "restore", *sde_args(photos, out, sde_run, "--summary", str(summary)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "terminate called" not in result.stderr       # the processes ended together, none aborted at exit
    assert_same_folders(out, one_process)                             # same images, nothing else in the folder
    document = json.loads(summary.read_text())
    images = document["images"]
    names = sorted(files(one_process))
    assert [Path(e["input"]).name for e in images] == names               # every image once, input order
    assert {e["rank"] for e in images} == {0, 1} and [e["rank"] for e in images].count(1) == 2
    assert {e["status"] for e in images} == {"restored"}
    assert [Path(e["output"]).name for e in images] == names
    assert document["processes"] == 2 and document["totals"]["restored"] == 5
    assert document["settings"]["steps"] == int(STEPS) and document["settings"]["sampler"] == "mr_sde"
    assert result.stdout.count("5 of 5 images restored") == 1          # counted over both processes, printed once
    # one set of progress bars, the main process's: its 3 images, each with one bar over the steps
    totals = set(re.findall(r"images[^\r\n|]*\|[^|]*\|\s*\d+/(\d+) \[", result.stderr))
    assert totals == {"3"}, result.stderr[-3000:]
    assert len(re.findall(rf"steps:\s+0%\|[^|]*\|\s*0/{STEPS} \[", result.stderr)) == 3, result.stderr[-3000:]


KILLED_AT_SECOND_WRITE = """
import os, runpy, signal, sys
import refusion.data.image_io as image_io

real, calls = image_io._encode, []

def encode_then_die(tmp, samples, suffix, quality):
    calls.append(1)
    real(tmp, samples, suffix, quality)
    if len(calls) == 2 and os.environ.get("RANK") == "1":
        os.truncate(tmp, os.path.getsize(tmp) // 2)          # half of the file is on disk ...
        os.kill(os.getpid(), signal.SIGKILL)                 # ... when the process dies

image_io._encode = encode_then_die
sys.argv[0] = {script!r}
runpy.run_path({script!r}, run_name="__main__")
"""


@pytest.mark.slow
def test_a_killed_run_leaves_no_partial_image_and_skip_existing_completes_it(photos, sde_run, one_process,
                                                                             tmp_path, capsys):
    wrapper = tmp_path / "killed_restore.py"
    wrapper.write_text(textwrap.dedent(KILLED_AT_SECOND_WRITE).format(script=str(ROOT / "tools/restore.py")))
    out = tmp_path / "out"
    result = launch(str(wrapper), *sde_args(photos, out, sde_run, "--no-progress"))
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert "Signal 9 (SIGKILL)" in text or "exitcode  : -9" in text, text[-3000:]
    # process 1 (img3, img4) died writing img4: img3 is complete, img4 exists only as a hidden temporary
    left = files(out)
    finished = {name: data for name, data in left.items() if not name.startswith(".")}
    assert "img3.png" in finished and "img4.png" not in finished
    assert [name for name in left if name.startswith(".img4.png.") and name.endswith(".partial")]
    for name in finished:                                                # every final name holds a whole image
        assert_same_images(out / name, one_process / name)
    before = {name: (out / name).stat().st_ino for name in finished}

    summary = out / "summary.json"
    code = restore_tool.main(sde_args(photos, out, sde_run, "--no-progress", "--skip-existing",
                                      "--summary", str(summary)))
    assert code == 0
    statuses = {name: entry["status"] for name, entry in entries(summary).items()}
    assert statuses == {name: "skipped-existing" if name in finished else "restored" for name in files(one_process)}
    summary.unlink()
    assert_same_folders(out, one_process)                             # every image, no temporary left
    assert {name: (out / name).stat().st_ino for name in finished} == before    # skipped files untouched
    assert f"{5 - len(finished)} of 5 images restored" in capsys.readouterr().out


def make_stereo_run(root: Path) -> Path:
    torch.manual_seed(0)
    root.mkdir(parents=True)
    (root / "recipe.yml").write_text(yaml.safe_dump({"task": "sde"}))
    StereoNAFNet(width=8, enc_blk_nums=[1], middle_blk_num=1, dec_blk_nums=[1]).save_pretrained(root / "model")
    IRSDEScheduler(sampler="mr_sde").save_pretrained(root / "scheduler")
    return root


def test_skip_existing_takes_a_stereo_pair_only_when_both_views_exist(tmp_path, capsys):
    run, views = make_stereo_run(tmp_path / "stereo"), tmp_path / "views"
    rng = np.random.default_rng(1)
    for i in range(2):
        for side in "LR":
            write_image(views / f"000{i}_{side}.png", rng.random((16, 24, 3)))
    args = ["--model", str(run), "--steps", "2", "--no-progress"]
    assert restore_tool.main([str(views), "-o", str(tmp_path / "full"), *args]) == 0
    full = files(tmp_path / "full")
    out = tmp_path / "out"
    out.mkdir()
    for name in ("0000_L.png", "0000_R.png", "0001_L.png"):          # killed between the views of pair 0001
        (out / name).write_bytes(full[name])
    (out / ".0001_R.png.0123abcd.partial").write_bytes(full["0001_R.png"][:40])
    kept = {name: (out / name).stat().st_ino for name in ("0000_L.png", "0000_R.png")}
    lone_view = (out / "0001_L.png").stat().st_ino
    summary = tmp_path / "reports" / "summary.json"
    code = restore_tool.main([str(views), "-o", str(out), *args, "--skip-existing", "--summary", str(summary)])
    assert code == 0
    assert_same_folders(out, tmp_path / "full")
    assert {name: (out / name).stat().st_ino for name in kept} == kept
    assert (out / "0001_L.png").stat().st_ino != lone_view             # the pair is restored again, both views
    statuses = {name: entry["status"] for name, entry in entries(summary).items()}
    assert statuses == {"0000_L.png": "skipped-existing", "0000_R.png": "skipped-existing",
                        "0001_L.png": "restored", "0001_R.png": "restored"}
    captured = capsys.readouterr()
    assert "2 of 4 images restored" in captured.out and "2 skipped" in captured.out
    assert "removed 1 partial file" in captured.err


def test_summary_lists_every_image_with_its_status_and_the_settings(tmp_path, capsys):
    run = make_run(tmp_path / "nafnet", "regressor")
    photos = tmp_path / "photos"
    rng = np.random.default_rng(2)
    write_image(photos / "a.png", rng.random((12, 20, 3)))
    (photos / "b.png").write_bytes(b"not a PNG at all")
    write_image(photos / "c.tif", rng.random((12, 20, 3)), bit_depth=16)
    summary = tmp_path / "summary.json"
    code = restore_tool.main([str(photos), "-o", str(tmp_path / "out"), "--model", str(run), "--tile", "16",
                              "--overlap", "4", "--seed", "7", "--no-progress", "--summary", str(summary)])
    assert code == 1
    document = json.loads(summary.read_text())
    assert [(Path(e["input"]).name, Path(e["output"]).name, e["status"], e["rank"]) for e in document["images"]] == [
        ("a.png", "a.png", "restored", 0), ("b.png", "b.png", "failed", 0), ("c.tif", "c.tif", "restored", 0)]
    failed = document["images"][1]
    assert "b.png" in failed["error"] and failed["error"].startswith("ImageReadError")
    assert all(isinstance(e["seconds"], float) and e["seconds"] >= 0 for e in document["images"])
    settings = document["settings"]
    assert (settings["model"], settings["tile"], settings["overlap"], settings["seed"]) == (str(run), 16, 4, 7)
    assert settings["model_kind"] == "regressor" and settings["devices"] == ["cpu"]
    assert document["totals"] == {"images": 3, "restored": 2, "failed": 1, "skipped_existing": 0,
                                  "seconds": document["totals"]["seconds"]}
    assert document["processes"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == [
        "nafnet", "out", "photos", "summary.json"]
    assert "2 of 3 images restored" in capsys.readouterr().out


def test_summary_that_is_a_folder_or_an_image_is_refused_before_any_work(tmp_path, capsys):
    run = make_run(tmp_path / "nafnet", "regressor")
    photo = write_image(tmp_path / "photos" / "a.png", np.full((8, 8, 3), 0.5))
    base = [str(photo.parent), "-o", str(tmp_path / "out"), "--model", str(run), "--no-progress", "--summary"]
    assert restore_tool.main(base + [str(tmp_path)]) == 2
    assert f"--summary {str(tmp_path)!r} is a folder" in capsys.readouterr().err
    assert restore_tool.main(base + [str(photo)]) == 2
    assert "is the input image" in capsys.readouterr().err
    assert restore_tool.main(base + [str(tmp_path / "out" / "a.png")]) == 2
    assert "is the output image" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

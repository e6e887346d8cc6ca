"""The quickstart demo end to end on its default task and noise level (sigma 40): a small dataset, a
short training of both tiny models, three SDE settings, the report.

What a user of the demo relies on, asserted here: both models restore better than the input they
were given (PSNR margins well inside what 300 iterations reach: measured NAFNet +6.8 dB, SDE +3.9 dB
on this set; margins 4 dB and 2 dB; at 150 iterations the SDE was only 1 dB above the input, so the
test trains 300), the table's numbers are those of the images it wrote
(recomputed here from the PNG files with the BasicSR formula), LPIPS is reported whenever the LPIPS
weights are installed, and every artefact exists.
"""
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from refusion.data.synthetic import build_dataset
from refusion.demo import demo_params, run_demo

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ITERS = 300
SDE_ROWS = ["quickstart_sde [posterior, 3]", "quickstart_sde [mr_ode, 2]", "quickstart_sde [mr_ode, 1]"]


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images on the 0..255 scale."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255.0 ** 2 / mse)


def read_png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def lpips_installed() -> bool:
    from refusion.evaluation import metrics

    try:
        metrics.lpips(np.zeros((64, 64, 3), np.float32), np.zeros((64, 64, 3), np.float32))
    except metrics.LPIPSUnavailable:
        return False
    return True


@pytest.mark.slow
def test_demo_restores_better_than_its_input_and_reports_what_it_wrote(tmp_path, capsys, one_thread):
    data, runs, out = tmp_path / "data", tmp_path / "runs", tmp_path / "report"
    # a small set with the demo's default task, seed and noise level: the demo re-uses it instead of building its own
    build_dataset(data, "noise", seed=0, size=64, num_train=8, num_val=2, num_test=2, params=demo_params("noise"))
    result = run_demo(task="noise", seed=0, data=data, runs=runs, out=out, iters=ITERS,
                      samplers=("posterior:3", "mr_ode:2", "mr_ode:1"), progress=False)

    printed = capsys.readouterr().out
    assert "dataset: reusing" in printed and "quickstart finished" in printed
    for name in ("quickstart_nafnet", "quickstart_sde"):
        assert (runs / name / "recipe.yml").is_file() and (runs / name / "model").is_dir()

    rows = {row["method"]: row for row in result["rows"]}
    assert list(rows) == ["input (LQ)", *SDE_ROWS, "quickstart_nafnet"]
    assert [rows[m]["nfe"] for m in SDE_ROWS] == [3, 2, 1] and rows["quickstart_nafnet"]["nfe"] == 1

    # the numbers are those of the images: recomputed from the test folders and the written PNGs
    names = sorted(p.stem for p in (data / "test" / "gt").glob("*.png"))
    assert len(names) == 2 and all(row["images"] == 2 for row in rows.values())
    gts = {n: read_png(data / "test" / "gt" / f"{n}.png") for n in names}
    lqs = {n: read_png(data / "test" / "lq" / f"{n}.png") for n in names}
    want_input = np.mean([psnr_uint8(lqs[n], gts[n]) for n in names])
    assert rows["input (LQ)"]["psnr"] == pytest.approx(want_input, abs=1e-6)
    folders = {p.name: p for p in (out / "images").iterdir()}
    assert len(folders) == len(rows) - 1
    for method, row in rows.items():
        if method == "input (LQ)":
            continue
        slug = "".join(c if c.isalnum() or c in "-_" else "_" for c in method).strip("_")
        restored = {n: read_png(folders[slug] / f"{n}.png") for n in names}
        assert row["psnr"] == pytest.approx(np.mean([psnr_uint8(restored[n], gts[n]) for n in names]), abs=1e-3)
        assert math.isfinite(row["ssim"]) and row["seconds_per_image"] >= 0.0

    # both models improve over the input by a margin
    base = rows["input (LQ)"]
    assert rows["quickstart_nafnet"]["psnr"] > base["psnr"] + 4.0, rows
    assert rows["quickstart_nafnet"]["ssim"] > base["ssim"] + 0.05, rows
    for method in SDE_ROWS:
        assert rows[method]["psnr"] > base["psnr"] + 2.0, (method, rows[method]["psnr"], base["psnr"])
        assert rows[method]["ssim"] > base["ssim"] + 0.05, (method, rows[method]["ssim"], base["ssim"])
    with_lpips = lpips_installed()
    if with_lpips:                       # then every row carries LPIPS, and the models lower it
        assert all(isinstance(row["lpips"], float) and 0.0 <= row["lpips"] <= 1.5 for row in rows.values())
        assert rows["quickstart_nafnet"]["lpips"] < base["lpips"] - 0.03
        assert min(rows[m]["lpips"] for m in SDE_ROWS) < base["lpips"]
    else:
        assert all(row["lpips"] is None for row in rows.values())

    # steps_vs_quality needs a sampler at two step counts: mr_ode at 2 and 1; the PSNR-vs-LPIPS plot
    # needs LPIPS, and without it the report leaves it out rather than draw an empty axis
    written = ["md", "csv", "json", "steps_vs_quality", "grid"] + (["psnr_vs_lpips"] if with_lpips else [])
    for key in written:
        path = result["artefacts"][key]
        assert path.is_file() and path.stat().st_size > 0, key
    if not with_lpips:
        assert result["artefacts"].get("psnr_vs_lpips") is None and not (out / "psnr_vs_lpips.png").exists()
    saved = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["psnr"]) for r in saved["rows"]] == [(m, r["psnr"]) for m, r in rows.items()]
    table = (out / "results.md").read_text()
    assert all(method in table for method in rows)
    assert (out / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((out / "images").rglob("*.png"))) == 2 * (len(rows) - 1)

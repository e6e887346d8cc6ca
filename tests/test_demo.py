"""Smoke test of the quickstart demo: a tiny dataset, a few training steps, two SDE settings."""
import json
import math
import os

from refusion.demo import run_demo
from refusion.data.synthetic import build_dataset

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_demo_writes_every_artefact_with_sane_values(tmp_path, capsys, one_thread):
    data, runs, out = tmp_path / "data", tmp_path / "runs", tmp_path / "report"
    # a small set with the demo's task and seed: the demo re-uses it instead of building its own
    build_dataset(data, "shadow", seed=0, size=64, num_train=8, num_val=2, num_test=2)
    result = run_demo(task="shadow", seed=0, data=data, runs=runs, out=out, iters=4,
                      samplers=("posterior:3", "mr_ode:2", "mr_ode:1"), progress=False)

    printed = capsys.readouterr().out
    assert "dataset: reusing" in printed and "quickstart finished" in printed
    for name in ("quickstart_nafnet", "quickstart_sde"):
        assert (runs / name / "recipe.yml").is_file() and (runs / name / "model").is_dir()

    rows = {row["method"]: row for row in result["rows"]}
    assert list(rows) == ["input (LQ)", "quickstart_sde [posterior, 3]", "quickstart_sde [mr_ode, 2]",
                          "quickstart_sde [mr_ode, 1]", "quickstart_nafnet"]
    assert rows["quickstart_sde [posterior, 3]"]["nfe"] == 3
    assert rows["quickstart_sde [mr_ode, 2]"]["nfe"] == 2
    assert rows["quickstart_sde [mr_ode, 1]"]["nfe"] == 1
    assert rows["quickstart_nafnet"]["nfe"] == 1
    for row in rows.values():
        assert row["images"] == 2
        assert 3.0 < row["psnr"] < 60.0 and math.isfinite(row["psnr"])
        assert -1.0 <= row["ssim"] <= 1.0
        assert row["lpips"] is None or 0.0 <= row["lpips"] <= 1.5
        assert row["seconds_per_image"] >= 0.0

    # steps_vs_quality needs a sampler at two step counts: mr_ode at 2 and 1
    for key in ("md", "csv", "json", "psnr_vs_lpips", "steps_vs_quality", "grid"):
        path = result["artefacts"][key]
        assert path.is_file() and path.stat().st_size > 0, key
    assert json.loads((out / "results.json").read_text())  # parseable
    table = (out / "results.md").read_text()
    assert all(method in table for method in rows)
    assert (out / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((out / "images").rglob("*.png"))) == 2 * (len(rows) - 1)

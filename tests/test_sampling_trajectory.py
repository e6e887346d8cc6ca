"""tools/sampling_trajectory.py: x0 estimates along posterior sampling, and the tool end to end."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from refusion.data.image_io import write_image
from refusion.models.conditional_nafnet import ConditionalNAFNet
from refusion.cli import sampling_trajectory as tool
from refusion.schedulers.ir_sde import IRSDEScheduler

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_an_oracle_network_gives_the_ground_truth_at_every_step():
    # the network returns the true noise of x_t given x0: every x0 estimate is x0, and posterior
    # sampling (eta 1) lands on it exactly
    scheduler = IRSDEScheduler(max_sigma=30.0, num_train_timesteps=100, sampler="posterior", eta=1.0)
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(1, 3, 16, 16, generator=g, dtype=torch.float64)
    lq = (gt + 0.2 * torch.randn(gt.shape, generator=g, dtype=torch.float64)).clamp(0, 1)

    def oracle(x_t, mu, t):
        return scheduler.noise_from_x0(x_t, gt, t, mu=mu)

    result = tool.trajectory(oracle, scheduler, lq, gt, steps=10, seed=0)
    assert len(result["t"]) == 10 and result["t"][0] == 100
    assert min(result["x0_hat_psnr"]) > 100                 # measured: ~300 dB (float64 rounding)
    assert tool.psnr_db(result["final"], gt) > 100
    # x_t starts at mu + noise and ends on x0
    assert result["x_t_psnr"][0] < 25 < result["x_t_psnr"][-1]


def test_the_tool_writes_curves_and_sample_statistics(tmp_path):
    torch.manual_seed(0)
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yml").write_text(yaml.safe_dump({"task": "sde"}))
    ConditionalNAFNet(img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1], dec_blk_nums=[1]).save_pretrained(run / "model")
    IRSDEScheduler(num_train_timesteps=20).save_pretrained(run / "scheduler")
    rng = np.random.default_rng(0)
    for split in ("gt", "lq"):
        (tmp_path / "data" / "test" / split).mkdir(parents=True)
    for name in ("a", "b"):
        gt = rng.random((16, 16, 3))
        write_image(tmp_path / "data" / "test" / "gt" / f"{name}.png", gt, bit_depth=8)
        write_image(tmp_path / "data" / "test" / "lq" / f"{name}.png", np.clip(gt + 0.1 * rng.standard_normal(gt.shape), 0, 1), bit_depth=8)
    out = tmp_path / "out"
    assert tool.main(["--run", str(run), "--data", str(tmp_path / "data"), "--out", str(out), "--steps", "20", "5",
                      "--seeds", "2"]) == 0
    report = json.loads((out / "trajectory.json").read_text())
    assert report["images"] == 2 and report["seeds"] == 2 and set(report["steps"]) == {"20", "5"}
    for steps, entry in report["steps"].items():
        assert len(entry["t"]) == len(entry["x0_hat_psnr"]) == len(entry["x_t_psnr"]) == int(steps)
        assert all(math.isfinite(v) for v in entry["x0_hat_psnr"] + entry["x_t_psnr"])
        assert entry["t"][0] == 20 and entry["t"][-1] >= 1
        assert entry["best_x0_hat"]["t"] in entry["t"]
        assert math.isfinite(entry["final_sample_psnr"]) and math.isfinite(entry["mean_of_samples_psnr"])
    assert "| 20 |" in (out / "trajectory.md").read_text()
    with pytest.raises(SystemExit):
        tool.main(["--run", str(run), "--data", str(tmp_path / "data"), "--seeds", "0"])

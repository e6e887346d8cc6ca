"""Training with the DenoisingSDE (scheduler.type: denoising): the official denoising-sde objective,
the run folder, loading it back, restoring, and resuming with the wrong SDE refused."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

import refusion
from refusion.cli.train import main as train_main
from refusion.config import recipe_from_dict
from refusion.schedulers.denoising_sde import DenoisingSDEScheduler
from refusion.training import objectives, train
from test_training import make_pairs, one_thread, tiny_recipe_dict  # noqa: F401 (autouse fixture)

DATA = Path(__file__).parent / "data"
TINY_UNCONDITIONAL = {"name": "UnconditionalNAFNet",
                      "args": {"width": 8, "enc_blk_nums": [1], "middle_blk_num": 1, "dec_blk_nums": [1]}}


def denoising_recipe(data: Path, out: Path, **train_cfg) -> dict:
    recipe = tiny_recipe_dict("sde", data, out, **train_cfg)
    recipe["model"] = TINY_UNCONDITIONAL
    recipe["scheduler"] = {"type": "denoising", "max_sigma": 50, "num_train_timesteps": 20, "schedule": "cosine"}
    return recipe


def test_objective_is_the_official_denoising_loss():
    # official optimize_parameters: noise = net(x_t, t); L1(reverse_sde_step_mean(x_t, score, t),
    # reverse_optimum_step(x_t, GT, t)) with x_t = GT + sigma_bar_t z, written out here from the
    # official formulas (sde_utils.DenoisingSDE) instead of with the scheduler's methods
    sched = DenoisingSDEScheduler(max_sigma=50, num_train_timesteps=20)
    gt = torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    calls = []

    def net(x_t, t):
        calls.append(t.clone())
        return 0.3 * x_t + 0.01 * t.view(-1, 1, 1, 1)

    torch.manual_seed(5)
    loss, _ = objectives.sde_objective(net, {"gt": gt, "lq": gt + 1.0}, sched, SimpleNamespace(loss="l1"))
    torch.manual_seed(5)
    t = sched.sample_timesteps(2)
    z = torch.randn_like(gt)
    assert torch.equal(calls[0], t)
    th, thc, sig, dt = (sched.thetas.double(), sched.thetas_cumsum.double(), sched.sigmas.double(), sched.dt)
    sb = sched.sigma_bars.double()[t].view(-1, 1, 1, 1)
    x_t = gt + sb * z
    score = -(0.3 * x_t + 0.01 * t.view(-1, 1, 1, 1)) / sb
    tv = t.view(-1, 1, 1, 1)
    mean = x_t + 0.5 * sig[tv] ** 2 * (1 + torch.exp(-2 * thc[tv] * dt)) * score * dt
    a, b, c = torch.exp(-th[tv] * dt), torch.exp(-thc[tv] * dt), torch.exp(-thc[tv - 1] * dt)
    optimum = a * (1 - c ** 2) / (1 - b ** 2) * (x_t - gt) + gt
    torch.testing.assert_close(loss.double(), (mean - optimum).abs().mean(), rtol=1e-9, atol=1e-12)


def test_denoising_run_trains_saves_its_scheduler_and_restores(tmp_path):
    data = make_pairs(tmp_path / "pairs")
    run = train(recipe_from_dict(denoising_recipe(data, tmp_path / "run")))
    pipe = refusion.load_pipeline(run)
    assert isinstance(pipe.scheduler, DenoisingSDEScheduler) and pipe.scheduler.config.eps == 0.04
    assert type(pipe.unet).__name__ == "UnconditionalNAFNet"
    noisy = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    out = refusion.sample(noisy, steps=5, model=run, progress=False)
    assert out.shape == noisy.shape and torch.isfinite(out).all()
    again = refusion.sample(noisy, steps=5, model=run, progress=False)
    torch.testing.assert_close(out, again)             # the ODE sampler is deterministic


def test_resuming_a_denoising_run_with_an_ir_sde_recipe_is_refused(tmp_path, capsys):
    data = make_pairs(tmp_path / "pairs")
    recipe = denoising_recipe(data, tmp_path / "run", total_iters=4)
    path = tmp_path / "recipe.yml"
    path.write_text(yaml.safe_dump(recipe))
    assert train_main([str(path), "--stop-at-step", "2"]) == 0
    before = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    recipe["model"] = tiny_recipe_dict("sde", data, tmp_path / "run")["model"]
    recipe["scheduler"] = {"max_sigma": 50, "num_train_timesteps": 20, "schedule": "cosine"}
    path.write_text(yaml.safe_dump(recipe))
    assert train_main([str(path), "--resume"]) != 0
    err = capsys.readouterr().err
    assert "scheduler" in err and "denoising" in err
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == before


@pytest.mark.slow
def test_the_official_formulation_recipe_loads():
    from refusion.config import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes/denoise.yml", check_paths=False)
    assert recipe.model.name == "UnconditionalNAFNet" and recipe.scheduler.type == "denoising"
    assert (recipe.scheduler.max_sigma, recipe.scheduler.num_train_timesteps) == (70, 1000)
    assert np.isclose(recipe.scheduler.build().config.eps, 0.04)

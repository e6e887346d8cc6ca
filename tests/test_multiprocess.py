"""Two real processes on CPU under `accelerate launch --multi_gpu` (see FACTS: accelerate on CPU)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from refusion.benchmarks.ports import free_port
from refusion.training import train
from refusion.training.run_dir import list_checkpoints, verify_checkpoint
from test_training import make_pairs, one_thread, tiny_recipe_dict  # noqa: F401 (autouse fixture)

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 240  # a hang (one process waiting forever for the other) fails here instead of in CI


def launch(script: Path, recipe: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), str(script), str(recipe), *extra]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true")
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # 3 validation images over 2 processes: one process gets a padded duplicate to drop
    return make_pairs(tmp_path_factory.mktemp("pairs"), n_val=3)


def write_recipe(path: Path, data: Path, out: Path, **train_settings) -> Path:
    recipe = tiny_recipe_dict("sde", data, out, **train_settings)
    recipe["data"]["val"] = {"gt": str(data / "val/gt"), "lq": str(data / "val/lq")}
    recipe["validation"]["max_images"] = 3
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.slow
def test_two_process_run_writes_one_checkpoint(data, tmp_path):
    out = tmp_path / "run"
    recipe = write_recipe(tmp_path / "tiny.yml", data, out, total_iters=2, checkpoint_every=2)
    result = launch(ROOT / "tools/train_sde.py", recipe)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in list_checkpoints(out)] == ["step_00000002"]
    meta = verify_checkpoint(out / "checkpoints/step_00000002")
    assert meta["num_processes"] == 2 and meta["samples_seen"] == 2 * 2 * 2
    assert {"rng_0.json", "rng_1.json", "model.safetensors"} <= set(meta["files"])
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and '"images": 3' in lines[0]  # gathered once each, padding dropped
    assert (out / "model/config.json").is_file() and (out / "scheduler/scheduler_config.json").is_file()


@pytest.mark.slow
def test_one_process_failing_ends_the_run_and_resume_works(data, tmp_path):
    script = tmp_path / "faulty_train_sde.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        from refusion.training import objectives
        from refusion.cli.train import main

        real, calls = objectives.OBJECTIVES["sde"], []

        def faulty(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3 and os.environ.get("RANK") == "1":
                raise RuntimeError("injected fault on process 1 at its third step")
            return real(*args, **kwargs)

        objectives.OBJECTIVES["sde"] = faulty
        sys.exit(main(task="sde"))
    """))
    out = tmp_path / "run"
    recipe = write_recipe(tmp_path / "tiny.yml", data, out, total_iters=4, checkpoint_every=2)
    result = launch(script, recipe)
    assert result.returncode != 0
    assert "injected fault on process 1 at its third step" in result.stdout + result.stderr
    assert [p.name for p in list_checkpoints(out)] == ["step_00000002"]
    verify_checkpoint(out / "checkpoints/step_00000002")
    # the run continues from its last checkpoint
    run = train(str(recipe), resume=True)
    assert [p.name for p in list_checkpoints(run)] == ["step_00000002", "step_00000004"]

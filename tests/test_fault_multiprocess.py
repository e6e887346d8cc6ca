"""Faults in a two-process CPU run (`accelerate launch --multi_gpu`, see FACTS: accelerate on CPU).

tests/test_multiprocess.py covers one process raising an exception. Here the harder cases: one
process dies by SIGKILL (no Python exception, no cleanup: the other is left waiting in a
collective) and one process alone sees a NaN loss. Each must end the whole run within the test's
timeout, with the cause shown and the last checkpoint intact; the run then resumes.

The faults are injected by a wrapper script that replaces the task's objective, the same way a
user's broken data or a crashed machine would strike mid-run; the engine needs no hook.
"""
import textwrap
from pathlib import Path

import pytest

from refusion.training import train
from refusion.training.run_dir import list_checkpoints, verify_checkpoint
from test_multiprocess import launch, write_recipe
from test_training import make_pairs, one_thread  # noqa: F401 (autouse fixture)

FAULTY = """
import os, signal, sys
from refusion.training import objectives
from refusion.cli.train import main

real, calls = objectives.OBJECTIVES["sde"], []

def faulty(*args, **kwargs):
    calls.append(1)
    loss, logs = real(*args, **kwargs)
    if len(calls) == 3 and os.environ.get("RANK") == "1":
        {action}
    return loss, logs

objectives.OBJECTIVES["sde"] = faulty
sys.exit(main(task="sde"))
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_pairs(tmp_path_factory.mktemp("pairs"), n_train=4, n_val=0, size=32)


def faulty_script(path: Path, action: str) -> Path:
    path.write_text(textwrap.dedent(FAULTY).replace("{action}", action))
    return path


def recipe_without_validation(path: Path, data: Path, out: Path) -> Path:
    import yaml

    write_recipe(path, data, out, total_iters=4, checkpoint_every=2)
    recipe = yaml.safe_load(path.read_text())
    recipe["data"]["val"] = None
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.slow
def test_one_process_killed_by_sigkill_ends_the_run_without_a_hang(data, tmp_path):
    out = tmp_path / "run"
    recipe = recipe_without_validation(tmp_path / "tiny.yml", data, out)
    script = faulty_script(tmp_path / "killed_train_sde.py", "os.kill(os.getpid(), signal.SIGKILL)")
    result = launch(script, recipe)          # a hang fails with subprocess.TimeoutExpired
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Signal 9 (SIGKILL)" in text or "exitcode  : -9" in text, text[-3000:]
    assert [p.name for p in list_checkpoints(out)] == ["step_00000002"]
    verify_checkpoint(out / "checkpoints/step_00000002")
    run = train(str(recipe), resume=True)    # continues on one process from the intact checkpoint
    assert [p.name for p in list_checkpoints(run)] == ["step_00000002", "step_00000004"]


@pytest.mark.slow
def test_a_nan_loss_on_one_process_stops_both_with_its_files(data, tmp_path):
    out = tmp_path / "run"
    recipe = recipe_without_validation(tmp_path / "tiny.yml", data, out)
    script = faulty_script(tmp_path / "nan_train_sde.py", "loss = loss * float('nan')")
    result = launch(script, recipe)
    text = result.stdout + result.stderr
    assert result.returncode != 0
    # both processes stop at the same step (the check is reduced over processes) and name rank 1's files
    assert text.count("non-finite loss (") >= 1, text[-3000:]
    assert "at step 3; batch files: img" in text
    assert "step_00000002' is intact" in text
    assert [p.name for p in list_checkpoints(out)] == ["step_00000002"]
    verify_checkpoint(out / "checkpoints/step_00000002")

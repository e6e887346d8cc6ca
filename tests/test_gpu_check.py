"""`refusion gpu-check` (tools/gpu_check.py) where there is no GPU: the step list, the refusal, the
DDP comparison it runs (here on the CPU), and the `cuda` tests skipping with their reason."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from refusion.benchmarks.gpu_check import BUDGET_S, STEPS, ddp_matches_one_process
from refusion.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_lists_every_step_within_eight_minutes(tmp_path, capsys):
    assert main(["gpu-check", "--dry-run", "--out", str(tmp_path / "check")]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [step["step"] for step in listed["steps"]] == list(STEPS)
    assert all(step["what"] for step in listed["steps"])
    assert listed["budget_s"] == sum(BUDGET_S.values()) <= 8 * 60
    assert not (tmp_path / "check").exists()   # a dry run runs nothing and writes nothing


def test_dry_run_of_some_steps_through_the_tool(tmp_path):
    proc = subprocess.run([sys.executable, "tools/gpu_check.py", "--dry-run", "--only", "compile", "benchmarks"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert [step["step"] for step in json.loads(proc.stdout)["steps"]] == ["compile", "benchmarks"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the check would run")
def test_without_a_gpu_the_check_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["gpu-check", "--out", str(tmp_path)])
    assert info.value.code == 2
    assert "--device cuda: CUDA is not available" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["gpu-check", "--device", "cpu"])
    assert info.value.code == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the cuda tests run instead of skipping")
def test_cuda_tests_are_marked_and_skip_with_their_reason():
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider",
                           "tests/test_cuda.py"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "passed" not in proc.stdout and " skipped" in proc.stdout
    assert "needs a CUDA GPU" in proc.stdout


@pytest.mark.slow
def test_the_ddp_step_matches_one_process(tmp_path):
    """The comparison the GPU check makes, run on the CPU: two DDP ranks on half batches = one process."""
    result = ddp_matches_one_process("cpu", tmp_path)
    assert result["processes"] == 2 and not result["failed"]
    assert result["max_abs_weight_difference"] < 1e-5

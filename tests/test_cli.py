"""The `refusion` command: the subcommand table, exit statuses, and tools/*.py as wrappers of it."""
from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from refusion.cli import COMMANDS, common, main
from refusion.inference import threads

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, (_, summary) in COMMANDS.items():
        assert f"  {name}" in out and summary in out


def test_no_command_and_unknown_command_are_usage_errors(capsys):
    assert main([]) == 2
    assert main(["restor"]) == 2
    assert "unknown command 'restor'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_has_help_under_its_name(name, capsys):
    with pytest.raises(SystemExit) as info:
        main([name, "--help"])
    assert info.value.code == 0
    assert f"refusion {name}" in capsys.readouterr().out


def test_python_dash_m_refusion_runs_a_command(tmp_path):
    out = tmp_path / "ds"
    proc = subprocess.run([sys.executable, "-m", "refusion", "dataset", "--task", "noise", "--out", str(out),
                           "--num-train", "1", "--num-val", "1", "--num-test", "1", "--size", "32"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["test", "train", "val"]


def test_tools_are_thin_wrappers_of_the_cli():
    modules = {module for module, _ in COMMANDS.values()}
    for tool in sorted((ROOT / "tools").glob("*.py")):
        tree = ast.parse(tool.read_text())
        imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert any(m in modules for m in imported), f"{tool.name} does not call a refusion.cli command"
        # the OpenMP defaults are set before the command's module imports torch
        prepared = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") ==
                    "prepare_process"]
        command = min(n.lineno for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module in modules)
        assert prepared and prepared[0] < command, f"{tool.name} imports its command before prepare_process()"
        assert len(tool.read_text().splitlines()) <= 10, f"{tool.name} holds more than a wrapper"


# ----------------------------------------------------------------------------------------------
# The shared flags (refusion/cli/common.py): the same spelling and meaning on every command

# command -> the shared flags it has (the specification: a flag missing from a command's --help fails)
SHARED_FLAGS = {
    "train": {"--device", "--threads", "--seed"},
    "restore": {"--device", "--threads", "--workers", "--model", "--half", "--tile", "--steps", "--seed",
                "--no-progress"},
    "evaluate": {"--device", "--threads", "--workers", "--seed", "--no-progress"},
    "import": {"--threads"},
    "convert": {"--threads"},
    "export": {"--threads"},
    "benchmark": {"--threads"},
    "dataset": {"--threads", "--seed", "--no-progress"},
    "app": {"--device", "--threads", "--model", "--half", "--tile", "--steps", "--seed"},
    "demo": {"--device", "--threads", "--seed", "--no-progress"},
    "sampling-study": {"--device", "--threads", "--model", "--steps", "--seed", "--no-progress"},
    "sampling-trajectory": {"--device", "--threads", "--model", "--steps"},
    "gpu-check": {"--device", "--threads"},
    "posterior-figure": {"--device", "--threads", "--steps", "--seed"},
    "distill": {"--device", "--threads"},
}
# the least each command needs to parse (paths need not exist: parsing stops before any work)
MINIMAL_ARGS = {
    "train": ["recipe.yml"],
    "restore": ["in.png", "-o", "out", "--model", "run"],
    "evaluate": ["run", "--gt", "gt", "--lq", "lq", "--out", "report"],
    "import": ["out", "--weights", "w.pth"],
    "convert": ["w.pth", "out", "--arch", "NAFNet"],
    "export": ["run", "out.onnx"],
    "benchmark": ["gemm"],
    "dataset": ["--task", "noise", "--out", "ds"],
    "app": ["--model", "run"],
    "demo": [],
    "sampling-study": ["--model", "run", "--data", "data"],
    "sampling-trajectory": ["--model", "run", "--data", "data"],
    "gpu-check": [],
    "posterior-figure": ["--sde", "s", "--regressor", "r", "--gt", "gt", "--lq", "lq", "--out", "f.png"],
    "distill": ["teacher", "--out", "student", "--student-steps", "1"],
}


class _Parsed(Exception):
    def __init__(self, namespace):
        self.namespace = namespace


@pytest.fixture
def stop_after_parsing(monkeypatch):
    """Make every parser raise _Parsed(namespace) once it has parsed: the command does no work."""
    real = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        raise _Parsed(real(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)


def test_the_specification_covers_every_command():
    assert set(SHARED_FLAGS) == set(COMMANDS) == set(MINIMAL_ARGS)


@pytest.mark.parametrize("name", sorted(SHARED_FLAGS))
def test_each_command_help_lists_its_shared_flags(name, capsys):
    with pytest.raises(SystemExit) as info:
        main([name, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    # the option lines of the help ("  --model MODEL, --run MODEL   help..."), not the flags its prose mentions
    options = {flag for line in re.findall(r"^ {2}(-.*?)(?: {2,}|$)", out, re.M)
               for flag in re.findall(r"--[a-z][a-z-]*", line)}
    assert options & {flag for flag, _ in common.SHARED.values()} == SHARED_FLAGS[name]


@pytest.mark.parametrize("name", sorted(n for n, flags in SHARED_FLAGS.items() if "--device" in flags))
def test_device_defaults_to_auto(name, stop_after_parsing):
    with pytest.raises(_Parsed) as parsed:
        main([name, *MINIMAL_ARGS[name]])
    # the GPU check checks a GPU: its default is CUDA, and no GPU is a usage error (tests/test_gpu_check.py)
    assert parsed.value.namespace.device == ("cuda" if name == "gpu-check" else "auto")


@pytest.mark.parametrize("name", sorted(SHARED_FLAGS))
@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_a_bad_threads_value_is_a_usage_error_naming_the_flag(name, value, capsys):
    with pytest.raises(SystemExit) as info:
        main([name, *MINIMAL_ARGS[name], "--threads", value])
    assert info.value.code == 2
    assert "--threads" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(n for n, flags in SHARED_FLAGS.items() if "--device" in flags))
def test_a_misspelt_device_is_a_usage_error(name, capsys):
    with pytest.raises(SystemExit) as info:
        main([name, *MINIMAL_ARGS[name], "--device", "gpu"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--device" in err and "'gpu'" in err and "cuda:N" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: a CUDA request is not an error here")
@pytest.mark.parametrize("name", ["train", "evaluate", "sampling-study", "demo", "gpu-check"])
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_cuda_is_a_usage_error_naming_the_flag(name, device, capsys):
    with pytest.raises(SystemExit) as info:
        main([name, *MINIMAL_ARGS[name], "--device", device])
    assert info.value.code == 2
    assert f"--device {device}: CUDA is not available" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: a CUDA request is not an error here")
def test_restore_refuses_cuda_without_cuda_before_reading_anything(tmp_path, capsys):
    status = main(["restore", str(tmp_path / "missing.png"), "-o", str(tmp_path / "out"), "--model",
                   str(tmp_path / "missing"), "--device", "cuda"])
    assert status == 2
    assert "--device cuda: CUDA is not available" in capsys.readouterr().err


def test_threads_flag_sets_torch_threads_and_is_kept_for_accelerate(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    before = torch.get_num_threads()
    try:
        assert common.set_threads(1) == 1
        assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    finally:
        torch.set_num_threads(before)


def test_default_threads_follow_the_affinity_mask_the_launch_and_the_busy_cpus(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    busy = iter([0.0, 2.4, 9.0])
    monkeypatch.setattr(threads, "busy_cpus", lambda: next(busy))
    assert common.default_threads() == 6
    assert common.default_threads() == 4    # two CPUs kept busy by other processes
    assert common.default_threads() == 1    # all of them: one thread, never none
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")   # four processes of one launch on this machine
    assert common.default_threads() == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert common.default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")   # the caller's own count wins, as it does for torch
    assert common.default_threads() == 3


@pytest.mark.parametrize("args, message", [("{bad", "not valid JSON"), ("[32]", "expected a JSON object"),
                                           ('{"colour": 3}', "unexpected keyword argument 'colour'")])
def test_convert_bad_constructor_arguments_are_usage_errors(tmp_path, capsys, args, message):
    status = main(["convert", str(tmp_path / "w.pth"), str(tmp_path / "out"), "--arch", "NAFNet", "--args", args])
    assert status == 2
    err = capsys.readouterr().err
    assert "--args" in err and message in err
    assert not (tmp_path / "out").exists()


def test_busy_cpus_reads_the_runnable_threads():
    assert 0 <= threads.busy_cpus(samples=3, interval_s=0.001) < 4096


def _without_openmp_wait(environment: dict[str, str]) -> dict[str, str]:
    """This process's environment less the OpenMP wait variables, plus ``environment``."""
    return {k: v for k, v in os.environ.items() if k not in threads.OPENMP_WAIT_VARIABLES} | environment


def _python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter, by default without the OpenMP wait variables in its environment."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env=env if env is not None else _without_openmp_wait({}))


def test_importing_the_cli_leaves_the_environment_alone():
    code = ("import os, sys\nbefore = dict(os.environ)\nimport refusion.cli\nassert 'torch' not in sys.modules\n"
            "print(dict(os.environ) == before)")
    proc = _python(code)
    assert proc.stdout.strip() == "True", proc.stderr


# a command module that reports, when it is imported, the OpenMP wait it finds and whether torch is loaded
PROBE_COMMAND = """
import os, sys
print("GOMP_SPINCOUNT=" + str(os.environ.get("GOMP_SPINCOUNT")), "torch" in sys.modules)
def main(argv):
    return 0
"""


@pytest.mark.parametrize("environment, expected", [
    ({}, "GOMP_SPINCOUNT=10000 False"),
    ({"OMP_WAIT_POLICY": "ACTIVE"}, "GOMP_SPINCOUNT=None False"),      # the caller's choice wins
    ({"GOMP_SPINCOUNT": "5"}, "GOMP_SPINCOUNT=5 False"),
])
def test_a_command_starts_with_the_openmp_wait_set_before_torch_loads(tmp_path, environment, expected):
    """`python -m refusion <command>`: the wait is in the environment when the command's module is imported."""
    (tmp_path / "probe_command.py").write_text(PROBE_COMMAND)
    code = ("import runpy, sys\nimport refusion.cli\nrefusion.cli.COMMANDS['probe'] = ('probe_command', 'probe')\n"
            "sys.argv = ['refusion', 'probe']\nrunpy.run_module('refusion', run_name='__main__', alter_sys=True)")
    proc = _python(code, _without_openmp_wait(environment) | {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])})
    assert proc.returncode == 0 and proc.stdout.strip() == expected, proc.stderr


def test_prepare_process_leaves_the_environment_alone_once_torch_is_loaded():
    # the settings would no longer reach OpenMP, only this process's children
    code = ("import os, torch\nfrom refusion.cli import prepare_process\nprepare_process()\n"
            "print(os.environ.get('GOMP_SPINCOUNT'))")
    proc = _python(code)
    assert proc.stdout.strip() == "None", proc.stderr


def test_tile_zero_is_the_whole_image_everywhere(stop_after_parsing):
    for name in ("restore", "app"):
        with pytest.raises(_Parsed) as parsed:
            main([name, *MINIMAL_ARGS[name], "--tile", "0"])
        assert parsed.value.namespace.tile is None
        with pytest.raises(_Parsed) as parsed:
            main([name, *MINIMAL_ARGS[name], "--tile", "256"])
        assert parsed.value.namespace.tile == 256
        with pytest.raises(SystemExit) as exited:              # a negative tile: a usage error naming the flag
            main([name, *MINIMAL_ARGS[name], "--tile", "-8"])
        assert exited.value.code == 2


def test_auto_device_is_the_cpu_without_cuda_and_names_are_checked():
    if not torch.cuda.is_available():
        assert common.resolve_device("auto") == torch.device("cpu")
    assert common.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(argparse.ArgumentTypeError, match="cuda:N"):
        common.device_name("cuda:x")


def test_help_imports_neither_torch_nor_diffusers():
    """`refusion <command> --help` must answer before the heavy libraries load (docs/performance.md times it)."""
    probe = textwrap.dedent("""
        import json, subprocess, sys
        from refusion.cli import COMMANDS
        heavy = {}
        for name in [None, *COMMANDS]:
            code = ("import sys\\nfrom refusion.cli import main\\ntry:\\n    main(%r)\\nexcept SystemExit:\\n    pass\\n"
                    "print([m for m in ('torch', 'diffusers', 'accelerate', 'gradio') if m in sys.modules])"
                    % ([name, '--help'] if name else ['--help']))
            out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
            heavy[name or ''] = eval(out.strip().splitlines()[-1])
        print(json.dumps(heavy))
    """)
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    heavy = json.loads(proc.stdout.strip().splitlines()[-1])
    assert heavy == {name: [] for name in heavy}


def test_import_refusion_is_light_and_every_public_name_resolves():
    code = ("import sys, refusion\nlight = 'torch' not in sys.modules\n"
            "missing = [n for n in refusion.__all__ if getattr(refusion, n, None) is None]\nprint(light, missing)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.stdout.split() == ["True", "[]"], proc.stderr
    # the names type checkers (and tests/test_layering.py) see are the lazily served ones
    tree = ast.parse((ROOT / "refusion" / "__init__.py").read_text())
    checked = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               and node.module and node.module.startswith("refusion") for alias in node.names}
    import refusion
    assert checked == set(refusion.__all__)

"""The `refusion` command: the subcommand table, exit statuses, and tools/*.py as wrappers of it."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from refusion.cli import COMMANDS, main

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
        assert len(tool.read_text().splitlines()) <= 10, f"{tool.name} holds more than a wrapper"

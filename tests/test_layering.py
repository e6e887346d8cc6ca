"""The package's layers and the import rules between them (docs/architecture.md).

Every `import` in every module is read, including imports inside functions, so a lazy import
cannot hide a forbidden edge.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "refusion"
LAYERS = ("schedulers", "models", "data", "training", "inference", "evaluation", "official", "cli", "benchmarks")
# top-level modules shared by every layer (besides the public API in __init__ and `python -m refusion`)
SHARED = ("config", "errors", "checksums", "demo")
SHARED_PACKAGES = ("config",)   # shared by every layer, but a folder of its own (schema, building, checks)
MAX_TOP_LEVEL_MODULES = 8

# layer -> layers it must never import
FORBIDDEN = {
    "schedulers": {"training", "inference", "evaluation", "official", "cli", "benchmarks", "data"},
    "models": {"training", "inference", "evaluation", "official", "cli", "benchmarks", "data", "schedulers"},
    "data": {"training", "inference", "evaluation", "official", "cli", "benchmarks"},
    "inference": {"training", "cli", "benchmarks"},
    "training": {"cli", "benchmarks"},
    "evaluation": {"cli", "benchmarks"},
    "official": {"training", "evaluation", "cli", "benchmarks"},
    "benchmarks": {"cli"},
    "config": {"training", "inference", "evaluation", "official", "cli", "benchmarks"},
    "errors": set(LAYERS),
    "checksums": set(LAYERS),
    "demo": {"cli", "benchmarks"},
    "__init__": {"cli", "benchmarks", "training"},
}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> str:
    """refusion.inference.pipeline -> inference; refusion.config -> config; refusion -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imported_modules(source: str, module: str, is_package: bool) -> set[str]:
    """Every refusion module named by an import statement anywhere in ``source``."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] in ("refusion", "tools"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] not in ("refusion", "tools"):
                continue
            found.add(target)
            # `from refusion import training` names a layer through the imported name
            found.update(f"{target}.{a.name}" for a in node.names if target == "refusion")
    return found


def violations(modules: dict[str, tuple[str, bool]]) -> list[str]:
    """'importer -> imported (rule)' for every forbidden edge among {module: (source, is_package)}."""
    found = []
    for module, (source, is_package) in sorted(modules.items()):
        own = layer_of(module)
        for target in sorted(imported_modules(source, module, is_package)):
            if target.split(".")[0] == "tools":
                found.append(f"{module} -> {target} (nothing in the package imports tools)")
                continue
            other = layer_of(target)
            if other != own and other in FORBIDDEN.get(own, set()):
                found.append(f"{module} -> {target} ({own} must not import {other})")
    return found


def package_modules() -> dict[str, tuple[str, bool]]:
    return {module_name(p): (p.read_text(), p.name == "__init__.py") for p in PACKAGE.rglob("*.py")}


def test_no_forbidden_import_edge():
    assert violations(package_modules()) == []


@pytest.mark.parametrize("module, source, is_package", [
    ("refusion.models.nafnet", "from refusion.training.engine import train", False),
    ("refusion.data.paired", "def f():\n    from refusion.inference import pipeline\n", False),
    ("refusion.inference.pipeline", "import refusion.training.objectives", False),
    ("refusion.evaluation.metrics", "from refusion.cli import restore", False),
    ("refusion.schedulers", "from ..training import engine", True),
    ("refusion.inference.loading", "from .. import training", False),
    ("refusion.official.detection", "import tools.restore", False),
])
def test_checker_sees_each_kind_of_forbidden_edge(module, source, is_package):
    # the rule test is only worth something if it can fail: absolute, lazy, relative and `from pkg import layer`
    assert len(violations({module: (source, is_package)})) == 1


def test_allowed_edges_pass():
    allowed = {"refusion.training.engine": ("from refusion.evaluation.metrics import MetricSet", False),
               "refusion.inference.pipeline": ("from refusion.models import MODELS\nfrom refusion.data import inputs", False),
               "refusion.cli.restore": ("from refusion.training import engine", False)}
    assert violations(allowed) == []


def test_every_module_lives_in_a_layer_or_is_shared():
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top
    assert set(top) <= set(SHARED) | {"__init__", "__main__"}, top
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert set(folders) == set(LAYERS) | set(SHARED_PACKAGES), folders

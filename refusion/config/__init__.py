"""YAML recipes -> typed dataclasses, with loud validation and ``--set a.b=value`` overrides.

A recipe is one YAML file (see recipes/README.md for every key). ``load_recipe`` reads it with a
safe loader, applies command-line overrides to the raw mapping, then builds the dataclasses below
field by field: unknown keys, wrong types, invalid choices, missing data folders, unknown model
names and model arguments are errors that name the file, the key, the value and what is allowed.

Relative paths (data folders, ``latent.autoencoder``, ``output_dir``) are kept as written and
resolved against the current working directory, like every other path given on a command line:
run the tools from the project root.

The package: ``schema`` (the dataclasses), ``building`` (YAML to dataclasses, overrides), ``checks``
(across fields); this module reads, validates and writes whole recipes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from refusion.config.building import Context, apply_overrides, build, parse_yaml
from refusion.config import checks
from refusion.config.schema import (LOSSES, LR_SCHEDULES, MIXED_PRECISION, OPTIMIZERS, SDE_TYPES,
                                    TASK_MODELS, TASKS, DataConfig, DatasetConfig, LatentConfig, LoggingConfig,
                                    LRScheduleConfig, ModelConfig, OptimizerConfig, Recipe, RecipeError,
                                    SchedulerConfig, TrainConfig, ValidationConfig)

__all__ = ["Recipe", "RecipeError", "load_recipe", "recipe_from_dict", "dump_recipe", "apply_overrides",
           "TASKS", "TASK_MODELS", "LOSSES", "OPTIMIZERS", "LR_SCHEDULES", "SDE_TYPES",
           "MIXED_PRECISION", "ModelConfig", "SchedulerConfig", "LatentConfig", "DatasetConfig", "DataConfig",
           "OptimizerConfig", "LRScheduleConfig", "TrainConfig", "ValidationConfig", "LoggingConfig"]


# ---------------------------------------------------------------------------------------------
# public API

def recipe_from_dict(data: Mapping[str, Any], source: str = "<dict>", overrides: Iterable[str] = (),
                     *, check_paths: bool = True, check_model: bool = True) -> Recipe:
    """Validate a recipe given as a mapping (the parsed YAML) and build the dataclasses.

    ``check_paths=False`` skips the existence of data folders / the autoencoder run, and
    ``check_model=False`` skips the model table lookup and constructor-signature check, for tools
    that only need the schema.
    """
    if data is None:
        raise RecipeError(f"{source}: the recipe is empty")
    if not isinstance(data, Mapping):
        raise RecipeError(f"{source}: a recipe must be a mapping of keys, got "
                          f"{type(data).__name__}")
    raw, applied = apply_overrides(data, overrides, source)
    ctx = Context(source, applied)
    recipe = build(Recipe, raw, "", ctx)
    recipe.source = source
    if recipe.output_dir is None:
        recipe.output_dir = f"runs/{recipe.name}"
    if check_model:
        checks.check_model_name(recipe.model, ctx)
    checks.check_task(recipe, raw, ctx)
    checks.check_cond(recipe, ctx)
    checks.check_stereo(recipe, ctx)
    checks.check_lens(recipe, ctx)
    if check_model:
        checks.check_model_args(recipe.model, ctx)
    if check_paths:
        checks.check_paths(recipe, ctx)
    return recipe


def load_recipe(path: str | os.PathLike, overrides: Iterable[str] = (), *,
                check_paths: bool = True, check_model: bool = True) -> Recipe:
    """Read, override and validate a YAML recipe (see recipe_from_dict for the flags)."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"recipe file not found: {source!r}") from None
    except OSError as exc:
        raise RecipeError(f"cannot read recipe {source!r}: {exc}") from None
    return recipe_from_dict(parse_yaml(text, source), source, overrides,
                            check_paths=check_paths, check_model=check_model)


class _RecipeDumper(yaml.SafeDumper):
    """Sections in block style, lists inline ([1, 1, 1, 28]) as a person writes them."""


_RecipeDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True))


def dump_recipe(recipe: Recipe, path: str | os.PathLike) -> None:
    """Write the resolved recipe (every key, defaults filled) as YAML; load_recipe reads it back."""
    text = yaml.dump(recipe.to_dict(), Dumper=_RecipeDumper, sort_keys=False, default_flow_style=False)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(f"# resolved recipe of run {recipe.name!r}\n{text}", encoding="utf-8")

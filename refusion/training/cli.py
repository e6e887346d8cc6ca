"""The command line shared by tools/train_sde.py, train_regressor.py and train_latent.py.

    python tools/train_sde.py recipes/shadow.yml --set train.total_iters=200 [--resume | --overwrite]
    accelerate launch --multi_gpu --num_processes 2 tools/train_sde.py recipes/shadow.yml

The three tools differ only by the tasks they accept.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

TOOL_FOR_TASK = {"sde": "tools/train_sde.py", "regressor": "tools/train_regressor.py",
                 "latent_autoencoder": "tools/train_latent.py"}


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("recipe", help="YAML recipe (see recipes/README.md)")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override recipe keys, e.g. --set train.total_iters=200 train.batch_size=4")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue the run directory's newest checkpoint at its step")
    mode.add_argument("--overwrite", action="store_true",
                      help="delete an existing run directory and start again")
    parser.add_argument("--stop-at-step", type=int, default=None, metavar="N",
                        help="stop this invocation after step N with a checkpoint (continue with --resume)")
    return parser


def main(task: str, argv: Sequence[str] | None = None) -> int:
    """Parse the command line, check that the recipe's task is ``task`` and train it."""
    from refusion.config import RecipeError, load_recipe
    from refusion.training.engine import main_guard, train

    prog = TOOL_FOR_TASK[task]
    parser = build_parser(prog, f"Train a {task!r} recipe with the refusion training engine.")
    args = parser.parse_args(argv)
    try:
        recipe = load_recipe(args.recipe, args.overrides)
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if recipe.task != task:
        print(f"error: {args.recipe} is a {recipe.task!r} recipe; {prog} trains {task!r} recipes: "
              f"use {TOOL_FOR_TASK[recipe.task]}", file=sys.stderr)
        return 2
    return main_guard(lambda: train(recipe, resume=args.resume, overwrite=args.overwrite,
                                    stop_at_step=args.stop_at_step))

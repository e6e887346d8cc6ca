"""refusion train: train a recipe with the one training engine.

    refusion train recipes/shadow.yml --set train.total_iters=200 [--resume | --overwrite]
    accelerate launch --multi_gpu --num_processes 2 -m refusion train recipes/shadow.yml
    accelerate launch tools/train_sde.py recipes/shadow.yml      # the same, limited to sde recipes

`refusion train` takes any task; tools/train_sde.py, train_regressor.py and train_latent.py are
the same command limited to one task each.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from refusion.cli import common

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
    common.add_shared(parser, "device", "threads", "seed",
                      device=dict(help="auto (default: CUDA when available, else CPU; accelerate launch gives each "
                                       "process its GPU), cpu (also when CUDA is there) or cuda"),
                      seed=dict(default=None, help="seed of the weights, data order, noise and timesteps (default: "
                                                   "the recipe's seed; the same as --set seed=SEED)"))
    return parser


def apply_device(parser: argparse.ArgumentParser, device: str) -> None:
    """--device for training: accelerate places the processes, so only auto, cpu and cuda make sense."""
    if device.startswith("cuda:") or device == "mps":
        parser.error(f"argument --device: {device!r}: training runs where accelerate places each process "
                     f"(auto, cpu or cuda); choose GPUs with CUDA_VISIBLE_DEVICES or accelerate launch --gpu_ids")
    if device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"   # read by accelerate when the Accelerator is built


def main(argv: Sequence[str] | None = None, *, task: str | None = None) -> int:
    """Parse the command line and train the recipe; with ``task``, refuse recipes of other tasks."""
    prog = TOOL_FOR_TASK[task] if task else "refusion train"
    what = f"a {task!r} recipe" if task else "a recipe (any task)"
    parser = build_parser(prog, f"Train {what} with the refusion training engine.")
    args = parser.parse_args(argv)
    common.apply_shared(parser, args)
    apply_device(parser, args.device)
    from refusion.config import RecipeError, load_recipe
    from refusion.training.engine import main_guard, train

    overrides = args.overrides + ([f"seed={args.seed}"] if args.seed is not None else [])
    try:
        recipe = load_recipe(args.recipe, overrides)
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if task is not None and recipe.task != task:
        print(f"error: {args.recipe} is a {recipe.task!r} recipe; {prog} trains {task!r} recipes: "
              f"use {TOOL_FOR_TASK.get(recipe.task, 'refusion train')} or refusion train", file=sys.stderr)
        return 2
    return main_guard(lambda: train(recipe, resume=args.resume, overwrite=args.overwrite,
                                    stop_at_step=args.stop_at_step))

"""Few-step sampling study: every IR-SDE sampler at several step counts on one trained SDE run.

    python tools/sampling_study.py --run runs/quickstart_sde --data data/quickstart --out report/sampling
    python tools/sampling_study.py --recipe recipes/quickstart_sde.yml --data data/quickstart \
        --out report/sampling                      # trains the recipe first unless its run exists
    python tools/sampling_study.py --run runs/study_denoise_sde --raw-weights ...   # non-EMA weights

Each sampler setting (sde, ode, posterior with eta 1 and 0, mr_ode and mr_sde with solver order 1
and 2) is written as a saved pipeline folder (the run's weights plus a scheduler configured for
that setting) and evaluated with `refusion.evaluation.evaluate.evaluate_runs` at every step count, on the
same test pairs with the same seeds. The combined table (markdown, CSV, JSON) carries PSNR / SSIM /
LPIPS, seconds per image, network evaluations, and the difference to the reference setting
(posterior, eta 1, 100 steps); `steps_vs_quality.png` plots the curves.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from refusion.cli import common

# name -> scheduler overrides; the name is also the row label of the table
SETTINGS: dict[str, dict] = {
    "sde": {"sampler": "sde"},
    "ode": {"sampler": "ode"},
    "posterior_eta1": {"sampler": "posterior", "eta": 1.0},
    "posterior_eta0": {"sampler": "posterior", "eta": 0.0},
    "mr_ode_order1": {"sampler": "mr_ode", "solver_order": 1},
    "mr_ode_order2": {"sampler": "mr_ode", "solver_order": 2},
    "mr_sde_order1": {"sampler": "mr_sde", "solver_order": 1},
    "mr_sde_order2": {"sampler": "mr_sde", "solver_order": 2},
}
REFERENCE = ("posterior_eta1", 100)
DEFAULT_STEPS = (100, 50, 20, 10, 5)
# the target of few-step sampling: this close to the reference at 10 network evaluations
PSNR_TOLERANCE_DB, LPIPS_TOLERANCE = 0.1, 0.005


def load_checkpoint_weights(pipe, run: Path) -> Path:
    """Load the raw (non-EMA) weights of the run's newest checkpoint into `pipe.unet`; returns it.

    A run's model/ holds the EMA weights when train.ema_decay > 0; the EMA starts from the
    initial weights, so after a short run (decay**iters not small) it still carries part of them.
    """
    from safetensors.torch import load_file

    checkpoints = sorted((run / "checkpoints").glob("step_*"))
    if not checkpoints:
        raise FileNotFoundError(f"--raw-weights: run {str(run)!r} has no checkpoints/step_* folder")
    pipe.unet.load_state_dict(load_file(str(checkpoints[-1] / "model.safetensors")), strict=True)
    return checkpoints[-1]


def write_setting(run: Path, name: str, out: Path, *, raw_weights: bool = False) -> Path:
    """A saved pipeline folder holding the run's network and a scheduler configured for `name`."""
    from refusion.inference.pipeline import load_pipeline
    from refusion.schedulers.ir_sde import IRSDEScheduler

    if name not in SETTINGS:
        raise ValueError(f"sampler setting {name!r} is unknown; choose from {sorted(SETTINGS)}")
    pipe = load_pipeline(run)
    if raw_weights:
        load_checkpoint_weights(pipe, run)
    pipe.scheduler = IRSDEScheduler.from_config(pipe.scheduler.config, **SETTINGS[name])
    folder = out / name
    pipe.save_pretrained(str(folder))
    return folder


def train_if_needed(recipe_path: Path, data: Path | None) -> Path:
    """The recipe's run directory, trained first when it holds no final weights."""
    from refusion.config import load_recipe
    from refusion.training import train

    overrides = []
    if data is not None:
        overrides = [f"data.train.gt={data / 'train' / 'gt'}", f"data.train.lq={data / 'train' / 'lq'}",
                     f"data.val.gt={data / 'val' / 'gt'}", f"data.val.lq={data / 'val' / 'lq'}"]
    recipe = load_recipe(recipe_path, overrides)
    if recipe.task != "sde":
        raise ValueError(f"{recipe_path}: task {recipe.task!r}; the sampling study needs an sde recipe")
    run = Path(recipe.output_dir)
    if (run / "model").is_dir() and (run / "scheduler").is_dir():
        print(f"re-using the trained run {run}")
        return run
    return Path(train(recipe, overwrite=True))


def add_reference_deltas(rows: list[dict]) -> dict | None:
    """Add psnr_delta / lpips_delta against the reference row; returns that row (None if absent)."""
    ref = next((r for r in rows if (r["run"], r["steps"]) == REFERENCE), None)
    for row in rows:
        row["psnr_delta"] = None if ref is None else row["psnr"] - ref["psnr"]
        lpips_ok = ref is not None and row["lpips"] is not None and ref["lpips"] is not None
        row["lpips_delta"] = row["lpips"] - ref["lpips"] if lpips_ok else None
    return ref


def within_target(row: dict) -> bool:
    """Within the few-step target of the reference (LPIPS part skipped when LPIPS is unavailable)."""
    if row["psnr_delta"] is None or row["psnr_delta"] < -PSNR_TOLERANCE_DB:
        return False
    return row["lpips_delta"] is None or row["lpips_delta"] <= LPIPS_TOLERANCE


def run_study(run: Path, test_gt: Path, test_lq: Path, out: Path, *, settings: Sequence[str] = tuple(SETTINGS),
              steps: Sequence[int] = DEFAULT_STEPS, seed: int = 0, max_images: int | None = None,
              progress: bool = True, raw_weights: bool = False, device: str = "cpu") -> list[dict]:
    """Evaluate every setting at every step count; write the combined tables and plot; return the rows."""
    import torch

    from refusion.evaluation.evaluate import evaluate_runs
    from refusion.evaluation.report import plot_steps_vs_quality, write_tables

    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    input_row = None
    for name in settings:
        folder = write_setting(run, name, out / "pipelines", raw_weights=raw_weights)
        sampler = SETTINGS[name]["sampler"]
        result = evaluate_runs([folder], test_gt, test_lq, out / "per_setting" / name,
                               samplers=[f"{sampler}:{n}" for n in steps], seed=seed, max_images=max_images,
                               grid_images=1, progress=progress, device=device)
        input_row = result["rows"][0]
        rows += result["rows"][1:]
        best = max(result["rows"][1:], key=lambda r: r["psnr"])
        print(f"{name:>15}: best PSNR {best['psnr']:.2f} dB at {best['steps']} steps")
    add_reference_deltas(rows)
    weights = "raw weights of the newest checkpoint" if raw_weights else "model/ weights"
    notes = [f"trained run: {run} ({weights}); test pairs: {test_lq}; seeds {seed}.. (one per image, the same for every setting)",
             f"deltas against {REFERENCE[0]} at {REFERENCE[1]} steps; target at 10 network evaluations: "
             f"PSNR within {PSNR_TOLERANCE_DB} dB and LPIPS within {LPIPS_TOLERANCE}",
             f"torch threads: {torch.get_num_threads()}"]
    table = ([dict(input_row, psnr_delta=None, lpips_delta=None)] if input_row else []) + rows
    write_tables(table, out, notes=notes)
    (out / "study.json").write_text(json.dumps({"rows": table, "notes": notes}, indent=2) + "\n")
    plot_steps_vs_quality(rows, out / "steps_vs_quality.png")
    _print_summary(rows)
    return rows


def _print_summary(rows: list[dict]) -> None:
    print(f"\n{'setting':>15} {'steps':>5} {'PSNR':>7} {'dPSNR':>7} {'SSIM':>7} {'LPIPS':>7} {'dLPIPS':>7} {'s/img':>6}")
    for r in rows:
        lp = "n/a" if r["lpips"] is None else f"{r['lpips']:.4f}"
        dlp = "n/a" if r["lpips_delta"] is None else f"{r['lpips_delta']:+.4f}"
        dps = "n/a" if r["psnr_delta"] is None else f"{r['psnr_delta']:+.2f}"   # no reference setting in the study
        print(f"{r['run']:>15} {r['steps']:>5} {r['psnr']:7.2f} {dps:>7} {r['ssim']:7.4f} "
              f"{lp:>7} {dlp:>7} {r['seconds_per_image']:6.2f}{'  *' if within_target(r) else ''}")
    print("* within the few-step target of the reference")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", "--run", dest="run", type=Path, metavar="MODEL",
                        help="a trained sde run directory (or saved pipeline folder)")
    source.add_argument("--recipe", type=Path, help="an sde recipe; trained first unless its run exists")
    parser.add_argument("--data", type=Path, required=True, help="dataset root with test/gt and test/lq")
    parser.add_argument("--out", type=Path, default=Path("report/sampling"))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--raw-weights", action="store_true",
                        help="use the raw (non-EMA) weights of the run's newest checkpoint instead of model/")
    common.add_shared(parser, "device", "threads", "steps", "seed", "no-progress",
                      steps=dict(nargs="+", default=list(DEFAULT_STEPS),
                                 help=f"sampling step counts (default: {' '.join(map(str, DEFAULT_STEPS))})"),
                      seed=dict(help="noise seed of the first test image; image i uses SEED + i (default 0)"))
    args = parser.parse_args(argv)
    device = common.apply_shared(parser, args)
    run = args.run if args.run is not None else train_if_needed(args.recipe, args.data)
    run_study(run, args.data / "test" / "gt", args.data / "test" / "lq", args.out, settings=args.settings,
              steps=args.steps, seed=args.seed, max_images=args.max_images,
              raw_weights=args.raw_weights, progress=not args.no_progress, device=str(device))
    return 0


if __name__ == "__main__":
    sys.exit(main())

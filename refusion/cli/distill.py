"""refusion distill: a K-step student of an IR-SDE teacher, written as a recipe and trained.

    refusion distill runs/study_sr4_sde --out runs/student_k1 --student-steps 1
    refusion distill models/refusion --out runs/student_k2 --student-steps 2 --gt data/train/gt --lq data/train/lq
    refusion distill runs/shadow --out runs/shadow_k1 --student-steps 1 --set train.total_iters=2000 distill.gt_weight=0.1

The teacher is anything refusion.load_model takes that is an IR-SDE model (a trained run, a saved pipeline, an
imported official model; on pixels, or on latents with its autoencoder, which the student shares). The student
starts from the teacher's weights and learns to land in K network evaluations (``mr_ode``) where the teacher's
deterministic solver lands in N (``--teacher-steps``, default 10) from the same terminal state
(refusion/training/distillation.py). A trained run's data is used
unless --gt/--lq are given (needed for other teachers). The recipe is validated and written into the run
directory as recipe.yml; --set overrides any key, as for `refusion train`. The student is an ordinary SDE
model: `refusion restore --model OUT` runs it at K steps.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from refusion.cli import common
from refusion.cli.common import UsageError
from refusion.cli.train import apply_device

SCHEDULER_KEYS = ("max_sigma", "num_train_timesteps", "schedule", "eps", "prediction_type", "eta", "solver_order")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="refusion distill", description=__doc__.split("\n\n")[0],
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("teacher", type=Path, help="an IR-SDE model: run directory, saved pipeline, imported official folder")
    p.add_argument("--out", required=True, type=Path, help="the student's run directory")
    p.add_argument("--student-steps", required=True, type=common.positive_int, metavar="K",
                   help="network evaluations of the student (1, 2, 4, ...: a divisor of --teacher-steps)")
    p.add_argument("--teacher-steps", type=common.positive_int, default=10, metavar="N",
                   help="steps of the teacher's deterministic solver the student copies (default 10)")
    p.add_argument("--teacher-solver", choices=("mr_ode", "ode"), default="mr_ode",
                   help="the teacher's deterministic solver (default mr_ode; ode: the probability-flow ODE)")
    p.add_argument("--gt", type=Path, default=None, help="training ground truth (default: the teacher run's data)")
    p.add_argument("--lq", type=Path, default=None, help="training degraded images (default: the teacher run's data)")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override recipe keys, e.g. --set train.total_iters=2000 distill.lpips_weight=0.5")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the student run's newest checkpoint")
    mode.add_argument("--overwrite", action="store_true", help="delete an existing student run and start again")
    common.add_shared(p, "device", "threads")
    return p.parse_args(argv)


def _teacher_recipe(teacher) -> dict | None:
    """The recipe.yml of a teacher that is a training run, as written; None for other teachers."""
    import yaml

    recipe = (teacher.source / "recipe.yml") if teacher.source is not None else None
    return yaml.safe_load(recipe.read_text(encoding="utf-8")) if recipe is not None and recipe.is_file() else None


def _teacher_data(args, teacher) -> dict:
    """data: of the recipe: --gt/--lq, else the teacher run's own (train and val)."""
    if (args.gt is None) != (args.lq is None):
        raise UsageError("--gt and --lq go together (the student's training pairs)")
    if args.gt is not None:
        return {"train": {"gt": str(args.gt), "lq": str(args.lq), "gt_size": 128, "use_flip": True}}
    recipe = _teacher_recipe(teacher)
    if recipe is None:
        raise UsageError(f"{args.teacher} is not a training run (no recipe.yml with its data): give the student's "
                         f"training pairs with --gt DIR --lq DIR")
    data = recipe["data"]
    return {key: data[key] for key in ("train", "val") if data.get(key)}


def _teacher_autoencoder(args, teacher) -> dict:
    """latent: of the recipe for a latent teacher: the autoencoder/ folder saved beside its network, else the
    autoencoder its training run names; {} for a pixel-space teacher."""
    if teacher.autoencoder is None:
        return {}
    folder = teacher.source / "autoencoder" if teacher.source is not None else None
    if folder is not None and (folder / "config.json").is_file():
        return {"latent": {"autoencoder": str(folder)}}
    latent = (_teacher_recipe(teacher) or {}).get("latent")
    if not latent:
        raise UsageError(f"{args.teacher} is a latent model whose autoencoder is saved nowhere the student can "
                         f"name: save it as a pipeline (with its autoencoder/ folder) and distil that")
    return {"latent": {"autoencoder": latent["autoencoder"]}}


def _recorded_teacher(args) -> str | None:
    """With --resume, the teacher weights' sha256 the run was started with (the engine refuses other weights)."""
    import yaml

    recipe = args.out / "recipe.yml"
    if not args.resume or not recipe.is_file():
        return None
    return (yaml.safe_load(recipe.read_text(encoding="utf-8")).get("distill") or {}).get("teacher_sha256")


def student_recipe(args, teacher) -> dict[str, Any]:
    """The distill recipe for this teacher (before --set overrides)."""
    from refusion.training.distillation import weights_sha256

    net, config = teacher.network, teacher.scheduler.config
    steps = args.student_steps
    return {
        "task": "distill", "name": args.out.name, "output_dir": str(args.out),
        "model": {"name": type(net).__name__, "args": {k: v for k, v in net.config.items() if not k.startswith("_")}},
        "scheduler": {**{k: config[k] for k in SCHEDULER_KEYS}, "sampler": "mr_ode", "default_inference_steps": steps},
        "distill": {"teacher": str(args.teacher), "teacher_sha256": _recorded_teacher(args) or weights_sha256(net),
                    "student_steps": steps,
                    "teacher_solver": args.teacher_solver, "teacher_steps": args.teacher_steps},
        "data": _teacher_data(args, teacher),
        **_teacher_autoencoder(args, teacher),
        "optimizer": {"name": "adam", "lr": 2.0e-5},
        "train": {"total_iters": 1000, "batch_size": 4, "loss": "l1", "checkpoint_every": 250, "log_every": 25},
        "validation": {"every": 250, "num_inference_steps": steps, "sampler": "mr_ode", "max_images": 4},
        "logging": {"trackers": ["tensorboard"]},
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    common.set_threads(args.threads)
    if args.device == "cpu":
        apply_device(argparse.ArgumentParser(prog="refusion distill"), args.device)
    from refusion.config import RecipeError, recipe_from_dict
    from refusion.training.distillation import check_teacher_matches, load_teacher
    from refusion.training.engine import main_guard, train
    from refusion.training.run_dir import RunDirError, load_autoencoder_run

    try:
        teacher = load_teacher(argparse.Namespace(teacher=str(args.teacher)), "cpu", source="TEACHER")
        if args.student_steps > args.teacher_steps or args.teacher_steps % args.student_steps:
            raise UsageError(f"--student-steps {args.student_steps}: must divide --teacher-steps "
                             f"({args.teacher_steps}) and be at most it, e.g. 1, 2 or 5 for 10")
        recipe = recipe_from_dict(student_recipe(args, teacher), f"refusion distill {args.teacher}", args.overrides)
        autoencoder = load_autoencoder_run(recipe.latent.autoencoder) if recipe.latent is not None else None
        # --resume: the teacher it started with; --set latent.autoencoder: the teacher's
        check_teacher_matches(recipe.distill, recipe.scheduler, teacher, autoencoder)
    except (UsageError, RecipeError, RunDirError, FileNotFoundError, ValueError) as exc:
        print(f"distill: error: {exc}", file=sys.stderr)
        return 2
    return main_guard(lambda: train(recipe, resume=args.resume, overwrite=args.overwrite))


if __name__ == "__main__":
    sys.exit(main())

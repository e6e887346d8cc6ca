"""Build paired GT/LQ datasets offline from photographs bundled with installed packages.

    python tools/make_dataset.py --task shadow --out data/shadow --seed 0
    python tools/make_dataset.py --task all --out data            # data/<task> for every task
    python tools/make_dataset.py --task noise --param sigma=40 --out data/quickstart   # the demo's set

Layout: OUT/{train,val,test}/{gt,lq}/*.png and OUT/manifest.json (seed, parameters, sha256); the bokeh
task also writes OUT/{train,val,test}/meta.txt (source lens, target lens, disparity of each pair).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from refusion.cli import common
from refusion.data.degradations import TASKS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", "--tasks", dest="tasks", required=True,
                        help=f"degradation: one of {', '.join(TASKS)}; a comma-separated list; or 'all'. "
                             "With several tasks each goes to OUT/<task>")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--size", type=int, default=128, help="crop side in pixels (default 128)")
    parser.add_argument("--num-train", type=int, default=60, help="training pairs (default 60)")
    parser.add_argument("--num-val", type=int, default=4, help="validation pairs (default 4)")
    parser.add_argument("--num-test", type=int, default=6, help="test pairs (default 6)")
    parser.add_argument("--crops-per-image", type=int, default=None,
                        help="take this many crops from every photograph instead of the --num-* totals")
    parser.add_argument("--param", dest="params", action="append", default=[], metavar="NAME=VALUE",
                        help="a degradation parameter in place of its default: a number (sigma=25) or a range "
                             "LOW,HIGH drawn per image (sigma=10,50); repeat for several")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
    common.add_shared(parser, "threads", "seed", "no-progress",
                      seed=dict(help="random seed (same seed -> byte-identical dataset; default 0)"))
    args = parser.parse_args(argv)
    common.apply_shared(parser, args)
    tasks = list(TASKS) if args.tasks == "all" else [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        parser.error(f"--task {args.tasks!r}: unknown {unknown}; choose from {', '.join(TASKS)} or 'all'")
    args.tasks = tasks
    try:
        args.params = dict(_parameter(text) for text in args.params)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def _parameter(text: str) -> tuple[str, float | tuple[float, float]]:
    """NAME=VALUE or NAME=LOW,HIGH -> (name, number or (low, high))."""
    name, sep, value = text.partition("=")
    try:
        numbers = tuple(float(v) for v in value.split(","))
    except ValueError:
        numbers = ()
    if not sep or not name.strip() or len(numbers) not in (1, 2):
        raise ValueError(f"--param {text!r}: expected NAME=NUMBER or NAME=LOW,HIGH")
    return name.strip(), numbers[0] if len(numbers) == 1 else numbers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tqdm import tqdm

    from refusion.data.synthetic import build_dataset

    for task in args.tasks:
        out = args.out if len(args.tasks) == 1 else args.out / task
        start = time.perf_counter()
        bar = lambda jobs, task=task: tqdm(jobs, desc=f"{task}", unit="pair", leave=False,  # noqa: E731
                                           disable=args.no_progress)
        manifest = build_dataset(out, task, seed=args.seed, size=args.size, num_train=args.num_train,
                                 num_val=args.num_val, num_test=args.num_test,
                                 crops_per_image=args.crops_per_image, params=args.params,
                                 overwrite=args.overwrite, progress=bar)
        counts = manifest["counts"]
        print(f"{task}: {counts['train']} train / {counts['val']} val / {counts['test']} test pairs of "
              f"{args.size}x{args.size} in '{out}' ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

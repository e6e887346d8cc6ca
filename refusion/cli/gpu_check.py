"""refusion gpu-check: the CUDA paths on one GPU in under 8 minutes, as one JSON table.

    refusion gpu-check --out gpu_check/            # on a machine with a CUDA GPU
    refusion gpu-check --dry-run                   # anywhere: the steps it would run
    python tools/gpu_check.py --only compile benchmarks

Steps (refusion/benchmarks/gpu_check.py): the tests marked `cuda` (tests/test_cuda.py), DDP with two
processes on the one GPU, torch.compile of the noise network, benchmark figures. The table is printed
and written to OUT/report.json (with the tests' junit XML). Exit status 1 when a step fails, 2 when
there is no CUDA device (without --dry-run).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from refusion.benchmarks.gpu_check import STEPS, describe
from refusion.cli import common


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu_check"), help="folder of report.json (default gpu_check)")
    parser.add_argument("--only", nargs="+", choices=list(STEPS), default=None, metavar="STEP",
                        help=f"only these steps: {', '.join(STEPS)} (default: all)")
    parser.add_argument("--dry-run", action="store_true", help="list the steps and exit (no GPU needed)")
    common.add_shared(parser, "device", "threads",
                      device=dict(default="cuda", help="the GPU to check: cuda or cuda:N (default cuda)"))
    args = parser.parse_args(argv)
    if args.dry_run:
        steps = [s for s in describe() if args.only is None or s["step"] in args.only]
        print(json.dumps({"dry_run": True, "device": args.device, "out": str(args.out / "report.json"),
                          "steps": steps, "budget_s": sum(s["budget_s"] for s in steps)}, indent=1))
        return 0
    if not args.device.startswith("cuda"):
        parser.error(f"argument --device: the GPU check needs a CUDA device (cuda or cuda:N), got {args.device!r}")
    device = common.apply_shared(parser, args)
    import torch

    from refusion.benchmarks.gpu_check import run_check

    torch.cuda.set_device(device)
    report = run_check(args.out, args.only)
    print(json.dumps(report, indent=1, default=str))
    print(f"wrote {args.out / 'report.json'}", file=sys.stderr)
    return 1 if any(step["status"] != "ok" for step in report["steps"].values()) else 0

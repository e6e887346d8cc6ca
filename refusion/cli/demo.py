"""refusion demo: the quickstart (dataset from bundled photographs, tiny SDE and NAFNet, evaluation report).

    refusion demo                       # the same as python -m refusion.demo
    refusion demo --task shadow --iters 200 --out report/shadow_demo
    refusion demo --device cpu --threads 2 --no-progress
"""
from __future__ import annotations

from refusion import demo
from refusion.cli import common
from refusion.cli.train import apply_device


def main(argv: list[str] | None = None) -> int:
    parser = demo.build_parser()
    common.add_shared(parser, "device", "threads", "no-progress",
                      device=dict(help="auto (default: CUDA when available, else CPU), cpu or cuda: where the two "
                                       "trainings and the evaluation run"))
    args = parser.parse_args(argv)
    device = common.apply_shared(parser, args)
    apply_device(parser, args.device)
    demo.run_demo(task=args.task, seed=args.seed, data=args.data, runs=args.runs, out=args.out, iters=args.iters,
                  samplers=args.samplers, progress=not args.no_progress, device=str(device))
    return 0

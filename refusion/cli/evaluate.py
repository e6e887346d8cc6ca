"""Evaluate SDE and regressor runs on the same test pairs: tables, plots and an image grid.

Example:
    python tools/evaluate.py runs/quickstart_sde runs/quickstart_nafnet \
        --gt data/quickstart/test/gt --lq data/quickstart/test/lq \
        --samplers posterior:100 posterior:20 mr_ode:10 --out report/quickstart

Each mean comes with a 95% bootstrap interval over the test images, and each row with its paired
difference to a reference row (--reference; by default the first regressor). Across processes, each
restoring its share of the images (the table equals a one-process run's):
    accelerate launch --num_processes 2 -m refusion evaluate RUNS ... --out report/quickstart
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from refusion.cli import common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path,
                        help="models, as `refusion restore --model` takes them: run directories (sde or regressor), "
                             "saved pipelines or regressors, imported official folders, official checkpoint files")
    parser.add_argument("--options", nargs="+", type=Path, default=[], metavar="YAML",
                        help="the official option file of each checkpoint file among the models, in the order the "
                             "checkpoint files are given")
    parser.add_argument("--gt", required=True, type=Path, help="folder of ground-truth test images")
    parser.add_argument("--lq", required=True, type=Path, help="folder of degraded test images (same file stems)")
    parser.add_argument("--out", required=True, type=Path, help="report folder")
    parser.add_argument("--samplers", nargs="+", default=["posterior:100"],
                        help="SDE settings as SAMPLER:STEPS, or SAMPLER:STEPS:meanK for the mean of K posterior "
                             "samples per image (a stochastic sampler), e.g. posterior:100 mr_sde:10:mean4; 'default': "
                             "each model's own sampler at its default steps (a distilled student at its K)")
    parser.add_argument("--self-ensemble", action="store_true",
                        help="each regressor also gets a row restored with its x8 self-ensemble (flips and rotations)")
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--crop-border", type=int, default=0)
    parser.add_argument("--test-y-channel", action="store_true")
    parser.add_argument("--lpips-net", choices=["alex", "vgg"], default="alex")
    parser.add_argument("--lens-meta", type=Path, default=None,
                        help="bokeh runs: the test set's meta.txt (id, src_lens, tgt_lens, disparity per image)")
    reference = parser.add_mutually_exclusive_group()
    reference.add_argument("--reference", default=None, metavar="NAME",
                           help="row every other row is compared with, image by image: a row's label "
                                "('input (LQ)', 'RUN [SAMPLER, STEPS]') or a run name naming one row "
                                "(default: the first regressor, else no comparison)")
    reference.add_argument("--no-reference", action="store_true", help="no paired differences")
    common.add_shared(parser, "device", "threads", "workers", "seed", "no-progress",
                      seed=dict(help="noise seed of the first test image; image i uses SEED + i (default 0)"),
                      device=dict(help=f"{common.DEVICE_FORMS} (default: auto, i.e. CUDA when available, else CPU); "
                                       "under accelerate launch 'auto' and 'cuda' are each process's own GPU"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.device = str(common.apply_shared(parser, args))
    files = [run for run in args.runs if run.is_file()]
    if len(args.options) not in (0, len(files)):
        print(f"evaluate: error: --options: {len(args.options)} option file(s) for {len(files)} checkpoint file(s) "
              f"among the models ({', '.join(map(str, files)) or 'none'}); give one per checkpoint file, in order",
              file=sys.stderr)
        return 2
    from refusion.evaluation.evaluate import evaluate_runs   # after --help: it imports torch
    from refusion.inference.processes import end_processes

    try:
        result = evaluate_runs(args.runs, args.gt, args.lq, args.out, samplers=args.samplers, seed=args.seed,
                               options=dict(zip(files, args.options)),
                               device=args.device, max_images=args.max_images, crop_border=args.crop_border,
                               test_y_channel=args.test_y_channel, lpips_net=args.lpips_net, lens=args.lens_meta,
                               progress=not args.no_progress, self_ensemble=args.self_ensemble, workers=args.workers,
                               reference=False if args.no_reference else args.reference)
    except (FileNotFoundError, ValueError) as exc:   # bad runs, pairs or lens metadata: one line, no traceback
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 2
    # the work is done on every process (the main one has written the report): they meet and the process
    # group ends now rather than at interpreter exit, where tearing it down can abort a finished launch;
    # an exception above skips this, so a failing process exits at once and the launch ends non-zero
    end_processes()
    if result is None:   # a process other than the main one of `accelerate launch`: the main one reports
        return 0
    print((args.out / "results.md").read_text())
    for name, path in result["artefacts"].items():
        print(f"{name:>16}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

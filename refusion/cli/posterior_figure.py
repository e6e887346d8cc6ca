"""A figure of what a diffusion restorer adds over a regressor: per test image, side by side with a
zoomed crop under each, the input, the regressor (and its x8 self-ensemble), one SDE posterior
sample, the mean of K samples, their per-pixel std (the model's uncertainty) and the ground truth.

    refusion posterior-figure --sde runs/study_sr4_sde --regressor runs/study_sr4_nafnet \
        --gt data/study_sr4/test/gt --lq data/study_sr4/test/lq --samples 8 --steps 10 --out sr4_figure.png

Images: ``--images NAME ...`` (file stems of the test pairs) or ``--max-images N`` spread over the
sorted pairs (default 3). The zoomed crop is the quarter of each side with the most ground-truth
detail (largest mean gradient), the same box in every column of a row. The std map is the channel mean
colour-mapped on the fixed scale of ``refusion restore --save-std`` (magma, black 0 to light yellow at
``--std-max``). Sample k of an image uses the seeds drawn from ``--seed`` as refusion.sample_posterior
does, so the single sample shown is sample 0 of the K.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from refusion.cli import common
from refusion.cli.restore_posterior import DEFAULT_STD_MAX

if TYPE_CHECKING:   # numpy loads where it is used: `--help` answers without it
    import numpy as np


def parse_args(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="refusion posterior-figure", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sde", type=Path, required=True, help="an sde run or saved pipeline")
    p.add_argument("--regressor", type=Path, required=True, help="a regressor run or saved model")
    p.add_argument("--gt", type=Path, required=True, help="folder of ground-truth test images")
    p.add_argument("--lq", type=Path, required=True, help="folder of degraded test images (same file stems)")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    p.add_argument("--images", nargs="+", default=None, metavar="NAME", help="file stems of the pairs to show")
    p.add_argument("--max-images", type=common.positive_int, default=3, help="pairs to show when --images is not given")
    p.add_argument("--samples", type=common.positive_int, default=8, metavar="K", help="posterior samples (default 8)")
    p.add_argument("--sampler", default="mr_sde", help="SDE sampler (default mr_sde)")
    p.add_argument("--std-max", type=float, default=DEFAULT_STD_MAX, help="std at the top of the colour scale")
    p.add_argument("--self-ensemble", action="store_true", help="add the regressor's x8 self-ensemble column")
    common.add_shared(p, "device", "threads", "steps", "seed",
                      steps=dict(default=10, help="sampling steps (default 10)"))
    return p, p.parse_args(argv)


def detail_box(gt: np.ndarray) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the quarter-side window with the largest mean gradient of ``gt``."""
    import numpy as np

    h, w = gt.shape[:2]
    bh, bw = max(h // 4, 8), max(w // 4, 8)
    grey = gt.mean(axis=2)
    energy = np.zeros((h, w))
    energy[:, 1:] += np.abs(np.diff(grey, axis=1))
    energy[1:, :] += np.abs(np.diff(grey, axis=0))
    window = np.lib.stride_tricks.sliding_window_view(energy, (bh, bw)).sum(axis=(2, 3))
    top, left = np.unravel_index(int(np.argmax(window)), window.shape)
    return int(top), int(left), bh, bw


def figure_rows(args, device) -> list[tuple[str, list, tuple]]:
    """(title, [(label, HWC image)], zoom box) per chosen test pair."""
    import torch

    from refusion.cli.restore_posterior import std_colormap
    from refusion.data.image_io import read_image
    from refusion.data.paired import find_pairs
    from refusion.evaluation import metrics
    from refusion.inference.model import load_model
    from refusion.inference.posterior import sample_posterior
    from refusion.inference.restoration import restore

    pairs = {name: (gt, lq) for name, gt, lq in find_pairs(args.gt, args.lq)}
    names = args.images or _spread(sorted(pairs), args.max_images)
    unknown = [n for n in names if n not in pairs]
    if unknown:
        raise ValueError(f"--images {' '.join(unknown)}: no such test pair in {args.lq} (names are file stems)")
    pipe = load_model(args.sde, device=device)
    regressor = load_model(args.regressor, device=device)
    rows = []
    for index, name in enumerate(names):
        gt, lq = (read_image(path) for path in pairs[name])
        lq_t = torch.from_numpy(lq).permute(2, 0, 1)[None].to(device)
        post = sample_posterior(lq_t, model=pipe, num_samples=args.samples, steps=args.steps, sampler=args.sampler,
                                generator=torch.Generator(device=device).manual_seed(args.seed + index), progress=False)
        hwc = lambda t: t[0].permute(1, 2, 0).float().cpu().numpy()   # noqa: E731
        columns = [("LQ", lq), (args.regressor.name, hwc(restore(lq_t, model=regressor, progress=False)))]
        if args.self_ensemble:
            columns.append((f"{args.regressor.name} x8", hwc(restore(lq_t, model=regressor, progress=False,
                                                                     self_ensemble=True))))
        columns += [(f"SDE sample ({args.sampler}, {args.steps})", hwc(post.samples[0])),
                    (f"SDE mean of {args.samples}", hwc(post.mean))]
        labelled = [(f"{label}\n{metrics.psnr(img, gt):.2f} dB", img) for label, img in columns]
        labelled += [(f"std (0..{args.std_max:g})", std_colormap(hwc(post.std), args.std_max)), ("GT", gt)]
        rows.append((name, labelled, detail_box(gt)))
    return rows


def _spread(names: list[str], count: int) -> list[str]:
    if count >= len(names):
        return names
    return [names[round(i * (len(names) - 1) / max(count - 1, 1))] for i in range(count)]


def main(argv: list[str] | None = None) -> int:
    parser, args = parse_args(argv)
    device = common.apply_shared(parser, args)
    if not args.std_max > 0:
        parser.error(f"--std-max must be > 0, got {args.std_max}")
    from refusion.evaluation.report import save_image_grid

    try:
        rows = figure_rows(args, device)
    except (FileNotFoundError, ValueError) as exc:
        print(f"posterior-figure: error: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_image_grid([(title, columns) for title, columns, _ in rows], args.out,
                    zoom_boxes=[box for _, _, box in rows])
    print(f"posterior-figure: {len(rows)} image(s) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

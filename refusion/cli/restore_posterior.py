"""`refusion restore --samples K`: the posterior mean as the output, with the uncertainty map and the samples.

    refusion restore photos/ -o out/ --model runs/shadow --sampler mr_sde --steps 20 --samples 8 --save-std

With --samples K the K posterior samples of each image (refusion.sample_posterior, seeded by --seed) are
averaged and the mean is written under the output's usual name. Next to it:

- --save-std: ``<stem>_std.png``, the per-pixel standard deviation over the K samples (ddof 0) averaged
  over the colour channels, colour-mapped with matplotlib's "magma" map on a fixed scale: 0 is black,
  --std-max (default 0.1, in [0, 1] intensity units) and above is the map's top (light yellow); the
  same value gives the same colour in every image. ``<stem>_std.tiff`` holds the raw per-channel std
  as float32 (H, W, C) for any other scale.
- --save-samples: ``<stem>_sample<k><ext>`` for k = 0 .. K-1 (zero-padded to the digits of K-1), in the
  output's format and bit depth.

The extra files are written before the mean, each atomically, so with --skip-existing an image whose
mean exists has all of them. Only SDE models have a posterior: for a regressor these flags are usage
errors, as is K > 1 where every sample would be the same image (a DenoisingSDE model with its ode, or
posterior with --eta 0; the IR-SDE's ode and mr_ode sample through their random start x_T).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # numpy and torch load where they are used: `refusion restore --help` stays fast
    import numpy as np
    import torch

STD_COLORMAP = "magma"
DEFAULT_STD_MAX = 0.1
FLAGS = ("--samples", "--save-std", "--save-samples", "--std-max", "--chunk-size")


def add_posterior_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("posterior samples (sde models)")
    group.add_argument("--samples", type=int, default=None, metavar="K",
                       help="draw K posterior samples per image and write their mean as the output")
    group.add_argument("--save-std", action="store_true",
                       help="also write <stem>_std.png (colour-mapped std over the samples) and <stem>_std.tiff "
                            "(float32 std per channel)")
    group.add_argument("--save-samples", action="store_true", help="also write every sample as <stem>_sample<k>")
    group.add_argument("--std-max", type=float, default=None, metavar="V",
                       help=f"std at the top of the <stem>_std.png colour scale (default {DEFAULT_STD_MAX}; 0 is "
                            f"the bottom; [0, 1] intensity units)")
    group.add_argument("--chunk-size", type=int, default=None, metavar="N",
                       help="samples per network batch (default: automatic from the image size; smaller needs "
                            "less memory, the result is the same)")


def _given(args) -> list[str]:
    values = {"--samples": args.samples, "--save-std": args.save_std or None,
              "--save-samples": args.save_samples or None, "--std-max": args.std_max, "--chunk-size": args.chunk_size}
    return [flag for flag in FLAGS if values[flag] is not None]


def extra_paths(target: Path, args) -> list[Path]:
    """The files --save-std / --save-samples add next to the output ``target``."""
    stem, paths = target.name[:-len(target.suffix)] if target.suffix else target.name, []
    if args.save_std:
        paths += [target.with_name(f"{stem}_std.png"), target.with_name(f"{stem}_std.tiff")]
    if args.save_samples:
        digits = len(str(args.samples - 1))
        paths += [target.with_name(f"{stem}_sample{k:0{digits}d}{target.suffix}") for k in range(args.samples)]
    return paths


def check_posterior_flags(args, kind: str, outputs: list[Path], usage_error: type[Exception]) -> None:
    """Every problem with the posterior flags, as ``usage_error`` naming the flag, before any image (whether
    the sampler draws different samples is checked with the other settings, refusion.inference.restorer)."""
    given = _given(args)
    if not given:
        return
    if kind != "sde":
        raise usage_error(f"{', '.join(given)}: posterior samples need an SDE model; --model {str(args.model)!r} "
                          f"is a regressor, which restores deterministically (one result, no posterior)")
    if args.samples is None:
        raise usage_error(f"{', '.join(given)} need --samples K (the number of posterior samples per image)")
    if args.samples < 1:
        raise usage_error(f"--samples must be >= 1, got {args.samples}")
    if args.save_std and args.samples < 2:
        raise usage_error(f"--save-std needs --samples >= 2: the std of {args.samples} sample is zero everywhere")
    if args.std_max is not None and not args.std_max > 0:
        raise usage_error(f"--std-max must be > 0 (the std at the top of the colour scale), got {args.std_max}")
    if args.chunk_size is not None and args.chunk_size < 1:
        raise usage_error(f"--chunk-size must be >= 1 (samples per network batch), got {args.chunk_size}")
    names = {os.path.normcase(p.name): p for p in outputs}
    for target in outputs:
        for extra in extra_paths(target, args):
            if os.path.normcase(extra.name) in names:
                raise usage_error(f"{'--save-std' if '_std.' in extra.name else '--save-samples'}: {str(extra)!r}, "
                                  f"written for {target.name!r}, is also the output of the input "
                                  f"{names[os.path.normcase(extra.name)].name!r}; rename that input or drop the flag")


def std_colormap(std: np.ndarray, std_max: float) -> np.ndarray:
    """(H, W, 3) float RGB of the (H, W, C) std: mean over channels, scaled by ``std_max``, colour-mapped."""
    import numpy as np
    from matplotlib import colormaps

    level = np.clip(std.mean(axis=2) / std_max, 0.0, 1.0)
    return colormaps[STD_COLORMAP](level)[..., :3]


def _write_tiff(path: Path, array: np.ndarray) -> None:
    import numpy as np
    import tifffile

    from refusion.data.image_io import atomic_output

    with atomic_output(path) as tmp:
        tifffile.imwrite(tmp, np.ascontiguousarray(array, dtype=np.float32),
                         photometric="rgb" if array.shape[2] == 3 else "minisblack")


def _hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).cpu().numpy()


def write_posterior_files(result, args, sources, targets) -> None:
    """The --save-std / --save-samples files of every view of one restored job (``result``: a
    refusion.inference.restorer.Restoration with its samples; both views of a stereo pair on channels)."""
    from refusion.data.image_io import image_bit_depth, write_image

    views = len(targets)
    std_max = args.std_max if args.std_max is not None else DEFAULT_STD_MAX
    for v, (src, dst) in enumerate(zip(sources, targets)):
        def view(t: torch.Tensor) -> np.ndarray:      # (C, H, W) of both views -> this view's HWC
            return _hwc(t.chunk(views, dim=0)[v])

        extras = iter(extra_paths(dst, args))
        if args.save_std:
            std = view(result.std[0])
            write_image(next(extras), std_colormap(std, std_max), bit_depth=8)
            _write_tiff(next(extras), std)
        if args.save_samples:
            bit_depth = image_bit_depth(src) if dst.suffix.lower() in (".png", ".tif", ".tiff") else 8
            for k in range(result.samples.shape[0]):
                write_image(next(extras), view(result.samples[k, 0]), bit_depth=bit_depth)

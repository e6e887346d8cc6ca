"""Convert an official checkpoint (NAFNet/Baseline/HINet .pth, IR-SDE .pth) to a save_pretrained directory.

    python tools/convert_checkpoint.py NAFNet-GoPro-width32.pth out/nafnet_w32 --arch NAFNet \\
        --args '{"width": 32, "enc_blk_nums": [1,1,1,28], "middle_blk_num": 1, "dec_blk_nums": [1,1,1,1]}'

The output directory holds config.json and diffusion_pytorch_model.safetensors and loads with
``refusion.models.<Arch>.from_pretrained(OUT_DIR)``. Any key or shape mismatch is an error that
lists every problem; nothing is written then.
"""
from __future__ import annotations

import argparse
import json
import sys

from refusion.cli import common


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="official checkpoint file (.pth / .pt)")
    parser.add_argument("out_dir", help="directory to write (save_pretrained layout)")
    parser.add_argument("--arch", required=True, help="network class, a name of refusion.models.MODELS (e.g. NAFNet)")
    parser.add_argument("--args", default="{}", help="constructor arguments as a JSON object")
    parser.add_argument("--param-key", default=None, help="wrapper key to read, e.g. params_ema (default: auto)")
    common.add_shared(parser, "threads")
    args = parser.parse_args(argv)
    common.apply_shared(parser, args)
    from refusion.models import MODELS

    if args.arch not in MODELS:
        parser.error(f"argument --arch: unknown network {args.arch!r}; choose from {', '.join(sorted(MODELS))}")
    return args


def constructor_arguments(text: str) -> dict:
    """--args as a dict; ValueError saying what is wrong with it."""
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err})") from None
    if not isinstance(kwargs, dict):
        raise ValueError("expected a JSON object of constructor arguments, e.g. '{\"width\": 32}'")
    return kwargs


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    from refusion.models import MODELS
    from refusion.official.checkpoints import OfficialCheckpointError, load_official

    try:
        model = MODELS[opts.arch](**constructor_arguments(opts.args))
    except (ValueError, TypeError) as err:   # a usage error (exit status 2), like argparse's own
        print(f"convert: error: --args {opts.args!r}: {err}", file=sys.stderr)
        return 2
    try:
        load_official(model, opts.checkpoint, param_key=opts.param_key)
    except OfficialCheckpointError as err:
        print(err, file=sys.stderr)
        return 1
    model.save_pretrained(opts.out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{opts.arch} ({n_params:,} parameters) from {opts.checkpoint} -> {opts.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Export a trained network to ONNX (dynamic batch, height and width), checked by ONNX Runtime.

    python tools/export_onnx.py RUN_OR_MODEL_DIR OUT.onnx [--weights model|best] [--no-check] [--overwrite]

RUN_OR_MODEL_DIR is a training run (its model/ or best/ weights: the noise network of an sde run,
the regressor of a regressor run, the autoencoder of a latent_autoencoder run) or a folder written
by save_pretrained. Needs ``pip install "refusion[onnx]"``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from refusion.cli import common


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="training run directory or save_pretrained folder")
    parser.add_argument("output", type=Path, help="ONNX file to write")
    parser.add_argument("--weights", default="model", choices=("model", "best"),
                        help="which weights of a run: final (model) or best validation PSNR (best)")
    parser.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime comparison")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    common.add_shared(parser, "threads")
    args = parser.parse_args(argv)
    common.apply_shared(parser, args)
    return args


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    from refusion.inference.export import export_onnx
    from refusion.inference.loading import load_network, weights_dir

    folder = opts.model if (opts.model / "config.json").is_file() else weights_dir(opts.model, opts.weights)
    if opts.output.exists() and not opts.overwrite:
        print(f"error: {opts.output} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    if not opts.output.parent.is_dir():
        print(f"error: the output folder {opts.output.parent} does not exist", file=sys.stderr)
        return 2
    try:
        net = load_network(folder)
    except (FileNotFoundError, ValueError) as exc:  # includes CorruptWeightsError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        result = export_onnx(net, opts.output, check=not opts.no_check)
    except ValueError as exc:         # a network the exporter cannot express (StereoNAFNet)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ImportError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    checked = ("not checked" if result["max_abs_error"] is None
               else f"ONNX Runtime vs PyTorch max abs difference {result['max_abs_error']:.2e}")
    print(f"{type(net).__name__} from {folder} -> {opts.output} (inputs {', '.join(result['inputs'])}; {checked})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Export a trained network: to ONNX (checked by ONNX Runtime) or to its official checkpoint format.

    refusion export runs/nafnet nafnet.onnx                           # ONNX: the format from the suffix
    refusion export runs/nafnet -o NAFNet-width32.pth                 # official: {'params': state dict}
    refusion export runs/shadow --format official -o refusion.pth     # IR-SDE noise network: bare state dict
    refusion export runs/dehaze/autoencoder -o latent_L.pth           # a latent run's autoencoder (network_L)
    refusion export runs/nafnet -o nafnet.onnx --weights best --no-check --overwrite

MODEL is a training run (its model/ or best/ weights: the noise network of an sde run, the regressor
of a regressor run, the autoencoder of a latent_autoencoder run), a folder written by save_pretrained,
or a saved pipeline (its unet/). The format is --format, else the suffix of OUT: .onnx is onnx,
.pth / .pt official; another suffix needs --format, and a suffix of the other format is refused.

official: the layout the official code saves and loads ({'params': ...} for NAFNet, Baseline and
HINet; the bare state dict for the IR-SDE networks and the latent UNet), float32 tensors that load
with torch.load(weights_only=True). The command prints the option-file settings that build the same
network in the official code (with the run's sde: section) and the official test command. Networks
no official class builds (e.g. ConditionalNAFNet with cond_channels) are refused. NAFFT-Net has no
official code: it gets the BasicSR layout, which `refusion import` reads.

onnx: dynamic batch, height and width, compared with PyTorch by ONNX Runtime unless --no-check;
needs pip install "refusion[onnx]". See docs/interop.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from refusion.cli import common

FORMATS = ("onnx", "official")
SUFFIXES = {".onnx": "onnx", ".pth": "official", ".pt": "official"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="training run directory, save_pretrained folder or saved pipeline")
    parser.add_argument("output", type=Path, nargs="?", help="file to write (or -o)")
    parser.add_argument("-o", "--output", dest="output_option", type=Path, metavar="OUT", help="file to write")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="onnx or official (default: from the suffix of OUT: .onnx, .pth / .pt)")
    parser.add_argument("--weights", default="model", choices=("model", "best"),
                        help="which weights of a run: final (model) or best validation PSNR (best)")
    parser.add_argument("--no-check", action="store_true",
                        help="skip the check (onnx: ONNX Runtime vs PyTorch; official: reading the file back)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    common.add_shared(parser, "threads")
    # intermixed: OUT may follow options (`MODEL --format onnx OUT`), which parse_args leaves unrecognised
    args = parser.parse_intermixed_args(argv)
    common.apply_shared(parser, args)
    if args.output and args.output_option and args.output != args.output_option:
        parser.error(f"two output files: {args.output} and -o {args.output_option}; give one")
    args.output = args.output or args.output_option
    if args.output is None:
        parser.error("no output file: give OUT after MODEL or -o OUT")
    return args


def output_format(output: Path, chosen: str | None) -> str:
    """The format to write: ``chosen``, else the one the suffix names; ValueError when unclear or contradictory."""
    implied = SUFFIXES.get(output.suffix.lower())
    if chosen is None and implied is None:
        raise ValueError(f"cannot tell the format of {output} from its suffix {output.suffix or '(none)'!r}: "
                         f"pass --format onnx or --format official (or name the file .onnx / .pth)")
    if chosen is not None and implied is not None and chosen != implied:
        raise ValueError(f"--format {chosen} does not fit {output}: its suffix {output.suffix} names the {implied} "
                         f"format; rename the output or change --format")
    return chosen or implied


def folders(model: Path, weights: str) -> tuple[Path, Path | None]:
    """The network folder to export and the scheduler folder beside it (None when there is none)."""
    from refusion.inference.loading import weights_dir

    if (model / "config.json").is_file():
        return model, None
    if (model / "model_index.json").is_file():            # a saved pipeline
        return model / "unet", model / "scheduler"
    return weights_dir(model, weights), model / "scheduler"


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    from refusion.inference.loading import load_network

    try:
        fmt = output_format(opts.output, opts.format)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    folder, scheduler = folders(opts.model, opts.weights)
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
    if fmt == "official":
        return export_official_format(opts, net, folder, scheduler)
    return export_onnx_format(opts, net, folder)


def export_onnx_format(opts, net, folder: Path) -> int:
    from refusion.inference.export import export_onnx

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


def export_official_format(opts, net, folder: Path, scheduler: Path | None) -> int:
    from refusion.inference.loading import default_tlc
    from refusion.official.export import ExportRefusal, export_official, option_sections, sde_options, test_command

    try:
        done = export_official(net, opts.output, overwrite=opts.overwrite, tlc=default_tlc(folder))
    except ExportRefusal as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        checked = "not checked" if opts.no_check else read_back(net, done.path)
    except (RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    layout = "{'params': state dict}" if done.form.wrapper else "bare state dict"
    print(f"{type(net).__name__} from {folder} -> {done.path} ({layout}, {len(done.keys)} tensors, "
          f"{done.num_parameters:,} parameters; {checked})")
    sde, notes = None, list(done.form.notes)
    config = scheduler / "scheduler_config.json" if scheduler is not None else None
    if done.form.layout == "ir-sde" and config is not None and config.is_file():
        sde, sde_notes = sde_options(json.loads(config.read_text(encoding="utf-8")))
        notes += sde_notes
    sections = option_sections(done.form, str(done.path), sde=sde)
    if sections:
        print(f"official code: {done.form.repository}, {done.form.official_type}"
              + (f" (tasks: {', '.join(done.form.tasks)})" if done.form.tasks else ""))
        print("set in its test option file:\n" + _yaml(sections))
        print(f"then: {test_command(done.form)}")
    autoencoder = opts.model / "autoencoder"
    if (autoencoder / "config.json").is_file() and folder != autoencoder:
        notes.append(f"the latent autoencoder is a second file: refusion export {autoencoder} -o latent_L.pth "
                     f"(network_L, path.pretrain_model_L)")
    for note in notes:
        print(f"note: {note}")
    return 0


def read_back(net, path: Path) -> str:
    """Read the file as a consumer would (weights only) and compare every tensor with the network's."""
    import torch

    from refusion.official.checkpoints import extract_state_dict, read_official

    saved = extract_state_dict(read_official(path), source=str(path))
    own = net.state_dict()
    if set(saved) != set(own) or any(not torch.equal(saved[k], own[k].to("cpu", saved[k].dtype)) for k in own):
        raise RuntimeError(f"{path} does not read back as the network's weights")
    return "read back with torch.load(weights_only=True): every tensor equal"


def _yaml(sections: dict) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    # lists inline ([1, 1, 1, 28]) as the official option files write them
    Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))
    text = yaml.dump(sections, Dumper=Dumper, sort_keys=False, default_flow_style=False)
    return "\n".join("    " + line for line in text.splitlines())


if __name__ == "__main__":
    sys.exit(main())

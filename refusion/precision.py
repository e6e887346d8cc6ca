"""Half-precision network calls for inference, and the NaN/Inf checks of the network outputs.

``half=True`` in the pipeline runs each network with its weights in bfloat16 (CPU) / float16
(CUDA) and in channels_last layout, and feeds it inputs of that dtype and layout. Measured on a
Zen 4 CPU (docs/performance.md): this is 2.35x (NAFNet w32) and 3.8x (the Refusion noise network
w64) faster than float32, where ``torch.autocast`` gives only 1.4x / 1.7x, because autocast
re-casts every weight on every call (its weight cache is off in inference mode) and the
NAFNet LayerNorm's NHWC view is free only on channels_last tensors.

:class:`HalfPrecisionNetwork` casts the weights ONCE (per pipeline call) and runs the caller's
own module with them through ``torch.func.functional_call``: the caller's parameters and buffers
are never changed (dtype, layout and values are the same after the call), and hooks, wrappers and
any state kept by the module's ``forward`` are the caller's, not a copy's. A network that is a
plain callable (not an ``nn.Module``) has no weights to cast and runs under autocast instead.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import nn
from torch.func import functional_call

__all__ = ["half_dtype", "half_precision", "HalfPrecisionNetwork", "as_network_input", "to_float32",
           "check_finite", "nonfinite_hint"]


def half_dtype(device: torch.device | str) -> torch.dtype:
    """float16 on CUDA (tensor cores), bfloat16 elsewhere (its float32 exponent range: no overflow)."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.bfloat16


def half_precision(device: torch.device, enabled: bool):
    """Autocast at :func:`half_dtype` when ``enabled`` (for callables without weights of their own)."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=half_dtype(device))


def _layout(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous(memory_format=torch.channels_last) if tensor.dim() == 4 else tensor


def as_network_input(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A floating tensor cast to ``dtype`` (4-D ones in channels_last, in the same single copy);
    integer tensors (timesteps) unchanged."""
    if not tensor.is_floating_point():
        return tensor
    if tensor.dim() == 4:
        return tensor.to(dtype=dtype, memory_format=torch.channels_last)
    return tensor.to(dtype)


def to_float32(tensor: torch.Tensor) -> torch.Tensor:
    """float32 in the standard (contiguous) layout: the SDE state and the outputs stay NCHW float32."""
    return tensor.to(dtype=torch.float32, memory_format=torch.contiguous_format)


def _cast_args(value: Any, dtype: torch.dtype) -> Any:
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


class HalfPrecisionNetwork:
    """``net(*inputs)`` at half precision with the weights cast once, the caller's module unchanged.

    ``HalfPrecisionNetwork(module, device)`` casts the floating parameters and buffers of
    ``module`` to :func:`half_dtype` (4-D ones channels_last). Each call casts the floating tensor
    arguments the same way (integer ones, e.g. timesteps, pass unchanged) and returns the raw
    network output in half precision (callers convert with :func:`to_float32`). ``call(method,
    ...)`` runs another method of the module (``encode``, ``decode_from_lq``, ...) the same way.
    ``module`` may also be a plain callable: it then runs under autocast on the given device.
    """

    def __init__(self, module: Callable[..., Any], device: torch.device | str):
        self.device = torch.device(device)
        self.dtype = half_dtype(self.device)
        self.module = module
        self.weights: dict[str, torch.Tensor] | None = None
        if isinstance(module, nn.Module):
            self.runner = _MethodCall(module)
            with torch.no_grad():
                # "module." addresses the module inside the _MethodCall wrapper; a tensor shared by
                # two names is listed once and functional_call ties the other name to it
                self.weights = {f"module.{name}": _layout(t.detach().to(self.dtype)) if t.is_floating_point() else t
                                for name, t in _named_tensors(module)}

    def __call__(self, *args, **kwargs):
        return self.call("forward", *args, **kwargs)

    def call(self, method: str, *args, **kwargs):
        """``module.<method>(*args, **kwargs)`` with half-precision weights and inputs."""
        if self.weights is None:
            fn = self.module if method == "forward" else getattr(self.module, method)
            with half_precision(self.device, True):
                return fn(*args, **kwargs)
        args = _cast_args(args, self.dtype)
        kwargs = {k: _cast_args(v, self.dtype) for k, v in kwargs.items()}
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

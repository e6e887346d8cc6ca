"""How a noise network is called, one small wrapper per kind of conditioning.

The sampling loop asks ``call(x_t, mu, t, cond)`` for the noise prediction and never branches on the
network; which arguments the network takes is decided here, once per run, from what the network
declares (refusion.models.capabilities: "degraded", "none", "lens", "stereo"), as NVlabs/edm's
preconditioning wrapper owns how its backbone is called.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from refusion.data.lens import lens_arguments, lens_batch
from refusion.models.capabilities import Capabilities

__all__ = ["noise_call", "DegradedCall", "UnconditionalCall", "LensCall"]


@dataclass(frozen=True)
class DegradedCall:
    """``net(x_t, mu, t)`` (+ ``cond=`` maps when given): the IR-SDE noise networks, stereo pairs included."""

    net: Callable[..., torch.Tensor]

    def __call__(self, x_t, mu, t, cond=None):
        return self.net(x_t, mu, t) if cond is None else self.net(x_t, mu, t, cond=cond)


@dataclass(frozen=True)
class UnconditionalCall:
    """``net(x_t, t)``: the DenoisingSDE's networks see the state only."""

    net: Callable[..., torch.Tensor]

    def __call__(self, x_t, mu, t, cond=None):
        return self.net(x_t, t)


@dataclass(frozen=True)
class LensCall:
    """``net(x_t, mu, t, lens_info=[src, tgt, disparity])``: the bokeh network, the (B,) columns of each image's
    lens information (the same for every tile of an image)."""

    net: Callable[..., torch.Tensor]
    lens: list

    def __call__(self, x_t, mu, t, cond=None):
        return self.net(x_t, mu, t, lens_info=self.lens)


def _lens(caps: Capabilities, name: str, lens_info: Any, batch: int, device: torch.device) -> list | None:
    """The (B,) lens columns, or a ValueError when the network and ``lens_info`` disagree."""
    if caps.conditioning == "lens" and lens_info is None:
        raise ValueError(f"{name} embeds the lens information of every image: pass lens_info=[src_lens, tgt_lens, "
                         f"disparity] (a (B, 3) tensor or three values; refusion.data.lens.lens_info encodes lens "
                         f"names such as 'Sony50mmf1.8BS')")
    if caps.conditioning != "lens" and lens_info is not None:
        raise ValueError(f"lens_info was given but the noise network is a {name}, which takes no lens information "
                         f"(only a network that declares lens conditioning, the bokeh network, does)")
    return None if lens_info is None else lens_arguments(lens_batch(lens_info, batch).to(device))


def noise_call(net: Callable[..., torch.Tensor], caps: Capabilities, *, name: str, lens_info: Any = None,
               batch: int = 1, device: torch.device | str = "cpu"):
    """The wrapper that calls ``net`` as its ``caps`` say (``name``: the network's class, for messages)."""
    lens = _lens(caps, name, lens_info, batch, torch.device(device))
    if caps.conditioning == "none":
        return UnconditionalCall(net)
    if caps.conditioning == "lens":
        return LensCall(net, lens)
    return DegradedCall(net)

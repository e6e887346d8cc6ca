"""What a network can do, declared by the network itself (``net.capabilities()``).

Every caller that needs to know how to run a network (the sampler, ``refusion.restore``, the loader,
the command line, the app, evaluation, export) asks :func:`capabilities_of` instead of matching class
names or reading config keys: a subclass inherits its parent's declaration and a wrapper
(``torch.compile``, DistributedDataParallel, an EMA copy) is looked through, so neither silently
fails a name check.

- ``purpose``: "noise" (a noise network of an SDE, called once per sampling step), "regressor" (one
  pass from the degraded image to the restoration), "autoencoder" (the latent path's LatentUNet).
- ``conditioning`` (noise networks): what a call takes besides the state x_t and the timestep:
  "degraded" ``net(x_t, mu, t)``; "none" ``net(x_t, t)`` (the DenoisingSDE's networks see the state
  only); "lens" ``net(x_t, mu, t, lens_info=...)`` (the bokeh network); "stereo" ``net(x_t, mu, t)``
  with a left/right view pair stacked on channels. Regressors and autoencoders: "none".
- ``multiple``: the side multiple the network pads its input to (so tiles of that multiple need no
  padding); ``channels``: image channels of one view; ``views``: 2 for a stereo pair, else 1.
- ``half``: whether the half-precision path (bf16 / fp16 weights) is supported; ``scale``: output side
  over input side (1: super-resolution models here restore the upsampled image).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Capabilities", "capabilities_of", "declares_capabilities", "PURPOSES", "CONDITIONINGS", "GENERIC_NOISE"]

PURPOSES = ("noise", "regressor", "autoencoder")
CONDITIONINGS = ("degraded", "none", "lens", "stereo")


@dataclass(frozen=True)
class Capabilities:
    purpose: str
    conditioning: str = "none"
    multiple: int = 1
    channels: int | None = None
    half: bool = True
    scale: int = 1

    def __post_init__(self):
        if self.purpose not in PURPOSES:
            raise ValueError(f"purpose must be one of {', '.join(PURPOSES)}, got {self.purpose!r}")
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {', '.join(CONDITIONINGS)}, got {self.conditioning!r}")
        if not isinstance(self.multiple, int) or self.multiple < 1:
            raise ValueError(f"multiple must be an int >= 1, got {self.multiple!r}")

    @property
    def views(self) -> int:
        return 2 if self.conditioning == "stereo" else 1

    @property
    def input_channels(self) -> int | None:
        """Channels of the image a call takes (both views of a stereo pair); None when not declared."""
        return None if self.channels is None else self.channels * self.views

    @property
    def is_regressor(self) -> bool:
        return self.purpose == "regressor"

    @property
    def is_noise_network(self) -> bool:
        return self.purpose == "noise"


# a callable that declares nothing (a user's function or module passed as the noise network of
# refusion.sample): called as net(x_t, mu, t); tiles at the multiple of 8 a plain U-Net of 3 levels needs
GENERIC_NOISE = Capabilities(purpose="noise", conditioning="degraded", multiple=8)


def _unwrap(net):
    """The network inside the wrappers torch and accelerate put around one."""
    for _ in range(8):
        inner = getattr(net, "_orig_mod", None) or (getattr(net, "module", None)
                                                     if isinstance(net, torch.nn.Module) else None)
        if not isinstance(inner, torch.nn.Module):
            return net
        net = inner
    return net


def declares_capabilities(net) -> bool:
    """Whether ``net`` (or the network inside its wrappers) has a ``capabilities()`` method."""
    return callable(getattr(_unwrap(net), "capabilities", None))


def capabilities_of(net, default: Capabilities | None = None) -> Capabilities:
    """``net.capabilities()`` of the network (looked up through compile / DDP wrappers); ``default`` for a
    callable that declares none (TypeError when there is no default)."""
    declare = getattr(_unwrap(net), "capabilities", None)
    if callable(declare):
        caps = declare()
        if isinstance(caps, Capabilities):
            return caps
    if default is not None:
        return default
    raise TypeError(f"{type(net).__name__} does not declare its capabilities (a capabilities() method returning "
                    f"refusion.models.capabilities.Capabilities)")

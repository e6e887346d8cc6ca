"""The settings of one restoration, as one validated object.

``RestoreSettings`` holds every knob a restoration takes (sampler, steps, eta, seed or generator, tiles,
half precision, colour fix, self-ensemble, posterior samples, lens information, TLC, the latent path).
It is checked once, when it is built, with messages that name the keyword and the command-line flag,
and passed whole to refusion.inference.restorer.restore_image. ``refusion.sample`` / ``restore`` /
``sample_posterior`` keep their keyword arguments and build one; `refusion restore`, the app and
`refusion evaluate` build one from their own inputs. What a setting means for a given model (a
sampler the model's scheduler has, lens information only for a bokeh model, ...) is checked against
the loaded model by :meth:`RestoreSettings.check_for`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["RestoreSettings", "SettingsError", "FLAGS", "COLOR_FIXES"]

COLOR_FIXES = ("adain", "wavelet")

# keyword -> the `refusion restore` flag that sets it (named in every message)
FLAGS = {
    "sampler": "--sampler", "steps": "--steps", "eta": "--eta", "seed": "--seed", "tile": "--tile",
    "overlap": "--overlap", "half": "--half", "color_fix": "--color-fix", "self_ensemble": "--self-ensemble",
    "samples": "--samples", "chunk_size": "--chunk-size", "lens_info": "--lens-meta / --src-lens",
    "tlc": "--tlc / --no-tlc", "latent": "--latent", "generator": None, "cond": None,
}


class SettingsError(ValueError):
    """A setting out of range, or one the model cannot use; the message names the keyword and flag."""


def _name(key: str) -> str:
    flag = FLAGS.get(key)
    return f"{key} ({flag})" if flag else key


def _fail(key: str, message: str):
    raise SettingsError(f"{_name(key)}: {message}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class RestoreSettings:
    """How to restore: ``None`` means the model's default (refusion.inference.model.ModelDefaults).

    ``seed`` and ``generator`` exclude each other; with neither, noise comes from torch's global RNG.
    ``samples`` K > 1: K posterior samples (SDE models), the result is their mean with the std.
    ``tlc``: None (the model folder's choice), False (off), True (the run's training patch), an int or
    (H, W). ``latent``: None (automatic), True / False (force the autoencoder path on / off).
    ``cond``: extra conditioning maps of a noise network with ``cond_channels`` (library use only).
    """

    sampler: str | None = None
    steps: int | None = None
    eta: float | None = None
    seed: int | None = None
    generator: Any = field(default=None, compare=False)
    tile: int | None = None
    overlap: int = 32
    half: bool = False
    color_fix: str | None = None
    self_ensemble: bool = False
    samples: int = 1
    chunk_size: int | None = None
    lens_info: Any = field(default=None, compare=False)
    tlc: Any = None
    latent: bool | None = None
    cond: Any = field(default=None, compare=False)

    def __post_init__(self):
        self._check_numbers()
        self._check_choices()

    def _check_numbers(self) -> None:
        if self.steps is not None and not (_is_int(self.steps) and self.steps >= 1):
            _fail("steps", f"must be an int >= 1 (sampling steps), got {self.steps!r}")
        if self.eta is not None and not (isinstance(self.eta, (int, float)) and 0.0 <= self.eta <= 1.0):
            _fail("eta", f"must be a number in [0, 1] (the posterior sampler's stochasticity), got {self.eta!r}")
        if self.seed is not None and not (_is_int(self.seed) and 0 <= self.seed < 2 ** 63):
            _fail("seed", f"must be an int in [0, 2**63), got {self.seed!r}")
        if self.tile is not None and not (_is_int(self.tile) and self.tile >= 1):
            _fail("tile", f"must be None (whole image) or an int >= 1 (tile side in pixels), got {self.tile!r}")
        if not (_is_int(self.overlap) and self.overlap >= 0):
            _fail("overlap", f"must be an int >= 0 (pixels shared by neighbouring tiles), got {self.overlap!r}")
        if not (_is_int(self.samples) and self.samples >= 1):
            _fail("samples", f"must be an int >= 1 (posterior samples per image), got {self.samples!r}")
        if self.chunk_size is not None and not (_is_int(self.chunk_size) and self.chunk_size >= 1):
            _fail("chunk_size", f"must be None (automatic) or an int >= 1 (samples per network batch), "
                                f"got {self.chunk_size!r}")

    def _check_choices(self) -> None:
        if self.seed is not None and self.generator is not None:
            _fail("seed", "give a seed or a generator, not both")
        if self.color_fix is not None and self.color_fix not in COLOR_FIXES:
            _fail("color_fix", f"must be None (off), 'adain' or 'wavelet', got {self.color_fix!r}")
        for key in ("half", "self_ensemble"):
            if not isinstance(getattr(self, key), bool):
                _fail(key, f"must be True or False, got {getattr(self, key)!r}")
        if self.latent is not None and not isinstance(self.latent, bool):
            _fail("latent", f"must be None (automatic), True or False, got {self.latent!r}")
        if self.sampler is not None and not isinstance(self.sampler, str):
            _fail("sampler", f"must be a sampler name, got {self.sampler!r}")
        tlc = self.tlc
        if not (tlc is None or isinstance(tlc, bool) or (_is_int(tlc) and tlc >= 1)
                or (isinstance(tlc, (tuple, list)) and len(tlc) == 2 and all(_is_int(v) and v >= 1 for v in tlc))):
            _fail("tlc", f"must be None, True, False, a training patch size (int) or (H, W), got {tlc!r}")

    def replace(self, **changes) -> "RestoreSettings":
        """A copy with ``changes``, validated again."""
        return dataclasses.replace(self, **changes)

    def make_generator(self, device: torch.device | str):
        """The noise generator of a call: the caller's, one seeded with ``seed`` on ``device``, or None."""
        if self.generator is not None:
            return self.generator
        if self.seed is None:
            return None
        return torch.Generator(device=torch.device(device)).manual_seed(self.seed)

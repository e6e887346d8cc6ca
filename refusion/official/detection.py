"""Which refusion network a checkpoint's weights belong to, and its constructor arguments, from
tensor shapes and key patterns alone.

``detect_architecture(obj)`` accepts a bare state dict or an official checkpoint object
({'params' | 'params_ema' | 'state_dict': ...}, any ``module.`` / ``_orig_mod.`` prefixes) and
tries the :data:`DETECTORS` in order. Each is a declarative key condition plus a reader of the
constructor arguments off shapes and sequence lengths (:mod:`.detect_nafnet`, :mod:`.detect_unet`);
a candidate is accepted only if the network it describes, built on the meta device, has exactly
the keys and shapes of the weights. Arguments that change no key or shape (dropout, the LeakyReLU
slope, the latent-dehazing intro skip, ...) are listed in ``undetermined`` with the value used and
why. When nothing fits, :class:`DetectionError` names the closest architecture (most key conditions
met) and the keys or shapes that do not fit it.
"""
from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from refusion.official import detect_nafnet, detect_unet
from refusion.official.checkpoints import OfficialCheckpointError, extract_state_dict, load_state_dict_strict
from refusion.official.detect_keys import Detector, Misfit, StateDict, Undetermined

# tried in this order; the key conditions do not overlap, the order only breaks ties between
# equally close candidates in a refusal
DETECTORS: tuple[Detector, ...] = (*detect_nafnet.DETECTORS, *detect_unet.DETECTORS)
# at most this many keys of each kind are written into a refusal's message (all are on the error)
_SHOWN = 20


@dataclass(frozen=True)
class DetectedArchitecture:
    """A network read off weights: ``MODELS[name](**build_kwargs)`` has exactly their keys and shapes.

    ``kwargs``: the constructor arguments the weights determine. ``undetermined``: argument ->
    :class:`Undetermined` (value used and why) for those they cannot; entries with
    ``constructor=False`` (TLC) are settings applied at inference, not constructor arguments.
    ``purpose``: "noise" (an SDE noise network), "regressor" (image -> image) or "autoencoder".
    """

    name: str
    kwargs: dict[str, Any]
    undetermined: dict[str, Undetermined] = field(default_factory=dict)
    purpose: str = "regressor"

    @property
    def build_kwargs(self) -> dict[str, Any]:
        """``kwargs`` completed with the values used for the undetermined constructor arguments."""
        chosen = {k: u.default for k, u in self.undetermined.items() if u.constructor}
        return {**self.kwargs, **chosen}

    def build(self, *, device: torch.device | str | None = None) -> nn.Module:
        """The network, untrained (``device='meta'`` builds it without allocating its weights)."""
        from refusion.models import MODELS

        if self.name not in MODELS:
            raise DetectionError(f"refusion.models has no network {self.name!r} (known: {', '.join(sorted(MODELS))})")
        with torch.device(device) if device is not None else nullcontext():
            return MODELS[self.name](**self.build_kwargs)

    def load(self, state_dict_or_checkpoint: Mapping) -> nn.Module:
        """The network with the weights loaded strictly (any key or shape mismatch raises, nothing loaded)."""
        model = self.build()
        return load_state_dict_strict(model, extract_state_dict(state_dict_or_checkpoint))


class DetectionError(ValueError):
    """No refusion network fits the weights.

    ``closest``: the MODELS name of the architecture with the most key conditions met (None for an
    empty or non-tensor input); ``unmet``: its conditions that fail; ``missing``, ``unexpected``,
    ``shape_mismatches``: how the weights differ from the network it describes, when its
    condition held; ``problems``: other reasons its arguments could not be read.
    """

    def __init__(self, message: str, *, closest: str | None = None, unmet: list[str] = (),
                 missing: list[str] = (), unexpected: list[str] = (), shape_mismatches: list[str] = (),
                 problems: list[str] = ()):
        super().__init__(message)
        self.closest = closest
        self.unmet, self.problems = list(unmet), list(problems)
        self.missing, self.unexpected, self.shape_mismatches = list(missing), list(unexpected), list(shape_mismatches)


@dataclass
class _Attempt:
    detector: Detector
    matched: int
    unmet: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shapes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return not (self.unmet or self.problems or self.missing or self.unexpected or self.shapes)

    def rank(self) -> tuple:
        return (not self.unmet, self.matched, -len(self.unmet))


def detect_architecture(state_dict_or_checkpoint: Mapping) -> DetectedArchitecture:
    """The refusion network the weights belong to (see the module docstring); DetectionError if none fits."""
    sd = _state_dict(state_dict_or_checkpoint)
    attempts = []
    for detector in DETECTORS:
        attempt = _Attempt(detector, detector.matched(sd), unmet=detector.unmet(sd))
        attempts.append(attempt)
        if attempt.unmet:
            continue
        try:
            kwargs, undetermined = detector.read(sd)
        except Misfit as exc:
            attempt.problems = exc.problems
            continue
        except KeyError as exc:
            attempt.problems = [f"missing key {exc.args[0]}"]
            continue
        except IndexError:
            attempt.problems = ["a tensor has fewer dimensions than the architecture's"]
            continue
        found = DetectedArchitecture(detector.name, kwargs, undetermined, detector.purpose)
        _compare(found, sd, attempt)
        if attempt.fits:
            return found
    raise _refusal(sd, max(attempts, key=_Attempt.rank))


def _state_dict(obj) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise DetectionError(f"expected a state dict or a checkpoint dict, got {type(obj).__name__}")
    if not obj:
        raise DetectionError("the state dict is empty: there are no weights to detect an architecture from")
    try:
        return extract_state_dict(obj)
    except OfficialCheckpointError as exc:
        raise DetectionError(f"no weights to detect an architecture from: {exc}") from None


def _compare(found: DetectedArchitecture, sd: StateDict, attempt: _Attempt) -> None:
    """Fill ``attempt`` with how ``sd`` differs from the network ``found`` describes."""
    try:
        expected = found.build(device="meta").state_dict()
    except (ValueError, TypeError, RuntimeError) as exc:
        args = ", ".join(f"{k}={v!r}" for k, v in found.build_kwargs.items())
        attempt.problems = [f"{found.name}({args}) cannot be built: {exc}"]
        return
    attempt.missing = sorted(set(expected) - set(sd))
    attempt.unexpected = sorted(set(sd) - set(expected))
    attempt.shapes = sorted(
        f"{k}: weights {tuple(sd[k].shape)} vs {found.name} {tuple(expected[k].shape)}"
        for k in set(sd) & set(expected) if tuple(sd[k].shape) != tuple(expected[k].shape)
    )


def _listed(title: str, items: list[str]) -> str:
    more = f", ... ({len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    return f"{title} ({len(items)}): " + ", ".join(items[:_SHOWN]) + more


def _refusal(sd: StateDict, closest: _Attempt) -> DetectionError:
    det = closest.detector
    total = sum(1 for rule in det.condition if rule.positive)
    if closest.matched:
        head = f"closest: {det.name} ({closest.matched} of {total} key conditions met)"
    else:
        head = f"no key condition of any refusion network holds; closest: {det.name} (fewest conditions unmet)"
    lines = [f"no refusion network fits these weights ({len(sd)} tensors); {head}"]
    for title, items in (("conditions not met", closest.unmet), ("does not fit", closest.problems),
                         ("missing keys", closest.missing), ("unexpected keys", closest.unexpected),
                         ("shape mismatches", closest.shapes)):
        if items:
            lines.append("  " + _listed(title, items))
    return DetectionError("\n".join(lines), closest=det.name, unmet=closest.unmet, missing=closest.missing,
                          unexpected=closest.unexpected, shape_mismatches=closest.shapes, problems=closest.problems)


__all__ = ["DETECTORS", "DetectedArchitecture", "DetectionError", "Undetermined", "detect_architecture"]

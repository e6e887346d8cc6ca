"""The parts architecture detectors are written with: declarative rules on state-dict keys and
shapes, the :class:`Detector` record, and readers of sequence lengths off key patterns.

A rule's ``problem(state_dict)`` is None when it holds, else a sentence naming the keys or
shapes that do not fit; ``str(rule)`` is the rule as written in a table of detectors.
"""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

StateDict = Mapping[str, torch.Tensor]
Reading = tuple[dict[str, Any], dict[str, "Undetermined"]]

NOISE, REGRESSOR, AUTOENCODER = "noise", "regressor", "autoencoder"


class Misfit(Exception):
    """Raised by a reader when the weights pass the key condition but no constructor arguments
    can produce them; ``problems`` name the keys and shapes."""

    def __init__(self, *problems: str):
        self.problems = list(problems)
        super().__init__("; ".join(problems))


@dataclass(frozen=True)
class Undetermined:
    """A constructor argument the weights cannot determine, the value used, and why.

    ``constructor=False`` marks a setting of the official class that refusion applies at
    inference instead (TLC of the official NAFNetLocal): it is reported, never passed to the class.
    """

    default: Any
    reason: str
    constructor: bool = True

    def __str__(self) -> str:
        return f"{self.reason}; default {self.default!r}"


# -- rules ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Has:
    """The exact key is present."""

    key: str
    positive = True

    def problem(self, sd: StateDict) -> str | None:
        return None if self.key in sd else f"missing key {self.key}"

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True)
class KeyPattern:
    """Some key (``present``) or no key (not ``present``) matches ``pattern``, a regular expression
    matched against the whole key; ``label`` names the keys in tables and messages."""

    pattern: str
    label: str
    present: bool = True

    @property
    def positive(self) -> bool:
        return self.present

    def problem(self, sd: StateDict) -> str | None:
        found = sorted(k for k in sd if re.fullmatch(self.pattern, k))
        if self.present:
            return None if found else f"no key like {self.label}"
        return f"unexpected {self.label} keys ({found[0]}{', ...' if len(found) > 1 else ''})" if found else None

    def __str__(self) -> str:
        return f"{'any' if self.present else 'no'} {self.label}"


def HasAny(pattern: str, label: str) -> KeyPattern:  # noqa: N802  (reads like the other rules)
    return KeyPattern(pattern, label)


def HasNone(pattern: str, label: str) -> KeyPattern:  # noqa: N802
    return KeyPattern(pattern, label, present=False)


@dataclass(frozen=True)
class Channels:
    """``sd[key].shape[dim]`` equals (``op`` '==') or is at least (``op`` '>=') ``factor`` times
    ``sd[ref].shape[ref_dim]``."""

    key: str
    dim: int
    op: str
    factor: int
    ref: str
    ref_dim: int
    positive = True

    def problem(self, sd: StateDict) -> str | None:
        if self.key not in sd or self.ref not in sd:
            return f"needs {self.key} and {self.ref} to compare channels"
        a, b = _dim(sd, self.key, self.dim), _dim(sd, self.ref, self.ref_dim)
        if a is None or b is None:
            return f"{self.key} {tuple(sd[self.key].shape)} or {self.ref} {tuple(sd[self.ref].shape)} has too few dimensions"
        if (a == self.factor * b) if self.op == "==" else (a >= self.factor * b):
            return None
        return f"{self.key}.shape[{self.dim}] is {a}, not {self.op} {self.factor} x {self.ref}.shape[{self.ref_dim}] = {self.factor * b}"

    def __str__(self) -> str:
        return f"{self.key}[{self.dim}] {self.op} {self.factor} x {self.ref}[{self.ref_dim}]"


def _dim(sd: StateDict, key: str, dim: int) -> int | None:
    shape = sd[key].shape
    return int(shape[dim]) if len(shape) > dim else None


def has_all(*keys: str) -> tuple[Has, ...]:
    return tuple(Has(k) for k in keys)


@dataclass(frozen=True)
class Detector:
    """One architecture: a MODELS name, its purpose, the key condition (every rule must hold) and
    ``read(state_dict) -> (kwargs, undetermined)``, every constructor argument in one of the two."""

    name: str
    purpose: str
    condition: tuple
    read: Callable[[StateDict], Reading]

    def unmet(self, sd: StateDict) -> list[str]:
        return [p for p in (rule.problem(sd) for rule in self.condition) if p is not None]

    def matched(self, sd: StateDict) -> int:
        """How many positive rules (presence, shapes) hold: the measure of the closest architecture."""
        return sum(1 for rule in self.condition if rule.positive and rule.problem(sd) is None)


# -- readers ----------------------------------------------------------------------------------


def count(sd: StateDict, prefix: str) -> int:
    """Length of the ModuleList whose keys start with ``prefix`` ('downs.' -> 1 + the largest i of
    'downs.i.*'); 0 when none. Gaps show up later as missing keys."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = [int(m.group(1)) for m in map(pattern.match, sd) if m]
    return max(indices) + 1 if indices else 0


def class_default(name: str, arg: str) -> Any:
    """The default of constructor argument ``arg`` of ``refusion.models.MODELS[name]``."""
    from refusion.models import MODELS

    return inspect.signature(MODELS[name].__init__).parameters[arg].default


def defaulted(name: str, reason: str, *args: str) -> dict[str, Undetermined]:
    """``{arg: Undetermined(class default, reason)}`` for each of ``args``."""
    return {arg: Undetermined(class_default(name, arg), reason) for arg in args}

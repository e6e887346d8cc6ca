"""Errors shared by training and inference about run directories and saved weights."""
from __future__ import annotations


class RunDirError(RuntimeError):
    """A run directory that cannot be started, resumed or loaded as asked."""


class CorruptWeightsError(RunDirError, ValueError):
    """A saved weight folder whose files differ from its checksums.json (or are missing).

    A ValueError too, so that the inference loaders keep their contract (bad weights raise
    ValueError) and tools/restore.py reports it as a usage error.
    """

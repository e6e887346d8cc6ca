"""refusion demo: the quickstart (dataset from bundled photographs, tiny SDE and NAFNet, evaluation report).

    refusion demo                       # the same as python -m refusion.demo
    refusion demo --task shadow --iters 200 --out report/shadow_demo
"""
from __future__ import annotations

from refusion.demo import main

__all__ = ["main"]

"""How the suite compares results of *different* instances of a computation.

Two instances of a float32 network (a model and the same model loaded back, a worker's deep copy, the
network of another process) can run other kernel paths: oneDNN chooses them by where the tensors sit
in memory and by the CPU's instruction set, and two instances differed by 1.5-2.1e-7 on an AMD EPYC
Zen 5. Such results are compared here at float32 tolerance, and images written from them at one
quantisation step. Bitwise checks stay where the same computation runs twice on the same tensors in
one process, or where the code guarantees bits (a state dict saved and read back, a deep copy).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from refusion.data.image_io import image_bit_depth, read_image

# float32 networks: several hundred times the differences seen between instances, far below any
# difference a wrong weight, seed or code path makes
INSTANCE_ATOL = 1e-5
# metrics (PSNR dB, SSIM, LPIPS) of images that may differ by one quantisation step in a few pixels
METRIC_TOLERANCE = dict(rel=1e-4, abs=1e-4)


def assert_close_outputs(got: torch.Tensor, want: torch.Tensor, atol: float = INSTANCE_ATOL) -> None:
    """Outputs of two network instances: same shape and dtype, equal within ``atol``."""
    torch.testing.assert_close(got, want, rtol=0, atol=atol)


def assert_same_state(a: torch.nn.Module | dict, b: torch.nn.Module | dict) -> None:
    """The same keys and bit for bit the same tensors (saving, loading and copying keep the bits)."""
    a = a.state_dict() if isinstance(a, torch.nn.Module) else a
    b = b.state_dict() if isinstance(b, torch.nn.Module) else b
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_same_images(got: Path, want: Path) -> None:
    """Two image files of the same content: same size and bit depth, pixels within one step of it."""
    depth = image_bit_depth(got)
    assert depth == image_bit_depth(want), (got, want)
    a, b = read_image(got), read_image(want)
    assert a.shape == b.shape, (got, a.shape, b.shape)
    step = 1.0 / (2 ** depth - 1)
    worst = float(np.abs(a.astype(np.float64) - b).max())
    assert worst <= step * 1.001, f"{got} differs from {want} by {worst / step:.2f} quantisation steps"


def assert_same_folders(got: Path, want: Path) -> None:
    """Two output folders: the same file names, each image the same within one quantisation step."""
    names = sorted(p.name for p in Path(got).iterdir())
    assert names == sorted(p.name for p in Path(want).iterdir())
    for name in names:
        assert_same_images(Path(got) / name, Path(want) / name)


def assert_close_records(got, want, path: str = "") -> None:
    """Nested results (rows of a table, JSON): the same structure and non-numeric values, numbers
    within METRIC_TOLERANCE (NaN matches NaN)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), (path, got, want)
        for key in want:
            assert_close_records(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(want), (path, got, want)
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close_records(g, w, f"{path}[{i}]")
    elif isinstance(want, float) and not isinstance(want, bool):
        assert isinstance(got, (int, float)), (path, got, want)
        if math.isnan(want):
            assert math.isnan(got), (path, got)
        else:
            assert math.isclose(got, want, rel_tol=METRIC_TOLERANCE["rel"], abs_tol=METRIC_TOLERANCE["abs"]), \
                (path, got, want)
    else:
        assert got == want, (path, got, want)

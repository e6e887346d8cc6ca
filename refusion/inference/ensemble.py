"""x8 self-ensemble: the network run on the 8 flips and 90-degree rotations of the image, mapped back, averaged.

The test mode of NAFNet, HINet and KAIR ("x8"). Transform ``k`` (0..7) of the dihedral group of
the square is ``rot90(k % 4)`` of the image (counter-clockwise in the (H, W) plane), preceded
by a vertical flip when ``k >= 4``; its inverse undoes both in the opposite order. Rotations by
90 or 270 degrees swap height and width, which is fine for whole images.

Order with tiling: the whole image is transformed first, then tiled, so the tile grid is
computed on the transformed image (a non-square image gets the transposed grid for odd
rotations) and every tile sees the transformed image's content; TLC, when on, converts the
network's pooling for all eight passes. Regressors (``refusion.restore``): exactly 8 network
calls (times the tiles), averaged in float32.

The SDE (``refusion.sample`` / ``RefusionPipeline``): eight trajectories run side by side, one
per transform, all sharing ONE noise field drawn in the original frame and transformed with the
image: the initial state and every step's Gaussian noise are drawn once per step from the
caller's generator, exactly as a run without the ensemble draws them (none after x_T for a
deterministic sampler), and every trajectory gets them (the scheduler's arithmetic is per pixel, so the 8 states are kept in the original frame
and only the network's inputs are transformed, its output mapped back). Hence: the same seed
gives the same result; a network that is itself invariant under flips and rotations gives the
plain run's image; each step costs 8 network calls (8 x steps in all) and one noise draw; the
ensemble averages the network's dependence on orientation, not the sampling noise (that is what
several posterior samples do). The 8 final states are averaged. On the latent path the
transforms apply to the latent the SDE runs on; the autoencoder runs once.

Not defined for stereo networks (the two views stacked on channels): a rotation breaks the
epipolar geometry (the disparity runs along the rows) and a horizontal flip would have to swap
the views; such a network is refused with that reason. The bokeh lens information is per image
and goes to every transform unchanged.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from refusion.models.capabilities import GENERIC_NOISE, capabilities_of
from refusion.schedulers.ir_sde import randn_like_batch

__all__ = ["ENSEMBLE_SIZE", "dihedral", "undo_dihedral", "check_ensemble_network", "ensemble_mean",
           "ensemble_predict", "repeat_for_ensemble", "shared_noise", "mean_over_ensemble"]

ENSEMBLE_SIZE = 8


def _check_index(k: int) -> None:
    if not isinstance(k, int) or not 0 <= k < ENSEMBLE_SIZE:
        raise ValueError(f"transform index must be an int in 0..{ENSEMBLE_SIZE - 1}, got {k!r}")


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Transform ``k`` of a (..., H, W) tensor: a vertical flip when k >= 4, then rot90 by k % 4."""
    _check_index(k)
    if k >= 4:
        x = x.flip(-2)
    return torch.rot90(x, k % 4, dims=(-2, -1))


def undo_dihedral(y: torch.Tensor, k: int) -> torch.Tensor:
    """The inverse of :func:`dihedral`: ``undo_dihedral(dihedral(x, k), k) == x``."""
    _check_index(k)
    y = torch.rot90(y, -(k % 4), dims=(-2, -1))
    return y.flip(-2) if k >= 4 else y


def check_ensemble_network(net) -> None:
    """ValueError for a network the self-ensemble is not defined for (stereo pairs, see the module doc)."""
    if capabilities_of(net, GENERIC_NOISE).conditioning == "stereo":
        raise ValueError(f"self_ensemble is not available for the stereo network {type(net).__name__}: its input "
                         f"is a left/right pair whose disparity runs along the rows, so a 90-degree rotation breaks "
                         f"the epipolar geometry and a horizontal flip would have to swap the views; restore "
                         f"stereo pairs without self_ensemble")


def ensemble_mean(fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over the 8 transforms k of ``undo_k(fn(*transform_k(inputs)))`` (8 calls of ``fn``)."""
    total = None
    for k in range(ENSEMBLE_SIZE):
        out = undo_dihedral(fn(*(dihedral(x, k) for x in inputs)), k)
        total = out.float() if total is None else total + out
    return total / ENSEMBLE_SIZE


def repeat_for_ensemble(x: torch.Tensor | None) -> torch.Tensor | None:
    """(B, ...) -> (8B, ...): one copy per transform, transform-major (rows k*B .. k*B+B-1 are copy k)."""
    return None if x is None else x.repeat(ENSEMBLE_SIZE, *([1] * (x.dim() - 1)))


def mean_over_ensemble(x: torch.Tensor) -> torch.Tensor:
    """(8B, ...) transform-major -> (B, ...): the mean of the 8 copies of each image."""
    return x.reshape(ENSEMBLE_SIZE, x.shape[0] // ENSEMBLE_SIZE, *x.shape[1:]).mean(0)


def ensemble_predict(fn: Callable[..., torch.Tensor], state: torch.Tensor,
                     inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """The SDE's network output for 8 trajectories kept in the original frame.

    ``state`` is (8B, C, H, W), transform-major; ``inputs`` (mu, cond) are (B, ...) and the same for
    every trajectory. Trajectory k's network call sees ``transform_k`` of its state and of the
    inputs; its output is mapped back. 8 calls of ``fn``, each on a batch of B.
    """
    states = state.chunk(ENSEMBLE_SIZE)
    outputs = [undo_dihedral(fn(dihedral(states[k], k), *(dihedral(x, k) for x in inputs)), k)
               for k in range(ENSEMBLE_SIZE)]
    return torch.cat(outputs)


def shared_noise(like: torch.Tensor, generator) -> torch.Tensor:
    """One step's Gaussian noise for (B, ...) images, drawn as a run without the ensemble draws it
    (same generator, same shape), repeated for the 8 trajectories."""
    return repeat_for_ensemble(randn_like_batch(like, generator))

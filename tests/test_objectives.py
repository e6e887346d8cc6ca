"""The SDE objective with a data-predicting network (the official noise-predicting objective is
pinned to the official train_loss_l1 in tests/test_losses.py)."""
from types import SimpleNamespace

import pytest
import torch

from refusion import IRSDEScheduler
from refusion.training.objectives import sde_objective


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"gt": torch.rand(3, 3, 8, 8, generator=g), "lq": torch.rand(3, 3, 8, 8, generator=g)}


@pytest.mark.parametrize("offset", [0.0, 0.1])
def test_data_prediction_loss_is_l1_on_x0(offset):
    sched = IRSDEScheduler(prediction_type="sample")
    batch = _batch()
    oracle = lambda x_t, mu, t: batch["gt"] + offset  # noqa: E731 - predicts x0 (shifted)
    loss, logs = sde_objective(oracle, batch, sched, SimpleNamespace(loss="l1"))
    assert loss.item() == pytest.approx(offset, abs=1e-7)
    assert logs["loss"] == pytest.approx(offset, abs=1e-7)



"""EMA weights of the training engine."""
import pytest
import torch


def test_ema_warms_up_then_uses_its_decay():
    """The first updates follow the weights closely (no lingering initialisation), later ones use decay."""
    from refusion.training.optim import EMA

    net = torch.nn.Linear(2, 2, bias=False)
    torch.nn.init.zeros_(net.weight)
    ema = EMA(net, decay=0.999)
    assert ema.decay_at(1) == pytest.approx(2 / 11) and ema.decay_at(10_000) == 0.999
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update(net, step=1)
    # one warmed-up update moves 9/11 of the way; a constant 0.999 would move 0.001
    assert ema.model.weight.detach() == pytest.approx(torch.full((2, 2), 9 / 11))
    expected = 9 / 11
    for step in range(2, 3001):
        ema.update(net, step=step)
        expected += (1 - expected) * (1 - min(0.999, (1 + step) / (10 + step)))
    assert ema.model.weight.detach() == pytest.approx(torch.full((2, 2), expected), rel=1e-5)
    assert 1 - expected < 0.01  # < 1% of the initialisation left after 3000 steps (5% without warm-up)

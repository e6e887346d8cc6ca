"""Loss values against their formulas and the official IR-SDE training loss."""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from refusion.training.losses import CharbonnierLoss, FFTLoss, L1Loss, MatchingLoss, PSNRLoss
from refusion.training.objectives import (latent_statistics_penalty, regressor_objective,
                                          sde_objective)

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def pair():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(3, 3, 9, 11, generator=g, dtype=torch.float64)
    pred = target + 0.05 * torch.randn(3, 3, 9, 11, generator=g, dtype=torch.float64) * torch.tensor(
        [1.0, 2.0, 4.0], dtype=torch.float64).reshape(3, 1, 1, 1)
    return pred, target


def test_psnr_loss_is_minus_mean_psnr(pair):
    pred, target = pair
    p, t = pred.numpy(), target.numpy()
    psnrs = [10 * np.log10(1.0 / (np.mean((p[i] - t[i]) ** 2) + 1e-8)) for i in range(3)]
    loss = PSNRLoss()(pred, target).item()
    assert loss == pytest.approx(-np.mean(psnrs), rel=1e-6)  # float32 inside, like the official
    assert loss < 0  # negative by design: -PSNR
    assert PSNRLoss(loss_weight=0.5)(pred, target).item() == pytest.approx(0.5 * loss, rel=1e-12)


def test_pixel_losses_match_formulas(pair):
    pred, target = pair
    d = (pred - target).numpy()
    assert L1Loss()(pred, target).item() == pytest.approx(np.abs(d).mean(), rel=1e-12)
    assert CharbonnierLoss()(pred, target).item() == pytest.approx(np.sqrt(d**2 + 1e-6).mean(), rel=1e-12)
    assert CharbonnierLoss(eps=0.1)(pred, pred).item() == pytest.approx(0.1, rel=1e-12)


def test_fft_loss_matches_numpy(pair):
    pred, target = pair
    ref = np.abs(np.fft.fft2(pred.numpy(), axes=(-2, -1)) - np.fft.fft2(target.numpy(), axes=(-2, -1))).mean()
    assert FFTLoss()(pred, target).item() == pytest.approx(ref, rel=1e-5)
    assert FFTLoss()(target, target).item() == 0.0


def test_matching_loss_is_per_sample_mean_then_batch_mean():
    pred = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    target = torch.stack([torch.full((1, 2, 2), 1.0), torch.tensor([[[2.0, 0.0], [0.0, 0.0]]])]).double()
    assert MatchingLoss("l1")(pred, target).item() == pytest.approx((1.0 + 0.5) / 2)
    assert MatchingLoss("l2")(pred, target).item() == pytest.approx((1.0 + 1.0) / 2)


def test_loss_errors_name_the_problem():
    with pytest.raises(ValueError, match="loss_type='l3'.*'l1', 'l2'"):
        MatchingLoss("l3")
    with pytest.raises(ValueError, match=r"L1Loss: pred shape \(1, 3, 4, 4\) != target shape \(1, 3, 4, 5\)"):
        L1Loss()(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))
    with pytest.raises(ValueError, match="train.loss='ssim' for a regressor; allowed"):
        regressor_objective(lambda x: x, {"gt": torch.zeros(1, 3, 4, 4), "lq": torch.zeros(1, 3, 4, 4)},
                            None, SimpleNamespace(loss="ssim", fft_loss_weight=0.05))


@pytest.mark.parametrize("loss_type", ["l1", "l2"])
def test_sde_objective_equals_official_training_loss(monkeypatch, loss_type):
    """The whole objective (forward marginal, reverse mean, optimal target, matching loss) on the
    official toy predictor eps_hat = 4 (x - mu) + 0.002 t reproduces the official train_loss."""
    from refusion.schedulers.ir_sde import IRSDEScheduler

    ref = np.load(DATA / "ir_sde_cosine_s50_T100_eps0.005.npz")
    x0, mu = torch.from_numpy(ref["x0"]).double(), torch.from_numpy(ref["mu"]).double()
    timesteps = torch.from_numpy(ref["train_timesteps"])
    noise = torch.from_numpy(ref["train_noise"]).double()

    class OfficialDraws(IRSDEScheduler):
        def sample_timesteps(self, batch_size, *, generator=None, device=None):
            return timesteps.clone()

    # the objective draws its noise with torch.randn(shape, dtype=...): the official draw replaces it
    monkeypatch.setattr(torch, "randn", lambda shape, **kw: noise.to(kw.get("dtype") or noise.dtype))
    seen = {}

    def toy_predictor(x_t, mu_in, t):
        seen["x_t"] = x_t
        return 4.0 * (x_t - mu_in) + 0.002 * t.reshape(-1, 1, 1, 1).to(x_t.dtype)

    sched = OfficialDraws(max_sigma=50, num_train_timesteps=100, schedule="cosine", eps=0.005)
    loss, logs = sde_objective(toy_predictor, {"gt": x0, "lq": mu}, sched, SimpleNamespace(loss=loss_type))
    np.testing.assert_allclose(seen["x_t"].numpy(), ref["train_state"], rtol=1e-12, atol=1e-14)
    assert loss.item() == pytest.approx(float(ref[f"train_loss_{loss_type}"]), rel=1e-10)
    assert logs["loss"] == loss.item()


def test_regressor_objective_supervises_every_stage():
    gt = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    lq = gt * 0.5

    def two_stage(x):
        return [x * 1.5, x * 1.9]

    cfg = SimpleNamespace(loss="l1", fft_loss_weight=0.05)
    loss, logs = regressor_objective(two_stage, {"gt": gt, "lq": lq}, None, cfg)
    expected = (lq * 1.5 - gt).abs().mean() + (lq * 1.9 - gt).abs().mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(logs) == {"loss", "loss_stage1", "loss_stage2"}
    cfg.loss = "l1_fft"
    loss, _ = regressor_objective(lambda x: x, {"gt": gt, "lq": lq}, None, cfg)
    expected = L1Loss()(lq, gt) + 0.05 * FFTLoss()(lq, gt)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_latent_statistics_penalty_is_zero_for_standardised_latents():
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    flat = z.flatten(2)
    standard = ((flat - flat.mean(2, keepdim=True)) / flat.std(2, keepdim=True)).reshape_as(z)
    assert latent_statistics_penalty(standard).item() == pytest.approx(0.0, abs=1e-10)
    # mean 2 and std 3 in every channel: 2^2 + (3 - 1)^2 = 8
    assert latent_statistics_penalty(standard * 3 + 2).item() == pytest.approx(8.0, rel=1e-5)

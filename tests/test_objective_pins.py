"""One step of each training objective (sde, regressor, latent_autoencoder) against values computed
here in numpy from the definitions (FACTS / docs/sde.md, the official schedule arrays), not with
the objective's own code: the loss, the gradient of every parameter of a small model (central
finite differences of the numpy loss) and the parameters after one SGD step.

The SDE objective draws t and the noise itself; the toy networks record what they are given, the
reference recomputes the loss from those inputs, and a separate check asks that the inputs come
from the forward marginal (x_t = mu + alpha_t (x0 - mu) + sigma_bar_t z with z ~ N(0, 1), t ~ U{1..T}).
"""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from refusion.schedulers import IRSDEScheduler
from refusion.training.objectives import OBJECTIVES, training_module

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny tensors, a shared CPU

REF = np.load(Path(__file__).parent / "data" / "ir_sde_cosine_s50_T100_eps0.005.npz")
LAM, DT = float(REF["max_sigma"]), float(REF["dt"])
THETA, THETA_CUM = REF["thetas"], REF["thetas_cumsum"]
LR = 0.1


def batch(dtype=torch.float64, seed=0, cond=False):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(3, 3, 8, 8, generator=g, dtype=torch.float64)
    lq = (0.6 * gt + 0.2 + 0.05 * torch.randn(gt.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    out = {"gt": gt.to(dtype), "lq": lq.to(dtype)}
    if cond:
        out["cond"] = torch.rand(3, 1, 8, 8, generator=g, dtype=torch.float64).to(dtype)
    return out


def fd_grad(loss_fn, params: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central finite differences of a numpy float64 loss."""
    grad = np.zeros_like(params)
    for i in range(len(params)):
        up, down = params.copy(), params.copy()
        up[i] += h
        down[i] -= h
        grad[i] = (loss_fn(up) - loss_fn(down)) / (2 * h)
    return grad


def sgd_step(module: nn.Module, loss: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(gradient, parameters after one SGD step of LR), flattened in parameter order."""
    opt = torch.optim.SGD(module.parameters(), lr=LR)
    opt.zero_grad()
    loss.backward()
    grad = np.concatenate([np.zeros(p.numel()) if p.grad is None else p.grad.detach().double().reshape(-1).numpy()
                           for p in module.parameters()])      # None: a parameter the loss does not use
    opt.step()
    new = np.concatenate([p.detach().double().reshape(-1).numpy() for p in module.parameters()])
    return grad, new


# ------------------------------------------------------------------ sde
class LinearNoiseNet(nn.Module):
    """eps_hat (or x0_hat) = w (x_t - mu) + u mu + b_c + 0.001 t [+ k cond]; records its inputs."""

    def __init__(self, dtype):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.7, dtype=dtype))
        self.u = nn.Parameter(torch.tensor(-0.3, dtype=dtype))
        self.b = nn.Parameter(torch.tensor([0.05, -0.02, 0.1], dtype=dtype))
        self.k = nn.Parameter(torch.tensor(0.4, dtype=dtype))
        self.seen = []

    def forward(self, x_t, mu, t, cond=None):
        self.seen.append((x_t.detach().clone(), mu.detach().clone(), t.detach().clone()))
        out = self.w * (x_t - mu) + self.u * mu + self.b.view(1, -1, 1, 1) + 0.001 * t.view(-1, 1, 1, 1).to(x_t.dtype)
        return out if cond is None else out + self.k * cond

    def params(self) -> np.ndarray:
        return np.concatenate([p.detach().double().reshape(-1).numpy() for p in self.parameters()])


def linear_net_np(p, x_t, mu, t, cond):
    w, u, b, k = p[0], p[1], p[2:5], p[5]
    out = w * (x_t - mu) + u * mu + b.reshape(1, -1, 1, 1) + 0.001 * t.reshape(-1, 1, 1, 1)
    return out if cond is None else out + k * cond


def sde_loss_np(p, x_t, mu, t, x0, cond, prediction_type):
    """docs/sde.md: loss = mean_b mean |reverse-SDE mean from eps_hat - x*_{t-1}| (epsilon) or
    mean |x0_hat - x0| (sample)."""
    out = linear_net_np(p, x_t, mu, t, cond)
    if prediction_type == "sample":
        return np.abs(out - x0).mean()
    col = lambda a: a.reshape(-1, 1, 1, 1)  # noqa: E731
    theta, cum, cum_prev = col(THETA[t]), col(THETA_CUM[t]), col(THETA_CUM[t - 1])
    sigma_bar = LAM * np.sqrt(1 - np.exp(-2 * cum * DT))
    score = -out / sigma_bar
    pred = x_t - (theta * (mu - x_t) - 2 * LAM ** 2 * theta * score) * DT
    A, B, C = np.exp(-theta * DT), np.exp(-cum * DT), np.exp(-cum_prev * DT)
    target = mu + A * (1 - C ** 2) / (1 - B ** 2) * (x_t - mu) + C * (1 - A ** 2) / (1 - B ** 2) * (x0 - mu)
    return np.abs(pred - target).reshape(len(t), -1).mean(axis=1).mean()


class ToyAutoencoder(nn.Module):
    """encode: (0.5 avgpool2(x) + 0.1, [x]); decode: 2 (up2(latent) - 0.1)."""

    def encode(self, x):
        return 0.5 * torch.nn.functional.avg_pool2d(x, 2) + 0.1, [x]

    def decode(self, latent, skips):
        return 2 * (latent.repeat_interleave(2, 2).repeat_interleave(2, 3) - 0.1)


def avgpool2_np(x):
    b, c, h, w = x.shape
    return x.reshape(b, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))


SDE_CASES = {
    "epsilon": dict(prediction_type="epsilon"),
    "epsilon with cond": dict(prediction_type="epsilon", cond=True),
    "epsilon on latents": dict(prediction_type="epsilon", latent=True),
    "sample": dict(prediction_type="sample"),
    "epsilon float32": dict(prediction_type="epsilon", dtype=torch.float32),
}


@pytest.mark.parametrize("case", list(SDE_CASES))
def test_sde_objective_one_step_is_pinned(case):
    spec = SDE_CASES[case]
    dtype = spec.get("dtype", torch.float64)
    data = batch(dtype, seed=1, cond=spec.get("cond", False))
    sched = IRSDEScheduler(max_sigma=50, num_train_timesteps=100, schedule="cosine", eps=0.005,
                           prediction_type=spec["prediction_type"])
    net = LinearNoiseNet(dtype)
    before = net.params()
    torch.manual_seed(3)
    autoencoder = ToyAutoencoder() if spec.get("latent") else None
    loss, logs = OBJECTIVES["sde"](net, data, sched, SimpleNamespace(loss="l1"), autoencoder=autoencoder)
    assert len(net.seen) == 1
    x_t, mu_seen, t = net.seen[0][0].double().numpy(), net.seen[0][1].double().numpy(), net.seen[0][2].numpy()
    x0, mu = data["gt"].double().numpy(), data["lq"].double().numpy()
    if autoencoder is not None:                     # the SDE runs on the latents of GT (x0) and LQ (mu)
        x0, mu = 0.5 * avgpool2_np(x0) + 0.1, 0.5 * avgpool2_np(mu) + 0.1
        assert x_t.shape == (3, 3, 4, 4)
    np.testing.assert_allclose(mu_seen, mu, rtol=0, atol=1e-7 if dtype == torch.float32 else 1e-15)
    assert t.dtype == np.int64 and t.shape == (3,) and 1 <= t.min() and t.max() <= 100
    cond = data["cond"].double().numpy() if "cond" in data else None
    want = sde_loss_np(before, x_t, mu, t, x0, cond, spec["prediction_type"])
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    assert loss.item() == pytest.approx(want, rel=rtol) and logs["loss"] == pytest.approx(want, rel=rtol)
    grad, after = sgd_step(net, loss)
    want_grad = fd_grad(lambda p: sde_loss_np(p, x_t, mu, t, x0, cond, spec["prediction_type"]), before)
    gtol = 1e-4 if dtype == torch.float32 else 1e-7
    np.testing.assert_allclose(grad, want_grad, rtol=gtol, atol=gtol * np.abs(want_grad).max())
    np.testing.assert_allclose(after, before - LR * want_grad, rtol=gtol, atol=gtol * np.abs(want_grad).max())
    if cond is None:
        assert grad[5] == 0 and want_grad[5] == 0    # k only acts through cond


# a latent SDE with conditioning: the pipeline resizes cond to the latent grid
# (F.interpolate(cond, size=latent.shape[-2:], mode="area")); training and validation do the same


def test_latent_sde_objective_gives_the_network_cond_on_the_latent_grid():
    """What the pipeline feeds at inference (refusion.inference.pipeline: cond area-resized to the
    latent size) is what training must feed: for a 2x autoencoder, the 2x2 mean of cond."""
    data = batch(seed=6, cond=True)
    sched = IRSDEScheduler(max_sigma=50, num_train_timesteps=100, schedule="cosine", eps=0.005)
    seen = {}

    class Net(LinearNoiseNet):
        def forward(self, x_t, mu, t, cond=None):
            seen["cond"] = cond
            assert cond is not None and cond.shape[-2:] == x_t.shape[-2:], "cond not on the latent grid"
            return super().forward(x_t, mu, t, cond)

    net = Net(torch.float64)
    torch.manual_seed(3)
    loss, _ = OBJECTIVES["sde"](net, data, sched, SimpleNamespace(loss="l1"), autoencoder=ToyAutoencoder())
    cond = avgpool2_np(data["cond"].numpy())
    np.testing.assert_allclose(seen["cond"].numpy(), cond, rtol=0, atol=1e-15)
    x_t, _, t = net.seen[0]
    x0, mu = (0.5 * avgpool2_np(data[k].numpy()) + 0.1 for k in ("gt", "lq"))
    assert loss.item() == pytest.approx(sde_loss_np(net.params(), x_t.numpy(), mu, t.numpy(), x0, cond, "epsilon"),
                                        rel=1e-12)


def test_latent_sde_validation_restores_with_cond_on_the_latent_grid():
    from refusion.training.objectives import restore_batch

    data = batch(seed=7, cond=True)
    shapes = []

    def net(x_t, mu, t, cond=None):
        shapes.append((tuple(x_t.shape), None if cond is None else tuple(cond.shape)))
        return torch.zeros_like(x_t)

    out = restore_batch("sde", net, data, IRSDEScheduler(sampler="mr_ode"), num_inference_steps=2,
                        autoencoder=ToyAutoencoder())
    assert out.shape == data["gt"].shape
    assert shapes == [((3, 3, 4, 4), (3, 1, 4, 4))] * 2


def test_sde_objective_draws_from_the_forward_marginal():
    """Over many calls: t ~ U{1..T} (every value, T included) and (x_t - m_t) / sigma_bar_t ~ N(0, 1).
    4000 pixel draws: mean and variance at 6 standard errors (failure probability < 1e-8)."""
    sched = IRSDEScheduler(max_sigma=50, num_train_timesteps=10, schedule="cosine", eps=0.005)
    net = LinearNoiseNet(torch.float64)
    data = batch(seed=2)
    torch.manual_seed(0)
    for _ in range(200):
        OBJECTIVES["sde"](net, data, sched, SimpleNamespace(loss="l1"))
    x0, mu = data["gt"].numpy(), data["lq"].numpy()
    ts = np.concatenate([s[2].numpy() for s in net.seen])
    assert set(ts.tolist()) == set(range(1, 11))      # 600 draws: a value is missed with p < 1e-27
    cum = sched.thetas_cumsum.numpy()
    thetas = np.concatenate([np.full(1, 0.0), np.cumsum(np.asarray(sched.thetas)[1:])])  # Theta_t, independent
    np.testing.assert_allclose(cum, thetas, rtol=1e-12, atol=1e-15)
    dt = -math.log(0.005) / cum[-1]
    z = []
    for x_t, _, t in net.seen:
        a = np.exp(-cum[t.numpy()] * dt).reshape(-1, 1, 1, 1)
        z.append((x_t.numpy() - mu - a * (x0 - mu)) / (50 / 255 * np.sqrt(1 - a ** 2)))
    z = np.concatenate(z).reshape(-1)
    n = z.size
    assert abs(z.mean()) < 6 / math.sqrt(n) and abs(z.var() - 1) < 6 * math.sqrt(2 / n), (z.mean(), z.var())


# ------------------------------------------------------------------ regressor
class AffineRestorer(nn.Module):
    """y = a lq + b_c [+ k cond]; ``stages=2`` returns [y, 0.5 y + 0.5 lq] (HINet-style)."""

    def __init__(self, stages=1):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(1.3))
        self.b = nn.Parameter(torch.tensor([0.02, -0.05, 0.01]))
        self.k = nn.Parameter(torch.tensor(0.2))
        self.stages = stages

    def forward(self, lq, cond=None):
        y = self.a * lq + self.b.view(1, -1, 1, 1)
        y = y if cond is None else y + self.k * cond
        return y if self.stages == 1 else [y, 0.5 * y + 0.5 * lq]


def regressor_loss_np(p, lq, gt, cond, name, stages):
    a, b, k = p[0], p[1:4], p[4]
    y = a * lq + b.reshape(1, -1, 1, 1) + (0 if cond is None else k * cond)
    outputs = [y] if stages == 1 else [y, 0.5 * y + 0.5 * lq]
    total = 0.0
    for out in outputs:
        d = out - gt
        if name == "l1":
            total += np.abs(d).mean()
        elif name == "charbonnier":
            total += np.sqrt(d ** 2 + 1e-6).mean()
        elif name == "psnr":            # NAFNet: mean_b 10 log10(mse_b + 1e-8) = -PSNR
            total += (10 * np.log10((d ** 2).reshape(len(d), -1).mean(axis=1) + 1e-8)).mean()
        elif name == "l1_fft":          # NAFFT-Net: L1 + 0.05 mean |fft2(pred) - fft2(gt)|
            total += np.abs(d).mean() + 0.05 * np.abs(np.fft.fft2(out) - np.fft.fft2(gt)).mean()
    return total


@pytest.mark.parametrize("name, stages, cond", [("l1", 1, False), ("psnr", 1, False), ("charbonnier", 1, False),
                                                ("l1_fft", 1, False), ("psnr", 1, True), ("l1", 2, False)])
def test_regressor_objective_one_step_is_pinned(name, stages, cond):
    data = batch(torch.float32, seed=4, cond=cond)
    model = AffineRestorer(stages)
    before = np.concatenate([p.detach().double().reshape(-1).numpy() for p in model.parameters()])
    loss, logs = OBJECTIVES["regressor"](model, data, None, SimpleNamespace(loss=name, fft_loss_weight=0.05))
    lq, gt = data["lq"].double().numpy(), data["gt"].double().numpy()
    c = data["cond"].double().numpy() if cond else None
    f = lambda p: regressor_loss_np(p, lq, gt, c, name, stages)  # noqa: E731
    assert loss.item() == pytest.approx(f(before), rel=1e-5, abs=1e-6)
    grad, after = sgd_step(model, loss)
    want = fd_grad(f, before)
    np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    np.testing.assert_allclose(after, before - LR * want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    if stages == 2:
        assert set(logs) == {"loss", "loss_stage1", "loss_stage2"}


# ------------------------------------------------------------------ latent_autoencoder
class ToyLatentAE(nn.Module):
    """encode: latent = p avgpool2(x) + q, skips = [s x]; decode: r up2(latent) + e skips[0]."""

    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(1.5))
        self.q = nn.Parameter(torch.tensor(-0.2))
        self.s = nn.Parameter(torch.tensor(0.3))
        self.r = nn.Parameter(torch.tensor(0.6))
        self.e = nn.Parameter(torch.tensor(0.5))

    def encode(self, x):
        return self.p * torch.nn.functional.avg_pool2d(x, 2) + self.q, [self.s * x]

    def decode(self, latent, skips):
        return self.r * latent.repeat_interleave(2, 2).repeat_interleave(2, 3) + self.e * skips[0]


def latent_ae_loss_np(params, lq, gt):
    """L1(rec_lq, lq) + L1(rec_gt, gt) + L1(decode(z_gt, skips_lq), gt)
    + 0.001 (pen(z_lq) + pen(z_gt)), pen(z) = mean_{b,c} [m_bc^2 + (s_bc - 1)^2] with m, s the spatial
    mean and (Bessel-corrected) std of each channel."""
    p, q, s, r, e = params
    enc = lambda x: (p * avgpool2_np(x) + q, s * x)  # noqa: E731
    dec = lambda z, skip: r * z.repeat(2, axis=2).repeat(2, axis=3) + e * skip  # noqa: E731

    def pen(z):
        flat = z.reshape(z.shape[0], z.shape[1], -1)
        return (flat.mean(axis=2) ** 2 + (flat.std(axis=2, ddof=1) - 1) ** 2).mean()

    (z_lq, sk_lq), (z_gt, sk_gt) = enc(lq), enc(gt)
    l1 = lambda a, b: np.abs(a - b).mean()  # noqa: E731
    return (l1(dec(z_lq, sk_lq), lq) + l1(dec(z_gt, sk_gt), gt) + l1(dec(z_gt, sk_lq), gt)
            + 0.001 * (pen(z_lq) + pen(z_gt)))


def test_latent_autoencoder_objective_one_step_is_pinned():
    data = batch(torch.float32, seed=5)
    ae = ToyLatentAE()
    module = training_module("latent_autoencoder", ae)
    before = np.concatenate([p.detach().double().reshape(-1).numpy() for p in ae.parameters()])
    loss, logs = OBJECTIVES["latent_autoencoder"](module, data, None, SimpleNamespace(loss="l1"))
    lq, gt = data["lq"].double().numpy(), data["gt"].double().numpy()
    f = lambda p: latent_ae_loss_np(p, lq, gt)  # noqa: E731
    assert loss.item() == pytest.approx(f(before), rel=1e-5)
    assert logs["loss_rec"] + logs["loss_replace"] + 0.001 * logs["latent_reg"] == pytest.approx(logs["loss"], rel=1e-5)
    grad, after = sgd_step(ae, loss)
    want = fd_grad(f, before)
    np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    np.testing.assert_allclose(after, before - LR * want, rtol=1e-5, atol=1e-5 * np.abs(want).max())

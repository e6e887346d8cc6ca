"""Intermediate states of every sampler, written against docs/sde.md and the official schedule arrays.

The oracle tests of test_samplers.py end with a jump to t = 0 that returns x0 whatever the earlier
steps did. Here every state x_s of a loop is checked:

- replayed with the update rules of docs/sde.md, implemented below in numpy on the official float64
  schedule (tests/data/ir_sde_*.npz), with an imperfect noise predictor and the drawn noise injected
  (``variance_noise``): every sampler, every step, at float64 precision;
- for the samplers that keep the forward marginal when x0_hat = x0 (posterior at any eta, mr_sde,
  mr_ode), the law of x_s against N(mu + alpha_s (x0 - mu), sigma_bar_s^2), sampled;
- for the Euler sde sampler, which does not keep it, against the exact law of its own linear recursion.

Statistical checks: N = 2^18 (2^16 for the Gaussian-data output) independent pixels per state; the
standardised mean and variance are compared at 6 standard errors (1/sqrt(N) and sqrt(2/N): 0.012
and 0.017 for 2^18). A two-sided 6-sigma miss has probability 2e-9; the file makes 124 such checks,
so correct samplers fail with probability below 3e-7 (the seeds are fixed: the outcome is in fact
reproducible). A wrong coefficient moves a state by many times that: leaving the posterior noise
unscaled by eta adds (1 - eta^2) (1 - A^2) / (1 - B^2) to the standardised variance, at least 0.48
for eta = 0.6 at the 8-step states checked, against a tolerance of 0.017.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from refusion.schedulers import IRSDEScheduler
from refusion.schedulers import samplers as S

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny tensors, a shared CPU

F64 = torch.float64
REF = np.load(Path(__file__).parent / "data" / "ir_sde_cosine_s50_T100_eps0.005.npz")
LAM = float(REF["max_sigma"])          # 50 / 255, from the official code
DT = float(REF["dt"])
THETA, THETA_CUM = REF["thetas"], REF["thetas_cumsum"]


def alpha(t: int) -> float:
    return math.exp(-THETA_CUM[t] * DT)


def sigma_bar(t: int) -> float:
    return LAM * math.sqrt(1 - alpha(t) ** 2)


def half_log_snr(t: int) -> float:
    a = alpha(t)
    return math.log(a / math.sqrt(1 - a * a)) if t > 0 else math.inf


# ------------------------------------------------------------------ docs/sde.md, in numpy
class Reference:
    """One sampler's update t -> s from docs/sde.md on numpy arrays (y = x - mu)."""

    def __init__(self, sampler: str, eta: float = 1.0, order: int = 2):
        self.sampler, self.eta, self.order = sampler, eta, order
        self.x0_prev, self.h_prev = None, None

    def step(self, eps, t, s, x, mu, z):
        a_t, a_s, sb_t, sb_s = alpha(t), alpha(s), sigma_bar(t), sigma_bar(s)
        x0_hat = mu + (x - mu - sb_t * eps) / a_t
        if self.sampler in ("sde", "ode"):
            th = THETA_CUM[t] - THETA_CUM[s]                       # sum_{k=s+1..t} theta_k
            score = -eps / sb_t
            if self.sampler == "sde":
                return x - (th * (mu - x) - 2 * LAM ** 2 * th * score) * DT - math.sqrt(2 * LAM ** 2 * th * DT) * z
            return x - (th * (mu - x) - LAM ** 2 * th * score) * DT
        if self.sampler == "posterior":
            A, B, C = a_t / a_s, a_t, a_s
            c = A * (1 - C ** 2) / (1 - B ** 2)
            var = (1 - A ** 2) * (1 - C ** 2) / (1 - B ** 2)         # posterior variance / lambda^2
            c_x = math.sqrt(c ** 2 + (1 - self.eta ** 2) * var / (1 - B ** 2))
            std = LAM * math.sqrt(max(var, 1e-20 * DT))              # the official clamp
            return mu + c_x * (x - mu) + (C - c_x * B) * (x0_hat - mu) + self.eta * std * z
        h = half_log_snr(s) - half_log_snr(t)
        data = x0_hat
        if self.order == 2 and self.x0_prev is not None and math.isfinite(h) and math.isfinite(self.h_prev):
            data = x0_hat + h / (2 * self.h_prev) * (x0_hat - self.x0_prev)
        self.x0_prev, self.h_prev = x0_hat, h
        e = math.exp(-h)                                              # alpha_t sb_s / (sb_t alpha_s)
        if self.sampler == "mr_ode":
            return mu + sb_s / sb_t * (x - mu) + a_s * (1 - e) * (data - mu)
        return mu + sb_s / sb_t * e * (x - mu) + a_s * (1 - e * e) * (data - mu) + sb_s * math.sqrt(1 - e * e) * z


def toy_noise(x, mu, t):
    """The official reference's imperfect predictor eps_hat = 4 (x - mu) + 0.002 t."""
    a, b = REF["toy_model_coefs"]
    return a * (x - mu) + b * t


CONFIGS = {
    "sde": (dict(sampler="sde"), dict(sampler="sde")),
    "ode": (dict(sampler="ode"), dict(sampler="ode")),
    "posterior eta=1": (dict(sampler="posterior"), dict(sampler="posterior")),
    "posterior eta=0.7": (dict(sampler="posterior", eta=0.7), dict(sampler="posterior", eta=0.7)),
    "posterior eta=0.3": (dict(sampler="posterior", eta=0.3), dict(sampler="posterior", eta=0.3)),
    "posterior eta=0": (dict(sampler="posterior", eta=0.0), dict(sampler="posterior", eta=0.0)),
    "mr_ode order 1": (dict(sampler="mr_ode", solver_order=1), dict(sampler="mr_ode", order=1)),
    "mr_ode order 2": (dict(sampler="mr_ode", solver_order=2), dict(sampler="mr_ode", order=2)),
    "mr_sde order 1": (dict(sampler="mr_sde", solver_order=1), dict(sampler="mr_sde", order=1)),
    "mr_sde order 2": (dict(sampler="mr_sde", solver_order=2), dict(sampler="mr_sde", order=2)),
}
SCHEDULES = {"7 steps": dict(num_inference_steps=7),
             "strides 1 and many": dict(timesteps=[100, 99, 60, 59, 20, 3, 2, 1])}


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_intermediate_state_follows_the_documented_update(name, schedule):
    """x_s at every step equals docs/sde.md's update on the official schedule (float64)."""
    kwargs, ref_kwargs = CONFIGS[name]
    sched = IRSDEScheduler(**kwargs)
    sched.set_timesteps(**SCHEDULES[schedule])
    steps = [int(t) for t in sched.timesteps]
    ref = Reference(**ref_kwargs)
    mu = REF["mu"].astype(np.float64)
    x = mu + LAM * REF["xT_noise"].astype(np.float64)
    x_torch, mu_torch = torch.from_numpy(x.copy()), torch.from_numpy(mu)
    for k, t in enumerate(steps):
        s = steps[k + 1] if k + 1 < len(steps) else 0
        z = REF["loop_noise"][k].astype(np.float64)
        want = ref.step(toy_noise(x, mu, t), t, s, x, mu, z)
        out = sched.step(toy_noise(x_torch, mu_torch, t), t, x_torch, mu=mu_torch, variance_noise=torch.from_numpy(z))
        got = out.prev_sample.numpy()
        scale = max(np.abs(want).max(), 1.0)
        assert np.abs(got - want).max() <= 1e-11 * scale, (name, t, s, np.abs(got - want).max())
        x, x_torch = want, out.prev_sample


@pytest.mark.parametrize("eta", [0.25, 0.5, 0.9])
def test_posterior_coefficients_with_eta_match_the_direct_formula(eta):
    """coef_x = sqrt(c^2 + (1 - eta^2) var / (1 - B^2)), coef_x0 = alpha_s - coef_x alpha_t,
    std = eta lambda sqrt(var) for many jumps t -> s, and the total variance is sigma_bar_s^2."""
    pairs = [(100, 99), (100, 60), (73, 12), (40, 39), (20, 1), (5, 0), (2, 1)]
    t = torch.tensor([p[0] for p in pairs])
    s = torch.tensor([p[1] for p in pairs])
    sched = IRSDEScheduler()
    got = S.posterior_coefficients(sched.thetas, sched.thetas_cumsum, sched.dt, sched.stationary_std, t, s, eta=eta)
    for i, (ti, si) in enumerate(pairs):
        A, B, C = alpha(ti) / alpha(si), alpha(ti), alpha(si)
        c = A * (1 - C ** 2) / (1 - B ** 2)
        var = (1 - A ** 2) * (1 - C ** 2) / (1 - B ** 2)
        c_x = math.sqrt(c ** 2 + (1 - eta ** 2) * var / (1 - B ** 2))
        assert float(got["coef_x"][i]) == pytest.approx(c_x, rel=1e-12, abs=1e-15)
        assert float(got["coef_x0"][i]) == pytest.approx(C - c_x * B, rel=1e-10, abs=1e-13)
        assert float(got["std"][i]) == pytest.approx(eta * LAM * math.sqrt(max(var, 1e-20 * DT)), rel=1e-12)
        if si > 0:   # x_s - mu = coef_x sigma_bar_t z + ... + std z': the marginal variance is kept
            total = float(got["coef_x"][i]) ** 2 * sigma_bar(ti) ** 2 + float(got["std"][i]) ** 2
            assert total == pytest.approx(sigma_bar(si) ** 2, rel=1e-12)


# ------------------------------------------------------------------ laws of the intermediate states
N = 2 ** 18
Z_TOL = 6.0


def oracle_loop(config: dict, steps: int, seed: int, start: str = "marginal"):
    """States of a loop over N pixels with x0 = 0.8, mu = 0.2 and the oracle noise predictor, from
    x_T drawn from the forward marginal at T (``start="marginal"``) or from mu + lambda z (``"mu"``,
    what a pipeline does; its mean misses the marginal's by alpha_T (x0 - mu) = 0.003)."""
    sched = IRSDEScheduler(**config)
    sched.set_timesteps(steps)
    x0, mu = torch.full((N,), 0.8, dtype=F64), torch.full((N,), 0.2, dtype=F64)
    g = torch.Generator().manual_seed(seed)
    if start == "marginal":
        x = sched.add_noise(x0, torch.randn(N, generator=g, dtype=F64), int(sched.timesteps[0]), mu=mu)
    else:
        x = sched.initial_sample(mu, generator=g)
    states = [(int(sched.timesteps[0]), x)]
    for k, t in enumerate(sched.timesteps):
        x = sched.step(sched.noise_from_x0(x, x0, t, mu=mu), t, x, mu=mu, generator=g).prev_sample
        s = int(sched.timesteps[k + 1]) if k + 1 < len(sched.timesteps) else 0
        states.append((s, x))
    return states


def assert_normal(sample: torch.Tensor, mean: float, std: float, what) -> None:
    z = (sample - mean) / std
    m, v = float(z.mean()), float(z.var())
    assert abs(m) < Z_TOL / math.sqrt(N), (what, "mean", m)
    assert abs(v - 1) < Z_TOL * math.sqrt(2 / N), (what, "variance", v)


@pytest.mark.parametrize("config", [
    dict(sampler="posterior", eta=1.0), dict(sampler="posterior", eta=0.6), dict(sampler="posterior", eta=0.2),
    dict(sampler="mr_sde", solver_order=2), dict(sampler="mr_sde", solver_order=1),
], ids=["posterior eta=1", "posterior eta=0.6", "posterior eta=0.2", "mr_sde order 2", "mr_sde order 1"])
def test_stochastic_jumps_keep_the_forward_marginal_at_every_step(config):
    """With x0_hat = x0, x_s ~ N(mu + alpha_s (x0 - mu), sigma_bar_s^2) at every intermediate s."""
    states = oracle_loop(config, steps=8, seed=11)
    for s, x in states[1:-1]:
        assert_normal(x, 0.2 + 0.6 * alpha(s), sigma_bar(s), (config, s))
    s, x = states[-1]
    assert s == 0 and float((x - 0.8).abs().max()) < 1e-9     # the last jump lands on x0


@pytest.mark.parametrize("config", [dict(sampler="posterior", eta=0.0), dict(sampler="mr_ode", solver_order=1),
                                    dict(sampler="mr_ode", solver_order=2)],
                         ids=["posterior eta=0", "mr_ode order 1", "mr_ode order 2"])
def test_deterministic_jumps_carry_the_initial_noise_unchanged(config):
    """With x0_hat = x0 the deterministic jumps keep the standardised noise of x_T: every state is
    mu + alpha_s (x0 - mu) + sigma_bar_s z_T exactly (so the marginal is kept too)."""
    states = oracle_loop(config, steps=6, seed=5)
    t_top, x_top = states[0]
    z_top = (x_top - 0.2 - 0.6 * alpha(t_top)) / sigma_bar(t_top)
    for s, x in states[1:]:
        torch.testing.assert_close(x, 0.2 + 0.6 * alpha(s) + sigma_bar(s) * z_top, rtol=0, atol=1e-13)


def test_euler_sde_states_follow_the_law_of_their_own_recursion():
    """The Euler sde sampler does not keep the marginal with few steps; with the oracle each step is
    x_s = a x_t + b + g z, so mean and variance follow E_s = a E_t + b, V_s = a^2 V_t + g^2 exactly."""
    states = oracle_loop(dict(sampler="sde"), steps=5, seed=3, start="mu")
    mean, var, x0, mu = 0.2, LAM ** 2, 0.8, 0.2
    for (t, _), (s, x) in zip(states[:-1], states[1:]):
        th, sb2, m_t = THETA_CUM[t] - THETA_CUM[s], sigma_bar(t) ** 2, mu + alpha(t) * (x0 - mu)
        # x_s = x_t - th dt (mu - x_t) - 2 lam^2 th dt (x_t - m_t) / sb2 - sqrt(2 lam^2 th dt) z
        a = 1 + th * DT - 2 * LAM ** 2 * th * DT / sb2
        b = -th * DT * mu + 2 * LAM ** 2 * th * DT * m_t / sb2
        mean, var = a * mean + b, a * a * var + 2 * LAM ** 2 * th * DT
        if var > 0:
            assert_normal(x, mean, math.sqrt(var), ("sde", s))
    assert var > 1e-3        # with 5 Euler steps the endpoint keeps noise: this law is not the oracle's x0


# ------------------------------------------------------------------ Gaussian data: the exact law of the output
# x0 ~ N(m, sd^2) per pixel and the exact data prediction D(x_t) = E[x0 | x_t], linear in x_t. Every
# sampler is then an affine recursion in x_T and the step noises, so its output x_0 is Gaussian with a
# mean (the recursion run on the means, noise 0) and a variance (the squared coefficients on the
# independent unit sources x_T and z_1..z_n, found by running the same recursion on coefficient
# vectors with mu = m = 0) known in closed form. The samplers are not exact here (few steps lose
# spread); this pins how far they are from the data law instead of a measured spread.
SD = 0.15
N_PIX = 2 ** 16


def gaussian_data(seed=0):
    g = np.random.default_rng(seed)
    mu = 0.2 + 0.6 * g.random(N_PIX)
    m = 0.3 + 0.2 * g.random(N_PIX)
    return mu, m


def exact_x0(x, t, mu, m):
    a, sb = alpha(t), sigma_bar(t)
    return m + a * SD ** 2 / (a * a * SD ** 2 + sb * sb) * (x - mu - a * (m - mu))


def gaussian_output_law(ref_kwargs: dict, steps: list[int], mu, m):
    """(mean of x_0 per pixel, coefficient vector of x_0 on the unit sources [x_T noise, z_1..z_n])."""
    n = len(steps)

    def run(x, mu_, m_, noise_vectors):
        ref = Reference(**ref_kwargs)
        for k, t in enumerate(steps):
            s = steps[k + 1] if k + 1 < n else 0
            d = exact_x0(x, t, mu_, m_)
            eps = (x - mu_ - alpha(t) * (d - mu_)) / sigma_bar(t)
            x = ref.step(eps, t, s, x, mu_, noise_vectors[k])
        return x

    mean = run(mu.copy(), mu, m, [0.0] * n)
    unit = np.eye(n + 1)
    coefficients = run(LAM * unit[0], 0.0, 0.0, [unit[k + 1] for k in range(n)])
    return mean, coefficients


GAUSSIAN_CONFIGS = {name: CONFIGS[name] for name in
                    ("sde", "posterior eta=1", "posterior eta=0.3", "mr_sde order 1", "mr_sde order 2",
                     "ode", "posterior eta=0", "mr_ode order 1", "mr_ode order 2")}


@pytest.mark.parametrize("steps", [5, 20])
@pytest.mark.parametrize("name", list(GAUSSIAN_CONFIGS))
def test_output_law_on_gaussian_data_is_the_closed_form(name, steps):
    kwargs, ref_kwargs = GAUSSIAN_CONFIGS[name]
    sched = IRSDEScheduler(prediction_type="sample", **kwargs)
    sched.set_timesteps(steps)
    mu_np, m_np = gaussian_data()
    mu = torch.from_numpy(mu_np)
    g = torch.Generator().manual_seed(21)
    x = x_T = sched.initial_sample(mu, generator=g)
    for t in sched.timesteps:
        x = sched.step(torch.from_numpy(exact_x0(x.numpy(), int(t), mu_np, m_np)), t, x, mu=mu, generator=g).prev_sample
    mean, coefficients = gaussian_output_law(ref_kwargs, [int(t) for t in sched.timesteps], mu_np, m_np)
    if np.abs(coefficients[1:]).max() == 0:       # deterministic: x_0 = mean + gain (x_T - mu), exactly
        gain = coefficients[0] / LAM
        np.testing.assert_allclose(x.numpy(), mean + gain * (x_T.numpy() - mu_np), rtol=0, atol=1e-12)
    else:
        std = float(np.sqrt((coefficients ** 2).sum()))
        z = (x.numpy() - mean) / std
        assert abs(z.mean()) < Z_TOL / math.sqrt(N_PIX), (name, steps, z.mean())
        assert abs(z.var() - 1) < Z_TOL * math.sqrt(2 / N_PIX), (name, steps, z.var())


# ------------------------------------------------------------------ the DenoisingSDE's posterior jumps
def cosine_schedule_np(T: int, lam: float, eps: float, s: float = 0.008):
    """FACTS: theta_i = 1 - abar_{i+1}, abar_k = cos^2(((k/n) + s)/(1 + s) pi/2) / abar_0, n = T + 2;
    Theta_t = cumsum(theta)_t - theta_0, dt = -ln(eps) / Theta_T; returns (alpha_t, sigma_bar_t)."""
    n = T + 2
    k = np.linspace(0, n, n + 1)
    abar = np.cos(((k / n) + s) / (1 + s) * np.pi / 2) ** 2
    thetas = 1 - (abar / abar[0])[1:-1]
    cum = np.cumsum(thetas) - thetas[0]
    dt = -math.log(eps) / cum[-1]
    a = np.exp(-cum * dt)
    return a, lam * np.sqrt(1 - a ** 2)


def test_numpy_cosine_schedule_is_the_official_one():
    a, sb = cosine_schedule_np(100, LAM, 0.005)
    np.testing.assert_allclose(a, [alpha(t) for t in range(101)], rtol=1e-12)
    np.testing.assert_allclose(sb, REF["sigma_bars"], rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("eta", [1.0, 0.5, 0.0])
def test_denoising_sde_posterior_keeps_its_marginal_at_every_step(eta):
    """DenoisingSDE (mean x0, eps 0.04): with x0_hat = x0, x_s ~ N(x0, sigma_bar_s^2) at every step;
    eta = 0 carries the standardised noise of x_T unchanged."""
    from refusion.schedulers.denoising_sde import DenoisingSDEScheduler

    sched = DenoisingSDEScheduler(sampler="posterior", eta=eta)
    sched.set_timesteps(7)
    _, sb = cosine_schedule_np(100, LAM, 0.04)
    g = torch.Generator().manual_seed(13)
    x0 = torch.full((N,), 0.7, dtype=F64)
    z_top = torch.randn(N, generator=g, dtype=F64)
    x = x0 + float(sb[100]) * z_top
    steps = [int(t) for t in sched.timesteps]
    for k, t in enumerate(steps):
        s = steps[k + 1] if k + 1 < len(steps) else 0
        x = sched.step((x - x0) / float(sb[t]), t, x, generator=g).prev_sample
        if s == 0:
            assert float((x - x0).abs().max()) < 1e-9
        elif eta == 0:
            torch.testing.assert_close(x, x0 + float(sb[s]) * z_top, rtol=0, atol=1e-13)
        else:
            assert_normal(x, 0.7, float(sb[s]), ("denoising posterior", eta, s))

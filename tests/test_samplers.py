"""Samplers: stride-1 reduction, exact identities between samplers, toy problems with an oracle
(exact x0 known; Gaussian data with a known probability-flow endpoint), forward marginal,
per-sample generators."""
import pytest
import torch

from refusion.schedulers import IRSDEScheduler
from refusion.schedulers import samplers as S

F64 = torch.float64


def toy_problem(shape=(2, 3, 8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=g, dtype=F64)
    mu = 0.6 * x0 + 0.2 + 0.05 * torch.randn(shape, generator=g, dtype=F64)   # a "degraded" image
    return x0, mu


def run(sched, model, mu, steps=None, seed=1, timesteps=None):
    """The sampling loop a pipeline runs: x_T = mu + lambda z, then ``step`` over the schedule."""
    sched.set_timesteps(steps, timesteps=timesteps)
    g = torch.Generator().manual_seed(seed)
    x = sched.initial_sample(mu, generator=g)
    for t in sched.timesteps:
        x = sched.step(model(x, int(t)), t, x, mu=mu, generator=g).prev_sample
    return x


def toy_predictor(mu):
    return lambda x, t: 4.0 * (x - mu) + 0.002 * t


# ------------------------------------------------------------------ stride 1 == official full step
@pytest.mark.parametrize("sampler", ["sde", "ode", "posterior"])
def test_stride_one_steps_equal_full_schedule_steps(sampler):
    x0, mu = toy_problem()
    full, mixed = IRSDEScheduler(sampler=sampler), IRSDEScheduler(sampler=sampler)
    mixed.set_timesteps(timesteps=[100, 99, 60, 59, 20, 3, 2, 1])
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    for t in (100, 60, 3, 2, 1):               # the steps of ``mixed`` that go to t - 1
        x = full.add_noise(x0, z, t, mu=mu)
        eps = toy_predictor(mu)(x, t)
        a = full.step(eps, t, x, mu=mu, variance_noise=z).prev_sample
        b = mixed.step(eps, t, x, mu=mu, variance_noise=z).prev_sample
        assert torch.equal(a, b), (sampler, t)
        if sampler == "posterior":             # and equal to the training-time formulas
            want = full.posterior_mean(x, full.x0_from_noise(x, eps, t, mu=mu), t, t - 1, mu=mu) \
                + full.posterior_std(t, t - 1) * z
            torch.testing.assert_close(a, want, rtol=1e-13, atol=1e-15)


def test_merged_euler_step_integrates_theta_over_the_stride():
    s = IRSDEScheduler(sampler="ode")
    s.set_timesteps(timesteps=[100, 70, 1])
    t, r = torch.tensor([100, 70, 1]), torch.tensor([70, 1, 0])
    c = S.euler_coefficients(s.thetas, s.thetas_cumsum, s.dt, s.stationary_std, t, r)
    want = (s.thetas_cumsum[t] - s.thetas_cumsum[r]) * s.dt
    want[-1] = s.thetas[1] * s.dt
    torch.testing.assert_close(c["theta_dt"], want, rtol=1e-14, atol=0)
    torch.testing.assert_close(c["g2_dt"], 2 * s.stationary_std ** 2 * want, rtol=1e-14, atol=0)


def test_posterior_jumps_compose_like_a_markov_chain():
    """q(x_s | x_t, x0) reached directly equals the chain t -> r -> s (mean coefficients, variance)."""
    s = IRSDEScheduler()
    T, th, cs = torch.tensor, s.thetas, s.thetas_cumsum
    for t, r, q in [(100, 60, 7), (80, 79, 0), (37, 12, 11)]:
        P = lambda a, b: S.posterior_coefficients(th, cs, s.dt, s.stationary_std, T([a]), T([b]))  # noqa: E731
        ts, tr, rs = P(t, q), P(t, r), P(r, q)
        torch.testing.assert_close(ts["coef_x"], rs["coef_x"] * tr["coef_x"], rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(ts["coef_x0"], rs["coef_x"] * tr["coef_x0"] + rs["coef_x0"], rtol=1e-12, atol=0)
        if q > 0:
            torch.testing.assert_close(ts["std"] ** 2, rs["coef_x"] ** 2 * tr["std"] ** 2 + rs["std"] ** 2,
                                       rtol=1e-12, atol=0)


# ------------------------------------------------------------------ identities between samplers
@pytest.mark.parametrize("steps", [5, 10, 100])
@pytest.mark.parametrize("stochastic", [False, True])
def test_first_order_mr_equals_posterior(steps, stochastic):
    """Exponential integrator of order 1 == posterior sampler: mr_ode <-> eta = 0, mr_sde <-> eta = 1."""
    _, mu = toy_problem()
    model = toy_predictor(mu)
    mr = IRSDEScheduler(sampler="mr_sde" if stochastic else "mr_ode", solver_order=1)
    post = IRSDEScheduler(sampler="posterior", eta=1.0 if stochastic else 0.0)
    a, b = run(mr, model, mu, steps), run(post, model, mu, steps)
    # atol: the posterior's last std is the official clamp lambda * sqrt(1e-20 dt) ~ 6e-12, not 0
    torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-10)


def test_sample_prediction_equals_epsilon_prediction():
    x0, mu = toy_problem()
    eps_s, x0_s = IRSDEScheduler(sampler="mr_ode"), IRSDEScheduler(sampler="mr_ode", prediction_type="sample")
    model = toy_predictor(mu)
    a = run(eps_s, model, mu, 10)
    b = run(x0_s, lambda x, t: eps_s.x0_from_noise(x, model(x, t), t, mu=mu), mu, 10)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_step_accepts_per_sample_timesteps():
    x0, mu = toy_problem()
    s = IRSDEScheduler(sampler="posterior", eta=0.0)
    s.set_timesteps(10)
    x = s.initial_sample(mu, generator=torch.Generator().manual_seed(0))
    eps = toy_predictor(mu)(x, 90)
    a = s.step(eps, 90, x, mu=mu).prev_sample
    b = s.step(eps, torch.tensor([90, 90]), x, mu=mu).prev_sample
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    c = s.step(eps, torch.tensor([90, 50]), x, mu=mu).prev_sample
    torch.testing.assert_close(c[0], a[0], rtol=0, atol=0)
    torch.testing.assert_close(c[1:], s.step(eps[1:], 50, x[1:], mu=mu[1:]).prev_sample, rtol=0, atol=0)


# ------------------------------------------------------------------ toy problem with an oracle
# Oracle noise predictor: the true noise of x_t given the known x0. Max |x_out - x0| bounds measured
# with this seed (docs/sde.md has the table); Euler sde/ode need many steps, the rest are exact.
ORACLE_BOUNDS = {
    "sde": {100: 2e-2, 20: 8e-2, 10: 0.18, 5: 0.5},
    "ode": {100: 2e-2, 20: 8e-2, 10: 0.18, 5: 0.45},
    "posterior": dict.fromkeys((100, 20, 10, 5), 1e-9),   # the final std is clamped to ~6e-12, not 0
    "posterior eta=0": dict.fromkeys((100, 20, 10, 5), 1e-12),
    "mr_ode": dict.fromkeys((100, 20, 10, 5), 1e-12),
    "mr_sde": dict.fromkeys((100, 20, 10, 5), 1e-12),
}
CONFIGS = {"sde": dict(sampler="sde"), "ode": dict(sampler="ode"), "posterior": dict(sampler="posterior"),
           "posterior eta=0": dict(sampler="posterior", eta=0.0), "mr_ode": dict(sampler="mr_ode"),
           "mr_sde": dict(sampler="mr_sde")}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_sampler_recovers_x0_with_an_oracle(name):
    x0, mu = toy_problem()
    s = IRSDEScheduler(**CONFIGS[name])
    errors = {}
    for steps in (100, 20, 10, 5):
        out = run(s, lambda x, t: s.noise_from_x0(x, x0, t, mu=mu), mu, steps)
        errors[steps] = float((out - x0).abs().max())
        assert errors[steps] <= ORACLE_BOUNDS[name][steps], (name, steps, errors[steps])
    if name in ("sde", "ode"):      # first-order Euler: the error shrinks with the step count
        assert errors[100] < errors[20] < errors[10] < errors[5]


# ------------------------------------------------------------------ Gaussian data: convergence order
def gaussian_problem():
    g = torch.Generator().manual_seed(0)
    mu = 0.2 + 0.6 * torch.rand(1, 1, 64, 64, generator=g, dtype=F64)
    m = 0.3 + 0.2 * torch.rand(mu.shape, generator=g, dtype=F64)
    return mu, m, 0.15


def gaussian_x0_oracle(sched, mu, m, sd):
    """E[x0 | x_t] when x0 ~ N(m, sd^2) per pixel (the exact data prediction)."""
    def model(x, t):
        a, sb = float(sched.signal_scale(t)), float(sched.sigma_bar(t))
        return m + a * sd ** 2 / (a * a * sd ** 2 + sb * sb) * (x - mu - a * (m - mu))
    return model


def test_second_order_mr_ode_converges_to_the_exact_flow():
    """For Gaussian data the probability-flow ODE keeps the standardised value xi, so the exact
    endpoint of x_T is m + sd * xi_T. Measured RMSE, order 1 / order 2: 100 steps 2.7e-3 / 1.5e-4,
    20 steps 1.3e-2 / 2.6e-3, 10 steps 2.5e-2 / 1.3e-3, 5 steps 4.6e-2 / 3.4e-2."""
    mu, m, sd = gaussian_problem()
    errors = {}
    for order in (1, 2):
        s = IRSDEScheduler(sampler="mr_ode", solver_order=order, prediction_type="sample")
        a, sb = float(s.signal_scale(100)), float(s.sigma_bar(100))
        for steps in (100, 20, 10, 5):
            out = run(s, gaussian_x0_oracle(s, mu, m, sd), mu, steps)
            x_T = s.initial_sample(mu, generator=torch.Generator().manual_seed(1))
            exact = m + sd * (x_T - mu - a * (m - mu)) / (a * a * sd ** 2 + sb * sb) ** 0.5
            errors[order, steps] = float((out - exact).pow(2).mean().sqrt())
    for steps in (100, 20, 10):
        assert errors[2, steps] * 4 < errors[1, steps], errors
    assert errors[2, 100] < 3e-4 and errors[2, 10] < 3e-3 and errors[1, 100] < 4e-3, errors


def test_stochastic_samplers_reach_the_data_distribution():
    """Standardised samples (x - m) / sd should be N(0, 1); measured spread per sampler and steps."""
    mu, m, sd = gaussian_problem()
    bounds = {("posterior", 100): (0.93, 1.0), ("mr_sde", 10): (0.95, 1.06), ("mr_sde", 100): (0.97, 1.04),
              ("sde", 100): (0.98, 1.06)}
    for (sampler, steps), (low, high) in bounds.items():
        s = IRSDEScheduler(sampler=sampler, prediction_type="sample")
        z = (run(s, gaussian_x0_oracle(s, mu, m, sd), mu, steps) - m) / sd
        assert abs(float(z.mean())) < 0.05 and low < float(z.std()) < high, (sampler, steps, z.std())


# ------------------------------------------------------------------ forward process
def test_forward_marginal_mean_and_variance():
    s = IRSDEScheduler()
    n, g = 20000, torch.Generator().manual_seed(0)
    x0, mu = torch.full((n,), 0.8, dtype=F64), torch.full((n,), 0.2, dtype=F64)
    for t in (10, 50, 100):     # the closed form, sampled
        xt = s.add_noise(x0, torch.randn(n, generator=g, dtype=F64), t, mu=mu)
        assert float(xt.mean()) == pytest.approx(0.2 + 0.6 * float(s.signal_scale(t)), abs=4 * float(s.sigma_bar(t)) / n ** 0.5)
        assert float(xt.std()) == pytest.approx(float(s.sigma_bar(t)), rel=0.03)
    x = x0                      # the SDE itself (official Euler forward steps) reaches the same marginal
    for t in range(1, 31):
        x = s.forward_step(x, t, mu=mu, noise=torch.randn(n, generator=g, dtype=F64))
    assert float(x.mean()) == pytest.approx(float(s.mu_bar(x0[:1], 30, mu=mu[:1])), abs=0.004)
    assert float(x.std()) == pytest.approx(float(s.sigma_bar(30)), rel=0.02)


def test_sample_timesteps():
    s = IRSDEScheduler(num_train_timesteps=10)
    t = s.sample_timesteps(4000, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.int64 and t.shape == (4000,)
    assert int(t.min()) == 1 and int(t.max()) == 10 and len(t.unique()) == 10


# ------------------------------------------------------------------ per-sample generators
@pytest.mark.parametrize("sampler", ["sde", "posterior", "mr_sde"])
def test_generator_list_gives_per_sample_reproducibility(sampler):
    _, mu = toy_problem(shape=(3, 3, 8, 8))
    s = IRSDEScheduler(sampler=sampler)

    def sample(idx, seeds):
        s.set_timesteps(5)
        gens, model = [torch.Generator().manual_seed(k) for k in seeds], toy_predictor(mu[idx])
        x = s.initial_sample(mu[idx], generator=gens)
        for t in s.timesteps:
            x = s.step(model(x, int(t)), t, x, mu=mu[idx], generator=gens).prev_sample
        return x

    batch = sample(slice(0, 3), [11, 12, 13])
    for i, seed in enumerate([11, 12, 13]):
        torch.testing.assert_close(sample(slice(i, i + 1), [seed]), batch[i:i + 1], rtol=0, atol=0)
    assert not torch.equal(batch[0], sample(slice(0, 1), [99])[0])


def test_timesteps_trailing_spacing():
    s = IRSDEScheduler()
    s.set_timesteps(5)
    assert s.timesteps.dtype == torch.int64 and s.timesteps.tolist() == [100, 80, 60, 40, 20]
    s.set_timesteps(3)
    assert s.timesteps.tolist() == [100, 67, 33]
    s.set_timesteps(1)
    assert s.timesteps.tolist() == [100]

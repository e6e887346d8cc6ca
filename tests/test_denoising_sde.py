"""DenoisingSDEScheduler against the official DenoisingSDE's own float32 numbers
(tests/data/variants/dsde_cosine_s50_T100.npz), float64 identities, closed-form optimal predictors
driving the samplers (intermediate states), the training objective and the pipeline loop, step
positions, config round trip and validation."""
import math
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from refusion.inference.pipeline import sde_sample
from refusion.schedulers import DenoisingSDEScheduler, IRSDESchedulerOutput
from refusion.schedulers import samplers as S
from refusion.training.objectives import sde_objective

DATA = Path(__file__).parent / "data" / "variants" / "dsde_cosine_s50_T100.npz"
F64 = torch.float64
U32 = 2.0 ** -24                 # float32 unit roundoff
THETA_LOSS = 2.0 ** -22          # |theta_f32 - theta|: 1 - abar with abar <= 1 in float32 (a few ulp of 1.0)
LAM = 50 / 255


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(DATA))


@pytest.fixture(scope="module")
def sched():
    return DenoisingSDEScheduler(max_sigma=50, num_train_timesteps=100, schedule="cosine")


def f64(a):
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


def rel_err(got, want):
    """max |got - want| / max |want|."""
    got = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.abs(got.astype(np.float64) - want).max() / max(np.abs(want).max(), 1e-300))


def official_arrays(ref):
    """The official float32 schedule, widened to float64 (no digits added or lost)."""
    return {name: f64(ref[name]) for name in ("thetas", "thetas_cumsum", "sigmas", "sigma_bars")} | \
        {"dt": float(ref["dt"])}


def float32_loss(sched):
    """Per-entry bounds on |official float32 - exact| implied by the float32 theta grid (THETA_LOSS)
    and float32 arithmetic; relative unless the name says abs."""
    t = torch.arange(101, dtype=F64)
    th, cs, dt = sched.thetas, sched.thetas_cumsum, sched.dt
    cs_abs = t * THETA_LOSS + 4 * t * U32 * cs               # per-term errors + summation rounding
    dt_rel = float(cs_abs[-1] / cs[-1]) + 4 * U32
    x = 2 * cs * dt                                           # sigma_bar^2 = lam^2 (1 - e^{-x})
    x_abs = 2 * dt * cs_abs + x * dt_rel + 4 * U32 * x
    one_minus = 1 - torch.exp(-x)
    sb_rel = 0.5 * (x_abs * torch.exp(-x) + 2 * U32) / one_minus + 4 * U32
    return {"thetas_abs": torch.full_like(th, THETA_LOSS), "thetas_cumsum_abs": cs_abs, "dt": dt_rel,
            "sigmas": 0.5 * THETA_LOSS / th + 4 * U32, "sigma_bars": sb_rel,
            "decay": x_abs + 8 * U32}        # relative error of exp(-2 Theta_t dt)


def toy_score(ref):
    """The reference's toy score -(x - x0)."""
    return -(f64(ref["x"]) - f64(ref["x0"]))


def run(sched, model, y, steps=None, seed=1, timesteps=None):
    """The loop a pipeline runs; returns {timestep reached: state} including the start state."""
    sched.set_timesteps(steps, timesteps=timesteps)
    g = torch.Generator().manual_seed(seed)
    x = sched.initial_sample(y, generator=g)
    ts = sched.timesteps.tolist()
    states = {ts[0]: x}
    for t, s in zip(ts, ts[1:] + [0]):
        out = sched.step(model(x, t), t, x, generator=g)
        assert isinstance(out, IRSDESchedulerOutput)
        x = states[s] = out.prev_sample
    return states


# ------------------------------------------------------------------ schedule vs the official float32 arrays
def test_schedule_is_float64_and_matches_official_within_float32_loss(ref, sched):
    loss = float32_loss(sched)
    for name in ("thetas", "thetas_cumsum", "sigmas", "sigma_bars"):
        assert getattr(sched, name).dtype == F64 and getattr(sched, name).shape == (101,)
    assert isinstance(sched.dt, float)
    off = official_arrays(ref)
    assert ((sched.thetas - off["thetas"]).abs() <= loss["thetas_abs"]).all()
    assert ((sched.thetas_cumsum - off["thetas_cumsum"]).abs() <= loss["thetas_cumsum_abs"]).all()
    assert abs(sched.dt / off["dt"] - 1) <= loss["dt"]
    for name in ("sigmas", "sigma_bars"):
        got, want = getattr(sched, name)[1:], off[name][1:]
        assert ((got - want).abs() <= loss[name][1:] * want).all(), name
    assert off["sigma_bars"][0] == sched.sigma_bars[0] == 0
    # where float32 loses digits: theta_1 = 1 - abar_2 keeps ~4.5 significant digits, sigma_bar_1 ~4
    assert 1e-5 < abs(float(sched.thetas[1] / off["thetas"][1]) - 1) < 1e-4
    assert 1e-5 < abs(float(sched.sigma_bars[1] / off["sigma_bars"][1]) - 1) < 1e-4
    # at large t the official arrays carry (nearly) full float32 precision
    assert abs(float(sched.thetas[100] / off["thetas"][100]) - 1) < 4 * U32
    assert abs(float(sched.sigma_bars[100] / off["sigma_bars"][100]) - 1) < 4 * U32


def test_schedule_of_the_official_thetas_is_float32_tight(ref):
    """Fed the official float32 theta grid, the schedule function reproduces every other official array
    to float32 rounding: theta's cancellation is the only real difference. (sigma_bar at small t
    inherits float32's cancellation in 1 - exp(-2 Theta dt) of the official code: up to ~750 ulp at t = 1.)"""
    off = official_arrays(ref)
    got = S.mean_reverting_schedule(off["thetas"], LAM, 0.04)
    assert abs(got["dt"] / off["dt"] - 1) <= 2 * U32
    t = torch.arange(101, dtype=F64)
    assert ((got["thetas_cumsum"] - off["thetas_cumsum"]).abs() <= t * U32 * off["thetas_cumsum"] + 1e-300).all()
    assert ((got["sigmas"] - off["sigmas"]).abs() <= 2 * U32 * off["sigmas"]).all()
    one_minus = 1 - torch.exp(-2 * off["thetas_cumsum"][1:] * off["dt"])
    assert ((got["sigma_bars"][1:] - off["sigma_bars"][1:]).abs()
            <= (U32 / one_minus + 4 * U32) * off["sigma_bars"][1:]).all()


def test_schedule_identities_in_float64(sched):
    lam, th, cs, dt = sched.stationary_std, sched.thetas, sched.thetas_cumsum, sched.dt
    assert lam == LAM and cs[0] == 0
    torch.testing.assert_close(cs, torch.cumsum(th, 0) - th[0], rtol=1e-15, atol=0)
    assert math.exp(-float(cs[-1]) * dt) == pytest.approx(0.04, rel=1e-13)          # eps fixed at 0.04
    torch.testing.assert_close(sched.sigmas ** 2, 2 * lam ** 2 * th, rtol=1e-13, atol=0)
    torch.testing.assert_close(sched.sigma_bars ** 2, lam ** 2 * (1 - torch.exp(-2 * cs * dt)), rtol=1e-12, atol=1e-300)
    assert float(sched.sigma_bars[-1]) == pytest.approx(lam * (1 - 0.04 ** 2) ** 0.5, rel=1e-13)
    # the training prediction's coefficient: g_t^2 (1 + exp(-2 Theta_t dt)) dt / 2 = lam^2 theta_t (1 + ...) dt
    t = torch.arange(1, 101)
    torch.testing.assert_close(sched.sde_score_coefs[1:], lam ** 2 * th[t] * (1 + torch.exp(-2 * cs[t] * dt)) * dt,
                               rtol=1e-13, atol=0)
    linear = DenoisingSDEScheduler(schedule="linear", num_train_timesteps=20, max_sigma=0.1)   # < 1: normalised
    scale = 1000 / 21
    torch.testing.assert_close(linear.thetas, torch.linspace(scale * 1e-4, scale * 0.02, 21, dtype=F64), rtol=1e-14, atol=0)
    assert linear.stationary_std == 0.1


# ------------------------------------------------------------------ toy-score arrays of the reference
def test_reverse_drifts_and_init_state_match_official(ref, sched):
    """sde_reverse_drift, ode_reverse_drift, init_state_from_noise (toy score -(x - x0)) at t = 1, 33, 100:
    (a) the pure step rules on the official float32 arrays: float32 rounding (<= 8 ulp); (b) the
    scheduler's float64 path: within the float32 loss of the official schedule at that t."""
    x, score, off, loss = f64(ref["x"]), toy_score(ref), official_arrays(ref), float32_loss(sched)
    ode = DenoisingSDEScheduler(sampler="ode")
    worst = {}
    for i, t in enumerate(int(v) for v in ref["t_list"]):
        # (a) official arrays, our formulas
        k = S.denoising_euler_coefficients(off["thetas"], off["thetas_cumsum"], off["dt"], LAM,
                                           torch.tensor([t]), torch.tensor([t - 1]), stochastic=True)["score_coef"]
        k_ode = S.denoising_euler_coefficients(off["thetas"], off["thetas_cumsum"], off["dt"], LAM,
                                               torch.tensor([t]), torch.tensor([t - 1]), stochastic=False)["score_coef"]
        assert rel_err(x - S.denoising_euler_step(x, score, k), ref["sde_reverse_drift"][i]) <= 8 * U32
        assert rel_err(x - S.denoising_euler_step(x, score, k_ode), ref["ode_reverse_drift"][i]) <= 8 * U32
        assert rel_err(x - off["sigma_bars"][t] * score, ref["init_state_from_noise"][i]) <= 2 * U32
        # (b) the scheduler (float64 schedule); score = -eps / sigma_bar_t
        eps = -score * float(sched.sigma_bar(t))
        bound = float(0.5 * THETA_LOSS / sched.thetas[t] * 2 + loss["dt"] + loss["decay"][t]) + 8 * U32
        e_sde = rel_err(x - sched.reverse_sde_mean(x, eps, t), ref["sde_reverse_drift"][i])
        e_ode = rel_err(x - ode.step(eps, t, x).prev_sample, ref["ode_reverse_drift"][i])
        e_init = rel_err(sched.x0_from_noise(x, score, t), ref["init_state_from_noise"][i])
        assert e_sde <= bound and e_ode <= bound, (t, e_sde, e_ode, bound)
        assert e_init <= float(loss["sigma_bars"][t]) * float(sched.sigma_bar(t)) + 2 * U32, (t, e_init)
        worst[t] = (e_sde, e_ode, e_init)
    # documented in docs/denoising_sde.md: float32 theta_1 costs the official drifts ~3.3e-5 at t = 1
    assert 1e-5 < worst[1][0] < 1e-4 and worst[100][0] < 1e-6, worst


def test_score_and_x0_conversions(ref, sched):
    x, x0 = f64(ref["x"]), f64(ref["x0"])
    for t in (1, 33, 100):
        eps = sched.noise_from_x0(x, x0, t)                                   # official get_real_noise
        torch.testing.assert_close(eps * sched.sigma_bar(t), x - x0, rtol=1e-14, atol=1e-16)
        score = sched.score_from_noise(eps, t)
        torch.testing.assert_close(score, -(x - x0) / sched.sigma_bar(t) ** 2, rtol=1e-13, atol=0)
        torch.testing.assert_close(sched.x0_from_noise(x, eps, t), x0, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(sched.x0_from_score(x, score, t), x0, rtol=1e-13, atol=1e-15)
        assert sched.mu_bar(x0, t) is x0                                      # the marginal mean is x0


# ------------------------------------------------------------------ training target and prediction
def test_training_target_and_prediction(ref, sched):
    """optimal_prev_sample = official reverse_optimum_step, reverse_sde_mean = official
    reverse_sde_step_mean (float64 transcriptions); with the true noise they agree to second order."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(100, 3, 4, 4, generator=g, dtype=F64)
    t = torch.arange(1, 101)
    x_t = sched.add_noise(x0, torch.randn(x0.shape, generator=g, dtype=F64), t)
    th, cs, dt = sched.thetas, sched.thetas_cumsum, sched.dt
    col = lambda v: v.reshape(-1, 1, 1, 1)
    A, B, C = (col(torch.exp(-v * dt)) for v in (th[t], cs[t], cs[t - 1]))
    target = A * (1 - C ** 2) / (1 - B ** 2) * (x_t - x0) + x0
    torch.testing.assert_close(sched.optimal_prev_sample(x_t, x0, t), target, rtol=1e-13, atol=1e-15)
    eps = sched.noise_from_x0(x_t, x0, t)
    score = -eps / col(sched.sigma_bars[t])
    drift = -0.5 * col(sched.sigmas[t]) ** 2 * (1 + col(torch.exp(-2 * cs[t] * dt))) * score * dt
    pred = sched.reverse_sde_mean(x_t, eps, t)
    torch.testing.assert_close(pred, x_t - drift, rtol=1e-13, atol=1e-15)
    # both are x0 + c (x_t - x0); the two c agree to O((theta dt)^2): the objective's optimum is the true noise
    gap = ((pred - target).abs() / (x_t - x0).abs()).amax(dim=(1, 2, 3))
    assert float(gap.max()) < 3e-3 and float(gap[0]) < 1e-8, gap


def test_sde_objective_drives_the_scheduler():
    """refusion.training.objectives.sde_objective calls sample_timesteps, add_noise, reverse_sde_mean and
    optimal_prev_sample with mu=, and calls the unconditional network as net(x_t, t)."""
    sched = DenoisingSDEScheduler()
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(4, 3, 8, 8, generator=g)
    noisy = gt + 0.1 * torch.randn(gt.shape, generator=g)
    batch, cfg = {"gt": gt, "lq": noisy}, types.SimpleNamespace(loss="l1")
    torch.manual_seed(0)
    # oracle: the true noise of x_t, recovered from the x0 the objective uses (the batch's gt)
    oracle = lambda x_t, t: sched.noise_from_x0(x_t, gt, t)
    loss, logs = sde_objective(oracle, batch, sched, cfg)
    assert logs["loss"] < 1e-4
    loss_zero, _ = sde_objective(lambda x_t, t: torch.zeros_like(x_t), batch, sched, cfg)
    assert float(loss_zero) > 10 * float(loss)


def test_forward_marginal_law(sched):
    n, g = 200_000, torch.Generator().manual_seed(0)
    x0 = torch.full((n,), 0.7, dtype=F64)
    for t in (1, 10, 50, 100):
        xt = sched.add_noise(x0, torch.randn(n, generator=g, dtype=F64), t)
        sb = float(sched.sigma_bar(t))
        assert float(xt.mean()) == pytest.approx(0.7, abs=5 * sb / n ** 0.5)    # no drift toward mu
        assert float(xt.std()) == pytest.approx(sb, rel=0.01)
    assert torch.equal(sched.add_noise(x0, torch.ones(n, dtype=F64), 0), x0)


# ------------------------------------------------------------------ posterior identities (float64)
def test_posterior_keeps_the_marginal_and_eta0_is_the_flow(sched):
    """With mu = x0 the IR-SDE posterior maps N(x0, sigma_bar_t^2) to N(x0, sigma_bar_s^2) for any s < t;
    eta = 0 leaves x_s - x0 = (sigma_bar_s / sigma_bar_t)(x_t - x0), the exact probability flow."""
    g = torch.Generator().manual_seed(0)
    t = torch.randint(2, 101, (64,), generator=g)
    s = (torch.rand(64, generator=g, dtype=F64) * t).long()
    args = (sched.thetas, sched.thetas_cumsum, sched.dt, sched.stationary_std, t, s)
    post = S.posterior_coefficients(*args)
    sb_t, sb_s = sched.sigma_bars[t], sched.sigma_bars[s]
    torch.testing.assert_close(post["coef_x"] ** 2 * sb_t ** 2 + post["std"] ** 2, sb_s ** 2, rtol=1e-12, atol=1e-20)
    torch.testing.assert_close(sched.posterior_std(t, s), post["std"], rtol=0, atol=0)
    flow = S.posterior_coefficients(*args, eta=0.0)
    torch.testing.assert_close(flow["coef_x"], sb_s / sb_t, rtol=1e-12, atol=1e-15)
    assert float(flow["std"].abs().max()) == 0


# ------------------------------------------------------------------ closed-form predictors driving the samplers
def true_noise(sched, x0):
    """The optimal noise predictor for point-mass data at x0: the true noise of x_t."""
    return lambda x, t: sched.noise_from_x0(x, x0, t)


def point_mass(shape=(4, 1, 128, 128)):
    g = torch.Generator().manual_seed(0)
    return torch.rand(shape, generator=g, dtype=F64), torch.randn(shape, generator=g, dtype=F64)


def test_deterministic_posterior_follows_the_exact_flow_at_every_state():
    """Point-mass data (the optimal predictor is the true noise): posterior eta = 0 keeps
    x_t - x0 = (sigma_bar_t / sigma_bar_start)(y - x0) at every intermediate state, any step count."""
    x0, z = point_mass((2, 3, 8, 8))
    s = DenoisingSDEScheduler(sampler="posterior", eta=0.0)
    y = s.add_noise(x0, z, 100)
    for steps in (100, 7, 1):
        states = run(s, true_noise(s, x0), y, steps)
        assert len(states) == steps + 1
        for t, x in states.items():
            torch.testing.assert_close(x - x0, z * s.sigma_bar(t), rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("steps", [100, 10, 3])
def test_posterior_keeps_the_marginal_law_at_every_state(steps):
    """Point-mass oracle, eta = 1: each state's residual x_t - x0 is N(0, sigma_bar_t^2) (262k pixels: the
    sample std's own spread is 0.0014, and 0.995-1.0075 was measured over three seeds)."""
    x0, z = point_mass((4, 1, 256, 256))
    s = DenoisingSDEScheduler(sampler="posterior")
    states = run(s, true_noise(s, x0), s.add_noise(x0, z, 100), steps)
    for t, x in states.items():
        r = x - x0
        if t == 0:
            assert float(r.abs().max()) < 1e-9                  # the official std clamp lambda sqrt(1e-20 dt)
        else:
            assert float(r.std()) / float(s.sigma_bar(t)) == pytest.approx(1.0, abs=0.01), t
            assert abs(float(r.mean())) < 0.01 * float(s.sigma_bar(t))


def test_euler_ode_converges_to_the_exact_flow_at_first_order():
    """Point-mass oracle: the official Euler ODE's residual ratio (x_t - x0) / (sigma_bar_t/sigma_bar_T (y - x0))
    (exactly 1 for the flow) at t/T = 0.1 ... 0.9 is 1.0007-1.089 with T = 100 and ~10x closer with T = 1000."""
    x0, z = point_mass((1, 1, 4, 4))
    errors = {}
    for T in (100, 1000):
        s = DenoisingSDEScheduler(sampler="ode", num_train_timesteps=T)
        states = run(s, true_noise(s, x0), s.add_noise(x0, z, T))
        for k in range(1, 10):
            t = T * k // 10
            ratio = (states[t] - x0) / (z * s.sigma_bar(t))
            assert float(ratio.max() - ratio.min()) < 1e-10          # deterministic, the same for every pixel
            errors[T, k] = float(ratio.mean()) - 1
        assert float((states[0] - x0).abs().max()) < (0.012 if T == 100 else 1e-3)
    for k in range(1, 10):
        assert 0 < errors[100, k] < 0.09 and 6 < errors[100, k] / errors[1000, k] < 12, (k, errors)
    assert errors[100, 9] < errors[100, 5] < errors[100, 1]


def test_euler_sde_keeps_the_marginal_law_approximately():
    """Point-mass oracle, official Euler–Maruyama (T = 100): residual std / sigma_bar_t at t >= 20 stays
    within 6% (measured 1.000-1.055); with T = 1000 within 1.5% (discretisation error, first order)."""
    x0, z = point_mass()
    for T, tol in ((100, 0.06), (1000, 0.015)):
        s = DenoisingSDEScheduler(sampler="sde", num_train_timesteps=T)
        states = run(s, true_noise(s, x0), s.add_noise(x0, z, T))
        for t in range(T // 5, T + 1, T // 10):
            assert float((states[t] - x0).std()) / float(s.sigma_bar(t)) == pytest.approx(1.0, abs=tol), (T, t)


def gaussian_data(shape=(4, 1, 128, 128)):
    g = torch.Generator().manual_seed(0)
    m = 0.3 + 0.4 * torch.rand(shape, generator=g, dtype=F64)
    sd = 0.15
    return m, sd, m + sd * torch.randn(shape, generator=g, dtype=F64), torch.randn(shape, generator=g, dtype=F64)


def gaussian_x0_oracle(sched, m, sd):
    """E[x0 | x_t] for x0 ~ N(m, sd^2) per pixel: m + sd^2 / (sd^2 + sigma_bar_t^2) (x_t - m)."""
    return lambda x, t: m + sd ** 2 / (sd ** 2 + float(sched.sigma_bar(t)) ** 2) * (x - m)


@pytest.mark.parametrize("sampler, steps, max_dev", [("ode", 100, 0.07), ("posterior eta=0", 100, 0.045),
                                                     ("posterior eta=0", 10, 0.4)])
def test_deterministic_samplers_track_the_gaussian_flow(sampler, steps, max_dev):
    """Gaussian data, exact x0 predictor: the probability-flow ODE keeps (x_t - m)/sqrt(sd^2 + sigma_bar_t^2);
    every intermediate state stays within max_dev (in those units) of the exact flow (measured 0.055,
    0.034, 0.32)."""
    m, sd, x0, z = gaussian_data()
    kw = dict(sampler="ode") if sampler == "ode" else dict(sampler="posterior", eta=0.0)
    s = DenoisingSDEScheduler(prediction_type="sample", **kw)
    y = s.add_noise(x0, z, 100)
    var = lambda t: sd ** 2 + float(s.sigma_bar(t)) ** 2
    for t, x in run(s, gaussian_x0_oracle(s, m, sd), y, steps).items():
        exact = m + math.sqrt(var(t) / var(100)) * (y - m)
        assert float((x - exact).abs().max()) / math.sqrt(var(t)) < max_dev, t


@pytest.mark.parametrize("sampler, steps, tol", [("sde", 100, 0.025), ("posterior", 100, 0.035),
                                                 ("posterior", 10, 0.22)])
def test_stochastic_samplers_keep_the_gaussian_marginals(sampler, steps, tol):
    """Gaussian data, exact x0 predictor: the standardised states (x_t - m)/sqrt(sd^2 + sigma_bar_t^2) stay
    N(0, 1) at every intermediate state (spread measured 0.999-1.016, 0.972-0.998, 0.80-1.0)."""
    m, sd, x0, z = gaussian_data()
    s = DenoisingSDEScheduler(sampler=sampler, prediction_type="sample")
    for t, x in run(s, gaussian_x0_oracle(s, m, sd), s.add_noise(x0, z, 100), steps).items():
        xi = (x - m) / math.sqrt(sd ** 2 + float(s.sigma_bar(t)) ** 2)
        assert abs(float(xi.mean())) < 0.02 and float(xi.std()) == pytest.approx(1.0, abs=tol), (t, float(xi.std()))


def test_pipeline_loop_restores_with_an_oracle():
    """refusion.inference.pipeline.sde_sample drives set_timesteps / initial_sample / step; noise_fn(x, mu, t)."""
    x0, z = point_mass((2, 3, 16, 16))
    x0, z = x0.float(), z.float()
    s = DenoisingSDEScheduler(sampler="posterior", eta=0.0, noise_level=25)
    noisy = x0 + 25 / 255 * z
    out = sde_sample(lambda x, mu, t: (x - x0) / s.sigma_bar(t).reshape(-1, 1, 1, 1).float(), s, noisy,
                     num_inference_steps=5)
    assert out.dtype == torch.float32
    # the start state is the noisy image itself, sigma_bar_start = 25/255 up to the timestep grid
    assert float(s.sigma_bar(s.start_timestep)) * 255 == pytest.approx(25, rel=0.05)
    assert float((out - x0).abs().max()) < 1e-5


# ------------------------------------------------------------------ set_timesteps, start timestep, fewer steps
def test_timesteps_positions(sched):
    s = DenoisingSDEScheduler()
    assert s.timesteps.tolist() == list(range(100, 0, -1)) and s.num_inference_steps == 100   # official loop
    s.set_timesteps(5)
    assert s.timesteps.dtype == torch.int64 and s.timesteps.tolist() == [100, 80, 60, 40, 20]
    s.set_timesteps(3)
    assert s.timesteps.tolist() == [100, 67, 33]
    s.set_timesteps(timesteps=[90, 40, 2])
    assert s.timesteps.tolist() == [90, 40, 2]
    s = DenoisingSDEScheduler(noise_level=25)
    assert s.start_timestep == 29 and s.timesteps.tolist() == list(range(29, 0, -1))
    assert s.init_noise_sigma == float(s.sigma_bar(29))
    s.set_timesteps(4)
    assert s.timesteps.tolist() == [29, 22, 15, 7]


def test_start_timestep_matches_official_get_optimal_timestep(ref, sched):
    """The official rule evaluated on the official float32 arrays, for every noise level 2..50 (0-255).
    (At exactly 1 the official code reads 1.0 as already normalised and fails; here 1 means 1/255.)"""
    cs32, dt32 = torch.from_numpy(ref["thetas_cumsum"]), torch.tensor(float(ref["dt"]), dtype=torch.float32)
    for sigma in range(2, 51):
        s = sigma / 255
        target = -1 / (2 * dt32) * math.log(1 - s ** 2 / LAM ** 2 + 1e-6)
        assert sched.timestep_for_noise_level(sigma) == int(torch.argmin((cs32 - target).abs())), sigma
    assert sched.timestep_for_noise_level(50) == 100 and sched.timestep_for_noise_level(25 / 255) == 29
    assert sched.timestep_for_noise_level(1) == sched.timestep_for_noise_level(1 / 255)


def test_stride_one_steps_equal_the_full_schedule_steps():
    g = torch.Generator().manual_seed(0)
    x0, z = torch.rand(2, 3, 4, 4, generator=g, dtype=F64), torch.randn(2, 3, 4, 4, generator=g, dtype=F64)
    for sampler in DenoisingSDEScheduler.SAMPLERS:
        full, mixed = DenoisingSDEScheduler(sampler=sampler), DenoisingSDEScheduler(sampler=sampler)
        mixed.set_timesteps(timesteps=[100, 99, 80, 79, 20, 3, 2, 1])     # strides stable for sde
        for t in (100, 80, 3, 2, 1):
            x = full.add_noise(x0, z, t)
            eps = 3 * (x - 0.5) + 0.01 * t
            a = full.step(eps, t, x, variance_noise=z).prev_sample
            assert torch.equal(a, mixed.step(eps, t, x, variance_noise=z).prev_sample), (sampler, t)
            if sampler == "sde":
                torch.testing.assert_close(a, full.reverse_sde_mean(x, eps, t) - full.sigmas[t] * full.dt ** 0.5 * z,
                                           rtol=1e-13, atol=1e-16)


def test_merged_euler_strides_integrate_theta():
    s = DenoisingSDEScheduler(sampler="ode")
    t, r = torch.tensor([100, 70, 1]), torch.tensor([70, 1, 0])
    c = S.denoising_euler_coefficients(s.thetas, s.thetas_cumsum, s.dt, s.stationary_std, t, r, stochastic=False)
    theta = s.thetas_cumsum[t] - s.thetas_cumsum[r]
    theta[-1] = s.thetas[1]
    want = s.stationary_std ** 2 * theta * s.dt * torch.exp(-2 * s.thetas_cumsum[t] * s.dt)
    torch.testing.assert_close(c["score_coef"], want, rtol=1e-13, atol=0)
    assert float(c["g_sqrt_dt"].abs().max()) == 0


def test_every_ode_stride_is_stable_and_sde_refuses_unstable_ones():
    """Exact score: x_s - x0 = c (x_t - x0) [- g z]. The ODE's c lies in (0, 1) for every stride; the
    SDE's c = 1 - theta_(s,t] dt coth(Theta_t dt)-like term drops below -1 on long strides (n = 1, 2 here)."""
    s = DenoisingSDEScheduler()
    g = torch.Generator().manual_seed(0)
    t = torch.randint(1, 101, (2000,), generator=g)
    r = (torch.rand(2000, generator=g, dtype=F64) * t).long()
    k = S.denoising_euler_coefficients(s.thetas, s.thetas_cumsum, s.dt, s.stationary_std, t, r, stochastic=False)
    c_ode = 1 - k["score_coef"] / s.sigma_bars[t] ** 2
    assert bool(((c_ode > 0) & (c_ode < 1)).all())
    c_unit = s.euler_contraction(torch.arange(1, 101), torch.arange(0, 100))
    assert float(c_unit.min()) > -1e-8                       # the official steps: stable (t = 1 -> 0: -w^2/3)
    sde = DenoisingSDEScheduler(sampler="sde")
    for n in (1, 2):
        with pytest.raises(ValueError, match=r"sampler='sde' with timesteps \[100.*\(\|c\| > 1, unstable\); use "
                                             r"num_inference_steps >= 3 or sampler='posterior'"):
            sde.set_timesteps(n)
    assert sde.timesteps.tolist() == list(range(100, 0, -1))  # a refused call changes nothing
    sde.set_timesteps(3)
    with pytest.raises(ValueError, match=r"step 100 -> 10 multiplies the remaining noise by -"):
        sde.set_timesteps(timesteps=[100, 10])
    for n in (1, 2):
        DenoisingSDEScheduler(sampler="ode").set_timesteps(n)
        DenoisingSDEScheduler(sampler="posterior").set_timesteps(n)


# ------------------------------------------------------------------ step surface
def test_step_surface():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 3, 8, 8, generator=g, dtype=F64)
    eps_model = lambda x, t: 2 * (x - 0.5) + 0.01 * t
    for sampler in ("ode", "posterior"):
        kw = dict(eta=0.0) if sampler == "posterior" else {}
        a = DenoisingSDEScheduler(sampler=sampler, **kw)
        b = DenoisingSDEScheduler(sampler=sampler, prediction_type="sample", **kw)
        y = a.add_noise(x0, torch.randn(x0.shape, generator=g, dtype=F64), 100)
        out_a = run(a, eps_model, y, 10)[0]
        out_b = run(b, lambda x, t, a=a: a.x0_from_noise(x, eps_model(x, t), t), y, 10)[0]
        torch.testing.assert_close(out_a, out_b, rtol=1e-10, atol=1e-12)
        out32 = run(a, eps_model, y.float(), 10)[0]                                   # float32 samples stay float32
        assert out32.dtype == torch.float32
        torch.testing.assert_close(out32.double(), out_a, rtol=0, atol=1e-5)
    s = DenoisingSDEScheduler(sampler="posterior", eta=0.0)
    s.set_timesteps(10)
    x = s.initial_sample(y)
    assert torch.equal(x, y) and x is not y                 # the noisy image, copied, no noise added
    eps = eps_model(x, 90)
    one = s.step(eps, 90, x, mu=y)
    torch.testing.assert_close(one.prev_sample, s.step(eps, torch.tensor([90, 90]), x).prev_sample, rtol=0, atol=0)
    mixed = s.step(eps, torch.tensor([90, 50]), x).prev_sample
    torch.testing.assert_close(mixed[1:], s.step(eps[1:], 50, x[1:]).prev_sample, rtol=0, atol=0)
    _, x0_pred = s.step(eps, 90, x, return_dict=False)
    torch.testing.assert_close(x0_pred, s.x0_from_noise(x, eps, 90), rtol=0, atol=0)
    assert len(s) == 100 and s.scale_model_input(x, 90) is x


@pytest.mark.parametrize("sampler", ["sde", "posterior"])
def test_generator_list_gives_per_sample_reproducibility(sampler):
    g = torch.Generator().manual_seed(0)
    y = torch.rand(3, 3, 8, 8, generator=g, dtype=F64)
    s = DenoisingSDEScheduler(sampler=sampler)

    def sample(idx, seeds):
        s.set_timesteps(5 if sampler == "posterior" else None)
        gens = [torch.Generator().manual_seed(k) for k in seeds]
        x = s.initial_sample(y[idx], generator=gens)
        for t in s.timesteps:
            x = s.step(x - 0.5, t, x, generator=gens).prev_sample
        return x

    batch = sample(slice(0, 3), [11, 12, 13])
    for i, seed in enumerate([11, 12, 13]):
        torch.testing.assert_close(sample(slice(i, i + 1), [seed]), batch[i:i + 1], rtol=0, atol=0)
    assert not torch.equal(batch[0], sample(slice(0, 1), [99])[0])


# ------------------------------------------------------------------ config round trip and validation
def test_save_load_round_trip(tmp_path):
    s = DenoisingSDEScheduler(max_sigma=70, num_train_timesteps=1000, schedule="linear", eps=0.04,
                              sampler="posterior", prediction_type="sample", eta=0.5, noise_level=25)
    s.save_pretrained(tmp_path)
    loaded = DenoisingSDEScheduler.from_pretrained(tmp_path)
    assert dict(loaded.config) == dict(s.config)
    for name in ("thetas", "thetas_cumsum", "sigmas", "sigma_bars", "sde_score_coefs", "timesteps"):
        assert torch.equal(getattr(loaded, name), getattr(s, name)), name
    assert loaded.dt == s.dt and loaded.start_timestep == s.start_timestep
    assert DenoisingSDEScheduler().config.eps == 0.04
    assert set(DenoisingSDEScheduler.SAMPLERS) == {"sde", "ode", "posterior"}


@pytest.mark.parametrize("kwargs, match", [
    (dict(schedule="constant"), r"schedule='constant'.*allowed: 'cosine', 'linear'"),
    (dict(sampler="mr_sde"), r"sampler='mr_sde'.*allowed: 'sde', 'ode', 'posterior'"),
    (dict(prediction_type="v_prediction"), r"prediction_type='v_prediction'.*allowed: 'epsilon', 'sample'"),
    (dict(eta=1.5), r"eta=1.5: expected 0 <= eta <= 1"),
    (dict(eps=1.0), r"eps=1.0: expected 0 < eps < 1"),
    (dict(max_sigma=-5), r"max_sigma=-5"),
    (dict(num_train_timesteps=0), r"num_train_timesteps=0"),
    (dict(noise_level=60), r"noise_level=60 exceeds max_sigma=50"),
    (dict(noise_level=0), r"noise_level=0: expected a noise std > 0"),
    (dict(noise_level=1e-4), r"noise_level=0.0001 is closest to timestep 0"),
    (dict(num_train_timesteps=1, schedule="linear", sampler="sde"), r"step 1 -> 0 multiplies the remaining noise"),
])
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DenoisingSDEScheduler(**kwargs)


def test_call_validation():
    s = DenoisingSDEScheduler(noise_level=25)
    x = torch.zeros(2, 3, 4, 4, dtype=F64)
    with pytest.raises(ValueError, match=r"mu: shape \(1, 3, 4, 4\) must equal the sample shape \(2, 3, 4, 4\)"):
        s.add_noise(x, x, 5, mu=x[:1])
    with pytest.raises(ValueError, match=r"timestep=101 is out of range; allowed: integers in \[0, 100\]"):
        s.add_noise(x, x, 101)
    with pytest.raises(ValueError, match=r"timestep=0 is out of range; allowed: integers in \[1, 100\]"):
        s.reverse_sde_mean(x, x, 0)
    with pytest.raises(ValueError, match=r"timestep: expected an int or a \(B,\) integer tensor"):
        s.sigma_bar(torch.tensor([1.5]))
    with pytest.raises(ValueError, match=r"per-sample tensor of shape \(3,\) does not match the batch of 2"):
        s.optimal_prev_sample(x, x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"s=5 must be smaller than t=5"):
        s.posterior_std(5, 5)
    for n in (0, 30, True):
        with pytest.raises(ValueError, match=rf"num_inference_steps={n}: expected an integer in \[1, 29\] "
                                             r"\(sampling starts at start_timestep=29"):
            s.set_timesteps(n)
    with pytest.raises(ValueError, match=r"timesteps=\[50, 60\]: expected strictly decreasing integers in \[1, 100\]"):
        s.set_timesteps(timesteps=[50, 60])
    s.set_timesteps(10)
    with pytest.raises(ValueError, match=r"timestep=28 is not in the inference schedule \[29, 26, "):
        s.step(x, 28, x)
    with pytest.raises(ValueError, match=r"model_output: shape \(2, 3, 4, 5\) differs from sample shape"):
        s.step(torch.zeros(2, 3, 4, 5), 29, x)
    with pytest.raises(ValueError, match=r"mu: shape \(2, 3, 4, 5\)"):
        s.step(x, 29, x, mu=torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError, match=r"generator: a list of 1 generators was given for a batch of 2"):
        s.initial_sample(x, generator=[torch.Generator()])
    with pytest.raises(ValueError, match=r"noise_level=True: expected a noise std > 0"):
        s.timestep_for_noise_level(True)

"""IRSDEScheduler against the official IR-SDE code's own numbers (tests/data/ir_sde_*.npz), plus
config round trip and validation."""
from pathlib import Path

import numpy as np
import pytest
import torch

import refusion
from refusion.schedulers import IRSDEScheduler

DATA = Path(__file__).parent / "data" / "ir_sde_cosine_s50_T100_eps0.005.npz"
RTOL = 1e-10


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(DATA))


@pytest.fixture(scope="module")
def sched(ref):
    return IRSDEScheduler(max_sigma=float(ref["config_max_sigma"]), num_train_timesteps=int(ref["config_T"]),
                          schedule=str(ref["config_schedule"]), eps=float(ref["config_eps"]))


def f64(a):
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


def assert_close(got, want, rtol=RTOL):
    """max |got - want| <= rtol * max |want| (relative to the array's scale)."""
    got = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    err = np.abs(got.astype(np.float64) - want).max() / max(np.abs(want).max(), 1e-300)
    assert err <= rtol, f"relative error {err:.3e} > {rtol:.1e}"


def toy_noise(ref, x, t):
    """The reference's toy predictor eps_hat = 4 (x - mu) + 0.002 t."""
    a, b = ref["toy_model_coefs"]
    t = t.reshape(-1, 1, 1, 1).to(x.dtype) if isinstance(t, torch.Tensor) else t
    return a * (x - f64(ref["mu"]).to(x.dtype)) + b * t


# ------------------------------------------------------------------ schedule
def test_schedule_arrays_match_official(ref, sched):
    for name in ("thetas", "thetas_cumsum", "sigmas", "sigma_bars"):
        values = getattr(sched, name)
        assert values.dtype == torch.float64 and values.shape == (101,)
        assert_close(values, ref[name], rtol=1e-12)
    assert isinstance(sched.dt, float) and sched.dt == pytest.approx(float(ref["dt"]), rel=1e-14)
    assert sched.stationary_std == sched.init_noise_sigma == pytest.approx(float(ref["max_sigma"]), rel=1e-15)
    assert sched.thetas_cumsum[0] == 0
    # sigma_bar_T = lambda sqrt(1 - eps^2) by construction of dt
    assert float(sched.sigma_bars[-1]) == pytest.approx(sched.stationary_std * (1 - 0.005 ** 2) ** 0.5, rel=1e-13)


def test_initial_state_formula(ref, sched):
    xT = f64(ref["mu"]) + sched.init_noise_sigma * f64(ref["xT_noise"])
    assert_close(xT, ref["xT"])


@pytest.mark.parametrize("schedule", ["linear", "constant"])
def test_other_schedules(schedule):
    T = 20
    s = IRSDEScheduler(schedule=schedule, num_train_timesteps=T, max_sigma=0.1)   # < 1: already normalised
    assert s.stationary_std == 0.1
    scale = 1000 / (T + 1)
    want = np.linspace(scale * 1e-4, scale * 0.02, T + 1) if schedule == "linear" else np.ones(T + 1)
    assert_close(s.thetas, want, rtol=1e-13)
    assert_close(s.thetas_cumsum, np.cumsum(want) - want[0], rtol=1e-13)
    assert float(s.signal_scale(T)) == pytest.approx(0.005, rel=1e-12)   # exp(-Theta_T dt) = eps


# ------------------------------------------------------------------ per-t functions
def test_per_t_functions_match_official(ref, sched):
    x0, mu = f64(ref["x0"]), f64(ref["mu"])
    full = {name: IRSDEScheduler(sampler=name) for name in ("sde", "ode", "posterior")}
    for i, t in enumerate(int(v) for v in ref["t_list"]):
        z = f64(ref["z_t"][i])
        assert_close(sched.mu_bar(x0, t, mu=mu), ref["mu_bar"][i])
        assert_close(sched.sigma_bar(t), ref["sigma_bar"][i])
        assert_close(sched.signal_scale(t), ref["weights"][i])
        xt = sched.add_noise(x0, f64(ref["noise_t"][i]), t, mu=mu)
        assert_close(xt, ref["xt"][i])
        xt = f64(ref["xt"][i])
        real_noise = sched.noise_from_x0(xt, x0, t, mu=mu)
        assert_close(real_noise, ref["real_noise"][i], rtol=1e-9)   # (xt - mu_bar) cancels at small t
        assert_close(sched.score_from_noise(real_noise, t), ref["real_score"][i], rtol=1e-9)
        eps = toy_noise(ref, xt, t)
        assert_close(eps, ref["eps_hat"][i])
        assert_close(sched.score_from_noise(eps, t), ref["score"][i])
        zero = torch.zeros_like(xt)
        drift = sched.forward_step(xt, t, mu=mu, noise=zero) - xt
        assert_close(drift, ref["drift"][i])
        assert_close(sched.forward_step(xt, t, mu=mu, noise=z) - xt - drift, ref["dispersion"][i], rtol=1e-9)
        assert_close(sched.forward_step(xt, t, mu=mu, noise=z), ref["forward_step"][i])
        mean = sched.reverse_sde_mean(xt, eps, t, mu=mu)
        assert_close(mean, ref["reverse_sde_step_mean"][i])
        assert_close(xt - mean, ref["sde_reverse_drift"][i], rtol=1e-9)
        sde_out = full["sde"].step(eps, t, xt, mu=mu, variance_noise=z)
        assert_close(sde_out.prev_sample, ref["reverse_sde_step"][i])
        ode_prev = full["ode"].step(eps, t, xt, mu=mu).prev_sample
        assert_close(ode_prev, ref["reverse_ode_step"][i])
        assert_close(xt - ode_prev, ref["ode_reverse_drift"][i], rtol=1e-9)
        assert_close(sched.optimal_prev_sample(xt, x0, t, mu=mu), ref["reverse_optimum_step"][i])
        assert_close(sched.posterior_std(t, t - 1), ref["reverse_optimum_std"][i])
        x0_pred = sched.x0_from_noise(xt, eps, t, mu=mu)
        assert_close(x0_pred, ref["x0_from_noise"][i])
        assert_close(sched.posterior_mean(xt, x0_pred, t, t - 1, mu=mu), ref["posterior_mean"][i])
        post = full["posterior"].step(eps, t, xt, mu=mu, variance_noise=z)
        assert_close(post.prev_sample, ref["reverse_posterior_step"][i])
        assert_close(post.pred_original_sample, ref["x0_from_noise"][i])


def test_training_step_matches_official(ref, sched):
    x0, mu = f64(ref["x0"]), f64(ref["mu"])
    ts = torch.from_numpy(ref["train_timesteps"])
    state = sched.add_noise(x0, f64(ref["train_noise"]), ts, mu=mu)
    assert_close(state, ref["train_state"])
    eps = toy_noise(ref, state, ts)
    assert_close(eps, ref["train_eps_hat"])
    assert_close(sched.score_from_noise(eps, ts), ref["train_score"])
    pred = sched.reverse_sde_mean(state, eps, ts, mu=mu)
    target = sched.optimal_prev_sample(state, x0, ts, mu=mu)
    assert_close(pred, ref["train_pred"])
    assert_close(target, ref["train_target"])
    assert_close((pred - target).abs().mean(), ref["train_loss_l1"])
    assert_close((pred - target).pow(2).mean(), ref["train_loss_l2"])


# ------------------------------------------------------------------ full loops
@pytest.mark.parametrize("sampler", ["sde", "ode", "posterior"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_full_loops_match_official(ref, sampler, dtype):
    s = IRSDEScheduler(sampler=sampler)
    s.set_timesteps(100)
    assert s.timesteps.tolist() == list(range(100, 0, -1))
    mu, x = f64(ref["mu"]).to(dtype), f64(ref["xT"]).to(dtype)
    traj = ref[f"reverse_{sampler}_traj"]
    for k, t in enumerate(s.timesteps):
        if dtype == torch.float64:
            assert_close(x, traj[k], rtol=1e-11)
        x = s.step(toy_noise(ref, x, int(t)), t, x, mu=mu,
                   variance_noise=f64(ref["loop_noise"][k]).to(dtype)).prev_sample
    assert x.dtype == dtype
    assert_close(x, ref[f"reverse_{sampler}_out"], rtol=RTOL if dtype == torch.float64 else 2e-6)


def test_optimal_reverse_and_forward_loops(ref, sched):
    x0, mu = f64(ref["x0"]), f64(ref["mu"])
    x = f64(ref["xT"])
    for t in range(100, 0, -1):
        x = sched.optimal_prev_sample(x, x0, t, mu=mu)
    assert_close(x, ref["optimal_reverse_out"])
    x = x0
    for t in range(1, 101):
        x = sched.forward_step(x, t, mu=mu, noise=f64(ref["loop_noise"][t - 1]))
    assert_close(x, ref["forward_out"])


# ------------------------------------------------------------------ config, save/load
def test_save_load_round_trip(tmp_path, ref):
    s = IRSDEScheduler(max_sigma=30, num_train_timesteps=50, schedule="linear", eps=0.01, sampler="mr_sde",
                       prediction_type="sample", eta=0.5, solver_order=1, default_inference_steps=4)
    s.save_pretrained(tmp_path)
    loaded = IRSDEScheduler.from_pretrained(tmp_path)
    assert dict(loaded.config) == dict(s.config)
    for name in ("thetas", "thetas_cumsum", "sigmas", "sigma_bars"):
        assert torch.equal(getattr(loaded, name), getattr(s, name))
    assert loaded.dt == s.dt
    assert refusion.IRSDEScheduler is IRSDEScheduler
    assert set(IRSDEScheduler.SAMPLERS) == {"sde", "ode", "posterior", "mr_ode", "mr_sde"}


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize("kwargs, match", [
    (dict(schedule="quadratic"), r"schedule='quadratic'.*allowed: 'cosine', 'linear', 'constant'"),
    (dict(sampler="ddpm"), r"sampler='ddpm'.*allowed: 'sde', 'ode', 'posterior', 'mr_ode', 'mr_sde'"),
    (dict(prediction_type="v_prediction"), r"prediction_type='v_prediction'.*allowed: 'epsilon', 'sample'"),
    (dict(solver_order=3), r"solver_order=3.*allowed: 1, 2"),
    (dict(eta=1.5), r"eta=1.5: expected 0 <= eta <= 1"),
    (dict(eta=-0.1), r"eta=-0.1"),
    (dict(eps=0.0), r"eps=0.0: expected 0 < eps < 1"),
    (dict(max_sigma=0), r"max_sigma=0"),
    (dict(num_train_timesteps=0), r"num_train_timesteps=0"),
])
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        IRSDEScheduler(**kwargs)


def test_call_validation():
    s = IRSDEScheduler()
    x = torch.zeros(2, 3, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"mu: shape \(1, 3, 4, 4\) must equal the sample shape \(2, 3, 4, 4\)"):
        s.add_noise(x, x, 5, mu=x[:1])
    with pytest.raises(ValueError, match=r"timestep=101 is out of range; allowed: integers in \[0, 100\]"):
        s.add_noise(x, x, 101, mu=x)
    with pytest.raises(ValueError, match=r"timestep=\[3, -1\] is out of range"):
        s.add_noise(x, x, torch.tensor([3, -1]), mu=x)
    with pytest.raises(ValueError, match=r"timestep=0 is out of range; allowed: integers in \[1, 100\]"):
        s.optimal_prev_sample(x, x, 0, mu=x)
    with pytest.raises(ValueError, match=r"per-sample tensor of shape \(3,\) does not match the batch of 2"):
        s.add_noise(x, x, torch.tensor([1, 2, 3]), mu=x)
    with pytest.raises(ValueError, match=r"s=5 must be smaller than t=5"):
        s.posterior_std(5, 5)
    for n in (0, 101):
        with pytest.raises(ValueError, match=rf"num_inference_steps={n}: expected an integer in \[1, "
                                             r"num_train_timesteps=100\]"):
            s.set_timesteps(n)
    with pytest.raises(ValueError, match=r"timesteps=\[50, 60\]: expected strictly decreasing"):
        s.set_timesteps(timesteps=[50, 60])
    s.set_timesteps(10)
    with pytest.raises(ValueError, match=r"timestep=55 is not in the inference schedule \[100, 90, "):
        s.step(x, 55, x, mu=x)
    with pytest.raises(ValueError, match=r"mu: shape \(2, 3, 4, 5\)"):
        s.step(x, 100, x, mu=torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError, match=r"generator: a list of 1 generators was given for a batch of 2"):
        s.initial_sample(x, generator=[torch.Generator()])


# ------------------------------------------------------------------ rounding and scale boundaries
def trailing_exact(T: int, n: int) -> list[int]:
    """T (n - i) / n in exact rational arithmetic, rounded half up (x.5 -> x + 1)."""
    from fractions import Fraction

    return [int(Fraction(T * (n - i), n) + Fraction(1, 2)) for i in range(n)]


def test_set_timesteps_rounds_exact_halves_up():
    """n = 8 of T = 100 puts four positions exactly on .5 (87.5, 62.5, 37.5, 12.5): half up gives
    88, 63, 38, 13 (banker's rounding would give 62 and 12, half down 87 and 37)."""
    s = IRSDEScheduler()
    s.set_timesteps(8)
    assert s.timesteps.tolist() == [100, 88, 75, 63, 50, 38, 25, 13]
    s.set_timesteps(40)                                        # 97.5 -> 98, 2.5 -> 3
    assert s.timesteps.tolist()[:2] == [100, 98] and s.timesteps.tolist()[-1] == 3


@pytest.mark.parametrize("T", [100, 30])
def test_set_timesteps_matches_exact_arithmetic_for_every_step_count(T):
    """Every n in [1, T]: the positions computed exactly (no float drift across a .5), strictly
    decreasing, from T down to round(T / n) >= 1; the step tables hold exactly those entries."""
    from refusion.schedulers import samplers as S

    s = IRSDEScheduler(num_train_timesteps=T)
    for n in range(1, T + 1):
        s.set_timesteps(n)
        want = trailing_exact(T, n)
        assert s.timesteps.tolist() == want, n
        assert S.trailing_timesteps(T, n).tolist() == want, n         # the DenoisingSDE's rule
        assert all(a > b for a, b in zip(want, want[1:])) and want[-1] >= 1
        assert sorted(s._timestep_set) == sorted(want)


def test_denoising_sde_set_timesteps_rounds_exact_halves_up():
    from refusion.schedulers.denoising_sde import DenoisingSDEScheduler

    s = DenoisingSDEScheduler(sampler="posterior")
    s.set_timesteps(8)
    assert s.timesteps.tolist() == trailing_exact(100, 8) == [100, 88, 75, 63, 50, 38, 25, 13]


@pytest.mark.parametrize("max_sigma, lam", [
    (1, 1 / 255), (1.0, 1 / 255), (1.0000001, 1.0000001 / 255),    # >= 1: the 0-255 scale
    (0.9999999, 0.9999999), (0.5, 0.5),                            # < 1: already normalised
])
def test_max_sigma_boundary_of_the_0_255_rule(max_sigma, lam):
    """lambda = max_sigma / 255 when max_sigma >= 1, else max_sigma itself (official rule); at
    exactly 1 the 0-255 scale applies. The whole schedule follows lambda."""
    from refusion.schedulers.denoising_sde import DenoisingSDEScheduler

    for cls in (IRSDEScheduler, DenoisingSDEScheduler):
        s = cls(max_sigma=max_sigma)
        assert s.stationary_std == pytest.approx(lam, rel=1e-15), cls
        assert float(s.sigma_bars[-1]) == pytest.approx(lam * (1 - s.config.eps ** 2) ** 0.5, rel=1e-13), cls
        assert float(s.sigmas[50]) == pytest.approx(lam * (2 * float(s.thetas[50])) ** 0.5, rel=1e-13), cls
    assert IRSDEScheduler(max_sigma=max_sigma).init_noise_sigma == pytest.approx(lam, rel=1e-15)


def test_noise_level_boundary_of_the_0_255_rule():
    """The DenoisingSDE's noise_level follows the same rule: 1 means 1/255, 0.5 means 0.5 (which
    exceeds lambda = 50/255 and is refused)."""
    from refusion.schedulers.denoising_sde import DenoisingSDEScheduler

    s = DenoisingSDEScheduler(max_sigma=50)
    assert s.timestep_for_noise_level(1) == s.timestep_for_noise_level(1 / 255)
    assert s.timestep_for_noise_level(1.0) == s.timestep_for_noise_level(1 / 255)
    assert s.timestep_for_noise_level(25) == s.timestep_for_noise_level(25 / 255)
    with pytest.raises(ValueError, match="exceeds max_sigma"):
        s.timestep_for_noise_level(0.5)

"""DenoisingSDEScheduler: the Gaussian-denoising SDE of the IR-SDE paper (official ``DenoisingSDE``).

The clean image x0 is the mean-reversion target: dx = theta_t (x0 - x) dt + g_t dw, g_t^2 = 2 lambda^2 theta_t,

    x_t | x0 ~ N(x0, sigma_bar_t^2),   sigma_bar_t^2 = lambda^2 (1 - exp(-2 Theta_t dt)),

so a noisy photograph y = x0 + sigma z already is a state of the process (at the timestep where
sigma_bar_t = sigma) and sampling starts from it. Because the drift points at the unknown x0, the
reverse steps write theta (x0 - x) as sigma_bar_t^2 score; the noise network is unconditional,
``net(x_t, t)``. Same schedule as the IR-SDE (``mean_reverting_schedule``) with eps = 0.04.
docs/denoising_sde.md maps every symbol to its name here.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor

from refusion.schedulers import samplers as S
from refusion.schedulers.ir_sde import (
    PREDICTION_TYPES, GeneratorLike, IRSDEScheduler, IRSDESchedulerOutput, TimestepLike, _check_choice, _check_mu, check_sde_numbers, step_tables,
    cosine_thetas, linear_thetas, randn_like_batch,
)

SCHEDULES = ("cosine", "linear")          # the official DenoisingSDE takes cosine, anything else is linear
THETA_SCHEDULES = {"cosine": cosine_thetas, "linear": linear_thetas}
NOISE_LEVEL_EPS = 1e-6                    # official get_optimal_timestep: log(1 - sigma^2 / lambda^2 + 1e-6)


class DenoisingSDEScheduler(SchedulerMixin, ConfigMixin):
    """The IR-SDE paper's denoising SDE (mean = x0) with the samplers listed in ``SAMPLERS``.

    ``max_sigma`` is lambda on the 0-255 scale (values < 1 are taken as already normalised), as in
    ``IRSDEScheduler``; ``eps`` = 0.04 is the value the official code fixes (exp(-Theta_T dt) = eps).
    ``noise_level`` (0-255 scale, None = max_sigma) is the noise std of the images to restore:
    sampling starts at ``start_timestep``, the timestep whose sigma_bar is closest to it (official
    ``get_optimal_timestep``). ``sampler``: ``ode`` (official test-time sampler, default), ``sde``
    (official Euler–Maruyama), ``posterior`` (exact Gaussian jump q(x_s | x_t, x0_pred) for any step
    count; ``eta`` = 1 posterior noise, 0 deterministic).

    Differences from ``IRSDEScheduler``: the marginal mean is x0, not mu; ``mu`` keyword arguments are
    accepted for call compatibility (shape-checked when given) and never used; the noise network is
    ``net(x_t, t)`` (no mu input); ``initial_sample`` returns the degraded image unchanged (it is the
    state at ``start_timestep``)."""

    SAMPLERS = S.DENOISING_SAMPLERS
    SCHEDULES = SCHEDULES
    PREDICTION_TYPES = PREDICTION_TYPES
    order = 1

    # Shared with IRSDEScheduler, whose attributes (config, thetas, thetas_cumsum, dt, stationary_std,
    # _tables, _table_cache, _arrays_on) have the same names and meaning here: the training timestep draw,
    # the identity model-input scaling, timestep validation, schedule gathers, posterior coefficients and
    # the per-dtype table cache.
    __len__ = IRSDEScheduler.__len__
    sample_timesteps = IRSDEScheduler.sample_timesteps
    scale_model_input = IRSDEScheduler.scale_model_input
    _index = IRSDEScheduler._index
    _schedule = IRSDEScheduler._schedule
    _posterior = IRSDEScheduler._posterior
    _tables_like = IRSDEScheduler._tables_like
    _cast = staticmethod(IRSDEScheduler._cast)

    @register_to_config
    def __init__(self, max_sigma: float = 50.0, num_train_timesteps: int = 100, schedule: str = "cosine",
                 eps: float = 0.04, sampler: str = "ode", prediction_type: str = "epsilon", eta: float = 1.0,
                 noise_level: Optional[float] = None):
        _check_choice("schedule", schedule, SCHEDULES)
        _check_choice("sampler", sampler, S.DENOISING_SAMPLERS)
        _check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        check_sde_numbers(num_train_timesteps, max_sigma, eps, eta, eps_hint="the official DenoisingSDE uses 0.04")

        lam = _normalised(max_sigma)
        self.stationary_std: float = lam
        self.thetas = THETA_SCHEDULES[schedule](num_train_timesteps)
        arrays = S.mean_reverting_schedule(self.thetas, lam, eps)
        self.thetas_cumsum: Tensor = arrays["thetas_cumsum"]
        self.dt: float = arrays["dt"]
        self.sigmas: Tensor = arrays["sigmas"]
        self.sigma_bars: Tensor = arrays["sigma_bars"]
        steps = torch.arange(1, num_train_timesteps + 1)
        unit = S.denoising_euler_coefficients(self.thetas, self.thetas_cumsum, self.dt, lam, steps, steps - 1,
                                              stochastic=True)["score_coef"]
        self.sde_score_coefs: Tensor = torch.cat([torch.zeros(1, dtype=unit.dtype), unit])   # k_t of t -> t-1
        self._on_device: dict = {}
        if noise_level is None:
            self.start_timestep = num_train_timesteps
        else:
            self.start_timestep = self.timestep_for_noise_level(noise_level)
            if self.start_timestep == 0:
                raise ValueError(f"noise_level={noise_level!r} is closest to timestep 0 (sigma_bar_1 = "
                                 f"{float(self.sigma_bars[1]) * 255:.3g}/255): nothing to denoise on this schedule")
        self.init_noise_sigma: float = float(self.sigma_bars[self.start_timestep])
        self.set_timesteps()

    # ------------------------------------------------------------------ forward process and score
    def sigma_bar(self, t: TimestepLike) -> Tensor:
        """Std of the forward marginal at t (float64, 0-d or (B,))."""
        return self._schedule(t)["sigma_bars"]

    def mu_bar(self, x0: Tensor, t: TimestepLike, *, mu: Optional[Tensor] = None) -> Tensor:
        """Mean of the forward marginal: x0 itself at every t (official ``mu_bar``); ``mu`` is unused."""
        _check_unused_mu(mu, x0)
        self._index(t, x0)
        return x0

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: TimestepLike, *,
                  mu: Optional[Tensor] = None) -> Tensor:
        """x_t = x0 + sigma_bar_t * noise (forward marginal, official ``generate_random_states``);
        ``mu`` is unused (the IR-SDE's x_t also moves toward mu, this one does not)."""
        _check_unused_mu(mu, original_samples)
        t = self._index(timesteps, original_samples)
        return original_samples + noise * self._gather("sigma_bars", t, original_samples)

    def timestep_for_noise_level(self, sigma: float) -> int:
        """The timestep whose marginal std matches a noise std ``sigma`` (0-255 scale; < 1: normalised):
        argmin_t |Theta_t - Theta_hat|, Theta_hat = -ln(1 - sigma^2 / lambda^2 + 1e-6) / (2 dt)
        (official ``get_optimal_timestep``). Requires 0 < sigma <= max_sigma."""
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 < sigma:
            raise ValueError(f"noise_level={sigma!r}: expected a noise std > 0 (0-255 scale, e.g. 25)")
        s, lam = _normalised(sigma), self.stationary_std
        if s > lam:
            raise ValueError(f"noise_level={sigma!r} exceeds max_sigma={self.config.max_sigma!r}: the SDE's "
                             f"largest noise std is sigma_bar_T = {float(self.sigma_bars[-1]) * 255:.4g}/255")
        target = -1 / (2 * self.dt) * math.log(1 - s ** 2 / lam ** 2 + NOISE_LEVEL_EPS)
        return int(torch.argmin((self.thetas_cumsum - target).abs()))

    def score_from_noise(self, noise_pred: Tensor, t: TimestepLike) -> Tensor:
        """score = -noise / sigma_bar_t (official ``get_score_from_noise``)."""
        return -noise_pred / self._gather("sigma_bars", self._index(t, noise_pred, low=1), noise_pred)

    def x0_from_noise(self, x_t: Tensor, noise_pred: Tensor, t: TimestepLike, *,
                      mu: Optional[Tensor] = None) -> Tensor:
        """x0 = x_t - sigma_bar_t noise (official ``get_init_state_from_noise``); ``mu`` is unused."""
        _check_unused_mu(mu, x_t)
        return x_t - self._gather("sigma_bars", self._index(t, x_t, low=1), x_t) * noise_pred

    def x0_from_score(self, x_t: Tensor, score: Tensor, t: TimestepLike) -> Tensor:
        """x0 = x_t + sigma_bar_t^2 score (Tweedie; official ``get_init_state_from_score``)."""
        return x_t + self._gather("sigma_bars", self._index(t, x_t, low=1), x_t) ** 2 * score

    def noise_from_x0(self, x_t: Tensor, x0: Tensor, t: TimestepLike, *, mu: Optional[Tensor] = None) -> Tensor:
        """The noise that makes x_t from x0: (x_t - x0) / sigma_bar_t (official ``get_real_noise``)."""
        _check_unused_mu(mu, x_t)
        return (x_t - x0) / self._gather("sigma_bars", self._index(t, x_t, low=1), x_t)

    # ------------------------------------------------------------------ training target / prediction
    def reverse_sde_mean(self, x_t: Tensor, noise_pred: Tensor, t: TimestepLike, *,
                         mu: Optional[Tensor] = None) -> Tensor:
        """Mean of the official reverse-SDE step t -> t-1, x_t + g_t^2 (1 + exp(-2 Theta_t dt)) / 2 score dt,
        from the predicted noise (official ``reverse_sde_step_mean``, the training prediction)."""
        _check_unused_mu(mu, x_t)
        t = self._index(t, x_t, low=1)
        return S.denoising_euler_step(x_t, self.score_from_noise(noise_pred, t), self._gather("sde_score_coefs", t, x_t))

    def optimal_prev_sample(self, x_t: Tensor, x0: Tensor, t: TimestepLike, *, mu: Optional[Tensor] = None) -> Tensor:
        """x*_{t-1} = x0 + A (1 - C^2) / (1 - B^2) (x_t - x0): mean of q(x_{t-1} | x_t, x0) (official
        ``reverse_optimum_step``, the training target); ``mu`` is unused."""
        t = self._index(t, x_t, low=1)
        return self.posterior_mean(x_t, x0, t, t - 1, mu=mu)

    def posterior_mean(self, x_t: Tensor, x0: Tensor, t: TimestepLike, s: TimestepLike, *,
                       mu: Optional[Tensor] = None) -> Tensor:
        """Mean of the Gaussian q(x_s | x_t, x0) for any t > s >= 0: the IR-SDE posterior with mu = x0."""
        _check_unused_mu(mu, x_t)
        coef_x = self._posterior(t, s, x_t)["coef_x"]
        return S.gaussian_jump_step(x_t, x0, x0, self._cast(coef_x, x_t), 0.0)

    def posterior_std(self, t: TimestepLike, s: TimestepLike) -> Tensor:
        """Std of q(x_s | x_t, x0) (float64), lambda sqrt((1 - A^2)(1 - C^2) / (1 - B^2))."""
        return self._posterior(t, s, None)["std"]

    # ------------------------------------------------------------------ sampling
    def default_steps(self, sampler: str | None = None) -> int:
        """Every timestep from ``start_timestep`` (the official loop), whatever the sampler."""
        _check_choice("sampler", sampler or self.config.sampler, S.DENOISING_SAMPLERS)
        return self.start_timestep

    @property
    def is_stochastic(self) -> bool:
        """Whether ``step`` draws noise: sde, posterior with eta > 0 (ode and posterior with eta = 0
        map the degraded image to one result deterministically)."""
        return self.config.sampler == "sde" or (self.config.sampler == "posterior" and self.config.eta > 0)

    @property
    def samples_vary(self) -> bool:
        """Whether two runs with different generators give different images: only when ``step`` draws
        noise, since the start is the degraded image itself (``initial_sample`` draws nothing)."""
        return self.is_stochastic

    def initial_sample(self, mu: Tensor, *, generator: GeneratorLike = None) -> Tensor:
        """The start state: the degraded (noisy) image itself, a copy; unlike the IR-SDE no noise is added,
        since y = x0 + sigma z is the state at ``start_timestep``. ``generator`` is accepted and unused."""
        if isinstance(generator, (list, tuple)) and len(generator) != mu.shape[0]:
            raise ValueError(f"generator: a list of {len(generator)} generators was given for a batch of "
                             f"{mu.shape[0]}; give one generator per sample or a single generator")
        return mu.clone()

    def set_timesteps(self, num_inference_steps: Optional[int] = None,
                      device: Union[str, torch.device, None] = None, *,
                      timesteps: Optional[Sequence[int]] = None) -> None:
        """Spread ``num_inference_steps`` steps over [1..start_timestep] ("trailing": start, start - start/n,
        ..., start/n, rounded; None = every timestep, the official loop) or use the given strictly
        decreasing ``timesteps`` in [1..T]; the last step goes to 0. ``posterior`` is exact for any
        step count; ``sde`` / ``ode`` integrate theta over each stride (first order) and ``sde`` refuses
        a stride whose Euler–Maruyama step is unstable (docs/denoising_sde.md)."""
        T, start = self.config.num_train_timesteps, self.start_timestep
        if timesteps is not None:
            t = torch.as_tensor(list(timesteps), dtype=torch.int64)
            if t.ndim != 1 or len(t) == 0 or int(t.min()) < 1 or int(t.max()) > T or bool((t[1:] >= t[:-1]).any()):
                raise ValueError(f"timesteps={list(timesteps)!r}: expected strictly decreasing integers in [1, {T}]")
        else:
            n = start if num_inference_steps is None else num_inference_steps
            if isinstance(n, bool) or not (isinstance(n, int) and 1 <= n <= start):
                raise ValueError(f"num_inference_steps={num_inference_steps!r}: expected an integer in [1, {start}] "
                                 f"(sampling starts at start_timestep={start}, one step per timestep at most)")
            t = S.trailing_timesteps(start, n)
        tables = self._step_tables(t, _next_timesteps(t))
        self.num_inference_steps = len(t)
        self.timesteps = t.to(device) if device is not None else t
        self._tables = tables
        self._table_cache: dict = {}
        self._timestep_set = frozenset(t.tolist())

    def euler_contraction(self, t: Tensor, s: Tensor) -> Tensor:
        """c = 1 - k / sigma_bar_t^2 of the ``sde`` step t -> s: with the exact score, x_s - x0 = c (x_t - x0)
        - g sqrt(dt) z. |c| > 1 amplifies the remaining noise (unstable). (The ``ode`` step's own factor,
        1 - k_ode / sigma_bar_t^2, lies in (0, 1) for every stride.)"""
        k = S.denoising_euler_coefficients(self.thetas, self.thetas_cumsum, self.dt, self.stationary_std, t, s,
                                           stochastic=True)["score_coef"]
        return 1 - k / self.sigma_bars[t] ** 2

    def _step_tables(self, t: Tensor, s: Tensor) -> dict[str, Tensor]:
        """Per-timestep float64 tables (index = timestep, size T+1) for the configured sampler."""
        cfg, args = self.config, (self.thetas, self.thetas_cumsum, self.dt, self.stationary_std, t, s)
        if cfg.sampler == "posterior":
            per_step = S.posterior_coefficients(*args, eta=cfg.eta)
            per_step.pop("coef_x0")              # mu = x0: the term on x0 - mu vanishes
        else:
            if cfg.sampler == "sde":
                self._check_stable(t, s)
            per_step = S.denoising_euler_coefficients(*args, stochastic=cfg.sampler == "sde")
        per_step["sigma_bar"] = self.sigma_bars[t]
        return step_tables(per_step, t, cfg.num_train_timesteps)

    def _check_stable(self, t: Tensor, s: Tensor) -> None:
        c = self.euler_contraction(t, s)
        if bool((c < -1).any()):
            i = int(torch.argmin(c))
            fewest = next((n for n in range(1, self.start_timestep + 1) if self._trailing_is_stable(n)), None)
            hint = f"num_inference_steps >= {fewest}" if fewest else "another schedule"
            raise ValueError(
                f"sampler='sde' with timesteps {t.tolist()}: the Euler–Maruyama step {int(t[i])} -> {int(s[i])} "
                f"multiplies the remaining noise by {float(c[i]):.3f} (|c| > 1, unstable); use {hint} "
                f"or sampler='posterior' (exact for any step count)")

    def _trailing_is_stable(self, n: int) -> bool:
        t = S.trailing_timesteps(self.start_timestep, n)
        return bool((self.euler_contraction(t, _next_timesteps(t)) >= -1).all())

    def step(self, model_output: Tensor, timestep: TimestepLike, sample: Tensor, *, mu: Optional[Tensor] = None,
             generator: GeneratorLike = None, variance_noise: Optional[Tensor] = None,
             return_dict: bool = True) -> Union[IRSDESchedulerOutput, tuple]:
        """One step t -> s (the next entry of ``timesteps``, 0 after the last) with ``config.sampler``.

        ``model_output`` is the noise (``prediction_type='epsilon'``) or x0 (``'sample'``) predicted by
        ``net(sample, t)``; ``mu`` is unused (shape-checked when given); ``variance_noise`` replaces the
        drawn Gaussian noise of stochastic samplers."""
        _check_unused_mu(mu, sample)
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output: shape {tuple(model_output.shape)} differs from sample shape "
                             f"{tuple(sample.shape)}")
        t = self._index(timestep, sample, low=1, allowed=self._timestep_set)
        tab = self._tables_like(sample)

        def coef(name: str) -> Tensor:
            v = tab[name][t.to(tab[name].device) if isinstance(t, Tensor) else t]
            return v.reshape(-1, *([1] * (sample.ndim - 1))) if v.ndim == 1 else v

        sigma_bar = coef("sigma_bar")
        if self.config.prediction_type == "epsilon":
            noise_pred = model_output
            x0_pred = sample - sigma_bar * noise_pred
        else:
            x0_pred = model_output
            noise_pred = (sample - x0_pred) / sigma_bar
        sampler = self.config.sampler
        noise = None
        if self.is_stochastic:
            noise = variance_noise if variance_noise is not None else randn_like_batch(sample, generator)
        if sampler == "posterior":   # q(x_s | x_t, x0_pred): the IR-SDE posterior with mu = x0_pred
            prev = S.gaussian_jump_step(sample, x0_pred, x0_pred, coef("coef_x"), 0.0, coef("std"), noise)
        else:
            prev = S.denoising_euler_step(sample, -noise_pred / sigma_bar, coef("score_coef"), coef("g_sqrt_dt"),
                                          noise)
        if not return_dict:
            return prev, x0_pred
        return IRSDESchedulerOutput(prev_sample=prev, pred_original_sample=x0_pred)

    # ------------------------------------------------------------------ helpers
    def _arrays_on(self, device: torch.device) -> dict[str, Tensor]:
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = {name: getattr(self, name).to(device)
                                    for name in ("thetas", "thetas_cumsum", "sigmas", "sigma_bars", "sde_score_coefs")}
        return self._on_device[key]

    def _gather(self, name: str, t: TimestepLike, like: Tensor) -> Tensor:
        """Schedule array ``name`` at t, cast to ``like`` and shaped to broadcast over it."""
        return self._cast(self._schedule(t)[name], like)


def _next_timesteps(t: Tensor) -> Tensor:
    """Where each step of the schedule ``t`` goes: the next entry, 0 after the last."""
    return torch.cat([t[1:], torch.zeros(1, dtype=torch.int64)])


def _normalised(sigma: float) -> float:
    """0-255 scale to [0, 1] images (values < 1 are taken as already normalised)."""
    return float(sigma / 255 if sigma >= 1 else sigma)


def _check_unused_mu(mu: Optional[Tensor], sample: Tensor) -> None:
    """``mu`` is accepted for call compatibility with IRSDEScheduler; when given it must match the sample."""
    if mu is not None:
        _check_mu(mu, sample)

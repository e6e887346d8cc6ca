"""IRSDEScheduler: the mean-reverting SDE of IR-SDE / Refusion (schedule, marginal, score, samplers).

    dx = theta_t (mu - x) dt + g_t dw,   g_t^2 = 2 lambda^2 theta_t,
    x_t | x0 ~ N(mu + (x0 - mu) exp(-Theta_t dt), lambda^2 (1 - exp(-2 Theta_t dt))).

The schedule is computed once in float64 exactly as the official code (Luo et al., ICML 2023) does;
the update rules live in ``samplers.py``. docs/sde.md maps every symbol to its name here.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from torch import Tensor

from refusion.schedulers import samplers as S

TimestepLike = Union[int, Tensor]


@dataclass(frozen=True)
class GeneratorGroups:
    """Generators that each draw a contiguous group of the batch: with G generators for a batch of
    G * n samples, generator g draws samples g*n .. g*n + n - 1 as ONE ``randn((n, ...))`` call, which
    is the noise it alone would draw for a batch of n. So K posterior samples of n images, run as one
    batch of K * n, get per sample exactly the noise of K separate n-image runs."""

    generators: tuple

    def group_size(self, batch: int) -> int:
        count = len(self.generators)
        if count == 0 or batch % count:
            raise ValueError(f"generator: {count} generator groups cannot split a batch of {batch} samples "
                             f"into equal groups")
        return batch // count


GeneratorLike = Union[torch.Generator, Sequence[torch.Generator], GeneratorGroups, None]

SCHEDULES = ("cosine", "linear", "constant")
PREDICTION_TYPES = ("epsilon", "sample")   # noise prediction (official) or data (x0) prediction


def cosine_thetas(num_train_timesteps: int, s: float = 0.008) -> Tensor:
    """theta_i = 1 - abar_{i+1}, abar_k = cos^2(((k/n) + s)/(1 + s) pi/2) / abar_0, n = T + 2 (float64)."""
    n = num_train_timesteps + 2
    x = torch.linspace(0, n, n + 1, dtype=torch.float64)
    abar = torch.cos(((x / n) + s) / (1 + s) * math.pi * 0.5) ** 2
    return 1 - (abar / abar[0])[1:-1]


def linear_thetas(num_train_timesteps: int) -> Tensor:
    scale = 1000 / (num_train_timesteps + 1)
    return torch.linspace(scale * 0.0001, scale * 0.02, num_train_timesteps + 1, dtype=torch.float64)


def constant_thetas(num_train_timesteps: int) -> Tensor:
    return torch.ones(num_train_timesteps + 1, dtype=torch.float64)


THETA_SCHEDULES = {"cosine": cosine_thetas, "linear": linear_thetas, "constant": constant_thetas}


@dataclass
class IRSDESchedulerOutput(BaseOutput):
    """``prev_sample``: x_s, the next (less noisy) state; ``pred_original_sample``: x0 predicted at t."""

    prev_sample: Tensor
    pred_original_sample: Tensor


def randn_like_batch(like: Tensor, generator: GeneratorLike = None) -> Tensor:
    """Standard normal noise shaped like ``like``; a generator list draws sample i with generator i
    (on the generator's device), so a sample is reproducible whatever batch it is in; GeneratorGroups
    draws a group of samples per generator."""
    dtype = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32
    if isinstance(generator, GeneratorGroups):
        size = generator.group_size(like.shape[0])
        noise = torch.cat([torch.randn((size, *like.shape[1:]), generator=g, dtype=dtype, device=g.device)
                           for g in generator.generators])
    elif isinstance(generator, (list, tuple)):
        if len(generator) != like.shape[0]:
            raise ValueError(f"generator: a list of {len(generator)} generators was given for a batch of "
                             f"{like.shape[0]}; give one generator per sample or a single generator")
        noise = torch.cat([torch.randn((1, *like.shape[1:]), generator=g, dtype=dtype, device=g.device)
                           for g in generator])
    else:
        device = generator.device if generator is not None else like.device
        noise = torch.randn(like.shape, generator=generator, dtype=dtype, device=device)
    return noise.to(device=like.device, dtype=like.dtype)


class IRSDEScheduler(SchedulerMixin, ConfigMixin):
    """Mean-reverting SDE scheduler (IR-SDE / Refusion) with the samplers listed in ``SAMPLERS``.

    ``max_sigma`` is on the 0-255 scale (50 means lambda = 50/255 on [0, 1] images; values < 1 are taken
    as already normalised, as in the official code). ``eta`` scales the posterior noise of the
    ``posterior`` sampler (1 = posterior, 0 = deterministic); ``solver_order`` (1 or 2) is the order
    of ``mr_ode`` / ``mr_sde``. The default sampler is ``mr_sde`` (order 2): in docs/sampling.md it
    matches or beats the official 100-step ``posterior`` sampler with 10-20 steps; ``sde``, ``ode``
    and ``posterior`` reproduce the official updates exactly at num_train_timesteps steps."""

    SAMPLERS = S.SAMPLERS
    SCHEDULES = SCHEDULES
    PREDICTION_TYPES = PREDICTION_TYPES
    order = 1

    @register_to_config
    def __init__(self, max_sigma: float = 50.0, num_train_timesteps: int = 100, schedule: str = "cosine",
                 eps: float = 0.005, sampler: str = "mr_sde", prediction_type: str = "epsilon",
                 eta: float = 1.0, solver_order: int = 2, default_inference_steps: Optional[int] = None):
        _check_choice("schedule", schedule, SCHEDULES)
        _check_choice("sampler", sampler, S.SAMPLERS)
        _check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        _check_choice("solver_order", solver_order, (1, 2))
        check_sde_numbers(num_train_timesteps, max_sigma, eps, eta, eps_hint="the signal left at t = T, e.g. 0.005")
        if default_inference_steps is not None and not (isinstance(default_inference_steps, int)
                                                        and 1 <= default_inference_steps <= num_train_timesteps):
            raise ValueError(f"default_inference_steps must be None or an int in [1, num_train_timesteps="
                             f"{num_train_timesteps}], got {default_inference_steps!r}")

        lam = max_sigma / 255 if max_sigma >= 1 else max_sigma
        thetas = THETA_SCHEDULES[schedule](num_train_timesteps)
        thetas_cumsum = torch.cumsum(thetas, dim=0) - thetas[0]
        self.stationary_std: float = float(lam)
        self.init_noise_sigma: float = float(lam)
        self.dt: float = float(-1 / thetas_cumsum[-1] * math.log(eps))
        self.thetas = thetas
        self.thetas_cumsum = thetas_cumsum
        self.sigmas = torch.sqrt(lam ** 2 * 2 * thetas)
        self.sigma_bars = torch.sqrt(lam ** 2 * (1 - torch.exp(-2 * thetas_cumsum * self.dt)))
        self._on_device: dict = {}
        self.set_timesteps(num_train_timesteps)

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def default_steps(self, sampler: str | None = None) -> int:
        """The documented step count of ``sampler`` (None: the configured one): 10 for mr_ode / mr_sde,
        every trained step for the official sde, ode and posterior updates. A model trained for a step
        count (a distilled student: ``default_inference_steps``) has that count for its own sampler."""
        sampler = sampler or self.config.sampler
        _check_choice("sampler", sampler, S.SAMPLERS)
        own = self.config.get("default_inference_steps")
        if own is not None and sampler == self.config.sampler:
            return own
        return min(S.FEW_STEP_DEFAULT.get(sampler, self.config.num_train_timesteps), self.config.num_train_timesteps)

    @property
    def is_stochastic(self) -> bool:
        """Whether ``step`` draws noise: sde, mr_sde, posterior with eta > 0 (ode, mr_ode and
        posterior with eta = 0 map x_T to x_0 deterministically)."""
        sampler = self.config.sampler
        return sampler in ("sde", "mr_sde") or (sampler == "posterior" and self.config.eta > 0)

    @property
    def samples_vary(self) -> bool:
        """Whether two runs with different generators give different images: always, since the start
        x_T = mu + lambda * z is drawn; the deterministic samplers (ode, mr_ode, posterior with eta = 0)
        carry each draw of x_T to its own x_0, as the probability-flow ODE carries the start law to the
        same marginals as the reverse SDE, so their samples are posterior samples too."""
        return True

    # ------------------------------------------------------------------ forward process and score
    def signal_scale(self, t: TimestepLike) -> Tensor:
        """alpha_t = exp(-Theta_t dt): the fraction of x0 - mu left at t (official ``weights``)."""
        return torch.exp(-self._schedule(t)["thetas_cumsum"] * self.dt)

    def sigma_bar(self, t: TimestepLike) -> Tensor:
        """Std of the forward marginal at t (float64, 0-d or (B,))."""
        return self._schedule(t)["sigma_bars"]

    def mu_bar(self, x0: Tensor, t: TimestepLike, *, mu: Tensor) -> Tensor:
        """Mean of the forward marginal: mu + (x0 - mu) exp(-Theta_t dt)."""
        _check_mu(mu, x0)
        return mu + (x0 - mu) * self._cast(self.signal_scale(self._index(t, x0)), x0)

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: TimestepLike, *,
                  mu: Tensor) -> Tensor:
        """x_t = mu_bar(x0, t) + sigma_bar_t * noise (forward marginal)."""
        t = self._index(timesteps, original_samples)
        return noise * self._cast(self.sigma_bar(t), original_samples) + self.mu_bar(original_samples, t, mu=mu)

    def sample_timesteps(self, batch_size: int, *, generator: Optional[torch.Generator] = None,
                         device: Union[str, torch.device, None] = None) -> Tensor:
        """Training timesteps t ~ U{1..T}, int64 (B,)."""
        gen_device = generator.device if generator is not None else device
        t = torch.randint(1, self.config.num_train_timesteps + 1, (batch_size,), generator=generator,
                          device=gen_device)
        return t.to(device) if device is not None else t

    def forward_step(self, x: Tensor, t: TimestepLike, *, mu: Tensor, noise: Tensor) -> Tensor:
        """One Euler–Maruyama step of the forward SDE (official ``forward_step``)."""
        _check_mu(mu, x)
        t = self._index(t, x, low=1)
        c = self._schedule(t)
        return x + self._cast(c["thetas"] * self.dt, x) * (mu - x) + \
            self._cast(c["sigmas"] * math.sqrt(self.dt), x) * noise

    def score_from_noise(self, noise_pred: Tensor, t: TimestepLike) -> Tensor:
        """score = -noise / sigma_bar_t."""
        return -noise_pred / self._cast(self.sigma_bar(self._index(t, noise_pred, low=1)), noise_pred)

    def x0_from_noise(self, x_t: Tensor, noise_pred: Tensor, t: TimestepLike, *, mu: Tensor) -> Tensor:
        """x0 = (x_t - mu - sigma_bar_t noise) exp(Theta_t dt) + mu."""
        _check_mu(mu, x_t)
        t = self._index(t, x_t, low=1)
        inv_signal = torch.exp(self._schedule(t)["thetas_cumsum"] * self.dt)
        return (x_t - mu - self._cast(self.sigma_bar(t), x_t) * noise_pred) * self._cast(inv_signal, x_t) + mu

    def noise_from_x0(self, x_t: Tensor, x0: Tensor, t: TimestepLike, *, mu: Tensor) -> Tensor:
        """The noise that makes x_t from x0: (x_t - mu_bar(x0, t)) / sigma_bar_t (official get_real_noise)."""
        t = self._index(t, x_t, low=1)
        return (x_t - self.mu_bar(x0, t, mu=mu)) / self._cast(self.sigma_bar(t), x_t)

    # ------------------------------------------------------------------ training target / prediction
    def reverse_sde_mean(self, x_t: Tensor, noise_pred: Tensor, t: TimestepLike, *, mu: Tensor) -> Tensor:
        """Mean of the official reverse-SDE step t -> t-1 from the predicted noise (training prediction)."""
        _check_mu(mu, x_t)
        t = self._index(t, x_t, low=1)
        c = self._schedule(t)
        score = self.score_from_noise(noise_pred, t)
        return S.euler_sde_step(x_t, mu, score, self._cast(c["thetas"] * self.dt, x_t),
                                self._cast(c["sigmas"] ** 2 * self.dt, x_t), None)

    def optimal_prev_sample(self, x_t: Tensor, x0: Tensor, t: TimestepLike, *, mu: Tensor) -> Tensor:
        """x*_{t-1}: mean of q(x_{t-1} | x_t, x0) (official reverse_optimum_step, the training target)."""
        t = self._index(t, x_t, low=1)
        return self.posterior_mean(x_t, x0, t, t - 1, mu=mu)

    def posterior_mean(self, x_t: Tensor, x0: Tensor, t: TimestepLike, s: TimestepLike, *,
                       mu: Tensor) -> Tensor:
        """Mean of the Gaussian q(x_s | x_t, x0) for any t > s >= 0."""
        _check_mu(mu, x_t)
        c = self._posterior(t, s, x_t)
        return S.gaussian_jump_step(x_t, mu, x0, self._cast(c["coef_x"], x_t), self._cast(c["coef_x0"], x_t))

    def posterior_std(self, t: TimestepLike, s: TimestepLike) -> Tensor:
        """Std of q(x_s | x_t, x0) (float64; official reverse_optimum_std for s = t - 1)."""
        return self._posterior(t, s, None)["std"]

    # ------------------------------------------------------------------ sampling
    def initial_sample(self, mu: Tensor, *, generator: GeneratorLike = None) -> Tensor:
        """x_T = mu + lambda z (the noisy degraded image); a generator list gives one per sample."""
        return mu + randn_like_batch(mu, generator) * self.stationary_std

    def scale_model_input(self, sample: Tensor, timestep: Optional[TimestepLike] = None) -> Tensor:
        return sample

    def set_timesteps(self, num_inference_steps: Optional[int] = None,
                      device: Union[str, torch.device, None] = None, *,
                      timesteps: Optional[Sequence[int]] = None) -> None:
        """Spread ``num_inference_steps`` steps over [1..T] ("trailing": T, T - T/n, ..., T/n, rounded)
        or use the given strictly decreasing ``timesteps`` in [1..T]; the last step jumps to 0.
        Precomputes every per-step coefficient in float64."""
        T = self.config.num_train_timesteps
        if timesteps is not None:
            t = torch.as_tensor(list(timesteps), dtype=torch.int64)
            if t.ndim != 1 or len(t) == 0 or int(t.min()) < 1 or int(t.max()) > T or bool((t[1:] >= t[:-1]).any()):
                raise ValueError(f"timesteps={list(timesteps)!r}: expected strictly decreasing integers in [1, {T}]")
        else:
            if not (isinstance(num_inference_steps, int) and 1 <= num_inference_steps <= T):
                raise ValueError(f"num_inference_steps={num_inference_steps!r}: expected an integer in "
                                 f"[1, num_train_timesteps={T}]")
            n = num_inference_steps
            t = torch.tensor([math.floor(T * (n - i) / n + 0.5) for i in range(n)], dtype=torch.int64)
        s = torch.cat([t[1:], torch.zeros(1, dtype=torch.int64)])
        self.num_inference_steps = len(t)
        self.timesteps = t.to(device) if device is not None else t
        self._tables = self._step_tables(t, s)
        self._table_cache: dict = {}
        self._timestep_set = frozenset(t.tolist())
        self._x0_prev: Optional[Tensor] = None

    def _step_tables(self, t: Tensor, s: Tensor) -> dict[str, Tensor]:
        """Per-timestep float64 tables (index = timestep, size T+1) for the configured sampler."""
        cfg, args = self.config, (self.thetas, self.thetas_cumsum, self.dt, self.stationary_std, t, s)
        if cfg.sampler in ("sde", "ode"):
            per_step = S.euler_coefficients(*args)
        elif cfg.sampler == "posterior":
            per_step = S.posterior_coefficients(*args, eta=cfg.eta)
        else:
            per_step = S.exponential_integrator_coefficients(
                *args, stochastic=cfg.sampler == "mr_sde", order=cfg.solver_order)
        per_step.update(sigma_bar=self.sigma_bars[t], signal=torch.exp(-self.thetas_cumsum[t] * self.dt),
                        prev_timestep=s)
        return step_tables(per_step, t, cfg.num_train_timesteps)

    def step(self, model_output: Tensor, timestep: TimestepLike, sample: Tensor, *, mu: Tensor,
             generator: GeneratorLike = None, variance_noise: Optional[Tensor] = None,
             return_dict: bool = True) -> Union[IRSDESchedulerOutput, tuple]:
        """One step t -> s (the next entry of ``timesteps``, 0 after the last) with ``config.sampler``.

        ``variance_noise`` replaces the drawn Gaussian noise of stochastic samplers."""
        _check_mu(mu, sample)
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output: shape {tuple(model_output.shape)} differs from sample shape "
                             f"{tuple(sample.shape)}")
        t = self._index(timestep, sample, allowed=self._timestep_set)
        tab = self._tables_like(sample)

        def coef(name: str) -> Tensor:
            v = tab[name][t.to(tab[name].device) if isinstance(t, Tensor) else t]
            return v.reshape(-1, *([1] * (sample.ndim - 1))) if v.ndim == 1 else v

        sigma_bar, signal = coef("sigma_bar"), coef("signal")
        if self.config.prediction_type == "epsilon":
            noise_pred = model_output
            x0_pred = (sample - mu - sigma_bar * noise_pred) / signal + mu
        else:
            x0_pred = model_output
            noise_pred = (sample - mu - signal * (x0_pred - mu)) / sigma_bar
        sampler = self.config.sampler
        noise = None
        if self.is_stochastic:
            noise = variance_noise if variance_noise is not None else randn_like_batch(sample, generator)
        if sampler in ("sde", "ode"):
            score = -noise_pred / sigma_bar
            if sampler == "sde":
                prev = S.euler_sde_step(sample, mu, score, coef("theta_dt"), coef("g2_dt"), coef("g_sqrt_dt"),
                                        noise)
            else:
                prev = S.euler_ode_step(sample, mu, score, coef("theta_dt"), coef("g2_dt"))
        else:
            data = x0_pred
            if sampler != "posterior":
                data = S.multistep_x0(x0_pred, self._x0_prev, coef("weight"))
                self._x0_prev = x0_pred
            prev = S.gaussian_jump_step(sample, mu, data, coef("coef_x"), coef("coef_x0"), coef("std"), noise)
        if not return_dict:
            return prev, x0_pred
        return IRSDESchedulerOutput(prev_sample=prev, pred_original_sample=x0_pred)

    # ------------------------------------------------------------------ helpers
    def _posterior(self, t: TimestepLike, s: TimestepLike, like: Optional[Tensor]) -> dict[str, Tensor]:
        T = self.config.num_train_timesteps
        t, s = _as_long(t, "t"), _as_long(s, "s")
        _check_range("t", t, 1, T)
        _check_range("s", s, 0, T)
        if _on_cpu(t) and _on_cpu(s) and bool((s >= t).any()):
            raise ValueError(f"s={s.tolist()} must be smaller than t={t.tolist()} (a step goes t -> s < t)")
        if like is not None:
            _check_batch("t", t, like)
        arrays = self._arrays_on(t.device)
        t, s = torch.broadcast_tensors(t, s)
        return S.posterior_coefficients(arrays["thetas"], arrays["thetas_cumsum"], self.dt,
                                        self.stationary_std, t, s)

    def _index(self, t: TimestepLike, like: Tensor, low: int = 0,
               allowed: Optional[frozenset] = None) -> TimestepLike:
        """Validate t (int, 0-d or (B,) int tensor) against the schedule and the batch of ``like``."""
        T = self.config.num_train_timesteps
        index = _as_long(t, "timestep")
        _check_range("timestep", index, low, T)
        _check_batch("timestep", index, like)
        if allowed is not None and _on_cpu(index) and not set(index.reshape(-1).tolist()) <= allowed:
            raise ValueError(f"timestep={index.tolist()} is not in the inference schedule "
                             f"{sorted(allowed, reverse=True)}; call set_timesteps first")
        return index if isinstance(t, Tensor) else int(t)   # ints index tables without a device copy

    def _arrays_on(self, device: torch.device) -> dict[str, Tensor]:
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = {name: getattr(self, name).to(device)
                                    for name in ("thetas", "thetas_cumsum", "sigmas", "sigma_bars")}
        return self._on_device[key]

    def _schedule(self, t: TimestepLike) -> dict[str, Tensor]:
        """The schedule arrays gathered at t (float64, 0-d or (B,))."""
        t = _as_long(t, "timestep")
        _check_range("timestep", t, 0, self.config.num_train_timesteps)
        return {name: values[t] for name, values in self._arrays_on(t.device).items()}

    def _tables_like(self, sample: Tensor) -> dict[str, Tensor]:
        """Step tables cast once per (dtype, device) of the samples."""
        key = (sample.dtype, str(sample.device))
        if key not in self._table_cache:
            self._table_cache[key] = {
                name: v.to(sample.device) if name == "prev_timestep" else v.to(sample.device, sample.dtype)
                for name, v in self._tables.items()}
        return self._table_cache[key]

    @staticmethod
    def _cast(values: Tensor, like: Tensor) -> Tensor:
        """Cast float64 coefficients to ``like`` and shape (B,) ones to broadcast over (B, C, H, W)."""
        values = values.to(device=like.device, dtype=like.dtype)
        return values.reshape(-1, *([1] * (like.ndim - 1))) if values.ndim == 1 else values


# ---------------------------------------------------------------------- validation
def step_tables(per_step: dict[str, Tensor], t: Tensor, num_train_timesteps: int) -> dict[str, Tensor]:
    """Per-step coefficients (one value per inference timestep ``t``) as tables indexed by timestep 0..T."""
    tables = {}
    for name, values in per_step.items():
        table = torch.zeros(num_train_timesteps + 1, dtype=values.dtype)
        table[t] = values
        tables[name] = table
    return tables


def check_sde_numbers(num_train_timesteps, max_sigma, eps, eta, *, eps_hint: str) -> None:
    """The numeric arguments every mean-reverting SDE scheduler takes, with messages naming them."""
    if not (isinstance(num_train_timesteps, int) and num_train_timesteps >= 1):
        raise ValueError(f"num_train_timesteps={num_train_timesteps!r}: expected an integer >= 1")
    if not max_sigma > 0:
        raise ValueError(f"max_sigma={max_sigma!r}: expected > 0 (0-255 scale, e.g. 50)")
    if not 0 < eps < 1:
        raise ValueError(f"eps={eps!r}: expected 0 < eps < 1 ({eps_hint})")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta={eta!r}: expected 0 <= eta <= 1 (1 = posterior, 0 = deterministic)")


def _check_choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed: {', '.join(map(repr, allowed))}")


def _check_mu(mu: Tensor, sample: Tensor) -> None:
    if not isinstance(mu, Tensor) or mu.shape != sample.shape:
        got = tuple(mu.shape) if isinstance(mu, Tensor) else type(mu).__name__
        raise ValueError(f"mu: shape {got} must equal the sample shape {tuple(sample.shape)} "
                         f"(mu is the degraded image the SDE reverts to)")


def _as_long(t: TimestepLike, name: str) -> Tensor:
    if isinstance(t, Tensor):
        if t.is_floating_point() or t.is_complex() or t.ndim > 1:
            raise ValueError(f"{name}: expected an int or a (B,) integer tensor, got dtype {t.dtype}, "
                             f"shape {tuple(t.shape)}")
        return t.long()
    if isinstance(t, bool) or not isinstance(t, numbers.Integral):
        raise ValueError(f"{name}={t!r}: expected an int or a (B,) integer tensor")
    return torch.tensor(int(t), dtype=torch.int64)


def _on_cpu(t: Tensor) -> bool:
    return t.device.type == "cpu"


def _check_range(name: str, t: Tensor, low: int, high: int) -> None:
    # On accelerators the check would force a host sync every step; out-of-range indices fail there anyway.
    if _on_cpu(t) and t.numel() and (int(t.min()) < low or int(t.max()) > high):
        raise ValueError(f"{name}={t.tolist()} is out of range; allowed: integers in [{low}, {high}]")


def _check_batch(name: str, t: Tensor, like: Tensor) -> None:
    if t.ndim == 1 and (like.ndim == 0 or t.shape[0] != like.shape[0]):
        raise ValueError(f"{name}: a per-sample tensor of shape {tuple(t.shape)} does not match the batch of "
                         f"{like.shape[0] if like.ndim else 0} samples")

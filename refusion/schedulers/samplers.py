"""IR-SDE update rules as small pure functions over the schedule arrays.

Notation (see docs/sde.md): y = x - mu, alpha_t = exp(-Theta_t dt) (``signal_scale``),
sigma_bar_t = lambda sqrt(1 - alpha_t^2), one step jumps from timestep t to s < t.

Two families:

* Euler (official IR-SDE): ``euler_sde_step`` / ``euler_ode_step`` discretise the reverse SDE /
  probability-flow ODE with the score at t held over the interval. Over a stride t -> s the
  mean-reversion rate is integrated over the stride (``merged_theta``); accurate only with many steps.
* Gaussian jumps in data prediction: ``posterior`` (closed-form q(x_s | x_t, x0_pred), DDIM-like eta)
  and the exponential integrators ``mr_ode`` / ``mr_sde`` (MR Sampler, Li et al. ICLR 2025): the
  linear part is solved exactly, the network term is integrated in the half log-SNR
  l = log(alpha / sqrt(1 - alpha^2)) with x0_pred constant (order 1) or linear in l through the previous
  prediction (order 2, multistep). All of them are ``x_s = mu + coef_x (x_t - mu) + coef_x0 (D - mu) +
  std * z`` with D = x0_pred + weight (x0_pred - x0_prev); only the coefficient tables differ.

The coefficient functions return float64 tables indexed by the step; the scheduler gathers them by
timestep and casts once to the sample's dtype/device.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

SAMPLERS = ("sde", "ode", "posterior", "mr_ode", "mr_sde")
# default step count of the exponential integrators: at 10 steps they match the official 100-step
# posterior sampler within 0.1 dB PSNR and 0.005 LPIPS (docs/sampling.md); the official samplers
# default to every trained step, as the official test does
FEW_STEP_DEFAULT = {"mr_ode": 10, "mr_sde": 10}


# ----------------------------------------------------------------------------------------------
# update rules (tensors in, tensor out; coefficients already broadcastable to x)
# ----------------------------------------------------------------------------------------------
def euler_sde_step(x: Tensor, mu: Tensor, score: Tensor, theta_dt: Tensor, g2_dt: Tensor,
                   g_sqrt_dt: Tensor, noise: Optional[Tensor] = None) -> Tensor:
    """Euler–Maruyama step of the reverse SDE: x - [theta (mu - x) - g^2 score] dt - g sqrt(dt) z.

    ``noise=None`` gives the step mean (the training prediction ``reverse_sde_mean``)."""
    mean = x - (theta_dt * (mu - x) - g2_dt * score)
    return mean if noise is None else mean - g_sqrt_dt * noise


def euler_ode_step(x: Tensor, mu: Tensor, score: Tensor, theta_dt: Tensor, g2_dt: Tensor) -> Tensor:
    """Euler step of the probability-flow ODE: x - [theta (mu - x) - g^2/2 score] dt."""
    return x - (theta_dt * (mu - x) - 0.5 * g2_dt * score)


def multistep_x0(x0_pred: Tensor, x0_prev: Optional[Tensor], weight: Tensor) -> Tensor:
    """Second-order data term D = x0_pred + weight (x0_pred - x0_prev) (weight 0 = first order)."""
    if x0_prev is None or x0_prev.shape != x0_pred.shape:
        return x0_pred
    return x0_pred + weight * (x0_pred - x0_prev)


def gaussian_jump_step(x: Tensor, mu: Tensor, x0_data: Tensor, coef_x: Tensor, coef_x0: Tensor,
                       std: Optional[Tensor] = None, noise: Optional[Tensor] = None) -> Tensor:
    """x_s = mu + coef_x (x_t - mu) + coef_x0 (x0_data - mu) [+ std z]: posterior, mr_ode, mr_sde."""
    mean = coef_x * (x - mu) + coef_x0 * (x0_data - mu) + mu
    return mean if noise is None or std is None else mean + std * noise


# ----------------------------------------------------------------------------------------------
# coefficient tables (float64, vectorised over the steps t -> s)
# ----------------------------------------------------------------------------------------------
def merged_theta(thetas: Tensor, thetas_cumsum: Tensor, t: Tensor, s: Tensor) -> Tensor:
    """sum_{k=s+1..t} theta_k; exactly ``thetas[t]`` for s = t - 1 so stride 1 is the official step."""
    return torch.where(t - s == 1, thetas[t], thetas_cumsum[t] - thetas_cumsum[s])


def euler_coefficients(thetas: Tensor, thetas_cumsum: Tensor, dt: float, lam: float,
                       t: Tensor, s: Tensor) -> dict[str, Tensor]:
    """theta dt, g^2 dt and g sqrt(dt) over the merged interval (s, t]."""
    theta = merged_theta(thetas, thetas_cumsum, t, s)
    g = torch.sqrt(lam ** 2 * 2 * theta)          # official sigmas = sqrt(lambda^2 * 2 * theta)
    return {"theta_dt": theta * dt, "g2_dt": g ** 2 * dt, "g_sqrt_dt": g * math.sqrt(dt)}


def jump_factors(thetas: Tensor, thetas_cumsum: Tensor, dt: float, t: Tensor, s: Tensor):
    """A = exp(-theta_(s,t] dt), B = alpha_t = exp(-Theta_t dt), C = alpha_s = exp(-Theta_s dt)."""
    a = torch.exp(-merged_theta(thetas, thetas_cumsum, t, s) * dt)
    return a, torch.exp(-thetas_cumsum[t] * dt), torch.exp(-thetas_cumsum[s] * dt)


def posterior_coefficients(thetas: Tensor, thetas_cumsum: Tensor, dt: float, lam: float,
                           t: Tensor, s: Tensor, eta: float = 1.0) -> dict[str, Tensor]:
    """Closed-form q(x_s | x_t, x0) of the mean-reverting SDE, generalised DDIM-style by eta.

    eta = 1: the posterior (official reverse_optimum_step / reverse_optimum_std for s = t - 1);
    eta = 0: deterministic, keeps the marginal (x_s = mu + alpha_s x0 + sigma_bar_s eps_pred)."""
    a, b, c = jump_factors(thetas, thetas_cumsum, dt, t, s)
    coef_x = a * (1 - c ** 2) / (1 - b ** 2)       # official term1
    coef_x0 = c * (1 - a ** 2) / (1 - b ** 2)      # official term2
    var = (1 - a ** 2) * (1 - c ** 2) / (1 - b ** 2)
    std = torch.sqrt(torch.clamp(var, min=1e-20 * dt)) * lam   # official clamp keeps log finite
    if eta != 1.0:
        # keep the total variance sigma_bar_s^2: the removed posterior noise goes back along eps_pred
        coef_x_eta = torch.sqrt(coef_x ** 2 + (1 - eta ** 2) * var / (1 - b ** 2))
        coef_x0 = coef_x0 + (coef_x - coef_x_eta) * b
        coef_x, std = coef_x_eta, eta * std
    return {"coef_x": coef_x, "coef_x0": coef_x0, "std": std}


def exponential_integrator_coefficients(thetas: Tensor, thetas_cumsum: Tensor, dt: float, lam: float,
                                        t: Tensor, s: Tensor, *, stochastic: bool,
                                        order: int) -> dict[str, Tensor]:
    """MR Sampler (data prediction) for the steps t[i] -> s[i], given in sampling order.

    With e^{-h} = alpha_t sigma_bar_s / (sigma_bar_t alpha_s) (h = l_s - l_t > 0):
      ODE: x_s - mu = (sigma_bar_s/sigma_bar_t) y_t + alpha_s (1 - e^{-h}) D
      SDE: x_s - mu = (sigma_bar_s/sigma_bar_t) e^{-h} y_t + alpha_s (1 - e^{-2h}) D
                      + sigma_bar_s sqrt(1 - e^{-2h}) z
    Order 2 (multistep, DPM-Solver++(2M) midpoint form) replaces x0_pred by
    D = x0_pred + h / (2 h_prev) (x0_pred - x0_prev), x0_prev predicted one step earlier (h_prev).
    The first step and the final jump to s = 0 (h = inf) are first order."""
    _, b, c = jump_factors(thetas, thetas_cumsum, dt, t, s)
    sigma_ratio = torch.sqrt((1 - c ** 2) / (1 - b ** 2))          # sigma_bar_s / sigma_bar_t
    exp_neg_h = sigma_ratio * b / c
    h = -torch.log(exp_neg_h)
    if stochastic:
        decay = 1 - exp_neg_h ** 2
        coefs = {"coef_x": sigma_ratio * exp_neg_h, "coef_x0": c * decay,
                 "std": lam * torch.sqrt(1 - c ** 2) * torch.sqrt(decay)}
    else:
        coefs = {"coef_x": sigma_ratio, "coef_x0": c * (1 - exp_neg_h), "std": torch.zeros_like(c)}
    weight = torch.zeros_like(c)
    if order == 2 and len(t) > 1:
        h_prev = h[:-1]
        # the exact integral of the linear extrapolation overshoots on large step ratios; the midpoint
        # weight (also second order) was more accurate on a Gaussian test problem with 5-20 steps
        second = torch.isfinite(h[1:]) & torch.isfinite(h_prev)
        weight[1:] = torch.where(second, h[1:] / (2 * h_prev), torch.zeros_like(h_prev))
    coefs["weight"] = weight
    return coefs


# ----------------------------------------------------------------------------------------------
# DenoisingSDE (IR-SDE paper, Gaussian denoising): the mean-reverting SDE with mu = x0
# ----------------------------------------------------------------------------------------------
DENOISING_SAMPLERS = ("sde", "ode", "posterior")


def mean_reverting_schedule(thetas: Tensor, lam: float, eps: float) -> dict:
    """Theta_t = cumsum(theta)_t - theta_0, dt = -ln(eps) / Theta_T, g_t = sqrt(2 lam^2 theta_t),
    sigma_bar_t = lam sqrt(1 - exp(-2 Theta_t dt)); in the dtype of ``thetas``, with the official
    order of operations (``dt`` is returned as a Python float)."""
    thetas_cumsum = torch.cumsum(thetas, dim=0) - thetas[0]
    dt = float(-1 / thetas_cumsum[-1] * math.log(eps))
    return {"thetas_cumsum": thetas_cumsum, "dt": dt, "sigmas": torch.sqrt(lam ** 2 * 2 * thetas),
            "sigma_bars": torch.sqrt(lam ** 2 * (1 - torch.exp(-2 * thetas_cumsum * dt)))}


def trailing_timesteps(start: int, n: int) -> Tensor:
    """n timesteps spread over [1..start], "trailing": start, start - start/n, ..., start/n (rounded)."""
    return torch.tensor([math.floor(start * (n - i) / n + 0.5) for i in range(n)], dtype=torch.int64)


def denoising_euler_coefficients(thetas: Tensor, thetas_cumsum: Tensor, dt: float, lam: float,
                                 t: Tensor, s: Tensor, *, stochastic: bool) -> dict[str, Tensor]:
    """Score coefficient k and noise scale g sqrt(dt) of the DenoisingSDE's Euler steps t -> s.

    With g^2 dt = 2 lam^2 theta_(s,t] dt (``merged_theta``; theta_t dt for s = t - 1) and
    r_t = exp(-2 Theta_t dt):  sde: k = g^2 dt (1 + r_t) / 2 (official ``sde_reverse_drift``),
    ode: k = g^2 dt r_t / 2 (official ``ode_reverse_drift``)."""
    euler = euler_coefficients(thetas, thetas_cumsum, dt, lam, t, s)
    decay = torch.exp(-2 * thetas_cumsum[t] * dt)
    score_coef = 0.5 * euler["g2_dt"] * ((1 + decay) if stochastic else decay)
    return {"score_coef": score_coef, "g_sqrt_dt": euler["g_sqrt_dt"] if stochastic else torch.zeros_like(decay)}


def denoising_euler_step(x: Tensor, score: Tensor, score_coef: Tensor, g_sqrt_dt: Optional[Tensor] = None,
                         noise: Optional[Tensor] = None) -> Tensor:
    """x_s = x_t + k score [- g sqrt(dt) z]: the DenoisingSDE's reverse steps (official
    ``reverse_sde_step`` / ``reverse_ode_step``). There is no mu: the IR-SDE drift theta (x0 - x)
    toward the unknown clean image is written sigma_bar_t^2 score (Tweedie) and folded into k.
    ``noise=None`` gives the step mean (the training prediction)."""
    mean = x + score_coef * score
    return mean if noise is None or g_sqrt_dt is None else mean - g_sqrt_dt * noise

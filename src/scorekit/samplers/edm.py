r"""Karras et al.'s stochastic sampler (EDM, Algorithm 2), for any process.

Work in the scale-free coordinates :math:`y = x/\alpha(t)`,
:math:`\tilde\sigma = \sigma(t)/\alpha(t)`, where the PF-ODE reads
:math:`dy/d\tilde\sigma = (y - D(y, \tilde\sigma))/\tilde\sigma` with :math:`D = \hat x_0`.
Each step from :math:`\tilde\sigma_i` to :math:`\tilde\sigma_{i+1}`:

1. churn: :math:`\gamma_i = \min(S_{churn}/N, \sqrt2 - 1)` if
   :math:`S_{min} \le \tilde\sigma_i \le S_{max}`, else 0;
   :math:`\hat\sigma = (1 + \gamma_i)\tilde\sigma_i`,
   :math:`\hat y = y + \sqrt{\hat\sigma^2 - \tilde\sigma_i^2}\, S_{noise}\, z`;
2. Heun from :math:`\hat\sigma` to :math:`\tilde\sigma_{i+1}`:
   :math:`d = (\hat y - D(\hat y, \hat\sigma))/\hat\sigma`,
   :math:`y' = \hat y + (\tilde\sigma_{i+1} - \hat\sigma) d`, then, unless
   :math:`\tilde\sigma_{i+1} = 0`, the trapezoid correction with
   :math:`d' = (y' - D(y', \tilde\sigma_{i+1}))/\tilde\sigma_{i+1}`.

:math:`\hat\sigma` is capped at :math:`\tilde\sigma(T)`, the end of the process domain. With
``s_churn = 0`` this is deterministic Heun in :math:`\tilde\sigma` (for the
:class:`~scorekit.core.processes.EDM` process, exactly :class:`~scorekit.samplers.ode.Heun`).
The sampler follows the grid to its end: on a grid ending at :math:`\sigma = 0` the last
step is the denoising step :math:`D(\hat y, \hat\sigma_{N-1})`; otherwise it stops at
:math:`\sigma_{min}` without one.

References:
    Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models",
    NeurIPS 2022, Algorithm 2 and Table 5 (S_churn, S_tmin, S_tmax, S_noise).
"""

from __future__ import annotations

import math

import torch

from .._validate import check_positive
from ..core.random import randn_like
from .base import Grid, Sampler

__all__ = ["EDMSampler"]


class EDMSampler(Sampler):
    r"""EDM's stochastic Heun sampler.

    Arguments:
        s_churn: total churn :math:`S_{churn} \ge 0` (0: deterministic).
        s_min, s_max: churn only where :math:`S_{min} \le \tilde\sigma_i \le S_{max}`.
        s_noise: noise inflation :math:`S_{noise}` (1.0 is exact; EDM used 1.003-1.007
            to offset learned denoisers' over-smoothing).

    NFE: two per step, one on a final step to :math:`\sigma = 0`. Default grid: Karras
    :math:`\rho = 7`, 50 steps.
    """

    default_steps = 50

    def __init__(
        self,
        s_churn: float = 0.0,
        s_min: float = 0.0,
        s_max: float = math.inf,
        s_noise: float = 1.0,
    ):
        self.s_churn = check_positive("s_churn", s_churn, strict=False)
        self.s_min = check_positive("s_min", s_min, strict=False)
        self.s_max = float(s_max)
        if not self.s_max >= self.s_min:
            raise ValueError(f"s_max must be >= s_min = {self.s_min}, got {s_max!r}")
        self.s_noise = check_positive("s_noise", s_noise, strict=False)
        self.stochastic = self.s_churn > 0
        self.order = None if self.stochastic else 2

    def init(self, model, x, grid):
        # churned level of every step: sigma_hat = (1 + gamma_i) sigma_i, capped at the
        # process's end, and its time, read once here (closed-form t_of_ratio)
        n = grid.n
        gamma = min(self.s_churn / n, math.sqrt(2) - 1)
        top = float(grid.process.ratio(torch.tensor(grid.process.T, dtype=torch.float64)))
        sig = [grid.ratio(i) for i in range(n)]
        hat = [min(s * (1 + gamma), top) if self.s_min <= s <= self.s_max else s for s in sig]
        churned = Grid.of(
            grid.process, grid.process.t_of_ratio(torch.tensor(hat, dtype=torch.float64))
        )
        return [
            (hat[i], churned.t[i], churned.alpha[i])
            if hat[i] > sig[i]
            else (sig[i], grid.t[i], grid.alpha[i])
            for i in range(n)
        ]

    def step(self, model, x, i, grid, state, generator):
        sig, a = grid.ratio(i), grid.alpha[i]
        sig1, a1 = grid.ratio(i + 1), grid.alpha[i + 1]
        hat, t_hat, a_hat = state[i]
        y = x / a
        if hat > sig:
            y = y + (math.sqrt(hat**2 - sig**2) * self.s_noise) * randn_like(x, generator)
        d = (y - model.x0(a_hat * y, t_hat)) / hat
        y1 = y + (sig1 - hat) * d
        if sig1 > 0:
            d1 = (y1 - model.x0(a1 * y1, grid.t[i + 1])) / sig1
            y1 = y + (sig1 - hat) * 0.5 * (d + d1)
        return a1 * y1, state

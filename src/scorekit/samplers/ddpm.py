r"""DDPM ancestral sampling and DDIM, written for any process.

Between grid times :math:`t > s`, with :math:`(\alpha_t, \sigma_t)`, :math:`(\alpha_s, \sigma_s)`,
the forward transition is :math:`x_t = a\,x_s + b z`, :math:`a = \alpha_t/\alpha_s`,
:math:`b^2 = \sigma_t^2 - a^2\sigma_s^2`, and the exact posterior is

.. math:: q(x_s \mid x_t, x_0) = \mathcal{N}\big(\alpha_s x_0 + \sqrt{\sigma_s^2 - v}\;
          \varepsilon,\ v\big), \qquad v = \sigma_s^2\Big(1 - \frac{a^2\sigma_s^2}{\sigma_t^2}\Big),
          \qquad \varepsilon = \frac{x_t - \alpha_t x_0}{\sigma_t}.

DDIM replaces :math:`v` by :math:`\eta^2 v` and plugs in the model's :math:`\hat x_0`:
:math:`\eta = 1` is DDPM's ancestral step (:math:`\tilde\beta` variance; :class:`DDPM` is
this class with :math:`\eta = 1`), :math:`\eta = 0` the deterministic DDIM (the
exponential-Euler step of the PF-ODE in :math:`(x/\alpha, \sigma/\alpha)`). For VP these are Ho et
al.'s and Song et al.'s updates on
the grid of :func:`~scorekit.core.schedules.ddpm_time_grid`, whose last point :math:`t = 0`
(:math:`\bar\alpha = 1`) makes the final step return the denoised :math:`\hat x_0`; on a
grid that ends at :math:`\sigma > 0` the samplers stop there (no extra denoising step).

References:
    Ho et al., "Denoising Diffusion Probabilistic Models", NeurIPS 2020, Algorithm 2.
    Song, Meng & Ermon, "Denoising Diffusion Implicit Models", ICLR 2021, eq. (12), (16).
"""

from __future__ import annotations

import math

from .._validate import check_choice, check_range
from ..core.processes import Process
from ..core.random import randn_like
from ..core.schedules import ddpm_time_grid
from .base import Grid, Sampler

__all__ = ["DDIM", "DDPM"]

VARIANCES = ("posterior", "beta")


def _coefficients(grid: Grid, eta: float, variance: str) -> list[tuple[float, float, float]]:
    r"""The update :math:`x_s = \alpha_s\hat x_0 + c\,\hat\varepsilon + w z` of every step as
    ``(c, w)`` floats, with the noise scale ``w = 0`` on the last step and where
    :math:`\sigma_s = 0`."""
    out = []
    for i in range(grid.n):
        at, st = grid.alpha[i], grid.sigma[i]
        as_, ss = grid.alpha[i + 1], grid.sigma[i + 1]
        a = at / as_
        v = ss**2 * max(0.0, 1 - (a * ss / st) ** 2)  # posterior variance
        b2 = max(0.0, st**2 - (a * ss) ** 2)  # forward transition variance
        var = eta**2 * (v if variance == "posterior" else b2)
        mean_var = eta**2 * v
        last = i == grid.n - 1
        noise = 0.0 if (last or ss == 0.0) else math.sqrt(var)
        out.append((math.sqrt(max(0.0, ss**2 - mean_var)), noise))
    return out


class DDIM(Sampler):
    r"""DDIM with stochasticity :math:`\eta \in [0, 1]`:

    .. math:: x_s = \alpha_s\hat x_0 + \sqrt{\sigma_s^2 - \eta^2 v}\ \hat\varepsilon
              + \eta\sqrt{w}\, z ,

    with :math:`w = v` (``variance="posterior"``, :math:`\tilde\beta_t`) or :math:`w = b^2`
    (``"beta"``, :math:`\beta_t`), and :math:`z = 0` on the last step (Ho et al.'s
    Algorithm 2 sets :math:`z = 0` at :math:`t = 1`). On the default DDPM grid, which ends at
    :math:`\sigma = 0`, the sample ends on :math:`\hat x_0`; on a grid that ends at
    :math:`\sigma_{min} > 0`, on the posterior mean. One model evaluation per step;
    deterministic (and first order) for ``eta = 0``. The coefficients of every step are
    computed once per call.

    Default grid: DDPM timesteps with "trailing" spacing, ending at ``t = 0``.
    """

    default_steps = 50

    def __init__(self, eta: float = 0.0, variance: str = "posterior"):
        check_range("eta", float(eta), 0.0, 1.0)
        self.eta = float(eta)
        self.variance = check_choice("variance", variance, VARIANCES)
        self.stochastic = self.eta > 0
        self.order = None if self.stochastic else 1

    def default_grid(self, process: Process, steps: int):
        return ddpm_time_grid(process, steps, "trailing", num_train_steps=1000)

    def init(self, model, x, grid):
        return _coefficients(grid, self.eta, self.variance)

    def step(self, model, x, i, grid, state, generator):
        x0 = model.x0(x, grid.t[i])
        eps = (x - grid.alpha[i] * x0) / grid.sigma[i]
        c, w = state[i]
        out = grid.alpha[i + 1] * x0 + c * eps
        if w > 0:
            out = out + w * randn_like(x, generator)
        return out, state


class DDPM(DDIM):
    r"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2): :class:`DDIM` with
    :math:`\eta = 1`, :math:`x_s = \alpha_s\hat x_0 + \sqrt{\sigma_s^2 - v}\,\hat\varepsilon
    + \sqrt{w}\, z`, the posterior mean of Ho et al.'s eq. (7) and ``variance="posterior"``
    (:math:`w = v = \tilde\beta_t`) or ``"beta"`` (:math:`w = b^2 = \beta_t`). One model
    evaluation per step; 1000 steps by default.
    """

    default_steps = 1000

    def __init__(self, variance: str = "posterior"):
        super().__init__(eta=1.0, variance=variance)

    def __repr__(self) -> str:
        return f"DDPM(variance={self.variance!r})"

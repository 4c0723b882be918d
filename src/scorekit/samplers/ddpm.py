r"""DDPM ancestral sampling and DDIM, written for any process.

Between grid times :math:`t > s`, with :math:`(\alpha_t, \sigma_t)`, :math:`(\alpha_s, \sigma_s)`,
the forward transition is :math:`x_t = a\,x_s + b z`, :math:`a = \alpha_t/\alpha_s`,
:math:`b^2 = \sigma_t^2 - a^2\sigma_s^2`, and the exact posterior is

.. math:: q(x_s \mid x_t, x_0) = \mathcal{N}\big(\alpha_s x_0 + \sqrt{\sigma_s^2 - v}\;
          \varepsilon,\ v\big), \qquad v = \sigma_s^2\Big(1 - \frac{a^2\sigma_s^2}{\sigma_t^2}\Big),
          \qquad \varepsilon = \frac{x_t - \alpha_t x_0}{\sigma_t}.

DDIM replaces :math:`v` by :math:`\eta^2 v` and plugs in the model's :math:`\hat x_0`:
:math:`\eta = 1` is DDPM's ancestral step (:math:`\tilde\beta` variance), :math:`\eta = 0` the
deterministic DDIM (the exponential-Euler step of the PF-ODE in
:math:`(x/\alpha, \sigma/\alpha)`). For VP these are Ho et al.'s and Song et al.'s updates on
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
from .base import Sampler, randn_like

__all__ = ["DDIM", "DDPM"]


def _posterior(process, t, s):
    """(alpha_t, sigma_t, alpha_s, sigma_s, posterior variance v, transition variance b^2)."""
    at, st = (float(v) for v in process.marginal(t))
    as_, ss = (float(v) for v in process.marginal(s))
    a = at / as_
    v = ss**2 * max(0.0, 1 - (a * ss / st) ** 2)
    b2 = max(0.0, st**2 - (a * ss) ** 2)
    return at, st, as_, ss, v, b2


class DDIM(Sampler):
    r"""DDIM with stochasticity :math:`\eta \in [0, 1]`:

    .. math:: x_s = \alpha_s\hat x_0 + \sqrt{\sigma_s^2 - \eta^2 v}\ \hat\varepsilon
              + \eta\sqrt{v}\, z .

    One model evaluation per step; deterministic (and first order) for ``eta = 0``.
    """

    def __init__(self, eta: float = 0.0):
        check_range("eta", float(eta), 0.0, 1.0)
        self.eta = float(eta)
        self.stochastic = self.eta > 0
        self.order = None if self.stochastic else 1

    def step(self, model, x, t, t_next, state, generator, last):
        at, st, as_, ss, v, _ = _posterior(model.process, t, t_next)
        x0 = model.x0(x, t)
        eps = (x - at * x0) / st
        var = self.eta**2 * v
        out = as_ * x0 + math.sqrt(max(0.0, ss**2 - var)) * eps
        if var > 0:
            out = out + math.sqrt(var) * randn_like(x, generator)
        return out, state


class DDPM(Sampler):
    r"""DDPM ancestral sampling: :math:`x_s = \alpha_s\hat x_0 + \sqrt{\sigma_s^2 - v}\,
    \hat\varepsilon + \sqrt{w}\, z`, with the posterior mean of Ho et al.'s eq. (7) and
    ``variance="posterior"`` (:math:`w = v = \tilde\beta_t`) or ``"beta"``
    (:math:`w = b^2 = \beta_t`). No noise is added on the last step (Algorithm 2's
    :math:`z = 0` at :math:`t = 1`), so on the default DDPM grid, which ends at
    :math:`\sigma = 0`, the sample ends on :math:`\hat x_0`, and on a grid that ends at
    :math:`\sigma_{min} > 0` on the posterior mean. One model evaluation per step.
    """

    stochastic = True

    def __init__(self, variance: str = "posterior"):
        self.variance = check_choice("variance", variance, ("posterior", "beta"))

    def step(self, model, x, t, t_next, state, generator, last):
        at, st, as_, ss, v, b2 = _posterior(model.process, t, t_next)
        x0 = model.x0(x, t)
        eps = (x - at * x0) / st
        out = as_ * x0 + math.sqrt(max(0.0, ss**2 - v)) * eps
        w = v if self.variance == "posterior" else b2
        if not last and ss > 0 and w > 0:
            out = out + math.sqrt(w) * randn_like(x, generator)
        return out, state

r"""Langevin dynamics: ULA, MALA and NCSN's annealed Langevin.

The overdamped Langevin diffusion :math:`dx = \nabla\log p(x)\,dt + \sqrt2\,dw` has
:math:`p` as its invariant law; its Euler discretisation (ULA) is

.. math:: x_{k+1} = x_k + \eta\, s(x_k) + \sqrt{2\eta}\, z_k ,

biased by :math:`O(\eta)`; a Metropolis–Hastings test on the same proposal (MALA) removes
the bias. The test needs :math:`E(x') - E(x)`: an energy model gives it directly; for a score
model it is the line integral of the score along the segment from :math:`x` to :math:`x'`,

.. math:: E(x') - E(x) = -\int_0^1 s\big(x + u\,(x' - x)\big)\cdot(x' - x)\,du ,

taken by Gauss–Lobatto quadrature, whose end points are the two scores the proposal needs
anyway (exact for a conservative score whose log-density is a polynomial of degree
:math:`2n - 2` with :math:`n` points: the trapezoid rule, :math:`n = 2`, is exact for a
Gaussian).

References:
    Roberts & Tweedie, "Exponential convergence of Langevin distributions and their
    discrete approximations", Bernoulli 1996. Abramowitz & Stegun, *Handbook of
    Mathematical Functions*, 25.4.32 (Lobatto quadrature). Song & Ermon, "Generative Modeling by
    Estimating Gradients of the Data Distribution", NeurIPS 2019, Algorithm 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._validate import check_int, check_positive
from ..core.processes import Process
from ..core.random import rand, randn_like
from ..core.schedules import time_grid
from .base import Sampler

__all__ = ["AnnealedLangevin", "Langevin", "path_energy_difference"]


#: Gauss–Lobatto nodes and weights on [0, 1] by number of points (Abramowitz & Stegun 25.4.32)
_LOBATTO = {
    2: ((0.0, 1.0), (0.5, 0.5)),
    3: ((0.0, 0.5, 1.0), (1 / 6, 4 / 6, 1 / 6)),
    4: (
        (0.0, (1 - 5**-0.5) / 2, (1 + 5**-0.5) / 2, 1.0),
        (1 / 12, 5 / 12, 5 / 12, 1 / 12),
    ),
    5: (
        (0.0, (1 - (3 / 7) ** 0.5) / 2, 0.5, (1 + (3 / 7) ** 0.5) / 2, 1.0),
        (1 / 20, 49 / 180, 16 / 45, 49 / 180, 1 / 20),
    ),
}


def _check_points(name: str, points: object) -> int:
    """``points`` as a number of Gauss–Lobatto points this module has, or one clear error."""
    if isinstance(points, bool) or not isinstance(points, int) or points not in _LOBATTO:
        raise ValueError(
            f"{name} must be an integer from {min(_LOBATTO)} to {max(_LOBATTO)}, got {points!r}"
        )
    return points


def path_energy_difference(
    score: Callable[[Tensor], Tensor],
    x: Tensor,
    prop: Tensor,
    s_x: Tensor,
    s_prop: Tensor,
    points: int = 4,
) -> Tensor:
    r""":math:`E(x') - E(x) = -\int_0^1 s(x + u\,d)\cdot d\,du`, :math:`d = x' - x`, by
    Gauss–Lobatto quadrature with ``points`` nodes (2 to 5; the end-point scores ``s_x``,
    ``s_prop`` are given, so ``points - 2`` calls of ``score`` are made). Per example, shape
    ``(B,)``. Exact when :math:`\log p` is a polynomial of degree :math:`2\,\text{points}
    - 2` (Abramowitz & Stegun 25.4.32); the quadrature is antisymmetric in
    :math:`(x, x')` for any ``score``, conservative or not."""
    nodes, weights = _LOBATTO[_check_points("points", points)]
    d = prop - x
    g = weights[0] * s_x + weights[-1] * s_prop
    for u, w in zip(nodes[1:-1], weights[1:-1], strict=True):
        g = g + w * score(x + u * d)
    return -(g * d).reshape(len(x), -1).sum(1)


@dataclass
class MetropolisState:
    """MALA's state: energy and score at the current points (``None`` before the first
    step), the time they were computed at, and the accepted count (a tensor, read once at
    the end of the call)."""

    t: float | None = None
    energy: Tensor | None = None
    score: Tensor | None = None
    accepted: Tensor | None = None
    proposed: int = 0
    has_energy: bool = True


class Langevin(Sampler):
    r"""Unadjusted (ULA) or Metropolis-adjusted (MALA) Langevin for the score at the grid's
    times (usually one fixed time repeated: the grid may be non-increasing).

    Arguments:
        step_size: :math:`\eta > 0`.
        metropolis: accept the proposal :math:`x' = x + \eta s(x) + \sqrt{2\eta} z` with
            probability :math:`\min(1, e^{E(x) - E(x')} q(x \mid x')/q(x' \mid x))`,
            :math:`q(x' \mid x) \propto e^{-\|x' - x - \eta s(x)\|^2/4\eta}`. An energy
            model (``ScoreModel(prediction="energy")``) gives :math:`E` itself; for any
            other model :math:`E(x') - E(x)` is the score's line integral
            (:func:`path_energy_difference`). The acceptance rate over all chunks is
            returned in ``SampleResult.info["acceptance"]`` (with the counts ``"accepted"``
            and ``"proposed"``).
        path_points: Gauss–Lobatto points of that line integral for a score model, 2 to 5
            (default 4, two evaluations beyond the proposal's score; 2, the trapezoid rule,
            needs none and is exact for a Gaussian). Unused for an energy model; only with
            ``metropolis=True``. With a learned score that is not a gradient, or
            quadrature error, the chain's invariant law is :math:`p` only approximately: on
            a 2-D Gaussian mixture the tests find the 4- and 5-point chains within 0.0015 of
            the energy model's acceptance rate, the 3-point one 0.0027 above it.

    Step ``i`` uses the score at ``grid[i]``; no denoising step. NFE: one per step (MALA:
    one more for the starting point; an energy model's evaluation is a forward and backward
    pass; a score model's MALA adds ``path_points - 2`` per step).
    By default 1000 steps at ``t_min``, starting from the prior of the whole process.

    Example:
        >>> import torch
        >>> from scorekit import ExactScore, Gaussian, VE
        >>> m = ExactScore(Gaussian(torch.zeros(2), std=1.0), VE(0.01, 1.0))
        >>> x = torch.zeros(4, 2, dtype=torch.float64)
        >>> Langevin(0.1)(m, x, torch.zeros(11), torch.Generator().manual_seed(0)).nfe
        10
    """

    stochastic = True
    strict_grid = False
    starts_at_prior = False
    default_steps = 1000

    def __init__(
        self, step_size: float = 1e-2, metropolis: bool = False, path_points: int | None = None
    ):
        self.step_size = check_positive("step_size", step_size)
        self.metropolis = bool(metropolis)
        if path_points is not None and not self.metropolis:
            raise ValueError("path_points is for the acceptance test: it needs metropolis=True")
        self.path_points = 4 if path_points is None else _check_points("path_points", path_points)
        # MALA caches the energy of its current points: a hook that moves them would
        # invalidate the acceptance test
        self.single_step = not self.metropolis

    def default_grid(self, process: Process, steps: int) -> Tensor:
        return torch.full((steps + 1,), float(process.t_min), dtype=torch.float64)

    def init(self, model, x, grid):
        if not self.metropolis:
            return None
        return MetropolisState(
            accepted=torch.zeros((), dtype=torch.long, device=x.device),
            has_energy=model.model.prediction == "energy",
        )

    def step(self, model, x, i, grid, state, generator):
        eta, t = self.step_size, grid.t[i]
        if not self.metropolis:
            z = randn_like(x, generator)
            return x + eta * model.score(x, t) + math.sqrt(2 * eta) * z, state
        if state.t != t:
            if state.has_energy:
                state.energy, state.score = model.energy_and_score(x, t)
            else:
                state.score = model.score(x, t)
            state.t = t
        s = state.score
        z = randn_like(x, generator)
        prop = x + eta * s + math.sqrt(2 * eta) * z
        if state.has_energy:
            e, (e_p, s_p) = state.energy, model.energy_and_score(prop, t)
            rise = e_p - e
        else:
            s_p = model.score(prop, t)
            rise = path_energy_difference(
                lambda y: model.score(y, t), x, prop, s, s_p, self.path_points
            )
        back = x - prop - eta * s_p
        log_q_back = -(back.reshape(len(x), -1) ** 2).sum(1) / (4 * eta)
        log_q_fwd = -0.5 * (z.reshape(len(x), -1) ** 2).sum(1)
        log_accept = log_q_back - log_q_fwd - rise
        ok = torch.log(rand((len(x),), generator, x.dtype, x.device)) < log_accept
        shape = (-1,) + (1,) * (x.dim() - 1)
        x = torch.where(ok.reshape(shape), prop, x)
        if state.has_energy:
            state.energy = torch.where(ok, e_p, e)
        state.score = torch.where(ok.reshape(shape), s_p, s)
        state.accepted = state.accepted + ok.sum()
        state.proposed += len(ok)
        return x, state

    def finish(self, state):
        if state is None:
            return {}
        return {"accepted": int(state.accepted), "proposed": state.proposed}

    def merge_info(self, infos):
        out = super().merge_info(infos)
        if out.get("proposed"):
            out["acceptance"] = out["accepted"] / out["proposed"]
        return out


class AnnealedLangevin(Sampler):
    r"""NCSN's annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1): for each noise
    level :math:`\sigma_i` of the grid (every grid point is a level, largest first), run
    ``steps_per_level`` ULA steps at that level with step size

    .. math:: \alpha_i = \epsilon\, \sigma_i^2/\sigma_L^2 ,

    :math:`\sigma_L` the last (smallest) level. With ``final_denoise=True`` (NCSNv2's final step)
    the sample ends with one denoising step :math:`D(x, \sigma_L) = (x + \sigma_L^2 s(x))/\alpha`
    (Tweedie; :math:`x + \sigma_L^2 s` for VE).

    Arguments:
        steps_per_level: :math:`T` (NCSN: 100).
        eps: :math:`\epsilon`; default :math:`0.2\,\sigma_L^2`, NCSN's relative step
            (their 2e-5 with :math:`\sigma_L = 0.01`), so :math:`\alpha_i = 0.2\,\sigma_i^2`.
        final_denoise: finish with the denoising step (one more model evaluation).

    One step per level (a grid of :math:`L` points takes :math:`L` steps); ``steps`` of
    :func:`~scorekit.samplers.sample` is the number of levels (default 10, geometric, at
    least 2). NFE: ``L * steps_per_level`` (+1 with ``final_denoise``). A grid whose last
    point is :math:`\sigma = 0` (``time_grid(..., final_zero=True)``) runs its levels with
    :math:`\sigma > 0` and ends, at that point, with the denoised estimate
    :math:`\hat x_0(x, \sigma_L)` (one evaluation; ``final_denoise`` is then implied). The
    trajectory holds the state at the start and after each level.

    References:
        Song & Ermon (2019), Algorithm 1; Song & Ermon, "Improved Techniques for Training
        Score-Based Generative Models", NeurIPS 2020 (final denoising).
    """

    stochastic = True
    single_step = False
    default_steps = 10

    def __init__(
        self, steps_per_level: int = 100, eps: float | None = None, final_denoise: bool = True
    ):
        self.steps_per_level = check_int("steps_per_level", steps_per_level, minimum=1)
        self.eps = None if eps is None else check_positive("eps", eps)
        self.final_denoise = bool(final_denoise)

    def default_grid(self, process: Process, steps: int) -> Tensor:
        if steps < 2:
            raise ValueError(
                f"steps (noise levels) must be >= 2 for annealed_langevin, got {steps}"
            )
        return time_grid(process, steps - 1, "geometric")

    def num_steps(self, grid):
        return len(grid.t)

    def init(self, model, x, grid):
        levels = grid.sigma[:-1] if grid.sigma[-1] == 0.0 else grid.sigma
        if not levels:
            raise ValueError("annealed Langevin needs at least one level with sigma > 0")
        last = levels[-1]
        eps = 0.2 * last**2 if self.eps is None else self.eps
        return [eps * s**2 / last**2 for s in levels]

    def step(self, model, x, i, grid, state, generator):
        if i == len(state):  # a final grid point at sigma = 0: the denoised estimate there
            return model.x0(x, grid.t[i - 1]), state
        t, size = grid.t[i], state[i]
        for _ in range(self.steps_per_level):
            z = randn_like(x, generator)
            x = x + size * model.score(x, t) + math.sqrt(2 * size) * z
        if i == len(grid.t) - 1 and self.final_denoise:
            x = model.x0(x, t)
        return x, state

r"""Restart sampling (Xu et al. 2023): a deterministic ODE solver on the main grid and, at
chosen noise levels, a few *restarts* that add noise forward and solve back down.

In the scale-free coordinates :math:`y = x/\alpha`, :math:`\tilde\sigma = \sigma/\alpha`
(in which the noised marginal of every process is the data convolved with
:math:`\mathcal N(0, \tilde\sigma^2 I)`), a restart interval
:math:`[\tilde\sigma_{lo}, \tilde\sigma_{hi}]` does, on reaching the main grid point
:math:`\tilde\sigma_j` nearest :math:`\tilde\sigma_{lo}`, ``repeats`` times:

.. math:: y \leftarrow y + \sqrt{\tilde\sigma_{hi}^2 - \tilde\sigma_j^2}\; z,
          \quad z \sim \mathcal N(0, I)
          \qquad\text{(the forward process from } \tilde\sigma_j \text{ to }
          \tilde\sigma_{hi}\text{, exact)},

then solves the probability-flow ODE from :math:`\tilde\sigma_{hi}` back to
:math:`\tilde\sigma_j` on a Karras :math:`\rho = 7` grid of ``steps`` steps, and goes on
along the main grid. With an exact score and an exact backward solve each restart leaves
the marginal at :math:`\tilde\sigma_j` invariant and contracts the error the main solver
brought with it: on a Gaussian target :math:`\mathcal N(m, s^2)` a mean error :math:`e` at
:math:`\tilde\sigma_j` becomes :math:`e\sqrt{(s^2 + \tilde\sigma_j^2)/(s^2 +
\tilde\sigma_{hi}^2)}` per restart (tested). The discretisation error is the inner
solver's: the weak order is the solver's order (2 for Heun; measured exactly on a Gaussian).

References:
    Xu, Deng, Cheng, Tian, Liu & Jaakkola, "Restart Sampling for Improving Generative
    Processes", NeurIPS 2023, Algorithm 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from .._validate import check_int
from ..core.random import randn_like
from ..core.schedules import time_grid
from .base import Grid, Sampler

__all__ = ["Restart"]


@dataclass(frozen=True)
class _Leg:
    """A piece of the restart plan: an ODE solve on ``grid``, or (``grid is None``) the
    forward jump ``x -> alpha_hi (x / alpha_lo + std z)``."""

    grid: Grid | None = None
    alpha_lo: float = 1.0
    std: float = 0.0
    alpha_hi: float = 1.0


@dataclass(frozen=True)
class RestartState:
    """The legs of one call with the inner solver's starting state on each (built once, in
    :meth:`Restart.init`), the plan (``(leg, step within the leg)`` per step) and the inner
    solver's state on the current leg."""

    legs: tuple[_Leg, ...]
    starts: tuple[Any, ...]
    plan: tuple[tuple[int, int], ...]
    inner: Any = None


def _slice(grid: Grid, a: int, b: int) -> Grid:
    """Grid points ``a..b`` (inclusive) of ``grid``, with the floats already read."""
    cut = slice(a, b + 1)
    return Grid(grid.process, grid.t[cut], grid.alpha[cut], grid.sigma[cut], grid.g2[cut],
                grid.dlog_alpha[cut])  # fmt: skip


class Restart(Sampler):
    r"""Restart sampling around a deterministic solver.

    Arguments:
        intervals: restart intervals ``(sigma_lo, sigma_hi, repeats, steps)`` in
            :math:`\tilde\sigma = \sigma/\alpha`, ``0 < sigma_lo < sigma_hi``: restart from the
            main grid point nearest ``sigma_lo`` up to ``sigma_hi``, ``repeats`` times, each
            solved back in ``steps`` steps. The default is Xu et al.'s single interval for
            data of unit-order scale, ``((0.06, 0.3, 2, 2),)``.
        solver: the deterministic sampler (name or instance) for the main grid and every
            backward solve (default ``"heun"``, as in the paper).

    NFE: the solver's on the main grid, plus ``repeats`` times its cost on each restart's
    ``steps``-step grid (Heun: ``2 steps`` per restart). Default grid: the solver's, 20
    steps. A per-step hook is refused (the state leaves the main grid during restarts);
    a returned trajectory holds the state after every step, restarts included.

    Example:
        >>> import torch, scorekit as sk
        >>> from scorekit.samplers import Restart, sample
        >>> model = sk.ExactScore(sk.GaussianMixture([1.0], [[0.0, 0.0]], stds=1.0), sk.EDM())
        >>> r = sample(model, 8, Restart(), steps=10, generator=torch.Generator().manual_seed(0))
        >>> r.nfe  # Heun on 10 steps (20) and 2 restarts of 2 Heun steps (8)
        28
    """

    stochastic = True
    single_step = False
    default_steps = 20

    def __init__(
        self,
        intervals: Sequence[tuple[float, float, int, int]] = ((0.06, 0.3, 2, 2),),
        solver: str | Sampler = "heun",
    ):
        from .api import make_sampler  # the registry imports this module

        try:
            items = [tuple(iv) for iv in intervals]
        except TypeError:
            items = None
        if not items or any(len(iv) != 4 for iv in items):
            raise ValueError(
                "intervals must be a non-empty sequence of (sigma_lo, sigma_hi, repeats, "
                f"steps), got {intervals!r}"
            )
        checked = []
        for lo, hi, repeats, steps in items:
            lo, hi = float(lo), float(hi)
            if not 0 < lo < hi < float("inf"):
                raise ValueError(
                    f"intervals needs 0 < sigma_lo < sigma_hi, got ({lo!r}, {hi!r}) in "
                    f"{intervals!r}"
                )
            checked.append((lo, hi, check_int("intervals' repeats", repeats, minimum=1),
                            check_int("intervals' steps", steps, minimum=1)))  # fmt: skip
        self.intervals = tuple(checked)
        self.solver = make_sampler(solver)
        if self.solver.stochastic or isinstance(self.solver, Restart) or not self.solver.nestable:
            raise ValueError(f"solver must be a deterministic ODE solver, got {self.solver!r}")
        self.weak_order = self.solver.order

    def default_grid(self, process, steps):
        return self.solver.default_grid(process, steps)

    def check(self, model, grid):
        g = super().check(model, grid)
        top = float(g.process.ratio(torch.tensor(g.process.T, dtype=torch.float64)))
        for lo, hi, _, _ in self.intervals:
            if hi > top:
                raise ValueError(
                    f"intervals' sigma_hi = {hi:g} is above the process's largest noise level "
                    f"sigma/alpha = {top:g}"
                )
            self._restart_index(g, lo, hi)
        return g

    @staticmethod
    def _restart_index(grid: Grid, lo: float, hi: float) -> int:
        """The main grid point nearest ``lo`` in :math:`\\tilde\\sigma` among those with
        :math:`0 < \\tilde\\sigma <` ``hi`` (the last point too: then the restarts follow
        the main solve)."""
        ok = [j for j in range(grid.n + 1) if 0 < grid.ratio(j) < hi]
        if not ok:
            raise ValueError(
                f"no grid point lies below the restart level sigma_hi = {hi:g} (grid "
                f"sigma/alpha from {grid.ratio(0):g} to {grid.ratio(grid.n):g})"
            )
        return min(ok, key=lambda j: abs(grid.ratio(j) - lo))

    def _legs(self, grid: Grid) -> list[_Leg]:
        """The main grid cut at the restart points, with each restart's legs in between."""
        process = grid.process
        at: dict[int, list] = {}
        for lo, hi, repeats, steps in self.intervals:
            at.setdefault(self._restart_index(grid, lo, hi), []).append((hi, repeats, steps))
        legs, start = [], 0
        for j in sorted(at):
            if j > start:
                legs.append(_Leg(_slice(grid, start, j)))
            for hi, repeats, steps in at[j]:
                t_hi = float(process.t_of_ratio(torch.tensor(hi, dtype=torch.float64)))
                back = Grid.of(process, time_grid(process, steps, t_max=t_hi, t_min=grid.t[j]))
                std = (back.ratio(0) ** 2 - grid.ratio(j) ** 2) ** 0.5  # to where the leg starts
                jump = _Leg(None, grid.alpha[j], std, back.alpha[0])
                legs += [jump, _Leg(back)] * repeats
            start = j
        if start < grid.n:
            legs.append(_Leg(_slice(grid, start, grid.n)))
        return legs

    def _plan(self, legs: list[_Leg]) -> tuple[tuple[int, int], ...]:
        return tuple(
            (n, k)
            for n, leg in enumerate(legs)
            for k in range(1 if leg.grid is None else self.solver.num_steps(leg.grid))
        )

    def num_steps(self, grid):
        return len(self._plan(self._legs(grid)))

    def init(self, model, x, grid):
        legs = self._legs(grid)
        starts = tuple(None if leg.grid is None else self.solver.init(model, x, leg.grid)
                       for leg in legs)  # fmt: skip
        return RestartState(tuple(legs), starts, self._plan(legs))

    def step(self, model, x, i, grid, state, generator):
        n, k = state.plan[i]
        leg = state.legs[n]
        if leg.grid is None:
            z = randn_like(x, generator)
            return leg.alpha_hi * (x / leg.alpha_lo + leg.std * z), state
        inner = state.starts[n] if k == 0 else state.inner
        x, inner = self.solver.step(model, x, k, leg.grid, inner, generator)
        return x, replace(state, inner=inner)

    def __repr__(self) -> str:
        return f"Restart(intervals={list(self.intervals)!r}, solver={self.solver!r})"

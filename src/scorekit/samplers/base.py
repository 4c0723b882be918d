r"""The contract every sampler follows, and the loop they share.

A sampler is a small object: its settings go to ``__init__``; :meth:`Sampler.init` reads
the grid once and returns the solver state (multistep history, coefficient tables: passed
explicitly, nothing hidden in counters); :meth:`Sampler.step` moves a batch one step,

.. code-block:: text

    grid  = Grid.of(process, times)            # t_i, alpha_i, sigma_i, g2_i as floats, once
    state = sampler.init(model, x, grid)
    for i in range(sampler.num_steps(grid)):  x, state = sampler.step(model, x, i, grid, state, g)

and :meth:`Sampler.__call__` runs that loop, returning a :class:`SampleResult` with the
sample, the number of model evaluations actually spent (NFE), the trajectory on request and
the sampler's diagnostics. The grid's coefficients are read from the process once, at the
boundary of the call, so no step turns a tensor into a Python number (each such conversion
stalls an accelerator). Each class declares its default number of steps, its default grid
and whether it starts from the process prior at the grid's first time; :func:`~scorekit.
samplers.sample` draws that prior, chunks the batch and seeds the chunks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .._validate import check_tensor
from ..core.parametrize import ScoreModel
from ..core.processes import Process
from ..core.schedules import check_grid, time_grid

__all__ = ["CountingModel", "Grid", "SampleResult", "Sampler"]


@dataclass
class SampleResult:
    r"""What a sampler returns.

    Attributes:
        x: the samples, shape ``(B, *D)``.
        nfe: number of model evaluations actually spent (a batched call counts once).
        trajectory: the state before the first step and after each, ``(S + 1, B, *D)`` with
            ``S`` the sampler's steps (the grid's ``N`` intervals, or more for samplers that
            leave the grid, e.g. Restart's round trips), when requested, else ``None``.
        info: sampler-specific diagnostics over all chunks (e.g. MALA's ``"acceptance"``).
    """

    x: Tensor
    nfe: int
    trajectory: Tensor | None = None
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Grid:
    r"""Decreasing process times :math:`t_0 > \dots > t_N` and the process's coefficients
    there, as Python floats: :math:`\alpha_i`, :math:`\sigma_i`, :math:`g^2_i` and
    :math:`(d\log\alpha/dt)_i`, evaluated once (:meth:`of`).

    Attributes:
        process: the process the coefficients come from.
        t, alpha, sigma, g2, dlog_alpha: tuples of ``N + 1`` floats.
    """

    process: Process
    t: tuple[float, ...]
    alpha: tuple[float, ...]
    sigma: tuple[float, ...]
    g2: tuple[float, ...]
    dlog_alpha: tuple[float, ...]

    @classmethod
    def of(cls, process: Process, times: Tensor) -> Grid:
        """The coefficients of ``process`` at ``times`` (1-D, any order; no checks)."""
        t = torch.as_tensor(times, dtype=torch.float64).detach().cpu()
        a, s = process.marginal(t)
        with torch.no_grad():
            dla, g2 = process.dlog_alpha(t), process.g2(t)
        return cls(
            process,
            *(tuple(v.reshape(-1).tolist()) for v in (t, a, s, g2, dla)),
        )

    @property
    def n(self) -> int:
        """The number of intervals, ``N``."""
        return len(self.t) - 1

    def ratio(self, i: int) -> float:
        r""":math:`\tilde\sigma_i = \sigma_i/\alpha_i`."""
        return self.sigma[i] / self.alpha[i]

    def lam(self, i: int) -> float:
        r"""Half log-SNR :math:`\lambda_i = \log(\alpha_i/\sigma_i)` (``inf`` at
        :math:`\sigma = 0`)."""
        return math.inf if self.sigma[i] == 0 else math.log(self.alpha[i] / self.sigma[i])

    def tensor(self) -> Tensor:
        """The times as a float64 tensor of shape ``(N + 1,)``."""
        return torch.tensor(self.t, dtype=torch.float64)


class CountingModel:
    r"""A :class:`~scorekit.core.parametrize.ScoreModel` seen through a counter, with the
    conditioning ``cond`` of the batch bound: every call of :meth:`score`, :meth:`x0`,
    :meth:`eps` or :meth:`energy_and_score` adds one to :attr:`nfe`. Samplers receive this
    view, so the NFE they report is what they spent, and they never see ``cond``."""

    def __init__(self, model: ScoreModel, cond: dict[str, Any] | None = None):
        if not isinstance(model, ScoreModel):
            raise ValueError(f"model must be a scorekit ScoreModel, got {type(model).__name__}")
        self.model = model
        self.process: Process = model.process
        self.cond = dict(cond or {})
        self.nfe = 0

    def predict(self, x: Tensor, t: Tensor | float, target: str) -> Tensor:
        self.nfe += 1
        return self.model.predict(x, t, target, **self.cond)

    def score(self, x: Tensor, t: Tensor | float) -> Tensor:
        return self.predict(x, t, "score")

    def x0(self, x: Tensor, t: Tensor | float) -> Tensor:
        return self.predict(x, t, "x0")

    def eps(self, x: Tensor, t: Tensor | float) -> Tensor:
        return self.predict(x, t, "eps")

    def energy_and_score(self, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        r"""``(E(x, t), -\nabla_x E)`` from one forward and one backward pass."""
        self.nfe += 1
        with torch.enable_grad():
            xi = x.detach().requires_grad_(True)
            e = self.model.energy(xi, t, **self.cond)
            (grad,) = torch.autograd.grad(e.sum(), xi)
        return e.detach(), -grad


class Sampler:
    r"""Base class. Subclasses set :attr:`stochastic`, may set :attr:`order` (the global
    order of a deterministic solver, fitted in the tests), declare :attr:`default_steps`
    and :meth:`default_grid`, and implement :meth:`step` (and :meth:`init` when they keep
    state or precompute coefficients).

    Class attributes:
        stochastic: whether the sampler draws noise.
        order: global order of convergence of a deterministic solver.
        default_steps: steps :func:`~scorekit.samplers.sample` uses without ``steps``.
        starts_at_prior: the start is the prior scaled to :math:`\sigma(t_0)`
            (``False``: the prior of the whole process, as Langevin at a fixed level uses).
        strict_grid: the grid must decrease strictly (Langevin repeats one time).
        single_step: one update per grid interval at a cost fixed in advance, so a
            predictor-corrector or a per-step hook can wrap it (not adaptive solvers, not
            annealed Langevin's levels).
        nestable: it may serve inside another sampler (Restart's legs, a predictor), whose
            grids it then steps as they come (``False`` for a sampler whose first interval
            is special, as :class:`~scorekit.samplers.GaussianTeleport`'s jump).
    """

    stochastic: bool = False
    order: int | None = None
    default_steps: int = 50
    starts_at_prior: bool = True
    strict_grid: bool = True
    single_step: bool = True
    nestable: bool = True

    def default_grid(self, process: Process, steps: int) -> Tensor:
        r"""The grid of ``steps`` steps :func:`~scorekit.samplers.sample` uses: Karras
        :math:`\rho = 7` on :math:`\tilde\sigma` from ``t_max`` to ``t_min`` unless a
        subclass says otherwise."""
        return time_grid(process, steps, "karras")

    def num_steps(self, grid: Grid) -> int:
        """Steps taken on ``grid`` (one per interval)."""
        return grid.n

    def init(self, model: CountingModel, x: Tensor, grid: Grid) -> Any:
        """Initial solver state, computed once per call (``None`` unless the sampler keeps
        history or precomputes coefficients)."""
        return None

    def step(
        self,
        model: CountingModel,
        x: Tensor,
        i: int,
        grid: Grid,
        state: Any,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Any]:
        """Move ``x`` from ``grid.t[i]`` to ``grid.t[i + 1]``; returns the new state."""
        raise NotImplementedError

    def finish(self, state: Any) -> dict:
        """Diagnostics of one call, as counts that add over chunks (read once, at the end)."""
        return {}

    def merge_info(self, infos: list[dict]) -> dict:
        """Diagnostics of several chunks: the counts of :meth:`finish` summed."""
        out: dict = {}
        for info in infos:
            for k, v in info.items():
                out[k] = out.get(k, 0) + v
        return out

    def check(self, model: ScoreModel, grid: Tensor) -> Grid:
        """Check a grid of times for this sampler and ``model``'s process (once per call)."""
        g = check_grid(grid, model.process, strict=self.strict_grid)
        return Grid.of(model.process, g)

    def __call__(
        self,
        model: ScoreModel,
        x: Tensor,
        grid: Tensor | Grid,
        generator: torch.Generator | None = None,
        return_trajectory: bool = False,
        *,
        cond: dict[str, Any] | None = None,
        hook=None,
        rows: slice | None = None,
        on_step=None,
    ) -> SampleResult:
        r"""Run the sampler from ``x`` (shape ``(B, *D)``, the state at ``grid[0]``).

        Arguments:
            model: a :class:`~scorekit.core.parametrize.ScoreModel`.
            x: the initial state.
            grid: decreasing process times (see :mod:`scorekit.core.schedules`), or a
                :class:`Grid` already checked.
            generator: the sampler's noise.
            return_trajectory: keep the state after every step.
            cond: conditioning passed to every model call (``model(x, t, **cond)``).
            hook: ``hook(x, j, grid, generator, rows) -> x`` applied to the state at grid
                index ``j`` (before the first step and after each), e.g. replacement
                inpainting; ``rows`` says which rows of the whole batch ``x`` holds.
            rows: passed on to ``hook`` (default: all rows).
            on_step: called with no argument after each step (e.g. a progress bar's update).
        """
        counted = CountingModel(model, cond)
        check_tensor("x", x, min_dim=1)
        if not isinstance(grid, Grid):
            grid = self.check(model, grid)
        if hook is not None and not self.single_step:
            raise ValueError(f"a per-step hook needs a sampler that steps grid point to grid "
                             f"point, got {self!r}")  # fmt: skip
        rows = slice(0, x.shape[0]) if rows is None else rows
        with torch.no_grad():
            state = self.init(counted, x, grid)
            if hook is not None:
                x = hook(x, 0, grid, generator, rows)
            traj = [x] if return_trajectory else None
            for i in range(self.num_steps(grid)):
                x, state = self.step(counted, x, i, grid, state, generator)
                if hook is not None:
                    x = hook(x, i + 1, grid, generator, rows)
                if on_step is not None:
                    on_step()
                if traj is not None:
                    traj.append(x)
            info = self.merge_info([self.finish(state)])
        trajectory = torch.stack(traj) if traj is not None else None
        return SampleResult(x, counted.nfe, trajectory, info)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"

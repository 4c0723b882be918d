r"""The contract every sampler follows, and the loop they share.

A sampler is a small object: its settings go to ``__init__``, one :meth:`Sampler.step`
moves a batch from grid time :math:`t_i` to :math:`t_{i+1}`, and :meth:`Sampler.__call__`
runs the shared loop

.. code-block:: text

    state = sampler.init(x, grid)
    for i in range(N):  x, state = sampler.step(model, x, grid[i], grid[i+1], state, ...)

returning a :class:`SampleResult` with the sample, the number of model evaluations
actually spent (NFE) and, on request, the trajectory at the grid points. State is
passed explicitly (multistep history, nothing hidden in counters).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .._validate import check_tensor
from ..core.parametrize import ScoreModel
from ..core.processes import Process
from ..core.schedules import check_grid

__all__ = ["CountingModel", "SampleResult", "Sampler"]


@dataclass
class SampleResult:
    r"""What a sampler returns.

    Attributes:
        x: the samples, shape ``(B, *D)``.
        nfe: number of model evaluations actually spent (a batched call counts once).
        trajectory: ``(N + 1, B, *D)`` states at the grid points when requested, else ``None``.
        info: sampler-specific diagnostics (e.g. MALA's ``"acceptance"`` rate).
    """

    x: Tensor
    nfe: int
    trajectory: Tensor | None = None
    info: dict = field(default_factory=dict)


class CountingModel:
    r"""A :class:`~scorekit.core.parametrize.ScoreModel` seen through a counter: every call of
    :meth:`score`, :meth:`x0`, :meth:`eps` or :meth:`energy_and_score` adds one to
    :attr:`nfe`. Samplers receive this view, so the NFE they report is what they spent."""

    def __init__(self, model: ScoreModel):
        if not isinstance(model, ScoreModel):
            raise ValueError(f"model must be a scorekit ScoreModel, got {type(model).__name__}")
        self.model = model
        self.process: Process = model.process
        self.nfe = 0

    def predict(self, x: Tensor, t: Tensor, target: str) -> Tensor:
        self.nfe += 1
        return self.model.predict(x, t, target)

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        return self.predict(x, t, "score")

    def x0(self, x: Tensor, t: Tensor) -> Tensor:
        return self.predict(x, t, "x0")

    def eps(self, x: Tensor, t: Tensor) -> Tensor:
        return self.predict(x, t, "eps")

    def energy_and_score(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        r"""``(E(x, t), -\nabla_x E)`` from one forward and one backward pass."""
        self.nfe += 1
        with torch.enable_grad():
            xi = x.detach().requires_grad_(True)
            e = self.model.energy(xi, t)
            (grad,) = torch.autograd.grad(e.sum(), xi)
        return e.detach(), -grad


class Sampler:
    r"""Base class. Subclasses set :attr:`stochastic`, may set :attr:`order` (the global
    order of a deterministic solver, fitted in the tests) and implement :meth:`step`.

    Calling a sampler: ``sampler(model, x, grid, generator=None, return_trajectory=False)``
    with ``model`` a :class:`~scorekit.core.parametrize.ScoreModel`, ``x`` the initial state of
    shape ``(B, *D)`` at time ``grid[0]``, and ``grid`` the decreasing process times
    (see :mod:`scorekit.core.schedules`).
    """

    stochastic: bool = False
    order: int | None = None
    strict_grid: bool = True  # strictly decreasing grid; Langevin allows repeated times

    def init(self, x: Tensor, grid: Tensor) -> dict:
        """Initial solver state (empty unless the sampler keeps history)."""
        return {}

    def step(
        self,
        model: CountingModel,
        x: Tensor,
        t: Tensor,
        t_next: Tensor,
        state: dict,
        generator: torch.Generator | None,
        last: bool,
    ) -> tuple[Tensor, dict]:
        """Move ``x`` from time ``t`` to ``t_next``; returns the new state."""
        raise NotImplementedError

    def _run(self, model, x, grid, generator, return_trajectory):
        traj = [x] if return_trajectory else None
        state = self.init(x, grid)
        n = len(grid) - 1
        for i in range(n):
            x, state = self.step(model, x, grid[i], grid[i + 1], state, generator, i == n - 1)
            if traj is not None:
                traj.append(x)
        return x, traj, state

    def __call__(
        self,
        model: ScoreModel,
        x: Tensor,
        grid: Tensor,
        generator: torch.Generator | None = None,
        return_trajectory: bool = False,
    ) -> SampleResult:
        counted = CountingModel(model)
        check_tensor("x", x, min_dim=1)
        grid = check_grid(grid, model.process, strict=self.strict_grid)
        with torch.no_grad():
            out, traj, state = self._run(counted, x, grid, generator, return_trajectory)
        trajectory = torch.stack(traj) if traj is not None else None
        return SampleResult(out, counted.nfe, trajectory, state.get("info", {}))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


def randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like ``x``, drawn from ``generator``."""
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)

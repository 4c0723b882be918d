r"""Grids fitted to a model: the time steps chosen from the model's own ODE trajectories.

:func:`optimized_grid` follows the geometry-inspired time scheduling (GITS) of Chen et al.
(2024): sampling trajectories of the probability-flow ODE are regular, so the local error
of one first-order step between two noise levels, measured on a few trajectories of a
fine-grid teacher, predicts it for every start, and the ``steps`` levels with the least
summed local error are found exactly by dynamic programming over a set of candidates.

References:
    Chen et al., "On the Trajectory Regularity of ODE-based Diffusion Sampling", ICML 2024,
    Sec. 4 (the cost matrix and the dynamic programme).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._validate import check_choice, check_generator, check_int
from ..core.parametrize import ScoreModel
from ..core.schedules import GRIDS, time_grid
from .api import sample, split_cond
from .base import Grid
from .multistep import UniPC

__all__ = ["NORMS", "optimized_grid"]

#: How the local errors of a batch are summarised: the mean of the norms (GITS) or of
#: their squares (the mean squared error, what an RMSE measures).
NORMS = ("l2", "sq")


def optimized_grid(
    model: ScoreModel,
    steps: int,
    shape_or_n: int | tuple[int, ...] = 256,
    *,
    candidates: int = 100,
    refine: int = 8,
    kind: str = "karras",
    t_max: float | None = None,
    t_min: float | None = None,
    final_zero: bool = False,
    norm: str = "l2",
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    data_shape: tuple[int, ...] | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    x_T: Tensor | None = None,
    cond: dict[str, Any] | None = None,
) -> Tensor:
    r"""A grid of ``steps`` intervals picked from ``candidates`` noise levels so that the
    summed one-step error along the model's own ODE trajectories is least (GITS).

    1. Candidates :math:`t_0 > \dots > t_K` are :func:`~scorekit.core.schedules.time_grid`
       of ``candidates`` steps (``kind``, ``t_max``, ``t_min``, ``final_zero``).
    2. A teacher, UniPC's predictor of order 3 on the same grid refined ``refine`` times
       (:class:`~scorekit.samplers.UniPC` without corrector, so that its states are the
       points it steps from), solves the
       probability-flow ODE from ``shape_or_n`` prior draws (or ``x_T``) and keeps the
       states :math:`x_k` at the candidates; the denoiser :math:`D_k = D(x_k, t_k)` is
       evaluated there.
    3. The cost of one step from :math:`t_i` to :math:`t_j` is the error of the first-order
       (DDIM, data-prediction) step in the scale-free coordinates :math:`y = x/\alpha`,
       :math:`\tilde\sigma = \sigma/\alpha`:

       .. math:: \hat y_j = \tfrac{\tilde\sigma_j}{\tilde\sigma_i}\, y_i
                 + \Big(1 - \tfrac{\tilde\sigma_j}{\tilde\sigma_i}\Big) D_i ,\qquad
                 c_{ij} = \operatorname{mean}_b \lVert \hat y_j - y_j \rVert
                 \ (\texttt{"l2"})\ \text{or}\ \operatorname{mean}_b
                 \lVert \hat y_j - y_j \rVert^2\ (\texttt{"sq"}).

    4. Dynamic programming finds the path :math:`t_0 = t_{k_0} > t_{k_1} > \dots >
       t_{k_N} = t_K` with :math:`N =` ``steps`` of least :math:`\sum_n c_{k_{n-1} k_n}`.

    The grid serves any sampler (it is process times); the cost is
    ``candidates * refine + candidates`` model evaluations on the calibration batch, once
    per model and step count. The calibration starts should be independent of the starts
    the grid is then used for.

    Arguments:
        model: a :class:`~scorekit.core.parametrize.ScoreModel`.
        steps: intervals of the returned grid, ``1 <= steps <= candidates`` (with
            ``final_zero``, ``candidates + 1``).
        shape_or_n: the calibration batch ``(B, *D)`` or a count (see
            :func:`~scorekit.samplers.sample`); ignored with ``x_T``.
        candidates, refine: candidate intervals and teacher sub-steps per interval.
        kind: the candidates' spacing, one of :data:`~scorekit.core.schedules.GRIDS`.
        norm: one of :data:`NORMS`.
        generator, batch_size, data_shape, dtype, device, x_T, cond: as for
            :func:`~scorekit.samplers.sample`.

    Returns:
        float64 tensor of ``steps + 1`` decreasing process times, from the first candidate to
        the last.

    Example:
        >>> import torch, scorekit as sk
        >>> from scorekit.samplers import optimized_grid
        >>> m = sk.ExactScore(sk.GaussianMixture([0.5, 0.5], [[-2.0], [2.0]], stds=0.3), sk.VP())
        >>> g = optimized_grid(m, 8, 64, generator=torch.Generator().manual_seed(0))
        >>> g.shape, bool((g[1:] < g[:-1]).all())
        (torch.Size([9]), True)
    """
    if not isinstance(model, ScoreModel):
        raise ValueError(f"model must be a scorekit ScoreModel, got {type(model).__name__}")
    steps = check_int("steps", steps, minimum=1)
    candidates = check_int("candidates", candidates, minimum=1)
    refine = check_int("refine", refine, minimum=1)
    check_choice("kind", kind, GRIDS)
    check_choice("norm", norm, NORMS)
    check_generator("generator", generator)
    process = model.process
    ends = {"t_max": t_max, "t_min": t_min, "final_zero": final_zero}
    cand = time_grid(process, candidates, kind, **ends)
    if steps > cand.numel() - 1:
        raise ValueError(
            f"steps must be <= the {cand.numel() - 1} candidate intervals, got {steps}: "
            "raise candidates"
        )
    fine = time_grid(process, candidates * refine, kind, **ends)
    keep = list(range(0, candidates * refine + 1, refine))
    if final_zero:
        keep.append(fine.numel() - 1)
    kept: dict[int, list[Tensor]] = {j: [] for j in keep}

    def record(x, j, grid, gen, rows):  # the teacher's states at the candidates, chunk by chunk
        if j in kept:
            kept[j].append(x)
        return x

    with torch.no_grad():
        sample(
            model,
            None if x_T is not None else shape_or_n,
            UniPC(order=3, corrector=False),
            grid=fine,
            generator=generator,
            batch_size=batch_size,
            data_shape=data_shape,
            dtype=dtype,
            device=device,
            x_T=x_T,
            cond=cond,
            hook=record,
        )
        states = torch.stack([torch.cat(kept[j]) for j in keep])  # (K + 1, B, *D)
        cand = fine[keep]
        g = Grid.of(process, cand)
        ratio = [g.ratio(k) for k in range(g.n + 1)]
        y = torch.stack([states[k] / g.alpha[k] for k in range(g.n + 1)]).flatten(2)
        den = _denoised(model, states[:-1], g, cond, batch_size)  # (K, B, D)
    cost = _costs(y, den, ratio, norm)
    path = _cheapest_path(cost, steps)
    return cand[path]


def _denoised(model, states: Tensor, g: Grid, cond, batch_size) -> Tensor:
    """D(x_k, t_k) at every candidate but the last, flattened to (K, B, D)."""
    n = states.shape[1]
    bs = n if batch_size is None else batch_size
    rows_of = split_cond(cond, n)
    out = []
    for k in range(states.shape[0]):
        parts = [
            model.x0(states[k][s : s + bs], g.t[k], **rows_of(slice(s, s + bs)))
            for s in range(0, n, bs)
        ]
        out.append(torch.cat(parts).flatten(1))
    return torch.stack(out)


def _costs(y: Tensor, den: Tensor, ratio: list[float], norm: str) -> Tensor:
    r""":math:`c_{ij}` for :math:`i < j` (``inf`` elsewhere), float64 of shape (K+1, K+1)."""
    k1 = y.shape[0]
    cost = torch.full((k1, k1), float("inf"), dtype=torch.float64)
    r = torch.tensor(ratio, dtype=y.dtype, device=y.device)
    for i in range(k1 - 1):
        c = (r[i + 1 :] / r[i]).view(-1, 1, 1)  # sigma_j / sigma_i for every j > i
        err = (c * y[i] + (1 - c) * den[i] - y[i + 1 :]).pow(2).sum(-1)  # (K - i, B)
        err = err.sqrt() if norm == "l2" else err
        cost[i, i + 1 :] = err.mean(1).to(torch.float64).cpu()
    return cost


def _cheapest_path(cost: Tensor, steps: int) -> list[int]:
    """Indices ``0 = k_0 < ... < k_steps = K`` minimising the summed ``cost`` (exact DP)."""
    k1 = cost.shape[0]
    best = torch.full((k1,), float("inf"), dtype=torch.float64)
    best[0] = 0.0
    back = []
    for _ in range(steps):
        total = best[:, None] + cost  # (from, to)
        best, arg = total.min(0)
        back.append(arg)
    path = [k1 - 1]
    for arg in reversed(back):
        path.append(int(arg[path[-1]]))
    return path[::-1]

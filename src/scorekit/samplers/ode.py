r"""Probability-flow ODE solvers.

Every solver integrates, from ``grid[0]`` down to ``grid[-1]``, the probability-flow ODE

.. math:: \frac{dx}{dt} = f(x, t) - \tfrac12 g(t)^2\, s_\theta(x, t)
          \qquad\text{(Song et al. 2021, eq. 13; } \texttt{process.ode\_drift}\text{)},

and *follows the ODE to the end of the grid*: none adds a separate denoising step. On a
grid that ends at :math:`\sigma = 0` (``time_grid(..., final_zero=True)``) DPM-Solver++'s
last step returns the denoised estimate :math:`\hat x_0 = D(x, \sigma_{N-1})`; Euler and
Heun take an Euler step in t there, which is :math:`D` for the EDM process
(:math:`\sigma = t`) and a first-order approximation of it otherwise.

Each solver declares its global :attr:`order`; the tests fit it on a log-log slope.

References:
    Song et al., "Score-Based Generative Modeling through SDEs", ICLR 2021.
    Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models",
    NeurIPS 2022, Algorithm 1. Lu et al., "DPM-Solver++: Fast Solver for Guided Sampling of
    Diffusion Probabilistic Models", 2022, Algorithm 2. Dormand & Prince (1980).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._validate import check_choice, check_positive
from ..core.processes import Process
from ..core.schedules import time_grid
from .base import CountingModel, Grid, Sampler
from .multistep import DPMSolverPPSDE

__all__ = ["DPMSolverPP", "Dopri5", "Euler", "Heun", "RungeKutta"]


class RungeKutta(Sampler):
    r"""Explicit Runge–Kutta on the PF-ODE in ``t``, from a Butcher tableau given as data:

    .. math:: k_i = v\big(x + h\textstyle\sum_{j<i} a_{ij} k_j,\ t + c_i h\big),\qquad
              x' = x + h \textstyle\sum_i b_i k_i,\qquad h = t_{i+1} - t_i < 0,

    with :math:`v = f - \tfrac12 g^2 s_\theta`. A step that ends at :math:`\sigma = 0` takes
    the Euler step :math:`x + h k_1` only (Karras et al. 2022, Algorithm 1, line 8), so the
    model is never evaluated at zero noise. The coefficients of :math:`f` and :math:`g^2` at
    every stage time are read once per call (:meth:`init`).

    Arguments:
        a: lower-triangular stage coefficients, one row per stage (row ``i`` has ``i`` entries).
        b: weights, one per stage, summing to 1.
        order: the method's global order of convergence.
    """

    default_steps = 100

    def __init__(self, a: list[list[float]], b: list[float], order: int):
        if len(a) != len(b) or any(len(row) != i for i, row in enumerate(a)):
            raise ValueError(
                f"a must have one row per stage with row i holding i entries, got a={a}, b={b}"
            )
        if abs(sum(b) - 1) > 1e-12:
            raise ValueError(f"b must sum to 1, got {b} (sum {sum(b)})")
        self.a = [list(map(float, row)) for row in a]
        self.b = [float(v) for v in b]
        self.c = [sum(row) for row in self.a]
        self.order = int(order)

    @staticmethod
    def velocity(model: CountingModel, x: Tensor, t: float, dlog_alpha: float, g2: float):
        r"""The PF-ODE drift :math:`f(x, t) - \tfrac12 g(t)^2 s_\theta(x, t)` with the
        coefficients :math:`d\log\alpha/dt` and :math:`g^2` at ``t``."""
        return dlog_alpha * x - (0.5 * g2) * model.score(x, t)

    def init(self, model, x, grid):
        # stage j of step i sits at t_i + c_j h_i: one Grid per stage (stage 0 is the grid)
        t = grid.tensor()
        h = t[1:] - t[:-1]
        return [Grid.of(grid.process, t[:-1] + c * h) for c in self.c[1:]]

    def step(self, model, x, i, grid, state, generator):
        h = grid.t[i + 1] - grid.t[i]
        k = [self.velocity(model, x, grid.t[i], grid.dlog_alpha[i], grid.g2[i])]
        if grid.sigma[i + 1] == 0.0:
            return x + h * k[0], state
        for j, stage in enumerate(state, start=1):
            xj = x + h * sum(aij * kj for aij, kj in zip(self.a[j], k, strict=True))
            k.append(self.velocity(model, xj, stage.t[i], stage.dlog_alpha[i], stage.g2[i]))
        return x + h * sum(bi * ki for bi, ki in zip(self.b, k, strict=True) if bi != 0), state


class Euler(RungeKutta):
    r"""Euler's method, order 1: :math:`x_{i+1} = x_i + (t_{i+1} - t_i)\, v(x_i, t_i)`.
    One model evaluation per step. Follows the ODE to the end of the grid."""

    def __init__(self):
        super().__init__(a=[[]], b=[1.0], order=1)


class Heun(RungeKutta):
    r"""Heun's method (explicit trapezoid), order 2:
    :math:`\tilde x = x_i + h v(x_i, t_i)`,
    :math:`x_{i+1} = x_i + \tfrac h2 [v(x_i, t_i) + v(\tilde x, t_{i+1})]`;
    two evaluations per step, one on a final step to :math:`\sigma = 0` (EDM's variant).

    References:
        Karras et al. (2022), Algorithm 1.
    """

    default_steps = 50

    def __init__(self):
        super().__init__(a=[[], [1.0]], b=[0.5, 0.5], order=2)


class Dopri5(Sampler):
    r"""Adaptive Dormand–Prince 5(4) via ``torchdiffeq.odeint`` (order 5), from each grid
    point to the next; the step size is controlled by ``rtol``/``atol`` on the whole batch,
    so results depend slightly (within tolerance) on how a sample is chunked. The NFE is the
    number of drift evaluations torchdiffeq made. An interval that ends at
    :math:`\sigma = 0` is integrated adaptively down to the process's ``t_min`` (or, where
    that has :math:`\sigma = 0` or lies outside the interval, to the time at a thousandth of
    the interval's starting :math:`\sigma/\alpha`) and finished with one Euler step to
    :math:`\sigma = 0` (for the EDM process the denoiser :math:`D(x, t_{min})`), so the model
    is never evaluated at zero noise and ``Dopri5()(model, x, [t_max, 0])`` solves the ODE
    rather than taking one Euler step. Follows the ODE to the end of the grid. The adaptive
    controller decides on the host whether to accept each internal step, so this solver
    alone reads values while it runs.

    References:
        Dormand & Prince (1980); Chen et al., "Neural Ordinary Differential Equations" (2018).
    """

    order = 5
    default_steps = 1
    single_step = False

    def __init__(self, rtol: float = 1e-5, atol: float = 1e-5):
        self.rtol = check_positive("rtol", rtol)
        self.atol = check_positive("atol", atol)

    def init(self, model, x, grid):
        # where each interval's adaptive part stops: its end, or, for an interval that ends
        # at sigma = 0, the process's t_min (when it has sigma > 0 there) or the time at a
        # thousandth of the interval's start ratio; the rest is one Euler step
        p, stops = grid.process, []
        for i in range(grid.n):
            t0, t1 = grid.t[i], grid.t[i + 1]
            if grid.sigma[i + 1] != 0.0:
                stops.append(t1)
                continue
            lo = float(p.t_min)
            if not (t1 < lo < t0 and float(p.ratio(lo)) > 0):
                lo = float(p.t_of_ratio(1e-3 * grid.ratio(i)))
            stops.append(lo if t1 < lo < t0 else t0)
        return Grid.of(p, torch.tensor(stops, dtype=torch.float64))

    def step(self, model, x, i, grid, state, generator):
        t0, t1, stop = grid.t[i], grid.t[i + 1], state.t[i]
        if stop != t0:
            x = self._integrate(model, x, t0, stop)
        if stop != t1:  # the final Euler step to sigma = 0
            x = x + (t1 - stop) * RungeKutta.velocity(
                model, x, stop, state.dlog_alpha[i], state.g2[i]
            )
        return x, state

    def _integrate(self, model, x, t0, t1):
        from torchdiffeq import odeint

        p = model.process

        def v(t, y):
            t64 = t.to(torch.float64)
            return p.ode_drift(y, t64, model.score(y, t64))

        ts = torch.tensor([t0, t1], dtype=x.dtype, device=x.device)
        # step_t lands a step exactly on the end and first_step keeps the initial probe
        # inside the interval, so the model is never evaluated outside the grid's range.
        opts = {"step_t": ts[-1:], "first_step": abs(t1 - t0) / 16}
        ys = odeint(v, x, ts, rtol=self.rtol, atol=self.atol, method="dopri5", options=opts)
        return ys[-1]


class DPMSolverPP(DPMSolverPPSDE):
    r"""DPM-Solver++ multistep (2M or 3M), data prediction in half log-SNR
    :math:`\lambda = \log(\alpha/\sigma)`.

    With :math:`y = x/\alpha`, the PF-ODE is exactly
    :math:`y(\lambda_{i+1}) = e^{-h} y(\lambda_i) + \int_0^h e^{-(h-u)} D(\lambda_i + u)\,du`,
    :math:`h = \lambda_{i+1} - \lambda_i`, where :math:`D = \hat x_0` is the denoiser.

    - order 2 (2M; Lu et al. 2022, Algorithm 2): with :math:`r = h_{i-1}/h`,
      :math:`y_{i+1} = e^{-h} y_i + (1 - e^{-h})
      \big[(1 + \tfrac1{2r}) D_i - \tfrac1{2r} D_{i-1}\big]`;
    - order 3 (3M): :math:`D` is the quadratic through the last three denoised values,
      integrated exactly: :math:`y_{i+1} = e^{-h}y_i + \varphi_1 D_i + \varphi_2 D'
      + \varphi_3 D''`, with :math:`\varphi_1 = 1 - e^{-h}`, :math:`\varphi_2 = h - \varphi_1`,
      :math:`\varphi_3 = h^2/2 - h + \varphi_1` and :math:`D', D''` from divided differences.

    The first steps use the lower orders (DDIM, then 2M). A step to :math:`\sigma = 0`
    (:math:`h = \infty`) returns :math:`\alpha D_i`, the denoised estimate. With
    ``lower_order_final`` and fewer than 15 steps, the last step is first order and the one
    before at most second order (as in Lu et al.'s code and diffusers; on the exact targets of
    ``bench_samplers`` it helps 3M on some grids and hurts on others, so it is off by default).
    One model evaluation per step: :class:`~scorekit.samplers.multistep.DPMSolverPPSDE` at
    :math:`\eta = 0`, whose table of coefficients it uses. Follows the ODE to the end of the
    grid. Default grid:
    uniform in log-SNR (``"geometric"``), as Lu et al. advise (``benchmarks/bench_samplers.py``
    finds it ahead of Karras at 10-100 evaluations).

    Arguments:
        order: 2 or 3.
        lower_order_final: lower the order of the final steps on short grids.
    """

    default_steps = 30

    def __init__(self, order: int = 2, lower_order_final: bool = False):
        order = int(check_choice("order", order, (2, 3)))
        super().__init__(order, eta=0.0, lower_order_final=lower_order_final)

    def __repr__(self) -> str:
        return f"DPMSolverPP(order={self.order}, lower_order_final={self.lower_order_final})"

    def default_grid(self, process: Process, steps: int) -> Tensor:
        return time_grid(process, steps, "geometric")

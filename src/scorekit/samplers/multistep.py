r"""Multistep solvers written against the process: UniPC, DEIS / iPNDM and the stochastic
DPM-Solver++ (2M / 3M SDE).

All of them work in the scale-free coordinates of the process,
:math:`y = x/\alpha`, :math:`\tilde\sigma = \sigma/\alpha`, :math:`\lambda = -\log\tilde\sigma`,
in which the probability-flow ODE of *every* process is the same equation,

.. math:: \frac{dy}{d\tilde\sigma} = \hat\varepsilon(x, t), \qquad\text{equivalently}\qquad
          y(\lambda_{i+1}) = e^{-h} y(\lambda_i) + \int_{\lambda_i}^{\lambda_{i+1}}
          e^{-(\lambda_{i+1} - \lambda)} D(\lambda)\,d\lambda, \quad h = \lambda_{i+1} - \lambda_i,

so a solver written once runs on VE, VP, sub-VP, cosine, EDM and discrete VP, on any grid.
Every coefficient of every step is computed once per call from the grid's floats
(:meth:`init`); a step is a fixed linear combination of tensors and at most one model
evaluation, with no value read back to the host.

*Stable at few steps.* With ``lower_order_final`` (on by default) a grid of fewer than 15
steps ends with the lower orders (the order of step :math:`i` is at most :math:`N - i`), so
a ten-step grid ends with a first-order step, as in Lu et al.'s code; on longer grids every
step after the warm-up keeps the full order, so the global order is the declared one. The
warm-up steps use the lower orders, since the history is shorter. A step that ends at
:math:`\sigma = 0` returns the denoised estimate :math:`\alpha_N \hat x_0(x, t_{N-1})`
(for UniPC and DPM-Solver++ SDE, :math:`h = \infty`); DEIS / iPNDM integrate
:math:`\hat\varepsilon` there, whose first-order form is the same denoised estimate.

References:
    Zhao et al., "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
    Diffusion Models", NeurIPS 2023 (Algorithms 2-3, B(h) = h and B(h) = e^h - 1).
    Zhang & Chen, "Fast Sampling of Diffusion Models with Exponential Integrator" (DEIS),
    ICLR 2023 (rho-AB, and the improved PNDM of its appendix).
    Lu et al., "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
    Models", 2022 (SDE-DPM-Solver++ 2M, Appendix); the 3M SDE as in Crowson's k-diffusion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from .._validate import check_choice, check_range
from ..core.processes import Process
from ..core.random import randn_like
from ..core.schedules import time_grid
from .base import Grid, Sampler

__all__ = ["DEIS", "UniPC", "DPMSolverPPSDE", "IPNDM"]


def _orders(n: int, order: int, lower_order_final: bool) -> list[int]:
    """The order of each of ``n`` steps: warm-up from 1, and with ``lower_order_final`` on a
    grid of fewer than 15 steps at most ``n - i`` at the end (Lu et al.'s rule)."""
    final = lower_order_final and n < 15
    return [min(order, i + 1, (n - i) if final else order) for i in range(n)]


def _combine(weights, tensors) -> Tensor:
    """``sum(w * t)`` over the non-zero weights (a fixed linear combination)."""
    out = None
    for w, t in zip(weights, tensors, strict=False):
        if w != 0.0:
            out = w * t if out is None else out + w * t
    return out


def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    """The solution of a small dense system ``a x = b`` in Python floats (Gaussian
    elimination with partial pivoting; the systems here are at most 3 x 3)."""
    n = len(b)
    m = [[*map(float, row), float(v)] for row, v in zip(a, b, strict=True)]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(m[r][c]))
        m[c], m[p] = m[p], m[c]
        for r in range(c + 1, n):
            f = m[r][c] / m[c][c]
            m[r] = [u - f * v for u, v in zip(m[r], m[c], strict=True)]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        x[r] = (m[r][n] - sum(m[r][k] * x[k] for k in range(r + 1, n))) / m[r][r]
    return x


@dataclass
class MultistepState:
    """A multistep solver's memory: the last model outputs (newest last), the state the last
    predictor started from (UniPC's corrector needs it) and the coefficient table."""

    table: list
    history: tuple[Tensor, ...] = ()
    last_x: Tensor | None = None


# -- UniPC ------------------------------------------------------------------------------
VARIANTS = ("bh1", "bh2")


class UniPC(Sampler):
    r"""UniPC: the unified predictor (UniP-p) and corrector (UniC-p) of Zhao et al. (2023),
    data prediction, multistep, order ``p`` up to 3.

    From :math:`x_i` at :math:`\lambda_i` to :math:`\lambda_{i+1}` with the last outputs
    :math:`D_i, D_{i-1}, \dots` of the denoiser, :math:`r_k = (\lambda_{i-k} - \lambda_i)/h`
    and :math:`\Delta_k = (D_{i-k} - D_i)/r_k`:

    .. math:: x_{i+1} = \frac{\sigma_{i+1}}{\sigma_i} x_i + \alpha_{i+1}(1 - e^{-h}) D_i
              - \alpha_{i+1} B(h) \sum_{k=1}^{p-1} \rho_k \Delta_k ,

    where :math:`B(h) = -h` (``"bh1"``) or :math:`e^{-h} - 1` (``"bh2"``) and the
    :math:`\rho` solve :math:`R_{p-1}\rho = g` with :math:`R_{mk} = r_k^{m-1}` and
    :math:`g_m = (m!\,\varphi_{m+1}(-h)\,(-h)^{m}) / B(h)` (UniP; :math:`\rho = \tfrac12`
    for :math:`p = 2`). The corrector re-uses the evaluation :math:`D_{i+1}` at the predicted
    point: it recomputes :math:`x_{i+1}` with one more node, :math:`\Delta_p = D_{i+1} - D_i`
    at :math:`r = 1`, solving the full :math:`p\times p` system (UniC, order :math:`p + 1`),
    and the next step starts from the corrected point. No corrector follows the last step
    (it would cost an evaluation). One model evaluation per step.

    Arguments:
        order: predictor order 1, 2 or 3 (with the corrector the global order is
            ``order + 1``, the declared :attr:`order`; measured by slope).
        variant: ``"bh2"`` (default; Zhao et al.'s choice for guided and unconditional
            sampling at few steps) or ``"bh1"``.
        corrector: apply UniC after each step but the last.
        lower_order_final: the last steps use the lower orders (on by default).

    Default grid: uniform in log-SNR (``"geometric"``), 20 steps.
    """

    default_steps = 20

    def __init__(
        self,
        order: int = 2,
        variant: str = "bh2",
        corrector: bool = True,
        lower_order_final: bool = True,
    ):
        self.order = int(check_choice("order", order, (1, 2, 3)))
        self.variant = check_choice("variant", variant, VARIANTS)
        self.corrector = bool(corrector)
        self.lower_order_final = bool(lower_order_final)
        self.order = self.order + 1 if self.corrector else self.order
        self._p = int(order)

    def __repr__(self) -> str:
        return (
            f"UniPC(order={self._p}, variant={self.variant!r}, corrector={self.corrector}, "
            f"lower_order_final={self.lower_order_final})"
        )

    def default_grid(self, process: Process, steps: int) -> Tensor:
        return time_grid(process, steps, "geometric")

    def _weights(self, grid: Grid, s: int, p: int, corrector: bool) -> tuple[float, list[float]]:
        r"""``(c_x, w)`` with :math:`x_{s+1} = c_x x_s + \sum_j w_j D_{s+1-j}` (corrector: over
        :math:`D_{s+1}, D_s, \dots`) or :math:`\sum_j w_j D_{s-j}` (predictor)."""
        lam0, lam1 = grid.lam(s), grid.lam(s + 1)
        a1 = grid.alpha[s + 1]
        h = lam1 - lam0
        hh = -h
        h_phi_1 = math.expm1(hh)  # e^{-h} - 1
        b_h = hh if self.variant == "bh1" else h_phi_1
        rks = [(grid.lam(s - k) - lam0) / h for k in range(1, p)] + [1.0]
        k_order = p if corrector else p - 1  # nodes other than D_s
        rows, g = [], []
        h_phi_k, fact = h_phi_1 / hh - 1.0, 1.0
        for m in range(1, p + 1):
            rows.append([r ** (m - 1) for r in rks])
            g.append(h_phi_k * fact / b_h)
            fact *= m + 1
            h_phi_k = h_phi_k / hh - 1.0 / fact
        if k_order == 0:
            rho: list[float] = []
        elif k_order == 1 and (not corrector or p == 1):
            rho = [0.5]  # Zhao et al.'s choice for UniP-2 and UniC-1
        else:
            rho = _solve([r[:k_order] for r in rows[:k_order]], g[:k_order])
        c_x = grid.sigma[s + 1] / grid.sigma[s]
        w_s = -a1 * h_phi_1  # alpha_{s+1} (1 - e^{-h}) on D_s
        # Delta_k = (D_{s-k} - D_s) / r_k; with the corrector the last node is D_{s+1} at r = 1
        nodes = [s - k for k in range(1, p)] + ([s + 1] if corrector else [])
        coef = {j: 0.0 for j in [s + 1, *range(s, s - p, -1)]}
        coef[s] += w_s
        for rho_k, j, r in zip(rho, nodes, rks if corrector else rks[:-1], strict=False):
            c = -a1 * b_h * rho_k / r
            coef[j] += c
            coef[s] -= c
        order_of = [s + 1] if corrector else []
        order_of += list(range(s, s - p, -1))
        return c_x, [coef[j] for j in order_of]

    def init(self, model, x, grid):
        orders = _orders(grid.n, self._p, self.lower_order_final)
        table = []
        for i, p in enumerate(orders):
            last = grid.sigma[i + 1] == 0.0
            pred = (0.0, [grid.alpha[i + 1]]) if last else self._weights(grid, i, p, False)
            corr = None
            if self.corrector and i > 0:
                corr = self._weights(grid, i - 1, orders[i - 1], True)
            table.append((pred, corr))
        return MultistepState(table)

    def step(self, model, x, i, grid, state, generator):
        pred, corr = state.table[i]
        d = model.x0(x, grid.t[i])
        if corr is not None:
            c_x, w = corr
            x = c_x * state.last_x + _combine(w, (d, *reversed(state.history)))
        history = (*state.history, d)[-self._p :]
        c_x, w = pred
        out = _combine(w, tuple(reversed(history)))
        if c_x != 0.0:
            out = c_x * x + out
        return out, MultistepState(state.table, history, x)


# -- DEIS rho-AB and iPNDM ----------------------------------------------------------------
def _lagrange_integrals(nodes: list[float], a: float, b: float) -> list[float]:
    r""":math:`\int_a^b \ell_j(s)\,ds` for the Lagrange basis :math:`\ell_j` on ``nodes``
    (computed in the shifted variable :math:`s - a`, exactly, in float64)."""
    shifted = [v - a for v in nodes]
    w = b - a
    out = []
    for j, sj in enumerate(shifted):
        poly, denom = [1.0], 1.0  # coefficients, lowest power first
        for m, sm in enumerate(shifted):
            if m != j:
                poly = [0.0, *poly]
                for k in range(len(poly) - 1):
                    poly[k] -= sm * poly[k + 1]
                denom *= sj - sm
        out.append(sum(c * w ** (k + 1) / (k + 1) for k, c in enumerate(poly)) / denom)
    return out


#: Adams-Bashforth weights of orders 1-4 for equal steps (newest first)
_AB = ([1.0], [1.5, -0.5], [23 / 12, -16 / 12, 5 / 12], [55 / 24, -59 / 24, 37 / 24, -9 / 24])


class DEIS(Sampler):
    r"""DEIS :math:`\rho`-AB (Zhang & Chen 2023): Adams–Bashforth on the noise prediction in
    :math:`\tilde\sigma`. Since :math:`dy/d\tilde\sigma = \hat\varepsilon` exactly, the
    step integrates the Lagrange polynomial :math:`P` through the last ``order`` values
    :math:`(\tilde\sigma_{i-k}, \hat\varepsilon_{i-k})`:

    .. math:: y_{i+1} = y_i + \sum_{k} \hat\varepsilon_{i-k}
              \int_{\tilde\sigma_i}^{\tilde\sigma_{i+1}} \ell_k(s)\,ds,
              \qquad x_{i+1} = \alpha_{i+1} y_{i+1},

    with the exact variable-step weights (``variable=True``), or the equal-step
    Adams–Bashforth weights times :math:`\tilde\sigma_{i+1} - \tilde\sigma_i`
    (``variable=False``: iPNDM, the improved PNDM of Zhang & Chen's appendix, as in
    k-diffusion's ``sample_ipndm``; its order on a non-uniform grid is lower, see
    :class:`IPNDM`). Order 1 is DDIM. One model evaluation per step.

    Arguments:
        order: 1 to 4 (global order on smooth grids; the warm-up uses the lower ones).
        lower_order_final: the last steps use the lower orders (on by default).

    Default grid: Karras :math:`\rho = 7`, 20 steps.
    """

    default_steps = 20
    variable = True

    def __init__(self, order: int = 3, lower_order_final: bool = True):
        self.max_order = int(check_choice("order", order, (1, 2, 3, 4)))
        self.lower_order_final = bool(lower_order_final)
        self.order = self.max_order if self.variable else min(2, self.max_order)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(order={self.max_order}, "
            f"lower_order_final={self.lower_order_final})"
        )

    def init(self, model, x, grid):
        rt = [grid.ratio(j) for j in range(grid.n + 1)]
        table = []
        for i, p in enumerate(_orders(grid.n, self.max_order, self.lower_order_final)):
            if self.variable:
                w = _lagrange_integrals([rt[i - k] for k in range(p)], rt[i], rt[i + 1])
            else:
                w = [(rt[i + 1] - rt[i]) * c for c in _AB[p - 1]]
            a1 = grid.alpha[i + 1]
            table.append((a1 / grid.alpha[i], [a1 * v for v in w]))
        return MultistepState(table)

    def step(self, model, x, i, grid, state, generator):
        c_x, w = state.table[i]
        history = (*state.history, model.eps(x, grid.t[i]))[-self.max_order :]
        return c_x * x + _combine(w, tuple(reversed(history))), MultistepState(state.table, history)


class IPNDM(DEIS):
    r"""iPNDM (Zhang & Chen 2023, after Liu et al.'s PNDM): :class:`DEIS` with the
    equal-step Adams–Bashforth weights of orders 1-4, :math:`y_{i+1} = y_i +
    (\tilde\sigma_{i+1} - \tilde\sigma_i)\sum_k b_k \hat\varepsilon_{i-k}` (order 4:
    :math:`b = (55, -59, 37, -9)/24`), the lower orders for the first steps. On a grid whose
    steps in :math:`\tilde\sigma` vary, the equal-step weights make it first order in the
    limit (declared ``order = 1``; measured by slope), though at 10-50 steps on the Karras
    grid its error is far below Euler's. One model evaluation per step.

    Arguments:
        order: the highest Adams–Bashforth order used, 1 to 4 (default 4).
        lower_order_final: the last steps use the lower orders (off by default, as in
            k-diffusion).
    """

    variable = False

    def __init__(self, order: int = 4, lower_order_final: bool = False):
        super().__init__(order, lower_order_final)


# -- DPM-Solver++ SDE ---------------------------------------------------------------------
class DPMSolverPPSDE(Sampler):
    r"""Stochastic DPM-Solver++ (2M SDE, 3M SDE): the data-prediction SDE solver of Lu et al.
    (2022), exact in the linear part and in the noise, multistep in the denoiser.

    With :math:`h = \lambda_{i+1} - \lambda_i`, :math:`H = (1 + \eta) h` and
    :math:`\varphi_1 = 1 - e^{-H}`:

    .. math:: x_{i+1} = \frac{\sigma_{i+1}}{\sigma_i} e^{-\eta h} x_i
              + \alpha_{i+1}\big[\varphi_1 D_i + \text{(history terms)}\big]
              + \sigma_{i+1}\sqrt{1 - e^{-2\eta h}}\; z_i ,

    where the history terms are, for order 2 with :math:`r = h_{i-1}/h`,
    ``"midpoint"``: :math:`\tfrac{\varphi_1}{2r}(D_i - D_{i-1})`, ``"heun"``:
    :math:`\tfrac{\varphi_2}{r}(D_i - D_{i-1})`, :math:`\varphi_2 = 1 - \varphi_1/H`; for order 3
    :math:`\varphi_2 d_1 - 2\varphi_3 d_2` with :math:`\varphi_3 = \varphi_2/H - \tfrac12`,
    :math:`d_1 \approx h D'` and :math:`d_2 \approx h^2 D''/2` the divided differences of
    k-diffusion's ``sample_dpmpp_3m_sde``: :math:`-2\varphi_3 d_2` is the exact integral of
    the quadratic term, where k-diffusion weighs :math:`d_2` by :math:`-\varphi_3`, half of it,
    so that its 3M is second order at :math:`\eta = 0` (fitted slope 2.1 against 3.0 here,
    on the exact 2-D mixture of the order tests). :math:`\eta = 1` solves the reverse SDE
    (order 1 is then exactly DDPM's ancestral step, tested); :math:`\eta = 0` is the
    deterministic DPM-Solver++. A step to :math:`\sigma = 0` returns
    :math:`\alpha_N D_{N-1}` (the denoised estimate, no noise). One model evaluation per
    step. Declared :attr:`weak_order` for :math:`\eta > 0`: 1 for order 1 and 2 for orders
    2 and 3 (the error of the sample variance at :math:`t_{min}`, computed exactly on a
    Gaussian target, whose sample distribution is Gaussian, falls as :math:`N^{-1}`,
    :math:`N^{-2}`, :math:`N^{-2}`; ``tests/test_samplers_multistep.py``): along a Brownian
    path the denoiser is not smooth enough in :math:`\lambda` for the third-order
    extrapolation to gain an order, though 3M's error is the smaller at 16-128 steps. At
    :math:`\eta = 0` it is the deterministic DPM-Solver++ of global order ``order``.

    Arguments:
        order: 1, 2 or 3.
        eta: the amount of noise, in ``[0, 1]`` (1: the reverse SDE).
        solver_type: ``"midpoint"`` (k-diffusion's default for 2M SDE) or ``"heun"``.
        lower_order_final: the last steps use the lower orders (on by default).

    Default grid: Karras :math:`\rho = 7`, 30 steps.
    """

    stochastic = True
    default_steps = 30

    def __init__(
        self,
        order: int = 2,
        eta: float = 1.0,
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
    ):
        self.order = int(check_choice("order", order, (1, 2, 3)))
        check_range("eta", float(eta), 0.0, 1.0)
        self.eta = float(eta)
        self.solver_type = check_choice("solver_type", solver_type, ("midpoint", "heun"))
        self.lower_order_final = bool(lower_order_final)
        self.stochastic = self.eta > 0
        self.max_order = self.order
        self.weak_order = min(self.order, 2) if self.stochastic else None
        self.order = None if self.stochastic else self.max_order

    def __repr__(self) -> str:
        return (
            f"DPMSolverPPSDE(order={self.max_order}, eta={self.eta}, "
            f"solver_type={self.solver_type!r}, lower_order_final={self.lower_order_final})"
        )

    def init(self, model, x, grid):
        table = []
        for i, p in enumerate(_orders(grid.n, self.max_order, self.lower_order_final)):
            a1, s1 = grid.alpha[i + 1], grid.sigma[i + 1]
            if s1 == 0.0:
                table.append((0.0, [a1], 0.0))
                continue
            h = grid.lam(i + 1) - grid.lam(i)
            big = (1 + self.eta) * h
            phi1 = -math.expm1(-big)
            phi2 = 1.0 - phi1 / big
            w = [phi1]
            if p == 2:
                r = (grid.lam(i) - grid.lam(i - 1)) / h
                c = 0.5 * phi1 / r if self.solver_type == "midpoint" else phi2 / r
                w = [phi1 + c, -c]
            elif p == 3:
                r0 = (grid.lam(i) - grid.lam(i - 1)) / h
                r1 = (grid.lam(i - 1) - grid.lam(i - 2)) / h
                phi3 = phi2 / big - 0.5
                # d1_0 = (D0 - D1)/r0, d1_1 = (D1 - D2)/r1
                # d1 = d1_0 + (d1_0 - d1_1) r0/(r0 + r1), d2 = (d1_0 - d1_1)/(r0 + r1)
                e0 = [1 / r0, -1 / r0, 0.0]
                e1 = [0.0, 1 / r1, -1 / r1]
                diff = [u - v for u, v in zip(e0, e1, strict=True)]
                d1 = [u + v * r0 / (r0 + r1) for u, v in zip(e0, diff, strict=True)]
                d2 = [v / (r0 + r1) for v in diff]
                # the weight of d2 is -2 phi3, the exact integral of the quadratic; k-diffusion
                # uses -phi3, which makes its 3M second order at eta = 0 (measured)
                w = [phi1 + phi2 * d1[0] - 2 * phi3 * d2[0]]
                w += [phi2 * d1[k] - 2 * phi3 * d2[k] for k in (1, 2)]
            noise = s1 * math.sqrt(-math.expm1(-2 * self.eta * h))
            c_x = s1 / grid.sigma[i] * math.exp(-self.eta * h)
            table.append((c_x, [a1 * v for v in w], noise))
        return MultistepState(table)

    def step(self, model, x, i, grid, state, generator):
        c_x, w, noise = state.table[i]
        history = (*state.history, model.x0(x, grid.t[i]))[-self.max_order :]
        out = _combine(w, tuple(reversed(history)))
        if c_x != 0.0:
            out = c_x * x + out
        if noise > 0.0:
            out = out + noise * randn_like(x, generator)
        return out, MultistepState(state.table, history)

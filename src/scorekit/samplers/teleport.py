r"""Gaussian teleportation: the first, high-noise stretch of the probability-flow ODE solved
in closed form for the Gaussian with the data's mean and covariance, at no model evaluation.

At noise levels well above the data's scale the noised marginal :math:`p_t` is close to the
Gaussian :math:`\mathcal N(\alpha\mu, \alpha^2\Sigma + \sigma^2 I)` of the data's first two
moments, so the flow there is close to that Gaussian's, which is linear and known exactly.
In the scale-free coordinates :math:`y = x/\alpha`, :math:`\tilde\sigma = \sigma/\alpha`, with
:math:`\Sigma = U \operatorname{diag}(\lambda) U^\top`, its probability-flow ODE
:math:`dy/d\tilde\sigma = \tilde\sigma (\Sigma + \tilde\sigma^2 I)^{-1} (y - \mu)` gives

.. math:: y(\tilde\sigma_1) = \mu + U \operatorname{diag}\Big(\sqrt{\tfrac{\lambda +
          \tilde\sigma_1^2}{\lambda + \tilde\sigma_0^2}}\Big) U^\top \big(y(\tilde\sigma_0)
          - \mu\big)

for every process. :class:`GaussianTeleport` takes this jump over the grid's first interval
and hands the rest of the grid to a solver, so all of the solver's evaluations go below
:math:`\tilde\sigma_1`. The jump is exact for Gaussian data (tested) and otherwise errs by
how far :math:`p_t` is from Gaussian on the skipped stretch, which shrinks as
:math:`\tilde\sigma_1` grows.

References:
    Wang & Vastola, "The Unreasonable Effectiveness of Gaussian Score Approximation for
    Diffusion Models and its Applications", TMLR 2024, Sec. 5 ("analytical teleportation").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from .._validate import check_finite, check_tensor
from ..core.parametrize import ScoreModel
from ..core.schedules import time_grid
from .base import Grid, Sampler
from .restart import _slice

__all__ = ["GaussianTeleport"]


def _check_sigma(process, sigma: float) -> tuple[float, float]:
    """The process's smallest and largest levels sigma/alpha (at ``t_min`` and ``t_max``),
    after checking that the jump's end ``sigma`` lies strictly between them."""
    lo, hi = (float(process.ratio(torch.tensor(t, dtype=torch.float64)))
              for t in (process.t_min, process.t_max))  # fmt: skip
    if not lo < sigma < hi:
        raise ValueError(
            f"sigma must lie between the process's smallest and largest noise levels "
            f"sigma/alpha, {lo:.3g} and {hi:.4g}, got {sigma:g}"
        )
    return lo, hi


@dataclass(frozen=True)
class TeleportState:
    """The jump's coefficients, as tensors on the samples' device, the rest of the grid and
    the solver's state on it (set by the jump, the first step)."""

    rest: Grid
    mean: Tensor
    basis: Tensor | None
    factor: Tensor
    alpha0: float
    alpha1: float
    jumped: bool = False
    inner: Any = None


class GaussianTeleport(Sampler):
    r"""The grid's first interval by the exact flow of :math:`\mathcal N(\mu, \Sigma)`, the
    rest by ``solver``.

    Arguments:
        mean: the data's mean :math:`\mu`, shape ``D`` (one example's shape) or ``(d,)``,
            in the model's coordinates (after any normalisation the model was trained with).
        cov: the data's covariance, ``(d, d)`` symmetric positive semi-definite, or ``(d,)``
            variances for a diagonal one; :math:`d` the number of coordinates of an example.
        sigma: the level :math:`\tilde\sigma_1 = \sigma/\alpha` of the jump's end on the
            default grid (with a grid of your own, its second point is the end). Choose it
            well above the scale at which the data stops looking Gaussian: on the 16-D
            mixture of the sampler bench (coordinate scale about 3), 30 to 80.
        solver: the sampler (name or instance) for the rest of the grid (default
            ``"unipc_3"``).

    NFE: the solver's on the grid without its first interval; the jump costs none. Default
    grid: ``t_max``, then Karras :math:`\rho = 7` from ``sigma`` down to ``t_min`` in
    ``steps`` intervals, so ``steps`` is the solver's number of steps. A per-step hook sees
    the state after the jump too. Memory: the :math:`d \times d` eigenbasis of ``cov``.

    Example:
        >>> import torch, scorekit as sk
        >>> from scorekit.samplers import GaussianTeleport, sample
        >>> target = sk.GaussianMixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], stds=0.3)
        >>> x = target.sample(10_000, torch.Generator().manual_seed(0))
        >>> tp = GaussianTeleport.fit(x, sigma=20.0, solver="unipc_3")
        >>> r = sample(sk.ExactScore(target, sk.VP()), 8, tp, steps=10)
        >>> r.nfe
        10
    """

    default_steps = 10
    nestable = False  # its first interval is the jump, whatever grid it is given

    def __init__(self, mean: Tensor, cov: Tensor, sigma: float = 30.0,
                 solver: str | Sampler = "unipc_3"):  # fmt: skip
        from .api import make_sampler  # the registry imports this module

        mean = torch.as_tensor(mean, dtype=torch.float64)
        cov = torch.as_tensor(cov, dtype=torch.float64)
        check_tensor("mean", mean, min_dim=1)
        d = mean.numel()
        if cov.shape not in ((d,), (d, d)):
            raise ValueError(
                f"cov must be ({d}, {d}) or ({d},) variances for a mean of {d} coordinates, "
                f"got shape {tuple(cov.shape)}"
            )
        check_finite("mean", mean)
        check_finite("cov", cov)
        sigma = float(sigma)
        if not 0 < sigma < math.inf:
            raise ValueError(f"sigma must be a positive finite noise level, got {sigma!r}")
        if cov.dim() == 2:
            if not torch.allclose(cov, cov.T, rtol=1e-6, atol=1e-9 * float(cov.abs().max())):
                raise ValueError("cov must be symmetric")
            lam, basis = torch.linalg.eigh(cov)
        else:
            lam, basis = cov, None
        if float(lam.min()) < -1e-8 * max(float(lam.max()), 1e-300):
            raise ValueError(
                f"cov must be positive semi-definite, got an eigenvalue {float(lam.min()):.3g}"
            )
        self.mean, self.eigenvalues, self.basis = mean, lam.clamp_min(0.0), basis
        self.sigma = sigma
        self.solver = make_sampler(solver)
        if not self.solver.strict_grid or isinstance(self.solver, GaussianTeleport):
            raise ValueError(f"solver must step a decreasing grid of noise levels, got "
                             f"{self.solver!r}")  # fmt: skip
        self.stochastic = self.solver.stochastic
        self.single_step = self.solver.single_step
        if hasattr(self.solver, "order"):
            self.order = self.solver.order

    @classmethod
    def fit(cls, data: Tensor, sigma: float = 30.0, solver: str | Sampler = "unipc_3"):
        r"""The teleport for examples ``data`` (shape ``(N, *D)``, in model coordinates):
        their mean and their covariance (divided by :math:`N - 1`), ``N > d`` not required."""
        data = torch.as_tensor(data, dtype=torch.float64)
        check_tensor("data", data, min_dim=2)
        if data.shape[0] < 2:
            raise ValueError(f"data needs at least 2 examples, got {data.shape[0]}")
        flat = data.reshape(data.shape[0], -1)
        return cls(data.mean(0), torch.cov(flat.T).reshape(flat.shape[1], -1), sigma, solver)

    @classmethod
    def from_model(
        cls,
        model: ScoreModel,
        shape: tuple[int, ...],
        sigma: float = 30.0,
        solver: str | Sampler = "unipc_3",
        *,
        level: float | None = None,
        n: int | None = None,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        batch_size: int | None = None,
        cond: dict[str, Any] | None = None,
        max_slope: float = 0.9,
    ) -> GaussianTeleport:
        r"""The teleport for a model without its data: the Gaussian whose denoiser is the
        least-squares linear fit of the model's at the level :math:`r` = ``level`` (default
        ``sigma``, the jump's end).

        The denoiser of :math:`\mathcal N(\mu, \Sigma)` at :math:`r = \sigma/\alpha` is
        linear in :math:`y = x/\alpha` (the Wiener filter):
        :math:`D(y) = \mu + \Sigma(\Sigma + r^2 I)^{-1}(y - \mu) = A y + b` with
        :math:`A = \Sigma(\Sigma + r^2 I)^{-1}`, :math:`b = (I - A)\mu`. From ``n`` draws
        :math:`y = r z`, :math:`z \sim \mathcal N(0, I)`, and the model's :math:`D(\alpha y,
        t(r))`, least squares on :math:`(y, 1)` gives :math:`A` (symmetrised, its
        eigenvalues :math:`a` clipped to :math:`[0, 1)`) and :math:`b`; then
        :math:`\Sigma = r^2 A (I - A)^{-1} = r^2 U \operatorname{diag}(a/(1 - a)) U^\top`
        and :math:`\mu = (I - A)^{-1} b`. Exact for Gaussian data (any ``n > d + 1``);
        otherwise the Gaussian whose denoiser is closest to the model's where the jump
        lands, not the data's moments (on the sampler bench's 16-D mixture, UniPC-3 at 10
        evaluations after a fit at S = 30 gave RMSE 0.54-0.61 over fit seeds, 0.581 with
        the moments; on a trained digits model 0.358 against 0.368). A slope above
        ``max_slope`` along some direction is refused: a slope of 1 or more no Gaussian
        has, and one near 1 means a fitted variance far above :math:`r^2`, a level below
        the data's own scale where the fit is not to be trusted.

        Arguments:
            model: a :class:`~scorekit.core.parametrize.ScoreModel`.
            shape: one example's shape ``D``.
            sigma, solver: as for :class:`GaussianTeleport`.
            level: where the fit is made (default ``sigma``).
            max_slope: the largest eigenvalue of :math:`A` accepted, in (0, 1) (default
                0.9: fitted variances up to :math:`9 r^2`).
            n: evaluations of the model, once (default :math:`\max(1024, 4(d + 1))`).
            generator: the draws :math:`z` (on the CPU).
            dtype, device: of the model's inputs (default torch's default dtype, CPU).
            batch_size: evaluations per call (default all ``n``).
            cond: conditioning for the model (tensors with ``n`` rows, or shared).

        Reference: the Gaussian approximation of Wang & Vastola (TMLR 2024), here fitted
        to the model's denoiser instead of to data.
        """
        from .._validate import check_generator, check_int
        from .api import split_cond

        shape = tuple(int(s) for s in shape)
        if not shape or min(shape) < 1:
            raise ValueError(f"shape must be one example's shape, got {shape}")
        d = math.prod(shape)
        r = float(sigma if level is None else level)
        process = model.process
        lo, hi = _check_sigma(process, float(sigma))
        if not lo < r <= hi:
            raise ValueError(f"level must lie in the process's range of sigma/alpha, ({lo:.3g}, "
                             f"{hi:.4g}], got {r:g}")  # fmt: skip
        if not 0.0 < float(max_slope) < 1.0:
            raise ValueError(f"max_slope must lie in (0, 1), got {max_slope!r}")
        n = max(1024, 4 * (d + 1)) if n is None else check_int("n", n, minimum=d + 2)
        check_generator("generator", generator)
        bs = n if batch_size is None else check_int("batch_size", batch_size)
        rows_of = split_cond(cond, n)
        t = process.t_of_ratio(torch.tensor(r, dtype=torch.float64))
        alpha = float(process.alpha(t))
        y = r * torch.randn(n, d, generator=generator, dtype=torch.float64)
        to = {"dtype": dtype or torch.get_default_dtype(), "device": device or "cpu"}
        parts = []
        with torch.no_grad():
            for s in range(0, n, bs):
                x = (alpha * y[s : s + bs]).reshape(-1, *shape).to(**to)
                tt = torch.full((x.shape[0],), float(t), **to)
                rows = {k: v.to(to["device"]) if isinstance(v, Tensor) else v
                        for k, v in rows_of(slice(s, s + bs)).items()}  # fmt: skip
                out = model.predict(x, tt, "x0", **rows)
                parts.append(out.reshape(x.shape[0], d).to("cpu", torch.float64))
        den = torch.cat(parts)
        check_finite("the model's denoised draws", den)
        design = torch.cat([y, torch.ones(n, 1, dtype=torch.float64)], 1)
        w = torch.linalg.lstsq(design, den).solution  # den ~ y w[:d] + w[d]
        a, u = torch.linalg.eigh((w[:d] + w[:d].T) / 2)
        top = float(a.max())
        if top >= 1.0:  # a Gaussian's filter shrinks: 0 <= a < 1
            raise ValueError(
                f"the model's denoiser at level {r:g} stretches some direction by "
                f"{top:.3g} >= 1, which no Gaussian's does (the data is far from Gaussian "
                "there): fit at a higher level"
            )
        if top > max_slope:
            raise ValueError(
                f"the model's denoiser at level {r:g} has a slope of {top:.3g} > max_slope = "
                f"{max_slope:g} along some direction (a fitted variance "
                f"{top / (1 - top):.3g} times r^2: the level is below the data's own scale): "
                "fit at a higher level"
            )
        a = a.clamp_min(0.0)
        mean = u @ ((u.T @ w[d]) / (1.0 - a))
        cov = (u * (r * r * a / (1.0 - a))) @ u.T
        return cls(mean.reshape(shape), (cov + cov.T) / 2, sigma, solver)

    def default_grid(self, process, steps):
        _check_sigma(process, self.sigma)
        t1 = float(process.t_of_ratio(torch.tensor(self.sigma, dtype=torch.float64)))
        rest = time_grid(process, steps, "karras", t_max=t1)
        return torch.cat([torch.tensor([float(process.t_max)], dtype=torch.float64), rest])

    def check(self, model, grid):
        g = super().check(model, grid)
        if g.n < 2:
            raise ValueError(f"the grid needs at least 2 intervals (the jump and one solver "
                             f"step), got {g.n}")  # fmt: skip
        self.solver.check(model, g.tensor()[1:])
        return g

    def num_steps(self, grid: Grid) -> int:
        return 1 + self.solver.num_steps(_slice(grid, 1, grid.n))

    def init(self, model, x, grid):
        d = self.mean.numel()
        if x[0].numel() != d:
            raise ValueError(
                f"x has {x[0].numel()} coordinates per example, the teleport's mean {d}"
            )
        s0, s1 = grid.ratio(0), grid.ratio(1)
        factor = ((self.eigenvalues + s1**2) / (self.eigenvalues + s0**2)).sqrt()
        to = {"dtype": x.dtype, "device": x.device}
        basis = None if self.basis is None else self.basis.to(**to)
        return TeleportState(_slice(grid, 1, grid.n), self.mean.reshape(-1).to(**to), basis,
                             factor.to(**to), grid.alpha[0], grid.alpha[1])  # fmt: skip

    def step(self, model, x, i, grid, state, generator):
        if i > 0:
            x, inner = self.solver.step(model, x, i - 1, state.rest, state.inner, generator)
            return x, replace(state, inner=inner)
        shape = x.shape
        dy = x.reshape(shape[0], -1) / state.alpha0 - state.mean
        if state.basis is None:
            dy = dy * state.factor
        else:
            dy = ((dy @ state.basis) * state.factor) @ state.basis.T
        x = (state.alpha1 * (state.mean + dy)).reshape(shape)
        return x, replace(state, jumped=True, inner=self.solver.init(model, x, state.rest))

    def finish(self, state):
        return self.solver.finish(state.inner) if state.jumped else {}

    def merge_info(self, infos):
        return self.solver.merge_info(infos)

    def __repr__(self) -> str:
        return (f"GaussianTeleport(d={self.mean.numel()}, sigma={self.sigma:g}, "
                f"solver={self.solver!r})")  # fmt: skip

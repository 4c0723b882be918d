r"""Variational dequantization: a learned density :math:`q(v \mid x)` on each data cell.

Discrete data (levels :math:`x` with bin width :math:`h`) get a continuous likelihood by
spreading each level over its cell, :math:`y = x + h v`, :math:`v \in [-\tfrac12,
\tfrac12]^D`; any :math:`q` gives the bound

.. math:: \log P(x) \ \ge\ \mathbb E_{q(v \mid x)}\big[\log p(x + h v) + D\log h
          - \log q(v \mid x)\big],

tight when :math:`q(v \mid x) \propto p(x + h v)` on the cell. Uniform :math:`q` is the usual
choice (Theis et al. 2016); a learned :math:`q` closes the gap (Ho et al. 2019). Here
:math:`q` is a conditional logistic flow per dimension,

.. math:: \ell = \operatorname{logit}(w),\ w \sim \mathcal U(0, 1),\qquad
          u = m(x) + e^{s(x)}\,\ell,\qquad v = \operatorname{sigmoid}(u) - \tfrac12,

.. math:: \log q(v \mid x) = \sum_d \big[\log\sigma(\ell) + \log\sigma(-\ell) - s
          - \log\sigma(u) - \log\sigma(-u)\big],

with :math:`m, s` from a small network of :math:`x` whose last layer starts at zero, so the
dequantizer starts *exactly uniform* (:math:`\operatorname{sigmoid}` of a standard
logistic is uniform): training starts from the uniform bound. It optimises a surrogate (the
diffusion bound below), not the reported ODE bound, so the gain is measured, not implied:
0.056 bits/dim on a 5-minute digits model (1.827 against 1.883 uniform, the same 540 test
digits), and under a quarter of the uniform gap on an exact 1-D Gaussian (tested).
:func:`fit_dequantizer` trains it on the training data against a fixed score model, with
the model's diffusion bound on :math:`-\log p(y)` (Song et al. 2021, Theorem 1: the
likelihood-weighted score-matching term with importance-sampled ``t``, and the prior term)
standing in for the ODE likelihood, as Song et al. did; the reported bits/dim
(:func:`scorekit.likelihood.bits_per_dim` with ``dequantization=`` the fitted module) are
then computed through the probability-flow ODE, valid for any :math:`q`.

References:
    Ho, Chen, Srinivas, Duan & Abbeel, "Flow++", ICML 2019 (variational dequantization).
    Song, Durkan, Murray & Ermon, "Maximum Likelihood Training of Score-Based Diffusion
    Models", NeurIPS 2021 (Theorem 1; variational dequantization of the ODE likelihood).
    Theis, van den Oord & Bethge, ICLR 2016.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._validate import (
    check_finite,
    check_generator,
    check_int,
    check_levels,
    check_positive,
    check_tensor,
)
from .core.parametrize import ScoreModel
from .core.random import rand, randint, randn_like
from .samplers.api import split_cond

__all__ = ["VariationalDequantizer", "fit_dequantizer"]


class VariationalDequantizer(nn.Module):
    r"""Conditional logistic flow :math:`q(v \mid x)` on :math:`[-\tfrac12, \tfrac12]^D`.

    Arguments:
        data_shape: the shape of one example, e.g. ``(1, 8, 8)``.
        hidden: width of the network :math:`x \mapsto (m, s)` (two hidden SiLU layers).

    Example:
        >>> q = VariationalDequantizer((3,))
        >>> v, log_q = q.sample(torch.zeros(5, 3), samples=2)
        >>> v.shape, float(log_q.abs().max())  # uniform until trained: log q = 0
        (torch.Size([2, 5, 3]), 0.0)
    """

    def __init__(self, data_shape: tuple[int, ...], hidden: int = 128):
        super().__init__()
        self.data_shape = tuple(check_int("data_shape", d) for d in data_shape)
        d = math.prod(self.data_shape)
        hidden = check_int("hidden", hidden)
        self.net = nn.Sequential(
            nn.Linear(d, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, 2 * d),
        )  # fmt: skip
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Shift :math:`m(x)` and log-scale :math:`s(x)`, each of the shape of ``x``."""
        m, s = self.net(x.flatten(1)).chunk(2, dim=1)
        return m.reshape(x.shape), s.reshape(x.shape)

    def sample(
        self, x: Tensor, samples: int = 1, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        r"""``samples`` draws :math:`v \sim q(\cdot \mid x)` per example (reparametrised, so
        gradients reach the network) and :math:`\log q(v \mid x)`.

        Arguments:
            x: levels, shape ``(B, *data_shape)``.

        Returns:
            ``v`` of shape ``(samples, B, *data_shape)`` and ``log_q`` of shape
            ``(samples, B)``.
        """
        m, s = self(x)
        w = rand((samples, *x.shape), generator, m.dtype, m.device)
        ell = torch.logit(w, eps=1e-12)
        u = m + s.exp() * ell
        log_q = _log_logistic(ell) - s - _log_logistic(u)
        return torch.sigmoid(u) - 0.5, log_q.flatten(2).sum(-1)

    def log_prob(self, v: Tensor, x: Tensor) -> Tensor:
        r""":math:`\log q(v \mid x)` of offsets ``v`` in the open cell, shape ``(B,)``."""
        m, s = self(x)
        u = torch.logit(v + 0.5)
        ell = (u - m) * torch.exp(-s)
        return (_log_logistic(ell) - s - _log_logistic(u)).flatten(1).sum(-1)


def _log_logistic(u: Tensor) -> Tensor:
    r""":math:`\log\sigma(u) + \log\sigma(-u)`, the log-density of the standard logistic."""
    return -F.softplus(u) - F.softplus(-u)


def _nll_bound(
    model: ScoreModel, y: Tensor, objective, span: float, end, generator, cond: dict
) -> Tensor:
    r"""A one-sample estimate of :math:`-\log p(y)` up to terms free of :math:`y`: the
    likelihood-weighted score-matching term (importance-sampled ``t``, times the span of
    ``t``) plus the prior term :math:`-\log\pi(z) = \lVert z\rVert^2/2\sigma_T^2 +
    \text{const}`, :math:`z = \alpha_T y + \sigma_T\varepsilon`, ``end`` :math:`= (\alpha_T,
    \sigma_T)` (the prior is :math:`\mathcal N(0, \sigma_T^2 I)`)."""
    z = end[0] * y + end[1] * randn_like(y, generator)
    sm = objective(model, y, generator=generator, **cond)
    return span * sm + z.flatten(1).pow(2).sum(1) / (2 * end[1] ** 2)


def fit_dequantizer(
    model: ScoreModel,
    x: Tensor,
    *,
    bins: int,
    data_range: tuple[float, float] = (-1.0, 1.0),
    steps: int = 1000,
    batch_size: int = 128,
    lr: float = 2e-3,
    hidden: int = 128,
    generator: torch.Generator | None = None,
    cond: dict | None = None,
) -> tuple[VariationalDequantizer, list[float]]:
    r"""Fit a :class:`VariationalDequantizer` to ``model`` on discrete data ``x``.

    Maximises :math:`\mathbb E_q[\log p(x + h v) - \log q(v \mid x)]` with AdamW, the model's
    diffusion bound standing in for :math:`\log p` (see the module); the model is not
    changed (its gradients are not computed).

    Arguments:
        model: a trained :class:`~scorekit.core.parametrize.ScoreModel`.
        x: the training levels, shape ``(N, *D)``, on the grid of ``bins`` levels spanning
            ``data_range`` (as for :func:`scorekit.likelihood.bits_per_dim`).
        bins, data_range: the grid; the bin width is :math:`h = (hi - lo)/(bins - 1)`.
        steps, batch_size, lr: optimiser steps, examples per step, learning rate.
        hidden: the dequantizer network's width.
        generator: draws the batches, the offsets and the noise.
        cond: conditioning of the examples (``model(x, t, **cond)``; tensors with the batch
            first are indexed with the batch, other values shared), e.g. ``{"y": labels}``.

    Returns:
        The fitted dequantizer (on ``x``'s device and dtype, in eval mode) and the mean
        bound per dimension in nats, :math:`-\mathbb E[\log p(y) - \log q]/D` up to the
        constant the bound leaves out, every tenth step (read once, at the end).

    References:
        Ho et al. (2019); Song et al. (2021).
    """
    from .losses.objectives import LikelihoodLoss
    from .train.trainer import adamw

    if not isinstance(model, ScoreModel):
        raise ValueError(f"model must be a scorekit ScoreModel, got {type(model).__name__}")
    check_tensor("x", x, min_dim=2)
    check_finite("x", x)
    h = check_levels(x, bins, data_range)
    steps = check_int("steps", steps)
    batch_size = check_int("batch_size", batch_size)
    lr = check_positive("lr", lr)
    check_generator("generator", generator)
    rows_of = split_cond(cond, x.shape[0])
    deq = VariationalDequantizer(tuple(x.shape[1:]), hidden).to(x.device, x.dtype)
    objective = LikelihoodLoss(model.process)
    lo, hi = objective.t_sampler.bounds(model.process)
    end = tuple(float(v) for v in model.process.marginal(model.process.t_max))
    params = list(deq.parameters())
    opt, _ = adamw(params, lr)
    d = math.prod(x.shape[1:])
    trace = []
    for k in range(steps):
        idx = randint(x.shape[0], (batch_size,), generator, x.device)
        xb = x[idx]
        v, log_q = deq.sample(xb, 1, generator)
        y = xb + h * v[0]
        bound = _nll_bound(model, y, objective, hi - lo, end, generator, rows_of(idx))
        loss = (bound + log_q[0]).mean() / d
        grads = torch.autograd.grad(loss, params)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        opt.step()
        if k % 10 == 0:
            trace.append(loss.detach())
    deq.eval()
    return deq, torch.stack(trace).tolist()

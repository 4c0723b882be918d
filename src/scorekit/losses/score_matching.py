r"""Score-matching losses at one noise level: ESM, ISM, SSM, SSM-VR, DSM, multi-level DSM.

Conventions (all losses):

* ``score_fn`` is any callable ``x -> s(x)`` with ``x`` and ``s(x)`` of shape ``(B, *D)``
  (for a noise-conditional :class:`~scorekit.ScoreModel` pass ``lambda x: model(x, t)``).
* Each loss returns **per-example** values of shape ``(B,)`` (``reduction="none"``, the
  default) or their ``"mean"`` / ``"sum"``.
* ``half=True`` (default) keeps the first ½ of Hyvärinen (2005) and of the seeds:
  :math:`J = \tfrac12 E\|s - \nabla\log p\|^2`. ``half=False`` returns exactly twice that
  (:math:`E\|s - \nabla\log p\|^2`, ISM :math:`\|s\|^2 + 2\,\mathrm{tr}\,\nabla s`), so every
  identity below holds in both conventions.

With :math:`p` the data law, :math:`J_{ESM}(s) = J_{ISM}(s) + \tfrac12 E\|\nabla\log p\|^2`
(integration by parts, Hyvärinen 2005); :math:`E_v[J_{SSM}] = E_v[J_{SSM-VR}] = J_{ISM}`
for probes with :math:`E[vv^\top] = I` (Song et al. 2019); and
:math:`J_{DSM,\sigma}(s) = J_{ESM}(s; p_\sigma) + C_\sigma` (Vincent 2011).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .._validate import check_choice, check_generator, check_int, check_tensor
from ..core.random import rademacher, randint, randn

__all__ = ["dsm", "esm", "ism", "ncsn_loss", "ssm", "ssm_vr"]

REDUCTIONS = ("none", "mean", "sum")
PROBES = ("gaussian", "rademacher")


def _reduce(values: Tensor, reduction: str) -> Tensor:
    check_choice("reduction", reduction, REDUCTIONS)
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


def _finish(val: Tensor, create_graph: bool, half: bool, reduction: str) -> Tensor:
    """Detach unless training, apply the ½ convention and the reduction."""
    val = val if create_graph else val.detach()
    return _reduce(val if half else 2 * val, reduction)


def _sqnorm(v: Tensor) -> Tensor:
    return v.square().sum(tuple(range(1, v.dim())))


def _call(score_fn: Callable[..., Tensor], x: Tensor, *args) -> Tensor:
    s = score_fn(x, *args)
    if not isinstance(s, Tensor) or s.shape != x.shape:
        got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
        raise ValueError(
            f"score_fn must return a tensor of the shape of x {tuple(x.shape)}, got {got}"
        )
    return s


def _check_x(x: Tensor) -> Tensor:
    check_tensor("x", x, min_dim=2)
    if x.shape[0] == 0:
        raise ValueError("x must hold at least one example, got batch size 0")
    return x


def _probes(kind: str, n: int, x: Tensor, generator) -> Tensor:
    """``n`` probe vectors per example, shape ``(n, B, *D)``, with ``E[v v^T] = I``."""
    check_choice("probe", kind, PROBES)
    draw = randn if kind == "gaussian" else rademacher
    return draw((n,) + tuple(x.shape), generator, x.dtype, x.device)


def _vjp(s: Tensor, x: Tensor, v: Tensor, create_graph: bool) -> Tensor:
    r""":math:`J^\top v` for each of the ``n`` probes in ``v`` (shape ``(n, B, *D)``)."""
    if not s.requires_grad:  # s does not depend on x (nor on anything trainable)
        return torch.zeros_like(v)
    if v.shape[0] == 1:
        (g,) = torch.autograd.grad(
            s, x, v[0], retain_graph=True, create_graph=create_graph, allow_unused=True
        )
        return torch.zeros_like(v) if g is None else g[None]
    (g,) = torch.autograd.grad(
        s,
        x,
        v,
        retain_graph=True,
        create_graph=create_graph,
        is_grads_batched=True,
        allow_unused=True,
    )
    return torch.zeros_like(v) if g is None else g


def _exact_trace(s: Tensor, x: Tensor, chunk_size: int | None, create_graph: bool) -> Tensor:
    r""":math:`\mathrm{tr}\,\nabla_x s` for each example: the Jacobian rows :math:`e_i^\top J`
    from one forward, ``chunk_size`` vectorised backward passes at a time (``is_grads_batched``),
    keeping only their diagonal entries."""
    B, d = x.shape[0], x[0].numel()
    if chunk_size is None:
        chunk_size = max(1, min(d, (1 << 24) // max(1, B * d)))
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    trace = x.new_zeros(B)
    for start in range(0, d, chunk_size):
        idx = torch.arange(start, min(d, start + chunk_size), device=x.device)
        basis = (
            eye[idx]
            .reshape((len(idx), 1) + tuple(x.shape[1:]))
            .expand((len(idx),) + tuple(x.shape))
        )
        rows = _vjp(s, x, basis, create_graph).reshape(len(idx), B, d)
        trace = trace + rows[torch.arange(len(idx)), :, idx].sum(0)
    return trace


def _with_input_grad(x: Tensor) -> Tensor:
    return x if x.requires_grad else x.detach().requires_grad_(True)


def esm(
    score_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    true_score: Tensor | Callable[[Tensor], Tensor],
    *,
    half: bool = True,
    reduction: str = "none",
) -> Tensor:
    r"""Explicit score matching, for a known score:
    :math:`\ell(x) = \tfrac12\|s(x) - \nabla_x\log p(x)\|^2`.

    Arguments:
        score_fn: ``x -> s(x)``, shapes ``(B, *D)``.
        x: samples of :math:`p`, shape ``(B, *D)``.
        true_score: :math:`\nabla\log p(x)` as a tensor of shape ``(B, *D)`` or a callable.
        half: keep the ½ (see the module docstring).
        reduction: ``"none"`` (shape ``(B,)``), ``"mean"`` or ``"sum"``.

    References:
        Hyvärinen, "Estimation of Non-Normalized Statistical Models by Score Matching",
        JMLR 2005, eq. (2).

    Example:
        >>> x = torch.randn(4, 1)
        >>> esm(lambda x: -0.5 * x, x, -x).shape
        torch.Size([4])
    """
    _check_x(x)
    ts = true_score(x) if callable(true_score) else true_score
    if not isinstance(ts, Tensor) or ts.shape != x.shape:
        got = tuple(ts.shape) if isinstance(ts, Tensor) else type(ts).__name__
        raise ValueError(f"true_score must have the shape of x {tuple(x.shape)}, got {got}")
    val = _sqnorm(_call(score_fn, x) - ts)
    return _reduce(0.5 * val if half else val, reduction)


def ism(
    score_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    trace: str = "exact",
    n_probes: int = 1,
    probe: str = "gaussian",
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    half: bool = True,
    reduction: str = "none",
) -> Tensor:
    r"""Implicit score matching (Hyvärinen 2005):
    :math:`\ell(x) = \tfrac12\|s(x)\|^2 + \mathrm{tr}\,\nabla_x s(x)`.

    ``trace="exact"`` computes the trace from the Jacobian's rows, found by vectorised
    vector-Jacobian products (``d`` of them, ``chunk_size`` at a time; by default as many as
    keep ``chunk_size * B * d`` under :math:`2^{24}` entries), one forward pass in all. The
    rows come from ``torch.autograd.grad(..., is_grads_batched=True)`` (vmap over the
    backward pass) rather than ``torch.func.jacrev``: it also works for energy models, whose
    score itself calls ``autograd.grad``, and measured faster for a training step.
    ``trace="hutchinson"`` uses :math:`\mathrm{tr} J \approx \frac1n\sum_k v_k^\top J v_k`
    with ``n_probes`` Gaussian or Rademacher probes (Hutchinson 1989); this is SSM-VR.

    Gradients reach the parameters of ``score_fn`` when autograd is enabled
    (``create_graph`` follows :func:`torch.is_grad_enabled`); the graphs of all chunks are
    then kept until the backward pass, so chunking bounds the size of each vectorised pass,
    not the retained graph. ``score_fn`` must treat the examples of the batch independently.

    Arguments:
        score_fn: ``x -> s(x)``, shapes ``(B, *D)``.
        x: data, shape ``(B, *D)``.
        trace: ``"exact"`` or ``"hutchinson"``.
        n_probes: probes per example (Hutchinson only), ``>= 1``.
        probe: ``"gaussian"`` or ``"rademacher"``.
        generator: randomness for the probes.
        chunk_size: Jacobian rows per vectorised backward pass (exact only).
        half: keep the ½ (``half=False``: :math:`\|s\|^2 + 2\,\mathrm{tr}\nabla s`).
        reduction: ``"none"`` (shape ``(B,)``), ``"mean"`` or ``"sum"``.

    References:
        Hyvärinen, JMLR 2005, Theorem 1. Hutchinson, "A stochastic estimator of the trace
        of the influence matrix", 1989.

    Example:
        >>> ism(lambda x: -x, torch.zeros(2, 3)).tolist()  # 0 + tr(-I)
        [-3.0, -3.0]
    """
    _check_x(x)
    check_generator("generator", generator)
    check_choice("trace", trace, ("exact", "hutchinson"))
    n_probes = check_int("n_probes", n_probes, minimum=1)
    check_choice("probe", probe, PROBES)
    if chunk_size is not None:
        chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    if trace == "hutchinson":  # the Hutchinson trace estimate of ISM is SSM-VR
        return ssm(score_fn, x, n_projections=n_probes, probe=probe, variance_reduction=True,
                   generator=generator, half=half, reduction=reduction)  # fmt: skip
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        xg = _with_input_grad(x)
        s = _call(score_fn, xg)
        tr = _exact_trace(s, xg, chunk_size, create_graph)
    return _finish(0.5 * _sqnorm(s) + tr, create_graph, half, reduction)


def ssm(
    score_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    n_projections: int = 1,
    probe: str = "gaussian",
    variance_reduction: bool = False,
    generator: torch.Generator | None = None,
    half: bool = True,
    reduction: str = "none",
) -> Tensor:
    r"""Sliced score matching (Song, Garg, Shi & Ermon 2019), averaged over ``n_projections``
    random directions :math:`v` per example:

    .. math::
        \ell_{SSM}(x) = \frac1n\sum_k \Big[v_k^\top \nabla_x\big(v_k^\top s(x)\big)
                        + \tfrac12 \big(v_k^\top s(x)\big)^2\Big], \qquad
        \ell_{SSM\text{-}VR}(x) = \frac1n\sum_k v_k^\top \nabla_x\big(v_k^\top s(x)\big)
                        + \tfrac12 \|s(x)\|^2 .

    One forward pass and one vector-Jacobian product per projection (vectorised over the
    projections); the Jacobian is never formed. With :math:`E[vv^\top] = I` (Gaussian or
    Rademacher probes) both have expectation :math:`\ell_{ISM}(x)`. (Reverse mode: a
    forward-mode Jacobian-vector product gives the same :math:`v^\top J v` but measured
    slower in PyTorch.)

    Arguments:
        score_fn: ``x -> s(x)``, shapes ``(B, *D)``.
        x: data, shape ``(B, *D)``.
        n_projections: directions per example, ``>= 1``.
        probe: ``"gaussian"`` or ``"rademacher"``.
        variance_reduction: use the SSM-VR form (the :math:`\|s\|^2` term in closed form).
        generator: randomness for the projections.
        half: keep the ½ (``half=False`` doubles every term).
        reduction: ``"none"`` (shape ``(B,)``), ``"mean"`` or ``"sum"``.

    References:
        Song, Garg, Shi & Ermon, "Sliced Score Matching: A Scalable Approach to Density and
        Score Estimation", UAI 2019, eqs. (7) and (8).

    Example:
        >>> x = torch.zeros(2, 3)  # s = -x: v^T J v = -||v||^2 = -3 for Rademacher v
        >>> ssm(lambda x: -x, x, probe="rademacher", generator=torch.Generator()).tolist()
        [-3.0, -3.0]
    """
    _check_x(x)
    check_generator("generator", generator)
    n = check_int("n_projections", n_projections, minimum=1)
    check_choice("probe", probe, PROBES)
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        xg = _with_input_grad(x)
        s = _call(score_fn, xg)
        v = _probes(probe, n, xg, generator)
        vjv = (_vjp(s, xg, v, create_graph) * v).reshape(n, x.shape[0], -1).sum(-1)
        if variance_reduction:
            val = vjv.mean(0) + 0.5 * _sqnorm(s)
        else:
            vs = (v * s).reshape(n, x.shape[0], -1).sum(-1)
            val = (vjv + 0.5 * vs**2).mean(0)
    return _finish(val, create_graph, half, reduction)


def ssm_vr(
    score_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    n_projections: int = 1,
    probe: str = "gaussian",
    generator: torch.Generator | None = None,
    half: bool = True,
    reduction: str = "none",
) -> Tensor:
    r"""SSM with variance reduction: :func:`ssm` with ``variance_reduction=True``,
    :math:`\ell = \frac1n\sum_k v_k^\top\nabla_x(v_k^\top s) + \tfrac12\|s\|^2`
    (Song et al. 2019, eq. (8))."""
    return ssm(
        score_fn,
        x,
        n_projections=n_projections,
        probe=probe,
        variance_reduction=True,
        generator=generator,
        half=half,
        reduction=reduction,
    )


def _sigma_vector(sigma: Tensor | float, x: Tensor, name: str = "sigma") -> Tensor:
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.dim() == 0:
        s = s.expand(x.shape[0])
    if s.shape != (x.shape[0],):
        raise ValueError(
            f"{name} must be a scalar or of shape (B,) = ({x.shape[0]},), got {tuple(s.shape)}"
        )
    if not (torch.isfinite(s).all() and (s > 0).all()):
        raise ValueError(f"{name} must be finite and > 0, got minimum {float(s.min())!r}")
    return s


def _dsm_values(s, eps, sigma, weighting, half) -> Tensor:
    sig = sigma.reshape((-1,) + (1,) * (eps.dim() - 1))
    val = _sqnorm(s + eps / sig)
    if weighting is not None:
        lam = torch.as_tensor(weighting(sigma), dtype=val.dtype, device=val.device)
        val = lam * val
    return 0.5 * val if half else val


def dsm(
    score_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    sigma: Tensor | float,
    *,
    eps: Tensor | None = None,
    generator: torch.Generator | None = None,
    weighting: Callable[[Tensor], Tensor] | None = None,
    half: bool = True,
    reduction: str = "none",
) -> Tensor:
    r"""Denoising score matching at noise level :math:`\sigma` (Vincent 2011):

    .. math::
        \ell(x, \varepsilon) = \lambda(\sigma)\, \tfrac12
            \Big\| s(x + \sigma\varepsilon) + \frac{\varepsilon}{\sigma} \Big\|^2,
        \qquad \varepsilon \sim \mathcal N(0, I).

    With ``weighting=None`` (:math:`\lambda = 1`) this is the seeds' form
    :math:`\tfrac12\|s + \varepsilon/\sigma\|^2 = \frac{1}{2\sigma^2}\|\sigma s + \varepsilon\|^2`;
    ``weighting=lambda sigma: sigma**2`` gives NCSN's :math:`\tfrac12\|\sigma s + \varepsilon\|^2`.
    Its minimiser is the score of :math:`p_\sigma = p * \mathcal N(0, \sigma^2 I)`.

    Arguments:
        score_fn: ``x_noisy -> s(x_noisy)``, shapes ``(B, *D)``.
        x: clean data, shape ``(B, *D)``.
        sigma: noise level, a positive scalar or shape ``(B,)``.
        eps: the noise, shape ``(B, *D)``; drawn from ``generator`` when ``None``.
        weighting: :math:`\lambda(\sigma)`, a callable of the ``(B,)`` noise levels.
        half: keep the ½ (``half=False``: :math:`\lambda\|s + \varepsilon/\sigma\|^2`).
        reduction: ``"none"`` (shape ``(B,)``), ``"mean"`` or ``"sum"``.

    References:
        Vincent, "A Connection Between Score Matching and Denoising Autoencoders", Neural
        Computation 2011, eq. (8); Song & Ermon (2019), eq. (5).

    Example:
        >>> x, eps = torch.tensor([[2.0]]), torch.tensor([[0.5]])
        >>> dsm(lambda xt: torch.tensor([[-0.4]]), x, 1.0, eps=eps)
        tensor([0.0050])
    """
    _check_x(x)
    check_generator("generator", generator)
    sig = _sigma_vector(sigma, x)
    if eps is None:
        eps = randn(x.shape, generator, x.dtype, x.device)
    elif not isinstance(eps, Tensor) or eps.shape != x.shape:
        got = tuple(eps.shape) if isinstance(eps, Tensor) else type(eps).__name__
        raise ValueError(f"eps must have the shape of x {tuple(x.shape)}, got {got}")
    xt = x + sig.reshape((-1,) + (1,) * (x.dim() - 1)) * eps
    return _reduce(_dsm_values(_call(score_fn, xt), eps, sig, weighting, half), reduction)


def ncsn_loss(
    score_fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    sigmas: Tensor,
    *,
    weighting: Callable[[Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
    half: bool = True,
    reduction: str = "none",
) -> Tensor:
    r"""Multi-level DSM of NCSN (Song & Ermon 2019, eq. (6)): each example draws its level
    :math:`\sigma_i` uniformly from ``sigmas`` and pays

    .. math:: \lambda(\sigma_i)\,\tfrac12\|s(x + \sigma_i\varepsilon, \sigma_i)
              + \varepsilon/\sigma_i\|^2 .

    Arguments:
        score_fn: ``(x_noisy, sigma) -> s``, with ``sigma`` of shape ``(B,)``.
        x: clean data, shape ``(B, *D)``.
        sigmas: the levels, a 1-D tensor of positive values (e.g. a geometric grid,
            :func:`~scorekit.core.processes.ncsn_sigmas`).
        weighting: :math:`\lambda(\sigma)`; ``None`` means NCSN's :math:`\sigma^2`.
        generator: randomness for the levels and the noise.
        half: keep the ½.
        reduction: ``"none"`` (shape ``(B,)``), ``"mean"`` or ``"sum"``.

    References:
        Song & Ermon, "Generative Modeling by Estimating Gradients of the Data
        Distribution", NeurIPS 2019, Section 4.2.

    Example:
        >>> sigmas = torch.tensor([1.0, 0.5, 0.25])
        >>> x = torch.randn(4, 2)
        >>> ncsn_loss(lambda xt, s: -xt / (1 + s[:, None] ** 2), x, sigmas).shape
        torch.Size([4])
    """
    _check_x(x)
    check_generator("generator", generator)
    try:
        sg = torch.as_tensor(sigmas, dtype=x.dtype, device=x.device)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"sigmas must be a 1-D tensor of levels, got {sigmas!r}") from None
    if sg.dim() != 1 or sg.numel() == 0:
        raise ValueError(f"sigmas must be a non-empty 1-D tensor, got shape {tuple(sg.shape)}")
    if not (torch.isfinite(sg).all() and (sg > 0).all()):
        raise ValueError(f"sigmas must be finite and > 0, got minimum {float(sg.min())!r}")
    sig = sg[randint(len(sg), (x.shape[0],), generator, x.device)]
    eps = randn(x.shape, generator, x.dtype, x.device)
    xt = x + sig.reshape((-1,) + (1,) * (x.dim() - 1)) * eps
    w = weighting if weighting is not None else (lambda s: s**2)
    return _reduce(_dsm_values(_call(score_fn, xt, sig), eps, sig, w, half), reduction)

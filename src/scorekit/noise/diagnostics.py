r"""Per-noise-level diagnostics: how far a score model's DSM loss is above its floor.

The denoising score-matching loss at one noise level,

.. math::
    L(\theta; t) = E_{x_0, \varepsilon}\ \tfrac12
        \big\| s_\theta(x_t, t) + \varepsilon/\sigma(t) \big\|^2,
    \qquad x_t = \alpha(t) x_0 + \sigma(t)\varepsilon,

never reaches zero: since :math:`E[-\varepsilon/\sigma \mid x_t] = \nabla\log p_t(x_t)`,

.. math::
    L(\theta; t) = \underbrace{E\,\tfrac12\|\nabla\log p_t(x_t) + \varepsilon/\sigma\|^2}_
        {L^\star(t),\ \text{irreducible}}
      + E\,\tfrac12\|s_\theta(x_t, t) - \nabla\log p_t(x_t)\|^2
      \;\ge\; L^\star(t)

(Vincent 2011). :math:`L^\star(t)` grows like :math:`d/(2\sigma^2)` as :math:`\sigma \to 0`,
so raw per-σ losses cannot be compared across noise levels; the ratio
:math:`L(\theta; t)/L^\star(t) \ge 1` can, and equals 1 exactly when the model is the true
noised score. For a :class:`~scorekit.core.distributions.GaussianMixture` target the exact noised
score is known, so :math:`L^\star` is a Monte-Carlo average with no learning error
(:func:`irreducible_dsm`). Under any weighting and any ``t`` sampler the same holds bucket by
bucket for a trainer's logged loss: :func:`irreducible_buckets` averages the objective itself
with the exact score as the model, and :func:`normalized_log` divides the log by it.

A bounded score error adds an :math:`O(1)` term to a floor of order :math:`d/(2\sigma^2)`, so
the ratio goes to 1 as :math:`\sigma \to 0` whatever the model; it is informative where
:math:`\sigma` is comparable to the data's own scales.

Example:
    >>> from scorekit import VP, GaussianMixture, ExactScore
    >>> gm = GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], stds=0.3)
    >>> ratio, se = normalized_dsm(ExactScore(gm, VP()), gm, torch.tensor([0.3]),
    ...                            n=20_000, generator=torch.Generator().manual_seed(0))
    >>> bool(abs(ratio[0] - 1) < 4 * se[0])
    True

References:
    Vincent, "A Connection Between Score Matching and Denoising Autoencoders", 2011;
    Song et al., "Score-Based Generative Modeling through SDEs", ICLR 2021, eq. (7).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._validate import check_finite, check_generator, check_int, check_tensor
from ..core.distributions import ExactScore, GaussianMixture
from ..core.processes import Process
from ..core.random import randn

__all__ = [
    "bucket_sums",
    "bucket_loss",
    "dsm_per_level",
    "irreducible_buckets",
    "irreducible_dsm",
    "normalized_dsm",
    "normalized_log",
    "plot_normalized_loss",
]


def _times(process: Process, t) -> Tensor:
    try:
        t = torch.as_tensor(t, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"t must be a 1-D tensor of times, got {t!r}") from None
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"t must be a non-empty 1-D tensor of times, got shape {tuple(t.shape)}")
    process.check_t(t)
    return t


def _level_losses(score_fn, x0: Tensor, process: Process, t: float, generator) -> Tensor:
    """Per-example :math:`\\tfrac12\\|s(x_t) + \\varepsilon/\\sigma\\|^2` at one time ``t``."""
    tt = torch.full((x0.shape[0],), t, dtype=x0.dtype)
    eps = randn(x0.shape, generator, x0.dtype, x0.device)
    alpha, sigma = process.marginal(tt)
    view = (-1,) + (1,) * (x0.dim() - 1)
    xt = alpha.reshape(view) * x0 + sigma.reshape(view) * eps
    with torch.no_grad():
        s = score_fn(xt, tt)
    r = (s + eps / sigma.reshape(view)).flatten(1)
    return 0.5 * (r**2).sum(1)


def dsm_per_level(
    model, x0: Tensor, t, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    r"""DSM loss :math:`L(\theta; t) = E\,\tfrac12\|s_\theta(x_t,t) + \varepsilon/\sigma\|^2`
    at each time of ``t`` (score space, unweighted), on the examples ``x0``.

    Arguments:
        model: a :class:`~scorekit.core.parametrize.ScoreModel` (``model(x, t)`` is the score;
            it carries ``.process``).
        x0: clean examples, shape ``(N, *D)``; every time uses all of them with fresh noise.
        t: 1-D tensor of ``K`` times inside the process domain.
        generator: draws the noise.

    Returns:
        ``(mean, stderr)``, each of shape ``(K,)``, float64.
    """
    process = getattr(model, "process", None)
    if not isinstance(process, Process):
        raise ValueError(f"model must carry a scorekit Process as .process, got {model!r}")
    check_finite("x0", check_tensor("x0", x0, min_dim=2))
    check_generator("generator", generator)
    t = _times(process, t)
    means, ses = [], []
    for tk in t.tolist():
        v = _level_losses(model, x0, process, tk, generator).double()
        means.append(v.mean())
        ses.append(v.std() / math.sqrt(len(v)) if len(v) > 1 else torch.tensor(float("nan")))
    return torch.stack(means), torch.stack(ses)


def irreducible_dsm(
    target: GaussianMixture,
    process: Process,
    t,
    n: int = 20_000,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    r"""The floor :math:`L^\star(t) = E\,\tfrac12\|\nabla\log p_t(x_t) + \varepsilon/\sigma\|^2`
    of the DSM loss at each time of ``t``, with the exact noised score of ``target``.

    For a Gaussian :math:`\mathcal N(\mu, \tau^2 I)` in :math:`d` dimensions,
    :math:`L^\star = \tfrac{d}{2}\,\alpha^2\tau^2 / (\sigma^2(\alpha^2\tau^2 + \sigma^2))`.

    Arguments:
        target: the data law, a :class:`~scorekit.core.distributions.GaussianMixture`.
        process: the noise process.
        t: 1-D tensor of ``K`` times inside the process domain.
        n: Monte-Carlo examples per time (float64).
        generator: draws the examples and the noise.

    Returns:
        ``(mean, stderr)``, each of shape ``(K,)``, float64.

    Example:
        >>> from scorekit import VP, Gaussian
        >>> g = torch.Generator().manual_seed(0)
        >>> irreducible_dsm(Gaussian([0.0, 0.0], std=1.0), VP(), torch.tensor([0.5]),
        ...                 n=1000, generator=g)[0].shape
        torch.Size([1])
    """
    if not isinstance(target, GaussianMixture):
        raise ValueError(f"target must be a GaussianMixture, got {type(target).__name__}")
    n = check_int("n", n, minimum=2)
    exact = ExactScore(target, process)
    t = _times(process, t)
    x0 = target.sample(n, generator=generator, dtype=torch.float64)
    return dsm_per_level(exact, x0, t, generator)


def normalized_dsm(
    model,
    target: GaussianMixture,
    t,
    n: int = 20_000,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    r"""The ratio :math:`L(\theta; t) / L^\star(t) \ge 1` at each time of ``t``, with ``n``
    fresh examples of ``target`` for each of the two terms (independent draws).

    A bounded score error :math:`\delta` adds :math:`\tfrac12 E\|\delta\|^2` to a floor that
    grows like :math:`d/(2\sigma^2)`, so the ratio tends to 1 as :math:`\sigma \to 0` even for
    a wrong model: read it where :math:`\sigma` is comparable to the data's scales.

    Arguments:
        model: a :class:`~scorekit.core.parametrize.ScoreModel` (carries ``.process``).
        target: the data law, a :class:`~scorekit.core.distributions.GaussianMixture`.
        t: 1-D tensor of ``K`` times inside the process domain.
        n: Monte-Carlo examples per time and per term.
        generator: draws everything.

    Returns:
        ``(ratio, stderr)`` of shape ``(K,)``; the standard error by the delta method,
        :math:`r\sqrt{(se_L/L)^2 + (se_\star/L^\star)^2}`.
    """
    process = getattr(model, "process", None)
    if not isinstance(process, Process):
        raise ValueError(f"model must carry a scorekit Process as .process, got {model!r}")
    n = check_int("n", n, minimum=2)
    params = list(model.parameters()) if hasattr(model, "parameters") else []
    dtype = params[0].dtype if params else torch.float64
    x0 = target.sample(n, generator=generator, dtype=dtype)
    loss, se = dsm_per_level(model, x0, t, generator)
    floor, se_floor = irreducible_dsm(target, process, t, n, generator)
    ratio = loss / floor
    return ratio, ratio * torch.sqrt((se / loss) ** 2 + (se_floor / floor) ** 2)


def bucket_sums(
    sigma: Tensor, values: Tensor, edges: Tensor, weights: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Per bucket :math:`[e_j, e_{j+1})` of ``sigma``: the sums of ``values``, of their
    squares and of the ``weights`` (default 1; a weight of 0 leaves a value out, even a
    non-finite one); the outer buckets extend to 0 and infinity. All shapes ``(N,)`` in,
    ``(J,)`` out, float64, on the device of ``sigma`` (nothing is read on the host)."""
    idx = torch.bucketize(sigma.reshape(-1), edges[1:-1].to(sigma.device))
    v = values.reshape(-1).to(torch.float64)
    w = torch.ones_like(v) if weights is None else weights.reshape(-1).to(torch.float64)
    v = torch.where(w > 0, v, 0.0)
    nb = len(edges) - 1
    out = torch.zeros(3, nb, dtype=torch.float64, device=sigma.device)
    for row, vals in zip(out, (w * v, w * v * v, w), strict=True):
        row.index_add_(0, idx, vals)
    return out[0], out[1], out[2]


def bucket_loss(
    objective,
    model,
    target: GaussianMixture,
    sigma_edges,
    n: int = 200_000,
    batch: int = 20_000,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Mean of ``objective``'s per-example loss for ``model`` on examples of ``target``, over
    the objective's own ``t`` sampler, in each bucket :math:`[e_j, e_{j+1})` of
    :math:`\sigma(t)` (what :class:`~scorekit.train.trainer.Trainer` logs as ``"bucket_loss"``).

    Arguments:
        objective: a noise-conditional objective (``.process``, ``.sample_t``, called as
            ``objective(model, x0, t=, generator=)``).
        model: the score model, evaluated in float64 without gradients.
        target: the data law (a :class:`~scorekit.core.distributions.GaussianMixture`).
        sigma_edges: ``J + 1`` increasing bucket edges (a trainer log's ``"sigma_edges"``);
            the outer buckets extend to 0 and infinity, as in the trainer.
        n: Monte-Carlo examples in all; batch: examples per call.
        generator: draws everything.

    Returns:
        ``(mean, stderr)`` of shape ``(J,)``, float64 (NaN where a bucket got no draw).
    """
    if not isinstance(target, GaussianMixture):
        raise ValueError(f"target must be a GaussianMixture, got {type(target).__name__}")
    edges = torch.as_tensor(sigma_edges, dtype=torch.float64)
    if edges.dim() != 1 or len(edges) < 2 or not bool((edges[1:] > edges[:-1]).all()):
        raise ValueError(f"sigma_edges must be an increasing 1-D sequence, got {sigma_edges!r}")
    n = check_int("n", n, minimum=2)
    batch = check_int("batch", batch)
    process = objective.process
    nb = len(edges) - 1
    s1, s2, cnt = (torch.zeros(nb, dtype=torch.float64) for _ in range(3))
    done = 0
    while done < n:
        m = min(batch, n - done)
        x0 = target.sample(m, generator=generator, dtype=torch.float64)
        t = objective.sample_t(m, generator=generator, dtype=torch.float64)
        with torch.no_grad():
            v = objective(model, x0, t=t, generator=generator).double()
        a, b, c = bucket_sums(process.sigma(t), v, edges)
        s1, s2, cnt = s1 + a, s2 + b, cnt + c
        done += m
    mean = s1 / cnt
    var = (s2 / cnt - mean**2).clamp(min=0) * cnt / (cnt - 1).clamp(min=1)
    return mean, torch.sqrt(var / cnt)


def irreducible_buckets(
    objective,
    target: GaussianMixture,
    sigma_edges,
    n: int = 200_000,
    batch: int = 20_000,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Floor of a trainer's logged loss per σ bucket: :func:`bucket_loss` with the exact
    noised score of ``target`` as the model.

    Every objective of :mod:`scorekit.losses` is :math:`w(t)\,\tfrac12\|s + \varepsilon/
    \sigma\|^2` for some :math:`w \ge 0`, so conditionally on :math:`t` its floor is
    :math:`w(t) L^\star(t)`; a bucket's floor is the average of that over the ``t`` the
    objective draws there, and any model's bucket loss divided by it is :math:`\ge 1`
    (up to Monte-Carlo error). Arguments and returns as :func:`bucket_loss`.
    """
    if not isinstance(target, GaussianMixture):
        raise ValueError(f"target must be a GaussianMixture, got {type(target).__name__}")
    exact = ExactScore(target, objective.process)
    return bucket_loss(objective, exact, target, sigma_edges, n, batch, generator)


def normalized_log(records: list[dict], floor: Tensor) -> list[dict]:
    r"""Divide every record's ``"bucket_loss"`` of a :class:`~scorekit.train.trainer.Trainer` log by
    the floor per bucket (:func:`irreducible_buckets`); returns records
    ``{"step", "sigma_centres", "normalized"}`` (``None`` where a bucket had no example)."""
    floor = torch.as_tensor(floor, dtype=torch.float64)
    out = []
    for r in records:
        edges = torch.as_tensor(r["sigma_edges"], dtype=torch.float64)
        if len(edges) - 1 != len(floor):
            raise ValueError(
                f"floor has {len(floor)} buckets but the log record at step {r['step']} has "
                f"{len(edges) - 1}"
            )
        centres = torch.sqrt(edges[:-1] * edges[1:]).tolist()
        vals = [
            None if v is None or not math.isfinite(float(f)) else v / float(f)
            for v, f in zip(r["bucket_loss"], floor, strict=True)
        ]
        out.append({"step": r["step"], "sigma_centres": centres, "normalized": vals})
    return out


def plot_normalized_loss(runs: dict[str, list[dict]], *, title: str = "DSM loss / floor"):
    r"""Left: the normalised loss :math:`L/L^\star` against σ at the last record of each run
    (one line per run, log-log, with the floor 1 dashed). Right: the normalised loss over
    training, averaged (geometric mean) over the buckets, per run.

    Arguments:
        runs: ``{name: normalized records}`` as :func:`normalized_log` returns.

    Returns:
        A ``matplotlib.figure.Figure``.
    """
    from ..app.plots import _figure

    if not runs:
        raise ValueError("runs must hold at least one run")
    fig, axes = _figure(2, size=4.5)
    left, right = axes[0, 0], axes[0, 1]
    for name, recs in runs.items():
        if not recs:
            raise ValueError(f"run {name!r} holds no records")
        last = recs[-1]
        pts = [(c, v) for c, v in zip(last["sigma_centres"], last["normalized"], strict=True)
               if v is not None]  # fmt: skip
        left.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        steps, geo = [], []
        for r in recs:
            vals = [v for v in r["normalized"] if v is not None and v > 0]
            if vals:
                steps.append(r["step"])
                geo.append(math.exp(sum(math.log(v) for v in vals) / len(vals)))
        right.plot(steps, geo, label=name)
    for ax in (left, right):
        ax.axhline(1.0, color="black", ls="--", lw=1)
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    left.set_xscale("log")
    left.set_xlabel("noise level sigma (bucket centre)")
    left.set_ylabel("loss / irreducible loss")
    left.set_title("at the end of training")
    right.set_xlabel("training step")
    right.set_ylabel("geometric mean over sigma buckets")
    right.set_title("over training")
    fig.suptitle(title)
    return fig

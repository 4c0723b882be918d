r"""Sample-based distances between two point clouds, sample-quality scores for digits, and the
straightness of a model's probability-flow trajectories.

References:
    Rabin et al., "Wasserstein Barycenter and its Application to Texture Mixing", 2011;
    Bonneel et al., "Sliced and Radon Wasserstein Barycenters of Measures", 2015;
    Dowson & Landau, "The Fréchet distance between multivariate normal distributions", 1982;
    Heusel et al., "GANs Trained by a Two Time-Scale Update Rule ...", NeurIPS 2017 (FID);
    Liu, Gong & Liu, "Flow Straight and Fast", ICLR 2023 (straightness).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ._validate import check_generator, check_int, check_tensor
from .core.random import randn

__all__ = [
    "Straightness",
    "digits_quality",
    "frechet_distance",
    "sliced_wasserstein",
    "straightness",
]


def sliced_wasserstein(
    x: Tensor,
    y: Tensor,
    n_projections: int = 256,
    generator: torch.Generator | None = None,
    p: int = 2,
) -> Tensor:
    r"""Monte-Carlo sliced :math:`p`-Wasserstein distance between the empirical laws of
    ``x`` and ``y``:

    .. math:: SW_p(\mu, \nu) = \Big(\mathbb{E}_{\theta \sim U(S^{d-1})}
              W_p^p(\theta_\# \mu, \theta_\# \nu)\Big)^{1/p},

    each 1-D :math:`W_p` computed exactly from sorted projections (with equal sizes) or
    from matched quantiles (sizes differ: both empirical quantile functions evaluated
    at the ``max(n, m)`` levels :math:`(i + 1/2)/\max(n, m)`).

    Arguments:
        x: samples of shape ``(n, *D)``; y: ``(m, *D)``.
        n_projections: number of random directions.
        generator: draws the directions.
        p: order (>= 1).

    Returns:
        A 0-dim tensor (dtype of ``x``).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(500, 2, generator=g)
        >>> float(sliced_wasserstein(x, x + 1.0, 64, g)) > 0.5
        True
    """
    check_tensor("x", x, min_dim=1)
    check_tensor("y", y, min_dim=1)
    n_projections = check_int("n_projections", n_projections, minimum=1)
    p = check_int("p", p, minimum=1)
    xf, yf = x.reshape(len(x), -1), y.reshape(len(y), -1).to(x)
    if xf.shape[1] != yf.shape[1]:
        raise ValueError(
            f"x and y must have the same number of features, got {tuple(x.shape)} and "
            f"{tuple(y.shape)}"
        )
    theta = randn((xf.shape[1], n_projections), generator, xf.dtype, xf.device)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px = torch.sort((xf @ theta).T.contiguous(), dim=1).values  # (P, n)
    py = torch.sort((yf @ theta).T.contiguous(), dim=1).values  # (P, m)
    n, m = px.shape[1], py.shape[1]
    if n != m:
        k = max(n, m)
        q = (torch.arange(k, dtype=xf.dtype, device=xf.device) + 0.5) / k
        px = px[:, (q * n).long().clamp_max(n - 1)]
        py = py[:, (q * m).long().clamp_max(m - 1)]
    return ((px - py).abs() ** p).mean() ** (1.0 / p)


def _psd_sqrt(c: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix."""
    w, v = np.linalg.eigh(c)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    r"""Fréchet (2-Wasserstein) distance between Gaussians fitted to two samples:

    .. math:: \|\mu_a-\mu_b\|^2 + \mathrm{tr}\big(\Sigma_a+\Sigma_b
              - 2(\Sigma_a^{1/2}\Sigma_b\Sigma_a^{1/2})^{1/2}\big),

    with sample means and unbiased sample covariances; the trace term equals
    :math:`\mathrm{tr}(\Sigma_a\Sigma_b)^{1/2}` and is computed from the eigenvalues of the
    symmetric :math:`\Sigma_a^{1/2}\Sigma_b\Sigma_a^{1/2}` (no complex square roots).

    Arguments:
        a: samples of shape ``(n, d)``; b: ``(m, d)``, with ``n, m >= 2``.

    Returns:
        The squared distance (as FID reports it), a float.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(1000, 2))
        >>> round(frechet_distance(x, x + 1.0), 6)
        2.0

    References:
        Dowson & Landau (1982); Heusel et al. (2017).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    for name, v in (("a", a), ("b", b)):
        if v.ndim != 2 or v.shape[0] < 2 or not np.isfinite(v).all():
            raise ValueError(f"{name} must be a finite (n >= 2, d) array, got shape {v.shape}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have the same width, got {a.shape} and {b.shape}")
    ca, cb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    ra = _psd_sqrt(ca)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(ra @ cb @ ra), 0.0, None)).sum()
    mean = ((a.mean(0) - b.mean(0)) ** 2).sum()
    return float(mean + np.trace(ca) + np.trace(cb) - 2 * cross)


def digits_quality(
    generated: np.ndarray,
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    n_components: int = 16,
    seed: int = 0,
    protocol: str = "halves",
) -> dict:
    r"""Sample quality of generated 8x8 digits (pixels on sklearn's 0..16 scale).

    * ``frechet``: :func:`frechet_distance` in a ``n_components``-dimensional PCA space
      (fitted on ``train_x``). ``protocol="halves"``: between the first :math:`m` generated
      digits and half ``A`` of a random halving of ``test_x``, with
      :math:`m = \min(|B|, n_{gen})`; ``frechet_real`` is the same distance from the first
      :math:`m` digits of half ``B``. ``protocol="full"``: between all generated digits and
      all of ``test_x``; ``frechet_real`` is the distance from as many random training
      digits (real digits the test set does not hold). ``frechet_ratio`` is their ratio.
    * ``top_class_prob_ratio``: mean top-class probability of a logistic regression trained
      on ``(train_x / 16, train_y)``, on the generated digits over that on ``test_x``.
    * ``class_shares`` (10 values) and ``min_class_share``: the predicted-class shares.
    * ``nn_train_median``: the median Euclidean distance (pixels) from a generated digit to
      its nearest training digit, and ``nn_train_median_real`` the same for the held-out
      digits: samples that copy training digits sit closer than real unseen digits do
      (``nn_ratio`` < 1).

    Arguments:
        generated: ``(n, 64)``; train_x: ``(N, 64)``; train_y: ``(N,)``; test_x: ``(M, 64)``.
        n_components: PCA width. seed: the halving (or training subset) and the PCA.
        protocol: ``"halves"`` or ``"full"``, as above.

    Needs scikit-learn. Returns a dict of floats (and the list of shares).
    """
    try:
        from sklearn.decomposition import PCA
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise ValueError(
            "digits_quality needs scikit-learn: pip install 'scorekit[data]'"
        ) from None
    gen = np.asarray(generated, dtype=np.float64).reshape(len(generated), -1)
    train_x = np.asarray(train_x, dtype=np.float64).reshape(len(train_x), -1)
    test_x = np.asarray(test_x, dtype=np.float64).reshape(len(test_x), -1)
    if gen.shape[1] != train_x.shape[1] or test_x.shape[1] != train_x.shape[1]:
        raise ValueError(
            f"generated, train_x and test_x must have the same width, got {gen.shape}, "
            f"{train_x.shape} and {test_x.shape}"
        )
    if not np.isfinite(gen).all():
        raise ValueError("generated must be finite")
    if protocol not in ("halves", "full"):
        raise ValueError(f"protocol must be 'halves' or 'full', got {protocol!r}")
    pca = PCA(n_components, random_state=seed).fit(train_x)
    rng = np.random.default_rng(seed)
    if protocol == "halves":
        perm = rng.permutation(len(test_x))
        ref, real = test_x[perm[: len(test_x) // 2]], test_x[perm[len(test_x) // 2 :]]
        m = min(len(real), len(gen))
    else:
        m = min(len(gen), len(train_x))
        ref, real = test_x, train_x[rng.permutation(len(train_x))[:m]]
    fd_gen = frechet_distance(pca.transform(gen[:m]), pca.transform(ref))
    fd_real = frechet_distance(pca.transform(real[:m]), pca.transform(ref))
    clf = LogisticRegression(max_iter=5000).fit(train_x / 16, np.asarray(train_y))
    p_gen, p_real = clf.predict_proba(gen / 16), clf.predict_proba(test_x / 16)
    shares = np.bincount(p_gen.argmax(1), minlength=10) / len(gen)
    nn_gen, nn_real = _nearest_distance(gen, train_x), _nearest_distance(test_x, train_x)
    return {
        "frechet": fd_gen,
        "frechet_real": fd_real,
        "frechet_ratio": fd_gen / fd_real,
        "n_compared": m,
        "protocol": protocol,
        "top_class_prob_ratio": float(p_gen.max(1).mean() / p_real.max(1).mean()),
        "min_class_share": float(shares.min()),
        "class_shares": shares.tolist(),
        "nn_train_median": float(np.median(nn_gen)),
        "nn_train_median_real": float(np.median(nn_real)),
        "nn_ratio": float(np.median(nn_gen) / np.median(nn_real)),
    }


def _nearest_distance(x: np.ndarray, ref: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Euclidean distance from each row of ``x`` to its nearest row of ``ref``."""
    ref_sq = (ref**2).sum(1)
    out = []
    for i in range(0, len(x), chunk):
        xi = x[i : i + chunk]
        d2 = (xi**2).sum(1)[:, None] - 2 * xi @ ref.T + ref_sq[None, :]
        out.append(np.sqrt(np.maximum(d2.min(1), 0.0)))
    return np.concatenate(out)


@dataclass
class Straightness:
    """What :func:`straightness` measured: ``value`` (mean squared deviation per coordinate),
    ``relative`` (``value`` over the mean squared straight-line velocity per coordinate),
    ``steps`` of the grid and ``nfe`` spent."""

    value: float
    relative: float
    steps: int
    nfe: int


def straightness(
    model,
    n: int = 1000,
    steps: int = 100,
    generator: torch.Generator | None = None,
    *,
    x_T: Tensor | None = None,
    cond: dict | None = None,
    batch_size: int | None = None,
    device=None,
) -> Straightness:
    r"""Straightness of the probability-flow trajectories of ``model`` (Liu et al. 2023,
    eq. (6)): with :math:`x_t` the ODE solution from :math:`t_{max}` to :math:`t_{min}`
    and :math:`\Delta = (x_{t_{max}} - x_{t_{min}})/(t_{max} - t_{min})` its mean velocity,

    .. math:: S = \frac{1}{(t_{max} - t_{min})\,D} \int_{t_{min}}^{t_{max}}
              \mathbb E\,\|u(x_t, t) - \Delta\|^2\,dt ,

    zero exactly when every trajectory is a straight line travelled at constant speed (then
    one Euler step is exact); ``relative`` is :math:`S / (\mathbb E\|\Delta\|^2/D)`. The
    trajectory is solved by Heun on ``steps`` uniform steps in ``t``, :math:`u` =
    :meth:`~scorekit.ScoreModel.velocity` is evaluated at every grid point and the integral
    is the trapezoid rule on that grid. Values compare models on one process; on another
    process the time axis (and so :math:`S`) is another.

    Arguments:
        model: a :class:`~scorekit.ScoreModel`.
        n: trajectories drawn from the prior (ignored with ``x_T``, shape ``(B, *D)``).
        steps: uniform grid steps.
        generator: for the prior draw.
        cond, batch_size, device: as in :func:`scorekit.sample`.
    """
    from .core.parametrize import ScoreModel
    from .samplers import sample

    if not isinstance(model, ScoreModel):
        raise ValueError(f"model must be a scorekit ScoreModel, got {type(model).__name__}")
    steps = check_int("steps", steps, minimum=1)
    check_generator("generator", generator)
    n = None if x_T is not None else check_int("n", n, minimum=1)
    p = model.process
    grid = torch.linspace(p.t_max, p.t_min, steps + 1, dtype=torch.float64)
    out = sample(
        model, n, "heun", grid=grid, generator=generator, x_T=x_T, cond=cond,
        batch_size=batch_size, return_trajectory=True, device=device,
    )  # fmt: skip
    traj = out.trajectory
    d = traj[0].flatten(1).shape[1]
    delta = (traj[0] - traj[-1]) / (p.t_max - p.t_min)
    dev = []
    with torch.no_grad():
        for j in range(steps + 1):
            t = torch.full((traj.shape[1],), float(grid[j]), dtype=traj.dtype, device=traj.device)
            u = model.velocity(traj[j], t, **(cond or {}))
            dev.append((u - delta).flatten(1).pow(2).sum(1) / d)
    dev = torch.stack(dev).to(torch.float64)  # (steps + 1, B)
    tt = grid.to(dev.device)
    value = float(torch.trapezoid(dev.mean(1), -tt)) / (p.t_max - p.t_min)
    speed = float(delta.flatten(1).pow(2).sum(1).mean()) / d
    return Straightness(
        value, value / speed if speed > 0 else float("nan"), steps, out.nfe + steps + 1
    )

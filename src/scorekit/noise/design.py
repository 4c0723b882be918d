r"""Choosing the noise levels from the data: NCSNv2's techniques, and VP / EDM analogues.

Song & Ermon (2020) give closed rules for a geometric noise schedule
:math:`\sigma_1 > \dots > \sigma_L` (:math:`\sigma_{i-1}/\sigma_i = \gamma`):

* **Technique 1**: :math:`\sigma_1` = the largest pairwise Euclidean distance in the data,
  so that the top level connects every pair of points.
* **Technique 2**: :math:`\gamma` solves
  :math:`\Phi(\sqrt{2D}(\gamma-1) + 3\gamma) - \Phi(\sqrt{2D}(\gamma-1) - 3\gamma) = 0.5`
  (adjacent noise shells overlap), and :math:`L = 1 + \ln(\sigma_1/\sigma_L)/\ln\gamma`.
* **Technique 4**: with annealed-Langevin steps :math:`\alpha_i = \epsilon\,\sigma_i^2/\sigma_L^2`
  and :math:`T` steps per level, pick :math:`\epsilon` so that the variance ratio

  .. math:: r(\epsilon) = (1 - \tfrac{\epsilon}{\sigma_L^2})^{2T}
            \Big(\gamma^2 - \tfrac{2\epsilon}{\sigma_L^2 - \sigma_L^2(1-\epsilon/\sigma_L^2)^2}\Big)
            + \tfrac{2\epsilon}{\sigma_L^2 - \sigma_L^2(1-\epsilon/\sigma_L^2)^2}

  is as close to 1 as it gets.

:func:`scorekit.noise.advise.advise` applies them to a data set.

References:
    Song & Ermon, "Improved Techniques for Training Score-Based Generative Models",
    NeurIPS 2020 (NCSNv2), Section 4 and Appendix B. Song & Ermon (2019) (NCSN).
    Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models",
    NeurIPS 2022, Table 1.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .._validate import check_finite, check_generator, check_int, check_positive

__all__ = [
    "NCSN_GAMMA",
    "data_std",
    "geometric_ratio",
    "langevin_ratio",
    "langevin_step",
    "max_pairwise_distance",
    "num_levels",
    "shell_overlap",
]

#: NCSN (2019)'s ratio, 10 levels from 1 to 0.01: the cap on gamma (see :func:`advise`).
NCSN_GAMMA = 100.0 ** (1 / 9)
_REL_TOL = 1e-13  # bisection stops when the bracket is this narrow, relative to its ends


def _Phi(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def _as_data(data: Any) -> Tensor:
    """``data`` (tensor or numpy array, shape (N, *D)) checked and viewed as shape (N, D).

    The dtype is kept (no float64 copy of a large data set); callers convert blocks."""
    try:
        x = torch.as_tensor(data)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(
            f"data must be a tensor or numpy array of shape (N, *D), got {type(data).__name__}"
        ) from None
    if x.dim() == 0 or x.shape[0] < 2:
        raise ValueError(
            f"data must hold at least two points (shape (N, *D), N >= 2), got shape "
            f"{tuple(x.shape)}"
        )
    if x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"data must be real-valued, got dtype {x.dtype}")
    x = x.reshape(x.shape[0], -1)
    if x.shape[1] == 0:
        raise ValueError(f"data must have at least one feature per point, got shape {x.shape}")
    return check_finite("data", x)


def max_pairwise_distance(
    data: Any, max_points: int = 2048, generator: torch.Generator | None = None
) -> tuple[float, bool, int]:
    r"""NCSNv2 Technique 1: :math:`\max_{i \neq j} \|x_i - x_j\|_2` over the data.

    Exact when ``N <= max_points``. Otherwise the maximum over a random subset of
    ``max_points`` points (drawn with ``generator``; a generator seeded with 0 when ``None``),
    an estimate that can only be *lower* than the true maximum.

    Cost :math:`O(m^2 D)` for :math:`m = \min(N, \text{max_points})`, in row blocks; the winning
    pair's distance is recomputed directly from its difference, in float64.

    Arguments:
        data: tensor or numpy array of shape ``(N, *D)``, ``N >= 2``.
        max_points: largest number of points compared exhaustively.
        generator: source of the random subset.

    Returns:
        ``(distance, exact, points_used)``.

    References:
        Song & Ermon (2020), Technique 1.
    """
    x = _as_data(data)
    max_points = check_int("max_points", max_points, minimum=2)
    check_generator("generator", generator)
    n = x.shape[0]
    exact = n <= max_points
    if not exact:
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        idx = torch.randperm(n, generator=g, device=g.device).cpu()[:max_points]
        x = x[idx]
    x = x.to(torch.float64)
    x = x - x.mean(0)  # distances are shift-invariant; centring avoids cancellation below
    m = x.shape[0]
    sq = (x**2).sum(1)
    block = max(1, min(m, 2**22 // m))
    best, bi, bj = -1.0, 0, 1
    for start in range(0, m, block):
        rows = x[start : start + block]
        d2 = sq[start : start + block, None] + sq[None, :] - 2 * rows @ x.T
        val, flat = d2.reshape(-1).max(0)
        if float(val) > best:
            best = float(val)
            bi, bj = start + int(flat) // m, int(flat) % m
    dist = float(torch.linalg.vector_norm(x[bi] - x[bj]))
    if dist == 0.0:
        raise ValueError(
            "data: all points are identical (largest pairwise distance is 0); "
            "expected at least two distinct points"
        )
    return dist, exact, m


def shell_overlap(gamma: float, dim: int) -> float:
    r"""Left side of NCSNv2 Technique 2,
    :math:`\Phi(\sqrt{2D}(\gamma-1) + 3\gamma) - \Phi(\sqrt{2D}(\gamma-1) - 3\gamma)`:
    the probability that :math:`\|x\|`, :math:`x \sim \mathcal N(0, \sigma_i^2 I)`, falls in the
    3-standard-deviation shell of level :math:`i-1` (norm :math:`\approx \mathcal N(\sqrt D
    \sigma, \sigma^2/2)`).

    References:
        Song & Ermon (2020), Technique 2 and Appendix B.2.
    """
    gamma = check_positive("gamma", gamma)
    dim = check_int("dim", dim)
    a = math.sqrt(2 * dim) * (gamma - 1)
    return _Phi(a + 3 * gamma) - _Phi(a - 3 * gamma)


def _bisect(fn, lo: float, hi: float, max_iter: int = 400) -> float:
    """Root of ``fn`` in ``[lo, hi]`` given ``fn(lo) > 0 >= fn(hi)``; stops at ``_REL_TOL``."""
    for _ in range(max_iter):
        mid = 0.5 * (lo + hi)
        if fn(mid) > 0:
            lo = mid
        else:
            hi = mid
        if hi - lo <= _REL_TOL * abs(hi):
            break
    return 0.5 * (lo + hi)


def geometric_ratio(dim: int, overlap: float = 0.5) -> float:
    r"""NCSNv2 Technique 2: the :math:`\gamma > 1` with :func:`shell_overlap` ``= overlap``.

    Solved by bisection on :math:`[1, \gamma_{hi}]` (the upper end doubled until the overlap
    drops below the target) to a relative width of 1e-13; for ``dim = 3072`` (CIFAR-10) the
    root is :math:`\gamma \approx 1.0398`.

    The equation has no root for ``dim <= 4``: there the shells overlap by more than 0.99 for
    every :math:`\gamma` (the approximation behind it is a high-dimensional one), and this
    raises ``ValueError``.

    References:
        Song & Ermon (2020), Technique 2.
    """
    dim = check_int("dim", dim)
    overlap = check_positive("overlap", overlap)
    if not overlap < _Phi(3) - _Phi(-3):
        raise ValueError(f"overlap must be in (0, {_Phi(3) - _Phi(-3):.4f}), got {overlap}")
    hi = 2.0
    while shell_overlap(hi, dim) >= overlap:
        hi = 1 + 2 * (hi - 1)
        if hi > 1e8:
            raise ValueError(
                f"dim={dim}: Technique 2 has no root (the shells overlap by >= {overlap} for "
                "every gamma); it needs dim >= 5"
            )
    return _bisect(lambda g: shell_overlap(g, dim) - overlap, 1.0, hi)


def num_levels(sigma_max: float, sigma_min: float, gamma: float) -> int:
    r"""Levels of a geometric schedule with ratio at most ``gamma``:
    :math:`L = \lceil 1 + \ln(\sigma_1/\sigma_L)/\ln\gamma \rceil` (rounded up, so the
    schedule's actual ratio :math:`(\sigma_1/\sigma_L)^{1/(L-1)}` does not exceed ``gamma``).

    References:
        Song & Ermon (2020), Technique 2.
    """
    sigma_max = check_positive("sigma_max", sigma_max)
    sigma_min = check_positive("sigma_min", sigma_min)
    gamma = check_positive("gamma", gamma)
    if sigma_min >= sigma_max:
        raise ValueError(f"sigma_min must be < sigma_max, got {sigma_min} >= {sigma_max}")
    if gamma <= 1:
        raise ValueError(f"gamma must be > 1, got {gamma}")
    exact = 1 + math.log(sigma_max / sigma_min) / math.log(gamma)
    return max(2, math.ceil(exact - 1e-9))


def langevin_ratio(eps: float, gamma: float, sigma_min: float, T: int) -> float:
    r"""NCSNv2's Proposition 3: :math:`s_T^2/\sigma_i^2` after ``T`` annealed-Langevin steps of
    size :math:`\alpha_i = \epsilon\sigma_i^2/\sigma_L^2` on :math:`\mathcal N(0, \sigma_i^2 I)`,
    started at variance :math:`\gamma^2\sigma_i^2`. With :math:`u = \epsilon/\sigma_L^2`,

    .. math:: r = (1-u)^{2T}\big(\gamma^2 - c\big) + c, \qquad
              c = \frac{2\epsilon}{\sigma_L^2 - \sigma_L^2(1-u)^2} = \frac{2}{2-u} .

    References:
        Song & Ermon (2020), Proposition 3 and Technique 4.
    """
    eps = check_positive("eps", eps)
    gamma = check_positive("gamma", gamma)
    sigma_min = check_positive("sigma_min", sigma_min)
    T = check_int("T", T)
    s2 = sigma_min**2
    u = eps / s2
    if not u < 2:
        raise ValueError(f"eps must be < 2 sigma_min^2 = {2 * s2:g} (a stable chain), got {eps}")
    c = 2 * eps / (s2 - s2 * (1 - u) ** 2)
    return (1 - u) ** (2 * T) * (gamma**2 - c) + c


def langevin_step(gamma: float, sigma_min: float, T: int) -> float:
    r"""NCSNv2 Technique 4: the :math:`\epsilon` that brings :func:`langevin_ratio` closest to 1.

    For :math:`\gamma > 1` the ratio exceeds 1 at every :math:`\epsilon \in (0, 2\sigma_L^2)`
    (the discretised chain's stationary variance :math:`2/(2-u)\,\sigma_i^2` is biased up), so
    "closest to 1" is its minimum on (0, 1]: the root of
    :math:`dr/du = -2T(1-u)^{2T-1}(\gamma^2 - c) + (1 - (1-u)^{2T})\,2/(2-u)^2`, which is
    negative at :math:`u \to 0` and positive at :math:`u = 1`; found by bisection on
    :math:`\log u` to a relative width of 1e-13. For NCSNv2's CIFAR-10 schedule
    (:math:`\sigma_1 = 50`, :math:`\sigma_L = 0.01`, :math:`L = 232`, :math:`T = 5`) this gives
    :math:`\epsilon = 6.18 \times 10^{-6}`, the published :math:`6.2 \times 10^{-6}`.

    Returns:
        :math:`\epsilon`; the step at level :math:`i` is :math:`\epsilon\sigma_i^2/\sigma_L^2`.

    References:
        Song & Ermon (2020), Technique 4.
    """
    gamma = check_positive("gamma", gamma)
    sigma_min = check_positive("sigma_min", sigma_min)
    T = check_int("T", T, minimum=1)
    if gamma <= 1:
        raise ValueError(f"gamma must be > 1, got {gamma}")
    n = 2 * T

    def slope(log_u: float) -> float:  # -dr/du, positive left of the minimum
        u = math.exp(log_u)
        c = 2 / (2 - u)
        return n * (1 - u) ** (n - 1) * (gamma**2 - c) - (1 - (1 - u) ** n) * 2 / (2 - u) ** 2

    lo = math.log(1e-12)
    if slope(lo) <= 0:
        raise ValueError(f"gamma={gamma} is too close to 1 for Technique 4 (no interior minimum)")
    log_u = _bisect(slope, lo, 0.0)
    return math.exp(log_u) * sigma_min**2


def data_std(data: Any) -> float:
    r""":math:`\sigma_{data}`: the standard deviation of all :math:`N \cdot D` entries about
    their mean (EDM's ``sigma_data``, 0.5 for images in :math:`[-1, 1]`); two passes in row
    blocks, float64.

    References:
        Karras et al. (2022), Appendix B.6.
    """
    x = _as_data(data)
    step = max(1, 2**22 // max(1, x.shape[1]))
    total = sum(float(x[i : i + step].to(torch.float64).sum()) for i in range(0, len(x), step))
    mean = total / x.numel()
    ss = sum(
        float(((x[i : i + step].to(torch.float64) - mean) ** 2).sum())
        for i in range(0, len(x), step)
    )
    return math.sqrt(ss / x.numel())

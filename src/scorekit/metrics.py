r"""Sample-based distances between two point clouds.

References:
    Rabin et al., "Wasserstein Barycenter and its Application to Texture Mixing", 2011;
    Bonneel et al., "Sliced and Radon Wasserstein Barycenters of Measures", 2015.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._validate import check_int, check_tensor

__all__ = ["sliced_wasserstein"]


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
    gen_device = generator.device if generator is not None else xf.device
    theta = torch.randn(
        xf.shape[1], n_projections, generator=generator, dtype=xf.dtype, device=gen_device
    ).to(xf.device)
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

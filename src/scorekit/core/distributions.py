r"""Exact targets: Gaussians and Gaussian mixtures, at every noise level.

If :math:`x_0 \sim \sum_k w_k \mathcal{N}(\mu_k, \Sigma_k)` and
:math:`x_t = \alpha x_0 + \sigma\varepsilon`, then

.. math:: x_t \sim \sum_k w_k\, \mathcal{N}(\alpha\mu_k,\ \alpha^2\Sigma_k + \sigma^2 I),

so the exact noised score, log-density and posterior mean
:math:`E[x_0 \mid x_t]` are known in closed form. With
:math:`\Sigma_k = U_k \operatorname{diag}(\lambda_k) U_k^\top` computed once, the noised
covariance is :math:`U_k \operatorname{diag}(\alpha^2\lambda_k + \sigma^2) U_k^\top`, so a
batch with a different :math:`(\alpha, \sigma)` per sample costs :math:`O(BKd^2)`.

These targets let tests measure a loss's value, a sampler's error and a
likelihood exactly, apart from any learning error.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._validate import check_finite, check_int, check_positive, check_tensor
from .parametrize import ScoreModel
from .processes import Process
from .random import randn

__all__ = ["ExactScore", "Gaussian", "GaussianMixture"]


def _as64(name: str, value) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float64)
    check_finite(name, t)
    return t


class GaussianMixture:
    r"""Mixture :math:`p(x) = \sum_k w_k \mathcal{N}(x; \mu_k, \Sigma_k)` in :math:`\mathbb{R}^d`.

    Arguments:
        weights: shape ``(K,)``, non-negative, normalised here.
        means: shape ``(K, d)``.
        covs: shape ``(K, d, d)``, symmetric positive definite; or
        stds: a positive scalar, shape ``(K,)`` (isotropic) or ``(K, d)`` (diagonal).

    Parameters are held in float64; every method follows the dtype and device of its
    input ``x``.

    Example:
        >>> gm = GaussianMixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], stds=0.5)
        >>> x = gm.sample(1000, generator=torch.Generator().manual_seed(0))
        >>> gm.score(x).shape
        torch.Size([1000, 2])
    """

    def __init__(self, weights, means, covs=None, stds=None):
        w = _as64("weights", weights)
        mu = _as64("means", means)
        if mu.dim() != 2:
            raise ValueError(f"means must have shape (K, d), got {tuple(mu.shape)}")
        K, d = mu.shape
        if w.shape != (K,):
            raise ValueError(
                f"weights must have shape (K,) = ({K},) to match means, got {tuple(w.shape)}"
            )
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be non-negative with a positive sum, got {w.tolist()}")
        if (covs is None) == (stds is None):
            raise ValueError("give exactly one of covs or stds")
        if covs is not None:
            c = _as64("covs", covs)
            if c.shape != (K, d, d):
                raise ValueError(
                    f"covs must have shape (K, d, d) = ({K}, {d}, {d}), got {tuple(c.shape)}"
                )
            if not torch.allclose(c, c.transpose(-1, -2), rtol=1e-10, atol=1e-12):
                raise ValueError("covs must be symmetric")
            lam, U = torch.linalg.eigh(c)
            if (lam <= 0).any():
                raise ValueError(
                    f"covs must be positive definite, smallest eigenvalue {float(lam.min()):g}"
                )
        else:
            s = _as64("stds", stds)
            if s.dim() == 0:
                s = s.expand(K)
            if s.shape == (K,):
                s = s[:, None].expand(K, d)
            if s.shape != (K, d):
                raise ValueError(
                    f"stds must be a scalar, shape (K,) = ({K},) or (K, d) = "
                    f"({K}, {d}), got {tuple(s.shape)}"
                )
            if (s <= 0).any():
                raise ValueError(f"stds must be > 0, got minimum {float(s.min()):g}")
            lam = s**2
            U = torch.eye(d, dtype=torch.float64).expand(K, d, d)
        self.weights = w / w.sum()
        self.means = mu
        self._lam = lam.contiguous()
        self._U = U.contiguous()

    # -- description --------------------------------------------------------
    @property
    def dim(self) -> int:
        """Dimension ``d``."""
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        """Number of components ``K``."""
        return self.means.shape[0]

    @property
    def covs(self) -> Tensor:
        r"""Component covariances :math:`\Sigma_k`, shape ``(K, d, d)``."""
        return self._U @ torch.diag_embed(self._lam) @ self._U.transpose(-1, -2)

    def mean(self) -> Tensor:
        r""":math:`E[x] = \sum_k w_k \mu_k`, shape ``(d,)``."""
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        r""":math:`\mathrm{Cov}[x] = \sum_k w_k (\Sigma_k + \mu_k\mu_k^\top) - m m^\top`."""
        m = self.mean()
        second = (
            self.weights[:, None, None]
            * (self.covs + self.means[:, :, None] * self.means[:, None, :])
        ).sum(0)
        return second - torch.outer(m, m)

    def noised(self, alpha: float, sigma: float) -> GaussianMixture:
        r"""The exact law of :math:`\alpha x + \sigma\varepsilon`: same weights, means
        :math:`\alpha\mu_k`, covariances :math:`\alpha^2\Sigma_k + \sigma^2 I`."""
        a = float(alpha)
        s = check_positive("sigma", sigma, strict=False)
        out = object.__new__(GaussianMixture)
        out.weights = self.weights
        out.means = a * self.means
        out._lam = a**2 * self._lam + s**2
        out._U = self._U
        if (out._lam <= 0).any():
            raise ValueError("alpha = 0 and sigma = 0 give a degenerate distribution")
        return out

    # -- batched exact quantities ------------------------------------------
    def _flat(self, x: Tensor) -> Tensor:
        check_tensor("x", x, min_dim=1)
        flat = x.reshape(x.shape[0], -1) if x.dim() > 1 else x[:, None]
        if flat.shape[1] != self.dim:
            raise ValueError(
                f"x must have {self.dim} features per sample, got shape {tuple(x.shape)}"
            )
        return flat

    def _stats(self, x: Tensor, alpha, sigma, want: str):
        flat = self._flat(x)
        dt, dev = flat.dtype, flat.device
        a = torch.as_tensor(alpha, dtype=dt, device=dev).reshape(-1, 1, 1)
        s = torch.as_tensor(sigma, dtype=dt, device=dev).reshape(-1, 1, 1)
        lam0 = self._lam.to(dev, dt)
        U = self._U.to(dev, dt)
        mu = self.means.to(dev, dt)
        logw = torch.log(self.weights.to(dev, dt))
        d = self.dim
        lam = a**2 * lam0[None] + s**2  # (B or 1, K, d)
        diff = flat[:, None, :] - a * mu[None]  # (B, K, d)
        proj = torch.einsum("bkd,kde->bke", diff, U)
        maha = (proj**2 / lam).sum(-1)
        logc = logw - 0.5 * maha - 0.5 * torch.log(lam).sum(-1) - 0.5 * d * math.log(2 * math.pi)
        if want == "log_prob":
            return torch.logsumexp(logc, dim=1)
        r = torch.softmax(logc, dim=1)  # responsibilities (B, K)
        if want == "responsibilities":
            return r
        if want == "score":
            comp = -torch.einsum("kde,bke->bkd", U, proj / lam)
        else:  # posterior mean E[x0 | x_t]
            comp = mu[None] + torch.einsum("kde,bke->bkd", U, a * lam0[None] * proj / lam)
        return torch.einsum("bk,bkd->bd", r, comp).reshape(x.shape)

    def noised_log_prob(self, x: Tensor, alpha, sigma) -> Tensor:
        r"""Exact :math:`\log p_t(x)` of :math:`\alpha x_0 + \sigma\varepsilon`; ``alpha``,
        ``sigma`` scalar or ``(B,)``. Returns shape ``(B,)`` (logsumexp-stable)."""
        return self._stats(x, alpha, sigma, "log_prob")

    def noised_score(self, x: Tensor, alpha, sigma) -> Tensor:
        r"""Exact :math:`\nabla_x \log p_t(x) = \sum_k r_k(x)\,
        (-(\alpha^2\Sigma_k + \sigma^2 I)^{-1}(x - \alpha\mu_k))`, shape of ``x``."""
        return self._stats(x, alpha, sigma, "score")

    def posterior_mean(self, x: Tensor, alpha, sigma) -> Tensor:
        r"""Exact :math:`E[x_0 \mid x_t = x] = \sum_k r_k(x)\,(\mu_k + \alpha\Sigma_k
        (\alpha^2\Sigma_k + \sigma^2 I)^{-1}(x - \alpha\mu_k))`.

        Tweedie's formula says this equals :math:`(x + \sigma^2\nabla\log p_t(x))/\alpha`.
        """
        return self._stats(x, alpha, sigma, "posterior_mean")

    def responsibilities(self, x: Tensor, alpha=1.0, sigma=0.0) -> Tensor:
        r"""Posterior component probabilities :math:`p(k \mid x_t)`, shape ``(B, K)``."""
        return self._stats(x, alpha, sigma, "responsibilities")

    def log_prob(self, x: Tensor) -> Tensor:
        r""":math:`\log p(x) = \operatorname{logsumexp}_k [\log w_k + \log\mathcal{N}(x;
        \mu_k, \Sigma_k)]`, shape ``(B,)``."""
        return self._stats(x, 1.0, 0.0, "log_prob")

    def score(self, x: Tensor) -> Tensor:
        r""":math:`\nabla_x \log p(x)`, shape of ``x``."""
        return self._stats(x, 1.0, 0.0, "score")

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
        device=None,
    ) -> Tensor:
        r"""Draw ``n`` samples, shape ``(n, d)``: pick :math:`k \sim w`, then
        :math:`\mu_k + U_k \operatorname{diag}(\sqrt{\lambda_k}) z`."""
        n = check_int("n", n, minimum=1)
        gen_device = generator.device if generator is not None else "cpu"
        k = torch.multinomial(
            self.weights.to(gen_device), n, replacement=True, generator=generator
        ).cpu()
        z = randn((n, self.dim), generator, torch.float64, "cpu")
        x = self.means[k] + torch.einsum("nde,ne->nd", self._U[k], self._lam[k].sqrt() * z)
        return x.to(device=device, dtype=dtype)


class Gaussian(GaussianMixture):
    r"""A single Gaussian :math:`\mathcal{N}(\mu, \Sigma)`: a one-component mixture.

    Arguments:
        mean: shape ``(d,)``.
        cov: shape ``(d, d)``; or ``std``: scalar or ``(d,)``.
    """

    def __init__(self, mean, cov=None, std=None):
        mu = _as64("mean", mean)
        if mu.dim() != 1:
            raise ValueError(f"mean must have shape (d,), got {tuple(mu.shape)}")
        covs = None if cov is None else _as64("cov", cov)[None]
        stds = None if std is None else _as64("std", std)[None]
        super().__init__([1.0], mu[None], covs=covs, stds=stds)


class ExactScore(ScoreModel):
    r"""The exact score :math:`(x, t) \mapsto \nabla_x \log p_t(x)` of a target noised by a
    process: a model usable anywhere a trained one is, so that solver error is measured
    apart from learning error.

    Arguments:
        target: a :class:`GaussianMixture` (or :class:`Gaussian`).
        process: the noise process.

    Example:
        >>> from scorekit.core.processes import VE
        >>> m = ExactScore(Gaussian(torch.zeros(2), std=1.0), VE(0.01, 10.0))
        >>> x = torch.randn(5, 2, dtype=torch.float64)
        >>> torch.allclose(m(x, 0.0), -x / (1 + 0.01**2))
        True
    """

    def __init__(self, target: GaussianMixture, process: Process):
        if not isinstance(target, GaussianMixture):
            raise ValueError(f"target must be a GaussianMixture, got {type(target).__name__}")
        super().__init__(None, process, prediction="score", data_shape=(target.dim,))
        self.target = target

    def raw(self, x: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = self.process.marginal(t)
        return self.target.noised_score(x, alpha, sigma)

    def log_prob(self, x: Tensor, t: Tensor | float) -> Tensor:
        r"""Exact :math:`\log p_t(x)`, shape ``(B,)``."""
        alpha, sigma = self.process.marginal(self._time(x, t))
        return self.target.noised_log_prob(x, alpha, sigma)

    def posterior_mean(self, x: Tensor, t: Tensor | float) -> Tensor:
        r"""Exact :math:`E[x_0 \mid x_t = x]`."""
        alpha, sigma = self.process.marginal(self._time(x, t))
        return self.target.posterior_mean(x, alpha, sigma)

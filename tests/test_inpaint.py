"""Inpainting / imputation against Gaussians whose conditionals are closed form."""

import pytest
import torch

from scorekit import VE, VP, ExactScore, Gaussian, GaussianMixture
from scorekit.inpaint import PosteriorGuided, Replacement, inpaint
from scorekit.samplers import Heun

COV = torch.tensor([[1.0, 0.8, 0.3], [0.8, 1.0, 0.5], [0.3, 0.5, 1.0]], dtype=torch.float64)
MU = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)


def _conditional(mask, y):
    """Exact mean and covariance of x0 given x0[mask] = y[mask] (zero variance on the mask)."""
    k, u = mask, ~mask
    Skk, Suk = COV[k][:, k], COV[u][:, k]
    mean = y.clone()
    mean[u] = MU[u] + Suk @ torch.linalg.solve(Skk, y[k] - MU[k])
    cov = torch.zeros(3, 3, dtype=torch.float64)
    cov[torch.outer(u, u)] = (COV[u][:, u] - Suk @ torch.linalg.solve(Skk, Suk.T)).reshape(-1)
    return mean, cov


@pytest.mark.parametrize("process", [VP(), VE(0.01, 20.0)])
def test_tweedie_posterior_score_is_exact_for_a_gaussian(process):
    model = ExactScore(Gaussian(MU, cov=COV), process)
    g = torch.Generator().manual_seed(0)
    B = 12
    x = 1.5 * torch.randn(B, 3, generator=g, dtype=torch.float64)
    t = process.t_min + (process.t_max - process.t_min) * torch.rand(B, generator=g).double()
    known = torch.randn(B, 3, generator=g, dtype=torch.float64)
    mask = torch.rand(B, 3, generator=g) < 0.5
    mask[0] = torch.tensor([True, False, False])
    guided = PosteriorGuided(model)(x, t, known=known, mask=mask)
    a, s = process.marginal(t)
    for b in range(B):  # x_t | y ~ N(a m_y, a^2 C_y + s^2 I)
        m_y, c_y = _conditional(mask[b], known[b])
        prec = torch.linalg.inv(a[b] ** 2 * c_y + s[b] ** 2 * torch.eye(3, dtype=torch.float64))
        torch.testing.assert_close(guided[b], -prec @ (x[b] - a[b] * m_y))


def test_isotropic_posterior_score_is_exact_for_isotropic_data():
    process, v = VP(), 2.0
    mu = torch.tensor([1.0, -2.0], dtype=torch.float64)
    model = ExactScore(Gaussian(mu, std=v**0.5), process)
    x = torch.randn(5, 2, dtype=torch.float64)
    t = torch.linspace(0.05, 0.9, 5, dtype=torch.float64)
    known = torch.tensor([[0.3, 0.0]], dtype=torch.float64).expand(5, 2)
    mask = torch.tensor([True, False])
    guided = PosteriorGuided(model, covariance="isotropic", data_var=v)(
        x, t, known=known, mask=mask
    )
    a, s = process.marginal(t)
    torch.testing.assert_close(guided[:, 0], -(x[:, 0] - a * 0.3) / s**2)  # pinned
    torch.testing.assert_close(guided[:, 1], -(x[:, 1] - a * mu[1]) / (a**2 * v + s**2))


def _moments_ok(x, mask, y, n_se=4.0):
    m, c = _conditional(mask, y)
    u = ~mask
    n = x.shape[0]
    assert torch.equal(x[:, mask], y[mask].expand(n, int(mask.sum())))  # known kept exactly
    var = c.diagonal()[u]
    se_mean = (var / n).sqrt()
    assert ((x[:, u].mean(0) - m[u]).abs() < n_se * se_mean).all(), (x[:, u].mean(0), m[u])
    se_var = var * (2 / n) ** 0.5
    assert ((x[:, u].var(0) - var).abs() < n_se * se_var).all(), (x[:, u].var(0), var)


def test_posterior_imputation_follows_the_exact_conditional():
    model = ExactScore(Gaussian(MU, cov=COV), VP())
    y = torch.tensor([1.5, 0.0, 0.0], dtype=torch.float64)
    mask = torch.tensor([True, False, False])
    known = y.expand(3000, 3)
    g = torch.Generator().manual_seed(0)
    r = inpaint(model, known, mask, "posterior", "heun", 20, g, batch_size=1000)
    assert r.info["chunks"] == 3
    _moments_ok(r.x, mask, y)


def test_replacement_with_corrector_imputes_the_conditional():
    """Replacement is approximate; with Langevin correctors (VE, PC) it is within 4 s.e."""
    model = ExactScore(Gaussian(MU, cov=COV), VE(0.01, 20.0))
    y = torch.tensor([0.0, -0.5, 0.0], dtype=torch.float64)
    mask = torch.tensor([False, True, False])
    g = torch.Generator().manual_seed(1)
    r = inpaint(model, y.expand(3000, 3), mask, "replacement", "pc", 150, g, corrector_steps=3)
    _moments_ok(r.x, mask, y)


def test_replacement_keeps_mixture_modes_and_known_values():
    mix = GaussianMixture([0.5, 0.5], [[-2.0, -2.0], [2.0, 2.0]], stds=0.3)
    model = ExactScore(mix, VP())
    known = torch.tensor([[-2.0, 0.0], [2.0, 0.0]], dtype=torch.float64).repeat(100, 1)
    g = torch.Generator().manual_seed(2)
    r = inpaint(
        model, known, torch.tensor([True, False]), sampler="euler_maruyama", steps=200, generator=g
    )
    assert torch.equal(r.x[:, 0], known[:, 0])
    # the missing column lands in the component picked by the known one
    assert (r.x[:, 1].sign() == known[:, 0].sign()).float().mean() > 0.99


def test_bad_input():
    model = ExactScore(Gaussian(MU, cov=COV), VP())
    known = torch.zeros(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"mask must have the shape of known \(4, 3\)"):
        inpaint(model, known, torch.ones(4, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"known must have shape \(n, \*\(3,\)\)"):
        inpaint(model, torch.zeros(4, 2), torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="method"):
        inpaint(model, known, torch.ones(3, dtype=torch.bool), method="repaint")
    with pytest.raises(ValueError, match="mask must hold booleans"):
        inpaint(model, known, torch.full((3,), 0.5))
    with pytest.raises(ValueError, match="covariance"):
        PosteriorGuided(model, covariance="full")
    with pytest.raises(ValueError, match="x must have the shape of known"):
        Heun()(
            model,
            torch.zeros(4, 2, dtype=torch.float64),
            torch.tensor([0.5, 0.1]),
            hook=Replacement(known, torch.ones(3, dtype=torch.bool)),
        )
    with pytest.raises(ValueError, match="grid point to grid point"):
        inpaint(model, known, torch.ones(3, dtype=torch.bool), sampler="dopri5")

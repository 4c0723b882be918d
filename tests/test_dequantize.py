"""Variational dequantization against closed forms: it starts exactly uniform, its log q is
a normalised density on the cell, and fitted to an exact 1-D Gaussian it closes most of the
gap between the uniform bound and the exact log-probability of each level (known through
the normal CDF); through the ODE its bits/dim bound lies between the exact value and the
uniform bound."""

import math

import pytest
import torch

from scorekit import EDM, VP, ExactScore, Gaussian
from scorekit.dequantize import VariationalDequantizer, fit_dequantizer
from scorekit.likelihood import bits_per_dim

MU, S, H = 0.1, 0.3, 0.25  # levels -1, -0.75, ..., 1: 9 bins on [-1, 1]
LEVELS = torch.arange(-1, 1.0001, H, dtype=torch.float64)[:, None]


def _target():
    return Gaussian(torch.tensor([MU], dtype=torch.float64), std=S)


def _log_p_levels():
    n = torch.distributions.Normal(MU, S)
    return torch.log(n.cdf(LEVELS + H / 2) - n.cdf(LEVELS - H / 2))[:, 0]


def _gap(deq, n=20000):
    """log P(k) - E_q[log p(x + h v) + log h - log q] per level, with the exact density."""
    g = torch.Generator().manual_seed(5)
    if deq is None:
        v = torch.rand(n, *LEVELS.shape, generator=g, dtype=torch.float64) - 0.5
        log_q = torch.zeros(n, len(LEVELS), dtype=torch.float64)
    else:
        with torch.no_grad():
            v, log_q = deq.sample(LEVELS, n, g)
    lp = _target().log_prob((LEVELS[None] + H * v).reshape(-1, 1)).reshape(n, -1)
    return _log_p_levels() - (lp + math.log(H) - log_q).mean(0)


def _data(n=4000):
    x = _target().sample(n, torch.Generator().manual_seed(1))
    return (torch.round((x + 1) / H) * H - 1).clamp(-1, 1)


def test_starts_exactly_uniform():
    # the zero last layer gives m = s = 0: v = sigmoid(logit(w)) - 1/2 = w - 1/2 for the
    # same uniform draws w, and log q = 0 exactly
    deq = VariationalDequantizer((3,)).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    with torch.no_grad():
        v, log_q = deq.sample(x, 5000, torch.Generator().manual_seed(0))
    w = torch.rand(5000, 4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert v.shape == (5000, 4, 3) and log_q.shape == (5000, 4)
    assert float(log_q.abs().max()) == 0.0
    torch.testing.assert_close(v, w - 0.5, rtol=0, atol=1e-12)


def test_log_q_is_a_normalised_density_matching_the_draws():
    torch.manual_seed(0)
    deq = VariationalDequantizer((1,), hidden=8).double()
    for p in deq.parameters():
        torch.nn.init.normal_(p, std=0.7)
    x = torch.tensor([[-0.5], [0.25], [1.0]], dtype=torch.float64)
    with torch.no_grad():
        v, log_q = deq.sample(x, 7, torch.Generator().manual_seed(1))
        for k in range(7):  # the density of a draw is what sample() reported
            torch.testing.assert_close(deq.log_prob(v[k], x), log_q[k], rtol=0, atol=1e-10)
        grid = torch.linspace(-0.5, 0.5, 200001, dtype=torch.float64)[1:-1]
        for xi in x:
            dens = deq.log_prob(grid[:, None], xi.expand(len(grid), 1)).exp()
            assert float(torch.trapezoid(dens, grid)) == pytest.approx(1.0, abs=2e-4)


@pytest.mark.parametrize("process", [VP(), EDM(0.002, 80.0)], ids=["VP", "EDM"])
def test_fit_closes_most_of_the_gap_to_the_exact_level_probability(process):
    model = ExactScore(_target(), process)
    deq, trace = fit_dequantizer(model, _data(), bins=9, steps=500, batch_size=256,
                                 generator=torch.Generator().manual_seed(2))  # fmt: skip
    assert len(trace) == 50 and all(math.isfinite(t) for t in trace)
    w = _log_p_levels().exp()
    uniform, fitted = float((w * _gap(None)).sum()), float((w * _gap(deq)).sum())
    assert uniform == pytest.approx(0.0295, abs=5e-4)  # the uniform bound's gap, nats
    assert -2e-3 < fitted < 0.25 * uniform, (uniform, fitted)  # a bound: >= 0 up to MC error


def test_bits_per_dim_through_the_ode_with_a_fitted_dequantizer():
    model = ExactScore(_target(), VP())
    deq, _ = fit_dequantizer(model, _data(), bins=9, steps=500, batch_size=256,
                             generator=torch.Generator().manual_seed(2))  # fmt: skip
    # every level 1000 times, weighted by its exact probability: the gap of each bound to
    # the exact -log2 P(k) / D, with little Monte Carlo error from the offsets
    reps = 1000
    x = LEVELS.repeat_interleave(reps, 0)
    w = _log_p_levels().exp()
    prior = lambda z: model.log_prob(z, model.process.t_max)  # noqa: E731
    kw = dict(bins=9, prior=prior, rtol=1e-7, atol=1e-7, generator=torch.Generator().manual_seed(3))

    def gap(**extra):
        bpd = bits_per_dim(model, x, **kw, **extra).bpd.reshape(len(LEVELS), reps).mean(1)
        return float((w * (bpd + _log_p_levels() / math.log(2))).sum())

    # the uniform bound's expected gap, by quadrature, for the density the ODE gives: the
    # marginal at t_min, N(a mu, a^2 s^2 + sigma^2) (0.0427 bits); Monte Carlo error about
    # 0.003 bits
    a, sg = (float(v) for v in model.process.marginal(model.process.t_min))
    n = torch.distributions.Normal(a * MU, math.sqrt(a * a * S * S + sg * sg))
    log_p = torch.log(n.cdf(LEVELS + H / 2) - n.cdf(LEVELS - H / 2))[:, 0]
    v = torch.linspace(-0.5, 0.5, 100001, dtype=torch.float64)
    inner = torch.trapezoid(n.log_prob(LEVELS + H * v), v, dim=1) + math.log(H)
    expected = float((log_p.exp() * (log_p - inner)).sum()) / math.log(2)
    uniform, fitted = gap(), gap(dequantization=deq)
    assert uniform == pytest.approx(expected, abs=0.01)
    assert -0.01 < fitted < 0.25 * expected, (expected, uniform, fitted)
    # the importance-weighted bound with the learned q: 4 draws, no looser than 1
    assert -0.01 < gap(dequantization=deq, samples=4) < fitted + 0.005


def test_bad_input_is_refused_by_name():
    model = ExactScore(_target(), VP())
    with pytest.raises(ValueError, match="x must hold levels"):
        fit_dequantizer(model, torch.tensor([[0.1]], dtype=torch.float64), bins=9)
    with pytest.raises(ValueError, match="model must be a scorekit ScoreModel"):
        fit_dequantizer(lambda x, t: x, _data(), bins=9)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        fit_dequantizer(model, _data(), bins=9, steps=0)
    with pytest.raises(ValueError, match="dequantization is a dequantizer for examples of shape"):
        bits_per_dim(model, _data(4), bins=9, dequantization=VariationalDequantizer((2,)))
    with pytest.raises(ValueError, match=r"torch.float32 on cpu; x has shape \(1,\), torch.f"):
        bits_per_dim(model, _data(4), bins=9, dequantization=VariationalDequantizer((1,)))
    with pytest.raises(ValueError, match="dequant_std is for"):
        bits_per_dim(model, _data(4), bins=9, dequantization=VariationalDequantizer((1,)),
                     dequant_std=0.1)  # fmt: skip

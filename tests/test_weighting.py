"""Weightings, their score-space equivalences, and the noise-level samplers."""

import math

import pytest
import torch

from scorekit import EDM, VE, VP, CosineVP, SubVP, convert
from scorekit.core.weighting import (
    Constant,
    EDMWeighting,
    GridT,
    LikelihoodWeighting,
    LogNormalSigma,
    LogSNRImportance,
    MinSNRWeighting,
    SigmaSquared,
    UniformT,
    error_scale,
)

D64 = torch.float64
PROCESSES = [VE(0.01, 50.0), VP(), SubVP(), CosineVP(), EDM()]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_error_scale_matches_convert():
    g = _gen(1)
    x = torch.randn(5, 3, generator=g, dtype=D64)
    s_hat, s = torch.randn(5, 3, generator=g, dtype=D64), torch.randn(5, 3, generator=g, dtype=D64)
    alpha = torch.tensor([0.9, 0.5, 1.0, 0.2, 0.99], dtype=D64)
    sigma = torch.tensor([0.3, 0.8, 2.0, 0.9, 0.05], dtype=D64)
    base = ((s_hat - s) ** 2).sum(1)
    for target in ("score", "eps", "x0", "v"):
        a = convert(s_hat, "score", target, x, alpha, sigma)
        b = convert(s, "score", target, x, alpha, sigma)
        assert torch.allclose(((a - b) ** 2).sum(1), error_scale(target, alpha, sigma) * base)


def test_weightings_closed_forms():
    t = torch.tensor([0.1, 0.5, 0.9], dtype=D64)
    vp = VP()
    a, s = vp.marginal(t)
    assert torch.allclose(SigmaSquared()(vp, t), s**2)
    assert torch.allclose(LikelihoodWeighting()(vp, t), vp.beta(t))
    assert torch.allclose(Constant(2.0)(vp, t), torch.full_like(t, 2.0))
    # EDM weight in x0 space, for the EDM process: (sigma^2 + sd^2) / (sigma sd)^2
    edm, sig = EDM(), torch.tensor([0.01, 0.5, 10.0], dtype=D64)
    w_x0 = EDMWeighting(0.5)(edm, sig) / error_scale("x0", torch.ones_like(sig), sig)
    assert torch.allclose(w_x0, (sig**2 + 0.25) / (sig * 0.5) ** 2)
    # min-SNR: eps form min(snr, g)/snr, x0 form min(snr, g), VP v form min(snr, g)/(snr + 1)
    snr = (a / s) ** 2
    lam = MinSNRWeighting(5.0)(vp, t)
    assert torch.allclose(lam / error_scale("eps", a, s), snr.clamp(max=5) / snr)
    assert torch.allclose(lam / error_scale("x0", a, s), snr.clamp(max=5))
    assert torch.allclose(lam / error_scale("v", a, s), snr.clamp(max=5) / (snr + 1))
    assert float(snr.max()) > 5 > float(snr.min())  # both branches exercised


def _check_sampler(sampler, process, n=40_000):
    lo, hi = sampler.bounds(process)
    t = sampler.sample(process, n, generator=_gen(2), dtype=D64)
    assert t.shape == (n,) and t.dtype == D64
    assert float(t.min()) >= lo and float(t.max()) <= hi
    # pdf integrates to 1 and its CDF matches the samples (Kolmogorov-Smirnov, ~1e-3 level)
    grid = torch.linspace(lo, hi, 200_001, dtype=D64)
    pdf = sampler.pdf(process, grid)
    cdf = torch.cat([torch.zeros(1, dtype=D64), torch.cumulative_trapezoid(pdf, grid)])
    assert float(cdf[-1]) == pytest.approx(1.0, abs=2e-3)
    emp = torch.searchsorted(t.sort().values, grid).to(D64) / n
    assert float((emp - cdf).abs().max()) < 1.95 / math.sqrt(n)
    same = sampler.sample(process, n, generator=_gen(2), dtype=D64)
    assert torch.equal(t, same)


@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: type(p).__name__)
def test_uniform_and_importance_samplers(process):
    _check_sampler(UniformT(), process)
    _check_sampler(LogSNRImportance(), process)


def test_importance_density_is_g2_over_sigma2():
    vp = VP()
    sampler = LogSNRImportance()
    t = torch.tensor([0.01, 0.3, 0.8], dtype=D64)
    a, s = vp.marginal(t)
    z = float(vp.log_snr(torch.tensor(vp.t_min)) - vp.log_snr(torch.tensor(vp.t_max)))
    assert torch.allclose(sampler.pdf(vp, t), vp.beta(t) / s**2 / z)


@pytest.mark.parametrize("process", [EDM(), VP(), VE(0.01, 50.0)], ids=lambda p: type(p).__name__)
def test_lognormal_sigma_sampler(process):
    sampler = LogNormalSigma(-1.2, 1.2)
    if isinstance(process, VP):  # sigma/alpha = 0.1..7 on [t_min, t_max] for VP
        sampler = LogNormalSigma(0.0, 1.0)
    _check_sampler(sampler, process)


def test_lognormal_on_edm_is_log_normal_in_sigma():
    t = LogNormalSigma(-1.2, 1.2).sample(EDM(), 100_000, generator=_gen(3), dtype=D64)
    z = torch.log(t)
    assert float(z.mean()) == pytest.approx(-1.2, abs=4 * 1.2 / math.sqrt(1e5))
    assert float(z.std()) == pytest.approx(1.2, rel=0.01)


def test_grid_sampler_uniform_over_times():
    times = torch.tensor([0.1, 0.4, 0.9], dtype=D64)
    t = GridT(times).sample(VP(), 30_000, generator=_gen(4), dtype=torch.float32)
    assert t.dtype == torch.float32
    counts = torch.stack([(t == float(v)).sum() for v in times.float()])
    assert int(counts.sum()) == 30_000 and int(counts.min()) > 9_500
    with pytest.raises(ValueError, match="times"):
        GridT(torch.tensor([0.5, 2.0])).sample(VP(), 3)


def test_bad_arguments():
    for make, name in [
        (lambda: UniformT(0.5, 0.2).sample(VP(), 3), "low"),
        (lambda: UniformT(0.0, 2.0).sample(VP(), 3), "high"),
        (lambda: LogSNRImportance(low=0.0).sample(VP(), 3), "log-SNR"),
        (lambda: LogNormalSigma(p_std=0.0), "p_std"),
        (lambda: LogNormalSigma(p_mean=float("nan")), "p_mean"),
        (lambda: Constant(0.0), "value"),
        (lambda: MinSNRWeighting(gamma=-1.0), "gamma"),
        (lambda: EDMWeighting(sigma_data=0.0), "sigma_data"),
        (lambda: error_scale("noise", torch.ones(1), torch.ones(1)), "target"),
        (lambda: GridT(torch.ones(2, 2)), "times"),
    ]:
        with pytest.raises(ValueError, match=name):
            make()


def test_docstring_examples_run():
    import doctest

    import scorekit.core.weighting
    import scorekit.losses.objectives
    import scorekit.losses.registry
    import scorekit.losses.score_matching

    for mod in (
        scorekit.losses.score_matching,
        scorekit.losses.objectives,
        scorekit.losses.registry,
        scorekit.core.weighting,
    ):
        result = doctest.testmod(mod, extraglobs={"torch": torch})
        assert result.failed == 0, mod.__name__

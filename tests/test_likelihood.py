"""The ODE log-likelihood against exact log-densities (float64), and bits/dim against the
entropy of quantised Gaussians."""

import math
from statistics import NormalDist

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal, Normal

from scorekit import EDM, VE, VP, CosineVP, ExactScore, Gaussian, GaussianMixture, ScoreModel, SubVP
from scorekit.likelihood import FIXED_STEP, bits_per_dim, log_prob

F64 = torch.float64


def random_mixture(K, d, seed):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(K, d, d, generator=g, dtype=F64)
    covs = A @ A.transpose(-1, -2) / d + 0.1 * torch.eye(d, dtype=F64)
    means = 2 * torch.randn(K, d, generator=g, dtype=F64)
    w = torch.rand(K, generator=g, dtype=F64) + 0.1
    return GaussianMixture(w, means, covs=covs)


def exact_prior(model):
    """The exact marginal at t_max as the prior: removes the prior's error (DESIGN.md)."""
    return lambda z: model.log_prob(z, model.process.t_max)


@pytest.fixture
def mixture16d():
    return random_mixture(4, 16, seed=0)


# -- exact divergence against exact log p --------------------------------------------------
@pytest.mark.parametrize("process", [VP(), VE(0.01, 80.0)], ids=["VP", "VE"])
def test_exact_divergence_2d_mixture(mixture2d, process, gen):
    model = ExactScore(mixture2d, process)
    x = mixture2d.sample(32, generator=gen)
    r = log_prob(model, x, rtol=1e-8, atol=1e-8, prior=exact_prior(model))
    err = (r.log_prob - model.log_prob(x, process.t_min)).abs()
    assert err.mean() < 1e-3 and err.max() < 1e-3, err.max()
    assert r.stderr is None and r.nfe > 0


def test_exact_divergence_16d_mixture(mixture16d, gen):
    model = ExactScore(mixture16d, VP())
    x = mixture16d.sample(24, generator=gen)
    r = log_prob(model, x, rtol=1e-6, atol=1e-6, prior=exact_prior(model))
    err = (r.log_prob - model.log_prob(x, model.process.t_min)).abs()
    assert err.mean() < 1e-3 and err.max() < 1e-3, err.max()


def test_default_prior_error_is_the_prior_gap_not_a_solver_error(mixture2d, gen):
    # The trap: with sigma_max = 80 the N(0, 80^2) prior is off by ~|mean|/80 nats per
    # point, far above the solver's error; the exact marginal as prior removes it.
    model = ExactScore(mixture2d, VE(0.01, 80.0))
    x = mixture2d.sample(32, generator=gen)
    ref = model.log_prob(x, model.process.t_min)
    default = log_prob(model, x, rtol=1e-8, atol=1e-8).log_prob
    exact = log_prob(model, x, rtol=1e-8, atol=1e-8, prior=exact_prior(model)).log_prob
    assert (exact - ref).abs().mean() < 1e-6
    assert (default - ref).abs().mean() > 1e-3


# -- closed forms for one Gaussian ----------------------------------------------------------
PROCESSES = [VE(0.01, 80.0), VP(), SubVP(), CosineVP(), EDM()]


@pytest.mark.parametrize("process", PROCESSES, ids=[type(p).__name__ for p in PROCESSES])
def test_single_gaussian_closed_form(process, gen):
    A = torch.randn(3, 3, generator=gen, dtype=F64)
    cov = A @ A.T / 3 + 0.2 * torch.eye(3, dtype=F64)
    mu = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    target = Gaussian(mu, cov=cov)
    model = ExactScore(target, process)

    def closed_form(z, t):  # N(alpha mu, alpha^2 cov + sigma^2 I), by torch.distributions
        a, s = process.marginal(torch.tensor(t, dtype=F64))
        return MultivariateNormal(a * mu, a**2 * cov + s**2 * torch.eye(3, dtype=F64)).log_prob(z)

    x = target.sample(8, generator=gen)
    r = log_prob(model, x, rtol=1e-7, atol=1e-7, prior=lambda z: closed_form(z, process.t_max))
    torch.testing.assert_close(r.log_prob, closed_form(x, process.t_min), atol=2e-5, rtol=0)


def test_default_prior_standard_normal_under_vp(gen):
    # N(0, I) is stationary under VP: the PF-ODE drift vanishes, x(t_max) = x and the
    # divergence is 0, so the result is exactly the prior N(0, sigma(t_max)^2 I) at x.
    process = VP()
    model = ExactScore(Gaussian(torch.zeros(3), std=1.0), process)
    x = torch.randn(10, 3, generator=gen, dtype=F64)
    r = log_prob(model, x, method="rk4", steps=5)
    torch.testing.assert_close(r.log_prob, process.prior_log_prob(x), atol=1e-12, rtol=0)


# -- Hutchinson: unbiased, with an honest standard error ------------------------------------
@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_within_three_standard_errors(mixture16d, probe):
    model = ExactScore(mixture16d, VP())
    x = mixture16d.sample(48, generator=torch.Generator().manual_seed(1))
    ref = model.log_prob(x, model.process.t_min)
    r = log_prob(
        model,
        x,
        divergence="hutchinson",
        n_probes=16,
        probe=probe,
        rtol=1e-6,
        atol=1e-6,
        prior=exact_prior(model),
        generator=torch.Generator().manual_seed(2),
    )
    assert r.stderr.shape == (48,) and (r.stderr > 0).all()
    dev = r.log_prob - ref
    assert dev.mean().abs() < 3 * r.stderr.pow(2).sum().sqrt() / len(dev)
    # calibrated: the deviations' spread is what the standard errors say it is
    z2 = (dev / r.stderr).pow(2).mean()
    assert 0.4 < z2 < 2.5, z2


def test_rademacher_is_exact_for_a_diagonal_jacobian(gen):
    # A Gaussian with diagonal covariance has a diagonal drift Jacobian at every t, and for
    # e in {-1, 1}^D, e^T J e = tr J: every probe gives the exact divergence.
    target = Gaussian(torch.tensor([1.0, -1.0, 0.5, 0.0]), std=torch.tensor([0.3, 1.0, 2.0, 0.7]))
    model = ExactScore(target, VE(0.01, 80.0))
    x = target.sample(10, generator=gen)
    kw = dict(method="rk4", steps=10, prior=exact_prior(model))
    exact = log_prob(model, x, **kw)
    hutch = log_prob(model, x, divergence="hutchinson", generator=gen, **kw)
    torch.testing.assert_close(hutch.log_prob, exact.log_prob, atol=1e-12, rtol=0)
    assert hutch.stderr.abs().max() < 1e-12
    gauss = log_prob(model, x, divergence="hutchinson", probe="gaussian", generator=gen, **kw)
    assert (gauss.stderr > 1e-3).all()


def test_hutchinson_reproducible_and_chunk_independent(mixture2d, gen):
    model = ExactScore(mixture2d, VE(0.01, 80.0))
    x = mixture2d.sample(20, generator=gen)
    kw = dict(divergence="hutchinson", method="rk4", steps=10, n_probes=3)
    a = log_prob(model, x, generator=torch.Generator().manual_seed(5), **kw)
    b = log_prob(model, x, generator=torch.Generator().manual_seed(5), chunk_size=7, **kw)
    c = log_prob(model, x, generator=torch.Generator().manual_seed(6), **kw)
    torch.testing.assert_close(a.log_prob, b.log_prob, atol=1e-12, rtol=0)
    torch.testing.assert_close(a.stderr, b.stderr, atol=1e-12, rtol=0)
    assert not torch.allclose(a.log_prob, c.log_prob)
    assert a.nfe == 10 * 4 and b.nfe == 3 * 10 * 4


# -- fixed-step solvers: convergence order, NFE, chunking -----------------------------------
@pytest.mark.parametrize("method, order", [("heun", 2), ("rk4", 4)])
def test_fixed_step_convergence_order(mixture2d, method, order, gen):
    model = ExactScore(mixture2d, VP())
    x = mixture2d.sample(16, generator=gen)
    ref = model.log_prob(x, model.process.t_min)
    steps = [20, 40, 80]
    errs = []
    for n in steps:
        r = log_prob(model, x, method=method, steps=n, prior=exact_prior(model))
        assert r.nfe == n * FIXED_STEP[method][1]
        errs.append(float((r.log_prob - ref).abs().mean()))
    slope = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert abs(slope - order) < 0.4, (slope, errs)


def test_chunked_equals_unchunked(mixture2d, gen):
    model = ExactScore(mixture2d, VP())
    x = mixture2d.sample(20, generator=gen)
    a = log_prob(model, x, method="rk4", steps=10)
    b = log_prob(model, x, method="rk4", steps=10, chunk_size=6)
    torch.testing.assert_close(a.log_prob, b.log_prob, atol=1e-12, rtol=0)
    assert b.nfe == 4 * a.nfe


# -- any data shape, any prediction --------------------------------------------------------
def test_image_shaped_data(gen):
    gm = random_mixture(3, 8, seed=3)
    model = ExactScore(gm, VP())
    x = gm.sample(6, generator=gen)
    flat = log_prob(model, x, method="rk4", steps=30, prior=exact_prior(model)).log_prob
    img = log_prob(
        model, x.reshape(6, 2, 2, 2), method="rk4", steps=30, prior=exact_prior(model)
    ).log_prob
    torch.testing.assert_close(img, flat, atol=1e-12, rtol=0)
    assert (flat - model.log_prob(x, model.process.t_min)).abs().max() < 1e-3


def test_energy_model_matches_score_model(mixture2d, gen):
    # E(x, t) = -log p_t(x) exactly: its score is -grad E, the divergence needs a second
    # derivative through the autograd graph of the energy.
    exact = ExactScore(mixture2d, VE(0.01, 80.0))
    energy = ScoreModel(lambda x, t: -exact.log_prob(x, t), exact.process, prediction="energy")
    x = mixture2d.sample(8, generator=gen)
    a = log_prob(exact, x, method="rk4", steps=15, prior=exact_prior(exact))
    b = log_prob(energy, x, method="rk4", steps=15, prior=exact_prior(exact))
    torch.testing.assert_close(b.log_prob, a.log_prob, atol=1e-10, rtol=0)


def test_float32_and_inference_mode(mixture2d, gen):
    model = ExactScore(mixture2d, VP())
    x = mixture2d.sample(8, generator=gen)
    ref = log_prob(model, x, method="rk4", steps=20).log_prob
    with torch.inference_mode():
        r = log_prob(model, x.float(), method="rk4", steps=20)
    assert r.log_prob.dtype == torch.float32
    torch.testing.assert_close(r.log_prob.double(), ref, atol=1e-4, rtol=0)


# -- bad input ------------------------------------------------------------------------------
def test_bad_input_names_the_argument(mixture2d):
    model = ExactScore(mixture2d, VP())
    x = torch.zeros(4, 2, dtype=F64)
    bad = [
        (dict(x=torch.zeros(4, 3, dtype=F64)), "x"),
        (dict(x=torch.tensor([[0.0, float("nan")]], dtype=F64)), "x"),
        (dict(x=torch.zeros(4, dtype=F64)), "x"),
        (dict(t_min=-0.1), "t_min"),
        (dict(t_max=1.5), "t_max"),
        (dict(t_min=0.5, t_max=0.5, prior=exact_prior(model)), "t_min"),
        (dict(t_max=0.9), "t_max"),  # default prior only holds at process.t_max
        (dict(divergence="trace"), "divergence"),
        (dict(method="rk45"), "method"),
        (dict(probe="normal"), "probe"),
        (dict(steps=10), "steps"),  # dopri5 is adaptive
        (dict(method="rk4", rtol=1e-3), "rtol"),
        (dict(method="rk4", steps=0), "steps"),
        (dict(divergence="hutchinson", n_probes=1), "n_probes"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(prior=lambda z: z, method="rk4", steps=1), "prior"),
    ]
    for kwargs, name in bad:
        kw = {"x": x, **kwargs}
        with pytest.raises(ValueError, match=name):
            log_prob(model, **kw)
    with pytest.raises(ValueError, match="model"):
        log_prob(lambda x, t: x, x)


def test_network_shape_mismatch_is_a_value_error():
    model = ScoreModel(lambda x, t: nn.functional.linear(x, torch.eye(2, dtype=F64)), VP())
    with pytest.raises(ValueError, match=r"x of shape \(4, 3\)"):
        log_prob(model, torch.zeros(4, 3, dtype=F64))


# -- bits per dimension ---------------------------------------------------------------------
def quantised_gaussian(mu, std, lo, hi, bins):
    """Levels lo + k h and their probabilities under N(mu, std^2) binned into the cells
    [x - h/2, x + h/2) (the far tails, < 1e-6 here, folded into the end cells)."""
    h = (hi - lo) / (bins - 1)
    levels = lo + h * torch.arange(bins, dtype=F64)
    edges = torch.cat([levels - h / 2, levels[-1:] + h / 2])
    cdf = Normal(torch.tensor(mu, dtype=F64), torch.tensor(std, dtype=F64)).cdf(edges)
    cdf[0], cdf[-1] = 0.0, 1.0
    return levels, cdf.diff()


def test_bits_per_dim_of_quantised_gaussian_is_its_entropy():
    # Data: 256 levels on [-1, 1] with probabilities P_k of a quantised Gaussian. The model
    # density p = N(0, v) with v = std^2 + sigma(t_min)^2 (what ExactScore gives at t_min),
    # so E[bpd] = H(P) + KL(dequantized || p)/ln 2, and the KL is ~h^2/(24 v) ~ 1e-4 bits.
    process = VE(1e-3, 50.0)
    std = 0.2
    model = ExactScore(Gaussian(torch.zeros(1), std=std), process)
    v = std**2 + process.sigma(process.t_min).item() ** 2
    levels, P = quantised_gaussian(0.0, math.sqrt(v), -1.0, 1.0, 256)
    entropy_bits = float(-(P * torch.log2(P)).sum())
    reps = 8  # dequantization draws per level
    x = levels.repeat(reps)[:, None]
    r = bits_per_dim(
        model,
        x,
        bins=256,
        data_range=(-1, 1),
        generator=torch.Generator().manual_seed(0),
        rtol=1e-7,
        atol=1e-7,
        prior=exact_prior(model),
    )
    expected_bpd = float((P.repeat(reps) * r.bpd).sum() / reps)
    # 1e-3 bits is well under the 5.6e-3 bits of a 255-vs-256 bin-width slip
    assert abs(expected_bpd - entropy_bits) < 1e-3, (expected_bpd, entropy_bits)
    assert entropy_bits > 5  # ~ log2(std / h) + 2.05: the offset matters here


def test_bits_per_dim_sampled_images_within_stderr():
    # 4 independent quantised-Gaussian pixels on [0, 1], shape (B, 1, 2, 2): bpd = H(P).
    process = VE(1e-3, 50.0)
    mu, std, bins = 0.5, 0.1, 256
    model = ExactScore(Gaussian(torch.full((4,), mu), std=std), process)
    v = std**2 + process.sigma(process.t_min).item() ** 2
    levels, P = quantised_gaussian(mu, math.sqrt(v), 0.0, 1.0, bins)
    g = torch.Generator().manual_seed(1)
    k = torch.multinomial(P, 600 * 4, replacement=True, generator=g)
    x = levels[k].reshape(600, 1, 2, 2)
    r = bits_per_dim(model, x, bins=bins, data_range=(0, 1), generator=g, prior=exact_prior(model))
    entropy_bits = float(-(P * torch.log2(P)).sum())
    assert r.bpd.shape == (600,) and r.nfe > 0
    assert abs(r.mean - entropy_bits) < 3 * r.stderr + 1e-3, (r.mean, entropy_bits, r.stderr)


def test_bits_per_dim_invariant_to_data_range(gen):
    # The same discrete data on [0, 1] and on [-1, 1] (with the model scaled alike) has the
    # same bits/dim: the log-density shifts by D log 2 and the bin width doubles.
    process = VE(1e-5, 50.0)
    m01 = ExactScore(Gaussian(torch.tensor([0.4, 0.6]), std=0.15), process)
    m11 = ExactScore(Gaussian(torch.tensor([-0.2, 0.2]), std=0.3), process)
    k = torch.randint(0, 16, (12, 2), generator=gen).to(F64)
    kw = dict(bins=16, rtol=1e-8, atol=1e-8)
    a = bits_per_dim(
        m01,
        k / 15,
        data_range=(0, 1),
        generator=torch.Generator().manual_seed(3),
        prior=exact_prior(m01),
        **kw,
    )
    b = bits_per_dim(
        m11,
        2 * k / 15 - 1,
        data_range=(-1, 1),
        generator=torch.Generator().manual_seed(3),
        prior=exact_prior(m11),
        **kw,
    )
    torch.testing.assert_close(a.bpd, b.bpd, atol=1e-6, rtol=0)


def test_bits_per_dim_bad_input():
    model = ExactScore(Gaussian(torch.zeros(2), std=0.3), VP())
    x = torch.zeros(3, 2, dtype=F64)
    with pytest.raises(ValueError, match="x must hold levels"):
        bits_per_dim(model, torch.full((3, 2), 200.0, dtype=F64))  # 0..255, not scaled
    with pytest.raises(ValueError, match="x must hold levels"):
        bits_per_dim(model, torch.full((3, 2), 0.001, dtype=F64))  # between levels
    with pytest.raises(ValueError, match="bins"):
        bits_per_dim(model, x, bins=1)
    with pytest.raises(ValueError, match="data_range"):
        bits_per_dim(model, x, data_range=(1, -1))
    with pytest.raises(ValueError, match="dequantization"):
        bits_per_dim(model, x, dequantization="variational")
    with pytest.raises(ValueError, match="x"):
        bits_per_dim(model, torch.tensor([[0.0, float("nan")]], dtype=F64))


# -- intervals that cover, and the prior's share ------------------------------------------
def test_t_quantile_matches_closed_forms():
    from scorekit.likelihood import t_quantile

    for level in (0.5, 0.9, 0.95, 0.99):
        assert abs(t_quantile(level, 1) - math.tan(math.pi * level / 2)) < 1e-9
        two = level * math.sqrt(2 / (1 - level**2))  # P(|T| <= t) = t / sqrt(2 + t^2)
        assert abs(t_quantile(level, 2) - two) < 1e-9
    # the closed-form CDF and the Cornish-Fisher branch agree across their boundary
    assert abs(t_quantile(0.95, 2000) - t_quantile(0.95, 2001)) < 1e-6
    assert abs(t_quantile(0.95, 10**7) - 1.959963984540054) < 1e-6
    assert t_quantile(0.95, 3) > t_quantile(0.95, 30) > t_quantile(0.95, 3000)


@pytest.fixture(scope="module")
def coverage_run():
    g = torch.Generator().manual_seed(0)
    mix = GaussianMixture(torch.ones(4), 2 * torch.randn(4, 16, generator=g, dtype=F64), stds=0.6)
    p = VP()
    model = ExactScore(mix, p)
    x = mix.sample(1000, torch.Generator().manual_seed(1))
    truth = model.log_prob(x, p.t_min)
    runs = {
        n: log_prob(
            model, x, prior=exact_prior(model), divergence="hutchinson", n_probes=n,
            rtol=1e-6, atol=1e-6, generator=torch.Generator().manual_seed(2),
        )
        for n in (4, 16)
    }  # fmt: skip
    return truth, runs


@pytest.mark.parametrize("n", [4, 16])
def test_pooled_interval_covers_at_the_nominal_level_in_16d(coverage_run, n):
    truth, runs = coverage_run
    r = runs[n]
    lo, hi = r.interval(0.95)
    cover = float(((truth >= lo) & (truth <= hi)).double().mean())
    assert abs(cover - 0.95) < 0.03, cover
    # the per-sample normal interval is the one that does not cover (what was reported)
    z = 1.96 * r.stderr
    normal = float(((truth >= r.log_prob - z) & (truth <= r.log_prob + z)).double().mean())
    assert normal < 0.92, normal
    lo_t, hi_t = r.interval(0.95, method="t")
    assert ((hi_t - lo_t) > (2 * z) - 1e-12).all()  # the t quantile widens every interval
    assert r.per_probe.shape == (1000, n)
    m_lo, m_hi = r.mean_interval(0.95)
    assert m_lo < r.mean < m_hi and abs(m_hi - m_lo - 2 * 1.962 * r.mean_stderr) < 1e-2


def test_result_carries_the_prior_term_and_its_bound(mixture2d):
    process = VE(0.01, 20.0)
    model = ExactScore(mixture2d, process)
    x = mixture2d.sample(200, torch.Generator().manual_seed(0))
    default = log_prob(model, x, rtol=1e-7, atol=1e-7)
    exact = log_prob(model, x, prior=exact_prior(model), rtol=1e-7, atol=1e-7)
    # the integrated divergence is the same; only the prior term differs
    torch.testing.assert_close(
        default.log_prob - default.prior_log_prob,
        exact.log_prob - exact.prior_log_prob,
        atol=1e-5,
        rtol=0,
    )
    err = (default.log_prob - exact.log_prob).abs()
    assert default.prior_error_bound is not None and exact.prior_error_bound is None
    assert (err <= default.prior_error_bound + 1e-6).all()
    assert float(default.prior_error_bound.mean()) < 10 * float(err.mean()) + 0.05
    assert log_prob(ExactScore(mixture2d, VP()), x[:5]).prior_error_bound is None
    lo, hi = exact.interval()
    assert torch.equal(lo, exact.log_prob) and torch.equal(hi, exact.log_prob)


# -- dequantization for any bit depth, against closed forms --------------------------------
def _gauss_1d(s=0.3, mu=0.1):
    process = VE(1e-3, 20.0)  # p at t_min is N(mu, s^2 + 1e-6) exactly
    return ExactScore(Gaussian(torch.tensor([mu], dtype=F64), std=s), process), mu, s * s + 1e-6


@pytest.mark.parametrize("bins", [17, 32, 256])
@pytest.mark.parametrize("deq", ["uniform", "truncated_normal"])
def test_dequantized_bound_matches_its_closed_form(bins, deq):
    model, mu, v = _gauss_1d()
    h = 2.0 / (bins - 1)
    level = -1 + h * round((0.25 + 1) / h)  # one level near 0.25
    x = torch.full((4000, 1), level, dtype=F64)
    std = 0.3 * h
    kw = {"dequant_std": std} if deq == "truncated_normal" else {}
    r = bits_per_dim(model, x, bins=bins, dequantization=deq, rtol=1e-8, atol=1e-8,
                     prior=exact_prior(model), generator=torch.Generator().manual_seed(0),
                     **kw)  # fmt: skip
    if deq == "uniform":
        e_v2, entropy = 1 / 12, 0.0  # in bin units; U[-1/2, 1/2] has entropy 0
    else:
        nd = NormalDist()
        tau, c = std / h, h / (2 * std)
        z, phi = 2 * nd.cdf(c) - 1, nd.pdf(c)
        e_v2 = tau * tau * (1 - 2 * c * phi / z)
        entropy = math.log(math.sqrt(2 * math.pi * math.e) * tau * z) - c * phi / z
    # E[log p(x + h v)] + H(v) + log h, for p = N(mu, v)
    bound = -0.5 * math.log(2 * math.pi * v) - ((level - mu) ** 2 + h * h * e_v2) / (2 * v)
    bound += entropy + math.log(h)
    expected = -bound / math.log(2)
    assert abs(r.mean - expected) < 4 * r.stderr + 1e-6, (r.mean, expected, r.stderr)


def test_importance_weighted_bound_tightens_towards_the_cell_probability():
    model, mu, v = _gauss_1d(s=0.05)
    bins = 17
    h = 2.0 / (bins - 1)
    level = -1 + h * round((0.1 + 1) / h)
    nd = NormalDist(mu, math.sqrt(v))
    exact = -math.log2(nd.cdf(level + h / 2) - nd.cdf(level - h / 2))  # -log2 P(k), D = 1
    x = torch.full((500, 1), level, dtype=F64)
    means = {}
    for k in (1, 4, 32):
        r = bits_per_dim(model, x, bins=bins, samples=k, rtol=1e-8, atol=1e-8,
                         prior=exact_prior(model),
                         generator=torch.Generator().manual_seed(k))  # fmt: skip
        assert r.likelihood.log_prob.shape == (500 * k,)
        means[k] = r.mean
        assert r.mean > exact - 4 * r.stderr - 1e-9  # a bound, in expectation
    assert means[1] - exact > 0.05  # the one-sample bound is loose for this narrow density
    assert means[1] > means[4] > means[32]
    assert means[32] - exact < (means[1] - exact) / 4


def test_bits_per_dim_offset_follows_the_levels():
    # the same Gaussian on 5-bit, 8-bit and 16-bit grids: bpd differ by log2 of the bin ratio
    model, _, _ = _gauss_1d(s=0.5)
    x = torch.zeros(200, 1, dtype=F64)
    out = {}
    for bins in (33, 257, 65537):  # odd counts put a level at 0
        out[bins] = bits_per_dim(model, x, bins=bins, rtol=1e-8, atol=1e-8,
                                 generator=torch.Generator().manual_seed(0)).mean  # fmt: skip
    assert abs((out[257] - out[33]) - math.log2(8)) < 0.01
    assert abs((out[65537] - out[257]) - math.log2(256)) < 0.01


@pytest.mark.parametrize("process", [VE(0.01, 5.0), EDM(0.01, 5.0)], ids=["VE", "EDM"])
def test_sigma_max_integrates_past_the_process_and_shrinks_the_prior_error(mixture2d, process):
    # alpha = 1: the ODE continues past sigma(T) = 5 to sigma_max = 50; the default prior's
    # error (about |x(T)| |mean| / sigma^2, with |x(T)| ~ sigma) falls about 10-fold, and the
    # bound with it
    model = ExactScore(mixture2d, process)
    x = mixture2d.sample(200, torch.Generator().manual_seed(0))
    truth = model.log_prob(x, process.t_min)
    default = log_prob(model, x, rtol=1e-8, atol=1e-8)
    far = log_prob(model, x, sigma_max=50.0, rtol=1e-8, atol=1e-8)
    err0, err1 = (default.log_prob - truth).abs(), (far.log_prob - truth).abs()
    assert float(err0.mean()) > 0.05  # the default prior's error is visible at sigma 5
    assert float(err1.mean()) < float(err0.mean()) / 8
    assert (err1 <= far.prior_error_bound + 1e-6).all()
    assert float(far.prior_error_bound.mean()) < float(default.prior_error_bound.mean()) / 8
    # the prior term is N(0, 50^2 I) at the end of the longer path
    assert far.nfe > default.nfe


def test_sigma_max_is_refused_where_it_does_not_apply(mixture2d):
    x = mixture2d.sample(4, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="signal scaling"):
        log_prob(ExactScore(mixture2d, VP()), x, sigma_max=100.0)
    ve = ExactScore(mixture2d, VE(0.01, 5.0))
    with pytest.raises(ValueError, match=r"sigma_max must exceed the process's largest sigma 5"):
        log_prob(ve, x, sigma_max=3.0)
    with pytest.raises(ValueError, match="t_max or sigma_max"):
        log_prob(ve, x, sigma_max=50.0, t_max=1.0)


def test_mixture_log_prob_is_the_log_of_the_mean_density_of_its_members():
    """Two exact models (a standard Gaussian and a narrow one, std 0.3) on one VE process:
    the mixture's log-density is log((p_a + p_b)/2) at t_min, in closed form, within the
    members' prior error bound, and within 1e-4 nats; a missing -log K would be
    0.69 nats off."""
    from scorekit.likelihood import mixture_log_prob

    process = VE(0.01, 200.0)
    a = ExactScore(Gaussian(torch.zeros(2, dtype=torch.float64), std=1.0), process)
    b = ExactScore(Gaussian(torch.zeros(2, dtype=torch.float64), std=0.3), process)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[::2] *= 0.3
    r = mixture_log_prob([a, b], x, rtol=1e-8, atol=1e-8)
    t0 = process.t_min
    want = torch.logaddexp(a.log_prob(x, t0), b.log_prob(x, t0)) - math.log(2)
    err = (r.log_prob - want).abs()
    assert torch.all(err <= r.prior_error_bound + 1e-6)
    assert float(err.max()) < 1e-4, float(err.max())
    one = [log_prob(m, x, rtol=1e-8, atol=1e-8) for m in (a, b)]
    assert r.nfe == one[0].nfe + one[1].nfe
    torch.testing.assert_close(
        r.log_prob, torch.logaddexp(one[0].log_prob, one[1].log_prob) - math.log(2)
    )
    # Jensen: never below the members' mean log-density
    assert torch.all(r.log_prob >= (one[0].log_prob + one[1].log_prob) / 2 - 1e-12)


def test_mixture_log_prob_refuses_hutchinson_and_an_empty_list():
    from scorekit.likelihood import mixture_log_prob

    a = ExactScore(Gaussian(torch.zeros(2), std=1.0), VE(0.01, 10.0))
    with pytest.raises(ValueError, match="divergence='exact'"):
        mixture_log_prob([a, a], torch.randn(4, 2), divergence="hutchinson")
    with pytest.raises(ValueError, match="non-empty list"):
        mixture_log_prob([], torch.randn(4, 2))

"""ESM, ISM, SSM, SSM-VR, DSM and NCSN losses against closed forms and exact mixture scores."""

import math

import numpy as np
import pytest
import torch

from scorekit import VE, GaussianMixture, ScoreModel
from scorekit.losses import dsm, esm, ism, ncsn_loss, ssm, ssm_vr

D64 = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _mlp(d, width=32, seed=0, act=torch.nn.Tanh):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(d, width), act(), torch.nn.Linear(width, width), act(),
        torch.nn.Linear(width, d),
    ).double()  # fmt: skip


@pytest.fixture
def mix():
    return GaussianMixture(
        [0.3, 0.7],
        [[-2.0, 0.0], [1.5, 1.0]],
        covs=[[[0.5, 0.2], [0.2, 0.3]], [[0.4, -0.1], [-0.1, 0.6]]],
    )


def _assert_mean_zero(values, k=4.0):
    """|mean| within k standard errors; the standard error is returned for power checks."""
    se = float(values.std() / math.sqrt(values.numel()))
    assert abs(float(values.mean())) < k * se, (float(values.mean()), se)
    return se


# -- the seeds' worked exercises ------------------------------------------------------------
@pytest.mark.parametrize("a", [0.0, 0.5, 1.0, 1.5])
def test_esm_seed_table_closed_form(a):
    # E over N(0,1) by Gauss-Hermite quadrature: exact for this quadratic integrand.
    nodes, weights = np.polynomial.hermite_e.hermegauss(8)
    x = torch.tensor(nodes, dtype=D64)[:, None]
    w = torch.tensor(weights / math.sqrt(2 * math.pi), dtype=D64)
    vals = esm(lambda x: -a * x, x, -x)
    assert vals.shape == (8,)
    assert float((w * vals).sum()) == pytest.approx((1 - a) ** 2 / 2, abs=1e-13)
    assert float((w * esm(lambda x: -a * x, x, -x, half=False)).sum()) == pytest.approx(
        (1 - a) ** 2, abs=1e-13
    )


@pytest.mark.parametrize("a", [0.0, 0.5, 1.0, 1.5])
def test_esm_seed_table_monte_carlo(a):
    x = torch.randn(100_000, 1, generator=_gen(1), dtype=D64)
    vals = esm(lambda x: -a * x, x, lambda x: -x)
    exact = (1 - a) ** 2 / 2
    if a == 1.0:
        assert float(vals.abs().max()) == 0.0
        return
    se = float(vals.std()) / math.sqrt(len(vals))
    assert abs(float(vals.mean()) - exact) < 4 * se
    assert se < 0.01 * exact  # the check has power
    assert float(esm(lambda x: -a * x, x, -x, reduction="mean")) == float(vals.mean())


def test_dsm_seed_four_cases():
    x = torch.tensor([[0.0], [2.0], [-1.0], [3.0]], dtype=D64)
    eps = torch.tensor([[1.0], [0.5], [-0.5], [0.0]], dtype=D64)
    out = torch.tensor([[-1.0], [-0.4], [0.5], [0.0]], dtype=D64)
    seen = []

    def model(xt):
        seen.append(xt.clone())
        return out

    vals = dsm(model, x, 1.0, eps=eps)
    assert torch.allclose(seen[0], torch.tensor([[1.0], [2.5], [-1.5], [3.0]], dtype=D64))
    assert torch.allclose(vals, torch.tensor([0.0, 0.005, 0.0, 0.0], dtype=D64), atol=1e-15)
    no_half = dsm(model, x, 1.0, eps=eps, half=False)
    assert torch.allclose(no_half, torch.tensor([0.0, 0.01, 0.0, 0.0], dtype=D64), atol=1e-15)
    assert float(dsm(model, x, 1.0, eps=eps, reduction="sum")) == pytest.approx(0.005)


def test_dsm_weightings_match_the_seed_forms():
    # (1/sigma^2) ||sigma s + eps||^2 = ||s + eps/sigma||^2 ; lambda = sigma^2: ||sigma s + eps||^2
    g = _gen(2)
    x, eps = torch.randn(6, 3, generator=g, dtype=D64), torch.randn(6, 3, generator=g, dtype=D64)
    sig = torch.tensor([0.3, 0.5, 1.0, 2.0, 4.0, 0.1], dtype=D64)
    net = _mlp(3)

    def f(xt):
        return net(xt)

    s = f(x + sig[:, None] * eps)
    seed_form = ((sig[:, None] * s + eps) ** 2).sum(1) / sig**2
    assert torch.allclose(dsm(f, x, sig, eps=eps, half=False), seed_form, rtol=1e-12)
    ncsn_form = ((sig[:, None] * s + eps) ** 2).sum(1)
    got = dsm(f, x, sig, eps=eps, weighting=lambda s: s**2, half=False)
    assert torch.allclose(got, ncsn_form, rtol=1e-12)


# -- identities with an exact mixture score -----------------------------------------------
def test_hyvarinen_identity_esm_minus_ism_is_constant(mix):
    x = mix.sample(20_000, generator=_gen(3))
    true = mix.score(x)
    half_norm = 0.5 * (true**2).sum(1)  # E of this is the constant
    net = _mlp(2, seed=1)
    A = torch.tensor([[-1.0, 0.3], [0.2, -2.0]], dtype=D64)
    fns = {
        "exact": mix.score,
        "half_exact": lambda x: 0.5 * mix.score(x),
        "linear": lambda x: x @ A.T + torch.tensor([0.5, -1.0], dtype=D64),
        "mlp": net,
    }
    for name, fn in fns.items():
        with torch.no_grad():
            diff = esm(fn, x, true) - ism(fn, x)
        se = _assert_mean_zero(diff - half_norm)  # ESM - ISM = 1/2 E||grad log p||^2
        assert se < 0.05, name
    # power: without the trace term the "identity" fails by many standard errors
    with torch.no_grad():
        wrong = esm(fns["linear"], x, true) - 0.5 * (fns["linear"](x) ** 2).sum(1) - half_norm
    assert abs(float(wrong.mean())) > 20 * float(wrong.std()) / math.sqrt(len(wrong))


@pytest.mark.parametrize("probe", ["gaussian", "rademacher"])
def test_ssm_expectation_equals_ism(mix, probe):
    x = mix.sample(20_000, generator=_gen(4))
    net = _mlp(2, seed=2)
    with torch.no_grad():
        ref = ism(net, x)
        for vals in (
            ssm(net, x, probe=probe, generator=_gen(5)),
            ssm(net, x, n_projections=3, probe=probe, generator=_gen(6)),
            ssm_vr(net, x, probe=probe, generator=_gen(7)),
            ism(net, x, trace="hutchinson", n_probes=2, probe=probe, generator=_gen(8)),
        ):
            assert vals.shape == (20_000,)
            _assert_mean_zero(vals - ref)
    # SSM-VR is Hutchinson ISM: same probes give the same numbers
    with torch.no_grad():
        a = ssm_vr(net, x[:50], n_projections=2, probe=probe, generator=_gen(9))
        b = ism(net, x[:50], trace="hutchinson", n_probes=2, probe=probe, generator=_gen(9))
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_dsm_at_exact_noised_score_reaches_irreducible_minimum():
    # x ~ N(mu, tau^2 I_d): min_s E 1/2||s(x~) + eps/sigma||^2
    #   = d tau^2 / (2 sigma^2 (tau^2 + sigma^2))
    d, tau, sigma = 3, 0.8, 0.6
    gauss = GaussianMixture([1.0], [[1.0, -2.0, 0.5]], stds=tau)
    x = gauss.sample(50_000, generator=_gen(10))
    vals = dsm(lambda xt: gauss.noised_score(xt, 1.0, sigma), x, sigma, generator=_gen(11))
    exact = d * tau**2 / (2 * sigma**2 * (tau**2 + sigma**2))
    se = float(vals.std()) / math.sqrt(len(vals))
    assert abs(float(vals.mean()) - exact) < 4 * se and se < 0.01 * exact
    # any other score pays more, by exactly its ESM on the noised law (Vincent 2011)
    other = dsm(lambda xt: 0.9 * gauss.noised_score(xt, 1.0, sigma), x, sigma, generator=_gen(11))
    xt = x + sigma * torch.randn(x.shape, generator=_gen(11), dtype=D64)
    esm_noised = 0.5 * (0.1 * gauss.noised_score(xt, 1.0, sigma)).pow(2).sum(1)
    _assert_mean_zero(other - vals - esm_noised)


def test_ncsn_loss_at_exact_scores_and_level_draws():
    d, tau = 2, 0.5
    gauss = GaussianMixture([1.0], [[0.0, 1.0]], stds=tau)
    sigmas = torch.tensor([2.0, 1.0, 0.5, 0.25], dtype=D64)
    x = gauss.sample(40_000, generator=_gen(12))
    seen = []

    def score(xt, s):
        seen.append(s)
        return gauss.noised_score(xt, 1.0, s)

    vals = ncsn_loss(score, x, sigmas, generator=_gen(13))
    # lambda = sigma^2: each level's minimum is d tau^2 / (2 (tau^2 + sigma^2))
    exact = float((d * tau**2 / (2 * (tau**2 + sigmas**2))).mean())
    se = float(vals.std()) / math.sqrt(len(vals))
    assert abs(float(vals.mean()) - exact) < 4 * se and se < 0.01 * exact
    counts = torch.stack([(seen[0] == s).sum() for s in sigmas])
    assert int(counts.sum()) == 40_000 and int(counts.min()) > 9_000
    again = ncsn_loss(lambda xt, s: gauss.noised_score(xt, 1.0, s), x, sigmas, generator=_gen(13))
    assert torch.equal(vals, again)


# -- exact trace: values and gradients against per-dimension autograd loops ----------------
def _brute_ism(fn, x):
    x = x.detach().requires_grad_(True)
    s = fn(x)
    flat = s.reshape(len(x), -1)
    tr = sum(
        torch.autograd.grad(flat[:, i].sum(), x, create_graph=True)[0].reshape(len(x), -1)[:, i]
        for i in range(flat.shape[1])
    )
    return 0.5 * (flat**2).sum(1) + tr


@pytest.mark.parametrize("chunk_size", [None, 1, 2, 7])
def test_exact_trace_ism_value_and_gradient_match_brute_force(chunk_size):
    torch.manual_seed(0)
    net = _mlp(6, width=16, seed=3)
    shape = (5, 1, 2, 3)  # image-shaped data is flattened for the trace

    def fn(x):
        return net(x.reshape(len(x), -1)).reshape(x.shape)

    x = torch.randn(shape, generator=_gen(14), dtype=D64)
    got = ism(fn, x, chunk_size=chunk_size)
    ref = _brute_ism(fn, x)
    assert torch.allclose(got, ref, rtol=1e-12, atol=1e-12)
    g_got = torch.autograd.grad(got.sum(), list(net.parameters()))
    g_ref = torch.autograd.grad(ref.sum(), list(net.parameters()))
    for a, b in zip(g_got, g_ref, strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    assert torch.allclose(ism(fn, x, half=False), 2 * ref.detach(), rtol=1e-12)


def test_no_grad_mode_gives_detached_equal_values():
    net = _mlp(3, seed=4)
    x = torch.randn(7, 3, generator=_gen(15), dtype=D64)
    with torch.no_grad():
        a = ism(net, x)
        b = ssm(net, x, generator=_gen(1))
    assert not a.requires_grad and not b.requires_grad
    assert torch.allclose(a, ism(net, x).detach(), rtol=1e-13)
    assert torch.allclose(b, ssm(net, x, generator=_gen(1)).detach(), rtol=1e-13)


def test_energy_model_ism_closed_form_and_trains_the_energy():
    # E(x) = 1/2 x^T A x  =>  s = -A x, ISM = 1/2 ||A x||^2 - tr A
    A = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=D64, requires_grad=True)

    def energy(x, t):
        return 0.5 * torch.einsum("bi,ij,bj->b", x, A, x)

    model = ScoreModel(energy, VE(), prediction="energy")
    x = torch.randn(9, 2, generator=_gen(16), dtype=D64)
    vals = ism(lambda x: model(x, 0.5), x)
    Ax = x @ A.detach().T
    assert torch.allclose(vals, 0.5 * (Ax**2).sum(1) - 3.0, rtol=1e-12)
    (g,) = torch.autograd.grad(vals.sum(), A)
    # d/dA [1/2 sum_b ||A x_b||^2 - B tr A] for symmetric-parametrised A (A used as given)
    ref = A.detach() @ (x.T @ x) - 9 * torch.eye(2, dtype=D64)
    assert torch.allclose(g, 0.5 * (ref + ref.T), rtol=1e-10)
    s_vals = ssm(lambda x: model(x, 0.5), x, n_projections=2, generator=_gen(3))
    assert s_vals.requires_grad


def test_scores_that_ignore_x_have_zero_trace():
    x = torch.randn(5, 3, generator=_gen(17), dtype=D64)
    w = torch.tensor([1.0, -2.0, 0.5], dtype=D64, requires_grad=True)

    def const(x):
        return w.expand(len(x), 3)

    for fn in (lambda x: torch.ones_like(x), const):
        for vals in (ism(fn, x), ism(fn, x, trace="hutchinson", n_probes=3), ssm_vr(fn, x)):
            assert torch.allclose(vals, 0.5 * (fn(x) ** 2).sum(1))
    (g,) = torch.autograd.grad(ism(const, x).sum(), w)
    assert torch.allclose(g, 5 * w.detach())


# -- bad input ----------------------------------------------------------------------------
def test_bad_input_names_the_argument():
    x = torch.randn(4, 2, dtype=D64)

    def f(x):
        return -x

    cases = [
        (lambda: ism(f, x, trace="foo"), "trace"),
        (lambda: ism(f, x, trace="hutchinson", n_probes=0), "n_probes"),
        (lambda: ism(f, x, probe="uniform"), "probe"),
        (lambda: ism(f, x, chunk_size=0), "chunk_size"),
        (lambda: ssm(f, x, n_projections=0), "n_projections"),
        (lambda: ssm_vr(f, x, n_projections=-1), "n_projections"),
        (lambda: dsm(f, x, 0.0), "sigma"),
        (lambda: dsm(f, x, -1.0), "sigma"),
        (lambda: dsm(f, x, torch.tensor([1.0, 0.0, 1.0, 1.0])), "sigma"),
        (lambda: dsm(f, x, torch.ones(3)), "sigma"),
        (lambda: dsm(f, x, 1.0, eps=torch.zeros(4, 3)), "eps"),
        (lambda: esm(f, x, torch.zeros(4, 3)), "true_score"),
        (lambda: esm(lambda x: x[:, :1], x, x), "score_fn"),
        (lambda: esm(f, x, x, reduction="avg"), "reduction"),
        (lambda: esm(f, torch.zeros(4), torch.zeros(4)), "x"),
        (lambda: ncsn_loss(lambda x, s: x, x, torch.tensor([1.0, 0.0])), "sigmas"),
        (lambda: ncsn_loss(lambda x, s: x, x, torch.ones(2, 2)), "sigmas"),
    ]
    for fn, name in cases:
        with pytest.raises(ValueError, match=name):
            fn()

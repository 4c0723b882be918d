import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scorekit import VE, VP, EDMPrecond, ExactScore, ScoreModel, convert, edm_coefficients
from scorekit.core.parametrize import PREDICTIONS

floats = st.floats(0.05, 5.0)


@settings(max_examples=60, deadline=None)
@given(
    alpha=floats,
    sigma=floats,
    seed=st.integers(0, 2**16),
    source=st.sampled_from(PREDICTIONS),
    target=st.sampled_from(PREDICTIONS),
)
def test_conversions_round_trip_and_agree(alpha, sigma, seed, source, target):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(3, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(3, 4, generator=g, dtype=torch.float64)
    x = alpha * x0 + sigma * eps
    truth = {"eps": eps, "x0": x0, "score": -eps / sigma, "v": alpha * eps - sigma * x0}
    out = convert(truth[source], source, target, x, alpha, sigma)
    torch.testing.assert_close(out, truth[target], rtol=1e-9, atol=1e-9)
    back = convert(out, target, source, x, alpha, sigma)
    torch.testing.assert_close(back, truth[source], rtol=1e-9, atol=1e-9)


def test_per_sample_coefficients(gen):
    a = torch.tensor([0.5, 1.0], dtype=torch.float64)
    s = torch.tensor([0.2, 3.0], dtype=torch.float64)
    eps = torch.randn(2, 3, 2, generator=gen, dtype=torch.float64)
    x = torch.randn(2, 3, 2, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(convert(eps, "eps", "score", x, a, s), -eps / s[:, None, None])


def test_eps_and_score_wrappers_agree(mixture2d, gen):
    p = VP()
    exact = ExactScore(mixture2d, p)
    as_eps = ScoreModel(lambda x, t: exact.eps(x, t), p, prediction="eps")
    as_v = ScoreModel(lambda x, t: exact.v(x, t), p, prediction="v")
    x = torch.randn(8, 2, generator=gen, dtype=torch.float64)
    t = torch.rand(8, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    torch.testing.assert_close(as_eps(x, t), exact(x, t))
    torch.testing.assert_close(as_v.x0(x, t), exact.x0(x, t))


def test_energy_model_score_is_minus_gradient(gen):
    # E(x) = |x|^2 / (2 s^2) has score -x / s^2; under no_grad too (sampling)
    s2 = 2.5
    m = ScoreModel(lambda x, t: (x**2).sum(1) / (2 * s2), VE(), prediction="energy")
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(m(x, 0.5), -x / s2)
    with torch.no_grad():
        torch.testing.assert_close(m(x, 0.5), -x / s2)
    # with gradients enabled the graph is kept, so a loss on the score trains the energy
    w = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    m2 = ScoreModel(lambda x, t: w * (x**2).sum(1), VE(), prediction="energy")
    m2(x, 0.5).sum().backward()
    torch.testing.assert_close(w.grad, -2 * x.sum())


def test_edm_coefficients_closed_form():
    c_skip, c_out, c_in, c_noise = edm_coefficients(torch.tensor([0.5]), sigma_data=0.5)
    torch.testing.assert_close(c_skip, torch.tensor([0.5]))
    torch.testing.assert_close(c_out, torch.tensor([0.25 / 0.5**0.5]))
    torch.testing.assert_close(c_in, torch.tensor([1 / 0.5**0.5]))
    torch.testing.assert_close(c_noise, torch.log(torch.tensor([0.5])) / 4)


def test_edm_precond_is_exact_for_the_ideal_network(gen):
    # For x0 ~ N(0, sd^2): the ideal denoiser is sd^2/(sd^2+s^2) x = c_skip x, so the
    # ideal F is 0 and the wrapped model gives the exact Gaussian score at every process.
    from scorekit import Gaussian

    sd = 0.5
    for p in (VE(0.01, 10.0), VP()):
        m = ScoreModel(EDMPrecond(lambda x, c: torch.zeros_like(x), p, sd), p, "x0")
        exact = ExactScore(Gaussian(torch.zeros(3), std=sd), p)
        x = torch.randn(6, 3, generator=gen, dtype=torch.float64)
        t = torch.rand(6, generator=gen, dtype=torch.float64) * 0.9 + 0.05
        torch.testing.assert_close(m(x, t), exact(x, t))


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda: convert(torch.zeros(2, 2), "foo", "eps", torch.zeros(2, 2), 1, 1), "source"),
        (lambda: convert(torch.zeros(2, 2), "eps", "bar", torch.zeros(2, 2), 1, 1), "target"),
        (lambda: convert(torch.zeros(2, 3), "eps", "x0", torch.zeros(2, 2), 1, 1), "pred"),
        (lambda: ScoreModel(lambda x, t: x, VE(), prediction="noise"), "prediction"),
        (lambda: ScoreModel(lambda x, t: x, "VE"), "process"),
        (lambda: ScoreModel(lambda x, t: x, VE())(torch.zeros(2, 2), torch.zeros(3)), "t"),
        (lambda: ScoreModel(lambda x, t: x[:, :1], VE())(torch.zeros(2, 2), 0.5), "output"),
        (lambda: edm_coefficients(torch.ones(1), sigma_data=0.0), "sigma_data"),
    ],
)
def test_bad_input_names_argument(build, name):
    with pytest.raises(ValueError, match=name):
        build()

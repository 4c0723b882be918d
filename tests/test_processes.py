import math

import pytest
import torch

from scorekit import EDM, VE, VP, CosineVP, SubVP, ddpm_betas, ncsn_sigmas
from scorekit.adapters import DiscreteVP
from scorekit.core.processes import Process, from_config

PROCESSES = [VE(0.01, 50.0), VP(0.1, 20.0), SubVP(0.1, 20.0), CosineVP(), EDM(0.002, 80.0)]
IDS = [type(p).__name__ for p in PROCESSES]


def grid(p, n=25):
    lo = max(p.t_min, 1e-2 * p.T)
    return torch.linspace(lo, min(p.t_max, 0.98 * p.T), n, dtype=torch.float64)


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
def test_derivatives_match_finite_differences(p):
    t = grid(p)
    h = 1e-6 * p.T
    fd_a = (p.alpha(t + h) - p.alpha(t - h)) / (2 * h)
    fd_s = (p.sigma(t + h) - p.sigma(t - h)) / (2 * h)
    torch.testing.assert_close(p.d_alpha(t), fd_a, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(p.d_sigma(t), fd_s, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
def test_g2_and_f_reproduce_marginal_variance(p):
    # The forward SDE dx = f dt + g dw moves Var = sigma^2 (of x_t given x0) by
    # d/dt Var = 2 (dlog alpha/dt) Var + g^2; check with finite differences of sigma(t).
    t = grid(p)
    h = 1e-6 * p.T
    dvar = (p.sigma(t + h) ** 2 - p.sigma(t - h) ** 2) / (2 * h)
    rhs = 2 * p.dlog_alpha(t) * p.sigma(t) ** 2 + p.g2(t)
    torch.testing.assert_close(rhs, dvar, rtol=1e-6, atol=1e-8)
    # f is linear with slope dlog alpha / dt: the mean alpha(t) x0 obeys dm/dt = f(m, t)
    x0 = torch.tensor([[1.5, -2.0]], dtype=torch.float64)
    m = lambda s: p.alpha(s)[:, None] * x0  # noqa: E731
    dm = (m(t + h) - m(t - h)) / (2 * h)
    torch.testing.assert_close(p.f(m(t), t), dm, rtol=1e-6, atol=1e-8)


class _Bisected(Process):
    """A process seen through the generic base class only: every inverse bisects."""

    def __init__(self, inner):
        self.inner, self.T = inner, inner.T
        self.t_min, self.t_max = inner.t_min, inner.t_max

    def _alpha(self, t):
        return self.inner._alpha(t)

    def _sigma(self, t):
        return self.inner._sigma(t)

    def _d_alpha(self, t):
        return self.inner._d_alpha(t)

    def _d_sigma(self, t):
        return self.inner._d_sigma(t)

    def config(self):
        return {"name": "Bisected"}


DISCRETE = DiscreteVP(ddpm_betas(VP(), 1000).neg().log1p().cumsum(0).exp())
INVERTIBLE = PROCESSES + [DISCRETE, _Bisected(VP()), _Bisected(CosineVP())]


@pytest.mark.parametrize("p", INVERTIBLE, ids=lambda p: repr(p)[:20])
@pytest.mark.parametrize("of", ["sigma", "ratio", "log_snr"])
def test_inverses_invert_in_closed_form_and_agree_with_bisection(p, of):
    # t of sigma, of sigma / alpha and of the log-SNR: each maps its level back to t
    t = grid(p, 41)
    level = getattr(p, of)(t)
    got = getattr(p, f"t_of_{of}")(level)
    torch.testing.assert_close(got, t, rtol=1e-8, atol=1e-10 * p.T)
    # the closed form is the bisection of the base class (to machine precision)
    bisected = getattr(_Bisected(p), f"t_of_{of}")(level)
    torch.testing.assert_close(got, bisected, rtol=1e-9, atol=1e-12 * p.T)


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
def test_inverses_clamp_to_the_domain(p):
    # levels outside the process's range map to the ends of [0, T], never outside it
    big, small = p.ratio(torch.tensor(p.T, dtype=torch.float64)) * 10, torch.tensor(1e-30)
    assert float(p.t_of_ratio(big)) == p.T
    assert 0.0 <= float(p.t_of_ratio(small.double())) <= 1e-6 * p.T


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
def test_prior_sample_and_log_prob(p, gen):
    x = p.prior_sample((20000, 3), generator=gen, dtype=torch.float64)
    s = p.prior_std()
    assert abs(float(x.std()) / s - 1) < 0.02
    assert abs(float(x.mean())) / s < 0.02
    # log-density agrees with the product of 1-D normal densities
    normal = torch.distributions.Normal(0.0, s)
    torch.testing.assert_close(p.prior_log_prob(x[:5]), normal.log_prob(x[:5]).sum(1))


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
def test_add_noise_and_config_round_trip(p, gen):
    x0 = torch.randn(4, 2, dtype=torch.float64, generator=gen)
    eps = torch.randn(4, 2, dtype=torch.float64, generator=gen)
    t = torch.full((4,), p.t_max / 2, dtype=torch.float64)
    xt = p.add_noise(x0, t, eps)
    a, s = p.marginal(t)
    torch.testing.assert_close(xt, a[:, None] * x0 + s[:, None] * eps)
    q = from_config(p.config())
    torch.testing.assert_close(q.sigma(t), p.sigma(t))


def test_closed_forms():
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    ve = VE(0.01, 50.0)
    torch.testing.assert_close(ve.sigma(t), 0.01 * 5000.0**t)
    torch.testing.assert_close(ve.g2(t), 2 * ve.sigma(t) ** 2 * math.log(5000.0))
    vp = VP(0.1, 20.0)
    torch.testing.assert_close(vp.g2(t), 0.1 + t * 19.9)
    torch.testing.assert_close(vp.alpha(t) ** 2 + vp.sigma(t) ** 2, torch.ones(3, dtype=t.dtype))
    sub = SubVP(0.1, 20.0)
    torch.testing.assert_close(sub.sigma(t), 1 - vp.alpha(t) ** 2)
    edm = EDM()
    torch.testing.assert_close(edm.sigma(t), t)
    torch.testing.assert_close(edm.g2(t), 2 * t)
    cos = CosineVP()
    assert float(cos.alpha(0.0)) == pytest.approx(1.0)
    assert float(cos.alpha(torch.tensor(1.0, dtype=torch.float64))) == pytest.approx(0.0, abs=1e-12)


def test_discrete_grids():
    sig = ncsn_sigmas(VE(0.01, 50.0), 10)
    assert sig.shape == (10,)
    torch.testing.assert_close(sig[0], torch.tensor(50.0, dtype=torch.float64))
    torch.testing.assert_close(sig[-1], torch.tensor(0.01, dtype=torch.float64))
    ratios = sig[1:] / sig[:-1]
    torch.testing.assert_close(ratios, ratios[0].expand(9))
    # DDPM's linear schedule, 1e-4 ... 0.02, from the continuous VP process on t = i/T
    betas = ddpm_betas(VP(0.1, 20.0), 1000)
    ddpm = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    # midpoint beta and 1 - exp(-x) = x - x^2/2: within 2.1e-4 of DDPM's betas
    assert float((betas - ddpm).abs().max()) < 2.1e-4
    alpha_bar = torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(
        alpha_bar[-1], VP().alpha(torch.tensor(1.0, dtype=torch.float64)) ** 2
    )


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda: VE(1.0, 0.5), "sigma_min"),
        (lambda: VE(-1.0, 5.0), "sigma_min"),
        (lambda: EDM(80.0, 80.0), "sigma_min"),
        (lambda: VP(0.0, 20.0), "beta_min"),
        (lambda: VP(10.0, 1.0), "beta_max"),
        # values of t are checked at the boundary of a call (alpha, sigma do not sync)
        (lambda: VE().check_t(1.5), "t"),
        (lambda: VP().check_t(torch.tensor([-0.1, 0.5])), "t"),
        (lambda: EDM().check_t(100.0), "t"),
        (lambda: ncsn_sigmas(VE(), 1), "levels"),
        (lambda: from_config({"name": "Nope"}), "process config"),
    ],
)
def test_bad_input_names_argument(build, name):
    with pytest.raises(ValueError, match=name):
        build()


def test_ode_drift_transports_gaussian_marginal(gen):
    # For x0 ~ N(0, s0^2) under VP, p_t = N(0, a^2 s0^2 + sigma^2) with score -x / v(t);
    # the probability-flow ODE keeps x / sqrt(v(t)) constant: dx/dt = x v'(t) / (2 v).
    p = VP()
    s0 = 0.7
    t = torch.linspace(0.1, 0.9, 9, dtype=torch.float64)
    a, s = p.marginal(t)
    v = a**2 * s0**2 + s**2
    x = torch.randn(9, 1, generator=gen, dtype=torch.float64)
    h = 1e-6
    vp = (
        (p.alpha(t + h) ** 2 - p.alpha(t - h) ** 2) * s0**2
        + p.sigma(t + h) ** 2
        - p.sigma(t - h) ** 2
    ) / (2 * h)
    torch.testing.assert_close(p.ode_drift(x, t, -x / v[:, None]), x * (vp / (2 * v))[:, None])
    # reverse drift differs from the ODE drift by exactly -1/2 g^2 score
    sc = -x / v[:, None]
    torch.testing.assert_close(
        p.reverse_drift(x, t, sc) - p.ode_drift(x, t, sc), -0.5 * p.g2(t)[:, None] * sc
    )


@pytest.mark.parametrize("p", INVERTIBLE, ids=lambda p: repr(p)[:20])
def test_inverses_map_levels_outside_the_range_to_its_ends(p):
    # a sigma above sigma(T) (even above 1 for the variance-preserving ones) gives T, never NaN
    t = p.t_of_sigma(torch.tensor([1e6, -1.0], dtype=torch.float64))
    assert torch.isfinite(t).all() and float(t[1]) <= 1e-6 * p.T
    # round-off at T; the cosine sigma is flat there (d sigma / dt -> 0): 1e-7 of T
    assert float(t[0]) == pytest.approx(p.T, rel=1e-7)
    top = float(p.t_of_log_snr(torch.tensor(-1e6, dtype=torch.float64)))
    assert top == pytest.approx(p.T, rel=1e-7)

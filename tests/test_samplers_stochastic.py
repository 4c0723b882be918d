"""Stochastic samplers reach the exact target: sliced W2 within the exact-vs-exact noise band
and mean exact log-density within 3 standard errors (2-D mixture, float64, fixed seeds)."""

import pytest
import torch

from scorekit import VE, VP, ExactScore, GaussianMixture, ScoreModel
from scorekit.metrics import sliced_wasserstein
from scorekit.samplers import Langevin, sample

N = 2000


@pytest.fixture(scope="module")
def mix():
    return GaussianMixture(
        [0.3, 0.7],
        [[-2.0, 0.0], [1.5, 1.0]],
        covs=[[[0.5, 0.2], [0.2, 0.3]], [[0.4, -0.1], [-0.1, 0.6]]],
    )


@pytest.fixture(scope="module")
def reference(mix):
    """An exact sample of N points, E[log p] (from 1e5 points) and the exact-vs-exact SW band."""
    ref = mix.sample(N, torch.Generator().manual_seed(1))
    big = mix.sample(100000, torch.Generator().manual_seed(2))
    mean_lp = float(mix.log_prob(big).mean())
    sws = torch.stack(
        [
            sliced_wasserstein(
                mix.sample(N, torch.Generator().manual_seed(100 + i)),
                ref,
                128,
                torch.Generator().manual_seed(3),
            )
            for i in range(20)
        ]
    )
    band = float(sws.max())  # about the 95th percentile of exact-vs-exact
    return ref, mean_lp, band


def check_matches_target(x, mix, reference):
    ref, mean_lp, band = reference
    assert torch.isfinite(x).all()
    sw = float(sliced_wasserstein(x, ref, 128, torch.Generator().manual_seed(3)))
    lp = mix.log_prob(x)
    se = float(lp.std()) / len(lp) ** 0.5
    gap = float(lp.mean()) - mean_lp
    assert sw <= band, f"sliced W2 {sw:.4f} above the exact-vs-exact band {band:.4f}"
    assert abs(gap) <= 3 * se, f"mean log-density gap {gap:.4f} exceeds 3 SE = {3 * se:.4f}"


CASES = [
    ("euler_maruyama", VP(), dict(steps=500)),
    ("euler_maruyama", VE(0.01, 20.0), dict(steps=500)),
    ("reverse_diffusion", VE(0.01, 20.0), dict(steps=500)),
    ("pc", VE(0.01, 20.0), dict(steps=300, snr=0.16)),
    ("pc", VP(), dict(steps=300, snr=0.16, predictor="euler_maruyama")),
    ("ddpm", VP(), dict(steps=1000)),
    ("ddim", VP(), dict(steps=500, eta=0.5)),
    ("edm", VP(), dict(steps=100, s_churn=30.0)),
    ("edm", VE(0.01, 20.0), dict(steps=100, s_churn=30.0, s_min=0.05, s_max=10.0)),
    ("annealed_langevin", VE(0.01, 20.0), dict(steps=10, steps_per_level=300)),
    ("restart", VP(), dict(steps=30)),
    ("restart", VE(0.01, 20.0), dict(steps=30, intervals=[(0.1, 0.6, 2, 3), (1.0, 4.0, 1, 3)])),
]


@pytest.mark.parametrize(
    "name,process,kw", CASES, ids=[f"{c[0]}-{type(c[1]).__name__}" for c in CASES]
)
def test_stochastic_sampler_matches_exact_target(name, process, kw, mix, reference):
    model = ExactScore(mix, process)
    res = sample(
        model, N, name, generator=torch.Generator().manual_seed(0), dtype=torch.float64, **kw
    )
    check_matches_target(res.x, mix, reference)


def test_annealed_langevin_ncsn_settings(mix, reference):
    # NCSN (Song & Ermon 2019, Section 5): L = 10 geometric levels from sigma_1 = 1 to
    # sigma_L = 0.01, T = 100 steps per level, eps = 2e-5, no final denoising.
    model = ExactScore(mix, VE(0.01, 1.0))
    res = sample(
        model,
        N,
        "annealed_langevin",
        steps=10,
        steps_per_level=100,
        eps=2e-5,
        final_denoise=False,
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
    )
    assert res.nfe == 10 * 100
    check_matches_target(res.x, mix, reference)


def _energy_model(mix, process):
    def energy(x, t):
        a, s = process.marginal(t)
        return -mix.noised_log_prob(x, a, s)

    return ScoreModel(energy, process, prediction="energy")


def test_mala_is_unbiased_where_ula_is_not(mix, reference):
    # A large step: ULA's O(eta) bias inflates the spread; MALA's accept/reject removes it.
    process = VE(0.01, 20.0)
    grid = torch.zeros(301, dtype=torch.float64)
    x0 = mix.sample(N, torch.Generator().manual_seed(5))  # start in equilibrium
    mala = Langevin(0.3, metropolis=True)(
        _energy_model(mix, process), x0, grid, torch.Generator().manual_seed(0)
    )
    assert 0.3 < mala.info["acceptance"] < 0.95
    assert mala.nfe == 301
    check_matches_target(mala.x, mix, reference)
    ula = Langevin(0.3)(ExactScore(mix, process), x0, grid, torch.Generator().manual_seed(0))
    lp = mix.log_prob(ula.x)
    gap = float(lp.mean()) - reference[1]
    assert gap < -6 * float(lp.std()) / N**0.5  # ULA visibly biased at this step


def test_ula_small_step_matches_target(mix, reference):
    process = VE(0.01, 20.0)
    x0 = torch.zeros(N, 2, dtype=torch.float64)
    res = Langevin(0.02)(
        ExactScore(mix, process), x0, torch.zeros(1501), torch.Generator().manual_seed(0)
    )
    check_matches_target(res.x, mix, reference)


def test_path_energy_difference_against_the_exact_log_density(mix):
    # E(x') - E(x) by Gauss-Lobatto along the segment: exact for a Gaussian with the
    # trapezoid rule; on the mixture the error falls fast with the number of points
    from scorekit.samplers.langevin import path_energy_difference

    process = VE(0.01, 20.0)
    g = torch.Generator().manual_seed(4)
    x = mix.sample(500, g)
    prop = x + 0.3 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    t = 0.3
    a, sd = process.marginal(torch.tensor(t, dtype=torch.float64))
    true = -(mix.noised_log_prob(prop, a, sd) - mix.noised_log_prob(x, a, sd))
    model = ExactScore(mix, process)
    score = lambda y: model.score(y, t)  # noqa: E731
    errs = [
        float(
            (path_energy_difference(score, x, prop, score(x), score(prop), n) - true).abs().mean()
        )
        for n in (2, 3, 4, 5)
    ]
    assert errs[0] > 1e-3  # the mixture is not Gaussian: the trapezoid rule is not exact
    assert errs[1] < errs[0] / 3 and errs[2] < errs[1] / 3 and errs[3] < errs[2] / 3, errs
    # antisymmetric in (x, x'): the reverse move gets exactly the opposite rise
    back = path_energy_difference(score, prop, x, score(prop), score(x), 3)
    assert torch.allclose(back, -path_energy_difference(score, x, prop, score(x), score(prop), 3),
                          rtol=0, atol=1e-12)  # fmt: skip
    one = GaussianMixture([1.0], [[1.0, -0.5]], covs=[[[0.5, 0.2], [0.2, 0.3]]])
    gm = ExactScore(one, process)
    true1 = -(one.noised_log_prob(prop, a, sd) - one.noised_log_prob(x, a, sd))
    s1 = lambda y: gm.score(y, t)  # noqa: E731
    got = path_energy_difference(s1, x, prop, s1(x), s1(prop), 2)
    assert torch.allclose(got, true1, rtol=1e-12, atol=1e-10)


def test_score_model_mala_is_the_energy_model_chain_on_a_gaussian():
    # the trapezoid rule is exact for a Gaussian: the score model's MALA takes exactly the
    # decisions of the energy model's
    one = GaussianMixture([1.0], [[1.0, -0.5]], covs=[[[0.5, 0.2], [0.2, 0.3]]])
    process = VE(0.01, 20.0)
    x0 = torch.zeros(500, 2, dtype=torch.float64)
    grid = torch.zeros(51, dtype=torch.float64)
    by_energy = Langevin(0.4, metropolis=True)(
        _energy_model(one, process), x0, grid, torch.Generator().manual_seed(0)
    )
    by_path = Langevin(0.4, metropolis=True, path_points=2)(
        ExactScore(one, process), x0, grid, torch.Generator().manual_seed(0)
    )
    assert 0.2 < by_path.info["acceptance"] < 0.95
    assert by_path.info["accepted"] == by_energy.info["accepted"]
    assert torch.allclose(by_path.x, by_energy.x, rtol=0, atol=1e-10)  # round-off over 50 steps
    assert by_path.nfe == by_energy.nfe == 51


@pytest.mark.parametrize("points", [None, 5])  # None: the default, 4 points
def test_score_model_mala_is_unbiased_where_ula_is_not(mix, reference, points):
    # the same large step as the energy model's test above, with the score's line integral:
    # the chain matches the mixture and accepts as often as the energy model's chain
    process = VE(0.01, 20.0)
    grid = torch.zeros(301, dtype=torch.float64)
    x0 = mix.sample(N, torch.Generator().manual_seed(5))
    res = Langevin(0.3, metropolis=True, path_points=points)(
        ExactScore(mix, process), x0, grid, torch.Generator().manual_seed(0)
    )
    n = 4 if points is None else points
    assert res.nfe == 1 + 300 * (n - 1)  # start, then the proposal's score and inner points
    check_matches_target(res.x, mix, reference)
    energy = Langevin(0.3, metropolis=True)(
        _energy_model(mix, process), x0, grid, torch.Generator().manual_seed(0)
    )
    # measured: 4 points -0.0005, 5 points +0.0006; Simpson's 3 points +0.0027
    assert abs(res.info["acceptance"] - energy.info["acceptance"]) < 0.0015


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_lobatto_rule_is_exact_to_its_degree(n):
    # log p(x) = -sum_k c_k x^k in 1-D: exact for degree 2n - 2, not for degree 2n
    from scorekit.samplers.langevin import path_energy_difference

    g = torch.Generator().manual_seed(n)
    x = torch.randn(50, 1, generator=g, dtype=torch.float64)
    prop = x + torch.randn(50, 1, generator=g, dtype=torch.float64)
    for degree, exact in ((2 * n - 2, True), (2 * n, False)):
        c = torch.rand(degree + 1, generator=g, dtype=torch.float64) + 0.5
        energy = lambda y: sum(c[k] * y**k for k in range(degree + 1)).sum(1)  # noqa: E731, B023
        score = lambda y: -sum(k * c[k] * y ** (k - 1) for k in range(1, degree + 1))  # noqa: E731, B023
        got = path_energy_difference(score, x, prop, score(x), score(prop), n)
        err = float((got - (energy(prop) - energy(x))).abs().max())
        assert (err < 1e-9) if exact else (err > 1e-4), (degree, err)


@pytest.mark.parametrize("points", [1, 6, 2.5, True, "3"])
def test_mala_path_points_are_checked(points):
    with pytest.raises(ValueError, match=r"path_points must be an integer from 2 to 5, got"):
        Langevin(0.1, metropolis=True, path_points=points)


def test_path_points_need_metropolis():
    with pytest.raises(ValueError, match="path_points is for the acceptance test"):
        Langevin(0.1, path_points=3)


def test_annealed_langevin_accepts_a_final_zero_level(mix):
    # a grid ending at sigma = 0 runs the positive levels and ends on the denoised estimate,
    # which is the final_denoise step of the grid without the zero
    import torch

    from scorekit import EDM, ExactScore
    from scorekit.core.schedules import time_grid
    from scorekit.samplers import AnnealedLangevin

    model = ExactScore(mix, EDM(0.05, 10.0))
    grid = time_grid(model.process, 4, "geometric")
    x = model.process.prior_sample((50, 2), torch.Generator().manual_seed(0), torch.float64)
    smp = AnnealedLangevin(steps_per_level=5)
    a = smp(model, x, grid, torch.Generator().manual_seed(1))
    zero = time_grid(model.process, 4, "geometric", final_zero=True)
    torch.testing.assert_close(zero[:-1], grid)
    b = smp(model, x, zero, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a.x, b.x)
    assert a.nfe == b.nfe == 5 * 5 + 1

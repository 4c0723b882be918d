"""Per-σ diagnostics: the DSM floor against closed forms, and the normalised loss >= 1."""

import math

import pytest
import torch

from scorekit import VE, VP, ExactScore, Gaussian, GaussianMixture
from scorekit.losses import DiffusionLoss, LikelihoodLoss
from scorekit.noise.diagnostics import (
    bucket_loss,
    dsm_per_level,
    irreducible_buckets,
    irreducible_dsm,
    normalized_dsm,
    normalized_log,
    plot_normalized_loss,
)

D64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def mix():
    return GaussianMixture([0.3, 0.7], [[-1.5, 0.0], [1.0, 0.5]], stds=[0.3, 0.5])


def test_irreducible_dsm_matches_the_gaussian_closed_form():
    # N(mu, tau^2 I): L* = d/2 alpha^2 tau^2 / (sigma^2 (alpha^2 tau^2 + sigma^2))
    d, tau = 3, 0.7
    gauss = Gaussian([0.5, -1.0, 0.2], std=tau)
    for process in (VP(), VE(0.01, 20.0)):
        t = torch.tensor([0.02, 0.3, 0.8], dtype=D64)
        mean, se = irreducible_dsm(gauss, process, t, n=20_000, generator=_gen(0))
        a, s = process.marginal(t)
        exact = 0.5 * d * a**2 * tau**2 / (s**2 * (a**2 * tau**2 + s**2))
        assert ((mean - exact).abs() < 4 * se).all()
        assert (se < 0.02 * exact).all()


def test_normalized_loss_is_one_for_the_exact_score_and_above_one_for_a_wrong_one(mix):
    vp = VP()
    t = torch.tensor([0.01, 0.1, 0.4, 0.9], dtype=D64)
    ratio, se = normalized_dsm(ExactScore(mix, vp), mix, t, n=20_000, generator=_gen(1))
    assert ((ratio - 1).abs() < 4 * se).all() and (se < 0.03).all()
    # a wrong score: that of N(0, I), the data's rough Gaussian fit. Any bounded score error
    # vanishes relative to the floor ~ d / (2 sigma^2) as sigma -> 0 (at t = 0.01, sigma = 0.03,
    # it is ~1%), so the check starts at t = 0.1 (sigma = 0.32).
    wrong = ExactScore(Gaussian([0.0, 0.0], std=1.0), vp)
    ratio, se = normalized_dsm(wrong, mix, t[1:], n=20_000, generator=_gen(2))
    assert (ratio - 1 > 8 * se).all() and (ratio > 1.05).all()


def test_dsm_per_level_is_the_unweighted_score_space_loss(mix):
    # the same number as DiffusionLoss with lambda = 1, in score space, at a fixed t
    vp = VP()
    model = ExactScore(mix, vp)
    x0 = mix.sample(500, generator=_gen(3))
    mean, _ = dsm_per_level(model, x0, torch.tensor([0.3], dtype=D64), generator=_gen(4))
    loss = DiffusionLoss(vp, weighting=lambda p, t: torch.ones_like(t), prediction_target="score")
    ref = loss(model, x0, torch.full((500,), 0.3, dtype=D64), generator=_gen(4)).mean()
    assert math.isclose(float(mean[0]), float(ref), rel_tol=1e-12)


def test_bucket_floor_of_an_importance_sampled_objective(mix):
    # floor per bucket under LikelihoodLoss (g^2 weight, importance-sampled t): two independent
    # estimates agree; a wrong model's bucket loss is above the floor in the buckets of
    # sigma >= 0.1 (below, a bounded score error is lost in the floor ~ 1 / sigma^2)
    vp = VP()
    obj = LikelihoodLoss(vp)
    edges = torch.logspace(-2, 0, 5, dtype=D64)
    f1, s1 = irreducible_buckets(obj, mix, edges, n=40_000, generator=_gen(5))
    f2, s2 = irreducible_buckets(obj, mix, edges, n=40_000, generator=_gen(6))
    assert ((f1 - f2).abs() < 4 * torch.sqrt(s1**2 + s2**2)).all()
    wrong = ExactScore(Gaussian([0.0, 0.0], std=1.0), vp)
    w, sw = bucket_loss(obj, wrong, mix, edges, n=40_000, generator=_gen(7))
    assert ((w - f1)[2:] > 4 * torch.sqrt(sw**2 + s1**2)[2:]).all()
    assert (w > f1 - 4 * torch.sqrt(sw**2 + s1**2)).all()
    # normalised log records: exact model -> 1 within MC error
    recs = [{"step": 10, "sigma_edges": edges.tolist(), "bucket_loss": f2.tolist()}]
    out = normalized_log(recs, f1)
    vals = torch.tensor(out[0]["normalized"], dtype=D64)
    assert ((vals - 1).abs() < 4 * torch.sqrt(s1**2 + s2**2) / f1).all()
    assert out[0]["sigma_centres"][0] == pytest.approx(math.sqrt(edges[0] * edges[1]))


def test_bad_inputs_name_the_argument(mix):
    vp = VP()
    with pytest.raises(ValueError, match="target"):
        irreducible_dsm("mix", vp, torch.tensor([0.5]))
    with pytest.raises(ValueError, match="sigma_edges"):
        irreducible_buckets(LikelihoodLoss(vp), mix, [1.0, 0.1])
    with pytest.raises(ValueError, match="t must"):
        irreducible_dsm(mix, vp, torch.tensor(0.5))
    with pytest.raises(ValueError, match="floor has 2 buckets"):
        normalized_log([{"step": 1, "sigma_edges": [0.1, 1, 10, 100], "bucket_loss": [1, 1, 1]}],
                       torch.ones(2))  # fmt: skip


def test_plot_normalized_loss():
    pytest.importorskip("matplotlib")
    recs = [
        {"step": s, "sigma_centres": [0.1, 1.0], "normalized": [1.0 + 1 / s, None]}
        for s in (10, 20)
    ]
    fig = plot_normalized_loss({"a": recs, "b": recs})
    assert len(fig.axes) == 2 and fig.axes[0].get_yscale() == "log"
    with pytest.raises(ValueError, match="runs"):
        plot_normalized_loss({})


def test_bucket_sums_by_hand():
    from scorekit.noise.diagnostics import bucket_sums

    edges = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)  # outer buckets open-ended
    sigma = torch.tensor([0.01, 0.5, 2.0, 50.0, 3.0])
    values = torch.tensor([1.0, 2.0, 3.0, float("nan"), 4.0])
    weights = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0])  # weight 0 leaves the NaN out
    s, s2, n = bucket_sums(sigma, values, edges, weights)
    torch.testing.assert_close(s, torch.tensor([3.0, 7.0], dtype=torch.float64))
    torch.testing.assert_close(s2, torch.tensor([5.0, 25.0], dtype=torch.float64))
    torch.testing.assert_close(n, torch.tensor([2.0, 2.0], dtype=torch.float64))

"""GaussianTeleport: the first interval by the exact flow of the data's Gaussian."""

import pytest
import torch

from scorekit import EDM, VP, ExactScore, Gaussian, GaussianMixture
from scorekit.core.schedules import time_grid
from scorekit.samplers import Dopri5, GaussianTeleport, sample

D = torch.float64


def _gaussian():
    a = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [-0.5, 0.3, 0.4]], dtype=D)
    return Gaussian(torch.tensor([1.0, -2.0, 0.5], dtype=D), cov=a @ a.T + 0.05 * torch.eye(3))


def _exact(model, x, t0, t1):
    return Dopri5(rtol=1e-10, atol=1e-10)(model, x, torch.tensor([t0, t1], dtype=D)).x


@pytest.mark.parametrize("process", [VP(), EDM()], ids=["vp", "edm"])
@pytest.mark.parametrize("sigma", [0.3, 3.0, 30.0])
def test_the_jump_is_the_exact_flow_of_a_gaussian(process, sigma):
    """For Gaussian data the jump equals the probability-flow ODE solved to 1e-10, from the
    prior at t_max to the level sigma/alpha = sigma, on VP and EDM."""
    target = _gaussian()
    model = ExactScore(target, process)
    tp = GaussianTeleport(target.mean(), target.covariance(), sigma, "unipc")
    grid = tp.default_grid(process, 3)
    x = process.prior_sample((64, 3), torch.Generator().manual_seed(0), dtype=D)
    r = tp(model, x, grid, return_trajectory=True)
    jumped = r.trajectory[1]
    torch.testing.assert_close(jumped, _exact(model, x, float(grid[0]), float(grid[1])),
                               rtol=1e-7, atol=1e-7)  # fmt: skip
    assert abs(float(process.ratio(grid[1])) - sigma) < 1e-9 * sigma
    assert r.nfe == 3  # the jump costs no evaluation


def test_diagonal_variances_are_the_diagonal_matrix():
    target = GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [2.0, 0.0]], stds=[0.4, 0.8])
    mean, cov = target.mean(), target.covariance()
    var = torch.diagonal(cov).clone()
    model = ExactScore(target, VP())
    g = torch.Generator().manual_seed(1)
    a = sample(model, 32, GaussianTeleport(mean, torch.diag(var), 5.0), steps=6, generator=g)
    g = torch.Generator().manual_seed(1)
    b = sample(model, 32, GaussianTeleport(mean, var, 5.0), steps=6, generator=g)
    torch.testing.assert_close(a.x, b.x, rtol=1e-10, atol=1e-10)


def test_images_and_fit_from_data():
    """Examples of shape (C, H, W): mean and covariance over the flattened coordinates."""
    g = torch.Generator().manual_seed(2)
    scale = torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=D).reshape(1, 1, 2, 2)
    data = torch.randn(500, 1, 2, 2, generator=g, dtype=D) * scale
    tp = GaussianTeleport.fit(data, 10.0, "dpmpp_2m")
    flat = data.reshape(500, 4)
    torch.testing.assert_close(tp.mean.reshape(-1), flat.mean(0))
    torch.testing.assert_close(
        tp.basis @ torch.diag(tp.eigenvalues) @ tp.basis.T, torch.cov(flat.T)
    )
    target = Gaussian(flat.mean(0), cov=torch.cov(flat.T))

    def image_model(x, t):
        return ExactScore(target, EDM()).raw(x.reshape(len(x), 4), t).reshape(x.shape)

    from scorekit import ScoreModel

    m = ScoreModel(image_model, EDM(), "score", (1, 2, 2))
    r = sample(m, 16, tp, steps=8, generator=torch.Generator().manual_seed(0))
    assert r.x.shape == (16, 1, 2, 2) and r.nfe == 8 and torch.isfinite(r.x).all()


def test_the_jump_errs_by_how_far_the_marginal_is_from_gaussian():
    """On a mixture the jump's error, after an exact solve onwards, falls as the landing
    level rises (the noised mixture nears its Gaussian)."""
    target = GaussianMixture([0.5, 0.5], [[-3.0, 0.0], [3.0, 1.0]], stds=0.5)
    proc = EDM(0.002, 80.0)
    model = ExactScore(target, proc)
    x = 80.0 * torch.randn(2000, 2, generator=torch.Generator().manual_seed(3), dtype=D)
    ref = _exact(model, x, 80.0, 0.002)
    err = []
    for s in (2.0, 8.0, 30.0):
        tp = GaussianTeleport(target.mean(), target.covariance(), s)
        jumped = tp(model, x, torch.tensor([80.0, s, 0.002], dtype=D), return_trajectory=True)
        y = _exact(model, jumped.trajectory[1], s, 0.002)
        err.append(float((y - ref).pow(2).sum(1).mean().sqrt()))
    # measured: 0.14, 2.1e-3, 1.2e-5
    assert err[0] > 20 * err[1] and err[1] > 50 * err[2], err
    assert err[2] < 1e-4, err


def test_bad_input_is_refused_by_name():
    m, c = torch.zeros(2, dtype=D), torch.eye(2, dtype=D)
    model = ExactScore(GaussianMixture([1.0], [[0.0, 0.0]], stds=1.0), VP())
    for args, msg in [
        ((m, torch.eye(3, dtype=D)), "cov must be (2, 2) or (2,)"),
        ((m, torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=D)), "cov must be symmetric"),
        ((m, torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=D)), "positive semi-definite"),
        ((m, c, 0.0), "sigma must be a positive finite"),
        ((m, c, float("inf")), "sigma must be a positive finite"),
        ((m, torch.tensor([1.0, float("nan")], dtype=D)), "cov"),
        ((m, c, 10.0, "langevin"), "solver must step a decreasing grid"),
    ]:
        with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            GaussianTeleport(*args)
    with pytest.raises(ValueError, match="must lie between the process.s smallest and largest"):
        sample(model, 4, GaussianTeleport(m, c, 1e4), steps=4)
    with pytest.raises(ValueError, match="at least 2 intervals"):
        GaussianTeleport(m, c, 1.0)(model, torch.zeros(4, 2, dtype=D), torch.tensor([1.0, 0.5]))
    with pytest.raises(ValueError, match="x has 3 coordinates per example"):
        GaussianTeleport(m, c, 1.0)(model, torch.zeros(4, 3, dtype=D), time_grid(VP(), 4))


def test_it_serves_float32_and_chunks_and_is_refused_inside_other_samplers():
    from scorekit.samplers import PredictorCorrector, Restart

    target = GaussianMixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 1.0]], stds=0.4)
    model = ExactScore(target, VP())
    tp = GaussianTeleport(target.mean(), target.covariance(), 10.0, "dpmpp_2m")
    whole = sample(model, 40, tp, steps=8, generator=torch.Generator().manual_seed(4), dtype=D)
    parts = sample(model, 40, tp, steps=8, generator=torch.Generator().manual_seed(4),
                   batch_size=16, dtype=D)  # fmt: skip
    torch.testing.assert_close(whole.x, parts.x, rtol=1e-12, atol=1e-12)
    x_T = VP().prior_sample((40, 2), torch.Generator().manual_seed(5), dtype=D)
    f64 = sample(model, 40, tp, steps=8, x_T=x_T)
    f32 = sample(model, 40, tp, steps=8, x_T=x_T.float())
    assert f32.x.dtype == torch.float32
    torch.testing.assert_close(f32.x.double(), f64.x, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="solver must be a deterministic ODE solver"):
        Restart(solver=tp)
    with pytest.raises(ValueError, match="predictor must step grid point to grid point"):
        PredictorCorrector(predictor=tp)
    with pytest.raises(ValueError, match="must lie between the process.s smallest"):
        sample(model, 4, GaussianTeleport(target.mean(), target.covariance(), 1e-4), steps=4)


@pytest.mark.parametrize("process", [VP(), EDM()], ids=["vp", "edm"])
def test_from_model_recovers_a_gaussian_from_its_denoiser(process):
    """A Gaussian's denoiser is linear: n = 16 > d + 1 evaluations give its mean and
    covariance to rounding, at the landing level or any other, and the same samples as the
    teleport given the moments."""
    target = _gaussian()
    model = ExactScore(target, process)
    for level in (None, 0.7, 40.0):
        tp = GaussianTeleport.from_model(model, (3,), 5.0, "unipc", level=level, n=16,
                                         generator=torch.Generator().manual_seed(0),
                                         dtype=D)  # fmt: skip
        cov = tp.basis @ torch.diag(tp.eigenvalues) @ tp.basis.T
        torch.testing.assert_close(tp.mean, target.mean(), rtol=0, atol=1e-10)
        torch.testing.assert_close(cov, target.covariance(), rtol=0, atol=1e-10)
    ref = GaussianTeleport(target.mean(), target.covariance(), 5.0, "unipc")
    a = sample(model, 32, tp, steps=5, generator=torch.Generator().manual_seed(1), dtype=D)
    b = sample(model, 32, ref, steps=5, generator=torch.Generator().manual_seed(1), dtype=D)
    torch.testing.assert_close(a.x, b.x, rtol=1e-9, atol=1e-9)


def test_from_model_on_a_mixture_nears_the_moments_as_the_level_rises():
    """On a mixture the fitted Gaussian is the best linear denoiser at the level, which nears
    the data's moments as the level rises (measured: mean error 0.028, 7.9e-4, 1.3e-5 at
    levels 5, 20, 80); where the denoiser stretches a direction (level 1, between the two
    modes; measured slope 2.0 at level 1) no Gaussian fits and the fit is refused."""
    target = GaussianMixture([0.5, 0.5], [[-3.0, 0.0], [3.0, 1.0]], stds=0.5)
    model = ExactScore(target, EDM(0.002, 80.0))
    err = []
    for level in (5.0, 20.0, 80.0):
        tp = GaussianTeleport.from_model(model, (2,), 30.0, level=level, n=256, dtype=D,
                                         generator=torch.Generator().manual_seed(0))  # fmt: skip
        cov = tp.basis @ torch.diag(tp.eigenvalues) @ tp.basis.T
        rel = (cov - target.covariance()).norm() / target.covariance().norm()
        err.append((float((tp.mean - target.mean()).norm()), float(rel)))
    assert err[0][0] > 10 * err[1][0] > 100 * err[2][0] and err[2][0] < 1e-4, err
    assert err[0][1] > 10 * err[1][1] > 50 * err[2][1] and err[2][1] < 1e-3, err
    with pytest.raises(ValueError, match="at level 1 stretches some direction by [12]"):
        GaussianTeleport.from_model(model, (2,), 30.0, level=1.0, n=256, dtype=D)
    # just above level 2 the slope is below 1 but the fitted variance is 26-110 times r^2
    # (the data's: 0.25 and 9.5): refused by max_slope
    for level in (2.05, 2.1):
        with pytest.raises(ValueError, match="> max_slope = 0.9"):
            GaussianTeleport.from_model(model, (2,), 30.0, level=level, n=256, dtype=D,
                                        generator=torch.Generator().manual_seed(0))  # fmt: skip


def test_from_model_takes_images_float32_chunks_and_refuses_bad_input():
    g = torch.Generator().manual_seed(2)
    target = _gaussian()
    model = ExactScore(target, VP())
    whole = GaussianTeleport.from_model(model, (3,), 10.0, n=40, dtype=D,
                                        generator=torch.Generator().manual_seed(3))  # fmt: skip
    parts = GaussianTeleport.from_model(model, (3,), 10.0, n=40, dtype=D, batch_size=7,
                                        generator=torch.Generator().manual_seed(3))  # fmt: skip
    torch.testing.assert_close(whole.mean, parts.mean, rtol=1e-12, atol=1e-12)
    f32 = GaussianTeleport.from_model(model, (3,), 10.0, n=40,
                                      generator=torch.Generator().manual_seed(3))  # fmt: skip
    torch.testing.assert_close(f32.mean, whole.mean, rtol=0, atol=1e-3)
    # EDM's process: the mean comes back as given
    img = Gaussian(
        torch.randn(4, generator=g, dtype=D),
        cov=torch.diag(torch.rand(4, generator=g, dtype=D) + 0.1),
    )
    m_img = ExactScore(img, EDM())
    tp = GaussianTeleport.from_model(m_img, (4,), 10.0, n=20, dtype=D)
    torch.testing.assert_close(tp.mean, img.mean(), rtol=0, atol=1e-9)
    # a degenerate Gaussian (rank 1 in 3-D): the slopes of the flat directions are 0, clipped
    # from rounding, and the fit keeps them flat
    v = torch.tensor([[1.0, 2.0, -1.0]], dtype=D)
    flat = ExactScore(Gaussian(torch.zeros(3, dtype=D), cov=v.T @ v + 1e-12 * torch.eye(3)), VP())
    tp = GaussianTeleport.from_model(flat, (3,), 10.0, n=32, dtype=D)
    assert float(tp.eigenvalues.min()) >= 0.0 and float(tp.eigenvalues[:2].max()) < 1e-8
    torch.testing.assert_close(tp.eigenvalues[2], torch.tensor(6.0, dtype=D), rtol=1e-8, atol=0)
    for kw, msg in [
        ({"level": 1e5}, "level must lie in the process's range"),
        ({"n": 4}, "n must be"),
        ({"level": 5.0, "sigma": 1e5}, "sigma must lie between"),
        ({"max_slope": 1.0}, "max_slope must lie in"),
        ({"cond": {"y": torch.zeros(3)}}, "cond\\['y'\\] must have the batch size"),
    ]:
        with pytest.raises(ValueError, match=msg):
            GaussianTeleport.from_model(model, (3,), **{"sigma": 10.0, "n": 40, **kw})
    with pytest.raises(ValueError, match="shape must be one example's shape"):
        GaussianTeleport.from_model(model, (), 10.0)

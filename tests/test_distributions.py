import pytest
import torch

from scorekit import VE, VP, ExactScore, Gaussian, GaussianMixture


def random_mixture(K, d, seed):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(K, d, d, generator=g, dtype=torch.float64)
    covs = A @ A.transpose(-1, -2) / d + 0.1 * torch.eye(d, dtype=torch.float64)
    means = 2 * torch.randn(K, d, generator=g, dtype=torch.float64)
    w = torch.rand(K, generator=g, dtype=torch.float64) + 0.1
    return GaussianMixture(w, means, covs=covs)


def test_log_prob_matches_torch_distributions(mixture2d, gen):
    x = torch.randn(50, 2, generator=gen, dtype=torch.float64) * 2
    ref = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(mixture2d.weights),
        torch.distributions.MultivariateNormal(mixture2d.means, mixture2d.covs),
    )
    torch.testing.assert_close(mixture2d.log_prob(x), ref.log_prob(x))


@pytest.mark.parametrize("K, d", [(1, 3), (3, 2), (4, 5)])
def test_score_is_gradient_of_log_prob(K, d, gen):
    gm = random_mixture(K, d, seed=K * 10 + d)
    x = torch.randn(30, d, generator=gen, dtype=torch.float64).requires_grad_()
    (grad,) = torch.autograd.grad(gm.log_prob(x).sum(), x)
    torch.testing.assert_close(gm.score(x.detach()), grad)
    # noised at a per-sample (alpha, sigma)
    a = torch.rand(30, generator=gen, dtype=torch.float64) + 0.2
    s = torch.rand(30, generator=gen, dtype=torch.float64) + 0.1
    (grad,) = torch.autograd.grad(gm.noised_log_prob(x, a, s).sum(), x)
    torch.testing.assert_close(gm.noised_score(x.detach(), a, s), grad)


def test_noised_matches_batched_form(mixture2d, gen):
    x = torch.randn(10, 2, generator=gen, dtype=torch.float64)
    n = mixture2d.noised(0.7, 0.4)
    torch.testing.assert_close(n.log_prob(x), mixture2d.noised_log_prob(x, 0.7, 0.4))
    torch.testing.assert_close(n.score(x), mixture2d.noised_score(x, 0.7, 0.4))
    torch.testing.assert_close(n.covs, 0.49 * mixture2d.covs + 0.16 * torch.eye(2).double())


def test_sample_moments(mixture2d, gen):
    x = mixture2d.sample(200_000, generator=gen)
    torch.testing.assert_close(x.mean(0), mixture2d.mean(), atol=0.02, rtol=0)
    torch.testing.assert_close(x.T.cov(), mixture2d.covariance(), atol=0.03, rtol=0)


def test_tweedie_equals_posterior_mean(gen):
    gm = random_mixture(3, 4, seed=1)
    x = torch.randn(40, 4, generator=gen, dtype=torch.float64) * 2
    # VE form: E[x0 | x] = x + sigma^2 score
    s = 0.8
    torch.testing.assert_close(x + s**2 * gm.noised_score(x, 1.0, s), gm.posterior_mean(x, 1.0, s))
    # VP form: E[x0 | x] = (x + sigma^2 score) / alpha
    a = 0.6
    s = (1 - a**2) ** 0.5
    torch.testing.assert_close(
        (x + s**2 * gm.noised_score(x, a, s)) / a, gm.posterior_mean(x, a, s)
    )


def test_gaussian_closed_form(gen):
    cov = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    mu = torch.tensor([1.0, -1.0], dtype=torch.float64)
    g = Gaussian(mu, cov=cov)
    x = torch.randn(8, 2, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(g.score(x), -(x - mu) @ torch.linalg.inv(cov))
    a, s = 0.5, 0.3
    post = mu + (x - a * mu) @ torch.linalg.inv(a**2 * cov + s**2 * torch.eye(2)) @ (a * cov)
    torch.testing.assert_close(g.posterior_mean(x, a, s), post)


@pytest.mark.parametrize("process, t", [(VE(0.01, 5.0), 0.6), (VP(0.1, 20.0), 0.3)])
def test_exact_score_matches_monte_carlo(process, t, mixture2d, gen):
    # grad log p_t(x) = E[(alpha x0 - x) / sigma^2 | x_t = x], estimated by
    # self-normalised importance weights N(x; alpha x0, sigma^2) over x0 ~ p.
    model = ExactScore(mixture2d, process)
    x0 = mixture2d.sample(400_000, generator=gen)
    tt = torch.tensor(t, dtype=torch.float64)
    a, s = (float(v) for v in process.marginal(tt))
    pts = torch.tensor([[-1.0, 0.5], [0.5, 0.5], [2.0, 1.0]], dtype=torch.float64) * a
    exact = model(pts, tt)
    for i, p in enumerate(pts):
        logw = -((p - a * x0) ** 2).sum(1) / (2 * s**2)
        w = torch.softmax(logw, 0)
        mc = (w[:, None] * (a * x0 - p) / s**2).sum(0)
        ess = 1 / (w**2).sum()
        assert ess > 1000
        torch.testing.assert_close(mc, exact[i], atol=0.05 * float(exact[i].norm()) + 0.02, rtol=0)


def test_exact_score_wrapper_predictions(mixture2d, gen):
    p = VP()
    m = ExactScore(mixture2d, p)
    x = torch.randn(16, 2, generator=gen, dtype=torch.float64)
    t = torch.rand(16, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    torch.testing.assert_close(m.x0(x, t), m.posterior_mean(x, t))
    a, s = p.marginal(t)
    torch.testing.assert_close(m.log_prob(x, t), mixture2d.noised_log_prob(x, a, s))
    # per-sample t: each row equals the scalar-t evaluation
    torch.testing.assert_close(m(x[:1], t[0]), m(x, t)[:1])


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda: GaussianMixture([0.5, 0.5], [[0.0, 0.0]], stds=1.0), "weights"),
        (lambda: GaussianMixture([0.5, 0.5], [0.0, 1.0], stds=1.0), "means"),
        (lambda: GaussianMixture([0.5, 0.5], [[0.0], [1.0]], stds=[1.0, -1.0]), "stds"),
        (lambda: GaussianMixture([-1.0, 2.0], [[0.0], [1.0]], stds=1.0), "weights"),
        (lambda: GaussianMixture([1.0], [[0.0, 0.0]], covs=[[[1.0, 0.0], [0.0, -1.0]]]), "covs"),
        (lambda: GaussianMixture([1.0], [[0.0, 0.0]], covs=[[1.0, 0.0], [0.0, 1.0]]), "covs"),
        (lambda: GaussianMixture([1.0], [[float("nan")]], stds=1.0), "means"),
        (lambda: Gaussian([0.0, 0.0], std=1.0).log_prob(torch.zeros(3, 3)), "x"),
        (lambda: Gaussian([0.0], std=1.0).sample(0), "n"),
        (lambda: ExactScore("not a mixture", VE()), "target"),
    ],
)
def test_bad_input_names_argument(build, name):
    with pytest.raises(ValueError, match=name):
        build()

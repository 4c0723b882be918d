"""Conditional models and guidance against a mixture whose components are the classes."""

import pytest
import torch

from scorekit import VP, ExactScore, GaussianMixture, ScoreModel
from scorekit.guidance import (
    ClassifierGuided,
    ConditionalScoreModel,
    ExactClassifier,
    ExactConditional,
    GuidedScoreModel,
    check_labels,
    class_mixtures,
    sample_conditional,
)
from scorekit.samplers import SAMPLERS

CLASSES = [0, 0, 1, 2]


@pytest.fixture(scope="module")
def mix():
    return GaussianMixture(
        [0.3, 0.2, 0.25, 0.25],
        [[-3.0, 0.0], [-2.0, 2.0], [3.0, 0.0], [0.0, -3.0]],
        covs=[
            [[0.3, 0.1], [0.1, 0.2]],
            [[0.2, 0.0], [0.0, 0.2]],
            [[0.4, -0.1], [-0.1, 0.3]],
            [[0.25, 0.0], [0.0, 0.35]],
        ],
    )


def _batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 2.5 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    t = 0.02 + 0.9 * torch.rand(n, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, t, y


def test_class_mixtures_prior_and_parts(mix):
    prior, parts = class_mixtures(mix, CLASSES)
    torch.testing.assert_close(prior, torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64))
    x, _, _ = _batch()
    # p(x) = sum_c p(c) p(x | c)
    lp = torch.logsumexp(torch.stack([parts[c].log_prob(x) + prior[c].log() for c in range(3)]), 0)
    torch.testing.assert_close(lp, mix.log_prob(x))


@pytest.mark.parametrize("scale", [0.0, 1.0, 3.0])
def test_guided_exact_score_is_closed_form(mix, scale):
    proc = VP()
    cond, clf = ExactConditional(mix, CLASSES, proc), ExactClassifier(mix, CLASSES, proc)
    x, t, y = _batch()
    a, s = proc.marginal(t)
    _, parts = class_mixtures(mix, CLASSES)
    s_u = mix.noised_score(x, a, s)
    s_c = torch.stack(
        [parts[int(c)].noised_score(x[i : i + 1], a[i], s[i])[0] for i, c in enumerate(y)]
    )
    guided = cond.bind(y, scale)(x, t)
    w = scale - 1.0
    torch.testing.assert_close(guided, (1 + w) * s_c - w * s_u)
    # Bayes: s_u + scale * grad log p_t(y | x), the gradient by autograd of the exact classifier
    xi = x.clone().requires_grad_(True)
    lp = torch.log_softmax(clf(xi, t), 1).gather(1, y[:, None]).sum()
    (g,) = torch.autograd.grad(lp, xi)
    torch.testing.assert_close(guided, s_u + scale * g)
    cg = ClassifierGuided(ExactScore(mix, proc), clf, y, scale)
    torch.testing.assert_close(cg(x, t), guided)


def test_guidance_is_parametrisation_free(mix):
    """CFG on an eps-predicting net equals CFG on scores."""
    proc = VP()
    exact = ExactConditional(mix, CLASSES, proc)

    def eps_net(x, t, y):
        return -proc.sigma(t)[:, None] * exact.raw(x, t, y)

    m = ConditionalScoreModel(eps_net, proc, 3, prediction="eps")
    x, t, y = _batch()
    torch.testing.assert_close(m.bind(y, 2.5)(x, t), exact.bind(y, 2.5)(x, t))
    torch.testing.assert_close(m.bind(y, 2.5).x0(x, t), exact.bind(y, 2.5).x0(x, t))
    torch.testing.assert_close(m(x, t, y), exact(x, t, y))


@pytest.mark.parametrize("sampler,steps", [("heun", 25), ("ddim", 40), ("pc", 150)])
def test_conditional_sampling_recovers_its_class(mix, sampler, steps):
    proc = VP()
    cond = ExactConditional(mix, CLASSES, proc)
    y = torch.arange(3).repeat(100)
    g = torch.Generator().manual_seed(1)
    r = sample_conditional(cond, y, sampler, steps, g, batch_size=128, dtype=torch.float64)
    assert r.x.shape == (300, 2) and r.info["chunks"] == 3
    post = mix.responsibilities(r.x)  # p(component | x), exact
    p_class = torch.stack([post[:, :2].sum(1), post[:, 2], post[:, 3]], 1)
    hit = p_class.gather(1, y[:, None])[:, 0]
    assert float(hit.mean()) >= 0.99


def test_guidance_scale_sharpens_and_classifier_guidance_matches(mix):
    proc = VP()
    cond, clf = ExactConditional(mix, CLASSES, proc), ExactClassifier(mix, CLASSES, proc)
    y = torch.zeros(200, dtype=torch.long)
    g = torch.Generator().manual_seed(2)
    a = sample_conditional(cond, y, "heun", 20, g, scale=3.0, dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    b = sample_conditional(
        ExactScore(mix, proc), y, "heun", 20, g, scale=3.0, classifier=clf, dtype=torch.float64
    )
    torch.testing.assert_close(a.x, b.x)  # same guided score, same deterministic sampler
    assert a.nfe == 40
    # scale 0 ignores the label: both classes appear
    g = torch.Generator().manual_seed(3)
    u = sample_conditional(cond, y, "heun", 20, g, scale=0.0, dtype=torch.float64)
    post = mix.responsibilities(u.x)
    assert 0.3 < float(post[:, :2].sum(1).mean()) < 0.7


def test_bad_input(mix):
    proc = VP()
    cond = ExactConditional(mix, CLASSES, proc)
    x, t, y = _batch(8)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\]"):
        cond.bind(torch.full((8,), 4))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        sample_conditional(cond, torch.tensor([0, 3]), "heun", 2)
    with pytest.raises(ValueError, match="labels must be integer"):
        check_labels("labels", torch.tensor([0.5]), 3)
    with pytest.raises(ValueError, match="needs a ConditionalScoreModel, got the unconditional"):
        sample_conditional(ExactScore(mix, proc), y, "heun", 2)
    with pytest.raises(ValueError, match="classifier-free guidance needs a ConditionalScore"):
        GuidedScoreModel(ExactScore(mix, proc), y)
    no_null = ConditionalScoreModel(lambda x, t, y: x, proc, 3, null_label=False)
    with pytest.raises(ValueError, match="label dropout"):
        no_null.bind(y, 2.0)
    no_null.bind(y, 1.0)  # plain conditional is fine
    with pytest.raises(ValueError, match="bound to 8 labels but x has batch size 4"):
        cond.bind(y)(x[:4], t[:4])
    clf = ExactClassifier(mix, CLASSES, proc)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\] for a classifier"):
        ClassifierGuided(ExactScore(mix, proc), clf, torch.full((8,), 5))(x, t)
    assert isinstance(cond.bind(y), ScoreModel)


def _energy_model(mix, proc):
    """The exact conditional as an energy, -log p_t(x | y) (null label: the whole mixture)."""
    _, parts = class_mixtures(mix, CLASSES)
    parts = parts + [mix]

    def energy(x, t, y):
        a, s = proc.marginal(t)
        out = torch.empty(x.shape[0], dtype=x.dtype)
        for c in torch.unique(y).tolist():
            i = y == c
            out[i] = -parts[c].noised_log_prob(x[i], a[i], s[i])
        return out

    return ConditionalScoreModel(energy, proc, 3, prediction="energy", data_shape=(2,))


SETTINGS = {  # sampler -> (steps, options), cheap
    "langevin": (200, {"step_size": 0.02}),
    "mala": (200, {"step_size": 0.02}),
    "annealed_langevin": (5, {}),
    "dopri5": (1, {"rtol": 1e-3, "atol": 1e-3}),
    "pc": (30, {}),
    "euler_maruyama": (50, {}),
    "reverse_diffusion": (50, {}),
    "ddpm": (30, {}),
}


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_takes_a_guidance_scale(mix, sampler):
    proc = VP()
    steps, opts = SETTINGS.get(sampler, (15, {}))
    model = _energy_model(mix, proc) if sampler == "mala" else ExactConditional(mix, CLASSES, proc)
    y = torch.arange(3).repeat(20)
    g = torch.Generator().manual_seed(0)
    r = sample_conditional(model, y, sampler, steps, g, scale=2.0, dtype=torch.float64, **opts)
    post = mix.responsibilities(r.x)
    p_class = torch.stack([post[:, :2].sum(1), post[:, 2], post[:, 3]], 1)
    assert float(p_class.gather(1, y[:, None]).mean()) > 0.99


def test_energy_guidance_matches_score_guidance(mix):
    proc = VP()
    x, t, y = _batch(16)
    e, s = _energy_model(mix, proc), ExactConditional(mix, CLASSES, proc)
    torch.testing.assert_close(e.bind(y, 3.0)(x, t), s.bind(y, 3.0)(x, t))

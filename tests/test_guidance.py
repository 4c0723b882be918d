"""Guidance as model wrappers that read the conditioning, against a mixture whose
components are the classes, through the one sampling loop."""

import pytest
import torch

from scorekit import VP, ExactScore, GaussianMixture, ScoreModel, sample
from scorekit.guidance import (
    ClassifierFreeGuidance,
    ClassifierGuided,
    ExactClassifier,
    ExactConditional,
    check_labels,
    class_mixtures,
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


def _hit(mix, x, y):
    post = mix.responsibilities(x)  # p(component | x), exact
    p_class = torch.stack([post[:, :2].sum(1), post[:, 2], post[:, 3]], 1)
    return float(p_class.gather(1, y[:, None]).mean())


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
    torch.testing.assert_close(cond(x, t, y=y), s_c)
    torch.testing.assert_close(cond(x, t), s_u)  # no label: the null label, the whole mixture
    guided = ClassifierFreeGuidance(cond, scale)(x, t, y=y)
    w = scale - 1.0
    torch.testing.assert_close(guided, (1 + w) * s_c - w * s_u)
    # Bayes: s_u + scale * grad log p_t(y | x), the gradient by autograd of the exact classifier
    xi = x.clone().requires_grad_(True)
    lp = torch.log_softmax(clf(xi, t), 1).gather(1, y[:, None]).sum()
    (g,) = torch.autograd.grad(lp, xi)
    torch.testing.assert_close(guided, s_u + scale * g)
    cg = ClassifierGuided(ExactScore(mix, proc), clf, scale)
    torch.testing.assert_close(cg(x, t, y=y), guided)


def test_guidance_is_parametrisation_free(mix):
    """CFG on an eps-predicting net equals CFG on scores."""
    proc = VP()
    exact = ExactConditional(mix, CLASSES, proc)

    def eps_net(x, t, y=None):
        return -proc.sigma(t)[:, None] * exact.raw(x, t, y)

    m = ScoreModel(eps_net, proc, prediction="eps")
    m.num_classes = 3
    x, t, y = _batch()
    cfg_m, cfg_e = ClassifierFreeGuidance(m, 2.5), ClassifierFreeGuidance(exact, 2.5)
    torch.testing.assert_close(cfg_m(x, t, y=y), cfg_e(x, t, y=y))
    torch.testing.assert_close(cfg_m.x0(x, t, y=y), cfg_e.x0(x, t, y=y))
    torch.testing.assert_close(m(x, t, y=y), exact(x, t, y=y))


@pytest.mark.parametrize("sampler,steps", [("heun", 25), ("ddim", 40), ("pc", 150)])
def test_conditional_sampling_recovers_its_class(mix, sampler, steps):
    proc = VP()
    cond = ExactConditional(mix, CLASSES, proc)
    y = torch.arange(3).repeat(100)
    g = torch.Generator().manual_seed(1)
    r = sample(cond, 300, sampler, steps, g, batch_size=128, dtype=torch.float64, cond={"y": y})
    assert r.x.shape == (300, 2) and r.info["chunks"] == 3
    assert _hit(mix, r.x, y) >= 0.99


def test_guidance_scale_sharpens_and_classifier_guidance_matches(mix):
    proc = VP()
    cond, clf = ExactConditional(mix, CLASSES, proc), ExactClassifier(mix, CLASSES, proc)
    y = {"y": torch.zeros(200, dtype=torch.long)}
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    a = sample(ClassifierFreeGuidance(cond, 3.0), 200, "heun", 20, g(2), dtype=torch.float64,
               cond=y)  # fmt: skip
    guided = ClassifierGuided(ExactScore(mix, proc), clf, 3.0)
    b = sample(guided, 200, "heun", 20, g(2), dtype=torch.float64, cond=y)
    torch.testing.assert_close(a.x, b.x)  # same guided score, same deterministic sampler
    assert a.nfe == 40
    # scale 0 ignores the label: both classes appear
    u = sample(ClassifierFreeGuidance(cond, 0.0), 200, "heun", 20, g(3), dtype=torch.float64,
               cond=y)  # fmt: skip
    post = mix.responsibilities(u.x)
    assert 0.3 < float(post[:, :2].sum(1).mean()) < 0.7


def test_bad_input(mix):
    proc = VP()
    x, t, y = _batch(8)
    with pytest.raises(ValueError, match="labels must be integer"):
        check_labels("labels", torch.tensor([0.5]), 3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        check_labels("labels", torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match="class-conditional model"):
        ClassifierFreeGuidance(ExactScore(mix, proc), 2.0)
    with pytest.raises(ValueError, match="scale"):
        ClassifierFreeGuidance(ExactConditional(mix, CLASSES, proc), float("nan"))
    clf = ExactClassifier(mix, CLASSES, proc)
    with pytest.raises(ValueError, match=r"y must have shape \(B,\) = \(8,\)"):
        ClassifierGuided(ExactScore(mix, proc), clf)(x, t, y=y[:4])
    with pytest.raises(ValueError, match=r"cond\['y'\] must have the batch size 8"):
        sample(ExactConditional(mix, CLASSES, proc), 8, "heun", 2, cond={"y": y[:3]})


def _energy_model(mix, proc):
    """The exact conditional as an energy, -log p_t(x | y) (null label: the whole mixture)."""
    _, parts = class_mixtures(mix, CLASSES)
    parts = parts + [mix]

    def energy(x, t, y=None):
        a, s = proc.marginal(t)
        every = torch.stack([-gm.noised_log_prob(x, a, s) for gm in parts])
        y = torch.full((x.shape[0],), 3) if y is None else y
        return every.gather(0, y[None])[0]

    model = ScoreModel(energy, proc, prediction="energy", data_shape=(2,))
    model.num_classes = 3
    return model


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
    r = sample(ClassifierFreeGuidance(model, 2.0), 60, sampler, steps, g, dtype=torch.float64,
               cond={"y": y}, **opts)  # fmt: skip
    assert _hit(mix, r.x, y) > 0.99


def test_energy_guidance_matches_score_guidance(mix):
    proc = VP()
    x, t, y = _batch(16)
    e, s = _energy_model(mix, proc), ExactConditional(mix, CLASSES, proc)
    got = ClassifierFreeGuidance(e, 3.0)(x, t, y=y)
    torch.testing.assert_close(got, ClassifierFreeGuidance(s, 3.0)(x, t, y=y))


# -- autoguidance --------------------------------------------------------------------


def _gauss(std, dim=1):
    return GaussianMixture([1.0], [[0.0] * dim], stds=std)


@pytest.mark.parametrize("w", [0.0, 1.0, 2.0, 3.5])
def test_autoguidance_of_gaussians_follows_the_closed_form_flow(w):
    """Main N(0, 1), guide N(0, s0^2) under EDM: the guided score is -x a(sigma) with
    a = w / (1 + sigma^2) + (1 - w) / (s0^2 + sigma^2), so the probability-flow ODE
    dx/dsigma = sigma a(sigma) x has x(s1) = x(s0) exp(-[w/2 ln(1+s^2) + (1-w)/2
    ln(s0^2+s^2)] from s1 to s0); Heun on 1000 steps matches it to 1e-4 (its error is
    1e-5 to 3e-5 there)."""
    from scorekit import EDM, AutoGuidance, time_grid

    proc, s0 = EDM(), 1.5
    m = AutoGuidance(ExactScore(_gauss(1.0), proc), ExactScore(_gauss(s0), proc), w)
    grid = time_grid(proc, 1000, "karras")
    hi, lo = float(grid[0]), float(grid[-1])
    x_T = hi * torch.randn(256, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = sample(m, 256, "heun", grid=grid, x_T=x_T).x

    def prim(s):
        return 0.5 * (
            w * torch.log1p(torch.tensor(s**2)) + (1 - w) * torch.log(torch.tensor(s0**2 + s**2))
        )

    want = x_T * torch.exp(prim(lo) - prim(hi)).double()
    torch.testing.assert_close(x, want, rtol=1e-4, atol=1e-8)


def test_autoguidance_is_the_combination_in_every_parametrisation(mix):
    from scorekit import AutoGuidance

    proc = VP()
    main, wide = ExactScore(mix, proc), ExactScore(_gauss(2.0, 2), proc)

    def eps_net(x, t):  # the guide as an eps-predicting network
        return -proc.sigma(t)[:, None] * wide.raw(x, t)

    guide = ScoreModel(eps_net, proc, prediction="eps")
    x, t, _ = _batch()
    s1, s0 = main(x, t), wide(x, t)
    for w in (0.0, 1.0, 2.5):
        g = AutoGuidance(main, guide, w)
        torch.testing.assert_close(g(x, t), s0 + w * (s1 - s0))
        torch.testing.assert_close(
            g.x0(x, t), guide.x0(x, t) + w * (main.x0(x, t) - guide.x0(x, t))
        )
    torch.testing.assert_close(AutoGuidance(main, guide, 1.0)(x, t), s1)
    torch.testing.assert_close(AutoGuidance(main, guide, 0.0)(x, t), s0)


def test_autoguidance_passes_labels_only_to_a_conditional_guide(mix):
    from scorekit import AutoGuidance

    proc = VP()
    cond = ExactConditional(mix, CLASSES, proc)
    x, t, y = _batch()
    # a conditional guide gets the labels: guided by itself, the model is unchanged
    torch.testing.assert_close(AutoGuidance(cond, cond, 3.0)(x, t, y=y), cond(x, t, y=y))
    # an unconditional guide is called without them
    uncond = ExactScore(mix, proc)
    want = uncond(x, t) + 3.0 * (cond(x, t, y=y) - uncond(x, t))
    torch.testing.assert_close(AutoGuidance(cond, uncond, 3.0)(x, t, y=y), want)


def test_autoguidance_refuses_mismatches(mix):
    from scorekit import VE, AutoGuidance

    m = ExactScore(mix, VP())
    with pytest.raises(ValueError, match="guide must use the model's process"):
        AutoGuidance(m, ExactScore(mix, VE()), 2.0)
    with pytest.raises(ValueError, match="guide must model the same data shape"):
        AutoGuidance(m, ExactScore(_gauss(1.0, 3), VP()), 2.0)
    with pytest.raises(ValueError, match="guide must be a scorekit ScoreModel"):
        AutoGuidance(m, lambda x, t: x, 2.0)
    with pytest.raises(ValueError, match="scale"):
        AutoGuidance(m, m, float("nan"))


def test_autoguidance_of_energy_models_combines_energies(mix):
    """Two energy models: the guided model is an energy model, E0 + w (E1 - E0), whose
    score is the same combination of scores."""
    from scorekit import AutoGuidance

    proc = VP()
    wide = _gauss(2.0, 2)

    def energy_of(target):
        def energy(x, t):
            a, s = proc.marginal(t)
            return -target.noised_log_prob(x, a, s)

        return ScoreModel(energy, proc, "energy", (2,))

    e1, e0 = energy_of(mix), energy_of(wide)
    g = AutoGuidance(e1, e0, 2.5)
    assert g.prediction == "energy"
    x, t, _ = _batch()
    torch.testing.assert_close(
        g.energy(x, t), e0.energy(x, t) + 2.5 * (e1.energy(x, t) - e0.energy(x, t))
    )
    want = ExactScore(wide, proc)(x, t) + 2.5 * (
        ExactScore(mix, proc)(x, t) - ExactScore(wide, proc)(x, t)
    )
    torch.testing.assert_close(g(x, t), want)
    # an energy model guided by a score model combines scores
    mixed = AutoGuidance(e1, ExactScore(wide, proc), 2.5)
    assert mixed.prediction == "score"
    torch.testing.assert_close(mixed(x, t), want)

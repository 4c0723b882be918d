"""Short trainings on a 2-D mixture: every loss must move a network's score toward the exact
score (mean squared score error down by at least 5x)."""

import pytest
import torch

from scorekit import EDM, VE, VP, EDMPrecond, ExactScore, GaussianMixture, ScoreModel
from scorekit.losses import dsm, esm, ism, make_objective, ssm, ssm_vr

TARGET = GaussianMixture([0.4, 0.6], [[-1.5, 0.0], [1.0, 1.0]], stds=[0.4, 0.6])


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _mlp(d_in, d_out, width=64, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(d_in, width), torch.nn.SiLU(),
        torch.nn.Linear(width, width), torch.nn.SiLU(),
        torch.nn.Linear(width, d_out),
    )  # fmt: skip


class _CondNet(torch.nn.Module):
    """net(x, t) for noise-conditional models; ``t`` enters as a feature."""

    def __init__(self, d_out=2, seed=0, feature=torch.log1p):
        super().__init__()
        self.f = _mlp(3, d_out, seed=seed)
        self.feature = feature

    def forward(self, x, t):
        out = self.f(torch.cat([x, self.feature(t)[:, None].to(x)], 1))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _train(loss_fn, params, steps, lr=5e-3, batch=256, seed=0):
    opt = torch.optim.Adam(params, lr=lr)
    g = _gen(seed)
    for _ in range(steps):
        x = TARGET.sample(batch, generator=g, dtype=torch.float32)
        loss = loss_fn(x, g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


# -- one noise level ----------------------------------------------------------------------
LOSSES = {
    "esm": lambda net, x, g: esm(net, x, TARGET.score(x)),
    "ism_exact": lambda net, x, g: ism(net, x),
    "ism_hutchinson": lambda net, x, g: ism(
        net, x, trace="hutchinson", probe="rademacher", n_probes=2, generator=g
    ),
    "ssm": lambda net, x, g: ssm(net, x, n_projections=2, generator=g),
    "ssm_vr": lambda net, x, g: ssm_vr(net, x, generator=g),
}


@pytest.mark.parametrize("name", list(LOSSES) + ["dsm"])
def test_single_level_losses_learn_the_score(name):
    net = _mlp(2, 2, seed=1)
    sigma = 0.25
    x_eval = TARGET.sample(2000, generator=_gen(99), dtype=torch.float32)
    if name == "dsm":
        x_eval = x_eval + sigma * torch.randn(x_eval.shape, generator=_gen(98))
        exact = TARGET.noised_score(x_eval, 1.0, sigma)

        def loss_fn(x, g):
            return dsm(net, x, sigma, generator=g)
    else:
        exact = TARGET.score(x_eval)

        def loss_fn(x, g):
            return LOSSES[name](net, x, g)

    def err():
        with torch.no_grad():
            return float(((net(x_eval) - exact) ** 2).sum(1).mean())

    before = err()
    _train(loss_fn, net.parameters(), steps=300)
    after = err()
    assert after < before / 5, (name, before, after)


# -- noise-conditional objectives ----------------------------------------------------------
def _cond_setup(name):
    if name == "ncsn":
        process = VE(0.05, 5.0)
        model = ScoreModel(_CondNet(seed=2), process, prediction="eps")
        return process, model, torch.tensor([0.2, 0.4, 0.6, 0.8]), {"levels": 8}
    if name == "edm":
        process = EDM(0.002, 80.0)
        raw = _CondNet(seed=2, feature=lambda c: c)
        model = ScoreModel(EDMPrecond(raw, process, sigma_data=1.0), process, prediction="x0")
        return process, model, torch.tensor([0.1, 0.3, 1.0, 3.0]), {"sigma_data": 1.0}
    process = VP()
    model = ScoreModel(_CondNet(seed=2), process, prediction="eps")
    return process, model, torch.tensor([0.1, 0.3, 0.5, 0.7]), {}


@pytest.mark.parametrize(
    "name", ["dsm", "ncsn", "likelihood", "ddpm", "edm", "min_snr", "ssm", "ism"]
)
def test_objectives_learn_the_noised_scores(name):
    process, model, t_levels, kw = _cond_setup(name)
    if name == "ism":
        kw = {"trace": "exact"}
    objective = make_objective(name, process, **kw)
    exact = ExactScore(TARGET, process)
    g = _gen(97)
    x0 = TARGET.sample(2000, generator=g, dtype=torch.float32)
    t_eval = t_levels.repeat_interleave(500)
    xt = process.add_noise(x0, t_eval, torch.randn(x0.shape, generator=g))
    sig = process.sigma(t_eval)[:, None]

    def err():  # squared score error in eps units: sigma^2 ||s_hat - s||^2
        with torch.no_grad():
            return float(((sig * (model(xt, t_eval) - exact(xt, t_eval))) ** 2).sum(1).mean())

    before = err()
    _train(lambda x, g: objective(model, x, generator=g), model.parameters(), steps=300)
    after = err()
    assert after < before / 5, (name, before, after)


# -- energy models ---------------------------------------------------------------------------
def test_energy_model_trained_by_ssm():
    net = _mlp(2, 1, seed=3)
    model = ScoreModel(lambda x, t: net(x).squeeze(-1), VE(), prediction="energy")
    x_eval = TARGET.sample(2000, generator=_gen(96), dtype=torch.float32)
    exact = TARGET.score(x_eval)

    def err():
        return float(((model(x_eval, 0.0).detach() - exact) ** 2).sum(1).mean())

    before = err()
    _train(
        lambda x, g: ssm(lambda y: model(y, 0.0), x, n_projections=2, generator=g),
        net.parameters(),
        steps=300,
    )
    after = err()
    assert after < before / 5, (before, after)


def test_energy_model_trained_by_dsm_objective():
    process = VP()
    model = ScoreModel(_CondNet(d_out=1, seed=4), process, prediction="energy")
    objective = make_objective("dsm", process)
    exact = ExactScore(TARGET, process)
    g = _gen(95)
    x0 = TARGET.sample(2000, generator=g, dtype=torch.float32)
    t_eval = torch.tensor([0.1, 0.3, 0.5, 0.7]).repeat_interleave(500)
    xt = process.add_noise(x0, t_eval, torch.randn(x0.shape, generator=g))
    sig = process.sigma(t_eval)[:, None]

    def err():
        with torch.no_grad():
            return float(((sig * (model(xt, t_eval) - exact(xt, t_eval))) ** 2).sum(1).mean())

    before = err()
    _train(lambda x, g: objective(model, x, generator=g), model.parameters(), steps=300)
    after = err()
    assert after < before / 5, (before, after)

"""The rectified-flow interpolant as a process, and the flow velocity as a prediction:
checked against the exact Gaussian-mixture targets (float64)."""

import torch

from scorekit import ExactScore, GaussianMixture, RectifiedFlow, ScoreModel
from scorekit.core.processes import from_config
from scorekit.likelihood import log_prob
from scorekit.samplers import sample

F64 = torch.float64


def _mix():
    return GaussianMixture(
        [0.3, 0.7],
        [[-1.5, 0.5], [1.0, -0.5]],
        covs=[[[0.3, 0.1], [0.1, 0.2]], [[0.25, 0], [0, 0.4]]],
    )


def test_closed_forms_match_autograd_and_the_inverses():
    p = RectifiedFlow()
    t = torch.linspace(0.01, 0.99, 50, dtype=F64, requires_grad=True)
    a, s = p.marginal(t)
    (da,) = torch.autograd.grad(a.sum(), t)
    (ds,) = torch.autograd.grad(s.sum(), t)
    torch.testing.assert_close(p.d_alpha(t), da)
    torch.testing.assert_close(p.d_sigma(t), ds)
    t = t.detach()
    torch.testing.assert_close(p.g2(t), 2 * p.sigma(t) ** 2 * (1 / t + 1 / (1 - t)))
    torch.testing.assert_close(p.t_of_ratio(p.ratio(t)), t)
    torch.testing.assert_close(p.t_of_log_snr(p.log_snr(t)), t)
    assert from_config(p.config()).config() == p.config()


def test_exact_velocity_satisfies_the_continuity_equation():
    # d/dt log p_t + div u + u . grad log p_t = 0 for the marginal velocity u of the flow
    mix, p = _mix(), RectifiedFlow()
    model = ExactScore(mix, p)
    x = mix.sample(64, torch.Generator().manual_seed(0)) * 0.8
    for tv in (0.1, 0.4, 0.8):
        h = 1e-5  # d/dt log p_t by a central difference of the exact log-density
        dlp = (model.log_prob(x, tv + h) - model.log_prob(x, tv - h)) / (2 * h)
        xr = x.clone().requires_grad_(True)
        u = model.velocity(xr, torch.tensor(tv, dtype=F64))
        div = sum(
            torch.autograd.grad(u[:, j].sum(), xr, retain_graph=True)[0][:, j] for j in range(2)
        )
        score = model.score(x, tv)
        resid = dlp + div + (u.detach() * score).sum(1)
        assert resid.abs().max() < 1e-6, (tv, resid.abs().max())


def test_velocity_is_eps_minus_x0_and_converts_both_ways():
    mix, p = _mix(), RectifiedFlow()
    model = ExactScore(mix, p)
    x = p.add_noise(
        mix.sample(32, torch.Generator().manual_seed(1)), 0.3, torch.randn(32, 2, dtype=F64)
    )
    torch.testing.assert_close(model.velocity(x, 0.3), model.eps(x, 0.3) - model.x0(x, 0.3))
    # a network that predicts the velocity gives back the same score, eps, x0 and v
    vel = ScoreModel(lambda z, t: model.velocity(z, t), p, prediction="velocity")
    for target in ("score", "eps", "x0", "v"):
        torch.testing.assert_close(vel.predict(x, 0.3, target), model.predict(x, 0.3, target))


def test_velocity_model_samples_and_gives_the_exact_likelihood():
    mix, p = _mix(), RectifiedFlow()
    exact = ExactScore(mix, p)
    vel = ScoreModel(lambda z, t: exact.velocity(z, t), p, prediction="velocity", data_shape=(2,))
    x = mix.sample(200, torch.Generator().manual_seed(2))
    r = log_prob(vel, x, prior=lambda z: exact.log_prob(z, p.t_max), rtol=1e-8, atol=1e-8)
    assert (r.log_prob - exact.log_prob(x, p.t_min)).abs().max() < 1e-4
    z = p.prior_sample((500, 2), torch.Generator().manual_seed(3), F64)
    for name in ("euler", "heun", "dpmpp_2m", "unipc"):
        a = sample(vel, x_T=z, sampler=name, steps=40).x
        b = sample(exact, x_T=z, sampler=name, steps=40).x
        torch.testing.assert_close(a, b)


def test_cli_trains_samples_and_scores_on_the_rectified_flow_process(tmp_path, capsys):
    import json

    from scorekit.app.cli import main

    run = tmp_path / "rf"
    argv = ["train", "--data", "moons", "--process", "rectified_flow", "--steps", "20",
            "--out", str(run), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    meta = json.loads((run / "checkpoint.json").read_text())
    assert meta["model"]["process"]["name"] == "RectifiedFlow"
    assert main(["sample", str(run), "--n", "50", "--sampler", "unipc", "--steps", "8"]) == 0
    capsys.readouterr()
    argv = ["likelihood", str(run), "--data", "moons", "--n", "20", "--method", "euler"]
    assert main([*argv, "--steps", "10"]) == 0
    assert "NLL" in capsys.readouterr().out

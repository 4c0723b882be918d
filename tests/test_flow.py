"""The rectified-flow interpolant as a process, and the flow velocity as a prediction:
checked against the exact Gaussian-mixture targets (float64)."""

import math

import pytest
import torch

from scorekit import VP, CosineVP, ExactScore, Gaussian, GaussianMixture, RectifiedFlow, ScoreModel
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


@pytest.mark.parametrize("p", [RectifiedFlow(), CosineVP(s=0.0), VP()], ids=repr)
def test_exact_velocity_satisfies_the_continuity_equation(p):
    # d/dt log p_t + div u + u . grad log p_t = 0 for the marginal velocity u of each
    # interpolant: the linear path, the cosine path alpha = cos(pi t/2) and VP
    mix = _mix()
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


# -- the conditional flow-matching objective ------------------------------------------------
def test_flow_matching_loss_is_the_gamma_squared_weighted_eps_loss():
    from scorekit.core.weighting import FlowMatchingWeighting
    from scorekit.losses import DiffusionLoss, FlowMatchingLoss

    mix, p = _mix(), RectifiedFlow()
    model = ExactScore(mix, p)
    x = mix.sample(400, torch.Generator().manual_seed(4))
    t = torch.rand(400, generator=torch.Generator().manual_seed(5), dtype=F64) * 0.99 + 0.005
    fm = FlowMatchingLoss(p)(model, x, t=t, generator=torch.Generator().manual_seed(6))
    # the same residual in eps space, weighted by gamma^2 = 1/(1 - t)^2 (Kingma & Gao 2023)
    eps_loss = DiffusionLoss(p, weighting=FlowMatchingWeighting(), prediction_target="eps")
    ref = eps_loss(model, x, t=t, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(fm, ref, rtol=1e-10, atol=1e-12)
    # and by hand: 1/2 |u_hat - (eps - x0)|^2 with the same noise
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(6), dtype=F64)
    xt = (1 - t)[:, None] * x + t[:, None] * eps
    hand = 0.5 * ((model.velocity(xt, t) - (eps - x)) ** 2).sum(1)
    torch.testing.assert_close(fm, hand, rtol=1e-10, atol=1e-12)


def test_exact_velocity_is_the_minimiser_of_the_flow_matching_loss():
    # L(u* + d) - L(u*) = 1/2 |d|^2 + E[d . (u* - u)], and E[u | x_t] = u* makes the cross
    # term vanish: checked against 4 standard errors of its Monte-Carlo estimate
    from scorekit.losses import FlowMatchingLoss

    mix, p = _mix(), RectifiedFlow()
    exact = ExactScore(mix, p)
    d = torch.tensor([0.05, -0.03], dtype=F64)
    shifted = ScoreModel(lambda z, t: exact.velocity(z, t) + d, p, prediction="velocity")
    n = 40_000
    x = mix.sample(n, torch.Generator().manual_seed(7))
    loss = FlowMatchingLoss(p)
    a = loss(exact, x, generator=torch.Generator().manual_seed(8))
    b = loss(shifted, x, generator=torch.Generator().manual_seed(8))
    cross = b - a - 0.5 * (d**2).sum()
    assert cross.mean().abs() < 4 * cross.std() / math.sqrt(n), cross.mean()
    assert (b.mean() - a.mean()) > 0.4 * (d**2).sum()


def test_logit_normal_times_follow_their_law():
    from scorekit.core.weighting import LogitNormalT

    p, law = RectifiedFlow(), LogitNormalT(0.3, 0.8)
    t = law.sample(p, 20_000, torch.Generator().manual_seed(9), F64).sort().values
    assert p.t_min <= float(t[0]) and float(t[-1]) <= p.t_max
    # Kolmogorov-Smirnov against the exact CDF Phi((logit t - m)/s) (truncation < 1e-8 here)
    z = (torch.log(t / (1 - t)) - 0.3) / 0.8
    cdf = 0.5 * torch.erfc(-z / math.sqrt(2))
    ecdf = torch.arange(1, len(t) + 1, dtype=F64) / len(t)
    assert (cdf - ecdf).abs().max() < 1.36 / math.sqrt(len(t))  # 95 % level
    # the density integrates to one and is the derivative of the CDF
    grid = torch.linspace(p.t_min, p.t_max, 20_001, dtype=F64)
    assert abs(float(torch.trapezoid(law.pdf(p, grid), grid)) - 1) < 1e-6
    tt = torch.tensor([0.2, 0.5, 0.9], dtype=F64, requires_grad=True)
    zz = (torch.log(tt / (1 - tt)) - 0.3) / 0.8
    (dcdf,) = torch.autograd.grad((0.5 * torch.erfc(-zz / math.sqrt(2))).sum(), tt)
    torch.testing.assert_close(law.pdf(p, tt.detach()), dcdf, rtol=1e-6, atol=0)


def test_ot_pairing_is_the_exact_assignment():
    from scorekit.losses import ot_pairing

    g = torch.Generator().manual_seed(10)
    x, e = (
        torch.randn(64, 1, generator=g, dtype=F64) * 2 + 1,
        torch.randn(64, 1, generator=g, dtype=F64),
    )
    paired = ot_pairing(x, e)
    # in 1-D the optimal assignment for a squared cost is monotone: rank to rank
    torch.testing.assert_close(paired[x[:, 0].argsort(), 0], e[:, 0].sort().values)
    x, e = torch.randn(32, 3, generator=g, dtype=F64), torch.randn(32, 3, generator=g, dtype=F64)
    paired = ot_pairing(x, e)
    assert sorted(paired[:, 0].tolist()) == sorted(e[:, 0].tolist())  # a permutation
    cost = lambda a: float(((x - a) ** 2).sum())  # noqa: E731
    best = cost(paired)
    for _ in range(200):  # no random permutation does better
        assert best <= cost(e[torch.randperm(32, generator=g)]) + 1e-12


def test_flow_matching_options_and_refusals():
    from scorekit.core.weighting import LogitNormalT, UniformT
    from scorekit.losses import FlowMatchingLoss, make_objective

    assert isinstance(make_objective("flow_matching", RectifiedFlow()).t_sampler, UniformT)
    fm = make_objective("flow_matching", RectifiedFlow(), t_sampler="logit_normal", coupling="ot")
    assert isinstance(fm.t_sampler, LogitNormalT) and fm.coupling == "ot"
    with pytest.raises(ValueError, match="coupling"):
        FlowMatchingLoss(coupling="sinkhorn")
    with pytest.raises(ValueError, match="t_sampler"):
        FlowMatchingLoss(t_sampler="beta")
    model = ExactScore(_mix(), RectifiedFlow())
    x = torch.zeros(4, 2, dtype=F64)
    with pytest.raises(ValueError, match="noise must have the shape"):
        fm(model, x, noise=torch.zeros(4, 3, dtype=F64))
    # given pairs are used as they are: the loss is a function of (x0, noise, t) only
    n = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    t = torch.full((4,), 0.5, dtype=F64)
    a, b = fm(model, x, t=t, noise=n), fm(model, x, t=t, noise=n, generator=torch.Generator())
    torch.testing.assert_close(a, b)


def test_euler_is_exact_in_one_step_on_a_straight_coupling():
    # the rectified flow of N(mu, s^2 I) from N(0, I) has the straight coupling
    # x0 = mu + s z; its velocity u = z - x0 with z = (x - (1 - t) mu)/((1 - t) s + t)
    # is constant along each line, so one Euler step from t_max to 0 lands on x0 exactly,
    # while the independent coupling's marginal flow (the 1-rectified flow) is curved
    from scorekit.metrics import straightness

    mu, s, p = torch.tensor([1.0, -2.0], dtype=F64), 0.5, RectifiedFlow()

    def straight(x, t):
        t = t.reshape(-1, 1)
        z = (x - (1 - t) * mu) / ((1 - t) * s + t)
        return z - (mu + s * z)

    model = ScoreModel(straight, p, prediction="velocity", data_shape=(2,))
    z = torch.randn(100, 2, dtype=F64, generator=torch.Generator().manual_seed(11))
    tm = p.t_max
    x_T = (1 - tm) * (mu + s * z) + tm * z
    grid = torch.tensor([tm, 0.0], dtype=F64)
    out = sample(model, x_T=x_T, sampler="euler", grid=grid)
    torch.testing.assert_close(out.x, mu + s * z, rtol=0, atol=1e-12)
    assert out.nfe == 1
    st = straightness(model, x_T=x_T, steps=50)
    assert st.value < 1e-20
    # the 1-rectified flow of the same target (independent coupling) is not straight
    one_rf = ExactScore(Gaussian(mu, std=s), p)
    curved = straightness(one_rf, x_T=x_T, steps=50)
    assert curved.value > 1e-3
    one = sample(one_rf, x_T=x_T, sampler="euler", grid=grid).x
    fine = sample(one_rf, x_T=x_T, sampler="heun", steps=200).x
    assert (one - fine).pow(2).mean() > 1e-3


def test_reflow_pairs_of_a_gaussian_are_its_straight_coupling():
    # the 1-rectified flow of N(mu, s^2 I) maps eps to mu + s eps (both ends Gaussian, the
    # map affine); the pairs reflow draws must be that coupling, and the flow-matching loss
    # of the straight velocity on them (given as noise=) is zero up to the solver's error
    from scorekit.losses import FlowMatchingLoss
    from scorekit.train.reflow import reflow_data, reflow_pairs

    mu, s, p = torch.tensor([1.0, -2.0], dtype=F64), 0.5, RectifiedFlow()
    teacher = ExactScore(Gaussian(mu, std=s), p)
    x0, noise = reflow_pairs(
        teacher, 300, "heun", 200, torch.Generator().manual_seed(12), batch_size=128, dtype=F64
    )
    z = p.prior_sample((300, 2), torch.Generator().manual_seed(12), F64)
    torch.testing.assert_close(noise, z / p.t_max)  # the prior draw, standardised
    # the ODE starts at t_max, not 1: the map there is affine with slope ~ s up to 1e-3
    assert (x0 - (mu + s * noise)).abs().max() < 5e-3

    def straight(x, t):
        t = t.reshape(-1, 1)
        e = (x - (1 - t) * mu) / ((1 - t) * s + t)
        return e - (mu + s * e)

    model = ScoreModel(straight, p, prediction="velocity")
    x, cond = reflow_data(x0, noise)
    loss = FlowMatchingLoss(p)(model, x, generator=torch.Generator().manual_seed(13), **cond)
    ref = FlowMatchingLoss(p)(model, x, generator=torch.Generator().manual_seed(13))
    assert loss.mean() < 1e-4 < ref.mean()
    with pytest.raises(ValueError, match="deterministic"):
        reflow_pairs(teacher, 4, "euler_maruyama")


def test_cli_flow_matching_defaults_options_and_reflow(tmp_path, capsys):
    import json

    from scorekit.app.cli import main

    run = tmp_path / "rf"
    argv = [
        "train",
        "--data",
        "moons",
        "--n",
        "500",
        "--process",
        "rectified_flow",
        "--steps",
        "30",
        "--coupling",
        "ot",
        "--time-law",
        "logit_normal",
        "--out",
        str(run),
        "--quiet",
    ]
    assert main(argv) == 0
    cli = json.loads((run / "checkpoint.json").read_text())["cli"]
    assert (cli["loss"], cli["prediction"]) == ("flow_matching", "velocity")
    assert cli["loss_kwargs"] == {"coupling": "ot", "t_sampler": "logit_normal"}
    bad = ["train", "--data", "moons", "--coupling", "ot", "--out", str(tmp_path / "x")]
    assert main(bad) == 1
    assert "--coupling is an option of the flow-matching loss" in capsys.readouterr().err
    student = tmp_path / "reflow"
    argv = ["reflow", str(run), "--out", str(student), "--pairs", "200", "--sample-steps", "5",
            "--steps", "20", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert "200 pairs (heun, 5 steps)" in capsys.readouterr().out
    assert (student / "pairs.safetensors").is_file()
    meta = json.loads((student / "checkpoint.json").read_text())
    assert meta["cli"]["reflow"]["pairs"] == 200 and meta["step"] == 20
    # the pairs are read back on --resume; other settings are refused, as is a second run
    assert main([*argv[:-3], "--steps", "30", "--resume", "--quiet"]) == 0
    assert json.loads((student / "checkpoint.json").read_text())["step"] == 30
    assert main([*argv[:4], "--pairs", "100", "--steps", "40", "--resume"]) == 1
    assert "holds pairs drawn otherwise" in capsys.readouterr().err
    assert main(argv) == 1
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--out", str(student), "--resume"]) == 1
    assert "is a reflow run" in capsys.readouterr().err
    assert main(["reflow", str(student), "--out", str(student)]) == 1
    assert "teacher's run folder" in capsys.readouterr().err
    edm = tmp_path / "edm"
    assert main(["train", "--data", "moons", "--n", "200", "--steps", "2", "--out", str(edm),
                 "--quiet"]) == 0  # fmt: skip
    assert main(["reflow", str(edm), "--out", str(tmp_path / "r2")]) == 1
    assert "reflow needs a rectified-flow velocity model" in capsys.readouterr().err
    assert main(["evaluate", str(student), "--data", "moons", "--n", "100", "--no-nll",
                 "--quiet"]) == 0  # fmt: skip
    assert json.loads((student / "evaluate.json").read_text())["straightness"] >= 0

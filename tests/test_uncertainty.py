"""EDM2's learned per-sigma weighting: u starts at 0 (the loss is the per-coordinate base
loss), its minimiser is the log of the mean per-coordinate loss at each sigma (checked
against the closed form of a Gaussian's posterior variance), and the Trainer trains,
saves and resumes its parameters."""

import json
import math

import pytest
import torch

from scorekit import EDM, EDMPrecond, ExactScore, GaussianMixture, ScoreModel, nets
from scorekit.losses import Dequantized, UncertaintyWeighted, make_objective
from scorekit.train import TrainConfig, Trainer
from scorekit.train.checkpoint import load_checkpoint


def _model(process, seed=0):
    torch.manual_seed(seed)
    return ScoreModel(EDMPrecond(nets.MLP(2, hidden=16, depth=1), process, 1.0), process, "x0")


def test_starts_as_the_per_coordinate_base_loss():
    process = EDM()
    base = make_objective("edm", process, sigma_data=1.0)
    obj = UncertaintyWeighted(base).double()
    model = _model(process).double()
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = base.sample_t(64, torch.Generator().manual_seed(1), torch.float64)
    want = base(model, x, t=t, generator=torch.Generator().manual_seed(2)) / 2
    got = obj(model, x, t=t, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(got, want, rtol=1e-14, atol=0)
    assert torch.all(obj.log_variance(t) == 0)


def test_learned_log_variance_is_the_log_mean_loss_per_sigma():
    # Gaussian data N(0, s^2 I) in D = 2: the exact denoiser leaves the posterior variance
    # s^2 sigma^2/(s^2 + sigma^2) per coordinate, so the per-coordinate EDM loss has mean
    # 1/2 w(sigma) s^2 sigma^2/(s^2 + sigma^2), w = (sigma^2 + sd^2)/(sigma sd)^2; u must
    # learn its log at every sigma (measured: within 0.01)
    s, sd = 0.8, 1.0
    process = EDM()
    gm = GaussianMixture([1.0], [[0.0, 0.0]], stds=s)
    exact = ExactScore(gm, process)
    obj = UncertaintyWeighted(make_objective("edm", process, sigma_data=sd)).double()
    sigmas = torch.tensor([0.02, 0.1, 0.5, 2.0, 10.0], dtype=torch.float64)
    want = torch.log(0.5 * (sigmas**2 + sd**2) / (sigmas * sd) ** 2 * s**2 * sigmas**2
                     / (s**2 + sigmas**2))  # fmt: skip
    opt = torch.optim.Adam(obj.parameters(), lr=0.05)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 600)
    g = torch.Generator().manual_seed(0)
    t = process.t_of_sigma(sigmas).repeat_interleave(400)
    for _ in range(600):
        x = gm.sample(len(t), generator=g).double()
        loss = obj(exact, x, t=t, generator=g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
    got = obj.log_variance(process.t_of_sigma(sigmas)).detach()
    assert torch.all((got - want).abs() < 0.03), (got, want)
    curve = obj.weighting_curve(sigmas)
    assert curve["weight"] == pytest.approx([math.exp(-u) for u in got.tolist()], rel=1e-6)


def test_trainer_trains_saves_and_resumes_the_weighting(tmp_path):
    process = EDM()
    data = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))

    def trainer(steps, out):
        obj = UncertaintyWeighted(make_objective("edm", process, sigma_data=1.0))
        cfg = TrainConfig(steps=steps, batch_size=32, log_every=5, ckpt_every=5, progress=False)
        return Trainer(_model(process), obj, data, cfg, out_dir=out)

    full = trainer(10, tmp_path / "a")
    full.fit()
    w = full.objective.linear.weight.detach().clone()
    assert w.abs().sum() > 0  # the optimiser moved it
    tensors, _ = load_checkpoint(tmp_path / "a" / "checkpoint.safetensors")
    torch.testing.assert_close(tensors["objective.linear.weight"], w)
    half = trainer(5, tmp_path / "b")
    half.fit()
    again = trainer(10, tmp_path / "b")
    again.resume()
    again.fit()
    torch.testing.assert_close(again.objective.linear.weight, w, rtol=0, atol=0)
    for k, v in full.model.state_dict().items():
        torch.testing.assert_close(again.model.state_dict()[k], v, rtol=0, atol=0)


def test_resume_refuses_a_changed_objective(tmp_path):
    process = EDM()
    data = torch.randn(64, 2)
    cfg = TrainConfig(steps=2, batch_size=16, progress=False)
    learned = UncertaintyWeighted(make_objective("edm", process, sigma_data=1.0))
    Trainer(_model(process), learned, data, cfg, out_dir=tmp_path).fit()
    plain = Trainer(_model(process), make_objective("edm", process, sigma_data=1.0), data, cfg,
                    out_dir=tmp_path)  # fmt: skip
    with pytest.raises(ValueError, match="learned objective state"):
        plain.resume()


def test_a_learned_weighting_under_a_plain_wrapper_is_refused():
    process = EDM()
    inner = UncertaintyWeighted(make_objective("edm", process, sigma_data=1.0))
    with pytest.raises(ValueError, match="wrap it last"):
        Trainer(_model(process), Dequantized(inner, 0.1), torch.randn(64, 2),
                TrainConfig(steps=1, batch_size=16, progress=False))  # fmt: skip
    with pytest.raises(ValueError, match="already a learned weighting"):
        UncertaintyWeighted(inner)


def test_cli_trains_a_learned_weighting_and_plots_it(tmp_path, capsys):
    from scorekit.app.cli import main

    run = tmp_path / "run"
    common = ["--data", "moons", "--n", "500", "--batch", "64", "--quiet", "--out", str(run)]
    assert main(["train", *common, "--steps", "20", "--weighting", "learned"]) == 0
    curve = json.loads((run / "weighting.json").read_text())
    assert curve["step"] == 20 and len(curve["sigma"]) == len(curve["u"]) == 64
    assert any(u != 0 for u in curve["u"])  # trained, not the zero start
    assert (run / "weighting.png").stat().st_size > 1000
    assert main(["train", *common, "--steps", "30", "--resume"]) == 0  # keeps "learned"
    assert json.loads((run / "weighting.json").read_text())["step"] == 30
    capsys.readouterr()
    assert main(["train", *common, "--steps", "40", "--resume", "--weighting", "fixed"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--weighting fixed" in err[0] and "learned" in err[0]
    # a fixed run over it removes the old curve
    assert main(["train", *common, "--steps", "10", "--overwrite"]) == 0
    assert not (run / "weighting.json").exists() and not (run / "weighting.png").exists()

"""Post-hoc EMA (EDM2): the power profile and its width, the running average against its
exact profile, the reconstruction of an unseen width from stored snapshots, and the
Trainer's snapshots across a resume."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from scorekit import VP, ScoreModel, nets
from scorekit.losses import make_objective
from scorekit.train import TrainConfig, Trainer
from scorekit.train.posthoc import (
    PowerEMA,
    gamma_to_sigma_rel,
    posthoc_coefficients,
    power_profile,
    reconstruct,
    sigma_rel_to_gamma,
    snapshots,
)


@pytest.mark.parametrize("sigma_rel", [0.01, 0.05, 0.1, 0.2, math.sqrt(1 / 12)])
def test_gamma_and_width(sigma_rel):
    gamma = sigma_rel_to_gamma(sigma_rel)
    assert gamma_to_sigma_rel(gamma) == pytest.approx(sigma_rel, rel=1e-10)
    # the width is the std of the profile over its length (discrete profile, long run)
    t = 20_000
    w = power_profile(gamma, t, t)
    tau = np.arange(1, t + 1) - 0.5  # the middle of each unit interval
    mean = (w * tau).sum()
    std = math.sqrt((w * (tau - mean) ** 2).sum())
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    assert std / t == pytest.approx(sigma_rel, rel=1e-3)


def test_edm2_widths():
    # EDM2's two tracked profiles (their Table/Appendix: gamma 16.97 and 6.94)
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.01)
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)


@pytest.mark.parametrize("bad", [0.0, -0.1, 0.3, float("nan"), "0.1", True])
def test_bad_width(bad):
    with pytest.raises(ValueError, match="sigma_rel must be a number in"):
        sigma_rel_to_gamma(bad)


def test_running_average_is_the_exact_profile():
    torch.manual_seed(0)
    net = nn.Linear(3, 2).double()
    ema = PowerEMA(net, 0.1)
    thetas = []
    for _ in range(40):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        thetas.append(torch.cat([p.detach().flatten() for p in net.parameters()]).clone())
        ema.update(net)
    w = torch.as_tensor(power_profile(ema.gamma, 40, 40))
    want = (w[:, None] * torch.stack(thetas)).sum(0)
    got = torch.cat([p.flatten() for p in ema.module.parameters()])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert ema.updates == 40
    # a skipped update changes nothing
    before = got.clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net, torch.tensor(False))
    assert torch.equal(torch.cat([p.flatten() for p in ema.module.parameters()]), before)
    assert ema.updates == 40


def test_coefficients_of_a_stored_profile_are_a_unit_vector():
    gammas = [sigma_rel_to_gamma(0.05), sigma_rel_to_gamma(0.1)] * 3
    updates = [100, 100, 200, 200, 300, 300]
    x, err = posthoc_coefficients(gammas, updates, gammas[3], 200)
    assert err < 1e-6 and np.allclose(x, np.eye(6)[3], atol=1e-5)
    # an unseen width between the two, at the last step: a close fit
    x, err = posthoc_coefficients(gammas, updates, sigma_rel_to_gamma(0.075), 300)
    assert err < 0.05 and x.sum() == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ValueError, match="same length"):
        posthoc_coefficients(gammas, updates[:2], 1.0, 10)


def _trainer(out, widths, steps=24, every=4):
    torch.manual_seed(0)
    process = VP()
    model = ScoreModel(nets.MLP(2, hidden=16, depth=1), process, "eps")
    data = torch.randn(256, 2, generator=torch.Generator().manual_seed(1))
    cfg = TrainConfig(steps=steps, batch_size=32, lr=1e-2, progress=False, posthoc_ema=widths,
                      posthoc_every=every, ckpt_every=1000, log_every=1000)  # fmt: skip
    return Trainer(model, make_objective("dsm", process), data, cfg, out)


def _flat(state, model):
    return torch.cat([state[k].flatten() for k, _ in model.named_parameters()])


def test_reconstruction_matches_the_average_it_was_not_told(tmp_path):
    a = _trainer(tmp_path / "a", (0.05, 0.10), steps=60, every=6)
    a.fit()
    b = _trainer(tmp_path / "b", (0.075,), steps=60, every=6)
    b.fit()  # the same training (same seed, same draws): only the averages differ
    assert torch.equal(_flat(a.model.state_dict(), a.model), _flat(b.model.state_dict(), b.model))
    assert [m["step"] for _, m in snapshots(tmp_path / "a" / "posthoc")] == list(range(6, 61, 6))
    state, info = reconstruct(tmp_path / "a" / "posthoc", 0.075)
    assert info["step"] == 60 and info["snapshots"] == 10 and info["fit_error"] < 0.05
    want = _flat(b.posthoc[0].module.state_dict(), a.model)
    got = _flat(state, a.model)
    moved = (want - _flat(a.posthoc[1].module.state_dict(), a.model)).abs().max()
    err = (got - want).abs().max()
    assert err < 0.1 * moved, (float(err), float(moved))  # far closer than the other widths
    # a stored width at a stored step comes back as it was
    state, info = reconstruct(tmp_path / "a" / "posthoc", 0.10, step=60)
    torch.testing.assert_close(
        _flat(state, a.model), _flat(a.posthoc[1].module.state_dict(), a.model), rtol=0, atol=1e-5
    )
    earlier, info = reconstruct(tmp_path / "a" / "posthoc", 0.10, step=30)
    assert info["step"] == 30 and info["snapshots"] == 5
    with pytest.raises(ValueError, match=r"--step 31: the snapshots are at steps 6, 12, 18"):
        reconstruct(tmp_path / "a" / "posthoc", 0.10, step=31)
    with pytest.raises(ValueError, match="no post-hoc EMA snapshots in"):
        reconstruct(tmp_path, 0.1)


def test_snapshots_survive_a_resume_bit_for_bit(tmp_path):
    whole = _trainer(tmp_path / "whole", (0.05, 0.10), steps=24)
    whole.fit()
    part = _trainer(tmp_path / "part", (0.05, 0.10), steps=12)
    part.fit()
    saved = tmp_path / "at12.safetensors"
    shutil.copy(part.checkpoint_path, saved)
    more = _trainer(tmp_path / "part", (0.05, 0.10), steps=16)
    more.resume()
    more.fit()  # a snapshot at step 16 that the resume below must drop
    shutil.copy(saved, part.checkpoint_path)
    again = _trainer(tmp_path / "part", (0.05, 0.10), steps=24)
    again.resume()
    assert [m["step"] for _, m in snapshots(tmp_path / "part" / "posthoc")] == [4, 8, 12]
    again.fit()
    mine, theirs = (
        snapshots(tmp_path / "part" / "posthoc"),
        snapshots(tmp_path / "whole" / "posthoc"),
    )
    assert [m for _, m in mine] == [m for _, m in theirs]
    from scorekit.train.checkpoint import load_checkpoint

    for (p, _), (q, _) in zip(mine, theirs, strict=True):
        tp, tq = load_checkpoint(p)[0], load_checkpoint(q)[0]
        assert tp.keys() == tq.keys() and all(torch.equal(tp[k], tq[k]) for k in tp)
    changed = _trainer(tmp_path / "part", (0.05,), steps=30)
    with pytest.raises(ValueError, match=r"keeps post-hoc EMA widths \[0.05, 0.1\], but this run"):
        changed.resume()


def test_config_checks():
    with pytest.raises(ValueError, match="sigma_rel must be a number in"):
        TrainConfig(posthoc_ema=[0.5])
    with pytest.raises(ValueError, match="posthoc_ema must be a list of widths sigma_rel"):
        TrainConfig(posthoc_ema=0.1)
    assert TrainConfig(posthoc_ema=(0.05, 0.1)).posthoc_ema == [0.05, 0.1]


def test_cli_posthoc_ema(tmp_path, capsys):
    import json

    from scorekit.app.cli import main

    run = tmp_path / "run"
    base = ["train", "--data", "moons", "--n", "300", "--batch", "32", "--out", str(run)]
    flags = ["--posthoc-ema", "0.05,0.1", "--posthoc-every", "5", "--val-fraction", "0.2"]
    assert main([*base, "--steps", "20", *flags]) == 0
    assert "post-hoc EMA widths 0.05,0.1" in capsys.readouterr().out
    assert [m["step"] for _, m in snapshots(run / "posthoc")] == [5, 10, 15, 20]
    capsys.readouterr()
    assert main(["ema", str(run), "--sigma-rel", "0.03,0.08"]) == 0
    out = capsys.readouterr().out
    assert "sigma_rel 0.03 (gamma" in out and "validation loss" in out
    assert "lowest validation loss: sigma_rel" in out
    meta = json.loads((run / "ema-0.08.json").read_text())
    assert meta["posthoc_ema"]["sigma_rel"] == 0.08 and meta["step"] == 20
    assert np.isfinite(meta["posthoc_ema"]["val_loss"])
    s = ["sample", str(run / "ema-0.08.safetensors"), "--n", "5", "--steps", "2"]
    assert main([*s, "--out", str(tmp_path / "s.npy")]) == 0
    capsys.readouterr()
    cases = [
        (["ema", str(run), "--sigma-rel", "0.08"], "ema-0.08.safetensors exist(s); pass"),
        (["ema", str(run), "--sigma-rel", "0.5"], "--sigma-rel '0.5': expected comma-separated"),
        (["ema", str(run), "--sigma-rel", "0.1,0.2", "--out", str(tmp_path / "x.safetensors")],
         "--out names one file, but --sigma-rel asks for 2 widths"),
        (["ema", str(tmp_path), "--sigma-rel", "0.1"], "expected a run folder with a checkpoint"),
        ([*base, "--steps", "30", "--resume", "--posthoc-ema", "0.1"],
         "--posthoc-ema 0.1: the run in"),
        ([*base, "--steps", "30", "--posthoc-ema", "x", "--out", str(tmp_path / "r2")],
         "--posthoc-ema 'x': expected comma-separated widths"),
    ]  # fmt: skip
    for argv, msg in cases:
        assert main(argv) == 1, argv
        assert msg in capsys.readouterr().err, argv
    plain = tmp_path / "plain"
    assert (
        main(["train", "--data", "moons", "--n", "100", "--steps", "2", "--out", str(plain)]) == 0
    )
    capsys.readouterr()
    assert main(["ema", str(plain), "--sigma-rel", "0.1"]) == 1
    assert "has no post-hoc EMA snapshots (OUT/posthoc)" in capsys.readouterr().err
    # the overwrite of a run removes its snapshots with it
    assert main([*base, "--steps", "3", "--overwrite", "--quiet"]) == 0
    assert snapshots(run / "posthoc") == []


def test_a_stopped_run_snapshots_its_last_step_and_a_new_run_refuses_old_snapshots(tmp_path):
    trainer = _trainer(tmp_path / "r", (0.05, 0.10), steps=20, every=5)
    trainer.cfg.log_every = 7
    trainer.callbacks = [lambda tr, record: tr.request_stop()]
    trainer.fit()
    assert trainer.step == 7
    assert [m["step"] for _, m in snapshots(tmp_path / "r" / "posthoc")] == [5, 7]
    _, info = reconstruct(tmp_path / "r" / "posthoc", 0.08)
    assert info["step"] == 7
    fresh = _trainer(tmp_path / "r", (0.05, 0.10), steps=20, every=5)
    with pytest.raises(ValueError, match="holds post-hoc EMA snapshots of another run"):
        fresh.fit()
    assert [m["step"] for _, m in snapshots(tmp_path / "r" / "posthoc")] == [5, 7]


def test_cli_posthoc_edges(tmp_path, capsys):
    from scorekit.app.cli import main

    run = tmp_path / "run"
    base = ["train", "--data", "moons", "--n", "200", "--batch", "16", "--quiet"]
    assert main([*base, "--steps", "6", "--posthoc-every", "2", "--out", str(run)]) == 1
    assert "--posthoc-every needs --posthoc-ema" in capsys.readouterr().err
    flags = ["--posthoc-ema", "0.05,0.1", "--posthoc-every", "10", "--out", str(run)]
    assert main([*base, "--steps", "40", *flags]) == 0
    capsys.readouterr()
    argv = ["ema", str(run), "--sigma-rel", "0.01,0.1", "--step", "30", "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert (run / "ema-0.1-step30.safetensors").is_file() and "at step 30" in out
    assert "warning: the snapshots resolve sigma_rel 0.01 poorly" in out
    assert "sigma_rel 0.1 poorly" not in out
    (run / "checkpoint.safetensors").unlink()  # only the snapshots are left: still a run
    (run / "checkpoint.json").unlink()
    (run / "log.jsonl").unlink()
    assert main([*base, "--steps", "6", "--out", str(run)]) == 1
    assert "already holds a run (posthoc)" in capsys.readouterr().err
    assert main([*base, "--steps", "6", "--out", str(run), "--overwrite"]) == 0
    assert snapshots(run / "posthoc") == [] and not list(run.glob("ema-*"))

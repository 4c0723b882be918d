"""Held-out validation during training: a seeded split, the EMA model's validation loss on
fixed draws, the keep-best checkpoint, and their CLI flags."""

import json

import pytest
import torch

from scorekit import VP, ScoreModel, nets
from scorekit.losses import make_objective
from scorekit.train import TrainConfig, Trainer
from scorekit.train.checkpoint import load_checkpoint, prefixed
from scorekit.train.data import Dataset, Normalizer, split_validation


def _dataset(n=50, labels=True):
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    y = torch.arange(n) % 3 if labels else None
    return Dataset(x=x, normalizer=Normalizer(), name="toy", labels=y)


def test_split_is_seeded_disjoint_and_keeps_labels_with_their_examples():
    d = _dataset()
    tr, va = split_validation(d, 0.2, seed=3)
    assert (len(tr), len(va)) == (40, 10)
    rows = torch.cat([tr.x, va.x])
    assert torch.equal(rows[torch.argsort(rows[:, 0])], d.x[torch.argsort(d.x[:, 0])])
    for part in (tr, va):  # each row keeps its own label
        idx = [int((d.x == r).all(1).nonzero()) for r in part.x]
        assert torch.equal(part.labels, d.labels[idx])
    again = split_validation(d, 0.2, seed=3)[1]
    assert torch.equal(again.x, va.x)
    assert not torch.equal(split_validation(d, 0.2, seed=4)[1].x, va.x)
    for bad in (0.0, 1.0, 0.999):
        with pytest.raises(ValueError, match="fraction"):
            split_validation(d, bad)


def _trainer(steps, out=None, val_every=10, schedule="constant"):
    process = VP()
    data = torch.randn(512, 2, generator=torch.Generator().manual_seed(0)) * 0.5 + 1.0
    val = torch.randn(64, 2, generator=torch.Generator().manual_seed(1)) * 0.5 + 1.0
    torch.manual_seed(0)
    model = ScoreModel(nets.MLP(2, hidden=32, depth=2), process, "eps")
    cfg = TrainConfig(steps=steps, batch_size=64, log_every=10, ckpt_every=10_000, lr=3e-3,
                      schedule=schedule, val_every=val_every, progress=False)  # fmt: skip
    return Trainer(model, make_objective("dsm", process), data, cfg, out, val_data=val)


def test_validation_loss_is_logged_on_fixed_draws_and_the_best_is_kept(tmp_path):
    tr = _trainer(60, tmp_path)
    v0 = tr.validation_loss()
    assert tr.validation_loss() == v0  # the same draws at every call
    tr.fit()
    recs = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    vals = {r["val_step"]: r["val_loss"] for r in recs if "val_loss" in r}
    assert sorted(vals) == [10, 20, 30, 40, 50, 60]
    assert min(vals.values()) < v0  # training lowers it from the untrained model's
    step, best = min(vals.items(), key=lambda kv: kv[1])
    assert tr.best == (step, best)
    tensors, meta = load_checkpoint(tmp_path / "best.safetensors")
    assert meta["step"] == step and meta["best"] == {"step": step, "val_loss": best}
    # the kept weights are those of step `step`: a run stopped there has the same EMA
    short = _trainer(step)
    short.fit()
    for k, v in short.ema.module.state_dict().items():
        torch.testing.assert_close(prefixed(tensors, "ema")[k], v, rtol=0, atol=0)
    # and a resumed run remembers the best so far
    again = _trainer(80, tmp_path)
    again.resume()
    assert again.best == (step, best)


def test_val_data_must_fit_the_training_examples():
    process = VP()
    model = ScoreModel(nets.MLP(2, hidden=8, depth=1), process, "eps")
    with pytest.raises(ValueError, match="val_data"):
        cfg = TrainConfig(steps=1, batch_size=8, progress=False)
        obj = make_objective("dsm", process)
        Trainer(model, obj, torch.randn(32, 2), cfg, val_data=torch.randn(4, 3))
    with pytest.raises(ValueError, match="val_every"):
        TrainConfig(val_every=0)


def test_cli_validation_split_and_best_checkpoint(tmp_path, capsys):
    from scorekit.app.cli import main

    run = tmp_path / "run"
    common = ["--data", "moons", "--n", "400", "--batch", "32", "--quiet", "--out", str(run)]
    assert main(["train", *common, "--steps", "20", "--val-fraction", "0.1", "--val-every",
                 "10", "--log-every", "10"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "best validation loss" in out and "best.safetensors" in out
    meta = json.loads((run / "best.json").read_text())
    assert meta["best"]["step"] in (10, 20) and meta["cli"]["val_fraction"] == 0.1
    assert meta["data"]["shape"] == [2]
    assert main(["sample", str(run / "best.safetensors"), "--n", "8", "--steps", "3",
                 "--out", str(tmp_path / "s.npy")]) == 0  # fmt: skip
    capsys.readouterr()
    cases = [
        (["--steps", "30", "--resume", "--val-fraction", "0.2"], "--val-fraction 0.2"),
        (["--steps", "10", "--overwrite", "--val-every", "5"], "--val-every needs --val-fraction"),
        (["--steps", "10", "--overwrite", "--val-fraction", "1.5"], "--val-fraction must be"),
    ]
    for argv, msg in cases:
        assert main(["train", *common, *argv]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], err
    assert (run / "best.safetensors").exists()  # a refused command leaves the run as it was
    assert main(["train", *common, "--steps", "30", "--resume", "--log-every", "10"]) == 0
    assert json.loads((run / "checkpoint.json").read_text())["best"]["step"] in (10, 20, 30)

"""Faults during training: SIGKILL at random steps, stale temporary files, non-finite values."""

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from scorekit import VE, ScoreModel, make_objective
from scorekit.nets import MLP
from scorekit.train.checkpoint import load_checkpoint, save_checkpoint
from scorekit.train.data import load_data
from scorekit.train.trainer import NonFiniteLoss, TrainConfig, Trainer

ROOT = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("kill_resume", ROOT / "scripts/kill_resume.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkill_at_random_steps_then_resume_is_bit_identical(tmp_path):
    report = _script().kill_resume(tmp_path, kills=3, steps=200, ckpt_every=10, seed=3)
    assert report["bit_identical"] and report["tensors_compared"] > 20
    assert len(report["killed_at_logged_step"]) == 3
    # every kill left a loadable checkpoint at or before the step it was killed at
    for killed, ckpt in zip(
        report["killed_at_logged_step"], report["resumed_from_checkpoint_step"], strict=True
    ):
        assert ckpt % 10 == 0 and 0 < ckpt <= killed
    assert report["stale_temp_files"] == []


def _setup(steps, **kw):
    torch.manual_seed(0)
    data = load_data("8gaussians", n=256, generator=torch.Generator().manual_seed(1))
    process = VE(0.01, 4.0)
    model = ScoreModel(MLP(2, hidden=16, depth=2), process)
    cfg = TrainConfig(**{"steps": steps, "batch_size": 32, "warmup": 2, "progress": False, **kw})
    return model, make_objective("dsm", process), data, cfg


def test_stale_temporary_files_of_a_dead_writer_are_removed_on_resume(tmp_path):
    model, obj, data, cfg = _setup(4, ckpt_every=2)
    Trainer(model, obj, data.x, cfg, tmp_path).fit()
    # a pid that is surely not running: a child that has exited and been reaped
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    dead = tmp_path / f".checkpoint.safetensors.tmp{pid}"
    dead.write_bytes(b"half a checkpoint")
    alive = tmp_path / f".checkpoint.json.tmp{os.getppid()}"  # a live writer is left alone
    alive.write_bytes(b"{")
    model, obj, data, cfg = _setup(6, ckpt_every=2)
    tr = Trainer(model, obj, data.x, cfg, tmp_path)
    tr.resume()
    assert not dead.exists() and alive.exists()
    assert tr.last_checkpoint == (tmp_path / "checkpoint.safetensors", 4)


class _Poison:
    """DSM whose loss (``what="loss"``) or gradient (``what="grad"``) is non-finite on one call."""

    def __init__(self, process, bad_call, what):
        self.inner = make_objective("dsm", process)
        self.process, self.calls, self.bad_call, self.what = process, 0, bad_call, what

    def sample_t(self, *args, **kwargs):
        return self.inner.sample_t(*args, **kwargs)

    def __call__(self, model, x0, t=None, generator=None):
        self.calls += 1
        out = self.inner(model, x0, t=t, generator=generator)
        if self.calls != self.bad_call:
            return out
        if self.what == "loss":
            return out + float("inf")
        # a finite loss whose gradient is infinite
        return out + _inf_grad(next(model.parameters()))


def _inf_grad(w):
    """Zero in the forward pass, an infinite gradient for ``w`` in the backward pass."""

    class F(torch.autograd.Function):
        @staticmethod
        def forward(ctx, w):
            ctx.shape = w.shape
            return w.new_zeros(())

        @staticmethod
        def backward(ctx, g):
            return torch.full(ctx.shape, float("inf"))

    return F.apply(w)


@pytest.mark.parametrize("what", ["loss", "grad"])
def test_nonfinite_stop_names_step_sigma_range_and_last_good_checkpoint(tmp_path, what):
    model, obj, data, cfg = _setup(8, ckpt_every=3)
    tr = Trainer(model, _Poison(obj.process, 5, what), data.x, cfg, tmp_path)
    ckpt = tmp_path / "checkpoint.safetensors"
    pattern = (
        r"non-finite loss or gradient at step 5 \(batch sigma in \[[0-9.e-]+, [0-9.e-]+\]\); "
        rf"last good checkpoint {ckpt} \(step 3\)"
    )
    with pytest.raises(NonFiniteLoss, match=pattern):
        tr.fit()
    tensors, meta = load_checkpoint(ckpt)
    assert meta["step"] == 3
    assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())
    # before any checkpoint the message says so
    model, obj, data, cfg = _setup(8, ckpt_every=100)
    tr = Trainer(model, _Poison(obj.process, 2, what), data.x, cfg, tmp_path / "none")
    with pytest.raises(NonFiniteLoss, match="no checkpoint saved yet"):
        tr.fit()
    assert not (tmp_path / "none" / "checkpoint.safetensors").exists()


@pytest.mark.parametrize("what", ["loss", "grad"])
def test_nonfinite_skip_counts_skips_and_saves_only_finite_values(tmp_path, what):
    model, obj, data, cfg = _setup(8, ckpt_every=4, on_nonfinite="skip", log_every=4)
    poison = _Poison(obj.process, 3, what)
    out = Trainer(model, poison, data.x, cfg, tmp_path).fit()
    assert out == {**out, "step": 8, "skipped": 1}
    tensors, meta = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert meta["skipped"] == 1 and meta["ema"]["updates"] == 7
    assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())
    log = (tmp_path / "log.jsonl").read_text().splitlines()
    assert [json.loads(s)["skipped"] for s in log] == [1, 1]


def test_save_refuses_nonfinite_tensors_and_keeps_the_old_checkpoint(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"w": torch.ones(3)}, {"step": 1})
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="non-finite"):
            save_checkpoint(path, {"w": torch.tensor([1.0, bad, 0.0])}, {"step": 2})
    assert load_checkpoint(path)[1]["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "c.safetensors"]


def test_config_file_options_survive_a_net_flag_of_the_same_name(tmp_path):
    # the kill/resume runs pass --net mlp with --config {"net": {"hidden": 32}}: the first
    # run and every resume must build the same network
    from scorekit.app.cli import _settings, build_parser

    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"net": {"hidden": 32, "depth": 2}}))
    argv = ["train", "--net", "mlp", "--config", str(cfg)]
    s = _settings(build_parser().parse_args(argv), None)
    assert s["net"] == {"hidden": 32, "depth": 2, "name": "mlp"}
    stored = {**s, "net": {"name": "mlp", "hidden": 32, "depth": 2, "dim": 2}}
    assert _settings(build_parser().parse_args(argv), stored)["net"]["hidden"] == 32
    # options given for another network are dropped with the old name
    cfg.write_text(json.dumps({"net": {"name": "unet", "mults": [1, 2]}}))
    assert _settings(build_parser().parse_args(argv), None)["net"] == {"name": "mlp"}

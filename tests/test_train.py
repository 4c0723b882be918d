import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scorekit import VE, ScoreModel, make_objective
from scorekit.nets import MLP
from scorekit.train.checkpoint import load_checkpoint, load_model, save_checkpoint
from scorekit.train.data import load_data
from scorekit.train.ema import EMA
from scorekit.train.trainer import NonFiniteLoss, TrainConfig, Trainer

HERE = Path(__file__).resolve().parent


class SigmaDSM:
    """scorekit's sigma^2-weighted DSM objective, wrapped so tests can spy on or break it."""

    def __init__(self, process):
        self.process = process
        self.inner = make_objective("dsm", process)

    def sample_t(self, *args, **kwargs):
        return self.inner.sample_t(*args, **kwargs)

    def __call__(self, model, x0, t=None, generator=None):
        return self.inner(model, x0, t=t, generator=generator)


def _setup(steps=20, hidden=32, **kw):
    torch.manual_seed(0)
    data = load_data("8gaussians", n=1024, generator=torch.Generator().manual_seed(1))
    process = VE(0.01, 4.0)
    model = ScoreModel(MLP(2, hidden=hidden, depth=2), process)
    cfg = TrainConfig(**{"steps": steps, "batch_size": 64, "warmup": 5, "progress": False, **kw})
    return model, SigmaDSM(process), data, cfg


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_short_run_lowers_the_loss_and_logs_per_sigma(tmp_path):
    model, obj, data, cfg = _setup(steps=300, hidden=64, log_every=50, lr=3e-3)
    g = torch.Generator().manual_seed(5)
    x0 = data.x[:512]
    t = obj.sample_t(512, generator=g)
    with torch.no_grad():
        before = float(obj(model, x0, t=t, generator=torch.Generator().manual_seed(6)).mean())
    out = Trainer(model, obj, data.x, cfg, tmp_path, normalizer=data.normalizer).fit()
    with torch.no_grad():
        after = float(obj(model, x0, t=t, generator=torch.Generator().manual_seed(6)).mean())
    assert out["step"] == 300 and out["skipped"] == 0
    assert after < 0.8 * before
    lines = [json.loads(s) for s in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [50, 100, 150, 200, 250, 300]
    assert lines[-1]["loss"] < lines[0]["loss"]
    last = lines[-1]
    assert len(last["sigma_edges"]) == 9 and len(last["bucket_loss"]) == 8
    assert last["sigma_edges"][0] == pytest.approx(0.01)
    assert last["sigma_edges"][-1] == pytest.approx(4.0)
    assert sum(last["bucket_count"]) == 50 * 64
    # the bucket means average back to the overall mean
    total = sum(c * v for c, v in zip(last["bucket_count"], last["bucket_loss"], strict=True))
    assert total / sum(last["bucket_count"]) == pytest.approx(last["loss"])


def test_learning_rate_warmup_and_ema_warmup():
    model, obj, data, cfg = _setup(steps=1, lr=1e-2, warmup=4, ema_decay=0.99)
    tr = Trainer(model, obj, data.x, cfg)
    tr.fit()
    assert tr.opt.param_groups[0]["lr"] == pytest.approx(1e-2 / 4)
    net = torch.nn.Linear(3, 1)
    ema = EMA(net, decay=0.99)
    w0 = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net)  # beta_0 = min(0.99, 1/10)
    assert torch.allclose(ema.module.weight, 0.1 * w0 + 0.9 * (w0 + 1))
    assert ema.decay_at(1000) == 0.99 and ema.decay_at(0) == pytest.approx(0.1)
    assert EMA(net, 0.99, warmup=False).decay_at(0) == 0.99


def test_checkpoint_save_load_gives_identical_outputs(tmp_path):
    model, obj, data, cfg = _setup(steps=10)
    tr = Trainer(model, obj, data.x, cfg, tmp_path, normalizer=data.normalizer)
    tr.fit()
    path = tmp_path / "checkpoint.safetensors"
    assert path.exists() and (tmp_path / "checkpoint.json").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    x, t = torch.randn(7, 2), torch.rand(7)
    for ema, ref in ((True, tr.ema.module), (False, model)):
        loaded, normalizer, meta = load_model(path, ema=ema)
        assert torch.equal(loaded(x, t), ref(x, t))
    assert meta["step"] == 10 and meta["train"]["steps"] == 10
    assert torch.allclose(normalizer.loc, data.normalizer.loc)
    assert json.loads((tmp_path / "checkpoint.json").read_text())["step"] == 10


def test_checkpoint_writes_are_atomic_and_finite(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"w": torch.ones(2)}, {"step": 1})
    with pytest.raises(ValueError, match="non-finite.*'w'"):
        save_checkpoint(path, {"w": torch.tensor([1.0, float("nan")])}, {"step": 2})
    import scorekit.train.checkpoint as ck

    def boom(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"w": torch.zeros(2)}, {"step": 3})
    tensors, meta = load_checkpoint(path)
    assert meta["step"] == 1 and torch.equal(tensors["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "c.safetensors"]
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "junk.safetensors")
    with pytest.raises(ValueError, match="not found"):
        load_checkpoint(tmp_path / "none.safetensors")


def test_resume_is_bit_identical(tmp_path):
    model, obj, data, cfg = _setup(steps=24, log_every=4, ckpt_every=1000)
    full = Trainer(model, obj, data.x, cfg, tmp_path / "a")
    full.fit()

    model, obj, data, cfg = _setup(steps=10, log_every=4)
    Trainer(model, obj, data.x, cfg, tmp_path / "b").fit()
    with open(tmp_path / "b" / "log.jsonl", "a") as fh:  # as if killed while writing a line
        fh.write('{"step": 12, "loss"')
    model, obj, data, cfg = _setup(steps=24, log_every=4)
    torch.manual_seed(123)  # a different global RNG and init: resume must restore everything
    model = ScoreModel(MLP(2, hidden=32, depth=2), model.process)
    rest = Trainer(model, obj, data.x, cfg, tmp_path / "b")
    rest.resume()
    assert rest.step == 10
    rest.fit()
    assert torch.equal(_flat(full.model), _flat(rest.model))
    assert torch.equal(_flat(full.ema.module), _flat(rest.ema.module))
    sa, sb = full.opt.state_dict()["state"], rest.opt.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    la = (tmp_path / "a" / "log.jsonl").read_text().splitlines()
    lb = (tmp_path / "b" / "log.jsonl").read_text().splitlines()
    timing = ("steps_per_s", "elapsed")  # wall-clock fields differ between runs
    strip = [{k: v for k, v in json.loads(s).items() if k not in timing} for s in la]
    # the first run logged its end (step 10); the resumed run continues after it
    assert [json.loads(s)["step"] for s in lb] == [4, 8, 10, 12, 16, 20, 24]
    assert strip[-1] == {k: v for k, v in json.loads(lb[-1]).items() if k not in timing}


def test_resume_refuses_a_different_network(tmp_path):
    model, obj, data, cfg = _setup(steps=2)
    Trainer(model, obj, data.x, cfg, tmp_path).fit()
    other = ScoreModel(MLP(2, hidden=16, depth=2), model.process)
    with pytest.raises(ValueError, match="net config"):
        Trainer(other, obj, data.x, cfg, tmp_path).resume()


class _NaNAt(SigmaDSM):
    def __init__(self, process, bad_call):
        super().__init__(process)
        self.calls, self.bad_call = 0, bad_call

    def __call__(self, model, x0, t=None, generator=None):
        self.calls += 1
        out = super().__call__(model, x0, t=t, generator=generator)
        return out * float("nan") if self.calls == self.bad_call else out


def test_nonfinite_loss_stops_or_skips(tmp_path):
    model, obj, data, cfg = _setup(steps=6, ckpt_every=2)
    bad = _NaNAt(obj.process, bad_call=4)
    tr = Trainer(model, bad, data.x, cfg, tmp_path)
    with pytest.raises(NonFiniteLoss, match=r"step 4 \(batch sigma in \[0\.0\d+, [34]\.\d+\]\)"):
        tr.fit()
    tensors, meta = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert meta["step"] == 2  # the last good checkpoint is untouched

    model, obj, data, cfg = _setup(steps=6, on_nonfinite="skip")
    before = None
    bad = _NaNAt(obj.process, bad_call=4)
    tr = Trainer(model, bad, data.x, cfg, tmp_path / "skip")
    out = tr.fit()
    assert out["skipped"] == 1 and out["step"] == 6
    assert torch.isfinite(_flat(tr.model)).all()
    tensors, meta = load_checkpoint(tmp_path / "skip" / "checkpoint.safetensors")
    assert meta["skipped"] == 1 and meta["ema"]["updates"] == 5
    assert before is None


def test_trainer_rejects_bad_settings():
    model, obj, data, _ = _setup()
    with pytest.raises(ValueError, match="divisible"):
        Trainer(model, obj, data.x, TrainConfig(batch_size=10, accum=3))
    with pytest.raises(ValueError, match="on_nonfinite"):
        TrainConfig(on_nonfinite="ignore")
    with pytest.raises(ValueError, match="unknown training setting"):
        TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="N >= 1"):
        Trainer(model, obj, torch.zeros(0, 2), TrainConfig())


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["dsm", "adaptive"])
def test_two_process_ddp_matches_one_process(tmp_path, objective):
    # adaptive: AdaptiveSigma's statistics are summed over the processes once per step, so
    # both processes draw from the proposal one process with accum=2 draws from
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent / "src"), env.get("PYTHONPATH", "")])
    worker = str(HERE / "_ddp_worker.py")
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    r = subprocess.run(
        run + [worker, str(tmp_path), "1", objective], env=env, capture_output=True, timeout=240
    )
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    r = subprocess.run(
        [sys.executable, worker, str(tmp_path), "2", objective], env=env, capture_output=True
    )
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    p0, p1, single = (
        torch.load(tmp_path / f"params_rank{r}_of{w}.pt") for r, w in ((0, 2), (1, 2), (0, 1))
    )
    assert torch.equal(p0, p1)
    assert torch.allclose(p0, single, rtol=0, atol=1e-5)
    init = torch.load(tmp_path / "params_rank0_of1.pt")
    assert init.abs().max() > 0


def test_bf16_autocast_is_used_when_asked():
    seen = []

    class Spy(SigmaDSM):
        def __call__(self, model, x0, t=None, generator=None):
            seen.append(torch.is_autocast_enabled("cpu"))
            return super().__call__(model, x0, t=t, generator=generator)

    for bf16 in (False, True):
        model, obj, data, cfg = _setup(steps=3, bf16=bf16)
        before = _flat(model).clone()
        out = Trainer(model, Spy(obj.process), data.x, cfg).fit()
        assert torch.isfinite(torch.tensor(out["loss"]))
        assert not torch.equal(before, _flat(model))
        assert _flat(model).dtype == torch.float32
    assert seen == [False] * 3 + [True] * 3


def test_training_on_a_mixture_beats_an_untrained_model(mixture2d):
    samplers = pytest.importorskip("scorekit.samplers")
    metrics = pytest.importorskip("scorekit.metrics")
    g = torch.Generator().manual_seed(0)
    data = mixture2d.sample(4000, generator=g).float()
    process = VE(0.01, 8.0)
    torch.manual_seed(0)
    model = ScoreModel(MLP(2, hidden=64, depth=2), process, prediction="eps")
    untrained = ScoreModel(MLP(2, hidden=64, depth=2), process, prediction="eps")
    untrained.load_state_dict(model.state_dict())
    obj = SigmaDSM(process)
    cfg = TrainConfig(steps=400, batch_size=128, lr=3e-3, warmup=20, ema_decay=0.99, progress=False)
    trainer = Trainer(model, obj, data, cfg)
    x0, t = data[:1000], obj.sample_t(1000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = float(obj(untrained, x0, t=t, generator=torch.Generator().manual_seed(2)).mean())
    trainer.fit()
    with torch.no_grad():
        after = float(obj(model, x0, t=t, generator=torch.Generator().manual_seed(2)).mean())
    assert after < 0.7 * before
    ref = mixture2d.sample(1000, generator=torch.Generator().manual_seed(3)).float()

    def sw(m):
        x = samplers.sample(m, (1000, 2), sampler="heun", steps=25,
                            generator=torch.Generator().manual_seed(4)).x  # fmt: skip
        return float(metrics.sliced_wasserstein(x, ref, 128, torch.Generator().manual_seed(5)))

    trained_sw, untrained_sw = sw(trainer.ema.module), sw(untrained)
    assert trained_sw < 0.3 * untrained_sw, (trained_sw, untrained_sw)


def test_gradient_clipping_matches_torch():
    from scorekit.train.trainer import _clip_grad

    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 4), torch.nn.Linear(3, 4)
    b.load_state_dict(a.state_dict())
    x = torch.randn(5, 3)
    for m in (a, b):
        m(x).pow(2).sum().backward()
    norm = _clip_grad(list(a.parameters()), 0.1)
    ref = torch.nn.utils.clip_grad_norm_(list(b.parameters()), 0.1)
    assert norm == pytest.approx(float(ref), rel=1e-6) and norm > 0.1
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5)
    assert _clip_grad(list(a.parameters()), None) == pytest.approx(0.1, rel=1e-4)
    a.weight.grad[0, 0] = float("nan")
    before = a.bias.grad.clone()
    assert _clip_grad(list(a.parameters()), 0.01) != _clip_grad(list(a.parameters()), 0.01)
    assert torch.equal(a.bias.grad, before)  # nothing scaled when the norm is not finite


def test_a_dataloader_with_a_short_last_batch_trains_and_logs(tmp_path):
    # batches of 32 from 100 examples: the last of each pass holds 4
    model, obj, data, _ = _setup()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data.x[:100]), 32)
    cfg = TrainConfig(steps=8, batch_size=32, log_every=4, progress=False)
    out = Trainer(model, obj, loader, cfg, tmp_path).fit()
    assert out["step"] == 8 and out["skipped"] == 0
    counts = [sum(json.loads(s)["bucket_count"]) for s in (tmp_path / "log.jsonl").open()]
    assert counts == [32 * 3 + 4, 32 * 3 + 4]


def test_resume_takes_this_runs_optimizer_kernel(tmp_path):
    # a checkpoint whose optimizer was the multi-tensor AdamW resumes under the fused one
    model, obj, data, cfg = _setup(steps=4, ckpt_every=4)
    tr = Trainer(model, obj, data.x, cfg, tmp_path)
    tr.fit()
    tensors, meta = load_checkpoint(tmp_path / "checkpoint.safetensors")
    for g in meta["optim"]["param_groups"]:
        g["fused"], g["foreach"] = None, True
    save_checkpoint(tmp_path / "old.safetensors", tensors, {k: v for k, v in meta.items()
                                                           if k != "format"})  # fmt: skip
    model, obj, data, cfg = _setup(steps=6)
    again = Trainer(model, obj, data.x, cfg, tmp_path / "b")
    again.resume(tmp_path / "old.safetensors")
    assert again.fit()["step"] == 6


def test_cosine_schedule_and_time_budget():
    cfg = TrainConfig(steps=100, schedule="cosine", warmup=10, lr=1.0)
    assert cfg.learning_rate(0) == pytest.approx(0.1 * 0.5 * (1 + math.cos(0)))
    assert cfg.learning_rate(49) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.49)))
    assert cfg.learning_rate(99) < 1e-3
    timed = TrainConfig(steps=None, seconds=10.0, schedule="cosine", warmup=1, lr=1.0)
    assert timed.learning_rate(5, seconds=5.0) == pytest.approx(0.5)
    assert not timed.done(10**6, 9.9) and timed.done(3, 10.0)
    assert TrainConfig(schedule="constant", lr=0.3).learning_rate(0) == 0.3
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=None)
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="linear")
    model, obj, data, _ = _setup()
    seen = []
    cfg = TrainConfig(steps=None, seconds=0.5, log_every=5, progress=False)
    out = Trainer(model, obj, data.x, cfg, callbacks=[lambda tr, rec: seen.append(rec)]).fit()
    assert out["seconds"] >= 0.5 and out["step"] >= 1 and seen[-1]["step"] == out["step"]

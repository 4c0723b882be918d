"""``scorekit train --conditional`` and ``scorekit sample --label --guidance`` on digits."""

import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from scorekit.app.cli import build_parser, main
from scorekit.guidance import ClassifierFreeGuidance, num_classes_of
from scorekit.samplers import sample
from scorekit.train.checkpoint import load_checkpoint, load_model, save_checkpoint

NET = {"net": {"name": "mlp", "hidden": 32, "depth": 1, "emb_dim": 16}}
STEPS = ["--sampler", "heun", "--steps", "4", "--seed", "7"]


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def _train(out, *extra, steps=30):
    cfg = out.parent / "net.json"
    cfg.write_text(json.dumps(NET))
    # a schedule that does not depend on the budget, so that 20 + 10 steps = 30 steps
    argv = ["train", "--data", "digits", "--steps", str(steps), "--batch", "32", "--quiet"]
    argv += ["--schedule", "warmup"]
    argv += ["--log-every", "10", "--config", str(cfg), "--out", str(out), *extra]
    return main(argv)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cond") / "run"
    assert _train(out, "--conditional", "--label-dropout", "0.2") == 0
    return out


def test_train_writes_a_conditional_checkpoint(run):
    meta = json.loads((run / "checkpoint.json").read_text())
    assert meta["step"] == 30
    assert meta["cli"]["conditional"] == {"label_dropout": 0.2, "num_classes": 10}
    net = meta["model"]["net"]
    assert net["name"] == "mlp" and net["num_classes"] == 10  # the network takes y=
    assert meta["data_shape"] == [1, 8, 8]
    assert (run / "log.jsonl").read_text().count("\n") == 3
    model, normalizer, _ = load_model(run)  # one loader for every checkpoint
    assert num_classes_of(model) == 10 and model.data_shape == (1, 8, 8)
    assert meta["cli"]["recipe"] == "small-images" and model.prediction == "x0"  # EDM
    assert model.net.net.embed.labels.weight.shape[0] == 11  # 10 classes + the null label


def test_sample_a_class_with_guidance(run, tmp_path, capsys):
    out = tmp_path / "s.npy"
    argv = ["sample", str(run), "--label", "3", "--guidance", "2", "--n", "12", *STEPS]
    assert main([*argv, "--out", str(out)]) == 0
    assert "class 3, guidance 2" in capsys.readouterr().out
    x = np.load(out, allow_pickle=False)
    assert x.shape == (12, 1, 8, 8) and x.dtype == np.float64 and np.isfinite(x).all()
    assert (tmp_path / "s.png").stat().st_size > 1000
    # unconditional sampling through the null label, without --label
    assert main(["sample", str(run), "--n", "5", *STEPS, "--out", str(tmp_path / "u.npy")]) == 0
    assert "unconditional through the null label" in capsys.readouterr().out
    assert np.load(tmp_path / "u.npy").shape == (5, 1, 8, 8)


def test_the_guidance_scale_reaches_the_model(run, tmp_path):
    n, label = 6, 3

    def cli(*extra):
        out = tmp_path / f"g{len(list(tmp_path.iterdir()))}.npy"
        assert main(["sample", str(run), "--n", str(n), *STEPS, "--out", str(out), *extra]) == 0
        return torch.from_numpy(np.load(out, allow_pickle=False))

    g = {w: cli("--label", str(label), "--guidance", str(w)) for w in (0.0, 1.0, 3.0)}
    for a, b in ((0.0, 1.0), (1.0, 3.0), (0.0, 3.0)):
        assert (g[a] - g[b]).abs().max() > 1e-3, (a, b)
    assert torch.equal(cli("--label", str(label)), g[1.0])  # the default scale is 1

    model, normalizer, _ = load_model(run)
    labels = torch.full((n,), label)

    def lib(model, y):
        r = sample(model, n, "heun", 4, torch.Generator().manual_seed(7), cond={"y": y})
        return normalizer.decode(r.x.double())

    with torch.no_grad():
        # scale 1: the plain conditional model; scale 0: the null label's prediction
        torch.testing.assert_close(g[1.0], lib(model, labels), rtol=1e-6, atol=1e-6)
        null = torch.full((n,), num_classes_of(model))
        torch.testing.assert_close(g[0.0], lib(model, null), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(cli(), lib(model, null), rtol=1e-6, atol=1e-6)
        guided = lib(ClassifierFreeGuidance(model, 3.0), labels)
        torch.testing.assert_close(g[3.0], guided, rtol=1e-6, atol=1e-6)


def test_resume_continues_the_conditional_run_exactly(run, tmp_path, capsys):
    part = tmp_path / "part"
    assert _train(part, "--conditional", "--label-dropout", "0.2", steps=20) == 0
    # --resume keeps the stored settings: --conditional need not be repeated
    assert _train(part, "--resume", steps=30) == 0
    meta = json.loads((part / "checkpoint.json").read_text())
    assert meta["step"] == 30 and meta["cli"]["conditional"]["label_dropout"] == 0.2
    whole, resumed = load_checkpoint(run)[0], load_checkpoint(part)[0]
    for k in ("model.", "ema."):
        keys = sorted(t for t in whole if t.startswith(k))
        assert keys and all(torch.equal(whole[t], resumed[t]) for t in keys), k
    capsys.readouterr()
    # an unconditional run cannot be resumed as a conditional one
    plain = tmp_path / "plain"
    assert _train(plain, steps=2) == 0
    capsys.readouterr()
    assert _train(plain, "--resume", "--conditional", steps=4) == 1
    assert "holds an unconditional checkpoint" in _err(capsys)


def test_bad_conditional_requests_are_one_line_errors(run, tmp_path, capsys):
    moons = ["train", "--data", "moons", "--n", "50", "--steps", "2", "--quiet"]
    cases = [
        ([*moons, "--conditional"], "--conditional needs labelled data, but 'moons' has no labels"),
        ([*moons, "--label-dropout", "0.3"], "--label-dropout needs --conditional"),
        (
            ["train", "--data", "digits", "--conditional", "--label-dropout", "1.5"],
            "(--label-dropout) must lie in [0, 1], got 1.5",
        ),
    ]
    bad_cfg = tmp_path / "bad.json"
    bad_cfg.write_text(json.dumps({"conditional": {"dropout": 0.3}}))
    cases.append((["train", "--config", str(bad_cfg)], "must be true, false or {'label_dropout'"))
    for i, (argv, msg) in enumerate(cases):
        assert main([*argv, "--out", str(tmp_path / f"r{i}")]) == 1
        assert msg in _err(capsys)
        assert not (tmp_path / f"r{i}" / "checkpoint.safetensors").exists()

    plain = tmp_path / "plain"
    assert main([*moons, "--out", str(plain)]) == 0
    capsys.readouterr()
    out = ["--n", "4", "--steps", "2", "--out", str(tmp_path / "x.npy")]
    for argv, msg in [
        (["sample", str(plain), "--label", "1"], "--label needs a class-conditional checkpoint"),
        (["sample", str(plain), "--guidance", "2"], "--guidance needs a class-conditional"),
        (["sample", str(run), "--label", "10"], "--label must be a class in [0, 9]"),
        (["sample", str(run), "--label", "-1"], "--label must be a class in [0, 9]"),
        (["sample", str(run), "--guidance", "2"], "--guidance needs --label"),
        (
            ["sample", str(run), "--label", "2", "--guidance", "nan"],
            "--guidance must be a finite number",
        ),
    ]:
        assert main([*argv, *out]) == 1
        assert msg in _err(capsys), argv
    assert not (tmp_path / "x.npy").exists()


def test_edm_and_the_other_commands_take_conditional_runs(run, tmp_path, capsys):
    # EDM preconditioning passes the labels through to the network
    edm = tmp_path / "edm"
    assert _train(edm, "--conditional", "--loss", "edm", steps=4) == 0
    assert main(["sample", str(edm), "--label", "2", "--guidance", "2", "--n", "3", *STEPS,
                 "--out", str(tmp_path / "e.npy")]) == 0  # fmt: skip
    # the likelihood and the figures of a conditional model are unconditional (null label)
    capsys.readouterr()
    assert main(["likelihood", str(run), "--data", "digits", "--n", "3", "--rtol", "1e-2",
                 "--atol", "1e-2"]) == 0  # fmt: skip
    assert "NLL" in capsys.readouterr().out
    assert main(["plot", str(run), "--kind", "grid", "loss", "--n", "4", "--steps", "2",
                 "--out", str(tmp_path / "plots")]) == 0  # fmt: skip


def test_help_states_the_guidance_convention():
    sub = build_parser()._subparsers._group_actions[0].choices
    text = " ".join(sub["sample"].format_help().split())
    assert "1 (default) plain conditional, 0 unconditional" in text
    assert "null label" in text and "Ho & Salimans' w is W - 1" in text
    assert "--label-dropout" in sub["train"].format_help()


def test_load_model_refuses_tampered_conditional_checkpoints(run, tmp_path):
    tensors, meta = load_checkpoint(run)
    meta = {k: v for k, v in meta.items() if k != "format"}
    key = "ema.net.net.inp.weight"  # inside the EDM preconditioning
    assert tensors[key].shape == (32, 64)
    bad = tmp_path / "shape.safetensors"
    save_checkpoint(bad, {**tensors, key: torch.zeros(32, 65)}, meta)
    with pytest.raises(
        ValueError, match=re.escape(f"checkpoint {bad} does not match") + ".*" + key[4:]
    ):
        load_model(bad)
    missing = tmp_path / "missing.safetensors"
    save_checkpoint(missing, {k: v for k, v in tensors.items() if k != key}, meta)
    with pytest.raises(ValueError, match=re.escape(f"checkpoint {missing} does not match")):
        load_model(missing)
    # more classes in the config than rows in the label table
    wide = json.loads(json.dumps(meta))
    wide["model"]["net"]["num_classes"] = 10**9
    huge = tmp_path / "huge.safetensors"
    save_checkpoint(huge, tensors, wide)
    with pytest.raises(ValueError, match="does not match the network.*labels"):
        load_model(huge)
    # save_checkpoint refuses NaN: write the file as a damaged copy would look
    nan = tmp_path / "nan.safetensors"
    text = json.dumps({"format": "scorekit-checkpoint/1", **meta})
    damaged = {k: v.clone() for k, v in tensors.items()}
    damaged[key][0, 0] = float("nan")
    save_file(damaged, str(nan), metadata={"scorekit": text})
    with pytest.raises(ValueError, match=re.escape(f"checkpoint {nan} holds non-finite")):
        load_model(nan)
    load_model(nan, ema=False)  # the raw weights are intact


def test_teleport_with_a_label_follows_the_class_gaussian(run, tmp_path, capsys):
    from scorekit.samplers import GaussianTeleport
    from scorekit.train.data import load_data

    out = tmp_path / "tp.npy"
    argv = ["sample", str(run), "--label", "3", "--n", "5", "--sampler", "unipc_3", "--steps",
            "4", "--seed", "7", "--teleport", "5"]  # fmt: skip
    assert main([*argv, "--teleport-fit", "data", "--out", str(out)]) == 0
    assert "training examples of class 3 carries the start" in capsys.readouterr().out
    model, normalizer, _ = load_model(run)
    d = load_data("digits", split="train", normalize="none")
    tp = GaussianTeleport.fit(normalizer.encode(d.x.double())[d.labels == 3], 5.0, "unipc_3")
    with torch.no_grad():
        r = sample(model, 5, tp, 4, torch.Generator().manual_seed(7),
                   cond={"y": torch.full((5,), 3)})  # fmt: skip
    got = torch.from_numpy(np.load(out, allow_pickle=False))
    torch.testing.assert_close(got, normalizer.decode(r.x.double()), rtol=1e-5, atol=1e-5)
    # by default the class's Gaussian is fitted to the model given the label, no data
    fitted = tmp_path / "fit.npy"
    assert main([*argv, "--out", str(fitted)]) == 0
    assert "fitted to the model at sigma/alpha = 5 (1024 evaluations)" in capsys.readouterr().out
    tp = GaussianTeleport.from_model(model, (1, 8, 8), 5.0, "unipc_3", n=1024,
                                     cond={"y": torch.full((1024,), 3)},
                                     generator=torch.Generator().manual_seed(2000010))  # fmt: skip
    with torch.no_grad():
        r = sample(model, 5, tp, 4, torch.Generator().manual_seed(7),
                   cond={"y": torch.full((5,), 3)})  # fmt: skip
    got = torch.from_numpy(np.load(fitted, allow_pickle=False))
    torch.testing.assert_close(got, normalizer.decode(r.x.double()), rtol=1e-4, atol=1e-4)

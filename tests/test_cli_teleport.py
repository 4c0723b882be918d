"""``scorekit sample RUN --teleport SIGMA``: the first steps by the data's Gaussian."""

import json

import numpy as np
import pytest
import torch

from scorekit.app.cli import main
from scorekit.samplers import GaussianTeleport, sample
from scorekit.train.checkpoint import load_model
from scorekit.train.data import load_data

NET = {"net": {"name": "mlp", "hidden": 32, "depth": 1, "emb_dim": 16}}
STEPS = ["--sampler", "unipc_3", "--steps", "6", "--seed", "7", "--n", "6"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("teleport") / "run"
    cfg = out.parent / "net.json"
    cfg.write_text(json.dumps(NET))
    argv = ["train", "--data", "moons", "--n", "500", "--steps", "20", "--batch", "32"]
    assert main([*argv, "--seed", "3", "--quiet", "--config", str(cfg), "--out", str(out)]) == 0
    return out


def test_teleport_is_the_library_sampler_on_the_runs_data(run, tmp_path, capsys):
    out = tmp_path / "t.npy"
    argv = ["sample", str(run), *STEPS, "--teleport", "5", "--teleport-fit", "data"]
    assert main([*argv, "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "Gaussian of 500 training examples" in said and "teleported to 5, NFE 6" in said
    got = torch.from_numpy(np.load(out, allow_pickle=False))
    model, normalizer, _ = load_model(run)
    # the run's own training points: moons drawn with the run's seed (3)
    x = load_data("moons", n=500, generator=torch.Generator().manual_seed(3),
                  normalizer=normalizer).x.double()  # fmt: skip
    other = load_data("moons", n=500, generator=torch.Generator().manual_seed(0),
                      normalizer=normalizer).x.double()  # fmt: skip
    assert (x.mean(0) - other.mean(0)).abs().max() > 1e-3  # the seed matters
    tp = GaussianTeleport.fit(x, 5.0, "unipc_3")
    with torch.no_grad():
        r = sample(model, 6, tp, 6, torch.Generator().manual_seed(7))
    assert r.nfe == 6
    torch.testing.assert_close(got, normalizer.decode(r.x.double()), rtol=1e-6, atol=1e-6)
    plain = tmp_path / "p.npy"
    assert main(["sample", str(run), *STEPS, "--out", str(plain)]) == 0
    assert (got - torch.from_numpy(np.load(plain))).abs().max() > 1e-3


@pytest.mark.parametrize(
    "extra,msg",
    [
        (["--teleport", "1e9"], "must lie between this run's smallest and largest"),
        (["--teleport", "1e-5"], "must lie between this run's smallest and largest"),
        (["--teleport", "5", "--sampler", "langevin"], "--sampler langevin does not"),
        (["--teleport", "5", "--grid", "fitted"], "--teleport and --grid fitted do not combine"),
    ],
)
def test_bad_teleports_are_refused_in_one_line(run, tmp_path, capsys, extra, msg):
    out = tmp_path / "x.npy"
    assert main(["sample", str(run), "--n", "4", "--out", str(out), *extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("value", ["0", "-3", "nan", "inf", "abc"])
def test_a_teleport_level_that_is_not_a_positive_number_is_a_usage_error(run, capsys, value):
    assert main(["sample", str(run), "--n", "4", "--teleport", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "argument --teleport: expected a number > 0" in err[-1], err


def test_a_changed_training_file_is_refused(tmp_path, capsys):
    """The teleport re-reads the run's training file: another shape, or other examples of
    the same shape (the run's normalisation no longer fits them), are refused in one line."""
    pts = tmp_path / "pts.npy"
    g = np.random.default_rng(0)
    np.save(pts, g.normal([3.0, 0.0, 1.0], [1.0, 2.0, 0.5], size=(300, 3)))
    cfg = tmp_path / "net.json"
    cfg.write_text(json.dumps(NET))
    run = tmp_path / "run"
    argv = ["train", "--data", str(pts), "--steps", "5", "--batch", "32", "--quiet"]
    assert main([*argv, "--config", str(cfg), "--out", str(run)]) == 0
    out = tmp_path / "x.npy"
    base = ["sample", str(run), "--n", "4", "--steps", "4", "--teleport", "5", "--quiet",
            "--teleport-fit", "data"]  # fmt: skip
    base += ["--out", str(out)]
    assert main(base) == 0
    out.unlink()
    out.with_suffix(".png").unlink()
    for changed, msg in [
        (g.normal(size=(300, 4)), "no longer has examples of shape (3,)"),
        (100 * np.load(pts), "has changed since training"),
    ]:
        np.save(pts, changed)
        assert main(base) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], err
        assert not out.exists()


def test_the_default_teleport_is_fitted_to_the_model(run, tmp_path, capsys):
    """Without data: the Gaussian of GaussianTeleport.from_model at the level, seeded apart
    from the samples; --teleport-fit alone, or a level where no Gaussian fits, is refused."""
    out = tmp_path / "m.npy"
    assert main(["sample", str(run), *STEPS, "--teleport", "5", "--out", str(out)]) == 0
    assert "fitted to the model at sigma/alpha = 5 (1024 evaluations)" in capsys.readouterr().out
    model, normalizer, _ = load_model(run)
    tp = GaussianTeleport.from_model(model, (2,), 5.0, "unipc_3", n=1024,
                                     generator=torch.Generator().manual_seed(2000010))  # fmt: skip
    with torch.no_grad():
        r = sample(model, 6, tp, 6, torch.Generator().manual_seed(7))
    got = torch.from_numpy(np.load(out, allow_pickle=False))
    torch.testing.assert_close(got, normalizer.decode(r.x.double()), rtol=1e-5, atol=1e-5)
    assert main(["sample", str(run), "--n", "4", "--teleport-fit", "data"]) == 1
    assert "--teleport-fit data needs --teleport SIGMA" in capsys.readouterr().err

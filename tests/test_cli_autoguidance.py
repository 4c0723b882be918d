"""``scorekit sample RUN --guide WEAKER --guidance W``: autoguidance from the command line."""

import json

import numpy as np
import pytest
import torch

from scorekit.app.cli import main
from scorekit.guidance import AutoGuidance
from scorekit.samplers import sample
from scorekit.train.checkpoint import load_model

NET = {"net": {"name": "mlp", "hidden": 32, "depth": 1, "emb_dim": 16}}
STEPS = ["--sampler", "heun", "--steps", "4", "--seed", "7", "--n", "6"]


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def _train(out, steps, *extra):
    cfg = out.parent / "net.json"
    cfg.write_text(json.dumps(NET))
    argv = ["train", "--data", "moons", "--n", "500", "--steps", str(steps), "--batch", "32"]
    argv += ["--quiet", "--config", str(cfg), "--out", str(out), *extra]
    assert main(argv) == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("autoguide")
    _train(root / "main", 40)
    _train(root / "weak", 8)
    return root


def test_sample_with_a_guide_is_the_library_combination(runs, tmp_path, capsys):
    main_run, weak = runs / "main", runs / "weak"

    def cli(*extra):
        out = tmp_path / f"g{len(list(tmp_path.iterdir()))}.npy"
        assert main(["sample", str(main_run), *STEPS, "--out", str(out), *extra]) == 0
        return torch.from_numpy(np.load(out, allow_pickle=False))

    got = cli("--guide", str(weak), "--guidance", "2.5")
    assert f"autoguided by {weak} at 2.5" in capsys.readouterr().out
    model, normalizer, _ = load_model(main_run)
    guide, _, _ = load_model(weak)

    def lib(m):
        with torch.no_grad():
            r = sample(m, 6, "heun", 4, torch.Generator().manual_seed(7))
        return normalizer.decode(r.x.double())

    torch.testing.assert_close(got, lib(AutoGuidance(model, guide, 2.5)), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        cli("--guide", str(weak)), lib(AutoGuidance(model, guide, 2.0)), rtol=1e-6, atol=1e-6
    )  # fmt: skip  (the default scale is 2)
    # scale 1 is the model alone, scale 0 the guide alone
    torch.testing.assert_close(cli("--guide", str(weak), "--guidance", "1"), cli())
    torch.testing.assert_close(cli("--guide", str(weak), "--guidance", "0"), lib(guide),
                               rtol=1e-6, atol=1e-6)  # fmt: skip
    assert (got - cli()).abs().max() > 1e-3


def test_a_guide_that_does_not_match_is_refused(runs, tmp_path, capsys):
    root = tmp_path
    _train(root / "ve", 2, "--process", "ve", "--loss", "dsm")
    _train(root / "minmax", 2, "--normalize", "minmax")
    cfg = root / "net.json"
    assert main(["train", "--data", "8gaussians", "--n", "500", "--steps", "2", "--quiet",
                 "--config", str(cfg), "--out", str(root / "other")]) == 0  # fmt: skip
    capsys.readouterr()
    out = root / "x.npy"
    for guide, msg in [
        (root / "other", "was trained on '8gaussians'"),
        (root / "minmax", "normalises the data otherwise than the model"),
        (root / "ve", "uses the process"),
        (root / "missing", "--guide " + str(root / "missing") + ": nothing to load there"),
        (runs / "main" / "log.jsonl", "--guide " + str(runs / "main" / "log.jsonl") + ": "),
        (runs / "main", "is the model's own checkpoint"),
    ]:
        argv = ["sample", str(runs / "main"), *STEPS, "--guide", str(guide), "--out", str(out)]
        assert main(argv) == 1
        assert msg in _err(capsys), guide
    argv = ["sample", str(runs / "main"), *STEPS, "--guide", str(runs / "weak")]
    assert main([*argv, "--guidance", "inf", "--out", str(out)]) == 1
    assert "--guidance must be a finite number" in _err(capsys)
    assert not out.exists()

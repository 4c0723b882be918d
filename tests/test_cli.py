import json

import numpy as np
import pytest
import torch

from scorekit.app.cli import main


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def test_bad_inputs_give_one_line_errors(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "empty.csv").write_text("a,b\n")
    (tmp_path / "bad.csv").write_text("1,2\n3,x\n")
    (tmp_path / "imgs").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "imgs" / "a.png")
    Image.new("L", (16, 16)).save(tmp_path / "imgs" / "b.png")
    (tmp_path / "afile").write_text("")
    cases = [
        (["--data", str(tmp_path / "nope.npy")], "data file not found"),
        (["--data", str(tmp_path / "empty.csv")], "no examples"),
        (["--data", str(tmp_path / "bad.csv")], "non-numeric cell 'x' at data row 2, column 2"),
        (["--data", str(tmp_path / "imgs")], "mixed sizes"),
        (["--data", "moons", "--out", str(tmp_path / "afile")], "is a file"),
        (["--data", "moons", "--out", str(tmp_path / "x"), "--resume"], "no checkpoint"),
        (["--config", str(tmp_path / "none.json")], "config file not found"),
    ]
    for argv, msg in cases:
        out = ["--out", str(tmp_path / "run")] if "--out" not in argv else []
        assert main(["train", *argv, *out, "--quiet"]) == 1
        assert msg in _err(capsys)
    assert main(["sample", str(tmp_path / "missing.safetensors")]) == 1
    assert "checkpoint not found" in _err(capsys)
    with pytest.raises(ValueError, match="not found"):
        main(["--debug", "train", "--data", str(tmp_path / "nope.npy"), "--out", str(tmp_path)])


def test_train_resume_sample_likelihood_plot_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    common = ["--data", "moons", "--n", "500", "--batch", "64", "--quiet", "--out", str(run)]
    assert main(["train", *common, "--steps", "20", "--log-every", "5"]) == 0
    assert main(["train", *common, "--steps", "30", "--log-every", "5", "--resume"]) == 0
    meta = json.loads((run / "checkpoint.json").read_text())
    assert meta["step"] == 30 and meta["model"]["net"]["name"] == "mlp"
    assert meta["data"]["shape"] == [2]
    # a second run into the same folder without --resume is refused
    assert main(["train", *common, "--steps", "30"]) == 1
    assert "already holds a run" in _err(capsys)
    # resuming with another network is refused
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"net": {"hidden": 16}}))
    assert main(["train", *common, "--steps", "40", "--resume", "--config", str(cfg)]) == 1
    assert "net config" in _err(capsys)
    capsys.readouterr()

    out = tmp_path / "s.npy"
    argv = ["sample", str(run), "--sampler", "heun", "--steps", "5", "--n", "50", "--out", str(out)]
    assert main(argv) == 0
    x = np.load(out, allow_pickle=False)
    assert x.shape == (50, 2) and np.isfinite(x).all()
    assert (tmp_path / "s.png").stat().st_size > 1000
    # a grid fitted to the model (GITS) on 16 calibration starts: printed, then used
    capsys.readouterr()
    fitted = ["sample", str(run), "--sampler", "unipc", "--steps", "4", "--n", "20", "--out",
              str(tmp_path / "f.npy"), "--grid", "fitted", "--calibration", "16"]  # fmt: skip
    assert main(fitted) == 0
    printed = capsys.readouterr().out
    assert "fitted grid (GITS): 4 steps from 16 calibration starts (900 evaluations" in printed
    assert "NFE 4)" in printed and np.isfinite(np.load(tmp_path / "f.npy")).all()
    many = [*fitted[:2], "--sampler", "euler_maruyama", "--steps", "120", *fitted[6:-1], "8",
            "--overwrite"]  # fmt: skip
    assert main(many) == 0  # more steps than the 100 default candidates
    assert "fitted grid (GITS): 120 steps from 8 calibration starts (1080 evaluations" in (
        capsys.readouterr().out
    )
    assert main([*fitted[:-4], "--calibration", "16", "--overwrite"]) == 1
    assert "--calibration needs --grid fitted" in _err(capsys)
    assert main([*fitted[:2], "--sampler", "langevin", *fitted[4:], "--overwrite"]) == 1
    assert "--grid fitted needs a sampler that steps a grid" in _err(capsys)
    argv = ["plot", str(run), "--out", str(tmp_path / "plots"), "--n", "50", "--steps", "5"]
    assert main(argv) == 0
    for k in ("field", "samples", "trajectories", "loss"):
        assert (tmp_path / "plots" / f"{k}.png").stat().st_size > 1000

    capsys.readouterr()
    argv = ["likelihood", str(run), "--data", "moons", "--n", "20", "--method", "euler"]
    assert main([*argv, "--steps", "10"]) == 0
    line = capsys.readouterr().out
    assert "NLL" in line and "bits/dim" in line and "95% interval" in line
    assert "prior term" in line  # VP: no radius bound on the prior's error
    np.save(tmp_path / "three.npy", np.zeros((5, 3)))
    assert main(["likelihood", str(run), "--data", str(tmp_path / "three.npy")]) == 1
    assert "trained on (2,)" in _err(capsys)
    assert main([*argv, "--steps", "10", "--samples", "2"]) == 1
    assert "--samples is for discrete data" in _err(capsys)
    assert main([*argv, "--steps", "10", "--sigma-max", "50"]) == 1  # the recipe's EDM
    assert "--sigma-max must exceed the process's largest sigma 80, got 50" in _err(capsys)
    vp = tmp_path / "vp"
    assert main(["train", *common[:-1], str(vp), "--steps", "2", "--process", "vp"]) == 0
    assert main(["likelihood", str(vp), *argv[2:], "--steps", "2", "--sigma-max", "100"]) == 1
    assert "--sigma-max continues a VE or EDM process; this checkpoint's process is VP" in (
        _err(capsys)
    )


def test_train_on_images_and_tables(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(
            tmp_path / "imgs" / f"{i}.png"
        )
    argv = ["train", "--data", str(tmp_path / "imgs"), "--steps", "2", "--batch", "4", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "r1")]) == 0
    meta = json.loads((tmp_path / "r1" / "checkpoint.json").read_text())
    assert meta["model"]["net"]["name"] == "unet" and meta["data"]["bins"] == 256
    assert meta["normalizer"] == {"loc": 127.5, "scale": 127.5}
    np.savetxt(tmp_path / "t.csv", rng.normal(size=(40, 3)), delimiter=",")
    argv = ["train", "--data", str(tmp_path / "t.csv"), "--steps", "2", "--batch", "8", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "r2"), "--net", "energy_mlp"]) == 0
    meta = json.loads((tmp_path / "r2" / "checkpoint.json").read_text())
    assert meta["model"]["prediction"] == "energy" and meta["data"]["shape"] == [3]
    assert torch.tensor(meta["normalizer"]["scale"]).shape == (3,)


def test_advise_prints_and_saves(tmp_path, capsys):
    out = tmp_path / "advice.json"
    assert main(["advise", "--data", "8gaussians", "--n", "300", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "sigma_max" in text and "wrote" in text
    adv = json.loads(out.read_text())
    x = __import__("scorekit.train.data", fromlist=["load_data"]).load_data(
        "8gaussians", n=300, generator=torch.Generator().manual_seed(0)
    )
    # Technique 1 on the data the model sees: the largest pairwise distance (all 300 points)
    assert adv["process"]["sigma_max"] == pytest.approx(float(torch.pdist(x.x.double()).max()))


def test_demo_smoke(tmp_path):
    from scorekit.app.demo import run_demo

    threads = torch.get_num_threads()
    text = run_demo(tmp_path / "demo", steps=30, quiet=True, n_samples=100, n_nll=10)
    assert torch.get_num_threads() == threads  # the demo's single thread is restored
    for name in ("score_field.png", "samples.png", "trajectories.png", "loss_per_sigma.png"):
        assert f"]({name})" in text
        assert (tmp_path / "demo" / name).stat().st_size > 10_000
    assert (tmp_path / "demo" / "report.md").read_text() == text
    for label in ("annealed_langevin", "euler_maruyama", "heun", "nats", "true density"):
        assert label in text


def test_digits_checkpoint_gives_dequantised_bits_per_dim(tmp_path, capsys):
    run = tmp_path / "dg"
    assert main(["train", "--data", "digits", "--steps", "2", "--batch", "8", "--quiet",
                 "--out", str(run)]) == 0  # fmt: skip
    meta = json.loads((run / "checkpoint.json").read_text())
    assert meta["data"]["bins"] == 17 and meta["model"]["net"]["name"] == "unet"
    capsys.readouterr()
    argv = ["likelihood", str(run), "--data", "digits", "--n", "4", "--method", "euler",
            "--steps", "2", "--divergence", "hutchinson"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    nll, bpd = float(out.split()[1]), float(out.split("), ")[1].split()[0])
    # discrete data: NLL = bpd * D * ln 2, with no change-of-variables term
    assert nll == pytest.approx(bpd * 64 * np.log(2), rel=1e-3)
    assert "uniform dequantization, 1 draw(s) per example" in out
    for extra in (["--dequantization", "truncated_normal", "--samples", "2"],
                  ["--dequantization", "variational", "--dequant-steps", "3"]):  # fmt: skip
        assert main([*argv, *extra]) == 0
        out, err = capsys.readouterr()
        assert f"{extra[1]} dequantization" in out and float(out.split("), ")[-1].split()[0]) > 0
        # the run trained on dequantized pixels: truncated_normal's bound is loose, said once
        assert ("note: this run trained on uniformly dequantized" in err) == (
            extra[1] == "truncated_normal"
        )
    assert "variational dequantizer: 3 steps on" in out
    # EDM: the ODE continues past sigma 80, the prior term is taken at the new end
    assert main([*argv, "--sigma-max", "800"]) == 0
    out = capsys.readouterr().out
    assert "prior term -log pi(x(t_max)) at sigma 800:" in out and "its error at most" in out
    assert main([*argv, "--dequant-steps", "3"]) == 1
    assert "--dequant-steps needs --dequantization variational" in _err(capsys)
    argv = ["plot", str(run), "--out", str(tmp_path / "p"), "--n", "4", "--steps", "2"]
    assert main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["grid.png", "loss.png"]


def test_process_and_network_defaults(tmp_path):
    from scorekit.app.recipes import build_run_model, net_config_for
    from scorekit.core.processes import EDM

    assert net_config_for({"name": "auto"}, (1, 8, 8), EDM())["name"] == "unet"
    assert net_config_for({"name": "auto"}, (2,), EDM())["time_input"] == "log_t"
    # EDM preconditioning feeds the net c_noise = log(sigma)/4 (negative below sigma = 1)
    assert "time_input" not in net_config_for({"name": "auto"}, (2,), EDM(), precond=True)
    settings = {"net": {"name": "auto"}, "prediction": "auto", "loss": "edm", "loss_kwargs": {}}
    model = build_run_model(settings, (2,), EDM())
    assert model.prediction == "x0" and type(model.net).__name__ == "EDMPrecond"
    # the raw network sees distinct inputs for distinct small sigmas
    x = torch.zeros(2, 2)
    t = torch.tensor([0.01, 0.1])
    seen = []
    model.net.net.register_forward_hook(lambda m, a, out: seen.append(m.embed(a[1])))
    model(x, t)
    assert not torch.allclose(seen[0][0], seen[0][1])


def test_likelihood_of_a_mixture_of_runs(tmp_path, capsys):
    """Two runs on moons with other seeds (other training points, other normalisations):
    the mixture's NLL is printed, and by Jensen it is never above the members' mean (same
    test points, exact divergence, same fixed-step solver); mixtures that cannot be formed
    are refused in one line."""
    import re

    runs = [tmp_path / f"r{k}" for k in range(2)]
    for k, run in enumerate(runs):
        argv = ["train", "--data", "moons", "--n", "300", "--batch", "64", "--quiet",
                "--steps", "15", "--seed", str(k), "--out", str(run)]  # fmt: skip
        assert main(argv) == 0
    common = ["--data", "moons", "--n", "40", "--method", "euler", "--steps", "8", "--quiet"]
    nll = []
    for run in runs:
        capsys.readouterr()
        assert main(["likelihood", str(run), *common]) == 0
        nll.append(float(re.search(r"NLL (\S+)", capsys.readouterr().out).group(1)))
    assert main(["likelihood", *map(str, runs), *common]) == 0
    out = capsys.readouterr().out
    assert "equal-weight mixture of 2 checkpoints" in out and "each member's own" in out
    mix = float(re.search(r"NLL (\S+)", out).group(1))
    assert mix <= sum(nll) / 2 + 1e-4, (mix, nll)
    # a run mixed with itself is that run (the -log K and each member's log-determinant)
    assert main(["likelihood", str(runs[1]), str(runs[1]), *common]) == 0
    assert float(re.search(r"NLL (\S+)", capsys.readouterr().out).group(1)) == nll[1]
    assert main(["likelihood", *map(str, runs), *common, "--divergence", "hutchinson"]) == 1
    assert "a mixture of 2 checkpoints needs --divergence exact" in _err(capsys)
    other = tmp_path / "rings"
    assert main(["train", "--data", "rings", "--n", "300", "--steps", "2", "--quiet",
                 "--out", str(other)]) == 0  # fmt: skip
    assert main(["likelihood", str(runs[0]), str(other), *common]) == 1
    err = _err(capsys)
    assert "trained on 'rings'" in err and "a mixture needs runs on the same data" in err


def test_another_loss_drops_the_recipes_loss_options(tmp_path):
    """The toy recipe's EDM loss options (sigma_data, p_mean, p_std) do not go to --loss dsm;
    options the --config gives for the new loss do."""
    base = ["--data", "moons", "--n", "200", "--steps", "2", "--quiet"]
    assert main(["train", *base, "--loss", "dsm", "--out", str(tmp_path / "a")]) == 0
    meta = json.loads((tmp_path / "a" / "checkpoint.json").read_text())
    assert meta["cli"]["loss"] == "dsm" and meta["cli"]["loss_kwargs"] == {}
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"loss_kwargs": {"prediction_target": "x0"}}))
    argv = [*base, "--loss", "dsm", "--config", str(cfg), "--out", str(tmp_path / "b")]
    assert main(["train", *argv]) == 0
    meta = json.loads((tmp_path / "b" / "checkpoint.json").read_text())
    assert meta["cli"]["loss_kwargs"] == {"prediction_target": "x0"}

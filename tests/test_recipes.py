"""Recipes: chosen from the data, by name, overridden by flags, stored and printed; the time
budget; scorekit recipes and scorekit evaluate."""

import json

import numpy as np
import pytest

from scorekit.app.cli import main
from scorekit.app.recipes import RECIPES, choose_recipe, recipe_settings


def test_the_recipe_follows_the_shape_of_the_data():
    assert choose_recipe((2,)) == "toy-2d"
    assert choose_recipe((1, 8, 8)) == "small-images"
    assert choose_recipe((3, 32, 32)) == "images"
    assert choose_recipe((5,)) == choose_recipe((4, 7)) == "vectors"
    for name in RECIPES:
        s = recipe_settings(name)
        assert s["recipe"] == name and "sampler" in s["sample"]
    with pytest.raises(ValueError, match="--recipe must be one of"):
        recipe_settings("nope")


def _train(tmp_path, *argv):
    return main(["train", "--quiet", "--out", str(tmp_path), *argv])


def test_train_picks_stores_and_prints_the_recipe(tmp_path, capsys):
    table = tmp_path / "t.csv"
    np.savetxt(table, np.random.default_rng(0).normal(size=(200, 5)), delimiter=",")
    cases = [
        (["--data", "moons", "--n", "300"], "toy-2d"),
        (["--data", str(table)], "vectors"),
        (["--data", "moons", "--n", "300", "--recipe", "ve-dsm"], "ve-dsm"),
    ]
    for i, (argv, recipe) in enumerate(cases):
        out = tmp_path / f"r{i}"
        assert main(["train", "--out", str(out), "--steps", "3", "--batch", "32", *argv]) == 0
        printed = capsys.readouterr().out
        assert printed.startswith(f"recipe {recipe} (")
        meta = json.loads((out / "checkpoint.json").read_text())
        assert meta["cli"]["recipe"] == recipe and meta["train"]["batch_size"] == 32
    meta = json.loads((tmp_path / "r0" / "checkpoint.json").read_text())
    assert meta["model"]["process"]["name"] == "EDM" and meta["model"]["precond"]["name"] == "edm"
    assert meta["train"]["schedule"] == "cosine"
    assert isinstance(meta["cli"]["loss_kwargs"]["sigma_data"], float)  # "auto" resolved
    assert (
        json.loads((tmp_path / "r2" / "checkpoint.json").read_text())["model"]["process"]["name"]
        == "VE"
    )
    assert main(["recipes"]) == 0
    listed = capsys.readouterr().out
    assert all(f"{name}:" in listed for name in RECIPES)


def test_minutes_is_a_wall_clock_budget(tmp_path):
    assert (
        _train(tmp_path, "--data", "moons", "--n", "300", "--batch", "32", "--minutes", "0.02") == 0
    )
    meta = json.loads((tmp_path / "checkpoint.json").read_text())
    assert meta["train"]["seconds"] == pytest.approx(1.2) and meta["train"]["steps"] is None
    assert meta["elapsed"] >= 1.2 and meta["step"] >= 1


def test_evaluate_writes_json_and_markdown(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, "--data", "moons", "--n", "500", "--steps", "30", "--batch", "64") == 0
    argv = ["evaluate", str(run), "--data", "moons", "--n", "200", "--steps", "5", "--nll-n", "50"]
    assert main(argv) == 0
    assert "sliced_w2" in capsys.readouterr().out
    rec = json.loads((run / "evaluate.json").read_text())
    assert rec["n_samples"] == 200 and rec["sampler"] == "heun" and rec["nll_n"] == 50
    assert rec["sliced_w2"] > 0 and rec["sliced_w2_real"] > 0 and np.isfinite(rec["nll"])
    assert (run / "evaluate.md").read_text().startswith("| measure | value |")
    # what evaluate wrote, or any other file, is not replaced unless asked; --out is a .json
    ckpt = run / "checkpoint.safetensors"
    before = ckpt.read_bytes()
    for out, msg in [
        (None, "evaluate.json' exists; pass --overwrite"),
        (ckpt, "--out names the JSON to write (a .json file"),
        (tmp_path / "res.md", "--out names the JSON to write"),
        (run / "checkpoint.json", "is the checkpoint's own metadata"),
    ]:
        extra = [] if out is None else ["--out", str(out)]
        assert main([*argv, *extra]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], err
    assert ckpt.read_bytes() == before and not (tmp_path / "res.md").exists()
    assert main([*argv, "--n", "1", "--out", str(tmp_path / "one.json")]) == 1
    assert "--n must be >= 2" in capsys.readouterr().err
    assert main([*argv, "--no-nll", "--overwrite"]) == 0
    assert "nll" not in json.loads((run / "evaluate.json").read_text())
    assert main([*argv, "--no-nll", "--draws", "2", "--out", str(tmp_path / "two.json")]) == 0
    two = json.loads((tmp_path / "two.json").read_text())
    assert len(two["sliced_w2_draws"]) == 2 and two["sliced_w2_draws"][0] == rec["sliced_w2"]
    # the held-out points of the sample quality do not depend on --nll-n (measured or not)
    more = tmp_path / "more.json"
    assert main([*argv[:-2], "--nll-n", "300", "--out", str(more)]) == 0
    more = json.loads(more.read_text())
    assert more["sliced_w2"] == rec["sliced_w2"] and more["sliced_w2_real"] == rec["sliced_w2_real"]
    assert more["nll_n"] == 300 and two["sliced_w2_real"] == rec["sliced_w2_real"]
    assert two["sliced_w2"] == pytest.approx(np.mean(two["sliced_w2_draws"]))
    digits = tmp_path / "digits"
    net = tmp_path / "net.json"
    net.write_text(json.dumps({"net": {"base": 8}}))
    assert (
        _train(digits, "--data", "digits", "--steps", "2", "--batch", "16", "--config", str(net))
        == 0
    )
    assert (
        main(["evaluate", str(digits), "--data", "digits", "--n", "40", "--steps", "2", "--no-nll"])
        == 0
    )
    rec = json.loads((digits / "evaluate.json").read_text())
    assert rec["n_held_out"] == 540 and rec["frechet"] > rec["frechet_real"] > 0
    # an untrained net's samples are far from every training digit, farther than real ones
    assert rec["nn_train_median"] > rec["nn_train_median_real"] > 0
    assert rec["nn_ratio"] == pytest.approx(rec["nn_train_median"] / rec["nn_train_median_real"])
    assert rec["draws"] == 1 and "frechet_sd" not in rec
    # several draws: the mean over independent draws, the first of them the one-draw figure
    out = tmp_path / "three.json"
    argv = ["evaluate", str(digits), "--data", "digits", "--n", "40", "--steps", "2", "--no-nll"]
    assert main([*argv, "--draws", "3", "--out", str(out)]) == 0
    three = json.loads(out.read_text())
    fd = three["frechet_draws"]
    assert three["draws"] == 3 and len(set(fd)) == 3 and fd[0] == pytest.approx(rec["frechet"])
    assert three["frechet"] == pytest.approx(np.mean(fd))
    assert three["frechet_sd"] == pytest.approx(np.std(fd, ddof=1))
    assert three["frechet_real"] != rec["frechet_real"]  # real digits drawn three times too
    assert "frechet_sd" in capsys.readouterr().out
    assert main([*argv, "--draws", "0"]) == 2
    assert "argument --draws: expected an integer >= 1, got '0'" in capsys.readouterr().err


def test_every_command_takes_device_and_threads(tmp_path, capsys):
    import torch

    run = tmp_path / "run"
    assert _train(run, "--data", "moons", "--n", "200", "--steps", "2", "--threads", "1") == 0
    base = ["sample", str(run), "--n", "4", "--steps", "2", "--out", str(tmp_path / "s.npy")]
    assert main([*base, "--device", "cpu", "--threads", "1", "--quiet"]) == 0
    assert torch.get_num_threads() == 1
    capsys.readouterr()
    cases = [
        (["--device", "banana"], "--device must be a torch device such as cpu, cuda", 1),
        (["--threads", "0"], "argument --threads: expected an integer >= 1, got '0'", 2),
    ]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "--device cuda: this machine has no CUDA device", 1))
    for extra, msg, code in cases:
        for cmd in (
            base,
            ["likelihood", str(run), "--data", "moons", "--n", "4"],
            ["evaluate", str(run), "--data", "moons", "--n", "4"],
        ):
            assert main([*cmd, *extra]) == code
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and msg in err[0], (cmd, err)


def test_pictures_do_not_lie(tmp_path, capsys):
    from PIL import Image

    # images: a grid in the data's range and one PNG per sample
    digits, net = tmp_path / "digits", tmp_path / "net.json"
    net.write_text(json.dumps({"net": {"base": 8}}))
    assert (
        _train(digits, "--data", "digits", "--steps", "2", "--batch", "16", "--config", str(net))
        == 0
    )
    assert (
        main(
            [
                "sample",
                str(digits),
                "--n",
                "6",
                "--steps",
                "2",
                "--quiet",
                "--out",
                str(tmp_path / "d.npy"),
                "--png-dir",
                str(tmp_path / "each"),
            ]
        )
        == 0
    )
    pngs = sorted((tmp_path / "each").iterdir())
    assert len(pngs) == 6 and Image.open(pngs[0]).size == (8, 8)
    assert (tmp_path / "d.png").stat().st_size > 1000
    # vectors of more than 2 coordinates: pairs of coordinates, not nothing
    table = tmp_path / "t.csv"
    np.savetxt(table, np.random.default_rng(0).normal(size=(200, 5)), delimiter=",")
    assert _train(tmp_path / "vec", "--data", str(table), "--steps", "2", "--batch", "16") == 0
    assert (
        main(
            [
                "sample",
                str(tmp_path / "vec"),
                "--n",
                "20",
                "--steps",
                "2",
                "--quiet",
                "--out",
                str(tmp_path / "v.npy"),
            ]
        )
        == 0
    )
    assert (tmp_path / "v.png").stat().st_size > 1000
    assert (
        main(
            [
                "sample",
                str(tmp_path / "vec"),
                "--n",
                "4",
                "--steps",
                "2",
                "--quiet",
                "--out",
                str(tmp_path / "w.npy"),
                "--png-dir",
                str(tmp_path / "no"),
            ]
        )
        == 1
    )
    assert "--png-dir writes images" in capsys.readouterr().err


def test_an_image_grid_tells_what_is_outside_the_pixel_range():
    import torch

    from scorekit.app.plots import plot_image_grid

    x = torch.zeros(4, 1, 8, 8)
    x[0, 0, 0, :4] = 5.0  # 4 of 256 pixels far above the range
    fig = plot_image_grid(x, value_range=(0.0, 1.0))
    assert "1.6% of pixels outside [0, 1], clipped" in fig.axes[0].get_title()


def test_every_flag_says_what_it_does():
    from scorekit.app.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices
    missing = [
        f"{name} {a.option_strings or a.dest}"
        for name, p in sub.items()
        for a in p._actions
        if not a.help and "-h" not in a.option_strings
    ]
    assert not missing, missing

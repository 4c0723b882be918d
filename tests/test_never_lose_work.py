"""The command line never loses work and never says what did not happen: signals save,
runs are not overwritten, resumes are checked, outputs stay in their run, checkpoints are
verified, and bad input is one line naming the flag."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from scorekit.app.cli import main

SRC = str(Path(__file__).resolve().parents[1] / "src")
TRAIN = ["train", "--data", "moons", "--n", "300", "--batch", "32", "--quiet"]


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_the_run_at_its_step(tmp_path, sig, code):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": SRC}
    cmd = [sys.executable, "-m", "scorekit.cli", *TRAIN, "--steps", "100000", "--log-every",
           "20", "--ckpt-every", "100000", "--out", str(run)]  # fmt: skip
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log = run / "log.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not log.exists() or log.read_text().count("\n") < 2):
        time.sleep(0.1)
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    assert p.returncode == code, err.decode()
    meta = json.loads((run / "checkpoint.json").read_text())
    step = meta["step"]
    assert step >= 40 and f"stopped by {sig.name} at step {step}" in err.decode()
    assert "saved checkpoint" in err.decode() and "--resume" in err.decode()
    assert json.loads(log.read_text().splitlines()[-1])["step"] == step  # the log goes on
    assert main([*TRAIN, "--steps", str(step + 5), "--out", str(run), "--resume"]) == 0


def test_a_folder_holding_a_run_is_not_trained_over(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text('{"step": 10}\n')  # killed before its first checkpoint
    assert main([*TRAIN, "--steps", "3", "--out", str(run)]) == 1
    assert "already holds a run (log.jsonl); pass --resume" in _err(capsys)
    assert (run / "log.jsonl").read_text() == '{"step": 10}\n'
    assert main([*TRAIN, "--steps", "3", "--out", str(run), "--overwrite"]) == 0
    lines = (run / "log.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["step"] == 3 and len(lines) == 1


def test_resume_checks_data_shape_and_work_left(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*TRAIN, "--steps", "6", "--out", str(run)]) == 0
    capsys.readouterr()
    spiral = tmp_path / "spiral.npy"
    np.save(spiral, np.random.default_rng(0).normal(size=(300, 2)).astype(np.float32))
    wide = tmp_path / "wide.npy"
    np.save(wide, np.random.default_rng(0).normal(size=(300, 5)).astype(np.float32))
    cases = [
        (["--steps", "4"], "--steps 4: the run in"),
        (["--steps", "9", "--data", str(spiral)], f"--data {str(spiral)!r} differs"),
        (["--steps", "9", "--data", str(wide)], "differs from the data 'moons'"),
    ]
    for extra, msg in cases:
        argv = [*TRAIN[:-1], "--quiet", "--out", str(run), "--resume", *extra]
        assert main(argv) == 1
        assert msg in _err(capsys), extra
    assert json.loads((run / "checkpoint.json").read_text())["step"] == 6  # untouched


def test_outputs_stay_in_their_run_and_are_not_overwritten(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    assert main([*TRAIN, "--steps", "3", "--out", str(run)]) == 0
    sample = ["sample", str(run), "--n", "8", "--steps", "2", "--quiet"]
    assert main(sample) == 0
    out = run / "samples" / "samples-heun-k2-n8-seed0.npy"
    assert out.is_file() and out.with_suffix(".png").is_file()
    assert f"wrote {out}, {out.with_suffix('.png')}" in capsys.readouterr().out
    assert not (tmp_path / "samples.npy").exists()
    assert main(sample) == 1
    assert "exists; pass --overwrite" in _err(capsys)
    assert main([*sample, "--overwrite"]) == 0
    capsys.readouterr()
    # every choice that changes the samples is in the default name: no collision
    assert main([*sample[:-3], "--steps", "3", "--quiet"]) == 0
    assert (run / "samples" / "samples-heun-k3-n8-seed0.npy").is_file()
    assert main([*sample, "--no-ema"]) == 0
    assert (run / "samples" / "samples-heun-k2-raw-n8-seed0.npy").is_file()
    capsys.readouterr()
    # plots go to RUN/plots; figures that do not apply are refused, not "written"
    assert main(["plot", str(run), "--kind", "grid", "--quiet"]) == 1
    assert "--kind grid does not apply to this run (examples of shape (2,))" in _err(capsys)
    (run / "log.jsonl").unlink()
    assert main(["plot", str(run), "--kind", "loss", "--quiet"]) == 1
    assert "log.jsonl is missing" in _err(capsys)
    assert main(["plot", str(run), "--kind", "samples", "--n", "50", "--steps", "2",
                 "--quiet"]) == 0  # fmt: skip
    assert (run / "plots" / "samples.png").is_file()
    # options that do not apply are refused
    assert main([*sample, "--sampler", "dopri5", "--steps", "10"]) == 1
    assert "--steps does not apply to --sampler dopri5" in _err(capsys)


def test_a_damaged_checkpoint_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*TRAIN, "--steps", "3", "--out", str(run)]) == 0
    ckpt = run / "checkpoint.safetensors"
    data = bytearray(ckpt.read_bytes())
    data[-4000:-3000] = bytes(b ^ 0xFF for b in data[-4000:-3000])  # flip weight bytes
    ckpt.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["sample", str(run), "--n", "4", "--steps", "2", "--quiet"]) == 1
    assert f"checkpoint {ckpt} is corrupted" in _err(capsys)
    note = json.loads(ckpt.with_suffix(".json").read_text())["_note"]
    assert "editing it changes nothing" in note


def test_bad_input_is_one_line_naming_the_flag(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*TRAIN, "--steps", "2", "--out", str(run)]) == 0
    capsys.readouterr()
    two = [
        ([*TRAIN, "--ema-decay", "1.5"], "argument --ema-decay: expected a number >= 0 and < 1"),
        ([*TRAIN, "--loss", "foo"], "argument --loss: invalid choice: 'foo'"),
        (["sample", str(run), "--n", "0"], "argument --n: expected an integer >= 1, got '0'"),
        (["sample", str(run), "--seed", "-1"], "argument --seed: expected an integer >= 0"),
    ]
    for argv, msg in two:
        assert main(argv) == 2
        assert msg in _err(capsys), argv
    one = [
        ([*TRAIN[:2], "moonz", "--out", str(tmp_path / "a")], "(the named data sets: moons"),
        ([*TRAIN[:2], "", "--out", str(tmp_path / "b")], "data must name a toy"),
        ([*TRAIN, "--out", ""], "--out must name a folder for the run"),
        (["sample", str(run), "--n", "10000000000", "--quiet"], "GiB of samples; this machine"),
        (["sample", str(run), "--n", "3", "--steps", "2", "--quiet", "--out", str(tmp_path)],
         f"cannot write {str(tmp_path)!r}: it is a folder"),
    ]  # fmt: skip
    for argv, msg in one:
        assert main(argv) == 1
        assert msg in _err(capsys), argv


def test_options_that_do_not_apply_to_the_data_are_refused(tmp_path, capsys):
    table = tmp_path / "t.csv"
    np.savetxt(table, np.random.default_rng(0).normal(size=(50, 2)), delimiter=",")
    arr = tmp_path / "a.npy"
    np.save(arr, np.zeros((50, 2), dtype=np.float32))
    for argv, msg in [
        (["--data", str(table), "--key", "x"], "key (--key) names an array inside an .npz"),
        (["--data", str(arr), "--image-size", "8"], "image_size (--image-size) resizes a folder"),
    ]:
        assert main(["train", *argv, "--quiet", "--out", str(tmp_path / "r")]) == 1
        assert msg in _err(capsys)

"""CLI fuzz: random flag values and combinations over every subcommand. The only outcomes
allowed are success (exit 0) or a one-line error (exit 1 or 2) -- no traceback -- and a
failed command leaves the run folder as it was and no half-written file behind.

``SCOREKIT_FUZZ_EXAMPLES`` sets the number of examples (``make test``: 25, derandomized;
``make fuzz``: 5000)."""

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scorekit.app.cli import main

EXAMPLES = int(os.environ.get("SCOREKIT_FUZZ_EXAMPLES", "25"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 100,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

NUMBERS = st.sampled_from(["0", "1", "2", "-1", "0.5", "1e9", "nan", "inf", "x", "", "3"])
FLAGS = {
    "train": ["--n", "--steps", "--batch", "--lr", "--warmup", "--ema-decay", "--seed",
              "--minutes", "--accum", "--log-every", "--grad-clip", "--threads",
              "--label-dropout", "--image-size"],
    "sample": ["--n", "--steps", "--seed", "--label", "--guidance", "--threads"],
    "likelihood": ["--n", "--steps", "--seed", "--rtol", "--chunk-size", "--threads"],
    "evaluate": ["--n", "--steps", "--seed", "--nll-n", "--threads"],
    "plot": ["--n", "--steps", "--seed", "--threads"],
}  # fmt: skip
CHOICES = {
    "--data": ["moons", "digits", "moonz", "", "RUNFILE"],
    "--sampler": ["heun", "dopri5", "ddim", "rk45"],
    "--recipe": ["toy-2d", "ve-dsm", "nope"],
    "--device": ["cpu", "banana", "cuda:7"],
    "--kind": ["grid", "loss", "samples", "all"],
}
SWITCHES = ["--resume", "--overwrite", "--conditional", "--no-ema", "--no-nll", "--quiet"]


def _state(folder: Path) -> dict:
    """What is in ``folder``: names and contents' hashes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz") / "run"
    assert main(["train", "--data", "moons", "--n", "200", "--steps", "2", "--batch", "16",
                 "--quiet", "--out", str(out)]) == 0  # fmt: skip
    return out


@FUZZ
@given(
    command=st.sampled_from(sorted(FLAGS)),
    values=st.lists(st.tuples(st.integers(0, 30), NUMBERS), max_size=4),
    choices=st.lists(st.tuples(st.sampled_from(sorted(CHOICES)), st.integers(0, 9)), max_size=2),
    switches=st.lists(st.sampled_from(SWITCHES), max_size=2, unique=True),
)
def test_random_command_lines(run, tmp_path, capsys, command, values, choices, switches):
    flags = FLAGS[command]
    argv = [command]
    if command != "train":
        argv.append(str(run))
    for i, v in values:
        flag = flags[i % len(flags)]
        if flag in ("--n", "--steps", "--nll-n") and v in ("1e9", "3"):
            v = "2"  # keep the work small: the sizes' edge cases are the others
        argv += [flag, v]
    for flag, i in choices:
        if flag == "--data" and command in ("sample", "plot"):
            continue
        v = CHOICES[flag][i % len(CHOICES[flag])]
        argv += [flag, str(run / "checkpoint.json") if v == "RUNFILE" else v]
    argv += switches
    if command == "train":
        argv += ["--out", str(tmp_path / "new"), "--batch", "16", "--steps", "2", "--n", "100"]
    if command in ("sample", "plot", "evaluate"):
        argv += ["--out", str(tmp_path / ("x.npy" if command == "sample" else "o"))]
    if command in ("likelihood", "evaluate") and "--data" not in argv:
        argv += ["--data", "moons"]
    before = _state(run)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code in (0, 1, 2), (argv, code, err)
    errors = [line for line in err if "error" in line]
    assert "Traceback" not in "\n".join(err), argv
    if code != 0:
        assert len(errors) == 1, (argv, err)
        assert _state(run) == before, argv  # a failed command changes nothing of the run
    leftovers = [p for p in tmp_path.rglob(".*.tmp*")] + [p for p in run.rglob(".*.tmp*")]
    assert not leftovers, (argv, leftovers)

r"""Kill ``scorekit train`` with SIGKILL at random steps, resume it, and compare to one run.

A training run of a tiny MLP on a 2-D toy is started as a subprocess
(``python -m scorekit.app.cli train``, CPU, one thread). After it has logged a chosen step
(drawn from a seeded RNG between the last checkpoint and the end) it is killed with
SIGKILL, so it stops wherever it is, possibly in the middle of writing a checkpoint or a
log line. After every kill the checkpoint left behind must load (safetensors + JSON, all
tensors finite, its step a multiple of ``ckpt_every``) and no half-written file may sit
under the checkpoint's name. The run is then resumed with ``--resume``. After the last
resume it trains to the end, and its parameters, EMA and optimiser state must be
bit-identical to an uninterrupted run with the same seed.

Usage::

    PYTHONPATH=src python scripts/kill_resume.py --kills 5 --steps 400 [--seed 0]

Exit code 0 when every check passed. Not part of ``make bench``; ``tests/test_kill_resume.py``
runs a short version in ``make test``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SRC = Path(__file__).resolve().parent.parent / "src"

__all__ = ["kill_resume"]


def _command(out: Path, steps: int, ckpt_every: int, seed: int, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "scorekit.app.cli", "train", "--data", "moons", "--n", "512"]
    cmd += ["--steps", str(steps), "--batch", "32", "--warmup", "5", "--seed", str(seed)]
    cmd += ["--log-every", "1", "--ckpt-every", str(ckpt_every), "--net", "mlp"]
    cmd += ["--config", str(out.parent / "net.json"), "--threads", "1", "--device", "cpu"]
    cmd += ["--quiet", "--out", str(out)]
    return cmd + (["--resume"] if resume else [])


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    env.pop("LOCAL_RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def _logged_step(log: Path) -> int:
    """The last complete step in ``log.jsonl`` (0 when there is none yet)."""
    if not log.exists():
        return 0
    step = 0
    for line in log.read_text().splitlines():
        try:
            step = max(step, int(json.loads(line)["step"]))
        except (ValueError, KeyError, TypeError):
            continue
    return step


def check_checkpoint(out: Path, ckpt_every: int, steps: int) -> int:
    """Load the checkpoint in ``out`` and check it is complete; returns its step."""
    from scorekit.train.checkpoint import load_checkpoint, load_model

    tensors, meta = load_checkpoint(out / "checkpoint.safetensors")
    load_model(out / "checkpoint.safetensors")  # the network, EMA weights and normaliser
    side = json.loads((out / "checkpoint.json").read_text())
    step = int(meta["step"])
    if step % ckpt_every and step != steps:
        raise AssertionError(f"checkpoint step {step} is not a multiple of {ckpt_every}")
    if side["step"] < step:  # the .json is written after the .safetensors
        raise AssertionError(f"checkpoint.json step {side['step']} < {step}")
    for k, v in tensors.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise AssertionError(f"non-finite tensor {k!r} in the checkpoint")
    names = {"model.", "ema.", "optim.", "rng."}
    if not all(any(k.startswith(n) for k in tensors) for n in names):
        raise AssertionError(f"checkpoint misses a part: {sorted(tensors)[:5]} ...")
    return step


def _train(out: Path, steps: int, ckpt_every: int, seed: int, resume: bool, timeout: float):
    r = subprocess.run(
        _command(out, steps, ckpt_every, seed, resume),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if r.returncode != 0:
        raise RuntimeError(f"scorekit train failed ({r.returncode}): {r.stderr[-2000:]}")


def _run_and_kill(out, steps, ckpt_every, seed, resume, target, timeout) -> int:
    """Start training, SIGKILL it once ``target`` is logged; returns the logged step then."""
    proc = subprocess.Popen(
        _command(out, steps, ckpt_every, seed, resume),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    log, t0 = out / "log.jsonl", time.monotonic()
    # a resumed run first cuts the old log back to its checkpoint (an atomic rewrite: a
    # new inode); until then the lines logged by the killed run must not count
    stale = log.stat().st_ino if resume and log.exists() else None
    try:
        while True:
            fresh = stale is None or (log.exists() and log.stat().st_ino != stale)
            if fresh and _logged_step(log) >= target and (out / "checkpoint.safetensors").exists():
                proc.send_signal(signal.SIGKILL)
                break
            if proc.poll() is not None:
                err = proc.stderr.read().decode()[-2000:]
                raise RuntimeError(
                    f"training ended before step {target} ({proc.returncode}): {err}"
                )
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"step {target} not reached in {timeout} s")
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()
    return _logged_step(log)


def _state(out: Path) -> dict:
    from scorekit.train.checkpoint import load_checkpoint

    tensors, meta = load_checkpoint(out / "checkpoint.safetensors")
    return {k: v for k, v in tensors.items() if not k.startswith("rng.")}, meta


def kill_resume(
    workdir: str | Path,
    *,
    kills: int = 3,
    steps: int = 300,
    ckpt_every: int = 10,
    seed: int = 0,
    timeout: float = 120.0,
) -> dict:
    """Run the experiment in ``workdir``; returns a report (raises ``AssertionError`` on a
    failed check). ``seed`` seeds both the training run and the kill times."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "net.json").write_text(json.dumps({"net": {"hidden": 32, "depth": 2}}))
    ref, run = workdir / "reference", workdir / "killed"
    t0 = time.monotonic()
    _train(ref, steps, ckpt_every, seed, False, timeout)
    rng = random.Random(seed)
    kills_at, resumed_from = [], []
    resume = False
    for _ in range(kills):
        last = check_checkpoint(run, ckpt_every, steps) if resume else 0
        lo = last + 1
        target = rng.randint(lo, max(lo, steps - ckpt_every))
        got = _run_and_kill(run, steps, ckpt_every, seed, resume, target, timeout)
        kills_at.append(got)
        step = check_checkpoint(run, ckpt_every, steps)
        stale = [p.name for p in run.iterdir() if p.name.startswith("checkpoint.") and
                 p.suffix not in (".safetensors", ".json")]  # fmt: skip
        if stale:
            raise AssertionError(f"unexpected files beside the checkpoint: {stale}")
        resumed_from.append(step)
        resume = True
    _train(run, steps, ckpt_every, seed, True, timeout)
    a, meta_a = _state(ref)
    b, meta_b = _state(run)
    if sorted(a) != sorted(b):
        raise AssertionError("the two checkpoints hold different tensors")
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    if differ:
        raise AssertionError(f"resumed run differs from the uninterrupted one in {differ[:5]}")
    if meta_a["step"] != steps or meta_b["step"] != steps:
        raise AssertionError(f"final steps {meta_a['step']}, {meta_b['step']} != {steps}")
    leftovers = [p.name for p in run.iterdir() if ".tmp" in p.name]
    return {
        "steps": steps,
        "ckpt_every": ckpt_every,
        "killed_at_logged_step": kills_at,
        "resumed_from_checkpoint_step": resumed_from,
        "tensors_compared": len(a),
        "bit_identical": True,
        "stale_temp_files": leftovers,
        "seconds": round(time.monotonic() - t0, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--ckpt-every", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", help="keep the runs here (default: a temporary folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = kill_resume(
            args.workdir or tmp,
            kills=args.kills,
            steps=args.steps,
            ckpt_every=args.ckpt_every,
            seed=args.seed,
        )
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(SRC))
    sys.exit(main())

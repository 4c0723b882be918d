r"""Against memorisation on 1257 digits: keep-best, non-leaky augmentation, post-hoc EMA.

Each run is one ``scorekit train --data digits`` command (the ``small-images`` recipe,
seed 0 unless ``--seed`` says otherwise) under a wall-clock budget (``--minutes``), run two
at a time with one thread each (``--threads 1``) on a 2-core machine, so a wall-minute is
about a CPU-minute. Runs with ``--posthoc-ema`` also rebuild a grid of widths with
``scorekit ema`` (at the last step and, with validation, at the kept step). Then
``scorekit evaluate RUN/FILE --data digits --no-nll`` scores the last checkpoint and, where
the run held out a validation split (``--val-fraction``), the kept best one
(``best.safetensors``, the lowest validation loss of the EMA model): PCA-16 Fréchet of 500
Heun-50 samples to the 540 held-out digits ("full" protocol of ``benchmarks/REAL_DATA.md``)
and ``nn_ratio``, the median distance of a sample to its nearest training digit over that of
the held-out digits (< 1: closer to the training digits than unseen digits are, i.e.
copies).

A run directory that already holds a finished run of the same command (its checkpoint
records the same settings) is evaluated without training again. Usage::

    python benchmarks/study_memorisation.py --work /tmp/memo \
        --out benchmarks/results/memorisation [--only NAME,...] [--jobs 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

VAL = ["--val-fraction", "0.1", "--val-every", "500"]
POSTHOC = ["--posthoc-ema", "0.05,0.1"]
RUNS = {  # name: (wall minutes, extra flags of scorekit train)
    "plain-5": (5.0, []),
    "plain-5-seed1": (5.0, ["--seed", "1"]),
    "plain-5-seed2": (5.0, ["--seed", "2"]),
    "augment-0.12-5": (5.0, ["--augment", "0.12"]),
    "augment-0.3-5": (5.0, ["--augment", "0.3"]),
    "val-5": (5.0, VAL),
    "val-15": (15.0, VAL),
    "val-learned-15": (15.0, [*VAL, "--weighting", "learned"]),
    "val-augment-0.12-15": (15.0, [*VAL, "--augment", "0.12"]),
    "posthoc-5": (5.0, [*POSTHOC, "--posthoc-every", "250"]),
    "val-posthoc-15": (15.0, [*VAL, *POSTHOC, "--posthoc-every", "500"]),
}
WIDTHS = (0.02, 0.04, 0.06, 0.08, 0.1, 0.13, 0.17, 0.22)  # sigma_rel rebuilt post hoc
CLI = [sys.executable, "-c", "import sys; from scorekit.app.cli import main; sys.exit(main())"]


def _command(minutes: float, flags: list[str], out: Path) -> list[str]:
    return [
        *CLI,
        "train",
        "--data",
        "digits",
        "--minutes",
        f"{minutes:g}",
        *flags,
        "--threads",
        "1",
        "--quiet",
        "--out",
        str(out),
    ]


def _settings(flags: list[str]) -> dict:
    """The checkpoint settings the flags of a run set (the others at their defaults)."""
    f = dict(zip(flags[::2], flags[1::2], strict=True))
    return {
        "augment": float(f.get("--augment", 0.0)),
        "weighting": f.get("--weighting", "fixed"),
        "val_fraction": float(f.get("--val-fraction", 0.0)),
        "posthoc_ema": [float(w) for w in f.get("--posthoc-ema", "").split(",") if w],
        "seed": int(f.get("--seed", 0)),
    }


def _finished(out: Path, minutes: float, flags: list[str]) -> bool:
    """Whether ``out`` holds a run of this command that used its whole budget."""
    try:
        meta = json.loads((out / "checkpoint.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    cli = {"augment": 0.0, "weighting": "fixed", "val_fraction": 0.0, **meta.get("cli", {})}
    cli["posthoc_ema"] = cli.get("train", {}).get("posthoc_ema", [])
    cli["seed"] = cli.get("train", {}).get("seed", 0)
    same = all(cli[k] == v for k, v in _settings(flags).items())
    budget = cli.get("train", {}).get("seconds") == 60 * minutes
    return same and budget and meta.get("elapsed", 0.0) >= 60 * minutes - 1


def _evaluate(path: Path, out: Path) -> dict:
    cmd = [*CLI, "evaluate", str(path), "--data", "digits", "--no-nll", "--quiet", "--overwrite"]
    t0 = time.perf_counter()
    subprocess.run([*cmd, "--out", str(out), "--threads", "1"], check=True, capture_output=True)
    rec = json.loads(out.read_text())
    return {
        "frechet": rec["frechet"],
        "frechet_real": rec["frechet_real"],
        "nn_ratio": rec["nn_ratio"],
        "eval_s": time.perf_counter() - t0,
    }


def run_one(name: str, work: Path, quick: bool) -> dict:
    minutes, flags = RUNS[name]
    minutes = 0.1 if quick else minutes
    out = work / name
    cmd = _command(minutes, flags, out)
    trained = not _finished(out, minutes, flags)
    if trained:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run([*cmd, "--overwrite"] if out.exists() else cmd, check=True, env=env)
    meta = json.loads((out / "checkpoint.json").read_text())
    rec = {
        "name": name,
        "minutes": minutes,
        "flags": flags,
        "command": "scorekit " + " ".join(cmd[len(CLI) :]),
        "trained_now": trained,
        "steps": meta["step"],
        "last": _evaluate(out / "checkpoint.safetensors", work / f"{name}-last.json"),
    }
    if (out / "best.safetensors").exists():
        best = json.loads((out / "best.json").read_text())["best"]
        rec["best_step"], rec["best_val_loss"] = best["step"], best["val_loss"]
        rec["best"] = _evaluate(out / "best.safetensors", work / f"{name}-best.json")
    if "--posthoc-ema" in flags:  # rebuild a grid of widths, score each
        rec["posthoc"] = _posthoc(out, work, name, None)
        _choose(rec, "posthoc")
        if "best_step" in rec:  # the same at the step validation kept
            rec["posthoc_at_best"] = _posthoc(out, work, name, rec["best_step"])
            _choose(rec, "posthoc_at_best")
    return rec


def _posthoc(out: Path, work: Path, name: str, step: int | None) -> list[dict]:
    """``scorekit ema`` over WIDTHS at ``step`` (default the last), each evaluated."""
    widths = ",".join(f"{w:g}" for w in WIDTHS)
    at = [] if step is None else ["--step", str(step)]
    ema = [*CLI, "ema", str(out), "--sigma-rel", widths, *at, "--overwrite", "--threads", "1"]
    subprocess.run(ema, check=True, capture_output=True)
    tag = "" if step is None else f"-step{step}"
    rows = []
    for w in WIDTHS:
        meta = json.loads((out / f"ema-{w:g}{tag}.json").read_text())["posthoc_ema"]
        e = _evaluate(out / f"ema-{w:g}{tag}.safetensors", work / f"{name}-ema-{w:g}{tag}.json")
        rows.append({"sigma_rel": w, "step": meta["step"], "val_loss": meta["val_loss"],
                     "fit_error": meta["fit_error"], **e})  # fmt: skip
    return rows


def _choose(rec: dict, key: str) -> None:
    """The width of lowest validation loss among ``rec[key]``, when they were scored."""
    scored = [r for r in rec[key] if r["val_loss"] is not None]
    if scored:
        rec[key + "_chosen"] = min(scored, key=lambda r: r["val_loss"])["sigma_rel"]


def table(records: list[dict]) -> str:
    rows = [
        "| run | minutes | flags | steps | weights | Fréchet | nn ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        for which in ("last", "best"):
            if which not in r:
                continue
            step = r["steps"] if which == "last" else r["best_step"]
            e = r[which]
            rows.append(
                f"| {r['name']} | {r['minutes']:g} | {' '.join(r['flags']) or '–'} | {step} | "
                f"{which} | {e['frechet']:.2f} | {e['nn_ratio']:.3f} |"
            )
    for r in records:
        for key in ("posthoc", "posthoc_at_best"):
            for e in r.get(key, []):
                lowest = r.get(key + "_chosen") == e["sigma_rel"]
                chosen = " (lowest validation loss)" if lowest else ""
                step = e.get("step", r["steps"])
                rows.append(
                    f"| {r['name']} | {r['minutes']:g} | {' '.join(r['flags'])} | {step} | "
                    f"post-hoc EMA sigma_rel {e['sigma_rel']:g}{chosen} | {e['frechet']:.2f} | "
                    f"{e['nn_ratio']:.3f} |"
                )
    real = records[0]["last"]["frechet_real"] if records else float("nan")
    return "\n".join(rows) + f"\n\nReal digits under the same protocol and seed: {real:.2f}.\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, type=Path, help="where the runs are kept")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--only", default=None, help="comma-separated run names")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="6-second budgets: a smoke run")
    p.add_argument(
        "--table-only",
        action="store_true",
        help="rewrite OUT/memorisation.md from OUT/memorisation.json, run nothing",
    )
    a = p.parse_args(argv)
    if a.table_only:
        result = json.loads((a.out / "memorisation.json").read_text())
        _write_table(a.out, result)
        return result
    names = a.only.split(",") if a.only else list(RUNS)
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        p.error(f"--only: unknown runs {unknown}; known: {', '.join(RUNS)}")
    a.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(a.jobs) as pool:
        records = list(pool.map(lambda n: run_one(n, a.work, a.quick), names))
    old = a.out / "memorisation.json"  # runs not redone now keep their records
    if a.only and old.is_file():
        kept = [r for r in json.loads(old.read_text())["runs"] if r["name"] not in names]
        records = sorted(kept + records, key=lambda r: list(RUNS).index(r["name"]))
    result = {
        "study": "memorisation",
        "quick": a.quick,
        "jobs": a.jobs,
        "wall_minutes_last_call": (time.perf_counter() - t0) / 60,
        "runs": records,
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "memorisation.json").write_text(json.dumps(result, indent=1) + "\n")
    _write_table(a.out, result)
    return result


def _write_table(out: Path, result: dict) -> None:
    records = result["runs"]
    head = (
        "# Keep-best checkpoints, non-leaky augmentation and post-hoc EMA on digits\n\n"
        f"`benchmarks/study_memorisation.py`, quick={result['quick']}; small-images recipe, "
        "seed 0 unless --seed says otherwise, "
        "wall-clock budgets, two runs at a time with one thread each. Fréchet: PCA-16, 500 "
        "Heun-50 samples to the 540 held-out digits. nn ratio: median distance of a sample "
        "to its nearest training digit over that of the held-out digits.\n\n"
    )
    (out / "memorisation.md").write_text(head + table(records))
    print(table(records))


if __name__ == "__main__":
    main()

r"""Autoguidance on digits: does guiding a 5-minute model by an earlier snapshot of itself
(Karras et al. 2024) lower the PCA-16 Fréchet distance of its samples?

For each run (``scorekit train --data digits --minutes 5 --threads 1 --seed S
--posthoc-ema 0.05,0.1 --posthoc-every 250``, trained here when the folder is missing), the
guides are post-hoc EMA reconstructions (sigma_rel 0.1) at earlier steps (``scorekit ema RUN
--sigma-rel 0.1 --step K``). Each configuration draws ``--draws`` sets of 500 Heun-50 samples
(seeds 1, 2, ...; the same starts for every configuration, so the draws are paired) and
scores them with the bench-real protocol (``digits_quality``, "full": 500 samples against the
540 held-out digits; nn ratio beside it). Usage::

    OMP_NUM_THREADS=1 python benchmarks/study_autoguidance.py --runs /tmp/ag/run0,/tmp/ag/run1 \
        --out benchmarks/results/autoguidance
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from real_data import _digits_split  # noqa: E402

from scorekit.app.cli import main as cli  # noqa: E402
from scorekit.guidance import AutoGuidance  # noqa: E402
from scorekit.metrics import digits_quality  # noqa: E402
from scorekit.samplers import sample  # noqa: E402
from scorekit.train.checkpoint import load_model  # noqa: E402

#: (guide step, scale) pairs; None: the model alone
CONFIGS = [(None, 1.0), (500, 1.5), (500, 2.0), (1000, 1.3), (1000, 2.0)]


def _train(run: Path, seed: int) -> None:
    argv = ["train", "--data", "digits", "--minutes", "5", "--threads", "1", "--quiet",
            "--seed", str(seed), "--posthoc-ema", "0.05,0.1", "--posthoc-every", "250",
            "--out", str(run)]  # fmt: skip
    if cli(argv) != 0:
        raise SystemExit(f"training {run} failed")


def _guide(run: Path, step: int) -> Path:
    path = run / f"ema-0.1-step{step}.safetensors"
    if not path.exists():
        if cli(["ema", str(run), "--sigma-rel", "0.1", "--step", str(step), "--quiet"]) != 0:
            raise SystemExit(f"post-hoc EMA of {run} at step {step} failed")
    return path


def _scores(model, normalizer, draws, data) -> list[dict]:
    xtr, xte, ytr = data
    out = []
    for d in range(draws):
        with torch.no_grad():
            r = sample(model, (500, 1, 8, 8), "heun", 50, torch.Generator().manual_seed(1 + d))
        x = normalizer.decode(r.x.double()).clamp(0, 16).reshape(500, 64).numpy()
        q = digits_quality(x, xtr, ytr, xte, protocol="full")
        out.append({"frechet": q["frechet"], "nn_ratio": q["nn_ratio"]})
    return out


def markdown(result: dict) -> str:
    lines = [
        "# Autoguidance on digits (generated from autoguidance.json)",
        "",
        f"{result['draws']} paired draws of 500 Heun-50 samples per configuration; Fréchet: "
        "PCA-16, all samples against the 540 held-out digits (real digits: 13.0 on average).",
        "",
        "| run | guide | scale | Fréchet mean ± s.d. | per draw | nn ratio |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        f = [d["frechet"] for d in r["draws"]]
        nn = statistics.fmean(d["nn_ratio"] for d in r["draws"])
        guide = "-" if r["guide_step"] is None else f"EMA 0.1 at step {r['guide_step']}"
        lines.append(
            f"| seed {r['seed']} ({r['train_steps']} steps) | {guide} | {r['scale']:g} | "
            f"{statistics.fmean(f):.2f} ± {statistics.stdev(f):.2f} | "
            + ", ".join(f"{v:.2f}" for v in f)
            + f" | {nn:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True, help="run folders, comma-separated (seed = index)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/autoguidance"))
    ap.add_argument("--draws", type=int, default=4)
    ap.add_argument("--first-seed", type=int, default=0, help="seed of the first run")
    ap.add_argument("--append", action="store_true", help="add to the record in --out")
    args = ap.parse_args()
    torch.set_num_threads(1)
    xtr, xte, ytr, _ = _digits_split()
    t0, rows = time.time(), []
    runs = [Path(p) for p in args.runs.split(",")]
    for seed, run in enumerate(runs, start=args.first_seed):
        if not (run / "checkpoint.safetensors").exists():
            _train(run, seed)
        model, normalizer, meta = load_model(run / "checkpoint.safetensors")
        for step, scale in CONFIGS:
            m = model
            if step is not None:
                guide, _, _ = load_model(_guide(run, step))
                m = AutoGuidance(model, guide, scale)
            rows.append({"seed": seed, "run": str(run), "train_steps": meta["step"],
                         "guide_step": step, "scale": scale,
                         "draws": _scores(m, normalizer, args.draws, (xtr, xte, ytr))})  # fmt: skip
            print(markdown({"draws": args.draws, "rows": rows[-1:]}).splitlines()[-1], flush=True)
    wall = round(time.time() - t0, 1)
    record = args.out / "autoguidance.json"
    if args.append and record.exists():
        from real_data import append_rows

        rows, old_wall = append_rows(record, rows, ("seed", "guide_step", "scale"))
        wall += old_wall
    result = {"suite": "autoguidance", "date": date.today().isoformat(), "draws": args.draws,
              "rows": rows, "total_wall_s": wall}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "autoguidance.json").write_text(json.dumps(result, indent=2))
    (args.out / "autoguidance.md").write_text(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

r"""Gaussian teleportation on a trained digits model: at 10 and 20 evaluations, does
carrying the start down to sigma = S by the exact flow of the training digits' Gaussian
(:class:`scorekit.samplers.GaussianTeleport`) bring the samples closer to the model's own
probability-flow ODE solution, and does it change their Fréchet distance?

For a run folder (default: a 5-minute ``scorekit train --data digits`` run), from 500
prior draws per seed: a reference solution by Heun on a Karras grid of 200 steps (400
evaluations) from sigma_max to the process's t_min; UniPC-3 on its default grid (log-SNR
uniform) and on a Karras grid; the same solver after a teleport to each S (Karras from S
down); the same with the Gaussian fitted to the model's own denoiser at S
(:meth:`~scorekit.samplers.GaussianTeleport.from_model`, no data). Measured: RMSE to the
reference in model coordinates (pixels (x - 8)/8, 64 per digit), and the PCA-16 Fréchet
distance of the decoded samples to the 540 held-out digits (``digits_quality``, "full").
Usage::

    OMP_NUM_THREADS=1 python benchmarks/study_teleport_digits.py --run RUN \
        --out benchmarks/results/teleport_digits
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

from scorekit.core.schedules import time_grid  # noqa: E402
from scorekit.metrics import digits_quality  # noqa: E402
from scorekit.samplers import GaussianTeleport, make_sampler  # noqa: E402
from scorekit.train.checkpoint import load_model  # noqa: E402
from scorekit.train.data import load_data  # noqa: E402

SIGMAS = (1.0, 2.0, 5.0, 10.0, 20.0)
#: landing levels of the teleport fitted to the model (GaussianTeleport.from_model, 1024
#: evaluations at S, once) instead of to the training digits
FITTED = (5.0, 10.0)
NFES = (10, 20)


def _frechet(x, normalizer, data) -> float:
    xtr, xte, ytr = data
    px = normalizer.decode(x.double()).clamp(0, 16).reshape(len(x), 64).numpy()
    return digits_quality(px, xtr, ytr, xte, protocol="full")["frechet"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/teleport_digits"))
    ap.add_argument("--seeds", default="1,2")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    xtr, xte, ytr, _ = _digits_split()
    data = (xtr, xte, ytr)
    model, normalizer, meta = load_model(args.run)
    proc = model.process
    train = load_data("digits", split="train", normalizer=normalizer).x.double()
    # the teleports depend on neither the seed nor the budget: made once (the fitted ones
    # cost 1024 model evaluations each)
    teleports = [(f"unipc_3 + teleport to {s:g}", GaussianTeleport.fit(train, s, "unipc_3"))
                 for s in SIGMAS]  # fmt: skip
    teleports += [(f"unipc_3 + fitted teleport to {s:g}",  # fitted to the model, no data
                   GaussianTeleport.from_model(model, (1, 8, 8), s, "unipc_3", n=1024,
                                               generator=torch.Generator().manual_seed(99)))
                  for s in FITTED]  # fmt: skip
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        g = torch.Generator().manual_seed(seed)
        x_T = proc.prior_sample((500, 1, 8, 8), g, dtype=torch.float32)
        with torch.no_grad():
            ref = make_sampler("heun")(model, x_T, time_grid(proc, 200, "karras"))
        rows.append({"seed": seed, "config": "reference (Heun, 200 steps)", "nfe": ref.nfe,
                     "rmse": 0.0, "frechet": _frechet(ref.x, normalizer, data)})  # fmt: skip
        for nfe in NFES:
            configs = [("unipc_3, default grid", make_sampler("unipc_3"),
                        make_sampler("unipc_3").default_grid(proc, nfe)),
                       ("unipc_3, Karras", make_sampler("unipc_3"),
                        time_grid(proc, nfe, "karras"))]  # fmt: skip
            configs += [(name, tp, tp.default_grid(proc, nfe)) for name, tp in teleports]
            for name, smp, grid in configs:
                with torch.no_grad():
                    r = smp(model, x_T, grid)
                err = (r.x - ref.x).reshape(500, -1).pow(2).sum(1).mean().sqrt()
                rows.append({"seed": seed, "config": name, "nfe": r.nfe, "rmse": float(err),
                             "frechet": _frechet(r.x, normalizer, data)})  # fmt: skip
                print(rows[-1], flush=True)
    result = {"suite": "teleport_digits", "date": date.today().isoformat(), "run": str(args.run),
              "train_steps": meta["step"], "rows": rows,
              "wall_s": round(time.time() - t0, 1)}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "teleport_digits.json").write_text(json.dumps(result, indent=2))
    (args.out / "teleport_digits.md").write_text(markdown(result))
    return 0


def markdown(result: dict) -> str:
    seeds = sorted({r["seed"] for r in result["rows"]})
    lines = [
        "# Gaussian teleportation on digits (generated from teleport_digits.json)",
        "",
        f"Run {result['run']} ({result['train_steps']} steps); 500 prior draws per seed "
        f"({', '.join(map(str, seeds))}); RMSE to the reference solution (model coordinates, 64 "
        "per digit), Fréchet: PCA-16 against the 540 held-out digits (real digits: 13.0); "
        "mean over the seeds.",
        "",
        "| configuration | NFE | RMSE | Fréchet |",
        "|---|---|---|---|",
    ]
    keys = []
    for r in result["rows"]:
        if (r["config"], r["nfe"]) not in keys:
            keys.append((r["config"], r["nfe"]))
    for config, nfe in keys:
        sel = [r for r in result["rows"] if r["config"] == config and r["nfe"] == nfe]
        rm = statistics.fmean(r["rmse"] for r in sel)
        fr = statistics.fmean(r["frechet"] for r in sel)
        lines.append(f"| {config} | {nfe} | {rm:.3g} | {fr:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

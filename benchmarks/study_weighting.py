r"""The σ question answered by the model: EDM's fixed weighting and law of σ against
learned ones.

Each data set is trained with the recipe ``scorekit train`` picks for it (``toy-2d`` for the
2-D sets, ``vectors`` for gm16, ``small-images`` for digits) once per arm, at equal CPU
budget and seed: with the recipe's fixed EDM weighting and log-normal σ (``fixed``), with
EDM2's learned per-σ weighting on top of it (``learned``:
:class:`scorekit.losses.UncertaintyWeighted`, ``scorekit train --weighting learned``), and
with the fixed weighting but adaptive draws of σ (``adaptive``:
:class:`scorekit.losses.AdaptiveSigma`, ``scorekit train --sigma-sampling adaptive``: more
draws where the loss varies most, reweighted so that the objective is the same). Several
seeds per arm; mean ± s.d. over seeds.

Measured per run (EMA weights):

* exact mixtures (``8gaussians``, ``gm16``, from ``study_noise_levels``): test NLL through
  the probability-flow ODE (exact divergence, dopri5, rtol = atol = 1e-5) minus the exact
  NLL of the same points — an estimate of KL(p || p_model) in nats — and the sliced W2 of
  2000 Heun-50 samples to 2000 fresh points of the target;
* ``moons`` (the bench-real split): test NLL in nats on the first 1000 test points, beside
  the generating density's;
* ``digits`` (the bench-real split): PCA-16 Fréchet of 500 Heun-50 samples to the 540
  held-out digits, and the median nearest-training-digit distance of the samples over that
  of the held-out digits (``nn_ratio`` < 1: closer to the training digits than unseen digits
  are).

Budgets are process CPU time (one thread per run), training only. Usage::

    OMP_NUM_THREADS=1 python benchmarks/study_weighting.py --out benchmarks/results/weighting
        [--quick] [--jobs 2] [--seeds 0,1,2] [--digits-seeds 0,1]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from real_data import (  # noqa: E402
    _digits_split,
    _likelihood,
    _moons_split,
    _samples_digits,
    append_rows,
    moons_true_nll,
    train_budget,
)
from study_noise_levels import eight_gaussians, gm16  # noqa: E402

from scorekit.metrics import digits_quality, sliced_wasserstein  # noqa: E402

ARMS = ("fixed", "learned", "adaptive")
SETS = {  # data set: (recipe, CPU-minutes)
    "8gaussians": ("toy-2d", 2.0),
    "moons": ("toy-2d", 2.0),
    "gm16": ("vectors", 2.0),
    "digits": ("small-images", 5.0),
}


def _settings(recipe: str, arm: str, quick: bool) -> dict:
    from scorekit.app.recipes import recipe_settings

    s = recipe_settings(recipe)
    s["weighting"] = "learned" if arm == "learned" else "fixed"
    s["sigma_sampling"] = "adaptive" if arm == "adaptive" else "fixed"
    if quick:
        small = {"mlp": {"hidden": 64, "depth": 2}, "unet": {"base": 8}}[s["net"]["name"]]
        s["net"] = {**s["net"], **small}
        s["train"] = {**s["train"], "warmup": 20, "batch_size": 64}
    return s


def _standardised(x: torch.Tensor, name: str):
    """A Dataset of ``x`` standardised per coordinate (what the CLI does for vectors), with
    ``log |dz/dx|``."""
    from scorekit.train.data import Dataset, Normalizer

    loc, scale = x.double().mean(0), x.double().std(0)
    norm = Normalizer(loc, scale)
    data = Dataset(x=norm.encode(x.double()).float(), normalizer=norm, name=name)
    return data, norm, float(-torch.log(scale).sum())


def _train(s: dict, data, minutes: float, seed: int):
    from scorekit.app.recipes import build_run

    torch.manual_seed(seed)
    model, objective, examples = build_run(s, data)
    train = {**s["train"], "steps": None, "seconds": 60.0 * minutes, "clock": "process"}
    ema, _, steps, spent, loss = train_budget(model, objective, examples, train, seed)
    return ema, steps, spent


def run_one(name: str, arm: str, seed: int, quick: bool = False) -> dict:
    """Train data set ``name`` with weighting ``arm`` and ``seed``; its measured row."""
    torch.set_num_threads(1)
    recipe, minutes = SETS[name]
    minutes = 0.1 if quick else minutes
    s = _settings(recipe, arm, quick)
    row = {"data": name, "arm": arm, "seed": seed, "recipe": recipe, "budget_cpu_min": minutes,
           "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    c0 = time.process_time()
    if name == "digits":
        from scorekit.train.data import load_data

        Xtr, Xte, ytr, _ = _digits_split()
        data = load_data("digits", split="train")
        ema, steps, spent = _train(s, data, minutes, seed)
        n = 100 if quick else 500
        gen, _, _ = _samples_digits(ema, n, "heun", 10 if quick else 50, seed + 1, data.normalizer)
        q = digits_quality(gen, Xtr, ytr, Xte, protocol="full")
        row.update({k: q[k] for k in ("frechet", "frechet_real", "nn_ratio", "nn_train_median")})
    else:
        if name == "moons":
            xtr, xte = _moons_split()
            xte = xte[: 200 if quick else 1000]
            true = moons_true_nll(xte)
        else:
            target = eight_gaussians() if name == "8gaussians" else gm16()
            xtr = target.sample(20_000, generator=torch.Generator().manual_seed(10)).float()
            xte = target.sample(200 if quick else 1000, generator=torch.Generator().manual_seed(11))
            if name == "gm16":
                xte = xte[: 100 if quick else 500]
            true = -target.log_prob(xte.double())
        data, norm, log_det = _standardised(xtr, name)
        ema, steps, spent = _train(s, data, minutes, seed)
        r, _ = _likelihood(copy.deepcopy(ema).double(), norm.encode(xte.double()),
                           divergence="exact", rtol=1e-4 if quick else 1e-5, n_probes=2,
                           seed=seed)  # fmt: skip
        nll = -(r.log_prob.double() + log_det)
        gap = nll - true
        row.update({
            "nll": float(nll.mean()),
            "true_nll": float(true.mean()),
            "kl": float(gap.mean()),
            "kl_stderr": float(gap.std() / math.sqrt(len(gap))),
        })  # fmt: skip
        if name != "moons":
            from scorekit.samplers import sample

            g = torch.Generator().manual_seed(seed + 1)
            m = 200 if quick else 2000
            with torch.no_grad():
                x = sample(ema, (m, xtr.shape[1]), sampler="heun", steps=10 if quick else 50,
                           generator=g).x  # fmt: skip
            fresh = target.sample(m, generator=torch.Generator().manual_seed(12))
            g = torch.Generator().manual_seed(0)
            row["sw2"] = float(sliced_wasserstein(norm.decode(x.double()), fresh, generator=g))
    row.update({"train_steps": steps, "train_cpu_s": spent, "cpu_s": time.process_time() - c0})
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def _task(args):
    return run_one(*args)


def summary(rows: list[dict]) -> list[dict]:
    """Mean and s.d. over seeds per (data, arm) for each measured value."""
    out = []
    keys = ("kl", "nll", "sw2", "frechet", "nn_ratio", "train_steps")
    for name in SETS:
        for arm in ARMS:
            mine = [r for r in rows if r["data"] == name and r["arm"] == arm]
            if not mine:
                continue
            agg = {"data": name, "arm": arm, "seeds": [r["seed"] for r in mine]}
            for k in keys:
                vals = [r[k] for r in mine if k in r]
                if vals:
                    agg[k] = statistics.fmean(vals)
                    agg[k + "_sd"] = statistics.stdev(vals) if len(vals) > 1 else None
            out.append(agg)
    return out


def _fmt(agg: dict, key: str, digits: int) -> str:
    if key not in agg:
        return "–"
    sd = agg.get(key + "_sd")
    return f"{agg[key]:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def markdown(result: dict) -> str:
    lines = [
        "# Fixed EDM weighting and σ law vs the learned per-σ weighting (EDM2) and adaptive σ "
        "draws, equal CPU budgets",
        "",
        f"`benchmarks/study_weighting.py`, quick={result['quick']}; mean ± s.d. over seeds; "
        f"{result['total_wall_s'] / 60:.1f} minutes wall with {result['jobs']} job(s).",
        "",
        "| data | recipe | CPU-min | arm | seeds | KL (nats) | test NLL | sliced W2 | "
        "Fréchet | nn ratio | steps |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for agg in result["summary"]:
        recipe, minutes = SETS[agg["data"]]
        lines.append(
            f"| {agg['data']} | {recipe} | {0.1 if result['quick'] else minutes:g} | "
            f"{agg['arm']} | {len(agg['seeds'])} | {_fmt(agg, 'kl', 4)} | {_fmt(agg, 'nll', 4)} | "
            f"{_fmt(agg, 'sw2', 4)} | {_fmt(agg, 'frechet', 1)} | {_fmt(agg, 'nn_ratio', 3)} | "
            f"{_fmt(agg, 'train_steps', 0)} |"
        )
    lines += [
        "",
        "KL: test NLL minus the exact NLL of the same points (exact mixtures). Test NLL: nats "
        "per point in data coordinates (moons: the generating density gives "
        + (f"{result['moons_true_nll']:.4f}" if "moons_true_nll" in result else "–")
        + "). Fréchet: PCA-16, 500 samples to the 540 held-out digits (real digits: 13.0). "
        "nn ratio: median distance of a sample to its nearest training digit over that of "
        "the held-out digits.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--quick", action="store_true", help="tiny budgets: a smoke run")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--seeds", default="0,1,2", help="seeds of the 2-D and 16-D sets")
    p.add_argument("--digits-seeds", default="0,1")
    p.add_argument("--only", default=None, help="comma-separated data sets")
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated arms")
    p.add_argument(
        "--append",
        action="store_true",
        help="add these runs to the record in --out (same data, arm, seed: replaced)",
    )
    a = p.parse_args(argv)
    arms = a.arms.split(",")
    if not arms or any(v not in ARMS for v in arms):
        p.error(f"--arms must name some of {', '.join(ARMS)}, got {a.arms!r}")
    only = a.only.split(",") if a.only else list(SETS)
    seeds = [int(v) for v in a.seeds.split(",")]
    dseeds = [int(v) for v in a.digits_seeds.split(",")]
    tasks = [(name, arm, sd, a.quick) for name in only for sd in (dseeds if name == "digits"
             else seeds) for arm in arms]  # fmt: skip
    tasks.sort(key=lambda t: -SETS[t[0]][1])  # longest first
    t0 = time.perf_counter()
    if a.jobs == 1:
        rows = [_task(t) for t in tasks]
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(a.jobs, mp_context=mp.get_context("spawn")) as pool:
            rows = list(pool.map(_task, tasks))
    wall = time.perf_counter() - t0
    record = a.out / "weighting.json"
    if a.append and record.exists():
        rows, old_wall = append_rows(record, rows, ("data", "arm", "seed"))
        wall += old_wall
    result = {"quick": a.quick, "jobs": a.jobs, "torch": torch.__version__, "rows": rows,
              "summary": summary(rows), "total_wall_s": wall}  # fmt: skip
    moons = [r for r in rows if r["data"] == "moons"]
    if moons:
        result["moons_true_nll"] = moons[0]["true_nll"]
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "weighting.json").write_text(json.dumps(result, indent=1) + "\n")
    (a.out / "weighting.md").write_text(markdown(result))
    return result


if __name__ == "__main__":
    main()

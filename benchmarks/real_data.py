r"""Real-data results: sklearn digits and two moons, quality per CPU-minute and likelihood.

Usage::

    python benchmarks/real_data.py --out DIR [--quick] [--digits-minutes 5,15]
        [--likelihood-minutes 5,15] [--moons-minutes 5] [--only digits|moons] [--jobs 2]

Each budget is its own run of a named setup (:data:`SETUPS`): digits-samples at 5 and 15
CPU-minutes, digits-likelihood at 5 and 15, moons at 5; ``--jobs`` runs them in parallel
processes, one thread each.

Writes ``DIR/real_data.json`` and ``DIR/real_data.md``. Budgets are **process CPU time**
(``time.process_time``) with ``torch.set_num_threads(1)``: one thread, so CPU-minutes and
wall-minutes agree on an idle machine and stay comparable on a shared one. The budget
counts training only; sampling and likelihood evaluation are timed separately.

Data and splits (the reference's): digits ``load_digits`` split by
``train_test_split(test_size=0.3, random_state=0, stratify=y)``; moons
``make_moons(20000, noise=0.05, random_state=0)`` (train) and ``make_moons(5000,
noise=0.05, random_state=1)`` (test).

Bits/dim convention (the reference's): a digit's pixels :math:`x \in \{0..16\}^{64}` are
dequantized as :math:`u = (x + U)/17`, :math:`U \sim U[0,1)^{64}`, and
:math:`\text{bpd} = -(\log p_u(u) - D\log 17)/(D\ln 2)`, an upper bound (in expectation)
on :math:`-\log_2 P(x)/D`. The model works on :math:`z = (17u - c)/s`, an affine image of
:math:`u`, so :math:`\log p_u(u) = \log p_z(z) + D\log(17/s)` and
:math:`\text{bpd} = -(\log p_z(z) - D\log s)/(D\ln 2)` (:func:`bpd_from_model_log_prob`).
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

import numpy as np
import torch

from scorekit import ScoreModel
from scorekit.likelihood import log_prob
from scorekit.metrics import digits_quality
from scorekit.samplers import sample

__all__ = [
    "SETUPS",
    "bpd_from_model_log_prob",
    "dequantize",
    "main",
    "moons_true_nll",
    "real_baseline",
    "run_task",
    "train_budget",
]

CENTER, SCALE = 8.5, 8.5  # model space z = (x + U - CENTER) / SCALE lies in [-1, 1)


def dequantize(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    r"""Pixels :math:`x \in \{0..16\}` to model space :math:`z = (x + U - 8.5)/8.5`,
    :math:`U \sim U[0, 1)`: the reference's :math:`u = (x+U)/17` up to an affine map."""
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype)
    return (x + u - CENTER) / SCALE


def bpd_from_model_log_prob(log_p_z: torch.Tensor, dim: int, scale: float = SCALE) -> torch.Tensor:
    r"""Bits/dim of the reference's convention from the model-space log-density.

    With :math:`z = (17u - c)/s`, :math:`\log p_u(u) = \log p_z(z) + D\log(17/s)`, so
    :math:`-(\log p_u - D\log 17)/(D\ln 2) = -(\log p_z - D\log s)/(D\ln 2)`."""
    return -(log_p_z.double() - dim * math.log(scale)) / (dim * math.log(2))


def _cpu() -> float:
    return time.process_time()


def train_budget(model, objective, data, train: dict, seed: int):
    r"""The Trainer with the settings ``train`` (a recipe's, with the budget: ``seconds`` of
    the ``"process"`` clock, so a CPU budget; the cosine schedule decays to zero at its end).

    Returns ``(ema_copy, raw_copy, steps, cpu_seconds, mean loss of the last 200 steps)``.
    """
    from scorekit.train import TrainConfig, Trainer

    cfg = TrainConfig.from_dict({**train, "seed": seed, "log_every": 200, "progress": False})
    logs = []
    trainer = Trainer(model, objective, data, cfg, device="cpu",
                      callbacks=[lambda tr, rec: logs.append(rec)])  # fmt: skip
    fit = trainer.fit()
    raw = copy.deepcopy(trainer.model).eval().requires_grad_(False)
    ema_copy = copy.deepcopy(trainer.ema.module).eval().requires_grad_(False)
    full = [r for r in logs if r["step"] % 200 == 0] or logs  # the last full interval
    return ema_copy, raw, fit["step"], fit["seconds"], full[-1]["loss"]


def _samples_digits(model, n, sampler, steps, seed, normalizer):
    g = torch.Generator().manual_seed(seed)
    c0 = _cpu()
    with torch.no_grad():
        res = sample(model, (n, 1, 8, 8), sampler=sampler, steps=steps, generator=g)
    # back to the pixel scale (the dequantization bins are centred on the levels)
    x = normalizer.decode(res.x.double()).clamp(0, 16).reshape(n, 64).numpy()
    return x, res.nfe, _cpu() - c0


def _likelihood(model, z, *, divergence, rtol, n_probes, seed):
    g = torch.Generator().manual_seed(seed)
    c0 = _cpu()
    r = log_prob(
        model,
        z,
        divergence=divergence,
        method="dopri5",
        rtol=rtol,
        atol=rtol,
        n_probes=n_probes,
        generator=g,
    )
    return r, _cpu() - c0


def real_baseline(Xtr: np.ndarray, Xte: np.ndarray, n: int = 500, draws: int = 10) -> dict:
    """Fréchet distance (PCA-16 fitted on ``Xtr``) from ``n`` random training digits to all
    of ``Xte``, over ``draws`` random subsets: what real digits score under the protocol."""
    from sklearn.decomposition import PCA

    from scorekit.metrics import frechet_distance

    pca = PCA(16, random_state=0).fit(Xtr)
    ref = pca.transform(Xte)
    fds = [
        frechet_distance(
            pca.transform(Xtr[np.random.default_rng(s).permutation(len(Xtr))[:n]]), ref
        )
        for s in range(draws)
    ]
    return {"n": n, "draws": draws, "mean": float(np.mean(fds)), "min": min(fds), "max": max(fds)}


# The setups the table is made with: each is a recipe of scorekit.app.recipes, trained on
# the benchmark's data by the Trainer for one CPU budget (the learning rate decays to zero
# at its end, so a 15-minute run is not a 5-minute run continued). "digits-samples" is the
# recipe `scorekit train --data digits` picks; "digits-likelihood" the one chosen for
# bits/dim; "moons" the one `--data moons` picks.
SETUPS = {
    "digits-samples": {"data": "digits", "recipe": "small-images"},
    "digits-likelihood": {"data": "digits", "recipe": "small-images-nll"},
    "moons": {"data": "moons", "recipe": "toy-2d"},
}
QUICK_NET = {"mlp": {"hidden": 64, "depth": 2}, "unet": {"base": 8}}


def _digits_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    X, y = d.data.astype(np.float64), d.target
    return train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)


def _moons_split():
    from sklearn.datasets import make_moons

    xtr = torch.tensor(make_moons(20000, noise=0.05, random_state=0)[0], dtype=torch.float32)
    xte = torch.tensor(make_moons(5000, noise=0.05, random_state=1)[0], dtype=torch.float64)
    return xtr, xte


def _settings(name: str, quick: bool) -> dict:
    from scorekit.app.recipes import recipe_settings

    s = recipe_settings(SETUPS[name]["recipe"])
    s["data"] = SETUPS[name]["data"]
    if quick:
        s["net"] = {**s["net"], **QUICK_NET[s["net"]["name"]]}
        s["train"] = {**s["train"], "warmup": 20, "batch_size": 64}
    return s


def _train(s: dict, data, minutes: float, seed: int):
    """The recipe's run for ``minutes`` of this process's CPU time (one thread)."""
    from scorekit.app.recipes import build_run

    torch.manual_seed(seed)
    model, objective, examples = build_run(s, data)
    train = {**s["train"], "steps": None, "seconds": 60.0 * minutes, "clock": "process"}
    ema, raw, steps, spent, loss = train_budget(model, objective, examples, train, seed)
    return model, ema, raw, steps, spent, loss


def _choices(s: dict, model: ScoreModel, shape, n) -> dict:
    from scorekit.app.recipes import describe

    return {
        "recipe": describe(s, shape, n, auto=False).replace("\n", ";"),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def run_task(name: str, minutes: float, quick: bool = False, seed: int = 0) -> dict:
    """Train the setup ``name`` of :data:`SETUPS` for ``minutes`` CPU-minutes (one thread)
    and evaluate it: digits — 500 samples (EMA and raw weights) and test bits/dim;
    moons — test NLL through the exact probability-flow ODE."""
    torch.set_num_threads(1)
    s = _settings(name, quick)
    if s["data"] == "digits":
        out = _run_digits(name, s, minutes, quick, seed)
    else:
        out = _run_moons(name, s, minutes, quick, seed)
    out["seed"] = seed
    for row in out["rows"]:
        row["seed"] = seed
    out["date"] = time.strftime("%Y-%m-%d")
    out["commit"] = _commit()
    return out


def _commit() -> str | None:
    """The checked-out commit of this repository (``None`` outside a git checkout)."""
    import subprocess

    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=7"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return done.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


#: the headline rows: (setup, CPU-minutes) run for every seed of ``--headline-seeds`` (with
#: ``--quick``, these setups at any budget)
HEADLINE = (("digits-samples", 5.0), ("moons", 5.0))


def headline_summary(runs: list[dict]) -> list[dict]:
    """Mean and sample s.d. over seeds of each headline measure (EMA weights): per setup and
    budget, the Fréchet distance and nearest-training-digit ratio of the samples, the test
    bits/dim, or the moons test NLL; only groups measured on two seeds or more."""
    groups: dict[tuple, list] = {}
    for run in runs:
        for r in run["rows"]:
            if r.get("weights") != "ema":
                continue
            key = (run["setup"], r["budget_cpu_min"], r["kind"])
            groups.setdefault(key, []).append((run.get("seed", 0), r))
    measures = {"samples": ("frechet", "nn_ratio"), "bpd": ("bpd",), "nll": ("nll_nats",)}
    out = []
    for (setup, minutes, kind), rows in groups.items():
        seeds = sorted({seed for seed, _ in rows})
        if len(seeds) < 2 or len(seeds) != len(rows):
            continue
        agg = {"setup": setup, "budget_cpu_min": minutes, "kind": kind, "seeds": seeds}
        for m in measures[kind]:
            vals = [r[m] for _, r in sorted(rows, key=lambda sr: sr[0]) if m in r]
            if len(vals) == len(rows):
                agg[m] = statistics.fmean(vals)
                agg[m + "_sd"] = statistics.stdev(vals)
                agg[m + "_values"] = vals
        out.append(agg)
    return out


def _run_digits(name, s, minutes, quick, seed):
    from scorekit.train.data import load_data

    Xtr, Xte, ytr, _ = _digits_split()
    data = load_data("digits", split="train")  # the same split; pixels (x - 8) / 8
    test = torch.tensor(Xte, dtype=torch.float64)
    model, ema, raw, steps, spent, loss = _train(s, data, minutes, seed)
    common = {
        "setup": name,
        "recipe": s["recipe"],
        "budget_cpu_min": minutes,
        "train_steps": steps,
        "train_cpu_s": spent,
        "steps_per_s": steps / spent,
        "loss": loss,
    }
    sampler, k = s["sample"]["sampler"], (10 if quick else s["sample"]["steps"])
    n_gen = 100 if quick else 500
    rows = []
    for weights, net in (("ema", ema), ("raw", raw)):
        gen, nfe, cpu = _samples_digits(net, n_gen, sampler, k, seed + 1, data.normalizer)
        q = digits_quality(gen, Xtr, ytr, Xte, protocol="full")
        q_halves = digits_quality(gen, Xtr, ytr, Xte, protocol="halves")
        rows.append(
            {
                "kind": "samples",
                "weights": weights,
                "sampler": sampler,
                "sampler_steps": k,
                "nfe": nfe,
                "n_samples": n_gen,
                "sample_cpu_s": cpu,
                "frechet_halves": q_halves["frechet"],
                "frechet_real_halves": q_halves["frechet_real"],
                **q,
                **common,
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    n_bpd = 40 if quick else len(test)
    # one dequantization sample per test digit: z = (x + U - 1/2 - 8) / 8 = (17 u - 8.5) / 8
    u = torch.rand(test[:n_bpd].shape, generator=torch.Generator().manual_seed(seed + 7),
                   dtype=torch.float64)  # fmt: skip
    z_test = (test[:n_bpd] + u - 0.5 - 8.0) / 8.0
    rtol, probes = (1e-3, 2) if quick else (1e-4, 4)
    r, cpu = _likelihood(
        copy.deepcopy(ema).double(),
        z_test.reshape(-1, 1, 8, 8),
        divergence="hutchinson",
        rtol=rtol,
        n_probes=probes,
        seed=seed + 3,
    )
    bpd = bpd_from_model_log_prob(r.log_prob, 64, scale=8.0)
    hutch = (r.stderr.double() ** 2).sum().sqrt() / len(bpd) / (64 * math.log(2))
    rows.append(
        {
            "kind": "bpd",
            "weights": "ema",
            "n_test": n_bpd,
            "bpd": float(bpd.mean()),
            "bpd_stderr": float(bpd.std() / math.sqrt(len(bpd))),
            "bpd_hutchinson_stderr": float(hutch),
            "divergence": f"hutchinson ({probes} Rademacher probes)",
            "ode": f"dopri5 rtol=atol={rtol:g}",
            "nfe": r.nfe,
            "eval_cpu_s": cpu,
            **common,
        }
    )
    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {
        "setup": name,
        "data": "digits",
        "minutes": minutes,
        "rows": rows,
        "choices": _choices(s, model, data.shape, len(data)),
    }


def _run_moons(name, s, minutes, quick, seed):
    from scorekit.train.data import Dataset, Normalizer

    xtr, xte = _moons_split()
    loc, scale = xtr.double().mean(0), xtr.double().std(0)
    norm = Normalizer(loc, scale)
    data = Dataset(x=norm.encode(xtr.double()).float(), normalizer=norm, name="moons")
    n_test = 500 if quick else len(xte)
    zte = norm.encode(xte[:n_test].double())
    log_det = float(-torch.log(scale).sum())  # log |dz/dx|
    model, ema, _, steps, spent, loss = _train(s, data, minutes, seed)
    rtol = 1e-4 if quick else 1e-5
    r, cpu = _likelihood(
        copy.deepcopy(ema).double(),
        zte,
        divergence="exact",
        rtol=rtol,
        n_probes=2,
        seed=seed,
    )
    nll = -(r.log_prob.double() + log_det)
    row = {
        "kind": "nll",
        "setup": name,
        "recipe": s["recipe"],
        "budget_cpu_min": minutes,
        "weights": "ema",
        "n_test": n_test,
        "nll_nats": float(nll.mean()),
        "nll_stderr": float(nll.std() / math.sqrt(len(nll))),
        "true_nll_nats": float(moons_true_nll(xte[:n_test]).mean()),
        "divergence": "exact",
        "ode": f"dopri5 rtol=atol={rtol:g}",
        "nfe": r.nfe,
        "eval_cpu_s": cpu,
        "train_steps": steps,
        "train_cpu_s": spent,
        "steps_per_s": steps / spent,
        "loss": loss,
    }
    print(json.dumps(row), file=sys.stderr, flush=True)
    choices = _choices(s, model, data.shape, len(data))
    choices["normalisation"] = (
        "standardised per coordinate (train mean/std); NLL moved back "
        "to data coordinates with the log-determinant"
    )
    return {"setup": name, "data": "moons", "minutes": minutes, "rows": [row], "choices": choices}


def moons_true_nll(x: torch.Tensor, noise: float = 0.05, n_arc: int = 20001) -> torch.Tensor:
    r"""The generating density of ``make_moons(noise=...)``: half the points on each arc
    (outer :math:`(\cos\theta, \sin\theta)`, inner :math:`(1 - \cos\theta, \tfrac12 -
    \sin\theta)`, :math:`\theta` uniform on :math:`[0, \pi]`) plus :math:`\mathcal N(0,
    \text{noise}^2 I)`; :math:`-\log p(x)` by the arc integral on ``n_arc`` points per arc.
    """
    th = torch.linspace(0, math.pi, n_arc, dtype=torch.float64)
    arcs = torch.cat(
        [torch.stack([th.cos(), th.sin()], 1), torch.stack([1 - th.cos(), 0.5 - th.sin()], 1)]
    )
    out = []
    for chunk in x.double().split(256):
        d2 = torch.cdist(chunk, arcs) ** 2
        lp = -d2 / (2 * noise**2) - math.log(2 * math.pi * noise**2)
        out.append(-(torch.logsumexp(lp, 1) - math.log(len(arcs))))
    return torch.cat(out)


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]


def _seeds(result: dict) -> list[int]:
    """The seeds of a record (older records name one ``seed``)."""
    return result.get("seeds") or [result.get("seed", 0)]


def _markdown(result: dict) -> str:
    runs = sorted(result["runs"], key=lambda r: (r["setup"], -r["minutes"], r.get("seed", 0)))
    digits = [r for run in runs if run["data"] == "digits" for r in run["rows"]]
    moons = [r for run in runs if run["data"] == "moons" for r in run["rows"]]
    lines = [
        "# scorekit on real data (measured by `benchmarks/real_data.py`)",
        "",
        f"Budgets: {result['budget_clock']}. quick={result['quick']}, seeds="
        f"{','.join(str(v) for v in _seeds(result))}; "
        f"{result['total_cpu_s'] / 60:.1f} CPU-minutes, {result['total_wall_s'] / 60:.1f} "
        f"minutes wall with {result['jobs']} job(s).",
        "",
    ]
    if digits:
        b = result["real_digits_frechet"]
        lines += ["## Digits: sample quality (500 samples, Heun)", ""]
        lines += _table(
            [
                "setup",
                "CPU-min",
                "weights",
                "sampler",
                "NFE",
                "seed",
                "Fréchet (vs 540 test)",
                "nn ratio",
                "Fréchet (halves)",
                "top-class ratio",
                "min class share",
                "steps",
                "steps/s",
            ],
            [
                [
                    r["setup"],
                    f"{r['budget_cpu_min']:g}",
                    r["weights"],
                    f"{r['sampler']} {r['sampler_steps']}",
                    str(r["nfe"]),
                    str(r.get("seed", 0)),
                    f"{r['frechet']:.1f}",
                    f"{r['nn_ratio']:.3f}" if "nn_ratio" in r else "–",
                    f"{r['frechet_halves']:.1f} (real {r['frechet_real_halves']:.1f})",
                    f"{r['top_class_prob_ratio']:.3f}",
                    f"{r['min_class_share']:.3f}",
                    str(r["train_steps"]),
                    f"{r['steps_per_s']:.1f}",
                ]
                for r in digits
                if r["kind"] == "samples"
            ],
        )
        lines += [
            "",
            f"Real digits under the same protocol ({b['n']} random training digits "
            f"vs the 540 held-out, {b['draws']} draws): Fréchet {b['mean']:.1f} (range "
            f"{b['min']:.1f}-{b['max']:.1f}).",
            "",
            "## Digits: test bits/dim (u = (x+U)/17, one dequantization sample)",
            "",
        ]
        lines += _table(
            [
                "setup",
                "CPU-min",
                "seed",
                "bits/dim",
                "± s.e. (data)",
                "± s.e. (Hutchinson)",
                "divergence",
                "ODE",
                "NFE",
                "eval CPU s",
            ],
            [
                [
                    r["setup"],
                    f"{r['budget_cpu_min']:g}",
                    str(r.get("seed", 0)),
                    f"{r['bpd']:.3f}",
                    f"{r['bpd_stderr']:.3f}",
                    f"{r['bpd_hutchinson_stderr']:.3f}",
                    r["divergence"],
                    r["ode"],
                    str(r["nfe"]),
                    f"{r['eval_cpu_s']:.0f}",
                ]
                for r in digits
                if r["kind"] == "bpd"
            ],
        )
        lines.append("")
    if moons:
        lines += ["## Moons: test NLL (nats/point, data coordinates)", ""]
        lines += _table(
            [
                "setup",
                "CPU-min",
                "seed",
                "NLL",
                "± s.e.",
                "true density",
                "divergence",
                "ODE",
                "NFE",
                "eval CPU s",
                "steps",
                "steps/s",
            ],
            [
                [
                    r["setup"],
                    f"{r['budget_cpu_min']:g}",
                    str(r.get("seed", 0)),
                    f"{r['nll_nats']:.4f}",
                    f"{r['nll_stderr']:.4f}",
                    f"{r['true_nll_nats']:.4f}",
                    r["divergence"],
                    r["ode"],
                    str(r["nfe"]),
                    f"{r['eval_cpu_s']:.0f}",
                    str(r["train_steps"]),
                    f"{r['steps_per_s']:.1f}",
                ]
                for r in moons
            ],
        )
        lines.append("")
    head = headline_summary(runs)
    if head:
        lines += [
            "## Headline rows over seeds (EMA weights; mean ± s.d., then each seed's value)",
            "",
        ]
        names = {"frechet": ("Fréchet (vs 540 test)", 1), "nn_ratio": ("nn ratio", 3),
                 "bpd": ("bits/dim", 3), "nll_nats": ("moons test NLL", 4)}  # fmt: skip
        table = []
        for agg in head:
            for m, (label, digits) in names.items():
                if m in agg:
                    table.append([
                        agg["setup"], f"{agg['budget_cpu_min']:g}", label,
                        ",".join(str(v) for v in agg["seeds"]),
                        f"{agg[m]:.{digits}f} ± {agg[m + '_sd']:.{digits}f}",
                        ", ".join(f"{v:.{digits}f}" for v in agg[m + "_values"]),
                    ])  # fmt: skip
        lines += _table(["setup", "CPU-min", "measure", "seeds", "mean ± s.d.", "per seed"], table)
        lines.append("")
    dated = sorted({(run.get("date"), run.get("commit")) for run in runs if run.get("date")})
    if dated:
        lines += [
            "Runs by date and commit: "
            + "; ".join(f"{d} ({c or 'no commit'})" for d, c in dated)
            + (
                "; runs without a date come from an earlier record."
                if any("date" not in run for run in runs)
                else "."
            ),
            "",
        ]
    lines += ["## Choices", ""]
    seen = set()
    for run in runs:
        if run["setup"] not in seen:
            seen.add(run["setup"])
            lines.append(
                f"* **{run['setup']}**: "
                + "; ".join(f"{k}: {v}" for k, v in run["choices"].items())
            )
    return "\n".join(lines) + "\n"


def _task(args: tuple) -> dict:
    c0 = _cpu()
    out = run_task(*args)
    out["cpu_s"] = _cpu() - c0
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--quick", action="store_true", help="tiny budgets (< 2 min): a smoke run")
    p.add_argument(
        "--digits-minutes",
        default=None,
        help="CPU budgets of the digits-samples setup (default 5,15)",
    )
    p.add_argument(
        "--likelihood-minutes",
        default=None,
        help="CPU budgets of the digits-likelihood setup (default 5,15)",
    )
    p.add_argument("--moons-minutes", default=None, help="CPU budgets on moons (default 5)")
    p.add_argument("--only", choices=("digits", "moons"), default=None)
    p.add_argument("--seed", type=int, default=0, help="seed of the other runs (default 0)")
    p.add_argument(
        "--headline-seeds",
        default=None,
        help="seeds of the headline runs (digits-samples and moons at 5 CPU-minutes), "
        "reported as mean +- s.d. (default: --seed and the next two; with --quick: --seed)",
    )
    p.add_argument(
        "--append",
        action="store_true",
        help="merge these runs into the record in --out (same setup, budget and seed: replaced)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="runs in parallel, one thread each (default 2; 1 with --quick)",
    )
    a = p.parse_args(argv)
    jobs = a.jobs or (1 if a.quick else 2)
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")

    def budgets(value, quick, full):
        value = (quick if a.quick else full) if value is None else value
        return [float(v) for v in value.split(",") if v]

    if a.headline_seeds is None:
        headline_seeds = [a.seed] if a.quick else [a.seed, a.seed + 1, a.seed + 2]
    else:
        try:
            headline_seeds = [int(v) for v in a.headline_seeds.split(",")]
        except ValueError:
            headline_seeds = []
        if not headline_seeds or len(set(headline_seeds)) != len(headline_seeds):
            raise ValueError(f"--headline-seeds must be distinct integers separated by commas, "
                             f"got {a.headline_seeds!r}")  # fmt: skip

    tasks = []
    if a.only in (None, "digits"):
        tasks += [("digits-samples", m) for m in budgets(a.digits_minutes, "0.25", "5,15")]
        tasks += [("digits-likelihood", m) for m in budgets(a.likelihood_minutes, "0.25", "5,15")]
    if a.only in (None, "moons"):
        tasks += [("moons", m) for m in budgets(a.moons_minutes, "0.15", "5")]
    tasks.sort(key=lambda task: -task[1])  # longest first: the jobs finish together
    t0, c0 = time.perf_counter(), _cpu()
    if not tasks:
        raise ValueError("no runs asked for: every budget list is empty")
    args = []
    for name, m in tasks:
        headline = (name, m) in HEADLINE or (a.quick and name in dict(HEADLINE))
        seeds = headline_seeds if headline else [a.seed]
        args += [(name, m, a.quick, seed) for seed in seeds]
    threads = torch.get_num_threads()
    if jobs == 1:
        runs = [_task(x) for x in args]
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
            runs = list(pool.map(_task, args))
    torch.set_num_threads(threads)
    wall = time.perf_counter() - t0
    record = a.out / "real_data.json"
    if a.append and record.exists():
        old = json.loads(record.read_text())
        if old.get("quick") != a.quick:
            raise ValueError(f"--append: {record} has quick={old.get('quick')}, this run {a.quick}")
        new = {(run["setup"], run["minutes"], run["seed"]) for run in runs}
        first = old.get("seed", 0)  # older records name one seed for all their runs
        kept = [run for run in old["runs"]
                if (run["setup"], run["minutes"], run.get("seed", first)) not in new]  # fmt: skip
        for run in kept:
            run.setdefault("seed", first)
            for row in run["rows"]:
                row.setdefault("seed", run["seed"])
        runs = kept + runs
        wall += old.get("total_wall_s", 0.0)
    result = {
        "quick": a.quick,
        "seeds": sorted({run["seed"] for run in runs}),
        "jobs": jobs,
        "budget_clock": "process CPU time (time.process_time), torch.set_num_threads(1); "
        "training only",
        "torch": torch.__version__,
        "runs": runs,
    }
    if any(run["data"] == "digits" for run in runs):
        Xtr, Xte, _, _ = _digits_split()
        result["real_digits_frechet"] = real_baseline(Xtr, Xte, 100 if a.quick else 500)
    result["headline"] = headline_summary(runs)
    result["total_cpu_s"] = sum(run["cpu_s"] for run in runs) + _cpu() - c0
    result["total_wall_s"] = wall
    a.out.mkdir(parents=True, exist_ok=True)
    _write(a.out / "real_data.json", json.dumps(result, indent=2))
    _write(a.out / "real_data.md", _markdown(result))
    if not a.quick:  # what `scorekit recipes` shows, regenerated from this record
        write_recipe_figures(recipe_figures(result))
    return result


RECIPES_MEASURED = Path(__file__).resolve().parents[1] / "src/scorekit/app/measured.json"


def append_rows(record: Path, rows: list[dict], keys: tuple[str, ...]) -> tuple[list, float]:
    """``--append`` of a study: the rows of the JSON ``record`` whose ``keys`` no new row
    has, then the new ``rows``; and the record's wall time, to add to this run's."""
    old = json.loads(record.read_text())
    new = {tuple(r[k] for k in keys) for r in rows}
    kept = [r for r in old["rows"] if tuple(r[k] for k in keys) not in new]
    return kept + rows, old["total_wall_s"]


def write_recipe_figures(figures: dict) -> None:
    """Replace the entries of the recipes in ``figures`` in ``measured.json``, keeping the
    other recipes' (each benchmark writes the recipes it measures)."""
    try:
        old = json.loads(RECIPES_MEASURED.read_text())
    except (OSError, json.JSONDecodeError):
        old = {}
    merged = {k: v for k, v in old.items() if k not in figures} | figures
    _write(RECIPES_MEASURED, json.dumps(dict(sorted(merged.items())), indent=1) + "\n")


def recipe_figures(result: dict) -> dict:
    """Each recipe's measured figures in a bench-real record, as ``scorekit recipes`` lists
    them (``{recipe: [{"what", "value", "budget", "source"}]}``)."""
    out: dict[str, list] = {}
    head = {(h["setup"], h["budget_cpu_min"], h["kind"]): h for h in result.get("headline", [])}
    done = set()
    for run in result["runs"]:
        for r in run["rows"]:
            if r.get("weights") != "ema":
                continue
            key = (run["setup"], r["budget_cpu_min"], r["kind"])
            if key in done:
                continue
            done.add(key)
            seed = run.get("seed", result.get("seed", 0))
            source = f"make bench-real, seed {seed}, torch {result['torch']}"
            budget = f"{r['budget_cpu_min']:g} CPU-min"
            h = head.get(key)
            if h is not None:
                source = (f"make bench-real, mean +- s.d. over seeds "
                          f"{','.join(map(str, h['seeds']))}, torch {result['torch']}")  # fmt: skip
            if r["kind"] == "samples":
                what = "digits PCA-16 Frechet (500 samples vs the 540 held out)"
                b = result.get("real_digits_frechet")  # real digits over its draws, else one
                real = (f"real digits {b['mean']:.1f} over {b['draws']} draws" if b else
                        f"real digits {r['frechet_real']:.1f}")  # fmt: skip
                value = f"{r['frechet']:.1f} ({real})"
                if h is not None:
                    value = f"{h['frechet']:.1f} +- {h['frechet_sd']:.1f} ({real})"
            elif r["kind"] == "bpd":
                what = "digits test bits/dim"
                value = f"{r['bpd']:.3f} +- {r['bpd_stderr']:.3f}"
                if h is not None:
                    value = f"{h['bpd']:.3f} +- {h['bpd_sd']:.3f}"
            else:
                what = "moons test NLL (nats)"
                value = (f"{r['nll_nats']:.4f} +- {r['nll_stderr']:.4f} (true density "
                         f"{r['true_nll_nats']:.4f})")  # fmt: skip
                if h is not None:
                    value = (f"{h['nll_nats']:.4f} +- {h['nll_nats_sd']:.4f} (true density "
                             f"{r['true_nll_nats']:.4f})")  # fmt: skip
            entry = {"what": what, "value": value, "budget": budget, "source": source}
            out.setdefault(r["recipe"], []).append(entry)
    return out


def _write(path: Path, text: str) -> None:
    from scorekit.train.checkpoint import write_atomic

    write_atomic(path, text.encode())


if __name__ == "__main__":
    main()

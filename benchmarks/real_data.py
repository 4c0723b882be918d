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
import sys
import time
from pathlib import Path

import numpy as np
import torch

from scorekit import EDM, EDMPrecond, ScoreModel
from scorekit.likelihood import log_prob
from scorekit.losses import Dequantized, EDMLoss
from scorekit.metrics import digits_quality
from scorekit.nets import MLP
from scorekit.samplers import sample

__all__ = [
    "SETUPS",
    "bpd_from_model_log_prob",
    "build",
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


def train_budget(model, objective, data, minutes, setup: dict, seed: int):
    r"""The Trainer for ``minutes`` of this process's CPU time: AdamW without weight decay
    (Adam), grad-norm clip 1, linear warm-up, then a cosine decay of the learning rate to
    zero at the end of the budget, :math:`\eta = \eta_0\,\tfrac12(1 + \cos(\pi c/C))`
    with :math:`c` the CPU seconds spent of :math:`C = 60\,` ``minutes``, with an EMA; the
    setup gives ``lr``, ``warmup`` (steps), ``ema`` (decay) and ``batch``.

    Returns ``(ema_copy, raw_copy, steps, cpu_seconds, mean loss of the last 200 steps)``.
    """
    from scorekit.train import TrainConfig, Trainer

    cfg = TrainConfig(
        steps=None,
        seconds=60.0 * minutes,
        clock="process",
        batch_size=setup["batch"],
        lr=setup["lr"],
        schedule="cosine",
        warmup=setup["warmup"],
        grad_clip=1.0,
        ema_decay=setup["ema"],
        seed=seed,
        log_every=200,
        progress=False,
    )
    logs = []
    trainer = Trainer(model, objective, data, cfg, device="cpu",
                      callbacks=[lambda tr, rec: logs.append(rec)])  # fmt: skip
    fit = trainer.fit()
    raw = copy.deepcopy(trainer.model).eval().requires_grad_(False)
    ema_copy = copy.deepcopy(trainer.ema.module).eval().requires_grad_(False)
    full = [r for r in logs if r["step"] % 200 == 0] or logs  # the last full interval
    return ema_copy, raw, fit["step"], fit["seconds"], full[-1]["loss"]


def _samples_digits(model, n, sampler, steps, seed):
    g = torch.Generator().manual_seed(seed)
    c0 = _cpu()
    with torch.no_grad():
        res = sample(model, (n, 64), sampler=sampler, steps=steps, generator=g)
    # back to the pixel scale; U's mean 1/2 is removed before clamping to 0..16
    x = (res.x.double() * SCALE + CENTER - 0.5).clamp(0, 16).numpy()
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


# The setups the table is made with. Every run trains one network for one CPU budget
# (the learning rate decays to zero at its end, so a 15-minute run is not a 5-minute run
# continued). "digits-samples" is chosen for sample quality, "digits-likelihood" for
# bits/dim: EDM preconditioning and weighting in both; the latter draws more small noise
# levels (ln sigma ~ N(-2, 2^2): EDM's weight is then close to the likelihood weighting
# at sigma << sigma_data) and gives the MLP Fourier features of its input with one and
# two periods per dequantization bin (bins are 2/17 wide in model space), which the
# likelihood of dequantized data needs (Kingma et al. 2021, App. C), and dropout 0.1:
# without it a 15-minute run memorises the 1257 training digits (1.33 bits/dim on training
# digits, 3.69 on held-out ones, measured).
SETUPS = {
    "digits-samples": {
        "data": "digits",
        "hidden": 512,
        "depth": 4,
        "fourier": [],
        "dropout": 0.0,
        "p_mean": -1.2,
        "p_std": 1.2,
        "sigma_min": 0.002,
        "batch": 128,
        "lr": 2e-3,
        "ema": 0.999,
    },
    "digits-likelihood": {
        "data": "digits",
        "hidden": 512,
        "depth": 4,
        "fourier": [8.5, 17.0],
        "dropout": 0.1,
        "p_mean": -2.0,
        "p_std": 2.0,
        "sigma_min": 0.002,
        "batch": 128,
        "lr": 1e-3,
        "ema": 0.999,
    },
    "moons": {
        "data": "moons",
        "hidden": 256,
        "depth": 4,
        "fourier": [],
        "dropout": 0.0,
        "p_mean": -1.5,
        "p_std": 1.5,
        "sigma_min": 0.001,
        "batch": 512,
        "lr": 1e-3,
        "ema": 0.999,
    },
}
QUICK = {"hidden": 64, "depth": 2, "batch": 64, "warmup": 20}


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


def build(setup: dict, dim: int, sigma_data: float) -> tuple[ScoreModel, EDMLoss]:
    """The EDM-preconditioned MLP score model and EDM loss of a setup."""
    process = EDM(sigma_min=setup["sigma_min"])
    net = MLP(
        dim,
        hidden=setup["hidden"],
        depth=setup["depth"],
        fourier_features=setup["fourier"],
        dropout=setup["dropout"],
    )
    model = ScoreModel(EDMPrecond(net, process, sigma_data), process, prediction="x0")
    return model, EDMLoss(process, sigma_data, setup["p_mean"], setup["p_std"])


def _choices(setup: dict, model: ScoreModel, sigma_data: float, warmup: int) -> dict:
    return {
        "network": f"MLP(hidden={setup['hidden']}, depth={setup['depth']}"
        + (f", fourier_features={setup['fourier']}" if setup["fourier"] else "")
        + (f", dropout={setup['dropout']:g}" if setup["dropout"] else "")
        + f"), {sum(p.numel() for p in model.parameters())} parameters",
        "parametrisation": f"EDMPrecond (x0), sigma_data={sigma_data:.3g}",
        "process": f"EDM(sigma_min={setup['sigma_min']:g}, sigma_max=80)",
        "loss": f"EDMLoss: ln sigma ~ N({setup['p_mean']:g}, {setup['p_std']:g}^2), EDM weight",
        "optimizer": f"Trainer: AdamW lr={setup['lr']:g} (no weight decay), {warmup}-step "
        f"warm-up, cosine decay to 0 at the CPU budget, grad-norm clip 1, batch {setup['batch']}",
        "ema": f"{setup['ema']:g}",
    }


def run_task(name: str, minutes: float, quick: bool = False, seed: int = 0) -> dict:
    """Train the setup ``name`` of :data:`SETUPS` for ``minutes`` CPU-minutes (one thread)
    and evaluate it: digits — 500 samples (EMA and raw weights) and test bits/dim;
    moons — test NLL through the exact probability-flow ODE."""
    torch.set_num_threads(1)
    setup = {**SETUPS[name], "warmup": 500, **(QUICK if quick else {})}
    if setup["data"] == "digits":
        return _run_digits(name, setup, minutes, quick, seed)
    return _run_moons(name, setup, minutes, quick, seed)


def _run_digits(name, setup, minutes, quick, seed):
    Xtr, Xte, ytr, _ = _digits_split()
    train = torch.tensor(Xtr, dtype=torch.float32)
    test = torch.tensor(Xte, dtype=torch.float64)
    sigma_data = float(f"{float(dequantize(train, torch.Generator().manual_seed(5)).std()):.3g}")
    torch.manual_seed(seed)
    model, objective = build(setup, 64, sigma_data)
    edges = (train - CENTER) / SCALE  # lower bin edges; + U / SCALE is dequantize()
    objective = Dequantized(objective, 1.0 / SCALE, low=0.0)
    ema, raw, steps, spent, loss = train_budget(model, objective, edges, minutes, setup, seed)
    common = {
        "setup": name,
        "budget_cpu_min": minutes,
        "train_steps": steps,
        "train_cpu_s": spent,
        "steps_per_s": steps / spent,
        "loss": loss,
    }
    n_gen, k = (100, 10) if quick else (500, 50)
    rows = []
    for weights, net in (("ema", ema), ("raw", raw)):
        gen, nfe, cpu = _samples_digits(net, n_gen, "heun", k, seed + 1)
        q = digits_quality(gen, Xtr, ytr, Xte, protocol="full")
        q_halves = digits_quality(gen, Xtr, ytr, Xte, protocol="halves")
        rows.append(
            {
                "kind": "samples",
                "weights": weights,
                "sampler": "heun",
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
    z_test = dequantize(test[:n_bpd], torch.Generator().manual_seed(seed + 7))
    rtol, probes = (1e-3, 2) if quick else (1e-4, 4)
    r, cpu = _likelihood(
        copy.deepcopy(ema).double(),
        z_test,
        divergence="hutchinson",
        rtol=rtol,
        n_probes=probes,
        seed=seed + 3,
    )
    bpd = bpd_from_model_log_prob(r.log_prob, 64)
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
        "choices": _choices(setup, model, sigma_data, setup["warmup"]),
    }


def _run_moons(name, setup, minutes, quick, seed):
    xtr, xte = _moons_split()
    loc, scale = xtr.double().mean(0), xtr.double().std(0)
    ztr = ((xtr - loc.float()) / scale.float()).contiguous()
    n_test = 500 if quick else len(xte)
    zte = (xte[:n_test] - loc) / scale
    log_det = float(-torch.log(scale).sum())  # log |dz/dx|
    torch.manual_seed(seed)
    model, objective = build(setup, 2, 1.0)
    ema, _, steps, spent, loss = train_budget(model, objective, ztr, minutes, setup, seed)
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
    choices = _choices(setup, model, 1.0, setup["warmup"])
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


def _markdown(result: dict) -> str:
    runs = result["runs"]
    digits = [r for run in runs if run["data"] == "digits" for r in run["rows"]]
    moons = [r for run in runs if run["data"] == "moons" for r in run["rows"]]
    lines = [
        "# scorekit on real data (measured by `benchmarks/real_data.py`)",
        "",
        f"Budgets: {result['budget_clock']}. quick={result['quick']}, seed={result['seed']}; "
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
                "Fréchet (vs 540 test)",
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
                    f"{r['frechet']:.1f}",
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
    p.add_argument("--seed", type=int, default=0)
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
        return [float(v) for v in (value or (quick if a.quick else full)).split(",") if v]

    tasks = []
    if a.only in (None, "digits"):
        tasks += [("digits-samples", m) for m in budgets(a.digits_minutes, "0.25", "5,15")]
        tasks += [("digits-likelihood", m) for m in budgets(a.likelihood_minutes, "0.25", "5,15")]
    if a.only in (None, "moons"):
        tasks += [("moons", m) for m in budgets(a.moons_minutes, "0.15", "5")]
    tasks.sort(key=lambda task: -task[1])  # longest first: the jobs finish together
    t0, c0 = time.perf_counter(), _cpu()
    args = [(name, m, a.quick, a.seed) for name, m in tasks]
    threads = torch.get_num_threads()
    if jobs == 1:
        runs = [_task(x) for x in args]
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
            runs = list(pool.map(_task, args))
    torch.set_num_threads(threads)
    result = {
        "quick": a.quick,
        "seed": a.seed,
        "jobs": jobs,
        "budget_clock": "process CPU time (time.process_time), torch.set_num_threads(1); "
        "training only",
        "torch": torch.__version__,
        "runs": runs,
    }
    if any(run["data"] == "digits" for run in runs):
        Xtr, Xte, _, _ = _digits_split()
        result["real_digits_frechet"] = real_baseline(Xtr, Xte, 100 if a.quick else 500)
    result["total_cpu_s"] = sum(run["cpu_s"] for run in runs) + _cpu() - c0
    result["total_wall_s"] = time.perf_counter() - t0
    a.out.mkdir(parents=True, exist_ok=True)
    _write(a.out / "real_data.json", json.dumps(result, indent=2))
    _write(a.out / "real_data.md", _markdown(result))
    return result


def _write(path: Path, text: str) -> None:
    from scorekit.train.checkpoint import write_atomic

    write_atomic(path, text.encode())


if __name__ == "__main__":
    main()

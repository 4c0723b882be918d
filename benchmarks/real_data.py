r"""Real-data results: sklearn digits and two moons, quality per CPU-minute and likelihood.

Usage::

    python benchmarks/real_data.py --out DIR [--quick] [--digits-minutes 5,15]
                                   [--moons-minutes 5] [--only digits|moons]

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

from scorekit import VP, ScoreModel
from scorekit.ema import EMA
from scorekit.likelihood import log_prob
from scorekit.losses import make_objective
from scorekit.metrics import digits_quality
from scorekit.nets import MLP
from scorekit.samplers import sample

__all__ = [
    "bpd_from_model_log_prob",
    "dequantize",
    "main",
    "real_baseline",
    "run_digits",
    "run_moons",
    "train_budget",
]

LEVELS = 17  # digits pixels take the values 0..16
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


def train_budget(model, objective, batch_fn, minutes, *, lr, warmup, ema_decay, seed):
    """Adam (grad-norm clip 1, linear warm-up) with an EMA, until each CPU-minute mark in
    ``minutes``; returns ``[(minute, ema_copy, raw_copy, steps, cpu_seconds, last_loss)]``."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    ema = EMA(model, decay=ema_decay)
    marks, out, step, spent, losses = sorted(minutes), [], 0, 0.0, []
    model.train()
    for minute in marks:
        while spent < 60 * minute:
            c0 = _cpu()
            for group in opt.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / warmup)
            loss = objective(model, batch_fn(g), generator=g).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            ema.update(model)
            step += 1
            losses.append(float(loss.detach()))
            spent += _cpu() - c0
        raw = copy.deepcopy(model).eval().requires_grad_(False)
        out.append((minute, copy.deepcopy(ema.module), raw, step, spent, np.mean(losses[-200:])))
    return out


def _samples_digits(model, n, sampler, steps, seed):
    g = torch.Generator().manual_seed(seed)
    c0 = _cpu()
    with torch.no_grad():
        res = sample(model, (n, 64), sampler=sampler, steps=steps, generator=g)
    # back to the pixel scale; U's mean 1/2 is removed before clamping to 0..16
    x = (res.x.double() * SCALE + CENTER - 0.5).clamp(0, 16).numpy()
    return x, res.nfe, _cpu() - c0


def _likelihood(model, z, *, divergence, rtol, n_probes, seed, chunk):
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
        chunk_size=chunk,
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


def run_digits(minutes, quick: bool, seed: int = 0, net: tuple[int, int] | None = None) -> dict:
    """Train one MLP score model on dequantized digits; score snapshots at ``minutes``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    X, y = d.data.astype(np.float64), d.target
    Xtr, Xte, ytr, _ = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    train = torch.tensor(Xtr, dtype=torch.float32)
    test = torch.tensor(Xte, dtype=torch.float64)
    hidden, depth, batch, lr = (128, 2, 64, 2e-3) if quick else (512, 4, 128, 1e-3)
    hidden, depth = net or (hidden, depth)
    process = VP()
    torch.manual_seed(seed)
    model = ScoreModel(MLP(64, hidden=hidden, depth=depth), process, prediction="eps")

    def batch_fn(g):
        idx = torch.randint(0, len(train), (batch,), generator=g)
        return dequantize(train[idx], g)

    snaps = train_budget(
        model,
        make_objective("dsm", process),
        batch_fn,
        minutes,
        lr=lr,
        warmup=20 if quick else 500,
        ema_decay=0.999,
        seed=seed,
    )
    n_gen = 100 if quick else 500
    samplers = [("heun", 10)] if quick else [("heun", 50), ("ddim", 50)]
    n_bpd = 40 if quick else len(test)
    z_test = dequantize(test[:n_bpd], torch.Generator().manual_seed(seed + 7))
    rows = []
    for minute, ema, raw, steps, spent, loss in snaps:
        for name, net in (("ema", ema), ("raw", raw)):
            for sampler, k in samplers if name == "ema" else samplers[:1]:
                gen, nfe, cpu = _samples_digits(net, n_gen, sampler, k, seed + 1)
                q = digits_quality(gen, Xtr, ytr, Xte, protocol="full")
                q_halves = digits_quality(gen, Xtr, ytr, Xte, protocol="halves")
                rows.append(
                    {
                        "kind": "samples",
                        "budget_cpu_min": minute,
                        "weights": name,
                        "sampler": sampler,
                        "sampler_steps": k,
                        "nfe": nfe,
                        "n_samples": n_gen,
                        "sample_cpu_s": cpu,
                        "frechet_halves": q_halves["frechet"],
                        "frechet_real_halves": q_halves["frechet_real"],
                        **{k2: v for k2, v in q.items()},
                        "train_steps": steps,
                        "train_cpu_s": spent,
                        "steps_per_s": steps / spent,
                        "loss": float(loss),
                    }
                )
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        if quick or minute == max(minutes) or minute <= 5:
            r, cpu = _likelihood(
                copy.deepcopy(ema).double(),
                z_test,
                divergence="hutchinson",
                rtol=1e-3 if quick else 1e-4,
                n_probes=2 if quick else 4,
                seed=seed + 3,
                chunk=None,
            )
            bpd = bpd_from_model_log_prob(r.log_prob, 64)
            rows.append(
                {
                    "kind": "bpd",
                    "budget_cpu_min": minute,
                    "weights": "ema",
                    "n_test": n_bpd,
                    "bpd": float(bpd.mean()),
                    "bpd_stderr": float(bpd.std() / math.sqrt(len(bpd))),
                    "bpd_hutchinson_stderr": float(
                        (r.stderr.double() ** 2).sum().sqrt() / len(bpd) / (64 * math.log(2))
                    ),
                    "divergence": "hutchinson (4 Rademacher probes)" if not quick else "hutch-2",
                    "ode": f"dopri5 rtol=atol={1e-3 if quick else 1e-4:g}",
                    "nfe": r.nfe,
                    "eval_cpu_s": cpu,
                    "train_steps": steps,
                    "steps_per_s": steps / spent,
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {
        "real_digits_frechet": real_baseline(Xtr, Xte, n_gen),
        "choices": {
            "network": f"MLP(64, hidden={hidden}, depth={depth}) on flattened pixels, "
            f"{sum(p.numel() for p in model.parameters())} parameters",
            "process": "VP(beta 0.1..20, t_min=1e-3)",
            "prediction": "eps",
            "loss": "dsm: sigma^2 weighting (eps-MSE), uniform t",
            "optimizer": f"Adam lr={lr:g}, warm-up, grad-norm clip 1, batch {batch}",
            "ema": "0.999 (rows 'raw': without EMA)",
            "dequantization": "z = (x + U - 8.5)/8.5, fresh U per batch; samples decoded "
            "as 8.5 z + 8.5 - 1/2, clamped to [0, 16]",
            "frechet": "PCA-16 fitted on training digits; 'frechet': all samples vs all 540 "
            "held-out digits, 'frechet_real': 500 training digits vs the same; "
            "'frechet_halves': bench_digits' protocol (270 vs half of held-out)",
        },
        "rows": rows,
    }


def run_moons(minutes, quick: bool, seed: int = 0, objective: str = "likelihood") -> dict:
    """Train an MLP score model on moons; test NLL (nats/point) through the exact PF-ODE."""
    from sklearn.datasets import make_moons

    xtr = torch.tensor(make_moons(20000, noise=0.05, random_state=0)[0], dtype=torch.float32)
    xte = torch.tensor(make_moons(5000, noise=0.05, random_state=1)[0], dtype=torch.float64)
    loc, scale = xtr.double().mean(0), xtr.double().std(0)
    ztr = ((xtr - loc.float()) / scale.float()).contiguous()
    n_test = 500 if quick else len(xte)
    zte = (xte[:n_test] - loc) / scale
    log_det = float(-torch.log(scale).sum())  # log |dz/dx|
    hidden, depth, batch, lr = (64, 2, 256, 2e-3) if quick else (256, 4, 512, 1e-3)
    process = VP(t_min=1e-5)
    torch.manual_seed(seed)
    model = ScoreModel(MLP(2, hidden=hidden, depth=depth), process, prediction="eps")

    def batch_fn(g):
        return ztr[torch.randint(0, len(ztr), (batch,), generator=g)]

    snaps = train_budget(
        model,
        make_objective(objective, process),
        batch_fn,
        minutes,
        lr=lr,
        warmup=20 if quick else 500,
        ema_decay=0.999,
        seed=seed,
    )
    rows = []
    for minute, ema, _, steps, spent, loss in snaps:
        rtol = 1e-4 if quick else 1e-5
        r, cpu = _likelihood(
            copy.deepcopy(ema).double(),
            zte,
            divergence="exact",
            rtol=rtol,
            n_probes=2,
            seed=seed,
            chunk=None,
        )
        nll = -(r.log_prob.double() + log_det)
        rows.append(
            {
                "kind": "nll",
                "budget_cpu_min": minute,
                "weights": "ema",
                "n_test": n_test,
                "nll_nats": float(nll.mean()),
                "nll_stderr": float(nll.std() / math.sqrt(len(nll))),
                "divergence": "exact",
                "ode": f"dopri5 rtol=atol={rtol:g}",
                "nfe": r.nfe,
                "eval_cpu_s": cpu,
                "train_steps": steps,
                "train_cpu_s": spent,
                "steps_per_s": steps / spent,
                "loss": float(loss),
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {
        "choices": {
            "network": f"MLP(2, hidden={hidden}, depth={depth}), "
            f"{sum(p.numel() for p in model.parameters())} parameters",
            "process": "VP(beta 0.1..20, t_min=1e-5)",
            "prediction": "eps",
            "loss": "likelihood weighting g^2 with log-SNR importance sampling of t"
            if objective == "likelihood"
            else objective,
            "optimizer": f"Adam lr={lr:g}, warm-up, grad-norm clip 1, batch {batch}",
            "ema": "0.999",
            "normalisation": "standardised per coordinate (train mean/std); NLL moved back "
            "to data coordinates with the log-determinant",
        },
        "rows": rows,
    }


def _markdown(result: dict) -> str:
    lines = [
        "# scorekit on real data (measured by `benchmarks/real_data.py`)",
        "",
        f"Budgets: {result['budget_clock']}. quick={result['quick']}.",
        "",
    ]
    if "digits" in result:
        rows = result["digits"]["rows"]
        lines += [
            "## Digits: sample quality (500 samples)",
            "",
            "| CPU-min | weights | sampler | NFE | Fréchet (vs 540 test) | real digits | "
            "Fréchet (halves) | top-class ratio | min class share | steps | steps/s |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in (r for r in rows if r["kind"] == "samples"):
            lines.append(
                f"| {r['budget_cpu_min']:g} | {r['weights']} | {r['sampler']} {r['sampler_steps']}"
                f" | {r['nfe']} | {r['frechet']:.1f} | {r['frechet_real']:.1f} | "
                f"{r['frechet_halves']:.1f} (real {r['frechet_real_halves']:.1f}) | "
                f"{r['top_class_prob_ratio']:.3f} | {r['min_class_share']:.3f} | "
                f"{r['train_steps']} | {r['steps_per_s']:.1f} |"
            )
        b = result["digits"]["real_digits_frechet"]
        lines += [
            "",
            f"Real digits under the same protocol ({b['n']} random training digits vs the "
            f"540 held-out, {b['draws']} draws): Fréchet {b['mean']:.1f} (range "
            f"{b['min']:.1f}-{b['max']:.1f}).",
        ]
        lines += [
            "",
            "## Digits: test bits/dim (u = (x+U)/17, one dequantization sample)",
            "",
            "| CPU-min | bits/dim | ± s.e. (data) | ± s.e. (Hutchinson) | divergence | ODE | NFE "
            "| eval CPU s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in (r for r in rows if r["kind"] == "bpd"):
            lines.append(
                f"| {r['budget_cpu_min']:g} | {r['bpd']:.3f} | {r['bpd_stderr']:.3f} | "
                f"{r['bpd_hutchinson_stderr']:.3f} | {r['divergence']} | {r['ode']} | {r['nfe']} "
                f"| {r['eval_cpu_s']:.0f} |"
            )
        lines += [
            "",
            "Choices: " + "; ".join(f"{k}: {v}" for k, v in result["digits"]["choices"].items()),
            "",
        ]
    if "moons" in result:
        lines += [
            "## Moons: test NLL (nats/point, data coordinates)",
            "",
            "| CPU-min | NLL | ± s.e. | divergence | ODE | NFE | eval CPU s | steps | steps/s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in result["moons"]["rows"]:
            lines.append(
                f"| {r['budget_cpu_min']:g} | {r['nll_nats']:.3f} | {r['nll_stderr']:.3f} | "
                f"{r['divergence']} | {r['ode']} | {r['nfe']} | {r['eval_cpu_s']:.0f} | "
                f"{r['train_steps']} | "
                f"{r['steps_per_s']:.1f} |"
            )
        lines += [
            "",
            "Choices: " + "; ".join(f"{k}: {v}" for k, v in result["moons"]["choices"].items()),
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--quick", action="store_true", help="tiny budgets (< 2 min): a smoke run")
    p.add_argument("--digits-minutes", default=None, help="CPU-minute marks, e.g. 5,15")
    p.add_argument("--moons-minutes", default=None, help="CPU-minute marks, e.g. 5")
    p.add_argument("--only", choices=("digits", "moons"), default=None)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    dm = [float(v) for v in (a.digits_minutes or ("0.25" if a.quick else "5,15")).split(",")]
    mm = [float(v) for v in (a.moons_minutes or ("0.15" if a.quick else "5")).split(",")]
    t0, c0 = time.perf_counter(), _cpu()
    result = {
        "quick": a.quick,
        "seed": a.seed,
        "budget_clock": "process CPU time (time.process_time), torch.set_num_threads(1); "
        "training only",
        "torch": torch.__version__,
    }
    if a.only in (None, "digits"):
        result["digits"] = run_digits(dm, a.quick, a.seed)
    if a.only in (None, "moons"):
        result["moons"] = run_moons(mm, a.quick, a.seed)
    result["total_cpu_s"] = _cpu() - c0
    result["total_wall_s"] = time.perf_counter() - t0
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "real_data.json").write_text(json.dumps(result, indent=2))
    (a.out / "real_data.md").write_text(_markdown(result))
    return result


if __name__ == "__main__":
    main()

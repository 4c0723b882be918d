"""Hutchinson intervals and the cost of the exact divergence, on exact Gaussian mixtures.

- ``coverage``: for 4-component mixtures in 2-D and 16-D (1000 points, VP, exact marginal at
  t_max as the prior, dopri5 at 1e-6), the share of points whose exact log p at t_min lies in
  the 95% interval, for the normal interval (1.96 x the per-point standard error), the
  per-point Student-t interval and the pooled one (``LikelihoodResult.interval``), with 2, 4
  and 16 Rademacher probes; and the share of points whose estimated standard error is 0.
- ``divergence_ms``: milliseconds of one evaluation of the drift and its exact divergence on
  1000 points (one thread), for the batched vector-Jacobian products scorekit uses and four
  alternatives (torch.func: vmap over jvp, a loop of jvp, vmap over vjp, per-sample jacrev),
  next to one model call; D = 2, 16, 64; for the exact mixture's score and for an MLP.
"""

from __future__ import annotations

import time

import torch

import scorekit.likelihood as L
from scorekit import VP, ExactScore, GaussianMixture


def _mixture(d: int, seed: int = 0) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    return GaussianMixture(
        torch.ones(4), 2 * torch.randn(4, d, generator=g, dtype=torch.float64), stds=0.6
    )


def coverage(n_points: int) -> list[dict]:
    rows = []
    for d in (2, 16):
        mix = _mixture(d)
        p = VP()
        model = ExactScore(mix, p)
        x = mix.sample(n_points, torch.Generator().manual_seed(1))
        truth = model.log_prob(x, p.t_min)
        prior = lambda z: model.log_prob(z, p.t_max)  # noqa: B023, E731
        for n in (2, 4, 16):
            r = L.log_prob(
                model, x, prior=prior, divergence="hutchinson", n_probes=n, rtol=1e-6,
                atol=1e-6, generator=torch.Generator().manual_seed(2),
            )  # fmt: skip
            row = {"dim": d, "probes": n, "points": n_points}
            z = 1.96 * r.stderr
            row["normal"] = float(((truth - r.log_prob).abs() <= z).double().mean())
            for method in ("t", "pooled"):
                lo, hi = r.interval(0.95, method=method)
                row[method] = float(((truth >= lo) & (truth <= hi)).double().mean())
            row["zero_stderr"] = float((r.stderr == 0).double().mean())
            rows.append(row)
    return rows


def _ms(fn, reps: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1000


def _models(d: int) -> dict:
    """The exact mixture's score, and an untrained residual MLP (the recipes' vector net)
    predicting eps, both on VP, in float64."""
    from scorekit import MLP, ScoreModel

    torch.manual_seed(0)
    return {
        "exact mixture": ExactScore(_mixture(d), VP()),
        "MLP": ScoreModel(MLP(dim=d).double().eval(), VP(), "eps"),
    }


def divergence_ms(dims) -> list[dict]:
    from torch.func import jacrev, jvp, vjp, vmap

    rows = []
    for d in dims:
        for kind, model in _models(d).items():
            x = _mixture(d).sample(1000, torch.Generator().manual_seed(1))
            t = torch.tensor(0.5, dtype=torch.float64)

            def f(z, model=model, t=t):
                return model.process.ode_drift(z, t, model(z, t))

            def basis(x=x):
                n = x.shape[1]
                return torch.eye(n, dtype=x.dtype)[:, None, :].expand(n, x.shape[0], n)

            def vmap_jvp(f=f, x=x):
                e = basis()
                return (vmap(lambda u: jvp(f, (x,), (u,))[1])(e) * e).sum((0, 2))

            def loop_jvp(f=f, x=x):
                tr = 0
                for j in range(x.shape[1]):
                    e = torch.zeros_like(x)
                    e[:, j] = 1
                    tr = tr + jvp(f, (x,), (e,))[1][:, j]
                return tr

            def vmap_vjp(f=f, x=x):
                _, fn = vjp(f, x)
                e = basis()
                return (vmap(fn)(e)[0] * e).sum((0, 2))

            def jacrev_per_sample(f=f, x=x):  # the Jacobian of each sample, then its trace
                jac = vmap(jacrev(lambda z: f(z[None])[0]))(x)
                return jac.diagonal(dim1=1, dim2=2).sum(-1)

            ours = L._drift_and_divergence(f, x, None)[1][:, 0]
            row = {"dim": d, "model": kind}
            reps = 3 if d >= 64 else 20
            methods = {
                "model_call": lambda f=f, x=x: f(x),
                "scorekit_batched_vjp": lambda f=f, x=x: L._drift_and_divergence(f, x, None),
                "vmap_jvp": vmap_jvp,
                "loop_jvp": loop_jvp,
                "vmap_vjp": vmap_vjp,
                "jacrev_per_sample": jacrev_per_sample,
            }
            for name, fn in methods.items():
                row[name] = _ms(fn, reps)
                if name not in ("model_call", "scorekit_batched_vjp"):  # the same trace?
                    with torch.no_grad():
                        row[f"{name}_max_diff"] = float((fn().detach() - ours).abs().max())
            rows.append(row)
    return rows


def run(quick: bool = False) -> dict:
    torch.set_num_threads(1)
    return {
        "suite": "likelihood_intervals",
        "coverage": coverage(200 if quick else 1000),
        "divergence_ms": divergence_ms((2, 16) if quick else (2, 16, 64)),
    }


def markdown(result: dict) -> str:
    lines = [
        "# Hutchinson intervals and the exact divergence "
        "(generated from likelihood_intervals.json)",
        "",
        "Share of points whose exact log p lies in the 95% interval:",
        "",
        "| D | probes | normal 1.96 s.e. | per-point t | pooled t | s.e. = 0 |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["coverage"]:
        lines.append(
            f"| {r['dim']} | {r['probes']} | {r['normal']:.3f} | {r['t']:.3f} | "
            f"{r['pooled']:.3f} | {r['zero_stderr']:.3f} |"
        )
    lines += [
        "",
        "Milliseconds per evaluation of the drift and its exact divergence (1000 points, one "
        "thread):",
        "",
        "| model | D | model call | scorekit (batched VJP) | vmap over jvp | loop of jvp | "
        "vmap over vjp | jacrev per sample |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["divergence_ms"]:
        cells = [r[k] for k in ("model_call", "scorekit_batched_vjp", "vmap_jvp", "loop_jvp",
                                "vmap_vjp", "jacrev_per_sample")]  # fmt: skip
        lines.append(
            f"| {r['model']} | {r['dim']} | " + " | ".join(f"{c:.2f}" for c in cells) + " |"
        )
    worst = max(v for r in result["divergence_ms"] for k, v in r.items() if k.endswith("max_diff"))
    lines += ["", f"Every alternative gives the same trace (largest difference {worst:.1e})."]
    return "\n".join(lines) + "\n"

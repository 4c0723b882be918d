"""ODE log-likelihood of exact Gaussian mixtures (2-D and 16-D): error in nats against the exact
log p at t_min, wall time and NFE, vs solver tolerance (dopri5) or steps (rk4), for the exact
and the Hutchinson divergence. The exact marginal at t_max is the prior, so the error is the
solver's (and the estimator's); one row per mixture shows the default prior's error apart."""

from __future__ import annotations

import time

import torch

from scorekit import VE, VP, ExactScore, GaussianMixture
from scorekit.likelihood import log_prob


def _mixture(K: int, d: int, seed: int) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(K, d, d, generator=g, dtype=torch.float64)
    covs = A @ A.transpose(-1, -2) / d + 0.1 * torch.eye(d, dtype=torch.float64)
    w = torch.rand(K, generator=g, dtype=torch.float64) + 0.1
    return GaussianMixture(w, 2 * torch.randn(K, d, generator=g, dtype=torch.float64), covs=covs)


def _row(model, x, ref, **kw) -> dict:
    t0 = time.perf_counter()
    r = log_prob(model, x, **kw)
    wall = time.perf_counter() - t0
    err = (r.log_prob - ref).abs()
    row = {k: v for k, v in kw.items() if k not in ("prior", "generator")}
    row.update(mae_nats=float(err.mean()), max_err_nats=float(err.max()), nfe=r.nfe, seconds=wall)
    if r.stderr is not None:
        # mean z^2 ~ 1 when the standard errors are honest; a Rademacher stderr is 0 when all
        # probes agree, which happens in very low dimension (counted apart)
        ok = r.stderr > 0
        row.update(
            mean_stderr_nats=float(r.stderr.mean()),
            mean_bias_nats=float((r.log_prob - ref).mean()),
            mean_z2=float(((r.log_prob - ref)[ok] / r.stderr[ok]).pow(2).mean()),
            zero_stderr=int((~ok).sum()),
        )
    return row


def run(quick: bool = False) -> dict:
    torch.set_num_threads(1)
    B = 32 if quick else 256
    tols = [1e-3, 1e-5] if quick else [1e-3, 1e-5, 1e-7]
    steps = [10, 30] if quick else [10, 30, 100]
    rows = []
    warm = ExactScore(_mixture(2, 2, seed=0), VP())  # first calls pay one-off set-up costs
    log_prob(warm, torch.zeros(4, 2, dtype=torch.float64), method="rk4", steps=2)
    for K, d in [(4, 2), (4, 16)]:
        gm = _mixture(K, d, seed=d)
        x = gm.sample(B, generator=torch.Generator().manual_seed(1))
        for process in (VP(), VE(0.01, 80.0)):
            model = ExactScore(gm, process)
            ref = model.log_prob(x, process.t_min)
            prior = lambda z, m=model: m.log_prob(z, m.process.t_max)  # noqa: E731
            base = {"d": d, "K": K, "process": type(process).__name__, "batch": B}
            for div in ("exact", "hutchinson"):
                extra = {}
                if div == "hutchinson":
                    extra = {"n_probes": 8, "generator": torch.Generator().manual_seed(2)}
                for tol in tols:
                    kw = dict(divergence=div, method="dopri5", rtol=tol, atol=tol, **extra)
                    rows.append({**base, **_row(model, x, ref, prior=prior, **kw)})
                for n in steps:
                    kw = dict(divergence=div, method="rk4", steps=n, **extra)
                    rows.append({**base, **_row(model, x, ref, prior=prior, **kw)})
            # the default prior N(0, sigma(t_max)^2 I) at the tightest tolerance: its error
            # is the prior's, not the solver's (DESIGN.md, "two traps")
            kw = dict(method="dopri5", rtol=tols[-1], atol=tols[-1])
            rows.append({**base, "prior": "default", **_row(model, x, ref, **kw)})
    return {"suite": "likelihood", "rows": rows}

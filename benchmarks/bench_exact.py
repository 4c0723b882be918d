"""Throughput of the exact targets: score evaluations per second of ExactScore."""

from __future__ import annotations

import time

import torch

from scorekit import VP, ExactScore, GaussianMixture


def _mixture(K: int, d: int) -> GaussianMixture:
    g = torch.Generator().manual_seed(0)
    A = torch.randn(K, d, d, generator=g, dtype=torch.float64)
    covs = A @ A.transpose(-1, -2) / d + 0.1 * torch.eye(d, dtype=torch.float64)
    return GaussianMixture(torch.ones(K), 2 * torch.randn(K, d, generator=g), covs=covs)


def run(quick: bool = False) -> dict:
    rows = []
    for K, d in [(8, 2), (8, 16), (4, 64)]:
        model = ExactScore(_mixture(K, d), VP())
        x = torch.randn(4096, d, dtype=torch.float64)
        t = torch.rand(4096, dtype=torch.float64) * 0.9 + 0.05
        reps = 3 if quick else 20
        model(x, t)
        t0 = time.perf_counter()
        for _ in range(reps):
            model(x, t)
        dt = (time.perf_counter() - t0) / reps
        rows.append(
            {"K": K, "d": d, "batch": 4096, "seconds_per_call": dt, "points_per_second": 4096 / dt}
        )
    return {"suite": "exact", "rows": rows}

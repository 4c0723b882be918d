"""Cost of each training objective relative to a bare training step of the same network.

For an MLP of width 256 (input ``(x, t)``, two hidden layers, SiLU) at d = 2, 16, 64 and batch
1024, every row reports the fastest of several timed optimizer steps with that loss (the machine
is shared, so the minimum is the least noisy; the median is kept too), divided by the same
for a bare step (forward, MSE to a fixed target, backward, Adam) of the same network.
``ism_exact`` is also compared with one vectorised Jacobian of the network
(``torch.func.vmap(torch.func.jacrev(f))``, no parameter gradient), and ``ism_exact_value``
is the exact-trace ISM value alone (no backward to the parameters).

Goals from the issue: DSM/EDM <= 1.05, SSM <= 2.2, exact ISM at d = 64 <= 1.5 x one Jacobian.
"""

from __future__ import annotations

import statistics
import time

import torch

from scorekit import EDM, VP, EDMPrecond, ScoreModel
from scorekit.losses import ism, make_objective

WIDTH, BATCH = 256, 1024


class _MLP(torch.nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.f = torch.nn.Sequential(
            torch.nn.Linear(d + 1, WIDTH),
            torch.nn.SiLU(),
            torch.nn.Linear(WIDTH, WIDTH),
            torch.nn.SiLU(),
            torch.nn.Linear(WIDTH, d),
        )

    def forward(self, x, t):
        return self.f(torch.cat([x, t[:, None].to(x)], 1))


def _step_fn(name: str, d: int, gen: torch.Generator):
    """Return (step closure, parameters) for method ``name``."""
    torch.manual_seed(0)
    net = _MLP(d)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x0 = torch.randn(BATCH, d, generator=gen)
    vp = VP()

    def optimise(loss):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if name == "bare":
        t = torch.rand(BATCH, generator=gen)
        target = torch.randn(BATCH, d, generator=gen)

        def step():
            optimise(((net(x0, t) - target) ** 2).sum(1).mean())

        return step
    if name == "jacobian":
        t0 = torch.full((1,), 0.5)

        def single(x):
            return net(x[None], t0)[0]

        jac = torch.func.vmap(torch.func.jacrev(single))

        def step():
            with torch.no_grad():
                jac(x0)

        return step
    if name == "ism_exact_value":
        t = torch.full((BATCH,), 0.5)

        def step():
            with torch.no_grad():
                ism(lambda x: net(x, t), x0)

        return step
    if name == "edm":
        edm = EDM()
        model = ScoreModel(EDMPrecond(net, edm, 0.5), edm, prediction="x0")
        objective = make_objective("edm", edm)
    else:
        model = ScoreModel(net, vp, prediction="eps")
        kw = {
            "ism_exact": ("ism", {"trace": "exact"}),
            "ism_hutchinson": ("ism", {"trace": "hutchinson"}),
        }.get(name, (name, {}))
        objective = make_objective(kw[0], vp, **kw[1])

    def step():
        optimise(objective(model, x0, generator=gen).mean())

    return step


METHODS = (
    "bare",
    "dsm",
    "edm",
    "ncsn",
    "ddpm",
    "likelihood",
    "min_snr",
    "ssm",
    "ssm_vr",
    "ism_hutchinson",
    "ism_exact",
    "ism_exact_value",
    "jacobian",
)


def _time(step, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        out.append(time.perf_counter() - t0)
    return out


def run(quick: bool = False) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = []
        for d in (2,) if quick else (2, 16, 64):
            gen = torch.Generator().manual_seed(0)
            steps = {m: _step_fn(m, d, gen) for m in METHODS}
            samples = {m: [] for m in METHODS}
            rounds, reps = (2, 2) if quick else (5, 6)
            for m in METHODS:  # warm-up
                _time(steps[m], 1)
            for _ in range(rounds):  # interleave methods against load drift
                for m in METHODS:
                    r = max(1, reps // 4) if m.startswith("ism_exact") and d == 64 else reps
                    samples[m] += _time(steps[m], r)
            best = {m: min(v) for m, v in samples.items()}
            for m in METHODS:
                rows.append(
                    {
                        "d": d,
                        "batch": BATCH,
                        "width": WIDTH,
                        "method": m,
                        "seconds_per_step": best[m],
                        "median_seconds": statistics.median(samples[m]),
                        "ratio_to_bare": best[m] / best["bare"],
                        "ratio_to_jacobian": best[m] / best["jacobian"],
                    }
                )
        return {
            "suite": "losses",
            "threads": 1,
            "device": "cpu",
            "goals": {
                "dsm/edm": "<= 1.05",
                "ssm": "<= 2.2",
                "ism_exact/jacobian at d=64": "<= 1.5",
            },
            "rows": rows,
        }
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    for row in run(quick=False)["rows"]:
        print(
            f"d={row['d']:3d} {row['method']:16s} {1e3 * row['seconds_per_step']:9.2f} ms "
            f"x{row['ratio_to_bare']:6.2f} bare  x{row['ratio_to_jacobian']:6.2f} jacobian"
        )

"""Cost of each training objective relative to a bare training step of the same network.

For an MLP of width 256 (input ``(x, t)``, two hidden layers, SiLU) at d = 2, 16, 64 and batch
1024, on one CPU thread, every row reports ``ratio_to_bare``: the median over interleaved pairs
of (one optimizer step with that loss) / (one bare step: forward, MSE to a fixed target,
backward, Adam, of the same network); and the fastest and median seconds per step. The
``bare`` row's own ratio (bare against bare) shows the noise floor of the machine.
``ism_exact`` is also compared with one vectorised Jacobian of the network
(``jacobian``: ``torch.func.vmap(torch.func.jacrev(f))``; ``jacobian_rows``: the d rows by
one batched backward pass, ``is_grads_batched``; neither with a parameter gradient), and
``ism_exact_value`` is the exact-trace ISM value alone (no backward to the parameters).

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
    if name == "jacobian_rows":
        t = torch.full((BATCH,), 0.5)
        eye = torch.eye(d)[:, None, :].expand(d, BATCH, d)

        def step():
            x = x0.detach().requires_grad_(True)
            torch.autograd.grad(net(x, t), x, eye, is_grads_batched=True)

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
    "jacobian_rows",
)


def _once(step) -> float:
    t0 = time.perf_counter()
    step()
    return time.perf_counter() - t0


def _measure(steps: dict, d: int, quick: bool) -> dict:
    """Interleave each method with the bare step (and the Jacobian), so that load drift on a
    shared machine hits both sides of every ratio alike; report medians of paired ratios."""
    pairs = 3 if quick else 24
    out = {}
    for m, step in steps.items():
        heavy = m.startswith(("ism_exact", "jacobian")) and d >= 16
        n = max(2, pairs // 8) if heavy else pairs
        _once(step)  # warm-up
        times, bare, jac, jac_rows = [], [], [], []
        for _ in range(n):
            bare.append(_once(steps["bare"]))
            times.append(_once(step))
            if m.startswith("ism_exact"):
                jac.append(_once(steps["jacobian"]))
                jac_rows.append(_once(steps["jacobian_rows"]))
        row = {
            "method": m,
            "seconds_per_step": min(times),
            "median_seconds": statistics.median(times),
            "ratio_to_bare": statistics.median(a / b for a, b in zip(times, bare, strict=True)),
        }
        if jac:
            row["ratio_to_jacobian"] = statistics.median(
                a / b for a, b in zip(times, jac, strict=True)
            )
            row["ratio_to_jacobian_rows"] = statistics.median(
                a / b for a, b in zip(times, jac_rows, strict=True)
            )
        out[m] = row
    return out


def run(quick: bool = False) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = []
        for d in (2,) if quick else (2, 16, 64):
            gen = torch.Generator().manual_seed(0)
            steps = {m: _step_fn(m, d, gen) for m in METHODS}
            for row in _measure(steps, d, quick).values():
                rows.append({"d": d, "batch": BATCH, "width": WIDTH, **row})
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
        jac = f"  x{row['ratio_to_jacobian']:5.2f} jacobian" if "ratio_to_jacobian" in row else ""
        print(
            f"d={row['d']:3d} {row['method']:16s} {1e3 * row['seconds_per_step']:9.2f} ms "
            f"x{row['ratio_to_bare']:6.2f} bare{jac}"
        )

"""Training-step cost: the objective's step and the Trainer's step over a bare step of the
same network, for the MLP (DSM and EDM losses) and the U-Net (DSM).

* **bare**: the least a training step of this network does: its forward on a batch
  ``(x_t, t)`` drawn once, a mean-square error, backward, and a fused AdamW step (as the
  Trainer's). For an EDM model the network is the raw ``F`` inside the preconditioning;
  ``objective_ratio_over_precond`` is over the preconditioned denoiser
  :math:`D = c_{skip} x + c_{out} F(c_{in} x, c_{noise})` instead.
* **objective**: draw the batch indices, the objective (noise levels, noise, the noised
  input, the model's prediction through its parametrisation, the weighted residual), backward
  and the same AdamW step.
* **trainer**: ``Trainer.fit`` (adds gradient clipping, the EMA, the on-device non-finite
  test and per-sigma statistics, logging every 50 steps; no checkpoint).

``objective_ratio`` = objective / bare (the goal: <= 1.03), ``trainer_ratio`` = trainer /
bare: the median (and quartiles) over short blocks, each block's time divided by that of the
bare block run just before it, so that slow drifts of a shared machine cancel. Times are CPU
time of this process (``time.process_time``); run with ``OMP_NUM_THREADS=1``.
"""

from __future__ import annotations

import statistics
import time

import torch

from scorekit import EDM, VE, VP, EDMPrecond, ScoreModel
from scorekit.losses import make_objective
from scorekit.nets import MLP, UNet
from scorekit.train import TrainConfig, Trainer
from scorekit.train.data import load_data


def _bare(model, objective, data, batch: int, steps: int, precond: bool = False) -> float:
    net = model.net
    if isinstance(net, EDMPrecond) and not precond:
        net = net.net  # the raw network F inside the EDM denoiser
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, fused=True)
    g = torch.Generator().manual_seed(0)
    x = data[torch.randint(data.shape[0], (batch,), generator=g)]
    t = objective.sample_t(batch, generator=g)
    target = torch.randn(x.shape, generator=g)
    c0 = time.process_time()
    for _ in range(steps):
        loss = (net(x, t) - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.process_time() - c0) / steps


def _objective(model, objective, data, batch: int, steps: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    g = torch.Generator().manual_seed(0)
    c0 = time.process_time()
    for _ in range(steps):
        x = data[torch.randint(data.shape[0], (batch,), generator=g)]
        loss = objective(model, x, generator=g).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.process_time() - c0) / steps


def _trainer(model, objective, data, batch: int, steps: int) -> float:
    cfg = TrainConfig(steps=steps, batch_size=batch, log_every=50, progress=False)
    trainer = Trainer(model, objective, data, cfg, device="cpu")
    c0 = time.process_time()
    trainer.fit()
    return (time.process_time() - c0) / steps


def _case(name: str, make, objective, data, batch: int, steps: int, reps: int) -> dict:
    runs = {"bare": _bare, "objective": _objective, "trainer": _trainer}
    if isinstance(make().net, EDMPrecond):  # also against the preconditioned denoiser D
        runs["bare_precond"] = lambda *a: _bare(*a, precond=True)
    times: dict[str, list[float]] = {k: [] for k in runs}
    torch.manual_seed(0)
    for fn in runs.values():  # warm-up
        fn(make(), objective, data, batch, max(steps // 4, 2))
    for _ in range(reps):  # short blocks, interleaved, to share the machine's noise
        for k, fn in runs.items():
            torch.manual_seed(0)
            times[k].append(fn(make(), objective, data, batch, steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    # the ratio of each block to the bare block next to it, then the median and quartiles
    rel = {k: sorted(a / b for a, b in zip(times[k], times["bare"], strict=True))
           for k in ("objective", "trainer")}  # fmt: skip
    q = lambda v, f: v[min(len(v) - 1, int(f * len(v)))]  # noqa: E731
    extra = {}
    if "bare_precond" in times:
        pre = sorted(a / b for a, b in zip(times["objective"], times["bare_precond"], strict=True))
        extra = {
            "bare_precond_ms_per_step": 1e3 * med["bare_precond"],
            "objective_ratio_over_precond": statistics.median(pre),
            "objective_ratio_over_precond_quartiles": [q(pre, 0.25), q(pre, 0.75)],
        }
    return {
        "case": name,
        "batch": batch,
        "steps_per_block": steps,
        "blocks": reps,
        "bare_ms_per_step": 1e3 * med["bare"],
        "objective_ms_per_step": 1e3 * med["objective"],
        "trainer_ms_per_step": 1e3 * med["trainer"],
        "objective_ratio": statistics.median(rel["objective"]),
        "objective_ratio_quartiles": [q(rel["objective"], 0.25), q(rel["objective"], 0.75)],
        "trainer_ratio": statistics.median(rel["trainer"]),
        "trainer_ratio_quartiles": [q(rel["trainer"], 0.25), q(rel["trainer"], 0.75)],
        "goal_objective_ratio": 1.03,
        **extra,
        "threads": torch.get_num_threads(),
    }


def run(quick: bool = False) -> dict:
    reps = 1 if quick else 25
    toy = load_data("moons", n=20_000, generator=torch.Generator().manual_seed(0)).x
    ve, edm = VE(0.01, 5.0), EDM()
    rows = [
        _case(
            "mlp_2d_dsm",
            lambda: ScoreModel(MLP(2, hidden=128, depth=3), ve, prediction="eps"),
            make_objective("dsm", ve),
            toy,
            batch=256,
            steps=20 if quick else 100,
            reps=reps,
        ),
        _case(
            "mlp_2d_edm",
            lambda: ScoreModel(EDMPrecond(MLP(2, hidden=128, depth=3), edm), edm, "x0"),
            make_objective("edm", edm),
            toy,
            batch=256,
            steps=20 if quick else 100,
            reps=reps,
        ),
    ]
    digits = load_data("digits").x
    vp = VP()
    rows.append(
        _case(
            "unet_digits_dsm",
            lambda: ScoreModel(UNet(1, base=32, mults=(1, 2)), vp, prediction="eps"),
            make_objective("dsm", vp),
            digits,
            batch=64,
            steps=4 if quick else 10,
            reps=reps,
        )
    )
    return {"suite": "train", "rows": rows}


def markdown(result: dict) -> str:
    """The table of a run: ms per step and the ratios over the bare step."""
    head = "| case | bare ms/step | objective / bare | trainer / bare | goal |"
    lines = [
        "# Training-step cost (generated by `benchmarks/run.py --only train`)",
        "",
        "Median over interleaved blocks (quartiles in brackets), CPU time of one thread.",
        "",
        head,
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        oq, tq = r["objective_ratio_quartiles"], r["trainer_ratio_quartiles"]
        obj = f"{r['objective_ratio']:.3f} [{oq[0]:.3f}, {oq[1]:.3f}]"
        if "objective_ratio_over_precond" in r:
            pq = r["objective_ratio_over_precond_quartiles"]
            obj += (f"; over the preconditioned D: {r['objective_ratio_over_precond']:.3f} "
                    f"[{pq[0]:.3f}, {pq[1]:.3f}]")  # fmt: skip
        lines.append(
            f"| {r['case']} | {r['bare_ms_per_step']:.2f} | {obj} | "
            f"{r['trainer_ratio']:.3f} [{tq[0]:.3f}, {tq[1]:.3f}] | "
            f"<= {r['goal_objective_ratio']:g} |"
        )
    return "\n".join(lines) + "\n"

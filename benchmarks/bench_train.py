"""Training throughput: steps/s of the Trainer against a bare step, for the MLP and the U-Net.

A *bare* step is the least any training step does: draw a batch and its noise levels,
evaluate the objective, backward, and a multi-tensor AdamW step (as the Trainer's). The
Trainer adds warm-up, gradient clipping, the EMA update, the non-finite check, per-sigma
logging and the final checkpoint. The goal is ``overhead_ratio`` = trainer seconds per
step / bare seconds per step <= 1.05. Times are CPU time of this process
(``time.process_time``), less disturbed by other load on a shared machine than wall
time; run with ``OMP_NUM_THREADS=1`` for comparable numbers.
"""

from __future__ import annotations

import statistics
import tempfile
import time

import torch

from scorekit import VE, VP, ScoreModel
from scorekit.losses import make_objective
from scorekit.nets import MLP, UNet
from scorekit.train.data import load_data
from scorekit.train.trainer import TrainConfig, Trainer


def _bare(model, objective, data, batch: int, steps: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)  # as the Trainer
    g = torch.Generator().manual_seed(0)
    t0 = time.process_time()
    for _ in range(steps):
        idx = torch.randint(data.shape[0], (batch,), generator=g)
        x = data[idx]
        t = objective.sample_t(batch, generator=g)
        loss = objective(model, x, t=t, generator=g).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.process_time() - t0) / steps


def _trainer(model, objective, data, batch: int, steps: int) -> float:
    cfg = TrainConfig(steps=steps, batch_size=batch, log_every=50, ckpt_every=10**9, progress=False)
    with tempfile.TemporaryDirectory() as d:
        trainer = Trainer(model, objective, data, cfg, d)
        t0 = time.process_time()
        trainer.fit()
        return (time.process_time() - t0) / steps


def _case(name: str, make, objective, data, batch: int, steps: int, reps: int) -> dict:
    bare, full = [], []
    torch.manual_seed(0)
    _bare(make(), objective, data, batch, max(steps // 10, 2))  # warm-up
    for _ in range(reps):  # interleave, to share the machine's noise
        torch.manual_seed(0)
        bare.append(_bare(make(), objective, data, batch, steps))
        torch.manual_seed(0)
        full.append(_trainer(make(), objective, data, batch, steps))
    b, f = statistics.median(bare), statistics.median(full)
    return {
        "case": name,
        "batch": batch,
        "steps": steps,
        "bare_steps_per_s": 1 / b,
        "trainer_steps_per_s": 1 / f,
        "overhead_ratio": f / b,
        "goal_ratio": 1.05,
        "threads": torch.get_num_threads(),
    }


def run(quick: bool = False) -> dict:
    reps = 1 if quick else 5
    toy = load_data("moons", n=20_000, generator=torch.Generator().manual_seed(0)).x
    ve = VE(0.01, 5.0)
    mlp = _case(
        "mlp_2d",
        lambda: ScoreModel(MLP(2, hidden=128, depth=3), ve, prediction="eps"),
        make_objective("dsm", ve),
        toy,
        batch=256,
        steps=60 if quick else 600,
        reps=reps,
    )
    digits = load_data("digits").x
    vp = VP()
    unet = _case(
        "unet_digits",
        lambda: ScoreModel(UNet(1, base=32, mults=(1, 2)), vp, prediction="eps"),
        make_objective("dsm", vp),
        digits,
        batch=64,
        steps=6 if quick else 60,
        reps=reps,
    )
    return {"suite": "train", "rows": [mlp, unet]}

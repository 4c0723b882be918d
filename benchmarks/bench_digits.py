"""Sample quality on sklearn's 8x8 digits: a small U-Net, trained, sampled and scored.

Split: ``train_test_split(test_size=0.3, random_state=0, stratify=y)``. Scores:

* Frechet distance in a 16-component PCA space (fitted on the training digits) between
  generated and held-out digits, against the distance between two halves of real digits
  of the same sizes (goal: ratio <= 3);
* mean top-class probability of a logistic-regression classifier (trained on the real
  training digits) on generated digits, relative to held-out digits (goal >= 95%);
* the smallest share of any predicted class among the generated digits (goal >= 5%).

An image grid of samples is saved as ``benchmarks/results/digits_grid.png``. The full run
(4500 steps of batch 128, one thread) is budgeted at under 20 CPU-minutes; ``--quick`` is a
smoke run (its numbers mean nothing).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from scorekit import VP, ScoreModel
from scorekit.app.plots import plot_image_grid, save_figure
from scorekit.losses import make_objective
from scorekit.metrics import digits_quality
from scorekit.nets import UNet
from scorekit.samplers import sample
from scorekit.train.data import Normalizer
from scorekit.train.trainer import TrainConfig, Trainer

HERE = Path(__file__).resolve().parent


def run(quick: bool = False, steps: int | None = None) -> dict:
    """Train, sample and score; ``steps`` overrides the training steps (4500 full, 40 quick)."""
    t0 = time.perf_counter()
    d = load_digits()
    X, y = d.data.astype(np.float64), d.target
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    norm = Normalizer(8.0, 8.0)
    train = norm.encode(torch.tensor(Xtr, dtype=torch.float32).reshape(-1, 1, 8, 8))

    steps = steps if steps is not None else 40 if quick else 4500
    n_samples = 64 if quick else len(Xte)
    sampler_steps = 10 if quick else 200
    process = VP()
    torch.manual_seed(0)
    model = ScoreModel(UNet(1, base=32, mults=(1, 2)), process, prediction="eps")
    cfg = TrainConfig(
        steps=steps, batch_size=128, lr=2e-3, warmup=200, ema_decay=0.999, progress=False
    )
    trainer = Trainer(model, make_objective("dsm", process), train, cfg, None, normalizer=norm)
    fit = trainer.fit()
    ema = trainer.ema.module.eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        res = sample(ema, (n_samples, 1, 8, 8), sampler="heun", steps=sampler_steps, generator=g)
    gen = norm.decode(res.x.double()).clamp(0, 16).reshape(n_samples, 64).numpy()

    q = digits_quality(gen, Xtr, ytr, Xte)
    fd_gen, fd_real = q["frechet"], q["frechet_real"]

    fig = plot_image_grid(
        res.x[:100],
        normalizer=norm,
        nrow=10,
        value_range=(0, 16),
        title="Generated digits (U-Net, VP, PF-ODE Heun)",
    )
    grid = save_figure(fig, HERE / "results" / "digits_grid.png")
    return {
        "suite": "digits",
        "quick": quick,
        "train_steps": steps,
        "final_loss": fit["loss"],
        "train_seconds": fit["seconds"],
        "sampler": "heun",
        "sampler_steps": sampler_steps,
        "nfe": res.nfe,
        "n_generated": n_samples,
        "frechet_pca16_generated": fd_gen,
        "frechet_pca16_real_halves": fd_real,
        "frechet_ratio": fd_gen / fd_real,
        "goal_frechet_ratio": 3.0,
        "top_class_prob_ratio": q["top_class_prob_ratio"],
        "goal_top_class_prob_ratio": 0.95,
        "min_class_share": q["min_class_share"],
        "goal_min_class_share": 0.05,
        "class_shares": q["class_shares"],
        "grid": str(grid),
        "seconds": time.perf_counter() - t0,
    }

"""Run by tests/test_train.py under torchrun: train a tiny model, save parameters per rank."""

from __future__ import annotations

import sys

import torch

from scorekit import VE, ScoreModel, make_objective
from scorekit.losses import AdaptiveSigma
from scorekit.nets import MLP
from scorekit.train.data import load_data
from scorekit.train.distributed import init_distributed, shutdown_distributed
from scorekit.train.trainer import TrainConfig, Trainer


def main(out: str, accum: int, adaptive: bool = False) -> None:
    rank, world, _ = init_distributed()
    torch.manual_seed(0)
    data = load_data("moons", n=512, generator=torch.Generator().manual_seed(1))
    process = VE(0.01, 3.0)
    model = ScoreModel(MLP(2, hidden=32, depth=2), process)
    cfg = TrainConfig(steps=20, batch_size=64, accum=accum, warmup=5, progress=False)
    objective = make_objective("dsm", process)
    if adaptive:
        objective = AdaptiveSigma(objective, bins=8, decay=0.5)
    trainer = Trainer(model, objective, data.x, cfg, None)
    trainer.fit()
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    if adaptive:  # and the sigma law's statistics
        flat = torch.cat([flat, objective.second_moment.double().flatten()])
    torch.save(flat, f"{out}/params_rank{rank}_of{world}.pt")
    trainer.close()
    shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), len(sys.argv) > 3 and sys.argv[3] == "adaptive")

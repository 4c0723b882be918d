r"""``scorekit demo``: train on a 2-D toy, sample three ways, measure, and write a report.

The run (a couple of minutes on two CPU cores):

1. 20 000 points of the 8-Gaussians toy, standardised; a VE process with
   :math:`\sigma_{max}` about the largest pairwise distance (Song & Ermon 2020);
   a residual MLP predicting :math:`\varepsilon`, trained with σ²-weighted DSM.
2. Samples from the EMA model with annealed Langevin dynamics (Song & Ermon 2019),
   the reverse SDE (Euler–Maruyama) and the probability-flow ODE (Heun), each scored by
   the sliced Wasserstein-2 distance to held-out points, next to the distance between
   two independent draws of the data (the floor) and an untrained model's samples.
3. The test negative log-likelihood through the probability-flow ODE (exact divergence).
4. ``score_field.png``, ``samples.png``, ``trajectories.png``, ``loss_per_sigma.png`` and
   ``report.md`` in the output folder.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import torch

from ..core.distributions import GaussianMixture
from ..core.parametrize import ScoreModel
from ..core.processes import VE
from ..losses import make_objective
from ..metrics import sliced_wasserstein
from ..nets import MLP
from ..noise.design import max_pairwise_distance
from ..samplers import sample
from ..train.checkpoint import write_atomic
from ..train.data import load_data
from ..train.trainer import TrainConfig, Trainer
from .plots import (
    plot_loss_per_sigma,
    plot_samples,
    plot_score_field,
    plot_trajectories,
    save_figure,
)
from .recipes import nll_report

__all__ = ["DEMO_SAMPLERS", "run_demo"]

TOY = "8gaussians"
#: (label, sampler name, steps, options): annealed Langevin runs 20 levels x 10 steps
DEMO_SAMPLERS = (
    ("annealed Langevin", "annealed_langevin", 20, {"steps_per_level": 10}),
    ("reverse SDE (Euler-Maruyama)", "euler_maruyama", 500, {}),
    ("PF-ODE (Heun)", "heun", 50, {}),
)


def run_demo(
    out: Path,
    *,
    seed: int = 0,
    steps: int | None = None,
    quiet: bool = False,
    n_samples: int = 2000,
    n_nll: int = 500,
) -> str:
    """Run the demo into ``out`` (``steps`` training steps, default 4000; ``n_samples`` per
    sampler; ``n_nll`` test points for the likelihood); returns the text of ``report.md``."""
    steps = 4000 if steps is None else steps
    threads = torch.get_num_threads()
    # A small MLP gains nothing from intra-op threads, and on a busy machine they cost a lot
    # (4x slower on two shared cores), so the demo runs on one thread.
    torch.set_num_threads(1)
    try:
        return _run(Path(out), seed, steps, quiet, n_samples, n_nll)
    finally:
        torch.set_num_threads(threads)


def _run(out: Path, seed: int, steps: int, quiet: bool, n: int, n_nll: int) -> str:
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    train = load_data(TOY, n=20_000, generator=torch.Generator().manual_seed(seed))
    test = load_data(
        TOY,
        n=max(2 * n, n_nll),
        generator=torch.Generator().manual_seed(seed + 1),
        normalizer=train.normalizer,
    )
    dist, _, _ = max_pairwise_distance(train.x, generator=torch.Generator().manual_seed(seed))
    sigma_max = float(f"{dist:.3g}")  # Song & Ermon (2020), Technique 1
    process = VE(0.01, sigma_max)
    torch.manual_seed(seed)
    model = ScoreModel(MLP(2, hidden=128, depth=3), process, prediction="eps")
    untrained = copy.deepcopy(model).eval()
    objective = make_objective("dsm", process)
    cfg = TrainConfig(
        steps=steps, batch_size=256, lr=2e-3, warmup=200, ema_decay=0.999, seed=seed,
        log_every=max(steps // 40, 1), ckpt_every=steps, progress=not quiet,
    )  # fmt: skip
    meta = {
        "data": {"spec": TOY, "n": 20_000, "shape": [2], "bins": None},
        "objective": {"name": "dsm", "kwargs": {}},
    }
    trainer = Trainer(model, objective, train.x, cfg, out, normalizer=train.normalizer, meta=meta)
    fit = trainer.fit()
    trained = trainer.ema.module.eval()
    t_train = time.perf_counter() - t_start

    ref, held = test.x[:n], test.x[n : 2 * n]

    def sw(x: torch.Tensor) -> float:
        g = torch.Generator().manual_seed(seed + 7)
        return float(sliced_wasserstein(x.double(), ref.double(), 256, g))

    rows, samples, trajs = [], {}, {}
    for label, name, k, options in DEMO_SAMPLERS:
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(seed + 11)
        res = sample(
            trained, (n, 2), sampler=name, steps=k, generator=g, return_trajectory=True,
            **options,
        )  # fmt: skip
        x = res.x.detach()
        samples[label], trajs[label] = x, _stack(res.trajectory)
        rows.append((label, name, k, res.nfe, sw(x), time.perf_counter() - t0))
    g = torch.Generator().manual_seed(seed + 11)
    base = sample(untrained, (n, 2), sampler="heun", steps=50, generator=g).x.detach()
    floor, untrained_sw = sw(held), sw(base)

    t0 = time.perf_counter()
    nll = nll_report(trained, train.normalizer, test.x[:n_nll], None, divergence="exact")
    t_nll = time.perf_counter() - t0
    raw = train.normalizer.decode(test.x[:n_nll].double())
    true_nll = float(-_true_density().log_prob(raw).mean())

    p = process
    ts = [float(p.t_of_sigma(torch.tensor(s))) for s in (0.05, 0.3, 1.5)]
    figs = {
        "score_field.png": plot_score_field(trained, train.x, ts, normalizer=train.normalizer),
        "samples.png": plot_samples(
            samples, test.x, normalizer=train.normalizer,
            title=f"Samples vs held-out data ({n} points each)",
        ),
        "trajectories.png": plot_trajectories(
            trajs, train.x, normalizer=train.normalizer, n_paths=16
        ),
        "loss_per_sigma.png": plot_loss_per_sigma(out / "log.jsonl"),
    }  # fmt: skip
    for name, fig in figs.items():
        save_figure(fig, out / name)

    lines = [
        "# scorekit demo",
        "",
        f"Data: `{TOY}` (20 000 training points, standardised). Process: VE, "
        f"sigma in [0.01, {sigma_max:g}]. Network: residual MLP (3 blocks of 128) predicting eps,",
        f"σ²-weighted DSM, {fit['step']} steps of batch {cfg.batch_size}, AdamW lr {cfg.lr:g}, "
        f"EMA {cfg.ema_decay}; final training loss {fit['loss']:.4f}; "
        f"training took {t_train:.0f} s.",
        "",
        "## Samples",
        "",
        f"Sliced Wasserstein-2 distance (256 projections) of {n} samples to {n} held-out points; "
        "lower is better.",
        "",
        "| sampler | name | steps | NFE | sliced W2 | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for label, name, k, nfe, d, sec in rows:
        lines.append(f"| {label} | `{name}` | {k} | {nfe} | {d:.4f} | {sec:.1f} |")
    lines.append("")
    lines.append("(annealed Langevin: 20 noise levels, 10 steps each, then one denoising step.)")
    lines.append("")
    lines += [
        "| reference | sliced W2 |",
        "|---|---|",
    ]
    lines += [
        f"| two independent draws of the data (the floor) | {floor:.4f} |",
        f"| untrained model, PF-ODE (Heun, 50 steps) | {untrained_sw:.4f} |",
        "",
        "## Test likelihood",
        "",
        f"Negative log-likelihood of {nll['n']} held-out points through the probability-flow "
        f"ODE (dopri5, exact divergence, {nll['nfe']} evaluations, {t_nll:.0f} s): "
        f"**{nll['nll']:.3f} ± {nll['nll_stderr']:.3f} nats** "
        f"({nll['bpd']:.3f} ± {nll['bpd_stderr']:.3f} bits/dim), in data coordinates. "
        f"The true density of the toy gives {true_nll:.3f} nats on the same points.",
        "",
        "## Figures",
        "",
        "- [score_field.png](score_field.png): the learned score as arrows over the data "
        "density at three noise levels.",
        "- [samples.png](samples.png): samples of each sampler over held-out data.",
        "- [trajectories.png](trajectories.png): paths of 16 particles from the prior to the "
        "data (annealed Langevin: the state after each noise level).",
        "- [loss_per_sigma.png](loss_per_sigma.png): training loss per noise level.",
        "",
        f"Total time {time.perf_counter() - t_start:.0f} s. Checkpoint: "
        "[checkpoint.safetensors](checkpoint.safetensors) (+ `checkpoint.json`); "
        "log: `log.jsonl`.",
        "",
    ]
    text = "\n".join(lines)
    write_atomic(out / "report.md", text)
    return text


def _true_density() -> GaussianMixture:
    """The 8-Gaussians toy of :func:`scorekit.train.data.toy_2d`: radius 2, std 0.2, equal
    weights."""
    ang = 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8
    means = 2 * torch.stack([torch.cos(ang), torch.sin(ang)], 1)
    return GaussianMixture(torch.full((8,), 1 / 8), means, stds=0.2)


def _stack(traj) -> torch.Tensor:
    if isinstance(traj, torch.Tensor):
        return traj
    return torch.stack(list(traj))

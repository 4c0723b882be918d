"""EDM recipe vs rectified flow vs rectified flow + reflow on moons and digits, quality
against NFE (1, 2, 4, 10, 50), at equal training steps.

Each model is built by the CLI's own recipe code (:func:`scorekit.app.recipes.build_run`):
``toy-2d`` for moons (20000 points), ``small-images`` for sklearn's digits (the 1257
training digits). "EDM" is the recipe as it is; "RF" swaps in the rectified-flow process,
the flow-matching loss and a velocity network (what ``scorekit train --process
rectified_flow`` does); "RF + reflow" trains RF for half the steps, draws (sample, noise)
pairs from its EMA with Heun (20 steps) and trains the other half on the pairs from the
teacher's weights (``scorekit reflow``). All three take the same number of optimiser steps;
the reflow row also pays the pair draw, reported in seconds.

Quality: moons, sliced W2 (256 projections) between 5000 samples and 5000 fresh moons
points in data coordinates (floor: two fresh sets); digits, the Frechet distance in a
16-component PCA of the training digits between 540 samples and the 540 held-out digits
(:func:`scorekit.metrics.digits_quality`, protocol "full"). Per NFE the table gives Euler
and the best of the ODE samplers euler / heun / dpmpp_2m / unipc at that NFE (heun needs
NFE >= 3). Straightness (:func:`scorekit.metrics.straightness`, 50 Heun steps) compares RF
and reflow on one time axis; EDM's axis is sigma, so its value is not comparable.

One thread (run it alone). ``--quick`` is a smoke run whose numbers mean nothing.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch

from scorekit.app.recipes import build_run, recipe_settings
from scorekit.losses import FlowMatchingLoss
from scorekit.metrics import digits_quality, sliced_wasserstein, straightness
from scorekit.samplers import sample
from scorekit.train.data import load_data
from scorekit.train.reflow import reflow_data, reflow_pairs
from scorekit.train.trainer import TrainConfig, Trainer

HERE = Path(__file__).resolve().parent
NFES = (1, 2, 4, 10, 50)
SAMPLERS = ("euler", "heun", "dpmpp_2m", "unipc")


def _steps_for(sampler: str, nfe: int) -> int | None:
    """Grid steps that spend exactly ``nfe`` evaluations (heun: 2 per step, 1 on the last
    step to sigma = 0), or ``None`` when none does."""
    if sampler == "heun":
        return (nfe + 1) // 2 if nfe >= 3 and nfe % 2 == 1 else None
    return nfe


def _settings(task: str, kind: str) -> dict:
    s = recipe_settings("toy-2d" if task == "moons" else "small-images")
    s["data"] = task
    if kind != "edm":
        s["process"], s["loss"], s["loss_kwargs"] = {"name": "rectified_flow"}, "flow_matching", {}
        s["prediction"] = "velocity"
    return s


def _train(s: dict, data, steps: int, model=None, examples=None, objective=None):
    torch.manual_seed(0)
    fresh, obj, ex = build_run(copy.deepcopy(s), data)
    if model is not None:
        fresh.load_state_dict(model.state_dict())
    cfg = TrainConfig.from_dict({**s["train"], "steps": steps, "progress": False, "seed": 0})
    tr = Trainer(
        fresh,
        objective or obj,
        ex if examples is None else examples,
        cfg,
        None,
        normalizer=data.normalizer,
    )
    fit = tr.fit()
    ema = tr.ema.module.eval()
    ema.data_shape = data.shape
    return ema, fit["seconds"]


def _quality(task: str, model, data, ref, sampler: str, nfe: int, n: int) -> float | None:
    steps = _steps_for(sampler, nfe)
    if steps is None:
        return None
    with torch.no_grad():
        res = sample(model, n, sampler, steps, torch.Generator().manual_seed(1))
    if res.nfe != nfe:
        return None
    x = data.normalizer.decode(res.x.double())
    if not torch.isfinite(x).all():
        return float("inf")
    if task == "moons":
        return float(sliced_wasserstein(x, ref["test"], 256, torch.Generator().manual_seed(2)))
    gen = x.clamp(0, 16).reshape(len(x), -1).numpy()
    q = digits_quality(gen, ref["train_x"], ref["train_y"], ref["test"], protocol="full")
    return float(q["frechet"])


def _task(task: str, quick: bool) -> dict:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    if task == "moons":
        data = load_data("moons", n=2000 if quick else 20_000, generator=g)
        test = load_data(
            "moons", n=5000, normalize="none", generator=torch.Generator().manual_seed(9)
        ).x
        floor_b = load_data(
            "moons", n=5000, normalize="none", generator=torch.Generator().manual_seed(10)
        ).x
        ref = {"test": test.double()}
        floor = float(
            sliced_wasserstein(
                test.double(), floor_b.double(), 256, torch.Generator().manual_seed(2)
            )
        )
        steps, n, pairs = (
            (200 if quick else 4000),
            (500 if quick else 5000),
            (1000 if quick else 20_000),
        )
    else:
        data = load_data("digits", split="train", generator=g)
        tr = load_data("digits", split="train", normalize="none")
        te = load_data("digits", split="test", normalize="none")
        ref = {
            "train_x": tr.x.reshape(len(tr.x), -1).double().numpy(),
            "train_y": tr.labels.numpy(),
            "test": te.x.reshape(len(te.x), -1).double().numpy(),
        }
        rng = np.random.default_rng(0)
        pick = rng.choice(len(ref["train_x"]), len(ref["test"]), replace=False)
        floor = digits_quality(
            ref["train_x"][pick], ref["train_x"], ref["train_y"], ref["test"], protocol="full"
        )["frechet"]
        steps, n, pairs = (40 if quick else 3000), (64 if quick else 540), (256 if quick else 5000)
    rows = {}
    edm, sec_edm = _train(_settings(task, "edm"), data, steps)
    rf_s = _settings(task, "rf")
    rf, sec_rf = _train(rf_s, data, steps)
    half, sec_half = _train(rf_s, data, steps // 2)
    t0 = time.perf_counter()
    with torch.no_grad():
        x0, noise = reflow_pairs(
            half, pairs, "heun", 20, torch.Generator().manual_seed(5), batch_size=2048
        )
    sec_pairs = time.perf_counter() - t0
    student, sec_student = _train(
        rf_s,
        data,
        steps - steps // 2,
        model=half,
        examples=reflow_data(x0, noise),
        objective=FlowMatchingLoss(half.process),
    )
    models = {
        "edm": (edm, {"train_seconds": sec_edm, "steps": steps}),
        "rf": (rf, {"train_seconds": sec_rf, "steps": steps}),
        "rf_reflow": (
            student,
            {
                "train_seconds": sec_half + sec_student,
                "pair_seconds": sec_pairs,
                "steps": steps,
                "pairs": pairs,
                "pair_sampler": "heun",
                "pair_steps": 20,
            },
        ),
    }
    for name, (model, info) in models.items():
        q = {s: {str(k): _quality(task, model, data, ref, s, k, n) for k in NFES} for s in SAMPLERS}
        best = {}
        for k in NFES:
            cands = [(v[str(k)], s) for s, v in q.items() if v[str(k)] is not None]
            val, who = min(cands)
            best[str(k)] = {"value": val, "sampler": who}
        with torch.no_grad():
            st = straightness(model, 256 if not quick else 64, 50, torch.Generator().manual_seed(6))
        rows[name] = {
            **info,
            "quality": q,
            "best": best,
            "straightness": st.value,
            "straightness_relative": st.relative,
        }
    metric = "sliced_w2" if task == "moons" else "frechet_pca16"
    return {"metric": metric, "floor": float(floor), "n_samples": n, "models": rows}


def run(quick: bool = False) -> dict:
    """Both tasks; one thread."""
    t0 = time.perf_counter()
    out = {"suite": "flow", "quick": quick, "nfe": list(NFES), "samplers": list(SAMPLERS)}
    out["tasks"] = {task: _task(task, quick) for task in ("moons", "digits")}
    out["figure"] = str(_figure(out))
    out["seconds"] = time.perf_counter() - t0
    return out


def _figure(result: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, (task, r) in zip(axes, result["tasks"].items(), strict=True):
        for name, label in (
            ("edm", "EDM recipe"),
            ("rf", "rectified flow"),
            ("rf_reflow", "RF + reflow"),
        ):
            ys = [r["models"][name]["best"][str(k)]["value"] for k in result["nfe"]]
            ax.plot(result["nfe"], ys, "o-", label=label)
        ax.axhline(r["floor"], color="gray", ls=":", label="real vs real")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("NFE")
        ax.set_ylabel(r["metric"])
        ax.set_title(task)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = HERE.parent / "docs" / "figures" / "flow_nfe.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.relative_to(HERE.parent)


def markdown(result: dict) -> str:
    """Tables from the record."""
    lines = []
    for task, r in result["tasks"].items():
        lines += [
            f"## {task}: {r['metric']} (lower is better; real vs real {r['floor']:.4g})",
            "",
            "| model | steps | train s | "
            + " | ".join(f"NFE {k} euler / best" for k in result["nfe"])
            + " | straightness |",
            "|---" * (4 + len(result["nfe"])) + "|",
        ]
        for name, m in r["models"].items():
            cells = []
            for k in result["nfe"]:
                e, b = m["quality"]["euler"][str(k)], m["best"][str(k)]
                cells.append(f"{e:.3g} / {b['value']:.3g} ({b['sampler']})")
            sec = f"{m['train_seconds']:.0f}" + (
                f" + {m['pair_seconds']:.0f} pairs" if "pair_seconds" in m else ""
            )
            lines.append(
                f"| {name} | {m['steps']} | {sec} | "
                + " | ".join(cells)
                + f" | {m['straightness']:.3g} |"
            )
        lines.append("")
    return "\n".join(lines)

"""Choosing and weighting the noise levels: four weightings at one training budget.

On four data sets (``8gaussians``: an exact 2-D Gaussian mixture; ``moons``; ``gm16``: an
exact 16-D Gaussian mixture; sklearn's 8x8 ``digits``, flattened to 64-D) the same residual
MLP is trained with the same steps, batch, optimiser and seed under four objectives:

* ``sigma2_ve``: lambda = sigma^2 on VE (NCSN / score_sde DSM, eps-MSE, t ~ U[0, 1]),
  sigma_max = the largest pairwise distance (Technique 1);
* ``likelihood_is``: lambda = g^2 on VP with importance sampling q(t) ~ g^2/sigma^2;
* ``edm``: EDM's log-normal sigma with its weighting and preconditioning, sigma_data = the
  data std;
* ``ddpm_eps``: DDPM's eps-MSE with t uniform on 1000 grid times of VP.

All processes span sigma (or sigma/alpha) from 0.01. Reported per run: test NLL through the
probability-flow ODE (nats per example in data coordinates; bits/dim for digits with uniform
dequantisation of the 17 grey levels), with the prior a Gaussian moment-matched to the true
marginal at t_max for every method (so no method pays for a prior mismatch); the exact NLL of
the mixtures as reference; sliced W2 between ODE samples and test data (in data
coordinates); for digits the Frechet distance in a 16-component PCA space; and, for the exact
mixtures, the trainer's loss per sigma bucket divided by its irreducible floor
(:mod:`scorekit.noise.diagnostics`).

Usage (one thread; the full run took 913 s on a shared 2-core machine, --quick < 1 min):

    python benchmarks/study_noise_levels.py [--quick] [--out DIR] [--figures DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from scorekit import EDM, VE, VP, EDMPrecond, Gaussian, GaussianMixture, ScoreModel
from scorekit.app.plots import read_log, save_figure
from scorekit.core.weighting import SigmaSquared
from scorekit.likelihood import bits_per_dim, log_prob
from scorekit.losses import DDPMObjective, DiffusionLoss, EDMLoss, LikelihoodLoss
from scorekit.metrics import sliced_wasserstein
from scorekit.nets import MLP
from scorekit.noise.design import max_pairwise_distance
from scorekit.noise.diagnostics import irreducible_buckets, normalized_log, plot_normalized_loss
from scorekit.samplers import sample
from scorekit.train.data import Normalizer, digits, toy_2d
from scorekit.train.trainer import TrainConfig, Trainer

HERE = Path(__file__).resolve().parent
METHODS = ("sigma2_ve", "likelihood_is", "edm", "ddpm_eps")
DATASETS = ("8gaussians", "moons", "gm16", "digits")
SIGMA_MIN = 0.01

FULL = {"steps": 3000, "batch": 256, "n_train": 20_000, "n_nll": 500, "n_nll_digits": 200,
        "n_samples": 2000, "sample_steps": 100, "floor_n": 100_000, "log_every": 150}  # fmt: skip
QUICK = {"steps": 30, "batch": 64, "n_train": 2000, "n_nll": 24, "n_nll_digits": 16,
         "n_samples": 128, "sample_steps": 6, "floor_n": 4000, "log_every": 10}  # fmt: skip


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def eight_gaussians() -> GaussianMixture:
    """``toy_2d("8gaussians")`` as an exact mixture: radius 2, component std 0.2."""
    ang = 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8
    means = 2 * torch.stack([torch.cos(ang), torch.sin(ang)], 1)
    return GaussianMixture(torch.ones(8), means, stds=0.2)


def gm16() -> GaussianMixture:
    """A fixed 16-D mixture: 6 components, means of norm ~3, diagonal stds in [0.2, 0.8]."""
    g = _gen(1234)
    means = 0.75 * torch.randn(6, 16, generator=g, dtype=torch.float64)
    stds = 0.2 + 0.6 * torch.rand(6, 16, generator=g, dtype=torch.float64)
    weights = 0.5 + torch.rand(6, generator=g, dtype=torch.float64)
    return GaussianMixture(weights, means, stds=stds)


def load(name: str, cfg: dict) -> dict:
    """Train / test data in model space, the normaliser, the exact target when known."""
    if name in ("8gaussians", "gm16"):
        target = eight_gaussians() if name == "8gaussians" else gm16()
        train = target.sample(cfg["n_train"], generator=_gen(10)).float()
        test = target.sample(max(cfg["n_samples"], cfg["n_nll"]), generator=_gen(11)).float()
        return {"train": train, "test": test, "norm": Normalizer(), "target": target, "bins": None}
    if name == "moons":
        raw = toy_2d("moons", cfg["n_train"], _gen(10))
        norm = Normalizer.fit(raw)
        test = toy_2d("moons", max(cfg["n_samples"], cfg["n_nll"]), _gen(11))
        return {"train": norm.encode(raw), "test": norm.encode(test), "norm": norm,
                "target": None, "bins": None}  # fmt: skip
    x, _ = digits()
    x = x.reshape(len(x), 64)
    perm = torch.randperm(len(x), generator=_gen(0))
    n_test = 540
    norm = Normalizer(8.0, 8.0)
    return {"train": norm.encode(x[perm[n_test:]]), "test": norm.encode(x[perm[:n_test]]),
            "norm": norm, "target": None, "bins": 17}  # fmt: skip


def build(method: str, train: torch.Tensor, seed: int = 0):
    """``(model, objective)`` of ``method``; the MLP is initialised from ``seed``."""
    d = train.shape[1]
    torch.manual_seed(seed)
    net = MLP(d, hidden=128, depth=3)
    if method == "sigma2_ve":
        dist, _, _ = max_pairwise_distance(train, generator=_gen(0))
        process = VE(SIGMA_MIN, float(f"{dist:.3g}"))
        return ScoreModel(net, process, "eps"), DiffusionLoss(process, SigmaSquared(), "eps")
    if method == "edm":
        sd = float(f"{float(train.std()):.3g}")
        process = EDM(SIGMA_MIN, 80.0)
        model = ScoreModel(EDMPrecond(net, process, sd), process, "x0")
        return model, EDMLoss(process, sigma_data=sd)
    process = VP()  # sigma(t_min = 1e-3) = 0.01
    if method == "likelihood_is":
        return ScoreModel(net, process, "eps"), LikelihoodLoss(process)
    if method == "ddpm_eps":
        return ScoreModel(net, process, "eps"), DDPMObjective(process, steps=1000)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def moment_prior(process, train: torch.Tensor):
    r"""Gaussian with the true marginal's moments at ``t_max``:
    :math:`\mathcal N(\alpha\mu, \alpha^2\Sigma + \sigma^2 I)`; returns ``z -> log p``."""
    t = torch.tensor(process.t_max, dtype=torch.float64)
    a, s = (float(v) for v in process.marginal(t))
    x = train.double()
    cov = a**2 * torch.cov(x.T) + s**2 * torch.eye(x.shape[1], dtype=torch.float64)
    gauss = Gaussian(a * x.mean(0), cov=cov)
    return lambda z: gauss.log_prob(z.double()).to(z.dtype)


def frechet_pca(gen: np.ndarray, test: np.ndarray, train: np.ndarray) -> float:
    r"""Frechet distance :math:`\|\mu_a-\mu_b\|^2 + \mathrm{tr}(\Sigma_a+\Sigma_b-
    2(\Sigma_a\Sigma_b)^{1/2})` in a 16-component PCA space fitted on ``train``."""
    from scipy import linalg
    from sklearn.decomposition import PCA

    pca = PCA(16, random_state=0).fit(train)
    a, b = pca.transform(gen), pca.transform(test)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(ca @ cb)
    root = root.real if np.iscomplexobj(root) else root
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * root))


def evaluate(name: str, data: dict, model: ScoreModel, cfg: dict, quick: bool) -> dict:
    """Test NLL, sample distances; ``model`` is the EMA model in eval mode."""
    norm, test, train = data["norm"], data["test"], data["train"]
    ode = {"method": "rk4", "steps": 6} if quick else {"rtol": 1e-4, "atol": 1e-4}
    prior = moment_prior(model.process, train)
    out: dict = {}
    t0 = time.perf_counter()
    if data["bins"] is not None:
        x = test[: cfg["n_nll_digits"]]
        r = bits_per_dim(model, x, bins=data["bins"], data_range=(-1.0, 1.0),
                         divergence="hutchinson", n_probes=4, prior=prior, chunk_size=100,
                         generator=_gen(3), **ode)  # fmt: skip
        out.update(bpd=r.mean, bpd_stderr=r.stderr, nfe=r.nfe)
    else:
        x = test[: cfg["n_nll"]]
        r = log_prob(model, x, divergence="exact", prior=prior, **ode)
        nll = -(r.log_prob.double() + norm.log_det_for(tuple(x.shape[1:])))
        out.update(nll=float(nll.mean()), nll_stderr=float(nll.std() / math.sqrt(len(nll))),
                   nfe=r.nfe)  # fmt: skip
    out["nll_seconds"] = time.perf_counter() - t0
    n = cfg["n_samples"]
    with torch.no_grad():
        res = sample(model, (n, train.shape[1]), "heun", steps=cfg["sample_steps"],
                     generator=_gen(4))  # fmt: skip
    gen = norm.decode(res.x.double())
    ref = norm.decode(test[:n].double())
    out["sliced_w2"] = float(sliced_wasserstein(gen, ref, 256, _gen(5)))
    if name == "digits":
        g16 = gen.clamp(0, 16).numpy()
        out["frechet_pca16"] = frechet_pca(g16, ref.numpy(), norm.decode(train.double()).numpy())
    out["samples"] = gen[:1000].float()
    return out


def reference(name: str, data: dict, cfg: dict) -> dict:
    """What the data alone give: the exact NLL of the mixtures, and the sample distance
    between two independent draws of the test law (the noise floor of sliced W2)."""
    norm, n = data["norm"], cfg["n_samples"]
    out: dict = {}
    if data["target"] is not None:
        x = data["test"][: cfg["n_nll"]].double()
        nll = -data["target"].log_prob(x)
        out.update(
            exact_nll=float(nll.mean()), exact_nll_stderr=float(nll.std() / math.sqrt(len(x)))
        )
        other = data["target"].sample(n, generator=_gen(12))
    elif name == "moons":
        other = norm.encode(toy_2d("moons", n, _gen(12)))
    else:
        other = data["train"][torch.randperm(len(data["train"]), generator=_gen(12))[:n]]
    m = min(n, len(data["test"]), len(other))
    a, b = norm.decode(other[:m].double()), norm.decode(data["test"][:m].double())
    out["sliced_w2_data_vs_data"] = float(sliced_wasserstein(a, b, 256, _gen(5)))
    if name == "digits":
        tr = norm.decode(data["train"].double()).numpy()
        out["frechet_pca16_data_vs_data"] = frechet_pca(a.numpy(), b.numpy(), tr)
    return out


def run_one(name: str, method: str, data: dict, cfg: dict, quick: bool) -> dict:
    model, objective = build(method, data["train"])
    tc = TrainConfig(steps=cfg["steps"], batch_size=cfg["batch"], lr=2e-3, warmup=100,
                     ema_decay=0.999, log_every=cfg["log_every"], ckpt_every=10**9,
                     progress=False, seed=0)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, objective, data["train"], tc, tmp, normalizer=data["norm"],
                          device="cpu")  # fmt: skip
        fit = trainer.fit()
        os.remove(Path(tmp) / "checkpoint.safetensors")
        records = read_log(Path(tmp) / "log.jsonl")
    ema = trainer.ema.module.eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    out = {"train_seconds": fit["seconds"], "final_loss": fit["loss"], "objective": repr(objective)}
    out.update(evaluate(name, data, ema, cfg, quick))
    out["log"] = records
    if data["target"] is not None:
        floor, se = irreducible_buckets(objective, data["target"], records[-1]["sigma_edges"],
                                        n=cfg["floor_n"], generator=_gen(7))  # fmt: skip
        out["floor"], out["floor_stderr"] = floor.tolist(), se.tolist()
        out["normalized"] = normalized_log(records, floor)
    return out


def _scatter_figure(samples: dict, title: str):
    from scorekit.app.plots import _figure

    fig, axes = _figure(len(samples), size=3.2)
    for ax, (label, pts) in zip(axes[0], samples.items(), strict=True):
        p = pts.numpy()
        ax.scatter(p[:, 0], p[:, 1], s=1, alpha=0.5)
        ax.set_title(label, fontsize=9)
        ax.set_aspect("equal")
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
    fig.suptitle(title)
    return fig


def run(quick: bool = False, figures: Path | None = None, log=print) -> dict:
    """Every data set x every method; returns the JSON-able results (figures optional)."""
    cfg = QUICK if quick else FULL
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    results: dict = {"suite": "noise_levels", "quick": quick, "config": cfg,
                     "methods": list(METHODS), "datasets": {}}  # fmt: skip
    for name in DATASETS:
        data = load(name, cfg)
        entry = {"reference": reference(name, data, cfg), "runs": {}}
        samples = {"test data": data["norm"].decode(data["test"][:1000].double()).float()}
        for method in METHODS:
            r = run_one(name, method, data, cfg, quick)
            samples[method] = r.pop("samples")
            entry["runs"][method] = r
            show = {k: round(v, 4) for k, v in r.items() if isinstance(v, float)}
            log(f"[{time.perf_counter() - t0:7.1f}s] {name} {method}: {show}")
        results["datasets"][name] = entry
        if figures is not None:
            figures.mkdir(parents=True, exist_ok=True)
            if name in ("8gaussians", "moons"):
                fig = _scatter_figure(samples, f"{name}: probability-flow ODE samples")
                save_figure(fig, figures / f"noise_levels_samples_{name}.png")
            if data["target"] is not None:
                runs = {m: entry["runs"][m]["normalized"] for m in METHODS}
                fig = plot_normalized_loss(runs, title=f"{name}: training loss / its floor")
                save_figure(fig, figures / f"noise_levels_floor_{name}.png")
    results["seconds"] = time.perf_counter() - t0
    return results


def table(results: dict) -> str:
    """A markdown table of the headline numbers."""
    rows = ["| data | method | test NLL (nats) or bits/dim | sliced W2 | PCA-Frechet | "
            "loss/floor (geo. mean) | train s |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, entry in results["datasets"].items():
        ref = entry["reference"]
        if "exact_nll" in ref:
            rows.append(f"| {name} | exact / data | {ref['exact_nll']:.3f} | "
                        f"{ref['sliced_w2_data_vs_data']:.3f} | | 1 | |")  # fmt: skip
        else:
            fd = ref.get("frechet_pca16_data_vs_data")
            rows.append(f"| {name} | data vs data | | {ref['sliced_w2_data_vs_data']:.3f} | "
                        f"{'' if fd is None else f'{fd:.2f}'} | | |")  # fmt: skip
        for m, r in entry["runs"].items():
            nll = (f"{r['bpd']:.3f} ± {r['bpd_stderr']:.3f} bpd" if "bpd" in r
                   else f"{r['nll']:.3f} ± {r['nll_stderr']:.3f}")  # fmt: skip
            fd = f"{r['frechet_pca16']:.2f}" if "frechet_pca16" in r else ""
            geo = ""
            if "normalized" in r:
                v = [x for x in r["normalized"][-1]["normalized"] if x is not None and x > 0]
                geo = f"{math.exp(sum(map(math.log, v)) / len(v)):.3f}"
            rows.append(f"| {name} | {m} | {nll} | {r['sliced_w2']:.3f} | {fd} | {geo} | "
                        f"{r['train_seconds']:.0f} |")  # fmt: skip
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny budgets (smoke run, < 1 min)")
    ap.add_argument("--out", default=str(HERE / "results" / "noise_levels.json"))
    ap.add_argument("--figures", default=None, help="folder for the PNGs (default: none)")
    args = ap.parse_args()
    figs = Path(args.figures) if args.figures else None
    results = run(quick=args.quick, figures=figs, log=lambda s: print(s, flush=True))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, out)
    print(table(results))
    print(f"wrote {out} ({results['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Lesson 6: Langevin, x <- x + eta s(x) + sqrt(2 eta) z, and why NCSN anneals the noise level.

Target 0.2 N((-5, -5), I) + 0.8 N((5, 5), I) with its exact score (ExactScore). Langevin with the
clean score samples each mode well but never crosses between them: the mode weights stay those
of the start (1/2, 1/2). Annealed Langevin over sigma_1 > ... > sigma_L gets 0.2 / 0.8.
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from scorekit import VE, ExactScore, GaussianMixture  # noqa: E402
from scorekit.samplers import default_grid, sample  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/examples/langevin_annealed"))
    ap.add_argument("--quick", action="store_true", help="fewer samples and steps (for tests)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    g = torch.Generator().manual_seed(args.seed)
    target = GaussianMixture([0.2, 0.8], [[-5.0, -5.0], [5.0, 5.0]], stds=[1.0, 1.0])
    model = ExactScore(target, VE(sigma_min=0.01, sigma_max=20.0))  # prior N(0, 20^2 I)
    n, steps, levels, per_level = (1000, 300, 20, 30) if args.quick else (10_000, 1000, 20, 100)
    kw = dict(generator=g, return_trajectory=True, dtype=torch.float64)
    ula = sample(model, n, "langevin", steps=steps, step_size=0.1, **kw)  # at sigma_min
    ald = sample(model, n, "annealed_langevin", steps=levels, steps_per_level=per_level, **kw)
    true = target.sample(n, generator=g)
    frac = {k: float((v.sum(1) > 0).double().mean()) for k, v in
            (("true", true), ("langevin", ula.x), ("annealed", ald.x))}  # fmt: skip
    big = ula.x[ula.x.sum(1) > 0]  # the samples in the mode at (5, 5): N((5, 5), I) there
    mode_std = float(big.std(0).mean())
    crossed = int(((ula.trajectory[steps // 4].sum(1) > 0) != (ula.x.sum(1) > 0)).sum())
    print(f"n = {n}; fraction in the mode of weight 0.8 at (5, 5):")
    print(f"  exact samples {frac['true']:.3f}, Langevin ({steps} steps, eta = 0.1, clean score) "
          f"{frac['langevin']:.3f}, annealed Langevin ({levels} levels x {per_level}) "
          f"{frac['annealed']:.3f}")  # fmt: skip
    print(f"Langevin: std per coordinate within that mode {mode_std:.3f} (exact 1); "
          f"{crossed} of {n} chains changed mode in the last 3/4 of the steps")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.4), sharex=True, sharey=True)
    first = levels // 4  # annealed paths: state after each level, from sigma_first on
    sig = float(
        model.process.sigma(default_grid("annealed_langevin", model.process, levels)[first])
    )
    panels = (("exact samples", true, None), ("Langevin, clean score", ula.x, ula.trajectory[:100]),
              (rf"annealed Langevin (paths from $\sigma$ = {sig:.1f})", ald.x,
               ald.trajectory[first + 1 :]))  # fmt: skip
    for ax, (name, xs, traj), k in zip(axes, panels, frac, strict=True):
        ax.scatter(xs[:2000, 0], xs[:2000, 1], s=2, alpha=0.3, color="tab:blue")
        for j in range(8 if traj is not None else 0):  # a few paths, start marked by a circle
            style = "-" if len(traj) > 50 else ".-"  # every Langevin step / every level
            ax.plot(traj[:, j, 0], traj[:, j, 1], style, lw=0.8, color="tab:red", alpha=0.8)
            ax.plot(traj[0, j, 0], traj[0, j, 1], "o", ms=4, mfc="none", color="tab:red")
        ax.set_title(f"{name}\n{frac[k]:.2f} in the mode of weight 0.8", fontsize=10)
        ax.set(xlim=(-12, 12), ylim=(-12, 12))
        ax.set(xlabel="$x_1$", ylabel="$x_2$" if k == "true" else None, aspect="equal")
    fig.savefig(args.out / "langevin_annealed.png", dpi=90, bbox_inches="tight")
    print(f"RESULT n={n} frac_true={frac['true']:.4f} frac_langevin={frac['langevin']:.4f} "
          f"frac_annealed={frac['annealed']:.4f} mode_std={mode_std:.4f} crossed={crossed} "
          f"nfe_langevin={ula.nfe} nfe_annealed={ald.nfe}")  # fmt: skip


if __name__ == "__main__":
    main()

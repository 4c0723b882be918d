"""Choosing the noise levels: NCSNv2's Techniques 2 and 4, drawn and checked on CIFAR-10.

Technique 2 picks the ratio gamma of a geometric schedule where adjacent noise shells overlap
by one half; Technique 4 picks the Langevin step eps where the variance ratio after T steps is
closest to 1 (its minimum). For CIFAR-10 (D = 3072, sigma 50 -> 0.01, T = 5) NCSNv2 used
L = 232 and eps = 6.2e-6.
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from scorekit.noise.design import (  # noqa: E402
    geometric_ratio,
    langevin_ratio,
    langevin_step,
    num_levels,
    shell_overlap,
)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/examples/noise_levels"))
    ap.add_argument("--quick", action="store_true", help="coarser curves (for tests)")
    args = ap.parse_args(argv)
    k = 60 if args.quick else 400
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    residual = 0.0
    for dim in (64, 784, 3072, 12288):
        g = geometric_ratio(dim)
        residual = max(residual, abs(shell_overlap(g, dim) - 0.5))
        grid = torch.linspace(1.0, 1.6, k).tolist()
        ax1.plot(grid, [shell_overlap(x, dim) for x in grid], label=f"D = {dim}")
        ax1.plot([g], [0.5], "k.")
        print(f"D = {dim:5d}: gamma = {g:.5f}, L(50 -> 0.01) = {num_levels(50, 0.01, g)}")
    ax1.axhline(0.5, color="0.6", ls="--")
    ax1.set(title="Technique 2: overlap of adjacent noise shells", xlabel=r"ratio $\gamma$")
    ax1.set(ylabel="shell overlap")
    levels = num_levels(50.0, 0.01, geometric_ratio(3072))
    gamma = 5000 ** (1 / 231)  # the published schedule, L = 232
    eps_grid = torch.logspace(-7, -4.5, k).tolist()
    for T in (1, 3, 5, 10):
        eps = langevin_step(gamma, 0.01, T)
        ax2.plot(eps_grid, [langevin_ratio(e, gamma, 0.01, T) for e in eps_grid], label=f"T={T}")
        ax2.plot([eps], [langevin_ratio(eps, gamma, 0.01, T)], "k.")
        print(f"CIFAR-10, L = 232, T = {T:2d}: eps = {eps:.3e}")
    eps5 = langevin_step(gamma, 0.01, 5)
    ratio5 = langevin_ratio(eps5, gamma, 0.01, 5)
    lower = min(langevin_ratio(e, gamma, 0.01, 5) for e in eps_grid)  # the grid's best
    ax2.set(xscale="log", ylim=(1.0, 1.15), xlabel=r"step $\epsilon$", ylabel=r"$s_T^2/\sigma^2$")
    ax2.set(title=r"Technique 4: variance ratio, CIFAR-10 ($\sigma_L$ = 0.01)")
    ax1.legend()
    ax2.legend()
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "noise_levels.png", dpi=90, bbox_inches="tight")
    print(f"Technique 2 on CIFAR-10: L = {levels} (published 232); T = 5: eps = {eps5:.2e}")
    print(
        f"RESULT levels={levels} eps={eps5:.6e} ratio={ratio5:.8f} grid_min={lower:.8f} "
        f"residual={residual:.3e}"
    )


if __name__ == "__main__":
    main()

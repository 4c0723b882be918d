"""Lesson 1: the score of a Gaussian points to its mode, and the partition function vanishes.

An energy model p(x) = exp(-E(x)) / Z has score -grad E: adding any constant to E (changing Z)
leaves it unchanged, so an unnormalised energy and the normalised density share one score.
"""

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from scorekit import VE, Gaussian, ScoreModel  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/examples/score_of_gaussian"))
    ap.add_argument("--quick", action="store_true", help="small grid (for tests)")
    args = ap.parse_args(argv)
    mean = torch.tensor([1.0, -0.5], dtype=torch.float64)
    cov = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=torch.float64)
    target, prec = Gaussian(mean, cov=cov), torch.linalg.inv(cov)
    log_z = 0.5 * float(torch.logdet(2 * math.pi * cov))  # log of the partition function

    def energy(x, c):  # E(x) = 1/2 (x - m)^T P (x - m) + c: p = exp(-E) / Z for any c
        d = x - mean
        return 0.5 * ((d @ prec) * d).sum(1) + c

    n = 15 if args.quick else 41
    u = torch.linspace(-3.0, 5.0, n, dtype=torch.float64)
    grid = torch.cartesian_prod(u, u - 1.5)
    exact = target.score(grid)
    diffs = {}
    for c in (0.0, log_z, 100.0):  # unnormalised, normalised (E = -log p), shifted
        model = ScoreModel(lambda x, t, c=c: energy(x, c), VE(), prediction="energy")
        with torch.no_grad():  # no graph kept: we only read the score
            diffs[c] = float((model(grid, 0.0) - exact).abs().max())
    gap = target.log_prob(grid) + energy(grid, 0.0)  # = -log Z at every x
    to_mode = mean - grid
    cos = (exact * to_mode).sum(1) / (exact.norm(dim=1) * to_mode.norm(dim=1))
    lam = torch.linalg.eigvalsh(prec)
    kappa = float(lam[-1] / lam[0])
    bound = 2 * math.sqrt(kappa) / (1 + kappa)  # Kantorovich: cos >= 2 sqrt(k) / (1 + k)
    x = grid[:: max(1, len(grid) // 12)].clone()  # follow the score: x <- x + eta s(x)
    path = [x]
    for _ in range(100):
        x = x + 0.2 * target.score(x)
        path.append(x)
    mode_dist = float((x - mean).norm(dim=1).max())
    for c, d in diffs.items():
        print(f"energy offset c = {c:8.4f}: max |score - Gaussian score| = {d:.2e}")
    print(f"log p(x) + E(x) = {float(gap.mean()):.6f} (-log Z = {-log_z:.6f}), std {gap.std():.1e}")
    print(f"min cos(score, mode - x) = {float(cos.min()):.4f} >= bound {bound:.4f}")
    print(f"gradient ascent on log p: max distance to the mode after 100 steps {mode_dist:.2e}")
    args.out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    xx, yy = grid[:, 0].reshape(n, n), grid[:, 1].reshape(n, n)
    ax.contour(xx, yy, target.log_prob(grid).reshape(n, n), levels=12, cmap="Blues")
    q, k = grid.reshape(n, n, 2)[::3, ::3].reshape(-1, 2), exact.reshape(n, n, 2)[::3, ::3]
    ax.quiver(q[:, 0], q[:, 1], k[..., 0].flatten(), k[..., 1].flatten(), color="0.4")
    for k in range(path[0].shape[0]):
        ax.plot([p[k, 0] for p in path], [p[k, 1] for p in path], "r-", lw=1)
    ax.plot(*mean, "k*", ms=14, label="mode")
    ax.set(title="Score of a Gaussian and gradient-ascent paths", xlabel="$x_1$", ylabel="$x_2$")
    ax.legend()
    fig.savefig(args.out / "score_of_gaussian.png", dpi=90, bbox_inches="tight")
    print(
        f"RESULT max_diff={max(diffs.values()):.3e} logz_gap={float(gap.mean()) + log_z:.3e} "
        f"min_cos={float(cos.min()):.6f} cos_bound={bound:.6f} mode_dist={mode_dist:.3e}"
    )


if __name__ == "__main__":
    main()

"""Lesson 2: explicit score matching on N(0, 1) with the model s(x) = -a x.

J(a) = 1/2 E[(s(x) - (-x))^2] = (1 - a)^2 / 2 E[x^2] = (1 - a)^2 / 2: a parabola with its
minimum at a = 1, the true score. Closed form and Monte Carlo side by side.
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from scorekit import Gaussian  # noqa: E402
from scorekit.losses import esm  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/examples/esm_gaussian_1d"))
    ap.add_argument("--quick", action="store_true", help="fewer samples (for tests)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    n = 4_000 if args.quick else 400_000
    target = Gaussian(torch.zeros(1), std=1.0)  # p_data = N(0, 1), score -x
    x = target.sample(n, generator=torch.Generator().manual_seed(args.seed))
    true = target.score(x)
    a_grid = torch.linspace(0.0, 2.0, 81, dtype=torch.float64)  # includes 0, 0.5, 1, 1.5
    mc = torch.stack([esm(lambda x, a=a: -a * x, x, true, reduction="mean") for a in a_grid])
    closed = (1 - a_grid) ** 2 / 2
    m2 = float((x**2).mean())  # Monte Carlo E[x^2]; J_MC(a) = (1 - a)^2 / 2 * m2 exactly
    print(f"n = {n} samples, Monte Carlo E[x^2] = {m2:.5f} (exact 1)")
    print("   a   J closed form   J Monte Carlo")
    picks = {}
    for a in (0.0, 0.5, 1.0, 1.5):
        i = int(torch.argmin((a_grid - a).abs()))
        picks[a] = float(mc[i])
        print(f"{a:4.1f}   {float(closed[i]):13.6f}   {float(mc[i]):13.6f}")
    a_min = float(a_grid[torch.argmin(mc)])
    print(f"minimum of the Monte Carlo loss at a = {a_min} (closed form: a = 1)")
    args.out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(a_grid, closed, "k-", label="closed form $(1-a)^2/2$")
    ax.plot(a_grid[::4], mc[::4], "o", color="tab:red", ms=4, label=f"Monte Carlo, n = {n}")
    ax.axvline(1.0, color="0.6", ls="--", label="true score, a = 1")
    ax.set(title="Explicit score matching, $s(x) = -ax$ on N(0, 1)", xlabel="a", ylabel="J(a)")
    ax.legend()
    fig.savefig(args.out / "esm_gaussian_1d.png", dpi=90, bbox_inches="tight")
    print(
        f"RESULT n={n} a_min={a_min} m2={m2:.6f} "
        f"max_dev={float((mc - closed * m2).abs().max()):.3e} "
        + " ".join(f"J_{a}={v:.6f}" for a, v in picks.items())
    )


if __name__ == "__main__":
    main()

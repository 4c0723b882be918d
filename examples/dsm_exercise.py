"""Lesson 3: denoising score matching, loss = 1/2 (s(x + sigma eps) + eps / sigma)^2.

The seed's four cases at sigma = 1, computed by scorekit.losses.dsm, then the same loss over
N(0, 1) data with s(x~) = -a x~: its minimum is at a = 1/(1 + sigma^2), the score of the noised
density N(0, 1 + sigma^2), not at a = 1, and J_DSM(a) = J_ESM(a; p_sigma) + 1/4.
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from scorekit.losses import dsm, esm  # noqa: E402

CASES = {"a": (0.0, 1.0, -1.0), "b": (2.0, 0.5, -0.4), "c": (-1.0, -0.5, 0.5), "d": (3.0, 0.0, 0.0)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/examples/dsm_exercise"))
    ap.add_argument("--quick", action="store_true", help="fewer samples (for tests)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    sigma = 1.0
    x, eps, s = torch.tensor(list(CASES.values()), dtype=torch.float64).T[:, :, None]
    loss = dsm(lambda xt: s, x, sigma, eps=eps)  # per example, (4,)
    print("case   x~ = x + sigma eps   target -eps/sigma   s(x~)   loss 1/2 (s - target)^2")
    for k, xt, tg, sv, lv in zip(CASES, x + sigma * eps, 0.0 - eps / sigma, s, loss, strict=True):
        print(f" ({k})   {float(xt):18.2f}   {float(tg):17.2f}   {float(sv):5.2f}   {lv:.6f}")
    n = 20_000 if args.quick else 2_000_000  # Monte Carlo over x ~ N(0, 1), eps ~ N(0, 1)
    g = torch.Generator().manual_seed(args.seed)
    x0 = torch.randn(n, 1, generator=g, dtype=torch.float64)
    e = torch.randn(n, 1, generator=g, dtype=torch.float64)
    a_grid = torch.linspace(0.0, 1.25, 51, dtype=torch.float64)
    j_dsm = torch.stack([dsm(lambda y, a=a: -a * y, x0, sigma, eps=e).mean() for a in a_grid])
    xt = x0 + sigma * e  # p_sigma = N(0, 1 + sigma^2), score -x~ / (1 + sigma^2)
    j_esm = torch.stack(
        [esm(lambda y, a=a: -a * y, xt, -xt / (1 + sigma**2)).mean() for a in a_grid]
    )
    closed = 0.5 * ((1 + sigma**2) * a_grid**2 - 2 * a_grid + 1)  # 1/2 E(-a x~ + eps)^2
    a_hat = float((xt * e).mean() / (xt**2).mean() / sigma)  # exact minimiser of the MC loss
    gap = j_dsm - j_esm
    print(f"n = {n}: minimum of the Monte Carlo DSM at a = {a_hat:.4f} (1/(1+sigma^2) = 0.5)")
    print(f"J_DSM - J_ESM(p_sigma) over a: {float(gap.min()):.4f} .. {float(gap.max()):.4f} (1/4)")
    args.out.mkdir(parents=True, exist_ok=True)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    u = torch.linspace(-1.6, 1.6, 161, dtype=torch.float64)
    for k, tg, sv, lv in zip(CASES, 0.0 - eps[:, 0] / sigma, s[:, 0], loss, strict=True):
        (line,) = ax1.plot(u, 0.5 * (u - tg) ** 2, label=f"({k}) target {float(tg):+.1f}")
        ax1.plot(float(sv), float(lv), "o", color=line.get_color(), ms=7)
    ax1.set(title="The seed's four cases (dots: the model's output)", ylim=(-0.05, 1.5))
    ax1.set(xlabel=r"model output $s_\theta(\tilde x)$", ylabel="per-example DSM loss")
    ax1.legend(fontsize=8)
    ax2.plot(a_grid, closed, "k-", label=r"closed form $\frac{1}{2}((1+\sigma^2)a^2 - 2a + 1)$")
    ax2.plot(a_grid[::3], j_dsm[::3], "o", color="tab:red", ms=4, label="DSM, Monte Carlo")
    ax2.plot(a_grid, j_esm + 0.25, "--", color="tab:blue", label=r"ESM on $p_\sigma$ + 1/4")
    ax2.axvline(0.5, color="0.6", ls=":", label=r"noised score, $a = 1/(1+\sigma^2)$")
    ax2.axvline(1.0, color="0.8", ls="-.", label="clean score, a = 1")
    ax2.set(title=r"DSM on N(0, 1), $s(\tilde x) = -a\tilde x$, $\sigma = 1$", xlabel="a")
    ax2.set(ylabel="loss")
    ax2.legend(fontsize=8)
    fig.savefig(args.out / "dsm_exercise.png", dpi=90, bbox_inches="tight")
    print(
        f"RESULT n={n} "
        + " ".join(f"loss_{k}={float(v):.12g}" for k, v in zip(CASES, loss, strict=True))
        + f" a_hat={a_hat:.6f} gap_min={float(gap.min()):.6f} gap_max={float(gap.max()):.6f}"
        f" max_dev={float((j_dsm - closed).abs().max()):.6f}"
    )


if __name__ == "__main__":
    main()

"""Lesson 5: Tweedie's formula, E[x | x~] = x~ + sigma^2 grad log p_sigma(x~).

For a Gaussian mixture both sides are exact: the posterior mean (GaussianMixture.posterior_mean)
and the noised score (GaussianMixture.noised_score). A Monte-Carlo check by bins of x~ shows
that the formula is the conditional mean of the clean data.
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from scorekit import GaussianMixture  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/examples/tweedie"))
    ap.add_argument("--quick", action="store_true", help="fewer samples (for tests)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    g = torch.Generator().manual_seed(args.seed)
    target = GaussianMixture([0.4, 0.6], [[-2.0], [1.5]], stds=[0.4, 0.7])
    xt = torch.linspace(-6.0, 6.0, 241, dtype=torch.float64)[:, None]
    sigmas, diff, curves = (0.3, 1.0, 2.0), 0.0, {}
    for s in sigmas:
        post = target.posterior_mean(xt, 1.0, s)
        tweedie = xt + s**2 * target.noised_score(xt, 1.0, s)
        diff = max(diff, float((post - tweedie).abs().max()))
        curves[s] = tweedie
    print(f"max |E[x | x~] - (x~ + sigma^2 score)| over sigma in {sigmas}: {diff:.2e}")
    n, s = (20_000 if args.quick else 1_000_000), 1.0  # Monte Carlo at sigma = 1
    x0 = target.sample(n, generator=g)
    noisy = x0 + s * torch.randn(n, 1, generator=g, dtype=torch.float64)
    pred = noisy + s**2 * target.noised_score(noisy, 1.0, s)
    edges = torch.linspace(-5.0, 5.0, 41, dtype=torch.float64)
    idx = torch.bucketize(noisy[:, 0], edges)
    centers, emp, max_z = [], [], 0.0
    for b in range(1, len(edges)):
        m = idx == b
        if m.sum() < 100:
            continue
        resid = (x0[m] - pred[m])[:, 0]  # mean 0 in every bin: E[x0 | x~ in bin]
        z = float(resid.mean() / (resid.std() / m.sum().sqrt()))
        max_z = max(max_z, abs(z))
        centers.append(float(noisy[m].mean()))
        emp.append(float(x0[m].mean()))
    mse_noisy = float(((noisy - x0) ** 2).mean())
    mse_tweedie = float(((pred - x0) ** 2).mean())
    print(f"sigma = 1, n = {n}: {len(centers)} bins, max |z| of bin means = {max_z:.2f}")
    print(f"MSE of x~ = {mse_noisy:.4f} (sigma^2 = 1), of Tweedie's denoiser = {mse_tweedie:.4f}")
    args.out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for s, c in curves.items():
        ax.plot(xt[:, 0], c[:, 0], label=rf"$\tilde x + \sigma^2\nabla\log p_\sigma$, $\sigma$={s}")
    ax.plot(centers, emp, "k.", label=r"bin means of $x$, $\sigma$ = 1 (Monte Carlo)")
    ax.plot(xt[:, 0], xt[:, 0], color="0.7", ls=":", label=r"identity $\tilde x$")
    ax.set(title="Tweedie's formula on a two-component mixture", ylim=(-4, 4))
    ax.set(xlabel=r"noisy observation $\tilde x$", ylabel=r"$E[x \mid \tilde x]$")
    ax.legend(fontsize=8)
    fig.savefig(args.out / "tweedie.png", dpi=90, bbox_inches="tight")
    print(
        f"RESULT max_diff={diff:.3e} max_z={max_z:.3f} bins={len(centers)} "
        f"mse_noisy={mse_noisy:.6f} mse_tweedie={mse_tweedie:.6f}"
    )


if __name__ == "__main__":
    main()

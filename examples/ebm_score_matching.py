"""Lesson 9: an energy-based model p ~ exp(-E) trained by sliced score matching, sampled by MALA.

The score of exp(-E)/Z is -grad E: Z never appears. ScoreModel(net, process, prediction="energy")
turns a scalar network into a score model; scorekit.losses.ssm trains it on data alone; Langevin
(ULA) and Metropolis-adjusted Langevin (MALA, which needs E) sample it.
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from scorekit import VE, GaussianMixture, ScoreModel  # noqa: E402
from scorekit.losses import ssm_vr  # noqa: E402
from scorekit.samplers import sample  # noqa: E402


class Energy(torch.nn.Module):  # E(x), shape (B,): an MLP plus 0.05 |x|^2 (exp(-E) integrable)
    def __init__(self, width=64):
        super().__init__()
        act, lin = torch.nn.SiLU, torch.nn.Linear
        self.f = torch.nn.Sequential(lin(2, width), act(), lin(width, width), act(), lin(width, 1))

    def forward(self, x, t):  # the noise level t is ignored: one energy, for the clean data
        return self.f(x).squeeze(-1) + 0.05 * (x**2).sum(-1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/examples/ebm_score_matching"))
    ap.add_argument("--quick", action="store_true", help="fewer steps and samples (for tests)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)  # network initialisation
    g = torch.Generator().manual_seed(args.seed)
    data = GaussianMixture([0.5, 0.5], [[-1.5, 0.0], [1.5, 0.0]], stds=[0.5, 0.5])
    model = ScoreModel(Energy().double(), VE(sigma_min=0.01, sigma_max=3.0), prediction="energy")
    steps, n, mcmc = (300, 1000, 200) if args.quick else (3000, 5000, 1000)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):  # sliced score matching (variance-reduced) on data samples only
        opt.zero_grad()
        x = data.sample(256, generator=g)
        ssm_vr(lambda y: model(y, 0.0), x, generator=g).mean().backward()
        opt.step()
    grid = torch.cartesian_prod(u := torch.linspace(-4, 4, 161, dtype=torch.float64), u)
    with torch.no_grad():  # quadrature over the grid, weighted by p and by the model's exp(-E)
        lp, energy = data.log_prob(grid), model.energy(grid, 0.0)
        w, q = lp.exp() / lp.exp().sum(), torch.softmax(-energy, 0)
        e_err = float((w * ((r := energy + lp) - (w * r).sum()) ** 2).sum().sqrt())  # r ~ log Z
        spread = float((w * (lp - (w * lp).sum()) ** 2).sum().sqrt())  # sd of log p under p
        m2_model = float((q * grid[:, 1] ** 2).sum())  # E[x_2^2] under exp(-E)/Z
    kw = dict(steps=mcmc, step_size=0.05, generator=g, dtype=torch.float64)
    runs = {k: sample(model, (n, 2), k, **kw) for k in ("langevin", "mala")}
    z = {f"z_{k}": float((r.x[:, 1] ** 2 - m2_model).mean() / (r.x[:, 1] ** 2).std() * n**0.5)
         for k, r in runs.items()}  # fmt: skip
    acc = runs["mala"].info["acceptance"]
    print(f"{steps} SSM-VR steps; rms of E + log p - const under p: {e_err:.3f} "
          f"(sd of log p: {spread:.3f})\nE[x_2^2] under exp(-E)/Z by quadrature {m2_model:.4f}; "
          f"{n} chains of {mcmc} steps, step 0.05: Langevin z = {z['z_langevin']:+.2f}, "
          f"MALA z = {z['z_mala']:+.2f} (acceptance {acc:.2f})")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.3))
    ax1.contourf(u, u, (-energy - (w * r).sum()).reshape(161, 161).T, levels=20)
    ax2.scatter(*runs["mala"].x[:2000].T, s=2, alpha=0.4)
    for ax, color, title in ((ax1, "w", r"Learned $-E_\theta$ (fill), true $\log p$ (white)"),
                             (ax2, "k", f"MALA, {mcmc} steps (acceptance {acc:.2f})")):  # fmt: skip
        ax.contour(u, u, lp.reshape(161, 161).T, 8, colors=color, linestyles="-", linewidths=0.7)
        ax.set(title=title, xlabel="$x_1$", ylabel="$x_2$", aspect="equal")
    fig.savefig(args.out / "ebm_score_matching.png", dpi=90, bbox_inches="tight")
    res = dict(e_err=e_err, spread=spread, m2_model=m2_model, n=n, acceptance=acc, **z)
    print("RESULT " + " ".join(f"{k}={v:.6g}" for k, v in res.items()))


if __name__ == "__main__":
    main()

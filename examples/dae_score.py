"""Lesson 5': a denoising autoencoder learns the score, (r(x~) - x~) / sigma^2 = grad log p_sigma.

A tiny MLP r is trained with the MSE 1/2 ||r(x + sigma eps) - x||^2 on a 1-D mixture; a second
one, s, with DSM. Both approach the exact noised score (GaussianMixture.noised_score), not the
clean score, and the two losses are one: 1/2 ||r - x||^2 = sigma^4 * DSM of (r - x~) / sigma^2.
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from scorekit import GaussianMixture, convert  # noqa: E402
from scorekit.losses import dsm  # noqa: E402


def train(net, loss_fn, data, steps, g):
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(steps):
        x = data.sample(256, generator=g)
        eps = torch.randn(x.shape, generator=g, dtype=x.dtype)
        opt.zero_grad()
        loss_fn(net, x, eps).mean().backward()
        opt.step()
    return net


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/examples/dae_score"))
    ap.add_argument("--quick", action="store_true", help="fewer training steps (for tests)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)  # network initialisation
    lin, act = torch.nn.Linear, torch.nn.SiLU
    mlp = lambda: torch.nn.Sequential(lin(1, 64), act(), lin(64, 64), act(), lin(64, 1)).double()  # noqa: E731
    g = torch.Generator().manual_seed(args.seed)
    p, sigma = GaussianMixture([0.4, 0.6], [[-2.0], [1.5]], stds=[0.4, 0.7]), 0.5
    steps = 400 if args.quick else 3000
    mse = lambda r, x, e: 0.5 * ((r(x + sigma * e) - x) ** 2).sum(1)  # noqa: E731
    dae = train(mlp(), mse, p, steps, g)
    dsm_net = train(mlp(), lambda s, x, e: dsm(s, x, sigma, eps=e), p, steps, g)
    torch.set_grad_enabled(False)  # evaluation only from here
    x, eps = p.sample(4000, generator=g), torch.randn(4000, 1, generator=g, dtype=torch.float64)
    xt = x + sigma * eps  # x~ ~ p_sigma
    dae_score = lambda y: convert(dae(y), "x0", "score", y, 1.0, sigma)  # noqa: E731
    gap = (mse(dae, x, eps) - sigma**4 * dsm(dae_score, x, sigma, eps=eps)).abs().max()
    exact, clean = p.noised_score(xt, 1.0, sigma), p.score(xt)
    norm = (exact**2).mean()
    err = {k: float(((f(xt) - exact) ** 2).mean() / norm) for k, f in
           (("dae", dae_score), ("dsm", dsm_net))}  # fmt: skip
    err_clean = float(((clean - exact) ** 2).mean() / norm)
    u = torch.linspace(-4.5, 4.5, 181, dtype=torch.float64)[:, None]
    print(f"sigma = {sigma}, {steps} Adam steps of batch 256 each; max |1/2 ||r - x||^2 - "
          f"sigma^4 DSM((r - x~)/sigma^2)| = {float(gap):.2e}\nrelative squared error against "
          f"the noised score on p_sigma: DAE {err['dae']:.4f}, DSM {err['dsm']:.4f}; "
          f"the clean score is off by {err_clean:.4f}")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    exact_u = p.noised_score(u, 1.0, sigma)
    ax.plot(u, exact_u, "k-", lw=3, alpha=0.4, label=r"exact $\nabla\log p_\sigma$")
    ax.plot(u, dae_score(u), "-", color="tab:red", label=r"DAE, $(r(\tilde x)-\tilde x)/\sigma^2$")
    ax.plot(u, dsm_net(u), "--", color="tab:blue", label=r"DSM score network $s(\tilde x)$")
    ax.plot(u, p.score(u), ":", color="0.5", label=r"clean score $\nabla\log p$")
    ax.fill_between(u[:, 0], -8, -8 + 12 * p.noised_log_prob(u, 1.0, sigma).exp(), color="0.85")
    ax.set(title=rf"Denoisers learn the noised score ($\sigma$ = {sigma})", ylim=(-8, 8))
    ax.set(xlabel=r"noisy input $\tilde x$", ylabel=r"score; grey: density $p_\sigma$ (scaled)")
    ax.legend(fontsize=8)
    fig.savefig(args.out / "dae_score.png", dpi=90, bbox_inches="tight")
    print(f"RESULT steps={steps} gap={float(gap):.3e} err_dae={err['dae']:.6f} "
          f"err_dsm={err['dsm']:.6f} err_clean={err_clean:.6f}")  # fmt: skip


if __name__ == "__main__":
    main()

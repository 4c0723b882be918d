"""Lesson 8: a DDPM noise predictor is a score model, s = -eps / sqrt(1 - alpha_bar).

DDPM noises x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (scorekit: the VP process on
the grid of ddpm_betas). The best eps-predictor is E[eps | x_t]; wrapped as
ScoreModel(net, VP(), prediction="eps") it returns -eps/sqrt(1 - alpha_bar), the exact score.
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from scorekit import VP, ExactScore, GaussianMixture, ScoreModel, convert, ddpm_betas  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/examples/ddpm_eps_is_score"))
    ap.add_argument("--quick", action="store_true", help="fewer steps and samples (for tests)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    g = torch.Generator().manual_seed(args.seed)
    steps, n = (100, 500) if args.quick else (1000, 5000)
    process = VP()  # beta(t) from 0.1 to 20: DDPM's linear schedule in the continuum
    betas = ddpm_betas(process, steps)
    alpha_bar = torch.cumprod(1 - betas, 0)  # alpha_bar_i = prod_{j <= i} (1 - beta_j)
    t_grid = torch.linspace(0.0, process.t_max, steps + 1, dtype=torch.float64)[1:]
    bar_gap = float((alpha_bar - process.alpha(t_grid) ** 2).abs().max())
    target = GaussianMixture([0.5, 0.5], [[-1.0, 0.5], [1.0, -0.5]], stds=0.3)

    def eps_net(x, t):  # the optimal noise predictor E[eps | x_t] = (x - alpha E[x0|x_t]) / sigma
        a, s = process.marginal(t)
        return (x - a[:, None] * target.posterior_mean(x, a, s)) / s[:, None]

    model, exact = ScoreModel(eps_net, process, prediction="eps"), ExactScore(target, process)
    gap_formula = gap_exact = gap_loss = 0.0
    picks = [steps // 10, steps // 4, steps // 2, steps - 1]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for i in picks:
        t = t_grid[i]
        x0 = target.sample(n, generator=g)
        eps = torch.randn(n, 2, generator=g, dtype=torch.float64)
        xt = alpha_bar[i].sqrt() * x0 + (1 - alpha_bar[i]).sqrt() * eps  # DDPM's forward step
        eps_hat = eps_net(xt, t.expand(n))
        score_ddpm = -eps_hat / (1 - alpha_bar[i]).sqrt()  # s = -eps / sqrt(1 - alpha_bar)
        conv = convert(eps_hat, "eps", "score", xt, alpha_bar[i].sqrt(), (1 - alpha_bar[i]).sqrt())
        gap_formula = max(gap_formula, float((model(xt, t) - score_ddpm).abs().max()))
        gap_formula = max(gap_formula, float((conv - score_ddpm).abs().max()))
        gap_exact = max(gap_exact, float((model(xt, t) - exact(xt, t)).abs().max()))
        # the eps-MSE is sigma^2 times the DSM loss with target -eps/sigma
        mse = ((eps_hat - eps) ** 2).sum(1).mean()
        dsm = ((score_ddpm + eps / (1 - alpha_bar[i]).sqrt()) ** 2).sum(1).mean()
        gap_loss = max(gap_loss, float((mse / ((1 - alpha_bar[i]) * dsm) - 1).abs()))
        print(f"step {i + 1:4d}: alpha_bar = {float(alpha_bar[i]):.4f}, eps-MSE = {mse:.4f}")
        ax2.plot(score_ddpm[:200, 0], exact(xt[:200], t)[:, 0], ".", ms=3, label=f"step {i + 1}")
    print(f"max |alpha_bar - alpha(t)^2| = {bar_gap:.2e}")
    print(f"max |model score - (-eps/sqrt(1 - alpha_bar))| = {gap_formula:.2e}")
    print(f"max |model score - exact score| = {gap_exact:.2e}")
    args.out.mkdir(parents=True, exist_ok=True)
    ax1.plot(range(1, steps + 1), alpha_bar.sqrt(), label=r"signal $\sqrt{\bar\alpha_t}$")
    ax1.plot(range(1, steps + 1), (1 - alpha_bar).sqrt(), label=r"noise $\sqrt{1-\bar\alpha_t}$")
    ax1.set(title=f"DDPM schedule, {steps} steps", xlabel="step t", ylabel="scale")
    ax2.set(title="Noise prediction as a score (first coordinate)")
    ax2.set(xlabel=r"$-\hat\varepsilon/\sqrt{1-\bar\alpha_t}$", ylabel="exact score")
    [ax.legend() for ax in (ax1, ax2)]
    fig.savefig(args.out / "ddpm_eps_is_score.png", dpi=90, bbox_inches="tight")
    print(
        f"RESULT steps={steps} bar_gap={bar_gap:.3e} gap_formula={gap_formula:.3e} "
        f"gap_exact={gap_exact:.3e} gap_loss={gap_loss:.3e}"
    )


if __name__ == "__main__":
    main()

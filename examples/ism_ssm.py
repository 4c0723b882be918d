"""Lesson 4: implicit score matching, J_ESM(s) = J_ISM(s) + 1/2 E||grad log p||^2 (Hyvarinen).

Expectations over a 2-D Gaussian mixture by quadrature: the constant is the same for every s.
SSM estimates ISM without bias from one vector-Jacobian product instead of d (cost plot).
"""

import argparse
import timeit
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from scorekit import GaussianMixture  # noqa: E402
from scorekit.losses import esm, ism, ssm, ssm_vr  # noqa: E402


def step_ms(loss_fn, d):  # best of three training steps of an MLP score net, 128 points, in ms
    net = torch.nn.Sequential(torch.nn.Linear(d, 128), torch.nn.Tanh(), torch.nn.Linear(128, d))
    x = torch.randn(128, d)
    return 1e3 * min(timeit.repeat(lambda: loss_fn(net, x).mean().backward(), number=1, repeat=3))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/examples/ism_ssm"))
    ap.add_argument("--quick", action="store_true", help="fewer samples and dimensions (tests)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    p = GaussianMixture([0.3, 0.5, 0.2], [[-2, 0], [1.5, 1], [0.5, -2]], stds=[0.6, 0.8, 0.5])
    other = GaussianMixture([0.5, 0.5], [[-1, 1], [1, -1]], stds=[1.0, 1.2])
    fns = {"exact": p.score, "half": lambda x: 0.5 * p.score(x), "linear": lambda x: -x,
           "other_mixture": other.score, "tanh": lambda x: 0.3 - 2 * torch.tanh(x)}  # fmt: skip
    grid = torch.cartesian_prod(*[torch.linspace(-9.0, 9.0, 241, dtype=torch.float64)] * 2)
    w = p.log_prob(grid).exp() * (18 / 240) ** 2  # Riemann sums for E_p: spectrally accurate
    const = float((w * 0.5 * (p.score(grid) ** 2).sum(1)).sum())  # 1/2 E||grad log p||^2
    print(f"quadrature: total mass {float(w.sum()):.12f}, 1/2 E||grad log p||^2 = {const:.8f}")
    with torch.no_grad():  # values only: no graph for the parameters
        j_esm = {k: float((w * esm(f, grid, p.score(grid))).sum()) for k, f in fns.items()}
        j_ism = {k: float((w * ism(f, grid, trace="exact")).sum()) for k, f in fns.items()}
    for k, e, i in zip(fns, j_esm.values(), j_ism.values(), strict=True):
        print(f"{k:13s} J_ESM {e:9.6f}  J_ISM (exact trace) {i:9.6f}  difference {e - i:.10f}")
    dev = max(abs(j_esm[k] - j_ism[k] - const) for k in fns)
    n, g = (4_000 if args.quick else 200_000), torch.Generator().manual_seed(args.seed)
    x, f, z = p.sample(n, generator=g), fns["other_mixture"], {}
    ref = ism(f, x).detach()
    for k, est in (("ssm", ssm(f, x, generator=g)), ("ssm_vr", ssm_vr(f, x, generator=g))):
        z[k] = float((diff := est.detach() - ref).mean() / (diff.std() / n**0.5))  # unbiased?
        print(
            f"{k}: mean {est.mean():.4f}, ISM {ref.mean():.4f}, z {z[k]:+.2f}, sd {est.std():.3f}"
        )
    dims = [2, 8, 32] if args.quick else [2, 8, 32, 128, 512, 1024]
    t_ism = [step_ms(lambda net, x: ism(net, x, trace="exact"), d) for d in dims]
    t_ssm = [step_ms(lambda net, x: ssm(net, x, generator=g), d) for d in dims]
    for d, te, ts in zip(dims, t_ism, t_ssm, strict=True):
        print(f"d = {d:5d}: training step, ISM (exact trace) {te:8.2f} ms, SSM {ts:6.2f} ms")
    args.out.mkdir(parents=True, exist_ok=True)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(list(fns), list(j_esm.values()), "o", ms=8, label=r"$J_{ESM}$ (needs $\nabla\log p$)")
    ax1.plot(list(fns), [v + const for v in j_ism.values()], "x", ms=10, mew=2,
             label=r"$J_{ISM} + \frac{1}{2}E\|\nabla\log p\|^2$ (data only)")  # fmt: skip
    ax1.set(title="ESM = ISM + constant, for every s", xlabel="s", ylabel="loss (quadrature)")
    ax2.loglog(dims, t_ism, "o-", label=r"ISM, exact $\mathrm{tr}\,\nabla s$")
    ax2.loglog(dims, t_ssm, "s-", label="SSM, one projection")
    ax2.set(title="Cost of a training step (MLP, batch 128)", xlabel="d", ylabel="time (ms)")
    ax2.set_xticks(dims, dims), ax2.tick_params("x", which="minor", labelbottom=False)
    ax1.legend(fontsize=8), ax2.legend(fontsize=8)
    fig.savefig(args.out / "ism_ssm.png", dpi=90, bbox_inches="tight")
    print(f"RESULT mass={float(w.sum()):.12f} const={const:.10f} max_dev={dev:.3e} n={n} "
          f"esm_exact={j_esm['exact']:.3e} z_ssm={z['ssm']:.3f} z_ssm_vr={z['ssm_vr']:.3f} "
          f"ratio_small={t_ism[0] / t_ssm[0]:.3f} "
          f"ratio_large={t_ism[-1] / t_ssm[-1]:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()

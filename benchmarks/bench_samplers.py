"""Sampler accuracy vs NFE on exact targets, and against diffusers' schedulers.

For each target (a well-separated 2-D mixture, a 16-D mixture, an ill-conditioned 64-D
Gaussian) and NFE budget (10, 20, 50, 100), every scorekit sampler is driven by the exact
score and scored by

- ``rmse``: RMS distance to the exact PF-ODE solution from the same start (deterministic
  samplers; reference: dopri5 at rtol = atol = 1e-8 on the same target);
- ``sw_excess``: sliced W2 to an exact sample minus the exact-vs-exact floor;
- ``logp_gap``: |mean exact log-density of the samples - E log p| (E from 1e5 exact points).

If ``diffusers`` imports (an optional benchmark extra, never a runtime dependency), its
DDIM, DPMSolverMultistep, UniPC and EulerDiscrete schedulers (default and tuned settings)
are driven by the same exact noise prediction on their own 1000-step linear-beta schedule,
and each is compared with the exact PF-ODE solution from its own start. The PF-ODE is the
same in the scale-free coordinates ``y = x/alpha``, ``sigma/alpha`` for every schedule, so
all methods solve the same problem from (almost) the same start sigma ~ 157 down to 0.
``ratios`` reports best-scorekit / best-diffusers error at each NFE budget, per target and
error measure (each side's best over its menu of configurations), and the RMSE ratio of a
few single scorekit configurations (``FIXED``) to the best diffusers scheduler.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from scorekit import EDM, VP, ExactScore, Gaussian, GaussianMixture
from scorekit.core.schedules import (
    geometric_sigmas,
    karras_sigmas,
    time_grid,
)
from scorekit.metrics import sliced_wasserstein
from scorekit.samplers import Dopri5, make_sampler

NFES = (10, 20, 50, 100)
DTYPE = torch.float64
BETAS = (1e-4, 0.02, 1000)  # DDPM's linear schedule, diffusers' default
ODE_SAMPLERS = ("euler", "heun", "dpmpp_2m", "dpmpp_3m", "ddim", "edm")
SDE_SAMPLERS = ("euler_maruyama", "pc", "ddpm", "edm_churn", "annealed_langevin")


# -- targets ---------------------------------------------------------------------------
def targets() -> dict:
    g = torch.Generator().manual_seed(0)
    angles = torch.arange(8, dtype=DTYPE) * 2 * math.pi / 8
    ring = GaussianMixture(
        torch.ones(8), 4.0 * torch.stack([angles.cos(), angles.sin()], 1), stds=0.25
    )
    K, d = 4, 16
    A = torch.randn(K, d, d, generator=g, dtype=DTYPE)
    covs = 0.3 * (A @ A.transpose(-1, -2) / d) + 0.05 * torch.eye(d, dtype=DTYPE)
    means = 2.5 * torch.randn(K, d, generator=g, dtype=DTYPE)
    mix16 = GaussianMixture(torch.tensor([0.1, 0.2, 0.3, 0.4]), means, covs=covs)
    Q, _ = torch.linalg.qr(torch.randn(64, 64, generator=g, dtype=DTYPE))
    lam = torch.logspace(-3, 1, 64, dtype=DTYPE)  # condition number 1e4
    cov = Q @ torch.diag(lam) @ Q.T
    gauss64 = Gaussian(0.5 * torch.randn(64, generator=g, dtype=DTYPE), cov=0.5 * (cov + cov.T))
    return {"mixture_2d_ring8": ring, "mixture_16d_k4": mix16, "gaussian_64d_cond1e4": gauss64}


# -- the linear-beta schedule in scale-free coordinates --------------------------------
def alphas_cumprod() -> np.ndarray:
    lo, hi, n = BETAS
    return np.cumprod(1 - np.linspace(lo, hi, n, dtype=np.float64))


def sigma_of_t(t) -> np.ndarray:
    """diffusers' interpolated sigma(t) = sqrt((1 - abar)/abar) at (possibly fractional) t."""
    ac = alphas_cumprod()
    full = np.sqrt((1 - ac) / ac)
    return np.interp(np.asarray(t, dtype=np.float64), np.arange(len(ac)), full)


SIGMA_MAX = float(sigma_of_t(999))  # ~157.4
SIGMA_MIN = float(sigma_of_t(0))  # ~0.0100


class Metrics:
    def __init__(self, target, n: int):
        self.target = target
        self.n = n
        big = target.sample(100_000, torch.Generator().manual_seed(11))
        self.mean_logp = float(target.log_prob(big).mean())
        self.exact = target.sample(n, torch.Generator().manual_seed(12))
        floors = [
            float(self.sw(target.sample(n, torch.Generator().manual_seed(100 + i))))
            for i in range(4)
        ]
        self.floor = float(np.mean(floors))
        self.floor_sd = float(np.std(floors))
        self._refs: dict = {}

    def sw(self, x):
        return sliced_wasserstein(x, self.exact, 256, torch.Generator().manual_seed(13))

    def reference(self, key, y0: torch.Tensor, sigma0: float) -> torch.Tensor:
        """Exact PF-ODE solution from y0 at sigma0 down to sigma = 0 (dopri5, 1e-8)."""
        if key not in self._refs:
            model = ExactScore(self.target, EDM(1e-3, sigma0))
            grid = torch.tensor([sigma0, 0.0], dtype=DTYPE)
            self._refs[key] = Dopri5(rtol=1e-8, atol=1e-8)(model, y0, grid).x
        return self._refs[key]

    def row(self, x, nfe, ref=None) -> dict:
        lp = self.target.log_prob(x)
        out = {
            "nfe": int(nfe),
            "sw_excess": float(self.sw(x)) - self.floor,
            "logp_gap": abs(float(lp.mean()) - self.mean_logp),
        }
        if ref is not None:
            out["rmse"] = float((x - ref).pow(2).sum(1).mean().sqrt())
        return out


# -- scorekit --------------------------------------------------------------------------
def _zero(sig: torch.Tensor) -> torch.Tensor:
    return torch.cat([sig, torch.zeros(1, dtype=DTYPE)])


def grid_family(kind: str, steps: int, sigma_end: float) -> torch.Tensor:
    """``steps`` intervals on the EDM process (t = sigma): ``steps - 1`` from SIGMA_MAX down
    to ``sigma_end`` spaced by ``kind``, then a last step to sigma = 0 (a denoising step)."""
    if steps == 1:
        return torch.tensor([SIGMA_MAX, 0.0], dtype=DTYPE)
    if kind == "karras":
        return _zero(karras_sigmas(steps - 1, sigma_end, SIGMA_MAX))
    if kind == "logsnr":
        return _zero(geometric_sigmas(steps - 1, sigma_end, SIGMA_MAX))
    # "vp_uniform": uniform in t on VP(0.1, 20) (diffusers' "linspace"), mapped to sigma/alpha
    vp = VP()
    t = time_grid(vp, steps - 1, "uniform", t_min=float(vp.t_of_ratio(sigma_end)))
    sig = vp.ratio(t)
    sig[0] = SIGMA_MAX
    return _zero(sig)


# Karras (rho = 7) down to SIGMA_MIN for every ODE solver; the multistep DPM-Solver++ also
# on uniform log-SNR and uniform-t (VP) grids that stop at a larger sigma before the final
# denoising step (diffusers' "linspace" spacing stops at sigma ~ 0.37).
GRIDS = [("karras", SIGMA_MIN)]
MULTISTEP_GRIDS = GRIDS + [(k, e) for k in ("logsnr", "vp_uniform") for e in (SIGMA_MIN, 0.05, 0.2)]
#: single configurations whose ratio to the best diffusers scheduler is also reported
FIXED = ("dpmpp_2m[logsnr,0.05]", "dpmpp_3m[logsnr,0.05]", "dpmpp_2m[karras,0.01]")


def scorekit_runs(name: str, budget: int):
    """(label, sampler, grid) triples spending at most ``budget`` evaluations."""
    two = name in ("heun", "edm", "edm_churn")
    steps = (budget + 1) // 2 if two else budget // 2 if name == "pc" else budget
    if name == "annealed_langevin":
        per = max(1, budget // 10)
        levels = budget // per - 1
        grid = geometric_sigmas(levels - 1, SIGMA_MIN, SIGMA_MAX)
        return [(name, make_sampler(name, steps_per_level=per), grid)]
    if name == "edm_churn":
        smp = make_sampler("edm", s_churn=10.0, s_min=0.05, s_max=50.0)
        return [(name, smp, grid_family("karras", steps, SIGMA_MIN))]
    if name in ("ddim", "edm"):  # on the EDM process these equal euler / heun (tested)
        return [(name, make_sampler(name), grid_family("karras", steps, SIGMA_MIN))]
    if name in SDE_SAMPLERS:
        opts = {"snr": 0.16} if name == "pc" else {}
        return [(name, make_sampler(name, **opts), grid_family("karras", steps, SIGMA_MIN))]
    grids = MULTISTEP_GRIDS if name.startswith("dpmpp") else GRIDS
    return [
        (f"{name}[{k},{e:.2g}]", make_sampler(name), grid_family(k, steps, e)) for k, e in grids
    ]


def run_scorekit(metrics: Metrics, z: torch.Tensor, nfes) -> list[dict]:
    model = ExactScore(metrics.target, EDM(SIGMA_MIN, SIGMA_MAX))
    y0 = SIGMA_MAX * z
    ref = metrics.reference("scorekit", y0, SIGMA_MAX)
    rows = []
    for name in ODE_SAMPLERS + SDE_SAMPLERS:
        for budget in nfes:
            for label, smp, grid in scorekit_runs(name, budget):
                res = smp(model, y0, grid, torch.Generator().manual_seed(1))
                r = metrics.row(res.x, res.nfe, ref if not smp.stochastic else None)
                rows.append({"library": "scorekit", "sampler": label, "budget": budget, **r})
    for tol in (1e-2, 1e-3, 1e-4):
        res = Dopri5(rtol=tol, atol=tol)(model, y0, torch.tensor([SIGMA_MAX, 0.0], dtype=DTYPE))
        r = metrics.row(res.x, res.nfe, ref)
        rows.append({"library": "scorekit", "sampler": f"dopri5(tol={tol:g})", "budget": None, **r})
    return rows


# -- diffusers -------------------------------------------------------------------------
def diffusers_configs():
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerDiscreteScheduler,
        UniPCMultistepScheduler,
    )

    base = {"beta_start": BETAS[0], "beta_end": BETAS[1], "num_train_timesteps": BETAS[2]}
    base["beta_schedule"] = "linear"
    return {
        # clip_sample=False: DDIM's default clips x0 to [-1, 1], meant for images only
        "DDIM": lambda: DDIMScheduler(**base, clip_sample=False),
        "DDIM(trailing)": lambda: DDIMScheduler(
            **base, clip_sample=False, timestep_spacing="trailing"
        ),
        "DPMSolverMultistep": lambda: DPMSolverMultistepScheduler(**base),
        "DPMSolverMultistep(karras)": lambda: DPMSolverMultistepScheduler(
            **base, use_karras_sigmas=True
        ),
        "UniPCMultistep": lambda: UniPCMultistepScheduler(**base),
        "UniPCMultistep(karras)": lambda: UniPCMultistepScheduler(**base, use_karras_sigmas=True),
        "EulerDiscrete": lambda: EulerDiscreteScheduler(**base),
        "EulerDiscrete(karras)": lambda: EulerDiscreteScheduler(**base, use_karras_sigmas=True),
    }


def exact_eps(target, x_vp: torch.Tensor, t) -> torch.Tensor:
    """The exact noise prediction of the target at diffusers' (x_t, t)."""
    s = float(sigma_of_t(float(t)))
    abar = 1.0 / (1.0 + s * s)
    a, sig = math.sqrt(abar), math.sqrt(1 - abar)
    return -sig * target.noised_score(x_vp, a, sig)


def run_diffusers_one(factory, target, z, steps):
    sch = factory()
    sch.set_timesteps(steps)
    x = z * float(sch.init_noise_sigma)
    t0 = float(sch.timesteps[0])
    # start in scale-free coordinates: VE-style schedulers (init_noise_sigma > 1) hold y
    ve_style = float(sch.init_noise_sigma) > 1.0
    s0 = float(sch.sigmas[0]) if ve_style else float(sigma_of_t(t0))
    y0 = x if ve_style else x * math.sqrt(1 + s0 * s0)
    nfe = 0
    for t in sch.timesteps:
        xin = sch.scale_model_input(x, t)
        eps = exact_eps(target, xin.to(DTYPE), t).to(x.dtype)
        nfe += 1
        x = sch.step(eps, t, x).prev_sample
    return x.to(DTYPE), nfe, (round(s0, 6), ve_style), y0.to(DTYPE), s0


def run_diffusers(metrics: Metrics, z: torch.Tensor, nfes) -> list[dict]:
    rows = []
    for name, factory in diffusers_configs().items():
        for budget in nfes:
            x, nfe, key, y0, s0 = run_diffusers_one(factory, metrics.target, z, budget)
            ref = metrics.reference(("diffusers", key), y0, s0)
            r = metrics.row(x, nfe, ref)
            rows.append({"library": "diffusers", "sampler": name, "budget": budget, **r})
    return rows


# -- driver ----------------------------------------------------------------------------
def best(rows, library, budget, measure):
    vals = [
        r[measure]
        for r in rows
        if r["library"] == library and r["budget"] == budget and measure in r and r["nfe"] <= budget
    ]
    return min(vals, key=abs) if vals else None


def run(quick: bool = False) -> dict:
    torch.set_num_threads(1)
    n = 500 if quick else 2000
    nfes = (10, 20) if quick else NFES
    try:
        import diffusers  # noqa: F401

        have_diffusers = True
    except Exception:  # an optional extra: skip that part when it is missing or broken
        have_diffusers = False
    out = {"suite": "samplers", "n": n, "nfes": list(nfes), "diffusers": have_diffusers}
    out["targets"], out["ratios"] = {}, {}
    for tname, target in targets().items():
        t0 = time.perf_counter()
        metrics = Metrics(target, n)
        z = torch.randn(n, target.dim, generator=torch.Generator().manual_seed(3), dtype=DTYPE)
        rows = run_scorekit(metrics, z, nfes)
        if have_diffusers:
            rows += run_diffusers(metrics, z, nfes)
        out["targets"][tname] = {
            "sw_floor": metrics.floor,
            "sw_floor_sd": metrics.floor_sd,
            "rows": rows,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        if have_diffusers:
            ratios = {}
            for budget in nfes:
                for measure in ("rmse", "sw_excess", "logp_gap"):
                    a, b = (
                        best(rows, "scorekit", budget, measure),
                        best(rows, "diffusers", budget, measure),
                    )
                    ratios[f"{measure}@{budget}"] = {
                        "scorekit_best": a,
                        "diffusers_best": b,
                        "ratio": (a / b) if a is not None and b else None,
                    }
            for label in FIXED:
                for budget in nfes:
                    a = [r["rmse"] for r in rows if r["sampler"] == label and r["budget"] == budget]
                    b = best(rows, "diffusers", budget, "rmse")
                    ratios[f"rmse@{budget} {label}"] = {
                        "scorekit_best": a[0],
                        "diffusers_best": b,
                        "ratio": a[0] / b if b else None,
                    }
            out["ratios"][tname] = ratios
    return out


def table(result: dict) -> str:
    """A plain-text table of the result (also printed by ``python bench_samplers.py``)."""
    lines = []
    for tname, block in result["targets"].items():
        lines.append(
            f"\n== {tname}  (SW floor {block['sw_floor']:.4f} ± {block['sw_floor_sd']:.4f})"
        )
        lines.append(
            f"{'library':10} {'sampler':28} {'NFE':>4} {'rmse':>9} {'sw_exc':>9} {'logp_gap':>9}"
        )
        for r in block["rows"]:
            rmse = f"{r['rmse']:.2e}" if "rmse" in r else "-"
            lines.append(
                f"{r['library']:10} {r['sampler']:28} {r['nfe']:4d} {rmse:>9} "
                f"{r['sw_excess']:9.4f} {r['logp_gap']:9.4f}"
            )
        for key, v in result["ratios"].get(tname, {}).items():
            if v["ratio"] is not None:
                lines.append(
                    f"  ratio {key:16} scorekit {v['scorekit_best']:.3e} / diffusers "
                    f"{v['diffusers_best']:.3e} = {v['ratio']:.3f}"
                )
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(table(run(quick="--quick" in sys.argv)))

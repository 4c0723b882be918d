"""Sampler accuracy vs NFE on exact targets, and against diffusers' schedulers.

Targets (issue 18): ``2d-8gauss`` (8 Gaussians on a circle of radius 4, std 0.2),
``d16-mix`` (5 components in 16-D, means 3 N(0, I), diagonal stds in [0.3, 1]) and
``d64-gauss`` (one zero-mean Gaussian in 64-D, variances 0.01 ... 4 on a geometric grid).
For each NFE budget (10, 20, 50, 100) every scorekit sampler is driven by the exact score
and scored by

- ``rmse``: RMS distance to the exact PF-ODE solution from the same start (deterministic
  samplers; reference: dopri5 at rtol = atol = 1e-8 on the same target);
- ``sw_excess``: sliced W2 to an exact sample minus the mean exact-vs-exact floor (the
  band that counts as exact is floor mean + 2 sd, reported per target);
- ``logp_gap``: |mean exact log-density of the samples - E log p| (E from 1e5 exact points);
- ``ms_per_step``: wall time of the whole call divided by the steps, and ``overhead_ms``:
  the same less the time of the exact model's evaluations (measured alone), i.e. what the
  solver itself costs per step.

If ``diffusers`` imports (an optional benchmark extra, never a runtime dependency), its
DDIM, DPMSolverMultistep, UniPC and EulerDiscrete schedulers (default and tuned settings,
orders 2 and 3) are driven by the same exact noise prediction on their own 1000-step
linear-beta schedule, and each is compared with the exact PF-ODE solution from its own
start. The PF-ODE is the same in the scale-free coordinates ``y = x/alpha``, ``sigma/alpha``
for every schedule, so all methods solve the same problem from (almost) the same start
sigma ~ 157 down to 0. ``ratios`` reports best-scorekit / best-diffusers error at each NFE
budget, per target and error measure (each side's best over its menu of configurations).
``+tp`` rows (``solver+tpS[grid,end]``) are :class:`~scorekit.samplers.GaussianTeleport`:
the target's exact mean and covariance carry the start from sigma ~ 157 to S in closed form
(no evaluation) and the solver spends the whole budget below S. They use what the other
rows do not (the data's first two moments), so the summary gives them their own columns
(``rmse_teleport``); ``python benchmarks/bench_samplers.py --add-teleport`` adds them to an
existing ``samplers.json`` without rerunning the rest (with the ``+ft`` rows). On
``d64-gauss`` (a Gaussian) the jump is exact. ``+ft`` rows (``solver+ftS[grid,end]``) take
the same jump for the Gaussian fitted to the model itself at S
(:meth:`~scorekit.samplers.GaussianTeleport.from_model`: 1024 evaluations at S, once, like
the GITS grid's calibration), no data; they count with the other scorekit rows.
``default_grids`` runs every deterministic sampler through ``sample`` on its own default
grid on the VP process at NFE 10-100 (finite, RMSE to the exact ODE solution).
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
from scorekit.samplers import Dopri5, GaussianTeleport, RungeKutta, make_sampler

NFES = (10, 20, 50, 100)
DTYPE = torch.float64
BETAS = (1e-4, 0.02, 1000)  # DDPM's linear schedule, diffusers' default
#: label -> (registry name, options, multistep: also run on the log-SNR and VP-uniform grids)
ODE_SAMPLERS = {
    "euler": ("euler", {}, False),
    "heun": ("heun", {}, False),
    "ddim": ("ddim", {}, False),
    "edm": ("edm", {}, False),
    "ipndm": ("ipndm", {}, False),
    "deis": ("deis", {}, True),
    "dpmpp_2m": ("dpmpp_2m", {}, True),
    "dpmpp_3m": ("dpmpp_3m", {}, True),
    "dpmpp_3m_lof": ("dpmpp_3m", {"lower_order_final": True}, True),
    "unipc": ("unipc", {}, True),
    "unipc_bh1": ("unipc", {"variant": "bh1"}, True),
    "unipc_3": ("unipc_3", {}, True),
}
SDE_SAMPLERS = {
    "euler_maruyama": ("euler_maruyama", {}, False),
    "pc": ("pc", {"snr": 0.16}, False),
    "ddpm": ("ddpm", {}, False),
    "edm_churn": ("edm", {"s_churn": 10.0, "s_min": 0.05, "s_max": 50.0}, False),
    "annealed_langevin": ("annealed_langevin", {}, False),
    "dpmpp_2m_sde": ("dpmpp_2m_sde", {}, True),
    "dpmpp_3m_sde": ("dpmpp_3m_sde", {}, True),
    # Restart (Xu et al. 2023): Xu et al.'s interval, and one an octave higher, around Heun
    # (2 evaluations a step) or UniPC (1); the main grid gets what the restarts leave
    "restart_heun": ("restart", {"intervals": [(0.06, 0.3, 2, 2)]}, False),
    "restart_unipc": ("restart", {"intervals": [(0.06, 0.3, 2, 2)], "solver": "unipc"}, False),
    "restart_unipc_hi": ("restart", {"intervals": [(0.3, 1.5, 2, 2)], "solver": "unipc"}, False),
}


# -- targets ---------------------------------------------------------------------------
def targets() -> dict:
    g = torch.Generator().manual_seed(0)
    angles = torch.arange(8, dtype=DTYPE) * 2 * math.pi / 8
    ring = GaussianMixture(
        torch.ones(8), 4.0 * torch.stack([angles.cos(), angles.sin()], 1), stds=0.2
    )
    K, d = 5, 16
    means = 3.0 * torch.randn(K, d, generator=g, dtype=DTYPE)
    stds = 0.3 + 0.7 * torch.rand(K, d, generator=g, dtype=DTYPE)
    mix16 = GaussianMixture(torch.ones(K), means, covs=torch.diag_embed(stds**2))
    var = torch.logspace(math.log10(0.01), math.log10(4.0), 64, dtype=DTYPE)
    gauss64 = Gaussian(torch.zeros(64, dtype=DTYPE), cov=torch.diag(var))
    return {"2d-8gauss": ring, "d16-mix": mix16, "d64-gauss": gauss64}


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
            model = ExactScore(self.target, EDM(1e-6, sigma0))
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


# Karras (rho = 7) down to SIGMA_MIN for every ODE solver; the multistep solvers also on
# uniform log-SNR and uniform-t (VP) grids that stop at a larger sigma before the final
# denoising step (diffusers' "linspace" spacing stops at sigma ~ 0.37).
GRIDS = [("karras", SIGMA_MIN)]
MULTISTEP_GRIDS = [
    (k, e) for k in ("karras", "logsnr", "vp_uniform") for e in (SIGMA_MIN, 0.05, 0.2, 0.5)
]


def scorekit_runs(label: str, spec, budget: int):
    """(label, sampler, grid) triples spending at most ``budget`` evaluations."""
    name, opts, multistep = spec
    two = label in ("heun", "edm", "edm_churn")
    steps = (budget + 1) // 2 if two else budget // 2 if name == "pc" else budget
    if name == "annealed_langevin":
        per = max(1, budget // 10)
        levels = budget // per - 1
        grid = geometric_sigmas(levels - 1, SIGMA_MIN, SIGMA_MAX)
        return [(label, make_sampler(name, steps_per_level=per), grid)]
    if name == "restart":
        smp = make_sampler(name, **opts)
        per = len(smp.solver.b) if isinstance(smp.solver, RungeKutta) else 1  # evals a step
        left = budget - sum(k * n * per for _, _, k, n in smp.intervals)
        steps = (left + 1) // 2 if per == 2 else left
        grids = [("karras", SIGMA_MIN), ("logsnr", 0.05)] if steps >= 3 else []
        return [(f"{label}[{k},{e:.2g}]", smp, grid_family(k, steps, e)) for k, e in grids]
    grids = MULTISTEP_GRIDS if multistep else GRIDS
    return [
        (f"{label}[{k},{e:.2g}]", make_sampler(name, **opts), grid_family(k, steps, e))
        for k, e in grids
    ]


def model_ms(model, y0) -> float:
    """Milliseconds of one evaluation of the exact denoiser on the whole batch."""
    s = torch.tensor(1.0, dtype=DTYPE)
    model.x0(y0, s)
    t0 = time.perf_counter()
    for _ in range(10):
        model.x0(y0, s)
    return (time.perf_counter() - t0) * 100


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - t0) * 1000


#: optimized_grid's calibration: independent prior draws (seed 99), its default candidates
CALIBRATION = {"n": 256, "seed": 99, "candidates": 100, "refine": 8}


def fitted_grids(model, dim: int):
    """``steps -> optimized_grid`` (GITS) on CALIBRATION's starts, from SIGMA_MAX over the
    Karras candidates down to SIGMA_MIN and a last step to sigma = 0, computed once per
    step count; its cost is candidates * (refine + 1) evaluations of the 256 starts."""
    from scorekit.samplers import optimized_grid

    cache: dict = {}

    def get(steps: int) -> torch.Tensor:
        if steps not in cache:
            gen = torch.Generator().manual_seed(CALIBRATION["seed"])
            cache[steps] = optimized_grid(
                model, steps, (CALIBRATION["n"], dim), dtype=DTYPE, final_zero=True,
                candidates=CALIBRATION["candidates"], refine=CALIBRATION["refine"],
                generator=gen,
            )  # fmt: skip
        return cache[steps]

    return get


def run_scorekit(metrics: Metrics, z: torch.Tensor, nfes) -> list[dict]:
    model = ExactScore(metrics.target, EDM(SIGMA_MIN, SIGMA_MAX))
    y0 = SIGMA_MAX * z
    ref = metrics.reference("scorekit", y0, SIGMA_MAX)
    one = model_ms(model, y0)
    fitted = fitted_grids(model, z.shape[1])
    rows = []
    for label, spec in {**ODE_SAMPLERS, **SDE_SAMPLERS}.items():
        for budget in nfes:
            runs = scorekit_runs(label, spec, budget)
            if label in ODE_SAMPLERS and label != "edm":  # edm is heun on the same grid
                name, opts, _ = spec
                steps = (budget + 1) // 2 if label == "heun" else budget
                runs.append((f"{label}[gits]", make_sampler(name, **opts), fitted(steps)))
            for run_label, smp, grid in runs:
                res, ms = timed(lambda: smp(model, y0, grid, torch.Generator().manual_seed(1)))  # noqa: B023
                r = metrics.row(res.x, res.nfe, ref if not smp.stochastic else None)
                steps = smp.num_steps(smp.check(model, grid))
                r["ms_per_step"] = ms / steps
                r["overhead_ms"] = (ms - res.nfe * one) / steps
                r["stochastic"] = smp.stochastic
                rows.append({"library": "scorekit", "sampler": run_label, "budget": budget, **r})
    for tol in (1e-2, 1e-3, 1e-4):
        res = Dopri5(rtol=tol, atol=tol)(model, y0, torch.tensor([SIGMA_MAX, 0.0], dtype=DTYPE))
        r = metrics.row(res.x, res.nfe, ref)
        rows.append({"library": "scorekit", "sampler": f"dopri5(tol={tol:g})", "budget": None, **r})
    return rows


#: Gaussian teleportation: landing levels S and the solvers that go on from there
TELEPORT_SIGMAS = (30.0, 50.0, 80.0)
TELEPORT_SOLVERS = ("ipndm", "unipc_3", "dpmpp_3m")
#: where the jump is an approximation (on d64-gauss, a Gaussian, it is exact) and the
#: budgets where skipping steps can matter
TELEPORT_TARGETS = ("2d-8gauss", "d16-mix")
TELEPORT_NFES = (10, 20, 50)


def teleport_grid(kind: str, steps: int, top: float, end: float) -> torch.Tensor:
    """SIGMA_MAX, then ``steps`` solver intervals: ``steps - 1`` from ``top`` down to
    ``end`` spaced by ``kind`` and a last one to sigma = 0."""
    spaced = karras_sigmas if kind == "karras" else geometric_sigmas
    levels = spaced(steps - 1, end, top) if steps > 1 else torch.tensor([top], dtype=DTYPE)
    return torch.cat([torch.tensor([SIGMA_MAX], dtype=DTYPE), _zero(levels)])


#: the fitted teleport's one-time fit: evaluations of the model at the landing level, seed
TELEPORT_FIT = {"n": 1024, "seed": 99}


def run_teleport(metrics: Metrics, z: torch.Tensor, nfes, fitted: bool = False) -> list[dict]:
    """``solver+tpS[grid,end]`` rows: GaussianTeleport with the target's exact moments; with
    ``fitted``, ``solver+ftS[grid,end]`` rows: the Gaussian fitted to the model at the
    landing level S (``GaussianTeleport.from_model``, TELEPORT_FIT), no data."""
    target = metrics.target
    model = ExactScore(target, EDM(SIGMA_MIN, SIGMA_MAX))
    y0 = SIGMA_MAX * z
    ref = metrics.reference("scorekit", y0, SIGMA_MAX)
    one = model_ms(model, y0)
    mean, cov = target.mean(), target.covariance()
    rows = []
    for top in TELEPORT_SIGMAS:
        for name in TELEPORT_SOLVERS:
            if fitted:
                gen = torch.Generator().manual_seed(TELEPORT_FIT["seed"])
                tp = GaussianTeleport.from_model(model, (target.dim,), top, name,
                                                 n=TELEPORT_FIT["n"], generator=gen,
                                                 dtype=DTYPE)  # fmt: skip
            else:
                tp = GaussianTeleport(mean, cov, top, name)
            for kind, end in [(k, e) for k in ("karras", "logsnr") for e in (0.01, 0.05, 0.2, 0.5)]:
                for budget in [b for b in nfes if b in TELEPORT_NFES]:
                    grid = teleport_grid(kind, budget, top, end)
                    res, ms = timed(lambda: tp(model, y0, grid))  # noqa: B023
                    r = metrics.row(res.x, res.nfe, ref)
                    steps = tp.num_steps(tp.check(model, grid))
                    r["ms_per_step"] = ms / steps
                    r["overhead_ms"] = (ms - res.nfe * one) / steps
                    r["stochastic"] = False
                    label = f"{name}+{'ft' if fitted else 'tp'}{top:g}[{kind},{end:g}]"
                    rows.append({"library": "scorekit", "sampler": label, "budget": budget, **r})
    return rows


def ode_summary(summary: dict, rows: list[dict]) -> None:
    """The best scorekit ODE solver per budget (the data's moments, ``+tp`` rows, not
    counted) and its ratio to diffusers' best, into a target's summary."""
    own = [r for r in rows if "+tp" not in r["sampler"]]
    for budget, v in summary["budgets"].items():
        sk, sk_name = best(own, "scorekit", int(budget), "rmse", stochastic=False)
        df = v["rmse_diffusers"]
        v["rmse_scorekit"], v["rmse_scorekit_sampler"] = sk, sk_name
        v["rmse_ratio"] = sk / df if sk is not None and df else None


def teleport_summary(summary: dict, rows: list[dict]) -> None:
    """Add the best ``+tp`` row per budget, and its ratio to diffusers' best, to a
    target's summary."""
    for budget, v in summary["budgets"].items():
        tp, tp_name = best([r for r in rows if "+tp" in r["sampler"]], "scorekit", int(budget),
                           "rmse", stochastic=False)  # fmt: skip
        df = v["rmse_diffusers"]
        v["rmse_teleport"], v["rmse_teleport_sampler"] = tp, tp_name
        v["rmse_teleport_ratio"] = tp / df if tp is not None and df else None


def add_teleport(path: str) -> dict:
    """Run the ``+ft`` and ``+tp`` rows and merge them into the record at ``path`` (rows of
    the same label replaced; the best scorekit solver per budget recomputed with the ``+ft``
    rows); the other rows and their summary stay as measured."""
    import json
    from datetime import date
    from pathlib import Path

    torch.set_num_threads(1)
    record = json.loads(Path(path).read_text())
    n, nfes = record["n"], record["nfes"]
    t0 = time.perf_counter()
    for tname, target in targets().items():
        if tname not in TELEPORT_TARGETS:
            continue
        metrics = Metrics(target, n)
        z = torch.randn(n, target.dim, generator=torch.Generator().manual_seed(3), dtype=DTYPE)
        block = record["targets"][tname]
        rows = [r for r in block["rows"] if "+tp" not in r["sampler"] and "+ft" not in
                r["sampler"]]  # fmt: skip
        rows += run_teleport(metrics, z, nfes, fitted=True) + run_teleport(metrics, z, nfes)
        block["rows"] = rows
        ode_summary(record["summary"][tname], rows)
        teleport_summary(record["summary"][tname], rows)
    record["teleport"] = {"date": date.today().isoformat(),
                          "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    return record


def run_default_grids(target, z: torch.Tensor, nfes) -> list[dict]:
    """Every deterministic sampler through ``sample`` on its own default grid on VP (and
    DDIM on the discrete VP schedule), from the same prior draw: finite? RMSE to the
    exact PF-ODE solution over the same span?"""
    from scorekit import VP, DiscreteVP
    from scorekit.samplers import SAMPLERS, default_grid, sample

    rows = []
    for process in (VP(), DiscreteVP(torch.tensor(alphas_cumprod()))):
        model = ExactScore(target, process)
        x_T = z * process.prior_std()
        names = [n for n in SAMPLERS if not make_sampler(n).stochastic and n != "dopri5"]
        if isinstance(process, DiscreteVP):
            names = ["ddim", "unipc", "dpmpp_2m"]
        refs: dict = {}
        for name in names:
            for budget in nfes:
                steps = (budget + 1) // 2 if name in ("heun", "edm") else budget
                grid = default_grid(name, process, steps)
                key = (float(grid[0]), float(grid[-1]))
                if key not in refs:
                    span = torch.tensor(key, dtype=DTYPE)
                    refs[key] = Dopri5(rtol=1e-8, atol=1e-8)(model, x_T, span).x
                res, ms = timed(lambda: sample(model, x_T=x_T, sampler=name, grid=grid))  # noqa: B023
                finite = bool(torch.isfinite(res.x).all())
                rmse = float((res.x - refs[key]).pow(2).sum(1).mean().sqrt()) if finite else None
                rows.append(
                    {
                        "process": type(process).__name__,
                        "sampler": name,
                        "budget": budget,
                        "nfe": res.nfe,
                        "finite": finite,
                        "rmse": rmse,
                        "ms_per_step": ms / (grid.numel() - 1),
                    }
                )
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
        "UniPCMultistep(order 3)": lambda: UniPCMultistepScheduler(**base, solver_order=3),
        "UniPCMultistep(bh1)": lambda: UniPCMultistepScheduler(**base, solver_type="bh1"),
        "DPMSolverMultistep(order 3)": lambda: DPMSolverMultistepScheduler(**base, solver_order=3),
        "DPMSolverMultistep(karras, order 3)": lambda: DPMSolverMultistepScheduler(
            **base, solver_order=3, use_karras_sigmas=True
        ),
        "DPMSolverMultistep(trailing)": lambda: DPMSolverMultistepScheduler(
            **base, timestep_spacing="trailing"
        ),
        "UniPCMultistep(trailing)": lambda: UniPCMultistepScheduler(
            **base, timestep_spacing="trailing"
        ),
        "UniPCMultistep(order 3, trailing)": lambda: UniPCMultistepScheduler(
            **base, solver_order=3, timestep_spacing="trailing"
        ),
        "UniPCMultistep(order 3, karras)": lambda: UniPCMultistepScheduler(
            **base, solver_order=3, use_karras_sigmas=True
        ),
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
    nfe, model_s, t_start = 0, 0.0, time.perf_counter()
    for t in sch.timesteps:
        xin = sch.scale_model_input(x, t)
        t1 = time.perf_counter()
        eps = exact_eps(target, xin.to(DTYPE), t).to(x.dtype)
        model_s += time.perf_counter() - t1
        nfe += 1
        x = sch.step(eps, t, x).prev_sample
    total = time.perf_counter() - t_start
    timing = {"ms_per_step": 1000 * total / nfe, "overhead_ms": 1000 * (total - model_s) / nfe}
    return x.to(DTYPE), nfe, (round(s0, 6), ve_style), y0.to(DTYPE), s0, timing


def run_diffusers(metrics: Metrics, z: torch.Tensor, nfes) -> list[dict]:
    rows = []
    for name, factory in diffusers_configs().items():
        for budget in nfes:
            x, nfe, key, y0, s0, timing = run_diffusers_one(factory, metrics.target, z, budget)
            ref = metrics.reference(("diffusers", key), y0, s0)
            r = {**metrics.row(x, nfe, ref), **timing, "stochastic": False}
            rows.append({"library": "diffusers", "sampler": name, "budget": budget, **r})
    return rows


# -- driver ----------------------------------------------------------------------------
def best(rows, library, budget, measure, stochastic=None):
    """(value, sampler) of the smallest ``|measure|`` among ``library``'s rows within
    ``budget`` evaluations (``stochastic``: only those rows when given)."""
    cands = [
        (r[measure], r["sampler"])
        for r in rows
        if r["library"] == library
        and r["budget"] == budget
        and r.get(measure) is not None
        and r["nfe"] <= budget
        and (stochastic is None or r.get("stochastic") == stochastic)
    ]
    return min(cands, key=lambda c: abs(c[0])) if cands else (None, None)


def run(quick: bool = False) -> dict:
    torch.set_num_threads(1)
    n = 500 if quick else 10_000
    nfes = (10, 20) if quick else NFES
    try:
        import diffusers  # noqa: F401

        have_diffusers = True
    except Exception:  # an optional extra: skip that part when it is missing or broken
        have_diffusers = False
    out = {"suite": "samplers", "n": n, "nfes": list(nfes), "diffusers": have_diffusers}
    out["calibration"] = {
        **CALIBRATION,
        "nfe": CALIBRATION["candidates"] * (CALIBRATION["refine"] + 1),
    }
    out["targets"], out["summary"] = {}, {}
    for tname, target in targets().items():
        t0 = time.perf_counter()
        metrics = Metrics(target, n)
        z = torch.randn(n, target.dim, generator=torch.Generator().manual_seed(3), dtype=DTYPE)
        rows = run_scorekit(metrics, z, nfes)
        if have_diffusers:
            rows += run_diffusers(metrics, z, nfes)
        band = metrics.floor + 2 * metrics.floor_sd
        summary = {"sw_floor": metrics.floor, "sw_band": band, "budgets": {}}
        if tname in TELEPORT_TARGETS:  # fitted to the model, counted as GITS is
            rows += run_teleport(metrics, z, nfes, fitted=True)
        fixed = [r for r in rows if not r["sampler"].endswith("[gits]") and "+ft" not in
                 r["sampler"]]  # fmt: skip
        for budget in nfes:
            fx, fx_name = best(fixed, "scorekit", budget, "rmse", stochastic=False)
            df, df_name = best(rows, "diffusers", budget, "rmse")
            sw, sw_name = best(rows, "scorekit", budget, "sw_excess", stochastic=True)
            sw_df, sw_df_name = best(rows, "diffusers", budget, "sw_excess")
            summary["budgets"][str(budget)] = {
                "rmse_diffusers": df,
                "rmse_diffusers_scheduler": df_name,
                "rmse_scorekit_fixed_grid": fx,
                "rmse_scorekit_fixed_grid_sampler": fx_name,
                "sw_stochastic": None if sw is None else sw + metrics.floor,
                "sw_stochastic_sampler": sw_name,
                "sw_in_band": None if sw is None else sw + metrics.floor <= band,
                "sw_diffusers": None if sw_df is None else sw_df + metrics.floor,
                "sw_diffusers_scheduler": sw_df_name,
            }
        ode_summary(summary, rows)
        if tname in TELEPORT_TARGETS:
            rows += run_teleport(metrics, z, nfes)
            teleport_summary(summary, rows)
        out["summary"][tname] = summary
        out["targets"][tname] = {
            "sw_floor": metrics.floor,
            "sw_floor_sd": metrics.floor_sd,
            "rows": rows,
            "default_grids": run_default_grids(target, z[: min(n, 2000)], nfes),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    return out


def _f(v, fmt=".3g"):
    return "-" if v is None else format(v, fmt)


def markdown(result: dict) -> str:
    """The tables of ``samplers.json`` (regenerated from the record, never edited)."""
    lines = [
        "# Samplers on exact targets (generated from samplers.json)",
        "",
        f"N = {result['n']} samples, float64, exact denoiser; diffusers "
        f"{'ran' if result['diffusers'] else 'not installed'}. RMSE: to the exact PF-ODE "
        "solution from the same start. SW: sliced W2 to an exact sample; the exact-vs-exact "
        "band is floor mean + 2 sd. `[gits]`: a grid fitted to the model by "
        "`optimized_grid` (GITS) on 256 independent starts, once per step count, at a cost "
        f"of {result.get('calibration', {}).get('nfe', '-')} evaluations of those starts; "
        "`solver+ftS`: the start carried to sigma = S by the exact flow of the Gaussian "
        "fitted to the model's denoiser at S (`GaussianTeleport.from_model`, "
        f"{TELEPORT_FIT['n']} evaluations at S, once; no data), then the solver below S; "
        "'fixed grids' is the best scorekit solver on the hand-made grids alone (neither "
        "fitted grids nor fitted teleports). "
        "'teleport': the best `GaussianTeleport` row (`solver+tpS`: the start carried to "
        "sigma = S by the exact flow of the Gaussian with the target's mean and covariance, "
        "no evaluation; the solver's budget below S), which uses the data's first two "
        "moments; not counted in the other columns; run at NFE 10-50 on 2d-8gauss and "
        "d16-mix (on d64-gauss, a Gaussian, the jump is exact)"
        + (f" (added {result['teleport']['date']})" if "teleport" in result else "")
        + ".",
    ]
    for tname, summ in result["summary"].items():
        lines += ["", f"## {tname}", ""]
        lines += [
            "| NFE | best scorekit ODE | RMSE | best diffusers | RMSE | ratio | fixed grids | "
            "ratio | with the data's moments (teleport) | RMSE | ratio | best scorekit SDE | "
            "SW (band " + _f(summ["sw_band"], ".4f") + ") | in band |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for b, v in summ["budgets"].items():
            fx, df = v.get("rmse_scorekit_fixed_grid"), v["rmse_diffusers"]
            fx_ratio = fx / df if fx is not None and df else None
            lines.append(
                f"| {b} | {v['rmse_scorekit_sampler']} | {_f(v['rmse_scorekit'])} | "
                f"{v['rmse_diffusers_scheduler'] or '-'} | {_f(df)} | "
                f"{_f(v['rmse_ratio'], '.2f')} | {_f(fx)} | {_f(fx_ratio, '.2f')} | "
                f"{v.get('rmse_teleport_sampler') or '-'} | {_f(v.get('rmse_teleport'))} | "
                f"{_f(v.get('rmse_teleport_ratio'), '.2f')} | {v['sw_stochastic_sampler']} | "
                f"{_f(v['sw_stochastic'], '.4f')} | {v['sw_in_band']} |"
            )
        block = result["targets"][tname]
        nfes = [str(b) for b in result["nfes"]]
        per: dict = {}
        for r in block["rows"]:
            if r["budget"] is None:
                continue
            key = (r["library"], r["sampler"])
            m = "sw_excess" if r.get("stochastic") else "rmse"
            per.setdefault(key, {})[str(r["budget"])] = (r.get(m), r.get("overhead_ms"))
        lines += [
            "",
            "<details><summary>every configuration (RMSE for ODE solvers, SW excess over the "
            "floor for stochastic ones; solver overhead ms/step at the largest NFE)</summary>",
            "",
            "| library | sampler | " + " | ".join(f"NFE {b}" for b in nfes) + " | overhead ms |",
            "|---|---|" + "---|" * (len(nfes) + 1),
        ]
        for (lib, name), vals in per.items():
            cells = [_f(vals.get(b, (None, None))[0]) for b in nfes]
            over = vals.get(nfes[-1], (None, None))[1]
            lines.append(f"| {lib} | {name} | " + " | ".join(cells) + f" | {_f(over, '.2f')} |")
        lines += ["", "</details>", ""]
        lines += [
            "Default grids through `sample` (RMSE to the exact ODE solution over the same span; "
            "`inf` = non-finite sample):",
            "",
            "| process | sampler | " + " | ".join(f"NFE {b}" for b in nfes) + " | ms/step |",
            "|---|---|" + "---|" * (len(nfes) + 1),
        ]
        dg: dict = {}
        for r in block["default_grids"]:
            dg.setdefault((r["process"], r["sampler"]), {})[str(r["budget"])] = r
        for (proc, name), vals in dg.items():
            cells = [
                ("inf" if not vals[b]["finite"] else _f(vals[b]["rmse"])) if b in vals else "-"
                for b in nfes
            ]
            ms = vals.get(nfes[-1], {}).get("ms_per_step")
            lines.append(f"| {proc} | {name} | " + " | ".join(cells) + f" | {_f(ms, '.2f')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    if "--add-teleport" in sys.argv:  # merge the +tp rows into the committed record
        import json
        from pathlib import Path

        path = Path(__file__).parent / "results" / "samplers.json"
        rec = add_teleport(str(path))
        path.write_text(json.dumps(rec, indent=2))
        path.with_suffix(".md").write_text(markdown(rec))
    else:
        print(markdown(run(quick="--quick" in sys.argv)))

r"""Samplers for score models: Langevin (ULA, MALA, annealed), reverse SDE
(Euler–Maruyama, reverse diffusion, predictor–corrector, DPM-Solver++ 2M/3M SDE),
probability-flow ODE (Euler, Heun, dopri5, DPM-Solver++ 2M/3M, UniPC, DEIS, iPNDM),
DDPM/DDIM, EDM's stochastic sampler, Restart sampling and Gaussian teleportation of the
first steps.

One calling convention: ``sampler(model, x, grid, generator=None,
return_trajectory=False, cond=None, hook=None) -> SampleResult(x, nfe, trajectory, info)``,
with ``model`` a :class:`~scorekit.core.parametrize.ScoreModel`, ``x`` the state at
``grid[0]`` and ``grid`` decreasing process times (:mod:`scorekit.core.schedules`).
:func:`sample` is the one loop around it: the sampler by name (:data:`SAMPLERS`) or
instance, its default grid, the process prior (or ``x_T``), conditioning and chunking.
:func:`optimized_grid` fits a grid's steps to a model's own trajectories (GITS).

Example:
    >>> import torch, scorekit as sk
    >>> from scorekit.samplers import sample
    >>> target = sk.GaussianMixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], stds=0.3)
    >>> model = sk.ExactScore(target, sk.VP())
    >>> r = sample(model, 500, "dpmpp_2m", steps=20, generator=torch.Generator().manual_seed(0))
    >>> r.x.shape, r.nfe
    (torch.Size([500, 2]), 20)
"""

from .api import SAMPLERS, default_grid, make_sampler, sample
from .base import CountingModel, Grid, Sampler, SampleResult
from .ddpm import DDIM, DDPM
from .edm import EDMSampler
from .grids import optimized_grid
from .langevin import AnnealedLangevin, Langevin
from .multistep import DEIS, IPNDM, DPMSolverPPSDE, UniPC
from .ode import Dopri5, DPMSolverPP, Euler, Heun, RungeKutta
from .restart import Restart
from .sde import EulerMaruyama, LangevinCorrector, PredictorCorrector, ReverseDiffusion
from .teleport import GaussianTeleport

__all__ = [
    "DDIM",
    "DDPM",
    "DEIS",
    "IPNDM",
    "SAMPLERS",
    "AnnealedLangevin",
    "CountingModel",
    "DPMSolverPP",
    "DPMSolverPPSDE",
    "Dopri5",
    "EDMSampler",
    "Euler",
    "EulerMaruyama",
    "GaussianTeleport",
    "Grid",
    "Heun",
    "Langevin",
    "LangevinCorrector",
    "PredictorCorrector",
    "ReverseDiffusion",
    "Restart",
    "RungeKutta",
    "SampleResult",
    "Sampler",
    "UniPC",
    "default_grid",
    "make_sampler",
    "optimized_grid",
    "sample",
]

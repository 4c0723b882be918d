"""scorekit: score matching and score-based generative modelling in PyTorch."""

from . import losses, metrics, samplers, schedules, weighting
from .advise import Advice, advise, save_advice
from .distributions import ExactScore, Gaussian, GaussianMixture
from .likelihood import BitsPerDim, LikelihoodResult, bits_per_dim
from .losses import (
    OBJECTIVES,
    DDPMObjective,
    DiffusionLoss,
    DSMObjective,
    EDMLoss,
    LikelihoodLoss,
    MinSNRLoss,
    Objective,
    ScoreMatchingObjective,
    dsm,
    esm,
    ism,
    make_objective,
    ncsn_loss,
    ssm,
    ssm_vr,
)
from .metrics import sliced_wasserstein
from .parametrize import EDMPrecond, ScoreModel, convert, edm_coefficients
from .processes import EDM, VE, VP, CosineVP, Process, SubVP, ddpm_betas, ncsn_sigmas
from .samplers import SAMPLERS, SampleResult, sample
from .schedules import karras_sigmas, time_grid

__all__ = [
    "metrics",
    "samplers",
    "schedules",
    "sliced_wasserstein",
    "SAMPLERS",
    "SampleResult",
    "sample",
    "karras_sigmas",
    "time_grid",
    "OBJECTIVES",
    "DDPMObjective",
    "DiffusionLoss",
    "DSMObjective",
    "EDMLoss",
    "LikelihoodLoss",
    "MinSNRLoss",
    "Objective",
    "ScoreMatchingObjective",
    "dsm",
    "esm",
    "ism",
    "make_objective",
    "ncsn_loss",
    "ssm",
    "ssm_vr",
    "losses",
    "weighting",
    "Advice",
    "BitsPerDim",
    "LikelihoodResult",
    "bits_per_dim",
    "advise",
    "save_advice",
    "EDM",
    "VE",
    "VP",
    "CosineVP",
    "EDMPrecond",
    "ExactScore",
    "Gaussian",
    "GaussianMixture",
    "Process",
    "ScoreModel",
    "SubVP",
    "convert",
    "ddpm_betas",
    "edm_coefficients",
    "ncsn_sigmas",
]

__version__ = "0.1.0"

"""scorekit: score matching and score-based generative modelling in PyTorch."""

from . import adapters, guidance, inpaint, likelihood, losses, metrics, nets, samplers
from .adapters import DiscreteVP, from_denoiser, from_diffusers_unet
from .core import schedules, weighting
from .core.distributions import ExactScore, Gaussian, GaussianMixture
from .core.parametrize import EDMPrecond, ScoreModel, convert, edm_coefficients
from .core.processes import (
    EDM,
    VE,
    VP,
    CosineVP,
    Process,
    RectifiedFlow,
    SubVP,
    ddpm_betas,
    ncsn_sigmas,
)
from .core.schedules import karras_sigmas, time_grid
from .guidance import (
    AutoGuidance,
    ClassifierFreeGuidance,
    ClassifierGuided,
    ExactClassifier,
    ExactConditional,
)
from .likelihood import BitsPerDim, LikelihoodResult, bits_per_dim
from .losses import (
    OBJECTIVES,
    ClassifierObjective,
    DDPMObjective,
    DiffusionLoss,
    DSMObjective,
    EDMLoss,
    FlowMatchingLoss,
    LabelDropout,
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
from .nets import MLP, EnergyMLP, UNet, build_net
from .noise import diagnostics
from .noise.advise import Advice, advise, save_advice
from .samplers import SAMPLERS, SampleResult, sample
from .train import checkpoint, data
from .train.checkpoint import (
    build_model,
    load_checkpoint,
    load_model,
    model_config,
    save_checkpoint,
)
from .train.data import TOYS, Normalizer, load_data, toy_2d
from .train.ema import EMA
from .train.trainer import NonFiniteLoss, TrainConfig, Trainer

__all__ = [
    "diagnostics",
    "adapters",
    "checkpoint",
    "data",
    "guidance",
    "inpaint",
    "likelihood",
    "nets",
    "DiscreteVP",
    "from_denoiser",
    "from_diffusers_unet",
    "build_model",
    "load_checkpoint",
    "load_model",
    "model_config",
    "save_checkpoint",
    "TOYS",
    "Normalizer",
    "load_data",
    "toy_2d",
    "EMA",
    "ClassifierGuided",
    "AutoGuidance",
    "ClassifierFreeGuidance",
    "ExactClassifier",
    "ExactConditional",
    "MLP",
    "EnergyMLP",
    "UNet",
    "build_net",
    "NonFiniteLoss",
    "TrainConfig",
    "Trainer",
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
    "ClassifierObjective",
    "DDPMObjective",
    "DiffusionLoss",
    "DSMObjective",
    "EDMLoss",
    "FlowMatchingLoss",
    "LabelDropout",
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
    "RectifiedFlow",
    "ScoreModel",
    "SubVP",
    "convert",
    "ddpm_betas",
    "edm_coefficients",
    "ncsn_sigmas",
]

__version__ = "0.1.0"

r"""Score-matching objectives.

:mod:`~scorekit.losses.score_matching`: losses at one noise level, on any ``score_fn``
(ESM, ISM with exact or Hutchinson trace, SSM, SSM-VR, DSM, multi-level NCSN DSM).
:mod:`~scorekit.losses.objectives`: noise-conditional objectives for training a
:class:`~scorekit.ScoreModel` (continuous diffusion loss with any weighting, likelihood
weighting with importance sampling, DDPM, EDM, min-SNR, conditional flow matching with
an optional minibatch-OT coupling);
:mod:`~scorekit.losses.registry`: SSM / ISM at a sampled ``t`` and :func:`make_objective`;
:mod:`~scorekit.losses.conditional`: label dropout and the noise-conditional classifier;
:mod:`~scorekit.losses.uncertainty`: EDM2's learned per-σ weighting;
:mod:`~scorekit.losses.adaptive`: an adaptive, variance-reducing law of the noise levels;
:mod:`~scorekit.losses.augment`: EDM's non-leaky augmentation.

All losses return per-example values of shape ``(B,)`` and keep the first ½ by default.
"""

from .adaptive import AdaptiveSigma
from .augment import AUGMENT_DIM, Augmented, augment_images
from .conditional import ClassifierObjective, LabelDropout
from .objectives import (
    DDPMObjective,
    Dequantized,
    DiffusionLoss,
    DSMObjective,
    EDMLoss,
    FlowMatchingLoss,
    LikelihoodLoss,
    MinSNRLoss,
    Objective,
    ot_pairing,
)
from .registry import OBJECTIVES, ScoreMatchingObjective, make_objective
from .score_matching import dsm, esm, ism, ncsn_loss, ssm, ssm_vr
from .uncertainty import UncertaintyWeighted

__all__ = [
    "AUGMENT_DIM",
    "OBJECTIVES",
    "AdaptiveSigma",
    "Augmented",
    "ClassifierObjective",
    "DDPMObjective",
    "DSMObjective",
    "Dequantized",
    "DiffusionLoss",
    "EDMLoss",
    "FlowMatchingLoss",
    "LabelDropout",
    "LikelihoodLoss",
    "MinSNRLoss",
    "Objective",
    "ScoreMatchingObjective",
    "UncertaintyWeighted",
    "augment_images",
    "dsm",
    "esm",
    "ism",
    "make_objective",
    "ncsn_loss",
    "ot_pairing",
    "ssm",
    "ssm_vr",
]

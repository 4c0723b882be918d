r"""SSM / ISM at a sampled noise level, and the registry of named objectives.

:func:`make_objective` builds any objective of :mod:`scorekit.losses.objectives` or a
:class:`ScoreMatchingObjective` by name; :data:`OBJECTIVES` lists the names.
"""

from __future__ import annotations

import inspect
from functools import partial

import torch
from torch import Tensor

from .._validate import check_choice, check_int
from ..core.parametrize import ScoreModel
from ..core.processes import Process
from ..core.weighting import SigmaSquared, UniformT
from .objectives import (
    DDPMObjective,
    DiffusionLoss,
    DSMObjective,
    EDMLoss,
    FlowMatchingLoss,
    LikelihoodLoss,
    MinSNRLoss,
    Objective,
    _NoiseConditional,
)
from .score_matching import ism, ssm

__all__ = ["OBJECTIVES", "ScoreMatchingObjective", "make_objective"]


class ScoreMatchingObjective(_NoiseConditional):
    r"""SSM, SSM-VR or ISM applied to a noise-conditional model at a sampled ``t``: per example
    :math:`\lambda(t)\,\ell(x_t; s_\theta(\cdot, t))` with :math:`\ell` from
    :func:`~scorekit.losses.ssm` or :func:`~scorekit.losses.ism`. Its expectation equals
    that of :class:`DiffusionLoss` with the same weighting and sampler up to a constant free
    of :math:`\theta` (both are explicit score matching on :math:`p_t`).

    Arguments:
        process: the noise process.
        estimator: ``"ssm"``, ``"ssm_vr"`` or ``"ism"``.
        weighting: score-space :math:`\lambda(t)`; default ``SigmaSquared()``.
        t_sampler: default ``UniformT()``.
        n_projections, probe: for SSM / SSM-VR (and Hutchinson ISM: ``n_probes``).
        trace: ``"exact"`` or ``"hutchinson"`` (ISM). The exact trace costs ``d``
            vector-Jacobian products per step; for images prefer ``"hutchinson"`` or SSM.
        half: keep the ½.
    """

    ESTIMATORS = ("ssm", "ssm_vr", "ism")

    def __init__(
        self,
        process: Process,
        estimator: str = "ssm",
        weighting=None,
        t_sampler=None,
        n_projections: int = 1,
        probe: str = "rademacher",
        trace: str = "exact",
        half: bool = True,
    ):
        super().__init__(
            process,
            SigmaSquared() if weighting is None else weighting,
            UniformT() if t_sampler is None else t_sampler,
        )
        self.estimator = check_choice("estimator", estimator, self.ESTIMATORS)
        self.n_projections = check_int("n_projections", n_projections, minimum=1)
        self.probe = check_choice("probe", probe, ("gaussian", "rademacher"))
        self.trace = check_choice("trace", trace, ("exact", "hutchinson"))
        self.half = bool(half)

    def __call__(
        self,
        model: ScoreModel,
        x0: Tensor,
        t: Tensor | None = None,
        generator: torch.Generator | None = None,
        **cond,
    ) -> Tensor:
        """Per-example loss, shape ``(B,)``; ``t`` is sampled when ``None``; ``cond`` goes to
        the model."""
        t, _, _, _, xt = self._prepare(model, x0, t, generator)

        def score_fn(x):
            return model(x, t, **cond)

        if self.estimator == "ism":
            val = ism(
                score_fn,
                xt,
                trace=self.trace,
                n_probes=self.n_projections,
                probe=self.probe,
                generator=generator,
                half=self.half,
            )
        else:
            val = ssm(
                score_fn,
                xt,
                n_projections=self.n_projections,
                probe=self.probe,
                variance_reduction=self.estimator == "ssm_vr",
                generator=generator,
                half=self.half,
            )
        return self.weighting(self.process, t).to(val.dtype) * val


_FACTORY = {
    "dsm": DiffusionLoss,
    "ncsn": DSMObjective,
    "likelihood": LikelihoodLoss,
    "ddpm": DDPMObjective,
    "edm": EDMLoss,
    "min_snr": MinSNRLoss,
    "flow_matching": FlowMatchingLoss,
    "ssm": partial(ScoreMatchingObjective, estimator="ssm"),
    "ssm_vr": partial(ScoreMatchingObjective, estimator="ssm_vr"),
    "ism": partial(ScoreMatchingObjective, estimator="ism"),
}

OBJECTIVES: tuple[str, ...] = tuple(_FACTORY)


def make_objective(name: str, process: Process, **kw) -> Objective:
    r"""Build an objective by name: ``"dsm"`` (:class:`DiffusionLoss`, :math:`\sigma^2`,
    uniform ``t``), ``"ncsn"`` (:class:`DSMObjective`), ``"likelihood"``
    (:class:`LikelihoodLoss`), ``"ddpm"`` (:class:`DDPMObjective`), ``"edm"``
    (:class:`EDMLoss`), ``"min_snr"`` (:class:`MinSNRLoss`), ``"flow_matching"``
    (:class:`FlowMatchingLoss`), ``"ssm"``, ``"ssm_vr"``,
    ``"ism"`` (:class:`ScoreMatchingObjective` at the sampled ``t``); ``kw`` go to the
    constructor.

    Example:
        >>> from scorekit import EDM
        >>> make_objective("edm", EDM(), sigma_data=0.5).sample_t(3).shape
        torch.Size([3])
    """
    if name not in _FACTORY:
        raise ValueError(f"name must be one of {', '.join(OBJECTIVES)}; got {name!r}")
    build = _FACTORY[name]
    try:
        inspect.signature(build).bind(process, **kw)
    except TypeError as e:
        raise ValueError(
            f"make_objective({name!r}, ...): bad keyword arguments {kw}: {e}"
        ) from None
    return build(process, **kw)

r"""Noise-conditional training objectives: one continuous-time diffusion loss, many settings.

Every objective is an object with ``process``, ``sample_t(batch, generator, dtype, device)``
(shape ``(B,)``, inside the process domain) and
``__call__(model, x0, t=None, generator=None, **cond)`` returning per-example losses ``(B,)``;
``cond`` is the conditioning of the batch (class labels ``y=``, ...), passed to the model as
``model(x_t, t, **cond)``:

.. math::
    \ell(x_0, t, \varepsilon) = \frac{\lambda(t)}{\rho(t)}\ \tfrac12
        \big\| s_\theta(x_t, t) + \varepsilon/\sigma(t) \big\|^2, \qquad
    x_t = \alpha(t) x_0 + \sigma(t)\varepsilon,

with :math:`\lambda` a score-space weighting (:mod:`scorekit.core.weighting`), ``t`` drawn by a
sampler, and :math:`\rho = 1` except under importance sampling, where
:math:`\rho(t) = q(t)\,(t_{hi} - t_{lo})` makes the estimate unbiased for the uniform-``t``
objective :math:`E_{t\sim\mathcal U}[\lambda(t)\,\tfrac12\|\cdot\|^2]`. The residual is
computed in the space ``prediction_target`` (score, eps, x0 or v) and rescaled by
:func:`~scorekit.core.weighting.error_scale`, so the target changes the arithmetic, never the
objective. The ½ is kept by default (``half=True``), as in score_sde; EDM's and DDPM's own
papers omit it (``half=False``).

References:
    Song et al. (2021), eq. (7); Song, Durkan, Murray & Ermon (2021); Ho et al. (2020),
    eq. (14); Karras et al. (2022), eq. (8) and Table 1; Hang et al. (2023).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from .._validate import check_choice, check_int, check_positive, check_tensor
from ..core.parametrize import (
    MODEL_PREDICTIONS,
    EDMPrecond,
    ScoreModel,
    _velocity_coefficients,
    convert,
)
from ..core.processes import EDM, VP, Process, RectifiedFlow
from ..core.random import rand, randn
from ..core.weighting import (
    EDMWeighting,
    FlowMatchingWeighting,
    GridT,
    LikelihoodWeighting,
    LogitNormalT,
    LogNormalSigma,
    LogSNRImportance,
    MinSNRWeighting,
    SigmaSquared,
    UniformT,
    relative_weight,
)
from .score_matching import _sqnorm

__all__ = [
    "DDPMObjective",
    "DSMObjective",
    "Dequantized",
    "DiffusionLoss",
    "EDMLoss",
    "FlowMatchingLoss",
    "LikelihoodLoss",
    "MinSNRLoss",
    "Objective",
    "ot_pairing",
]


@runtime_checkable
class Objective(Protocol):
    """What a trainer needs from an objective."""

    process: Process

    def sample_t(
        self, batch: int, generator: torch.Generator | None = None, dtype=torch.float32, device=None
    ) -> Tensor: ...

    def __call__(
        self,
        model: ScoreModel,
        x0: Tensor,
        t: Tensor | None = None,
        generator: torch.Generator | None = None,
        **cond,
    ) -> Tensor: ...


def _config(process: Process):
    try:
        return process.config()
    except NotImplementedError:
        return id(process)


class _NoiseConditional:
    """Shared plumbing: checks, ``t`` sampling and the noised input."""

    def __init__(self, process: Process, weighting, t_sampler):
        if not isinstance(process, Process):
            raise ValueError(f"process must be a scorekit Process, got {type(process).__name__}")
        if not callable(weighting):
            raise ValueError(f"weighting must be a callable w(process, t), got {weighting!r}")
        if not callable(getattr(t_sampler, "sample", None)):
            raise ValueError(f"t_sampler must have a sample(...) method, got {t_sampler!r}")
        self.process = process
        self.weighting = weighting
        self.t_sampler = t_sampler

    def sample_t(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device=None,
    ) -> Tensor:
        """Draw ``batch`` noise levels ``t``, shape ``(B,)``, from ``t_sampler``."""
        batch = check_int("batch", batch, minimum=1)
        return self.t_sampler.sample(self.process, batch, generator, dtype, device)

    def _noise(self, x0: Tensor, generator) -> Tensor:
        """The noise of the batch, drawn after ``t``."""
        return randn(x0.shape, generator, x0.dtype, x0.device)

    def _prepare(self, model, x0, t, generator, eps=None):
        if not callable(model):
            raise ValueError(f"model must be a ScoreModel or a callable model(x, t), got {model!r}")
        proc = getattr(model, "process", None)
        if isinstance(proc, Process) and proc is not self.process:
            if _config(proc) != _config(self.process):
                raise ValueError(
                    f"model.process {proc!r} differs from the objective's {self.process!r}"
                )
        check_tensor("x0", x0, min_dim=2)
        B = x0.shape[0]
        if t is None:
            t = self.sample_t(B, generator, x0.dtype, x0.device)
        else:
            t = torch.as_tensor(t, dtype=x0.dtype, device=x0.device)
            if t.shape != (B,):
                raise ValueError(f"t must have shape (B,) = ({B},), got {tuple(t.shape)}")
        # t is not range-checked here: reading its values would stall an accelerator at
        # every step; t_sampler draws inside the domain, and a t of one's own is one's own
        if eps is None:
            eps = self._noise(x0, generator)
        elif eps.shape != x0.shape:
            raise ValueError(
                f"noise must have the shape of x0 {tuple(x0.shape)}, got {tuple(eps.shape)}"
            )
        view = (-1,) + (1,) * (x0.dim() - 1)
        if self.process.unit_alpha:  # VE, EDM: alpha is the number 1, x_t = x0 + sigma eps
            alpha, sigma = 1.0, self.process.sigma(t)
            xt = torch.addcmul(x0, sigma.reshape(view), eps)
        else:
            alpha, sigma = self.process.marginal(t)
            xt = torch.addcmul(alpha.reshape(view) * x0, sigma.reshape(view), eps)
        return t, eps, alpha, sigma, xt


class DiffusionLoss(_NoiseConditional):
    r"""Continuous-time denoising score matching for any process and any prediction target
    (Song et al. 2021, eq. (7)): per example

    .. math:: \frac{\lambda(t)}{\rho(t)}\,\tfrac12\|s_\theta(x_t,t) + \varepsilon/\sigma\|^2
              = \frac{\lambda(t)}{\rho(t)\,c(t)}\,\tfrac12\|\hat y_\theta - y\|^2

    with :math:`y` the true ``prediction_target`` (:math:`-\varepsilon/\sigma`,
    :math:`\varepsilon`, :math:`x_0`, :math:`\alpha\varepsilon - \sigma x_0` or the flow
    velocity :math:`\alpha' x_0 + \sigma'\varepsilon`) and :math:`c` its
    :func:`~scorekit.core.weighting.error_scale`.

    Arguments:
        process: the noise process.
        weighting: score-space :math:`\lambda(t)`, a callable ``w(process, t) -> (B,)``;
            default :class:`~scorekit.core.weighting.SigmaSquared` (score_sde).
        prediction_target: where the residual is computed: ``"score"``, ``"eps"``
            (default), ``"x0"``, ``"v"`` or ``"velocity"``.
        t_sampler: draws ``t``; default :class:`~scorekit.core.weighting.UniformT` on
            ``[t_min, t_max]``.
        importance: divide by :math:`q(t)(t_{hi} - t_{lo})` (needs ``t_sampler.pdf`` and
            ``t_sampler.bounds``), an unbiased estimate of the uniform-``t`` objective.
        half: keep the ½.

    Example:
        >>> from scorekit import VP, GaussianMixture, ExactScore
        >>> gm = GaussianMixture([1.0], [[0.0, 0.0]], stds=1.0)
        >>> loss = DiffusionLoss(VP())
        >>> g = torch.Generator().manual_seed(0)
        >>> loss(ExactScore(gm, VP()), gm.sample(8, generator=g), generator=g).shape
        torch.Size([8])
    """

    def __init__(
        self,
        process: Process,
        weighting=None,
        prediction_target: str = "eps",
        t_sampler=None,
        importance: bool = False,
        half: bool = True,
    ):
        super().__init__(
            process,
            SigmaSquared() if weighting is None else weighting,
            UniformT() if t_sampler is None else t_sampler,
        )
        self.prediction_target = check_choice(
            "prediction_target", prediction_target, MODEL_PREDICTIONS
        )
        self.importance = bool(importance)
        if self.importance and not (
            callable(getattr(self.t_sampler, "pdf", None))
            and callable(getattr(self.t_sampler, "bounds", None))
        ):
            raise ValueError(
                f"importance=True needs a t_sampler with pdf() and bounds(), got {self.t_sampler!r}"
            )
        self.half = bool(half)
        if self.importance:  # read once here, not at every step
            self._bounds = self.t_sampler.bounds(self.process)

    def __call__(
        self,
        model: ScoreModel,
        x0: Tensor,
        t: Tensor | None = None,
        generator: torch.Generator | None = None,
        **cond,
    ) -> Tensor:
        r"""Per-example loss, shape ``(B,)``; ``t`` (shape ``(B,)``) is sampled when ``None``.

        Arguments:
            model: a :class:`~scorekit.ScoreModel` on the same process, or any callable
                ``model(x, t, **cond)`` returning the score (its output is then converted to
                ``prediction_target``; this is how a wrapper such as
                ``DistributedDataParallel(score_model)`` is trained through its ``forward``).
            x0: clean data, shape ``(B, *D)``.
            t: noise levels, shape ``(B,)``, or ``None``.
            generator: randomness for ``t`` and the noise.
            **cond: the batch's conditioning, passed to the model.
        """
        return self._loss(model, x0, t, generator, None, cond)

    def _loss(self, model, x0, t, generator, eps, cond) -> Tensor:
        t, eps, alpha, sigma, xt = self._prepare(model, x0, t, generator, eps)
        target = self.prediction_target
        view = (-1,) + (1,) * (x0.dim() - 1)
        if target == "velocity":
            c, gamma = (v.reshape(view) for v in _velocity_coefficients(self.process, t))
        if isinstance(model, ScoreModel):
            pred = model.predict(xt, t, target, **cond)
        else:  # any model(x, t) -> score, e.g. a ScoreModel inside DistributedDataParallel
            score = model(xt, t, **cond)
            if not isinstance(score, Tensor) or score.shape != xt.shape:
                raise ValueError(f"model(x, t) must return the shape of x {tuple(xt.shape)}")
            if target == "velocity":  # u = c x + gamma eps, eps = -sigma s
                pred = c * xt - gamma * sigma.reshape(view) * score
            else:
                pred = convert(score, "score", target, xt, alpha, sigma)
        a = alpha if isinstance(alpha, float) else alpha.reshape(view)
        if target == "eps":
            y = eps
        elif target == "score":
            y = -eps / sigma.reshape(view)
        elif target == "x0":
            y = x0
        elif target == "v":
            y = a * eps - sigma.reshape(view) * x0
        else:  # u = alpha' x0 + sigma' eps = c x_t + gamma eps
            y = c * xt + gamma * eps
        w = relative_weight(self.weighting, self.process, t, target, alpha, sigma)
        if self.importance:
            lo, hi = self._bounds
            q = self.t_sampler.pdf(self.process, t) * (hi - lo)
            w = 1 / q if w is None else w / q
        val = _sqnorm(pred - y)
        scale = 0.5 if self.half else 1.0
        if w is None:
            return val * scale
        w = w.to(x0.dtype) if w.dtype != x0.dtype else w
        return torch.mul(w, val).mul_(scale) if scale != 1.0 else w * val

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.process!r}, weighting={self.weighting!r}, "
            f"prediction_target={self.prediction_target!r}, t_sampler={self.t_sampler!r}, "
            f"importance={self.importance})"
        )


_T_LAWS = {"uniform": UniformT, "logit_normal": LogitNormalT}


def ot_pairing(x0: Tensor, noise: Tensor) -> Tensor:
    r"""Minibatch optimal-transport coupling (Tong et al. 2024, OT-CFM; Pooladian et al.
    2023): the rows of ``noise`` re-ordered by the exact assignment :math:`\pi` that
    minimises :math:`\sum_i \|x_0^{(i)} - \varepsilon^{(\pi(i))}\|^2` over the batch
    (``scipy.optimize.linear_sum_assignment``). The assignment is solved on the host: it
    reads the batch's distances, once per step.

    Arguments:
        x0, noise: tensors of the same shape ``(B, *D)``.

    Returns:
        ``noise[pi]``, shape ``(B, *D)``.
    """
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:  # pragma: no cover - scipy comes with the cli extra
        raise ImportError("coupling='ot' needs scipy: pip install 'scorekit[cli]'") from None
    if x0.shape != noise.shape:
        raise ValueError(
            f"x0 and noise must have one shape, got {tuple(x0.shape)}, {tuple(noise.shape)}"
        )
    cost = torch.cdist(x0.detach().flatten(1).double(), noise.detach().flatten(1).double()) ** 2
    _, cols = linear_sum_assignment(cost.cpu().numpy())
    return noise[torch.as_tensor(cols, device=noise.device)]


class FlowMatchingLoss(DiffusionLoss):
    r"""Conditional flow matching (Lipman et al. 2023; Liu et al. 2023, rectified flow):
    per example :math:`\tfrac12\|\hat u_\theta(x_t, t) - u\|^2` with the conditional
    velocity :math:`u = \alpha' x_0 + \sigma'\varepsilon` (:math:`\varepsilon - x_0` for
    :class:`~scorekit.RectifiedFlow`), i.e. :class:`DiffusionLoss` with
    :class:`~scorekit.core.weighting.FlowMatchingWeighting`, :math:`\lambda = g^4/4` in score
    space and :math:`\gamma^2 = 1/(1 - t)^2` on the ε-MSE (Kingma & Gao 2023).

    Arguments:
        process: the interpolant; default :class:`~scorekit.RectifiedFlow` (any process
            works, e.g. ``CosineVP(s=0)`` is the cosine path :math:`\alpha = \cos(\pi t/2)`).
        t_sampler: a time sampler, or ``"uniform"`` (default) or ``"logit_normal"``
            (:class:`~scorekit.core.weighting.LogitNormalT`, Esser et al. 2024).
        coupling: ``None`` (independent noise) or ``"ot"``: the batch's noise is re-paired
            with its examples by :func:`ot_pairing` (OT-CFM, Tong et al. 2024). The learned
            velocity then transports the data to the prior along the coupled path; its
            ODE samples and likelihood stay valid, its score conversion (and so stochastic
            samplers) assumes independent noise and does not.
        half: keep the ½.

    A call may pass the noise of each example, ``noise=`` of shape ``(B, *D)``, instead of
    drawing it: this is how reflow (:func:`scorekit.train.reflow.reflow_pairs`) trains on
    the (sample, noise) pairs of a teacher. Given pairs are not re-coupled.

    Example:
        >>> from scorekit import GaussianMixture, ExactScore
        >>> gm = GaussianMixture([1.0], [[0.0, 0.0]], stds=1.0)
        >>> loss = FlowMatchingLoss()
        >>> g = torch.Generator().manual_seed(0)
        >>> loss(ExactScore(gm, loss.process), gm.sample(8, generator=g), generator=g).shape
        torch.Size([8])
    """

    COUPLINGS = (None, "ot")

    def __init__(
        self,
        process: Process | None = None,
        t_sampler=None,
        coupling: str | None = None,
        half: bool = True,
    ):
        process = RectifiedFlow() if process is None else process
        if t_sampler is None or isinstance(t_sampler, str):
            law = check_choice("t_sampler", t_sampler or "uniform", tuple(_T_LAWS))
            t_sampler = _T_LAWS[law]()
        if coupling not in self.COUPLINGS:
            raise ValueError(f"coupling must be None or 'ot', got {coupling!r}")
        self.coupling = coupling
        super().__init__(process, FlowMatchingWeighting(), "velocity", t_sampler, half=half)

    def __call__(
        self,
        model: ScoreModel,
        x0: Tensor,
        t: Tensor | None = None,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
        **cond,
    ) -> Tensor:
        """Per-example loss, shape ``(B,)``; ``noise`` (shape of ``x0``) pairs each example
        with its own noise, else it is drawn (and coupled when ``coupling="ot"``)."""
        if noise is not None:
            noise = torch.as_tensor(noise, dtype=x0.dtype, device=x0.device)
        return self._loss(model, x0, t, generator, noise, cond)

    def _noise(self, x0: Tensor, generator) -> Tensor:
        """Independent noise, re-paired with the batch by :func:`ot_pairing` for ``"ot"``."""
        noise = super()._noise(x0, generator)
        return ot_pairing(x0, noise) if self.coupling == "ot" else noise

    def __repr__(self) -> str:
        return (
            f"FlowMatchingLoss({self.process!r}, t_sampler={self.t_sampler!r}, "
            f"coupling={self.coupling!r})"
        )


class DSMObjective(DiffusionLoss):
    r"""Multi-level DSM of NCSN (Song & Ermon 2019): ``t`` uniform over the times of ``levels``
    geometric noise levels :math:`\sigma_i` from :math:`\sigma(t_{min})` to
    :math:`\sigma(t_{max})` (for :class:`~scorekit.core.processes.VE` the grid of
    :func:`~scorekit.core.processes.ncsn_sigmas`), weight :math:`\lambda(\sigma) = \sigma^2`
    by default, or the given ``sigmas``.
    """

    def __init__(
        self,
        process: Process,
        levels: int = 10,
        sigmas: Tensor | None = None,
        weighting=None,
        prediction_target: str = "eps",
        half: bool = True,
    ):
        if not isinstance(process, Process):
            raise ValueError(f"process must be a scorekit Process, got {type(process).__name__}")
        if sigmas is None:
            levels = check_int("levels", levels, minimum=2)
            ends = process.sigma(torch.tensor([process.t_min, process.t_max], dtype=torch.float64))
            check_positive("sigma(t_min)", float(ends[0]))
            sigmas = torch.exp(torch.linspace(*torch.log(ends).tolist(), levels, dtype=ends.dtype))
            sigmas[0], sigmas[-1] = ends  # exact ends, no round-off outside the domain
        try:
            sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"sigmas must be a 1-D tensor of values > 0, got {sigmas!r}") from None
        if sigmas.dim() != 1 or not (sigmas > 0).all() or not torch.isfinite(sigmas).all():
            raise ValueError(f"sigmas must be a 1-D tensor of values > 0, got {sigmas!r}")
        self.sigmas = sigmas
        times = process.t_of_sigma(sigmas).clamp(0.0, process.T)
        super().__init__(
            process,
            weighting=weighting,
            prediction_target=prediction_target,
            t_sampler=GridT(times),
            half=half,
        )


class DDPMObjective(DiffusionLoss):
    r"""DDPM's "simple" loss (Ho et al. 2020, eq. (14)): ``t`` uniform on the grid
    :math:`t_i = i\,t_{max}/N`, :math:`i = 1..N` (the grid of
    :func:`~scorekit.core.processes.ddpm_betas`) and :math:`\tfrac12\|\hat\varepsilon -
    \varepsilon\|^2`, i.e. :math:`\lambda = \sigma^2`. ``half=False`` gives Ho et al.'s
    own scale."""

    def __init__(self, process: Process | None = None, steps: int = 1000, half: bool = True):
        process = VP() if process is None else process
        if not isinstance(process, Process):
            raise ValueError(f"process must be a Process, got {type(process).__name__}")
        steps = check_int("steps", steps, minimum=1)
        grid = torch.linspace(0.0, process.t_max, steps + 1, dtype=torch.float64)[1:]
        super().__init__(process, SigmaSquared(), "eps", GridT(grid), half=half)


class LikelihoodLoss(DiffusionLoss):
    r"""Likelihood weighting :math:`\lambda = g(t)^2` (Song, Durkan, Murray & Ermon 2021) with
    importance sampling :math:`q(t) \propto g^2/\sigma^2` by default, under which each
    example pays :math:`(\lambda_{lo} - \lambda_{hi})/(t_{hi} - t_{lo})\cdot
    \tfrac12\|\hat\varepsilon - \varepsilon\|^2`. Multiplied by :math:`t_{hi} - t_{lo}` the
    expectation is the score-matching term of the bound on :math:`-\log p_\theta(x_0)`."""

    def __init__(
        self,
        process: Process,
        importance_sampling: bool = True,
        low: float | None = None,
        high: float | None = None,
        prediction_target: str = "eps",
        half: bool = True,
    ):
        sampler = LogSNRImportance(low, high) if importance_sampling else UniformT(low, high)
        super().__init__(
            process,
            LikelihoodWeighting(),
            prediction_target,
            sampler,
            importance=importance_sampling,
            half=half,
        )


class EDMLoss(DiffusionLoss):
    r"""EDM training loss (Karras et al. 2022, eq. (8), Table 1):
    :math:`\ln\hat\sigma \sim \mathcal N(P_{mean}, P_{std}^2)` and
    :math:`w(\hat\sigma)\,\tfrac12\|D_\theta(x_t, \sigma) - x_0\|^2`,
    :math:`w = (\hat\sigma^2 + \sigma_d^2)/(\hat\sigma\sigma_d)^2`.

    The objective does not depend on the parametrisation; the preconditioning that makes it
    well conditioned is the model's: use
    ``ScoreModel(EDMPrecond(F, process, sigma_data), process, prediction="x0")``.
    For :class:`~scorekit.core.processes.EDM` (the default process) ``t = sigma``.
    """

    def __init__(
        self,
        process: Process | None = None,
        sigma_data: float = 0.5,
        p_mean: float = -1.2,
        p_std: float = 1.2,
        half: bool = True,
    ):
        process = EDM() if process is None else process
        self.sigma_data = check_positive("sigma_data", sigma_data)
        super().__init__(
            process, EDMWeighting(sigma_data), "x0", LogNormalSigma(p_mean, p_std), half=half
        )

    def __call__(self, model, x0, t=None, generator=None, **cond):
        net = getattr(model, "net", None)
        if isinstance(net, EDMPrecond) and net.sigma_data != self.sigma_data:
            raise ValueError(
                f"sigma_data of the loss ({self.sigma_data}) and of the model's EDMPrecond "
                f"({net.sigma_data}) must agree"
            )
        return super().__call__(model, x0, t, generator, **cond)


class MinSNRLoss(DiffusionLoss):
    r"""Min-SNR-γ weighting (Hang et al. 2023): :math:`\min(\mathrm{SNR},\gamma)/\mathrm{SNR}`
    on :math:`\tfrac12\|\hat\varepsilon-\varepsilon\|^2`, ``t`` uniform."""

    def __init__(self, process: Process, gamma: float = 5.0, t_sampler=None, half: bool = True):
        super().__init__(process, MinSNRWeighting(gamma), "eps", t_sampler, half=half)


class Dequantized:
    r"""An objective on uniformly dequantized data: each example is moved within its bin,
    :math:`x_0 + w\,(U + \text{low})`, :math:`U \sim \mathcal U[0, 1)^D`, drawn from the
    step's generator. With bins of width :math:`w` centred on the data's levels, ``low =
    -0.5``; for data at the lower edge of its bins, ``low = 0``. Training on dequantized
    data is what makes the continuous likelihood of discrete data (bits/dim) meaningful
    (Theis et al. 2016; Ho et al. 2019).

    Arguments:
        objective: any objective of :mod:`scorekit.losses`.
        width: the bin width :math:`w > 0` in model space (e.g. ``2 / 16`` for sklearn's
            digits mapped to [-1, 1], ``2 / 255`` for 8-bit images).
        low: where the bin starts relative to the example, in bin widths.

    References:
        Theis, van den Oord & Bethge, "A note on the evaluation of generative models", ICLR
        2016. Ho et al., "Flow++", ICML 2019.
    """

    def __init__(self, objective, width: float, low: float = -0.5):
        if not callable(objective) or not hasattr(objective, "sample_t"):
            raise ValueError(f"objective must be a scorekit objective, got {objective!r}")
        self.objective, self.process = objective, objective.process
        self.width = check_positive("width", width)
        self.low = float(low)

    def sample_t(self, batch, generator=None, dtype=torch.float32, device=None) -> Tensor:
        """The wrapped objective's noise levels."""
        return self.objective.sample_t(batch, generator, dtype, device)

    def __call__(self, model, x0, t=None, generator=None, **cond) -> Tensor:
        u = rand(x0.shape, generator, x0.dtype, x0.device)
        x = torch.add(x0, u.add_(self.low), alpha=self.width)
        return self.objective(model, x, t=t, generator=generator, **cond)

    def __repr__(self) -> str:
        return f"Dequantized({self.objective!r}, width={self.width:g}, low={self.low:g})"

r"""Class-conditional score models and guidance.

A conditional network ``net(x, t, y)`` takes integer labels ``y`` of shape ``(B,)`` in
:math:`\{0, \dots, K-1\}`; the reserved *null* label :math:`y = K` means "no label", i.e.
the unconditional score, learned by dropping labels during training (label dropout).
Bound to labels, a conditional model is a plain :class:`~scorekit.core.parametrize.ScoreModel`,
so every sampler runs on it unchanged.

Classifier-free guidance with scale :math:`\gamma` (Ho & Salimans 2022; diffusers'
``guidance_scale``) combines the two predictions,

.. math:: \tilde s = s(x, t) + \gamma\,\big(s(x, t \mid y) - s(x, t)\big)
          = \nabla\log p_t(x) + \gamma\,\nabla\log p_t(y \mid x),

so :math:`\gamma = 0` is unconditional, :math:`\gamma = 1` plain conditional sampling and
:math:`\gamma > 1` sharpens :math:`p_t(y \mid x)^\gamma`. Written with :math:`w = \gamma - 1`
it is Ho & Salimans' :math:`(1 + w)\,s(x \mid y) - w\,s(x)`. The combination has weights
summing to one, so it is the same in the score, eps, x0 or v parametrisation. Classifier
guidance (Dhariwal & Nichol 2021) adds the gradient of a noise-conditional classifier,

.. math:: \tilde s = s(x, t) + \gamma\,\nabla_x \log p_\phi(y \mid x_t, t).

For a Gaussian mixture whose components are grouped into classes, :class:`ExactConditional`
and :class:`ExactClassifier` give every one of these quantities in closed form.

References:
    Ho & Salimans, "Classifier-Free Diffusion Guidance", 2022.
    Dhariwal & Nichol, "Diffusion Models Beat GANs on Image Synthesis", NeurIPS 2021.
    Song et al., "Score-Based Generative Modeling through SDEs", ICLR 2021, Section 5.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ._validate import check_finite, check_int
from .core.distributions import GaussianMixture
from .core.parametrize import PREDICTIONS, ScoreModel
from .core.processes import Process
from .samplers import SampleResult, sample

__all__ = [
    "ClassifierGuided",
    "ConditionalScoreModel",
    "ExactClassifier",
    "ExactConditional",
    "GuidedScoreModel",
    "check_labels",
    "class_mixtures",
    "sample_conditional",
]


def check_labels(
    name: str, labels, num_classes: int, batch: int | None = None, allow_null: bool = False
) -> Tensor:
    r"""``labels`` as a long tensor of shape ``(B,)`` with values in ``[0, num_classes)``
    (``[0, num_classes]`` with ``allow_null``, the null label being ``num_classes``)."""
    num_classes = check_int("num_classes", num_classes)
    try:
        y = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be a tensor of class labels, got {labels!r}") from None
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        if not (y.is_floating_point() and torch.equal(y, y.round())):
            raise ValueError(f"{name} must be integer class labels, got dtype {y.dtype}")
    y = y.to(torch.long)
    if y.dim() != 1:
        raise ValueError(f"{name} must have shape (B,), got {tuple(y.shape)}")
    if batch is not None and y.shape[0] != batch:
        raise ValueError(f"{name} must have shape (B,) = ({batch},), got {tuple(y.shape)}")
    hi = num_classes if allow_null else num_classes - 1
    if y.numel() and (int(y.min()) < 0 or int(y.max()) > hi):
        bad = int(y[(y < 0) | (y > hi)][0])
        null = f" ({num_classes} = null label)" if allow_null else ""
        raise ValueError(f"{name} must lie in [0, {hi}]{null}, got {bad}")
    return y


class ConditionalScoreModel(nn.Module):
    r"""A class-conditional ``net(x, t, y)`` predicting score / eps / x0 / v / energy.

    Arguments:
        net: callable ``net(x, t, y)``; ``x`` of shape ``(B, *D)``, ``t`` and ``y`` of shape
            ``(B,)`` (``y`` long); returns ``(B, *D)`` (``(B,)`` for an energy).
        process: the :class:`~scorekit.core.processes.Process` defining ``t``.
        num_classes: number of classes :math:`K`; the null label is :math:`K`.
        prediction: what ``net`` predicts (as in :class:`~scorekit.core.parametrize.ScoreModel`).
        null_label: whether ``net`` was trained with label dropout, so that :math:`y = K`
            gives the unconditional prediction; classifier-free guidance needs it.
        data_shape: the per-sample shape ``D``, for ``sample_conditional(model, labels)``.

    :meth:`bind` turns it into a :class:`~scorekit.core.parametrize.ScoreModel` for fixed labels.
    """

    def __init__(
        self,
        net: Callable[[Tensor, Tensor, Tensor], Tensor] | None,
        process: Process,
        num_classes: int,
        prediction: str = "score",
        null_label: bool = True,
        data_shape: tuple[int, ...] | None = None,
    ):
        super().__init__()
        if net is not None and not callable(net):
            raise ValueError(f"net must be callable (or None), got {type(net).__name__}")
        if not isinstance(process, Process):
            raise ValueError(f"process must be a scorekit Process, got {type(process).__name__}")
        if prediction not in PREDICTIONS + ("energy",):
            raise ValueError(
                f"prediction must be one of {PREDICTIONS + ('energy',)}, got {prediction!r}"
            )
        self.net = net
        self.process = process
        self.num_classes = check_int("num_classes", num_classes, minimum=1)
        self.prediction = prediction
        self.null_label = bool(null_label)
        if data_shape is None:
            data_shape = getattr(net, "data_shape", None)
        self.data_shape = None if data_shape is None else tuple(int(d) for d in data_shape)

    def raw(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """The network's own output for labels ``y`` (``t`` of shape ``(B,)``)."""
        return self.net(x, t, y)

    def bind(self, labels, scale: float = 1.0) -> GuidedScoreModel:
        r"""The :class:`~scorekit.core.parametrize.ScoreModel` of
        :math:`s(x) + \gamma (s(x \mid y) - s(x))` for ``labels`` of shape ``(B,)`` (the
        null label allowed); ``scale`` :math:`\gamma = 1` is plain conditional. Inputs must
        then have batch size ``B``."""
        return GuidedScoreModel(self, labels, scale)

    def predict(self, x: Tensor, t: Tensor | float, y, target: str = "score") -> Tensor:
        """The conditional prediction of ``target`` for labels ``y`` (no guidance)."""
        return self.bind(y).predict(x, t, target)

    def forward(self, x: Tensor, t: Tensor | float, y) -> Tensor:
        r"""The conditional score :math:`\nabla_x \log p_t(x \mid y)`, shape ``(B, *D)``."""
        return self.predict(x, t, y, "score")


class _CFGNet(nn.Module):
    """``net(x, t)`` of a conditional model bound to labels, with guidance."""

    def __init__(self, cond: ConditionalScoreModel, labels: Tensor, scale: float):
        super().__init__()
        self.cond = cond
        self.register_buffer("labels", labels, persistent=False)
        self.scale = scale
        self.data_shape = cond.data_shape

    def config(self) -> dict:
        net = self.cond.net
        return {
            "name": "conditional",
            "num_classes": self.cond.num_classes,
            "null_label": self.cond.null_label,
            "net": net.config() if hasattr(net, "config") else type(net).__name__,
        }

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        y = self.labels.to(x.device)
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"this model is bound to {y.shape[0]} labels but x has batch size "
                f"{x.shape[0]}; bind one label per sample (sample_conditional chunks both)"
            )
        if self.scale == 1.0:
            return self.cond.raw(x, t, y)
        null = torch.full_like(y, self.cond.num_classes)
        if self.scale == 0.0:
            return self.cond.raw(x, t, null)
        out = self.cond.raw(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        c, u = out.chunk(2)
        return u + self.scale * (c - u)


class GuidedScoreModel(ScoreModel):
    r"""A :class:`ConditionalScoreModel` bound to ``labels`` with classifier-free guidance
    scale :math:`\gamma`: predicts :math:`u + \gamma (c - u)` in the network's own
    parametrisation (two network passes per call, batched, unless :math:`\gamma \in \{0, 1\}`).
    """

    def __init__(self, cond: ConditionalScoreModel, labels, scale: float = 1.0):
        if not isinstance(cond, ConditionalScoreModel):
            raise ValueError(
                f"classifier-free guidance needs a ConditionalScoreModel, got "
                f"{type(cond).__name__} (an unconditional model: use a classifier instead)"
            )
        scale = float(scale)
        check_finite("scale", torch.tensor(scale))
        y = check_labels("labels", labels, cond.num_classes, allow_null=True)
        uses_null = scale != 1.0 or bool((y == cond.num_classes).any())
        if uses_null and not cond.null_label:
            raise ValueError(
                f"guidance scale {scale} (or a null label) needs a model trained with label "
                "dropout (null_label=True); this model has no unconditional prediction"
            )
        super().__init__(_CFGNet(cond, y, scale), cond.process, cond.prediction)
        self.labels, self.scale = y, scale


class ClassifierGuided(ScoreModel):
    r"""Classifier guidance: :math:`\tilde s = s(x, t) + \gamma \nabla_x \log
    \operatorname{softmax}(c(x, t))_y`, one backward pass through the classifier per call.

    Arguments:
        model: any :class:`~scorekit.core.parametrize.ScoreModel` (e.g. unconditional, or a
            bound :class:`ConditionalScoreModel`).
        classifier: ``classifier(x, t) -> logits`` of shape ``(B, K)``, trained on noised
            inputs (:math:`x_t`, ``t`` of shape ``(B,)``).
        labels: shape ``(B,)``, values in ``[0, K)``.
        scale: :math:`\gamma \ge 0`.
    """

    def __init__(self, model: ScoreModel, classifier: Callable, labels, scale: float = 1.0):
        if not isinstance(model, ScoreModel):
            raise ValueError(f"model must be a scorekit ScoreModel, got {type(model).__name__}")
        if not callable(classifier):
            raise ValueError(f"classifier must be callable, got {type(classifier).__name__}")
        super().__init__(None, model.process, "score")
        self.model = model
        self.classifier = classifier
        self.labels = check_labels("labels", labels, 2**62)
        self.scale = float(scale)
        check_finite("scale", torch.tensor(self.scale))
        self.data_shape = getattr(model.net, "data_shape", None)

    def log_prob_label(self, x: Tensor, t: Tensor) -> Tensor:
        r""":math:`\log p_\phi(y \mid x_t)`, shape ``(B,)``."""
        y = self.labels.to(x.device)
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"this model is bound to {y.shape[0]} labels but x has batch size {x.shape[0]}"
            )
        logits = self.classifier(x, t)
        if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
            raise ValueError(
                f"classifier must return logits of shape (B, K), got {tuple(logits.shape)}"
            )
        if int(y.max()) >= logits.shape[1]:
            raise ValueError(
                f"labels must lie in [0, {logits.shape[1] - 1}] for a classifier with "
                f"{logits.shape[1]} classes, got {int(y.max())}"
            )
        return torch.log_softmax(logits, dim=1).gather(1, y[:, None])[:, 0]

    def raw(self, x: Tensor, t: Tensor) -> Tensor:
        s = self.model.predict(x, t, "score")
        if self.scale == 0.0:
            return s
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            xi = x if x.requires_grad else x.detach().requires_grad_(True)
            lp = self.log_prob_label(xi, t)
            (g,) = torch.autograd.grad(lp.sum(), xi, create_graph=create_graph)
        return s + self.scale * g


# -- exact targets -------------------------------------------------------------------


def class_mixtures(mixture: GaussianMixture, classes) -> tuple[Tensor, list[GaussianMixture]]:
    r"""Split a mixture into classes: ``classes[k]`` is the class of component ``k``.

    Returns:
        ``(prior, parts)``: :math:`p(y = c) = \sum_{k \in c} w_k`, shape ``(C,)``, and for
        each class the sub-mixture :math:`p(x \mid y = c) = \sum_{k\in c} w_k\,
        \mathcal{N}(\mu_k, \Sigma_k) / p(c)`.
    """
    if not isinstance(mixture, GaussianMixture):
        raise ValueError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
    K = mixture.n_components
    lab = torch.as_tensor(classes)
    if lab.shape != (K,) or lab.is_floating_point():
        raise ValueError(
            f"classes must be integer labels of shape (K,) = ({K},), got {tuple(lab.shape)}"
        )
    C = int(lab.max()) + 1
    check_labels("classes", lab, C)
    covs = mixture.covs
    prior, parts = torch.zeros(C, dtype=torch.float64), []
    for c in range(C):
        idx = torch.nonzero(lab == c)[:, 0]
        if idx.numel() == 0:
            raise ValueError(f"classes must use every label 0..{C - 1}; class {c} is empty")
        w = mixture.weights[idx]
        prior[c] = w.sum()
        parts.append(GaussianMixture(w, mixture.means[idx], covs=covs[idx]))
    return prior, parts


class ExactConditional(ConditionalScoreModel):
    r"""The exact conditional score :math:`\nabla_x \log p_t(x \mid y)` of a Gaussian
    mixture whose components are grouped into classes (see :func:`class_mixtures`); the
    null label gives the full mixture's score. A :class:`ConditionalScoreModel`, so its
    guided scores are exact targets:
    :math:`\nabla\log p_t(x) + \gamma\,\nabla\log p_t(y \mid x)`."""

    def __init__(self, mixture: GaussianMixture, classes, process: Process):
        prior, parts = class_mixtures(mixture, classes)
        super().__init__(None, process, len(parts), "score", True, (mixture.dim,))
        self.mixture, self.prior, self.parts = mixture, prior, parts

    def raw(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        alpha, sigma = self.process.marginal(t)
        out = torch.empty_like(x)
        for c in torch.unique(y).tolist():
            i = y == c
            gm = self.mixture if c == self.num_classes else self.parts[c]
            out[i] = gm.noised_score(x[i], alpha[i], sigma[i])
        return out


class ExactClassifier(nn.Module):
    r"""Exact noise-conditional classifier of the same mixture: logits
    :math:`\log p(y = c) + \log p_t(x \mid c)`, so that
    :math:`\operatorname{softmax} = p_t(y \mid x_t)`. Call as ``clf(x, t) -> (B, C)``."""

    def __init__(self, mixture: GaussianMixture, classes, process: Process):
        super().__init__()
        self.prior, self.parts = class_mixtures(mixture, classes)
        self.process = process

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        alpha, sigma = self.process.marginal(t)
        logp = [gm.noised_log_prob(x, alpha, sigma) for gm in self.parts]
        return torch.stack(logp, dim=1) + torch.log(self.prior).to(x)


# -- sampling ----------------------------------------------------------------------


def sample_conditional(
    model: ConditionalScoreModel | ScoreModel,
    labels,
    sampler: str = "heun",
    steps: int | None = None,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    *,
    scale: float = 1.0,
    classifier: Callable | None = None,
    data_shape: tuple[int, ...] | None = None,
    **kwargs,
) -> SampleResult:
    r"""Draw one sample per label with any sampler of :func:`scorekit.samplers.sample`.

    Without ``classifier``: classifier-free guidance of a :class:`ConditionalScoreModel`
    with scale :math:`\gamma` = ``scale``. With ``classifier``: classifier guidance
    :math:`s + \gamma\nabla\log p_\phi(y\mid x_t)` of ``model`` (an unconditional
    :class:`~scorekit.core.parametrize.ScoreModel`, or a conditional model at :math:`\gamma = 1`).

    Arguments:
        model, labels: the model and labels of shape ``(n,)``.
        sampler, steps, generator: as in :func:`~scorekit.samplers.sample`.
        batch_size: chunk size; labels follow their chunk. With a ``generator``, chunk
            ``i`` is sampled with its own seed drawn from ``generator`` (so the same seed and
            ``batch_size`` give the same samples).
        data_shape: per-sample shape ``D`` when the model does not carry one.
        **kwargs: passed on to :func:`~scorekit.samplers.sample` (``grid``, ``dtype``,
            sampler options, ...).

    Returns:
        :class:`~scorekit.samplers.SampleResult` with ``x`` of shape ``(n, *D)``.

    Example:
        >>> import scorekit as sk
        >>> mix = sk.GaussianMixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], stds=0.3)
        >>> model = ExactConditional(mix, [0, 1], sk.VP())  # component k is class k
        >>> y = torch.tensor([0, 1, 1])
        >>> r = sample_conditional(model, y, "heun", 10, torch.Generator().manual_seed(0))
        >>> (r.x[:, 0] > 0).long().tolist()
        [0, 1, 1]
    """
    if classifier is None and not isinstance(model, ConditionalScoreModel):
        raise ValueError(
            f"guidance without a classifier needs a ConditionalScoreModel, got the "
            f"unconditional {type(model).__name__}: pass classifier= for classifier guidance"
        )
    if not isinstance(model, (ConditionalScoreModel, ScoreModel)):
        raise ValueError(f"model must be a scorekit model, got {type(model).__name__}")
    if isinstance(model, ConditionalScoreModel):
        y = check_labels("labels", labels, model.num_classes)
        shape = model.data_shape if data_shape is None else tuple(data_shape)
    else:
        y = check_labels("labels", labels, 2**62)
        shape = data_shape
        if shape is None:
            target = getattr(model, "target", None)
            shape = (target.dim,) if target is not None else getattr(model.net, "data_shape", None)
    if shape is None:
        raise ValueError("the data shape is unknown: pass data_shape=(...)")
    n = y.shape[0]
    bs = n if batch_size is None else check_int("batch_size", batch_size, minimum=1)

    def bound(yc: Tensor) -> ScoreModel:
        if classifier is None:
            return model.bind(yc, scale)
        base = model.bind(yc, 1.0) if isinstance(model, ConditionalScoreModel) else model
        return ClassifierGuided(base, classifier, yc, scale)

    outs, trajs, nfe, info = [], [], 0, {}
    for start in range(0, n, bs):
        yc = y[start : start + bs]
        child = generator
        if generator is not None and bs < n:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
            child = torch.Generator(device=generator.device).manual_seed(seed)
        res = sample(bound(yc), (len(yc), *shape), sampler, steps, child, **kwargs)
        outs.append(res.x)
        trajs.append(res.trajectory)
        nfe, info = nfe + res.nfe, res.info
    traj = torch.cat(trajs, dim=1) if trajs[0] is not None else None
    return SampleResult(torch.cat(outs), nfe, traj, dict(info, chunks=math.ceil(n / bs)))

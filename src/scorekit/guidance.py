r"""Class-conditional score models and guidance.

A class-conditional network takes integer labels as an input like ``x`` and ``t``,
``net(x, t, y=labels)`` with ``y`` of shape ``(B,)`` in :math:`\{0, \dots, K-1\}` (every
``scorekit.nets`` network with ``num_classes=K``); the reserved *null* label :math:`y = K`,
or no ``y`` at all, means "no label", i.e. the unconditional score, learned by dropping
labels during training (:class:`~scorekit.losses.LabelDropout`). A
:class:`~scorekit.core.parametrize.ScoreModel` passes ``y`` through, and
``scorekit.sample(model, n, cond={"y": labels})`` splits the labels with the samples, so
every sampler runs on a conditional model unchanged. Guidance is a model wrapper that reads
the same conditioning.

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

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ._validate import check_finite, check_int
from .core.distributions import GaussianMixture
from .core.parametrize import ScoreModel
from .core.processes import Process

__all__ = [
    "AutoGuidance",
    "ClassifierFreeGuidance",
    "ClassifierGuided",
    "ExactClassifier",
    "ExactConditional",
    "check_labels",
    "class_mixtures",
    "num_classes_of",
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


def num_classes_of(model) -> int | None:
    r"""The number of classes :math:`K` of a class-conditional model (the null label is
    :math:`K`): the ``num_classes`` of the model or of the network inside it, through
    wrappers such as EDM preconditioning; ``None`` for an unconditional model. The first
    object on the way that has a ``num_classes`` attribute answers (``None`` there means
    unconditional)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch module (a ScoreModel), got {type(model).__name__}")
    for _ in range(16):
        if model is None:
            return None
        if hasattr(model, "num_classes"):
            k = model.num_classes
            return k if isinstance(k, int) and not isinstance(k, bool) else None
        model = getattr(model, "net", None) or getattr(model, "model", None)
    return None


class ClassifierFreeGuidance(ScoreModel):
    r"""Classifier-free guidance of a class-conditional model with scale :math:`\gamma`:
    predicts :math:`u + \gamma (c - u)`, :math:`c` the prediction for the labels ``y`` of
    each call's conditioning and :math:`u` the unconditional one (the null label), in the
    model's own parametrisation (the weights sum to one, so it is the same combination of
    scores; for an energy model, of energies). One batched network pass of twice the batch
    per call, unless :math:`\gamma = 1` (plain conditional) or no ``y`` is given
    (unconditional).

    Arguments:
        model: a class-conditional :class:`~scorekit.core.parametrize.ScoreModel` whose
            network knows its ``num_classes`` (e.g. ``MLP(..., num_classes=K)``), trained with
            label dropout so that the null label gives the unconditional score.
        scale: :math:`\gamma` (finite; 0 unconditional, 1 conditional, > 1 sharper).

    Example:
        >>> import torch, scorekit as sk
        >>> mix = sk.GaussianMixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], stds=0.3)
        >>> model = ClassifierFreeGuidance(ExactConditional(mix, [0, 1], sk.VP()), 2.0)
        >>> y = torch.tensor([0, 1, 1])
        >>> r = sk.sample(model, 3, "heun", 10, torch.Generator().manual_seed(0), cond={"y": y})
        >>> (r.x[:, 0] > 0).long().tolist()
        [0, 1, 1]
    """

    def __init__(self, model: ScoreModel, scale: float = 1.0):
        if not isinstance(model, ScoreModel):
            raise ValueError(f"model must be a scorekit ScoreModel, got {type(model).__name__}")
        k = num_classes_of(model)
        if k is None:
            raise ValueError(
                f"classifier-free guidance needs a class-conditional model (num_classes), got "
                f"{type(model).__name__} (an unconditional model: use ClassifierGuided)"
            )
        scale = float(scale)
        check_finite("scale", torch.tensor(scale))
        super().__init__(None, model.process, model.prediction, model.data_shape)
        self.model, self.scale, self.num_classes = model, scale, k
        self.normalizer = model.normalizer

    def _own(self, x: Tensor, t: Tensor, **cond) -> Tensor:
        """The model's output in its own parametrisation (an energy for an energy model)."""
        if self.prediction == "energy":
            return self.model.energy(x, t, **cond)
        return self.model.predict(x, t, self.prediction, **cond)

    def raw(self, x: Tensor, t: Tensor, y: Tensor | None = None, **cond) -> Tensor:
        if y is None or self.scale == 1.0:
            return self._own(x, t, y=y, **cond)
        null = torch.full_like(y, self.num_classes)
        if self.scale == 0.0:
            return self._own(x, t, y=null, **cond)
        both = self._own(torch.cat([x, x]), torch.cat([t, t]), y=torch.cat([y, null]),
                         **_twice(cond))  # fmt: skip
        c, u = both.chunk(2)
        return u + self.scale * (c - u)


def _twice(cond: dict) -> dict:
    return {
        k: torch.cat([v, v]) if isinstance(v, Tensor) and v.dim() else v for k, v in cond.items()
    }


class AutoGuidance(ScoreModel):
    r"""Autoguidance: a model guided by a weaker version of itself (Karras et al. 2024),

    .. math:: \tilde D(x, t) = D_0(x, t) + w\,\big(D_1(x, t) - D_0(x, t)\big),

    :math:`D_1` the model, :math:`D_0` the guide — the same task learned worse (fewer
    training steps, a smaller network), whose errors resemble the model's own but larger —
    and :math:`w` the scale. In scores, :math:`\tilde s = s_1 + (w - 1)\,(s_1 - s_0)
    = \nabla \log p_1 + (w-1) \nabla \log (p_1 / p_0)`: the samples move away from where the
    weaker model puts too much mass, towards where the model is sure. Unlike classifier-free
    guidance it needs no labels, so it serves unconditional models; :math:`w = 1` is the
    model alone and :math:`w = 0` the guide alone. The weights sum to one, so the
    combination is the same in the score, eps, x0 or v parametrisation; it is formed in the
    model's own (the guide's prediction is converted to it; of two energy models, the
    energies combine, :math:`E_0 + w (E_1 - E_0)`). Two network passes per call.

    Arguments:
        model: the :class:`~scorekit.core.parametrize.ScoreModel` to sample.
        guide: a weaker ScoreModel of the same process and data shape (for instance an
            earlier snapshot of the same run: ``scorekit ema RUN --step S``); an
            unconditional guide of a conditional model is called without ``y``.
        scale: :math:`w` (finite; the paper's best image-quality settings use 1.5–3).

    References:
        Karras, Aittala, Kynkäänniemi, Lehtinen, Aila & Laine, "Guiding a Diffusion Model
        with a Bad Version of Itself", NeurIPS 2024, Eq. 2 and Sec. 3.

    Example:
        >>> import torch, scorekit as sk
        >>> p = sk.GaussianMixture([1.0], [[0.0]], stds=1.0)
        >>> wide = sk.GaussianMixture([1.0], [[0.0]], stds=1.5)
        >>> m = AutoGuidance(sk.ExactScore(p, sk.VP()), sk.ExactScore(wide, sk.VP()), 2.0)
        >>> x = torch.ones(1, 1)
        >>> round(float(m.score(x, 0.0)), 4)  # 2 * (-1/1) - (-1/2.25)
        -1.5556
    """

    def __init__(self, model: ScoreModel, guide: ScoreModel, scale: float = 2.0):
        for name, m in (("model", model), ("guide", guide)):
            if not isinstance(m, ScoreModel):
                raise ValueError(f"{name} must be a scorekit ScoreModel, got {type(m).__name__}")
        if model.process.config() != guide.process.config():
            raise ValueError(
                f"guide must use the model's process, got {guide.process.config()} against "
                f"{model.process.config()}"
            )
        if None not in (model.data_shape, guide.data_shape) and (
            model.data_shape != guide.data_shape
        ):
            raise ValueError(
                f"guide must model the same data shape, got {guide.data_shape} against "
                f"{model.data_shape}"
            )
        scale = float(scale)
        check_finite("scale", torch.tensor(scale))
        prediction = model.prediction
        if prediction == "energy" and guide.prediction != "energy":
            prediction = "score"  # an energy and a score combine as scores
        super().__init__(None, model.process, prediction, model.data_shape or guide.data_shape)
        self.model, self.guide, self.scale = model, guide, scale
        self.normalizer = model.normalizer
        self._guide_takes_y = num_classes_of(guide) is not None

    def _own(self, m: ScoreModel, x: Tensor, t: Tensor, **cond) -> Tensor:
        """``m``'s output in this wrapper's parametrisation (energies of two energy models)."""
        if self.prediction == "energy":
            return m.energy(x, t, **cond)
        return m.predict(x, t, self.prediction, **cond)

    def raw(self, x: Tensor, t: Tensor, **cond) -> Tensor:
        d1 = self._own(self.model, x, t, **cond)
        if self.scale == 1.0:
            return d1
        if not self._guide_takes_y:
            cond = {k: v for k, v in cond.items() if k != "y"}
        d0 = self._own(self.guide, x, t, **cond)
        return d0 + self.scale * (d1 - d0)


class ClassifierGuided(ScoreModel):
    r"""Classifier guidance: :math:`\tilde s = s(x, t) + \gamma \nabla_x \log
    \operatorname{softmax}(c(x, t))_y`, one backward pass through the classifier per call,
    with the labels ``y`` of each call's conditioning (``cond={"y": labels}``).

    Arguments:
        model: any :class:`~scorekit.core.parametrize.ScoreModel`; a class-conditional one
            also receives ``y`` (then :math:`s(x, t \mid y)` is guided), an unconditional one
            does not.
        classifier: ``classifier(x, t) -> logits`` of shape ``(B, K)``, trained on noised
            inputs (:math:`x_t`, ``t`` of shape ``(B,)``).
        scale: :math:`\gamma \ge 0`.
    """

    def __init__(self, model: ScoreModel, classifier: Callable, scale: float = 1.0):
        if not isinstance(model, ScoreModel):
            raise ValueError(f"model must be a scorekit ScoreModel, got {type(model).__name__}")
        if not callable(classifier):
            raise ValueError(f"classifier must be callable, got {type(classifier).__name__}")
        super().__init__(None, model.process, "score", model.data_shape)
        self.model = model
        self.normalizer = model.normalizer
        self.classifier = classifier
        self.scale = float(scale)
        check_finite("scale", torch.tensor(self.scale))
        self._labels_to_model = num_classes_of(model) is not None

    def log_prob_label(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        r""":math:`\log p_\phi(y \mid x_t)`, shape ``(B,)``."""
        if y.shape != (x.shape[0],):
            raise ValueError(f"y must have shape (B,) = ({x.shape[0]},), got {tuple(y.shape)}")
        logits = self.classifier(x, t)
        if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
            raise ValueError(
                f"classifier must return logits of shape (B, K), got {tuple(logits.shape)}"
            )
        y = y.to(device=x.device, dtype=torch.long)
        return torch.log_softmax(logits, dim=1).gather(1, y[:, None])[:, 0]

    def raw(self, x: Tensor, t: Tensor, y: Tensor, **cond) -> Tensor:
        if self._labels_to_model:
            cond = {**cond, "y": y}
        s = self.model.predict(x, t, "score", **cond)
        if self.scale == 0.0:
            return s
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            xi = x if x.requires_grad else x.detach().requires_grad_(True)
            lp = self.log_prob_label(xi, t, y)
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


class ExactConditional(ScoreModel):
    r"""The exact conditional score :math:`\nabla_x \log p_t(x \mid y)` of a Gaussian
    mixture whose components are grouped into classes (see :func:`class_mixtures`), called
    as ``model(x, t, y=labels)``; the null label (``y = K``, or no ``y``) gives the full
    mixture's score. Its guided scores are exact targets:
    :math:`\nabla\log p_t(x) + \gamma\,\nabla\log p_t(y \mid x)`."""

    def __init__(self, mixture: GaussianMixture, classes, process: Process):
        prior, parts = class_mixtures(mixture, classes)
        super().__init__(None, process, "score", (mixture.dim,))
        self.mixture, self.prior, self.parts = mixture, prior, parts
        self.num_classes = len(parts)

    def raw(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        alpha, sigma = self.process.marginal(t)
        if y is None:
            return self.mixture.noised_score(x, alpha, sigma)
        # every class's score, then each row's own (no values read: no host sync)
        every = [gm.noised_score(x, alpha, sigma) for gm in (*self.parts, self.mixture)]
        pick = y.to(device=x.device, dtype=torch.long).reshape((1, -1) + (1,) * (x.dim() - 1))
        return torch.stack(every).gather(0, pick.expand((1, *x.shape)))[0]


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

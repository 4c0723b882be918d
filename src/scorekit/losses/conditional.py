r"""Objectives for labelled data: label dropout for classifier-free guidance, and the
cross-entropy of a noise-conditional classifier for classifier guidance.

The labels are conditioning like any other (``objective(model, x0, y=labels)``), from a
dataset of ``(x, y)`` pairs (:class:`~scorekit.train.Trainer` reads them from a
``torch.utils.data.Dataset``).

- :class:`LabelDropout` replaces each label by the null label :math:`K` with probability
  :math:`p` before the wrapped objective sees it, so that one network learns both
  :math:`s(x, t \mid y)` and :math:`s(x, t)`, as classifier-free guidance needs
  (Ho & Salimans 2022).
- :class:`ClassifierObjective`: :math:`\ell = -\log\operatorname{softmax}(c_\phi(x_t, t))_y`
  on noised inputs :math:`x_t = \alpha(t) x_0 + \sigma(t)\varepsilon` (Dhariwal & Nichol 2021).

References:
    Ho & Salimans, "Classifier-Free Diffusion Guidance", 2022.
    Dhariwal & Nichol, "Diffusion Models Beat GANs on Image Synthesis", NeurIPS 2021.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validate import check_int, check_range
from ..core.parametrize import ScoreModel
from ..core.processes import Process
from ..core.random import rand, randn
from ..core.weighting import UniformT

__all__ = ["ClassifierObjective", "LabelDropout"]


class LabelDropout:
    r"""An objective whose labels are dropped to the null label with probability ``p``:
    :math:`\ell(x_0, y) = \ell_{obj}(x_0 \mid \tilde y)`, :math:`\tilde y = K` with
    probability :math:`p`, else :math:`y`.

    Arguments:
        objective: any objective of :mod:`scorekit.losses`.
        num_classes: :math:`K`; the null label is :math:`K` (as in ``scorekit.nets``).
        p: the dropout probability, in :math:`[0, 1]` (Ho & Salimans use 0.1-0.2).
        key: the name of the labels in the conditioning.

    Example:
        >>> import torch, scorekit as sk
        >>> obj = LabelDropout(sk.make_objective("dsm", sk.VP()), num_classes=3, p=0.5)
        >>> model = sk.ScoreModel(sk.MLP(2, hidden=8, depth=1, num_classes=3), sk.VP(), "eps")
        >>> obj(model, torch.randn(4, 2), y=torch.tensor([0, 1, 2, 0])).shape
        torch.Size([4])
    """

    def __init__(self, objective, num_classes: int, p: float = 0.1, key: str = "y"):
        if not callable(objective) or not hasattr(objective, "sample_t"):
            raise ValueError(f"objective must be a scorekit objective, got {objective!r}")
        self.objective = objective
        self.process: Process = objective.process
        self.num_classes = check_int("num_classes", num_classes)
        check_range("label_dropout", float(p), 0.0, 1.0)
        self.p, self.key = float(p), str(key)

    def sample_t(self, batch, generator=None, dtype=torch.float32, device=None) -> Tensor:
        """The wrapped objective's noise levels."""
        return self.objective.sample_t(batch, generator, dtype, device)

    def __call__(self, model, x0: Tensor, t=None, generator=None, **cond) -> Tensor:
        y = cond.get(self.key)
        if y is not None and self.p > 0:
            u = rand(y.shape, generator, torch.float64, y.device)
            cond = {**cond, self.key: torch.where(u < self.p, self.num_classes, y)}
        return self.objective(model, x0, t=t, generator=generator, **cond)

    def __repr__(self) -> str:
        return f"LabelDropout({self.objective!r}, num_classes={self.num_classes}, p={self.p})"


class ClassifierObjective:
    r"""Cross-entropy of a noise-conditional classifier on noised inputs:
    :math:`\ell = -\log\operatorname{softmax}(c_\phi(x_t, t))_y`,
    :math:`x_t = \alpha(t) x_0 + \sigma(t)\varepsilon`, ``t`` uniform on
    ``[t_min, t_max]`` of the process.

    The model is the classifier ``c(x, t) -> logits (B, K)``, or a
    :class:`~scorekit.core.parametrize.ScoreModel` holding it as its ``net`` (how the Trainer
    checkpoints it: ``ScoreModel(classifier, process)``); the labels come as ``y=``.

    Arguments:
        process: the noise process.
        num_classes: :math:`K`.
    """

    def __init__(self, process: Process, num_classes: int):
        if not isinstance(process, Process):
            raise ValueError(f"process must be a scorekit Process, got {type(process).__name__}")
        self.process = process
        self.num_classes = check_int("num_classes", num_classes)
        self.t_sampler = UniformT()

    def sample_t(self, batch, generator=None, dtype=torch.float32, device=None) -> Tensor:
        """``t`` uniform on ``[t_min, t_max]``, shape ``(B,)``."""
        return self.t_sampler.sample(self.process, batch, generator, dtype, device)

    def __call__(self, model, x0: Tensor, t=None, generator=None, y: Tensor = None) -> Tensor:
        if y is None:
            raise ValueError("y: the classifier objective needs the labels (y=...)")
        if t is None:
            t = self.sample_t(x0.shape[0], generator, x0.dtype, x0.device)
        xt = self.process.add_noise(x0, t, randn(x0.shape, generator, x0.dtype, x0.device))
        net = model.net if isinstance(model, ScoreModel) else model
        logits = net(xt, t)
        if logits.shape != (x0.shape[0], self.num_classes):
            raise ValueError(
                f"classifier must return logits of shape (B, {self.num_classes}), "
                f"got {tuple(logits.shape)}"
            )
        return F.cross_entropy(logits, y.to(device=x0.device, dtype=torch.long), reduction="none")

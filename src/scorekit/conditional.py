r"""Training class-conditional models and noise-conditional classifiers.

- :class:`ClassConditional` turns a noise-conditional network ``net(x, t)`` whose noise
  embedding is a submodule ``embed`` (every ``scorekit.nets`` network) into
  ``net(x, t, y)``: the embedding becomes :math:`e(t) + E[y]`, with a learned table
  :math:`E` of :math:`K + 1` rows, the last one for the null label (as ADM adds the class
  embedding to the time embedding, Dhariwal & Nichol 2021).
- Label dropout (:func:`drop_labels`) replaces each label by the null label with
  probability :math:`p`, so that one network learns both :math:`s(x, t \mid y)` and
  :math:`s(x, t)`, as classifier-free guidance needs (Ho & Salimans 2022).
- :class:`ConditionalObjective` and :class:`ClassifierObjective` let
  :class:`scorekit.train.trainer.Trainer`, which sees examples only, train on labelled data: the
  label travels as one extra column of the (flattened) example (:func:`pack_labels`).

References:
    Ho & Salimans, "Classifier-Free Diffusion Guidance", 2022.
    Dhariwal & Nichol, "Diffusion Models Beat GANs on Image Synthesis", NeurIPS 2021.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._validate import check_finite, check_int, check_range, check_tensor
from .core.parametrize import ScoreModel
from .core.processes import Process
from .guidance import ConditionalScoreModel, GuidedScoreModel, check_labels

__all__ = [
    "ClassConditional",
    "ClassifierObjective",
    "ConditionalObjective",
    "drop_labels",
    "labels_from_column",
    "load_conditional",
    "pack_labels",
    "unpack_labels",
]


def drop_labels(
    labels: Tensor, p: float, num_classes: int, generator: torch.Generator | None = None
) -> Tensor:
    r"""Replace each label by the null label ``num_classes`` with probability ``p``."""
    check_range("label_dropout", float(p), 0.0, 1.0)
    if p == 0:
        return labels
    gen_device = generator.device if generator is not None else labels.device
    u = torch.rand(labels.shape, generator=generator, device=gen_device).to(labels.device)
    return torch.where(u < p, torch.full_like(labels, num_classes), labels)


def labels_from_column(table: Tensor, column: int) -> tuple[Tensor, Tensor, Tensor]:
    r"""Split a label column off a table (e.g. a user CSV read by ``scorekit.train.data.load_file``,
    before normalisation).

    Arguments:
        table: shape ``(N, F)``, ``F >= 2``.
        column: index of the label column (negative counts from the end).

    Returns:
        ``(x, labels, classes)``: the other columns ``(N, F - 1)``; labels ``(N,)`` in
        ``[0, K)``, the rank of each row's value among the ``K`` distinct values
        ``classes`` (sorted, shape ``(K,)``), so ``classes[labels]`` is the column.
    """
    check_tensor("table", table, min_dim=2)
    if table.dim() != 2 or table.shape[1] < 2:
        raise ValueError(f"table must have shape (N, F) with F >= 2, got {tuple(table.shape)}")
    F_ = table.shape[1]
    if isinstance(column, bool) or not isinstance(column, int) or not -F_ <= column < F_:
        raise ValueError(f"column must be an integer in [{-F_}, {F_ - 1}], got {column!r}")
    col = table[:, column]
    classes, labels = torch.unique(col, sorted=True, return_inverse=True)
    keep = [j for j in range(F_) if j != column % F_]
    return table[:, keep], labels, classes


def pack_labels(x: Tensor, labels: Tensor) -> Tensor:
    r"""Examples ``x`` of shape ``(N, *D)`` and integer labels ``(N,)`` as one float tensor
    of shape ``(N, prod(D) + 1)``, the label last (exact in float32 below :math:`2^{24}`)."""
    check_tensor("x", x, min_dim=2)
    check_finite("x", x)
    y = check_labels("labels", labels, 2**24, batch=x.shape[0])
    return torch.cat([x.reshape(x.shape[0], -1).float(), y[:, None].float()], dim=1)


def unpack_labels(packed: Tensor, data_shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    r"""Invert :func:`pack_labels`: ``(x of shape (B, *data_shape), labels (B,))``."""
    d = math.prod(data_shape)
    if packed.dim() != 2 or packed.shape[1] != d + 1:
        raise ValueError(
            f"packed must have shape (B, {d + 1}) for data_shape {tuple(data_shape)}, "
            f"got {tuple(packed.shape)}"
        )
    return packed[:, :d].reshape(-1, *data_shape), packed[:, d].round().long()


class _LabelledEmbedding(nn.Module):
    def __init__(self, embed: nn.Module, num_classes: int, width: int):
        super().__init__()
        self.embed = embed
        self.table = nn.Embedding(num_classes + 1, width)
        nn.init.normal_(self.table.weight, std=0.02)
        self.labels: Tensor | None = None

    def forward(self, t: Tensor) -> Tensor:
        if self.labels is None:
            raise RuntimeError("ClassConditional's embedding was called without labels")
        e = self.embed(t)
        return e + self.table(self.labels.to(e.device)).to(e.dtype)


class ClassConditional(nn.Module):
    r"""``net(x, t, y)`` from a network ``net(x, t)`` with a noise embedding submodule
    ``embed`` (output ``(B, E)``): the embedding becomes :math:`e(t) + E[y]`.

    Arguments:
        net: e.g. ``scorekit.nets.MLP`` or ``UNet`` (modified in place: its ``embed`` is
            wrapped).
        num_classes: :math:`K`; labels in ``[0, K]``, :math:`K` the null label.

    Use as ``ConditionalScoreModel(ClassConditional(net, K), process, K, prediction)``.
    """

    def __init__(self, net: nn.Module, num_classes: int):
        super().__init__()
        self.num_classes = check_int("num_classes", num_classes)
        if not isinstance(net, nn.Module):
            raise ValueError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        embeds = [(m, n) for m in net.modules() for n, c in m.named_children() if n == "embed"]
        if len(embeds) != 1:
            raise ValueError(
                f"net must have exactly one noise embedding submodule 'embed', found "
                f"{len(embeds)} in {type(net).__name__}"
            )
        parent, name = embeds[0]
        embed = getattr(parent, name)
        last = [m for m in embed.modules() if isinstance(m, nn.Linear)]
        if not last:
            raise ValueError("net.embed must end in an nn.Linear to know its width")
        self._embedding = _LabelledEmbedding(embed, self.num_classes, last[-1].out_features)
        setattr(parent, name, self._embedding)
        self.net = net
        self.data_shape = getattr(net, "data_shape", None)

    def config(self) -> dict:
        inner = self.net.config() if hasattr(self.net, "config") else type(self.net).__name__
        return {"name": "class_conditional", "num_classes": self.num_classes, "net": inner}

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        self._embedding.labels = y
        try:
            return self.net(x, t)
        finally:
            self._embedding.labels = None


class ConditionalObjective:
    r"""A noise-conditional objective (``scorekit.losses``) for a
    :class:`~scorekit.guidance.ConditionalScoreModel`, trained by
    :class:`~scorekit.train.trainer.Trainer` on :func:`pack_labels` data with label dropout:
    :math:`\ell(x_0, y) = \ell_{obj}(s_\theta(\cdot \mid \tilde y), x_0)`, :math:`\tilde y`
    the label dropped to null with probability ``label_dropout``.

    The Trainer needs a :class:`~scorekit.core.parametrize.ScoreModel`; give it
    :meth:`trainable`, which holds the conditional model's parameters.
    """

    def __init__(self, objective, data_shape: tuple[int, ...], label_dropout: float = 0.1):
        if not callable(objective) or not hasattr(objective, "sample_t"):
            raise ValueError(f"objective must be a scorekit objective, got {objective!r}")
        self.objective = objective
        self.process = objective.process
        self.data_shape = tuple(int(d) for d in data_shape)
        self.label_dropout = float(label_dropout)
        check_range("label_dropout", self.label_dropout, 0.0, 1.0)

    @staticmethod
    def trainable(model: ConditionalScoreModel) -> GuidedScoreModel:
        """A ScoreModel holding ``model`` (its parameters, for the Trainer and its EMA)."""
        if not isinstance(model, ConditionalScoreModel):
            raise ValueError(f"model must be a ConditionalScoreModel, got {type(model).__name__}")
        return model.bind(torch.zeros(1, dtype=torch.long))

    def meta(self) -> dict:
        """What :func:`load_conditional` needs beyond the model config: pass it to the
        Trainer as ``meta=objective.meta()``."""
        return {
            "conditional": {
                "data_shape": list(self.data_shape),
                "label_dropout": self.label_dropout,
            }
        }

    def sample_t(self, batch, generator=None, dtype=None, device=None) -> Tensor:
        return self.objective.sample_t(batch, generator=generator, dtype=dtype, device=device)

    def __call__(self, model: GuidedScoreModel, packed: Tensor, t=None, generator=None) -> Tensor:
        cond = model.net.cond
        if self.label_dropout > 0 and not cond.null_label:
            raise ValueError("label dropout needs a ConditionalScoreModel with null_label=True")
        x0, y = unpack_labels(packed, self.data_shape)
        check_labels("labels", y, cond.num_classes)
        y = drop_labels(y, self.label_dropout, cond.num_classes, generator)
        return self.objective(cond.bind(y), x0, t=t, generator=generator)


class ClassifierObjective:
    r"""Cross-entropy of a noise-conditional classifier on noised inputs:
    :math:`\ell = -\log\operatorname{softmax}(c_\phi(x_t, t))_y`,
    :math:`x_t = \alpha(t) x_0 + \sigma(t)\varepsilon`, ``t`` uniform on
    ``[t_min, t_max]`` of the process; data packed by :func:`pack_labels`.

    The Trainer needs a :class:`~scorekit.core.parametrize.ScoreModel`; give it
    :meth:`trainable`, a container of the classifier (its ``net``), not a score.
    """

    def __init__(self, process: Process, data_shape: tuple[int, ...], num_classes: int):
        if not isinstance(process, Process):
            raise ValueError(f"process must be a scorekit Process, got {type(process).__name__}")
        self.process = process
        self.data_shape = tuple(int(d) for d in data_shape)
        self.num_classes = check_int("num_classes", num_classes)

    def trainable(self, classifier: nn.Module) -> ScoreModel:
        """``classifier(x, t) -> logits (B, K)`` held in a ScoreModel for the Trainer."""
        return ScoreModel(classifier, self.process, "score")

    def sample_t(self, batch, generator=None, dtype=None, device=None) -> Tensor:
        gen_device = generator.device if generator is not None else device
        u = torch.rand(batch, generator=generator, dtype=dtype, device=gen_device).to(device)
        return self.process.t_min + (self.process.t_max - self.process.t_min) * u

    def __call__(self, model: ScoreModel, packed: Tensor, t=None, generator=None) -> Tensor:
        x0, y = unpack_labels(packed, self.data_shape)
        check_labels("labels", y, self.num_classes)
        if t is None:
            t = self.sample_t(x0.shape[0], generator, x0.dtype, x0.device)
        gen_device = generator.device if generator is not None else x0.device
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=gen_device)
        xt = self.process.add_noise(x0, t, eps.to(x0.device))
        logits = model.net(xt, t)
        if logits.shape != (x0.shape[0], self.num_classes):
            raise ValueError(
                f"classifier must return logits of shape (B, {self.num_classes}), "
                f"got {tuple(logits.shape)}"
            )
        return F.cross_entropy(logits, y, reduction="none")


def load_conditional(
    path: str | Path, *, ema: bool = True, device: str | torch.device = "cpu"
) -> tuple[ConditionalScoreModel, object, dict]:
    r"""Load a :class:`~scorekit.guidance.ConditionalScoreModel` saved by the Trainer
    (trained through :class:`ConditionalObjective` with ``meta=objective.meta()``, as
    ``scorekit train --conditional`` does).

    The tensors are checked against the configuration before the network is built
    (:func:`scorekit.train.checkpoint.check_state`: names, shapes, finite values), so a damaged or
    mismatched file gives a ``ValueError`` naming it.

    Returns:
        ``(model, normalizer, meta)``, the model in eval mode with the EMA weights when
        ``ema`` and present.
    """
    from .core.processes import from_config
    from .nets import build_net
    from .train.checkpoint import check_state, load_checkpoint, load_state, prefixed
    from .train.data import Normalizer

    tensors, meta = load_checkpoint(path)
    what = f"checkpoint {path}"
    cfg = meta.get("model")
    net_cfg = cfg.get("net") if isinstance(cfg, dict) else None
    inner = net_cfg.get("net") if isinstance(net_cfg, dict) else None
    if (
        not isinstance(inner, dict)
        or net_cfg.get("name") != "conditional"
        or inner.get("name") != "class_conditional"
    ):
        raise ValueError(
            f"{what} does not hold a ClassConditional ConditionalScoreModel "
            f"(model net config {net_cfg!r})"
        )
    if not {"process", "prediction"} <= set(cfg):
        raise ValueError(f"{what} has a model config without 'process' and 'prediction'")
    k = net_cfg.get("num_classes")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or inner.get("num_classes") != k:
        raise ValueError(
            f"{what} has num_classes {k!r} (inner {inner.get('num_classes')!r}), "
            "expected one integer >= 1"
        )
    stored = meta.get("conditional")
    shape = stored.get("data_shape") if isinstance(stored, dict) else None
    if shape is not None and (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)
    ):
        raise ValueError(f"{what} has data_shape {shape!r}, expected a list of ints >= 1")
    shape = None if shape is None else tuple(shape)
    process = from_config(cfg["process"])
    null_label = bool(net_cfg.get("null_label", True))

    def build() -> ConditionalScoreModel:
        net = ClassConditional(build_net(inner.get("net")), k)
        return ConditionalScoreModel(net, process, k, cfg["prediction"], null_label, shape)

    state = prefixed(tensors, "ema") if ema else {}
    state = state or prefixed(tensors, "model")
    # The Trainer saved ConditionalObjective.trainable(model), whose only tensors are the
    # conditional model's, under "net.cond."; check them on the meta device first.
    skeleton = lambda: nn.ModuleDict({"net": nn.ModuleDict({"cond": build()})})  # noqa: E731
    check_state(skeleton, state, inner.get("net"), what)
    cond = build()
    load_state(ConditionalObjective.trainable(cond), state, what)
    normalizer = Normalizer.from_config(meta.get("normalizer", {"loc": 0.0, "scale": 1.0}))
    if shape is not None:
        normalizer.check_shape(shape, f"{what}'s normalizer")
    return cond.to(device).eval(), normalizer, meta

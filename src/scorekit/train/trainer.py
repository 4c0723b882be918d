r"""The training loop: AdamW, learning-rate schedules, step and time budgets, clipping,
EMA, per-σ logging, callbacks, checkpoints, DDP.

One step draws a global batch of ``batch_size`` examples (indices uniform with
replacement) with their conditioning (labels of a dataset of ``(x, y)`` pairs), splits it
into ``world_size × accum`` shards, and on each shard ``k`` draws :math:`t \sim`
``objective.sample_t`` and the objective's noise from a generator seeded by
``(seed, step, k)``. So the randomness of a run is a function of the step, which makes
``resume`` exact (bit-identical on CPU in float32), and a run on :math:`W` processes
(``torchrun --nproc_per_node=W``, DistributedDataParallel, gloo on CPU / nccl on GPU)
sees the same examples and noise as one process with ``accum = W`` — equal up to the order
of floating-point sums.

The loss minimised is the mean of the objective's per-example values. The learning rate
follows ``schedule``: ``"constant"`` :math:`\eta`; ``"warmup"`` (default) the linear ramp
:math:`\eta_n = \eta \min(1, (n+1)/n_w)`; ``"cosine"`` that ramp times
:math:`\tfrac12(1 + \cos \pi c)`, decaying to zero at the end of the budget, with
:math:`c \in [0, 1]` the fraction of the budget spent (steps, or seconds of ``clock``,
whichever is further; Loshchilov & Hutter 2017). Gradients are clipped to a global norm;
the EMA of the weights (:class:`~scorekit.train.ema.EMA`) is kept and saved, and with
``posthoc_ema`` the power-function averages of :mod:`~scorekit.train.posthoc` too, stored
as snapshots in ``OUT/posthoc/`` for choosing the average's length after training. Every
``log_every`` steps one JSON line goes to ``log.jsonl`` with the mean loss and the mean loss
per bucket of :math:`\log\sigma` (geometric edges between :math:`\sigma(t_{min})` and
:math:`\sigma(t_{max})`), and every callback is called with that record.

No step reads a value on the host: the gradient norm, the non-finite test, the skipped
count, the per-σ sums and the EMA's count stay on the device, a non-finite step is skipped
there (the fused AdamW's ``found_inf``), and the values are read at the logging interval,
before a checkpoint and at the end (where a non-finite step under ``on_nonfinite="stop"``
raises :class:`NonFiniteLoss`, naming it).

References:
    Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (AdamW), 2019;
    Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts" (cosine),
    ICLR 2017; Song & Ermon (2020) for EMA; Li et al., "PyTorch Distributed", VLDB 2020.
"""

from __future__ import annotations

import gc
import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .._validate import check_choice, check_int, check_positive
from ..core.parametrize import ScoreModel
from ..noise.diagnostics import bucket_sums
from .checkpoint import (
    is_legacy_conditional,
    load_checkpoint,
    load_state,
    model_config,
    prefixed,
    save_checkpoint,
    write_atomic,
)
from .data import Normalizer
from .distributed import init_distributed
from .ema import EMA
from .posthoc import PowerEMA, remove_snapshots, save_snapshot, sigma_rel_to_gamma, snapshots

__all__ = [
    "NonFiniteLoss",
    "TrainConfig",
    "Trainer",
]


class NonFiniteLoss(RuntimeError):
    """Raised when a step's loss or gradient is NaN or infinite (``on_nonfinite="stop"``)."""


SCHEDULES = ("constant", "warmup", "cosine")
CLOCKS = ("wall", "process")


@dataclass
class TrainConfig:
    r"""Settings of :class:`Trainer` (all JSON-able; stored in every checkpoint).

    ``steps`` and ``seconds`` bound the run (it stops at the first one reached; ``steps=None``
    with a time budget runs until the time is spent); ``clock`` measures the seconds:
    ``"wall"`` time or this ``"process"``'s CPU time (comparable on a shared machine).
    ``schedule`` is ``"constant"``, ``"warmup"`` or ``"cosine"`` (see the module docstring).
    With validation data, the validation loss is measured every ``val_every`` steps (default
    ``ckpt_every``) over ``val_draws`` fixed draws of noise level and noise per example.
    ``posthoc_ema`` lists the relative widths :math:`\sigma_{rel}` of power-function
    averages kept beside the EMA and stored every ``posthoc_every`` steps (default
    ``ckpt_every``) in ``OUT/posthoc/``, from which :func:`~scorekit.train.posthoc.reconstruct`
    builds the average of any other width after training (EDM2: ``(0.05, 0.10)``).
    """

    steps: int | None = 2000
    seconds: float | None = None
    clock: str = "wall"
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.0
    schedule: str = "warmup"
    warmup: int = 100
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    bf16: bool = False
    accum: int = 1
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 1000
    sigma_buckets: int = 8
    on_nonfinite: str = "stop"
    progress: bool = True
    val_every: int | None = None
    val_draws: int = 4
    posthoc_ema: tuple[float, ...] | list[float] = ()
    posthoc_every: int | None = None

    def __post_init__(self):
        if self.steps is None and self.seconds is None:
            raise ValueError("steps: a run needs a step count or a time budget (seconds)")
        if self.steps is not None:
            check_int("steps", self.steps, minimum=0)
        if self.seconds is not None:
            check_positive("seconds", self.seconds)
        check_choice("clock", self.clock, CLOCKS)
        check_int("batch_size", self.batch_size)
        check_positive("lr", self.lr)
        check_positive("weight_decay", self.weight_decay, strict=False)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_int("warmup", self.warmup, minimum=0)
        if self.grad_clip is not None:
            check_positive("grad_clip", self.grad_clip)
        check_int("accum", self.accum)
        check_int("seed", self.seed, minimum=0)
        check_int("log_every", self.log_every)
        check_int("ckpt_every", self.ckpt_every)
        check_int("sigma_buckets", self.sigma_buckets)
        check_choice("on_nonfinite", self.on_nonfinite, ("stop", "skip"))
        if self.val_every is not None:
            check_int("val_every", self.val_every)
        check_int("val_draws", self.val_draws)
        if isinstance(self.posthoc_ema, (str, bytes)) or not hasattr(self.posthoc_ema, "__iter__"):
            raise ValueError(
                f"posthoc_ema must be a list of widths sigma_rel, got {self.posthoc_ema!r}"
            )
        for s in self.posthoc_ema:
            sigma_rel_to_gamma(s)  # a width the power profile can have
        self.posthoc_ema = [float(s) for s in self.posthoc_ema]
        if self.posthoc_every is not None:
            check_int("posthoc_every", self.posthoc_every)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(
                f"unknown training setting(s) {sorted(unknown)}; known: {sorted(names)}"
            )
        return cls(**d)

    def fraction(self, step: int, seconds: float) -> float:
        """The fraction of the budget spent after ``step`` steps and ``seconds``, in [0, 1]."""
        done = 0.0
        if self.steps:
            done = step / self.steps
        if self.seconds:
            done = max(done, seconds / self.seconds)
        return min(done, 1.0)

    def learning_rate(self, step: int, seconds: float = 0.0) -> float:
        r"""The learning rate of step ``step`` (0-based) after ``seconds`` of the budget."""
        if self.schedule == "constant":
            return self.lr
        scale = min(1.0, (step + 1) / max(self.warmup, 1))
        if self.schedule == "cosine":
            scale *= 0.5 * (1 + math.cos(math.pi * self.fraction(step, seconds)))
        return self.lr * scale

    def done(self, step: int, seconds: float) -> bool:
        """Whether the budget is spent."""
        return (self.steps is not None and step >= self.steps) or (
            self.seconds is not None and seconds >= self.seconds
        )


def _seed(*ints: int) -> int:
    """SplitMix64 of a tuple of non-negative ints: a well-mixed 63-bit seed."""
    h = 0x9E3779B97F4A7C15
    for v in ints:
        h = (h ^ (v & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def _clip_grad(params: list[Tensor], max_norm: float | None) -> Tensor:
    r"""Scale the gradients to global norm at most ``max_norm`` (``None``: no clipping) and
    return the norm before scaling, :math:`\lVert (\lVert g_i \rVert)_i \rVert_2`, as a
    tensor (NaN or inf when a gradient is not finite; nothing is scaled then). Nothing is
    read on the host."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    if max_norm is not None:
        scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        torch._foreach_mul_(grads, torch.where(torch.isfinite(total), scale, 1.0))
    return total


def _remove_stale_temps(folder: Path) -> None:
    """Delete the temporary files (``.NAME.tmpPID``) of :func:`write_atomic` and
    :func:`save_checkpoint` left in ``folder`` by a process that was killed mid-write."""
    for p in folder.glob(".*.tmp*"):
        pid = p.name.rsplit(".tmp", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:  # the writer is gone
            p.unlink(missing_ok=True)
        except OSError:
            continue


class _Loss(nn.Module):
    """The objective as a module, so DistributedDataParallel wraps the whole loss."""

    def __init__(self, model: ScoreModel, objective: Any):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, x0: Tensor, t: Tensor, generator: torch.Generator, **cond) -> Tensor:
        return self.objective(self.model, x0, t=t, generator=generator, **cond)


def _objective_module(objective: Any) -> nn.Module | None:
    """The objective when it has parameters to train or state to keep (a module on top of
    its wrappers: a learned weighting, an adaptive law of sigma); one under a plain wrapper
    would be neither trained nor saved, so it is refused."""
    if isinstance(objective, nn.Module):
        has = any(True for _ in objective.parameters()) or any(True for _ in objective.buffers())
        return objective if has else None
    inner = getattr(objective, "objective", None)
    while inner is not None:
        if isinstance(inner, nn.Module):
            raise ValueError(
                f"objective {type(inner).__name__} has state to learn but is wrapped in "
                f"{type(objective).__name__}; wrap it last, around the other wrappers"
            )
        inner = getattr(inner, "objective", None)
    return None


def _cond_of(item: Any) -> tuple[Any, dict]:
    """``(x, cond)`` of a dataset item or batch: ``x``, ``(x, y)`` (labels) or ``(x, dict)``."""
    if isinstance(item, (tuple, list)):
        if len(item) == 1:
            return item[0], {}
        if len(item) == 2:
            x, c = item
            return x, (dict(c) if isinstance(c, dict) else {"y": c})
        raise ValueError(
            f"data items must be x, (x, y) or (x, cond_dict), got a tuple of {len(item)}"
        )
    return item, {}


class _Source:
    r"""Where batches come from: a tensor ``(N, *D)``, a pair ``(x, y)`` or ``(x, cond)`` of
    tensors with one row per example (``cond`` a dict, e.g. ``{"noise": z}`` for reflow
    pairs), a dataset of tensors (``tensors`` attribute, e.g. ``TensorDataset(x, y)`` or
    :class:`~scorekit.train.data.Dataset`),
    any map-style ``torch.utils.data.Dataset`` of ``x`` / ``(x, y)`` / ``(x, cond)`` items
    (gathered by index: the randomness stays a function of the step), or a ``DataLoader``,
    whose batches are this process's batches as they come (its order is its own: a resumed
    run goes on from a fresh iterator)."""

    def __init__(self, data: Any, device: torch.device):
        self.loader, self.tensors, self.dataset, self.cond = None, None, None, {}
        if isinstance(data, Tensor):
            data = (data,)
        elif isinstance(data, torch.utils.data.DataLoader):
            self.loader, self._it = data, iter(data)
            x, _ = _cond_of(next(iter(data)))
            self._check(x, "data batches")
            self.n, self.data_shape = None, tuple(x.shape[1:])
            return
        elif getattr(data, "tensors", None) is not None:
            data = tuple(data.tensors)
        if isinstance(data, tuple):
            x = data[0]
            self._check(x, "data")
            if len(data) > 2:
                raise ValueError(f"data must hold x and at most labels, got {len(data)} tensors")
            cond = {} if len(data) == 1 else data[1]
            cond = dict(cond) if isinstance(cond, dict) else {"y": cond}
            for k, v in cond.items():
                if not isinstance(v, Tensor) or v.dim() < 1 or v.shape[0] != x.shape[0]:
                    got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
                    raise ValueError(
                        f"data: the conditioning {k!r} must be a tensor with one row per "
                        f"example ({x.shape[0]}), got {got}"
                    )
            self.tensors = (x.to(device, torch.float32),)
            self.cond = {k: v.to(device) for k, v in cond.items()}
            self.n, self.data_shape = x.shape[0], tuple(x.shape[1:])
            return
        if not isinstance(data, torch.utils.data.Dataset) or not hasattr(data, "__len__"):
            raise ValueError(
                f"data must be a tensor (N, *D), a torch Dataset or a DataLoader, got "
                f"{type(data).__name__}"
            )
        self.dataset, self.n, self.device = data, len(data), device
        x, _ = _cond_of(data[0])
        self._check(torch.as_tensor(x)[None], "data items")
        self.data_shape = tuple(torch.as_tensor(x).shape)

    @staticmethod
    def _check(x: Any, what: str) -> None:
        if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] == 0:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{what} must be tensors of shape (N, *D) with N >= 1, got {shape}")

    @property
    def labels(self) -> Tensor | None:
        return self.cond.get("y") if self.tensors is not None else None

    def take(self, idx: Tensor) -> tuple[Tensor, dict]:
        """The examples at ``idx`` and their conditioning (map-style data)."""
        if self.tensors is not None:
            idx = idx.to(self.tensors[0].device)
            return self.tensors[0][idx], {k: v[idx] for k, v in self.cond.items()}
        from torch.utils.data import default_collate

        x, cond = _cond_of(default_collate([self.dataset[i] for i in idx.tolist()]))
        move = lambda v: v.to(self.device) if isinstance(v, Tensor) else v  # noqa: E731
        return move(x).float(), {k: move(v) for k, v in cond.items()}

    def next_batch(self) -> tuple[Tensor, dict]:
        """The next batch of a ``DataLoader`` (a new pass when one ends)."""
        try:
            item = next(self._it)
        except StopIteration:
            self._it = iter(self.loader)
            item = next(self._it)
        return _cond_of(item)


def adamw(params, lr: float, weight_decay: float = 0.0) -> tuple[torch.optim.AdamW, bool]:
    """AdamW with the fused kernel where the device has one (one kernel, its step counter on
    the device and a non-finite step skipped there: no host read per step), else the
    ``foreach`` one; returns the optimiser and whether it is fused."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True), True
    except (RuntimeError, TypeError):  # a device without the fused kernel
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=True), False


class Trainer:
    r"""Train ``model`` on ``data`` with ``objective``; see the module docstring.

    Arguments:
        model: a :class:`~scorekit.core.parametrize.ScoreModel` over a ``scorekit.nets``
            network.
        objective: object with ``.process``, ``.sample_t(B, generator, dtype, device)`` and
            ``__call__(model, x0, t=, generator=, **cond) -> (B,)`` (see ``scorekit.losses``).
        data: training examples in model space: a tensor ``(N, *D)``, a pair ``(x, y)`` or
            ``(x, cond_dict)`` of tensors with one row per example (reflow passes
            ``(samples, {"noise": z})``), a torch ``Dataset`` of ``x``, ``(x, y)`` or
            ``(x, cond_dict)`` items (``TensorDataset(x, labels)``
            for labelled data), or a ``DataLoader`` of such batches.
        config: a :class:`TrainConfig`.
        out_dir: folder for ``checkpoint.safetensors`` / ``.json`` and ``log.jsonl``
            (``None``: nothing is written).
        normalizer: the data normalisation, saved with the checkpoint.
        meta: extra JSON-able information saved with the checkpoint (e.g. data, objective).
        device: where to train (default: the device :func:`init_distributed` reports).
        callbacks: callables ``callback(trainer, record)`` called at every logging interval
            with the JSON record written to ``log.jsonl`` (on every rank), e.g. an evaluation.
        val_data: held-out examples (a tensor, ``(x, y)`` / ``(x, cond)`` pair or dataset of
            tensors, as ``data``): every ``config.val_every`` steps the EMA model's mean loss
            on them (:meth:`validation_loss`) goes into the next log record (``val_loss``)
            and, when it is the lowest so far, the checkpoint is also written to
            ``best.safetensors`` (the keep-best checkpoint, loadable like any other).
    """

    def __init__(
        self,
        model: ScoreModel,
        objective: Any,
        data: Any,
        config: TrainConfig | None = None,
        out_dir: str | Path | None = None,
        *,
        normalizer: Normalizer | None = None,
        meta: dict | None = None,
        device: str | torch.device | None = None,
        callbacks: list | tuple = (),
        val_data: Any = None,
    ):
        if not isinstance(model, ScoreModel):
            raise ValueError(f"model must be a ScoreModel, got {type(model).__name__}")
        self.cfg = config or TrainConfig()
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        shards = self.world * self.cfg.accum
        if self.cfg.batch_size % shards:
            raise ValueError(
                f"batch_size must be divisible by world_size x accum = {shards}, "
                f"got {self.cfg.batch_size}"
            )
        self.device = torch.device(device) if device is not None else init_distributed()[2]
        self.source = _Source(data, self.device)
        self._check_labels(model, objective)
        if model.data_shape is None:  # the model learns the shape of what it is trained on
            model.data_shape = self.source.data_shape
        self.model = model.to(self.device)
        self.objective = objective
        self.process = objective.process
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.normalizer = normalizer or Normalizer()
        self.meta = dict(meta or {})
        self.callbacks = list(callbacks)
        if not all(callable(cb) for cb in self.callbacks):
            raise ValueError("callbacks must be callables callback(trainer, record)")
        self._objective_module = _objective_module(objective)
        if self._objective_module is not None:
            self._objective_module.to(self.device)
        from ..losses.adaptive import AdaptiveSigma

        self._adaptive = objective if isinstance(objective, AdaptiveSigma) else None
        if self._adaptive is not None:
            self._adaptive.update_per_step = True
        self.opt, self._fused = adamw(self._params(), self.cfg.lr, self.cfg.weight_decay)
        self.ema = EMA(self.model, self.cfg.ema_decay, self.cfg.ema_warmup)
        self.posthoc = [PowerEMA(self.model, s) for s in self.cfg.posthoc_ema]
        self._snapshot_step = -1  # the step of the last post-hoc snapshot taken
        self.step, self.elapsed = 0, 0.0
        self.stop_requested = False  # set by request_stop (a signal handler): save and stop
        self.last_checkpoint: tuple[Path, int] | None = None  # (path, step) of the last save
        ends = self.process.sigma(
            torch.tensor([self.process.t_min, self.process.t_max], dtype=torch.float64)
        ).tolist()
        lo, hi = max(ends[0], ends[1] * 1e-6), ends[1]
        self.sigma_edges = torch.logspace(
            math.log10(lo), math.log10(hi), self.cfg.sigma_buckets + 1, dtype=torch.float64
        )
        self._reset_counters(skipped=0)
        self._loss = _Loss(self.model, objective)
        self._val = None
        if val_data is not None:
            val = _Source(val_data, self.device)
            if val.tensors is None or val.data_shape != self.source.data_shape:
                raise ValueError(
                    "val_data must be tensors of examples shaped like the training data "
                    f"{self.source.data_shape}, got {val.data_shape if val.tensors else 'a loader'}"
                )
            self._val = val.take(torch.arange(val.n, device=self.device))
        self.best: tuple[int, float] | None = None  # (step, validation loss) of best.safetensors
        self._val_record: dict | None = None  # the last validation, for the next log record
        self._ddp = None
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # An energy's score -grad_x E does not depend on the output bias: unused there.
            unused = model.prediction == "energy"
            self._ddp = nn.parallel.DistributedDataParallel(
                self._loss, device_ids=ids, find_unused_parameters=unused
            )

    def _params(self) -> list[nn.Parameter]:
        """What the optimiser trains: the model's parameters, then a learned objective's
        (e.g. :class:`~scorekit.losses.UncertaintyWeighted`)."""
        mods = [self.model] + ([self._objective_module] if self._objective_module else [])
        return [p for m in mods for p in m.parameters() if p.requires_grad]

    def _check_labels(self, model: ScoreModel, objective: Any) -> None:
        """Labels of a labelled dataset must be classes of the model (read once, here)."""
        y = self.source.labels
        if y is None:
            return
        from ..guidance import check_labels, num_classes_of

        k = num_classes_of(model)
        if k is None:  # e.g. a noise-conditional classifier's objective knows its classes
            k = getattr(objective, "num_classes", None)
        if k is not None:
            check_labels("data labels", y, k)

    def _reset_counters(self, skipped: int) -> None:
        """The statistics of the run so far, and the steps not yet read (on the device)."""
        self._pending: list[tuple[int, Tensor, Tensor, Tensor]] = []  # (step, t, losses, good)
        self._skipped, self._bad, self._last = skipped, None, math.nan
        self._stats: tuple[Tensor, Tensor] | None = None  # per-sigma sums and counts read

    # -- checkpoints -------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / "checkpoint.safetensors"

    @property
    def best_path(self) -> Path | None:
        """The keep-best checkpoint (lowest validation loss), ``OUT/best.safetensors``."""
        return None if self.out_dir is None else self.out_dir / "best.safetensors"

    @torch.no_grad()
    def validation_loss(self) -> float:
        r"""The EMA model's mean loss on the validation examples over ``val_draws`` fixed
        draws of :math:`t` and noise per example (the same draws at every call, so values
        at different steps differ by the model only). The outer wrappers that only shape
        training, an adaptive law of sigma (:class:`~scorekit.losses.AdaptiveSigma`), a
        learned weighting (:class:`~scorekit.losses.UncertaintyWeighted`) and
        augmentation (:class:`~scorekit.losses.Augmented`), are left out: the value is that
        of the fixed objective on the untransformed examples. Reads one value on the host."""
        if self._val is None:
            raise ValueError("validation_loss needs val_data")
        from ..losses.adaptive import AdaptiveSigma
        from ..losses.augment import Augmented
        from ..losses.uncertainty import UncertaintyWeighted

        obj = self.objective
        while isinstance(obj, (AdaptiveSigma, UncertaintyWeighted, Augmented)):
            obj = obj.objective
        x, cond = self._val
        model = self.ema.module
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        B = self.cfg.batch_size
        for r in range(self.cfg.val_draws):
            for i in range(0, x.shape[0], B):
                xb = x[i : i + B]
                cb = {k: v[i : i + B] for k, v in cond.items()}
                g = torch.Generator(device=self.device).manual_seed(_seed(self.cfg.seed, r, i, 7))
                t = obj.sample_t(xb.shape[0], generator=g, dtype=xb.dtype, device=self.device)
                total += obj(model, xb, t=t, generator=g, **cb).double().sum()
        return float(total) / (x.shape[0] * self.cfg.val_draws)

    def _validate(self) -> None:
        """Measure the validation loss; keep the checkpoint when it is the best so far."""
        val = self.validation_loss()
        improved = math.isfinite(val) and (self.best is None or val < self.best[1])
        if improved:
            self.best = (self.step, val)
            if self.out_dir is not None and self.rank == 0:
                self._check_finite()
                self.best_path.parent.mkdir(parents=True, exist_ok=True)
                save_checkpoint(self.best_path, *self.state())
        self._val_record = {"val_step": self.step, "val_loss": val,
                            "best_step": self.best[0] if self.best else None}  # fmt: skip

    @property
    def skipped(self) -> int:
        """Steps skipped for a non-finite loss or gradient (reads the pending steps)."""
        self._read()
        return self._skipped

    def state(self) -> tuple[dict[str, Tensor], dict]:
        """Everything needed to continue: ``(tensors, meta)`` for :func:`save_checkpoint`."""
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in self.ema.module.state_dict().items()})
        for i, average in enumerate(self.posthoc):
            tensors.update({f"posthoc.{i}.{k}": v for k, v in average.module.state_dict().items()})
        if self._objective_module is not None:
            sd = self._objective_module.state_dict()
            tensors.update({f"objective.{k}": v for k, v in sd.items()})
        opt = self.opt.state_dict()
        for i, st in opt["state"].items():
            for k, v in st.items():
                tensors[f"optim.{i}.{k}"] = torch.as_tensor(v)
        tensors["rng.torch"] = torch.get_rng_state()
        groups = [{k: v for k, v in g.items()} for g in opt["param_groups"]]
        meta = {
            **self.meta,
            "model": model_config(self.model),
            "train": asdict(self.cfg),
            "normalizer": self.normalizer.config(),
            "step": self.step,
            "elapsed": self.elapsed,
            "skipped": self.skipped,
            "ema": {
                "decay": self.ema.decay,
                "warmup": self.ema.warmup,
                "updates": self.ema.updates,
            },
            "optim": {"param_groups": groups},
            "posthoc": {
                "sigma_rel": [a.sigma_rel for a in self.posthoc],
                "updates": [a.updates for a in self.posthoc],
            },  # fmt: skip
            "data_shape": list(self.source.data_shape),
        }
        if self.best is not None:
            meta["best"] = {"step": self.best[0], "val_loss": self.best[1]}
        return tensors, meta

    def save(self, path: str | Path | None = None) -> Path | None:
        """Write the checkpoint (rank 0 only); returns its path. Steps that were not finite
        are reported first (:class:`NonFiniteLoss` under ``on_nonfinite="stop"``)."""
        self._check_finite()
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None:
            return None
        if self.rank != 0:  # rank 0 writes it; every rank knows where the last one is
            self.last_checkpoint = (path, self.step)
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(path, *self.state())
        self.last_checkpoint = (path, self.step)
        return path

    def resume(self, path: str | Path | None = None) -> None:
        """Restore model, EMA, optimiser, step, time spent and RNG from a checkpoint of this
        trainer."""
        path = Path(path) if path is not None else self.checkpoint_path
        tensors, meta = load_checkpoint(path)
        if is_legacy_conditional(meta):
            raise ValueError(
                f"checkpoint {path} holds a class-conditional model of scorekit 0.1's layout: "
                "it loads for sampling (scorekit sample --label), but training cannot resume "
                "from it; start a new run in another folder"
            )
        mine, theirs = model_config(self.model), meta.get("model", {})
        for key in ("net", "process", "prediction", "precond"):
            if json.dumps(mine.get(key), sort_keys=True) != json.dumps(
                theirs.get(key), sort_keys=True
            ):
                raise ValueError(
                    f"checkpoint {path} has {key} config {theirs.get(key)!r}, "
                    f"but this run uses {mine.get(key)!r}"
                )
        load_state(self.model, prefixed(tensors, "model"), f"checkpoint {path}")
        load_state(self.ema.module, prefixed(tensors, "ema"), f"checkpoint {path} (EMA)")
        theirs_ph = (meta.get("posthoc") or {}).get("sigma_rel", [])
        if theirs_ph != [a.sigma_rel for a in self.posthoc]:
            raise ValueError(
                f"checkpoint {path} keeps post-hoc EMA widths {theirs_ph}, but this run asks "
                f"for {[a.sigma_rel for a in self.posthoc]}; resume with the run's own"
            )
        for i, average in enumerate(self.posthoc):
            load_state(average.module, prefixed(tensors, f"posthoc.{i}"), f"checkpoint {path}")
            average.updates = int(meta["posthoc"]["updates"][i])
        theirs_obj = prefixed(tensors, "objective")
        if (self._objective_module is None) != (not theirs_obj):
            have = "has" if theirs_obj else "has no"
            mine_obj = "uses" if self._objective_module is not None else "does not use"
            raise ValueError(
                f"checkpoint {path} {have} learned objective state, but this run {mine_obj} "
                "a learned weighting or adaptive sigma law; resume with the objective the run "
                "was started with"
            )
        if self._objective_module is not None:
            load_state(self._objective_module, theirs_obj, f"checkpoint {path} (objective)")
        state: dict[int, dict] = {}
        for k, v in prefixed(tensors, "optim").items():
            i, name = k.split(".", 1)
            state.setdefault(int(i), {})[name] = v
        self.opt.load_state_dict({"state": state, "param_groups": meta["optim"]["param_groups"]})
        for group in self.opt.param_groups:  # this run's kernel, whatever the saved run used
            group["fused"], group["foreach"] = self._fused or None, None if self._fused else True
        torch.set_rng_state(tensors["rng.torch"])
        self.step, self.elapsed = int(meta["step"]), float(meta.get("elapsed", 0.0))
        self._reset_counters(skipped=int(meta.get("skipped", 0)))
        self.ema.updates = int(meta["ema"]["updates"])
        best = meta.get("best")
        self.best = None if best is None else (int(best["step"]), float(best["val_loss"]))
        self.last_checkpoint = (path, self.step)
        self._truncate_log()
        if self.rank == 0:
            _remove_stale_temps(path.parent)
            self._drop_later_snapshots()

    # -- post-hoc EMA ---------------------------------------------------------------------
    @property
    def posthoc_dir(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / "posthoc"

    def _check_snapshots(self) -> None:
        """A run that starts from step 0 must not add its snapshots to another run's."""
        if self.step or self.posthoc_dir is None or not self.posthoc_dir.is_dir():
            return
        if snapshots(self.posthoc_dir):
            raise ValueError(
                f"{str(self.posthoc_dir)!r} holds post-hoc EMA snapshots of another run; "
                "resume that run, or train into another folder"
            )

    def _snapshot(self) -> None:
        """Store the post-hoc averages at this step (rank 0, with an output folder). Every
        rank checks for non-finite steps first, as :meth:`save` does, so that all stop
        together."""
        self._check_finite()
        self._snapshot_step = self.step
        if self.posthoc_dir is None or self.rank != 0:
            return
        self.posthoc_dir.mkdir(parents=True, exist_ok=True)
        save_snapshot(self.posthoc_dir / f"{self.step:08d}.safetensors", self.posthoc, self.step)

    def _drop_later_snapshots(self) -> None:
        """Snapshots written after the resumed checkpoint belong to steps that are redone."""
        if self.posthoc_dir is not None:
            remove_snapshots(self.posthoc_dir, after=self.step)

    # -- logging -------------------------------------------------------------------------
    @property
    def log_path(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / "log.jsonl"

    def _truncate_log(self) -> None:
        """Drop log lines past the resumed step (written after the last checkpoint)."""
        p = self.log_path
        if p is None or self.rank != 0 or not p.exists():
            return
        keep = []
        for line in p.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= self.step:
                    keep.append(line + "\n")
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut short by the interruption
        write_atomic(p, "".join(keep))

    # -- the loop ------------------------------------------------------------------------
    def _clock(self) -> float:
        return time.process_time() if self.cfg.clock == "process" else time.perf_counter()

    def _step_batch(self, step: int) -> tuple[Tensor, Tensor]:
        """Forward and backward of this rank's shards; returns (losses, t)."""
        cfg, B = self.cfg, self.cfg.batch_size
        runner = self._ddp if self._ddp is not None else self._loss
        if self.source.loader is not None:
            xs, conds = self.source.next_batch()
            x_all = xs.to(self.device, torch.float32)
            micro = -(-x_all.shape[0] // cfg.accum)
        else:
            micro = B // (self.world * cfg.accum)
            # drawn on the training device: no host-to-device copy of the indices
            gen = torch.Generator(device=self.device).manual_seed(_seed(cfg.seed, step, 1 << 20))
            idx = torch.randint(self.source.n, (B,), generator=gen, device=self.device)
        all_losses, all_t = [], []
        for a in range(cfg.accum):
            k = self.rank * cfg.accum + a
            if self.source.loader is not None:
                rows = slice(a * micro, (a + 1) * micro)
                xb = x_all[rows]
                cond = {
                    n: (v[rows].to(self.device) if isinstance(v, Tensor) else v)
                    for n, v in conds.items()
                }
            else:
                xb, cond = self.source.take(idx[k * micro : (k + 1) * micro])
            g = torch.Generator(device=self.device).manual_seed(_seed(cfg.seed, step, k))
            t = self.objective.sample_t(
                xb.shape[0], generator=g, dtype=xb.dtype, device=self.device
            )
            if cfg.bf16:
                with torch.autocast(self.device.type, dtype=torch.bfloat16):
                    losses = runner(xb, t, g, **cond)
            else:  # entering even a disabled autocast costs ~0.1 ms a step on a small net
                losses = runner(xb, t, g, **cond)
            loss = losses.float().mean() / cfg.accum
            if self._ddp is not None and a < cfg.accum - 1:
                with self._ddp.no_sync():
                    loss.backward()
            else:
                loss.backward()
            logged = losses.detach().float()
            if self._adaptive is not None:  # log f, not the draw's reweighted f / (K q_k)
                logged = logged / self._adaptive.last_factor.float()
            all_losses.append(logged)
            all_t.append(t.detach())
        if self._adaptive is not None:  # one update of the sigma law per optimiser step
            self._adaptive.end_step()
        return torch.cat(all_losses), torch.cat(all_t)

    def request_stop(self) -> None:
        """Ask :meth:`fit` to stop after the current step, write the checkpoint and return
        (``result["stopped"]`` is then true); safe to call from a signal handler."""
        self.stop_requested = True

    def _should_stop(self) -> bool:
        """Whether to stop now: at once without DDP; under DDP at the logging interval, when
        any rank was asked (all ranks then stop at the same step)."""
        if self._ddp is None:
            return self.stop_requested
        if self.step % self.cfg.log_every:
            return False
        flag = torch.tensor([float(self.stop_requested)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag[0] > 0)

    def _synced(self, seconds: float) -> float:
        """``seconds`` as rank 0 measured them (unchanged without DDP)."""
        if self._ddp is None:
            return seconds
        v = torch.tensor([seconds], dtype=torch.float64, device=self.device)
        dist.broadcast(v, src=0)
        return float(v[0])

    def _read(self) -> None:
        """Read the pending steps (the host read of the loop, once per log or checkpoint):
        the skip count, the first non-finite step, the last good loss, and the per-sigma
        bucket sums and counts of the good losses since the last log (``_stats``)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        steps = [p[0] for p in pending]
        sigma = [self.process.sigma(p[1].to(torch.float64)) for p in pending]
        good = torch.stack([p[3] for p in pending])  # one flag a step
        rows = torch.cat([p[3].expand(len(p[1])) for p in pending])  # a step's batches may differ
        losses = torch.cat([p[2] for p in pending])
        sums, _, counts = bucket_sums(torch.cat(sigma), losses, self.sigma_edges, rows)
        ok = good.tolist()
        self._skipped += ok.count(False)
        if self._bad is None and not all(ok):
            i = ok.index(False)
            self._bad = (steps[i] + 1, float(sigma[i].min()), float(sigma[i].max()))
        if any(ok):
            last = max(i for i, v in enumerate(ok) if v)
            self._last = float(pending[last][2].to(torch.float64).mean())
        if self._stats is not None:
            sums, counts = sums + self._stats[0], counts + self._stats[1]
        self._stats = (sums, counts)

    def _check_finite(self) -> None:
        """Raise :class:`NonFiniteLoss` for the first non-finite step since the start (under
        ``on_nonfinite="stop"``)."""
        self._read()
        if self._bad is None or self.cfg.on_nonfinite != "stop":
            return
        bad_step, lo, hi = self._bad
        good = self.last_checkpoint
        where = (
            f"last good checkpoint {good[0]} (step {good[1]})"
            if good is not None
            else "no checkpoint saved yet"
        )
        raise NonFiniteLoss(
            f"non-finite loss or gradient at step {int(bad_step)} (batch sigma in "
            f"[{lo:.4g}, {hi:.4g}]); {where}; lower the learning rate or use --on-nonfinite skip"
        )

    def fit(self) -> dict:
        """Train until the budget (``config.steps`` and/or ``config.seconds``) is spent or
        :meth:`request_stop` is called; returns ``{"step", "loss", "skipped", "seconds",
        "stopped"}``. The checkpoint is written every ``ckpt_every`` steps and at the end
        (a stopped run's end included).

        Raises:
            NonFiniteLoss: a step's loss or gradient norm was not finite (and
                ``on_nonfinite="stop"``), at the next log or checkpoint; nothing non-finite
                is saved.
        """
        cfg = self.cfg
        if self.posthoc:
            self._check_snapshots()
        self.model.train()
        params = self._params()
        bar = self._bar()
        t0, steps0, start = self._clock(), self.step, self.elapsed
        try:
            while not cfg.done(self.step, self.elapsed):
                if self._should_stop():
                    break
                step = self.step
                for group in self.opt.param_groups:
                    group["lr"] = cfg.learning_rate(step, self.elapsed)
                self.opt.zero_grad(set_to_none=True)
                losses, t = self._step_batch(step)
                gnorm = _clip_grad(params, cfg.grad_clip).to(self.device)
                good = torch.isfinite(losses.sum()) & torch.isfinite(gnorm)
                if self._ddp is not None:
                    flag = (~good).to(torch.float32)
                    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                    good = flag == 0
                if self._fused:
                    self.opt.found_inf = (~good).to(torch.float32)
                    self.opt.step()
                elif bool(good):  # without the fused kernel: one read per step
                    self.opt.step()
                self.ema.update(self.model, good)
                for average in self.posthoc:
                    average.update(self.model, good)
                self._pending.append((step, t.detach(), losses, good))
                self.step += 1
                if self._ddp is None or self.step % cfg.log_every == 0:
                    # under DDP the clock is rank 0's, read at the logs, so that every rank
                    # takes the same learning rate and stops at the same step
                    self.elapsed = self._synced(start + self._clock() - t0)
                if bar is not None:
                    if cfg.steps is None:
                        bar.update(max(0, min(round(self.elapsed), bar.total) - bar.n))
                    else:
                        bar.update(1)
                end = cfg.done(self.step, self.elapsed)
                if self._val is not None and (self.step % (cfg.val_every or cfg.ckpt_every) == 0
                                              or end):  # fmt: skip
                    self._validate()
                if self.step % cfg.log_every == 0 or end:
                    self._log(t0, steps0, bar)
                if self.posthoc and (self.step % (cfg.posthoc_every or cfg.ckpt_every) == 0
                                     or end):  # fmt: skip
                    self._snapshot()
                if (self.step % cfg.ckpt_every == 0 or end) and self.out_dir is not None:
                    self.save()
            if self.stop_requested and self.step % cfg.log_every:
                self._log(t0, steps0, bar)  # the steps since the last log line
            self._check_finite()
            if self.out_dir is not None and (self.last_checkpoint or (None, -1))[1] != self.step:
                self.save()  # a run that took no step, or was stopped, leaves its checkpoint
            if self.posthoc and self._snapshot_step != self.step:
                self._snapshot()  # and its averages at that step
        finally:
            if bar is not None:
                bar.close()
            if self._fused:
                self.opt.found_inf = None
        return {"step": self.step, "loss": self._last, "skipped": self.skipped,
                "seconds": self.elapsed - start, "stopped": self.stop_requested}  # fmt: skip

    def _bar(self):
        if not self.cfg.progress or self.rank != 0:
            return None
        try:  # tqdm comes with the 'cli' extra; without it, no bar
            from tqdm.auto import tqdm
        except ImportError:
            return None
        if self.cfg.steps is None:  # a time budget: the bar counts its seconds (and the ETA)
            bar = tqdm(total=round(self.cfg.seconds), desc="train", unit="s")
            bar.update(min(round(self.elapsed), bar.total))
            return bar
        return tqdm(total=self.cfg.steps, initial=self.step, desc="train", unit="step")

    def _log(self, t0: float, steps0: int, bar) -> None:
        """Read the statistics (the one host read of the loop), write a log line, call the
        callbacks."""
        self._check_finite()
        nb = self.cfg.sigma_buckets
        zeros = torch.zeros(nb, dtype=torch.float64, device=self.device)
        sums, counts = self._stats or (zeros, zeros)
        self._stats = None
        if self._ddp is not None:
            both = torch.stack([sums, counts])
            dist.all_reduce(both)
            sums, counts = both[0], both[1]
        sums, counts = sums.tolist(), counts.tolist()
        n = sum(counts)
        rec = {
            "step": self.step,
            "loss": sum(sums) / n if n else None,
            "lr": self.opt.param_groups[0]["lr"],
            "skipped": self.skipped,
            "steps_per_s": (self.step - steps0) / max(self._clock() - t0, 1e-9),
            "elapsed": self.elapsed,
            "sigma_edges": self.sigma_edges.tolist(),
            "bucket_loss": [s / c if c > 0 else None for s, c in zip(sums, counts, strict=True)],
            "bucket_count": [int(c) for c in counts],
        }
        if self._val_record is not None:
            rec.update(self._val_record)
            self._val_record = None
        if bar is not None:
            loss = math.nan if rec["loss"] is None else rec["loss"]
            bar.set_postfix(loss=f"{loss:.4g}", skipped=rec["skipped"])
        if self.rank == 0 and self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
        for cb in self.callbacks:
            cb(self, rec)

    def close(self) -> None:
        """Release the DDP wrapper (call before :func:`shutdown_distributed`)."""
        self._ddp = None
        gc.collect()

r"""The training loop: AdamW, warm-up, clipping, EMA, per-σ logging, checkpoints, DDP.

One step draws a global batch of ``batch_size`` examples (indices uniform with
replacement), splits it into ``world_size × accum`` shards, and on each shard ``k``
draws :math:`t \sim` ``objective.sample_t`` and the objective's noise from a
generator seeded by ``(seed, step, k)``. So the randomness of a run is a function of
the step, which makes ``resume`` exact (bit-identical on CPU in float32), and a run
on :math:`W` processes (``torchrun --nproc_per_node=W``, DistributedDataParallel,
gloo on CPU / nccl on GPU) sees the same examples and noise as one process with
``accum = W`` — equal up to the order of floating-point sums.

The loss minimised is the mean of the objective's per-example values; the learning
rate ramps linearly over ``warmup`` steps, :math:`\eta_n = \eta \min(1, (n+1)/n_w)`;
gradients are clipped to a global norm; the EMA of the weights (:class:`~scorekit.train.ema.EMA`)
is kept and saved. Every ``log_every`` steps one JSON line goes to ``log.jsonl`` with
the mean loss and the mean loss per bucket of :math:`\log\sigma` (geometric edges between
:math:`\sigma(t_{min})` and :math:`\sigma(t_{max})`).

References:
    Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (AdamW), 2019;
    Song & Ermon (2020) for EMA; Li et al., "PyTorch Distributed", VLDB 2020.
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
from .checkpoint import (
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

__all__ = [
    "NonFiniteLoss",
    "TrainConfig",
    "Trainer",
]


class NonFiniteLoss(RuntimeError):
    """Raised when a step's loss or gradient is NaN or infinite (``on_nonfinite="stop"``)."""


@dataclass
class TrainConfig:
    """Settings of :class:`Trainer` (all JSON-able; stored in every checkpoint)."""

    steps: int = 2000
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.0
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

    def __post_init__(self):
        check_int("steps", self.steps, minimum=0)
        check_int("batch_size", self.batch_size)
        check_positive("lr", self.lr)
        check_positive("weight_decay", self.weight_decay, strict=False)
        check_int("warmup", self.warmup, minimum=0)
        if self.grad_clip is not None:
            check_positive("grad_clip", self.grad_clip)
        check_int("accum", self.accum)
        check_int("seed", self.seed, minimum=0)
        check_int("log_every", self.log_every)
        check_int("ckpt_every", self.ckpt_every)
        check_int("sigma_buckets", self.sigma_buckets)
        check_choice("on_nonfinite", self.on_nonfinite, ("stop", "skip"))

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(
                f"unknown training setting(s) {sorted(unknown)}; known: {sorted(names)}"
            )
        return cls(**d)


def _seed(*ints: int) -> int:
    """SplitMix64 of a tuple of non-negative ints: a well-mixed 63-bit seed."""
    h = 0x9E3779B97F4A7C15
    for v in ints:
        h = (h ^ (v & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def _clip_grad(params: list[Tensor], max_norm: float | None) -> float:
    r"""Scale the gradients to global norm at most ``max_norm`` (``None``: no clipping) and
    return the norm before scaling, :math:`\lVert (\lVert g_i \rVert)_i \rVert_2` (NaN or
    inf when a gradient is not finite; nothing is scaled then)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    total = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))
    if max_norm is not None and math.isfinite(total) and total > max_norm:
        torch._foreach_mul_(grads, max_norm / (total + 1e-6))
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

    def forward(self, x0: Tensor, t: Tensor, generator: torch.Generator) -> Tensor:
        return self.objective(self.model, x0, t=t, generator=generator)


class Trainer:
    r"""Train ``model`` on ``data`` with ``objective``; see the module docstring.

    Arguments:
        model: a :class:`~scorekit.core.parametrize.ScoreModel` over a ``scorekit.nets`` network.
        objective: object with ``.process``, ``.sample_t(B, generator, dtype, device)`` and
            ``__call__(model, x0, t=, generator=) -> (B,)`` (see ``scorekit.losses``).
        data: training examples in model space, shape ``(N, *D)``.
        config: a :class:`TrainConfig`.
        out_dir: folder for ``checkpoint.safetensors`` / ``.json`` and ``log.jsonl``
            (``None``: nothing is written).
        normalizer: the data normalisation, saved with the checkpoint.
        meta: extra JSON-able information saved with the checkpoint (e.g. data, objective).
        device: where to train (default: the device :func:`init_distributed` reports).
    """

    def __init__(
        self,
        model: ScoreModel,
        objective: Any,
        data: Tensor,
        config: TrainConfig | None = None,
        out_dir: str | Path | None = None,
        *,
        normalizer: Normalizer | None = None,
        meta: dict | None = None,
        device: str | torch.device | None = None,
    ):
        if not isinstance(model, ScoreModel):
            raise ValueError(f"model must be a ScoreModel, got {type(model).__name__}")
        if not isinstance(data, Tensor) or data.dim() < 2 or data.shape[0] == 0:
            shape = tuple(data.shape) if isinstance(data, Tensor) else type(data).__name__
            raise ValueError(f"data must be a tensor of shape (N, *D) with N >= 1, got {shape}")
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
        self.model = model.to(self.device)
        self.objective = objective
        self.process = objective.process
        self.data = data.to(self.device, torch.float32)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.normalizer = normalizer or Normalizer()
        self.meta = dict(meta or {})
        self.opt = torch.optim.AdamW(
            model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay, foreach=True
        )
        self.ema = EMA(self.model, self.cfg.ema_decay, self.cfg.ema_warmup)
        self.step, self.skipped = 0, 0
        self.last_checkpoint: tuple[Path, int] | None = None  # (path, step) of the last save
        lo = float(self.process.sigma(torch.tensor(self.process.t_min, dtype=torch.float64)))
        hi = float(self.process.sigma(torch.tensor(self.process.t_max, dtype=torch.float64)))
        lo = max(lo, hi * 1e-6)
        self.sigma_edges = torch.logspace(
            math.log10(lo), math.log10(hi), self.cfg.sigma_buckets + 1, dtype=torch.float64
        )
        self._loss = _Loss(self.model, objective)
        self._ddp = None
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # An energy's score -grad_x E does not depend on the output bias: unused there.
            unused = model.prediction == "energy"
            self._ddp = nn.parallel.DistributedDataParallel(
                self._loss, device_ids=ids, find_unused_parameters=unused
            )

    # -- checkpoints -------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / "checkpoint.safetensors"

    def state(self) -> tuple[dict[str, Tensor], dict]:
        """Everything needed to continue: ``(tensors, meta)`` for :func:`save_checkpoint`."""
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in self.ema.module.state_dict().items()})
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
            "skipped": self.skipped,
            "ema": {
                "decay": self.ema.decay,
                "warmup": self.ema.warmup,
                "updates": self.ema.updates,
            },
            "optim": {"param_groups": groups},
            "data_shape": list(self.data.shape[1:]),
        }
        return tensors, meta

    def save(self, path: str | Path | None = None) -> Path | None:
        """Write the checkpoint (rank 0 only); returns its path."""
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
        """Restore model, EMA, optimiser, step and RNG from a checkpoint of this trainer."""
        path = Path(path) if path is not None else self.checkpoint_path
        tensors, meta = load_checkpoint(path)
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
        state: dict[int, dict] = {}
        for k, v in prefixed(tensors, "optim").items():
            i, name = k.split(".", 1)
            state.setdefault(int(i), {})[name] = v
        self.opt.load_state_dict({"state": state, "param_groups": meta["optim"]["param_groups"]})
        torch.set_rng_state(tensors["rng.torch"])
        self.step, self.skipped = int(meta["step"]), int(meta.get("skipped", 0))
        self.ema.updates = int(meta["ema"]["updates"])
        self.last_checkpoint = (path, self.step)
        self._truncate_log()
        if self.rank == 0:
            _remove_stale_temps(path.parent)

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

    def _bucket_stats(self, pending: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """Sum and count of the losses per sigma bucket, over the steps since the last log."""
        nb = self.cfg.sigma_buckets
        sums = torch.zeros(nb, dtype=torch.float64)
        counts = torch.zeros(nb, dtype=torch.float64)
        if pending:
            t = torch.cat([p[0] for p in pending]).double().cpu()
            losses = torch.cat([p[1] for p in pending]).double().cpu()
            idx = torch.bucketize(self.process.sigma(t), self.sigma_edges[1:-1])
            sums.index_add_(0, idx, losses)
            counts.index_add_(0, idx, torch.ones_like(losses))
        return sums, counts

    # -- the loop ------------------------------------------------------------------------
    def _step_batch(self, step: int) -> tuple[Tensor, Tensor, Tensor]:
        """Forward and backward of this rank's shards; returns (losses, t, idx)."""
        cfg, B = self.cfg, self.cfg.batch_size
        micro = B // (self.world * cfg.accum)
        gen = torch.Generator().manual_seed(_seed(cfg.seed, step, 1 << 20))
        idx = torch.randint(self.data.shape[0], (B,), generator=gen)
        runner = self._ddp if self._ddp is not None else self._loss
        all_losses, all_t = [], []
        for a in range(cfg.accum):
            k = self.rank * cfg.accum + a
            xb = self.data[idx[k * micro : (k + 1) * micro].to(self.device)]
            g = torch.Generator(device=self.device).manual_seed(_seed(cfg.seed, step, k))
            t = self.objective.sample_t(micro, generator=g, dtype=xb.dtype, device=self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                losses = runner(xb, t, g)
            loss = losses.float().mean() / cfg.accum
            if self._ddp is not None and a < cfg.accum - 1:
                with self._ddp.no_sync():
                    loss.backward()
            else:
                loss.backward()
            all_losses.append(losses.detach().float())
            all_t.append(t.detach())
        return torch.cat(all_losses), torch.cat(all_t), idx

    def fit(self) -> dict:
        """Train until ``config.steps``; returns ``{"step", "loss", "skipped", "seconds"}``.

        Raises:
            NonFiniteLoss: a step's loss or gradient norm was not finite (and
                ``on_nonfinite="stop"``); nothing non-finite is saved.
        """
        cfg = self.cfg
        self.model.train()
        pending: list[tuple[Tensor, Tensor]] = []  # (t, losses) of the good steps since the log
        params = [p for p in self.model.parameters() if p.requires_grad]
        bar = None
        if cfg.progress and self.rank == 0:
            try:  # tqdm comes with the 'cli' extra; without it, no bar
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                bar = tqdm(total=cfg.steps, initial=self.step, desc="train", unit="step")
        t0, steps0, last = time.perf_counter(), self.step, float("nan")
        try:
            while self.step < cfg.steps:
                step = self.step
                for group in self.opt.param_groups:
                    group["lr"] = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup, 1))
                self.opt.zero_grad(set_to_none=True)
                losses, t, _ = self._step_batch(step)
                gnorm = _clip_grad(params, cfg.grad_clip)
                mean = float(losses.mean())
                bad = not (math.isfinite(mean) and math.isfinite(gnorm))
                if self._ddp is not None:
                    flag = torch.tensor([float(bad)])
                    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                    bad = bool(flag[0] > 0)
                if bad:
                    s = self.process.sigma(t.detach().double().cpu())
                    what = (
                        f"non-finite loss or gradient at step {step + 1} "
                        f"(batch sigma in [{float(s.min()):.4g}, {float(s.max()):.4g}])"
                    )
                    if cfg.on_nonfinite == "stop":
                        good = self.last_checkpoint
                        where = (
                            f"last good checkpoint {good[0]} (step {good[1]})"
                            if good is not None
                            else "no checkpoint saved yet"
                        )
                        raise NonFiniteLoss(
                            f"{what}; {where}; lower the learning rate or use --on-nonfinite skip"
                        )
                    self.opt.zero_grad(set_to_none=True)
                    self.skipped += 1
                else:
                    self.opt.step()
                    self.ema.update(self.model)
                    pending.append((t, losses))
                    last = mean
                self.step += 1
                if bar is not None:
                    bar.update(1)
                    if self.step % 10 == 0 or self.step == cfg.steps:
                        bar.set_postfix(loss=f"{last:.4g}", skipped=self.skipped)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    self._log(*self._bucket_stats(pending), t0, steps0)
                    pending.clear()
                if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
                    self.save()
        finally:
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - t0
        return {"step": self.step, "loss": last, "skipped": self.skipped, "seconds": seconds}

    def _log(self, sums: Tensor, counts: Tensor, t0: float, steps0: int) -> None:
        if self._ddp is not None:
            both = torch.stack([sums, counts])
            dist.all_reduce(both)
            sums, counts = both[0], both[1]
        if self.rank != 0 or self.log_path is None:
            return
        n = float(counts.sum())
        per = [float(s / c) if c > 0 else None for s, c in zip(sums, counts, strict=True)]
        rec = {
            "step": self.step,
            "loss": float(sums.sum()) / n if n else None,
            "lr": self.opt.param_groups[0]["lr"],
            "skipped": self.skipped,
            "steps_per_s": (self.step - steps0) / max(time.perf_counter() - t0, 1e-9),
            "sigma_edges": self.sigma_edges.tolist(),
            "bucket_loss": per,
            "bucket_count": [int(c) for c in counts],
        }
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")

    def close(self) -> None:
        """Release the DDP wrapper (call before :func:`shutdown_distributed`)."""
        self._ddp = None
        gc.collect()

r"""``scorekit reflow RUN --out DIR``: train a rectified flow on the couplings of a trained one.

The teacher in ``RUN`` is a flow-matching run (``scorekit train --process rectified_flow``).
Its ODE draws ``--pairs`` (sample, noise) pairs (:func:`scorekit.train.reflow.reflow_pairs`,
with the run's sampler or ``--sampler`` / ``--sample-steps``), saved once to
``DIR/pairs.safetensors`` (atomically; a resumed or restarted run reads them back and checks
they were drawn the same way); a student with the teacher's network, initialised from the
teacher's EMA weights (or from scratch with ``--from-scratch``), is trained on them with the
flow-matching loss (Liu et al. 2023, Algorithm 1). ``DIR`` is then a run like any other:
``scorekit sample``, ``evaluate`` (which reports the straightness), ``likelihood``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

__all__ = ["cmd_reflow"]


def _pairs(args, teacher, src: Path, out: Path, sampler: str, steps: int):
    """The pairs: read back from ``out`` when drawn the same way, else drawn and saved."""
    from ..train.checkpoint import load_checkpoint, save_checkpoint, tensors_sha256
    from ..train.reflow import reflow_pairs

    path = out / "pairs.safetensors"
    how = {
        "teacher": str(src),
        "teacher_sha256": tensors_sha256(teacher.state_dict()),
        "n": args.pairs,
        "sampler": sampler,
        "steps": steps,
        "seed": args.seed,
    }
    if path.is_file():
        tensors, stored = load_checkpoint(path)
        if stored.get("reflow_pairs") != how:
            raise ValueError(
                f"{str(path)!r} holds pairs drawn otherwise ({stored.get('reflow_pairs')}); "
                "pass the same settings, or another --out"
            )
        return tensors["x0"], tensors["noise"]
    g = torch.Generator().manual_seed(args.seed)
    x0, noise = reflow_pairs(teacher, args.pairs, sampler, steps, g, batch_size=4096)
    save_checkpoint(path, {"x0": x0, "noise": noise}, {"reflow_pairs": how})
    return x0, noise


def cmd_reflow(args: argparse.Namespace) -> int:
    """Draw the teacher's pairs and train the student on them (one line on any bad input)."""
    from ..losses import FlowMatchingLoss
    from ..train.checkpoint import load_checkpoint, load_model, read_meta
    from ..train.reflow import reflow_data
    from ..train.trainer import TrainConfig, Trainer
    from .cli import _checkpoint_path, _fit, _out_dir, _runtime, _time_budget
    from .recipes import build_run_model

    src = _checkpoint_path(args.checkpoint).resolve()
    out = _out_dir(args.out)
    if out.resolve() == src.parent:
        raise ValueError(f"--out {str(out)!r} is the teacher's run folder; name another")
    ckpt = out / "checkpoint.safetensors"
    if args.resume and not ckpt.is_file():
        raise ValueError(f"--resume: no checkpoint in {str(out)!r}")
    if ckpt.is_file() and not args.resume:
        raise ValueError(
            f"{str(out)!r} already holds a run; pass --resume to continue it or another --out"
        )
    meta = read_meta(src)
    s = json.loads(json.dumps(meta.get("cli") or {}))
    model_cfg = meta.get("model", {})
    proc = (model_cfg.get("process") or {}).get("name")
    if proc != "RectifiedFlow" or model_cfg.get("prediction") != "velocity":
        raise ValueError(
            f"reflow needs a rectified-flow velocity model (scorekit train --process "
            f"rectified_flow); {str(src)!r} holds a {proc} model predicting "
            f"{model_cfg.get('prediction')!r}"
        )
    device = _runtime(args)
    teacher, normalizer, meta = load_model(src, device=device)
    recipe = (meta.get("cli") or {}).get("sample") or {}
    sampler = args.sampler or recipe.get("sampler", "heun")
    steps = args.sample_steps or recipe.get("steps") or 50
    out.mkdir(parents=True, exist_ok=True)
    x0, noise = _pairs(args, teacher, src, out, sampler, steps)
    s["loss"], s["loss_kwargs"] = "flow_matching", {}
    s["train"] = {**s.get("train", {}), "seed": args.seed}
    if args.steps is not None:
        s["train"]["steps"] = args.steps
    _time_budget(s["train"], args.minutes, args.steps)
    s["reflow"] = {
        "teacher": str(src),
        "pairs": args.pairs,
        "sampler": sampler,
        "sample_steps": steps,
        "init": "scratch" if args.from_scratch else "teacher",
    }
    if args.resume and load_checkpoint(ckpt)[1].get("cli", {}).get("reflow") != s["reflow"]:
        raise ValueError(f"--resume: the run in {str(out)!r} was a reflow of another teacher")
    torch.manual_seed(args.seed)
    student = build_run_model(s, tuple(meta["data"]["shape"]), teacher.process)
    if not args.from_scratch:
        student.load_state_dict(teacher.state_dict())
    cfg = TrainConfig.from_dict({"progress": not args.quiet, **s["train"]})
    trainer = Trainer(
        student,
        FlowMatchingLoss(teacher.process),
        reflow_data(x0, noise),
        cfg,
        out,
        normalizer=normalizer,
        meta={"cli": s, "data": meta["data"]},
        device=device,
    )
    try:
        if args.resume:
            trainer.resume(ckpt)
        result, code = _fit(trainer, "reflow", ckpt, "the same command and --resume")
        if code is not None:
            return code
        print(
            f"reflow of {src}: {args.pairs} pairs ({sampler}, {steps} steps), trained to step "
            f"{result['step']}, final loss {result['loss']:.4g}; checkpoint {ckpt}"
        )
    finally:
        trainer.close()
    return 0


def add_parser(sub, runtime, positive_int, count) -> None:
    """The ``reflow`` sub-command."""
    from ..samplers import SAMPLERS

    r = sub.add_parser(
        "reflow",
        help="train a straighter rectified flow on the (sample, noise) pairs of a trained one",
        parents=[runtime],
    )
    r.add_argument("checkpoint", type=Path, help="the teacher: a rectified-flow run or checkpoint")
    r.add_argument("--out", type=Path, required=True, help="the new run folder")
    r.add_argument(
        "--pairs",
        type=positive_int,
        default=20_000,
        help="pairs drawn from the teacher (default 20000)",
    )
    r.add_argument(
        "--sampler",
        choices=sorted(SAMPLERS),
        help="ODE sampler of the pairs (default: the teacher's)",
    )
    r.add_argument("--sample-steps", type=positive_int, help="its steps (default: the teacher's)")
    r.add_argument("--steps", type=count, help="training steps (default: the teacher's)")
    r.add_argument("--minutes", type=float, help="wall-clock budget in minutes")
    r.add_argument("--seed", type=count, default=0, help="seed of the pairs and the training")
    r.add_argument(
        "--from-scratch",
        action="store_true",
        help="initialise the student afresh, not from the teacher's weights",
    )
    r.add_argument("--resume", action="store_true", help="continue the run in --out")
    r.set_defaults(func=cmd_reflow)

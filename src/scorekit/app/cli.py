"""Command-line interface: ``scorekit train | sample | likelihood | plot | advise | demo``.

``scorekit train --data moons`` trains with sensible defaults and writes
``runs/train/checkpoint.safetensors`` (+ ``.json``) and ``log.jsonl``; the same command
under ``torchrun --nproc_per_node=N`` trains with DistributedDataParallel.
``scorekit train --data digits --conditional`` trains a class-conditional model with label
dropout, and ``scorekit sample RUN --label K --guidance W`` samples class ``K`` with
classifier-free guidance. Errors in
the input (missing or unreadable data, empty data, mixed image sizes, non-numeric CSV
cells, a checkpoint of another network, an output path that is a file) end with a
one-line message and exit code 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from ..losses import OBJECTIVES
from ..samplers.api import SAMPLERS
from .recipes import (
    DEFAULTS,
    LABEL_DROPOUT,
    PROCESSES,
    RECIPES,
    build_run,
    choose_recipe,
    conditional_settings,
    data_meta,
    describe,
    measured,
    nll_report,
    recipe_settings,
)

__all__ = ["main"]


# -- shared helpers ---------------------------------------------------------------------
def _out_dir(path: Path) -> Path:
    if not str(path).strip() or str(path) == ".":
        raise ValueError(f"--out must name a folder for the run, got {str(path)!r}")
    if path.exists() and not path.is_dir():
        raise ValueError(f"output directory {str(path)!r} is a file")
    return path


def _checkpoint_path(path: Path) -> Path:
    return path / "checkpoint.safetensors" if path.is_dir() else path


def _load_json(path: str | None) -> dict:
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"config file not found: {path!r}")
    try:
        cfg = json.loads(p.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"config file {path} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"config file {path} must hold a JSON object, got {type(cfg).__name__}")
    return cfg


def _save_npy(path: Path, x: np.ndarray) -> None:
    from ..train.checkpoint import write_atomic

    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buf.getvalue())


# -- train ------------------------------------------------------------------------------
def _settings(args: argparse.Namespace, stored: dict | None, recipe: str | None = None) -> dict:
    """The recipe's settings (or the defaults), then the checkpoint's settings (on resume),
    the --config file, the flags."""
    s = recipe_settings(recipe) if recipe else json.loads(json.dumps(DEFAULTS))
    if stored:
        s.update({"split": "all", **stored})  # runs of scorekit 0.1 trained on all digits
    cfg = _load_json(args.config)
    unknown = set(cfg) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in --config; known: {sorted(DEFAULTS)}")
    for k, v in cfg.items():
        named = k in ("process", "net") and isinstance(v, dict) and "name" in v
        if named and str(v["name"]).lower() != str(s[k].get("name", "")).lower():
            s[k] = dict(v)  # another network or process: the old one's options do not apply
        else:
            s[k] = {**s[k], **v} if isinstance(s[k], dict) and isinstance(v, dict) else v
    if args.loss is not None and args.loss != s["loss"]:
        # another loss: the recipe's options for its own loss do not apply (the config's do)
        given = cfg.get("loss_kwargs")
        s["loss_kwargs"] = dict(given) if isinstance(given, dict) else {}
    for flag in ("data", "n", "key", "image_size", "normalize", "loss", "prediction"):
        if getattr(args, flag) is not None:
            s[flag] = getattr(args, flag)
    for flag in ("process", "net"):  # a new name drops the options of the old one ...
        name = getattr(args, flag)
        if name is not None and str(s[flag].get("name", "")).lower() != name:
            # ... but keeps those the --config file gives for this name (or without one)
            given = cfg.get(flag) if isinstance(cfg.get(flag), dict) else {}
            same = str(given.get("name", name)).lower() == name
            s[flag] = {**(given if same else {}), "name": name}
    flags = {
        "steps": "steps",
        "batch": "batch_size",
        "lr": "lr",
        "seed": "seed",
        "warmup": "warmup",
        "grad_clip": "grad_clip",
        "ema_decay": "ema_decay",
        "accum": "accum",
        "log_every": "log_every",
        "ckpt_every": "ckpt_every",
        "on_nonfinite": "on_nonfinite",
    }
    for flag, name in flags.items():
        if getattr(args, flag) is not None:
            s["train"][name] = getattr(args, flag)
    if args.bf16:
        s["train"]["bf16"] = True
    if getattr(args, "weighting", None) is not None:
        s["weighting"] = args.weighting
    if getattr(args, "sigma_sampling", None) is not None:
        s["sigma_sampling"] = args.sigma_sampling
    if getattr(args, "augment", None) is not None:
        if not 0 <= args.augment <= 1:
            raise ValueError(f"--augment must be a probability in [0, 1], got {args.augment}")
        s["augment"] = args.augment
    if getattr(args, "val_fraction", None) is not None:
        if not 0 <= args.val_fraction < 1:
            raise ValueError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
        s["val_fraction"] = args.val_fraction
    if getattr(args, "val_every", None) is not None:
        s["train"]["val_every"] = args.val_every
    if getattr(args, "posthoc_ema", None) is not None:
        s["train"]["posthoc_ema"] = _widths(args.posthoc_ema, "--posthoc-ema")
    if getattr(args, "posthoc_every", None) is not None:
        if not s["train"].get("posthoc_ema"):
            raise ValueError("--posthoc-every needs --posthoc-ema (the averages to store)")
        s["train"]["posthoc_every"] = args.posthoc_every
    if args.schedule is not None:
        s["train"]["schedule"] = args.schedule
    _time_budget(s["train"], args.minutes, args.steps)
    _flow_defaults(s, args, cfg, stored)
    cond = conditional_settings(s["conditional"], "'conditional' in the settings")
    if args.conditional:
        cond = cond or {}
    if args.label_dropout is not None:
        if cond is None:
            raise ValueError("--label-dropout needs --conditional (class-conditional training)")
        cond = {**cond, "label_dropout": args.label_dropout}
    s["conditional"] = conditional_settings(cond, "--conditional")
    return s


def _time_budget(train: dict, minutes: float | None, steps: int | None) -> None:
    """``--minutes`` into the training settings: the wall-clock budget, and the only one
    unless ``--steps`` is given too."""
    if minutes is None:
        return
    if not minutes > 0:
        raise ValueError(f"--minutes must be a number > 0, got {minutes}")
    train["seconds"] = 60.0 * minutes
    if steps is None:  # the time is the budget
        train["steps"] = None


def _flow_defaults(s: dict, args, cfg: dict, stored: dict | None) -> None:
    """``--process rectified_flow`` trains a velocity network with conditional flow matching
    unless --loss / --prediction (or the config) say otherwise; --coupling and --time-law
    are options of that loss."""
    flow = str(s["process"].get("name", "")).lower() == "rectified_flow"
    if flow and not stored and args.loss is None and "loss" not in cfg:
        if s["loss"] != "flow_matching":
            s["loss"], s["loss_kwargs"] = "flow_matching", {}
        if args.prediction is None and "prediction" not in cfg:
            s["prediction"] = "velocity"
    for flag, key in (("coupling", "coupling"), ("time_law", "t_sampler")):
        value = getattr(args, flag, None)
        if value is None:
            continue
        if s["loss"] != "flow_matching":
            raise ValueError(
                f"--{flag.replace('_', '-')} is an option of the flow-matching loss; the run's "
                f"loss is {s['loss']!r} (use --process rectified_flow or --loss flow_matching)"
            )
        s["loss_kwargs"][key] = None if value == "none" else value


def _fit(trainer, command: str, ckpt: Path, resume: str, speak: bool = True):
    """``trainer.fit()`` under :class:`_stop_on_signals`: ``(result, None)``, or, when a
    signal stopped it, ``(result, exit code)`` after one line (when ``speak``) saying where
    the checkpoint is and the command ``resume`` that continues it."""
    with _stop_on_signals(trainer) as caught:
        result = trainer.fit()
    if not caught:
        return result, None
    if speak:
        print(
            f"scorekit {command}: stopped by {caught[0]} at step {result['step']}; saved "
            f"checkpoint {ckpt}; continue with: {resume}",
            file=sys.stderr,
        )
    return result, 130 if caught[0] == "SIGINT" else 143


class _stop_on_signals:
    """While training: the first SIGINT or SIGTERM asks the trainer to stop after the
    current step and save its checkpoint; a second SIGINT stops at once. ``as caught``
    gives the list of the signals' names."""

    def __init__(self, trainer):
        self.trainer, self.caught, self.old = trainer, [], {}

    def __enter__(self) -> list[str]:
        import signal

        def handler(signum, frame):
            name = signal.Signals(signum).name
            if self.caught and signum == signal.SIGINT:  # the second Ctrl-C: at once
                raise KeyboardInterrupt
            self.caught.append(name)
            self.trainer.request_stop()
            print(f"scorekit train: {name}: saving at the end of this step (Ctrl-C again to "
                  "stop at once)", file=sys.stderr, flush=True)  # fmt: skip

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.old[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread: no handlers
                pass
        return self.caught

    def __exit__(self, *exc) -> None:
        import signal

        for sig, old in self.old.items():
            signal.signal(sig, old)


def _check_resume(s: dict, meta: dict, data, out: Path, args) -> None:
    """A resumed run must go on with the data, normalisation and process it was trained on,
    and have work left; one line naming what differs otherwise."""
    stored = meta.get("data", {})
    if stored.get("spec") is not None and str(s["data"]) != stored.get("spec"):
        raise ValueError(
            f"--data {s['data']!r} differs from the data {stored['spec']!r} the run in "
            f"{str(out)!r} was trained on; resume with that data or start another --out"
        )
    if stored.get("shape") is not None and list(data.shape) != stored["shape"]:
        raise ValueError(
            f"--resume: the data now has examples of shape {tuple(data.shape)}, the run was "
            f"trained on {tuple(stored['shape'])}"
        )
    if meta.get("normalizer") is not None and data.normalizer.config() != meta["normalizer"]:
        raise ValueError(
            f"--resume: the data's normalisation {data.normalizer.config()} differs from the "
            f"run's {meta['normalizer']}; the data must be the same (or pass --normalize as "
            "the run had it)"
        )
    mine, was = s["train"].get("posthoc_ema", []), meta.get("train", {}).get("posthoc_ema", [])
    if list(mine) != list(was):
        raise ValueError(
            f"--posthoc-ema {','.join(f'{w:g}' for w in mine) or 'none'}: the run in "
            f"{str(out)!r} keeps {','.join(f'{w:g}' for w in was) or 'none'}; resume it with "
            "those (or start another --out)"
        )
    for key in ("weighting", "sigma_sampling", "augment", "val_fraction"):  # stay the run's
        mine, was = s.get(key, DEFAULTS[key]), (meta.get("cli") or {}).get(key, DEFAULTS[key])
        if mine != was:
            flag = "--" + key.replace("_", "-")
            raise ValueError(
                f"{flag} {mine}: the run in {str(out)!r} was trained with {flag} {was}; "
                "resume it with that (or start another --out)"
            )
    step, t = meta.get("step", 0), s["train"]
    if t.get("steps") is not None and t["steps"] <= step and not t.get("seconds"):
        raise ValueError(
            f"--steps {t['steps']}: the run in {str(out)!r} is already at step {step}; "
            "pass a larger --steps (or --minutes) to train on"
        )
    if t.get("seconds") and meta.get("elapsed", 0.0) >= t["seconds"] and t.get("steps") is None:
        raise ValueError(
            f"--minutes {t['seconds'] / 60:g}: the run in {str(out)!r} has already trained "
            f"{meta['elapsed'] / 60:.2f} minutes; pass a larger --minutes"
        )


def _save_weighting(trainer, out: Path) -> None:
    """A learned weighting's curve over the process's range of sigma: OUT/weighting.json,
    and OUT/weighting.png when matplotlib is there; an adaptive law of sigma's proposal:
    OUT/sigma_draws.json and OUT/sigma_draws.png."""
    from ..losses import AdaptiveSigma, UncertaintyWeighted
    from ..train.checkpoint import write_atomic

    obj = trainer.objective
    if isinstance(obj, AdaptiveSigma):
        draws = obj.proposal_curve()
        draws["step"] = trainer.step
        write_atomic(out / "sigma_draws.json", json.dumps(draws, indent=1) + "\n")
        try:
            from .plots import plot_sigma_draws, save_figure

            save_figure(plot_sigma_draws(draws), out / "sigma_draws.png")
        except ImportError:  # matplotlib comes with the 'cli' extra
            pass
        obj = obj.objective
    if not isinstance(obj, UncertaintyWeighted):
        return
    edges = trainer.sigma_edges  # the range of sigma the trainer logs its loss over
    curve = obj.weighting_curve(torch.logspace(edges[0].log10(), edges[-1].log10(), 64))
    curve["step"] = trainer.step
    write_atomic(out / "weighting.json", json.dumps(curve, indent=1) + "\n")
    try:
        from .plots import plot_learned_weighting, save_figure
    except ImportError:  # matplotlib comes with the 'cli' extra
        return
    save_figure(plot_learned_weighting(curve), out / "weighting.png")


def _run_data(s: dict):
    """The training examples of a run's settings and its validation split (or ``None``),
    as ``scorekit train`` draws them (seeded by the run's seed)."""
    from ..train.data import load_data

    seed = int(s["train"].get("seed", 0))
    data = load_data(
        s["data"],
        n=s["n"],
        generator=torch.Generator().manual_seed(seed),
        normalize=s["normalize"],
        key=s["key"],
        image_size=s["image_size"],
        split=s["split"] if s["data"] == "digits" else "all",
    )
    if data.x.shape[0] < 2:
        raise ValueError(f"data {s['data']!r} holds {data.x.shape[0]} example(s), need >= 2")
    if not s.get("val_fraction"):
        return data, None
    from ..train.data import split_validation  # held out before anything is fitted

    n_val = round(s["val_fraction"] * len(data))
    if not 1 <= n_val < len(data) - 1:
        raise ValueError(
            f"--val-fraction {s['val_fraction']:g} of {len(data)} examples holds out "
            f"{n_val}; it must leave at least one for validation and two for training"
        )
    return split_validation(data, s["val_fraction"], seed)


def cmd_train(args: argparse.Namespace) -> int:
    from ..train.checkpoint import load_checkpoint
    from ..train.distributed import init_distributed, shutdown_distributed
    from ..train.trainer import TrainConfig, Trainer

    out = _out_dir(args.out)
    ckpt = out / "checkpoint.safetensors"
    stored = stored_meta = None
    if args.resume and args.overwrite:
        raise ValueError("--resume continues a run and --overwrite replaces it: pass one")
    if args.resume:
        if not ckpt.is_file():
            raise ValueError(f"--resume: no checkpoint in {str(out)!r}")
        stored_meta = load_checkpoint(ckpt)[1]
        stored = stored_meta.get("cli")
        if (stored or {}).get("reflow"):
            raise ValueError(
                f"--resume: {str(out)!r} is a reflow run; continue it with scorekit reflow "
                f"TEACHER --out {out} --resume"
            )
    else:
        held = [p for p in (ckpt, ckpt.with_suffix(".json"), out / "log.jsonl") if p.exists()]
        if (out / "posthoc").is_dir() and any((out / "posthoc").glob("*.safetensors")):
            held.append(out / "posthoc")
        if held and not args.overwrite:
            raise ValueError(
                f"{str(out)!r} already holds a run ({', '.join(p.name for p in held)}); pass "
                "--resume to continue it, --overwrite to replace it, or another --out"
            )
    s = _settings(args, stored)  # the data-related settings; the recipe comes with the data
    if args.resume and bool((stored or {}).get("conditional")) != bool(s["conditional"]):
        kind = "a class-conditional" if s["conditional"] is None else "an unconditional"
        raise ValueError(
            f"--conditional: {str(out)!r} holds {kind} checkpoint; resume it as it was "
            "trained (with --conditional exactly when it is class-conditional) or use another --out"
        )
    chosen = _runtime(args)
    rank, _, device = init_distributed()
    if args.device is not None:
        device = chosen
    trainer = None
    try:
        seed = int(s["train"].get("seed", 0))
        if s["train"].get("val_every") is not None and not s.get("val_fraction"):
            raise ValueError("--val-every needs --val-fraction (the examples to validate on)")
        data, val = _run_data(s)
        cfg_recipe = _load_json(args.config).get("recipe")
        recipe = args.recipe or cfg_recipe or (stored or {}).get("recipe")
        auto = recipe is None and not stored
        if auto:
            recipe = choose_recipe(data.shape)
        if recipe is not None:
            s = _settings(args, stored, recipe)
        if stored_meta is not None:
            _check_resume(s, stored_meta, data, out, args)
        torch.manual_seed(seed)
        model, objective, examples = build_run(s, data)
        cfg = TrainConfig.from_dict({"progress": not args.quiet, **s["train"]})
        meta = {"cli": s, "data": data_meta(s, data)}
        if rank == 0 and not args.quiet:
            print(describe(s, data.shape, len(data), auto), flush=True)
        trainer = Trainer(
            model,
            objective,
            examples,
            cfg,
            out,
            normalizer=data.normalizer,
            meta=meta,
            device=device,
            val_data=None if val is None else (val if examples is data else val.x),
        )
        if args.resume:
            trainer.resume(ckpt)
        elif args.overwrite:  # the user asked: the old run's files go now, not before
            old = (ckpt, ckpt.with_suffix(".json"), out / "log.jsonl", out / "weighting.json")
            best = (out / "best.safetensors", out / "best.json")
            draws = (out / "sigma_draws.json", out / "sigma_draws.png")
            for p in (*old, *best, *draws, out / "weighting.png"):
                p.unlink(missing_ok=True)
            from ..train.posthoc import remove_snapshots

            remove_snapshots(out / "posthoc")  # every rank: each unlink may miss
            for p in out.glob("ema-*.safetensors"):  # scorekit ema's, of that run
                p.unlink(missing_ok=True)
                p.with_suffix(".json").unlink(missing_ok=True)
        resume = f"scorekit train --out {out} --resume"
        result, code = _fit(trainer, "train", ckpt, resume, speak=rank == 0)
        if rank == 0:
            if code is not None:
                return code
            _save_weighting(trainer, out)
            what = f"trained to step {result['step']}, final loss {result['loss']:.4g}"
            if trainer.best is not None:
                what += (f", best validation loss {trainer.best[1]:.4g} at step "
                         f"{trainer.best[0]} ({trainer.best_path})")  # fmt: skip
            print(f"{what}, skipped {result['skipped']}; checkpoint {ckpt}")
    finally:
        if trainer is not None:
            trainer.close()
        shutdown_distributed()
    return 0


def _widths(text: str, flag: str) -> list[float]:
    """A comma-separated list of post-hoc EMA widths sigma_rel."""
    from ..train.posthoc import SIGMA_REL_MAX, sigma_rel_to_gamma

    try:
        widths = [float(w) for w in str(text).split(",") if w.strip()]
        for w in widths:
            sigma_rel_to_gamma(w)
    except ValueError:
        widths = []
    if not widths:
        raise ValueError(
            f"{flag} {text!r}: expected comma-separated widths sigma_rel in (0, "
            f"{SIGMA_REL_MAX:.4f}], e.g. 0.05,0.1"
        )
    return widths


def cmd_ema(args: argparse.Namespace) -> int:
    """Post-hoc EMA: rebuild the averages of the widths asked from a run's snapshots
    (``scorekit train --posthoc-ema``), score each on the run's validation split when it has
    one, and write each as a checkpoint that sample / evaluate read."""
    from ..train.checkpoint import load_checkpoint, save_checkpoint
    from ..train.posthoc import reconstruct_widths

    run = Path(args.run)
    if not run.is_dir() or not (run / "checkpoint.safetensors").is_file():
        raise ValueError(f"RUN {str(run)!r}: expected a run folder with a checkpoint")
    if not (run / "posthoc").is_dir():
        raise ValueError(
            f"{str(run)!r} has no post-hoc EMA snapshots (OUT/posthoc); train it with "
            "--posthoc-ema 0.05,0.1"
        )
    widths = _widths(args.sigma_rel, "--sigma-rel")
    if args.out is not None and len(widths) != 1:
        raise ValueError(f"--out names one file, but --sigma-rel asks for {len(widths)} widths")
    at = "" if args.step is None else f"-step{args.step}"
    targets = [args.out or run / f"ema-{w:g}{at}.safetensors" for w in widths]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not args.overwrite:
        raise ValueError(f"{', '.join(existing)} exist(s); pass --overwrite to replace")
    device = _runtime(args)
    tensors, meta = load_checkpoint(run / "checkpoint.safetensors")
    states = reconstruct_widths(run / "posthoc", widths, args.step)
    want = {k[len("ema.") :] for k in tensors if k.startswith("ema.")}
    missing = sorted(want - set(states[0][0]))
    if missing:
        raise ValueError(
            f"the snapshots in {str(run / 'posthoc')!r} lack {missing[:3]} of the run's model; "
            "they belong to another run"
        )
    states = [({k: st[k] for k in want}, info) for st, info in states]
    val_losses = _validation_losses(meta, [st for st, _ in states], device)
    rows = []
    for target, (state, info), vl in zip(targets, states, val_losses, strict=True):
        info["val_loss"] = vl
        keep = {k: v for k, v in tensors.items() if k.startswith("objective.")}
        keep.update({f"model.{k}": v for k, v in state.items()})  # raw = the average here
        keep.update({f"ema.{k}": v for k, v in state.items()})
        out_meta = {k: v for k, v in meta.items() if k not in ("optim", "best")}
        out_meta |= {"posthoc_ema": info, "step": info["step"]}
        save_checkpoint(target, keep, out_meta)
        rows.append(
            f"sigma_rel {info['sigma_rel']:g} (gamma {info['gamma']:.3g}) at step "
            f"{info['step']}: profile fit error {info['fit_error']:.2g}"
            + ("" if vl is None else f", validation loss {vl:.5g}")
            + f"; wrote {target}"
            + (
                f" (warning: the snapshots resolve sigma_rel {info['sigma_rel']:g} poorly; store "
                "them more often with --posthoc-every, or pick a width nearer the tracked ones)"
                if info["fit_error"] > 0.05
                else ""
            )
        )
    print("\n".join(rows))
    if all(v is not None for v in val_losses) and len(widths) > 1:
        i = min(range(len(widths)), key=val_losses.__getitem__)
        print(f"lowest validation loss: sigma_rel {widths[i]:g} ({targets[i]})")
    return 0


def _validation_losses(meta: dict, states: list[dict], device) -> list[float | None]:
    """The run's validation loss (:meth:`Trainer.validation_loss`) of each EMA state, or
    ``None`` for each when the run has no validation split."""
    from ..train.trainer import TrainConfig, Trainer

    s = json.loads(json.dumps(meta.get("cli") or {}))
    if not s.get("val_fraction"):
        return [None] * len(states)
    data, val = _run_data(s)
    torch.manual_seed(int(s["train"].get("seed", 0)))
    model, objective, examples = build_run(s, data)
    cfg = TrainConfig.from_dict({**s["train"], "progress": False, "posthoc_ema": []})
    trainer = Trainer(model, objective, examples, cfg, device=device,
                      val_data=val if examples is data else val.x)  # fmt: skip
    out = []
    for state in states:
        trainer.ema.module.load_state_dict(state)
        out.append(trainer.validation_loss())
    return out


# -- sample / likelihood / plot -----------------------------------------------------------
def _load(path: Path, ema: bool = True, device: torch.device | str = "cpu"):
    """``(model, normalizer, meta)`` of a checkpoint file or run folder, on ``device``."""
    from ..train.checkpoint import load_model

    return load_model(_checkpoint_path(path), ema=ema, device=device)


def _labels(model, path: Path, n: int, label: int | None, guidance: float | None):
    """``(model, cond, what)`` for ``scorekit sample``: the labels of a class-conditional
    model as conditioning, with classifier-free guidance ``guidance`` (default 1); without
    ``label``, the unconditional score through the null label."""
    from ..guidance import ClassifierFreeGuidance, num_classes_of

    k = num_classes_of(model)
    if k is None:
        if label is not None or guidance is not None:
            given = " and ".join(f for f, v in (("--label", label), ("--guidance", guidance))
                                 if v is not None)  # fmt: skip
            raise ValueError(
                f"{given} need{'s' if ' and ' not in given else ''} a class-conditional "
                f"checkpoint (scorekit train --conditional); {path} holds an unconditional "
                "model"
            )
        return model, None, ""
    if label is None:
        if guidance is not None:
            raise ValueError(f"--guidance needs --label (a class in [0, {k - 1}])")
        return model, None, ", unconditional through the null label"
    if not 0 <= label < k:
        raise ValueError(
            f"--label must be a class in [0, {k - 1}] of checkpoint {path}, got {label}"
        )
    scale = 1.0 if guidance is None else guidance
    if not math.isfinite(scale):
        raise ValueError(f"--guidance must be a finite number, got {guidance}")
    if scale != 1.0:
        model = ClassifierFreeGuidance(model, scale)
    y = torch.full((n,), label, dtype=torch.long)
    return model, {"y": y}, f", class {label}, guidance {scale:g}"


def _autoguided(model, normalizer, meta: dict, args, device):
    """``(model, what)`` for ``scorekit sample --guide G``: the model guided by the weaker
    checkpoint ``G`` with scale ``--guidance`` (default 2), refused when ``G`` was trained on
    other data, normalises it otherwise or uses another noise process."""
    from ..guidance import AutoGuidance

    scale = 2.0 if args.guidance is None else args.guidance
    if not math.isfinite(scale):
        raise ValueError(f"--guidance must be a finite number, got {args.guidance}")
    if not _checkpoint_path(args.guide).is_file():
        raise ValueError(f"--guide {args.guide}: nothing to load there (expected a checkpoint "
                         "file or a run folder)")  # fmt: skip
    if _checkpoint_path(args.guide).resolve() == _checkpoint_path(args.checkpoint).resolve():
        raise ValueError(f"--guide {args.guide} is the model's own checkpoint; the guide must "
                         "be a weaker model (an earlier or smaller run, or scorekit ema RUN "
                         "--step S)")  # fmt: skip
    try:
        guide, gnorm, gmeta = _load(args.guide, not args.no_ema, device)
    except ValueError as e:
        raise ValueError(f"--guide {args.guide}: {e} (a guide is a run folder or a checkpoint "
                         "scorekit train or scorekit ema wrote)") from None  # fmt: skip
    if not _same_data(gmeta, meta):
        raise ValueError(
            f"--guide {args.guide} was trained on {_data_desc(gmeta)}, the model on "
            f"{_data_desc(meta)}; the guide must be a weaker model of the same data"
        )
    if not _same_normalizer(gnorm, normalizer):
        raise ValueError(
            f"--guide {args.guide} normalises the data otherwise than the model (another "
            "--normalize or other training examples); the guide must see the model's space"
        )
    if guide.process.config() != model.process.config():
        raise ValueError(
            f"--guide {args.guide} uses the process {guide.process.config()}, the model "
            f"{model.process.config()}; the guide must use the model's"
        )
    what = f", autoguided by {args.guide} at {scale:g} (two network passes per evaluation)"
    return AutoGuidance(model, guide, scale), what


def _png_dir(folder: Path, x: np.ndarray, meta: dict) -> list[Path]:
    """One grey or RGB PNG per image sample (data coordinates, clipped to the pixel range,
    mapped to 0..255), written atomically; returns the paths."""
    from PIL import Image

    from ..train.checkpoint import write_atomic

    lo, hi = _pixels(meta) or (float(x.min()), float(x.max()))
    _out_dir(folder).mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(x):
        v = np.clip((img - lo) / max(hi - lo, 1e-12), 0, 1) * 255
        arr = v[0] if v.shape[0] == 1 else np.moveaxis(v, 0, -1)
        buf = io.BytesIO()
        Image.fromarray(np.round(arr).astype(np.uint8)).save(buf, format="PNG")
        paths.append(folder / f"sample_{i:05d}.png")
        write_atomic(paths[-1], buf.getvalue())
    return paths


def _training_points(meta: dict, normalizer) -> torch.Tensor | None:
    """Up to 2000 training examples in model space (for scatter plots), or ``None``."""
    from ..train.data import load_data

    try:
        n = min(meta["data"].get("n", 2000), 2000)
        g = torch.Generator().manual_seed(0)
        d = load_data(meta["data"]["spec"], n=n, normalizer=normalizer, generator=g)
    except (ValueError, OSError):
        return None
    return d.x[:2000]


def _pixels(meta: dict) -> tuple[float, float] | None:
    """The data's own pixel range, ``(0, levels - 1)``, for images of discrete levels."""
    bins = meta.get("data", {}).get("bins")
    return (0.0, float(bins - 1)) if bins else None


def _device(model) -> torch.device:
    """The device a loaded model's parameters live on (the CPU for one without any)."""
    return next(iter(model.parameters()), torch.zeros(())).device


def _sample(model, shape, n, sampler, steps, seed, trajectory=False, cond=None, args=None,
            grid=None):  # fmt: skip
    """Samples on the model's device (the generator on the CPU: the same seed, the same
    samples on any device up to the device's arithmetic), with a progress bar unless
    ``--quiet``; on ``grid`` when given, else the sampler's default grid of ``steps``."""
    from ..samplers import sample

    g = torch.Generator().manual_seed(seed)
    device = _device(model)
    if cond is not None:
        cond = {k: v.to(device) for k, v in cond.items()}
    return sample(
        model,
        (n, *shape),
        sampler=sampler,
        steps=steps,
        generator=g,
        return_trajectory=trajectory,
        cond=cond,
        device=device,
        progress=args is not None and not args.quiet,
        grid=grid,
    )


#: samplers that do not step a decreasing grid of noise levels (Langevin at one level,
#: annealed Langevin's levels, the adaptive dopri5)
_NO_FITTED_GRID = ("langevin", "mala", "annealed_langevin", "dopri5")


def _fitted_grid(model, shape, sampler: str, steps: int | None, cond, args) -> torch.Tensor:
    """``--grid fitted``: :func:`~scorekit.samplers.optimized_grid` (GITS) of the sampler's
    steps, fitted on ``--calibration`` prior draws (seeded apart from the samples')."""
    from ..samplers import make_sampler, optimized_grid

    if sampler in _NO_FITTED_GRID:
        raise ValueError(f"--grid fitted needs a sampler that steps a grid of noise levels; "
                         f"--sampler {sampler} does not")  # fmt: skip
    steps = steps or make_sampler(sampler).default_steps
    n = args.calibration or 256
    device = _device(model)
    cal = None if cond is None else {k: v[:1].expand(n, *v.shape[1:]).to(device)
                                     for k, v in cond.items()}  # fmt: skip
    g = torch.Generator().manual_seed(args.seed + 1_000_003)
    cands, refine = max(100, steps), 8  # optimized_grid's defaults, more candidates if needed
    grid = optimized_grid(model, steps, (n, *shape), candidates=cands, refine=refine,
                          generator=g, cond=cal, device=device)  # fmt: skip
    levels = model.process.ratio(grid).tolist()
    print(f"fitted grid (GITS): {steps} steps from {n} calibration starts "
          f"({cands * (refine + 1)} evaluations of them); sigma/alpha "
          + ", ".join(f"{v:.3g}" for v in levels))  # fmt: skip
    return grid


def _check_writable(paths, overwrite: bool, hint: str = "") -> None:
    """Refuse to write over a folder, or over an existing file unless ``--overwrite``."""
    for p in paths:
        if p.is_dir():
            raise ValueError(f"cannot write {str(p)!r}: it is a folder{hint}")
        if p.exists() and not overwrite:
            raise ValueError(f"{str(p)!r} exists; pass --overwrite to replace it or --out")


def _same_normalizer(a, b) -> bool:
    """Whether two normalisers are the same map (loc and scale to 1e-9)."""
    return all(
        u.shape == v.shape and torch.allclose(u, v, rtol=1e-9, atol=0)
        for u, v in ((a.loc, b.loc), (a.scale, b.scale))
    )


def _teleport(model, normalizer, meta: dict, sampler: str, sigma: float, label, cond, args):
    """``--teleport S``: :class:`~scorekit.samplers.GaussianTeleport` to ``S``. With
    ``--teleport-fit model`` (default) its Gaussian is fitted to the model's own denoiser at
    ``S`` (:meth:`~scorekit.samplers.GaussianTeleport.from_model`, with the labels of
    ``cond``); with ``data`` it has the mean and covariance, in model space, of the examples
    the run was trained on (drawn again as ``scorekit train`` drew them), those of class
    ``label`` when one is given."""
    from ..samplers import GaussianTeleport, make_sampler

    if not make_sampler(sampler).strict_grid or sampler in _NO_FITTED_GRID:
        raise ValueError(f"--teleport needs a sampler that steps a grid of noise levels; "
                         f"--sampler {sampler} does not")  # fmt: skip
    proc = model.process
    ends = torch.tensor([proc.t_min, proc.t_max], dtype=torch.float64)
    lo, hi = (float(v) for v in proc.ratio(ends))
    if not lo < sigma < hi:
        raise ValueError(f"--teleport {sigma:g} must lie between this run's smallest and largest "
                         f"noise levels sigma/alpha, {lo:.3g} and {hi:.4g}")  # fmt: skip
    if args.teleport_fit in (None, "model"):
        shape = tuple(meta["data"]["shape"])
        n = max(1024, 4 * (math.prod(shape) + 1))
        fit_cond = None if cond is None else {k: v[:1].expand(n, *v.shape[1:])
                                              for k, v in cond.items()}  # fmt: skip
        try:
            tp = GaussianTeleport.from_model(
                model, shape, sigma, sampler, n=n, cond=fit_cond, device=_device(model),
                generator=torch.Generator().manual_seed(args.seed + 2_000_003),
                batch_size=args.n,  # no larger a batch than the samples
            )  # fmt: skip
        except ValueError as e:
            raise ValueError(f"--teleport {sigma:g}: {e} (or --teleport-fit data)") from None
        print(f"teleport: the Gaussian fitted to the model at sigma/alpha = {sigma:g} ({n} "
              "evaluations) carries the start there")  # fmt: skip
        return tp, f", teleported to {sigma:g}"
    settings = meta.get("cli")
    if not isinstance(settings, dict) or "data" not in settings:
        raise ValueError("--teleport needs a run trained by scorekit train (its checkpoint "
                         "does not say how its data was drawn)")  # fmt: skip
    try:  # the examples the run trained on (without those it held out for validation)
        data, _ = _run_data(settings)
    except (ValueError, OSError, KeyError) as e:
        raise ValueError(f"--teleport needs the run's training data {settings['data']!r} for "
                         f"its mean and covariance, which did not load: {e}") from None  # fmt: skip
    if tuple(data.x.shape[1:]) != tuple(meta["data"]["shape"]):
        raise ValueError(f"--teleport: the run's training data {settings['data']!r} no longer "
                         f"has examples of shape {tuple(meta['data']['shape'])}")  # fmt: skip
    if not _same_normalizer(data.normalizer, normalizer):
        raise ValueError(
            f"--teleport: the run's training data {settings['data']!r} has changed since "
            "training (normalised now, it does not give the run's normalisation); the "
            "teleport needs the examples the run trained on"
        )
    x, which = data.x.double(), "training examples"
    if label is not None:  # the class's own Gaussian
        if data.labels is None or int((data.labels == label).sum()) < 2:
            raise ValueError(f"--teleport with --label {label}: the run's training data holds "
                             "fewer than 2 examples of that class")  # fmt: skip
        x, which = x[data.labels == label], f"training examples of class {label}"
    print(f"teleport: the Gaussian of {len(x)} {which} carries the start to "
          f"sigma/alpha = {sigma:g}")  # fmt: skip
    return GaussianTeleport.fit(x, sigma, sampler), f", teleported to {sigma:g}"


def cmd_sample(args: argparse.Namespace) -> int:
    from .plots import plot_image_grid, plot_pairs, plot_samples, save_figure

    device = _runtime(args)
    run = _checkpoint_path(args.checkpoint).parent
    meta = _read_run_meta(args.checkpoint)
    shape = tuple(meta["data"]["shape"])
    if args.n < 1:
        raise ValueError(f"--n must be an integer >= 1, got {args.n}")
    _check_memory("--n", args.n * math.prod(shape) * 8 * 3)
    if args.png_dir is not None and len(shape) != 3:
        raise ValueError(f"--png-dir writes images; this run's examples have shape {shape}")
    sampler, steps = _sampler_choice(args, meta)
    if args.teleport_fit is not None and args.teleport is None:
        raise ValueError(f"--teleport-fit {args.teleport_fit} needs --teleport SIGMA")
    # the default name records the choices that most often change between two runs (not,
    # e.g., which --guide or --calibration: such a second run is refused, not overwritten)
    tag = "" if args.steps is None else f"-k{args.steps}"
    tag += "-raw" if args.no_ema else ""
    tag += "" if args.grid != "fitted" else "-gits"
    tag += "" if args.label is None else f"-y{args.label}"
    if args.guide is not None:
        tag += f"-ag{2.0 if args.guidance is None else args.guidance:g}"
    elif args.guidance is not None:
        tag += f"-cfg{args.guidance:g}"
    if args.teleport is not None:
        tag += f"-tp{'d' if args.teleport_fit == 'data' else ''}{args.teleport:g}"
    out = args.out or run / "samples" / f"samples-{sampler}{tag}-n{args.n}-seed{args.seed}.npy"
    png = args.png or out.with_suffix(".png")
    _check_writable((out, png), args.overwrite, " (--out names a .npy file)")
    model, normalizer, meta = _load(args.checkpoint, not args.no_ema, device)
    guidance = None if args.guide is not None else args.guidance  # --guide: autoguidance
    model, cond, what = _labels(model, args.checkpoint, args.n, args.label, guidance)
    if args.guide is not None:  # the labels' line without a classifier-free scale
        model, what_guide = _autoguided(model, normalizer, meta, args, device)
        what = what.replace(", guidance 1", "") + what_guide
    grid = None
    if args.teleport is not None and args.grid == "fitted":
        raise ValueError("--teleport and --grid fitted do not combine (the teleport's grid "
                         "starts with its jump)")  # fmt: skip
    if args.grid == "fitted":
        grid = _fitted_grid(model, shape, sampler, steps, cond, args)
    elif args.calibration is not None:
        raise ValueError("--calibration needs --grid fitted")
    run_with = sampler
    if args.teleport is not None:
        run_with, what_tp = _teleport(model, normalizer, meta, sampler, args.teleport,
                                      args.label, cond, args)  # fmt: skip
        what += what_tp
        steps = steps or run_with.solver.default_steps
    res = _sample(model, shape, args.n, run_with, steps, args.seed, cond=cond, args=args,
                  grid=grid)  # fmt: skip
    res.x = res.x.detach().cpu()
    x = normalizer.decode(res.x.double()).numpy()
    _save_npy(out, x)
    written = [out]
    title = f"{args.n} samples{what}, {sampler}, {res.nfe} evaluations"
    if args.png_dir is not None:
        written += _png_dir(args.png_dir, x, meta)
    if shape == (2,):
        fig = plot_samples({sampler: res.x}, normalizer=normalizer, title=title)
    elif len(shape) == 3:
        fig = plot_image_grid(
            res.x[:64].cpu(), normalizer=normalizer, title=title, value_range=_pixels(meta)
        )
    else:  # more than 2 coordinates: pairs of the first few, over training data
        fig = plot_pairs(res.x, _training_points(meta, normalizer), normalizer=normalizer,
                         title=title)  # fmt: skip
    if fig is not None:
        png.parent.mkdir(parents=True, exist_ok=True)
        written.insert(1, save_figure(fig, png))
    extra = f" and {len(written) - 2} PNGs in {args.png_dir}" if args.png_dir else ""
    shown = ", ".join(map(str, written[:2]))
    print(f"wrote {shown}{extra} ({args.n} samples{what}, NFE {res.nfe})")
    return 0


def _read_run_meta(path: Path) -> dict:
    """A checkpoint's meta alone (the header: no tensor read), for checks before the work."""
    from ..train.checkpoint import read_meta

    meta = read_meta(_checkpoint_path(path))
    if not isinstance(meta.get("data"), dict) or "shape" not in meta["data"]:
        raise ValueError(f"checkpoint {path} does not say what data it was trained on")
    return meta


def _check_memory(flag: str, nbytes: int) -> None:
    """Refuse, up front and with the estimate, what cannot fit in this machine's memory."""
    import os

    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if nbytes > 0.5 * total:
        raise ValueError(
            f"{flag} asks for about {nbytes / 2**30:.1f} GiB of samples; this machine has "
            f"{total / 2**30:.1f} GiB of memory"
        )


def _sampler_choice(args, meta: dict) -> tuple[str, int | None]:
    """``--sampler`` and ``--steps``, or the run's recipe's; ``--steps`` is refused for
    the adaptive dopri5, which chooses its own."""
    recipe = (meta.get("cli") or {}).get("sample") or {}
    sampler = args.sampler or recipe.get("sampler", "heun")
    if sampler == "dopri5" and args.steps is not None:
        raise ValueError("--steps does not apply to --sampler dopri5 (adaptive: it picks its own)")
    steps = args.steps or (None if sampler == "dopri5" else recipe.get("steps"))
    return sampler, steps


def _test_data(spec: str, meta: dict, normalizer, n: int | None, seed: int, args) -> torch.Tensor:
    """Held-out examples in model space: the test split of 'digits', ``n`` fresh points of
    a toy (a seed other than training's), or a file; the first ``n`` (``None``: all)."""
    from ..train.data import load_data

    g = torch.Generator().manual_seed(seed)
    d = load_data(
        spec,
        n=10_000 if n is None else n,
        generator=g,
        normalize="none",
        key=args.key,
        image_size=args.image_size,
        split="test" if spec == "digits" else "all",
    )
    shape = tuple(meta["data"]["shape"])
    if d.shape != shape:
        raise ValueError(
            f"data {spec!r} has examples of shape {d.shape}, but the checkpoint was trained on "
            f"{shape}"
        )
    return normalizer.encode(d.x[:n].double()).float()  # n None: all of them


def _training_data(meta: dict) -> torch.Tensor:
    """The run's training examples in data coordinates (digits: the split it trained on)."""
    from ..train.data import load_data

    spec = meta["data"]["spec"]
    split = meta["data"].get("split", "all") if spec == "digits" else "all"
    return load_data(spec, normalize="none", split=split).x.double()


def _data_key(meta: dict) -> str:
    """A run's data: the named data set, or its file or folder resolved."""
    spec = str(meta["data"].get("spec"))
    p = Path(spec)
    return str(p.resolve()) if p.exists() else spec


def _same_data(a: dict, b: dict) -> bool:
    """Whether two runs' metas name the same data (its name or file, and the shape of an
    example)."""
    shape = [list(m["data"].get("shape", [])) for m in (a, b)]
    return _data_key(a) == _data_key(b) and shape[0] == shape[1]


def _data_desc(meta: dict) -> str:
    """A run's data in a message: ``'spec' of shape (...)``."""
    return f"{meta['data'].get('spec')!r} of shape {tuple(meta['data'].get('shape', []))}"


def _mixture_members(paths: list[Path], ema: bool, device) -> tuple[list, list, dict]:
    """``(models, normalizers, meta of the first)`` of the runs of a mixture: every run must
    share the first's data (its name or file, and the shape of an example), else the
    mixture is refused; each keeps its own normalisation."""
    models, norms, meta = [], [], None
    for path in paths:
        m, norm, mt = _load(path, ema, device)
        if meta is None:
            meta = mt
        elif not _same_data(mt, meta):
            raise ValueError(
                f"checkpoint {path} was trained on {_data_desc(mt)}, {paths[0]} on "
                f"{_data_desc(meta)}; a mixture needs runs on the same data"
            )
        models.append(m)
        norms.append(norm)
    return models, norms, meta


def cmd_likelihood(args: argparse.Namespace) -> int:
    paths = list(args.checkpoint)
    if len(paths) > 1 and args.divergence != "exact":
        raise ValueError(
            f"--divergence {args.divergence}: a mixture of {len(paths)} checkpoints needs "
            "--divergence exact"
        )
    models, norms, meta = _mixture_members(paths, not args.no_ema, _runtime(args))
    model, normalizer = models[0], norms[0]
    x = _test_data(args.data, meta, normalizer, args.n, args.seed, args)
    x = x.to(_device(model))
    kw = {"divergence": args.divergence, "method": args.method, "chunk_size": args.chunk_size,
          "progress": not args.quiet}  # fmt: skip
    for k in ("steps", "rtol", "atol"):
        if getattr(args, k) is not None:
            kw[k] = getattr(args, k)
    if args.divergence == "hutchinson":
        kw["generator"] = torch.Generator().manual_seed(args.seed)
    if args.sigma_max is not None:
        for path, m in zip(paths, models, strict=True):
            process = m.process
            top = float(process.sigma(torch.tensor(process.T, dtype=torch.float64)))
            which = f" ({path})" if len(paths) > 1 else ""
            if not process.unit_alpha:
                raise ValueError(f"--sigma-max continues a VE or EDM process; this checkpoint's "
                                 f"process is {type(process).__name__}{which}")  # fmt: skip
            if not args.sigma_max > top:
                raise ValueError(f"--sigma-max must exceed the process's largest sigma {top:g}, "
                                 f"got {args.sigma_max:g}{which}")  # fmt: skip
        kw["sigma_max"] = args.sigma_max
    images = args.data == "digits" or Path(args.data).is_dir()
    bins = meta["data"].get("bins") if images else None  # discrete pixels: dequantised bpd
    if len(models) > 1 and bins is not None:
        raise ValueError(
            f"a mixture of {len(models)} checkpoints is for continuous data; {args.data!r} is "
            "discrete pixels (pass one checkpoint)"
        )
    deq = args.dequantization or "uniform"
    if bins is None:
        for flag, value in (
            ("--dequantization", args.dequantization),
            ("--samples", args.samples),
            ("--dequant-steps", args.dequant_steps),
        ):
            if value is not None:
                raise ValueError(f"{flag} is for discrete data (digits or an image folder); "
                                 f"{args.data!r} is continuous")  # fmt: skip
    elif args.dequant_steps is not None and deq != "variational":
        raise ValueError("--dequant-steps needs --dequantization variational")
    elif deq == "truncated_normal" and (meta.get("cli") or {}).get("dequantize"):
        print("note: this run trained on uniformly dequantized pixels; truncated_normal "
              "concentrates each level within sigma(t_min) of it, which suits models trained "
              "on the levels themselves, so its bound is loose here (uniform or variational "
              "fit this model)", file=sys.stderr)  # fmt: skip
    elif deq == "variational":
        from ..dequantize import fit_dequantizer

        train = normalizer.encode(_training_data(meta)).to(x)
        steps = args.dequant_steps or 1000
        g = torch.Generator().manual_seed(args.seed)
        deq, trace = fit_dequantizer(model, train, bins=bins, steps=steps, generator=g)
        print(f"variational dequantizer: {steps} steps on {len(train)} training examples, "
              f"bound {trace[0]:.4f} -> {trace[-1]:.4f} nats/dim (up to a constant)")  # fmt: skip
    if len(models) > 1:
        r = nll_report(models, norms, x, bins, deq, args.samples or 1, **kw)
    else:
        r = nll_report(model, normalizer, x, bins, deq, args.samples or 1, **kw)
    lo, hi = r["nll_interval"]
    how = "" if len(models) == 1 else f", equal-weight mixture of {len(models)} checkpoints"
    if bins is not None:
        name = "variational" if not isinstance(deq, str) else deq
        how = f", {name} dequantization, {args.samples or 1} draw(s) per example"
    print(
        f"NLL {r['nll']:.4f} ± {r['nll_stderr']:.4f} nats (95% interval {lo:.4f} to {hi:.4f}), "
        f"{r['bpd']:.4f} ± {r['bpd_stderr']:.4f} bits/dim over {r['n']} examples of dimension "
        f"{r['dim']} (NFE {r['nfe']}{how})"
    )
    at = "" if args.sigma_max is None else f" at sigma {args.sigma_max:g}"
    if r["prior_nll"] is not None:
        prior = f"prior term -log pi(x(t_max)){at}: {r['prior_nll']:.4f} nats per example"
    else:
        prior = f"prior terms{at}: each member's own"
    if r["prior_error_bound"] is not None:
        prior += f", its error at most {r['prior_error_bound']:.4f} nats (data radius bound)"
    print(prior)
    return 0


def _quality_reference(meta: dict, args) -> tuple:
    """What every draw's sample quality compares with besides the held-out data, read once:
    for images the run's training images (data coordinates) and, for digits, their labels;
    for vectors nothing."""
    from ..train.data import load_data

    if len(meta["data"]["shape"]) != 3:
        return None, None
    train, labels = _training_data(meta), None
    if args.data == "digits":
        spec = meta["data"]["spec"]
        split = meta["data"].get("split", "all") if spec == "digits" else "all"
        labels = load_data("digits", split=split).labels.numpy()
    return train, labels


def _sample_quality(gen, real, reference: tuple, args, k: int) -> dict:
    """One draw's sample quality (data coordinates): images, the PCA-16 Frechet distance to
    the held-out images (digits: also the nearest-training-digit ratio; the real-vs-real
    figure from training digits chosen by ``k``); vectors, the sliced W2 distance to them
    and the held-out data's own (halves) floor. ``reference``: :func:`_quality_reference`."""
    from ..metrics import digits_quality, frechet_distance, sliced_wasserstein

    train, y = reference
    if train is not None:  # images: Frechet distance in a PCA space fitted on training data
        if y is not None:
            q = digits_quality(
                gen.clamp(0, 16).reshape(len(gen), -1).numpy(),
                train.reshape(len(train), -1).numpy(),
                y,
                real.reshape(len(real), -1).numpy(),
                seed=k,
                protocol="full",
            )
            keys = ("frechet", "frechet_real", "nn_train_median", "nn_train_median_real",
                    "nn_ratio")  # fmt: skip
            return {key: q[key] for key in keys}
        from sklearn.decomposition import PCA

        flat = lambda v: v.reshape(len(v), -1).numpy()  # noqa: E731
        pca = PCA(min(16, flat(train).shape[1]), random_state=0).fit(flat(train))
        m = min(len(gen), len(train))
        return {
            "frechet": frechet_distance(pca.transform(flat(gen)), pca.transform(flat(real))),
            "frechet_real": frechet_distance(
                pca.transform(flat(train[:m])), pca.transform(flat(real))
            ),
        }
    # vectors: sliced W2 in data coordinates, and the held-out data's own floor
    g = torch.Generator().manual_seed(args.seed)
    half = len(real) // 2
    return {
        "sliced_w2": float(sliced_wasserstein(gen, real, 256, g)),
        "sliced_w2_real": float(sliced_wasserstein(real[:half], real[half:], 256, g)),
    }


def _over_draws(per_draw: list[dict]) -> dict:
    """The measures of several draws of samples: each one's mean over the draws (the nn
    ratio: of the mean medians); for the headline distance (Frechet or sliced W2) also its
    standard deviation over the draws and every draw's value. One draw: its measures as
    they are."""
    out = {key: statistics.fmean(d[key] for d in per_draw) for key in per_draw[0]}
    if "nn_ratio" in out:  # the ratio of the mean medians, as for one draw
        out["nn_ratio"] = out["nn_train_median"] / out["nn_train_median_real"]
    head = "frechet" if "frechet" in out else "sliced_w2"
    if len(per_draw) > 1:
        out[f"{head}_sd"] = statistics.stdev(d[head] for d in per_draw)
        out[f"{head}_draws"] = [d[head] for d in per_draw]
    if "frechet" in out:
        out["frechet_protocol"] = (
            "PCA-16 of the training digits, all held-out digits; real: as many training digits"
            if "nn_ratio" in out
            else "PCA-16 of the training images"
        )
    return out


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Sample quality against held-out data (over ``--draws`` draws of samples), and the
    test NLL, as JSON and markdown."""
    from ..train.checkpoint import write_atomic
    from ..train.data import TOYS

    ckpt = _checkpoint_path(args.checkpoint)
    if args.n < 2:
        raise ValueError(f"--n must be >= 2 (a distance between sample sets needs two samples "
                         f"or more), got {args.n}")  # fmt: skip
    target = args.out or ckpt.parent / "evaluate.json"
    if target.suffix != ".json":
        raise ValueError(f"--out names the JSON to write (a .json file; the markdown goes "
                         f"beside it), got {str(target)!r}")  # fmt: skip
    if target.resolve() == ckpt.with_suffix(".json").resolve():
        raise ValueError(f"--out {str(target)!r} is the checkpoint's own metadata; name "
                         "another file")  # fmt: skip
    _check_writable((target, target.with_suffix(".md")), args.overwrite)
    model, normalizer, meta = _load(ckpt, not args.no_ema, _runtime(args))
    shape = tuple(meta["data"]["shape"])
    sampler, steps = _sampler_choice(args, meta)
    toy = args.data in TOYS  # toys: fresh points, --n of them for the sample quality and,
    # drawn apart with the same seed, --nll-n for the NLL (neither depends on the other)
    held = _test_data(args.data, meta, normalizer, args.n if toy else None, args.seed, args)
    real = normalizer.decode(held.double())
    out = {
        "checkpoint": str(ckpt),
        "data": args.data,
        "n_samples": args.n,
        "draws": args.draws,
        "n_held_out": len(held),
        "sampler": sampler,
        "steps": steps,
        "weights": "raw" if args.no_ema else "ema",
    }
    per_draw, reference = [], _quality_reference(meta, args)
    for k in range(args.draws):  # draw k: samples seeded seed + 1 + 1000 k
        res = _sample(model, shape, args.n, sampler, steps, args.seed + 1 + 1000 * k, args=args)
        gen = normalizer.decode(res.x.detach().cpu().double())
        per_draw.append(_sample_quality(gen, real, reference, args, k))
        out["nfe"] = res.nfe
    out.update(_over_draws(per_draw))
    from ..metrics import straightness

    device = _device(model)
    g = torch.Generator().manual_seed(args.seed + 2)
    st = straightness(model, min(args.n, 500), 50, g, device=device)
    out.update(straightness=st.value, straightness_relative=st.relative, straightness_steps=50)
    if not args.no_nll:
        if toy:
            held = _test_data(args.data, meta, normalizer, args.nll_n, args.seed, args)
        x = held[: args.nll_n].to(device)
        kw = {
            "divergence": "hutchinson" if x[0].numel() > 16 else "exact",
            "rtol": 1e-4,
            "atol": 1e-4,
            "generator": torch.Generator().manual_seed(args.seed),
            "progress": not args.quiet,
        }
        if kw["divergence"] == "exact":
            kw.pop("generator")
        images = args.data == "digits" or Path(args.data).is_dir()
        r = nll_report(model, normalizer, x, meta["data"].get("bins") if images else None, **kw)
        out.update(
            nll=r["nll"],
            nll_stderr=r["nll_stderr"],
            bpd=r["bpd"],
            bpd_stderr=r["bpd_stderr"],
            nll_n=r["n"],
            nll_divergence=kw["divergence"],
        )

    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return ", ".join(map(cell, v)) if isinstance(v, list) else str(v)

    rows = "\n".join(f"| {k} | {cell(v)} |" for k, v in out.items())
    write_atomic(target, json.dumps(out, indent=1) + "\n")
    write_atomic(target.with_suffix(".md"), "| measure | value |\n|---|---|\n" + rows + "\n")
    head = ", ".join(
        f"{k} {out[k]:.4g}"
        for k in (
            "frechet",
            "frechet_sd",
            "frechet_real",
            "nn_ratio",
            "sliced_w2",
            "sliced_w2_sd",
            "sliced_w2_real",
            "straightness",
            "nll",
            "bpd",
        )  # fmt: skip
        if k in out
    )
    print(f"{head}; wrote {target} and {target.with_suffix('.md')}")
    return 0


KINDS = ("field", "samples", "trajectories", "grid", "loss")


def cmd_plot(args: argparse.Namespace) -> int:
    from ..train.data import load_data
    from .plots import (
        plot_image_grid,
        plot_loss_per_sigma,
        plot_samples,
        plot_score_field,
        plot_trajectories,
        save_figure,
    )

    ckpt = _checkpoint_path(args.checkpoint)
    device = _runtime(args)
    meta = _read_run_meta(ckpt)
    out = _out_dir(args.out or ckpt.parent / "plots")
    shape = tuple(meta["data"]["shape"])
    two_d, log = shape == (2,), ckpt.parent / "log.jsonl"
    fits = {"field": two_d, "trajectories": two_d, "samples": two_d, "grid": len(shape) == 3,
            "loss": log.is_file()}  # fmt: skip
    if "all" in args.kind:
        kinds = [k for k in KINDS if fits[k]]
    else:
        kinds = list(dict.fromkeys(args.kind))
        bad = [k for k in kinds if not fits[k]]
        if bad:
            why = f"{log} is missing" if bad == ["loss"] else f"examples of shape {shape}"
            raise ValueError(f"--kind {' '.join(bad)} does not apply to this run ({why})")
    if not kinds:
        raise ValueError(f"no figure applies to this run (examples of shape {shape}, no log)")
    _check_writable([out / f"{k}.png" for k in kinds], args.overwrite)
    sampler, steps = _sampler_choice(args, meta)
    model, normalizer, meta = _load(ckpt, device=device)
    data = None
    if any(k in ("field", "samples", "trajectories") for k in kinds):
        data = load_data(
            meta["data"]["spec"],
            n=meta["data"]["n"],
            normalizer=normalizer,
            generator=torch.Generator().manual_seed(meta["train"]["seed"]),
        ).x
    written = []
    for kind in kinds:
        if kind == "loss":
            fig = plot_loss_per_sigma(ckpt.parent / "log.jsonl")
        elif kind == "field":
            p = model.process
            ts = [float(p.t_of_sigma(torch.tensor(s))) for s in _field_sigmas(p)]
            fig = plot_score_field(model.cpu(), data, ts, normalizer=normalizer)
        else:
            res = _sample(
                model,
                shape,
                args.n,
                sampler,
                steps,
                args.seed,
                trajectory=kind == "trajectories",
                args=args,
            )
            res.x = res.x.cpu()
            res.trajectory = None if res.trajectory is None else res.trajectory.cpu()
            if kind == "samples":
                fig = plot_samples({sampler: res.x}, data, normalizer=normalizer)
            elif kind == "grid":
                fig = plot_image_grid(res.x[:64], normalizer=normalizer, value_range=_pixels(meta))
            else:
                fig = plot_trajectories(
                    {sampler: _stack(res.trajectory)}, data, normalizer=normalizer
                )
        written.append(save_figure(fig, out / f"{kind}.png"))
    print("wrote " + ", ".join(map(str, written)))
    return 0


def _field_sigmas(process) -> list[float]:
    lo = float(process.sigma(torch.tensor(process.t_min, dtype=torch.float64)))
    hi = float(process.sigma(torch.tensor(process.t_max, dtype=torch.float64)))
    lo = max(lo, 1e-3 * hi)
    return [lo * (hi / lo) ** f for f in (0.1, 0.45, 0.8)]


def _stack(traj) -> torch.Tensor:
    if isinstance(traj, torch.Tensor):
        return traj
    return torch.stack(list(traj))


def cmd_advise(args: argparse.Namespace) -> int:
    from ..noise.advise import advise, save_advice
    from ..train.data import load_data

    data = load_data(
        args.data,
        n=args.n,
        generator=torch.Generator().manual_seed(args.seed),
        normalize=args.normalize,
        key=args.key,
        image_size=args.image_size,
    )
    advice = advise(
        data.x,
        T=args.T,
        sigma_min=args.sigma_min,
        generator=torch.Generator().manual_seed(args.seed),
    )
    print(f"advice for {args.data!r} in model space (after the {args.normalize!r} normalisation)")
    print(advice.table())
    if args.out is not None:
        print(f"wrote {save_advice(advice, args.out)}")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    figures = measured()
    for name, r in RECIPES.items():
        print(f"{name}: {r['summary']} (picked for {r['when']})")
        for m in figures.get(name, []):
            print(f"  measured: {m['what']} {m['value']} after {m['budget']} ({m['source']})")
        if not figures.get(name):
            print("  measured: nothing yet")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    report = run_demo(_out_dir(args.out), seed=args.seed, steps=args.steps, quiet=args.quiet)
    print(report)
    return 0


# -- parser -------------------------------------------------------------------------------
THREADS_HELP = (
    "torch intra-op threads (default: the cores the machine leaves free, cores minus the "
    "1-minute load average, at least 1: measured on 2 cores, a U-Net step ran 12.5/s on one "
    "thread and 18.6/s on two when idle, but two processes of two threads each slow each "
    "other down several times over)"
)


def default_threads() -> int:
    """The cores this machine leaves free: ``cpu_count`` minus the 1-minute load average,
    rounded, at least 1 (see :data:`THREADS_HELP`)."""
    import os

    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:  # not on every platform
        load = 0.0
    return max(1, min(cores, int(cores - load + 0.5)))


def _runtime(args: argparse.Namespace) -> torch.device:
    """Apply ``--threads`` and return the ``--device`` (default: CUDA when present), each
    checked with one line naming the flag."""
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be an integer >= 1, got {threads}")
    torch.set_num_threads(threads or default_threads())
    name = getattr(args, "device", None)
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"--device must be a torch device such as cpu, cuda or cuda:1, got {name!r}"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this machine has no CUDA device")
    if device.type == "cuda" and device.index is not None:
        if device.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    return device


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (flag, value, what was expected) and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _number(kind, low=None, high=None, low_open=False, high_open=False):
    """An argparse type: ``kind`` (int or float) within the bounds, or a message saying
    what was expected."""
    lo_s = "" if low is None else (f"> {low:g}" if low_open else f">= {low:g}")
    hi_s = "" if high is None else (f"< {high:g}" if high_open else f"<= {high:g}")
    want = " and ".join(v for v in (lo_s, hi_s) if v)
    noun = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun} {want}, got {text!r}") from None
        if (
            v != v
            or v in (float("inf"), float("-inf"))
            or (
                (low is not None and (v <= low if low_open else v < low))
                or (high is not None and (v >= high if high_open else v > high))
            )
        ):
            raise argparse.ArgumentTypeError(f"expected {noun} {want}, got {text!r}")
        return v

    parse.__name__ = f"{noun} {want}"
    return parse


POSITIVE_INT = _number(int, 1)
COUNT = _number(int, 0)
POSITIVE = _number(float, 0, low_open=True)
FRACTION_OPEN = _number(float, 0, 1, high_open=True)
IMAGE_SIDE = _number(int, 1, 1024)


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="scorekit", description=__doc__.splitlines()[0])
    runtime = argparse.ArgumentParser(add_help=False)
    runtime.add_argument("--device", help="torch device: cpu, cuda, cuda:1 (default: cuda if "
                         "available, else cpu)")  # fmt: skip
    runtime.add_argument("--threads", type=POSITIVE_INT, help=THREADS_HELP)
    runtime.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = ap.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a score model", parents=[runtime])
    t.add_argument("--data", help="toy name (moons, 8gaussians, ...), 'digits', or a path")
    t.add_argument("--n", type=POSITIVE_INT, help="number of toy points (default 20000)")
    t.add_argument("--key", help="array name inside an .npz file")
    t.add_argument("--image-size", type=IMAGE_SIDE, help="resize images to this square side")
    t.add_argument(
        "--normalize",
        choices=("auto", "standard", "minmax", "none"),
        help="how examples are mapped to model space (default auto: standardised per "
        "feature, images to [-1, 1])",
    )
    t.add_argument(
        "--process", choices=sorted(PROCESSES), help="noise process (default: the recipe's)"
    )
    t.add_argument(
        "--loss",
        choices=OBJECTIVES,
        help="objective (default: the recipe's; flow_matching with --process rectified_flow)",
    )
    t.add_argument(
        "--net",
        choices=("auto", "mlp", "unet", "energy_mlp"),
        help="network (default: the recipe's)",
    )
    t.add_argument(
        "--prediction",
        choices=("auto", "score", "eps", "x0", "v", "velocity"),
        help="what the network predicts (default: the recipe's; velocity with "
        "--process rectified_flow)",
    )
    t.add_argument(
        "--coupling",
        choices=("none", "ot"),
        help="flow matching: pair each batch's noise with its examples by exact minibatch "
        "optimal transport (ot, Tong et al. 2024) or not (none, default)",
    )
    t.add_argument(
        "--time-law",
        choices=("uniform", "logit_normal"),
        help="flow matching: the law of the training times (default uniform; logit_normal: "
        "Esser et al. 2024)",
    )
    t.add_argument(
        "--weighting",
        choices=("fixed", "learned"),
        help="the loss's weighting over noise levels: the recipe's own (fixed, default) or "
        "learned per sigma during training (learned: EDM2's uncertainty weighting, Karras et "
        "al. 2024; plotted in OUT/weighting.png)",
    )
    t.add_argument(
        "--sigma-sampling",
        choices=("fixed", "adaptive"),
        help="how training draws noise levels: the recipe's law (fixed, default) or adaptive "
        "(more draws where the loss varies most, each reweighted so that the objective is "
        "unchanged; plotted in OUT/sigma_draws.png)",
    )
    t.add_argument(
        "--augment",
        type=float,
        help="images: flip, rotate by 90 degrees and shift by a pixel, each with this "
        "probability, and tell the U-Net which (EDM's non-leaky augmentation, Karras et al. "
        "2022; samples are drawn untransformed; default 0: none)",
    )
    t.add_argument(
        "--val-fraction",
        type=float,
        help="hold out this fraction of the training examples (seeded by --seed): the EMA "
        "model's validation loss is logged every --val-every steps and the best checkpoint "
        "kept as OUT/best.safetensors (default 0: no validation)",
    )
    t.add_argument(
        "--val-every",
        type=POSITIVE_INT,
        help="steps between validations (default: the checkpoint interval, --ckpt-every)",
    )
    t.add_argument(
        "--posthoc-ema",
        help="keep power-function weight averages of these relative widths sigma_rel (comma-"
        "separated; EDM2 uses 0.05,0.1) and store them every --posthoc-every steps in "
        "OUT/posthoc, so that scorekit ema rebuilds any other width after training",
    )
    t.add_argument(
        "--posthoc-every",
        type=POSITIVE_INT,
        help="steps between post-hoc EMA snapshots (default: the checkpoint interval)",
    )
    t.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        help="the set of choices to train with (default: chosen from the data's shape; "
        "scorekit recipes lists them)",
    )
    t.add_argument("--steps", type=COUNT, help="total training steps (default: the recipe's)")
    t.add_argument(
        "--minutes",
        type=float,
        help="wall-clock budget in minutes (with --steps: whichever comes first); a cosine "
        "schedule decays to zero at its end",
    )
    t.add_argument(
        "--schedule",
        choices=("constant", "warmup", "cosine"),
        help="learning-rate schedule (default: the recipe's)",
    )
    t.add_argument("--batch", type=POSITIVE_INT, help="global batch size (default 256)")
    t.add_argument("--lr", type=POSITIVE, help="AdamW learning rate (default 2e-3)")
    t.add_argument("--warmup", type=COUNT, help="warm-up steps (default: the recipe's)")
    t.add_argument("--grad-clip", type=POSITIVE, help="clip the gradient norm at this (default 1)")
    t.add_argument(
        "--ema-decay", type=FRACTION_OPEN, help="EMA decay in [0, 1) (default: the recipe's)"
    )
    t.add_argument("--accum", type=POSITIVE_INT, help="gradient-accumulation shards per process")
    t.add_argument("--log-every", type=POSITIVE_INT, help="steps between log lines (default 50)")
    t.add_argument(
        "--ckpt-every", type=POSITIVE_INT, help="steps between checkpoints (default 1000)"
    )
    t.add_argument(
        "--on-nonfinite",
        choices=("stop", "skip"),
        help="a non-finite loss or gradient: stop (default, names the step) or skip the step",
    )
    t.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    t.add_argument(
        "--seed",
        type=COUNT,
        help="seed of the data draw, the initialisation and every step (default 0)",
    )
    t.add_argument(
        "--conditional",
        action="store_true",
        help="class-conditional model (needs labelled data, e.g. digits); classes = the "
        "largest label + 1; sample it with scorekit sample --label K [--guidance W]",
    )
    t.add_argument(
        "--label-dropout",
        type=float,
        help=f"with --conditional: probability that a label is replaced by the null label, "
        f"so the model also learns the unconditional score guidance needs (default "
        f"{LABEL_DROPOUT})",
    )
    t.add_argument(
        "--out", type=Path, default=Path("runs/train"), help="the run folder (default runs/train)"
    )
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the run already in OUT (its checkpoint and log)")  # fmt: skip
    t.add_argument("--config", help="JSON file with settings (flags override it)")
    t.set_defaults(func=cmd_train)

    from .reflow import add_parser as add_reflow

    add_reflow(sub, runtime, POSITIVE_INT, COUNT)

    s = sub.add_parser("sample", help="draw samples from a checkpoint", parents=[runtime])
    s.add_argument("checkpoint", type=Path, help="checkpoint file or run directory")
    s.add_argument("--sampler", choices=sorted(SAMPLERS),
                   help="sampler (default: the run's recipe's, else heun)")  # fmt: skip
    s.add_argument("--steps", type=POSITIVE_INT, help="sampler steps (default: the recipe's)")
    s.add_argument("--grid", choices=("default", "fitted"), default="default",
                   help="noise levels: the sampler's default grid, or a grid fitted to this "
                   "model's own trajectories (GITS, Chen et al. 2024; costs 900 evaluations of "
                   "the calibration starts, pays off at 10-20 steps)")  # fmt: skip
    s.add_argument(
        "--calibration",
        type=POSITIVE_INT,
        help="--grid fitted: prior draws the grid is fitted on (default 256)",
    )
    s.add_argument(
        "--teleport",
        type=POSITIVE,
        metavar="SIGMA",
        help="skip the high-noise steps: carry the start down to sigma/alpha = SIGMA by the "
        "exact flow of a Gaussian (no model evaluation per sample; Wang & Vastola 2024), then "
        "--steps steps of --sampler below it; choose SIGMA well above the data's own scale "
        "(docs/samplers-multistep.md)",
    )
    s.add_argument(
        "--teleport-fit",
        choices=("model", "data"),
        help="the teleport's Gaussian: fitted to the model's own denoiser at SIGMA (model, "
        "default: about 1000 evaluations once, no data needed) or the mean and covariance of "
        "the run's training examples (data; with --label, that class's)",
    )
    s.add_argument("--n", type=POSITIVE_INT, default=1000, help="samples to draw (default 1000)")
    s.add_argument("--seed", type=COUNT, default=0, help="seed of the samples (default 0)")
    s.add_argument("--out", type=Path, help="samples (.npy; default: RUN/samples/samples-"
                   "SAMPLER[-kSTEPS][-raw][-gits][-yLABEL][-cfgW|-agW][-tp[d]S]-nN-seedS.npy, "
                   "the choices given)")  # fmt: skip
    s.add_argument("--overwrite", action="store_true", help="replace existing output files")
    s.add_argument("--png", type=Path, help="picture (default: OUT with .png): an image grid, "
                   "a scatter plot for 2-D data, pairs of coordinates for more")  # fmt: skip
    s.add_argument("--png-dir", type=Path, help="images: also one PNG per sample in this folder")
    s.add_argument("--no-ema", action="store_true", help="use the raw, not the EMA, weights")
    s.add_argument(
        "--label",
        type=int,
        help="class-conditional checkpoints: sample this class (0..K-1); without --label "
        "they sample unconditionally, through the null label learned by label dropout",
    )
    s.add_argument(
        "--guidance",
        type=float,
        help="with --label: classifier-free guidance scale W, the score s(x) + W (s(x|y) - "
        "s(x)): 1 (default) plain conditional, 0 unconditional, > 1 sharper classes; Ho & "
        "Salimans' w is W - 1. With --guide: the autoguidance scale W (default 2)",
    )
    s.add_argument(
        "--guide",
        type=Path,
        help="autoguidance (Karras et al. 2024): a weaker checkpoint of the same data, e.g. "
        "an early snapshot (scorekit ema RUN --step S); samples follow D_guide + W (D - "
        "D_guide), W = --guidance; two network passes per evaluation. On 5-minute digits "
        "runs guided by their own earlier snapshots it did not lower the Frechet distance "
        "(docs/guidance.md)",
    )
    s.set_defaults(func=cmd_sample)

    lk = sub.add_parser(
        "likelihood", help="negative log-likelihood of data under a checkpoint", parents=[runtime]
    )
    lk.add_argument(
        "checkpoint",
        type=Path,
        nargs="+",
        help="checkpoint file or run directory; several (runs on the same continuous data, "
        "e.g. other --seed): the NLL of their equal-weight mixture",
    )
    lk.add_argument("--data", required=True, help="toy name, 'digits' or a path")
    lk.add_argument("--n", type=POSITIVE_INT, default=1000, help="examples (toys: drawn fresh)")
    lk.add_argument("--seed", type=COUNT, default=12345, help="seed of fresh toy points / probes")
    lk.add_argument("--key", help="array name inside an .npz file")
    lk.add_argument("--image-size", type=IMAGE_SIDE, help="resize images to this square side")
    lk.add_argument(
        "--divergence",
        choices=("exact", "hutchinson"),
        default="exact",
        help="exact trace (default) or Hutchinson with standard errors",
    )
    lk.add_argument("--method", default="dopri5", help="ODE solver of torchdiffeq (default dopri5)")
    lk.add_argument("--steps", type=POSITIVE_INT, help="steps of a fixed-step --method")
    lk.add_argument("--rtol", type=POSITIVE, help="ODE relative tolerance")
    lk.add_argument("--atol", type=POSITIVE, help="ODE absolute tolerance")
    lk.add_argument("--chunk-size", type=POSITIVE_INT, help="examples per ODE solve")
    lk.add_argument(
        "--dequantization",
        choices=("uniform", "truncated_normal", "variational"),
        help="how discrete pixels are spread over their bins (default uniform; variational "
        "fits a dequantizer to the model on the training images first)",
    )
    lk.add_argument(
        "--samples",
        type=POSITIVE_INT,
        help="dequantization draws per example, importance-weighted (default 1)",
    )
    lk.add_argument("--dequant-steps", type=POSITIVE_INT,
                    help="steps fitting the variational dequantizer (default 1000)")  # fmt: skip
    lk.add_argument(
        "--sigma-max",
        type=POSITIVE,
        help="VE/EDM: integrate past the process's largest sigma up to this one, where the "
        "N(0, sigma^2) prior is closer to the true marginal (its error bound falls like "
        "1/sigma); the network is then evaluated above the noise levels it was trained on",
    )
    lk.add_argument("--no-ema", action="store_true", help="the raw, not the EMA, weights")
    lk.set_defaults(func=cmd_likelihood)

    p = sub.add_parser(
        "plot", help="figures of a checkpoint and its training log", parents=[runtime]
    )
    p.add_argument("checkpoint", type=Path, help="checkpoint file or run directory")
    p.add_argument(
        "--kind",
        nargs="+",
        choices=KINDS + ("all",),
        default=["all"],
        help="figures to draw (default all that apply to the run)",
    )
    p.add_argument("--sampler", choices=sorted(SAMPLERS), help="default: the recipe's")
    p.add_argument("--steps", type=POSITIVE_INT, help="sampler steps (default: the recipe's)")
    p.add_argument(
        "--n", type=POSITIVE_INT, default=2000, help="samples for the figures (default 2000)"
    )
    p.add_argument("--seed", type=COUNT, default=0, help="seed of the samples (default 0)")
    p.add_argument("--out", type=Path, help="folder for the figures (default: RUN/plots)")
    p.add_argument("--overwrite", action="store_true", help="replace existing figures")
    p.set_defaults(func=cmd_plot)

    a = sub.add_parser("advise", help="noise settings for a data set (NCSNv2 techniques)")
    a.add_argument("--data", default="moons", help="toy name, 'digits' or a path")
    a.add_argument("--n", type=POSITIVE_INT, default=20_000, help="number of toy points")
    a.add_argument("--key", help="array name inside an .npz file")
    a.add_argument("--image-size", type=IMAGE_SIDE, help="resize images to this square side")
    a.add_argument(
        "--normalize",
        choices=("auto", "standard", "minmax", "none"),
        default="auto",
        help="how examples are mapped to model space (default auto)",
    )
    a.add_argument("--T", type=POSITIVE_INT, default=5, help="Langevin steps per noise level")
    a.add_argument(
        "--sigma-min", type=POSITIVE, help="smallest noise level (default: from the data)"
    )
    a.add_argument("--seed", type=COUNT, default=0, help="seed of the data draw (default 0)")
    a.add_argument("--out", type=Path, help="also write the advice as JSON here")
    a.set_defaults(func=cmd_advise)

    ev = sub.add_parser(
        "evaluate", help="sample quality against held-out data, and test NLL", parents=[runtime]
    )
    ev.add_argument("checkpoint", type=Path, help="checkpoint file or run directory")
    ev.add_argument("--data", required=True, help="held-out data: 'digits' (its test split), a "
                    "toy name (fresh points) or a path")  # fmt: skip
    ev.add_argument("--n", type=POSITIVE_INT, default=500, help="samples drawn (default 500)")
    ev.add_argument("--sampler", choices=sorted(SAMPLERS), help="sampler (default: the recipe's)")
    ev.add_argument("--steps", type=POSITIVE_INT, help="sampler steps (default: the recipe's)")
    ev.add_argument("--seed", type=COUNT, default=12345, help="seed of fresh toy points, samples")
    ev.add_argument("--draws", type=POSITIVE_INT, default=1,
                    help="independent draws of --n samples; the distances are averaged over "
                    "them, with their standard deviation and every draw's value (one draw of "
                    "500 digits moves the Frechet distance by about 2; default 1)")  # fmt: skip
    ev.add_argument("--nll-n", type=POSITIVE_INT, default=500, help="held-out examples for the NLL")
    ev.add_argument("--no-nll", action="store_true", help="skip the test NLL")
    ev.add_argument("--no-ema", action="store_true", help="the raw, not the EMA, weights")
    ev.add_argument("--key", help="array name inside an .npz file")
    ev.add_argument("--image-size", type=IMAGE_SIDE, help="resize images to this square side")
    ev.add_argument("--out", type=Path, help="JSON to write, the markdown beside it "
                    "(default RUN/evaluate.json)")  # fmt: skip
    ev.add_argument("--overwrite", action="store_true", help="replace existing output files")
    ev.set_defaults(func=cmd_evaluate)

    em = sub.add_parser(
        "ema",
        help="post-hoc EMA: rebuild weight averages of other widths from a run's snapshots",
        parents=[runtime],
    )
    em.add_argument("run", type=Path, help="run folder trained with --posthoc-ema")
    em.add_argument("--sigma-rel", required=True, help="widths sigma_rel to rebuild, comma-"
                    "separated (e.g. 0.03,0.05,0.08,0.12,0.18); with a validation split each "
                    "is scored on it")  # fmt: skip
    em.add_argument("--step", type=POSITIVE_INT, help="a snapshot's step (default: the last)")
    em.add_argument("--out", type=Path, help="checkpoint to write, for one width (default: "
                    "RUN/ema-SIGMA.safetensors; RUN/ema-SIGMA-stepN.safetensors with "
                    "--step)")  # fmt: skip
    em.add_argument("--overwrite", action="store_true", help="replace existing files")
    em.set_defaults(func=cmd_ema)

    r = sub.add_parser("recipes", help="list the recipes and what each was measured to reach")
    r.set_defaults(func=cmd_recipes)

    d = sub.add_parser("demo", help="train on a 2-D toy, sample three ways, write a report")
    d.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="report folder (default runs/demo)"
    )
    d.add_argument("--seed", type=COUNT, default=0, help="seed (default 0)")
    d.add_argument("--steps", type=POSITIVE_INT, default=None, help="training steps (default 4000)")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 on success, 1 on an error, 130 on Ctrl-C)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # a usage error (one line, exit 2) or --help (exit 0)
        return e.code if isinstance(e.code, int) else 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("scorekit: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        from ..train.trainer import NonFiniteLoss

        known = isinstance(e, (ValueError, OSError, NonFiniteLoss))
        msg = " ".join(str(e).split()) or type(e).__name__
        if not known:
            msg = f"{type(e).__name__}: {msg}"
        print(f"scorekit {args.command}: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

r"""Checkpoints: tensors in safetensors, configuration in JSON, written atomically.

A checkpoint is one ``.safetensors`` file whose header metadata holds the JSON
configuration under the key ``"scorekit"`` (network, process, prediction, training
settings, data normalisation, step), so tensors and configuration can never
disagree; a copy of the JSON is written beside it (``.json``) for people to read.
Every file is written to a temporary name in the same folder, flushed to disk and
renamed over the target (``os.replace`` is atomic on POSIX), so an interrupted save
never leaves a partial checkpoint. Non-finite tensors are refused. The header also holds
the SHA-256 of the tensors (:func:`tensors_sha256`), verified on every load, so a flipped
byte is refused rather than sampled from. The ``.json`` beside the checkpoint is an
informational copy of the header, rewritten on every save: editing it changes nothing.
Nothing is unpickled when loading.

References:
    safetensors format, https://huggingface.co/docs/safetensors.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..core.parametrize import EDMPrecond, ScoreModel
from ..core.processes import from_config as process_from_config
from ..nets import build_net
from .data import Normalizer

__all__ = [
    "FORMAT",
    "build_model",
    "check_shapes",
    "check_state",
    "is_legacy_conditional",
    "load_checkpoint",
    "load_model",
    "load_state",
    "model_config",
    "prefixed",
    "read_meta",
    "save_checkpoint",
    "tensors_sha256",
    "write_atomic",
]

FORMAT = "scorekit-checkpoint/1"


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename; an error
    names ``path`` (never the temporary name)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        why = e.strerror or str(e) or type(e).__name__
        if path.is_dir():
            why = "it is a folder"
        raise OSError(f"cannot write {str(path)!r}: {why}") from None
    finally:
        tmp.unlink(missing_ok=True)


def tensors_sha256(tensors: dict[str, Tensor]) -> str:
    """SHA-256 of a checkpoint's tensors: each name, dtype, shape and bytes, by name."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        v = tensors[k].detach().to("cpu").contiguous()
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def model_config(model: ScoreModel) -> dict:
    """JSON-able description of a :class:`ScoreModel` whose network has ``config()``:
    ``{"net", "process", "prediction", "precond"}``; :func:`build_model` inverts it."""
    if not isinstance(model, ScoreModel):
        raise ValueError(f"model must be a ScoreModel, got {type(model).__name__}")
    net, precond = model.net, None
    if isinstance(net, EDMPrecond):
        precond = {"name": "edm", "sigma_data": net.sigma_data}
        net = net.net
    if not hasattr(net, "config"):
        raise ValueError(
            f"model.net ({type(net).__name__}) has no config(); use a scorekit.nets network"
        )
    return {
        "net": net.config(),
        "process": model.process.config(),
        "prediction": model.prediction,
        "precond": precond,
    }


def build_model(config: dict) -> ScoreModel:
    """Rebuild an (untrained) :class:`ScoreModel` from :func:`model_config`."""
    if not isinstance(config, dict) or not {"net", "process", "prediction"} <= set(config):
        raise ValueError(f"model config needs 'net', 'process', 'prediction'; got {config!r}")
    process = process_from_config(config["process"])
    net = build_net(config["net"])
    precond = config.get("precond")
    if precond:
        if not isinstance(precond, dict) or precond.get("name") != "edm":
            raise ValueError(f"unknown preconditioning {precond!r}; expected name 'edm'")
        net = EDMPrecond(net, process, precond.get("sigma_data", 0.5))
    return ScoreModel(net, process, config["prediction"])


def save_checkpoint(path: str | Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    r"""Write ``tensors`` and the JSON-able ``meta`` to ``path`` (``.safetensors``) and
    ``path`` with suffix ``.json``, atomically. Raises ``ValueError`` on a non-finite tensor."""
    path = Path(path)
    clean = {}
    for k, v in tensors.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise ValueError(f"refusing to save non-finite values in checkpoint tensor {k!r}")
        clean[k] = v.detach().to("cpu").contiguous().clone()
    meta = {"format": FORMAT, **meta}
    text = json.dumps(meta, indent=1, sort_keys=True)
    digest = tensors_sha256(clean)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file(clean, str(tmp), metadata={"scorekit": text, "scorekit_sha256": digest})
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as e:
        why = e.strerror or str(e) or type(e).__name__
        raise OSError(f"cannot write {str(path)!r}: {why}") from None
    finally:
        tmp.unlink(missing_ok=True)
    # for people to read: a copy of the header, rewritten on every save; the checkpoint's
    # settings are read from the .safetensors header, never from this file
    note = {"_note": "informational copy of the checkpoint header; editing it changes nothing"}
    write_atomic(path.with_suffix(".json"), json.dumps({**note, **meta}, indent=1, sort_keys=True)
                 + "\n")  # fmt: skip


def _resolve(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.safetensors"
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {str(path)!r}")
    return path


def read_meta(path: str | Path) -> dict:
    """A checkpoint's ``meta`` alone, from the safetensors header (no tensor is read).
    Raises ``ValueError`` naming the file if it is missing, unreadable or not a scorekit
    checkpoint."""
    path = _resolve(path)
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise ValueError(f"cannot read checkpoint {path}: {e}") from None
    try:
        meta = json.loads(header["scorekit"])
    except (KeyError, json.JSONDecodeError, RecursionError):
        raise ValueError(f"{path} is not a scorekit checkpoint (no 'scorekit' metadata)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{path} has format {got!r}, expected {FORMAT!r}")
    return meta


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict, dict]:
    """Read a checkpoint: ``(tensors, meta)``. Raises ``ValueError`` naming the file if it is
    missing, unreadable or not a scorekit checkpoint."""
    path = _resolve(path)
    meta = read_meta(path)
    try:
        tensors = load_file(str(path), device="cpu")
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            digest = (fh.metadata() or {}).get("scorekit_sha256")
    except (SafetensorError, OSError) as e:
        raise ValueError(f"cannot read checkpoint {path}: {e}") from None
    if digest is not None and tensors_sha256(tensors) != digest:  # files of 0.1 carry none
        raise ValueError(
            f"checkpoint {path} is corrupted: its tensors do not match the SHA-256 in its header"
        )
    return {k: v.to(device) for k, v in tensors.items()}, meta


def is_legacy_conditional(meta: dict) -> bool:
    """Whether a checkpoint's ``meta`` holds a class-conditional model in the layout of
    scorekit 0.1 (a ``ClassConditional`` wrapper, net config ``{"name": "conditional"}``),
    which :func:`load_model` converts and the Trainer does not resume."""
    model = meta.get("model")
    net = model.get("net") if isinstance(model, dict) else None
    return isinstance(net, dict) and net.get("name") == "conditional"


def _upgrade_legacy_conditional(meta: dict, tensors: dict[str, Tensor], what: str) -> tuple:
    r"""The 0.1 class-conditional layout as today's: the inner network's config with
    ``num_classes``, and its tensors renamed (``net.cond.net.net.X`` to ``net.X``, the
    label table ``embed.table`` to ``embed.labels`` and the wrapped embedding
    ``embed.embed.*`` to ``embed.*``); the arithmetic is the same,
    :math:`e(t) + E[y]`."""
    net = meta["model"]["net"]
    inner = net.get("net") if isinstance(net, dict) else None
    base = inner.get("net") if isinstance(inner, dict) else None
    k = net.get("num_classes")
    if (
        not isinstance(base, dict)
        or inner.get("name") != "class_conditional"
        or isinstance(k, bool)
        or not isinstance(k, int)
        or k < 1
        or inner.get("num_classes") != k
    ):
        raise ValueError(f"{what} has a class-conditional config that cannot be read: {net!r}")
    if not net.get("null_label", True):
        raise ValueError(
            f"{what} holds a class-conditional model trained without a null label; today's "
            "networks always have one (label dropout): retrain it with scorekit train --conditional"
        )
    out = {}
    for key, v in tensors.items():
        head, _, rest = key.partition(".")
        if head not in ("model", "ema"):
            continue
        if not rest.startswith("net.cond.net.net."):
            continue  # the duplicate names of the wrapped embedding
        inner_key = rest.removeprefix("net.cond.net.net.")
        inner_key = inner_key.replace("embed.table.", "embed.labels.", 1)
        inner_key = inner_key.replace("embed.embed.", "embed.", 1)
        out[f"{head}.net.{inner_key}"] = v
    model = {**meta["model"], "net": {**base, "num_classes": k}}
    shape = (meta.get("conditional") or {}).get("data_shape")  # the trainer saw packed rows
    return {**meta, "model": model, "data_shape": shape}, out


def prefixed(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of ``tensors`` under ``prefix + '.'``, with the prefix removed."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def load_state(module: torch.nn.Module, state: dict[str, Tensor], what: str) -> None:
    """``module.load_state_dict(state)``, as a ``ValueError`` naming ``what`` on mismatch."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ValueError(f"{what} does not match the network: {' '.join(first[:2])}") from None


def check_shapes(build: Callable[[], torch.nn.Module], state: dict[str, Tensor], what: str) -> None:
    """Build the module ``build()`` returns on the ``meta`` device (no memory) and check that
    ``state`` holds exactly its tensors, with their shapes; a ``ValueError`` naming ``what``
    otherwise. Run before building the real module, so that a configuration from an
    untrusted file cannot make it allocate more than the file itself holds."""
    try:
        with torch.device("meta"):
            skeleton = build().state_dict()
    except (RuntimeError, OverflowError, MemoryError) as e:
        raise ValueError(f"{what}: cannot build its network: {e}") from None
    want = {k: tuple(v.shape) for k, v in skeleton.items()}
    have = {k: tuple(v.shape) for k, v in state.items()}
    if want != have:
        missing = sorted(set(want) - set(have))[:3]
        extra = sorted(set(have) - set(want))[:3]
        wrong = [f"{k}: {have[k]} != {want[k]}" for k in want if k in have and have[k] != want[k]]
        raise ValueError(
            f"{what} does not match the network: missing {missing}, unexpected {extra}, "
            f"shape mismatch {wrong[:3]}"
        )


def check_state(
    build: Callable[[], torch.nn.Module], state: dict[str, Tensor], net: dict | None, what: str
) -> None:
    """Check the tensors ``state`` of a checkpoint before the module ``build()`` returns is
    built for real: no more blocks in the network config ``net`` (``depth``, ``len(mults)``)
    than the file holds tensors, exactly the module's tensor names and shapes
    (:func:`check_shapes`, on the ``meta`` device) and only finite floating-point values.
    Raises a ``ValueError`` naming ``what`` (e.g. ``"checkpoint PATH"``) otherwise."""
    net = net if isinstance(net, dict) else {}
    mults = net.get("mults")
    blocks = {"depth": net.get("depth"), "len(mults)": len(mults) if isinstance(mults, list) else 0}
    for k, v in blocks.items():  # each block holds tensors: more blocks than tensors is a lie
        if isinstance(v, int) and v > len(state):
            raise ValueError(
                f"{what} does not match the network: net {k}={v} needs more "
                f"than the {len(state)} tensors in the file"
            )
    check_shapes(build, state, what)
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise ValueError(f"{what} holds non-finite values in tensor {k!r}")


def load_model(
    path: str | Path, *, ema: bool = True, device: str | torch.device = "cpu"
) -> tuple[ScoreModel, Normalizer, dict]:
    """Load a trained model (the EMA weights when ``ema`` and present), its data
    :class:`~scorekit.train.data.Normalizer` and the checkpoint's ``meta``. The model is in
    eval mode and knows its data shape (``scorekit.sample(model, n)``), its normaliser
    (``model.normalizer``; ``scorekit.sample(model, n, decode=True)`` gives samples in data
    coordinates) and its recipe (``model.recipe``). Every checkpoint
    loads here, class-conditional ones too (their network takes ``y=``); a class-conditional
    checkpoint of scorekit 0.1's layout is converted on the fly."""
    tensors, meta = load_checkpoint(path)
    if "model" not in meta:
        raise ValueError(f"checkpoint {path} has no 'model' configuration")
    if is_legacy_conditional(meta):
        meta, tensors = _upgrade_legacy_conditional(meta, tensors, f"checkpoint {path}")
    state = prefixed(tensors, "ema") if ema else {}
    if not state:
        state = prefixed(tensors, "model")
    net = meta["model"].get("net") if isinstance(meta["model"], dict) else None
    net = net if isinstance(net, dict) else {}
    check_state(lambda: build_model(meta["model"]), state, net, f"checkpoint {path}")
    model = build_model(meta["model"])
    load_state(model, state, f"checkpoint {path}")
    normalizer = Normalizer.from_config(meta.get("normalizer", {"loc": 0.0, "scale": 1.0}))
    shape = meta.get("data_shape")
    if shape is not None:
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape
        ):
            raise ValueError(f"checkpoint {path} has data_shape {shape!r}, expected a list of ints")
        normalizer.check_shape(tuple(shape), f"checkpoint {path}'s normalizer")
        model.data_shape = tuple(shape)
    model.normalizer = normalizer  # sample(model, n, decode=True): data coordinates
    model.recipe = (meta.get("cli") or {}).get("recipe")
    return model.to(device).eval(), normalizer, meta

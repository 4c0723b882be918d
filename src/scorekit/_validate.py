"""Argument checks shared by the public API.

Every error names the argument, the value received and what was expected.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "check_choice",
    "check_finite",
    "check_generator",
    "check_instance",
    "check_int",
    "check_levels",
    "check_process",
    "check_positive",
    "check_range",
    "check_tensor",
]


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return repr(value)


def check_positive(name: str, value: Any, *, strict: bool = True) -> float:
    """Return `value` as a float, or raise if it is not (strictly) positive and finite."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {_describe(value)}") from None
    if not math.isfinite(v) or (v <= 0 if strict else v < 0):
        expected = "> 0" if strict else ">= 0"
        raise ValueError(f"{name} must be finite and {expected}, got {v!r}")
    return v


def check_int(name: str, value: Any, *, minimum: int = 1) -> int:
    """Return `value` as an int, or raise if it is not an integer >= `minimum`."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int,))
        and not (isinstance(value, float) and value.is_integer())
    ):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {_describe(value)}")
    v = int(value)
    if v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v}")
    return v


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """Raise unless `value` is one of `choices`; the message lists them."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_tensor(name: str, value: Any, *, min_dim: int = 0) -> Tensor:
    """Raise unless `value` is a floating-point tensor with at least `min_dim` dimensions."""
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise ValueError(f"{name} must have a floating-point dtype, got {value.dtype}")
    if value.dim() < min_dim:
        raise ValueError(
            f"{name} must have at least {min_dim} dimension(s), got shape {tuple(value.shape)}"
        )
    return value


def check_finite(name: str, value: Tensor) -> Tensor:
    """Raise if `value` holds a NaN or an infinity."""
    if not torch.isfinite(value).all():
        bad = int((~torch.isfinite(value)).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf)")
    return value


def check_range(name: str, value: Tensor | float, low: float, high: float) -> None:
    """Raise unless every entry of `value` lies in the closed interval [low, high]."""
    t = torch.as_tensor(value)
    if t.numel() == 0:
        return
    lo, hi = float(t.min()), float(t.max())
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < low or hi > high:
        raise ValueError(f"{name} must lie in [{low:g}, {high:g}], got values in [{lo:g}, {hi:g}]")


def check_generator(name: str, value: Any) -> torch.Generator | None:
    """Raise unless `value` is a ``torch.Generator`` or ``None``."""
    if value is not None and not isinstance(value, torch.Generator):
        raise ValueError(f"{name} must be a torch.Generator or None, got {_describe(value)}")
    return value


def check_instance(name: str, value: Any, cls: type | tuple[type, ...]) -> Any:
    """Raise unless `value` is an instance of `cls`."""
    if not isinstance(value, cls):
        names = " or ".join(c.__name__ for c in (cls if isinstance(cls, tuple) else (cls,)))
        raise ValueError(f"{name} must be a {names}, got {type(value).__name__}")
    return value


def check_process(name: str, value: Any) -> Any:
    """Raise unless `value` is a :class:`scorekit.core.processes.Process`."""
    from .core.processes import Process

    return check_instance(name, value, Process)


def check_levels(x: Tensor, bins: int, data_range: tuple[float, float]) -> float:
    """The bin width :math:`h = (hi - lo)/(bins - 1)` of discrete data, after checking that
    ``x`` holds the levels ``lo + k h``, ``k = 0 .. bins - 1`` (``bins``, ``data_range`` and
    ``x`` named in the errors)."""
    bins = check_int("bins", bins, minimum=2)
    try:
        lo, hi = (float(v) for v in data_range)
    except (TypeError, ValueError):
        raise ValueError(f"data_range must be a pair (lo, hi), got {data_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"data_range must be finite with lo < hi, got {data_range!r}")
    h = (hi - lo) / (bins - 1)
    k = (x - lo) / h
    off_grid = (k - k.round()).abs().max()
    if off_grid > 1e-3 or k.min() < -1e-3 or k.max() > bins - 1 + 1e-3:
        raise ValueError(
            f"x must hold levels lo + k*h with k in 0..{bins - 1} and h = {h:g} for "
            f"data_range={data_range!r}, bins={bins}; got values in "
            f"[{float(x.min()):g}, {float(x.max()):g}], up to {float(off_grid):.3g} bins off"
        )
    return h

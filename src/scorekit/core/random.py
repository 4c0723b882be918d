r"""Every random draw of scorekit, with generator and device handled in one way.

A draw is made on the device of its ``generator`` (torch requires it) and then moved to
``device``; without a generator it is made on ``device`` from torch's global stream. So a
CUDA generator with CUDA data, a CPU generator with CPU data, and a CPU generator with
CUDA data all work, and the same seed gives the same numbers on the generator's device
whatever the data's device.

- :func:`randn`: :math:`\mathcal N(0, 1)`; :func:`rand`: :math:`\mathcal U[0, 1)`;
- :func:`rademacher`: :math:`\pm 1` with probability :math:`\tfrac12` each
  (:math:`E[vv^\top] = I`, the Hutchinson probe of least variance, Hutchinson 1989);
- :func:`randint`: integers in :math:`[0, n)`;
- :func:`spawn`: a new generator seeded from ``generator`` (one per chunk of a batch).

References:
    Hutchinson, "A stochastic estimator of the trace of the influence matrix for Laplacian
    smoothing splines", 1989.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._validate import check_generator, check_tensor

__all__ = ["rademacher", "rand", "randint", "randn", "randn_like", "spawn"]

Device = torch.device | str | None


def _where(generator: torch.Generator | None, device: Device) -> Device:
    check_generator("generator", generator)  # a type check: free, unlike a value check
    return generator.device if generator is not None else device


def _moved(v: Tensor, device: Device) -> Tensor:
    return v if device is None else v.to(device)


def randn(
    shape: tuple[int, ...] | torch.Size,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: Device = None,
) -> Tensor:
    r"""Standard normal draws of ``shape``, made on the generator's device, on ``device``."""
    z = torch.randn(
        tuple(shape), generator=generator, dtype=dtype, device=_where(generator, device)
    )
    return _moved(z, device)


def randn_like(like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    r""":func:`randn` with the shape, dtype and device of ``like`` (whose values are not read)."""
    check_tensor("like", like)
    return randn(like.shape, generator, like.dtype, like.device)


def rand(
    shape: tuple[int, ...] | torch.Size,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: Device = None,
) -> Tensor:
    r"""Uniform draws on :math:`[0, 1)` of ``shape``."""
    where = _where(generator, device)
    return _moved(torch.rand(tuple(shape), generator=generator, dtype=dtype, device=where), device)


def rademacher(
    shape: tuple[int, ...] | torch.Size,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: Device = None,
) -> Tensor:
    r"""Rademacher draws :math:`v \in \{-1, +1\}` of ``shape``, each sign with probability
    one half, as ``2 b - 1`` of fair bits ``b``."""
    where = _where(generator, device)
    bits = torch.randint(0, 2, tuple(shape), generator=generator, device=where)
    return _moved(bits.to(dtype or torch.get_default_dtype()) * 2 - 1, device)


def randint(
    high: int,
    shape: tuple[int, ...] | torch.Size,
    generator: torch.Generator | None = None,
    device: Device = None,
) -> Tensor:
    r"""Integers uniform on :math:`\{0, \dots, \text{high} - 1\}` of ``shape`` (int64)."""
    i = torch.randint(
        int(high), tuple(shape), generator=generator, device=_where(generator, device)
    )
    return _moved(i, device)


def spawn(generator: torch.Generator | None, device: Device = None) -> torch.Generator | None:
    r"""A new generator on ``device`` (default: the parent's) seeded by one draw of
    ``generator``: the seeds of the chunks of a batch. ``None`` gives ``None``.

    This reads one number from the parent's device: call it at the boundary of a call (once
    per chunk), never inside a step."""
    if check_generator("generator", generator) is None:
        return None
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return torch.Generator(device=device or generator.device).manual_seed(seed)

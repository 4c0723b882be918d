r"""Exponential moving average of a model's weights, with warm-up.

.. math:: \bar\theta \leftarrow \beta_n \bar\theta + (1 - \beta_n)\theta, \qquad
          \beta_n = \min\left(\beta, \frac{1 + n}{10 + n}\right)

after the :math:`n`-th update (the warm-up keeps early averages from being dominated
by the random initialisation; without warm-up :math:`\beta_n = \beta`). Buffers are
copied, not averaged.

References:
    Polyak & Juditsky (1992); Song & Ermon, "Improved Techniques for Training
    Score-Based Generative Models", NeurIPS 2020, Section 3.5 (EMA for score models);
    TensorFlow's ``ExponentialMovingAverage(num_updates=...)`` for the warm-up.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .._validate import check_instance, check_positive, check_range

__all__ = ["EMA"]


class EMA:
    r"""A frozen copy of ``model`` whose parameters track an exponential moving average.

    Arguments:
        model: the module being trained.
        decay: :math:`\beta` in [0, 1).
        warmup: use :math:`\min(\beta, (1+n)/(10+n))`.

    The count :math:`n` of updates lives in a tensor on the model's device, so an update
    whose step was skipped (``good`` false: a non-finite loss) leaves the average and the
    count as they were without reading any value on the host.

    Example:
        >>> net = nn.Linear(2, 2)
        >>> ema = EMA(net, decay=0.9)
        >>> ema.update(net)
        >>> ema.updates
        1
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        check_instance("model", model, nn.Module)
        check_positive("decay", decay, strict=False)
        check_range("decay", float(decay), 0.0, 1.0)
        if decay >= 1:
            raise ValueError(f"decay must be < 1, got {decay}")
        self.decay, self.warmup = float(decay), bool(warmup)
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self._ema = (list(self.module.parameters()), list(self.module.buffers()))
        self._src: tuple[int, list, list] | None = None  # the tracked model's tensors, cached
        first = next(iter(self._ema[0]), None)
        device = first.device if first is not None else None
        self._n = torch.zeros((), dtype=torch.float64, device=device)

    @property
    def updates(self) -> int:
        """The number of updates so far (reads the count: call it outside the step loop)."""
        return int(self._n)

    @updates.setter
    def updates(self, n: int) -> None:
        self._n = torch.full_like(self._n, float(n))

    def decay_at(self, n: int) -> float:
        r""":math:`\beta_n` used by the update after ``n`` previous updates."""
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    def _weight(self, n: torch.Tensor) -> torch.Tensor:
        r""":math:`1 - \beta_n` as a tensor (``n``: the count, a 0-d tensor)."""
        if self.warmup:
            return 1.0 - torch.clamp((1 + n) / (10 + n), max=self.decay)
        return torch.full_like(n, 1.0 - self.decay)

    @torch.no_grad()
    def update(self, model: nn.Module, good: torch.Tensor | None = None) -> None:
        """Move the average towards ``model``'s current parameters; copy its buffers. With
        ``good`` (a 0-dimensional bool tensor) false, nothing changes."""
        if self._src is None or self._src[0] != id(model):
            params = [p.detach() for p in model.parameters()]
            buffers = list(model.buffers())
            if len(params) != len(self._ema[0]) or len(buffers) != len(self._ema[1]):
                raise ValueError("model does not match the EMA copy (different parameters)")
            self._src = (id(model), params, buffers)
            if params and self._n.device != params[0].device:
                self._n = self._n.to(params[0].device)
        _, params, buffers = self._src
        n = self._n
        weight = self._weight(n)
        if good is not None:
            weight = weight * good
        if params:  # ema += w (p - ema); foreach lerp would read a tensor weight on the host
            step = torch._foreach_sub(params, self._ema[0])
            torch._foreach_mul_(step, weight.to(params[0].dtype))
            torch._foreach_add_(self._ema[0], step)
        for b_ema, b in zip(self._ema[1], buffers, strict=True):
            b_ema.copy_(b if good is None else torch.where(good, b, b_ema))
        self._n = n + (1.0 if good is None else good.to(n.dtype))

r"""Reflow (Liu, Gong & Liu 2023): straighten a flow by training on its own couplings.

A trained model's probability-flow ODE maps each prior draw :math:`x_{t_{max}}` to a sample
:math:`\hat x_0`. The pairs :math:`(\hat x_0, \varepsilon)`, :math:`\varepsilon =
x_{t_{max}}/\sigma(t_{max})`, are a deterministic coupling of the data and the noise; the
rectified flow of that coupling (conditional flow matching on the pairs,
:class:`~scorekit.losses.FlowMatchingLoss` with ``noise=``) has straighter trajectories than
the flow that made them, and its transport cost does not grow (Liu et al. 2023, Theorems 3.3
and 3.5), so fewer solver steps suffice. :func:`reflow_pairs` draws the pairs;
:func:`reflow_data` gives them in the form :class:`~scorekit.train.Trainer` reads; the
straightness itself is :func:`scorekit.metrics.straightness`.

Example:
    >>> import torch, scorekit as sk
    >>> teacher = sk.ExactScore(sk.Gaussian(torch.zeros(2), std=0.5), sk.RectifiedFlow())
    >>> x0, noise = reflow_pairs(teacher, 8, steps=4, generator=torch.Generator().manual_seed(0))
    >>> x0.shape, noise.shape
    (torch.Size([8, 2]), torch.Size([8, 2]))

References:
    Liu, Gong & Liu, "Flow Straight and Fast: Learning to Generate and Transfer Data with
    Rectified Flow", ICLR 2023, Algorithm 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._validate import check_generator, check_int

__all__ = ["reflow_data", "reflow_pairs"]


def reflow_pairs(
    model,
    n: int,
    sampler: str = "heun",
    steps: int = 50,
    generator: torch.Generator | None = None,
    *,
    batch_size: int | None = None,
    cond: dict | None = None,
    dtype: torch.dtype | None = None,
    device=None,
) -> tuple[Tensor, Tensor]:
    r"""``n`` (sample, noise) pairs of ``model``'s probability-flow ODE: the prior draw
    :math:`x_{t_{max}} \sim \mathcal N(0, \sigma(t_{max})^2 I)` is solved to
    :math:`\hat x_0` by the deterministic ``sampler`` on ``steps`` steps, and paired with
    :math:`\varepsilon = x_{t_{max}}/\sigma(t_{max}) \sim \mathcal N(0, I)`.

    Arguments:
        model: a :class:`~scorekit.ScoreModel` that knows its data shape.
        n: number of pairs.
        sampler, steps: an ODE sampler of :data:`scorekit.SAMPLERS` and its steps.
        generator: the prior draw.
        batch_size, cond: as in :func:`scorekit.sample`.
        dtype, device: of the pairs (default torch's default dtype, CPU).

    Returns:
        ``(x0, noise)``, each of shape ``(n, *D)``, in model space, detached.
    """
    from ..core.parametrize import ScoreModel
    from ..samplers import make_sampler, sample
    from ..samplers.api import _data_shape

    if not isinstance(model, ScoreModel):
        raise ValueError(f"model must be a scorekit ScoreModel, got {type(model).__name__}")
    n = check_int("n", n, minimum=1)
    steps = check_int("steps", steps, minimum=1)
    check_generator("generator", generator)
    if make_sampler(sampler).stochastic:
        raise ValueError(f"sampler must be deterministic (an ODE sampler), got {sampler!r}")
    shape = _data_shape(model, n, None)
    dtype = torch.get_default_dtype() if dtype is None else dtype
    x_T = model.process.prior_sample(shape, generator, dtype, device)
    out = sample(model, x_T=x_T, sampler=sampler, steps=steps, batch_size=batch_size, cond=cond)
    return out.x.detach(), x_T / model.process.prior_std()


def reflow_data(x0: Tensor, noise: Tensor, cond: dict | None = None) -> tuple[Tensor, dict]:
    """The pairs as training data for :class:`~scorekit.train.Trainer`:
    ``(x0, {"noise": noise, **cond})``, which :class:`~scorekit.losses.FlowMatchingLoss`
    reads as the coupling."""
    if x0.shape != noise.shape:
        raise ValueError(
            f"x0 and noise must have one shape, got {tuple(x0.shape)}, {tuple(noise.shape)}"
        )
    return x0, {"noise": noise, **(cond or {})}

r"""Non-leaky augmentation: train on transformed images, tell the network which transform.

A small image set (1257 training digits) is memorised after a few thousand steps. EDM's
remedy (Karras et al. 2022, Appendix F.2) is to train on geometrically transformed images
with the transform's parameters :math:`a` given to the network as conditioning: the network
learns :math:`p(x \mid a)`, a family of distributions that share their features, and
sampling with :math:`a = 0` (no augmentation, the default when no ``aug`` is passed) draws
from the data distribution itself, so the augmentations do not leak into the samples.

Transforms, each applied to an example independently with probability :math:`p` (EDM uses
:math:`p = 0.12` per transform), all permutations of pixels, so they commute with
dequantization:

- ``"xflip"``: mirror left-right; :math:`a_0 = 1` when flipped.
- ``"rot90"``: rotate by :math:`k\cdot 90°`, :math:`k` uniform on :math:`\{1, 2, 3\}`
  (square images only); :math:`(a_1, a_2) = (\cos(k\pi/2) - 1, \sin(k\pi/2))`.
- ``"translate"``: circular shift by :math:`(d_x, d_y)`, each uniform on the integers of
  :math:`[-m, m]` (``max_shift`` :math:`m`); :math:`(a_3, a_4) = (d_x, d_y)/m`.

:math:`a = 0` exactly when nothing was applied. The network takes
``aug`` of shape ``(B, 5)`` (``UNet(augment_dim=AUGMENT_DIM)``).

References:
    Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models",
    NeurIPS 2022, Appendix F.2.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .._validate import check_int
from ..core.random import rand

__all__ = ["AUGMENT_DIM", "KINDS", "Augmented", "augment_images"]

AUGMENT_DIM = 5
KINDS = ("xflip", "rot90", "translate")


def _check_kinds(kinds) -> tuple[str, ...]:
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds or len(set(kinds)) != len(kinds):
        raise ValueError(f"kinds must be distinct names from {KINDS}, got {kinds!r}")
    return kinds


def _check_p(p) -> float:
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    return float(p)


def _shift(x: Tensor, d: Tensor, dim: int) -> Tensor:
    """Circular shift of each example of ``x`` by its own ``d[b]`` along ``dim`` (-1 or -2):
    ``out[..., i, ...] = x[..., (i - d) mod n, ...]``."""
    n = x.shape[dim]
    idx = torch.remainder(torch.arange(n, device=x.device)[None, :] - d[:, None], n)  # (B, n)
    view = [x.shape[0]] + [1] * (x.dim() - 1)
    view[dim] = n
    return x.gather(dim, idx.view(view).expand_as(x))


def augment_images(
    x: Tensor,
    p: float,
    generator: torch.Generator | None = None,
    kinds: tuple[str, ...] | list[str] = KINDS,
    max_shift: int = 1,
) -> tuple[Tensor, Tensor]:
    r"""Transform each image of ``x`` ``(B, C, H, W)`` at random (see the module) and return
    ``(x_aug, a)``, ``a`` of shape ``(B, 5)`` the parameters, zero where nothing was applied.

    Arguments:
        x: images. p: probability of each transform, in :math:`[0, 1]`.
        generator: the random draws. kinds: which transforms. max_shift: :math:`m \ge 1`.

    Example:
        >>> x = torch.arange(16.0).view(1, 1, 4, 4)
        >>> y, a = augment_images(x, 1.0, torch.Generator().manual_seed(0), kinds=["xflip"])
        >>> torch.equal(y, x.flip(-1)), a.tolist()
        (True, [[1.0, 0.0, 0.0, 0.0, 0.0]])
    """
    kinds, p, m = _check_kinds(kinds), _check_p(p), check_int("max_shift", max_shift)
    if x.dim() != 4:
        raise ValueError(f"x must be images (B, C, H, W), got shape {tuple(x.shape)}")
    B, dev = x.shape[0], x.device
    if "rot90" in kinds and x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rot90 needs square images, got {x.shape[-2]}x{x.shape[-1]}")
    u = rand((B, 6), generator, torch.float64, dev)  # one column per decision / parameter
    a = torch.zeros(B, AUGMENT_DIM, dtype=x.dtype, device=dev)
    pick = lambda mask: mask.view(B, 1, 1, 1)  # noqa: E731
    if "xflip" in kinds:
        on = u[:, 0] < p
        x = torch.where(pick(on), x.flip(-1), x)
        a[:, 0] = on.to(x.dtype)
    if "rot90" in kinds:
        k = torch.where(u[:, 1] < p, 1 + (u[:, 2] * 3).long().clamp_max(2), 0)
        out = x
        for j in (1, 2, 3):
            out = torch.where(pick(k == j), torch.rot90(x, j, (-2, -1)), out)
        x = out
        angle = k.to(torch.float64) * (math.pi / 2)
        a[:, 1] = (torch.cos(angle) - 1).round().to(x.dtype)
        a[:, 2] = torch.sin(angle).round().to(x.dtype)
    if "translate" in kinds:
        on = u[:, 3] < p
        d = (u[:, 4:6] * (2 * m + 1)).long().clamp_max(2 * m) - m  # uniform on [-m, m]
        d = torch.where(on[:, None], d, 0)
        x = _shift(_shift(x, d[:, 0], -1), d[:, 1], -2)
        a[:, 3:5] = d.to(x.dtype) / m
    return x, a


class Augmented:
    r"""An objective on augmented images with the augmentation as conditioning:
    :math:`\ell(x_0) = \ell_{obj}(T_a x_0 \mid \mathrm{aug} = a)`, :math:`a` drawn per example
    (:func:`augment_images`, from the step's generator). The network must take ``aug``
    (``UNet(augment_dim=AUGMENT_DIM)``); samplers pass none, which is :math:`a = 0`.

    Arguments:
        objective: any objective of :mod:`scorekit.losses`.
        p: probability of each transform (EDM: 0.12).
        kinds: the transforms, a subset of ``("xflip", "rot90", "translate")``.
        max_shift: the largest translation in pixels.
        key: the name of the conditioning the network reads.

    Example:
        >>> import scorekit as sk
        >>> net = sk.UNet(1, base=8, mults=(1,), attention=False, augment_dim=AUGMENT_DIM)
        >>> model = sk.ScoreModel(net, sk.VP(), "eps")
        >>> obj = Augmented(sk.make_objective("dsm", sk.VP()), p=0.5)
        >>> obj(model, torch.randn(3, 1, 4, 4)).shape
        torch.Size([3])
    """

    def __init__(
        self,
        objective: Any,
        p: float = 0.12,
        kinds: tuple[str, ...] | list[str] = KINDS,
        max_shift: int = 1,
        key: str = "aug",
    ) -> None:
        if not callable(objective) or not hasattr(objective, "sample_t"):
            raise ValueError(f"objective must be a scorekit objective, got {objective!r}")
        self.objective, self.process = objective, objective.process
        self.p = _check_p(p)
        self.kinds = _check_kinds(kinds)
        self.max_shift = check_int("max_shift", max_shift)
        self.key = str(key)

    def sample_t(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: Any = None,
    ) -> Tensor:
        """The wrapped objective's noise levels."""
        return self.objective.sample_t(batch, generator, dtype, device)

    def __call__(
        self,
        model: Any,
        x0: Tensor,
        t: Tensor | None = None,
        generator: torch.Generator | None = None,
        **cond: Any,
    ) -> Tensor:
        if self.key in cond:
            raise ValueError(f"{self.key}: Augmented draws the augmentation itself")
        x, a = augment_images(x0, self.p, generator, self.kinds, self.max_shift)
        return self.objective(model, x, t=t, generator=generator, **cond, **{self.key: a})

    def __repr__(self) -> str:
        return f"Augmented({self.objective!r}, p={self.p:g}, kinds={list(self.kinds)})"

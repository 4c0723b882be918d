r"""Noise-level embeddings shared by the networks.

A network sees the noise level only through the time argument ``t`` of
``net(x, t)``. The embedding maps ``t`` (or :math:`\log t`, useful when ``t`` is
itself a noise level spanning decades, as for :class:`~scorekit.core.processes.EDM`)
to features

.. math:: \gamma(c) = [\sin(2\pi \omega_k c), \cos(2\pi \omega_k c)]_{k=1}^{K}

with either random Gaussian frequencies :math:`\omega_k \sim \mathcal{N}(0, s^2)`
(``"fourier"``, Tancik et al. 2020; Song et al. 2021) or geometric ones
:math:`\omega_k = s^{(k-1)/(K-1)}` (``"sinusoidal"``, Vaswani et al. 2017;
Ho et al. 2020), followed by a two-layer MLP.

A class-conditional network (``num_classes`` :math:`K`) adds a learned embedding of the
label to it, :math:`e(t, y) = \mathrm{MLP}(\gamma(t)) + E[y]` with a table :math:`E` of
:math:`K + 1` rows, the last one the *null* label :math:`y = K` ("no label", also used when
no label is given), as ADM adds the class embedding to the time embedding (Dhariwal &
Nichol 2021) and classifier-free guidance needs (Ho & Salimans 2022).

A network trained on augmented data (``augment_dim`` :math:`A`) adds a linear map of the
augmentation's parameters :math:`a \in \mathbb R^A` (zero: no augmentation) without bias,
:math:`e(t, y, a) = \dots + W a`, so that it learns the augmented images as a separate
condition and samples without augmentation when :math:`a = 0` or none is given (EDM's
non-leaky augmentation, Karras et al. 2022, Appendix F.2).

References:
    Tancik et al., "Fourier Features Let Networks Learn High Frequency Functions", 2020.
    Song et al., "Score-Based Generative Modeling through SDEs", ICLR 2021, Appendix H.
    Dhariwal & Nichol, "Diffusion Models Beat GANs on Image Synthesis", NeurIPS 2021.
    Ho & Salimans, "Classifier-Free Diffusion Guidance", 2022.
    Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models",
    NeurIPS 2022.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._validate import check_choice, check_int, check_positive

__all__ = ["NoiseEmbedding"]

KINDS = ("fourier", "sinusoidal")
INPUTS = ("t", "log_t")


class NoiseEmbedding(nn.Module):
    r"""Embed the time / noise level ``t`` of shape ``(B,)`` as features of shape ``(B, dim)``.

    Arguments:
        dim: output width (even).
        kind: ``"fourier"`` (random frequencies, fixed by ``seed``) or ``"sinusoidal"``.
        scale: frequency scale :math:`s` (std for ``"fourier"``, top frequency otherwise).
        input: ``"t"`` embeds ``t`` itself, ``"log_t"`` embeds :math:`\log \max(t, 10^{-8})`.
        seed: seed of the random frequencies (so a config rebuilds the same module).
        num_classes: :math:`K` for class labels ``y`` in :math:`[0, K]` (``None``: no labels).
        augment_dim: :math:`A` for augmentation parameters ``aug`` of shape ``(B, A)``
            (``None``: the network takes none).

    Example:
        >>> emb = NoiseEmbedding(32)
        >>> emb(torch.rand(5)).shape
        torch.Size([5, 32])
    """

    def __init__(
        self,
        dim: int,
        kind: str = "fourier",
        scale: float = 16.0,
        input: str = "t",
        seed: int = 0,
        num_classes: int | None = None,
        augment_dim: int | None = None,
    ):
        super().__init__()
        dim = check_int("dim", dim, minimum=2)
        if dim % 2:
            raise ValueError(f"dim must be even, got {dim}")
        self.kind = check_choice("kind", kind, KINDS)
        self.input = check_choice("input", input, INPUTS)
        scale = check_positive("scale", scale)
        seed = check_int("seed", seed, minimum=0)
        half = dim // 2
        if kind == "fourier":
            g = torch.Generator().manual_seed(int(seed))
            freqs = torch.randn(half, generator=g) * scale
        else:
            freqs = scale ** (torch.arange(half, dtype=torch.float64) / max(half - 1, 1))
            freqs = freqs.float()
        self.register_buffer("freqs", freqs)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.num_classes = None if num_classes is None else check_int("num_classes", num_classes)
        if self.num_classes is not None:
            self.labels = nn.Embedding(self.num_classes + 1, dim)
            nn.init.normal_(self.labels.weight, std=0.02)
        self.augment_dim = None if augment_dim is None else check_int("augment_dim", augment_dim)
        if self.augment_dim is not None:
            self.augment = nn.Linear(self.augment_dim, dim, bias=False)

    def forward(self, t: Tensor, y: Tensor | None = None, aug: Tensor | None = None) -> Tensor:
        if t.dim() != 1:
            raise ValueError(f"t must have shape (B,), got {tuple(t.shape)}")
        c = t.to(self.freqs.dtype)
        if self.input == "log_t":
            c = torch.log(c.clamp_min(1e-8))
        arg = 2 * math.pi * c[:, None] * self.freqs[None, :]
        e = self.mlp(torch.cat([torch.sin(arg), torch.cos(arg)], dim=1))
        if aug is not None:
            if self.augment_dim is None:
                raise ValueError("aug: this network takes no augmentation (augment_dim=None)")
            if aug.shape != (t.shape[0], self.augment_dim):
                raise ValueError(
                    f"aug must have shape (B, augment_dim) = ({t.shape[0]}, "
                    f"{self.augment_dim}), got {tuple(aug.shape)}"
                )
            e = e + self.augment(aug.to(device=e.device, dtype=e.dtype))
        if self.num_classes is None:
            if y is not None:
                raise ValueError("y: this network takes no class labels (num_classes=None)")
            return e
        if y is None:  # the null label
            y = torch.full(t.shape, self.num_classes, dtype=torch.long, device=t.device)
        elif y.shape != t.shape:
            raise ValueError(f"y must have shape (B,) = {tuple(t.shape)}, got {tuple(y.shape)}")
        return e + self.labels(y.to(device=t.device, dtype=torch.long)).to(e.dtype)

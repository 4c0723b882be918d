r"""A residual MLP conditioned on the noise level, for vector data ``(B, *D)``.

Each block is :math:`h \leftarrow h + W_2\,\mathrm{SiLU}(W_1\,\mathrm{SiLU}(\mathrm{LN}(h))
+ U\gamma(t))`, where :math:`\gamma` is a :class:`~scorekit.nets.embedding.NoiseEmbedding`.
Inputs of any shape are flattened to ``(B, dim)`` and the output is reshaped back.

With ``fourier_features`` :math:`(f_1..f_K)` the first layer also sees
:math:`\sin(\pi f_k x_i)` and :math:`\cos(\pi f_k x_i)` of every input coordinate, as
VDM adds Fourier features of the input so that the network can resolve the fine-scale
structure that dominates the likelihood of dequantized data (Kingma et al. 2021, App. C).
For data binned at width :math:`w`, :math:`f = 2/w` has one period per bin.

References:
    Kingma et al., "Variational Diffusion Models", NeurIPS 2021, Appendix C;
    Ho et al., "Denoising Diffusion Probabilistic Models", NeurIPS 2020 (dropout);
    Song et al., "Score-Based Generative Modeling through SDEs", ICLR 2021 (toy models);
    He et al., "Deep Residual Learning", 2016.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._validate import check_int, check_positive
from .embedding import NoiseEmbedding

__all__ = ["MLP"]


def _check_frequencies(value) -> tuple[float, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"fourier_features must be a list of positive numbers, got {value!r}")
    out = []
    for f in value:
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or f <= 0:
            raise ValueError(
                f"fourier_features must be a list of positive finite numbers, got {value!r}"
            )
        out.append(float(f))
    return tuple(out)


class _Block(nn.Module):
    def __init__(self, width: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(width)
        self.lin1 = nn.Linear(width, width)
        self.emb = nn.Linear(emb_dim, width)
        self.lin2 = nn.Linear(width, width)
        self.act = nn.SiLU()

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        z = self.act(self.lin1(self.act(self.norm(h))) + self.emb(e))
        return h + self.lin2(self.drop(z))


class MLP(nn.Module):
    r"""Residual MLP ``net(x, t)``; ``x`` of shape ``(B, *D)`` with ``prod(D) == dim``.

    Arguments:
        dim: number of input features (the data dimension, flattened).
        hidden: width of the hidden layers.
        depth: number of residual blocks.
        emb_dim: width of the noise embedding.
        embedding: ``"fourier"`` or ``"sinusoidal"`` (see :class:`NoiseEmbedding`).
        emb_scale: frequency scale of the embedding.
        time_input: ``"t"`` or ``"log_t"``.
        out_dim: output features (defaults to ``dim``; 1 gives a scalar per example).
        dropout: dropout probability inside each residual block (before its second layer,
            as in the DDPM U-Net's blocks; active in ``train()`` mode only).
        fourier_features: frequencies :math:`f_k` of the input Fourier features (each adds
            :math:`2\,dim` inputs); empty (default) for none.
        num_classes: class-conditional on labels ``y`` in :math:`[0, K]`, :math:`K` the null
            label (see :class:`~scorekit.nets.embedding.NoiseEmbedding`); ``None``: no labels.

    Returns (forward ``net(x, t, y=None)``):
        Tensor of shape ``(B, *D)`` (or ``(B,)`` when ``out_dim == 1`` and ``dim > 1``).

    Example:
        >>> net = MLP(2, hidden=32, depth=2)
        >>> net(torch.randn(4, 2), torch.rand(4)).shape
        torch.Size([4, 2])
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 128,
        depth: int = 3,
        emb_dim: int = 64,
        embedding: str = "fourier",
        emb_scale: float = 16.0,
        time_input: str = "t",
        out_dim: int | None = None,
        fourier_features: tuple[float, ...] | list[float] = (),
        dropout: float = 0.0,
        num_classes: int | None = None,
    ):
        super().__init__()
        self.dim = check_int("dim", dim)
        self.out_dim = self.dim if out_dim is None else check_int("out_dim", out_dim)
        check_int("hidden", hidden)
        check_int("depth", depth)
        self._config = {
            "name": "mlp",
            "dim": dim,
            "hidden": hidden,
            "depth": depth,
            "emb_dim": emb_dim,
            "embedding": embedding,
            "emb_scale": emb_scale,
            "time_input": time_input,
            "out_dim": out_dim,
        }
        if (
            isinstance(dropout, bool)
            or not isinstance(dropout, (int, float))
            or not (0 <= dropout < 1)
        ):
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        if dropout:
            self._config["dropout"] = float(dropout)
        freqs = _check_frequencies(fourier_features)
        if freqs:
            self._config["fourier_features"] = list(freqs)
        if num_classes is not None:
            self._config["num_classes"] = check_int("num_classes", num_classes)
        self.register_buffer(
            "freqs", torch.tensor(freqs, dtype=torch.float64) * math.pi, persistent=False
        )
        check_int("emb_dim", emb_dim, minimum=2)
        check_positive("emb_scale", emb_scale)
        self.embed = NoiseEmbedding(
            emb_dim, embedding, emb_scale, time_input, num_classes=num_classes
        )
        self.num_classes = self.embed.num_classes
        self.inp = nn.Linear(self.dim * (1 + 2 * len(freqs)), hidden)
        self.blocks = nn.ModuleList(_Block(hidden, emb_dim, float(dropout)) for _ in range(depth))
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, self.out_dim)

    def config(self) -> dict:
        """JSON-able config; ``scorekit.nets.build_net(config)`` rebuilds the network."""
        return dict(self._config)

    def features(self, x: Tensor) -> Tensor:
        r"""The first layer's inputs: ``x`` of shape ``(B, dim)``, then
        :math:`\sin(\pi f_k x)` and :math:`\cos(\pi f_k x)` for each frequency (``(B, dim
        (1 + 2K))``)."""
        if not len(self.freqs):
            return x
        h = (x[:, :, None] * self.freqs.to(x.dtype)).flatten(1)
        return torch.cat([x, h.sin(), h.cos()], dim=1)

    def trunk(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Hidden features of shape ``(B, hidden)``."""
        b = x.shape[0]
        if math.prod(x.shape[1:]) != self.dim:
            raise ValueError(
                f"x must have {self.dim} features per example, got shape {tuple(x.shape)}"
            )
        if t.shape != (b,):
            raise ValueError(f"t must have shape ({b},), got {tuple(t.shape)}")
        e = self.embed(t, y).to(x.dtype)
        h = self.inp(self.features(x.reshape(b, -1)))
        for block in self.blocks:
            h = block(h, e)
        return torch.nn.functional.silu(self.out_norm(h))

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        out = self.out(self.trunk(x, t, y))
        if self.out_dim == self.dim:
            return out.reshape(x.shape)
        return out.squeeze(1) if self.out_dim == 1 else out

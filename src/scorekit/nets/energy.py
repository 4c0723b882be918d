r"""An energy network: a scalar :math:`E_\theta(x, t)` whose negative gradient is the score.

Use as ``ScoreModel(EnergyMLP(dim), process, prediction="energy")``: the model's
score is :math:`s_\theta(x, t) = -\nabla_x E_\theta(x, t)` by autograd, which is a
conservative field by construction, and :math:`E_\theta` is an unnormalised
:math:`-\log p_t(x)` (up to a constant in :math:`x`). The energy is the scalar head of
the residual :class:`~scorekit.nets.mlp.MLP` trunk.
SiLU activations keep :math:`E_\theta` twice differentiable, as score losses on
:math:`\nabla E` need.

References:
    Salimans & Ho, "Should EBMs model the energy or the score?", 2021;
    Du & Mordatch, "Implicit Generation and Modeling with Energy-Based Models", 2019.
"""

from __future__ import annotations

from torch import Tensor, nn

from .mlp import MLP

__all__ = ["EnergyMLP"]


class EnergyMLP(nn.Module):
    r"""Scalar energy ``E(x, t)`` of shape ``(B,)`` for ``x`` of shape ``(B, *D)``.

    Arguments:
        dim: number of input features (flattened data dimension).
        hidden, depth, emb_dim, embedding, emb_scale, time_input, num_classes: as
            :class:`MLP`.

    Example:
        >>> import torch
        >>> from scorekit import VE, ScoreModel
        >>> m = ScoreModel(EnergyMLP(2, hidden=16, depth=1), VE(), prediction="energy")
        >>> m(torch.randn(3, 2), torch.full((3,), 0.5)).shape
        torch.Size([3, 2])
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
        num_classes: int | None = None,
    ):
        super().__init__()
        self.mlp = MLP(
            dim, hidden, depth, emb_dim, embedding, emb_scale, time_input, out_dim=1,
            num_classes=num_classes,
        )  # fmt: skip
        self.num_classes = self.mlp.num_classes
        self._config = {**self.mlp.config(), "name": "energy_mlp"}
        del self._config["out_dim"]

    def config(self) -> dict:
        """JSON-able config; ``scorekit.nets.build_net(config)`` rebuilds the network."""
        return dict(self._config)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return self.mlp.out(self.mlp.trunk(x, t, y)).squeeze(1)

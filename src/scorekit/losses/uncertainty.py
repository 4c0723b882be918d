r"""A learned per-noise-level weighting: the loss balances its own noise levels.

Karras et al. (2024, EDM2, Sec. 5 and App. B.2) let a small network :math:`u_\phi(\sigma)`
learn the log-variance of the loss at each noise level and minimise, per example,

.. math::
    \mathcal L(\theta, \phi) = \frac{\bar\ell_\theta(x_0, t)}{e^{u_\phi(\sigma)}} + u_\phi(\sigma),
    \qquad \bar\ell = \ell / D,

with :math:`\ell` the wrapped objective's per-example loss and :math:`D` the number of
coordinates of an example (so :math:`\bar\ell` is a per-coordinate loss, as EDM2's per-pixel
one). For fixed :math:`\theta` the minimiser over :math:`u` at each :math:`\sigma` is

.. math:: u^\star(\sigma) = \log E[\bar\ell \mid \sigma],

(the derivative :math:`-\bar\ell e^{-u} + 1` vanishes in expectation there), so the network's
gradient at every noise level is divided by that level's mean loss: every :math:`\sigma`
contributes :math:`O(1)` to the total, whatever the fixed weighting made of it (the
homoscedastic-uncertainty weighting of Kendall, Gal & Cipolla 2018, applied over a
continuum of tasks). The effective score-space weighting becomes
:math:`\lambda(\sigma)\,e^{-u(\sigma)}/D` (:meth:`UncertaintyWeighted.weighting_curve`).

:math:`u_\phi` is EDM2's: fixed random Fourier features of :math:`c = \ln\sigma / 4`,
:math:`\sqrt2\cos(2\pi(f_i c + \varphi_i))`, :math:`f_i \sim \mathcal N(0, 1)`,
:math:`\varphi_i \sim \mathcal U[0, 1)`, then one linear layer, here with a bias, both
initialised to zero: at the start :math:`u = 0` and the loss is :math:`\bar\ell`.

References:
    Karras, Aittala, Lehtinen, Hellsten, Aila & Laine, "Analyzing and Improving the Training
    Dynamics of Diffusion Models", CVPR 2024 (EDM2), eq. (20)-(21).
    Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses", CVPR 2018.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._validate import check_int, check_tensor

__all__ = ["UncertaintyWeighted"]


class UncertaintyWeighted(nn.Module):
    r"""An objective with EDM2's learned per-σ weighting:
    :math:`\bar\ell/e^{u_\phi(\sigma)} + u_\phi(\sigma)`, :math:`\bar\ell = \ell/D` (see the
    module docstring; Karras et al. 2024, eq. (21)).

    It is a module: :class:`~scorekit.train.Trainer` optimises its parameters with the
    model's (same optimiser and learning rate) and saves them in the checkpoint under
    ``objective.``. Wrap it last (outside :class:`~scorekit.losses.Dequantized` or
    :class:`~scorekit.losses.LabelDropout`), so that the trainer sees it.

    Arguments:
        objective: any objective of :mod:`scorekit.losses` (``process``, ``sample_t``,
            ``__call__(model, x0, t=, generator=, **cond) -> (B,)``).
        features: the number of Fourier features of :math:`\ln\sigma/4`.
        seed: the seed of the fixed frequencies and phases.

    Example:
        >>> import torch, scorekit as sk
        >>> obj = UncertaintyWeighted(sk.make_objective("edm", sk.EDM()))
        >>> model = sk.ScoreModel(sk.MLP(2, hidden=8, depth=1), sk.EDM(), "x0")
        >>> obj(model, torch.randn(4, 2)).shape
        torch.Size([4])
    """

    def __init__(self, objective, features: int = 128, seed: int = 0):
        super().__init__()
        if not callable(objective) or not hasattr(objective, "sample_t"):
            raise ValueError(f"objective must be a scorekit objective, got {objective!r}")
        if isinstance(objective, nn.Module):
            raise ValueError(
                f"objective {type(objective).__name__} is already a learned weighting or "
                "adaptive sigma law; wrap a plain objective (and AdaptiveSigma last)"
            )
        self.objective, self.process = objective, objective.process
        self.features = check_int("features", features, minimum=1)
        g = torch.Generator().manual_seed(int(seed))
        self.register_buffer("freqs", torch.randn(self.features, generator=g))
        self.register_buffer("phases", torch.rand(self.features, generator=g))
        self.linear = nn.Linear(self.features, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def sample_t(self, batch, generator=None, dtype=torch.float32, device=None) -> Tensor:
        """The wrapped objective's noise levels."""
        return self.objective.sample_t(batch, generator, dtype, device)

    def log_variance(self, t: Tensor) -> Tensor:
        r""":math:`u_\phi(\sigma(t))`, shape ``(B,)``: the learned log of the mean
        per-coordinate loss at each noise level."""
        sigma = self.process.sigma(t)
        c = sigma.log().div(4).to(self.freqs.dtype)
        f = torch.cos(torch.addcmul(self.phases, c[:, None], self.freqs).mul_(2 * math.pi))
        return self.linear(f.mul_(math.sqrt(2))).squeeze(-1)

    def forward(self, model, x0: Tensor, t=None, generator=None, **cond) -> Tensor:
        r"""Per-example :math:`\bar\ell/e^{u} + u`, shape ``(B,)``; ``t`` is sampled when
        ``None``."""
        check_tensor("x0", x0, min_dim=2)
        if t is None:
            t = self.sample_t(x0.shape[0], generator, x0.dtype, x0.device)
        loss = self.objective(model, x0, t=t, generator=generator, **cond)
        u = self.log_variance(t).to(loss.dtype)
        return torch.addcmul(u, loss, torch.exp(-u), value=1.0 / x0[0].numel())

    @torch.no_grad()
    def weighting_curve(self, sigma: Tensor) -> dict[str, list[float]]:
        r"""The learned weighting on a grid of :math:`\sigma` (1-D tensor, inside the
        process's range): ``{"sigma", "u", "weight"}`` with ``weight`` the factor
        :math:`e^{-u(\sigma)}` that multiplies the fixed weighting (read on the host: call
        it after training, not in a step)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
        t = self.process.t_of_sigma(sigma.to(self.freqs.device))
        u = self.log_variance(t).to(torch.float64).cpu()
        return {"sigma": sigma.tolist(), "u": u.tolist(), "weight": torch.exp(-u).tolist()}

    def __repr__(self) -> str:
        return f"UncertaintyWeighted({self.objective!r}, features={self.features})"

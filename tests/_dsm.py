"""A minimal objective following the scorekit.losses protocol, for trainer tests only."""

from __future__ import annotations

import torch

from scorekit.processes import broadcast_like


class SigmaDSM:
    """sigma^2-weighted denoising score matching: ||sigma s(x_t, t) + eps||^2 per example."""

    def __init__(self, process):
        self.process = process

    def sample_t(self, batch, generator=None, dtype=torch.float32, device=None):
        p = self.process
        u = torch.rand(batch, generator=generator, dtype=dtype, device=device)
        return p.t_min + (p.t_max - p.t_min) * u

    def __call__(self, model, x0, t=None, generator=None):
        if t is None:
            t = self.sample_t(x0.shape[0], generator, x0.dtype, x0.device)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        xt = self.process.add_noise(x0, t, eps)
        sigma = broadcast_like(self.process.sigma(t), x0)
        return ((sigma * model(xt, t) + eps) ** 2).flatten(1).sum(1)

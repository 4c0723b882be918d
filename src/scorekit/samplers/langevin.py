r"""Langevin dynamics: ULA, MALA and NCSN's annealed Langevin.

The overdamped Langevin diffusion :math:`dx = \nabla\log p(x)\,dt + \sqrt2\,dw` has
:math:`p` as its invariant law; its Euler discretisation (ULA) is

.. math:: x_{k+1} = x_k + \eta\, s(x_k) + \sqrt{2\eta}\, z_k ,

biased by :math:`O(\eta)`; a Metropolis–Hastings test on the same proposal (MALA) removes
the bias when the log-density is known up to a constant, i.e. for an energy model.

References:
    Roberts & Tweedie, "Exponential convergence of Langevin distributions and their
    discrete approximations", Bernoulli 1996. Song & Ermon, "Generative Modeling by
    Estimating Gradients of the Data Distribution", NeurIPS 2019, Algorithm 1.
"""

from __future__ import annotations

import math

import torch

from .._validate import check_int, check_positive
from .base import Sampler, randn_like

__all__ = ["AnnealedLangevin", "Langevin"]


class Langevin(Sampler):
    r"""Unadjusted (ULA) or Metropolis-adjusted (MALA) Langevin for the score at the grid's
    times (usually one fixed time repeated: the grid may be non-increasing).

    Arguments:
        step_size: :math:`\eta > 0`.
        metropolis: accept the proposal :math:`x' = x + \eta s(x) + \sqrt{2\eta} z` with
            probability :math:`\min(1, e^{E(x) - E(x')} q(x \mid x')/q(x' \mid x))`,
            :math:`q(x' \mid x) \propto e^{-\|x' - x - \eta s(x)\|^2/4\eta}`; needs
            ``ScoreModel(prediction="energy")``. The acceptance rate is returned in
            ``SampleResult.info["acceptance"]``.

    Step ``i`` uses the score at ``grid[i]``; no denoising step. NFE: one per step (MALA:
    one more for the starting point; each evaluation is a forward and backward pass).

    Example:
        >>> import torch
        >>> from scorekit import ExactScore, Gaussian, VE
        >>> m = ExactScore(Gaussian(torch.zeros(2), std=1.0), VE(0.01, 1.0))
        >>> x = torch.zeros(4, 2, dtype=torch.float64)
        >>> Langevin(0.1)(m, x, torch.zeros(11), torch.Generator().manual_seed(0)).nfe
        10
    """

    stochastic = True
    strict_grid = False

    def __init__(self, step_size: float, metropolis: bool = False):
        self.step_size = check_positive("step_size", step_size)
        self.metropolis = bool(metropolis)

    def init(self, x, grid):
        return {"info": {"acceptance": 0.0}, "accepted": 0, "proposed": 0}

    def step(self, model, x, t, t_next, state, generator, last):
        eta = self.step_size
        if not self.metropolis:
            z = randn_like(x, generator)
            return x + eta * model.score(x, t) + math.sqrt(2 * eta) * z, state
        if model.model.prediction != "energy":
            raise ValueError(
                "metropolis=True needs an energy model (ScoreModel(prediction='energy')), "
                f"got prediction={model.model.prediction!r}"
            )
        if state.get("t") is None or float(state["t"]) != float(t):
            state["energy"], state["score"] = model.energy_and_score(x, t)
            state["t"] = t
        e, s = state["energy"], state["score"]
        z = randn_like(x, generator)
        prop = x + eta * s + math.sqrt(2 * eta) * z
        e_p, s_p = model.energy_and_score(prop, t)
        back = x - prop - eta * s_p
        log_q_back = -(back.reshape(len(x), -1) ** 2).sum(1) / (4 * eta)
        log_q_fwd = -0.5 * (z.reshape(len(x), -1) ** 2).sum(1)
        log_accept = e - e_p + log_q_back - log_q_fwd
        u = torch.rand(len(x), generator=generator, dtype=x.dtype, device=x.device)
        ok = torch.log(u) < log_accept
        shape = (-1,) + (1,) * (x.dim() - 1)
        x = torch.where(ok.reshape(shape), prop, x)
        state["energy"] = torch.where(ok, e_p, e)
        state["score"] = torch.where(ok.reshape(shape), s_p, s)
        state["accepted"] += int(ok.sum())
        state["proposed"] += len(ok)
        state["info"] = {"acceptance": state["accepted"] / state["proposed"]}
        return x, state


class AnnealedLangevin(Sampler):
    r"""NCSN's annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1): for each noise
    level :math:`\sigma_i` of the grid (every grid point is a level, largest first), run
    ``steps_per_level`` ULA steps at that level with step size

    .. math:: \alpha_i = \epsilon\, \sigma_i^2/\sigma_L^2 ,

    :math:`\sigma_L` the last (smallest) level. With ``final_denoise=True`` (NCSNv2's final step)
    the sample ends with one denoising step :math:`D(x, \sigma_L) = (x + \sigma_L^2 s(x))/\alpha`
    (Tweedie; :math:`x + \sigma_L^2 s` for VE).

    Arguments:
        steps_per_level: :math:`T` (NCSN: 100).
        eps: :math:`\epsilon`; default :math:`0.2\,\sigma_L^2`, NCSN's relative step
            (their 2e-5 with :math:`\sigma_L = 0.01`), so :math:`\alpha_i = 0.2\,\sigma_i^2`.
        final_denoise: finish with the denoising step (one more model evaluation).

    NFE: ``L * steps_per_level`` (+1 with ``final_denoise``). The trajectory holds the state at
    the start and after each level.

    References:
        Song & Ermon (2019), Algorithm 1; Song & Ermon, "Improved Techniques for Training
        Score-Based Generative Models", NeurIPS 2020 (final denoising).
    """

    stochastic = True

    def __init__(
        self, steps_per_level: int = 100, eps: float | None = None, final_denoise: bool = True
    ):
        self.steps_per_level = check_int("steps_per_level", steps_per_level, minimum=1)
        self.eps = None if eps is None else check_positive("eps", eps)
        self.final_denoise = bool(final_denoise)

    def _run(self, model, x, grid, generator, return_trajectory):
        sig = model.process.sigma(grid)
        last = float(sig[-1])
        if last <= 0:
            raise ValueError(f"annealed Langevin needs sigma > 0 at every level, got {last}")
        traj = [x] if return_trajectory else None
        eps = 0.2 * last**2 if self.eps is None else self.eps
        for t, s in zip(grid, sig, strict=True):
            step = eps * float(s) ** 2 / last**2
            for _ in range(self.steps_per_level):
                z = randn_like(x, generator)
                x = x + step * model.score(x, t) + math.sqrt(2 * step) * z
            if traj is not None:
                traj.append(x)
        if self.final_denoise:
            x = model.x0(x, grid[-1])
        return x, traj, {}

r"""Reverse-time SDE samplers: Euler–Maruyama, reverse diffusion, predictor–corrector.

The reverse SDE of any process (Anderson 1982; Song et al. 2021, eq. 6),

.. math:: dx = \big[f(x, t) - g(t)^2 \nabla_x\log p_t(x)\big]\,dt + g(t)\,d\bar w,

integrated from ``grid[0]`` down to ``grid[-1]`` (``process.reverse_drift``). As in
score_sde's ``denoise=True``, the *last* predictor step adds no noise and returns its mean
:math:`x_{mean}` (for Euler–Maruyama: :math:`x + [f - g^2 s]\,\Delta t`); no separate
denoising step :math:`D(x, \sigma_{min})` is taken.

References:
    Song et al., "Score-Based Generative Modeling through Stochastic Differential
    Equations", ICLR 2021, Algorithms 2-4 and Appendix G.
"""

from __future__ import annotations

import math

import torch

from .._validate import check_choice, check_int, check_positive
from ..core.processes import Process
from ..core.random import randn_like
from ..core.schedules import time_grid
from .base import Sampler
from .ddpm import DDPM

__all__ = [
    "PREDICTORS",
    "EulerMaruyama",
    "LangevinCorrector",
    "PredictorCorrector",
    "ReverseDiffusion",
]

PREDICTORS = ("euler_maruyama", "reverse_diffusion", "ancestral")


class _ReverseSDE(Sampler):
    """Shared settings of the reverse-SDE samplers: stochastic, 1000 steps uniform in t."""

    stochastic = True
    default_steps = 1000

    def default_grid(self, process: Process, steps: int):
        return time_grid(process, steps, "uniform")


class EulerMaruyama(_ReverseSDE):
    r"""Euler–Maruyama on the reverse SDE, with :math:`\Delta t = t_{i+1} - t_i < 0`:

    .. math:: x_{i+1} = x_i + [f(x_i, t_i) - g(t_i)^2 s_\theta(x_i, t_i)]\,\Delta t
              + g(t_i)\sqrt{|\Delta t|}\, z_i ,

    with :math:`z_i = 0` on the last step. One model evaluation per step; weak order 1.
    """

    def step(self, model, x, i, grid, state, generator):
        dt = grid.t[i + 1] - grid.t[i]
        s = model.score(x, grid.t[i])
        mean = x + (grid.dlog_alpha[i] * dt) * x - (grid.g2[i] * dt) * s
        if i == grid.n - 1:
            return mean, state
        return mean + math.sqrt(grid.g2[i] * abs(dt)) * randn_like(x, generator), state


class ReverseDiffusion(_ReverseSDE):
    r"""Song et al.'s reverse-diffusion predictor: discretise the forward process exactly
    between grid times, :math:`x_t = a\,x_{t'} + G z` with :math:`a = \alpha_t/\alpha_{t'}`,
    :math:`G^2 = \sigma_t^2 - a^2\sigma_{t'}^2`, and reverse it as

    .. math:: x_{t'} = x_t - (a - 1)\,x_t + G^2 s_\theta(x_t, t) + G z ,

    with :math:`z = 0` on the last step. For VE this is SMLD's
    :math:`x + (\sigma_t^2 - \sigma_{t'}^2)s + \sqrt{\sigma_t^2 - \sigma_{t'}^2} z`; for VP,
    :math:`(2 - \sqrt{1-\beta})x + \beta s + \sqrt\beta z`. One model evaluation per step.
    """

    def step(self, model, x, i, grid, state, generator):
        a = grid.alpha[i] / grid.alpha[i + 1]
        g2 = max(0.0, grid.sigma[i] ** 2 - (a * grid.sigma[i + 1]) ** 2)
        mean = (2 - a) * x + g2 * model.score(x, grid.t[i])
        if i == grid.n - 1:
            return mean, state
        return mean + math.sqrt(g2) * randn_like(x, generator), state


class LangevinCorrector:
    r"""Song et al.'s Langevin corrector at grid time :math:`t_i`, ``steps`` times:

    .. math:: \epsilon = 2\,\alpha_i\Big(\frac{r\,\|z\|}{\|s_\theta(x, t)\|}\Big)^2,\qquad
              x \leftarrow x + \epsilon\, s_\theta(x, t) + \sqrt{2\epsilon}\, z ,

    where :math:`r` is the signal-to-noise ratio ``snr`` and
    :math:`\alpha_i = (\alpha(t_i)/\alpha(t_{i+1}))^2` (:math:`1 - \beta_i` for VP, 1 for VE).
    As in score_sde, :math:`\|z\|` and :math:`\|s\|` are per-sample norms averaged over
    the batch (a per-sample ratio explodes in low dimension wherever :math:`s \approx 0`),
    so a sample depends on the rest of its batch through the step size.

    References:
        Song et al. (2021), Algorithm 4 and Appendix G.
    """

    def __init__(self, snr: float = 0.16, steps: int = 1):
        self.snr = check_positive("snr", snr)
        self.steps = check_int("corrector_steps", steps, minimum=1)

    def __call__(self, model, x, i, grid, generator):
        """Correct ``x`` at ``grid.t[i]`` (a :class:`~scorekit.samplers.base.Grid`)."""
        ratio = (grid.alpha[i] / grid.alpha[i + 1]) ** 2
        for _ in range(self.steps):
            s = model.score(x, grid.t[i])
            z = randn_like(x, generator)
            zn = z.reshape(len(z), -1).norm(dim=1).mean()
            sn = s.reshape(len(s), -1).norm(dim=1).mean().clamp_min(torch.finfo(s.dtype).tiny)
            eps = 2 * ratio * (self.snr * zn / sn) ** 2
            x = x + eps * s + torch.sqrt(2 * eps) * z
        return x


class PredictorCorrector(_ReverseSDE):
    r"""Predictor–corrector sampling: at each grid time, ``corrector_steps`` Langevin
    corrector steps (:class:`LangevinCorrector`, step from the SNR rule
    :math:`2\alpha_i(r\|z\|/\|s\|)^2`), then one predictor step to the next time.

    Arguments:
        predictor: ``"reverse_diffusion"`` (:class:`ReverseDiffusion`), ``"euler_maruyama"``
            (:class:`EulerMaruyama`), ``"ancestral"`` (:class:`~scorekit.samplers.ddpm.DDPM`),
            or any single-step :class:`~scorekit.samplers.base.Sampler` instance (e.g.
            ``DDIM(0.0)`` or ``Heun()`` for an ODE predictor).
        snr: the corrector's signal-to-noise ratio :math:`r` (0.16 for VE in Song et al.).
        corrector_steps: corrector steps per grid time.

    NFE: ``(1 + corrector_steps)`` per step. The last predictor step adds no noise.
    500 steps uniform in t by default.
    """

    default_steps = 500

    def __init__(
        self,
        predictor: str | Sampler = "reverse_diffusion",
        snr: float = 0.16,
        corrector_steps: int = 1,
    ):
        if isinstance(predictor, Sampler):
            if not predictor.single_step or not predictor.strict_grid or not predictor.nestable:
                raise ValueError(f"predictor must step grid point to grid point, got {predictor!r}")
            self.predictor, self._predictor = repr(predictor), predictor
        else:
            self.predictor = check_choice("predictor", predictor, PREDICTORS)
            self._predictor = {
                "euler_maruyama": EulerMaruyama,
                "reverse_diffusion": ReverseDiffusion,
                "ancestral": DDPM,
            }[predictor]()
        self._corrector = LangevinCorrector(snr, corrector_steps)
        self.snr, self.corrector_steps = self._corrector.snr, self._corrector.steps

    def init(self, model, x, grid):
        return self._predictor.init(model, x, grid)

    def step(self, model, x, i, grid, state, generator):
        x = self._corrector(model, x, i, grid, generator)
        return self._predictor.step(model, x, i, grid, state, generator)

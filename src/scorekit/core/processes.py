r"""Noise processes: one family, one axis.

Every process here is a Gaussian perturbation kernel

.. math:: p(x_t \mid x_0) = \mathcal{N}(x_t;\ \alpha(t) x_0,\ \sigma(t)^2 I),
          \qquad x_t = \alpha(t) x_0 + \sigma(t) \varepsilon .

From :math:`\alpha` and :math:`\sigma` alone follow the forward SDE
:math:`dx = f(x, t)\,dt + g(t)\,dw` with

.. math:: f(x, t) = \frac{d \log \alpha}{dt} x, \qquad
          g(t)^2 = \frac{d \sigma^2}{dt} - 2 \frac{d \log \alpha}{dt} \sigma^2 ,

the reverse SDE and the probability-flow ODE (Song et al., 2021). Samplers,
losses and likelihoods are written once against :class:`Process`.

Time runs over ``[0, T]`` (``T = 1`` except for :class:`EDM`, where ``t = sigma``).
``t_min`` and ``t_max`` are the default ends of sampling and likelihood
integration; they may be narrower than the domain where the process is singular.

References:
    Song & Ermon, "Generative Modeling by Estimating Gradients of the Data
    Distribution", NeurIPS 2019. Ho et al., "Denoising Diffusion Probabilistic
    Models", NeurIPS 2020. Song et al., "Score-Based Generative Modeling through
    Stochastic Differential Equations", ICLR 2021. Nichol & Dhariwal, "Improved
    DDPM", ICML 2021. Karras et al., "Elucidating the Design Space of
    Diffusion-Based Generative Models", NeurIPS 2022.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._validate import check_int, check_positive, check_range
from .random import randn

__all__ = [
    "EDM",
    "VE",
    "VP",
    "CosineVP",
    "Process",
    "RectifiedFlow",
    "SubVP",
    "VarianceAlpha",
    "broadcast_like",
    "ddpm_betas",
    "ncsn_sigmas",
]


def _as_time(t: Tensor | float) -> Tensor:
    t = torch.as_tensor(t)
    return t if t.is_floating_point() else t.to(torch.get_default_dtype())


def broadcast_like(c: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample coefficient of shape ``()`` or ``(B,)`` to broadcast against
    ``x`` of shape ``(B, *D)``."""
    c = torch.as_tensor(c, dtype=x.dtype, device=x.device)
    if c.dim() == 0:
        return c
    return c.reshape(c.shape + (1,) * (x.dim() - c.dim()))


class Process:
    r"""Base class: a process is :math:`\alpha(t)`, :math:`\sigma(t)` and their derivatives.

    Subclasses implement :meth:`_alpha`, :meth:`_sigma`, :meth:`_d_alpha` and
    :meth:`_d_sigma` in closed form, and, where they have one, the closed-form inverses
    :meth:`_t_of_sigma` and :meth:`_t_of_ratio`; everything else is derived here once, and
    an inverse without a closed form falls back to one bisection.

    Nothing here checks the values of ``t`` (that would turn a tensor into a Python number
    and stall an accelerator at every evaluation): values are checked once, at the public
    boundary of a call (:meth:`check_t`, used by ``sample``, the trainer and the likelihood).
    """

    T: float = 1.0
    t_min: float = 0.0
    t_max: float = 1.0
    #: :math:`\alpha \equiv 1` (VE, EDM): code may skip multiplying by it
    unit_alpha: bool = False
    #: ``t`` spans decades (EDM's ``t = sigma``): a network should embed :math:`\log t`
    log_time: bool = False

    # -- to implement -------------------------------------------------------
    def _alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _d_alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _d_sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _t_of_sigma(self, sigma: Tensor) -> Tensor:
        return self._bisect(self._sigma, sigma)

    def _t_of_ratio(self, ratio: Tensor) -> Tensor:
        return self._bisect(lambda t: self._sigma(t) / self._alpha(t), ratio)

    def _t_of_log_snr(self, log_snr: Tensor) -> Tensor:
        return self._t_of_ratio(torch.exp(-0.5 * log_snr))

    # -- public ---------------------------------------------------------------
    def check_t(self, t: Tensor | float, name: str = "t") -> Tensor:
        """Return ``t`` as a floating tensor, raising ``ValueError`` outside ``[0, T]``.
        This reads the values (a host sync on an accelerator): call it at the boundary."""
        t = _as_time(t)
        check_range(name, t, 0.0, self.T)
        return t

    def alpha(self, t: Tensor | float) -> Tensor:
        r"""Signal scale :math:`\alpha(t)`, same shape as ``t``."""
        return self._alpha(_as_time(t))

    def sigma(self, t: Tensor | float) -> Tensor:
        r"""Noise scale :math:`\sigma(t)`, same shape as ``t``."""
        return self._sigma(_as_time(t))

    def d_alpha(self, t: Tensor | float) -> Tensor:
        r""":math:`d\alpha/dt` in closed form."""
        return self._d_alpha(_as_time(t))

    def d_sigma(self, t: Tensor | float) -> Tensor:
        r""":math:`d\sigma/dt` in closed form."""
        return self._d_sigma(_as_time(t))

    def dlog_alpha(self, t: Tensor | float) -> Tensor:
        r""":math:`d \log\alpha / dt = \alpha'/\alpha`."""
        t = _as_time(t)
        return self._d_alpha(t) / self._alpha(t)

    def g2(self, t: Tensor | float) -> Tensor:
        r"""Squared diffusion :math:`g(t)^2 = 2\sigma\sigma' - 2 (\alpha'/\alpha) \sigma^2`."""
        return self._g2(_as_time(t))

    def _g2(self, t: Tensor) -> Tensor:
        s = self._sigma(t)
        return 2 * s * self._d_sigma(t) - 2 * (self._d_alpha(t) / self._alpha(t)) * s**2

    def f(self, x: Tensor, t: Tensor | float) -> Tensor:
        r"""Forward SDE drift :math:`f(x, t) = (d\log\alpha/dt)\, x`; ``x`` is ``(B, *D)``."""
        return broadcast_like(self.dlog_alpha(t), x) * x

    def ode_drift(self, x: Tensor, t: Tensor | float, score: Tensor) -> Tensor:
        r"""Probability-flow ODE drift :math:`f(x, t) - \tfrac12 g(t)^2 s(x, t)`
        (Song et al. 2021, eq. 13); ``t`` is ``()`` or ``(B,)``."""
        return self.f(x, t) - 0.5 * broadcast_like(self.g2(t), x) * score

    def reverse_drift(self, x: Tensor, t: Tensor | float, score: Tensor) -> Tensor:
        r"""Reverse-time SDE drift :math:`f(x, t) - g(t)^2 s(x, t)`, integrated backwards in
        time with diffusion :math:`g(t)\,d\bar w` (Anderson 1982; Song et al. 2021, eq. 6)."""
        return self.f(x, t) - broadcast_like(self.g2(t), x) * score

    def marginal(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        r"""``(alpha(t), sigma(t))`` of :math:`p(x_t \mid x_0)`."""
        t = _as_time(t)
        return self._alpha(t), self._sigma(t)

    def ratio(self, t: Tensor | float) -> Tensor:
        r"""Scale-free noise level :math:`\tilde\sigma(t) = \sigma(t)/\alpha(t)` (increasing in
        ``t``; the :math:`\sigma` of Karras et al. 2022, eq. 4, equal to :math:`\sigma` when
        :math:`\alpha = 1`)."""
        a, s = self.marginal(t)
        return s / a

    def log_snr(self, t: Tensor | float) -> Tensor:
        r"""Log signal-to-noise ratio :math:`\lambda(t) = 2 \log(\alpha/\sigma)`."""
        a, s = self.marginal(t)
        return 2 * (torch.log(a) - torch.log(s))

    def t_of_sigma(self, sigma: Tensor | float) -> Tensor:
        r"""Inverse of :math:`\sigma(t)` (monotone for every process here); a level outside
        :math:`[\sigma(0), \sigma(T)]` maps to the nearer end of :math:`[0, T]`."""
        return self._inverse(self._t_of_sigma, sigma, "sigma")

    def t_of_ratio(self, ratio: Tensor | float) -> Tensor:
        r"""Inverse of :meth:`ratio`: the :math:`t` with :math:`\sigma(t)/\alpha(t) =`
        ``ratio``; a level outside the process's range maps to the nearer end of
        :math:`[0, T]`."""
        return self._inverse(self._t_of_ratio, ratio, "ratio")

    def t_of_log_snr(self, log_snr: Tensor | float) -> Tensor:
        r"""Inverse of :meth:`log_snr` (decreasing in ``t``); a level outside the process's
        range maps to the nearer end of :math:`[0, T]`."""
        return self._inverse(self._t_of_log_snr, log_snr, "log_snr")

    def _inverse(self, fn, level: Tensor | float, kind: str) -> Tensor:
        """``fn`` of ``level`` clamped into the range of ``kind`` on ``[0, T]`` (bounds read
        once per process, so the clamp reads no tensor value)."""
        lo, hi = self._level_range(kind)
        return fn(_as_time(level).clamp(lo, hi)).clamp(0.0, self.T)

    def _level_range(self, kind: str) -> tuple[float, float]:
        ranges = getattr(self, "_ranges", None)
        if ranges is None:
            ends = torch.tensor([0.0, self.T], dtype=torch.float64)
            a, s = self._alpha(ends), self._sigma(ends)
            with torch.no_grad():
                lam = 2 * (torch.log(a) - torch.log(s))
            ranges = {
                "sigma": tuple(s.tolist()),
                "ratio": tuple((s / a).tolist()),
                "log_snr": tuple(sorted(lam.tolist())),
            }
            self._ranges = ranges
        return ranges[kind]

    def _bisect(self, fn, target: Tensor) -> Tensor:
        r"""The :math:`t \in [0, T]` with ``fn(t) = target`` for an increasing ``fn``: 80
        halvings in float64 (to machine precision), for processes without a closed form."""
        y = target.to(torch.float64)
        lo, hi = torch.zeros_like(y), torch.full_like(y, float(self.T))
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            below = fn(mid) < y
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return (0.5 * (lo + hi)).to(target.dtype)

    def add_noise(self, x0: Tensor, t: Tensor | float, eps: Tensor) -> Tensor:
        r""":math:`x_t = \alpha(t) x_0 + \sigma(t)\varepsilon`; ``t`` is ``()`` or ``(B,)``."""
        a, s = self.marginal(t)
        return broadcast_like(a, x0) * x0 + broadcast_like(s, x0) * eps

    def prior_std(self) -> float:
        r"""Standard deviation of the prior :math:`\mathcal{N}(0, \sigma(t_{max})^2 I)`.

        The prior ignores the :math:`\alpha(t_{max}) x_0` term of the true marginal;
        its error is what separates a likelihood from the exact one (see DESIGN.md).
        """
        return float(self._sigma(torch.tensor(self.t_max, dtype=torch.float64)))

    def prior_sample(
        self,
        shape: tuple[int, ...] | torch.Size,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        r"""Draw from the prior :math:`\mathcal{N}(0, \sigma(t_{max})^2 I)`."""
        return self.prior_std() * randn(shape, generator, dtype, device)

    def prior_log_prob(self, x: Tensor) -> Tensor:
        r"""Log-density of the prior, summed over all but the batch axis: shape ``(B,)``.

        :math:`\log \mathcal{N}(x; 0, s^2 I) = -\tfrac{\|x\|^2}{2s^2} - \tfrac{d}{2}\log(2\pi s^2)`.
        """
        return isotropic_normal_log_prob(x, self.prior_std())

    def config(self) -> dict:
        """JSON-serialisable description; ``from_config`` rebuilds the process."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class VarianceAlpha:
    r"""Mixin for processes where :math:`\sigma^2 = 1 - \alpha^2` (VP, cosine, discrete VP):
    every inverse goes through :math:`\log\alpha^2`, with
    :math:`\log\alpha^2 = \log(1 - \sigma^2) = -\log(1 + \tilde\sigma^2)
    = \log\operatorname{sigmoid}(\lambda)`; subclasses give ``_t_of_log_alpha2``."""

    def _t_of_log_alpha2(self, log_alpha2: Tensor) -> Tensor:
        raise NotImplementedError

    def _t_of_sigma(self, sigma):
        return self._t_of_log_alpha2(torch.log1p(-(sigma**2)))

    def _t_of_ratio(self, ratio):
        return self._t_of_log_alpha2(-torch.log1p(ratio**2))

    def _t_of_log_snr(self, log_snr):
        return self._t_of_log_alpha2(torch.nn.functional.logsigmoid(log_snr))


class VE(Process):
    r"""Variance exploding (NCSN / SMLD): :math:`\alpha = 1`,
    :math:`\sigma(t) = \sigma_{min} (\sigma_{max}/\sigma_{min})^t`, :math:`t \in [0, 1]`.

    :math:`g(t)^2 = 2 \sigma(t)^2 \log(\sigma_{max}/\sigma_{min})`.

    Example:
        >>> p = VE(0.01, 50.0)
        >>> float(p.sigma(1.0))
        50.0

    References:
        Song & Ermon (2019); Song et al. (2021), eq. (30).
    """

    unit_alpha = True

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        self.sigma_min = check_positive("sigma_min", sigma_min)
        self.sigma_max = check_positive("sigma_max", sigma_max)
        if self.sigma_min >= self.sigma_max:
            raise ValueError(
                f"sigma_min must be < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}"
            )
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def _alpha(self, t):
        return torch.ones_like(t)

    def _d_alpha(self, t):
        return torch.zeros_like(t)

    def _sigma(self, t):
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def _d_sigma(self, t):
        return self._sigma(t) * self._log_ratio

    def _g2(self, t):
        return 2 * self._sigma(t) ** 2 * self._log_ratio

    def _t_of_sigma(self, sigma):
        return torch.log(sigma / self.sigma_min) / self._log_ratio

    def _t_of_ratio(self, ratio):
        return self._t_of_sigma(ratio)

    def _t_of_log_snr(self, log_snr):
        return (-0.5 * log_snr - math.log(self.sigma_min)) / self._log_ratio

    def config(self) -> dict:
        return {"name": "VE", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


class _LinearBeta(Process):
    """Shared pieces of the linear-beta processes: beta(t) and its integral B(t)."""

    def __init__(self, beta_min: float, beta_max: float, t_min: float):
        self.beta_min = check_positive("beta_min", beta_min)
        self.beta_max = check_positive("beta_max", beta_max)
        if self.beta_max < self.beta_min:
            raise ValueError(
                f"beta_max must be >= beta_min, got beta_min={beta_min}, beta_max={beta_max}"
            )
        self.t_min = check_positive("t_min", t_min)
        if self.t_min >= 1:
            raise ValueError(f"t_min must be < 1, got {t_min}")

    def beta(self, t: Tensor | float) -> Tensor:
        r""":math:`\beta(t) = \beta_{min} + t(\beta_{max} - \beta_{min})`."""
        return self.beta_min + _as_time(t) * (self.beta_max - self.beta_min)

    def _int_beta(self, t):
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def _alpha(self, t):
        return torch.exp(-0.5 * self._int_beta(t))

    def _d_alpha(self, t):
        return -0.5 * self.beta(t) * self._alpha(t)

    def _t_of_int_beta(self, B):
        # Solve beta_min t + (delta/2) t^2 = B for t >= 0.
        delta = self.beta_max - self.beta_min
        if delta == 0:
            return B / self.beta_min
        return (torch.sqrt(self.beta_min**2 + 2 * delta * B) - self.beta_min) / delta

    def config(self) -> dict:
        return {
            "name": type(self).__name__,
            "beta_min": self.beta_min,
            "beta_max": self.beta_max,
            "t_min": self.t_min,
        }


class VP(VarianceAlpha, _LinearBeta):
    r"""Variance preserving (DDPM) with linear :math:`\beta(t)`:
    :math:`\alpha(t) = e^{-\frac12\int_0^t \beta}`, :math:`\sigma = \sqrt{1 - \alpha^2}`,
    :math:`g^2 = \beta(t)`, :math:`t \in [0, 1]`.

    The defaults (0.1, 20) are the continuous limit of DDPM's
    :math:`\beta_1 = 10^{-4}, \dots, \beta_{1000} = 0.02`.

    References:
        Ho et al. (2020); Song et al. (2021), eq. (32).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3):
        super().__init__(beta_min, beta_max, t_min)

    def _sigma(self, t):
        return torch.sqrt(-torch.expm1(-self._int_beta(t)))

    def _d_sigma(self, t):
        # sigma' = -alpha alpha' / sigma = beta alpha^2 / (2 sigma)
        return 0.5 * self.beta(t) * self._alpha(t) ** 2 / self._sigma(t)

    def _g2(self, t):
        return self.beta(t)

    def _t_of_log_alpha2(self, log_alpha2):
        return self._t_of_int_beta(-log_alpha2)


class SubVP(_LinearBeta):
    r"""Sub-VP: :math:`\alpha` as in :class:`VP`, :math:`\sigma(t) = 1 - \alpha(t)^2`,
    :math:`g^2 = \beta(t)(1 - e^{-2\int_0^t\beta})`.

    References:
        Song et al. (2021), eq. (34).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3):
        super().__init__(beta_min, beta_max, t_min)

    def _sigma(self, t):
        return -torch.expm1(-self._int_beta(t))

    def _d_sigma(self, t):
        return self.beta(t) * self._alpha(t) ** 2

    def _g2(self, t):
        return self.beta(t) * -torch.expm1(-2 * self._int_beta(t))

    def _t_of_sigma(self, sigma):
        return self._t_of_int_beta(-torch.log1p(-sigma))

    def _t_of_ratio(self, ratio):
        # sigma / alpha = (1 - alpha^2) / alpha  =>  alpha = 2 / (sqrt(ratio^2 + 4) + ratio)
        alpha = 2 / (torch.sqrt(ratio**2 + 4) + ratio)
        return self._t_of_int_beta(-2 * torch.log(alpha))


class CosineVP(VarianceAlpha, Process):
    r"""Variance preserving with the cosine schedule:
    :math:`\alpha(t) = \cos(\phi(t)) / \cos(\phi(0))`,
    :math:`\phi(t) = \frac{t + s}{1 + s}\frac{\pi}{2}`,
    :math:`\sigma = \sqrt{1 - \alpha^2}`, :math:`g^2 = -2\alpha'/\alpha = \pi \tan\phi / (1 + s)`.

    :math:`\alpha(1) = 0`, so the default ``t_max`` is ``1 - 1e-3``.

    References:
        Nichol & Dhariwal, "Improved Denoising Diffusion Probabilistic Models", 2021, eq. (17).
    """

    def __init__(self, s: float = 0.008, t_min: float = 1e-3, t_max: float = 1 - 1e-3):
        self.s = check_positive("s", s, strict=False)
        self.t_min = check_positive("t_min", t_min)
        self.t_max = check_positive("t_max", t_max)
        if not self.t_min < self.t_max < 1:
            raise ValueError(f"need t_min < t_max < 1, got t_min={t_min}, t_max={t_max}")
        self._k = math.pi / (2 * (1 + self.s))
        self._cos0 = math.cos(self.s * self._k)

    def _phi(self, t):
        return (t + self.s) * self._k

    def _alpha(self, t):
        return torch.cos(self._phi(t)) / self._cos0

    def _d_alpha(self, t):
        return -torch.sin(self._phi(t)) * self._k / self._cos0

    def _sigma(self, t):
        return torch.sqrt((1 - self._alpha(t) ** 2).clamp_min(0))

    def _d_sigma(self, t):
        return -self._alpha(t) * self._d_alpha(t) / self._sigma(t)

    def _g2(self, t):
        return 2 * self._k * torch.tan(self._phi(t))

    def _t_of_log_alpha2(self, log_alpha2):
        a = torch.exp(0.5 * log_alpha2)
        return torch.arccos((a * self._cos0).clamp(-1, 1)) / self._k - self.s

    def config(self) -> dict:
        return {"name": "CosineVP", "s": self.s, "t_min": self.t_min, "t_max": self.t_max}


class EDM(Process):
    r"""Karras et al. (EDM): :math:`\alpha = 1`, :math:`\sigma(t) = t`, so time *is* the
    noise level: ``t`` ranges over ``[0, sigma_max]``, ``t_min = sigma_min``.

    :math:`g(t)^2 = 2t`; the probability-flow ODE is :math:`dx/d\sigma = -\sigma \nabla\log p`.

    References:
        Karras et al. (2022), Table 1.
    """

    unit_alpha = True
    log_time = True

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        self.sigma_min = check_positive("sigma_min", sigma_min)
        self.sigma_max = check_positive("sigma_max", sigma_max)
        if self.sigma_min >= self.sigma_max:
            raise ValueError(
                f"sigma_min must be < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}"
            )
        self.T = self.sigma_max
        self.t_min = self.sigma_min
        self.t_max = self.sigma_max

    def _alpha(self, t):
        return torch.ones_like(t)

    def _d_alpha(self, t):
        return torch.zeros_like(t)

    def _sigma(self, t):
        return t.clone()

    def _d_sigma(self, t):
        return torch.ones_like(t)

    def _g2(self, t):
        return 2 * t

    def _t_of_sigma(self, sigma):
        return sigma.clone()

    def _t_of_ratio(self, ratio):
        return ratio.clone()

    def _t_of_log_snr(self, log_snr):
        return torch.exp(-0.5 * log_snr)

    def config(self) -> dict:
        return {"name": "EDM", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


class RectifiedFlow(Process):
    r"""The linear interpolant of rectified flow and flow matching:
    :math:`\alpha(t) = 1 - t`, :math:`\sigma(t) = t`, so :math:`x_t = (1 - t)x_0 + t\varepsilon`
    and the flow velocity is :math:`u = dx_t/dt = \varepsilon - x_0`;
    :math:`g^2 = 2\sigma\sigma' - 2(\alpha'/\alpha)\sigma^2 = 2t/(1 - t)`,
    :math:`\sigma/\alpha = t/(1 - t)` (inverse :math:`t = r/(1 + r)`).

    :math:`\alpha(1) = 0` makes the scale-free coordinates of the samplers infinite there, so
    the default ``t_max`` is ``1 - 1e-3`` (the prior :math:`\mathcal N(0, \sigma(t_{max})^2 I)`
    then ignores the signal :math:`10^{-3} x_0`), and ``t_min = 1e-3``.

    References:
        Liu, Gong & Liu, "Flow Straight and Fast", ICLR 2023; Lipman et al., "Flow Matching for
        Generative Modeling", ICLR 2023; Albergo & Vanden-Eijnden, ICLR 2023.
    """

    def __init__(self, t_min: float = 1e-3, t_max: float = 1 - 1e-3):
        self.t_min = check_positive("t_min", t_min)
        self.t_max = check_positive("t_max", t_max)
        if not self.t_min < self.t_max < 1:
            raise ValueError(f"need t_min < t_max < 1, got t_min={t_min}, t_max={t_max}")

    def _alpha(self, t):
        return 1 - t

    def _d_alpha(self, t):
        return -torch.ones_like(t)

    def _sigma(self, t):
        return t.clone()

    def _d_sigma(self, t):
        return torch.ones_like(t)

    def _g2(self, t):
        return 2 * t / (1 - t)

    def _t_of_sigma(self, sigma):
        return sigma.clone()

    def _t_of_ratio(self, ratio):
        return ratio / (1 + ratio)

    def config(self) -> dict:
        return {"name": "RectifiedFlow", "t_min": self.t_min, "t_max": self.t_max}


_PROCESSES = {cls.__name__: cls for cls in (VE, VP, SubVP, CosineVP, EDM, RectifiedFlow)}


def from_config(config: dict) -> Process:
    """Rebuild a process from :meth:`Process.config` (as stored in checkpoints)."""
    name = config.get("name") if isinstance(config, dict) else None
    if not isinstance(name, str) or name not in _PROCESSES:
        raise ValueError(
            f"process config must be a dict with 'name' in {sorted(_PROCESSES)}, got {config!r}"
        )
    kwargs = {k: v for k, v in config.items() if k != "name"}
    try:
        return _PROCESSES[config["name"]](**kwargs)
    except TypeError as e:
        raise ValueError(f"process config {config!r} has unexpected fields: {e}") from None


def ncsn_sigmas(process: VE, levels: int) -> Tensor:
    r"""NCSN's geometric noise levels :math:`\sigma_1 > \dots > \sigma_L`, as the VE process
    on the time grid :math:`t_i = 1 - (i-1)/(L-1)`:
    :math:`\sigma_i = \sigma_{max} (\sigma_{min}/\sigma_{max})^{(i-1)/(L-1)}`.

    References:
        Song & Ermon (2019), Section 4.2.
    """
    if not isinstance(process, Process):
        raise ValueError(f"process must be a Process, got {type(process).__name__}")
    levels = check_int("levels", levels, minimum=2)
    t = torch.linspace(process.t_max, process.t_min, levels, dtype=torch.float64)
    return process.sigma(t)


def ddpm_betas(process: Process, steps: int) -> Tensor:
    r"""DDPM's :math:`\beta_1 \dots \beta_T` as the process on the grid :math:`t_i = i/T`:
    :math:`\bar\alpha_i = \alpha(t_i)^2` and :math:`\beta_i = 1 - \bar\alpha_i / \bar\alpha_{i-1}`.

    For :class:`VP` with (0.1, 20) and T = 1000 this is DDPM's linear schedule
    to within 2.1e-4 absolute (:math:`\beta_i = 1 - e^{-\int_{t_{i-1}}^{t_i}\beta}
    \approx \beta(t_i)/T`, from 1e-4 to 0.02), and
    :math:`\prod_i (1 - \beta_i) = \alpha(1)^2` exactly.

    References:
        Ho et al. (2020); Song et al. (2021), Appendix B.
    """
    if not isinstance(process, Process):
        raise ValueError(f"process must be a Process, got {type(process).__name__}")
    steps = check_int("steps", steps, minimum=1)
    t = torch.linspace(0.0, process.t_max, steps + 1, dtype=torch.float64)
    a2 = process.alpha(t) ** 2
    return 1 - a2[1:] / a2[:-1]


def isotropic_normal_log_prob(x: Tensor, std: float) -> Tensor:
    r""":math:`\log\mathcal N(x; 0, \mathtt{std}^2 I) = -\tfrac{\|x\|^2}{2\,\mathtt{std}^2} -
    \tfrac d2\log(2\pi\,\mathtt{std}^2)`, summed over all but the batch axis: shape ``(B,)``."""
    flat = x.reshape(x.shape[0], -1)
    s2 = std**2
    return -0.5 * (flat**2).sum(1) / s2 - 0.5 * flat.shape[1] * math.log(2 * math.pi * s2)

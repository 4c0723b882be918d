r"""Loss weightings :math:`\lambda(t)` and noise-level samplers for training.

Every weighting here is stated **in score space**: the per-example diffusion loss is

.. math::
    \ell(t) = \lambda(t)\ \tfrac12
        \big\| s_\theta(x_t, t) - \nabla_{x_t} \log p(x_t \mid x_0) \big\|^2,
    \qquad \nabla_{x_t} \log p(x_t \mid x_0) = -\varepsilon / \sigma(t),

so a weighting is a property of the objective and not of what the network predicts.
The residual may be computed in any prediction space; :func:`error_scale` gives the
factor :math:`c` with :math:`\|\text{error}_{target}\|^2 = c\,\|\text{error}_{score}\|^2`.
Familiar objectives in this language (with :math:`\mathrm{SNR} = \alpha^2/\sigma^2`):

* NCSN / score_sde: :math:`\lambda = \sigma^2`, the same as the ε-MSE ("DDPM simple").
* likelihood (Song, Durkan et al.): :math:`\lambda = g(t)^2`, a bound on :math:`-\log p`.
* EDM: :math:`\lambda = \hat\sigma^2\sigma^2\,(\hat\sigma^2+\sigma_d^2)/(\hat\sigma\sigma_d)^2`,
  EDM's weight on the x0-MSE.
* min-SNR-γ: :math:`\lambda = \sigma^2 \min(\mathrm{SNR}, \gamma)/\mathrm{SNR}`, the same in
  its ε, x0 and v forms.

(:math:`\hat\sigma = \sigma/\alpha`.) A weighting is any callable ``w(process, t) -> (B,)``;
the ones here also give :math:`\lambda/c` in a prediction space directly from the
:math:`\alpha, \sigma` a loss has already computed (``relative``), with fewer operations
per training step (:func:`relative_weight`).

A noise-level sampler is a small object with ``sample(process, batch, generator, dtype,
device) -> t`` of shape ``(B,)`` inside the process domain, and (when continuous)
``pdf(process, t)``, the density of ``t``.

References:
    Song & Ermon (2019); Song et al., "Score-Based Generative Modeling through SDEs" (2021);
    Song, Durkan, Murray & Ermon, "Maximum Likelihood Training of Score-Based Diffusion
    Models" (2021); Karras et al. (2022); Hang et al., "Efficient Diffusion Training via
    Min-SNR Weighting Strategy" (2023); Kingma et al., "Variational Diffusion Models" (2021).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._validate import check_choice, check_finite, check_positive, check_tensor
from .parametrize import _velocity_coefficients
from .processes import Process
from .random import rand

__all__ = [
    "Constant",
    "EDMWeighting",
    "FlowMatchingWeighting",
    "GridT",
    "LikelihoodWeighting",
    "LogNormalSigma",
    "LogSNRImportance",
    "LogitNormalT",
    "MinSNRWeighting",
    "SigmaSquared",
    "TimeSampler",
    "UniformT",
    "error_scale",
]


def error_scale(target: str, alpha: Tensor, sigma: Tensor, gamma: Tensor | None = None) -> Tensor:
    r"""Factor :math:`c` with :math:`\|\hat y - y\|^2 = c\,\|\hat s - s\|^2` for a residual in
    prediction space ``target`` at a fixed :math:`x_t = \alpha x_0 + \sigma\varepsilon`:

    .. math::
        c_{score} = 1,\quad c_{eps} = \sigma^2,\quad c_{x0} = \sigma^4/\alpha^2,\quad
        c_v = \sigma^2 (\alpha^2 + \sigma^2)^2 / \alpha^2, \quad
        c_{velocity} = \gamma^2\sigma^2 .

    (From :math:`\hat\varepsilon - \varepsilon = -\sigma(\hat s - s)`,
    :math:`\hat x_0 - x_0 = -(\sigma/\alpha)(\hat\varepsilon - \varepsilon)`,
    :math:`\hat v - v = ((\alpha^2+\sigma^2)/\alpha)(\hat\varepsilon - \varepsilon)` and
    :math:`\hat u - u = \gamma(\hat\varepsilon - \varepsilon)`, :math:`\gamma =
    \sigma' - \sigma\alpha'/\alpha`, :func:`~scorekit.core.parametrize.velocity_coefficients`.)

    Arguments:
        target: ``"score"``, ``"eps"``, ``"x0"``, ``"v"`` or ``"velocity"``.
        alpha, sigma: tensors of shape ``(B,)`` (``alpha`` may be the number 1).
        gamma: :math:`\gamma(t)`, shape ``(B,)``; needed for ``"velocity"`` only.
    """
    check_choice("target", target, ("score", "eps", "x0", "v", "velocity"))
    if target == "velocity":
        if gamma is None:
            raise ValueError(
                "error_scale('velocity', ...) needs gamma = sigma' - sigma alpha'/alpha"
            )
        return (gamma * sigma) ** 2
    if target == "score":
        return torch.ones_like(sigma)
    if target == "eps":
        return sigma**2
    if target == "x0":
        return sigma**4 / alpha**2
    return sigma**2 * (alpha**2 + sigma**2) ** 2 / alpha**2


def relative_weight(weighting, process: Process, t: Tensor, target: str, alpha, sigma):
    r""":math:`\lambda(t)/c_{target}(t)`: the weight of the squared residual in prediction
    space ``target`` (:func:`error_scale`), from the ``alpha``, ``sigma`` of ``t`` already at
    hand; ``None`` means 1. Weightings with a ``relative(target, alpha, sigma)`` method give
    it in closed form; any other callable ``w(process, t)`` is divided by
    :func:`error_scale`."""
    own = getattr(weighting, "relative", None)
    if own is not None:
        rel = own(target, alpha, sigma)
        if rel is not NotImplemented:
            return rel
    gamma = _velocity_coefficients(process, t)[1] if target == "velocity" else None
    return weighting(process, t) / error_scale(target, alpha, sigma, gamma)


# -- weightings (score space) -------------------------------------------------------------
class Constant:
    r""":math:`\lambda(t) = c`: plain DSM on :math:`\tfrac12\|s + \varepsilon/\sigma\|^2`
    (Vincent 2011); ``Constant(1.0)``."""

    def __init__(self, value: float = 1.0):
        self.value = check_positive("value", value)

    def __call__(self, process: Process, t: Tensor) -> Tensor:
        return torch.full_like(t, self.value)

    def __repr__(self) -> str:
        return f"Constant({self.value!r})"


class SigmaSquared:
    r""":math:`\lambda(t) = \sigma(t)^2` (Song & Ermon 2019; score_sde's default): equals the
    ε-MSE :math:`\tfrac12\|\hat\varepsilon - \varepsilon\|^2`, i.e. DDPM's "simple" loss."""

    def __call__(self, process: Process, t: Tensor) -> Tensor:
        return process.sigma(t) ** 2

    def relative(self, target: str, alpha, sigma):
        r"""``None`` (1) for the eps residual, :math:`\sigma^2/c` otherwise."""
        return None if target == "eps" else sigma**2 / error_scale(target, alpha, sigma)

    def __repr__(self) -> str:
        return "SigmaSquared()"


class LikelihoodWeighting:
    r""":math:`\lambda(t) = g(t)^2`: then :math:`\int_0^T \lambda(t)\, E\,\tfrac12\|\hat s -
    \nabla\log p_t\|^2 dt` bounds :math:`-\log p_\theta(x_0)` up to terms free of
    :math:`\theta` (Song, Durkan, Murray & Ermon 2021, Theorem 1)."""

    def __call__(self, process: Process, t: Tensor) -> Tensor:
        return process.g2(t)

    def __repr__(self) -> str:
        return "LikelihoodWeighting()"


class EDMWeighting:
    r"""Karras et al. (2022) weight :math:`w(\hat\sigma) = (\hat\sigma^2 + \sigma_d^2) /
    (\hat\sigma\sigma_d)^2` on the denoiser error :math:`\|D - x_0\|^2`, expressed in score
    space: :math:`\lambda = w(\hat\sigma)\,\hat\sigma^2\sigma^2` with :math:`\hat\sigma =
    \sigma/\alpha` (for :class:`~scorekit.core.processes.EDM`, :math:`\hat\sigma = \sigma = t`)."""

    def __init__(self, sigma_data: float = 0.5):
        self.sigma_data = check_positive("sigma_data", sigma_data)

    def __call__(self, process: Process, t: Tensor) -> Tensor:
        alpha, sigma = process.marginal(t)
        sh2 = (sigma / alpha) ** 2
        d2 = self.sigma_data**2
        return (sh2 + d2) / d2 * sigma**2

    def relative(self, target: str, alpha, sigma):
        r"""For the x0 residual, EDM's own :math:`w(\hat\sigma) = 1/\sigma_d^2 +
        1/\hat\sigma^2`; :math:`\lambda/c` otherwise."""
        sh2 = sigma.square() if isinstance(alpha, float) and alpha == 1.0 else (sigma / alpha) ** 2
        d2 = self.sigma_data**2
        if target == "x0":
            return sh2.reciprocal_().add_(1.0 / d2)
        return (sh2 + d2) / d2 * sigma**2 / error_scale(target, alpha, sigma)

    def __repr__(self) -> str:
        return f"EDMWeighting(sigma_data={self.sigma_data!r})"


class MinSNRWeighting:
    r"""Min-SNR-γ (Hang et al. 2023): weight :math:`\min(\mathrm{SNR}, \gamma)/\mathrm{SNR}` on
    the ε-MSE, i.e. :math:`\lambda = \sigma^2 \min(\mathrm{SNR},\gamma)/\mathrm{SNR}`. The
    paper's x0 form (:math:`\min(\mathrm{SNR},\gamma)`) and, for VP, its v form
    (:math:`\min(\mathrm{SNR},\gamma)/(\mathrm{SNR}+1)`) are this same objective."""

    def __init__(self, gamma: float = 5.0):
        self.gamma = check_positive("gamma", gamma)

    def __call__(self, process: Process, t: Tensor) -> Tensor:
        alpha, sigma = process.marginal(t)
        snr = (alpha / sigma) ** 2
        return sigma**2 * torch.clamp(snr, max=self.gamma) / snr

    def __repr__(self) -> str:
        return f"MinSNRWeighting(gamma={self.gamma!r})"


class FlowMatchingWeighting:
    r"""The conditional flow-matching loss :math:`\tfrac12\|\hat u - u\|^2` (Lipman et al.
    2023; Liu et al. 2023) as a score-space weighting: with :math:`\hat u - u =
    \gamma(\hat\varepsilon - \varepsilon) = -\gamma\sigma(\hat s - s)`,

    .. math:: \lambda(t) = \gamma^2\sigma^2 = g(t)^4/4, \qquad
              \lambda/c_{eps} = \gamma^2,

    a weighted ε-loss (Kingma & Gao 2023); for :class:`~scorekit.RectifiedFlow`
    :math:`\lambda/c_{eps} = 1/(1 - t)^2`. Its weight on the velocity residual is 1.
    """

    def __call__(self, process: Process, t: Tensor) -> Tensor:
        return process.g2(t) ** 2 / 4

    def relative(self, target: str, alpha, sigma):
        """``None`` (weight 1) on the velocity residual; other targets go through
        :func:`error_scale`."""
        return None if target == "velocity" else NotImplemented

    def __repr__(self) -> str:
        return "FlowMatchingWeighting()"


# -- noise-level samplers -----------------------------------------------------------------
def _per_process(owner, process: Process, compute):
    """``compute()`` for ``process``, cached on ``owner`` for the last process seen: a
    sampler's constants are read from the process once, not at every training step."""
    cached = getattr(owner, "_cache", None)
    if cached is None or cached[0] is not process:
        owner._cache = (process, compute())
    return owner._cache[1]


def _bounds(process: Process, low: float | None, high: float | None) -> tuple[float, float]:
    lo = process.t_min if low is None else low
    hi = process.t_max if high is None else high
    if not 0 <= lo < hi <= process.T:
        raise ValueError(
            f"low and high must satisfy 0 <= low < high <= T = {process.T:g} for {process!r}, "
            f"got low={lo!r}, high={hi!r}"
        )
    return float(lo), float(hi)


class TimeSampler:
    r"""A law of ``t`` on ``[low, high]`` (default the process's ``[t_min, t_max]``) drawn by
    its inverse CDF: :math:`u \sim \mathcal U[0, 1)` in float64, :math:`t = F^{-1}(u)`,
    clamped to the support against round-off. Subclasses give :meth:`inverse` (and
    :meth:`pdf`)."""

    def __init__(self, low: float | None = None, high: float | None = None):
        self.low, self.high = low, high

    def bounds(self, process: Process) -> tuple[float, float]:
        """The support ``(low, high)`` for ``process``."""
        return _bounds(process, self.low, self.high)

    def inverse(self, process: Process, u: Tensor) -> Tensor:
        r""":math:`F^{-1}(u)` for ``u`` in :math:`[0, 1)`, float64."""
        raise NotImplementedError

    def sample(
        self,
        process: Process,
        batch: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device=None,
    ) -> Tensor:
        """Draw ``batch`` times, shape ``(B,)``, in ``dtype``."""
        lo, hi = self.bounds(process)
        u = rand((batch,), generator, torch.float64, device)
        return self.inverse(process, u).clamp_(lo, hi).to(dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(low={self.low!r}, high={self.high!r})"


class UniformT(TimeSampler):
    r""":math:`t \sim \mathcal{U}[\text{low}, \text{high}]`; the defaults are the process's
    ``t_min`` and ``t_max`` (score_sde samples :math:`t \sim \mathcal{U}[\epsilon, T]`)."""

    def inverse(self, process: Process, u: Tensor) -> Tensor:
        r""":math:`t = \text{low} + (\text{high} - \text{low})\,u`."""
        lo, hi = self.bounds(process)
        return u.mul_(hi - lo).add_(lo)

    def pdf(self, process: Process, t: Tensor) -> Tensor:
        """Density of ``t``, same shape as ``t``."""
        lo, hi = self.bounds(process)
        inside = (t >= lo) & (t <= hi)
        return torch.where(inside, 1.0 / (hi - lo), 0.0).to(t.dtype)


class LogSNRImportance(TimeSampler):
    r"""Importance distribution for the likelihood weighting (Song, Durkan, Murray & Ermon
    2021, Section 5): :math:`q(t) \propto g(t)^2/\sigma(t)^2 = -d\lambda/dt` on
    [low, high], with :math:`\lambda` the log-SNR; so :math:`\lambda(t)` is uniform between
    :math:`\lambda(\text{high})` and :math:`\lambda(\text{low})` and ``t`` follows by
    :meth:`~scorekit.core.processes.Process.t_of_log_snr`.

    Then :math:`g^2\,\|\hat s - s\|^2 / q(t) = Z\,\|\hat\varepsilon - \varepsilon\|^2` with
    :math:`Z = \lambda(\text{low}) - \lambda(\text{high})`: the variance from :math:`g^2`
    blowing up is gone.
    """

    def bounds(self, process: Process) -> tuple[float, float]:
        """The support ``(low, high)`` for ``process``."""
        return self._support(process)[:2]

    def _support(self, process: Process) -> tuple[float, float, float, float]:
        """``(low, high, lambda(low), lambda(high))``, read once per process."""

        def compute():
            lo, hi = _bounds(process, self.low, self.high)
            lam_lo, lam_hi = process.log_snr(torch.tensor([lo, hi], dtype=torch.float64)).tolist()
            if not (math.isfinite(lam_lo) and math.isfinite(lam_hi)):
                raise ValueError(
                    f"the log-SNR must be finite on [low, high] = [{lo:g}, {hi:g}] for "
                    f"{process!r}; got [{lam_hi:g}, {lam_lo:g}] (narrow low/high)"
                )
            return lo, hi, lam_lo, lam_hi

        return _per_process(self, process, compute)

    def inverse(self, process: Process, u: Tensor) -> Tensor:
        r""":math:`t = \lambda^{-1}(\lambda(\text{low}) + (\lambda(\text{high}) -
        \lambda(\text{low}))\,u)`."""
        lo, hi, lam_lo, lam_hi = self._support(process)
        return process.t_of_log_snr(lam_lo + (lam_hi - lam_lo) * u)

    def pdf(self, process: Process, t: Tensor) -> Tensor:
        """Density :math:`q(t)`, same shape as ``t``."""
        lo, hi, lam_lo, lam_hi = self._support(process)
        alpha, sigma = process.marginal(t)
        dens = process.g2(t) / sigma**2 / (lam_lo - lam_hi)
        return torch.where((t >= lo) & (t <= hi), dens, torch.zeros_like(dens))


class _NormalImage(TimeSampler):
    r"""A law of ``t`` whose image :math:`y = h(t)` under an increasing map :math:`h` is
    :math:`\mathcal N(\mu, s^2)` truncated to :math:`[h(\text{low}), h(\text{high})]`, drawn
    exactly by the inverse CDF. Subclasses give :math:`(\mu, s)` (:meth:`_normal`),
    :math:`h` at the ends (:meth:`_ends`), :math:`h^{-1}` (:meth:`_from_image`) and
    :math:`h` with :math:`|dh/dt|` (:meth:`_image`)."""

    def _normal(self) -> tuple[float, float]:
        raise NotImplementedError

    def _ends(self, process: Process, lo: float, hi: float) -> list[float]:
        raise NotImplementedError

    def _from_image(self, process: Process, y: Tensor) -> Tensor:
        raise NotImplementedError

    def _image(self, process: Process, t: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _cdf_range(self, process: Process) -> tuple[float, float, float, float]:
        """``(low, high, Phi(z_low), Phi(z_high))``, read once per process."""

        def compute():
            lo, hi = self.bounds(process)
            mu, s = self._normal()
            z = [(v - mu) / s for v in self._ends(process, lo, hi)]
            phi = [0.5 * math.erfc(-v / math.sqrt(2)) for v in z]
            return lo, hi, phi[0], phi[1]

        return _per_process(self, process, compute)

    def inverse(self, process: Process, u: Tensor) -> Tensor:
        r""":math:`t = h^{-1}(\mu + s\,\Phi^{-1}(\Phi_{lo} + (\Phi_{hi} - \Phi_{lo})\,u))`."""
        lo, hi, c_lo, c_hi = self._cdf_range(process)
        mu, s = self._normal()
        z = torch.special.ndtri(u.mul_(c_hi - c_lo).add_(c_lo))
        return self._from_image(process, z.mul_(s).add_(mu))

    def pdf(self, process: Process, t: Tensor) -> Tensor:
        r"""Density of ``t``: the truncated normal density of :math:`h(t)` times
        :math:`|dh/dt|`, zero outside ``[low, high]``."""
        lo, hi, c_lo, c_hi = self._cdf_range(process)
        mu, s = self._normal()
        y, jac = self._image(process, t)
        z = (y - mu) / s
        dens = torch.exp(-0.5 * z**2) / (s * math.sqrt(2 * math.pi) * (c_hi - c_lo)) * jac
        return torch.where((t >= lo) & (t <= hi), dens, torch.zeros_like(dens))


class LogNormalSigma(_NormalImage):
    r"""EDM's training noise levels (Karras et al. 2022, Table 1):
    :math:`\ln\hat\sigma \sim \mathcal{N}(P_{mean}, P_{std}^2)` with
    :math:`\hat\sigma = \sigma/\alpha` (:math:`= t` for :class:`~scorekit.core.processes.EDM`),
    truncated to :math:`[\hat\sigma(\text{low}), \hat\sigma(\text{high})]` so that ``t`` stays
    in the process domain; drawn exactly by the inverse CDF and mapped to ``t`` by
    :meth:`~scorekit.core.processes.Process.t_of_ratio`. The truncation removes
    :math:`<2\cdot10^{-5}` of the mass for the defaults on ``EDM(0.002, 80)``. The density
    carries :math:`|d\ln\hat\sigma/dt| = g^2/(2\sigma^2)`.
    """

    def __init__(
        self,
        p_mean: float = -1.2,
        p_std: float = 1.2,
        low: float | None = None,
        high: float | None = None,
    ):
        super().__init__(low, high)
        self.p_mean = float(p_mean)
        if not math.isfinite(self.p_mean):
            raise ValueError(f"p_mean must be finite, got {p_mean!r}")
        self.p_std = check_positive("p_std", p_std)

    def _normal(self) -> tuple[float, float]:
        return self.p_mean, self.p_std

    def _ends(self, process: Process, lo: float, hi: float) -> list[float]:
        lams = process.log_snr(torch.tensor([lo, hi], dtype=torch.float64)).tolist()
        return [-0.5 * lam for lam in lams]  # ln(sigma/alpha)

    def _from_image(self, process: Process, y: Tensor) -> Tensor:
        return process._t_of_ratio(y.exp_())

    def _image(self, process: Process, t: Tensor) -> tuple[Tensor, Tensor]:
        alpha, sigma = process.marginal(t)
        return torch.log(sigma / alpha), process.g2(t) / (2 * sigma**2)

    def __repr__(self) -> str:
        return f"LogNormalSigma(p_mean={self.p_mean!r}, p_std={self.p_std!r})"


class LogitNormalT(_NormalImage):
    r"""The logit-normal law of ``t`` (Esser et al. 2024, "Scaling Rectified Flow
    Transformers", eq. (19)): :math:`\operatorname{logit}(t/T) \sim \mathcal N(m, s^2)`, which
    puts more training on the middle of the path than :class:`UniformT`; truncated to
    ``[low, high]`` (default ``[t_min, t_max]``) and drawn exactly by the inverse CDF. The
    density carries :math:`|d\operatorname{logit}(t/T)/dt| = 1/(T\,r(1 - r))`, :math:`r = t/T`.

    Arguments:
        mean, std: :math:`m` and :math:`s > 0` (Esser et al.: 0 and 1).
        low, high: the support (default the process's).
    """

    def __init__(
        self,
        mean: float = 0.0,
        std: float = 1.0,
        low: float | None = None,
        high: float | None = None,
    ):
        super().__init__(low, high)
        self.mean = float(mean)
        if not math.isfinite(self.mean):
            raise ValueError(f"mean must be finite, got {mean!r}")
        self.std = check_positive("std", std)

    def _normal(self) -> tuple[float, float]:
        return self.mean, self.std

    def _ends(self, process: Process, lo: float, hi: float) -> list[float]:
        T = float(process.T)
        return [
            math.log(v / (T - v)) if 0 < v < T else math.copysign(math.inf, v - T / 2)
            for v in (lo, hi)
        ]

    def _from_image(self, process: Process, y: Tensor) -> Tensor:
        return torch.sigmoid(y).mul_(float(process.T))

    def _image(self, process: Process, t: Tensor) -> tuple[Tensor, Tensor]:
        T = float(process.T)
        r = (t / T).clamp(1e-300, 1 - 1e-16)
        return torch.log(r / (1 - r)), 1 / (T * r * (1 - r))

    def __repr__(self) -> str:
        return f"LogitNormalT(mean={self.mean!r}, std={self.std!r})"


class GridT(TimeSampler):
    r"""``t`` uniform on a finite grid: NCSN's noise levels (Song & Ermon 2019, labels drawn
    uniformly from :math:`\{1..L\}`) or DDPM's :math:`t \in \{1..N\}` (Ho et al. 2020); by
    the inverse CDF, :math:`t = t_{\lfloor K u \rfloor}` for :math:`K` times.

    Arguments:
        times: 1-D tensor of times inside the process domain (checked once per process,
            when sampling first).
    """

    def __init__(self, times: Tensor):
        times = check_tensor("times", torch.as_tensor(times, dtype=torch.float64), min_dim=1)
        if times.dim() != 1 or times.numel() < 1:
            raise ValueError(f"times must be a non-empty 1-D tensor, got {tuple(times.shape)}")
        self.times = check_finite("times", times)
        self._placed = self.times
        super().__init__(float(times.min()), float(times.max()))

    def bounds(self, process: Process) -> tuple[float, float]:
        """The smallest and largest time, checked against the process (once)."""
        _per_process(self, process, lambda: process.check_t(self.times, "times"))
        return self.low, self.high

    def inverse(self, process: Process, u: Tensor) -> Tensor:
        r""":math:`t_{\lfloor K u \rfloor}`."""
        times = self._on(u.device)
        return times[(u * len(times)).long().clamp_(max=len(times) - 1)]

    def _on(self, device) -> Tensor:
        """The times on ``device``, copied there once."""
        if self._placed.device != device:
            self._placed = self.times.to(device)
        return self._placed

    def __repr__(self) -> str:
        return f"GridT({len(self.times)} times in [{self.low:g}, {self.high:g}])"

r"""Models from elsewhere as scorekit models: k-diffusion denoisers and diffusers U-Nets.

A k-diffusion denoiser :math:`D(\tilde x, \tilde\sigma)` predicts :math:`x_0` from
:math:`\tilde x = x_0 + \tilde\sigma\varepsilon`. Any scorekit process is that form after
rescaling, :math:`x_t/\alpha = x_0 + (\sigma/\alpha)\varepsilon`, so

.. math:: \hat x_0(x_t, t) = D\big(x_t/\alpha(t),\ \sigma(t)/\alpha(t)\big)

(:func:`from_denoiser`; Karras et al. 2022, eq. 4).

A diffusers ``UNet2DModel`` is trained on a discrete schedule :math:`\bar\alpha_0, \dots,
\bar\alpha_{N-1}` with :math:`x_\tau = \sqrt{\bar\alpha_\tau}\,x_0 + \sqrt{1 -
\bar\alpha_\tau}\,\varepsilon`. :class:`DiscreteVP` is that schedule as a continuous
process: training timestep :math:`\tau` sits at :math:`t = (\tau + 1)/N` (the convention of
:func:`~scorekit.core.schedules.ddpm_time_grid`), :math:`\bar\alpha(0) = 1`, and
:math:`\log\bar\alpha(t)` is linear between these knots. :func:`from_diffusers_unet`
evaluates the U-Net at the fractional timestep :math:`\tau = tN - 1` (clamped to
:math:`[0, N-1]`; ``timestep="nearest"`` rounds it instead), so on the grid of
:func:`diffusers_grid` scorekit's DDIM reproduces diffusers' ``DDIMScheduler``.

References:
    Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models",
    NeurIPS 2022 (k-diffusion's ``D(x, sigma)`` convention). Ho et al. (2020); Song et al.,
    "Denoising Diffusion Implicit Models", ICLR 2021; Salimans & Ho (2022) for v.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ._validate import check_choice, check_finite
from .core.parametrize import ScoreModel
from .core.processes import Process, VarianceAlpha, broadcast_like

__all__ = ["DiscreteVP", "diffusers_grid", "from_denoiser", "from_diffusers_unet"]


class DiscreteVP(VarianceAlpha, Process):
    r"""A discrete variance-preserving schedule :math:`\bar\alpha_0 > \dots > \bar\alpha_{N-1}`
    as a continuous process on :math:`[0, 1]`:

    .. math:: \log\bar\alpha(t) \text{ linear on } [\tfrac{i}{N}, \tfrac{i+1}{N}],\quad
              \bar\alpha(0) = 1,\ \bar\alpha(\tfrac{\tau+1}{N}) = \bar\alpha_\tau,\qquad
              \alpha = \sqrt{\bar\alpha},\ \sigma = \sqrt{1 - \bar\alpha}.

    So :math:`g(t)^2 = -\tfrac{d}{dt}\log\bar\alpha = N \log(\bar\alpha_{i-1}/\bar\alpha_i)
    \approx N\beta_i` is piecewise constant. ``t_min = 1/N`` (timestep 0), ``t_max = 1``.

    Arguments:
        alphas_cumprod: :math:`\bar\alpha`, shape ``(N,)``, strictly decreasing in ``(0, 1)``.
    """

    def __init__(self, alphas_cumprod):
        a = torch.as_tensor(alphas_cumprod, dtype=torch.float64).detach().cpu()
        check_finite("alphas_cumprod", a)
        if a.dim() != 1 or a.numel() < 2:
            raise ValueError(f"alphas_cumprod must have shape (N,), N >= 2, got {tuple(a.shape)}")
        if (a <= 0).any() or (a >= 1).any() or (a[1:] >= a[:-1]).any():
            raise ValueError("alphas_cumprod must be strictly decreasing values in (0, 1)")
        self.alphas_cumprod = a
        self.N = a.numel()
        self._L = torch.cat([a.new_zeros(1), torch.log(a)])  # log alpha-bar at t = i / N
        self._L_on = self._L
        self.t_min = 1.0 / self.N
        self.t_max = 1.0

    def _knots(self, like: Tensor) -> Tensor:
        """``log alpha-bar`` at the knots, on ``like``'s device and dtype (copied once)."""
        if self._L_on.device != like.device or self._L_on.dtype != like.dtype:
            self._L_on = self._L.to(like.device, like.dtype)
        return self._L_on

    def _segment(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        L = self._knots(t)
        u = t * self.N
        i = torch.clamp(torch.floor(u), 0, self.N - 1).long()
        slope = L[i + 1] - L[i]
        return L[i] + (u - i) * slope, slope * self.N, L

    def _alpha(self, t):
        return torch.exp(0.5 * self._segment(t)[0])

    def _sigma(self, t):
        return torch.sqrt(-torch.expm1(self._segment(t)[0]))

    def _d_alpha(self, t):
        L, dL, _ = self._segment(t)
        return 0.5 * torch.exp(0.5 * L) * dL

    def _d_sigma(self, t):
        L, dL, _ = self._segment(t)
        return -torch.exp(L) * dL / (2 * torch.sqrt(-torch.expm1(L)))

    def _g2(self, t):
        return -self._segment(t)[1]

    def _t_of_log_alpha2(self, log_alpha2):
        # log alpha-bar is piecewise linear and decreasing in t: find the segment, interpolate
        L = self._knots(log_alpha2)
        flat = -log_alpha2.reshape(-1).contiguous()
        i = torch.searchsorted(-L, flat).reshape(log_alpha2.shape)
        i = torch.clamp(i - 1, 0, self.N - 1)
        frac = (log_alpha2 - L[i]) / (L[i + 1] - L[i])
        return (i + frac) / self.N

    def timestep(self, t: Tensor) -> Tensor:
        r"""The fractional training timestep :math:`\tau = tN - 1`, clamped to
        :math:`[0, N - 1]`; values within :math:`10^{-3}` of an integer are snapped to it
        (so round-off in ``t`` never moves a grid point off its timestep)."""
        tau = torch.clamp(t * self.N - 1, 0, self.N - 1)
        r = torch.round(tau)
        return torch.where((tau - r).abs() < 1e-3, r, tau)

    def config(self) -> dict:
        return {"name": "DiscreteVP", "alphas_cumprod": self.alphas_cumprod.tolist()}

    def __repr__(self) -> str:
        return f"DiscreteVP(N={self.N})"


class _Denoiser(nn.Module):
    def __init__(self, denoiser: Callable, process: Process):
        super().__init__()
        self.denoiser = denoiser
        self.process = process

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = self.process.marginal(t)
        alpha, sigma = alpha.to(x), sigma.to(x)
        return self.denoiser(x / broadcast_like(alpha, x), sigma / alpha)


def from_denoiser(denoiser: Callable[[Tensor, Tensor], Tensor], process: Process) -> ScoreModel:
    r"""A k-diffusion-style denoiser :math:`D(\tilde x, \tilde\sigma) \approx
    E[x_0 \mid x_0 + \tilde\sigma\varepsilon = \tilde x]` as a scorekit model on ``process``:
    :math:`\hat x_0(x, t) = D(x/\alpha, \sigma/\alpha)`, so
    :math:`s = (\alpha\hat x_0 - x)/\sigma^2`.

    Arguments:
        denoiser: ``D(x, sigma)`` with ``x`` of shape ``(B, *D)`` and ``sigma`` of shape
            ``(B,)``; returns ``(B, *D)``.
        process: any :class:`~scorekit.core.processes.Process` (VE and EDM have :math:`\alpha = 1`;
            VP-type processes are rescaled).

    Returns:
        A :class:`~scorekit.core.parametrize.ScoreModel` with ``prediction="x0"``.

    Example:
        >>> import torch, scorekit as sk
        >>> target = sk.Gaussian(torch.zeros(2), std=1.0)
        >>> D = lambda x, s: x / (1 + s[:, None] ** 2)  # E[x0 | x] for N(0, I)
        >>> m = from_denoiser(D, sk.EDM())
        >>> x = torch.randn(3, 2, dtype=torch.float64)
        >>> torch.allclose(m(x, 2.0), sk.ExactScore(target, sk.EDM())(x, 2.0))
        True
    """
    if not callable(denoiser):
        raise ValueError(f"denoiser must be callable D(x, sigma), got {type(denoiser).__name__}")
    if not isinstance(process, Process):
        raise ValueError(f"process must be a scorekit Process, got {type(process).__name__}")
    return ScoreModel(_Denoiser(denoiser, process), process, prediction="x0")


_DIFFUSERS_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


class _DiffusersNet(nn.Module):
    def __init__(self, unet: nn.Module, process: DiscreteVP, nearest: bool):
        super().__init__()
        self.unet = unet
        self.process = process
        self.nearest = nearest
        size = getattr(getattr(unet, "config", None), "sample_size", None)
        chans = getattr(getattr(unet, "config", None), "in_channels", None)
        if isinstance(size, int) and isinstance(chans, int):
            self.data_shape = (chans, size, size)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        tau = self.process.timestep(t.to(torch.float64))
        if self.nearest:
            tau = torch.round(tau)
        out = self.unet(x, tau.to(x.dtype)).sample
        if out.shape[1] == 2 * x.shape[1]:  # learned variance: keep the mean prediction
            out = out[:, : x.shape[1]]
        return out


def from_diffusers_unet(unet: nn.Module, scheduler, timestep: str = "interpolate") -> ScoreModel:
    r"""A diffusers ``UNet2DModel`` (or any module called as ``unet(x, timesteps).sample``)
    trained with ``scheduler``'s discrete schedule, as a scorekit model on
    :class:`DiscreteVP`.

    Arguments:
        unet: the network; called with ``x`` of shape ``(B, C, H, W)`` and float timesteps
            of shape ``(B,)``. An output with twice the input channels (learned variance) is
            cut to its first half.
        scheduler: a diffusers scheduler with ``alphas_cumprod`` and
            ``config.prediction_type`` in ``{"epsilon", "v_prediction", "sample"}``.
        timestep: how continuous time maps to the U-Net's timestep:
            ``"interpolate"`` passes the fractional :math:`\tau = tN - 1` (the sinusoidal
            embedding is smooth in :math:`\tau`; at grid points it is the integer timestep),
            ``"nearest"`` rounds it to the nearest training timestep.

    Returns:
        A :class:`~scorekit.core.parametrize.ScoreModel` predicting eps, v or x0, whose
        ``process`` is the scheduler's :class:`DiscreteVP`.
    """
    check_choice("timestep", timestep, ("interpolate", "nearest"))
    if not callable(unet):
        raise ValueError(f"unet must be callable, got {type(unet).__name__}")
    ac = getattr(scheduler, "alphas_cumprod", None)
    kind = getattr(getattr(scheduler, "config", None), "prediction_type", None)
    if ac is None or kind is None:
        raise ValueError(
            f"scheduler must have alphas_cumprod and config.prediction_type, got "
            f"{type(scheduler).__name__}"
        )
    check_choice("scheduler.config.prediction_type", kind, tuple(_DIFFUSERS_PREDICTIONS))
    process = DiscreteVP(ac)
    net = _DiffusersNet(unet, process, timestep == "nearest")
    return ScoreModel(net, process, prediction=_DIFFUSERS_PREDICTIONS[kind])


def diffusers_grid(scheduler, process: DiscreteVP | None = None) -> Tensor:
    r"""The process times of ``scheduler.timesteps`` (after ``set_timesteps``), for
    scorekit's samplers: :math:`t = (\tau + 1)/N`, followed by :math:`t = 0`
    (:math:`\bar\alpha = 1`, diffusers' ``set_alpha_to_one=True``, its DDIM default, and
    what DDPM does). Diffusers' DDIM steps from timestep
    :math:`\tau` to :math:`\tau - N/n`, the next timestep under "leading" spacing, so there
    the two samplers visit the same noise levels.

    Returns:
        float64 tensor of shape ``(n + 1,)``, strictly decreasing.
    """
    ts = getattr(scheduler, "timesteps", None)
    if ts is None or len(ts) == 0:
        raise ValueError("scheduler has no timesteps: call scheduler.set_timesteps(n) first")
    n_train = len(scheduler.alphas_cumprod) if process is None else process.N
    t = (torch.as_tensor(ts, dtype=torch.float64).cpu() + 1) / n_train
    if not getattr(scheduler.config, "set_alpha_to_one", True):
        raise ValueError(
            "diffusers_grid needs scheduler.config.set_alpha_to_one=True (a final step to "
            "alpha-bar_0 would repeat the last timestep's noise level), got False"
        )
    return torch.cat([t, t.new_zeros(1)])

r"""Sampling grids: where along the process a sampler evaluates the model.

Every grid here is a float64 tensor of *process times* :math:`t_0 > t_1 > \dots > t_N`
(decreasing, ``N + 1`` points for ``N`` steps), so one grid serves every sampler and
every :class:`~scorekit.core.processes.Process`. Grids defined on the noise level are built on
the scale-free noise level :math:`\tilde\sigma(t) = \sigma(t)/\alpha(t)` (the
:math:`\sigma` of Karras et al.; equal to :math:`\sigma` when :math:`\alpha = 1`) and
mapped back to times with :meth:`~scorekit.core.processes.Process.t_of_ratio`.

References:
    Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models",
    NeurIPS 2022, eq. (5). Song & Ermon (2019) for the geometric levels. Lin et al.,
    "Common Diffusion Noise Schedules and Sample Steps are Flawed", WACV 2024, Table 2
    for the "leading" / "trailing" / "linspace" timestep spacings.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._validate import check_choice, check_int, check_positive, check_process
from .processes import Process

__all__ = [
    "GRIDS",
    "SPACINGS",
    "check_grid",
    "ddpm_time_grid",
    "ddpm_timesteps",
    "geometric_sigmas",
    "karras_sigmas",
    "time_grid",
]

GRIDS = ("karras", "geometric", "uniform")
SPACINGS = ("leading", "trailing", "linspace")


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    r"""Karras et al.'s :math:`\rho`-schedule, ``steps + 1`` noise levels from ``sigma_max``
    down to ``sigma_min``:

    .. math:: \sigma_i = \Big(\sigma_{max}^{1/\rho} + \tfrac{i}{N}
              (\sigma_{min}^{1/\rho} - \sigma_{max}^{1/\rho})\Big)^{\rho},\quad i = 0..N.

    ``rho = 7`` is EDM's choice; :math:`\rho \to \infty` tends to :func:`geometric_sigmas`.

    Returns:
        float64 tensor of shape ``(steps + 1,)``, decreasing.

    References:
        Karras et al. (2022), eq. (5).
    """
    steps = check_int("steps", steps, minimum=1)
    lo, hi = _check_range(sigma_min, sigma_max)
    rho = check_positive("rho", rho)
    ramp = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    inv = 1.0 / rho
    out = (hi**inv + ramp * (lo**inv - hi**inv)) ** rho
    out[0], out[-1] = hi, lo  # exact ends, free of round-off
    return out


def geometric_sigmas(steps: int, sigma_min: float, sigma_max: float) -> Tensor:
    r"""Log-linear noise levels :math:`\sigma_i = \sigma_{max}(\sigma_{min}/\sigma_{max})^{i/N}`,
    ``i = 0..N`` (NCSN's levels), float64 of shape ``(steps + 1,)``, decreasing.

    References:
        Song & Ermon (2019), Section 4.2.
    """
    steps = check_int("steps", steps, minimum=1)
    lo, hi = _check_range(sigma_min, sigma_max)
    ramp = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    out = torch.exp(math.log(hi) + ramp * (math.log(lo) - math.log(hi)))
    out[0], out[-1] = hi, lo
    return out


def _check_range(lo: float, hi: float) -> tuple[float, float]:
    lo = check_positive("sigma_min", lo)
    hi = check_positive("sigma_max", hi)
    if lo >= hi:
        raise ValueError(f"sigma_min must be < sigma_max, got sigma_min={lo}, sigma_max={hi}")
    return lo, hi


def time_grid(
    process: Process,
    steps: int,
    kind: str = "karras",
    *,
    rho: float = 7.0,
    t_max: float | None = None,
    t_min: float | None = None,
    final_zero: bool = False,
) -> Tensor:
    r"""A decreasing grid of ``steps + 1`` process times from ``t_max`` to ``t_min``.

    Arguments:
        process: the noise process.
        steps: number of intervals ``N >= 1``.
        kind: ``"karras"`` (:func:`karras_sigmas` on :math:`\tilde\sigma`), ``"geometric"``
            (log-linear :math:`\tilde\sigma`, i.e. uniform in log-SNR as in DPM-Solver) or
            ``"uniform"`` (uniform in t, Song et al. 2021).
        rho: Karras' :math:`\rho`.
        t_max, t_min: ends (default ``process.t_max``, ``process.t_min``).
        final_zero: append ``t = 0`` after ``t_min`` (then ``N`` counts the intervals down
            to ``t_min``; the last interval ends where :math:`\sigma(0) = 0` for VP, sub-VP,
            cosine and EDM, so solvers finish with a denoising step :math:`D(x, \sigma_N)`).

    Returns:
        float64 tensor of shape ``(steps + 1,)`` (``steps + 2`` with ``final_zero``).

    Example:
        >>> from scorekit.core.processes import EDM
        >>> time_grid(EDM(0.002, 80.0), 3, "karras").tolist()[0]
        80.0
    """
    check_choice("kind", kind, GRIDS)
    check_process("process", process)
    steps = check_int("steps", steps, minimum=1)
    hi_t = process.t_max if t_max is None else float(t_max)
    lo_t = process.t_min if t_min is None else float(t_min)
    process.check_t(torch.tensor([lo_t, hi_t], dtype=torch.float64), "t_min/t_max")
    if not lo_t < hi_t:
        raise ValueError(f"t_min must be < t_max, got t_min={lo_t}, t_max={hi_t}")
    if kind == "uniform":
        t = torch.linspace(hi_t, lo_t, steps + 1, dtype=torch.float64)
    else:
        s_lo, s_hi = process.ratio(torch.tensor([lo_t, hi_t], dtype=torch.float64)).tolist()
        if s_lo <= 0:
            raise ValueError(
                f"grid kind {kind!r} needs sigma(t_min) > 0, got t_min={lo_t} with sigma = 0"
            )
        if kind == "karras":
            sig = karras_sigmas(steps, s_lo, s_hi, rho)
        else:
            sig = geometric_sigmas(steps, s_lo, s_hi)
        t = process.t_of_ratio(sig)
        t[0], t[-1] = hi_t, lo_t  # exact ends, free of round-off
    if final_zero:
        if lo_t <= 0:
            raise ValueError(f"final_zero needs t_min > 0, got t_min={lo_t}")
        t = torch.cat([t, t.new_zeros(1)])
    return t


def ddpm_timesteps(num_train_steps: int, steps: int, spacing: str = "leading") -> Tensor:
    r"""DDPM/DDIM's integer timesteps, decreasing, shape ``(steps,)``, in
    :math:`\{0, \dots, T_{train} - 1\}`:

    - ``"leading"``: :math:`k \lfloor T/N \rfloor`, :math:`k = 0..N-1` (DDIM, Stable Diffusion);
    - ``"trailing"``: :math:`\operatorname{round}(T - kT/N) - 1` (starts at :math:`T - 1`);
    - ``"linspace"``: :math:`\operatorname{round}(\operatorname{linspace}(0, T-1, N))`.

    References:
        Song et al., "Denoising Diffusion Implicit Models", ICLR 2021; Lin et al. (2024).
    """
    n_train = check_int("num_train_steps", num_train_steps, minimum=1)
    steps = check_int("steps", steps, minimum=1)
    check_choice("spacing", spacing, SPACINGS)
    if steps > n_train:
        raise ValueError(f"steps must be <= num_train_steps = {n_train}, got {steps}")
    if spacing == "leading":
        ts = torch.arange(steps, dtype=torch.float64) * (n_train // steps)
    elif spacing == "trailing":
        ts = torch.round(n_train - torch.arange(steps, dtype=torch.float64) * n_train / steps) - 1
    else:
        ts = torch.round(torch.linspace(0, n_train - 1, steps, dtype=torch.float64))
    return ts.to(torch.long).sort(descending=True).values


def ddpm_time_grid(
    process: Process, steps: int, spacing: str = "leading", num_train_steps: int = 1000
) -> Tensor:
    r"""Process times of :func:`ddpm_timesteps`, followed by ``t = 0``: index :math:`i`
    is time :math:`t = (i + 1)\, t_{max} / T_{train}` (the grid of
    :func:`~scorekit.core.processes.ddpm_betas`, where :math:`\bar\alpha_{i+1} = \alpha(t)^2`).
    The final ``t = 0`` (:math:`\bar\alpha_0 = 1`, DDIM's "set_alpha_to_one") makes
    DDPM/DDIM end on the denoised estimate :math:`\hat x_0`.

    Returns:
        float64 tensor of shape ``(steps + 1,)``, strictly decreasing.
    """
    check_process("process", process)
    ts = ddpm_timesteps(num_train_steps, steps, spacing).to(torch.float64)
    t = (ts + 1) * process.t_max / num_train_steps
    return torch.cat([t, t.new_zeros(1)])


def check_grid(grid, process: Process, *, strict: bool = True, name: str = "grid") -> Tensor:
    r"""Return ``grid`` as a 1-D float64 tensor of times, raising ``ValueError`` unless it
    has at least two points, lies in the process domain ``[0, T]`` and is decreasing
    (strictly when ``strict``; non-increasing otherwise, as for Langevin at a fixed level)."""
    g = torch.as_tensor(grid, dtype=torch.float64).detach().cpu()
    if g.dim() != 1 or g.numel() < (2 if strict else 1):
        raise ValueError(
            f"{name} must be a 1-D sequence of at least {2 if strict else 1} times, "
            f"got shape {tuple(g.shape)}"
        )
    process.check_t(g, name)
    d = g[1:] - g[:-1]
    if (d >= 0).any() if strict else (d > 0).any():
        i = int(torch.nonzero(d >= 0 if strict else d > 0)[0])
        kind = "strictly decreasing" if strict else "non-increasing"
        raise ValueError(
            f"{name} must be {kind} (from noise to data), got {g[i].item():g} then "
            f"{g[i + 1].item():g} at position {i}"
        )
    return g

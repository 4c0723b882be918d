r"""One entry point: :func:`sample` picks a sampler by name, a default grid and the prior,
and runs in chunks."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._validate import check_choice, check_generator, check_int
from ..core.parametrize import ScoreModel
from ..core.schedules import check_grid, ddpm_time_grid, time_grid
from .base import Sampler, SampleResult
from .ddpm import DDIM, DDPM
from .edm import EDMSampler
from .langevin import AnnealedLangevin, Langevin
from .ode import Dopri5, DPMSolverPP, Euler, Heun
from .sde import EulerMaruyama, PredictorCorrector, ReverseDiffusion

__all__ = ["DEFAULT_STEPS", "SAMPLERS", "default_grid", "make_sampler", "sample"]

_FACTORIES = {
    "euler": Euler,
    "heun": Heun,
    "dpmpp_2m": lambda **kw: DPMSolverPP(order=2, **kw),
    "dpmpp_3m": lambda **kw: DPMSolverPP(order=3, **kw),
    "dopri5": Dopri5,
    "euler_maruyama": EulerMaruyama,
    "reverse_diffusion": ReverseDiffusion,
    "pc": PredictorCorrector,
    "ddpm": DDPM,
    "ddim": DDIM,
    "edm": EDMSampler,
    "langevin": lambda step_size=1e-2: Langevin(step_size),
    "mala": lambda step_size=1e-2: Langevin(step_size, metropolis=True),
    "annealed_langevin": AnnealedLangevin,
}

#: Names accepted by :func:`sample` and :func:`make_sampler`.
SAMPLERS = tuple(_FACTORIES)

#: ``steps`` used when :func:`sample` is called without one (for ``annealed_langevin``
#: the number of noise levels; for ``langevin``/``mala`` the number of Langevin steps).
DEFAULT_STEPS = {
    "euler": 100,
    "heun": 50,
    "dpmpp_2m": 30,
    "dpmpp_3m": 30,
    "dopri5": 1,
    "euler_maruyama": 1000,
    "reverse_diffusion": 1000,
    "pc": 500,
    "ddpm": 1000,
    "ddim": 50,
    "edm": 50,
    "langevin": 1000,
    "mala": 1000,
    "annealed_langevin": 10,
}


def make_sampler(name: str, **options) -> Sampler:
    r"""The sampler called ``name`` (one of :data:`SAMPLERS`), built with ``options``
    (e.g. ``make_sampler("ddim", eta=0.5)``, ``make_sampler("pc", snr=0.16)``)."""
    check_choice("sampler", name, SAMPLERS)
    try:
        return _FACTORIES[name](**options)
    except TypeError as e:
        raise ValueError(
            f"sampler {name!r} got unexpected options {sorted(options)}: {e}"
        ) from None


def default_grid(name: str, process, steps: int) -> Tensor:
    r"""The grid :func:`sample` uses for sampler ``name`` with ``steps`` steps:

    - ``dpmpp_2m``, ``dpmpp_3m``: uniform in log-SNR (``"geometric"``), as Lu et al. advise
      (``benchmarks/bench_samplers.py`` finds it ahead of Karras at 10-100 evaluations);
    - other ODE solvers and ``edm``: Karras :math:`\rho = 7` on :math:`\sigma/\alpha`,
      ``t_max → t_min``;
    - ``euler_maruyama``, ``reverse_diffusion``, ``pc``: uniform in t (Song et al. 2021);
    - ``ddpm``, ``ddim``: DDPM timesteps with "trailing" spacing, ending at ``t = 0``;
    - ``annealed_langevin``: ``steps`` geometric noise levels (``steps >= 2``);
    - ``langevin``, ``mala``: ``t_min`` repeated, ``steps`` Langevin steps.
    """
    check_choice("sampler", name, SAMPLERS)
    steps = check_int("steps", steps, minimum=1)
    if name in ("euler_maruyama", "reverse_diffusion", "pc"):
        return time_grid(process, steps, "uniform")
    if name in ("ddpm", "ddim"):
        return ddpm_time_grid(process, steps, "trailing", num_train_steps=1000)
    if name == "annealed_langevin":
        if steps < 2:
            raise ValueError(
                f"steps (noise levels) must be >= 2 for annealed_langevin, got {steps}"
            )
        return time_grid(process, steps - 1, "geometric")
    if name in ("langevin", "mala"):
        return torch.full((steps + 1,), float(process.t_min), dtype=torch.float64)
    if name in ("dpmpp_2m", "dpmpp_3m"):
        return time_grid(process, steps, "geometric")
    return time_grid(process, steps, "karras")


def _data_shape(model: ScoreModel, shape_or_n, data_shape) -> tuple[int, ...]:
    if isinstance(shape_or_n, (tuple, list, torch.Size)):
        shape = tuple(int(s) for s in shape_or_n)
        if len(shape) < 1 or min(shape) < 1:
            raise ValueError(f"shape_or_n must be positive sizes (B, *D), got {shape_or_n!r}")
        return shape
    n = check_int("shape_or_n", shape_or_n, minimum=1)
    if data_shape is None:
        target = getattr(model, "target", None)
        net = getattr(model, "net", None)
        if target is not None and hasattr(target, "dim"):
            data_shape = (target.dim,)
        elif getattr(net, "data_shape", None) is not None:
            data_shape = tuple(net.data_shape)
        else:
            raise ValueError(
                "shape_or_n is an int but the data shape is unknown: pass a shape (B, *D) "
                "or data_shape=(...)"
            )
    return (n, *tuple(int(d) for d in data_shape))


def sample(
    model: ScoreModel,
    shape_or_n: int | tuple[int, ...],
    sampler: str = "heun",
    steps: int | None = None,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    return_trajectory: bool = False,
    *,
    grid: Tensor | None = None,
    data_shape: tuple[int, ...] | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    **options,
) -> SampleResult:
    r"""Draw samples from a score model with the sampler called ``sampler``.

    Arguments:
        model: a :class:`~scorekit.core.parametrize.ScoreModel` (carries ``.process``).
        shape_or_n: ``(B, *D)``, or a count ``n`` when the data shape is known
            (``data_shape=``, an :class:`~scorekit.core.distributions.ExactScore` target, or a
            ``net.data_shape`` attribute).
        sampler: one of :data:`SAMPLERS`.
        steps: grid steps (default :data:`DEFAULT_STEPS`); ignored when ``grid`` is given.
        generator: the only source of randomness: it draws the prior for all ``B`` samples
            first, then one seed per chunk for the sampler's noise. The same seed and
            ``batch_size`` give the same samples; deterministic samplers give the same
            samples whatever ``batch_size`` (``dopri5`` up to its tolerance).
        batch_size: run at most this many samples at once (``None``: all); trajectories
            are held only when ``return_trajectory``.
        grid: explicit decreasing process times (see :mod:`scorekit.core.schedules`).
        dtype, device: of the samples (default: torch's default dtype, CPU).
        **options: sampler settings (e.g. ``eta=0.5`` for ``ddim``, ``s_churn=40`` for
            ``edm``, ``snr=0.16`` for ``pc``, ``step_size`` for ``langevin``).

    Returns:
        :class:`~scorekit.samplers.base.SampleResult`: ``x`` of shape ``(B, *D)``, ``nfe``
        the model evaluations spent over all chunks, ``trajectory`` of shape
        ``(N + 1, B, *D)`` on request.

    Example:
        >>> import torch, scorekit as sk
        >>> m = sk.ExactScore(sk.Gaussian(torch.zeros(2), std=1.0), sk.EDM())
        >>> r = sample(m, 100, "heun", steps=10, generator=torch.Generator().manual_seed(0))
        >>> r.x.shape, r.nfe
        (torch.Size([100, 2]), 20)
    """
    if not isinstance(model, ScoreModel):
        raise ValueError(f"model must be a scorekit ScoreModel, got {type(model).__name__}")
    check_generator("generator", generator)
    smp = make_sampler(sampler, **options)
    process = model.process
    if grid is None:
        steps = DEFAULT_STEPS[sampler] if steps is None else check_int("steps", steps, minimum=1)
        grid = default_grid(sampler, process, steps)
    grid = check_grid(grid, process, strict=smp.strict_grid)
    shape = _data_shape(model, shape_or_n, data_shape)
    dtype = torch.get_default_dtype() if dtype is None else dtype
    n = shape[0]
    bs = n if batch_size is None else check_int("batch_size", batch_size, minimum=1)

    x = process.prior_sample(shape, generator=generator, dtype=dtype, device=device)
    if sampler not in ("langevin", "mala") and float(grid[0]) < process.t_max:
        x = x * (float(process.sigma(grid[0])) / process.prior_std())
    gen_device = generator.device if generator is not None else x.device
    outs, trajs, nfe, info = [], [], 0, {}
    for start in range(0, n, bs):
        child = None
        if generator is not None:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=gen_device))
            child = torch.Generator(device=x.device).manual_seed(seed)
        res = smp(model, x[start : start + bs], grid, child, return_trajectory)
        outs.append(res.x)
        nfe += res.nfe
        info = res.info
        if return_trajectory:
            trajs.append(res.trajectory)
    info = dict(info, chunks=math.ceil(n / bs))
    trajectory = torch.cat(trajs, dim=1) if return_trajectory else None
    return SampleResult(torch.cat(outs), nfe, trajectory, info)

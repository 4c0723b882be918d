r"""The one sampling loop: :func:`sample` draws the prior, scales it to the grid's first
time, splits the batch and its conditioning into chunks, seeds each chunk, runs the sampler
and gathers the results and diagnostics of every chunk. The registry :data:`SAMPLERS`
maps names to sampler classes; each class knows its own default steps, grid and start."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor

from .._validate import check_choice, check_generator, check_int, check_tensor
from ..core.parametrize import ScoreModel
from ..core.random import spawn
from .base import Sampler, SampleResult
from .ddpm import DDIM, DDPM
from .edm import EDMSampler
from .langevin import AnnealedLangevin, Langevin
from .multistep import DEIS, IPNDM, DPMSolverPPSDE, UniPC
from .ode import Dopri5, DPMSolverPP, Euler, Heun
from .restart import Restart
from .sde import EulerMaruyama, PredictorCorrector, ReverseDiffusion

__all__ = ["SAMPLERS", "default_grid", "make_sampler", "sample"]

#: Sampler names and the factories :func:`make_sampler` builds them with.
SAMPLERS: dict[str, Callable[..., Sampler]] = {
    "euler": Euler,
    "heun": Heun,
    "dpmpp_2m": partial(DPMSolverPP, order=2),
    "dpmpp_3m": partial(DPMSolverPP, order=3),
    "unipc": UniPC,
    "unipc_3": partial(UniPC, order=3),
    "deis": DEIS,
    "ipndm": IPNDM,
    "dopri5": Dopri5,
    "euler_maruyama": EulerMaruyama,
    "reverse_diffusion": ReverseDiffusion,
    "pc": PredictorCorrector,
    "dpmpp_2m_sde": partial(DPMSolverPPSDE, order=2),
    "dpmpp_3m_sde": partial(DPMSolverPPSDE, order=3),
    "ddpm": DDPM,
    "ddim": DDIM,
    "edm": EDMSampler,
    "restart": Restart,
    "langevin": Langevin,
    "mala": partial(Langevin, metropolis=True),
    "annealed_langevin": AnnealedLangevin,
}


def make_sampler(name: str | Sampler, **options) -> Sampler:
    r"""The sampler called ``name`` (a key of :data:`SAMPLERS`), built with ``options``
    (e.g. ``make_sampler("ddim", eta=0.5)``, ``make_sampler("pc", snr=0.16)``); a
    :class:`~scorekit.samplers.base.Sampler` instance is returned as it is."""
    if isinstance(name, Sampler):
        if options:
            raise ValueError(f"sampler {name!r} is already built; got options {sorted(options)}")
        return name
    check_choice("sampler", name, SAMPLERS)
    try:
        return SAMPLERS[name](**options)
    except TypeError as e:
        raise ValueError(
            f"sampler {name!r} got unexpected options {sorted(options)}: {e}"
        ) from None


def default_grid(name: str | Sampler, process, steps: int | None = None) -> Tensor:
    r"""The grid :func:`sample` uses for sampler ``name`` with ``steps`` steps (default: the
    sampler's own ``default_steps``); see each class's ``default_grid``: Karras
    :math:`\rho = 7` for the ODE solvers and ``edm``, uniform in log-SNR for DPM-Solver++,
    uniform in ``t`` for the reverse SDE, DDPM's trailing timesteps for ``ddpm``/``ddim``,
    geometric levels for annealed Langevin and ``t_min`` repeated for Langevin."""
    smp = make_sampler(name)
    steps = smp.default_steps if steps is None else check_int("steps", steps, minimum=1)
    return smp.default_grid(process, steps)


def _data_shape(model: ScoreModel, shape_or_n, data_shape) -> tuple[int, ...]:
    if isinstance(shape_or_n, (tuple, list, torch.Size)):
        shape = tuple(int(s) for s in shape_or_n)
        if len(shape) < 1 or min(shape) < 1:
            raise ValueError(f"shape_or_n must be positive sizes (B, *D), got {shape_or_n!r}")
        return shape
    n = check_int("shape_or_n", shape_or_n, minimum=1)
    if data_shape is None:
        data_shape = getattr(model, "data_shape", None)
    if data_shape is None:
        raise ValueError(
            "shape_or_n is an int but the data shape is unknown: pass a shape (B, *D) "
            "or data_shape=(...)"
        )
    return (n, *tuple(int(d) for d in data_shape))


def _bar(progress: bool, total: int | None, desc: str):
    """A ``tqdm`` bar when asked and available, else ``None``."""
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="step")


def split_cond(cond: dict[str, Any] | None, n: int) -> Callable[[slice], dict[str, Any]]:
    r"""Check ``cond`` against a batch of ``n`` and return ``rows -> cond`` of those rows:
    tensors with a batch axis (shape ``(n, ...)``) are sliced, 0-dimensional tensors and
    other values are shared by every row."""
    cond = {} if cond is None else cond
    if not isinstance(cond, dict):
        raise ValueError(f"cond must be a dict of keyword arguments, got {type(cond).__name__}")
    for k, v in cond.items():
        if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] != n:
            raise ValueError(
                f"cond[{k!r}] must have the batch size {n} first, got shape {tuple(v.shape)}"
            )

    def rows(sl: slice) -> dict[str, Any]:
        return {k: v[sl] if isinstance(v, Tensor) and v.dim() > 0 else v for k, v in cond.items()}

    return rows


def sample(
    model: ScoreModel,
    shape_or_n: int | tuple[int, ...] | None = None,
    sampler: str | Sampler = "heun",
    steps: int | None = None,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    return_trajectory: bool = False,
    *,
    grid: Tensor | None = None,
    data_shape: tuple[int, ...] | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    x_T: Tensor | None = None,
    cond: dict[str, Any] | None = None,
    hook=None,
    progress: bool = False,
    decode: bool = False,
    **options,
) -> SampleResult:
    r"""Draw samples from a score model with the sampler called ``sampler``.

    Arguments:
        model: a :class:`~scorekit.core.parametrize.ScoreModel` (carries ``.process``).
        shape_or_n: ``(B, *D)``, or a count ``n`` when the data shape is known
            (``data_shape=``, or ``model.data_shape``: exact targets and loaded checkpoints
            carry one); may be omitted with ``x_T``.
        sampler: a key of :data:`SAMPLERS`, or a :class:`~scorekit.samplers.base.Sampler`.
        steps: grid steps (default: the sampler's ``default_steps``); ignored with ``grid``.
        generator: the only source of randomness: it draws the prior for all ``B`` samples
            first, then one seed per chunk for the sampler's noise. The same seed and
            ``batch_size`` give the same samples; deterministic samplers give the same
            samples whatever ``batch_size`` (``dopri5`` up to its tolerance).
        batch_size: run at most this many samples at once (``None``: all); trajectories
            are held only when ``return_trajectory``.
        grid: explicit decreasing process times (see :mod:`scorekit.core.schedules`).
        dtype, device: of the samples (default: torch's default dtype, CPU; with ``x_T``,
            its own).
        x_T: the start state at ``grid[0]``, shape ``(B, *D)``, instead of a prior draw.
        cond: conditioning for the model, ``model(x, t, **cond)`` (e.g. ``{"y": labels}``);
            tensors with a batch axis are split with the samples, others are shared.
        hook: ``hook(x, j, grid, generator, rows) -> x`` applied at every grid index ``j``
            (see :meth:`~scorekit.samplers.base.Sampler.__call__`), e.g. replacement
            inpainting (:func:`scorekit.inpaint.inpaint`).
        progress: show a progress bar over all steps of all chunks (with ``tqdm``, which
            comes with the ``cli`` extra; without it, none).
        decode: return ``x`` in data coordinates, through ``model.normalizer`` (a model from
            ``load_model`` has one); the trajectory stays in model space.
        **options: sampler settings (e.g. ``eta=0.5`` for ``ddim``, ``s_churn=40`` for
            ``edm``, ``snr=0.16`` for ``pc``, ``step_size`` for ``langevin``).

    Returns:
        :class:`~scorekit.samplers.base.SampleResult`: ``x`` of shape ``(B, *D)``, ``nfe``
        the model evaluations spent over all chunks, ``trajectory`` of shape
        ``(S + 1, B, *D)`` on request (``S`` steps: the grid's intervals, or more for a
        sampler that leaves the grid, such as Restart), ``info`` the sampler's diagnostics
        summed over chunks, and ``"chunks"``.

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
        steps = smp.default_steps if steps is None else check_int("steps", steps, minimum=1)
        grid = smp.default_grid(process, steps)
    sched = smp.check(model, grid)
    if x_T is not None:
        check_tensor("x_T", x_T, min_dim=1)
        if shape_or_n is not None and _data_shape(model, shape_or_n, x_T.shape[1:]) != tuple(
            x_T.shape
        ):
            raise ValueError(
                f"shape_or_n {shape_or_n!r} does not match x_T of shape {tuple(x_T.shape)}"
            )
        x = x_T
    else:
        if shape_or_n is None:
            raise ValueError("shape_or_n is needed without x_T: pass (B, *D) or a count")
        shape = _data_shape(model, shape_or_n, data_shape)
        dtype = torch.get_default_dtype() if dtype is None else dtype
        x = process.prior_sample(shape, generator=generator, dtype=dtype, device=device)
        if smp.starts_at_prior and sched.t[0] < process.t_max:
            x = x * (sched.sigma[0] / process.prior_std())
    n = x.shape[0]
    bs = n if batch_size is None else check_int("batch_size", batch_size, minimum=1)
    rows_of = split_cond(cond, n)
    bar = _bar(progress, smp.num_steps(sched) * -(-n // bs), "sample")
    outs, trajs, nfe, infos = [], [], 0, []
    for start in range(0, n, bs):
        rows = slice(start, start + bs)
        res = smp(
            model,
            x[rows],
            sched,
            spawn(generator, x.device),
            return_trajectory,
            cond=rows_of(rows),
            hook=hook,
            rows=rows,
            on_step=None if bar is None else bar.update,
        )
        outs.append(res.x)
        nfe += res.nfe
        infos.append(res.info)
        if return_trajectory:
            trajs.append(res.trajectory)
    if bar is not None:
        bar.close()
    info = dict(smp.merge_info(infos), chunks=len(outs))
    trajectory = torch.cat(trajs, dim=1) if return_trajectory else None
    x = torch.cat(outs)
    if decode:
        norm = getattr(model, "normalizer", None)
        if norm is None:
            raise ValueError("decode=True needs a model with a normalizer (from load_model)")
        x = norm.decode(x)
    return SampleResult(x, nfe, trajectory, info)

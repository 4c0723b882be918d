r"""The sigma-design advisor: noise settings for a data set, printed or saved as JSON.

:func:`advise` applies NCSNv2's Techniques 1, 2 and 4 (:mod:`scorekit.noise.design`) to the
data, adds :math:`\sigma_{data}` for EDM preconditioning and matching VP and EDM settings;
:func:`save_advice` writes the result as JSON whose process dicts
:func:`scorekit.core.processes.from_config` accepts.

References:
    Song & Ermon, "Improved Techniques for Training Score-Based Generative Models",
    NeurIPS 2020 (NCSNv2). Karras et al. (2022), Table 1.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._validate import check_generator, check_int, check_positive
from .design import (
    NCSN_GAMMA,
    _as_data,
    data_std,
    geometric_ratio,
    langevin_ratio,
    langevin_step,
    max_pairwise_distance,
    num_levels,
    shell_overlap,
)

__all__ = ["Advice", "advise", "save_advice"]


@dataclass(frozen=True)
class Advice:
    r"""Suggested noise settings for one data set (see :func:`advise`).

    Attributes:
        n, dim: number of points and features per point :math:`D`.
        sigma_max: :math:`\sigma_1` (Technique 1); ``sigma_max_exact`` says whether it is the
            exact maximum or an estimate from ``points_used`` random points (0: given).
        sigma_min: :math:`\sigma_L`.
        gamma_target: the root of Technique 2 (``None`` when it has none, ``dim <= 4``).
        gamma: the schedule's ratio :math:`(\sigma_1/\sigma_L)^{1/(L-1)}`; ``overlap`` its
            :func:`shell_overlap`.
        levels: :math:`L`.
        T, eps, ratio: Langevin steps per level, Technique 4's :math:`\epsilon` and the
            variance ratio it reaches.
        sigma_data: EDM's :math:`\sigma_{data}`.
        vp, edm: suggested VP and EDM settings (dicts, process under ``"process"``).
        notes: how each number was obtained, where a choice was made.
    """

    n: int
    dim: int
    sigma_max: float
    sigma_max_exact: bool
    points_used: int
    sigma_min: float
    gamma_target: float | None
    gamma: float
    overlap: float
    levels: int
    T: int
    eps: float
    ratio: float
    sigma_data: float
    vp: dict
    edm: dict
    notes: tuple[str, ...] = ()

    def process_config(self) -> dict:
        """The VE process, as :func:`scorekit.core.processes.from_config` accepts it."""
        return {"name": "VE", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}

    def to_json(self) -> dict:
        """A JSON-serialisable dict a training config can take (see :func:`save_advice`)."""
        return {
            "process": self.process_config(),
            "sigma_data": self.sigma_data,
            "levels": self.levels,
            "gamma": self.gamma,
            "langevin": {"eps": self.eps, "T": self.T, "variance_ratio": self.ratio},
            "vp": self.vp,
            "edm": self.edm,
            "data": {
                "n": self.n,
                "dim": self.dim,
                "sigma_max_exact": self.sigma_max_exact,
                "points_used": self.points_used,
                "gamma_target": self.gamma_target,
                "overlap": self.overlap,
            },
            "notes": list(self.notes),
        }

    def table(self) -> str:
        """The advice as a plain-text table."""
        est = "exact" if self.sigma_max_exact else f"estimate, {self.points_used} random points"
        est = "given" if self.points_used == 0 else est
        target = "none (dim <= 4)" if self.gamma_target is None else f"{self.gamma_target:.6g}"
        rows = [
            ("data", f"N = {self.n}, D = {self.dim}"),
            ("sigma_max (T1: max pairwise distance)", f"{self.sigma_max:.6g} ({est})"),
            ("sigma_min", f"{self.sigma_min:.6g}"),
            ("gamma target (T2 root)", target),
            ("levels L (T2)", str(self.levels)),
            ("gamma of schedule / shell overlap", f"{self.gamma:.6g} / {self.overlap:.4f}"),
            ("Langevin eps (T4), T", f"{self.eps:.4g}, T = {self.T}"),
            ("  step at level i", "eps * sigma_i^2 / sigma_min^2"),
            ("  variance ratio reached", f"{self.ratio:.6g}"),
            ("sigma_data (EDM)", f"{self.sigma_data:.6g}"),
            ("VE process", _fmt(self.process_config())),
            ("VP process", _fmt(self.vp["process"])),
            ("EDM process", _fmt(self.edm["process"])),
            ("EDM training", _fmt({k: v for k, v in self.edm.items() if k != "process"})),
        ]
        width = max(len(k) for k, _ in rows)
        lines = [f"{k.ljust(width)} | {v}" for k, v in rows]
        rule = "-" * max(len(s) for s in lines)
        return "\n".join([rule, *lines, rule, *(f"note: {s}" for s in self.notes)])


def _fmt(d: dict) -> str:
    return ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items())


def _vp_settings(sigma_max: float, sigma_min: float, beta_min: float = 0.1) -> dict:
    # x_t / alpha = x0 + (sigma/alpha) eps: VP at t is VE at sigma/alpha = sqrt(e^{B(t)} - 1),
    # B(t) = int_0^t beta. Reach sigma_max at t = 1 and sigma_min at t_min.
    beta_max = max(20.0, 2 * math.log1p(sigma_max**2) - beta_min)
    b_lo, delta = math.log1p(sigma_min**2), beta_max - beta_min
    # root of beta_min t + delta t^2 / 2 = b_lo, in the form free of cancellation
    t_min = 2 * b_lo / (beta_min + math.sqrt(beta_min**2 + 2 * delta * b_lo))
    return {"process": {"name": "VP", "beta_min": beta_min, "beta_max": beta_max, "t_min": t_min}}


def _edm_settings(sigma_max: float, sigma_data: float) -> dict:
    scale = sigma_data / 0.5
    return {
        "process": {"name": "EDM", "sigma_min": 0.002 * scale, "sigma_max": sigma_max},
        "sigma_data": sigma_data,
        "rho": 7.0,
        "P_mean": -1.2 + math.log(scale),
        "P_std": 1.2,
    }


def advise(
    data: Any,
    T: int = 5,
    sigma_min: float | None = None,
    generator: torch.Generator | None = None,
    max_points: int = 2048,
    sigma_max: float | None = None,
    levels: int | None = None,
) -> Advice:
    r"""Noise settings for ``data`` by NCSNv2's Techniques 1, 2 and 4, with VP and EDM analogues.

    * :math:`\sigma_1` = :func:`max_pairwise_distance` (unless ``sigma_max`` is given);
    * :math:`\sigma_L` = ``sigma_min``, by default :math:`0.04\,\sigma_{data}` (NCSNv2's 0.01 for
      images in :math:`[0, 1]`, whose :math:`\sigma_{data} \approx 0.25`);
    * :math:`\gamma` from :func:`geometric_ratio`, capped at NCSN (2019)'s
      :math:`100^{1/9} \approx 1.67` (which also stands in when ``dim <= 4``, where Technique 2
      has no root); :math:`L` by :func:`num_levels`; the schedule's own ratio
      :math:`(\sigma_1/\sigma_L)^{1/(L-1)}` then goes into :func:`langevin_step` for ``T``;
    * VP: :math:`\beta_{min} = 0.1` and :math:`\beta_{max} \ge 20` so that the VE-equivalent noise
      :math:`\sigma(1)/\alpha(1) = \sqrt{e^{\int_0^1\beta} - 1}` reaches :math:`\sigma_1`, and
      ``t_min`` where it equals :math:`\sigma_L`;
    * EDM: ``sigma_data`` = :func:`data_std`, :math:`\sigma_{max} = \sigma_1`, and Karras et al.'s
      :math:`\sigma_{min} = 0.002`, :math:`P_{mean} = -1.2` rescaled by
      :math:`\sigma_{data}/0.5` (:math:`\rho = 7`, :math:`P_{std} = 1.2`).

    Arguments:
        data: tensor or numpy array of shape ``(N, *D)``, ``N >= 2``, not all equal.
        T: annealed-Langevin steps per noise level, ``>= 1``.
        sigma_min: smallest noise level; default above.
        generator: draws the subset of Technique 1 when ``N > max_points``.
        max_points: Technique 1 is exact up to this many points, an estimate beyond.
        sigma_max: skip Technique 1 and use this :math:`\sigma_1`.
        levels: skip Technique 2's :math:`L` and use this one (e.g. a published schedule);
            Technique 4 then uses its ratio.

    Returns:
        An :class:`Advice`: ``.table()`` to print, ``.to_json()`` / :func:`save_advice` to store.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> a = advise(torch.rand(500, 8, 8, generator=g), T=5)
        >>> a.levels > 2 and a.sigma_max_exact
        True

    References:
        Song & Ermon (2020), Section 4; Song & Ermon (2019); Karras et al. (2022), Table 1.
    """
    T = check_int("T", T, minimum=1)
    check_generator("generator", generator)
    x = _as_data(data)
    n, dim = x.shape
    notes = []
    if sigma_max is None:
        sigma_max, exact, used = max_pairwise_distance(x, max_points, generator)
        if not exact:
            notes.append(
                f"sigma_max is an estimate (a lower bound): the largest distance among "
                f"{used} of {n} points drawn at random"
            )
    else:
        sigma_max, exact, used = check_positive("sigma_max", sigma_max), False, 0
        notes.append("sigma_max was given, not computed by Technique 1")
    sd = data_std(x)
    if sd == 0:
        raise ValueError("data: all points are identical (standard deviation 0)")
    if sigma_min is None:
        sigma_min = 0.04 * sd
        notes.append("sigma_min = 0.04 sigma_data (NCSNv2's 0.01 for [0, 1] images)")
    sigma_min = check_positive("sigma_min", sigma_min)
    if sigma_min >= sigma_max:
        raise ValueError(f"sigma_min must be < sigma_max = {sigma_max:g}, got {sigma_min:g}")
    try:
        target = geometric_ratio(dim)
    except ValueError:
        target = None
        notes.append(f"Technique 2 has no root for D = {dim} <= 4; using NCSN's ratio 1.668")
    if target is not None and target > NCSN_GAMMA:
        notes.append(f"Technique 2's gamma {target:.4g} capped at NCSN's ratio 1.668")
    gamma_cap = NCSN_GAMMA if target is None else min(target, NCSN_GAMMA)
    if levels is None:
        levels = num_levels(sigma_max, sigma_min, gamma_cap)
    else:
        levels = check_int("levels", levels, minimum=2)
        notes.append(f"levels = {levels} was given, not computed by Technique 2")
    gamma = (sigma_max / sigma_min) ** (1 / (levels - 1))
    eps = langevin_step(gamma, sigma_min, T)
    return Advice(
        n=n,
        dim=dim,
        sigma_max=sigma_max,
        sigma_max_exact=exact,
        points_used=used,
        sigma_min=sigma_min,
        gamma_target=target,
        gamma=gamma,
        overlap=shell_overlap(gamma, dim),
        levels=levels,
        T=T,
        eps=eps,
        ratio=langevin_ratio(eps, gamma, sigma_min, T),
        sigma_data=sd,
        vp=_vp_settings(sigma_max, sigma_min),
        edm=_edm_settings(sigma_max, sd),
        notes=tuple(notes),
    )


def save_advice(advice: Advice, path: str | os.PathLike) -> Path:
    """Write ``advice.to_json()`` to ``path`` atomically (temporary file, then ``os.replace``).

    Returns the path written. The parent folder is created if missing.
    """
    if not isinstance(advice, Advice):
        raise ValueError(f"advice must be an Advice, got {type(advice).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(advice.to_json(), fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path

r"""Figures for score models: score fields, samples, trajectories, image grids, loss per σ.

Every function returns a ``matplotlib.figure.Figure`` (built without pyplot, so no
global state and no display is needed; PNGs are rendered by the Agg backend), with a
title and labelled axes. :func:`save_figure` writes a PNG atomically.

Points are drawn in data space: pass the :class:`~scorekit.train.data.Normalizer` of the
training data and samples / fields are mapped back. A score in model space maps to
data space by the chain rule, :math:`\nabla_x \log p(x) = \nabla_z \log \tilde p(z) /
\mathrm{scale}` with :math:`z = (x - \mathrm{loc})/\mathrm{scale}`.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..train.checkpoint import write_atomic
from ..train.data import Normalizer

__all__ = [
    "plot_image_grid",
    "plot_pairs",
    "plot_loss_per_sigma",
    "plot_samples",
    "plot_score_field",
    "plot_trajectories",
    "read_log",
    "save_figure",
]


def _figure(ncols: int, size: float = 4.0, nrows: int = 1):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ValueError("plots need matplotlib: pip install 'scorekit[plots]'") from None
    fig = Figure(figsize=(size * ncols, size * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Render ``fig`` to PNG and write it atomically to ``path``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buf.getvalue())
    return path


def _np2d(x: Tensor, normalizer: Normalizer | None) -> np.ndarray:
    x = x.detach().double().cpu()
    if x.dim() != 2 or x.shape[1] != 2:
        raise ValueError(f"expected 2-D points of shape (N, 2), got {tuple(x.shape)}")
    if normalizer is not None:
        x = normalizer.decode(x)
    return x.numpy()


def _limits(points: np.ndarray, pad: float = 0.15) -> tuple[float, float, float, float]:
    lo, hi = np.quantile(points, 0.002, axis=0), np.quantile(points, 0.998, axis=0)
    span = hi - lo
    lo, hi = lo - pad * span, hi + pad * span
    return float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])


def plot_score_field(
    model,
    data: Tensor,
    ts: Sequence[float],
    *,
    normalizer: Normalizer | None = None,
    grid: int = 21,
    title: str = "Learned score field over the data density",
):
    r"""Arrows of the model's score :math:`s_\theta(x, t)` at several ``ts`` over a 2-D
    histogram of ``data`` (model space, shape ``(N, 2)``), one panel per ``t``.

    Arrow lengths are normalised per panel (direction matters; the colour gives
    :math:`\log_{10}\lVert s\rVert`)."""
    pts = _np2d(data, normalizer)
    x0, x1, y0, y1 = _limits(pts)
    fig, axes = _figure(len(ts))
    gx, gy = np.meshgrid(np.linspace(x0, x1, grid), np.linspace(y0, y1, grid))
    xy = torch.tensor(np.stack([gx.ravel(), gy.ravel()], 1))
    scale = torch.ones(2, dtype=torch.float64)
    if normalizer is not None:
        xy = normalizer.encode(xy)
        scale = normalizer.scale.expand(2)
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    process = model.process
    for ax, t in zip(axes[0], ts, strict=True):
        tt = torch.full((xy.shape[0],), float(t), dtype=dtype)
        with torch.enable_grad() if model.prediction == "energy" else torch.no_grad():
            s = model(xy.to(dtype), tt).detach().double() / scale
        s = s.numpy()
        mag = np.linalg.norm(s, axis=1) + 1e-12
        ax.hist2d(pts[:, 0], pts[:, 1], bins=80, range=[[x0, x1], [y0, y1]], cmap="Greys")
        q = ax.quiver(
            gx.ravel(), gy.ravel(), s[:, 0] / mag, s[:, 1] / mag, np.log10(mag),
            cmap="viridis", angles="xy", pivot="mid",
        )  # fmt: skip
        fig.colorbar(q, ax=ax, label="log10 |score|", shrink=0.8)
        sigma = float(process.sigma(torch.tensor(float(t), dtype=torch.float64)))
        ax.set_title(f"t = {t:.3g}, sigma = {sigma:.3g}")
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
        ax.set_aspect("equal")
    fig.suptitle(title)
    return fig


def plot_samples(
    samples: dict[str, Tensor],
    data: Tensor | None = None,
    *,
    normalizer: Normalizer | None = None,
    title: str = "Samples vs data",
    max_points: int = 3000,
):
    """Scatter of each sampler's samples (``{name: (N, 2)}``, model space) over ``data``
    (if given)."""
    pts = None if data is None else _np2d(data, normalizer)[:max_points]
    ref = (
        pts if pts is not None else np.concatenate([_np2d(x, normalizer) for x in samples.values()])
    )
    x0, x1, y0, y1 = _limits(ref)
    fig, axes = _figure(len(samples))
    for ax, (name, x) in zip(axes[0], samples.items(), strict=True):
        s = _np2d(x, normalizer)[:max_points]
        if pts is not None:
            ax.scatter(pts[:, 0], pts[:, 1], s=3, alpha=0.3, c="tab:gray", label="data")
        ax.scatter(s[:, 0], s[:, 1], s=3, alpha=0.5, c="tab:red", label="samples")
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.set_title(name)
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
        ax.set_aspect("equal")
        ax.legend(loc="upper right", markerscale=4)
    fig.suptitle(title)
    return fig


def plot_pairs(
    samples: Tensor,
    data: Tensor | None = None,
    *,
    normalizer: Normalizer | None = None,
    dims: int = 4,
    title: str = "Samples vs data, pairs of coordinates",
    max_points: int = 2000,
):
    """Scatter plots of every pair of the first ``dims`` coordinates of ``samples``
    (``(N, D)`` with ``D > 2``, model space) over ``data`` (if given): what the samples of
    vectors look like against held-out ones."""
    x = samples.detach().double().cpu().reshape(len(samples), -1)
    ref = None if data is None else data.detach().double().cpu().reshape(len(data), -1)
    if normalizer is not None:
        x = normalizer.decode(x.reshape(samples.shape)).reshape(len(x), -1)
        if ref is not None:
            ref = normalizer.decode(ref.reshape(data.shape)).reshape(len(ref), -1)
    k = min(dims, x.shape[1])
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    fig, axes = _figure(len(pairs), size=3.0)
    for ax, (i, j) in zip(axes[0], pairs, strict=True):
        if ref is not None:
            r = ref[:max_points].numpy()
            ax.scatter(r[:, i], r[:, j], s=2, alpha=0.3, c="tab:gray", label="data")
        v = x[:max_points].numpy()
        ax.scatter(v[:, i], v[:, j], s=2, alpha=0.5, c="tab:red", label="samples")
        ax.set_xlabel(f"x{i + 1}")
        ax.set_ylabel(f"x{j + 1}")
    axes[0][0].legend(loc="upper right", markerscale=4)
    fig.suptitle(title)
    return fig


def plot_trajectories(
    trajectories: dict[str, Tensor],
    data: Tensor,
    *,
    normalizer: Normalizer | None = None,
    n_paths: int = 40,
    max_states: int = 100,
    title: str = "Sampling trajectories (prior to data)",
):
    """Paths of ``n_paths`` particles, ``{name: (K, B, 2)}`` (K saved states, model space),
    coloured from the prior (light) to the end (dark), over the data. Paths of more than
    ``max_states`` states are drawn through ``max_states`` evenly spaced ones (first and
    last kept)."""
    from matplotlib.collections import LineCollection

    pts = _np2d(data, normalizer)
    x0, x1, y0, y1 = _limits(pts, pad=0.4)
    fig, axes = _figure(len(trajectories))
    for ax, (name, traj) in zip(axes[0], trajectories.items(), strict=True):
        traj = traj.detach().double().cpu()
        if traj.dim() != 3 or traj.shape[2] != 2:
            raise ValueError(f"trajectory must have shape (K, B, 2), got {tuple(traj.shape)}")
        if normalizer is not None:
            traj = normalizer.decode(traj)
        k = traj.shape[0]
        if k > max_states:
            traj = traj[torch.linspace(0, k - 1, max_states).round().long()]
        tr = traj[:, :n_paths].numpy()
        ax.scatter(pts[:3000, 0], pts[:3000, 1], s=2, alpha=0.2, c="tab:gray", label="data")
        kd = tr.shape[0]
        for b in range(tr.shape[1]):
            seg = np.stack([tr[:-1, b], tr[1:, b]], 1)
            lc = LineCollection(seg, cmap="plasma_r", linewidths=0.8)
            lc.set_array(np.linspace(0, 1, kd - 1))
            ax.add_collection(lc)
        ax.scatter(tr[-1, :, 0], tr[-1, :, 1], s=8, c="black", label="end points")
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.set_title(f"{name} ({k} states)" if k == kd else f"{name} ({k} states, {kd} drawn)")
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
        ax.set_aspect("equal")
        ax.legend(loc="upper right")
    fig.suptitle(title)
    return fig


def plot_image_grid(
    images: Tensor,
    *,
    normalizer: Normalizer | None = None,
    nrow: int | None = None,
    title: str = "Samples",
    value_range: tuple[float, float] | None = None,
):
    """Grid of images ``(N, C, H, W)`` (model space; ``normalizer`` maps them back). With
    ``value_range`` (the data's own pixel range, e.g. ``(0, 16)`` for sklearn's digits) the
    pixels are shown in that range, clipped, and the share of values outside it is written
    in the title, so out-of-range samples are not hidden by a rescaling; without it, the
    decoded images' own minimum and maximum span the grey scale."""
    x = images.detach().double().cpu()
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, 1 or 3, H, W), got {tuple(x.shape)}")
    if normalizer is not None:
        x = normalizer.decode(x)
    if value_range is not None:
        lo, hi = value_range
        outside = float(((x < lo) | (x > hi)).double().mean())
        title = f"{title}; {100 * outside:.1f}% of pixels outside [{lo:g}, {hi:g}], clipped"
    else:
        lo, hi = float(x.min()), float(x.max())
    x = ((x - lo) / max(hi - lo, 1e-12)).clamp(0, 1)
    n, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    canvas = torch.ones(c, ncol * (h + 1) + 1, nrow * (w + 1) + 1)
    for i in range(n):
        r, q = divmod(i, nrow)
        canvas[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = x[
            i
        ]
    fig, axes = _figure(1, size=6)
    ax = axes[0, 0]
    if c == 1:
        ax.imshow(canvas[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(canvas.permute(1, 2, 0).numpy())
    ax.set_title(f"{title} ({n} images, {h}x{w})")
    ax.set_xlabel("column")
    ax.set_ylabel("row")
    ax.set_xticks([])
    ax.set_yticks([])
    return fig


def read_log(path: str | Path) -> list[dict]:
    """The records of a training ``log.jsonl``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"training log not found: {str(path)!r}")
    try:
        text = path.read_bytes().decode()
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"training log {path} is not JSON lines: {e}") from None
    if not all(isinstance(r, dict) for r in records):
        raise ValueError(f"training log {path} must hold one JSON object per line")
    return records


def plot_loss_per_sigma(records: list[dict] | str | Path, *, title: str = "Loss per noise level"):
    """Left: loss per σ bucket over training (one line per bucket). Right: loss against σ
    (bucket geometric centre) at the first and the last logged step."""
    if not isinstance(records, list):
        records = read_log(records)
    if not records:
        raise ValueError("the training log holds no records")
    edges = np.asarray(records[-1]["sigma_edges"])
    centres = np.sqrt(edges[:-1] * edges[1:])
    steps = np.array([r["step"] for r in records])
    table = np.array(
        [[np.nan if v is None else v for v in r["bucket_loss"]] for r in records], dtype=float
    )
    fig, axes = _figure(2, size=4.5)
    ax = axes[0, 0]
    import matplotlib as mpl

    cmap = mpl.colormaps["viridis"]
    for j in range(table.shape[1]):
        ax.plot(steps, table[:, j], color=cmap(j / max(table.shape[1] - 1, 1)),
                label=f"sigma ~ {centres[j]:.3g}")  # fmt: skip
    ax.plot(steps, [r["loss"] for r in records], color="black", lw=2, label="all")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("mean loss")
    ax.set_title("loss per sigma bucket over training")
    ax.legend(fontsize=7, ncol=2)
    ax = axes[0, 1]
    for row, label, style in ((0, f"step {steps[0]}", "--"), (-1, f"step {steps[-1]}", "-")):
        ax.plot(centres, table[row], style, marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("noise level sigma (bucket centre)")
    ax.set_ylabel("mean loss")
    ax.set_title("loss against sigma")
    ax.legend()
    fig.suptitle(title)
    return fig


def plot_learned_weighting(curve: dict, *, title: str = "Learned weighting per noise level"):
    r"""A learned per-σ weighting (:meth:`~scorekit.losses.UncertaintyWeighted.weighting_curve`):
    left, :math:`u(\sigma)`, the learned log of the mean per-coordinate loss; right, the
    factor :math:`e^{-u(\sigma)}` that multiplies the fixed weighting."""
    sigma = np.asarray(curve["sigma"], dtype=float)
    fig, axes = _figure(2, size=4.5)
    panels = (
        ("u", "u(sigma) = log mean loss per coordinate", "learned log-variance", "linear"),
        ("weight", "exp(-u(sigma))", "factor on the fixed weighting", "log"),
    )
    for ax, (key, ylabel, name, yscale) in zip(axes[0], panels, strict=True):
        ax.plot(sigma, curve[key], marker=".")
        ax.set_xscale("log")
        ax.set_yscale(yscale)
        ax.set_xlabel("noise level sigma")
        ax.set_ylabel(ylabel)
        ax.set_title(name)
    step = curve.get("step")
    fig.suptitle(title + (f" (step {step})" if step is not None else ""))
    return fig


def plot_sigma_draws(draws: dict, *, title: str = "Adaptive noise-level draws"):
    r"""An adaptive law of σ (:meth:`~scorekit.losses.AdaptiveSigma.proposal_curve`): per
    bin of equal base-law mass, :math:`K q_k`, how many times more (above 1) or less often
    than the base law training draws that range of σ; each draw's loss is divided by it."""
    lo = np.asarray(draws["sigma_low"], dtype=float)
    hi = np.asarray(draws["sigma_high"], dtype=float)
    rate = np.asarray(draws["draw_rate"], dtype=float)
    fig, axes = _figure(1, size=4.5)
    ax = axes[0][0]
    ax.stairs(rate, np.concatenate([lo[:1], hi]), baseline=None)
    ax.axhline(1.0, color="grey", linestyle=":", label="base law")
    ax.set_xscale("log")
    ax.set_xlabel("noise level sigma")
    ax.set_ylabel("K q_k (draws relative to the base law)")
    ax.legend()
    step = draws.get("step")
    fig.suptitle(title + (f" (step {step})" if step is not None else ""))
    return fig

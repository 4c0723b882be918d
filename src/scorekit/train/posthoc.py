r"""Post-hoc EMA (Karras et al. 2024, EDM2, Section 3): choose the length of the weight
average after training, from a few stored snapshots of two averages.

**Power-function EMA.** With the :math:`t`-th update of the weights :math:`\theta_t`
(:math:`t = 1, 2, \dots`),

.. math:: \hat\theta_t = \beta_t\hat\theta_{t-1} + (1 - \beta_t)\theta_t, \qquad
          \beta_t = (1 - 1/t)^{\gamma + 1},

so that :math:`\hat\theta_t = \sum_{\tau \le t} w_{\gamma,t}(\tau)\,\theta_\tau` with the
exact discrete profile

.. math:: w_{\gamma,t}(\tau) = \frac{\tau^{\gamma+1} - (\tau - 1)^{\gamma+1}}{t^{\gamma+1}},
          \qquad \sum_{\tau=1}^t w_{\gamma,t}(\tau) = 1,

the discrete form of the density :math:`(\gamma+1)\tau^\gamma/t^{\gamma+1}` on
:math:`[0, t]`. Its width relative to its length, EDM2's :math:`\sigma_{rel}`, is the
standard deviation of that density over :math:`t`:

.. math:: \sigma_{rel}^2 = \frac{\gamma + 1}{(\gamma + 2)^2(\gamma + 3)},

(:func:`sigma_rel_to_gamma` solves it for :math:`\gamma`); unlike a constant decay, the
average keeps the same *relative* length as training goes on, and needs no warm-up.

**Reconstruction.** Training keeps averages of a few :math:`\gamma_i` (EDM2:
:math:`\sigma_{rel}` = 0.05 and 0.10) and stores them every few steps. Any other profile
:math:`w_{\gamma,t}` is then approximated by the combination
:math:`\sum_j x_j w_{\gamma_j,t_j}` of the stored ones that is closest in
:math:`\ell_2` over :math:`\tau` — the normal equations :math:`A x = b`,
:math:`A_{jk} = \langle w_j, w_k\rangle`, :math:`b_j = \langle w_j, w_{\gamma,t}\rangle`,
solved by least squares — and the same combination of the stored weights is the
reconstructed average (:func:`posthoc_coefficients`, :func:`reconstruct`). The inner products
are the exact discrete sums, not their continuous limits.

References:
    Karras, Aittala, Lehtinen, Hellsten, Aila & Laine, "Analyzing and Improving the Training
    Dynamics of Diffusion Models", CVPR 2024, Section 3 and Appendix C.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .checkpoint import load_checkpoint, save_checkpoint
from .ema import EMA

__all__ = [
    "PowerEMA",
    "gamma_to_sigma_rel",
    "posthoc_coefficients",
    "power_profile",
    "reconstruct",
    "reconstruct_widths",
    "remove_snapshots",
    "save_snapshot",
    "sigma_rel_to_gamma",
    "snapshots",
]

SIGMA_REL_MAX = math.sqrt(1 / 12)  # gamma = 0: the plain running mean


def gamma_to_sigma_rel(gamma: float) -> float:
    r""":math:`\sigma_{rel} = \sqrt{(\gamma+1)/((\gamma+2)^2(\gamma+3))}`, :math:`\gamma \ge 0`."""
    if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    r"""The exponent :math:`\gamma \ge 0` of the power profile of relative width
    ``sigma_rel`` in :math:`(0, \sqrt{1/12}]`: the root of
    :math:`\gamma^3 + 7\gamma^2 + (16 - \sigma_{rel}^{-2})\gamma + 12 - \sigma_{rel}^{-2} = 0`
    (EDM2, Algorithm 2)."""
    ok = isinstance(sigma_rel, (int, float)) and not isinstance(sigma_rel, bool)
    if not ok or not 0 < sigma_rel <= SIGMA_REL_MAX + 1e-12:
        raise ValueError(
            f"sigma_rel must be a number in (0, {SIGMA_REL_MAX:.4f}] (the EMA's width relative "
            f"to the training length), got {sigma_rel!r}"
        )
    c = 1.0 / sigma_rel**2
    roots = np.roots([1.0, 7.0, 16.0 - c, 12.0 - c])
    real = roots[np.abs(roots.imag) < 1e-9].real
    return float(max(real.max(), 0.0))


class PowerEMA(EMA):
    r"""A copy of ``model`` tracking the power-function EMA of relative width ``sigma_rel``
    (:math:`\beta_t = (1 - 1/t)^{\gamma+1}` at the :math:`t`-th update; see the module).
    Updates, skipped steps and buffers behave as in :class:`~scorekit.train.ema.EMA`.

    Example:
        >>> net = nn.Linear(2, 2)
        >>> ema = PowerEMA(net, 0.1)
        >>> round(ema.gamma, 3), ema.decay_at(0)
        (6.94, 0.0)
    """

    def __init__(self, model: nn.Module, sigma_rel: float):
        super().__init__(model, decay=0.0, warmup=False)
        self.gamma = sigma_rel_to_gamma(sigma_rel)
        self.sigma_rel = float(sigma_rel)

    def decay_at(self, n: int) -> float:
        r""":math:`\beta` of the update after ``n`` previous ones: :math:`(n/(n+1))^{\gamma+1}`."""
        return (n / (n + 1)) ** (self.gamma + 1)

    def _weight(self, n: Tensor) -> Tensor:
        return 1.0 - (n / (n + 1)).pow(self.gamma + 1)


def power_profile(gamma: float, t: int, length: int) -> np.ndarray:
    r""":math:`w_{\gamma,t}(\tau)` for :math:`\tau = 1 \dots` ``length`` (zero past :math:`t`),
    in float64."""
    tau = np.arange(1, length + 1, dtype=np.float64)
    upto = np.minimum(tau, t)
    w = (upto / t) ** (gamma + 1) - ((upto - 1) / t) ** (gamma + 1)
    return np.where(tau <= t, w, 0.0)


def posthoc_coefficients(
    gammas: list[float], updates: list[int], gamma: float, t: int
) -> tuple[np.ndarray, float]:
    r"""The coefficients :math:`x` of the stored profiles :math:`(\gamma_j, t_j)` whose
    combination is closest to :math:`w_{\gamma, t}` (least squares on the normal equations,
    see the module), and the relative :math:`\ell_2` error of that fit,
    :math:`\lVert\sum_j x_j w_j - w_{\gamma,t}\rVert / \lVert w_{\gamma,t}\rVert`."""
    if len(gammas) != len(updates) or not gammas:
        raise ValueError("gammas and updates must be non-empty lists of the same length")
    length = max(max(updates), int(t))
    W = np.stack([power_profile(g, int(u), length) for g, u in zip(gammas, updates, strict=True)])
    target = power_profile(gamma, int(t), length)
    x = np.linalg.lstsq(W @ W.T, W @ target, rcond=None)[0]
    err = float(np.linalg.norm(x @ W - target) / np.linalg.norm(target))
    return x, err


def save_snapshot(path: str | Path, emas: list[PowerEMA], step: int) -> None:
    """Write the averages ``emas`` at training step ``step`` to ``path`` (safetensors +
    JSON): parameters ``"{i}.{name}"`` of average ``i``, the buffers (copied, not averaged)
    once as ``"buffer.{name}"``; meta ``step``, ``updates`` (the averages' :math:`t`) and
    ``sigma_rel`` of each (reads the update counts: call it between steps)."""
    tensors = {
        f"{i}.{k}": v.detach() for i, e in enumerate(emas) for k, v in e.module.named_parameters()
    }
    params = dict(emas[0].module.named_parameters())
    state = emas[0].module.state_dict()  # persistent buffers only, as a checkpoint has them
    tensors.update({f"buffer.{k}": v for k, v in state.items() if k not in params})
    meta = {
        "kind": "posthoc_ema_snapshot",
        "step": int(step),
        "updates": [e.updates for e in emas],
        "sigma_rel": [e.sigma_rel for e in emas],
    }
    save_checkpoint(path, tensors, meta)


def snapshots(folder: str | Path) -> list[tuple[Path, dict]]:
    """The snapshots in ``folder`` (``*.safetensors`` written by :func:`save_snapshot`), by
    step: ``[(path, meta), ...]``."""
    from .checkpoint import read_meta

    out = []
    for p in sorted(Path(folder).glob("*.safetensors")):
        meta = read_meta(p)
        if meta.get("kind") == "posthoc_ema_snapshot":
            out.append((p, meta))
    return sorted(out, key=lambda pm: pm[1]["step"])


def remove_snapshots(folder: str | Path, after: int = -1) -> None:
    """Delete the snapshots in ``folder`` past step ``after`` (all of them by default), each
    with its JSON copy; a file already gone (another rank's) is no error."""
    if not Path(folder).is_dir():
        return
    for p, meta in snapshots(folder):
        if meta["step"] > after:
            p.unlink(missing_ok=True)
            p.with_suffix(".json").unlink(missing_ok=True)


def reconstruct(
    folder: str | Path, sigma_rel: float, step: int | None = None
) -> tuple[dict[str, Tensor], dict]:
    r"""The power-function EMA of width ``sigma_rel`` at training step ``step`` (default:
    the last snapshot's), as a state dict, from the snapshots in ``folder`` up to that step,
    and ``{"step", "updates", "sigma_rel", "gamma", "fit_error", "snapshots"}``
    (``fit_error``: :func:`posthoc_coefficients`' relative profile error)."""
    return reconstruct_widths(folder, [sigma_rel], step)[0]


def reconstruct_widths(
    folder: str | Path, widths: list[float], step: int | None = None
) -> list[tuple[dict[str, Tensor], dict]]:
    """:func:`reconstruct` for each of ``widths``, reading each snapshot once."""
    found = snapshots(folder)
    if not found:
        raise ValueError(f"no post-hoc EMA snapshots in {str(folder)!r}")
    if step is None:
        step = found[-1][1]["step"]
    use = [(p, m) for p, m in found if m["step"] <= step]
    at = [m for _, m in use if m["step"] == step]
    if not at:
        steps = [m["step"] for _, m in found]
        shown = ", ".join(map(str, steps[:8])) + (f", ... {steps[-1]}" if len(steps) > 8 else "")
        raise ValueError(f"--step {step}: the snapshots are at steps {shown}")
    t = at[0]["updates"][0]
    pairs = [pair for _, m in use for pair in zip(m["sigma_rel"], m["updates"], strict=True)]
    gammas, updates = [sigma_rel_to_gamma(s) for s, _ in pairs], [u for _, u in pairs]
    fits = [posthoc_coefficients(gammas, updates, sigma_rel_to_gamma(w), t) for w in widths]
    sums: list[dict[str, Tensor]] = [{} for _ in widths]
    dtypes: dict[str, torch.dtype] = {}
    j = 0  # the coefficient of average i of this snapshot, in the order of ``pairs``
    for path, m in use:
        tensors, _ = load_checkpoint(path)
        for i in range(len(m["sigma_rel"])):
            prefix = f"{i}."
            for k, v in tensors.items():
                if not k.startswith(prefix):
                    continue
                name, v = k[len(prefix) :], v.double()
                dtypes[name] = tensors[k].dtype
                for out, (x, _) in zip(sums, fits, strict=True):
                    term = v * float(x[j])
                    out[name] = term if name not in out else out[name] + term
            j += 1
    # the buffers at the step itself: those of the last snapshot read
    buffers = {k[len("buffer.") :]: v for k, v in tensors.items() if k.startswith("buffer.")}
    return [
        (
            {k: v.to(dtypes[k]) for k, v in out.items()} | buffers,
            {
                "step": int(step),
                "updates": int(t),
                "sigma_rel": float(w),
                "gamma": sigma_rel_to_gamma(w),
                "fit_error": err,
                "snapshots": len(use),
            },
        )  # fmt: skip
        for w, out, (_, err) in zip(widths, sums, fits, strict=True)
    ]

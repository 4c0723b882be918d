r"""An adaptive law of noise levels: draws move to the σ whose loss varies most.

A diffusion objective is an expectation over noise levels,
:math:`\mathcal L = E_{t \sim p}\,E_{x_0, \varepsilon}\, f(x_0, \varepsilon, t)`, with
:math:`p` its ``t_sampler``'s law and :math:`f` the weighted per-example loss. Any proposal
:math:`q` with the same support gives the same objective when each draw is multiplied by
:math:`p(t)/q(t)`; the proposal that minimises the variance of that estimate is
:math:`q^\star(t) \propto p(t)\sqrt{E[f^2 \mid t]}` (importance sampling; for the
likelihood weighting Song, Durkan, Murray & Ermon 2021, Sec. 5, fix such a :math:`q` in
closed form, and Kingma et al. 2021 (VDM) and Zheng et al. 2023 (i-DODE) reduce the same
variance by learning the schedule or the importance law).

:class:`AdaptiveSigma` learns :math:`q^\star` during training as a piecewise-constant
density ratio over the base law's quantiles: :math:`[0, 1)` is cut into :math:`K` bins of
equal :math:`p`-mass, :math:`u \in [k/K, (k+1)/K)` and :math:`t = F_p^{-1}(u)`. It keeps, per
bin, an exponential moving average :math:`m_k` of :math:`f^2` over the examples drawn there
(initialised by the bin's first draws), and draws bin :math:`k` with probability

.. math:: q_k = (1 - \epsilon)\,\frac{\sqrt{m_k}}{\sum_j \sqrt{m_j}} + \frac{\epsilon}{K},

then :math:`u` uniformly inside it. Each example's loss is multiplied by
:math:`p_k/q_k = 1/(K q_k)` (at most :math:`1/\epsilon`) with :math:`k` the bin it was drawn
in, so the expected loss, and its gradient, are those of the wrapped objective whatever
:math:`q` is: the σ question's *weighting* is left to the objective; only where the training
effort goes adapts. Until a bin has been drawn its :math:`\sqrt{m_k}` is taken as the mean
of the visited bins'; at the start :math:`q = p`. :math:`q_k \propto \sqrt{m_k}` minimises
the variance of the loss estimate (the per-draw variance is
:math:`K^{-2}\sum_k m_k/q_k - \mathcal L^2`), a proxy for that of the gradient. Around
:class:`~scorekit.losses.UncertaintyWeighted`, whose loss is
:math:`\bar\ell e^{-u} + u`, the statistic is taken of :math:`\bar\ell e^{-u}`, the part
that scales the network's gradient.

The statistics live on the training device and are updated with tensor operations only
(no value is read on the host in a step). :class:`~scorekit.train.Trainer` updates them
once per optimiser step from all its micro-batches and, under ``DistributedDataParallel``,
from all processes (summed with ``all_reduce``), so every process draws from the same
proposal and a run on :math:`W` processes equals one with ``accum`` :math:`= W`; used on
its own, each training call with gradients updates them. They are buffers, saved in the
checkpoint under ``objective.`` and restored on resume.

References:
    Song, Durkan, Murray & Ermon, "Maximum Likelihood Training of Score-Based Diffusion
    Models", NeurIPS 2021, Sec. 5 (importance sampling of :math:`t`).
    Kingma, Salimans, Poole & Ho, "Variational Diffusion Models", NeurIPS 2021, Sec. 5.2
    (a noise schedule learned to minimise the variance of the loss).
    Zheng, Lu, Chen, Zhang & Zhu, "Improved Techniques for Maximum Likelihood Estimation for
    Diffusion ODEs", ICML 2023 (i-DODE: importance-sampled training for likelihood).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .._validate import check_int, check_positive, check_tensor
from ..core.random import rand
from ..core.weighting import GridT, TimeSampler
from .uncertainty import UncertaintyWeighted

__all__ = ["AdaptiveSigma"]


def _time_sampler(objective) -> TimeSampler:
    """The law of ``t`` of the innermost objective under ``objective``'s wrappers."""
    obj = objective
    while obj is not None:
        ts = getattr(obj, "t_sampler", None)
        if ts is not None:
            return ts
        obj = getattr(obj, "objective", None)
    raise ValueError(f"objective {objective!r} has no t_sampler to adapt")


class AdaptiveSigma(nn.Module):
    r"""An objective whose noise levels are drawn from a learned, variance-reducing proposal
    and reweighted so that its expectation is the wrapped objective's (see the module
    docstring): per example :math:`f(x_0, t)/(K q_k)` with :math:`t` drawn in bin :math:`k`.

    It is a module: :class:`~scorekit.train.Trainer` saves its statistics in the checkpoint
    under ``objective.``. Wrap it last (outside :class:`~scorekit.losses.Dequantized`,
    :class:`~scorekit.losses.Augmented` and
    :class:`~scorekit.losses.UncertaintyWeighted`). Pass :meth:`forward` the ``t`` that
    :meth:`sample_t` returned (the trainer does): its bin is then the one it was drawn in,
    whatever rounding to the data's dtype did; another ``t`` is binned by value.

    Arguments:
        objective: an objective whose (innermost) ``t_sampler`` is a continuous
            :class:`~scorekit.core.weighting.TimeSampler` (drawn by its inverse CDF).
        bins: :math:`K`, the number of equal-mass bins of the base law.
        decay: the moving average's decay per update, in :math:`[0, 1)`.
        mix: :math:`\epsilon \in (0, 1]`, the share of draws spread as the base law (it
            bounds each factor by :math:`1/\epsilon`); 1 turns adaptation off.

    Example:
        >>> import torch, scorekit as sk
        >>> obj = AdaptiveSigma(sk.make_objective("edm", sk.EDM()))
        >>> model = sk.ScoreModel(sk.MLP(2, hidden=8, depth=1), sk.EDM(), "x0")
        >>> obj(model, torch.randn(4, 2)).shape
        torch.Size([4])
    """

    def __init__(self, objective, bins: int = 32, decay: float = 0.99, mix: float = 0.1):
        super().__init__()
        if not callable(objective) or not hasattr(objective, "sample_t"):
            raise ValueError(f"objective must be a scorekit objective, got {objective!r}")
        if isinstance(objective, AdaptiveSigma):
            raise ValueError("objective already has an adaptive sigma law; wrap it once")
        base = _time_sampler(objective)
        if not isinstance(base, TimeSampler) or isinstance(base, GridT):
            raise ValueError(
                "adaptive sigma draws need a continuous law of t drawn by its inverse CDF (a "
                f"TimeSampler other than GridT); the objective's t_sampler is {base!r}"
            )
        self.objective, self.process, self.base = objective, objective.process, base
        self.bins = check_int("bins", bins, minimum=2)
        decay = float(decay)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        self.decay = decay
        self.mix = check_positive("mix", mix)
        if self.mix > 1.0:
            raise ValueError(f"mix must be in (0, 1], got {mix!r}")
        u = torch.arange(1, self.bins, dtype=torch.float64) / self.bins
        lo, hi = base.bounds(self.process)
        # K - 1 inner edges, increasing; float64 whatever the module is cast to
        self._edges = {torch.device("cpu"): base.inverse(self.process, u).clamp_(lo, hi)}
        self.register_buffer("second_moment", torch.ones(self.bins, dtype=torch.float32))
        self.register_buffer("visits", torch.zeros(self.bins, dtype=torch.float32))
        #: per optimiser step (Trainer): updates wait for :meth:`end_step`
        self.update_per_step = False
        self._pending: tuple[Tensor, Tensor] | None = None  # (sums, counts): not buffers
        self._drawn: tuple[Tensor, Tensor, Tensor] | None = None  # last sample_t's (t, k, q)
        self.last_factor: Tensor | None = None  # the factors of the last forward

    @property
    def edges(self) -> Tensor:
        """The inner bin edges in ``t`` (float64, on the CPU), shape ``(K - 1,)``."""
        return self._edges[torch.device("cpu")]

    def _edges_on(self, device: torch.device) -> Tensor:
        if device not in self._edges:
            self._edges[device] = self.edges.to(device)
        return self._edges[device]

    def proposal(self) -> Tensor:
        r""":math:`q_k`, shape ``(K,)``, float64 on the statistics' device."""
        r = self.second_moment.double().clamp_min(0).sqrt()
        seen = self.visits > 0
        n_seen = seen.sum()
        fill = torch.where(n_seen > 0, (r * seen).sum() / n_seen.clamp_min(1), 1.0)
        r = torch.where(seen, r, fill)
        total = r.sum()
        share = torch.where(total > 0, r / total.clamp_min(1e-300), 1.0 / self.bins)
        return share.mul(1.0 - self.mix).add_(self.mix / self.bins)

    def sample_t(self, batch, generator=None, dtype=torch.float32, device=None) -> Tensor:
        """Draw ``batch`` noise levels from the current proposal, shape ``(B,)``."""
        batch = check_int("batch", batch, minimum=1)
        dev = self.second_moment.device if device is None else torch.device(device)
        q = self.proposal().to(dev)
        cdf = torch.cumsum(q, 0)
        cdf = cdf / cdf[-1]
        k = torch.searchsorted(cdf, rand((batch,), generator, torch.float64, dev), right=True)
        k = k.clamp_(max=self.bins - 1)
        u = (k.to(torch.float64) + rand((batch,), generator, torch.float64, dev)) / self.bins
        lo, hi = self.base.bounds(self.process)
        t = self.base.inverse(self.process, u).clamp_(lo, hi).to(dtype)
        self._drawn = (t, k, q)  # forward reweights by this very q
        return t

    def bin_of(self, t: Tensor) -> Tensor:
        """The bin of each ``t`` by its value (shape ``(B,)``, long)."""
        edges = self._edges_on(t.device)
        return torch.searchsorted(edges, t.to(torch.float64).contiguous(), right=True)

    def forward(self, model, x0: Tensor, t=None, generator=None, **cond) -> Tensor:
        r"""Per-example :math:`f/(K q_k)`, shape ``(B,)``; ``t`` is drawn when ``None``. In
        training mode with gradients, the draws' statistics are recorded."""
        check_tensor("x0", x0, min_dim=2)
        if x0.device != self.second_moment.device:
            raise ValueError(
                f"AdaptiveSigma's statistics are on {self.second_moment.device}, x0 on "
                f"{x0.device}; move the objective with .to(device)"
            )
        if t is None:
            t = self.sample_t(x0.shape[0], generator, x0.dtype, x0.device)
        drawn = self._drawn
        if drawn is not None and drawn[0] is t:
            _, k, q = drawn
        else:
            k, q = self.bin_of(t), self.proposal()
        loss = self.objective(model, x0, t=t, generator=generator, **cond)
        q = q.to(loss.device)
        factor = (1.0 / (self.bins * q[k])).to(loss.dtype)
        self.last_factor = factor.detach()
        if self.training and torch.is_grad_enabled():
            stat = loss.detach()
            if isinstance(self.objective, UncertaintyWeighted):  # the part scaling the net
                stat = stat - self.objective.log_variance(t).detach().to(stat.dtype)
            self._record(k, stat)
        return loss * factor

    @torch.no_grad()
    def _record(self, k: Tensor, stat: Tensor) -> None:
        """Add each draw's :math:`f^2` to its bin (non-finite ones are left out), then
        update now, or at :meth:`end_step` when :attr:`update_per_step`."""
        m = self.second_moment
        sq = stat.to(m.device, torch.float32).square()
        ok = torch.isfinite(sq)
        k = k.to(m.device)
        sums = torch.zeros_like(m).scatter_add_(0, k, torch.where(ok, sq, 0.0))
        counts = torch.zeros_like(m).scatter_add_(0, k, ok.to(m.dtype))
        if self._pending is not None:
            sums, counts = sums + self._pending[0], counts + self._pending[1]
        self._pending = (sums, counts)
        if not self.update_per_step:
            self.end_step()

    @torch.no_grad()
    def end_step(self) -> None:
        """Fold the recorded draws into :math:`m_k` (summed over processes when
        ``torch.distributed`` is initialised): one update per bin drawn, a bin's first
        update setting :math:`m_k` to its mean."""
        if self._pending is None:
            return
        sums, counts = self._pending
        self._pending = None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            both = torch.stack([sums, counts])
            dist.all_reduce(both)
            sums, counts = both[0], both[1]
        m = self.second_moment
        seen = counts > 0
        mean = sums / counts.clamp_min(1)
        first = self.visits == 0
        new = torch.where(first, mean, m * self.decay + mean * (1 - self.decay))
        m.copy_(torch.where(seen, new, m))
        self.visits.add_(seen.to(self.visits.dtype))

    @torch.no_grad()
    def proposal_curve(self) -> dict[str, list[float]]:
        r"""The proposal per bin (read on the host: call it after training, not in a step):
        ``{"sigma_low", "sigma_high", "sigma_mid", "q", "draw_rate"}``: each bin's σ range
        (its mid-point in base-law mass), :math:`q_k` and :math:`K q_k`, how many times more
        often than the base law it is drawn (each draw's loss is divided by it)."""
        K = self.bins
        u = torch.arange(0, 2 * K + 1, dtype=torch.float64) / (2 * K)
        lo, hi = self.base.bounds(self.process)
        u = u.clamp(1e-12, 1 - 1e-12)
        sig = self.process.sigma(self.base.inverse(self.process, u).clamp_(lo, hi))
        q = self.proposal().cpu()
        return {
            "sigma_low": sig[0:-1:2].tolist(),
            "sigma_high": sig[2::2].tolist(),
            "sigma_mid": sig[1::2].tolist(),
            "q": q.tolist(),
            "draw_rate": (q * K).tolist(),
        }

    def __repr__(self) -> str:
        return (
            f"AdaptiveSigma({self.objective!r}, bins={self.bins}, decay={self.decay}, "
            f"mix={self.mix})"
        )

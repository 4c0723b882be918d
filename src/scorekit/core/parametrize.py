r"""What a network predicts, and the one place where predictions are converted.

With :math:`x = \alpha x_0 + \sigma \varepsilon`, every target is an affine
function of :math:`(x, \varepsilon)`:

.. math::
    s = \nabla_x \log p_t(x) = -\varepsilon / \sigma, \qquad
    \hat x_0 = (x + \sigma^2 s) / \alpha \ \ \text{(Tweedie)}, \qquad
    v = \alpha \varepsilon - \sigma x_0 .

The flow velocity :math:`u = dx_t/dt = \alpha' x_0 + \sigma'\varepsilon` of flow matching is
affine in :math:`(x, \varepsilon)` too, :math:`u = (\alpha'/\alpha)\,x + \gamma\,\varepsilon` with
:math:`\gamma = \sigma' - \alpha'\sigma/\alpha = g^2/(2\sigma)`, so a model that predicts
``"velocity"`` answers every other target through the same :math:`\varepsilon` (Lipman et al.
2023; Kingma & Gao 2023).

An energy model predicts :math:`E(x, t)` with :math:`s = -\nabla_x E`.

Samplers and losses only talk to a :class:`ScoreModel`, which answers every
prediction whatever the network was trained on, so no sampler branches on the
parametrisation.

References:
    Vincent (2011); Ho et al. (2020); Salimans & Ho, "Progressive Distillation"
    (2022) for v; Karras et al. (2022) for the preconditioning; Efron,
    "Tweedie's formula and selection bias" (2011).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .._validate import check_choice, check_positive
from .processes import Process, broadcast_like

__all__ = [
    "MODEL_PREDICTIONS",
    "PREDICTIONS",
    "EDMPrecond",
    "ScoreModel",
    "convert",
    "edm_coefficients",
    "velocity_coefficients",
]

PREDICTIONS = ("score", "eps", "x0", "v")
#: what a :class:`ScoreModel` can predict and answer: :data:`PREDICTIONS` and the flow velocity
MODEL_PREDICTIONS = (*PREDICTIONS, "velocity")


def _to_eps(kind: str, pred: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    if kind == "eps":
        return pred
    if kind == "score":
        return -sigma * pred
    if kind == "x0":
        return (x - alpha * pred) / sigma
    # v: [x; v] = [[a, s], [-s, a]] [x0; eps]  =>  eps = (s x + a v) / (a^2 + s^2)
    return (sigma * x + alpha * pred) / (alpha**2 + sigma**2)


def _from_eps(kind: str, eps: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    if kind == "eps":
        return eps
    if kind == "score":
        return -eps / sigma
    x0 = (x - sigma * eps) / alpha
    if kind == "x0":
        return x0
    return alpha * eps - sigma * x0


def velocity_coefficients(process: Process, t: Tensor) -> tuple[Tensor, Tensor]:
    r"""The coefficients :math:`(c, \gamma)` of the flow velocity
    :math:`u = dx_t/dt = c\,x + \gamma\,\varepsilon` at a fixed :math:`x_t`:

    .. math:: c = \alpha'/\alpha, \qquad \gamma = \sigma' - \sigma\,\alpha'/\alpha
              = g(t)^2 / (2\sigma(t)),

    (:math:`c = 0`, :math:`\gamma = 1/(1 - t)` for :class:`~scorekit.RectifiedFlow`), so
    :math:`\hat u - u = \gamma\,(\hat\varepsilon - \varepsilon)` and the probability-flow
    drift :math:`f x - \tfrac12 g^2 s` is :math:`u` itself (Lipman et al. 2023; Kingma &
    Gao 2023).

    Arguments:
        process: the noise process.
        t: times, shape ``(B,)`` or ``()``.

    Returns:
        ``(c, gamma)``, each of the shape of ``t``.
    """
    if not isinstance(process, Process):
        raise ValueError(f"process must be a scorekit Process, got {type(process).__name__}")
    if not isinstance(t, (Tensor, float, int)) or isinstance(t, bool):
        raise ValueError(f"t must be a tensor of times or a number, got {type(t).__name__}")
    return _velocity_coefficients(process, process.check_t(t))


def _velocity_coefficients(process: Process, t: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`velocity_coefficients` without the checks (inside a step: no value is read)."""
    dla = process.dlog_alpha(t)
    return dla, process.d_sigma(t) - dla * process.sigma(t)


def convert(
    pred: Tensor,
    source: str,
    target: str,
    x: Tensor,
    alpha: Tensor | float,
    sigma: Tensor | float,
) -> Tensor:
    r"""Convert a prediction between ``"score"``, ``"eps"``, ``"x0"`` and ``"v"``.

    Arguments:
        pred: the prediction, shape ``(B, *D)``.
        source, target: one of :data:`PREDICTIONS`.
        x: the noised input :math:`x_t`, shape ``(B, *D)``.
        alpha, sigma: :math:`\alpha(t), \sigma(t)`, scalars or shape ``(B,)``.

    Returns:
        The prediction in the ``target`` parametrisation, shape ``(B, *D)``.

    Example:
        >>> x, eps = torch.randn(4, 2), torch.randn(4, 2)
        >>> s = convert(eps, "eps", "score", x, 1.0, 0.5)
        >>> torch.allclose(s, -eps / 0.5)
        True
    """
    check_choice("source", source, PREDICTIONS)
    check_choice("target", target, PREDICTIONS)
    if pred.shape != x.shape:
        raise ValueError(f"pred must have the shape of x {tuple(x.shape)}, got {tuple(pred.shape)}")
    if source == target:
        return pred
    a, s = broadcast_like(alpha, x), broadcast_like(sigma, x)
    return _from_eps(target, _to_eps(source, pred, x, a, s), x, a, s)


class ScoreModel(nn.Module):
    r"""Any ``net(x, t, **cond)`` that predicts one of score / eps / x0 / v / energy,
    answering all.

    Arguments:
        net: callable ``net(x, t, **cond)`` with ``x`` of shape ``(B, *D)`` and ``t`` of
            shape ``(B,)``; returns a tensor of shape ``(B, *D)`` (or ``(B,)`` for an energy).
            ``cond`` is whatever conditioning the network takes (class labels ``y=``, ...),
            passed through unchanged by every method.
        process: the :class:`~scorekit.core.processes.Process` that defines ``t``.
        prediction: what ``net`` predicts: ``"score"``, ``"eps"``, ``"x0"``, ``"v"``
            or ``"energy"`` (:math:`s = -\nabla_x E`, by autograd; the graph is kept
            when gradients are enabled, so a loss on the score trains the energy).
        data_shape: the shape ``D`` of one example, when known (then
            ``scorekit.sample(model, n)`` needs no shape); default: ``net.data_shape``.

    Calling the model returns the score :math:`\nabla_x \log p_t(x)`. Nothing here reads
    the values of ``x`` or ``t`` (no host synchronisation on an accelerator).

    Example:
        >>> from scorekit.core.processes import VE
        >>> m = ScoreModel(lambda x, t: torch.zeros_like(x), VE(), prediction="eps")
        >>> m(torch.randn(3, 2), torch.full((3,), 0.5)).shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        net: Callable[..., Tensor] | None,
        process: Process,
        prediction: str = "score",
        data_shape: tuple[int, ...] | None = None,
    ):
        super().__init__()
        if net is not None and not callable(net):
            raise ValueError(f"net must be callable (or None), got {type(net).__name__}")
        if not isinstance(process, Process):
            raise ValueError(f"process must be a scorekit Process, got {type(process).__name__}")
        self.prediction = check_choice("prediction", prediction, MODEL_PREDICTIONS + ("energy",))
        self.net = net
        self.process = process
        if data_shape is None:
            data_shape = getattr(net, "data_shape", None)
        self.data_shape = None if data_shape is None else tuple(int(d) for d in data_shape)
        #: the data's normalisation (set by ``load_model``): model space = (x - loc) / scale
        self.normalizer = None

    def _time(self, x: Tensor, t: Tensor | float) -> Tensor:
        if isinstance(t, Tensor):
            t = t.to(dtype=x.dtype, device=x.device)
            if t.dim() == 0:
                t = t.expand(x.shape[0])
        else:
            t = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
        if t.shape != (x.shape[0],):
            raise ValueError(
                f"t must be a scalar or of shape (B,) = ({x.shape[0]},), got {tuple(t.shape)}"
            )
        return t

    def raw(self, x: Tensor, t: Tensor, **cond) -> Tensor:
        """The network's own output (``t`` already of shape ``(B,)``)."""
        return self.net(x, t, **cond)

    def energy(self, x: Tensor, t: Tensor | float, **cond) -> Tensor:
        """Energy :math:`E(x, t)`, shape ``(B,)``; only for ``prediction="energy"``."""
        if self.prediction != "energy":
            raise ValueError(
                f"energy() needs prediction='energy', this model predicts {self.prediction!r}"
            )
        e = self.raw(x, self._time(x, t), **cond)
        if e.shape != (x.shape[0],):
            raise ValueError(
                f"an energy net must return shape (B,) = ({x.shape[0]},), got {tuple(e.shape)}"
            )
        return e

    def _energy_score(self, x: Tensor, t: Tensor, cond: dict) -> Tensor:
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            xi = x if x.requires_grad else x.detach().requires_grad_(True)
            e = self.energy(xi, t, **cond)
            (grad,) = torch.autograd.grad(e.sum(), xi, create_graph=create_graph)
        return -grad

    def predict(self, x: Tensor, t: Tensor | float, target: str = "score", **cond) -> Tensor:
        """The model's prediction of ``target`` (one of :data:`MODEL_PREDICTIONS`) at
        ``(x, t)``."""
        check_choice("target", target, MODEL_PREDICTIONS)
        t = self._time(x, t)
        if self.prediction == "energy":
            out, kind = self._energy_score(x, t, cond), "score"
        else:
            out, kind = self.raw(x, t, **cond), self.prediction
            if out.shape != x.shape:
                raise ValueError(
                    f"net output must have the shape of x {tuple(x.shape)}, got {tuple(out.shape)}"
                )
        if kind == target:
            return out
        alpha, sigma = self.process.marginal(t)
        if "velocity" not in (kind, target):
            return convert(out, kind, target, x, alpha, sigma)
        dla, gamma = _velocity_coefficients(self.process, t)
        a, s = broadcast_like(alpha, x), broadcast_like(sigma, x)
        c, g = broadcast_like(dla, x), broadcast_like(gamma, x)
        if kind == "velocity":  # u = c x + g eps
            return _from_eps(target, (out - c * x) / g, x, a, s)
        return c * x + g * _to_eps(kind, out, x, a, s)

    def forward(self, x: Tensor, t: Tensor | float, **cond) -> Tensor:
        r"""The score :math:`\nabla_x \log p_t(x)`, shape ``(B, *D)``."""
        return self.predict(x, t, "score", **cond)

    def score(self, x: Tensor, t: Tensor | float, **cond) -> Tensor:
        r"""The score :math:`\nabla_x \log p_t(x)`."""
        return self.predict(x, t, "score", **cond)

    def eps(self, x: Tensor, t: Tensor | float, **cond) -> Tensor:
        r"""The noise :math:`\hat\varepsilon = -\sigma s`."""
        return self.predict(x, t, "eps", **cond)

    def x0(self, x: Tensor, t: Tensor | float, **cond) -> Tensor:
        r"""The denoiser :math:`\hat x_0 = (x + \sigma^2 s)/\alpha` (Tweedie)."""
        return self.predict(x, t, "x0", **cond)

    def v(self, x: Tensor, t: Tensor | float, **cond) -> Tensor:
        r"""The velocity :math:`v = \alpha\varepsilon - \sigma x_0`."""
        return self.predict(x, t, "v", **cond)

    def velocity(self, x: Tensor, t: Tensor | float, **cond) -> Tensor:
        r"""The flow velocity :math:`u = \alpha' \hat x_0 + \sigma'\hat\varepsilon`
        (``dx_t/dt``; :math:`\hat\varepsilon - \hat x_0` for :class:`RectifiedFlow`)."""
        return self.predict(x, t, "velocity", **cond)


def edm_coefficients(
    sigma: Tensor, sigma_data: float = 0.5
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""EDM preconditioning :math:`(c_{skip}, c_{out}, c_{in}, c_{noise})` at noise ``sigma``:

    .. math::
        c_{skip} = \frac{\sigma_d^2}{\sigma^2 + \sigma_d^2},\quad
        c_{out} = \frac{\sigma\sigma_d}{\sqrt{\sigma^2 + \sigma_d^2}},\quad
        c_{in} = \frac{1}{\sqrt{\sigma^2 + \sigma_d^2}},\quad
        c_{noise} = \tfrac14 \ln\sigma .

    ``sigma`` must be finite and > 0 (checked here, which reads its values;
    :class:`EDMPrecond` uses the same formula unchecked inside every forward pass).

    References:
        Karras et al. (2022), Table 1 and Appendix B.6.
    """
    sigma_data = check_positive("sigma_data", sigma_data)
    if not isinstance(sigma, Tensor):
        raise ValueError(f"sigma must be a tensor, got {type(sigma).__name__}")
    if sigma.numel() and not bool(((sigma > 0) & torch.isfinite(sigma)).all()):
        raise ValueError(
            f"sigma must be finite and > 0, got values in [{float(sigma.min())}, "
            f"{float(sigma.max())}]"
        )
    return _edm_coefficients(sigma, sigma_data)


def _edm_coefficients(sigma: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    c_in = sigma.square().add_(sigma_data**2).rsqrt_()  # 1 / sqrt(sigma^2 + sigma_d^2)
    c_skip = c_in.square().mul_(sigma_data**2)
    c_out = (sigma * c_in).mul_(sigma_data)
    return c_skip, c_out, c_in, sigma.log().mul_(0.25)


class EDMPrecond(nn.Module):
    r"""Wrap a raw network :math:`F` as the EDM denoiser
    :math:`D(x, \sigma) = c_{skip} x + c_{out} F(c_{in} x, c_{noise})`; predicts ``x0``.

    For a process with :math:`\alpha \neq 1` the input is rescaled,
    :math:`\hat x = x/\alpha`, :math:`\hat\sigma = \sigma/\alpha`, so that
    :math:`\hat x = x_0 + \hat\sigma \varepsilon` (Karras et al. 2022, eq. 4).
    Use as ``ScoreModel(EDMPrecond(F, process), process, prediction="x0")``.
    """

    def __init__(self, net: nn.Module, process: Process, sigma_data: float = 0.5):
        super().__init__()
        if not callable(net):
            raise ValueError(f"net must be a callable network, got {type(net).__name__}")
        if not isinstance(process, Process):
            raise ValueError(f"process must be a scorekit Process, got {type(process).__name__}")
        self.net = net
        self.process = process
        self.sigma_data = check_positive("sigma_data", sigma_data)
        self.data_shape = getattr(net, "data_shape", None)

    def forward(self, x: Tensor, t: Tensor, **cond) -> Tensor:
        if self.process.unit_alpha:  # VE, EDM: x_hat = x, sigma_hat = sigma
            sigma = self.process.sigma(t)
            s_hat, xh = (sigma if sigma.dtype == x.dtype else sigma.to(x.dtype)), x
        else:
            alpha, sigma = self.process.marginal(t)
            alpha, sigma = alpha.to(x), sigma.to(x)
            s_hat, xh = sigma / alpha, x / broadcast_like(alpha, x)
        c_skip, c_out, c_in, c_noise = _edm_coefficients(s_hat, self.sigma_data)
        f = self.net(broadcast_like(c_in, x) * xh, c_noise, **cond)
        return torch.addcmul(broadcast_like(c_skip, x) * xh, broadcast_like(c_out, x), f)

r"""Recipes, a training run from JSON-able settings, and the test likelihood of a model.

A **recipe** (:data:`RECIPES`) is a named, data-aware set of choices: process,
parametrisation, loss and its noise-level law, network and width, optimiser, learning-rate
schedule and budget, EMA, batch, dequantization, and the sampler and step count for
evaluation. ``scorekit train --data X`` picks one from the shape of the examples
(:func:`choose_recipe`: 2-D toys, other vectors, small images up to 16×16, larger images),
``--recipe NAME`` by name; flags and ``--config`` override single choices. The recipe's
name and every choice are stored in the checkpoint (``"cli"``) and printed when training
starts (:func:`describe`); ``scorekit recipes`` lists them with what each was measured to
reach (:func:`measured`, written by ``make bench-real``).

The settings (what ``scorekit train`` stores in a checkpoint under ``"cli"``) name the
data, the process, the objective, the network and the training options;
:func:`build_process`, :func:`net_config_for` and :func:`build_run_model` turn them into
objects with sensible defaults:

* VE's :math:`\sigma_{max}` defaults to the largest pairwise distance of the normalised
  data (Song & Ermon 2020, Technique 1);
* the network is a U-Net for images ``(C, H, W)`` with sides >= 8, otherwise an MLP
  on the flattened data; with the EDM process it embeds :math:`\log t`;
* the prediction is ``eps``, except ``x0`` with EDM preconditioning for the ``"edm"``
  objective (Karras et al. 2022) and ``energy`` for the energy MLP;
* with ``"conditional": {"label_dropout": p}`` (:func:`conditional_settings`) the run is
  class-conditional: the network takes labels (``num_classes`` :math:`K`, the largest label
  of the data + 1) and :func:`conditional_objective` wraps the objective in
  :class:`~scorekit.losses.LabelDropout` (label dropout :math:`p`, for classifier-free
  guidance); the trainer reads ``(x, y)`` pairs from the dataset.

:func:`nll_report` gives the negative log-likelihood in *data* coordinates,
:math:`-\log p(x) = -\log \tilde p(\tilde x) + \sum \log \mathrm{scale}`, through
:mod:`scorekit.likelihood`.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import torch

__all__ = [
    "DEFAULTS",
    "LABEL_DROPOUT",
    "PROCESSES",
    "RECIPES",
    "choose_recipe",
    "describe",
    "measured",
    "recipe_settings",
    "build_process",
    "build_run",
    "build_run_model",
    "conditional_objective",
    "conditional_settings",
    "data_meta",
    "model_net_config",
    "net_config_for",
    "nll_report",
]

PROCESSES = {
    "ve": "VE",
    "vp": "VP",
    "subvp": "SubVP",
    "cosine": "CosineVP",
    "edm": "EDM",
    "rectified_flow": "RectifiedFlow",
}


DEFAULTS = {
    "data": "moons",
    "split": "train",
    "n": 20_000,
    "key": None,
    "image_size": None,
    "normalize": "auto",
    "recipe": None,
    "process": {"name": "ve"},
    "loss": "dsm",
    "loss_kwargs": {},
    "net": {"name": "auto"},
    "prediction": "auto",
    "dequantize": False,
    "weighting": "fixed",
    "sigma_sampling": "fixed",
    "augment": 0.0,
    "val_fraction": 0.0,
    "conditional": None,
    "train": {},
    "sample": {"sampler": "heun", "steps": 50},
}


# Each recipe overlays DEFAULTS. "sigma_data": "auto" is the standard deviation of the
# training examples in model space. The figures of `scorekit recipes` come from
# measured.json, written by `make bench-real` (benchmarks/real_data.py).
def _edm(sigma_min, p_mean, p_std, net, batch, lr, steps, dequantize=False) -> dict:
    """The settings of an EDM recipe: EDM process and loss (ln sigma ~ N(p_mean, p_std^2),
    sigma_data from the data), the network, AdamW with a cosine schedule and warm-up 500,
    EMA 0.999, clip 1, Heun with 50 steps for evaluation."""
    return {
        "process": {"name": "edm", "sigma_min": sigma_min},
        "loss": "edm",
        "loss_kwargs": {"sigma_data": "auto", "p_mean": p_mean, "p_std": p_std},
        "net": net,
        "dequantize": dequantize,
        "train": {
            "schedule": "cosine",
            "warmup": 500,
            "ema_decay": 0.999,
            "grad_clip": 1.0,
            "batch_size": batch,
            "lr": lr,
            "steps": steps,
        },  # fmt: skip
        "sample": {"sampler": "heun", "steps": 50},
    }


RECIPES: dict[str, dict] = {
    "toy-2d": {
        "summary": "2-D points: EDM-preconditioned residual MLP, EDM loss",
        "when": "examples of shape (2,)",
        "settings": _edm(
            0.001, -1.5, 1.5, {"name": "mlp", "hidden": 256, "depth": 4}, 512, 1e-3, 10_000
        ),  # fmt: skip
    },
    "toy-2d-nll": {
        "summary": "2-D points for likelihood: toy-2d with more weight on small noise "
        "(ln sigma ~ N(-2, 2^2)) and about 15 CPU-minutes of steps; for the lowest NLL train "
        "two seeds and score their mixture (scorekit likelihood RUN RUN)",
        "when": "by name only",
        "settings": _edm(
            0.001, -2.0, 2.0, {"name": "mlp", "hidden": 256, "depth": 4}, 512, 1e-3, 32_000
        ),  # fmt: skip
    },
    "vectors": {
        "summary": "vectors and tables: EDM-preconditioned residual MLP, EDM loss",
        "when": "any other examples that are not images",
        "settings": _edm(
            0.002, -1.2, 1.2, {"name": "mlp", "hidden": 512, "depth": 4}, 128, 2e-3, 10_000
        ),  # fmt: skip
    },
    "small-images": {
        "summary": "images up to 16x16 (digits): EDM-preconditioned U-Net, EDM loss, "
        "dequantized pixels",
        "when": "images (C, H, W) with H, W <= 16",
        "settings": _edm(
            0.002,
            -1.2,
            1.2,
            {"name": "unet", "base": 32, "mults": [1, 2]},
            64,
            1e-3,
            4000,
            dequantize=True,
        ),  # fmt: skip
    },
    "small-images-nll": {
        "summary": "small images for bits/dim: EDM-preconditioned MLP with input Fourier "
        "features (one and two periods per pixel bin) and dropout, more weight on small "
        "noise, dequantized pixels",
        "when": "by name only",
        "settings": _edm(
            0.002,
            -2.0,
            2.0,
            {
                "name": "mlp",
                "hidden": 512,
                "depth": 4,
                "fourier_features": [8.0, 16.0],
                "dropout": 0.3,
            },
            128,
            1e-3,
            10_000,
            dequantize=True,
        ),  # fmt: skip
    },
    "images": {
        "summary": "larger images: EDM-preconditioned U-Net with three levels, EDM loss, "
        "dequantized pixels",
        "when": "images (C, H, W) larger than 16x16",
        "settings": _edm(
            0.002,
            -1.2,
            1.2,
            {"name": "unet", "base": 64, "mults": [1, 2, 2]},
            32,
            2e-4,
            20_000,
            dequantize=True,
        ),  # fmt: skip
    },
    "ve-dsm": {
        "summary": "scorekit 0.1's default: VE with sigma_max from the data, sigma^2-weighted "
        "DSM, eps prediction, linear warm-up",
        "when": "by name only",
        "settings": {
            "process": {"name": "ve"},
            "loss": "dsm",
            "net": {"name": "auto"},
            "train": {"schedule": "warmup", "batch_size": 256, "lr": 2e-3, "steps": 2000},
            "sample": {"sampler": "heun", "steps": 100},
        },
    },
}


def choose_recipe(shape: tuple[int, ...]) -> str:
    """The recipe for examples of ``shape``: ``toy-2d`` for ``(2,)``, ``small-images`` for
    images ``(C, H, W)`` up to 16×16, ``images`` for larger ones, ``vectors`` otherwise."""
    shape = tuple(shape)
    if shape == (2,):
        return "toy-2d"
    if len(shape) == 3 and shape[0] in (1, 3, 4) and min(shape[1:]) >= 8:
        return "small-images" if max(shape[1:]) <= 16 else "images"
    return "vectors"


def recipe_settings(name: str) -> dict:
    """A fresh copy of the settings of recipe ``name`` over :data:`DEFAULTS`."""
    if name not in RECIPES:
        raise ValueError(f"--recipe must be one of {', '.join(RECIPES)}; got {name!r}")
    base = json.loads(json.dumps(DEFAULTS))
    for k, v in json.loads(json.dumps(RECIPES[name]["settings"])).items():
        base[k] = {**base[k], **v} if isinstance(base.get(k), dict) and k != "net" else v
    base["recipe"] = name
    return base


def measured() -> dict:
    """What ``make bench-real`` measured for each recipe (``measured.json`` beside this
    module: ``{recipe: [{"what", "value", "budget", "source"}, ...]}``), or ``{}``."""
    p = Path(__file__).with_name("measured.json")
    try:
        out = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return out if isinstance(out, dict) else {}


def describe(s: dict, shape: tuple[int, ...], n: int, auto: bool) -> str:
    """The choices of a run in a few lines (printed when training starts)."""
    t, loss = s["train"], s["loss"]
    budget = f"{t['seconds'] / 60:g} min" if t.get("seconds") else f"{t.get('steps', 2000)} steps"
    how = f"auto for {n} examples of shape {tuple(shape)}" if auto else "chosen by name"
    lines = [
        f"recipe {s.get('recipe') or 'custom'} ({how})",
        f"  process {s['process']}; loss {loss} {s['loss_kwargs'] or ''}; "
        f"prediction {s['prediction']}",
        f"  network {s['net']}",
        f"  AdamW lr {t.get('lr', 2e-3):g}, batch {t.get('batch_size', 256)}, schedule "
        f"{t.get('schedule', 'warmup')} (warm-up {t.get('warmup', 100)}), budget {budget}, EMA "
        f"{t.get('ema_decay', 0.999):g}"
        + (", dequantized pixels" if s.get("dequantize") else "")
        + (", learned per-sigma weighting" if s.get("weighting") == "learned" else "")
        + (", adaptive sigma draws" if s.get("sigma_sampling") == "adaptive" else "")
        + (f", augmented (p {s['augment']:g})" if s.get("augment") else "")
        + (
            ", post-hoc EMA widths " + ",".join(f"{w:g}" for w in t["posthoc_ema"])
            if t.get("posthoc_ema")
            else ""
        ),
        f"  evaluation sampler {s['sample']['sampler']}, {s['sample']['steps']} steps",
    ]
    return "\n".join(lines)


LABEL_DROPOUT = 0.1  # default probability of the null label in class-conditional training


def build_process(spec: dict, data: torch.Tensor):
    """The process of ``spec`` (``{"name": one of PROCESSES, **kwargs}``); VE's ``sigma_max``
    defaults to the largest pairwise distance of ``data`` (shape ``(N, *D)``, model space)."""
    from ..core import processes

    name = str(spec.get("name", "ve")).lower()
    if name not in PROCESSES:
        raise ValueError(f"process must be one of {sorted(PROCESSES)}, got {spec.get('name')!r}")
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    if name == "ve" and "sigma_max" not in kwargs:
        # Song & Ermon (2020), Technique 1: sigma_max = the largest pairwise distance.
        from ..noise.design import max_pairwise_distance

        dist, _, _ = max_pairwise_distance(data, generator=torch.Generator().manual_seed(0))
        kwargs["sigma_max"] = float(f"{max(dist, 1.0):.3g}")
    return processes.from_config({"name": PROCESSES[name], **kwargs})


def net_config_for(spec: dict, shape: tuple[int, ...], process, precond: bool = False) -> dict:
    """A full ``scorekit.nets`` config from a partial ``spec`` for examples of ``shape``.

    With the EDM process the network embeds :math:`\\log t` (``t = sigma`` spans decades),
    unless EDM preconditioning (``precond``) already hands it :math:`c_{noise} = \tfrac14
    \\log\\sigma`."""
    name = spec.get("name", "auto")
    if name == "auto":
        name = "unet" if len(shape) == 3 and shape[1] >= 8 and shape[2] >= 8 else "mlp"
    net = {k: v for k, v in spec.items() if k != "name"}
    if process.log_time and not precond:
        net.setdefault("time_input", "log_t")
    if name == "unet":
        if len(shape) != 3:
            raise ValueError(
                f"net 'unet' needs image data (C, H, W), got examples of shape {shape}"
            )
        net.setdefault("channels", shape[0])
        net.setdefault("mults", [1, 2] if max(shape[1:]) <= 16 else [1, 2, 2])
    else:
        net.setdefault("dim", math.prod(shape))
    return {"name": name, **net}


def build_run_model(settings: dict, shape: tuple[int, ...], process):
    """The untrained :class:`~scorekit.core.parametrize.ScoreModel` the settings describe."""
    from ..train.checkpoint import build_model

    energy = settings["net"].get("name") == "energy_mlp"
    edm = settings["loss"] == "edm" and not energy  # an energy is not preconditioned
    net = net_config_for(settings["net"], shape, process, precond=edm)
    prediction, precond = settings["prediction"], None
    if edm:
        precond = {"name": "edm", "sigma_data": settings["loss_kwargs"].get("sigma_data", 0.5)}
        prediction = "x0" if prediction == "auto" else prediction
    if net["name"] == "energy_mlp":
        prediction = "energy"
    if prediction == "auto":
        prediction = "eps"
    config = {"net": net, "process": process.config(), "prediction": prediction}
    return build_model({**config, "precond": precond})


def build_run(settings: dict, data) -> tuple:
    r"""The untrained model, the objective and the training examples of a run's
    ``settings`` (a recipe's, :func:`recipe_settings`, with any overrides) on ``data`` (a
    :class:`~scorekit.train.data.Dataset`): ``"sigma_data": "auto"`` becomes the data's
    standard deviation in model space; the process is built (VE's :math:`\sigma_{max}` from
    the data); the objective is wrapped in :class:`~scorekit.losses.Dequantized` when the
    recipe dequantizes discrete data (``data_meta(...)["bins"]`` levels over [-1, 1]), in
    :class:`~scorekit.losses.LabelDropout` for a class-conditional run, whose examples are
    then ``(x, y)`` pairs, in :class:`~scorekit.losses.Augmented` (non-leaky augmentation,
    the U-Net told the transform) when ``"augment"`` (the probability of each transform) is
    above 0, in :class:`~scorekit.losses.UncertaintyWeighted` when ``"weighting"`` is
    ``"learned"``, and last in :class:`~scorekit.losses.AdaptiveSigma` when
    ``"sigma_sampling"`` is ``"adaptive"``. ``settings`` is completed in place (process, network,
    sigma_data, classes), as a checkpoint stores it. Seed torch first: the network is
    initialised here.

    Returns:
        ``(model, objective, examples)`` for :class:`~scorekit.train.Trainer`.
    """
    from ..losses import Dequantized, make_objective

    s = settings
    if s["loss_kwargs"].get("sigma_data") == "auto":  # the data's own spread
        s["loss_kwargs"]["sigma_data"] = float(f"{float(data.x.std()):.3g}")
    process = build_process(s["process"], data.x)
    s["process"] = process.config() | {"name": s["process"].get("name", "ve")}
    objective = make_objective(s["loss"], process, **s["loss_kwargs"])
    bins = data_meta(s, data)["bins"]
    if s.get("dequantize") and bins:  # each example moves within its pixel's bin
        objective = Dequantized(objective, 2.0 / (bins - 1))
    examples = data.x
    if s["conditional"] is not None:  # the labels travel with x; the net takes y=
        objective = conditional_objective(s, data, objective)
        examples = data
    augment = s.get("augment", 0.0)
    if augment:  # the U-Net learns p(x | transform); samplers pass none: no transform
        from ..losses import AUGMENT_DIM, Augmented

        if len(data.shape) != 3 or net_config_for(s["net"], data.shape, process)["name"] != "unet":
            raise ValueError(
                f"--augment {augment:g}: augmentation needs images and the U-Net, got examples "
                f"of shape {tuple(data.shape)} and net {s['net'].get('name', 'auto')!r}"
            )
        if data.shape[1] != data.shape[2]:
            raise ValueError(
                f"--augment {augment:g}: its quarter turns need square images, got "
                f"{data.shape[1]}x{data.shape[2]}; pass --image-size N to resize them"
            )
        objective = Augmented(objective, p=augment)
        s["net"] = {**s["net"], "augment_dim": AUGMENT_DIM}
    weighting = s.get("weighting", "fixed")
    if weighting == "learned":  # outermost, so that the Trainer trains its parameters
        from ..losses import UncertaintyWeighted

        objective = UncertaintyWeighted(objective)
    elif weighting != "fixed":
        raise ValueError(f"weighting must be 'fixed' or 'learned', got {weighting!r}")
    sigma_sampling = s.get("sigma_sampling", "fixed")
    if sigma_sampling == "adaptive":  # last: its draws and factors are the trainer's
        from ..losses import AdaptiveSigma

        try:  # AdaptiveSigma refuses an objective whose levels come from a grid
            objective = AdaptiveSigma(objective)
        except ValueError:
            raise ValueError(
                f"--sigma-sampling adaptive needs a continuous law of noise levels; --loss "
                f"{s['loss']} draws them from a grid (use --sigma-sampling fixed, or another "
                "--loss)"
            ) from None
    elif sigma_sampling != "fixed":
        raise ValueError(f"sigma_sampling must be 'fixed' or 'adaptive', got {sigma_sampling!r}")
    model = build_run_model(s, data.shape, process)
    s["net"] = model_net_config(model)
    return model, objective, examples


def conditional_settings(value: dict | bool | None, where: str = "conditional") -> dict | None:
    """The ``"conditional"`` setting in its stored form: ``None`` (unconditional) or
    ``{"label_dropout": p, ...}`` with ``p`` in [0, 1] (default :data:`LABEL_DROPOUT`) and,
    once a run has seen its data, ``"num_classes"``. ``value`` may be ``None``, a bool or
    such a dict; ``where`` names it in errors."""
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, dict) or set(value) - {"label_dropout", "num_classes"}:
        raise ValueError(f"{where} must be true, false or {{'label_dropout': P}}, got {value!r}")
    p = value.get("label_dropout", LABEL_DROPOUT)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ValueError(f"label dropout (--label-dropout) must lie in [0, 1], got {p!r}")
    k = value.get("num_classes")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ValueError(f"{where} num_classes must be an integer >= 1, got {k!r}")
    return {**value, "label_dropout": float(p)}


def conditional_objective(settings: dict, data, objective):
    r"""The class-conditional version of a run's objective: ``objective`` wrapped in
    :class:`~scorekit.losses.LabelDropout` with the label dropout of
    ``settings["conditional"]``. The number of classes, the largest label of ``data``
    + 1 (or the one already in the settings, on resume), is written into
    ``settings["conditional"]["num_classes"]`` and the network settings (``num_classes``), so
    the network built next takes ``y=``."""
    from ..losses import LabelDropout
    from ..train.data import Dataset

    c = settings.get("conditional") if isinstance(settings, dict) else None
    if not isinstance(c, dict) or "label_dropout" not in c:
        raise ValueError(
            "settings must be a dict whose 'conditional' is {'label_dropout': P, ...} "
            f"(conditional_settings), got {c!r}"
        )
    if not isinstance(data, Dataset):
        raise ValueError(f"data must be a scorekit.train.data.Dataset, got {type(data).__name__}")
    if data.labels is None:
        raise ValueError(
            f"--conditional needs labelled data, but {settings['data']!r} has no labels "
            "(labelled data: 'digits')"
        )
    if data.labels.numel() and int(data.labels.min()) < 0:
        raise ValueError(f"--conditional needs labels >= 0, got {int(data.labels.min())}")
    k = int(data.labels.max()) + 1
    stored = c.get("num_classes")
    if stored is not None and k > stored:
        raise ValueError(
            f"the data has labels up to {k - 1}, but the run was set up for {stored} classes"
        )
    c["num_classes"] = k = stored or k
    settings["net"] = {**settings["net"], "num_classes": k}
    return LabelDropout(objective, k, c["label_dropout"])


def model_net_config(model) -> dict:
    """The network config of a model (inside any EDM preconditioning)."""
    from ..train.checkpoint import model_config

    return model_config(model)["net"]


def data_meta(s: dict, data) -> dict:
    """What a checkpoint records of its data: spec, toy size, example shape and, for
    discrete pixels, the number of levels (17 for sklearn digits, 256 for image files)."""
    bins = {"digits": 17}.get(s["data"])
    if bins is None and Path(str(s["data"])).is_dir():
        bins = 256
    return {
        "spec": str(s["data"]),
        "split": s.get("split", "all"),
        "n": s["n"],
        "shape": list(data.shape),
        "bins": bins,
    }


def nll_report(
    model,
    normalizer,
    x: torch.Tensor,
    bins: int | None,
    dequantization="uniform",
    samples: int = 1,
    **kw,
) -> dict:
    r"""Mean negative log-likelihood per example, bits/dim and their standard errors.

    Continuous data (``bins=None``): :func:`scorekit.likelihood.log_prob` of ``x`` (model
    space, ``(B, *D)``) moved to data coordinates with the normaliser's log-determinant;
    bits/dim :math:`= \mathrm{NLL}/(D \ln 2)`. Discrete data (``bins`` levels spanning
    [-1, 1] in model space): :func:`scorekit.likelihood.bits_per_dim` with ``dequantization``
    (a name or a fitted dequantizer) and ``samples`` draws per example, and NLL
    :math:`= \mathrm{bpd}\,D \ln 2`, the (bound on the) negative log-probability of the
    discrete values, which no affine rescaling changes.
    Lists of models and of their normalisers (continuous data; ``x`` in the first's model
    space): their equal-weight mixture in data coordinates
    (:func:`scorekit.likelihood.mixture_log_prob`), each member through its own
    normalisation.
    ``kw`` go to the likelihood function. Returns ``{"nll", "nll_stderr", "nll_interval"
    (95%, Student t on n - 1 degrees of freedom), "bpd", "bpd_stderr", "prior_nll" (the mean
    prior term -log pi(x(t_max)) in nats; None for a mixture), "prior_error_bound" (its mean
    bound, VE/EDM with the default prior, else None), "nfe", "n", "dim"}``."""
    from ..likelihood import bits_per_dim, log_prob, mixture_of, t_quantile

    d = math.prod(x.shape[1:])
    if isinstance(model, (list, tuple)):  # a mixture of runs: continuous data only
        if not isinstance(normalizer, (list, tuple)) or len(normalizer) != len(model):
            raise ValueError("a mixture needs one normaliser per model, in a list")
        if bins is not None:
            raise ValueError("a mixture of checkpoints is for continuous data, not pixels")
        # each member in data coordinates, through its own normalisation
        raw = normalizer[0].decode(x.double().cpu())
        members = []
        for m, norm in zip(model, normalizer, strict=True):
            xm = norm.encode(raw).to(x)
            r = log_prob(m, xm, **kw)
            shift = norm.log_det_for(tuple(x.shape[1:]))
            members.append(replace(r, log_prob=r.log_prob.double() + shift))
        r = mixture_of(members)
        nll = -r.log_prob
    elif bins is not None:
        # discrete pixels: dequantised bits/dim in model space, where the levels span [-1, 1]
        b = bits_per_dim(model, x, bins=bins, data_range=(-1.0, 1.0),
                         dequantization=dequantization, samples=samples, **kw)  # fmt: skip
        nll, r = b.bpd.double() * d * math.log(2), b.likelihood
    else:
        r = log_prob(model, x, **kw)
        nll = -(r.log_prob.double() + normalizer.log_det_for(tuple(x.shape[1:])))
    n = len(nll)
    se = float(nll.std() / math.sqrt(n)) if n > 1 else float("nan")
    half = t_quantile(0.95, n - 1) * se if n > 1 else float("nan")
    mean = float(nll.mean())
    bound = r.prior_error_bound
    return {
        "nll": mean,
        "nll_stderr": se,
        "nll_interval": [mean - half, mean + half],
        "bpd": mean / (d * math.log(2)),
        "bpd_stderr": se / (d * math.log(2)),
        "prior_nll": None if r.prior_log_prob is None else float(-r.prior_log_prob.double().mean()),
        "prior_error_bound": None if bound is None else float(bound.double().mean()),
        "nfe": r.nfe,
        "n": n,
        "dim": d,
    }

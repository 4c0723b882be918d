"""Walk the public API with wrong arguments: each must raise ValueError naming the argument.

Every public callable (``__all__`` of every ``scorekit`` module) is first called with valid
values for its required parameters (by parameter name, :data:`VALID`); when that works,
each parameter with known wrong values (:data:`BAD`: wrong type, wrong range, wrong shape
or dtype, non-finite) is replaced by each of them in turn, and the call must raise a
``ValueError`` whose message contains the parameter's name.
"""

import importlib
import inspect
import math
import pkgutil

import pytest
import torch

import scorekit
from scorekit import VE, ScoreModel
from scorekit.nets import MLP

SKIP_MODULES = {
    "scorekit._validate",  # the checks themselves: their `name` is a label
    "scorekit.app.cli",  # argv: tested by tests/test_cli.py
    "scorekit.train.distributed",  # process groups
    "scorekit.app.demo",  # trains for minutes
    "scorekit.app.plots",  # figures; inputs are checked by the functions they draw from
}


def _process():
    return VE(0.01, 2.0)


def _model():
    torch.manual_seed(0)
    return ScoreModel(MLP(2, hidden=8, depth=1, emb_dim=8), _process())


VALID = {
    "process": _process,
    "model": _model,
    "x": lambda: torch.randn(4, 2, dtype=torch.float32),
    "x0": lambda: torch.randn(4, 2, dtype=torch.float32),
    "data": lambda: torch.randn(16, 2, dtype=torch.float32),
    "generator": lambda: torch.Generator().manual_seed(0),
    "steps": lambda: 4,
    "n": lambda: 8,
    "levels": lambda: 4,
    "sigma_min": lambda: 0.01,
    "sigma_max": lambda: 2.0,
    "dim": lambda: 2,
    "t": lambda: torch.full((4,), 0.5, dtype=torch.float32),
    "name": lambda: "moons",
    "spec": lambda: "moons",
    "shape_or_n": lambda: (4, 2),
    "net": lambda: MLP(2, hidden=8, depth=1, emb_dim=8),
    "num_classes": lambda: 3,
    "labels": lambda: torch.tensor([0, 1, 2, 1]),
    "sigma": lambda: torch.full((4,), 0.5),
    "alpha": lambda: torch.ones(4),
    "sigmas": lambda: torch.tensor([2.0, 1.0, 0.1]),
    "score_fn": lambda: _model(),
}

# valid values for one callable, where the name-based guess above does not fit it
OVERRIDES = {
    "scorekit.losses.registry.make_objective": {"name": lambda: "dsm"},
    "scorekit.guidance.check_labels": {"name": lambda: "labels"},
    **{
        f"scorekit.losses.score_matching.{f}": {"score_fn": lambda: lambda x: -x}
        for f in ("ism", "ssm", "ssm_vr")
    },
    "scorekit.losses.score_matching.dsm": {"score_fn": lambda: lambda x, *s: -x},
    "scorekit.samplers.api.default_grid": {"name": lambda: "euler"},
    "scorekit.samplers.api.sample": {"shape_or_n": lambda: (4, 2)},
    "scorekit.samplers.grids.optimized_grid": {"shape_or_n": lambda: (4, 2)},
    "scorekit.guidance.ClassifierFreeGuidance": {
        "model": lambda: ScoreModel(MLP(2, hidden=8, depth=1, emb_dim=8, num_classes=3), _process())
    },
    "scorekit.samplers.api.make_sampler": {"name": lambda: "euler"},
    **{
        q: {
            "model": lambda: ScoreModel(
                MLP(2, hidden=8, depth=1, emb_dim=8), _process(), data_shape=(2,)
            )
        }
        for q in ("scorekit.metrics.straightness", "scorekit.train.reflow.reflow_pairs")
    },  # fmt: skip
    "scorekit.noise.design.geometric_ratio": {"dim": lambda: 100},
    "scorekit.app.recipes.build_process": {"spec": lambda: {"name": "ve"}},
    "scorekit.likelihood.bits_per_dim": {"x": lambda: torch.full((4, 2), -1.0)},
}

# wrong values that a callable accepts by design
ALLOWED = {
    ("scorekit.train.trainer.TrainConfig", "steps"): lambda v: v == 0,  # 0 steps: save the init
    # subclasses (ExactScore, ExactConditional) compute the score without a network
    ("scorekit.core.parametrize.ScoreModel", "net"): lambda v: v is None,
}
# the training losses do not scan every batch for NaN: the Trainer stops on the
# non-finite loss instead, naming the step (tests/test_kill_resume.py)
NAN_X_ALLOWED = {
    f"scorekit.losses.score_matching.{f}" for f in ("dsm", "ism", "ncsn_loss", "ssm", "ssm_vr")
}

NONFINITE = [float("nan"), float("inf")]
BAD_COUNT = [0, -1, 2.5, "3", None]
BAD_POSITIVE = [-1.0, 0.0, *NONFINITE, "x"]
BAD = {
    **{k: BAD_COUNT for k in (
        "steps", "n", "levels", "num_classes", "batch_size", "n_projections", "n_probes",
        "chunk_size", "hidden", "depth", "emb_dim", "order", "T", "max_points",
        "num_train_steps", "dim")},
    **{k: BAD_POSITIVE for k in (
        "sigma_min", "sigma_max", "sigma_data", "snr", "rho", "beta_min", "beta_max",
        "p_std", "emb_scale")},
    "eps": [-1.0, *NONFINITE, "x"],
    "gamma": [-1.0, *NONFINITE, "x"],
    "seed": [-1, 1.5, "0"],
    "generator": ["not a generator", 0],
    "process": ["VE", None],
    "model": ["model", None],
    "x": [
        "not a tensor",
        torch.tensor([[1.0, float("nan")]] * 4, dtype=torch.float32),
        torch.ones(4, 2, dtype=torch.int64),
        torch.ones(()),
    ],
    "x0": ["not a tensor", torch.tensor([[float("inf"), 0.0]] * 4), torch.ones(())],
    "data": ["not a tensor", torch.tensor([[float("nan"), 0.0]] * 16)],
    "t": ["0.5", torch.full((4,), float("nan")), torch.full((4,), -1.0)],
    "net": ["net", None],
    "labels": ["labels", torch.tensor([0, 1, 3, 1]), torch.tensor([0.5, 1.0, 2.0, 1.0])],
    "sigma": [torch.full((4,), -1.0), torch.full((4,), float("nan"))],
    "sigmas": [torch.tensor([2.0, -1.0]), torch.tensor([float("nan")]), "x"],
}  # fmt: skip


def _public():
    seen = {}
    for info in pkgutil.walk_packages(scorekit.__path__, "scorekit."):
        if info.name in SKIP_MODULES:
            continue
        mod = importlib.import_module(info.name)
        for attr in getattr(mod, "__all__", []):
            obj = getattr(mod, attr)
            if callable(obj) and getattr(obj, "__module__", "") == info.name:
                seen[f"{info.name}.{attr}"] = obj
    return seen


PUBLIC = _public()


def _valid_kwargs(fn, qual=""):
    """Valid values for the required parameters, or ``None`` when one is not known."""
    valid = {**VALID, **OVERRIDES.get(qual, {})}
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None, None
    kwargs = {}
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is p.empty or p.name in OVERRIDES.get(qual, {}):
            if p.name not in valid:
                return None, sig
            kwargs[p.name] = valid[p.name]()
    return kwargs, sig


NOT_WALKED: set[str] = set()


def _cases():
    for qual, fn in sorted(PUBLIC.items()):
        if qual in NOT_WALKED:
            continue
        kwargs, sig = _valid_kwargs(fn, qual)
        if kwargs is None:
            continue
        for p in sig.parameters.values():
            if p.name in BAD and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                yield qual, p.name


CASES = list(_cases())


def test_the_walk_covers_a_good_part_of_the_api():
    walked = {q for q, _ in CASES}
    assert len(walked) >= 40, sorted(walked)
    assert len(CASES) >= 100


def _valid_call(qual):
    fn = PUBLIC[qual]
    kwargs, _ = _valid_kwargs(fn, qual)
    fn(**{k: v for k, v in kwargs.items()})  # the walker's valid call must be valid
    return fn, kwargs


@pytest.mark.parametrize("qual,arg", CASES, ids=[f"{q.removeprefix('scorekit.')}-{a}"
                                                 for q, a in CASES])  # fmt: skip
def test_wrong_argument_raises_value_error_naming_it(qual, arg):
    fn, kwargs = _valid_call(qual)
    default = inspect.signature(fn).parameters[arg].default
    failures = []
    for bad in BAD[arg]:
        allowed = ALLOWED.get((qual, arg), lambda v: False)
        if (bad is None and default is None) or (not isinstance(bad, str) and allowed(bad)):
            continue  # None is this argument's default (e.g. "all at once")
        if qual in NAN_X_ALLOWED and isinstance(bad, torch.Tensor) and bad.isnan().any():
            continue
        try:
            fn(**{**kwargs, arg: bad})
        except ValueError as e:
            if arg.lower() not in str(e).lower():
                failures.append(f"{bad!r}: message does not name {arg!r}: {e}")
            continue
        except Exception as e:  # noqa: BLE001
            failures.append(f"{bad!r}: {type(e).__name__}: {str(e)[:120]}")
            continue
        failures.append(f"{bad!r}: accepted")
    assert not failures, f"{qual}({arg}=...):\n" + "\n".join(failures)


def test_nonfinite_constants_are_floats():
    assert all(isinstance(v, float) and not math.isfinite(v) for v in NONFINITE)

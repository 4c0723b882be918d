"""No step turns a tensor into a Python number: the count of host syncs (tensor-to-Python
conversions, see ``host_syncs.py``) of a training run or a sampler call does not grow with
its number of steps, for every built-in objective and sampler. Values are checked once, at
the boundary of the call."""

import pytest
import torch
from torch.utils.data import TensorDataset

from host_syncs import syncs
from scorekit import EDM, VP, EDMPrecond, ExactScore, GaussianMixture, ScoreModel, nets
from scorekit.guidance import ClassifierFreeGuidance, ExactConditional
from scorekit.losses import (
    AUGMENT_DIM,
    OBJECTIVES,
    AdaptiveSigma,
    Augmented,
    ClassifierObjective,
    LabelDropout,
    UncertaintyWeighted,
    make_objective,
)
from scorekit.samplers import SAMPLERS, sample
from scorekit.train import TrainConfig, Trainer


def _model(name, process, num_classes=None):
    torch.manual_seed(0)
    if name == "edm":
        net = EDMPrecond(nets.MLP(2, hidden=16, depth=1, num_classes=num_classes), process)
        return ScoreModel(net, process, "x0")
    return ScoreModel(nets.MLP(2, hidden=16, depth=1, num_classes=num_classes), process, "eps")


def _steps(model, objective, n, shape=(2,), **cond):
    """``n`` bare steps: objective, backward, fused AdamW (as the Trainer's)."""
    params = [*model.parameters(), *getattr(objective, "parameters", list)()]
    opt = torch.optim.AdamW(params, lr=1e-3, fused=True)
    x = torch.randn(32, *shape, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)

    def run():
        for _ in range(n):
            loss = objective(model, x, generator=g, **cond).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return run


CASES = [*OBJECTIVES, "label_dropout", "classifier", "uncertainty", "augment", "adaptive"]


@pytest.mark.parametrize("name", CASES)
def test_objective_steps_make_no_host_sync(name):
    process = EDM() if name in ("edm", "uncertainty", "adaptive") else VP()
    cond, shape = {}, (2,)
    if name == "label_dropout":
        model = _model(name, process, num_classes=3)
        objective = LabelDropout(make_objective("dsm", process), 3, 0.2)
        cond = {"y": torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(3))}
    elif name == "classifier":
        torch.manual_seed(0)
        model = ScoreModel(nets.MLP(2, hidden=16, depth=1, out_dim=3), process)
        objective = ClassifierObjective(process, 3)
        cond = {"y": torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(3))}
    elif name == "uncertainty":
        model = _model("edm", process)
        objective = UncertaintyWeighted(make_objective("edm", process))
    elif name == "adaptive":
        model = _model("edm", process)
        objective = AdaptiveSigma(UncertaintyWeighted(make_objective("edm", process)))
    elif name == "augment":
        torch.manual_seed(0)
        net = nets.UNet(1, base=8, mults=(1, 2), attention=False, augment_dim=AUGMENT_DIM)
        model, shape = ScoreModel(net, process, "eps"), (1, 8, 8)
        objective = Augmented(make_objective("dsm", process), p=0.5)
    else:
        model = _model(name, process)
        objective = make_objective(name, process)
    _steps(model, objective, 1, shape, **cond)()  # first call: one-time reads (constants)
    one, _ = syncs(_steps(model, objective, 1, shape, **cond))
    four, where = syncs(_steps(model, objective, 4, shape, **cond))
    assert four == one == 0, (name, one, four, where)


@pytest.mark.parametrize("posthoc, adaptive", [((), False), ((0.05, 0.1), False), ((), True)])
def test_training_runs_read_values_only_at_their_boundary(posthoc, adaptive):
    # the Trainer reads at the start, at each logging interval and at the end, not per step
    # (post-hoc EMA averages and an adaptive sigma law included: updated on the device)
    process = VP()
    data = TensorDataset(torch.randn(256, 2), torch.randint(0, 3, (256,)))

    def fit(steps):
        cfg = TrainConfig(
            steps=steps, batch_size=32, log_every=1000, progress=False, posthoc_ema=posthoc
        )
        objective = LabelDropout(make_objective("dsm", process), 3, 0.1)
        if adaptive:
            objective = AdaptiveSigma(objective)
        return lambda: Trainer(_model("dsm", process, 3), objective, data, cfg).fit()

    short, _ = syncs(fit(4))
    long, where = syncs(fit(16))
    assert long == short, (short, long, where)


def test_fitting_a_dequantizer_reads_values_only_at_its_boundary():
    from scorekit.dequantize import fit_dequantizer

    model = ExactScore(MIX, VP())
    x = torch.randint(0, 9, (64, 2), generator=torch.Generator().manual_seed(0)) / 4.0 - 1.0

    def fit(steps):
        return lambda: fit_dequantizer(model, x.double(), bins=9, steps=steps, batch_size=8,
                                       generator=torch.Generator().manual_seed(1))  # fmt: skip

    fit(4)()  # first call: one-time reads (a process's ranges, cached)
    short, _ = syncs(fit(4))
    long, where = syncs(fit(16))
    assert long == short, (short, long, where)


MIX = GaussianMixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], stds=0.3)
OPTIONS = {
    "edm": {"s_churn": 5.0},
    "ddim": {"eta": 0.5},
    "mala": {"step_size": 0.01},
    # a level inside both grids, so both calls have the same legs (each leg's coefficients
    # are read once, in init; the legs depend on the intervals, not on the steps)
    "restart": {"intervals": [(0.3, 1.0, 2, 2)]},
}
# dopri5's adaptive controller accepts or rejects each internal step on the host (its
# error norm is read): the one sampler whose reads follow its internal steps by design.
ADAPTIVE = {"dopri5"}


def _energy(process):
    def energy(x, t):
        a, s = process.marginal(t)
        return -MIX.noised_log_prob(x, a, s)

    return ScoreModel(energy, process, "energy", (2,))


@pytest.mark.parametrize("name", sorted(set(SAMPLERS) - ADAPTIVE))
def test_sampler_steps_make_no_host_sync(name):
    process = VP()
    model = _energy(process) if name == "mala" else ExactScore(MIX, process)
    steps = (3, 9) if name == "annealed_langevin" else (4, 12)
    opts = {"steps_per_level": 2} if name == "annealed_langevin" else OPTIONS.get(name, {})

    def run(n):
        return lambda: sample(model, 16, name, n, torch.Generator().manual_seed(0), **opts)

    run(steps[0])()  # first call: one-time reads (a process's ranges, cached)
    few, _ = syncs(run(steps[0]))
    many, where = syncs(run(steps[1]))
    assert many == few, (name, few, many, where)


def test_score_model_mala_makes_no_host_sync_per_step():
    # the acceptance test through the score's line integral (no energy model)
    model = ExactScore(MIX, VP())

    def run(n):
        return lambda: sample(model, 16, "mala", n, torch.Generator().manual_seed(0),
                              step_size=0.01, path_points=4)  # fmt: skip

    run(4)()
    few, _ = syncs(run(4))
    many, where = syncs(run(12))
    assert many == few, (few, many, where)


def test_conditional_guided_sampling_makes_no_host_sync_per_step():
    model = ClassifierFreeGuidance(ExactConditional(MIX, [0, 1], VP()), 2.0)
    y = {"y": torch.tensor([0, 1] * 8)}

    def run(n):
        return lambda: sample(model, 16, "dpmpp_2m", n, torch.Generator().manual_seed(0), cond=y)

    run(4)()
    assert syncs(run(4))[0] == syncs(run(12))[0]


def test_gaussian_teleport_makes_no_host_sync_per_step():
    from scorekit.samplers import GaussianTeleport

    model = ExactScore(MIX, VP())
    tp = GaussianTeleport(MIX.mean(), MIX.covariance(), 20.0, "unipc_3")

    def run(n):
        return lambda: sample(model, 16, tp, n, torch.Generator().manual_seed(0))

    run(4)()
    few, _ = syncs(run(4))
    many, where = syncs(run(12))
    assert many == few, (few, many, where)

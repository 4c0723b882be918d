"""Noise-conditional objectives: the trainer's contract, exact minima, equivalences."""

import math

import pytest
import torch

from scorekit import (
    EDM,
    VE,
    VP,
    CosineVP,
    EDMPrecond,
    ExactScore,
    GaussianMixture,
    ScoreModel,
    SubVP,
    ddpm_betas,
    ncsn_sigmas,
)
from scorekit.core.weighting import Constant, LogSNRImportance, MinSNRWeighting, UniformT
from scorekit.losses import (
    OBJECTIVES,
    DDPMObjective,
    DiffusionLoss,
    DSMObjective,
    EDMLoss,
    LikelihoodLoss,
    MinSNRLoss,
    Objective,
    ScoreMatchingObjective,
    make_objective,
)

D64 = torch.float64
PROCESSES = [VE(0.01, 50.0), VP(), SubVP(), CosineVP(), EDM()]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def mix():
    return GaussianMixture([0.4, 0.6], [[-1.5, 0.0], [1.0, 1.0]], stds=[0.4, 0.6])


class _Net(torch.nn.Module):
    """A small noise-conditional MLP, net(x, t) -> (B, d)."""

    def __init__(self, d=2, width=32, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.f = torch.nn.Sequential(
            torch.nn.Linear(d + 1, width), torch.nn.SiLU(), torch.nn.Linear(width, d)
        ).double()

    def forward(self, x, t):
        return self.f(torch.cat([x, torch.log1p(t)[:, None].to(x)], 1))


REQUIRED = ("dsm", "ncsn", "likelihood", "ddpm", "edm", "min_snr", "ssm", "ism")


def test_factory_names_and_protocol(mix):
    assert set(REQUIRED) <= set(OBJECTIVES)
    with pytest.raises(ValueError, match="name") as e:
        make_objective("sm", VP())
    for n in REQUIRED:
        assert n in str(e.value)
    x0 = mix.sample(16, generator=_gen(1))
    for process in PROCESSES:
        model = ExactScore(mix, process)
        for name in OBJECTIVES:
            obj = make_objective(name, process)
            assert isinstance(obj, Objective) and obj.process is process
            t = obj.sample_t(500, generator=_gen(2), dtype=D64)
            assert t.shape == (500,) and t.dtype == D64
            assert float(t.min()) >= 0 and float(t.max()) <= process.T
            assert torch.equal(t, obj.sample_t(500, generator=_gen(2), dtype=D64))
            v = obj(model, x0, generator=_gen(3))
            assert v.shape == (16,) and torch.isfinite(v).all(), (name, type(process))
            assert torch.equal(v, obj(model, x0, generator=_gen(3)))
            t16 = obj.sample_t(16, generator=_gen(4), dtype=D64)
            assert obj(model, x0, t=t16, generator=_gen(5)).shape == (16,)
    assert make_objective("edm", EDM()).sample_t(4).dtype == torch.float32


@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: type(p).__name__)
def test_prediction_target_changes_arithmetic_not_objective(mix, process):
    net = _Net()
    x0 = mix.sample(64, generator=_gen(6))
    t = UniformT().sample(process, 64, generator=_gen(7), dtype=D64)
    for pred in ("eps", "x0", "v", "score"):
        model = ScoreModel(net, process, prediction=pred)
        for weighting in (None, MinSNRWeighting(3.0)):
            ref = DiffusionLoss(process, weighting, "score")(model, x0, t, generator=_gen(8))
            for target in ("eps", "x0", "v"):
                got = DiffusionLoss(process, weighting, target)(model, x0, t, generator=_gen(8))
                assert torch.allclose(got, ref, rtol=1e-8, atol=1e-12), (pred, target)


def test_sigma2_weighting_is_ddpm_simple_and_edm_weight_is_karras():
    vp = VP()
    net = _Net(seed=1)
    model = ScoreModel(net, vp, prediction="eps")
    g = _gen(9)
    x0 = torch.randn(32, 2, generator=g, dtype=D64)
    t = torch.rand(32, generator=g, dtype=D64) * 0.9 + 0.05
    eps = torch.randn(32, 2, generator=_gen(10), dtype=D64)
    xt = vp.add_noise(x0, t, eps)
    simple = ((net(xt, t) - eps) ** 2).sum(1)
    got = DiffusionLoss(vp)(model, x0, t, generator=_gen(10))
    assert torch.allclose(got, 0.5 * simple, rtol=1e-12)
    assert torch.allclose(DDPMObjective(vp, half=False)(model, x0, t, _gen(10)), simple)
    # EDM: w(sigma) ||D - x0||^2 with w = (sigma^2 + sd^2)/(sigma sd)^2, for a preconditioned net
    edm = EDM()
    raw = _Net(seed=2)
    den = ScoreModel(EDMPrecond(raw, edm, 0.5), edm, prediction="x0")
    sig = torch.exp(torch.randn(32, generator=g, dtype=D64) - 1.2)
    xe = x0 + sig[:, None] * eps
    w = (sig**2 + 0.25) / (sig * 0.5) ** 2
    ref = w * ((den.x0(xe, sig) - x0) ** 2).sum(1)
    assert torch.allclose(EDMLoss(edm, half=False)(den, x0, sig, _gen(10)), ref, rtol=1e-10)


def test_dsm_objective_at_exact_score_equals_irreducible_minimum():
    # x0 ~ N(mu, tau^2 I), lambda = sigma^2:
    #   min = d/2 * alpha^2 tau^2 / (alpha^2 tau^2 + sigma^2)
    d, tau = 2, 0.7
    gauss = GaussianMixture([1.0], [[0.5, -1.0]], stds=tau)
    for process in (VP(), VE(0.01, 20.0), EDM()):
        t = torch.full((40_000,), 0.4 if process.T == 1 else 0.9, dtype=D64)
        x0 = gauss.sample(40_000, generator=_gen(11))
        vals = DiffusionLoss(process)(ExactScore(gauss, process), x0, t, generator=_gen(12))
        a, s = (float(v[0]) for v in process.marginal(t))
        exact = 0.5 * d * a**2 * tau**2 / (a**2 * tau**2 + s**2)
        se = float(vals.std()) / math.sqrt(len(vals))
        assert abs(float(vals.mean()) - exact) < 4 * se and se < 0.01 * exact


def test_likelihood_importance_sampling_is_unbiased_and_lower_variance(mix):
    vp = VP()
    model = ScoreModel(_Net(seed=3), vp, prediction="eps")
    x0 = mix.sample(30_000, generator=_gen(13))
    with torch.no_grad():
        is_vals = LikelihoodLoss(vp)(model, x0, generator=_gen(14))
        un_vals = LikelihoodLoss(vp, importance_sampling=False)(model, x0, generator=_gen(15))
    se = math.sqrt((is_vals.var() + un_vals.var()) / 30_000)
    assert abs(float(is_vals.mean() - un_vals.mean())) < 4 * se
    assert float(is_vals.var()) < 0.2 * float(un_vals.var())
    # each example pays Z/(t_hi - t_lo) * 1/2 ||eps_hat - eps||^2 with Z the log-SNR range
    lo, hi = LogSNRImportance().bounds(vp)
    z = float(vp.log_snr(torch.tensor(lo, dtype=D64)) - vp.log_snr(torch.tensor(hi, dtype=D64)))
    t = LogSNRImportance().sample(vp, 8, generator=_gen(16), dtype=D64)
    eps = torch.randn(8, 2, generator=_gen(17), dtype=D64)
    xt = vp.add_noise(x0[:8], t, eps)
    expect = z / (hi - lo) * 0.5 * ((model.eps(xt, t) - eps) ** 2).sum(1)
    assert torch.allclose(LikelihoodLoss(vp)(model, x0[:8], t, _gen(17)), expect, rtol=1e-9)


def test_grids_of_ncsn_and_ddpm():
    ve = VE(0.01, 50.0)
    obj = DSMObjective(ve, levels=7)
    assert torch.allclose(obj.sigmas.flip(0), ncsn_sigmas(ve, 7), rtol=1e-12)
    t = obj.sample_t(2000, generator=_gen(18), dtype=D64)
    assert torch.allclose(t.unique(), torch.linspace(0, 1, 7, dtype=D64), atol=1e-12)
    ddpm = DDPMObjective(VP(), steps=50)
    t = ddpm.sample_t(5000, generator=_gen(19), dtype=D64)
    grid = torch.linspace(0, 1, 51, dtype=D64)[1:]
    assert torch.allclose(t.unique(), grid) and len(ddpm_betas(VP(), 50)) == 50
    custom = DSMObjective(ve, sigmas=torch.tensor([1.0, 2.0]))
    assert torch.allclose(custom.process.sigma(custom.sample_t(50, _gen(1), D64)).unique(),
                          torch.tensor([1.0, 2.0], dtype=D64))  # fmt: skip


def test_ssm_and_ism_objectives_match_dsm_up_to_a_constant(mix):
    # Differences between two models agree across estimators (each is ESM on p_t + const).
    vp = VP()
    a = ExactScore(mix, vp)
    b = ScoreModel(_Net(seed=4), vp, prediction="eps")
    x0 = mix.sample(20_000, generator=_gen(20))
    t = torch.full((20_000,), 0.3, dtype=D64)

    def gap(obj, seed):
        with torch.no_grad():
            return obj(a, x0, t, _gen(seed)) - obj(b, x0, t, _gen(seed))

    ref = gap(DiffusionLoss(vp), 21)
    for obj in (
        ScoreMatchingObjective(vp, "ism"),
        ScoreMatchingObjective(vp, "ssm", n_projections=2),
        make_objective("ssm_vr", vp),
        make_objective("ism", vp, trace="hutchinson"),
    ):
        g = gap(obj, 22)
        se = math.sqrt((g.var() + ref.var()) / len(g))
        assert abs(float(g.mean() - ref.mean())) < 4 * se
        assert se < 0.1 * abs(float(ref.mean()))


def test_any_callable_score_model_is_accepted(mix):
    # e.g. DistributedDataParallel(score_model): trained through forward(), which gives the score
    vp = VP()
    inner = ScoreModel(_Net(seed=6), vp, prediction="eps")

    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, x, t):
            return self.module(x, t)

    x0 = mix.sample(32, generator=_gen(26))
    t = torch.linspace(0.05, 0.95, 32, dtype=D64)
    for name in ("dsm", "edm", "likelihood", "ssm"):
        obj = make_objective(name, vp)
        a = obj(inner, x0, t, _gen(27))
        b = obj(Wrapper(inner), x0, t, _gen(27))
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12), name


def test_min_snr_and_constant_weightings(mix):
    vp = VP()
    model = ScoreModel(_Net(seed=5), vp, prediction="x0")
    x0 = mix.sample(16, generator=_gen(23))
    t = torch.linspace(0.05, 0.95, 16, dtype=D64)
    eps = torch.randn(16, 2, generator=_gen(24), dtype=D64)
    xt = vp.add_noise(x0, t, eps)
    a, s = vp.marginal(t)
    snr = (a / s) ** 2
    ref = snr.clamp(max=5.0) * 0.5 * ((model.x0(xt, t) - x0) ** 2).sum(1)
    assert torch.allclose(MinSNRLoss(vp)(model, x0, t, _gen(24)), ref, rtol=1e-10)
    plain = DiffusionLoss(vp, Constant(1.0), "score")(model, x0, t, _gen(24))
    assert torch.allclose(plain, 0.5 * ((model(xt, t) + eps / s[:, None]) ** 2).sum(1))


def test_bad_input(mix):
    vp = VP()
    model = ExactScore(mix, vp)
    x0 = mix.sample(4, generator=_gen(25))
    obj = DiffusionLoss(vp)
    edm_model = ScoreModel(EDMPrecond(_Net(), EDM(), sigma_data=1.0), EDM(), prediction="x0")
    cases = [
        (lambda: obj(model, x0, t=torch.full((3,), 0.5)), "t"),
        (lambda: obj(ExactScore(mix, VE()), x0), "process"),
        (lambda: obj("model", x0), "model"),
        (lambda: obj(lambda x, t: x[:, :1], x0), "model"),
        (lambda: obj(model, x0[:, 0]), "x0"),
        (lambda: obj.sample_t(0), "batch"),
        (lambda: DiffusionLoss(vp, prediction_target="noise"), "prediction_target"),
        (lambda: DiffusionLoss(vp, t_sampler=object()), "t_sampler"),
        (lambda: DiffusionLoss(vp, weighting="sigma2"), "weighting"),
        (lambda: DiffusionLoss("vp"), "process"),
        (lambda: DSMObjective(vp, levels=1), "levels"),
        (lambda: DSMObjective(vp, sigmas=torch.tensor([0.0, 0.5])), "sigmas"),
        (lambda: DDPMObjective(vp, steps=0), "steps"),
        (lambda: EDMLoss(sigma_data=-1.0), "sigma_data"),
        (lambda: ScoreMatchingObjective(vp, "foo"), "estimator"),
        (lambda: ScoreMatchingObjective(vp, "ism", trace="foo"), "trace"),
        (lambda: ScoreMatchingObjective(vp, "ssm", n_projections=0), "n_projections"),
        (lambda: make_objective("likelihood", vp, low=0.0).sample_t(2), "log-SNR"),
        (lambda: make_objective("ssm", vp, n_proj=2), "n_proj"),
        (lambda: make_objective("edm", EDM(), sigma_data=0.5)(edm_model, x0), "sigma_data"),
    ]
    for fn, name in cases:
        with pytest.raises(ValueError, match=name):
            fn()


def test_dequantized_moves_each_example_within_its_bin():
    from scorekit.losses import Dequantized

    seen = []

    class Spy:
        process = VP()

        def sample_t(self, *a, **k):
            return torch.zeros(1)

        def __call__(self, model, x0, t=None, generator=None):
            seen.append(x0)
            return x0.sum(1)

    levels = torch.arange(17.0).repeat(200, 1) / 8 - 1  # digits mapped to [-1, 1]
    Dequantized(Spy(), 2 / 16)(None, levels, generator=torch.Generator().manual_seed(0))
    offset = (seen[0] - levels) * 8  # in bins
    assert float(offset.min()) >= -0.5 and float(offset.max()) < 0.5
    assert abs(float(offset.mean())) < 0.01  # uniform over the bin centred on its level

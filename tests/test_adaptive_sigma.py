"""The adaptive law of noise levels (AdaptiveSigma): exact reweighting, draws that follow
the proposal, convergence to the variance-optimal proposal, and its state in checkpoints."""

import math

import pytest
import torch

from scorekit import EDM, VP, EDMPrecond, ScoreModel, nets
from scorekit.core.weighting import GridT, LogNormalSigma
from scorekit.losses import AdaptiveSigma, Dequantized, UncertaintyWeighted, make_objective
from scorekit.train import TrainConfig, Trainer
from scorekit.train.checkpoint import load_checkpoint


def _model(process):
    torch.manual_seed(0)
    net = EDMPrecond(nets.MLP(2, hidden=16, depth=1), process, sigma_data=1.0)
    return ScoreModel(net, process, "x0")


def _skewed(obj):
    """A proposal far from the base law: bin k's second moment grows like 4^k."""
    with torch.no_grad():
        obj.second_moment.copy_(4.0 ** torch.arange(obj.bins, dtype=torch.float32) / 4.0**8)
        obj.visits.fill_(1.0)
    return obj


def test_the_proposal_is_the_mixture_of_the_normalised_root_moments_and_the_base_law():
    obj = _skewed(AdaptiveSigma(make_objective("edm", EDM()), bins=8, mix=0.2))
    r = 2.0 ** torch.arange(8, dtype=torch.float64)
    want = 0.8 * r / r.sum() + 0.2 / 8
    torch.testing.assert_close(obj.proposal().double(), want, rtol=1e-6, atol=0)
    fresh = AdaptiveSigma(make_objective("edm", EDM()), bins=8)
    torch.testing.assert_close(fresh.proposal(), torch.full((8,), 1 / 8, dtype=torch.float64))


def test_draws_fall_in_the_bins_with_the_proposals_frequencies_and_in_the_support():
    process = EDM()
    obj = _skewed(AdaptiveSigma(make_objective("edm", process), bins=8, mix=0.2))
    n = 200_000
    t = obj.sample_t(n, torch.Generator().manual_seed(0), torch.float64)
    assert t.min() >= process.t_min and t.max() <= process.t_max
    freq = torch.bincount(obj.bin_of(t), minlength=8).double() / n
    q = obj.proposal().double()
    se = (q * (1 - q) / n).sqrt()
    assert torch.all((freq - q).abs() < 5 * se), (freq, q)
    # the bin edges are the base law's quantiles k/K
    base = LogNormalSigma(-1.2, 1.2)
    u = base.inverse(process, torch.tensor([0.125, 0.5], dtype=torch.float64))
    torch.testing.assert_close(obj.edges[[0, 3]], u)


def test_reweighted_draws_estimate_the_base_laws_expectation():
    """E_q[f(t) / (K q_k)] = E_p[f(t)] for any f: here sigma^2 / (1 + sigma^2) and ln sigma,
    under a proposal 128 times more likely in its top bin than in its bottom one. A factor
    without the 1/K, or with the base law's mass per bin wrong, misses by far more than the
    tolerance (5 standard errors)."""
    process = EDM()
    obj = _skewed(AdaptiveSigma(make_objective("edm", process), bins=8, mix=0.05))
    n = 400_000
    t = obj.sample_t(n, torch.Generator().manual_seed(1), torch.float64)
    factor = 1.0 / (8 * obj.proposal().double()[obj.bin_of(t)])
    base = LogNormalSigma(-1.2, 1.2)
    tp = base.sample(process, n, torch.Generator().manual_seed(2), torch.float64)
    for f in (lambda s: s**2 / (1 + s**2), torch.log):
        est = f(process.sigma(t)) * factor
        ref = f(process.sigma(tp))
        se = math.sqrt(est.var() / n + ref.var() / n)
        assert abs(float(est.mean() - ref.mean())) < 5 * se, (est.mean(), ref.mean(), se)


def test_forward_is_the_wrapped_loss_times_the_factor_of_the_bin():
    process = EDM()
    inner = make_objective("edm", process, sigma_data=1.0)
    obj = _skewed(AdaptiveSigma(inner, bins=8)).eval()
    model = _model(process).double()
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = obj.sample_t(64, torch.Generator().manual_seed(1), torch.float64)
    got = obj(model, x, t=t, generator=torch.Generator().manual_seed(2))
    ref = inner(model, x, t=t, generator=torch.Generator().manual_seed(2))
    want = ref / (8 * obj.proposal().double()[obj.bin_of(t)])
    torch.testing.assert_close(got, want, rtol=1e-14, atol=0)


def test_the_factor_is_that_of_the_bin_drawn_in_even_where_rounding_moves_t():
    """t drawn in bfloat16: about 1% of the draws round across a bin edge, and binning by
    value would give them another bin's factor; forward uses the bin each was drawn in."""
    process = EDM()
    inner = make_objective("edm", process, sigma_data=1.0)
    obj = _skewed(AdaptiveSigma(inner, bins=32)).eval()
    model = _model(process)
    x = torch.randn(4096, 2, generator=torch.Generator().manual_seed(0))
    t = obj.sample_t(4096, torch.Generator().manual_seed(1), torch.bfloat16)
    k = obj._drawn[1]
    assert (obj.bin_of(t) != k).any()  # the case this guards against occurs
    obj(model, x, t=t, generator=torch.Generator().manual_seed(2))
    want = 1.0 / (32 * obj.proposal()[k])
    torch.testing.assert_close(obj.last_factor.double(), want, rtol=1e-6, atol=0)


def test_the_statistics_converge_to_the_root_mean_square_loss_per_bin():
    """Fed losses f = sigma^(1/2), each bin's moving average tends to E[sigma | bin] (the base
    law's, computed by quadrature), so q tends to the variance-optimal proposal."""
    process = EDM()
    obj = AdaptiveSigma(make_objective("edm", process, sigma_data=1.0), bins=6, decay=0.95, mix=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(600):
        t = obj.sample_t(256, g, torch.float64)
        obj._record(obj.bin_of(t), process.sigma(t).sqrt())
    base = LogNormalSigma(-1.2, 1.2)
    u = (torch.arange(6 * 2000, dtype=torch.float64) + 0.5) / (6 * 2000)
    s2 = process.sigma(base.inverse(process, u)).reshape(6, 2000).mean(1)
    torch.testing.assert_close(obj.second_moment.double(), s2, rtol=0.05, atol=0)
    r = s2.sqrt()
    torch.testing.assert_close(obj.proposal().double(), 0.9 * r / r.sum() + 0.1 / 6,
                               rtol=0.03, atol=0)  # fmt: skip


def test_the_adapted_proposal_lowers_the_variance_of_the_estimate():
    process = EDM()
    obj = AdaptiveSigma(make_objective("edm", process), bins=16, decay=0.9, mix=0.1)
    g = torch.Generator().manual_seed(0)
    f = lambda t: process.sigma(t) ** 2  # noqa: E731  heavy-tailed under the log-normal law
    n = 100_000
    t0 = obj.sample_t(n, g, torch.float64)
    before = float((f(t0) / (16 * obj.proposal().double()[obj.bin_of(t0)])).var())
    for _ in range(300):
        t = obj.sample_t(512, g, torch.float64)
        obj._record(obj.bin_of(t), f(t))
    t1 = obj.sample_t(n, g, torch.float64)
    after = float((f(t1) / (16 * obj.proposal().double()[obj.bin_of(t1)])).var())
    assert after < 0.2 * before, (after, before)


def test_non_finite_losses_are_left_out_and_a_bins_first_update_sets_it():
    obj = AdaptiveSigma(make_objective("edm", EDM()), bins=4, decay=0.5)
    obj._record(torch.tensor([0, 1, 1]), torch.tensor([float("nan"), 2.0, float("inf")]))
    torch.testing.assert_close(obj.second_moment, torch.tensor([1.0, 4.0, 1.0, 1.0]))
    torch.testing.assert_close(obj.visits, torch.tensor([0.0, 1.0, 0.0, 0.0]))
    obj._record(torch.tensor([1, 2]), torch.tensor([4.0, 3.0]))
    torch.testing.assert_close(obj.second_moment, torch.tensor([1.0, 10.0, 9.0, 1.0]))
    # unvisited bins count as the mean root moment of the visited ones
    r = torch.tensor([3.0, 10.0**0.5, 3.0, 3.0], dtype=torch.float64)
    r[[0, 3]] = (10.0**0.5 + 3.0) / 2
    torch.testing.assert_close(obj.proposal(), 0.9 * r / r.sum() + 0.1 / 4)


def test_per_step_updates_wait_for_end_step():
    obj = AdaptiveSigma(make_objective("edm", EDM()), bins=4, decay=0.5)
    obj.update_per_step = True
    obj._record(torch.tensor([1]), torch.tensor([2.0]))
    obj._record(torch.tensor([1, 2]), torch.tensor([4.0, 3.0]))
    torch.testing.assert_close(obj.second_moment, torch.ones(4))  # nothing yet
    obj.end_step()  # one update from both calls: bin 1's mean of 4 and 16
    torch.testing.assert_close(obj.second_moment, torch.tensor([1.0, 10.0, 9.0, 1.0]))
    torch.testing.assert_close(obj.visits, torch.tensor([0.0, 1.0, 1.0, 0.0]))


def test_no_update_in_eval_mode_or_without_grad():
    process = EDM()
    obj = AdaptiveSigma(make_objective("edm", process, sigma_data=1.0), bins=4)
    model = _model(process)
    x = torch.randn(32, 2)
    with torch.no_grad():
        obj(model, x, generator=torch.Generator().manual_seed(0))
    obj.eval()
    obj(model, x, generator=torch.Generator().manual_seed(0))
    assert float(obj.visits.sum()) == 0
    obj.train()
    obj(model, x, generator=torch.Generator().manual_seed(0))
    assert float(obj.visits.sum()) > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"bins": 1}, "bins"),
        ({"decay": 1.0}, "decay must be in"),
        ({"mix": 0.0}, "mix"),
        ({"mix": 1.5}, "mix must be in"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveSigma(make_objective("edm", EDM()), **kwargs)


def test_discrete_laws_and_double_wrapping_are_refused():
    process = VP()
    grid = make_objective("dsm", process, t_sampler=GridT(torch.tensor([0.1, 0.5, 0.9])))
    with pytest.raises(ValueError, match="continuous law of t"):
        AdaptiveSigma(grid)
    once = AdaptiveSigma(make_objective("edm", EDM()))
    with pytest.raises(ValueError, match="wrap it once"):
        AdaptiveSigma(once)
    with pytest.raises(ValueError, match="wrap it last"):
        Trainer(_model(EDM()), Dequantized(once, 0.1), torch.randn(64, 2),
                TrainConfig(steps=1, batch_size=16, progress=False))  # fmt: skip


def test_trainer_saves_and_resumes_the_statistics_exactly(tmp_path):
    process = EDM()
    data = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))

    def trainer(steps, out):
        obj = AdaptiveSigma(UncertaintyWeighted(make_objective("edm", process, sigma_data=1.0)),
                            bins=8)  # fmt: skip
        cfg = TrainConfig(steps=steps, batch_size=32, log_every=5, ckpt_every=5, progress=False)
        return Trainer(_model(process), obj, data, cfg, out_dir=out)

    full = trainer(10, tmp_path / "a")
    full.fit()
    m = full.objective.second_moment.clone()
    assert not torch.equal(m, torch.ones(8))
    tensors, _ = load_checkpoint(tmp_path / "a" / "checkpoint.safetensors")
    torch.testing.assert_close(tensors["objective.second_moment"], m)
    assert "objective.objective.linear.weight" in tensors  # the learned weighting inside
    half = trainer(5, tmp_path / "b")
    half.fit()
    again = trainer(10, tmp_path / "b")
    again.resume()
    again.fit()
    torch.testing.assert_close(again.objective.second_moment, m, rtol=0, atol=0)
    for k, v in full.model.state_dict().items():
        torch.testing.assert_close(again.model.state_dict()[k], v, rtol=0, atol=0)


def test_validation_loss_is_the_fixed_objectives():
    process = EDM()
    data = torch.randn(128, 2, generator=torch.Generator().manual_seed(0))
    val = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    cfg = TrainConfig(steps=1, batch_size=32, progress=False)
    plain = make_objective("edm", process, sigma_data=1.0)
    a = Trainer(_model(process), plain, data, cfg, val_data=val).validation_loss()
    b = Trainer(_model(process), _skewed(AdaptiveSigma(plain, bins=16)), data, cfg,
                val_data=val).validation_loss()  # fmt: skip
    assert a == b


def test_proposal_curve_covers_the_support_in_order():
    process = EDM()
    obj = _skewed(AdaptiveSigma(make_objective("edm", process), bins=8))
    c = obj.proposal_curve()
    assert len(c["q"]) == len(c["sigma_mid"]) == 8
    assert c["sigma_low"][1:] == pytest.approx(c["sigma_high"][:-1])
    rows = zip(c["sigma_low"], c["sigma_mid"], c["sigma_high"], strict=True)
    assert all(lo < m < hi for lo, m, hi in rows)
    assert sum(c["q"]) == pytest.approx(1.0)
    assert c["draw_rate"] == pytest.approx([8 * q for q in c["q"]])


def test_cli_trains_with_adaptive_draws_plots_them_and_keeps_them_on_resume(tmp_path, capsys):
    import json

    from scorekit.app.cli import main

    run = tmp_path / "run"
    common = ["--data", "moons", "--n", "500", "--batch", "64", "--quiet", "--out", str(run)]
    assert main(["train", *common, "--steps", "20", "--sigma-sampling", "adaptive"]) == 0
    draws = json.loads((run / "sigma_draws.json").read_text())
    assert draws["step"] == 20 and len(draws["q"]) == 32
    assert any(abs(f - 1) > 1e-3 for f in draws["draw_rate"])  # adapted, not the base law
    assert (run / "sigma_draws.png").stat().st_size > 1000
    assert main(["train", *common, "--steps", "30", "--resume"]) == 0  # keeps "adaptive"
    assert json.loads((run / "sigma_draws.json").read_text())["step"] == 30
    capsys.readouterr()
    assert main(["train", *common, "--steps", "40", "--resume", "--sigma-sampling", "fixed"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--sigma-sampling fixed" in err[0] and "adaptive" in err[0]
    assert main(["train", *common, "--steps", "10", "--overwrite"]) == 0
    assert not (run / "sigma_draws.json").exists() and not (run / "sigma_draws.png").exists()


def test_cli_refuses_adaptive_draws_on_a_grid_of_noise_levels(tmp_path, capsys):
    from scorekit.app.cli import main

    argv = ["train", "--data", "moons", "--recipe", "ve-dsm", "--loss", "ncsn", "--steps", "2",
            "--sigma-sampling", "adaptive", "--quiet", "--out", str(tmp_path / "r")]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--sigma-sampling adaptive" in err[0] and "--loss ncsn" in err[0]

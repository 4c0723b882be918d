"""The shared calling convention, `sample`, reproducibility, chunking and bad input."""

import math

import pytest
import torch

from scorekit import EDM, VE, VP, ExactScore, Gaussian, GaussianMixture, ScoreModel
from scorekit.core.schedules import time_grid
from scorekit.samplers import (
    DDIM,
    DDPM,
    SAMPLERS,
    EulerMaruyama,
    Heun,
    Langevin,
    LangevinCorrector,
    ReverseDiffusion,
    SampleResult,
    default_grid,
    make_sampler,
    sample,
)

CHEAP = {  # sampler -> (steps, options) small enough for unit tests
    "euler": (6, {}),
    "heun": (6, {}),
    "dpmpp_2m": (6, {}),
    "dpmpp_3m": (6, {}),
    "unipc": (6, {}),
    "unipc_3": (6, {"variant": "bh1"}),
    "deis": (6, {}),
    "ipndm": (6, {}),
    "dpmpp_2m_sde": (6, {}),
    "dpmpp_3m_sde": (6, {"eta": 0.5}),
    "dopri5": (2, {"rtol": 1e-4, "atol": 1e-4}),
    "euler_maruyama": (6, {}),
    "reverse_diffusion": (6, {}),
    "pc": (6, {}),
    "ddpm": (6, {}),
    "ddim": (6, {"eta": 0.3}),
    "edm": (6, {"s_churn": 5.0}),
    "restart": (6, {"solver": "unipc"}),
    "langevin": (6, {"step_size": 0.05}),
    "mala": (6, {"step_size": 0.05}),  # a score model: the score's line integral
    "annealed_langevin": (3, {"steps_per_level": 2}),
}


@pytest.fixture(scope="module")
def mix():
    return GaussianMixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.5]], stds=[0.4, 0.6])


def test_required_names_are_exposed():
    for name in (
        "euler",
        "heun",
        "dpmpp_2m",
        "dopri5",
        "euler_maruyama",
        "pc",
        "annealed_langevin",
        "ddpm",
        "ddim",
        "edm",
    ):
        assert name in SAMPLERS
    assert set(CHEAP) == set(SAMPLERS)


@pytest.mark.parametrize("name", list(CHEAP))
def test_same_seed_same_samples(name, mix):
    steps, kw = CHEAP[name]
    model = ExactScore(mix, VP())
    run = lambda seed: sample(  # noqa: E731
        model, 64, name, steps, torch.Generator().manual_seed(seed), dtype=torch.float64, **kw
    )
    a, b, c = run(0), run(0), run(1)
    assert isinstance(a, SampleResult) and a.x.shape == (64, 2) and a.x.dtype == torch.float64
    assert torch.equal(a.x, b.x) and a.nfe == b.nfe > 0
    assert not torch.allclose(a.x, c.x)


@pytest.mark.parametrize("name", list(CHEAP))
def test_eps_and_score_wrappers_give_the_same_samples(name, mix):
    steps, kw = CHEAP[name]
    p = VP()
    exact = ExactScore(mix, p)

    def score_net(x, t):
        return exact.score(x, t)

    def eps_net(x, t):
        return -p.sigma(t).to(x)[:, None] * exact.score(x, t)

    def x0_net(x, t):
        return exact.posterior_mean(x, t)

    out = [
        sample(
            ScoreModel(net, p, prediction=kind),
            (32, 2),
            name,
            steps,
            torch.Generator().manual_seed(3),
            dtype=torch.float64,
            **kw,
        ).x
        for net, kind in [(score_net, "score"), (eps_net, "eps"), (x0_net, "x0")]
    ]
    torch.testing.assert_close(out[1], out[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out[2], out[0], rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_3m", "ddim", "edm"])
def test_deterministic_chunks_equal_one_batch(name, mix):
    model = ExactScore(mix, VE(0.01, 10.0))
    one = sample(model, 100, name, 5, torch.Generator().manual_seed(0), dtype=torch.float64)
    chunked = sample(
        model, 100, name, 5, torch.Generator().manual_seed(0), batch_size=30, dtype=torch.float64
    )
    torch.testing.assert_close(chunked.x, one.x, rtol=1e-12, atol=1e-12)
    assert chunked.info["chunks"] == 4
    assert chunked.nfe == 4 * one.nfe  # NFE counts every batched evaluation spent


def test_stochastic_chunks_are_reproducible(mix):
    model = ExactScore(mix, VP())
    runs = [
        sample(
            model,
            100,
            "ddpm",
            20,
            torch.Generator().manual_seed(0),
            batch_size=40,
            dtype=torch.float64,
        )
        for _ in range(2)
    ]
    assert torch.equal(runs[0].x, runs[1].x)


def test_a_million_points_in_chunks():
    # 10^6 2-D points, DPM-Solver++(2M) in 20 steps on an exact Gaussian: chunked, and
    # no trajectory held.
    target = Gaussian(torch.tensor([1.0, -1.0]), std=torch.tensor([0.5, 2.0]))
    model = ExactScore(target, VP())
    res = sample(
        model,
        10**6,
        "dpmpp_2m",
        20,
        torch.Generator().manual_seed(0),
        batch_size=250_000,
        dtype=torch.float32,
    )
    assert res.x.shape == (10**6, 2) and res.trajectory is None and res.info["chunks"] == 4
    assert res.nfe == 4 * 20
    # The moments are the target's up to the 20-step solver error (1.5% on the std of 2,
    # measured in float64) and the Monte-Carlo error (2e-3 of the std).
    torch.testing.assert_close(res.x.mean(0), torch.tensor([1.0, -1.0]), atol=0.02, rtol=0)
    torch.testing.assert_close(res.x.std(0), torch.tensor([0.5, 2.0]), atol=0, rtol=0.025)
    # and the chunked run equals one batch on a slice (same prior draw, deterministic)
    one = sample(
        model,
        10**6,
        "dpmpp_2m",
        20,
        torch.Generator().manual_seed(0),
        batch_size=10**6,
        dtype=torch.float32,
    )
    torch.testing.assert_close(one.x[:1000], res.x[:1000])


def test_trajectory_and_nfe(mix):
    model = ExactScore(mix, EDM(0.002, 20.0))
    g = torch.Generator().manual_seed(0)
    r = sample(model, 10, "heun", 4, g, return_trajectory=True, dtype=torch.float64)
    assert r.trajectory.shape == (5, 10, 2) and r.nfe == 8
    torch.testing.assert_close(r.trajectory[-1], r.x)
    assert sample(model, 10, "pc", 4, g, corrector_steps=2).nfe == 4 * 3
    assert sample(model, 10, "annealed_langevin", 3, g, steps_per_level=5).nfe == 16
    assert sample(model, 10, "ddpm", 7, g).nfe == 7
    r = sample(model, 10, "euler", 4, g, return_trajectory=True, batch_size=4)
    assert r.trajectory.shape == (5, 10, 2)


def test_ddim_eta_one_is_ddpm(mix):
    p = VP()
    model = ExactScore(mix, p)
    x = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grid = torch.tensor([1.0, 0.6, 0.3, 0.1, 0.0], dtype=torch.float64)
    a = DDIM(1.0)(model, x, grid, torch.Generator().manual_seed(1)).x
    b = DDPM()(model, x, grid, torch.Generator().manual_seed(1)).x
    torch.testing.assert_close(a, b)


def test_one_step_closed_forms(mix):
    # Euler-Maruyama and reverse diffusion (SMLD) on VE, one non-final step, by hand.
    p = VE(0.01, 10.0)
    model = ExactScore(mix, p)
    x = torch.randn(20, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grid = torch.tensor([0.8, 0.7, 0.6], dtype=torch.float64)
    res = EulerMaruyama()(model, x, grid, torch.Generator().manual_seed(4), True)
    z = torch.randn(20, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    s, g2 = model(x, grid[0]), float(p.g2(grid[0]))
    torch.testing.assert_close(res.trajectory[1], x + g2 * s * 0.1 + math.sqrt(g2 * 0.1) * z)
    res = ReverseDiffusion()(model, x, grid, torch.Generator().manual_seed(4), True)
    d = float(p.sigma(grid[0]) ** 2 - p.sigma(grid[1]) ** 2)
    torch.testing.assert_close(res.trajectory[1], x + d * s + math.sqrt(d) * z)


def test_langevin_corrector_snr_rule(mix):
    # Step 2 * alpha_i * (r * mean|z| / mean|s|)^2 with alpha_i = (alpha(t)/alpha(t'))^2.
    p = VP()
    model = ExactScore(mix, p)
    x = torch.randn(30, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t, t1 = torch.tensor(0.5, dtype=torch.float64), torch.tensor(0.45, dtype=torch.float64)
    from scorekit.samplers.base import CountingModel, Grid

    out = LangevinCorrector(snr=0.2)(
        CountingModel(model),
        x,
        0,
        Grid.of(p, torch.stack([t, t1])),
        torch.Generator().manual_seed(7),
    )
    z = torch.randn(30, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    s = model(x, t)
    a = float(p.alpha(t) / p.alpha(t1)) ** 2
    eps = 2 * a * (0.2 * z.norm(dim=1).mean() / s.norm(dim=1).mean()) ** 2
    torch.testing.assert_close(out, x + eps * s + torch.sqrt(2 * eps) * z)


def test_bad_input(mix):
    model = ExactScore(mix, VP())
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="'euler'.*'heun'.*got 'rk45'"):
        sample(model, 10, "rk45", 5, g)
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        sample(model, 10, "euler", 0, g)
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample(model, 10, "euler", grid=torch.tensor([1.0, 0.2, 0.5]), generator=g)
    with pytest.raises(ValueError, match="strictly decreasing"):
        make_sampler("heun")(model, torch.zeros(3, 2), torch.tensor([0.1, 0.9]))
    for eta in (-0.1, 1.5):
        with pytest.raises(ValueError, match="eta must lie in"):
            sample(model, 10, "ddim", 5, g, eta=eta)
    with pytest.raises(ValueError, match="unexpected options"):
        sample(model, 10, "heun", 5, g, eta=0.5)
    with pytest.raises(ValueError, match="data shape is unknown"):
        sample(ScoreModel(lambda x, t: x, VP()), 10, "euler", 5, g)
    with pytest.raises(ValueError, match="predictor"):
        make_sampler("pc", predictor="ode")
    with pytest.raises(ValueError, match="predictor must step"):
        make_sampler("pc", predictor=make_sampler("dopri5"))
    with pytest.raises(ValueError, match="annealed_langevin"):
        sample(model, 10, "annealed_langevin", 1, g)


def test_pc_with_an_ode_predictor(mix):
    # Any single-step sampler can predict; the corrector's noise comes first from the
    # generator, so the predictor step is reproducible by hand.
    from scorekit.samplers import PredictorCorrector

    model = ExactScore(mix, VE(0.01, 10.0))
    x = torch.randn(40, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grid = torch.tensor([0.9, 0.8], dtype=torch.float64)
    res = PredictorCorrector(DDIM(0.0), snr=0.1)(model, x, grid, torch.Generator().manual_seed(2))
    from scorekit.samplers.base import CountingModel, Grid

    corrected = LangevinCorrector(0.1)(
        CountingModel(model), x, 0, Grid.of(model.process, grid), torch.Generator().manual_seed(2)
    )
    expect = DDIM(0.0)(model, corrected, grid).x
    torch.testing.assert_close(res.x, expect)
    assert res.nfe == 2


def test_x_T_starts_the_loop_where_the_user_says(mix):
    # the default start is the prior scaled to sigma(t_0); passing that same draw as x_T
    # gives the same samples, and any other start is followed deterministically
    p = VP()
    model = ExactScore(mix, p)
    grid = time_grid(p, 8)
    drawn = sample(model, 50, "heun", grid=grid, generator=torch.Generator().manual_seed(0),
                   dtype=torch.float64)  # fmt: skip
    x_T = p.prior_sample((50, 2), torch.Generator().manual_seed(0), torch.float64)
    x_T = x_T * float(p.sigma(grid[0])) / p.prior_std()
    given = sample(model, x_T=x_T, sampler="heun", grid=grid)
    torch.testing.assert_close(given.x, drawn.x, rtol=0, atol=0)
    by_hand = Heun()(model, x_T, grid)
    torch.testing.assert_close(given.x, by_hand.x, rtol=0, atol=0)
    with pytest.raises(ValueError, match="does not match x_T"):
        sample(model, 7, "heun", x_T=x_T)
    with pytest.raises(ValueError, match="shape_or_n is needed"):
        sample(model, sampler="heun")


class _Shifted(ScoreModel):
    """The exact score of the mixture shifted by ``shift`` (a conditioning input)."""

    def __init__(self, exact):
        super().__init__(None, exact.process, "score", exact.data_shape)
        self.exact = exact

    def raw(self, x, t, shift):
        a = self.process.alpha(t).to(x)[:, None]
        return self.exact.score(x - a * shift, t)


def test_cond_is_split_with_the_chunks(mix):
    # per-sample conditioning travels with its rows: chunked = one batch, and each sample
    # follows its own shift
    model = _Shifted(ExactScore(mix, VE(0.01, 10.0)))
    shift = torch.zeros(60, 2, dtype=torch.float64)
    shift[30:, 0] = 50.0
    run = lambda bs: sample(model, 60, "heun", 6, torch.Generator().manual_seed(0),  # noqa: E731
                            bs, dtype=torch.float64, cond={"shift": shift})  # fmt: skip
    one, chunked = run(None), run(7)
    torch.testing.assert_close(chunked.x, one.x, rtol=1e-12, atol=1e-12)
    assert (one.x[:30, 0].abs() < 10).all() and (one.x[30:, 0] > 40).all()
    with pytest.raises(ValueError, match=r"cond\['shift'\] must have the batch size 60"):
        sample(model, 60, "heun", 6, cond={"shift": shift[:10]})


def test_info_sums_over_chunks():
    # MALA's acceptance is over every chunk, not the last one's
    from scorekit.nets import EnergyMLP

    torch.manual_seed(0)
    model = ScoreModel(EnergyMLP(2, hidden=16, depth=1), VE(0.01, 1.0), prediction="energy")
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    r = sample(model, (40, 2), "mala", 5, g(), batch_size=15, step_size=0.05)
    assert r.info["chunks"] == 3 and r.info["proposed"] == 40 * 5
    assert r.info["acceptance"] == r.info["accepted"] / r.info["proposed"]
    parts = [Langevin(0.05, metropolis=True)(model, x, torch.zeros(6)) for x in
             torch.zeros(40, 2).split(15)]  # fmt: skip
    assert sum(p.info["proposed"] for p in parts) == 200


def test_hook_sees_every_grid_index(mix):
    seen = []

    def hook(x, j, grid, generator, rows):
        seen.append((j, rows.start, rows.stop))
        return x

    model = ExactScore(mix, VP())
    sample(model, 10, "euler", 4, torch.Generator().manual_seed(0), 6, hook=hook)
    assert seen == [(j, 0, 6) for j in range(5)] + [(j, 6, 12) for j in range(5)]
    with pytest.raises(ValueError, match="grid point to grid point"):
        sample(model, 10, "dopri5", 1, hook=hook)


def test_sampler_classes_declare_their_defaults():
    # the registry maps names to classes; each class knows its steps, grid and start
    p = VP()
    for name, factory in SAMPLERS.items():
        smp = factory()
        g = default_grid(name, p)
        assert isinstance(g, torch.Tensor) and g.dtype == torch.float64
        assert len(g) >= 2 and smp.default_steps >= 1
    assert default_grid("ddim", p)[-1] == 0.0  # DDPM timesteps end at t = 0
    assert not make_sampler("langevin").starts_at_prior
    assert isinstance(make_sampler("ddpm"), DDIM) and make_sampler("ddpm").eta == 1.0
    assert make_sampler(Heun()) is not None
    with pytest.raises(ValueError, match="already built"):
        make_sampler(Heun(), eta=1.0)


def test_dopri5_on_a_grid_ending_at_zero_noise(mix):
    # the last interval to sigma = 0 is an Euler step, never a model call at sigma = 0
    p = VP()
    model = ExactScore(mix, p)
    grid = time_grid(p, 1, final_zero=True)
    r = sample(model, 20, "dopri5", grid=grid, generator=torch.Generator().manual_seed(0),
               dtype=torch.float64)  # fmt: skip
    assert torch.isfinite(r.x).all() and r.nfe > 6


def test_mala_takes_no_hook():
    # MALA caches the energy of its points: a hook moving them would void the acceptance test
    assert not make_sampler("mala").single_step and make_sampler("langevin").single_step

"""optimized_grid (GITS): the dynamic programme is exact, the grid is a subset of the
candidates, and on an exact Gaussian, whose probability-flow ODE is solved in closed form,
the fitted grid beats the default Karras grid from fresh starts."""

import itertools
import math

import pytest
import torch

from scorekit import EDM, VP, ExactScore, Gaussian
from scorekit.core.schedules import time_grid
from scorekit.samplers import make_sampler, optimized_grid
from scorekit.samplers.grids import _cheapest_path
from test_samplers_api import _Shifted

D = torch.float64
VAR = torch.logspace(math.log10(0.01), math.log10(4.0), 8, dtype=D)


@pytest.fixture(scope="module")
def gauss():
    return ExactScore(Gaussian(torch.zeros(8, dtype=D), cov=torch.diag(VAR)), EDM(0.01, 80.0))


def exact_flow(x, s0, s1):
    """The PF-ODE of N(0, diag VAR) on the EDM process: x(s1) = x(s0) sqrt((v+s1^2)/(v+s0^2))."""
    return x * ((VAR + s1**2) / (VAR + s0**2)).sqrt()


def test_dynamic_programme_is_exact():
    g = torch.Generator().manual_seed(0)
    k1 = 8
    cost = torch.rand(k1, k1, generator=g, dtype=D).triu(1)
    cost[torch.ones(k1, k1).tril().bool()] = math.inf
    for steps in (1, 2, 4, 7):
        path = _cheapest_path(cost, steps)
        brute = min(
            (sum(cost[a, b] for a, b in itertools.pairwise((0, *mid, k1 - 1))), mid)
            for mid in itertools.combinations(range(1, k1 - 1), steps - 1)
        )
        assert path[0] == 0 and path[-1] == k1 - 1 and len(path) == steps + 1
        assert sum(cost[a, b] for a, b in itertools.pairwise(path)) == pytest.approx(
            float(brute[0]), rel=1e-14
        )


def test_fitted_grid_beats_karras_from_fresh_starts(gauss):
    gen = torch.Generator().manual_seed(0)
    grid = optimized_grid(gauss, 8, 256, dtype=D, final_zero=True, generator=gen)
    cand = time_grid(gauss.process, 100, "karras", final_zero=True)
    assert grid.shape == (9,) and grid[0] == 80.0 and grid[-1] == 0.0
    assert (grid[1:] < grid[:-1]).all()
    assert all(torch.isclose(cand, t, rtol=1e-12, atol=0).any() for t in grid)
    x = 80.0 * torch.randn(4000, 8, generator=torch.Generator().manual_seed(1), dtype=D)
    ref = exact_flow(x, 80.0, 0.0)
    karras = time_grid(gauss.process, 7, "karras", final_zero=True)
    err = {}
    for name in ("ipndm", "euler"):
        smp = make_sampler(name)
        err[name] = [float((smp(gauss, x, g).x - ref).pow(2).sum(1).mean().sqrt())
                     for g in (grid, karras)]  # fmt: skip
    # measured: iPNDM 0.043 vs 0.163, Euler 0.42 vs 0.73 (fitted vs Karras, 8 steps)
    assert err["ipndm"][0] < 0.35 * err["ipndm"][1]
    assert err["euler"][0] < 0.7 * err["euler"][1]


def test_one_step_per_candidate_returns_the_candidates_and_chunks_agree(gauss):
    run = lambda steps, bs=None, norm="l2": optimized_grid(  # noqa: E731
        gauss, steps, 64, candidates=12, refine=4, dtype=D, batch_size=bs, norm=norm,
        generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    torch.testing.assert_close(run(12), time_grid(gauss.process, 12 * 4, "karras")[::4])
    torch.testing.assert_close(run(5), run(5, bs=10), rtol=0, atol=0)
    assert run(5, norm="sq").shape == (6,)
    x_T = 80.0 * torch.randn(64, 8, generator=torch.Generator().manual_seed(3), dtype=D)
    torch.testing.assert_close(
        optimized_grid(gauss, 5, candidates=12, refine=4, x_T=x_T), run(5), rtol=0, atol=0
    )


def test_conditioning_reaches_the_model():
    # every sample's start is shifted far along x: with the shift passed the teacher's
    # trajectories and the grid follow the shifted model
    from scorekit import GaussianMixture

    mix = GaussianMixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], stds=0.3)
    model = _Shifted(ExactScore(mix, VP()))
    shift = torch.zeros(32, 2, dtype=D)
    shift[16:, 0] = 50.0
    g = optimized_grid(model, 6, 32, candidates=20, refine=2, dtype=D, cond={"shift": shift},
                       batch_size=8, generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert g.shape == (7,)
    with pytest.raises(ValueError, match=r"cond\['shift'\] must have the batch size 32"):
        optimized_grid(model, 6, 32, candidates=20, refine=2, cond={"shift": shift[:4]})


def test_bad_arguments(gauss):
    with pytest.raises(ValueError, match="steps must be <= the 10 candidate intervals, got 11"):
        optimized_grid(gauss, 11, 8, candidates=10)
    with pytest.raises(ValueError, match="norm"):
        optimized_grid(gauss, 3, 8, norm="l1")
    with pytest.raises(ValueError, match="model must be a scorekit ScoreModel"):
        optimized_grid(object(), 3, 8)


def test_docstring_example_runs():
    import doctest

    import scorekit.samplers.grids

    assert doctest.testmod(scorekit.samplers.grids).failed == 0

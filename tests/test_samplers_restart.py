"""Restart sampling against closed forms: on a Gaussian target the output is affine in the
start and the noises, so its mean and variance are computed exactly; restarts contract a
wrong start by the factor the forward/backward round trip predicts, the weak order is the
inner solver's (fitted slope), and the NFE is what the plan says."""

import math

import pytest
import torch

import scorekit.samplers.restart as restart
from scorekit import EDM, VP, ExactScore, Gaussian
from scorekit.core.schedules import time_grid
from scorekit.samplers import Dopri5, Restart
from test_samplers_multistep import _exact_moments
from test_samplers_ode import slope

M, S = 0.7, 0.5
PROCESSES = [EDM(0.002, 80.0), VP()]


def _gaussian(process):
    return ExactScore(Gaussian(torch.tensor([M], dtype=torch.float64), std=S), process)


def _times(process, ratios):
    return process.t_of_ratio(torch.tensor(ratios, dtype=torch.float64))


@pytest.mark.parametrize("process", PROCESSES, ids=["EDM", "VP"])
@pytest.mark.parametrize("repeats", [1, 2, 3])
def test_restarts_contract_a_wrong_start_as_the_round_trip_predicts(process, repeats):
    # start at sigma_lo from N(m + e, v_lo + d) instead of N(m, v_lo) (in y = x/alpha);
    # an exact round trip to sigma_hi and back maps y - m to sqrt(v_lo/v_hi) (y - m) in
    # distribution, so after K restarts the errors are e r^K and d r^(2K), r^2 = v_lo/v_hi,
    # and the exact flow to sigma_end scales them by sqrt(v_end/v_lo) and v_end/v_lo
    lo, hi, end, e, d = 0.4, 2.0, 0.05, 0.3, 0.2
    v = {k: S * S + k * k for k in (lo, hi, end)}
    r2 = v[lo] / v[hi]
    exact = Dopri5(rtol=1e-10, atol=1e-10)
    smp = Restart([(lo, hi, repeats, 1)], solver=exact)
    model = _gaussian(process)
    grid = _times(process, [lo, end])
    (a_lo, _), (a_end, _) = (process.marginal(t) for t in grid)
    a_lo, a_end = float(a_lo), float(a_end)
    mean, var = _exact_moments(smp, model, grid, a_lo * (M + e), a_lo**2 * (v[lo] + d),
                               module=restart, noises=repeats)  # fmt: skip
    scale = v[end] / v[lo]
    assert mean / a_end - M == pytest.approx(e * r2 ** (repeats / 2) * scale**0.5, abs=1e-8)
    assert var / a_end**2 - v[end] == pytest.approx(d * r2**repeats * scale, abs=1e-8)


@pytest.mark.parametrize("process", PROCESSES, ids=["EDM", "VP"])
def test_weak_order_is_the_inner_solvers(process):
    # main grid and restart steps refined together from the exact marginal at t_max; the
    # error in the output's mean and variance is the discretisation's (Heun in t keeps the
    # mean exact only where alpha = 1)
    model = _gaussian(process)
    steps = [16, 32, 64, 128]
    errors = []
    for n in steps:
        smp = Restart([(0.06, 0.3, 2, n // 8), (1.0, 3.0, 1, n // 8)])
        grid = time_grid(process, n)
        (a0, s0), (a1, s1) = (process.marginal(grid[k]) for k in (0, -1))
        mu, var = _exact_moments(smp, model, grid, float(a0) * M, float(a0**2 * S * S + s0**2),
                                 module=restart, noises=3)  # fmt: skip
        if isinstance(process, EDM):
            assert abs(mu - float(a1) * M) < 1e-12
        errors.append(abs(mu - float(a1) * M) + abs(var - float(a1**2 * S * S + s1**2)))
    fitted = slope(steps, errors)
    assert Restart().weak_order == 2
    assert errors[-1] < errors[0] / 2**2, errors
    assert abs(fitted - 2) < 0.45, (fitted, errors)


def test_nfe_is_the_main_grid_plus_each_restart():
    model = _gaussian(EDM(0.002, 80.0))
    grid = time_grid(model.process, 12)
    x = 80.0 * torch.randn(5, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    r = Restart([(0.1, 0.5, 3, 2), (2.0, 5.0, 1, 4)])(model, x, grid, torch.Generator())
    assert r.nfe == 2 * 12 + 3 * 2 * 2 + 1 * 2 * 4
    ddim = Restart([(0.1, 0.5, 3, 2)], solver="ddim")(model, x, grid, torch.Generator())
    assert ddim.nfe == 12 + 3 * 2
    # a level below the grid's restarts at its last point, after the main solve
    few = Restart([(1e-4, 0.5, 1, 3)])(model, x, grid, torch.Generator())
    assert few.nfe == 2 * 12 + 2 * 3


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(intervals=[]), "intervals must be a non-empty"),
        (dict(intervals=[(0.1, 0.5, 2)]), "intervals must be a non-empty"),
        (dict(intervals=5), "intervals must be a non-empty"),
        (dict(intervals=[(0.5, 0.1, 2, 2)]), "0 < sigma_lo < sigma_hi"),
        (dict(intervals=[(0.0, 0.1, 2, 2)]), "0 < sigma_lo < sigma_hi"),
        (dict(intervals=[(0.1, math.inf, 2, 2)]), "0 < sigma_lo < sigma_hi"),
        (dict(intervals=[(0.1, 0.5, 0, 2)]), "repeats must be an integer >= 1"),
        (dict(intervals=[(0.1, 0.5, 2, 1.5)]), "steps must be an integer >= 1"),
        (dict(solver="ddpm"), "solver must be a deterministic ODE solver"),
        (dict(solver="nope"), "sampler must be one of"),
    ],
)
def test_bad_settings_are_refused_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Restart(**kwargs)


def test_levels_the_grid_cannot_serve_are_refused():
    model = _gaussian(EDM(0.002, 80.0))
    x = torch.zeros(2, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="sigma_hi = 100 is above the process's largest"):
        Restart([(1.0, 100.0, 1, 1)])(model, x, time_grid(model.process, 5))
    with pytest.raises(ValueError, match="no grid point lies below the restart level"):
        Restart([(0.1, 0.5, 1, 1)])(model, x, _times(model.process, [70.0, 10.0, 1.0]))
    with pytest.raises(ValueError, match="no grid point lies below the restart level"):
        grid = torch.cat([_times(model.process, [70.0, 10.0, 1.0]), torch.zeros(1)])
        Restart([(0.1, 0.5, 1, 1)])(model, x, grid)  # sigma = 0 is no restart level
    with pytest.raises(ValueError, match="per-step hook"):
        Restart()(model, x, time_grid(model.process, 5), hook=lambda x, *a: x)

"""Deterministic solvers: declared order = fitted log-log slope of the error against a
dopri5 reference at tight tolerance, on an exact 2-D mixture (float64)."""

import math

import pytest
import torch

from scorekit import EDM, VE, VP, ExactScore
from scorekit.core.schedules import time_grid
from scorekit.samplers import DDIM, Dopri5, DPMSolverPP, EDMSampler, Euler, Heun, RungeKutta

STEPS = [16, 32, 64, 128]
SOLVERS = {
    "euler": Euler(),
    "heun": Heun(),
    "dpmpp_2m": DPMSolverPP(2),
    "dpmpp_3m": DPMSolverPP(3),
    "ddim": DDIM(0.0),
    "edm": EDMSampler(),
}


def slope(steps, errors):
    ln = torch.log(torch.tensor(steps, dtype=torch.float64))
    le = torch.log(torch.tensor(errors, dtype=torch.float64))
    return -float(((ln - ln.mean()) * (le - le.mean())).sum() / ((ln - ln.mean()) ** 2).sum())


def rmse(a, b):
    return float((a - b).pow(2).sum(1).mean().sqrt())


@pytest.fixture(scope="module", params=[VP(), VE(0.01, 20.0)], ids=["VP", "VE"])
def setup(request):
    from scorekit import GaussianMixture

    mix = GaussianMixture(
        [0.3, 0.7],
        [[-2.0, 0.0], [1.5, 1.0]],
        covs=[[[0.5, 0.2], [0.2, 0.3]], [[0.4, -0.1], [-0.1, 0.6]]],
    )
    p = request.param
    model = ExactScore(mix, p)
    x = p.prior_sample((64, 2), torch.Generator().manual_seed(0), torch.float64)
    ref = Dopri5(rtol=1e-11, atol=1e-11)(model, x, time_grid(p, 1))
    return model, x, ref.x


@pytest.mark.parametrize("name", list(SOLVERS))
def test_declared_order_matches_fitted_slope(setup, name):
    model, x, ref = setup
    solver = SOLVERS[name]
    assert solver.order is not None and not solver.stochastic
    errors = [rmse(solver(model, x, time_grid(model.process, n)).x, ref) for n in STEPS]
    assert errors[-1] < errors[0] / 2**solver.order  # converging, not just sloped
    fitted = slope(STEPS, errors)
    assert abs(fitted - solver.order) < 0.4 + 0.1 * solver.order, (name, fitted, errors)


def test_dopri5_reports_nfe_and_meets_tolerance(setup):
    model, x, ref = setup
    loose = Dopri5(rtol=1e-4, atol=1e-4)(model, x, time_grid(model.process, 1))
    tight = Dopri5(rtol=1e-7, atol=1e-7)(model, x, time_grid(model.process, 1))
    assert 6 < loose.nfe < tight.nfe
    assert rmse(tight.x, ref) < 1e-5 < rmse(loose.x, ref) < 1e-2


def test_dopri5_trajectory_at_grid_points(setup):
    model, x, ref = setup
    grid = time_grid(model.process, 5)
    res = Dopri5(rtol=1e-9, atol=1e-9)(model, x, grid, return_trajectory=True)
    assert res.trajectory.shape == (6, *x.shape)
    torch.testing.assert_close(res.trajectory[0], x)
    torch.testing.assert_close(res.trajectory[-1], res.x)
    assert rmse(res.x, ref) < 1e-6


def test_edm_process_identities(mixture2d):
    # With alpha = 1 and t = sigma: DDIM(eta=0) is Euler, EDM's sampler without churn is Heun.
    p = EDM(0.002, 20.0)
    model = ExactScore(mixture2d, p)
    x = p.prior_sample((32, 2), torch.Generator().manual_seed(1), torch.float64)
    grid = time_grid(p, 12)
    torch.testing.assert_close(DDIM(0.0)(model, x, grid).x, Euler()(model, x, grid).x)
    torch.testing.assert_close(EDMSampler()(model, x, grid).x, Heun()(model, x, grid).x)


@pytest.mark.parametrize("p", [VP(), EDM(0.002, 20.0)], ids=["VP", "EDM"])
def test_final_step_to_zero_is_the_denoiser(mixture2d, p):
    # A grid ending at sigma = 0: DPM-Solver++, DDIM and EDM's sampler land on
    # D(x, sigma_{N-1}) = E[x0 | x]; Heun skips its last correction (2N - 1 evaluations)
    # and, for the EDM process only (sigma = t), its final Euler step is D as well.
    model = ExactScore(mixture2d, p)
    x = p.prior_sample((16, 2), torch.Generator().manual_seed(2), torch.float64)
    grid = time_grid(p, 6, final_zero=True)
    assert float(p.sigma(grid[-1])) == 0.0
    solvers = [DPMSolverPP(2), DPMSolverPP(3), DDIM(0.0), EDMSampler()]
    solvers += [Heun(), Euler()] if isinstance(p, EDM) else []
    for solver in solvers:
        res = solver(model, x, grid, return_trajectory=True)
        before = res.trajectory[-2]
        torch.testing.assert_close(res.x, model.posterior_mean(before, grid[-2]))
    assert Heun()(model, x, grid).nfe == 2 * 7 - 1
    assert EDMSampler()(model, x, grid).nfe == 2 * 7 - 1


def test_runge_kutta_tableau_is_checked():
    with pytest.raises(ValueError, match="sum to 1"):
        RungeKutta(a=[[], [1.0]], b=[0.5, 0.6], order=2)
    with pytest.raises(ValueError, match="one row per stage"):
        RungeKutta(a=[[], [1.0, 2.0]], b=[0.5, 0.5], order=2)


def test_midpoint_tableau_is_second_order(mixture2d):
    # The generic stepper runs any tableau: explicit midpoint (c = 1/2) converges at order 2.
    p = EDM(0.002, 20.0)
    model = ExactScore(mixture2d, p)
    x = p.prior_sample((32, 2), torch.Generator().manual_seed(3), torch.float64)
    ref = Dopri5(rtol=1e-11, atol=1e-11)(model, x, time_grid(p, 1)).x
    mid = RungeKutta(a=[[], [0.5]], b=[0.0, 1.0], order=2)
    errors = [rmse(mid(model, x, time_grid(p, n)).x, ref) for n in STEPS]
    assert math.isclose(slope(STEPS, errors), 2.0, abs_tol=0.3), errors


def test_dpmpp_lower_order_final(mixture2d):
    # With lower_order_final on a grid of N < 15 steps the orders are capped by the steps
    # left: 3 steps -> orders 1, 2, 1 for both 2M and 3M; 2 steps -> 1, 1 (DDIM).
    p = VP()
    model = ExactScore(mixture2d, p)
    x = p.prior_sample((16, 2), torch.Generator().manual_seed(4), torch.float64)
    g3, g2 = time_grid(p, 3, "geometric"), time_grid(p, 2, "geometric")
    a = DPMSolverPP(3, lower_order_final=True)(model, x, g3).x
    torch.testing.assert_close(a, DPMSolverPP(2, lower_order_final=True)(model, x, g3).x)
    assert not torch.allclose(a, DPMSolverPP(2)(model, x, g3).x)
    b = DPMSolverPP(2, lower_order_final=True)(model, x, g2).x
    torch.testing.assert_close(b, DDIM(0.0)(model, x, g2).x)

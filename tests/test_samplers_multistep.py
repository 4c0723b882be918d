"""UniPC, DEIS / iPNDM and DPM-Solver++ SDE: orders fitted by slope on exact targets
(float64), identities with the solvers they generalise, and the weak order of the stochastic
solvers computed exactly on a Gaussian target (its sample distribution is Gaussian)."""

import math

import pytest
import torch

import scorekit.samplers.multistep as multistep
from scorekit import EDM, VP, ExactScore, Gaussian, GaussianMixture
from scorekit.core.schedules import time_grid
from scorekit.samplers import (
    DDPM,
    DEIS,
    IPNDM,
    Dopri5,
    DPMSolverPP,
    DPMSolverPPSDE,
    UniPC,
    sample,
)
from test_samplers_ode import rmse, setup, slope  # noqa: F401  (setup is a fixture)

STEPS = [32, 64, 128, 256]


SOLVERS = {
    "unipc_1": UniPC(1),
    "unipc_2": UniPC(2),
    "unipc_3": UniPC(3),
    "unipc_2_bh1": UniPC(2, "bh1"),
    "unip_3": UniPC(3, corrector=False),
    "deis_2": DEIS(2),
    "deis_3": DEIS(3),
    "deis_4": DEIS(4),
    "ipndm": IPNDM(),
    "dpmpp_3m_sde_eta0": DPMSolverPPSDE(3, eta=0.0),
}


@pytest.mark.parametrize("name", list(SOLVERS))
def test_declared_order_matches_fitted_slope(setup, name):
    model, x, ref = setup
    solver = SOLVERS[name]
    assert not solver.stochastic
    errors = [rmse(solver(model, x, time_grid(model.process, n)).x, ref) for n in STEPS]
    assert errors[-1] < errors[0] / 2**solver.order  # converging, not just sloped
    fitted = slope(STEPS, errors)
    assert abs(fitted - solver.order) < 0.4 + 0.1 * solver.order, (name, fitted, errors)


def test_declared_orders():
    assert [UniPC(p).order for p in (1, 2, 3)] == [2, 3, 4]
    assert [UniPC(p, corrector=False).order for p in (1, 2, 3)] == [1, 2, 3]
    assert [DEIS(p).order for p in (1, 2, 3, 4)] == [1, 2, 3, 4]
    assert IPNDM(4).order == 2 and IPNDM(1).order == 1
    assert DPMSolverPPSDE(3, eta=0.0).order == 3 and DPMSolverPPSDE(3).weak_order == 2


def test_identities(setup):
    model, x, _ = setup
    grid = time_grid(model.process, 20)
    torch.testing.assert_close(
        UniPC(2, corrector=False)(model, x, grid).x, DPMSolverPP(2)(model, x, grid).x
    )
    torch.testing.assert_close(
        DPMSolverPPSDE(2, eta=0.0, lower_order_final=False)(model, x, grid).x,
        DPMSolverPP(2)(model, x, grid).x,
    )
    torch.testing.assert_close(
        DPMSolverPPSDE(3, eta=0.0, lower_order_final=False)(model, x, grid).x,
        DPMSolverPP(3)(model, x, grid).x,
    )
    from scorekit.samplers import DDIM

    ddim = DDIM(0.0)(model, x, grid).x
    for one in (DEIS(1), IPNDM(1), UniPC(1, corrector=False), DPMSolverPPSDE(1, eta=0.0)):
        torch.testing.assert_close(one(model, x, grid).x, ddim)


def test_first_order_sde_is_ddpm():
    mix = GaussianMixture([0.5, 0.5], [[-1.0, 0.5], [1.0, -0.5]], stds=0.4)
    model = ExactScore(mix, VP())
    grid = torch.cat([time_grid(model.process, 12), torch.zeros(1, dtype=torch.float64)])
    x = VP().prior_sample((32, 2), torch.Generator().manual_seed(1), torch.float64)
    a = DPMSolverPPSDE(1)(model, x, grid, torch.Generator().manual_seed(2)).x
    b = DDPM()(model, x, grid, torch.Generator().manual_seed(2)).x
    torch.testing.assert_close(a, b)


def test_unipc_corrector_costs_no_evaluation(setup):
    model, x, _ = setup
    for smp in (UniPC(1), UniPC(2), UniPC(3), DEIS(3), IPNDM(), DPMSolverPPSDE(3)):
        assert smp(model, x, time_grid(model.process, 9), torch.Generator()).nfe == 9


# -- weak order, exactly ---------------------------------------------------------------
def _exact_moments(smp, model, grid, mean_t, var_t, module=multistep, noises=None):
    """Mean and variance of the sampler's output when the start is N(mean_t, var_t): on a
    Gaussian target every step is affine in the start and the noises, so the output is
    out0 + A x_T + sum_k c_k z_k, read off by feeding unit inputs one at a time (the noise
    of ``module``'s ``randn_like``, at most ``noises`` draws, default one per step)."""
    n = grid.numel() - 1
    b = (n if noises is None else noises) + 2
    x = torch.zeros(b, 1, dtype=torch.float64)
    x[1] = 1.0
    calls = []

    def unit_noise(like, generator=None):
        k = len(calls)
        z = torch.zeros_like(like)
        z[2 + k] = 1.0
        calls.append(k)
        return z

    orig = module.randn_like
    module.randn_like = unit_noise
    try:
        out = smp(model, x, grid, torch.Generator()).x[:, 0]
    finally:
        module.randn_like = orig
    a = out[1] - out[0]
    c = out[2 : 2 + len(calls)] - out[0]
    return float(out[0] + a * mean_t), float(a**2 * var_t + (c**2).sum())


@pytest.mark.parametrize("process", [EDM(0.02, 20.0), VP()], ids=["EDM", "VP"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_weak_order_of_dpmpp_sde_is_exact_on_a_gaussian(order, process):
    # the marginal at every t is N(alpha m, alpha^2 s^2 + sigma^2); the sampler starts from
    # it at t_max and its output at t_min is compared with it there
    m, s = 0.7, 0.5
    model = ExactScore(Gaussian(torch.tensor([m], dtype=torch.float64), std=s), process)
    smp = DPMSolverPPSDE(order)
    assert smp.stochastic and smp.order is None and smp.weak_order == min(order, 2)
    steps = [16, 32, 64, 128]
    errors = []
    for n in steps:
        grid = time_grid(process, n, "geometric")
        (a0, s0), (a1, s1) = (process.marginal(grid[k]) for k in (0, -1))
        mu, var = _exact_moments(smp, model, grid, float(a0) * m, float(a0**2 * s * s + s0**2))
        assert abs(mu - float(a1) * m) < 1e-12  # the mean is exact (linear denoiser)
        errors.append(abs(var - float(a1**2 * s * s + s1**2)))
    fitted = slope(steps, errors)
    assert errors[-1] < errors[0] / 2**smp.weak_order, errors
    assert abs(fitted - smp.weak_order) < 0.45, (order, fitted, errors)


# -- stable at few steps ---------------------------------------------------------------
def _ring():
    ang = torch.arange(8, dtype=torch.float64) * 2 * math.pi / 8
    return GaussianMixture(torch.ones(8), 4.0 * torch.stack([ang.cos(), ang.sin()], 1), stds=0.2)


@pytest.mark.parametrize("name", ["unipc", "unipc_3", "deis", "ipndm", "dpmpp_3m", "dpmpp_2m"])
@pytest.mark.parametrize("process", [VP(), EDM()], ids=["VP", "EDM"])
def test_multistep_at_ten_steps_on_default_grids_is_stable(name, process):
    model = ExactScore(_ring(), process)
    g = torch.Generator().manual_seed(0)
    z = process.prior_sample((500, 2), g, torch.float64)
    r = sample(model, x_T=z, sampler=name, steps=10)
    ref = sample(model, x_T=z, sampler=Dopri5(rtol=1e-8, atol=1e-8), steps=1)
    assert torch.isfinite(r.x).all()
    assert rmse(r.x, ref.x) < 1.0, (name, rmse(r.x, ref.x))

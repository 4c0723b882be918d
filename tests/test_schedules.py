import math

import pytest
import torch

from scorekit import EDM, VE, VP, CosineVP, SubVP
from scorekit.core.schedules import (
    check_grid,
    ddpm_time_grid,
    ddpm_timesteps,
    geometric_sigmas,
    karras_sigmas,
    time_grid,
)

PROCESSES = [VE(0.01, 50.0), VP(), SubVP(), CosineVP(), EDM(0.002, 80.0)]
IDS = [type(p).__name__ for p in PROCESSES]


def test_karras_formula_and_ends():
    s = karras_sigmas(4, 0.002, 80.0, rho=7.0)
    i = torch.arange(5, dtype=torch.float64)
    expect = (80.0 ** (1 / 7) + i / 4 * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    torch.testing.assert_close(s, expect, rtol=1e-14, atol=0)
    assert math.isclose(float(s[0]), 80.0) and math.isclose(float(s[-1]), 0.002)
    # rho = 1 is linear in sigma; large rho tends to geometric
    torch.testing.assert_close(
        karras_sigmas(4, 1.0, 5.0, rho=1.0), torch.linspace(5, 1, 5).double()
    )
    torch.testing.assert_close(
        karras_sigmas(8, 0.01, 10.0, rho=1e6), geometric_sigmas(8, 0.01, 10.0), rtol=1e-4, atol=0
    )


def test_geometric_is_log_linear():
    s = geometric_sigmas(10, 0.01, 1.0)
    ratios = s[1:] / s[:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, 0.01**0.1))


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
@pytest.mark.parametrize("kind", ["karras", "geometric", "uniform"])
def test_time_grid_ends_and_decreases(p, kind):
    g = time_grid(p, 7, kind)
    assert g.shape == (8,) and g.dtype == torch.float64
    assert float(g[0]) == p.t_max and float(g[-1]) == p.t_min
    assert (g[1:] < g[:-1]).all()
    if kind == "geometric":
        r = p.ratio(g)
        q = r[1:] / r[:-1]
        torch.testing.assert_close(q, torch.full_like(q, float(q[0])), rtol=1e-8, atol=0)


def test_final_zero():
    g = time_grid(VP(), 5, final_zero=True)
    assert g.shape == (7,) and float(g[-1]) == 0.0 and float(g[-2]) == VP().t_min
    with pytest.raises(ValueError, match="t_min > 0"):
        time_grid(VE(), 5, final_zero=True)


def test_ddpm_timesteps_match_published_spacings():
    # Lin et al. (2024), Table 2, with T = 1000 and 10 steps.
    lead = ddpm_timesteps(1000, 10, "leading")
    assert lead.tolist() == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    trail = ddpm_timesteps(1000, 10, "trailing")
    assert trail.tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    lin = ddpm_timesteps(1000, 10, "linspace")
    assert lin.tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    g = ddpm_time_grid(VP(), 10, "trailing")
    torch.testing.assert_close(g[:-1], (trail.double() + 1) / 1000)
    assert float(g[-1]) == 0.0


def test_bad_grids_raise():
    p = VP()
    with pytest.raises(ValueError, match="strictly decreasing"):
        check_grid([1.0, 0.5, 0.7], p)
    with pytest.raises(ValueError, match="strictly decreasing"):
        check_grid([0.1, 0.5], p)
    with pytest.raises(ValueError, match="grid must lie in"):
        check_grid([1.5, 0.5], p)
    with pytest.raises(ValueError, match="at least 2"):
        check_grid([0.5], p)
    with pytest.raises(ValueError, match="non-increasing"):
        check_grid([0.5, 0.5, 0.6], p, strict=False)
    check_grid([0.5, 0.5, 0.4], p, strict=False)
    with pytest.raises(ValueError, match="steps"):
        time_grid(p, 0)
    with pytest.raises(ValueError, match="kind"):
        time_grid(p, 3, "cosine")
    with pytest.raises(ValueError, match="spacing"):
        ddpm_timesteps(1000, 10, "middle")
    with pytest.raises(ValueError, match="sigma_min must be < sigma_max"):
        karras_sigmas(3, 2.0, 1.0)

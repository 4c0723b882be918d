import itertools
import json
import math

import numpy as np
import pytest
import torch

from scorekit.core.processes import EDM, VE, VP, from_config
from scorekit.noise.advise import Advice, advise, save_advice
from scorekit.noise.design import (
    NCSN_GAMMA,
    data_std,
    geometric_ratio,
    langevin_ratio,
    langevin_step,
    max_pairwise_distance,
    num_levels,
    shell_overlap,
)

CIFAR_D, CIFAR_SIGMA1, CIFAR_SIGMAL, CIFAR_T = 3072, 50.0, 0.01, 5


def _Phi(z):
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


# -- Technique 1 ---------------------------------------------------------------
def test_technique1_exact_on_tiny_set_against_brute_force(gen):
    x = torch.randn(9, 2, 3, generator=gen, dtype=torch.float64)
    brute = max(
        math.sqrt(
            sum(
                (float(a) - float(b)) ** 2
                for a, b in zip(x[i].flatten(), x[j].flatten(), strict=True)
            )
        )
        for i, j in itertools.combinations(range(9), 2)
    )
    d, exact, used = max_pairwise_distance(x)
    assert exact and used == 9
    assert d == pytest.approx(brute, rel=1e-12)
    # numpy input, integer dtype: same answer
    d_np, _, _ = max_pairwise_distance((x * 100).round().to(torch.int64).numpy())
    xi = (x * 100).round()
    brute_i = max(float((xi[i] - xi[j]).norm()) for i, j in itertools.combinations(range(9), 2))
    assert d_np == pytest.approx(brute_i, rel=1e-12)


def test_technique1_estimate_on_a_subset_is_a_reproducible_lower_bound(gen):
    x = torch.randn(300, 5, generator=gen, dtype=torch.float64)
    full, exact, _ = max_pairwise_distance(x)
    est1, ex1, used = max_pairwise_distance(x, 40, torch.Generator().manual_seed(3))
    est2, _, _ = max_pairwise_distance(x, 40, torch.Generator().manual_seed(3))
    assert exact and not ex1 and used == 40
    assert est1 == est2 and 0.5 * full < est1 <= full


def test_technique1_blocks_agree_with_one_pass(gen):
    # 2100 points: the row blocks (2**22 // 2100 = 1997 rows) split the matrix in two.
    x = torch.randn(2100, 3, generator=gen, dtype=torch.float64)
    x[2050] = 10.0  # the far pair lies in the second block
    x[7] = -10.0
    d, exact, _ = max_pairwise_distance(x, max_points=3000)
    assert exact and d == pytest.approx(20 * math.sqrt(3), rel=1e-12)


# -- Technique 2 ---------------------------------------------------------------
@pytest.mark.parametrize("dim", [5, 10, 64, 784, 3072, 12288])
def test_technique2_equation_residual(dim):
    g = geometric_ratio(dim)
    a = math.sqrt(2 * dim) * (g - 1)
    assert abs(_Phi(a + 3 * g) - _Phi(a - 3 * g) - 0.5) < 1e-10
    assert shell_overlap(g, dim) == pytest.approx(0.5, abs=1e-10)
    assert g > 1


def test_technique2_large_dim_limit():
    # For large D, Phi(a + 3g) ~ 1 so Phi(a - 3g) = 1/2: sqrt(2D)(g - 1) = 3g.
    r = math.sqrt(2 * CIFAR_D)
    assert geometric_ratio(CIFAR_D) == pytest.approx(r / (r - 3), rel=1e-6)


def test_technique2_no_root_in_low_dimension():
    with pytest.raises(ValueError, match="dim=4"):
        geometric_ratio(4)


def test_num_levels_rounds_up_and_keeps_ratio_below_gamma():
    L = num_levels(50.0, 0.01, 1.04)
    assert L == math.ceil(1 + math.log(5000) / math.log(1.04))
    assert (5000 ** (1 / (L - 1))) <= 1.04 < 5000 ** (1 / (L - 2))
    assert num_levels(100.0, 1.0, 10.0) == 3  # exact value: no spurious extra level


# -- Technique 4 ---------------------------------------------------------------
def _ratio_closed_form(eps, gamma, sL, T):
    # Variance of x_{t+1} = (1 - u) x_t + sqrt(2 alpha) z on N(0, s^2), by iterating.
    s2 = 1.0
    v = gamma**2 * s2
    alpha = eps * s2 / sL**2
    for _ in range(T):
        v = (1 - alpha / s2) ** 2 * v + 2 * alpha
    return v / s2


def test_langevin_ratio_matches_iterated_variance():
    for eps in (1e-6, 6.2e-6, 3e-5):
        r = langevin_ratio(eps, 1.04, 0.01, 5)
        assert r == pytest.approx(_ratio_closed_form(eps, 1.04, 0.01, 5), rel=1e-12)


def test_technique4_is_the_minimum_of_the_ratio():
    gamma = 1.05
    eps = langevin_step(gamma, 0.01, 5)
    r0 = langevin_ratio(eps, gamma, 0.01, 5)
    assert r0 > 1
    for f in (0.99, 1.01, 0.5, 2.0):
        assert langevin_ratio(eps * f, gamma, 0.01, 5) > r0


def test_reproduces_ncsnv2_cifar10():
    # NCSNv2 (Song & Ermon 2020), CIFAR-10: D = 3072, sigma_1 = 50, sigma_L = 0.01, T = 5,
    # published L = 232 and eps = 6.2e-6.
    data = torch.rand(4, CIFAR_D, generator=torch.Generator().manual_seed(0))
    own = advise(data, T=CIFAR_T, sigma_min=CIFAR_SIGMAL, sigma_max=CIFAR_SIGMA1)
    assert abs(own.levels - 232) <= 0.1 * 232
    assert own.levels == 220 and own.overlap >= 0.5
    published = advise(data, T=CIFAR_T, sigma_min=CIFAR_SIGMAL, sigma_max=CIFAR_SIGMA1, levels=232)
    assert float(f"{published.eps:.1e}") == 6.2e-6
    assert published.gamma == pytest.approx(5000 ** (1 / 231), rel=1e-12)
    # With its own (fewer) levels the ratio is larger and so is the step: 6.5e-6.
    assert float(f"{own.eps:.1e}") == 6.5e-6


# -- sigma_data and the advice -------------------------------------------------
def test_data_std_is_the_pooled_std(gen):
    x = 3 + 0.7 * torch.randn(2000, 4, 4, generator=gen, dtype=torch.float64)
    assert data_std(x) == pytest.approx(float(x.flatten().std(unbiased=False)), rel=1e-12)
    assert data_std(x.float().numpy()) == pytest.approx(data_std(x), rel=1e-6)


def test_advice_configs_build_processes_with_the_advised_noise(gen):
    x = torch.rand(200, 16, generator=gen, dtype=torch.float64)
    a = advise(x, T=3)
    assert isinstance(a, Advice) and a.sigma_max_exact and a.dim == 16
    cfg = a.to_json()
    ve, vp, edm = (
        from_config(c) for c in (cfg["process"], cfg["vp"]["process"], cfg["edm"]["process"])
    )
    assert isinstance(ve, VE) and isinstance(vp, VP) and isinstance(edm, EDM)
    assert ve.sigma_max == pytest.approx(max_pairwise_distance(x)[0], rel=1e-12)
    assert ve.sigma_min == pytest.approx(0.04 * data_std(x), rel=1e-12)
    # VP seen as VE: sigma/alpha spans [sigma_min, >= sigma_max] over [t_min, 1].
    a_lo, s_lo = vp.marginal(torch.tensor(vp.t_min, dtype=torch.float64))
    assert float(s_lo / a_lo) == pytest.approx(a.sigma_min, rel=1e-9)
    a_hi, s_hi = vp.marginal(torch.tensor(1.0, dtype=torch.float64))
    assert float(s_hi / a_hi) >= a.sigma_max
    assert cfg["edm"]["sigma_data"] == pytest.approx(data_std(x))
    assert a.gamma == pytest.approx((a.sigma_max / a.sigma_min) ** (1 / (a.levels - 1)))
    assert a.gamma <= min(geometric_ratio(16), NCSN_GAMMA) and a.overlap >= 0.5
    assert a.eps == pytest.approx(langevin_step(a.gamma, a.sigma_min, 3))
    json.dumps(cfg)
    assert "sigma_max" in a.table() and str(a.levels) in a.table()


def test_low_dimensional_data_uses_the_ncsn_ratio(gen):
    x = torch.randn(3000, 2, generator=gen, dtype=torch.float64)
    a = advise(x, max_points=500, generator=torch.Generator().manual_seed(1))
    assert a.gamma_target is None and a.gamma <= NCSN_GAMMA
    assert not a.sigma_max_exact and a.points_used == 500
    assert any("estimate" in n for n in a.notes) and any("no root" in n for n in a.notes)
    assert "estimate" in a.table()


def test_save_advice_writes_json_atomically(tmp_path, gen):
    a = advise(torch.rand(50, 3, generator=gen, dtype=torch.float64))
    path = save_advice(a, tmp_path / "sub" / "advice.json")
    assert json.loads(path.read_text()) == json.loads(json.dumps(a.to_json()))
    assert sorted(p.name for p in path.parent.iterdir()) == ["advice.json"]
    with pytest.raises(ValueError, match="advice"):
        save_advice({"process": {}}, tmp_path / "x.json")


# -- bad input -----------------------------------------------------------------
def test_bad_input_raises_naming_it():
    with pytest.raises(ValueError, match="at least two points"):
        advise(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="at least two points"):
        max_pairwise_distance(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="identical"):
        advise(torch.ones(10, 3))
    with pytest.raises(ValueError, match="T must be an integer >= 1, got 0"):
        advise(torch.rand(10, 3), T=0)
    with pytest.raises(ValueError, match="T must be"):
        langevin_step(1.04, 0.01, 0)
    with pytest.raises(ValueError, match="non-finite"):
        advise(torch.tensor([[0.0, 1.0], [float("nan"), 2.0]]))
    with pytest.raises(ValueError, match="sigma_min must be < sigma_max"):
        advise(torch.rand(10, 3, dtype=torch.float64), sigma_min=100.0)
    with pytest.raises(ValueError, match="gamma must be > 1"):
        langevin_step(1.0, 0.01, 5)
    with pytest.raises(ValueError, match="data must be"):
        advise("not data")


def test_technique1_is_shift_invariant_and_keeps_integer_data(gen):
    x = torch.randn(50, 4, generator=gen, dtype=torch.float64)
    d, _, _ = max_pairwise_distance(x)
    assert max_pairwise_distance(x + 1e8)[0] == pytest.approx(d, rel=1e-6)
    img = torch.randint(0, 256, (30, 3, 4, 4), generator=gen, dtype=torch.uint8)
    flat = img.reshape(30, -1).double()
    brute = max(float((flat[i] - flat[j]).norm()) for i, j in itertools.combinations(range(30), 2))
    assert max_pairwise_distance(img)[0] == pytest.approx(brute, rel=1e-12)
    assert data_std(img) == pytest.approx(float(flat.std(unbiased=False)), rel=1e-12)


def test_given_sigma_max_is_reported_as_given():
    a = advise(torch.rand(20, 8, dtype=torch.float64), sigma_max=7.0)
    assert a.sigma_max == 7.0 and not a.sigma_max_exact and a.points_used == 0
    assert "(given)" in a.table() and any("was given" in n for n in a.notes)

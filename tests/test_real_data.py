"""benchmarks/real_data.py: the bits/dim change of variables against closed forms, the
Fréchet distance against its Gaussian formula, and the quick table's structure."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from scorekit import VP, ExactScore, Gaussian
from scorekit.likelihood import log_prob
from scorekit.metrics import digits_quality, frechet_distance

ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64


@pytest.fixture(scope="module")
def real_data():
    spec = importlib.util.spec_from_file_location("real_data", ROOT / "benchmarks" / "real_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def reference_bpd(x, U, mu_pix, std_pix):
    """The reference's convention, computed directly: u = (x + U)/17 under the Gaussian
    N(mu_pix/17, (std_pix/17)^2) per pixel; bpd = -(log p_u(u) - D log 17)/(D ln 2)."""
    D = x.shape[1]
    u = (x + U) / 17
    log_pu = Normal(mu_pix / 17, std_pix / 17).log_prob(u).sum(1)
    return -(log_pu - D * math.log(17)) / (D * math.log(2))


def test_bpd_conversion_matches_the_reference_convention(real_data):
    # A Gaussian density on the pixel scale pushed to model space z = (x + U - 8.5)/8.5:
    # the model-space log-density, converted, must give the u-space bits/dim exactly.
    g = torch.Generator().manual_seed(0)
    D = 64
    x = torch.randint(0, 17, (20, D), generator=g).to(F64)
    mu, std = (
        torch.rand(D, generator=g, dtype=F64) * 16,
        1 + 3 * torch.rand(D, generator=g, dtype=F64),
    )
    z = real_data.dequantize(x, torch.Generator().manual_seed(1))
    U = torch.rand(x.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    torch.testing.assert_close(z, (x + U - 8.5) / 8.5)
    log_pz = Normal((mu - 8.5) / 8.5, std / 8.5).log_prob(z).sum(1)
    got = real_data.bpd_from_model_log_prob(log_pz, D)
    torch.testing.assert_close(got, reference_bpd(x, U, mu, std), atol=1e-10, rtol=0)
    # A uniform density on the cells, p_u = 1 on [0, 1)^D, is exactly log2(17) bits/dim.
    uniform_log_pz = torch.full((20,), D * math.log(8.5 / 17), dtype=F64)  # p_z = (8.5/17)^D
    torch.testing.assert_close(
        real_data.bpd_from_model_log_prob(uniform_log_pz, D),
        torch.full((20,), math.log2(17), dtype=F64),
    )


def test_bpd_through_the_probability_flow_ode(real_data):
    # End to end: the exact score of a Gaussian in model space, its PF-ODE log-density
    # (exact divergence) converted, against the closed form in the reference's u-space.
    D = 3
    g = torch.Generator().manual_seed(2)
    mu_pix = torch.tensor([4.0, 8.0, 12.0], dtype=F64)
    std_pix = torch.tensor([2.0, 3.0, 1.5], dtype=F64)
    process = VP()
    model = ExactScore(Gaussian((mu_pix - 8.5) / 8.5, std=std_pix / 8.5), process)
    x = torch.randint(0, 17, (8, D), generator=g).to(F64)
    z = real_data.dequantize(x, torch.Generator().manual_seed(3))
    U = z * 8.5 + 8.5 - x
    r = log_prob(model, z, rtol=1e-8, atol=1e-8, prior=lambda w: model.log_prob(w, process.t_max))
    # the ODE gives p_{t_min} = N(a m, a^2 s^2 + sigma^2) at t_min; its pixel-scale image
    t = torch.tensor(process.t_min, dtype=F64)
    a, s_min = float(process.alpha(t)), float(process.sigma(t))
    mu_t = 8.5 * a * (mu_pix - 8.5) / 8.5 + 8.5
    std_t = 8.5 * torch.sqrt((a * std_pix / 8.5) ** 2 + s_min**2)
    expected = reference_bpd(x, U, mu_t, std_t)
    got = real_data.bpd_from_model_log_prob(r.log_prob, D)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 3))
    assert abs(frechet_distance(a, a)) < 1e-9
    assert abs(frechet_distance(a, a + np.array([1.0, 2.0, -2.0])) - 9.0) < 1e-9
    # 1-D: (mu_a - mu_b)^2 + (s_a - s_b)^2 with sample moments (ddof=1)
    x, y = rng.normal(size=(300, 1)), 2 + 3 * rng.normal(size=(500, 1))
    want = (x.mean() - y.mean()) ** 2 + (x.std(ddof=1) - y.std(ddof=1)) ** 2
    assert abs(frechet_distance(x, y) - want) < 1e-9
    # commuting (diagonal) covariances: sum of 1-D terms; the formula is symmetric
    b = rng.normal(size=(400, 3)) * np.array([1.0, 2.0, 0.5])
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    assert abs(frechet_distance(a, b) - frechet_distance(b, a)) < 1e-9
    assert (
        frechet_distance(a, b) <= np.trace(ca) + np.trace(cb) + ((a.mean(0) - b.mean(0)) ** 2).sum()
    )
    with pytest.raises(ValueError, match="same width"):
        frechet_distance(a, b[:, :2])
    with pytest.raises(ValueError, match="finite"):
        frechet_distance(a, np.full((3, 3), np.nan))


def test_digits_quality_of_real_digits():
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    Xtr, Xte, ytr, _ = train_test_split(
        d.data, d.target, test_size=0.3, random_state=0, stratify=d.target
    )
    q = digits_quality(Xtr[:500], Xtr, ytr, Xte, protocol="full")
    assert q["n_compared"] == 500 and len(q["class_shares"]) == 10
    assert q["frechet"] < 15 and 0.97 < q["top_class_prob_ratio"] < 1.05
    # copies of training digits are at distance 0 from them; held-out digits are not
    assert q["nn_train_median"] == 0 and q["nn_train_median_real"] > 10 and q["nn_ratio"] == 0
    noise = np.random.default_rng(0).uniform(0, 16, size=(500, 64))
    q = digits_quality(noise, Xtr, ytr, Xte)
    assert q["frechet_ratio"] > 10 and q["nn_ratio"] > 1.5
    # the nearest distance is the brute-force minimum
    want = np.sqrt(((Xte[:5, None, :] - Xtr[None]) ** 2).sum(-1)).min(1)
    from scorekit.metrics import _nearest_distance

    np.testing.assert_allclose(_nearest_distance(Xte[:5], Xtr, chunk=2), want, rtol=1e-9)
    with pytest.raises(ValueError, match="protocol"):
        digits_quality(Xtr[:10], Xtr, ytr, Xte, protocol="bad")


def test_moons_true_density_is_normalised_and_gives_the_reference_value(real_data):
    pytest.importorskip("sklearn")
    # integrates to one over a grid that holds the data (±6 noise s.d. around the arcs)
    xs, ys = torch.linspace(-1.4, 2.4, 381, dtype=F64), torch.linspace(-0.9, 1.4, 231, dtype=F64)
    grid = torch.cartesian_prod(xs, ys)
    p = torch.exp(-real_data.moons_true_nll(grid, n_arc=4001))
    mass = float(p.sum()) * float(xs[1] - xs[0]) * float(ys[1] - ys[0])
    assert abs(mass - 1) < 2e-3
    # the reference's "true generating density 0.300" on the test points
    _, xte = real_data._moons_split()
    assert abs(float(real_data.moons_true_nll(xte).mean()) - 0.3004) < 5e-4


def test_quick_table(real_data, tmp_path):
    pytest.importorskip("sklearn")
    threads = torch.get_num_threads()
    minutes = ["--digits-minutes", "0.04", "--likelihood-minutes", "0.04"]
    try:
        result = real_data.main(
            ["--out", str(tmp_path), "--quick", *minutes, "--moons-minutes", "0.04"]
        )
    finally:
        torch.set_num_threads(threads)  # runs pin one thread
    assert torch.get_num_threads() == threads
    saved = json.loads((tmp_path / "real_data.json").read_text())
    assert saved["quick"] is True and set(saved) >= {"runs", "budget_clock", "total_cpu_s"}
    md = (tmp_path / "real_data.md").read_text()
    assert "bits/dim" in md and "Moons" in md and "digits-likelihood" in md
    runs = {run["setup"]: run for run in result["runs"]}
    assert set(runs) == {"digits-samples", "digits-likelihood", "moons"}
    for name in ("digits-samples", "digits-likelihood"):
        kinds = [r["kind"] for r in runs[name]["rows"]]
        assert kinds == ["samples", "samples", "bpd"]
    # the runs are the recipes' (what scorekit train picks, or the one chosen by name)
    assert "fourier_features" in runs["digits-likelihood"]["choices"]["recipe"]
    assert runs["digits-samples"]["choices"]["recipe"].startswith("recipe small-images ")
    rows = [r for run in result["runs"] for r in run["rows"]]
    for r in rows:
        for key in ("nfe", "train_steps", "steps_per_s"):
            assert r[key] > 0
        for v in r.values():
            if isinstance(v, float):
                assert math.isfinite(v)
    bpd = next(r for r in rows if r["kind"] == "bpd")
    assert 0 < bpd["bpd"] < 8 and bpd["bpd_hutchinson_stderr"] > 0
    (nll,) = runs["moons"]["rows"]
    assert 0 < nll["nll_nats"] < 5 and 0.25 < nll["true_nll_nats"] < 0.4


def test_headline_seeds_and_append(real_data, tmp_path):
    # the headline runs go over several seeds (mean +- s.d. in the record and the table);
    # --append merges a later call's seeds into the same record, replacing equal runs
    threads = torch.get_num_threads()
    common = ["--out", str(tmp_path), "--quick", "--only", "moons", "--moons-minutes", "0.02"]
    try:
        real_data.main([*common, "--headline-seeds", "0,1"])
        result = real_data.main([*common, "--headline-seeds", "1,2", "--append"])
    finally:
        torch.set_num_threads(threads)
    saved = json.loads((tmp_path / "real_data.json").read_text())
    assert saved["seeds"] == [0, 1, 2] and result["seeds"] == [0, 1, 2]
    assert sorted(run["seed"] for run in saved["runs"]) == [0, 1, 2]  # seed 1 replaced
    (head,) = saved["headline"]
    vals = [run["rows"][0]["nll_nats"] for run in sorted(saved["runs"], key=lambda r: r["seed"])]
    assert head["seeds"] == [0, 1, 2] and head["nll_nats_values"] == vals
    assert math.isclose(head["nll_nats"], sum(vals) / 3, rel_tol=1e-12)
    assert math.isclose(
        head["nll_nats_sd"], float(torch.tensor(vals, dtype=torch.float64).std()), rel_tol=1e-9
    )
    md = (tmp_path / "real_data.md").read_text()
    assert "Headline rows over seeds" in md and f"{head['nll_nats']:.4f} ±" in md
    for bad in ("", "0,0", "a"):  # refused before anything runs or is written
        with pytest.raises(ValueError, match="--headline-seeds must be distinct integers"):
            real_data.main([*common, "--headline-seeds", bad, "--append"])
    assert json.loads((tmp_path / "real_data.json").read_text()) == saved

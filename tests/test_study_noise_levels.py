"""Smoke run of the noise-level study (benchmarks/study_noise_levels.py, quick mode)."""

import importlib.util
import math
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("scipy")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _finite(x) -> bool:
    return isinstance(x, float) and math.isfinite(x)


@pytest.fixture(scope="module")
def results():
    return _load("bench_noise_levels").run(quick=True)


def test_every_dataset_and_method_has_finite_numbers(results):
    study = _load("study_noise_levels")
    assert set(results["datasets"]) == set(study.DATASETS)
    for name, entry in results["datasets"].items():
        assert set(entry["runs"]) == set(study.METHODS)
        for r in entry["runs"].values():
            nll = r["bpd"] if name == "digits" else r["nll"]
            assert _finite(nll) and _finite(r["sliced_w2"]) and r["sliced_w2"] > 0
            assert r["log"] and r["log"][-1]["step"] == results["config"]["steps"]
        if name == "digits":
            assert all(_finite(r["frechet_pca16"]) for r in entry["runs"].values())
    # the exact NLL of an exact mixture is finite, and a barely trained model is worse
    ref = results["datasets"]["gm16"]["reference"]["exact_nll"]
    assert all(r["nll"] > ref for r in results["datasets"]["gm16"]["runs"].values())
    assert "| gm16 | edm |" in results["table"]


def test_training_loss_is_above_its_floor(results):
    # on the exact mixtures, every run's logged loss, pooled over the log, is >= its
    # irreducible floor (up to Monte-Carlo error; a 30-step model is far above it)
    for name in ("8gaussians", "gm16"):
        for method, r in results["datasets"][name]["runs"].items():
            num = den = 0.0
            for rec in r["log"]:
                for v, c, f in zip(
                    rec["bucket_loss"], rec["bucket_count"], r["floor"], strict=True
                ):
                    if v is not None and math.isfinite(f):
                        num, den = num + v * c, den + f * c
            assert den > 0 and num / den > 0.9, (name, method, num / den)
            per = [v for rec in r["normalized"] for v in rec["normalized"] if v is not None]
            assert per and all(_finite(v) and v > 0 for v in per)

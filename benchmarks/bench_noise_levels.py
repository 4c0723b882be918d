"""Suite ``noise_levels``: the study of :mod:`study_noise_levels` (four weightings of the DSM
loss on four data sets at one training budget) through ``benchmarks/run.py``.

    python benchmarks/run.py --only noise_levels [--quick]

The full run (913 s measured on one thread of a shared machine) writes its figures to
``benchmarks/results/``; ``--quick`` (under a minute) is a smoke run whose numbers mean
nothing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _study():
    spec = importlib.util.spec_from_file_location(
        "study_noise_levels", HERE / "study_noise_levels.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run(quick: bool = False) -> dict:
    """Run the study; full mode also saves its PNGs under ``benchmarks/results/``."""
    study = _study()
    results = study.run(quick=quick, figures=None if quick else HERE / "results")
    results["table"] = study.table(results)
    return results

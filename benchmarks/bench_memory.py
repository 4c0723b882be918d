"""Peak resident memory of sampling and likelihood on large batches, chunked.

Each measurement runs in a fresh subprocess (``python -c``, one thread) that builds a
small 2-D MLP (hidden 64, depth 2) :class:`~scorekit.core.parametrize.ScoreModel` (VE process,
random weights: memory does not depend on training), runs one workload and reports its
peak resident set size, ``VmHWM`` from ``/proc/self/status`` (``ru_maxrss`` where there is
no ``/proc``). The
``baseline`` workload only imports torch and builds the model, so ``peak - baseline`` is
what the workload itself costs.

* ``sample``: 10^6 points (``quick``: 10^5), Euler, 10 steps, ``batch_size`` chunks;
* ``likelihood``: 10^5 points (``quick``: 10^4), exact divergence, Euler, 10 fixed steps,
  ``chunk_size`` chunks.

The goal is a peak under 2 GiB for the full sizes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(1)
from scorekit import VE, ScoreModel
from scorekit.nets import MLP

def peak_mib():
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 / (1024 if sys.platform == "darwin" else 1)

kind, n, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
model = ScoreModel(MLP(2, hidden=64, depth=2), VE(0.01, 5.0)).eval()
t0 = time.perf_counter()
out = {}
if kind == "sample":
    from scorekit.samplers import sample
    with torch.no_grad():
        r = sample(model, (n, 2), sampler="euler", steps=10, batch_size=chunk,
                   generator=torch.Generator().manual_seed(1))
    out["finite"] = bool(torch.isfinite(r.x).all())
    out["shape"] = list(r.x.shape)
elif kind == "likelihood":
    from scorekit.likelihood import log_prob
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(2))
    r = log_prob(model, x, divergence="exact", method="euler", steps=10, chunk_size=chunk)
    out["finite"] = bool(torch.isfinite(r.log_prob).all())
    out["shape"] = list(r.log_prob.shape)
out["seconds"] = round(time.perf_counter() - t0, 2)
out["peak_mib"] = round(peak_mib(), 1)
print(json.dumps(out))
"""


def _measure(kind: str, n: int, chunk: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    r = subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(n), str(chunk)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if r.returncode != 0:
        raise RuntimeError(f"{kind} failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run(quick: bool) -> dict:
    """Peak memory (MiB) of sampling and likelihood; see the module docstring."""
    n_sample, n_lik = (100_000, 10_000) if quick else (1_000_000, 100_000)
    base = _measure("baseline", 0, 1)
    sample = _measure("sample", n_sample, 100_000)
    lik = _measure("likelihood", n_lik, 10_000)
    limit = 2048.0
    return {
        "baseline_peak_mib": base["peak_mib"],
        "sample": {"n": n_sample, "batch_size": 100_000, "steps": 10, **sample},
        "likelihood": {"n": n_lik, "chunk_size": 10_000, "steps": 10, **lik},
        "goal_mib": limit,
        "under_goal": sample["peak_mib"] < limit and lik["peak_mib"] < limit,
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))

"""Run every benchmark suite (benchmarks/bench_*.py) and write one JSON file per suite.

Each suite module defines ``run(quick: bool) -> dict`` and may define
``markdown(result) -> str``, whose table is written beside the JSON (``NAME.md``), so the
tables are always regenerated from the record. Usage:

    python benchmarks/run.py --out benchmarks/results [--only NAME] [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--only", action="append", default=[], help="suite name(s) to run")
    ap.add_argument("--quick", action="store_true", help="tiny budgets (smoke run)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suites = sorted(HERE.glob("bench_*.py"))
    if args.only:
        suites = [s for s in suites if s.stem.removeprefix("bench_") in args.only]
        if not suites:
            print(f"--only: no suite named {args.only}", file=sys.stderr)
            return 2
    for path in suites:
        name = path.stem.removeprefix("bench_")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        t0 = time.perf_counter()
        result = mod.run(quick=args.quick)
        result["wall_seconds"] = round(time.perf_counter() - t0, 2)
        target = out / f"{name}.json"
        _write(target, json.dumps(result, indent=2))
        if hasattr(mod, "markdown"):
            _write(target.with_suffix(".md"), mod.markdown(result))
        print(f"{name}: wrote {target} ({result['wall_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

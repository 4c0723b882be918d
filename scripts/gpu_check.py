"""``make gpu-check``: the measured run on a CUDA machine, written to
``benchmarks/results/gpu_check.json`` (and ``.md``).

1. the ``cuda`` tests (``tests/test_cuda.py``: samplers, objectives, likelihood, a training
   run and checkpoints equal to the CPU; no host sync in a training or sampler step);
2. training throughput of the ``small-images`` recipe on digits and the ``images`` recipe on
   digits resized to 32x32, ``--minutes`` each, with and without bf16 autocast: steps/s,
   examples/s, peak CUDA memory;
3. one training step of each network eager vs ``torch.compile`` (steps/s of 50 steps after
   warm-up; not a trainer option: measured here to see whether it pays);
4. samples/s of every ODE and SDE sampler at about 50 NFE on the trained digits model
   (batch 1024), and likelihood evaluations/s (Hutchinson divergence, batch 256);
5. ``torchrun --nproc_per_node=N`` DDP training for ``--minutes`` with N = the devices.

Nothing here runs in ``make test``. Usage: ``python scripts/gpu_check.py [--minutes 0.5]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "gpu_check.json"


def _tests() -> dict:
    t0 = time.perf_counter()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-m",
            "cuda",
            "tests/test_cuda.py",
            "-p",
            "no:xdist",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    tail = (r.stdout + r.stderr).strip().splitlines()[-1:]
    return {"returncode": r.returncode, "summary": tail, "seconds": time.perf_counter() - t0}


def _data(image_size: int | None):
    from scorekit.train.data import load_data

    return load_data("digits", split="train", image_size=image_size)


def _train(recipe: str, image_size: int | None, minutes: float, bf16: bool) -> tuple[dict, object]:
    from scorekit.app.recipes import build_run, recipe_settings
    from scorekit.train.trainer import TrainConfig, Trainer

    s = recipe_settings(recipe)
    data = _data(image_size)
    torch.manual_seed(0)
    model, objective, examples = build_run(s, data)
    cfg = {
        **s["train"],
        "steps": None,
        "seconds": 60 * minutes,
        "progress": False,
        "bf16": bf16,
        "log_every": 10**9,
    }
    torch.cuda.reset_peak_memory_stats()
    tr = Trainer(
        model,
        objective,
        examples,
        TrainConfig.from_dict(cfg),
        None,
        normalizer=data.normalizer,
        device="cuda",
    )
    fit = tr.fit()
    sps = fit["step"] / fit["seconds"]
    row = {
        "recipe": recipe,
        "shape": list(data.shape),
        "bf16": bf16,
        "steps": fit["step"],
        "seconds": fit["seconds"],
        "steps_per_s": sps,
        "examples_per_s": sps * s["train"]["batch_size"],
        "peak_mib": torch.cuda.max_memory_allocated() / 2**20,
    }
    ema = tr.ema.module.eval()
    ema.data_shape = data.shape
    return row, ema


def _compile(recipe: str, image_size: int | None) -> dict:
    from scorekit.app.recipes import build_run, recipe_settings

    s = recipe_settings(recipe)
    data = _data(image_size)
    out = {"recipe": recipe}
    for mode in ("eager", "compile"):
        torch.manual_seed(0)
        model, objective, _ = build_run(s, data)
        model = model.cuda()
        if mode == "compile":
            model.net = torch.compile(model.net)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        x = data.x[: s["train"]["batch_size"]].cuda()
        g = torch.Generator(device="cuda").manual_seed(0)

        def step(opt=opt, objective=objective, model=model, x=x, g=g):
            opt.zero_grad(set_to_none=True)
            objective(model, x, generator=g).mean().backward()
            opt.step()

        try:
            t0 = time.perf_counter()
            for _ in range(5):
                step()
            torch.cuda.synchronize()
            warm = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(50):
                step()
            torch.cuda.synchronize()
            out[mode] = {"steps_per_s": 50 / (time.perf_counter() - t0), "warmup_s": warm}
        except Exception as e:  # a compile failure is a measurement too
            out[mode] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    return out


def _samplers(model) -> list[dict]:
    from scorekit.samplers import SAMPLERS, sample

    rows = []
    for name in sorted(SAMPLERS):
        if name in ("langevin", "mala", "annealed_langevin"):  # not reverse-time samplers
            continue
        steps = 25 if name in ("heun", "edm") else 50
        try:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.no_grad():
                r = sample(
                    model, 1024, name, steps, torch.Generator().manual_seed(0), device="cuda"
                )
            torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            rows.append({"sampler": name, "steps": steps, "nfe": r.nfe, "samples_per_s": 1024 / dt})
        except Exception as e:
            rows.append({"sampler": name, "error": f"{type(e).__name__}: {e}"[:200]})
    return rows


def _likelihood(model) -> dict:
    from scorekit.likelihood import log_prob

    x = _data(None).x[:256].cuda()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    r = log_prob(
        model,
        x,
        divergence="hutchinson",
        generator=torch.Generator(device="cuda").manual_seed(0),
        rtol=1e-4,
        atol=1e-4,
    )
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"n": 256, "seconds": dt, "per_s": 256 / dt, "nfe": getattr(r, "nfe", None)}


def _ddp(minutes: float) -> dict:
    n = torch.cuda.device_count()
    out_dir = Path("/tmp/scorekit_gpu_ddp")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={n}",
        "-m",
        "scorekit",
        "train",
        "--data",
        "digits",
        "--recipe",
        "small-images",
        "--minutes",
        str(minutes),
        "--out",
        str(out_dir),
        "--overwrite",
        "--quiet",
    ]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    row = {
        "devices": n,
        "returncode": r.returncode,
        "seconds": dt,
        "tail": (r.stdout + r.stderr).strip().splitlines()[-2:],
    }
    meta = out_dir / "checkpoint.json"
    if r.returncode == 0 and meta.is_file():
        steps = json.loads(meta.read_text()).get("step")
        row.update(steps=steps, steps_per_s=steps / (60 * minutes) if steps else None)
    return row


def _markdown(res: dict) -> str:
    lines = [
        f"# gpu-check on {res['device']}",
        "",
        f"cuda tests: {res['tests']['summary']}",
        "",
        "| recipe | shape | bf16 | steps/s | examples/s | peak MiB |",
        "|---|---|---|---|---|---|",
    ]
    for r in res["train"]:
        lines.append(
            f"| {r['recipe']} | {r['shape']} | {r['bf16']} | {r['steps_per_s']:.1f} | "
            f"{r['examples_per_s']:.0f} | {r['peak_mib']:.0f} |"
        )
    lines += ["", "| sampler | NFE | samples/s |", "|---|---|---|"]
    for r in res["samplers"]:
        lines.append(
            f"| {r['sampler']} | {r.get('nfe', '-')} | "
            + (f"{r['samples_per_s']:.0f} |" if "samples_per_s" in r else f"{r['error']} |")
        )
    lines += [
        "",
        f"likelihood: {res['likelihood']}",
        f"compile: {res['compile']}",
        f"ddp: {res['ddp']}",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=0.5, help="training budget per run")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here; nothing measured, nothing written", file=sys.stderr)
        return 1
    res = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "devices": torch.cuda.device_count(),
        "minutes": args.minutes,
    }
    res["tests"] = _tests()
    res["train"], models = [], {}
    for recipe, size in (("small-images", None), ("images", 32)):
        for bf16 in (False, True):
            row, ema = _train(recipe, size, args.minutes, bf16)
            res["train"].append(row)
            models.setdefault(recipe, ema)
    res["compile"] = [_compile("small-images", None), _compile("images", 32)]
    res["samplers"] = _samplers(models["small-images"])
    res["likelihood"] = _likelihood(models["small-images"])
    res["ddp"] = _ddp(args.minutes)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1, default=str))
    os.replace(tmp, OUT)
    OUT.with_suffix(".md").write_text(_markdown(res))
    print(f"gpu-check: wrote {OUT}; cuda tests rc {res['tests']['returncode']}")
    return 0 if res["tests"]["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

r"""Likelihood-oriented training on two moons: which noise-level law and weighting give the
lowest test NLL at equal CPU budget (issue 20: moons test NLL <= 0.303 nats).

Every arm trains the ``toy-2d`` recipe's model (EDM-preconditioned residual MLP, EDM
process, AdamW, cosine schedule, EMA) on the bench-real split (20 000 training points,
standardised) and changes only the objective:

* ``edm``: the recipe's EDM loss, :math:`\ln\sigma \sim \mathcal N(-1.5, 1.5^2)`;
* ``edm-wide``: the EDM loss with :math:`\ln\sigma \sim \mathcal N(-2, 2^2)`, more weight on
  the small noise levels where the likelihood is decided;
* ``edm-wider``: :math:`\ln\sigma \sim \mathcal N(-2.5, 2.5^2)`;
* ``likelihood``: the likelihood weighting :math:`\lambda = g^2` with importance-sampled
  ``t`` (:class:`scorekit.losses.LikelihoodLoss`, Song et al. 2021), whose expectation is
  the score-matching term of the bound on :math:`-\log p`;
* ``likelihood-adaptive``: ``likelihood`` with the law of ``t`` adapted during training
  towards the variance-minimising one (:class:`scorekit.losses.AdaptiveSigma`): the
  importance sampling that VDM and i-DODE obtain by learning the noise schedule (Kingma et
  al. 2021: under the likelihood weighting the schedule's interior changes only the variance
  of the loss); ``edm-wide-adaptive``: the same adaptation over ``edm-wide``;
* ``edm-15``, ``edm-wide-15``: ``edm`` and ``edm-wide`` with three times the budget;
  ``edm-wide-30``: ``edm-wide`` with six times the budget;
* ``edm-wide-drop-15``: ``edm-wide-15`` with dropout 0.1 in the residual blocks, against
  fitting the training points;
* ``ens3-wide-5``, ``ens2-wide-15``, ``ens3-wide-15``: a mixture of independently trained
  ``edm-wide`` models (seeds ``1000 seed + k``), :math:`p = \frac1K\sum_k p_k`, whose log-density is
  :math:`\operatorname{logsumexp}_k \log p_k - \log K` from each member's exact ODE
  log-density; the budget is per member, so ``ens3-wide-5`` costs what ``edm-wide-15`` costs
  and ``ens2-wide-15`` what ``edm-wide-30`` costs. Each member fits its training points in
  its own way; the mixture averages that out (and by Jensen's inequality its NLL is never
  above the members' mean).

Measured per run (EMA weights): the NLL of the 5000 test points through the probability-flow
ODE (exact divergence, dopri5, rtol = atol = 1e-5), in data coordinates, minus the
generating density's NLL of the same points (an estimate of KL(p || p_model)). Budgets are
process CPU time (one thread per run), training only. Usage::

    OMP_NUM_THREADS=1 python benchmarks/study_moons_likelihood.py \
        --out benchmarks/results/moons_likelihood [--quick] [--jobs 2] [--seeds 0,1]
        [--arms edm,edm-wide] [--append]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from real_data import (  # noqa: E402
    _likelihood,
    _moons_split,
    append_rows,
    moons_true_nll,
    train_budget,
    write_recipe_figures,
)
from study_weighting import _standardised  # noqa: E402

#: arm -> (objective, its options, CPU-minutes per member[, extras]); extras: ``net``
#: (network options over the recipe's), ``members`` (an ensemble of that many models),
#: ``adaptive`` (the law of sigma adapted during training, AdaptiveSigma)
ARMS = {
    "edm": ("edm", {}, 5.0),
    "edm-wide": ("edm", {"p_mean": -2.0, "p_std": 2.0}, 5.0),
    "likelihood": ("likelihood", {}, 5.0),
    "edm-15": ("edm", {}, 15.0),
    "edm-wider": ("edm", {"p_mean": -2.5, "p_std": 2.5}, 5.0),
    "edm-wide-15": ("edm", {"p_mean": -2.0, "p_std": 2.0}, 15.0),
    "edm-wide-30": ("edm", {"p_mean": -2.0, "p_std": 2.0}, 30.0),
    "edm-wide-drop-15": ("edm", {"p_mean": -2.0, "p_std": 2.0}, 15.0, {"net": {"dropout": 0.1}}),
    "ens3-wide-5": ("edm", {"p_mean": -2.0, "p_std": 2.0}, 5.0, {"members": 3}),
    "ens2-wide-15": ("edm", {"p_mean": -2.0, "p_std": 2.0}, 15.0, {"members": 2}),
    "ens3-wide-15": ("edm", {"p_mean": -2.0, "p_std": 2.0}, 15.0, {"members": 3}),
    "likelihood-adaptive": ("likelihood", {}, 5.0, {"adaptive": True}),
    "edm-wide-adaptive": ("edm", {"p_mean": -2.0, "p_std": 2.0}, 5.0, {"adaptive": True}),
}


def _member(s, loss, options, minutes, data, seed, quick, adaptive=False):
    """Train one model of the arm (with ``adaptive``, its law of sigma adapted during
    training: :class:`scorekit.losses.AdaptiveSigma`); returns (EMA copy, steps, CPU
    seconds, last loss)."""
    from scorekit.app.recipes import build_run
    from scorekit.losses import AdaptiveSigma, make_objective

    torch.manual_seed(seed)
    model, objective, examples = build_run(s, data)  # the recipe's (preconditioned) model
    if loss == "edm":
        objective = make_objective("edm", model.process, **{**s["loss_kwargs"], **options})
    else:
        objective = make_objective("likelihood", model.process, **options)
    if adaptive:
        objective = AdaptiveSigma(objective)
    train = {**s["train"], "steps": None, "seconds": 60.0 * minutes, "clock": "process"}
    ema, _, steps, spent, last = train_budget(model, objective, examples, train, seed)
    return ema, repr(objective), steps, spent, last


def _model_log_prob(ema, z, seed, quick):
    r, _ = _likelihood(copy.deepcopy(ema).double(), z, divergence="exact",
                       rtol=1e-4 if quick else 1e-5, n_probes=2, seed=seed)  # fmt: skip
    return r.log_prob.double()


def run_one(arm: str, seed: int, quick: bool = False) -> dict:
    """Train arm ``arm`` with ``seed`` (every member of an ensemble) and measure its test NLL."""
    from scorekit.app.recipes import recipe_settings

    torch.set_num_threads(1)
    loss, options, minutes, *extra = ARMS[arm]
    extra = extra[0] if extra else {}
    members = extra.get("members", 1)
    minutes = 0.1 if quick else minutes
    s = recipe_settings("toy-2d")
    s["net"] = {**s["net"], **extra.get("net", {})}
    if quick:
        s["net"] = {**s["net"], "hidden": 64, "depth": 2}
        s["train"] = {**s["train"], "warmup": 20, "batch_size": 64}
    xtr, xte = _moons_split()
    xte = xte[: 200 if quick else 5000]
    xtr_eval = xtr[: len(xte)]
    data, norm, log_det = _standardised(xtr, "moons")
    seeds = [seed] if members == 1 else [1000 * seed + k for k in range(members)]
    lp_te, lp_tr, steps, spent, last, member_nll = [], [], [], [], [], []
    for sd in seeds:
        ema, objective, n, cpu, lo = _member(
            s, loss, options, minutes, data, sd, quick, extra.get("adaptive", False)
        )
        lp_te.append(_model_log_prob(ema, norm.encode(xte.double()), sd, quick) + log_det)
        member_nll.append(float(-lp_te[-1].mean()))
        if members == 1:  # the same on as many training points (a fitted training set scores
            # better there); not measured for ensembles, whose members each cost one more solve
            lp_tr.append(_model_log_prob(ema, norm.encode(xtr_eval.double()), sd, quick) + log_det)
        steps.append(n)
        spent.append(cpu)
        last.append(lo)
    log_k = math.log(members)
    nll = -(torch.logsumexp(torch.stack(lp_te), 0) - log_k)
    gap = nll - moons_true_nll(xte)
    row = {
        "arm": arm, "seed": seed, "budget_cpu_min": minutes * members, "objective": objective,
        "nll": float(nll.mean()), "true_nll": float((nll - gap).mean()),
        "kl": float(gap.mean()), "kl_stderr": float(gap.std() / math.sqrt(len(gap))),
        "train_steps": sum(steps), "train_cpu_s": sum(spent), "last_loss": statistics.fmean(last),
    }  # fmt: skip
    if lp_tr:
        row["train_kl"] = float((-lp_tr[0] - moons_true_nll(xtr_eval)).mean())
    if members > 1:
        row.update(members=members, member_seeds=seeds, member_nll=member_nll)
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def _task(args):
    return run_one(*args)


def summary(rows: list[dict]) -> list[dict]:
    """Mean and s.d. over seeds per arm."""
    out = []
    for arm in ARMS:
        mine = [r for r in rows if r["arm"] == arm]
        if not mine:
            continue
        agg = {"arm": arm, "seeds": [r["seed"] for r in mine]}
        for k in ("nll", "kl", "train_steps", "train_kl"):
            vals = [r[k] for r in mine if k in r]  # train_kl: only the later runs measure it
            if not vals:
                continue
            if len(vals) < len(mine):
                agg[k + "_seeds"] = [r["seed"] for r in mine if k in r]
            agg[k] = statistics.fmean(vals)
            agg[k + "_sd"] = statistics.stdev(vals) if len(vals) > 1 else None
        out.append(agg)
    return out


def _partial(agg: dict, key: str, fmt) -> str:
    """A measure that only some seeds have: its value and which seeds, or a dash."""
    if key not in agg:
        return "–"
    seeds = agg.get(key + "_seeds")
    return fmt(agg, key, 4) + (f" (seed {','.join(map(str, seeds))})" if seeds else "")


def markdown(result: dict) -> str:
    def fmt(agg, key, digits):
        sd = agg.get(key + "_sd")
        return f"{agg[key]:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")

    true = statistics.fmean(r["true_nll"] for r in result["rows"])
    lines = [
        "# Likelihood-oriented training on two moons, equal CPU budgets",
        "",
        f"`benchmarks/study_moons_likelihood.py`, quick={result['quick']}; mean ± s.d. over "
        f"seeds; {result['total_wall_s'] / 60:.1f} minutes wall with {result['jobs']} job(s). "
        f"Test NLL of {'200' if result['quick'] else '5000'} points in nats (the generating "
        f"density gives {true:.4f}); KL: test NLL minus the generating density's NLL; the same on "
        f"as many training points, where measured (a model that fits its training points "
        f"scores lower there than on the test points).",
        "",
        "| arm | objective | CPU-min | seeds | test NLL | KL (nats) | KL on training points "
        "| steps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for agg in result["summary"]:
        loss, options, minutes, *extra = ARMS[agg["arm"]]
        extra = extra[0] if extra else {}
        minutes = 0.1 if result["quick"] else minutes
        what = loss + (" " + json.dumps(options) if options else "")
        what += f", net {json.dumps(extra['net'])}" if "net" in extra else ""
        what += ", sigma law adapted (AdaptiveSigma)" if extra.get("adaptive") else ""
        if "members" in extra:
            what += f", mixture of {extra['members']} models of {minutes:g} CPU-min"
            minutes *= extra["members"]
        lines.append(
            f"| {agg['arm']} | {what} | {minutes:g} | "
            f"{len(agg['seeds'])} | {fmt(agg, 'nll', 4)} | {fmt(agg, 'kl', 4)} | "
            f"{_partial(agg, 'train_kl', fmt)} | "
            f"{fmt(agg, 'train_steps', 0)} |"
        )
    ens = [r for r in result["rows"] if "member_nll" in r]
    if ens:
        lines += ["", "Ensembles: each member's own test NLL, then the mixture's.", ""]
        lines += [
            f"* {r['arm']}, seed {r['seed']} (member seeds "
            f"{', '.join(map(str, r['member_seeds']))}): "
            f"{', '.join(f'{v:.4f}' for v in r['member_nll'])} (mean "
            f"{statistics.fmean(r['member_nll']):.4f}) -> mixture {r['nll']:.4f}"
            for r in ens
        ]
    return "\n".join(lines) + "\n"


#: arms measured with the settings of recipe toy-2d-nll: (arm, what the figure is)
RECIPE_ARMS = (
    ("edm-wide-15", "moons test NLL (nats), one model"),
    ("ens2-wide-15", "moons test NLL (nats), mixture of two runs (other seeds)"),
    ("ens3-wide-15", "moons test NLL (nats), mixture of three runs (other seeds)"),
)


def recipe_figures(result: dict) -> dict:
    """The figures of recipe ``toy-2d-nll`` in this record, as ``scorekit recipes`` lists
    them (mean +- s.d. over seeds)."""
    out = []
    for arm, what in RECIPE_ARMS:
        agg = next((a for a in result["summary"] if a["arm"] == arm), None)
        if agg is None:
            continue
        rows = [r for r in result["rows"] if r["arm"] == arm]
        sd = f" +- {agg['nll_sd']:.4f}" if agg.get("nll_sd") is not None else ""
        true = statistics.fmean(r["true_nll"] for r in rows)
        minutes = rows[0]["budget_cpu_min"]
        seeds = ",".join(str(r["seed"]) for r in rows)
        out.append({
            "what": what,
            "value": f"{agg['nll']:.4f}{sd} (true density {true:.4f})",
            "budget": f"{minutes:g} CPU-min",
            "source": f"benchmarks/study_moons_likelihood.py, mean +- s.d. over seeds {seeds}",
        })  # fmt: skip
    return {"toy-2d-nll": out} if out else {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/moons_likelihood"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument(
        "--append",
        action="store_true",
        help="add these runs to the record in --out (same arm and seed: replaced)",
    )
    ap.add_argument(
        "--tables-only",
        action="store_true",
        help="regenerate the markdown and the recipe figures from the record in --out",
    )
    args = ap.parse_args()
    if args.tables_only:
        result = json.loads((args.out / "moons_likelihood.json").read_text())
        (args.out / "moons_likelihood.md").write_text(markdown(result))
        if not result["quick"]:
            write_recipe_figures(recipe_figures(result))
        return 0
    seeds = [int(v) for v in args.seeds.split(",")]
    tasks = [(arm, seed, args.quick) for arm in args.arms.split(",") for seed in seeds]
    t0 = time.time()
    if args.jobs > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(args.jobs) as pool:
            rows = pool.map(_task, tasks, chunksize=1)
    else:
        rows = [_task(t) for t in tasks]
    wall = round(time.time() - t0, 1)
    record = args.out / "moons_likelihood.json"
    if args.append and record.exists():
        rows, old_wall = append_rows(record, rows, ("arm", "seed"))
        wall += old_wall
    result = {"suite": "moons_likelihood", "quick": args.quick, "jobs": args.jobs,
              "rows": rows, "summary": summary(rows), "total_wall_s": wall}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "moons_likelihood.json").write_text(json.dumps(result, indent=2))
    (args.out / "moons_likelihood.md").write_text(markdown(result))
    if not args.quick:
        write_recipe_figures(recipe_figures(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

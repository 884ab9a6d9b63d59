"""python -m benchmarks.precision_accuracy [--profile quick] [--seeds N] [--options ...] [--threads 1]
[--epochs E --iters-per-epoch I]

Do the execution options (nas/execution.py) cost accuracy? The same training (the plans' network and
schedule of the search study's profile: `fit`, then `score_cases` on cases the training never
read) under fp32 and under each option, with several seeds, on the study's source task (the
demo-like synthetic task) and on its held-out CT-like task. An option passes on a task when
its mean Dice lies within the seed noise of fp32's: |mean_option - mean_fp32| <= 2 x the
larger of the two seed standard deviations (with one seed: the fp32 seed spread is unknown
and the check says so instead of passing).

The profile's training budget (quick: 4 x 10 iterations) is too short for a network to learn
the lesion, and a Dice every option shares because nothing was learnt says nothing:
`--epochs` / `--iters-per-epoch` set a longer one. Resumable: every finished (task, option,
seed) is stored at once in the results file, and a rerun skips it; a file made with another
profile or budget is refused rather than mixed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from c2fnas_auto.cli._common import cli_entry

# fp32, bf16 and compile run in the device's default layout (channels-last on a CPU); ncdhw
# and bf16_ncdhw in NCDHW, so the layout's own effect on accuracy shows
OPTIONS = {"fp32": {}, "bf16": {"precision": "bf16"}, "compile": {"compile": True},
           "ncdhw": {"channels_last": False}, "bf16_ncdhw": {"precision": "bf16", "channels_last": False}}
OUT = Path(__file__).resolve().parent / "results" / "precision_accuracy"


def train_and_score(task, option: str, seed: int, epochs: int, iters_per_epoch: int) -> dict:
    """One training from seed `seed` under `option`, scored on the task's held-out cases."""
    import torch

    from benchmarks.study.runner import class_dice
    from c2fnas_auto.nas.execution import ExecutionOptions
    from c2fnas_auto.nas.network import build_network
    from c2fnas_auto.training.api import fit, score_cases

    execution = ExecutionOptions(**OPTIONS[option])
    torch.manual_seed(seed)
    net = build_network(task.plans.genotype, task.plans.network_config())
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    losses = fit(net, task.plans, task.preprocessed, task.train_ids, epochs=epochs,
                 iters_per_epoch=iters_per_epoch, device="cpu", seed=seed, execution=execution)
    t1 = time.perf_counter()
    scores = score_cases(net, task.plans, task.heldout_dir, task.heldout_ids, device="cpu",
                         execution=execution)
    return {"mean_fg_dice": scores["mean_fg_dice"],
            "class_dice": class_dice(scores["per_case"], task.plans.num_classes),
            "final_loss": float(losses[-1]) if losses else None, "train_seconds": round(t1 - t0, 1),
            "wall_seconds": round(time.perf_counter() - t0, 1),
            "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def verdict(dice: dict[str, list[float]], option: str) -> dict:
    """Mean, seed SD and the within-seed-noise check of `option` against fp32."""
    ref, got = dice.get("fp32", []), dice.get(option, [])
    if not ref or not got:
        return {"status": "missing"}
    sd = max(statistics.stdev(ref) if len(ref) > 1 else 0.0, statistics.stdev(got) if len(got) > 1 else 0.0)
    diff = statistics.fmean(got) - statistics.fmean(ref)
    out = {"mean": statistics.fmean(got), "mean_fp32": statistics.fmean(ref), "difference": diff,
           "seed_sd": sd, "seeds": len(got)}
    if len(ref) < 2:
        out["status"] = "needs at least 2 seeds"
    else:
        out["status"] = "within seed noise" if abs(diff) <= 2 * sd else "outside seed noise"
    return out


def summary(jobs: dict[str, list[dict]], option: str) -> dict:
    """`verdict` on the mean foreground Dice and on each label's Dice (a label a training never
    scored, e.g. a lesion never predicted nor present, leaves that seed out)."""
    out = verdict({o: [j["mean_fg_dice"] for j in js] for o, js in jobs.items()}, option)
    labels = sorted({k for js in jobs.values() for j in js for k in j.get("class_dice", {})})
    def label_dice(js: list[dict], lab: str) -> list[float]:
        return [j["class_dice"][lab] for j in js if j.get("class_dice", {}).get(lab) is not None]

    out["per_label"] = {lab: verdict({o: label_dice(js, lab) for o, js in jobs.items()}, option) for lab in labels}
    return out


@cli_entry
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.precision_accuracy", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="quick", help="search-study profile: tiny, quick, full (default quick)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--options", nargs="+", choices=list(OPTIONS), default=list(OPTIONS))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the profile's)")
    p.add_argument("--iters-per-epoch", type=int, default=None, help="iterations per epoch (default: the profile's)")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None, help=f"results JSON (default {OUT}/<profile>.json)")
    args = p.parse_args(argv)
    import torch

    from benchmarks.study.profiles import PROFILES
    from benchmarks.study.runner import prepare_task, set_environment
    from c2fnas_auto.errors import C2FNASError
    from c2fnas_auto.utils.io import atomic_write_json, load_json

    if args.threads:
        torch.set_num_threads(args.threads)
    profile = PROFILES[args.profile]
    out = args.out or OUT / f"{profile.name}.json"
    workdir = (args.workdir or Path(__file__).resolve().parent / "work" / "precision_accuracy" / profile.name).resolve()
    set_environment(workdir)
    budget = {"profile": profile.name, "epochs": args.epochs or profile.epochs,
              "iters_per_epoch": args.iters_per_epoch or profile.iters_per_epoch}
    results = load_json(out, "precision accuracy results") if out.is_file() else {"budget": budget, "jobs": {}}
    if results.get("budget", budget) != budget:
        raise C2FNASError(f"{out}: made with {results['budget']}, this run is {budget}; use another --out")
    results["budget"] = budget
    results.setdefault("machine", {"torch": torch.__version__, "threads": torch.get_num_threads(),
                                   "cpu_count": os.cpu_count()})
    options = ["fp32"] + [o for o in args.options if o != "fp32"]
    heldout_task = next(t for t in profile.transfers if t.kind == "synthetic")  # needs no real data
    for spec in (profile.source, heldout_task):
        task = prepare_task(spec, profile, workdir)
        for seed in range(args.seeds):
            for option in options:
                key = f"{spec.key}|{option}|{seed}"
                if key in results["jobs"]:
                    continue
                results["jobs"][key] = train_and_score(task, option, seed, budget["epochs"],
                                                       budget["iters_per_epoch"])
                atomic_write_json(out, results)
                print(f"{key}: Dice {results['jobs'][key]['mean_fg_dice']:.3f}", flush=True)
        jobs = {o: [results["jobs"][f"{spec.key}|{o}|{s}"] for s in range(args.seeds)] for o in options}
        results.setdefault("summary", {})[spec.key] = {o: summary(jobs, o) for o in options if o != "fp32"}
        atomic_write_json(out, results)
        for o, v in results["summary"][spec.key].items():
            print(f"{spec.key} {o}: {v}", flush=True)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

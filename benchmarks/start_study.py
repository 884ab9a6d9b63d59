"""`python -m benchmarks.start_study --phase screen [--shard 0/2] [--threads 1]`.

The start study (documentation/studies/search_study.md "Start study"): trains network
variants of several genotypes with several init and data seeds on the search study's
source task, scores each on held-out cases and counts trainings that never started.
Phases:
  screen    every variant (or --variants) on the 4 (genotype, seed) pairs that never started in the
            full search study (init = data seed, as there): a variant that fails one is out
  extend    --variants V..., 4 genotypes x seeds 0-9 (40 trainings per variant), seed-major
  data      today's network: init and data seed apart on the genotypes that failed
  width     --variants V... at --width W (default 16), 4 genotypes x seeds 0-2
Resumable: every finished job is stored at once (one results file per shard); a rerun
skips stored jobs. `--summary-only` rewrites summary.md / summary.json / start_study.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from c2fnas_auto.cli._common import cli_entry

OUT = Path(__file__).resolve().parent / "results" / "start_study"
GENOTYPES = ("reference", "searched", "searched_3d", "random_5")
# (genotype, seed) pairs that never started in the full search study: run first
KNOWN_FAILURES = (("searched", 2), ("reference", 2), ("searched_3d", 0), ("random_5", 0))


def plan(phase: str, variants: list[str], width: int, genotypes=GENOTYPES) -> list:
    from benchmarks.study.start import VARIANTS, Job

    names = variants or list(VARIANTS)
    jobs: list[Job] = []
    if phase == "screen":
        jobs = [Job(v, g, s, s, width) for g, s in KNOWN_FAILURES for v in names]
    elif phase == "extend":
        jobs = [Job(v, g, s, s, width) for s in range(10) for g in genotypes for v in names]
    elif phase == "data":
        # init seed of a failure with other data seeds, and a working init seed with the failure's data seed
        for g, s in KNOWN_FAILURES:
            jobs += [Job("today", g, s, 100 + s, width), Job("today", g, s, 200 + s, width),
                     Job("today", g, (s + 1) % 3, s, width)]
    elif phase == "width":
        jobs = [Job(v, g, s, s, width) for s in range(3) for g in genotypes for v in names]
    else:
        raise ValueError(phase)
    return jobs


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.start_study", description=__doc__.split("\n\n")[1])
    p.add_argument("--phase", choices=("screen", "extend", "data", "width"), default="screen")
    p.add_argument("--variants", nargs="*", default=[], help="variant names (default: all for screen)")
    p.add_argument("--width", type=int, default=None, help="stem / level-1 width (default 8; 16 for --phase width)")
    p.add_argument("--shard", default="0/1", help="K/N: run every N-th job starting at K (for parallel processes)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--workdir", type=Path, default=None, help="task data (default benchmarks/work/start_study)")
    p.add_argument("--profile", default="full", help="search-study profile whose source task and budget are used")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--summary-only", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from benchmarks.study.start_report import write_summary

    if not args.summary_only:
        run(args)
    print((write_summary(args.out) and (args.out / "summary.md").read_text(encoding="utf-8")) or "no results yet")
    return 0


def run(args) -> None:
    import time

    import torch
    from tqdm import tqdm

    from benchmarks.study.args import parse_shard
    from benchmarks.study.profiles import PROFILES
    from benchmarks.study.runner import prepare_task, set_environment
    from benchmarks.study.start import VARIANTS, study_genotypes, train_job
    from benchmarks.study.store import ResultStore
    from c2fnas_auto.errors import InputError

    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise InputError(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    k, n = parse_shard(args.shard)
    torch.set_num_threads(args.threads)
    if args.profile not in PROFILES:
        raise InputError(f"--profile {args.profile!r}: expected one of {', '.join(PROFILES)}")
    profile = PROFILES[args.profile]
    width = args.width or (16 if args.phase == "width" else profile.base_channels)
    workdir = (args.workdir or Path(__file__).resolve().parent / "work" / "start_study" / profile.name).resolve()
    set_environment(workdir)
    task = prepare_task(profile.source, profile, workdir)
    genotypes = study_genotypes()
    jobs = plan(args.phase, args.variants, width)[k::n]
    store = ResultStore(args.out / f"results_{args.phase}_{k}of{n}.json", f"start-{profile.name}")
    from benchmarks.study.start_report import load_records

    done = set(load_records(args.out))
    store.set_meta(task=task.spec.describe(), patch_size=list(task.plans.patch_size),
                   batch_size=int(task.plans.batch_size), epochs=profile.epochs,
                   iters_per_epoch=profile.iters_per_epoch,
                   heldout_cases=task.heldout_ids, train_cases=len(task.train_ids),
                   genotypes={g: {"levels": list(x.levels), "ops": list(x.ops)} for g, x in genotypes.items()},
                   variants={v.name: v.describe for v in VARIANTS.values()})
    bar = tqdm(jobs, desc=f"start study {args.phase} {args.shard}", disable=args.no_progress, unit="training")
    for job in bar:
        if job.key in done:
            continue
        bar.set_postfix_str(job.key)
        scores = train_job(task, job, genotypes[job.genotype], profile)
        store.add({"key": job.key, "job": job.__dict__, "scores": scores,
                   "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        done.add(job.key)


if __name__ == "__main__":
    sys.exit(main())

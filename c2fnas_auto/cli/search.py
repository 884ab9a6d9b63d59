"""c2fnas_search -t 7: coarse-to-fine architecture search on a preprocessed task.

Defaults are sized for about one GPU-day on one modern GPU (documentation/howto/search.md).
Several workers share one search through Optuna trials (Optuna's journal file in its
results folder, which nodes sharing that folder can use too, or a database given with --storage):
`torchrun --nproc_per_node N` (and --nnodes), and/or more processes started later with
`--join`. SIGTERM / SIGUSR1: finish the running candidate, save, exit 3; `--continue` resumes.
"""

from __future__ import annotations

import argparse
import os
import sys

from c2fnas_auto.cli._common import cli_entry, exit_with
from c2fnas_auto.cli._execution import add_execution_flags, settings_from_args
from c2fnas_auto.nas.genotype import OPS
from c2fnas_auto.paths import search_results_dir, task_name_from_id
from c2fnas_auto.search.files import REPORT_FILE
from c2fnas_auto.search.jobs import WorkerOptions
from c2fnas_auto.search.report import within_noise_warnings
from c2fnas_auto.search.settings import SearchSettings
from c2fnas_auto.search.stop import SearchStopped, search_stop_flag
from c2fnas_auto.utils.stop_signals import STOPPED_EXIT_CODE


def build_parser() -> argparse.ArgumentParser:
    """Every flag of c2fnas_search, one after another: a parser reads best whole, in the order
    `--help` prints it, so it is not split by group."""

    d = SearchSettings()
    w = WorkerOptions()
    p = argparse.ArgumentParser(prog="c2fnas_search", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-t", "--task", required=True, help="task id (7, 007) or folder name, planned and preprocessed")
    p.add_argument("--coarse-candidates", type=int, default=d.coarse_candidates,
                   help="topologies trained at the lowest rung of the coarse stage")
    p.add_argument("--min-epochs", type=int, default=d.min_epochs, help="epochs per candidate at the lowest rung")
    p.add_argument("--eta", type=int, default=d.eta,
                   help="successive halving: the best 1/eta of a rung go on to eta times the epochs")
    p.add_argument("--rungs", type=int, default=d.rungs,
                   help="number of rungs (longest budget = min-epochs x eta^(rungs-1); 1 = no halving)")
    p.add_argument("--clusters", type=int, default=d.clusters, help="k-medoids clusters of the 1486 topologies")
    p.add_argument("--population", type=int, default=d.population,
                   help="population of both evolutionary searches")
    p.add_argument("--fine-epochs", type=int, default=d.fine_epochs, help="supernet training epochs")
    p.add_argument("--supernet-warmup", type=float, default=d.supernet_warmup,
                   help="share of supernet steps that give every cell the same sampled op before cell-wise "
                        "paths (default 0.5; 0 = cell-wise from the start)")
    p.add_argument("--generations", type=int, default=d.generations, help="fine-stage generations")
    p.add_argument("--iters-per-epoch", type=int, default=d.iters_per_epoch,
                   help="training iterations per epoch (coarse candidates, supernet, stand-alone check)")
    p.add_argument("--standalone-sample", type=int, default=d.standalone_sample,
                   help="fine-stage op choices also trained stand-alone (longest rung's epochs) for the "
                        "supernet-vs-stand-alone Kendall tau; 0 turns the check off")
    p.add_argument("--heldout-fraction", type=float, default=d.heldout_fraction,
                   help="share of the training cases kept out of the search when the task has no labelled "
                        "imagesTs/labelsTs (0: none)")
    p.add_argument("--coarse-op", default=d.coarse_op, choices=list(OPS),
                   help="the op of every cell during the coarse stage")
    b = p.add_argument_group("cost budget (both stages keep to it; documentation/howto/search.md)")
    b.add_argument("--max-gflops", type=float, default=None,
                   help="no candidate whose forward pass of one patch exceeds this many GFLOPs")
    b.add_argument("--max-params", type=int, default=None, help="no candidate with more parameters than this")
    b.add_argument("--budget", choices=["reference", "nnunet"], default=None,
                   help="the limits priced from the plans: the reference genotype's, or nnU-Net's default "
                        "network's, parameters and GFLOPs at the plans' patch")
    b.add_argument("--budget-band", type=float, default=None, metavar="B",
                   help="candidates must also use at least (1 - B) of the budget (e.g. 0.15)")
    b.add_argument("--equal-cost", action="store_true",
                   help="scale each coarse candidate's widths to fill the budget, so topologies compete at equal "
                        "cost; the winner keeps its widths in the plans")
    n = p.add_argument_group("noise check (each stage's ranking against its seed noise)")
    n.add_argument("--noise-repeats", type=int, default=d.noise_repeats,
                   help="rung-0 candidates trained again with a second seed (0: off)")
    n.add_argument("--standalone-repeats", type=int, default=d.standalone_repeats,
                   help="stand-alone op choices trained again with a second seed (0: off)")
    p.add_argument("--tournament", type=int, default=d.tournament, help="coarse tournament size")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--continue", dest="resume", action="store_true",
                   help="resume the search in C2FNAS_results/<task>/search; finished candidates are never run again")
    g.add_argument("--overwrite", action="store_true", help="discard an existing search state and start again")
    g.add_argument("--join", action="store_true",
                   help="add this process as a worker to a search already running (any node sharing the folder)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="Optuna storage shared by the workers: a database URL (e.g. postgresql://user:pw@host/db) "
                        "or the path of a journal file (default: optuna_journal.log in the search's results folder, "
                        "which works for every process and node that shares that folder)")
    p.add_argument("--stale-seconds", type=float, default=w.stale_seconds,
                   help="a worker whose beat has not changed for this long is taken as gone; its candidate is rerun")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars (one line per candidate still printed)")
    add_execution_flags(p)  # every candidate, the supernet and the stand-alone check run this way
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # start-up: the search pulls in torch, optuna and the training stack; --help should not wait for them
    from c2fnas_auto.search.api import run_search
    from c2fnas_auto.search.run import SearchRun

    settings = settings_from_args(SearchSettings, args)
    stop = search_stop_flag().install()
    try:
        run = SearchRun(resume=args.resume, overwrite=args.overwrite, join=args.join, storage=args.storage,
                        workers=WorkerOptions(stale_seconds=args.stale_seconds), progress=not args.no_progress,
                        stop=stop)
        state = run_search(args.task, settings, run, device=args.device)
    except SearchStopped as exc:
        print(f"c2fnas_search: {exc}", flush=True)
        return STOPPED_EXIT_CODE
    finally:
        stop.restore()
    w = state.winner or {}
    if int(os.environ.get("RANK", "0")) == 0 and not args.join:
        folder = search_results_dir(task_name_from_id(args.task))
        print(f"winner: levels {','.join(map(str, w.get('levels', [])))} ops {','.join(w.get('ops', []))} "
              f"(fine Dice {w.get('fine_score', 0):.4f}, coarse Dice {w.get('coarse_score', 0):.4f} "
              f"at {w.get('coarse_epochs')} epochs)")
        print(f"written into plans.json and {folder / 'genotype.json'}; report: {folder / REPORT_FILE}")
        for line in within_noise_warnings({"noise": state.noise}):
            print(f"c2fnas_search: warning: {line}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    exit_with(main)

"""c2fnas_search -t 7: coarse-to-fine architecture search on a preprocessed task.

Defaults are sized for about one GPU-day on one modern GPU (documentation/search.md).
Under `torchrun --nproc_per_node N` the candidates of a generation are spread across ranks.
"""

from __future__ import annotations

import argparse
import os

from c2fnas_auto.cli._common import cli_entry, exit_with


def build_parser() -> argparse.ArgumentParser:
    from c2fnas_auto.search.api import SearchSettings

    d = SearchSettings()
    p = argparse.ArgumentParser(prog="c2fnas_search", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-t", "--task", required=True, help="task id (7, 007) or folder name, planned and preprocessed")
    p.add_argument("--coarse-candidates", type=int, default=d.coarse_candidates,
                   help="topologies trained from scratch in the coarse stage")
    p.add_argument("--coarse-epochs", type=int, default=d.coarse_epochs, help="epochs per coarse candidate")
    p.add_argument("--clusters", type=int, default=d.clusters, help="k-medoids clusters of the 1486 topologies")
    p.add_argument("--population", type=int, default=d.population,
                   help="population of both evolutionary searches")
    p.add_argument("--fine-epochs", type=int, default=d.fine_epochs, help="supernet training epochs")
    p.add_argument("--generations", type=int, default=d.generations, help="fine-stage generations")
    p.add_argument("--iters-per-epoch", type=int, default=d.iters_per_epoch,
                   help="training iterations per epoch (coarse candidates and supernet)")
    p.add_argument("--coarse-op", default=d.coarse_op, choices=["2d", "3d", "p3d"],
                   help="the op of every cell during the coarse stage")
    p.add_argument("--max-gflops", type=float, default=None,
                   help="fine stage: skip op choices whose forward pass of one patch exceeds this")
    p.add_argument("--tournament", type=int, default=d.tournament, help="coarse tournament size")
    p.add_argument("--children-per-round", type=int, default=d.children_per_round,
                   help="coarse children proposed per round (a round is spread over torchrun ranks)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--continue", dest="resume", action="store_true",
                   help="resume search/state.json; finished candidates are never trained again")
    g.add_argument("--overwrite", action="store_true", help="discard an existing search state and start again")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars (one line per candidate still printed)")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    from c2fnas_auto.search.api import REPORT_FILE, SEARCH_DIR, SearchSettings, run_search

    args = build_parser().parse_args(argv)
    settings = SearchSettings(coarse_candidates=args.coarse_candidates, coarse_epochs=args.coarse_epochs,
                              clusters=args.clusters, population=args.population, fine_epochs=args.fine_epochs,
                              generations=args.generations, iters_per_epoch=args.iters_per_epoch, seed=args.seed,
                              coarse_op=args.coarse_op, max_gflops=args.max_gflops, tournament=args.tournament,
                              children_per_round=args.children_per_round)
    state = run_search(args.task, settings, device=args.device, resume=args.resume, overwrite=args.overwrite,
                       progress=not args.no_progress)
    w = state.winner or {}
    if int(os.environ.get("RANK", "0")) == 0:
        from c2fnas_auto.paths import preprocessed_dir, task_name_from_id

        folder = preprocessed_dir(task_name_from_id(args.task)) / SEARCH_DIR
        print(f"winner: levels {','.join(map(str, w.get('levels', [])))} ops {','.join(w.get('ops', []))} "
              f"(fine Dice {w.get('fine_score', 0):.4f}, coarse Dice {w.get('coarse_score', 0):.4f})")
        print(f"written into plans.json; report: {folder / REPORT_FILE}")
    return 0


if __name__ == "__main__":
    exit_with(main)

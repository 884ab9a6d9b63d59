"""Score the test cases that cut-off cells have predicted so far (a guide while a run is unfinished).

    python -m benchmarks.h2h.partial_score --budget 20 --seed 0

For each arm, the cases in the cell's `pred/` folder are scored with the project's evaluator, and
the cases both arms predicted are scored again on their own, so the arms are compared on the
same cases. The result is written next to the cells as `partial_<budget>min_seed<seed>.json`,
marked partial: it is never a cell's score over the whole test set.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.h2h.cells import cell_name
from benchmarks.head_to_head import DEFAULT_RESULTS
from benchmarks.h2h.tasks import HIPPOCAMPUS
from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.evaluation.evaluate import evaluate_folders
from c2fnas_auto.utils.io import atomic_write_json, load_json


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="partial_score", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "c2fnas_head_to_head")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    p.add_argument("--task", default=HIPPOCAMPUS)
    p.add_argument("--arms", nargs="+", default=["nnunet", "ours"])
    p.add_argument("--budget", type=float, default=20.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settle-s", type=float, default=30.0,
                   help="leave out files written in the last SETTLE_S s (a running prediction may be writing them)")
    args = p.parse_args(argv)
    try:
        meta = load_json(args.workdir / "tasks" / args.task / "h2h_task.json", "head-to-head task record")
    except C2FNASError as exc:
        p.exit(2, f"{p.prog}: error: {exc}\n")
    labels = {k: int(v) for k, v in meta["labels"].items()}
    ref = Path(meta["test_labels"])
    preds, done = {}, {}
    for arm in args.arms:
        preds[arm] = args.workdir / "cells" / cell_name(args.task, arm, args.budget, args.seed) / "pred"
        files = [f for f in preds[arm].glob("*.nii.gz") if time.time() - f.stat().st_mtime > args.settle_s]
        done[arm] = sorted(f.name.removesuffix(".nii.gz") for f in files)
    common = sorted(set.intersection(*(set(v) for v in done.values())))
    out = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "partial": True,
           "note": "only the test cases each cell had predicted; not the cell's whole-test-set score",
           "test_cases_total": len(meta["test_ids"]), "common_cases": common}
    for arm in args.arms:
        for name, ids in (("predicted", done[arm]), ("common", common)):
            if not ids:
                continue
            s = evaluate_folders(ref, preds[arm], labels, None, progress=False, case_ids=ids)
            out[f"{arm}_{name}"] = {"cases": len(ids), "dice": s["foreground_mean"]["Dice"],
                                    "per_class": {m["name"]: m["Dice"] for m in s["mean"].values()}}
    path = args.results / f"partial_{args.budget:g}min_seed{args.seed}.json"
    atomic_write_json(path, out)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

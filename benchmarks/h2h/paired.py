"""Compare two arms' finished cells case by case (an A/B across targets or results folders).

    python -m benchmarks.h2h.paired --a CELL.json [CELL.json ...] --b CELL.json [...] --out AB.json

The cells' `test.dice_per_case` are paired by seed (the n-th file of --a with the n-th of --b)
and by test case; the difference of means gets a 90% bootstrap interval that resamples seeds and
cases together (`benchmarks.study.stats.paired_bootstrap`). With one seed per arm the interval
covers case noise only, not seed noise, and the record says so. `--cases` restricts both arms to
a list of cases (e.g. the cases a cut-off peer cell had predicted: `--cases-from partial.json`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.study.stats import paired_bootstrap
from c2fnas_auto.errors import C2FNASError, InputError
from c2fnas_auto.utils.io import atomic_write_json, load_json


def _per_case(cell: Any, path: Path) -> dict[str, float]:
    test = cell.get("test") if isinstance(cell, dict) else None
    per_case = test.get("dice_per_case") if isinstance(test, dict) else None
    if not isinstance(per_case, dict) or not per_case:
        raise InputError(f"{path}: no test.dice_per_case (not a finished head-to-head cell)")
    return {str(k): float(v) for k, v in per_case.items()}


def compare(a_cells: list[Path], b_cells: list[Path], cases: list[str] | None = None,
            n_boot: int = 2000) -> dict[str, Any]:
    """A minus B on the cases every cell scored (or on `cases`), paired by seed and case."""
    if len(a_cells) != len(b_cells) or not a_cells:
        raise InputError(f"--a has {len(a_cells)} cells and --b {len(b_cells)}: give one per seed, the same number")
    a = [_per_case(load_json(p, "head-to-head cell"), p) for p in a_cells]
    b = [_per_case(load_json(p, "head-to-head cell"), p) for p in b_cells]
    common = sorted(set.intersection(*(set(d) for d in a + b)))
    if cases is not None:
        missing = sorted(set(cases) - set(common))
        if missing:
            raise InputError(f"cases not scored by every cell: {', '.join(missing[:5])}"
                             + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""))
        common = sorted(cases)
    if not common:
        raise InputError("the cells share no scored test case")
    ma = np.array([[d[c] for c in common] for d in a])
    mb = np.array([[d[c] for c in common] for d in b])
    boot = paired_bootstrap(ma, mb, n_boot=n_boot, seed=0)
    diff = (ma - mb).mean(axis=0)
    return {"a_cells": [str(p) for p in a_cells], "b_cells": [str(p) for p in b_cells],
            "seeds": len(a_cells), "cases": len(common), "case_ids": common,
            "a_dice": float(ma.mean()), "b_dice": float(mb.mean()),
            "a_dice_per_seed": [float(x) for x in ma.mean(axis=1)],
            "b_dice_per_seed": [float(x) for x in mb.mean(axis=1)],
            "difference": boot, "a_better_cases": int(np.sum(diff > 0)), "b_better_cases": int(np.sum(diff < 0)),
            "case_difference_sd": float(np.std(diff, ddof=1)) if len(diff) > 1 else None,
            "interval_covers": ("cases and seeds" if len(a_cells) > 1
                                else "cases only (one seed per arm: seed noise not measured)")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="paired", description=__doc__.split("\n\n")[0])
    p.add_argument("--a", type=Path, nargs="+", required=True, help="arm A's cell files, one per seed")
    p.add_argument("--b", type=Path, nargs="+", required=True, help="arm B's cell files, in the same seed order")
    p.add_argument("--cases", nargs="+", help="compare on these test cases only")
    p.add_argument("--cases-from", type=Path, help="a partial_*.json: compare on its common_cases")
    p.add_argument("--out", type=Path, help="write the comparison here (JSON)")
    args = p.parse_args(argv)
    try:
        cases = args.cases
        if args.cases_from is not None:
            rec = load_json(args.cases_from, "partial score")
            if not isinstance(rec.get("common_cases"), list):
                raise InputError(f"{args.cases_from}: no common_cases list")
            cases = [str(c) for c in rec["common_cases"]]
        out = compare(args.a, args.b, cases)
    except C2FNASError as exc:
        p.exit(2, f"{p.prog}: error: {exc}\n")
    out["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if args.out is not None:
        atomic_write_json(args.out, out)
    d = out["difference"]
    print(json.dumps({k: v for k, v in out.items() if k != "case_ids"}, indent=1))
    if d["diff"] is not None and d["low"] is not None:
        print(f"A - B = {d['diff']:+.3f} (90% interval {d['low']:+.3f} .. {d['high']:+.3f}) on {out['cases']} cases, "
              f"{out['seeds']} seed(s); A better on {out['a_better_cases']}, B on {out['b_better_cases']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

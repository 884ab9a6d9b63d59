"""python -m benchmarks.run --quick | --full [--only ROW ...] [--out benchmarks/results/]

Runs the rows in one process, one after the other (never in parallel: they would
measure each other), writes `<out>/<date>-<machine>.json` and regenerates the table in
documentation/benchmarks.md. A row that cannot run here (peer missing, no GPU, a module
of ours not there) is recorded as skipped with the reason; a row that crashes is
recorded as an error with the message, and the other rows still run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks.common import PROFILES, STATUS_ERROR, STATUS_SKIPPED, RowResult, RowSkipped, repo_root
from benchmarks.machine import machine_info, machine_slug
from benchmarks.report import render, update_doc
from benchmarks.workspace import Workspace
from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.utils.io import atomic_write_json, load_json

# row name -> module under benchmarks.rows (each has ROW, TITLE, run(ws, profile) -> RowResult)
ROWS = {
    "preprocess": "benchmarks.rows.preprocess",
    "sliding_window": "benchmarks.rows.sliding_window",
    "train_step": "benchmarks.rows.train_step",
    "data_pipeline": "benchmarks.rows.data_pipeline",
    "train_iterations": "benchmarks.rows.train_iterations",
    "memory": "benchmarks.rows.memory",
    "search_cost": "benchmarks.rows.search_cost",
    "search_quality": "benchmarks.rows.search_quality",
    "end_to_end": "benchmarks.rows.end_to_end",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run",
                                description="Side-by-side benchmarks of c2fnas-auto vs nnU-Net v2 and MONAI")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--quick", action="store_const", const="quick", dest="profile",
                   help="small sizes, 3-5 repetitions: under 15 minutes on 2 CPU cores")
    g.add_argument("--full", action="store_const", const="full", dest="profile",
                   help="the issue's sizes (20 cases of 64x96x96, 1x1x128x160x160 volume), 5-7 repetitions")
    g.add_argument("--tiny", action="store_const", const="tiny", dest="profile",
                   help="toy sizes for the smoke test only: the numbers mean nothing")
    p.add_argument("--only", nargs="+", choices=sorted(ROWS), metavar="ROW",
                   help=f"run only these rows ({', '.join(ROWS)})")
    p.add_argument("--out", type=Path, default=repo_root() / "benchmarks" / "results",
                   help="folder for the results JSON (default benchmarks/results/)")
    p.add_argument("--doc", type=Path, default=repo_root() / "documentation" / "benchmarks.md",
                   help="markdown page whose generated table is replaced (default documentation/benchmarks.md)")
    p.add_argument("--no-doc", action="store_true", help="do not touch the markdown page")
    p.add_argument("--workdir", type=Path, default=None,
                   help="scratch folder for tasks and preprocessed data (default: a temporary folder, removed)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for in-process rows")
    return p


def run_row(name: str, ws: Workspace) -> RowResult:
    t0 = time.perf_counter()
    module = importlib.import_module(ROWS[name])
    try:
        result = module.run(ws, ws.profile)
    except RowSkipped as exc:
        result = RowResult(row=name, title=module.TITLE, status=STATUS_SKIPPED, note=str(exc))
    except Exception as exc:  # a broken row must not take the others down; the message is recorded
        traceback.print_exc()
        msg = str(exc).strip().splitlines()
        result = RowResult(row=name, title=module.TITLE, status=STATUS_ERROR,
                           note=f"{type(exc).__name__}: {msg[-1] if msg else ''}"[:400])
    result.seconds = round(time.perf_counter() - t0, 2)
    return result


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def merge_rows(out: Path, rows: list[dict], profile: str) -> list[dict]:
    """With --only, keep the other rows of the same day's results file (same machine and
    profile), so one row can be re-measured without redoing the rest; rows keep the
    order of ROWS and each carries the command and date that produced it."""
    if not out.is_file():
        return rows
    try:
        old = load_json(out, "benchmark results")
    except C2FNASError:
        return rows
    if old.get("profile") != profile:
        return rows
    by_name = {r["row"]: r for r in old.get("rows", [])}
    by_name.update({r["row"]: r for r in rows})
    return [by_name[n] for n in ROWS if n in by_name]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    profile = PROFILES[args.profile]
    names = [n for n in ROWS if not args.only or n in args.only]
    info = machine_info()
    now = dt.datetime.now(dt.timezone.utc)
    command = "python -m benchmarks.run " + " ".join(shlex.quote(a)
                                                     for a in (argv if argv is not None else sys.argv[1:]))
    t_start = time.perf_counter()
    load_start = _loadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="c2fnas-bench-") as tmp:
        ws = Workspace(root=(args.workdir or Path(tmp)).resolve(), profile=profile)
        ws.root.mkdir(parents=True, exist_ok=True)
        for name in names:
            print(f"=== {name}", flush=True)
            result = run_row(name, ws)
            print(f"    {result.status} in {result.seconds:.0f} s: {result.summary.ours} | {result.summary.peer} | "
                  f"ratio {result.summary.ratio} | {result.note}", flush=True)
            rows.append(result.to_dict())
    for r in rows:
        r["command"] = command.strip()
        r["date"] = now.strftime("%Y-%m-%d %H:%M UTC")
    out = args.out / f"{now.strftime('%Y-%m-%d')}-{machine_slug(info)}-{profile.name}.json"
    rows = merge_rows(out, rows, profile.name) if args.only else rows
    results = {
        "schema_version": 1,
        "command": command.strip(),
        "profile": profile.name,
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": info,
        "total_seconds": round(time.perf_counter() - t_start, 1),
        # other jobs on a shared machine: 1/5/15-minute load averages when the run started and ended
        "load_average": {"start": load_start, "end": _loadavg()},
        "rows": rows,
    }
    atomic_write_json(out, results)
    print(f"results: {out}")
    if not args.no_doc:
        update_doc(args.doc, render(results, out.name), profile.name)
        print(f"table: {args.doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Markdown from a results file, written between markers in documentation/benchmarks.md.

Only the generated section is replaced, so the hand-written parts of the page (how to
reproduce each row, what the numbers mean) survive every run.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from c2fnas_auto.utils.io import atomic_write_text, load_json

def markers(profile: str) -> tuple[str, str]:
    """One generated section per profile, so a --full run does not replace the --quick table."""
    return (f"<!-- BEGIN GENERATED {profile}: python -m benchmarks.run --{profile} -->",
            f"<!-- END GENERATED {profile} -->")

REPRODUCE = {
    "preprocess": "python -m benchmarks.run --quick --only preprocess",
    "sliding_window": "python -m benchmarks.run --quick --only sliding_window",
    "train_step": "python -m benchmarks.run --quick --only train_step",
    "data_pipeline": "python -m benchmarks.run --quick --only data_pipeline",
    "memory": "python -m benchmarks.run --quick --only memory",
    "search_cost": "python -m benchmarks.run --quick --only search_cost",
    "search_quality": "python -m benchmarks.run --quick --only search_quality",
    "end_to_end": "python -m benchmarks.run --quick --only end_to_end",
}


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _met(v: bool | None) -> str:
    return "n/a" if v is None else ("yes" if v else "no")


def _load_text(load: dict | None) -> str:
    if not load or not load.get("start") or not load.get("end"):
        return ""
    return (f" Load average (1 min) {load['start'][0]:.1f} at the start, {load['end'][0]:.1f} at the end "
            f"(other jobs on the machine add noise; ratios of alternated runs are the figures to read).")


def render(results: dict[str, Any], results_name: str = "") -> str:
    m = results["machine"]
    gpu = m.get("gpu")
    lines = [
        f"Run `{results['command']}` on {results['date']} ({results['profile']} profile, "
        f"{results['total_seconds']:.0f} s in all). Results file: `{results_name}`."
        + (" Some rows come from earlier `--only` runs that day; each row's command and date are in the file."
           if len({r.get("command") for r in results["rows"]}) > 1 else ""),
        "",
        f"Machine: {m['cpu_model']}, {m['cpu_cores']} cores, {m.get('memory_gb')} GB RAM, torch {m['torch']} "
        f"({m['torch_threads']} threads), "
        + (f"GPU {gpu['name']} ({gpu['memory_gb']} GB)." if gpu else "**no GPU** (GPU figures not measured)."),
        f"Peers: nnunetv2 {m['versions'].get('nnunetv2') or 'not installed'}, "
        f"monai {m['versions'].get('monai') or 'not installed'}; c2fnas-auto commit {m.get('git_commit')}."
        + _load_text(results.get("load_average")),
        "",
        "| Row | Ours | Peer / reference | Ratio (ours/peer) | Goal | Met | Notes |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["rows"]:
        s = r["summary"]
        if r["status"] != "ok":
            lines.append(f"| {_cell(r['title'])} | {r['status']} | | | {_cell(s.get('goal', ''))} | n/a | "
                         f"{_cell(r['note'])} |")
            continue
        rt = "" if s.get("ratio") is None else f"{s['ratio']:.2f}"
        lines.append(f"| {_cell(r['title'])} | {_cell(s['ours'])} | {_cell(s['peer'])} | {rt} | "
                     f"{_cell(s['goal'])} | {_met(s.get('met'))} | {_cell(r['note'])} |")
    return "\n".join(lines) + "\n"


def update_doc(doc: Path, section: str, profile: str) -> None:
    """Replace the profile's generated section of `doc` (or append one) atomically."""
    begin, end = markers(profile)
    text = doc.read_text(encoding="utf-8") if doc.is_file() else "# Benchmarks\n\n"
    block = f"{begin}\n{section}{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    atomic_write_text(doc, text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report",
                                description="Regenerate the table in documentation/benchmarks.md from a results file")
    p.add_argument("results", type=Path)
    p.add_argument("--doc", type=Path, default=Path(__file__).resolve().parents[1] / "documentation" / "benchmarks.md")
    args = p.parse_args(argv)
    results = load_json(args.results, "benchmark results")
    update_doc(args.doc, render(results, args.results.name), results["profile"])
    print(f"updated {args.doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

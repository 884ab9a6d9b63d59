"""Where a task's genotype comes from when planning: never silently the reference.

A searched genotype is worth GPU-days. Replanning (and `--genotype-from TASK`) looks,
in this order, at: the task's plans.json (its "genotype", even when the rest of the
file no longer loads, e.g. after a schema change); the search's winner file
`C2FNAS_results/<task>/search/genotype.json`; the pre-results location of older
searches, `C2FNAS_preprocessed/<task>/search/` (`genotype.json`, else the winner in
`report.json`). A plans.json that exists but yields no genotype stops planning with a
one-line message saying how to keep the genotype, instead of overwriting it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from c2fnas_auto.errors import C2FNASError, PlansError
from c2fnas_auto.nas.genotype import Genotype
from c2fnas_auto.paths import PLANS_FILE, SEARCH_GENOTYPE_FILE, preprocessed_dir, search_results_dir

OLD_SEARCH_SUBDIR = "search"  # under the preprocessed task, where earlier 0.1.0 development versions
# searched (with OLD_REPORT_FILE): removed in 0.3
OLD_REPORT_FILE = "report.json"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoundGenotype:
    genotype: object  # nas.genotype.Genotype
    source: Path


def search_winner_files(task_name: str) -> list[Path]:
    """Where a search of `task_name` leaves its winner, newest location first."""
    old = preprocessed_dir(task_name) / OLD_SEARCH_SUBDIR
    return [search_results_dir(task_name) / SEARCH_GENOTYPE_FILE, old / SEARCH_GENOTYPE_FILE,
            old / OLD_REPORT_FILE]


def _load(path: Path):
    return Genotype.load(path)


def find_search_winner(task_name: str) -> FoundGenotype | None:
    """The searched genotype from the first winner file that holds a valid one, else None.

    An unreadable winner file is an error (it names the file): skipping it could fall
    back to an older search or the reference without anyone noticing."""
    for path in search_winner_files(task_name):
        if path.is_file():
            try:
                return FoundGenotype(_load(path), path)
            except C2FNASError as exc:
                raise PlansError(f"{exc} (the search's winner; pass --genotype FILE to choose one yourself)") from None
    return None


def previous_genotype(task_name: str, plans_path: Path | None = None) -> FoundGenotype | None:
    """The genotype replanning keeps: from plans.json, else a search's winner file; None for a
    task never planned nor searched (then the reference genotype is used).

    A plans.json without a readable genotype and no winner file raises PlansError saying how
    to keep it, rather than replanning with the reference over a possibly searched genotype."""
    plans_path = plans_path or preprocessed_dir(task_name) / PLANS_FILE
    if not plans_path.is_file():
        found = find_search_winner(task_name)
        if found is not None:
            log.warning("%s is missing: planning with the searched genotype from %s", plans_path, found.source)
        return found
    try:
        return FoundGenotype(_load(plans_path), plans_path)
    except C2FNASError as exc:
        reason = str(exc)
    found = find_search_winner(task_name)
    if found is not None:
        log.warning("%s: no genotype readable (%s); planning with the searched genotype from %s",
                    plans_path, reason, found.source)
        return found
    raise PlansError(f"{reason}; it may hold a searched genotype: to keep it pass --genotype FILE (a genotype "
                     f"or plans file, e.g. {search_results_dir(task_name) / SEARCH_GENOTYPE_FILE}); to plan with "
                     f"the reference genotype delete {plans_path}")


def genotype_of_task(task_name: str) -> FoundGenotype:
    """`--genotype-from TASK`: that task's genotype, by the same precedence as replanning."""
    plans_path = preprocessed_dir(task_name) / PLANS_FILE
    found = previous_genotype(task_name, plans_path)
    if found is None:
        looked = ", ".join(str(p) for p in [plans_path, *search_winner_files(task_name)])
        raise PlansError(f"task {task_name}: no genotype found (looked in {looked}); plan or search that task first")
    return found

"""Do the preprocessed arrays belong to these plans? Checked wherever arrays are used.

`c2fnas_plan_and_preprocess --no-preprocess`, a hand-edited plans file or a replaced label
can leave plans.json describing other arrays than `data/` holds; training or a resumed
search would then run on the old arrays silently while recording the new plans. Every
preprocessing run records next to the arrays the settings they were made with
(`data/preprocessing_settings.json`: spacing, transpose, normalisation, resampling,
channels, labels) and, per case, its source files' size and mtime and those settings'
identity. The trainer and the search compare that record with the plans they are given
and with the raw files as they are now (or, on a machine without them, as fingerprint.json
recorded them), and refuse a difference with one line naming the setting and the command that redoes the arrays.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from c2fnas_auto.data.dataset import load_dataset
from c2fnas_auto.data.sources import case_sources
from c2fnas_auto.errors import C2FNASError, InputError
from c2fnas_auto.paths import resolve_task
from c2fnas_auto.preprocessing.preprocessor import SETTINGS_FILE, relevant_settings, settings_identity
from c2fnas_auto.preprocessing.storage import case_paths, data_dir, list_cases, read_properties
from c2fnas_auto.utils.io import load_json

FINGERPRINT_FILE = "fingerprint.json"  # planning writes it next to plans.json


def _redo(task_name: str) -> str:
    return f"redo the arrays with c2fnas_plan_and_preprocess -t {task_name}"


def settings_difference(recorded: Any, plans) -> str | None:
    """The first setting whose recorded value differs from the plans', as 'name old -> new'."""
    wanted = relevant_settings(plans)
    if not isinstance(recorded, dict):
        return "no recorded settings"
    wanted = json.loads(json.dumps(wanted))  # the recorded copy's JSON types
    for key, value in wanted.items():
        if recorded.get(key) != value:
            return f"{key} {_short(recorded.get(key))} -> {_short(value)}"
    return None


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fingerprint_sources(preprocessed_dir: Path) -> dict[str, Any] | None:
    """{case id: sources} the plans were made from, None without a fingerprint that records them."""
    path = preprocessed_dir / FINGERPRINT_FILE
    if not path.is_file():
        return None
    fp = load_json(path, "fingerprint")
    cases = fp.get("cases") if isinstance(fp, dict) else None
    if not isinstance(cases, list):
        return None
    return {c.get("case_id"): c.get("sources") for c in cases if isinstance(c, dict) and "sources" in c}


def raw_sources(task_name: str) -> dict[str, Any] | None:
    """{case id: sources} of the raw task's training cases as they are now; None when this
    machine holds no raw folder for the task (training from preprocessed data only)."""
    try:
        dataset = load_dataset(resolve_task(task_name))
    except C2FNASError:
        return None
    return {c.case_id: case_sources(c, dataset.folder) for c in dataset.training}


def check_arrays_match_plans(preprocessed_dir: str | Path, plans, task_name: str,
                             case_ids: Sequence[str]) -> None:
    """InputError (one line: the setting or case, and the command that redoes the arrays)
    unless the arrays of `case_ids` were made under `plans`' settings from the raw files as
    they are now (or, without a raw folder here, as the plans' fingerprint recorded them)."""
    preprocessed_dir = Path(preprocessed_dir)
    folder = data_dir(preprocessed_dir)
    settings_path = folder / SETTINGS_FILE
    if not settings_path.is_file():
        raise InputError(f"{settings_path}: missing: the preprocessed data records no settings (made by an older "
                         f"version or copied without it); {_redo(task_name)}")
    diff = settings_difference(load_json(settings_path, "preprocessing settings"), plans)
    if diff is not None:
        raise InputError(f"{settings_path}: the preprocessed arrays were made with other settings than the plans "
                         f"give ({diff}); {_redo(task_name)}")
    identity = settings_identity(relevant_settings(plans))
    sources = raw_sources(task_name)
    if sources is None:  # no raw folder on this machine: the sources the plans were made from
        sources = _fingerprint_sources(preprocessed_dir)
    for cid in case_ids:
        props_path = case_paths(folder, cid)[2]
        props = read_properties(props_path) or {}
        if props.get("settings_identity") != identity:
            raise InputError(f"{props_path}: case {cid} was preprocessed under other plans settings than the "
                             f"plans give; {_redo(task_name)}")
        if sources is not None and cid in sources and props.get("sources") != sources[cid]:
            changed = sorted(k for k in set(sources[cid] or {}) | set(props.get("sources") or {})
                             if (sources[cid] or {}).get(k) != (props.get("sources") or {}).get(k))
            raise InputError(f"{props_path}: case {cid} was preprocessed from other source files than there "
                             f"are now ({', '.join(changed[:2]) or 'its file list'} changed); {_redo(task_name)}")


def stale_arrays(preprocessed_dir: str | Path, plans, task_name: str, case_ids: Sequence[str]) -> str | None:
    """The one-line reason the arrays of `case_ids` do not belong to `plans`, None when they do."""
    try:
        check_arrays_match_plans(preprocessed_dir, plans, task_name, case_ids)
    except InputError as exc:
        return str(exc)
    return None


def replan_disagreement(preprocessed_dir: str | Path, plans, current_sources: dict[str, Any]) -> str | None:
    """Why new `plans` (made from the raw files as `current_sources` records them) would not
    describe the finished arrays already in `preprocessed_dir`; None when they would, or
    when there are none (`--no-preprocess` must not leave plans and arrays disagreeing)."""
    folder = data_dir(preprocessed_dir)
    finished = list_cases(folder)
    if not finished:
        return None
    settings_path = folder / SETTINGS_FILE
    recorded = load_json(settings_path, "preprocessing settings") if settings_path.is_file() else None
    diff = settings_difference(recorded, plans)
    if diff is not None:
        return f"the new plans change {diff}"
    for cid in finished:
        props = read_properties(case_paths(folder, cid)[2]) or {}
        if cid in current_sources and props.get("sources") != current_sources[cid]:
            return f"the source files of case {cid} changed since its arrays were made"
    return None

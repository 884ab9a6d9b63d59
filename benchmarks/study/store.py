"""The study's results file: one JSON, rewritten atomically after every finished training,
so a kill loses at most the training in progress and a rerun skips what is stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from c2fnas_auto.errors import InputError
from c2fnas_auto.utils.io import atomic_write_json, load_json

SCHEMA = 1


def job_key(task: str, arm: str, genotype_id: str, cell_style: str, seed: int) -> str:
    """Names one training; the genotype id is part of it, so a search that found another
    winner (a rerun in a fresh work folder) cannot pass off old scores as its own."""
    return f"{task}|{arm}|{genotype_id}|{cell_style}|{seed}"


class ResultStore:
    def __init__(self, path: Path, profile: str) -> None:
        self.path = Path(path)
        if self.path.is_file():
            data = load_json(self.path, "search study results")
            if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("records"), list):
                raise InputError(f"{self.path}: not a search study results file (schema {SCHEMA})")
            if data.get("profile") != profile:
                raise InputError(f"{self.path}: holds profile {data.get('profile')!r}, not {profile!r}; "
                                 "use another --out")
            self.data = data
        else:
            self.data = {"schema": SCHEMA, "profile": profile, "meta": {}, "records": []}

    @property
    def records(self) -> list[dict[str, Any]]:
        return self.data["records"]

    def done(self) -> dict[str, dict[str, Any]]:
        return {r["key"]: r for r in self.records}

    def find_same_training(self, task: str, genotype_id: str, cell_style: str, seed: int) -> dict[str, Any] | None:
        """A stored training of the same network, task and seed under another arm name."""
        for r in self.records:
            if (r["task"], r["genotype_id"], r["cell_style"], r["seed"]) == (task, genotype_id, cell_style, seed):
                return r
        return None

    def set_meta(self, **values: Any) -> None:
        self.data["meta"].update(values)
        self.save()

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, self.data)

"""JSON from others nested too deep to parse, or too large: plans, a genotype file, a search
state. `json.loads` raises RecursionError on `[[[[...` (a traceback before); every reader now
goes through the one bounded loader and ends in one line naming the file."""

from __future__ import annotations

import pytest

from c2fnas_auto.errors import InputError
from c2fnas_auto.paths import search_results_dir
from c2fnas_auto.utils.bounded_json import MAX_JSON_DEPTH, json_depth, parse_json
from c2fnas_auto.utils.io import load_json
from c2fnas_auto.utils.testing import call_cli, cli_env, diff_snapshots, snapshot

from .helpers import assert_user_error

DEEP = "[" * 100_000 + "]" * 100_000  # RecursionError in json.loads
NESTED = '{"a": ' * (MAX_JSON_DEPTH + 1) + "1" + "}" * (MAX_JSON_DEPTH + 1)  # parses, too deep to walk safely


def test_deep_plans_file_is_one_line_for_train(copy_task):
    plans = copy_task.preprocessed_dir / "plans.json"
    plans.write_text('{"plans": ' + DEEP + "}")
    res = call_cli("train", ["98", 0, "--device", "cpu"], cli_env(copy_task.root))
    assert_user_error(res, ["plans.json"], r"nests deeper than Python can parse")


def test_deep_genotype_file_is_one_line_and_nothing_is_written(copy_task, tmp_path):
    genotype = tmp_path / "genotype.json"
    genotype.write_text(NESTED)
    before = snapshot(copy_task.preprocessed_dir)
    res = call_cli("plan_and_preprocess", ["-t", 98, "--genotype", genotype, "--no-progress"],
                   cli_env(copy_task.root))
    assert_user_error(res, ["genotype.json"], rf"nests {MAX_JSON_DEPTH + 1} levels deep")
    assert diff_snapshots(before, snapshot(copy_task.preprocessed_dir)) == []


def test_deep_search_state_is_one_line_for_search_continue(copy_task):
    folder = search_results_dir(copy_task.task_name)
    folder.mkdir(parents=True)
    (folder / "state.json").write_text(DEEP)
    res = call_cli("search", ["-t", 98, "--continue", "--device", "cpu", "--no-progress"], cli_env(copy_task.root))
    assert_user_error(res, ["state.json"], r"nests deeper than Python can parse")


def test_size_bound_is_checked_before_reading(tmp_path):
    path = tmp_path / "big.json"
    path.write_text("[" + "0," * 1000 + "0]")
    assert len(load_json(path)) == 1001
    with pytest.raises(InputError, match=r"big.json: JSON file is \d+ bytes, over the limit of 100"):
        load_json(path, max_bytes=100)
    with pytest.raises(InputError, match=r"over the limit of 10"):
        parse_json(b"[1, 2, 3, 4, 5]", "raw", max_bytes=10)


def test_unreadable_file_and_bad_bytes_are_one_line(tmp_path, monkeypatch):
    folder = tmp_path / "dir.json"
    folder.mkdir()
    with pytest.raises(InputError, match="not found"):
        load_json(folder)
    with pytest.raises(InputError, match="not valid JSON"):
        parse_json(b"\xff\xfe{", "raw")
    locked = tmp_path / "locked.json"
    locked.write_text("{}")

    def io_error(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(type(locked), "read_bytes", io_error)
    with pytest.raises(InputError, match="locked.json: cannot read JSON file .Permission denied"):
        load_json(locked)


def test_depth_counts_containers_without_recursion():
    assert json_depth(1) == 0 and json_depth([]) == 1 and json_depth({"a": [{"b": 1}]}) == 3
    value: list = []
    for _ in range(50_000):
        value = [value]
    assert json_depth(value) == 50_001

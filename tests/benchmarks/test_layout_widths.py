"""benchmarks.layout_widths runs both layouts and precisions and writes what it measured."""

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.layout_widths import main  # noqa: E402


def test_layout_widths_writes_every_variant(tmp_path):
    out = tmp_path / "widths.json"
    before = torch.get_num_threads()
    try:
        assert main(["--widths", "2", "--patch", "16", "16", "16", "--threads", "1", "--reps", "1",
                     "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(before)
    got = json.loads(out.read_text())["widths"]["2"]
    assert set(got["seconds"]) == {"fp32_ncdhw", "fp32_ndhwc", "bf16_ncdhw", "bf16_ndhwc"}
    assert all(len(v) == 1 and v[0] > 0 for v in got["seconds"].values())
    assert set(got["ndhwc_over_ncdhw"]) == {"fp32", "bf16"}

import json
from pathlib import Path

from c2fnas_auto.cli.genotype import main
from c2fnas_auto.nas.genotype import reference_genotype

REPO = Path(__file__).resolve().parents[2]


def test_cli_prints_costs_and_writes_png(tmp_path, capsys):
    out = tmp_path / "g.png"
    rc = main([str(REPO / "plans" / "c2fnas_panc_genotype.json"), "--patch-size", "32", "64", "64",
               "--in-channels", "2", "--classes", "3", "--batch-size", "1", "--png", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "1-1-2-2-3-4-3-3-2-1-1-1" in text and "parameters" in text and "GFLOPs" in text
    assert "c2fnas cells" in text  # no plans: the paper's wiring
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_reads_settings_from_plans(tmp_path, capsys):
    plans = {"genotype": reference_genotype().to_dict(), "patch_size": [16, 32, 32], "batch_size": 3,
             "network": {"in_channels": 4, "num_classes": 5, "stem_channels": 8, "level_channels": [8, 16, 16, 32],
                         "strides": [[1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]], "through_plane_axis": 0,
                         "deep_supervision": False}}
    (tmp_path / "plans.json").write_text(json.dumps(plans))
    assert main([str(tmp_path / "plans.json")]) == 0
    text = capsys.readouterr().out
    assert "in 4, classes 5, stem 8" in text and "patch 16x32x32" in text and "batch 3" in text
    assert "residual cells" in text  # a plans network without cell_style predates it: residual
    plans["network"]["cell_style"] = "c2fnas"
    (tmp_path / "plans.json").write_text(json.dumps(plans))
    assert main([str(tmp_path / "plans.json")]) == 0
    assert "c2fnas cells" in capsys.readouterr().out


def test_cli_bad_genotype_is_one_line_exit_2(tmp_path, capsys):
    bad = reference_genotype().to_dict()
    bad["ops"][3] = "4d"
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert main([str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "bad.json" in err and "unknown op '4d'" in err
    assert main([str(tmp_path / "missing.json")]) == 2
    assert "not found" in capsys.readouterr().err

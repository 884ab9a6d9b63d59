"""c2fnas_plan_and_preprocess: summary output, several tasks, genotype options, user errors."""

from __future__ import annotations

import numpy as np

from c2fnas_auto.cli.plan_and_preprocess import main
from c2fnas_auto.nas.genotype import Genotype
from c2fnas_auto.planning.plans import Plans

FAST = ["--gpu-memory-gb", "0.25", "--base-channels", "4", "--no-progress"]


def test_cli_plans_two_tasks_and_genotype_from(copy_task, capsys):
    from c2fnas_auto.data.synthetic import make_synthetic_task

    make_synthetic_task(copy_task.root / "raw", task_id=97, name="Other", num_train=2, num_test=0,
                        shape=(10, 20, 20), spacing=(1.0, 1.0, 1.0), seed=5)
    other = Genotype(levels=[1, 2, 2, 3, 3, 2, 2, 1, 1, 1, 1, 1], ops=["3d"] * 12)
    plans98 = Plans.load(copy_task.preprocessed_dir / "plans.json")
    plans98.genotype = other
    plans98.save(copy_task.preprocessed_dir / "plans.json")  # as a search would

    assert main(["-t", "98", "97", "--genotype-from", "98", "--no-preprocess", *FAST]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 and out[0].startswith("Task98_Synthetic:") and out[1].startswith("Task97_Other")
    assert "patch" in out[1] and "batch" in out[1] and "1-2-2-3-3-2-2-1-1-1-1-1" in out[1]
    p97 = Plans.load(copy_task.root / "preprocessed" / "Task97_Other" / "plans.json")
    assert p97.genotype.levels == other.levels
    assert not (copy_task.root / "preprocessed" / "Task97_Other" / "data").exists()
    # a plain rerun keeps the genotype a search wrote
    assert main(["-t", "98", *FAST]) == 0
    assert Plans.load(copy_task.preprocessed_dir / "plans.json").genotype.levels == other.levels


def test_cli_genotype_file(copy_task, tmp_path, capsys):
    g = Genotype(levels=[2, 3, 4, 3, 2, 1, 1, 1, 1, 1, 1, 1], ops=["p3d"] * 12)
    g.save(tmp_path / "g.json")
    assert main(["-t", "98", "--genotype", str(tmp_path / "g.json"), *FAST]) == 0
    assert Plans.load(copy_task.preprocessed_dir / "plans.json").genotype.ops == ["p3d"] * 12
    assert "cases 8" in capsys.readouterr().out


def test_cli_user_errors_are_one_line(copy_task, capsys):
    assert main(["-t", "55", *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "55" in err
    assert main(["-t", "98", "--genotype", "/nonexistent/g.json", *FAST]) == 2
    assert "g.json" in capsys.readouterr().err
    assert main(["-t", "98", "--gpu-memory-gb", "0.0001", "--no-preprocess", "--no-progress"]) == 2
    assert "too small" in capsys.readouterr().err
    assert main(["-t", "98", "-np", "0"]) == 2


def test_cli_verify_only(copy_task, capsys):
    before = sorted(p.name for p in copy_task.preprocessed_dir.rglob("*"))
    assert main(["-t", "98", "--verify-only", "--no-progress"]) == 0
    assert "8 training" in capsys.readouterr().out
    assert sorted(p.name for p in copy_task.preprocessed_dir.rglob("*")) == before


def test_cli_cell_style(copy_task):
    assert main(["-t", "98", "--cell-style", "residual", "--no-preprocess", *FAST]) == 0
    assert Plans.load(copy_task.preprocessed_dir / "plans.json").network.cell_style == "residual"
    assert main(["-t", "98", "--no-preprocess", *FAST]) == 0
    assert Plans.load(copy_task.preprocessed_dir / "plans.json").network.cell_style == "c2fnas"


def test_cli_narrows_the_default_width_at_a_small_target_and_warns_about_a_forced_wide_one(tmp_path, monkeypatch,
                                                                                            capsys):
    from c2fnas_auto.data.synthetic import make_synthetic_task

    monkeypatch.setenv("C2FNAS_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("C2FNAS_preprocessed", str(tmp_path / "preprocessed"))
    monkeypatch.setenv("C2FNAS_results", str(tmp_path / "results"))  # not left to an earlier test's roots
    make_synthetic_task(tmp_path / "raw", task_id=96, name="Wide", num_train=2, num_test=0,
                        shape=(48, 96, 96), spacing=(1.0, 1.0, 1.0), seed=5)
    # the default width at 0.25 GB: 32 would leave its weights, gradients and momentum 0.20 GB, so it is halved
    assert main(["-t", "96", "--gpu-memory-gb", "0.25", "--no-preprocess", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    auto = Plans.load(tmp_path / "preprocessed" / "Task96_Wide" / "plans.json")
    assert auto.base_channels < 32 and f"base width {auto.base_channels}" in out and "warning" not in err
    # asked for by name, the wide network is planned as asked, with the warning
    assert main(["-t", "96", "--gpu-memory-gb", "0.25", "--base-channels", "32", "--no-preprocess",
                 "--no-progress"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("c2fnas_plan_and_preprocess: warning: Task96_Wide: the network's")
    assert "--base-channels" in err[0]
    wide = Plans.load(tmp_path / "preprocessed" / "Task96_Wide" / "plans.json")
    assert wide.base_channels == 32 and np.prod(wide.patch_size) < np.prod(auto.patch_size)

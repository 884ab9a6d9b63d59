"""The MONAI bundle export: monai.bundle loads it and segments a case like c2fnas_predict does."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from c2fnas_auto.cli.export_model import main as export_main
from c2fnas_auto.deployment.errors import DeploymentError
from c2fnas_auto.deployment.monai_bundle import normalization_transform, to_monai_order

monai_bundle = pytest.importorskip("monai.bundle", reason="monai is not installed (pip install 'c2fnas-auto[monai]')")
pytest.importorskip("ignite", reason="the bundle's evaluator needs pytorch-ignite ([monai] extra)")


def test_bundle_loads_and_predicts_a_case(trained, tmp_path, capsys):
    from c2fnas_auto.cli.predict import main as predict_main

    bundle = tmp_path / "bundle"
    assert export_main(["-t", "98", "--format", "monai-bundle", "-o", str(bundle), "-f", "0"]) == 0
    for rel in ("configs/metadata.json", "configs/inference.json", "configs/logging.conf", "models/model.ts",
                "docs/README.md"):
        assert (bundle / rel).is_file(), rel
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    plans = trained.plans
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {
        str(v): k for k, v in plans.labels.items()}
    assert meta["c2fnas"]["target_spacing_xyz"] == to_monai_order(plans.target_spacing, plans.transpose_forward)
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == plans.num_channels

    case = sorted((trained.raw_dir / "imagesTs").glob("*.nii.gz"))[0]
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(case, data / case.name)
    monai_bundle.run(config_file=str(bundle / "configs" / "inference.json"),
                     meta_file=str(bundle / "configs" / "metadata.json"), bundle_root=str(bundle),
                     dataset_dir=str(data), output_dir=str(tmp_path / "monai_out"))
    case_id = case.name[:-len(".nii.gz")]
    monai_seg = sitk.ReadImage(str(tmp_path / "monai_out" / f"{case_id}_seg.nii.gz"))
    image = sitk.ReadImage(str(case))
    assert monai_seg.GetSize() == image.GetSize()
    assert np.allclose(monai_seg.GetSpacing(), image.GetSpacing())
    assert np.allclose(monai_seg.GetOrigin(), image.GetOrigin())

    # the same fold through our own predictor (no mirroring, no postprocessing: what the bundle does)
    assert predict_main(["-i", str(data), "-o", str(tmp_path / "ours"), "-t", "98", "-f", "0", "--disable-tta",
                         "--no-postprocessing"]) == 0
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ours" / case.name)))
    theirs = sitk.GetArrayFromImage(monai_seg)
    assert set(np.unique(theirs)) <= set(plans.labels.values())
    agreement = float((ours == theirs).mean())
    assert agreement >= 0.9, f"MONAI bundle and c2fnas_predict agree on only {agreement:.1%} of voxels"


def test_bundle_refuses_existing_folder_and_unsupported_normalization(trained, tmp_path, capsys):
    (tmp_path / "b").mkdir()
    assert export_main(["-t", "98", "--format", "monai-bundle", "-o", str(tmp_path / "b")]) == 2
    assert "already exists" in capsys.readouterr().err
    plans = trained.plans.copy()
    plans.normalization = [{"scheme": "CT", "mean": 0, "std": 1, "lower": 0, "upper": 1}, {"scheme": "zscore"}]
    with pytest.raises(DeploymentError, match="supports one CT channel"):
        normalization_transform(plans)
    plans.normalization = [{"scheme": "zscore", "use_nonzero_mask": True}]
    assert normalization_transform(plans)["nonzero"] is True

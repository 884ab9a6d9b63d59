"""Largest-component postprocessing: the operation and the per-class decision."""

from __future__ import annotations

import json

import numpy as np
import pytest

from c2fnas_auto.data.image_io import Geometry, write_segmentation
from c2fnas_auto.errors import InputError
from c2fnas_auto.inference.postprocessing import (apply_postprocessing, determine_postprocessing,
                                                  find_postprocessing, keep_largest_component)

GEO = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def test_keep_largest_component_per_label():
    seg = np.zeros((10, 10, 10), dtype=np.uint8)
    seg[1:5, 1:5, 1:5] = 1
    seg[8, 8, 8] = 1  # island of label 1
    seg[7:9, 1:3, 1:3] = 2
    seg[1, 8, 1] = 2  # island of label 2
    out = keep_largest_component(seg, 1)
    assert out[8, 8, 8] == 0 and out[1:5, 1:5, 1:5].min() == 1 and out[1, 8, 1] == 2
    assert seg[8, 8, 8] == 1  # input untouched
    both = apply_postprocessing(seg, {"largest_component_labels": [1, 2]})
    assert both[1, 8, 1] == 0 and both[8, 8, 8] == 0
    assert apply_postprocessing(seg, None) is seg


def _results(tmp_path):
    """Fold validation predictions: label 1 (organ) has spurious islands, label 2 (tumour)
    has a real second lesion that the largest-component rule would remove."""
    ref_dir = tmp_path / "labelsTr"
    res = tmp_path / "results"
    for fold, case in ((0, "c0"), (1, "c1")):
        ref = np.zeros((12, 16, 16), dtype=np.uint8)
        ref[2:8, 2:10, 2:10] = 1
        ref[9:11, 12:14, 12:14] = 2
        ref[9:11, 2:4, 12:14] = 2
        pred = ref.copy()
        pred[10, 14, 2] = 1  # false-positive island
        write_segmentation(ref, GEO, ref_dir / f"{case}.nii.gz")
        write_segmentation(pred, GEO, res / f"fold_{fold}" / "validation" / f"{case}.nii.gz")
    return res, ref_dir


def test_determine_postprocessing(tmp_path):
    res, ref_dir = _results(tmp_path)
    labels = {"background": 0, "organ": 1, "tumour": 2}
    d = determine_postprocessing(res, ref_dir, labels, progress=False)
    assert d["largest_component_labels"] == [1]
    assert d["dice_after"]["1"] > d["dice_before"]["1"]
    assert d["dice_after"]["2"] < d["dice_before"]["2"]
    assert d["folds"] == ["fold_0", "fold_1"] and d["num_cases"] == 2
    assert json.loads((res / "postprocessing.json").read_text())["largest_component_labels"] == [1]
    assert find_postprocessing(res, ["0", "1"]) == res / "postprocessing.json"
    one = determine_postprocessing(res, ref_dir, labels, folds=[1], out_file=res / "fold_1" / "postprocessing.json",
                                   progress=False)
    assert one["num_cases"] == 1
    with pytest.raises(InputError, match="fold_3"):
        determine_postprocessing(res, ref_dir, labels, folds=[3], progress=False)


def test_cli_determine_postprocessing(tmp_path, capsys):
    from c2fnas_auto.cli.evaluate import main

    res, ref_dir = _results(tmp_path)
    assert main(["--determine-postprocessing", str(res), "-ref", str(ref_dir), "--labels", "1", "2"]) == 0
    assert "keep largest" in capsys.readouterr().out
    assert (res / "postprocessing.json").is_file()


def _lesion_results(tmp_path, fp_speck: bool, cut_lesion: bool):
    """Two validation cases with several lesions each (so keep-largest is refused) plus a
    lesion-free case; `fp_speck` puts a 1-voxel false lesion in the lesion-free case,
    `cut_lesion` predicts only 3 voxels of a real 8-voxel lesion."""
    ref_dir, res = tmp_path / "labelsTr", tmp_path / "results"
    for case in ("c0", "c1", "c2"):
        ref = np.zeros((12, 16, 16), dtype=np.uint8)
        ref[2:8, 2:10, 2:10] = 1
        if case != "c2":
            ref[3:5, 3:5, 3:5] = 2
            ref[5:7, 7:9, 7:9] = 2
        pred = ref.copy()
        if case == "c2" and fp_speck:
            pred[4, 4, 4] = 2
        if case == "c0" and cut_lesion:
            pred[5:7, 7:9, 7:9] = 1
            pred[5, 7, 7:9] = 2
            pred[6, 7, 7] = 2
        write_segmentation(ref, GEO, ref_dir / f"{case}.nii.gz")
        write_segmentation(pred, GEO, res / "fold_0" / "validation" / f"{case}.nii.gz")
    return res, ref_dir


def test_small_components_removed_when_validation_says_so(tmp_path):
    labels = {"background": 0, "organ": 1, "lesion": 2}
    res, ref_dir = _lesion_results(tmp_path / "speck", fp_speck=True, cut_lesion=False)
    d = determine_postprocessing(res, ref_dir, labels, progress=False)
    assert 2 not in d["largest_component_labels"]  # two lesions per case: keep-largest would hurt
    assert d["min_component_size"] == {"2": 4}  # half the smallest reference lesion (8 voxels)
    cand = d["min_size_candidates"]["2"]
    assert cand["dice_before"] == pytest.approx(2 / 3) and cand["dice_after"] == pytest.approx(1.0)
    speck = np.zeros((12, 16, 16), dtype=np.uint8)
    speck[4, 4, 4] = 2
    speck[3:5, 3:5, 10:12] = 2
    out = apply_postprocessing(speck, d)
    assert out[4, 4, 4] == 0 and (out[3:5, 3:5, 10:12] == 2).all()
    # a real lesion predicted smaller than the threshold: removal would lower Dice, so no
    res2, ref2 = _lesion_results(tmp_path / "cut", fp_speck=False, cut_lesion=True)
    d2 = determine_postprocessing(res2, ref2, labels, progress=False)
    assert d2["min_component_size"] == {}
    assert d2["min_size_candidates"]["2"]["dice_after"] < d2["min_size_candidates"]["2"]["dice_before"]


def test_bad_min_component_size_is_refused(tmp_path):
    from c2fnas_auto.inference.postprocessing import load_postprocessing

    path = tmp_path / "postprocessing.json"
    path.write_text(json.dumps({"largest_component_labels": [], "min_component_size": {"2": -3}}))
    with pytest.raises(InputError, match="min_component_size"):
        load_postprocessing(path)
    path.write_text(json.dumps({"largest_component_labels": [1]}))  # written before the second step
    assert load_postprocessing(path)["largest_component_labels"] == [1]

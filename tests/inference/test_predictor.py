"""predict_folder / c2fnas_predict with fold checkpoints written the way training writes them."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from c2fnas_auto.errors import InputError
from c2fnas_auto.inference.predictor import FoldModel, predict_folder, predict_probabilities
from c2fnas_auto.inference.sliding_window import sliding_window_predict
from c2fnas_auto.nas.network import build_network
from c2fnas_auto.paths import results_dir
from c2fnas_auto.training.checkpoint import save_checkpoint


def _network(plans, seed):
    torch.manual_seed(seed)
    return build_network(plans.genotype, plans.network_config())


def _write_folds(task, folds=(0, 1)):
    """Untrained but distinct networks saved as checkpoint_final.pth of each fold."""
    plans = task.plans
    out = results_dir(task.task_name, plans.plans_name)
    for f in folds:
        net = _network(plans, seed=100 + f)
        save_checkpoint(out / f"fold_{f}" / "checkpoint_final.pth", network_state=net.state_dict(),
                        optimizer_state={}, scaler_state={}, epoch=1, log_state={}, plans=plans.to_dict(),
                        genotype=plans.genotype.to_dict(), network_config=plans.network_config().to_dict())
    return out


def _snapshot(folder):
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir())


def test_ensemble_is_mean_of_fold_probabilities(tiny_task):
    torch.set_num_threads(1)
    plans = tiny_task.plans
    nets = [_network(plans, s) for s in (1, 2)]
    data = torch.randn(1, 20, 36, 44)
    models = [FoldModel(str(i), n, None) for i, n in enumerate(nets)]
    ens = predict_probabilities(models, data, plans, torch.device("cpu"), tta=False)
    manual = sum(torch.softmax(sliding_window_predict(n, data, plans.patch_size, plans.num_classes,
                                                      mirror_axes=None), 0) for n in nets) / 2
    assert torch.allclose(ens, manual, atol=1e-6)
    single = predict_probabilities(models[:1], data, plans, torch.device("cpu"), tta=False)
    assert not torch.allclose(ens, single, atol=1e-3)


def test_predict_folder_ensemble_and_geometry(copy_task, tmp_path):
    torch.set_num_threads(1)
    _write_folds(copy_task)
    inp = copy_task.raw_dir / "imagesTs"
    before = _snapshot(inp)
    outs = {}
    for name, folds in (("f0", ["0"]), ("f1", ["1"]), ("ens", None)):  # None: every trained fold
        failures = predict_folder(inp, tmp_path / name, task=98, folds=folds, device="cpu", tta=False,
                                  save_probabilities=True, progress=False)
        assert failures == []
        outs[name] = {p.name: np.load(p)["probabilities"] for p in (tmp_path / name).glob("*.npz")}
    assert sorted(outs["ens"]) == ["syn_008.npz", "syn_009.npz"]
    for case, probs in outs["ens"].items():
        # resampling is linear, so the ensemble in original space is the mean of the folds
        assert np.allclose(probs, (outs["f0"][case] + outs["f1"][case]) / 2, atol=1e-4)
    from c2fnas_auto.data.image_io import read_image, read_segmentation

    for case in ("syn_008", "syn_009"):
        img, geo = read_image([inp / f"{case}.nii.gz"])
        seg, seg_geo = read_segmentation(tmp_path / "ens" / f"{case}.nii.gz")
        assert seg.shape == img.shape[1:] and seg_geo == geo
    assert _snapshot(inp) == before  # nothing written into the input folder


def test_bad_case_fails_alone_and_cli_exit_codes(copy_task, tmp_path, capsys):
    from c2fnas_auto.cli.predict import main

    torch.set_num_threads(1)
    _write_folds(copy_task, folds=(0,))
    inp = tmp_path / "in"
    shutil.copytree(copy_task.raw_dir / "imagesTs", inp)
    good = inp / "syn_008.nii.gz"
    raw = good.read_bytes()
    (inp / "broken.nii.gz").write_bytes(raw[: len(raw) // 2])  # truncated download
    out = tmp_path / "out"
    rc = main(["-i", str(inp), "-o", str(out), "-t", "98", "--device", "cpu", "--disable-tta"])
    err = capsys.readouterr().err
    assert rc == 1
    failed_lines = [line for line in err.splitlines() if line.startswith("case broken: failed:")]
    assert len(failed_lines) == 1 and "1 case(s) failed: broken" in err
    assert (out / "syn_008.nii.gz").is_file() and (out / "syn_009.nii.gz").is_file()
    assert not (out / "broken.nii.gz").exists()

    # --continue leaves finished cases alone
    stamp = (out / "syn_008.nii.gz").stat().st_mtime_ns
    (inp / "broken.nii.gz").unlink()
    assert main(["-i", str(inp), "-o", str(out), "-t", "98", "--device", "cpu", "--disable-tta", "--continue"]) == 0
    assert (out / "syn_008.nii.gz").stat().st_mtime_ns == stamp

    # output inside (or equal to) the input folder is refused with one line
    assert main(["-i", str(inp), "-o", str(inp / "sub"), "-t", "98"]) == 2
    assert main(["-i", str(inp), "-o", str(inp), "-t", "98"]) == 2
    err = capsys.readouterr().err
    assert "inside" in err and "Traceback" not in err
    assert not (inp / "sub").exists()


def test_missing_fold_and_postprocessing_applied(copy_task, tmp_path):
    torch.set_num_threads(1)
    model = _write_folds(copy_task, folds=(0,))
    inp = copy_task.raw_dir / "imagesTs"
    with pytest.raises(InputError, match="fold_3"):
        predict_folder(inp, tmp_path / "x", model_folder=model, folds=[3], device="cpu", progress=False)
    from c2fnas_auto.utils.io import atomic_write_json, load_json

    atomic_write_json(model / "postprocessing.json", {"largest_component_labels": [1, 2]})
    assert predict_folder(inp, tmp_path / "pp", model_folder=model, device="cpu", tta=False, progress=False) == []
    assert load_json(tmp_path / "pp" / "prediction_info.json")["postprocessing"]["largest_component_labels"] == [1, 2]
    assert predict_folder(inp, tmp_path / "raw", model_folder=model, device="cpu", tta=False, progress=False,
                          postprocessing=False) == []
    assert load_json(tmp_path / "raw" / "prediction_info.json")["postprocessing"] is None
    # export in worker processes gives the same files as in-process export
    assert predict_folder(inp, tmp_path / "np2", model_folder=model, device="cpu", tta=False, progress=False,
                          num_export_workers=2) == []
    from c2fnas_auto.data.image_io import read_segmentation

    for case in ("syn_008", "syn_009"):
        a, _ = read_segmentation(tmp_path / "pp" / f"{case}.nii.gz")
        b, _ = read_segmentation(tmp_path / "np2" / f"{case}.nii.gz")
        assert np.array_equal(a, b)

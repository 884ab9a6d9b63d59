"""Predictor / c2fnas_predict with fold checkpoints written the way training writes them."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage
from torch import nn

from c2fnas_auto.errors import InputError
from c2fnas_auto.inference.predictor import Predictor
from c2fnas_auto.inference.sliding_window import sliding_window_predict
from c2fnas_auto.nas.checkpoint import save_checkpoint
from c2fnas_auto.nas.network import build_network
from c2fnas_auto.paths import experiment_name, results_dir


def _network(plans, seed, genotype=None):
    torch.manual_seed(seed)
    return build_network(genotype or plans.genotype, plans.network_config())


def _other_genotype(plans):
    return plans.genotype.with_ops(["3d" if op != "3d" else "2d" for op in plans.genotype.ops])


def _write_folds(task, folds=(0, 1), genotype=None, folder=None, plans=None, seed=100):
    """Untrained but distinct networks saved as checkpoint_final.pth of each fold, in the
    experiment folder of `genotype` (default: the plans genotype) unless `folder` is given."""
    plans = plans or task.plans
    genotype = genotype or plans.genotype
    out = folder or results_dir(task.task_name, experiment_name(plans.plans_name, genotype.short_id()))
    run_plans = plans.copy()
    run_plans.genotype = genotype
    for f in folds:
        net = _network(plans, seed=seed + f, genotype=genotype)
        save_checkpoint(out / f"fold_{f}" / "checkpoint_final.pth", network_state=net.state_dict(),
                        optimizer_state={}, scaler_state={}, epoch=1, log_state={}, plans=run_plans.to_dict(),
                        genotype=genotype.to_dict(), network_config=plans.network_config().to_dict())
    return out


def _snapshot(folder):
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir())


def test_ensemble_is_mean_of_fold_probabilities(copy_task):
    torch.set_num_threads(1)
    plans = copy_task.plans
    model = _write_folds(copy_task)
    data = torch.randn(1, 20, 36, 44)
    ens = Predictor(model, device="cpu", tta=False, progress=False)
    assert [m.fold for m in ens.models] == ["0", "1"]
    manual = sum(torch.softmax(sliding_window_predict(m.network, data, plans.patch_size, plans.num_classes,
                                                      mirror_axes=None), 0) for m in ens.models) / 2
    assert torch.allclose(ens.predict_probabilities(data), manual, atol=1e-6)
    single = Predictor(model, folds=[0], device="cpu", tta=False, progress=False)
    assert not torch.allclose(ens.predict_probabilities(data), single.predict_probabilities(data), atol=1e-3)


def test_predict_files_ensemble_and_geometry(copy_task, tmp_path):
    torch.set_num_threads(1)
    model = _write_folds(copy_task)
    inp = copy_task.raw_dir / "imagesTs"
    before = _snapshot(inp)
    outs = {}
    for name, folds in (("f0", ["0"]), ("f1", ["1"]), ("ens", None)):  # None: every trained fold
        failures = Predictor(model, folds=folds, device="cpu", tta=False, progress=False).predict_files(
            inp, tmp_path / name, save_probabilities=True)
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


def test_predict_array_matches_the_written_file(copy_task, tmp_path):
    from c2fnas_auto.data.image_io import read_image, read_segmentation

    torch.set_num_threads(1)
    model = _write_folds(copy_task, folds=(0,))
    predictor = Predictor(model, device="cpu", tta=False, progress=False)
    case = copy_task.raw_dir / "imagesTs" / "syn_008.nii.gz"
    assert predictor.predict_files([case], tmp_path / "out") == []
    img, geo = read_image([case])
    seg, probs = predictor.predict_array(img, geo.spacing_zyx, geo.direction, geo.origin, return_probabilities=True)
    written, _ = read_segmentation(tmp_path / "out" / "syn_008.nii.gz")
    assert np.array_equal(seg, written)
    assert probs.shape == (copy_task.plans.num_classes, *img.shape[1:]) and np.allclose(probs.sum(0), 1, atol=1e-4)
    with pytest.raises(InputError, match="spacing needs 3"):
        predictor.predict_array(img, (1.0, 1.0))
    with pytest.raises(InputError, match="image array"):
        predictor.predict_array(img[None], geo.spacing_zyx)


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


def test_task_lookup_picks_the_plans_genotype_experiment(copy_task, tmp_path, capsys):
    """-t uses the plans genotype's experiment; --genotype / --experiment choose another."""
    from c2fnas_auto.cli.predict import main
    from c2fnas_auto.inference.experiments import find_experiment
    from c2fnas_auto.utils.io import load_json

    torch.set_num_threads(1)
    plans = copy_task.plans
    other = _other_genotype(plans)
    mine = _write_folds(copy_task, folds=(0,))
    theirs = _write_folds(copy_task, folds=(0,), genotype=other)
    assert mine != theirs and mine.parent == theirs.parent
    assert find_experiment(98) == mine
    assert find_experiment(98, genotype=other) == theirs
    assert find_experiment(98, experiment=theirs.name) == theirs
    other.save(tmp_path / "other.json")
    inp = copy_task.raw_dir / "imagesTs"
    args = ["-i", str(inp), "--device", "cpu", "--disable-tta", "-t", "98"]
    assert main([*args, "-o", str(tmp_path / "a")]) == 0
    assert load_json(tmp_path / "a" / "prediction_info.json")["model_folders"] == [str(mine)]
    assert main([*args, "-o", str(tmp_path / "b"), "--genotype", str(tmp_path / "other.json")]) == 0
    assert load_json(tmp_path / "b" / "prediction_info.json")["model_folders"] == [str(theirs)]
    capsys.readouterr()
    assert main([*args, "-o", str(tmp_path / "c"), "--experiment", "nope"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and mine.name in err and len(err.strip().splitlines()) == 1
    shutil.rmtree(mine)
    with pytest.raises(InputError, match="plans genotype.*no trained folds"):
        find_experiment(98)


def test_refuses_to_mix_genotypes_within_an_experiment(copy_task):
    plans = copy_task.plans
    other = _other_genotype(plans)
    model = _write_folds(copy_task, folds=(0,))
    _write_folds(copy_task, folds=(1,), genotype=other, folder=model)  # copied into the wrong folder
    with pytest.raises(InputError, match="fold_1.*named for genotype"):
        Predictor(model, device="cpu")
    legacy = copy_task.results_root / copy_task.task_name / plans.plans_name  # old layout: no id in the name
    _write_folds(copy_task, folds=(0,), folder=legacy)
    _write_folds(copy_task, folds=(1,), genotype=other, folder=legacy)
    with pytest.raises(InputError, match="fold_1.*cannot ensemble folds of different genotypes"):
        Predictor(legacy, device="cpu")
    assert len(Predictor(legacy, folds=[0], device="cpu").models) == 1


def test_ensemble_of_experiments(copy_task):
    """Several model folders: different genotypes are averaged; different labels are refused."""
    torch.set_num_threads(1)
    plans = copy_task.plans
    other = _other_genotype(plans)
    a = _write_folds(copy_task, folds=(0, 1))
    b = _write_folds(copy_task, folds=(0,), genotype=other)
    both = Predictor([a, b], device="cpu", tta=False, progress=False)
    assert len(both.models) == 3 and both.info()["folds"] == [["0", "1"], ["0"]]
    with pytest.raises(InputError, match="given twice"):
        Predictor([a, b, a / "."], device="cpu")
    data = torch.randn(1, 24, 40, 40)
    parts = [Predictor(f, device="cpu", tta=False, progress=False).predict_probabilities(data) for f in (a, b)]
    assert torch.allclose(both.predict_probabilities(data), (2 * parts[0] + parts[1]) / 3, atol=1e-5)
    relabelled = plans.copy()
    relabelled.labels = {"background": 0, "liver": 1, "lesion": 2}
    c = _write_folds(copy_task, folds=(0,), plans=relabelled,
                     folder=copy_task.results_root / copy_task.task_name / "Other__relabel")
    with pytest.raises(InputError, match="Other__relabel: plans labels .* differ"):
        Predictor([a, c], device="cpu")


class _Threshold(nn.Module):
    """Class 1 wherever the (normalized) input is above `level`: the segmentation is the image's
    bright regions, so the test controls the components the postprocessing sees."""

    def __init__(self, level: float, num_classes: int):
        super().__init__()
        self.level, self.num_classes = level, num_classes

    def forward(self, x):
        logits = torch.full((x.shape[0], self.num_classes, *x.shape[2:]), -20.0)
        logits[:, 0] = 0.0
        logits[:, 1] = 10.0 * (x[:, 0] - self.level)
        return logits


def test_postprocessing_removes_a_spurious_component_from_the_written_file(copy_task, tmp_path):
    from c2fnas_auto.data.image_io import Geometry, read_segmentation
    from c2fnas_auto.preprocessing.preprocessor import preprocess_case
    from c2fnas_auto.utils.io import atomic_write_json

    torch.set_num_threads(1)
    plans = copy_task.plans
    model = _write_folds(copy_task, folds=(0,))
    image = np.full((24, 40, 40), -1000.0, dtype=np.float32)
    image[6:18, 4:24, 4:24] = 150.0  # the organ
    image[10:13, 30:35, 30:35] = 150.0  # a small spurious island, far from it
    inp = tmp_path / "in"
    inp.mkdir()
    img = sitk.GetImageFromArray(image)
    Geometry((1.0, 1.0, 3.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)).apply_to(img)
    sitk.WriteImage(img, str(inp / "case_0.nii.gz"))
    data, _, _ = preprocess_case([inp / "case_0.nii.gz"], plans)
    level = float(data.min() + data.max()) / 2
    atomic_write_json(model / "postprocessing.json", {"largest_component_labels": [1]})

    def predict(out, **kw):
        predictor = Predictor(model, device="cpu", tta=False, progress=False, **kw)
        predictor.models[0].network = _Threshold(level, plans.num_classes)
        assert predictor.predict_files(inp, tmp_path / out) == []
        return read_segmentation(tmp_path / out / "case_0.nii.gz")[0], predictor

    raw, plain = predict("raw", postprocessing=False)
    assert plain.postprocessing is None
    assert ndimage.label(raw == 1)[1] == 2 and raw[11, 32, 32] == 1  # the island is predicted
    pp, used = predict("pp")
    assert used.postprocessing["largest_component_labels"] == [1]
    assert ndimage.label(pp == 1)[1] == 1 and pp[11, 32, 32] == 0  # and removed from the NIfTI
    assert np.array_equal(pp[:, :28, :28], raw[:, :28, :28])  # the organ is untouched
    # export in worker processes gives the same file as in-process export
    predictor = Predictor(model, device="cpu", tta=False, progress=False)
    predictor.models[0].network = _Threshold(level, plans.num_classes)
    assert predictor.predict_files(inp, tmp_path / "np2", num_export_workers=2) == []
    assert np.array_equal(read_segmentation(tmp_path / "np2" / "case_0.nii.gz")[0], pp)


def test_missing_fold_and_bad_settings(copy_task, tmp_path):
    model = _write_folds(copy_task, folds=(0,))
    with pytest.raises(InputError, match="fold_3"):
        Predictor(model, folds=[3], device="cpu")
    with pytest.raises(InputError, match="step size"):
        Predictor(model, device="cpu", step_size=0)
    with pytest.raises(InputError, match="checkpoint 'middle'"):
        Predictor(model, device="cpu", checkpoint="middle")
    with pytest.raises(InputError, match="no fold has checkpoint_best.pth"):
        Predictor(model, device="cpu", checkpoint="best")
    with pytest.raises(InputError, match="results folder not found"):
        Predictor(tmp_path / "nowhere", device="cpu")
    with pytest.raises(InputError, match="input folder not found"):
        Predictor(model, device="cpu").predict_files(tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(InputError, match="no model folder given"):
        Predictor([], device="cpu")
    with pytest.raises(InputError, match="no network given"):
        Predictor.from_networks([], copy_task.plans, device="cpu")


def test_unusable_checkpoints_are_named(copy_task):
    """A checkpoint without the network's identity, with a broken genotype or with weights of
    another network is refused with one line naming the file."""
    from c2fnas_auto.nas.checkpoint import load_checkpoint

    model = _write_folds(copy_task, folds=(0,))
    ckpt_file = model / "fold_0" / "checkpoint_final.pth"
    good = load_checkpoint(ckpt_file)
    for change, message in ((lambda c: c.pop("genotype"), "checkpoint lacks genotype"),
                            (lambda c: c.update(genotype={"levels": [1]}), "genotype: missing key 'ops'"),
                            (lambda c: c.update(network_config={}), "network config is missing"),
                            (lambda c: c["network_weights"].popitem(), "weights do not fit the stored network")):
        broken = {**good, "network_weights": dict(good["network_weights"])}
        change(broken)
        torch.save(broken, ckpt_file)
        with pytest.raises(InputError, match=f"checkpoint_final.pth: .*{message}"):
            Predictor(model, device="cpu")


def test_task_lookup_without_raw_data_or_plans(copy_task, monkeypatch):
    """A machine holding results only: the task is found in the results root, and without
    plans.json the single experiment of the plans name is used."""
    from c2fnas_auto.inference.experiments import find_experiment

    model = _write_folds(copy_task, folds=(0,))
    monkeypatch.delenv("C2FNAS_raw")
    monkeypatch.delenv("C2FNAS_preprocessed")
    assert find_experiment(98) == model
    assert find_experiment(copy_task.task_name) == model
    with pytest.raises(InputError, match="no single results folder for task 97"):
        find_experiment(97)
    _write_folds(copy_task, folds=(0,), genotype=_other_genotype(copy_task.plans))
    with pytest.raises(InputError, match="2 experiments of plans C2FNASPlans and no plans.json"):
        find_experiment(98)

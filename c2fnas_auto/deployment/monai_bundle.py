"""A MONAI bundle of one trained fold, for MONAI Label, 3D Slicer and `monai.bundle run`.

Layout (MONAI's bundle convention): `configs/metadata.json` (inputs, labels, the spacing and
intensity normalization the plans expect), `configs/inference.json` (load -> spacing ->
normalization -> sliding window -> softmax -> invert -> argmax -> save), `configs/logging.conf`,
`models/model.ts` (TorchScript, checked against PyTorch at export) and `docs/README.md`.

MONAI reads images in (x, y, z) order while our networks expect the plans' transposed
(z, y, x) order, so the TorchScript model of a bundle permutes axes inside itself; every
size in the bundle's configs is given in MONAI's order. What the bundle does differently
from `c2fnas_predict` (no crop to the nonzero region, bilinear instead of cubic resampling,
no mirroring) is listed in its README and in documentation/howto/deployment.md.
"""

from __future__ import annotations

import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from c2fnas_auto.deployment.errors import DeploymentError
from c2fnas_auto.deployment.network_export import (AxisPermuted, ExportCheck, example_input, exportable_copy,
                                                   save_torchscript)
from c2fnas_auto.utils.io import atomic_write_json, atomic_write_text

BUNDLE_VERSION = "0.1.0"


def monai_axis_order(transpose_forward: Sequence[int]) -> list[int]:
    """For each preprocessed axis, the MONAI (x, y, z) axis it comes from."""
    return [2 - int(a) for a in transpose_forward]


def to_monai_order(values: Sequence[Any], transpose_forward: Sequence[int]) -> list[Any]:
    """A per-axis list in preprocessed order -> the same list in MONAI's (x, y, z) order."""
    order = monai_axis_order(transpose_forward)
    out: list[Any] = [None] * 3
    for i, a in enumerate(order):
        out[a] = values[i]
    return out


def normalization_transform(plans) -> dict:
    """The plans' intensity normalization as one MONAI transform config."""
    norms = plans.normalization
    if len(norms) == 1 and norms[0].get("scheme") == "CT":
        n = norms[0]
        lo, hi, mean, std = (float(n[k]) for k in ("lower", "upper", "mean", "std"))
        # clip to [lo, hi] then z-score is one clipped linear map
        return {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": lo, "a_max": hi,
                "b_min": (lo - mean) / std, "b_max": (hi - mean) / std, "clip": True}
    if all(n.get("scheme") == "zscore" for n in norms):
        return {"_target_": "NormalizeIntensityd", "keys": "image", "channel_wise": True,
                "nonzero": any(bool(n.get("use_nonzero_mask")) for n in norms)}
    schemes = [n.get("scheme") for n in norms]
    raise DeploymentError(f"monai-bundle export supports one CT channel or z-score channels, not {schemes}")


def inference_config(plans, sw_batch_size: int = 2, overlap: float = 0.5) -> dict:
    """configs/inference.json: a standard MONAI inference workflow around models/model.ts."""
    tf = plans.transpose_forward
    pixdim = to_monai_order([float(s) for s in plans.target_spacing], tf)
    roi = to_monai_order([int(p) for p in plans.patch_size], tf)
    preprocessing = [
        {"_target_": "LoadImaged", "keys": "image"},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Spacingd", "keys": "image", "pixdim": pixdim, "mode": "bilinear"},
        normalization_transform(plans),
        {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
    ]
    postprocessing = [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
         "nearest_interp": False, "to_tensor": True},
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
         "output_dtype": "$numpy.uint8", "resample": False, "separate_folder": False},
    ]
    return {
        "imports": ["$import glob", "$import os", "$import numpy"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "$@bundle_root + '/data'",
        "datalist": "$[{'image': f} for f in sorted(glob.glob(os.path.join(@dataset_dir, '*.nii.gz')))]",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": "$torch.jit.load(@bundle_root + '/models/model.ts', map_location=@device)",
        "network": "$@network_def.to(@device).eval()",
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing},
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": roi, "sw_batch_size": sw_batch_size,
                    "overlap": overlap, "mode": "gaussian"},
        "postprocessing": {"_target_": "Compose", "transforms": postprocessing},
        "handlers": [{"_target_": "StatsHandler", "iteration_log": False}],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": False},
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
        "run": ["$@evaluator.run()"],
    }


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except ImportError:
        return "unknown"


def metadata(plans, genotype: dict, source: dict, check: ExportCheck) -> dict:
    """configs/metadata.json: what goes in, what comes out, and where the model came from."""
    tf = plans.transpose_forward
    roi = to_monai_order([int(p) for p in plans.patch_size], tf)
    channel_names = {str(k): v for k, v in sorted(plans.channel_names.items(), key=lambda kv: int(kv[0]))}
    modality = ", ".join(channel_names.values())
    labels = {str(v): k for k, v in sorted(plans.labels.items(), key=lambda kv: kv[1])}
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
                  "meta_schema_20220324.json",
        "version": BUNDLE_VERSION,
        "changelog": {BUNDLE_VERSION: "exported by c2fnas_export_model"},
        "monai_version": _version("monai"),
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {"nibabel": _version("nibabel")},
        "name": f"c2fnas_{plans.task_name}",
        "task": f"Segmentation of {', '.join(n for n in plans.labels if plans.labels[n] != 0)} ({plans.task_name})",
        "description": (f"A C2FNAS network (levels {genotype.get('levels')}, ops {genotype.get('ops')}) trained "
                        f"with c2fnas-auto on {plans.task_name}, fold {source.get('fold')}."),
        "authors": "c2fnas-auto export",
        "copyright": "see the training data's licence",
        "data_source": plans.task_name,
        "data_type": "nibabel",
        "image_classes": f"{len(channel_names)} channel(s): {modality}",
        "label_classes": ", ".join(f"{k}: {v}" for k, v in labels.items()),
        "pred_classes": ", ".join(f"{k}: {v}" for k, v in labels.items()),
        "intended_use": "research only",
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": "hounsfield" if "CT" in modality.upper() else "magnitude",
                "modality": modality, "num_channels": len(channel_names), "spatial_shape": roi,
                "dtype": "float32", "value_range": [], "is_patch_data": True, "channel_def": channel_names}},
            "outputs": {"pred": {
                "type": "image", "format": "segmentation", "num_channels": int(plans.num_classes),
                "spatial_shape": roi, "dtype": "float32", "value_range": [], "is_patch_data": True,
                "channel_def": labels}},
        },
        "c2fnas": {
            "target_spacing_xyz": to_monai_order([float(s) for s in plans.target_spacing], tf),
            "patch_size_xyz": roi, "normalization": plans.normalization, "genotype": genotype,
            "source": source, "export_check": check.to_dict(), "python_version": platform.python_version()},
    }


def readme(plans, check: ExportCheck) -> str:
    return f"""# c2fnas-auto model of {plans.task_name}

Run it with MONAI (the images go in `data/`, or pass `--dataset_dir`):

    python -m monai.bundle run --config_file configs/inference.json --meta_file configs/metadata.json \\
        --bundle_root . --dataset_dir /path/to/images --output_dir /path/to/output

`models/model.ts` takes (B, {plans.num_channels}, x, y, z) images in MONAI's axis order and returns
{plans.num_classes} class logits; every spatial side must be divisible by the network's downsampling
(the sliding window's patch, {to_monai_order(plans.patch_size, plans.transpose_forward)}, is).
At export its output matched PyTorch's within {check.tolerance:.2g} (max difference
{check.max_abs_difference:.2g}).

Differences from `c2fnas_predict`: no crop to the nonzero region before normalization, bilinear
instead of cubic resampling, no mirroring test-time augmentation, one fold instead of the fold ensemble,
and no largest-component postprocessing.
"""


# Python logging.config.fileConfig format: monai.bundle reads configs/logging.conf when present
LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=console

[formatters]
keys=plain

[logger_root]
level=INFO
handlers=console

[handler_console]
class=StreamHandler
level=INFO
formatter=plain
args=(sys.stdout,)

[formatter_plain]
format=%(asctime)s %(levelname)s %(name)s: %(message)s
"""


def write_bundle(network: nn.Module, plans, genotype: dict, source: dict, out_dir: Path) -> ExportCheck:
    """Write the bundle folder `out_dir` (which must not exist); returns the TorchScript check."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise DeploymentError(f"{out_dir}: already exists (a bundle is written into a new folder)")
    config = inference_config(plans)  # fails early on unsupported normalization
    order = monai_axis_order(plans.transpose_forward)
    wrapped = AxisPermuted(exportable_copy(network), order).eval()
    example = example_input(plans.num_channels, to_monai_order(plans.patch_size, plans.transpose_forward))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    try:
        check = save_torchscript(wrapped, example, tmp / "models" / "model.ts")
        atomic_write_json(tmp / "configs" / "inference.json", config)
        atomic_write_json(tmp / "configs" / "metadata.json", metadata(plans, genotype, source, check))
        atomic_write_text(tmp / "docs" / "README.md", readme(plans, check))
        atomic_write_text(tmp / "configs" / "logging.conf", LOGGING_CONF)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return check

"""`c2fnas_export_model --format torchscript|onnx`: one fold's network plus a JSON card.

The card (`<name>.json` next to the network file) says what a user outside this package
must feed the network: channels, axis order, spacing, intensity normalization, patch size
and labels, and what the export-time check measured.
"""

from __future__ import annotations

from pathlib import Path

from c2fnas_auto.deployment.network_export import ExportCheck, export_network
from c2fnas_auto.deployment.trained import TrainedFold
from c2fnas_auto.utils.io import atomic_write_json


def network_card(trained: TrainedFold, fmt: str, check: ExportCheck) -> dict:
    plans = trained.plans
    return {
        "format": fmt,
        "input": {"shape": "(batch, channels, z, y, x) in the plans' transposed order",
                  "channels": {str(k): v for k, v in plans.channel_names.items()},
                  "transpose_forward": list(plans.transpose_forward),
                  "target_spacing": list(plans.target_spacing), "normalization": plans.normalization,
                  "patch_size": list(plans.patch_size),
                  "divisible_by": list(plans.network_config().total_downsampling())},
        "output": {"shape": "(batch, classes, z, y, x) logits; softmax over classes for probabilities",
                   "labels": dict(plans.labels)},
        "genotype": trained.genotype, "source": trained.source(), "export_check": check.to_dict(),
    }


def export_network_file(trained: TrainedFold, fmt: str, out_file: Path) -> ExportCheck:
    out_file = Path(out_file)
    check = export_network(trained.network, trained.plans.num_channels, trained.plans.patch_size, fmt, out_file)
    atomic_write_json(out_file.with_suffix(".json"), network_card(trained, fmt, check))
    return check

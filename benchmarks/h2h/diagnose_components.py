"""Where a cell's test errors lie: scattered false positives or a wrong main structure.

    python -m benchmarks.h2h.diagnose_components PRED_DIR LABEL_DIR [--out FILE]

A diagnosis, not a selection: it scores the largest foreground component on the test labels, so
that figure says how much a connected-component filter *could* recover, never what one chosen on
validation would. Prints (and with --out writes) one JSON record.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from c2fnas_auto.data.image_io import read_segmentation
from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.utils.io import atomic_write_json


def _dice(pred: np.ndarray, ref: np.ndarray) -> float:
    total = int(pred.sum() + ref.sum())
    return 2.0 * float((pred & ref).sum()) / total if total else 1.0


def case_record(pred: np.ndarray, ref: np.ndarray, classes: list[int]) -> dict[str, float]:
    """Components of the predicted foreground, the share outside the largest, and the mean Dice
    over `classes` as predicted and restricted to that largest component."""
    labelled, n = ndimage.label(pred > 0)
    fg = int((pred > 0).sum())
    if n:
        sizes = np.bincount(labelled.ravel())[1:]
        keep, outside = labelled == int(np.argmax(sizes)) + 1, 1.0 - float(sizes.max()) / fg
    else:  # nothing predicted
        keep, outside = pred > 0, 0.0
    return {"components": float(n), "outside_largest": outside,
            "volume_ratio": fg / max(int((ref > 0).sum()), 1),
            "dice": float(np.mean([_dice(pred == c, ref == c) for c in classes])),
            "dice_largest_only": float(np.mean([_dice((pred == c) & keep, ref == c) for c in classes]))}


def diagnose(pred_dir: Path, label_dir: Path) -> dict[str, float | int]:
    rows = []
    for f in sorted(pred_dir.glob("*.nii.gz")):
        if not (label_dir / f.name).is_file():
            raise SystemExit(f"diagnose_components: error: {label_dir / f.name}: no reference label for {f}")
        try:
            pred, ref = read_segmentation(f)[0], read_segmentation(label_dir / f.name)[0]
        except C2FNASError as exc:  # an unreadable or non-integer label map: the reader names the file
            raise SystemExit(f"diagnose_components: error: {exc}") from None
        classes = sorted(int(c) for c in np.union1d(np.unique(pred), np.unique(ref)) if c > 0)
        rows.append(case_record(pred, ref, classes))
    if not rows:
        raise SystemExit(f"diagnose_components: error: no *.nii.gz predictions in {pred_dir}")
    col = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    return {"cases": len(rows), "components_median": float(np.median(col["components"])),
            "fg_outside_largest_component_mean": round(float(col["outside_largest"].mean()), 3),
            "predicted_to_true_fg_volume_median": round(float(np.median(col["volume_ratio"])), 2),
            "dice_mean": round(float(col["dice"].mean()), 3),
            "dice_largest_fg_component_only_mean": round(float(col["dice_largest_only"].mean()), 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="diagnose_components", description=__doc__.split("\n\n")[0])
    p.add_argument("pred_dir", type=Path)
    p.add_argument("label_dir", type=Path)
    p.add_argument("--out", type=Path, help="write the record here as JSON")
    args = p.parse_args(argv)
    record = {"pred_dir": str(args.pred_dir), **diagnose(args.pred_dir, args.label_dir)}
    print(json.dumps(record))
    if args.out:
        atomic_write_json(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

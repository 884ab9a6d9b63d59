"""Small builders shared by the data tests: tiny tasks and in-place file edits."""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from c2fnas_auto.data.synthetic import make_synthetic_task

TINY = dict(num_train=3, num_test=1, shape=(8, 16, 16), spacing=(3.0, 1.0, 1.0), seed=1)


def tiny_task(root: Path, layout: str = "msd", channels: int = 1, modality: str = "CT", **kw) -> Path:
    args = {**TINY, **kw}
    return make_synthetic_task(root, task_id=args.pop("task_id", 98 if layout == "msd" else 97), layout=layout,
                               channels=channels, modality=modality, progress=False, **args)


def rewrite(path: Path, array_fn=None, spacing=None, origin=None, direction=None) -> None:
    """Re-save an image with its array and/or geometry changed (test setup only)."""
    img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(img)
    new = sitk.GetImageFromArray(array_fn(arr) if array_fn else arr, isVector=False)
    if new.GetSize() == img.GetSize():
        new.CopyInformation(img)
    elif new.GetDimension() == img.GetDimension() == 3:  # cropped: keep the placement
        new.SetSpacing(img.GetSpacing())
        new.SetOrigin(img.GetOrigin())
        new.SetDirection(img.GetDirection())
    if spacing is not None:
        new.SetSpacing(spacing)
    if origin is not None:
        new.SetOrigin(origin)
    if direction is not None:
        new.SetDirection(direction)
    sitk.WriteImage(new, str(path))

"""A NIfTI header whose sform and qform place the voxels differently.

NIfTI stores two affines; readers choose between them by rules of their own (ITK takes
the qform when the sform is sheared), so such a file is read on one grid while other
tools, and the user, may expect the other. The prediction is written on the grid that was
read, so its header then differs from the input's sform. The file is still read; a
warning names it, the largest disagreement in mm and which affine the read grid follows.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

DISAGREE_MM = 1e-3  # below this the two affines place every corner voxel alike
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_warned: set[str] = set()


def _corner_shift(a: np.ndarray, b: np.ndarray, shape: Sequence[int]) -> float:
    """Largest distance (mm) between where `a` and `b` put the volume's corner voxels."""
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)])
    return float(np.abs((corners @ a.T - corners @ b.T)[:, :3]).max())


def affine_of_grid(spacing: Sequence[float], origin: Sequence[float], direction: Sequence[float]) -> np.ndarray:
    """The RAS voxel-to-world affine of an ITK (LPS) grid, as NIfTI would store it."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(direction, dtype=float).reshape(3, 3) * np.asarray(spacing, dtype=float)
    lps[:3, 3] = origin
    return _RAS_TO_LPS @ lps


def warn_if_affines_disagree(path: Path, grid_affine: np.ndarray) -> float:
    """Warn (once per file) when the file's sform and qform disagree; returns the largest
    disagreement in mm (0.0 when only one is set, or for files nibabel cannot read)."""
    try:
        # start-up: nibabel costs about 0.3 s and only NIfTI files need it
        import nibabel as nib

        header = nib.load(str(path)).header
        sform, s_code = header.get_sform(coded=True)
        qform, q_code = header.get_qform(coded=True)
        shape = header.get_data_shape()[:3]
    except Exception:  # noqa: BLE001 - not a NIfTI nibabel reads: ITK's own error stands
        return 0.0
    if not s_code or not q_code or len(shape) < 3:
        return 0.0
    mm = _corner_shift(np.asarray(sform), np.asarray(qform), shape)
    if mm <= DISAGREE_MM or str(path) in _warned:
        return mm
    _warned.add(str(path))
    to_s = _corner_shift(grid_affine, np.asarray(sform), shape)
    to_q = _corner_shift(grid_affine, np.asarray(qform), shape)
    used = "qform" if to_q < to_s else "sform"
    log.warning("%s: the sform and qform disagree (voxels up to %.3g mm apart); it is read on its %s, and "
                "predictions are written on that grid, not the %s", path, mm, used,
                "sform" if used == "qform" else "qform")
    return mm


def nifti_grid(path: Path) -> tuple[tuple[int, ...], tuple[float, ...], int] | None:
    """(shape (z, y, x), spacing (z, y, x) in mm, channels) from a NIfTI header alone, spacing
    taken from the affine as the nibabel fallback reads it; None when nibabel cannot read it."""
    try:
        # start-up: nibabel costs about 0.3 s and only NIfTI files need it
        import nibabel as nib

        nii = nib.load(str(path))
        shape = tuple(int(n) for n in nii.header.get_data_shape())
        affine = np.asarray(nii.affine, dtype=np.float64)
    except Exception:  # noqa: BLE001 - not a NIfTI nibabel reads: the full read's error stands
        return None
    if len(shape) not in (3, 4):
        return None
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    return tuple(reversed(shape[:3])), tuple(float(s) for s in reversed(spacing)), (shape[3] if len(shape) == 4 else 1)

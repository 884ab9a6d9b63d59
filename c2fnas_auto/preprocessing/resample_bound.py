"""What resampling one case may cost, decided from its header before any voxel is read.

A case's size after resampling is its voxel count scaled by (its spacing / the target
spacing) per axis, and nothing else bounds it: a 19 KB image that declares 40 x 40 x 120 mm
voxels, or a small gzip bomb declaring a large grid, becomes GBs at a 1 mm target, which
ends after minutes in a MemoryError (or the OOM killer), and prediction then runs
thousands of windows. So the target shape and the bytes resampling will hold are computed
from the header and refused above a bound: by default a quarter of this machine's
physical memory, raised with `--max-resampled-gb` (which sets `MAX_RESAMPLED_ENV`, read
by every worker process). Spacings outside [MIN_SPACING_MM, MAX_SPACING_MM] are refused
too: no scanner makes them, and a voxel of 1e-6 mm resamples a whole image into one voxel.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from c2fnas_auto.errors import InputError

MIN_SPACING_MM = 0.01
MAX_SPACING_MM = 100.0
MEMORY_FRACTION = 0.25
MAX_RESAMPLED_ENV = "C2FNAS_MAX_RESAMPLED_GB"
GIB = 2 ** 30
# bytes per output voxel and channel while resampling: the float32 result plus skimage's
# float64 working copy
BYTES_PER_VOXEL = 12


def physical_memory_bytes() -> int:
    """This machine's physical memory (0 when the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 0


def max_resampled_bytes() -> int:
    """The bound: `MAX_RESAMPLED_ENV` in GB when set, else MEMORY_FRACTION of physical memory
    (8 GiB when the OS does not report it)."""
    text = os.environ.get(MAX_RESAMPLED_ENV, "").strip()
    if text:
        try:
            gb = float(text)
        except ValueError:
            gb = float("nan")
        if not np.isfinite(gb) or gb <= 0:
            raise InputError(f"{MAX_RESAMPLED_ENV}={text!r}: must be a positive number of GB")
        return int(gb * GIB)
    total = physical_memory_bytes()
    return int(total * MEMORY_FRACTION) if total else 8 * GIB


def check_spacing(spacing: Sequence[float], where: str) -> None:
    """Refuse spacings no scanner makes (they only turn into absurd shapes)."""
    bad = [float(s) for s in spacing if not (MIN_SPACING_MM <= float(s) <= MAX_SPACING_MM)]
    if bad:
        raise InputError(f"{where}: voxel spacing {[float(s) for s in spacing]} mm is outside "
                         f"[{MIN_SPACING_MM:g}, {MAX_SPACING_MM:g}] mm; check the header's pixdim")


def check_resampled_size(shape: Sequence[int], new_shape: Sequence[int], channels: int, where: str,
                         limit: int | None = None) -> int:
    """The bytes reading `shape` and resampling it to `new_shape` will hold; InputError above
    the bound."""
    voxels = float(np.prod([int(n) for n in new_shape], dtype=np.float64))
    read = float(np.prod([int(n) for n in shape], dtype=np.float64)) * 4  # the image read as float32
    need = int((voxels * BYTES_PER_VOXEL + read) * max(1, int(channels)))
    limit = max_resampled_bytes() if limit is None else int(limit)
    if need > limit:
        raise InputError(f"{where}: resampling {list(shape)} voxels to the plans' spacing gives {list(new_shape)}, "
                         f"about {need / GIB:.1f} GiB, over the limit of {limit / GIB:.1f} GiB (check the header's "
                         "spacing; raise the limit with --max-resampled-gb for a genuinely large image)")
    return need


def header_grid(path: Path) -> tuple[tuple[int, ...], tuple[float, ...], int] | None:
    """(shape (z, y, x), spacing (z, y, x), channels) from the file's header, without reading
    voxels; None when the header gives no 3D grid (the full read then names the problem)."""
    # start-up: c2fnas_predict --help imports this module for its flag; image reading loads SimpleITK
    from c2fnas_auto.data.image_io import NIFTI_ENDINGS, file_ending, read_image_info
    from c2fnas_auto.data.nifti_header import nifti_grid

    try:
        info = read_image_info(path)
    except InputError:  # ITK refuses some NIfTI headers (skewed) that the full read takes via nibabel
        return nifti_grid(path) if file_ending(path) in NIFTI_ENDINGS else None
    if info.geometry is None:
        return None
    return info.shape_zyx, info.geometry.spacing_zyx, info.num_channels


def check_case_grid(shape_zyx: Sequence[int], spacing_zyx: Sequence[float], channels: int, plans,
                    where: str) -> list[int]:
    """Spacing in range and the resampled case within the bound; returns its shape in
    preprocessed order. Cropping only shrinks a case, so the uncropped shape bounds it."""
    # start-up: c2fnas_predict --help imports this module; resampling loads scipy and scikit-image
    from c2fnas_auto.preprocessing.resampling import compute_new_shape

    check_spacing(spacing_zyx, where)
    forward = [int(a) for a in plans.transpose_forward]
    new_shape = compute_new_shape([int(shape_zyx[a]) for a in forward], [float(spacing_zyx[a]) for a in forward],
                                  plans.target_spacing)
    check_resampled_size([int(n) for n in shape_zyx], new_shape, channels, where)
    return new_shape


def check_case_header(image_files: Sequence[Path], plans) -> None:
    """`check_case_grid` from the first file's header alone: before the case is read."""
    grid = header_grid(Path(image_files[0])) if image_files else None
    if grid is not None:
        check_case_grid(grid[0], grid[1], grid[2] * len(image_files), plans, str(image_files[0]))


def add_max_resampled_flag(parser: argparse.ArgumentParser) -> None:
    """--max-resampled-gb for the commands that resample images."""
    parser.add_argument("--max-resampled-gb", type=float, default=None, metavar="GB",
                        help="refuse an image whose resampled size would need more memory (default: "
                             f"{MEMORY_FRACTION:g} of this machine's physical memory)")


def apply_max_resampled_flag(args: argparse.Namespace) -> None:
    """Put the flag's bound where every worker process reads it."""
    if args.max_resampled_gb is not None:
        if not (np.isfinite(args.max_resampled_gb) and args.max_resampled_gb > 0):
            raise InputError(f"--max-resampled-gb {args.max_resampled_gb:g}: must be a positive number of GB")
        os.environ[MAX_RESAMPLED_ENV] = repr(float(args.max_resampled_gb))

"""Reading and writing medical images with their geometry.

Arrays are numpy order (z, y, x) (images: (C, z, y, x)); the Geometry keeps SimpleITK's
(x, y, z) order verbatim so a prediction can be written back onto exactly the grid it
came from. MSD multi-modal cases are single 4D NIfTI files: their fourth axis becomes
the channel axis and the geometry is that of the first three axes.

SimpleITK silently zero-fills truncated NIfTI files, so NIfTI inputs are checked for a
complete data block (and an intact gzip stream) before they are trusted.

NIfTI files with slightly skewed direction cosines (ITK refuses them) are read with
nibabel and processed on the nearest orthonormal grid; a warning says so once per file
with the size of the change, and the file's own affine travels in
`Geometry.original_affine`, so a prediction is written back with the input's header.

nibabel is imported inside the functions that read or write NIfTI through it: about 0.3 s of
start-up that other formats, and c2fnas_make_synthetic_task --help, need not pay.
"""

from __future__ import annotations

import logging
import os
import re
import zlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from c2fnas_auto.data.geometry import Geometry
from c2fnas_auto.data.nifti_header import affine_of_grid, warn_if_affines_disagree
from c2fnas_auto.errors import InputError
from c2fnas_auto.utils.io import atomic_path

IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
NIFTI_ENDINGS = (".nii", ".nii.gz")
ORTHONORMAL_ATOL = 1e-6  # direction-cosine change below which the nibabel fallback changed nothing

log = logging.getLogger(__name__)
_warned_skewed: set[str] = set()  # files already reported in this process (warn once per case)


def file_ending(path: str | Path) -> str:
    """The image ending of `path` ('.nii.gz' counts as one), or its last suffix."""
    name = Path(path).name.lower()
    for ending in IMAGE_ENDINGS:
        if name.endswith(ending):
            return ending
    return Path(path).suffix


def strip_ending(path: str | Path) -> str:
    """File name without its image ending: 'a/case_001.nii.gz' -> 'case_001'."""
    name = Path(path).name
    return name[: len(name) - len(file_ending(name))] if file_ending(name) else name


@dataclass(frozen=True)
class ImageInfo:
    """Header facts of an image file, read without loading the voxels."""

    dimension: int
    size: tuple[int, ...]  # SimpleITK order (x, y, z[, c])
    geometry: Geometry | None  # None for images that are not 3D/4D
    pixel_type: str

    @property
    def shape_zyx(self) -> tuple[int, ...]:
        return tuple(reversed(self.size[:3]))

    @property
    def num_channels(self) -> int:
        return int(self.size[3]) if self.dimension == 4 else 1


def _sitk_reason(exc: Exception, path: Path) -> str:
    """The useful last line of a SimpleITK exception (without source-file noise or the path)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    reason = next((ln.split("ERROR:", 1)[-1].strip() for ln in reversed(lines) if "ERROR" in ln),
                  lines[-1] if lines else type(exc).__name__)
    reason = re.sub(r"\w*ImageIO\(0x[0-9a-fA-F]+\):\s*", "", reason)
    return _without_path(reason, path)


def _without_path(text: str, path: Path) -> str:
    """Messages start with the path already; drop its repetitions inside library errors."""
    text = text.replace(f' for "{path}"', "").replace(f"File {path}", "file")
    return text.replace(f'"{path}"', "the file").replace(str(path), "the file")


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise InputError(f"{path}: file not found")


def _gzip_stream_length(path: Path) -> int:
    """Uncompressed length of a (possibly multi-member) gzip file.

    zlib checks each member's CRC and length trailer; a stream that stops inside a
    member or fails its CRC raises InputError.
    """
    total = 0
    inflater = zlib.decompressobj(wbits=31)
    inside_member = False
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                while chunk:
                    inside_member = True
                    total += len(inflater.decompress(chunk))
                    if not inflater.eof:
                        break
                    chunk, inside_member = inflater.unused_data, False
                    inflater = zlib.decompressobj(wbits=31)
                    if not chunk.strip(b"\0"):  # zero padding after the last member
                        chunk = b""
    except zlib.error as exc:
        raise InputError(f"{path}: truncated or corrupt file ({exc})") from None
    if inside_member:
        raise InputError(f"{path}: truncated or corrupt file (compressed stream ends early)")
    return total


def check_complete(path: str | Path, thorough: bool = False) -> None:
    """Raise InputError when a NIfTI file is truncated or (thorough) its gzip stream is corrupt.

    SimpleITK reads such files without complaint (missing voxels become zeros), which
    would silently corrupt training data or predictions. The fast check compares the
    gzip trailer's recorded length with the header's data size (a cut file ends in
    compressed bytes, so this misses a truncation with odds of 2**-32); `thorough`
    inflates the whole stream and verifies its CRC (the integrity check does this once).
    """
    path = Path(path)
    ending = file_ending(path)
    if ending not in (".nii", ".nii.gz"):
        return
    try:
        # start-up: see the module docstring
        import nibabel as nib

        nii = nib.load(str(path))
        offset = int(getattr(nii.dataobj, "offset", 0))
        expected = offset + int(np.prod(nii.header.get_data_shape())) * nii.header.get_data_dtype().itemsize
    except Exception as exc:  # nibabel's own errors vary by failure
        raise InputError(f"{path}: unreadable NIfTI header ({_without_path(str(exc), path)})") from None
    if ending == ".nii":
        actual = path.stat().st_size
    else:
        with open(path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            recorded = int.from_bytes(fh.read(4), "little")
        if recorded == expected % (1 << 32) and not thorough:
            return
        actual = _gzip_stream_length(path)
    if actual < expected:
        raise InputError(f"{path}: truncated file ({actual} of {expected} bytes)")


def count_nonfinite(path: str | Path, array: np.ndarray | None = None) -> int:
    """Number of NaN/inf voxels stored in `path`.

    ITK's NIfTI reader turns NaN and inf into 0, so for float NIfTI files the stored
    values are inspected with nibabel; other formats keep them, and `array` (the
    voxels as SimpleITK read them) is checked instead.
    """
    path = Path(path)
    if file_ending(path) in (".nii", ".nii.gz"):
        # start-up: see the module docstring
        import nibabel as nib

        nii = nib.load(str(path))
        if nii.header.get_data_dtype().kind != "f":
            return 0
        values = np.asanyarray(nii.dataobj)
        return int(values.size - np.count_nonzero(np.isfinite(values)))
    if array is None or not np.issubdtype(array.dtype, np.floating):
        return 0
    return int(array.size - np.count_nonzero(np.isfinite(array)))


def read_image_info(path: str | Path) -> ImageInfo:
    """Dimension, size and geometry from the header only (fast; used by the integrity check)."""
    path = Path(path)
    _require_file(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        check_complete(path, thorough=True)  # a more precise message for damaged NIfTI
        raise InputError(f"{path}: cannot read image ({_sitk_reason(exc, path)})") from None
    dim = reader.GetDimension()
    geometry = None
    if dim == 3:
        geometry = Geometry(reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())
    elif dim == 4:
        d = np.array(reader.GetDirection()).reshape(4, 4)[:3, :3]
        geometry = Geometry(reader.GetSpacing()[:3], reader.GetOrigin()[:3], tuple(d.ravel()))
    return ImageInfo(dimension=dim, size=tuple(reader.GetSize()), geometry=geometry,
                     pixel_type=sitk.GetPixelIDValueAsString(reader.GetPixelID()))


def _read_sitk(path: Path) -> tuple[sitk.Image, np.ndarray | None]:
    """The image, and the file's own affine when the nibabel fallback had to change it."""
    _require_file(path)
    check_complete(path)
    affine = None
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        fallback = _read_nifti_with_nibabel(path) if file_ending(path) in NIFTI_ENDINGS else None
        if fallback is None:
            raise InputError(f"{path}: cannot read image ({_sitk_reason(exc, path)})") from None
        img, affine = fallback
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: vector/RGB pixels are not supported (one scalar per voxel expected)")
    return img, affine


_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def _read_nifti_with_nibabel(path: Path) -> tuple[sitk.Image, np.ndarray | None] | None:
    """Fallback for NIfTI files ITK refuses (e.g. a slightly non-orthonormal sform, seen in
    some MSD releases): take nibabel's affine, orthonormalise it and convert RAS -> LPS.
    Returns the image on the orthonormal grid and the file's own affine (RAS) when it had to
    be changed (else None)."""
    try:
        # start-up: see the module docstring
        import nibabel as nib

        nii = nib.load(str(path))
        data = np.asanyarray(nii.dataobj)
        affine = np.asarray(nii.affine, dtype=np.float64)
    except Exception:  # any nibabel failure means: the original SimpleITK error stands
        return None
    if data.ndim not in (3, 4):
        return None
    cols = _RAS_TO_LPS @ affine[:3, :3]
    spacing = np.linalg.norm(cols, axis=0)
    if np.any(spacing <= 0):
        return None
    u, _, vt = np.linalg.svd(cols / spacing)
    direction = u @ vt
    origin = _RAS_TO_LPS @ affine[:3, 3]
    cosine, mm = skew_change(cols, spacing, direction, data.shape[:3])
    if cosine > ORTHONORMAL_ATOL:
        _warn_skew_once(path, cosine, mm)
    else:  # ITK refused it for another reason: nothing was changed, nothing to keep
        affine = None
    # nibabel indexes (i, j, k[, t]); SimpleITK arrays are (z, y, x) = (k, j, i).
    arr = np.ascontiguousarray(np.transpose(data, tuple(reversed(range(data.ndim)))))
    if data.ndim == 3:
        img = Geometry(tuple(spacing), tuple(origin), tuple(direction.ravel())).apply_to(sitk.GetImageFromArray(arr))
        return img, affine
    img = sitk.GetImageFromArray(arr, isVector=False)
    d4 = np.eye(4)
    d4[:3, :3] = direction
    img.SetSpacing((*spacing, 1.0))
    img.SetOrigin((*origin, 0.0))
    img.SetDirection(tuple(d4.ravel()))
    return img, affine


def skew_change(cols: np.ndarray, spacing: np.ndarray, direction: np.ndarray,
                shape: Sequence[int]) -> tuple[float, float]:
    """(largest direction-cosine change, largest shift in mm of a corner voxel) between the
    file's grid and its orthonormalised version: how much processing moves the image."""
    cosine = float(np.abs(cols / spacing - direction).max())
    corners = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)], dtype=np.float64)
    shift = (cols - direction * spacing) @ corners.T
    return cosine, float(np.linalg.norm(shift, axis=0).max())


def _warn_skew_once(path: Path, cosine: float, mm: float) -> None:
    key = str(Path(path).resolve())
    if key in _warned_skewed:
        return
    _warned_skewed.add(key)
    log.warning("%s: direction cosines are not orthonormal; processing on the nearest orthonormal grid "
                "(largest cosine change %.2g, voxels move by up to %.3g mm); predictions keep the file's "
                "own affine", path, cosine, mm)


def read_volume(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """One file as it is: (z, y, x) for 3D, (C, z, y, x) for 4D, with its 3D geometry.

    Other dimensionalities raise InputError (the integrity check's 'not 3D' message).
    """
    path = Path(path)
    img, affine = _read_sitk(path)
    dim = img.GetDimension()
    if dim not in (3, 4):
        raise InputError(f"{path}: image is {dim}D with size {img.GetSize()}, expected a 3D volume")
    geometry = Geometry.from_sitk(img)
    if affine is not None:
        geometry = dataclasses.replace(geometry, original_affine=tuple(affine.ravel()))
    elif file_ending(path) in NIFTI_ENDINGS:
        warn_if_affines_disagree(path, affine_of_grid(geometry.spacing, geometry.origin, geometry.direction))
    return sitk.GetArrayFromImage(img), geometry


def read_image(files: Sequence[str | Path] | str | Path) -> tuple[np.ndarray, Geometry]:
    """Channels of one case as float32 (C, z, y, x) plus the geometry of the first file.

    `files` is one 3D file per channel (nnU-Net layout) or a single 4D file whose last
    axis holds the channels (MSD multi-modal).
    """
    if isinstance(files, (str, Path)):
        files = [files]
    files = [Path(f) for f in files]
    if not files:
        raise InputError("read_image: no image files given")
    channels: list[np.ndarray] = []
    geometry: Geometry | None = None
    for f in files:
        arr, geo = read_volume(f)
        if arr.ndim == 4:
            if len(files) > 1:
                raise InputError(f"{f}: 4D image given as one of several channel files (expected 3D)")
            channels.extend(arr)
        else:
            channels.append(arr)
        if geometry is None:
            geometry = geo
        elif channels[-1].shape != channels[0].shape:
            raise InputError(f"{f}: channel shape {channels[-1].shape} differs from {files[0].name} "
                             f"{channels[0].shape}")
        elif (problem := geometry.matches(geo)) is not None:
            raise InputError(f"{f}: channel grid differs from {files[0].name}: {problem}")
    data = np.stack(channels).astype(np.float32, copy=False)
    assert geometry is not None
    return data, geometry


def read_segmentation(file: str | Path) -> tuple[np.ndarray, Geometry]:
    """A label map as int16 (z, y, x); non-integer or out-of-range values raise InputError."""
    file = Path(file)
    arr, geometry = read_volume(file)
    if arr.ndim != 3:
        raise InputError(f"{file}: segmentation is 4D (shape {arr.shape}), expected a 3D label map")
    if np.issubdtype(arr.dtype, np.floating):
        if count_nonfinite(file, arr):
            raise InputError(f"{file}: segmentation contains NaN or inf values")
        if not np.array_equal(arr, np.round(arr)):
            raise InputError(f"{file}: segmentation contains non-integer values")
    if arr.size and (arr.min() < np.iinfo(np.int16).min or arr.max() > np.iinfo(np.int16).max):
        raise InputError(f"{file}: segmentation values {arr.min()}..{arr.max()} do not fit int16")
    return arr.astype(np.int16, copy=False), geometry


def _write(img: sitk.Image, out_file: Path) -> None:
    ending = file_ending(out_file) or None
    with atomic_path(out_file, suffix=ending) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=ending in (".nii.gz", ".nrrd", ".mha"))


def write_segmentation(array: np.ndarray, geometry: Geometry, out_file: str | Path) -> None:
    """Write a (z, y, x) label map atomically with exactly `geometry` (uint8 when it fits).

    A geometry carrying an `original_affine` (a skewed NIfTI input) is written as NIfTI with
    that affine as its sform, so the prediction has the input's header, and the orthonormal
    grid as its qform, so ITK-based tools (which refuse skewed sforms) can still read it."""
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"write_segmentation expects a (z, y, x) array, got shape {array.shape}")
    if array.size and array.min() >= 0 and array.max() <= 255:
        array = array.astype(np.uint8, copy=False)
    else:
        array = array.astype(np.int16, copy=False)
    out_file = Path(out_file)
    if geometry.original_affine is not None and file_ending(out_file) in NIFTI_ENDINGS:
        _write_nifti_with_affine(array, geometry, out_file)
        return
    _write(geometry.apply_to(sitk.GetImageFromArray(array)), out_file)


def _write_nifti_with_affine(array: np.ndarray, geometry: Geometry, out_file: Path) -> None:
    # start-up: see the module docstring
    import nibabel as nib

    affine = np.asarray(geometry.original_affine, dtype=np.float64).reshape(4, 4)
    ortho = np.eye(4)
    ortho[:3, :3] = _RAS_TO_LPS @ (np.asarray(geometry.direction).reshape(3, 3) * np.asarray(geometry.spacing))
    ortho[:3, 3] = _RAS_TO_LPS @ np.asarray(geometry.origin)
    nii = nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), affine)
    nii.set_sform(affine, code=1)
    nii.set_qform(ortho, code=1)
    with atomic_path(out_file, suffix=file_ending(out_file)) as tmp:
        nib.save(nii, str(tmp))


def write_image(array: np.ndarray, geometry: Geometry, out_file: str | Path) -> None:
    """Write a (z, y, x) volume, or (C, z, y, x) as one 4D file (MSD multi-modal), atomically."""
    array = np.asarray(array)
    if array.ndim == 3:
        img = geometry.apply_to(sitk.GetImageFromArray(array))
    elif array.ndim == 4:
        img = sitk.GetImageFromArray(array, isVector=False)
        direction = np.eye(4)
        direction[:3, :3] = np.array(geometry.direction).reshape(3, 3)
        img.SetSpacing((*geometry.spacing, 1.0))
        img.SetOrigin((*geometry.origin, 0.0))
        img.SetDirection(tuple(direction.ravel()))
    else:
        raise ValueError(f"write_image expects (z, y, x) or (C, z, y, x), got shape {array.shape}")
    _write(img, Path(out_file))

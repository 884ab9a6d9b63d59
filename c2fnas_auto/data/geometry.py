"""Where a voxel grid lies in space (spacing, origin, direction), kept in SimpleITK's (x, y, z)
order so a prediction is written back onto exactly the grid its input came from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class Geometry:
    """Physical placement of a 3D voxel grid, in SimpleITK (x, y, z) order."""

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, row-major 3x3
    # A NIfTI input's own 4x4 affine (nibabel's RAS, row-major) when it was not orthonormal:
    # spacing/origin/direction above are the nearest orthonormal grid used for processing,
    # this is what a prediction is written back with. None for every ordinary image.
    original_affine: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "spacing", tuple(float(v) for v in self.spacing))
        object.__setattr__(self, "origin", tuple(float(v) for v in self.origin))
        object.__setattr__(self, "direction", tuple(float(v) for v in self.direction))
        if len(self.spacing) != 3 or len(self.origin) != 3 or len(self.direction) != 9:
            raise ValueError(f"Geometry needs 3 spacings, 3 origin values and 9 direction values, got "
                             f"{len(self.spacing)}, {len(self.origin)}, {len(self.direction)}")
        if self.original_affine is not None:
            affine = tuple(float(v) for v in np.ravel(self.original_affine))
            if len(affine) != 16:
                raise ValueError(f"Geometry.original_affine needs 16 values (4x4), got {len(affine)}")
            object.__setattr__(self, "original_affine", affine)

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Spacing in numpy (z, y, x) order, the order of every array and plans field."""
        return tuple(reversed(self.spacing))  # type: ignore[return-value]

    def to_dict(self) -> dict:
        out = {"spacing": list(self.spacing), "origin": list(self.origin), "direction": list(self.direction)}
        if self.original_affine is not None:
            out["original_affine"] = list(self.original_affine)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        return cls(spacing=d["spacing"], origin=d["origin"], direction=d["direction"],
                   original_affine=d.get("original_affine"))

    @classmethod
    def from_sitk(cls, img: sitk.Image) -> "Geometry":
        """Geometry of a 3D image, or of the first three axes of a 4D one."""
        dim = img.GetDimension()
        if dim == 3:
            return cls(img.GetSpacing(), img.GetOrigin(), img.GetDirection())
        if dim == 4:
            d = np.array(img.GetDirection()).reshape(4, 4)[:3, :3]
            return cls(img.GetSpacing()[:3], img.GetOrigin()[:3], tuple(d.ravel()))
        raise ValueError(f"cannot take a 3D geometry from a {dim}D image")

    def apply_to(self, img: sitk.Image) -> sitk.Image:
        """Set this geometry on a 3D image (in place) and return it."""
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img

    def matches(self, other: "Geometry", rtol: float = 1e-3) -> str | None:
        """None when both describe the same grid placement, else which part differs.

        Spacing is compared relatively; origin to within `rtol` of the largest spacing
        (a sub-voxel shift is not a different grid); direction cosines absolutely.
        """
        if not np.allclose(self.spacing, other.spacing, rtol=rtol, atol=0.0):
            return f"spacing {_fmt(self.spacing)} vs {_fmt(other.spacing)}"
        tol = rtol * max(max(self.spacing), 1e-6)
        if not np.allclose(self.origin, other.origin, rtol=rtol, atol=tol):
            return f"origin {_fmt(self.origin)} vs {_fmt(other.origin)}"
        if not np.allclose(self.direction, other.direction, rtol=0.0, atol=rtol):
            return f"direction {_fmt(self.direction)} vs {_fmt(other.direction)}"
        return None


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"

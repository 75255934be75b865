"""Slice planes of the model frame, in ITK's LPS physical space (pure numpy).

A 2D model sees slices of a *model frame*: a grid whose columns, rows and slices run along fixed
anatomical directions, so the same anatomy looks the same whatever the scanner's orientation.
Training (``synth``) and inference (``preprocess``) both take their slices from here, so the pixel
layout cannot drift between them.

Direction columns (LPS: +x = patient Left, +y = Posterior, +z = Superior):

===========  ==================  ===================  ================
plane        column (i) runs to  row (j) runs to      slice (k) runs to
===========  ==================  ===================  ================
sagittal     Posterior           Inferior             Left
coronal      Left                Inferior             Posterior
axial        Left                Posterior            Superior
===========  ==================  ===================  ================

An array taken from a model-frame image with SimpleITK has shape (slices, rows, cols).
"""

from dataclasses import dataclass

import numpy as np

PLANES = ("sagittal", "coronal", "axial")

_DIRECTIONS = {
    #             column            row               slice
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (1.0, 0.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0)),
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
}


def check_plane(plane: str) -> str:
    if plane not in _DIRECTIONS:
        raise ValueError(f"unknown slice plane {plane!r}; expected one of {', '.join(PLANES)}")
    return plane


def plane_direction(plane: str) -> np.ndarray:
    """3x3 matrix whose columns are the physical directions of the (column, row, slice) axes."""
    return np.array(_DIRECTIONS[check_plane(plane)], dtype=float).T


def frame_origin(centre, plane: str, size: int, pixel_mm: float, n_slices: int, slice_mm: float) -> np.ndarray:
    """Physical position of voxel (0, 0, 0) of a model frame centred on ``centre``."""
    d = plane_direction(plane)
    half = np.array([(size - 1) / 2.0 * pixel_mm, (size - 1) / 2.0 * pixel_mm, (n_slices - 1) / 2.0 * slice_mm])
    return np.asarray(centre, dtype=float) - d @ half


def frame_points(centre, plane: str, size: int, pixel_mm: float, slice_offsets_mm) -> np.ndarray:
    """Physical LPS points of a stack of model-frame slices: shape (len(offsets), size, size, 3).

    ``slice_offsets_mm`` are signed distances of each slice from ``centre`` along the slice axis.
    """
    d = plane_direction(plane)
    coords = (np.arange(size) - (size - 1) / 2.0) * pixel_mm
    offsets = np.asarray(slice_offsets_mm, dtype=float)
    cols = coords[None, None, :, None] * d[:, 0]
    rows = coords[None, :, None, None] * d[:, 1]
    slices = offsets[:, None, None, None] * d[:, 2]
    return np.asarray(centre, dtype=float) + cols + rows + slices


@dataclass(frozen=True)
class VoxelGrid:
    """Where the voxels of an array lie in LPS space: ``origin`` (voxel 0), ``spacing`` and ``direction``
    (3x3, columns = the physical directions of the i, j, k axes), as in a SimpleITK image."""

    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray

    @classmethod
    def of_image(cls, image) -> "VoxelGrid":
        return cls(np.array(image.GetOrigin()), np.array(image.GetSpacing()),
                   np.array(image.GetDirection()).reshape(3, 3))

    def points(self, index_kji: np.ndarray) -> np.ndarray:
        """LPS points (n, 3) of voxel indices (n, 3) given in numpy (k, j, i) order."""
        return self.origin + (index_kji[:, ::-1] * self.spacing) @ self.direction.T

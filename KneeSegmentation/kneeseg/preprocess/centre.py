"""The knee centre: the point the model frame's windows are placed on.

One label-based definition, :func:`knee_centre`: where femur and tibia meet, the mean of the femur
voxels nearest to the tibia and the tibia voxels nearest to the femur. Synthesis centres its views on
it (the label-map cache), paired training its frames (the user's label maps), and inference the
frames of its scan on the labels of the model's coarse first pass (``infer.detect_knee_centre``).
Without any labels: the centre of the field of view (:func:`image_centre`) or the body centroid
(:func:`centre_by_intensity`).
"""

import numpy as np

from ..geometry import VoxelGrid
from .frame import physical_bounds
from .intensity import foreground_mask

MAX_POINTS = 20000  # per bone: the junction of a random sample of the voxels, without a huge KD-tree
NEAREST_FRACTION = 0.05  # the share of each bone's points nearest to the other bone that marks the joint


def knee_centre(labels: np.ndarray, grid: VoxelGrid, femur: int, tibia: int, min_voxels: int = 1):
    """The femur-tibia junction of a label array (numpy k-j-i on ``grid``) in LPS mm, or None when
    femur or tibia has fewer than ``min_voxels`` voxels."""
    rng = np.random.default_rng(0)
    points = []
    for value in (femur, tibia):
        index = np.argwhere(labels == value)
        if len(index) < min_voxels:
            return None
        if len(index) > MAX_POINTS:
            index = index[rng.choice(len(index), MAX_POINTS, replace=False)]
        points.append(grid.points(index))
    return junction_point(*points)


def junction_point(femur_points, tibia_points, fraction=NEAREST_FRACTION):
    """Where femur and tibia meet: mean of each bone's points nearest to the other (LPS mm)."""
    from scipy.spatial import cKDTree

    d_femur, _ = cKDTree(tibia_points).query(femur_points)
    d_tibia, _ = cKDTree(femur_points).query(tibia_points)
    near_femur = femur_points[d_femur <= np.quantile(d_femur, fraction)]
    near_tibia = tibia_points[d_tibia <= np.quantile(d_tibia, fraction)]
    return tuple((near_femur.mean(axis=0) + near_tibia.mean(axis=0)) / 2)


def knee_centre_or_bone_centroid(labels: np.ndarray, grid: VoxelGrid, femur: int, tibia: int, bones=None):
    """:func:`knee_centre`, or the centroid of all bone (``bones``: their label values, default every
    non-zero one) when femur or tibia is missing; None without any bone."""
    centre = knee_centre(labels, grid, femur, tibia)
    if centre is not None:
        return centre
    bone = np.argwhere(labels > 0 if bones is None else np.isin(labels, bones))
    return tuple(grid.points(bone.mean(axis=0)[None])[0]) if len(bone) else None


def knee_centre_from_labels(labelmap, femur=1, tibia=2):
    """The knee centre of a SimpleITK label map: its femur-tibia junction, else its bone centroid,
    else the centre of its grid."""
    import SimpleITK as sitk

    centre = knee_centre_or_bone_centroid(sitk.GetArrayViewFromImage(labelmap), VoxelGrid.of_image(labelmap),
                                          femur, tibia)
    return image_centre(labelmap) if centre is None else centre


def image_centre(image):
    """Physical centre of the image's voxel grid."""
    return tuple(physical_bounds(image).mean(axis=0))


def centre_by_intensity(image):
    """Knee centre from intensities alone: the centroid of the body (Otsu foreground) in LPS mm.

    Knee scans are centred on the joint by the radiographer; the body centroid corrects for an
    off-centre field of view (on real scans the field of view's centre was closer to the joint:
    ``infer.find_centre``).
    """
    import SimpleITK as sitk

    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(foreground_mask(image), sitk.sitkUInt8))
    if not stats.HasLabel(1):
        return image_centre(image)
    return tuple(stats.GetCentroid(1))

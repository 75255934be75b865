"""Post-processing of label maps (numpy/scipy): one piece per bone, holes filled, volumes in mL."""

import numpy as np
from scipy import ndimage


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean mask (empty stays empty)."""
    labelled, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    return labelled == int(np.argmax(sizes))


def clean_labelmap(labelmap: np.ndarray, label_values, fill_holes: bool = True) -> np.ndarray:
    """Keep each bone's largest connected component and fill its holes (never over another bone)."""
    out = np.zeros_like(labelmap)
    for value in label_values:
        mask = labelmap == value
        if not mask.any():
            continue
        box = ndimage.find_objects(mask.astype(np.uint8))[0]
        sub = keep_largest_component(mask[box])
        if fill_holes:
            sub = ndimage.binary_fill_holes(sub)
        region = out[box]
        region[sub & (region == 0)] = value
    return out


def bone_volumes_ml(labelmap: np.ndarray, spacing_mm, labels) -> dict:
    """Volume of each bone in millilitres."""
    if not labels:
        return {}
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    counts = np.bincount(labelmap.ravel(), minlength=max(label.value for label in labels) + 1)
    return {label.name: round(float(counts[label.value]) * voxel_ml, 3) for label in labels}

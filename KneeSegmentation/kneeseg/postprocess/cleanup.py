"""Clean-up of a label map (numpy/scipy): one piece per bone, holes filled, volumes in mL."""

import numpy as np
from scipy import ndimage


def _components(mask: np.ndarray, full: bool):
    """(component labels, count) of a boolean mask: 26- (``full``) or 6-connected.

    SimpleITK's multi-threaded labelling (3-4x faster than scipy's on 2 cores) when installed.
    """
    try:
        import SimpleITK as sitk
    except ImportError:
        structure = np.ones((3,) * mask.ndim, dtype=bool) if full else None
        return ndimage.label(mask, structure=structure)
    labeller = sitk.ConnectedComponentImageFilter()
    labeller.SetFullyConnected(full)
    labelled = labeller.Execute(sitk.GetImageFromArray(np.ascontiguousarray(mask).view(np.uint8)))
    return sitk.GetArrayFromImage(labelled), labeller.GetObjectCount()


def keep_largest_component(mask: np.ndarray, pieces: list = None) -> np.ndarray:
    """The largest 26-connected component of a boolean mask (empty stays empty).

    ``pieces``: a list to receive the voxel count of every component, largest first."""
    mask = mask.astype(bool, copy=False)
    labelled, n = _components(mask, full=True)
    if n <= 1:
        if pieces is not None:
            pieces.extend([int(np.count_nonzero(mask))] if n else [])
        return mask.copy()
    sizes = np.bincount(labelled.ravel(), minlength=n + 1)
    sizes[0] = 0
    if pieces is not None:
        pieces.extend(int(v) for v in sorted(sizes[1:], reverse=True))
    return labelled == int(np.argmax(sizes))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes`` (6-connected background), by one labelling of the background.

    Background components that touch the array border stay background; all others are holes. Same
    result as scipy's iterative dilation, 10-30x faster on large masks (docs/benchmarks.md).
    """
    mask = mask.astype(bool, copy=False)
    background, n = _components(~mask, full=False)
    if n == 0:
        return mask.copy()
    outside = np.zeros(n + 1, dtype=bool)
    for axis in range(mask.ndim):
        for end in (0, -1):
            outside[np.take(background, end, axis=axis)] = True
    outside[0] = True  # the mask itself
    return mask | ~outside[background]


def clean_labelmap(labelmap: np.ndarray, label_values, fill: bool = True, pieces: dict = None) -> np.ndarray:
    """Keep each bone's largest connected component and (``fill``) fill its holes, never over another bone.

    ``pieces``: a dict to receive, per label value, the voxel counts of its connected pieces before the
    clean-up, largest first (empty for a bone that is absent)."""
    out = np.zeros_like(labelmap)
    for value in label_values:
        mask = labelmap == value
        sizes = []
        if pieces is not None:
            pieces[value] = sizes
        if not mask.any():
            continue
        box = ndimage.find_objects(mask.astype(np.uint8))[0]
        sub = keep_largest_component(mask[box], sizes)
        inner = ndimage.find_objects(sub.astype(np.uint8))[0]  # the kept piece's own box: holes lie inside it
        box = tuple(slice(b.start + i.start, b.start + i.stop) for b, i in zip(box, inner))
        sub = sub[inner]
        if fill:
            sub = fill_holes(sub)
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

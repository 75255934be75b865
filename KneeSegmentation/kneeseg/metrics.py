"""Scores of a segmentation against the truth: per-class overlap (numpy) and surface distances in mm
(MedPy, SimpleITK).

``overlap_scores`` counts voxels; ``surface_distances`` uses MedPy's ``assd`` and ``hd95`` (a
maintained library) with the voxel spacing, and the *signed* mean surface distance from SimpleITK's
signed Maurer distance map (negative: the prediction lies inside the truth, too thin; positive:
outside, too thick), which says which way a segmentation is biased where ASSD only says by how much;
``summarise`` takes them over cases. The evaluation runs
that produce them are ``workflows.evaluate``.
"""

import numpy as np


def overlap_scores(truth: np.ndarray, prediction: np.ndarray, value: int) -> dict:
    """Accuracy, precision, recall, Dice and IoU of one label value. Empty-vs-empty scores 1."""
    t = truth == value
    p = prediction == value
    tp = float(np.count_nonzero(t & p))
    fp = float(np.count_nonzero(~t & p))
    fn = float(np.count_nonzero(t & ~p))
    tn = float(t.size) - tp - fp - fn

    def ratio(num, den):
        return 1.0 if den == 0 else num / den

    return {"accuracy": (tp + tn) / t.size, "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
            "dice": ratio(2 * tp, 2 * tp + fp + fn), "iou": ratio(tp, tp + fp + fn),
            "volume_ratio": (tp + fp) / (tp + fn) if tp + fn else float("nan"),
            "truth_voxels": int(tp + fn), "predicted_voxels": int(tp + fp)}


def surface_distances(truth: np.ndarray, prediction: np.ndarray, value: int, spacing_mm) -> dict:
    """ASSD and HD95 in mm (MedPy). NaN when either mask is empty. ``spacing_mm`` in numpy axis order."""
    from medpy.metric import binary

    t, p = truth == value, prediction == value
    if not t.any() or not p.any():
        return {"assd_mm": float("nan"), "hd95_mm": float("nan"), "signed_surface_mm": float("nan")}
    return {"assd_mm": float(binary.assd(p, t, voxelspacing=spacing_mm)),
            "hd95_mm": float(binary.hd95(p, t, voxelspacing=spacing_mm)),
            "signed_surface_mm": signed_surface_distance(t, p, spacing_mm)}


def signed_surface_distance(truth: np.ndarray, prediction: np.ndarray, spacing_mm) -> float:
    """Mean signed distance (mm) between the surfaces of two boolean masks; ``spacing_mm`` in numpy axis order.

    Symmetric, like ASSD: the mean over the prediction's surface voxels of their signed distance to
    the truth's surface, and the mean over the truth's surface voxels of minus theirs to the
    prediction's, averaged. Negative: the prediction lies inside the truth; positive: outside (a mask
    grown by one voxel scores +1 spacing). Surfaces are the masks' 6-connected boundary voxels, the
    zero level of SimpleITK's signed Maurer distance map. Like MedPy's ASSD (nearest-voxel distances between
    staircase surfaces), it reads a known margin of a few voxels 10-20 % short; identical masks score 0.
    NaN when either mask is empty.
    """
    truth, prediction = np.asarray(truth, bool), np.asarray(prediction, bool)
    if not truth.any() or not prediction.any():
        return float("nan")
    # Every surface voxel of either mask lies in the box of their union: crop to it (plus one voxel).
    union = truth | prediction
    box = tuple(slice(max(int(idx.min()) - 1, 0), int(idx.max()) + 2) for idx in np.nonzero(union))
    truth, prediction = truth[box], prediction[box]
    into_truth = _signed_distance_map(truth, spacing_mm)[_surface(prediction, spacing_mm)].mean()
    into_prediction = _signed_distance_map(prediction, spacing_mm)[_surface(truth, spacing_mm)].mean()
    return float((into_truth - into_prediction) / 2.0)


def _as_sitk(mask: np.ndarray, spacing_mm):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(mask, dtype=np.uint8))
    image.SetSpacing([float(s) for s in tuple(spacing_mm)[::-1]])  # SimpleITK spacing runs x, y, z
    return image


def _signed_distance_map(mask: np.ndarray, spacing_mm) -> np.ndarray:
    import SimpleITK as sitk

    distance = sitk.SignedMaurerDistanceMap(_as_sitk(mask, spacing_mm), insideIsPositive=False,
                                            squaredDistance=False, useImageSpacing=True)
    return sitk.GetArrayFromImage(distance)


def _surface(mask: np.ndarray, spacing_mm) -> np.ndarray:
    import SimpleITK as sitk

    contour = sitk.BinaryContour(_as_sitk(mask, spacing_mm), fullyConnected=False)
    return sitk.GetArrayFromImage(contour).astype(bool)


def evaluate_case(truth, prediction, labels, spacing_mm=None) -> dict:
    """All scores of one case, per bone (and surface distances when ``spacing_mm`` is given)."""
    out = {}
    for label in labels:
        scores = overlap_scores(truth, prediction, label.value)
        if spacing_mm is not None:
            scores.update(surface_distances(truth, prediction, label.value, spacing_mm))
        out[label.name] = scores
    return out


LOWER_IS_BETTER = ("assd_mm", "hd95_mm")
BEST_AT_ZERO = ("signed_surface_mm",)  # signed biases: the worst is the farthest from 0


def summarise(cases: list, labels, key="dice") -> dict:
    """Per bone over the cases where it is in the truth: mean, median, worst, n.

    For distances (``assd_mm``, ``hd95_mm``) the worst is the largest, for signed ones
    (``signed_surface_mm``) the farthest from zero; a case where the bone was not found at all has
    no distance: it is counted in ``missed`` and left out of the statistics.
    """
    summary = {}
    for label in labels:
        values = np.array([c[label.name][key] for c in cases if c[label.name]["truth_voxels"] > 0], dtype=float)
        if not len(values):
            continue
        found = values[~np.isnan(values)]
        entry = {"n": int(len(values)), "missed": int(np.isnan(values).sum())}
        if len(found):
            if key in BEST_AT_ZERO:
                worst = found[np.argmax(np.abs(found))]
            else:
                worst = found.max() if key in LOWER_IS_BETTER else found.min()
            entry.update(mean=float(found.mean()), median=float(np.median(found)), worst=float(worst))
        summary[label.name] = entry
    means = [s["mean"] for s in summary.values() if "mean" in s]
    if means:
        summary["mean_over_bones"] = float(np.mean(means))
    return summary

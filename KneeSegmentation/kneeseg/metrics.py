"""Scores of a segmentation against the truth: per-class overlap (numpy) and surface distances in mm (MedPy).

``overlap_scores`` counts voxels; ``surface_distances`` uses MedPy's ``assd`` and ``hd95`` (a
maintained library) with the voxel spacing; ``summarise`` takes them over cases. The evaluation runs
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
            "truth_voxels": int(tp + fn), "predicted_voxels": int(tp + fp)}


def surface_distances(truth: np.ndarray, prediction: np.ndarray, value: int, spacing_mm) -> dict:
    """ASSD and HD95 in mm (MedPy). NaN when either mask is empty. ``spacing_mm`` in numpy axis order."""
    from medpy.metric import binary

    t, p = truth == value, prediction == value
    if not t.any() or not p.any():
        return {"assd_mm": float("nan"), "hd95_mm": float("nan")}
    return {"assd_mm": float(binary.assd(p, t, voxelspacing=spacing_mm)),
            "hd95_mm": float(binary.hd95(p, t, voxelspacing=spacing_mm))}


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


def summarise(cases: list, labels, key="dice") -> dict:
    """Per bone over the cases where it is in the truth: mean, median, worst, n.

    For distances (``assd_mm``, ``hd95_mm``) the worst is the largest; a case where the bone was not
    found at all has no distance: it is counted in ``missed`` and left out of the statistics.
    """
    summary = {}
    for label in labels:
        values = np.array([c[label.name][key] for c in cases if c[label.name]["truth_voxels"] > 0], dtype=float)
        if not len(values):
            continue
        found = values[~np.isnan(values)]
        entry = {"n": int(len(values)), "missed": int(np.isnan(values).sum())}
        if len(found):
            worst = found.max() if key in LOWER_IS_BETTER else found.min()
            entry.update(mean=float(found.mean()), median=float(np.median(found)), worst=float(worst))
        summary[label.name] = entry
    means = [s["mean"] for s in summary.values() if "mean" in s]
    if means:
        summary["mean_over_bones"] = float(np.mean(means))
    return summary

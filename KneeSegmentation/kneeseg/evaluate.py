"""Evaluation: per-class overlap scores (numpy) and surface distances in mm (MedPy).

``overlap_scores`` counts voxels; ``surface_distances`` uses MedPy's ``assd`` and ``hd95`` (a
maintained library) with the voxel spacing. Data sets: labelled volume pairs, the real 2D sagittal
slices (``real_2d``), and synthetic held-out label maps.
"""

import numpy as np

from . import geometry

REAL2D_LABELS = {1: 1, 2: 2, 3: 4}  # real_2d femur, tibia, patella -> our Femur, Tibia, Patella
REAL2D_PIXEL_MM = 0.6  # no spacing survives in the PNG-derived slices; ~16 cm sagittal field of view


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


def slice_as_volume(slice_2d: np.ndarray, pixel_mm=REAL2D_PIXEL_MM):
    """A 2D sagittal slice (rows run inferior, columns posterior) as a one-slice 3D SimpleITK image."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(slice_2d[None].astype(np.float32))
    image.SetSpacing((pixel_mm, pixel_mm, pixel_mm))
    image.SetDirection(tuple(geometry.plane_direction("sagittal").flatten()))
    return image


def evaluate_real2d(bundle, npz_path, predictor=None, progress=None, centre="auto") -> dict:
    """Segment each real labelled sagittal slice and score femur, tibia and patella."""
    import SimpleITK as sitk

    from .infer import SegmentOptions, make_predictor, segment

    data = np.load(npz_path, allow_pickle=False)
    images, truths = data["images"], data["labels"]
    predictor = predictor or make_predictor(bundle)
    label_by_value = {label.value: label for label in bundle.labels}
    scored = [label_by_value[v] for v in REAL2D_LABELS.values() if v in label_by_value]
    cases = []
    for i in range(len(images)):
        truth = np.zeros_like(truths[i])
        for theirs, ours in REAL2D_LABELS.items():
            truth[truths[i] == theirs] = ours
        result = segment(slice_as_volume(images[i]), bundle, SegmentOptions(planes=("sagittal",), centre=centre),
                         predictor=predictor)
        prediction = sitk.GetArrayFromImage(result.labelmap)[0]
        if bundle.card.network.output == "merged":
            prediction, truth = (prediction > 0).astype(np.uint8), (truth > 0).astype(np.uint8)
        case = evaluate_case(truth, prediction, scored if len(bundle.labels) > 1 else bundle.labels)
        case["slice"] = int(data["slice_ids"][i]) if "slice_ids" in data else i
        cases.append(case)
        if progress is not None:
            progress("evaluate", (i + 1) / len(images), f"real 2D slice {i + 1}/{len(images)}")
    labels = scored if len(bundle.labels) > 1 else bundle.labels
    return {"dataset": str(npz_path), "n_slices": len(images), "pixel_mm_assumed": REAL2D_PIXEL_MM,
            "dice": summarise(cases, labels), "cases": cases}

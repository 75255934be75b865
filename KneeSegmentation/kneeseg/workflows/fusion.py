"""Fitting a bundle's tri-planar fusion weights on synthetic scans of its validation subjects.

:func:`fit_fusion` makes, for each label map of the subjects the bundle validated on, one synthetic scan
per plane with the generator settings its card records, runs every plane of the bundle on it, and fits
the per-class plane weights (``postprocess.plane_weights``) on the planes' probabilities against the
truth. The weights go into the card's ``fusion`` section, with how they were fitted; inference then
uses them (``kneeseg segment --fusion weighted``, the default). Test subjects are never used.
"""

import datetime
from pathlib import Path

import numpy as np

from .. import synth
from ..geometry import PLANES
from ..errors import InputError
from ..progress import NO_PROGRESS

FIT_SEED = 5000  # scans 5000 + 10 * map + plane: apart from the evaluation's seeds (1000+, 2000+)
VOXEL_STRIDE = 3


def plane_samples(bundle, image, truth, predictor):
    """:class:`~kneeseg.postprocess.plane_weights.PlaneSamples` of one labelled scan: every plane of
    the bundle's card predicted as ``segment`` predicts it, its bone probabilities interpolated onto
    the scan's grid."""
    import SimpleITK as sitk

    from ..infer import SegmentOptions, plane_predictions
    from ..postprocess.plane_weights import PlaneSamples

    _, frames, _ = plane_predictions(image, bundle, predictor, SegmentOptions(), bundle.card.frame.planes)
    last = np.array(image.GetSize()[::-1]) - 1
    planes_bones = [np.stack(frame.sample(np.zeros(3, int), last), axis=-1) for frame in frames]
    return PlaneSamples.from_planes(planes_bones, sitk.GetArrayFromImage(truth), VOXEL_STRIDE)


def fit_fusion(bundle_path, cache, step=0.1, write=True, progress=None) -> dict:
    """Fit ``bundle_path``'s fusion weights on its validation subjects' maps in the label-map ``cache``;
    returns the card's new ``fusion`` section (written into the card unless ``write`` is False)."""
    from ..bundle import load_bundle, update_card
    from ..infer import make_predictor
    from ..postprocess.plane_weights import MAX_PLANE_WEIGHT, fit_plane_weights

    progress = progress or NO_PROGRESS
    bundle = load_bundle(bundle_path)
    card = bundle.card
    if len(card.frame.planes) < 2:
        raise InputError("this bundle segments one plane only: there is nothing to fuse", bundle_path)
    subjects = set(card.validation_subjects)
    if not subjects:
        raise InputError("the bundle's card records no validation subjects to fit the fusion on", bundle_path)
    settings = (card.training.get("data") or {}).get("synthesis")
    if settings is None:
        raise InputError("the bundle's card records no synthesis settings (fitting needs a model trained on "
                         "synthetic scans)", bundle_path)
    config = synth.synthesis_config(settings)
    entries = [e for e in synth.load_manifest(cache)["files"] if e["subject"] in subjects]
    if not entries:
        raise InputError("none of the bundle's validation subjects is in this label-map cache", cache)
    runs = [(entry, FIT_SEED + 10 * i + j, plane) for i, entry in enumerate(entries)
            for j, plane in enumerate(PLANES)]
    runs += [(entry, FIT_SEED + 1000 + j, plane) for entry in entries if entry.get("has_fibula")
             for j, plane in enumerate(PLANES)]  # the rare fibula: a second scan per plane
    predictor = make_predictor(bundle)
    samples = []
    for n, (entry, seed, plane) in enumerate(runs):
        image, truth = synth.synthesize_volume(Path(cache) / entry["file"], seed=seed, plane=plane, config=config)
        samples.append(plane_samples(bundle, image, truth, predictor))
        progress("fit-fusion", 0.8 * (n + 1) / len(runs), f"scan {n + 1}/{len(runs)}: {entry['file']} ({plane})")
    progress("fit-fusion", 0.8, "fitting the weights")
    weights, fitted, plain = fit_plane_weights(samples, step=step)
    class_names = ["background"] + [label.name for label in card.labels]
    section = {
        "plane_weights": {plane: [round(float(w), 4) for w in weights[p]] for p, plane in enumerate(card.frame.planes)},
        "classes": class_names,
        "fitted": {"date": datetime.date.today().isoformat(), "subjects": sorted({e["subject"] for e in entries}),
                   "scans": len(runs), "voxel_stride": VOXEL_STRIDE, "grid_step": step,
                   "max_plane_weight": MAX_PLANE_WEIGHT, "seed": FIT_SEED,
                   "mean_dice_plain_mean": round(plain, 4), "mean_dice_weighted": round(fitted, 4),
                   "note": "per-class plane weights fitted on synthetic scans of the validation subjects "
                           "(coordinate ascent on mean Dice before clean-up, no plane above the other two "
                           "together); test subjects never used"}}
    if card.plane_reach != "off":  # the plane reach the card already sets stays: it is not fitted here
        section["plane_reach"] = card.plane_reach
    if write:
        update_card(bundle_path, fusion=section)
    return section

"""Evaluation as a use case: a bundle segments data it was not trained on, and is scored.

Three data sets: labelled volume pairs (:func:`evaluate_pairs`), the real labelled sagittal slices
(:func:`evaluate_real2d`) and synthetic scans of the bundle's held-out label maps
(:func:`evaluate_synthetic`). The scores themselves are ``metrics``.
"""

from pathlib import Path

import numpy as np

from .. import geometry, quality, synth
from ..datasets import find_pairs, load_pair
from ..errors import InputError
from ..infer import SegmentOptions, make_predictor, segment
from ..metrics import evaluate_case, summarise
from ..progress import NO_PROGRESS

REAL2D_LABELS = {1: 1, 2: 2, 3: 4}  # real_2d femur, tibia, patella -> our Femur, Tibia, Patella
REAL2D_PIXEL_MM = 0.6  # no spacing survives in the PNG-derived slices; ~16 cm sagittal field of view


def evaluate_pairs(bundle, data, progress=None, options=None) -> dict:
    """Segment labelled volumes with the bundle and score them (overlap and surface distances). ``data``:
    a folder or CSV of pairs, or a list of ``datasets.Pair`` (e.g. a cross-validation fold's)."""
    import SimpleITK as sitk

    progress = progress or NO_PROGRESS
    predictor = make_predictor(bundle)
    pairs = list(data) if isinstance(data, (list, tuple)) else find_pairs(data)
    cases = []
    for n, pair in enumerate(pairs):
        image, label = load_pair(pair)
        result = segment(image, bundle, options, predictor=predictor)
        truth = sitk.GetArrayFromImage(label)
        prediction = sitk.GetArrayFromImage(result.labelmap)
        if bundle.card.network.output == "merged":
            truth = (truth > 0).astype("uint8")
        case = evaluate_case(truth, prediction, bundle.labels, spacing_mm=image.GetSpacing()[::-1])
        case = _with_quality(case, result, bundle.labels)
        case["case"] = pair.subject
        cases.append(case)
        progress("evaluate", (n + 1) / len(pairs), f"case {n + 1}/{len(pairs)}: {pair.subject}")
    source = f"{len(pairs)} pairs ({', '.join(p.subject for p in pairs)})" if isinstance(data, (list, tuple)) else data
    return _report(cases, bundle.labels, str(source))


def _report(cases, labels, source):
    return {"dataset": source, "n_cases": len(cases), "dice": summarise(cases, labels, "dice"),
            "iou": summarise(cases, labels, "iou"), "assd_mm": summarise(cases, labels, "assd_mm"),
            "hd95_mm": summarise(cases, labels, "hd95_mm"),
            "signed_surface_mm": summarise(cases, labels, "signed_surface_mm"),
            "volume_ratio": summarise(cases, labels, "volume_ratio"),
            "quality": quality_vs_dice(cases), "cases": cases}


def case_mean_dice(case, labels):
    """A case's mean Dice over the bones in its truth or its prediction (a bone only one of them has
    scores 0: a missed bone and a false one are both errors); None when neither has any bone."""
    scores = [case[label.name]["dice"] for label in labels
              if case[label.name]["truth_voxels"] or case[label.name]["predicted_voxels"]]
    return float(np.mean(scores)) if scores else None


def _with_quality(case, result, labels):
    """``case`` with the segmentation's quality score, flag and reasons, and its mean Dice beside them."""
    if getattr(result, "quality", None) is not None:
        case.update(quality_score=result.quality.score, quality_flag=result.quality.flag,
                    quality_threshold=result.quality.threshold, quality_reasons=result.quality.reasons,
                    quality_components=result.quality.components, quality_measures=result.quality.measures)
    case["mean_dice"] = case_mean_dice(case, labels)
    return case


def quality_vs_dice(cases) -> dict:
    """How well the quality score predicts quality over ``cases`` (each with ``quality_score``,
    ``quality_flag`` and ``mean_dice``): the Spearman rank correlation between score and mean Dice, and
    how many flagged cases lie in the worst quartile of mean Dice (the quartile: the cases at or below
    its 25th percentile). Cases without a score or a Dice are left out. ``threshold``: the one the cases
    were flagged by (their ``quality_threshold``; the default where they name none; None where they differ)."""
    from scipy.stats import spearmanr

    scored = [c for c in cases if c.get("quality_score") is not None and c.get("mean_dice") is not None]
    thresholds = {c["quality_threshold"] for c in scored if c.get("quality_threshold") is not None}
    out = {"n": len(scored), "threshold": (thresholds.pop() if len(thresholds) == 1 else
                                           None if thresholds else quality.FLAG_BELOW)}
    if len(scored) < 3:
        return out
    score = np.array([c["quality_score"] for c in scored], dtype=float)
    dice = np.array([c["mean_dice"] for c in scored], dtype=float)
    flagged = np.array([bool(c["quality_flag"]) for c in scored])
    rho, p_value = spearmanr(score, dice)
    worst = dice <= np.percentile(dice, 25)
    out.update(spearman=None if np.isnan(rho) else float(rho), p_value=None if np.isnan(p_value) else float(p_value),
               worst_quartile_dice=float(np.percentile(dice, 25)), n_worst_quartile=int(worst.sum()),
               **_flag_counts(flagged, worst, dice),
               sweep=[{"threshold": t, **_flag_counts(score < t, worst, dice)} for t in quality.THRESHOLD_STEPS])
    return out


def card_summary(result):
    """An evaluation result as a model card keeps it: without its per-case ``cases`` and its quality's
    threshold sweep (only the report's threshold rule reads that; docs/evaluation.json keeps it)."""
    if not result:
        return result
    summary = {k: v for k, v in result.items() if k != "cases"}
    if isinstance(summary.get("quality"), dict):
        summary["quality"] = {k: v for k, v in summary["quality"].items() if k != "sweep"}
    return summary


def _flag_counts(flagged, worst, dice) -> dict:
    return dict(n_flagged=int(flagged.sum()), n_flagged_in_worst_quartile=int((flagged & worst).sum()),
                mean_dice_flagged=float(dice[flagged].mean()) if flagged.any() else None,
                mean_dice_unflagged=float(dice[~flagged].mean()) if (~flagged).any() else None)


def sweep_rows(summary) -> dict:
    """A quality summary's sweep keyed by threshold in hundredths (so that 0.7 read back from JSON and
    0.05 * 14 find the same row)."""
    return {round(row["threshold"] * 100): row for row in (summary or {}).get("sweep", ())}


def threshold_by_rule(*qualities):
    """The flag threshold :data:`kneeseg.quality.THRESHOLD_RULE` picks from ``qualities`` (each a
    :func:`quality_vs_dice` result with its sweep): the highest step at which every one of them flags
    something and at least half of what it flags lies in its worst quartile of mean Dice; None when
    no step does (or a result has no sweep)."""
    sweeps = [sweep_rows(q) for q in qualities]
    if not sweeps or not all(sweeps):
        return None
    for t in sorted(quality.THRESHOLD_STEPS, reverse=True):
        rows = [s.get(round(t * 100)) for s in sweeps]
        if all(r and r["n_flagged"] and 2 * r["n_flagged_in_worst_quartile"] >= r["n_flagged"] for r in rows):
            return t
    return None


FIBULA_PLANES = ("sagittal", "coronal", "axial")
FIBULA_SEEDS = (0, 1)


def _held_out_entries(bundle, cache, fibula_only=False):
    """(manifest entries of the bundle's test subjects, how they were chosen)."""
    test_ids = set(bundle.card.test_subjects)
    entries = [e for e in synth.load_manifest(cache)["files"] if not test_ids or e["subject"] in test_ids]
    if fibula_only:
        entries = [e for e in entries if e.get("has_fibula")]
    return entries, "held-out subjects" if test_ids else "ALL subjects: the bundle records no held-out split"


def _score_volume(bundle, predictor, options, image, truth):
    import SimpleITK as sitk

    result = segment(image, bundle, options, predictor=predictor)
    prediction = sitk.GetArrayFromImage(result.labelmap)
    truth_array = sitk.GetArrayFromImage(truth)
    if bundle.card.network.output == "merged":
        truth_array = (truth_array > 0).astype("uint8")
    case = evaluate_case(truth_array, prediction, bundle.labels, spacing_mm=image.GetSpacing()[::-1])
    return _with_quality(case, result, bundle.labels)


def evaluate_synthetic(bundle, cache, n_cases=6, progress=None, options=None, config=None) -> dict:
    """Score the bundle on synthetic volumes made from its held-out (test) label-map subjects.

    ``config``: the pinned generator, ``synth.EVALUATION_CONFIG`` unless given (e.g.
    ``synth.EVALUATION_CONFIG_RIM_OUTSIDE``: the same volumes with the rim outside the label)."""
    progress = progress or NO_PROGRESS
    config = config or synth.EVALUATION_CONFIG
    entries, held_out = _held_out_entries(bundle, cache)
    if not entries:
        raise InputError("no held-out label maps of this bundle are in the cache", cache)
    predictor = make_predictor(bundle)
    cases = []
    for n in range(n_cases):
        entry = entries[n % len(entries)]
        image, truth = synth.synthesize_volume(Path(cache) / entry["file"], seed=1000 + n, config=config)
        case = _score_volume(bundle, predictor, options, image, truth)
        case["case"] = f"{entry['subject']}#{n}"
        cases.append(case)
        progress("evaluate", (n + 1) / n_cases, f"synthetic case {n + 1}/{n_cases}")
    return _report(cases, bundle.labels, f"synthetic from the label-map cache {Path(cache).name} ({held_out})")


def named_fibula_entries(cache, subjects):
    """(manifest entries of the named subjects' fibula maps, how they were chosen); every subject must
    have one, else an ``InputError`` names those that do not."""
    subjects = [subjects] if isinstance(subjects, str) else list(subjects)
    entries = [e for e in synth.load_manifest(cache)["files"] if e["subject"] in subjects and e.get("has_fibula")]
    lacking = sorted(set(subjects) - {e["subject"] for e in entries})
    if lacking:
        raise InputError(f"this label-map cache has no map with a fibula for {', '.join(lacking)}", cache)
    return entries, f"named subjects: {', '.join(sorted(set(subjects)))}"


def evaluate_synthetic_fibula(bundle, cache, progress=None, options=None, config=None, seeds=FIBULA_SEEDS,
                              subjects=None) -> dict:
    """Score the bundle on volumes of every held-out label map that has a fibula: one per plane of
    ``FIBULA_PLANES`` and seed of ``seeds`` (pinned, like ``evaluate_synthetic``), so that the fibula,
    rare among the maps, gets a number of its own. ``n_cases`` 0 when no held-out map has one.
    ``subjects``: score the fibula maps of these subjects instead of the held-out ones (each must have
    one; whether the bundle trained on them is the caller's to check)."""
    progress = progress or NO_PROGRESS
    config = config or synth.EVALUATION_CONFIG
    if subjects is None:
        entries, chosen = _held_out_entries(bundle, cache, fibula_only=True)
    else:
        entries, chosen = named_fibula_entries(cache, subjects)
    predictor = make_predictor(bundle) if entries else None
    runs = [(e, plane, seed) for e in entries for plane in FIBULA_PLANES for seed in seeds]
    cases = []
    for n, (entry, plane, seed) in enumerate(runs):
        image, truth = synth.synthesize_volume(Path(cache) / entry["file"], seed=2000 + seed, plane=plane,
                                               config=config)
        case = _score_volume(bundle, predictor, options, image, truth)
        case["case"] = f"{entry['subject']}:{Path(entry['file']).name}:{plane}#{seed}"
        cases.append(case)
        progress("evaluate", (n + 1) / len(runs), f"synthetic fibula case {n + 1}/{len(runs)}")
    report = _report(cases, bundle.labels,
                     f"synthetic from the fibula maps in the label-map cache {Path(cache).name} ({chosen})")
    report["maps"] = [entry["file"] for entry in entries]
    return report


BETTER_BY = 0.01  # a paired case counts as better (worse) when its Dice rose (fell) by more than this
BOOTSTRAP_DRAWS = 20000  # resamples of the paired differences for the subjects-weighed-equally interval
BOOTSTRAP_SEED = 0


def _cases_by_id(cases, side):
    by_id = {}
    for case in cases:
        if case["case"] in by_id:
            raise InputError(f"the {side} model has case {case['case']} twice")
        by_id[case["case"]] = case
    return by_id


def _paired_dice(before, after, ids, bone):
    """The two models' Dice of ``bone`` on the cases of ``ids`` whose truth has it, as two arrays (None: no case
    has it)."""
    scored = [i for i in ids if before[i][bone]["truth_voxels"] > 0]
    if not scored:
        return None
    return (np.array([before[i][bone]["dice"] for i in scored]), np.array([after[i][bone]["dice"] for i in scored]))


def _paired_scores(before, after, ids, bone) -> dict:
    paired = _paired_dice(before, after, ids, bone)
    if paired is None:
        return None
    a, b = paired
    return {"n": len(a), "before": float(a.mean()), "after": float(b.mean()), "difference": float((b - a).mean()),
            "after_better": int((b - a > BETTER_BY).sum()), "after_worse": int((a - b > BETTER_BY).sum())}


def compare_cases(before, after, bone_names) -> dict:
    """Paired Dice of two models on the same cases (matched by their ``case`` id): per bone over all
    cases (``all``) and per subject (``subjects``; the id's part before the first ``:``), the mean of
    each model, the mean difference (after - before) and how many cases rose or fell by more than
    ``BETTER_BY``; and per bone with every subject weighed the same (``subjects_weighed_equally``, with a
    bootstrap interval of the difference). A case counts for a bone where its truth has the bone; both models'
    truths must agree (the same volumes, the same label values)."""
    before, after = _cases_by_id(before, "first"), _cases_by_id(after, "second")
    unmatched = sorted(set(before) ^ set(after))
    if unmatched:
        raise InputError("the two models were not scored on the same cases: "
                         f"{len(unmatched)} case ids differ, e.g. {', '.join(unmatched[:3])}")
    for case_id in before:
        for bone in bone_names:
            if before[case_id][bone]["truth_voxels"] != after[case_id][bone]["truth_voxels"]:
                raise InputError(f"case {case_id}: the two models were scored against different {bone} truths "
                                 "(another volume, or another label value)")
    subjects = {}
    for case_id in before:
        subjects.setdefault(case_id.split(":", 1)[0], []).append(case_id)
    out = {"all": {}, "subjects": {}}
    for bone in bone_names:
        overall = _paired_scores(before, after, list(before), bone)
        if overall:
            out["all"][bone] = overall
    for subject, ids in sorted(subjects.items()):
        out["subjects"][subject] = {bone: row for bone in bone_names
                                    if (row := _paired_scores(before, after, ids, bone))}
    out["subjects_weighed_equally"] = {bone: row for bone in bone_names
                                       if (row := _subject_weighted_scores(before, after, subjects, bone))}
    return out


def _subject_weighted_scores(before, after, subjects, bone) -> dict:
    """Each model's mean of its subjects' means (every person weighs the same, however many cases they have),
    their difference, and its 95 % interval from a paired bootstrap that resamples the cases within each
    subject (the people are the pool's; the interval says how far its volumes alone move the difference)."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means, draws = [], []
    for ids in subjects.values():
        paired = _paired_dice(before, after, ids, bone)
        if paired is None:
            continue
        a, b = paired
        means.append((a.mean(), b.mean()))
        draws.append((b - a)[rng.integers(0, len(a), (BOOTSTRAP_DRAWS, len(a)))].mean(axis=1))
    if not means:
        return None
    before_mean, after_mean = (float(np.mean(side)) for side in zip(*means))
    low, high = np.percentile(np.mean(draws, axis=0), [2.5, 97.5])
    return {"subjects": len(means), "before": before_mean, "after": after_mean,
            "difference": after_mean - before_mean, "interval_95": [float(low), float(high)]}


def slice_as_volume(slice_2d: np.ndarray, pixel_mm=REAL2D_PIXEL_MM):
    """A 2D sagittal slice (rows run inferior, columns posterior) as a one-slice 3D SimpleITK image."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(slice_2d[None].astype(np.float32))
    image.SetSpacing((pixel_mm, pixel_mm, pixel_mm))
    image.SetDirection(tuple(geometry.plane_direction("sagittal").flatten()))
    return image


def read_real2d(npz_path) -> dict:
    """The real labelled slices of an ``.npz`` (``images``, ``labels`` of one shape, optional ``slice_ids``);
    refused by name when missing or unreadable. Training calls it before it starts, to fail early."""
    try:
        with np.load(npz_path, allow_pickle=False) as npz:
            data = {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise InputError("no such file of real labelled slices", npz_path) from None
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"not a readable .npz of real labelled slices ({exc})", npz_path) from None
    missing = [k for k in ("images", "labels") if k not in data]
    if missing:
        raise InputError(f"the real labelled slices lack {' and '.join(missing)} (it holds {sorted(data)})", npz_path)
    if data["images"].shape != data["labels"].shape or data["images"].ndim != 3:
        raise InputError(f"images {data['images'].shape} and labels {data['labels'].shape} must be stacks of 2D "
                         "slices of one shape", npz_path)
    return data


def evaluate_real2d(bundle, npz_path, predictor=None, progress=None, centre="auto") -> dict:
    """Segment each real labelled sagittal slice and score femur, tibia and patella."""
    import SimpleITK as sitk

    progress = progress or NO_PROGRESS
    data = read_real2d(npz_path)
    images, truths = data["images"], data["labels"]
    predictor = predictor or make_predictor(bundle)
    label_by_value = {label.value: label for label in bundle.labels}
    scored = [label_by_value[v] for v in REAL2D_LABELS.values() if v in label_by_value]
    cases = []
    for i in range(len(images)):
        truth = np.zeros_like(truths[i])
        for theirs, ours in REAL2D_LABELS.items():
            truth[truths[i] == theirs] = ours
        result = segment(slice_as_volume(images[i]), bundle,
                         SegmentOptions(planes=("sagittal",), centre=centre, single_slice=True), predictor=predictor)
        prediction = sitk.GetArrayFromImage(result.labelmap)[0]
        if bundle.card.network.output == "merged":
            prediction, truth = (prediction > 0).astype(np.uint8), (truth > 0).astype(np.uint8)
        case_labels = scored if len(bundle.labels) > 1 else bundle.labels
        case = evaluate_case(truth, prediction, case_labels, spacing_mm=(REAL2D_PIXEL_MM, REAL2D_PIXEL_MM))
        case = _with_quality(case, result, case_labels)
        case["slice"] = int(data["slice_ids"][i]) if "slice_ids" in data else i
        cases.append(case)
        progress("evaluate", (i + 1) / len(images), f"real 2D slice {i + 1}/{len(images)}")
    labels = scored if len(bundle.labels) > 1 else bundle.labels
    # Distances in mm at the assumed pixel size: divide by ``pixel_mm_assumed`` for pixels.
    return {"dataset": str(npz_path), "n_slices": len(images), "pixel_mm_assumed": REAL2D_PIXEL_MM,
            "dice": summarise(cases, labels), "signed_surface_mm": summarise(cases, labels, "signed_surface_mm"),
            "area_ratio": summarise(cases, labels, "volume_ratio"), "quality": quality_vs_dice(cases),
            "cases": cases}

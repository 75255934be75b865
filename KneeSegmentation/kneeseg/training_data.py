"""From data on disk to a trained, evaluated bundle: the glue between datasets, train and bundle.

Two sources: the user's labelled volumes (``data``: a folder or CSV of pairs) and the label-map cache
for domain-randomised synthesis (``synthetic``). Both are split by subject into train / validation /
test; the test subjects are never seen in training and are recorded in the card.
"""

import dataclasses
from pathlib import Path

from . import train as training
from .bundle import save_bundle, update_card
from .errors import InputError
from .labels import MERGED_BONES, SEPARATE_BONES


def _labels(config):
    return MERGED_BONES if config.output == "merged" else SEPARATE_BONES


def paired_sources(config, data, progress=None):
    """(train, validation sources, provenance) from a folder/CSV of labelled volumes."""
    from .datasets import PairedSlices, find_pairs, split_by_subject

    pairs = find_pairs(data)
    train_ids, val_ids, test_ids = split_by_subject([p.subject for p in pairs], seed=config.split_seed)
    if progress is not None:
        progress("data", 0.0, f"{len(pairs)} pairs: {len(train_ids)} train / {len(val_ids)} validation / "
                 f"{len(test_ids)} test subjects")
    common = dict(planes=config.planes, size=config.input_size, window_mm=config.window_mm,
                  batch_size=config.batch_size, seed=config.seed, merged=config.output == "merged")
    population = "compute" if config.normalisation == "population" else None
    train_source = PairedSlices([p for p in pairs if p.subject in train_ids], augment=config.augment,
                                steps=config.steps_per_epoch, population=population, **common)
    val_source = PairedSlices([p for p in pairs if p.subject in val_ids], augment=False,
                              steps=config.validation_steps, population=train_source.population, **common)
    provenance = {"population": train_source.population,
                  "data": {"kind": "labelled volumes", "source": str(data), "n_pairs": len(pairs),
                           "split": {"train": train_ids, "validation": val_ids, "test": test_ids}}}
    return train_source, val_source, provenance


def synthetic_sources(config, cache, progress=None):
    """(train, validation sources, provenance) synthesised from the label-map cache."""
    from . import synth
    from .datasets import split_by_subject

    if config.normalisation != "volume":
        raise InputError("synthetic images have random intensities: train them with per-volume normalisation")
    entries = synth.load_manifest(cache)["files"]
    subjects = sorted({e["subject"] for e in entries})
    train_ids, val_ids, test_ids = split_by_subject(subjects, seed=config.split_seed)
    # The only maps with a fibula must reach training: move such subjects from validation/test.
    fibula_subjects = {e["subject"] for e in entries if e.get("has_fibula")}
    for ids in (val_ids, test_ids):
        for s in sorted(fibula_subjects & set(ids)):
            ids.remove(s)
            train_ids.append(s)

    def files(ids):
        return [Path(cache) / e["file"] for e in entries if e["subject"] in ids]

    common = dict(planes=config.planes, size=config.input_size, window_mm=config.window_mm,
                  batch_size=config.batch_size, config=synth.synthesis_config(config.synthesis))
    merged = config.output == "merged"
    train_source = synth.SliceSynthesizer(files(train_ids), seed=config.seed, steps=config.steps_per_epoch,
                                          merged=merged, **common)
    val_source = synth.SliceSynthesizer(files(val_ids), seed=config.seed + 10_000, steps=config.validation_steps,
                                        fixed=True, merged=merged, **common)
    if progress is not None:
        progress("data", 0.0, f"{len(subjects)} label-map subjects: {len(train_ids)} train / {len(val_ids)} "
                 f"validation / {len(test_ids)} test")
    datasets = sorted({(e["dataset"], e["licence"]) for e in entries})
    provenance = {"data": {"kind": "synthetic images from real label maps (domain randomisation)",
                           "label_map_sources": [{"dataset": d, "licence": lic,
                                                  "files": sum(e["dataset"] == d for e in entries)}
                                                 for d, lic in datasets],
                           "split": {"train": sorted(train_ids), "validation": sorted(val_ids),
                                     "test": sorted(test_ids)},
                           "synthesis": dataclasses.asdict(train_source.config)}}
    return train_source, val_source, provenance


def train_bundle(config, output, work, synthetic=None, data=None, name="knee-bones", real2d=None,
                 export_onnx=True, progress=None) -> dict:
    """Train, save the bundle (Keras + optional ONNX), plot the history, measure, fill in the card."""
    if (synthetic is None) == (data is None):
        raise InputError("give exactly one training data source (synthetic cache or labelled pairs)")
    labels = _labels(config)
    if synthetic is not None:
        train_source, val_source, provenance = synthetic_sources(config, synthetic, progress)
    else:
        train_source, val_source, provenance = paired_sources(config, data, progress)
    inputs = {"synthetic": str(Path(synthetic).resolve())} if synthetic is not None else {"data": str(Path(data).resolve())}
    model, state = training.fit(config, labels, train_source, val_source, work, progress, inputs=inputs)
    work = Path(work)
    training.plot_history(work / "history.csv", work / "history.png")
    population = provenance.pop("population", None)
    card = training.make_card(config, labels, provenance, state, name=name, population=population,
                              description=f"{config.dims}D U-Net trained by kneeseg train")
    onnx_path = None
    if export_onnx:
        onnx_path = _try_export_onnx(model, work, progress)
    save_bundle(output, model, card, onnx_path=onnx_path,
                extra_files=[work / "history.csv", work / "history.png"])
    metrics = {}
    if real2d:
        from .bundle import load_bundle
        from .evaluate import evaluate_real2d

        result = evaluate_real2d(load_bundle(output), real2d, progress=progress)
        metrics["real2d"] = {k: v for k, v in result.items() if k != "cases"}
        update_card(output, metrics=metrics)
    return {"bundle": str(output), "epochs_run": state["epoch"] + 1, "best_epoch": state["best_epoch"] + 1,
            "best_val_mean_dice": state["best"], "stopped_early": state.get("stopped_early", False),
            "metrics": metrics}


def _try_export_onnx(model, work, progress):
    try:
        from .onnx_backend import export_onnx
    except ImportError:
        return None
    try:
        return export_onnx(model, Path(work) / "model.onnx")
    except ImportError as exc:
        if progress is not None:
            progress.log(f"no ONNX export ({exc}); the bundle runs with TensorFlow only")
        return None


def evaluate_pairs(bundle, data, progress=None, options=None) -> dict:
    """Segment labelled volumes with the bundle and score them (overlap and surface distances)."""
    import SimpleITK as sitk

    from .datasets import find_pairs, load_pair
    from .evaluate import evaluate_case
    from .infer import make_predictor, segment

    predictor = make_predictor(bundle)
    pairs = find_pairs(data)
    cases = []
    for n, pair in enumerate(pairs):
        image, label = load_pair(pair)
        result = segment(image, bundle, options, predictor=predictor)
        truth = sitk.GetArrayFromImage(label)
        prediction = sitk.GetArrayFromImage(result.labelmap)
        if bundle.card.network.output == "merged":
            truth = (truth > 0).astype("uint8")
        case = evaluate_case(truth, prediction, bundle.labels, spacing_mm=image.GetSpacing()[::-1])
        case["case"] = pair.subject
        cases.append(case)
        if progress is not None:
            progress("evaluate", (n + 1) / len(pairs), f"case {n + 1}/{len(pairs)}: {pair.subject}")
    return _report(cases, bundle.labels, str(data))


def _report(cases, labels, source):
    from .evaluate import summarise

    return {"dataset": source, "n_cases": len(cases), "dice": summarise(cases, labels, "dice"),
            "iou": summarise(cases, labels, "iou"), "assd_mm": summarise(cases, labels, "assd_mm"),
            "hd95_mm": summarise(cases, labels, "hd95_mm"), "cases": cases}


def evaluate_synthetic(bundle, cache, n_cases=6, progress=None, options=None) -> dict:
    """Score the bundle on synthetic volumes made from its held-out (test) label-map subjects."""
    import SimpleITK as sitk

    from . import synth
    from .evaluate import evaluate_case
    from .infer import make_predictor, segment

    test_ids = set(bundle.card.test_subjects)
    entries = [e for e in synth.load_manifest(cache)["files"] if not test_ids or e["subject"] in test_ids]
    held_out = "held-out subjects" if test_ids else "ALL subjects: the bundle records no held-out split"
    if not entries:
        raise InputError("no held-out label maps of this bundle are in the cache", cache)
    predictor = make_predictor(bundle)
    cases = []
    for n in range(n_cases):
        entry = entries[n % len(entries)]
        image, truth = synth.synthesize_volume(Path(cache) / entry["file"], seed=1000 + n,
                                               config=synth.EVALUATION_CONFIG)
        result = segment(image, bundle, options, predictor=predictor)
        prediction = sitk.GetArrayFromImage(result.labelmap)
        truth_array = sitk.GetArrayFromImage(truth)
        if bundle.card.network.output == "merged":
            truth_array = (truth_array > 0).astype("uint8")
        case = evaluate_case(truth_array, prediction, bundle.labels, spacing_mm=image.GetSpacing()[::-1])
        case["case"] = f"{entry['subject']}#{n}"
        cases.append(case)
        if progress is not None:
            progress("evaluate", (n + 1) / n_cases, f"synthetic case {n + 1}/{n_cases}")
    return _report(cases, bundle.labels, f"synthetic from {cache} ({held_out})")

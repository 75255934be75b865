"""Training as a use case: data on disk -> a trained, measured bundle (the glue between data sources,
``train`` and ``bundle``).

Two sources: the user's labelled volumes (``data``: a folder or CSV of pairs) and the label-map cache
for domain-randomised synthesis (``synthetic``). Both are split by subject into train / validation /
test (by ``Recipe.split_seed``, or as a split file ``Recipe.split`` lists them); the test subjects are
never seen in training and are recorded in the card with where the split came from. Their slices are cut
in the configuration's frame (``TrainConfig.frame``), which the card hands on to inference.
"""

import dataclasses
import hashlib
import json
from pathlib import Path

from .. import synth
from .. import train as training
from ..bundle import load_bundle, refuse_to_replace_non_bundle, save_bundle, update_card
from ..datasets import PairedSlices, find_pairs, fixed_split, read_split, split_by_subject
from ..errors import InputError
from ..onnx_backend import export_onnx
from ..outputs import existing_above
from ..progress import NO_PROGRESS
from .evaluate import card_summary, evaluate_real2d, read_real2d


def split_subjects(subjects, recipe):
    """(train, validation, test, how): the recipe's split file when it names one, else drawn by its seed."""
    if recipe.split:
        train_ids, val_ids, test_ids = fixed_split(subjects, read_split(recipe.split), recipe.split)
        return list(train_ids), list(val_ids), list(test_ids), f"file {Path(recipe.split).name}"  # a name, not a machine path: cards travel
    train_ids, val_ids, test_ids = split_by_subject(subjects, seed=recipe.split_seed)
    return train_ids, val_ids, test_ids, f"drawn with split seed {recipe.split_seed}"


def paired_sources(config, data, progress=None):
    """(train, validation sources, provenance) from a folder/CSV of labelled volumes."""
    pairs = find_pairs(data)
    recipe, progress = config.recipe, progress or NO_PROGRESS
    train_ids, val_ids, test_ids, how = split_subjects([p.subject for p in pairs], recipe)
    progress("data", 0.0, f"{len(pairs)} pairs: {len(train_ids)} train / {len(val_ids)} validation / "
             f"{len(test_ids)} test subjects")
    common = dict(frame=config.frame, batch_size=recipe.batch_size, seed=recipe.seed,
                  merged=config.network.output == "merged", context_slices=config.network.context_slices,
                  slice_position=config.network.slice_position)
    population = "compute" if recipe.normalisation == "population" else None
    train_source = PairedSlices([p for p in pairs if p.subject in train_ids], augment=recipe.augment,
                                steps=recipe.steps_per_epoch, population=population, **common)
    val_source = PairedSlices([p for p in pairs if p.subject in val_ids], augment=False,
                              steps=recipe.validation_steps, population=train_source.population, **common)
    provenance = {"population": train_source.population,
                  "data": {"kind": "labelled volumes", "source": Path(data).name, "n_pairs": len(pairs),
                           "split": {"train": train_ids, "validation": val_ids, "test": test_ids}, "split_source": how}}
    return train_source, val_source, provenance


def synthetic_sources(config, cache, progress=None):
    """(train, validation sources, provenance) synthesised from the label-map cache."""
    recipe, progress = config.recipe, progress or NO_PROGRESS
    if recipe.normalisation != "volume":
        raise InputError("synthetic images have random intensities: train them with per-volume normalisation")
    manifest = synth.load_manifest(cache)
    entries = manifest["files"]
    subjects = sorted({e["subject"] for e in entries})
    train_ids, val_ids, test_ids, how = split_subjects(subjects, recipe)
    if not recipe.split:
        # A drawn split moves the maps with a fibula (few) into training; a split file decides for itself.
        fibula_subjects = {e["subject"] for e in entries if e.get("has_fibula")}
        for ids in (val_ids, test_ids):
            for s in sorted(fibula_subjects & set(ids)):
                if ids is val_ids and len(ids) == 1:
                    break  # the last validation subject stays, fibula or not: early stopping needs one
                ids.remove(s)
                train_ids.append(s)
    if not train_ids or not val_ids:
        raise InputError(f"the split leaves {'no training' if not train_ids else 'no validation'} subject among the "
                         f"cache's {len(subjects)}: add label maps, or give a split file (--split)", cache)

    def files(ids):
        return [Path(cache) / e["file"] for e in entries if e["subject"] in ids]

    common = dict(frame=config.frame, batch_size=recipe.batch_size, config=synth.synthesis_config(recipe.synthesis),
                  merged=config.network.output == "merged", context_slices=config.network.context_slices,
                  slice_position=config.network.slice_position)
    train_source = synth.SliceSynthesizer(files(train_ids), seed=recipe.seed, steps=recipe.steps_per_epoch, **common)
    val_source = synth.SliceSynthesizer(files(val_ids), seed=recipe.seed + 10_000, steps=recipe.validation_steps,
                                        fixed=True, **common)
    progress("data", 0.0, f"{len(subjects)} label-map subjects: {len(train_ids)} train / {len(val_ids)} "
             f"validation / {len(test_ids)} test")
    datasets = sorted({(e["dataset"], e["licence"]) for e in entries})
    provenance = {"data": {"kind": "synthetic images from real label maps (domain randomisation)",
                           "label_map_sources": [{"dataset": d, "licence": lic,
                                                  "files": sum(e["dataset"] == d for e in entries)}
                                                 for d, lic in datasets],
                           "split": {"train": sorted(train_ids), "validation": sorted(val_ids),
                                     "test": sorted(test_ids)},
                           "split_source": how,
                           "synthesis": dataclasses.asdict(train_source.config)}}
    if "fibula_carried_over" in manifest:
        # these maps' fibulae are the donors' shapes: the donors' licences apply to them too
        carried = [e["fibula_from"] for e in entries if "refused" not in e.get("fibula_from", {"refused": True})]
        provenance["data"]["fibula_carried_over"] = {
            **manifest["fibula_carried_over"], "maps": len(carried), "donors_used": sorted({c["donor"] for c in carried}),
            "how": "kneeseg synth add-fibula (tibia registration)"}
    return train_source, val_source, provenance


def train_bundle(config, output, work, synthetic=None, data=None, name="knee-bones", real2d=None,
                 export_onnx=True, progress=None) -> dict:
    """Train, save the bundle (Keras + optional ONNX), plot the history, measure, fill in the card."""
    progress = progress or NO_PROGRESS
    if (synthetic is None) == (data is None):
        raise InputError("give exactly one training data source (synthetic cache or labelled pairs)")
    labels = config.labels
    check_output_and_work(output, work, config.recipe.init_from)
    if real2d:
        read_real2d(real2d)  # measured after the training: a typo must not wait for it
    training.check_start_bundle(config, work)
    if synthetic is not None:
        train_source, val_source, provenance = synthetic_sources(config, synthetic, progress)
    else:
        train_source, val_source, provenance = paired_sources(config, data, progress)
    inputs = {"synthetic": str(Path(synthetic).resolve())} if synthetic is not None else {"data": str(Path(data).resolve())}
    if config.recipe.split:  # its contents, not only its path: a run resumed with other subjects would be mislabelled
        subjects = read_split(config.recipe.split)  # which subjects, not how the file is laid out or its note
        split = json.dumps({part: sorted(subjects[part]) for part in ("train", "validation", "test")})
        inputs["split_sha256"] = hashlib.sha256(split.encode()).hexdigest()
    model, state = training.fit(config, labels, train_source, val_source, work, progress, inputs=inputs)
    work = Path(work)
    training.plot_history(work / "history.csv", work / "history.png")
    population = provenance.pop("population", None)
    card = training.make_card(config, labels, provenance, state, name=name, population=population,
                              description=f"{config.network.dims}D U-Net trained by kneeseg train")
    onnx_path = None
    if export_onnx:
        onnx_path = _try_export_onnx(model, work, progress)
    save_bundle(output, model, card, onnx_path=onnx_path,
                extra_files=[work / "history.csv", work / "history.png"])
    metrics = {}
    if real2d:
        metrics["real2d"] = card_summary(evaluate_real2d(load_bundle(output), real2d, progress=progress))
        update_card(output, metrics=metrics)
    return {"bundle": str(output), "epochs_run": state["epoch"] + 1, "best_epoch": state["best_epoch"] + 1,
            "best_val_mean_dice": state["best"], "stopped_early": state.get("stopped_early", False),
            **({"averaged_epochs": state["averaged_epochs"], "average_val_mean_dice": state.get("average_val_mean_dice")}
               if state.get("averaged_epochs") else {}),
            "metrics": metrics}


def check_output_and_work(output, work, init_from=None, check_work=training.check_work_folder):
    """Before any training: the bundle may replace only a bundle at ``output``, not the bundle training starts
    from, nor the run's own work folder (which may neither be the output nor lie inside it, and must pass
    ``check_work``: new, empty or a run's own); the output's folder must be one that can be written."""
    if Path(output).name in ("", ".", ".."):
        raise InputError("name the new bundle's own folder (not '.' or '..'): a bundle replaces the folder it is "
                         "saved as", output)
    refuse_to_replace_non_bundle(output, "the trained bundle", "choose another -o")
    check_work(Path(work))
    output, work = Path(output).resolve(), Path(work).resolve()
    if work == output or output in work.parents:
        raise InputError("the work folder (checkpoints, history) is the output folder or inside it: the saved "
                         "bundle would replace it; give the work folder a place of its own", work)
    start = Path(init_from).resolve() if init_from else None
    if start is not None and (start == output or start in output.parents):
        raise InputError("the output is (or lies inside) the bundle this training starts from (--init-from): choose "
                         "another -o so that it stays as it is", output)
    writable_folder_above(output)


def writable_folder_above(path: Path):
    """Refuse a ``path`` whose nearest existing folder above is a file or cannot be written (checked before a
    long run, not after it)."""
    import os

    above = existing_above(Path(path).resolve())
    if not above.is_dir():
        raise InputError("is a file, not a folder: the bundle's folder cannot be made inside it", above)
    if not os.access(above, os.W_OK | os.X_OK):
        raise InputError("cannot write in this folder (permission denied)", above)


def _try_export_onnx(model, work, progress):
    try:
        return export_onnx(model, Path(work) / "model.onnx")
    except ImportError as exc:
        (progress or NO_PROGRESS).log(f"no ONNX export ({exc}); the bundle runs with TensorFlow only")
        return None


RUN_RECORD = ("epochs_run", "best_epoch", "best_val_mean_dice", "stopped_early", "stopped_at_time_limit",
              "averaged_epochs", "average_val_mean_dice")  # a card's training entries that belong to one run


def without_run_record(training: dict) -> dict:
    """A card's ``training`` without what one training run recorded of itself (for a model made of several)."""
    return {k: v for k, v in training.items() if k not in RUN_RECORD}


# A soup's card keeps the members' shared settings (config, data, generator) but not what one member's own
# making recorded: its run (RUN_RECORD), its recipe and where it was made, its seed.
MEMBER_RECORD = ("recipe", "hardware", "fine_tuned_from", "chain", "stage1")


def soup_bundles(members, output, mix=None, name=None) -> dict:
    """One bundle whose every weight is the weighted mean of the ``members``' weights (a weight soup,
    Wortsman et al. 2022); returns what the card records of it.

    Averaging weights works for fine-tunes of one start, which stay in one basin of the loss; for
    networks trained apart it gives noise, so it is for members the caller knows to be related (the
    card records each member's start). Members must share network, frame, labels and preprocessing.
    ``mix``: one weight per member, each >= 0, summing to 1 (default: equal). The card is the first
    member's settings without what belongs to that member's weights alone (its run, recipe, seed, metrics,
    fusion weights, plane reach and quality flag threshold: ``Card.for_new_weights``; ``finalize`` measures
    the soup's fusion weights and metrics again, ``evaluate_default.py --adopt-threshold`` sets a threshold)."""
    import numpy as np

    members = [Path(m) for m in members]
    if len(members) < 2:
        raise InputError("a weight soup needs at least two member bundles", members[0] if members else None)
    resolved = [m.resolve() for m in members]
    for i, path in enumerate(resolved):
        if path in resolved[:i]:
            raise InputError("this bundle is named twice among the soup's members: give a mix to weigh it more",
                             members[i])
    if Path(output).resolve() in resolved:
        raise InputError("the soup's output is one of its members; name another folder so that it stays as it is",
                         output)
    if any(member in Path(output).resolve().parents for member in resolved):
        raise InputError("the soup's output lies inside one of its members; a bundle holds nothing else: name a "
                         "folder outside it", output)
    refuse_to_replace_non_bundle(output, "the soup's bundle", "name another folder")
    mix = _soup_mix(mix, len(members))
    bundles = [load_bundle(m) for m in members]
    first = bundles[0].card
    for path, bundle in zip(members[1:], bundles[1:]):
        for part in ("network", "frame", "labels", "n4", "n4_settings"):
            if getattr(bundle.card, part) != getattr(first, part):
                raise InputError(f"the {part} of this bundle and of {members[0]} differ: only bundles of one "
                                 "architecture, frame, labels and preprocessing can be averaged", path)
    model = bundles[0].load_keras_model()
    total = [np.zeros(w.shape, np.float64) for w in model.get_weights()]
    for path, bundle, share in zip(members, bundles, mix):
        weights = model.get_weights() if bundle is bundles[0] else bundle.load_keras_model().get_weights()
        if [w.shape for w in weights] != [t.shape for t in total]:
            raise InputError(f"its weights' shapes differ from {members[0]}'s", path)
        for t, w in zip(total, weights):
            t += share * np.asarray(w, np.float64)
    model.set_weights([t.astype(w.dtype) for t, w in zip(total, model.get_weights())])
    soup = {"how": "the weighted mean of every weight of the members (a weight soup)",
            "members": [_soup_member_record(path, bundle.card, share) for path, bundle, share in
                        zip(members, bundles, mix)]}
    training = {k: v for k, v in without_run_record(first.training).items() if k not in MEMBER_RECORD}
    config = {k: v for k, v in (training.get("config") or {}).items() if k not in ("seed", "init_from")}
    card = first.for_new_weights(name=name or first.name,
                                 description=f"the weighted mean of the weights of {len(members)} bundles of one "
                                             "architecture (training.soup)",
                                 training={**training, "config": config, "soup": soup})
    save_bundle(output, model, card)
    return soup


def _soup_member_record(path: Path, card, share) -> dict:
    """What a soup's card says of one member: its folder's name (not this machine's path), share, start,
    seed and how its run went."""
    config = card.training.get("config") or {}
    return {"bundle": path.name, "share": share, "init_from": config.get("init_from"), "seed": config.get("seed"),
            **{k: card.training[k] for k in ("recipe", "best_epoch", "best_val_mean_dice")
               if card.training.get(k) is not None}}


def _soup_mix(mix, count) -> list:
    if mix is None:
        return [1.0 / count] * count
    mix = [float(share) for share in mix]
    if len(mix) != count:
        raise InputError(f"the soup's mix gives {len(mix)} weights for {count} members: give one per member")
    if any(not share >= 0 for share in mix) or abs(sum(mix) - 1.0) > 1e-6:
        raise InputError(f"the soup's mix {mix} must be weights >= 0 that sum to 1")
    return mix

"""K-fold cross-validation on the user's labelled scans: K models, a per-fold and pooled report, one bundle.

The subjects are dealt into K folds (seeded by ``Recipe.split_seed``). Fold i holds its subjects out
entirely: it is the *test* part of that fold's split, scored only after training. Early stopping needs
a validation set of its own, so a fifth (at least one subject) of the fold's training subjects
validates (drawn with the same seed), which keeps the held-out fold's scores free of model selection.

Written beside the bundle ``OUTPUT`` (in ``OUTPUT.folds/``):

- ``splits_final.json``: the folds as nnU-Net lists them, ``[{"train": [...], "val": [...]}, ...]``
  (``val`` = the held-out fold);
- ``fold_<i>/split.json``: fold i's split in ``kneeseg train --split`` form, and ``fold_<i>/`` the
  fold's bundle;
- ``cross_validation.json`` and ``cross_validation.txt``: Dice per bone per fold, and pooled over
  every held-out case (each subject is held out exactly once): mean and standard deviation.

``OUTPUT`` itself is either a copy of the **best fold's** bundle (``bundle="best"``: highest mean
Dice over bones on its own held-out fold; choosing the best of K on the held-out scores makes that
fold's own number optimistic) or an **ensemble** of the K fold models (``bundle="ensemble"``: one Keras
model that runs the K networks on each slice and averages their class probabilities, so inference is
K times the work; it has no held-out subjects, as every subject trained some member). Either card
carries the report; the pooled figures are the estimate to quote.
"""

import dataclasses
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..bundle import load_bundle, refuse_to_replace_non_bundle, update_card
from ..datasets import find_pairs
from ..errors import InputError, listed
from ..train import check_work_folder, check_work_is_a_folder
from ..writing import staging_folder, swap_into_place
from ..io import write_json
from ..progress import NO_PROGRESS
from .evaluate import evaluate_pairs
from .train import check_output_and_work, train_bundle

SPLITS_NAME = "splits_final.json"
REPORT_NAME = "cross_validation.json"
TABLE_NAME = "cross_validation.txt"


def folds_of(subjects, k: int, seed: int = 0) -> list:
    """nnU-Net's list of folds: ``[{"train": [...], "val": [...]}]``, every subject in one ``val``."""
    unique = sorted(set(subjects))
    n = len(unique)
    if not 2 <= k <= n:
        raise InputError(f"--folds must be between 2 and the number of subjects ({n}), not {k}")
    if n - int(np.ceil(n / k)) < 2:
        raise InputError(f"{n} subjects in {k} folds leave fewer than 2 training subjects per fold (one to train, "
                         "one to validate): use more subjects or fewer folds")
    rng = np.random.default_rng(seed)
    order = [unique[i] for i in rng.permutation(n)]
    held = [sorted(part.tolist()) for part in np.array_split(np.array(order, dtype=object), k)]
    return [{"train": sorted(set(unique) - set(val)), "val": val} for val in held]


def _check_folds_work(work: Path):
    """The cross-validation's work folder holds one training run's folder per fold (``fold_N``), nothing else."""
    check_work_is_a_folder(work)
    if not work.is_dir():
        return
    others = sorted(e.name for e in work.iterdir() if not re.fullmatch(r"fold_\d+", e.name))
    if others:
        raise InputError(f"the work folder holds files no cross-validation wrote ({listed(others)}): give a new or "
                         "empty --work folder", work)
    for fold in work.iterdir():
        check_work_folder(fold)


def fold_split(fold: dict, index: int, k: int, seed: int) -> dict:
    """Fold ``index``'s ``--split`` file: its held-out subjects as test, a fifth of the rest validating."""
    rest = list(fold["train"])
    np.random.default_rng([seed, index]).shuffle(rest)
    n_val = min(max(1, int(round(0.2 * len(rest)))), len(rest) - 1)
    return {"train": sorted(rest[n_val:]), "validation": sorted(rest[:n_val]), "test": list(fold["val"]),
            "note": f"fold {index} of {k} (kneeseg train --folds): test = the held-out fold"}


BUNDLE_CHOICES = ("best", "ensemble")


def cross_validate(config, data, output, k: int, work=None, name="knee-bones", export_onnx=True,
                   progress=None, bundle="best") -> dict:
    """Train ``k`` models on the folds of ``data``, score each on its held-out fold, write the best fold's
    bundle or the ensemble of all (``bundle``); return the report (also written as JSON and as a table)."""
    progress = progress or NO_PROGRESS
    if bundle not in BUNDLE_CHOICES:
        raise InputError(f"the cross-validation's bundle is one of {', '.join(BUNDLE_CHOICES)}, not {bundle!r}")
    if config.recipe.split:
        raise InputError("--folds deals the subjects into folds itself: give --folds or --split, not both")
    output = Path(output)
    folds_dir = output.with_name(output.name + ".folds")
    work = Path(work) if work else output.with_name(output.name + ".work")
    check_output_and_work(output, work, config.recipe.init_from, check_work=_check_folds_work)
    pairs = find_pairs(data)
    folds = folds_of([p.subject for p in pairs], k, config.recipe.split_seed)
    folds_dir.mkdir(parents=True, exist_ok=True)
    write_json(folds_dir / SPLITS_NAME, folds)
    per_fold, cases = [], []
    for index, fold in enumerate(folds):
        summary, fold_cases = _run_fold(config, data, pairs, fold, index, k, folds_dir / f"fold_{index}",
                                        work / f"fold_{index}", name, export_onnx, progress)
        per_fold.append(summary)
        cases += fold_cases
    labels = load_bundle(folds_dir / "fold_0" / "bundle").labels
    report = {"folds": k, "subjects": sum(len(f["val"]) for f in folds), "data": str(data),
              "per_fold": per_fold, "pooled": pooled_dice(cases, labels), "cases": cases}
    if bundle == "ensemble":
        report["bundle"] = {"path": str(output), "fold": None,
                            "how": f"an ensemble of the {k} fold models averaging their class probabilities "
                                   "(no held-out subjects: every subject trained some member)"}
        _save_ensemble([folds_dir / f"fold_{i}" / "bundle" for i in range(k)], output, folds, name,
                       export_onnx, progress)
        description = (f"{config.network.dims}D U-Net ensemble trained by kneeseg train: the {k} models of a "
                       f"{k}-fold cross-validation by subject, their class probabilities averaged "
                       "(metrics.cross_validation: Dice pooled over all folds' held-out cases)")
    else:
        best = max(per_fold, key=lambda f: -1.0 if f["mean_dice"] is None else f["mean_dice"])
        report["bundle"] = {"path": str(output), "fold": best["fold"],
                            "how": "the best fold's bundle: highest mean Dice over bones on its own held-out fold "
                                   "(that fold's number is optimistic for it; quote the pooled figures)"}
        _install_best(folds_dir / f"fold_{best['fold']}" / "bundle", output)
        description = (f"{config.network.dims}D U-Net trained by kneeseg train: fold {best['fold']} of a "
                       f"{k}-fold cross-validation by subject, the best on its own held-out subjects "
                       "(metrics.cross_validation: Dice pooled over all folds' held-out cases)")
    update_card(output, metrics={"cross_validation": card_summary(report)}, description=description)
    write_json(folds_dir / REPORT_NAME, report)
    (folds_dir / TABLE_NAME).write_text(cross_validation_table(report) + "\n")
    return report


def _run_fold(config, data, pairs, fold, index, k, fold_dir: Path, work: Path, name, export_onnx, progress):
    """Train fold ``index`` (its split file written first) and score it on its held-out subjects:
    (the fold's summary, its scored cases)."""
    fold_dir.mkdir(exist_ok=True)
    split_path = fold_dir / "split.json"
    write_json(split_path, fold_split(fold, index, k, config.recipe.split_seed))
    fold_config = dataclasses.replace(config, recipe=dataclasses.replace(config.recipe, split=str(split_path)))
    progress("fold", index / k, f"fold {index + 1}/{k}: training on {len(fold['train'])} subjects")
    result = train_bundle(fold_config, fold_dir / "bundle", work, data=data, name=f"{name}-fold{index}",
                          export_onnx=export_onnx, progress=_within(progress, index, k))
    held_out = [p for p in pairs if p.subject in set(fold["val"])]
    scores = evaluate_pairs(load_bundle(fold_dir / "bundle"), held_out)
    for case in scores["cases"]:
        case["fold"] = index
    summary = {"fold": index, "held_out": fold["val"], "n_cases": scores["n_cases"],
               "dice": {bone: s["mean"] for bone, s in scores["dice"].items() if isinstance(s, dict) and "mean" in s},
               "mean_dice": scores["dice"].get("mean_over_bones"),
               "best_validation_mean_dice": result["best_val_mean_dice"], "bundle": str(fold_dir / "bundle")}
    return summary, scores["cases"]


def card_summary(report: dict) -> dict:
    """What the chosen bundle's card keeps of the report: the numbers and subjects, no machine paths."""
    return {"folds": report["folds"], "subjects": report["subjects"], "n_cases": len(report["cases"]),
            "dice": report["pooled"],  # pooled over every held-out case: what `kneeseg info` shows
            "per_fold": [{k: v for k, v in fold.items() if k != "bundle"} for fold in report["per_fold"]],
            "bundle_fold": report["bundle"]["fold"], "bundle_choice": report["bundle"]["how"]}


def _within(progress, index, k):
    """The fold's training progress as its share of the whole run."""
    def report(stage, fraction, message="", **extra):
        progress(stage, (index + 0.9 * float(fraction)) / k, f"fold {index + 1}/{k}: {message}", **extra)

    report.log = getattr(progress, "log", lambda message: None)
    return report


def pooled_dice(cases, labels) -> dict:
    """Per bone over every held-out case that has it: mean, sd (sample), n; and the mean over bones."""
    pooled = {}
    for label in labels:
        values = [c[label.name]["dice"] for c in cases if c[label.name]["truth_voxels"] > 0]
        if values:
            pooled[label.name] = {"mean": float(np.mean(values)),
                                  "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                                  "n": len(values)}
    if pooled:
        pooled["mean_over_bones"] = float(np.mean([p["mean"] for p in pooled.values()]))
    return pooled


def ensemble_model(models):
    """One Keras model running ``models`` (same input and classes) on its input and averaging their
    outputs (class probabilities). Standard layers only: it loads with ``safe_mode`` and exports to ONNX."""
    import keras

    inputs = keras.Input(shape=tuple(models[0].inputs[0].shape[1:]), name="image")
    members = [keras.Model(m.inputs[0], m.outputs[0], name=f"fold_{i}")(inputs) for i, m in enumerate(models)]
    return keras.Model(inputs, keras.layers.Average(name="fold_average")(members), name="fold_ensemble")


def _save_ensemble(fold_bundles, output: Path, folds, name, export_onnx, progress) -> None:
    """The ensemble of the fold bundles as a bundle at ``output``: the first fold's card (network, frame,
    labels, normalisation are the same for all) naming every subject as training data, without what was
    measured or chosen for fold 0's weights alone."""
    from ..bundle import save_bundle
    from .train import _try_export_onnx, without_run_record

    bundles = [load_bundle(path) for path in fold_bundles]
    model = ensemble_model([b.load_keras_model() for b in bundles])
    card = bundles[0].card
    training = without_run_record(card.training)  # fold 0's own run: not the ensemble's
    data = dict(training.get("data", {}))
    subjects = sorted({s for fold in folds for s in fold["val"]})
    data.update(split={"train": subjects, "validation": [], "test": []},
                split_source=f"{len(folds)}-fold cross-validation: every subject trained some member",
                folds=folds)
    training["data"] = data
    card = card.for_new_weights(name=f"{name}-ensemble", training=training)
    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}-onnx-", dir=output.parent))
    try:
        onnx_path = _try_export_onnx(model, work, progress) if export_onnx else None
        save_bundle(output, model, card, onnx_path=onnx_path)  # each fold's history stays in its own bundle
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _install_best(fold_bundle: Path, output: Path) -> None:
    """Copy the fold's bundle to ``output`` (staged beside it, renamed into place)."""
    refuse_to_replace_non_bundle(output, "the cross-validation's bundle", "choose another -o")  # checked again
    staging = staging_folder(output)
    try:
        for entry in Path(fold_bundle).iterdir():  # a bundle is flat: files only
            shutil.copy2(entry, staging / entry.name)
        swap_into_place(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def cross_validation_table(report: dict) -> str:
    """Dice per bone: a row per fold (mean over its held-out cases), then the pooled mean and sd."""
    bones = [b for b in report["pooled"] if b != "mean_over_bones"]
    rows = [["fold", "cases"] + bones + ["mean"]]
    for fold in report["per_fold"]:
        rows.append([str(fold["fold"]), str(fold["n_cases"])]
                    + [_number(fold["dice"].get(bone)) for bone in bones] + [_number(fold["mean_dice"])])
    pooled = report["pooled"]
    rows.append(["pooled", str(len(report["cases"]))]
                + [f"{pooled[b]['mean']:.3f} +- {pooled[b]['sd']:.3f}" for b in bones]
                + [_number(pooled.get("mean_over_bones"))])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"{report['folds']}-fold cross-validation of {report['data']} ({report['subjects']} subjects): "
             "Dice on each fold's held-out subjects"]
    lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    if report["bundle"]["fold"] is None:
        lines.append(f"  bundle: {report['bundle']['path']} = the ensemble of the {report['folds']} fold models "
                     "(probabilities averaged; quote the pooled row)")
    else:
        lines.append(f"  bundle: {report['bundle']['path']} = fold {report['bundle']['fold']} "
                     "(best on its own held-out fold; quote the pooled row)")
    return "\n".join(lines)


def _number(value) -> str:
    return "-" if value is None else f"{value:.3f}"

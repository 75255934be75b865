"""A researcher's own data end to end, from the outside: the ``kneeseg`` command line as a subprocess.

Their label maps in a layout of their own -> ``synth prepare --labels`` -> a cache the synthesizer
reads; a 3-fold cross-validation on a tiny labelled set -> its report and bundle; the readable
``evaluate`` and ``info`` tables; and every refusal on the way: exit 2 with one line naming the problem.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPO, SHARED_DATA, toy_knee

# their convention: other values than ours (1 femur, 2 tibia, 3 fibula, 4 patella), and a soft tissue
THEIR_VALUES = {"femur": 40, "tibia": 41, "patella": 42, "fibula": 43}
THEIR_LABELS = ",".join(f"{bone}={value}" for bone, value in THEIR_VALUES.items())
REAL_MAPS = {  # file -> (its femur, tibia, patella, fibula values)
    "mskt/mskt_dess_bones_fibula.nrrd": (5, 6, 7, 8),
    "staple/staple_MC22_r.nii.gz": (1, 2, 4, 3),
}


def kneeseg(*args, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(REPO / "KneeSegmentation"), "TF_CPP_MIN_LOG_LEVEL": "3",
           "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "kneeseg", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def assert_refused(proc, *phrases):
    """Exit 2, one error line naming the problem, no traceback."""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("kneeseg: error:")]
    assert proc.returncode == 2, proc.stderr
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for phrase in phrases:
        assert phrase in errors[0], errors[0]


def relabel(labels, bones, other=7):
    """``labels`` (a SimpleITK label map, bones at ``bones`` = femur, tibia, patella, fibula values) in
    their convention; every other structure becomes one soft-tissue value."""
    array = sitk.GetArrayFromImage(labels)
    out = np.where(array > 0, other, 0).astype(np.uint8)
    for name, value in zip(("femur", "tibia", "patella", "fibula"), bones):
        out[array == value] = THEIR_VALUES[name]
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(labels)
    return image


def their_folder(root, real):
    """A folder of label maps in a layout of its own (names with spaces, two levels, notes beside)."""
    if real:
        maps = [relabel(sitk.ReadImage(str(SHARED_DATA / "labelmaps" / name)), bones)
                for name, bones in REAL_MAPS.items()]
    else:
        maps = [relabel(toy_knee(seed=i, origin=(10.0 + 40 * i, -20.0, 5.0))[1], (1, 2, 4, 3)) for i in range(2)]
    places = ["patient A/left knee.nii.gz", "patient B/visit 2/knee.nrrd"]
    for image, place in zip(maps, places):
        (root / place).parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(root / place))
    (root / "patient A" / "notes.txt").write_text("scanned twice\n")
    (root / ".DS_Store").write_text("x")
    (root / "patient B" / "knee.nrrd~").write_text("an editor's backup")
    return root


@pytest.mark.parametrize("real", [
    pytest.param(False, id="synthetic shapes"),
    pytest.param(True, id="real maps", marks=[pytest.mark.slow, pytest.mark.realdata]),
])
def test_their_label_maps_in_their_layout_become_a_synthetic_training_cache(tmp_path, real):
    if real and not (SHARED_DATA / "labelmaps").is_dir():
        pytest.skip(f"real label maps not present at {SHARED_DATA / 'labelmaps'}")
    source = their_folder(tmp_path / "their maps", real)
    proc = kneeseg("synth", "prepare", source, tmp_path / "cache", "--labels", THEIR_LABELS, "--dataset", "mylab",
                   "--licence", "CC BY 4.0", "--subject-pattern", "^([^/]+)", "--progress", "json")
    assert proc.returncode == 0, proc.stderr
    done = json.loads(proc.stdout.splitlines()[-1])
    assert done["stage"] == "done" and done["fraction"] == 1.0 and done["result"]["entries"] == 2
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    files = manifest["files"]
    assert [f["source"] for f in files] == ["patient A/left knee.nii.gz", "patient B/visit 2/knee.nrrd"]
    assert [f["subject"] for f in files] == ["patient A", "patient B"]
    assert all(f["dataset"] == "mylab" and f["licence"] == "CC BY 4.0" for f in files)
    assert all(f["bones"] == ["Femur", "Tibia", "Fibula", "Patella"] for f in files)
    assert "1 file(s)" in proc.stderr and "notes.txt" in proc.stderr  # the note on what was skipped

    sheet = kneeseg("synth", "sheet", tmp_path / "cache", tmp_path / "sheet.png", "-n", "2")
    assert sheet.returncode == 0, sheet.stderr  # the synthesizer draws from the cache
    assert (tmp_path / "sheet.png").stat().st_size > 1000
    if real:
        return
    # labelled stand-in scans from the cache, ready for 'kneeseg train --data pairs.csv'
    volumes = kneeseg("synth", "volumes", tmp_path / "cache", tmp_path / "scans", "-n", "3", "--progress", "none")
    assert volumes.returncode == 0, volumes.stderr
    rows = (tmp_path / "scans" / "pairs.csv").read_text().splitlines()
    assert rows[0] == "image,label,subject" and [r.split(",")[2] for r in rows[1:]] == ["patient A", "patient B",
                                                                                         "patient A"]
    for row in rows[1:]:
        image, labels = (sitk.ReadImage(str(tmp_path / "scans" / name)) for name in row.split(",")[:2])
        assert image.GetSize() == labels.GetSize() and image.GetOrigin() == labels.GetOrigin()
        assert {1, 2} <= set(np.unique(sitk.GetArrayViewFromImage(labels)).tolist())


def test_bad_label_maps_and_mappings_are_refused_with_one_line(tmp_path):
    source = their_folder(tmp_path / "maps", real=False)
    cache = tmp_path / "cache"
    for labels, phrases in (
        ("femur=40,tibia=40", ("label value 40 is given twice: to femur and to tibia",)),
        ("femr=40,tibia=41", ("'femr', which is no bone",)),
        (THEIR_LABELS + ",meniscus=99", ("99 (meniscus)", "in none of the 2 label maps")),
    ):
        assert_refused(kneeseg("synth", "prepare", source, cache, "--labels", labels), *phrases)
    assert_refused(kneeseg("synth", "prepare", source, cache), "a plain label map: say which value is which bone")
    (tmp_path / "empty").mkdir()
    assert_refused(kneeseg("synth", "prepare", tmp_path / "empty", cache, "--labels", THEIR_LABELS),
                   "no label maps here")
    (source / "patient C").mkdir()
    (source / "patient C" / "knee.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    assert_refused(kneeseg("synth", "prepare", source, cache, "--labels", THEIR_LABELS),
                   "patient C/knee.nii.gz: not a readable label map")
    assert not cache.exists()  # nothing half-written


def their_scans(root, n=4):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        image, labels = toy_knee(seed=i)
        sitk.WriteImage(image, str(root / "images" / f"knee{i}.nrrd"))
        sitk.WriteImage(labels, str(root / "labels" / f"knee{i}.nrrd"))
    return root


TINY_TRAINING = ("--filters", "4", "--depth", "2", "--input-size", "32", "--planes", "sagittal", "--epochs", "2",
                 "--steps-per-epoch", "2", "--validation-steps", "1", "--batch-size", "4", "--no-onnx")


def test_wrong_fold_counts_and_combinations_are_refused_before_any_training(tmp_path):
    data = their_scans(tmp_path / "scans")
    for extra, phrases in (
        (("--data", data, "--folds", "1"), ("--folds must be between 2 and the number of subjects (4), not 1",)),
        (("--data", data, "--folds", "5"), ("between 2 and the number of subjects (4), not 5",)),
        (("--synthetic", tmp_path, "--folds", "3"), ("it goes with --data, not --synthetic",)),
    ):
        assert_refused(kneeseg("train", *extra, "-o", tmp_path / "model", *TINY_TRAINING, "--progress", "none"),
                       *phrases)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("not a bundle")
    for folds in (("--folds", "3"), ()):  # one training or several: refused before any, nothing deleted
        assert_refused(kneeseg("train", "--data", data, *folds, "-o", tmp_path / "notes", *TINY_TRAINING,
                               "--progress", "none"), "notes: exists and is not a model bundle")
        assert (tmp_path / "notes" / "mine.txt").read_text() == "not a bundle"
    for work in (tmp_path / "model", tmp_path / "model" / "work"):
        assert_refused(kneeseg("train", "--data", data, "-o", tmp_path / "model", "--work", work, *TINY_TRAINING,
                               "--progress", "none"), "the work folder (checkpoints, history) is the output folder")
    assert not (tmp_path / "notes.work").exists()
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["knee0", "knee1"], "validation": ["knee2"], "test": ["knee3"]}))
    assert_refused(kneeseg("train", "--data", data, "--folds", "3", "--split", split, "-o", tmp_path / "model",
                           *TINY_TRAINING, "--progress", "none"), "give --folds or --split, not both")
    assert not (tmp_path / "model").exists() and not (tmp_path / "model.folds").exists()


@pytest.mark.slow
def test_three_fold_cross_validation_then_evaluate_and_info_tables(tmp_path):
    data = their_scans(tmp_path / "scans")
    model = tmp_path / "model"
    proc = kneeseg("train", "--data", data, "--folds", "3", "-o", model, *TINY_TRAINING, "--progress", "none")
    assert proc.returncode == 0, proc.stderr
    folds_dir = tmp_path / "model.folds"
    splits = json.loads((folds_dir / "splits_final.json").read_text())
    assert len(splits) == 3 and sorted(s for fold in splits for s in fold["val"]) == [f"knee{i}" for i in range(4)]
    report = json.loads((folds_dir / "cross_validation.json").read_text())
    assert [f["fold"] for f in report["per_fold"]] == [0, 1, 2]
    assert sum(f["n_cases"] for f in report["per_fold"]) == 4 == len(report["cases"])
    for fold, listed in zip(report["per_fold"], splits):
        assert fold["held_out"] == listed["val"]
        own = json.loads((folds_dir / f"fold_{fold['fold']}" / "split.json").read_text())
        assert own["test"] == listed["val"] and not set(own["train"] + own["validation"]) & set(listed["val"])
        assert set(fold["dice"]) == {"Femur", "Tibia", "Fibula", "Patella"}
    pooled = report["pooled"]
    femur = [c["Femur"]["dice"] for c in report["cases"]]
    assert pooled["Femur"]["mean"] == pytest.approx(np.mean(femur)) and pooled["Femur"]["n"] == 4
    assert pooled["Femur"]["sd"] == pytest.approx(np.std(femur, ddof=1))
    table = (folds_dir / "cross_validation.txt").read_text()
    assert table.strip() in proc.stdout and "pooled" in table and "+-" in table

    best = report["bundle"]["fold"]
    assert max(f["mean_dice"] for f in report["per_fold"]) == report["per_fold"][best]["mean_dice"]
    card = json.loads((model / "card.json").read_text())
    assert card["metrics"]["cross_validation"]["bundle_fold"] == best
    assert str(tmp_path) not in json.dumps(card["metrics"])  # the report in the card names no machine path

    info = kneeseg("info", model)
    assert info.returncode == 0 and info.stdout.startswith(f"knee-bones-fold{best}") and "{" not in info.stdout
    assert f"fold {best} of a 3-fold cross-validation" in info.stdout
    assert f"cross_validation (4): Femur {pooled['Femur']['mean']:.3f}" in info.stdout
    evaluation = kneeseg("evaluate", "--model", model, "--pairs", data, "--progress", "none")
    assert evaluation.returncode == 0, evaluation.stderr
    assert "Femur" in evaluation.stdout and "Dice mean (worst)" in evaluation.stdout and "{" not in evaluation.stdout
    as_json = kneeseg("evaluate", "--model", model, "--pairs", data, "--progress", "none", "--json")
    assert json.loads(as_json.stdout)["pairs"]["n_cases"] == 4

    # the same run again, asking for the ensemble: every fold resumes from its finished work folder
    proc = kneeseg("train", "--data", data, "--folds", "3", "--fold-bundle", "ensemble", "-o", model, *TINY_TRAINING,
                   "--progress", "none")
    assert proc.returncode == 0, proc.stderr
    assert "the ensemble of the 3 fold models" in proc.stdout
    again = json.loads((folds_dir / "cross_validation.json").read_text())
    assert [f["dice"] for f in again["per_fold"]] == [f["dice"] for f in report["per_fold"]]
    card = json.loads((model / "card.json").read_text())
    assert card["name"] == "knee-bones-ensemble" and card["training"]["data"]["split"]["test"] == []
    assert "best_epoch" not in card["training"]  # fold 0's own run, not the ensemble's
    assert card["metrics"]["cross_validation"]["bundle_fold"] is None
    labels = tmp_path / "knee0_labels.nrrd"
    segmented = kneeseg("segment", data / "images" / "knee0.nrrd", "-o", labels, "--model", model, "--progress", "none")
    assert segmented.returncode == 0, segmented.stderr
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(labels))).shape == (36, 40, 48)

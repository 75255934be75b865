"""What training, evaluation and synthesis write: never a user's file, never half a result, refusals before work.

Found by an attack on the training side (2026-12-05): a folder with a stray card.json counted as a bundle and
lost its other files, any folder could be the work folder, a resumed run ignored a changed split file, reports
and synthetic scans could overwrite inputs, and a typo in --real2d surfaced after the whole training.
"""

import json
import re
import shutil

import numpy as np
import pytest

from kneeseg.bundle import load_bundle, save_bundle, why_not_replaceable
from kneeseg.errors import InputError
from kneeseg.train import TrainConfig
from kneeseg.workflows.train import check_output_and_work, train_bundle

from conftest import write_toy_pairs
from test_researcher_path import TINY_TRAINING as TINY_CLI, assert_refused, kneeseg, their_scans

TINY = dict(filters=4, depth=2, input_size=32, planes=("sagittal",), epochs=1, steps_per_epoch=2,
            validation_steps=1, batch_size=4)


def _contents(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_only_a_folder_holding_a_bundle_and_nothing_else_is_replaceable(tiny_bundle, tmp_path):
    assert why_not_replaceable(tmp_path / "new") is None and why_not_replaceable(tiny_bundle) is None
    (tmp_path / "empty").mkdir()
    assert why_not_replaceable(tmp_path / "empty") is None
    cases = {"stray card": {"card.json": b'{"my": "card"}', "thesis.docx": b"chapter 1"},
             "their card": {"card.json": b'{"my": "card"}'},
             "bundle and notes": {**_contents(tiny_bundle), "notes.txt": b"mine"}}
    for name, files in cases.items():
        for file, data in files.items():
            (tmp_path / name).mkdir(exist_ok=True)
            (tmp_path / name / file).write_bytes(data)
    shutil.copytree(tiny_bundle, tmp_path / "bundle with a folder")
    (tmp_path / "bundle with a folder" / "predictions").mkdir()
    model = load_bundle(tiny_bundle).load_keras_model()
    for name, words in (("stray card", "it holds thesis.docx"), ("their card", "not a model bundle"),
                        ("bundle and notes", "it holds notes.txt"), ("bundle with a folder", "it holds predictions")):
        before = _contents(tmp_path / name)
        with pytest.raises(InputError, match=words):
            save_bundle(tmp_path / name, model, load_bundle(tiny_bundle).card)
        assert _contents(tmp_path / name) == before and (tmp_path / name / "predictions").exists() == (
            name == "bundle with a folder")


def test_output_and_work_folders_are_checked_before_any_training(tiny_bundle, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (tmp_path / "worklink").symlink_to(docs)
    (docs / "average-2019.npz").write_bytes(b"precious")
    (docs / "history.csv").write_text("epoch,loss\n1,0.5\n")
    (tmp_path / "afile.csv").write_text("a,b\n")
    for output, work, init_from, words in (
            (".", tmp_path / "w", None, "not '.' or '..'"),
            (tmp_path / "out", docs, None, "the work folder holds files that are not a training run's (average-2019"),
            (tmp_path / "out", tiny_bundle, None, "not a training run's (card.json, history.png, model.keras)"),
            (tmp_path / "out", tmp_path / "worklink", None, "is a file or a link"),
            (tiny_bundle / "inner", tmp_path / "w", tiny_bundle, "lies inside) the bundle this training starts from"),
            (tmp_path / "out", tmp_path / "afile.csv", None, "is a file or a link"),
            (tiny_bundle, tmp_path / "w", tiny_bundle, "the bundle this training starts from"),
            (tmp_path / "afile.csv" / "model", tmp_path / "w", None, "is a file, not a folder")):
        with pytest.raises(InputError, match=re.escape(words)):
            check_output_and_work(output, work, init_from)
    assert (docs / "average-2019.npz").read_bytes() == b"precious" and not (tmp_path / "out").exists()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "state.json").write_text("{}")  # a run's own work folder: resumable
    check_output_and_work(tmp_path / "out", tmp_path / "run")
    (tmp_path / "killed").mkdir()  # a run killed in its first epoch leaves these, and no state.json
    for name in ("history.csv", "best.keras", ".checkpoint.tmp.keras"):
        (tmp_path / "killed" / name).write_bytes(b"")
    check_output_and_work(tmp_path / "out", tmp_path / "killed")


def test_cross_validation_refuses_its_start_bundle_as_output_before_any_fold(tiny_bundle, tmp_path):
    from kneeseg.workflows.crossval import cross_validate

    data = write_toy_pairs(tmp_path / "data", n=4, size=(40, 40, 32), spacing=(1.5, 1.5, 1.5))
    before = _contents(tiny_bundle)
    with pytest.raises(InputError, match="the bundle this training starts from"):
        cross_validate(TrainConfig.from_flat(**TINY, init_from=str(tiny_bundle)), data, tiny_bundle, 2,
                       export_onnx=False)
    assert _contents(tiny_bundle) == before and not (tmp_path / "data.folds").exists()
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="holds files no cross-validation wrote \\(notes.txt\\)"):
        cross_validate(TrainConfig.from_flat(**TINY), data, tmp_path / "model", 2, work=tmp_path / "work",
                       export_onnx=False)
    assert (tmp_path / "work" / "notes.txt").read_text() == "mine" and not (tmp_path / "model.folds").exists()


@pytest.mark.slow
def test_a_changed_split_file_is_not_resumed_as_the_same_run(tmp_path):
    data = write_toy_pairs(tmp_path / "data", n=4, size=(40, 40, 32), spacing=(1.5, 1.5, 1.5))
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["case0", "case1"], "validation": ["case2"], "test": ["case3"]}))
    config = TrainConfig.from_flat(**TINY, split=str(split))
    train_bundle(config, tmp_path / "b", tmp_path / "b.work", data=data, export_onnx=False)
    split.write_text(json.dumps({"train": ["case1", "case3"], "validation": ["case2"], "test": ["case0"]}))
    with pytest.raises(InputError, match="other settings \\(the split file's contents\\)"):
        train_bundle(TrainConfig.from_flat(**{**TINY, "epochs": 2}, split=str(split)), tmp_path / "b",
                     tmp_path / "b.work", data=data, export_onnx=False)
    assert load_bundle(tmp_path / "b").card.training["data"]["split"]["test"] == ["case3"]


def test_a_missing_real_slice_file_is_refused_before_training(tmp_path):
    data = their_scans(tmp_path / "scans")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    np.savez(tmp_path / "nolabels.npz", images=np.zeros((2, 8, 8)))
    for npz, words in (("typo.npz", "no such file of real labelled slices"),
                       ("bad.npz", "not a readable .npz"), ("nolabels.npz", "lack labels")):
        assert_refused(kneeseg("train", "--data", data, "-o", tmp_path / "model", "--real2d", tmp_path / npz,
                               *TINY_CLI, "--progress", "none"), words)
    assert not (tmp_path / "model").exists() and not (tmp_path / "model.work").exists()


def test_evaluate_never_writes_its_report_over_an_input_nor_the_shipped_card(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    scans = their_scans(tmp_path / "scans", n=1)
    np.savez(tmp_path / "slices.npz", images=np.zeros((1, 8, 8)), labels=np.zeros((1, 8, 8), np.uint8))
    before, slices = _contents(bundle), (tmp_path / "slices.npz").read_bytes()
    for report, words in ((bundle / "card.json", "inside the input folder"), (scans / "images" / "r.json", "inside"),
                          (tmp_path / "slices.npz", "is the input")):
        assert_refused(kneeseg("evaluate", "--model", bundle, "--pairs", scans, "--real2d", tmp_path / "slices.npz",
                               "--report", report, "--progress", "none"), words)
    assert (tmp_path / "slices.npz").read_bytes() == slices
    assert_refused(kneeseg("evaluate", "--pairs", scans, "--update-card", "--progress", "none"),
                   "name that bundle with --model")
    assert _contents(bundle) == before and not (scans / "images" / "r.json").exists()


def test_synthesis_writes_only_into_new_or_empty_folders_or_over_its_own_cache(tmp_path):
    from test_synth import PHANTOM_SOURCE, write_phantom

    from kneeseg.synth import prepare_cache, write_labelled_volumes

    write_phantom(tmp_path / "src" / "phantom", "knee")
    cache = tmp_path / "cache"
    prepare_cache(tmp_path / "src", cache, spacing_mm=1.0, margin_mm=20.0, sources=(PHANTOM_SOURCE,))
    prepare_cache(tmp_path / "src", cache, spacing_mm=1.0, margin_mm=20.0, sources=(PHANTOM_SOURCE,))  # rebuilt
    theirs = their_scans(tmp_path / "theirs", n=1)
    (theirs / "pairs.csv").write_text("image,label\n")
    before = _contents(theirs)
    for target, words in ((theirs, "holds files and is not a label-map cache"),
                          (tmp_path / "src", "overlap"), (tmp_path / "src" / "cache", "overlap")):
        with pytest.raises(InputError, match=words):
            prepare_cache(tmp_path / "src", target, spacing_mm=1.0, sources=(PHANTOM_SOURCE,))
    with pytest.raises(InputError, match="new or empty folder"):
        write_labelled_volumes(cache, theirs, n=1)
    assert _contents(theirs) == before and not (tmp_path / "src" / "cache").exists()
    pairs = write_labelled_volumes(cache, tmp_path / "volumes", n=3)
    pairs = write_labelled_volumes(cache, tmp_path / "volumes", n=2)  # a rerun replaces its own earlier output
    assert pairs.read_text().count("\n") == 3 and len(list((tmp_path / "volumes" / "images").iterdir())) == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    for args, words in ((("-n", "0"), "-n must be 1 or more"), ((), "must end in .png")):
        assert_refused(kneeseg("synth", "sheet", cache, tmp_path / ("sheet.json" if not args else "sheet.png"), *args),
                       words)


def test_the_best_folds_bundle_replaces_only_a_bundle(tiny_bundle, tmp_path):
    from kneeseg.workflows.crossval import _install_best

    _install_best(tiny_bundle, tmp_path / "model")
    _install_best(tiny_bundle, tmp_path / "model")  # a rerun replaces its own bundle
    assert load_bundle(tmp_path / "model") and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    (tmp_path / "model" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="it holds notes.txt"):
        _install_best(tiny_bundle, tmp_path / "model")
    assert (tmp_path / "model" / "notes.txt").read_text() == "mine"


def test_a_failed_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
    from pathlib import Path

    from kneeseg.writing import staging_folder, swap_into_place

    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "card.json").write_text("old")
    staging = staging_folder(tmp_path / "b")
    (staging / "card.json").write_text("new")
    rename = Path.rename

    def failing(self, target):
        if self == staging:
            raise OSError("interrupted")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", failing)
    with pytest.raises(OSError):
        swap_into_place(staging, tmp_path / "b")
    assert (tmp_path / "b" / "card.json").read_text() == "old"


def test_round3_builds_its_fibula_cache_beside_the_bundle_not_in_the_work_folder(tmp_path, monkeypatch):
    import kneeseg.synth.fibula as fibula
    from conftest import load_script

    recipe = load_script("train_default")
    used = []
    monkeypatch.setattr(recipe, "check_cache_holds_split", lambda *a: None)
    monkeypatch.setattr(fibula, "add_fibulas", lambda cache, out, **k: (out.mkdir(parents=True), {"files": []})[1])
    monkeypatch.setattr(recipe, "_fine_tune", lambda args, settings, name, cache=None: used.append(cache))
    monkeypatch.setattr("sys.argv", ["train_default.py", "round3", "--out", str(tmp_path / "round3")])
    recipe.main()
    assert used == [tmp_path / "round3.labelmaps-fibula"] and not (tmp_path / "round3.work").exists()

"""K-fold cross-validation: folds by subject (nnU-Net's splits_final.json form), fold splits, pooled report."""

import numpy as np
import pytest

from kneeseg.errors import InputError
from kneeseg.labels import SEPARATE_BONES
from kneeseg.workflows.crossval import cross_validation_table, fold_split, folds_of, pooled_dice

SUBJECTS = [f"s{i}" for i in range(7)] + ["s0", "s3"]  # two scans of s0 and of s3


def test_folds_hold_every_subject_out_exactly_once_and_are_seeded():
    folds = folds_of(SUBJECTS, 3, seed=0)
    assert len(folds) == 3 and all(set(f) == {"train", "val"} for f in folds)
    held = [s for f in folds for s in f["val"]]
    assert sorted(held) == sorted(set(SUBJECTS))  # each subject once, never split by scan
    for f in folds:
        assert not set(f["train"]) & set(f["val"]) and set(f["train"]) | set(f["val"]) == set(SUBJECTS)
    assert sorted(len(f["val"]) for f in folds) == [2, 2, 3]
    assert folds_of(SUBJECTS, 3, seed=0) == folds and folds_of(SUBJECTS, 3, seed=1) != folds


@pytest.mark.parametrize("k, message", [(1, "between 2 and the number of subjects \\(7\\), not 1"),
                                        (8, "between 2 and the number of subjects \\(7\\), not 8")])
def test_fold_counts_outside_2_to_the_subjects_are_refused(k, message):
    with pytest.raises(InputError, match=message):
        folds_of(SUBJECTS, k)


def test_too_few_subjects_to_train_and_validate_in_every_fold_are_refused():
    with pytest.raises(InputError, match="leave fewer than 2 training subjects per fold"):
        folds_of(["a", "b"], 2)
    assert len(folds_of(["a", "b", "c"], 3)) == 3


def test_a_fold_split_tests_on_the_held_out_fold_and_validates_on_its_own_subjects():
    folds = folds_of(SUBJECTS, 3)
    for index, fold in enumerate(folds):
        split = fold_split(fold, index, 3, seed=0)
        assert split["test"] == fold["val"]
        assert sorted(split["train"] + split["validation"]) == fold["train"]
        assert split["train"] and split["validation"] and not set(split["train"]) & set(split["validation"])


def _case(fold, **dice):
    case = {"fold": fold}
    for bone in SEPARATE_BONES:
        value = dice.get(bone.name.lower())
        case[bone.name] = {"dice": value or 0.0, "truth_voxels": 0 if value is None else 10}
    return case


def test_the_pooled_report_is_over_every_held_out_case():
    cases = [_case(0, femur=0.8, tibia=0.6), _case(0, femur=0.9, tibia=0.7), _case(1, femur=1.0, tibia=0.8)]
    pooled = pooled_dice(cases, SEPARATE_BONES)
    assert pooled["Femur"] == {"mean": pytest.approx(0.9), "sd": pytest.approx(0.1), "n": 3}
    assert pooled["Tibia"]["mean"] == pytest.approx(0.7) and "Fibula" not in pooled
    assert pooled["mean_over_bones"] == pytest.approx(0.8)
    report = {"folds": 2, "subjects": 3, "data": "knees/", "cases": cases, "pooled": pooled,
              "per_fold": [{"fold": 0, "n_cases": 2, "dice": {"Femur": 0.85, "Tibia": 0.65}, "mean_dice": 0.75},
                           {"fold": 1, "n_cases": 1, "dice": {"Femur": 1.0, "Tibia": 0.8}, "mean_dice": 0.9}],
              "bundle": {"path": "model", "fold": 1}}
    table = cross_validation_table(report).splitlines()
    assert table[1].split() == ["fold", "cases", "Femur", "Tibia", "mean"]
    assert table[2].split() == ["0", "2", "0.850", "0.650", "0.750"]
    assert table[4].split() == ["pooled", "3", "0.900", "+-", "0.100", "0.700", "+-", "0.100", "0.800"]
    assert "model = fold 1" in table[5]


def test_an_ensemble_averages_its_members_probabilities_and_loads_safely(tmp_path):
    """The ensemble bundle of --fold-bundle ensemble: one model, the members' class probabilities averaged,
    loadable with safe_mode and exported to ONNX like any bundle's model."""
    import keras

    from kneeseg.model import build_model
    from kneeseg.onnx_backend import OnnxPredictor, export_onnx
    from kneeseg.specs import NetworkSpec
    from kneeseg.workflows.crossval import ensemble_model

    keras.utils.set_random_seed(0)
    members = [build_model(NetworkSpec(filters=4, depth=2), 32) for _ in range(3)]
    ensemble = ensemble_model(members)
    batch = np.random.default_rng(0).standard_normal((2, 32, 32, 1)).astype("float32")
    outputs = [m.predict(batch, verbose=0) for m in members]
    assert not np.allclose(outputs[0], outputs[1])  # the members differ, so the average is a real test
    expected = np.mean(outputs, axis=0)
    np.testing.assert_allclose(ensemble.predict(batch, verbose=0), expected, atol=1e-6)
    ensemble.save(tmp_path / "ensemble.keras")
    loaded = keras.models.load_model(tmp_path / "ensemble.keras", compile=False, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(batch, verbose=0), expected, atol=1e-6)
    graph = export_onnx(ensemble, tmp_path / "ensemble.onnx")
    np.testing.assert_allclose(OnnxPredictor(path=graph)(batch), expected, atol=1e-4)

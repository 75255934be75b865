"""Losses and metrics against values computed by hand."""

import keras
import numpy as np
import pytest

from kneeseg.labels import SEPARATE_BONES
from kneeseg.losses import (ClassConfusion, CombinedLoss, CrossEntropyLoss, MeanDice, SoftFBetaLoss, make_loss,
                            soft_fbeta, training_metrics)


def _probs(labels, n=5, confidence=1.0):
    one_hot = np.eye(n, dtype=np.float32)[labels]
    return confidence * one_hot + (1 - confidence) / n


def test_perfect_prediction_has_zero_dice_loss():
    y = np.random.default_rng(0).integers(0, 5, (2, 8, 8))
    assert float(SoftFBetaLoss()(y, _probs(y))) == pytest.approx(0.0, abs=1e-5)


def test_soft_dice_matches_hand_computation():
    y = np.array([[[1, 1, 0, 0]]])  # femur on 2 of 4 pixels
    p = np.zeros((1, 1, 4, 2), np.float32)
    p[..., 1] = [0.8, 0.6, 0.2, 0.0]
    p[..., 0] = 1 - p[..., 1]
    tp, fp, fn = 0.8 + 0.6, 0.2, 0.2 + 0.4
    expected = 2 * tp / (2 * tp + fp + fn)
    assert float(soft_fbeta(y, p)[0]) == pytest.approx(expected, rel=1e-4)
    assert float(SoftFBetaLoss()(y, p)) == pytest.approx(1 - expected, rel=1e-4)


def test_fbeta_weights_recall():
    y = np.array([[[1, 1, 1, 0]]])
    p = np.zeros((1, 1, 4, 2), np.float32)
    p[..., 1] = [1, 0, 0, 0]  # precise but low recall
    p[..., 0] = 1 - p[..., 1]
    assert float(soft_fbeta(y, p, beta=2.0)[0]) < float(soft_fbeta(y, p, beta=1.0)[0])


def test_class_weights_change_the_loss():
    y = np.array([[[1, 2, 0, 0]]])
    p = _probs(np.array([[[1, 0, 0, 0]]]), n=3)  # tibia missed
    plain = float(SoftFBetaLoss()(y, p))
    tibia_heavy = float(SoftFBetaLoss(class_weights=[1, 10])(y, p))
    assert tibia_heavy > plain


def test_cross_entropy_and_sum():
    y = np.array([[[0, 1]]])
    p = np.array([[[[0.9, 0.1], [0.2, 0.8]]]], np.float32)
    expected = -(np.log(0.9) + np.log(0.8)) / 2
    assert float(CrossEntropyLoss()(y, p)) == pytest.approx(expected, rel=1e-4)
    combined = float(CombinedLoss()(y, p))
    assert combined == pytest.approx(float(SoftFBetaLoss()(y, p)) + expected, rel=1e-4)
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("focal")


def test_merged_bone_channel():
    y = np.array([[[0, 1, 2, 3]]])  # any bone counts as bone
    p = np.array([[[[0.0], [1.0], [1.0], [1.0]]]], np.float32)
    assert float(SoftFBetaLoss()(y, p)) == pytest.approx(0.0, abs=1e-5)


def test_confusion_metrics_match_counts():
    truth = np.array([[[1, 1, 1, 0, 0, 2]]])
    pred = _probs(np.array([[[1, 1, 0, 1, 0, 2]]]))
    values = {}
    for kind in ClassConfusion.KINDS:
        metric = ClassConfusion(kind, 1)
        metric.update_state(truth, pred)
        values[kind] = float(metric.result())
    tp, fp, fn, tn = 2, 1, 1, 2
    assert values["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn), rel=1e-4)
    assert values["iou"] == pytest.approx(tp / (tp + fp + fn), rel=1e-4)
    assert values["precision"] == pytest.approx(tp / (tp + fp), rel=1e-4)
    assert values["recall"] == pytest.approx(tp / (tp + fn), rel=1e-4)
    assert values["accuracy"] == pytest.approx((tp + tn) / 6, rel=1e-4)


def test_mean_dice_averages_classes_and_accumulates_over_batches():
    metric = MeanDice(3)
    metric.update_state(np.array([[[1, 1, 0, 0]]]), _probs(np.array([[[1, 1, 0, 0]]]), 3))  # femur perfect
    metric.update_state(np.array([[[2, 2, 0, 0]]]), _probs(np.array([[[2, 0, 0, 0]]]), 3))  # tibia half
    assert float(metric.result()) == pytest.approx((1.0 + 2 / 3) / 2, rel=1e-4)
    metric.reset_state()
    assert float(metric.result()) == pytest.approx(1.0)


def test_training_metrics_names():
    names = [m.name for m in training_metrics(SEPARATE_BONES)]
    assert names[0] == "mean_dice"
    assert {"dice_femur", "dice_tibia", "dice_fibula", "dice_patella", "precision", "recall", "iou"} <= set(names)


def test_losses_and_metrics_survive_saving(tmp_path):
    from kneeseg.model import build_unet_2d

    model = build_unet_2d(input_size=32, filters=4, depth=2)
    model.compile(optimizer="adam", loss=CombinedLoss(class_weights=[1, 2, 3, 4]), metrics=training_metrics(SEPARATE_BONES))
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    assert loaded.loss.get_config()["class_weights"] == [1, 2, 3, 4]

"""Evaluation metrics: overlap scores by hand, surface distances from MedPy, summaries."""

import numpy as np
import pytest

from kneeseg.metrics import evaluate_case, overlap_scores, summarise, surface_distances
from kneeseg.labels import FEMUR, TIBIA


def test_overlap_scores_match_counts():
    truth = np.array([1, 1, 1, 0, 0, 0])
    pred = np.array([1, 1, 0, 1, 0, 0])
    s = overlap_scores(truth, pred, 1)
    assert s["dice"] == pytest.approx(4 / 6)
    assert s["iou"] == pytest.approx(2 / 4)
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 3)
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert overlap_scores(truth, pred, 7)["dice"] == 1.0  # absent in both


def test_surface_distances_in_mm_from_medpy():
    truth = np.zeros((20, 20, 20), bool)
    truth[5:15, 5:15, 5:15] = True
    shifted = np.roll(truth, 2, axis=0)  # 2 voxels along axis 0
    d = surface_distances(truth, shifted, True, spacing_mm=(3.0, 1.0, 1.0))
    assert d["hd95_mm"] == pytest.approx(6.0)
    assert 0 < d["assd_mm"] < 6.0
    assert np.isnan(surface_distances(truth, np.zeros_like(truth), True, (1, 1, 1))["assd_mm"])


def test_summary_of_cases_takes_worst_in_the_right_direction_and_counts_misses():
    truth = np.zeros((10, 10, 10), np.uint8)
    truth[2:8, 2:8, 2:5] = 1
    truth[2:8, 2:8, 6:9] = 2
    good = truth.copy()
    missed_tibia = truth.copy()
    missed_tibia[truth == 2] = 0
    cases = [evaluate_case(truth, p, (FEMUR, TIBIA), spacing_mm=(1, 1, 1)) for p in (good, missed_tibia)]
    dice = summarise(cases, (FEMUR, TIBIA), "dice")
    assert dice["Tibia"]["worst"] == 0.0 and dice["Tibia"]["mean"] == pytest.approx(0.5)
    hd = summarise(cases, (FEMUR, TIBIA), "hd95_mm")
    assert hd["Tibia"] == {"n": 2, "missed": 1, "mean": 0.0, "median": 0.0, "worst": 0.0}
    assert hd["Femur"]["missed"] == 0

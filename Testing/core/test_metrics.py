"""Evaluation metrics: overlap scores by hand, surface distances from MedPy, signed ones from SimpleITK, summaries."""

import numpy as np
import pytest

from kneeseg.metrics import evaluate_case, overlap_scores, signed_surface_distance, summarise, surface_distances
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


def _ball(shape, spacing_mm, centre_mm, radius_mm):
    grid = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing_mm)], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grid, centre_mm)) <= radius_mm ** 2


def test_signed_surface_distance_has_the_sign_and_scale_of_a_known_margin():
    # Anisotropic voxels: spacing read in the wrong axis order, or distances left in voxels, miss the
    # margin by more than the tolerance (checked: 37 % and 46 % off). On digital surfaces the metric,
    # like MedPy's ASSD, reads a margin 10-20 % short (nearest-voxel distances across staircases).
    spacing_mm = (1.0, 0.6, 0.4)
    shape = tuple(int(50 / s) for s in spacing_mm)  # a 50 mm cube
    centre = (25.0, 25.0, 25.0)
    truth = _ball(shape, spacing_mm, centre, 15.0)
    grown = _ball(shape, spacing_mm, centre, 17.0)
    shrunk = _ball(shape, spacing_mm, centre, 13.5)
    assert signed_surface_distance(truth, grown, spacing_mm) == pytest.approx(2.0, rel=0.22)  # outside: positive
    assert signed_surface_distance(truth, shrunk, spacing_mm) == pytest.approx(-1.5, rel=0.22)  # inside: negative
    assert signed_surface_distance(truth, truth, spacing_mm) == 0.0
    # a displaced ball of the same size: far surfaces, no bias (ASSD alone would not tell them apart)
    moved = _ball(shape, spacing_mm, (28.0, 25.0, 25.0), 15.0)
    assert abs(signed_surface_distance(truth, moved, spacing_mm)) < 0.2
    assert np.isnan(signed_surface_distance(truth, np.zeros_like(truth), spacing_mm))


def test_signed_surface_distance_works_on_2d_slices_and_case_scores_carry_it_with_the_area_ratio():
    truth = _ball((80, 80), (0.6, 0.6), (24.0, 24.0), 10.0).astype(np.uint8)
    grown = _ball((80, 80), (0.6, 0.6), (24.0, 24.0), 11.2).astype(np.uint8)
    scores = evaluate_case(truth, grown, (FEMUR,), spacing_mm=(0.6, 0.6))["Femur"]
    assert scores["signed_surface_mm"] == pytest.approx(1.2, rel=0.22)
    assert scores["volume_ratio"] == pytest.approx((11.2 / 10.0) ** 2, rel=0.05)
    cases = [evaluate_case(truth, p, (FEMUR,), spacing_mm=(0.6, 0.6)) for p in (grown, truth)]
    signed = summarise(cases, (FEMUR,), "signed_surface_mm")["Femur"]
    assert signed["worst"] == pytest.approx(scores["signed_surface_mm"])  # the farthest from zero

"""Inference end to end with a model trained by the real training path on toy knees."""

import dataclasses

import numpy as np
import pytest
import SimpleITK as sitk

from kneeseg.bundle import load_bundle
from kneeseg.errors import Cancelled
from kneeseg.metrics import evaluate_case
from kneeseg.infer import SegmentOptions, segment
from kneeseg.io import same_geometry
from kneeseg.postprocess import cleanup
from conftest import toy_knee

TOY = dict(size=(48, 48, 40), spacing=(1.5, 1.5, 1.5))


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return load_bundle(tiny_bundle)


def _dice(truth, result, bundle):
    scores = evaluate_case(sitk.GetArrayFromImage(truth), sitk.GetArrayFromImage(result.labelmap), bundle.labels)
    return {name: s["dice"] for name, s in scores.items()}


def test_label_map_has_exactly_the_input_geometry_for_an_oblique_volume(bundle, oblique_direction):
    image, _ = toy_knee(seed=21, size=(44, 40, 30), spacing=(1.4, 1.6, 2.2), direction=oblique_direction,
                        origin=(-30.0, 12.5, 80.0))
    result = segment(image, bundle)
    assert same_geometry(result.labelmap, image, tolerance=0)
    assert result.labelmap.GetPixelID() == sitk.sitkUInt8


def test_segments_a_held_out_toy_knee(bundle):
    image, truth = toy_knee(seed=11, **TOY)
    dice = _dice(truth, segment(image, bundle), bundle)
    assert dice["Femur"] > 0.85 and dice["Tibia"] > 0.85


def test_segments_a_rotated_toy_knee_in_its_own_geometry(bundle, oblique_direction):
    image, truth = toy_knee(seed=12, direction=oblique_direction, **TOY)
    dice = _dice(truth, segment(image, bundle), bundle)
    assert dice["Femur"] > 0.8 and dice["Tibia"] > 0.8


def test_each_bone_is_one_connected_piece(bundle):
    from scipy import ndimage

    image, _ = toy_knee(seed=13, noise=0.3, **TOY)
    labels = sitk.GetArrayFromImage(segment(image, bundle).labelmap)
    for label in bundle.labels:
        mask = labels == label.value
        if mask.any():
            assert ndimage.label(mask, structure=np.ones((3, 3, 3)))[1] == 1, label.name


def test_volumes_confidence_and_input_untouched(bundle):
    image, _ = toy_knee(seed=14, **TOY)
    before = sitk.GetArrayFromImage(image).copy()
    result = segment(image, bundle, SegmentOptions(confidence=True))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), before)
    labels = sitk.GetArrayFromImage(result.labelmap)
    voxel_ml = np.prod(image.GetSpacing()) / 1000
    for label in bundle.labels:
        assert result.volumes_ml[label.name] == pytest.approx((labels == label.value).sum() * voxel_ml, abs=1e-3)
    confidence = sitk.GetArrayFromImage(result.confidence)
    assert same_geometry(result.confidence, image)
    assert confidence.min() >= 0.0 and confidence.max() <= 1.0 + 1e-5
    # The argmax wins with at least 1/(number of classes) probability.
    assert confidence.min() >= 1.0 / 5 - 1e-5


def test_progress_and_cancel(bundle):
    image, _ = toy_knee(seed=15, **TOY)
    stages = []
    segment(image, bundle, progress=lambda stage, fraction, message: stages.append((stage, fraction)))
    names = [s for s, _ in stages]
    assert names[0] == "centre" and names[-1] == "segmented" and "network" in names
    fractions = [f for _, f in stages]
    assert fractions == sorted(fractions)
    with pytest.raises(Cancelled):
        segment(image, bundle, cancel=lambda: True)


def test_planes_and_centre_can_be_chosen(bundle):
    image, truth = toy_knee(seed=16, **TOY)
    single = segment(image, bundle, SegmentOptions(planes=("sagittal",), centre="intensity"))
    assert [k for k in single.timings if k.startswith("network")] == ["network_sagittal"]
    assert _dice(truth, single, bundle)["Femur"] > 0.8
    fixed = segment(image, bundle, SegmentOptions(centre=(1.0, 2.0, 3.0)))
    assert fixed.centre == (1.0, 2.0, 3.0)


def test_model_centre_is_near_the_true_joint(bundle):
    from kneeseg.infer import detect_knee_centre, make_predictor
    from kneeseg.preprocess.centre import knee_centre_from_labels

    image, truth = toy_knee(seed=17, **TOY)
    found = detect_knee_centre(image, make_predictor(bundle), bundle.card)
    assert found is not None
    assert np.linalg.norm(np.subtract(found, knee_centre_from_labels(truth))) < 10.0


def test_the_first_pass_centre_ignores_a_stray_piece_of_bone(monkeypatch):
    """A false piece of femur touching the tibia far from the joint must not pull the junction to it."""
    from kneeseg import infer
    from kneeseg.card import card_for
    from kneeseg.labels import SEPARATE_BONES
    from kneeseg.preprocess.centre import knee_centre_from_labels
    from kneeseg.preprocess.frame import model_frame, resample_to_frame
    from kneeseg.specs import FrameSpec, NetworkSpec

    image, truth = toy_knee(seed=19, **TOY)
    labels = sitk.GetArrayFromImage(truth)
    true_centre = np.array(knee_centre_from_labels(truth))
    k = np.flatnonzero((labels == 2).any(axis=(1, 2)))[2]  # near the tibia's far end (k runs +S)
    j, i = np.argwhere(labels[k] == 2).T
    j_mid, i_end = int(np.median(j)), int(i.max())
    with_stray = labels.copy()
    with_stray[k:k + 4, j_mid - 2:j_mid + 3, i_end + 1:i_end + 5] = 1  # touches the tibia's side
    stray_map = sitk.GetImageFromArray(with_stray)
    stray_map.CopyInformation(truth)

    def labels_as_probabilities(image, predictor, card, plane, centre, batch_size=8, cancel=None, centre_known=True):
        frame = model_frame(image, plane, centre, card.frame)
        on_frame = sitk.GetArrayFromImage(resample_to_frame(stray_map, frame, "nearest"))
        return frame, np.eye(5, dtype=np.float32)[on_frame]

    monkeypatch.setattr(infer, "frame_probabilities", labels_as_probabilities)
    card = card_for(SEPARATE_BONES, NetworkSpec(), FrameSpec())
    found = np.array(infer.detect_knee_centre(image, None, card))
    assert np.linalg.norm(found - true_centre) < 3.0, (found, true_centre)
    # every piece counted, the junction moves towards the stray piece: the test can fail
    assert np.linalg.norm(np.subtract(knee_centre_from_labels(stray_map), true_centre)) > 8.0


def test_n4_option_runs(bundle):
    image, truth = toy_knee(seed=18, **TOY)
    result = segment(image, bundle, SegmentOptions(n4=True))
    assert "n4" in result.timings and _dice(truth, result, bundle)["Femur"] > 0.7


def test_postprocess_keeps_largest_piece_fills_holes_and_respects_other_bones():
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:12, 2:12, 2:12] = 1
    labels[6:8, 6:8, 6:8] = 0  # a hole
    labels[15:17, 15:17, 15:17] = 1  # a stray island
    labels[5:7, 5:7, 14:18] = 2
    cleaned = cleanup.clean_labelmap(labels, [1, 2])
    assert cleaned[7, 7, 7] == 1
    assert cleaned[16, 16, 16] == 0
    assert (cleaned == 2).sum() == (labels == 2).sum()
    assert cleanup.bone_volumes_ml(cleaned, (2.0, 1.0, 0.5), []) == {}


def test_every_result_carries_a_quality_score_measured_on_the_way(bundle):
    image, _ = toy_knee(seed=15, **TOY)
    result = segment(image, bundle)
    quality = result.quality
    assert 0.0 <= quality.score <= 1.0 and quality.flag is (quality.score < quality.as_dict()["threshold"])
    labels = sitk.GetArrayFromImage(result.labelmap)
    for label in bundle.labels:
        measures = quality.measures[label.name]
        present = bool((labels == label.value).any())
        assert (measures["plane_dice"] is not None) == present  # two planes: their agreement is measured
        assert (measures["sure_fraction"] is not None) == present
        assert measures["n_pieces"] >= int(present)
    assert "quality" in result.timings
    # The card's own threshold flags the result: one above any score flags it, and the result says whose it is.
    strict = dataclasses.replace(bundle, card=dataclasses.replace(bundle.card, quality_flag_below=1.0))
    flagged = segment(image, strict).quality
    assert flagged.score == quality.score and flagged.flag and flagged.reasons
    assert flagged.as_dict()["threshold"] == 1.0 and flagged.as_dict()["threshold_from"] == "card"
    assert quality.as_dict()["threshold_from"] == "default"  # the tiny bundle's card sets none
    assert segment(image, bundle, SegmentOptions(quality=False)).quality is None
    one_plane = segment(image, bundle, SegmentOptions(planes=("sagittal",))).quality
    assert all(m["plane_dice"] is None for m in one_plane.measures.values())
    assert any("sure_voxels" in c for c in one_plane.components.values())


def test_the_real_slice_evaluation_segments_single_slices_and_scores_their_quality(bundle, tmp_path):
    from kneeseg.workflows.evaluate import evaluate_real2d

    image, truth = toy_knee(seed=16, **TOY)
    images = sitk.GetArrayFromImage(image)[:, :, 20:23].transpose(2, 0, 1)  # three slices of one orientation
    labels = sitk.GetArrayFromImage(truth)[:, :, 20:23].transpose(2, 0, 1)
    theirs = np.zeros_like(labels)  # real_2d's values: 1 femur, 2 tibia, 3 patella
    theirs[labels == 1], theirs[labels == 2], theirs[labels == 4] = 1, 2, 3
    np.savez(tmp_path / "slices.npz", images=images.astype(np.float32), labels=theirs)
    report = evaluate_real2d(bundle, tmp_path / "slices.npz")
    assert report["n_slices"] == 3 and len(report["cases"]) == 3
    for case in report["cases"]:
        assert 0.0 <= case["quality_score"] <= 1.0 and 0.0 <= case["mean_dice"] <= 1.0
    assert report["quality"]["n"] == 3 and "spearman" in report["quality"]

"""Per-class plane weights of the tri-planar fusion: the weighted fusion itself, the card section that
carries the weights, the fit, and inference with them."""

import json
import re
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from kneeseg.bundle import CARD_NAME, load_bundle
from kneeseg.card import parse_card
from kneeseg.errors import BundleError, InputError
from kneeseg.postprocess import fusion
from kneeseg.postprocess.plane_weights import PlaneSamples, fit_plane_weights, simplex_grid
from kneeseg.preprocess.centre import image_centre
from kneeseg.preprocess.frame import model_frame, resample_from_frame
from kneeseg.specs import FrameSpec
from conftest import toy_knee
from test_fast_paths import _smooth_probabilities

PLANES = ("sagittal", "coronal", "axial")


def _weighted_reference(planes, reference, weights):
    """Every plane's probabilities resampled onto the grid (background 1 outside), weighted per class."""
    n = planes[0][1].shape[-1]
    fused = np.zeros(tuple(reversed(reference.GetSize())) + (n,), np.float32)
    for p, (frame, probs) in enumerate(planes):
        fused += weights[p] * resample_from_frame(probs, frame, reference, default_value=[1.0] + [0.0] * (n - 1))
    return np.argmax(fused, axis=-1).astype(np.uint8), fused.max(axis=-1)


def _random_weights(rng, n_classes):
    weights = rng.random((3, n_classes)).astype(np.float32)
    weights[0, 1] = 0.0  # a plane that does not count for one class
    return weights / weights.sum(axis=0)


@pytest.mark.parametrize("oblique", [False, True])
@pytest.mark.parametrize("n_classes", [5, 2])
def test_weighted_fusion_equals_weighting_every_resampled_channel(oblique, n_classes, oblique_direction):
    direction = oblique_direction if oblique else np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float)
    image, _ = toy_knee(seed=5, size=(50, 44, 20), spacing=(0.7, 0.7, 2.5), direction=direction)
    rng = np.random.default_rng(2)
    planes = []
    for plane in PLANES:
        frame = model_frame(image, plane, image_centre(image), FrameSpec(window_mm=40.0, size=32))
        planes.append((frame, _smooth_probabilities((frame.n_slices, 32, 32, n_classes), rng)))
    weights = _random_weights(rng, n_classes)
    expected, expected_confidence = _weighted_reference(planes, image, weights)
    plain = fusion.fuse_frames(planes, image)[0]
    assert 0.01 < (expected > 0).mean() < 0.9 and (expected != plain).mean() > 0.01  # the weights matter here
    labels, confidence = fusion.fuse_frames(planes, image, confidence=True, slab_voxels=5000, weights=weights)
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_allclose(confidence, expected_confidence, atol=1e-5)
    # Only the box that can hold bone is computed without confidence: convex weights keep it exact.
    lean = [fusion.PlaneProbabilities(frame, probs, image) for frame, probs in planes]
    np.testing.assert_array_equal(fusion.fuse_frames(lean, image, weights=weights)[0], expected)


def test_one_plane_weighted_fully_is_that_plane_alone():
    image, _ = toy_knee(seed=6, size=(40, 36, 24))
    rng = np.random.default_rng(3)
    planes = []
    for plane in PLANES:
        frame = model_frame(image, plane, image_centre(image), FrameSpec(window_mm=36.0, size=24))
        planes.append((frame, _smooth_probabilities((frame.n_slices, 24, 24, 5), rng)))
    weights = np.zeros((3, 5), np.float32)
    weights[1] = 1.0
    np.testing.assert_array_equal(fusion.fuse_frames(planes, image, weights=weights)[0],
                                  fusion.fuse_frames(planes[1:2], image)[0])


def test_class_plane_weights_normalise_per_class_and_fall_back_to_the_plain_mean():
    card_weights = {"sagittal": (2.0, 1.0, 0.0), "coronal": (1.0, 1.0, 0.0), "axial": (1.0, 2.0, 0.0)}
    weights = fusion.class_plane_weights(card_weights, PLANES)
    np.testing.assert_allclose(weights, [[0.5, 0.25, 1 / 3], [0.25, 0.25, 1 / 3], [0.25, 0.5, 1 / 3]])
    np.testing.assert_allclose(fusion.class_plane_weights(card_weights, ("axial", "sagittal")),
                               [[1 / 3, 2 / 3, 0.5], [2 / 3, 1 / 3, 0.5]])
    assert fusion.class_plane_weights(card_weights, ("coronal",)) is None  # one plane: nothing to weigh
    assert fusion.class_plane_weights(None, PLANES) is None
    assert fusion.class_plane_weights({"sagittal": (1, 1, 1), "coronal": (1, 1, 1)}, PLANES) is None


# --- the fit ---------------------------------------------------------------------------------------------


def _volume_where_one_plane_sees_the_thin_bone(rng, shape=(12, 20, 20)):
    """Truth: a big bone 1 and a thin bone 2. Every plane finds bone 1 (noisily); only plane 2 finds
    bone 2, planes 0 and 1 call it background."""
    truth = np.zeros(shape, np.uint8)
    truth[2:10, 3:12, 3:15] = 1
    truth[2:10, 15:17, 5:15] = 2
    planes = []
    for p in range(3):
        probs = np.zeros(shape + (2,), np.float32)
        probs[..., 0] = np.where(truth == 1, 0.7 + 0.2 * rng.random(shape), 0.05 * rng.random(shape))
        probs[..., 1] = np.where(truth == 2, 0.9 if p == 2 else 0.02, 0.0)
        planes.append(probs)
    return PlaneSamples.from_planes(planes, truth), truth


def test_fit_moves_the_thin_bone_to_the_plane_that_sees_it_when_one_plane_may_decide():
    rng = np.random.default_rng(0)
    volumes = [_volume_where_one_plane_sees_the_thin_bone(rng)[0] for _ in range(3)]
    weights, fitted, plain = fit_plane_weights(volumes, step=0.25, max_weight=1.0)
    # the plain mean: bone 2 gets 0.31 against a background of 0.69 -> missed; bone 1 found everywhere
    assert plain == pytest.approx(0.5, abs=1e-6)
    assert fitted == pytest.approx(1.0, abs=1e-6)
    # plane 2 counts more, for bone 2 or for the background (it alone says bone 2 is not background)
    assert max(weights[2, 2], weights[2, 0]) > 1 / 3 + 1e-6
    np.testing.assert_allclose(weights.sum(axis=0), 1.0, atol=1e-6)


def test_by_default_no_plane_outvotes_the_other_two():
    rng = np.random.default_rng(0)
    volumes = [_volume_where_one_plane_sees_the_thin_bone(rng)[0] for _ in range(3)]
    weights, fitted, plain = fit_plane_weights(volumes, step=0.25)
    assert weights.max() <= 0.5 + 1e-6
    assert plain <= fitted < 1.0  # a bone one plane alone sees stays missed: two planes say background


def test_two_planes_that_see_a_bone_win_against_one_that_misses_it():
    rng = np.random.default_rng(4)
    shape = (8, 16, 16)
    truth = np.zeros(shape, np.uint8)
    truth[2:6, 4:12, 6:8] = 1
    planes = []
    for p, found in enumerate((0.62, 0.62, 0.0)):  # planes 0 and 1 find it, but not by much
        probs = np.where(truth == 1, found, 0.02 * rng.random(shape)).astype(np.float32)[..., None]
        planes.append(probs)
    # plain mean: 0.41 against a background of 0.59 -> missed; planes 0 and 1 at 0.5 each find it
    weights, fitted, plain = fit_plane_weights([PlaneSamples.from_planes(planes, truth)], step=0.25)
    assert plain == 0.0 and fitted == pytest.approx(1.0)
    assert min(weights[2, 0], weights[2, 1]) < 1 / 3 - 1e-6  # the plane that misses it counts less


def test_fit_never_ends_below_the_plain_mean_and_keeps_it_when_nothing_is_better():
    rng = np.random.default_rng(1)
    shape = (6, 10, 10)
    truth = (rng.random(shape) > 0.5).astype(np.uint8)
    same = np.where(truth == 1, 0.8, 0.1)[..., None].astype(np.float32)
    volume = PlaneSamples.from_planes([same, same, same], truth)  # three identical planes: weights are moot
    weights, fitted, plain = fit_plane_weights([volume], step=0.5)
    assert fitted == plain == pytest.approx(1.0)
    np.testing.assert_allclose(weights, 1 / 3)


def test_plane_samples_keep_the_voxels_some_plane_calls_foreground_and_count_the_rest():
    truth = np.array([[0, 1, 1, 2, 0, 1]], np.uint8)
    bones = np.zeros((1, 6, 2), np.float32)
    bones[0, 1, 0] = 0.9  # found
    bones[0, 3, 1] = 0.2  # below 0.5 in every plane: never foreground
    bones[0, 4, 0] = 0.6  # a false positive
    samples = PlaneSamples.from_planes([bones, bones * 0.5], truth)
    np.testing.assert_array_equal(samples.truth, [1, 0])
    np.testing.assert_array_equal(samples.missed, [1, 2, 1])  # classes 0, 1, 2 outside the kept voxels
    assert samples.probabilities.shape == (2, 2, 2) and samples.probabilities[0, 0, 0] == round(0.9 * 255)
    every_other = PlaneSamples.from_planes([bones], truth, voxel_stride=2)  # voxels 0, 2, 4
    np.testing.assert_array_equal(every_other.truth, [0])
    np.testing.assert_array_equal(every_other.missed, [1, 1, 0])


def test_simplex_grid_is_every_convex_combination_on_the_step():
    grid = simplex_grid(3, 0.5)
    assert len(grid) == 6 and all(abs(g.sum() - 1) < 1e-6 for g in grid)
    assert len(simplex_grid(3, 0.1)) == 66
    capped = simplex_grid(3, 0.1, max_weight=0.5)
    assert len(capped) == 21 and max(g.max() for g in capped) == pytest.approx(0.5)


# --- the card ----------------------------------------------------------------------------------------------


def _card_json(tiny_bundle):
    return json.loads((tiny_bundle / CARD_NAME).read_text())


def _with_fusion(card, weights_by_plane):
    return {**card, "fusion": {"plane_weights": weights_by_plane, "classes": ["background"] + [
        label["name"] for label in card["labels"]]}}


def _planes_of(card):
    return card["preprocessing"]["planes"]


def test_card_reads_writes_and_checks_the_fusion_section(tiny_bundle):
    card = _card_json(tiny_bundle)
    planes, n = _planes_of(card), len(card["labels"]) + 1
    assert parse_card(card).fusion_weights is None  # a card without the section: the plain mean
    good = {plane: [1.0 / (i + 1)] * n for i, plane in enumerate(planes)}
    parsed = parse_card(_with_fusion(card, good))
    assert parsed.fusion_weights == {plane: tuple(w) for plane, w in good.items()}
    assert parse_card(parsed.to_json()).fusion_weights == parsed.fusion_weights
    assert parsed.to_json()["fusion"]["classes"][0] == "background"  # what the section says besides is kept
    # a card whose planes were edited (e.g. to one plane) keeps its weights and loads
    edited = _with_fusion({**card, "preprocessing": {**card["preprocessing"], "planes": ["sagittal"]}},
                          {plane: [0.5] * n for plane in PLANES})
    assert set(parse_card(edited).fusion_weights) == set(PLANES)
    bad_cases = [
        ({**good, "oblique": good[planes[0]]}, "must be one of sagittal, coronal, axial, not 'oblique'"),
        ({}, "must be a non-empty list of planes (sagittal, coronal, axial), not []"),
        ({**good, planes[0]: good[planes[0]][:-1]}, f"must list {n} weights"),
        ({**good, planes[0]: [-0.1] + good[planes[0]][1:]}, "must lie in [0, 1]"),
        ({**good, planes[0]: ["x"] * n}, "must be a number"),
        ({p: [0.0] + w[1:] for p, w in good.items()}, "class 0 has weight 0 in every plane"),
    ]
    for weights, message in bad_cases:
        with pytest.raises(BundleError, match=re.escape(message)) as raised:
            parse_card(_with_fusion(card, weights))
        assert "fusion.plane_weights" in str(raised.value)
    with pytest.raises(BundleError, match="fusion: must be a JSON object"):
        parse_card({**card, "fusion": [1, 2]})


def test_info_says_how_the_planes_are_fused(tiny_bundle):
    from kneeseg.tables import card_table

    card = _card_json(tiny_bundle)
    planes, n = _planes_of(card), len(card["labels"]) + 1
    assert "fusion: plain mean" in card_table(parse_card(card), "here")
    weights = {plane: [0.5 if i == 0 else 0.25] * n for i, plane in enumerate(planes)}
    text = card_table(parse_card(_with_fusion(card, weights)), "here")
    assert f"fusion: weighted per class ({'/'.join(planes)}: background 0.50/0.25" in text
    # weights that do not cover every plane of the card: inference fuses with the plain mean, and says so
    partial = card_table(parse_card(_with_fusion(card, {planes[0]: weights[planes[0]]})), "here")
    assert f"fusion: plain mean of the planes' probabilities (the card's plane weights lack {planes[1]})" in partial


# --- inference ------------------------------------------------------------------------------------------


def _bundle_with_fusion(tiny_bundle, tmp_path, weights_by_plane):
    folder = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, folder)
    card = _card_json(tiny_bundle)
    (folder / CARD_NAME).write_text(json.dumps(_with_fusion(card, weights_by_plane)))
    return load_bundle(folder)


def test_segment_uses_the_cards_weights_unless_told_to_take_the_mean(tiny_bundle, tmp_path):
    from kneeseg.infer import SegmentOptions, segment

    card = _card_json(tiny_bundle)
    planes, n = _planes_of(card), len(card["labels"]) + 1
    assert len(planes) >= 2
    only_first = {plane: [1.0 if i == 0 else 0.0] * n for i, plane in enumerate(planes)}
    bundle = _bundle_with_fusion(tiny_bundle, tmp_path, only_first)
    image, _ = toy_knee(seed=11, size=(48, 48, 40), spacing=(1.5, 1.5, 1.5))
    original = sitk.GetArrayFromImage(image).copy()
    weighted = sitk.GetArrayFromImage(segment(image, bundle).labelmap)
    first_alone = sitk.GetArrayFromImage(segment(image, bundle, SegmentOptions(planes=(planes[0],))).labelmap)
    mean = sitk.GetArrayFromImage(segment(image, bundle, SegmentOptions(fusion="mean")).labelmap)
    plain_bundle = sitk.GetArrayFromImage(segment(image, load_bundle(tiny_bundle)).labelmap)
    np.testing.assert_array_equal(weighted, first_alone)
    np.testing.assert_array_equal(mean, plain_bundle)
    assert (weighted != mean).any()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), original)
    with pytest.raises(InputError, match="unknown fusion 'max'"):
        segment(image, bundle, SegmentOptions(fusion="max"))


def test_cli_refuses_an_unknown_fusion(tmp_path, capsys):
    from kneeseg.cli import main

    with pytest.raises(SystemExit) as info:
        main(["segment", str(tmp_path / "in.nrrd"), "-o", str(tmp_path / "out.nrrd"), "--fusion", "max"])
    assert info.value.code == 2
    assert "argument --fusion: invalid choice: 'max'" in capsys.readouterr().err


def test_fit_fusion_refuses_bundles_it_cannot_fit(tiny_bundle, tmp_path):
    from kneeseg.workflows.fusion import fit_fusion

    folder = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, folder)
    card = _card_json(tiny_bundle)
    card["training"].setdefault("data", {})["split"] = {"validation": []}
    (folder / CARD_NAME).write_text(json.dumps(card))
    with pytest.raises(InputError, match="no validation subjects"):
        fit_fusion(folder, tmp_path / "cache")
    card["training"]["data"]["split"] = {"validation": ["someone"]}
    card["training"]["data"].pop("synthesis", None)
    (folder / CARD_NAME).write_text(json.dumps(card))
    with pytest.raises(InputError, match="no synthesis settings"):
        fit_fusion(folder, tmp_path / "cache")
    card["preprocessing"]["planes"] = ["sagittal"]
    (folder / CARD_NAME).write_text(json.dumps(card))
    with pytest.raises(InputError, match="one plane only"):
        fit_fusion(folder, tmp_path / "cache")


def test_fit_fusion_fits_on_the_validation_subjects_and_writes_the_card(tiny_bundle, tmp_path, capsys):
    from kneeseg.cli import main
    from kneeseg.synth import prepare_cache
    from kneeseg.workflows.fusion import fit_fusion
    from test_synth import PHANTOM_SOURCE, write_phantom

    write_phantom(tmp_path / "src" / "phantom", "knee")
    write_phantom(tmp_path / "src" / "phantom", "other", with_fibula=False)
    write_phantom(tmp_path / "src" / "phantom", "held_out", shift_mm=4.0)
    manifest = prepare_cache(tmp_path / "src", tmp_path / "cache", spacing_mm=1.0, margin_mm=20.0,
                             sources=(PHANTOM_SOURCE,))
    subjects = {entry["file"]: entry["subject"] for entry in manifest["files"]}
    validation = sorted({s for f, s in subjects.items() if "held_out" not in f})  # two maps of one knee
    held_out = subjects["phantom_held_out.npz"]
    assert held_out not in validation
    folder = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, folder)
    card = _card_json(tiny_bundle)
    card["training"].setdefault("data", {}).update(split={"validation": validation, "test": [held_out]},
                                                   synthesis={"noise_std": [0.0, 0.02]})
    card["fusion"] = {"plane_reach": "auto"}  # set by finalize, not fitted: the fit keeps it
    (folder / CARD_NAME).write_text(json.dumps(card))
    before = (folder / CARD_NAME).read_text()

    capsys.readouterr()
    assert main(["fit-fusion", str(folder), "--cache", str(tmp_path / "cache"), "--dry-run",
                 "--progress", "json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]  # JSON lines only
    assert lines[-1]["stage"] == "done" and "dry run" in lines[-1]["message"]
    dry = lines[-1]["result"]
    assert (folder / CARD_NAME).read_text() == before
    section = fit_fusion(folder, tmp_path / "cache")
    assert section["plane_weights"] == dry["plane_weights"]  # the scans and the fit are pinned
    fitted = section["fitted"]
    assert fitted["subjects"] == validation and fitted["scans"] == 3 * 2 + 3  # the map with a fibula twice
    assert fitted["mean_dice_weighted"] >= fitted["mean_dice_plain_mean"]
    bundle = load_bundle(folder)
    planes = bundle.card.frame.planes
    assert set(bundle.card.fusion_weights) == set(planes)
    assert all(0.0 <= w <= 0.5 for weights in bundle.card.fusion_weights.values() for w in weights)
    assert bundle.card.raw["fusion"]["classes"] == ["background"] + [label.name for label in bundle.labels]
    assert bundle.card.plane_reach == "auto"
    shutil.rmtree(tmp_path / "cache")
    with pytest.raises(InputError):  # no cache: a clear error, the card as it was
        fit_fusion(folder, tmp_path / "cache")
    assert load_bundle(folder).card.fusion_weights == bundle.card.fusion_weights


def test_cli_fit_fusion_names_a_missing_or_zipped_bundle(tmp_path, capsys):
    from kneeseg.cli import main

    assert main(["fit-fusion", str(tmp_path / "nope"), "--cache", str(tmp_path), "--progress", "none"]) == 2
    assert "no such bundle folder" in capsys.readouterr().err
    zipped = tmp_path / "bundle.zip"
    zipped.write_bytes(b"PK")
    assert main(["fit-fusion", str(zipped), "--cache", str(tmp_path), "--progress", "none"]) == 2
    assert "unpack a zipped bundle first" in capsys.readouterr().err

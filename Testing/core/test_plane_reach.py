"""A plane votes in the fusion only where its slices lie as near the knee centre as its training slices did."""

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from kneeseg.bundle import CARD_NAME, load_bundle, save_bundle
from kneeseg.card import parse_card
from kneeseg.errors import BundleError, InputError
from kneeseg.infer import SegmentOptions, fusion_reach, plane_reach_mm, segment
from kneeseg.postprocess import fusion
from kneeseg.preprocess.centre import image_centre
from kneeseg.preprocess.frame import model_frame, resample_from_frame
from kneeseg.specs import FrameSpec
from conftest import toy_knee
from test_fast_paths import _smooth_probabilities

PLANES = ("sagittal", "coronal", "axial")


def _within_reach_reference(planes, reference, weights, centre, max_mm):
    """Every plane resampled onto the grid; each voxel's mean (weighted per class) over the planes whose slice
    through it lies within max_mm of centre, over all planes where none does."""
    n = planes[0][1].shape[-1]
    size = reference.GetSize()
    index = np.stack(np.meshgrid(*[np.arange(s) for s in size[::-1]], indexing="ij"), -1)[..., ::-1]  # i, j, k
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    points = np.array(reference.GetOrigin()) + (index * np.array(reference.GetSpacing())) @ direction.T
    votes = np.stack([np.abs((points - centre) @ frame.direction[:, 2]) <= max_mm for frame, _ in planes])
    votes[:, ~votes.any(axis=0)] = True
    total = np.zeros(tuple(size[::-1]) + (n,))
    weight, plain, count = np.zeros_like(total), np.zeros_like(total), np.zeros_like(total)
    for p, (frame, probs) in enumerate(planes):
        resampled = resample_from_frame(probs, frame, reference, default_value=[1.0] + [0.0] * (n - 1))
        total += weights[p] * votes[p][..., None] * resampled
        weight += weights[p] * votes[p][..., None]
        plain += votes[p][..., None] * resampled
        count += votes[p][..., None]
    fused = np.where(weight > 0, total / np.maximum(weight, 1e-12), plain / count)  # no voter weighs it: plain
    return np.argmax(fused, axis=-1).astype(np.uint8), fused.max(axis=-1), votes


@pytest.mark.parametrize("oblique", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_fusion_within_reach_equals_the_mean_over_the_planes_that_vote(oblique, weighted, oblique_direction):
    direction = oblique_direction if oblique else np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float)
    image, _ = toy_knee(seed=7, size=(50, 44, 20), spacing=(0.7, 0.7, 2.5), direction=direction)
    rng = np.random.default_rng(4)
    centre = np.array(image_centre(image)) + [3.0, -2.0, 4.0]
    planes = []
    for plane in PLANES:
        frame = model_frame(image, plane, tuple(centre), FrameSpec(window_mm=40.0, size=32))
        planes.append((frame, _smooth_probabilities((frame.n_slices, 32, 32, 5), rng)))
    weights = rng.random((3, 5)).astype(np.float32) if weighted else None
    if weighted:
        weights[1:, 0] = 0.0  # the background weighed by the sagittal plane alone: where it does not vote, plain
        weights /= weights.sum(axis=0)
    reference_weights = weights if weighted else np.full((3, 5), 1 / 3, np.float32)
    expected, expected_confidence, votes = _within_reach_reference(planes, image, reference_weights, centre, 9.0)
    assert 0.2 < votes.mean() < 0.8 and not votes.all(axis=0).all()  # some voxels out of some planes' reach
    plain = fusion.fuse_frames(planes, image, weights=weights)[0]
    assert (expected != plain).mean() > 0.01  # the reach matters here
    labels, confidence = fusion.fuse_frames(planes, image, confidence=True, slab_voxels=5000, weights=weights,
                                            reach=(tuple(centre), 9.0))
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_allclose(confidence, expected_confidence, atol=1e-5)
    lean = [fusion.PlaneProbabilities(frame, probs, image) for frame, probs in planes]  # only the foreground box
    np.testing.assert_array_equal(fusion.fuse_frames(lean, image, weights=weights, reach=(tuple(centre), 9.0))[0],
                                  expected)
    far = fusion.fuse_frames(planes, image, weights=weights, reach=(tuple(centre), 1e4))[0]
    np.testing.assert_array_equal(far, plain)  # every plane within reach everywhere: the usual fusion


def test_a_bone_called_only_by_a_plane_out_of_reach_goes_to_the_planes_that_reach_it():
    image, _ = toy_knee(seed=8, size=(40, 40, 40), spacing=(1.0, 1.0, 1.0))
    centre = np.array(image_centre(image))
    planes = []
    for plane in PLANES:
        frame = model_frame(image, plane, tuple(centre), FrameSpec(window_mm=40.0, size=40))
        probs = np.zeros((frame.n_slices, 40, 40, 2), np.float32)
        probs[..., 0] = 1.0
        if plane == "axial":  # the axial plane calls every voxel bone, the others none
            probs[..., 0], probs[..., 1] = 0.0, 1.0
        planes.append((frame, probs))
    everywhere = fusion.fuse_frames(planes, image, weights=np.array([[0.2] * 2, [0.2] * 2, [0.6] * 2], np.float32))[0]
    assert everywhere.mean() > 0.9  # weighted 0.6, the axial plane outvotes the others everywhere
    reached = fusion.fuse_frames(planes, image, weights=np.array([[0.2] * 2, [0.2] * 2, [0.6] * 2], np.float32),
                                 reach=(tuple(centre), 10.0))[0]
    axial_normal = planes[2][0].direction[:, 2]
    size = image.GetSize()
    index = np.stack(np.meshgrid(*[np.arange(s) for s in size[::-1]], indexing="ij"), -1)[..., ::-1]
    points = np.array(image.GetOrigin()) + index * np.array(image.GetSpacing())
    near = np.abs((points - centre) @ axial_normal) <= 10.0
    others_near = (np.abs(points[..., 0] - centre[0]) <= 10.0) | (np.abs(points[..., 1] - centre[1]) <= 10.0)
    assert reached[near].mean() == 1  # within its reach it still outvotes the others
    assert reached[~near & others_near].mean() == 0  # out of its reach the others decide alone
    assert reached[~near & ~others_near].mean() == 1  # no plane reaches: all vote, as without a reach


def _card_with_synthesis(tiny_bundle, tmp_path, synthesis):
    folder = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, folder)
    card = json.loads((folder / CARD_NAME).read_text())
    card.setdefault("training", {}).setdefault("data", {})
    if synthesis is None:
        card["training"]["data"].pop("synthesis", None)
    else:
        card["training"]["data"]["synthesis"] = synthesis
    (folder / CARD_NAME).write_text(json.dumps(card))
    return load_bundle(folder)


def test_the_reach_is_the_training_slab_plus_the_centre_shift_and_only_with_a_known_centre(tiny_bundle, tmp_path):
    bundle = _card_with_synthesis(tiny_bundle, tmp_path, {"slab_half_mm": 80.0, "centre_shift_mm": 10.0})
    assert plane_reach_mm(bundle.card) == 90.0
    auto = SegmentOptions(plane_reach="auto")
    assert fusion_reach(bundle.card, auto, (1.0, 2.0, 3.0), True) == ((1.0, 2.0, 3.0), 90.0)
    assert fusion_reach(bundle.card, auto, (1.0, 2.0, 3.0), False) is None  # a guessed centre
    assert fusion_reach(bundle.card, SegmentOptions(), (1.0, 2.0, 3.0), True) is None  # off by default
    with pytest.raises(InputError, match="plane reach 'near'"):
        fusion_reach(bundle.card, SegmentOptions(plane_reach="near"), (1.0, 2.0, 3.0), True)
    with pytest.raises(InputError, match="plane reach 'near'"):
        fusion_reach(bundle.card, SegmentOptions(plane_reach="near"), (1.0, 2.0, 3.0), False)  # checked anyway
    defaults = _card_with_synthesis(tiny_bundle, tmp_path / "2", {"rim_outside_probability": 1.0})
    assert plane_reach_mm(defaults.card) == 60.0  # the generator's defaults, which older cards trained with
    assert plane_reach_mm(_card_with_synthesis(tiny_bundle, tmp_path / "3", None).card) is None  # real scans
    for n, odd in enumerate(("far", True, 10 ** 400, float("nan"), -5.0, [45.0])):  # no finite distance: no reach
        assert plane_reach_mm(_card_with_synthesis(tiny_bundle, tmp_path / f"odd{n}", {"slab_half_mm": odd}).card) \
            is None, odd
    card = json.loads((bundle.folder / CARD_NAME).read_text())
    card["training"]["data"] = ["not", "a", "record"]
    (bundle.folder / CARD_NAME).write_text(json.dumps(card))
    assert plane_reach_mm(load_bundle(bundle.folder).card) is None


def test_the_quality_counts_two_planes_against_each_other_only_where_both_vote():
    image, _ = toy_knee(seed=6, size=(40, 40, 30), spacing=(1.0, 1.0, 1.5))
    centre = tuple(float(c) for c in image_centre(image))
    rng = np.random.default_rng(1)
    planes = []
    for plane in PLANES:
        frame = model_frame(image, plane, centre, FrameSpec(window_mm=40.0, size=32))
        planes.append((frame, _smooth_probabilities((frame.n_slices, 32, 32, 3), rng)))
    counts = {}
    for reach in (None, (centre, 8.0)):
        quality = {}
        fusion.fuse_frames(planes, image, quality=quality, reach=reach, slab_voxels=4000)
        counts[reach is None] = [int(c.sum()) for c in quality["plane_confusions"]]
        lo, hi = quality["box"]
    box_voxels = int(np.prod(np.array(hi) - np.array(lo) + 1))
    assert counts[True] == [box_voxels] * 3  # every plane everywhere: every voxel of the box, each pair
    votes = fusion._votes_within_reach([fusion.PlaneProbabilities(f, p, image) for f, p in planes], image,
                                       (centre, 8.0), lo, hi)
    shape = tuple(np.array(hi) - np.array(lo) + 1)
    both = [int(np.broadcast_to((votes[p] > 0) & (votes[q] > 0), shape).sum()) for p, q in ((0, 1), (0, 2), (1, 2))]
    assert counts[False] == both and all(b < box_voxels for b in both)


def test_segment_with_and_without_the_reach_on_a_scan_longer_than_it(tiny_bundle, tmp_path):
    """A long scan (the limb far beyond the slab): with the reach the result differs only out of it."""
    bundle = _card_with_synthesis(tiny_bundle, tmp_path, {"slab_half_mm": 5.0, "centre_shift_mm": 0.0})
    image, _ = toy_knee(seed=9, size=(48, 48, 40), spacing=(1.0, 1.0, 2.0))
    centre = tuple(float(c) for c in image_centre(image))
    off = segment(image, bundle, SegmentOptions(centre=centre, plane_reach="off", postprocess=False))
    on = segment(image, bundle, SegmentOptions(centre=centre, plane_reach="auto", postprocess=False))
    a, b = (sitk.GetArrayFromImage(r.labelmap) for r in (off, on))
    assert a.shape == b.shape and (a != b).any()
    index = np.stack(np.meshgrid(*[np.arange(s) for s in image.GetSize()[::-1]], indexing="ij"), -1)[..., ::-1]
    points = np.array(image.GetOrigin()) + index * np.array(image.GetSpacing())
    every_plane_reaches = np.all(np.abs(points - np.array(centre)) <= 5.0, axis=-1)
    np.testing.assert_array_equal(a[every_plane_reaches], b[every_plane_reaches])


def test_cli_segment_takes_the_plane_reach_and_refuses_an_unknown_one(tiny_bundle, tmp_path, capsys):
    from kneeseg import cli
    from kneeseg.contract import EXIT_OK

    bundle = _card_with_synthesis(tiny_bundle, tmp_path, {"slab_half_mm": 5.0, "centre_shift_mm": 0.0})
    image, _ = toy_knee(seed=9, size=(48, 48, 40), spacing=(1.0, 1.0, 2.0))
    volume = tmp_path / "long.nrrd"
    sitk.WriteImage(image, str(volume))
    centre = ",".join(f"{c:.3f}" for c in image_centre(image))
    outputs = {}
    for reach in ("off", "auto"):
        outputs[reach] = tmp_path / f"{reach}.nrrd"
        code = cli.main(["segment", str(volume), "-o", str(outputs[reach]), "--model", str(bundle.folder), "--centre",
                         centre, "--plane-reach", reach, "--no-postprocess", "--progress", "none"])
        assert code == EXIT_OK
    off, auto = (sitk.GetArrayFromImage(sitk.ReadImage(str(outputs[r]))) for r in ("off", "auto"))
    assert (off != auto).any()
    with pytest.raises(SystemExit):
        cli.main(["segment", str(volume), "-o", str(tmp_path / "x.nrrd"), "--plane-reach", "near"])
    assert "--plane-reach" in capsys.readouterr().err and not (tmp_path / "x.nrrd").exists()


def _with_card_fusion(bundle, fusion_section):
    card = json.loads((bundle.folder / CARD_NAME).read_text())
    card["fusion"] = fusion_section
    (bundle.folder / CARD_NAME).write_text(json.dumps(card))
    return load_bundle(bundle.folder)


def test_the_card_sets_the_reach_segment_uses_unless_told_otherwise(tiny_bundle, tmp_path):
    bundle = _card_with_synthesis(tiny_bundle, tmp_path, {"slab_half_mm": 5.0, "centre_shift_mm": 0.0})
    assert bundle.card.plane_reach == "off"  # a card that says nothing
    auto = _with_card_fusion(bundle, {"plane_reach": "auto"})  # the reach alone, no fitted weights
    assert auto.card.plane_reach == "auto" and auto.card.fusion_weights is None
    centre = (1.0, 2.0, 3.0)
    assert fusion_reach(auto.card, SegmentOptions(), centre, True) == (centre, 5.0)
    assert fusion_reach(auto.card, SegmentOptions(plane_reach="off"), centre, True) is None  # the user decides
    assert fusion_reach(auto.card, SegmentOptions(), centre, False) is None  # still only with the model's centre
    assert parse_card(auto.card.to_json()).plane_reach == "auto"
    from kneeseg.tables import card_table

    assert "within its training reach (5 mm) of the model's knee centre" in card_table(auto.card, auto.folder)
    real_scans = _with_card_fusion(_card_with_synthesis(tiny_bundle, tmp_path / "real", None), {"plane_reach": "auto"})
    assert "records no training slices: every plane votes everywhere" in card_table(real_scans.card, real_scans.folder)
    assert "training reach" not in card_table(bundle.card, bundle.folder)
    assert "fusion" not in bundle.card.to_json()  # "off" and no weights: no section written
    n = len(bundle.labels) + 1
    weights = {plane: [0.5] * n for plane in bundle.card.frame.planes}
    both = _with_card_fusion(bundle, {"plane_weights": weights, "plane_reach": "auto", "classes": ["background"]})
    assert both.card.plane_reach == "auto" and set(both.card.fusion_weights) == set(weights)
    save_bundle(tmp_path / "saved", both.load_keras_model(), both.card)  # written back as read
    assert load_bundle(tmp_path / "saved").card.plane_reach == "auto"
    assert load_bundle(tmp_path / "saved").card.raw["fusion"]["classes"] == ["background"]
    for odd in ("near", True, ["auto"], None, 60):
        with pytest.raises(BundleError, match="fusion.plane_reach"):
            _with_card_fusion(bundle, {"plane_reach": odd})
    with pytest.raises(BundleError, match="fusion.plane_weights"):
        _with_card_fusion(bundle, {"classes": ["background"]})  # neither weights nor a reach


def test_cli_segment_follows_the_cards_reach_by_default(tiny_bundle, tmp_path):
    from kneeseg import cli

    bundle = _card_with_synthesis(tiny_bundle, tmp_path, {"slab_half_mm": 5.0, "centre_shift_mm": 0.0})
    auto = _with_card_fusion(bundle, {"plane_reach": "auto"})
    image, _ = toy_knee(seed=9, size=(48, 48, 40), spacing=(1.0, 1.0, 2.0))
    volume = tmp_path / "long.nrrd"
    sitk.WriteImage(image, str(volume))
    centre = ",".join(f"{c:.3f}" for c in image_centre(image))
    outputs = {}
    for reach in (None, "off", "auto"):
        outputs[reach] = tmp_path / f"{reach}.nrrd"
        cli.main(["segment", str(volume), "-o", str(outputs[reach]), "--model", str(auto.folder), "--centre", centre,
                  "--no-postprocess", "--progress", "none"] + (["--plane-reach", reach] if reach else []))
    default, off, on = (sitk.GetArrayFromImage(sitk.ReadImage(str(outputs[r]))) for r in (None, "off", "auto"))
    np.testing.assert_array_equal(default, on)
    assert (default != off).any()

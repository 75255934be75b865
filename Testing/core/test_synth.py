"""Tests of the synthetic training data generator (kneeseg.synth) on tiny analytic phantoms."""

import dataclasses
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import load_script
from kneeseg.errors import InputError
from kneeseg.geometry import frame_points
from kneeseg.specs import FrameSpec
from kneeseg.synth import (
    LabelSource, SliceSynthesizer, SynthesisConfig, cache_files, load_label_map, load_manifest, prepare_cache,
    synthesis_config, synthesize_volume, write_example_sheet,
)
from kneeseg.synth import render

sitk = pytest.importorskip("SimpleITK")

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

# Phantom label values and how they map to the training target (muscle is a tissue, not a bone).
FEMUR, TIBIA, FIBULA, PATELLA, MUSCLE = 1, 2, 3, 4, 7
PHANTOM_SOURCE = LabelSource(
    dataset="phantom", pattern="phantom/*.nrrd", licence="test phantom", subject_prefix="P-",
    subject_pattern=r"^([A-Za-z]+)",
    label_values={FEMUR: "femur", TIBIA: "tibia", FIBULA: "fibula", PATELLA: "patella",
                  MUSCLE: "vastus_lateralis_muscle"})
TARGET = np.zeros(256, np.uint8)
TARGET[[FEMUR, TIBIA, FIBULA, PATELLA]] = [1, 2, 3, 4]

# Ellipsoids (centre, radii) in LPS mm: +x left, +y posterior, +z superior. A left knee: the fibula
# is lateral (+x) and behind the tibia.
ELLIPSOIDS = (
    (FEMUR, (0.0, 0.0, 22.0), (25.0, 20.0, 20.0)),
    (TIBIA, (0.0, 2.0, -22.0), (24.0, 19.0, 19.0)),
    (FIBULA, (27.0, 3.0, -35.0), (4.0, 4.0, 12.0)),
    (PATELLA, (0.0, -28.0, 20.0), (10.0, 5.0, 12.0)),
    (MUSCLE, (0.0, 30.0, 0.0), (15.0, 8.0, 30.0)),
)
# A sagittal acquisition grid: columns run posterior, rows inferior, slices left (signed permutation,
# so that the 1 mm cache grid coincides with the phantom's voxel centres).
SAGITTAL_DIRECTION = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
SAGITTAL_ORIGIN = np.array([-36.0, -42.0, 52.0])
SAGITTAL_SIZE = (90, 104, 78)  # ITK (i, j, k)

EXACT = SynthesisConfig(window_scale=(1.0, 1.0), centre_shift_mm=0.0, slab_half_mm=0.0, max_rotation_deg=0.0,
                        scale_range=(1.0, 1.0), max_deformation_mm=0.0, mirror_probability=0.0,
                        extend_shafts_probability=0.0, fov_crop_probability=0.0)
SIZE, WINDOW_MM = 64, 61.3  # pixel 0.958 mm: frame points never fall half-way between voxel centres


def phantom_labels(points_mm, with_fibula=True, shift_mm=0.0) -> np.ndarray:
    labels = np.zeros(points_mm.shape[:-1], np.uint8)
    for value, centre, radii in ELLIPSOIDS:
        if value == FIBULA and not with_fibula:
            continue
        inside = (((points_mm - centre - shift_mm) / radii) ** 2).sum(-1) <= 1.0
        labels[inside] = value
    return labels


def voxel_points(direction, origin, spacing, size) -> np.ndarray:
    """Physical points of every voxel, array order (k, j, i, xyz)."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    index = np.stack([i, j, k], -1) * spacing
    return origin + index @ direction.T


def write_phantom(folder: Path, name: str, with_fibula=True, direction=SAGITTAL_DIRECTION,
                  origin=SAGITTAL_ORIGIN, spacing=1.0, size=SAGITTAL_SIZE, shift_mm=0.0) -> np.ndarray:
    labels = phantom_labels(voxel_points(direction, origin, spacing, size), with_fibula, shift_mm)
    image = sitk.GetImageFromArray(labels)
    image.SetDirection(direction.ravel().tolist())
    image.SetOrigin(origin.tolist())
    image.SetSpacing([spacing] * 3)
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(folder / f"{name}.nrrd"))
    return labels


def source_labels_at(source_labels, points_mm) -> np.ndarray:
    """Nearest-neighbour look-up of the sagittal phantom's labels at physical points (0 outside it)."""
    index = np.rint((points_mm - SAGITTAL_ORIGIN) @ SAGITTAL_DIRECTION).astype(int)  # (i, j, k), 1 mm
    inside = ((index >= 0) & (index < SAGITTAL_SIZE)).all(-1)
    i, j, k = (np.clip(index[..., a], 0, SAGITTAL_SIZE[a] - 1) for a in range(3))
    return np.where(inside, source_labels[k, j, i], 0)


@pytest.fixture(scope="module")
def phantom_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    labels = write_phantom(root / "src" / "phantom", "knee")
    write_phantom(root / "src" / "phantom", "other", with_fibula=False)
    manifest = prepare_cache(root / "src", root / "cache", spacing_mm=1.0, margin_mm=20.0,
                             sources=(PHANTOM_SOURCE,))
    return root / "cache", labels, manifest


def test_bone_volume_ranges_span_the_maps_and_count_the_maps_that_have_each_bone(phantom_cache):
    from kneeseg.synth import bone_volume_ranges

    cache, _, _ = phantom_cache
    volumes = {}
    for name in ("phantom_knee.npz", "phantom_other.npz"):
        labels = load_label_map(cache / name).labels  # 1 mm voxels: 1000 voxels per mL
        for tissue, bone in ((1, "Femur"), (2, "Tibia"), (3, "Fibula"), (4, "Patella")):
            if (labels == tissue).any():
                volumes.setdefault(bone, []).append(np.count_nonzero(labels == tissue) / 1000.0)
    ranges = bone_volume_ranges(cache)
    assert ranges["source"].startswith("2 label maps")
    assert set(ranges["bones"]) == set(volumes) == {"Femur", "Tibia", "Fibula", "Patella"}
    for bone, values in volumes.items():
        entry = ranges["bones"][bone]
        assert entry["min"] == round(min(values), 1) and entry["max"] == round(max(values), 1)
        assert entry["n_maps"] == len(values) and entry["in_every_map"] is (len(values) == 2)
    assert ranges["bones"]["Fibula"]["n_maps"] == 1


def make(cache, size=SIZE, window_mm=WINDOW_MM, planes=FrameSpec().planes, **kwargs):
    options = dict(n_slices_per_sample=2, batch_size=4, seed=0)
    options.update(kwargs)
    return SliceSynthesizer(cache, FrameSpec(planes=planes, size=size, window_mm=window_mm), **options)


# --- cache -----------------------------------------------------------------------------------------


def test_cache_holds_reoriented_labels_and_a_manifest(phantom_cache):
    cache, _, manifest = phantom_cache
    assert load_manifest(cache) == json.loads(json.dumps(manifest))
    assert [e["file"] for e in manifest["files"]] == ["phantom_knee.npz", "phantom_other.npz"]
    knee, other = manifest["files"]
    assert knee["bones"] == ["Femur", "Tibia", "Fibula", "Patella"] and knee["has_fibula"]
    assert other["bones"] == ["Femur", "Tibia", "Patella"] and not other["has_fibula"]
    assert knee["subject"] == "P-knee" and knee["licence"] == "test phantom"

    label_map = load_label_map(cache / "phantom_knee.npz")
    assert label_map.labels.dtype == np.uint8 and label_map.spacing == 1.0
    # Identity-direction grid: every cached voxel holds the phantom's label at its physical point.
    nz, ny, nx = label_map.labels.shape
    points = voxel_points(np.eye(3), label_map.origin, 1.0, (nx, ny, nz))
    inside = label_map.labels != 255
    expected = phantom_labels(points)
    tissue_of = {0: 0, FEMUR: 1, TIBIA: 2, FIBULA: 3, PATELLA: 4}
    for value, tissue in tissue_of.items():
        assert np.array_equal(label_map.labels[inside] == tissue, expected[inside] == value)
    assert (label_map.labels[inside & (expected == MUSCLE)] > 4).all()
    # Knee centre between the facing surfaces of femur (z = 2) and tibia (z = -3).
    assert np.allclose(label_map.knee_centre_mm, [0.0, 1.0, -0.5], atol=2.0)


def test_oblique_grid_keeps_bone_volumes(tmp_path):
    angle = np.deg2rad(30.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    direction, spacing, size = rotation @ SAGITTAL_DIRECTION, 0.8, np.array([120, 130, 115])
    origin = np.array([3.0, 2.5, -2.5]) - direction @ ((size - 1) / 2 * spacing)  # centred on the phantom
    write_phantom(tmp_path / "src" / "phantom", "oblique", direction=direction, origin=origin, spacing=spacing,
                  size=tuple(size))
    prepare_cache(tmp_path / "src", tmp_path / "cache", spacing_mm=1.0, sources=(PHANTOM_SOURCE,))
    labels = load_label_map(tmp_path / "cache" / "phantom_oblique.npz").labels
    for tissue, (_, _, radii) in zip((1, 2, 3, 4), ELLIPSOIDS):
        assert (labels == tissue).sum() == pytest.approx(4 / 3 * np.pi * np.prod(radii), rel=0.08)


def test_one_knee_published_twice_is_one_subject(tmp_path):
    write_phantom(tmp_path / "src" / "phantom", "first")
    write_phantom(tmp_path / "src" / "phantom", "second")
    files = prepare_cache(tmp_path / "src", tmp_path / "cache", spacing_mm=1.0, sources=(PHANTOM_SOURCE,))["files"]
    assert files[1]["subject"] == files[0]["subject"] == "P-first"
    assert files[1]["same_knee_as"] == "phantom_first.npz"


def test_time_points_of_one_knee_share_a_subject(tmp_path):
    for name in ("alpha_00m", "alpha_48m"):
        write_phantom(tmp_path / "src" / "phantom", name)
    write_phantom(tmp_path / "src" / "phantom", "beta", shift_mm=np.array([0.0, 5.0, 0.0]))  # another knee
    files = prepare_cache(tmp_path / "src", tmp_path / "cache", spacing_mm=1.0, sources=(PHANTOM_SOURCE,))["files"]
    assert [e["subject"] for e in files] == ["P-alpha", "P-alpha", "P-beta"]
    assert cache_files(tmp_path / "cache") == [tmp_path / "cache" / e["file"] for e in files]


# --- synthesizer -----------------------------------------------------------------------------------


def test_batch_shapes_dtypes_and_labels(phantom_cache):
    cache, _, _ = phantom_cache
    synthesizer = make(cache, batch_size=5, n_slices_per_sample=2, steps=7)
    x, y = synthesizer.batch(0)
    assert x.shape == (5, SIZE, SIZE, 1) and x.dtype == np.float32 and np.isfinite(x).all()
    assert y.shape == (5, SIZE, SIZE) and y.dtype == np.uint8
    assert set(np.unique(y)) <= {0, 1, 2, 3, 4}
    assert len(synthesizer) == 7
    synthesizer.steps = 3
    assert len(synthesizer) == 3
    assert np.array_equal(synthesizer[0][1], y)
    merged = make(cache, batch_size=5, n_slices_per_sample=2, merged=True).batch(0)[1]
    assert np.array_equal(merged, (y > 0).astype(np.uint8))


@pytest.mark.parametrize("plane", ["sagittal", "coronal", "axial"])
def test_without_transforms_labels_equal_the_label_map_slice(phantom_cache, plane):
    cache, source_labels, _ = phantom_cache
    synthesizer = make([cache / "phantom_knee.npz"], planes=(plane,), batch_size=8,
                       config=dataclasses.replace(EXACT, slab_half_mm=30.0))
    _, y, info = synthesizer.batch_with_info(1)
    sources = np.stack([
        source_labels_at(source_labels, frame_points(m["centre_mm"], plane, SIZE, m["pixel_mm"],
                                                    [m["slice_offset_mm"]])[0]) for m in info])
    assert np.array_equal(y, TARGET[sources])
    assert {1, 2} <= set(np.unique(y))
    if plane != "coronal":  # coronal slices within 30 mm of the knee centre do not reach the muscle
        assert (sources == MUSCLE).any()  # a soft tissue in view ...
        assert not y[sources == MUSCLE].any()  # ... is background in the target


def test_deformation_keeps_label_volumes(phantom_cache):
    cache, _, _ = phantom_cache
    deformed_config = dataclasses.replace(EXACT, max_deformation_mm=3.0, slab_half_mm=20.0)
    straight = make(cache, config=dataclasses.replace(deformed_config, max_deformation_mm=0.0), batch_size=12)
    deformed = make(cache, config=deformed_config, batch_size=12)
    y0, y1 = straight.batch(2)[1], deformed.batch(2)[1]
    assert not np.array_equal(y0, y1)
    for bone in (1, 2):
        assert (y1 == bone).sum() == pytest.approx((y0 == bone).sum(), rel=0.15)
    overlap = ((y0 > 0) & (y1 > 0)).sum() * 2 / ((y0 > 0).sum() + (y1 > 0).sum())
    assert overlap > 0.85


def test_batches_are_deterministic_per_seed_and_index(phantom_cache):
    cache, _, _ = phantom_cache
    x, y = make(cache).batch(3)
    again = make(cache).batch(3)
    assert np.array_equal(x, again[0]) and np.array_equal(y, again[1])
    unpickled = pickle.loads(pickle.dumps(make(cache)))
    assert np.array_equal(x, unpickled.batch(3)[0])
    assert not np.array_equal(x, make(cache, seed=1).batch(3)[0])
    assert not np.array_equal(x, make(cache).batch(4)[0])


def test_each_epoch_brings_fresh_batches_unless_fixed(phantom_cache):
    cache, _, _ = phantom_cache
    training, validation = make(cache), make(cache, fixed=True)
    first = training.batch(0)[0]
    assert np.array_equal(first, validation.batch(0)[0])
    training.on_epoch_end()
    validation.on_epoch_end()
    assert not np.array_equal(first, training.batch(0)[0])
    assert np.array_equal(first, validation.batch(0)[0])


def test_mirroring_swaps_left_and_right(phantom_cache):
    cache, _, _ = phantom_cache
    options = dict(planes=("coronal",), batch_size=4, n_slices_per_sample=1)
    config = dataclasses.replace(EXACT, slab_half_mm=6.0)  # stay within the fibula
    plain = make([cache / "phantom_knee.npz"], config=config, **options)
    mirrored = make([cache / "phantom_knee.npz"], config=dataclasses.replace(config, mirror_probability=1.0),
                    **options)
    y, y_mirrored = plain.batch(0)[1], mirrored.batch(0)[1]
    assert np.array_equal(y_mirrored, y[..., ::-1])
    # Coronal columns run to the patient's left: the fibula of this left knee is on the right half,
    # and on the left half once mirrored.
    columns = np.nonzero(y == 3)[2]
    assert len(columns) and (columns > SIZE / 2).all()
    assert (np.nonzero(y_mirrored == 3)[2] < SIZE / 2).all()


def test_each_stack_is_standardized(phantom_cache):
    cache, _, _ = phantom_cache
    x = make(cache, batch_size=6, n_slices_per_sample=3).batch(5)[0]
    for stack in (x[:3], x[3:]):
        assert abs(float(stack.mean())) < 1e-3
        assert float(stack.std()) == pytest.approx(1.0, abs=1e-3)


def test_fibula_weight_oversamples_maps_with_a_fibula(phantom_cache):
    cache, _, _ = phantom_cache
    counts = {}
    for weight in (1.0, 20.0):
        # axial slices over the whole knee: about a third of those of the knee with a fibula show it
        config = dataclasses.replace(EXACT, fibula_weight=weight, slab_half_mm=45.0)
        synthesizer = make(cache, size=32, batch_size=16, n_slices_per_sample=1, planes=("axial",), config=config)
        assert synthesizer.map_probabilities[0] == pytest.approx(weight / (weight + 1.0))
        batches = [synthesizer.batch_with_info(i) for i in range(3)]
        counts[weight] = (sum(m["source"].endswith("knee.nrrd") for _, _, info in batches for m in info),
                          sum((y == 3).any(axis=(1, 2)).sum() for _, y, _ in batches))
    assert counts[20.0][0] > 40 > counts[1.0][0] > 10  # of 48 samples
    assert counts[20.0][1] > counts[1.0][1]



def test_the_fibula_centre_is_the_centroid_of_its_voxels_in_mm(phantom_cache):
    from kneeseg.synth.synthesizer import fibula_centre_mm

    cache, _, _ = phantom_cache
    knee, other = (load_label_map(f) for f in cache_files(cache))
    np.testing.assert_allclose(fibula_centre_mm(knee), ELLIPSOIDS[2][1], atol=0.5)
    assert fibula_centre_mm(other) is None


def test_fibula_views_centre_the_knee_with_a_fibula_on_it_and_keep_their_slices_near_it(phantom_cache):
    from kneeseg.synth.draws import FIBULA_SLAB_HALF_MM

    cache, _, _ = phantom_cache
    config = dataclasses.replace(EXACT, fibula_weight=1.0, slab_half_mm=45.0, fibula_view_probability=1.0)
    synthesizer = make(cache, size=32, batch_size=16, n_slices_per_sample=4, planes=("sagittal",), config=config)
    knee_centres = {m["source"]: m["centre_mm"] for i in range(4) for m in synthesizer.batch_with_info(i)[2]}
    assert len(knee_centres) == 2
    for source, centre in knee_centres.items():
        expected = ELLIPSOIDS[2][1] if source.endswith("knee.nrrd") else load_label_map(cache_files(cache)[1]).knee_centre_mm
        np.testing.assert_allclose(centre, expected, atol=0.5)
    offsets = [m["slice_offset_mm"] for i in range(4) for m in synthesizer.batch_with_info(i)[2]
               if m["source"].endswith("knee.nrrd")]
    assert offsets and max(map(abs, offsets)) <= FIBULA_SLAB_HALF_MM
    x, y = synthesizer.batch(0)
    assert np.isfinite(x).all()
    # a single-slice slab (no spread to narrow) is kept as it is
    flat = make([cache_files(cache)[0]], size=32, config=dataclasses.replace(config, slab_half_mm=0.0))
    assert all(m["slice_offset_mm"] == 0.0 for m in flat.batch_with_info(0)[2])


def test_fibula_views_show_the_fibula_in_more_slices(phantom_cache):
    cache, _, _ = phantom_cache
    shown = {}
    for p in (0.0, 1.0):
        config = dataclasses.replace(EXACT, fibula_weight=1.0, slab_half_mm=45.0, fibula_view_probability=p)
        synthesizer = make(cache, size=48, window_mm=96.0, batch_size=16, n_slices_per_sample=4, config=config)
        shown[p] = sum((synthesizer.batch(i)[1] == 3).any(axis=(1, 2)).sum() for i in range(4))
    assert shown[1.0] > 1.5 * shown[0.0]


def test_the_fibula_keeps_the_tibia_s_intensity_when_the_bones_are_drawn_apart(phantom_cache):
    from kneeseg.synth.draws import draw_appearance
    from kneeseg.synth.tissues import TISSUE_IDS

    cache, _, _ = phantom_cache
    synthesizer = make(cache)
    view, label_map, _, _ = synthesizer.draw(np.random.SeedSequence(3), 2)
    fibula, tibia = TISSUE_IDS["fibula"], TISSUE_IDS["tibia"]
    gaps = {}
    for p in (0.0, 1.0):
        config = dataclasses.replace(synthesizer.config, shared_bone_probability=0.0, fibula_like_tibia_probability=p)
        looks = [draw_appearance(np.random.default_rng(seed), config, label_map, view, SIZE) for seed in range(20)]
        gaps[p] = [abs(look.means[fibula] - look.means[tibia]) for look in looks]
    assert max(gaps[1.0]) < 0.1 and np.median(gaps[0.0]) > 0.1


def test_the_fibula_options_draw_only_where_they_can_act(phantom_cache):
    """A fibula view is drawn for a map with a fibula only, the fibula's intensity only when the bones do not
    share one: elsewhere every sample is the one drawn without the options (the pinned evaluation
    generator has both off)."""
    cache, _, _ = phantom_cache
    no_fibula = [cache_files(cache)[1]]
    base = dataclasses.replace(EXACT, shared_bone_probability=1.0)
    on = dataclasses.replace(base, fibula_view_probability=1.0, fibula_like_tibia_probability=1.0)
    a, b = make(no_fibula, config=on).batch(1), make(no_fibula, config=base).batch(1)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    a = make(cache, config=dataclasses.replace(base, fibula_like_tibia_probability=1.0)).batch(1)
    b = make(cache, config=base).batch(1)
    assert np.array_equal(a[0], b[0])


def test_septa_and_stretch_render(phantom_cache):
    cache, _, _ = phantom_cache
    config = dataclasses.replace(EXACT, muscle_stretch_probability=1.0, septum_probability=1.0)
    x, y = make(cache, config=config, batch_size=4).batch(0)
    assert np.isfinite(x).all() and set(np.unique(y)) <= {0, 1, 2, 3, 4}
    plain = make(cache, config=dataclasses.replace(config, muscle_stretch_probability=0.0,
                                                   septum_probability=0.0), batch_size=4).batch(0)
    assert np.array_equal(y, plain[1]) and not np.array_equal(x, plain[0])  # same labels, other background


def test_synthetic_volume_is_a_scan_with_matching_labels(phantom_cache):
    cache, source_labels, _ = phantom_cache
    image, truth = synthesize_volume(cache / "phantom_knee.npz", seed=3, plane="sagittal", slice_mm=3.0, size=48,
                                     window_mm=96.0, config=EXACT)
    assert image.GetSize() == truth.GetSize() == (48, 48, 41)
    assert np.allclose(image.GetSpacing(), (2.0, 2.0, 3.0)) and image.GetOrigin() == truth.GetOrigin()
    assert np.allclose(np.reshape(image.GetDirection(), (3, 3)), SAGITTAL_DIRECTION)
    pixels = sitk.GetArrayFromImage(image)
    assert pixels.min() >= 0 and pixels.max() > 100  # raw intensities, not standardised
    # Without transforms the labels are the phantom's at each voxel's physical point.
    index = np.stack(np.meshgrid(*(np.arange(n) for n in truth.GetSize()), indexing="ij"), -1).reshape(-1, 3)
    points = np.array([truth.TransformIndexToPhysicalPoint(i.tolist()) for i in index])
    expected = TARGET[source_labels_at(source_labels, points)].reshape(truth.GetSize())
    assert np.array_equal(sitk.GetArrayFromImage(truth), np.transpose(expected, (2, 1, 0)))
    again = synthesize_volume(cache / "phantom_knee.npz", seed=3, plane="sagittal", slice_mm=3.0, size=48,
                              window_mm=96.0, config=EXACT)[0]
    assert np.array_equal(pixels, sitk.GetArrayFromImage(again))


def test_example_sheet_is_a_png(phantom_cache, tmp_path):
    cache, _, _ = phantom_cache
    out = write_example_sheet(cache, tmp_path / "sheet.png", n=4, frame=FrameSpec(size=48))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_training_from_the_cache_records_split_and_generator(tmp_path):
    """``kneeseg train --synthetic``: subjects split, the fibula's map kept in training, the generator's
    settings in the card."""
    from kneeseg.bundle import load_bundle
    from kneeseg.train import TrainConfig
    from kneeseg.workflows.train import train_bundle

    for name, shift in (("alpha", 0.0), ("beta", 5.0), ("gamma", -5.0), ("delta", 10.0)):
        write_phantom(tmp_path / "src" / "phantom", name, with_fibula=name == "delta", shift_mm=shift)
    prepare_cache(tmp_path / "src", tmp_path / "cache", spacing_mm=1.0, margin_mm=20.0, sources=(PHANTOM_SOURCE,))
    config = TrainConfig.from_flat(filters=4, depth=2, input_size=32, window_mm=80.0, batch_size=2, epochs=1,
                         steps_per_epoch=2, validation_steps=1, synthesis={"septum_probability": 0.0})
    train_bundle(config, tmp_path / "bundle", tmp_path / "work", synthetic=tmp_path / "cache", export_onnx=False)
    data = load_bundle(tmp_path / "bundle").card.training["data"]
    assert data["kind"].startswith("synthetic")
    split = data["split"]
    assert sorted(sum(split.values(), [])) == ["P-alpha", "P-beta", "P-delta", "P-gamma"]
    assert "P-delta" in split["train"]  # the only map with a fibula is trained on
    expected = dataclasses.asdict(SynthesisConfig(septum_probability=0.0))
    assert data["synthesis"] == json.loads(json.dumps(expected))
    assert synthesis_config(data["synthesis"]) == SynthesisConfig(septum_probability=0.0)  # reusable as is


def test_synthesis_settings_are_checked():
    assert synthesis_config(None) == SynthesisConfig()
    assert synthesis_config({"muscle_stretch": [1, 2]}).muscle_stretch == (1, 2)
    for bad, message in (({"septum_chance": 1}, "unknown synthesis setting"), ({"septum_probability": "x"}, "like 0.5"),
                         ({"muscle_stretch": 3}, "like (1.5, 5.0)"), ([1], "JSON object")):
        with pytest.raises(InputError, match=re.escape(message)):
            synthesis_config(bad)


def test_synthesizer_needs_no_simpleitk(phantom_cache):
    """The training machine has no SimpleITK: the synthesizer must not import it."""
    import subprocess
    import sys

    cache, _, _ = phantom_cache
    code = ("import sys; sys.modules['SimpleITK'] = None\n"
            "from kneeseg.synth import SliceSynthesizer\n"
            "from kneeseg.specs import FrameSpec\n"
            f"SliceSynthesizer({str(cache)!r}, FrameSpec(size=32), batch_size=2).batch(0)\n"
            "assert not any(m.startswith(('tensorflow', 'keras')) for m in sys.modules)\n")
    package_root = Path(__file__).resolve().parents[2] / "KneeSegmentation"
    env = {"PYTHONPATH": str(package_root)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# --- real label maps -------------------------------------------------------------------------------


@pytest.mark.realdata
@pytest.mark.skipif(not (SHARED_DATA / "labelmaps").is_dir(),
                    reason=f"real label maps not present at {SHARED_DATA / 'labelmaps'}")
@pytest.mark.slow
def test_real_label_maps(tmp_path):
    source = tmp_path / "labelmaps"
    for relative in ("oai/OAI_AKOA/9014797_00m.nii.gz", "mskt/mskt_dess_bones_fibula.nrrd"):
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        (source / relative).symlink_to(SHARED_DATA / "labelmaps" / relative)
    manifest = prepare_cache(source, tmp_path / "cache")
    oai, mskt = manifest["files"]
    assert oai["subject"] == "OAI-9014797" and oai["bones"] == ["Femur", "Tibia", "Patella"]
    assert mskt["has_fibula"] and mskt["licence"].startswith("MIT")
    for path in cache_files(tmp_path / "cache"):
        assert path.stat().st_size < 1_000_000
        label_map = load_label_map(path)
        femur_z = np.argwhere(label_map.labels == 1)[:, 0].mean() * 0.7 + label_map.origin[2]
        tibia_z = np.argwhere(label_map.labels == 2)[:, 0].mean() * 0.7 + label_map.origin[2]
        assert tibia_z < label_map.knee_centre_mm[2] < femur_z
    y = SliceSynthesizer(tmp_path / "cache", FrameSpec(size=96), batch_size=16, n_slices_per_sample=4).batch(0)[1]
    assert {1, 2} <= set(np.unique(y))


# --- the cortical rim's side of the label edge (issue 12) ---------------------------------------------


def test_cortical_rim_lies_inside_the_bone_label_or_just_outside_it():
    from kneeseg.synth import OUTSIDE_FIELD_OF_VIEW, TISSUE_IDS

    tissue = np.zeros((9, 9), np.uint8)
    tissue[3:6, 3:6] = TISSUE_IDS["femur"]
    tissue[0, :] = OUTSIDE_FIELD_OF_VIEW
    bone = tissue == TISSUE_IDS["femur"]
    inside = render._cortex(tissue, 1)
    outside = render._rim_outside(tissue, 1)
    assert not (inside & ~bone).any() and inside[3, 3] and not inside[4, 4]  # the bone's own edge pixels
    ring = np.zeros_like(bone)
    ring[2:7, 2:7] = True
    assert np.array_equal(outside, ring & ~bone)  # the 8-connected ring around the bone, no bone in it
    assert not render._rim_outside(tissue, 3)[0].any()  # never drawn where the scan has no signal


def test_rim_outside_darkens_the_tissue_around_the_bone_label(phantom_cache):
    from scipy import ndimage

    cache, _, _ = phantom_cache
    plain = dataclasses.replace(EXACT, cortex_probability=1.0, cortex_mm=(1.9, 1.9), dark_cortex_probability=1.0,
                                texture_std=(0.0, 0.0), bias_std=(0.0, 0.0), noise_std=(0.0, 0.0),
                                blur_sigma_px=(0.0, 0.0), thick_slice_probability=0.0, gamma_log_std=0.0,
                                air_probability=0.0, slab_half_mm=10.0)
    for rim_outside in (0.0, 1.0):
        config = dataclasses.replace(plain, rim_outside_probability=rim_outside)
        x, y = make(cache, planes=("sagittal",), config=config).batch(0)
        for image, labels in zip(x[..., 0], y):
            bone = labels > 0
            ring_out = ndimage.binary_dilation(bone, np.ones((3, 3), bool)) & ~bone
            ring_in = bone & ~ndimage.binary_erosion(bone, np.ones((3, 3), bool), border_value=1)
            rim, other = (ring_out, ring_in) if rim_outside else (ring_in, ring_out)
            # the dark rim fills the ring on its side of the label edge (one value), not the other side
            assert np.ptp(image[rim]) < 1e-4 and image[rim][0] < np.median(image)
            assert np.abs(image[other] - image[rim][0]).min() > 1e-3


def _appearances_with(cache, setting, values):
    """The appearance of one view drawn with the same random stream under each value of one setting."""
    from kneeseg.synth.draws import draw_appearance

    synthesizer = make(cache)
    view, label_map, _, _ = synthesizer.draw(np.random.SeedSequence(3), 2)
    return [draw_appearance(np.random.default_rng(7), dataclasses.replace(synthesizer.config, **{setting: value}),
                            label_map, view, SIZE) for value in values]


def _assert_same_draws(looks, compared):
    for field in dataclasses.fields(looks[0]):
        if compared(field.name):
            np.testing.assert_equal(getattr(looks[0], field.name), getattr(looks[1], field.name), err_msg=field.name)


def test_moving_the_rim_outside_changes_no_other_draw(phantom_cache):
    """Drawn last: a benchmark can switch the rim's side and keep every other draw (contrast, noise...)."""
    cache, _, _ = phantom_cache
    looks = _appearances_with(cache, "rim_outside_probability", (0.0, 1.0))
    assert not looks[0].rim_outside and looks[1].rim_outside
    _assert_same_draws(looks, lambda name: name != "rim_outside")


def test_the_limb_lies_along_the_rows_of_sagittal_and_coronal_slices_and_across_axial_ones():
    from kneeseg.geometry import frame_points

    for plane, along_rows in (("sagittal", True), ("coronal", True), ("axial", False)):
        direction, in_plane = render.limb_direction(frame_points(np.zeros(3), plane, 5, 10.0, [0.0])[0], 10.0)
        assert in_plane == pytest.approx(1.0 if along_rows else 0.0)
        if along_rows:
            assert abs(direction[0]) == pytest.approx(1.0)  # rows run superior-inferior in both


def _plain_striated(probability):
    return dataclasses.replace(EXACT, striation_probability=probability, striation_angle_deg=0.0,
                               striation_mm=(6.0, 6.0), striation_fraction=(0.08, 0.08), texture_std=(0.0, 0.0),
                               bias_std=(0.0, 0.0), noise_std=(0.0, 0.0), blur_sigma_px=(0.0, 0.0),
                               thick_slice_probability=0.0, gamma_log_std=0.0, air_probability=0.0,
                               cortex_probability=0.0, slab_half_mm=10.0, septum_probability=0.0)


def test_fibre_streaks_run_along_the_limb_in_the_soft_tissue_and_never_cross_a_bone(phantom_cache, monkeypatch):
    cache, _, _ = phantom_cache
    monkeypatch.setattr(render, "_finish_intensities", lambda images, no_signal, look: images)  # no rescaling
    changed, soft = [], []
    for seed in range(3):
        pair = []
        for probability in (0.0, 1.0):
            synthesizer = make(cache, planes=("sagittal",), config=_plain_striated(probability))
            view, label_map, look, noise_rng = synthesizer.draw(np.random.SeedSequence(seed), 2)
            pair.append(render.render(noise_rng, view, label_map, look, synthesizer.grid, synthesizer.target))
        (plain, labels), (striated, striated_labels) = pair
        assert np.array_equal(labels, striated_labels)
        changed.append(np.abs(striated - plain) > 1e-4)
        soft.append(labels == 0)
    changed, soft = np.concatenate(changed), np.concatenate(soft)
    assert not (changed & ~soft).any()  # no streak on a bone
    assert 0.03 < changed[soft].mean() < 0.12  # about the drawn 8 % of the soft tissue
    # streaks run along the rows (superior-inferior in a sagittal slice): neighbours in a column are both
    # streak far more often than neighbours in a row
    down = (changed[:, 1:, :] & changed[:, :-1, :]).sum()
    across = (changed[:, :, 1:] & changed[:, :, :-1]).sum()
    assert down > 2 * across


def test_striation_changes_no_other_draw(phantom_cache):
    cache, _, _ = phantom_cache
    looks = _appearances_with(cache, "striation_probability", (0.0, 1.0))
    assert looks[0].striation_mean < 0 <= looks[1].striation_mean
    _assert_same_draws(looks, lambda name: not name.startswith("striation"))



def test_marrow_like_fat_ties_every_bone_to_the_fat_and_changes_no_other_draw(phantom_cache):
    from kneeseg.synth.draws import draw_appearance
    from kneeseg.synth.tissues import BONE_IDS, TISSUE_IDS

    cache, _, _ = phantom_cache
    base = dataclasses.replace(make(cache).config, intensity_jitter=0.0)  # tissue means exactly their kind's
    untied = 0
    for seed in range(20):
        view, label_map, _, _ = make(cache).draw(np.random.SeedSequence(seed), 2)
        looks = [draw_appearance(np.random.default_rng(seed), dataclasses.replace(base, marrow_like_fat_probability=p),
                                 label_map, view, SIZE) for p in (0.0, 1.0)]
        _assert_same_draws(looks, lambda name: name != "means")
        fat = looks[1].means[TISSUE_IDS["infrapatellar_fat"]]
        np.testing.assert_array_equal(looks[1].means[list(BONE_IDS)], fat)
        others = np.setdiff1d(np.arange(256), BONE_IDS)
        np.testing.assert_equal(looks[0].means[others], looks[1].means[others])
        untied += not np.allclose(looks[0].means[list(BONE_IDS)], fat)
    assert untied > 10  # without the tie the marrow is mostly not the fat's


def test_a_hidden_rim_goes_only_with_a_dark_marrow_and_changes_no_other_draw(phantom_cache):
    from kneeseg.synth.draws import HIDDEN_RIM_MARROW_MAX, draw_appearance
    from kneeseg.synth.tissues import TISSUE_IDS

    cache, _, _ = phantom_cache
    synthesizer = make(cache)
    hidden = {True: 0, False: 0}
    for seed in range(40):
        view, label_map, _, _ = synthesizer.draw(np.random.SeedSequence(seed), 2)
        looks = [draw_appearance(np.random.default_rng(seed),
                                 dataclasses.replace(synthesizer.config, hidden_rim_probability=p),
                                 label_map, view, SIZE) for p in (0.0, 1.0)]
        _assert_same_draws(looks, lambda name: name != "cortex_mm")
        dark = bool(looks[0].means[TISSUE_IDS["femur"]] <= HIDDEN_RIM_MARROW_MAX)
        assert looks[1].cortex_mm == (0.0 if dark else looks[0].cortex_mm)
        hidden[dark] += looks[0].cortex_mm > 0
    assert hidden[True] >= 3 and hidden[False] >= 10  # both kinds of marrow were drawn with a rim to hide


def test_a_decoy_changes_no_other_draw_and_keeps_its_distance_from_the_bones_intensity(phantom_cache):
    from kneeseg.synth.draws import _draw_decoy, draw_appearance
    from kneeseg.synth.tissues import TISSUE_IDS

    cache, _, _ = phantom_cache
    looks = _appearances_with(cache, "decoy_probability", (0.0, 1.0))
    assert looks[0].decoy is None and looks[1].decoy is not None
    _assert_same_draws(looks, lambda name: name != "decoy")
    synthesizer = make(cache)
    config = dataclasses.replace(synthesizer.config, decoy_probability=1.0)
    for seed in range(30):
        view, label_map, _, _ = synthesizer.draw(np.random.SeedSequence(seed), 2)
        look = draw_appearance(np.random.default_rng(seed), config, label_map, view, SIZE)
        decoy, femur = look.decoy, TISSUE_IDS["femur"]
        assert decoy.bone_id in (femur, TISSUE_IDS["tibia"])
        assert abs(decoy.mean - look.means[decoy.bone_id]) >= 0.2 - 1e-6
        assert 20.0 <= abs(decoy.shift_mm[0]) <= 45.0
        assert decoy.shift_mm[2] * (1.0 if decoy.bone_id == femur else -1.0) >= 0  # away from the joint
        assert abs(decoy.shift_mm[1]) <= 20.0 and 0.0 <= decoy.mean <= 1.0
    # a contrast no intensity can keep from the bone's: the farthest one
    for bone_mean, farthest in ((0.5, 0.0), (0.45, 1.0), (0.7, 0.0)):
        means = np.full(256, bone_mean, np.float32)
        decoy = _draw_decoy(np.random.default_rng(0), dataclasses.replace(config, decoy_contrast=0.8), means, 0.2)
        assert decoy.mean == farthest


def _label_map_mm(synthesizer, view):
    """Per slice of ``view``: the label-map positions (mm) of its coarse grid points."""
    return [render._cache_mm(view, synthesizer.grid.points(view.plane, view.pixel_mm, offset))
            for offset in view.slice_offsets_mm]


def _tissue_ids(synthesizer, view, label_map, shift_mm=np.zeros(3)):
    """Per slice of ``view``: the tissue ids of the label map moved by ``shift_mm``."""
    return np.stack([render._lookup_tissue(label_map, render._cache_index(label_map, physical - shift_mm,
                                                                          synthesizer.grid), view.extend_shafts)
                     for physical in _label_map_mm(synthesizer, view)])


def _with_and_without_decoy(synthesizer, seed, decoy_for):
    """Images of one drawn stack rendered with the same noise without and with a decoy, its tissue ids, where
    the moved bone lies, its view, its appearance and the decoy."""
    view, label_map, look, noise_rng = synthesizer.draw(np.random.SeedSequence(seed), 2)
    state = noise_rng.bit_generator.state
    plain, labels = render.render(noise_rng, view, label_map, look, synthesizer.grid, synthesizer.target)
    decoy = decoy_for(look)
    noise_rng.bit_generator.state = state
    with_decoy, decoy_labels = render.render(noise_rng, view, label_map, dataclasses.replace(look, decoy=decoy),
                                             synthesizer.grid, synthesizer.target)
    assert np.array_equal(labels, decoy_labels)  # a decoy is never labelled
    moved = _tissue_ids(synthesizer, view, label_map, decoy.shift_mm) == decoy.bone_id
    return plain, with_decoy, _tissue_ids(synthesizer, view, label_map), moved, view, look, decoy


@pytest.mark.parametrize("outlined", [False, True])
def test_a_decoy_paints_the_moved_bone_over_soft_tissue_only_and_leaves_the_labels(phantom_cache, monkeypatch,
                                                                                     outlined):
    from kneeseg.synth.draws import Decoy
    from kneeseg.synth.tissues import TISSUE_IDS

    cache, _, _ = phantom_cache
    monkeypatch.setattr(render, "_finish_intensities", lambda images, no_signal, look: images)  # no rescaling
    synthesizer = make(cache, planes=("coronal",), config=_plain_striated(0.0))

    def decoy_for(look):
        femur_mean = float(look.means[TISSUE_IDS["femur"]])
        return Decoy(TISSUE_IDS["femur"], np.array([30.0, 0.0, 10.0]),
                     femur_mean + 0.5 if femur_mean < 0.5 else femur_mean - 0.5, 0.03 if outlined else -1.0, 1.0)

    plain, with_decoy, tissue, moved, _, _, decoy = _with_and_without_decoy(synthesizer, 1, decoy_for)
    soft = tissue == 0  # the phantom's one other tissue, a muscle, lies behind the knee, away from the moved femur
    inside = moved & soft
    outline = np.stack([render.region_borders(m.view(np.uint8), 1) for m in moved]) & soft
    if not outlined:
        outline[:] = False
    assert inside.sum() > 20  # the femur moved 30 mm sideways shows beside the femur
    changed = np.abs(with_decoy - plain) > 1e-4
    np.testing.assert_array_equal(changed, inside | outline)
    np.testing.assert_allclose(with_decoy[inside & ~outline], decoy.mean, atol=1e-4)  # no texture in this config
    if outlined:
        np.testing.assert_allclose(with_decoy[outline], 0.03, atol=1e-4)


def test_a_decoy_stays_below_the_skin_and_its_fat(phantom_cache, monkeypatch):
    from kneeseg.synth.draws import Decoy
    from kneeseg.synth.tissues import TISSUE_IDS

    cache, _, _ = phantom_cache
    monkeypatch.setattr(render, "_finish_intensities", lambda images, no_signal, look: images)
    config = dataclasses.replace(_plain_striated(0.0), air_probability=1.0, subcutaneous_fat_probability=1.0,
                                 fat_layer_mm=(4.0, 4.0))
    synthesizer = make(cache, planes=("coronal",), config=config, window_mm=150.0)  # wide enough to show the skin
    painted, spared = 0, 0
    for seed in range(6):
        plain, with_decoy, tissue, moved, view, look, _ = _with_and_without_decoy(
            synthesizer, seed, lambda look: Decoy(TISSUE_IDS["femur"], np.array([45.0, 0.0, 0.0]),
                                                  0.99 if look.fat_mean < 0.5 else 0.01, -1.0, 1.0))
        depth = np.stack([synthesizer.grid.to_full(render._skin_depth(look.outline, physical).astype(np.float32))
                          for physical in _label_map_mm(synthesizer, view)])
        under_skin = (tissue == 0) & (depth < 4.0)  # air and the 4 mm of fat beneath the skin
        changed = np.abs(with_decoy - plain) > 1e-4
        assert not (changed & under_skin).any()
        np.testing.assert_array_equal(changed, moved & (tissue == 0) & ~under_skin)  # nor outside the label map
        painted += int(changed.sum())
        spared += int((moved & under_skin).sum())
    assert painted > 0 and spared > 0  # the decoy reached the skin and stopped beneath its fat


def test_staple_source_names_the_person_so_both_knees_share_a_subject():
    from kneeseg.synth import DEFAULT_SOURCES, TISSUES

    staple = next(s for s in DEFAULT_SOURCES if s.dataset == "STAPLE")
    assert staple.subject("staple_JIA_MRI_l") == staple.subject("staple_JIA_MRI_r") == "STAPLE-JIA"
    assert staple.subject("staple_MC22_r") == "STAPLE-MC22"
    assert staple.licence.startswith("CC BY-NC 4.0")
    assert [TISSUES[i].target for i in staple.lookup(4)[1:]] == [1, 2, 3, 4]  # femur tibia fibula patella


def test_a_split_file_holds_a_fibula_subject_out_of_synthetic_training(tmp_path):
    """With a split file the fibula's map may stay held out (a drawn split moves it into training)."""
    from kneeseg.train import TrainConfig
    from kneeseg.workflows.train import synthetic_sources

    for name, shift in (("alpha", 0.0), ("beta", 5.0), ("gamma", -5.0), ("delta", 10.0)):
        write_phantom(tmp_path / "src" / "phantom", name, with_fibula=name == "delta", shift_mm=shift)
    prepare_cache(tmp_path / "src", tmp_path / "cache", spacing_mm=1.0, margin_mm=20.0, sources=(PHANTOM_SOURCE,))
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"train": ["P-alpha", "P-beta"], "validation": ["P-gamma"], "test": ["P-delta"],
                                      "note": "delta has the only fibula"}))
    config = TrainConfig.from_flat(input_size=32, window_mm=80.0, batch_size=2, split=str(split_file))
    train_source, val_source, provenance = synthetic_sources(config, tmp_path / "cache")
    data = provenance["data"]
    assert data["split"] == {"train": ["P-alpha", "P-beta"], "validation": ["P-gamma"], "test": ["P-delta"]}
    assert data["split_source"] == f"file {split_file.name}"
    names = [sorted(Path(f).name for f in source.files) for source in (train_source, val_source)]
    assert [[n.split(".")[0] for n in part] for part in names] == [["phantom_alpha", "phantom_beta"], ["phantom_gamma"]]


# --- the pinned synthetic evaluation (issue 12) --------------------------------------------------------


def test_the_rim_outside_evaluation_keeps_the_volumes_and_moves_only_the_rim(phantom_cache):
    from scipy import ndimage

    from kneeseg.synth import EVALUATION_CONFIG, EVALUATION_CONFIG_RIM_OUTSIDE

    assert EVALUATION_CONFIG.rim_outside_probability == 0.0  # the shipped model's benchmark, unchanged
    assert dataclasses.replace(EVALUATION_CONFIG_RIM_OUTSIDE, rim_outside_probability=0.0) == EVALUATION_CONFIG
    cache, _, _ = phantom_cache
    volumes = [synthesize_volume(cache / "phantom_knee.npz", seed=1000, plane="sagittal", slice_mm=3.0, size=48,
                                 window_mm=96.0, config=config)
               for config in (EVALUATION_CONFIG, EVALUATION_CONFIG_RIM_OUTSIDE)]
    (image_in, truth_in), (image_out, truth_out) = [[sitk.GetArrayFromImage(v) for v in pair] for pair in volumes]
    assert np.array_equal(truth_in, truth_out)  # the same view of the same knee
    change = np.abs(image_out - image_in)
    bone = truth_in > 0
    distance_mm = np.where(bone, ndimage.distance_transform_edt(bone, sampling=(3.0, 2.0, 2.0)),
                           ndimage.distance_transform_edt(~bone, sampling=(3.0, 2.0, 2.0)))  # to the label edge
    near = distance_mm <= 4.0
    assert change[near].mean() > 3 * change[~near].mean()  # the rim moved; away from it the scan is the same


class _PerfectModel:
    """Stands in for ``segment``: returns the truth of the volume synthesised last."""

    def __init__(self, monkeypatch):
        from kneeseg.workflows import evaluate

        self.truths, self.calls = [], []
        real = evaluate.synth.synthesize_volume

        def synthesize(path, **kwargs):
            self.calls.append((Path(path).name, kwargs))
            image, truth = real(path, size=48, window_mm=96.0, extent_mm=30.0, slice_mm=3.0, **kwargs)
            self.truths.append(truth)
            return image, truth

        monkeypatch.setattr(evaluate.synth, "synthesize_volume", synthesize)
        monkeypatch.setattr(evaluate, "make_predictor", lambda bundle: None)
        monkeypatch.setattr(evaluate, "segment", lambda image, *a, **k: type("R", (), {"labelmap": self.truths[-1]}))


def _bundle(test_subjects):
    from types import SimpleNamespace

    from kneeseg.labels import SEPARATE_BONES

    card = SimpleNamespace(test_subjects=test_subjects, network=SimpleNamespace(output="separate"))
    return SimpleNamespace(card=card, labels=SEPARATE_BONES)


def test_held_out_fibula_maps_get_volumes_of_their_own(phantom_cache, monkeypatch):
    from kneeseg.synth import EVALUATION_CONFIG_RIM_OUTSIDE
    from kneeseg.workflows.evaluate import FIBULA_PLANES, FIBULA_SEEDS, evaluate_synthetic_fibula

    cache, _, _ = phantom_cache
    model = _PerfectModel(monkeypatch)
    report = evaluate_synthetic_fibula(_bundle(["P-knee", "P-other"]), cache, config=EVALUATION_CONFIG_RIM_OUTSIDE)
    assert report["maps"] == ["phantom_knee.npz"] and report["n_cases"] == len(FIBULA_PLANES) * len(FIBULA_SEEDS) == 6
    assert sorted((kw["plane"], kw["seed"]) for _, kw in model.calls) == sorted(
        (p, 2000 + s) for p in FIBULA_PLANES for s in FIBULA_SEEDS)
    assert all(kw["config"] is EVALUATION_CONFIG_RIM_OUTSIDE for _, kw in model.calls)
    assert report["dice"]["Fibula"]["n"] >= 1 and report["dice"]["Fibula"]["mean"] == 1.0
    assert report["signed_surface_mm"]["Fibula"]["mean"] == 0.0
    none = evaluate_synthetic_fibula(_bundle(["P-elsewhere"]), cache)  # no held-out map has a fibula
    assert none["n_cases"] == 0 and none["maps"] == [] and "Fibula" not in none["dice"]


def test_synthetic_evaluation_takes_the_pinned_generator_it_is_given(phantom_cache, monkeypatch):
    from kneeseg.synth import EVALUATION_CONFIG, EVALUATION_CONFIG_RIM_OUTSIDE
    from kneeseg.workflows.evaluate import evaluate_synthetic

    cache, _, _ = phantom_cache
    model = _PerfectModel(monkeypatch)
    evaluate_synthetic(_bundle(["P-knee"]), cache, n_cases=2)  # both phantom maps are of one knee
    report = evaluate_synthetic(_bundle(["P-knee"]), cache, n_cases=2, config=EVALUATION_CONFIG_RIM_OUTSIDE)
    assert [kw["config"] for _, kw in model.calls] == [EVALUATION_CONFIG] * 2 + [EVALUATION_CONFIG_RIM_OUTSIDE] * 2
    assert [kw["seed"] for _, kw in model.calls] == [1000, 1001] * 2  # the same volumes
    assert [name for name, _ in model.calls[2:]] == ["phantom_knee.npz", "phantom_other.npz"]
    assert report["n_cases"] == 2
    assert report["volume_ratio"]["Femur"]["mean"] == 1.0


def test_the_leg_outline_surrounds_the_labelled_tissue_of_a_box_away_from_the_origin():
    # The cache stores the tissue box as rows (lowest x, y, z) and (highest x, y, z). Read as columns,
    # the outline was centred 15-30 mm off the tissue at half its size (air painted inside the leg) and,
    # where a map's y lies below its x, had negative radii and no skin at all (NaN depth).
    from kneeseg.synth.cache import CachedLabelMap, _tissue_box_mm
    from kneeseg.synth.draws import _body_outline

    lo, hi = np.array([100.0, -220.0, 5.0]), np.array([180.0, -120.0, 95.0])
    labels = np.ones((91, 101, 81), np.uint8)  # (z, y, x): 80 x 100 x 90 mm of tissue at 1 mm
    box = _tissue_box_mm(labels, 1.0, lo)  # the box as the cache writes it
    np.testing.assert_allclose(box, [lo, hi])
    label_map = CachedLabelMap(labels=labels, spacing=1.0, origin=lo, knee_centre_mm=(lo + hi) / 2, tissue_box_mm=box,
                               fov_z_range=np.array([0, 90], np.int32), source="box", licence="test", subject="B",
                               has_fibula=False)
    middle = (lo[:2] + hi[:2]) / 2
    sides = np.array([[lo[0], middle[1]], [hi[0], middle[1]], [middle[0], lo[1]], [middle[0], hi[1]]])
    points = np.concatenate([np.vstack([middle, sides]), np.zeros((5, 1))], axis=1)
    rng = np.random.default_rng(0)
    for _ in range(50):
        outline = _body_outline(rng, label_map)
        np.testing.assert_allclose(outline["centre"], middle)
        depth = render._skin_depth(outline, points)
        assert np.all(np.isfinite(depth))
        round_leg = render._skin_depth({**outline, "wobble": np.zeros((3, 2))}, points)
        assert np.all(round_leg[1:] >= 3.0)  # the box's sides lie under the skin, the smallest margin deep
        assert depth[0] >= min(hi[:2] - lo[:2]) / 2  # the middle lies at least half the box deep


def test_the_fibula_maps_of_named_subjects_are_scored_with_the_seeds_asked_for(phantom_cache, monkeypatch):
    from kneeseg.workflows.evaluate import FIBULA_PLANES, evaluate_synthetic_fibula

    cache, _, _ = phantom_cache
    model = _PerfectModel(monkeypatch)
    report = evaluate_synthetic_fibula(_bundle(["P-elsewhere"]), cache, seeds=(0, 1, 2), subjects=["P-knee"])
    assert report["maps"] == ["phantom_knee.npz"] and report["n_cases"] == 3 * len(FIBULA_PLANES)
    assert sorted({kw["seed"] for _, kw in model.calls}) == [2000, 2001, 2002]
    assert "named subjects: P-knee" in report["dataset"]
    assert evaluate_synthetic_fibula(_bundle([]), cache, seeds=(0,), subjects="P-knee")["n_cases"] == 3  # not letters
    for lacking in (["P-other"], ["P-knee", "P-nobody"]):  # a map without a fibula, a subject with no map
        with pytest.raises(InputError, match=lacking[-1]):
            evaluate_synthetic_fibula(_bundle([]), cache, subjects=lacking)


def _case(case_id, **dice):
    return {"case": case_id, **{bone: {"dice": d, "truth_voxels": 0 if d is None else 10}
                                for bone, d in dice.items()}}


def test_paired_comparison_matches_cases_by_id_and_counts_each_subject():
    from kneeseg.workflows.evaluate import compare_cases

    before = [_case("A:a.npz:sagittal#0", Fibula=0.2, Femur=0.9), _case("A:a.npz:axial#0", Fibula=0.5, Femur=0.9),
              _case("all:b.npz:sagittal#0", Fibula=0.6, Femur=None)]  # a subject may be called "all"
    after = [_case("all:b.npz:sagittal#0", Fibula=0.605, Femur=None), _case("A:a.npz:axial#0", Fibula=0.3, Femur=0.95),
             _case("A:a.npz:sagittal#0", Fibula=0.6, Femur=0.9)]
    result = compare_cases(before, after, ["Femur", "Fibula"])
    fibula = result["all"]["Fibula"]
    assert fibula["n"] == 3 and fibula["before"] == pytest.approx(1.3 / 3)
    assert fibula["after"] == pytest.approx(1.505 / 3)
    assert fibula["difference"] == pytest.approx(0.205 / 3)
    assert (fibula["after_better"], fibula["after_worse"]) == (1, 1)  # the +0.005 is within the margin
    assert list(result["subjects"]) == ["A", "all"] and result["subjects"]["A"]["Fibula"]["n"] == 2
    assert result["subjects"]["all"]["Fibula"]["after"] == pytest.approx(0.605)
    assert result["all"]["Femur"]["n"] == 2 and "Femur" not in result["subjects"]["all"]  # its truth has no femur
    equal = result["subjects_weighed_equally"]["Fibula"]  # A's two cases count as much as "all"'s one
    assert equal["subjects"] == 2 and equal["before"] == pytest.approx((0.35 + 0.6) / 2)
    assert equal["after"] == pytest.approx((0.45 + 0.605) / 2) and equal["difference"] == pytest.approx(0.0525)
    # resampled within each person: A's mean difference is +0.4, +0.1 or -0.2, "all"'s always +0.005
    assert equal["interval_95"] == pytest.approx([(-0.2 + 0.005) / 2, (0.4 + 0.005) / 2])
    assert result["subjects_weighed_equally"]["Femur"]["subjects"] == 1
    with pytest.raises(InputError, match="same cases: 1 case ids differ, e.g. A:a.npz:sagittal#0"):
        compare_cases(before, after[:2], ["Fibula"])
    with pytest.raises(InputError, match="first model has case A:a.npz:axial#0 twice"):
        compare_cases(before + before[1:2], after, ["Fibula"])
    with pytest.raises(InputError, match="second model has case"):
        compare_cases(before, after + after[:1], ["Fibula"])
    other_truth = [dict(case) for case in after]
    other_truth[1] = {**other_truth[1], "Fibula": {"dice": 0.3, "truth_voxels": 11}}
    with pytest.raises(InputError, match="A:a.npz:axial#0: the two models were scored against different Fibula"):
        compare_cases(before, other_truth, ["Femur", "Fibula"])


def _compare_script():
    return load_script("compare_models")


def test_the_model_comparison_script_scores_both_bundles_on_the_same_volumes(phantom_cache, monkeypatch, tmp_path,
                                                                             capsys):
    from types import SimpleNamespace

    import kneeseg.bundle
    from kneeseg.labels import MERGED_BONES, SEPARATE_BONES
    from kneeseg.workflows import evaluate

    cache, _, _ = phantom_cache
    model = _PerfectModel(monkeypatch)
    bundles = {name: SimpleNamespace(labels=SEPARATE_BONES, card=SimpleNamespace(
        test_subjects=["P-knee"], validation_subjects=["P-other"], network=SimpleNamespace(output="separate"),
        plane_reach="auto" if name == "after" else "off"))
        for name in ("before", "after")}
    monkeypatch.setattr(kneeseg.bundle, "load_bundle", lambda path: bundles[Path(path).name])

    def segment(image, bundle, *args, **kwargs):  # "before" finds no bone at all, "after" every voxel of it
        truth = model.truths[-1]
        return SimpleNamespace(labelmap=truth if bundle is bundles["after"] else truth * 0)

    monkeypatch.setattr(evaluate, "segment", segment)
    script = _compare_script()
    out = tmp_path / "compare.json"
    script.main([str(tmp_path / "before"), str(tmp_path / "after"), "--cache", str(cache), "--seeds", "2",
                 "--out", str(out)])
    result = json.loads(out.read_text())
    first, second = model.calls[:6], model.calls[6:12]
    assert first == second and len(model.calls) == 12  # the same six volumes for both
    assert result["subjects"] == ["P-knee"] and len(result["cases"]["before"]) == len(result["cases"]["after"]) == 6
    fibula = result["comparison"]["all"]["Fibula"]
    assert fibula["n"] >= 1  # the small phantom volumes do not all reach the fibula
    assert (fibula["before"], fibula["after"]) == (0.0, 1.0)
    assert (fibula["after_better"], fibula["after_worse"]) == (fibula["n"], 0)
    printed = capsys.readouterr().out
    assert ("subjects weighed equally, Fibula: before 0.000, after 1.000, difference +1.000 (95 % interval "
            "+1.000 to +1.000: the volumes resampled within each person, the people fixed)") in printed
    assert result["plane_reach"] == {"before": "off", "after": "auto"}  # as the cards say
    script.main([str(tmp_path / "before"), str(tmp_path / "after"), "--cache", str(cache), "--seeds", "1",
                 "--out", str(out), "--after-plane-reach", "off", "--before-plane-reach", "auto"])
    assert json.loads(out.read_text())["plane_reach"] == {"before": "auto", "after": "off"}  # the flags win
    script.main([str(tmp_path / "before"), str(tmp_path / "after"), "--cache", str(cache), "--seeds", "2",
                 "--first-seed", "4", "--out", str(out)])
    fresh = json.loads(out.read_text())
    assert fresh["seeds"] == [4, 5]
    assert sorted({c["case"].rsplit("#", 1)[1] for c in fresh["cases"]["after"]}) == ["4", "5"]
    assert {kwargs["seed"] for _, kwargs in model.calls[-12:]} == {2004, 2005}  # both models, only the fresh seeds
    capsys.readouterr()
    assert printed.count("synthetic fibula case 6/6") == 2  # progress of a long run, per model

    bundles["before"].labels = MERGED_BONES
    with pytest.raises(SystemExit):
        script.main([str(tmp_path / "before"), str(tmp_path / "after"), "--cache", str(cache)])
    assert "no bone in common" in capsys.readouterr().err
    bundles["before"].labels = tuple(dataclasses.replace(label, value=9) if label.name == "Fibula" else label
                                     for label in SEPARATE_BONES)
    with pytest.raises(SystemExit):
        script.main([str(tmp_path / "before"), str(tmp_path / "after"), "--cache", str(cache)])
    assert "give Fibula different label values" in capsys.readouterr().err
    bundles["before"].labels = SEPARATE_BONES
    bundles["before"].card.test_subjects, bundles["before"].card.validation_subjects = [], []
    script.main([str(tmp_path / "before"), str(tmp_path / "after"), "--cache", str(cache), "--seeds", "1"])
    assert "before records no split: whether it trained on P-knee is unknown" in capsys.readouterr().out
    bundles["before"].card.test_subjects = ["P-other"]  # now "before" trained on P-knee
    with pytest.raises(SystemExit) as refused:
        script.main([str(tmp_path / "before"), str(tmp_path / "after"), "--cache", str(cache)])
    assert refused.value.code == 2 and "before was trained on P-knee" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("")
    for bad, message in ((["--seeds", "0"], "at least 1"), (["--first-seed", "-1"], "0 or more, not -1"),
                         (["--cache", str(tmp_path / "none")], "does not exist"),
                         (["--cache", str(cache), "--subjects", "P-nobody"], "has no map with a fibula for P-nobody"),
                         (["--cache", str(cache), "--out", str(tmp_path / "a-file" / "c.json")],
                          "--out: cannot write here"),
                         (["--cache", str(cache), "--out", str(tmp_path)], "--out names an existing folder"),
                         (["--cache", str(cache), "--out", str(cache / "c.json")], "lies inside the input folder")):
        with pytest.raises(SystemExit):
            script.main([str(tmp_path / "before"), str(tmp_path / "after"), *bad])
        assert message in capsys.readouterr().err


def test_synthetic_batches_carry_the_position_and_keep_the_images_of_a_run_without_it(phantom_cache):
    from kneeseg.preprocess.frame import POSITION_SCALE_MM

    cache, _, _ = phantom_cache
    config = SynthesisConfig(position_unknown_probability=0.5)
    with_position = make(cache, batch_size=8, n_slices_per_sample=2, seed=4, config=config, slice_position="input")
    plain = make(cache, batch_size=8, n_slices_per_sample=2, seed=4, config=config)
    known = []
    for index in range(4):
        x, y, info = with_position.batch_with_info(index)
        x_plain, y_plain = plain.batch(index)
        assert x.shape == (8, SIZE, SIZE, 3)
        np.testing.assert_array_equal(x[..., 0], x_plain[..., 0])
        np.testing.assert_array_equal(y, y_plain)
        for k, slice_info in enumerate(info):
            assert np.ptp(x[k, ..., 1]) == 0 and np.ptp(x[k, ..., 2]) == 0  # constant over the slice
            if slice_info["position_mm"] is None:
                assert x[k, 0, 0, 1:].tolist() == [0.0, 0.0]
            else:
                assert x[k, 0, 0, 2] == 1.0
                assert x[k, 0, 0, 1] == pytest.approx(slice_info["position_mm"] / POSITION_SCALE_MM, abs=1e-6)
            known.append(slice_info["position_mm"] is not None)
    assert 0 < sum(known) < len(known)  # about half of the stacks without a position


def test_the_plane_comparison_runs_each_plane_alone_and_the_default_on_the_same_volumes(monkeypatch, tmp_path):
    from types import SimpleNamespace

    import kneeseg.bundle
    from kneeseg.synth import EVALUATION_CONFIG, EVALUATION_CONFIG_RIM_OUTSIDE
    from kneeseg.workflows import evaluate

    calls = []

    def evaluate_synthetic(bundle, cache, n_cases, options=None, config=None):
        calls.append((bundle.name, n_cases, options.planes, config))
        dice = {None: 0.9, ("sagittal",): 0.8, ("axial",): 0.5}[options.planes]
        return {measure: {"Femur": {"mean": dice}, "Tibia": {"mean": dice - 0.1}}
                for measure in ("dice", "volume_ratio", "signed_surface_mm")}

    monkeypatch.setattr(evaluate, "evaluate_synthetic", evaluate_synthetic)
    monkeypatch.setattr(kneeseg.bundle, "load_bundle", lambda folder: SimpleNamespace(name=Path(folder).name))
    script = load_script("compare_planes")
    out = tmp_path / "planes.json"
    script.main(["a=build/one", "b=build/two", "--cache", "c", "--volumes", "3", "--planes", "sagittal", "axial",
                 "fused", "--out", str(out)])
    result = json.loads(out.read_text())
    assert [c[:3] for c in calls] == [(name, 3, planes) for name in ("one", "two")
                                      for planes in (("sagittal",), ("axial",), None)]
    assert all(c[3] is EVALUATION_CONFIG_RIM_OUTSIDE for c in calls)
    rows = result["bundles"]["b"]["synthetic"]
    assert rows["axial"]["dice"] == {"Femur": 0.5, "Tibia": 0.4} and rows["fused"]["dice"]["Femur"] == 0.9
    calls.clear()
    script.main(["a=build/one", "--cache", "c", "--planes", "sagittal", "--rim-inside", "--out", str(out)])
    assert calls[0][3] is EVALUATION_CONFIG
    with pytest.raises(SystemExit):
        script.main(["build/one", "--cache", "c", "--out", str(out)])  # no NAME=

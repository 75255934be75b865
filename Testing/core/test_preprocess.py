"""Preprocessing: model frames and their inverse, N4, knee centre, the thesis' z handling, normalisation."""

import numpy as np
import pytest
import SimpleITK as sitk

from kneeseg import geometry
from kneeseg.io import same_geometry
from kneeseg.preprocess import centre as centres
from kneeseg.preprocess import frame as frames
from kneeseg.preprocess import intensity
from kneeseg.specs import FrameSpec
from conftest import toy_knee


@pytest.mark.parametrize("plane", geometry.PLANES)
def test_model_frame_is_a_square_window_centred_on_the_point(plane, toy_case):
    image, _ = toy_case
    centre = np.array(centres.image_centre(image)) + [3.0, -2.0, 1.0]
    frame = frames.model_frame(image, plane, centre, FrameSpec(window_mm=60.0, size=32))
    ref = frame.reference_image()
    assert ref.GetSize()[:2] == (32, 32)
    np.testing.assert_allclose(ref.GetSpacing()[:2], (60.0 / 32, 60.0 / 32))
    middle = ref.TransformContinuousIndexToPhysicalPoint([15.5, 15.5, (ref.GetSize()[2] - 1) / 2])
    # In-plane the window is centred on the point; along the slice axis on the image's extent.
    in_plane = geometry.plane_direction(plane)[:, :2]
    np.testing.assert_allclose(in_plane.T @ (np.array(middle) - centre), 0, atol=1e-6)
    np.testing.assert_allclose(np.array(ref.GetDirection()).reshape(3, 3), geometry.plane_direction(plane))


def _frame_interval(frame, axis):
    """(lo, hi) of the frame's voxel centres along physical ``axis``, widened by half a voxel."""
    ref = frame.reference_image()
    corners = frames.physical_bounds(ref) @ axis
    step = np.abs(np.array(ref.GetDirection()).reshape(3, 3).T @ axis) @ np.array(ref.GetSpacing())
    return corners.min() - step / 2, corners.max() + step / 2


@pytest.mark.parametrize("plane", geometry.PLANES)
def test_a_window_wider_than_the_image_covers_all_of_it_wherever_the_knee_is(plane, toy_case):
    image, _ = toy_case  # 70.5 x 46.8 x 35 mm
    near_a_corner = frames.physical_bounds(image).min(axis=0) + 2.0
    frame = frames.model_frame(image, plane, near_a_corner, FrameSpec(window_mm=80.0, size=32, min_slice_mm=1.0))
    bounds = frames.physical_bounds(image)
    for axis in np.eye(3):
        lo, hi = _frame_interval(frame, axis)
        assert lo <= (bounds @ axis).min() + 1e-6 and (bounds @ axis).max() - 1e-6 <= hi, (plane, axis, lo, hi)


def test_a_window_narrower_than_the_image_stays_inside_it_and_moves_only_when_it_must(toy_case):
    image, _ = toy_case
    bounds = frames.physical_bounds(image)
    lo, hi = bounds.min(axis=0), bounds.max(axis=0)
    direction = geometry.plane_direction("axial")
    middle = (lo + hi) / 2
    np.testing.assert_allclose(frames.window_centre(image, middle, direction, 20.0), middle)
    off_the_edge = middle + [30.0, 0.0, 0.0]  # 4.75 mm from the +x edge (70.5 mm wide)
    moved = frames.window_centre(image, off_the_edge, direction, 20.0)
    np.testing.assert_allclose(moved, [hi[0] - 10.0, middle[1], middle[2]])
    # a window as wide as the image along x sits on it exactly; wider along y and z: centred on the image
    wide = frames.window_centre(image, off_the_edge, direction, hi[0] - lo[0])
    np.testing.assert_allclose(wide, middle, atol=1e-9)


def test_the_window_moves_only_along_the_axes_where_it_leaves_the_image():
    image, _ = toy_knee(size=(120, 120, 20), spacing=(1.0, 1.0, 1.0))
    bounds = frames.physical_bounds(image)
    inside = (bounds.min(axis=0) + bounds.max(axis=0)) / 2 + [0.0, 35.0, 0.0]
    frame = frames.model_frame(image, "sagittal", inside, FrameSpec(window_mm=60.0, size=32, min_slice_mm=1.0))
    centre_in_plane = frames.physical_bounds(frame.reference_image()).mean(axis=0)
    # 35 + 30 > 59.5 (half the image along y): pulled back to 29.5 from the middle; x and z untouched
    np.testing.assert_allclose(centre_in_plane[1] - (bounds[:, 1].min() + bounds[:, 1].max()) / 2, 29.5, atol=1e-6)
    np.testing.assert_allclose(centre_in_plane[0], inside[0], atol=1e-6)


def test_slice_spacing_follows_the_image_but_not_finer_than_the_minimum():
    image, _ = toy_knee(spacing=(0.5, 0.5, 3.0))  # thick slices along +S: the axial slice axis
    centre = centres.image_centre(image)
    assert frames.model_frame(image, "axial", centre, FrameSpec(min_slice_mm=1.0)).slice_mm == pytest.approx(3.0)
    assert frames.model_frame(image, "sagittal", centre, FrameSpec(min_slice_mm=1.0)).slice_mm == pytest.approx(1.0)


def test_fixed_slice_count_for_3d_models(toy_case):
    image, _ = toy_case
    frame = frames.model_frame(image, "coronal", centres.image_centre(image), FrameSpec(window_mm=96, size=32),
                               n_slices=24)
    assert (frame.n_slices, frame.slice_mm) == (24, 4.0)


def test_frame_and_inverse_round_trip_on_an_oblique_volume(oblique_direction):
    image, labels = toy_knee(size=(40, 36, 30), spacing=(1.6, 1.6, 2.0), direction=oblique_direction)
    centre = centres.knee_centre_from_labels(labels)
    for plane in geometry.PLANES:
        # A window larger than the image and pixels finer than its voxels: nothing is lost.
        frame = frames.model_frame(image, plane, centre, FrameSpec(window_mm=160.0, size=160, min_slice_mm=0.8))
        on_frame = sitk.GetArrayFromImage(frames.resample_to_frame(labels, frame, "nearest"))
        one_hot = np.eye(5, dtype=np.float32)[on_frame]
        back = frames.resample_from_frame(one_hot, frame, labels, default_value=[1, 0, 0, 0, 0])
        assert back.shape == sitk.GetArrayFromImage(labels).shape + (5,)
        agreement = np.mean(np.argmax(back, -1) == sitk.GetArrayFromImage(labels))
        assert agreement > 0.97, (plane, agreement)


def test_inverse_fills_outside_the_frame_per_channel(toy_case):
    image, _ = toy_case
    frame = frames.model_frame(image, "sagittal", centres.image_centre(image), FrameSpec(window_mm=10.0, size=16))
    probs = np.zeros((frame.n_slices, 16, 16, 3), np.float32)
    probs[..., 2] = 1.0
    back = frames.resample_from_frame(probs, frame, image, default_value=[1.0, 0.0, 0.0])
    corner = back[0, 0, 0]
    np.testing.assert_allclose(corner, [1.0, 0.0, 0.0])
    np.testing.assert_allclose(back.sum(-1), 1.0, atol=1e-5)
    assert (back[..., 2] > 0.99).sum() > 0


def test_n4_removes_a_smooth_bias_field():
    image, labels = toy_knee(size=(40, 40, 40), spacing=(1.0, 1.0, 1.0), noise=0.01)
    array = sitk.GetArrayFromImage(image)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, 40)] * 3, indexing="ij")
    bias = np.exp(0.4 * x + 0.3 * z)
    biased = sitk.GetImageFromArray((array * bias).astype(np.float32))
    biased.CopyInformation(image)
    mask = sitk.GetImageFromArray(np.ones_like(array, dtype=np.uint8))
    mask.CopyInformation(image)
    corrected = intensity.n4_bias_correct(biased, intensity.N4Settings(shrink_factor=2), mask=mask)
    assert same_geometry(corrected, biased)
    bone = sitk.GetArrayFromImage(labels) == 1

    def cv(a):
        return a[bone].std() / a[bone].mean()

    assert cv(sitk.GetArrayFromImage(corrected)) < 0.5 * cv(sitk.GetArrayFromImage(biased))


def test_n4_never_modifies_its_input(toy_case):
    image, _ = toy_case
    before = sitk.GetArrayFromImage(image).copy()
    intensity.n4_bias_correct(image, intensity.N4Settings(shrink_factor=2, iterations=(5,)))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), before)


def test_knee_centre_from_labels_is_between_femur_and_tibia(oblique_direction):
    _, labels = toy_knee(size=(40, 40, 40), spacing=(1.0, 1.0, 1.0), direction=oblique_direction)
    centre = np.array(centres.knee_centre_from_labels(labels))
    array = sitk.GetArrayFromImage(labels)
    femur = geometry.VoxelGrid.of_image(labels).points(np.argwhere(array == 1)).mean(0)
    tibia = geometry.VoxelGrid.of_image(labels).points(np.argwhere(array == 2)).mean(0)
    # On the segment between the bone centroids (superior-inferior line), near its middle.
    t = np.dot(centre - tibia, femur - tibia) / np.dot(femur - tibia, femur - tibia)
    assert 0.3 < t < 0.7
    assert np.linalg.norm(centre - (tibia + t * (femur - tibia))) < 5.0


def test_centre_by_intensity_finds_the_body_not_the_field_of_view():
    image, _ = toy_knee(size=(40, 40, 40), spacing=(1.0, 1.0, 1.0))
    array = sitk.GetArrayFromImage(image)
    padded = np.zeros((40, 40, 80), np.float32)  # the knee sits in the left half of a wide field of view
    padded[:, :, :40] = array
    wide = sitk.GetImageFromArray(padded)
    wide.SetOrigin(image.GetOrigin())
    centre = centres.centre_by_intensity(wide)
    assert abs(centre[0] - (image.GetOrigin()[0] + 19.5)) < 4.0
    assert abs(centres.image_centre(wide)[0] - centre[0]) > 15.0


def test_thesis_z_handling_pads_41_to_48_and_keeps_every_second():
    volume = np.random.rand(41, 8, 8).astype(np.float32)
    padded, pad = frames.pad_slices(volume, 16)
    assert padded.shape[0] == 48 and sum(pad) == 7
    thin = frames.subsample_slices(padded, 2)
    assert thin.shape[0] == 24
    np.testing.assert_array_equal(frames.unpad_slices(padded, pad), volume)


def test_upsampling_slices_inverts_subsampling_of_a_smooth_signal():
    z = np.linspace(0, 1, 48, dtype=np.float32)
    volume = np.broadcast_to(z[:, None, None], (48, 4, 4)).copy()
    back = frames.upsample_slices(frames.subsample_slices(volume, 2), 48, 2)
    np.testing.assert_allclose(back[:-1], volume[:-1], atol=1e-6)  # the last slice is extrapolated flat


def test_standardize_per_volume_and_with_population_statistics():
    rng = np.random.default_rng(0)
    volume = rng.normal(300, 40, (10, 20, 20)).astype(np.float32)
    z = intensity.standardize(volume)
    assert abs(z.mean()) < 1e-3 and abs(z.std() - 1) < 1e-2
    population = intensity.standardize(volume, mean=250.0, std=50.0)
    assert abs(population.mean() - 1.0) < 0.05

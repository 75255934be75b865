"""The fast inference paths give the results of the plain ones: fusion, hole filling, clean-up, N4 shrinking."""

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from kneeseg.postprocess import cleanup, fusion
from kneeseg.preprocess.centre import image_centre
from kneeseg.preprocess.frame import model_frame, resample_from_frame
from kneeseg.preprocess.intensity import N4Settings
from kneeseg.specs import FrameSpec
from conftest import toy_knee


def _plain_fusion(planes, reference):
    """The reference: every plane's probabilities resampled onto the grid (background 1 outside), mean, argmax."""
    n = planes[0][1].shape[-1]
    fused = np.zeros(tuple(reversed(reference.GetSize())) + (n,), np.float32)
    for frame, probs in planes:
        fused += resample_from_frame(probs, frame, reference, default_value=[1.0] + [0.0] * (n - 1))
    fused /= len(planes)
    return np.argmax(fused, axis=-1).astype(np.uint8), fused.max(axis=-1)


def _smooth_probabilities(shape, rng, background_bias=0.5):
    logits = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=(1, 3, 3, 0)) * 30
    logits[..., 0] += background_bias
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("oblique", [False, True])
@pytest.mark.parametrize("n_classes", [5, 2])
def test_fusion_equals_resampling_every_channel(oblique, n_classes, oblique_direction):
    direction = oblique_direction if oblique else np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float)  # sagittal
    image, _ = toy_knee(seed=3, size=(50, 44, 20), spacing=(0.7, 0.7, 2.5), direction=direction)
    rng = np.random.default_rng(0)
    planes = []
    for plane in ("sagittal", "coronal", "axial"):
        frame = model_frame(image, plane, image_centre(image), FrameSpec(window_mm=40.0, size=32))
        planes.append((frame, _smooth_probabilities((frame.n_slices, 32, 32, n_classes), rng)))
    assert (fusion.axis_aligned_map(planes[0][0], image) is None) == oblique
    expected, expected_confidence = _plain_fusion(planes, image)
    assert 0.01 < (expected > 0).mean() < 0.9
    labels, confidence = fusion.fuse_frames(planes, image, confidence=True, slab_voxels=5000)
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_allclose(confidence, expected_confidence, atol=1e-5)
    # Without confidence only the box that can hold bone is computed: same labels.
    lean = [fusion.PlaneProbabilities(frame, probs, image) for frame, probs in planes]
    np.testing.assert_array_equal(fusion.fuse_frames(lean, image)[0], expected)


def test_fusion_of_pure_background_is_background():
    image, _ = toy_knee(seed=4, size=(30, 30, 20))
    frame = model_frame(image, "axial", image_centre(image), FrameSpec(window_mm=30.0, size=16))
    probs = np.zeros((frame.n_slices, 16, 16, 5), np.float32)
    probs[..., 0] = 0.7
    probs[..., 1:] = 0.075
    labels, confidence = fusion.fuse_frames([(frame, probs)], image)
    assert labels.shape == (20, 30, 30) and not labels.any() and confidence is None


def test_fill_holes_and_clean_labelmap_match_scipy():
    rng = np.random.default_rng(1)
    for _ in range(10):
        mask = ndimage.binary_opening(rng.random((20, 24, 22)) > 0.4)
        np.testing.assert_array_equal(cleanup.fill_holes(mask), ndimage.binary_fill_holes(mask))

    def plain_clean(labelmap, values):
        out = np.zeros_like(labelmap)
        for value in values:
            mask = labelmap == value
            if not mask.any():
                continue
            labelled, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
            sizes = np.bincount(labelled.ravel())
            sizes[0] = 0
            keep = ndimage.binary_fill_holes(labelled == np.argmax(sizes))
            out[keep & (out == 0)] = value
        return out

    for _ in range(10):
        labelmap = ndimage.median_filter((rng.random((26, 28, 24)) * 5).astype(np.uint8), 3)
        np.testing.assert_array_equal(cleanup.clean_labelmap(labelmap, [1, 2, 3, 4]),
                                      plain_clean(labelmap, [1, 2, 3, 4]))


def test_n4_fits_on_voxels_of_about_four_mm():
    image = sitk.Image(512, 512, 80, sitk.sitkFloat32)
    image.SetSpacing((0.3125, 0.3125, 1.5))
    assert N4Settings().shrink_factors(image) == [14, 14, 2]
    assert N4Settings(shrink_factor=4).shrink_factors(image) == [4, 4, 4]
    small = sitk.Image(20, 20, 12, sitk.sitkFloat32)
    assert N4Settings().shrink_factors(small) == [2, 2, 1]  # at least 8 voxels per axis

"""Augmentation keeps labels aligned with the image and is reproducible under a seed."""

import numpy as np

from kneeseg.augment import AugmentConfig, adjust_intensity, augment_batch, augment_pair


def _square():
    image = np.zeros((64, 64), np.float32)
    labels = np.zeros((64, 64), np.uint8)
    image[20:40, 10:30] = 1.0
    labels[20:40, 10:30] = 1
    return image, labels


def test_labels_follow_the_image():
    image, labels = _square()
    no_intensity = AugmentConfig(brightness=0.0, contrast_range=(1, 1), gamma_range=(1, 1))
    for seed in range(5):
        out_image, out_labels = augment_pair(image, labels, np.random.default_rng(seed), no_intensity)
        assert set(np.unique(out_labels)) <= {0, 1}
        bright = out_image > out_image.mean()
        overlap = (bright & (out_labels == 1)).sum() / max((out_labels == 1).sum(), 1)
        assert overlap > 0.9


def test_flip_mirrors_columns():
    image, labels = _square()
    config = AugmentConfig(flip_probability=1.0, max_shift_fraction=0, max_rotation_deg=0, max_shear=0,
                           zoom_range=(1, 1), brightness=0, contrast_range=(1, 1), gamma_range=(1, 1))
    _, out = augment_pair(image, labels, np.random.default_rng(0), config)
    np.testing.assert_array_equal(out, labels[:, ::-1])


def test_seeded_and_varied():
    image, labels = _square()
    images = np.stack([image] * 4)[..., None]
    batch_labels = np.stack([labels] * 4)
    a = augment_batch(images, batch_labels, np.random.default_rng(1))
    b = augment_batch(images, batch_labels, np.random.default_rng(1))
    c = augment_batch(images, batch_labels, np.random.default_rng(2))
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[1], c[1])
    assert not np.array_equal(a[1][0], a[1][1])  # each sample its own transform


def test_intensity_changes_stay_standardised():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(32, 32)).astype(np.float32)
    out = adjust_intensity(image, rng)
    assert abs(out.mean()) < 1e-4 and abs(out.std() - 1) < 1e-3
    assert not np.allclose(out, (image - image.mean()) / image.std())


def test_acquisition_effects_are_off_by_default_and_draw_nothing():
    """The default augmentation makes exactly the draws it made before acquisition effects existed."""
    image = np.random.default_rng(3).normal(size=(32, 32)).astype(np.float32)
    rng, reference = np.random.default_rng(7), np.random.default_rng(7)
    adjust_intensity(image, rng)
    reference.uniform(size=3)  # gamma, contrast, brightness
    assert rng.bit_generator.state == reference.bit_generator.state


def test_acquisition_effects_on_real_slices_change_the_image_not_the_labels():
    image, labels = _square()
    image = image + 0.2
    plain = AugmentConfig()
    acquired = AugmentConfig(thick_slice_probability=1.0, slice_thickness_px=(3.0, 3.0), bias_std=0.3,
                             noise_std=0.05)
    out_plain, labels_plain = augment_pair(image, labels, np.random.default_rng(4), plain)
    out, out_labels = augment_pair(image, labels, np.random.default_rng(4), acquired)
    np.testing.assert_array_equal(out_labels, labels_plain)
    assert not np.allclose(out, out_plain)
    assert abs(out.mean()) < 1e-4 and abs(out.std() - 1) < 1e-3

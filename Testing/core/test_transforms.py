"""The random transforms shared by synthesis and augmentation: thick slices, bias field, noise."""

import numpy as np

from kneeseg.transforms import lattice_values, random_bias_field, spline_lattice, thick_slices, with_bias, with_noise


def test_thick_slices_average_along_one_axis_only():
    image = np.zeros((40, 40), np.float32)
    image[:, 20] = 1.0  # a thin line across the rows
    thick = thick_slices(image, axis=1, width_px=5.0, phase=0.5)
    assert thick.shape == image.shape
    assert thick[:, 20].max() < 0.5 and thick[:, 16:25].sum(axis=1).min() > 0.5  # spread over the columns
    np.testing.assert_allclose(thick, np.broadcast_to(thick[:1], thick.shape), atol=1e-6)  # same in every row
    np.testing.assert_allclose(thick_slices(np.ones((40, 40)), 0, 4.0, 0.2), 1.0)


def test_bias_field_is_smooth_positive_and_multiplicative():
    rng = np.random.default_rng(0)
    log_bias = random_bias_field(rng, (64, 48), 0.3)
    assert log_bias.shape == (64, 48) and log_bias.std() > 0.01
    assert np.abs(np.diff(log_bias, axis=0)).max() < 0.1  # smooth: a few control points over the image
    image = np.full((64, 48), 2.0, np.float32)
    np.testing.assert_allclose(with_bias(image, log_bias), 2.0 * np.exp(log_bias), rtol=1e-6)


def test_rician_noise_lifts_the_dark_background_and_gaussian_noise_does_not_go_negative():
    zeros = np.zeros((200, 200), np.float32)
    rician = with_noise(np.random.default_rng(1), zeros, 0.1, rician=True)
    assert abs(rician.mean() - 0.1 * np.sqrt(np.pi / 2)) < 0.005  # the Rayleigh mean of pure noise
    gaussian = with_noise(np.random.default_rng(1), zeros + 0.5, 0.1, rician=False)
    assert gaussian.min() >= 0.0 and abs(gaussian.mean() - 0.5) < 0.005


def test_lattice_values_interpolate_any_dimension():
    flat = spline_lattice(np.full((4, 4, 4), 3.0))
    np.testing.assert_allclose(lattice_values(flat, np.zeros((5, 3)), 10.0), 3.0, atol=1e-4)
    ramp = spline_lattice(np.tile(np.arange(4.0), (4, 1)))  # 2D: grows along the second axis
    values = lattice_values(ramp, np.array([[0.0, -1.0], [0.0, 1.0]]), 1.0)
    np.testing.assert_allclose(values, [0.0, 3.0], atol=1e-4)  # the lattice's ends

"""On-the-fly augmentation of 2D training batches (numpy/scipy, seeded).

Geometric transforms (flip, shift, rotation, shear, zoom) are composed into one affine per sample and
applied once, linear for the image and nearest-neighbour for the labels, so labels stay labels.
Intensity transforms act on a copy of the image rescaled to [0, 1], which is standardised again at
the end: the acquisition effects that synthesis paints onto synthetic slices (``transforms``: thick
slices, a bias field, Gaussian or Rician noise; off unless configured), then gamma, contrast and
brightness.
"""

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .transforms import random_bias_field, thick_slices, with_bias, with_noise


@dataclass(frozen=True)
class AugmentConfig:
    flip_probability: float = 0.5  # left-right in the image (anterior-posterior in sagittal slices)
    max_shift_fraction: float = 0.1
    max_rotation_deg: float = 15.0
    max_shear: float = 0.1
    zoom_range: tuple = (0.9, 1.1)
    brightness: float = 0.2  # added, in standard deviations
    contrast_range: tuple = (0.8, 1.25)
    gamma_range: tuple = (0.7, 1.5)
    # Acquisition effects on real slices, as synthesis makes them (0: off; no random draw is made then)
    thick_slice_probability: float = 0.0  # thick 2D slices along a random in-plane axis ...
    slice_thickness_px: tuple = (1.5, 4.0)  # ... this many pixels thick
    bias_std: float = 0.0  # largest standard deviation of the log of a smooth multiplicative bias field
    noise_std: float = 0.0  # largest noise standard deviation (fraction of the intensity range)
    rician_probability: float = 0.5  # magnitude (Rician) rather than Gaussian noise


def random_affine(rng, size, config: AugmentConfig):
    """A random 2x2 matrix and offset mapping output pixel (row, col) to input pixel."""
    angle = np.deg2rad(rng.uniform(-config.max_rotation_deg, config.max_rotation_deg))
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    shear = np.array([[1.0, rng.uniform(-config.max_shear, config.max_shear)], [0.0, 1.0]])
    zoom = np.diag([1.0 / rng.uniform(*config.zoom_range)] * 2)
    flip = np.diag([1.0, -1.0 if rng.random() < config.flip_probability else 1.0])
    matrix = rotation @ shear @ zoom @ flip
    centre = (np.array([size, size]) - 1) / 2.0
    shift = rng.uniform(-config.max_shift_fraction, config.max_shift_fraction, 2) * size
    offset = centre - matrix @ centre + shift
    return matrix, offset


def augment_pair(image, labels, rng, config: AugmentConfig = AugmentConfig()):
    """Augment one (rows, cols) image and its label map; returns new arrays."""
    image, matrix, offset = augment_image(image, rng, config)
    return image, ndimage.affine_transform(labels, matrix, offset, order=0, mode="constant", cval=0)


def augment_image(image, rng, config: AugmentConfig = AugmentConfig()):
    """Augment one (rows, cols) image; returns it with the affine (matrix, offset) that moved it."""
    matrix, offset = random_affine(rng, image.shape[0], config)
    fill = float(image.min())
    image = ndimage.affine_transform(image, matrix, offset, order=1, mode="constant", cval=fill)
    return adjust_intensity(image, rng, config), matrix, offset


def adjust_intensity(image, rng, config: AugmentConfig = AugmentConfig()):
    """Acquisition effects and a random gamma (on a 0-1 rescaled copy), contrast and brightness, then
    re-standardised."""
    lo, hi = float(image.min()), float(image.max())
    unit = acquisition_effects((image - lo) / max(hi - lo, 1e-6), rng, config)
    unit = unit ** rng.uniform(*config.gamma_range)
    out = unit * rng.uniform(*config.contrast_range) + rng.uniform(-config.brightness, config.brightness)
    return ((out - out.mean()) / max(float(out.std()), 1e-6)).astype(np.float32)


def acquisition_effects(unit, rng, config: AugmentConfig):
    """Thick slices, a bias field and noise on an image in [0, 1], each where ``config`` turns it on."""
    if config.thick_slice_probability > 0 and rng.random() < config.thick_slice_probability:
        axis, width = int(rng.integers(2)), rng.uniform(*config.slice_thickness_px)
        unit = thick_slices(unit, axis, width, rng.random())
    if config.bias_std > 0:
        unit = with_bias(unit, random_bias_field(rng, unit.shape, rng.uniform(0.0, config.bias_std)))
    if config.noise_std > 0:
        unit = with_noise(rng, unit, rng.uniform(0.0, config.noise_std), rng.random() < config.rician_probability)
    return unit


def augment_batch(images, labels, rng, config: AugmentConfig = AugmentConfig()):
    """Augment a batch (B, rows, cols, channels) / (B, rows, cols) sample by sample. The channels of a
    sample (a slice and its neighbours) get the same draws: one geometry, one intensity change."""
    out_images = np.empty_like(images)
    out_labels = np.empty_like(labels)
    for i in range(images.shape[0]):
        if images.shape[-1] == 1:
            out_images[i, ..., 0], out_labels[i] = augment_pair(images[i, ..., 0], labels[i], rng, config)
            continue
        seed = rng.integers(2 ** 63)  # every channel replays the same draws
        for c in range(images.shape[-1]):
            out_images[i, ..., c], matrix, offset = augment_image(images[i, ..., c], np.random.default_rng(seed),
                                                                  config)
        out_labels[i] = ndimage.affine_transform(labels[i], matrix, offset, order=0, mode="constant", cval=0)
    return out_images, out_labels

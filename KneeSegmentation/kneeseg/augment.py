"""On-the-fly augmentation of 2D training batches (numpy/scipy, seeded).

Geometric transforms (flip, shift, rotation, shear, zoom) are composed into one affine per sample and
applied once, linear for the image and nearest-neighbour for the labels, so labels stay labels.
Intensity transforms (brightness, contrast, gamma) act on the normalised image.
"""

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


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
    matrix, offset = random_affine(rng, image.shape[0], config)
    fill = float(image.min())
    image = ndimage.affine_transform(image, matrix, offset, order=1, mode="constant", cval=fill)
    labels = ndimage.affine_transform(labels, matrix, offset, order=0, mode="constant", cval=0)
    return adjust_intensity(image, rng, config), labels


def adjust_intensity(image, rng, config: AugmentConfig = AugmentConfig()):
    """Random gamma (on a 0-1 rescaled copy), contrast and brightness, then re-standardised."""
    lo, hi = float(image.min()), float(image.max())
    unit = (image - lo) / max(hi - lo, 1e-6)
    unit = unit ** rng.uniform(*config.gamma_range)
    out = unit * rng.uniform(*config.contrast_range) + rng.uniform(-config.brightness, config.brightness)
    return ((out - out.mean()) / max(float(out.std()), 1e-6)).astype(np.float32)


def augment_batch(images, labels, rng, config: AugmentConfig = AugmentConfig()):
    """Augment a batch (B, rows, cols, 1) / (B, rows, cols) sample by sample."""
    out_images = np.empty_like(images)
    out_labels = np.empty_like(labels)
    for i in range(images.shape[0]):
        out_images[i, ..., 0], out_labels[i] = augment_pair(images[i, ..., 0], labels[i], rng, config)
    return out_images, out_labels

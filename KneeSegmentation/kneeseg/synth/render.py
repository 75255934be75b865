"""Rendering: the image of a synthetic volume, painted onto its label map, step by step.

:func:`render` lists the steps in the order they happen, from the label map to the image a scanner
would write; the helpers below it do one step each. Every random number it needs is drawn in
``draws`` beforehand, except the noise (texture, thick-slice phase, image noise), which comes from the
generator it is given. Smooth quantities (the sampling map, fields) are computed on a coarse grid
(:class:`CoarseGrid`) and interpolated to full size.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.signal import fftconvolve

from ..geometry import frame_points
from ..transforms import LinearWeights, lattice_values, thick_slices, with_bias, with_noise
from .cache import CachedLabelMap
from .draws import Appearance, View
from .tissues import BONE_IDS, OUTSIDE_FIELD_OF_VIEW, TISSUES

MUSCLE_IDS = tuple(t.id for t in TISSUES if t.kind == "muscle")
SOFT_IDS = tuple(t.id for t in TISSUES if t.kind in ("background", "muscle", "fat", "other"))  # a decoy may cover
STREAK_WIDTH_PX = 0.6  # standard deviation of a streak's smoothing across the fibres

COARSE_STRIDE_PX = 8


def render(rng, view: View, label_map: CachedLabelMap, look: Appearance, grid: CoarseGrid, target: np.ndarray):
    """Images (~[0, 1], not normalised) and training labels (``target`` of each tissue id) of the slices
    of ``view``.

    For each slice:
      1. sub-slices: a thick slice along the slice axis is the mean of thin ones, the middle one gives
         the label;
      2. where the pixels of a sub-slice lie in the model frame (on the coarse grid);
      3. deformation: where in the label map they look (rotation, scaling, mirroring, smooth warp);
      4. the tissue at each pixel (nearest neighbour; bone shafts continued beyond the field of view);
      5. paint: tissue means and texture, background structures, septa, streaks along the muscle
         fibres, air, fat layer, a bone-shaped soft-tissue decoy, cortex (inside the bone label, or just
         outside it);
      6. the mean of the sub-slices;
      7. a thick 2D acquisition along an in-plane axis;
      8. blur;
      9. the bias field;
      10. noise, Gaussian or Rician.
    Then for the stack:
      11. labels: nothing outside a cropped field of view;
      12. intensities scaled to about [0, 1], the gamma curve, no signal outside the field of view.
    """
    images, targets, no_signal = [], [], []
    for offset_mm in view.slice_offsets_mm:
        sub_offsets = _sub_slice_offsets(look, offset_mm)  # 1
        image = np.zeros((grid.size, grid.size), np.float32)
        for n, sub_offset in enumerate(sub_offsets):
            q = grid.points(view.plane, view.pixel_mm, sub_offset)  # 2
            physical = _cache_mm(view, q)  # 3
            tissue = _lookup_tissue(label_map, _cache_index(label_map, physical, grid), view.extend_shafts)  # 4
            decoy = None if look.decoy is None else _lookup_tissue(
                label_map, _cache_index(label_map, physical - look.decoy.shift_mm, grid), view.extend_shafts)
            image += _paint(rng, tissue, q, physical, view, look, grid, decoy)  # 5
            if n == len(sub_offsets) // 2:
                centre_tissue, centre_q = tissue, q
        image = image / len(sub_offsets)  # 6
        if look.thick_axis in ("row", "column") and look.thickness_mm > 1.5 * view.pixel_mm:  # 7
            axis = 0 if look.thick_axis == "row" else 1
            image = thick_slices(image, axis, look.thickness_mm / view.pixel_mm, rng.random())
        if look.blur_sigma_px > 0.1:  # 8
            image = ndimage.gaussian_filter(image, look.blur_sigma_px)
        log_bias = lattice_values(look.bias_lattice, centre_q, view.half_extent_mm).astype(np.float32)  # 9
        image = with_bias(image, grid.to_full(log_bias))
        images.append(with_noise(rng, image, look.noise_std, look.rician))  # 10
        targets.append(target[centre_tissue])
        no_signal.append(centre_tissue == OUTSIDE_FIELD_OF_VIEW)
    crop = _crop_mask(look, grid.size)  # 11
    targets = np.stack(targets)
    targets[:, crop] = 0
    return _finish_intensities(np.stack(images), np.stack(no_signal) | crop, look), targets  # 12


class CoarseGrid:
    """Smooth quantities are computed on every 8th pixel and interpolated bilinearly to full size.

    The affine part of the sampling map is reproduced exactly; the deformation and the smooth fields
    vary over centimetres, far more slowly than the 8-pixel grid.
    """

    def __init__(self, size: int):
        self.size = size
        self.n = int(math.ceil((size - 1) / COARSE_STRIDE_PX)) + 1
        self.upsample = LinearWeights.between(np.arange(size) * (self.n - 1) / (size - 1), np.arange(self.n))

    def step_mm(self, pixel_mm: float) -> float:
        """The spacing of the coarse points of an image of ``pixel_mm`` pixels."""
        return (self.size - 1) * pixel_mm / (self.n - 1)

    def points(self, plane: str, pixel_mm: float, offset_mm: float) -> np.ndarray:
        """Model-frame points (n, n, 3), relative to the view centre, spanning the full image."""
        return frame_points(np.zeros(3), plane, self.n, self.step_mm(pixel_mm), [offset_mm])[0]

    def to_full(self, coarse: np.ndarray) -> np.ndarray:
        """(..., n, n) -> (..., size, size)."""
        return self.upsample.along(self.upsample.along(coarse, -2), -1)



def _cache_mm(view: View, q: np.ndarray) -> np.ndarray:
    """LPS position (mm) in the label map shown at model-frame points ``q`` (..., 3)."""
    displacement = np.stack([lattice_values(view.deformation[c], q, view.half_extent_mm) for c in range(3)], -1)
    return view.centre + (q + displacement) @ view.matrix.T


def _cache_index(label_map: CachedLabelMap, physical_mm: np.ndarray, grid: CoarseGrid) -> np.ndarray:
    """Continuous (z, y, x) cache indices of every pixel, (3, size, size), from coarse positions (n, n, 3)."""
    index_xyz = (physical_mm - label_map.origin) / label_map.spacing
    return grid.to_full(np.moveaxis(index_xyz[..., ::-1], -1, 0))


def _lookup_tissue(label_map: CachedLabelMap, index_zyx: np.ndarray, extend_shafts: bool) -> np.ndarray:
    """Nearest-neighbour tissue ids at continuous indices; 255 outside the cached volume."""
    labels = label_map.labels
    k, j, i = (np.rint(c).astype(np.intp) for c in index_zyx)
    if extend_shafts:
        k = np.clip(k, *label_map.fov_z_range)
    nz, ny, nx = labels.shape
    inside = (k >= 0) & (k < nz) & (j >= 0) & (j < ny) & (i >= 0) & (i < nx)
    flat = (np.clip(k, 0, nz - 1) * ny + np.clip(j, 0, ny - 1)) * nx + np.clip(i, 0, nx - 1)
    tissue = labels.ravel()[flat]
    tissue[~inside] = OUTSIDE_FIELD_OF_VIEW
    return tissue


def _skin_depth(outline: dict, physical_mm: np.ndarray) -> np.ndarray:
    """Approximate depth (mm) below the skin of a random leg outline; negative outside the leg."""
    x = physical_mm[..., 0] - outline["centre"][0]
    y = physical_mm[..., 1] - outline["centre"][1]
    rx = np.where(x < 0, *outline["x_radii"])
    ry = np.where(y < 0, *outline["y_radii"])
    angle = np.arctan2(y, x)
    wobble = 1.0 + sum(c * np.cos(h * angle) + s * np.sin(h * angle)
                       for h, (c, s) in zip((2, 3, 4), outline["wobble"]))
    radius = np.sqrt((x / rx) ** 2 + (y / ry) ** 2) / wobble
    return (1.0 - radius) * np.sqrt(rx * ry)


def _unit_texture(rng, size: int, sigma_px: float) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.standard_normal((size, size), dtype=np.float32), sigma_px)
    return noise / max(float(noise.std()), 1e-6)


def background_regions(look: Appearance, q: np.ndarray, half_extent_mm: float, grid: CoarseGrid) -> np.ndarray:
    """Index of the background structure at every pixel (the largest of the random fields), with the
    fields stretched superior-inferior (LPS z) by ``look.background_stretch``."""
    q = q * np.array([1.0, 1.0, 1.0 / look.background_stretch])
    fields = grid.to_full(np.stack([lattice_values(c, q, half_extent_mm)
                                    for c in look.background_lattices]).astype(np.float32))
    return np.argmax(fields, axis=0).astype(np.uint8)


def region_borders(regions: np.ndarray, width_px: int) -> np.ndarray:
    """Pixels with a pixel of another region within a ``width_px + 1`` square around them: a band about
    ``width_px`` wide along every border."""
    size = width_px + 1
    return ndimage.maximum_filter(regions, size=size) != ndimage.minimum_filter(regions, size=size)


def _cortex(tissue: np.ndarray, width_px: int) -> np.ndarray:
    """Bone pixels within ``width_px`` of a pixel of another tissue."""
    bone = np.where(np.isin(tissue, BONE_IDS), tissue, 0)
    footprint = np.ones((2 * width_px + 1,) * 2, bool)
    edge = ndimage.maximum_filter(bone, footprint=footprint) != ndimage.minimum_filter(bone, footprint=footprint)
    return edge & (bone > 0)


def _rim_outside(tissue: np.ndarray, width_px: int) -> np.ndarray:
    """Pixels of other tissues within ``width_px`` of a bone pixel (a band just outside the bone)."""
    bone = np.isin(tissue, BONE_IDS).view(np.uint8)
    near = ndimage.maximum_filter(bone, footprint=np.ones((2 * width_px + 1,) * 2, bool)) > 0
    return near & (bone == 0) & (tissue != OUTSIDE_FIELD_OF_VIEW)


def _paint(rng, tissue: np.ndarray, q: np.ndarray, physical_mm: np.ndarray, view: View,
                   look: Appearance, grid: CoarseGrid, decoy_tissue: np.ndarray | None = None) -> np.ndarray:
    """Noise-free image of one slice (values ~[0, 1]) from its tissue ids.

    ``q`` and ``physical_mm`` are the coarse-grid model-frame and label-map positions of the slice:
    every smooth field is evaluated there and interpolated to full size. ``decoy_tissue``: the tissue ids
    of the label map moved by the decoy's shift (``look.decoy``).
    """
    texture = _unit_texture(rng, grid.size, look.texture_sigma_px)
    image = look.means[tissue] + look.texture_amplitude[tissue] * texture
    unlabelled = tissue == 0
    streaks, under_skin = None, None  # under_skin: air and the subcutaneous fat layer, where there is an outline
    if unlabelled.any():
        regions = background_regions(look, q, view.half_extent_mm, grid)
        background = look.background_means[regions] + look.background_texture * texture
        if look.septum_mean >= 0:
            septa = region_borders(regions, max(1, int(round(look.septum_mm / view.pixel_mm))))
            background = np.where(septa, look.septum_mean + look.background_texture * texture, background)
        if look.striation_mean >= 0:
            streaks = _fibre_streaks(rng, physical_mm, view.pixel_mm, look, grid)
            background = np.where(streaks, _towards(background, look), background)
            muscle = np.isin(tissue, MUSCLE_IDS)
            image = np.where(streaks & muscle, _towards(image, look), image)
        if look.outline is not None:
            depth = grid.to_full(_skin_depth(look.outline, physical_mm).astype(np.float32))
            if look.fat_mean >= 0:
                background = np.where(depth < look.fat_layer_mm, look.fat_mean, background)
            background = np.where(depth >= 0, background, 0.0)
            under_skin = unlabelled & (depth < (look.fat_layer_mm if look.fat_mean >= 0 else 0.0))
        image = np.where(unlabelled, background, image)
    if decoy_tissue is not None:
        image = _paint_decoy(image, tissue, decoy_tissue, under_skin, streaks, texture, view, look)
    if look.cortex_mm > 0:
        width = max(1, int(round(look.cortex_mm / view.pixel_mm)))
        rim = _rim_outside(tissue, width) if look.rim_outside else _cortex(tissue, width)
        image = np.where(rim, look.cortex_mean, image)
    return image.astype(np.float32)


def _paint_decoy(image, tissue, decoy_tissue, under_skin, streaks, texture, view: View, look: Appearance) -> np.ndarray:
    """``image`` with the decoy (the shifted bone, where it covers soft tissue below the skin's fat layer) painted
    as smooth soft tissue, with the soft tissue's streaks where the slice has them, and outlined in fat along its
    own shape where drawn so (not where it is cut off by bone or skin). Draws no random numbers: a slice's noise
    is that of the same slice without the decoy."""
    decoy = look.decoy
    ground = np.isin(tissue, SOFT_IDS)
    if under_skin is not None:
        ground &= ~under_skin
    shape = decoy_tissue == decoy.bone_id
    inside = shape & ground
    if not inside.any():
        return image
    value = decoy.mean + look.background_texture * texture
    if streaks is not None:
        value = np.where(streaks, _towards(value, look), value)
    image = np.where(inside, value, image)
    if decoy.outline_mean >= 0:
        width = max(1, int(round(decoy.outline_mm / view.pixel_mm)))
        outline = region_borders(shape.view(np.uint8), width) & ground
        image = np.where(outline, decoy.outline_mean + look.background_texture * texture, image)
    return image


def limb_direction(physical_mm: np.ndarray, step_mm: float) -> tuple:
    """The limb's long axis (label-map LPS z) as it lies in a slice: its unit direction (row, column)
    and how much of it lies in the slice (1: in the slice, 0: across it), from the label-map positions
    (n, n, 3) of a grid of points ``step_mm`` apart in the slice."""
    step = np.array([np.mean(np.diff(physical_mm[..., 2], axis=0)), np.mean(np.diff(physical_mm[..., 2], axis=1))])
    length = float(np.hypot(*step))
    in_plane = min(1.0, length / step_mm)
    direction = step / length if length > 1e-9 else np.array([1.0, 0.0])
    return direction, in_plane


def _fibre_streaks(rng, physical_mm: np.ndarray, pixel_mm: float, look: Appearance, grid: CoarseGrid) -> np.ndarray:
    """Thin streaks along the muscle fibres: the highest ``striation_fraction`` of white noise smoothed
    ``striation_mm`` along the limb (as it lies in the slice) and under a pixel across it."""
    direction, in_plane = limb_direction(physical_mm, grid.step_mm(pixel_mm))
    turn = math.radians(look.striation_angle_deg)
    direction = np.array([[math.cos(turn), -math.sin(turn)], [math.sin(turn), math.cos(turn)]]) @ direction
    long_px = max(STREAK_WIDTH_PX, look.striation_mm / pixel_mm * in_plane)
    half = int(math.ceil(3 * long_px))
    r, c = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float32)
    along = r * direction[0] + c * direction[1]
    across = -r * direction[1] + c * direction[0]
    kernel = np.exp(-0.5 * ((along / long_px) ** 2 + (across / STREAK_WIDTH_PX) ** 2))
    field = fftconvolve(rng.standard_normal((grid.size, grid.size), dtype=np.float32), kernel, mode="same")
    return field > np.quantile(field, 1.0 - look.striation_fraction)


def _towards(image: np.ndarray, look: Appearance) -> np.ndarray:
    return image + look.striation_strength * (look.striation_mean - image)


def _sub_slice_offsets(look: Appearance, offset_mm: float) -> np.ndarray:
    """Offsets averaged into one slice: a thick slice along the slice axis is the mean of thin ones.
    The middle one (odd count) is the slice itself and gives the training label."""
    if look.thick_axis != "slice":
        return np.array([offset_mm])
    n = 3 if look.thickness_mm < 3.0 else 5
    return offset_mm + look.thickness_mm * ((np.arange(n) + 0.5) / n - 0.5)




def _finish_intensities(images: np.ndarray, no_signal: np.ndarray, look: Appearance) -> np.ndarray:
    """Scale to ~[0, 1], gamma curve, zero signal outside the field of view."""
    scale = max(float(np.percentile(images, 99.5)), 1e-6)
    images = np.clip(images / scale, 0.0, None) ** look.gamma
    images[no_signal] = 0.0
    return images


def _crop_mask(look: Appearance, size: int) -> np.ndarray:
    """True outside the field of view of a cropped acquisition."""
    outside = np.zeros((size, size), bool)
    if look.fov_crop is not None:
        r0, r1, c0, c1 = look.fov_crop
        outside[:] = True
        outside[r0:r1, c0:c1] = False
    return outside


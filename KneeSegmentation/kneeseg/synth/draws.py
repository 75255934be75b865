"""The random draws of one synthetic volume: what part of which knee is seen how (:class:`View`), and
how it looks (:class:`Appearance`). Each is drawn from its own random generator, always in the same
order, so that a setting changes only the draws it governs; rendering (``render``) draws only noise.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from ..transforms import spline_lattice
from .cache import CachedLabelMap
from .config import SynthesisConfig
from .tissues import TISSUE_IDS, TISSUES

# Relative signal of each tissue kind in common knee MRI contrasts (cortex is always dark).
_PRESETS = {
    #        bone  cartilage fibrous muscle fat  fluid vessel nerve other
    "T1":   (0.85, 0.45, 0.08, 0.35, 0.95, 0.20, 0.15, 0.50, 0.40),
    "PD":   (0.75, 0.60, 0.08, 0.40, 0.85, 0.65, 0.20, 0.55, 0.50),
    "PDFS": (0.15, 0.50, 0.05, 0.30, 0.10, 0.90, 0.30, 0.45, 0.40),
    "T2":   (0.55, 0.30, 0.04, 0.20, 0.60, 0.95, 0.20, 0.40, 0.40),
    "DESS": (0.12, 0.75, 0.05, 0.30, 0.12, 0.95, 0.60, 0.40, 0.40),
}
_PRESET_KINDS = ("bone", "cartilage", "fibrous", "muscle", "fat", "fluid", "vessel", "nerve", "other")
_BACKGROUND_KINDS = ("muscle", "fat", "fluid", "fibrous", "muscle", "fat")
# A fibula-centred view's slices lie this close to the fibula's centre (its shaft is 10-25 mm across):
# most of them cut it, in every plane.
FIBULA_SLAB_HALF_MM = 15.0
# A femoral marrow this dark or darker shows no contrast to a dark cortex (drawn in [0, 0.12]):
# ``SynthesisConfig.hidden_rim_probability``.
HIDDEN_RIM_MARROW_MAX = 0.2


@dataclass(frozen=True)
class View:
    """Where one stack of slices comes from.

    A model-frame point q (LPS mm, relative to the view centre) shows the label map at
    ``centre + matrix @ (q + deformation(q))``.
    """

    map_index: int
    plane: str
    pixel_mm: float
    centre: np.ndarray
    matrix: np.ndarray
    mirrored: bool
    deformation: np.ndarray  # (3, g, g, g) spline coefficients of the displacement (mm) on a cube of
    #                          half side half_extent_mm
    half_extent_mm: float
    slice_offsets_mm: np.ndarray
    extend_shafts: bool


def _rotation(angles_rad) -> np.ndarray:
    a, b, c = angles_rad
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rx @ ry @ rz


def draw_view(rng, cfg: SynthesisConfig, map_probabilities, planes, knee_centres, size, nominal_pixel_mm,
               n_slices, fibula_centres=None) -> View:
    """All geometric draws of one stack, always in the same order (toggling an option such as
    mirroring in the config changes nothing else; the lattice, whose size varies, comes last, and the
    choice of a fibula-centred view after it, drawn only where one is possible).

    ``fibula_centres``: per map, the centre (LPS mm) of its fibula, or None (no fibula)."""
    map_index = int(rng.choice(len(map_probabilities), p=map_probabilities))
    plane = planes[int(rng.integers(len(planes)))]
    lo, hi = np.log(cfg.window_scale)
    pixel_mm = nominal_pixel_mm * float(np.exp(rng.uniform(lo, hi)))
    shift = np.clip(rng.normal(0.0, 1.0, 3), -2.0, 2.0) * cfg.centre_shift_mm
    angles = np.deg2rad(rng.uniform(-1.0, 1.0, 3) * cfg.max_rotation_deg)
    scales = rng.uniform(*cfg.scale_range, 3)
    mirrored = bool(rng.random() < cfg.mirror_probability)
    deformation_std = rng.uniform(0.0, cfg.max_deformation_mm)
    offsets = np.sort(rng.uniform(-1.0, 1.0, n_slices)) * cfg.slab_half_mm
    extend_shafts = bool(rng.random() < cfg.extend_shafts_probability)
    matrix = _rotation(angles) @ np.diag(scales) @ np.diag([-1.0 if mirrored else 1.0, 1.0, 1.0])
    half_extent = max(size * pixel_mm / 2.0, cfg.slab_half_mm + max(cfg.slice_thickness_mm)) * 1.05
    g = max(4, int(math.ceil(2.0 * half_extent / cfg.deformation_spacing_mm)) + 1)
    deformation = np.stack([spline_lattice(c) for c in rng.normal(0.0, 1.0, (3, g, g, g)) * deformation_std])
    centre = knee_centres[map_index]
    fibula_centre = None if fibula_centres is None else fibula_centres[map_index]
    if cfg.fibula_view_probability > 0 and fibula_centre is not None and rng.random() < cfg.fibula_view_probability:
        centre = fibula_centre
        if cfg.slab_half_mm > FIBULA_SLAB_HALF_MM:
            offsets = offsets * (FIBULA_SLAB_HALF_MM / cfg.slab_half_mm)
    return View(map_index, plane, pixel_mm, centre + shift, matrix, mirrored, deformation,
                 half_extent, offsets, extend_shafts)


@dataclass(frozen=True)
class Appearance:
    means: np.ndarray  # (256,) mean intensity per tissue id; unlabelled and outside are 0 here
    texture_amplitude: np.ndarray  # (256,)
    texture_sigma_px: float
    background_means: np.ndarray  # (K,)
    background_lattices: np.ndarray  # (K, g, g, g) spline coefficients of random fields; the largest wins
    background_texture: float
    background_stretch: float  # >= 1: background structures are this much longer superior-inferior
    septum_mean: float  # < 0: no septa between background structures
    septum_mm: float
    fat_mean: float  # < 0: no subcutaneous fat layer
    fat_layer_mm: float
    cortex_mean: float
    cortex_mm: float  # 0: no cortical rim
    outline: dict | None  # body outline in cache mm, None: no air
    bias_lattice: np.ndarray  # (4, 4, 4) spline coefficients of the log bias
    thick_axis: str | None  # None, "slice", "column", "row"
    thickness_mm: float
    blur_sigma_px: float
    noise_std: float
    rician: bool
    gamma: float
    fov_crop: tuple | None  # (row0, row1, col0, col1) kept, or None
    rim_outside: bool = False  # the cortical rim lies outside the bone label, not inside
    striation_mean: float = -1.0  # < 0: no streaks in the soft tissue
    striation_mm: float = 0.0  # their length (smoothing along the limb, standard deviation)
    striation_fraction: float = 0.0  # the share of soft-tissue pixels they cover
    striation_strength: float = 0.0  # 1: a streak pixel takes striation_mean, 0.5: half way to it
    striation_angle_deg: float = 0.0  # the fibres' angle to the limb's axis (pennate muscle)
    decoy: Decoy | None = None  # a bone-shaped soft-tissue structure, or None


@dataclass(frozen=True)
class Decoy:
    """A bone's shape moved by ``shift_mm`` (label-map LPS) and painted as soft tissue of ``mean``, with an
    outline of ``outline_mean`` (< 0: none) ``outline_mm`` wide."""

    bone_id: int
    shift_mm: np.ndarray
    mean: float
    outline_mean: float
    outline_mm: float


def _kind_means(rng, cfg: SynthesisConfig) -> dict:
    if rng.random() < cfg.preset_probability:
        preset = _PRESETS[list(_PRESETS)[int(rng.integers(len(_PRESETS)))]]
        means = np.clip(np.array(preset) + rng.normal(0.0, cfg.intensity_jitter, len(preset)), 0.0, 1.0)
    else:
        means = rng.uniform(0.0, 1.0, len(_PRESET_KINDS))
    return dict(zip(_PRESET_KINDS, means.tolist()))


def _tissue_means(rng, cfg: SynthesisConfig, kind_means: dict) -> np.ndarray:
    means = np.zeros(256, np.float32)
    shared_bone = rng.random() < cfg.shared_bone_probability
    for t in TISSUES[1:]:
        if t.kind == "bone" and not shared_bone:
            means[t.id] = rng.uniform(0.0, 1.0)
        else:
            means[t.id] = np.clip(kind_means[t.kind] + rng.normal(0.0, cfg.intensity_jitter / 2), 0.0, 1.0)
    # Drawn last and only when enabled, so that with the option off every other draw stays as it was.
    if not shared_bone and cfg.fibula_like_tibia_probability > 0 and rng.random() < cfg.fibula_like_tibia_probability:
        fibula, tibia = TISSUE_IDS["fibula"], TISSUE_IDS["tibia"]
        means[fibula] = np.clip(means[tibia] + rng.normal(0.0, cfg.intensity_jitter / 2), 0.0, 1.0)
    return means


def _body_outline(rng, label_map: CachedLabelMap) -> dict:
    """A leg cross-section around the labelled tissue (x: left-right, y: anterior-posterior), with
    separate margins per side (more soft tissue behind the knee than in front of the patella)."""
    lo, hi = label_map.tissue_box_mm  # rows: lowest and highest (x, y, z) mm of the labelled tissue
    margins = {"right": rng.uniform(5, 35), "left": rng.uniform(5, 35),
               "anterior": rng.uniform(3, 20), "posterior": rng.uniform(10, 50)}
    centre = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2])
    half = np.array([(hi[0] - lo[0]) / 2, (hi[1] - lo[1]) / 2])
    return {
        "centre": centre,
        "x_radii": (half[0] + margins["right"], half[0] + margins["left"]),  # -x: right, +x: left
        "y_radii": (half[1] + margins["anterior"], half[1] + margins["posterior"]),  # -y: anterior
        "wobble": rng.normal(0.0, 0.04, (3, 2)),  # cos/sin amplitudes of angular harmonics 2..4
    }


def _draw_background(rng, cfg: SynthesisConfig, kind_means: dict, half_extent_mm: float):
    """Means and spline lattices of the random structures that fill unlabelled space in the body."""
    n = int(rng.integers(cfg.background_classes[0], cfg.background_classes[1] + 1))
    kinds = [_BACKGROUND_KINDS[i % len(_BACKGROUND_KINDS)] for i in rng.permutation(n)]
    means = np.clip([kind_means[k] + rng.normal(0.0, 0.08) for k in kinds], 0.0, 1.0).astype(np.float32)
    g = int(np.clip(round(2.0 * half_extent_mm / rng.uniform(*cfg.background_blob_mm)), 4, 24))
    return means, np.stack([spline_lattice(v) for v in rng.normal(0.0, 1.0, (n, g, g, g))])


def _draw_crop(rng, cfg: SynthesisConfig, size: int):
    if rng.random() >= cfg.fov_crop_probability:
        return None
    sides = (rng.uniform(*cfg.fov_crop_fraction, 2) * size).astype(int)
    start = (rng.uniform(0, 1, 2) * (size - sides)).astype(int)
    return start[0], start[0] + sides[0], start[1], start[1] + sides[1]


def draw_appearance(rng, cfg: SynthesisConfig, label_map: CachedLabelMap, view: View, size: int) -> Appearance:
    kind_means = _kind_means(rng, cfg)
    background_means, background_lattices = _draw_background(rng, cfg, kind_means, view.half_extent_mm)
    texture_amplitude = np.zeros(256, np.float32)
    texture_amplitude[: len(TISSUES)] = rng.uniform(*cfg.texture_std, len(TISSUES))
    thick = rng.random() < cfg.thick_slice_probability
    dark_cortex = rng.random() < cfg.dark_cortex_probability
    # Drawn only when enabled: with both probabilities 0 the random stream, hence every sample, is that
    # of the generator before these options existed (EVALUATION_CONFIG, older cards).
    stretch = 1.0
    if cfg.muscle_stretch_probability > 0 and rng.random() < cfg.muscle_stretch_probability:
        stretch = float(np.exp(rng.uniform(*np.log(cfg.muscle_stretch))))
    septum_mean, septum_mm = -1.0, 0.0
    if cfg.septum_probability > 0 and rng.random() < cfg.septum_probability:
        septum_mean = float(np.clip(kind_means[("fat", "fibrous")[int(rng.integers(2))]] + rng.normal(0.0, 0.05),
                                    0.0, 1.0))
        septum_mm = float(rng.uniform(*cfg.septum_mm))
    look = Appearance(
        means=_tissue_means(rng, cfg, kind_means),
        texture_amplitude=texture_amplitude,
        texture_sigma_px=rng.uniform(*cfg.texture_sigma_px),
        background_means=background_means,
        background_lattices=background_lattices,
        background_texture=rng.uniform(*cfg.texture_std) * 1.5,
        background_stretch=stretch,
        septum_mean=septum_mean,
        septum_mm=septum_mm,
        fat_mean=kind_means["fat"] if rng.random() < cfg.subcutaneous_fat_probability else -1.0,
        fat_layer_mm=rng.uniform(*cfg.fat_layer_mm),
        cortex_mean=rng.uniform(0.0, 0.12) if dark_cortex else rng.uniform(0.0, 1.0),
        cortex_mm=rng.uniform(*cfg.cortex_mm) if rng.random() < cfg.cortex_probability else 0.0,
        outline=_body_outline(rng, label_map) if rng.random() < cfg.air_probability else None,
        bias_lattice=spline_lattice(rng.normal(0.0, 1.0, (4, 4, 4)) * rng.uniform(*cfg.bias_std)),
        thick_axis=(["slice", "slice", "column", "row"][int(rng.integers(4))] if thick else None),
        thickness_mm=rng.uniform(*cfg.slice_thickness_mm),
        blur_sigma_px=rng.uniform(*cfg.blur_sigma_px),
        noise_std=rng.uniform(*cfg.noise_std),
        rician=bool(rng.random() < cfg.rician_probability),
        gamma=float(np.exp(rng.normal(0.0, cfg.gamma_log_std))),
        fov_crop=_draw_crop(rng, cfg, size),
    )
    if cfg.rim_outside_probability > 0:  # drawn last: every other draw is that of a generator without it
        look = dataclasses.replace(look, rim_outside=bool(rng.random() < cfg.rim_outside_probability))
    if cfg.striation_probability > 0 and rng.random() < cfg.striation_probability:  # likewise
        kind = "fat" if rng.random() < 0.7 else "fibrous"
        look = dataclasses.replace(
            look, striation_mean=float(np.clip(kind_means[kind] + rng.normal(0.0, 0.05), 0.0, 1.0)),
            striation_mm=float(rng.uniform(*cfg.striation_mm)),
            striation_fraction=float(rng.uniform(*cfg.striation_fraction)),
            striation_strength=float(rng.uniform(0.5, 1.0)),
            striation_angle_deg=float(rng.uniform(-1.0, 1.0) * cfg.striation_angle_deg))
    if cfg.marrow_like_fat_probability > 0 and rng.random() < cfg.marrow_like_fat_probability:  # likewise
        look = dataclasses.replace(look, means=_marrow_like_fat(rng, cfg, look.means, kind_means["fat"]))
    if cfg.decoy_probability > 0 and rng.random() < cfg.decoy_probability:  # likewise, after the bones' means
        look = dataclasses.replace(look, decoy=_draw_decoy(rng, cfg, look.means, kind_means["fat"]))
    if (cfg.hidden_rim_probability > 0 and look.means[TISSUE_IDS["femur"]] <= HIDDEN_RIM_MARROW_MAX
            and rng.random() < cfg.hidden_rim_probability):  # likewise, after the bones' final means
        look = dataclasses.replace(look, cortex_mm=0.0)
    return look


def _draw_decoy(rng, cfg: SynthesisConfig, means: np.ndarray, fat_mean: float) -> Decoy:
    bone = ("femur", "tibia")[int(rng.integers(2))]
    away = 1.0 if bone == "femur" else -1.0  # the femur's decoy moves up the thigh, the tibia's down the calf
    shift = np.array([rng.choice((-1.0, 1.0)) * rng.uniform(*cfg.decoy_shift_mm), rng.uniform(-20.0, 20.0),
                      away * rng.uniform(0.0, 30.0)])
    bone_mean = float(means[TISSUE_IDS[bone]])
    below, above = max(0.0, bone_mean - cfg.decoy_contrast), max(0.0, 1.0 - bone_mean - cfg.decoy_contrast)
    u = rng.uniform(0.0, below + above)  # uniform over [0, 1] less the band of +-decoy_contrast about the bone
    if below + above <= 0:  # no intensity that far from the bone's: the farthest one
        mean = 0.0 if bone_mean >= 0.5 else 1.0
    else:
        mean = u if u < below else bone_mean + cfg.decoy_contrast + (u - below)
    outlined = rng.random() < 0.5
    return Decoy(TISSUE_IDS[bone], shift, float(np.clip(mean, 0.0, 1.0)),
                 float(np.clip(fat_mean + rng.normal(0.0, 0.05), 0.0, 1.0)) if outlined else -1.0,
                 float(rng.uniform(*cfg.septum_mm)))


def _marrow_like_fat(rng, cfg: SynthesisConfig, means: np.ndarray, fat_mean: float) -> np.ndarray:
    """``means`` with every bone's set to the fat's intensity plus a small jitter of its own."""
    means = means.copy()
    for t in TISSUES:
        if t.kind == "bone":
            means[t.id] = np.clip(fat_mean + rng.normal(0.0, cfg.intensity_jitter / 2), 0.0, 1.0)
    return means


def draw_context_spacing(rng, cfg: SynthesisConfig, look: Appearance, min_slice_mm: float) -> float:
    """How far apart (mm) a slice's neighbours lie for a network that sees them; 0: no neighbours (the
    slice repeated). See ``SynthesisConfig``'s context settings."""
    if rng.random() < cfg.context_drop_probability:
        return 0.0
    if look.thick_axis == "slice":
        return max(min_slice_mm, look.thickness_mm * rng.uniform(*cfg.context_gap))
    if rng.random() < cfg.context_fine_probability:
        return min_slice_mm
    return max(min_slice_mm, rng.uniform(*cfg.context_spacing_mm))

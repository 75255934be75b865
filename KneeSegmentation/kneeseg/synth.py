"""Domain-randomised synthetic training data from real knee label maps (SynthSeg-style).

No real knee MRI with bone labels is available for training, so the network learns from images that
are *painted* onto real label maps: every structure gets a random intensity, texture, bias field,
noise, blur and slice thickness, so that the only thing that stays constant across samples is the
anatomy. A model trained on such images does not depend on one MRI contrast (T1, PD, T2, fat-suppressed,
DESS with dark bone marrow, low field), orientation or knee side.

Two stages:

``prepare_cache`` (SimpleITK, run once)
    Reads every label map, maps its label values onto one *tissue* table (``TISSUES``: the four bones,
    cartilages, menisci, the soft tissues of the SPL atlas), resamples it with nearest neighbour onto an
    isotropic grid with identity direction in ITK's LPS space, crops it to the bones plus a margin and
    saves one compressed ``.npz`` per label map and a ``manifest.json``. Loading needs numpy only.

``SliceSynthesizer`` (numpy/scipy only, runs on the training machine)
    Draws a random view of a random label map for each sample and renders its image. The slices follow
    ``geometry.frame_points`` (the model frame used at inference) and are normalised with
    ``preprocess.standardize`` over the whole synthetic stack, as a whole volume is at inference.

Cache layout: ``labels`` is a (z, y, x) uint8 array of tissue ids; ``spacing``, ``origin``,
``knee_centre_mm`` and ``tissue_box_mm`` are in (x, y, z) LPS millimetres. Tissue id 255 marks voxels
outside the field of view of the source scan (no signal, never bone).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from .geometry import PLANES, VoxelGrid, check_plane, frame_origin, frame_points, plane_direction
from .errors import InputError
from .io import write_json
from .labels import SEPARATE_BONES
from .preprocess.centre import knee_centre_or_bone_centroid
from .preprocess.intensity import standardize

CACHE_FORMAT = "kneeseg-labelmap-cache/1"
MANIFEST_NAME = "manifest.json"

# ---------------------------------------------------------------------------------------------------
# Tissue table
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tissue:
    """One structure of the cache. ``target`` is its value in the training label (0: background)."""

    id: int
    name: str
    kind: str
    target: int


_TISSUE_NAMES_AND_KINDS = (
    ("unlabelled", "background"),
    ("femur", "bone"), ("tibia", "bone"), ("fibula", "bone"), ("patella", "bone"),
    ("femoral_cartilage", "cartilage"), ("tibial_cartilage", "cartilage"), ("patellar_cartilage", "cartilage"),
    ("meniscus", "fibrous"),
    ("infrapatellar_fat", "fat"),
    ("vastus_lateralis_muscle", "muscle"), ("vastus_medialis_muscle", "muscle"),
    ("biceps_femoris_muscle", "muscle"), ("semimembranosus_muscle", "muscle"),
    ("semitendinosus_muscle", "muscle"), ("gracilis_muscle", "muscle"), ("sartorius_muscle", "muscle"),
    ("medial_head_gastrocnemius_muscle", "muscle"), ("lateral_head_gastrocnemius_muscle", "muscle"),
    ("popliteus_muscle", "muscle"), ("soleus_muscle", "muscle"), ("tibialis_anterior_muscle", "muscle"),
    ("extensor_digitorum_longus_muscle", "muscle"), ("peroneus_longus_muscle", "muscle"),
    ("anterior_cruciate_ligament", "fibrous"), ("posterior_cruciate_ligament", "fibrous"),
    ("fibular_collateral_ligament", "fibrous"), ("tibial_collateral_ligament", "fibrous"),
    ("patellar_ligament", "fibrous"),
    ("adductor_magnus_tendon", "fibrous"), ("biceps_femoris_tendon", "fibrous"), ("iliotibial_tract", "fibrous"),
    ("popliteus_tendon", "fibrous"), ("soleus_tendon", "fibrous"), ("semitendinosus_tendon", "fibrous"),
    ("gracilis_tendon", "fibrous"),
    ("peroneus_nerve", "nerve"), ("tibialis_nerve", "nerve"), ("muscular_branches_tibialis_nerve", "nerve"),
    ("medial_sural_cutaneous_nerve", "nerve"),
    ("popliteal_artery", "vessel"), ("popliteal_vein", "vessel"), ("superior_medial_genicular_artery", "vessel"),
    ("superior_lateral_genicular_artery", "vessel"), ("middle_genicular_artery", "vessel"),
    ("great_saphenous_vein", "vessel"), ("small_saphenous_vein", "vessel"),
    ("unnamed_structure", "other"),
)
_BONE_TARGETS = {bone.name.lower(): bone.value for bone in SEPARATE_BONES}

TISSUES = tuple(Tissue(i, name, kind, _BONE_TARGETS.get(name, 0))
                for i, (name, kind) in enumerate(_TISSUE_NAMES_AND_KINDS))
TISSUE_IDS = {t.name: t.id for t in TISSUES}
OUTSIDE_FIELD_OF_VIEW = 255
BONE_IDS = tuple(t.id for t in TISSUES if t.target)


def target_lookup() -> np.ndarray:
    """(256,) uint8 table: tissue id -> training label (bones 1-4, everything else 0)."""
    lut = np.zeros(256, np.uint8)
    for t in TISSUES:
        lut[t.id] = t.target
    return lut


# ---------------------------------------------------------------------------------------------------
# Label sources
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelSource:
    """A family of label-map files that share one label convention.

    ``label_values`` maps a file's label value to a tissue name of ``TISSUES``; values it does not list
    become ``unnamed_structure`` (kept, never bone). ``subject_pattern`` is a regular expression whose
    first group, taken from the file name without extension, names the subject: files of one subject
    (time points of one knee) must not be split between training and validation.
    """

    dataset: str
    pattern: str
    label_values: dict
    licence: str
    subject_prefix: str
    subject_pattern: str = r"^(.+)$"

    def subject(self, stem: str) -> str:
        match = re.match(self.subject_pattern, stem)
        return self.subject_prefix + (match.group(1) if match else stem)

    def lookup(self, max_value: int) -> np.ndarray:
        lut = np.full(max_value + 1, TISSUE_IDS["unnamed_structure"], np.uint8)
        lut[0] = TISSUE_IDS["unlabelled"]
        for value, name in self.label_values.items():
            if value <= max_value:
                lut[value] = TISSUE_IDS[name]
        return lut


_OAI_VALUES = {1: "femur", 2: "femoral_cartilage", 3: "tibia", 4: "tibial_cartilage", 5: "patella",
               6: "patellar_cartilage", 7: "femur", 8: "tibia", 9: "patella"}  # 7-9: bone lesions
_MSKT_VALUES = {1: "femoral_cartilage", 2: "tibial_cartilage", 3: "tibial_cartilage", 4: "patellar_cartilage",
                5: "femur", 6: "tibia", 7: "patella", 8: "fibula", 9: "meniscus", 10: "meniscus"}
_SPL_VALUES = {
    95: "femur", 96: "tibia", 97: "fibula", 98: "patella", 9: "infrapatellar_fat",
    12: "vastus_lateralis_muscle", 13: "vastus_medialis_muscle", 15: "biceps_femoris_muscle",
    16: "semimembranosus_muscle", 17: "semitendinosus_muscle", 18: "gracilis_muscle", 19: "sartorius_muscle",
    20: "medial_head_gastrocnemius_muscle", 21: "lateral_head_gastrocnemius_muscle", 22: "popliteus_muscle",
    23: "soleus_muscle", 24: "tibialis_anterior_muscle", 25: "extensor_digitorum_longus_muscle",
    26: "peroneus_longus_muscle", 31: "anterior_cruciate_ligament", 32: "posterior_cruciate_ligament",
    33: "fibular_collateral_ligament", 34: "tibial_collateral_ligament", 35: "patellar_ligament",
    41: "adductor_magnus_tendon", 42: "biceps_femoris_tendon", 43: "iliotibial_tract", 44: "popliteus_tendon",
    46: "soleus_tendon", 47: "semitendinosus_tendon", 48: "gracilis_tendon", 61: "peroneus_nerve",
    62: "tibialis_nerve", 63: "muscular_branches_tibialis_nerve", 64: "medial_sural_cutaneous_nerve",
    71: "popliteal_artery", 72: "popliteal_vein", 73: "superior_medial_genicular_artery",
    74: "superior_lateral_genicular_artery", 75: "middle_genicular_artery", 77: "great_saphenous_vein",
    78: "small_saphenous_vein", 81: "meniscus", 82: "meniscus", 83: "femoral_cartilage",
    84: "tibial_cartilage", 85: "tibial_cartilage", 86: "patellar_cartilage",
}
_OAI_LICENCE = ("Osteoarthritis Initiative manual segmentations (Woo et al., arXiv 2211.16696); no licence file: "
                "research use, cite the paper")

DEFAULT_SOURCES = (
    LabelSource("OAI_AKOA", "oai/OAI_AKOA/*.nii.gz", _OAI_VALUES, _OAI_LICENCE, "OAI-", r"^(\d+)_"),
    LabelSource("OAI_ZIB-UQ", "oai/OAI_ZIB-UQ/*.nii.gz", _OAI_VALUES, _OAI_LICENCE, "OAI-", r"^(\d+)"),
    LabelSource("mskt", "mskt/*.nrrd", _MSKT_VALUES, "MIT (pymskt, PyPI mskt 0.1.22)", "mskt-"),
    LabelSource("SPL", "spl_atlas/*.nrrd", _SPL_VALUES, "3D Slicer licence (SPL knee atlas)", "SPL-"),
)


# ---------------------------------------------------------------------------------------------------
# Cache preparation (SimpleITK)
# ---------------------------------------------------------------------------------------------------


def _file_stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _read_tissue_image(path: Path, source: LabelSource):
    """The label map with its values replaced by tissue ids (uint8, same grid)."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    values = sitk.GetArrayViewFromImage(image)
    if values.min() < 0:
        raise ValueError(f"{path}: negative label values")
    tissue = source.lookup(int(values.max()))[values]
    out = sitk.GetImageFromArray(tissue)
    out.CopyInformation(image)
    return out


def _index_box(mask: np.ndarray):
    """First and last index of True along each array axis: (lo, hi), each in array (z, y, x) order."""
    per_axis = [np.nonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))[0]
                for axis in range(mask.ndim)]
    return np.array([ax[0] for ax in per_axis]), np.array([ax[-1] for ax in per_axis])


def _physical_box(image, index_lo, index_hi) -> np.ndarray:
    """Axis-aligned (2, 3) LPS box around the voxel box [index_lo, index_hi] (x, y, z order, inclusive)."""
    corners = [image.TransformContinuousIndexToPhysicalPoint(
        [float(index_lo[a] - 0.5 if bit == 0 else index_hi[a] + 0.5) for a, bit in enumerate(bits)])
        for bits in np.ndindex(2, 2, 2)]
    corners = np.array(corners)
    return np.stack([corners.min(0), corners.max(0)])


def _crop_grid(image, spacing_mm: float, margin_mm: float):
    """Origin and size of the cache grid: the bones plus a margin, inside the source field of view.

    Voxel centres lie on multiples of ``spacing_mm`` so that all caches share one lattice.
    """
    import SimpleITK as sitk

    bone = np.isin(sitk.GetArrayViewFromImage(image), BONE_IDS)
    if not bone.any():
        raise ValueError("label map contains no bone")
    lo_zyx, hi_zyx = _index_box(bone)
    bone_box = _physical_box(image, lo_zyx[::-1], hi_zyx[::-1])
    fov_box = _physical_box(image, [0, 0, 0], [n - 1 for n in image.GetSize()])
    lo = np.maximum(bone_box[0] - margin_mm, fov_box[0])
    hi = np.minimum(bone_box[1] + margin_mm, fov_box[1])
    origin = np.ceil(lo / spacing_mm) * spacing_mm
    size = np.floor((hi - origin) / spacing_mm).astype(int) + 1
    return origin, size


def _resample_to_cache_grid(image, origin, size, spacing_mm):
    import SimpleITK as sitk

    out = sitk.Resample(image, [int(s) for s in size], sitk.Transform(), sitk.sitkNearestNeighbor,
                        [float(o) for o in origin], [float(spacing_mm)] * 3, np.eye(3).ravel().tolist(),
                        OUTSIDE_FIELD_OF_VIEW, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(out)


def _index_to_mm(index_zyx, spacing, origin) -> np.ndarray:
    return np.asarray(origin, float) + np.asarray(index_zyx, float)[..., ::-1] * spacing


def knee_centre_of(labels: np.ndarray, spacing: float, origin) -> np.ndarray:
    """LPS point (mm) where femur and tibia meet: the knee centre of paired training and inference
    (``preprocess.centre.knee_centre``). Falls back on the centre of all bone when femur or tibia is
    missing."""
    grid = VoxelGrid(np.asarray(origin, float), np.full(3, float(spacing)), np.eye(3))
    return np.array(knee_centre_or_bone_centroid(labels, grid, TISSUE_IDS["femur"], TISSUE_IDS["tibia"], BONE_IDS))


def _tissue_box_mm(labels, spacing, origin) -> np.ndarray:
    lo, hi = _index_box((labels > 0) & (labels != OUTSIDE_FIELD_OF_VIEW))
    return np.stack([_index_to_mm(lo, spacing, origin), _index_to_mm(hi, spacing, origin)])


def _field_of_view_z_range(labels, spacing_mm: float, inset_mm: float = 5.0) -> np.ndarray:
    """First and last z slice to repeat when the synthesizer continues the anatomy (bone shafts)
    beyond the source's field of view: ``inset_mm`` inside the slices that lie (almost) wholly in it,
    because manual labels often fade out over the last few slices of a scan."""
    valid = (labels != OUTSIDE_FIELD_OF_VIEW).mean(axis=(1, 2))
    full = np.nonzero(valid >= 0.9 * valid.max())[0]
    inset = min(int(round(inset_mm / spacing_mm)), (full[-1] - full[0]) // 2)
    return np.array([full[0] + inset, full[-1] - inset], np.int32)


def _bone_fingerprint(labels, spacing, origin) -> dict:
    """Volume (ml) and centre (mm) of femur and tibia, to spot one knee published twice."""
    fingerprint = {}
    for name in ("femur", "tibia"):
        index = np.argwhere(labels == TISSUE_IDS[name])
        fingerprint[name] = (len(index) * spacing ** 3 / 1000.0,
                             _index_to_mm(index.mean(0), spacing, origin) if len(index) else None)
    return fingerprint


def _same_knee(a: dict, b: dict, volume_tolerance=0.05, distance_mm=4.0) -> bool:
    for name in ("femur", "tibia"):
        (va, ca), (vb, cb) = a[name], b[name]
        if ca is None or cb is None or abs(va - vb) > volume_tolerance * max(va, vb):
            return False
        if np.linalg.norm(ca - cb) > distance_mm:
            return False
    return True


def _cache_name(source: LabelSource, stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{source.dataset}_{stem}") + ".npz"


def prepare_cache(source_dir, cache_dir, spacing_mm: float = 0.7, margin_mm: float = 40.0,
                  sources=DEFAULT_SOURCES, progress=None) -> dict:
    """Convert the label maps under ``source_dir`` into the synthesizer's cache; return the manifest.

    Every file matched by a ``LabelSource`` pattern (relative to ``source_dir``) becomes
    ``<cache_dir>/<dataset>_<name>.npz``. Two files whose femur and tibia agree in volume (5 %) and
    position (4 mm) are taken for one knee published twice and get one subject id (``same_knee_as``
    names the first). ``progress(done, total, name)`` is called after each file.
    """
    source_dir, cache_dir = Path(source_dir), Path(cache_dir)
    jobs = [(source, path) for source in sources for path in sorted(source_dir.glob(source.pattern))]
    if not jobs:
        raise FileNotFoundError(f"no label maps under {source_dir} match {[s.pattern for s in sources]}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    entries, fingerprints = [], []
    for done, (source, path) in enumerate(jobs, 1):
        entry, fingerprint = _cache_one(source, path, source_dir, cache_dir, spacing_mm, margin_mm)
        for earlier, earlier_print in zip(entries, fingerprints):
            if _same_knee(fingerprint, earlier_print):
                entry["subject"], entry["same_knee_as"] = earlier["subject"], earlier["file"]
                break
        entries.append(entry)
        fingerprints.append(fingerprint)
        if progress is not None:
            progress(done, len(jobs), path.name)
    manifest = {
        "format": CACHE_FORMAT,
        "spacing_mm": spacing_mm,
        "margin_mm": margin_mm,
        "tissues": [dataclasses.asdict(t) for t in TISSUES],
        "outside_field_of_view": OUTSIDE_FIELD_OF_VIEW,
        "files": entries,
    }
    write_json(cache_dir / MANIFEST_NAME, manifest, indent=1)
    return manifest


def _cache_one(source: LabelSource, path: Path, source_dir: Path, cache_dir: Path, spacing_mm, margin_mm):
    image = _read_tissue_image(path, source)
    origin, size = _crop_grid(image, spacing_mm, margin_mm)
    labels = _resample_to_cache_grid(image, origin, size, spacing_mm)
    stem = _file_stem(path)
    bones = [bone.name for bone in SEPARATE_BONES if (labels == TISSUE_IDS[bone.name.lower()]).any()]
    record = {
        "labels": labels,
        "spacing": np.float64(spacing_mm),
        "origin": origin,
        "knee_centre_mm": knee_centre_of(labels, spacing_mm, origin),
        "tissue_box_mm": _tissue_box_mm(labels, spacing_mm, origin),
        "fov_z_range": _field_of_view_z_range(labels, spacing_mm),
        "source": np.str_(path.relative_to(source_dir).as_posix()),
        "licence": np.str_(source.licence),
        "subject": np.str_(source.subject(stem)),
        "has_fibula": np.bool_("Fibula" in bones),
    }
    name = _cache_name(source, stem)
    np.savez_compressed(cache_dir / name, **record)
    entry = {
        "file": name,
        "source": str(record["source"]),
        "dataset": source.dataset,
        "licence": source.licence,
        "subject": str(record["subject"]),
        "bones": bones,
        "has_fibula": bool(record["has_fibula"]),
        "shape_zyx": list(labels.shape),
        "knee_centre_mm": [round(float(v), 2) for v in record["knee_centre_mm"]],
        "same_knee_as": None,
    }
    return entry, _bone_fingerprint(labels, spacing_mm, origin)


# ---------------------------------------------------------------------------------------------------
# Cache loading (numpy only)
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CachedLabelMap:
    """One cached label map; see the module docstring for axes and units."""

    labels: np.ndarray
    spacing: float
    origin: np.ndarray
    knee_centre_mm: np.ndarray
    tissue_box_mm: np.ndarray
    fov_z_range: np.ndarray
    source: str
    licence: str
    subject: str
    has_fibula: bool


def load_label_map(path) -> CachedLabelMap:
    with np.load(path, allow_pickle=False) as f:
        return CachedLabelMap(
            labels=np.ascontiguousarray(f["labels"]), spacing=float(f["spacing"]), origin=f["origin"].astype(float),
            knee_centre_mm=f["knee_centre_mm"].astype(float), tissue_box_mm=f["tissue_box_mm"].astype(float),
            fov_z_range=f["fov_z_range"].astype(int), source=str(f["source"]), licence=str(f["licence"]),
            subject=str(f["subject"]), has_fibula=bool(f["has_fibula"]))


def load_manifest(cache_dir) -> dict:
    path = Path(cache_dir) / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    if manifest.get("format") != CACHE_FORMAT:
        raise ValueError(f"{path}: not a {CACHE_FORMAT} manifest")
    return manifest


def cache_files(cache_dir_or_files) -> list:
    """The .npz paths of a cache folder (in manifest order), or the given list of paths."""
    if isinstance(cache_dir_or_files, (str, Path)):
        folder = Path(cache_dir_or_files)
        return [folder / entry["file"] for entry in load_manifest(folder)["files"]]
    return [Path(p) for p in cache_dir_or_files]


# ---------------------------------------------------------------------------------------------------
# Synthesis parameters
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthesisConfig:
    """Ranges of the random draws. ``(a, b)`` pairs are uniform ranges unless stated otherwise.

    Geometry (what part of which knee, seen how):
      fibula_weight: sampling weight of a label map that has a fibula, relative to 1 for the others
        (only two maps have one).
      window_scale: log-uniform factor on the nominal field of view (``window_mm``): pixel size and
        apparent knee size vary together.
      centre_shift_mm: standard deviation of the shift of the view centre from the knee centre (per
        axis, clipped at two standard deviations).
      slab_half_mm: the slices of one sample stack lie within +- this distance from the centre along
        the slice axis, spread like the slices of a whole volume.
      max_rotation_deg: rotation about each LPS axis (patient positioning, oblique acquisitions).
      scale_range: anisotropic scaling of the anatomy per axis.
      max_deformation_mm: standard deviation (itself drawn in [0, this]) of a smooth random
        displacement given on cubic-spline control points ``deformation_spacing_mm`` apart.
      mirror_probability: left/right mirroring (left and right knees).
      extend_shafts_probability: repeat the last slices of the label map above and below its field of
        view (bone shafts are nearly cylinders), so that bones do not always end at a scan edge.

    Appearance (how the knee looks):
      preset_probability: tissue means follow one of the MRI contrast presets (T1, PD, PD fat-sat, T2,
        DESS) with ``intensity_jitter``; otherwise every tissue kind gets a uniform random mean.
      shared_bone_probability: the four bones share one marrow intensity (plus a small jitter).
      texture_std: range of the amplitude of intra-structure texture (fraction of full scale).
      texture_sigma_px: range of the correlation length of that texture.
      background_classes: number of random smooth structures (muscle, fat, fluid stand-ins) that fill
        unlabelled space inside the body; background_blob_mm: their size.
      muscle_stretch_probability, muscle_stretch: those structures are stretched along the limb
        (superior-inferior) by this log-uniform factor, as thigh and calf muscles are: long shapes
        beside the knee are not always a bone shaft.
      septum_probability, septum_mm: thin lines of their own intensity (fat or fibrous tissue) between
        those structures, as the septa between muscles: an outlined region is not always a bone.
      air_probability: there is air (zero signal) outside a random body outline.
      subcutaneous_fat_probability, fat_layer_mm: a fat layer under the skin.
      cortex_probability, cortex_mm: a cortical rim of that width at bone edges, dark (as in every
        MRI contrast) with dark_cortex_probability, of random intensity otherwise.
      bias_std: standard deviation of the log of a smooth multiplicative bias field.
      thick_slice_probability, slice_thickness_mm: simulated thick 2D acquisition, along the slice
        axis (half of the cases: partial-volume average) or along one in-plane axis (averaged and
        re-interpolated, as a coronal view of a sagittal scan).
      blur_sigma_px: in-plane Gaussian blur.
      noise_std: Gaussian noise (fraction of full scale); rician_probability: magnitude (Rician) noise.
      gamma_log_std: standard deviation of log(gamma) of a final intensity gamma curve.
      fov_crop_probability, fov_crop_fraction: zero everything outside a random box (a smaller field
        of view), whose sides are that fraction of the image.
    """

    fibula_weight: float = 10.0
    window_scale: tuple = (0.8, 1.25)
    centre_shift_mm: float = 15.0
    slab_half_mm: float = 45.0
    max_rotation_deg: float = 20.0
    scale_range: tuple = (0.9, 1.1)
    max_deformation_mm: float = 3.0
    deformation_spacing_mm: float = 40.0
    mirror_probability: float = 0.5
    extend_shafts_probability: float = 0.5

    preset_probability: float = 0.5
    shared_bone_probability: float = 0.7
    intensity_jitter: float = 0.06
    texture_std: tuple = (0.0, 0.08)
    texture_sigma_px: tuple = (0.7, 2.0)
    background_classes: tuple = (2, 6)
    background_blob_mm: tuple = (10.0, 40.0)
    muscle_stretch_probability: float = 0.6
    muscle_stretch: tuple = (1.5, 5.0)
    septum_probability: float = 0.5
    septum_mm: tuple = (0.5, 2.0)
    air_probability: float = 0.8
    subcutaneous_fat_probability: float = 0.6
    fat_layer_mm: tuple = (3.0, 15.0)
    cortex_probability: float = 0.9
    cortex_mm: tuple = (0.7, 2.0)
    dark_cortex_probability: float = 0.85
    bias_std: tuple = (0.0, 0.35)
    thick_slice_probability: float = 0.5
    slice_thickness_mm: tuple = (1.5, 6.0)
    blur_sigma_px: tuple = (0.0, 1.0)
    noise_std: tuple = (0.0, 0.06)
    rician_probability: float = 0.5
    gamma_log_std: float = 0.3
    fov_crop_probability: float = 0.2
    fov_crop_fraction: tuple = (0.55, 1.0)


# The held-out synthetic benchmark (``evaluate_synthetic``) keeps the generator it was first reported
# with, so that its numbers stay comparable across models: no stretched structures, no septa.
EVALUATION_CONFIG = SynthesisConfig(muscle_stretch_probability=0.0, septum_probability=0.0)


def synthesis_config(overrides=None) -> SynthesisConfig:
    """The generator's settings: the defaults with ``overrides`` (a dict of field values, e.g. a card's
    ``training.data.synthesis``) applied. Unknown names and wrong types are refused by name."""
    if not overrides:
        return SynthesisConfig()
    if not isinstance(overrides, dict):
        raise InputError(f"synthesis settings must be a JSON object of field values, not {type(overrides).__name__}")
    defaults = SynthesisConfig()
    names = [f.name for f in dataclasses.fields(defaults)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise InputError(f"unknown synthesis setting(s) {', '.join(unknown)} (known: {', '.join(names)})")

    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    values = {}
    for name, value in overrides.items():
        default = getattr(defaults, name)
        if isinstance(default, tuple):
            ok = isinstance(value, (list, tuple)) and len(value) == len(default) and all(map(number, value))
        else:
            ok = number(value)
        if not ok:
            raise InputError(f"synthesis setting {name} must be like {default!r}, not {value!r}")
        values[name] = tuple(value) if isinstance(default, tuple) else value
    return dataclasses.replace(defaults, **values)


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
_COARSE_STRIDE_PX = 8


# ---------------------------------------------------------------------------------------------------
# Geometry of one sample stack
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _View:
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


def _draw_view(rng, cfg: SynthesisConfig, map_probabilities, planes, knee_centres, size, nominal_pixel_mm,
               n_slices) -> _View:
    """All geometric draws of one stack, always in the same order (toggling an option such as
    mirroring in the config changes nothing else; the lattice, whose size varies, comes last)."""
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
    deformation = np.stack([_spline_lattice(c) for c in rng.normal(0.0, 1.0, (3, g, g, g)) * deformation_std])
    return _View(map_index, plane, pixel_mm, knee_centres[map_index] + shift, matrix, mirrored, deformation,
                 half_extent, offsets, extend_shafts)


@dataclass(frozen=True)
class _LinearWeights:
    """Piecewise-linear interpolation from sorted ``in_positions`` to ``out_positions`` (constant
    beyond the ends). Applied by gathering, not by matrix products: tiny BLAS calls are slow and
    start threads, which hurts in data-loading workers."""

    left: np.ndarray
    right: np.ndarray
    t: np.ndarray

    @classmethod
    def between(cls, out_positions, in_positions):
        out_positions, in_positions = np.asarray(out_positions, float), np.asarray(in_positions, float)
        if len(in_positions) == 1:
            zeros = np.zeros(len(out_positions), np.intp)
            return cls(zeros, zeros, np.zeros(len(out_positions)))
        right = np.clip(np.searchsorted(in_positions, out_positions), 1, len(in_positions) - 1)
        left = right - 1
        t = np.clip((out_positions - in_positions[left]) / (in_positions[right] - in_positions[left]), 0.0, 1.0)
        return cls(left, right, t)

    def along(self, values: np.ndarray, axis: int) -> np.ndarray:
        shape = [1] * values.ndim
        shape[axis] = len(self.t)
        t = self.t.astype(values.dtype).reshape(shape)
        return np.take(values, self.left, axis) * (1 - t) + np.take(values, self.right, axis) * t


class _CoarseGrid:
    """Smooth quantities are computed on every 8th pixel and interpolated bilinearly to full size.

    The affine part of the sampling map is reproduced exactly; the deformation and the smooth fields
    vary over centimetres, far more slowly than the 8-pixel grid.
    """

    def __init__(self, size: int):
        self.size = size
        self.n = int(math.ceil((size - 1) / _COARSE_STRIDE_PX)) + 1
        self.upsample = _LinearWeights.between(np.arange(size) * (self.n - 1) / (size - 1), np.arange(self.n))

    def points(self, plane: str, pixel_mm: float, offset_mm: float) -> np.ndarray:
        """Model-frame points (n, n, 3), relative to the view centre, spanning the full image."""
        coarse_pixel = (self.size - 1) * pixel_mm / (self.n - 1)
        return frame_points(np.zeros(3), plane, self.n, coarse_pixel, [offset_mm])[0]

    def to_full(self, coarse: np.ndarray) -> np.ndarray:
        """(..., n, n) -> (..., size, size)."""
        return self.upsample.along(self.upsample.along(coarse, -2), -1)


def _spline_lattice(values: np.ndarray) -> np.ndarray:
    """Cubic B-spline coefficients of a random (g, g, g) lattice (computed once per stack)."""
    return ndimage.spline_filter(values, order=3, mode="nearest")


def _lattice_values(coefficients: np.ndarray, points_mm: np.ndarray, half_extent_mm: float) -> np.ndarray:
    """Cubic-spline interpolation of a lattice spanning the cube +-half_extent at points (..., 3)."""
    g = coefficients.shape[-1]
    coords = (points_mm.reshape(-1, 3).T + half_extent_mm) * ((g - 1) / (2.0 * half_extent_mm))
    values = ndimage.map_coordinates(coefficients, coords, order=3, mode="nearest", prefilter=False)
    return values.reshape(points_mm.shape[:-1])


def _cache_mm(view: _View, q: np.ndarray) -> np.ndarray:
    """LPS position (mm) in the label map shown at model-frame points ``q`` (..., 3)."""
    displacement = np.stack([_lattice_values(view.deformation[c], q, view.half_extent_mm) for c in range(3)], -1)
    return view.centre + (q + displacement) @ view.matrix.T


def _cache_index(label_map: CachedLabelMap, physical_mm: np.ndarray, grid: _CoarseGrid) -> np.ndarray:
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


# ---------------------------------------------------------------------------------------------------
# Appearance of one sample stack
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Appearance:
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
    return means


def _body_outline(rng, label_map: CachedLabelMap) -> dict:
    """A leg cross-section around the labelled tissue (x: left-right, y: anterior-posterior), with
    separate margins per side (more soft tissue behind the knee than in front of the patella)."""
    lo, hi = label_map.tissue_box_mm[:, 0], label_map.tissue_box_mm[:, 1]
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
    return means, np.stack([_spline_lattice(v) for v in rng.normal(0.0, 1.0, (n, g, g, g))])


def _draw_crop(rng, cfg: SynthesisConfig, size: int):
    if rng.random() >= cfg.fov_crop_probability:
        return None
    sides = (rng.uniform(*cfg.fov_crop_fraction, 2) * size).astype(int)
    start = (rng.uniform(0, 1, 2) * (size - sides)).astype(int)
    return start[0], start[0] + sides[0], start[1], start[1] + sides[1]


def _draw_appearance(rng, cfg: SynthesisConfig, label_map: CachedLabelMap, view: _View, size: int) -> _Appearance:
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
    return _Appearance(
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
        bias_lattice=_spline_lattice(rng.normal(0.0, 1.0, (4, 4, 4)) * rng.uniform(*cfg.bias_std)),
        thick_axis=(["slice", "slice", "column", "row"][int(rng.integers(4))] if thick else None),
        thickness_mm=rng.uniform(*cfg.slice_thickness_mm),
        blur_sigma_px=rng.uniform(*cfg.blur_sigma_px),
        noise_std=rng.uniform(*cfg.noise_std),
        rician=bool(rng.random() < cfg.rician_probability),
        gamma=float(np.exp(rng.normal(0.0, cfg.gamma_log_std))),
        fov_crop=_draw_crop(rng, cfg, size),
    )


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


def _background_regions(look: _Appearance, q: np.ndarray, half_extent_mm: float, grid: _CoarseGrid) -> np.ndarray:
    """Index of the background structure at every pixel (the largest of the random fields), with the
    fields stretched superior-inferior (LPS z) by ``look.background_stretch``."""
    q = q * np.array([1.0, 1.0, 1.0 / look.background_stretch])
    fields = grid.to_full(np.stack([_lattice_values(c, q, half_extent_mm)
                                    for c in look.background_lattices]).astype(np.float32))
    return np.argmax(fields, axis=0).astype(np.uint8)


def _region_borders(regions: np.ndarray, width_px: int) -> np.ndarray:
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


def _render_tissue(rng, tissue: np.ndarray, q: np.ndarray, physical_mm: np.ndarray, view: _View,
                   look: _Appearance, grid: _CoarseGrid) -> np.ndarray:
    """Noise-free image of one slice (values ~[0, 1]) from its tissue ids.

    ``q`` and ``physical_mm`` are the coarse-grid model-frame and label-map positions of the slice:
    every smooth field is evaluated there and interpolated to full size.
    """
    texture = _unit_texture(rng, grid.size, look.texture_sigma_px)
    image = look.means[tissue] + look.texture_amplitude[tissue] * texture
    unlabelled = tissue == 0
    if unlabelled.any():
        regions = _background_regions(look, q, view.half_extent_mm, grid)
        background = look.background_means[regions] + look.background_texture * texture
        if look.septum_mean >= 0:
            septa = _region_borders(regions, max(1, int(round(look.septum_mm / view.pixel_mm))))
            background = np.where(septa, look.septum_mean + look.background_texture * texture, background)
        if look.outline is not None:
            depth = grid.to_full(_skin_depth(look.outline, physical_mm).astype(np.float32))
            if look.fat_mean >= 0:
                background = np.where(depth < look.fat_layer_mm, look.fat_mean, background)
            background = np.where(depth >= 0, background, 0.0)
        image = np.where(unlabelled, background, image)
    if look.cortex_mm > 0:
        width = max(1, int(round(look.cortex_mm / view.pixel_mm)))
        image = np.where(_cortex(tissue, width), look.cortex_mean, image)
    return image.astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# Acquisition effects
# ---------------------------------------------------------------------------------------------------


def _sub_slice_offsets(look: _Appearance, offset_mm: float) -> np.ndarray:
    """Offsets averaged into one slice: a thick slice along the slice axis is the mean of thin ones.
    The middle one (odd count) is the slice itself and gives the training label."""
    if look.thick_axis != "slice":
        return np.array([offset_mm])
    n = 3 if look.thickness_mm < 3.0 else 5
    return offset_mm + look.thickness_mm * ((np.arange(n) + 0.5) / n - 0.5)


def _thick_in_plane(image: np.ndarray, axis: int, width_px: float, phase: float) -> np.ndarray:
    """A 2D acquisition whose thick slices stack along an in-plane axis, resampled to this plane:
    average over each acquired slice, then linear interpolation between slice centres."""
    n = image.shape[axis]
    smoothed = ndimage.uniform_filter1d(image, max(1, int(round(width_px))), axis=axis, mode="nearest")
    centres = np.arange(phase * width_px, n, width_px)
    picked = np.take(smoothed, np.clip(np.rint(centres).astype(int), 0, n - 1), axis=axis)
    return _LinearWeights.between(np.arange(n), centres).along(picked, axis)


def _acquire(rng, image: np.ndarray, look: _Appearance, bias: np.ndarray, pixel_mm: float) -> np.ndarray:
    """Thick in-plane slices, blur, bias field and (Rician or Gaussian) noise on one slice."""
    if look.thick_axis in ("row", "column") and look.thickness_mm > 1.5 * pixel_mm:
        axis = 0 if look.thick_axis == "row" else 1
        image = _thick_in_plane(image, axis, look.thickness_mm / pixel_mm, rng.random())
    if look.blur_sigma_px > 0.1:
        image = ndimage.gaussian_filter(image, look.blur_sigma_px)
    image = image * bias
    noise = rng.standard_normal((2,) + image.shape, dtype=np.float32) * look.noise_std
    if look.rician:
        return np.sqrt((image + noise[0]) ** 2 + noise[1] ** 2)
    return np.maximum(image + noise[0], 0.0)


def _finish_intensities(images: np.ndarray, no_signal: np.ndarray, look: _Appearance) -> np.ndarray:
    """Scale to ~[0, 1], gamma curve, zero signal outside the field of view."""
    scale = max(float(np.percentile(images, 99.5)), 1e-6)
    images = np.clip(images / scale, 0.0, None) ** look.gamma
    images[no_signal] = 0.0
    return images


def _crop_mask(look: _Appearance, size: int) -> np.ndarray:
    """True outside the field of view of a cropped acquisition."""
    outside = np.zeros((size, size), bool)
    if look.fov_crop is not None:
        r0, r1, c0, c1 = look.fov_crop
        outside[:] = True
        outside[r0:r1, c0:c1] = False
    return outside


# ---------------------------------------------------------------------------------------------------
# The synthesizer
# ---------------------------------------------------------------------------------------------------


class SliceSynthesizer:
    """Batches of synthetic model-frame slices with their bone labels.

    ``batch(index)`` returns ``x`` float32 (B, size, size, 1) and ``y`` uint8 (B, size, size) with the
    values of ``labels.SEPARATE_BONES`` (``merged``: 1 for any bone, as ``labels.MERGED_BONES``). Each
    batch holds ``ceil(B / n_slices_per_sample)`` stacks; the slices of one stack come from one
    synthetic volume (one label map, view and appearance) and are normalised together.

    A batch depends only on (seed, epoch, index), so it is the same in any thread or worker process
    and in any order. ``on_epoch_end`` moves to the next epoch's fresh batches, unless ``fixed`` (a
    validation set: the same batches every epoch). ``steps`` is the number of batches per epoch
    (``len``). Label maps are loaded on first use.

    ``window_mm`` is the nominal side of the field of view (pixel size ``window_mm / size``; 160 mm as
    ``preprocess.model_frame`` at inference), which ``config.window_scale`` varies.
    """

    def __init__(self, cache, planes=PLANES, size: int = 224, window_mm: float = 160.0,
                 n_slices_per_sample: int = 4, batch_size: int = 8, seed: int = 0,
                 config: SynthesisConfig = SynthesisConfig(), steps: int = 1000, fixed: bool = False,
                 merged: bool = False):
        self.files = cache_files(cache)
        if not self.files:
            raise ValueError("no cached label maps to synthesise from")
        self.planes = tuple(check_plane(p) for p in planes)
        self.size = int(size)
        self.window_mm = float(window_mm)
        self.n_slices_per_sample = int(n_slices_per_sample)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.config = config
        self.steps = int(steps)
        self.fixed = bool(fixed)
        self.epoch = 0
        self._knee_centres, has_fibula = zip(*(self._read_summary(f) for f in self.files))
        weights = np.where(has_fibula, config.fibula_weight, 1.0)
        self.map_probabilities = weights / weights.sum()
        self._grid = _CoarseGrid(self.size)
        self._target = np.minimum(target_lookup(), 1) if merged else target_lookup()
        self._maps = {}
        self._lock = threading.Lock()

    @staticmethod
    def _read_summary(path):
        with np.load(path, allow_pickle=False) as f:
            return f["knee_centre_mm"].astype(float), bool(f["has_fibula"])

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_maps"], state["_lock"] = {}, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.steps

    def on_epoch_end(self):
        if not self.fixed:
            self.epoch += 1

    def __getitem__(self, index: int):
        return self.batch(index)

    def label_map(self, map_index: int) -> CachedLabelMap:
        with self._lock:
            if map_index not in self._maps:
                self._maps[map_index] = load_label_map(self.files[map_index])
            return self._maps[map_index]

    def batch(self, index: int):
        x, y, _ = self.batch_with_info(index)
        return x, y

    def batch_with_info(self, index: int):
        """Like ``batch``, plus one dict per slice saying what it shows (source, plane, pixel size...)."""
        n_stacks = -(-self.batch_size // self.n_slices_per_sample)
        seeds = np.random.SeedSequence([self.seed, self.epoch, int(index)]).spawn(n_stacks)
        stacks = [self._stack(seed) for seed in seeds]
        x = np.concatenate([s[0] for s in stacks])[: self.batch_size, ..., None]
        y = np.concatenate([s[1] for s in stacks])[: self.batch_size]
        info = [i for s in stacks for i in s[2]][: self.batch_size]
        return x, y, info

    def _draw(self, seed_sequence, n_slices: int):
        """(view, label map, appearance, noise generator) of one synthetic volume."""
        geometry_rng, appearance_rng, noise_rng = (np.random.default_rng(s) for s in seed_sequence.spawn(3))
        view = _draw_view(geometry_rng, self.config, self.map_probabilities, self.planes, self._knee_centres,
                          self.size, self.window_mm / self.size, n_slices)
        label_map = self.label_map(view.map_index)
        return view, label_map, _draw_appearance(appearance_rng, self.config, label_map, view, self.size), noise_rng

    def _render(self, rng, view: _View, label_map: CachedLabelMap, look: _Appearance):
        """Images (~[0, 1], not normalised) and training labels of the slices of ``view``."""
        images, targets, no_signal = [], [], []
        for offset in view.slice_offsets_mm:
            image, tissue = self._slice(rng, view, label_map, look, offset)
            images.append(image)
            targets.append(self._target[tissue])
            no_signal.append(tissue == OUTSIDE_FIELD_OF_VIEW)
        crop = _crop_mask(look, self.size)
        targets = np.stack(targets)
        targets[:, crop] = 0
        return _finish_intensities(np.stack(images), np.stack(no_signal) | crop, look), targets

    def _stack(self, seed_sequence):
        view, label_map, look, noise_rng = self._draw(seed_sequence, self.n_slices_per_sample)
        images, targets = self._render(noise_rng, view, label_map, look)
        x = standardize(images)
        info = [{"source": label_map.source, "subject": label_map.subject, "plane": view.plane,
                 "pixel_mm": view.pixel_mm, "centre_mm": view.centre.tolist(), "slice_offset_mm": float(offset),
                 "mirrored": view.mirrored, "thick_axis": look.thick_axis,
                 "thickness_mm": look.thickness_mm if look.thick_axis else None}
                for offset in view.slice_offsets_mm]
        return x, targets, info

    def _slice(self, rng, view: _View, label_map: CachedLabelMap, look: _Appearance, offset_mm: float):
        """One slice before the stack-wide steps: its image and the tissue ids of its centre plane."""
        offsets = _sub_slice_offsets(look, offset_mm)
        image = np.zeros((self.size, self.size), np.float32)
        for n, sub_offset in enumerate(offsets):
            q = self._grid.points(view.plane, view.pixel_mm, sub_offset)
            physical = _cache_mm(view, q)
            tissue = _lookup_tissue(label_map, _cache_index(label_map, physical, self._grid), view.extend_shafts)
            image += _render_tissue(rng, tissue, q, physical, view, look, self._grid)
            if n == len(offsets) // 2:
                centre_tissue, centre_q = tissue, q
        log_bias = _lattice_values(look.bias_lattice, centre_q, view.half_extent_mm).astype(np.float32)
        bias = np.exp(self._grid.to_full(log_bias))
        return _acquire(rng, image / len(offsets), look, bias, view.pixel_mm), centre_tissue


def synthesize_volume(path, seed: int = 0, plane: str = None, slice_mm: float = None, size: int = 256,
                      window_mm: float = 160.0, extent_mm: float = 120.0,
                      config: SynthesisConfig = SynthesisConfig()):
    """A whole synthetic scan of one cached knee and its bone labels, as SimpleITK images.

    For judging a model end to end (its own preprocessing included) on held-out label maps: slices of
    one ``plane`` (random unless given), ``slice_mm`` apart and as thick (random in [1, 4] mm unless
    given), covering ``extent_mm`` along the slice axis; ``size`` x ``size`` pixels over ``window_mm``.
    Intensities are raw (0..1000, not standardised), as a scanner would write them.
    """
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    plane = check_plane(plane or PLANES[int(rng.integers(len(PLANES)))])
    slice_mm = float(slice_mm or rng.uniform(1.0, 4.0))
    n_slices = int(extent_mm / slice_mm) // 2 * 2 + 1
    volume_config = dataclasses.replace(config, window_scale=(1.0, 1.0), slab_half_mm=extent_mm / 2,
                                        thick_slice_probability=1.0, slice_thickness_mm=(slice_mm, slice_mm),
                                        fov_crop_probability=0.0)
    synthesizer = SliceSynthesizer([path], planes=(plane,), size=size, window_mm=window_mm, seed=seed,
                                   config=volume_config)
    view, label_map, look, noise_rng = synthesizer._draw(np.random.SeedSequence([seed, 1]), n_slices)
    view = dataclasses.replace(view, slice_offsets_mm=(np.arange(n_slices) - (n_slices - 1) / 2) * slice_mm)
    look = dataclasses.replace(look, thick_axis="slice")
    images, targets = synthesizer._render(noise_rng, view, label_map, look)
    pixel_mm = window_mm / size
    origin = frame_origin(view.centre, plane, size, pixel_mm, n_slices, slice_mm)
    out = []
    for array in ((images * 1000.0).astype(np.float32), targets):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((pixel_mm, pixel_mm, slice_mm))
        image.SetDirection(plane_direction(plane).ravel().tolist())
        image.SetOrigin(tuple(float(v) for v in origin))
        out.append(image)
    return tuple(out)


# ---------------------------------------------------------------------------------------------------
# Example sheet
# ---------------------------------------------------------------------------------------------------


def write_example_sheet(cache_dir, out_png, n: int = 16, seed: int = 0, size: int = 224, window_mm: float = 160.0,
                        planes=PLANES, config: SynthesisConfig = SynthesisConfig()) -> Path:
    """A PNG of ``n`` synthetic training images, each shown plain and with its bone label contours."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    synthesizer = SliceSynthesizer(cache_dir, planes, size, window_mm, n_slices_per_sample=1, batch_size=n,
                                   seed=seed, config=config)
    x, y, info = synthesizer.batch_with_info(0)
    colours = {bone.value: np.array(bone.color) / 255.0 for bone in SEPARATE_BONES}
    columns = 4
    rows = -(-n // columns)
    figure = Figure(figsize=(columns * 2 * 2.2, rows * 2.4 + 0.3), dpi=100)
    for k in range(n):
        plain = figure.add_subplot(rows, 2 * columns, 2 * k + 1)
        overlay = figure.add_subplot(rows, 2 * columns, 2 * k + 2)
        for ax in (plain, overlay):
            ax.imshow(x[k, ..., 0], cmap="gray", interpolation="nearest")
            ax.set_axis_off()
        for value, colour in colours.items():
            if (y[k] == value).any():
                overlay.contour(y[k] == value, levels=[0.5], colors=[colour], linewidths=1.0)
        plain.set_title(f"{info[k]['plane']} {info[k]['subject']}", fontsize=7, loc="left")
        overlay.set_title(f"{info[k]['pixel_mm']:.2f} mm/px" + (" mirrored" if info[k]["mirrored"] else ""),
                          fontsize=7, loc="left")
    figure.legend(handles=[Line2D([], [], color=colours[b.value], label=b.name) for b in SEPARATE_BONES],
                  loc="upper center", ncol=len(SEPARATE_BONES), fontsize=8, frameon=False)
    figure.subplots_adjust(left=0.01, right=0.99, top=1.0 - 0.45 / figure.get_figheight(), bottom=0.01,
                           wspace=0.03, hspace=0.12)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png)
    return out_png

"""The label-map cache: every label map read once (SimpleITK), translated to tissues, resampled onto
an isotropic grid and saved for the synthesizer, which loads it with numpy alone.

:func:`prepare_cache` reads every label map a :class:`~.tissues.LabelSource` matches, maps its values
onto the tissue table, resamples it with nearest neighbour onto an isotropic grid with identity
direction in ITK's LPS space, crops it to the bones plus a margin and saves one compressed ``.npz``
per label map and a ``manifest.json``. :func:`load_label_map` and :func:`cache_files` read it back.

Layout of a cached map (:class:`CachedLabelMap`): ``labels`` is a (z, y, x) uint8 array of tissue ids;
``spacing``, ``origin``, ``knee_centre_mm`` and ``tissue_box_mm`` are in (x, y, z) LPS millimetres.
Tissue id 255 marks voxels outside the field of view of the source scan (no signal, never bone).
"""

import dataclasses
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..datasets import volume_stem
from ..errors import InputError, listed
from ..geometry import VoxelGrid
from ..io import write_json
from ..itk_messages import plain_reason
from ..labels import SEPARATE_BONES
from ..preprocess.centre import knee_centre_or_bone_centroid
from ..progress import NO_PROGRESS
from .labelmaps import find_label_files, is_seg_nrrd, label_stem, seg_nrrd_tissues
from .tissues import BONE_IDS, DEFAULT_SOURCES, OUTSIDE_FIELD_OF_VIEW, TISSUE_IDS, TISSUES, LabelSource

CACHE_FORMAT = "kneeseg-labelmap-cache/1"
MAX_LABEL_VALUE = 65535
MANIFEST_NAME = "manifest.json"


def _read_tissue_image(path: Path, source: LabelSource, note=None):
    """(the label map with its values replaced by tissue ids (uint8, same grid), the label values it holds:
    a set for a source of any layout, whose mapping is checked against them; None otherwise)."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"not a readable label map ({plain_reason(exc)})", path) from None
    if image.GetDimension() != 3:
        raise InputError(f"a label map is a 3D volume; this one is {image.GetDimension()}D", path)
    if is_seg_nrrd(path) and "Segment0_Name" in image.GetMetaDataKeys():
        tissue, present = seg_nrrd_tissues(image, path, note), None
    else:
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError("holds several values per voxel (a vector image), not one label per voxel", path)
        if source.pattern is None and not source.label_values:
            raise InputError("a plain label map: say which value is which bone with --labels "
                             "femur=1,tibia=2,... (only .seg.nrrd files are read by segment name)", path)
        values = sitk.GetArrayViewFromImage(image)
        if values.min() < 0:
            raise InputError("negative label values", path)
        if not np.issubdtype(values.dtype, np.integer):
            if not np.array_equal(values, np.round(values)):
                raise InputError(f"holds fractional values ({values.dtype}): not a label map", path)
            values = values.astype(np.int64)
        if values.max() > MAX_LABEL_VALUE:
            raise InputError(f"holds label values up to {int(values.max())}; at most {MAX_LABEL_VALUE} are "
                             "supported", path)
        tissue = source.lookup(int(values.max()))[values]
        present = None
        if source.pattern is None:
            flat = values.ravel() if values.dtype.itemsize < 8 else values.ravel().astype(np.int64)
            present = set(np.flatnonzero(np.bincount(flat)).tolist())
    out = sitk.GetImageFromArray(tissue)
    out.CopyInformation(image)
    return out, present


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
        raise InputError("label map contains no bone")
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


def _jobs(source_dir: Path, sources, note) -> list:
    """(source, path, stem) of every file to cache: a preset's glob, or any layout's volume files (named by
    their path below ``source_dir``, so that sub-01/knee.nrrd and sub-02/knee.nrrd stay apart)."""
    jobs = []
    for source in sources:
        if source.pattern is not None:
            jobs += [(source, path, volume_stem(path)) for path in sorted(source_dir.glob(source.pattern))]
            continue
        files, skipped = find_label_files(source_dir)
        if skipped and note:
            note(f"{len(skipped)} file(s) under {source_dir} are not volumes and were skipped (e.g. "
                 f"{skipped[0].relative_to(source_dir).as_posix()})")
        for path in files:
            relative = path.relative_to(source_dir)
            jobs.append((source, path, (relative.parent / label_stem(path)).as_posix()))
    return jobs


STAGING_PREFIX = ".staging-"  # write_staged's hidden folder inside the folder it fills


def _check_cache_folder(cache_dir: Path, source_dir: Path):
    """A cache goes into a new or empty folder or replaces a cache (a manifest and .npz maps, nothing else), and
    never into its source or around it: the user's own files are not overwritten."""
    cache, source = cache_dir.resolve(), source_dir.resolve()
    if cache == source or source in cache.parents or cache in source.parents:
        raise InputError("the cache folder and the folder of label maps overlap; write the cache elsewhere", cache_dir)
    if not cache_dir.is_dir() or not any(cache_dir.iterdir()):
        return
    others = sorted(e.name for e in cache_dir.iterdir() if not e.name.startswith(STAGING_PREFIX)  # a killed run's
                    and not (e.is_file() and (e.name == MANIFEST_NAME or e.suffix == ".npz")))
    if others or not (cache_dir / MANIFEST_NAME).is_file():
        held = listed(others) if others else f"no {MANIFEST_NAME}"
        raise InputError(f"this folder holds files and is not a label-map cache ({held}): a cache goes into a new "
                         "or empty folder, or replaces a cache", cache_dir)
    load_manifest(cache_dir)  # a folder of .npz files with someone else's manifest is not ours to replace


def prepare_cache(source_dir, cache_dir, spacing_mm: float = 0.7, margin_mm: float = 40.0,
                  sources=DEFAULT_SOURCES, progress=None) -> dict:
    """Convert the label maps under ``source_dir`` into the synthesizer's cache; return the manifest.

    Every file a ``LabelSource`` matches (its glob relative to ``source_dir``, or for a source of any
    layout every volume file at any depth) becomes ``<cache_dir>/<dataset>_<name>.npz``. Two files
    whose femur and tibia agree in volume (5 %) and position (4 mm) are taken for one knee published
    twice and get one subject id (``same_knee_as`` names the first). ``progress`` hears of each file
    done; notes (a segment that is no bone, skipped files) go to its ``log`` where it has one.
    Nothing is written unless every file was cached (an ``InputError`` names the problem): the maps
    are staged in a hidden folder and moved into place with the manifest last.
    """
    source_dir, cache_dir = Path(source_dir), Path(cache_dir)
    progress = progress or NO_PROGRESS
    note = getattr(progress, "log", None)
    if not source_dir.is_dir():
        raise InputError("no such folder of label maps", source_dir)
    jobs = _jobs(source_dir, sources, note)
    if not jobs:
        raise InputError(f"no label maps here match {[s.pattern or 'any volume file' for s in sources]}",
                         source_dir)
    if cache_dir.exists() and not cache_dir.is_dir():
        raise InputError("the cache must be a folder, and this is a file", cache_dir)
    _check_cache_folder(cache_dir, source_dir)
    entries = write_staged(cache_dir, "the cache folder",
                           lambda staging: _cache_all(jobs, source_dir, staging, spacing_mm, margin_mm, progress, note))
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


def write_staged(folder: Path, what: str, fill) -> list:
    """Make ``folder`` (``what`` names it in the error), let ``fill(staging)`` write the cache's maps into
    a hidden staging folder inside it and return their manifest entries, then move the maps into place.
    If anything fails, a folder this call made is removed again, and a folder that was empty is emptied
    again; the staging folder always goes. The caller writes the manifest last. Returns the entries."""
    created = not folder.exists()
    was_empty = created or (folder.is_dir() and not any(folder.iterdir()))
    moved = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot make {what} ({exc.strerror or exc})", folder) from None
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=folder))
    try:
        entries = fill(staging)
        for entry in entries:
            os.replace(staging / entry["file"], folder / entry["file"])
            moved.append(folder / entry["file"])
    except BaseException:
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        elif was_empty:
            for path in moved:
                path.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return entries


def _cache_all(jobs, source_dir, staging, spacing_mm, margin_mm, progress, note) -> list:
    entries, fingerprints, names = [], [], set()
    present = {}  # id(source) -> (source, the label values found in its plain label maps)
    for done, (source, path, stem) in enumerate(jobs, 1):
        name = _cache_name(source, stem)
        while name in names:  # a/b.nrrd and a_b.nrrd: one more underscore
            name = name[:-4] + "_.npz"
        names.add(name)
        entry, fingerprint, values = _cache_one(source, path, stem, name, source_dir, staging, spacing_mm,
                                                margin_mm, note)
        if values is not None:
            present.setdefault(id(source), (source, set()))[1].update(values)
        for earlier, earlier_print in zip(entries, fingerprints):
            if _same_knee(fingerprint, earlier_print):
                entry["subject"], entry["same_knee_as"] = earlier["subject"], earlier["file"]
                break
        entries.append(entry)
        fingerprints.append(fingerprint)
        progress("cache", done / len(jobs), path.name)
    for source, values in present.values():
        absent = sorted(set(source.label_values) - values)
        if absent:
            named = ", ".join(f"{v} ({source.label_values[v]})" for v in absent)
            raise InputError(f"label value(s) {named} of the mapping are in none of the "
                             f"{sum(s is source for s, *_ in jobs)} label maps here", source_dir)
    return entries


def _cache_one(source: LabelSource, path: Path, stem: str, name: str, source_dir: Path, cache_dir: Path,
               spacing_mm, margin_mm, note=None):
    image, values = _read_tissue_image(path, source, note)
    try:
        origin, size = _crop_grid(image, spacing_mm, margin_mm)
    except InputError as exc:
        raise InputError(exc.reason + (f" (its values: {sorted(values)[:12]}; the mapping: "
                                       f"{_mapping_text(source)})" if values is not None else ""), path) from None
    labels = _resample_to_cache_grid(image, origin, size, spacing_mm)
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
    return entry, _bone_fingerprint(labels, spacing_mm, origin), values


def _mapping_text(source) -> str:
    return ",".join(f"{name}={value}" for value, name in sorted(source.label_values.items())) or "none"


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
    if not path.is_file():
        raise InputError(f"not a label-map cache: no {MANIFEST_NAME} (make one with 'kneeseg synth prepare')",
                         cache_dir)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the cache's manifest ({getattr(exc, 'strerror', None) or exc})", path) from None
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
        raise InputError(f"not a {CACHE_FORMAT} manifest", path)
    return manifest


def cache_files(cache_dir_or_files) -> list:
    """The .npz paths of a cache folder (in manifest order), or the given list of paths."""
    if isinstance(cache_dir_or_files, (str, Path)):
        folder = Path(cache_dir_or_files)
        return [folder / entry["file"] for entry in load_manifest(folder)["files"]]
    return [Path(p) for p in cache_dir_or_files]


def bone_volume_ranges(cache_dir) -> dict:
    """The bone volumes of every label map of the cache, as ``kneeseg/bone_volumes.json`` holds them
    (``kneeseg.quality`` judges a result's volumes by them): per bone the min and max (mL) over the
    maps that have it, how many do, and whether every map does."""
    bones = {t.id: t.name.capitalize() for t in TISSUES if t.target}
    volumes = {name: [] for name in bones.values()}
    files = cache_files(cache_dir)
    for path in files:
        cached = load_label_map(path)
        counts = np.bincount(cached.labels.ravel(), minlength=256)
        voxel_ml = float(cached.spacing) ** 3 / 1000.0
        for tissue_id, name in bones.items():
            if counts[tissue_id]:
                volumes[name].append(float(counts[tissue_id]) * voxel_ml)
    return {"source": f"{len(files)} label maps of the synthesis cache ({load_manifest(cache_dir)['format']})",
            "bones": {name: {"min": round(min(v), 1), "max": round(max(v), 1), "n_maps": len(v),
                             "in_every_map": len(v) == len(files)}
                      for name, v in volumes.items() if v}}

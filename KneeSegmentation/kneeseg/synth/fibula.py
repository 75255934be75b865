"""A fibula for label maps that have none, carried over from a fibula-bearing knee by registering tibiae.

Most real knee label maps (all of OAI's) label femur, tibia and patella only, so a network trained on
them rarely sees a fibula. :func:`transfer_fibula` registers a *donor* map's tibia onto the *target*
map's tibia (a similarity transform, then an affine one, on the two tibiae's signed distance maps,
judged only where the target's scan saw anything) and carries the donor's fibula across with the same
transform. The fibula lands only on the target's unlabelled voxels inside its field of view, never on
another structure. :func:`add_fibulas` does that for every map of a cache that lacks one, with the
donor whose tibia fits best, and writes a new cache; each new map records its donor and the fit.

How good the carried fibula is, is measured where the truth is known: on knees that have their own
fibula (``scripts/fibula_transfer_check.py``; docs/evaluation.md).
"""

import dataclasses
import shutil
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import write_json
from ..labels import SEPARATE_BONES
from .cache import MANIFEST_NAME, load_label_map, load_manifest, write_staged
from .tissues import OUTSIDE_FIELD_OF_VIEW, TISSUE_IDS

TIBIA, FIBULA = TISSUE_IDS["tibia"], TISSUE_IDS["fibula"]
UNLABELLED = TISSUE_IDS["unlabelled"]
DISTANCE_CLIP_MM = 12.0
PROXIMAL_TIBIA_MM = 70.0  # the part of the tibia that every knee scan shows, and that the fit is judged on
FIT_SPACING_MM = 1.4
MIN_TIBIA_DICE = 0.85  # below it the fit is refused: no fibula rather than a wrong one


@dataclasses.dataclass(frozen=True)
class Transfer:
    """The donor's fibula on the target grid (bool z, y, x) and how well the tibiae fitted."""

    fibula: np.ndarray
    tibia_dice: float
    fibula_voxels_dropped: float  # share of the carried fibula that fell on labelled tissue or outside the scan
    donor: str


def _image(array, label_map):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing((label_map.spacing,) * 3)
    image.SetOrigin(tuple(float(v) for v in label_map.origin))
    return image


def _proximal_tibia(labels, spacing) -> np.ndarray:
    """The tibia within ``PROXIMAL_TIBIA_MM`` of its top (z grows superior in the cache's LPS grid)."""
    tibia = labels == TIBIA
    z = np.nonzero(tibia.any(axis=(1, 2)))[0]
    if not len(z):
        raise InputError("has no tibia to register a fibula-bearing knee onto")
    lowest = max(0, z[-1] - int(round(PROXIMAL_TIBIA_MM / spacing)))
    tibia[:lowest] = False
    return tibia


def _distance_map(mask, label_map):
    import SimpleITK as sitk

    distance = sitk.SignedMaurerDistanceMap(_image(mask.astype(np.uint8), label_map), insideIsPositive=False,
                                            squaredDistance=False, useImageSpacing=True)
    return sitk.Clamp(distance, sitk.sitkFloat32, -DISTANCE_CLIP_MM, DISTANCE_CLIP_MM)


def _centroid_mm(mask, label_map) -> np.ndarray:
    return label_map.origin + np.argwhere(mask).mean(axis=0)[::-1] * label_map.spacing


def _register(fixed, moving, fixed_mask, initial):
    import SimpleITK as sitk

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMeanSquares()
    method.SetMetricFixedMask(fixed_mask)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.1, seed=1)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=150,
                                                    relaxationFactor=0.6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([2, 1])
    method.SetSmoothingSigmasPerLevel([2.0, 0.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(initial, inPlace=True)
    method.Execute(fixed, moving)
    return initial


def _coarse(label_map, step: int):
    """Every ``step``-th voxel: the fit needs no finer grid than 1.4 mm, and runs 8x faster on it."""
    return dataclasses.replace(label_map, labels=np.ascontiguousarray(label_map.labels[::step, ::step, ::step]),
                               spacing=label_map.spacing * step)


@dataclasses.dataclass(frozen=True)
class _FitTarget:
    """The target's side of every fit, computed once per target rather than once per donor."""

    grid: object  # the target on the fit's coarse grid (a CachedLabelMap)
    proximal_tibia: np.ndarray
    inside: np.ndarray  # at least DISTANCE_CLIP_MM inside what the scan saw
    mask: object  # where the metric is evaluated (SimpleITK image)
    distance: object  # the tibia's signed distance map (SimpleITK image)
    centre_mm: np.ndarray


def _fit_step(target) -> int:
    return max(1, int(round(FIT_SPACING_MM / target.spacing)))


def _fit_target(target) -> _FitTarget:
    import SimpleITK as sitk

    grid = _coarse(target, _fit_step(target))
    proximal = _proximal_tibia(grid.labels, grid.spacing)
    seen = grid.labels != OUTSIDE_FIELD_OF_VIEW
    # judge the fit near the proximal tibia only, and away from the edge of what the scan saw: there the
    # target's tibia is cut, the donor's goes on, and that is no misfit
    near = sitk.GetArrayFromImage(_distance_map(proximal, grid)) < DISTANCE_CLIP_MM
    inside = sitk.GetArrayFromImage(_distance_map(~seen, grid)) >= DISTANCE_CLIP_MM
    return _FitTarget(grid, proximal, inside, _image((near & inside).astype(np.uint8), grid),
                      _distance_map(grid.labels == TIBIA, grid), _centroid_mm(proximal, grid))


def _fit(target: _FitTarget, donor, step: int):
    """The transform that maps target points onto the donor (SimpleITK's direction), and the tibia Dice."""
    import SimpleITK as sitk

    donor = _coarse(donor, step)
    donor_tibia = donor.labels == TIBIA
    moving = _distance_map(donor_tibia, donor)
    shift = _centroid_mm(_proximal_tibia(donor.labels, donor.spacing), donor) - target.centre_mm
    similarity = sitk.Similarity3DTransform()
    similarity.SetCenter(tuple(float(v) for v in target.centre_mm))
    similarity.SetTranslation(tuple(float(v) for v in shift))
    similarity = _register(target.distance, moving, target.mask, similarity)
    affine = sitk.AffineTransform(similarity.GetMatrix(), similarity.GetTranslation(), similarity.GetCenter())
    transform = _register(target.distance, moving, target.mask, affine)
    carried_tibia = _carry(donor_tibia, donor, target.grid, transform)
    region = target.inside & target.proximal_tibia.any(axis=(1, 2))[:, None, None]
    truth, carried_tibia = target.proximal_tibia & region, carried_tibia & region
    dice = 2 * (carried_tibia & truth).sum() / max(1, carried_tibia.sum() + truth.sum())
    return transform, float(dice)


def _carry(mask, donor, target, transform) -> np.ndarray:
    import SimpleITK as sitk

    reference = _image(np.zeros(target.labels.shape, np.uint8), target)
    moved = sitk.Resample(_image(mask.astype(np.float32), donor), reference, transform, sitk.sitkLinear, 0.0)
    return sitk.GetArrayFromImage(moved) >= 0.5


def _fit_or_none(target: _FitTarget, donor, step: int):
    """``_fit``, or (None, 0.0) where ITK cannot register the two (too little of the tibia in view)."""
    try:
        return _fit(target, donor, step)
    except RuntimeError:
        return None, 0.0


def mirrored(label_map):
    """The same knee mirrored left-right: a right knee's donor for left knees and the other way round."""
    return dataclasses.replace(label_map, labels=np.ascontiguousarray(label_map.labels[:, :, ::-1]))


def transfer_fibula(target, donors: dict) -> Transfer:
    """The fibula of the donor (name -> :class:`~.cache.CachedLabelMap`) whose tibia fits ``target``'s best,
    carried onto ``target``. A donor of the other side fits worse, so the side takes care of itself."""
    for name, donor in donors.items():
        if not (donor.labels == FIBULA).any():
            raise InputError(f"the donor {name} has no fibula")
    _proximal_tibia(target.labels, target.spacing)  # refuses a map without tibia, by name
    prepared, step = _fit_target(target), _fit_step(target)
    fits = {name: _fit_or_none(prepared, donor, step) for name, donor in donors.items()}
    name = max(fits, key=lambda n: fits[n][1])
    transform, dice = fits[name]
    if transform is None:
        return Transfer(np.zeros(target.labels.shape, bool), 0.0, 1.0, name)
    carried = _carry(donors[name].labels == FIBULA, donors[name], target, transform)
    free = carried & (target.labels == UNLABELLED)
    dropped = 1.0 - free.sum() / max(1, carried.sum())
    return Transfer(free, dice, float(dropped), name)


def add_fibulas(cache_dir, out_dir, subjects=None, progress=None) -> dict:
    """A copy of the cache in which every map of ``subjects`` (default: all) that lacks a fibula gets one
    from the best-fitting donor among those maps of ``subjects`` that have their own (each also mirrored,
    for the other side). Maps of other subjects, held-out ones, are copied unchanged: a donor never comes
    from them and they never get a fibula. Returns the new manifest; each changed entry says where its
    fibula came from (``fibula_from``). Nothing is written unless every map is done (staged, manifest last).
    """
    from ..progress import NO_PROGRESS

    progress = progress or NO_PROGRESS
    cache_dir, out_dir = Path(cache_dir), Path(out_dir)
    manifest = load_manifest(cache_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError("the new cache goes into a new or empty folder; this one holds files", out_dir)
    chosen = [e for e in manifest["files"] if subjects is None or e["subject"] in subjects]
    donors = {}
    for entry in (e for e in chosen if e["has_fibula"]):
        donor = load_label_map(cache_dir / entry["file"])
        donors[entry["file"]], donors[entry["file"] + " mirrored"] = donor, mirrored(donor)
    if not donors:
        raise InputError("none of the chosen label maps has a fibula to carry over", cache_dir)
    carried_onto = {e["file"] for e in chosen if not e["has_fibula"]}

    def fill(staging):
        entries = []
        for done, entry in enumerate(manifest["files"], 1):
            if entry["file"] in carried_onto:
                entry = _with_fibula(cache_dir / entry["file"], staging / entry["file"], entry, donors)
            else:
                shutil.copyfile(cache_dir / entry["file"], staging / entry["file"])
            entries.append(entry)
            progress("fibula", done / len(manifest["files"]), entry["file"])
        return entries

    entries = write_staged(out_dir, "the folder for the new cache", fill)
    new_manifest = {**manifest, "files": entries,
                    "fibula_carried_over": {"from": str(cache_dir.name), "donors": sorted(donors),
                                            "min_tibia_dice": MIN_TIBIA_DICE}}
    write_json(out_dir / MANIFEST_NAME, new_manifest, indent=1)
    return new_manifest


def _with_fibula(source: Path, destination: Path, entry: dict, donors: dict) -> dict:
    target = load_label_map(source)
    transfer = transfer_fibula(target, donors)
    record = {"donor": transfer.donor, "tibia_dice": round(transfer.tibia_dice, 3),
              "fibula_ml": round(float(transfer.fibula.sum()) * target.spacing ** 3 / 1000.0, 2)}
    if transfer.tibia_dice < MIN_TIBIA_DICE or not transfer.fibula.any():
        shutil.copyfile(source, destination)
        return {**entry, "fibula_from": {**record, "refused": "the tibiae did not fit"}}
    with np.load(source, allow_pickle=False) as f:
        fields = {key: f[key] for key in f.files}
    labels = fields["labels"].copy()
    labels[transfer.fibula] = FIBULA
    np.savez_compressed(destination, **{**fields, "labels": labels, "has_fibula": np.bool_(True)})
    bones = [b.name for b in SEPARATE_BONES if b.name in entry["bones"] + ["Fibula"]]
    return {**entry, "has_fibula": True, "bones": bones, "fibula_from": record}

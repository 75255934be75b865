"""Training data sources. Each yields batches ``(x float32 (B, rows, cols, channels), y uint8 (B, rows, cols))``
(one channel, or a slice and its neighbours for a 2.5D network).

* :class:`PairedSlices`: the user's own image/label volumes (a folder or a CSV), resampled onto the
  same model frames inference uses, kept in memory, augmented on the fly.
* ``synth.SliceSynthesizer``: images synthesised from real label maps (domain randomisation).

Both are split by subject (never by slice), so no subject is in two splits.
"""

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .augment import AugmentConfig, augment_batch
from .errors import InputError
from .io import read_volume, same_geometry
from .preprocess.centre import knee_centre_from_labels
from .preprocess.frame import context_index, model_frame, position_channels, resample_to_frame, slice_positions_mm
from .preprocess.intensity import population_statistics, standardize
from .specs import FrameSpec

LABEL_VALUES = (0, 1, 2, 3, 4)
IMAGE_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha", ".mhd")


@dataclass(frozen=True)
class Pair:
    image: Path
    label: Path
    subject: str


def volume_stem(path: Path) -> str:
    """A volume file's name without its (possibly double) image suffix: case1.nii.gz -> case1."""
    name = path.name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def find_pairs(source) -> list:
    """Image/label pairs from ``images/`` + ``labels/`` subfolders (same file stems) or a CSV.

    The CSV has columns ``image,label`` and optionally ``subject`` (relative paths are relative to
    the CSV). Without a subject column each pair is its own subject.
    """
    source = Path(source)
    if not source.exists():
        raise InputError("training data not found", source)
    if source.is_file():
        return _pairs_from_csv(source)
    images, labels = source / "images", source / "labels"
    if not images.is_dir() or not labels.is_dir():
        raise InputError("a training folder needs 'images/' and 'labels/' subfolders (or pass a CSV)", source)
    label_by_stem = {volume_stem(p): p for p in labels.iterdir() if p.is_file()}
    pairs = []
    for image in sorted(p for p in images.iterdir() if p.is_file()):
        stem = volume_stem(image)
        if stem not in label_by_stem:
            raise InputError(f"no label map for {image.name} in labels/", source)
        pairs.append(Pair(image, label_by_stem[stem], stem))
    if not pairs:
        raise InputError("no images found in images/", source)
    return pairs


def _pairs_from_csv(path: Path) -> list:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"image", "label"} <= set(rows[0]):
        raise InputError("the CSV needs a header with columns image,label[,subject]", path)
    base = path.parent
    return [Pair(base / r["image"], base / r["label"], r.get("subject") or volume_stem(Path(r["image"]))) for r in rows]


def split_by_subject(subjects, fractions=(0.7, 0.15, 0.15), seed=0):
    """Split distinct subject ids into (train, validation, test) lists, deterministically.

    Every split gets at least one subject when there are at least three.
    """
    unique = sorted(set(subjects))
    rng = np.random.default_rng(seed)
    rng.shuffle(unique)
    n = len(unique)
    if n < 3:
        raise InputError(f"at least 3 subjects are needed to split into train/validation/test, got {n}")
    n_val = max(1, int(round(fractions[1] * n)))
    n_test = max(1, int(round(fractions[2] * n)))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise InputError(f"{n} subjects are too few for the split {fractions}")
    return unique[:n_train], unique[n_train:n_train + n_val], unique[n_train + n_val:]


SPLIT_PARTS = ("train", "validation", "test")


def read_split(path) -> dict:
    """A fixed split from a JSON file: ``{"train": [...], "validation": [...], "test": [...]}`` of subject
    ids (an optional ``"note"`` is text for people). Lists must be disjoint; train and validation not empty."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise InputError(f"cannot read the split file ({exc.strerror})", path) from None
    except ValueError as exc:
        raise InputError(f"the split file is not JSON ({exc})", path) from None
    if not isinstance(data, dict) or set(data) - {*SPLIT_PARTS, "note"} or not set(SPLIT_PARTS) <= set(data):
        raise InputError("a split file is a JSON object with the lists train, validation and test "
                         "(and an optional note)", path)
    for part in SPLIT_PARTS:
        if not isinstance(data[part], list) or not all(isinstance(s, str) for s in data[part]):
            raise InputError(f"the split's {part} must be a list of subject ids (strings)", path)
    for i, a in enumerate(SPLIT_PARTS):
        for b in SPLIT_PARTS[i + 1:]:
            both = sorted(set(data[a]) & set(data[b]))
            if both:
                raise InputError(f"subject(s) {', '.join(both)} are in both {a} and {b} of the split", path)
    return {part: list(data[part]) for part in SPLIT_PARTS}


def fixed_split(subjects, split: dict, path=None):
    """(train, validation, test) of ``subjects`` as a split file gives them. A subject of the data the file
    does not name is refused (it would otherwise land in some part unnoticed); a named subject the data
    lacks is left out."""
    present = set(subjects)
    unnamed = sorted(present - {s for part in SPLIT_PARTS for s in split[part]})
    if unnamed:
        raise InputError(f"the split file names no part for subject(s) {', '.join(unnamed)}", path)
    parts = tuple(sorted(present & set(split[part])) for part in SPLIT_PARTS)
    for part, ids in zip(SPLIT_PARTS[:2], parts):
        if not ids:
            raise InputError(f"none of the split's {part} subjects is in the training data", path)
    return parts


def load_pair(pair: Pair):
    """Read one pair and check that image and label share their geometry."""
    import SimpleITK as sitk

    image = read_volume(pair.image)
    label = read_volume(pair.label, validate=False)
    if label.GetDimension() != 3:
        raise InputError(f"label map is {label.GetDimension()}D; a 3D label map is needed", pair.label)
    if not same_geometry(image, label):
        raise InputError(
            f"image and label geometry differ (image {image.GetSize()} spacing {_fmt(image.GetSpacing())} origin "
            f"{_fmt(image.GetOrigin())}, label {label.GetSize()} spacing {_fmt(label.GetSpacing())} origin "
            f"{_fmt(label.GetOrigin())})", pair.label)
    values = np.unique(sitk.GetArrayViewFromImage(label))
    unexpected = [int(v) if float(v).is_integer() else v for v in values.tolist() if v not in LABEL_VALUES]
    if unexpected:
        raise InputError(f"label map holds values {unexpected[:8]} besides 0 background, 1 femur, 2 tibia, 3 fibula, "
                         "4 patella; relabel it first", pair.label)
    return image, sitk.Cast(label, sitk.sitkUInt8)


def _fmt(values):
    return "(" + ", ".join(f"{v:.3g}" for v in values) + ")"


class PairedSlices:
    """Model-frame slices of image/label volumes, held in memory (float16 images), augmented per batch.

    Slices showing bone are drawn with probability ``bone_fraction`` (the rest from all slices), so
    the many empty slices at the edges of a volume do not dominate the batches. ``context_slices``:
    each slice comes with that many neighbours of its own frame on each side as channels, as
    inference gives them (``preprocess.frame.with_context``). ``slice_position``: and with their
    distance from the knee centre of the labels (``preprocess.frame.position_channels``).
    """

    def __init__(self, pairs, frame: FrameSpec = FrameSpec(), batch_size=8, seed=0, augment=True, steps=None,
                 merged=False, augment_config=AugmentConfig(), bone_fraction=0.8, population=None, context_slices=0,
                 slice_position=False):
        """Slices of every plane of ``frame``, cut as inference cuts them (window, pixels, slice spacing).
        ``population``: None for per-volume standardisation, "compute" to standardise with the mean
        and standard deviation of these volumes (then in ``self.population``), or a (mean, std) pair
        (e.g. the training set's, for the validation set)."""
        import SimpleITK as sitk

        self.batch_size, self.seed, self.augment = batch_size, seed, augment
        self.augment_config = augment_config
        raw, labels, positions = [], [], []
        for pair in pairs:
            image, label = load_pair(pair)
            centre = knee_centre_from_labels(label)
            for plane in frame.planes:
                grid = model_frame(image, plane, centre, frame)
                raw.append(sitk.GetArrayFromImage(resample_to_frame(image, grid)))
                lab = sitk.GetArrayFromImage(resample_to_frame(label, grid, "nearest"))
                labels.append((lab > 0).astype(np.uint8) if merged else lab)
                positions.append(slice_positions_mm(grid, centre))
        clip = frame.normalisation.clip_percentiles
        self.population = population_statistics(raw, clip) if population == "compute" else population
        mean, std = self.population if self.population is not None else (None, None)
        images = [standardize(a, mean, std, clip).astype(np.float16) for a in raw]
        self.images = np.concatenate(images)
        self.labels = np.concatenate(labels)
        self.context_slices = int(context_slices)
        self.positions_mm = np.concatenate(positions) if slice_position else None
        # each slice's own frame, as (first, last) slice indices: neighbours never cross into another frame
        sizes = np.array([len(a) for a in images])
        ends = np.cumsum(sizes)
        self._frame_bounds = np.repeat(np.stack([ends - sizes, ends - 1], 1), sizes, axis=0)
        self.bone_slices = np.flatnonzero(self.labels.reshape(len(self.labels), -1).any(axis=1))
        self.bone_fraction = bone_fraction if len(self.bone_slices) else 0.0
        self.steps = steps or max(1, len(self.images) // batch_size)
        self.epoch = 0

    def __len__(self):
        return self.steps

    def batch(self, index):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        from_bone = rng.random(self.batch_size) < self.bone_fraction
        pick = np.where(from_bone, self.bone_slices[rng.integers(0, max(len(self.bone_slices), 1), self.batch_size)]
                        if len(self.bone_slices) else 0, rng.integers(0, len(self.images), self.batch_size))
        x = self._with_context(pick)
        y = self.labels[pick]
        if self.augment:
            x, y = augment_batch(x, y, rng, self.augment_config)
        if self.positions_mm is not None:  # after the augmentation: it would move and scale them as pixels
            x = position_channels(x, self.positions_mm[pick])
        return x, y

    def _with_context(self, pick):
        """(B, rows, cols, 2c+1) float32: the picked slices with their neighbours, repeating a frame's
        edge slice where it has none."""
        first, last = self._frame_bounds[pick].T
        index = context_index(pick, self.context_slices, first, last)
        return np.moveaxis(self.images[index].astype(np.float32), 1, -1)

    def on_epoch_end(self):
        self.epoch += 1

"""The synthesizer: batches of synthetic training slices, and whole synthetic scans for evaluation."""

import dataclasses
import json
import shutil
import threading
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..geometry import PLANES, check_plane, frame_origin, plane_direction
from ..preprocess.frame import position_channels
from ..preprocess.intensity import standardize
from ..specs import FrameSpec
from .cache import CachedLabelMap, cache_files, load_label_map
from .config import SynthesisConfig
from .draws import draw_appearance, draw_context_spacing, draw_view
from .render import CoarseGrid, render
from .tissues import TISSUE_IDS, target_lookup

SCAN_SIZE = 256  # pixels of a synthetic scan's slices (a scanner's matrix, not the model frame)
SCAN_WINDOW_MM = 160.0  # its in-plane field of view
SCAN_EXTENT_MM = 120.0  # its extent along the slice axis


class SliceSynthesizer:
    """Batches of synthetic model-frame slices with their bone labels.

    ``batch(index)`` returns ``x`` float32 (B, size, size, 1 + 2 * context_slices) and ``y`` uint8
    (B, size, size) with the values of ``labels.SEPARATE_BONES`` (``merged``: 1 for any bone, as
    ``labels.MERGED_BONES``). Each batch holds ``ceil(B / n_slices_per_sample)`` stacks; the slices of
    one stack come from one synthetic volume (one label map, view and appearance) and are normalised
    together.

    A batch depends only on (seed, epoch, index), so it is the same in any thread or worker process
    and in any order. ``on_epoch_end`` moves to the next epoch's fresh batches, unless ``fixed`` (a
    validation set: the same batches every epoch). ``steps`` is the number of batches per epoch
    (``len``). Label maps are loaded on first use.

    The slices are cut as ``frame`` says (planes, pixels, normalisation), the frame inference uses;
    its ``window_mm`` is the nominal field of view, which ``config.window_scale`` varies.
    ``context_slices``: each slice comes with that many neighbours on each side as channels (a 2.5D
    network), rendered from the same synthetic volume (``draws.draw_context_spacing``); the label is
    the middle slice's. ``slice_position``: two more channels give each slice's distance from the knee
    centre as inference measures it (:func:`synthetic_slice_positions_mm`, ``preprocess.frame.position_channels``).
    """

    def __init__(self, cache, frame: FrameSpec = FrameSpec(), n_slices_per_sample: int = 4, batch_size: int = 8,
                 seed: int = 0, config: SynthesisConfig = SynthesisConfig(), steps: int = 1000, fixed: bool = False,
                 merged: bool = False, context_slices: int = 0, slice_position: bool = False):
        self.files = cache_files(cache)
        if not self.files:
            raise ValueError("no cached label maps to synthesise from")
        self.frame = frame
        self.n_slices_per_sample = int(n_slices_per_sample)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.config = config
        self.steps = int(steps)
        self.fixed = bool(fixed)
        self.context_slices = int(context_slices)
        self.slice_position = bool(slice_position)
        self.epoch = 0
        self._knee_centres, has_fibula = zip(*(self._read_summary(f) for f in self.files))
        weights = np.where(has_fibula, config.fibula_weight, 1.0)
        self.map_probabilities = weights / weights.sum()
        self.grid = CoarseGrid(frame.size)
        self.target = np.minimum(target_lookup(), 1) if merged else target_lookup()
        self._maps = {}
        self._lock = threading.Lock()
        self._fibula_centres = None
        if config.fibula_view_probability > 0:
            self._fibula_centres = [fibula_centre_mm(self.label_map(i)) if has else None
                                    for i, has in enumerate(has_fibula)]

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
        x = np.concatenate([s[0] for s in stacks])[: self.batch_size]
        y = np.concatenate([s[1] for s in stacks])[: self.batch_size]
        info = [i for s in stacks for i in s[2]][: self.batch_size]
        return x, y, info

    def draw(self, seed_sequence, n_slices: int):
        """(view, label map, appearance, noise generator) of one synthetic volume of ``n_slices`` slices."""
        geometry_rng, appearance_rng, noise_rng = (np.random.default_rng(s) for s in seed_sequence.spawn(3))
        view = draw_view(geometry_rng, self.config, self.map_probabilities, self.frame.planes, self._knee_centres,
                         self.frame.size, self.frame.window_mm / self.frame.size, n_slices, self._fibula_centres)
        label_map = self.label_map(view.map_index)
        return view, label_map, draw_appearance(appearance_rng, self.config, label_map, view, self.frame.size), noise_rng

    def _stack(self, seed_sequence):
        """Images (n, size, size, channels), labels (n, size, size) and info of one stack of n slices."""
        view, label_map, look, noise_rng = self.draw(seed_sequence, self.n_slices_per_sample)
        centres, context, spacing = view.slice_offsets_mm, self.context_slices, 0.0
        if context:
            spacing = draw_context_spacing(np.random.default_rng(seed_sequence.spawn(1)[0]), self.config, look,
                                           self.frame.min_slice_mm)
        if spacing:  # every slice with its neighbours, all normalised together
            steps = np.arange(-context, context + 1) * spacing
            view = dataclasses.replace(view, slice_offsets_mm=(centres[:, None] + steps[None, :]).ravel())
        images, targets = render(noise_rng, view, label_map, look, self.grid, self.target)
        x = standardize(images, clip_percentiles=self.frame.normalisation.clip_percentiles)
        channels = 2 * context + 1
        if spacing:
            x = np.moveaxis(x.reshape(len(centres), channels, *x.shape[1:]), 1, -1)
            targets = targets[context::channels]
        else:
            x = np.repeat(x[..., None], channels, axis=-1)
        positions = None
        if self.slice_position:
            positions = synthetic_slice_positions_mm(np.random.default_rng(seed_sequence.spawn(1)[0]), self.config,
                                                     view, self._knee_centres[view.map_index], centres)
            x = position_channels(x, positions)
        info = [{"source": label_map.source, "subject": label_map.subject, "plane": view.plane,
                 "pixel_mm": view.pixel_mm, "centre_mm": view.centre.tolist(), "slice_offset_mm": float(offset),
                 "mirrored": view.mirrored, "thick_axis": look.thick_axis,
                 "thickness_mm": look.thickness_mm if look.thick_axis else None,
                 **({"context_mm": spacing} if context else {}),
                 **({"position_mm": None if positions is None else float(positions[k])} if self.slice_position else {})}
                for k, offset in enumerate(centres)]
        return x, targets, info


def synthetic_slice_positions_mm(rng, config: SynthesisConfig, view, knee_centre_mm, offsets_mm):
    """Each slice's signed distance (mm) along the view's slice axis from the knee centre, as inference
    measures it from its estimate of that centre: the true distance plus one error for the stack
    (``config.position_error_mm``); None with ``config.position_unknown_probability`` (not known).

    The view shows the label map at ``view.centre + matrix @ q`` for model-frame points ``q``, so the
    knee centre lies at ``q = matrix^-1 (knee - view.centre)`` in the frame."""
    unknown = rng.random() < config.position_unknown_probability
    error = float(np.clip(rng.normal(), -3.0, 3.0)) * config.position_error_mm
    if unknown:
        return None
    knee_in_frame = np.linalg.solve(view.matrix, np.asarray(knee_centre_mm, dtype=float) - view.centre)
    along = float(knee_in_frame @ plane_direction(view.plane)[:, 2])
    return np.asarray(offsets_mm, dtype=float) - along + error


def fibula_centre_mm(label_map: CachedLabelMap):
    """The centroid (LPS mm) of a cached map's fibula voxels; None when it has none."""
    k, j, i = np.nonzero(label_map.labels == TISSUE_IDS["fibula"])
    if not len(k):
        return None
    return label_map.origin + np.array([i.mean(), j.mean(), k.mean()]) * label_map.spacing


def synthesize_volume(path, seed: int = 0, plane: str = None, slice_mm: float = None, size: int = SCAN_SIZE,
                      window_mm: float = SCAN_WINDOW_MM, extent_mm: float = SCAN_EXTENT_MM,
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
    synthesizer = SliceSynthesizer([path], FrameSpec(planes=(plane,), window_mm=window_mm, size=size), seed=seed,
                                   config=volume_config)
    view, label_map, look, noise_rng = synthesizer.draw(np.random.SeedSequence([seed, 1]), n_slices)
    view = dataclasses.replace(view, slice_offsets_mm=(np.arange(n_slices) - (n_slices - 1) / 2) * slice_mm)
    look = dataclasses.replace(look, thick_axis="slice")
    images, targets = render(noise_rng, view, label_map, look, synthesizer.grid, synthesizer.target)
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


def write_labelled_volumes(cache_dir, out_dir, n: int = 6, seed: int = 0, config: SynthesisConfig = SynthesisConfig(),
                           progress=None) -> Path:
    """``n`` whole synthetic scans with their bone labels, as a training folder (``images/``, ``labels/``)
    and a ``pairs.csv`` that keeps each cached subject one subject (for ``kneeseg train --data``): stand-ins
    for labelled scans, to try the paired-training path (split, folds, fine-tuning) before real ones exist.
    The maps of the cache are used in turn; scan ``i`` is :func:`synthesize_volume` with seed ``seed + i``."""
    import csv

    from ..io import write_image, write_labelmap
    from ..writing import staging_folder, swap_into_place
    from .cache import load_manifest

    if n < 1:
        raise InputError("-n must be 1 or more")
    entries = load_manifest(cache_dir)["files"]
    out_dir = Path(out_dir)
    if out_dir.is_symlink() or (out_dir.exists() and (not out_dir.is_dir() or (
            any(out_dir.iterdir()) and not _synthetic_scans_folder(out_dir)))):
        raise InputError("the synthetic scans go into a new or empty folder, or replace an earlier 'kneeseg synth "
                         "volumes' output (they would mix with what this one holds, and be taken for real scans)",
                         out_dir)
    staging = staging_folder(out_dir)  # all scans or none
    try:
        rows = []
        for i in range(n):
            entry = entries[i % len(entries)]
            image, labels = synthesize_volume(Path(cache_dir) / entry["file"], seed=seed + i, config=config)
            name = f"{Path(entry['file']).stem}_{seed + i}.nrrd"
            write_image(image, staging / "images" / name)
            write_labelmap(labels, staging / "labels" / name)
            rows.append({"image": f"images/{name}", "label": f"labels/{name}", "subject": entry["subject"]})
            if progress:
                progress("synthesize", (i + 1) / n, name)
        with open(staging / "pairs.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["image", "label", "subject"], lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        (staging / SYNTHETIC_MARK).write_text(json.dumps({"made_by": "kneeseg synth volumes", "cache": str(cache_dir),
                                                          "n": n, "seed": seed}) + "\n")
        swap_into_place(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir / "pairs.csv"


SYNTHETIC_MARK = "synthetic.json"  # what tells an earlier 'synth volumes' output from a user's scans


def _synthetic_scans_folder(folder: Path) -> bool:
    """Whether ``folder`` is an earlier output of :func:`write_labelled_volumes` and nothing else."""
    return (folder / SYNTHETIC_MARK).is_file() and {e.name for e in folder.iterdir()} <= {
        SYNTHETIC_MARK, "pairs.csv", "images", "labels"}

"""Fitting the tri-planar fusion's per-class plane weights on labelled volumes.

The plain mean of the planes' probabilities lets two planes that miss a thin bone outvote the one that
finds it (docs/evaluation.md, round 3: the fibula). A per-class weighting learns which plane to trust
for which class: class c's fused probability is ``sum_p w[p, c] * prob_p(c)`` with each class's weights
summing to 1 over the planes (``fusion.fuse_frames``). The weights are fitted here, on a model's
*validation* volumes, by coordinate ascent on the mean Dice over a grid of the simplex, no plane weighing
more than the other two together; nothing about the test volumes enters.

Only voxels that some plane calls foreground (bone probabilities summing to >= 0.5) can change label
with the weights (``fusion``: convex weights); :class:`PlaneSamples` keeps those of one volume and
counts the truth's bone voxels outside them as missed whatever the weights.
"""

import itertools
from dataclasses import dataclass

import numpy as np


@dataclass
class PlaneSamples:
    """One labelled volume, seen by every plane: ``probabilities`` (planes, voxels, bones) uint8
    (probability x 255) at the voxels some plane calls foreground, ``truth`` (voxels,) their labels,
    ``missed`` (classes,) the truth's voxels of each class elsewhere."""

    probabilities: np.ndarray
    truth: np.ndarray
    missed: np.ndarray

    @classmethod
    def from_planes(cls, planes_bones, truth, voxel_stride=1):
        """From each plane's bone probabilities on the volume's grid (planes, ..., bones), floats in
        [0, 1], and the truth labels (...); every ``voxel_stride``-th voxel (in memory order) only, so
        that many volumes fit in memory and the fit runs in minutes."""
        n_planes, n_bones = len(planes_bones), planes_bones[0].shape[-1]
        planes_bones = np.asarray(planes_bones, dtype=np.float32).reshape(n_planes, -1, n_bones)[:, ::voxel_stride]
        truth = np.asarray(truth).ravel()[::voxel_stride]
        keep = (planes_bones.sum(axis=-1) >= 0.5).any(axis=0)
        n_classes = planes_bones.shape[-1] + 1
        missed = np.bincount(truth[~keep].ravel(), minlength=n_classes)[:n_classes]
        return cls(np.round(planes_bones[:, keep] * 255).astype(np.uint8), truth[keep].astype(np.uint8), missed)


class _Pool:
    """Every volume's kept voxels in one array, with the per-class plane probabilities as floats."""

    def __init__(self, volumes):
        self.n_planes, _, n_bones = volumes[0].probabilities.shape
        self.n_classes = n_bones + 1
        self.n_volumes = len(volumes)
        probabilities = np.concatenate([v.probabilities for v in volumes], axis=1).astype(np.float32) / 255.0
        self.truth = np.concatenate([v.truth for v in volumes]).astype(np.intp)
        self.volume = np.repeat(np.arange(len(volumes)), [v.truth.size for v in volumes])
        # per class c: (planes, voxels) probabilities of c; the background's as 1 - the bones' sum
        self.by_class = [1.0 - probabilities.sum(axis=-1)] + [probabilities[..., b] for b in range(n_bones)]
        missed = np.array([v.missed for v in volumes])  # (volumes, classes)
        codes = self.volume * self.n_classes + self.truth
        self.truth_counts = np.bincount(codes, minlength=self.n_volumes * self.n_classes).reshape(
            self.n_volumes, self.n_classes) + missed

    def channel(self, weights, c):
        return np.tensordot(weights[:, c], self.by_class[c], axes=1)

    def score(self, prediction):
        """Mean over the bones (present in some truth) of their mean Dice over the volumes holding them."""
        size = self.n_volumes * self.n_classes
        predicted = np.bincount(self.volume * self.n_classes + prediction, minlength=size)
        hit = prediction == self.truth
        overlap = np.bincount(self.volume[hit] * self.n_classes + prediction[hit], minlength=size)
        predicted, overlap = predicted.reshape(self.n_volumes, -1), overlap.reshape(self.n_volumes, -1)
        present = self.truth_counts[:, 1:] > 0
        dice = 2.0 * overlap[:, 1:] / np.maximum(predicted[:, 1:] + self.truth_counts[:, 1:], 1)
        per_bone = [dice[present[:, b], b].mean() for b in range(self.n_classes - 1) if present[:, b].any()]
        return float(np.mean(per_bone)) if per_bone else 0.0


def simplex_grid(n_planes, step, max_weight=1.0):
    """Every weight vector over ``n_planes`` planes with entries in multiples of ``step``, none above
    ``max_weight``, summing to 1."""
    n = int(round(1.0 / step))
    top = int(np.floor(max_weight * n + 1e-6))
    return [np.array(p, dtype=np.float32) / n for p in itertools.product(range(top + 1), repeat=n_planes)
            if sum(p) == n]


MAX_PLANE_WEIGHT = 0.5


def fit_plane_weights(volumes, step=0.1, sweeps=4, max_weight=MAX_PLANE_WEIGHT):
    """(weights (planes, classes), mean Dice with them, mean Dice with equal weights) fitted on
    ``volumes`` (a list of :class:`PlaneSamples`): coordinate ascent, one class's column at a time over
    :func:`simplex_grid`, starting from the plain mean, until a sweep changes nothing.

    ``max_weight``: no plane weighs more than this for any class. At 0.5 no plane outvotes the other
    two together, which keeps what fusion is for: a plane that fails on a scan unlike the training
    images cannot decide alone. Unbounded, the fit on synthetic scans gave the axial plane 0.8 of the
    fibula, and on the real DESS volume the fibula moved from the fibular head onto a calf muscle that
    only the axial plane calls fibula (docs/evaluation.md, round 5)."""
    pool = _Pool(volumes)
    weights = np.full((pool.n_planes, pool.n_classes), 1.0 / pool.n_planes, dtype=np.float32)
    channels = [pool.channel(weights, c) for c in range(pool.n_classes)]
    best = baseline = pool.score(np.argmax(np.stack(channels), axis=0))
    candidates = simplex_grid(pool.n_planes, step, max_weight)
    for _ in range(sweeps):
        changed = False
        for c in range(pool.n_classes):
            others = np.stack([channels[k] for k in range(pool.n_classes) if k != c])
            other_class = np.array([k for k in range(pool.n_classes) if k != c])[np.argmax(others, axis=0)]
            other_best = others.max(axis=0)
            del others
            for column in candidates:
                trial = np.tensordot(column, pool.by_class[c], axes=1)
                score = pool.score(np.where(trial > other_best, c, other_class))
                if score > best + 1e-6:
                    best, changed = score, True
                    weights[:, c] = column
                    channels[c] = trial
        if not changed:
            break
    return weights, best, baseline

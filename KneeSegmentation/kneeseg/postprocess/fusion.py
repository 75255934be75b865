"""Tri-planar fusion: the planes' class probabilities back on the scan's grid, averaged, argmax.

Each plane's network output lives on its own model frame (``preprocess.frame``). :func:`fuse_frames`
interpolates the bone probabilities of every plane onto the scan's exact grid, averages them and takes
the argmax: the last step of inference before the clean-up. :class:`PlaneProbabilities` keeps one
plane's bone channels, ready for that, so inference can drop the full probabilities plane by plane.

The average is plain, or weighted per class (:func:`class_plane_weights`): a bundle may carry, per
plane, one weight per class, fitted on its validation volumes (``postprocess.plane_weights``), so that
a bone one plane sees better than the others is not outvoted by them.
"""

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..cpus import available_cpus
from ..preprocess.frame import Frame


def _reference_geometry(reference):
    return (np.array(reference.GetDirection()).reshape(3, 3), np.array(reference.GetSpacing()),
            np.array(reference.GetOrigin()), np.array(reference.GetSize()))


def axis_aligned_map(frame: Frame, reference, tolerance=1e-6):
    """How a frame's voxel index follows ``reference``'s, when their axes are parallel (else None).

    Returns, per reference axis a (i, j, k), ``(b, scale, offset)``: the parallel frame axis b
    (0 column, 1 row, 2 slice) and the frame continuous index ``offset + scale * x`` at reference
    index ``x``. Linear interpolation between two such grids is then separable.
    """
    ref_dir, ref_spacing, ref_origin, _ = _reference_geometry(reference)
    frame_spacing = np.array([frame.pixel_mm, frame.pixel_mm, frame.slice_mm])
    cosines = frame.direction.T @ ref_dir  # [b, a]
    axes = np.argmax(np.abs(cosines), axis=0)
    if sorted(axes) != [0, 1, 2] or np.any(np.abs(np.abs(cosines[axes, range(3)]) - 1) > tolerance):
        return None
    offsets = ((ref_origin - frame.origin) @ frame.direction) / frame_spacing  # per frame axis b
    return [(int(b), float(cosines[b, a] * ref_spacing[a] / frame_spacing[b]), float(offsets[b]))
            for a, b in enumerate(axes)]


def _lerp_table(scale, offset, n_source, start, stop):
    """Neighbours and weights of 1D linear interpolation at ``offset + scale * x`` for x in [start, stop).

    Same conventions as ITK's linear interpolator in a resample: a point is inside the source when
    its continuous index lies in [-0.5, n - 0.5); neighbours are clamped to the source; outside
    points get zero weights (default value 0).
    """
    q = offset + scale * np.arange(start, stop, dtype=np.float64)
    inside = (q >= -0.5) & (q < n_source - 0.5)
    base = np.floor(q)
    w1 = (q - base).astype(np.float32)
    i0 = np.clip(base, 0, n_source - 1).astype(np.intp)
    i1 = np.clip(base + 1, 0, n_source - 1).astype(np.intp)
    w0 = np.where(inside, 1.0 - w1, 0.0).astype(np.float32)
    w1 = np.where(inside, w1, 0.0).astype(np.float32)
    return i0, i1, w0, w1


def _lerp_along(array, axis, table):
    i0, i1, w0, w1 = table
    shape = [1] * array.ndim
    shape[axis] = -1
    return np.take(array, i0, axis=axis) * w0.reshape(shape) + np.take(array, i1, axis=axis) * w1.reshape(shape)


def _possible_foreground_box(frame: Frame, bones: np.ndarray, reference):
    """Index box (lo, hi inclusive; numpy k-j-i order) of ``reference`` that can hold fused foreground.

    A voxel can only be labelled bone if, in at least one plane, the interpolated bone probability
    sum is >= 0.5 there (else background > 0.5 wins the average). Interpolated values are convex
    combinations of neighbouring frame voxels, so the box of frame voxels with sum >= 0.5, grown by
    one voxel and mapped to the reference grid (grown by one more), contains every such voxel.
    """
    total = bones[..., 0].copy()
    for c in range(1, bones.shape[-1]):  # channel by channel: numpy sums a short last axis slowly
        total += bones[..., c]
    hot = total >= 0.5
    slices = np.flatnonzero(hot.any(axis=(1, 2)))
    if slices.size == 0:
        return None
    rows = np.flatnonzero(hot.any(axis=(0, 2)))
    cols = np.flatnonzero(hot.any(axis=(0, 1)))
    lo = np.array([cols[0], rows[0], slices[0]]) - 1.0  # frame index (col, row, slice)
    hi = np.array([cols[-1], rows[-1], slices[-1]]) + 1.0
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    spacing = np.array([frame.pixel_mm, frame.pixel_mm, frame.slice_mm])
    physical = frame.origin + (corners * spacing) @ frame.direction.T
    ref_dir, ref_spacing, ref_origin, size = _reference_geometry(reference)
    index = (physical - ref_origin) @ np.linalg.inv(ref_dir * ref_spacing).T  # i, j, k
    box_lo = np.maximum(np.floor(index.min(axis=0)) - 1, 0).astype(int)
    box_hi = np.minimum(np.ceil(index.max(axis=0)) + 1, size - 1).astype(int)
    if np.any(box_lo > box_hi):
        return None
    return box_lo[::-1], box_hi[::-1]


class PlaneProbabilities:
    """One plane's bone probabilities, ready to be interpolated onto boxes of a reference grid.

    Made from ``(frame, probabilities)`` (slices, rows, cols, classes; class 0 the background); keeps
    only the bone channels (in the reference's axis order when the grids are parallel), so the caller
    can drop the full probabilities right away.
    """

    def __init__(self, frame: Frame, probabilities: np.ndarray, reference):
        bones = probabilities[..., 1:]
        self.frame, self.reference, self.n_bones = frame, reference, bones.shape[-1]
        self.box = _possible_foreground_box(frame, bones, reference)
        self.mapping = axis_aligned_map(frame, reference)
        self.shape = bones.shape
        if self.mapping is not None:
            # frame numpy axes are (slice, row, col) = frame axes (2, 1, 0): reorder to reference (k, j, i)
            order = [2 - self.mapping[a][0] for a in (2, 1, 0)]
            self.array = np.ascontiguousarray(bones.transpose(order + [3]), dtype=np.float32)
        else:  # one SimpleITK image per channel, made here (not lazily: slabs are sampled in threads)
            import SimpleITK as sitk

            self.sources = []
            for c in range(self.n_bones):
                source = sitk.GetImageFromArray(np.ascontiguousarray(bones[..., c], dtype=np.float32))
                source.SetSpacing((frame.pixel_mm, frame.pixel_mm, frame.slice_mm))
                source.SetDirection(tuple(frame.direction.flatten()))
                source.SetOrigin(tuple(frame.origin))
                self.sources.append(source)

    def sample(self, lo, hi):
        """Interpolated bone probabilities on the reference index box [lo, hi] (numpy k-j-i, inclusive).

        A list with one array per bone channel (possibly strided views).
        """
        if self.mapping is not None:
            out = self.array
            # slab axis first (it shrinks the array), then the innermost axis while rows are short,
            # then the rows (contiguous copies): 2x faster than k, j, i on a 512 x 512 grid
            for axis in (0, 2, 1):
                b, scale, offset = self.mapping[2 - axis]
                table = _lerp_table(scale, offset, self.shape[2 - b], lo[axis], hi[axis] + 1)
                out = _lerp_along(out, axis, table)
            return [out[..., c] for c in range(self.n_bones)]
        return self._sample_sitk(lo, hi)

    def _sample_sitk(self, lo, hi):
        import SimpleITK as sitk

        ref_dir, ref_spacing, ref_origin, _ = _reference_geometry(self.reference)
        grid = sitk.Image([int(h - l + 1) for l, h in zip(lo[::-1], hi[::-1])], sitk.sitkUInt8)
        grid.SetSpacing(tuple(ref_spacing))
        grid.SetDirection(tuple(ref_dir.flatten()))
        grid.SetOrigin(tuple(ref_origin + ref_dir @ (np.array(lo[::-1]) * ref_spacing)))
        return [sitk.GetArrayFromImage(sitk.Resample(source, grid, sitk.Transform(), sitk.sitkLinear, 0.0,
                                                     sitk.sitkFloat32)) for source in self.sources]


def class_plane_weights(weights_by_plane, planes):
    """The fusion weights of ``planes`` (in that order), (planes, classes), each class's column summing
    to 1, from a bundle's per-plane weights (plane -> one weight per class, background first).

    A class that none of ``planes`` weighs gets equal weights. None (the plain mean) when there are no
    weights, when one plane only is fused (its probabilities are then the result either way) or when a
    plane has no weights (the bundle's fit did not include it).
    """
    if not weights_by_plane or len(planes) < 2 or any(plane not in weights_by_plane for plane in planes):
        return None
    weights = np.array([weights_by_plane[plane] for plane in planes], dtype=np.float64)
    totals = weights.sum(axis=0)
    weights[:, totals <= 0] = 1.0
    return (weights / weights.sum(axis=0)).astype(np.float32)


def _argmax_with_background(channels, background=None):
    """(winner, best, background) of [background, *channels] voxel by voxel; first maximum wins (as
    np.argmax). Channel by channel: numpy reduces a short last axis 5-8x slower than it combines
    whole channels. ``background``: 1 - the channels' sum unless given."""
    best = np.array(channels[0], dtype=np.float32)
    total = best.copy()
    winner = np.ones(best.shape, dtype=np.uint8)
    for c in range(1, len(channels)):
        channel = channels[c]
        total += channel
        better = channel > best
        np.copyto(best, channel, where=better)
        winner[better] = c + 1
    if background is None:
        background = 1.0 - total
    winner[best <= background] = 0
    return winner, best, background


def _pairwise_confusions(winners, n_classes, votes=None):
    """One (classes x classes) count matrix per pair of planes' labels (rows: the first plane); with
    ``votes`` (``_votes_within_reach``), over the voxels where both planes vote only."""
    out = []
    for p in range(len(winners)):
        for q in range(p + 1, len(winners)):
            codes = winners[p].astype(np.intp) * n_classes + winners[q]
            if votes is not None:
                codes = codes[np.broadcast_to((votes[p] > 0) & (votes[q] > 0), codes.shape)]
            out.append(np.bincount(codes.ravel(), minlength=n_classes * n_classes).reshape(n_classes, n_classes))
    return out


def _slice_distance_mm(frame: Frame, reference, centre, lo, hi):
    """|distance| (mm) from ``centre`` along ``frame``'s slice axis of the reference voxels in the index box
    [lo, hi] (numpy k-j-i, inclusive), as an array broadcastable to the box: 1D along one axis when the
    frame's slices are parallel to two of the reference's axes."""
    ref_dir, ref_spacing, ref_origin, _ = _reference_geometry(reference)
    normal = frame.direction[:, 2]
    per_index = (ref_dir.T @ normal) * ref_spacing  # mm along the normal per step of reference i, j, k
    distance = np.asarray((ref_origin - np.asarray(centre, np.float64)) @ normal)
    for axis in range(3):  # numpy axis 0, 1, 2 = reference k, j, i
        step = per_index[2 - axis]
        if abs(step) > 1e-9:
            shape = [1, 1, 1]
            shape[axis] = -1
            distance = distance + (np.arange(lo[axis], hi[axis] + 1) * step).reshape(shape)
    return np.abs(distance).reshape([1] * (3 - np.ndim(distance)) + list(np.shape(distance)))


def _votes_within_reach(samplers, reference, reach, lo, hi):
    """Per plane, where it votes in the box [lo, hi] (float32 0/1, broadcastable): its slice through the
    voxel lies within ``reach = (centre, mm)`` of the centre. Where no plane's does, every plane votes.
    None when every plane votes everywhere in the box (the plain fusion)."""
    if reach is None:
        return None
    centre, max_mm = reach
    inside = [_slice_distance_mm(s.frame, reference, centre, lo, hi) <= max_mm for s in samplers]
    if all(bool(np.all(m)) for m in inside):
        return None
    shape = tuple(int(h - l + 1) for l, h in zip(lo, hi))
    nobody = ~np.logical_or.reduce([np.broadcast_to(m, shape) for m in inside])
    return [(m | nobody).astype(np.float32) for m in inside]


def _fuse_within_reach(samples, votes, weights):
    """The weighted mean of the planes' class probabilities over the planes that vote at each voxel,
    renormalised there: (bone channels, background). Where no voting plane weighs a class, that class
    takes the plain mean of the voting planes (a fitted weight of 0 means "the others decide", not "never")."""
    n_planes, n_bones = len(samples), len(samples[0])
    backgrounds = [1.0 - sum(sample) for sample in samples]
    voters = sum(votes)
    channels = []
    for c in range(n_bones + 1):
        values = [backgrounds[p] if c == 0 else samples[p][c - 1] for p in range(n_planes)]
        unweighed = weights is None or not np.all(weights[:, c] > 0)  # only then can no voter weigh the class
        plain = sum(votes[p] * values[p] for p in range(n_planes)) / voters if unweighed else None
        if weights is None:
            channels.append(np.asarray(plain, np.float32))
            continue
        total = sum(weights[p, c] * votes[p] * values[p] for p in range(n_planes))
        weight = sum(weights[p, c] * votes[p] for p in range(n_planes))
        mean = total / np.maximum(weight, 1e-12)
        channels.append(np.asarray(np.where(weight > 0, mean, plain) if unweighed else mean, np.float32))
    return channels[1:], channels[0]


def fuse_frames(planes, reference, confidence=False, slab_voxels=1 << 21, timings=None, quality=None, weights=None,
                reach=None):
    """Average the class probabilities of several planes on ``reference``'s grid and take the argmax.

    ``planes``: a list of ``(frame, probabilities)`` with probabilities (slices, rows, cols, classes),
    class 0 the background, summing to 1 per voxel (softmax, or ``[1 - p, p]``), or of
    :class:`PlaneProbabilities` made from them (leaner: the caller keeps no full probabilities). Returns
    ``(labels, confidence)``: the class index per voxel of ``reference`` (uint8, numpy k-j-i order)
    and, when asked, the winning fused probability (float32), else None.

    The same result as resampling every plane's probabilities with ``preprocess.frame.resample_from_frame``
    (background 1 outside a frame) and taking the argmax of their mean, 3-8x faster and in a
    fraction of the memory (docs/benchmarks.md):

    * only the bone channels are interpolated (background = 1 - their sum);
    * only the box of the grid that can hold foreground is computed (outside it every voxel is
      background); the whole grid when ``confidence`` is asked;
    * slab by slab (about ``slab_voxels`` voxels each), never the full multi-channel volume;
    * frames parallel to the reference grid (the usual case: plane-aligned frames and an axis-
      aligned scan) are interpolated separably in numpy; others through SimpleITK.

    ``weights``: None for the plain mean, else (planes, classes) weights whose every class column sums
    to 1 (:func:`class_plane_weights`): class c's fused probability is the weighted sum of the planes'
    probabilities of c (the background's of their backgrounds). Convex weights keep the foreground box
    exact: where every plane says background > 0.5, so does every weighted sum.

    ``reach``: None, or ``(centre, mm)``: each plane votes only at the voxels whose slice of that plane lies
    within ``mm`` of ``centre`` (LPS), the slices its network was trained on; the mean (weighted or plain) is
    taken over the planes that vote there, and over every plane where none does. The foreground box stays
    exact: the mean over fewer planes is still a convex combination of their probabilities.

    ``quality``: a dict to fill, on the way, with what the quality score needs (``kneeseg.quality``):
    ``"box"`` (lo, hi) and ``"box_confidence"`` (the winning fused probability on that box, where
    every bone lies), and ``"plane_confusions"``: per pair of planes, the counts of their own argmax
    labels against each other (classes x classes), summed over the box (with a ``reach``, over the voxels
    where both planes vote).
    """
    t0 = time.perf_counter()
    size = tuple(reference.GetSize()[::-1])  # k, j, i
    labels = np.zeros(size, dtype=np.uint8)
    conf = np.ones(size, dtype=np.float32) if confidence else None
    samplers = [p if isinstance(p, PlaneProbabilities) else PlaneProbabilities(p[0], p[1], reference) for p in planes]
    n_classes = samplers[0].n_bones + 1
    if quality is not None:
        quality.update(box=None, box_confidence=None, plane_confusions=[np.zeros((n_classes, n_classes), np.int64)
                                                                        for _ in range(_pairs(len(samplers)))])
    if samplers[0].n_bones == 0:
        return labels, conf
    if confidence:
        box = (np.zeros(3, int), np.array(size) - 1)
    else:
        boxes = [s.box for s in samplers if s.box is not None]
        if not boxes:
            return labels, conf
        box = (np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0))
    lo, hi = box
    plane_area = int((hi[1] - lo[1] + 1) * (hi[2] - lo[2] + 1))
    step = max(1, slab_voxels // plane_area)
    box_conf = None
    if quality is not None:
        box_conf = np.empty(tuple(int(h - l + 1) for l, h in zip(lo, hi)), dtype=np.float32)
        quality.update(box=(tuple(int(v) for v in lo), tuple(int(v) for v in hi)), box_confidence=box_conf)

    def fuse_slab(k0):
        k1 = min(k0 + step - 1, int(hi[0]))
        slab_lo, slab_hi = (k0, lo[1], lo[2]), (k1, hi[1], hi[2])
        plane_winners = []  # each plane's own argmax, for the quality score (uint8: small)
        fused, bone_share = None, None
        votes = _votes_within_reach(samplers, reference, reach, slab_lo, slab_hi)
        if votes is not None:
            samples = [sampler.sample(slab_lo, slab_hi) for sampler in samplers]
            if box_conf is not None and len(samplers) > 1:
                plane_winners = [_argmax_with_background(sample)[0] for sample in samples]
            fused, background = _fuse_within_reach(samples, votes, weights)
            del samples
            return store(k0, k1, fused, background, plane_winners, votes)
        for p, sampler in enumerate(samplers):
            sample = sampler.sample(slab_lo, slab_hi)
            if box_conf is not None and len(samplers) > 1:
                plane_winners.append(_argmax_with_background(sample)[0])
            if weights is not None:
                if fused is None:
                    fused = [np.zeros(sample[0].shape, np.float32) for _ in sample]
                    bone_share = np.zeros(sample[0].shape, np.float32)
                for c, (acc, channel) in enumerate(zip(fused, sample)):
                    acc += weights[p, c + 1] * channel
                    bone_share += weights[p, 0] * channel  # the background's weighted sum is 1 - this
            elif fused is None:
                fused = [np.array(c, dtype=np.float32) for c in sample]  # contiguous
            else:
                for acc, channel in zip(fused, sample):
                    acc += channel
            del sample
        if weights is None:
            for acc in fused:
                acc /= len(samplers)
        return store(k0, k1, fused, None if bone_share is None else 1.0 - bone_share, plane_winners)

    def store(k0, k1, fused, background, plane_winners, votes=None):
        winner, best, background = _argmax_with_background(fused, background)
        target = (slice(k0, k1 + 1), slice(int(lo[1]), int(hi[1]) + 1), slice(int(lo[2]), int(hi[2]) + 1))
        labels[target] = winner
        if conf is not None:
            conf[target] = np.maximum(best, background)
        if box_conf is None:
            return None
        box_conf[k0 - int(lo[0]):k1 - int(lo[0]) + 1] = np.maximum(best, background)
        return _pairwise_confusions(plane_winners, n_classes, votes) if plane_winners else None

    starts = range(int(lo[0]), int(hi[0]) + 1, step)
    workers = min(len(starts), available_cpus(), 4)
    if workers > 1:  # numpy and SimpleITK release the GIL: slabs in parallel threads
        with ThreadPoolExecutor(workers) as pool:
            confusions = list(pool.map(fuse_slab, starts))
    else:
        confusions = [fuse_slab(k0) for k0 in starts]
    if quality is not None:
        for slab in confusions:
            for total, counts in zip(quality["plane_confusions"], slab or ()):
                total += counts
    if timings is not None:
        timings["resample_back"] = time.perf_counter() - t0
    return labels, conf


def _pairs(n):
    return n * (n - 1) // 2

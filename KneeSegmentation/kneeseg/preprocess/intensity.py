"""Intensities: standard scores (the network's input scale) and N4 bias field correction.

:func:`standardize` is what every slice the network sees goes through, in training (paired and
synthetic) and inference alike; :func:`population_statistics` gives the training set's mean and
standard deviation for population normalisation. :func:`n4_bias_correct` removes a smooth intensity
bias (optional at inference, :class:`N4Settings`).
"""

from dataclasses import dataclass, fields

import numpy as np

from ..specs import CLIP_PERCENTILES, SpecError, check_int, check_number


def standardize(array, mean=None, std=None, clip_percentiles=CLIP_PERCENTILES):
    """Standard-score normalisation.

    With ``mean``/``std`` None the statistics are the volume's own (per-volume normalisation), taken
    after clipping to the given percentiles so that a few hot voxels do not squash the contrast.
    With population ``mean``/``std`` (stored in a model bundle) those are used as they are, after
    clipping at the volume's own percentiles.
    """
    a = np.asarray(array, dtype=np.float32)
    lo, hi = np.percentile(a, clip_percentiles)
    a = np.clip(a, lo, hi)
    if mean is None or std is None:
        mean, std = float(a.mean()), float(a.std())
    return ((a - mean) / max(float(std), 1e-6)).astype(np.float32)


def population_statistics(arrays, clip_percentiles=CLIP_PERCENTILES):
    """(mean, std) over several volumes, each clipped at its own percentiles as ``standardize`` does."""
    total = count = squares = 0.0
    for a in arrays:
        lo, hi = np.percentile(a, clip_percentiles)
        clipped = np.clip(a.astype(np.float64), lo, hi)
        total += clipped.sum()
        squares += np.square(clipped).sum()
        count += clipped.size
    mean = total / count
    return float(mean), float(np.sqrt(max(squares / count - mean * mean, 1e-12)))


def foreground_mask(image, sigma_mm=None):
    """Otsu foreground (the body) as a SimpleITK mask, largest component, holes filled.

    The image is first smoothed with a Gaussian of ``sigma_mm`` (default twice its finest spacing).
    """
    import SimpleITK as sitk

    sigma = 2.0 * min(image.GetSpacing()) if sigma_mm is None else float(sigma_mm)
    # DiscreteGaussian, unlike the recursive filter, also works on thin (even single-slice) images.
    smoothed = sitk.Cast(image, sitk.sitkFloat32)
    if sigma > 0:
        smoothed = sitk.DiscreteGaussian(smoothed, sigma * sigma, 32, 0.01, True)
    mask = sitk.OtsuThreshold(smoothed, 0, 1)
    components = sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True)
    largest = components == 1
    return sitk.BinaryFillhole(largest)


@dataclass(frozen=True)
class N4Settings:
    """N4 settings. The defaults are SimpleITK's (4 fitting levels, convergence threshold 0.001, 4 control
    points, cubic B-splines) with two changes, measured against SimpleITK's defaults on the real DESS and
    MESE volumes (docs/benchmarks.md): the field is fitted on a copy shrunk per axis to voxels of at
    most ``fit_spacing_mm`` (applied at full resolution), and the two coarse levels run 25 instead of
    50 iterations. On the 512 x 512 x 80 DESS that is several hundred times faster than the defaults on
    the full image, and the two corrected images correlate at r > 0.99. Fewer levels, fewer iterations
    at the finest levels, a coarser fit, averaging (BinShrink) instead of subsampling, or a smoothed
    mask each drop r below 0.99 on one of the two volumes.

    ``shrink_factor`` > 0 shrinks every axis by that factor instead (the setting of older bundles).
    Every field is checked when the settings are made (:class:`~kneeseg.specs.SpecError` names it).
    """

    shrink_factor: int = 0
    iterations: tuple = (25, 25, 50, 50)
    convergence_threshold: float = 1e-3
    spline_order: int = 3
    control_points: int = 4
    fit_spacing_mm: float = 4.4

    def __post_init__(self):
        check_int("shrink_factor", self.shrink_factor, 0, 64)
        iterations = self.iterations
        if isinstance(iterations, str) or not isinstance(iterations, (list, tuple)) or not 1 <= len(iterations) <= 8:
            raise SpecError("iterations", f"must be 1 to 8 iteration counts (one per fitting level), not {iterations!r}")
        object.__setattr__(self, "iterations", tuple(check_int("iterations", i, 1, 1000) for i in iterations))
        check_number("convergence_threshold", self.convergence_threshold, 0.0, 1.0, lo_inclusive=False)
        check_int("spline_order", self.spline_order, 1, 5)
        check_int("control_points", self.control_points, self.spline_order + 1, 64)
        check_number("fit_spacing_mm", self.fit_spacing_mm, 0.1, 100.0)

    @classmethod
    def from_overrides(cls, overrides=None) -> "N4Settings":
        """The defaults with ``overrides`` (a mapping of field names) applied; unknown names are refused."""
        overrides = dict(overrides or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise SpecError(f"n4_settings.{unknown[0]}", f"is not an N4 setting (known: {', '.join(sorted(known))})")
        try:
            return cls(**overrides)
        except SpecError as exc:
            raise SpecError(f"n4_settings.{exc.field}", str(exc).split(": ", 1)[1]) from None

    def shrink_factors(self, image) -> list:
        """Per-axis shrink factors for ``image`` (at least 8 voxels left along every axis)."""
        size, spacing = np.array(image.GetSize()), np.array(image.GetSpacing())
        if self.shrink_factor:
            factors = np.full(3, int(self.shrink_factor))
        else:
            factors = np.floor(self.fit_spacing_mm / spacing + 1e-6).astype(int)
        return [int(f) for f in np.clip(factors, 1, np.maximum(size // 8, 1))]


def n4_bias_correct(image, settings: N4Settings = N4Settings(), mask=None):
    """N4 bias field correction (SimpleITK), fitted on a shrunken copy, applied at full resolution.

    ``mask``: where to fit (default: the Otsu foreground of the shrunken copy, 100x cheaper than
    that of the full image on a 512 x 512 x 80 volume).
    """
    import SimpleITK as sitk

    image = sitk.Cast(image, sitk.sitkFloat32)
    # N4 works on the log of the intensities: keep them positive.
    offset = float(sitk.GetArrayViewFromImage(image).min())
    positive = image - offset + 1.0 if offset <= 0 else image
    factors = settings.shrink_factors(positive)
    small = sitk.Shrink(positive, factors)
    if mask is None:  # Otsu foreground of the shrunken copy, unsmoothed: closest to default N4 (benchmarks)
        small_mask = sitk.Cast(foreground_mask(small, sigma_mm=0), sitk.sitkUInt8)
    else:
        small_mask = sitk.Shrink(sitk.Cast(mask, sitk.sitkUInt8), factors)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([int(i) for i in settings.iterations])
    n4.SetConvergenceThreshold(settings.convergence_threshold)
    n4.SetSplineOrder(settings.spline_order)
    n4.SetNumberOfControlPoints([settings.control_points] * 3)
    n4.Execute(small, small_mask)
    # The field is smooth (a few B-spline spans over the field of view): evaluate it on the shrunken
    # grid and interpolate, 3x faster than evaluating the spline at every voxel.
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(positive)
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    resampler.SetUseNearestNeighborExtrapolator(True)
    log_bias = resampler.Execute(n4.GetLogBiasFieldAsImage(small))
    corrected = positive / sitk.Exp(log_bias)
    if offset <= 0:
        corrected = corrected + offset - 1.0
    corrected.CopyInformation(image)
    return sitk.Cast(corrected, sitk.sitkFloat32)

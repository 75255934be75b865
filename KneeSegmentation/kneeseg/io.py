"""Volume IO: read anything SimpleITK reads, validate it, write label maps and Slicer ``.seg.nrrd``.

Every write goes to a temporary name beside the target and is renamed into place, so a failed run
never leaves a partial file behind.
"""

import json
from pathlib import Path

import numpy as np

from .errors import InputError
from .itk_messages import plain_reason
from .labels import ANATOMICAL_STRUCTURE
from .writing import atomic_path, write_error

ORTHONORMAL_TOLERANCE = 1e-3


def _sitk():
    import SimpleITK as sitk

    return sitk


def read_volume(path, validate: bool = True):
    """Read a 3D scalar volume (any file SimpleITK reads, or a folder holding one DICOM series).

    Returns a float32 ``SimpleITK.Image``. With ``validate`` (the default) the volume is checked by
    :func:`validate_volume`. Raises :class:`InputError` naming the file on any problem.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path)
    if not (path.is_file() or path.is_dir()):
        raise InputError("is not a regular file or a folder (a device, a pipe or a socket)", path)
    sitk = _sitk()
    try:
        if path.is_dir():
            from .dicom_series import read_dicom_folder

            image = read_dicom_folder(path)
        else:
            image = sitk.ReadImage(str(path))
    except InputError:
        raise
    except RuntimeError as exc:
        raise InputError(f"not a readable image ({plain_reason(exc)})", path) from None
    if validate:
        validate_volume(image, path)
    if image.GetNumberOfComponentsPerPixel() == 1 and image.GetPixelID() != sitk.sitkFloat32:
        image = sitk.Cast(image, sitk.sitkFloat32)
    return image


def dicom_series_files(folder) -> list:
    """The files :func:`read_volume` reads from a DICOM folder, in slice order: the largest series,
    and of a multi-echo series its first echo (e.g. to reference them from a DICOM SEG). The slices
    are checked to form a regular grid first (:mod:`kneeseg.dicom_series`)."""
    from .dicom_series import series_files

    return series_files(folder)


def validate_volume(image, path=None, single_slice_ok=False):
    """Raise :class:`InputError` unless ``image`` is a finite, non-constant 3D scalar volume with a
    sound geometry (positive spacing, finite origin, an orthonormal direction matrix).
    ``single_slice_ok``: a one-slice volume passes (the evaluation of real 2D slices).

    The message names ``path`` (or "the input image" when there is none) and the problem.
    """
    sitk = _sitk()
    path = path if path is not None else "the input image"
    if not isinstance(image, sitk.Image):
        raise InputError(f"is a {type(image).__name__}, not a SimpleITK image", path)
    dim = image.GetDimension()
    if dim == 2:
        raise InputError("is a 2D image; a 3D volume is needed", path)
    if dim != 3:
        raise InputError(f"is a {dim}D image; a 3D volume is needed", path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"has {image.GetNumberOfComponentsPerPixel()} components per voxel; a scalar volume is needed", path
        )
    size = image.GetSize()
    if 0 in size:
        raise InputError(f"is empty (size {size[0]}x{size[1]}x{size[2]})", path)
    if sorted(size)[0] < 2 and not (single_slice_ok and sorted(size)[1] >= 2):
        raise InputError(f"has a single slice (size {size[0]}x{size[1]}x{size[2]}); a 3D volume is needed", path)
    check_geometry(image, path)
    array = sitk.GetArrayViewFromImage(image)
    finite = np.isfinite(array)
    if not finite.all():
        n_bad = int(array.size - np.count_nonzero(finite))
        raise InputError(f"contains {n_bad} NaN or infinite voxels", path)
    lo, hi = array.min(), array.max()
    if lo == hi:
        raise InputError(f"is constant (every voxel is {lo:g}); nothing to segment", path)
    values = label_like_values(array)
    if values is not None:
        shown = ", ".join(f"{v:g}" for v in values[:8]) + (", ..." if len(values) > 8 else "")
        raise InputError(f"looks like a label map, not an MRI (only {len(values)} distinct whole-number values: "
                         f"{shown}); give the scan itself", path)


LABEL_MAP_MAX_VALUES = 16


def label_like_values(array, sample_size: int = 200_000):
    """The distinct values of ``array`` when they look like a label map's: a background of 0 and at most
    ``LABEL_MAP_MAX_VALUES`` whole numbers from 0 to 255 (in an even sample of the voxels). None for
    anything that looks like a scan, whose grey values are many."""
    flat = np.asarray(array).ravel()
    sample = flat[:: max(1, flat.size // sample_size)]
    if not np.array_equal(sample, np.round(sample)):
        return None
    values = np.unique(sample)
    if len(values) > LABEL_MAP_MAX_VALUES or values[0] != 0 or values[-1] > 255:
        return None
    return values


def check_geometry(image, path=None):
    """Refuse a spacing that is not positive, an origin that is not finite, or a direction matrix
    that is not a rotation (sheared or scaled axes): resampling and volumes would silently be wrong."""
    spacing, origin = np.array(image.GetSpacing()), np.array(image.GetOrigin())
    if not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise InputError(f"has a voxel spacing that is not positive ({', '.join(f'{v:g}' for v in spacing)})", path)
    if not np.isfinite(origin).all():
        raise InputError("has an origin that is not a finite point", path)
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    error = np.abs(direction.T @ direction - np.eye(3)).max() if np.isfinite(direction).all() else np.inf
    if not error <= ORTHONORMAL_TOLERANCE:
        raise InputError(f"has a direction matrix that is not orthonormal (axes sheared or scaled; off by "
                         f"{error:.3g}); only rotated or flipped grids can be segmented", path)


def write_json(path, obj, indent: int = 2):
    """Write ``obj`` as JSON atomically: readers see the old file or the whole new one, never a part."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent) + "\n")


def write_image(image, path, compress: bool = True):
    """Write a SimpleITK image atomically (format from the extension)."""
    sitk = _sitk()
    with atomic_path(path) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), compress)
        except RuntimeError as exc:
            raise write_error(path, exc) from None
    return Path(path)


def write_labelmap(labelmap, path):
    """Write a label map as uint8 (atomically)."""
    sitk = _sitk()
    return write_image(sitk.Cast(labelmap, sitk.sitkUInt8), path)


def terminology_tag(label) -> str:
    """Slicer's serialised terminology entry for one bone (category Anatomical Structure)."""
    category = ANATOMICAL_STRUCTURE
    return (
        "Segmentation category and type - KneeSegmentation"
        f"~{category['scheme']}^{category['code']}^{category['meaning']}"
        f"~SCT^{label.snomed_code}^{label.name}~^^"
        "~Anatomic codes - DICOM master list~^^~^^"
    )


def write_seg_nrrd(labelmap, path, labels):
    """Write a Slicer segmentation (``.seg.nrrd``): one layer, one named, coloured segment per label.

    Slicer reads the segment names, colours, label values and SNOMED CT terminology from the header,
    so the file opens as a segmentation with named segments.
    """
    sitk = _sitk()
    if not str(path).endswith(".seg.nrrd"):
        raise InputError("a segmentation file must end in .seg.nrrd", path)
    seg = sitk.Cast(labelmap, sitk.sitkUInt8)
    array = sitk.GetArrayViewFromImage(seg)
    seg.SetMetaData("Segmentation_MasterRepresentation", "Binary labelmap")
    seg.SetMetaData("Segmentation_ContainedRepresentationNames", "Binary labelmap|")
    seg.SetMetaData("Segmentation_ReferenceImageExtentOffset", "0 0 0")
    for index, label in enumerate(labels):
        key = f"Segment{index}_"
        seg.SetMetaData(key + "ID", f"Segment_{label.value}")
        seg.SetMetaData(key + "Name", label.name)
        seg.SetMetaData(key + "NameAutoGenerated", "0")
        seg.SetMetaData(key + "Color", " ".join(f"{c / 255:.6f}" for c in label.color))
        seg.SetMetaData(key + "ColorAutoGenerated", "0")
        seg.SetMetaData(key + "LabelValue", str(label.value))
        seg.SetMetaData(key + "Layer", "0")
        seg.SetMetaData(key + "Extent", _extent(array == label.value))
        seg.SetMetaData(key + "Tags", f"TerminologyEntry:{terminology_tag(label)}|")
    return write_image(seg, path)


def _extent(mask: np.ndarray) -> str:
    """Slicer's segment extent 'i0 i1 j0 j1 k0 k1' (inclusive); an empty segment gets '0 -1 0 -1 0 -1'."""
    if not mask.any():
        return "0 -1 0 -1 0 -1"
    bounds = []
    for axis in (2, 1, 0):  # numpy (k, j, i) -> Slicer (i, j, k)
        other = tuple(a for a in range(3) if a != axis)
        nonzero = np.flatnonzero(mask.any(axis=other))
        bounds += [int(nonzero[0]), int(nonzero[-1])]
    return " ".join(map(str, bounds))


def same_geometry(a, b, tolerance: float = 1e-4) -> bool:
    """True when two images share size, origin, spacing and direction (within ``tolerance``)."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance)
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tolerance)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tolerance)
    )


def extract_folder(archive, member_prefix: str, folder) -> Path:
    """Unpack the files of a tar ``archive`` under ``member_prefix`` flat into ``folder`` (e.g. one DICOM
    series out of a source distribution); tar's "data" filter refuses links and paths out of ``folder``."""
    import tarfile

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.startswith(member_prefix):
                member.name = Path(member.name).name
                tar.extract(member, folder, filter="data")
    return folder

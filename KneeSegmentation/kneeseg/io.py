"""Volume IO: read anything SimpleITK reads, validate it, write label maps and Slicer ``.seg.nrrd``.

Every write goes to a temporary name beside the target and is renamed into place, so a failed run
never leaves a partial file behind.
"""

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import InputError
from .labels import ANATOMICAL_STRUCTURE

_ECHO_NUMBER_TAG = "0018|0086"


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
    sitk = _sitk()
    try:
        image = _read_dicom_folder(path) if path.is_dir() else sitk.ReadImage(str(path))
    except InputError:
        raise
    except RuntimeError as exc:
        raise InputError(f"not a readable image ({_first_line(exc)})", path) from None
    if validate:
        validate_volume(image, path)
    if image.GetNumberOfComponentsPerPixel() == 1 and image.GetPixelID() != sitk.sitkFloat32:
        image = sitk.Cast(image, sitk.sitkFloat32)
    return image


def _first_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # ITK's messages start with a file/line banner; the last line says what went wrong.
    return lines[-1] if lines else type(exc).__name__


def dicom_series_files(folder) -> list:
    """The files :func:`read_volume` reads from a DICOM folder, in slice order: the largest series,
    and of a multi-echo series its first echo (e.g. to reference them from a DICOM SEG)."""
    sitk = _sitk()
    folder = Path(folder)
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise InputError("folder holds no DICOM series", folder)
    files_by_series = {sid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids}
    return list(_first_echo(max(files_by_series.values(), key=len)))


def _read_dicom_folder(folder: Path):
    """Read the largest DICOM series in ``folder``; for multi-echo series, its first echo."""
    sitk = _sitk()
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(dicom_series_files(folder))
    return reader.Execute()


def _first_echo(files):
    """Keep the files of the lowest echo number (a multi-echo series stacks echoes at each position)."""
    sitk = _sitk()
    echoes = {}
    for f in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(f)
        reader.LoadPrivateTagsOff()
        reader.ReadImageInformation()
        echo = reader.GetMetaData(_ECHO_NUMBER_TAG).strip() if reader.HasMetaDataKey(_ECHO_NUMBER_TAG) else ""
        echoes.setdefault(echo, []).append(f)
    if len(echoes) <= 1:
        return files
    first = min(echoes, key=lambda e: float(e) if e.replace(".", "", 1).isdigit() else float("inf"))
    return echoes[first]


def validate_volume(image, path=None):
    """Raise :class:`InputError` unless ``image`` is a finite, non-constant 3D scalar volume."""
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
    if sorted(size)[0] < 2:
        raise InputError(f"has a single slice (size {size[0]}x{size[1]}x{size[2]}); a 3D volume is needed", path)
    array = _sitk().GetArrayViewFromImage(image)
    finite = np.isfinite(array)
    if not finite.all():
        n_bad = int(array.size - np.count_nonzero(finite))
        raise InputError(f"contains {n_bad} NaN or infinite voxels", path)
    lo, hi = array.min(), array.max()
    if lo == hi:
        raise InputError(f"is constant (every voxel is {lo:g}); nothing to segment", path)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path`` (same suffixes); rename it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; outputs get the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, obj, indent: int = 2):
    """Write ``obj`` as JSON atomically: readers see the old file or the whole new one, never a part."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent) + "\n")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_image(image, path, compress: bool = True):
    """Write a SimpleITK image atomically (format from the extension)."""
    sitk = _sitk()
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), compress)
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

"""DICOM series folders: one scan read only after its slices were checked to form a regular grid.

ITK stacks whatever files a series holds and assumes they are evenly spaced: a missing or
unreadable slice silently stretches the spacing (23 slices at 4.18 mm instead of 24 at 4 mm), a
duplicated position squeezes it, a slice of another orientation or a sheared (gantry-tilted) stack
gives a wrong geometry. Every slice's header is read first (ImagePositionPatient,
ImageOrientationPatient, size, echo number); positions are compared along the slice normal, and
the first problem is refused with a line naming the slice(s).
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .itk_messages import plain_reason

POSITION_TAG = "0020|0032"  # ImagePositionPatient
ORIENTATION_TAG = "0020|0037"  # ImageOrientationPatient
ECHO_NUMBER_TAG = "0018|0086"
SPACING_TOLERANCE = 0.02  # relative: slice steps may differ by 2 % (positions are written rounded)
POSITION_TOLERANCE_MM = 0.01
ORIENTATION_TOLERANCE = 1e-4
DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")


@dataclass(frozen=True)
class SliceHeader:
    file: str
    echo: str
    position: tuple  # (x, y, z) mm, or () when the tag is absent
    orientation: tuple  # row and column direction cosines (6), or ()
    size: tuple  # (columns, rows)

    @property
    def name(self) -> str:
        return Path(self.file).name


def series_files(folder) -> list:
    """The files of the largest DICOM series in ``folder`` (of a multi-echo series its first echo),
    ordered along the slice normal, after checking that they form a regular grid."""
    import SimpleITK as sitk

    folder = Path(folder)
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise InputError("folder holds no DICOM series", folder)
    files_by_series = {sid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids}
    check_no_damaged_slices(folder, {f for files in files_by_series.values() for f in files})
    headers = first_echo([read_slice_header(f) for f in max(files_by_series.values(), key=len)])
    return [h.file for h in check_slice_grid(headers, folder)]


def read_dicom_folder(folder):
    """The volume of :func:`series_files`."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(series_files(folder))
    warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK's spacing warning: the grid was checked above
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"the DICOM series cannot be read ({plain_reason(exc)})", folder) from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings)


def read_slice_header(file) -> SliceHeader:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(file))
    reader.LoadPrivateTagsOff()
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"DICOM slice cannot be read ({plain_reason(exc)})", file) from None

    def numbers(tag, count):
        if not reader.HasMetaDataKey(tag):
            return ()
        try:
            values = tuple(float(v) for v in reader.GetMetaData(tag).strip().split("\\"))
        except ValueError:
            return ()
        return values if len(values) == count and np.isfinite(values).all() else ()

    echo = reader.GetMetaData(ECHO_NUMBER_TAG).strip() if reader.HasMetaDataKey(ECHO_NUMBER_TAG) else ""
    return SliceHeader(str(file), echo, numbers(POSITION_TAG, 3), numbers(ORIENTATION_TAG, 6),
                       tuple(reader.GetSize()[:2]))


def check_no_damaged_slices(folder: Path, series_files: set):
    """Refuse a file that looks like a DICOM slice (a .dcm name or the DICM preamble) but that no
    series could take: a damaged slice would otherwise just be left out of the volume."""
    taken = {str(Path(f).resolve()) for f in series_files}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or not entry.is_file() or str(entry.resolve()) in taken:
            continue
        if entry.suffix.lower() in DICOM_SUFFIXES or _has_dicom_preamble(entry):
            raise InputError("looks like a DICOM slice of this series but cannot be read (damaged or truncated)",
                             entry)


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def first_echo(headers):
    """Keep the slices of the lowest echo number (a multi-echo series stacks echoes at each position)."""
    echoes = {}
    for h in headers:
        echoes.setdefault(h.echo, []).append(h)
    if len(echoes) <= 1:
        return headers
    first = min(echoes, key=lambda e: float(e) if e.replace(".", "", 1).isdigit() else float("inf"))
    return echoes[first]


def check_slice_grid(headers, folder):
    """The slices ordered along their normal, or :class:`InputError` naming the slice(s) that break
    the grid: missing geometry tags, another size or orientation, a duplicated position, a gap,
    uneven steps, or a stack that is not perpendicular to its slices."""
    if len(headers) < 2:
        return list(headers)
    for h in headers:
        if not h.position:
            raise InputError("has no usable ImagePositionPatient (0020,0032); the slice geometry is unknown", h.file)
        if not h.orientation:
            raise InputError("has no usable ImageOrientationPatient (0020,0037); the slice geometry is unknown",
                             h.file)
    first = headers[0]
    for h in headers[1:]:
        if h.size != first.size:
            raise InputError(f"is {h.size[0]}x{h.size[1]} pixels while {first.name} is {first.size[0]}x"
                             f"{first.size[1]}: the slices do not belong to one volume", h.file)
        if not np.allclose(h.orientation, first.orientation, atol=ORIENTATION_TOLERANCE):
            raise InputError(f"is oriented differently from {first.name} (ImageOrientationPatient "
                             f"{_fmt(h.orientation)} against {_fmt(first.orientation)})", h.file)
    row, col = np.array(first.orientation[:3]), np.array(first.orientation[3:])
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise InputError(f"has an ImageOrientationPatient ({_fmt(first.orientation)}) whose axes are not unit "
                         "length and perpendicular", first.file)
    normal = np.cross(row, col)
    ordered = sorted(headers, key=lambda h: float(np.dot(h.position, normal)))
    positions = np.array([h.position for h in ordered])
    along = positions @ normal
    steps = np.diff(along)
    for n, step in enumerate(steps):
        if step < POSITION_TOLERANCE_MM:
            raise InputError(f"slices {ordered[n].name} and {ordered[n + 1].name} lie at the same position "
                             f"({along[n]:.3f} mm along the slice normal): a duplicated slice, or two series or "
                             "echoes mixed", folder)
    typical = float(np.median(steps))
    tolerance = max(SPACING_TOLERANCE * typical, POSITION_TOLERANCE_MM)
    for n, step in enumerate(steps):
        if abs(step - typical) > tolerance:
            missing = int(round(step / typical)) - 1
            what = (f"{missing} slice{'s' if missing > 1 else ''} missing or unreadable" if missing >= 1
                    and abs(step - (missing + 1) * typical) <= tolerance * (missing + 1) else "uneven slice spacing")
            raise InputError(f"a gap of {step:.3g} mm between slices {ordered[n].name} and {ordered[n + 1].name} "
                             f"where the others are {typical:.3g} mm apart: {what}", folder)
    sideways = positions[1:] - positions[:-1] - np.outer(steps, normal)
    offsets = np.linalg.norm(sideways, axis=1)
    worst = int(np.argmax(offsets))
    if offsets[worst] > max(SPACING_TOLERANCE * typical, POSITION_TOLERANCE_MM):
        raise InputError(f"slice {ordered[worst + 1].name} is shifted {offsets[worst]:.3g} mm sideways from "
                         f"{ordered[worst].name}: the stack is not perpendicular to its slices (gantry tilt or a "
                         "sheared series), which a regular grid cannot represent", folder)
    return ordered


def _fmt(values) -> str:
    return "\\".join(f"{v:g}" for v in values)

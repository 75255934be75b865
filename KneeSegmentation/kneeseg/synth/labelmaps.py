"""A researcher's own label maps for the cache: which value is which structure, and which files to read.

Three ways to say what a label map's values mean:

- a mapping (:func:`parse_label_mapping`): ``femur=1,tibia=2,patella=3,fibula=4`` (several values of
  one structure: ``femur=1+7``), or the same as a JSON object ``{"femur": 1, "tibia": [2, 8]}`` or a
  two-column CSV (``structure,value``, header optional); any tissue name of ``TISSUES`` besides the
  four bones (``meniscus=9``) is drawn as that tissue, values left out become an unnamed structure;
- a preset: the convention of one of the development data sets by name (``oai``, ``mskt``, ``spl``,
  ``staple``: :data:`~.tissues.PRESET_VALUES`);
- Slicer segmentations (``.seg.nrrd``): read by segment name (:func:`seg_nrrd_tissues`), no mapping.

:func:`find_label_files` takes every volume file of a folder at any depth, so no layout is imposed.
Every problem raises :class:`~kneeseg.errors.InputError` naming it (the CLI: exit 2, one line).
"""

import csv
import json
import re
from pathlib import Path

import numpy as np

from ..errors import InputError
from .tissues import DEFAULT_SOURCES, PRESET_VALUES, TISSUE_IDS, TISSUES, LabelSource

BONE_NAMES = tuple(t.name for t in TISSUES if t.target)  # femur, tibia, fibula, patella
# Names a mapping or a segment may use: every tissue but the two fillers.
STRUCTURE_NAMES = tuple(t.name for t in TISSUES if t.name not in ("unlabelled", "unnamed_structure"))

# The single-file volume formats SimpleITK reads (the data halves of header/data pairs, .raw, .zraw
# and .img, are read through their header and never taken on their own).
VOLUME_SUFFIXES = (".seg.nrrd", ".nrrd", ".nhdr", ".nii.gz", ".nii", ".mha", ".mhd", ".hdr", ".gipl.gz", ".gipl",
                   ".mnc")
_TEMPORARY = re.compile(r"(^[~#]|~$|\.(tmp|temp|part|partial|swp|bak|crdownload)$)", re.IGNORECASE)

USER_DATASET = "user"
USER_LICENCE = "the user's own label maps (licence not stated)"


# --- the mapping ---------------------------------------------------------------------------------------


def structure_name(text: str):
    """The tissue name ``text`` means (case, spaces, hyphens, 'left'/'right' and 'bone' aside), or None."""
    words = [w for w in re.split(r"[\s_\-]+", text.strip().lower()) if w]
    while words and words[0] in ("left", "right", "l", "r"):
        words = words[1:]
    if len(words) > 1 and words[-1] == "bone":
        words = words[:-1]
    name = "_".join(words)
    return name if name in STRUCTURE_NAMES else None


def parse_label_mapping(text: str) -> dict:
    """{label value: tissue name} from ``--labels``: a preset name, a .json/.csv file, or 'name=value,...'."""
    text = text.strip()
    if text.lower() in PRESET_VALUES:
        return dict(PRESET_VALUES[text.lower()])
    path = Path(text)
    if path.suffix.lower() in (".json", ".csv") or path.is_file():
        pairs = _pairs_from_file(path)
        where = path
    else:
        pairs = []
        for item in (i for i in text.split(",") if i.strip()):
            name, sep, values = item.partition("=")
            if not sep:
                raise InputError(f"--labels takes name=value pairs (femur=1,tibia=2,...), a preset "
                                 f"({', '.join(PRESET_VALUES)}) or a .json/.csv file, not {item.strip()!r}")
            pairs += [(name, v) for v in values.split("+")]
        where = None
    return _checked_mapping(pairs, where)


def _pairs_from_file(path: Path) -> list:
    try:
        content = path.read_text()
    except OSError as exc:
        raise InputError(f"cannot read the label mapping ({exc.strerror})", path) from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(content)
        except ValueError as exc:
            raise InputError(f"the label mapping is not JSON ({exc})", path) from None
        if not isinstance(data, dict):
            raise InputError('a JSON label mapping is an object: {"femur": 1, "tibia": 2, ...}', path)
        return [(name, v) for name, values in data.items()
                for v in (values if isinstance(values, list) else [values])]
    rows = [row for row in csv.reader(content.splitlines()) if any(cell.strip() for cell in row)]
    if rows and not any(_is_int(cell) for cell in rows[0]):
        rows = rows[1:]  # a header
    pairs = []
    for row in rows:
        cells = [c.strip() for c in row if c.strip()]
        if len(cells) != 2:
            raise InputError(f"a CSV label mapping has two columns (structure,value), not {','.join(row)!r}", path)
        name, value = (cells if _is_int(cells[1]) else cells[::-1])
        pairs.append((name, value))
    return pairs


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) or (isinstance(value, str)
                                                                       and value.strip().isdigit())


def _checked_mapping(pairs, where) -> dict:
    mapping, given_as = {}, {}
    for raw_name, raw_value in pairs:
        name = structure_name(str(raw_name))
        if name is None:
            raise InputError(f"the label mapping names {str(raw_name).strip()!r}, which is no bone "
                             f"({', '.join(BONE_NAMES)}) nor another known structure (e.g. meniscus, "
                             "femoral_cartilage: kneeseg.synth.TISSUES)", where)
        if not _is_int(raw_value) or int(raw_value) < 1:
            raise InputError(f"the label value of {name} must be a whole number of 1 or more (0 is the "
                             f"background), not {raw_value!r}", where)
        value = int(raw_value)
        if value in mapping and mapping[value] != name:
            raise InputError(f"label value {value} is given twice: to {given_as[value]} and to {name}", where)
        mapping[value], given_as[value] = name, name
    if not any(name in BONE_NAMES for name in mapping.values()):
        raise InputError(f"the label mapping names no bone: say which value is {', '.join(BONE_NAMES)} "
                         "(e.g. --labels femur=1,tibia=2,patella=3,fibula=4)", where)
    return mapping


def user_source(label_values: dict, dataset: str = USER_DATASET, licence: str = USER_LICENCE,
                subject_pattern: str = r"^(.+)$") -> LabelSource:
    """A source of label maps in any folder layout (each file named by its path below the folder)."""
    try:
        re.compile(subject_pattern)
    except re.error as exc:
        raise InputError(f"--subject-pattern is not a regular expression ({exc})") from None
    return LabelSource(dataset, None, dict(label_values), licence, "", subject_pattern)


def sources_for(source_dir, labels=None, dataset=USER_DATASET, licence=USER_LICENCE,
                subject_pattern=r"^(.+)$") -> tuple:
    """The sources to read ``source_dir`` with: the ``labels`` mapping (any layout) when given; else the
    development presets (:data:`DEFAULT_SOURCES`) where their layout is found (the development data);
    else any layout read by segment name (``.seg.nrrd``; a plain label map then asks for ``labels``)."""
    if labels:
        return (user_source(parse_label_mapping(labels), dataset, licence, subject_pattern),)
    folder = Path(source_dir)
    if any(next(folder.glob(source.pattern), None) is not None for source in DEFAULT_SOURCES):
        return DEFAULT_SOURCES
    return (user_source({}, dataset, licence, subject_pattern),)


# --- the files ---------------------------------------------------------------------------------------


def label_stem(path: Path) -> str:
    """A label map's name without its volume suffix: knee.seg.nrrd -> knee, a/b.nii.gz -> b."""
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def find_label_files(folder) -> tuple:
    """(volume files under ``folder`` at any depth, sorted; other files skipped). Hidden names (a dot in
    front, at any depth) and temporary ones (``~`` or ``#`` in front, ``~``, ``.tmp``, ``.part``,
    ``.swp``, ... behind) are not read, nor counted as skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("no such folder of label maps", folder)
    taken, skipped = [], []
    for path in sorted(folder.rglob("*")):
        parts = path.relative_to(folder).parts
        if any(part.startswith(".") or _TEMPORARY.search(part) for part in parts) or not path.is_file():
            continue
        (taken if path.name.lower().endswith(VOLUME_SUFFIXES) else skipped).append(path)
    return taken, skipped


# --- Slicer segmentations ------------------------------------------------------------------------------


def is_seg_nrrd(path: Path) -> bool:
    return path.name.lower().endswith(".seg.nrrd")


def seg_nrrd_tissues(image, path, note=None) -> np.ndarray:
    """Tissue ids (uint8, array order) of a Slicer ``.seg.nrrd``: each segment by its name.

    A segment whose name is no known structure is drawn as an unnamed structure (never bone), with a
    note; a file with no bone segment at all is refused. Where segments overlap, bones win."""
    import SimpleITK as sitk

    keys = set(image.GetMetaDataKeys())
    segments = []
    while f"Segment{len(segments)}_Name" in keys:
        i = len(segments)
        layer = image.GetMetaData(f"Segment{i}_Layer") if f"Segment{i}_Layer" in keys else None
        value = image.GetMetaData(f"Segment{i}_LabelValue") if f"Segment{i}_LabelValue" in keys else "1"
        multi = image.GetNumberOfComponentsPerPixel() > 1
        try:
            segments.append((image.GetMetaData(f"Segment{i}_Name"),
                             int(layer) if layer is not None else (i if multi else 0), int(value)))
        except ValueError:
            raise InputError(f"segment {i}: its layer ({layer!r}) or label value ({value!r}) in the header is "
                             "not a whole number", path) from None
    if not segments:
        raise InputError("a .seg.nrrd without segments (no Segment0_Name in its header)", path)
    layers = sitk.GetArrayViewFromImage(image)
    if layers.ndim == 3:
        layers = layers[..., None]
    tissues = np.zeros(layers.shape[:3], np.uint8)
    named = [(structure_name(name), name, layer, value) for name, layer, value in segments]
    if not any(tissue in BONE_NAMES for tissue, *_ in named):
        raise InputError("none of its segments (" + ", ".join(repr(n) for _, n, _, _ in named)
                         + f") is a {', '.join(BONE_NAMES)}", path)
    for tissue, name, layer, value in sorted(named, key=lambda s: s[0] in BONE_NAMES):  # bones last: they win
        if tissue is None:
            if note:
                note(f"{path}: segment {name!r} matches no bone; drawn as unnamed soft tissue")
            tissue = "unnamed_structure"
        if layer >= layers.shape[-1]:
            raise InputError(f"segment {name!r} is on layer {layer}, but the file has {layers.shape[-1]}", path)
        tissues[layers[..., layer] == value] = TISSUE_IDS[tissue]
    return tissues

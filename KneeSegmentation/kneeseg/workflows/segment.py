"""Segment one file: read -> segment -> write the label map and the side outputs asked for.

Output paths are checked against the input, the bundle and each other before anything runs; every
output is written under a temporary name and renamed into place, the label map last
(:mod:`kneeseg.outputs`), so a label map on disk always comes with the side outputs made with it.
"""

from dataclasses import dataclass, fields
from pathlib import Path

from ..errors import InputError
from ..progress import NO_PROGRESS

DICOM_SEG_SUFFIXES = (".dcm",)


@dataclass(frozen=True)
class SideOutputs:
    """The files written beside the label map (None: not wanted). ``meshes`` is a folder that gets
    ``<bone>.stl`` and ``<bone>.vtp``; ``dicom_seg`` needs a DICOM series as input; ``thumbnail``
    is a cohort report's small overlay picture."""

    seg_nrrd: Path = None
    confidence: Path = None
    volumes_json: Path = None
    overlay: Path = None
    meshes: Path = None
    dicom_seg: Path = None
    thumbnail: Path = None

    def any(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))


def _planned(output, side: SideOutputs, labels=()) -> list:
    """The :class:`~kneeseg.outputs.Output` list of a case (mesh files only once the labels are known)."""
    from ..meshes import FORMATS, mesh_path
    from ..outputs import LABELMAP_SUFFIXES, Output

    named = ((side.seg_nrrd, "--seg-nrrd", (".seg.nrrd",)), (side.confidence, "--confidence", LABELMAP_SUFFIXES),
             (side.volumes_json, "--volumes-json", (".json",)), (side.overlay, "--overlay", (".png",)),
             (side.dicom_seg, "--dicom-seg", DICOM_SEG_SUFFIXES), (side.thumbnail, "the thumbnail", (".png",)))
    planned = [Output("-o", Path(output), LABELMAP_SUFFIXES)]
    planned += [Output(option, Path(path), suffixes) for path, option, suffixes in named if path is not None]
    if side.meshes is not None:
        planned += [Output("--meshes", mesh_path(side.meshes, label.name, suffix), (suffix,))
                    for label in labels for suffix in FORMATS]
    return planned


def check_dicom_seg_input(input_path, side: SideOutputs):
    if side.dicom_seg is not None and not Path(input_path).is_dir():
        raise InputError(f"--dicom-seg needs a DICOM series folder as input (the SEG references its images), not "
                         f"the volume file {input_path}")


def segment_file(input_path, output, model, options, progress=None, side=SideOutputs(), bundle=None,
                 predictor=None) -> dict:
    """Read, segment and write one case; returns the JSON-able result."""
    result, staged = stage_case(input_path, output, model, options, progress, side, bundle, predictor)
    staged.commit()
    return result


def stage_case(input_path, output, model, options, progress=None, side=SideOutputs(), bundle=None,
               predictor=None):
    """:func:`segment_file` up to the commit: returns (result, :class:`~kneeseg.outputs.StagedOutputs`)."""
    progress = progress or NO_PROGRESS
    from .. import io
    from ..bundle import default_bundle_path, load_bundle
    from ..infer import segment
    from ..outputs import check_outputs, staging

    check_dicom_seg_input(input_path, side)
    read = [input_path, model or (bundle.folder if bundle else default_bundle_path())]
    check_outputs(read, _planned(output, side))
    bundle = bundle or load_bundle(model)
    if side.meshes is not None:
        check_outputs(read, _planned(output, side, bundle.labels))
    progress("read", 0.01, f"reading {input_path}")
    image = io.read_volume(input_path)
    result = segment(image, bundle, options, progress=progress, predictor=predictor)
    progress("write", 0.95, f"writing {output}")
    with staging(output) as staged:
        written = _write_side_outputs(side, staged, image, result, bundle, input_path)
        io.write_labelmap(result.labelmap, staged.temp(output))
    return {"labelmap": str(output), **written, "volumes_ml": result.volumes_ml,
            **({"quality": quality_record(result.quality)} if result.quality is not None else {}),
            "centre_lps_mm": list(result.centre),
            "timings_s": {k: round(v, 3) for k, v in result.timings.items()}}, staged


def quality_record(quality) -> dict:
    """The quality score as results carry it: score, flag, reasons, threshold and the components."""
    record = quality.as_dict()
    record.pop("measures", None)  # the raw measures stay in Python (SegmentationResult.quality)
    return record


def _write_side_outputs(side, staged, image, result, bundle, input_path) -> dict:
    """Fill the staged temporary files of every side output asked for; returns what goes into the result."""
    from .. import io

    written = {}
    if side.seg_nrrd:
        io.write_seg_nrrd(result.labelmap, staged.temp(side.seg_nrrd), result.labels)
        written["seg_nrrd"] = str(side.seg_nrrd)
    if side.confidence and result.confidence is not None:
        io.write_image(result.confidence, staged.temp(side.confidence))
        written["confidence"] = str(side.confidence)
    if side.volumes_json:
        record = {"volumes_ml": result.volumes_ml}
        if result.quality is not None:
            record["quality"] = quality_record(result.quality)
        io.write_json(staged.temp(side.volumes_json), record)
        written["volumes_json"] = str(side.volumes_json)
    if side.overlay:
        from ..overlay import overlay_sheet

        overlay_sheet(image, result.labelmap, result.labels, staged.temp(side.overlay),
                      title=f"{Path(input_path).name}: kneeseg")
        written["overlay"] = str(side.overlay)
    if side.thumbnail:
        from ..report import case_thumbnail

        case_thumbnail(image, result.labelmap, result.labels, staged.temp(side.thumbnail))
        written["thumbnail"] = str(side.thumbnail)
    if side.meshes:
        from ..meshes import write_meshes

        written["meshes"] = write_meshes(result.labelmap, result.labels, side.meshes, temp_for=staged.temp)
    if side.dicom_seg:
        from ..dicom_seg import write_dicom_seg

        write_dicom_seg(result.labelmap, result.labels, input_path, staged.temp(side.dicom_seg),
                        bundle.card.name or "kneeseg", _model_version(bundle))
        written["dicom_seg"] = str(side.dicom_seg)
    return written


def _model_version(bundle) -> str:
    """The version a DICOM SEG names for the model: the kneeseg version and the weights' checksum."""
    from .. import __version__

    digests = [entry.sha256[:12] for entry in bundle.card.weights.values() if entry.sha256]
    return f"kneeseg {__version__}" + (f", weights {digests[0]}" if digests else "")

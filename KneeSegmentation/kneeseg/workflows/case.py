"""One case of a cohort: its name, its output files, its summary row, and the per-case function.

:func:`segment_case` is the unit of work of a cohort, run in a loop (:mod:`.cohort`) or on a Dask
cluster (:mod:`.cluster`); both build a failed case's row with :func:`failed_row`.
"""

from pathlib import Path

from ..datasets import volume_stem
from ..errors import Cancelled, InputError, OutputError
from ..report import THUMBNAIL_FOLDER
from .segment import SideOutputs, stage_case


def case_name(path) -> str:
    return volume_stem(Path(path)) if Path(path).is_file() else Path(path).name


def case_output(output_dir, input_path) -> Path:
    """The case's label map: its done-marker."""
    return Path(output_dir) / f"{case_name(input_path)}.nrrd"


def case_side_outputs(output_dir, input_path) -> SideOutputs:
    """What a cohort writes beside each label map: the Slicer segmentation and the report's thumbnail."""
    name = case_name(input_path)
    return SideOutputs(seg_nrrd=Path(output_dir) / f"{name}.seg.nrrd",
                       thumbnail=Path(output_dir) / THUMBNAIL_FOLDER / f"{name}.png")


def failed_row(input_path, error: str) -> dict:
    return {"case": case_name(input_path), "input": str(input_path), "status": "failed", "error": error}


def segment_case(input_path, output_dir, model, options, bundle=None, predictor=None):
    """Segment one case into ``output_dir`` (label map, .seg.nrrd, thumbnail) under temporary names.

    Returns (row, staged): the summary row and the :class:`~kneeseg.outputs.StagedOutputs` to commit
    once the row is recorded (None for a failed case). A bad case never raises; an output that
    cannot be written (:class:`OutputError`, e.g. a full disk) does: it would fail every case.
    """
    try:
        result, staged = stage_case(input_path, case_output(output_dir, input_path), model, options,
                                    side=case_side_outputs(output_dir, input_path), bundle=bundle,
                                    predictor=predictor)
        return {"case": case_name(input_path), "input": str(input_path), "status": "done", "error": "",
                **result}, staged
    except (OutputError, Cancelled):
        raise  # stopping the cohort is not a failure of this case
    except InputError as exc:
        return failed_row(input_path, str(exc)), None
    except Exception as exc:  # noqa: BLE001 - one broken case must not stop a cohort
        return failed_row(input_path, f"internal error: {type(exc).__name__}: {exc}"), None

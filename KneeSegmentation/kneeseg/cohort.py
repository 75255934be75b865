"""Cohorts: many inputs, one output folder, a summary CSV; resumable; one bad case never stops the rest.

The per-case function :func:`segment_case` is the unit of work everywhere: run in a loop here, or
spread over a Dask cluster (``scheduler=`` an address, see docs/cohorts.md). It writes a case's
outputs under temporary names; :func:`finish_case` then records the case's summary row and only
then commits the outputs, the label map last. The label map is the case's done-marker: a run
killed at any point and resumed redoes exactly the cases without one, and rewrites (never
duplicates) their rows. Temporary files a killed run left are removed when the cohort resumes.
"""

import csv
import glob
from pathlib import Path

from .datasets import IMAGE_SUFFIXES, volume_stem
from .errors import Cancelled, InputError, OutputError
from .writing import atomic_path, is_temp_name

SUMMARY_NAME = "summary.csv"


def _is_volume_file(path: Path) -> bool:
    """A visible volume file (hidden names, such as temporary files of an interrupted run, are never cases)."""
    return not path.name.startswith(".") and path.is_file() and any(path.name.endswith(s) for s in IMAGE_SUFFIXES)


def _looks_like_dicom_folder(path: Path) -> bool:
    """Files (not hidden ones) and no subfolders or volume files: one scan's DICOM series."""
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    return (any(p.is_file() for p in entries) and not any(p.is_dir() for p in entries)
            and not any(_is_volume_file(p) for p in entries))


def expand_inputs(items) -> list:
    """Input paths from files, DICOM folders, folders of volumes, glob patterns and CSVs (column 'path')."""
    out = []
    for item in items:
        path = Path(item)
        if any(ch in item for ch in "*?[") and not path.exists():
            matches = sorted(m for m in glob.glob(item) if not is_temp_name(Path(m).name))
            if not matches:
                raise InputError("glob pattern matches no file", item)
            out += [Path(m) for m in matches]
        elif path.suffix.lower() == ".csv" and path.is_file():
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            if not rows or "path" not in rows[0]:
                raise InputError("a cohort CSV needs a 'path' column", path)
            out += [(path.parent / r["path"]) for r in rows]
        elif path.is_dir() and not _looks_like_dicom_folder(path):
            volumes = sorted(p for p in path.iterdir() if _is_volume_file(p))
            subfolders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
            if not volumes and not subfolders:
                raise InputError("folder holds no volumes", path)
            out += volumes + subfolders
        else:
            out.append(path)  # a file or a DICOM folder; read_volume names what is wrong with it
    return out


def case_name(path: Path) -> str:
    return volume_stem(Path(path)) if Path(path).is_file() else Path(path).name


def check_unique_case_names(inputs):
    """Refuse inputs whose outputs would overwrite each other (e.g. a/knee.nrrd and b/knee.nrrd)."""
    by_name = {}
    for path in inputs:
        by_name.setdefault(case_name(path), []).append(str(path))
    clashes = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    if clashes:
        listed = "; ".join(f"{name}: {', '.join(paths)}" for name, paths in sorted(clashes.items())[:5])
        raise InputError(f"several inputs would write the same output case name ({listed}); rename them or run "
                         "them into separate output folders")


def case_output(output_dir, input_path) -> Path:
    return Path(output_dir) / f"{case_name(input_path)}.nrrd"


def segment_case(input_path, output_dir, model, options, bundle=None, predictor=None):
    """Segment one case into ``output_dir`` (label map + .seg.nrrd) under temporary names.

    Returns (row, staged): the summary row and the :class:`~kneeseg.outputs.StagedOutputs` to commit
    once the row is recorded (None for a failed case). A bad case never raises; an output that
    cannot be written (:class:`OutputError`, e.g. a full disk) does: it would fail every case.
    """
    from .cli import stage_case

    name = case_name(input_path)
    out = case_output(output_dir, input_path)
    try:
        result, staged = stage_case(input_path, out, model, options, seg_nrrd=Path(output_dir) / f"{name}.seg.nrrd",
                                    bundle=bundle, predictor=predictor)
        return {"case": name, "input": str(input_path), "status": "done", "error": "", **result}, staged
    except (OutputError, Cancelled):
        raise  # stopping the cohort is not a failure of this case
    except InputError as exc:
        return {"case": name, "input": str(input_path), "status": "failed", "error": str(exc)}, None
    except Exception as exc:  # noqa: BLE001 - one broken case must not stop a cohort
        return {"case": name, "input": str(input_path), "status": "failed",
                "error": f"internal error: {type(exc).__name__}: {exc}"}, None


def finish_case(row, staged, summary_path, bone_names):
    """Record the case's summary row, then commit its outputs (the label map, its done-marker, last)."""
    write_summary(summary_path, [row], bone_names)
    if staged is not None:
        staged.commit()


def check_cohort_outputs(inputs, output_dir, summary_path, model, sources=()):
    """Every output of the cohort checked against every input and each other, before any work."""
    from .bundle import default_bundle_path
    from .outputs import LABELMAP_SUFFIXES, Output, check_cohort_folder, check_outputs

    check_cohort_folder(inputs, output_dir, sources)
    planned = [Output("--summary", Path(summary_path), (".csv",))]
    for path in inputs:
        planned.append(Output(f"the label map of case {case_name(path)}", case_output(output_dir, path),
                              LABELMAP_SUFFIXES))
        planned.append(Output(f"the segmentation of case {case_name(path)}",
                              Path(output_dir) / f"{case_name(path)}.seg.nrrd", (".seg.nrrd",)))
    read = list(inputs) + [Path(s) for s in sources if Path(s).is_file()] + [model or default_bundle_path()]
    check_outputs(read, planned, input_folders=[s for s in sources if Path(s).is_dir()])


def run_cohort(inputs, output_dir, model, options, progress=None, summary=None, overwrite=False, scheduler=None,
               sources=(), predictor=None):
    """Segment every input; returns counts and writes the summary CSV (bone volumes per case).

    ``sources``: what the user named (folders, CSV files), protected like the inputs. Outputs are
    checked before anything runs; a second cohort into the same folder at once is refused.
    """
    from .bundle import load_bundle
    from .infer import make_predictor
    from .outputs import exclusive_folder
    from .writing import remove_stale_temps

    output_dir = Path(output_dir)
    check_unique_case_names(inputs)
    summary_path = Path(summary) if summary else output_dir / SUMMARY_NAME
    check_cohort_outputs(inputs, output_dir, summary_path, model, sources)
    bundle = load_bundle(model)
    output_dir.mkdir(parents=True, exist_ok=True)
    bones = [label.name for label in bundle.labels]
    with exclusive_folder(output_dir):
        stale = remove_stale_temps(output_dir)
        if stale and hasattr(progress, "log"):
            progress.log(f"removed {len(stale)} temporary file(s) left by an interrupted run in {output_dir}")
        todo = [p for p in inputs if overwrite or not case_output(output_dir, p).exists()]
        skipped = len(inputs) - len(todo)
        if scheduler is not None:
            from .distributed import map_cases

            rows = map_cases(todo, output_dir, model, options, scheduler, progress,
                             on_case=lambda row, staged: finish_case(row, staged, summary_path, bones))
        else:
            rows = []
            predictor = predictor or (make_predictor(bundle, options.backend) if todo else None)
            for n, path in enumerate(todo):
                if progress is not None:
                    progress("case", n / max(len(todo), 1), f"case {n + 1}/{len(todo)}: {path}")
                row, staged = segment_case(path, output_dir, model, options, bundle=bundle, predictor=predictor)
                finish_case(row, staged, summary_path, bones)  # after every case: an interruption loses nothing
                rows.append(row)
                if row["status"] == "failed" and hasattr(progress, "log"):
                    progress.log(f"failed: {row['error']}")
    failed = sum(r["status"] == "failed" for r in rows)
    return {"done": len(rows) - failed, "skipped": skipped, "failed": failed, "summary": str(summary_path),
            "failures": [{"case": r["case"], "error": r["error"]} for r in rows if r["status"] == "failed"]}


def write_summary(path: Path, rows, bone_names):
    """Merge this run's rows into the summary CSV (rows of earlier runs for other cases are kept; a
    case's row is replaced, never repeated)."""
    fields = ["case", "input", "status", "error"] + [f"{b}_ml" for b in bone_names]
    existing = {}
    if path.exists():
        with open(path, newline="") as f:
            existing = {r["case"]: r for r in csv.DictReader(f) if r.get("case")}
    for r in rows:
        flat = {k: r.get(k, "") for k in ("case", "input", "status", "error")}
        for b in bone_names:
            flat[f"{b}_ml"] = r.get("volumes_ml", {}).get(b, "")
        existing[r["case"]] = flat
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            for case in sorted(existing):
                writer.writerow(existing[case])

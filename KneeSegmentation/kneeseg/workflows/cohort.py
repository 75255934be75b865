"""Cohorts: many inputs, one output folder, a summary CSV and an HTML report; resumable; one bad case
never stops the rest.

The per-case function (:func:`kneeseg.workflows.case.segment_case`) is the unit of work: run in a
loop here (:func:`map_cases`), or spread over a Dask cluster (``scheduler=`` an address,
:mod:`.cluster`, docs/cohorts.md). It writes a case's outputs under temporary names;
:func:`finish_case` then records the case's summary row, commits the outputs, the label map last,
and rewrites the report. The label map is the case's done-marker: a run killed at any point and
resumed redoes exactly the cases without one, and rewrites (never duplicates) their rows. Temporary
files a killed run left are removed when the cohort resumes.
"""

import csv
import glob
from functools import partial
from pathlib import Path

from ..datasets import IMAGE_SUFFIXES
from ..errors import InputError
from ..progress import NO_PROGRESS
from ..report import REPORT_NAME, THUMBNAIL_FOLDER, worst_first, write_report
from ..writing import atomic_path, is_temp_name, remove_stale_temps
from .case import case_name, case_output, case_side_outputs, segment_case

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


def check_cohort_outputs(inputs, output_dir, summary_path, model, sources=()):
    """Every output of the cohort checked against every input and each other, before any work."""
    from ..bundle import default_bundle_path
    from ..outputs import LABELMAP_SUFFIXES, Output, check_cohort_folder, check_outputs

    check_cohort_folder(inputs, output_dir, sources)
    planned = [Output("--summary", Path(summary_path), (".csv",)),
               Output("the report", Path(output_dir) / REPORT_NAME, (".html",))]
    for path in inputs:
        side = case_side_outputs(output_dir, path)
        planned += [Output(f"the label map of case {case_name(path)}", case_output(output_dir, path), LABELMAP_SUFFIXES),
                    Output(f"the segmentation of case {case_name(path)}", side.seg_nrrd, (".seg.nrrd",)),
                    Output(f"the thumbnail of case {case_name(path)}", side.thumbnail, (".png",))]
    read = list(inputs) + [Path(s) for s in sources if Path(s).is_file()] + [model or default_bundle_path()]
    check_outputs(read, planned, input_folders=[s for s in sources if Path(s).is_dir()])


def map_cases(case_fn, inputs, on_case, progress=None) -> list:
    """Run ``case_fn(input_path)`` -> (row, staged) on every input in turn; ``on_case(row, staged)``
    records each case as soon as it is done (an interruption loses nothing). Returns the rows."""
    progress = progress or NO_PROGRESS
    rows = []
    for n, path in enumerate(inputs):
        progress("case", n / max(len(inputs), 1), f"case {n + 1}/{len(inputs)}: {path}")
        row, staged = case_fn(path)
        on_case(row, staged)
        rows.append(row)
        if row["status"] == "failed":
            progress.log(f"failed: {row['error']}")
        progress("case", (n + 1) / len(inputs), f"case {n + 1}/{len(inputs)}: {row['status']}")
    return rows


def finish_case(row, staged, summary_path, labels, output_dir):
    """Record the case's summary row, commit its outputs (the label map, its done-marker, last), then
    rewrite the report with every row of the summary."""
    write_summary(summary_path, [row], [label.name for label in labels])
    if staged is not None:
        staged.commit()
    write_report(read_summary(summary_path), output_dir, labels)


def run_cohort(inputs, output_dir, model, options, progress=None, summary=None, overwrite=False, scheduler=None,
               sources=(), predictor=None):
    """Segment every input; returns counts and writes the summary CSV (bone volumes per case) and report.html.

    ``sources``: what the user named (folders, CSV files), protected like the inputs. Outputs are
    checked before anything runs; a second cohort into the same folder at once is refused.
    """
    from .. import infer
    from ..bundle import load_bundle
    from ..outputs import exclusive_folder

    progress = progress or NO_PROGRESS
    output_dir = Path(output_dir)
    check_unique_case_names(inputs)
    summary_path = Path(summary) if summary else output_dir / SUMMARY_NAME
    check_cohort_outputs(inputs, output_dir, summary_path, model, sources)
    bundle = load_bundle(model)
    output_dir.mkdir(parents=True, exist_ok=True)
    on_case = partial(finish_case, summary_path=summary_path, labels=bundle.labels, output_dir=output_dir)
    with exclusive_folder(output_dir):
        stale = remove_stale_temps(output_dir) + remove_stale_temps(output_dir / THUMBNAIL_FOLDER)
        if stale:
            progress.log(f"removed {len(stale)} temporary file(s) left by an interrupted run in {output_dir}")
        todo = [p for p in inputs if overwrite or not case_output(output_dir, p).exists()]
        if scheduler is not None:
            from .cluster import map_cases as map_on_cluster

            case_fn = partial(segment_case, output_dir=output_dir.resolve(), options=options,
                              model=str(Path(model).resolve()) if model is not None else None)
            rows = map_on_cluster(case_fn, todo, on_case, scheduler, model, options.backend, progress)
        else:
            predictor = predictor or (infer.make_predictor(bundle, options.backend) if todo else None)
            case_fn = partial(segment_case, output_dir=output_dir, model=model, options=options, bundle=bundle,
                              predictor=predictor)
            rows = map_cases(case_fn, todo, on_case, progress)
        if not rows and summary_path.exists():
            write_report(read_summary(summary_path), output_dir, bundle.labels)  # e.g. one a kill cut short
    failed = sum(r["status"] == "failed" for r in rows)
    return {"done": len(rows) - failed, "skipped": len(inputs) - len(todo), "failed": failed,
            "summary": str(summary_path), "report": str(output_dir / REPORT_NAME),
            "failures": [{"case": r["case"], "error": r["error"]} for r in rows if r["status"] == "failed"]}


def read_summary(path: Path) -> list:
    """The rows of a summary CSV (none when it does not exist yet)."""
    if not Path(path).exists():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("case")]


def write_summary(path: Path, rows, bone_names):
    """Merge this run's rows into the summary CSV (rows of earlier runs for other cases are kept; a
    case's row is replaced, never repeated), worst first (:func:`kneeseg.report.worst_first`): failed
    cases, then flagged ones, then by quality score, lowest first."""
    fields = (["case", "input", "status", "error", "quality_score", "quality_flag", "quality_reasons"]
              + [f"{b}_ml" for b in bone_names])
    existing = {r["case"]: r for r in read_summary(path)}
    for r in rows:
        flat = {k: r.get(k, "") for k in ("case", "input", "status", "error")}
        quality = r.get("quality") or {}
        flat.update(quality_score=quality.get("score", ""), quality_flag=quality.get("flag", ""),
                    quality_reasons="; ".join(quality.get("reasons", [])))
        for b in bone_names:
            flat[f"{b}_ml"] = r.get("volumes_ml", {}).get(b, "")
        existing[r["case"]] = flat
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            for row in sorted(existing.values(), key=worst_first):
                writer.writerow(row)

"""Cohorts: many inputs, one output folder, a summary CSV; resumable; one bad case never stops the rest.

The per-case function :func:`segment_case` is the unit of work everywhere: run in a loop here, or
spread over a Dask cluster (``scheduler=`` an address, see docs/cohorts.md).
"""

import csv
import glob
from pathlib import Path

from .datasets import IMAGE_SUFFIXES, volume_stem
from .errors import Cancelled, InputError

SUMMARY_NAME = "summary.csv"


def _is_volume_file(path: Path) -> bool:
    return path.is_file() and any(path.name.endswith(s) for s in IMAGE_SUFFIXES)


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
            matches = sorted(glob.glob(item))
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


def segment_case(input_path, output_dir, model, options, bundle=None, predictor=None) -> dict:
    """Segment one case into ``output_dir`` (label map + .seg.nrrd); never raises for a bad case."""
    from .cli import segment_file

    name = case_name(input_path)
    out = case_output(output_dir, input_path)
    try:
        result = segment_file(input_path, out, model, options, seg_nrrd=Path(output_dir) / f"{name}.seg.nrrd",
                              bundle=bundle, predictor=predictor)
        return {"case": name, "input": str(input_path), "status": "done", "error": "", **result}
    except InputError as exc:
        return {"case": name, "input": str(input_path), "status": "failed", "error": str(exc)}
    except Cancelled:
        raise  # stopping the cohort is not a failure of this case
    except Exception as exc:  # noqa: BLE001 - one broken case must not stop a cohort
        return {"case": name, "input": str(input_path), "status": "failed",
                "error": f"internal error: {type(exc).__name__}: {exc}"}


def run_cohort(inputs, output_dir, model, options, progress=None, summary=None, overwrite=False, scheduler=None):
    """Segment every input; returns counts and writes the summary CSV (bone volumes per case)."""
    from .bundle import load_bundle
    from .infer import make_predictor

    output_dir = Path(output_dir)
    check_unique_case_names(inputs)
    output_dir.mkdir(parents=True, exist_ok=True)
    bundle = load_bundle(model)
    todo = [p for p in inputs if overwrite or not case_output(output_dir, p).exists()]
    skipped = len(inputs) - len(todo)
    rows = []
    summary_path = Path(summary) if summary else output_dir / SUMMARY_NAME
    bones = [label.name for label in bundle.labels]
    if scheduler is not None:
        from .distributed import map_cases

        rows = map_cases(todo, output_dir, model, options, scheduler, progress)
        write_summary(summary_path, rows, bones)
    else:
        predictor = make_predictor(bundle, options.backend) if todo else None
        for n, path in enumerate(todo):
            if progress is not None:
                progress("case", n / max(len(todo), 1), f"case {n + 1}/{len(todo)}: {path}")
            rows.append(segment_case(path, output_dir, model, options, bundle=bundle, predictor=predictor))
            write_summary(summary_path, rows[-1:], bones)  # after every case: an interruption loses nothing
            if rows[-1]["status"] == "failed" and hasattr(progress, "log"):
                progress.log(f"failed: {rows[-1]['error']}")
    failed = sum(r["status"] == "failed" for r in rows)
    return {"done": len(rows) - failed, "skipped": skipped, "failed": failed, "summary": str(summary_path),
            "failures": [{"case": r["case"], "error": r["error"]} for r in rows if r["status"] == "failed"]}


def write_summary(path: Path, rows, bone_names):
    """Merge this run's rows into the summary CSV (rows of earlier runs for other cases are kept)."""
    fields = ["case", "input", "status", "error"] + [f"{b}_ml" for b in bone_names]
    existing = {}
    if path.exists():
        with open(path, newline="") as f:
            existing = {r["case"]: r for r in csv.DictReader(f)}
    for r in rows:
        flat = {k: r.get(k, "") for k in ("case", "input", "status", "error")}
        for b in bone_names:
            flat[f"{b}_ml"] = r.get("volumes_ml", {}).get(b, "")
        existing[r["case"]] = flat
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for case in sorted(existing):
            writer.writerow(existing[case])
    tmp.replace(path)

"""Cohorts: folder/glob/CSV inputs, per-case outputs, summary CSV, failures isolated, resume, Dask cluster."""

import csv
import os

import pytest
import SimpleITK as sitk

from kneeseg import cli
from kneeseg.workflows.cohort import expand_inputs, run_cohort
from kneeseg.errors import EXIT_BAD_INPUT
from kneeseg.infer import SegmentOptions
from conftest import REPO, toy_knee

CASES = ("knee_a", "knee_b", "knee_c")


@pytest.fixture
def cohort(tmp_path):
    """Three tiny knees and one broken file in a folder."""
    folder = tmp_path / "cohort"
    folder.mkdir()
    for n, name in enumerate(CASES):
        image, _ = toy_knee(seed=50 + n, size=(48, 48, 40), spacing=(1.5, 1.5, 1.5))
        sitk.WriteImage(image, str(folder / f"{name}.nrrd"))
    (folder / "broken.nrrd").write_bytes(b"NRRD0004\nthis is not an image\n")
    return folder


def _summary(path):
    with open(path, newline="") as f:
        return {row["case"]: row for row in csv.DictReader(f)}


def test_folder_cohort_outputs_summary_failure_resume_and_overwrite(cohort, tiny_bundle, tmp_path):
    out = tmp_path / "out"
    code = cli.main(["segment", str(cohort), "-o", str(out), "--model", str(tiny_bundle), "--progress", "none"])
    assert code == EXIT_BAD_INPUT  # one case failed; the others finished
    for name in CASES:
        assert (out / f"{name}.nrrd").exists() and (out / f"{name}.seg.nrrd").exists()
    assert not (out / "broken.nrrd").exists()
    rows = _summary(out / "summary.csv")
    assert set(rows) == {*CASES, "broken"}
    assert rows["broken"]["status"] == "failed" and "not a readable image" in rows["broken"]["error"]
    for name in CASES:
        assert rows[name]["status"] == "done" and float(rows[name]["Femur_ml"]) > 0
        assert set(rows[name]) >= {"Femur_ml", "Tibia_ml", "Fibula_ml", "Patella_ml"}
        assert 0.0 <= float(rows[name]["quality_score"]) <= 1.0 and rows[name]["quality_flag"] in ("True", "False")
    # Worst first: the failed case, then flagged cases, then by ascending score.
    order = list(rows)
    assert order[0] == "broken"
    done = [rows[name] for name in order[1:]]
    keys = [(r["quality_flag"] != "True", float(r["quality_score"])) for r in done]
    assert keys == sorted(keys)

    # Rerun: finished cases are skipped (outputs untouched), the broken one is tried again.
    stamps = {name: (out / f"{name}.nrrd").stat().st_mtime_ns for name in CASES}
    inputs = expand_inputs([str(cohort)])
    again = run_cohort(inputs, out, tiny_bundle, SegmentOptions())
    assert (again["done"], again["skipped"], again["failed"]) == (0, 3, 1)
    assert {name: (out / f"{name}.nrrd").stat().st_mtime_ns for name in CASES} == stamps
    assert set(_summary(out / "summary.csv")) == {*CASES, "broken"}  # earlier rows kept

    redo = run_cohort(inputs, out, tiny_bundle, SegmentOptions(), overwrite=True)
    assert (redo["done"], redo["skipped"], redo["failed"]) == (3, 0, 1)
    assert all((out / f"{name}.nrrd").stat().st_mtime_ns != stamps[name] for name in CASES)


def test_glob_and_csv_inputs(cohort, tmp_path):
    assert [p.name for p in expand_inputs([str(cohort / "knee_*.nrrd")])] == [f"{n}.nrrd" for n in CASES]
    table = tmp_path / "cases.csv"
    table.write_text("path\ncohort/knee_b.nrrd\ncohort/knee_a.nrrd\n")
    assert [p.name for p in expand_inputs([str(table)])] == ["knee_b.nrrd", "knee_a.nrrd"]


def test_local_dask_cluster_of_two_workers(cohort, tiny_bundle, tmp_path):
    distributed = pytest.importorskip("distributed")
    env = {"PYTHONPATH": os.pathsep.join([str(REPO / "KneeSegmentation"), os.environ.get("PYTHONPATH", "")]),
           "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  env=env, silence_logs=40) as cluster:
        seen = []
        summary = run_cohort(expand_inputs([str(cohort)]), out, tiny_bundle, SegmentOptions(),
                             progress=lambda stage, fraction, message: seen.append(fraction),
                             scheduler=cluster.scheduler_address)
        with distributed.Client(cluster) as client:
            assert len(client.scheduler_info()["workers"]) == 2
    assert (summary["done"], summary["failed"]) == (3, 1)
    assert seen == sorted(seen) and seen[-1] == 1.0
    rows = _summary(out / "summary.csv")
    assert rows["broken"]["status"] == "failed"
    for name in CASES:
        assert rows[name]["status"] == "done" and float(rows[name]["Tibia_ml"]) > 0
        labels = sitk.ReadImage(str(out / f"{name}.nrrd"))
        assert labels.GetSize() == (48, 48, 40)


def test_same_case_names_are_refused_before_anything_runs(tmp_path):
    from kneeseg.workflows.cohort import check_unique_case_names, expand_inputs
    from kneeseg.errors import InputError

    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "knee.nrrd").write_bytes(b"x")
    with pytest.raises(InputError, match="same output case name"):
        check_unique_case_names(expand_inputs([str(tmp_path / "*" / "knee.nrrd")]))


def test_hidden_files_do_not_turn_a_cohort_folder_into_one_dicom_series(tmp_path):
    from kneeseg.workflows.cohort import expand_inputs

    (tmp_path / ".DS_Store").write_bytes(b"x")
    for sub in ("subj1", "subj2"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "IM0001").write_bytes(b"x")
    assert expand_inputs([str(tmp_path)]) == [tmp_path / "subj1", tmp_path / "subj2"]


def _report_images(page):
    """The image paths the report page references."""
    import re

    return re.findall(r"<img src='([^']+)'", page)


def test_a_cohort_writes_a_report_with_a_thumbnail_per_case(cohort, tiny_bundle, tmp_path):
    """Through the CLI as a user runs it: report.html beside summary.csv, every image it shows decodes."""
    import subprocess
    import sys
    from urllib.parse import unquote

    from PIL import Image

    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO / "KneeSegmentation"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-m", "kneeseg", "segment", str(cohort), "-o", str(out), "--model",
                           str(tiny_bundle), "--progress", "none"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr  # the broken case failed, the others finished
    page = (out / "report.html").read_text()
    images = _report_images(page)
    assert {f"thumbnails/{name}.png" for name in CASES} <= set(images)
    for image in images:
        with Image.open(out / unquote(image)) as picture:
            picture.load()
    assert page.index("broken") < min(page.index(name) for name in CASES)  # the failed case first


def test_a_killed_cohort_still_has_a_report_of_the_cases_it_finished(cohort, tmp_path, monkeypatch):
    """The report is rewritten after every case, so a cohort stopped half-way has one."""
    from kneeseg import infer, writing
    from kneeseg.errors import Cancelled

    monkeypatch.syspath_prepend(str(REPO / "Testing" / "core" / "reliability"))
    from attack import fake_predictor, write_fake_bundle

    monkeypatch.setattr(infer, "make_predictor", lambda bundle, backend="auto": fake_predictor)
    bundle = tmp_path / "bundle"
    write_fake_bundle(bundle)

    def stop_at_the_second_case(step, path):
        if path.name.endswith("knee_b.seg.nrrd"):
            raise Cancelled("stopped")

    out = tmp_path / "out"
    with pytest.raises(Cancelled), writing.inject_faults(stop_at_the_second_case):
        run_cohort(expand_inputs([str(cohort)]), out, bundle, SegmentOptions())
    page = (out / "report.html").read_text()
    assert "knee_a" in page and "broken" in page and "knee_b" not in page
    assert (out / "thumbnails" / "knee_a.png").is_file()

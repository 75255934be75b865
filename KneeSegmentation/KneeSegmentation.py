"""Knee Segmentation: segment the femur, tibia, fibula and patella in knee MRI with a U-Net.

This file is the thin Slicer layer: module metadata, the panel (``Resources/UI/KneeSegmentation.ui``
wired to the logic), the parameter node, and the self-test. The behaviour lives in
``KneeSegmentationLib`` (no Qt; tested headless on slicer-core) and the ``kneeseg`` core, which runs
in a separate ``PythonSlicer`` process so that Slicer never freezes.
"""

import html
import logging
import sys
import time
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from KneeSegmentationLib import bundles, dependencies, terminology
from KneeSegmentationLib.errors import DEPENDENCY, KneeSegmentationError
from KneeSegmentationLib.logic import KneeSegmentationLogic as KneeSegmentationCoreLogic
from KneeSegmentationLib.logic import SegmentationOptions, TrainingOptions, validateInputVolume

SETTINGS_BUNDLES = "KneeSegmentation/ModelBundles"
THESIS = "Semantic Segmentation of human knees using CNNs"


def _readmeLink() -> str:
    """Link to the README: the extension's homepage (from its CMake metadata) when Slicer knows it."""
    try:
        metadata = slicer.app.extensionsManagerModel().extensionMetadata("KneeSegmentation")
        homepage = metadata.get("homepage", "") if metadata else ""
    except Exception:  # no extensions manager (e.g. a custom application)
        homepage = ""
    if homepage:
        return f'<a href="{homepage}#readme">README</a>'
    return "README.md of the KneeSegmentation extension"


#
# Module
#


class KneeSegmentation(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Knee Segmentation"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations", "Terminologies"]
        self.parent.contributors = ["KneeSegmentation contributors"]
        self.parent.helpText = (
            "Segments the knee bones (femur, tibia, fibula, patella) in an MRI volume with a U-Net, "
            "and trains new models from your own labelled scans.<br><br>"
            "<b>Segmentation</b>: pick the input volume and a model bundle, click Apply. The bones appear as "
            "a segmentation with SNOMED CT codes, placed beside the input in the Data module; "
            "their volumes are listed in mL. <b>Training</b> (collapsed): choose a folder of image/label "
            "pairs or volume + segmentation pairs from the scene, click Train and watch the loss and "
            "validation Dice per epoch.<br><br>"
            f"The computation runs in a separate process; Apply and Train become Cancel while it runs. "
            f"See the {_readmeLink()} for installation, the options and the Python API "
            "(<code>KneeSegmentationLogic().segment(volumeNode)</code>)."
        )
        self.parent.acknowledgementText = (
            "The approach follows the 2017 bachelor thesis "
            f"<i>{THESIS}</i>: a U-Net segmenting knee bones slice by slice in MRI. "
            "Built on 3D Slicer, SimpleITK and Keras/TensorFlow."
        )
        slicer.app.connect("startupCompleted()", _loadKneeTerminology)


def _loadKneeTerminology():
    """Make the knee terminology (femur, tibia, fibula, patella codes and colours) selectable in Slicer."""
    try:
        terminology.ensureLoaded(slicer.modules.terminologies.logic())
    except Exception as exc:  # the terminology is a convenience; segmentation works without it
        logging.warning(f"KneeSegmentation: could not load the knee terminology: {exc}")


#
# Parameter node
#


@parameterNodeWrapper
class KneeSegmentationParameterNode:
    """Everything the panel shows, kept in the scene (saved and restored with it)."""

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    modelPath: str = ""
    n4: bool = False
    planeSagittal: bool = False
    planeCoronal: bool = False
    planeAxial: bool = False
    device: Annotated[str, Choice(["auto", "cpu", "gpu"])] = "auto"
    trainingFromScene: bool = False
    trainingDataFolder: str = ""
    trainingVolumes: list[vtkMRMLScalarVolumeNode]
    trainingSegmentations: list[vtkMRMLSegmentationNode]
    trainingDims: Annotated[str, Choice(["2D", "3D"])] = "2D"
    trainingOutputMode: Annotated[str, Choice(["separate", "merged"])] = "separate"
    trainingWidth: Annotated[int, WithinRange(4, 256)] = 32
    trainingEpochs: Annotated[int, WithinRange(1, 10000)] = 50
    trainingPatience: Annotated[int, WithinRange(0, 1000)] = 10
    trainingAugmentation: bool = True
    trainingOutputBundle: str = ""


#
# Widget
#


class KneeSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updatingGui = False
        self._segmentationRun = None
        self._trainingRun = None
        self._lastSegmentation = None
        self._plotViewNode = None  # the panel's plot view (singleton per scene)
        self._timer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/KneeSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = KneeSegmentationLogic()

        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self.onTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # Segmentation panel
        self.ui.modelSelector.connect("currentIndexChanged(int)", self.onModelSelected)
        self.ui.loadModelButton.connect("clicked(bool)", self.onLoadModelBundle)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.show3DButton.connect("toggled(bool)", self.onShow3D)
        self.ui.volumesTable.horizontalHeader().setSectionResizeMode(qt.QHeaderView.Stretch)
        # Training panel
        self.ui.dataFolderRadioButton.connect("toggled(bool)", self.onTrainingSourceChanged)
        self.ui.dataFolderPathLineEdit.connect("currentPathChanged(QString)", self.onTrainingPathsChanged)
        self.ui.outputBundlePathLineEdit.connect("currentPathChanged(QString)", self.onTrainingPathsChanged)
        self.ui.addPairButton.connect("clicked(bool)", self.onAddPair)
        self.ui.removePairButton.connect("clicked(bool)", self.onRemovePair)
        self.ui.trainButton.connect("clicked(bool)", self.onTrainButton)
        self.ui.showPlotInLayoutButton.connect("clicked(bool)", self.onShowPlotInLayout)

        self.populateModelSelector()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Slicer closes: stop the timer and the processes (never leave orphans behind)."""
        if self._timer:
            self._timer.stop()
        for run in (self._segmentationRun, self._trainingRun):
            if run is not None and run.running:
                run.cancel()
        self.removeObservers()

    def onReload(self):
        """Reload the logic package too (developer 'Reload' button)."""
        for name in [n for n in sys.modules if n == "KneeSegmentationLib" or n.startswith("KneeSegmentationLib.")]:
            del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        for run in (self._segmentationRun, self._trainingRun):
            if run is not None and run.running:
                run.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # -- parameter node
    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            volumes = [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                       if not n.IsA("vtkMRMLLabelMapVolumeNode")]
            if volumes:
                self._parameterNode.inputVolume = volumes[0]
        pn = self._parameterNode
        if not pn.modelPath and self.ui.modelSelector.count:
            path = self.ui.modelSelector.itemData(0) or ""
            card = self.showModelCard(path)
            with slicer.util.NodeModify(pn):
                pn.modelPath = path
                if card is not None:
                    self.applyCardDefaults(card)
        else:
            self.showModelCard(pn.modelPath)

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # widgets with a SlicerParameterName property in the .ui are bound automatically
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        """Update the widgets that are not bound automatically, and the buttons' state."""
        pn = self._parameterNode
        if pn is None or self._updatingGui:
            return
        self._updatingGui = True
        try:
            index = self.ui.modelSelector.findData(pn.modelPath) if pn.modelPath else -1
            if pn.modelPath and index < 0:
                self._addModelItem(Path(pn.modelPath))
                index = self.ui.modelSelector.findData(pn.modelPath)
            if index >= 0 and index != self.ui.modelSelector.currentIndex:
                self.ui.modelSelector.currentIndex = index
            self.ui.dataFolderRadioButton.checked = not pn.trainingFromScene
            self.ui.sceneDataRadioButton.checked = pn.trainingFromScene
            if self.ui.dataFolderPathLineEdit.currentPath != pn.trainingDataFolder:
                self.ui.dataFolderPathLineEdit.currentPath = pn.trainingDataFolder
            if self.ui.outputBundlePathLineEdit.currentPath != pn.trainingOutputBundle:
                self.ui.outputBundlePathLineEdit.currentPath = pn.trainingOutputBundle
            self.ui.pairsListWidget.clear()
            for volume, segmentation in zip(pn.trainingVolumes, pn.trainingSegmentations):
                self.ui.pairsListWidget.addItem(f"{volume.GetName() if volume else '?'}  +  "
                                                f"{segmentation.GetName() if segmentation else '?'}")
        finally:
            self._updatingGui = False
        self.updateButtons()

    def updateButtons(self) -> None:
        pn = self._parameterNode
        segmenting = self._segmentationRun is not None and self._segmentationRun.running
        training = self._trainingRun is not None and self._trainingRun.running
        canApply = bool(pn and pn.inputVolume and pn.modelPath)
        self.ui.applyButton.text = "Cancel" if segmenting else "Apply"
        self.ui.applyButton.enabled = segmenting or canApply
        self.ui.applyButton.toolTip = ("Stop the segmentation" if segmenting else
                                       "Segment the bones" if canApply else "Select an input volume and a model")
        for w in (self.ui.inputVolumeSelector, self.ui.modelSelector, self.ui.loadModelButton,
                  self.ui.optionsGroupBox, self.ui.outputSegmentationSelector):
            w.enabled = not segmenting
        hasData = bool(pn and ((pn.trainingFromScene and len(pn.trainingVolumes) > 0)
                               or (not pn.trainingFromScene and pn.trainingDataFolder)))
        canTrain = bool(hasData and pn.trainingOutputBundle)
        self.ui.trainButton.text = "Cancel" if training else "Train"
        self.ui.trainButton.enabled = training or canTrain
        for name in ("dataFolderRadioButton", "sceneDataRadioButton", "dimsComboBox", "outputModeComboBox",
                     "widthSpinBox", "epochsSpinBox", "patienceSpinBox", "augmentationCheckBox",
                     "outputBundlePathLineEdit"):
            getattr(self.ui, name).enabled = not training
        fromScene = bool(pn and pn.trainingFromScene)
        self.ui.dataFolderPathLineEdit.enabled = not training and not fromScene
        self.ui.scenePairsWidget.enabled = not training and fromScene
        self.ui.show3DButton.enabled = self._lastSegmentation is not None and not segmenting

    # -- models
    def populateModelSelector(self) -> None:
        self.ui.modelSelector.clear()
        paths = list(bundles.shippedBundles())
        for text in self._knownBundles():
            path = Path(text)
            if bundles.isBundle(path) and path not in paths:
                paths.append(path)
        for path in paths:
            self._addModelItem(path)

    def _addModelItem(self, path: Path) -> None:
        label = path.name + (" (default)" if path == bundles.defaultBundlePath() else "")
        self.ui.modelSelector.addItem(label, str(path))

    @staticmethod
    def _knownBundles() -> list:
        """Bundles the user loaded or trained before (application settings)."""
        value = qt.QSettings().value(SETTINGS_BUNDLES)
        if not value:
            return []
        return [value] if isinstance(value, str) else [str(v) for v in value]

    def _rememberBundle(self, path: Path) -> None:
        known = self._knownBundles()
        if str(path) not in known:
            qt.QSettings().setValue(SETTINGS_BUNDLES, known + [str(path)])

    def onModelSelected(self, index) -> None:
        path = self.ui.modelSelector.itemData(index) if index >= 0 else ""
        card = self.showModelCard(path)
        if self._parameterNode and not self._updatingGui and path:
            with slicer.util.NodeModify(self._parameterNode):
                changed = self._parameterNode.modelPath != path
                self._parameterNode.modelPath = path
                if card is not None and changed:
                    self.applyCardDefaults(card)

    def showModelCard(self, path):
        """Show the card of the bundle at ``path``; returns the card (None when unusable)."""
        if not path:
            self.ui.modelCardLabel.text = "No model bundle: click <i>Load model bundle...</i>"
            return None
        try:
            card = self.logic.readCard(path)
        except KneeSegmentationError as exc:
            self.ui.modelCardLabel.text = f"<span style='color:#c00'>{html.escape(exc.message)}</span>"
            return None
        self.ui.modelCardLabel.text = bundles.describeCard(card, path)
        return card

    def applyCardDefaults(self, card) -> None:
        """Preset N4 and the slice planes to what the model was trained with (the user may change them)."""
        preprocessing = card.get("preprocessing") or {}
        pn = self._parameterNode
        pn.n4 = bool(preprocessing.get("n4", False))
        planes = set(preprocessing.get("planes") or [])
        pn.planeSagittal, pn.planeCoronal, pn.planeAxial = ("sagittal" in planes, "coronal" in planes, "axial" in planes)

    def onLoadModelBundle(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "Choose a model bundle folder")
        if not folder:
            return
        path = Path(folder)
        try:
            self.logic.readCard(path)
        except KneeSegmentationError as exc:
            self.showError(exc)
            return
        if self.ui.modelSelector.findData(str(path)) < 0:
            self._addModelItem(path)
        self._rememberBundle(path)
        self._parameterNode.modelPath = str(path)

    # -- segmentation
    def _planes(self) -> tuple:
        pn = self._parameterNode
        return tuple(p for p, on in (("sagittal", pn.planeSagittal), ("coronal", pn.planeCoronal),
                                     ("axial", pn.planeAxial)) if on)

    def onApplyButton(self) -> None:
        if self._segmentationRun is not None and self._segmentationRun.running:
            self._segmentationRun.cancel()
            return
        pn = self._parameterNode
        self.clearMessage()
        try:
            validateInputVolume(pn.inputVolume)  # bad input is refused before anything is installed or run
            self.logic.readCard(pn.modelPath)
            self.ensureDependencies(pn.modelPath, training=False)
            options = SegmentationOptions(n4=pn.n4, planes=self._planes(), device=pn.device)
            self.ui.logTextEdit.clear()
            self._segmentationRun = self.logic.startSegmentation(
                pn.inputVolume, model=pn.modelPath or None, outputSegmentation=pn.outputSegmentation, options=options,
                onProgress=self.onSegmentationProgress, onLog=self.onLog, onFinished=self.onSegmentationFinished)
        except KneeSegmentationError as exc:
            self.showError(exc)
            return
        self.ui.progressBar.value = 0
        self.ui.stageLabel.text = "starting"
        self._timer.start()
        self.updateButtons()

    def onTimer(self) -> None:
        active = False
        for run in (self._segmentationRun, self._trainingRun):
            if run is not None and run.running:
                active = run.poll() or active
        if not active:
            self._timer.stop()

    def onLog(self, run, line) -> None:
        self.ui.logTextEdit.appendPlainText(line)

    def onSegmentationProgress(self, run) -> None:
        self.ui.progressBar.value = int(round(run.fraction * 100))
        self.ui.stageLabel.text = f"{run.stage}: {run.message}" if run.message else run.stage

    def onSegmentationFinished(self, run) -> None:
        self.updateButtons()
        if run.status == "succeeded":
            node = run.segmentationNode
            self._lastSegmentation = node
            self.ui.progressBar.value = 100
            self.ui.stageLabel.text = "done"
            self.fillVolumesTable(run.volumesMl)
            slicer.util.setSliceViewerLayers(background=run.volumeNode, fit=False)
            self.ui.show3DButton.blockSignals(True)
            self.ui.show3DButton.checked = run.options.closedSurface
            self.ui.show3DButton.blockSignals(False)
            self.showMessage(f"Done in {run.elapsed:.0f} s: '{node.GetName()}' has "
                             f"{node.GetSegmentation().GetNumberOfSegments()} segments.", error=False)
        elif run.status == "cancelled":
            self.ui.stageLabel.text = "cancelled"
            self.showMessage(run.error.message, error=False)
        else:
            self.ui.stageLabel.text = "failed"
            self.showError(run.error)
        self.updateButtons()

    def fillVolumesTable(self, volumesMl: dict) -> None:
        table = self.ui.volumesTable
        table.setRowCount(len(volumesMl))
        for row, (name, ml) in enumerate(volumesMl.items()):
            table.setItem(row, 0, qt.QTableWidgetItem(name))
            item = qt.QTableWidgetItem(f"{ml:.1f}")
            item.setTextAlignment(qt.Qt.AlignRight | qt.Qt.AlignVCenter)
            table.setItem(row, 1, item)

    def onShow3D(self, show) -> None:
        if self._lastSegmentation is None or self._lastSegmentation.GetScene() is None:
            return
        with slicer.util.WaitCursor():
            self.logic.showClosedSurface(self._lastSegmentation, show)

    # -- training
    def onTrainingSourceChanged(self, folderChecked) -> None:
        if self._parameterNode and not self._updatingGui:
            self._parameterNode.trainingFromScene = not folderChecked

    def onTrainingPathsChanged(self, _path=None) -> None:
        if self._parameterNode and not self._updatingGui:
            with slicer.util.NodeModify(self._parameterNode):
                self._parameterNode.trainingDataFolder = self.ui.dataFolderPathLineEdit.currentPath
                self._parameterNode.trainingOutputBundle = self.ui.outputBundlePathLineEdit.currentPath

    def onAddPair(self) -> None:
        volume = self.ui.pairVolumeSelector.currentNode()
        segmentation = self.ui.pairSegmentationSelector.currentNode()
        if volume is None or segmentation is None:
            self.showMessage("Choose a volume and its segmentation, then click Add pair.", error=True)
            return
        self._parameterNode.trainingVolumes.append(volume)
        self._parameterNode.trainingSegmentations.append(segmentation)

    def onRemovePair(self) -> None:
        row = self.ui.pairsListWidget.currentRow
        if row < 0:
            return
        del self._parameterNode.trainingVolumes[row]
        del self._parameterNode.trainingSegmentations[row]

    def onTrainButton(self) -> None:
        if self._trainingRun is not None and self._trainingRun.running:
            self._trainingRun.cancel()
            return
        pn = self._parameterNode
        self.clearMessage()
        options = TrainingOptions(epochs=pn.trainingEpochs, patience=pn.trainingPatience,
                                  dims=3 if pn.trainingDims == "3D" else 2, outputMode=pn.trainingOutputMode,
                                  width=pn.trainingWidth, augmentation=pn.trainingAugmentation)
        try:
            self.ensureDependencies(None, training=True)
            self.ui.logTextEdit.clear()
            kwargs = ({"pairs": list(zip(pn.trainingVolumes, pn.trainingSegmentations))} if pn.trainingFromScene
                      else {"dataDir": pn.trainingDataFolder})
            with slicer.util.WaitCursor():
                self._trainingRun = self.logic.startTraining(
                    pn.trainingOutputBundle, options=options, onProgress=self.onTrainingProgress, onLog=self.onLog,
                    onFinished=self.onTrainingFinished, **kwargs)
        except KneeSegmentationError as exc:
            self.showError(exc)
            return
        self.showTrainingPlot(self._trainingRun.plot)
        self.ui.trainingProgressBar.value = 0
        self._timer.start()
        self.updateButtons()

    def showTrainingPlot(self, plot) -> None:
        if plot is None:
            return
        self.ui.showPlotInLayoutButton.enabled = True
        try:
            tag = "KneeSegmentationTraining"
            self._plotViewNode = slicer.mrmlScene.GetSingletonNode(tag, "vtkMRMLPlotViewNode")
            if self._plotViewNode is None:
                node = slicer.vtkMRMLPlotViewNode()
                node.SetName("KneeSegmentation training plot")
                node.SetLayoutName(tag)
                node.SetSingletonTag(tag)
                self._plotViewNode = slicer.mrmlScene.AddNode(node)
            self._plotViewNode.SetPlotChartNodeID(plot.chartNode.GetID())
            self.ui.trainingPlotWidget.setMRMLPlotViewNode(self._plotViewNode)
        except Exception as exc:  # fall back to the view layout
            logging.warning(f"KneeSegmentation: plot in panel unavailable ({exc}); showing it in the layout")
            self.onShowPlotInLayout()

    def onShowPlotInLayout(self) -> None:
        run = self._trainingRun
        if run is not None and run.plot is not None:
            slicer.modules.plots.logic().ShowChartInLayout(run.plot.chartNode)

    def onTrainingProgress(self, run) -> None:
        self.ui.trainingProgressBar.value = int(round(run.fraction * 100))
        self.ui.trainingStageLabel.text = run.message or run.stage

    def onTrainingFinished(self, run) -> None:
        if run.status == "succeeded":
            path = run.bundlePath
            if self.ui.modelSelector.findData(str(path)) < 0:
                self._addModelItem(path)
            self._rememberBundle(path)
            self._parameterNode.modelPath = str(path)
            self.ui.trainingStageLabel.text = "done"
            self.showMessage(f"Model trained in {run.elapsed / 60:.1f} min and selected for segmentation: {path}",
                             error=False)
        elif run.status == "cancelled":
            self.ui.trainingStageLabel.text = "cancelled"
            self.showMessage(run.error.message, error=False)
        else:
            self.ui.trainingStageLabel.text = "failed"
            self.showError(run.error)
        self.updateButtons()

    # -- dependencies and messages
    def ensureDependencies(self, bundlePath, training) -> None:
        """Ask once (one dialog listing every missing package and its size), then install."""
        missing = dependencies.missingPackages(bundlePath or None, training=training)
        if not missing:
            return
        text = ("KneeSegmentation needs Python packages that this Slicer does not have yet:\n\n"
                + dependencies.describeMissing(missing) + "\n\nInstall them now? (Slicer may need a restart.)")
        if not slicer.util.confirmOkCancelDisplay(text, windowTitle="KneeSegmentation: install Python packages"):
            raise KneeSegmentationError(dependencies.declinedMessage(missing), DEPENDENCY)
        with slicer.util.WaitCursor():
            dependencies.install(missing, log=lambda line: self.ui.logTextEdit.appendPlainText(line))

    def clearMessage(self) -> None:
        self.ui.messageLabel.text = ""

    def showMessage(self, text, error=False) -> None:
        color = "#c00" if error else "#080"
        body = html.escape(text).replace("\n", "<br>")
        self.ui.messageLabel.text = f"<span style='color:{color}'>{body}</span>"

    def showError(self, exc) -> None:
        message = exc.message if isinstance(exc, KneeSegmentationError) else str(exc)
        self.showMessage(message, error=True)
        log = getattr(exc, "log", "")
        details = {}
        if log:
            self.ui.logGroupBox.collapsed = False
            details["detailedText"] = log
        slicer.util.errorDisplay(message, windowTitle="Knee Segmentation", **details)


#
# Logic
#


class KneeSegmentationLogic(ScriptedLoadableModuleLogic, KneeSegmentationCoreLogic):
    """The module's logic: Slicer's scripted-module logic plus the headless KneeSegmentationLib logic.

    Python users::

        import KneeSegmentation
        logic = KneeSegmentation.KneeSegmentationLogic()
        segmentationNode = logic.segment(slicer.util.getNode("knee"), n4=True)
    """

    def __init__(self) -> None:
        # ScriptedLoadableModuleLogic.__init__ also runs the core __init__ with its defaults (cooperative
        # super()); the second call gives it Slicer's terminologies logic and temporary folder.
        ScriptedLoadableModuleLogic.__init__(self)
        KneeSegmentationCoreLogic.__init__(self, scene=slicer.mrmlScene,
                                           terminologiesLogic=slicer.modules.terminologies.logic(),
                                           tempDir=slicer.app.temporaryPath)

    def getParameterNode(self):
        return KneeSegmentationParameterNode(super().getParameterNode())


#
# Test (runs inside Slicer: Reload and Test, ctest, or Slicer --python-script)
#


class KneeSegmentationTest(ScriptedLoadableModuleTest):
    """Self-test on a synthetic oblique knee volume built in the scene (no download needed)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_RefusesBadInputAndLeavesSceneUnchanged()
        self.setUp()
        self.test_SegmentsSyntheticKnee()
        self.setUp()
        self.test_PanelContract()

    @staticmethod
    def _syntheticKnee(name="KneeSegmentationTest knee"):
        """An oblique coronal volume: bright ellipsoid 'bones' (femur above tibia, fibula, patella)."""
        import numpy as np

        shape = (24, 72, 64)  # k, j, i
        k, j, i = np.indices(shape).astype(float)
        image = np.full(shape, 120.0)
        for (ck, cj, ci), (rk, rj, ri) in (((12, 18, 32), (10, 14, 20)), ((12, 52, 32), (10, 14, 18)),
                                           ((12, 56, 52), (5, 12, 4)), ((4, 26, 32), (3, 8, 8))):
            image[((k - ck) / rk) ** 2 + ((j - cj) / rj) ** 2 + ((i - ci) / ri) ** 2 <= 1] = 400.0
        image += np.random.default_rng(0).normal(0, 10, shape)
        volume = slicer.util.addVolumeFromArray(image.astype(np.int16), name=name)
        a = np.deg2rad(15)
        m = np.eye(4)
        m[:3, :3] = np.array([[-1, 0, 0], [0, np.sin(a), np.cos(a)], [0, -np.cos(a), np.sin(a)]]) @ np.diag([0.6, 0.6, 3.0])
        m[:3, 3] = (20, -10, 30)
        volume.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(m))
        return volume

    def test_RefusesBadInputAndLeavesSceneUnchanged(self):
        import numpy as np

        logic = KneeSegmentationLogic()
        flat = slicer.util.addVolumeFromArray(np.zeros((1, 20, 20), np.int16) + np.arange(20, dtype=np.int16), name="2D")
        labels = slicer.util.addVolumeFromArray(np.ones((5, 20, 20), np.uint8), name="labels",
                                                nodeClassName="vtkMRMLLabelMapVolumeNode")
        count = slicer.mrmlScene.GetNumberOfNodes()
        for node, words in ((None, "No input volume"), (flat, "2D"), (labels, "label map")):
            with self.assertRaises(KneeSegmentationError) as ctx:
                logic.segment(node)
            self.assertIn(words, ctx.exception.message)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        self.delayDisplay("Bad input refused, scene unchanged")

    def test_SegmentsSyntheticKnee(self):
        import numpy as np

        logic = KneeSegmentationLogic()
        bundle = logic.defaultBundlePath()
        if not bundles.isBundle(bundle):
            self.delayDisplay(f"SKIPPED segmentation test: the default model bundle is absent ({bundle})")
            return
        missing = dependencies.missingPackages(bundle)
        if missing:
            self.delayDisplay("SKIPPED segmentation test: Python packages missing: " + ", ".join(p.name for p in missing))
            return
        volume = self._syntheticKnee()
        shNode = slicer.mrmlScene.GetSubjectHierarchyNode()
        patient = shNode.CreateSubjectItem(shNode.GetSceneItemID(), "Test patient")
        study = shNode.CreateStudyItem(patient, "Test study")
        shNode.SetItemParent(shNode.GetItemByDataNode(volume), study)
        before = slicer.util.arrayFromVolume(volume).copy()
        card = logic.readCard(bundle)

        start = time.time()
        segmentation = logic.segment(volume, timeout=600)
        self.delayDisplay(f"Segmented in {time.time() - start:.1f} s")

        names = [segmentation.GetSegmentation().GetNthSegment(i).GetName()
                 for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
        self.assertEqual(names, [label["name"] for label in sorted(card["labels"], key=lambda l: l["value"])])
        for label in card["labels"]:
            segment = segmentation.GetSegmentation().GetSegment(
                segmentation.GetSegmentation().GetSegmentIdBySegmentName(label["name"]))
            self.assertEqual(terminology.typeCode(segment.GetTerminology())[1], label["snomed"]["code"])
        self.assertIs(segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole()), volume)
        self.assertEqual(shNode.GetItemParent(shNode.GetItemByDataNode(segmentation)), study)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), before)

        path = Path(slicer.app.temporaryPath) / "KneeSegmentationTest.seg.nrrd"
        self.assertTrue(slicer.util.saveNode(segmentation, str(path)))
        reloaded = slicer.util.loadSegmentation(str(path))
        self.assertEqual(reloaded.GetSegmentation().GetNumberOfSegments(), len(names))
        logic.showClosedSurface(segmentation)
        self.delayDisplay("Synthetic knee segmented, saved and reloaded")

    def test_PanelContract(self):
        widget = slicer.modules.kneesegmentation.widgetRepresentation().self()
        volume = self._syntheticKnee()
        widget._parameterNode.inputVolume = volume
        self.assertEqual(widget.ui.inputVolumeSelector.currentNode(), volume)
        self.assertEqual(widget.ui.applyButton.text, "Apply")
        self.assertTrue(widget.ui.trainingCollapsibleButton.collapsed)
        count = slicer.mrmlScene.GetNumberOfNodes()
        widget._parameterNode.inputVolume = None
        widget.onApplyButton()  # no input: a message, no crash, nothing added
        self.assertIn("No input volume", widget.ui.messageLabel.text)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        self.delayDisplay("Panel contract OK")

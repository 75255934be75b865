"""The Knee Segmentation panel: a Qt widget over the logic it is given (the module file only hosts it).

Top to bottom, as a radiologist meets it: input volume, model (a short summary; the full card on
demand), output, then **Apply**, the primary button. Progress, results (bone volumes from Segment
Statistics, Show 3D) appear only once there is something to show. Advanced options and the log are
collapsed; training has its own collapsed section with options in plain words.

Every user-visible string goes through ``_()`` (``slicer.i18n``). The logic is injected: the
module passes its ``KneeSegmentationLogic``; tests pass one that runs a stand-in core.
"""

import enum
import html
import logging
from pathlib import Path
from typing import Annotated

import ctk
import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.util import VTKObservationMixin

from . import bundles, dependencies, results, statistics
from .errors import DEPENDENCY, KneeSegmentationError
from .logic import SegmentationOptions, TrainingOptions, exportMeshes, validateInputVolume

UI_FILE = Path(__file__).resolve().parent.parent / "Resources" / "UI" / "KneeSegmentation.ui"
SETTINGS_BUNDLES = "KneeSegmentation/ModelBundles"
POLL_MS = 200
PLOT_VIEW_TAG = "KneeSegmentationTraining"


class Device(enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    GPU = "gpu"

    def label(self):
        return {Device.AUTO: _("Automatic (GPU when available)"), Device.CPU: _("CPU"), Device.GPU: _("GPU")}[self]


class Bones(enum.Enum):
    SEPARATE = "separate"
    MERGED = "merged"

    def label(self):
        return {Bones.SEPARATE: _("Each bone separately (femur, tibia, fibula, patella)"),
                Bones.MERGED: _("All bones as one 'Bone' label")}[self]


_TRAINING = TrainingOptions()  # the CLI's defaults (kneeseg.contract)


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
    device: Device = Device.AUTO
    trainingFromScene: bool = False
    trainingDataFolder: str = ""
    trainingVolumes: list[vtkMRMLScalarVolumeNode]
    trainingSegmentations: list[vtkMRMLSegmentationNode]
    trainingBones: Bones = Bones(_TRAINING.outputMode)
    trainingWidth: Annotated[int, WithinRange(4, 256)] = _TRAINING.width
    trainingEpochs: Annotated[int, WithinRange(1, 10000)] = _TRAINING.epochs
    trainingPatience: Annotated[int, WithinRange(0, 1000)] = _TRAINING.patience
    trainingAugmentation: bool = _TRAINING.augmentation
    trainingOutputBundle: str = ""


def modelSummary(card: dict) -> str:
    """Four short lines for the panel: name, bones, what it learnt from, measured accuracy."""
    esc = html.escape
    bones = ", ".join(str(label["name"]) for label in sorted(card.get("labels", []), key=lambda l: int(l["value"])))
    lines = [f"<b>{esc(str(card.get('name') or _('Model')))}</b>", _("Bones: {bones}").format(bones=esc(bones))]
    data = (card.get("training") or {}).get("data") or {}
    if data.get("kind"):
        lines.append(_("Trained on: {what}").format(what=esc(str(data["kind"]))))
    dice = _meanDice(card.get("metrics") or {})
    if dice:
        lines.append(_("Measured accuracy: mean Dice {dice:.2f} on {what}").format(dice=dice[0], what=esc(dice[1])))
    else:
        lines.append(_("Measured accuracy: not recorded in the model card"))
    return "<br>".join(lines)


def _meanDice(metrics: dict):
    """(mean Dice over bones, what it was measured on), preferring real data over synthetic."""
    for key, what in (("pairs", _("labelled volumes")), ("real2d", _("real MRI slices")),
                      ("synthetic", _("synthetic volumes"))):
        value = ((metrics.get(key) or {}).get("dice") or {}).get("mean_over_bones")
        if isinstance(value, (int, float)):
            return float(value), what
    return None


class KneeSegmentationPanel(qt.QWidget):
    """The module panel. ``logic`` is the module's logic (segmentation, training, parameter node)."""

    def __init__(self, logic, uiPath=UI_FILE, parent=None):
        super().__init__(parent)
        self.logic = logic
        self._observer = VTKObservationMixin()
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updatingGui = False
        self._segmentationRun = None
        self._trainingRun = None
        self._plotViewNode = None

        layout = qt.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        uiWidget = slicer.util.loadUI(str(uiPath))
        layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        for pathEdit in (self.ui.dataFolderPathLineEdit, self.ui.outputBundlePathLineEdit):
            pathEdit.filters = ctk.ctkPathLineEdit.Dirs

        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_MS)
        self._timer.connect("timeout()", self.onTimer)

        self._observer.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self._observer.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.modelSelector.connect("currentIndexChanged(int)", self.onModelSelected)
        self.ui.loadModelButton.connect("clicked(bool)", self.onLoadModelBundle)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.dataFolderRadioButton.connect("toggled(bool)", self.onTrainingSourceChanged)
        self.ui.dataFolderPathLineEdit.connect("currentPathChanged(QString)", self.onTrainingPathsChanged)
        self.ui.outputBundlePathLineEdit.connect("currentPathChanged(QString)", self.onTrainingPathsChanged)
        self.ui.addPairButton.connect("clicked(bool)", self.onAddPair)
        self.ui.removePairButton.connect("clicked(bool)", self.onRemovePair)
        self.ui.trainButton.connect("clicked(bool)", self.onTrainButton)
        self.ui.showPlotInLayoutButton.connect("clicked(bool)", self.onShowPlotInLayout)
        self.ui.exportMeshesButton.connect("clicked(bool)", self.onExportMeshes)

        for name in ("statusWidget", "messageLabel", "resultsWidget", "qualityLabel", "trainingStatusWidget",
                     "trainingPlotWidget", "showPlotInLayoutButton"):
            getattr(self.ui, name).visible = False  # nothing to show before a run
        self.populateModelSelector()
        self.initializeParameterNode()

    # -- lifecycle (called by the module widget)
    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def cleanup(self) -> None:
        """Slicer closes: stop the timer and the processes (never leave orphans behind)."""
        self._timer.stop()
        self.cancelRuns()
        self.setParameterNode(None)
        self._observer.removeObservers()

    def cancelRuns(self) -> None:
        for run in (self._segmentationRun, self._trainingRun):
            if run is not None and run.running:
                run.cancel()
                run.wait(30)

    def onSceneStartClose(self, caller, event) -> None:
        self.cancelRuns()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.isVisible():
            self.initializeParameterNode()

    # -- parameter node
    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        pn = self._parameterNode
        if not pn.inputVolume:
            volumes = [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                       if not n.IsA("vtkMRMLLabelMapVolumeNode")]
            if volumes:
                pn.inputVolume = volumes[0]
        if not pn.modelPath and self.ui.modelSelector.count:
            path = self.ui.modelSelector.itemData(0) or ""
            card = self.showModelCard(path)
            with slicer.util.NodeModify(pn):
                pn.modelPath = path
                if card is not None:
                    self.applyCardDefaults(card)
        else:
            self.showModelCard(pn.modelPath)

    def setParameterNode(self, parameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self._observer.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = parameterNode
        if self._parameterNode:
            # widgets with a SlicerParameterName property in the .ui are bound automatically
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self._observer.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
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
        self.ui.applyButton.text = _("Cancel") if segmenting else _("Apply")
        self.ui.applyButton.enabled = segmenting or canApply
        self.ui.applyButton.toolTip = (_("Stop the segmentation") if segmenting else
                                       _("Segment the bones") if canApply else _("Select an input volume and a model"))
        for w in (self.ui.inputVolumeSelector, self.ui.modelSelector, self.ui.loadModelButton,
                  self.ui.advancedGroupBox, self.ui.outputSegmentationSelector):
            w.enabled = not segmenting
        hasData = bool(pn and ((pn.trainingFromScene and len(pn.trainingVolumes) > 0)
                               or (not pn.trainingFromScene and pn.trainingDataFolder)))
        canTrain = bool(hasData and pn.trainingOutputBundle)
        self.ui.trainButton.text = _("Cancel training") if training else _("Train")
        self.ui.trainButton.enabled = training or canTrain
        self.ui.trainButton.toolTip = (_("Stop the training") if training else _("Train a new model") if canTrain else
                                       _("Choose the training data and where to save the new model"))
        for name in ("dataFolderRadioButton", "sceneDataRadioButton", "bonesComboBox", "expertGroupBox",
                     "epochsSpinBox", "patienceSpinBox", "augmentationCheckBox", "outputBundlePathLineEdit"):
            getattr(self.ui, name).enabled = not training
        fromScene = bool(pn and pn.trainingFromScene)
        self.ui.dataFolderPathLineEdit.enabled = not training and not fromScene
        self.ui.scenePairsWidget.enabled = not training and fromScene

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
        label = path.name + (" " + _("(default)") if path == bundles.defaultBundlePath() else "")
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
        """Show the summary (and the full card, collapsed) of the bundle at ``path``; returns the card."""
        card = None
        if not path:
            summary = _("No model: click <i>Load...</i> to choose a model folder.")
        else:
            try:
                card = self.logic.readCard(path)
                summary = modelSummary(card)
            except KneeSegmentationError as exc:
                summary = f"<span style='color:#c00'>{html.escape(exc.message)}</span>"
        self.ui.modelSummaryLabel.text = summary
        self.ui.modelCardTextBrowser.setHtml(bundles.describeCard(card, path) if card is not None else "")
        self.ui.modelCardGroupBox.visible = card is not None
        return card

    def applyCardDefaults(self, card) -> None:
        """Preset N4 and the slice planes to what the model was trained with (the user may change them)."""
        preprocessing = card.get("preprocessing") or {}
        pn = self._parameterNode
        pn.n4 = bool(preprocessing.get("n4", False))
        planes = set(preprocessing.get("planes") or [])
        pn.planeSagittal, pn.planeCoronal, pn.planeAxial = ("sagittal" in planes, "coronal" in planes, "axial" in planes)

    def onLoadModelBundle(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Choose a model folder"))
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

    def _cancelledOrCleared(self, run) -> bool:
        """The button of a running ``run`` cancels it (True); otherwise the message and log are cleared."""
        if run is not None and run.running:
            run.cancel()
            return True
        self.clearMessage()
        self.ui.logTextEdit.clear()
        return False

    def onApplyButton(self) -> None:
        if self._cancelledOrCleared(self._segmentationRun):
            return
        pn = self._parameterNode
        try:
            validateInputVolume(pn.inputVolume)  # bad input is refused before anything is installed or run
            self.logic.readCard(pn.modelPath)
            self.ensureDependencies(pn.modelPath, training=False)
            options = SegmentationOptions(n4=pn.n4, planes=self._planes(), device=pn.device.value)
            self._segmentationRun = self.logic.startSegmentation(
                pn.inputVolume, model=pn.modelPath or None, outputSegmentation=pn.outputSegmentation, options=options,
                onProgress=self.onSegmentationProgress, onLog=self.onLog, onFinished=self.onSegmentationFinished)
        except KneeSegmentationError as exc:
            self.showError(exc)
            return
        self.ui.resultsWidget.visible = False
        self.ui.progressBar.value = 0
        self.ui.stageLabel.text = _("starting")
        self.ui.statusWidget.visible = True
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
        self.ui.statusWidget.visible = False
        if run.status == "succeeded":
            node = run.segmentationNode
            self.showResults(node, run.volumeNode)
            self.showQuality(run.quality)
            self.showMessage(_("Done in {seconds:.0f} s: '{name}' has {count} segments.").format(
                seconds=run.elapsed, name=node.GetName(), count=node.GetSegmentation().GetNumberOfSegments()))
        self.showRunEnd(run)

    def showRunEnd(self, run) -> None:
        """A cancelled run says so; a failed one shows its error (dialog, log); then the buttons follow."""
        if run.status == "cancelled":
            self.showMessage(run.error.message)
        elif run.status == "failed":
            self.showError(run.error)
        self.updateButtons()

    def showResults(self, segmentationNode, volumeNode) -> None:
        """Bone volumes (Segment Statistics, into a table node), Show 3D, the input as background."""
        table = statistics.boneVolumeTable(segmentationNode)
        self.ui.volumesTableView.setMRMLTableNode(table)
        self.ui.show3DButton.setSegmentationNode(segmentationNode)
        self.ui.resultsWidget.visible = True
        slicer.util.setSliceViewerLayers(background=volumeNode, fit=False)

    def showQuality(self, quality) -> None:
        """A plain warning above the volumes when the result is flagged (kneeseg's quality score)."""
        warning = results.qualityWarning(quality)
        self.ui.qualityLabel.text = f"<span style='color:#b35900'>{html.escape(warning)}</span>" if warning else ""
        self.ui.qualityLabel.visible = bool(warning)

    def onExportMeshes(self) -> None:
        run = self._segmentationRun
        node = run.segmentationNode if run is not None else None
        if node is None or node.GetScene() is not slicer.mrmlScene:
            self.showMessage(_("There is no segmentation result to export meshes from."), error=True)
            return
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Choose a folder for the meshes"))
        if not folder:
            return
        try:
            with slicer.util.WaitCursor():
                written = exportMeshes(node, run.volumeNode, folder)
        except KneeSegmentationError as exc:
            self.showError(exc)
            return
        self.showMessage(_("Wrote {count} bone meshes (STL and VTP, LPS mm) to {folder}.").format(
            count=len(written), folder=folder))

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
            self.showMessage(_("Choose a volume and its segmentation, then click Add pair."), error=True)
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
        if self._cancelledOrCleared(self._trainingRun):
            return
        pn = self._parameterNode
        options = TrainingOptions(epochs=pn.trainingEpochs, patience=pn.trainingPatience,
                                  outputMode=pn.trainingBones.value, width=pn.trainingWidth,
                                  augmentation=pn.trainingAugmentation)
        try:
            self.ensureDependencies(None, training=True)
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
        self.ui.trainingStageLabel.text = _("starting")
        self.ui.trainingStatusWidget.visible = True
        self._timer.start()
        self.updateButtons()

    def showTrainingPlot(self, plot) -> None:
        """The loss and Dice chart in the panel (its own plot view node), with a button for the layout."""
        self._plotViewNode = slicer.mrmlScene.GetSingletonNode(PLOT_VIEW_TAG, "vtkMRMLPlotViewNode")
        if self._plotViewNode is None:
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLPlotViewNode")
            node.UnRegister(None)
            node.SetName(_("Knee Segmentation training plot"))
            node.SetLayoutName(PLOT_VIEW_TAG)
            node.SetSingletonTag(PLOT_VIEW_TAG)
            self._plotViewNode = slicer.mrmlScene.AddNode(node)
        self._plotViewNode.SetPlotChartNodeID(plot.chartNode.GetID())
        self.ui.trainingPlotWidget.setMRMLPlotViewNode(self._plotViewNode)
        self.ui.trainingPlotWidget.visible = True
        self.ui.showPlotInLayoutButton.visible = True

    def onShowPlotInLayout(self) -> None:
        run = self._trainingRun
        if run is not None and run.plot is not None:
            slicer.modules.plots.logic().ShowChartInLayout(run.plot.chartNode)

    def onTrainingProgress(self, run) -> None:
        self.ui.trainingProgressBar.value = int(round(run.fraction * 100))
        self.ui.trainingStageLabel.text = run.message or run.stage

    def onTrainingFinished(self, run) -> None:
        self.ui.trainingStatusWidget.visible = False
        if run.status == "succeeded":
            path = run.bundlePath
            if self.ui.modelSelector.findData(str(path)) < 0:
                self._addModelItem(path)
            self._rememberBundle(path)
            (self._parameterNode or self.logic.getParameterNode()).modelPath = str(path)  # also after leaving the module
            self.showMessage(_("Model trained in {minutes:.1f} min and selected for segmentation: {path}").format(
                minutes=run.elapsed / 60, path=path))
        self.showRunEnd(run)

    # -- dependencies and messages
    def ensureDependencies(self, bundlePath, training) -> None:
        """Ask once (one dialog listing every missing package and its size), then install."""
        missing = dependencies.missingPackages(bundlePath or None, training=training)
        if not missing:
            return
        text = (_("Knee Segmentation needs Python packages that this Slicer does not have yet:") + "\n\n"
                + dependencies.describeMissing(missing) + "\n\n"
                + _("Install them now? (Slicer may need a restart.)"))
        if not slicer.util.confirmOkCancelDisplay(text, windowTitle=_("Knee Segmentation: install Python packages")):
            raise KneeSegmentationError(dependencies.declinedMessage(missing), DEPENDENCY)
        with slicer.util.WaitCursor():
            dependencies.install(missing, log=lambda line: self.ui.logTextEdit.appendPlainText(line))

    def clearMessage(self) -> None:
        self.ui.messageLabel.text = ""
        self.ui.messageLabel.visible = False

    def showMessage(self, text, error=False) -> None:
        color = "#c00" if error else "#080"
        body = html.escape(text).replace("\n", "<br>")
        self.ui.messageLabel.text = f"<span style='color:{color}'>{body}</span>"
        self.ui.messageLabel.visible = True

    def showError(self, exc) -> None:
        message = exc.message if isinstance(exc, KneeSegmentationError) else str(exc)
        logging.error(f"KneeSegmentation: {message}")
        self.showMessage(message, error=True)
        details = {}
        if getattr(exc, "log", ""):
            self.ui.logGroupBox.collapsed = False
            details["detailedText"] = exc.log
        slicer.util.errorDisplay(message, windowTitle=_("Knee Segmentation"), **details)

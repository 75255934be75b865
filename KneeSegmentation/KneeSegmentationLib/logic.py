"""KneeSegmentationLogic: segment knee bones and train models from a Slicer scene, out of process.

Everything here works on MRML nodes through ``slicer`` (MRML/logic classes), ``vtk`` and ``numpy``;
it never imports ``qt``, ``ctk`` or uses ``slicer.app``, so it runs in Slicer, in ``PythonSlicer``
and headless on the ``slicer-core`` wheel alike.

How a segmentation runs:

1. the input volume is checked (3D, scalar, not a label map) and written to a temporary NRRD by a
   storage node that is not added to the scene;
2. ``python -m kneeseg segment ... --progress json`` runs in its own process group; its progress
   lines are read by threads and handed over by :meth:`SegmentationRun.poll` (call it from a
   ``QTimer``; :meth:`SegmentationRun.wait` blocks instead);
3. only when the process succeeded is its label map read (again without touching the scene),
   checked to have the input's exact geometry, turned into one segment per bone (name, colour,
   SNOMED CT terminology from the bundle's card) and then committed in one step: a new
   segmentation node, or the content of the chosen output node replaced.

Any failure before step 3 ends leaves the scene exactly as it was.
"""

import json
import math
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import slicer
import vtk

from kneeseg import contract
from kneeseg.bundle import why_not_replaceable
from kneeseg.contract import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_OK

from . import bundles, results, terminology
from .errors import CANCELLED, DEPENDENCY, INPUT, INTERNAL, KneeSegmentationError
from .plotting import TrainingPlot
from .process import MODULE_DIR, ProcessRun, coreEnvironment, findPythonExecutable

BINARY_LABELMAP = "Binary labelmap"
PLANES = contract.PLANES
DEVICES = contract.DEVICES
OUTPUT_MODES = contract.OUTPUT_MODES
GEOMETRY_TOLERANCE = 1e-3  # mm / direction cosine
ATTRIBUTE_PREFIX = "KneeSegmentation."


@dataclass
class SegmentationOptions:
    """Options of one segmentation run (the CLI's flags)."""

    n4: bool = None  # N4 bias-field correction: True/False, or None for the bundle's setting
    planes: tuple = ()  # slice planes to predict and fuse; empty: the bundle's default
    device: str = "auto"  # "auto", "cpu" or "gpu"
    closedSurface: bool = False  # also build the 3D closed-surface representation

    def check(self):
        bad = [p for p in self.planes if p not in PLANES]
        if bad:
            raise KneeSegmentationError(f"Unknown slice plane {bad[0]!r}; use {', '.join(PLANES)}.", INPUT)
        if self.device not in DEVICES:
            raise KneeSegmentationError(f"Unknown device {self.device!r}; use {', '.join(DEVICES)}.", INPUT)


def _trainDefault(dest):
    return contract.option("train", dest).default


@dataclass
class TrainingOptions:
    """Options of one training run; the defaults are the ``kneeseg train`` defaults (``kneeseg.contract``)."""

    epochs: int = _trainDefault("epochs")
    patience: int = _trainDefault("patience")  # epochs without a better validation score before stopping
    dims: int = _trainDefault("dims")
    outputMode: str = _trainDefault("output_mode")
    width: int = _trainDefault("filters")  # filters in the first U-Net level
    augmentation: bool = True

    def check(self):
        if int(self.epochs) < 1:
            raise KneeSegmentationError("Epochs must be at least 1.", INPUT)
        if int(self.patience) < 0:
            raise KneeSegmentationError("Patience cannot be negative.", INPUT)
        if int(self.dims) not in contract.TRAINABLE_DIMS:
            raise KneeSegmentationError(f"Only {' or '.join(f'{d}D' for d in contract.TRAINABLE_DIMS)} models can be "
                                        f"trained; a {int(self.dims)}D model cannot.", INPUT)
        if self.outputMode not in OUTPUT_MODES:
            raise KneeSegmentationError(f"Output mode must be one of {', '.join(OUTPUT_MODES)}.", INPUT)
        if int(self.width) < 4:
            raise KneeSegmentationError("Network width must be at least 4 filters.", INPUT)


# --------------------------------------------------------------------------------------------------
# Volumes and geometry (no scene changes)


def _name(node) -> str:
    return node.GetName() if node is not None and node.GetName() else "(unnamed)"


def validateInputVolume(volumeNode) -> None:
    """Raise ``KneeSegmentationError`` (kind input) unless ``volumeNode`` is a 3D scalar MRI volume."""
    if volumeNode is None:
        raise KneeSegmentationError("No input volume selected: choose the knee MRI volume to segment.", INPUT)
    name = _name(volumeNode)
    if volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
        raise KneeSegmentationError(f"'{name}' is a label map, not an image: choose the MRI volume to segment.", INPUT)
    if not volumeNode.IsA("vtkMRMLScalarVolumeNode"):
        raise KneeSegmentationError(f"'{name}' is a {volumeNode.GetClassName()}, not a scalar volume: choose the MRI volume.", INPUT)
    for cls, what in (("vtkMRMLDiffusionTensorVolumeNode", "a diffusion tensor volume"),
                      ("vtkMRMLDiffusionWeightedVolumeNode", "a diffusion-weighted (4D) volume"),
                      ("vtkMRMLMultiVolumeNode", "a 4D multi-volume"),
                      ("vtkMRMLVectorVolumeNode", "a vector (colour) volume")):
        if volumeNode.IsA(cls):
            raise KneeSegmentationError(f"'{name}' is {what}: choose a single 3D scalar MRI volume "
                                        "(for a 4D series, extract one frame first).", INPUT)
    image = volumeNode.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0:
        raise KneeSegmentationError(f"'{name}' has no image data.", INPUT)
    components = image.GetNumberOfScalarComponents()
    if components != 1:
        raise KneeSegmentationError(f"'{name}' has {components} values per voxel (a 4D, vector or colour volume): "
                                    "choose a single 3D scalar MRI volume.", INPUT)
    dims = image.GetDimensions()
    if min(dims) < 2:
        raise KneeSegmentationError(f"'{name}' is a 2D image ({dims[0]} x {dims[1]} x {dims[2]} voxels): "
                                    "a 3D volume is needed.", INPUT)
    low, high = image.GetScalarRange()
    if not (math.isfinite(low) and math.isfinite(high)):
        raise KneeSegmentationError(f"'{name}' contains NaN or infinite voxels.", INPUT)
    if low == high:
        raise KneeSegmentationError(f"'{name}' is constant (every voxel is {low:g}): nothing to segment.", INPUT)


def ijkToRas(volumeNode) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def geometryOf(volumeNode):
    return tuple(volumeNode.GetImageData().GetDimensions()), ijkToRas(volumeNode)


def sameGeometry(a, b, tol=GEOMETRY_TOLERANCE) -> bool:
    """True when two (dims, IJK-to-RAS) describe the same voxel grid in physical space.

    An axis may run the other way: Slicer's reader stores a left-handed grid (as DICOM often gives)
    with its slice axis reversed, which is the same set of voxels.
    """
    (dimsA, a), (dimsB, b) = a, b
    if tuple(dimsA) != tuple(dimsB):
        return False
    for axis in range(3):
        if not (np.allclose(a[:3, axis], b[:3, axis], atol=tol) or np.allclose(a[:3, axis], -b[:3, axis], atol=tol)):
            return False
    corners = np.array([[i, j, k, 1.0] for i in (0, dimsA[0] - 1) for j in (0, dimsA[1] - 1) for k in (0, dimsA[2] - 1)])
    pointsA, pointsB = corners @ a.T, corners @ b.T
    return all(np.linalg.norm(pointsB[:, :3] - p[:3], axis=1).min() < tol for p in pointsA)


def writeVolume(volumeNode, path) -> None:
    """Write a volume with a storage node that stays out of the scene (the scene is not modified)."""
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(False)
    if not storage.WriteData(volumeNode):
        raise KneeSegmentationError(f"Could not write '{_name(volumeNode)}' to the temporary folder {Path(path).parent}.", INTERNAL)


def readLabelmap(path):
    """Read a label map into a label map node that is not in any scene."""
    node = slicer.vtkMRMLLabelMapVolumeNode()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetSingleFile(True)
    if not storage.ReadData(node) or node.GetImageData() is None:
        raise KneeSegmentationError(f"The segmentation process wrote an unreadable label map: {path}", INTERNAL)
    return node


def labelArray(orientedImage) -> np.ndarray:
    from vtk.util.numpy_support import vtk_to_numpy

    return vtk_to_numpy(orientedImage.GetPointData().GetScalars())


def voxelVolumeMl(volumeNode) -> float:
    return abs(float(np.linalg.det(ijkToRas(volumeNode)[:3, :3]))) / 1000.0


def buildSegmentation(segmentation, labelmapNode, labels, log=None) -> dict:
    """Fill ``segmentation`` (a ``vtkSegmentation``) with one segment per label of the card.

    All segments share one binary-labelmap layer (the label map itself), each with its label value;
    a label absent from the image gives an empty segment (so the bones are always listed). Values
    in the image that the card does not know are dropped (and logged). Returns voxel counts by name.
    """
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    oriented = logic.CreateOrientedImageDataFromVolumeNode(labelmapNode)
    if oriented is None:
        raise KneeSegmentationError("Could not convert the label map for the segmentation.", INTERNAL)
    values = labelArray(oriented)
    known = {int(label["value"]) for label in labels}
    present = set(np.unique(values).tolist()) - {0}
    unknown = sorted(present - known)
    if unknown:
        values[np.isin(values, unknown)] = 0
        oriented.Modified()
        if log:
            log(f"Warning: label values {unknown} are not in the model card and were dropped.")
    setSource = getattr(segmentation, "SetSourceRepresentationName", None) or segmentation.SetMasterRepresentationName
    setSource(BINARY_LABELMAP)
    counts = {}
    for label in sorted(labels, key=lambda l: int(l["value"])):
        value = int(label["value"])
        segment = slicer.vtkSegment()
        segment.SetName(str(label["name"]))
        segment.SetNameAutoGenerated(False)
        color = label.get("color") or [128, 128, 128]
        segment.SetColor(*(float(c) / 255.0 for c in color[:3]))
        segment.SetColorAutoGenerated(False)
        segment.SetLabelValue(value)
        entry = terminology.terminologyEntry(label)
        if entry:
            segment.SetTerminology(entry)
        segment.AddRepresentation(BINARY_LABELMAP, oriented)
        segmentId = segmentation.GenerateUniqueSegmentID(str(label["name"]))
        segmentation.AddSegment(segment, segmentId)
        counts[str(label["name"])] = int(np.count_nonzero(values == value))
    return counts


def boneLabelmapNode(segmentationNode, volumeNode, what):
    """A label map node on ``volumeNode``'s grid holding the bones of ``segmentationNode`` (segments
    matched to femur, tibia, fibula and patella by SNOMED code or name, with the kneeseg values).
    ``what`` names the pair in errors (raised when no segment is a bone or none lies in the volume)."""
    from kneeseg.labels import SEPARATE_BONES

    byCode = {b.snomed_code: b.value for b in SEPARATE_BONES}
    byName = {b.name.lower(): b.value for b in SEPARATE_BONES}
    segmentation = segmentationNode.GetSegmentation()
    ids, values = vtk.vtkStringArray(), vtk.vtkIntArray()
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        code = terminology.typeCode(segment.GetTerminology())
        value = byCode.get(code[1]) if code else None
        value = value or byName.get(segment.GetName().strip().lower())
        if value:
            ids.InsertNextValue(segmentation.GetNthSegmentID(i))
            values.InsertNextValue(value)
    if ids.GetNumberOfValues() == 0:
        raise KneeSegmentationError(
            f"{what}: '{_name(segmentationNode)}' has no segment named or coded as "
            + ", ".join(b.name for b in SEPARATE_BONES) + ".", INPUT)
    reference = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(volumeNode)
    merged = slicer.vtkOrientedImageData()
    if not segmentationNode.GenerateMergedLabelmapForAllSegments(
            merged, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, reference, ids, values):
        raise KneeSegmentationError(f"{what}: '{_name(segmentationNode)}' could not be "
                                    f"resampled onto '{_name(volumeNode)}'.", INPUT)
    labelNode = slicer.vtkMRMLLabelMapVolumeNode()
    slicer.vtkSlicerSegmentationsModuleLogic.CopyOrientedImageDataToVolumeNode(merged, labelNode)
    if not sameGeometry(geometryOf(labelNode), geometryOf(volumeNode)):
        raise KneeSegmentationError(f"{what}: the label map of '{_name(segmentationNode)}' "
                                    f"does not match the geometry of '{_name(volumeNode)}'.", INPUT)
    if not labelArray(merged).any():
        raise KneeSegmentationError(f"{what}: no bone of '{_name(segmentationNode)}' lies "
                                    f"inside '{_name(volumeNode)}' (mismatched geometry?).", INPUT)
    return labelNode


def writeLabelmap(labelNode, path, what) -> None:
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not storage.WriteData(labelNode):
        raise KneeSegmentationError(f"Could not write {what}.", INTERNAL)


def exportMeshes(segmentationNode, volumeNode, folder) -> dict:
    """Write ``<bone>.stl`` and ``<bone>.vtp`` of each bone of ``segmentationNode`` into ``folder``.

    The bones are resampled onto ``volumeNode``'s grid (the grid the result was made on) and meshed
    by ``kneeseg.meshes``, in LPS millimetres as Slicer writes models. Returns bone name -> files,
    enclosed volume and triangle count. Raises ``KneeSegmentationError`` when there is nothing to
    export or the folder cannot be written.
    """
    import SimpleITK as sitk

    from kneeseg.labels import SEPARATE_BONES
    from kneeseg.meshes import FORMATS, mesh_path, write_meshes

    if segmentationNode is None or volumeNode is None:
        raise KneeSegmentationError("There is no segmentation to export meshes from.", INPUT)
    taken = [mesh_path(folder, b.name, suffix).name for b in SEPARATE_BONES for suffix in FORMATS
             if mesh_path(folder, b.name, suffix).exists()]
    if taken:  # another case's meshes, perhaps: never replaced without a word
        raise KneeSegmentationError(f"{folder} already holds {', '.join(taken)}: choose an empty folder "
                                    "(the meshes of each result in a folder of their own).", INPUT)
    labelNode = boneLabelmapNode(segmentationNode, volumeNode, "Export meshes")
    work = Path(tempfile.mkdtemp(prefix="KneeSegmentation-meshes-"))
    try:
        path = work / "bones.nrrd"
        writeLabelmap(labelNode, path, "the label map of the meshes")
        labelmap = sitk.ReadImage(str(path))
        try:
            return write_meshes(labelmap, SEPARATE_BONES, folder)
        except OSError as exc:
            raise KneeSegmentationError(f"Could not write the meshes into {folder}: {exc}", INPUT) from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)


def placeInSubjectHierarchy(scene, dataNode, besideNode) -> int:
    """Put ``dataNode`` under the same parent (the study, for DICOM data) as ``besideNode``.

    Returns the item ID (0 when the scene has no subject hierarchy).
    """
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if shNode is None:
        return 0
    sceneItem = shNode.GetSceneItemID()
    besideItem = shNode.GetItemByDataNode(besideNode)
    parent = shNode.GetItemParent(besideItem) if besideItem else sceneItem
    if not parent:
        parent = sceneItem
    item = shNode.GetItemByDataNode(dataNode)
    if not item:
        item = shNode.CreateItem(parent, dataNode)  # headless scenes: Slicer's GUI plugins create items
    elif shNode.GetItemParent(item) != parent:
        shNode.SetItemParent(item, parent)
    return item


# --------------------------------------------------------------------------------------------------
# Runs


class CoreRun:
    """A ``kneeseg`` process run: progress, log, status, and the final error or result.

    ``status`` is "running", "succeeded", "failed" or "cancelled". Callbacks (all optional, called
    from :meth:`poll`, i.e. from the caller's thread): ``onProgress(run)``, ``onLog(run, line)``,
    ``onFinished(run)``.
    """

    what = "process"

    def __init__(self, logic, command, workDir, onProgress=None, onLog=None, onFinished=None, keepFiles=False):
        self.logic = logic
        self.command = command
        self.workDir = Path(workDir)
        self.onProgress = onProgress
        self.onLog = onLog
        self.onFinished = onFinished
        self.keepFiles = keepFiles
        self.status = "running"
        self.stage = "starting"
        self.fraction = 0.0
        self.message = ""
        self.log = []
        self.error = None
        self.result = None
        self.errorEvent = None
        self.returncode = None
        self.timedOut = False
        self.startTime = time.monotonic()
        self.elapsed = 0.0
        self._process = None

    def _start(self):
        self._addLog("$ " + " ".join(self.command))
        try:
            self._process = ProcessRun.start(self.command, env=coreEnvironment(self.logic.moduleDir), cwd=str(self.workDir))
        except OSError as exc:
            self._cleanup()
            raise KneeSegmentationError(f"Could not start the {self.what} ({self.command[0]}): {exc}", INTERNAL) from exc

    # -- progress
    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def logText(self) -> str:
        return "\n".join(self.log)

    def _addLog(self, line):
        self.log.append(line)
        if self.onLog:
            self.onLog(self, line)

    def poll(self, timeout: float = 0.0) -> bool:
        """Handle what the process wrote since the last call; True while it still runs."""
        if not self.running:
            return False
        for event in self._process.poll(timeout):
            self._handle(event)
        return self.running

    def wait(self, timeout: float = None) -> "CoreRun":
        """Block until the run ends; stop it after ``timeout`` seconds. Returns self."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.running:
            if deadline is not None and time.monotonic() > deadline and not self._process.cancelRequested:
                self.timedOut = True
                self._process.cancel()
            self.poll(0.1)
        return self

    def cancel(self) -> None:
        """Stop the process tree; the run then finishes as "cancelled" on the next :meth:`poll`."""
        if self.running and self._process is not None:
            self._addLog("Cancelling ...")
            self._process.cancel()

    def _handle(self, event):
        if event.kind == "progress":
            progress = event.progress
            self.stage, self.fraction, self.message = progress["stage"], progress["fraction"], progress["message"]
            if progress["stage"] == "done":
                self.result = progress.get("result") or {}
            elif progress["stage"] == "error":
                self.errorEvent = progress
            self._onProgressEvent(progress)
            self._addLog(f"[{self.stage} {self.fraction * 100:3.0f}%] {self.message}".rstrip())
            if self.onProgress:
                self.onProgress(self)
        elif event.kind == "log":
            self._addLog(event.text)
        elif event.kind == "exit":
            self.returncode = event.returncode
            self._finish()

    def _onProgressEvent(self, progress):
        pass

    # -- end
    def _finish(self):
        self.elapsed = time.monotonic() - self.startTime
        try:
            if self._process.cancelRequested or self.returncode == EXIT_CANCELLED:
                raise KneeSegmentationError(self._cancelMessage(), CANCELLED)
            if self.returncode != EXIT_OK or self.result is None:
                raise self._failure()
            self._succeed()
            self.status = "succeeded"
            self._addLog(f"Finished in {self.elapsed:.1f} s.")
        except KneeSegmentationError as exc:
            exc.log = self.logText
            self.error = exc
            self.status = "cancelled" if exc.kind == CANCELLED else "failed"
            self._addLog(("Cancelled: " if exc.kind == CANCELLED else "Error: ") + exc.message)
        except Exception as exc:  # a bug in the logic: report it like an internal error, keep the traceback
            self._addLog(traceback.format_exc())
            self.error = KneeSegmentationError(f"Importing the result failed: {exc}", INTERNAL, self.logText)
            self.status = "failed"
        finally:
            self._cleanup()
            if self.onFinished:
                self.onFinished(self)

    def _cancelMessage(self):
        if self.timedOut:
            return f"The {self.what} took too long and was stopped; nothing was changed in the scene."
        return f"The {self.what} was cancelled; nothing was changed in the scene."

    def _failure(self) -> KneeSegmentationError:
        rc = self.returncode
        event = self.errorEvent or {}
        detail = event.get("message", "").strip()
        lastLines = [line for line in self.log if line.strip() and not line.startswith(("$ ", "["))]
        if event.get("error") == contract.ERROR_MISSING_PACKAGE:
            package = event.get("package") or "?"
            return KneeSegmentationError(
                f"The Python package '{package}' is missing, so the {self.what} cannot run. "
                "Install the dependencies (Apply offers to) and try again.", DEPENDENCY)
        if rc == EXIT_BAD_INPUT or event.get("error") == contract.ERROR_INPUT:
            return KneeSegmentationError(detail or (lastLines[-1] if lastLines else f"the {self.what} refused its input"), INPUT)
        if rc is not None and rc < 0:
            import signal as _signal

            try:
                signame = _signal.Signals(-rc).name
            except ValueError:
                signame = f"signal {-rc}"
            hint = " (often: not enough memory)" if -rc == getattr(_signal, "SIGKILL", 9) else ""
            return KneeSegmentationError(f"The {self.what} was killed by {signame}{hint} before it finished; "
                                         "nothing was changed in the scene.", INTERNAL)
        if rc == EXIT_OK:
            return KneeSegmentationError(f"The {self.what} ended without reporting a result; see the log.", INTERNAL)
        why = detail or (lastLines[-1] if lastLines else "no message")
        return KneeSegmentationError(f"The {self.what} failed (exit code {rc}): {why}. The full log is kept in the panel.", INTERNAL)

    def _succeed(self):
        raise NotImplementedError

    def _cleanup(self):
        if not self.keepFiles:
            shutil.rmtree(self.workDir, ignore_errors=True)


class SegmentationRun(CoreRun):
    what = "segmentation"

    def __init__(self, logic, volumeNode, bundlePath, card, options, outputSegmentation, command, workDir, outputPath, **kwargs):
        super().__init__(logic, command, workDir, **kwargs)
        self.volumeNode = volumeNode
        self.bundlePath = Path(bundlePath)
        self.card = card
        self.options = options
        self.outputSegmentation = outputSegmentation
        self.outputPath = Path(outputPath)
        self.inputGeometry = geometryOf(volumeNode)
        self.segmentationNode = None
        self.volumesMl = {}
        self.quality = None  # kneeseg.quality's record: score, flag, reasons (results.qualityWarning words it)

    def _succeed(self):
        self.segmentationNode, self.volumesMl = self.logic._importResult(self)
        self.quality = results.qualityOfResult(self.result, self.workDir / "volumes.json")
        results.storeQuality(self.segmentationNode, self.quality)


class TrainingRun(CoreRun):
    what = "training"

    def __init__(self, logic, command, workDir, outputBundle, plot=None, onEpoch=None, **kwargs):
        super().__init__(logic, command, workDir, **kwargs)
        self.outputBundle = Path(outputBundle)
        self.plot = plot
        self.onEpoch = onEpoch
        self.epochs = []
        self.bundlePath = None

    def _onProgressEvent(self, progress):
        if progress["stage"] == "epoch" and "epoch" in progress:
            logs = progress.get("logs") or {}
            self.epochs.append((progress["epoch"], logs))
            if self.plot is not None:
                self.plot.addEpoch(progress["epoch"], logs)
            if self.onEpoch:
                self.onEpoch(self, progress["epoch"], logs)

    def _succeed(self):
        bundle = Path((self.result or {}).get("bundle") or self.outputBundle)
        if not bundles.isBundle(bundle):
            raise KneeSegmentationError(f"Training finished but no model bundle was written at {bundle}.", INTERNAL)
        self.bundlePath = bundle


# --------------------------------------------------------------------------------------------------
# Logic


class KneeSegmentationLogic:
    """Segmentation and training on a MRML scene.

    Arguments are injectable for tests and scripts: ``scene`` (default ``slicer.mrmlScene``),
    ``python`` (default ``PythonSlicer`` inside Slicer, else this interpreter), ``moduleDir`` (put on
    the child's ``PYTHONPATH``), ``cardReader`` (default ``kneeseg.bundle.read_card``),
    ``terminologiesLogic`` (loads the knee terminology context), ``tempDir``.
    """

    def __init__(self, scene=None, python=None, moduleDir=None, cardReader=None, terminologiesLogic=None, tempDir=None):
        self.scene = scene if scene is not None else getattr(slicer, "mrmlScene", None)
        if self.scene is None:
            raise KneeSegmentationError("No MRML scene given (and slicer.mrmlScene is not set).", INTERNAL)
        self.python = python or findPythonExecutable()
        self.moduleDir = Path(moduleDir or MODULE_DIR)
        self.cardReader = cardReader
        self.useApplication(terminologiesLogic, tempDir)

    def useApplication(self, terminologiesLogic=None, tempDir=None) -> None:
        """Use the application's terminologies logic (loads the knee terminology) and temporary folder."""
        self.terminologiesLogic = terminologiesLogic
        self.tempDir = tempDir
        terminology.ensureLoaded(terminologiesLogic)

    # -- bundles
    @staticmethod
    def defaultBundlePath() -> Path:
        return bundles.defaultBundlePath()

    def readCard(self, bundlePath) -> dict:
        return bundles.readCard(bundlePath, reader=self.cardReader)

    def _bundle(self, model):
        path = Path(model) if model else self.defaultBundlePath()
        if not model and not bundles.isBundle(path):
            raise KneeSegmentationError(f"The default model bundle is missing ({path}); load a model bundle.", INPUT)
        return path, self.readCard(path)

    def _workDir(self, prefix):
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.tempDir))

    # -- segmentation
    def _command(self, command, **values) -> list:
        try:
            return [self.python, "-m", "kneeseg", *contract.command_line(command, progress="json", **values)]
        except ValueError as exc:
            raise KneeSegmentationError(str(exc), INPUT) from exc

    def segmentationCommand(self, inputPath, outputPath, bundlePath, options, volumesJson=None) -> list:
        return self._command("segment", inputs=[str(inputPath)], output=str(outputPath), model=str(bundlePath),
                             device=options.device, n4=options.n4,
                             planes=",".join(options.planes) if options.planes else None,
                             volumes_json=str(volumesJson) if volumesJson else None)

    def startSegmentation(self, volumeNode, model=None, outputSegmentation=None, options=None,
                          onProgress=None, onLog=None, onFinished=None, keepFiles=False, **optionKwargs) -> SegmentationRun:
        """Check the input, write it out and start ``kneeseg segment``; returns the running run.

        ``model``: a bundle folder (default: the shipped bundle). ``outputSegmentation``: an existing
        ``vtkMRMLSegmentationNode`` whose content is replaced on success (default: a new node).
        Options come as a :class:`SegmentationOptions` or as keywords (``n4``, ``planes``, ``device``,
        ``closedSurface``). Raises ``KneeSegmentationError`` before anything starts on bad input.
        """
        options = options or SegmentationOptions(**optionKwargs)
        if isinstance(options.planes, str):
            options.planes = tuple(p for p in options.planes.split(",") if p)
        options.planes = tuple(options.planes or ())
        options.check()
        validateInputVolume(volumeNode)
        if volumeNode.GetScene() is not self.scene:
            raise KneeSegmentationError(f"'{_name(volumeNode)}' is not in this scene.", INPUT)
        if outputSegmentation is not None and not outputSegmentation.IsA("vtkMRMLSegmentationNode"):
            raise KneeSegmentationError("The output must be a segmentation node.", INPUT)
        bundlePath, card = self._bundle(model)
        workDir = self._workDir("KneeSegmentation-")
        try:
            inputPath = workDir / "input.nrrd"
            outputPath = workDir / "labelmap.nrrd"
            writeVolume(volumeNode, inputPath)
            command = self.segmentationCommand(inputPath, outputPath, bundlePath, options, workDir / "volumes.json")
        except BaseException:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        run = SegmentationRun(self, volumeNode, bundlePath, card, options, outputSegmentation, command, workDir,
                              outputPath, onProgress=onProgress, onLog=onLog, onFinished=onFinished, keepFiles=keepFiles)
        run._start()
        return run

    def segment(self, volumeNode, model=None, outputSegmentation=None, wait=True, timeout=None, **kwargs):
        """Scripting API: segment ``volumeNode`` and return the segmentation node.

        With ``wait=False`` the running :class:`SegmentationRun` is returned instead (poll it).
        Raises ``KneeSegmentationError`` when the run fails or is cancelled.

        Example (Slicer's Python console)::

            logic = KneeSegmentationLogic()
            seg = logic.segment(getNode("MRHead"), n4=True, planes=("sagittal", "coronal"))
        """
        run = self.startSegmentation(volumeNode, model=model, outputSegmentation=outputSegmentation, **kwargs)
        if not wait:
            return run
        run.wait(timeout)
        if run.error is not None:
            raise run.error
        return run.segmentationNode

    def _importResult(self, run):
        """Turn the finished run's label map into segments and commit them to the scene."""
        volumeNode = run.volumeNode
        if volumeNode.GetScene() is not self.scene:
            raise KneeSegmentationError(f"The input volume '{_name(volumeNode)}' was removed while segmenting.", INPUT)
        labelPath = Path(run.result.get("labelmap") or run.outputPath)
        if not labelPath.is_file():
            raise KneeSegmentationError(f"The segmentation process reported success but wrote no label map ({labelPath}).", INTERNAL)
        labelmapNode = readLabelmap(labelPath)
        if not sameGeometry(geometryOf(labelmapNode), run.inputGeometry):
            dims = geometryOf(labelmapNode)[0]
            raise KneeSegmentationError(
                f"The label map's geometry ({dims[0]}x{dims[1]}x{dims[2]}) differs from the input volume's; "
                "the result was not imported.", INTERNAL)
        labels = run.card["labels"]
        segmentation = slicer.vtkSegmentation()
        counts = buildSegmentation(segmentation, labelmapNode, labels, log=run._addLog)
        volumes = self._volumes(run, counts, labelmapNode)
        node = self._commit(run, segmentation, volumes)
        return node, volumes

    def _volumes(self, run, counts, labelmapNode) -> dict:
        reported = (run.result or {}).get("volumes_ml")
        if not reported:
            path = run.workDir / "volumes.json"
            if path.is_file():
                try:
                    data = json.loads(path.read_text())
                    reported = data.get("volumes_ml", data) if isinstance(data, dict) else None
                except ValueError:
                    reported = None
        voxelMl = voxelVolumeMl(labelmapNode)
        volumes = {}
        for name, count in counts.items():
            value = (reported or {}).get(name)
            volumes[name] = float(value) if isinstance(value, (int, float)) else count * voxelMl
        return volumes

    def _commit(self, run, segmentation, volumes):
        """Put the segments into the scene in one step; undo a new node if anything fails."""
        scene = self.scene
        volumeNode = run.volumeNode
        target = run.outputSegmentation
        if target is not None and target.GetScene() is not scene:
            target = None  # the chosen output was deleted meanwhile: make a new one
        created = target is None
        node = slicer.vtkMRMLSegmentationNode() if created else target
        try:
            if created:
                node.GetSegmentation().DeepCopy(segmentation)
                node.SetName(scene.GenerateUniqueName(f"{_name(volumeNode)} knee segmentation"))
                scene.AddNode(node)
                node.CreateDefaultDisplayNodes()
            else:
                wasModified = node.StartModify()
                node.GetSegmentation().DeepCopy(segmentation)
                node.EndModify(wasModified)
                if node.GetDisplayNode() is None:
                    node.CreateDefaultDisplayNodes()
            node.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
            if volumeNode.GetTransformNodeID():
                node.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
            node.SetAttribute(ATTRIBUTE_PREFIX + "Model", str(run.bundlePath))
            node.SetAttribute(ATTRIBUTE_PREFIX + "InputVolume", volumeNode.GetID())
            node.SetAttribute(ATTRIBUTE_PREFIX + "VolumesMl", json.dumps({k: round(v, 3) for k, v in volumes.items()}))
            placeInSubjectHierarchy(scene, node, volumeNode)
            if run.options.closedSurface:
                self.showClosedSurface(node, True)
        except Exception:
            if created and node.GetScene() is scene:
                scene.RemoveNode(node)
            raise
        return node

    @staticmethod
    def showClosedSurface(segmentationNode, show=True) -> None:
        """Build (or drop) the closed-surface representation so the bones show in 3D."""
        if segmentationNode is None:
            return
        if show:
            segmentationNode.CreateClosedSurfaceRepresentation()
        else:
            segmentationNode.RemoveClosedSurfaceRepresentation()

    @staticmethod
    def volumesFromNode(segmentationNode) -> dict:
        """The bone volumes (mL) stored on a segmentation this module made ({} otherwise)."""
        text = segmentationNode.GetAttribute(ATTRIBUTE_PREFIX + "VolumesMl") if segmentationNode else None
        try:
            return json.loads(text) if text else {}
        except ValueError:
            return {}

    # -- training
    def trainingCommand(self, dataDir, outputBundle, options, workDir=None) -> list:
        """``workDir``: checkpoints and history (default: beside the bundle, ``OUTPUT.work``)."""
        return self._command("train", data=str(dataDir), output=str(outputBundle), epochs=int(options.epochs),
                             work=str(workDir) if workDir else None,
                             patience=int(options.patience), dims=int(options.dims), output_mode=options.outputMode,
                             filters=int(options.width), no_augment=not options.augmentation)

    def exportTrainingPairs(self, pairs, folder) -> list:
        """Write (volume node, segmentation node) pairs as ``images/<case>.nrrd`` + ``labels/<case>.nrrd``.

        Each segmentation is resampled onto its volume's grid; segments are matched to the bones by
        SNOMED code or name. Raises on a pair whose segments do not fit the volume.
        """
        folder = Path(folder)
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "labels").mkdir(parents=True, exist_ok=True)
        cases = []
        for index, (volumeNode, segmentationNode) in enumerate(pairs):
            if volumeNode is None:
                raise KneeSegmentationError(f"Training pair {index + 1}: its volume is missing (deleted?).", INPUT)
            validateInputVolume(volumeNode)
            if segmentationNode is None or not segmentationNode.IsA("vtkMRMLSegmentationNode"):
                raise KneeSegmentationError(f"Training pair {index + 1}: choose a segmentation for '{_name(volumeNode)}'.", INPUT)
            labelNode = boneLabelmapNode(segmentationNode, volumeNode, f"Training pair {index + 1}")
            case = f"case{index:03d}"
            writeVolume(volumeNode, folder / "images" / f"{case}.nrrd")
            writeLabelmap(labelNode, folder / "labels" / f"{case}.nrrd", f"the training label map {case}")
            cases.append(case)
        return cases

    def startTraining(self, outputBundle, dataDir=None, pairs=None, options=None, plot=True, overwrite=False,
                      onProgress=None, onLog=None, onEpoch=None, onFinished=None, **optionKwargs) -> TrainingRun:
        """Start ``kneeseg train`` on a folder of pairs (``dataDir``) or on scene ``pairs``.

        With ``plot`` a :class:`TrainingPlot` (table, series and chart nodes) is added to the scene
        and updated per epoch (``run.plot``). The new bundle is ``run.bundlePath`` on success.
        """
        options = options or TrainingOptions(**optionKwargs)
        options.check()
        if not outputBundle or not str(outputBundle).strip():
            raise KneeSegmentationError("Choose where to write the new model bundle.", INPUT)
        outputBundle = Path(outputBundle)
        if outputBundle.exists() and (not outputBundle.is_dir() or any(outputBundle.iterdir())):
            if not overwrite:
                what = "is not empty" if outputBundle.is_dir() else "is a file"
                raise KneeSegmentationError(f"{outputBundle} already exists and {what}: choose a new folder.", INPUT)
            problem = why_not_replaceable(outputBundle)  # overwrite replaces a model bundle, nothing else
            if problem:
                raise KneeSegmentationError(f"{outputBundle} {problem}; training would replace it: choose a new "
                                            "folder.", INPUT)
        if (dataDir is None) == (not pairs):
            raise KneeSegmentationError("Give either a training data folder or volume/segmentation pairs from the scene.", INPUT)
        workDir = self._workDir("KneeSegmentation-train-")
        try:
            if dataDir is not None:
                dataDir = Path(dataDir)
                if not dataDir.is_dir() or not any(dataDir.iterdir()):
                    raise KneeSegmentationError(f"Training data folder {dataDir} does not exist or is empty.", INPUT)
            else:
                dataDir = workDir / "data"
                self.exportTrainingPairs(pairs, dataDir)
            # checkpoints in the run's own folder, removed with it: a retrain over a bundle starts afresh instead
            # of finding the last run's checkpoints beside the bundle (with another export of the data)
            command = self.trainingCommand(dataDir, outputBundle, options, workDir / "checkpoints")
        except BaseException:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        trainingPlot = TrainingPlot(self.scene, f"KneeSegmentation training {outputBundle.name}") if plot else None
        run = TrainingRun(self, command, workDir, outputBundle, plot=trainingPlot, onEpoch=onEpoch,
                          onProgress=onProgress, onLog=onLog, onFinished=onFinished)
        try:
            run._start()
        except BaseException:
            for node in trainingPlot.nodes() if trainingPlot else []:
                self.scene.RemoveNode(node)
            raise
        return run

    def train(self, outputBundle, wait=True, timeout=None, **kwargs):
        """Scripting API: train and return the new bundle's path (or the running run with ``wait=False``)."""
        run = self.startTraining(outputBundle, **kwargs)
        if not wait:
            return run
        run.wait(timeout)
        if run.error is not None:
            raise run.error
        return run.bundlePath

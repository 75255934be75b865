"""Harness and fixtures for headless tests of the Slicer layer on slicer-core's real MRML classes.

``Mrml`` builds a fresh ``vtkMRMLScene`` with the Colors, Volumes, Terminologies, Segmentations and
Subject Hierarchy logics registered, the way Slicer's application sets them up (the segmentation
converter rules exist only once a ``vtkSlicerSegmentationsModuleLogic`` has been constructed; the
terminologies logic reads the project's ``.term.json`` from the share directory given here).
There is no Qt: what needs Slicer's GUI is tested inside Slicer by ``KneeSegmentationTest``.

Run: ``cd <repo> && PYTHONPATH=KneeSegmentation python -m pytest Testing/slicer_extension -q``
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "KneeSegmentation"
FAKE_CORE = Path(__file__).resolve().parent / "fakecore"
TERMINOLOGY_DIR = MODULE_DIR / "Resources" / "Terminology"

if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install -e .[test])")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the 'slicer' package here is not slicer-core (another PyPI package named slicer shadows it)",
                allow_module_level=True)
import vtk  # noqa: E402

from kneeseg import labels as L  # noqa: E402

# Slicer's logics log to stderr when optional resources (colour files, Slicer's own terminology
# lists) are absent; those files are not part of the wheel and not needed here.
vtk.vtkObject.GlobalWarningDisplayOff()

_SEGMENTATIONS_LOGIC = None  # keep one alive: it registers the converter rules process-wide


class Mrml:
    """A scene and its module logics, as Slicer's application would set them up."""

    def __init__(self):
        global _SEGMENTATIONS_LOGIC
        self.scene = slicer.vtkMRMLScene()
        self.appLogic = slicer.vtkSlicerApplicationLogic()
        self.appLogic.SetMRMLScene(self.scene)
        self.colors = slicer.vtkSlicerColorLogic()
        self.colors.SetMRMLApplicationLogic(self.appLogic)
        self.colors.SetMRMLScene(self.scene)
        self.volumes = slicer.vtkSlicerVolumesLogic()
        self.volumes.SetMRMLApplicationLogic(self.appLogic)
        self.volumes.SetMRMLScene(self.scene)
        self.terminologies = slicer.vtkSlicerTerminologiesModuleLogic()
        self.terminologies.SetModuleShareDirectory(str(TERMINOLOGY_DIR))
        self.terminologies.SetMRMLScene(self.scene)
        self.segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
        self.segmentations.SetMRMLApplicationLogic(self.appLogic)
        self.segmentations.SetMRMLScene(self.scene)
        _SEGMENTATIONS_LOGIC = self.segmentations
        self.subjectHierarchyLogic = slicer.vtkSlicerSubjectHierarchyModuleLogic()
        self.subjectHierarchyLogic.SetMRMLScene(self.scene)
        self.shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)

    def addToStudy(self, node, patient="Knee patient", study="MR knee"):
        """Put ``node`` under Patient > Study, as DICOM import does (Slicer's GUI plugins add SH items)."""
        sh = self.shNode
        patientItem = sh.CreateSubjectItem(sh.GetSceneItemID(), patient)
        studyItem = sh.CreateStudyItem(patientItem, study)
        item = sh.GetItemByDataNode(node) or sh.CreateItem(studyItem, node)
        sh.SetItemParent(item, studyItem)
        return studyItem




def obliqueCoronalMatrix(spacing=(0.6, 0.7, 3.0), angle_deg=17.0, origin=(12.0, -30.5, 41.0), sliceToAnterior=True):
    """IJK-to-RAS of a coronal acquisition tilted by ``angle_deg`` about the R-L axis.

    Columns run patient-right->left, rows superior->inferior, slices posterior->anterior (a
    left-handed grid, as DICOM series often are) or anterior->posterior (right-handed); then the
    frame is rotated: a non-identity, non-axis-aligned matrix.
    """
    s = 1.0 if sliceToAnterior else -1.0
    base = np.array([[-1.0, 0.0, 0.0],   # columns: i -> patient left (R decreasing)
                     [0.0, 0.0, s],      # rows: j -> inferior; slices: k -> anterior (or posterior)
                     [0.0, -1.0, 0.0]])
    a = np.deg2rad(angle_deg)
    tilt = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    m = np.eye(4)
    m[:3, :3] = tilt @ base @ np.diag(spacing)
    m[:3, 3] = origin
    return m


def syntheticKnee(shape=(7, 22, 26)):
    """(k, j, i) array whose intensity encodes the label the fake core derives (value // 100)."""
    k, j, i = np.indices(shape)
    labels = np.zeros(shape, np.int16)
    labels[:, 2:9, 3:20] = 1                     # femur
    labels[:, 12:20, 5:18] = 2                   # tibia
    labels[1:5, 13:20, 20:24] = 3                # fibula
    labels[2:5, 4:8, 21:25] = 4                  # patella
    rng = np.random.default_rng(7)
    image = labels * 100 + rng.integers(5, 60, size=shape)
    return image.astype(np.int16), labels.astype(np.uint8)


def addVolume(scene, array, matrix, name="knee MRI", cls="vtkMRMLScalarVolumeNode"):
    import slicer.util as su

    node = scene.AddNewNodeByClass(cls, name)
    su.updateVolumeFromArray(node, array)
    node.SetIJKToRASMatrix(su.vtkMatrixFromArray(matrix))
    return node




def writeFakeBundle(folder, labels=L.SEPARATE_BONES, name="fake-bundle"):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    card = {"name": name, "version": "0.0-test", "labels": L.labels_to_json(labels),
            "metrics": {"dice_real_2d": {"Femur": 0.9}}, "provenance": "written by a test"}
    (folder / "card.json").write_text(json.dumps(card))
    return folder


def fakeCardReader(path):
    """Stands in for kneeseg.bundle.read_card: reads card.json; a file 'CORRUPT' fails the checksum."""
    from kneeseg.errors import BundleError

    path = Path(path)
    if (path / "CORRUPT").exists():
        raise BundleError("checksum mismatch for model.keras", path)
    return json.loads((path / "card.json").read_text())






def sceneSnapshot(scene, volumeNodes=(), segmentationNodes=()):
    """What must not change on a failed run: node IDs, volume voxels, segmentation contents."""
    import slicer.util as su

    ids = sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))
    volumes = {n.GetID(): su.arrayFromVolume(n).copy() for n in volumeNodes}
    matrices = {n.GetID(): su.arrayFromVTKMatrix(_ijk(n)) for n in volumeNodes}
    segs = {}
    for n in segmentationNodes:
        s = n.GetSegmentation()
        segs[n.GetID()] = [(s.GetNthSegmentID(i), s.GetNthSegment(i).GetName()) for i in range(s.GetNumberOfSegments())]
    return {"ids": ids, "volumes": volumes, "matrices": matrices, "segs": segs}


def _ijk(node):
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return m


def assertSameSnapshot(before, after):
    assert after["ids"] == before["ids"], "nodes were added to or removed from the scene"
    for key, array in before["volumes"].items():
        np.testing.assert_array_equal(after["volumes"][key], array)
        np.testing.assert_allclose(after["matrices"][key], before["matrices"][key])
    assert after["segs"] == before["segs"]


def segmentMask(segmentationNode, segmentId, volumeNode):
    """Boolean (k, j, i) mask of one segment on ``volumeNode``'s grid."""
    from vtk.util.numpy_support import vtk_to_numpy

    reference = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(volumeNode)
    merged = slicer.vtkOrientedImageData()
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segmentId)
    ok = segmentationNode.GenerateMergedLabelmapForAllSegments(merged, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY,
                                                               reference, ids)
    if not ok:  # Slicer refuses to merge a segment with no voxels: that is an empty mask
        segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
        layer = slicer.util.arrayFromSegmentInternalBinaryLabelmap(segmentationNode, segmentId)
        assert layer is None or not (layer == segment.GetLabelValue()).any(), "merge of a non-empty segment failed"
        dims = reference.GetDimensions()
        return np.zeros((dims[2], dims[1], dims[0]), dtype=bool)
    dims = merged.GetDimensions()
    return vtk_to_numpy(merged.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0]) > 0


def saveAndReloadSegmentation(scene, segmentationNode, path):
    """Write ``segmentationNode`` as a .seg.nrrd with Slicer's storage node and read it back into a new node."""
    writer = slicer.vtkMRMLSegmentationStorageNode()
    writer.SetFileName(str(path))
    assert writer.WriteData(segmentationNode), f"cannot write {path}"
    reloaded = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", segmentationNode.GetName() + " reloaded")
    reader = slicer.vtkMRMLSegmentationStorageNode()
    reader.SetFileName(str(path))
    assert reader.ReadData(reloaded), f"cannot read {path}"
    return reloaded


# ---------------------------------------------------------------------------------------------
# Fixtures. They live here, not in a conftest.py: Testing/core imports helpers with
# ``from conftest import ...``, and a second module named ``conftest`` would shadow that one.
# Each test module imports the fixtures it uses from this module.


@pytest.fixture
def mrml():
    m = Mrml()
    yield m
    m.scene.Clear(1)


@pytest.fixture
def knee(mrml):
    image, labels = syntheticKnee()
    node = addVolume(mrml.scene, image, obliqueCoronalMatrix())
    node.CreateDefaultDisplayNodes()
    mrml.addToStudy(node)
    return node, labels


@pytest.fixture
def bundle(tmp_path):
    return writeFakeBundle(tmp_path / "bundle")


@pytest.fixture
def fakeLogic(mrml, tmp_path, monkeypatch):
    """A logic whose child process is the fake core (mode set per test with ``setMode``)."""
    from KneeSegmentationLib import KneeSegmentationLogic

    monkeypatch.setenv("KNEESEG_FAKE_MODE", "ok")
    monkeypatch.setenv("KNEESEG_FAKE_PIDFILE", str(tmp_path / "pids.txt"))
    (tmp_path / "work").mkdir()
    logic = KneeSegmentationLogic(scene=mrml.scene, python=sys.executable, moduleDir=FAKE_CORE,
                                  cardReader=fakeCardReader, terminologiesLogic=mrml.terminologies,
                                  tempDir=str(tmp_path / "work"))
    logic.setMode = lambda mode: monkeypatch.setenv("KNEESEG_FAKE_MODE", mode)
    return logic

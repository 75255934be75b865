"""The .seg.nrrd that kneeseg writes opens in Slicer's own segmentation storage node (slicer-core)."""

import numpy as np
import pytest

from kneeseg import io
from kneeseg.labels import SEPARATE_BONES

slicer = pytest.importorskip("slicer", reason="slicer-core (the test extra) is not installed")
if not hasattr(slicer, "vtkMRMLSegmentationStorageNode"):
    pytest.skip("the 'slicer' module here is not slicer-core", allow_module_level=True)


def test_slicer_reads_named_coloured_segments_with_terminology(tmp_path, toy_case):
    import SimpleITK as sitk

    _, labels = toy_case
    truth = sitk.GetArrayFromImage(labels)
    path = tmp_path / "bones.seg.nrrd"
    io.write_seg_nrrd(labels, path, SEPARATE_BONES)

    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()  # registers the converter rules
    logic.SetMRMLScene(scene)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1

    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == len(SEPARATE_BONES)
    for i, label in enumerate(SEPARATE_BONES):
        segment = segmentation.GetNthSegment(i)
        assert segment.GetName() == label.name
        assert segment.GetLabelValue() == label.value
        np.testing.assert_allclose(np.array(segment.GetColor()) * 255, label.color, atol=0.5)
        assert f"SCT^{label.snomed_code}^{label.name}" in segment.GetTerminology()
        voxels = slicer.util.arrayFromSegmentInternalBinaryLabelmap(node, segmentation.GetNthSegmentID(i))
        assert np.count_nonzero(voxels == label.value) == np.count_nonzero(truth == label.value)

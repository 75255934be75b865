"""KneeSegmentationLogic.segment on real MRML classes, with the fake core as the child process."""

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import slicer
import slicer.util as su
import vtk

from mrml_harness import bundle, fakeLogic, knee, mrml  # noqa: F401 (fixtures)
from mrml_harness import (addVolume, assertSameSnapshot, obliqueCoronalMatrix, sceneSnapshot, segmentMask,
                      saveAndReloadSegmentation, writeFakeBundle)
from kneeseg import io as core_io
from kneeseg import labels as L
from KneeSegmentationLib import KneeSegmentationError, KneeSegmentationLogic, validateInputVolume
from KneeSegmentationLib import terminology
from KneeSegmentationLib.logic import ATTRIBUTE_PREFIX, BINARY_LABELMAP, sameGeometry

BONES = L.SEPARATE_BONES


def _argv(logicRunWorkDirs):
    return json.loads(Path(logicRunWorkDirs).read_text())


@pytest.mark.parametrize("sliceToAnterior", [True, False], ids=["left-handed", "right-handed"])
def test_segment_oblique_coronal_volume_gives_named_coded_segments_in_input_geometry(mrml, knee, bundle, fakeLogic,
                                                                                      sliceToAnterior):
    volume, expected = knee
    matrix = obliqueCoronalMatrix(sliceToAnterior=sliceToAnterior)
    volume.SetIJKToRASMatrix(su.vtkMatrixFromArray(matrix))
    before = su.arrayFromVolume(volume).copy()
    run = fakeLogic.startSegmentation(volume, model=bundle, planes=("sagittal", "coronal"), n4=True, device="cpu",
                                      keepFiles=True)
    run.wait(60)
    assert run.status == "succeeded", run.logText
    seg = run.segmentationNode
    assert seg is not None and seg.GetScene() is mrml.scene
    assert seg.GetName() == "knee MRI knee segmentation"

    # the CLI got the options
    argv = json.loads((run.workDir / "argv.json").read_text())
    assert argv[:2] == ["segment", str(run.workDir / "input.nrrd")]
    for flag in ("--n4", "--progress", "json", "--device", "cpu", "--planes", "sagittal,coronal", "--model", str(bundle)):
        assert flag in argv

    # segments: names, order, colours, label values, SNOMED terminology
    segmentation = seg.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == \
        ["Femur", "Tibia", "Fibula", "Patella"]
    for bone in BONES:
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(bone.name))
        np.testing.assert_allclose(segment.GetColor(), np.array(bone.color) / 255.0, atol=1e-6)
        assert segment.GetLabelValue() == bone.value
        entry = segment.GetTerminology()
        assert entry == core_io.terminology_tag(bone)  # same serialisation as the core's .seg.nrrd writer
        assert terminology.typeCode(entry) == ("SCT", bone.snomed_code, bone.name)
        assert "SCT^123037004^Anatomical Structure" in entry
        # the entry resolves in the loaded knee terminology context
        parsed = slicer.vtkSlicerTerminologyEntry()
        assert mrml.terminologies.DeserializeTerminologyEntry(entry, parsed)
        assert parsed.GetTypeObject().GetCodeValue() == bone.snomed_code

    # geometry: reference geometry from the input; each mask exactly the expected voxels
    ref = seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole())
    assert ref is volume
    assert segmentation.GetConversionParameter("Reference image geometry") == \
        slicer.vtkSegmentationConverter.SerializeImageGeometry(
            slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(volume))
    layer = segmentation.GetSegment("Femur").GetRepresentation(BINARY_LABELMAP)
    m = vtk.vtkMatrix4x4()
    layer.GetImageToWorldMatrix(m)
    dims = tuple(layer.GetDimensions())
    assert dims == tuple(volume.GetImageData().GetDimensions())
    assert sameGeometry((dims, su.arrayFromVTKMatrix(m)), (dims, matrix), tol=1e-6)  # same voxels in space
    for bone in BONES:
        np.testing.assert_array_equal(segmentMask(seg, bone.name, volume), expected == bone.value)

    # subject hierarchy: beside the input, under its study
    sh = mrml.shNode
    segItem, volItem = sh.GetItemByDataNode(seg), sh.GetItemByDataNode(volume)
    assert segItem and sh.GetItemParent(segItem) == sh.GetItemParent(volItem)
    assert sh.GetItemLevel(sh.GetItemParent(segItem)) == "Study"

    # volumes: from the process, equal to voxel counts x voxel volume
    voxelMl = 0.6 * 0.7 * 3.0 / 1000
    for bone in BONES:
        assert run.volumesMl[bone.name] == pytest.approx(np.count_nonzero(expected == bone.value) * voxelMl, rel=1e-6)
    assert json.loads(seg.GetAttribute(ATTRIBUTE_PREFIX + "VolumesMl"))["Tibia"] == pytest.approx(run.volumesMl["Tibia"], abs=1e-3)
    assert KneeSegmentationLogic.volumesFromNode(seg)["Femur"] == pytest.approx(run.volumesMl["Femur"], abs=1e-3)

    # the input is untouched; display nodes exist for the slice-view overlay
    np.testing.assert_array_equal(su.arrayFromVolume(volume), before)
    assert seg.GetDisplayNode() is not None


def test_temporary_files_are_removed(knee, bundle, fakeLogic, tmp_path):
    volume, _ = knee
    fakeLogic.segment(volume, model=bundle)
    assert list((tmp_path / "work").iterdir()) == []


def test_seg_nrrd_save_and_reload_round_trips(mrml, knee, bundle, fakeLogic, tmp_path):
    volume, expected = knee
    seg = fakeLogic.segment(volume, model=bundle)
    reloaded = saveAndReloadSegmentation(mrml.scene, seg, tmp_path / "knee.seg.nrrd")
    a, b = seg.GetSegmentation(), reloaded.GetSegmentation()
    assert b.GetNumberOfSegments() == 4
    for bone in BONES:
        sa = a.GetSegment(a.GetSegmentIdBySegmentName(bone.name))
        sb = b.GetSegment(b.GetSegmentIdBySegmentName(bone.name))
        assert sb.GetName() == bone.name
        np.testing.assert_allclose(sb.GetColor(), sa.GetColor(), atol=1e-6)
        assert sb.GetTerminology() == sa.GetTerminology()
        np.testing.assert_array_equal(segmentMask(reloaded, b.GetSegmentIdBySegmentName(bone.name), volume),
                                      expected == bone.value)


def test_existing_output_segmentation_is_replaced_in_place(mrml, knee, bundle, fakeLogic):
    volume, expected = knee
    existing = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my output")
    existing.CreateDefaultDisplayNodes()
    existing.GetSegmentation().AddEmptySegment("", "old segment")
    count = mrml.scene.GetNumberOfNodes()
    seg = fakeLogic.segment(volume, model=bundle, outputSegmentation=existing)
    assert seg is existing
    assert mrml.scene.GetNumberOfNodes() == count
    names = [seg.GetSegmentation().GetNthSegment(i).GetName() for i in range(seg.GetSegmentation().GetNumberOfSegments())]
    assert names == ["Femur", "Tibia", "Fibula", "Patella"]
    np.testing.assert_array_equal(segmentMask(seg, "Patella", volume), expected == 4)


def test_polling_reports_progress_and_keeps_non_json_lines(knee, bundle, fakeLogic):
    volume, _ = knee
    seen, logs, finished = [], [], []
    run = fakeLogic.startSegmentation(volume, model=bundle,
                                      onProgress=lambda r: seen.append((r.stage, r.fraction)),
                                      onLog=lambda r, line: logs.append(line),
                                      onFinished=finished.append)
    deadline = time.monotonic() + 60
    while run.poll() and time.monotonic() < deadline:
        time.sleep(0.02)  # what the widget's QTimer does
    assert run.status == "succeeded", run.logText
    assert finished == [run]
    assert [s for s, _ in seen] == ["load", "predict", "done"]
    assert [f for _, f in seen] == sorted(f for _, f in seen)
    assert any("a warning line that is not JSON" in line for line in logs)
    assert any("stderr chatter" in line for line in logs)
    assert not run.poll()  # finished runs stay finished


def test_input_under_transform_gives_segmentation_under_same_transform(mrml, knee, bundle, fakeLogic):
    volume, _ = knee
    transform = mrml.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    seg = fakeLogic.segment(volume, model=bundle)
    assert seg.GetTransformNodeID() == transform.GetID()


def test_closed_surface_on_request(knee, bundle, fakeLogic):
    volume, _ = knee
    seg = fakeLogic.segment(volume, model=bundle, closedSurface=True)
    assert seg.GetSegmentation().ContainsRepresentation("Closed surface")
    polydata = seg.GetSegmentation().GetSegment("Femur").GetRepresentation("Closed surface")
    assert polydata.GetNumberOfPoints() > 0
    KneeSegmentationLogic.showClosedSurface(seg, False)
    assert not seg.GetSegmentation().ContainsRepresentation("Closed surface")


def test_label_values_unknown_to_the_card_are_dropped_with_a_warning(knee, bundle, fakeLogic):
    volume, expected = knee
    fakeLogic.setMode("unknownlabel")
    run = fakeLogic.startSegmentation(volume, model=bundle).wait(60)
    assert run.status == "succeeded"
    assert any("label values [7]" in line for line in run.log)


def test_merged_bone_bundle_gives_one_bone_segment(mrml, knee, tmp_path, fakeLogic):
    volume, expected = knee
    merged = writeFakeBundle(tmp_path / "merged", labels=L.MERGED_BONES)
    run = fakeLogic.startSegmentation(volume, model=merged).wait(60)
    assert run.status == "succeeded"
    segmentation = run.segmentationNode.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    assert terminology.typeCode(segmentation.GetNthSegment(0).GetTerminology())[1] == "272673000"
    assert any("label values [2, 3, 4]" in line for line in run.log)


# ----------------------------------------------------------------------------------------------
# Bad input: refused before anything starts, scene unchanged


def _vectorVolume(scene):
    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "colour")
    su.updateVolumeFromArray(node, np.zeros((4, 5, 6, 3), np.uint8) + np.arange(3, dtype=np.uint8))
    return node


def _fourD(scene):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "dynamic")
    image = vtk.vtkImageData()
    image.SetDimensions(6, 5, 4)
    image.AllocateScalars(vtk.VTK_FLOAT, 5)  # 5 frames per voxel, as a multi-volume stores them
    node.SetAndObserveImageData(image)
    return node


BAD_VOLUMES = {
    "none": (lambda scene: None, "No input volume selected"),
    "2D": (lambda scene: addVolume(scene, (np.arange(30).reshape(1, 5, 6) % 7).astype(np.int16), np.eye(4), "slice"), "2D image"),
    "labelmap": (lambda scene: addVolume(scene, np.ones((4, 5, 6), np.uint8), np.eye(4), "labels", "vtkMRMLLabelMapVolumeNode"), "label map"),
    "vector": (_vectorVolume, "vector (colour) volume"),
    "4D": (_fourD, "5 values per voxel"),
    "constant": (lambda scene: addVolume(scene, np.full((4, 5, 6), 3, np.int16), np.eye(4), "flat"), "constant"),
    "empty": (lambda scene: scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "not loaded"), "no image data"),
}


@pytest.mark.parametrize("case", sorted(BAD_VOLUMES))
def test_bad_volume_is_refused_with_a_clear_message_and_scene_unchanged(mrml, knee, bundle, fakeLogic, case):
    volume, _ = knee
    make, words = BAD_VOLUMES[case]
    bad = make(mrml.scene)
    existing = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "previous result")
    existing.GetSegmentation().AddEmptySegment("", "kept")
    before = sceneSnapshot(mrml.scene, [volume], [existing])
    with pytest.raises(KneeSegmentationError) as err:
        fakeLogic.segment(bad, model=bundle, outputSegmentation=existing)
    assert err.value.kind == "input"
    assert words in err.value.message
    assertSameSnapshot(before, sceneSnapshot(mrml.scene, [volume], [existing]))


def test_bundle_failing_its_checksum_is_refused_before_running(mrml, knee, bundle, fakeLogic):
    volume, _ = knee
    (bundle / "CORRUPT").write_text("x")
    before = sceneSnapshot(mrml.scene, [volume])
    with pytest.raises(KneeSegmentationError) as err:
        fakeLogic.segment(volume, model=bundle)
    assert err.value.kind == "input" and "checksum mismatch" in err.value.message
    assertSameSnapshot(before, sceneSnapshot(mrml.scene, [volume]))


def test_missing_bundle_and_missing_default_bundle(knee, tmp_path, fakeLogic, monkeypatch):
    volume, _ = knee
    with pytest.raises(KneeSegmentationError, match="Model bundle not found"):
        fakeLogic.segment(volume, model=tmp_path / "nowhere")
    from KneeSegmentationLib import bundles

    monkeypatch.setattr(bundles, "MODELS_DIR", tmp_path / "no-models")
    with pytest.raises(KneeSegmentationError, match="default model bundle is missing"):
        fakeLogic.segment(volume)


def test_bad_options_are_refused(knee, bundle, fakeLogic):
    volume, _ = knee
    with pytest.raises(KneeSegmentationError, match="Unknown slice plane"):
        fakeLogic.segment(volume, model=bundle, planes=("oblique",))
    with pytest.raises(KneeSegmentationError, match="Unknown device"):
        fakeLogic.segment(volume, model=bundle, device="tpu")


# ----------------------------------------------------------------------------------------------
# Process failures: clear message, scene as it was, existing segmentation untouched

FAILURES = {
    "crash": ("internal", "exit code 1"),
    "killed": ("internal", "SIGKILL"),
    "badinput": ("input", "is constant"),
    "checksum": ("input", "checksum mismatch"),
    "missingmodule": ("dependency", "'tensorflow' is missing"),
    "noresult": ("internal", "without reporting a result"),
    "wronggeometry": ("internal", "geometry"),
}


@pytest.mark.parametrize("mode", sorted(FAILURES))
def test_failed_process_leaves_scene_and_output_untouched(mrml, knee, bundle, fakeLogic, mode, tmp_path):
    if mode == "killed" and os.name == "nt":
        pytest.skip("POSIX signals")
    volume, _ = knee
    existing = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "previous result")
    existing.GetSegmentation().AddEmptySegment("", "kept")
    before = sceneSnapshot(mrml.scene, [volume], [existing])
    fakeLogic.setMode(mode)
    kind, words = FAILURES[mode]
    with pytest.raises(KneeSegmentationError) as err:
        fakeLogic.segment(volume, model=bundle, outputSegmentation=existing, timeout=60)
    assert err.value.kind == kind, err.value.message
    assert words in err.value.message
    assert err.value.log  # the full log travels with the error
    assertSameSnapshot(before, sceneSnapshot(mrml.scene, [volume], [existing]))
    assert list((tmp_path / "work").iterdir()) == []


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return True


@pytest.mark.skipif(os.name == "nt", reason="POSIX process groups")
def test_cancel_kills_the_process_tree_and_leaves_scene_unchanged(mrml, knee, bundle, fakeLogic, tmp_path):
    volume, _ = knee
    before = sceneSnapshot(mrml.scene, [volume])
    fakeLogic.setMode("hang")
    finished = []
    run = fakeLogic.startSegmentation(volume, model=bundle, onFinished=finished.append)
    deadline = time.monotonic() + 30
    while run.stage != "predict" and time.monotonic() < deadline:
        run.poll(0.1)
    assert run.stage == "predict"
    parent, child = map(int, (tmp_path / "pids.txt").read_text().split())
    t0 = time.monotonic()
    run.cancel()
    while run.poll(0.1):
        pass
    assert time.monotonic() - t0 < 10
    assert run.status == "cancelled" and run.error.kind == "cancelled"
    assert "cancelled" in run.error.message and finished == [run]
    time.sleep(0.2)
    assert not _alive(parent) and not _alive(child)
    assertSameSnapshot(before, sceneSnapshot(mrml.scene, [volume]))


@pytest.mark.skipif(os.name == "nt", reason="POSIX process groups")
def test_wait_timeout_stops_the_run(mrml, knee, bundle, fakeLogic):
    volume, _ = knee
    fakeLogic.setMode("hang")
    before = sceneSnapshot(mrml.scene, [volume])
    with pytest.raises(KneeSegmentationError, match="took too long"):
        fakeLogic.segment(volume, model=bundle, timeout=2)
    assertSameSnapshot(before, sceneSnapshot(mrml.scene, [volume]))


def test_unstartable_python_is_a_clear_error(mrml, knee, bundle, fakeLogic, tmp_path):
    volume, _ = knee
    fakeLogic.python = str(tmp_path / "no-python-here")
    before = sceneSnapshot(mrml.scene, [volume])
    with pytest.raises(KneeSegmentationError, match="Could not start the segmentation"):
        fakeLogic.segment(volume, model=bundle)
    assertSameSnapshot(before, sceneSnapshot(mrml.scene, [volume]))
    assert list((tmp_path / "work").iterdir()) == []


def test_validate_accepts_an_ordinary_volume(knee):
    validateInputVolume(knee[0])


def test_the_result_keeps_its_quality_and_a_flagged_one_is_worded_as_a_warning(knee, bundle, fakeLogic, monkeypatch):
    from KneeSegmentationLib import results

    volume, _ = knee
    monkeypatch.setenv("KNEESEG_FAKE_MODE", "flagged")
    run = fakeLogic.startSegmentation(volume, model=bundle)
    run.wait(60)
    assert run.status == "succeeded", run.logText
    assert run.quality["flag"] is True and results.qualityFromNode(run.segmentationNode) == run.quality
    warning = results.qualityWarning(run.quality)
    assert warning == ("Check this result before you use it: its quality score is 0.31, below 0.50. "
                       "Patella: the planes' predictions disagree (0.31).")
    assert results.qualityWarning({"score": 0.9, "flag": False, "reasons": []}) == ""
    assert results.qualityWarning(None) == "" and results.qualityFromNode(None) is None
    assert results.qualityWarning({"flag": True}) == "Check this result before you use it: its quality score is low."
    # A model whose card sets no threshold of its own is judged by the shipped model's, and the warning says so.
    own_model = dict(run.quality, threshold_from="default")
    assert results.qualityWarning(own_model) == (
        "Check this result before you use it: its quality score is 0.31, below 0.50 (a threshold chosen for the "
        "shipped model: this model's card sets none). Patella: the planes' predictions disagree (0.31).")


def test_export_meshes_writes_closed_surfaces_where_the_segments_are(mrml, knee, bundle, fakeLogic, tmp_path):
    from KneeSegmentationLib import logic

    volume, expected = knee
    run = fakeLogic.startSegmentation(volume, model=bundle)
    run.wait(60)
    assert run.status == "succeeded", run.logText
    written = logic.exportMeshes(run.segmentationNode, volume, tmp_path / "meshes")
    voxelMl = abs(np.linalg.det(su.arrayFromVTKMatrix(_ijkToRas(volume))[:3, :3])) / 1000.0
    present = [b for b in BONES if (expected == b.value).any()]
    assert sorted(written) == sorted(b.name for b in present)
    for bone in present:
        entry = written[bone.name]
        assert [Path(f).name for f in entry["files"]] == [f"{bone.name.lower()}.stl", f"{bone.name.lower()}.vtp"]
        assert all(Path(f).is_file() for f in entry["files"])
        # The toy bones are boxes a few voxels thick: smoothing rounds them off, so only roughly the same
        # volume (the core's tests hold real-shaped bones to 3 %).
        labelMl = np.count_nonzero(expected == bone.value) * voxelMl
        assert 0.5 * labelMl < entry["volume_ml"] < 1.1 * labelMl, bone.name
    # The meshes lie where the segment is: the femur mesh's centre is the femur voxels' centre (RAS -> LPS).
    reader = vtk.vtkSTLReader()
    reader.SetFileName(written["Femur"]["files"][0])
    reader.Update()
    from vtk.util.numpy_support import vtk_to_numpy

    points = vtk_to_numpy(reader.GetOutput().GetPoints().GetData())
    ijk = np.argwhere(expected == 1)[:, ::-1]  # k, j, i -> i, j, k
    ras = (su.arrayFromVTKMatrix(_ijkToRas(volume)) @ np.c_[ijk, np.ones(len(ijk))].T).T[:, :3]
    lps = ras * [-1, -1, 1]
    assert np.linalg.norm(points.mean(axis=0) - lps.mean(axis=0)) < 3.0
    with pytest.raises(KneeSegmentationError, match="no segment named or coded"):
        logic.exportMeshes(slicer.vtkMRMLSegmentationNode(), volume, tmp_path / "none")
    before = {p.name: p.read_bytes() for p in (tmp_path / "meshes").iterdir()}
    with pytest.raises(KneeSegmentationError, match="already holds femur.stl"):
        logic.exportMeshes(run.segmentationNode, volume, tmp_path / "meshes")
    assert {p.name: p.read_bytes() for p in (tmp_path / "meshes").iterdir()} == before


def _ijkToRas(volume):
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return matrix

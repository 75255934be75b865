"""Bone surface meshes: closed and manifold, the label's volume, where the label is, read in place by Slicer."""

import numpy as np
import pytest
import SimpleITK as sitk
import vtk
from scipy.spatial import cKDTree
from vtk.util import numpy_support

from conftest import shared_data, toy_knee
from kneeseg import meshes
from kneeseg.labels import SEPARATE_BONES


def _open_edges(surface) -> int:
    edges = vtk.vtkFeatureEdges()
    edges.SetInputData(surface)
    edges.BoundaryEdgesOn()
    edges.NonManifoldEdgesOn()
    edges.FeatureEdgesOff()
    edges.ManifoldEdgesOff()
    edges.Update()
    return edges.GetOutput().GetNumberOfCells()


def _enclosed_ml(surface) -> float:
    mass = vtk.vtkMassProperties()
    mass.SetInputData(surface)
    return mass.GetVolume() / 1000.0


def _points(surface) -> np.ndarray:
    return numpy_support.vtk_to_numpy(surface.GetPoints().GetData()).astype(float)


def _distance_to_boundary_mm(mask_image, points) -> np.ndarray:
    """Signed distance (mm) from the label boundary at each point (linear interpolation of the map)."""
    padded = sitk.ConstantPad(mask_image, [4, 4, 4], [4, 4, 4], 0)  # the surface may close beyond the grid
    distance = sitk.SignedMaurerDistanceMap(padded, insideIsPositive=False, squaredDistance=False,
                                            useImageSpacing=True)
    # (the map's zero lies on the mask's edge voxels, up to half a voxel inside the surface between
    # voxels: the tolerances below allow for that)
    interpolated = []
    for p in points:
        index = distance.TransformPhysicalPointToContinuousIndex(tuple(p))
        interpolated.append(distance.EvaluateAtContinuousIndex(index, sitk.sitkLinear))
    return np.array(interpolated)


def _sphere(radius_mm=15.0, spacing=(0.7, 0.6, 1.0), direction=None):
    size = [int(2 * radius_mm / s) + 12 for s in spacing]
    image = sitk.Image(size, sitk.sitkUInt8)
    image.SetSpacing(spacing)
    if direction is not None:
        image.SetDirection(tuple(np.asarray(direction, float).ravel()))
    image.SetOrigin((3.0, -7.0, 11.0))
    centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in size])
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in size[::-1]], indexing="ij"), -1)  # k, j, i
    d = np.array(image.GetDirection()).reshape(3, 3)
    physical = np.array(image.GetOrigin()) + (idx[..., ::-1] * np.array(spacing)) @ d.T
    inside = np.linalg.norm(physical - np.array(centre), axis=-1) <= radius_mm
    label = sitk.GetImageFromArray(inside.astype(np.uint8))
    label.CopyInformation(image)
    return label, np.array(centre)


@pytest.mark.parametrize("flip", [False, True], ids=["right-handed", "left-handed grid"])
def test_a_sphere_becomes_a_closed_surface_of_its_volume_where_it_is(flip):
    direction = np.diag([1.0, 1.0, -1.0]) if flip else None
    label, centre = _sphere(direction=direction)
    array = sitk.GetArrayViewFromImage(label)
    surface = meshes.bone_surface(array == 1, label)
    assert _open_edges(surface) == 0
    voxel_ml = array.sum() * np.prod(label.GetSpacing()) / 1000.0
    assert _enclosed_ml(surface) == pytest.approx(voxel_ml, rel=0.03)
    points = _points(surface)
    radii = np.linalg.norm(points - centre, axis=1)
    assert abs(radii.mean() - 15.0) < 0.5 and radii.std() < 0.3
    normals = numpy_support.vtk_to_numpy(surface.GetPointData().GetNormals())
    assert np.mean(np.sum(normals * (points - centre), axis=1) > 0) > 0.99  # outward
    distance = _distance_to_boundary_mm(label, points)
    assert np.abs(distance).mean() < 0.6 and np.abs(distance).max() < 1.5


def test_every_bone_of_an_oblique_knee_gets_a_closed_surface_over_its_label(oblique_direction, tmp_path):
    _, labelmap = toy_knee(size=(64, 60, 56), spacing=(0.9, 0.8, 1.1), direction=oblique_direction)
    written = meshes.write_meshes(labelmap, SEPARATE_BONES, tmp_path / "meshes")
    assert set(written) == {"Femur", "Tibia", "Fibula", "Patella"}
    array = sitk.GetArrayViewFromImage(labelmap)
    for label in SEPARATE_BONES:
        files = written[label.name]["files"]
        assert [f.split("/")[-1] for f in files] == [f"{label.name.lower()}.stl", f"{label.name.lower()}.vtp"]
        reader = vtk.vtkXMLPolyDataReader()
        reader.SetFileName(files[1])
        reader.Update()
        surface = reader.GetOutput()
        assert _open_edges(surface) == 0
        assert reader.GetOutput().GetFieldData().GetAbstractArray("SPACE").GetValue(0) == "LPS"
        mask = sitk.GetImageFromArray((array == label.value).astype(np.uint8))
        mask.CopyInformation(labelmap)
        distance = _distance_to_boundary_mm(mask, _points(surface))
        assert np.abs(distance).mean() < 0.6, label.name
    assert sorted(p.name for p in (tmp_path / "meshes").iterdir()) == sorted(
        f"{b}.{ext}" for b in ("femur", "tibia", "fibula", "patella") for ext in ("stl", "vtp"))


def test_an_absent_bone_writes_no_file(tmp_path):
    _, labelmap = toy_knee()
    array = sitk.GetArrayFromImage(labelmap)
    array[array == 3] = 0
    without_fibula = sitk.GetImageFromArray(array)
    without_fibula.CopyInformation(labelmap)
    written = meshes.write_meshes(without_fibula, SEPARATE_BONES, tmp_path)
    assert "Fibula" not in written and not (tmp_path / "fibula.stl").exists()
    with pytest.raises(ValueError, match="stl or .vtp"):
        meshes.write_surface(meshes.bone_surface(array == 1, labelmap), tmp_path / "femur.obj")


def test_slicer_loads_both_files_in_place_over_the_scan(tmp_path):
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
    if not hasattr(slicer, "vtkMRMLModelStorageNode"):
        pytest.skip("the 'slicer' package here is not slicer-core")
    label, _ = _sphere(radius_mm=8.0, spacing=(1.0, 1.0, 1.0))
    surface = meshes.bone_surface(sitk.GetArrayViewFromImage(label) == 1, label)
    lps = _points(surface)
    scene = slicer.vtkMRMLScene()
    for suffix in (".stl", ".vtp"):
        path = meshes.write_surface(surface, tmp_path / f"bone{suffix}")
        model = scene.AddNewNodeByClass("vtkMRMLModelNode")
        storage = slicer.vtkMRMLModelStorageNode()
        scene.AddNode(storage)
        storage.SetFileName(str(path))
        assert storage.ReadData(model)
        assert storage.GetCoordinateSystem() == slicer.vtkMRMLStorageNode.CoordinateSystemLPS
        ras = numpy_support.vtk_to_numpy(model.GetPolyData().GetPoints().GetData())
        gap, _ = cKDTree(lps * np.array([-1.0, -1.0, 1.0])).query(ras)  # STL stores no point order
        assert len(ras) > 100 and gap.max() < 1e-3


@pytest.mark.realdata
def test_a_real_femur_keeps_its_volume():
    path = shared_data("labelmaps", "mskt", "mskt_t2_knee.nrrd")
    labels = sitk.ReadImage(str(path))
    femur = sitk.GetArrayViewFromImage(labels) == 5
    surface = meshes.bone_surface(femur, labels)
    assert _open_edges(surface) == 0
    voxel_ml = femur.sum() * np.prod(labels.GetSpacing()) / 1000.0
    assert _enclosed_ml(surface) == pytest.approx(voxel_ml, rel=0.03)

"""Bone surface meshes from a label map (VTK): one closed, smoothed triangle surface per bone.

For surgical planning, patient-specific guides and finite-element models. Each bone's mask is padded
by one voxel (so the surface closes where the bone touches the edge of the scan), its boundary is
extracted with flying edges, placed in patient coordinates, smoothed with a windowed-sinc filter
(which barely changes the enclosed volume) and given outward normals.

Coordinates are LPS millimetres, as in the scan's header and as 3D Slicer writes model files since
version 4.11: the files carry ``SPACE=LPS`` (STL header; a ``SPACE`` field-data string in VTP), so
Slicer loads them in place over the scan.
"""

from pathlib import Path

import numpy as np

from .io import atomic_path

SPACE = "LPS"
FORMATS = (".stl", ".vtp")


def _vtk():
    import vtk  # the design's own package; also Slicer's

    return vtk


def _mask_image(mask: np.ndarray):
    """A vtkImageData of the mask (numpy k-j-i) padded by one voxel, in index units (origin -1)."""
    vtk = _vtk()
    from vtk.util import numpy_support

    padded = np.pad(mask.astype(np.uint8), 1)
    image = vtk.vtkImageData()
    image.SetDimensions(padded.shape[2], padded.shape[1], padded.shape[0])
    image.SetOrigin(-1.0, -1.0, -1.0)
    scalars = numpy_support.numpy_to_vtk(padded.ravel(order="C"), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR)
    image.GetPointData().SetScalars(scalars)
    return image


def index_to_lps(image) -> np.ndarray:
    """The 4x4 matrix from a SimpleITK image's continuous index (i, j, k) to LPS mm."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = direction * np.array(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return matrix


def bone_surface(mask: np.ndarray, image, smoothing_iterations: int = 20, pass_band: float = 0.01):
    """The closed, smoothed surface (vtkPolyData, LPS mm) of a binary mask on ``image``'s grid.

    ``pass_band``: the windowed-sinc filter's pass band (smaller smooths more; 0.01 is close to
    Slicer's default smoothing of closed surfaces). Returns None for an empty mask.
    """
    if not mask.any():
        return None
    vtk = _vtk()
    contour = vtk.vtkDiscreteFlyingEdges3D()
    contour.SetInputData(_mask_image(mask))
    contour.SetValue(0, 1)
    contour.ComputeNormalsOff()
    contour.ComputeGradientsOff()
    transform = vtk.vtkTransform()
    transform.SetMatrix(index_to_lps(image).ravel().tolist())
    to_patient = vtk.vtkTransformPolyDataFilter()
    to_patient.SetTransform(transform)
    to_patient.SetInputConnection(contour.GetOutputPort())
    smoother = vtk.vtkWindowedSincPolyDataFilter()
    smoother.SetInputConnection(to_patient.GetOutputPort())
    smoother.SetNumberOfIterations(smoothing_iterations)
    smoother.SetPassBand(pass_band)
    smoother.BoundarySmoothingOff()
    smoother.FeatureEdgeSmoothingOff()
    smoother.NonManifoldSmoothingOn()
    smoother.NormalizeCoordinatesOn()
    normals = vtk.vtkPolyDataNormals()
    normals.SetInputConnection(smoother.GetOutputPort())
    normals.ConsistencyOn()
    normals.AutoOrientNormalsOn()  # outward, whatever the handedness of the scan's direction matrix
    normals.SplittingOff()
    normals.Update()
    surface = vtk.vtkPolyData()
    surface.DeepCopy(normals.GetOutput())
    return surface


def label_surfaces(labelmap, labels, **options) -> dict:
    """Bone name -> surface for each label present in ``labelmap`` (a SimpleITK label image)."""
    import SimpleITK as sitk

    array = sitk.GetArrayViewFromImage(labelmap)
    surfaces = {}
    for label in labels:
        surface = bone_surface(array == label.value, labelmap, **options)
        if surface is not None:
            surfaces[label.name] = surface
    return surfaces


def write_surface(surface, path):
    """Write one surface as STL (binary) or VTP, atomically, marked as LPS for Slicer."""
    vtk = _vtk()
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"mesh files end in {' or '.join(FORMATS)}, not {path.name}")
    with atomic_path(path) as tmp:
        if suffix == ".stl":
            writer = vtk.vtkSTLWriter()
            writer.SetFileTypeToBinary()
            writer.SetHeader(f"kneeseg bone surface. SPACE={SPACE}")
            writer.SetInputData(surface)
        else:
            marked = vtk.vtkPolyData()
            marked.ShallowCopy(surface)
            space = vtk.vtkStringArray()
            space.SetName("SPACE")
            space.InsertNextValue(SPACE)
            marked.GetFieldData().AddArray(space)
            writer = vtk.vtkXMLPolyDataWriter()
            writer.SetDataModeToAppended()
            writer.SetCompressorTypeToZLib()
            writer.SetInputData(marked)
        writer.SetFileName(str(tmp))
        if not writer.Write():
            raise OSError(f"VTK could not write {path}")
    return path


def mesh_path(folder, bone: str, suffix: str) -> Path:
    """The file of one bone's surface in ``folder``: ``femur.stl``, ``patella.vtp``, ..."""
    return Path(folder) / f"{bone.lower()}{suffix}"


def write_meshes(labelmap, labels, folder, formats=FORMATS, temp_for=None, **options) -> dict:
    """Write ``<bone>.stl`` and ``<bone>.vtp`` for every bone present into ``folder``.

    ``temp_for(final)``: the file to write instead of each final path (a staging area that renames
    it into place later, :class:`kneeseg.outputs.StagedOutputs`). Returns bone name ->
    {"files": [final paths], "volume_ml": enclosed volume, "triangles": count}.
    """
    vtk = _vtk()
    folder = Path(folder)
    if temp_for is None:
        folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, surface in label_surfaces(labelmap, labels, **options).items():
        files = [mesh_path(folder, name, suffix) for suffix in formats]
        for final in files:
            write_surface(surface, temp_for(final) if temp_for else final)
        files = [str(f) for f in files]
        mass = vtk.vtkMassProperties()
        mass.SetInputData(surface)
        written[name] = {"files": files, "volume_ml": round(mass.GetVolume() / 1000.0, 3),
                         "triangles": surface.GetNumberOfPolys()}
    return written

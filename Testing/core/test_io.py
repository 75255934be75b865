"""IO: formats in, validation of bad input (each a clear one-line error naming the file), atomic writes."""

import os

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import toy_knee
from kneeseg import io
from kneeseg.errors import InputError
from kneeseg.labels import SEPARATE_BONES


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha", ".mhd"])
def test_reads_common_formats_with_geometry(tmp_path, toy_case, suffix):
    image, _ = toy_case
    path = tmp_path / f"volume{suffix}"
    sitk.WriteImage(image, str(path))
    read = io.read_volume(path)
    assert io.same_geometry(read, image)
    assert read.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(image), atol=1e-6)


def _write_dicom_series(folder, array, spacing=(0.5, 0.5, 2.0), echo=None, series_uid="1.2.3.4", first_file=0,
                        positions=None, orientation=(1, 0, 0, 0, 1, 0)):
    """Real DICOM MR slices written one by one with their position tags: ``array`` holds the slices (a 3D
    array, or a list of 2D ones of any size); by default ``spacing[2]`` mm apart along the normal of
    ``orientation`` (one for all, or a list per slice), else at ``positions``."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k, pixels in enumerate(array):
        slice_image = sitk.GetImageFromArray(np.asarray(pixels).astype(np.int16))
        slice_image.SetSpacing(spacing[:2])
        orient = orientation[k] if isinstance(orientation, list) else orientation
        position = positions[k] if positions else tuple(np.cross(orient[:3], orient[3:]) * k * spacing[2])
        tags = {
            "0008|0060": "MR", "0020|000d": "1.2.3", "0020|000e": series_uid,
            "0020|0032": "\\".join(f"{v:g}" for v in position), "0020|0037": "\\".join(f"{v:g}" for v in orient),
            "0020|0013": str(k + 1), "0028|0030": f"{spacing[1]}\\{spacing[0]}", "0018|0050": str(spacing[2]),
            "0008|0018": f"{series_uid}.{first_file + k}",
        }
        if echo is not None:
            tags["0018|0086"] = str(echo)
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"IM{first_file + k:04d}.dcm"))
        writer.Execute(slice_image)


def test_reads_dicom_series_folder(tmp_path):
    array = np.arange(5 * 12 * 10, dtype=np.int16).reshape(5, 12, 10)
    _write_dicom_series(tmp_path / "dicom", array)
    image = io.read_volume(tmp_path / "dicom")
    assert image.GetSize() == (10, 12, 5)
    np.testing.assert_allclose(image.GetSpacing(), (0.5, 0.5, 2.0), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array)


def test_multi_echo_dicom_keeps_first_echo(tmp_path):
    first = np.full((4, 8, 8), 100, dtype=np.int16)
    first[:, 2:5, 2:5] = 400
    second = first // 2
    _write_dicom_series(tmp_path / "mese", second, echo=2, first_file=100)
    _write_dicom_series(tmp_path / "mese", first, echo=1, first_file=0)
    image = io.read_volume(tmp_path / "mese")
    assert image.GetSize() == (8, 8, 4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), first)


def _expect_input_error(path, fragment):
    with pytest.raises(InputError) as info:
        io.read_volume(path)
    message = str(info.value)
    assert fragment in message
    assert str(path) in message
    assert "\n" not in message
    return message


def test_2d_image_is_rejected(tmp_path):
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(20, 20).astype(np.float32)), str(path))
    _expect_input_error(path, "2D image")


def test_4d_image_is_rejected(tmp_path):
    path = tmp_path / "series.nii.gz"
    frames = [sitk.GetImageFromArray(np.random.rand(4, 5, 6).astype(np.float32)) for _ in range(3)]
    four_d = sitk.JoinSeries(frames)
    assert four_d.GetDimension() == 4
    sitk.WriteImage(four_d, str(path))
    _expect_input_error(path, "4D image")


def test_single_slice_volume_is_rejected(tmp_path):
    path = tmp_path / "one.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(1, 20, 20).astype(np.float32)), str(path))
    _expect_input_error(path, "single slice")
    # Only the evaluation of real 2D slices asks for one slice: then it passes, but a line still does not.
    one = sitk.GetImageFromArray(np.random.rand(1, 20, 20).astype(np.float32))
    io.validate_volume(one, single_slice_ok=True)
    with pytest.raises(InputError, match="single slice"):
        io.validate_volume(sitk.GetImageFromArray(np.random.rand(1, 1, 20).astype(np.float32)), single_slice_ok=True)


def test_vector_image_is_rejected(tmp_path):
    path = tmp_path / "rgb.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(4, 5, 6, 3).astype(np.float32), isVector=True), str(path))
    _expect_input_error(path, "3 components")


@pytest.mark.parametrize("value", [0.0, 7.0])
def test_constant_volume_is_rejected(tmp_path, value):
    path = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 5, 6), value, np.float32)), str(path))
    _expect_input_error(path, "constant")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_rejected(tmp_path, bad):
    array = np.random.rand(4, 5, 6).astype(np.float32)
    array[1, 2, 3] = bad
    array[2, 2, 3] = bad
    path = tmp_path / "bad.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    _expect_input_error(path, "2 NaN or infinite voxels")


def test_non_image_file_is_rejected(tmp_path):
    path = tmp_path / "notes.nrrd"
    path.write_text("this is not an image\n")
    _expect_input_error(path, "not a readable image")


def test_truncated_file_is_rejected(tmp_path, toy_case):
    image, _ = toy_case
    path = tmp_path / "cut.nrrd"
    sitk.WriteImage(image, str(path), False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _expect_input_error(path, "not a readable image")


def test_missing_file_is_rejected(tmp_path):
    _expect_input_error(tmp_path / "nowhere.nrrd", "file not found")


def test_empty_folder_is_not_a_dicom_series(tmp_path):
    (tmp_path / "empty").mkdir()
    _expect_input_error(tmp_path / "empty", "no DICOM series")


def test_reading_never_modifies_the_input(tmp_path, toy_case):
    image, _ = toy_case
    path = tmp_path / "in.nrrd"
    sitk.WriteImage(image, str(path))
    before = (path.read_bytes(), os.stat(path).st_mtime_ns)
    io.read_volume(path)
    assert (path.read_bytes(), os.stat(path).st_mtime_ns) == before


def test_failed_write_leaves_no_partial_file(tmp_path, toy_case):
    image, _ = toy_case
    target = tmp_path / "out.nrrd"
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            sitk.WriteImage(image, str(tmp))
            raise RuntimeError("crash in the middle of a write")
    assert list(tmp_path.iterdir()) == []


def test_write_replaces_atomically(tmp_path, toy_case):
    image, labels = toy_case
    target = tmp_path / "labels.nrrd"
    io.write_labelmap(labels, target)
    io.write_labelmap(labels, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.nrrd"]
    mask = os.umask(0o022)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask  # readable like any other file, not 0600
    back = sitk.ReadImage(str(target))
    assert back.GetPixelID() == sitk.sitkUInt8
    assert io.same_geometry(back, labels)


def test_seg_nrrd_header_names_segments(tmp_path, toy_case):
    _, labels = toy_case
    path = tmp_path / "bones.seg.nrrd"
    io.write_seg_nrrd(labels, path, SEPARATE_BONES)
    back = sitk.ReadImage(str(path))
    assert io.same_geometry(back, labels)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(labels))
    for index, label in enumerate(SEPARATE_BONES):
        assert back.GetMetaData(f"Segment{index}_Name") == label.name
        assert back.GetMetaData(f"Segment{index}_LabelValue") == str(label.value)
        assert f"SCT^{label.snomed_code}^{label.name}" in back.GetMetaData(f"Segment{index}_Tags")
        color = [float(c) for c in back.GetMetaData(f"Segment{index}_Color").split()]
        np.testing.assert_allclose(np.array(color) * 255, label.color, atol=0.01)
    extent = [int(v) for v in back.GetMetaData("Segment0_Extent").split()]
    femur = np.argwhere(sitk.GetArrayFromImage(labels) == 1)
    assert extent == [femur[:, 2].min(), femur[:, 2].max(), femur[:, 1].min(), femur[:, 1].max(),
                      femur[:, 0].min(), femur[:, 0].max()]


def test_seg_nrrd_needs_the_right_suffix(tmp_path, toy_case):
    with pytest.raises(InputError, match="seg.nrrd"):
        io.write_seg_nrrd(toy_case[1], tmp_path / "bones.nrrd", SEPARATE_BONES)


def test_a_label_map_given_as_the_scan_is_refused_with_the_reason(tmp_path):
    from kneeseg.errors import InputError

    _, labels = toy_knee()
    path = tmp_path / "labels.nrrd"
    sitk.WriteImage(labels, str(path))
    with pytest.raises(InputError, match=r"looks like a label map, not an MRI \(only 5 distinct whole-number values: "
                                         r"0, 1, 2, 3, 4\)"):
        io.read_volume(path)
    scan, _ = toy_knee()
    quantised = sitk.Cast(sitk.RescaleIntensity(scan, 0, 4095), sitk.sitkInt16)  # a real scan's whole numbers
    io.validate_volume(quantised)

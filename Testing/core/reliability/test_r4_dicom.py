"""Class 4: a DICOM series is read only when its slices form a regular grid; images need a rotation.

Series are written here, slice by slice, with SimpleITK (real DICOM files with their position and
orientation tags), then broken the way scanners, copies and people break them. Each broken series
is refused with exit 2 and one line naming the slice(s) or the gap; no output appears and the
series is unchanged. Sound series (shuffled file names, oblique, multi-echo) still read with the
right geometry.
"""

import os
import random

import numpy as np
import pytest
import SimpleITK as sitk

from attack import assert_one_line_error, fake_model, run_cli, tree, write_fake_bundle, write_series  # noqa: F401


@pytest.fixture
def scene(tmp_path, monkeypatch, fake_model):  # noqa: F811
    write_fake_bundle(tmp_path / "bundle")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _refused(scene, capsys, folder, *words):
    before = tree(scene)
    code, lines = run_cli(["segment", folder, "-o", "out/labels.nrrd", "--model", "bundle"], capsys)
    message = assert_one_line_error(code, lines, *words)
    assert tree(scene) == before
    return message


def test_a_missing_slice(scene, capsys):
    write_series(scene / "s", n=10)
    os.remove(scene / "s" / "IM0004.dcm")
    _refused(scene, capsys, "s", "gap of 4 mm", "IM0003.dcm", "IM0005.dcm", "1 slice missing")


def test_two_missing_slices_in_a_row(scene, capsys):
    write_series(scene / "s", n=10)
    os.remove(scene / "s" / "IM0004.dcm")
    os.remove(scene / "s" / "IM0005.dcm")
    _refused(scene, capsys, "s", "gap of 6 mm", "2 slices missing")


def test_a_duplicated_position(scene, capsys):
    positions = [(0, 0, 2.0 * k) for k in range(7)] + [(0, 0, 6.0)]
    write_series(scene / "s", n=8, positions=positions)
    _refused(scene, capsys, "s", "same position", "IM0003.dcm", "IM0007.dcm")


def test_a_copied_slice_under_another_name(scene, capsys):
    write_series(scene / "s", n=8)
    image = sitk.ReadImage(str(scene / "s" / "IM0002.dcm"))
    image.SetMetaData("0008|0018", "1.2.826.0.9.999")  # a new instance UID, same position
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(scene / "s" / "IM0002 copy.dcm"))
    writer.Execute(image)
    _refused(scene, capsys, "s", "same position")


@pytest.mark.parametrize("damage", ["truncated", "garbage with a .dcm name", "preamble only"])
def test_a_damaged_slice(scene, capsys, damage):
    write_series(scene / "s", n=8)
    victim = scene / "s" / "IM0004.dcm"
    if damage == "truncated":
        with open(victim, "r+b") as f:
            f.truncate(300)
    elif damage == "garbage with a .dcm name":
        victim.write_bytes(b"not dicom" * 50)
    else:
        renamed = victim.with_suffix("")
        victim.rename(renamed)
        renamed.write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 40)
        victim = renamed
    _refused(scene, capsys, "s", victim.name, "cannot be read")


def test_a_damaged_last_slice_is_named_too(scene, capsys):
    write_series(scene / "s", n=8)
    with open(scene / "s" / "IM0007.dcm", "r+b") as f:
        f.truncate(400)
    _refused(scene, capsys, "s", "IM0007.dcm")


def test_a_slice_of_another_size(scene, capsys):
    write_series(scene / "s", n=8, sizes=[(16, 16)] * 4 + [(16, 8)] + [(16, 16)] * 3)
    message = _refused(scene, capsys, "s", "IM0004.dcm", "8x16 pixels")
    assert "Size: [" not in message


def test_a_slice_of_another_orientation(scene, capsys):
    orientations = [(1, 0, 0, 0, 1, 0)] * 4 + [(1, 0, 0, 0, 0.98, 0.199)] + [(1, 0, 0, 0, 1, 0)] * 3
    write_series(scene / "s", n=8, orientation=orientations, positions=[(0, 0, 2.0 * k) for k in range(8)])
    _refused(scene, capsys, "s", "IM0004.dcm", "oriented differently")


def test_a_sheared_stack(scene, capsys):
    write_series(scene / "s", n=8, positions=[(0.5 * k, 0, 2.0 * k) for k in range(8)])
    _refused(scene, capsys, "s", "sideways", "gantry tilt")


def test_uneven_spacing(scene, capsys):
    write_series(scene / "s", n=8, positions=[(0, 0, z) for z in (0, 2, 4, 6, 9, 11, 13, 15)])
    _refused(scene, capsys, "s", "uneven slice spacing")


def test_orientation_axes_that_are_not_perpendicular():
    """GDCM will not write such a file; other writers do. Checked on the headers."""
    from kneeseg.dicom_series import SliceHeader, check_slice_grid
    from kneeseg.errors import InputError

    headers = [SliceHeader(f"/s/IM{k}.dcm", "", (0.0, 0.0, 2.0 * k), (1, 0, 0, 0.5, 0.866, 0), (8, 8))
               for k in range(6)]
    with pytest.raises(InputError, match="not unit length and perpendicular"):
        check_slice_grid(headers, "/s")


def test_two_echoes_without_echo_numbers(scene, capsys):
    write_series(scene / "s", n=6, first=0)
    write_series(scene / "s", n=6, first=100)  # the second echo at the same positions, no echo tag
    _refused(scene, capsys, "s", "same position", "echoes")


def test_slices_without_a_position_are_refused():
    from kneeseg.dicom_series import SliceHeader, check_slice_grid
    from kneeseg.errors import InputError

    headers = [SliceHeader(f"/s/IM{k}.dcm", "", (0.0, 0.0, 2.0 * k) if k != 3 else (), (1, 0, 0, 0, 1, 0), (8, 8))
               for k in range(6)]
    with pytest.raises(InputError, match="IM3.dcm: has no usable ImagePositionPatient"):
        check_slice_grid(headers, "/s")


# --- sound series still read --------------------------------------------------------------------------


def test_shuffled_file_names_read_in_position_order(scene):
    from kneeseg import io

    write_series(scene / "s", n=8)
    names = sorted(os.listdir(scene / "s"))
    shuffled = names[:]
    random.Random(3).shuffle(shuffled)
    for name in names:
        os.rename(scene / "s" / name, scene / "s" / f"tmp_{name}")
    for old, new in zip(names, shuffled):
        os.rename(scene / "s" / f"tmp_{old}", scene / "s" / new)
    image = io.read_volume(scene / "s")
    assert image.GetSize() == (16, 16, 8)
    np.testing.assert_allclose(image.GetSpacing(), (0.5, 0.5, 2.0), atol=1e-6)


def test_an_oblique_series_with_rounded_positions(scene):
    from kneeseg import io

    a = np.deg2rad(17)
    orientation = (1, 0, 0, 0, np.cos(a), np.sin(a))
    normal = np.cross(orientation[:3], orientation[3:])
    positions = [tuple(np.round(normal * 3.3 * k + (5, -7, 11), 3)) for k in range(8)]
    write_series(scene / "s", n=8, orientation=tuple(np.round(orientation, 6)), positions=positions)
    image = io.read_volume(scene / "s")
    np.testing.assert_allclose(image.GetSpacing()[2], 3.3, atol=1e-2)


def test_a_multi_echo_series_keeps_its_first_echo(scene):
    from kneeseg import io

    write_series(scene / "s", n=6, echo=2, first=100)
    write_series(scene / "s", n=6, echo=1, first=0)
    image = io.read_volume(scene / "s")
    assert image.GetSize() == (16, 16, 6)
    np.testing.assert_allclose(image.GetSpacing(), (0.5, 0.5, 2.0), atol=1e-6)


# --- direction matrices -------------------------------------------------------------------------------


def _sheared_nrrd(path, directions):
    data = (np.random.default_rng(0).random((6, 6, 6)) * 100).astype(np.float32).tobytes()
    header = ("NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\nsizes: 6 6 6\n"
              f"space directions: {directions}\nkinds: domain domain domain\nendian: little\nencoding: raw\n"
              "space origin: (0,0,0)\n\n")
    path.write_bytes(header.encode() + data)
    return path


@pytest.mark.parametrize("directions", ["(1,0,0) (0.5,1,0) (0,0,1)", "(1,0,0) (0,1,0) (0.2,0,1)",
                                        "(0.8,0.6,0) (0,0,1) (0.6,0.8,0)"], ids=["xy", "xz", "yz"])
def test_a_non_orthonormal_direction_matrix_in_a_file(scene, capsys, directions):
    _sheared_nrrd(scene / "sheared.nrrd", directions)
    before = tree(scene)
    code, lines = run_cli(["segment", "sheared.nrrd", "-o", "out.nrrd", "--model", "bundle"], capsys)
    assert_one_line_error(code, lines, "sheared.nrrd", "not orthonormal")
    assert tree(scene) == before


def test_a_non_orthonormal_direction_matrix_in_memory():
    from kneeseg import io
    from kneeseg.errors import InputError

    image = sitk.GetImageFromArray(np.random.default_rng(0).random((6, 6, 6)).astype(np.float32))
    image.SetDirection((1, 0.3, 0, 0, 1, 0, 0, 0, 1))
    with pytest.raises(InputError, match="not orthonormal"):
        io.validate_volume(image)
    image.SetDirection((0, 0, 1, 0, 1, 0, 1, 0, 0))  # a flip with a rotation: orthonormal, fine
    io.validate_volume(image)

"""Class 8: messages say the cause in words, never ITK's last line ("(0 0 1)", "Size: [64, 64, 1]").

Broken files are made the way they come to people (a header field gone wrong, a file cut short,
a text file with an image name) and run through ``kneeseg segment``: exit 2, one line naming the
file and the cause, no ITK banner, object address or bare region. The mapping itself is also
checked against ITK's recorded texts.
"""

import numpy as np
import pytest
import SimpleITK as sitk

from attack import (assert_no_itk_noise, assert_one_line_error, fake_model, run_cli, tree,  # noqa: F401
                    write_fake_bundle, write_series, write_volume)


def _nrrd(path, directions="(1,0,0) (0,1,0) (0,0,1)", encoding="raw", cut=0):
    data = (np.random.default_rng(0).random((4, 4, 4)) * 100).astype(np.float32).tobytes()
    header = ("NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\nsizes: 4 4 4\n"
              f"space directions: {directions}\nkinds: domain domain domain\nendian: little\nencoding: {encoding}\n"
              "space origin: (0,0,0)\n\n").encode()
    blob = header + data
    path.write_bytes(blob[: len(blob) - cut])
    return path


def _cut_in_half(path, compress):
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((10, 10, 10)).astype(np.float32)),
                    str(path), compress)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


BROKEN_FILES = {
    "singular direction": (lambda p: _nrrd(p / "a.nrrd", "(1,0,0) (1,0,0) (0,0,1)"), "direction matrix is singular"),
    "zero spacing": (lambda p: _nrrd(p / "a.nrrd", "(1,0,0) (0,0,0) (0,0,1)"), "spacing of zero"),
    "NaN in a header field": (lambda p: _nrrd(p / "a.nrrd", "(1,0,0) (0,nan,0) (0,0,1)"), "'space directions'"),
    "raw data cut short": (lambda p: _nrrd(p / "a.nrrd", cut=100), "truncated"),
    "gzip data cut short": (lambda p: _cut_in_half(p / "a.nrrd", True), "truncated"),
    "MetaImage data cut short": (lambda p: _cut_in_half(p / "a.mha", False), "MetaImage"),
    "text with an image name": (lambda p: (p / "a.nrrd").write_text("hello") and p / "a.nrrd",
                                "not an image format SimpleITK reads"),
    "a PNG picture": (lambda p: (p / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64) and p / "a.png",
                      "not a readable image"),
}


@pytest.fixture
def scene(tmp_path, monkeypatch, fake_model):  # noqa: F811
    write_fake_bundle(tmp_path / "bundle")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("make, words", BROKEN_FILES.values(), ids=BROKEN_FILES.keys())
def test_broken_files_are_named_with_their_cause(scene, capsys, make, words):
    path = make(scene)
    before = tree(scene)
    code, lines = run_cli(["segment", path, "-o", "o.nrrd", "--model", "bundle"], capsys)
    message = assert_one_line_error(code, lines, words, path.name)
    assert_no_itk_noise(message)
    assert "No such file or directory" not in message  # ITK's errno for a short MetaImage is wrong
    assert tree(scene) == before


def test_dicom_slices_of_another_size_are_not_an_itk_region(scene, capsys):
    write_series(scene / "s", n=6, sizes=[(16, 16)] * 3 + [(16, 8)] + [(16, 16)] * 2)
    code, lines = run_cli(["segment", "s", "-o", "o.nrrd", "--model", "bundle"], capsys)
    assert_no_itk_noise(assert_one_line_error(code, lines, "pixels"))


def test_a_missing_dicom_slice_is_an_error_not_a_warning(scene, capsys):
    import os

    write_series(scene / "s", n=8)
    os.remove(scene / "s" / "IM0003.dcm")
    code, lines = run_cli(["segment", "s", "-o", "o.nrrd", "--model", "bundle"], capsys)
    assert_one_line_error(code, lines, "gap")
    assert not any("WARNING" in line or "nonuniformity" in line for line in lines)


def test_a_folder_named_like_a_label_map_gets_a_plain_answer(scene, capsys):
    write_volume(scene / "k.nrrd")
    (scene / "out.nrrd").mkdir()
    code, lines = run_cli(["segment", "k.nrrd", "-o", "out.nrrd", "--overlay", "o.png", "--model", "bundle"], capsys)
    message = assert_one_line_error(code, lines, "out.nrrd", "folder")
    assert "--overlay" not in message and "single input" not in message


# ITK's own texts (SimpleITK 2.5.7), as they reach kneeseg, and what must be said instead.
ITK_TEXTS = [
    ("Exception thrown in SimpleITK ImageFileReader_Execute: /tmp/x/itkImageBase.hxx:145:\nITK ERROR: Image(0x55558fcb"
     "36e0): Bad direction, determinant is 0. Refusing to change direction from 1 0 0\n0 1 0\n0 0 1\n to 1 1 0\n0 0 0"
     "\n0 0 1\n", "singular"),
    ("Exception thrown in SimpleITK ImageSeriesReader_Execute: /tmp/x/itkImageFileReader.hxx:338:\nImageIO returns IO "
     "region that does not fully contain the requested region. Requested region: ImageRegion (0x7ffd3dbf5990)\n  "
     "Dimension: 3\n  Index: [0, 0, 0]\n  Size: [16, 16, 1]\nStreamableRegion region: ImageRegion (0x7ffd3dbf5950)\n"
     "  Dimension: 3\n  Index: [0, 0, 0]\n  Size: [16, 8, 1]\n", "smaller than its header says"),
    ("Exception thrown in SimpleITK ImageFileWriter_Execute: /tmp/x/itkNrrdImageIO.cxx:1349:\nITK ERROR: NrrdImageIO("
     "0x5563a26823c0): Write: Error writing /t/a.nrrd:\n[nrrd] nrrdSave:\n[nrrd] _nrrdEncodingRaw_write: fwrite wrote "
     "only 16310 4-sized things, not 256000 (6.37109% of expected)\n", "could not be written completely"),
    ("Exception thrown in SimpleITK Foo_Execute: /tmp/x/itkFoo.hxx:12:\nITK ERROR: Foo(0x1): Something specific "
     "went wrong here\n(0 0 1)\n", "Something specific went wrong here"),
]


@pytest.mark.parametrize("text, words", ITK_TEXTS)
def test_itk_texts_in_plain_words(text, words):
    from kneeseg.itk_messages import plain_reason

    reason = plain_reason(RuntimeError(text))
    assert words in reason and "\n" not in reason
    assert_no_itk_noise(reason)

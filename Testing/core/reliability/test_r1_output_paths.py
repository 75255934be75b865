"""Class 1: no output path can overwrite an input, write into an input folder, or be another output.

Every case is refused before any work with exit 2 and one line; the whole folder (inputs, bundle)
is byte-for-byte unchanged and nothing new appears in it. The model is the fake one, so on code
without the checks these runs would go through and overwrite.
"""

import os

import pytest

from attack import (assert_one_line_error, fake_bundle, fake_model, run_cli, tree, write_fake_bundle,  # noqa: F401
                    write_series, write_volume)


@pytest.fixture
def scene(tmp_path, monkeypatch, fake_model):  # noqa: F811
    """tmp/k.nrrd, tmp/k.seg.nrrd (an input that happens to look like a segmentation), a bundle, a cwd."""
    write_volume(tmp_path / "k.nrrd")
    write_volume(tmp_path / "k.seg.nrrd", seed=1)
    write_fake_bundle(tmp_path / "bundle")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _refused(scene, capsys, argv, *words):
    before = tree(scene)
    code, lines = run_cli(argv, capsys)
    message = assert_one_line_error(code, lines, *words)
    assert tree(scene) == before  # no input changed, no output, no temporary file
    return message


SINGLE_FILE_CASES = {
    "same spelling": (["k.nrrd", "-o", "k.nrrd"], ["is the input"]),
    "absolute against relative": (["{tmp}/k.nrrd", "-o", "k.nrrd"], ["is the input"]),
    "dot-dot spelling": (["k.nrrd", "-o", "sub/../k.nrrd"], ["is the input"]),
    "dot slash spelling": (["./k.nrrd", "-o", "{tmp}/./sub/../k.nrrd"], ["is the input"]),
    "confidence is the input": (["k.nrrd", "-o", "out.nrrd", "--confidence", "k.nrrd"], ["--confidence", "is the input"]),
    "seg-nrrd is the input": (["k.seg.nrrd", "-o", "out.nrrd", "--seg-nrrd", "k.seg.nrrd"], ["--seg-nrrd", "is the input"]),
    "label map is an input that looks like a segmentation": (["k.seg.nrrd", "-o", "k.seg.nrrd"], ["is the input"]),
    "seg-nrrd equals -o": (["k.nrrd", "-o", "o.seg.nrrd", "--seg-nrrd", "o.seg.nrrd"], ["same file"]),
    "confidence equals -o": (["k.nrrd", "-o", "o.nrrd", "--confidence", "o.nrrd"], ["same file"]),
    "confidence equals -o, other spelling": (["k.nrrd", "-o", "o.nrrd", "--confidence", "sub/../o.nrrd"], ["same file"]),
    "output inside the bundle": (["k.nrrd", "-o", "bundle/labels.nrrd", "--model", "bundle"], ["inside the input folder"]),
    "volumes JSON over the bundle card": (["k.nrrd", "-o", "o.nrrd", "--model", "bundle", "--volumes-json",
                                           "bundle/card.json"], ["--volumes-json"]),
    "overlay into the bundle": (["k.nrrd", "-o", "o.nrrd", "--model", "bundle", "--overlay", "bundle/x.png"],
                                ["inside the input folder"]),
    "a .mhd label map writes two files": (["k.nrrd", "-o", "o.mhd"], ["must end in"]),
    "a file used as a folder": (["k.nrrd", "-o", "k.nrrd/labels.nrrd"], ["cannot write here"]),
}


@pytest.mark.parametrize("argv, words", SINGLE_FILE_CASES.values(), ids=SINGLE_FILE_CASES.keys())
def test_single_file_outputs_that_would_hit_an_input_or_each_other(scene, capsys, argv, words):
    argv = [a.format(tmp=scene) for a in argv]
    if "--model" not in argv:
        argv += ["--model", "bundle"]
    _refused(scene, capsys, ["segment", *argv], *words)


def test_output_through_a_symlink_to_the_input(scene, capsys):
    os.symlink(scene / "k.nrrd", scene / "link.nrrd")
    _refused(scene, capsys, ["segment", "k.nrrd", "-o", "link.nrrd", "--model", "bundle"], "is the input")


def test_output_through_a_symlinked_folder(scene, capsys):
    os.symlink(scene, scene / "sub" / "up")
    _refused(scene, capsys, ["segment", "k.nrrd", "-o", "sub/up/k.nrrd", "--model", "bundle"], "is the input")


def test_output_that_is_a_hard_link_of_the_input(scene, capsys):
    os.link(scene / "k.nrrd", scene / "hard.nrrd")
    _refused(scene, capsys, ["segment", "k.nrrd", "-o", "hard.nrrd", "--model", "bundle"], "is the input")


def test_input_given_through_a_link_and_output_by_its_real_name(scene, capsys):
    os.symlink(scene / "k.nrrd", scene / "sub" / "alias.nrrd")
    _refused(scene, capsys, ["segment", "sub/alias.nrrd", "-o", "k.nrrd", "--model", "bundle"], "is the input")


def test_case_variants_collide_where_the_file_system_folds_case(scene, capsys, monkeypatch):
    from kneeseg import outputs

    monkeypatch.setattr(outputs, "folds_case", lambda folder: True)
    _refused(scene, capsys, ["segment", "k.nrrd", "-o", "Out.nrrd", "--confidence", "out.nrrd", "--model", "bundle"],
             "same file")


def test_case_variants_are_two_files_where_case_matters(scene, capsys):
    from kneeseg import outputs

    assert not outputs.folds_case(scene)  # this machine's file system keeps case apart
    code, lines = run_cli(["segment", "k.nrrd", "-o", "Out.nrrd", "--confidence", "out.nrrd", "--model", "bundle"],
                          capsys)
    assert code == 0, lines
    assert (scene / "Out.nrrd").is_file() and (scene / "out.nrrd").is_file()


def test_output_inside_an_input_dicom_folder(scene, capsys):
    write_series(scene / "dicom")
    _refused(scene, capsys, ["segment", "dicom", "-o", "dicom/labels.nrrd", "--model", "bundle"],
             "inside the input folder")
    os.symlink(scene / "dicom", scene / "dicom-link")
    _refused(scene, capsys, ["segment", "dicom", "-o", "dicom-link/labels.nrrd", "--model", "bundle"],
             "inside the input folder")


def test_a_folder_named_like_a_label_map_is_not_a_cohort(scene, capsys):
    (scene / "out.nrrd").mkdir()
    message = _refused(scene, capsys, ["segment", "k.nrrd", "-o", "out.nrrd", "--seg-nrrd", "b.seg.nrrd",
                                       "--model", "bundle"], "out.nrrd", "folder")
    assert "single input" not in message  # not a complaint about --seg-nrrd


def test_several_inputs_and_a_file_name(scene, capsys):
    _refused(scene, capsys, ["segment", "k.nrrd", "k.seg.nrrd", "-o", "results.nrrd", "--model", "bundle"],
             "output folder")


# --- overlay ------------------------------------------------------------------------------------------


@pytest.fixture
def overlay_scene(scene):
    write_volume(scene / "lab.nrrd", seed=2)
    return scene


@pytest.mark.parametrize("output, words", [
    ("k.nrrd", ["must end in .png"]),
    ("lab.nrrd", ["must end in .png"]),
    ("bundle/o.png", ["inside the input folder"]),
])
def test_overlay_output_against_its_inputs(overlay_scene, capsys, output, words):
    _refused(overlay_scene, capsys, ["overlay", "k.nrrd", "lab.nrrd", output, "--model", "bundle"], *words)


def test_overlay_output_that_is_a_link_to_its_image(overlay_scene, capsys):
    os.symlink(overlay_scene / "k.nrrd", overlay_scene / "k.png")
    _refused(overlay_scene, capsys, ["overlay", "k.nrrd", "lab.nrrd", "k.png", "--model", "bundle"], "is the input")


# --- cohorts ------------------------------------------------------------------------------------------


@pytest.fixture
def cohort(scene):
    for n in range(2):
        write_volume(scene / "cohort" / f"case{n}.nrrd", seed=10 + n)
    (scene / "cases.csv").write_text("path\ncohort/case0.nrrd\ncohort/case1.nrrd\n")
    return scene


COHORT_CASES = {
    "output is the input folder": (["cohort", "-o", "cohort"], ["input folder"]),
    "output is the input folder, --overwrite": (["cohort", "-o", "cohort", "--overwrite"], ["input folder"]),
    "output is the input folder, trailing slash": (["cohort/", "-o", "./cohort/"], ["input folder"]),
    "output inside the input folder": (["cohort", "-o", "cohort/results"], ["inside the input folder"]),
    "output folder holds the glob's files": (["cohort/*.nrrd", "-o", "cohort"], ["cohort"]),
    "summary over the cohort CSV": (["cases.csv", "-o", "results", "--summary", "cases.csv"], ["is the input"]),
    "summary over an input volume": (["cohort", "-o", "results", "--summary", "cohort/case0.nrrd"], [".csv"]),
    "summary inside the bundle": (["cohort", "-o", "results", "--summary", "bundle/s.csv"], ["inside the input folder"]),
    "output folder is a file": (["cohort", "-o", "k.nrrd/"], ["k.nrrd"]),
}


@pytest.mark.parametrize("argv, words", COHORT_CASES.values(), ids=COHORT_CASES.keys())
def test_cohort_outputs_against_the_inputs(cohort, capsys, argv, words):
    _refused(cohort, capsys, ["segment", *argv, "--model", "bundle"], *words)


def test_cohort_output_through_a_link_to_the_input_folder(cohort, capsys):
    os.symlink(cohort / "cohort", cohort / "results")
    _refused(cohort, capsys, ["segment", "cohort", "-o", "results", "--model", "bundle"], "input folder")


def test_case_names_that_differ_only_by_case_on_a_folding_file_system(cohort, capsys, monkeypatch):
    from kneeseg import outputs

    write_volume(cohort / "other" / "CASE0.nrrd", seed=3)
    monkeypatch.setattr(outputs, "folds_case", lambda folder: True)
    _refused(cohort, capsys, ["segment", "cohort/case0.nrrd", "other/CASE0.nrrd", "-o", "results",
                              "--model", "bundle"], "same file")


def test_a_cohort_with_nothing_to_do_says_so(cohort, capsys):
    code, lines = run_cli(["segment", "cohort", "-o", "results", "--model", "bundle"], capsys)
    assert code == 0, lines
    from kneeseg import cli

    code = cli.main(["segment", "cohort", "-o", "results", "--model", "bundle", "--progress", "json"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert "nothing to do" in out[-1] and "2 cases" in out[-1] and "--overwrite" in out[-1]

"""Class 6: a full disk says "no space left on device" with the path, exits 2, and leaves no side
output without the label map it describes (nothing of the failed run is left at all).

A full disk is simulated deterministically: an ``OSError(ENOSPC)`` at each write step (the fault
seam), SimpleITK's writer failing the way it does on a full disk (its real messages, which never
say "no space"), and a writer that silently leaves a short file (ITK's NIfTI writer on a full disk)
while the file system reports nothing free. One case fills a real 256 KiB tmpfs (root only).
"""

import errno
import os
import subprocess

import pytest
import SimpleITK as sitk

from attack import assert_one_line_error, fake_model, run_cli, temp_files, tree, write_fake_bundle, write_volume  # noqa: F401,E501

ALL_OUTPUTS = ["-o", "out/labels.nrrd", "--seg-nrrd", "out/bones.seg.nrrd", "--confidence", "out/conf.nrrd",
               "--volumes-json", "out/volumes.json", "--overlay", "out/overlay.png"]

# What SimpleITK 2.5 raises when the disk fills while writing (recorded on a full tmpfs).
ITK_NRRD_FULL = ("Exception thrown in SimpleITK ImageFileWriter_Execute: /tmp/SimpleITK-build/ITK/Modules/IO/NRRD/"
                 "src/itkNrrdImageIO.cxx:1349:\nITK ERROR: NrrdImageIO(0x5563a3121400): Write: Error writing {path}:\n"
                 "[nrrd] nrrdSave:\n[nrrd] nrrdWrite: trouble\n[nrrd] _nrrdWrite:\n[nrrd] _nrrdFormatNRRD_write: "
                 "couldn't write gzip data\n[nrrd] _nrrdEncodingGzip_write: expected to write 1024000 bytes, but only "
                 "wrote 131072\n[nrrd] _nrrdGzWrite: failed to write to file\n")
ITK_META_FULL = ("Exception thrown in SimpleITK ImageFileWriter_Execute: /tmp/SimpleITK-build/ITK/Modules/IO/Meta/"
                 "src/itkMetaImageIO.cxx:1110:\nITK ERROR: MetaImageIO(0x5563a3415620): File cannot be written: "
                 "{path}\nReason: No space left on device")


@pytest.fixture
def scene(tmp_path, monkeypatch, fake_model):  # noqa: F811
    write_volume(tmp_path / "k.nrrd")
    write_fake_bundle(tmp_path / "bundle")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _segment(capsys, *extra):
    return run_cli(["segment", "k.nrrd", *ALL_OUTPUTS, "--model", "bundle", *extra], capsys)


def _assert_nothing_written(scene, before):
    after = tree(scene)
    assert after == before, sorted(set(after) ^ set(before))


def _write_steps(scene, capsys):
    from kneeseg import writing

    steps = []
    with writing.inject_faults(lambda step, path: steps.append((step, path))):
        code, lines = _segment(capsys)
    assert code == 0, lines
    for name in ("labels.nrrd", "bones.seg.nrrd", "conf.nrrd", "volumes.json", "overlay.png"):
        (scene / "out" / name).unlink()
    (scene / "out").rmdir()
    return steps


def test_no_space_at_any_write_step(scene, capsys):
    from kneeseg import writing

    steps = _write_steps(scene, capsys)
    assert len(steps) >= 15
    before = tree(scene)
    for k in range(1, len(steps) + 1):
        calls = []

        def full(step, path, k=k):
            calls.append(step)
            if len(calls) == k:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        with writing.inject_faults(full):
            code, lines = _segment(capsys)
        message = assert_one_line_error(code, lines, "no space left on device", "out/")
        assert ".kneeseg-tmp" not in message  # the output the user named, not a temporary file
        _assert_nothing_written(scene, before)


@pytest.mark.parametrize("message", [ITK_NRRD_FULL, ITK_META_FULL], ids=["nrrd", "metaimage"])
@pytest.mark.parametrize("victim", ["labels.nrrd", "bones.seg.nrrd", "conf.nrrd"])
def test_itk_failing_on_a_full_disk(scene, capsys, monkeypatch, message, victim):
    """SimpleITK's own words on a full disk; the NRRD ones never say "no space", the disk does."""
    from kneeseg import writing

    real_write = sitk.WriteImage

    def write(image, path, *args):
        if str(path).endswith(victim):
            if "NrrdImageIO" in message:
                monkeypatch.setattr(writing, "free_bytes", lambda folder: 0)
            raise RuntimeError(message.format(path=path))
        return real_write(image, path, *args)

    monkeypatch.setattr(sitk, "WriteImage", write)
    before = tree(scene)
    code, lines = _segment(capsys)
    assert_one_line_error(code, lines, "no space left on device", victim)
    _assert_nothing_written(scene, before)


def test_a_writer_that_silently_writes_a_short_file(scene, capsys, monkeypatch):
    """ITK's NIfTI writer reports no error when the disk fills: the free space after the write tells."""
    from kneeseg import writing

    real_write = sitk.WriteImage

    def short_write(image, path, *args):
        real_write(image, path, *args)
        if str(path).endswith("labels.nii.gz"):
            with open(path, "r+b") as f:
                f.truncate(64)
            monkeypatch.setattr(writing, "free_bytes", lambda folder: 0)

    monkeypatch.setattr(sitk, "WriteImage", short_write)
    before = tree(scene)
    code, lines = run_cli(["segment", "k.nrrd", "-o", "out/labels.nii.gz", "--volumes-json", "out/v.json",
                           "--model", "bundle"], capsys)
    assert_one_line_error(code, lines, "no space left on device", "labels.nii.gz")
    _assert_nothing_written(scene, before)


def test_a_rerun_that_runs_out_of_space_keeps_the_earlier_outputs(scene, capsys):
    from kneeseg import writing

    code, lines = _segment(capsys)
    assert code == 0, lines
    before = tree(scene)
    calls = []

    def full_at_the_label_map(step, path):
        calls.append(step)
        if path.name == "labels.nrrd" and step == "write":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with writing.inject_faults(full_at_the_label_map):
        code, lines = _segment(capsys)
    assert_one_line_error(code, lines, "no space left on device", "labels.nrrd")
    _assert_nothing_written(scene, before)  # the earlier label map with its own side outputs, untouched


REPORT = ["report.html", "summary.csv", "thumbnails"]  # the cohort's report and summary (issue 13)


def test_a_cohort_that_runs_out_of_space_stops_and_resumes(scene, capsys):
    from kneeseg import writing

    for n in range(3):
        write_volume(scene / "cohort" / f"c{n}.nrrd", seed=30 + n)
    inputs = tree(scene / "cohort", scene / "bundle")

    def full_at_c1(step, path):
        # the output a write is for: a staged temporary file keeps it after its random part
        # (".kneeseg-tmp-XXXXXXXX-c1.nrrd"), which may itself hold "c1" by chance
        target = path.name.rsplit("-", 1)[-1] if writing.is_temp_name(path.name) else path.name
        if target.startswith("c1."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with writing.inject_faults(full_at_c1):
        code, lines = run_cli(["segment", "cohort", "-o", "res", "--model", "bundle"], capsys)
    assert_one_line_error(code, lines, "no space left on device", "c1")
    assert sorted(p.name for p in (scene / "res").iterdir()) == ["c0.nrrd", "c0.seg.nrrd", *REPORT]
    assert sorted(p.name for p in (scene / "res" / "thumbnails").iterdir()) == ["c0.png", "legend.png"]
    code, lines = run_cli(["segment", "cohort", "-o", "res", "--model", "bundle"], capsys)
    assert code == 0, lines
    assert sorted(p.name for p in (scene / "res").iterdir()) == [
        "c0.nrrd", "c0.seg.nrrd", "c1.nrrd", "c1.seg.nrrd", "c2.nrrd", "c2.seg.nrrd", *REPORT]
    assert sorted(p.name for p in (scene / "res" / "thumbnails").iterdir()) == ["c0.png", "c1.png", "c2.png",
                                                                                "legend.png"]
    assert tree(scene / "cohort", scene / "bundle") == inputs


def test_the_overlay_command_on_a_full_disk(scene, capsys):
    from kneeseg import writing

    write_volume(scene / "lab.nrrd", seed=4)
    before = tree(scene)

    def full(step, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with writing.inject_faults(full):
        code, lines = run_cli(["overlay", "k.nrrd", "lab.nrrd", "o.png", "--model", "bundle"], capsys)
    assert_one_line_error(code, lines, "no space left on device", "o.png")
    _assert_nothing_written(scene, before)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 256 KiB file system (needs root and a mount that is allowed; else the test skips)."""
    mount = tmp_path / "full"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz"])
def test_a_real_full_disk(scene, capsys, tiny_tmpfs, suffix):
    write_volume(scene / "big.nrrd", size=(96, 96, 64))
    before = tree(scene / "big.nrrd", scene / "bundle")
    code, lines = run_cli(["segment", "big.nrrd", "-o", tiny_tmpfs / f"labels{suffix}", "--confidence",
                           tiny_tmpfs / f"conf{suffix}", "--volumes-json", tiny_tmpfs / "v.json",
                           "--model", "bundle"], capsys)
    assert_one_line_error(code, lines, "no space left on device", str(tiny_tmpfs))
    assert list(tiny_tmpfs.iterdir()) == []
    assert tree(scene / "big.nrrd", scene / "bundle") == before
    assert temp_files(scene) == []

"""Class 2: a bundle cannot make kneeseg read outside it, hang, or fill the disk.

Weight files (and the card) are opened only inside the bundle folder, only when they are regular
files, and only up to a bound; zips are unpacked with the member count, member kinds, total size
and compression ratio counted on the bytes actually produced. Each hostile bundle is refused with
exit 2 and one line through ``kneeseg info`` (the checksums are updated to match, as an attacker
would), nothing outside the bundle is read, and no unpacked copy is left behind.
"""

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from attack import REPO, assert_one_line_error, run_cli, set_weight, tree, write_fake_bundle


@pytest.fixture
def bundle(tmp_path, monkeypatch):
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # unpacked zips land here, seen by no other run
    return write_fake_bundle(tmp_path / "bundle")


def _refused_info(bundle, capsys, *words):
    before = tree(Path(bundle).parent)
    code, lines = run_cli(["info", bundle], capsys)
    assert_one_line_error(code, lines, *words)
    assert tree(Path(bundle).parent) == before


def _unpacked_copies():
    return set(Path(tempfile.gettempdir()).iterdir())


def test_a_weight_file_linked_out_of_the_bundle(bundle, tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"private data")
    (bundle / "model.keras").unlink()
    os.symlink(secret, bundle / "model.keras")
    set_weight(bundle, "model.keras")
    card = json.loads((bundle / "card.json").read_text())
    card["weights"]["model.keras"]["sha256"] = hashlib.sha256(b"private data").hexdigest()
    (bundle / "card.json").write_text(json.dumps(card))
    _refused_info(bundle, capsys, "model.keras", "leading out of the bundle")


def test_a_link_inside_the_bundle_is_fine(bundle, capsys):
    os.rename(bundle / "model.keras", bundle / "weights.bin")
    os.symlink("weights.bin", bundle / "model.keras")
    code, lines = run_cli(["info", bundle], capsys)
    assert code == 0, lines


def _hostile_child(bundle, timeout=120):
    """``kneeseg info`` in a child process: a hang shows up as a timeout, not a stuck suite."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "KneeSegmentation")}
    return subprocess.run([sys.executable, "-m", "kneeseg", "info", str(bundle)], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.mark.parametrize("target", ["/dev/zero", "/dev/urandom"])
def test_a_weight_file_linked_to_an_endless_device_does_not_hang(bundle, target):
    (bundle / "model.keras").unlink()
    os.symlink(target, bundle / "model.keras")
    proc = _hostile_child(bundle)
    assert_one_line_error(proc.returncode, proc.stderr.splitlines(), "model.keras")


def test_a_weight_file_that_is_a_pipe_does_not_hang(bundle):
    (bundle / "model.keras").unlink()
    os.mkfifo(bundle / "model.keras")
    proc = _hostile_child(bundle)
    assert_one_line_error(proc.returncode, proc.stderr.splitlines(), "model.keras", "not a regular file")


def test_a_card_linked_to_dev_zero_does_not_hang(bundle):
    (bundle / "card.json").unlink()
    os.symlink("/dev/zero", bundle / "card.json")
    proc = _hostile_child(bundle)
    assert_one_line_error(proc.returncode, proc.stderr.splitlines(), "card.json")


def test_a_weight_file_that_is_a_folder(bundle, capsys):
    (bundle / "model.keras").unlink()
    (bundle / "model.keras").mkdir()
    _refused_info(bundle, capsys, "model.keras", "not a regular file")


def test_a_weight_file_above_the_size_bound(bundle, capsys, monkeypatch):
    from kneeseg import bundle_files

    monkeypatch.setattr(bundle_files, "MAX_WEIGHT_BYTES", 1024)
    set_weight(bundle, "model.keras", b"\0" * 4096)
    _refused_info(bundle, capsys, "model.keras", "more than a bundle file may hold")


def test_a_card_above_the_size_bound(bundle, capsys, monkeypatch):
    from kneeseg import bundle_files

    monkeypatch.setattr(bundle_files, "MAX_CARD_BYTES", 2048)
    card = json.loads((bundle / "card.json").read_text())
    card["description"] = "x" * 4000
    (bundle / "card.json").write_text(json.dumps(card))
    _refused_info(bundle, capsys, "card.json", "more than a bundle file may hold")


# --- zips ---------------------------------------------------------------------------------------------


def _zip(path, members, compression=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in members.items():
            if isinstance(data, zipfile.ZipInfo):
                z.writestr(data, b"target")
            else:
                z.writestr(name, data)
    return path


def _bundle_members(bundle):
    return {f"b/{p.name}": p.read_bytes() for p in sorted(bundle.iterdir())}


def _refused_zip(path, capsys, *words):
    copies = _unpacked_copies()
    _refused_info(path, capsys, *words)
    assert _unpacked_copies() == copies  # nothing unpacked is left behind


def test_a_zip_bomb_is_stopped_by_its_ratio(bundle, tmp_path, capsys, monkeypatch):
    from kneeseg import bundle_files

    monkeypatch.setattr(bundle_files, "RATIO_FLOOR_BYTES", 1 << 20)
    members = {**_bundle_members(bundle), "b/padding.bin": b"\0" * (40 << 20)}
    path = _zip(tmp_path / "bomb.zip", members)
    assert path.stat().st_size < 200 << 10
    _refused_zip(path, capsys, "zip bomb")


def test_a_zip_above_the_total_size_bound(bundle, tmp_path, capsys, monkeypatch):
    from kneeseg import bundle_files

    monkeypatch.setattr(bundle_files, "MAX_UNPACKED_BYTES", 1 << 20)
    members = {**_bundle_members(bundle), "b/noise.bin": os.urandom(2 << 20)}
    _refused_zip(_zip(tmp_path / "big.zip", members, zipfile.ZIP_STORED), capsys, "unpacks to more than")


def test_a_zip_whose_headers_lie_about_sizes(bundle, tmp_path, capsys, monkeypatch):
    """The central directory says 10 bytes; the member unpacks to 8 MiB: counted, not believed."""
    from kneeseg import bundle_files

    monkeypatch.setattr(bundle_files, "MAX_UNPACKED_BYTES", 1 << 20)
    path = _zip(tmp_path / "liar.zip", {**_bundle_members(bundle), "b/pad.bin": b"\0" * (8 << 20)})
    data = bytearray(path.read_bytes())
    central = next(i for i in range(len(data)) if data[i:i + 4] == b"PK\x01\x02"
                   and data[i + 46:i + 46 + 9] == b"b/pad.bin")
    data[central + 24:central + 28] = (10).to_bytes(4, "little")  # uncompressed size in the central directory
    path.write_bytes(bytes(data))
    _refused_zip(path, capsys, "liar.zip")


def test_a_zip_with_too_many_members(bundle, tmp_path, capsys):
    members = {**_bundle_members(bundle), **{f"b/extra{n}.txt": b"x" for n in range(300)}}
    _refused_zip(_zip(tmp_path / "many.zip", members), capsys, "members")


def test_a_zip_with_a_symlink_member(bundle, tmp_path, capsys):
    link = zipfile.ZipInfo("b/model.onnx")
    link.external_attr = (0o120777 << 16)
    _refused_zip(_zip(tmp_path / "link.zip", {**_bundle_members(bundle), "link": link}), capsys, "symbolic link")


@pytest.mark.parametrize("name", ["/etc/evil", "b/../../evil", "C:\\evil", "b\\..\\evil"])
def test_a_zip_with_an_unsafe_member_name(bundle, tmp_path, capsys, name):
    _refused_zip(_zip(tmp_path / "unsafe.zip", {**_bundle_members(bundle), name: b"x"}), capsys, "unsafe path")


def test_a_zip_with_a_member_twice(bundle, tmp_path, capsys):
    path = tmp_path / "twice.zip"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in _bundle_members(bundle).items():
            z.writestr(name, data)
        with pytest.warns(UserWarning):
            z.writestr("b/card.json", b"{}")
    _refused_zip(path, capsys, "appears twice")


def test_a_damaged_zip(bundle, tmp_path, capsys):
    path = _zip(tmp_path / "damaged.zip", _bundle_members(bundle))
    data = bytearray(path.read_bytes())
    start = data.find(b"PK\x03\x04") + 30 + len("b/card.json") + 10
    data[start:start + 20] = b"\xff" * 20  # flip compressed bytes of the first member
    path.write_bytes(bytes(data))
    _refused_zip(path, capsys, "damaged.zip")


def test_a_sound_zip_still_loads(bundle, tmp_path, capsys):
    from kneeseg.bundle import zip_bundle

    code, lines = run_cli(["info", zip_bundle(bundle, tmp_path / "sound.zip")], capsys)
    assert code == 0, lines

"""Shared tools of the reliability suite: a fast fake model, checksums of whole folders, one-line errors.

Most cases never run a network: they are refused before any work, or run with :func:`fake_predictor`
(a deterministic intensity-to-probability map with the predictor contract) on tiny volumes, so the
suite stays fast. Nothing here imports modules that only exist after the fixes, so the suite can be
run against older code to show which cases fail there.
"""

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import toy_knee

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Testing/core: its helpers are shared here
from test_io import _write_dicom_series  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
SHIPPED = REPO / "KneeSegmentation" / "Resources" / "Models" / "knee-bones-default"


def fake_predictor(batch):
    """Class probabilities from intensity: bright voxels femur, middle ones tibia (same contract as a model)."""
    x = np.asarray(batch, np.float32)[..., 0]
    logits = np.stack([-2 * x, 2 * x - 1, 1.0 - np.abs(x), np.full_like(x, -3.0), np.full_like(x, -3.0)], -1)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def write_fake_bundle(folder, input_size=32, planes=("sagittal",), weights=b"not a real keras file"):
    """A bundle folder whose card is the shipped one, made small; its 'model.keras' is never loaded
    (runs use :func:`fake_predictor`). Its checksum matches, so it loads like a real bundle."""
    folder = Path(folder)
    folder.mkdir(parents=True)
    card = json.loads((SHIPPED / "card.json").read_text())
    card["model"]["input_size"] = input_size
    card["preprocessing"]["planes"] = list(planes)
    card["preprocessing"]["n4"] = False
    (folder / "model.keras").write_bytes(weights)
    card["weights"] = {"model.keras": {"file": "model.keras", "sha256": hashlib.sha256(weights).hexdigest()}}
    (folder / "card.json").write_text(json.dumps(card, indent=2))
    return folder


def set_weight(bundle, name, data=None, file=None):
    """Point the card's weight entry ``name`` at ``file`` (default: its current file) and update its
    checksum to match ``data`` (or the file's bytes): what a careless or hostile editor would do."""
    card_path = Path(bundle) / "card.json"
    card = json.loads(card_path.read_text())
    file = file or card["weights"].get(name, {}).get("file", name)
    if data is not None:
        (Path(bundle) / file).write_bytes(data)
    digest = hashlib.sha256(data if data is not None else b"").hexdigest()
    card["weights"][name] = {"file": file, "sha256": digest}
    card_path.write_text(json.dumps(card, indent=2))


def write_volume(path, size=(24, 24, 20), spacing=(3.0, 3.0, 3.0), seed=0, **kwargs):
    image, _ = toy_knee(size=size, spacing=spacing, seed=seed, **kwargs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def tree(*roots) -> dict:
    """Every entry under ``roots`` (hidden ones too): relative path -> SHA-256, 'dir' or 'link -> target'."""
    out = {}
    for root in roots:
        root = Path(root)
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                key = str(path.relative_to(root.parent))
                if path.is_symlink():
                    out[key] = f"link -> {os.readlink(path)}"
                elif path.is_dir():
                    out[key] = "dir"
                elif path.is_file():
                    out[key] = hashlib.sha256(path.read_bytes()).hexdigest()
                else:
                    out[key] = "special"
    return out


def temp_files(root) -> list:
    """Files an interrupted or failed write could leave: hidden names, 'tmp'/'partial' in the name."""
    found = []
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            if name.startswith(".") or "tmp" in name.lower() or "partial" in name.lower():
                found.append(str(Path(dirpath, name).relative_to(root)))
    return sorted(found)


def run_cli(argv, capsys):
    """``kneeseg ARGV`` in this process: (exit code, stderr lines)."""
    from kneeseg import cli

    capsys.readouterr()
    code = cli.main([str(a) for a in argv] + ["--progress", "none"] if argv[0] == "segment" else
                    [str(a) for a in argv])
    captured = capsys.readouterr()
    return code, [line for line in captured.err.splitlines() if line.strip()]


def assert_one_line_error(code, lines, *words):
    """Exit code 2 and exactly one line, 'kneeseg: error: ...', holding every one of ``words``."""
    assert code == 2, f"exit code {code}, stderr: {lines}"
    assert not any("Traceback" in line for line in lines), lines
    errors = [line for line in lines if line.startswith("kneeseg: error:")]
    assert len(errors) == 1, lines
    for word in words:
        assert word in errors[0], f"{word!r} not in {errors[0]!r}"
    return errors[0]


def assert_no_itk_noise(message):
    """No ITK banner, object address or bare region/number line where the cause is known."""
    for noise in ("Exception thrown", ".hxx", ".cxx", "(0x", "ITK ERROR", "Size: [", "(0 0 1)"):
        assert noise not in message, f"{noise!r} in {message!r}"


@pytest.fixture
def fake_bundle(tmp_path):
    return write_fake_bundle(tmp_path / "bundle")


@pytest.fixture
def fake_model(monkeypatch):
    """Every predictor the pipeline makes is the fake one (no TensorFlow, no weights)."""
    from kneeseg import infer

    monkeypatch.setattr(infer, "make_predictor", lambda bundle, backend="auto": fake_predictor)
    return fake_predictor


def copy_tree(src, dst):
    if Path(dst).exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, symlinks=True)


def write_series(folder, n=8, shape=(16, 16), spacing=(0.5, 0.5, 2.0), positions=None,
                 orientation=(1, 0, 0, 0, 1, 0), sizes=None, echo=None, series_uid="1.2.826.0.9", first=0):
    """A real DICOM MR series of ``n`` random slices (test_io's writer): ``positions``, ``orientation``
    (lists per slice allowed) and ``sizes`` break it the way a test wants."""
    rng = np.random.default_rng(n)
    slices = [rng.random(sizes[k] if sizes else shape) * 1000 + 100 for k in range(n)]
    _write_dicom_series(Path(folder), slices, spacing, echo, series_uid, first, positions, orientation)
    return Path(folder)

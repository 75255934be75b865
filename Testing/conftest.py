"""Shared fixtures: small synthetic knees (no real data needed) and the path to ../shared/data."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "KneeSegmentation"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

SHARED_DATA = REPO.parent / "shared" / "data"


def load_script(name):
    """``scripts/NAME.py`` imported as a module (its functions, without running it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shared_data(*parts):
    """A path under ../shared/data, or skip the test with the reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent (it lives beside the project, not in it)")
    return path


def toy_knee(size=(48, 40, 36), spacing=(1.5, 1.2, 1.0), direction=None, origin=(10.0, -20.0, 5.0), seed=0,
             noise=0.05):
    """(image, labelmap) SimpleITK images of a cartoon knee in LPS: femur above tibia, fibula, patella.

    Bones are ellipsoids placed in *physical* space, so any direction matrix gives the same anatomy.
    """
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    labelmap = sitk.Image(list(size), sitk.sitkUInt8)
    labelmap.SetSpacing(spacing)
    labelmap.SetOrigin(origin)
    if direction is not None:
        labelmap.SetDirection(tuple(np.asarray(direction, dtype=float).flatten()))
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in size], indexing="ij"), -1).reshape(-1, 3)
    d = np.array(labelmap.GetDirection()).reshape(3, 3)
    points = np.array(origin) + (idx * np.array(spacing)) @ d.T
    centre = np.array(origin) + (d @ ((np.array(size) - 1) * np.array(spacing))) / 2
    rel = points - centre
    extent = np.abs(d @ ((np.array(size) - 1) * np.array(spacing))).max() / 2

    def ellipsoid(c, r):
        return (((rel - np.array(c) * extent) / (np.array(r) * extent)) ** 2).sum(-1) <= 1

    labels = np.zeros(len(points), np.uint8)
    labels[ellipsoid((0, 0, 0.45), (0.35, 0.3, 0.42))] = 1  # femur, superior (+S)
    labels[ellipsoid((0, 0, -0.45), (0.33, 0.3, 0.4))] = 2  # tibia, inferior
    labels[ellipsoid((0.25, 0.15, -0.5), (0.08, 0.08, 0.3))] = 3  # fibula, lateral-posterior
    labels[ellipsoid((0, -0.45, 0.2), (0.14, 0.07, 0.15))] = 4  # patella, anterior (-P)
    array = labels.reshape(size).transpose(2, 1, 0).copy()  # numpy order (k, j, i)
    intensity = np.array([0.2, 1.0, 0.65, 0.45, 0.85])  # background, femur, tibia, fibula, patella
    image_array = intensity[array] + noise * rng.standard_normal(array.shape)
    image = sitk.GetImageFromArray(image_array.astype(np.float32))
    image.CopyInformation(labelmap)
    lab = sitk.GetImageFromArray(array)
    lab.CopyInformation(labelmap)
    return image, lab


def pytest_collection_modifyitems(items):
    """A test that needs the trained tiny model is slow (the model costs a minute): ``-m "not slow"`` skips it."""
    for item in items:
        if "tiny_bundle" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def toy_case():
    return toy_knee()


@pytest.fixture
def oblique_direction():
    """A non-identity rotation (coronal-ish acquisition tilted 20 degrees)."""
    a = np.deg2rad(20)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    coronal = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], dtype=float)
    return rx @ coronal


TINY_TRAINING = dict(filters=8, depth=2, input_size=64, window_mm=90.0, planes=("sagittal", "coronal"),
                     epochs=10, steps_per_epoch=15, augment=False, validation_steps=3, batch_size=8, patience=6, seed=0,
                     learning_rate=3e-3, final_learning_rate=1e-3, loss="dice+ce")


def write_toy_pairs(folder, n=5, **kwargs):
    """Write ``n`` toy image/label pairs as folder/images + folder/labels."""
    import SimpleITK as sitk

    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(exist_ok=True)
    for i in range(n):
        image, labels = toy_knee(seed=i, **kwargs)
        sitk.WriteImage(image, str(folder / "images" / f"case{i}.nrrd"))
        sitk.WriteImage(labels, str(folder / "labels" / f"case{i}.nrrd"))
    return folder


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A tiny model trained by the real training path on toy knees: 10 epochs of 15 batches, about a
    minute on 2 idle cores (longer on a busy machine); trained once per test session."""
    from kneeseg.train import TrainConfig
    from kneeseg.workflows.train import train_bundle

    root = tmp_path_factory.mktemp("tiny_bundle")
    data = write_toy_pairs(root / "data", size=(48, 48, 40), spacing=(1.5, 1.5, 1.5))
    train_bundle(TrainConfig.from_flat(**TINY_TRAINING), root / "bundle", root / "work", data=data, name="tiny-test-model",
                 export_onnx=False)
    return root / "bundle"


MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def write_dicom_series(folder, image, echoes=1, uid_root="1.2.826.0.1.3680043.10.1234"):
    """Write a 3D SimpleITK image as an MR DICOM series, one file per slice (and per echo), with the
    position/orientation tags a scanner writes. Returns the list of files (echo 1 first)."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    pixels = sitk.Cast(sitk.RescaleIntensity(image, 0, 1000), sitk.sitkInt16)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    orientation = "\\".join(f"{v:.6f}" for v in np.concatenate([direction[:, 0], direction[:, 1]]))
    common = {"0008|0060": "MR", "0008|0016": MR_IMAGE_STORAGE, "0010|0010": "Knee^Test", "0010|0020": "KNEE0001",
              "0010|0030": "19700101", "0010|0040": "O", "0008|0020": "20261202", "0008|0030": "120000",
              "0008|0050": "ACC0001", "0008|0090": "", "0020|0010": "1", "0020|0011": "3",
              "0020|000d": f"{uid_root}.1", "0020|000e": f"{uid_root}.2", "0020|0052": f"{uid_root}.3",
              "0008|0070": "kneeseg tests", "0018|0050": f"{image.GetSpacing()[2]:.4f}", "0020|0037": orientation}
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files = []
    for echo in range(1, echoes + 1):
        for k in range(image.GetSize()[2]):
            frame = pixels[:, :, k] * echo if echo > 1 else pixels[:, :, k]
            for tag, value in common.items():
                frame.SetMetaData(tag, value)
            position = image.TransformIndexToPhysicalPoint((0, 0, k))
            frame.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in position))
            frame.SetMetaData("0020|0013", str(k + 1 + (echo - 1) * image.GetSize()[2]))
            frame.SetMetaData("0018|0086", str(echo))
            frame.SetMetaData("0008|0018", f"{uid_root}.4.{echo}.{k + 1}")
            path = folder / f"e{echo}_{k:03d}.dcm"
            writer.SetFileName(str(path))
            writer.Execute(frame)
            files.append(path)
    return files

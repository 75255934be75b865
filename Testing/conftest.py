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
    image_array = np.where(array > 0, 1.0, 0.3) + noise * rng.standard_normal(array.shape)
    image = sitk.GetImageFromArray(image_array.astype(np.float32))
    image.CopyInformation(labelmap)
    lab = sitk.GetImageFromArray(array)
    lab.CopyInformation(labelmap)
    return image, lab


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

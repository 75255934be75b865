"""Fixtures of the headless Slicer-layer tests (the harness is in ``mrml_harness``).

Run: ``cd <repo> && PYTHONPATH=KneeSegmentation python -m pytest Testing/slicer_extension -q``

This folder must not be named ``slicer``: slicer-core's ``slicer`` package extends its path over every
``slicer`` folder on ``sys.path`` and would import these test files as parts of Slicer.
"""

import sys

import pytest

# The harness is imported inside the fixtures: without slicer-core each test module skips itself
# (with the reason) when it imports the harness, instead of the conftest failing to load.


@pytest.fixture
def mrml():
    from mrml_harness import Mrml

    m = Mrml()
    yield m
    m.scene.Clear(1)


@pytest.fixture
def knee(mrml):
    from mrml_harness import addVolume, obliqueCoronalMatrix, syntheticKnee

    image, labels = syntheticKnee()
    node = addVolume(mrml.scene, image, obliqueCoronalMatrix())
    node.CreateDefaultDisplayNodes()
    mrml.addToStudy(node)
    return node, labels


@pytest.fixture
def bundle(tmp_path):
    from mrml_harness import writeFakeBundle

    return writeFakeBundle(tmp_path / "bundle")


@pytest.fixture
def fakeLogic(mrml, tmp_path, monkeypatch):
    """A logic whose child process is the fake core (mode set per test with ``setMode``)."""
    from KneeSegmentationLib import KneeSegmentationLogic
    from mrml_harness import FAKE_CORE, fakeCardReader

    monkeypatch.setenv("KNEESEG_FAKE_MODE", "ok")
    monkeypatch.setenv("KNEESEG_FAKE_PIDFILE", str(tmp_path / "pids.txt"))
    (tmp_path / "work").mkdir()
    logic = KneeSegmentationLogic(scene=mrml.scene, python=sys.executable, moduleDir=FAKE_CORE,
                                  cardReader=fakeCardReader, terminologiesLogic=mrml.terminologies,
                                  tempDir=str(tmp_path / "work"))
    logic.setMode = lambda mode: monkeypatch.setenv("KNEESEG_FAKE_MODE", mode)
    return logic

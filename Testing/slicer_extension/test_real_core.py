"""The logic with the REAL kneeseg core: bundle verification always; inference once the model ships.

The end-to-end tests run ``python -m kneeseg segment`` from the module folder, as Slicer does with
PythonSlicer. They skip (saying why) while ``Resources/Models/knee-bones-default`` is absent, and
the real-data test also skips when ``../shared/data/real_unlabelled`` is absent.
"""

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import slicer
import slicer.util as su

from mrml_harness import knee, mrml  # noqa: F401 (fixtures)
from mrml_harness import (FAKE_CORE, MODULE_DIR, assertSameSnapshot, saveAndReloadSegmentation,
                          sceneSnapshot, segmentMask)
from kneeseg import labels as L
from KneeSegmentationLib import KneeSegmentationError, KneeSegmentationLogic, terminology

DEFAULT_BUNDLE = MODULE_DIR / "Resources" / "Models" / "knee-bones-default"
REAL_UNLABELLED = MODULE_DIR.parents[1] / "shared" / "data" / "real_unlabelled"

needsDefaultBundle = pytest.mark.skipif(
    not (DEFAULT_BUNDLE / "card.json").is_file(),
    reason=f"the default model bundle is not shipped yet ({DEFAULT_BUNDLE}); these tests run once it exists")


def _realFormatBundle(folder: Path) -> Path:
    """A bundle in the core's format (card + checksummed weight file) whose weights are a stand-in."""
    folder.mkdir(parents=True)
    weights = folder / "model.keras"
    weights.write_bytes(b"stand-in weights")
    card = {"format": "kneeseg-bundle", "format_version": 1, "name": "stand-in",
            "labels": L.labels_to_json(L.SEPARATE_BONES),
            "model": {"dims": 2, "input_size": 224, "n_classes": 5, "filters": 32, "depth": 4, "output": "separate"},
            "preprocessing": {"planes": ["sagittal"]},
            "weights": {"model.keras": {"file": "model.keras", "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}}}
    (folder / "card.json").write_text(json.dumps(card))
    return folder


def test_core_bundle_check_accepts_a_good_bundle_and_refuses_a_modified_one(mrml, knee, tmp_path, monkeypatch):
    """The default card reader is the core's load_bundle: weights are verified before anything runs."""
    volume, expected = knee
    monkeypatch.setenv("KNEESEG_FAKE_MODE", "ok")
    (tmp_path / "work").mkdir()
    logic = KneeSegmentationLogic(scene=mrml.scene, python=sys.executable, moduleDir=FAKE_CORE,
                                  terminologiesLogic=mrml.terminologies, tempDir=str(tmp_path / "work"))
    bundle = _realFormatBundle(tmp_path / "bundle")
    seg = logic.segment(volume, model=bundle, timeout=60)
    np.testing.assert_array_equal(segmentMask(seg, "Tibia", volume), expected == 2)

    with open(bundle / "model.keras", "ab") as f:
        f.write(b"tampered")
    before = sceneSnapshot(mrml.scene, [volume], [seg])
    with pytest.raises(KneeSegmentationError) as err:
        logic.segment(volume, model=bundle)
    assert err.value.kind == "input" and "checksum mismatch" in err.value.message
    assertSameSnapshot(before, sceneSnapshot(mrml.scene, [volume], [seg]))
    assert list((tmp_path / "work").iterdir()) == []

    (bundle / "card.json").write_text("{not json")
    with pytest.raises(KneeSegmentationError, match="not valid JSON"):
        logic.readCard(bundle)


def _realLogic(mrml, tmp_path, **kwargs):
    (tmp_path / "work").mkdir(exist_ok=True)
    return KneeSegmentationLogic(scene=mrml.scene, python=sys.executable, terminologiesLogic=mrml.terminologies,
                                 tempDir=str(tmp_path / "work"), **kwargs)


def _checkSegmentation(seg, volume, card):
    names = [seg.GetSegmentation().GetNthSegment(i).GetName() for i in range(seg.GetSegmentation().GetNumberOfSegments())]
    assert names == [label["name"] for label in sorted(card["labels"], key=lambda l: l["value"])]
    for label in card["labels"]:
        segment = seg.GetSegmentation().GetSegment(seg.GetSegmentation().GetSegmentIdBySegmentName(label["name"]))
        assert terminology.typeCode(segment.GetTerminology())[1] == label["snomed"]["code"]
    assert seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole()) is volume


@needsDefaultBundle
@pytest.mark.slow
def test_real_core_segments_an_oblique_coronal_volume(mrml, knee, tmp_path):
    volume, _ = knee
    logic = _realLogic(mrml, tmp_path)
    card = logic.readCard(DEFAULT_BUNDLE)
    before = su.arrayFromVolume(volume).copy()
    run = logic.startSegmentation(volume, device="cpu").wait(300)
    assert run.status == "succeeded", run.logText
    seg = run.segmentationNode
    _checkSegmentation(seg, volume, card)
    np.testing.assert_array_equal(su.arrayFromVolume(volume), before)
    sh = mrml.shNode
    assert sh.GetItemParent(sh.GetItemByDataNode(seg)) == sh.GetItemParent(sh.GetItemByDataNode(volume))
    reloaded = saveAndReloadSegmentation(mrml.scene, seg, tmp_path / "real.seg.nrrd")
    for i in range(seg.GetSegmentation().GetNumberOfSegments()):
        segmentId = seg.GetSegmentation().GetNthSegmentID(i)
        name = seg.GetSegmentation().GetNthSegment(i).GetName()
        otherId = reloaded.GetSegmentation().GetSegmentIdBySegmentName(name)
        np.testing.assert_array_equal(segmentMask(seg, segmentId, volume), segmentMask(reloaded, otherId, volume))


@needsDefaultBundle
@pytest.mark.slow
def test_real_cli_refuses_a_modified_bundle(mrml, knee, tmp_path):
    """With verification skipped in the panel (card read only), the CLI itself refuses the bundle."""
    from kneeseg.bundle import read_card

    volume, _ = knee
    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    with open(bundle / "model.keras", "ab") as f:
        f.write(b"tampered")
    logic = _realLogic(mrml, tmp_path, cardReader=read_card)
    before = sceneSnapshot(mrml.scene, [volume])
    with pytest.raises(KneeSegmentationError) as err:
        logic.segment(volume, model=bundle, timeout=300)
    assert err.value.kind == "input" and "checksum mismatch" in err.value.message
    assertSameSnapshot(before, sceneSnapshot(mrml.scene, [volume]))


def _realVolumes():
    return sorted(REAL_UNLABELLED.glob("*.nrrd")) if REAL_UNLABELLED.is_dir() else []


@needsDefaultBundle
@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.skipif(not _realVolumes(), reason=f"real data not available: {REAL_UNLABELLED} is absent")
@pytest.mark.parametrize("path", _realVolumes(), ids=lambda p: p.name)
def test_real_unlabelled_volume_through_the_logic(mrml, tmp_path, path):
    """Each real scan: load through a storage node, segment, save .seg.nrrd, reload, check."""
    volume = mrml.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", path.stem)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(volume)
    mrml.addToStudy(volume)
    logic = _realLogic(mrml, tmp_path)
    card = logic.readCard(DEFAULT_BUNDLE)
    run = logic.startSegmentation(volume, device="cpu").wait(600)
    assert run.status == "succeeded", run.logText
    seg = run.segmentationNode
    _checkSegmentation(seg, volume, card)
    outDir = Path(os.environ.get("KNEESEG_REALDATA_OUT", tmp_path))
    outDir.mkdir(parents=True, exist_ok=True)
    reloaded = saveAndReloadSegmentation(mrml.scene, seg, outDir / f"{path.stem}.seg.nrrd")
    assert reloaded.GetSegmentation().GetNumberOfSegments() == len(card["labels"])
    assert all(v >= 0 for v in run.volumesMl.values())
    (outDir / f"{path.stem}.volumes.json").write_text(json.dumps(run.volumesMl, indent=1))

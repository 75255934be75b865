#!/usr/bin/env python3
"""Render what the Slicer module produces, from the real MRML scene (slicer-core, no Qt, no GUI).

Loads a volume through Slicer's storage node, runs ``KneeSegmentationLogic.segment`` (the same code
the panel's Apply runs: the kneeseg CLI in a separate process, terminology, subject hierarchy), saves
and reloads the ``.seg.nrrd``, and draws slices of the *reloaded segmentation node* with the segment
names and colours it carries. Used for the screenshot in docs/slicer.md; needs the test extra.

    python scripts/slicer_scene_overlay.py VOLUME.nrrd OUT.png
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "KneeSegmentation"), str(REPO / "Testing" / "slicer_extension")]


def main(volume_path, out_png, n_slices=4):
    import slicer
    from mrml_harness import Mrml, saveAndReloadSegmentation, segmentMask

    from KneeSegmentationLib.logic import KneeSegmentationLogic
    from kneeseg.overlay import _to_uint8, blend

    mrml = Mrml()
    slicer.mrmlScene = mrml.scene  # slicer.util's array helpers look for the scene here, as in Slicer
    volume = mrml.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", Path(volume_path).stem)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(volume_path))
    assert storage.ReadData(volume), f"cannot read {volume_path}"
    mrml.addToStudy(volume)
    with tempfile.TemporaryDirectory() as tmp:
        logic = KneeSegmentationLogic(scene=mrml.scene, python=sys.executable, terminologiesLogic=mrml.terminologies,
                                      tempDir=tmp)
        segmentation = logic.segment(volume)
        reloaded = saveAndReloadSegmentation(mrml.scene, segmentation, Path(tmp) / "result.seg.nrrd")
    image = slicer.util.arrayFromVolume(volume)  # (k, j, i)
    labels = np.zeros(image.shape, np.uint8)
    colors, names = {}, []
    segments = reloaded.GetSegmentation()
    for n in range(segments.GetNumberOfSegments()):
        segment_id = segments.GetNthSegmentID(n)
        segment = segments.GetSegment(segment_id)
        mask = segmentMask(reloaded, segment_id, volume)
        labels[mask] = n + 1
        colors[n + 1] = tuple(int(round(255 * c)) for c in segment.GetColor())
        names.append(segment.GetName())
    gray = _to_uint8(image)
    with_bone = np.flatnonzero(labels.any(axis=(1, 2)))
    picks = np.linspace(with_bone[len(with_bone) // 5], with_bone[-len(with_bone) // 5], n_slices).round().astype(int)
    tiles = [Image.fromarray(blend(gray[k], labels[k], colors)).resize((320, 320)) for k in picks]
    sheet = Image.new("RGB", (320 * len(tiles), 340))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (320 * i, 20))
    ImageDraw.Draw(sheet).text((6, 4), f"{Path(volume_path).name}: segmentation node '{segmentation.GetName()}' "
                               f"reloaded from .seg.nrrd; segments: {', '.join(names)}", fill=(255, 255, 255))
    sheet.save(out_png)
    print(f"wrote {out_png}")


if __name__ == "__main__":
    main(*sys.argv[1:3])

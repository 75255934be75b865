"""A finished segmentation beyond its segments: its quality flag and its bone meshes (no Qt).

The quality comes from ``kneeseg segment`` (its result, or the volumes JSON it wrote): a score in
[0, 1], a flag and the reasons (``kneeseg.quality``). It is kept on the segmentation node, and
:func:`qualityWarning` words it for the panel. :func:`exportMeshes` writes the bones of a
segmentation as the command line's ``--meshes`` does (``kneeseg.meshes``: STL and VTP, LPS mm).
"""

import json
import shutil
import tempfile
from pathlib import Path

from .errors import INPUT, KneeSegmentationError

QUALITY_ATTRIBUTE = "KneeSegmentation.Quality"


def qualityOfResult(result, volumesJson=None):
    """The quality record of a finished run: from its result, else from the volumes JSON (None if neither has one)."""
    quality = (result or {}).get("quality")
    if quality is None and volumesJson is not None and Path(volumesJson).is_file():
        try:
            data = json.loads(Path(volumesJson).read_text())
        except ValueError:
            data = None
        quality = data.get("quality") if isinstance(data, dict) else None
    return quality if isinstance(quality, dict) else None


def storeQuality(segmentationNode, quality) -> None:
    """Keep the quality record on the segmentation (saved with the scene); None removes it."""
    segmentationNode.SetAttribute(QUALITY_ATTRIBUTE, json.dumps(quality) if quality is not None else "")


def qualityFromNode(segmentationNode):
    text = segmentationNode.GetAttribute(QUALITY_ATTRIBUTE) if segmentationNode is not None else None
    try:
        quality = json.loads(text) if text else None
    except ValueError:
        return None
    return quality if isinstance(quality, dict) else None


def qualityWarning(quality) -> str:
    """The plain warning for a flagged result ('' when it is not flagged or has no quality record)."""
    if not quality or not quality.get("flag"):
        return ""
    score, threshold = quality.get("score"), quality.get("threshold")
    text = "Check this result before you use it: its quality score"
    if isinstance(score, (int, float)):
        text += f" is {score:.2f}"
        if isinstance(threshold, (int, float)):
            text += f", below {threshold:.2f}"
    else:
        text += " is low"
    reasons = [str(r) for r in quality.get("reasons") or []]
    return text + (". " + "; ".join(reasons) + "." if reasons else ".")


def exportMeshes(segmentationNode, volumeNode, folder) -> dict:
    """Write ``<bone>.stl`` and ``<bone>.vtp`` of each bone of ``segmentationNode`` into ``folder``.

    The bones are resampled onto ``volumeNode``'s grid (the grid the result was made on) and meshed
    by ``kneeseg.meshes``, in LPS millimetres as Slicer writes models. Returns bone name -> files,
    enclosed volume and triangle count. Raises ``KneeSegmentationError`` when there is nothing to
    export or the folder cannot be written.
    """
    import SimpleITK as sitk

    from kneeseg.labels import SEPARATE_BONES
    from kneeseg.meshes import write_meshes

    from .logic import boneLabelmapNode, writeLabelmap

    if segmentationNode is None or volumeNode is None:
        raise KneeSegmentationError("There is no segmentation to export meshes from.", INPUT)
    labelNode = boneLabelmapNode(segmentationNode, volumeNode, "Export meshes")
    work = Path(tempfile.mkdtemp(prefix="KneeSegmentation-meshes-"))
    try:
        path = work / "bones.nrrd"
        writeLabelmap(labelNode, path, "the label map of the meshes")
        labelmap = sitk.ReadImage(str(path))
        try:
            return write_meshes(labelmap, SEPARATE_BONES, folder)
        except OSError as exc:
            raise KneeSegmentationError(f"Could not write the meshes into {folder}: {exc}", INPUT) from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)

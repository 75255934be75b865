"""A finished segmentation beyond its segments: its quality score and flag (no Qt).

The quality comes from ``kneeseg segment`` (its result, or the volumes JSON it wrote): a score in
[0, 1], a flag and the reasons (``kneeseg.quality``). It is kept on the segmentation node, and
:func:`qualityWarning` words it for the panel. (The bone meshes: ``logic.exportMeshes``.)
"""

import json
from pathlib import Path

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
    if quality.get("threshold_from") == "default":
        text += " (a threshold chosen for the shipped model: this model's card sets none)"
    reasons = [str(r) for r in quality.get("reasons") or []]
    return text + (". " + "; ".join(reasons) + "." if reasons else ".")

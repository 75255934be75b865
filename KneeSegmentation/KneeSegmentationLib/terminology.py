"""SNOMED CT terminology of the knee bones, as Slicer stores it on segments.

Slicer keeps a segment's meaning in a serialised terminology entry (tag ``TerminologyEntry``):
``context~category~type~typeModifier~regionContext~region~regionModifier`` where each coded item is
``scheme^code^meaning``. The project's terminology context (``KneeSegmentation.term.json``) lists
femur, tibia, fibula and patella (and merged "Bone") under the category Anatomical Structure, with
the colours of ``kneeseg.labels``; loading it makes the entries selectable in Slicer's terminology
widgets.
"""

from pathlib import Path

CONTEXT_NAME = "Segmentation category and type - KneeSegmentation"
REGION_CONTEXT_NAME = "Anatomic codes - DICOM master list"
CATEGORY = ("SCT", "123037004", "Anatomical Structure")
TERMINOLOGY_FILE = Path(__file__).resolve().parent.parent / "Resources" / "Terminology" / "KneeSegmentation.term.json"


def terminologyEntry(label: dict) -> str:
    """Serialised terminology entry for a card label (``{"name", "snomed": {"code", "scheme", "meaning"}}``).

    Returns "" when the label carries no code.
    """
    snomed = label.get("snomed") or {}
    code = str(snomed.get("code", "")).strip()
    if not code:
        return ""
    scheme = str(snomed.get("scheme") or "SCT")
    meaning = str(snomed.get("meaning") or label.get("name", ""))
    category = "^".join(CATEGORY)
    return f"{CONTEXT_NAME}~{category}~{scheme}^{code}^{meaning}~^^~{REGION_CONTEXT_NAME}~^^~^^"


def typeCode(entry: str):
    """(scheme, code, meaning) of the type in a serialised entry, or None."""
    parts = (entry or "").split("~")
    if len(parts) < 3:
        return None
    fields = parts[2].split("^")
    if len(fields) != 3 or not fields[1]:
        return None
    return tuple(fields)


def ensureLoaded(terminologiesLogic, path=TERMINOLOGY_FILE) -> bool:
    """Load the knee terminology context into a ``vtkSlicerTerminologiesModuleLogic`` once.

    Returns True when the context is available afterwards. ``terminologiesLogic`` may be None
    (nothing to do; segments still carry their codes).
    """
    if terminologiesLogic is None:
        return False
    import vtk

    names = vtk.vtkStringArray()
    terminologiesLogic.GetLoadedTerminologyNames(names)
    if CONTEXT_NAME in {names.GetValue(i) for i in range(names.GetNumberOfValues())}:
        return True
    return terminologiesLogic.LoadTerminologyFromFile(str(path)) == CONTEXT_NAME

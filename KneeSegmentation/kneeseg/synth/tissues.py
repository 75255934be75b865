"""The tissue table of the label-map cache, and where the label maps' values come from.

Every label map is translated onto one table of *tissues* (``TISSUES``: the four bones, cartilages,
menisci, the soft tissues of the SPL atlas): a tissue's ``kind`` picks its random appearance, its
``target`` the training label (the bones 1-4, everything else background). A :class:`LabelSource`
says how one family of files names its values, where the files lie, and which subject a file shows.
The development data sets are presets of that one mechanism (:data:`DEFAULT_SOURCES`, and their value
conventions by name in :data:`PRESET_VALUES`); a researcher's own maps are one more source, built by
:func:`kneeseg.synth.labelmaps.user_source`.
"""

import re
from dataclasses import dataclass

import numpy as np

from ..labels import SEPARATE_BONES

@dataclass(frozen=True)
class Tissue:
    """One structure of the cache. ``target`` is its value in the training label (0: background)."""

    id: int
    name: str
    kind: str
    target: int


_TISSUE_NAMES_AND_KINDS = (
    ("unlabelled", "background"),
    ("femur", "bone"), ("tibia", "bone"), ("fibula", "bone"), ("patella", "bone"),
    ("femoral_cartilage", "cartilage"), ("tibial_cartilage", "cartilage"), ("patellar_cartilage", "cartilage"),
    ("meniscus", "fibrous"),
    ("infrapatellar_fat", "fat"),
    ("vastus_lateralis_muscle", "muscle"), ("vastus_medialis_muscle", "muscle"),
    ("biceps_femoris_muscle", "muscle"), ("semimembranosus_muscle", "muscle"),
    ("semitendinosus_muscle", "muscle"), ("gracilis_muscle", "muscle"), ("sartorius_muscle", "muscle"),
    ("medial_head_gastrocnemius_muscle", "muscle"), ("lateral_head_gastrocnemius_muscle", "muscle"),
    ("popliteus_muscle", "muscle"), ("soleus_muscle", "muscle"), ("tibialis_anterior_muscle", "muscle"),
    ("extensor_digitorum_longus_muscle", "muscle"), ("peroneus_longus_muscle", "muscle"),
    ("anterior_cruciate_ligament", "fibrous"), ("posterior_cruciate_ligament", "fibrous"),
    ("fibular_collateral_ligament", "fibrous"), ("tibial_collateral_ligament", "fibrous"),
    ("patellar_ligament", "fibrous"),
    ("adductor_magnus_tendon", "fibrous"), ("biceps_femoris_tendon", "fibrous"), ("iliotibial_tract", "fibrous"),
    ("popliteus_tendon", "fibrous"), ("soleus_tendon", "fibrous"), ("semitendinosus_tendon", "fibrous"),
    ("gracilis_tendon", "fibrous"),
    ("peroneus_nerve", "nerve"), ("tibialis_nerve", "nerve"), ("muscular_branches_tibialis_nerve", "nerve"),
    ("medial_sural_cutaneous_nerve", "nerve"),
    ("popliteal_artery", "vessel"), ("popliteal_vein", "vessel"), ("superior_medial_genicular_artery", "vessel"),
    ("superior_lateral_genicular_artery", "vessel"), ("middle_genicular_artery", "vessel"),
    ("great_saphenous_vein", "vessel"), ("small_saphenous_vein", "vessel"),
    ("unnamed_structure", "other"),
)
_BONE_TARGETS = {bone.name.lower(): bone.value for bone in SEPARATE_BONES}

TISSUES = tuple(Tissue(i, name, kind, _BONE_TARGETS.get(name, 0))
                for i, (name, kind) in enumerate(_TISSUE_NAMES_AND_KINDS))
TISSUE_IDS = {t.name: t.id for t in TISSUES}
OUTSIDE_FIELD_OF_VIEW = 255
BONE_IDS = tuple(t.id for t in TISSUES if t.target)


def target_lookup() -> np.ndarray:
    """(256,) uint8 table: tissue id -> training label (bones 1-4, everything else 0)."""
    lut = np.zeros(256, np.uint8)
    for t in TISSUES:
        lut[t.id] = t.target
    return lut


@dataclass(frozen=True)
class LabelSource:
    """A family of label-map files that share one label convention.

    ``pattern`` is a glob relative to the source folder (a fixed layout), or None for any layout: every
    volume file under the folder, at any depth (:func:`kneeseg.synth.labelmaps.find_label_files`);
    such a source names each file by its path below the folder. ``label_values`` maps a file's label value to a tissue name of ``TISSUES``; values it does not list
    become ``unnamed_structure`` (kept, never bone). ``subject_pattern`` is a regular expression whose
    first group, taken from the file name without extension, names the subject: files of one subject
    (time points of one knee) must not be split between training and validation.
    """

    dataset: str
    pattern: "str | None"
    label_values: dict
    licence: str
    subject_prefix: str
    subject_pattern: str = r"^(.+)$"

    def subject(self, stem: str) -> str:
        match = re.match(self.subject_pattern, stem)
        return self.subject_prefix + (match.group(1) if match else stem)

    def lookup(self, max_value: int) -> np.ndarray:
        lut = np.full(max_value + 1, TISSUE_IDS["unnamed_structure"], np.uint8)
        lut[0] = TISSUE_IDS["unlabelled"]
        for value, name in self.label_values.items():
            if value <= max_value:
                lut[value] = TISSUE_IDS[name]
        return lut


_OAI_VALUES = {1: "femur", 2: "femoral_cartilage", 3: "tibia", 4: "tibial_cartilage", 5: "patella",
               6: "patellar_cartilage", 7: "femur", 8: "tibia", 9: "patella"}  # 7-9: bone lesions
_MSKT_VALUES = {1: "femoral_cartilage", 2: "tibial_cartilage", 3: "tibial_cartilage", 4: "patellar_cartilage",
                5: "femur", 6: "tibia", 7: "patella", 8: "fibula", 9: "meniscus", 10: "meniscus"}
_SPL_VALUES = {
    95: "femur", 96: "tibia", 97: "fibula", 98: "patella", 9: "infrapatellar_fat",
    12: "vastus_lateralis_muscle", 13: "vastus_medialis_muscle", 15: "biceps_femoris_muscle",
    16: "semimembranosus_muscle", 17: "semitendinosus_muscle", 18: "gracilis_muscle", 19: "sartorius_muscle",
    20: "medial_head_gastrocnemius_muscle", 21: "lateral_head_gastrocnemius_muscle", 22: "popliteus_muscle",
    23: "soleus_muscle", 24: "tibialis_anterior_muscle", 25: "extensor_digitorum_longus_muscle",
    26: "peroneus_longus_muscle", 31: "anterior_cruciate_ligament", 32: "posterior_cruciate_ligament",
    33: "fibular_collateral_ligament", 34: "tibial_collateral_ligament", 35: "patellar_ligament",
    41: "adductor_magnus_tendon", 42: "biceps_femoris_tendon", 43: "iliotibial_tract", 44: "popliteus_tendon",
    46: "soleus_tendon", 47: "semitendinosus_tendon", 48: "gracilis_tendon", 61: "peroneus_nerve",
    62: "tibialis_nerve", 63: "muscular_branches_tibialis_nerve", 64: "medial_sural_cutaneous_nerve",
    71: "popliteal_artery", 72: "popliteal_vein", 73: "superior_medial_genicular_artery",
    74: "superior_lateral_genicular_artery", 75: "middle_genicular_artery", 77: "great_saphenous_vein",
    78: "small_saphenous_vein", 81: "meniscus", 82: "meniscus", 83: "femoral_cartilage",
    84: "tibial_cartilage", 85: "tibial_cartilage", 86: "patellar_cartilage",
}
_OAI_LICENCE = ("Osteoarthritis Initiative manual segmentations (Woo et al., arXiv 2211.16696); no licence file: "
                "research use, cite the paper")

_STAPLE_VALUES = {1: "femur", 2: "tibia", 3: "fibula", 4: "patella"}
_STAPLE_LICENCE = ("CC BY-NC 4.0, non-commercial (STAPLE toolbox bone datasets; cite Modenese & Renault, "
                   "J Biomech 2021, and each set's paper)")

DEFAULT_SOURCES = (
    LabelSource("OAI_AKOA", "oai/OAI_AKOA/*.nii.gz", _OAI_VALUES, _OAI_LICENCE, "OAI-", r"^(\d+)_"),
    LabelSource("OAI_ZIB-UQ", "oai/OAI_ZIB-UQ/*.nii.gz", _OAI_VALUES, _OAI_LICENCE, "OAI-", r"^(\d+)"),
    LabelSource("mskt", "mskt/*.nrrd", _MSKT_VALUES, "MIT (pymskt, PyPI mskt 0.1.22)", "mskt-"),
    LabelSource("SPL", "spl_atlas/*.nrrd", _SPL_VALUES, "3D Slicer licence (SPL knee atlas)", "SPL-"),
    # Whole bones voxelised from meshes: no cartilage or soft tissue (drawn as random background).
    # The subject is the person: staple_JIA_MRI_l and staple_JIA_MRI_r are one subject.
    LabelSource("STAPLE", "staple/*.nii.gz", _STAPLE_VALUES, _STAPLE_LICENCE,
                "STAPLE-", r"^staple_([A-Za-z0-9]+?)(?:_MRI)?_[lr]$"),
)

PRESET_VALUES = {"oai": _OAI_VALUES, "mskt": _MSKT_VALUES, "spl": _SPL_VALUES,
                 "staple": _STAPLE_VALUES}
"""The value conventions of the development data sets, by name: ``kneeseg synth prepare DIR OUT --labels oai``
reads any folder of label maps with the OAI values."""

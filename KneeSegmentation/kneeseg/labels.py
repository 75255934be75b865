"""The label set: one place for names, values, colours and SNOMED CT codes of the knee bones."""

from dataclasses import dataclass, asdict

SNOMED_SCHEME = "SCT"
ANATOMICAL_STRUCTURE = {"code": "123037004", "scheme": SNOMED_SCHEME, "meaning": "Anatomical Structure"}


@dataclass(frozen=True)
class Label:
    name: str
    value: int
    color: tuple  # RGB, 0-255
    snomed_code: str

    def to_json(self) -> dict:
        d = asdict(self)
        d["color"] = list(self.color)
        d["snomed"] = {"code": self.snomed_code, "scheme": SNOMED_SCHEME, "meaning": self.name}
        del d["snomed_code"]
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Label":
        return cls(name=d["name"], value=int(d["value"]), color=tuple(int(c) for c in d["color"]),
                   snomed_code=str(d["snomed"]["code"]))


FEMUR = Label("Femur", 1, (241, 214, 145), "71341001")
TIBIA = Label("Tibia", 2, (128, 174, 128), "12611008")
FIBULA = Label("Fibula", 3, (111, 184, 210), "87342007")
PATELLA = Label("Patella", 4, (216, 101, 79), "64234005")
BONE = Label("Bone", 1, (241, 214, 145), "272673000")  # merged output: SNOMED "Bone structure"

SEPARATE_BONES = (FEMUR, TIBIA, FIBULA, PATELLA)
MERGED_BONES = (BONE,)


def labels_to_json(labels) -> list:
    return [label.to_json() for label in labels]


def labels_from_json(items) -> tuple:
    return tuple(Label.from_json(d) for d in items)

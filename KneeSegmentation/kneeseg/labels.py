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
        """A label from a card, checked field by field (raises ``specs.SpecError`` naming the field)."""
        from .specs import SpecError, check_int

        if not isinstance(d, dict):
            raise SpecError("label", f"must be a JSON object, not {type(d).__name__}")
        name = d.get("name")
        if not isinstance(name, str) or not 0 < len(name) <= 64:
            raise SpecError("name", f"must be a name of 1 to 64 characters, not {name!r}")
        value = check_int("value", d.get("value"), 1, 255)
        color = d.get("color")
        if not isinstance(color, list) or len(color) != 3:
            raise SpecError("color", f"must be three numbers 0-255 (RGB), not {color!r}")
        color = tuple(check_int("color", c, 0, 255) for c in color)
        code = d.get("snomed", {}).get("code") if isinstance(d.get("snomed"), dict) else None
        if not isinstance(code, str) or not code.isdigit() or len(code) > 18:
            raise SpecError("snomed", f"must hold a SNOMED CT code (digits), not {d.get('snomed')!r}")
        return cls(name=name, value=value, color=color, snomed_code=code)


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

"""A model bundle's card, typed and checked: what the model segments and how its input is made.

``card.json`` is read once into a :class:`Card`: the labels, the :class:`~kneeseg.specs.NetworkSpec`,
the :class:`~kneeseg.specs.FrameSpec`, the N4 setting, the weight files and, when fitted, the planes'
per-class fusion weights and the plane reach segment uses by default (``fusion``), and the quality score
below which a result of this model is flagged when it was chosen for it (``quality.flag_below``). Every field is checked
for its type and range when the card is read (:func:`parse_card`), so a broken or hostile card is
refused with one line naming the field, before any of it is used. Provenance (``training``) and
measurements (``metrics``) are kept as they are, for people to read.

The JSON layout is that of format version 1 (``model``, ``preprocessing``, ``normalisation``, ...);
``Card.to_json`` writes it back.
"""

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import INTENDED_USE
from .errors import BundleError
from .labels import Label, labels_to_json
from .geometry import PLANES
from .specs import (PLANE_REACHES, FrameSpec, NetworkSpec, Normalisation, SpecError, check_bool, check_choice,
                    check_int, check_keys, check_number, check_planes)

FORMAT = "kneeseg-bundle"
FORMAT_VERSION = 1
CARD_NAME = "card.json"
KERAS_NAME = "model.keras"
ONNX_NAME = "model.onnx"
MAX_LABELS = 32
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PREPROCESSING_KEYS = ("planes", "window_mm", "min_slice_mm", "n4", "n4_settings", "centre")


@dataclass(frozen=True)
class WeightFile:
    """A weight file of the bundle: a plain file name inside the bundle folder and its SHA-256."""

    file: str
    sha256: str


@dataclass(frozen=True)
class Card:
    name: str
    labels: tuple
    network: NetworkSpec
    frame: FrameSpec
    weights: dict  # name -> WeightFile
    n4: bool = False
    n4_settings: dict = field(default_factory=dict)  # overrides of the N4 defaults
    description: str = ""
    training: dict = field(default_factory=dict)  # provenance, as written by training
    metrics: dict = field(default_factory=dict)  # measured results
    fusion_weights: dict = None  # plane -> one weight per class (background first); None: plain mean
    plane_reach: str = "off"  # segment's plane reach when the user names none ("auto" or "off"; fusion.plane_reach)
    # the quality score below which a result is flagged, chosen for this model (quality.flag_below); None: the
    # card sets none and kneeseg.quality.FLAG_BELOW (chosen for the shipped model) is used
    quality_flag_below: float | None = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)  # the JSON as read

    @property
    def label_values(self) -> dict:
        """Label name -> value."""
        return {label.name: label.value for label in self.labels}

    @property
    def intended_use(self) -> str:
        return self.raw.get("intended_use") or INTENDED_USE

    @property
    def data_licences(self) -> list:
        """(dataset, licence) of the data the model was trained on, as its card records them."""
        data = self.training.get("data", {}) if isinstance(self.training, dict) else {}
        sources = data.get("label_map_sources") or []
        return [(s.get("dataset", "?"), s.get("licence", "?")) for s in sources if isinstance(s, dict)]

    @property
    def test_subjects(self) -> list:
        """The subjects training held out for testing (empty when the card records none)."""
        return self._split_part("test")

    @property
    def validation_subjects(self) -> list:
        """The subjects training validated on (empty when the card records none)."""
        return self._split_part("validation")

    def _split_part(self, part) -> list:
        split = self.training.get("data", {}).get("split", {}) if isinstance(self.training, dict) else {}
        return list(split.get(part, []))

    def with_frame(self, **changes) -> "Card":
        """The same card with some frame settings changed (e.g. a coarse whole-field first pass)."""
        return replace(self, frame=replace(self.frame, **changes))

    def to_json(self) -> dict:
        """The card as format-version-1 JSON (sections this class does not type are kept as read)."""
        out = {k: v for k, v in self.raw.items() if k != "weights"}
        model = {"dims": self.network.dims, "input_size": self.frame.size, "n_classes": self.network.n_classes,
                 "filters": self.network.filters, "depth": self.network.depth, "dropout": self.network.dropout,
                 "output": self.network.output}
        if self.network.n_slices is not None or self.network.dims == 3:
            model["n_slices"] = self.network.n_slices
        if self.network.context_slices:  # written only when used: older readers keep reading 2D cards
            model["context_slices"] = self.network.context_slices
        if self.network.slice_position:
            model["slice_position"] = self.network.slice_position
        preprocessing = {**self.raw.get("preprocessing", {}), "planes": list(self.frame.planes),
                         "window_mm": self.frame.window_mm, "min_slice_mm": self.frame.min_slice_mm,
                         "n4": self.n4, "n4_settings": dict(self.n4_settings)}
        out.update(format=FORMAT, format_version=FORMAT_VERSION, name=self.name, description=self.description,
                   labels=labels_to_json(self.labels), model=model, preprocessing=preprocessing,
                   normalisation=self.frame.normalisation.to_json(), training=self.training, metrics=self.metrics)
        fusion = {}
        if self.fusion_weights:  # with the notes on how they were fitted (classes, fitted), kept as read
            fusion = {k: v for k, v in self.raw.get("fusion", {}).items() if k not in ("plane_weights", "plane_reach")}
            fusion["plane_weights"] = {plane: list(w) for plane, w in self.fusion_weights.items()}
        if self.plane_reach != "off":
            fusion["plane_reach"] = self.plane_reach
        if fusion:
            out["fusion"] = fusion
        else:
            out.pop("fusion", None)
        if self.quality_flag_below is not None:  # with the note on how it was chosen, kept as read
            out["quality"] = {**self.raw.get("quality", {}), "flag_below": self.quality_flag_below}
        else:
            out.pop("quality", None)
        out["weights"] = {name: {"file": w.file, "sha256": w.sha256} for name, w in self.weights.items()}
        return out

    def for_new_weights(self, **changes) -> "Card":
        """This card for a model with other weights (a soup, an ensemble): the settings chosen for these
        weights (fusion weights, plane reach, quality threshold) and their measurements dropped."""
        raw = {k: v for k, v in self.raw.items() if k not in ("fusion", "quality")}
        return replace(self, **{"metrics": {}, "fusion_weights": None, "plane_reach": "off",
                                "quality_flag_below": None, "raw": raw, **changes})


def parse_card(data, source=None) -> Card:
    """Check a card's JSON and type it. Raises :class:`BundleError` naming the field and ``source``."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BundleError(f"{CARD_NAME} is not a {FORMAT} card", source)
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"unknown bundle format version {version!r} (this kneeseg reads version "
                          f"{FORMAT_VERSION}; update kneeseg or re-export the bundle)", source)
    for key in ("labels", "model", "preprocessing", "weights"):
        if key not in data:
            raise BundleError(f"{CARD_NAME} lacks the required entry {key!r}", source)
    try:
        labels = _within("labels", _labels, data["labels"])
        network, size = _within("model", _network, data["model"])
        normalisation = _within("normalisation", Normalisation.from_json, data.get("normalisation", {"mode": "volume"}))
        frame, n4, n4_settings = _within("preprocessing", _preprocessing, data["preprocessing"], size, normalisation)
        _within("model", network.check_input_size, size)
        _check_labels_fit(labels, network)
        weights = _within("weights", _weights, data["weights"])
        fusion_weights, plane_reach = (_within("fusion", _fusion, data["fusion"], len(labels) + 1) if "fusion" in data
                                       else (None, "off"))
        flag_below = _within("quality", _quality, data["quality"]) if "quality" in data else None
        name = _text("name", data.get("name", ""))
        description = _text("description", data.get("description", ""), 20000)
        _text("intended_use", data.get("intended_use", ""), 2000)
        for key in ("training", "metrics"):
            if not isinstance(data.get(key, {}), dict):
                raise SpecError(key, f"must be a JSON object, not {type(data[key]).__name__}")
    except SpecError as exc:
        raise BundleError(str(exc), source) from None
    return Card(name=name, labels=labels, network=network, frame=frame, weights=weights, n4=n4,
                n4_settings=n4_settings, description=description, training=data.get("training", {}),
                metrics=data.get("metrics", {}), fusion_weights=fusion_weights, plane_reach=plane_reach,
                quality_flag_below=flag_below, raw=data)


def card_for(labels, network: NetworkSpec, frame: FrameSpec, name="knee-bones", description="", training=None,
             metrics=None, n4=False, n4_settings=None, weights=None) -> Card:
    """A new card (e.g. for a model just trained), checked as a read card would be."""
    card = Card(name=name, labels=tuple(labels), network=network, frame=frame, weights=dict(weights or {}), n4=n4,
                n4_settings=dict(n4_settings or {}), description=description, training=training or {},
                metrics=metrics or {}, raw={"intended_use": INTENDED_USE,
                                            "preprocessing": {"centre": "model first pass, falling back to the "
                                                              "image centre"}})
    network.check_input_size(frame.size)
    _check_labels_fit(card.labels, network)
    return card


def _within(section, check, *args):
    """``check(*args)``, its errors named from the card's top: ``section.field``."""
    try:
        return check(*args)
    except SpecError as exc:
        if exc.field == section or exc.field.startswith(section + "."):
            raise
        raise SpecError(f"{section}.{exc.field}", str(exc).split(": ", 1)[1]) from None


def _text(name, value, max_length=200) -> str:
    if not isinstance(value, str) or len(value) > max_length:
        raise SpecError(name, f"must be text of at most {max_length} characters")
    return value


def _labels(items) -> tuple:
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_LABELS:
        raise SpecError("labels", f"must be a list of 1 to {MAX_LABELS} labels")
    labels = []
    for n, item in enumerate(items):
        try:
            labels.append(Label.from_json(item))
        except SpecError as exc:
            raise SpecError(f"{n}.{exc.field}", str(exc).split(": ", 1)[1]) from None
    values = [label.value for label in labels]
    if sorted(values) != list(range(1, len(labels) + 1)):
        raise SpecError("value", f"label values must be 1..{len(labels)}, one each (the network's output channels), "
                        f"not {values}")
    if len({label.name for label in labels}) != len(labels):
        raise SpecError("name", "two labels share a name")
    return tuple(sorted(labels, key=lambda label: label.value))


def _network(model) -> tuple:
    check_keys(model, NetworkSpec, extra=("input_size",), name="model")
    if "input_size" not in model:
        raise SpecError("input_size", "is missing")
    check_int("input_size", model["input_size"], 16, 1024)
    settings = {k: v for k, v in model.items() if k != "input_size"}
    return NetworkSpec(**settings), model["input_size"]


def _preprocessing(pre, size, normalisation) -> tuple:
    if not isinstance(pre, dict):
        raise SpecError("preprocessing", f"must be a JSON object, not {type(pre).__name__}")
    unknown = sorted(set(pre) - set(_PREPROCESSING_KEYS))
    if unknown:
        raise SpecError(unknown[0], f"is not a preprocessing setting (known: {', '.join(_PREPROCESSING_KEYS)})")
    frame_settings = {k: pre[k] for k in ("planes", "window_mm", "min_slice_mm") if k in pre}
    frame = FrameSpec(size=size, normalisation=normalisation, **frame_settings)
    n4 = check_bool("n4", pre.get("n4", False))
    n4_settings = pre.get("n4_settings") or {}
    from .preprocess.intensity import N4Settings

    N4Settings.from_overrides(n4_settings)  # refuses unknown names, wrong types and ranges
    return frame, n4, dict(n4_settings)


def _fusion(section, n_classes) -> tuple:
    """(plane -> one weight per class, or None for the plain mean; the plane reach). The weights: for any of
    the three planes (a card whose planes were edited keeps its weights: inference uses those of the planes
    it fuses), in [0, 1], every class weighed by some plane. A section may hold only the reach."""
    if not isinstance(section, dict):
        raise SpecError("fusion", "must be a JSON object")
    reach = check_choice("fusion.plane_reach", section.get("plane_reach", "off"), PLANE_REACHES)
    if "plane_weights" not in section and "plane_reach" in section:
        return None, reach
    if not isinstance(section.get("plane_weights"), dict):
        raise SpecError("fusion.plane_weights", "must be a JSON object: plane -> one weight per class")
    by_plane = section["plane_weights"]
    check_planes("fusion.plane_weights", list(by_plane))
    out = {}
    for plane in (p for p in PLANES if p in by_plane):
        values = by_plane[plane]
        if not isinstance(values, list) or len(values) != n_classes:
            raise SpecError(f"fusion.plane_weights.{plane}", f"must list {n_classes} weights (background first, "
                            "then each label)")
        out[plane] = tuple(check_number(f"fusion.plane_weights.{plane}", v, 0.0, 1.0) for v in values)
    for c in range(n_classes):
        if not any(weights[c] > 0 for weights in out.values()):
            raise SpecError("fusion.plane_weights", f"class {c} has weight 0 in every plane")
    return out, reach


def _quality(section) -> float:
    """The flag threshold in [0, 1]; a note on how it was chosen (``chosen_by``) may stand beside it."""
    if not isinstance(section, dict):
        raise SpecError("quality", "must be a JSON object")
    if "flag_below" not in section:
        raise SpecError("quality.flag_below", "is missing (the quality score below which a result is flagged)")
    if "chosen_by" in section:
        _text("quality.chosen_by", section["chosen_by"], 2000)
    return check_number("quality.flag_below", section["flag_below"], 0.0, 1.0)


def _check_labels_fit(labels, network: NetworkSpec):
    expected = 1 if network.output == "merged" else network.n_classes - 1
    if len(labels) != expected:
        raise SpecError("labels", f"{len(labels)} labels for a network with {expected} bone channel(s)")


def _weights(entries) -> dict:
    if not isinstance(entries, dict) or KERAS_NAME not in entries:
        raise SpecError("weights", f"must name the weight files, {KERAS_NAME} among them")
    out = {}
    for name, entry in entries.items():
        if not isinstance(entry, dict) or set(entry) != {"file", "sha256"}:
            raise SpecError(name, "must be {\"file\": ..., \"sha256\": ...}")
        file, digest = entry["file"], entry["sha256"]
        if not isinstance(file, str) or not _plain_file_name(file):
            raise SpecError(f"{name}.file", f"must be a plain file name inside the bundle, not {file!r}")
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise SpecError(f"{name}.sha256", "must be 64 lower-case hexadecimal digits")
        out[name] = WeightFile(file, digest)
    return out


def _plain_file_name(name: str) -> bool:
    """A file directly inside the bundle folder: no folders, no '..', no absolute or drive paths."""
    return (0 < len(name) <= 255 and "/" not in name and "\\" not in name and "\x00" not in name
            and name not in (".", "..") and Path(name).name == name and ":" not in name)

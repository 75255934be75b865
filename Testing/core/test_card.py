"""The typed card: every field of a card is checked for type and range, and a bad one is named."""

import copy
import json

import pytest

from kneeseg.bundle import default_bundle_path
from kneeseg.card import card_for, parse_card
from kneeseg.errors import BundleError
from kneeseg.labels import SEPARATE_BONES
from kneeseg.quality import FLAG_BELOW
from kneeseg.specs import FrameSpec, NetworkSpec, Normalisation, SpecError


@pytest.fixture(scope="module")
def shipped():
    return json.loads((default_bundle_path() / "card.json").read_text())


def test_the_shipped_card_reads_typed_and_writes_back_unchanged(shipped):
    card = parse_card(shipped)
    assert card.network == NetworkSpec(dims=2, n_classes=5, filters=32, depth=4, dropout=0.5, output="separate")
    assert card.frame.planes == ("sagittal", "coronal", "axial") and card.frame.size == 224
    assert card.frame.pixel_mm == pytest.approx(160.0 / 224)
    assert card.label_values == {"Femur": 1, "Tibia": 2, "Fibula": 3, "Patella": 4}
    assert card.to_json() == shipped
    assert card.quality_flag_below == shipped["quality"]["flag_below"]
    # the default for cards without a threshold is the shipped model's: the two move together
    assert card.quality_flag_below == FLAG_BELOW, "set kneeseg.quality.FLAG_BELOW to the shipped card's threshold"


def test_settings_chosen_for_a_models_weights_are_dropped_for_new_weights(shipped):
    card = parse_card(shipped)
    assert card.fusion_weights and card.plane_reach == "auto" and card.quality_flag_below is not None
    soup = card.for_new_weights(name="soup", training={"soup": {}})
    assert (soup.name, soup.training, soup.metrics) == ("soup", {"soup": {}}, {})
    assert soup.fusion_weights is None and soup.plane_reach == "off" and soup.quality_flag_below is None
    written = soup.to_json()
    assert "quality" not in written and "fusion" not in written and written["model"] == shipped["model"]
    assert parse_card(written).quality_flag_below is None


def _set(card, path, value):
    node = card
    *parents, last = path
    for key in parents:
        node = node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value


_DELETE = object()

# (where, wrong value, words the message must contain)
BAD_FIELDS = [
    (("labels",), "Femur", "labels"),
    (("labels",), [], "labels"),
    (("labels", 0, "name"), "", "labels.0.name"),
    (("labels", 0, "value"), "1", "labels.0.value"),
    (("labels", 0, "value"), 7, "label values must be 1..4"),
    (("labels", 1, "color"), [0, 0], "labels.1.color"),
    (("labels", 1, "color"), [0, 0, 300], "labels.1.color"),
    (("labels", 2, "snomed"), "87342007", "labels.2.snomed"),
    (("labels", 3, "name"), "Femur", "share a name"),
    (("model",), [1, 2], "model"),
    (("model", "dims"), 4, "model.dims"),
    (("model", "dims"), True, "model.dims"),
    (("model", "filters"), 32.5, "model.filters"),
    (("model", "filters"), 0, "model.filters"),
    (("model", "depth"), 40, "model.depth"),
    (("model", "dropout"), 1.0, "model.dropout"),
    (("model", "output"), "joined", "model.output"),
    (("model", "n_classes"), 3, "labels"),
    (("model", "input_size"), 10 ** 6, "model.input_size"),
    (("model", "input_size"), 100, "input_size"),
    (("model", "input_size"), _DELETE, "model.input_size"),
    (("model", "kernel"), 5, "model.kernel"),
    (("preprocessing",), "sagittal", "preprocessing"),
    (("preprocessing", "planes"), ["sagittal", "oblique"], "preprocessing.planes"),
    (("preprocessing", "planes"), "sagittal", "preprocessing.planes"),
    (("preprocessing", "planes"), ["axial", "axial"], "preprocessing.planes"),
    (("preprocessing", "window_mm"), 0, "preprocessing.window_mm"),
    (("preprocessing", "window_mm"), 1e308, "preprocessing.window_mm"),
    (("preprocessing", "window_mm"), float("nan"), "preprocessing.window_mm"),
    (("preprocessing", "min_slice_mm"), -1, "preprocessing.min_slice_mm"),
    (("preprocessing", "n4"), "yes", "preprocessing.n4"),
    (("preprocessing", "n4_settings"), {"shrink": 2}, "n4_settings.shrink"),
    (("preprocessing", "n4_settings"), {"iterations": [10 ** 9]}, "n4_settings.iterations"),
    (("preprocessing", "n4_settings"), {"iterations": "25"}, "n4_settings.iterations"),
    (("normalisation",), {"mode": "population"}, "normalisation.mean"),
    (("normalisation",), {"mode": "population", "mean": 0.0, "std": 0.0}, "normalisation.std"),
    (("normalisation",), {"mode": "volume", "clip_percentiles": [99, 1]}, "normalisation.clip_percentiles"),
    (("normalisation",), {"mode": "global"}, "normalisation.mode"),
    (("weights",), [], "weights"),
    (("weights",), {}, "weights"),
    (("weights", "model.keras", "file"), "/etc/passwd", "weights.model.keras.file"),
    (("weights", "model.keras", "file"), "../model.keras", "weights.model.keras.file"),
    (("weights", "model.keras", "file"), "sub/model.keras", "weights.model.keras.file"),
    (("weights", "model.keras", "file"), "..", "weights.model.keras.file"),
    (("weights", "model.keras", "sha256"), "abc", "weights.model.keras.sha256"),
    (("weights", "model.onnx"), "model.onnx", "weights.model.onnx"),
    (("training",), [], "training"),
    (("metrics",), "good", "metrics"),
    (("name",), 5, "name"),
    (("quality",), 0.45, "quality"),
    (("quality",), {}, "quality.flag_below"),
    (("quality", "flag_below"), 1.5, "quality.flag_below"),
    (("quality", "flag_below"), True, "quality.flag_below"),
    (("quality", "flag_below"), "0.45", "quality.flag_below"),
    (("quality", "chosen_by"), ["rule"], "quality.chosen_by"),
]


@pytest.mark.parametrize("where, value, words", BAD_FIELDS, ids=[".".join(map(str, w)) + f"={v!r}"[:40]
                                                                  for w, v, _ in BAD_FIELDS])
def test_every_bad_field_is_refused_by_name(shipped, where, value, words):
    card = copy.deepcopy(shipped)
    _set(card, where, value)
    with pytest.raises(BundleError) as info:
        parse_card(card, "/some/bundle/card.json")
    message = str(info.value)
    assert words in message and message.startswith("/some/bundle/card.json: ")
    assert "\n" not in message


def test_specs_refuse_bad_values_when_made():
    with pytest.raises(SpecError, match="window_mm"):
        FrameSpec(window_mm="160")
    with pytest.raises(SpecError, match="planes"):
        FrameSpec(planes=())
    with pytest.raises(SpecError, match="std"):
        Normalisation(mode="population", mean=1.0, std=-1.0)
    with pytest.raises(SpecError, match="input_size"):
        card_for(SEPARATE_BONES, NetworkSpec(depth=4), FrameSpec(size=100))
    with pytest.raises(SpecError, match="labels"):
        card_for(SEPARATE_BONES[:2], NetworkSpec(), FrameSpec())


def test_a_new_card_round_trips(shipped):
    card = card_for(SEPARATE_BONES, NetworkSpec(filters=8, depth=2), FrameSpec(planes=("sagittal",), size=64),
                    name="x", weights=parse_card(shipped).weights)
    again = parse_card(json.loads(json.dumps(card.to_json())))
    assert again.network == card.network and again.frame == card.frame and again.labels == card.labels

"""Class 5: every broken bundle exits 2 with one line naming the problem, never a traceback.

Every wrong card field of the typed card's own list (Testing/core/test_card.py) goes through the
command line here, and so do cards that are not even JSON objects, damaged weights whose checksum
was updated to match, weights of another network, and a broken ONNX graph. A refused bundle
never leaves an output behind.
"""

import copy
import json
from pathlib import Path

import pytest

from attack import (assert_one_line_error, fake_model, run_cli, set_weight, tree, write_fake_bundle,  # noqa: F401
                    write_volume)
from test_card import _DELETE, BAD_FIELDS, _set  # noqa: E402  (Testing/core is on the path through attack)


@pytest.fixture
def bundle(tmp_path):
    return write_fake_bundle(tmp_path / "bundle")


def _card(bundle):
    return json.loads((Path(bundle) / "card.json").read_text())


@pytest.mark.parametrize("where, value, words", BAD_FIELDS, ids=[".".join(map(str, w)) + f"={v!r}"[:40]
                                                                  for w, v, _ in BAD_FIELDS])
def test_every_bad_card_field_through_the_command_line(bundle, capsys, where, value, words):
    card = copy.deepcopy(_card(bundle))
    card["model"]["input_size"] = 224 if where == ("model", "input_size") and value is _DELETE else card["model"][
        "input_size"]
    _set(card, where, value)
    (bundle / "card.json").write_text(json.dumps(card))
    before = tree(bundle.parent)
    code, lines = run_cli(["info", bundle], capsys)
    assert_one_line_error(code, lines, words, "card.json")
    assert tree(bundle.parent) == before


NOT_A_CARD = {
    "a list": "[1, 2, 3]",
    "a number": "42",
    "null": "null",
    "nested ten thousand deep": "[" * 10000 + "]" * 10000,
    "not UTF-8": b"\xff\xfe{\x00}",
    "empty": "",
    "NaN window": None,
}


@pytest.mark.parametrize("text", NOT_A_CARD.values(), ids=NOT_A_CARD.keys())
def test_cards_that_are_not_cards(bundle, capsys, text):
    if text is None:
        text = (bundle / "card.json").read_text().replace('"window_mm": 160.0', '"window_mm": NaN')
        assert "NaN" in text
    if isinstance(text, bytes):
        (bundle / "card.json").write_bytes(text)
    else:
        (bundle / "card.json").write_text(text)
    code, lines = run_cli(["info", bundle], capsys)
    assert_one_line_error(code, lines, "card.json")


def test_a_card_that_is_a_folder(bundle, capsys):
    (bundle / "card.json").unlink()
    (bundle / "card.json").mkdir()
    code, lines = run_cli(["info", bundle], capsys)
    assert_one_line_error(code, lines, "card.json")


def test_a_bad_card_stops_a_segmentation_before_any_output(bundle, tmp_path, capsys):
    card = _card(bundle)
    card["labels"] = "Femur"
    (bundle / "card.json").write_text(json.dumps(card))
    write_volume(tmp_path / "k.nrrd")
    before = tree(tmp_path)
    code, lines = run_cli(["segment", tmp_path / "k.nrrd", "-o", tmp_path / "o.nrrd", "--model", bundle], capsys)
    assert_one_line_error(code, lines, "labels")
    assert tree(tmp_path) == before


# --- weights that pass their checksum but are not what the card says ---------------------------------


@pytest.fixture
def real_bundle(tiny_bundle, tmp_path):
    import shutil

    copy_ = tmp_path / "real"
    shutil.copytree(tiny_bundle, copy_)
    return copy_


def _segment_refused(bundle, tmp_path, capsys, *words, backend="keras"):
    write_volume(tmp_path / "k.nrrd", size=(32, 32, 24))
    before = tree(tmp_path)
    code, lines = run_cli(["segment", tmp_path / "k.nrrd", "-o", tmp_path / "o.nrrd", "--model", bundle,
                           "--backend", backend], capsys)
    assert_one_line_error(code, lines, *words)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("damage", ["truncated", "bytes flipped", "not a zip", "empty"])
def test_damaged_keras_weights_with_a_matching_checksum(real_bundle, tmp_path, capsys, damage):
    data = (real_bundle / "model.keras").read_bytes()
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "bytes flipped":
        middle = len(data) // 2
        data = data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 4096]) + data[middle + 4096:]
    elif damage == "not a zip":
        data = b"this is not a keras archive" * 100
    else:
        data = b""
    set_weight(real_bundle, "model.keras", data)
    _segment_refused(real_bundle, tmp_path, capsys, "model.keras")


def test_weights_of_another_network_size(real_bundle, tmp_path, capsys):
    from kneeseg.model import build_unet_2d

    other = tmp_path / "other.keras"
    build_unet_2d(input_size=32, filters=4, depth=2).save(other)
    set_weight(real_bundle, "model.keras", other.read_bytes())
    _segment_refused(real_bundle, tmp_path, capsys, "model.keras", "the card says 64x64")


@pytest.mark.parametrize("graph", [b"garbage, not a protobuf", b"", b"\x08\x07\x12\x04junk"])
def test_a_broken_onnx_graph_with_a_matching_checksum(real_bundle, tmp_path, capsys, graph):
    set_weight(real_bundle, "model.onnx", graph, file="model.onnx")
    _segment_refused(real_bundle, tmp_path, capsys, "model.onnx", backend="onnx")


def test_an_onnx_graph_of_another_network(real_bundle, tmp_path, capsys):
    pytest.importorskip("tf2onnx")
    from kneeseg.model import build_unet_2d
    from kneeseg.onnx_backend import export_onnx

    path = export_onnx(build_unet_2d(input_size=32, filters=4, depth=2), tmp_path / "g" / "other.onnx")
    set_weight(real_bundle, "model.onnx", path.read_bytes(), file="model.onnx")
    _segment_refused(real_bundle, tmp_path, capsys, "model.onnx", "the card says 64x64", backend="onnx")

"""Model bundles: card contents, checksums verified at load, format versions, zips, safe loading."""

import json
import os
import shutil

import keras
import numpy as np
import pytest

from kneeseg import bundle as bundles
from kneeseg.card import card_for
from kneeseg.errors import BundleError, InputError
from kneeseg.labels import SEPARATE_BONES
from kneeseg.specs import FrameSpec, NetworkSpec


def _card():
    return card_for(SEPARATE_BONES, NetworkSpec(filters=4, depth=2), FrameSpec(size=32))


def _copy(src, tmp_path, name="copy"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def test_card_holds_what_users_need(tiny_bundle):
    card = json.loads((tiny_bundle / "card.json").read_text())
    assert card["format"] == "kneeseg-bundle" and card["format_version"] == bundles.FORMAT_VERSION
    assert [(lab["name"], lab["value"], lab["snomed"]["code"]) for lab in card["labels"]] == [
        ("Femur", 1, "71341001"), ("Tibia", 2, "12611008"), ("Fibula", 3, "87342007"), ("Patella", 4, "64234005")]
    assert all(len(lab["color"]) == 3 for lab in card["labels"])
    assert card["preprocessing"]["planes"] == ["sagittal", "coronal"]
    assert card["model"]["input_size"] == 64 and card["preprocessing"]["window_mm"] == 90.0
    assert card["normalisation"]["mode"] == "volume"
    assert set(card["training"]["data"]["split"]) == {"train", "validation", "test"}
    assert card["weights"]["model.keras"]["sha256"] == bundles.sha256_of(tiny_bundle / "model.keras")
    typed = bundles.load_bundle(tiny_bundle).card
    assert typed.frame.planes == ("sagittal", "coronal") and typed.frame.size == 64 and typed.frame.window_mm == 90.0
    assert [label.name for label in typed.labels] == ["Femur", "Tibia", "Fibula", "Patella"]
    assert typed.to_json() == card  # the typed card writes back exactly what it read


def test_checksum_mismatch_is_refused(tiny_bundle, tmp_path):
    broken = _copy(tiny_bundle, tmp_path)
    with open(broken / "model.keras", "ab") as f:
        f.write(b"tampered")
    with pytest.raises(BundleError, match="checksum mismatch for model.keras") as info:
        bundles.load_bundle(broken)
    assert str(broken) in str(info.value)


def test_unknown_format_version_is_refused(tiny_bundle, tmp_path):
    future = _copy(tiny_bundle, tmp_path)
    card = json.loads((future / "card.json").read_text())
    card["format_version"] = 99
    (future / "card.json").write_text(json.dumps(card))
    with pytest.raises(BundleError, match="unknown bundle format version 99"):
        bundles.load_bundle(future)


@pytest.mark.parametrize("damage", ["no card", "bad json", "not ours", "no weights file"])
def test_broken_bundles_name_the_problem(tiny_bundle, tmp_path, damage):
    broken = _copy(tiny_bundle, tmp_path)
    if damage == "no card":
        (broken / "card.json").unlink()
        fragment = "no card.json"
    elif damage == "bad json":
        (broken / "card.json").write_text("{not json")
        fragment = "not valid JSON"
    elif damage == "not ours":
        (broken / "card.json").write_text(json.dumps({"format": "something-else"}))
        fragment = "not a kneeseg-bundle card"
    else:
        (broken / "model.keras").unlink()
        fragment = "model.keras is missing"
    with pytest.raises(BundleError, match=fragment):
        bundles.load_bundle(broken)


def test_missing_bundle(tmp_path):
    with pytest.raises(BundleError, match="model bundle not found"):
        bundles.load_bundle(tmp_path / "nope")


def test_zipped_bundle_loads_and_is_verified(tiny_bundle, tmp_path):
    zipped = bundles.zip_bundle(tiny_bundle, tmp_path / "model.zip")
    loaded = bundles.load_bundle(zipped)
    assert loaded.card.name == "tiny-test-model"
    assert loaded.load_keras_model().count_params() > 0
    assert bundles.load_bundle(zipped).folder == loaded.folder  # an unchanged zip is unpacked once
    os.utime(zipped, ns=(0, 0))
    assert bundles.load_bundle(zipped).folder != loaded.folder  # a replaced zip is unpacked again
    (tmp_path / "junk.zip").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(BundleError):
        bundles.load_bundle(tmp_path / "junk.zip")


def test_save_is_atomic_and_replaces(tmp_path):
    from kneeseg.model import build_unet_2d

    model = build_unet_2d(input_size=32, filters=4, depth=2)
    card = _card()
    bundles.save_bundle(tmp_path / "b", model, card)
    bundles.save_bundle(tmp_path / "b", model, card)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["card.json", "model.keras"]


def test_save_refuses_to_replace_what_is_not_a_bundle_and_deletes_nothing(tmp_path):
    from kneeseg.model import build_unet_2d

    model, card = build_unet_2d(input_size=32, filters=4, depth=2), _card()
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "keep.txt").write_text("mine")
    (tmp_path / "report.pdf").write_bytes(b"%PDF")
    bundles.save_bundle(tmp_path / "b", model, card)
    (tmp_path / "link").symlink_to(tmp_path / "b")
    for target, message in ((notes, "exists and is not a model bundle"), (tmp_path / "report.pdf", "not a model"),
                            (tmp_path / "link", "is a link")):
        with pytest.raises(InputError, match=message):
            bundles.save_bundle(target, model, card)
    assert (notes / "keep.txt").read_text() == "mine" and (tmp_path / "report.pdf").read_bytes() == b"%PDF"
    assert (tmp_path / "link").is_symlink() and bundles.load_bundle(tmp_path / "b")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_replacing_a_bundle_leaves_the_folders_beside_it_alone(tmp_path):
    from kneeseg.model import build_unet_2d

    model, card = build_unet_2d(input_size=32, filters=4, depth=2), _card()
    (tmp_path / "empty").mkdir()
    bundles.save_bundle(tmp_path / "empty", model, card)  # an empty folder holds nothing to lose
    bundles.save_bundle(tmp_path / "b", model, card)
    (tmp_path / ".b-old").mkdir()  # a name an older save used for the bundle it replaced
    (tmp_path / ".b-old" / "keep.txt").write_text("mine")
    bundles.save_bundle(tmp_path / "b", model, card)
    assert (tmp_path / ".b-old" / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b-old", "b", "empty"]
    assert bundles.load_bundle(tmp_path / "empty") and bundles.load_bundle(tmp_path / "b")


def test_bundles_ship_weights_without_optimizer_state(tmp_path):
    import zipfile

    import h5py

    from kneeseg.model import build_unet_2d

    model = build_unet_2d(input_size=32, filters=4, depth=2)
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.zeros((2, 32, 32, 1)), np.zeros((2, 32, 32, 5)), verbose=0)
    card = _card()
    bundles.save_bundle(tmp_path / "b", model, card)
    with zipfile.ZipFile(tmp_path / "b" / "model.keras") as z:
        z.extract("model.weights.h5", tmp_path)
    with h5py.File(tmp_path / "model.weights.h5") as weights:
        assert "optimizer" not in weights
    loaded = bundles.load_bundle(tmp_path / "b").load_keras_model()
    x = np.random.rand(1, 32, 32, 1).astype(np.float32)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-6)


def test_lambda_layers_are_refused_at_load(tmp_path):
    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Lambda(lambda x: x * 2)(inputs)
    model = keras.Model(inputs, outputs)
    card = _card()
    bundles.save_bundle(tmp_path / "unsafe", model, card)
    with pytest.raises(BundleError, match="cannot be loaded safely"):
        bundles.load_bundle(tmp_path / "unsafe").load_keras_model()


def test_update_card_keeps_checksums_valid(tiny_bundle, tmp_path):
    copy = _copy(tiny_bundle, tmp_path)
    bundles.update_card(copy, metrics={"real2d": {"dice": 0.5}})
    assert bundles.load_bundle(copy).card.metrics["real2d"]["dice"] == 0.5

"""Weight soups (kneeseg.workflows.train.soup_bundles): one bundle whose weights are the members' mean."""

import dataclasses
import json

import numpy as np
import pytest

from kneeseg.bundle import load_bundle, save_bundle
from kneeseg.card import card_for
from kneeseg.errors import InputError
from kneeseg.labels import SEPARATE_BONES
from kneeseg.model import build_model
from kneeseg.specs import FrameSpec, NetworkSpec
from kneeseg.workflows.train import soup_bundles

from conftest import load_script

SPEC = NetworkSpec(filters=4, depth=2)


def _member(folder, seed, spec=SPEC, size=32, labels=SEPARATE_BONES, fusion=True, n4=False):
    """A bundle of ``spec`` with random weights drawn from ``seed``; returns (folder, its weights)."""
    model = build_model(spec, size)
    rng = np.random.default_rng(seed)
    weights = [rng.normal(scale=0.2, size=w.shape).astype(w.dtype) for w in model.get_weights()]
    model.set_weights(weights)
    card = card_for(labels, spec, FrameSpec(size=size), n4=n4,
                    training={"config": {"init_from": "start", "seed": seed, "epochs": 6}, "best_epoch": seed + 3,
                              "epochs_run": 9, "recipe": f"round{seed}", "hardware": "a GPU"})
    if fusion:  # a member's own fitted plane weights and metrics, which a soup must not inherit
        n = len(labels) + 1
        card = dataclasses.replace(card, fusion_weights={p: [1.0 / 3] * n for p in ("sagittal", "coronal", "axial")},
                                   plane_reach="auto", metrics={"real2d": {"femur": 0.9}}, quality_flag_below=0.4)
    save_bundle(folder, model, card)
    return folder, weights


def test_the_soup_holds_the_weighted_mean_of_every_members_weight_and_computes_with_it(tmp_path):
    (a, wa), (b, wb), (c, wc) = (_member(tmp_path / name, seed) for seed, name in enumerate("abc"))
    record = soup_bundles([a, b, c], tmp_path / "soup", mix=[0.5, 0.25, 0.25], name="soup-test")
    soup = load_bundle(tmp_path / "soup")
    model = soup.load_keras_model()
    for got, x, y, z in zip(model.get_weights(), wa, wb, wc, strict=True):
        np.testing.assert_allclose(got, 0.5 * x + 0.25 * y + 0.25 * z, rtol=1e-6, atol=1e-6)
    reference = build_model(SPEC, 32)
    reference.set_weights([0.5 * x + 0.25 * y + 0.25 * z for x, y, z in zip(wa, wb, wc)])
    image = np.random.default_rng(9).normal(size=(2, 32, 32, 1)).astype(np.float32)
    np.testing.assert_allclose(model.predict(image, verbose=0), reference.predict(image, verbose=0), atol=1e-5)
    assert soup.card.name == "soup-test"
    # the members' own: measured again
    assert soup.card.fusion_weights is None and soup.card.plane_reach == "off" and soup.card.metrics == {}
    assert soup.card.quality_flag_below is None
    # what one member's run and making recorded is not the soup's; the shared settings are
    assert not {"best_epoch", "epochs_run", "recipe", "hardware"} & set(soup.card.training)
    assert soup.card.training["config"] == {"epochs": 6} and "weighted mean" in soup.card.description
    assert [(m["bundle"], m["best_epoch"], m["recipe"]) for m in record["members"]] == [
        ("a", 3, "round0"), ("b", 4, "round1"), ("c", 5, "round2")]  # folder names, not this machine's paths
    assert "fusion" not in soup.card.to_json()
    assert [m["share"] for m in record["members"]] == [0.5, 0.25, 0.25]
    assert [m["seed"] for m in soup.card.training["soup"]["members"]] == [0, 1, 2]
    assert {m["init_from"] for m in record["members"]} == {"start"}


def test_an_equal_soup_by_default_and_its_members_left_as_they_were(tmp_path):
    (a, wa), (b, wb) = _member(tmp_path / "a", 0), _member(tmp_path / "b", 1)
    before = [(p / "model.keras").read_bytes() for p in (a, b)]
    soup_bundles([a, b], tmp_path / "soup")
    got = load_bundle(tmp_path / "soup").load_keras_model().get_weights()
    for g, x, y in zip(got, wa, wb, strict=True):
        np.testing.assert_allclose(g, (x + y) / 2, rtol=1e-6, atol=1e-6)
    assert [(p / "model.keras").read_bytes() for p in (a, b)] == before


@pytest.mark.parametrize("other, message", [
    (dict(spec=NetworkSpec(filters=8, depth=2)), "network of this bundle"),
    (dict(size=48), "frame of this bundle"),
    (dict(labels=(dataclasses.replace(SEPARATE_BONES[0], name="Thighbone"),) + SEPARATE_BONES[1:]),
     "labels of this bundle"),
    (dict(n4=True), "n4 of this bundle"),
])
def test_bundles_of_another_architecture_frame_or_labels_are_refused_by_name(tmp_path, other, message):
    a, _ = _member(tmp_path / "a", 0)
    b, _ = _member(tmp_path / "b", 1, **other)
    with pytest.raises(InputError, match=message) as caught:
        soup_bundles([a, b], tmp_path / "soup")
    assert str(b) in str(caught.value)
    assert not (tmp_path / "soup").exists()


@pytest.mark.parametrize("members, mix, message", [
    (1, None, "at least two"),
    (2, [0.5], "2 members"),
    (2, [0.7, 0.7], "sum to 1"),
    (2, [1.5, -0.5], ">= 0"),
    (2, [float("nan"), 0.5], ">= 0"),
])
def test_a_bad_member_count_or_mix_is_refused_before_anything_is_written(tmp_path, members, mix, message):
    paths = [_member(tmp_path / f"m{i}", i)[0] for i in range(members)]
    with pytest.raises(InputError, match=message):
        soup_bundles(paths, tmp_path / "soup", mix=mix)
    assert not (tmp_path / "soup").exists()


def test_a_member_named_twice_or_an_output_that_is_no_bundle_is_refused_and_nothing_is_deleted(tmp_path):
    (a, _), (b, _) = _member(tmp_path / "a", 0), _member(tmp_path / "b", 1)
    with pytest.raises(InputError, match="named twice"):
        soup_bundles([a, b, tmp_path / "b" / ".." / "a"], tmp_path / "soup")
    with pytest.raises(InputError, match="not a model bundle"):  # the folder holding the members
        soup_bundles([a, b], tmp_path)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not a model bundle"):
        soup_bundles([a, b], notes)
    assert (notes / "keep.txt").read_text() == "mine" and (a / "card.json").exists() and (b / "card.json").exists()
    soup_bundles([a, b], tmp_path / "soup")
    soup_bundles([b, a], tmp_path / "soup")  # an earlier soup is a bundle: replaced
    assert load_bundle(tmp_path / "soup").card.training["soup"]["members"][0]["bundle"] == "b"


def test_the_soup_may_not_overwrite_one_of_its_members(tmp_path):
    (a, _), (b, _) = _member(tmp_path / "a", 0), _member(tmp_path / "b", 1)
    before = (b / "model.keras").read_bytes()
    with pytest.raises(InputError, match="one of its members"):
        soup_bundles([a, b], tmp_path / "x" / ".." / "b")
    with pytest.raises(InputError, match="inside one of its members"):
        soup_bundles([a, b], b / "inner")
    assert (b / "model.keras").read_bytes() == before and not (b / "inner").exists()


def test_the_soup_rounds_average_their_rounds_bundles_and_name_a_missing_one(tmp_path, monkeypatch, capsys):
    recipe = load_script("train_default")
    assert recipe.SOUPS["round38"] == (("round24", "round34", "round35", "round36", "round37"), None)
    assert recipe.SOUPS["round39"] == (("round24", "round34", "round35"), None)
    assert recipe.SOUPS["round40"] == (("shipped", "round38"), (0.5, 0.5))
    assert recipe.SOUPS["round44"] == (("round33", "round36", "round37"), None)  # round 39's other arm
    members = tmp_path / "members"
    weights = [_member(members / name, seed)[1] for seed, name in enumerate(("round24", "round34"))]
    monkeypatch.setattr("sys.argv", ["train_default.py", "round39", "--members", str(members),
                                     "--out", str(tmp_path / "soup")])
    with pytest.raises(SystemExit, match="2"):
        recipe.main()
    assert "round35's bundle, which is not there" in capsys.readouterr().err
    assert not (tmp_path / "soup").exists()
    weights.append(_member(members / "round35", 2)[1])
    recipe.main()
    assert f"--fine-tuned-from {members / 'round24'}" in capsys.readouterr().out  # their start is no bundle
    got = load_bundle(tmp_path / "soup").load_keras_model().get_weights()
    for g, *each in zip(got, *weights, strict=True):
        np.testing.assert_allclose(g, sum(each) / 3, rtol=1e-6, atol=1e-6)
    _member(members / "start", 9)  # the bundle the members' cards name as their start, beside them
    recipe.main()
    assert f"--fine-tuned-from {members / 'start'}" in capsys.readouterr().out


def test_finalize_records_a_soup_as_one_and_keeps_its_members(tiny_bundle, tmp_path, monkeypatch, capsys):
    import shutil

    import kneeseg.workflows.evaluate as evaluate

    recipe = load_script("train_default")
    members = tmp_path / "members"
    for name in ("round24", "round34", "round35"):
        shutil.copytree(tiny_bundle, members / name)
    monkeypatch.setattr(recipe, "INSTALLED", tmp_path / "installed")  # the shipped model is never touched
    monkeypatch.setattr(evaluate, "evaluate_synthetic", lambda *a, **k: {"n_cases": 0})
    monkeypatch.setattr(evaluate, "evaluate_synthetic_fibula", lambda *a, **k: {})
    soup = tmp_path / "round39"
    monkeypatch.setattr("sys.argv", ["train_default.py", "round39", "--members", str(members), "--out", str(soup)])
    recipe.main()
    monkeypatch.setattr("sys.argv", ["train_default.py", "finalize", str(soup), "--recipe", "round39", "--cache",
                                     str(tmp_path / "cache"), "--fine-tuned-from", str(members / "round24"),
                                     "--hardware", "two cores"])
    (tmp_path / "round39.final").mkdir()
    (tmp_path / "round39.final" / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit):
        recipe.main()
    assert "not a model bundle: it holds keep.txt; the finalized bundle would replace it" in capsys.readouterr().err
    assert (tmp_path / "round39.final" / "keep.txt").read_text() == "mine"
    (tmp_path / "round39.final" / "keep.txt").unlink()
    recipe.main()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["members", "round39", "round39.final"]  # no model.onnx
    training = load_bundle(tmp_path / "round39.final").card.training
    assert training["recipe"] == "scripts/train_default.py round39 (a weight soup of the bundles in training.soup)"
    assert training["config"]["init_from"] == "training.soup" and training["hardware"] == "two cores"
    assert [m["bundle"] for m in training["soup"]["members"]] == ["round24", "round34", "round35"]
    assert not (tmp_path / "installed").exists()


def test_round40_takes_the_shipped_model_or_the_bundle_named_for_it_and_refuses_its_own_output(tmp_path, monkeypatch,
                                                                                              capsys):
    recipe = load_script("train_default")
    members = tmp_path / "members"
    _, shipped_weights = _member(tmp_path / "installed", 1)
    _, other_weights = _member(tmp_path / "round6", 2)
    _, round38_weights = _member(members / "round38", 3)
    monkeypatch.setattr(recipe, "INSTALLED", tmp_path / "installed")
    for shipped, weights in ((None, shipped_weights), (tmp_path / "round6", other_weights)):
        out = tmp_path / f"soup-{weights is other_weights}"
        monkeypatch.setattr("sys.argv", ["train_default.py", "round40", "--members", str(members), "--out", str(out)]
                            + (["--shipped", str(shipped)] if shipped else []))
        recipe.main()
        got = load_bundle(out).load_keras_model().get_weights()
        for g, a, b in zip(got, weights, round38_weights, strict=True):
            np.testing.assert_allclose(g, (a + b) / 2, rtol=1e-6, atol=1e-6)
    card = json.loads((tmp_path / "installed" / "card.json").read_text())  # round 40 installed: its recipe's output
    card["training"]["recipe"] = "scripts/train_default.py round40 (a weight soup of the bundles in training.soup)"
    (tmp_path / "installed" / "card.json").write_text(json.dumps(card))
    monkeypatch.setattr("sys.argv", ["train_default.py", "round40", "--members", str(members), "--out",
                                     str(tmp_path / "again")])
    with pytest.raises(SystemExit, match="2"):
        recipe.main()
    assert "already the output of round40: name the bundle it was made from with --shipped" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()
    monkeypatch.setattr("sys.argv", ["train_default.py", "finalize", str(tmp_path / "soup-True"), "--recipe",
                                     "round40", "--hardware", "two cores"])  # started from: the installed round 40
    with pytest.raises(SystemExit, match="2"):
        recipe.main()
    assert ("already the output of round40: name the bundle round40 started from with --fine-tuned-from"
            in capsys.readouterr().err)
    assert not (tmp_path / "soup-True.final").exists()
    monkeypatch.setattr("sys.argv", ["train_default.py", "finalize", str(tmp_path / "soup-True"), "--recipe",
                                     "round40", "--fine-tuned-from", str(tmp_path / "round6"),
                                     "--hardware", "two cores"])
    recipe.main()  # named: the card records round 6 as the start, the installed model stays as it was
    start = load_bundle(tmp_path / "soup-True.final").card.training["fine_tuned_from"]
    assert start["training"] == load_bundle(tmp_path / "round6").card.training
    assert json.loads((tmp_path / "installed" / "card.json").read_text()) == card
    monkeypatch.setattr("sys.argv", ["train_default.py", "round40", "--members", str(members), "--out",
                                     str(tmp_path / "again"), "--shipped", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match="2"):
        recipe.main()
    assert "the shipped model's bundle, which is not there" in capsys.readouterr().err
    monkeypatch.setattr("sys.argv", ["train_default.py", "round39", "--members", str(members), "--shipped", "x"])
    with pytest.raises(SystemExit, match="2"):  # a soup without the shipped model takes no --shipped
        recipe.main()
    assert "unrecognized arguments: --shipped" in capsys.readouterr().err

"""The round-2 recipe (scripts/train_default.py round2, issue 12): its split file and settings."""

import argparse
import dataclasses
import json
import os
from pathlib import Path

import pytest

from conftest import load_script, shared_data
from kneeseg.datasets import read_split
from kneeseg.errors import InputError
from kneeseg.synth import DEFAULT_SOURCES, synthesis_config
from kneeseg.train import TrainConfig

REPO = Path(__file__).resolve().parents[2]


def _recipe():
    return load_script("train_default")


def _changed_synthesis(config, reference):
    """The generator settings in which two training configurations differ."""
    a, b = config.recipe.synthesis, reference.recipe.synthesis
    return {k for k in {**a, **b} if a.get(k) != b.get(k)}


def test_the_round2_settings_are_a_valid_configuration_with_the_fixed_split():
    recipe = _recipe()
    config = TrainConfig.from_flat(**recipe.ROUND2)
    generator = synthesis_config(config.recipe.synthesis)
    assert (generator.rim_outside_probability, generator.fibula_weight) == (1.0, 3.0)
    assert (generator.muscle_stretch_probability, generator.septum_probability) == (0.0, 0.0)  # as shipped
    split = read_split(config.recipe.split)
    assert "STAPLE-TLEM2" in split["test"] and "STAPLE-MC22" in split["validation"]
    shipped = json.loads((recipe.INSTALLED / "card.json").read_text())["training"]
    assert set(shipped["data"]["split"]["test"]) <= set(split["test"])  # the shipped held-out subjects stay out
    network = ("dims", "output", "filters", "depth", "dropout", "input_size", "planes", "window_mm", "min_slice_mm")
    flat = json.loads(json.dumps(config.to_flat()))
    assert {k: flat[k] for k in network} == {k: shipped["config"][k] for k in network}  # it fine-tunes the shipped net


def test_the_round2_split_names_every_subject_of_the_label_maps():
    labelmaps = shared_data("labelmaps")
    split = read_split(REPO / "scripts" / "round2_split.json")
    named = {s for part in split.values() for s in part}
    subjects = {source.subject(path.name.split(".")[0])
                for source in DEFAULT_SOURCES for path in labelmaps.glob(source.pattern)}
    assert len(subjects) >= 52 and subjects <= named  # 78 maps; a knee published twice has two names here


def test_the_recipe_refuses_a_cache_without_the_split_subjects(tmp_path):
    recipe = _recipe()
    from kneeseg.synth.cache import CACHE_FORMAT, MANIFEST_NAME

    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"format": CACHE_FORMAT, "files": [
        {"file": "a.npz", "source": "oai/OAI_ZIB-UQ/9001104.nii.gz", "dataset": "OAI_ZIB-UQ", "subject": "OAI-9001104"},
    ]}))
    with pytest.raises(InputError, match="lacks subject.*STAPLE-TLEM2.*synth prepare"):
        recipe.check_cache_holds_split(tmp_path, recipe.ROUND2_SPLIT)


def test_the_round3_settings_fine_tune_the_same_network_on_the_same_split():
    recipe = _recipe()
    config = TrainConfig.from_flat(**recipe.ROUND3)
    round2 = TrainConfig.from_flat(**recipe.ROUND2)
    assert config.network == round2.network and config.frame == round2.frame
    assert config.recipe.split == round2.recipe.split
    # every training map gets a fibula; the weight keeps the validation's fibula knee drawn as in round 2
    changed = _changed_synthesis(config, round2)
    assert changed == {"slab_half_mm"}
    # training slices reach as far from the centre as the model frame's slices do
    assert synthesis_config(config.recipe.synthesis).slab_half_mm == config.frame.window_mm / 2
    assert config.recipe.learning_rate < round2.recipe.learning_rate


def test_every_fine_tune_round_has_a_subcommand_and_is_a_recipe_finalize_accepts(monkeypatch, capsys):
    recipe = _recipe()
    ran = []
    monkeypatch.setattr(recipe, "FINE_TUNES", {name: (lambda args, name=name: ran.append((name, args.out)), help, options)
                                               for name, (_, help, options) in recipe.FINE_TUNES.items()})
    for name in recipe.FINE_TUNES:
        monkeypatch.setattr("sys.argv", ["train_default.py", name, "--out", f"build/{name}-x"])
        recipe.main()
    assert ran == [(name, f"build/{name}-x") for name in recipe.FINE_TUNES]
    monkeypatch.setattr("sys.argv", ["train_default.py", "finalize", "--help"])
    with pytest.raises(SystemExit):
        recipe.main()
    usage = capsys.readouterr().out
    assert "{" + ",".join((*recipe.FINE_TUNES, *recipe.SOUP_RECIPES)) + "}" in usage
    assert f"default: {list(recipe.FINE_TUNES)[-1]}" in " ".join(usage.split())  # the newest round


def test_the_round7_settings_differ_from_round2_only_in_the_knee_s_distance_from_the_window_middle():
    recipe = _recipe()
    config, round2 = TrainConfig.from_flat(**recipe.ROUND7), TrainConfig.from_flat(**recipe.ROUND2)
    assert config.network == round2.network and config.recipe.split == round2.recipe.split
    changed = _changed_synthesis(config, round2)
    assert changed == {"centre_shift_mm"}
    assert synthesis_config(config.recipe.synthesis).centre_shift_mm > synthesis_config(round2.recipe.synthesis).centre_shift_mm


def test_the_round9_settings_are_round8_with_stretched_muscles_and_septa_from_round8_s_bundle():
    recipe = _recipe()
    config, round8 = TrainConfig.from_flat(**recipe.ROUND9), TrainConfig.from_flat(**recipe.ROUND8)
    assert config.network == round8.network and config.frame == round8.frame
    assert _changed_synthesis(config, round8) == {"muscle_stretch_probability", "septum_probability"}
    generator = synthesis_config(config.recipe.synthesis)
    assert generator.muscle_stretch_probability > 0 and generator.septum_probability > 0
    assert Path(config.recipe.init_from).name == "round8.final" and config.recipe.seed != round8.recipe.seed


def test_the_round10_settings_are_round9_with_the_fibula_weighing_more_in_the_loss():
    recipe = _recipe()
    config, round9 = TrainConfig.from_flat(**recipe.ROUND10), TrainConfig.from_flat(**recipe.ROUND9)
    assert config.network == round9.network and _changed_synthesis(config, round9) == set()
    assert config.recipe.init_from == round9.recipe.init_from and round9.recipe.class_weights is None
    weights = dict(zip(("Femur", "Tibia", "Fibula", "Patella"), config.recipe.class_weights))
    assert weights["Fibula"] > weights["Femur"] == weights["Tibia"] == weights["Patella"]


def test_the_round11_settings_are_round10_from_round9_s_bundle_with_a_lower_fibula_weight():
    recipe = _recipe()
    config, round10 = TrainConfig.from_flat(**recipe.ROUND11), TrainConfig.from_flat(**recipe.ROUND10)
    assert config.network == round10.network and _changed_synthesis(config, round10) == set()
    assert Path(config.recipe.init_from).name == "round9.final" and config.recipe.seed != round10.recipe.seed
    weights = dict(zip(("Femur", "Tibia", "Fibula", "Patella"), config.recipe.class_weights))
    assert 1.0 == weights["Femur"] == weights["Tibia"] == weights["Patella"] < weights["Fibula"] < 3.0
    assert config.recipe.validation_steps > round10.recipe.validation_steps


def test_the_round12_settings_are_round11_from_round11_s_bundle_drawing_the_fibula_maps_more_often():
    recipe = _recipe()
    config, round11 = TrainConfig.from_flat(**recipe.ROUND12), TrainConfig.from_flat(**recipe.ROUND11)
    assert config.network == round11.network and _changed_synthesis(config, round11) == {"fibula_weight"}
    assert synthesis_config(config.recipe.synthesis).fibula_weight > synthesis_config(round11.recipe.synthesis).fibula_weight
    assert Path(config.recipe.init_from).name == "round11.final" and config.recipe.seed != round11.recipe.seed
    assert config.recipe.class_weights == round11.recipe.class_weights


def test_a_round_whose_start_bundle_is_missing_is_refused_before_training(tmp_path):
    recipe = _recipe()
    args = argparse.Namespace(init_from=str(tmp_path / "round8.final"), cache=str(tmp_path / "cache"),
                              out=str(tmp_path / "out"), work=None, time_limit_min=1.0)
    with pytest.raises(InputError, match="round8.final, which does not exist"):
        recipe.round10(args)
    assert not (tmp_path / "out").exists()


def test_a_round_refuses_to_write_over_the_bundle_it_starts_from(tiny_bundle, tmp_path):
    recipe = _recipe()
    before = {f.name: f.read_bytes() for f in Path(tiny_bundle).iterdir()}
    args = argparse.Namespace(init_from=str(tiny_bundle), cache=str(tmp_path / "cache"), out=str(tiny_bundle),
                              work=None, time_limit_min=1.0)
    with pytest.raises(InputError, match="--out is the bundle round9 starts from"):
        recipe.round9(args)
    assert {f.name: f.read_bytes() for f in Path(tiny_bundle).iterdir()} == before


def test_the_round13_settings_are_round12_from_round12_s_bundle_with_the_fibula_shown_more_and_like_the_tibia():
    recipe = _recipe()
    config, round12 = TrainConfig.from_flat(**recipe.ROUND13), TrainConfig.from_flat(**recipe.ROUND12)
    assert config.network == round12.network and config.recipe.class_weights == round12.recipe.class_weights
    assert _changed_synthesis(config, round12) == {"fibula_view_probability", "fibula_like_tibia_probability"}
    generator = synthesis_config(config.recipe.synthesis)
    assert 0 < generator.fibula_view_probability < 1 and generator.fibula_like_tibia_probability == 1.0
    assert Path(config.recipe.init_from).name == "round12.final" and config.recipe.seed != round12.recipe.seed


def test_the_round14_settings_are_round13_from_its_best_epoch_with_fewer_fibula_views():
    recipe = _recipe()
    config, round13 = TrainConfig.from_flat(**recipe.ROUND14), TrainConfig.from_flat(**recipe.ROUND13)
    assert config.network == round13.network and _changed_synthesis(config, round13) == {"fibula_view_probability"}
    views = synthesis_config(config.recipe.synthesis).fibula_view_probability
    assert 0 < views < synthesis_config(round13.recipe.synthesis).fibula_view_probability
    assert Path(config.recipe.init_from).name == "round13" and config.recipe.seed != round13.recipe.seed


def test_the_round15_settings_are_round12_with_only_the_fibula_like_the_tibia():
    recipe = _recipe()
    config, round12 = TrainConfig.from_flat(**recipe.ROUND15), TrainConfig.from_flat(**recipe.ROUND12)
    assert config.network == round12.network and _changed_synthesis(config, round12) == {"fibula_like_tibia_probability"}
    assert Path(config.recipe.init_from).name == "round12.final" and config.recipe.seed != round12.recipe.seed


def test_the_round16_settings_are_round15_in_one_fine_tune_of_the_shipped_model():
    recipe = _recipe()
    config, round15 = TrainConfig.from_flat(**recipe.ROUND16), TrainConfig.from_flat(**recipe.ROUND15)
    assert config.network == round15.network and _changed_synthesis(config, round15) == set()
    assert config.recipe.class_weights == round15.recipe.class_weights
    assert config.recipe.validation_steps == round15.recipe.validation_steps
    assert Path(config.recipe.init_from) == recipe.INSTALLED and config.recipe.seed != round15.recipe.seed
    # round 8's schedule (30 epochs, patience 8), which round 15 kept
    assert (config.recipe.learning_rate, config.recipe.epochs) == (TrainConfig.from_flat(**recipe.ROUND8).recipe.learning_rate, 30)


@pytest.mark.parametrize("no_synthetic", [False, True])
def test_finalize_leaves_the_synthetic_volumes_to_make_eval_only_when_asked(tiny_bundle, tmp_path, monkeypatch,
                                                                             no_synthetic, capsys):
    import shutil

    import kneeseg.workflows.evaluate as evaluate
    from kneeseg.bundle import load_bundle

    recipe = _recipe()
    bundle = tmp_path / "round16"
    shutil.copytree(tiny_bundle, bundle)
    monkeypatch.setattr(recipe, "INSTALLED", tmp_path / "installed")  # the shipped model is never touched
    shutil.copytree(tiny_bundle, recipe.INSTALLED)
    shipped = (recipe.INSTALLED / "card.json").read_text()
    scored = []
    monkeypatch.setattr(evaluate, "evaluate_synthetic", lambda *a, **k: scored.append("volumes") or {"n_cases": 0})
    monkeypatch.setattr(evaluate, "evaluate_synthetic_fibula", lambda *a, **k: scored.append("fibula") or {})
    argv = ["train_default.py", "finalize", str(bundle), "--recipe", "round16", "--cache", str(tmp_path / "cache"),
            "--hardware", "test"] + (["--no-synthetic", "--plane-reach", "auto"] if no_synthetic else [])
    monkeypatch.setattr("sys.argv", argv)
    if no_synthetic:  # the reach asked of a bundle trained on real scans would never apply: refused
        with pytest.raises(SystemExit):
            recipe.main()
        assert "records none, so the reach would never apply" in capsys.readouterr().err
        assert not (tmp_path / "round16.final").exists()
        card = json.loads((bundle / "card.json").read_text())
        card["training"]["data"] = {**card["training"].get("data", {}), "synthesis": {"slab_half_mm": 45.0}}
        (bundle / "card.json").write_text(json.dumps(card))
    recipe.main()
    metrics = load_bundle(tmp_path / "round16.final").card.metrics
    assert scored == ([] if no_synthetic else ["volumes", "volumes", "fibula"])
    assert ("synthetic" in metrics) is not no_synthetic and metrics["measured_on"]
    assert (recipe.INSTALLED / "card.json").read_text() == shipped  # measured, not installed
    assert "description" in load_bundle(tmp_path / "round16.final").card.training["fine_tuned_from"]
    assert load_bundle(tmp_path / "round16.final").card.plane_reach == ("auto" if no_synthetic else "off")


def test_finalize_refuses_no_synthetic_without_the_cache_it_fits_the_fusion_on(tmp_path, monkeypatch, capsys):
    recipe = _recipe()
    monkeypatch.setattr("sys.argv", ["train_default.py", "finalize", str(tmp_path / "b"), "--no-synthetic"])
    with pytest.raises(SystemExit) as exit_info:
        recipe.main()
    assert exit_info.value.code == 2 and "--no-synthetic fits the fusion" in capsys.readouterr().err


def test_a_fine_tune_of_the_shipped_model_refuses_to_start_from_its_own_output(tiny_bundle, tmp_path, monkeypatch,
                                                                              capsys):
    import shutil

    from kneeseg.bundle import update_card

    recipe = _recipe()
    installed = tmp_path / "installed"
    shutil.copytree(tiny_bundle, installed)
    update_card(installed, training={"recipe": "scripts/train_default.py round16 (a fine-tune of round 6)"})
    monkeypatch.setattr(recipe, "INSTALLED", installed)
    monkeypatch.setitem(recipe.ROUND16, "init_from", str(installed))
    monkeypatch.setattr("sys.argv", ["train_default.py", "round16", "--out", str(tmp_path / "out"),
                                     "--cache", str(tmp_path / "no-cache")])  # without the check: a cache error
    with pytest.raises(SystemExit) as exit_info:
        recipe.main()
    assert exit_info.value.code == 2 and "already the output of round16" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_round17_settings_are_round16_continued_with_more_patience():
    recipe = _recipe()
    config, round16 = TrainConfig.from_flat(**recipe.ROUND17), TrainConfig.from_flat(**recipe.ROUND16)
    assert config.network == round16.network and _changed_synthesis(config, round16) == set()
    assert config.recipe.patience > round16.recipe.patience and config.recipe.seed != round16.recipe.seed
    assert Path(config.recipe.init_from).name == "round16"


def test_the_round18_settings_are_round16_with_a_weight_average_over_a_run_that_does_not_stop_early():
    recipe = _recipe()
    config, round16 = TrainConfig.from_flat(**recipe.ROUND18), TrainConfig.from_flat(**recipe.ROUND16)
    assert config.network == round16.network and _changed_synthesis(config, round16) == set()
    assert config.recipe.init_from == round16.recipe.init_from == str(recipe.INSTALLED)
    assert 1 < config.recipe.average_from_epoch < config.recipe.last_epoch < config.recipe.patience
    assert {k for k in recipe.ROUND18 if recipe.ROUND18[k] != recipe.ROUND16.get(k)} == {
        "seed", "epochs", "patience", "average_from_epoch"}


def test_the_round19_settings_are_round18_without_the_average():
    recipe = _recipe()
    assert recipe.ROUND19 == {**recipe.ROUND18, "average_from_epoch": None}
    assert TrainConfig.from_flat(**recipe.ROUND19).recipe.average_from_epoch is None


def test_the_round20_settings_are_round19_without_the_fat_septa():
    recipe = _recipe()
    config, round19 = TrainConfig.from_flat(**recipe.ROUND20), TrainConfig.from_flat(**recipe.ROUND19)
    assert config.network == round19.network and _changed_synthesis(config, round19) == {"septum_probability"}
    generator, before = synthesis_config(config.recipe.synthesis), synthesis_config(round19.recipe.synthesis)
    assert generator.septum_probability == 0.0 < before.septum_probability
    assert generator.muscle_stretch_probability == before.muscle_stretch_probability > 0
    assert {k for k in recipe.ROUND20 if recipe.ROUND20[k] != recipe.ROUND19.get(k)} == {"seed", "synthesis"}
    assert config.recipe.init_from == str(recipe.INSTALLED) and config.recipe.average_from_epoch is None


def test_the_round21_settings_are_round19_with_8x_the_slices_in_batches_of_32():
    recipe = _recipe()
    config, round19 = TrainConfig.from_flat(**recipe.ROUND21), TrainConfig.from_flat(**recipe.ROUND19)
    assert config.network == round19.network and config.frame == round19.frame
    assert _changed_synthesis(config, round19) == set() and config.recipe.loss == round19.recipe.loss
    assert {k for k in recipe.ROUND21 if recipe.ROUND21[k] != recipe.ROUND19.get(k)} == {
        "seed", "batch_size", "steps_per_epoch", "validation_steps", "epochs", "learning_rate", "final_learning_rate"}
    slices = config.recipe.batch_size * config.recipe.steps_per_epoch * config.recipe.last_epoch
    before = round19.recipe.batch_size * round19.recipe.steps_per_epoch * round19.recipe.last_epoch
    assert slices == 134_400 and slices / before == 8.4 and config.recipe.batch_size == 4 * round19.recipe.batch_size
    assert config.recipe.learning_rate == 2 * round19.recipe.learning_rate
    assert config.recipe.init_from == str(recipe.INSTALLED) and config.recipe.average_from_epoch is None


def test_the_round22_settings_are_round21_with_fibre_streaks_in_the_generator():
    recipe = _recipe()
    config, round21 = TrainConfig.from_flat(**recipe.ROUND22), TrainConfig.from_flat(**recipe.ROUND21)
    assert config.network == round21.network and config.frame == round21.frame
    assert _changed_synthesis(config, round21) == {"striation_probability"}
    assert config.recipe.synthesis["striation_probability"] == 0.6
    assert {k for k in recipe.ROUND22 if recipe.ROUND22[k] != recipe.ROUND21.get(k)} == {"seed", "synthesis"}
    assert config.recipe.init_from == str(recipe.INSTALLED)


def test_rounds_23_and_24_continue_round22_and_differ_only_in_the_streaks_angle_and_seed():
    recipe = _recipe()
    probe, control = TrainConfig.from_flat(**recipe.ROUND23), TrainConfig.from_flat(**recipe.ROUND24)
    round22 = TrainConfig.from_flat(**recipe.ROUND22)
    assert probe.network == control.network == round22.network and probe.frame == round22.frame
    assert _changed_synthesis(probe, control) == {"striation_angle_deg"}
    assert probe.recipe.synthesis["striation_angle_deg"] == 90.0 and _changed_synthesis(control, round22) == set()
    assert {k for k in recipe.ROUND24 if recipe.ROUND24[k] != recipe.ROUND23.get(k)} == {"seed", "synthesis"}
    assert probe.recipe.init_from == str(recipe.REPO / "build" / "round22.final")
    assert probe.recipe.batch_size * probe.recipe.steps_per_epoch * probe.recipe.last_epoch == 4_800


def test_rounds_25_and_26_continue_round24_with_round22s_data_and_batch_24x_and_16x_its_slices():
    recipe = _recipe()
    config, replicate = TrainConfig.from_flat(**recipe.ROUND25), TrainConfig.from_flat(**recipe.ROUND26)
    round22, round24 = TrainConfig.from_flat(**recipe.ROUND22), TrainConfig.from_flat(**recipe.ROUND24)
    assert config.network == round24.network and config.frame == round24.frame
    assert _changed_synthesis(config, round22) == set() and config.recipe.loss == round22.recipe.loss
    assert config.recipe.init_from == str(recipe.REPO / "build" / "round24.final")
    assert (config.recipe.batch_size, config.recipe.steps_per_epoch) == (round22.recipe.batch_size, 150)
    assert (config.recipe.learning_rate, config.recipe.final_learning_rate) == (1e-4, 1e-5)
    slices = config.recipe.batch_size * config.recipe.steps_per_epoch * config.recipe.last_epoch
    assert slices == 115_200 and slices == 24 * 4_800 and config.recipe.patience > config.recipe.last_epoch
    assert {k for k in recipe.ROUND26 if recipe.ROUND26[k] != recipe.ROUND25.get(k)} == {"seed", "epochs"}
    assert replicate.recipe.last_epoch == 16


def test_rounds_27_28_29_are_one_run_of_round24s_recipe_with_the_position_at_the_input_none_or_bottleneck():
    recipe = _recipe()
    probe, control = TrainConfig.from_flat(**recipe.ROUND27), TrainConfig.from_flat(**recipe.ROUND28)
    round24 = TrainConfig.from_flat(**recipe.ROUND24)
    assert probe.network.slice_position and not control.network.slice_position
    assert control.network == round24.network and control.frame == probe.frame == round24.frame
    assert probe.recipe == control.recipe  # the same seed: the same synthetic images in both runs
    assert probe.recipe.init_from == str(recipe.REPO / "build" / "round24.final")
    assert _changed_synthesis(probe, round24) == set()
    changed = {k for k in recipe.ROUND27 if recipe.ROUND27[k] != recipe.ROUND24.get(k)}
    assert changed == {"seed", "init_from", "epochs", "slice_position"}
    assert probe.recipe.batch_size * probe.recipe.steps_per_epoch * probe.recipe.last_epoch == 9_600
    bottleneck = TrainConfig.from_flat(**recipe.ROUND29)
    assert (probe.network.slice_position, bottleneck.network.slice_position) == ("input", "bottleneck")
    assert {k for k in recipe.ROUND29 if recipe.ROUND29[k] != recipe.ROUND27[k]} == {"slice_position"}
    position_only = TrainConfig.from_flat(**recipe.ROUND30)
    assert position_only.recipe.train_layers == "position" and position_only.network == bottleneck.network
    assert (position_only.recipe.learning_rate, position_only.recipe.final_learning_rate) == (3e-3, 3e-3)
    assert position_only.recipe.batch_size * position_only.recipe.steps_per_epoch * position_only.recipe.last_epoch \
        == 2_400



def test_rounds_31_32_33_add_the_marrow_tied_to_the_fat_and_decoys_to_their_controls_runs():
    recipe = _recipe()
    probe, control = TrainConfig.from_flat(**recipe.ROUND31), TrainConfig.from_flat(**recipe.ROUND28)
    assert dataclasses.replace(probe.recipe, synthesis=control.recipe.synthesis) == control.recipe  # same seed
    assert probe.network == control.network and probe.frame == control.frame
    assert _changed_synthesis(probe, control) == {"marrow_like_fat_probability"}
    assert probe.recipe.synthesis["marrow_like_fat_probability"] == 0.8
    decoys = TrainConfig.from_flat(**recipe.ROUND32)
    assert dataclasses.replace(decoys.recipe, synthesis=control.recipe.synthesis) == control.recipe
    assert _changed_synthesis(decoys, probe) == {"decoy_probability"} and decoys.network == probe.network
    round24, round33 = TrainConfig.from_flat(**recipe.ROUND24), TrainConfig.from_flat(**recipe.ROUND33)
    assert dataclasses.replace(round33.recipe, synthesis=round24.recipe.synthesis) == round24.recipe  # same seed
    assert _changed_synthesis(round33, round24) == {"marrow_like_fat_probability", "decoy_probability"}
    assert round33.recipe.synthesis["decoy_probability"] == decoys.recipe.synthesis["decoy_probability"]
    assert {"round31", "round32", "round33", "round34", "round35"} <= set(recipe.FINE_TUNES)
    for replicate, treated in ((recipe.ROUND34, recipe.ROUND36), (recipe.ROUND35, recipe.ROUND37)):
        assert {k for k in replicate if replicate[k] != recipe.ROUND24[k]} == {"seed"}  # round 24's recipe
        assert treated == {**recipe.ROUND33, "seed": replicate["seed"]}  # round 33's, paired by seed
    assert {"round36", "round37"} <= set(recipe.FINE_TUNES)

def test_rounds_45_to_51_change_one_generator_setting_of_round24s_recipe_each_paired_by_seed_and_souped():
    recipe = _recipe()
    round24 = TrainConfig.from_flat(**recipe.ROUND24)
    arms = {"hidden_rim_probability": (recipe.ROUND45, recipe.ROUND46, recipe.ROUND47, "round48", 0.8),
            "slab_half_mm": (recipe.ROUND49, recipe.ROUND50, recipe.ROUND51, "round52", 80.0)}
    for setting, (*runs, soup, value) in arms.items():
        members = []
        for run, control in zip(runs, (recipe.ROUND24, recipe.ROUND34, recipe.ROUND35)):
            config, paired = TrainConfig.from_flat(**run), TrainConfig.from_flat(**control)
            assert dataclasses.replace(config.recipe, synthesis=paired.recipe.synthesis) == paired.recipe  # same seed
            assert config.network == round24.network and config.frame == round24.frame
            assert _changed_synthesis(config, paired) == {setting} and config.recipe.synthesis[setting] == value
            members.append(next(name for name in recipe.FINE_TUNES if getattr(recipe, name.upper(), None) is run))
        assert recipe.SOUPS[soup] == (tuple(members), None) and soup in recipe.SOUP_RECIPES
    position = TrainConfig.from_flat(**recipe.ROUND53)  # round 49's network, the position layers alone trained
    changed = {k for k in recipe.ROUND53 if recipe.ROUND53[k] != recipe.ROUND30.get(k)}
    assert changed == {"seed", "init_from", "synthesis"}
    assert position.recipe.init_from == str(recipe.REPO / "build" / "round49") and "round53" in recipe.FINE_TUNES
    assert position.recipe.synthesis == TrainConfig.from_flat(**recipe.ROUND49).recipe.synthesis
    assert position.recipe.train_layers == "position" and position.network.slice_position == "bottleneck"
    joint = TrainConfig.from_flat(**recipe.ROUND57)  # round 53 continued, every layer trained, round 49's images
    assert {k for k in recipe.ROUND57 if recipe.ROUND57[k] != recipe.ROUND49.get(k)} == {"init_from", "slice_position"}
    assert joint.recipe.init_from == str(recipe.REPO / "build" / "round53") and "round57" in recipe.FINE_TUNES
    assert joint.network.slice_position == "bottleneck" and joint.recipe.train_layers != "position"


def test_the_round15_chain_is_rounds_8_9_11_12_15_with_12_and_15_cut_where_their_time_limit_cut_them():
    recipe = _recipe()
    assert [name for name, _ in recipe.ROUND15_CHAIN] == ["round8", "round9", "round11", "round12", "round15"]
    for name, settings in recipe.ROUND15_CHAIN:
        cut = {"round12": 16, "round15": 12}.get(name)
        assert settings == {**getattr(recipe, name.upper()), **({"stop_after_epochs": cut} if cut else {})}
        config = TrainConfig.from_flat(**settings)
        assert config.recipe.last_epoch == (cut or config.recipe.epochs)


def _chain(recipe, monkeypatch, unfinished=(), minutes_per_step=0.0):
    """Run round15-chain with every step replaced by a record of how it was asked to run; each step takes
    ``minutes_per_step`` of a fake clock."""
    import time

    steps, clock = [], [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])

    def step(args, settings, name, next_steps=True):
        steps.append((name, args.init_from, args.out, args.time_limit_min))
        clock[0] += 60 * minutes_per_step
        return name not in unfinished

    monkeypatch.setattr(recipe, "_fine_tune", step)
    return steps


def test_the_round15_chain_starts_each_step_from_the_one_before_and_stops_at_an_unfinished_one(tiny_bundle, tmp_path,
                                                                                              monkeypatch, capsys):
    recipe = _recipe()
    monkeypatch.setattr(recipe, "INSTALLED", tiny_bundle)
    steps = _chain(recipe, monkeypatch)
    monkeypatch.setattr("sys.argv", ["train_default.py", "round15-chain", "--out", str(tmp_path), "--time-limit-min",
                                     "90"])
    recipe.main()
    names = ["round8", "round9", "round11", "round12", "round15"]
    assert [(n, start, out) for n, start, out, _ in steps] == list(zip(
        names, [str(tiny_bundle)] + [str(tmp_path / n) for n in names[:-1]], [str(tmp_path / n) for n in names]))
    assert all(0 < limit <= 90 for *_, limit in steps)
    assert "the chain is finished" in capsys.readouterr().out

    steps = _chain(recipe, monkeypatch, unfinished={"round11"})
    recipe.main()
    assert [n for n, *_ in steps] == ["round8", "round9", "round11"]
    assert "stopped at the time limit in round11" in capsys.readouterr().out

    steps = _chain(recipe, monkeypatch, minutes_per_step=40)  # the limit spans the chain: 90, 50, 10, then none
    recipe.main()
    assert [(n, limit) for n, *_, limit in steps] == [("round8", 90), ("round9", 50), ("round11", 10)]
    assert "reached its time limit before round12" in capsys.readouterr().out


def test_a_chain_step_cut_at_its_last_epoch_is_finished(tiny_bundle, tmp_path, monkeypatch, capsys):
    import kneeseg.workflows.train

    recipe = _recipe()
    monkeypatch.setattr(recipe, "check_cache_holds_split", lambda *a: None)
    ran = []
    monkeypatch.setattr(kneeseg.workflows.train, "train_bundle", lambda *a, **k: ran.pop(0))
    settings = dict(recipe.ROUND15_CHAIN)["round12"]  # 30 epochs in its schedule, cut after 16
    args = argparse.Namespace(init_from=str(tiny_bundle), cache=str(tmp_path), out=str(tmp_path / "out"), work=None,
                              time_limit_min=1.0)
    for epochs_run, finished in ((15, False), (16, True)):
        ran.append({"epochs_run": epochs_run, "stopped_early": False})
        assert recipe._fine_tune(args, settings, "round12", next_steps=False) is finished
    assert "finalize" not in capsys.readouterr().out


def test_finalize_of_the_chain_records_every_step_and_refuses_an_unfinished_chain(tiny_bundle, tmp_path):
    import shutil

    from kneeseg.bundle import update_card

    recipe = _recipe()
    for i, (name, _) in enumerate(recipe.ROUND15_CHAIN[:-1]):
        shutil.copytree(tiny_bundle, tmp_path / name)
        update_card(tmp_path / name, training={"epochs_run": 10 + i, "best_epoch": 2 + i, "config": {"seed": i}})
    with pytest.raises(InputError, match="step round15 is not in"):
        recipe.chain_record(tmp_path)
    shutil.copytree(tiny_bundle, tmp_path / "round15")
    record = recipe.chain_record(tmp_path)
    assert [(r["step"], r["epochs_run"], r["seed"]) for r in record[:4]] == [
        ("round8", 10, 0), ("round9", 11, 1), ("round11", 12, 2), ("round12", 13, 3)]


def test_the_round15_chain_refuses_to_start_from_its_own_output(tiny_bundle, tmp_path, monkeypatch, capsys):
    import shutil

    from kneeseg.bundle import update_card

    recipe = _recipe()
    installed = tmp_path / "installed"
    shutil.copytree(tiny_bundle, installed)
    update_card(installed, training={"recipe": "scripts/train_default.py round15-chain (a fine-tune of round 6)"})
    monkeypatch.setattr(recipe, "INSTALLED", installed)
    steps = _chain(recipe, monkeypatch)
    monkeypatch.setattr("sys.argv", ["train_default.py", "round15-chain", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_info:
        recipe.main()
    assert exit_info.value.code == 2 and "already the output of round15-chain" in capsys.readouterr().err
    assert steps == []
    monkeypatch.setattr("sys.argv", ["train_default.py", "round15-chain", "--out", str(tmp_path / "out"),
                                     "--init-from", str(tiny_bundle)])
    recipe.main()
    assert steps[0][:2] == ("round8", str(tiny_bundle))


def test_finalize_of_the_chain_writes_its_steps_and_its_recipe_into_the_card(tiny_bundle, tmp_path, monkeypatch):
    import shutil

    from kneeseg.bundle import load_bundle

    recipe = _recipe()
    for name, _ in recipe.ROUND15_CHAIN:
        shutil.copytree(tiny_bundle, tmp_path / "chain" / name)
    monkeypatch.setattr(recipe, "INSTALLED", tmp_path / "installed")
    shutil.copytree(tiny_bundle, recipe.INSTALLED)
    monkeypatch.setattr("sys.argv", ["train_default.py", "finalize", str(tmp_path / "chain" / "round15"), "--recipe",
                                     "round15-chain", "--cache", str(tmp_path / "cache"), "--no-synthetic",
                                     "--hardware", "test"])
    recipe.main()
    training = load_bundle(tmp_path / "chain" / "round15.final").card.training
    assert [step["step"] for step in training["chain"]] == ["round8", "round9", "round11", "round12", "round15"]
    assert training["recipe"] == ("scripts/train_default.py round15-chain (a fine-tune of the shipped default model "
                                  "before round 15 chain)")
    assert recipe._made_by(tmp_path / "chain" / "round15.final", "round15-chain")


def test_a_fine_tune_takes_its_synthesis_workers_and_refuses_none(tiny_bundle, tmp_path, monkeypatch, capsys):
    import kneeseg.workflows.train as workflow

    recipe = _recipe()
    configs = []
    monkeypatch.setattr(recipe, "check_cache_holds_split", lambda *a: None)
    monkeypatch.setattr(workflow, "train_bundle", lambda config, *a, **k: configs.append(config) or {
        "epochs_run": 1, "best_epoch": 1, "stopped_early": True})
    for workers in (["--workers", "3"], []):
        monkeypatch.setattr("sys.argv", ["train_default.py", "round24", "--out", str(tmp_path / "out"),
                                         "--init-from", str(tiny_bundle), *workers])
        recipe.main()
    assert configs[0].recipe.workers == 3 and configs[1].recipe.workers == max(1, (os.cpu_count() or 2) - 1)
    monkeypatch.setattr("sys.argv", ["train_default.py", "round24", "--out", str(tmp_path / "out"),
                                     "--init-from", str(tiny_bundle), "--workers", "0"])
    with pytest.raises(SystemExit):
        recipe.main()
    assert "--workers must be 1 or more, not 0" in capsys.readouterr().err and len(configs) == 2

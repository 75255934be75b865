"""Training: early stopping with best-weight restore, per-epoch checkpoints and resume, history, seeds, splits."""

import json

import keras
import numpy as np
import pytest
import SimpleITK as sitk

from kneeseg import train as training
from kneeseg.datasets import find_pairs, load_pair, split_by_subject
from kneeseg.errors import InputError
from kneeseg.labels import SEPARATE_BONES
from conftest import toy_knee

TINY = dict(filters=4, depth=2, input_size=32, planes=("sagittal",), window_mm=80.0, batch_size=4,
            steps_per_epoch=3, validation_steps=2)


class ToySlices:
    """A deterministic in-memory source of toy slices (bright square = femur, below it = tibia)."""

    def __init__(self, steps=3, seed=0, size=32):
        self.steps, self.seed, self.size = steps, seed, size

    def __len__(self):
        return self.steps

    def batch(self, index):
        rng = np.random.default_rng([self.seed, index])
        y = np.zeros((4, 32, 32), np.uint8)
        for i in range(4):
            top = rng.integers(4, 10)
            y[i, top:top + 10, 8:24] = 1
            y[i, top + 12:top + 20, 8:24] = 2
        scale = self.size // 32
        y = np.repeat(np.repeat(y, scale, axis=1), scale, axis=2)
        noise = rng.standard_normal(y.shape + (1,)).astype(np.float32)
        return (y > 0).astype(np.float32)[..., None] + 0.1 * noise, y


class InterruptInEpoch(keras.callbacks.Callback):
    """Kills training in the middle of an epoch, as Ctrl-C or a lost node would."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch_to_fail, self.current = epoch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch_to_fail and batch == 1:
            raise KeyboardInterrupt("simulated interruption")


def _config(**kwargs):
    return training.TrainConfig.from_flat(**{**TINY, **kwargs})


def test_learning_rate_decays_from_1e3_to_1e4():
    config = training.Recipe(epochs=11)
    assert config.learning_rate_at(0) == pytest.approx(1e-3)
    assert config.learning_rate_at(10) == pytest.approx(1e-4)
    assert config.learning_rate_at(5) == pytest.approx(np.sqrt(1e-3 * 1e-4))


@pytest.mark.slow
def test_training_writes_checkpoints_history_and_plot(tmp_path):
    model, state = training.fit(_config(epochs=2), SEPARATE_BONES, ToySlices(), ToySlices(seed=1), tmp_path)
    for name in ("checkpoint.keras", "best.keras", "state.json", "history.csv"):
        assert (tmp_path / name).exists(), name
    rows = training.read_history(tmp_path / "history.csv")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"loss", "val_loss", "val_mean_dice", "dice_femur", "learning_rate"} <= set(rows[0])
    training.plot_history(tmp_path / "history.csv", tmp_path / "history.png")
    assert (tmp_path / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert state["epoch"] == 1


@pytest.mark.slow
def test_early_stopping_stops_after_patience_and_restores_the_best_weights(tmp_path):
    config = _config(epochs=10, patience=2)
    model = training.build_and_compile(config, SEPARATE_BONES)
    state = {"epoch": -1, "best": -np.inf, "best_epoch": -1, "wait": 0}
    monitor = training._monitor_callback(config, tmp_path, state, None)
    monitor.set_model(model)
    scores = [0.5, 0.7, 0.6, 0.65]
    best_weights = None
    for epoch, score in enumerate(scores):
        model.set_weights([w + epoch for w in model.get_weights()])
        if score == max(scores):
            best_weights = [w.copy() for w in model.get_weights()]
        monitor.on_epoch_end(epoch, {"loss": 1.0, "val_mean_dice": score})
    assert model.stop_training and state["stopped_early"]
    assert state["best_epoch"] == 1 and state["best"] == pytest.approx(0.7)
    best = keras.models.load_model(tmp_path / "best.keras", safe_mode=True)
    for a, b in zip(best.get_weights(), best_weights):
        np.testing.assert_allclose(a, b)


@pytest.mark.slow
def test_fit_stops_early_when_validation_dice_does_not_improve(tmp_path):
    frozen = _config(epochs=8, patience=1, learning_rate=0.0, final_learning_rate=0.0)
    model, state = training.fit(frozen, SEPARATE_BONES, ToySlices(), ToySlices(seed=1), tmp_path)
    assert state["stopped_early"] and state["epoch"] == 1  # epoch 2 did not beat epoch 1
    # The decision is saved: running again in the same work folder does not train on.
    epochs = []
    training.fit(frozen, SEPARATE_BONES, ToySlices(), ToySlices(seed=1), tmp_path,
                 lambda stage, fraction, message, **extra: epochs.append(extra.get("epoch")))
    assert [e for e in epochs if e is not None] == []


@pytest.mark.slow
def test_interrupted_training_resumes_after_the_last_finished_epoch(tmp_path):
    config = _config(epochs=3)
    with pytest.raises(KeyboardInterrupt):
        training.fit(config, SEPARATE_BONES, ToySlices(), ToySlices(seed=1), tmp_path,
                     callbacks=[InterruptInEpoch(1)])
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["epoch"] == 0  # one epoch finished and checkpointed
    checkpoint = keras.models.load_model(tmp_path / "checkpoint.keras", safe_mode=True)
    resumed_steps = []

    def progress(stage, fraction, message, **extra):
        resumed_steps.append((stage, extra.get("epoch")))

    _, state = training.fit(config, SEPARATE_BONES, ToySlices(), ToySlices(seed=1), tmp_path, progress)
    assert resumed_steps[0][0] == "resume"
    assert [e for s, e in resumed_steps if s == "epoch"] == [2, 3]
    assert [r["epoch"] for r in training.read_history(tmp_path / "history.csv")] == [1, 2, 3]
    assert state["epoch"] == 2
    assert checkpoint.optimizer.iterations.numpy() == 3  # the optimizer state was saved too


def test_stop_after_epochs_cuts_the_schedule_of_epochs_and_a_later_cut_continues_it(tmp_path):
    config = _config(epochs=5, learning_rate=1e-3, final_learning_rate=1e-5, stop_after_epochs=2, patience=50)
    _, state = training.fit(config, SEPARATE_BONES, ToySlices(), ToySlices(seed=1), tmp_path)
    history = training.read_history(tmp_path / "history.csv")
    assert state["epoch"] == 1 and [r["epoch"] for r in history] == [1, 2]
    # the learning rate decays over the 5 epochs of the schedule, not over the 2 trained
    assert history[1]["learning_rate"] == pytest.approx(config.recipe.learning_rate_at(1))
    assert history[1]["learning_rate"] > 1e-4
    _, state = training.fit(_config(**{**config.to_flat(), "stop_after_epochs": 3}), SEPARATE_BONES, ToySlices(),
                            ToySlices(seed=1), tmp_path)
    assert [r["epoch"] for r in training.read_history(tmp_path / "history.csv")] == [1, 2, 3]
    _, state = training.fit(_config(**{**config.to_flat(), "stop_after_epochs": 3}), SEPARATE_BONES, ToySlices(),
                            ToySlices(seed=1), tmp_path)
    assert state["epoch"] == 2  # a rerun of a finished cut trains nothing


def test_a_resume_names_its_start_bundle_by_any_path_to_the_same_folder(tmp_path, monkeypatch):
    from kneeseg.train import _same_setting

    (tmp_path / "start").mkdir()
    monkeypatch.chdir(tmp_path)
    assert _same_setting("init_from", "start", str(tmp_path / "start"))
    assert _same_setting("init_from", "./start/", "start")
    assert not _same_setting("init_from", "start", str(tmp_path / "other"))
    assert not _same_setting("split", "start", str(tmp_path / "start"))  # only the start bundle is a folder


class RecordWeights(keras.callbacks.Callback):
    """The weights at the end of every epoch, as the built-in monitor saw them."""

    def __init__(self, record):
        super().__init__()
        self.record = record

    def on_epoch_end(self, epoch, logs=None):
        self.record[epoch + 1] = self.model.get_weights()


def _mean(*weight_lists):
    return [np.mean([np.asarray(w, np.float64) for w in ws], axis=0) for ws in zip(*weight_lists)]


def _assert_weights_equal(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)


def _val_mean_dice(model):
    return model.evaluate(training._batches(ToySlices(seed=1), 1), return_dict=True, verbose=0)["mean_dice"]


def test_average_from_epoch_makes_the_result_the_mean_of_those_epochs_weights(tmp_path):
    record = {}
    config = _config(epochs=3, patience=50, average_from_epoch=2, learning_rate=1e-2)
    model, state = training.fit(config, SEPARATE_BONES, ToySlices(), ToySlices(seed=1), tmp_path,
                                callbacks=[RecordWeights(record)])
    assert not any(np.allclose(a, b) for a, b in zip(record[2], record[3]) if a.size > 1)  # the epochs differ
    _assert_weights_equal(model.get_weights(), _mean(record[2], record[3]))
    assert state["averaged_epochs"] == 2
    assert state["average_val_mean_dice"] == pytest.approx(_val_mean_dice(model), abs=1e-6)
    assert sorted(p.name for p in tmp_path.glob("average-*.npz")) == ["average-0003.npz"]
    card = training.make_card(config, SEPARATE_BONES, {}, state)
    assert card.training["averaged_epochs"] == 2
    assert card.training["average_val_mean_dice"] == state["average_val_mean_dice"]


@pytest.mark.slow
def test_the_weight_average_survives_an_interruption_and_the_resume_adds_to_it(tmp_path):
    record = {}
    config = _config(epochs=4, patience=50, average_from_epoch=2, learning_rate=1e-2)
    with pytest.raises(KeyboardInterrupt):
        training.fit(config, SEPARATE_BONES, ToySlices(), ToySlices(seed=1), tmp_path,
                     callbacks=[RecordWeights(record), InterruptInEpoch(2)])
    assert json.loads((tmp_path / "state.json").read_text())["averaged_epochs"] == 1
    model, state = training.fit(config, SEPARATE_BONES, ToySlices(), ToySlices(seed=1), tmp_path,
                                callbacks=[RecordWeights(record)])
    assert sorted(record) == [1, 2, 3, 4] and state["averaged_epochs"] == 3
    _assert_weights_equal(model.get_weights(), _mean(record[2], record[3], record[4]))
    again, _ = training.fit(config, SEPARATE_BONES, ToySlices(), ToySlices(seed=1), tmp_path)  # finished: no training
    _assert_weights_equal(again.get_weights(), model.get_weights())


@pytest.mark.slow
def test_a_crash_between_the_average_and_the_state_does_not_count_the_lost_epoch(tmp_path, monkeypatch):
    """Epoch 3's average is written, then the run dies before state.json says so: the resume redoes
    epoch 3 and averages the redone weights, not both."""
    record, calls, write_json = {}, [], training.write_json

    def dies_on_the_third_state(path, data):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed between the average and the state")
        write_json(path, data)

    config = _config(epochs=4, patience=50, average_from_epoch=2, learning_rate=1e-2)
    monkeypatch.setattr(training, "write_json", dies_on_the_third_state)
    with pytest.raises(KeyboardInterrupt):
        training.fit(config, SEPARATE_BONES, ToySlices(), ToySlices(seed=1), tmp_path, callbacks=[RecordWeights(record)])
    assert (tmp_path / "average-0003.npz").exists() and sorted(record) == [1, 2]
    monkeypatch.setattr(training, "write_json", write_json)
    model, state = training.fit(config, SEPARATE_BONES, ToySlices(), ToySlices(seed=1), tmp_path,
                                callbacks=[RecordWeights(record)])
    assert state["averaged_epochs"] == 3
    _assert_weights_equal(model.get_weights(), _mean(record[2], record[3], record[4]))


@pytest.mark.slow
def test_the_average_score_is_of_the_last_average_even_when_the_run_died_before_scoring_it(tmp_path, monkeypatch):
    config = _config(epochs=4, patience=50, average_from_epoch=2, learning_rate=1e-2, stop_after_epochs=3)
    _, state = training.fit(config, SEPARATE_BONES, ToySlices(), ToySlices(seed=1), tmp_path)
    first_score = state["average_val_mean_dice"]
    longer = _config(**{**config.to_flat(), "stop_after_epochs": 4})
    score = training._score_average
    monkeypatch.setattr(training, "_score_average", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):  # epoch 4 trained and averaged, killed while scoring the average
        training.fit(longer, SEPARATE_BONES, ToySlices(), ToySlices(seed=1), tmp_path)
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["averaged_epochs"] == 3 and "average_val_mean_dice" not in saved
    monkeypatch.setattr(training, "_score_average", score)
    model, state = training.fit(longer, SEPARATE_BONES, ToySlices(), ToySlices(seed=1), tmp_path)  # trains nothing
    assert state["average_val_mean_dice"] == pytest.approx(_val_mean_dice(model), abs=1e-6)
    assert state["average_val_mean_dice"] != first_score


def test_an_average_that_starts_after_the_last_epoch_is_refused_before_training(tmp_path):
    with pytest.raises(InputError, match="average_from_epoch: 5 is after the last epoch the run trains \\(3\\)"):
        training.fit(_config(epochs=4, stop_after_epochs=3, average_from_epoch=5), SEPARATE_BONES, ToySlices(),
                     ToySlices(seed=1), tmp_path / "work")
    assert not (tmp_path / "work").exists()


def test_training_that_stops_before_the_average_starts_keeps_the_best_epoch(tmp_path):
    messages = []
    config = _config(epochs=4, patience=50, average_from_epoch=3, time_limit_min=1e-6)
    model, state = training.fit(config, SEPARATE_BONES, ToySlices(), ToySlices(seed=1), tmp_path,
                                lambda stage, fraction, message, **extra: messages.append(message))
    assert state["epoch"] == 0 and state["stopped_at_time_limit"]
    best = keras.models.load_model(tmp_path / "best.keras", safe_mode=True)
    _assert_weights_equal(model.get_weights(), best.get_weights())
    assert "averaged_epochs" not in state and not list(tmp_path.glob("average-*.npz"))
    assert any("before epoch 3 where the weight average starts" in m for m in messages)


def test_a_work_folder_that_lost_its_average_is_refused_by_name(tmp_path):
    config = _config(epochs=3, patience=50, average_from_epoch=1, stop_after_epochs=1)
    training.fit(config, SEPARATE_BONES, ToySlices(), ToySlices(seed=1), tmp_path)
    (tmp_path / "average-0001.npz").unlink()
    with pytest.raises(InputError, match="weight average .* is missing: delete the folder"):
        training.fit(_config(**{**config.to_flat(), "stop_after_epochs": 2}), SEPARATE_BONES, ToySlices(),
                     ToySlices(seed=1), tmp_path)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_average_from_epoch_must_be_a_positive_whole_number(bad):
    with pytest.raises(InputError, match="average_from_epoch"):
        _config(epochs=3, average_from_epoch=bad)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_stop_after_epochs_must_be_a_positive_whole_number(bad):
    with pytest.raises(InputError, match="stop_after_epochs"):
        _config(epochs=3, stop_after_epochs=bad)


@pytest.mark.slow
def test_training_is_seeded(tmp_path):
    weights = []
    for run in ("a", "b"):
        model, _ = training.fit(_config(epochs=1, seed=7), SEPARATE_BONES, ToySlices(), ToySlices(seed=1),
                                tmp_path / run)
        weights.append(model.get_weights())
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_model_is_built_inside_a_distribution_strategy_scope():
    import tensorflow as tf

    with training.strategy_scope():
        assert tf.distribute.has_strategy() or tf.distribute.get_strategy() is not None
        model = training.build_and_compile(_config(), SEPARATE_BONES)
    assert model.optimizer is not None


def test_split_is_by_subject_and_deterministic():
    subjects = [f"s{i // 2}" for i in range(20)]  # two time points per subject
    train_ids, val_ids, test_ids = split_by_subject(subjects, seed=3)
    assert not (set(train_ids) & set(val_ids) or set(train_ids) & set(test_ids) or set(val_ids) & set(test_ids))
    assert sorted(train_ids + val_ids + test_ids) == sorted(set(subjects))
    assert (train_ids, val_ids, test_ids) == split_by_subject(subjects, seed=3)
    with pytest.raises(InputError, match="at least 3 subjects"):
        split_by_subject(["a", "b"])


def _write_pairs(folder, n=3, label_spacing=None):
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for i in range(n):
        image, labels = toy_knee(seed=i)
        if label_spacing is not None and i == n - 1:
            labels.SetSpacing(label_spacing)
        sitk.WriteImage(image, str(folder / "images" / f"case{i}.nrrd"))
        sitk.WriteImage(labels, str(folder / "labels" / f"case{i}.nrrd"))


def test_training_pairs_with_different_geometry_are_rejected(tmp_path):
    _write_pairs(tmp_path, label_spacing=(2.0, 2.0, 2.0))
    pairs = find_pairs(tmp_path)
    load_pair(pairs[0])
    with pytest.raises(InputError) as info:
        load_pair(pairs[-1])
    assert "geometry differ" in str(info.value) and "case2.nrrd" in str(info.value)


def test_missing_label_for_an_image_is_named(tmp_path):
    _write_pairs(tmp_path)
    (tmp_path / "labels" / "case1.nrrd").unlink()
    with pytest.raises(InputError, match="no label map for case1.nrrd"):
        find_pairs(tmp_path)


def test_fine_tuning_starts_from_a_bundle_and_refuses_another_architecture(tiny_bundle, tmp_path):
    from kneeseg.bundle import load_bundle
    from kneeseg.errors import BundleError

    card = load_bundle(tiny_bundle).card
    matching = _config(filters=card.network.filters, depth=card.network.depth, input_size=card.frame.size, epochs=1,
                       learning_rate=0.0, final_learning_rate=0.0, init_from=str(tiny_bundle))
    model, _ = training.fit(matching, SEPARATE_BONES, ToySlices(size=64), ToySlices(seed=1, size=64), tmp_path / "ok")
    source = load_bundle(tiny_bundle).load_keras_model()
    for a, b in zip(model.get_weights(), source.get_weights()):
        np.testing.assert_allclose(a, b)  # learning rate 0: still the bundle's weights
    with pytest.raises(BundleError, match="network differs"):
        training.fit(_config(epochs=1, init_from=str(tiny_bundle)), SEPARATE_BONES, ToySlices(), ToySlices(seed=1),
                     tmp_path / "bad")


def test_a_missing_start_bundle_fails_before_the_work_folder_is_made_but_a_resume_does_not_need_it(tiny_bundle,
                                                                                                      tmp_path):
    import shutil

    from kneeseg.bundle import load_bundle
    from kneeseg.errors import BundleError

    card = load_bundle(tiny_bundle).card
    start = shutil.copytree(tiny_bundle, tmp_path / "start")
    settings = dict(filters=card.network.filters, depth=card.network.depth, input_size=card.frame.size,
                    init_from=str(start))
    with pytest.raises(BundleError, match="model bundle not found"):
        training.fit(_config(epochs=1, **{**settings, "init_from": str(tmp_path / "gone")}), SEPARATE_BONES,
                     ToySlices(size=64), ToySlices(seed=1, size=64), tmp_path / "never")
    assert not (tmp_path / "never").exists()
    training.fit(_config(epochs=1, **settings), SEPARATE_BONES, ToySlices(size=64), ToySlices(seed=1, size=64),
                 tmp_path / "work")
    shutil.rmtree(start)
    _, state = training.fit(_config(epochs=2, **settings), SEPARATE_BONES, ToySlices(size=64),
                            ToySlices(seed=1, size=64), tmp_path / "work")
    assert state["epoch"] == 1  # the second epoch ran from the checkpoint


@pytest.mark.slow
def test_population_normalisation_is_stored_in_the_card_and_used_at_inference(tmp_path, monkeypatch):
    from conftest import write_toy_pairs
    from kneeseg import infer
    from kneeseg.preprocess import intensity
    from kneeseg.bundle import load_bundle
    from kneeseg.workflows.train import train_bundle

    data = write_toy_pairs(tmp_path / "data", n=3, size=(32, 32, 24), spacing=(2.0, 2.0, 2.0))
    config = _config(epochs=1, steps_per_epoch=2, validation_steps=1, normalisation="population")
    train_bundle(config, tmp_path / "bundle", tmp_path / "work", data=data, export_onnx=False)
    norm = load_bundle(tmp_path / "bundle").card.frame.normalisation
    assert norm.mode == "population" and 0.0 < norm.mean < 1.0 and norm.std > 0
    seen = []
    monkeypatch.setattr(intensity, "standardize", lambda a, mean=None, std=None, **k: seen.append((mean, std)) or a)
    image, _ = toy_knee(size=(32, 32, 24), spacing=(2.0, 2.0, 2.0))
    infer.segment(image, load_bundle(tmp_path / "bundle"), infer.SegmentOptions(centre="image"))
    assert seen and all(s == (norm.mean, norm.std) for s in seen)
    with pytest.raises(InputError, match="per-volume"):
        train_bundle(config, tmp_path / "b2", tmp_path / "w2", synthetic=tmp_path)


@pytest.mark.slow
def test_resuming_with_other_settings_or_data_is_refused(tmp_path):
    training.fit(_config(epochs=1), SEPARATE_BONES, ToySlices(), ToySlices(seed=1), tmp_path, inputs={"data": "a"})
    with pytest.raises(InputError, match="filters"):
        training.fit(_config(epochs=2, filters=8), SEPARATE_BONES, ToySlices(), ToySlices(seed=1), tmp_path,
                     inputs={"data": "a"})
    with pytest.raises(InputError, match="training data"):
        training.fit(_config(epochs=2), SEPARATE_BONES, ToySlices(), ToySlices(seed=1), tmp_path, inputs={"data": "b"})
    _, state = training.fit(_config(epochs=2, patience=20), SEPARATE_BONES, ToySlices(), ToySlices(seed=1), tmp_path,
                            inputs={"data": "a"})
    assert state["epoch"] == 1  # more epochs and another patience resume fine


def test_training_labels_outside_the_bone_values_are_refused(tmp_path):
    _write_pairs(tmp_path)
    labels = sitk.ReadImage(str(tmp_path / "labels" / "case1.nrrd"))
    array = sitk.GetArrayFromImage(labels)
    array[0, 0, :3] = [7, 9, 200]
    relabelled = sitk.GetImageFromArray(array)
    relabelled.CopyInformation(labels)
    sitk.WriteImage(relabelled, str(tmp_path / "labels" / "case1.nrrd"))
    with pytest.raises(InputError, match=r"values \[7, 9, 200\]") as info:
        load_pair(find_pairs(tmp_path)[1])
    assert "case1.nrrd" in str(info.value)


def test_the_split_does_not_follow_the_training_seed(tmp_path):
    from conftest import write_toy_pairs
    from kneeseg.workflows.train import paired_sources

    data = write_toy_pairs(tmp_path / "data", n=6, size=(24, 24, 16), spacing=(2.0, 2.0, 2.0))
    splits = [paired_sources(_config(seed=seed), data)[2]["data"]["split"] for seed in (0, 1)]
    assert splits[0] == splits[1]  # a fine-tune with another seed keeps its test subjects held out
    other = paired_sources(_config(split_seed=5), data)[2]["data"]["split"]
    assert sorted(sum(other.values(), [])) == sorted(sum(splits[0].values(), []))


def test_config_parts_keep_the_flat_card_layout():
    """Network, frame and recipe are separate parts; cards and state.json keep the one flat layout."""
    config = _config(output="merged", min_slice_mm=2.5, epochs=3)
    assert (config.network.n_classes, config.frame.min_slice_mm, config.recipe.epochs) == (1, 2.5, 3)
    flat = config.to_flat()
    assert list(flat)[:10] == ["dims", "output", "filters", "depth", "dropout", "context_slices", "input_size",
                               "planes", "window_mm", "min_slice_mm"]
    assert training.TrainConfig.from_flat(**flat) == config
    for bad, name in (({"input_size": 30}, "input_size"), ({"planes": ("oblique",)}, "planes"),
                      ({"window_mm": -1.0}, "window_mm"), ({"filtres": 8}, "filtres")):
        with pytest.raises(InputError, match=name):
            training.TrainConfig.from_flat(**{**TINY, **bad})


def test_min_slice_mm_reaches_the_paired_slices(tmp_path):
    """The slice spacing written to the card (and used at inference) is the one training data is cut at."""
    from conftest import write_toy_pairs
    from kneeseg.workflows.train import paired_sources

    data = write_toy_pairs(tmp_path / "data", n=3, size=(24, 24, 40), spacing=(2.0, 2.0, 1.0))
    counts = {}
    for min_slice_mm in (1.0, 4.0):
        train_source, _, _ = paired_sources(_config(planes=("axial",), min_slice_mm=min_slice_mm), data)
        counts[min_slice_mm] = len(train_source.images)
    assert counts[4.0] < 0.5 * counts[1.0]  # axial slices 1 mm apart in the scan, 4 mm in the frame


def _write_split(path, **parts):
    path.write_text(json.dumps({"train": [], "validation": [], "test": [], **parts}))
    return path


def test_a_split_file_fixes_the_paired_split_and_the_card_says_so(tmp_path):
    from conftest import write_toy_pairs
    from kneeseg.workflows.train import paired_sources

    data = write_toy_pairs(tmp_path / "data", n=6, size=(24, 24, 16), spacing=(2.0, 2.0, 2.0))
    subjects = sorted(p.subject for p in find_pairs(data))
    split_file = _write_split(tmp_path / "split.json", train=subjects[:3], validation=subjects[3:5],
                              test=subjects[5:] + ["not-in-the-data"])
    provenance = paired_sources(_config(split=str(split_file)), data)[2]["data"]
    assert provenance["split"] == {"train": subjects[:3], "validation": subjects[3:5], "test": subjects[5:]}
    assert provenance["split_source"] == f"file {split_file.name}"
    assert paired_sources(_config(), data)[2]["data"]["split_source"] == "drawn with split seed 0"
    _write_split(split_file, train=subjects[:3], validation=subjects[3:5])  # subjects[5] in no part
    with pytest.raises(InputError, match=f"names no part for subject.*{subjects[5]}"):
        paired_sources(_config(split=str(split_file)), data)


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "a JSON object with the lists train, validation and test"),
    ('{"train": ["a"], "validation": ["b"]}', "a JSON object with the lists"),
    ('{"train": ["a"], "validation": ["b"], "test": [], "tset": []}', "a JSON object with the lists"),
    ('{"train": "a", "validation": ["b"], "test": []}', "train must be a list of subject ids"),
    ('{"train": ["a", "b"], "validation": ["b"], "test": []}', "b are in both train and validation"),
    ('{"train": ["a"], "validation": ["b"", "test": []}', "not JSON"),
])
def test_a_bad_split_file_is_refused_by_name(tmp_path, content, message):
    from kneeseg.datasets import read_split

    path = tmp_path / "split.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message) as info:
        read_split(path)
    assert str(path) in str(info.value)
    with pytest.raises(InputError, match="cannot read the split file"):
        read_split(tmp_path / "absent.json")

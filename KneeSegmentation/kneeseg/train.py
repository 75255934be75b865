"""Training: seeded, split by subject, Adam with decay, early stopping on validation Dice, resumable.

:class:`TrainConfig` says what is trained: the network (``NetworkSpec``), the frame its slices are
cut in (``FrameSpec``, stored in the card and used at inference) and the :class:`Recipe`.

Everything a run produces lives in its work folder: ``checkpoint.keras`` (model + optimizer, saved
every epoch), ``best.keras`` (best validation mean Dice so far), ``state.json`` (epoch, best score,
patience counter), ``history.csv`` and, with ``average_from_epoch``, ``average-NNNN.npz`` (the running
mean of the weights, which is then the result instead of ``best.keras``). Running again with the same
work folder resumes after the last finished epoch. The model is built and compiled inside a
``tf.distribute`` strategy scope, so several GPUs are used unchanged (MirroredStrategy when more than
one is visible).
"""

import contextlib
import csv
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from .bundle import load_bundle
from .errors import BundleError, InputError, listed
from .io import write_json
from .labels import MERGED_BONES, SEPARATE_BONES
from .progress import NO_PROGRESS
from .writing import atomic_path, is_temp_name
from .specs import (FRAME_SETTINGS, NETWORK_SETTINGS, FrameSpec, NetworkSpec, Normalisation, Recipe, SpecError,
                    setting_defaults)

MONITOR = "val_mean_dice"


@dataclass(frozen=True)
class TrainConfig:
    """What to train: the network (:class:`~kneeseg.specs.NetworkSpec`), the frame its slices are cut in
    (:class:`~kneeseg.specs.FrameSpec`, the card's, shared with inference) and the :class:`Recipe`.

    Cards (format version 1) and ``state.json`` keep the three parts in one flat mapping
    (:meth:`to_flat`, :meth:`from_flat`), the names of the ``kneeseg train`` flags."""

    network: NetworkSpec = field(default_factory=NetworkSpec)
    frame: FrameSpec = field(default_factory=FrameSpec)
    recipe: Recipe = field(default_factory=Recipe)

    def __post_init__(self):
        if self.recipe.train_layers == "position" and self.network.slice_position != "bottleneck":
            raise InputError("training setting train_layers: 'position' trains the layers a bottleneck position "
                             "adds; the network has none (slice_position must be 'bottleneck')")
        expected = 1 if self.network.output == "merged" else len(SEPARATE_BONES) + 1
        if self.network.n_classes != expected:
            raise InputError(f"a {self.network.output} network for the knee bones has {expected} output "
                             f"channel(s), not {self.network.n_classes}")
        try:
            self.network.check_input_size(self.frame.size)
        except SpecError as exc:
            raise InputError(f"training setting {exc}") from None

    @property
    def labels(self) -> tuple:
        """The labels the network is trained on."""
        return MERGED_BONES if self.network.output == "merged" else SEPARATE_BONES

    @classmethod
    def from_flat(cls, **settings) -> "TrainConfig":
        """The configuration from flat settings (a card's ``training.config``, the ``kneeseg train``
        flags); a wrong name or value raises :class:`InputError` naming it."""
        known = set(NETWORK_SETTINGS) | set(FRAME_SETTINGS) | {f.name for f in fields(Recipe)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise InputError(f"unknown training setting(s) {', '.join(unknown)}")
        network = {k: settings.pop(k) for k in NETWORK_SETTINGS if k in settings}
        frame = {name: settings.pop(key) for key, name in FRAME_SETTINGS.items() if key in settings}
        merged = network.get("output") == "merged"
        try:
            return cls(NetworkSpec(n_classes=1 if merged else len(SEPARATE_BONES) + 1, **network),
                       FrameSpec(**frame), Recipe(**settings))
        except SpecError as exc:
            raise InputError(f"training setting {exc}") from None

    def to_flat(self) -> dict:
        """The flat settings, JSON-able, in the layout cards and ``state.json`` have always had
        (``slice_position`` only when on, so that older runs' state files still match)."""
        network, frame = self.network, self.frame
        return _jsonable({"dims": network.dims, "output": network.output, "filters": network.filters,
                          "depth": network.depth, "dropout": network.dropout,
                          "context_slices": network.context_slices, "input_size": frame.size,
                          "planes": frame.planes, "window_mm": frame.window_mm, "min_slice_mm": frame.min_slice_mm,
                          **({"slice_position": network.slice_position} if network.slice_position else {}),
                          **asdict(self.recipe)})


def strategy_scope():
    """A ``tf.distribute`` scope on the TensorFlow backend (mirrored over all GPUs when several)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return contextlib.nullcontext()
    import tensorflow as tf

    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy().scope()
    return tf.distribute.get_strategy().scope()


def _batches(source, workers):
    """Wrap a batch source (``__len__``, ``batch(i)``, optional ``on_epoch_end``) as a Keras PyDataset."""
    import keras

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=workers, use_multiprocessing=False)

        def __len__(self):
            return len(source)

        def __getitem__(self, index):
            return source.batch(index)

        def on_epoch_end(self):
            if hasattr(source, "on_epoch_end"):
                source.on_epoch_end()

    return Batches()


@contextlib.contextmanager
def _sources(recipe: Recipe, train_source, val_source):
    """(train, validation) PyDatasets: threads, or a process pool when ``use_multiprocessing``."""
    if not recipe.use_multiprocessing:
        yield _batches(train_source, recipe.workers), _batches(val_source, recipe.workers)
        return
    from .batchpool import BatchPool

    with BatchPool({"train": train_source, "validation": val_source}, recipe.workers) as pool:
        yield _batches(pool.view("train"), 1), _batches(pool.view("validation"), 1)


def _atomic_save(model, path: Path):
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


def _monitor_callback(config: TrainConfig, work: Path, state: dict, progress):
    import keras

    recipe, progress = config.recipe, progress or NO_PROGRESS
    started = time.monotonic()

    class Monitor(keras.callbacks.Callback):
        """Checkpoint every epoch, keep the best model, early-stop on validation mean Dice."""

        def on_epoch_begin(self, epoch, logs=None):
            self.model.optimizer.learning_rate.assign(recipe.learning_rate_at(epoch))

        def on_epoch_end(self, epoch, logs=None):
            logs = {k: float(v) for k, v in (logs or {}).items()}
            logs["learning_rate"] = recipe.learning_rate_at(epoch)
            _append_history(work / "history.csv", epoch, logs)
            score = logs.get(MONITOR, -math.inf)
            if score > state["best"]:
                state.update(best=score, best_epoch=epoch, wait=0)
                _atomic_save(self.model, work / "best.keras")
            else:
                state["wait"] += 1
            state["epoch"] = epoch
            if recipe.average_from_epoch and epoch + 1 >= recipe.average_from_epoch:
                _add_to_average(work, state, self.model.get_weights())
            if state["wait"] >= recipe.patience:
                state["stopped_early"] = True
                self.model.stop_training = True
            if recipe.time_limit_min is not None and time.monotonic() - started > 60 * recipe.time_limit_min:
                state["stopped_at_time_limit"] = True
                self.model.stop_training = True
            _atomic_save(self.model, work / "checkpoint.keras")
            write_json(work / "state.json", state)  # after the stop decision: a rerun honours it
            _remove_stale_averages(work, state)
            progress("epoch", (epoch + 1) / recipe.last_epoch,
                     f"epoch {epoch + 1}/{recipe.last_epoch}: loss {logs.get('loss', float('nan')):.4f}, "
                     f"val mean Dice {score:.4f}", epoch=epoch + 1, logs=logs)

    return Monitor()


def _read_average(work: Path, state: dict):
    """The running mean of the weights ``state`` names; a work folder that lost it is refused by name."""
    path = work / state["average_file"] if state.get("average_file") else None
    if path is None or not path.exists():
        raise InputError(f"the work folder's weight average ({state.get('average_file') or 'no file named'}, "
                         f"{state.get('averaged_epochs')} epochs) is missing: delete the folder to start over", work)
    with np.load(path) as saved:
        return [saved[f"w{i}"] for i in range(len(saved.files))]


def _add_to_average(work: Path, state: dict, weights):
    """Fold one epoch's weights into the running mean; ``state`` then names the new file, and the
    average's validation score, now out of date, is dropped. One file per epoch: a crash between it and
    ``state.json`` leaves the average of the epoch ``state`` records intact."""
    count = state.get("averaged_epochs", 0)
    if count:
        average = [a + (np.asarray(w, np.float64) - a) / (count + 1)
                   for a, w in zip(_read_average(work, state), weights, strict=True)]
    else:
        average = [np.array(w, np.float64) for w in weights]
    name = f"average-{state['epoch'] + 1:04d}.npz"
    with atomic_path(work / name) as tmp:
        np.savez(tmp, **{f"w{i}": a for i, a in enumerate(average)})
    state.update(averaged_epochs=count + 1, average_file=name)
    state.pop("average_val_mean_dice", None)


def _remove_stale_averages(work: Path, state: dict):
    for path in work.glob("average-*.npz"):
        if path.name != state.get("average_file"):
            path.unlink(missing_ok=True)


def _append_history(path: Path, epoch: int, logs: dict):
    row = {"epoch": epoch + 1, **logs}
    exists = path.exists()
    fieldnames = list(row)
    if exists:
        with open(path, newline="") as f:
            fieldnames = next(csv.reader(f), fieldnames)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames, extrasaction="ignore")
        if not exists:
            writer.writeheader()
        writer.writerow(row)


def read_history(path) -> list:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def build_and_compile(config: TrainConfig, labels):
    import keras

    from .losses import make_loss, training_metrics
    from .model import build_model

    recipe = config.recipe
    model = build_model(config.network, config.frame.size)
    if recipe.train_layers == "position":  # the rest keeps the start bundle's weights
        for layer in model.layers:
            layer.trainable = layer.name.startswith(POSITION_LAYER_PREFIX)
    model.compile(optimizer=keras.optimizers.Adam(recipe.learning_rate),
                  loss=make_loss(recipe.loss, recipe.class_weights, recipe.beta),
                  metrics=training_metrics(labels))
    return model


RESUMABLE_CHANGES = ("epochs", "patience", "time_limit_min", "stop_after_epochs", "workers", "use_multiprocessing", "extra")


def _same_setting(name, saved, current) -> bool:
    """Whether a setting is unchanged; the starting bundle is the same folder however its path is written."""
    if name == "init_from" and isinstance(saved, str) and isinstance(current, str) and saved and current:
        return Path(saved).resolve() == Path(current).resolve()
    return saved == current


def _check_same_run(saved: dict, config: TrainConfig, inputs: dict, work: Path):
    """Resuming is only right for the same network, frame, recipe and data: refuse anything else."""
    current, defaults = config.to_flat(), setting_defaults()
    # a setting newer than the saved run is that run's default
    changed = sorted(k for k in current if k not in RESUMABLE_CHANGES
                     and not _same_setting(k, saved.get("config", {}).get(k, _jsonable(defaults.get(k))), current[k]))
    saved_inputs = saved.get("inputs", inputs)  # a key newer than the saved run is not compared
    data_keys = (set(saved_inputs) | set(inputs)) - {"split_sha256"}
    if any(saved_inputs.get(k) != inputs.get(k) for k in data_keys):
        changed.append("training data")
    if saved_inputs.get("split_sha256", inputs.get("split_sha256")) != inputs.get("split_sha256"):
        changed.append("the split file's contents")
    if changed:
        raise InputError(f"the work folder holds a run with other settings ({', '.join(changed)}); resume it with "
                         "the same settings, or give another --work folder (or delete this one)", work)


def fit(config: TrainConfig, labels, train_source, val_source, work_dir, progress=None, callbacks=(), inputs=None):
    """Train (or resume) in ``work_dir``; returns (model with the best weights, or with the mean of the
    weights of the epochs from ``average_from_epoch`` on, state dict).

    ``callbacks`` are extra Keras callbacks (e.g. TensorBoard), run after the built-in monitor.
    ``inputs`` describes the training data (e.g. its path): resuming with other data is refused.
    """
    import keras

    from . import losses  # noqa: F401 - registers the custom losses/metrics that checkpoints refer to

    recipe, progress = config.recipe, progress or NO_PROGRESS
    work = Path(work_dir)
    check_work_folder(work)
    check_start_bundle(config, work)
    work.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(recipe.seed)
    state_path = work / "state.json"
    inputs = inputs or {}
    state = {"epoch": -1, "best": -math.inf, "best_epoch": -1, "wait": 0, "stopped_early": False,
             "config": config.to_flat(), "inputs": inputs}
    with strategy_scope():
        if _resuming(work):
            saved = json.loads(state_path.read_text())
            _check_same_run(saved, config, inputs, work)
            state.update(saved, config=config.to_flat(), inputs=inputs, stopped_at_time_limit=False)
            model = keras.models.load_model(work / "checkpoint.keras", safe_mode=True)
            progress("resume", (state["epoch"] + 1) / recipe.last_epoch, f"resuming after epoch {state['epoch'] + 1}")
        else:
            model = build_and_compile(config, labels)
            if recipe.init_from:
                _load_initial_weights(model, recipe.init_from, config.network)
    initial_epoch = state["epoch"] + 1
    to_train = initial_epoch < recipe.last_epoch and not state.get("stopped_early")
    if to_train or (state.get("averaged_epochs") and "average_val_mean_dice" not in state):
        with _sources(recipe, train_source, val_source) as (train_batches, val_batches):
            if to_train:
                model.fit(train_batches, validation_data=val_batches, epochs=recipe.last_epoch,
                          initial_epoch=initial_epoch, callbacks=[_monitor_callback(config, work, state, progress),
                                                                  *callbacks], verbose=0)
            if state.get("averaged_epochs"):
                _score_average(model, work, state, val_batches, progress)
    if state.get("averaged_epochs"):
        _set_average(model, work, state)
    elif (work / "best.keras").exists():
        if recipe.average_from_epoch:
            progress("average", 1.0, f"training ended after epoch {state['epoch'] + 1}, before epoch "
                     f"{recipe.average_from_epoch} where the weight average starts: the result is the best epoch's")
        best = keras.models.load_model(work / "best.keras", safe_mode=True)
        model.set_weights(best.get_weights())
    return model, state


def _set_average(model, work: Path, state: dict):
    model.set_weights([a.astype(w.dtype) for a, w in zip(_read_average(work, state), model.get_weights(), strict=True)])


def _score_average(model, work: Path, state: dict, val_batches, progress):
    """The averaged weights' validation mean Dice, into ``state`` (and ``state.json``). The best epoch's
    score, the highest of many noisy ones, leans high against it."""
    _set_average(model, work, state)
    state["average_val_mean_dice"] = float(model.evaluate(val_batches, return_dict=True, verbose=0)["mean_dice"])
    write_json(work / "state.json", state)
    progress("average", 1.0, f"the mean of the weights of epochs {state['epoch'] + 2 - state['averaged_epochs']}-"
             f"{state['epoch'] + 1}: val mean Dice {state['average_val_mean_dice']:.4f} (best epoch "
             f"{state['best_epoch'] + 1}: {state['best']:.4f})")


def _resuming(work: Path) -> bool:
    return (work / "state.json").exists() and (work / "checkpoint.keras").exists()


RUN_FILES_BEFORE_STATE = ("history.csv", "best.keras", "checkpoint.keras")  # a run killed in its first epoch


def check_work_is_a_folder(work: Path):
    if work.is_symlink() or (work.exists() and not work.is_dir()):
        raise InputError("the work folder (checkpoints, history) is a file or a link: name a folder", work)


def check_work_folder(work_dir):
    """A work folder is new, empty or a training run's own (its ``state.json``, or only what a run killed in its
    first epoch leaves): a run writes checkpoints and its history there and removes stale weight averages, so a
    folder of other files is refused."""
    work = Path(work_dir)
    check_work_is_a_folder(work)
    if not work.is_dir() or (work / "state.json").is_file():
        return
    others = sorted(e.name for e in work.iterdir() if e.name not in RUN_FILES_BEFORE_STATE
                    and not is_temp_name(e.name) and not re.fullmatch(r"\..+\.tmp\.keras", e.name))
    if others:
        raise InputError(f"the work folder holds files that are not a training run's ({listed(others)}): a run "
                         "would overwrite or remove some of them; give a new or empty --work folder", work)


def check_start_bundle(config: TrainConfig, work_dir):
    """Open the bundle a fine-tune starts from (``init_from``) before any data is read or folder made, so
    a missing or corrupt one fails at once. A resumed run continues from its checkpoint and does not
    read it."""
    if config.recipe.init_from and not _resuming(Path(work_dir)):
        load_bundle(config.recipe.init_from)


FIRST_CONVOLUTION = "down0_conv1"  # kneeseg.model's name for the layer that takes the input
POSITION_LAYER_PREFIX = "position_"  # kneeseg.model's names of the layers a bottleneck position adds


def _load_initial_weights(model, bundle_path, network: NetworkSpec):
    """Start from a bundle's weights (checksum verified), layer by layer; the architectures must match,
    except that the network may take more input channels than the bundle's (:func:`widen_input`) and
    have the position layers it lacks (``slice_position`` "bottleneck": they start at zero effect)."""

    start = load_bundle(bundle_path)
    source = {layer.name: layer for layer in start.load_keras_model().layers if layer.weights}
    mismatch = BundleError("its network differs from the one configured for training (filters, depth, input size "
                           "and output must match to fine-tune)", bundle_path)
    targets = [layer for layer in model.layers if layer.weights]
    if set(source) - {layer.name for layer in targets}:
        raise mismatch
    for layer in targets:
        if layer.name not in source:
            if layer.name.startswith(POSITION_LAYER_PREFIX) and network.slice_position == "bottleneck":
                continue
            raise mismatch
        weights = source[layer.name].get_weights()
        if layer.name == FIRST_CONVOLUTION:
            weights[0] = widen_input(weights[0], start.card.network, network)
        if [w.shape for w in weights] != [w.shape for w in layer.get_weights()]:
            raise mismatch
        layer.set_weights(weights)


def widen_input(kernel, source: NetworkSpec, target: NetworkSpec):
    """The first convolution kernel (kh, kw, channels, filters) of a ``source`` network as one of a
    ``target`` network whose first convolution takes more input channels, with zeros for the new
    ones, so that it starts out computing exactly what the source did: a single-slice kernel goes on
    the middle of the target's neighbouring slices (2.5D), and the position channels
    (``slice_position`` "input") are added after the slices. Any other kernel (another layer's,
    nothing to add, or channels the target would drop) is returned unchanged."""
    kernel = np.asarray(kernel)
    slices_in, slices_out = source.input_channels_of_slices, target.input_channels_of_slices
    position_in, position_out = (source.slice_position == "input"), (target.slice_position == "input")
    if kernel.ndim != 4 or kernel.shape[2] != source.first_kernel_channels or (position_in and not position_out) \
            or slices_in not in (1, slices_out) or source.first_kernel_channels == target.first_kernel_channels:
        return kernel
    wide = np.zeros(kernel.shape[:2] + (target.first_kernel_channels,) + kernel.shape[3:], kernel.dtype)
    first = (slices_out - slices_in) // 2  # the single slice on the middle channel
    wide[:, :, first:first + slices_in] = kernel[:, :, :slices_in]
    if position_in:
        wide[:, :, slices_out:] = kernel[:, :, slices_in:]
    return wide


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def plot_history(history_csv, png_path):
    """Loss and validation Dice curves to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_history(history_csv)
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("loss", "val_loss"):
        ax_loss.plot(epochs, [r.get(key, np.nan) for r in rows], label=key)
    for key in ("mean_dice", "val_mean_dice"):
        ax_dice.plot(epochs, [r.get(key, np.nan) for r in rows], label=key)
    ax_loss.set_xlabel("epoch"), ax_dice.set_xlabel("epoch")
    ax_loss.set_title("loss"), ax_dice.set_title("mean Dice over bones")
    ax_loss.legend(), ax_dice.legend()
    fig.tight_layout()
    tmp = Path(png_path).with_name(f".{Path(png_path).name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)
    return Path(png_path)


def _without_machine_paths(flat: dict) -> dict:
    """The flat config with its file settings (the split file, the starting bundle) by name: a card
    travels with the model and must not carry the training machine's folders."""
    return {k: (Path(v).name if k in ("split", "init_from") and isinstance(v, str) and v else v)
            for k, v in flat.items()}


def make_card(config: TrainConfig, labels, provenance: dict, state: dict, metrics=None, name="knee-bones",
              description="", population=None):
    """The bundle card (:class:`kneeseg.card.Card`) for a model trained with ``config``; ``population``:
    the training set's (mean, std) when the frame's statistics were fitted on it."""
    from .card import card_for

    training = {"config": _without_machine_paths(config.to_flat()), "epochs_run": state["epoch"] + 1,
                "best_epoch": state["best_epoch"] + 1, "best_val_mean_dice": state["best"],
                "stopped_early": state.get("stopped_early", False),
                "stopped_at_time_limit": state.get("stopped_at_time_limit", False), **provenance}
    if state.get("averaged_epochs"):
        # the weights are the mean of these epochs', not the best epoch's
        training.update(averaged_epochs=state["averaged_epochs"],
                        average_val_mean_dice=state.get("average_val_mean_dice"))
    frame = config.frame
    if population is not None:
        frame = replace(frame, normalisation=Normalisation(mode="population", mean=population[0], std=population[1],
                                                           clip_percentiles=frame.normalisation.clip_percentiles))
    # n4_settings empty: preprocess.intensity.N4Settings' defaults (docs/benchmarks.md)
    return card_for(labels, config.network, frame, name=name, description=description, training=training,
                    metrics=metrics)

"""The contract between the ``kneeseg`` command line and the programs that drive it (the Slicer panel).

One place says what both sides rely on:

- the exit codes (defined in :mod:`kneeseg.errors`, re-exported here);
- the progress lines of ``--progress json`` (written by :class:`kneeseg.progress.Progress`): one JSON
  object per stdout line with ``stage``, ``fraction`` (0..1) and ``message``; ``stage == "done"``
  carries a ``result``; ``stage == "error"`` carries an ``error`` kind (:data:`ERROR_KINDS`), and
  for a missing Python package also the ``package`` that is missing; training adds ``epoch`` and
  ``logs`` to its ``stage == "epoch"`` lines;
- the options of ``segment`` and ``train`` as data (:data:`SEGMENT_OPTIONS`, :data:`TRAIN_OPTIONS`):
  flags, type, default, choices and help, so that a parser can be built from them
  (:func:`add_options`) and a caller can build a command line that parser accepts
  (:func:`command_line`).

Standard library only (plus the package's own light modules): the Slicer panel imports it.
"""

import argparse
import json
from dataclasses import dataclass

from .errors import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_INTERNAL, EXIT_OK, Cancelled, InputError, MissingPackage
from .geometry import PLANES
from .progress import Progress
from .specs import (FUSIONS, NORMALISATION_MODES, OUTPUTS, PLANE_REACHES, SLICE_POSITIONS, TRAIN_LAYERS,
                    setting_defaults)

__all__ = [
    "EXIT_OK", "EXIT_INTERNAL", "EXIT_BAD_INPUT", "EXIT_CANCELLED", "PROGRESS_MODES", "DEVICES", "PLANES",
    "STAGE_DONE", "STAGE_ERROR", "STAGE_EPOCH", "ERROR_INPUT", "ERROR_INTERNAL", "ERROR_CANCELLED",
    "ERROR_MISSING_PACKAGE", "ERROR_KINDS", "EXIT_CODE_OF_ERROR", "Option", "SEGMENT_OPTIONS", "TRAIN_OPTIONS",
    "TRAINABLE_DIMS", "OPTIONS", "option", "add_options", "command_line", "parse_progress_line", "error_kind",
    "error_fields",
]

# --- progress lines -----------------------------------------------------------------------------------

PROGRESS_MODES = Progress.MODES
STAGE_DONE = "done"  # the last line of a successful run; has "result"
STAGE_ERROR = "error"  # the last line of a failed run; has "error" (one of ERROR_KINDS)
STAGE_EPOCH = "epoch"  # training: one line per finished epoch; has "epoch" and "logs"

ERROR_INPUT = "input"  # the user's input is unusable (file, option, model bundle)
ERROR_INTERNAL = "internal"  # a bug or an environment failure; stderr has the traceback
ERROR_CANCELLED = "cancelled"  # stopped by a signal or the caller
ERROR_MISSING_PACKAGE = "missing-package"  # a Python package the command needs is not installed; has "package"
ERROR_KINDS = (ERROR_INPUT, ERROR_INTERNAL, ERROR_CANCELLED, ERROR_MISSING_PACKAGE)
EXIT_CODE_OF_ERROR = {ERROR_INPUT: EXIT_BAD_INPUT, ERROR_INTERNAL: EXIT_INTERNAL, ERROR_CANCELLED: EXIT_CANCELLED,
                      ERROR_MISSING_PACKAGE: EXIT_INTERNAL}


def error_kind(exc: BaseException) -> str:
    """The error kind a command reports for an exception that ended it."""
    if isinstance(exc, MissingPackage):
        return ERROR_MISSING_PACKAGE
    if isinstance(exc, InputError):
        return ERROR_INPUT
    if isinstance(exc, (Cancelled, KeyboardInterrupt)):
        return ERROR_CANCELLED
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return ERROR_MISSING_PACKAGE
    return ERROR_INTERNAL


def error_fields(exc: BaseException) -> dict:
    """Extra fields of the error line: the top-level package a ``ModuleNotFoundError`` names."""
    if isinstance(exc, MissingPackage):
        return {"package": exc.package, "install": exc.install}
    if error_kind(exc) == ERROR_MISSING_PACKAGE:
        return {"package": exc.name.split(".")[0]}
    return {}


def parse_progress_line(line: str):
    """The progress object of one stdout line (fraction clamped to 0..1), or None for any other line."""
    text = line.strip()
    if not (text.startswith("{") and text.endswith("}")):
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("stage"), str):
        return None
    try:
        obj["fraction"] = min(1.0, max(0.0, float(obj.get("fraction", 0.0))))
    except (TypeError, ValueError):
        obj["fraction"] = 0.0
    obj["message"] = str(obj.get("message", ""))
    return obj


# --- options -------------------------------------------------------------------------------------------

STORE_TRUE = "store_true"
BOOLEAN_OPTIONAL = "boolean_optional"  # --x / --no-x, default None/True/False


@dataclass(frozen=True)
class Option:
    """One option (or positional argument) of a command, in the terms of ``argparse.add_argument``."""

    flags: tuple  # ("-o", "--output"); a positional has its name only: ("inputs",)
    dest: str
    help: str = ""
    type: type = None  # int or float; None: a string
    default: object = None
    choices: tuple = None
    action: str = None  # STORE_TRUE, BOOLEAN_OPTIONAL or None (takes a value)
    required: bool = False
    nargs: str = None
    metavar: str = None
    group: str = None  # options sharing a group are mutually exclusive, and one of them is required
    setting: str = None  # train: the flat training setting (kneeseg.specs.setting_defaults) the value goes to

    @property
    def positional(self) -> bool:
        return not self.flags[0].startswith("-")

    def shown_help(self) -> str:
        """The help text with the default appended where the text does not already give it."""
        if (self.help and self.default is not None and self.default is not False and self.action != STORE_TRUE
                and "default" not in self.help):
            return f"{self.help} (default: %(default)s)"
        return self.help

    def add_to(self, parser) -> None:
        """Add this option to an ``argparse`` parser (or mutually exclusive group)."""
        kwargs = {"help": self.shown_help() or None}
        if self.action == STORE_TRUE:
            kwargs["action"] = "store_true"
        elif self.action == BOOLEAN_OPTIONAL:
            kwargs.update(action=argparse.BooleanOptionalAction, default=self.default)
        else:
            for name in ("type", "default", "choices", "nargs", "metavar"):
                if getattr(self, name) is not None:
                    kwargs[name] = getattr(self, name)
        if self.positional:
            parser.add_argument(self.flags[0], **kwargs)
            return
        if self.required:
            kwargs["required"] = True
        if self.dest != self.flags[-1].lstrip("-").replace("-", "_"):
            kwargs["dest"] = self.dest
        parser.add_argument(*self.flags, **kwargs)

    def check(self, value) -> None:
        """Raise ``ValueError`` (naming the option) unless the parser would accept ``value``."""
        if self.action in (STORE_TRUE, BOOLEAN_OPTIONAL):
            if not (isinstance(value, bool) or (value is None and self.action == BOOLEAN_OPTIONAL)):
                raise ValueError(f"{self.flags[-1]} is on or off, not {value!r}")
            return
        values = value if self.nargs in ("+", "*") else [value]
        if self.nargs == "+" and not values:
            raise ValueError(f"{self.flags[-1]} needs at least one value")
        for item in values:
            if self.type is int and not (isinstance(item, int) and not isinstance(item, bool)):
                raise ValueError(f"{self.flags[-1]} takes a whole number, not {item!r}")
            if self.type is float and not (isinstance(item, (int, float)) and not isinstance(item, bool)):
                raise ValueError(f"{self.flags[-1]} takes a number, not {item!r}")
            if self.choices is not None and item not in self.choices:
                raise ValueError(f"{self.flags[-1]} takes one of {', '.join(map(str, self.choices))}, not {item!r}")

    def words(self, value) -> list:
        """The command-line words that give this option ``value`` (none for an unset flag)."""
        self.check(value)
        if self.action == STORE_TRUE:
            return [self.flags[-1]] if value else []
        if self.action == BOOLEAN_OPTIONAL:
            if value is None:
                return []
            return [self.flags[-1] if value else "--no-" + self.flags[-1][2:]]
        values = [str(v) for v in (value if self.nargs in ("+", "*") else [value])]
        return values if self.positional else [self.flags[-1], *values]


def _device():
    return Option(("--device",), "device", "where the network runs: auto (default) a GPU when one is visible, else the "
                  "CPU; cpu; gpu (exit 2 when no GPU is visible)",
                  default="auto", choices=DEVICES)


def _progress():
    return Option(("--progress",), "progress", "bar: a progress bar on stderr (default); json: one JSON object "
                  "per line on stdout; none", default="bar", choices=PROGRESS_MODES)


DEVICES = ("auto", "cpu", "gpu")
BACKENDS = ("auto", "keras", "onnx")
OUTPUT_MODES = OUTPUTS
LOSSES = ("dice", "fbeta", "ce", "dice+ce")
NORMALISATIONS = NORMALISATION_MODES
TRAINABLE_DIMS = (2,)  # --dims 3 parses but the training data sources give 2D slices: train refuses it

SEGMENT_OPTIONS = (
    Option(("inputs",), "inputs", "a volume file (NRRD, NIfTI, MHA/MHD, ...), a DICOM series folder, a folder "
           "of volumes, a glob pattern or a CSV with a 'path' column; several for a cohort", nargs="+",
           metavar="INPUT"),
    Option(("-o", "--output"), "output", "label map file for one input (e.g. out.nrrd); an output folder for several",
           required=True),
    Option(("--model",), "model", "model bundle folder or zip (default: the shipped model)"),
    Option(("--seg-nrrd",), "seg_nrrd", "also write a Slicer segmentation (.seg.nrrd) [single input] (default: none)"),
    Option(("--confidence",), "confidence", "also write the per-voxel confidence (max probability) [single input] (default: none)"),
    Option(("--volumes-json",), "volumes_json", "also write bone volumes in mL as JSON [single input] (default: none)"),
    Option(("--overlay",), "overlay", "also write an overlay PNG sheet [single input] (default: none)"),
    Option(("--meshes",), "meshes", "also write one closed surface per bone (STL and VTP, LPS mm) into this "
           "folder [single input] (default: none)", metavar="DIR"),
    Option(("--dicom-seg",), "dicom_seg", "also write a DICOM Segmentation referencing the source series (.dcm) "
           "[single input, a DICOM series folder] (default: none)"),
    Option(("--n4",), "n4", "N4 bias field correction before segmenting (default: as the bundle says)",
           action=BOOLEAN_OPTIONAL),
    Option(("--n4-shrink",), "n4_shrink", "N4: shrink every axis by this factor for the fit (default: per axis, "
           "to voxels of about 4.4 mm)", type=int),
    Option(("--n4-iterations",), "n4_iterations", "N4: iterations per fitting level, comma-separated "
           "(default 25,25,50,50)"),
    Option(("--planes",), "planes", "comma-separated slice planes to fuse (default: the bundle's)"),
    Option(("--fusion",), "fusion", "how the planes' probabilities are combined: weighted (per class, by the "
           "bundle's fitted plane weights; the plain mean when it has none) or mean", default="weighted",
           choices=FUSIONS),
    Option(("--plane-reach",), "plane_reach", "auto: each plane votes only where its slices lie as near the knee "
           "centre as the bundle's training slices did (the other planes decide beyond; all where none reaches); "
           "applies only with the model's own knee centre and a bundle trained on synthetic slices; off: every "
           "plane everywhere (default: as the bundle's card says, off when it says nothing)", choices=PLANE_REACHES),
    Option(("--centre",), "centre", "knee centre: auto (model, else image centre), model, intensity, image, or "
           "'x,y,z' in LPS mm", default="auto"),
    Option(("--backend",), "backend", "inference engine (auto: ONNX Runtime when the bundle has a graph and it is "
           "installed)", default="auto", choices=BACKENDS),
    Option(("--batch-size",), "batch_size", "slices per network call (more: faster, more memory)", type=int,
           default=8),
    Option(("--no-postprocess",), "no_postprocess", "skip largest-component and hole filling", action=STORE_TRUE),
    Option(("--summary",), "summary", "cohort: summary CSV of bone volumes (default OUTPUT/summary.csv)"),
    Option(("--overwrite",), "overwrite", "cohort: redo cases whose output exists", action=STORE_TRUE),
    Option(("--scheduler",), "scheduler", "cohort: a Dask scheduler address (e.g. tcp://host:8786) to spread cases (default: none, cases run "
           "here one after another)"),
    _device(),
    _progress(),
)

_DEFAULTS = setting_defaults()  # the NetworkSpec, FrameSpec and Recipe defaults: one place each


def _trained(flags, dest, help="", setting=None, **kwargs) -> Option:
    """An option that sets the training setting ``setting``, with that setting's default (planes as text)."""
    default = _DEFAULTS[setting]
    return Option(flags, dest, help, default=",".join(default) if isinstance(default, tuple) else default,
                  setting=setting, **kwargs)


TRAIN_OPTIONS = (
    Option(("--synthetic",), "synthetic", "label-map cache folder (from 'kneeseg synth prepare'): train on images "
           "synthesised from it [this or --data]", group="source"),
    Option(("--data",), "data", "folder (images/ + labels/, same names) or CSV (image,label[,subject]) of your "
           "labelled scans [this or --synthetic]", group="source"),
    Option(("-o", "--output"), "output", "bundle folder to write (new, empty or a bundle to replace)", required=True),
    Option(("--work",), "work", "work folder for checkpoints/history: new, empty or a run's own (default "
           "OUTPUT.work); rerun to resume"),
    _trained(("--dims",), "dims", "2: slices, the network the shipped model uses; 3: volumes (not trainable "
             "from the command line yet)", type=int, setting="dims", choices=(2, 3)),
    _trained(("--output-mode",), "output_mode", "separate: one class per bone; merged: one 'Bone' class",
             setting="output", choices=OUTPUT_MODES),
    _trained(("--filters", "--width"), "filters", "filters of every U-Net level", type=int, setting="filters"),
    _trained(("--depth",), "depth", "U-Net levels (poolings)", type=int, setting="depth"),
    _trained(("--context-slices",), "context_slices", "2.5D: neighbouring slices on each side the network sees "
             "as extra channels (0: the slice alone)", type=int, setting="context_slices"),
    _trained(("--slice-position",), "slice_position", "two more input channels tell the network each slice's "
             "distance from the knee centre (a coronal or axial slice alone cannot tell thigh from calf), entering "
             "beside the image at the input or as a bias of the bottleneck (default: not given)",
             setting="slice_position", choices=SLICE_POSITIONS),
    _trained(("--train-layers",), "train_layers", "train only these layers of a fine-tune (--init-from), the "
             "rest kept as the start bundle has them: 'position', the layers --slice-position bottleneck adds (default: "
             "every layer trains)",
             setting="train_layers", choices=TRAIN_LAYERS),
    _trained(("--input-size",), "input_size", "pixels per side of the network's square input", type=int,
             setting="input_size"),
    _trained(("--planes",), "planes", "comma-separated slice planes to train on (and fuse at inference)",
             setting="planes"),
    _trained(("--window-mm",), "window_mm", "side of the square field of view around the knee centre, in mm",
             type=float, setting="window_mm"),
    _trained(("--epochs",), "epochs", "most epochs to train (early stopping may end sooner)", type=int,
             setting="epochs"),
    _trained(("--steps-per-epoch",), "steps_per_epoch", "training batches per epoch", type=int,
             setting="steps_per_epoch"),
    _trained(("--validation-steps",), "validation_steps", "validation batches after every epoch", type=int,
             setting="validation_steps"),
    _trained(("--batch-size",), "batch_size", "slices per training batch", type=int, setting="batch_size"),
    _trained(("--patience",), "patience", "stop after this many epochs without a better validation mean Dice",
             type=int, setting="patience"),
    _trained(("--learning-rate",), "learning_rate", "Adam's learning rate at the first epoch", type=float,
             setting="learning_rate"),
    _trained(("--final-learning-rate",), "final_learning_rate", "learning rate at the last epoch (exponential "
             "decay)", type=float, setting="final_learning_rate"),
    _trained(("--loss",), "loss", "loss: soft Dice, F-beta, cross-entropy, or Dice + cross-entropy",
             setting="loss", choices=LOSSES),
    _trained(("--beta",), "beta", "beta of the fbeta loss (above 1 weighs recall)", type=float, setting="beta"),
    Option(("--class-weights",), "class_weights", "comma-separated loss weights per bone (femur,tibia,fibula,"
           "patella; merged: one) (default: all 1)"),
    Option(("--no-augment",), "no_augment", "train without random flips, shifts, rotations, contrast... "
           "(default: augment)", action=STORE_TRUE),
    _trained(("--normalisation",), "normalisation", "standard scores per volume, or with the training set's "
           "statistics (stored in the card)", setting="normalisation", choices=NORMALISATIONS),
    _trained(("--seed",), "seed", "seed of the weights, batches and augmentation", type=int, setting="seed"),
    _trained(("--split-seed",), "split_seed", "seed of the train/validation/test split by subject (keep it when "
           "fine-tuning)", type=int, setting="split_seed"),
    Option(("--folds",), "folds", "K-fold cross-validation by subject (--data only): trains K models, each "
           "scored on its held-out fold; writes OUTPUT.folds/ (splits_final.json, a bundle per fold, "
           "cross_validation.json/.txt: Dice per bone per fold, pooled mean and sd) and OUTPUT (see "
           "--fold-bundle) (default: none, one training)", type=int, metavar="K"),
    Option(("--fold-bundle",), "fold_bundle", "with --folds, what OUTPUT holds: best, the fold that scored "
           "highest on its own held-out subjects; ensemble, all K models averaging their class probabilities "
           "(K times the work at inference)", default="best", choices=("best", "ensemble")),
    Option(("--split",), "split", "a JSON file naming the train, validation and test subjects (e.g. "
           "scripts/round2_split.json); replaces the split drawn with --split-seed (default: none, 70/15/15 "
           "drawn by subject)", setting="split"),
    _trained(("--workers",), "workers", "threads (or processes) preparing batches", type=int, setting="workers"),
    Option(("--multiprocessing",), "multiprocessing", "prepare batches in worker processes", action=STORE_TRUE,
           setting="use_multiprocessing"),
    Option(("--time-limit-min",), "time_limit_min", "stop after the epoch that crosses this many minutes "
           "(default: no limit)",
           type=float, setting="time_limit_min"),
    Option(("--stop-after-epochs",), "stop_after_epochs", "stop after this many epochs in all, the learning rate "
           "still decaying over --epochs (a schedule cut short alike on every machine; default: no cut)",
           type=int, setting="stop_after_epochs"),
    Option(("--average-from-epoch",), "average_from_epoch", "the result is the mean of the weights of every "
           "epoch from this one to the last trained, not the best epoch's (weight averaging; default: the best epoch)",
           type=int, metavar="N", setting="average_from_epoch"),
    Option(("--synthesis",), "synthesis", "with --synthetic: generator settings, as a JSON file of "
           "kneeseg.synth.SynthesisConfig fields to change, or a bundle (folder or card.json) whose recorded "
           "settings to reuse (default: the generator's defaults)", metavar="JSON|BUNDLE"),
    Option(("--init-from",), "init_from", "start from this bundle's weights (fine-tune, e.g. the shipped model on "
           "your own data); the network settings must match it (default: none, random weights)",
           setting="init_from"),
    Option(("--name",), "name", "the model's name in its card", default="knee-bones"),
    Option(("--real2d",), "real2d", "also measure Dice on real labelled sagittal slices (.npz) for the card (default: none)"),
    Option(("--onnx",), "onnx", "export an ONNX graph into the bundle when tf2onnx is installed (default on)",
           default=True, action=BOOLEAN_OPTIONAL),
    _device(),
    _progress(),
)

OPTIONS = {"segment": SEGMENT_OPTIONS, "train": TRAIN_OPTIONS}


def option(command: str, dest: str) -> Option:
    """The option ``dest`` of ``command`` (``KeyError`` when the command has no such option)."""
    for spec in OPTIONS[command]:
        if spec.dest == dest:
            return spec
    raise KeyError(f"'kneeseg {command}' has no option {dest!r}")


def add_options(parser, command: str) -> None:
    """Add every option of ``command`` to an ``argparse`` parser, as the ``kneeseg`` CLI declares them."""
    groups = {}
    for spec in OPTIONS[command]:
        target = parser
        if spec.group:
            if spec.group not in groups:
                groups[spec.group] = parser.add_mutually_exclusive_group(required=True)
            target = groups[spec.group]
        spec.add_to(target)


def command_line(command: str, **values) -> list:
    """``[command, words...]`` for ``kneeseg``: each keyword is an option's ``dest`` and its value.

    Values are checked as the parser would (types, choices, required options, exactly one of a
    required group); a problem raises ``ValueError`` naming the option. ``None`` leaves an option out.
    """
    specs = OPTIONS[command]
    known = {spec.dest for spec in specs}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"'kneeseg {command}' has no option {unknown[0]!r}")
    words = [command]
    groups = {}
    for spec in specs:
        value = values.get(spec.dest)
        if spec.group:
            groups.setdefault(spec.group, []).append(spec.flags[-1] if value is not None else None)
        if value is None and spec.action != STORE_TRUE:
            if spec.required or spec.positional:
                raise ValueError(f"'kneeseg {command}' needs {spec.flags[-1]}")
            continue
        words += spec.words(bool(value) if spec.action == STORE_TRUE else value)
    for group, flags in groups.items():
        given = [f for f in flags if f]
        if len(given) != 1:
            names = " or ".join(f"{s.flags[-1]}" for s in specs if s.group == group)
            raise ValueError(f"'kneeseg {command}' needs exactly one of {names}")
    return words

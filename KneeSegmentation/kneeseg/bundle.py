"""Model bundles: a folder (or a zip of one) with the Keras weights, optional ONNX graph and a card.

``card.json`` says everything needed to use the model and judge it: format version, labels (name,
value, colour, SNOMED CT code), slice planes, input size, window, normalisation, preprocessing,
training data provenance with licences, measured metrics, and the SHA-256 of every weight file,
verified at load. Weights are a ``.keras`` file that loads with ``safe_mode=True`` (no Lambda
layers, no pickle). Every file is read confined to the bundle and bounded in size, and a zip is
unpacked within bounds (``kneeseg.bundle_files``).
"""

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from . import bundle_files
from .card import CARD_NAME, FORMAT, FORMAT_VERSION, KERAS_NAME, ONNX_NAME, Card, WeightFile, parse_card  # noqa: F401
from .errors import BundleError, InputError, listed
from .io import write_json
from .writing import is_temp_name, staging_folder, swap_into_place

DEFAULT_BUNDLE_NAME = "knee-bones-default"


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_bundle_path() -> Path:
    """The model shipped in the module's Resources (``KneeSegmentation/Resources/Models``)."""
    return Path(__file__).resolve().parents[1] / "Resources" / "Models" / DEFAULT_BUNDLE_NAME


@dataclass
class Bundle:
    """A verified bundle on disk: its folder and card."""

    folder: Path
    card: Card

    @property
    def labels(self):
        return self.card.labels

    @property
    def keras_path(self) -> Path:
        return self.folder / self.card.weights[KERAS_NAME].file

    @property
    def onnx_path(self):
        entry = self.card.weights.get(ONNX_NAME)
        return None if entry is None else self.folder / entry.file

    def load_keras_model(self):
        """The Keras model, loaded with ``safe_mode`` (a Lambda layer or pickled code is refused), and
        checked against the card: damaged weights or another network are a :class:`BundleError`."""
        import keras

        try:
            model = keras.models.load_model(self.keras_path, compile=False, safe_mode=True)
        except ValueError as exc:
            raise BundleError(f"the weights cannot be loaded safely ({_first_sentence(exc)})", self.keras_path) from None
        except ImportError:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged archive fails in zipfile, h5py, json, ...
            raise BundleError(f"the Keras weights are damaged ({type(exc).__name__}: {_first_sentence(exc)})",
                              self.keras_path) from None
        self.check_network_shape(tuple(model.inputs[0].shape), tuple(model.outputs[0].shape), self.keras_path)
        return model

    def check_network_shape(self, input_shape, output_shape, path):
        """Refuse a network whose slice size, input channels or output channels are not the card's."""
        size, network = self.card.frame.size, self.card.network
        channels = 1 if network.output == "merged" else network.n_classes
        found = (*input_shape[-3:], output_shape[-1])
        wanted = (size, size, network.input_channels, channels)
        fixed = [d for d in found if isinstance(d, int)]  # ONNX: names for free axes
        expected = [v for d, v in zip(found, wanted) if isinstance(d, int)]
        if fixed != expected:
            raise BundleError(f"the network takes {tuple(input_shape[1:])} and gives {output_shape[-1]} channels, but "
                              f"the card says {size}x{size} slices of {network.input_channels} channel(s) and "
                              f"{channels} output channels", path)


def _first_sentence(exc) -> str:
    return str(exc).strip().split("\n")[0][:200]


_EXTRACTED = {}  # (zip path, size, mtime) -> unpacked bundle folder, reused while the zip is unchanged


def _extract_zip(path: Path) -> Path:
    """Unpack a zipped bundle into a temporary folder (removed at interpreter exit).

    Loading the same unchanged zip again reuses its folder, so a long session (Slicer) that segments
    many times does not pile up copies.
    """
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _EXTRACTED and (_EXTRACTED[key] / CARD_NAME).exists():
        return _EXTRACTED[key]
    _EXTRACTED[key] = folder = _unpack_zip(path)
    return folder


def _unpack_zip(path: Path) -> Path:
    import atexit

    target = Path(tempfile.mkdtemp(prefix="kneeseg-bundle-"))
    atexit.register(shutil.rmtree, target, True)
    try:
        bundle_files.unpack_zip(path, target)
        cards = list(target.rglob(CARD_NAME))
        if len(cards) != 1:
            raise BundleError(f"a bundle zip must hold exactly one {CARD_NAME}", path)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return cards[0].parent


def read_card(path) -> dict:
    """Read and check a card without verifying the weights (fast; for display): its JSON, checked."""
    path = Path(path)
    card_path = path / CARD_NAME if path.is_dir() else path
    return parse_card(_read_card_json(card_path, path), card_path).raw


def _read_card_json(card_path: Path, bundle_path) -> dict:
    if not os.path.lexists(card_path):
        raise BundleError(f"no {CARD_NAME} found (is this a model bundle?)", bundle_path)
    text = bundle_files.read_card_text(card_path.parent, card_path.name, bundle_path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BundleError(f"{CARD_NAME} is not valid JSON ({exc})", card_path) from None
    except RecursionError:
        raise BundleError(f"{CARD_NAME} is nested too deeply to be a card", card_path) from None


def load_bundle(path=None) -> Bundle:
    """Open a bundle folder or zip (default: the shipped model) and verify every weight checksum."""
    path = Path(path) if path is not None else default_bundle_path()
    if not path.exists():
        raise BundleError("model bundle not found", path)
    folder = _extract_zip(path) if path.is_file() and zipfile.is_zipfile(path) else path
    if folder.is_file():
        raise BundleError("not a model bundle (expected a folder or a .zip holding card.json)", path)
    card_path = folder / CARD_NAME
    card = parse_card(_read_card_json(card_path, path), card_path)
    for entry in card.weights.values():
        actual = bundle_files.weight_sha256(folder, entry.file, path)
        if actual != entry.sha256:
            raise BundleError(f"checksum mismatch for {entry.file} (card says {entry.sha256[:12]}..., "
                              f"file is {actual[:12]}...): the bundle is corrupt or was modified", path)
    return Bundle(folder, card)


BUNDLE_FILE_NAMES = (CARD_NAME, KERAS_NAME, ONNX_NAME, "history.csv", "history.png")  # all a saved bundle holds


def why_not_replaceable(folder) -> str | None:
    """Why saving a bundle at ``folder`` would destroy something (None: it is missing, an empty folder or a
    bundle holding nothing but bundle files): a bundle replaces only a bundle."""
    folder = Path(folder)
    if folder.is_symlink():
        return "is a link (a bundle saved there would replace the link, not the folder it points to)"
    if not folder.exists():
        return None
    if not folder.is_dir():
        return "exists and is not a model bundle (a file)"
    entries = sorted(folder.iterdir())
    if not entries:
        return None
    others = [e.name for e in entries if not is_temp_name(e.name)  # a killed update_card's leftover is ours
              and (e.name not in BUNDLE_FILE_NAMES or e.is_symlink() or not e.is_file())]
    if others:
        return f"exists and is not a model bundle: it holds {listed(others)}"
    try:
        parse_card(_read_card_json(folder / CARD_NAME, folder), folder / CARD_NAME)
    except BundleError as exc:
        return f"exists and is not a model bundle: {exc.reason}"
    except OSError as exc:
        return f"exists and its {CARD_NAME} cannot be read ({exc.strerror or exc})"
    return None


def refuse_to_replace_non_bundle(folder, replaced_by: str = "the new bundle", choose: str = "name another folder"):
    """Refuse a ``folder`` that exists and is neither a bundle nor an empty folder (:func:`why_not_replaceable`):
    saving a bundle there would delete what it holds. Entry points call it before their work, :func:`save_bundle`
    again."""
    problem = why_not_replaceable(folder)
    if problem:
        raise InputError(f"{problem}; {replaced_by} would replace it; {choose}", folder)


def save_bundle(folder, model, card: Card, onnx_path=None, extra_files=()) -> Path:
    """Write ``model`` and ``card`` (checksums filled in) as a bundle folder, atomically.

    The bundle is assembled in a temporary sibling folder and renamed into place, so an interrupted
    save never leaves a half-written bundle. An existing bundle or empty folder at ``folder`` is replaced;
    anything else there is refused (:func:`refuse_to_replace_non_bundle`), before anything is written.
    """
    folder = Path(folder)
    refuse_to_replace_non_bundle(folder)
    staging = staging_folder(folder)  # a bundle is meant to be shared: not mkdtemp's 0700
    try:
        _without_optimizer(model).save(staging / KERAS_NAME)
        weights = {KERAS_NAME: WeightFile(KERAS_NAME, sha256_of(staging / KERAS_NAME))}
        if onnx_path is not None:
            shutil.copyfile(onnx_path, staging / ONNX_NAME)
            weights[ONNX_NAME] = WeightFile(ONNX_NAME, sha256_of(staging / ONNX_NAME))
        for extra in extra_files:
            shutil.copyfile(extra, staging / Path(extra).name)
        card_json = dataclasses.replace(card, weights=weights).to_json()
        parse_card(card_json, staging / CARD_NAME)  # what is written must read back
        (staging / CARD_NAME).write_text(json.dumps(card_json, indent=2) + "\n")
        swap_into_place(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _without_optimizer(model):
    """An uncompiled copy with the same weights: bundles ship weights, not optimizer state (3x smaller)."""
    if getattr(model, "optimizer", None) is None:
        return model
    clone = type(model).from_config(model.get_config())  # clone_model would compile the copy too
    clone.set_weights(model.get_weights())
    return clone


def update_card(folder, **entries) -> dict:
    """Merge ``entries`` into a bundle's card (e.g. measured metrics after evaluation), atomically."""
    folder = Path(folder)
    card = read_card(folder)
    card.update(entries)
    parse_card(card, folder / CARD_NAME)
    write_json(folder / CARD_NAME, card)
    return card


def zip_bundle(folder, zip_path) -> Path:
    """Pack a bundle folder into a zip (one folder inside, named after the bundle)."""
    folder, zip_path = Path(folder), Path(zip_path)
    tmp = zip_path.with_name(f".{zip_path.name}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(folder.iterdir()):
            if f.is_file():
                z.write(f, f"{folder.name}/{f.name}")
    tmp.replace(zip_path)
    return zip_path

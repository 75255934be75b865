"""What a model is made of: the network, the frame its slices are cut in, and the recipe it is trained
with. One place for each default.

:class:`NetworkSpec` builds the U-Net; :class:`FrameSpec` says how a volume becomes the network's
slices (planes, window, pixel count, slice spacing, normalisation). Training data, synthesis,
training and inference all take them from a bundle's card (``kneeseg.card``), so none of these
settings can drift between them. Each spec checks itself when it is made: a wrong type or an
out-of-range value raises :class:`SpecError` naming the field. :class:`Recipe` (how the network is
trained) sits here too, so that the ``kneeseg train`` flags (:mod:`kneeseg.contract`) take their
defaults from these classes without importing the training code.
"""

import math
from dataclasses import dataclass, field, fields

from .geometry import PLANES


class SpecError(ValueError):
    """A field with a wrong type or value; ``field`` names it."""

    def __init__(self, field_name: str, message: str):
        self.field = field_name
        super().__init__(f"{field_name}: {message}")


def check_int(name, value, lo, hi) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(name, f"must be a whole number, not {value!r}")
    if not lo <= value <= hi:
        raise SpecError(name, f"must be between {lo} and {hi}, not {value}")
    return value


def check_number(name, value, lo, hi, lo_inclusive=True, hi_inclusive=True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(name, f"must be a number, not {value!r}")
    value = float(value)
    above = value >= lo if lo_inclusive else value > lo
    below = value <= hi if hi_inclusive else value < hi
    if not math.isfinite(value) or not (above and below):
        lo_bracket, hi_bracket = "[" if lo_inclusive else "(", "]" if hi_inclusive else ")"
        raise SpecError(name, f"must lie in {lo_bracket}{lo:g}, {hi:g}{hi_bracket}, not {value:g}")
    return value


def check_choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise SpecError(name, f"must be one of {', '.join(choices)}, not {value!r}")
    return value


def check_bool(name, value) -> bool:
    if not isinstance(value, bool):
        raise SpecError(name, f"must be true or false, not {value!r}")
    return value


def check_planes(name, value) -> tuple:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise SpecError(name, f"must be a non-empty list of planes ({', '.join(PLANES)}), not {value!r}")
    for plane in value:
        check_choice(name, plane, PLANES)
    if len(set(value)) != len(value):
        raise SpecError(name, f"names a plane twice: {list(value)}")
    return tuple(value)


NORMALISATION_MODES = ("volume", "population")
CLIP_PERCENTILES = (0.5, 99.5)  # a few hot (or dead) voxels must not squash the contrast


@dataclass(frozen=True)
class Normalisation:
    """Standard scores after clipping at the volume's own percentiles.

    ``volume``: each volume's own mean and standard deviation; ``population``: ``mean`` and ``std``
    of the training set (stored in the card).
    """

    mode: str = "volume"
    clip_percentiles: tuple = CLIP_PERCENTILES
    mean: float = None
    std: float = None

    def __post_init__(self):
        check_choice("mode", self.mode, NORMALISATION_MODES)
        clip = self.clip_percentiles
        if isinstance(clip, str) or not isinstance(clip, (list, tuple)) or len(clip) != 2:
            raise SpecError("clip_percentiles", f"must be two percentiles [low, high], not {clip!r}")
        lo = check_number("clip_percentiles", clip[0], 0.0, 100.0)
        hi = check_number("clip_percentiles", clip[1], 0.0, 100.0)
        if lo >= hi:
            raise SpecError("clip_percentiles", f"the low percentile must be below the high one, not {list(clip)}")
        object.__setattr__(self, "clip_percentiles", (lo, hi))
        if self.mode == "population":
            object.__setattr__(self, "mean", check_number("mean", self.mean, -1e30, 1e30))
            object.__setattr__(self, "std", check_number("std", self.std, 0.0, 1e30, lo_inclusive=False))
        elif self.mean is not None or self.std is not None:
            raise SpecError("mode", "per-volume normalisation takes no mean or std")

    @property
    def statistics(self):
        """(mean, std) for population normalisation, (None, None) for per-volume."""
        return (self.mean, self.std) if self.mode == "population" else (None, None)

    def to_json(self) -> dict:
        out = {"mode": self.mode}
        if self.mode == "population":
            out.update(mean=self.mean, std=self.std)
        out["clip_percentiles"] = list(self.clip_percentiles)
        return out

    @classmethod
    def from_json(cls, data: dict) -> "Normalisation":
        check_keys(data, cls, name="normalisation")
        return cls(**data)


@dataclass(frozen=True)
class FrameSpec:
    """How a volume becomes network slices: per plane, a ``window_mm`` square of ``size`` x ``size``
    pixels around the knee centre, slices at the volume's own spacing but never finer than
    ``min_slice_mm``, standardised by ``normalisation``."""

    planes: tuple = PLANES
    window_mm: float = 160.0
    size: int = 224
    min_slice_mm: float = 1.5
    normalisation: Normalisation = field(default_factory=Normalisation)

    def __post_init__(self):
        object.__setattr__(self, "planes", check_planes("planes", self.planes))
        object.__setattr__(self, "window_mm", check_number("window_mm", self.window_mm, 1.0, 2000.0))
        check_int("size", self.size, 16, 1024)
        object.__setattr__(self, "min_slice_mm", check_number("min_slice_mm", self.min_slice_mm, 0.01, 200.0))
        if not isinstance(self.normalisation, Normalisation):
            raise SpecError("normalisation", f"must be a Normalisation, not {self.normalisation!r}")

    @property
    def pixel_mm(self) -> float:
        return self.window_mm / self.size


OUTPUTS = ("separate", "merged")
POSITION_CHANNELS = 2  # the slice's distance from the knee centre, and whether that is known
SLICE_POSITIONS = ("input", "bottleneck")  # where a network takes them (NetworkSpec.slice_position)
TRAIN_LAYERS = ("position",)  # Recipe.train_layers: the layers a fine-tune may train alone
FUSIONS = ("weighted", "mean")  # tri-planar fusion: the bundle's fitted per-class plane weights, or the plain mean
PLANE_REACHES = ("auto", "off")  # segment: does each plane vote only as far out as its training slices lay


@dataclass(frozen=True)
class NetworkSpec:
    """The U-Net: ``dims`` 2 (slices) or 3, ``filters`` everywhere, ``depth`` poolings, one Dropout at
    the bottleneck, ``output`` "separate" (softmax over ``n_classes`` = background + bones) or
    "merged" (one sigmoid bone channel). ``n_slices``: the 3D network's slab depth (None: any).
    ``context_slices``: a 2D network's context across slices (2.5D): it sees this many neighbouring
    slices on each side of the one it labels, as extra input channels (0: the slice alone).
    ``slice_position``: two more input channels tell a 2D network where its slice lies along the
    plane's normal: the signed distance from the knee centre (``preprocess.frame.position_channels``)
    and whether it is known (a single slice, or the first pass that looks for the centre, has none). A
    coronal or axial slice alone cannot tell a thigh from a calf or the tibial plateau from the femoral
    condyles; its position can. Where they enter: "input", beside the image into the first
    convolution; "bottleneck", through a small dense embedding added to the bottleneck's features (the
    slice-wide decision); None: not given."""

    dims: int = 2
    n_classes: int = 5
    filters: int = 32
    depth: int = 4
    dropout: float = 0.5
    output: str = "separate"
    n_slices: int = None
    context_slices: int = 0
    slice_position: str = None

    def __post_init__(self):
        if isinstance(self.dims, bool) or self.dims not in (2, 3):
            raise SpecError("dims", f"must be 2 or 3, not {self.dims!r}")
        check_int("filters", self.filters, 1, 512)
        check_int("depth", self.depth, 1, 8)
        object.__setattr__(self, "dropout", check_number("dropout", self.dropout, 0.0, 1.0, hi_inclusive=False))
        check_choice("output", self.output, OUTPUTS)
        check_int("n_classes", self.n_classes, 1, 64)
        if self.output == "merged" and self.n_classes != 1:
            raise SpecError("n_classes", f"a merged output has 1 channel, not {self.n_classes}")
        if self.output == "separate" and self.n_classes < 2:
            raise SpecError("n_classes", "a separate output needs background and at least one bone")
        if self.n_slices is not None:
            check_int("n_slices", self.n_slices, 1, 4096)
        check_int("context_slices", self.context_slices, 0, 8)
        if self.context_slices and self.dims != 2:
            raise SpecError("context_slices", "neighbouring slices as channels are for a 2D network (dims 2)")
        if self.slice_position is not None:
            check_choice("slice_position", self.slice_position, SLICE_POSITIONS)
        if self.slice_position and self.dims != 2:
            raise SpecError("slice_position", "the slice's position as channels is for a 2D network (dims 2)")

    @property
    def kind(self) -> str:
        """What the network sees, in words (the model summary, a card's description)."""
        kind = (f"2.5D U-Net: each slice with {self.context_slices} neighbour(s) on each side" if self.context_slices
                else f"{self.dims}D U-Net")
        return kind + (f", told each slice's distance from the knee centre (at the {self.slice_position})"
                       if self.slice_position else "")

    @property
    def input_channels_of_slices(self) -> int:
        """Image channels of one input: the slice and its ``context_slices`` neighbours on each side."""
        return 2 * self.context_slices + 1

    @property
    def first_kernel_channels(self) -> int:
        """Input channels of the first convolution: the slices, and the position where it enters there."""
        return self.input_channels if self.slice_position == "input" else self.input_channels_of_slices

    @property
    def input_channels(self) -> int:
        """Channels of one input slice: the slice and its ``context_slices`` neighbours on each side,
        then the two position channels when ``slice_position``."""
        return self.input_channels_of_slices + (POSITION_CHANNELS if self.slice_position else 0)

    def check_input_size(self, size: int):
        """The input must halve ``depth`` times without remainder."""
        if size % (2 ** self.depth):
            raise SpecError("input_size", f"{size} pixels do not halve {self.depth} times (depth); use a multiple "
                            f"of {2 ** self.depth}")


def check_keys(data, cls, extra=(), name=None):
    """Refuse a mapping with names ``cls`` does not know (a typo must not fall back to a default)."""
    if not isinstance(data, dict):
        raise SpecError(name or cls.__name__, f"must be a JSON object, not {type(data).__name__}")
    known = {f.name for f in fields(cls)} | set(extra)
    unknown = sorted(set(data) - known)
    if unknown:
        raise SpecError(unknown[0], f"is not a known field (known: {', '.join(sorted(known))})")


@dataclass(frozen=True)
class Recipe:
    """How the network is trained (the part of a training configuration that is neither the network
    nor the frame). Stored flat in the card's ``training.config`` with the other two parts."""

    epochs: int = 50
    steps_per_epoch: int = 100
    validation_steps: int = 20
    batch_size: int = 8
    patience: int = 9
    learning_rate: float = 1e-3
    final_learning_rate: float = 1e-4
    loss: str = "dice"  # "dice" (soft F1), "fbeta", "ce", "dice+ce"
    beta: float = 1.0
    class_weights: tuple = None  # one per foreground class
    augment: bool = True
    seed: int = 0  # weights, batches, augmentation
    split_seed: int = 0  # the train/validation/test split: kept apart from ``seed`` so a fine-tune keeps it
    split: str = None  # a JSON file of train/validation/test subjects (datasets.read_split): overrides split_seed
    workers: int = 1
    use_multiprocessing: bool = False  # prepare batches in ``workers`` processes (many-core machines)
    time_limit_min: float = None  # stop after the epoch that crosses this wall-clock budget
    # stop after this many epochs in all, the learning rate still decaying over ``epochs``: a schedule
    # cut short the same way on every machine (a time limit cuts it where the machine's speed says)
    stop_after_epochs: int = None
    # the result is the mean of the weights at the end of every epoch from this one (1-based) to the last
    # trained, not the best epoch's: an average over the plateau does not hang on which epoch a noisy
    # validation score picks (stochastic weight averaging; the network has no batch statistics to refit)
    average_from_epoch: int = None
    init_from: str = None  # a bundle whose weights start the training (fine-tuning); same architecture
    # "position": only the layers a bottleneck position adds train, the rest stays the start bundle's
    train_layers: str = None
    normalisation: str = "volume"  # the frame's statistics: each scan's own, or "population" (fitted on the training set)
    synthesis: dict = None  # synthetic training: overrides of synth.SynthesisConfig (None: the defaults)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.train_layers is not None:
            check_choice("train_layers", self.train_layers, TRAIN_LAYERS)
            if not self.init_from:
                raise SpecError("train_layers", "training only some layers needs a bundle to start from (init_from)")
        if self.stop_after_epochs is not None:
            check_int("stop_after_epochs", self.stop_after_epochs, 1, 100_000)
        if self.average_from_epoch is not None:
            check_int("average_from_epoch", self.average_from_epoch, 1, 100_000)
            if self.average_from_epoch > self.last_epoch:
                raise SpecError("average_from_epoch", f"{self.average_from_epoch} is after the last epoch the run "
                                f"trains ({self.last_epoch}): the weight average would be empty")

    @property
    def last_epoch(self) -> int:
        """How many epochs the run trains in all (``epochs``, or fewer by ``stop_after_epochs``)."""
        return min(self.epochs, self.stop_after_epochs or self.epochs)

    def learning_rate_at(self, epoch: int) -> float:
        """Exponential decay from ``learning_rate`` (first epoch) to ``final_learning_rate`` (last)."""
        if self.epochs <= 1 or min(self.learning_rate, self.final_learning_rate) <= 0:
            t = 0.0 if self.epochs <= 1 else min(epoch, self.epochs - 1) / (self.epochs - 1)
            return float(self.learning_rate + t * (self.final_learning_rate - self.learning_rate))
        ratio = self.final_learning_rate / self.learning_rate
        return float(self.learning_rate * ratio ** (min(epoch, self.epochs - 1) / (self.epochs - 1)))


# flat name = NetworkSpec field
NETWORK_SETTINGS = ("dims", "output", "filters", "depth", "dropout", "context_slices", "slice_position")
FRAME_SETTINGS = {"input_size": "size", "planes": "planes", "window_mm": "window_mm", "min_slice_mm": "min_slice_mm"}


def setting_defaults() -> dict:
    """The default of every flat training setting (a card's ``training.config``, the ``kneeseg train``
    flags): the NetworkSpec, FrameSpec and Recipe defaults under their flat names."""
    network, frame = NetworkSpec(), FrameSpec()
    defaults = {name: getattr(network, name) for name in NETWORK_SETTINGS}
    defaults.update({flat: getattr(frame, name) for flat, name in FRAME_SETTINGS.items()})
    defaults.update({f.name: getattr(Recipe(), f.name) for f in fields(Recipe)})
    return defaults

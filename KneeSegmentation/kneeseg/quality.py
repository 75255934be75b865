"""A quality score per case, from what segmentation already computes: which results to check first.

Measures per bone, each made a component in [0, 1] (1 = no sign of trouble):

* **planes agree** (two or more planes): the mean Dice between the planes' own argmax labels, pair
  by pair, before fusion (``postprocess.fusion.fuse_frames`` counts them on the way);
* **sure voxels** (one plane): the share of the bone's voxels where the probability of the winning
  class is at least :data:`SURE_PROBABILITY` (a network that hesitates between two bones, or between
  bone and background, is below it over large areas, not just along the surface). With several
  planes it is recorded but not scored: each plane's output is nearly 0 or 1, so the fused
  probability is about the share of planes that vote for the label, and the sure voxels only
  repeat, more strictly (all planes at once), what the planes' agreement says;
* **one piece**: the share of the bone's voxels in its largest connected piece before the clean-up
  (``postprocess.cleanup`` counts the pieces);
* **volume in range**: the bone volume against the range of the 78 cached label maps (held-out maps included)
  (``bone_volumes.json`` in this package, made by ``kneeseg.synth.bone_volume_ranges`` from the
  label-map cache, so that segmenting needs no cache); a bone every training map has (femur, tibia,
  patella) that is missing scores 0. Whole scans only: a single slice has no bone volume.

The case's score is the mean over its bones of each bone's weakest component (like a case's mean
Dice: a missing or a false bone weighs as much as a good one); the case is flagged when the score is
below the threshold chosen for the model, which its card records (``quality.flag_below``; for the shipped
model by :data:`THRESHOLD_RULE` on the evaluation data, docs/evaluation.md, "Quality score"). A card that
sets none (a model trained by its user) gets :data:`FLAG_BELOW`, the shipped model's, and the result says so
(``threshold_from``). The reasons name every component below :data:`REASON_BELOW`, in plain words.
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

VOLUME_RANGES_FILE = Path(__file__).with_name("bone_volumes.json")
FLAG_BELOW = 0.45  # for a card that sets no threshold of its own: the shipped model's (its card sets the same)
THRESHOLD_RULE = (  # a model's threshold: make eval prints its pick, evaluate_default.py --adopt-threshold sets it
    "the highest threshold (in steps of 0.05) at which, on the real development slices and on the held-out "
    "synthetic volumes alike, at least half of the flagged cases lie in the worst quartile of mean Dice")
THRESHOLD_STEPS = tuple(round(0.05 * i, 2) for i in range(1, 20))  # the rule's candidates, 0.05 to 0.95
REASON_BELOW = 0.5
SURE_PROBABILITY = 0.9
VOLUME_HALVING = 2.0  # a volume this many times outside the training range scores 0

COMPONENT_WORDS = {
    "planes_agree": "the planes' predictions disagree",
    "sure_voxels": "the network is unsure over much of the bone",
    "one_piece": "the prediction came in several pieces",
    "volume_in_range": "the volume is outside the range of the label maps the model was made from",
}


@dataclass
class Quality:
    """A case's quality: ``score`` in [0, 1] (higher is better), ``flag`` (check this case), the
    ``reasons`` in words, and per bone its ``components`` and raw ``measures``."""

    score: float
    flag: bool
    reasons: list = field(default_factory=list)
    components: dict = field(default_factory=dict)
    measures: dict = field(default_factory=dict)
    threshold: float = FLAG_BELOW  # flagged below this score
    threshold_from: str = "default"  # "card": chosen for this model; "default": FLAG_BELOW, the shipped model's

    def as_dict(self) -> dict:
        return {"score": self.score, "flag": self.flag, "reasons": list(self.reasons), "threshold": self.threshold,
                "threshold_from": self.threshold_from, "components": self.components, "measures": self.measures}


def flag_threshold(card) -> tuple:
    """(the threshold, where it comes from) for a model's results: its card's ``quality.flag_below``
    ("card"), else :data:`FLAG_BELOW` ("default")."""
    chosen = getattr(card, "quality_flag_below", None)
    return (FLAG_BELOW, "default") if chosen is None else (float(chosen), "card")


# --- measures (numpy in, numbers out) ------------------------------------------------------------


def plane_dice(confusions, value):
    """Mean Dice of label ``value`` between the planes' own labels, over the pairs of planes.

    ``confusions``: one (classes x classes) count matrix per pair of planes. Pairs where neither
    plane has the label are left out; None when no pair has it (or there is a single plane)."""
    scores = []
    for counts in confusions:
        both = counts[value, value]
        total = counts[value, :].sum() + counts[:, value].sum()
        if total:
            scores.append(2.0 * both / total)
    return float(np.mean(scores)) if scores else None


def sure_fraction(mask, confidence, sure=SURE_PROBABILITY):
    """Share of ``mask``'s voxels where ``confidence`` (the winning fused probability) is at least
    ``sure`` (None if the mask is empty). Both arrays share one shape."""
    mask = np.asarray(mask, bool)
    n = np.count_nonzero(mask)
    return float(np.count_nonzero(np.asarray(confidence)[mask] >= sure)) / n if n else None


def largest_piece_fraction(piece_sizes):
    """Share of the voxels in the largest piece (None when there are none)."""
    total = sum(piece_sizes)
    return max(piece_sizes) / total if total else None


# --- components ----------------------------------------------------------------------------------


def volume_component(volume_ml, volume_range, expected=True):
    """1 inside ``volume_range`` (dict with "min", "max" in mL), falling to 0 at ``VOLUME_HALVING``
    times outside it. A bone every training map has (``expected``) scores 0 when missing; any other
    (the fibula, whose tip may be all a scan shows) is judged against the maximum only."""
    if volume_ml <= 0:
        return 0.0 if expected else 1.0
    low, high = volume_range["min"], volume_range["max"]
    if not expected:  # a bone some maps lack (the fibula) may show only its tip: no lower bound
        low = 0.0
    outside = low / volume_ml if volume_ml < low else volume_ml / high if volume_ml > high else 1.0
    return float(np.clip(1.0 - math.log(outside) / math.log(VOLUME_HALVING), 0.0, 1.0))


def bone_components(measures, volume_range=None) -> dict:
    """A bone's components from its measures (``plane_dice``, ``sure_fraction``, ``one_piece_fraction``
    or ``pieces``, ``volume_ml``); a component whose measure is absent is left out."""
    out = {}
    if measures.get("plane_dice") is not None:
        out["planes_agree"] = measures["plane_dice"]
    elif measures.get("sure_fraction") is not None:  # one plane: the network's own certainty
        out["sure_voxels"] = measures["sure_fraction"]
    fraction = measures.get("one_piece_fraction")
    if fraction is None:
        fraction = largest_piece_fraction(measures.get("pieces") or [])
    if fraction is not None:
        out["one_piece"] = fraction
    expected = volume_range is not None and volume_range.get("in_every_map", False)
    if volume_range is not None and (expected or measures.get("volume_ml", 0.0) > 0):  # an absent fibula: no sign
        out["volume_in_range"] = volume_component(measures.get("volume_ml", 0.0), volume_range, expected)
    return {k: round(float(v), 4) for k, v in out.items()}


def score_case(measures: dict, volume_ranges: dict = None, threshold: tuple = (FLAG_BELOW, "default")) -> Quality:
    """The :class:`Quality` of a case from its per-bone measures (bone name -> measures).

    ``volume_ranges`` (bone name -> range, see :func:`load_volume_ranges`): None for a single slice.
    ``threshold``: (flag below, where it comes from), as :func:`flag_threshold` gives it.
    A bone with no component (absent, and not expected) does not count."""
    flag_below, threshold_from = threshold
    components = {bone: bone_components(m, (volume_ranges or {}).get(bone)) for bone, m in measures.items()}
    components = {bone: c for bone, c in components.items() if c}
    if not components:
        return Quality(0.0, True, ["no bone was found"], {}, measures, flag_below, threshold_from)
    score = float(np.mean([min(c.values()) for c in components.values()]))
    reasons = [f"{bone}: {COMPONENT_WORDS[name]} ({value:.2f})" for bone, c in components.items()
               for name, value in c.items() if value < REASON_BELOW]
    score = round(score, 4)
    flag = score < flag_below
    if flag and not reasons:
        weakest = min(((v, bone, name) for bone, c in components.items() for name, v in c.items()))
        reasons = [f"{weakest[1]}: {COMPONENT_WORDS[weakest[2]]} ({weakest[0]:.2f})"]
    return Quality(score, flag, reasons, components, measures, flag_below, threshold_from)


# --- the measures of one segmentation ------------------------------------------------------------


def segmentation_measures(labels, fusion_quality, pieces, volumes_ml, bones) -> dict:
    """Per bone name its measures, from the final label array, what ``fuse_frames(quality=...)`` and
    ``clean_labelmap(pieces=...)`` collected, and the volumes. ``bones``: the bundle's labels."""
    box, box_conf = fusion_quality.get("box"), fusion_quality.get("box_confidence")
    region = None
    if box is not None:
        region = labels[tuple(slice(lo, hi + 1) for lo, hi in zip(*box))]
    confusions = fusion_quality.get("plane_confusions") or []
    out = {}
    for bone in bones:
        mask = region == bone.value if region is not None else None
        present = mask is not None and mask.any()  # a bone the fusion dropped is not judged by its planes
        measures = {"volume_ml": float(volumes_ml.get(bone.name, 0.0)),
                    "pieces": list(pieces.get(bone.value, [])),
                    "plane_dice": plane_dice(confusions, bone.value) if present and confusions else None,
                    "sure_fraction": sure_fraction(mask, box_conf) if present and box_conf is not None else None}
        measures = {k: (round(float(v), 4) if isinstance(v, float) else v) for k, v in measures.items()}
        measures["n_pieces"] = len(measures["pieces"])
        fraction = largest_piece_fraction(measures["pieces"])  # all pieces, before the list is cut short
        measures["one_piece_fraction"] = round(fraction, 4) if fraction is not None else None
        measures["pieces"] = sorted(measures["pieces"], reverse=True)[:5]  # the largest: short in JSON
        out[bone.name] = measures
    return out


# --- the training range of bone volumes ----------------------------------------------------------


def load_volume_ranges(path=VOLUME_RANGES_FILE) -> dict:
    """Bone name -> {"min", "max", "n_maps", "in_every_map"} (mL), from the package's JSON."""
    return json.loads(Path(path).read_text())["bones"]

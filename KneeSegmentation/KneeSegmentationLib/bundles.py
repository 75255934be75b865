"""Model bundles as the panel sees them: where the default one is, reading a card, showing it.

A model bundle is a folder (``card.json`` + model files) written by ``kneeseg train``; the card
names the labels (name, value, colour, SNOMED code) and records provenance and measured metrics.
Reading and verifying a bundle is the core's job (``kneeseg.bundle.read_card``); this module only
finds bundles and turns a card into text for the panel.
"""

import html
from pathlib import Path

from .errors import INPUT, INTERNAL, KneeSegmentationError

MODULE_DIR = Path(__file__).resolve().parent.parent
MODELS_DIR = MODULE_DIR / "Resources" / "Models"
DEFAULT_BUNDLE_NAME = "knee-bones-default"


def defaultBundlePath() -> Path:
    """Where the shipped default bundle lives (it may be absent in a development checkout)."""
    return MODELS_DIR / DEFAULT_BUNDLE_NAME


def isBundle(path) -> bool:
    return path is not None and (Path(path) / "card.json").is_file()


def shippedBundles() -> list:
    """Bundles under ``Resources/Models`` (the default first)."""
    if not MODELS_DIR.is_dir():
        return []
    found = sorted((p for p in MODELS_DIR.iterdir() if isBundle(p)), key=lambda p: (p.name != DEFAULT_BUNDLE_NAME, p.name))
    return found


def coreReadCard(path) -> dict:
    """The core's bundle check: reads the card and verifies every weight file's SHA-256.

    Imported lazily so this module loads without the core; raises ``kneeseg.errors.BundleError``
    (a ``ValueError``) on a damaged or modified bundle.
    """
    try:
        from kneeseg.bundle import load_bundle
    except ImportError as exc:
        raise KneeSegmentationError(
            f"The kneeseg core cannot read model bundles ({exc}). Reinstall the KneeSegmentation extension.",
            INTERNAL,
        ) from exc
    return load_bundle(path).card.to_json()


def readCard(path, reader=None) -> dict:
    """Read and check a bundle's card; any problem becomes a ``KneeSegmentationError`` of kind input."""
    if path is None or str(path).strip() == "":
        raise KneeSegmentationError("No model bundle selected.", INPUT)
    path = Path(path)
    if not path.exists():
        raise KneeSegmentationError(f"Model bundle not found: {path}", INPUT)
    reader = reader or coreReadCard
    try:
        card = reader(path)
    except KneeSegmentationError:
        raise
    except (ValueError, OSError, KeyError) as exc:  # kneeseg.errors.InputError/BundleError are ValueErrors
        raise KneeSegmentationError(f"Model bundle {path.name} cannot be used: {exc}", INPUT) from exc
    labels = card.get("labels") if isinstance(card, dict) else None
    if not labels:
        raise KneeSegmentationError(f"Model bundle {path.name} cannot be used: its card lists no labels", INPUT)
    for label in labels:
        if not isinstance(label, dict) or "name" not in label or "value" not in label:
            raise KneeSegmentationError(f"Model bundle {path.name} cannot be used: a label lacks a name or value", INPUT)
        if int(label["value"]) <= 0:
            raise KneeSegmentationError(f"Model bundle {path.name} cannot be used: label {label['name']} has value {label['value']}", INPUT)
    return card


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def describeCard(card: dict, path=None) -> str:
    """Rich text (a small HTML subset Qt labels render) describing a card: labels, provenance, metrics."""
    esc = html.escape
    title = card.get("name") or (Path(path).name if path else "Model bundle")
    lines = [f"<b>{esc(str(title))}</b>"]
    for key in ("version", "description", "intended_use"):
        if card.get(key):
            lines.append(f"{esc(key.replace('_', ' ').capitalize())}: {esc(_fmt(card[key]))}")
    swatches = []
    for label in card.get("labels", []):
        color = label.get("color") or [128, 128, 128]
        hexcolor = "#%02x%02x%02x" % tuple(int(c) for c in color[:3])
        code = (label.get("snomed") or {}).get("code", "")
        swatches.append(f"<span style='color:{hexcolor}'>&#9632;</span> {esc(str(label['name']))} ({label['value']}"
                        + (f", SCT {esc(str(code))}" if code else "") + ")")
    if swatches:
        lines.append("Labels: " + "; ".join(swatches))
    for key in ("model", "architecture", "input", "preprocessing", "training", "provenance", "data", "licence", "license"):
        if card.get(key):
            lines.append(f"{esc(key.capitalize())}: {esc(_fmt(card[key]))}")
    metrics = card.get("metrics")
    if metrics:
        lines.append(f"Measured metrics: {esc(_fmt(metrics))}")
    quality = card.get("quality")
    flag_below = quality.get("flag_below") if isinstance(quality, dict) else None
    if isinstance(flag_below, (int, float)) and not isinstance(flag_below, bool):
        lines.append(f"Quality flag: a result scoring below {flag_below:.2f} is flagged (chosen for this model)")
    else:
        lines.append("Quality flag: this card sets no threshold; results are flagged by the shipped model's")
    if card.get("created"):
        lines.append(f"Created: {esc(_fmt(card['created']))}")
    if path:
        lines.append(f"<small>{esc(str(path))}</small>")
    return "<br>".join(lines)

"""Short tables for people: an evaluation's per-bone scores and a model card's essentials.

The full JSON stays available (``--json``, ``--report``); these say what a reader needs at a glance:
mean (worst) per bone, the worst case by name, and misses only when there were any.
"""

import math

from .postprocess.fusion import class_plane_weights

# (result key, column title, number format) in the order the evaluation table shows them
EVALUATION_COLUMNS = (("dice", "Dice", "{:.3f}"), ("assd_mm", "ASSD mm", "{:.2f}"),
                      ("hd95_mm", "HD95 mm", "{:.2f}"), ("signed_surface_mm", "signed mm", "{:+.2f}"))


def evaluation_table(results: dict) -> str:
    """One block per evaluated data set (``results``: name -> report as the workflows return it)."""
    return "\n\n".join(_dataset_block(name, report) for name, report in results.items())


def _dataset_block(name, report):
    n = report.get("n_cases", report.get("n_slices"))
    unit = "slices" if "n_slices" in report else "cases"
    lines = [f"{name}: {report.get('dataset', '')} ({n} {unit})"]
    columns = [c for c in EVALUATION_COLUMNS if _has_bones(report.get(c[0]))]
    bones = [b for b in (report.get("dice") or {}) if b != "mean_over_bones"]
    if not bones:
        return lines[0] + "\n  no bone of the model is in these labels"
    rows = [["bone"] + [f"{title} mean (worst)" for _, title, _ in columns]]
    for bone in bones:
        rows.append([bone] + [_cell(report[key].get(bone), fmt) for key, _, fmt in columns])
    mean_row = ["mean"] + [_format(report[key].get("mean_over_bones"), fmt) for key, _, fmt in columns]
    rows.append(mean_row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines += ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    missed = not_found(report.get("cases") or [], bones)
    if missed:
        lines.append(f"  not found at all in some {unit} (Dice 0, no distance): "
                     + ", ".join(f"{bone} in {k}/{n_with}" for bone, (k, n_with) in missed.items()))
    worst = worst_case(report.get("cases") or [], bones)
    if worst:
        lines.append(f"  worst case: {worst[0]} (mean Dice {worst[1]:.3f})")
    if "pixel_mm_assumed" in report and any(key != "dice" for key, _, _ in columns):
        lines.append(f"  distances in mm at an assumed {report['pixel_mm_assumed']} mm pixel")
    quality = report.get("quality") or {}
    if quality.get("spearman") is not None:
        lines.append(f"  quality score vs mean Dice: Spearman {quality['spearman']:.2f}; flagged (score < "
                     f"{quality['threshold']}) {quality['n_flagged']}/{quality['n']}, "
                     f"{quality['n_flagged_in_worst_quartile']} of them in the worst quartile")
    return "\n".join(lines)


def _has_bones(summary):
    return isinstance(summary, dict) and any(isinstance(v, dict) and "mean" in v for v in summary.values())


def _cell(entry, fmt):
    if not isinstance(entry, dict) or "mean" not in entry:
        return "-"
    return f"{fmt.format(entry['mean'])} ({fmt.format(entry['worst'])})"


def _format(value, fmt):
    return "-" if value is None else fmt.format(value)


def not_found(cases, bones):
    """bone -> (cases where it is in the truth but not in the prediction, cases where it is in the truth)."""
    out = {}
    for bone in bones:
        present = [c[bone] for c in cases if isinstance(c.get(bone), dict) and c[bone].get("truth_voxels", 0) > 0]
        missing = sum(1 for scores in present if scores.get("predicted_voxels", 1) == 0 or scores.get("dice") == 0)
        if missing:
            out[bone] = (missing, len(present))
    return out


def worst_case(cases, bones):
    """(case name, mean Dice over the bones in its truth) of the case with the lowest such mean."""
    scored = []
    for n, case in enumerate(cases):
        dice = [case[b]["dice"] for b in bones
                if isinstance(case.get(b), dict) and case[b].get("truth_voxels", 0) > 0]
        dice = [d for d in dice if d is not None and not math.isnan(d)]
        if dice:
            name = case.get("case", case.get("slice", n))
            scored.append((str(name), sum(dice) / len(dice)))
    return min(scored, key=lambda item: item[1]) if scored else None


def card_table(card, location) -> str:
    """The essentials of a model card: what it segments, how, from what data, for what, how well."""
    lines = [f"{card.name or '?'}  ({location})"]
    if card.description:
        lines.append(f"  {card.description}")
    lines.append("  bones: " + ", ".join(f"{label.name}={label.value}" for label in card.labels))
    lines.append(f"  planes: {', '.join(card.frame.planes)}  ({card.network.kind}, "
                 f"input {card.frame.size}x{card.frame.size}, window {card.frame.window_mm} mm)")
    if len(card.frame.planes) > 1:
        lines.append("  fusion: " + _fusion_line(card))
    data = card.training.get("data", {}) if isinstance(card.training, dict) else {}
    if isinstance(data, dict) and data.get("kind"):
        lines.append(f"  training data: {data['kind']}")
    for dataset, licence in card.data_licences:
        lines.append(f"    trained on {dataset}: {licence}")
    lines.append(f"  intended use: {card.intended_use}")
    lines += _measured_dice(card.metrics)
    lines.append("  quality flag: " + _quality_line(card))
    lines.append(f"  weights: {', '.join(card.weights)} (sha256 verified)")
    return "\n".join(lines)


def _quality_line(card) -> str:
    from .quality import flag_threshold

    flag_below, source = flag_threshold(card)
    if source == "card":
        return f"a result scoring below {flag_below:g} is flagged (chosen for this model)"
    return (f"a result scoring below {flag_below:g} is flagged (kneeseg's default, chosen for the shipped model: "
            "this card sets none)")


def _fusion_line(card) -> str:
    if card.plane_reach != "auto":
        return _fusion_weights_line(card)
    from .infer import plane_reach_mm

    mm = plane_reach_mm(card)
    if mm is None:
        return _fusion_weights_line(card) + ("; the card asks each plane to vote only within its training reach, "
                                             "but records no training slices: every plane votes everywhere")
    return _fusion_weights_line(card) + (f"; each plane votes only within its training reach ({mm:g} mm) of the "
                                         "model's knee centre")


def _fusion_weights_line(card) -> str:
    if not card.fusion_weights:
        return "plain mean of the planes' probabilities"
    if class_plane_weights(card.fusion_weights, card.frame.planes) is None:  # as inference decides
        missing = [plane for plane in card.frame.planes if plane not in card.fusion_weights]
        return f"plain mean of the planes' probabilities (the card's plane weights lack {', '.join(missing)})"
    fitted = card.raw.get("fusion", {}).get("fitted", {})
    fitted = fitted if isinstance(fitted, dict) else {}
    names = ["background"] + [label.name for label in card.labels]
    weights = "; ".join(f"{name} " + "/".join(f"{card.fusion_weights[plane][c]:.2f}" for plane in card.frame.planes)
                        for c, name in enumerate(names))
    when = f", fitted {fitted['date']} on {fitted.get('scans', '?')} validation scans" if "date" in fitted else ""
    return f"weighted per class ({'/'.join(card.frame.planes)}: {weights}{when})"


def _measured_dice(metrics):
    rows = []
    for name, result in (metrics or {}).items():
        dice = result.get("dice") if isinstance(result, dict) else None
        if not _has_bones(dice):
            continue
        bones = ", ".join(f"{bone} {entry['mean']:.3f}" for bone, entry in dice.items()
                          if isinstance(entry, dict) and "mean" in entry)
        n = result.get("n_cases", result.get("n_slices"))
        rows.append(f"    {name} ({n}): {bones}" if n is not None else f"    {name}: {bones}")
    if not rows:
        return ["  measured Dice: none recorded"]
    when = f" ({metrics['date']})" if isinstance(metrics.get("date"), str) else ""
    return [f"  measured Dice, mean per bone{when}:"] + rows

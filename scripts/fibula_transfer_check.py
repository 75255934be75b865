#!/usr/bin/env python3
"""How good is a fibula carried over from another knee (kneeseg.synth.fibula)? Two checks.

1. Where the truth is known: every knee of the cache that has its own fibula and is *not* a training
   subject of the split gets its fibula removed and its scan cut 60 mm below the top of the tibia (as an
   OAI scan is), then a fibula carried over from the training donors; Dice, centroid error and volume
   ratio against its own fibula.
2. By eye: a sheet of the maps that got a fibula (a cache from ``add_fibulas``): for each, the coronal
   and the axial slice through the carried fibula's centre, bones coloured.

    python scripts/fibula_transfer_check.py --cache .cache/labelmaps --carried build/round3.labelmaps-fibula \
        --json docs/fibula_transfer.json --sheet docs/fibula_transfer.png
"""

import argparse
import dataclasses
import datetime
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "KneeSegmentation"))

from kneeseg.datasets import read_split  # noqa: E402
from kneeseg.synth import fibula  # noqa: E402
from kneeseg.synth.cache import load_label_map, load_manifest  # noqa: E402
from kneeseg.synth.tissues import OUTSIDE_FIELD_OF_VIEW, TISSUE_IDS  # noqa: E402

SPLIT = REPO / "scripts" / "round2_split.json"
CUT_BELOW_TIBIA_TOP_MM = 60.0
BONE_COLOURS = {TISSUE_IDS["femur"]: (230, 200, 60), TISSUE_IDS["tibia"]: (80, 160, 230),
                TISSUE_IDS["fibula"]: (230, 60, 60), TISSUE_IDS["patella"]: (120, 220, 120)}


def donors_of(cache, train):
    donors = {}
    for entry in load_manifest(cache)["files"]:
        if entry["has_fibula"] and entry["subject"] in train:
            donor = load_label_map(Path(cache) / entry["file"])
            donors[entry["file"]], donors[entry["file"] + " mirrored"] = donor, fibula.mirrored(donor)
    return donors


def known_truth_check(cache, train) -> list:
    donors = donors_of(cache, train)
    rows = []
    for entry in load_manifest(cache)["files"]:
        if not entry["has_fibula"] or entry["subject"] in train:
            continue
        target = load_label_map(Path(cache) / entry["file"])
        truth = target.labels == fibula.FIBULA
        labels = np.where(truth, fibula.UNLABELLED, target.labels).astype(np.uint8)
        top = np.nonzero((labels == fibula.TIBIA).any(axis=(1, 2)))[0][-1]
        low = max(0, top - int(round(CUT_BELOW_TIBIA_TOP_MM / target.spacing)))
        labels[:low] = OUTSIDE_FIELD_OF_VIEW
        truth[:low] = False
        transfer = fibula.transfer_fibula(dataclasses.replace(target, labels=labels), donors)
        carried = transfer.fibula
        centre = lambda mask: np.argwhere(mask).mean(axis=0) * target.spacing  # noqa: E731
        rows.append({"map": entry["file"], "subject": entry["subject"], "donor": transfer.donor,
                     "tibia_dice": round(transfer.tibia_dice, 3),
                     "fibula_dice": round(float(2 * (carried & truth).sum() / (carried.sum() + truth.sum())), 3),
                     "centroid_error_mm": round(float(np.linalg.norm(centre(carried) - centre(truth))), 1),
                     "volume_ratio": round(float(carried.sum() / truth.sum()), 2)})
        print(rows[-1], flush=True)
    return rows


def _coloured(slice_2d):
    rgb = np.full(slice_2d.shape + (3,), 40, np.uint8)
    rgb[slice_2d == OUTSIDE_FIELD_OF_VIEW] = 0
    rgb[(slice_2d != OUTSIDE_FIELD_OF_VIEW) & (slice_2d > 4)] = 90  # cartilage and soft tissue
    for tissue, colour in BONE_COLOURS.items():
        rgb[slice_2d == tissue] = colour
    return rgb


def sheet(carried_cache, path, n=12):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [e for e in load_manifest(carried_cache)["files"]
               if "fibula_from" in e and "refused" not in e["fibula_from"]]
    picked = [entries[i] for i in np.linspace(0, len(entries) - 1, min(n, len(entries))).astype(int)]
    fig, axes = plt.subplots(len(picked), 2, figsize=(6, 3 * len(picked)))
    for row, entry in zip(np.atleast_2d(axes), picked):
        labels = load_label_map(Path(carried_cache) / entry["file"]).labels
        z, y, x = np.argwhere(labels == fibula.FIBULA).mean(axis=0).astype(int)
        # the cache is (z, y, x) LPS: z superior, y posterior, x left; show superior up
        row[0].imshow(_coloured(labels[::-1, y, :]))
        row[0].set_title(f"{entry['file'][:-4]}: coronal", fontsize=7)
        row[1].imshow(_coloured(labels[z]))
        row[1].set_title(f"axial; donor {entry['fibula_from']['donor'][:-4].replace('.npz', '')}", fontsize=7)
        for ax in row:
            ax.axis("off")
    fig.suptitle("Fibula (red) carried over onto maps without one; tibia blue, femur yellow", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    print(f"wrote {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default=".cache/labelmaps", help="label-map cache with the held-out knees")
    parser.add_argument("--carried", help="a cache written by add_fibulas, for the sheet")
    parser.add_argument("--json", help="run the known-truth check and write it here")
    parser.add_argument("--sheet", help="write the sheet (PNG) here")
    args = parser.parse_args()
    if args.json:
        rows = known_truth_check(args.cache, set(read_split(SPLIT)["train"]))
        Path(args.json).write_text(json.dumps({"date": datetime.date.today().isoformat(), "split": SPLIT.name,
                                               "cut_below_tibia_top_mm": CUT_BELOW_TIBIA_TOP_MM, "knees": rows},
                                              indent=1) + "\n")
    if args.carried and args.sheet:
        sheet(args.carried, args.sheet)


if __name__ == "__main__":
    main()

"""Each plane alone, and all fused, for several bundles on the same held-out synthetic volumes.

Traces an error of the fused result to the plane it comes from, on volumes where the truth is exact
(the pinned evaluation generator, rim outside the label by default); `make eval` does the same for the
real volumes (its "coronal only" and "axial only" rows). Every bundle is segmented end to end (its own
first pass for the knee centre). Bundles without fitted fusion weights fuse with the plain mean.

    python scripts/compare_planes.py round27=build/round27 round28=build/round28 --cache .cache/labelmaps \\
        --out build/planes.json

About 140 s per bundle and plane for 14 volumes on two cores, three times that for the fused row.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "KneeSegmentation"))

BONES = ("Femur", "Tibia", "Fibula", "Patella")
FUSED = "fused"


def plane_rows(bundle, cache, n_volumes, planes, rim_outside=True):
    """{plane or "fused": {measure: {bone: mean}}} on the bundle's held-out synthetic volumes."""
    from kneeseg.infer import SegmentOptions
    from kneeseg.synth import EVALUATION_CONFIG, EVALUATION_CONFIG_RIM_OUTSIDE
    from kneeseg.workflows.evaluate import evaluate_synthetic

    config = EVALUATION_CONFIG_RIM_OUTSIDE if rim_outside else EVALUATION_CONFIG
    rows = {}
    for plane in planes:
        options = SegmentOptions(planes=None if plane == FUSED else (plane,))
        report = evaluate_synthetic(bundle, cache, n_volumes, options=options, config=config)
        rows[plane] = {measure: {bone: round(report[measure][bone]["mean"], 3) for bone in BONES
                                 if bone in report[measure]}
                       for measure in ("dice", "volume_ratio", "signed_surface_mm")}
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", nargs="+", help="NAME=BUNDLE_FOLDER")
    parser.add_argument("--cache", required=True, help="label-map cache (kneeseg synth prepare)")
    parser.add_argument("--volumes", type=int, default=14, help="held-out synthetic volumes (default 14)")
    parser.add_argument("--planes", nargs="+", default=["sagittal", "coronal", "axial", FUSED],
                        help=f"planes to run alone, and '{FUSED}' for the bundle's default")
    parser.add_argument("--rim-inside", action="store_true", help="the pinned generator's rim inside the label")
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args(argv)

    from kneeseg.bundle import load_bundle

    named = []
    for item in args.bundles:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            parser.error(f"{item!r}: give each bundle as NAME=FOLDER")
        named.append((name, folder))
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "volumes": args.volumes,
           "rim_outside": not args.rim_inside, "bundles": {}}
    for name, folder in named:
        bundle = load_bundle(folder)
        started = time.time()
        result = {"folder": folder, "synthetic": plane_rows(bundle, args.cache, args.volumes, args.planes,
                                                            not args.rim_inside)}
        result["seconds"] = round(time.time() - started)
        out["bundles"][name] = result
        print(name, json.dumps(result), flush=True)
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")  # each bundle as it is done
    return 0


if __name__ == "__main__":
    sys.exit(main())

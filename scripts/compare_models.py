#!/usr/bin/env python3
"""Two models on the same synthetic fibula volumes, paired: is one better, or did the sample decide?

    python scripts/compare_models.py BEFORE AFTER [--subjects S ...] [--seeds 4] [--first-seed 0]
        [--out build/compare.json]
        [--before-plane-reach off|auto] [--after-plane-reach off|auto]   (default: as each card says)

``make eval`` scores the fibula on the held-out maps that have one, with two seeds per plane: on
2026-12-04 that was two knees of one person, and the first two seeds were the hardest draws (round 6's
fibula on that person 0.22 with them, 0.68 with seeds 2-3). This script scores both bundles on the
same volumes (rim outside the label, each bundle's own fusion and the CLI defaults, planes sagittal,
coronal and axial, seeds 0..N-1 as ``make eval`` numbers them; ``--first-seed K`` draws seeds K..K+N-1 instead,
e.g. volumes no earlier comparison has seen) and prints per bone and per subject
each model's mean Dice, the paired difference and how many volumes rose or fell by more than 0.01. A
person counts once in the "subjects weighed equally" line however many knees and seeds they have.

``--subjects``: default the held-out subjects of AFTER that have a fibula map. A subject that either
bundle trained on is refused (a model scored on its own training knees measures memory) unless
``--include-trained``.
"""

import argparse
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "KneeSegmentation"))


def trained_on(card, subjects) -> list:
    """The subjects a bundle's training saw: neither held out for testing nor used for validation.
    Empty when the card records no split (then nothing can be checked)."""
    held_out = set(card.test_subjects) | set(card.validation_subjects)
    return sorted(s for s in subjects if held_out and s not in held_out)


def default_subjects(bundle, cache) -> list:
    from kneeseg import synth

    held_out = set(bundle.card.test_subjects)
    return sorted({e["subject"] for e in synth.load_manifest(cache)["files"]
                   if e.get("has_fibula") and e["subject"] in held_out})


def print_comparison(comparison, before, after):
    print(f"mean Dice, BEFORE = {before}, AFTER = {after}; better/worse: volumes that rose/fell by > 0.01")
    print(f"{'subjects':22s} {'bone':8s} {'n':>3s} {'before':>7s} {'after':>7s} {'diff':>7s} "
          f"{'better':>6s} {'worse':>6s}")
    rows = [("all", comparison["all"]), *comparison["subjects"].items()]
    for group, bones in rows:
        for bone, row in bones.items():
            print(f"{group:22s} {bone:8s} {row['n']:3d} {row['before']:7.3f} {row['after']:7.3f} "
                  f"{row['difference']:+7.3f} {row['after_better']:6d} {row['after_worse']:6d}")
    for bone, row in comparison["subjects_weighed_equally"].items():
        low, high = row["interval_95"]
        print(f"subjects weighed equally, {bone}: before {row['before']:.3f}, after {row['after']:.3f}, "
              f"difference {row['difference']:+.3f} (95 % interval {low:+.3f} to {high:+.3f}: the volumes resampled "
              "within each person, the people fixed)")


def common_bones(before, after) -> list:
    """The bones both bundles label, by name; a name with another label value in each is refused (each
    model would be scored against another truth)."""
    from kneeseg.errors import InputError

    values = {label.name: label.value for label in before.labels}
    clashing = [label.name for label in after.labels if values.get(label.name, label.value) != label.value]
    if clashing:
        raise InputError(f"the two bundles give {', '.join(clashing)} different label values: nothing to pair")
    return [label.name for label in after.labels if label.name in values]


def json_safe(value):
    """NaN (a surface distance of a bone the model missed) as null: strict JSON has no NaN."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def compare(args):
    from kneeseg.bundle import load_bundle
    from kneeseg.errors import InputError
    from kneeseg.infer import SegmentOptions, plane_reach_setting
    from kneeseg.synth import EVALUATION_CONFIG_RIM_OUTSIDE
    from kneeseg.workflows.evaluate import compare_cases, evaluate_synthetic_fibula, named_fibula_entries

    if args.seeds < 1:
        raise InputError(f"--seeds must be at least 1, not {args.seeds}")
    if args.first_seed < 0:
        raise InputError(f"--first-seed must be 0 or more, not {args.first_seed}")
    if not Path(args.cache).is_dir():
        raise InputError("the label-map cache does not exist (make synth-cache)", args.cache)
    if args.out:  # before half an hour of scoring, not after it; never into the bundles or the cache
        from kneeseg.outputs import Output, check_outputs

        check_outputs([args.before, args.after], [Output("--out", Path(args.out))], input_folders=[args.cache])
    before, after = load_bundle(args.before), load_bundle(args.after)
    subjects = sorted(set(args.subjects)) if args.subjects else default_subjects(after, args.cache)
    if not subjects:
        raise InputError(f"no held-out subject of {args.after} has a fibula map in {args.cache}: name --subjects")
    named_fibula_entries(args.cache, subjects)  # a mistyped subject is named as such, not as "trained on"
    bones = common_bones(before, after)
    if not bones:
        raise InputError(f"{args.before} and {args.after} label no bone in common: nothing to compare")
    for path, bundle in ((args.before, before), (args.after, after)):
        if not (bundle.card.test_subjects or bundle.card.validation_subjects):
            print(f"warning: {path} records no split: whether it trained on {', '.join(subjects)} is unknown")
        seen = trained_on(bundle.card, subjects)
        if seen and not args.include_trained:
            raise InputError(f"{path} was trained on {', '.join(seen)}: leave them out or pass --include-trained")
    reports, reaches = {}, {}
    seeds = tuple(range(args.first_seed, args.first_seed + args.seeds))
    for name, bundle in (("before", before), ("after", after)):
        print(f"scoring {name} ({len(subjects)} subject(s), seeds {seeds[0]}..{seeds[-1]} per plane) ...", flush=True)
        options = SegmentOptions(plane_reach=getattr(args, f"{name}_plane_reach"))
        reaches[name] = plane_reach_setting(bundle.card, options)
        reports[name] = evaluate_synthetic_fibula(bundle, args.cache, config=EVALUATION_CONFIG_RIM_OUTSIDE,
                                                  options=options,
                                                  seeds=seeds, subjects=subjects,
                                                  progress=lambda stage, fraction, message: print(f"  {message}",
                                                                                                  flush=True))
    comparison = compare_cases(reports["before"]["cases"], reports["after"]["cases"], bones)
    print_comparison(comparison, args.before, args.after)
    if args.out:
        from kneeseg.io import write_json

        cases = {name: [{"case": c["case"], **{b: {"dice": c[b]["dice"], "truth_voxels": c[b]["truth_voxels"],
                                                    "signed_surface_mm": c[b].get("signed_surface_mm")}
                                                for b in bones}} for c in report["cases"]]
                 for name, report in reports.items()}
        write_json(args.out, json_safe({"before": str(args.before), "after": str(args.after), "subjects": subjects,
                                        "plane_reach": reaches,
                                        "seeds": list(seeds), "comparison": comparison, "cases": cases}), indent=1)
        print(f"wrote {args.out}")


def main(argv=None):
    from kneeseg.specs import PLANE_REACHES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", help="bundle folder of the model to compare against (e.g. the shipped one)")
    parser.add_argument("after", help="bundle folder of the candidate")
    parser.add_argument("--cache", default=str(REPO / ".cache" / "labelmaps"))
    parser.add_argument("--subjects", nargs="+", help="subjects whose fibula maps to score (default: AFTER's "
                        "held-out ones)")
    parser.add_argument("--seeds", type=int, default=4, help="volumes per plane and map (default %(default)s)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="number of the first seed: seeds FIRST..FIRST+SEEDS-1 (default %(default)s)")
    parser.add_argument("--include-trained", action="store_true",
                        help="allow subjects a bundle trained on")
    parser.add_argument("--out", help="write the per-volume scores and the comparison as JSON")
    for side in ("before", "after"):  # one bundle against itself: the fusion with and without the reach
        parser.add_argument(f"--{side}-plane-reach", choices=PLANE_REACHES,
                            help=f"segment's --plane-reach for {side.upper()} (default: as its card says)")
    args = parser.parse_args(argv)
    from kneeseg.errors import InputError

    try:
        compare(args)
    except InputError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")


if __name__ == "__main__":
    main()

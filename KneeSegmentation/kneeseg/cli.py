"""The ``kneeseg`` command line: segment, train, evaluate, info, synth, overlay.

Exit codes: 0 success, 2 bad input (a one-line message naming the problem and the file),
1 internal error, 130 cancelled. ``--progress json`` prints one JSON object per line for programs
(the Slicer panel); ``--progress bar`` (default) a bar on stderr for people.
"""

import argparse
import json
import os
import signal
import sys
import traceback
from pathlib import Path

from . import INTENDED_USE, __version__, contract
from .errors import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_INTERNAL, EXIT_OK, Cancelled, InputError
from .io import write_json
from .progress import Progress


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # usage errors are bad input too, with the same exit code
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


class _Version(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"kneeseg {__version__}\n{INTENDED_USE}")
        parser.exit()


def _add_device_and_progress(p):
    for dest in ("device", "progress"):
        contract.option("segment", dest).add_to(p)


def build_parser():
    parser = _ArgumentParser(prog="kneeseg", description="Knee bone segmentation in MRI (femur, tibia, fibula, "
                             "patella) with a U-Net.")
    parser.add_argument("--version", action=_Version, help="show the version and the intended use, and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_ArgumentParser)

    p = sub.add_parser("segment", help="segment one volume or a cohort",
                       description="Segment knee bones. INPUT: a volume file (NRRD, NIfTI, MHA/MHD, ...), a "
                       "DICOM series folder, a folder of volumes, a glob pattern, or a CSV with a 'path' column.")
    contract.add_options(p, "segment")
    p = sub.add_parser("train", help="train a model bundle",
                       description="Train a U-Net and write a model bundle. Data: --synthetic CACHE (images "
                       "synthesised from real label maps, see 'kneeseg synth prepare') or --data DIR|CSV (your "
                       "image/label pairs: DIR/images + DIR/labels with matching names, or a CSV image,label[,subject]).")
    contract.add_options(p, "train")

    p = sub.add_parser("evaluate", help="measure a model on labelled data",
                       description="Score a bundle: --pairs (labelled volumes: Dice, IoU, precision, recall, "
                       "accuracy, ASSD, HD95), --real2d (real labelled sagittal slices), --synthetic (held-out "
                       "synthetic label maps).")
    p.add_argument("--model", help="bundle (default: the shipped model)")
    p.add_argument("--pairs", help="folder (images/ + labels/) or CSV of labelled volumes to score (default: none)")
    p.add_argument("--real2d", help="real labelled sagittal slices (.npz) to score (default: none)")
    p.add_argument("--synthetic", help="label-map cache folder; scores the bundle's held-out test subjects "
                   "(default: none)")
    p.add_argument("--synthetic-cases", type=int, default=6,
                   help="synthetic volumes to score with --synthetic (default: %(default)s)")
    p.add_argument("--report", help="write the full results (every case) as JSON here (default: none)")
    p.add_argument("--json", action="store_true",
                   help="print the summary as JSON instead of the table (default: a table per data set)")
    p.add_argument("--update-card", action="store_true", help="store the summary in the bundle card's metrics")
    p.add_argument("--planes", help="fuse these planes instead of the bundle's (volumes: --pairs, --synthetic; "
                   "default: the bundle's)")
    contract.option("segment", "fusion").add_to(p)
    contract.option("segment", "plane_reach").add_to(p)
    _add_device_and_progress(p)

    p = sub.add_parser("fit-fusion", help="fit a bundle's per-class plane weights for tri-planar fusion",
                       description="Fit how much each plane's prediction counts, per class, when the planes are "
                       "fused: on synthetic scans of the subjects the bundle validated on (never its test "
                       "subjects), made with the generator settings its card records. Writes the weights into "
                       "the card (segment --fusion weighted uses them). About 10 minutes on 2 CPU cores.")
    p.add_argument("model", help="bundle folder (its card is updated)")
    p.add_argument("--cache", required=True, help="label-map cache holding the bundle's validation subjects "
                   "(kneeseg synth prepare)")
    p.add_argument("--dry-run", action="store_true", help="fit and print the weights, leave the card as it is")
    _add_device_and_progress(p)

    p = sub.add_parser("info", help="show a model bundle's card")
    p.add_argument("model", nargs="?", help="bundle (default: the shipped model)")
    p.add_argument("--json", action="store_true", help="print the whole card as JSON (default: its essentials)")

    p = sub.add_parser("synth", help="synthetic training data from real label maps")
    synth_sub = p.add_subparsers(dest="synth_command", required=True, parser_class=_ArgumentParser)
    q = synth_sub.add_parser("prepare", help="build the label-map cache used for training",
                             description="Read a folder of label maps (any layout, any depth, any volume format "
                             "SimpleITK reads; Slicer .seg.nrrd by segment name) into the cache that "
                             "'kneeseg train --synthetic' synthesises images from.")
    q.add_argument("source", help="folder of label maps (e.g. ../shared/data/labelmaps, or your own)")
    q.add_argument("cache", help="cache folder to write (its manifest.json is written last)")
    q.add_argument("--labels", metavar="MAPPING",
                   help="which label value is which bone: femur=1,tibia=2,patella=3,fibula=4 (several values: "
                   "femur=1+7; other tissues by name, e.g. meniscus=9), a .json or .csv file of the same, or a "
                   "preset (oai, mskt, spl, staple). Default: the development data's presets where their "
                   "layout is found, else .seg.nrrd segment names")
    q.add_argument("--dataset", default="user",
                   help="name of your data set in the cache and the model card (default: %(default)s)")
    q.add_argument("--licence", default="the user's own label maps (licence not stated)",
                   help="licence of your label maps, recorded in the card (default: '%(default)s')")
    q.add_argument("--subject-pattern", default=r"^(.+)$", metavar="REGEX",
                   help="regular expression whose first group, matched on a file's path below SOURCE "
                   "without suffix, names its subject (files of one person must not be split between "
                   "training and validation; default: %(default)s, every file its own subject)")
    contract.option("segment", "progress").add_to(q)
    q = synth_sub.add_parser("sheet", help="write a PNG sheet of synthetic training images")
    q.add_argument("cache", help="label-map cache folder (from 'kneeseg synth prepare')")
    q.add_argument("output", help="PNG path")
    q.add_argument("-n", type=int, default=16, help="number of examples (default: %(default)s)")
    q.add_argument("--seed", type=int, default=0, help="seed of the random draws (default: %(default)s)")

    q = synth_sub.add_parser("volumes", help="write synthetic labelled scans (stand-ins for your own)",
                             description="Whole synthetic scans with their bone labels from a label-map cache, as "
                             "a training folder (images/, labels/) and OUTPUT/pairs.csv for 'kneeseg train --data' "
                             "(the CSV keeps each cached subject one subject): to try paired training, splits "
                             "and cross-validation before your own labelled scans exist.")
    q.add_argument("cache", help="label-map cache folder (from 'kneeseg synth prepare')")
    q.add_argument("output", help="folder to write images/, labels/ and pairs.csv into")
    q.add_argument("-n", type=int, default=6, help="number of scans; the cache's maps are used in turn "
                   "(default: %(default)s)")
    q.add_argument("--seed", type=int, default=0, help="seed of the first scan; scan i uses seed + i "
                   "(default: %(default)s)")
    contract.option("segment", "progress").add_to(q)

    q = synth_sub.add_parser("add-fibula", help="give the cache's maps without a fibula one from another knee",
                             description="Write a copy of a label-map cache in which every map without a fibula "
                             "gets one carried over from the fibula-bearing map whose tibia fits its tibia best "
                             "(registration of the tibiae; each donor also mirrored for the other side). Only the "
                             "training subjects of --split give or get a fibula; the others are copied unchanged. "
                             "A map whose tibia no donor fits keeps none. The manifest records each donor and fit.")
    q.add_argument("cache", help="label-map cache folder (from 'kneeseg synth prepare')")
    q.add_argument("output", help="new or empty folder for the new cache")
    q.add_argument("--split", help="split file (train/validation/test subjects): only its training subjects "
                   "give or get a fibula (default: every subject of the cache)")
    contract.option("segment", "progress").add_to(q)

    p = sub.add_parser("overlay", help="write an overlay PNG of a volume and a label map")
    p.add_argument("image", help="the scan (any volume file or DICOM series folder)")
    p.add_argument("labelmap", help="a label map on the scan's grid (1 femur, 2 tibia, 3 fibula, 4 patella)")
    p.add_argument("output", help="PNG path to write")
    p.add_argument("--model", help="bundle whose labels name the colours (default: the shipped model)")
    contract.option("segment", "progress").add_to(p)
    return parser


def _configure_device(device):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    elif device == "gpu":
        from .devices import gpu_visible

        if not gpu_visible():
            raise InputError("--device gpu: no GPU was found; --device cpu or --device auto runs on the CPU")


def _parse_centre(text):
    if text in ("auto", "model", "intensity", "image"):
        return text
    try:
        point = [float(v) for v in text.split(",")]
    except ValueError:
        point = []
    if len(point) != 3:
        raise InputError(f"--centre must be auto, model, intensity, image or 'x,y,z', not {text!r}")
    return point


def _planes(text):
    from .geometry import PLANES

    planes = tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in planes if p not in PLANES]
    if bad or not planes:
        raise InputError(f"--planes takes a comma-separated subset of {','.join(PLANES)}, not {text!r}")
    return planes


# --- segment ----------------------------------------------------------------------------------------


def cmd_segment(args, progress):
    from .outputs import output_is_folder
    from .workflows.cohort import expand_inputs, run_cohort
    from .workflows.segment import segment_file

    options = _segment_options(args)
    side = _side_outputs(args)
    if args.batch_size < 1:
        raise InputError("--batch-size must be 1 or more")
    inputs = expand_inputs(args.inputs)
    if not output_is_folder(inputs, args.output):
        result = segment_file(inputs[0], args.output, args.model, options, progress, side)
        progress.done(f"wrote {args.output}", result)
        return EXIT_OK
    if side.any():
        raise InputError(f"{'/'.join(SIDE_OUTPUT_FLAGS)} apply to a single input; a cohort writes its label maps, "
                         "segmentations, summary and report into the output folder")
    summary = run_cohort(inputs, args.output, args.model, options, progress, summary=args.summary,
                         overwrite=args.overwrite, scheduler=args.scheduler, sources=args.inputs)
    if summary["done"] + summary["failed"] == 0:
        message = (f"nothing to do: all {summary['skipped']} cases already have a label map in {args.output} "
                   "(--overwrite redoes them)")
    else:
        message = f"{summary['done']} done, {summary['skipped']} skipped, {summary['failed']} failed"
    progress.done(message, summary)
    return EXIT_OK if summary["failed"] == 0 else EXIT_BAD_INPUT


SIDE_OUTPUT_FLAGS = ("--seg-nrrd", "--confidence", "--volumes-json", "--overlay", "--meshes", "--dicom-seg")


def _side_outputs(args):
    from .workflows.segment import SideOutputs

    paths = {flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_")) for flag in SIDE_OUTPUT_FLAGS}
    return SideOutputs(**{name: Path(path) for name, path in paths.items() if path})


def _segment_options(args):
    from .infer import SegmentOptions

    return SegmentOptions(planes=_planes(args.planes) if args.planes else None, n4=args.n4,
                          n4_settings=_n4_settings(args),
                          centre=_parse_centre(args.centre), batch_size=args.batch_size,
                          postprocess=not args.no_postprocess, confidence=bool(args.confidence),
                          backend=args.backend, fusion=args.fusion, plane_reach=args.plane_reach)


def _n4_settings(args):
    settings = {}
    if args.n4_shrink is not None:
        if args.n4_shrink < 1:
            raise InputError("--n4-shrink must be 1 or more")
        settings["shrink_factor"] = args.n4_shrink
    if args.n4_iterations:
        try:
            settings["iterations"] = tuple(int(i) for i in args.n4_iterations.split(","))
        except ValueError:
            raise InputError(f"--n4-iterations takes comma-separated integers, not {args.n4_iterations!r}") from None
    return settings or None


# --- train ------------------------------------------------------------------------------------------


def cmd_train(args, progress):
    from .train import TrainConfig
    from .workflows.train import train_bundle

    weights = None
    if args.class_weights:
        try:
            weights = tuple(float(w) for w in args.class_weights.split(","))
        except ValueError:
            raise InputError(f"--class-weights takes comma-separated numbers, not {args.class_weights!r}") from None
        expected = 1 if args.output_mode == "merged" else 4
        if len(weights) != expected:
            raise InputError(f"--class-weights needs {expected} numbers (one per bone: femur, tibia, fibula, patella"
                             f"{'' if expected == 4 else '; merged: one'}), got {len(weights)}")
    if args.batch_size < 1 or args.epochs < 1 or args.steps_per_epoch < 1:
        raise InputError("--batch-size, --epochs and --steps-per-epoch must be 1 or more")
    if args.dims == 3:
        raise InputError("training a 3D model from the command line is not available yet: its data sources give "
                         "2D slices (the 3D network can be built with kneeseg.model.build_unet_3d and used for "
                         "inference); train with --dims 2")
    synthesis = _synthesis_settings(args.synthesis) if args.synthesis else None
    if synthesis is not None and not args.synthetic:
        raise InputError("--synthesis sets up the image generator: it goes with --synthetic, not --data")
    settings = {spec.setting: getattr(args, spec.dest) for spec in contract.TRAIN_OPTIONS if spec.setting}
    settings.update(planes=_planes(args.planes), class_weights=weights, augment=not args.no_augment,
                    synthesis=synthesis)
    config = TrainConfig.from_flat(**settings)
    if args.folds is not None:
        return _cross_validate(args, config, progress)
    work = Path(args.work) if args.work else Path(args.output).with_name(Path(args.output).name + ".work")
    result = train_bundle(config, args.output, work, synthetic=args.synthetic, data=args.data, name=args.name,
                          real2d=args.real2d, export_onnx=args.onnx, progress=progress)
    progress.done(f"wrote bundle {args.output}", result)
    return EXIT_OK


def _cross_validate(args, config, progress):
    from .workflows.crossval import card_summary, cross_validate, cross_validation_table

    if not args.data:
        raise InputError("--folds cross-validates labelled scans: it goes with --data, not --synthetic")
    if args.real2d:
        raise InputError("--real2d measures one trained bundle: use it without --folds, or run 'kneeseg evaluate "
                         "--real2d' on the cross-validation's bundle")
    report = cross_validate(config, args.data, args.output, args.folds, work=args.work, name=args.name,
                            export_onnx=args.onnx, progress=progress, bundle=args.fold_bundle)
    if progress.mode != "json":
        print(cross_validation_table(report))
    what = "the ensemble" if report["bundle"]["fold"] is None else f"fold {report['bundle']['fold']}"
    progress.done(f"wrote bundle {args.output} ({what}) and {args.output}.folds/", card_summary(report))
    return EXIT_OK


def _synthesis_settings(source) -> dict:
    """Generator settings from a JSON file of fields, or those a bundle's card recorded."""
    from .bundle import CARD_NAME
    from .synth import synthesis_config

    path = Path(source)
    if path.is_dir():
        path = path / CARD_NAME
    try:
        settings = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read synthesis settings ({exc})", source) from None
    if isinstance(settings, dict) and "format" in settings:  # a bundle card
        settings = settings.get("training", {}).get("data", {}).get("synthesis")
        if settings is None:
            raise InputError("this bundle's card records no synthesis settings", source)
    synthesis_config(settings)  # refuse unknown names and wrong types now, before any work
    return settings


# --- evaluate ---------------------------------------------------------------------------------------


def cmd_evaluate(args, progress):
    from .bundle import load_bundle, update_card
    from .workflows.evaluate import card_summary, evaluate_pairs, evaluate_real2d, evaluate_synthetic

    if not (args.pairs or args.real2d or args.synthetic):
        raise InputError("nothing to evaluate: give --pairs, --real2d and/or --synthetic")
    if args.update_card and not args.model:
        raise InputError("--update-card writes the summary into a bundle's card: name that bundle with --model (the "
                         "shipped model's card is not changed)")
    if args.report:
        from .bundle import default_bundle_path
        from .outputs import Output, check_outputs

        check_outputs([args.model or default_bundle_path(), args.pairs, args.real2d, args.synthetic],
                      [Output("--report", Path(args.report))])
    bundle = load_bundle(args.model)
    results = {}
    if args.real2d:
        results["real2d"] = evaluate_real2d(bundle, args.real2d, progress=progress)
    from .infer import SegmentOptions

    options = SegmentOptions(planes=_planes(args.planes) if args.planes else None, fusion=args.fusion,
                             plane_reach=args.plane_reach)
    if args.pairs:
        results["pairs"] = evaluate_pairs(bundle, args.pairs, progress=progress, options=options)
    if args.synthetic:
        results["synthetic"] = evaluate_synthetic(bundle, args.synthetic, args.synthetic_cases, progress=progress,
                                                  options=options)
    summary = {name: {k: v for k, v in r.items() if k != "cases"} for name, r in results.items()}
    if args.report:
        write_json(args.report, results)
    if args.update_card:
        if args.model and Path(args.model).is_file():
            raise InputError("--update-card needs a bundle folder, not a zip", args.model)
        metrics = dict(bundle.card.metrics)
        suffix = (f" (planes {args.planes})" if args.planes else "") + (
            f" (fusion {args.fusion})" if args.fusion != "weighted" else "") + (
            f" (plane reach {args.plane_reach})" if args.plane_reach not in (None, bundle.card.plane_reach) else "")
        metrics.update({name + suffix: card_summary(value) for name, value in summary.items()})
        update_card(bundle.folder, metrics=metrics)
    if progress.mode != "json":
        from .tables import evaluation_table

        print(json.dumps(summary, indent=2) if args.json else evaluation_table(results))
    progress.done("evaluation finished", summary)
    return EXIT_OK


# --- fit-fusion, info, synth, overlay ---------------------------------------------------------------


def cmd_fit_fusion(args, progress):
    from .workflows.fusion import fit_fusion

    if Path(args.model).is_file():
        raise InputError("fit-fusion updates a bundle folder's card; unpack a zipped bundle first", args.model)
    if not Path(args.model).is_dir():
        raise InputError("no such bundle folder", args.model)
    section = fit_fusion(args.model, args.cache, write=not args.dry_run, progress=progress)
    classes = section["classes"]
    lines = ["plane      " + " ".join(f"{name:>10}" for name in classes)]
    lines += [f"{plane:<10} " + " ".join(f"{w:>10.2f}" for w in weights)
              for plane, weights in section["plane_weights"].items()]
    fitted = section["fitted"]
    lines.append(f"validation mean Dice (before clean-up): plain mean {fitted['mean_dice_plain_mean']:.3f}, "
                 f"weighted {fitted['mean_dice_weighted']:.3f} ({fitted['scans']} scans)")
    if progress.mode != "json":  # JSON progress: stdout carries JSON lines only
        print("\n".join(lines))
    progress.done("fusion weights " + ("fitted (dry run: card unchanged)" if args.dry_run else "written to the card"),
                  section)
    return EXIT_OK


def cmd_info(args, progress):
    from .bundle import default_bundle_path, load_bundle

    bundle = load_bundle(args.model)
    card = bundle.card
    if args.json:
        print(json.dumps(card.to_json(), indent=2))
        return EXIT_OK
    from .tables import card_table

    print(card_table(card, args.model or default_bundle_path()))
    return EXIT_OK


def cmd_synth(args, progress):
    from . import synth

    if args.synth_command == "prepare":
        from .synth.labelmaps import sources_for

        sources = sources_for(args.source, args.labels, args.dataset, args.licence, args.subject_pattern)
        manifest = synth.prepare_cache(args.source, args.cache, sources=sources, progress=progress)
        progress.done(f"wrote cache {args.cache}", {"cache": args.cache, "entries": len(manifest["files"])})
    elif args.synth_command == "add-fibula":
        from .datasets import read_split
        from .synth.fibula import add_fibulas

        subjects = set(read_split(args.split)["train"]) if args.split else None
        manifest = add_fibulas(args.cache, args.output, subjects=subjects, progress=progress)
        carried = [e for e in manifest["files"] if "refused" not in e.get("fibula_from", {"refused": True})]
        progress.done(f"wrote cache {args.output}: a fibula carried onto {len(carried)} map(s)",
                      {"cache": args.output, "carried": len(carried), "entries": len(manifest["files"])})
    elif args.synth_command == "volumes":
        csv_path = synth.write_labelled_volumes(args.cache, args.output, n=args.n, seed=args.seed, progress=progress)
        progress.done(f"wrote {args.n} labelled scans and {csv_path}", {"pairs": str(csv_path), "scans": args.n})
    else:
        from .outputs import Output, check_outputs

        if args.n < 1:
            raise InputError(f"-n must be 1 or more, not {args.n}")
        check_outputs([args.cache], [Output("the sheet", Path(args.output), (".png",))], input_folders=[args.cache])
        synth.write_example_sheet(args.cache, args.output, n=args.n, seed=args.seed)
        progress.done(f"wrote {args.output}", {"sheet": args.output})
    return EXIT_OK


def cmd_overlay(args, progress):
    from . import io
    from .bundle import default_bundle_path, load_bundle
    from .outputs import Output, check_outputs, staging
    from .overlay import overlay_sheet

    check_outputs([args.image, args.labelmap, args.model or default_bundle_path()],
                  [Output("the overlay", Path(args.output), (".png",))])
    progress("read", 0.1, f"reading {args.image} and {args.labelmap}")
    image = io.read_volume(args.image)
    labelmap = io.read_volume(args.labelmap, validate=False)
    if not io.same_geometry(image, labelmap):
        raise InputError("label map geometry differs from the image", args.labelmap)
    labels = load_bundle(args.model).labels
    progress("draw", 0.5, f"drawing {args.output}")
    with staging(args.output) as staged:
        overlay_sheet(image, labelmap, labels, staged.temp(args.output), title=Path(args.image).name)
        staged.commit()
    progress.done(f"wrote {args.output}", {"overlay": args.output})
    return EXIT_OK


COMMANDS = {"segment": cmd_segment, "train": cmd_train, "evaluate": cmd_evaluate, "info": cmd_info,
            "fit-fusion": cmd_fit_fusion, "synth": cmd_synth, "overlay": cmd_overlay}


_MAIN_PID = os.getpid()


def _raise_cancelled(signum, frame):
    if os.getpid() != _MAIN_PID:  # a forked helper process: just end
        os._exit(128 + signum)
    raise Cancelled(f"stopped by signal {signum}")


def main(argv=None):
    args = build_parser().parse_args(argv)
    progress = Progress(getattr(args, "progress", "bar"))
    signal.signal(signal.SIGTERM, _raise_cancelled)
    try:
        _configure_device(getattr(args, "device", "auto"))
        return COMMANDS[args.command](args, progress)
    except InputError as exc:
        progress.error(str(exc), "input")
        print(f"kneeseg: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # e.g. `kneeseg info | head`: the reader has gone, nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (Cancelled, KeyboardInterrupt) as exc:
        progress.error(str(exc) or "cancelled", "cancelled")
        print("kneeseg: cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except Exception as exc:  # noqa: BLE001 - the last line of defence: report, keep the traceback
        progress.error(f"internal error: {type(exc).__name__}: {exc}", contract.error_kind(exc),
                       **contract.error_fields(exc))
        traceback.print_exc(file=sys.stderr)
        print(f"kneeseg: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INTERNAL

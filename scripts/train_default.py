#!/usr/bin/env python3
"""The recipe of the shipped default model: train on synthetic images from real label maps, measure, install.

    python scripts/train_default.py train --cache .cache/labelmaps --preset gpu|cpu --out build/default
    python scripts/train_default.py finalize build/default/stage2 --stage1 build/default/stage1 \
        --cache .cache/labelmaps --real2d ../shared/data/real_2d/sagittal_slices_dev.npz [--install]

``train`` runs two stages with ``kneeseg train``: stage 1 from scratch (Adam 1e-3 -> 1e-4), stage 2 a
fine-tune of stage 1 at a lower learning rate (3e-4 -> 3e-5). On a GPU machine the same stages run
through ``scripts/gpu_train_default.sh`` (Keras on JAX). ``finalize`` exports the ONNX graph, measures
the model (real labelled sagittal slices, held-out synthetic volumes), writes the numbers and the recipe
into the card, and with ``--install`` replaces KneeSegmentation/Resources/Models/knee-bones-default.
"""

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INSTALLED = REPO / "KneeSegmentation" / "Resources" / "Models" / "knee-bones-default"
sys.path.insert(0, str(REPO / "KneeSegmentation"))

COMMON = ["--name", "knee-bones-default", "--depth", "4", "--planes", "sagittal,coronal,axial",
          "--loss", "dice+ce", "--patience", "12", "--no-onnx"]
PRESETS = {
    # ~5.5 + 2.2 minutes on one H100 with 15 synthesis processes (data-bound: ~450 synthetic slices/s).
    "gpu": {"stage1": ["--filters", "32", "--validation-steps", "10", "--batch-size", "32", "--steps-per-epoch", "150",
                       "--epochs", "24", "--seed", "0", "--time-limit-min", "5.5"],
            "stage2": ["--filters", "32", "--validation-steps", "10", "--batch-size", "32", "--steps-per-epoch", "150",
                       "--epochs", "10", "--seed", "1", "--learning-rate", "3e-4", "--final-learning-rate", "3e-5",
                       "--time-limit-min", "2.2"]},
    # A 2-core CPU, under an hour: half the width (16 filters, 49k parameters) trains 2.6x more
    # slices per second than the 32-filter network (27 against 11 slices/s for the network alone).
    "cpu": {"stage1": ["--filters", "16", "--validation-steps", "5", "--batch-size", "16", "--steps-per-epoch", "50",
                       "--epochs", "32", "--seed", "0", "--time-limit-min", "42"],
            "stage2": ["--filters", "16", "--validation-steps", "5", "--batch-size", "16", "--steps-per-epoch", "50",
                       "--epochs", "8", "--seed", "1", "--learning-rate", "3e-4", "--final-learning-rate", "3e-5",
                       "--time-limit-min", "12"]},
}


def kneeseg(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO / "KneeSegmentation")}
    subprocess.run([sys.executable, "-m", "kneeseg", *map(str, args)], check=True, env=env)


def train(args):
    out = Path(args.out)
    preset = PRESETS[args.preset]
    workers = ["--workers", str(max(1, (os.cpu_count() or 2) - 1)), "--multiprocessing"]
    kneeseg("train", "--synthetic", args.cache, "-o", out / "stage1", "--work", out / "stage1.work",
            *COMMON, *preset["stage1"], *workers)
    kneeseg("train", "--synthetic", args.cache, "-o", out / "stage2", "--work", out / "stage2.work",
            "--init-from", out / "stage1", *COMMON, *preset["stage2"], *workers)
    print(f"trained: {out / 'stage2'}; next: scripts/train_default.py finalize {out / 'stage2'} --stage1 "
          f"{out / 'stage1'} --real2d ...")


def finalize(args):
    from kneeseg.bundle import load_bundle, save_bundle
    from kneeseg.evaluate import evaluate_real2d
    from kneeseg.onnx_backend import export_onnx
    from kneeseg.training_data import evaluate_synthetic

    trained = load_bundle(args.bundle)
    model = trained.load_keras_model()
    staging = Path(args.bundle).with_name(Path(args.bundle).name + ".final")
    onnx_path = export_onnx(model, Path(args.bundle).with_name("model.onnx"))
    extras = [Path(args.bundle) / f for f in ("history.csv", "history.png") if (Path(args.bundle) / f).exists()]
    stage1 = load_bundle(args.stage1).card.training if args.stage1 else None
    training = {**trained.card.training, "config": {**trained.card.training["config"], "init_from": "stage 1"},
                "recipe": "scripts/train_default.py (stages below); on a GPU: scripts/gpu_train_default.sh",
                "stage1": stage1, "hardware": args.hardware}
    description = (f"2D U-Net (thesis architecture, {trained.card.network.filters} filters, "
                   f"{model.count_params():,} parameters) trained only on images synthesised from real knee "
                   "label maps (domain randomisation); tri-planar fusion at inference")
    card = dataclasses.replace(trained.card, training=training, description=description, metrics={})
    save_bundle(staging, model, card, onnx_path=onnx_path, extra_files=extras)
    bundle = load_bundle(staging)
    metrics = {"measured_on": args.hardware_eval, "date": args.date}
    if args.real2d:
        result = evaluate_real2d(bundle, args.real2d)
        metrics["real2d"] = {k: v for k, v in result.items() if k != "cases"}
    if args.cache:
        result = evaluate_synthetic(bundle, args.cache, args.synthetic_cases)
        metrics["synthetic"] = {k: v for k, v in result.items() if k != "cases"}
    from kneeseg.bundle import update_card

    update_card(staging, metrics=metrics)
    print(json.dumps(metrics, indent=2))
    if not args.install:
        print(f"measured bundle: {staging}; compare it with the shipped one (kneeseg info), then rerun with "
              f"--install to replace {INSTALLED}")
        return
    if INSTALLED.exists():
        shutil.rmtree(INSTALLED)
    shutil.copytree(staging, INSTALLED)
    print(f"installed {INSTALLED}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train")
    p.add_argument("--cache", default=".cache/labelmaps")
    p.add_argument("--preset", choices=PRESETS, default="cpu")
    p.add_argument("--out", default="build/default")
    p = sub.add_parser("finalize")
    p.add_argument("bundle")
    p.add_argument("--stage1")
    p.add_argument("--real2d")
    p.add_argument("--cache", help="label-map cache: also score held-out synthetic volumes")
    p.add_argument("--synthetic-cases", type=int, default=14)
    p.add_argument("--install", action="store_true", help="replace the shipped default model with the result")
    p.add_argument("--hardware", default="one NVIDIA H100 80GB (Keras 3.15.1 on JAX 0.11.2)")
    p.add_argument("--hardware-eval", default="2-core AVX-512 EPYC CPU, TensorFlow 2.21 CPU")
    p.add_argument("--date", default=None)
    args = parser.parse_args()
    if getattr(args, "date", "x") is None:
        import datetime

        args.date = datetime.date.today().isoformat()
    {"train": train, "finalize": finalize}[args.command](args)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The recipe of the shipped default model: train on synthetic images from real label maps, measure, install.

    python scripts/train_default.py train --cache .cache/labelmaps --preset gpu|cpu --out build/default
    python scripts/train_default.py round2 --cache .cache/labelmaps --out build/round2 [--time-limit-min 50]
    python scripts/train_default.py round3 --cache .cache/labelmaps --out build/round3 [--time-limit-min 50]
    python scripts/train_default.py round4 --cache .cache/labelmaps --out build/round4 [--time-limit-min 50]
    python scripts/train_default.py round7 --cache .cache/labelmaps --out build/round7 [--time-limit-min 50]
    python scripts/train_default.py round8 --cache .cache/labelmaps --out build/round8 [--time-limit-min 50]
    python scripts/train_default.py round11 --cache .cache/labelmaps --out build/round11 [--time-limit-min 30]
    python scripts/train_default.py round12 --cache .cache/labelmaps --out build/round12 [--time-limit-min 20]
    python scripts/train_default.py round13 --cache .cache/labelmaps --out build/round13 [--time-limit-min 20]
    python scripts/train_default.py round14 --cache .cache/labelmaps --out build/round14 [--time-limit-min 20]
    python scripts/train_default.py round15 --cache .cache/labelmaps --out build/round15 [--time-limit-min 20]
    python scripts/train_default.py round16 --cache .cache/labelmaps --out build/round16 [--time-limit-min 50]
    python scripts/train_default.py round17 --cache .cache/labelmaps --out build/round17 [--time-limit-min 25]
    python scripts/train_default.py round18 --cache .cache/labelmaps --out build/round18 [--time-limit-min 75]
    python scripts/train_default.py round19 --cache .cache/labelmaps --out build/round19 [--time-limit-min 75]
    python scripts/train_default.py round20 --cache .cache/labelmaps --out build/round20 [--time-limit-min 75]
    python scripts/train_default.py round21 --cache .cache/labelmaps --out build/round21 [--time-limit-min 7]  # a GPU
    python scripts/train_default.py round22 --cache .cache/labelmaps --out build/round22 [--time-limit-min 7]  # a GPU
    python scripts/train_default.py round15-chain --cache .cache/labelmaps [--out build/round15-chain] [--time-limit-min 150]
    python scripts/train_default.py round38 [--members build] [--out build/round38]  # a weight soup: 39, 40, 44, 48, 52
    python scripts/train_default.py finalize build/default/stage2 --stage1 build/default/stage1 \
        --cache .cache/labelmaps --real2d ../shared/data/real_2d/sagittal_slices_dev.npz [--install]

``round2`` is the round-2 recipe (issue 12): one fine-tune of the shipped model on the 78 label maps
(STAPLE's fibula knees included) with the dark cortical rim drawn outside the bone label, the fibula
maps drawn 3x as often as the others and the fixed split ``scripts/round2_split.json``. It is
resumable: each run stops after ``--time-limit-min`` and the same command continues from the work
folder's checkpoint, so several short runs add up to the whole training; every run leaves a bundle
of the best epoch so far in ``--out`` for ``finalize``.

``round3`` is round 2 again from round 2's model, with two changes: the training maps that lack a
fibula (all of OAI's) get one carried over from the fibula-bearing training knees
(``kneeseg.synth.fibula``; a new cache in the work folder, built once), and the training slices reach
+-80 mm from the knee centre (was 45), as far as the model frame's. Tried on 2026-12-02 and not shipped
(docs/evaluation.md, "Round 3").

``round4`` is round 2 again from round 2's model with context across slices (2.5D): the network sees
each slice with one neighbour on each side as extra input channels. Its first convolution starts as
round 2's on the middle channel and zeros on the neighbours (``kneeseg.train.widen_input``), so it
starts out as round 2 and learns what the neighbours add.

``round7`` is round 2 with the view centre drawn farther from the knee (tried 2026-12-03, not shipped).
``round8`` is round 2 on the generator with the leg outline mended: soft tissue, not air, around the
bones (docs/evaluation.md, "Round 8").
``round9`` to ``round15`` each continue the one before with one change (docs/training.md); ``round16``
is where they arrived, round 15's generator and loss, in one fine-tune of the shipped model.
``round15-chain`` runs rounds 8, 9, 11, 12 and 15 one after the other in one resumable command.
``round18`` is round 16 with the weights averaged over its epochs 6-20 rather than its best epoch's;
``round19`` the same run's best epoch (both measured, not shipped: docs/evaluation.md); ``round20`` is
round 19 without the fat septa in the generator; ``round21`` is round 19 trained 8.4x longer with batch 32,
on a lent GPU (``scripts/gpu_fine_tune.sh round21``); ``round22`` is round 21 with streaks along the muscle
fibres drawn in the generator's soft tissue.

``round38``-``round40`` and ``round44`` train nothing: each is a weight soup
(``kneeseg.workflows.train.soup_bundles``) of bundles other rounds made, read from ``--members`` (MEMBERS/roundN):
round 38 the mean of rounds 24, 34, 35, 36 and 37, round 39 of rounds 24, 34 and 35, round 40 halfway between the
shipped model and round 38, round 44 of rounds 33, 36 and 37; round 48 of rounds 45-47 (round 24's recipe with no
cortical rim where the marrow is dark), round 52 of rounds 49-51 (round 24's recipe with slices out to +-80 mm).

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


ROUND2_SPLIT = REPO / "scripts" / "round2_split.json"
# The shipped card's generator (no stretched muscles, no septa) with the two round-2 changes.
ROUND2_SYNTHESIS = {"muscle_stretch_probability": 0.0, "septum_probability": 0.0,
                    "rim_outside_probability": 1.0, "fibula_weight": 3.0}
ROUND2 = {"dims": 2, "output": "separate", "filters": 32, "depth": 4, "input_size": 224, "window_mm": 160.0,
          "planes": ("sagittal", "coronal", "axial"), "loss": "dice+ce", "learning_rate": 2e-4,
          "final_learning_rate": 2e-5, "batch_size": 8, "steps_per_epoch": 100, "validation_steps": 5, "epochs": 40,
          "patience": 12, "seed": 3, "split": str(ROUND2_SPLIT), "init_from": str(INSTALLED),
          "synthesis": ROUND2_SYNTHESIS}


def check_cache_holds_split(cache, split_file):
    """Every subject the split names must be in the cache (a cache of the 72 maps before STAPLE lacks
    the held-out fibula): refuse before training rather than train on a silently smaller split."""
    from kneeseg.datasets import read_split
    from kneeseg.errors import InputError
    from kneeseg.synth import DEFAULT_SOURCES, load_manifest

    entries = load_manifest(cache)["files"]
    sources = {source.dataset: source for source in DEFAULT_SOURCES}
    # a knee published twice carries the first copy's subject; the name of its own file counts too
    present = {e["subject"] for e in entries} | {sources[e["dataset"]].subject(Path(e["source"]).name.split(".")[0])
                                                 for e in entries if e["dataset"] in sources}
    split = read_split(split_file)
    missing = sorted({s for part in ("train", "validation", "test") for s in split[part]} - present)
    if missing:
        raise InputError(f"the label-map cache lacks subject(s) {', '.join(missing)} of {split_file}: rerun "
                         "kneeseg synth prepare ../shared/data/labelmaps on a fresh cache folder", cache)


def round2(args):
    _fine_tune(args, ROUND2, "round2")


def _fine_tune(args, settings, name, cache=None, next_steps=True):
    """One resumable fine-tune by ``settings`` (a flat training configuration) on ``cache``; whether it is
    finished. ``next_steps``: print the commands that follow it (finalize, make eval)."""
    from kneeseg.progress import Progress
    from kneeseg.train import TrainConfig
    from kneeseg.workflows.train import train_bundle

    from kneeseg.errors import InputError

    start = getattr(args, "init_from", None) or settings["init_from"]
    if not Path(start).exists():
        raise InputError(f"{name} starts from {start}, which does not exist: make it first (docs/training.md, "
                         f"round {name.removeprefix('round')}), or name another bundle with --init-from", start)
    if Path(start).resolve() == INSTALLED.resolve() and _made_by(INSTALLED, name):
        raise InputError(f"the shipped model is already the output of {name}: to rerun {name} as it was, name the "
                         f"bundle it started from with --init-from (docs/training.md, round "
                         f"{name.removeprefix('round')})", start)
    if Path(args.out).resolve() == Path(start).resolve():
        raise InputError(f"--out is the bundle {name} starts from; name another folder so that it stays as it is",
                         args.out)
    check_cache_holds_split(args.cache, ROUND2_SPLIT)
    workers = getattr(args, "workers", None)
    workers = max(1, (os.cpu_count() or 2) - 1) if workers is None else workers
    if workers < 1:
        raise InputError(f"--workers must be 1 or more, not {workers}")
    config = TrainConfig.from_flat(**{**settings, "init_from": start},
                                   time_limit_min=args.time_limit_min, workers=workers,
                                   use_multiprocessing=workers > 1)
    work = Path(args.work or f"{args.out}.work")
    result = train_bundle(config, Path(args.out), work, synthetic=cache or args.cache, name="knee-bones-default",
                          export_onnx=False, progress=Progress("bar"))
    print(json.dumps(result, indent=2))
    done = result["epochs_run"] >= config.recipe.last_epoch or result["stopped_early"]
    kept = (f"the mean of the weights of {result['averaged_epochs']} epochs" if result.get("averaged_epochs")
            else "the best epoch")
    then = (f"; then: scripts/train_default.py finalize {args.out} --recipe {name} --cache {args.cache} "
            "--real2d ../shared/data/real_2d/sagittal_slices_dev.npz, and make eval")
    print(f"{'finished' if done else 'not finished: rerun the same command to continue'}; bundle of {kept} so "
          f"far: {args.out}{then if next_steps else ''}")
    return done


# Round 3: the same split and generator, the training maps given a fibula carried over from the
# fibula-bearing training knees (kneeseg.synth.fibula). Every training map then has a fibula, so the
# fibula weight no longer changes what training draws; it stays 3 so that the validation maps'
# one fibula knee (STAPLE-MC22) is drawn as in round 2 (with 1, the 40 validation slices held no
# fibula and its Dice was 0 in every epoch).
# And the training slices reach as far from the knee centre as the slices segmented do: the model
# frame spans +-80 mm (half the 160 mm window) along the slice axis, round 2 trained on +-45 mm, and
# beyond that one plane alone labels nothing (the fibula and tibial shafts on axial slices, 33-61 mm
# below the centre of a held-out volume). Tried: 21 epochs did not change that (docs/evaluation.md).
ROUND3 = {**ROUND2, "learning_rate": 1e-4, "final_learning_rate": 1e-5, "epochs": 30, "patience": 8, "seed": 4,
          "synthesis": {**ROUND2_SYNTHESIS, "slab_half_mm": 80.0}}


def _recipe_command(name) -> str:
    """How a card names the fine-tune ``name`` as its recipe (``finalize`` writes it, :func:`_made_by` reads it)."""
    return f"scripts/train_default.py {name}"


def _made_by(bundle, name) -> bool:
    """Whether ``bundle``'s card names the fine-tune ``name`` as its recipe."""
    from kneeseg.bundle import load_bundle

    recipe = (load_bundle(bundle).card.training or {}).get("recipe", "")
    return recipe.split(" (")[0] == _recipe_command(name)


def _plain_fine_tune(name):
    """The subcommand of a fine-tune that is its settings (``ROUNDn``) and nothing more."""
    settings = globals()[name.upper()]

    def run(args):
        _fine_tune(args, settings, name)

    run.__name__ = name
    return run


def round3(args):
    from kneeseg.datasets import read_split
    from kneeseg.progress import Progress
    from kneeseg.synth.fibula import add_fibulas

    check_cache_holds_split(args.cache, ROUND2_SPLIT)
    # beside the bundle, not in the work folder, which holds only what the training run writes
    fibula_cache = Path(args.out).with_name(Path(args.out).name + ".labelmaps-fibula")
    if not (fibula_cache / "manifest.json").exists():
        shutil.rmtree(fibula_cache, ignore_errors=True)
        manifest = add_fibulas(args.cache, fibula_cache, subjects=set(read_split(ROUND2_SPLIT)["train"]),
                               progress=Progress("bar"))
        carried = [e for e in manifest["files"] if "fibula_from" in e]
        print(f"fibula carried over onto {sum('refused' not in e['fibula_from'] for e in carried)} of "
              f"{len(carried)} training maps without one: {fibula_cache}")
    _fine_tune(args, ROUND3, "round3", cache=fibula_cache)


# Round 4: round 2's data and generator, from round 2's model, with one neighbouring slice on each side
# as extra input channels (2.5D). The slices one plane alone got wrong far from the knee centre and at
# the medial and lateral edges are those where the slice by itself is ambiguous; its neighbours tell a
# condyle from a plateau and a shaft from a blob.
ROUND4 = {**ROUND2, "context_slices": 1, "seed": 5, "epochs": 40, "patience": 10}


def round4(args):
    _fine_tune(args, ROUND4, "round4")


# Round 7: round 2's data and generator, from the shipped model, with the view centre drawn farther from
# the knee centre (standard deviation 25 mm per axis, clipped at 50; was 15, clipped at 30). Since round 6
# the window slides back inside the scan, so inference puts the knee up to ~45 mm off the window's
# middle (measured on the held-out synthetic volumes); round 2 rarely trained it beyond 15 mm.
ROUND7 = {**ROUND2, "learning_rate": 1e-4, "final_learning_rate": 1e-5, "epochs": 30, "patience": 8, "seed": 7,
          "synthesis": {**ROUND2_SYNTHESIS, "centre_shift_mm": 25.0}}

round7 = _plain_fine_tune("round7")


# Round 8: round 2's data, settings and view centres, from the shipped model, on the generator with the
# leg outline mended (2026-12-03). Until then the outline read the cache's tissue box the wrong way
# round: in the 80 % of images with air it sat 15-30 mm off the labelled tissue at about half its size,
# so the unlabelled tissue beside the bones was painted as air and the bones floated on black; every
# earlier round trained (and was measured) on such images. Schedule as round 7.
ROUND8 = {**ROUND2, "learning_rate": 1e-4, "final_learning_rate": 1e-5, "epochs": 30, "patience": 8, "seed": 8}

round8 = _plain_fine_tune("round8")


# Round 9: round 8 continued (from build/round8.final, its measured bundle) on the generator with the
# thigh's muscles as they look: the soft-tissue blobs stretched along the limb and separated by thin fat
# or fibrous septa (the generator's defaults; off since the first shipped model). Round 8, once the leg
# outline put soft tissue rather than air around the bones, labelled the striated thigh muscle above the
# femur on the real DESS volume as femur (sagittal plane alone: femur 235 ml against 141 for round 6).
ROUND9 = {**ROUND8, "seed": 9, "init_from": str(REPO / "build" / "round8.final"),
          "synthesis": {**ROUND2_SYNTHESIS, "muscle_stretch_probability": 0.6, "septum_probability": 0.5}}

round9 = _plain_fine_tune("round9")


# Round 10: round 9 paired, the one change being the fibula's weight in the loss (3; femur, tibia and
# patella 1). Round 9 removed the DESS muscle error but lost the fibula (Dice 0.06 on the held-out
# fibula volumes); its few pixels barely move a soft Dice averaged with the big bones. Same start
# (build/round8.final) and generator as round 9.
ROUND10 = {**ROUND9, "seed": 10, "class_weights": (1.0, 1.0, 3.0, 1.0)}

round10 = _plain_fine_tune("round10")


# Round 11: round 9 continued (from build/round9.final, its measured bundle: the DESS muscle gone, the
# fibula lost) with the fibula weighing 2 in the loss. Round 10's weight 3 from round 8 brought the fibula
# back and cost the real slices (tibia 0.937 -> 0.855), its best epoch the first: a lower weight from the
# muscle-aware start, and three times the validation slices (15 batches of 8), since the validation
# fibula Dice of round 9 swung 0.19-0.69 between epochs and the best epoch was picked on that noise.
ROUND11 = {**ROUND10, "seed": 11, "init_from": str(REPO / "build" / "round9.final"),
           "class_weights": (1.0, 1.0, 2.0, 1.0), "validation_steps": 15}

round11 = _plain_fine_tune("round11")


# Round 12: round 11 continued (from build/round11.final) with the fibula-bearing maps drawn 10 times as
# often as the others (the generator's default; 3 in every recipe since round 2), the loss weight kept.
# Round 11 left the fibula under-learned on the very knees it trains on (fibula Dice 0.38 on STAPLE-ICL's
# training-style slices, its pixels mostly called background): more fibula images rather than a heavier
# loss on the few there are.
ROUND12 = {**ROUND11, "seed": 12, "init_from": str(REPO / "build" / "round11.final"),
           "synthesis": {**ROUND11["synthesis"], "fibula_weight": 10.0}}

round12 = _plain_fine_tune("round12")


# Round 13: round 12 continued (from build/round12.final) with the fibula shown as real scans show it and
# more often. On round 12's training-style slices of the fibula-bearing training knees only 29 % of the
# slices cut the fibula, and its Dice was 0.58 where it looked like the tibia but 0.38 where it did not
# (30 % of draws give every bone its own random intensity, which leaves the fibula a plain blob among the
# background structures). Now the fibula keeps the tibia's marrow intensity, and half the views of a
# fibula-bearing map are centred on its fibula with their slices within 15 mm of it.
ROUND13 = {**ROUND12, "seed": 13, "init_from": str(REPO / "build" / "round12.final"),
           "synthesis": {**ROUND12["synthesis"], "fibula_view_probability": 0.5,
                         "fibula_like_tibia_probability": 1.0}}

round13 = _plain_fine_tune("round13")


# Round 14: round 13 continued (from its best-epoch bundle build/round13) with fewer fibula-centred views
# (0.2, was 0.5). Round 13 raised the fibula of the synthetic fibula volumes (0.122 -> 0.256) but lost
# femur and tibia on the real development slices (0.968/0.925 -> 0.921/0.893): half of the fibula
# maps' views off the knee's centre moved the training away from the views inference cuts.
ROUND14 = {**ROUND13, "seed": 14, "init_from": str(REPO / "build" / "round13"),
           "synthesis": {**ROUND13["synthesis"], "fibula_view_probability": 0.2}}

round14 = _plain_fine_tune("round14")


# Round 15: the paired test of rounds 13-14. Round 12's measured bundle (build/round12.final) continued with
# only the fibula at the tibia's intensity, no fibula-centred views: rounds 13 and 14 raised the fibula but
# brought back the thigh muscle labelled femur on the DESS volume, and they changed both at once.
ROUND15 = {**ROUND12, "seed": 15, "init_from": str(REPO / "build" / "round12.final"),
           "synthesis": {**ROUND12["synthesis"], "fibula_like_tibia_probability": 1.0}}

round15 = _plain_fine_tune("round15")


# Round 16: round 15's data, generator and loss in one fine-tune of the shipped model (round 6), instead of
# the five steps (rounds 8, 9, 11, 12, 15) that reached them one change at a time. The chain's
# intermediate bundles do not survive from one session to the next, and each step is 20-40 minutes on two
# cores; this recipe is the one command a user reruns. The schedule is round 8's (30 epochs, patience 8);
# on a 2-core machine it ends within 50 minutes (2026-12-03: early stop after 14 epochs).
ROUND16 = {**ROUND15, "seed": 16, "init_from": str(INSTALLED)}

round16 = _plain_fine_tune("round16")


# Round 17: round 16 continued (from its best-epoch bundle build/round16) with more patience. Round 16
# stopped early after 14 epochs, its best the 6th, on a validation mean Dice that swings 0.01-0.02
# between epochs (one fibula knee in the validation subjects); it kept round 15's real-slice gains and
# the clean DESS sheet but not its fibula (0.112 on the held-out fibula volumes, round 15 0.287 after
# about 45 epochs of the chain), so: more epochs of the same data.
ROUND17 = {**ROUND16, "seed": 17, "patience": 12, "init_from": str(REPO / "build" / "round16")}

round17 = _plain_fine_tune("round17")


# Round 15 in one command: the chain that reached it (rounds 8, 9, 11, 12, 15), each step a fine-tune of the
# best-epoch bundle of the step before (finalize adds fusion weights and numbers to a bundle, not weights),
# the first step of the shipped model. On 2026-12-03 a 20-minute time limit cut rounds 12 and 15 after 16
# and 12 of their 30 epochs; here they stop after those epochs, their learning rate still decaying over
# 30, so that every machine trains the same schedule.
ROUND15_CHAIN = (("round8", ROUND8), ("round9", ROUND9), ("round11", ROUND11),
                 ("round12", {**ROUND12, "stop_after_epochs": 16}), ("round15", {**ROUND15, "stop_after_epochs": 12}))


def round15_chain(args):
    """Run (or continue) every step of :data:`ROUND15_CHAIN` into ``OUT/roundN``; the time limit spans them all."""
    import time

    from kneeseg.errors import InputError

    start = Path(args.init_from).resolve() if args.init_from else INSTALLED
    if start == INSTALLED.resolve() and _made_by(INSTALLED, "round15-chain"):
        raise InputError("the shipped model is already the output of round15-chain: to rerun the chain as it was, "
                         "name the bundle it started from with --init-from (docs/training.md, round 15 chain)", start)
    deadline = time.monotonic() + 60 * args.time_limit_min
    for name, settings in ROUND15_CHAIN:
        out = Path(args.out).resolve() / name
        left_min = (deadline - time.monotonic()) / 60
        if left_min <= 0:
            print(f"the chain reached its time limit before {name}: rerun the same command to continue")
            return False
        step = argparse.Namespace(cache=args.cache, out=str(out), work=None, init_from=str(start),
                                  time_limit_min=left_min)
        print(f"chain step {name}, from {start}")
        if not _fine_tune(step, settings, name, next_steps=False):
            print(f"the chain stopped at the time limit in {name}: rerun the same command to continue")
            return False
        start = out
    print(f"the chain is finished: {start}; then: scripts/train_default.py finalize {start} --recipe round15-chain "
          f"--cache {args.cache} --real2d ../shared/data/real_2d/sagittal_slices_dev.npz, and make eval")
    return True


def chain_record(out) -> list:
    """What each step of the chain in ``out`` trained, from its bundle's card, for the final card."""
    from kneeseg.bundle import load_bundle
    from kneeseg.errors import InputError

    steps = []
    for name, _ in ROUND15_CHAIN:
        if not (out / name / "card.json").exists():
            raise InputError(f"the chain's step {name} is not in {out}: finalize the last step of a finished chain "
                             "(OUT/round15)", out / name)
        training = load_bundle(out / name).card.training
        steps.append({"step": name, **{k: training.get(k) for k in ("epochs_run", "best_epoch", "best_val_mean_dice",
                                                                    "stopped_early")},
                      "init_from": training["config"].get("init_from"), "seed": training["config"].get("seed")})
    return steps


# Round 18: round 16 (round 15's data, generator and loss, one fine-tune of the shipped model) with the
# weights averaged over epochs 6-20 instead of the one best epoch. Rounds 16, 17 and the chain's rerun
# moved 0.03-0.06 of real tibia Dice and 0.1 of fibula by which epoch early stopping kept, on a
# validation mean Dice that swings 0.01-0.02 between epochs; the mean of the plateau's weights does not
# depend on that pick. No early stop (patience beyond the epochs); 20 epochs (the learning rate decaying
# over them, not over round 16's 30), about 47 minutes on two cores (2026-12-03).
ROUND18 = {**ROUND16, "seed": 18, "epochs": 20, "patience": 100, "average_from_epoch": 6}

round18 = _plain_fine_tune("round18")


# Round 19: round 18 without the average: its best epoch by validation mean Dice. The average does not
# change what training does (it only reads the weights), so round 18's run is also round 19's; measured
# against its average on 2026-12-04, the average labelled the DESS thigh muscle femur and the best epoch
# did not.
ROUND19 = {**ROUND18, "average_from_epoch": None}

round19 = _plain_fine_tune("round19")


# Round 20: round 19 paired, the one change being the generator's fat septa (off; the stretched muscles
# kept). Round 19 lost the fibula against round 6 on both held-out fibula people, every plane and seed
# (2026-12-04, docs/round19_fibula_pool.json). Septa are thin lines through the soft tissue, the size and
# direction of a fibula's cortex in a slice; round 9 added them with the stretched muscles and its fibula
# fell to 0.06, while round 15 (at the end of a longer chain) kept it: the likeliest cost, not a proven one.
# The stretched muscles alone are what the DESS thigh needs (round 9's note), so they stay.
ROUND20 = {**ROUND19, "seed": 20, "synthesis": {**ROUND19["synthesis"], "septum_probability": 0.0}}

round20 = _plain_fine_tune("round20")


# Round 21: round 19 trained longer, on a lent GPU (issue 12, "train longer"): the same start (the shipped
# model), data, generator and loss, with batch 32 for batch 8 and 28 epochs of 150 steps (134,400 slices,
# 8.4x round 19's 16,000), the learning rate 2e-4 -> 2e-5 (twice round 19's, for the 4x batch). The paired
# question: does round 19's fibula, lost against round 6 after 16,000 slices, come back with more training,
# while round 19's real-slice femur and tibia stay? On two CPU cores an epoch takes ~11 minutes; on one
# H200 with 15 synthesis processes about 16 s (scripts/gpu_fine_tune.sh round21).
# Run and measured 2026-12-04: best real slices of any round, fibula about round 6's, but the DESS thigh
# muscle labelled femur again; not shipped (docs/evaluation.md, "Round 21").
ROUND21 = {**ROUND19, "seed": 21, "batch_size": 32, "steps_per_epoch": 150, "validation_steps": 10, "epochs": 28,
           "learning_rate": 2e-4, "final_learning_rate": 2e-5}

round21 = _plain_fine_tune("round21")


# Round 22: round 21 paired, the one change being fine streaks along the muscle fibres in the generator's soft
# tissue (``striation_probability`` 0.6: the fat and fascia between fibre bundles). Round 21's network labels
# the DESS vastus femur: on that scan the muscle is a large bright region with fine dark streaks and the marrow
# is dark; the generator's muscles were smooth fields, its bones may be bright, and a bright smooth region above
# the condyles is what a femoral shaft looks like to it. Streaks are in real muscle and never in bone.
ROUND22 = {**ROUND21, "seed": 22, "synthesis": {**ROUND21["synthesis"], "striation_probability": 0.6}}

round22 = _plain_fine_tune("round22")


# Rounds 23 and 24: a paired probe on two CPU cores, not ship candidates. Round 22's sagittal plane no longer
# labels the DESS thigh muscle, its coronal and axial planes still do; in a coronal reformat of that scan the
# muscle's streaks lie across or oblique to the limb, where round 22 drew them within 25 degrees of it. Both
# continue round 22's measured bundle (build/round22.final) for 4,800 slices at batch 8 with round 19's
# learning rate (1e-4 -> 1e-5); round 23 draws the streaks at any angle, round 24 (the control) as round 22
# did. The question: does the DESS femur of the coronal and axial planes alone fall more with streaks at any
# angle?
ROUND23 = {**ROUND22, "seed": 23, "init_from": str(REPO / "build" / "round22.final"), "batch_size": 8,
           "steps_per_epoch": 100, "validation_steps": 15, "epochs": 6, "patience": 100,
           "learning_rate": 1e-4, "final_learning_rate": 1e-5,
           "synthesis": {**ROUND22["synthesis"], "striation_angle_deg": 90.0}}
ROUND24 = {**ROUND23, "seed": 24, "synthesis": ROUND22["synthesis"]}

round23 = _plain_fine_tune("round23")
round24 = _plain_fine_tune("round24")


# Round 25: round 24 trained longer, on a lent GPU (issue 12, "train longer"): round 24's measured bundle
# (build/round24.final) continued with round 22's generator and round 21's batch (32 x 150 steps, 24 epochs:
# 115,200 slices, 24x round 24's 4,800) at round 24's learning rate, 1e-4 -> 1e-5, the best epoch by validation
# mean Dice kept. Round 24 passed every part of the ship rule but the real patella (0.705 against 0.710); the
# question: does more of the same training keep its fibula and DESS and move the patella, or drift further?
# Run and measured 2026-12-04 with round 26: the best real femur of any round, but the DESS thigh muscle back in
# the coronal and axial planes and the fibula lost; not shipped (docs/evaluation.md, "Rounds 25 and 26").
ROUND25 = {**ROUND22, "seed": 25, "init_from": str(REPO / "build" / "round24.final"), "epochs": 24,
           "patience": 100, "learning_rate": 1e-4, "final_learning_rate": 1e-5}

# Round 26: round 25's replicate on the same GPU lease, another seed and 16 epochs (the lease's time left), the
# learning rate decaying over them: how far two runs of one recipe land apart.
ROUND26 = {**ROUND25, "seed": 26, "epochs": 16}

round25 = _plain_fine_tune("round25")
round26 = _plain_fine_tune("round26")


# Rounds 27 and 28: a paired probe on two CPU cores of the slice's position as input (issue 12, "edge slices and
# context"). Round 25's coronal and axial planes label the DESS thigh muscle femur and the tibial plateau femur
# slice by slice: a coronal or axial slice alone does not know where along the limb it lies. Round 27 gives the
# network two more channels, each slice's distance from the knee centre and whether it is known
# (NetworkSpec.slice_position "input", beside the image; the weights of the new channels start at zero, so it
# starts out as round 24), and continues round 24's measured bundle for 9,600 slices at round 24's batch and
# learning rate. Round 28 is its control: the same run (same seed, so the same images) without the position. The
# question: does the axial and coronal plane alone label femur and tibia better with the position, on held-out
# synthetic volumes and on DESS? Run and measured 2026-12-04 (CPU): the network did not learn to use it, and both
# runs bring the DESS thigh muscle back (docs/evaluation.md, "Rounds 27-30").
ROUND27 = {**ROUND24, "seed": 27, "init_from": str(REPO / "build" / "round24.final"), "epochs": 12,
           "slice_position": "input"}
ROUND28 = {key: value for key, value in ROUND27.items() if key != "slice_position"}

round27 = _plain_fine_tune("round27")
round28 = _plain_fine_tune("round28")


# Round 29: round 27 with the position at the bottleneck. Round 27's network had not learnt to use the position
# channels beside the image: their first-layer weights stayed about 0.001 (the image's 0.36), and with the
# position withheld its DESS femur changed by 1 %. Here the two channels, averaged over the slice, go through a
# small dense embedding whose last layer (zero at the start) adds a bias to each bottleneck filter: the
# slice-wide decision is made there. The same run otherwise (seed 27: the same images as rounds 27 and 28).
ROUND29 = {**ROUND27, "slice_position": "bottleneck"}

round29 = _plain_fine_tune("round29")


# Round 30: does the position help at all, with the features as they are? Round 24's network with round 29's
# bottleneck position layers, and only those trained (train_layers "position"; everything else stays round 24's,
# so its DESS and fibula cannot drift) at a learning rate of their own, 3e-3, for 2,400 slices. Rounds 27-29
# had left those layers near zero at 1e-4. Run and measured 2026-12-04: it uses the position (synthetic axial plane
# better), but labels more of the DESS thigh femur in the axial and coronal planes; not a candidate.
ROUND30 = {**ROUND29, "train_layers": "position", "learning_rate": 3e-3, "final_learning_rate": 3e-3, "epochs": 3}

round30 = _plain_fine_tune("round30")


# Round 31: round 28 (round 24 continued for 9,600 slices, no position) paired, the one change being the marrow's
# intensity tied to the fat's in 80 % of the images (``marrow_like_fat_probability`` 0.8). Rounds 22-30 label the
# DESS thigh muscle femur in the coronal and axial planes: there the vastus is a large bright smooth region
# outlined by dark fat, the marrow as dark as that fat; the generator drew each bone's marrow in any relation to
# the fat (in half the images every tissue at a uniform random intensity), so a bright region outlined in dark
# was as likely bone as muscle. Adult knee marrow is fatty and follows the fat in every common contrast (both
# real volumes: dark with it in DESS, bright with it in the T2 spin echo). Same seed as round 28: the same images
# but for the bones' intensity in the tied ones.
ROUND31 = {**ROUND28, "synthesis": {**ROUND28["synthesis"], "marrow_like_fat_probability": 0.8}}

round31 = _plain_fine_tune("round31")


# Round 32: round 31 paired, the one change being bone-shaped decoys in half the images (``decoy_probability``
# 0.5): the femur's or tibia's shape moved 20-45 mm sideways and painted as soft tissue unlike that bone's marrow.
# Round 31's sagittal plane still labels the DESS vastus femur in the slices at the knee's edge, where the muscle
# lies above the condyle in the place and shape of the shaft of a central slice: shape and place alone said bone.
# Same seed as round 31: the same images but for the decoys.
ROUND32 = {**ROUND31, "synthesis": {**ROUND31["synthesis"], "decoy_probability": 0.5}}

round32 = _plain_fine_tune("round32")


# Round 33: round 24 paired (round 22's measured bundle continued for 4,800 slices, seed 24: the same images but
# for the bones' intensity and the decoys), with round 32's two generator changes. Every 9,600-slice continuation
# of round 24 on seed 27's images (rounds 27-32, the controls too) labels the DESS vastus femur in the sagittal
# plane as well, where round 24 and its GPU continuations (rounds 25-26) did not: rounds 31 and 32 were measured
# against a control that had already drifted. Here the control is round 24 itself, clean on DESS.
ROUND33 = {**ROUND24, "synthesis": {**ROUND24["synthesis"], "marrow_like_fat_probability": 0.8,
                                    "decoy_probability": 0.5}}

round33 = _plain_fine_tune("round33")


# Rounds 34 and 35: round 24's recipe again with two other seeds, to measure how far runs of one recipe land apart
# on DESS. Round 24 (clean on DESS) is the control of round 33 and the nearest any round came to shipping: is a clean
# DESS what that recipe gives, or what one of its runs did? Replicates for the spread, not ship candidates.
def _replicates(settings):
    """``settings`` and the same run with seeds 34 and 35: three runs of one recipe, each paired by seed with the
    run of another recipe made the same way (rounds 24, 34, 35 are round 24's)."""
    return (settings, *({**settings, "seed": seed} for seed in (34, 35)))


_, ROUND34, ROUND35 = _replicates(ROUND24)

round34 = _plain_fine_tune("round34")
round35 = _plain_fine_tune("round35")


# Rounds 36 and 37: round 33 (round 24's recipe with the marrow tied to the fat and decoys) with seeds 34 and 35, each
# paired with the replicate of the same seed (rounds 34, 35): three seeds per arm, the comparison one run per arm
# could not make.
_, ROUND36, ROUND37 = _replicates(ROUND33)

round36 = _plain_fine_tune("round36")
round37 = _plain_fine_tune("round37")


# Rounds 45-47: round 24's recipe with seeds 24, 34 and 35 (each paired with round 24, 34 or 35: the same images
# but for the rim), the one change being no cortical rim drawn in 80 % of the images whose femoral marrow is dark
# (``hidden_rim_probability`` 0.8). In fat-suppressed and DESS scans the dark marrow meets a dark cortex with no line
# between them; the generator drew a dark rim around the bone in 90 % of its images, dark marrow or not. On the real
# DESS volume a dark line drawn between the femur and the vastus halved what round 38's coronal plane called femur
# in the muscle (docs/evaluation.md, probe 48): the network ends the femur at a dark line, and the DESS condyle
# has none. Round 48 is their soup, compared with round 39 (the soup of rounds 24, 34 and 35).
ROUND45, ROUND46, ROUND47 = _replicates({**ROUND24,
                                         "synthesis": {**ROUND24["synthesis"], "hidden_rim_probability": 0.8}})

round45, round46, round47 = (_plain_fine_tune(name) for name in ("round45", "round46", "round47"))


# Rounds 49-51: round 24's recipe with seeds 24, 34 and 35 (paired with rounds 24, 34, 35), the one change being
# training slices out to +-80 mm from the view centre (``slab_half_mm`` 80, was 45), as far as inference cuts them:
# a frame spans the whole scan along its slice axis. On the real DESS volume 27 of the 38 ml that round 38's axial
# plane calls femur and its sagittal plane calls background lie more than 45 mm above the knee centre, in thigh
# slices no training image showed (docs/evaluation.md, probe 49). Round 3 tried +-80 mm together with a fibula on
# every map, on an older generator. Round 52 is their soup, against round 39.
ROUND49, ROUND50, ROUND51 = _replicates({**ROUND24, "synthesis": {**ROUND24["synthesis"], "slab_half_mm": 80.0}})

round49, round50, round51 = (_plain_fine_tune(name) for name in ("round49", "round50", "round51"))


# Round 53: does the slice's position tell round 49's axial plane the shafts apart? Round 49 (training slices out to
# +-80 mm) calls less of the DESS thigh muscle femur in every plane, but its axial plane calls the tibia femur and
# the femoral shaft tibia far from the joint, where an axial slice of either shaft looks the same. Round 49's network
# with round 29's bottleneck position layers, only those trained (round 30's settings: 3e-3 for 2,400 slices), on
# round 49's data: its features stay round 49's, so any change is what the position adds. A probe, not a candidate.
ROUND53 = {**ROUND30, "seed": 24, "init_from": str(REPO / "build" / "round49"), "synthesis": ROUND49["synthesis"]}

round53 = _plain_fine_tune("round53")


# Round 57: the slice's position trained together with the rest of the network, at +-80 mm. Round 53's position
# layers, trained alone on round 49's features, doubled the DESS axial tibia but could shift each slice's decision
# only as a whole; rounds 27-29 had left the layers near zero when they started there at round 24's learning rate.
# Round 57 starts from round 53 (its position layers already in use) and trains every layer with round 49's
# settings and seed (round 24's rate and length, +-80 mm slices: the same images as round 49): whether the axial
# plane then tells the shafts apart without calling more of the thigh muscle femur. A probe on two cores; a lent GPU
# would run it longer, with three seeds and a soup.
ROUND57 = {**ROUND49, "init_from": str(REPO / "build" / "round53"), "slice_position": "bottleneck"}

round57 = _plain_fine_tune("round57")


# Rounds 38-40 and 44: weight soups (kneeseg.workflows.train.soup_bundles), no training of their own. Three runs of
# round 24's recipe landed far apart on the DESS volume (rounds 24, 34, 35), so each run's weights carry a part that
# is its path's, not its recipe's; averaging the weights of fine-tunes of one start cancels that part (Wortsman et
# al. 2022). Round 38 is the mean of the five siblings fine-tuned from round 22's bundle at the reviewed generator
# (round 24's recipe with seeds 24/34/35, round 33's with 34/35); round 39 of round 24's recipe's three seeds only;
# round 40 halfway between the shipped model and round 38 (WiSE-FT: a model and its fine-tune interpolated); round
# 44 of round 33's settings' three seeds, so that the two arms of rounds 33-37 compare as soups (39 against 44). Each
# member is the bundle its round's command made: MEMBERS/roundN (default build/roundN). Measured 2026-12-05
# (docs/evaluation.md, "Rounds 38-44"); round 40, finalized with the plane reach, is shipped since 2026-12-05
# (rounds 55-56): rerun it with --shipped naming round 6 (docs/training.md, "Round 40").
SOUPS = {
    "round38": (("round24", "round34", "round35", "round36", "round37"), None),
    "round39": (("round24", "round34", "round35"), None),
    "round40": (("shipped", "round38"), (0.5, 0.5)),
    "round44": (("round33", "round36", "round37"), None),
    "round48": (("round45", "round46", "round47"), None),
    "round52": (("round49", "round50", "round51"), None),
}


def _soup_member(member, members_folder, name, shipped=None) -> Path:
    """The bundle of one soup member: the shipped model (``shipped``, default the installed one), or the bundle
    its round's command made."""
    from kneeseg.errors import InputError

    if member == "shipped":
        shipped = Path(shipped) if shipped else INSTALLED
        if not (shipped / "card.json").exists():
            raise InputError(f"{name} averages the shipped model's bundle, which is not there", shipped)
        if _made_by(shipped, name):
            raise InputError(f"this model is already the output of {name}: name the bundle it was made from with "
                             f"--shipped (docs/training.md, round {name.removeprefix('round')})", shipped)
        return shipped
    path = Path(members_folder) / member
    if not (path / "card.json").exists():
        raise InputError(f"{name} averages {member}'s bundle, which is not there: make it first "
                         f"(scripts/train_default.py {member} --out {path}), or name the folder that holds it with "
                         "--members", path)
    return path


def _soup(name):
    """The subcommand of the weight soup ``name`` (:data:`SOUPS`)."""
    members, mix = SOUPS[name]

    def run(args):
        from kneeseg.workflows.train import soup_bundles

        paths = [_soup_member(member, args.members, name, getattr(args, "shipped", None)) for member in members]
        soup = soup_bundles(paths, args.out, mix=mix, name="knee-bones-default")
        print(json.dumps(soup, indent=2))
        starts = {member["init_from"] for member in soup["members"]}
        start = paths[0]
        if len(starts) == 1 and None not in starts:  # the members' one start, as the cards name it
            named = starts.pop()
            start = next((p for p in (Path(named), Path(args.members) / named) if (p / "card.json").exists()), start)
        print(f"the soup is in {args.out}; then: scripts/train_default.py finalize {args.out} --recipe {name} "
              f"--cache {args.cache} --real2d ../shared/data/real_2d/sagittal_slices_dev.npz --fine-tuned-from "
              f"{start}, and make eval")

    run.__name__ = name
    return run


round38, round39, round40, round44, round48, round52 = (_soup(name) for name in ("round38", "round39", "round40",
                                                                                "round44", "round48", "round52"))


def soup_parser(sub, name, help):
    p = sub.add_parser(name, help=help)
    p.add_argument("--members", default="build", help="the folder holding each member round's bundle as roundN "
                   "(default: %(default)s)")
    p.add_argument("--out", default=f"build/{name}", help="the soup's bundle (default: %(default)s)")
    p.add_argument("--cache", default=".cache/labelmaps", help="named in the next step's command (default: "
                   "%(default)s)")
    if "shipped" in SOUPS[name][0]:
        p.add_argument("--shipped", default=None, help="the bundle this soup takes as the shipped model (default: "
                       "the installed one)")
    return p


# Each fine-tune's subcommand: what it runs, its help line and its parser options (fine_tune_parser).
# The newest is finalize's default recipe.
FINE_TUNES = {
    "round2": (round2, "the round-2 fine-tune (issue 12); rerun to continue", {}),
    "round3": (round3, "round 3: round 2 with a fibula carried onto the training maps; rerun to continue",
               {"work": "checkpoints and the fibula cache (default: OUT.work)", "init_from": True}),
    "round4": (round4, "round 4: round 2 with one neighbouring slice on each side as channels (2.5D); rerun to "
               "continue", {"init_from": True}),
    "round7": (round7, "round 7: round 2 with the knee drawn farther from the window's middle, as the slid window "
               "of round 6 places it; rerun to continue", {"init_from": True}),
    "round8": (round8, "round 8: round 2 on the generator with the leg outline mended (soft tissue around the bones, "
               "not air); rerun to continue", {"init_from": True}),
    "round9": (round9, "round 9: round 8 continued with stretched muscles and fat septa in the generator; rerun to "
               "continue", {"init_from": True}),
    "round10": (round10, "round 10: round 9 with the fibula weighing 3 in the loss; rerun to continue",
                {"init_from": True}),
    "round11": (round11, "round 11: round 9 continued with the fibula weighing 2 in the loss; rerun to continue",
                {"init_from": True}),
    "round12": (round12, "round 12: round 11 continued with the fibula maps drawn 10x as often; rerun to continue",
                {"init_from": True}),
    "round13": (round13, "round 13: round 12 continued with the fibula as bright as the tibia and fibula-centred "
                "views; rerun to continue", {"init_from": True}),
    "round14": (round14, "round 14: round 13 continued with fewer fibula-centred views; rerun to continue",
                {"init_from": True}),
    "round15": (round15, "round 15: round 12 continued with the fibula as bright as the tibia, no fibula views; "
                "rerun to continue", {"init_from": True}),
    "round16": (round16, "round 16: round 15's generator and loss in one fine-tune of the shipped model; rerun to "
                "continue", {"init_from": True}),
    "round17": (round17, "round 17: round 16 continued with more patience; rerun to continue", {"init_from": True}),
    "round15-chain": (round15_chain, "round 15 from the shipped model in one command: rounds 8, 9, 11, 12 and 15, "
                      "each from the one before, into OUT/roundN; rerun to continue",
                      {"init_from": "the shipped model", "out": "build/round15-chain", "work": None}),
    "round18": (round18, "round 18: round 16 with the weights averaged over epochs 6-20 instead of the best "
                "epoch's; rerun to continue", {"init_from": True}),
    "round19": (round19, "round 19: round 18's run, its best epoch instead of the average; rerun to continue",
                {"init_from": True}),
    "round20": (round20, "round 20: round 19 without the fat septa in the generator (stretched muscles kept); "
                "rerun to continue", {"init_from": True}),
    "round21": (round21, "round 21: round 19 trained 8.4x longer with batch 32 (a GPU run: scripts/gpu_fine_tune.sh "
                "round21); rerun to continue", {"init_from": True}),
    "round22": (round22, "round 22: round 21 with streaks along the muscle fibres in the generator (a GPU run: "
                "scripts/gpu_fine_tune.sh round22); rerun to continue", {"init_from": True}),
    "round23": (round23, "round 23: a probe, round 22 continued briefly with the streaks at any angle; rerun to "
                "continue", {"init_from": True}),
    "round24": (round24, "round 24: round 23's control, round 22 continued briefly as it was; rerun to continue",
                {"init_from": True}),
    "round25": (round25, "round 25: round 24 trained longer with batch 32 (a GPU run: scripts/gpu_fine_tune.sh "
                "round25); rerun to continue", {"init_from": True}),
    "round26": (round26, "round 26: round 25 with another seed and 16 epochs (a GPU run); rerun to continue",
                {"init_from": True}),
    "round27": (round27, "round 27: a probe, round 24 continued with each slice's distance from the knee centre "
                "as input; rerun to continue", {"init_from": True}),
    "round28": (round28, "round 28: round 27's control, the same run without the position; rerun to continue",
                {"init_from": True}),
    "round29": (round29, "round 29: round 27 with the position entering at the bottleneck; rerun to continue",
                {"init_from": True}),
    "round30": (round30, "round 30: round 24 with round 29's position layers, only those trained; rerun to "
                "continue", {"init_from": True}),
    "round31": (round31, "round 31: round 28 with the marrow's intensity tied to the fat's; rerun to continue",
                {"init_from": True}),
    "round32": (round32, "round 32: round 31 with bone-shaped soft-tissue decoys; rerun to continue",
                {"init_from": True}),
    "round33": (round33, "round 33: round 24 with the marrow tied to the fat and bone-shaped decoys; rerun to "
                "continue", {"init_from": True}),
    "round34": (round34, "round 34: round 24's recipe with seed 34 (a replicate); rerun to continue",
                {"init_from": True}),
    "round35": (round35, "round 35: round 24's recipe with seed 35 (a replicate); rerun to continue",
                {"init_from": True}),
    "round36": (round36, "round 36: round 33 with seed 34 (paired with round 34); rerun to continue",
                {"init_from": True}),
    "round37": (round37, "round 37: round 33 with seed 35 (paired with round 35); rerun to continue",
                {"init_from": True}),
    "round45": (round45, "round 45: round 24 with no cortical rim in most images of dark marrow; rerun to continue",
                {"init_from": True}),
    "round46": (round46, "round 46: round 45 with seed 34 (paired with round 34); rerun to continue",
                {"init_from": True}),
    "round47": (round47, "round 47: round 45 with seed 35 (paired with round 35); rerun to continue",
                {"init_from": True}),
    "round49": (round49, "round 49: round 24 with training slices out to +-80 mm; rerun to continue",
                {"init_from": True}),
    "round50": (round50, "round 50: round 49 with seed 34 (paired with round 34); rerun to continue",
                {"init_from": True}),
    "round51": (round51, "round 51: round 49 with seed 35 (paired with round 35); rerun to continue",
                {"init_from": True}),
    "round53": (round53, "round 53: round 49 with round 29's position layers, only those trained; rerun to "
                "continue", {"init_from": True}),
    "round57": (round57, "round 57: round 53 with every layer trained (the position with the rest, +-80 mm); rerun "
                "to continue", {"init_from": True}),
}
SOUP_RECIPES = {
    "round38": (round38, "round 38: the mean of the weights of rounds 24, 34, 35, 36 and 37"),
    "round39": (round39, "round 39: the mean of the weights of rounds 24, 34 and 35"),
    "round40": (round40, "round 40: halfway between the shipped model's weights and round 38's"),
    "round44": (round44, "round 44: the mean of the weights of rounds 33, 36 and 37 (round 39's other arm)"),
    "round48": (round48, "round 48: the mean of the weights of rounds 45, 46 and 47 (round 39 with hidden rims)"),
    "round52": (round52, "round 52: the mean of the weights of rounds 49, 50 and 51 (round 39 with +-80 mm slices)"),
}


def finalize(args):
    import tempfile

    from kneeseg.bundle import load_bundle, refuse_to_replace_non_bundle, save_bundle
    from kneeseg.errors import InputError
    from kneeseg.onnx_backend import export_onnx
    from kneeseg.workflows.evaluate import card_summary, evaluate_real2d, evaluate_synthetic, read_real2d

    if args.no_synthetic and not args.cache:
        raise InputError("--no-synthetic fits the fusion on the label-map cache: name it with --cache", args.bundle)
    trained = load_bundle(args.bundle)
    if args.plane_reach == "auto":
        from kneeseg.infer import plane_reach_mm

        if plane_reach_mm(trained.card) is None:
            raise InputError("--plane-reach auto needs a bundle whose card records the synthetic training slices' "
                             "reach (training.data.synthesis); this one records none, so the reach would never "
                             "apply", args.bundle)
    if (not args.stage1 and Path(args.fine_tuned_from).resolve() == INSTALLED.resolve()
            and _made_by(INSTALLED, args.recipe)):  # the card would name the model as its own start
        raise InputError(f"the shipped model is already the output of {args.recipe}: name the bundle {args.recipe} "
                         "started from with --fine-tuned-from (docs/training.md)", INSTALLED)
    staging = Path(args.bundle).with_name(Path(args.bundle).name + ".final")
    refuse_to_replace_non_bundle(staging, "the finalized bundle", "move it away")
    if args.real2d:
        read_real2d(args.real2d)  # before OUT.final is replaced, not after
    model = trained.load_keras_model()
    extras = [Path(args.bundle) / f for f in ("history.csv", "history.png") if (Path(args.bundle) / f).exists()]
    stage1 = load_bundle(args.stage1).card.training if args.stage1 else None
    if args.stage1:
        training = {**trained.card.training, "config": {**trained.card.training["config"], "init_from": "stage 1"},
                    "recipe": "scripts/train_default.py (stages below); on a GPU: scripts/gpu_train_default.sh",
                    "stage1": stage1, "hardware": args.hardware}
    else:
        # the bundle it was fine-tuned from, read before --install replaces it
        start = load_bundle(args.fine_tuned_from).card
        before = ("the shipped default model before " + args.recipe.replace("round", "round ").replace("-", " ")
                  if Path(args.fine_tuned_from).resolve() == INSTALLED.resolve() else str(args.fine_tuned_from))
        souped = args.recipe in SOUP_RECIPES
        made = "a weight soup of the bundles in training.soup" if souped else f"a fine-tune of {before}"
        training = {**trained.card.training, "config": {**trained.card.training["config"],
                                                        "init_from": "training.soup" if souped else before},
                    "recipe": f"{_recipe_command(args.recipe)} ({made})",
                    "hardware": args.hardware,
                    "fine_tuned_from": {"description": start.description, "training": start.training,
                                        "metrics": start.metrics}}
        if args.recipe == "round15-chain":
            training["chain"] = chain_record(Path(args.bundle).parent)
    description = (f"{trained.card.network.kind} (thesis architecture, {trained.card.network.filters} filters, "
                   f"{model.count_params():,} parameters) trained only on images synthesised from real knee "
                   "label maps (domain randomisation); tri-planar fusion at inference")
    card = dataclasses.replace(trained.card, training=training, description=description, metrics={},
                               plane_reach=args.plane_reach)
    with tempfile.TemporaryDirectory(prefix=".finalize-onnx-", dir=staging.parent) as onnx_folder:
        onnx_path = export_onnx(model, Path(onnx_folder) / "model.onnx")
        save_bundle(staging, model, card, onnx_path=onnx_path, extra_files=extras)
    if args.cache and len(card.frame.planes) > 1:  # the fusion's plane weights, on the validation subjects
        from kneeseg.workflows.fusion import fit_fusion

        try:
            fit_fusion(staging, args.cache)
        except InputError as exc:  # e.g. a card without validation subjects: the plain mean stays
            print(f"fusion weights not fitted ({exc}); the bundle fuses its planes with the plain mean")
    bundle = load_bundle(staging)
    metrics = {"measured_on": args.hardware_eval, "date": args.date}
    if args.real2d:
        metrics["real2d"] = card_summary(evaluate_real2d(bundle, args.real2d))
    if args.cache and not args.no_synthetic:
        from kneeseg.synth import EVALUATION_CONFIG_RIM_OUTSIDE
        from kneeseg.workflows.evaluate import evaluate_synthetic_fibula

        for key, config in (("synthetic", None), ("synthetic_rim_outside", EVALUATION_CONFIG_RIM_OUTSIDE)):
            metrics[key] = card_summary(evaluate_synthetic(bundle, args.cache, args.synthetic_cases, config=config))
        metrics["synthetic_fibula"] = card_summary(
            evaluate_synthetic_fibula(bundle, args.cache, config=EVALUATION_CONFIG_RIM_OUTSIDE))
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
    if args.no_synthetic:
        print("its card has no synthetic numbers yet (--no-synthetic): run make eval before you commit it")
    print("its card sets no quality flag threshold yet: after make eval, run scripts/evaluate_default.py "
          "--adopt-threshold")


def fine_tune_parser(sub, name, help, work="checkpoints (default: OUT.work); the same folder resumes",
                     init_from=False, out=None):
    """The subcommand of one resumable fine-tune (:func:`_fine_tune`); ``init_from``: whether it takes
    --init-from (True: its default is the round's settings', ROUNDn; a text: that default, in words)."""
    p = sub.add_parser(name, help=help)
    p.add_argument("--cache", default=".cache/labelmaps")
    p.add_argument("--out", default=out or f"build/{name}")
    if work:  # a chain keeps each step's checkpoints beside its bundle (OUT/roundN.work)
        p.add_argument("--work", default=None, help=work)
    if init_from:
        start = init_from if isinstance(init_from, str) else Path(globals()[name.upper()]["init_from"])
        start = start.relative_to(REPO) if isinstance(start, Path) and start.is_relative_to(REPO) else start
        p.add_argument("--init-from", default=None, help=f"bundle to fine-tune (default: {start})")
    p.add_argument("--time-limit-min", type=float, default=50.0, help="stop after the epoch that crosses this")
    p.add_argument("--workers", type=int, default=None, help="synthesis processes (default: all cores but one; "
                   "several fine-tunes at once share the cores: scripts/gpu_fine_tune.sh)")
    return p


def main():
    from kneeseg.specs import PLANE_REACHES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train")
    p.add_argument("--cache", default=".cache/labelmaps")
    p.add_argument("--preset", choices=PRESETS, default="cpu")
    p.add_argument("--out", default="build/default")
    for name, (_, help, options) in FINE_TUNES.items():
        fine_tune_parser(sub, name, help, **options)
    for name, (_, help) in SOUP_RECIPES.items():
        soup_parser(sub, name, help)
    p = sub.add_parser("finalize")
    p.add_argument("bundle")
    p.add_argument("--stage1")
    p.add_argument("--real2d")
    p.add_argument("--cache", help="label-map cache: fit the fusion's plane weights on the validation subjects "
                   "and score held-out synthetic volumes")
    p.add_argument("--synthetic-cases", type=int, default=14)
    p.add_argument("--no-synthetic", action="store_true",
                   help="fit the fusion but leave the held-out synthetic volumes to make eval, which scores them "
                        "again (about 15 minutes less on two cores)")
    p.add_argument("--recipe", choices=(*FINE_TUNES, *SOUP_RECIPES), default=list(FINE_TUNES)[-1],
                   help="the fine-tune or weight soup that made BUNDLE (without --stage1; default: %(default)s)")
    p.add_argument("--fine-tuned-from", default=str(INSTALLED),
                   help="the bundle it started from (a soup: its members' start), recorded in the card (default: the "
                        "shipped model)")
    p.add_argument("--plane-reach", choices=PLANE_REACHES, default="off",
                   help="the plane reach the card sets for segment (fusion.plane_reach; default %(default)s)")
    p.add_argument("--install", action="store_true", help="replace the shipped default model with the result")
    p.add_argument("--hardware", default="one NVIDIA H100 80GB (Keras 3.15.1 on JAX 0.11.2)")
    p.add_argument("--hardware-eval", default="2-core AVX-512 EPYC CPU, TensorFlow 2.21 CPU")
    p.add_argument("--date", default=None)
    args = parser.parse_args()
    if getattr(args, "date", "x") is None:
        import datetime

        args.date = datetime.date.today().isoformat()
    commands = {"train": train, "finalize": finalize, **{name: run for name, (run, _, _) in FINE_TUNES.items()},
                **{name: run for name, (run, _) in SOUP_RECIPES.items()}}
    from kneeseg.errors import InputError

    try:
        commands[args.command](args)
    except InputError as exc:  # bad input names its problem without a traceback
        parser.exit(2, f"{parser.prog}: error: {exc}\n")


if __name__ == "__main__":
    main()

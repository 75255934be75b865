import argparse
import json
import os
import signal
import subprocess
import sys
import time

from kneeseg import contract

MODE = os.environ.get("KNEESEG_FAKE_MODE", "ok")


def emit(**obj):
    print(json.dumps(obj), flush=True)


def segment(args):
    import numpy as np
    import SimpleITK as sitk

    print("fake-kneeseg: a warning line that is not JSON", flush=True)
    print("fake-kneeseg: stderr chatter", file=sys.stderr, flush=True)
    args.input = args.inputs[0]
    emit(stage="load", fraction=0.05, message=f"reading {os.path.basename(args.input)}")
    if MODE == "badinput":
        emit(stage="error", fraction=0.05, message=f"{args.input}: is constant (every voxel is 0); nothing to segment", error="input")
        return 2
    if MODE == "checksum":
        emit(stage="error", fraction=0.0, message=f"{args.model}: checksum mismatch for model.keras (bundle is damaged)", error="input")
        return 2
    if MODE == "missingmodule":
        exc = ModuleNotFoundError("No module named 'tensorflow.keras'", name="tensorflow.keras")
        print(f"Traceback (most recent call last):\n  File \"x\", line 1\nModuleNotFoundError: {exc}", file=sys.stderr,
              flush=True)
        emit(stage=contract.STAGE_ERROR, fraction=0.1, message=f"internal error: {exc}", error=contract.error_kind(exc),
             **contract.error_fields(exc))
        return contract.EXIT_CODE_OF_ERROR[contract.error_kind(exc)]
    if MODE == "crash":
        print("Traceback (most recent call last):\n  File \"infer.py\", line 42, in predict\nRuntimeError: fake failure in predict",
              file=sys.stderr, flush=True)
        emit(stage="error", fraction=0.3, message="RuntimeError: fake failure in predict", error="internal")
        return 1
    if MODE == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
    if MODE == "hang":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        with open(os.environ["KNEESEG_FAKE_PIDFILE"], "w") as f:
            f.write(f"{os.getpid()} {child.pid}\n")
        emit(stage="predict", fraction=0.2, message="predicting (forever)")
        time.sleep(120)
        return 0
    image = sitk.ReadImage(args.input)
    array = sitk.GetArrayFromImage(image)
    labels = np.clip(np.floor(array / 100.0), 0, 4).astype(np.uint8)
    if MODE == "unknownlabel":
        labels[0, 0, 0] = 7
    emit(stage="predict", fraction=0.5, message=f"planes {args.planes or 'default'} on {args.device}")
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(image)
    if MODE == "wronggeometry":
        out.SetOrigin(tuple(o + 5.0 for o in image.GetOrigin()))
    if MODE == "noresult":
        return 0
    sitk.WriteImage(out, args.output, True)
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    names = {1: "Femur", 2: "Tibia", 3: "Fibula", 4: "Patella"}
    volumes = {name: float(np.count_nonzero(labels == v)) * voxel_ml for v, name in names.items()}
    flagged = MODE == "flagged"
    quality = {"score": 0.31 if flagged else 0.87, "flag": flagged, "threshold": 0.5, "threshold_from": "card",
               "reasons": ["Patella: the planes' predictions disagree (0.31)"] if flagged else [],
               "components": {}}
    if args.volumes_json:
        with open(args.volumes_json, "w") as f:
            json.dump({"volumes_ml": volumes, "quality": quality}, f)
    with open(os.path.join(os.path.dirname(args.output), "argv.json"), "w") as f:
        json.dump(sys.argv[1:], f)
    result = {"labelmap": args.output, "volumes_ml": volumes}
    if MODE != "qualityinjson":  # the quality only in the volumes JSON
        result["quality"] = quality
    emit(stage="done", fraction=1.0, message="done", result=result)
    return 0


def train(args):
    logs_dir = args.data
    emit(stage="load", fraction=0.0, message=f"reading {len(os.listdir(logs_dir))} entries from {logs_dir}")
    for epoch in range(1, args.epochs + 1):
        loss = 1.0 / epoch
        emit(stage="epoch", fraction=epoch / args.epochs, message=f"epoch {epoch}/{args.epochs}", epoch=epoch,
             logs={"loss": loss, "val_loss": loss * 1.1, "mean_dice": 1.0 - loss / 3, "val_mean_dice": 1.0 - loss / 2})
        if MODE == "slowtrain":
            time.sleep(0.3)
        if MODE == "trainfail" and epoch == 2:
            print("Traceback (most recent call last):\nMemoryError: fake out of memory", file=sys.stderr, flush=True)
            return 1
    os.makedirs(args.output, exist_ok=True)
    card = {"name": os.path.basename(args.output), "labels": [
        {"name": "Femur", "value": 1, "color": [241, 214, 145], "snomed": {"code": "71341001", "scheme": "SCT", "meaning": "Femur"}}]}
    with open(os.path.join(args.output, "card.json"), "w") as f:
        json.dump(card, f)
    with open(os.path.join(args.output, "train-argv.json"), "w") as f:
        json.dump(sys.argv[1:], f)
    emit(stage="done", fraction=1.0, message="trained", result={"bundle": args.output})
    return 0


def main():
    parser = argparse.ArgumentParser(prog="kneeseg")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("segment", "train"):
        contract.add_options(sub.add_parser(command), command)
    args = parser.parse_args()
    return segment(args) if args.command == "segment" else train(args)


if __name__ == "__main__":
    sys.exit(main())

"""One measurement in a fresh process (honest peak RSS and first-call latency): ``python -m bench.worker TASK JSON``.

Each task prints its result as the last stdout line (``BENCH-RESULT {...}``, see ``common.emit``).
"""

import json
import os
import sys
import tempfile
import time
from pathlib import Path

T_START = time.perf_counter()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from bench import common  # noqa: E402


def _predictor(bundle, backend, precision):
    from kneeseg import infer

    if backend == "keras":
        try:
            return infer.KerasPredictor(bundle, precision)
        except TypeError:  # a baseline version without precisions
            return infer.KerasPredictor(bundle)
    from kneeseg.onnx_backend import OnnxPredictor

    return OnnxPredictor(bundle)


def task_firstcall(args):
    """Process start to the first network output: imports, model load, first batch of 8 slices."""
    t0 = T_START
    if args["backend"] == "keras":
        import keras  # noqa: F401  (TensorFlow)
    else:
        import onnxruntime  # noqa: F401
    from kneeseg.bundle import load_bundle

    t_import = time.perf_counter() - t0
    bundle = load_bundle(args["bundle"])
    t = time.perf_counter()
    predictor = _predictor(bundle, args["backend"], args.get("precision"))
    t_load = time.perf_counter() - t
    x = np.random.default_rng(0).standard_normal((8, 224, 224, 1)).astype(np.float32)
    t = time.perf_counter()
    predictor(x)
    t_first = time.perf_counter() - t
    t = time.perf_counter()
    predictor(x)
    t_second = time.perf_counter() - t
    return {"import_s": t_import, "load_s": t_load, "first_call_s": t_first, "second_call_s": t_second,
            "process_start_to_first_output_s": time.perf_counter() - t0 - t_second, "peak_rss_mb": common.peak_rss_mb()}


def task_network(args):
    """Slices/s and FLOP/s of whole volumes of 24 and 80 slices through predict_frame (batch 8)."""
    from kneeseg import infer
    from kneeseg.bundle import load_bundle

    bundle = load_bundle(args["bundle"])
    predictor = _predictor(bundle, args["backend"], args.get("precision"))
    flops = common.unet_flops_per_slice(bundle.load_keras_model()) if args["backend"] == "keras" else args["flops"]
    rng = np.random.default_rng(0)
    out = {"flops_per_slice": flops, "batch_size": args.get("batch_size", 8), "volumes": {}}
    # The matmul peak is measured here, interleaved with the network runs (the machine's speed drifts),
    # after a pause: right after a run, numpy's and the engine's thread pools spin on each other's cores.
    def peak():
        time.sleep(1.0)
        return common.matmul_gflops()

    peaks = [peak()]
    for n in args.get("slices", (24, 80)):
        frame = rng.standard_normal((n, 224, 224)).astype(np.float32)
        infer.predict_frame(predictor, frame[:8], bundle.card, out["batch_size"])  # warm-up
        times = []
        for _ in range(args.get("repeats", 3)):
            t = time.perf_counter()
            infer.predict_frame(predictor, frame, bundle.card, out["batch_size"])
            times.append(time.perf_counter() - t)
            peaks.append(peak())
        seconds = common.median(times)
        out["volumes"][str(n)] = {"seconds": seconds, "all_s": times, "slices_per_s": n / seconds,
                                  "gflops": n * flops / seconds / 1e9}
    out["matmul_peaks_in_process"] = peaks
    out["peak_rss_mb"] = common.peak_rss_mb()
    return out


def task_matmul(args):
    """This machine's numpy float32 matmul rate, in a process of its own (no other thread pools spinning)."""
    return {"gflops": common.matmul_gflops(repeats=args.get("repeats", 7))}


def task_agreement(args):
    """Largest difference of the other engines' outputs from Keras float32 on the same slices."""
    from kneeseg.bundle import load_bundle
    from kneeseg.infer import KerasPredictor, cpu_has_native_bf16
    from kneeseg.onnx_backend import OnnxPredictor

    bundle = load_bundle(args["bundle"])
    x = np.random.default_rng(1).standard_normal((16, 224, 224, 1)).astype(np.float32)
    reference = KerasPredictor(bundle, "float32")(x)
    out = {"onnx_max_abs_diff": float(np.abs(OnnxPredictor(bundle)(x) - reference).max())}
    if cpu_has_native_bf16():
        out["bfloat16_max_abs_diff"] = float(np.abs(KerasPredictor(bundle, "bfloat16")(x) - reference).max())
    return out


def _stage_times(timings, read_s, write_s):
    stages = {"read": read_s, "n4": timings.get("n4", 0.0), "centre": timings.get("centre", 0.0),
              "network": sum(v for k, v in timings.items() if k.startswith("network_")),
              "back_resampling": sum(v for k, v in timings.items() if k.startswith("resample_back")), "postprocess": timings.get("postprocess", 0.0),
              "write": write_s}
    stages["total"] = sum(stages.values())
    return stages


def task_e2e(args):
    """Read, segment, write one volume: per-stage medians of ``repeats`` runs after a warm-up."""
    from kneeseg import io
    from kneeseg.bundle import load_bundle
    from kneeseg.infer import SegmentOptions, segment

    bundle = load_bundle(args["bundle"])
    predictor = _predictor(bundle, args["backend"], args.get("precision"))
    options = SegmentOptions(planes=tuple(args["planes"]), n4=args.get("n4", False), backend=args["backend"])
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(1 + args.get("repeats", 3)):
            t = time.perf_counter()
            image = io.read_volume(args["volume"])
            read_s = time.perf_counter() - t
            result = segment(image, bundle, options, predictor=predictor)
            t = time.perf_counter()
            io.write_labelmap(result.labelmap, Path(tmp) / "labels.nrrd")
            write_s = time.perf_counter() - t
            if n > 0:  # the first run is the warm-up
                runs.append(_stage_times(result.timings, read_s, write_s))
            foreground = float((io._sitk().GetArrayViewFromImage(result.labelmap) > 0).mean())
    out = {"stages": {k: common.median([r[k] for r in runs]) for k in runs[0]}, "runs": runs,
           "size": list(image.GetSize()), "foreground_fraction": foreground, "peak_rss_mb": common.peak_rss_mb()}
    if args.get("stand_in"):
        out["stand_in"] = _stand_in_content(image, bundle, args["planes"], result.centre)
    return out


def _stand_in_content(image, bundle, planes, centre, repeats=3):
    """Back-resampling and post-processing on realistic network output.

    An untrained network labels most voxels (the worst case for the content-dependent stages). A
    trained one labels the bones: here the bones of a real knee label map (pymskt DESS, MIT; placed
    at the knee centre) stand in for its output, as softened one-hot probabilities on each frame.
    """
    import SimpleITK as sitk
    from scipy import ndimage

    from kneeseg import postprocess, preprocess

    path = common.SHARED / "labelmaps" / "mskt" / "mskt_dess_bones_fibula.nrrd"
    if not path.exists():
        return None
    labels = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(labels)
    bones = np.zeros(array.shape, np.uint8)
    for source, target in ((5, 1), (6, 2), (8, 3), (7, 4)):  # femur, tibia, fibula, patella
        bones[array == source] = target
    stand_in = sitk.GetImageFromArray(bones)
    stand_in.CopyInformation(labels)
    shift = np.asarray(centre) - np.asarray(preprocess.knee_centre_from_labels(stand_in))
    stand_in.SetOrigin(tuple(np.asarray(labels.GetOrigin()) + shift))
    spec = bundle.card.frame
    frames = []
    for plane in planes:
        frame = preprocess.model_frame(image, plane, centre, window_mm=spec.window_mm, size=spec.size,
                                       min_slice_mm=spec.min_slice_mm)
        one = sitk.GetArrayFromImage(preprocess.resample_to_frame(stand_in, frame, "nearest"))
        probs = np.eye(5, dtype=np.float32)[one]
        probs = ndimage.gaussian_filter(probs, sigma=(0.5, 1.0, 1.0, 0))
        frames.append((frame, probs / probs.sum(axis=-1, keepdims=True)))
    fuse, post = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        label_array, _ = preprocess.fuse_frames(frames, image)
        fuse.append(time.perf_counter() - t)
        t = time.perf_counter()
        cleaned = postprocess.clean_labelmap(label_array, [1, 2, 3, 4])
        postprocess.bone_volumes_ml(cleaned, image.GetSpacing(), bundle.labels)
        post.append(time.perf_counter() - t)
    return {"back_resampling": common.median(fuse), "postprocess": common.median(post),
            "foreground_fraction": float((cleaned > 0).mean()), "source": str(path.relative_to(common.SHARED))}


def task_n4(args):
    """The pipeline's N4 settings vs SimpleITK's defaults on the same image and mask."""
    import SimpleITK as sitk

    from kneeseg import io, preprocess

    image = io.read_volume(args["volume"])
    t = time.perf_counter()
    mask = preprocess.foreground_mask(image)
    mask_s = time.perf_counter() - t
    tuned_times = []
    for _ in range(args.get("repeats", 3)):
        t = time.perf_counter()
        tuned = preprocess.n4_bias_correct(image)  # as the pipeline runs it: its own mask on the shrunken copy
        tuned_times.append(time.perf_counter() - t)
    out_factors = preprocess.N4Settings().shrink_factors(image)
    out = {"settings": {**preprocess.N4Settings().__dict__, "shrink_factors_here": out_factors}, "mask_s": mask_s,
           "tuned_s": common.median(tuned_times),
           "tuned_all_s": tuned_times, "size": list(image.GetSize())}
    default_path = args.get("default_cache")
    if default_path and Path(default_path).exists() and Path(default_path + ".json").exists():
        default = sitk.ReadImage(default_path)
        out.update(json.loads(Path(default_path + ".json").read_text()), default_cached=True)
    elif args.get("default", True):
        n4 = sitk.N4BiasFieldCorrectionImageFilter()
        t = time.perf_counter()
        default = n4.Execute(sitk.Cast(image, sitk.sitkFloat32), sitk.Cast(mask, sitk.sitkUInt8))
        facts = {"default_s": time.perf_counter() - t, "default_settings": {
            "iterations": list(n4.GetMaximumNumberOfIterations()), "convergence_threshold": n4.GetConvergenceThreshold(),
            "control_points": list(n4.GetNumberOfControlPoints()), "spline_order": n4.GetSplineOrder(),
            "shrink_factor": 1}}
        out.update(facts, default_cached=False)
        if default_path:
            sitk.WriteImage(default, default_path, True)
            Path(default_path + ".json").write_text(json.dumps(facts))
    else:
        return out
    inside = sitk.GetArrayViewFromImage(mask).astype(bool)
    a = sitk.GetArrayViewFromImage(default)[inside]
    b = sitk.GetArrayViewFromImage(tuned)[inside]
    out["correlation_in_mask"] = float(np.corrcoef(a, b)[0, 1])
    out["time_ratio"] = out["default_s"] / out["tuned_s"]
    # The settings the pipeline had before (uniform shrink 4, 3 levels, threshold 1e-4), for the record.
    previous = preprocess.N4Settings(shrink_factor=4, iterations=(50, 40, 30), convergence_threshold=1e-4)
    t = time.perf_counter()
    before = preprocess.n4_bias_correct(image, previous, mask=mask)
    out["previous"] = {"settings": previous.__dict__, "seconds": time.perf_counter() - t,
                       "correlation_in_mask": float(np.corrcoef(a, sitk.GetArrayViewFromImage(before)[inside])[0, 1])}
    return out


def _toy_pairs(folder, n=3):
    """Labelled toy knees for a paired-volume training source."""
    import SimpleITK as sitk

    sys.path.insert(0, str(common.REPO / "Testing"))
    from conftest import toy_knee

    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for i in range(n):
        image, labels = toy_knee(seed=i, size=(96, 96, 80), spacing=(1.5, 1.5, 1.5), noise=0.1)
        sitk.WriteImage(image, str(folder / "images" / f"case{i}.nrrd"))
        sitk.WriteImage(labels, str(folder / "labels" / f"case{i}.nrrd"))
    return folder


def task_train(args):
    """Training slices/s: the project's loop (train.fit + a data source) or plain model.fit on arrays."""
    import keras

    from kneeseg import train
    from kneeseg.labels import SEPARATE_BONES

    steps, batch = args.get("steps", 12), 8
    config = train.TrainConfig(epochs=3, steps_per_epoch=steps, validation_steps=1, batch_size=batch, patience=99,
                               planes=("sagittal",), workers=args.get("workers", 1))
    epoch_ends = []
    peak_before = common.matmul_gflops()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args["loop"] == "project":
            from kneeseg.datasets import PairedSlices, find_pairs

            source_kind = "paired toy volumes (augmented)"
            cache = common.REPO / ".cache" / "labelmaps"
            if args.get("source") == "memory":
                from bench.gpu import _RandomSource

                train_source, val_source = _RandomSource(steps, batch), _RandomSource(1, batch, seed=1)
                source_kind = "in-memory batches (no data preparation)"
            elif args.get("synthetic") and (cache / "manifest.json").exists():
                from kneeseg import synth

                files = synth.cache_files(cache)
                train_source = synth.SliceSynthesizer(files, planes=config.planes, batch_size=batch, steps=steps)
                val_source = synth.SliceSynthesizer(files, planes=config.planes, batch_size=batch, steps=1, fixed=True)
                source_kind = "synthetic slices from the label-map cache"
            else:
                pairs = find_pairs(_toy_pairs(tmp / "data"))
                train_source = PairedSlices(pairs, planes=config.planes, batch_size=batch, steps=steps, augment=True)
                val_source = PairedSlices(pairs, planes=config.planes, batch_size=batch, steps=1, augment=False)

            def progress(stage, fraction, message, **extra):
                if stage == "epoch":
                    epoch_ends.append(time.perf_counter())

            start = time.perf_counter()
            train.fit(config, SEPARATE_BONES, train_source, val_source, tmp / "work", progress)
            epoch_times = np.diff([start] + epoch_ends)
        else:
            source_kind = "in-memory arrays"
            if args.get("precision") == "bfloat16":
                keras.config.set_dtype_policy("mixed_bfloat16")
            model = train.build_and_compile(config, SEPARATE_BONES)
            rng = np.random.default_rng(0)
            x = rng.standard_normal((steps * batch, 224, 224, 1)).astype(np.float32)
            y = rng.integers(0, 5, (steps * batch, 224, 224)).astype(np.uint8)

            class Clock(keras.callbacks.Callback):
                def on_epoch_end(self, epoch, logs=None):
                    epoch_ends.append(time.perf_counter())

            start = time.perf_counter()
            model.fit(x, y, batch_size=batch, epochs=3, validation_data=(x[:batch], y[:batch]), callbacks=[Clock()],
                      verbose=0, shuffle=True)
            epoch_times = np.diff([start] + epoch_ends)
    steady = epoch_times[1:]  # the first epoch traces the graph
    from kneeseg.model import build_unet_2d

    peaks = [peak_before, common.matmul_gflops()]
    return {"matmul_peak_gflops": common.median(peaks), "flops_per_slice": common.unet_flops_per_slice(build_unet_2d()),
            "loop": args["loop"], "precision": args.get("precision", "float32"), "source": source_kind,
            "source_arg": args.get("source", "synthetic"),
            "steps_per_epoch": steps, "batch_size": batch, "epoch_s": list(epoch_times),
            "slices_per_s": steps * batch / common.median(steady), "peak_rss_mb": common.peak_rss_mb()}


def task_scaling(args):
    """End to end (one plane) on a synthetic volume of ``slices`` slices: time and peak memory."""
    import SimpleITK as sitk

    from kneeseg.bundle import load_bundle
    from kneeseg.infer import SegmentOptions, segment

    bundle = load_bundle(args["bundle"])
    predictor = _predictor(bundle, "keras", "float32")
    image = common.synthetic_knee(size=(512, 512, args["slices"]), spacing=(0.3125, 0.3125, args["slice_mm"]))
    sitk.WriteImage(image, str(Path(args["tmp"]) / "scaling.nrrd"), False)
    from kneeseg import io

    runs = []
    for n in range(1 + args.get("repeats", 1)):
        t = time.perf_counter()
        image = io.read_volume(Path(args["tmp"]) / "scaling.nrrd")
        read_s = time.perf_counter() - t
        result = segment(image, bundle, SegmentOptions(planes=("sagittal",), centre="image"), predictor=predictor)
        t = time.perf_counter()
        io.write_labelmap(result.labelmap, Path(args["tmp"]) / "scaling-labels.nrrd")
        if n > 0:
            runs.append(_stage_times(result.timings, read_s, time.perf_counter() - t))
    return {"slices": args["slices"], "voxels": int(np.prod(image.GetSize())),
            "stages": {k: common.median([r[k] for r in runs]) for k in runs[0]}, "peak_rss_mb": common.peak_rss_mb()}


TASKS = {name[5:]: fn for name, fn in globals().items() if name.startswith("task_")}

if __name__ == "__main__":
    task, arguments = sys.argv[1], json.loads(sys.argv[2])
    common.emit(TASKS[task](arguments))

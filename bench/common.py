"""Shared pieces of the benchmarks: machine facts, matmul peak, FLOP counts, volumes, a timing bundle."""

import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("KNEESEG_SHARED_DATA", REPO.parent / "shared" / "data"))
REAL = {"dess": SHARED / "real_unlabelled" / "dess_sagittal.nrrd",
        "mese": SHARED / "real_unlabelled" / "mese_t2_sagittal.nrrd"}
# Synthetic stand-ins with the same grids when the real volumes are absent.
SYNTHETIC = {"dess": dict(size=(512, 512, 80), spacing=(0.3125, 0.3125, 1.5)),
             "mese": dict(size=(256, 256, 24), spacing=(0.625, 0.625, 4.0))}
# Sagittal acquisition: columns run posterior, rows inferior, slices right-to-left (as the DESS header).
SAGITTAL_DIRECTION = (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux ru_maxrss is in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def matmul_gflops(n=2048, repeats=5) -> float:
    """numpy float32 n x n matmul rate (best of ``repeats``): this machine's practical peak right now."""
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = a.copy()
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2.0 * n ** 3 / best / 1e9


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def median(values):
    return float(np.median(values)) if len(values) else float("nan")


def machine() -> dict:
    """What the numbers were measured on."""
    info = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "python": platform.python_version(),
            "platform": platform.platform(), "cpus_available": len(os.sched_getaffinity(0))}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                           if line.startswith("model name"))
        flags = next(line for line in cpuinfo.splitlines() if line.startswith("flags")).split()
        info["cpu_features"] = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8") if f in flags]
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)
    except (ValueError, OSError):
        pass
    info["load_average"] = list(os.getloadavg())
    from importlib import metadata

    versions = {}
    for dist in ("numpy", "scipy", "SimpleITK", "tensorflow-cpu", "tensorflow", "keras", "onnxruntime", "tf2onnx",
                 "dask", "distributed"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    info["versions"] = versions
    return info


def unet_flops_per_slice(model) -> float:
    """Multiply-add FLOPs (2 per MAC) of one forward pass of a 2D Keras U-Net, per input slice."""
    total = 0.0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            h, w, c_out = layer.output.shape[1:]
            c_in = layer.input.shape[-1]
            total += 2.0 * h * w * np.prod(layer.kernel_size) * c_in * c_out
        elif kind == "Conv2DTranspose":
            h, w, c_in = layer.input.shape[1:]
            total += 2.0 * h * w * np.prod(layer.kernel_size) * c_in * layer.filters
    return total


def timing_bundle(folder, planes=("sagittal", "coronal", "axial"), onnx=True, **model_kwargs):
    """A bundle of the default architecture with UNTRAINED weights, for timing only (never shipped).

    Network time does not depend on the weights; the content-dependent stages (back-resampling box,
    post-processing) do, see ``stand_in_frames``.
    """
    from kneeseg import bundle as bundles
    from kneeseg import train
    from kneeseg.labels import SEPARATE_BONES
    from kneeseg.model import build_unet_2d

    folder = Path(folder)
    if (folder / "card.json").exists():
        return folder
    config = train.TrainConfig.from_flat(planes=tuple(planes))
    model = build_unet_2d(**model_kwargs)
    state = {"epoch": -1, "best": float("nan"), "best_epoch": -1}
    card = train.make_card(config, SEPARATE_BONES, {"data": {"kind": "none: untrained, for benchmarks only"}}, state,
                           name="untrained-benchmark-model", description="UNTRAINED weights: timing only")
    graph = None
    if onnx:
        from kneeseg.onnx_backend import export_onnx

        graph = export_onnx(model, folder.parent / f"{folder.name}.onnx")
    return bundles.save_bundle(folder, model, card, onnx_path=graph)


def synthetic_knee(size, spacing, direction=SAGITTAL_DIRECTION, seed=0):
    """A knee-like float32 SimpleITK volume: bright soft tissue, darker bones, smooth bias, noise."""
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    nx, ny, nz = size
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in (nz, ny, nx)), indexing="ij", sparse=True)
    body = (x ** 2 + z ** 2 * 0.6 + 0 * y) < 0.8
    femur = (x / 0.35) ** 2 + ((y + 0.45) / 0.45) ** 2 + (z / 0.6) ** 2 < 1
    tibia = (x / 0.33) ** 2 + ((y - 0.45) / 0.42) ** 2 + (z / 0.55) ** 2 < 1
    image = np.where(body, 0.8, 0.05).astype(np.float32)
    image[np.broadcast_to(femur | tibia, image.shape)] = 0.4
    image *= (1.0 + 0.2 * x + 0.1 * y).astype(np.float32)
    image += rng.normal(0, 0.03, image.shape).astype(np.float32)
    out = sitk.GetImageFromArray(image * 1000)
    out.SetSpacing(spacing)
    out.SetDirection(direction)
    out.SetOrigin((0.0, 0.0, 0.0))
    return out


def volume_path(name, workdir) -> tuple:
    """(path, 'real' | 'synthetic') of the DESS/MESE volume, synthesised into ``workdir`` if absent."""
    if REAL[name].exists():
        return REAL[name], "real"
    import SimpleITK as sitk

    path = Path(workdir) / f"synthetic_{name}.nrrd"
    if not path.exists():
        sitk.WriteImage(synthetic_knee(**SYNTHETIC[name]), str(path), True)
    return path, "synthetic"


def emit(result: dict):
    """Print a worker's result as the last stdout line (the runner reads it)."""
    sys.stdout.write("\nBENCH-RESULT " + json.dumps(result, default=float) + "\n")
    sys.stdout.flush()

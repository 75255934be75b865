"""Speed and memory benchmarks of kneeseg: prints a table, writes JSON and the Markdown report.

    python -m bench.run --out docs/benchmarks.json --markdown docs/benchmarks.md

Measures on the real volumes in ../shared/data/real_unlabelled when present (else synthetic volumes
of the same grids), each case in a fresh process (honest peak RSS), medians of several runs after
a warm-up, with this machine's matmul peak measured in the same processes. The network is the
default architecture (2D U-Net, 32 filters, depth 4, input 224) with UNTRAINED weights in a bundle
built under --workdir: timing does not depend on the weights (content-dependent stages are also
timed on a real knee label map standing in for a trained network's output).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench import common

SECTIONS = ("network", "e2e", "n4", "train", "scaling")


def run_worker(task, args, timeout=3600, package_dir=None):
    """Run one task in a fresh Python process; return its result dict (or an error entry).

    ``package_dir``: a folder whose ``kneeseg`` replaces this checkout's (a baseline revision).
    """
    paths = [str(common.REPO), str(package_dir or common.REPO / "KneeSegmentation"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "TF_CPP_MIN_LOG_LEVEL": "3"}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bench.worker", task, json.dumps(args)], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=common.REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH-RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        print(f"  !! {task} failed: {' | '.join(tail)}", file=sys.stderr)
        return {"error": "\n".join(tail)}
    result = json.loads(lines[-1][len("BENCH-RESULT "):])
    result["wall_s"] = time.perf_counter() - t
    return result


def _say(message):
    print(message, flush=True)


def bench_network(bundle, repeats):
    from kneeseg.infer import cpu_has_native_bf16

    engines = [("keras", "float32"), ("onnx", None)]
    if cpu_has_native_bf16():
        engines.insert(1, ("keras", "bfloat16"))
    out = {"engines": {}, "first_call": {}}
    flops = None
    for backend, precision in engines:
        name = backend if precision is None else f"{backend}-{precision}"
        _say(f"network: {name}")
        peaks = [run_worker("matmul", {}).get("gflops")]
        result = run_worker("network", {"bundle": str(bundle), "backend": backend, "precision": precision,
                                        "repeats": repeats, "flops": flops})
        peaks.append(run_worker("matmul", {}).get("gflops"))
        flops = flops or result.get("flops_per_slice")
        if "volumes" in result and all(peaks):
            # The yardstick: the median of the peaks measured between the network runs; the separate
            # processes' peaks before and after are kept for reference.
            result["matmul_peaks_separate"] = peaks
            result["matmul_peak_gflops"] = float(np.median(result["matmul_peaks_in_process"]))
            result["fraction_of_peak"] = (max(v["gflops"] for v in result["volumes"].values())
                                          / result["matmul_peak_gflops"])
        out["engines"][name] = result
        out["first_call"][name] = run_worker("firstcall", {"bundle": str(bundle), "backend": backend,
                                                           "precision": precision})
    out["agreement"] = run_worker("agreement", {"bundle": str(bundle)})
    out["install_mb"] = install_sizes()
    return out


def install_sizes() -> dict:
    """Installed size (MB) of an inference-only environment per engine: the engine and its dependencies."""
    from importlib import metadata

    from packaging.requirements import Requirement

    def closure(names):
        """The distributions ``names`` pull in (non-optional requirements for this platform)."""
        seen, todo = set(), list(names)
        while todo:
            name = todo.pop().lower().replace("_", "-")
            if name in seen:
                continue
            try:
                dist = metadata.distribution(name)
            except metadata.PackageNotFoundError:
                continue
            seen.add(name)
            for text in dist.requires or []:
                req = Requirement(text)
                if req.marker is None or req.marker.evaluate({"extra": ""}):
                    todo.append(req.name)
        return seen

    def size_mb(dists):
        total = 0
        for name in dists:
            for f in metadata.distribution(name).files or []:
                try:
                    total += f.size or 0
                except AttributeError:
                    pass
        return total / 2 ** 20

    core = {"numpy", "scipy", "SimpleITK", "pillow"}  # the pipeline around the network
    tf = "tensorflow-cpu" if _installed("tensorflow-cpu") else "tensorflow"
    out = {}
    for engine, names in (("onnxruntime", {"onnxruntime"}), ("tensorflow", {tf, "keras"})):
        engine_only = closure(names)
        out[engine] = {"engine_and_deps_mb": round(size_mb(engine_only), 1),
                       "with_pipeline_mb": round(size_mb(engine_only | closure(core)), 1),
                       "distributions": sorted(engine_only)}
    return out


def _installed(name):
    from importlib import metadata

    try:
        metadata.distribution(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def bench_e2e(bundle, workdir, repeats, stand_in):
    from kneeseg.infer import cpu_has_native_bf16

    cases = []
    for volume in ("dess", "mese"):
        path, kind = common.volume_path(volume, workdir)
        for planes in (["sagittal"], ["sagittal", "coronal", "axial"]):
            cases.append(dict(volume=volume, path=path, kind=kind, planes=planes, backend="keras", precision="float32"))
    dess, kind = common.volume_path("dess", workdir)
    cases.append(dict(volume="dess", path=dess, kind=kind, planes=["sagittal", "coronal", "axial"], backend="onnx",
                      precision=None))
    if cpu_has_native_bf16():
        for planes in (["sagittal"], ["sagittal", "coronal", "axial"]):
            cases.append(dict(volume="dess", path=dess, kind=kind, planes=planes, backend="keras",
                              precision="bfloat16"))
    out = []
    for case in cases:
        label = f"{case['volume']} {len(case['planes'])} plane(s) {case['backend']} {case['precision'] or ''}".strip()
        _say(f"end to end: {label}")
        result = run_worker("e2e", {"bundle": str(bundle), "volume": str(case["path"]), "planes": case["planes"],
                                    "backend": case["backend"], "precision": case["precision"], "repeats": repeats,
                                    "stand_in": stand_in and case["backend"] == "keras"
                                    and case["precision"] == "float32"})
        out.append({**{k: v for k, v in case.items() if k != "path"}, "label": label, **result})
    return out


def bench_n4(workdir, repeats, default):
    path, kind = common.volume_path("dess", workdir)
    _say("N4: tuned vs SimpleITK defaults (the default run takes minutes; cached in --workdir)")
    cache = str(Path(workdir) / f"n4_default_{kind}_dess.nrrd")
    result = run_worker("n4", {"volume": str(path), "repeats": repeats, "default": default, "default_cache": cache},
                        timeout=4 * 3600)
    return {"volume": "dess", "kind": kind, **result}


def bench_train(steps):
    """Plain model.fit, the project's loop on in-memory batches and on its synthetic source, alternated."""
    from kneeseg.infer import cpu_has_native_bf16

    cases = [("plain", "float32", None), ("project", "float32", "memory"), ("project", "float32", "synthetic")]
    if cpu_has_native_bf16():
        cases.append(("plain", "bfloat16", None))
    out = []
    for loop, precision, source in cases:
        _say(f"training: {loop} loop, {precision}, {source or 'arrays'}")
        out.append(run_worker("train", {"loop": loop, "precision": precision, "steps": steps, "synthetic": True,
                                        "source": source, "matmul_peak": True}))
    return out


def bench_scaling(bundle, workdir, slices=(24, 80, 160, 300)):
    out = []
    for n in slices:
        _say(f"scaling: {n} slices")
        out.append(run_worker("scaling", {"bundle": str(bundle), "slices": n, "slice_mm": 0.5, "tmp": str(workdir)}))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/benchmarks.json", help="JSON results (default %(default)s)")
    parser.add_argument("--markdown", default="docs/benchmarks.md", help="Markdown report (default %(default)s)")
    parser.add_argument("--workdir", default=".cache/bench", help="timing bundle, synthetic volumes, N4 cache")
    parser.add_argument("--only", help=f"comma-separated sections to run ({','.join(SECTIONS)}); "
                        "the others are kept from --out when it exists")
    parser.add_argument("--repeats", type=int, default=3, help="measured runs per case after a warm-up")
    parser.add_argument("--quick", action="store_true", help="1 run per case, shorter training (a smoke test)")
    parser.add_argument("--baseline", metavar="GIT_REF",
                        help="also time the DESS cases with the kneeseg package of this git revision (before/after)")
    parser.add_argument("--untrained", action="store_true",
                        help="time end to end with the untrained timing model even when the shipped one exists")
    parser.add_argument("--n4-default", action="store_true",
                        help="run SimpleITK's default-settings N4 on the full DESS volume when it is not cached in "
                        "--workdir (about 40 minutes on 2 cores); without it, the last measured default is reused "
                        "from --out when there is one (its time and correlation, marked with their date)")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    sections = SECTIONS if not args.only else tuple(s.strip() for s in args.only.split(","))
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()) if out_path.exists() and args.only else {}
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    results["machine"] = common.machine()
    results["matmul_peak_gflops_at_start"] = common.matmul_gflops()
    _say(f"machine: {results['machine'].get('cpu')}, {results['machine']['cpus_available']} CPUs, "
         f"matmul peak {results['matmul_peak_gflops_at_start']:.0f} GFLOP/s")
    bundle = None
    if {"network", "e2e", "scaling"} & set(sections) or args.baseline:
        _say("building the untrained timing bundle (default architecture)")
        bundle = run_worker_bundle(workdir)
    shipped = common.REPO / "KneeSegmentation" / "Resources" / "Models" / "knee-bones-default"
    e2e_bundle = shipped if (shipped / "card.json").exists() and not args.untrained else bundle
    results["e2e_model"] = ("the shipped default model" if e2e_bundle == shipped else
                            "an untrained model of the default architecture (the shipped one is absent)")
    started = time.perf_counter()
    partial = out_path.with_name(out_path.name + ".partial")

    def save():  # after every section: a crash late in a long run keeps what was measured
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(results, indent=1, default=float) + "\n")

    if "network" in sections:
        results["network"] = bench_network(bundle, repeats)
        save()
    if "e2e" in sections:
        results["e2e"] = bench_e2e(e2e_bundle, workdir, repeats, stand_in=e2e_bundle != shipped)
        save()
    if args.baseline:
        try:
            results["baseline"] = bench_baseline(args.baseline, e2e_bundle, workdir, repeats)
        except (subprocess.CalledProcessError, OSError) as exc:
            print(f"  !! baseline {args.baseline} failed: {exc}", file=sys.stderr)
        save()
    if "n4" in sections:
        previous = results.get("n4") or (json.loads(out_path.read_text()).get("n4") if out_path.exists() else None)
        results["n4"] = bench_n4(workdir, repeats, default=args.n4_default)
        if "default_s" not in results["n4"] and previous and "default_s" in previous:
            results["n4"].update({k: previous[k] for k in ("default_s", "default_settings", "default_measured",
                                                           "correlation_in_mask") if k in previous},
                                 default_from=previous.get("measured_on") or "an earlier run",
                                 time_ratio=previous["default_s"] / results["n4"]["tuned_s"])
        results["n4"].setdefault("measured_on", results["machine"]["date"])
        save()
    if "train" in sections:
        results["train"] = bench_train(steps=6 if args.quick else 12)
        save()
    if "scaling" in sections:
        results["scaling"] = bench_scaling(e2e_bundle, workdir)
        results["scaling_model"] = results["e2e_model"]
    results["matmul_peak_gflops_at_end"] = common.matmul_gflops()
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    results["bench_wall_s"] = time.perf_counter() - started
    gpu = Path(args.out).with_name("benchmarks-gpu.json")
    if gpu.exists():
        results["gpu"] = json.loads(gpu.read_text())
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=1, default=float) + "\n")
    partial.unlink(missing_ok=True)
    from bench.report import render

    text = render(results)
    Path(args.markdown).write_text(text)
    print(text.split("<!-- tables-end -->")[0])
    _say(f"wrote {out_path} and {args.markdown}")
    return 0


def bench_baseline(ref, bundle, workdir, repeats):
    """The DESS end-to-end cases with the kneeseg package as it was at ``ref`` (same machine, same run)."""
    import io
    import tarfile

    target = workdir / f"baseline-{ref}"
    if not (target / "kneeseg").exists():
        archive = subprocess.run(["git", "archive", ref, "KneeSegmentation/kneeseg"], cwd=common.REPO, check=True,
                                 capture_output=True).stdout
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            for member in tar.getmembers():
                if "/" not in member.name:
                    continue  # the top folder itself
                member.name = member.name.split("/", 1)[1]
                tar.extract(member, target)
    sha = subprocess.run(["git", "rev-parse", "--short", ref], cwd=common.REPO, capture_output=True,
                         text=True).stdout.strip()
    path, kind = common.volume_path("dess", workdir)
    out = {"ref": ref, "commit": sha, "cases": []}
    for planes in (["sagittal"], ["sagittal", "coronal", "axial"]):
        _say(f"baseline {ref} ({sha}): dess {len(planes)} plane(s)")
        result = run_worker("e2e", {"bundle": str(bundle), "volume": str(path), "planes": planes, "backend": "keras",
                                    "precision": "float32", "repeats": max(1, repeats - 1)}, package_dir=target)
        out["cases"].append({"volume": "dess", "kind": kind, "planes": planes, **result})
    return out


def run_worker_bundle(workdir):
    """The timing bundle (built in a subprocess so this process never imports TensorFlow)."""
    folder = workdir / "untrained-default-bundle"
    if not (folder / "card.json").exists():
        code = ("import sys; from bench.common import timing_bundle; timing_bundle(sys.argv[1])")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(common.REPO), str(common.REPO / "KneeSegmentation")]),
               "TF_CPP_MIN_LOG_LEVEL": "3"}
        subprocess.run([sys.executable, "-c", code, str(folder)], check=True, env=env, cwd=common.REPO,
                       capture_output=True)
    return folder


if __name__ == "__main__":
    sys.exit(main())

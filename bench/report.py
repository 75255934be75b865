"""docs/benchmarks.md from the JSON of ``bench.run`` (``python -m bench.report docs/benchmarks.json``)."""

import json
import sys
from pathlib import Path

STAGES = ("read", "centre", "network", "back_resampling", "postprocess", "write", "total")


def _f(value, digits=2, unit=""):
    if value is None or value != value:
        return "n/a"
    return f"{value:.{digits}f}{unit}"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _e2e_case(results, volume, n_planes, backend="keras", precision="float32"):
    for case in results.get("e2e", []):
        if (case.get("volume"), len(case.get("planes", [])), case.get("backend"), case.get("precision")) == (
                volume, n_planes, backend, precision) and "stages" in case:
            return case
    return None


def targets(results):
    rows = []
    for n_planes in (1, 3):
        for precision in ("float32", "bfloat16"):
            case = _e2e_case(results, "dess", n_planes, "keras", precision)
            if case is None:
                continue
            total, rss = case["stages"]["total"], case["peak_rss_mb"]
            note = "" if precision == "float32" else " (opt-in `KNEESEG_PRECISION=bfloat16`)"
            rows.append((f"DESS 512x512x80 end to end, no N4, {n_planes} plane(s), {precision}{note}: <= 10 s, "
                         "peak RSS <= 2 GB", f"{_f(total, 1)} s, {rss:.0f} MB",
                         "met" if total <= 10 and rss <= 2048 else "**missed**"))
    n4 = results.get("n4", {})
    if "tuned_s" in n4:
        corr = n4.get("correlation_in_mask")
        ok = n4["tuned_s"] <= 5 and (corr or 0) >= 0.99
        rows.append(("N4 on the DESS <= 5 s, correlation >= 0.99 to default-settings N4",
                     f"{_f(n4['tuned_s'], 1)} s, r = {_f(corr, 4)}", "met" if ok else "**missed**"))
    net = results.get("network", {}).get("engines", {})
    for name in ("keras-float32", "keras-bfloat16"):
        if "fraction_of_peak" in net.get(name, {}):
            e = net[name]
            best = max(e["volumes"].values(), key=lambda v: v["gflops"])
            rows.append((f"network ({name}) >= 50 % of the measured float32 matmul peak",
                         f"{best['gflops']:.0f} GFLOP/s = {100 * e['fraction_of_peak']:.0f} % of "
                         f"{e['matmul_peak_gflops']:.0f}", "met" if e["fraction_of_peak"] >= 0.5 else "**missed**"))
    train = {(t.get("loop"), t.get("precision"), t.get("source_arg")): t for t in results.get("train", [])
             if "slices_per_s" in t}
    plain = train.get(("plain", "float32", "synthetic")) or train.get(("plain", "float32", None))
    for source in ("memory", "synthetic"):
        project = train.get(("project", "float32", source))
        if project and plain:
            ratio = project["slices_per_s"] / plain["slices_per_s"]
            rows.append((f"training loop ({project['source']}) >= 1.5x plain model.fit slices/s, or the model is "
                         "the bound", f"{ratio:.2f}x ({project['slices_per_s']:.1f} vs {plain['slices_per_s']:.1f} "
                         "slices/s)", "met" if ratio >= 1.5 else "**missed**: the step is the bound, see Training"))
    return _table(("target", "measured (median)", ""), rows)


def e2e_table(results):
    rows = []
    for case in results.get("e2e", []):
        if "stages" not in case:
            rows.append((case.get("label"), *["error"] * (len(STAGES) + 1)))
            continue
        s = case["stages"]
        rows.append((f"{case['label']} ({case.get('kind')})", *(_f(s[k]) for k in STAGES),
                     f"{case['peak_rss_mb']:.0f}", f"{100 * case.get('foreground_fraction', 0):.0f} %"))
        stand_in = case.get("stand_in")
        if stand_in:
            rows.append(("  same, trained-like output (stand-in)", "", "", "", _f(stand_in["back_resampling"]),
                         _f(stand_in["postprocess"]), "", "", "", f"{100 * stand_in['foreground_fraction']:.0f} %"))
    for case in results.get("baseline", {}).get("cases", []):
        if "stages" in case:
            s = case["stages"]
            rows.append((f"BEFORE ({results['baseline']['commit']}): dess {len(case['planes'])} plane(s) keras",
                         *(_f(s[k]) for k in STAGES), f"{case['peak_rss_mb']:.0f}",
                         f"{100 * case.get('foreground_fraction', 0):.0f} %"))
    header = ("case", "read", "centre", "network", "back-resampling", "post-processing", "write", "total s",
              "peak RSS MB", "labelled")
    return _table(header, rows)


def network_tables(results):
    net = results.get("network", {})
    rows = []
    for name, e in net.get("engines", {}).items():
        if "volumes" not in e:
            continue
        first = net.get("first_call", {}).get(name, {})
        v24, v80 = e["volumes"].get("24", {}), e["volumes"].get("80", {})
        rows.append((name, _f(v24.get("seconds")), _f(v80.get("seconds")), _f(v80.get("slices_per_s"), 1),
                     _f(v80.get("gflops"), 0), f"{100 * e['fraction_of_peak']:.0f} % of {e['matmul_peak_gflops']:.0f}",
                     _f(first.get("import_s")), _f(first.get("load_s")), _f(first.get("first_call_s")),
                     _f(first.get("process_start_to_first_output_s")), f"{first.get('peak_rss_mb', 0):.0f}"))
    header = ("engine", "24 slices s", "80 slices s", "slices/s", "GFLOP/s", "of matmul peak", "import s",
              "model load s", "first batch s", "start to first output s", "RSS MB (first call)")
    text = _table(header, rows)
    flops = next((e.get("flops_per_slice") for e in net.get("engines", {}).values() if e.get("flops_per_slice")), None)
    if flops:
        text += f"\n\nOne 224x224 slice through the default U-Net is {flops / 1e9:.2f} GFLOP (2 FLOP per multiply-add)."
    agreement = net.get("agreement", {})
    if agreement and "onnx_max_abs_diff" in agreement:
        text += (f" Largest difference from Keras float32 over 16 slices x 224 x 224 x 5 probabilities: ONNX Runtime "
                 f"{agreement['onnx_max_abs_diff']:.1e}")
        if "bfloat16_max_abs_diff" in agreement:
            text += f", Keras bfloat16 {agreement['bfloat16_max_abs_diff']:.1e}"
        text += "."
    sizes = net.get("install_mb", {})
    if sizes:
        text += "\n\n" + _table(("inference engine", "engine + its dependencies MB", "+ numpy, scipy, SimpleITK, pillow MB"),
                                [(k, v["engine_and_deps_mb"], v["with_pipeline_mb"]) for k, v in sizes.items()])
    return text


def n4_text(results):
    n4 = results.get("n4", {})
    if "tuned_s" not in n4:
        return "not measured"
    rows = [("pipeline (preprocess.intensity.N4Settings)", json.dumps(n4.get("settings")), _f(n4["tuned_s"], 1), "1")]
    if "default_s" in n4:
        note = (f" (from {n4['default_from']})" if n4.get("default_from") else
                " (cached run)" if n4.get("default_cached") else "")
        rows.append(("SimpleITK defaults, full resolution" + note,
                     json.dumps(n4.get("default_settings")), _f(n4["default_s"], 0), _f(n4.get("time_ratio"), 0) + "x"))
    previous = n4.get("previous")
    if previous:
        rows.append(("previous pipeline settings", json.dumps(previous["settings"]), _f(previous["seconds"], 1),
                     f"r = {previous['correlation_in_mask']:.4f}"))
    text = _table(("settings", "", "seconds", "time ratio / r"), rows)
    if "correlation_in_mask" in n4:
        text += (f"\n\nPearson correlation of the two corrected images inside the Otsu foreground mask of the full image"
                 f"{' (from ' + n4['default_from'] + ')' if n4.get('default_from') else ''}: "
                 f"**{n4['correlation_in_mask']:.4f}**. The default run used that mask (computing it: "
                 f"{_f(n4.get('mask_s'))} s); the pipeline computes its own on the shrunken copy (included in its time)."
                 + (f" Default run: {n4['default_measured']}." if n4.get("default_measured") else ""))
    return text


def train_text(results):
    rows = []
    run_peaks = [results.get("matmul_peak_gflops_at_start"), results.get("matmul_peak_gflops_at_end")]
    for t in results.get("train", []):
        if "slices_per_s" in t:
            gflops = t["slices_per_s"] * 3 * t.get("flops_per_slice", 4.35e9) / 1e9
            peak = max([p for p in run_peaks + [t.get("matmul_peak_gflops")] if p] or [0]) or None
            rows.append((t["loop"], t["precision"], t["source"], _f(t["slices_per_s"], 2),
                         f"{gflops:.0f}" + (f" ({100 * gflops / peak:.0f} % of {peak:.0f})" if peak else ""),
                         ", ".join(_f(e, 1) for e in t["epoch_s"]), f"{t['peak_rss_mb']:.0f}"))
    return (_table(("loop", "precision", "data", "slices/s (steady epochs)", "GFLOP/s (3x forward)", "epoch times s",
                    "peak RSS MB"), rows) + "\n\nTwelve steps of batch 8 per epoch, then one validation batch and "
            "(project loop) two checkpoints; the first epoch traces the graph and is left out. GFLOP/s counts a "
            "training step as three forward passes, against the highest float32 matmul rate of the run.")


def scaling_text(results):
    rows = []
    for s in results.get("scaling", []):
        if "stages" in s:
            st = s["stages"]
            rows.append((s["slices"], f"{s['voxels'] / 1e6:.1f}", _f(st["network"]), _f(st["back_resampling"]),
                         _f(st["postprocess"]), _f(st["read"] + st["write"]), _f(st["total"]), f"{s['peak_rss_mb']:.0f}"))
    return _table(("slices (512x512, 0.5 mm)", "Mvoxels", "network s", "back-resampling s", "post-processing s",
                   "read+write s", "total s", "peak RSS MB"), rows)


def gpu_text(results):
    gpu = results.get("gpu")
    if not gpu:
        return ("No `bench/gpu.py` run recorded (it writes docs/benchmarks-gpu.json on a machine with a GPU); the GPU "
                "numbers measured while the shipped model was trained are quoted under \"GPU numbers\" below.")
    rows = [(k, v) for k, v in gpu.items() if not isinstance(v, (dict, list))]
    text = _table(("", ""), rows)
    for key in ("inference", "training"):
        if isinstance(gpu.get(key), list):
            items = gpu[key]
            text += f"\n\n{key}:\n\n" + _table(tuple(items[0]), [tuple(i.values()) for i in items])
    return text


def render(results) -> str:
    m = results.get("machine", {})
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
    narrative = (Path(__file__).with_name("NOTES.md").read_text() if Path(__file__).with_name("NOTES.md").exists()
                 else "")
    return f"""# Benchmarks

Measured by `make bench` (`python -m bench.run`) on **{m.get('date')}**: {m.get('cpu')}, {m.get('cpus_available')} CPUs
available ({', '.join(m.get('cpu_features', []))}), {m.get('memory_gb')} GB RAM, {m.get('platform')}; Python
{m.get('python')}; {versions}. Load average at start {', '.join(f'{x:.1f}' for x in m.get('load_average', []))}
and at end {', '.join(f'{x:.1f}' for x in m.get('load_average_at_end', []))} (a shared machine: compare against the
matmul peak measured in the same run, {results.get('matmul_peak_gflops_at_start', 0):.0f} GFLOP/s at start,
{results.get('matmul_peak_gflops_at_end', 0):.0f} at end). Every case ran in a fresh process; times are medians of
the runs after a warm-up run. Network engines, first-call latency and scaling use an untrained model of the default
architecture (2D U-Net, 32 filters, depth 4, input 224; network time does not depend on the weights); end to end
uses {results.get('e2e_model', 'the shipped default model')}.

## Targets

{targets(results)}

## End to end, per stage (seconds)

{e2e_table(results)}

`centre` includes the coarse network pass that finds the knee; `network` the per-plane resampling onto the model
frame, normalisation and prediction; `back-resampling` the fusion of the planes' probabilities on the input grid
and the argmax; `post-processing` the largest component per bone, hole filling and volumes. `labelled`: fraction of
voxels labelled bone (an untrained network labels most of the volume, the worst case for the last two stages).

## Network engines

{network_tables(results)}

## N4 bias field correction (DESS volume)

{n4_text(results)}

## Training throughput (default U-Net, batch 8)

{train_text(results)}

## Scaling with the number of slices (one plane, synthetic 512 x 512 x N volumes, 0.3125 x 0.3125 x 0.5 mm)

{scaling_text(results)}

Centre fixed at the image centre (no centre pass); {results.get('scaling_model', 'the same model as end to end')}.
The sagittal frame takes one slice per 1.5 mm, so the network sees N/3 slices; every other stage works on the
whole grid. Time grows linearly with the volume; memory grows with the volume itself (the float32 image, the
label map and the post-processing's component labels, about 20 bytes per voxel) on top of a fixed ~1 GB for the
runtime and the network, whose batches do not grow with N.

## GPU

{gpu_text(results)}

<!-- tables-end -->

{narrative}
"""


if __name__ == "__main__":
    data = json.loads(Path(sys.argv[1]).read_text())
    print(render(data))

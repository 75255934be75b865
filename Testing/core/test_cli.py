"""The kneeseg command line: help, outputs, JSON progress, exit codes, no partial outputs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from kneeseg import cli
from kneeseg.errors import EXIT_BAD_INPUT, EXIT_INTERNAL
from kneeseg.quality import FLAG_BELOW
from conftest import REPO, toy_knee

COMMANDS = ["segment", "train", "evaluate", "info", "synth", "overlay"]


def run_cli(*args, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(REPO / "KneeSegmentation"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "kneeseg", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    assert "usage: kneeseg " + command in capsys.readouterr().out


@pytest.fixture
def toy_volume(tmp_path):
    image, _ = toy_knee(seed=31, size=(48, 48, 40), spacing=(1.5, 1.5, 1.5))
    path = tmp_path / "knee.nrrd"
    sitk.WriteImage(image, str(path))
    return path


def test_segment_writes_every_output_and_reports_json_progress(tiny_bundle, toy_volume, tmp_path):
    out = tmp_path / "out"
    proc = run_cli("segment", toy_volume, "-o", out / "labels.nrrd", "--model", tiny_bundle, "--seg-nrrd",
                   out / "bones.seg.nrrd", "--confidence", out / "confidence.nrrd", "--volumes-json",
                   out / "volumes.json", "--overlay", out / "overlay.png", "--progress", "json")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert all({"stage", "fraction", "message"} <= set(e) for e in events)
    assert events[-1]["stage"] == "done"
    assert [e["fraction"] for e in events] == sorted(e["fraction"] for e in events)
    result = events[-1]["result"]
    assert set(result["volumes_ml"]) == {"Femur", "Tibia", "Fibula", "Patella"}
    labels = sitk.ReadImage(str(out / "labels.nrrd"))
    image = sitk.ReadImage(str(toy_volume))
    assert labels.GetSize() == image.GetSize() and labels.GetOrigin() == image.GetOrigin()
    volumes_json = json.loads((out / "volumes.json").read_text())
    assert volumes_json == {"volumes_ml": result["volumes_ml"], "quality": result["quality"]}
    quality = result["quality"]
    assert 0.0 <= quality["score"] <= 1.0 and quality["flag"] is (quality["score"] < quality["threshold"])
    assert quality["threshold_from"] == "default" and quality["threshold"] == FLAG_BELOW  # the tiny card sets none
    assert isinstance(quality["reasons"], list) and set(quality["components"]) <= set(result["volumes_ml"])
    assert (out / "overlay.png").read_bytes()[:4] == b"\x89PNG"
    assert sitk.ReadImage(str(out / "bones.seg.nrrd")).GetMetaData("Segment1_Name") == "Tibia"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["labels.nrrd", "bones.seg.nrrd", "confidence.nrrd", "volumes.json", "overlay.png"])


def test_bad_input_exits_2_with_one_line_naming_the_file(tiny_bundle, tmp_path):
    bad = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 6, 7), np.float32)), str(bad))
    out = tmp_path / "out.nrrd"
    proc = run_cli("segment", bad, "-o", out, "--model", tiny_bundle, "--progress", "json")
    assert proc.returncode == EXIT_BAD_INPUT
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("kneeseg: error:")]
    assert len(error_lines) == 1 and str(bad) in error_lines[0] and "constant" in error_lines[0]
    last = json.loads(proc.stdout.splitlines()[-1])
    assert last["stage"] == "error" and last["error"] == "input"
    assert not out.exists() and list(tmp_path.iterdir()) == [bad]


def test_missing_file_and_bad_bundle_are_bad_input(tiny_bundle, toy_volume, tmp_path):
    proc = run_cli("segment", tmp_path / "nope.nrrd", "-o", tmp_path / "o.nrrd", "--model", tiny_bundle)
    assert proc.returncode == EXIT_BAD_INPUT and "file not found" in proc.stderr
    proc = run_cli("segment", toy_volume, "-o", tmp_path / "o.nrrd", "--model", tmp_path / "no-bundle")
    assert proc.returncode == EXIT_BAD_INPUT and "model bundle not found" in proc.stderr
    proc = run_cli("segment", toy_volume, "-o", tmp_path / "o.nrrd", "--planes", "oblique")
    assert proc.returncode == EXIT_BAD_INPUT and "--planes" in proc.stderr
    assert not (tmp_path / "o.nrrd").exists()


def test_usage_errors_are_bad_input():
    proc = run_cli("segment")
    assert proc.returncode == EXIT_BAD_INPUT and "usage:" in proc.stderr


def test_internal_errors_exit_1_with_a_json_error(monkeypatch, capsys):
    def explode(args, progress):
        raise RuntimeError("boom")

    monkeypatch.setitem(cli.COMMANDS, "info", explode)
    assert cli.main(["info"]) == EXIT_INTERNAL
    assert "internal error: RuntimeError: boom" in capsys.readouterr().err


def test_info_prints_the_cards_essentials_and_the_whole_card_with_json(tiny_bundle):
    proc = run_cli("info", tiny_bundle, "--json")
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["name"] == "tiny-test-model"
    proc = run_cli("info", tiny_bundle)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert text.startswith("tiny-test-model") and "bones: Femur=1" in text and "planes: " in text
    assert "intended use: For research use only" in text and "verified" in text
    assert "measured Dice" in text and "{" not in text and len(text.splitlines()) < 25
    assert (f"quality flag: a result scoring below {FLAG_BELOW:g} is flagged (kneeseg's default, chosen for the "
            "shipped model: this card sets none)") in text


def test_info_of_the_shipped_model_shows_training_data_and_measured_dice():
    proc = run_cli("info")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "training data: synthetic images from real label maps" in text and "OAI_AKOA" in text
    assert "quality flag: a result scoring below 0.45 is flagged (chosen for this model)" in text
    from kneeseg.bundle import default_bundle_path

    measured = json.loads((default_bundle_path() / "card.json").read_text())["metrics"]["synthetic"]
    femur = measured["dice"]["Femur"]["mean"]
    assert f"synthetic ({measured['n_cases']}): Femur {femur:.3f}" in text
    assert "{" not in text and len(text.splitlines()) < 25


def test_evaluate_prints_a_table_by_default_and_json_on_request(tiny_bundle, tmp_path):
    from conftest import write_toy_pairs

    data = write_toy_pairs(tmp_path / "data", n=2, size=(48, 48, 40), spacing=(1.5, 1.5, 1.5))
    report = tmp_path / "report.json"
    proc = run_cli("evaluate", "--model", tiny_bundle, "--pairs", data, "--report", report, "--progress", "none")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"pairs: {data} (2 cases)")
    header = lines[1].split()
    assert header[0] == "bone" and "Dice" in header and "ASSD" in header and "HD95" in header
    assert [line.split()[0] for line in lines[2:6]] == ["Femur", "Tibia", "Fibula", "Patella"]
    assert any(line.startswith("  worst case: ") for line in lines)
    assert "{" not in proc.stdout and "missed" not in proc.stdout
    full = json.loads(report.read_text())["pairs"]
    assert len(full["cases"]) == 2 and f"{full['dice']['Femur']['mean']:.3f}" in lines[2]
    proc = run_cli("evaluate", "--model", tiny_bundle, "--pairs", data, "--json", "--progress", "none")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["pairs"]["n_cases"] == 2 and "cases" not in summary["pairs"]


@pytest.mark.slow
def test_train_then_evaluate_end_to_end(tmp_path):
    from conftest import write_toy_pairs

    data = write_toy_pairs(tmp_path / "data", n=4, size=(40, 40, 32), spacing=(2.0, 2.0, 2.0))
    bundle = tmp_path / "bundle"
    proc = run_cli("train", "--data", data, "-o", bundle, "--epochs", 2, "--steps-per-epoch", 3,
                   "--validation-steps", 1, "--filters", 4, "--depth", 2, "--input-size", 32, "--window-mm", 90,
                   "--planes", "sagittal", "--batch-size", 4, "--progress", "json", "--no-onnx")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    epochs = [e for e in events if e["stage"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2] and "val_mean_dice" in epochs[0]["logs"]
    assert (bundle / "history.png").exists() and (bundle / "history.csv").exists()
    # Rerun with more epochs: a fresh process resumes from the work folder's checkpoint.
    proc = run_cli("train", "--data", data, "-o", bundle, "--epochs", 3, "--steps-per-epoch", 3,
                   "--validation-steps", 1, "--filters", 4, "--depth", 2, "--input-size", 32, "--window-mm", 90,
                   "--planes", "sagittal", "--batch-size", 4, "--progress", "json", "--no-onnx")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert "resume" in [e["stage"] for e in events]
    assert [e["epoch"] for e in events if e["stage"] == "epoch"] == [3]
    report = tmp_path / "report.json"
    proc = run_cli("evaluate", "--model", bundle, "--pairs", data, "--report", report, "--update-card",
                   "--progress", "none")
    assert proc.returncode == 0, proc.stderr
    results = json.loads(report.read_text())["pairs"]
    assert results["n_cases"] == 4
    assert {"dice", "iou", "assd_mm", "hd95_mm"} <= set(results)
    card = json.loads((bundle / "card.json").read_text())
    assert card["metrics"]["pairs"]["n_cases"] == 4


def test_n4_settings_are_exposed_and_checked(tiny_bundle, toy_volume, tmp_path):
    proc = run_cli("segment", toy_volume, "-o", tmp_path / "a.nrrd", "--model", tiny_bundle, "--n4", "--n4-shrink", 2,
                   "--n4-iterations", "5,5", "--progress", "json")
    assert proc.returncode == 0, proc.stderr
    assert "n4" in json.loads(proc.stdout.splitlines()[-1])["result"]["timings_s"]
    proc = run_cli("segment", toy_volume, "-o", tmp_path / "b.nrrd", "--model", tiny_bundle, "--n4",
                   "--n4-iterations", "many")
    assert proc.returncode == EXIT_BAD_INPUT and "--n4-iterations" in proc.stderr


@pytest.mark.parametrize("args, fragment", [
    (["-o", "{tmp}/labels"], "must end in"),
    (["-o", "{tmp}/labels.png"], "must end in"),
    (["-o", "{tmp}/labels.nrrd", "--seg-nrrd", "{tmp}/bones.nrrd"], "--seg-nrrd must end in .seg.nrrd"),
    (["-o", "{tmp}/labels.nrrd", "--batch-size", "0"], "--batch-size"),
])
def test_output_paths_and_options_are_checked_before_any_work(tiny_bundle, toy_volume, tmp_path, args, fragment):
    out = tmp_path / "out"
    out.mkdir()
    proc = run_cli("segment", toy_volume, "--model", tiny_bundle, *[a.format(tmp=out) for a in args])
    assert proc.returncode == EXIT_BAD_INPUT and fragment in proc.stderr
    assert list(out.iterdir()) == []


def test_training_options_are_checked(tmp_path):
    from conftest import write_toy_pairs

    data = write_toy_pairs(tmp_path / "data", n=3, size=(24, 24, 16), spacing=(2.0, 2.0, 2.0))
    proc = run_cli("train", "--data", data, "-o", tmp_path / "b", "--class-weights", "1,2")
    assert proc.returncode == EXIT_BAD_INPUT and "needs 4 numbers" in proc.stderr
    proc = run_cli("train", "--data", data, "-o", tmp_path / "b", "--dims", "3")
    assert proc.returncode == EXIT_BAD_INPUT and "3D model" in proc.stderr
    (tmp_path / "synthesis.json").write_text('{"septum_probability": 0.0}')
    proc = run_cli("train", "--data", data, "-o", tmp_path / "b", "--synthesis", tmp_path / "synthesis.json")
    assert proc.returncode == EXIT_BAD_INPUT and "goes with --synthetic" in proc.stderr
    (tmp_path / "synthesis.json").write_text('{"septum_chance": 0.0}')
    proc = run_cli("train", "--synthetic", tmp_path, "-o", tmp_path / "b", "--synthesis", tmp_path / "synthesis.json")
    assert proc.returncode == EXIT_BAD_INPUT and "unknown synthesis setting(s) septum_chance" in proc.stderr
    proc = run_cli("train", "--data", data, "-o", tmp_path / "b", "--work", tmp_path / "w",
                   "--init-from", tmp_path / "no-such-bundle")
    assert proc.returncode == EXIT_BAD_INPUT and "model bundle not found" in proc.stderr
    assert "no-such-bundle" in proc.stderr and not (tmp_path / "w").exists()
    assert not (tmp_path / "b").exists()


def test_version_and_info_state_the_intended_use_and_the_training_licences():
    version = run_cli("--version")
    assert version.returncode == 0 and "research use only" in version.stdout.lower()
    assert "not a medical device" in version.stdout
    info = run_cli("info")
    assert info.returncode == 0, info.stderr
    assert "intended use: For research use only" in info.stdout
    assert "trained on OAI_AKOA: " in info.stdout and "research use" in info.stdout


def test_a_reader_that_stops_early_is_not_an_internal_error():
    env = {**os.environ, "PYTHONPATH": str(REPO / "KneeSegmentation"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(f"'{sys.executable}' -m kneeseg info | head -n 1", shell=True, capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.stdout.startswith("knee-bones-default") and "Traceback" not in proc.stderr
    assert "internal error" not in proc.stderr


def test_synth_prepare_reports_the_number_of_cached_label_maps(monkeypatch, tmp_path):
    """The count is that of the manifest's files, not of its keys (format, spacing, tissues, ...)."""
    from kneeseg import synth

    files = [{"file": "a.npz"}, {"file": "b.npz"}]
    manifest = {"format": "f", "spacing_mm": 0.7, "margin_mm": 40.0, "tissues": [], "outside_field_of_view": 0,
                "files": files}
    monkeypatch.setattr(synth, "prepare_cache", lambda source, cache, **_: manifest)
    done = []

    class Recorder:
        def done(self, message, result):
            done.append(result)

    args = cli.build_parser().parse_args(["synth", "prepare", str(tmp_path / "src"), str(tmp_path / "cache")])
    assert cli.cmd_synth(args, Recorder()) == 0
    assert done == [{"cache": str(tmp_path / "cache"), "entries": 2}]


def _no_gpu():
    from kneeseg.devices import gpu_visible

    return not gpu_visible()


@pytest.mark.skipif(not _no_gpu(), reason="a GPU is visible here: --device gpu is allowed")
def test_device_gpu_without_a_gpu_is_bad_input_and_auto_stays_silent(tiny_bundle, toy_volume, tmp_path):
    out = tmp_path / "labels.nrrd"
    for args in (("segment", toy_volume, "-o", out, "--model", tiny_bundle),
                 ("evaluate", "--model", tiny_bundle, "--pairs", tmp_path),
                 ("train", "--data", tmp_path, "-o", tmp_path / "bundle")):
        proc = run_cli(*args, "--device", "gpu", "--progress", "json")
        assert proc.returncode == EXIT_BAD_INPUT, (args[0], proc.stderr)
        error_lines = [line for line in proc.stderr.splitlines() if line.startswith("kneeseg: error:")]
        assert len(error_lines) == 1, proc.stderr
        assert "no GPU was found" in error_lines[0] and "--device cpu" in error_lines[0] and "auto" in error_lines[0]
        assert json.loads(proc.stdout.splitlines()[-1])["error"] == "input"
    assert list(tmp_path.iterdir()) == [toy_volume]
    proc = run_cli("segment", toy_volume, "-o", out, "--model", tiny_bundle, "--device", "auto", "--progress", "none")
    assert proc.returncode == 0 and "GPU" not in proc.stderr and out.exists(), proc.stderr


def _fractions(proc):
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[-1]["stage"] == "done"
    return [e["fraction"] for e in events]


def test_progress_of_every_command_ends_at_one_and_never_goes_back(tiny_bundle, toy_volume, tmp_path):
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    for name in ("a", "b"):
        (cohort / f"{name}.nrrd").write_bytes(toy_volume.read_bytes())
    labels = tmp_path / "labels"
    _, labelmap = toy_knee(seed=4, size=(48, 48, 40), spacing=(1.5, 1.5, 1.5))
    (labels / "staple").mkdir(parents=True)
    sitk.WriteImage(labelmap, str(labels / "staple" / "staple_toy_MRI_l.nii.gz"))
    runs = {"segment": ("segment", toy_volume, "-o", tmp_path / "one.nrrd", "--model", tiny_bundle),
            "cohort": ("segment", cohort, "-o", tmp_path / "many", "--model", tiny_bundle),
            "overlay": ("overlay", toy_volume, tmp_path / "one.nrrd", tmp_path / "overlay.png", "--model", tiny_bundle),
            "synth prepare": ("synth", "prepare", labels, tmp_path / "cache")}
    for name, args in runs.items():
        fractions = _fractions(run_cli(*args, "--progress", "json"))
        assert fractions[-1] == 1.0 and len(fractions) > 1, name
        assert fractions == sorted(fractions), (name, fractions)
    assert (tmp_path / "cache" / "manifest.json").exists() and (tmp_path / "overlay.png").exists()


def test_the_bar_shows_100_percent_when_a_command_is_done():
    import io

    from kneeseg.progress import Progress

    stderr = io.StringIO()
    bar = Progress("bar", stderr=stderr)
    bar("write", 0.5, "half way")
    bar.done("finished", {})
    assert "100.0% done: finished" in stderr.getvalue().splitlines()[-1]


def test_segment_a_dicom_series_writes_meshes_and_a_dicom_seg(tiny_bundle, tmp_path):
    """``--meshes DIR --dicom-seg out.dcm`` on a DICOM series folder, as a user runs it."""
    import pydicom

    from conftest import write_dicom_series

    image, _ = toy_knee(seed=31, size=(48, 48, 40), spacing=(1.5, 1.5, 1.5))
    series = tmp_path / "series"
    write_dicom_series(series, image)
    out = tmp_path / "out"
    proc = run_cli("segment", series, "-o", out / "labels.nrrd", "--model", tiny_bundle, "--meshes", out / "meshes",
                   "--dicom-seg", out / "bones.dcm", "--progress", "json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])["result"]
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels.nrrd")))
    present = {name for name, value in (("Femur", 1), ("Tibia", 2), ("Fibula", 3), ("Patella", 4))
               if np.any(labels == value)}
    assert present and set(result["meshes"]) == present
    assert sorted(p.name for p in (out / "meshes").iterdir()) == sorted(
        f"{name.lower()}{suffix}" for name in present for suffix in (".stl", ".vtp"))
    seg = pydicom.dcmread(out / "bones.dcm")
    assert seg.Modality == "SEG" and {s.SegmentLabel for s in seg.SegmentSequence} == present
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pydicom.dcmread(
        next(series.iterdir())).SeriesInstanceUID
    assert sorted(p.name for p in out.iterdir()) == ["bones.dcm", "labels.nrrd", "meshes"]


def test_dicom_seg_of_a_volume_file_is_refused_before_any_work(toy_volume, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc = run_cli("segment", toy_volume, "-o", out / "labels.nrrd", "--dicom-seg", out / "bones.dcm")
    assert proc.returncode == EXIT_BAD_INPUT
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert errors[-1].startswith("kneeseg: error: --dicom-seg needs a DICOM series folder") and len(
        [e for e in errors if "error" in e]) == 1, proc.stderr
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("args, fragment", [
    (["--meshes", "{series}/meshes"], "lies inside the input folder"),
    (["--dicom-seg", "{out}/bones.nrrd"], "--dicom-seg must end in .dcm"),
    (["--dicom-seg", "{series}/e1_000.dcm"], "lies inside the input folder"),
])
def test_mesh_and_dicom_seg_outputs_are_checked_like_the_others(tiny_bundle, tmp_path, args, fragment):
    from conftest import write_dicom_series

    image, _ = toy_knee(seed=31, size=(24, 24, 8), spacing=(1.5, 1.5, 1.5))
    series = tmp_path / "series"
    write_dicom_series(series, image)
    before = sorted(p.name for p in series.iterdir())
    out = tmp_path / "out"
    out.mkdir()
    args = [a.format(series=series, out=out) for a in args]
    proc = run_cli("segment", series, "-o", out / "labels.nrrd", "--model", tiny_bundle, *args)
    assert proc.returncode == EXIT_BAD_INPUT and fragment in proc.stderr, proc.stderr
    assert list(out.iterdir()) == [] and sorted(p.name for p in series.iterdir()) == before


def test_train_flags_default_to_the_specs_and_each_reaches_its_setting(tmp_path, monkeypatch):
    """No flag: the TrainConfig of the specs' defaults. Every flag that names a setting: its value arrives."""
    import kneeseg.workflows.train
    from kneeseg import contract
    from kneeseg.train import TrainConfig

    configs = []
    monkeypatch.setattr(kneeseg.workflows.train, "train_bundle", lambda config, *a, **k: configs.append(config) or {})
    base = ["train", "--data", str(tmp_path), "-o", str(tmp_path / "b"), "--progress", "none"]
    assert cli.main(base) == 0
    assert configs.pop() == TrainConfig()
    changed = {"output_mode": "merged", "filters": 12, "depth": 3, "context_slices": 1, "slice_position": "bottleneck",
               "train_layers": "position",
               "input_size": 96, "planes": "axial,sagittal",
               "window_mm": 120.0, "epochs": 7, "steps_per_epoch": 11, "validation_steps": 5, "batch_size": 3,
               "patience": 2, "learning_rate": 0.01, "final_learning_rate": 0.002, "loss": "dice+ce", "beta": 2.0,
               "normalisation": "population", "seed": 4, "split_seed": 5, "workers": 2, "multiprocessing": True,
               "time_limit_min": 3.5, "stop_after_epochs": 6, "average_from_epoch": 2, "init_from": str(tmp_path / "old"),
               "split": str(tmp_path / "split.json")}
    settings = {spec.dest: spec.setting for spec in contract.TRAIN_OPTIONS if spec.setting}
    assert set(settings) - {"dims"} == set(changed)  # every setting-bearing flag is tried
    argv = base + contract.command_line("train", data=str(tmp_path), output=str(tmp_path / "b"), **changed)[1:]
    assert cli.main(argv) == 0
    flat = configs.pop().to_flat()
    for dest, value in changed.items():
        expected = list(value.split(",")) if dest == "planes" else value
        assert flat[settings[dest]] == expected, dest

"""``make eval``'s real-volume section (scripts/evaluate_default.py): the default and each plane alone."""
import SimpleITK as sitk

from conftest import load_script, toy_knee
from kneeseg.bundle import load_bundle


def test_each_real_volume_is_segmented_tri_planar_and_by_each_plane_alone_with_sheets_for_two(tiny_bundle, tmp_path):
    evaluate_default = load_script("evaluate_default")
    volumes, docs = tmp_path / "volumes", tmp_path / "docs"
    volumes.mkdir(), docs.mkdir()
    image, _ = toy_knee(seed=7, size=(48, 48, 40), spacing=(1.5, 1.5, 1.5))
    sitk.WriteImage(image, str(volumes / "knee.nrrd"))
    before = sitk.GetArrayFromImage(sitk.ReadImage(str(volumes / "knee.nrrd")))

    rows = evaluate_default.real_volumes(load_bundle(tiny_bundle), volumes, docs)

    assert [r["planes"] for r in rows] == ["tri-planar", "sagittal only", "coronal only", "axial only"]
    assert [r["overlay"] for r in rows] == ["overlay_knee_triplanar.png", "overlay_knee_single-plane.png", None, None]
    assert sorted(p.name for p in docs.iterdir()) == ["overlay_knee_single-plane.png", "overlay_knee_triplanar.png"]
    assert all(set(r["volumes_ml"]) == set(rows[0]["volumes_ml"]) for r in rows)
    assert (sitk.GetArrayFromImage(sitk.ReadImage(str(volumes / "knee.nrrd"))) == before).all()

    report = tmp_path / "evaluation.md"
    evaluate_default.write_report(report, {"date": "2026-12-04", "machine": "test", "real_volumes": rows}, tiny_bundle)
    lines = [line for line in report.read_text().splitlines() if line.startswith("| knee.nrrd |")]
    assert len(lines) == 4
    assert lines[0].endswith("[png](overlay_knee_triplanar.png) |") and lines[3].startswith("| knee.nrrd | axial only |")
    assert lines[2].endswith("| - |") and lines[3].endswith("| - |")

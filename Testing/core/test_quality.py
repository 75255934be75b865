"""The quality score: each component on small arrays, the measures fusion and clean-up collect on the
way, the score and flag, and the check that the score ranks cases by their Dice."""

import dataclasses
import json

import numpy as np
import pytest
from scipy import ndimage

from kneeseg import quality
from kneeseg.labels import SEPARATE_BONES
from kneeseg.postprocess import cleanup, fusion
from kneeseg.preprocess.centre import image_centre
from kneeseg.preprocess.frame import model_frame, resample_from_frame
from kneeseg.specs import FrameSpec
from conftest import load_script, toy_knee


def _dice(a, b):
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_plane_dice_is_the_mean_pairwise_dice_of_the_planes_own_labels():
    rng = np.random.default_rng(0)
    planes = [ndimage.binary_opening(rng.random((3, 12, 14)) > 0.3).astype(np.uint8) * 2 for _ in range(3)]
    planes[0][0, :4, :4] = 1  # a second label in one plane only
    confusions = fusion._pairwise_confusions(planes, n_classes=3)
    assert len(confusions) == 3 and all(c.sum() == planes[0].size for c in confusions)
    expected = np.mean([_dice(planes[p] == 2, planes[q] == 2) for p, q in ((0, 1), (0, 2), (1, 2))])
    assert quality.plane_dice(confusions, 2) == pytest.approx(expected)
    assert quality.plane_dice(confusions, 1) == pytest.approx(0.0)  # only plane 0 has it: Dice 0 with both others
    # Identical planes: 1; a label no plane has: no measure.
    same = fusion._pairwise_confusions([planes[1]] * 3, n_classes=3)
    assert quality.plane_dice(same, 2) == pytest.approx(1.0)
    assert quality.plane_dice(same, 1) is None
    assert quality.plane_dice([], 2) is None


def test_sure_fraction_counts_the_bone_voxels_at_or_above_the_sure_probability():
    mask = np.zeros((2, 4, 4), bool)
    mask[0, :2, :2] = True  # 4 voxels
    confidence = np.full(mask.shape, 0.99, np.float32)
    confidence[0, 0, :2] = [0.6, quality.SURE_PROBABILITY]  # one unsure, one exactly sure
    confidence[1] = 0.1  # outside the mask: ignored
    assert quality.sure_fraction(mask, confidence) == pytest.approx(3 / 4)
    assert quality.sure_fraction(np.zeros_like(mask), confidence) is None


def test_clean_up_reports_the_pieces_it_removed_largest_first():
    labels = np.zeros((6, 10, 10), np.uint8)
    labels[1:3, 1:4, 1:4] = 1  # 18 voxels
    labels[4, 7:9, 7:9] = 1  # 4 voxels, apart
    labels[0, 0, 9] = 1  # 1 voxel
    labels[2:4, 6:8, 1:3] = 2  # one piece
    pieces = {}
    cleaned = cleanup.clean_labelmap(labels, [1, 2, 4], pieces=pieces)
    assert pieces == {1: [18, 4, 1], 2: [8], 4: []}
    assert np.count_nonzero(cleaned == 1) == 18
    assert quality.largest_piece_fraction(pieces[1]) == pytest.approx(18 / 23)
    assert quality.largest_piece_fraction(pieces[2]) == 1.0 and quality.largest_piece_fraction([]) is None


def test_volume_component_inside_outside_and_missing():
    femur = {"min": 100.0, "max": 200.0, "in_every_map": True}
    fibula = {"min": 10.0, "max": 20.0, "in_every_map": False}
    assert quality.volume_component(150.0, femur) == 1.0
    assert quality.volume_component(400.0, femur) == pytest.approx(0.0)  # twice the maximum
    assert quality.volume_component(50.0, femur) == pytest.approx(0.0)  # half the minimum
    assert quality.volume_component(200.0 * 2 ** 0.5, femur) == pytest.approx(0.5)
    assert quality.volume_component(100.0 / 2 ** 0.25, femur) == pytest.approx(0.75)
    assert quality.volume_component(0.0, femur, expected=True) == 0.0  # a missing femur
    assert quality.volume_component(0.0, fibula, expected=False) == 1.0  # the fibula may be out of view
    assert quality.volume_component(2.0, fibula, expected=False) == 1.0  # only its tip: no lower bound
    assert quality.volume_component(40.0, fibula, expected=False) == pytest.approx(0.0)


def test_score_is_the_mean_over_bones_of_each_bones_weakest_component_and_flags_below_the_threshold():
    ranges = {"Femur": {"min": 100.0, "max": 200.0, "in_every_map": True},
              "Fibula": {"min": 10.0, "max": 20.0, "in_every_map": False}}
    good = {"plane_dice": 0.95, "sure_fraction": 0.7, "pieces": [1000], "volume_ml": 150.0}
    bad = {"plane_dice": 0.3, "sure_fraction": 0.8, "pieces": [600, 400], "volume_ml": 150.0}
    q = quality.score_case({"Femur": good, "Tibia": bad}, ranges)
    # With planes, their agreement is scored and the sure voxels are not (they repeat it).
    assert q.components["Femur"] == {"planes_agree": 0.95, "one_piece": 1.0, "volume_in_range": 1.0}
    assert q.components["Tibia"] == {"planes_agree": 0.3, "one_piece": 0.6}  # no range for the tibia given
    assert q.score == pytest.approx((0.95 + 0.3) / 2)
    assert q.flag is (q.score < quality.FLAG_BELOW)
    assert q.reasons == ["Tibia: the planes' predictions disagree (0.30)"]
    # An absent fibula with no range does not count; a missing expected femur scores 0 and says why.
    missing = quality.score_case({"Femur": {"pieces": [], "volume_ml": 0.0}, "Fibula": {"pieces": []}}, ranges)
    assert missing.score == 0.0 and missing.flag and "Femur: the volume is outside" in missing.reasons[0]
    # A single slice (one plane, no ranges): the sure voxels are scored, the volume is not judged.
    one_plane = dict(good, plane_dice=None)
    assert quality.score_case({"Femur": one_plane}).components == {"Femur": {"sure_voxels": 0.7, "one_piece": 1.0}}
    flagged = quality.score_case({"Femur": dict(one_plane, sure_fraction=0.5),
                                  "Patella": dict(one_plane, sure_fraction=0.1)})
    assert flagged.score == pytest.approx(0.3) and flagged.flag
    assert flagged.reasons == ["Patella: the network is unsure over much of the bone (0.10)"]
    nothing = quality.score_case({"Femur": {"pieces": []}})
    assert nothing.score == 0.0 and nothing.flag and nothing.reasons == ["no bone was found"]
    assert json.loads(json.dumps(q.as_dict()))["threshold"] == quality.FLAG_BELOW
    assert q.as_dict()["threshold_from"] == "default"


def test_a_model_card_sets_its_own_flag_threshold_and_a_card_without_one_gets_the_default():
    from kneeseg.bundle import load_bundle

    card = load_bundle().card  # the shipped model's card sets the threshold chosen for it
    assert quality.flag_threshold(card) == (card.quality_flag_below, "card")
    assert quality.flag_threshold(dataclasses.replace(card, quality_flag_below=None)) == (quality.FLAG_BELOW,
                                                                                         "default")
    assert quality.flag_threshold(None) == (quality.FLAG_BELOW, "default")
    measures = {"Femur": {"plane_dice": 0.8, "pieces": [1000]}}
    strict = quality.score_case(measures, threshold=(0.9, "card"))
    assert strict.flag and strict.threshold == 0.9 and strict.as_dict()["threshold_from"] == "card"
    assert strict.reasons == ["Femur: the planes' predictions disagree (0.80)"]  # the weakest, though above 0.5
    assert not quality.score_case(measures, threshold=(0.7, "card")).flag
    nothing = quality.score_case({"Femur": {"pieces": []}}, threshold=(0.2, "card"))
    assert nothing.flag and nothing.threshold == 0.2


def _smooth_probabilities(shape, rng):
    logits = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=(1, 3, 3, 0)) * 30
    logits[..., 0] += 0.5
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def test_one_piece_judges_every_piece_not_only_the_five_kept_in_the_json():
    labels = np.zeros((4, 8, 8), np.uint8)
    labels[1:3, 2:6, 2:6] = 1
    pieces = {1: [1000] + [50] * 100}
    measures = quality.segmentation_measures(labels, {}, pieces, {"Femur": 1.0}, SEPARATE_BONES)["Femur"]
    assert measures["pieces"] == [1000, 50, 50, 50, 50] and measures["n_pieces"] == 101
    assert measures["one_piece_fraction"] == pytest.approx(1000 / 6000, abs=1e-4)
    assert quality.bone_components(measures)["one_piece"] == pytest.approx(1000 / 6000, abs=1e-4)


def test_fusion_collects_the_planes_confusions_and_the_confidence_on_the_bone_box():
    direction = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float)
    image, _ = toy_knee(seed=3, size=(50, 44, 20), spacing=(0.7, 0.7, 2.5), direction=direction)
    rng = np.random.default_rng(0)
    planes = []
    for plane in ("sagittal", "coronal", "axial"):
        frame = model_frame(image, plane, image_centre(image), FrameSpec(window_mm=40.0, size=32))
        planes.append((frame, _smooth_probabilities((frame.n_slices, 32, 32, 3), rng)))
    collected = {}
    labels, full_confidence = fusion.fuse_frames(planes, image, confidence=True, slab_voxels=5000,
                                                 quality=collected)
    # Each plane's own argmax on the scan's grid (background 1 outside its frame), pair by pair.
    own = [np.argmax(resample_from_frame(p, f, image, default_value=[1.0, 0.0, 0.0]), axis=-1) for f, p in planes]
    expected = fusion._pairwise_confusions(own, 3)
    for got, want in zip(collected["plane_confusions"], expected):
        np.testing.assert_array_equal(got, want)
    lo, hi = collected["box"]
    box = tuple(slice(a, b + 1) for a, b in zip(lo, hi))
    np.testing.assert_allclose(collected["box_confidence"], full_confidence[box], atol=1e-6)
    # Without the full confidence map only the bone box is computed: every bone voxel lies in it.
    lean = {}
    lean_labels, _ = fusion.fuse_frames(planes, image, slab_voxels=5000, quality=lean)
    np.testing.assert_array_equal(lean_labels, labels)
    lean_box = tuple(slice(a, b + 1) for a, b in zip(*lean["box"]))
    inside = np.zeros(labels.shape, bool)
    inside[lean_box] = True
    assert labels.any() and not labels[~inside].any()
    np.testing.assert_allclose(lean["box_confidence"], full_confidence[lean_box], atol=1e-6)


def test_segmentation_measures_from_what_the_pipeline_collected():
    labels = np.zeros((4, 8, 8), np.uint8)
    labels[1:3, 2:6, 2:6] = 1
    confidence = np.full((4, 8, 8), 0.95, np.float32)
    confidence[1, 2, 2:6] = 0.5  # 4 of the femur's 32 voxels unsure
    collected = {"box": ((0, 0, 0), (3, 7, 7)), "box_confidence": confidence,
                 "plane_confusions": [np.array([[200, 0, 0, 0, 0], [0, 30, 2, 0, 0], [0] * 5, [0] * 5, [0] * 5])]}
    measures = quality.segmentation_measures(labels, collected, {1: [32, 3], 2: []}, {"Femur": 1.0, "Tibia": 0.0},
                                             SEPARATE_BONES)
    femur = measures["Femur"]
    assert femur["sure_fraction"] == pytest.approx(28 / 32, abs=1e-4)  # rounded to 4 places
    assert femur["plane_dice"] == pytest.approx(60 / 62, abs=1e-4)
    assert femur["pieces"] == [32, 3] and femur["n_pieces"] == 2 and femur["volume_ml"] == 1.0
    # A plane saw 2 voxels of tibia, but the fused result has none: an absent bone is not judged by its planes.
    assert measures["Tibia"]["sure_fraction"] is None and measures["Tibia"]["plane_dice"] is None
    assert measures["Patella"]["plane_dice"] is None and measures["Patella"]["n_pieces"] == 0


def test_the_packaged_volume_ranges_are_those_of_the_cache():
    ranges = quality.load_volume_ranges()
    assert {"Femur", "Tibia", "Patella"} <= set(ranges)
    for bone in ("Femur", "Tibia", "Patella"):
        assert 0 < ranges[bone]["min"] < ranges[bone]["max"] and ranges[bone]["in_every_map"]
    from pathlib import Path

    cache = Path(__file__).resolve().parents[2] / ".cache" / "labelmaps"
    if not (cache / "manifest.json").exists():
        pytest.skip(f"no label-map cache at {cache} (make synth-cache) to recompute the ranges from")
    from kneeseg.synth import bone_volume_ranges

    assert bone_volume_ranges(cache)["bones"] == ranges


def test_quality_against_dice_ranks_and_counts_flagged_cases_in_the_worst_quartile():
    from kneeseg.workflows.evaluate import case_mean_dice, quality_vs_dice

    dice = [0.1, 0.2, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    cases = [{"quality_score": d / 2, "quality_flag": d < 0.3, "mean_dice": d} for d in dice]
    out = quality_vs_dice(cases)
    assert out["spearman"] == pytest.approx(1.0) and out["n"] == 8
    assert out["n_worst_quartile"] == 2 and out["n_flagged"] == 2 and out["n_flagged_in_worst_quartile"] == 2
    reverse = quality_vs_dice([dict(c, quality_score=-c["quality_score"]) for c in cases])
    assert reverse["spearman"] == pytest.approx(-1.0)
    assert quality_vs_dice(cases[:2]) == {"n": 2, "threshold": quality.FLAG_BELOW}
    # A case's mean Dice counts a bone only the prediction has (a false bone) as 0, ignores absent ones.
    case = {"Femur": {"dice": 0.8, "truth_voxels": 5, "predicted_voxels": 5},
            "Patella": {"dice": 0.0, "truth_voxels": 0, "predicted_voxels": 3},
            "Fibula": {"dice": 1.0, "truth_voxels": 0, "predicted_voxels": 0}}
    bones = [b for b in SEPARATE_BONES if b.name != "Tibia"]
    assert case_mean_dice(case, bones) == pytest.approx(0.4)


def test_make_eval_writes_the_quality_section_for_each_data_set_that_has_one(tmp_path):
    evaluate_default = load_script("evaluate_default")
    q = {"n": 102, "threshold": quality.FLAG_BELOW, "spearman": 0.623, "p_value": 1e-9, "worst_quartile_dice": 0.43,
         "n_worst_quartile": 26, "n_flagged": 24, "n_flagged_in_worst_quartile": 18, "mean_dice_flagged": 0.23,
         "mean_dice_unflagged": 0.71}
    results = {"date": "2026-12-02", "machine": "test", "real2d": {"dice": {}, "quality": q},
               "synthetic": {"quality": dict(q, n=10, spearman=0.81)}, "synthetic_fibula": {"quality": {"n": 0}}}
    card = {"flag_below": quality.FLAG_BELOW, "from": "card", "chosen_by": "a rule on a run"}
    text = "\n".join(evaluate_default.quality_section(results, card))
    assert "## Quality score" in text
    assert f"Threshold {quality.FLAG_BELOW}: the model card's `quality.flag_below`, chosen by a rule on a run." in text
    assert "| real dev slices (one plane: sure voxels, one piece) | 102 | 0.62 | 24 | 18 of 26 (Dice <= 0.43) |" in text
    assert "| 10 | 0.81 |" in text and "fibula" not in text.split("|---|")[-1]
    assert evaluate_default.quality_section({"real2d": {}}, card) == []
    # A model whose card sets no threshold: counted by the default, and the report says so and gives the rule.
    text = "\n".join(evaluate_default.quality_section(results, {"flag_below": 0.3, "from": "default"}))
    assert f"Threshold 0.3: kneeseg's default: the model card sets none. The rule a model's threshold is chosen by: " \
           f"{quality.THRESHOLD_RULE}." in text


def test_kneeseg_evaluate_prints_how_well_the_score_ranks_the_cases():
    from kneeseg.tables import evaluation_table

    report = {"dataset": "synthetic", "n_cases": 10, "dice": {"Femur": {"n": 10, "mean": 0.9, "worst": 0.7},
                                                               "mean_over_bones": 0.9},
              "quality": {"n": 10, "threshold": 0.5, "spearman": 0.834, "n_flagged": 6,
                          "n_flagged_in_worst_quartile": 3}}
    text = evaluation_table({"synthetic": report})
    assert ("  quality score vs mean Dice: Spearman 0.83; flagged (score < 0.5) 6/10, 3 of them in the worst "
            "quartile") in text.splitlines()
    report["quality"] = {"n": 2, "threshold": 0.5}  # too few cases for a rank correlation: no line
    assert "quality score" not in evaluation_table({"synthetic": report})


def test_the_sweep_counts_flags_at_each_threshold_and_the_rule_picks_the_highest_that_holds_on_both_sets():
    from kneeseg.quality import THRESHOLD_STEPS
    from kneeseg.workflows.evaluate import quality_vs_dice, threshold_by_rule

    dice = [0.1, 0.2, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    real = quality_vs_dice([{"quality_score": d, "quality_flag": False, "mean_dice": d} for d in dice])
    rows = {row["threshold"]: row for row in real["sweep"]}
    assert sorted(rows) == list(THRESHOLD_STEPS)
    assert rows[0.15]["n_flagged"] == 1 and rows[0.25]["n_flagged"] == 2 and rows[0.55]["n_flagged"] == 3
    assert rows[0.25]["n_flagged_in_worst_quartile"] == 2 and rows[0.25]["mean_dice_flagged"] == pytest.approx(0.15)
    assert real["n_flagged"] == 0  # the headline counts are the pipeline's own flags, not the sweep's
    assert real["threshold"] == quality.FLAG_BELOW  # the cases name no threshold: the default
    own = quality_vs_dice([{"quality_score": d, "quality_flag": d < 0.3, "mean_dice": d, "quality_threshold": 0.3}
                           for d in dice])
    assert own["threshold"] == 0.3 and own["n_flagged"] == 2  # the one the cases were flagged by
    mixed = quality_vs_dice([{"quality_score": d, "quality_flag": False, "mean_dice": d, "quality_threshold": d}
                             for d in dice])
    assert mixed["threshold"] is None  # flagged by different thresholds: no one threshold to name
    # Scores that rank perfectly: the rule holds up to 0.7, which flags 4 (2 of them the worst); 0.75 flags 5.
    assert threshold_by_rule(real) == 0.7
    # A second set whose score says nothing (all equal) flags everything or nothing: 2 of 8 is not half.
    flat = quality_vs_dice([{"quality_score": 0.3, "quality_flag": False, "mean_dice": d} for d in dice])
    assert threshold_by_rule(real, flat) is None
    # With a second set that holds only up to 0.55 (there it flags the cases of Dice 0.1, 0.2, 0.5; at 0.6 also those of 0.55 and 0.58, not among the worst),
    # the rule picks 0.55 for both.
    second_dice = [0.1, 0.2, 0.5, 0.55, 0.58, 0.8, 0.9, 0.95]
    second = quality_vs_dice([{"quality_score": s, "quality_flag": False, "mean_dice": d}
                              for s, d in zip([0.1, 0.2, 0.5, 0.55, 0.56, 0.8, 0.9, 0.95], second_dice)])
    assert threshold_by_rule(second) == 0.55 and threshold_by_rule(real, second) == 0.55
    # Reversed scores flag the best cases first: the rule holds nowhere.
    worst_first = quality_vs_dice([{"quality_score": 1 - d, "quality_flag": False, "mean_dice": d} for d in dice])
    assert threshold_by_rule(worst_first) is None
    assert threshold_by_rule({"n": 2}) is None and threshold_by_rule() is None
    # The card keeps the summary without its cases and the sweep; evaluation.json keeps the sweep.
    from kneeseg.workflows.evaluate import card_summary

    result = {"n_cases": 8, "cases": [{}] * 8, "quality": real}
    card = card_summary(result)
    assert "sweep" not in card["quality"] and "cases" not in card and card["quality"]["spearman"] == real["spearman"]
    assert "sweep" in result["quality"] and card_summary(None) is None and card_summary({"n": 1}) == {"n": 1}


def test_the_report_counts_flags_by_the_current_threshold_and_can_be_written_again_without_measuring(tmp_path,
                                                                                                       tiny_bundle):
    import json
    import subprocess
    import sys
    from pathlib import Path

    from kneeseg.workflows.evaluate import quality_vs_dice

    evaluate_default = load_script("evaluate_default")
    script = Path(evaluate_default.__file__)
    dice = [0.1, 0.2, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    # Flags made at some other threshold (all 8): the report counts by the shipped threshold instead.
    q = quality_vs_dice([{"quality_score": d, "quality_flag": True, "mean_dice": d} for d in dice])
    results = {"date": "2026-12-03", "machine": "test", "real2d": {"dice": {}, "quality": q},
               "synthetic": {"quality": q}}
    text = "\n".join(evaluate_default.quality_section(results, {"flag_below": quality.FLAG_BELOW, "from": "card"}))
    expected = sum(d < quality.FLAG_BELOW for d in dice)
    assert f"| real dev slices (one plane: sure voxels, one piece) | 8 | 1.00 | {expected} |" in text
    assert f"picks **0.70**; the model's threshold is {quality.FLAG_BELOW}." in text
    assert "| 0.70 | 2 of 4 | 2 of 4 |" in text
    # --report-only: the report again from evaluation.json, nothing measured (no data folder needed).
    measured = json.loads((script.parents[1] / "docs" / "evaluation.json").read_text())  # a whole run's numbers
    measured["real2d"]["quality"] = measured["synthetic"]["quality"] = q
    measured["model"] = str(tmp_path / "elsewhere")  # a model outside the repository is named as it is
    (tmp_path / "evaluation.json").write_text(json.dumps(measured))
    out = tmp_path / "evaluation.md"
    out.write_text("old\n" + evaluate_default.HAND_WRITTEN + "\nkept by hand\n")
    run = subprocess.run([sys.executable, str(script), "--report-only", "--out", str(out),
                          "--data", str(tmp_path / "absent")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    written = out.read_text()
    assert "## Quality score" in written and "kept by hand" in written and not written.startswith("old")
    assert f"Model: `{tmp_path / 'elsewhere'}`" in written
    # --adopt-threshold: the rule's pick (0.70 on these cases) goes into the model's card, and the report counts by it.
    import shutil

    from kneeseg.bundle import load_bundle

    model = tmp_path / "model"
    shutil.copytree(tiny_bundle, model)
    adopt = [sys.executable, str(script), "--adopt-threshold", "--out", str(out), "--model", str(model)]
    run = subprocess.run(adopt, capture_output=True, text=True)  # the run measured "elsewhere", not this model
    assert run.returncode != 0 and "not " + str(model) in run.stderr
    assert load_bundle(model).card.quality_flag_below is None
    measured["model"] = str(model)
    (tmp_path / "evaluation.json").write_text(json.dumps(measured))
    run = subprocess.run(adopt, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    card = load_bundle(model).card
    assert card.quality_flag_below == 0.7
    assert f"make eval's run of {measured['date']}" in card.raw["quality"]["chosen_by"]
    assert quality.THRESHOLD_RULE in card.raw["quality"]["chosen_by"]
    assert "Threshold 0.7: the model card's `quality.flag_below`, chosen by kneeseg.quality.THRESHOLD_RULE" in \
        out.read_text()
    measured["synthetic"]["quality"] = quality_vs_dice([{"quality_score": 0.3, "quality_flag": False, "mean_dice": d}
                                                         for d in dice])  # a score that says nothing: no pick
    (tmp_path / "evaluation.json").write_text(json.dumps(measured))
    run = subprocess.run(adopt, capture_output=True, text=True)
    assert run.returncode != 0 and "picks no threshold" in run.stderr
    assert load_bundle(model).card.quality_flag_below == 0.7  # left as it was
    (tmp_path / "evaluation.json").write_text(json.dumps({"date": "2026-12-03"}))
    run = subprocess.run([sys.executable, str(script), "--report-only", "--out", str(out)],
                         capture_output=True, text=True)
    assert run.returncode != 0 and "lacks machine, real2d" in run.stderr
    (tmp_path / "evaluation.json").unlink()
    run = subprocess.run([sys.executable, str(script), "--report-only", "--out", str(out)],
                         capture_output=True, text=True)
    assert run.returncode != 0 and "evaluation.json is absent" in run.stderr

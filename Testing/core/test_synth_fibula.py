"""A fibula carried over from a fibula-bearing knee onto a map without one (kneeseg.synth.fibula)."""

import dataclasses
import json

import numpy as np
import pytest

from kneeseg.errors import InputError
from kneeseg.synth import fibula
from kneeseg.synth.cache import CACHE_FORMAT, MANIFEST_NAME, CachedLabelMap, load_label_map, load_manifest
from kneeseg.synth.tissues import OUTSIDE_FIELD_OF_VIEW, TISSUE_IDS

pytest.importorskip("SimpleITK")

FEMUR, TIBIA, FIBULA, MUSCLE = (TISSUE_IDS[n] for n in ("femur", "tibia", "fibula", "vastus_lateralis_muscle"))
SHAPE = (84, 72, 84)  # z (superior), y (posterior), x (left); 1 mm


def knee(shift=(0, 0, 0), with_fibula=True, cut_below=None) -> np.ndarray:
    """A left knee: tibial shaft and a plateau wider on the lateral (+x) side, a tuberosity in front,
    the fibula behind and lateral, a femur above, a muscle in front of the femur."""
    z, y, x = np.meshgrid(*(np.arange(n, dtype=float) for n in SHAPE), indexing="ij")
    z, y, x = z - shift[0], y - shift[1], x - shift[2]
    labels = np.zeros(SHAPE, np.uint8)
    labels[(x - 42) ** 2 + (y - 36) ** 2 <= 9 ** 2] = TIBIA
    labels[(z > 55)] = 0
    plateau = (((x - 46) / 24) ** 2 + ((y - 36) / 15) ** 2 <= 1) & (z >= 46) & (z <= 55)
    tuberosity = ((x - 48) ** 2 + (y - 22) ** 2 + (z - 44) ** 2) <= 6 ** 2
    labels[plateau | tuberosity] = TIBIA
    if with_fibula:
        shaft = ((x - 64) ** 2 + (y - 44) ** 2 <= 3.5 ** 2) & (z >= 8) & (z <= 44)
        head = ((x - 64) ** 2 + (y - 44) ** 2 + (z - 44) ** 2) <= 6 ** 2
        labels[(shaft | head) & (labels == 0)] = FIBULA
    labels[(((x - 44) / 24) ** 2 + ((y - 36) / 16) ** 2 + ((z - 70) / 12) ** 2 <= 1)] = FEMUR
    labels[(((x - 44) / 14) ** 2 + ((y - 12) / 5) ** 2 + ((z - 72) / 10) ** 2 <= 1) & (labels == 0)] = MUSCLE
    if cut_below is not None:
        labels[: cut_below] = OUTSIDE_FIELD_OF_VIEW
    return labels


def cached(labels, subject="P-1") -> CachedLabelMap:
    return CachedLabelMap(labels=labels, spacing=1.0, origin=np.zeros(3), knee_centre_mm=np.array([42.0, 36.0, 56.0]),
                          tissue_box_mm=np.array([[0.0, 0, 0], [83, 71, 83]]), fov_z_range=np.array([0, 83], np.int32),
                          source="phantom", licence="test phantom", subject=subject,
                          has_fibula=bool((labels == FIBULA).any()))


def dice(a, b) -> float:
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_the_fibula_lands_where_the_knees_own_was_and_only_on_unlabelled_voxels():
    donor = cached(knee())
    shift = (-2, 2, 3)
    truth = knee(shift) == FIBULA
    target_labels = knee(shift, with_fibula=False, cut_below=20)
    target_labels[30:34, 40:50, 60:70] = MUSCLE  # a muscle where the fibula would go: it stays muscle
    transfer = fibula.transfer_fibula(cached(target_labels), {"donor": donor})
    assert transfer.donor == "donor" and transfer.tibia_dice > 0.9
    assert dice(transfer.fibula, truth & (target_labels == 0)) > 0.8
    assert not (transfer.fibula & (target_labels != 0)).any()  # never on bone, muscle or outside the scan
    assert 0.0 < transfer.fibula_voxels_dropped < 0.5  # the part below the scan and under the muscle


def test_the_donor_of_the_same_side_wins_and_the_mirrored_one_loses():
    donor = cached(knee())
    target = cached(knee((1, -1, 2), with_fibula=False))
    transfer = fibula.transfer_fibula(target, {"mirrored": fibula.mirrored(donor), "same side": donor})
    assert transfer.donor == "same side"
    x = np.argwhere(transfer.fibula)[:, 2].mean()
    assert x > np.argwhere(target.labels == TIBIA)[:, 2].mean() + 10  # lateral, where a left knee has it
    # a right knee (the mirror image) gets the mirrored donor, and its fibula on the other side
    right = cached(np.ascontiguousarray(knee((1, -1, -2), with_fibula=False)[:, :, ::-1]))
    transfer = fibula.transfer_fibula(right, {"mirrored": fibula.mirrored(donor), "same side": donor})
    assert transfer.donor == "mirrored"
    assert np.argwhere(transfer.fibula)[:, 2].mean() < np.argwhere(right.labels == TIBIA)[:, 2].mean() - 10


def test_a_donor_without_fibula_or_a_target_without_tibia_is_refused_by_name():
    with pytest.raises(InputError, match="donor plain has no fibula"):
        fibula.transfer_fibula(cached(knee(with_fibula=False)), {"plain": cached(knee(with_fibula=False))})
    no_tibia = knee(with_fibula=False)
    no_tibia[no_tibia == TIBIA] = 0
    with pytest.raises(InputError, match="no tibia"):
        fibula.transfer_fibula(cached(no_tibia), {"donor": cached(knee())})


def write_cache(folder, maps: dict):
    folder.mkdir()
    entries = []
    for name, (subject, labels) in maps.items():
        record = cached(labels, subject)
        np.savez_compressed(folder / name, **{k: (np.str_(v) if isinstance(v, str) else v)
                                              for k, v in dataclasses.asdict(record).items()})
        entries.append({"file": name, "source": name, "dataset": "phantom", "licence": "test phantom",
                        "subject": subject, "bones": ["Femur", "Tibia"] + (["Fibula"] if record.has_fibula else []),
                        "has_fibula": record.has_fibula, "shape_zyx": list(SHAPE), "knee_centre_mm": [42, 36, 56],
                        "same_knee_as": None})
    (folder / MANIFEST_NAME).write_text(json.dumps({"format": CACHE_FORMAT, "spacing_mm": 1.0, "files": entries}))


def test_add_fibulas_gives_the_chosen_subjects_a_fibula_and_copies_the_rest_unchanged(tmp_path):
    odd_tibia = knee(with_fibula=False)
    odd_tibia[odd_tibia == TIBIA] = 0
    odd_tibia[30:56, 20:50, 20:70] = TIBIA  # a block: no donor's tibia fits it
    write_cache(tmp_path / "cache", {"donor.npz": ("P-donor", knee()),
                                     "train.npz": ("P-train", knee((1, 2, -1), with_fibula=False)),
                                     "odd.npz": ("P-odd", odd_tibia),
                                     "heldout.npz": ("P-test", knee((0, 1, 1), with_fibula=False)),
                                     "heldout-donor.npz": ("P-test2", knee((2, 0, 0)))})
    manifest = fibula.add_fibulas(tmp_path / "cache", tmp_path / "out", subjects={"P-donor", "P-train", "P-odd"})
    by_file = {e["file"]: e for e in manifest["files"]}
    assert by_file["train.npz"]["has_fibula"] and by_file["train.npz"]["bones"] == ["Femur", "Tibia", "Fibula"]
    assert by_file["train.npz"]["fibula_from"]["donor"] == "donor.npz"  # never the held-out knee
    assert manifest["fibula_carried_over"]["donors"] == ["donor.npz", "donor.npz mirrored"]
    carried = load_label_map(tmp_path / "out" / "train.npz")
    assert carried.has_fibula and dice(carried.labels == FIBULA, knee((1, 2, -1)) == FIBULA) > 0.8
    assert "refused" in by_file["odd.npz"]["fibula_from"] and not by_file["odd.npz"]["has_fibula"]
    for name in ("odd.npz", "heldout.npz", "donor.npz", "heldout-donor.npz"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "cache" / name).read_bytes()
    assert "fibula_from" not in by_file["heldout.npz"]
    assert load_manifest(tmp_path / "out")["files"] == manifest["files"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([*by_file, MANIFEST_NAME])  # no staging left


def test_add_fibulas_writes_nothing_when_it_cannot_finish_or_the_folder_is_taken(tmp_path):
    no_tibia = knee(with_fibula=False)
    no_tibia[no_tibia == TIBIA] = 0
    write_cache(tmp_path / "cache", {"donor.npz": ("P-donor", knee()), "bad.npz": ("P-bad", no_tibia)})
    with pytest.raises(InputError, match="no tibia"):
        fibula.add_fibulas(tmp_path / "cache", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    with pytest.raises(InputError, match="new or empty folder"):
        fibula.add_fibulas(tmp_path / "cache", tmp_path / "taken")
    assert (tmp_path / "taken" / "mine.txt").read_text() == "keep"
    (tmp_path / "a-file").write_text("keep")
    with pytest.raises(InputError, match="new or empty folder"):
        fibula.add_fibulas(tmp_path / "cache", tmp_path / "a-file")
    with pytest.raises(InputError, match="cannot make the folder"):
        fibula.add_fibulas(tmp_path / "cache", tmp_path / "a-file" / "below")
    assert (tmp_path / "a-file").read_text() == "keep"
    with pytest.raises(InputError, match="none of the chosen label maps has a fibula"):
        fibula.add_fibulas(tmp_path / "cache", tmp_path / "out2", subjects={"P-bad"})
    assert not (tmp_path / "out2").exists()


def test_the_command_line_carries_the_fibula_onto_the_training_subjects_of_a_split(tmp_path, capsys):
    from kneeseg import cli

    write_cache(tmp_path / "cache", {"donor.npz": ("P-donor", knee()),
                                     "train.npz": ("P-train", knee((1, 2, -1), with_fibula=False)),
                                     "test.npz": ("P-test", knee((0, 1, 1), with_fibula=False))})
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["P-donor", "P-train"], "validation": [], "test": ["P-test"]}))
    assert cli.main(["synth", "add-fibula", str(tmp_path / "cache"), str(tmp_path / "out"), "--split", str(split),
                     "--progress", "json"]) == 0
    done = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert done["result"]["carried"] == 1
    by_file = {e["file"]: e for e in load_manifest(tmp_path / "out")["files"]}
    assert by_file["train.npz"]["has_fibula"] and not by_file["test.npz"]["has_fibula"]
    # a folder that is no cache: exit 2 and one line that names it
    assert cli.main(["synth", "add-fibula", str(tmp_path / "split.json"), str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "split.json" in err[0]


@pytest.mark.parametrize("command", [["sheet", "{folder}", "{tmp}/sheet.png"], ["add-fibula", "{folder}", "{tmp}/out"],
                                     ["volumes", "{folder}", "{tmp}/volumes"]])
@pytest.mark.parametrize("content", [None, "{not json", '{"format": "something else"}'])
def test_every_command_that_reads_a_cache_refuses_a_folder_that_is_none_in_one_line(tmp_path, capsys, command,
                                                                                    content):
    from kneeseg import cli

    folder = tmp_path / "notacache"
    folder.mkdir()
    if content is not None:
        (folder / MANIFEST_NAME).write_text(content)
    args = [a.format(folder=folder, tmp=tmp_path) for a in command]
    assert cli.main(["synth", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "notacache" in err[0] and ("cache" in err[0] or "manifest" in err[0])


def test_a_model_trained_on_carried_fibulae_says_so_in_its_card(tmp_path):
    """The carried fibula is the donor's shape: the card's data names the donors (and so their licences)."""
    from kneeseg.train import TrainConfig
    from kneeseg.workflows.train import synthetic_sources

    write_cache(tmp_path / "cache", {"donor.npz": ("P-donor", knee()),
                                     "train.npz": ("P-train", knee((1, 2, -1), with_fibula=False)),
                                     "val.npz": ("P-val", knee((0, 1, 1), with_fibula=False))})
    fibula.add_fibulas(tmp_path / "cache", tmp_path / "out", subjects={"P-donor", "P-train"})
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["P-donor", "P-train"], "validation": ["P-val"], "test": []}))
    config = TrainConfig.from_flat(input_size=32, window_mm=80.0, batch_size=2, split=str(split))
    carried = synthetic_sources(config, tmp_path / "out")[2]["data"]["fibula_carried_over"]
    assert carried["maps"] == 1 and carried["donors_used"] == ["donor.npz"] and carried["from"] == "cache"
    assert "fibula_carried_over" not in synthetic_sources(config, tmp_path / "cache")[2]["data"]


def test_a_tibia_too_small_to_register_gets_no_fibula_and_no_traceback():
    sliver = knee(with_fibula=False)
    sliver[sliver == TIBIA] = 0
    sliver[50, 36, 42] = TIBIA  # one voxel of tibia: nothing to fit
    transfer = fibula.transfer_fibula(cached(sliver), {"donor": cached(knee())})
    assert transfer.tibia_dice < fibula.MIN_TIBIA_DICE and not transfer.fibula.any()


@pytest.mark.parametrize("existed", [False, True])
def test_a_cache_write_that_fails_half_way_through_the_moves_leaves_the_folder_as_it_was(tmp_path, monkeypatch,
                                                                                          existed):
    import os

    from kneeseg.synth import cache

    folder = tmp_path / "new"
    if existed:
        folder.mkdir()

    def fill(staging):
        for name in ("a.npz", "b.npz", "c.npz"):
            (staging / name).write_bytes(b"map")
        return [{"file": "a.npz"}, {"file": "b.npz"}, {"file": "c.npz"}]

    real_replace, calls = os.replace, []

    def replace_then_fail(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(cache.os, "replace", replace_then_fail)
    with pytest.raises(OSError):
        cache.write_staged(folder, "the test cache", fill)
    assert (sorted(p.name for p in folder.iterdir()) == []) if existed else not folder.exists()

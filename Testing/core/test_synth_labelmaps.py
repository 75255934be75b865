"""A researcher's own label maps for synthesis: mappings, any folder layout, Slicer segment names, bad input."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import toy_knee
from kneeseg.errors import InputError
from kneeseg.labels import FEMUR, PATELLA, TIBIA, Label
from kneeseg.synth import DEFAULT_SOURCES, TISSUE_IDS, load_label_map, load_manifest, prepare_cache
from kneeseg.synth.labelmaps import find_label_files, parse_label_mapping, sources_for, structure_name, user_source

# toy_knee's values 1 femur, 2 tibia, 3 fibula, 4 patella, relabelled as someone else's convention
THEIRS = {1: 21, 2: 22, 3: 23, 4: 24}
THEIR_MAPPING = "femur=21,tibia=22,fibula=23,patella=24"


def write_their_map(path, seed=0, values=THEIRS, shift=0.0):
    _, labels = toy_knee(seed=seed, origin=(10.0 + shift, -20.0, 5.0))
    ours = sitk.GetArrayFromImage(labels)
    theirs = np.zeros(ours.shape, np.uint16)
    for old, new in values.items():
        theirs[ours == old] = new
    image = sitk.GetImageFromArray(theirs)
    image.CopyInformation(labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return ours


# --- the mapping ---------------------------------------------------------------------------------------


def test_a_mapping_is_read_from_text_json_csv_or_a_preset(tmp_path):
    expected = {21: "femur", 22: "tibia", 23: "fibula", 24: "patella"}
    assert parse_label_mapping(THEIR_MAPPING) == expected
    assert parse_label_mapping("Femur=1+7, TIBIA=2, meniscus=9") == {1: "femur", 7: "femur", 2: "tibia", 9: "meniscus"}
    (tmp_path / "m.json").write_text(json.dumps({"Femur": 21, "tibia": [22], "fibula": 23, "patella": 24}))
    assert parse_label_mapping(str(tmp_path / "m.json")) == expected
    (tmp_path / "m.csv").write_text("structure,value\nfemur,21\ntibia,22\n23,fibula\npatella,24\n")
    assert parse_label_mapping(str(tmp_path / "m.csv")) == expected
    assert parse_label_mapping("oai")[5] == "patella" and parse_label_mapping("SPL")[97] == "fibula"


@pytest.mark.parametrize("text, message", [
    ("femr=1,tibia=2", "names 'femr', which is no bone"),
    ("femur=1,tibia=1", "label value 1 is given twice: to femur and to tibia"),
    ("femur=0,tibia=2", "must be a whole number of 1 or more"),
    ("femur=one", "must be a whole number"),
    ("meniscus=9", "names no bone"),
    ("femur", "takes name=value pairs"),
])
def test_a_bad_mapping_is_refused_by_name(text, message):
    with pytest.raises(InputError, match=message):
        parse_label_mapping(text)


def test_segment_names_match_bones_whatever_their_spelling():
    assert [structure_name(n) for n in ("Femur", "femur", "TIBIA", "Left Patella", "fibula bone", "Femoral cartilage",
                                        "Tumour", "bone")] == \
        ["femur", "femur", "tibia", "patella", "fibula", "femoral_cartilage", None, None]


# --- the files -------------------------------------------------------------------------------------------


def test_every_volume_at_any_depth_is_taken_but_hidden_and_temporary_names(tmp_path):
    for name in ("a.nrrd", "sub/b.nii.gz", "sub/deeper/c.mha", "d.seg.nrrd", "notes.txt", ".hidden.nrrd",
                 ".git/e.nrrd", "f.nrrd~", "~g.nrrh", "h.nii.gz.part", "#i.nrrd#"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    taken, skipped = find_label_files(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in taken] == ["a.nrrd", "d.seg.nrrd", "sub/b.nii.gz",
                                                                   "sub/deeper/c.mha"]
    assert [p.name for p in skipped] == ["notes.txt"]


def test_own_label_maps_in_a_new_layout_become_a_cache(tmp_path):
    ours = write_their_map(tmp_path / "src" / "knee-A" / "visit1" / "seg.nii.gz")
    write_their_map(tmp_path / "src" / "knee-A" / "visit2" / "seg.nii.gz", seed=1, shift=30.0)
    write_their_map(tmp_path / "src" / "knee-B.nrrd", seed=2, shift=-30.0)
    source = user_source(parse_label_mapping(THEIR_MAPPING), "mylab", "CC BY 4.0", r"^(knee-[A-Z])")
    manifest = prepare_cache(tmp_path / "src", tmp_path / "cache", spacing_mm=1.0, sources=(source,))
    files = manifest["files"]
    assert [f["source"] for f in files] == ["knee-A/visit1/seg.nii.gz", "knee-A/visit2/seg.nii.gz", "knee-B.nrrd"]
    assert [f["subject"] for f in files] == ["knee-A", "knee-A", "knee-B"]
    assert len({f["file"] for f in files}) == 3 and all(f["file"].startswith("mylab_") for f in files)
    assert all(f["bones"] == ["Femur", "Tibia", "Fibula", "Patella"] and f["licence"] == "CC BY 4.0" for f in files)
    cached = load_label_map(tmp_path / "cache" / files[0]["file"])
    # each bone keeps its volume (1 mm cache voxels against the 1.5 x 1.2 x 1 mm source)
    for value, name in ((1, "femur"), (2, "tibia"), (4, "patella")):
        source_ml = (ours == value).sum() * 1.5 * 1.2 * 1.0 / 1000
        assert (cached.labels == TISSUE_IDS[name]).sum() / 1000 == pytest.approx(source_ml, rel=0.1)
    assert not list((tmp_path / "cache").glob(".*"))  # no staging folder left behind


def test_a_value_in_no_file_or_an_unreadable_file_writes_nothing(tmp_path):
    write_their_map(tmp_path / "src" / "one.nrrd")
    bad = user_source(parse_label_mapping(THEIR_MAPPING + ",meniscus=30"))
    with pytest.raises(InputError, match=r"label value\(s\) 30 \(meniscus\) of the mapping are in none of the 1"):
        prepare_cache(tmp_path / "src", tmp_path / "new", spacing_mm=1.0, sources=(bad,))
    assert not (tmp_path / "new").exists()

    good = user_source(parse_label_mapping(THEIR_MAPPING))
    prepare_cache(tmp_path / "src", tmp_path / "cache", spacing_mm=1.0, sources=(good,))
    before = {p.name: p.read_bytes() for p in (tmp_path / "cache").iterdir()}
    (tmp_path / "src" / "two.nii.gz").write_bytes(b"not an image")
    with pytest.raises(InputError, match="two.nii.gz: not a readable label map"):
        prepare_cache(tmp_path / "src", tmp_path / "cache", spacing_mm=1.0, sources=(good,))
    assert {p.name: p.read_bytes() for p in (tmp_path / "cache").iterdir()} == before  # the old cache is intact


def test_a_map_without_the_mapped_bones_is_named(tmp_path):
    write_their_map(tmp_path / "src" / "one.nrrd")
    write_their_map(tmp_path / "src" / "other.nrrd", values={1: 5, 2: 6})
    with pytest.raises(InputError, match=r"other.nrrd: label map contains no bone \(its values: \[0, 5, 6\]"):
        prepare_cache(tmp_path / "src", tmp_path / "cache", spacing_mm=1.0,
                      sources=(user_source(parse_label_mapping(THEIR_MAPPING)),))


# --- Slicer segmentations ---------------------------------------------------------------------------------


def write_segmentation(path, names):
    """A .seg.nrrd as Slicer writes it, with segments femur, tibia and patella under ``names``."""
    from kneeseg.io import write_seg_nrrd

    _, labels = toy_knee()
    array = sitk.GetArrayFromImage(labels)
    array[array == 3] = 0  # no fibula
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_seg_nrrd(image, path, [Label(n, bone.value, bone.color, bone.snomed_code)
                                 for n, bone in zip(names, (FEMUR, TIBIA, PATELLA))])
    return array


def test_slicer_segmentations_are_read_by_segment_name(tmp_path):
    write_segmentation(tmp_path / "src" / "a.seg.nrrd", ["femur", "TIBIA", "Patella"])
    write_segmentation(tmp_path / "src" / "b" / "b.seg.nrrd", ["Femur", "Tibia", "Osteophyte"])
    notes = []

    class Recorder:
        def __call__(self, *args, **kwargs):
            pass

        def log(self, message):
            notes.append(message)

    sources = sources_for(tmp_path / "src")
    manifest = prepare_cache(tmp_path / "src", tmp_path / "cache", spacing_mm=1.0, sources=sources,
                             progress=Recorder())
    assert [f["bones"] for f in manifest["files"]] == [["Femur", "Tibia", "Patella"], ["Femur", "Tibia"]]
    assert [f["file"] for f in manifest["files"]] == ["user_a.npz", "user_b_b.npz"]
    assert any("segment 'Osteophyte' matches no bone" in n for n in notes)
    cached = load_label_map(tmp_path / "cache" / manifest["files"][1]["file"])
    assert (cached.labels == TISSUE_IDS["unnamed_structure"]).any()  # kept as soft tissue, never bone


def test_a_segmentation_without_a_bone_segment_is_refused(tmp_path):
    write_segmentation(tmp_path / "src" / "a.seg.nrrd", ["Tumour", "Effusion", "Cyst"])
    with pytest.raises(InputError, match=r"a.seg.nrrd: none of its segments \('Tumour', 'Effusion', 'Cyst'\) is a"):
        prepare_cache(tmp_path / "src", tmp_path / "cache", spacing_mm=1.0, sources=sources_for(tmp_path / "src"))


def test_a_segmentation_header_with_a_label_value_that_is_no_number_is_refused(tmp_path):
    path = tmp_path / "src" / "a.seg.nrrd"
    write_segmentation(path, ["Femur", "Tibia", "Patella"])
    image = sitk.ReadImage(str(path))
    image.SetMetaData("Segment0_LabelValue", "x")
    sitk.WriteImage(image, str(path))
    with pytest.raises(InputError, match=r"segment 0: its layer .* or label value \('x'\) .* not a whole number"):
        prepare_cache(tmp_path / "src", tmp_path / "cache", spacing_mm=1.0, sources=sources_for(tmp_path / "src"))


def test_a_cache_that_is_a_file_or_cannot_be_made_is_refused(tmp_path):
    write_segmentation(tmp_path / "src" / "a.seg.nrrd", ["Femur", "Tibia", "Patella"])
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(InputError, match="the cache must be a folder"):
        prepare_cache(tmp_path / "src", tmp_path / "afile", spacing_mm=1.0, sources=sources_for(tmp_path / "src"))
    assert (tmp_path / "afile").read_text() == "mine"
    with pytest.raises(InputError, match="cannot make the cache folder"):
        prepare_cache(tmp_path / "src", tmp_path / "afile" / "cache", spacing_mm=1.0,
                      sources=sources_for(tmp_path / "src"))


def test_plain_label_maps_without_a_mapping_ask_for_one(tmp_path):
    write_their_map(tmp_path / "src" / "one.nrrd")
    with pytest.raises(InputError, match="one.nrrd: a plain label map: say which value is which bone with --labels"):
        prepare_cache(tmp_path / "src", tmp_path / "cache", sources=sources_for(tmp_path / "src"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: no label maps here"):
        prepare_cache(tmp_path / "empty", tmp_path / "c2", sources=sources_for(tmp_path / "empty"))


def test_the_development_layout_is_read_with_its_presets(tmp_path):
    (tmp_path / "staple").mkdir()
    (tmp_path / "staple" / "staple_X_r.nii.gz").write_text("x")
    assert sources_for(tmp_path) == DEFAULT_SOURCES
    assert sources_for(tmp_path, "staple")[0].label_values == {1: "femur", 2: "tibia", 3: "fibula", 4: "patella"}


def test_overlapping_segments_on_two_layers_are_read_and_bone_wins(tmp_path):
    """Slicer keeps overlapping segments on separate layers (a 4D .seg.nrrd: one component per layer)."""
    _, labels = toy_knee()
    array = sitk.GetArrayFromImage(labels)
    femur = (array == 1).astype(np.uint8)
    effusion = np.zeros_like(femur)
    effusion[array.shape[0] // 2:] = 1  # overlaps half of the femur
    second = np.where(array == 2, 3, effusion).astype(np.uint8)  # tibia (value 3) and the effusion (1) on layer 1
    layers = [sitk.GetImageFromArray(a) for a in (femur, second)]
    for layer in layers:
        layer.CopyInformation(labels)
    image = sitk.Compose(layers)
    for i, (name, layer, value) in enumerate((("Femur", 0, 1), ("Effusion", 1, 1), ("Tibia", 1, 3))):
        image.SetMetaData(f"Segment{i}_Name", name)
        image.SetMetaData(f"Segment{i}_Layer", str(layer))
        image.SetMetaData(f"Segment{i}_LabelValue", str(value))
    (tmp_path / "src").mkdir()
    sitk.WriteImage(image, str(tmp_path / "src" / "knee.seg.nrrd"))
    manifest = prepare_cache(tmp_path / "src", tmp_path / "cache", spacing_mm=1.0,
                             sources=sources_for(tmp_path / "src"))
    assert manifest["files"][0]["bones"] == ["Femur", "Tibia"]
    cached = load_label_map(tmp_path / "cache" / manifest["files"][0]["file"])
    femur_ml = (cached.labels == TISSUE_IDS["femur"]).sum() / 1000
    assert femur_ml == pytest.approx(femur.sum() * 1.5 * 1.2 / 1000, rel=0.1)  # the effusion took none of it
    assert (cached.labels == TISSUE_IDS["unnamed_structure"]).any()

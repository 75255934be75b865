"""Context across slices (2.5D): a network that sees each slice with its neighbours as channels.

The spec, card, model, both training sources, augmentation, the start from a single-slice network and
inference must agree on one layout: channel ``c`` of slice ``i`` is slice ``i - context + c``, the
labelled slice in the middle, edge slices repeated.
"""

import json

import numpy as np
import pytest

from kneeseg.errors import BundleError
from kneeseg.preprocess.frame import with_context
from kneeseg.specs import NetworkSpec, SpecError
from conftest import toy_knee


def _slices(n=5, size=4):
    """Slice i is filled with the value i: every channel says which slice it came from."""
    return np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None], (n, size, size)).copy()


def test_each_slice_gets_its_neighbours_as_channels_and_the_edges_repeat():
    out = with_context(_slices(5), 1)
    assert out.shape == (5, 4, 4, 3)
    assert out[:, 0, 0].tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 4]]
    part = with_context(_slices(5), 2, first=3, last=5)
    assert part[:, 0, 0].tolist() == [[1, 2, 3, 4, 4], [2, 3, 4, 4, 4]]
    assert with_context(_slices(1), 1)[:, 0, 0].tolist() == [[0, 0, 0]]  # a single slice: itself three times
    np.testing.assert_array_equal(with_context(_slices(3), 0)[..., 0], _slices(3))


@pytest.mark.parametrize("settings, field", [(dict(context_slices=-1), "context_slices"),
                                             (dict(context_slices=9), "context_slices"),
                                             (dict(context_slices=1.0), "context_slices"),
                                             (dict(context_slices=1, dims=3), "context_slices")])
def test_a_wrong_context_is_refused_by_name(settings, field):
    with pytest.raises(SpecError) as err:
        NetworkSpec(**settings)
    assert err.value.field == field


def test_the_network_takes_one_channel_per_slice_it_sees():
    from kneeseg.model import build_model

    assert NetworkSpec().input_channels == 1 and NetworkSpec(context_slices=2).input_channels == 5
    model = build_model(NetworkSpec(filters=4, depth=2, context_slices=1), 32)
    assert tuple(model.inputs[0].shape) == (None, 32, 32, 3)


def test_the_card_keeps_the_context_and_a_2d_card_is_written_as_before():
    from kneeseg.card import card_for, parse_card
    from kneeseg.labels import SEPARATE_BONES
    from kneeseg.specs import FrameSpec

    flat = card_for(SEPARATE_BONES, NetworkSpec(), FrameSpec()).to_json()
    assert "context_slices" not in flat["model"]
    from kneeseg.card import WeightFile

    weights = {"model.keras": WeightFile("model.keras", "0" * 64)}
    wide = card_for(SEPARATE_BONES, NetworkSpec(context_slices=1), FrameSpec(), weights=weights).to_json()
    assert wide["model"]["context_slices"] == 1
    assert parse_card(json.loads(json.dumps(wide))).network.context_slices == 1
    wide["model"]["context_slices"] = "1"
    with pytest.raises(BundleError, match="model.context_slices"):
        parse_card(wide)


def test_a_single_slice_kernel_starts_a_wider_network_computing_the_same():
    from kneeseg.model import build_model
    from kneeseg.train import widen_input

    narrow = build_model(NetworkSpec(filters=4, depth=2), 32)
    wide = build_model(NetworkSpec(filters=4, depth=2, context_slices=1), 32)
    weights = narrow.get_weights()
    weights[0] = widen_input(weights[0], NetworkSpec(filters=4, depth=2), NetworkSpec(filters=4, depth=2,
                                                                                     context_slices=1))
    wide.set_weights(weights)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(wide.predict(x, verbose=0), narrow.predict(x[..., 1:2], verbose=0), atol=1e-5)
    other = rng.normal(size=(3, 3, 3, 4))  # a 2.5D kernel cannot start a network of other context: unchanged
    assert widen_input(other, NetworkSpec(context_slices=1), NetworkSpec(context_slices=2)).shape == (3, 3, 3, 4)


def test_inference_gives_the_network_each_slice_between_its_neighbours():
    from kneeseg.card import card_for
    from kneeseg.infer import predict_frame
    from kneeseg.labels import SEPARATE_BONES
    from kneeseg.specs import FrameSpec

    seen = []

    def predictor(batch):
        seen.append(batch.copy())
        return np.zeros(batch.shape[:3] + (5,), np.float32)

    card = card_for(SEPARATE_BONES, NetworkSpec(context_slices=1), FrameSpec())
    probs = predict_frame(predictor, _slices(5), card, batch_size=2)
    assert probs.shape == (5, 4, 4, 5)
    assert [b.shape[0] for b in seen] == [2, 2, 1]
    assert np.concatenate(seen)[:, 0, 0].tolist() == with_context(_slices(5), 1)[:, 0, 0].tolist()


def test_a_bundle_whose_graph_takes_other_channels_than_its_card_says_is_refused(tmp_path):
    from kneeseg.bundle import load_bundle, save_bundle
    from kneeseg.card import card_for
    from kneeseg.labels import SEPARATE_BONES
    from kneeseg.model import build_model
    from kneeseg.specs import FrameSpec

    model = build_model(NetworkSpec(filters=4, depth=2), 32)  # one channel
    card = card_for(SEPARATE_BONES, NetworkSpec(filters=4, depth=2, context_slices=1), FrameSpec(size=32))
    save_bundle(tmp_path / "b", model, card)
    with pytest.raises(BundleError, match="1 channel|3 channel"):
        load_bundle(tmp_path / "b").load_keras_model()


def test_paired_slices_take_neighbours_from_their_own_frame_only(tmp_path):
    from kneeseg.datasets import Pair, PairedSlices
    from kneeseg.specs import FrameSpec
    import SimpleITK as sitk

    for i in range(2):
        image, labels = toy_knee(size=(24, 24, 20), spacing=(3.0, 3.0, 3.0), seed=i)
        sitk.WriteImage(image, str(tmp_path / f"i{i}.nrrd"))
        sitk.WriteImage(labels, str(tmp_path / f"l{i}.nrrd"))
    pairs = [Pair(tmp_path / f"i{i}.nrrd", tmp_path / f"l{i}.nrrd", f"s{i}") for i in range(2)]
    frame = FrameSpec(planes=("sagittal",), window_mm=80.0, size=32, min_slice_mm=3.0)
    plain = PairedSlices(pairs, frame, augment=False)
    source = PairedSlices(pairs, frame, augment=False, context_slices=1, batch_size=64, bone_fraction=0.0)
    first_of_second = plain._frame_bounds[-1, 0]
    assert first_of_second > 0 and plain._frame_bounds[0].tolist() == [0, first_of_second - 1]
    pick = np.array([0, first_of_second - 1, first_of_second, first_of_second + 1])
    x = source._with_context(pick)
    images = source.images.astype(np.float32)
    np.testing.assert_array_equal(x[..., 1], images[pick])
    np.testing.assert_array_equal(x[0, ..., 0], images[0])  # the first slice: its own left neighbour
    np.testing.assert_array_equal(x[1, ..., 2], images[first_of_second - 1])  # not the next volume's
    np.testing.assert_array_equal(x[2, ..., 0], images[first_of_second])
    np.testing.assert_array_equal(x[3, ..., 0], images[first_of_second])
    xb, yb = source.batch(0)
    assert xb.shape == (64, 32, 32, 3) and yb.shape == (64, 32, 32)


def test_augmentation_moves_a_slice_and_its_neighbours_together():
    from kneeseg.augment import augment_batch

    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 32, 32, 1)).astype(np.float32)
    labels = (image[..., 0] > 0).astype(np.uint8)
    out, out_labels = augment_batch(np.repeat(image, 3, axis=-1), labels, np.random.default_rng(1))
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 2], out[..., 1])
    assert not np.array_equal(out[..., 1], image[..., 0])  # it did augment
    assert out_labels.shape == labels.shape


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory):
    from kneeseg.synth import prepare_cache
    from test_synth import PHANTOM_SOURCE, write_phantom

    root = tmp_path_factory.mktemp("context_cache")
    write_phantom(root / "src" / "phantom", "knee")
    prepare_cache(root / "src", root / "cache", spacing_mm=1.0, margin_mm=20.0, sources=(PHANTOM_SOURCE,))
    return root / "cache"


def test_synthetic_slices_come_with_neighbours_and_the_middle_slice_labels(toy_cache):
    from kneeseg.specs import FrameSpec
    from kneeseg.synth import SliceSynthesizer, SynthesisConfig
    from kneeseg.synth.render import render

    frame = FrameSpec(size=64, window_mm=120.0)
    config = SynthesisConfig(context_drop_probability=0.0)
    source = SliceSynthesizer(toy_cache, frame, batch_size=8, seed=3, config=config, context_slices=1)
    x, y, info = source.batch_with_info(0)
    assert x.shape == (8, 64, 64, 3) and y.shape == (8, 64, 64)
    assert all(i["context_mm"] >= frame.min_slice_mm for i in info)
    assert not np.array_equal(x[..., 0], x[..., 1]) and not np.array_equal(x[..., 2], x[..., 1])
    # the labels are those of the centre offsets (labels depend on the view alone, not on the noise)
    stack_seed = np.random.SeedSequence([3, 0, 0]).spawn(2)[0]
    view, label_map, look, noise_rng = source.draw(stack_seed, source.n_slices_per_sample)
    _, expected = render(noise_rng, view, label_map, look, source.grid, source.target)
    np.testing.assert_array_equal(y[:4], expected)
    again = SliceSynthesizer(toy_cache, frame, batch_size=8, seed=3, config=config, context_slices=1)
    np.testing.assert_array_equal(again.batch(0)[0], x)


def test_without_neighbours_a_synthetic_slice_is_repeated_in_every_channel(toy_cache):
    from kneeseg.specs import FrameSpec
    from kneeseg.synth import SliceSynthesizer, SynthesisConfig

    config = SynthesisConfig(context_drop_probability=1.0)
    x, _, info = SliceSynthesizer(toy_cache, FrameSpec(size=64), batch_size=4, config=config,
                                  context_slices=2).batch_with_info(0)
    assert x.shape[-1] == 5 and all(i["context_mm"] == 0.0 for i in info)
    for c in range(5):
        np.testing.assert_array_equal(x[..., c], x[..., 2])


def test_a_2d_synthesizer_draws_what_it_drew_before_context_existed(toy_cache):
    from kneeseg.specs import FrameSpec
    from kneeseg.synth import SliceSynthesizer

    x, _, info = SliceSynthesizer(toy_cache, FrameSpec(size=64), batch_size=4, seed=2).batch_with_info(1)
    assert x.shape == (4, 64, 64, 1) and "context_mm" not in info[0]


def test_a_thick_slice_scan_puts_the_neighbours_one_slice_thickness_apart():
    from kneeseg.synth.config import SynthesisConfig
    from kneeseg.synth.draws import draw_context_spacing

    class Look:
        thick_axis, thickness_mm = "slice", 4.0

    config = SynthesisConfig(context_drop_probability=0.0)
    spacings = [draw_context_spacing(np.random.default_rng(s), config, Look, 1.5) for s in range(50)]
    assert min(spacings) >= 4.0 and max(spacings) <= 4.0 * config.context_gap[1]
    Look.thick_axis = None
    spacings = [draw_context_spacing(np.random.default_rng(s), config, Look, 1.5) for s in range(200)]
    assert min(spacings) == 1.5 and max(spacings) <= config.context_spacing_mm[1]


@pytest.mark.slow
def test_a_2_5d_model_trains_from_labelled_scans_and_segments_with_both_engines(tmp_path):
    from conftest import write_toy_pairs
    from kneeseg import infer
    from kneeseg.bundle import load_bundle
    from kneeseg.train import TrainConfig
    from kneeseg.workflows.train import train_bundle

    data = write_toy_pairs(tmp_path / "data", n=3, size=(32, 32, 24), spacing=(2.0, 2.0, 2.0))
    config = TrainConfig.from_flat(filters=4, depth=2, input_size=32, planes=("sagittal", "coronal"), window_mm=80.0,
                                   batch_size=4, steps_per_epoch=2, validation_steps=1, epochs=1, context_slices=1)
    train_bundle(config, tmp_path / "bundle", tmp_path / "work", data=data)
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.card.network.context_slices == 1 and bundle.onnx_path is not None
    image, _ = toy_knee(size=(32, 32, 24), spacing=(2.0, 2.0, 2.0))
    before = sitk_array(image)
    keras_result = infer.segment(image, bundle, infer.SegmentOptions(centre="image", backend="keras"))
    onnx_result = infer.segment(image, bundle, infer.SegmentOptions(centre="image", backend="onnx"))
    assert keras_result.labelmap.GetSize() == image.GetSize()
    agree = (sitk_array(keras_result.labelmap) == sitk_array(onnx_result.labelmap)).mean()
    assert agree > 0.999
    np.testing.assert_array_equal(sitk_array(image), before)  # the input is not touched


def sitk_array(image):
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(image)


def test_the_model_summary_says_the_network_sees_neighbouring_slices():
    from kneeseg.card import card_for
    from kneeseg.labels import SEPARATE_BONES
    from kneeseg.specs import FrameSpec
    from kneeseg.tables import card_table

    assert "2.5D U-Net: each slice with 1 neighbour(s)" in card_table(
        card_for(SEPARATE_BONES, NetworkSpec(context_slices=1), FrameSpec()), "here")
    assert "(2D U-Net" in card_table(card_for(SEPARATE_BONES, NetworkSpec(), FrameSpec()), "here")


def test_a_run_saved_before_context_existed_resumes_as_a_single_slice_run(tmp_path):
    from kneeseg.errors import InputError
    from kneeseg.train import TrainConfig, _check_same_run

    config = TrainConfig.from_flat(filters=4, depth=2, input_size=32)
    old = {k: v for k, v in config.to_flat().items() if k != "context_slices"}
    _check_same_run({"config": old}, config, {}, tmp_path)  # no error: the old run was single-slice
    with pytest.raises(InputError, match="context_slices"):
        _check_same_run({"config": old}, TrainConfig.from_flat(filters=4, depth=2, input_size=32, context_slices=1),
                        {}, tmp_path)

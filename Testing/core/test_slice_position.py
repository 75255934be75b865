"""The slice's position as input channels (``NetworkSpec.slice_position``): spec, card, the start from
a bundle without them, inference's distances and the synthesizer's, which must agree."""

import json

import numpy as np
import pytest

from kneeseg.card import WeightFile, card_for, parse_card
from kneeseg.errors import BundleError
from kneeseg.geometry import plane_direction
from kneeseg.labels import SEPARATE_BONES
from kneeseg.preprocess.frame import POSITION_SCALE_MM, Frame, position_channels, slice_positions_mm
from kneeseg.specs import FrameSpec, NetworkSpec, SpecError

WEIGHTS = {"model.keras": WeightFile("model.keras", "0" * 64)}


def test_the_position_takes_two_channels_after_the_slices_and_only_a_2d_network_has_them():
    assert NetworkSpec(slice_position="input").input_channels == 3
    assert NetworkSpec(context_slices=1, slice_position="input").input_channels == 5
    with pytest.raises(SpecError, match="slice_position"):
        NetworkSpec(dims=3, slice_position="input")
    assert NetworkSpec(slice_position="bottleneck").input_channels == 3
    assert NetworkSpec(slice_position="bottleneck").first_kernel_channels == 1
    assert NetworkSpec(slice_position="input").first_kernel_channels == 3
    for wrong in (1, True, "middle"):
        with pytest.raises(SpecError, match="slice_position"):
            NetworkSpec(slice_position=wrong)


def test_a_card_keeps_the_position_setting_and_an_older_card_reads_without_it():
    card = card_for(SEPARATE_BONES, NetworkSpec(slice_position="input"), FrameSpec(), weights=WEIGHTS).to_json()
    assert card["model"]["slice_position"] == "input"
    assert parse_card(json.loads(json.dumps(card))).network.slice_position == "input"
    plain = card_for(SEPARATE_BONES, NetworkSpec(), FrameSpec()).to_json()
    assert "slice_position" not in plain["model"]
    card["model"]["slice_position"] = "yes"
    with pytest.raises(BundleError, match="slice_position"):
        parse_card(card)


def test_position_channels_hold_the_scaled_distance_and_a_known_flag():
    x = np.ones((3, 4, 4, 1), np.float32)
    out = position_channels(x, [-50.0, 0.0, 100.0])
    assert out.shape == (3, 4, 4, 3)
    np.testing.assert_array_equal(out[..., 0], 1.0)
    assert out[:, 2, 3, 1].tolist() == [-50.0 / POSITION_SCALE_MM, 0.0, 100.0 / POSITION_SCALE_MM]
    np.testing.assert_array_equal(out[..., 2], 1.0)
    unknown = position_channels(x, None)
    np.testing.assert_array_equal(unknown[..., 1:], 0.0)
    with pytest.raises(ValueError, match="2 slice positions for 3 slices"):
        position_channels(x, [1.0, 2.0])


def test_slice_distances_are_measured_from_the_knee_centre_not_from_the_slid_frame():
    # an axial frame (slice axis along LPS z) whose centre was slid 12 mm up from the knee centre
    frame = Frame("axial", (0.0, 0.0, 12.0), 8, 1.0, 5, 3.0)
    axis = frame.direction[:, 2]
    positions = slice_positions_mm(frame, (5.0, -3.0, 0.0))  # in-plane offsets do not count
    expected = 12.0 * axis[2] + (np.arange(5) - 2) * 3.0
    np.testing.assert_allclose(positions, expected)
    # each slice's distance is the projection of its own centre: check against the frame's grid
    grid = frame.grid
    for k in range(5):
        middle = grid.origin + grid.direction @ (np.array([3.5, 3.5, k]) * grid.spacing)
        assert positions[k] == pytest.approx(float((middle - np.array([5.0, -3.0, 0.0])) @ axis))


@pytest.mark.parametrize("where", ["input", "bottleneck"])
def test_a_network_with_the_position_started_from_one_without_computes_what_it_did(where, tmp_path):
    from kneeseg.bundle import save_bundle
    from kneeseg.model import build_model
    from kneeseg.train import _load_initial_weights

    plain_spec, position_spec = NetworkSpec(filters=4, depth=2), NetworkSpec(filters=4, depth=2, slice_position=where)
    plain = build_model(plain_spec, 32)
    save_bundle(tmp_path / "plain", plain, card_for(SEPARATE_BONES, plain_spec, FrameSpec(size=32)))
    with_position = build_model(position_spec, 32)
    _load_initial_weights(with_position, tmp_path / "plain", position_spec)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 1)).astype(np.float32)
    np.testing.assert_allclose(with_position.predict(position_channels(x, [-40.0, 30.0]), verbose=0),
                               plain.predict(x, verbose=0), atol=1e-5)
    # a network that has learnt a position cannot start one without it
    save_bundle(tmp_path / "with", with_position, card_for(SEPARATE_BONES, position_spec, FrameSpec(size=32)))
    with pytest.raises(BundleError, match="differs from the one configured"):
        _load_initial_weights(build_model(plain_spec, 32), tmp_path / "with", plain_spec)


def test_the_bottleneck_position_changes_the_output_once_its_last_layer_is_not_zero():
    from kneeseg.model import build_model

    model = build_model(NetworkSpec(filters=4, depth=2, slice_position="bottleneck"), 32)
    x = np.random.default_rng(0).normal(size=(1, 32, 32, 1)).astype(np.float32)
    near, far = position_channels(x, [0.0]), position_channels(x, [60.0])
    np.testing.assert_allclose(model.predict(near, verbose=0), model.predict(far, verbose=0), atol=1e-6)
    layer = model.get_layer("position_bias")
    layer.set_weights([np.full_like(w, 0.5) for w in layer.get_weights()])
    assert np.abs(model.predict(near, verbose=0) - model.predict(far, verbose=0)).max() > 1e-3
    # the image does not reach the position layers, nor the position the first convolution
    assert model.get_layer("down0_conv1").get_weights()[0].shape[2] == 1


def test_inference_gives_known_distances_for_a_found_centre_and_none_for_a_guessed_one(monkeypatch):
    import SimpleITK as sitk

    from kneeseg import infer

    image = sitk.GetImageFromArray(np.random.default_rng(1).random((9, 16, 16)).astype(np.float32))
    image.SetSpacing((2.0, 2.0, 3.0))
    card = card_for(SEPARATE_BONES, NetworkSpec(filters=4, depth=2, slice_position="input"),
                    FrameSpec(planes=("axial",), window_mm=32.0, size=16))
    seen = []

    def predictor(batch):
        seen.append(batch.copy())
        return np.full(batch.shape[:3] + (5,), 0.2, np.float32)

    centre = (15.0, 15.0, 9.0)
    frame, _ = infer.frame_probabilities(image, predictor, card, "axial", centre)
    positions = np.concatenate([b[:, 0, 0, 1] for b in seen]) * POSITION_SCALE_MM
    np.testing.assert_allclose(positions, slice_positions_mm(frame, centre), atol=1e-4)
    assert {float(v) for b in seen for v in b[..., 2].ravel()} == {1.0}
    seen.clear()
    infer.frame_probabilities(image, predictor, card, "axial", centre, centre_known=False)
    assert all(not b[..., 1:].any() for b in seen)
    # the centre segment() measures from: the caller's point is the knee centre, the image centre a guess
    assert infer.find_centre(image, predictor, card, how=centre)[1] is True
    assert infer.find_centre(image, predictor, card, how="image")[1] is False


def test_the_synthesizer_measures_each_slice_from_the_knee_centre_as_the_view_shows_it(tmp_path):
    from kneeseg.synth.config import SynthesisConfig
    from kneeseg.synth.draws import View
    from kneeseg.synth.synthesizer import synthetic_slice_positions_mm as synthetic_positions

    config = SynthesisConfig(position_error_mm=0.0, position_unknown_probability=0.0)
    knee = np.array([10.0, -20.0, 30.0])
    # the view centred 8 mm above the knee along z, the anatomy scaled 2x: the knee lies 4 mm below
    # the view centre in the frame
    view = View(0, "axial", 1.0, knee + np.array([0.0, 0.0, 8.0]), np.diag([2.0, 2.0, 2.0]), False, None, 50.0,
                np.array([-4.0, 0.0, 6.0]), False)
    axis = plane_direction("axial")[2, 2]  # the slice axis' z component (+-1)
    positions = synthetic_positions(np.random.default_rng(0), config, view, knee, view.slice_offsets_mm)
    np.testing.assert_allclose(positions, view.slice_offsets_mm + 4.0 * axis)
    unknown = SynthesisConfig(position_unknown_probability=1.0)
    assert synthetic_positions(np.random.default_rng(0), unknown, view, knee, view.slice_offsets_mm) is None
    noisy = SynthesisConfig(position_error_mm=5.0, position_unknown_probability=0.0)
    errors = [synthetic_positions(np.random.default_rng(s), noisy, view, knee, [0.0])[0] - 4.0 * axis
              for s in range(200)]
    assert 3.5 < np.std(errors) < 6.5 and max(np.abs(errors)) <= 15.0 + 1e-9


def test_a_bundle_without_the_position_starts_a_model_with_it_that_segments_with_both_engines(tmp_path):
    import SimpleITK as sitk

    from conftest import toy_knee, write_toy_pairs
    from kneeseg import infer
    from kneeseg.bundle import load_bundle
    from kneeseg.train import TrainConfig
    from kneeseg.workflows.train import train_bundle

    data = write_toy_pairs(tmp_path / "data", n=3, size=(32, 32, 24), spacing=(2.0, 2.0, 2.0))
    common = dict(filters=4, depth=2, input_size=32, planes=("sagittal", "axial"), window_mm=80.0, batch_size=4,
                  steps_per_epoch=2, validation_steps=1, epochs=1)
    train_bundle(TrainConfig.from_flat(**common), tmp_path / "plain", tmp_path / "plain.work", data=data)
    config = TrainConfig.from_flat(**{**common, "learning_rate": 1e-2}, slice_position="bottleneck",
                                   train_layers="position", init_from=str(tmp_path / "plain"))
    train_bundle(config, tmp_path / "bundle", tmp_path / "work", data=data)
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.card.network.slice_position and bundle.onnx_path is not None
    # only the position layers trained: every other layer is the start bundle's, to the bit
    start = {layer.name: layer.get_weights() for layer in load_bundle(tmp_path / "plain").load_keras_model().layers}
    trained = {layer.name: layer.get_weights() for layer in bundle.load_keras_model().layers if layer.weights}
    for name, weights in trained.items():
        if name.startswith("position_"):
            continue
        for before, after in zip(start[name], weights, strict=True):
            np.testing.assert_array_equal(before, after)
    assert np.abs(trained["position_bias"][0]).max() > 0  # it started at zero
    image, _ = toy_knee(size=(32, 32, 24), spacing=(2.0, 2.0, 2.0))
    before = sitk.GetArrayFromImage(image)
    centre = tuple(np.array(image.TransformContinuousIndexToPhysicalPoint((16.0, 16.0, 12.0))))
    keras_result = infer.segment(image, bundle, infer.SegmentOptions(centre=centre, backend="keras"))
    onnx_result = infer.segment(image, bundle, infer.SegmentOptions(centre=centre, backend="onnx"))
    assert keras_result.labelmap.GetSize() == image.GetSize()
    keras_labels, onnx_labels = (sitk.GetArrayFromImage(r.labelmap) for r in (keras_result, onnx_result))
    assert (keras_labels == onnx_labels).mean() > 0.999
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), before)  # the input is not touched


def test_training_only_the_position_layers_needs_a_start_bundle_and_a_bottleneck_position():
    from kneeseg.errors import InputError
    from kneeseg.train import TrainConfig

    with pytest.raises(InputError, match="train_layers.*init_from"):
        TrainConfig.from_flat(slice_position="bottleneck", train_layers="position")
    with pytest.raises(InputError, match="slice_position must be 'bottleneck'"):
        TrainConfig.from_flat(slice_position="input", train_layers="position", init_from="start")
    with pytest.raises(InputError, match="train_layers"):
        TrainConfig.from_flat(slice_position="bottleneck", train_layers="decoder", init_from="start")

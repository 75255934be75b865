"""U-Net builders: the thesis network's size and structure, the 3D variant, both output kinds."""

import keras
import numpy as np
import pytest

from kneeseg.model import build_model, build_unet_2d, build_unet_3d
from kneeseg.specs import NetworkSpec


def test_thesis_unet_has_about_195k_parameters():
    model = build_unet_2d()
    assert 190_000 <= model.count_params() <= 200_000
    assert model.input_shape == (None, 224, 224, 1)
    assert model.output_shape == (None, 224, 224, 5)


def test_thesis_unet_structure():
    model = build_unet_2d()
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("MaxPooling2D") == 4
    assert kinds.count("Conv2DTranspose") == 4
    assert kinds.count("Add") == 4 and "Concatenate" not in kinds  # additive skips
    dropouts = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert len(dropouts) == 1 and dropouts[0].rate == 0.5
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D) and layer.name != "head"]
    assert {c.filters for c in convs} == {32}
    assert {c.get_config()["activation"] for c in convs} == {"elu"}
    # Dropout sits at the bottleneck: right after its convolutions, before the first upsampling.
    names = [layer.name for layer in model.layers]
    assert names.index("bottleneck_dropout") == names.index("bottleneck_conv2") + 1


def test_width_and_depth_are_configurable():
    small = build_unet_2d(input_size=64, filters=8, depth=2)
    assert small.count_params() < build_unet_2d(input_size=64, filters=16, depth=2).count_params()
    assert sum(isinstance(layer, keras.layers.MaxPooling2D) for layer in small.layers) == 2
    with pytest.raises(ValueError, match="divisible"):
        build_unet_2d(input_size=100, depth=3)


def test_merged_output_is_one_sigmoid_channel_and_separate_a_softmax():
    x = np.random.rand(2, 32, 32, 1).astype(np.float32)
    merged = build_unet_2d(input_size=32, filters=4, depth=2, output="merged", n_classes=1)
    out = keras.ops.convert_to_numpy(merged(x))
    assert out.shape == (2, 32, 32, 1) and out.min() >= 0 and out.max() <= 1
    separate = build_unet_2d(input_size=32, filters=4, depth=2, n_classes=5)
    out = keras.ops.convert_to_numpy(separate(x))
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)


def test_3d_variant_uses_3x3x3_kernels_and_never_pools_along_z():
    model = build_unet_3d(input_size=32, n_slices=6, filters=4, depth=2)
    pools = [layer for layer in model.layers if isinstance(layer, keras.layers.MaxPooling3D)]
    assert all(tuple(p.pool_size) == (1, 2, 2) for p in pools)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv3D) and layer.name != "head"]
    assert all(tuple(c.kernel_size) == (3, 3, 3) for c in convs)
    out = model(np.random.rand(1, 6, 32, 32, 1).astype(np.float32))
    assert tuple(out.shape) == (1, 6, 32, 32, 5)


def test_3d_variant_accepts_any_slice_count():
    model = build_model(NetworkSpec(dims=3, n_classes=2, filters=4, depth=2), input_size=32)
    for n in (5, 12):
        assert tuple(model(np.zeros((1, n, 32, 32, 1), np.float32)).shape) == (1, n, 32, 32, 2)


def test_saved_model_loads_in_safe_mode(tmp_path):
    model = build_unet_2d(input_size=32, filters=4, depth=2)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False, safe_mode=True)
    x = np.random.rand(1, 32, 32, 1).astype(np.float32)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-6)
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in loaded.layers)

"""U-Net builders (Keras 3, any backend), read top to bottom.

The thesis network: an encoder-decoder U-Net with a constant number of filters at every level, ELU
activations, one Dropout(0.5) at the bottleneck, transposed-convolution upsampling and *additive*
skip connections (not concatenation: it keeps the filter count, and so the parameter count, small).
With 4 levels and 32 filters it has 195k parameters.
"""

import keras
from keras import layers

from .specs import POSITION_CHANNELS, FrameSpec, NetworkSpec

_NETWORK, _FRAME = NetworkSpec(), FrameSpec()  # the builders' defaults are the specs' own


def _conv_block(x, filters, conv, kernel, name):
    for i in (1, 2):
        x = conv(filters, kernel, padding="same", activation="elu", kernel_initializer="he_normal",
                 name=f"{name}_conv{i}")(x)
    return x


def _head(x, n_classes, output, conv, name="head"):
    if output == "merged":
        return conv(1, 1, activation="sigmoid", name=name, dtype="float32")(x)
    return conv(n_classes, 1, activation="softmax", name=name, dtype="float32")(x)


def _position_bias(position, filters):
    """A bias per bottleneck filter from the position channels (constant over a slice): a small dense
    embedding, its last layer starting at zero so that a network fine-tuned from one without the
    position starts out computing exactly what it did."""
    p = layers.GlobalAveragePooling2D(name="position_mean")(position)
    p = layers.Dense(filters, activation="elu", name="position_embedding")(p)
    p = layers.Dense(filters, kernel_initializer="zeros", name="position_bias")(p)
    return layers.Reshape((1, 1, filters), name="position_bias_map")(p)


def _check(output, n_classes, depth, filters):
    if output not in ("merged", "separate"):
        raise ValueError(f"output must be 'merged' or 'separate', not {output!r}")
    if output == "separate" and n_classes < 2:
        raise ValueError("separate output needs at least 2 classes (background + one bone)")
    if depth < 1 or filters < 1:
        raise ValueError("depth and filters must be positive")


def build_unet_2d(input_size=_FRAME.size, n_classes=_NETWORK.n_classes, filters=_NETWORK.filters,
                  depth=_NETWORK.depth, dropout=_NETWORK.dropout, output=_NETWORK.output, channels=1, position=None,
                  name="unet2d"):
    """The thesis 2D U-Net.

    ``depth`` poolings (levels), ``filters`` convolution filters everywhere, ``output`` "separate"
    (softmax over ``n_classes`` = background + bones) or "merged" (one sigmoid bone channel).
    ``input_size`` must be divisible by ``2**depth``. ``channels``: 1 for a slice alone, more for a
    slice with its neighbours (2.5D; the labelled slice is the middle channel). ``position``: two
    more input channels (the slice's distance from the knee centre, and whether it is known) enter at
    the "input" (into the first convolution) or the "bottleneck" (:func:`_position_bias`).
    """
    _check(output, n_classes, depth, filters)
    if input_size % (2 ** depth):
        raise ValueError(f"input size {input_size} is not divisible by 2**depth = {2 ** depth}")
    inputs = keras.Input((input_size, input_size, channels + (POSITION_CHANNELS if position else 0)), name="image")
    x = inputs[..., :channels] if position == "bottleneck" else inputs
    skips = []
    for level in range(depth):
        x = _conv_block(x, filters, layers.Conv2D, 3, f"down{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = _conv_block(x, filters, layers.Conv2D, 3, "bottleneck")
    if position == "bottleneck":
        x = layers.Add(name="bottleneck_position")([x, _position_bias(inputs[..., channels:], filters)])
    x = layers.Dropout(dropout, name="bottleneck_dropout")(x)
    for level in reversed(range(depth)):
        x = layers.Conv2DTranspose(filters, 3, strides=2, padding="same", activation="elu",
                                   name=f"up{level}_transpose")(x)
        x = layers.Add(name=f"up{level}_skip")([x, skips[level]])
        x = _conv_block(x, filters, layers.Conv2D, 3, f"up{level}")
    outputs = _head(x, n_classes, output, layers.Conv2D)
    return keras.Model(inputs, outputs, name=name)


def build_unet_3d(input_size=_FRAME.size, n_slices=24, n_classes=_NETWORK.n_classes, filters=_NETWORK.filters,
                  depth=_NETWORK.depth, dropout=_NETWORK.dropout, output=_NETWORK.output, name="unet3d"):
    """The 3D variant: 3x3x3 kernels, pooling in-plane only (the thick z axis is never pooled)."""
    _check(output, n_classes, depth, filters)
    if input_size % (2 ** depth):
        raise ValueError(f"input size {input_size} is not divisible by 2**depth = {2 ** depth}")
    inputs = keras.Input((n_slices, input_size, input_size, 1), name="image")
    x = inputs
    skips = []
    for level in range(depth):
        x = _conv_block(x, filters, layers.Conv3D, 3, f"down{level}")
        skips.append(x)
        x = layers.MaxPooling3D((1, 2, 2), name=f"pool{level}")(x)
    x = _conv_block(x, filters, layers.Conv3D, 3, "bottleneck")
    x = layers.Dropout(dropout, name="bottleneck_dropout")(x)
    for level in reversed(range(depth)):
        x = layers.Conv3DTranspose(filters, 3, strides=(1, 2, 2), padding="same", activation="elu",
                                   name=f"up{level}_transpose")(x)
        x = layers.Add(name=f"up{level}_skip")([x, skips[level]])
        x = _conv_block(x, filters, layers.Conv3D, 3, f"up{level}")
    outputs = _head(x, n_classes, output, layers.Conv3D)
    return keras.Model(inputs, outputs, name=name)


def build_model(network, input_size: int):
    """Build the U-Net a :class:`~kneeseg.specs.NetworkSpec` describes, for ``input_size`` pixels."""
    common = dict(input_size=input_size, n_classes=network.n_classes, filters=network.filters,
                  depth=network.depth, dropout=network.dropout, output=network.output)
    if network.dims == 3:
        return build_unet_3d(n_slices=network.n_slices, **common)
    return build_unet_2d(channels=network.input_channels_of_slices, position=network.slice_position, **common)

"""Class 7: the Python API checks its image at the door.

``infer.segment`` refuses, with an InputError naming the problem, every image the command line
refuses (same rules, ``io.validate_volume``): no empty segmentation from a NaN, constant or
single-slice image, no raw TensorFlow/SimpleITK error for 2D, 4D or vector images. The image
passed in is never modified, and no network is built for a refused image.
"""

import numpy as np
import pytest
import SimpleITK as sitk

from attack import fake_bundle, fake_predictor, toy_knee  # noqa: F401


def _volume(array, spacing=(1.0, 1.0, 1.0)):
    image = sitk.GetImageFromArray(np.asarray(array))
    image.SetSpacing(spacing[: image.GetDimension()] if image.GetDimension() <= 3 else spacing + (1.0,))
    return image


def _knee():
    return toy_knee(size=(24, 24, 20), spacing=(3.0, 3.0, 3.0))[0]


def _with(change):
    array = sitk.GetArrayFromImage(_knee())
    change(array)
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(_knee())
    return image


def _nan(a):
    a[3, 4, 5] = np.nan


def _inf(a):
    a[0, 0, 0] = np.inf


def _neg_inf(a):
    a[-1, -1, -1] = -np.inf


def _sheared():
    image = _knee()
    image.SetDirection((1, 0.2, 0, 0, 1, 0, 0, 0, 1))
    return image


BAD_IMAGES = {
    "NaN voxel": (lambda: _with(_nan), "NaN or infinite"),
    "+Inf voxel": (lambda: _with(_inf), "NaN or infinite"),
    "-Inf voxel": (lambda: _with(_neg_inf), "NaN or infinite"),
    "constant": (lambda: _volume(np.full((20, 24, 24), 7.0, np.float32)), "constant"),
    "all zero int16": (lambda: _volume(np.zeros((20, 24, 24), np.int16)), "constant"),
    "single slice": (lambda: _volume(np.random.default_rng(0).random((1, 24, 24)).astype(np.float32)), "single slice"),
    "single row": (lambda: _volume(np.random.default_rng(0).random((20, 1, 24)).astype(np.float32)), "single slice"),
    "2D": (lambda: _volume(np.random.default_rng(0).random((24, 24)).astype(np.float32)), "2D image"),
    "4D": (lambda: sitk.JoinSeries([_knee(), _knee()]), "4D image"),
    "vector": (lambda: sitk.Compose(_knee(), _knee(), _knee()), "3 components"),
    "RGB-like 2 components": (lambda: sitk.Compose(_knee(), _knee()), "2 components"),
    "sheared direction": (_sheared, "not orthonormal"),
    "a numpy array": (lambda: np.zeros((20, 24, 24), np.float32), "not a SimpleITK image"),
    "None": (lambda: None, "not a SimpleITK image"),
}


@pytest.mark.parametrize("make, words", BAD_IMAGES.values(), ids=BAD_IMAGES.keys())
def test_segment_refuses_what_the_command_line_refuses(fake_bundle, make, words):  # noqa: F811
    from kneeseg.bundle import load_bundle
    from kneeseg.errors import InputError
    from kneeseg.infer import segment

    image = make()
    before = sitk.GetArrayFromImage(image).tobytes() if isinstance(image, sitk.Image) else None
    built = []

    def predictor(batch):
        built.append(1)
        return fake_predictor(batch)

    with pytest.raises(InputError) as info:
        segment(image, load_bundle(fake_bundle), predictor=predictor)
    message = str(info.value)
    assert words in message and "\n" not in message and message.startswith("the input image: ")
    assert not built  # refused at the door: no slice was predicted
    if before is not None:
        assert sitk.GetArrayFromImage(image).tobytes() == before


def test_a_sound_image_still_segments(fake_bundle):  # noqa: F811
    from kneeseg.bundle import load_bundle
    from kneeseg.infer import segment

    image = _knee()
    result = segment(image, load_bundle(fake_bundle), predictor=fake_predictor)
    assert result.labelmap.GetSize() == image.GetSize()

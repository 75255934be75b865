"""The ONNX inference path: export, equal outputs, bundles with a graph, backend choice, TF-free use."""

import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from kneeseg import bundle as bundles
from kneeseg import infer, onnx_backend
from kneeseg.cpus import available_cpus
from kneeseg.errors import BundleError, InputError
from conftest import REPO, toy_knee

# Stated tolerance of the exported graph against Keras (float32 both): measured 2e-6 on the default
# 32-filter U-Net (docs/benchmarks.md); probabilities are in [0, 1].
ATOL = 1e-4
TOY = dict(size=(48, 48, 40), spacing=(1.5, 1.5, 1.5))


@pytest.fixture(scope="module")
def onnx_bundle(tiny_bundle, tmp_path_factory):
    """The tiny trained bundle re-saved with an ONNX graph (what training writes when tf2onnx is installed)."""
    source = bundles.load_bundle(tiny_bundle)
    model = source.load_keras_model()
    root = tmp_path_factory.mktemp("onnx_bundle")
    graph = onnx_backend.export_onnx(model, root / "work" / "model.onnx")
    return bundles.save_bundle(root / "bundle", model, source.card, onnx_path=graph)


@pytest.fixture(autouse=True)
def float32(monkeypatch):
    monkeypatch.setenv("KNEESEG_PRECISION", "float32")


def test_exported_graph_matches_keras_for_any_batch_size(onnx_bundle):
    bundle = bundles.load_bundle(onnx_bundle)
    model = bundle.load_keras_model()
    predictor = onnx_backend.OnnxPredictor(bundle)
    assert predictor.name == "onnx"
    rng = np.random.default_rng(0)
    for batch in (1, 3, 8):
        x = rng.standard_normal((batch, 64, 64, 1)).astype(np.float32)
        expected = np.asarray(model(x, training=False))
        got = predictor(x)
        assert got.shape == expected.shape == (batch, 64, 64, 5) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=ATOL)


def test_card_records_the_graph_checksum_and_a_tampered_graph_is_refused(onnx_bundle, tmp_path):
    import shutil

    card = bundles.load_bundle(onnx_bundle).card
    assert card.weights["model.onnx"].sha256 == bundles.sha256_of(onnx_bundle / "model.onnx")
    broken = tmp_path / "broken"
    shutil.copytree(onnx_bundle, broken)
    with open(broken / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="checksum mismatch for model.onnx"):
        bundles.load_bundle(broken)


def test_both_backends_give_the_same_label_map(onnx_bundle):
    bundle = bundles.load_bundle(onnx_bundle)
    image, _ = toy_knee(seed=41, **TOY)
    keras_result = infer.segment(image, bundle, infer.SegmentOptions(backend="keras"))
    onnx_result = infer.segment(image, bundle, infer.SegmentOptions(backend="onnx"))
    a = sitk.GetArrayFromImage(keras_result.labelmap)
    b = sitk.GetArrayFromImage(onnx_result.labelmap)
    assert (a > 0).sum() > 1000
    np.testing.assert_array_equal(a, b)
    assert keras_result.volumes_ml == onnx_result.volumes_ml


def test_auto_backend_and_the_manual_override(onnx_bundle, tiny_bundle, monkeypatch):
    with_graph = bundles.load_bundle(onnx_bundle)
    without_graph = bundles.load_bundle(tiny_bundle)
    # TensorFlow installed: it is the faster engine (docs/benchmarks.md), so auto runs Keras.
    assert infer.auto_backend(with_graph) == "keras"
    assert isinstance(infer.make_predictor(with_graph), infer.KerasPredictor)
    assert isinstance(infer.make_predictor(with_graph, "onnx"), onnx_backend.OnnxPredictor)
    assert isinstance(infer.make_predictor(with_graph, "keras"), infer.KerasPredictor)
    with pytest.raises(InputError, match="no ONNX graph"):
        infer.make_predictor(without_graph, "onnx")
    with pytest.raises(InputError, match="unknown backend"):
        infer.make_predictor(with_graph, "torch")
    # The light install (onnxruntime, no TensorFlow): auto runs the graph.
    monkeypatch.setattr(infer, "_tensorflow_installed", lambda: False)
    assert infer.auto_backend(with_graph) == "onnx"
    assert isinstance(infer.make_predictor(with_graph), onnx_backend.OnnxPredictor)
    with pytest.raises(InputError, match="needs TensorFlow"):
        infer.make_predictor(without_graph)


def test_a_missing_engine_names_the_one_install_command_and_is_reported_as_such(onnx_bundle, tiny_bundle,
                                                                                monkeypatch):
    from kneeseg import contract
    from kneeseg.errors import MissingPackage

    with_graph, without_graph = bundles.load_bundle(onnx_bundle), bundles.load_bundle(tiny_bundle)

    monkeypatch.setattr(infer, "_tensorflow_installed", lambda: False)
    monkeypatch.setattr(infer, "_onnxruntime_installed", lambda: False)
    cases = [((with_graph, "auto"), "onnxruntime", "pip install 'kneeseg[onnx]'"),
             ((with_graph, "onnx"), "onnxruntime", "pip install 'kneeseg[onnx]'"),
             ((with_graph, "keras"), "tensorflow", "pip install 'kneeseg[tf]'"),
             ((without_graph, "auto"), "tensorflow", "pip install 'kneeseg[tf]'")]
    for args, package, command in cases:
        with pytest.raises(MissingPackage) as info:
            infer.make_predictor(*args)
        assert str(info.value).endswith(command) and "\n" not in str(info.value)
        assert contract.error_kind(info.value) == contract.ERROR_MISSING_PACKAGE
        assert contract.error_fields(info.value) == {"package": package, "install": command}


def test_export_without_tf2onnx_raises_a_clear_import_error(monkeypatch, tmp_path):
    from kneeseg.workflows.train import _try_export_onnx

    monkeypatch.setattr(onnx_backend, "_importable", lambda name: name != "tf2onnx")
    with pytest.raises(ImportError, match="pip install tf2onnx"):
        onnx_backend.export_onnx(object(), tmp_path / "m.onnx")
    assert _try_export_onnx(object(), tmp_path, None) is None  # training falls back to a Keras-only bundle


def test_sessions_use_the_cpus_of_this_process(onnx_bundle):
    predictor = onnx_backend.OnnxPredictor(bundles.load_bundle(onnx_bundle), threads=1)
    assert predictor.session.get_session_options().intra_op_num_threads == 1
    assert available_cpus() >= 1


def test_segments_without_tensorflow(onnx_bundle, tmp_path):
    """A radiologist's install: onnxruntime, no TensorFlow or Keras importable at all."""
    image, _ = toy_knee(seed=42, **TOY)
    volume = tmp_path / "knee.nrrd"
    sitk.WriteImage(image, str(volume))
    script = ("import sys; sys.modules['tensorflow'] = None; sys.modules['keras'] = None; sys.modules['tf2onnx'] = None\n"
              "from kneeseg import cli\n"
              f"code = cli.main(['segment', {str(volume)!r}, '-o', {str(tmp_path / 'out.nrrd')!r}, '--model', "
              f"{str(onnx_bundle)!r}, '--progress', 'none'])\n"
              "assert 'tensorflow' not in [m.split('.')[0] for m in sys.modules if sys.modules[m] is not None]\n"
              "sys.exit(code)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO / "KneeSegmentation"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    labels = sitk.ReadImage(str(tmp_path / "out.nrrd"))
    assert labels.GetSize() == image.GetSize()
    assert sitk.GetArrayViewFromImage(labels).max() > 0

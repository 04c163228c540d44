"""Tests for core.model: graph shapes, in-model preprocessing, starting weights, save/load."""

from __future__ import annotations

import json
import zipfile

import h5py
import keras
import numpy as np
import pytest

from core.config import Config
from core.model import (
    VGGPreprocess,
    build_base,
    build_model,
    feature_extractor,
    get_base,
    get_head,
    load_model,
    resolve_weights,
    save_model,
)


@pytest.fixture(scope="module")
def source_base():
    """A VGG-19 no-top base with seeded random weights: stands in for the ImageNet file."""
    keras.utils.set_random_seed(123)
    return keras.applications.VGG19(include_top=False, weights=None, input_shape=(64, 64, 3))


def _write_legacy_notop_h5(base, path):
    """Same layout as vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5 (Keras 2 HDF5 weights)."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([layer.name.encode() for layer in base.layers])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.1.5"
        for layer in base.layers:
            g = f.create_group(layer.name)
            names = []
            for i, w in enumerate(layer.get_weights()):
                n = f"{layer.name}_{'W' if i == 0 else 'b'}_1:0"
                g.create_dataset(n, data=w)
                names.append(n.encode())
            g.attrs["weight_names"] = np.array(names, dtype="S")


def _assert_same_weights(a, b):
    wa, wb = a.get_weights(), b.get_weights()
    assert len(wa) == len(wb) == 32  # 16 conv layers x (kernel, bias)
    for x, y in zip(wa, wb):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("size,feat", [(32, 1), (64, 2)])
def test_build_shapes(size, feat):
    model = build_model(Config(input_size=size, weights="none", head_units=8))
    assert model.input_shape == (None, size, size, 3)
    assert model.output_shape == (None, 1)
    base, head = get_base(model), get_head(model)
    assert base.output_shape == (None, feat, feat, 512)
    assert base.get_layer("block5_conv4").output.shape[1:] == (size // 16, size // 16, 512)
    assert head.input_shape == (None, feat, feat, 512)
    assert head.get_layer("fc").units == 8
    assert feature_extractor(model).output_shape == (None, feat, feat, 512)
    x = np.random.default_rng(0).integers(0, 256, (3, size, size, 3)).astype("uint8")
    p = np.asarray(model(x.astype("float32")))
    assert p.shape == (3, 1) and np.all((p >= 0) & (p <= 1))


def test_feature_extractor_shares_layers():
    model = build_model(Config(input_size=32, weights="none", head_units=8))
    fe = feature_extractor(model)
    assert fe.get_layer("base") is get_base(model)
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(
        np.asarray(get_head(model)(fe(x))), np.asarray(model(x)), rtol=1e-5, atol=1e-6
    )


def test_preprocessing_is_inside_the_model_and_equals_keras():
    x = np.random.default_rng(2).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    ours = np.asarray(VGGPreprocess()(x))
    ref = keras.applications.vgg19.preprocess_input(x.copy())
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)
    # uint8 input works too (serving passes raw pixels)
    np.testing.assert_allclose(np.asarray(VGGPreprocess()(x.astype("uint8"))),
                               keras.applications.vgg19.preprocess_input(x.astype("uint8").astype("float32")),
                               atol=1e-4)
    model = build_model(Config(input_size=32, weights="none", head_units=8))
    assert isinstance(model.get_layer("preprocess"), VGGPreprocess)
    # the layers sit between the input and the base: intensity standardisation (default on),
    # then the VGG preprocessing
    assert [layer.name for layer in model.layers[1:4]] == ["intensity_norm", "preprocess", "base"]
    plain = build_model(Config(input_size=32, weights="none", head_units=8, intensity_norm=False))
    assert plain.layers[1].name == "preprocess" and plain.layers[2].name == "base"


def test_intensity_standardisation_removes_exposure_and_contrast():
    from core.model import IntensityStandardize

    x = np.random.default_rng(3).uniform(40, 200, (2, 32, 32, 3)).astype("float32")
    layer = IntensityStandardize()
    a, b = np.asarray(layer(x)), np.asarray(layer(0.5 * x + 30.0))  # darker, flatter copy
    np.testing.assert_allclose(a, b, atol=4.0)  # (std + 1) in the denominator: ~1/std relative
    assert abs(float(a.mean()) - 128.0) < 1e-2


def test_preprocess_stays_float32_under_mixed_policy():
    prev = keras.mixed_precision.global_policy()
    try:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        layer = VGGPreprocess()
        out = layer(np.full((1, 32, 32, 3), 200.0, dtype="float32"))
    finally:
        keras.mixed_precision.set_global_policy(prev)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    np.testing.assert_allclose(np.asarray(out)[0, 0, 0], [200 - 103.939, 200 - 116.779, 200 - 123.68], atol=1e-4)


def test_local_weights_file_keras3_weights_h5(tmp_path, source_base):
    path = tmp_path / "vgg19_notop.weights.h5"
    source_base.save_weights(str(path))
    cfg = Config(input_size=32, weights=str(path), head_units=8)  # other input size than the source
    model = build_model(cfg)
    _assert_same_weights(get_base(model), source_base)
    assert cfg.weights_source == "local file: vgg19_notop.weights.h5"


def test_local_weights_file_legacy_h5_layout(tmp_path, source_base):
    path = tmp_path / "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
    _write_legacy_notop_h5(source_base, path)
    model = build_model(Config(input_size=32, weights=str(path), head_units=8))
    _assert_same_weights(get_base(model), source_base)
    # and it is not just a coincidence of seeds: a 'none' model differs
    other = build_model(Config(input_size=32, weights="none", head_units=8))
    assert not np.array_equal(get_base(other).get_weights()[0], source_base.get_weights()[0])


def test_missing_weights_file_is_value_error(tmp_path):
    missing = tmp_path / "nope.h5"
    with pytest.raises(ValueError) as ei:
        build_model(Config(input_size=32, weights=str(missing)))
    msg = str(ei.value)
    assert "Received:" in msg and "nope.h5" in msg and "not found" in msg
    with pytest.raises(ValueError, match="Received:"):
        resolve_weights(str(missing))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_corrupt_or_wrong_weights_file_is_value_error(tmp_path):
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"definitely not hdf5")
    with pytest.raises(ValueError, match="Could not load VGG-19 no-top weights"):
        build_base(Config(input_size=32, weights=str(garbage)))
    # a valid .weights.h5 of another architecture
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    wrong = tmp_path / "dense.weights.h5"
    other.save_weights(str(wrong))
    with pytest.raises(ValueError, match="Could not load VGG-19 no-top weights"):
        build_base(Config(input_size=32, weights=str(wrong)))


def test_imagenet_without_internet_is_clear_value_error(monkeypatch):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(ValueError) as ei:
        build_model(Config(input_size=32, weights="imagenet"))
    msg = str(ei.value)
    assert "Could not download the ImageNet VGG-19 weights" in msg
    assert "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5" in msg
    # Plain advice naming the admin form's option and the CLI flag; no code syntax (issue 15).
    assert '"none (random initialisation)"' in msg and "--weights none" in msg
    assert "weights='none'" not in msg and 'weights="none"' not in msg
    assert "Received: weights='imagenet'" in msg


def test_resolve_weights():
    assert resolve_weights("none") is None
    assert resolve_weights("imagenet") == "imagenet"


def test_save_load_round_trip_keeps_predictions(tmp_path):
    cfg = Config(input_size=32, weights="none", head_units=8)
    model = build_model(cfg)
    # give it an optimizer with state, as after training (built, without paying for a fit)
    model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy")
    model.optimizer.build(model.trainable_variables)
    assert len(model.optimizer.variables) > 60  # Adam: 2 slots per variable
    x = np.random.default_rng(3).integers(0, 256, (6, 32, 32, 3)).astype("float32")
    path = tmp_path / "model.keras"
    save_model(model, path, cfg)
    loaded = load_model(path)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-6)
    assert isinstance(loaded.get_layer("preprocess"), VGGPreprocess)
    assert getattr(loaded, "optimizer", None) is None
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        meta = json.loads(z.read("config.json"))
        with z.open("model.weights.h5") as fh, h5py.File(fh, "r") as h5:
            assert "optimizer" not in h5
    assert not meta.get("compile_config")  # no optimizer / loss config either
    assert "model.weights.h5" in names


def test_saved_model_is_float32_even_from_mixed_precision(tmp_path):
    cfg = Config(input_size=32, weights="none", head_units=8, precision="mixed_bfloat16")
    prev = keras.mixed_precision.global_policy()
    try:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        model = build_model(cfg)
    finally:
        keras.mixed_precision.set_global_policy(prev)
    path = tmp_path / "model.keras"
    save_model(model, path, cfg)
    assert keras.mixed_precision.global_policy().name == prev.name
    loaded = load_model(path)
    assert all(str(w.dtype) == "float32" for w in loaded.weights)
    assert get_base(loaded).dtype_policy.name == "float32"


def test_load_model_uses_safe_mode(tmp_path):
    inp = keras.Input((4,))
    out = keras.layers.Lambda(lambda t: t * 2)(inp)
    path = tmp_path / "lambda.keras"
    keras.Model(inp, out).save(str(path))
    with pytest.raises(ValueError, match="(?i)lambda"):
        load_model(path)


def test_micro_test_backbone_keeps_vgg_layout_and_refuses_imagenet():
    """The unit tests' micro backbone: VGG-19's block structure and key layer names, tiny."""
    from core.config import Config
    from core.model import build_model, get_base

    model = build_model(Config(backbone="micro", input_size=64, weights="none", head_units=8))
    base = get_base(model)
    for name, side in (("block3_conv2", 16), ("block5_conv4", 4)):
        assert base.get_layer(name).output.shape[1:3] == (side, side)
    assert base.output.shape[1:] == (2, 2, 16) and model.count_params() < 50_000
    with pytest.raises(ValueError, match="Received: weights='imagenet'"):
        build_model(Config(backbone="micro", input_size=32, weights="imagenet"))


# --- the logit output (issue 23) -------------------------------------------------------------------
def _micro(size: int = 32):
    return build_model(Config(backbone="micro", input_size=size, weights="none", head_units=8))


def test_new_models_end_in_a_linear_logit_then_a_sigmoid():
    head = get_head(_micro())
    logit, prob = head.get_layer("logit"), head.get_layer("prob")
    assert isinstance(logit, keras.layers.Dense) and logit.units == 1 and logit.activation.__name__ == "linear"
    assert isinstance(prob, keras.layers.Activation) and prob.activation.__name__ == "sigmoid"
    assert head.layers[-1] is prob and logit.dtype_policy.name == prob.dtype_policy.name == "float32"


def test_logit_view_of_a_new_model_and_after_save_and_load(tmp_path):
    from core.model import logit_view

    cfg = Config(backbone="micro", input_size=32, weights="none", head_units=8)
    model = _micro()
    x = np.random.default_rng(4).uniform(0, 255, (5, 32, 32, 3)).astype("float32")
    out = logit_view(model, taps=("block3_conv2",))(x)
    assert set(out) == {"logit", "prob", "pooled", "block3_conv2"}
    assert tuple(out["logit"].shape) == (5, 1) and tuple(out["pooled"].shape) == (5, 16)
    assert tuple(out["block3_conv2"].shape) == (5, 8, 8, 8)
    np.testing.assert_allclose(np.asarray(out["prob"]), np.asarray(model(x)), atol=1e-7)
    np.testing.assert_allclose(1 / (1 + np.exp(-np.asarray(out["logit"]))), np.asarray(model(x)), atol=1e-6)
    # the view adds no weights and does not get in the way of saving the model
    assert {id(w) for w in logit_view(model).weights} <= {id(w) for w in model.weights}
    save_model(model, tmp_path / "m.keras", cfg)
    loaded = load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(np.asarray(logit_view(loaded)(x)["logit"]), np.asarray(out["logit"]), atol=1e-6)


def test_logit_view_of_a_saved_style_sigmoid_dense_reads_its_pre_activation():
    """Models saved before issue 23 (v0003-shipped) end in Dense(1, activation="sigmoid"): the
    view exposes its pre-activation, exact where the float32 sigmoid saturates at 1.0."""
    from core.model import logit_view

    inp = keras.Input((3,))
    dense = keras.layers.Dense(1, activation="sigmoid", name="prob")
    model = keras.Model(inp, dense(inp))
    dense.set_weights([np.array([[10.0], [-5.0], [1.0]], np.float32), np.array([0.5], np.float32)])
    x = np.array([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.1, 0.2, 0.3]], np.float32)
    out = logit_view(model)(x)
    np.testing.assert_allclose(np.asarray(out["logit"])[:, 0], [30.5, -4.5, 0.8], atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["prob"]), np.asarray(model(x)), atol=1e-7)
    assert float(np.asarray(model(x))[0, 0]) == 1.0  # the probability cannot give 30.5 back


def test_logit_view_refuses_a_model_without_a_sigmoid_dense_and_unknown_taps():
    from core.model import logit_view

    inp = keras.Input((3,))
    with pytest.raises(ValueError, match="must end in a Dense.*Received: last layer 'out' \\(Dense, activation 'relu'\\)"):
        logit_view(keras.Model(inp, keras.layers.Dense(1, activation="relu", name="out")(inp)))
    with pytest.raises(ValueError, match="Received: taps=\\['nope'\\]"):
        logit_view(_micro(), taps=("nope",))

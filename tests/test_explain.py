"""core.explain: every method must point at the evidence, not just return a [0, 1] array.

A tiny CNN is trained on synthetic 32 px images whose label is a bright blob (present in
positives, absent in negatives, at a random place): a faithful PNEUMONIA-class map of a
positive must peak on the blob, and deleting the map's top pixels must lower the score
more than deleting the same map turned by 180 degrees.
"""

from __future__ import annotations

import numpy as np
import pytest

from core import explain as ex

SIZE = 32
BLOB = 5  # side of the square blob, px


def _blob_images(n: int, seed: int):
    """(x (n, 32, 32, 3) float32 0..255, y (n,), blob centres (n, 2) or -1 for negatives)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(100, 12, (n, SIZE, SIZE, 1)).clip(0, 255)
    y = np.arange(n) % 2
    centres = np.full((n, 2), -1)
    for i in range(n):
        if y[i]:
            cy, cx = rng.integers(BLOB, SIZE - BLOB, 2)
            x[i, cy - BLOB // 2 : cy + BLOB // 2 + 1, cx - BLOB // 2 : cx + BLOB // 2 + 1] = 230
            centres[i] = (cy, cx)
    return np.repeat(x, 3, axis=-1).astype(np.float32), y, centres


@pytest.fixture(scope="module")
def blob_model():
    """Conv -> Conv -> Conv -> GAP -> Dense(sigmoid), trained to detect the blob (~10 s)."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.Rescaling(1 / 255.0, offset=-0.4)(inp)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(h)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(h)
    h = keras.layers.MaxPooling2D(2, name="pool")(h)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv3")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    out = keras.layers.Dense(1, activation="sigmoid", name="prob")(h)
    model = keras.Model(inp, out)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy")
    x, y, _ = _blob_images(512, seed=1)
    model.fit(x, y, epochs=10, batch_size=32, verbose=0)
    xt, yt, _ = _blob_images(64, seed=2)
    acc = float(((model.predict(xt, verbose=0).ravel() > 0.5) == yt).mean())
    assert acc > 0.95, f"the blob model did not learn the task (accuracy {acc:.2f})"
    return model


@pytest.fixture(scope="module")
def positives():
    x, y, c = _blob_images(24, seed=3)
    return x[y == 1], c[y == 1]


def _peak_on_blob(maps, centres, tol=BLOB):
    hits = 0
    for m, (cy, cx) in zip(maps, centres):
        py, px = np.unravel_index(int(np.argmax(m)), m.shape)
        hits += abs(py - cy) <= tol // 2 + 1 and abs(px - cx) <= tol // 2 + 1
    return hits / len(maps)


@pytest.mark.parametrize("method,layer", [
    ("gradcam", "conv3"), ("hirescam", "conv3"), ("hirescam", "conv2"), ("gradcam++", "conv3"),
    ("layercam", "conv2"), ("occlusion", None),
])
def test_map_peaks_on_the_blob(blob_model, positives, method, layer):
    x, centres = positives
    maps = ex.explain(blob_model, x, method, layer, target_class=1)
    assert maps.shape == (len(x), SIZE, SIZE) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert _peak_on_blob(maps, centres) >= 0.9, method


def test_deleting_the_map_beats_deleting_it_turned(blob_model, positives):
    x, _ = positives
    maps = ex.explain(blob_model, x, "hirescam", "conv2")
    e = ex.explainer_for(blob_model)

    def drop(m):
        out = x.copy()
        k = int(0.1 * SIZE * SIZE)
        for i in range(len(x)):
            idx = np.argsort(-m[i].ravel(), kind="stable")[:k]
            flat = out[i].reshape(-1, 3)
            flat[idx] = x[i].mean(axis=(0, 1))
        # logits, not probabilities: the model is saturated (p = 1.000) on its positives
        return float((e.logits(x) - e.logits(out)).mean())

    d, turned = drop(maps), drop(maps[:, ::-1, ::-1])
    assert d > 1.0 and d > 3 * max(turned, 1e-3)


def test_the_normal_class_map_is_not_the_pneumonia_map(blob_model, positives):
    x, centres = positives
    pos = ex.explain(blob_model, x, "hirescam", "conv2", target_class=1)
    neg = ex.explain(blob_model, x, "hirescam", "conv2", target_class=0)
    # the blob is evidence *for* class 1, so the class-0 map must not peak on it as often
    assert _peak_on_blob(neg, centres) < _peak_on_blob(pos, centres)


def test_flat_maps_are_all_zero_and_detected():
    assert ex.is_flat(np.zeros((8, 8))) and ex.is_flat(None) and ex.is_flat(np.full((4, 4), 0.5))
    assert ex.is_flat(np.array([[np.nan, 1.0]]))
    assert not ex.is_flat(np.eye(4, dtype=np.float32))


def test_a_negative_gradient_everywhere_gives_a_flat_map_not_noise(blob_model):
    # A uniform image: no blob, nothing raises the score -> Grad-CAM's ReLU leaves zeros or
    # a map; whatever it is, it is finite, in range, and is_flat agrees with max == 0.
    x = np.full((2, SIZE, SIZE, 3), 100.0, np.float32)
    for method in ex.GRADIENT_METHODS:
        m = ex.explain(blob_model, x, method, "conv3")
        assert np.all(np.isfinite(m)) and m.min() >= 0 and m.max() <= 1
        for mm in m:
            assert ex.is_flat(mm) == (mm.max() <= ex.FLAT_EPS or mm.max() - mm.min() <= 1e-6)


def test_compiled_pass_matches_keras_and_is_one_graph_per_method(blob_model, positives):
    x, _ = positives
    e = ex.explainer_for(blob_model)
    ref = blob_model.predict(x, verbose=0).ravel()
    out = e.run(x, "hirescam", "conv2")
    np.testing.assert_allclose(out["prob"], ref, atol=1e-5)
    assert out["pooled"].shape == (len(x), 16)
    np.testing.assert_allclose(e.forward(x)["prob"], ref, atol=1e-5)
    fn = e._compiled("hirescam", "conv2", 1)
    e.run(x[:1], "hirescam", "conv2")
    e.run(x[:3], "hirescam", "conv2")
    assert fn.experimental_get_tracing_count() == 1  # every batch size reuses one trace


def test_bad_arguments_list_allowed_values(blob_model, positives):
    x, _ = positives
    with pytest.raises(ValueError, match=r"Received: method='magic'"):
        ex.explain(blob_model, x, "magic", "conv2")
    with pytest.raises(ValueError, match=r"\['conv1', 'conv2', 'conv3'\]. Received: layer='nope'"):
        ex.explain(blob_model, x, "hirescam", "nope")
    with pytest.raises(ValueError, match="Received: target_class=2"):
        ex.explain(blob_model, x, "hirescam", "conv2", target_class=2)
    with pytest.raises(ValueError, match="Received: shape="):
        ex.explain(blob_model, x[0], "hirescam", "conv2")


def test_model_without_a_dense_head_is_refused_clearly():
    import keras

    inp = keras.Input((8, 8, 3))
    model = keras.Model(inp, keras.layers.Conv2D(1, 3, name="c")(inp))
    with pytest.raises(ValueError, match="must end in a Dense"):
        ex.Explainer(model)


def test_occlusion_arguments():
    import keras

    inp = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(2, 3, padding="same", name="c")(inp)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(h))
    x = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype(np.float32)
    m = ex.occlusion(model, x, patch=4, stride=4)
    assert m.shape == (2, 16, 16) and 0 <= m.min() and m.max() <= 1
    with pytest.raises(ValueError, match="Received: patch=4, stride=8"):
        ex.occlusion(model, x, patch=4, stride=8)


# --- each method's formula, pinned on hand-made activations and gradients (issue 23) ----------
# A (1, 1, 2, 2): two locations, two channels; G the logit's gradients there. Every expected value
# below is worked out by hand from the published formula, so a method that computes another
# method's map (or loses a ReLU) fails here.
A = np.array([[[[1.0, 2.0], [3.0, 0.5]]]])  # location 0: (1, 2); location 1: (3, 0.5)
G = np.array([[[[0.5, -1.0], [-0.25, 2.0]]]])


def test_gradcam_weights_channels_by_the_mean_gradient():
    # w = mean over locations = (0.125, 0.5); map = ReLU(A . w) = (1*.125 + 2*.5, 3*.125 + .5*.5)
    np.testing.assert_allclose(ex.cam(A, G, "gradcam")[0, 0], [1.125, 0.625])


def test_hirescam_is_the_element_wise_product_summed_over_channels():
    # (1*.5 + 2*-1, 3*-.25 + .5*2) = (-1.5, 0.25) -> ReLU
    np.testing.assert_allclose(ex.cam(A, G, "hirescam")[0, 0], [0.0, 0.25])


def test_layercam_keeps_only_positive_gradients_before_the_product():
    # (1*.5 + 2*0, 3*0 + .5*2) = (0.5, 1.0); without the ReLU on G it would be (-1.5, 0.25)
    np.testing.assert_allclose(ex.cam(A, G, "layercam")[0, 0], [0.5, 1.0])


def test_gradcam_plus_plus_uses_its_own_alpha_weights():
    # channel sums S = (4, 2.5); alpha = g^2 / (2 g^2 + S g^3)
    # c0: g = .5 -> .25 / (.5 + 4*.125) = .25; g = -.25 -> .0625 / (.125 - 4*.015625) = 1.0
    # c1: g = -1 -> 1 / (2 - 2.5) = -2; g = 2 -> 4 / (8 + 2.5*8) = 1/7
    # w = sum alpha * ReLU(g): c0 = .25*.5 = .125; c1 = (1/7)*2 = 2/7
    # map = ReLU(A . w) = (1*.125 + 2*2/7, 3*.125 + .5*2/7)
    np.testing.assert_allclose(ex.cam(A, G, "gradcam++")[0, 0], [0.125 + 4 / 7, 0.375 + 1 / 7])


def test_the_compiled_pass_runs_the_registered_formulas(blob_model, positives):
    """The TensorFlow path (Explainer) and the NumPy formulas agree on the real model's tensors."""
    import tensorflow as tf

    e = ex.explainer_for(blob_model)
    x = tf.constant(positives[0][:2])
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = e._pass(x)
    act = out["conv3"]
    grads = tape.gradient(out["logit"], act)
    for method in ex.GRADIENT_METHODS:
        got = e._cam(act, grads, method).numpy()
        np.testing.assert_allclose(got, ex.cam(act.numpy(), grads.numpy(), method), rtol=1e-4, atol=1e-5)


def test_methods_give_pairwise_different_maps_on_the_blob_model(blob_model, positives):
    maps = {m: ex.explain(blob_model, positives[0][:4], m, "conv2") for m in ex.GRADIENT_METHODS}
    names = list(maps)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not np.allclose(maps[a], maps[b], atol=1e-3), f"{a} and {b} give the same maps"


def test_one_registry_names_every_method():
    assert tuple(ex.REGISTRY) == tuple(ex.METHODS)
    assert set(ex.METHOD_LABELS) == set(ex.METHOD_MEANING) == set(ex.METHODS)
    assert ex.GRADIENT_METHODS == tuple(m for m in ex.METHODS if m != "occlusion")
    with pytest.raises(ValueError, match="Received: method='occlusion'"):
        ex.cam(A, G, "occlusion")


def test_a_model_with_a_logit_layer_explains_like_its_sigmoid_dense_twin(blob_model, positives):
    """Issue 23: models built now end Dense(1) "logit" -> sigmoid; saved ones Dense(1, sigmoid).
    Same weights, same logits, probabilities and maps (core.model.logit_view reads both)."""
    import keras

    inp = keras.Input((SIZE, SIZE, 3))
    h = inp
    for layer in blob_model.layers[1:-1]:
        h = layer(h)
    last = blob_model.layers[-1]
    dense = keras.layers.Dense(1, name="logit")
    twin = keras.Model(inp, keras.layers.Activation("sigmoid", name="prob")(dense(h)))
    dense.set_weights(last.get_weights())
    x = positives[0][:4]
    a, b = ex.explainer_for(blob_model), ex.explainer_for(twin)
    fa, fb = a.forward(x), b.forward(x)
    np.testing.assert_allclose(fb["logit"], fa["logit"], rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(fb["prob"], np.asarray(twin(x)).ravel(), atol=1e-7)
    np.testing.assert_allclose(fa["prob"], np.asarray(blob_model(x)).ravel(), atol=1e-7)
    assert "logit" not in b.names and b.names == a.names  # maps are taken before the logit
    for method in ("hirescam", "gradcam"):
        np.testing.assert_allclose(b.run(x, method, "conv3")["map"], a.run(x, method, "conv3")["map"], atol=1e-5)
    assert a.grid("conv3") == b.grid("conv3") == SIZE // 2

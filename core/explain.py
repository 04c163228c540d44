"""Explanation maps: which pixels drive P(PNEUMONIA), as pure functions.

Every method takes a model and a batch ``(N, H, W, 3)`` in model input units (0..255) and
returns maps ``(N, H, W)`` float32 in [0, 1] for the class asked for (1 = PNEUMONIA,
0 = NORMAL). A map that is all zeros means *no region raised that class's score*: callers
must say so in words (``is_flat``), never show it as if it were informative. Colouring and
blending live in ``core.gradcam.overlay``.

Methods (``METHODS``):

- ``gradcam``   Grad-CAM (Selvaraju et al. 2017): channel weights = spatial mean of the
                gradient, map = ReLU(sum_c w_c A_c). The method clinicians ask for by name.
                At ``block5_conv4`` of a 64 px model it is a 4x4 map, and the mean gradient
                is often negative everywhere, so the map is blank (docs/explanations.md).
- ``hirescam``  HiResCAM (Draelos & Carin 2020): map = ReLU(sum_c g_c * A_c), element-wise.
                For a GAP head this is exactly each location's contribution to the logit
                (to first order), so it keeps location where Grad-CAM averages it away.
- ``gradcam++`` Grad-CAM++ (Chattopadhay et al. 2018) with the exponential-score closed
                form for the higher derivatives (as pytorch-grad-cam does).
- ``layercam``  LayerCAM (Jiang et al. 2021): map = sum_c ReLU(g_c) * A_c.
- ``occlusion`` Occlusion sensitivity (Zeiler & Fergus 2014), model-agnostic: slide a
                patch filled with the image mean, map = mean logit drop over the patches
                that cover a pixel. The reference the gradient methods are measured
                against; ~64 forward passes per image, so not on the default request path.

Gradients are taken on the logit, not the sigmoid: a confident prediction (p ~ 1) saturates
the sigmoid and its gradient underflows to zero.

``Explainer`` compiles *one* ``tf.function`` per (method, layer, class) that returns the raw
probability, the logit, the pooled base features (for the OOD score) and the map together, so
the serving path makes a single pass with no eager per-layer loop (``core.predict``). It runs
the model through ``core.model.logit_view``: the model's own graph with the logit (the score
before the sigmoid) and each layer's activation as named outputs, for models built here and
saved ones alike.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import weakref
from typing import Any, Callable

import numpy as np

from core.config import EXPLAIN_METHODS as METHODS  # the one list (Config validates against it)

log = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class Method:
    """One explanation method: its label, what red means, and (gradient methods) its formula as
    a pure function ``cam(A, G) -> (N, h, w)`` of the layer's activations ``A`` and the logit's
    gradients ``G`` (both (N, h, w, C)), written once for NumPy and TensorFlow (``xp``)."""

    label: str
    meaning: str
    cam: Callable[[Any, Any, Any], Any] | None = None  # (A, G, xp) -> map before upsampling


def _relu(xp, x):
    return xp.maximum(x, 0.0)


def _gradcam(a, g, xp):
    # Selvaraju et al. 2017: w_c = mean_ij g_ijc; map = ReLU(sum_c w_c A_c)
    w = xp.mean(g, axis=(1, 2), keepdims=True)
    return _relu(xp, xp.sum(a * w, axis=-1))


def _hirescam(a, g, xp):
    # Draelos & Carin 2020: map = ReLU(sum_c g_ijc * A_ijc), element-wise
    return _relu(xp, xp.sum(a * g, axis=-1))


def _gradcampp(a, g, xp):
    # Chattopadhay et al. 2018, exponential-score closed form: alpha = g^2 / (2 g^2 + sum_ab A_abc g^3),
    # w_c = sum_ij alpha_ijc ReLU(g_ijc); map = ReLU(sum_c w_c A_c). A zero denominator is replaced
    # by 1 (there alpha = g^2, which is 0 where g is).
    g2, g3 = g * g, g * g * g
    denom = 2.0 * g2 + xp.sum(a, axis=(1, 2), keepdims=True) * g3
    alpha = g2 / xp.where(xp.abs(denom) > 0, denom, xp.ones_like(denom))
    w = xp.sum(alpha * _relu(xp, g), axis=(1, 2), keepdims=True)
    return _relu(xp, xp.sum(a * w, axis=-1))


def _layercam(a, g, xp):
    # Jiang et al. 2021: map = sum_c ReLU(g_ijc) * A_ijc
    return xp.sum(_relu(xp, g) * a, axis=-1)


# The one registry of methods: a new method is added here (and to core.config.EXPLAIN_METHODS,
# which Config validates against).
REGISTRY: dict[str, Method] = {
    "gradcam": Method("Grad-CAM", "red = regions whose features, weighted by the average gradient, raised the score",
                      _gradcam),
    "hirescam": Method("HiResCAM", "red = regions whose features raised the score most (each location's own contribution)",
                       _hirescam),
    "gradcam++": Method("Grad-CAM++", "red = regions whose features raised the score (positive gradients, weighted)",
                        _gradcampp),
    "layercam": Method("LayerCAM", "red = regions with positive gradient x activation", _layercam),
    "occlusion": Method("Occlusion sensitivity", "red = regions whose masking lowered the score most"),
}
assert tuple(REGISTRY) == tuple(METHODS), "core.config.EXPLAIN_METHODS and the registry must list the same methods"
GRADIENT_METHODS = tuple(m for m, spec in REGISTRY.items() if spec.cam is not None)
METHOD_LABELS = {m: spec.label for m, spec in REGISTRY.items()}
# What the colours mean, per method, for captions.
METHOD_MEANING = {m: spec.meaning for m, spec in REGISTRY.items()}


def cam(activations, gradients, method: str):
    """The method's map from NumPy activations and gradients (N, h, w, C) -> (N, h, w), before
    upsampling and normalisation: the formula the compiled pass runs, for tests and reuse."""
    _check_method(method)
    spec = REGISTRY[method]
    if spec.cam is None:
        raise ValueError(f"method {method!r} has no gradient formula (it is model-agnostic). "
                         f"Received: method={method!r}")
    return spec.cam(np.asarray(activations, np.float64), np.asarray(gradients, np.float64), np)


# A map whose raw maximum is at or below this is flat: nothing raised the score.
FLAT_EPS = 1e-7


def is_flat(heatmap: np.ndarray | None) -> bool:
    """True when a [0, 1] map carries no information (missing, all zero or constant)."""
    if heatmap is None:
        return True
    h = np.asarray(heatmap, dtype=np.float32)
    if h.size == 0 or not np.all(np.isfinite(h)):
        return True
    return float(h.max()) <= FLAT_EPS or float(h.max() - h.min()) <= 1e-6


class _TfOps:
    """The few array operations the formulas use, for TensorFlow tensors (NumPy is ``np`` itself)."""

    def __init__(self, tf) -> None:
        self.tf = tf

    def mean(self, x, axis, keepdims=False):
        return self.tf.reduce_mean(x, axis=axis, keepdims=keepdims)

    def sum(self, x, axis, keepdims=False):
        return self.tf.reduce_sum(x, axis=axis, keepdims=keepdims)

    def maximum(self, x, y):
        return self.tf.maximum(x, y)

    def where(self, c, x, y):
        return self.tf.where(c, x, y)

    def abs(self, x):
        return self.tf.abs(x)

    def ones_like(self, x):
        return self.tf.ones_like(x)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}. Received: method={method!r}")


def _check_class(target_class: int) -> None:
    if target_class not in (0, 1):
        raise ValueError(f"target_class must be 0 (NORMAL) or 1 (PNEUMONIA). Received: target_class={target_class!r}")


def conv_layer_names(model) -> list[str]:
    """Names of the model's 2-D convolution layers, input to output (the valid ``layer`` values)."""
    import keras

    from core.model import flat_layers

    return [layer.name for layer in flat_layers(model) if isinstance(layer, keras.layers.Conv2D)]


class Explainer:
    """Compiled serving/explanation passes over one model (build once, reuse; thread-safe).

    ``forward(x)``                       -> {"prob": (N,), "logit": (N,), "pooled": (N, C)}
    ``run(x, method, layer, cls)``       -> {"prob", "logit", "pooled", "map": (N, H, W) in [0, 1]}
    ``explain(x, method, layer, cls)``   -> maps only (occlusion included)

    x: (N, H, W, 3) float32 in 0..255. Each (method, layer, class) is traced once with a
    free batch dimension, so every batch size reuses the same graph.
    """

    def __init__(self, model):
        import tensorflow as tf

        from core.model import _logit_layers, flat_layers, logit_view

        self.model = model
        self._tf = tf
        # The layers a map can be taken at: every layer before the logit (ValueError, with the
        # rule, for a model that does not end in a sigmoid over a Dense(1)).
        self.layers = _logit_layers(flat_layers(model))[0]
        self.names = [layer.name for layer in self.layers]
        self.view = logit_view(model, taps=tuple(self.names))
        shape = tuple(model.inputs[0].shape[1:])
        self.input_shape = shape
        self._spec = tf.TensorSpec((None,) + shape, tf.float32)
        self._fns: dict = {}
        self._lock = threading.Lock()

    def grid(self, layer: str) -> int:
        """Cells per side of a gradient map taken at ``layer`` (its activation's height)."""
        self._check_layer(layer)
        return int(self.view.output[layer].shape[1])

    # --- graph pieces (traced) ------------------------------------------------------------
    def _pass(self, x) -> dict:
        """The model's named outputs for a batch: logit (N,), pooled (N, C) float32 and every
        layer's activation (``core.model.logit_view``)."""
        out = dict(self.view(x, training=False))
        out["logit"] = out["logit"][:, 0]
        out["pooled"] = self._tf.cast(out["pooled"], self._tf.float32)
        return out

    def _cam(self, act, grads, method: str):
        """(N, h, w, C) activations + gradients -> (N, h, w) non-negative map."""
        tf = self._tf
        return REGISTRY[method].cam(tf.cast(act, tf.float32), tf.cast(grads, tf.float32), _TfOps(tf))

    def _upsample_normalise(self, cam):
        """(N, h, w) -> (N, H, W) in [0, 1]; a map with no positive value stays all zero."""
        tf = self._tf
        H, W = self.input_shape[0], self.input_shape[1]
        cam = tf.where(tf.math.is_finite(cam), cam, tf.zeros_like(cam))
        up = tf.image.resize(cam[..., None], (H, W), method="bilinear")[..., 0]
        up = tf.nn.relu(up)
        m = tf.reduce_max(up, axis=(1, 2), keepdims=True)
        return tf.where(m > FLAT_EPS, up / tf.maximum(m, FLAT_EPS), tf.zeros_like(up))

    def _compiled(self, method: str | None, layer: str | None, target_class: int):
        key = (method, layer, target_class)
        with self._lock:
            fn = self._fns.get(key)
            if fn is not None:
                return fn
            tf = self._tf
            sign = 1.0 if target_class == 1 else -1.0

            if method is None:
                @tf.function(input_signature=[self._spec], reduce_retracing=True)
                def fn(x):
                    out = self._pass(x)
                    return {"prob": tf.sigmoid(out["logit"]), "logit": out["logit"], "pooled": out["pooled"]}
            else:
                @tf.function(input_signature=[self._spec], reduce_retracing=True)
                def fn(x):
                    with tf.GradientTape() as tape:
                        tape.watch(x)  # records every op after the input, so layer activations have gradients
                        out = self._pass(x)
                        score = tf.reduce_sum(sign * out["logit"])  # images are independent: sum = per-image grads
                    act = out[layer]
                    grads = tape.gradient(score, act)
                    return {"prob": tf.sigmoid(out["logit"]), "logit": out["logit"], "pooled": out["pooled"],
                            "map": self._upsample_normalise(self._cam(act, grads, method))}
            self._fns[key] = fn
            return fn

    def _check_layer(self, layer: str) -> None:
        if layer not in self.names:
            raise ValueError(
                f"layer must be one of the model's conv layers {conv_layer_names(self.model)}. Received: layer={layer!r}"
            )

    def _as_batch(self, images):
        x = np.asarray(images)
        if x.ndim != 4:
            raise ValueError(f"images must be (N, H, W, C). Received: shape={tuple(x.shape)}")
        if tuple(x.shape[1:]) != tuple(self.input_shape):
            raise ValueError(f"images must be (N, {', '.join(map(str, self.input_shape))}). Received: shape={tuple(x.shape)}")
        return x.astype(np.float32, copy=False)

    # --- public -------------------------------------------------------------------------
    def forward(self, images) -> dict:
        """Raw probability, logit and pooled features, one compiled pass, no map."""
        out = self._compiled(None, None, 1)(self._as_batch(images))
        return {k: v.numpy().astype(np.float64) for k, v in out.items()}

    def run(self, images, method: str, layer: str, target_class: int = 1) -> dict:
        """Probability, pooled features and the map of a gradient method in one compiled pass."""
        _check_method(method)
        _check_class(target_class)
        if method == "occlusion":
            base = self.forward(images)
            base["map"] = self.occlusion(images, target_class=target_class, base_logits=base["logit"])
            return base
        self._check_layer(layer)
        out = self._compiled(method, layer, target_class)(self._as_batch(images))
        res = {k: out[k].numpy().astype(np.float64) for k in ("prob", "logit", "pooled")}
        res["map"] = np.clip(out["map"].numpy().astype(np.float32), 0.0, 1.0)
        return res

    def explain(self, images, method: str, layer: str | None = None, target_class: int = 1) -> np.ndarray:
        """Maps only, (N, H, W) float32 in [0, 1]."""
        if method == "occlusion":  # no need for run()'s extra forward pass
            _check_class(target_class)
            return self.occlusion(images, target_class=target_class)
        return self.run(images, method, layer, target_class)["map"]

    def logits(self, images, batch_size: int = 64) -> np.ndarray:
        """Raw logits (N,) through the compiled forward pass, in sub-batches.

        Read from the graph, not recovered from the probability: a float32 sigmoid is exactly
        1.0 above a logit of ~17, so a confident film's occlusion drops would all read as 0.
        """
        x = self._as_batch(images)
        fn = self._compiled(None, None, 1)
        out = [fn(x[i : i + batch_size])["logit"].numpy().astype(np.float64) for i in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros((0,))

    def occlusion(self, images, patch: int | None = None, stride: int | None = None, target_class: int = 1,
                  batch_size: int = 64, base_logits: np.ndarray | None = None) -> np.ndarray:
        """Occlusion sensitivity: mean logit drop of the patches covering each pixel, normalised.

        patch/stride default to 1/8 and 1/16 of the input side (8/4 px at 64 px). The fill
        is the image's per-channel mean, the same fill the deletion test uses. ``base_logits``:
        the images' logits when the caller already has them (:meth:`run`).
        """
        _check_class(target_class)
        x = self._as_batch(images)
        N, H, W, _ = x.shape
        patch = int(patch or max(2, H // 8))
        stride = int(stride or max(1, patch // 2))
        if not (1 <= stride <= patch <= min(H, W)):
            raise ValueError(f"need 1 <= stride <= patch <= {min(H, W)}. Received: patch={patch}, stride={stride}")
        ys = list(range(0, H - patch + 1, stride))
        xs = list(range(0, W - patch + 1, stride))
        if ys[-1] != H - patch:
            ys.append(H - patch)
        if xs[-1] != W - patch:
            xs.append(W - patch)
        sign = 1.0 if target_class == 1 else -1.0
        base = sign * (self.logits(x, batch_size) if base_logits is None else np.asarray(base_logits, np.float64))
        maps = np.zeros((N, H, W), np.float32)
        for n in range(N):
            fill = x[n].mean(axis=(0, 1))
            copies = np.repeat(x[n][None], len(ys) * len(xs), axis=0)
            k = 0
            for y0 in ys:
                for x0 in xs:
                    copies[k, y0 : y0 + patch, x0 : x0 + patch] = fill
                    k += 1
            drop = base[n] - sign * self.logits(copies, batch_size)
            acc = np.zeros((H, W), np.float64)
            cnt = np.zeros((H, W), np.float64)
            k = 0
            for y0 in ys:
                for x0 in xs:
                    acc[y0 : y0 + patch, x0 : x0 + patch] += drop[k]
                    cnt[y0 : y0 + patch, x0 : x0 + patch] += 1
                    k += 1
            m = np.maximum(acc / np.maximum(cnt, 1), 0.0)
            mx = float(m.max())
            maps[n] = (m / mx) if mx > FLAT_EPS and np.isfinite(mx) else 0.0
        return maps


_EXPLAINERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_EXPLAINERS_LOCK = threading.Lock()


def explainer_for(model) -> Explainer:
    """The cached ``Explainer`` of ``model`` (one set of traced graphs per model object)."""
    with _EXPLAINERS_LOCK:
        ex = _EXPLAINERS.get(model)
        if ex is None:
            ex = Explainer(model)
            _EXPLAINERS[model] = ex
        return ex


def explain(model, images, method: str, layer: str | None = None, target_class: int = 1) -> np.ndarray:
    """Maps (N, H, W) float32 in [0, 1] of ``method`` at ``layer`` for ``target_class``.

    images: (N, H, W, 3) in model input units (0..255). ``layer`` is ignored by occlusion.
    """
    _check_method(method)
    _check_class(target_class)
    return explainer_for(model).explain(images, method, layer, target_class)


def grad_cam(model, images, layer_name: str = "block5_conv4", target_class: int = 1) -> np.ndarray:
    """Grad-CAM maps (N, H, W) in [0, 1] at ``layer_name`` (the method asked for by name)."""
    return explain(model, images, "gradcam", layer_name, target_class)



def occlusion(model, images, patch: int | None = None, stride: int | None = None, target_class: int = 1) -> np.ndarray:
    """Occlusion-sensitivity maps (N, H, W) in [0, 1]."""
    return explainer_for(model).occlusion(images, patch=patch, stride=stride, target_class=target_class)

"""Grad-CAM (Selvaraju et al. 2017), after keras-io's grad_cam.py.

``grad_cam`` is pure: model + image batch in, heatmaps in [0, 1] with the input's spatial
shape out. Colouring and blending live in ``overlay``.

The model nests sub-models (preprocess -> base -> head), and a layer inside a nested
model is not reachable as an output of the outer graph in Keras 3. VGG-19 and our head
are strictly sequential, so we walk the flattened layer list by hand: everything up to
the target conv, record its activations under a GradientTape, then the rest.
"""

from __future__ import annotations

import numpy as np


def _flat_layers(model) -> list:
    import keras

    out = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.Model):
            out.extend(_flat_layers(layer))
        else:
            out.append(layer)
    return out


def grad_cam(model, images, layer_name: str = "block5_conv4", target_class: int = 1) -> np.ndarray:
    """Heatmaps for ``target_class`` (1 = PNEUMONIA, 0 = NORMAL).

    images: (N, H, W, 3) in model input units (0..255). Returns (N, H, W) float32 in [0, 1].
    Gradients are taken on the logit, not the sigmoid: a confident prediction (p ~ 1)
    saturates the sigmoid and its gradient underflows to zero.
    """
    import keras
    import tensorflow as tf

    x = tf.convert_to_tensor(np.asarray(images), dtype=tf.float32)
    if x.shape.rank != 4:
        raise ValueError(f"images must be (N, H, W, C). Received: shape={tuple(x.shape)}")
    layers = _flat_layers(model)
    names = [layer.name for layer in layers]
    if layer_name not in names:
        raise ValueError(f"layer_name must be one of the model's conv layers. Received: layer_name={layer_name!r}")
    split = names.index(layer_name)
    last = layers[-1]

    with tf.GradientTape() as tape:
        h = x
        for layer in layers[: split + 1]:
            h = layer(h, training=False)
        conv = h  # (N, h', w', C)
        tape.watch(conv)
        h = conv
        for layer in layers[split + 1 : -1]:
            h = layer(h, training=False)
        if isinstance(last, keras.layers.Dense):
            h = tf.cast(h, last.kernel.dtype)
            logit = tf.matmul(h, last.kernel) + last.bias  # pre-sigmoid, (N, 1)
        else:  # pragma: no cover - our head always ends in Dense
            logit = last(h)
        score = logit[:, 0] if target_class == 1 else -logit[:, 0]
    grads = tape.gradient(score, conv)  # (N, h', w', C)
    conv = tf.cast(conv, tf.float32)
    grads = tf.cast(grads, tf.float32)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)  # (N, 1, 1, C)
    cam = tf.nn.relu(tf.reduce_sum(conv * weights, axis=-1))  # (N, h', w')
    cam = cam.numpy()
    out = np.zeros((cam.shape[0], x.shape[1], x.shape[2]), dtype=np.float32)
    import cv2

    for i, c in enumerate(cam):
        m = float(c.max())
        c = c / m if m > 0 and np.isfinite(m) else np.zeros_like(c)
        out[i] = cv2.resize(c.astype(np.float32), (x.shape[2], x.shape[1]), interpolation=cv2.INTER_CUBIC)
    return np.clip(np.nan_to_num(out), 0.0, 1.0)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4, colormap: int | None = None) -> np.ndarray:
    """Blend a [0, 1] heatmap (any size) over an RGB uint8 image. Returns RGB uint8 (H, W, 3)."""
    import cv2

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]. Received: alpha={alpha!r}")
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    img = img[..., :3].astype(np.uint8)
    hm = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float32)), 0, 1)
    hm = cv2.resize(hm, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_CUBIC)
    colored = cv2.applyColorMap(np.uint8(255 * np.clip(hm, 0, 1)), cv2.COLORMAP_JET if colormap is None else colormap)
    colored = cv2.cvtColor(colored, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(colored, float(alpha), img, 1.0 - float(alpha), 0.0)

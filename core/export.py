"""TF SavedModel export with a serving signature, for TensorFlow Serving.

Signature ``serving_default``: ``image`` uint8, **any size** -- a batch ``[N, H, W, C]`` or one
image ``[H, W, C]``, ``C`` = 3 (RGB; grey replicated) or 1 (grey) -> ``probability``
(calibrated P(PNEUMONIA), float32 ``(N,)``), ``raw_probability`` and ``label`` (int32: 1 =
PNEUMONIA at the stored threshold). Temperature and threshold are baked in as constants.

Why any size, resized inside the graph, rather than refusing other sizes: a TF Serving client
(a PACS router, a script) holds the film at its own resolution, and the resize is exactly the
step that went wrong when it was left to the client -- a 224 x 224 film fed at its own size, or
squeezed with another interpolation, scored 63 % where the app says 91 % (issue 22). So the graph
repeats the app's preprocessing (``core.imageio``) bit for bit:

1. colour to grey with OpenCV's fixed-point BT.601 weights (``cv2.COLOR_RGB2GRAY``; a grey
   image replicated to RGB is unchanged), replicated to three channels;
2. an image whose longer side exceeds ``core.imageio.WORK_MAX_SIDE`` is first area-reduced to it
   (aspect kept, sides rounded as ``shrink_to`` does), then
3. area-reduced to the model's input size (``resize_for_model``: ``cv2.INTER_AREA``), rounded
   to 8 bits after each step as the app's uint8 arrays are.

TF's ``area`` resize is the same box average as ``cv2.INTER_AREA`` when both sides shrink:
measured identical pixels on the sample films at 32/64/224 px and on resampled films of
613 x 401 to 4000 x 3000 px (at most 1 grey level on 0.1 % of the pixels after the 2048 px
step). An image whose shorter side is below the app's minimum (the larger of the input check's
``min_side`` and the model's input size) is **refused** with an error that says so: the app
rejects it too, and enlarging is where OpenCV and TF interpolate differently.
"""

from __future__ import annotations

import json
from pathlib import Path


def check_out_dir(out_dir: str | Path) -> Path:
    """The export folder must be new or empty (ValueError otherwise: a usage error, exit 2)."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"out must be a new or empty folder. Received: out={str(out)!r}")
    return out


def min_side_for(input_size: int) -> int:
    """The shorter side an image needs to be analysed: what the app's input check asks for
    (``core.guard``: its ``min_side``, raised to the model's input size)."""
    from core.guard import DEFAULT_SETTINGS

    return max(int(DEFAULT_SETTINGS.min_side), int(input_size))


def signature_text(input_size: int) -> str:
    """What the serving signature takes and returns, in one line (the CLI prints it)."""
    from core.imageio import WORK_MAX_SIDE

    return (f"image uint8 [N,H,W,3] or one [H,W,3] image (grey: last dimension 1), any size with sides of at "
            f"least {min_side_for(input_size)} px (smaller images are refused, as the app's input check does) "
            f"-> resized inside the model as the app does (area reduction to at most {WORK_MAX_SIDE} px, then to "
            f"{input_size}x{input_size}) -> probability, raw_probability, label")


def preprocess(image, size: int):
    """The app's preprocessing as TF ops: uint8 ``[N, H, W, C]`` or ``[H, W, C]`` (C = 1 or 3,
    any H, W >= ``min_side_for(size)``) -> float32 ``[N, size, size, 3]`` with integer values,
    equal to ``core.imageio.resize_for_model`` of the image as ``core.imageio`` decodes it."""
    import tensorflow as tf

    from core.imageio import MAX_SIDE, WORK_MAX_SIDE

    min_side = min_side_for(size)
    image = tf.convert_to_tensor(image)
    rank = tf.rank(image)
    checks = [tf.debugging.Assert(tf.logical_or(tf.equal(rank, 3), tf.equal(rank, 4)),
                                  ["image must be [N, H, W, C] or [H, W, C] uint8. Received: image.shape=",
                                   tf.shape(image)])]
    with tf.control_dependencies(checks):
        shape = tf.shape(image)
        batch = tf.reshape(image, tf.concat([[-1], shape[-3:]], 0))  # one image -> a batch of one
    batch.set_shape([None, None, None, None])
    h, w, c = tf.shape(batch)[1], tf.shape(batch)[2], tf.shape(batch)[3]
    checks = [
        tf.debugging.Assert(tf.logical_or(tf.equal(c, 3), tf.equal(c, 1)),
                            ["image must have 3 channels (RGB, grey replicated) or 1 (grey). Received: image.shape=",
                             tf.shape(image)]),
        tf.debugging.Assert(tf.greater_equal(tf.minimum(h, w), min_side),
                            [f"image sides must be at least {min_side} px (the app's input check rejects smaller "
                             "images). Received: image.shape=", tf.shape(image)]),
        tf.debugging.Assert(tf.less_equal(tf.maximum(h, w), MAX_SIDE),
                            [f"image sides must be at most {MAX_SIDE} px. Received: image.shape=", tf.shape(image)]),
    ]
    with tf.control_dependencies(checks):
        x = tf.cast(batch, tf.int32)
    # 1. grey: cv2.COLOR_RGB2GRAY on uint8 is (4899 R + 9617 G + 1868 B + 2^13) >> 14, exactly
    grey = tf.cond(tf.equal(c, 3),
                   lambda: tf.bitwise.right_shift(x[..., 0] * 4899 + x[..., 1] * 9617 + x[..., 2] * 1868 + 8192, 14),
                   lambda: x[..., 0])
    x = tf.cast(grey, tf.float32)[..., None]

    def to_u8(t):
        return tf.clip_by_value(tf.round(t), 0.0, 255.0)  # cv2 rounds half to even, as tf.round

    # 2. the working-copy reduction of core.imageio.shrink_to (sides rounded half to even, like round())
    longest = tf.maximum(h, w)

    def reduce():
        s = tf.cast(WORK_MAX_SIDE, tf.float64) / tf.cast(longest, tf.float64)
        nh = tf.maximum(1, tf.cast(tf.round(tf.cast(h, tf.float64) * s), tf.int32))
        nw = tf.maximum(1, tf.cast(tf.round(tf.cast(w, tf.float64) * s), tf.int32))
        return to_u8(tf.image.resize(x, tf.stack([nh, nw]), method="area"))

    x = tf.cond(longest > WORK_MAX_SIDE, reduce, lambda: x)
    # 3. INTER_AREA to the input size (both sides shrink or stay: smaller images were refused)
    x = to_u8(tf.image.resize(x, [size, size], method="area"))
    return tf.tile(x, [1, 1, 1, 3])


def export_saved_model(loaded, out_dir: str | Path) -> Path:
    import tensorflow as tf

    out = check_out_dir(out_dir)
    model = loaded.model
    size = loaded.config.input_size
    temperature = float(loaded.operating_point.temperature)
    threshold = float(loaded.operating_point.threshold)

    class Serving(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        @tf.function(input_signature=[tf.TensorSpec(None, tf.uint8, name="image")])
        def serve(self, image):
            x = preprocess(image, size)
            raw = tf.reshape(tf.cast(self.model(x, training=False), tf.float32), [-1])
            p = tf.clip_by_value(raw, 1e-6, 1 - 1e-6)
            logit = tf.math.log(p) - tf.math.log1p(-p)
            cal = tf.sigmoid(logit / temperature)
            return {
                "probability": cal,
                "raw_probability": raw,
                "label": tf.cast(cal >= threshold, tf.int32),
            }

    module = Serving()
    tf.saved_model.save(module, str(out), signatures={"serving_default": module.serve})
    from core.imageio import WORK_MAX_SIDE

    (out / "pneumoscope.json").write_text(
        json.dumps({"version": loaded.name, "input_size": size, "temperature": temperature, "threshold": threshold,
                    "labels": list(loaded.config.class_names),
                    "image": {"dtype": "uint8", "shape": "[N,H,W,C] or [H,W,C], C = 3 or 1", "min_side": min_side_for(size),
                              "resize": f"in the model: area reduction to at most {WORK_MAX_SIDE} px, then to "
                                        f"{size}x{size} (as core.imageio.resize_for_model)"}}, indent=2)
    )
    return out

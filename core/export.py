"""TF SavedModel export with a serving signature, for TensorFlow Serving.

Signature ``serving_default``: ``image`` uint8 (N, H, W, 3) already resized to the model's
input size -> ``probability`` (calibrated P(PNEUMONIA), float32 (N,)), ``raw_probability``
and ``label`` (int32: 1 = PNEUMONIA at the stored threshold). Temperature and threshold are
baked in as constants, so a TF Serving client gets the same answer as the app.
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

        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name="image")])
        def serve(self, image):
            raw = tf.reshape(tf.cast(self.model(tf.cast(image, tf.float32), training=False), tf.float32), [-1])
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
    (out / "pneumoscope.json").write_text(
        json.dumps({"version": loaded.name, "input_size": size, "temperature": temperature, "threshold": threshold,
                    "labels": list(loaded.config.class_names)}, indent=2)
    )
    return out

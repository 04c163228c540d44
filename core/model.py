"""VGG-19 transfer-learning model: preprocessing inside, frozen-able base, small head.

Graph (shapes for the default 64 px input)::

    image (N, 64, 64, 3) float 0..255
      -> VGGPreprocess            RGB->BGR, minus ImageNet means (the "caffe" mode)
      -> vgg19 base (Functional)  (N, 2, 2, 512)   last conv = block5_conv4 (N, 4, 4, 512)
      -> head (Functional)        GAP -> Dense(relu) -> Dropout -> Dense(1) "logit" -> sigmoid "prob"
      -> P(PNEUMONIA) (N, 1)

The base and the head are separate sub-models so that phase 1 can train the head alone on
cached base features (core.training) and then plug it back in unchanged.

The logit (the score before the sigmoid) is what temperature scaling and the explanation
maps work on: a float32 sigmoid is exactly 1.0 above a logit of ~17, so it cannot be read back
from the probability. ``logit_view`` exposes it as a named tensor for every model, the ones
built here (a linear Dense "logit" then a sigmoid) and saved ones whose last layer is
Dense(1, activation="sigmoid") (the shipped v0003-shipped).
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
from keras import layers, ops

from core.config import Config

log = logging.getLogger(__name__)

BASE_NAME = "base"
HEAD_NAME = "head"
LOGIT_NAME = "logit"  # the linear last Dense of a model built here: P(PNEUMONIA) = sigmoid(logit)
PROB_NAME = "prob"


@keras.saving.register_keras_serializable(package="pneumoscope")
class VGGPreprocess(layers.Layer):
    """keras.applications.vgg19.preprocess_input as a layer, so serving cannot drift.

    Input: (N, H, W, 3) RGB in [0, 255] (any dtype). Output: BGR minus channel means.
    Runs in float32 even under a mixed policy: bfloat16 has ~3 significant digits, too
    coarse for raw 0..255 intensities minus ~120.
    """

    def __init__(self, means_bgr=(103.939, 116.779, 123.68), **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.means_bgr = tuple(float(m) for m in means_bgr)

    def call(self, x):
        x = ops.cast(x, "float32")
        x = ops.flip(x, axis=-1)  # RGB -> BGR
        return x - ops.convert_to_tensor(self.means_bgr, dtype="float32")

    def get_config(self):
        return {**super().get_config(), "means_bgr": list(self.means_bgr)}


@keras.saving.register_keras_serializable(package="pneumoscope")
class IntensityStandardize(layers.Layer):
    """Per-image standardisation to a fixed mean/std, in 0..255 units.

    (N, H, W, C) -> same shape. Makes the model blind to global exposure and contrast,
    which vary between X-ray machines more than anatomy does.
    """

    def __init__(self, target_mean=128.0, target_std=64.0, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.target_mean, self.target_std = float(target_mean), float(target_std)

    def call(self, x):
        x = ops.cast(x, "float32")
        mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
        std = ops.std(x, axis=(1, 2, 3), keepdims=True)
        return (x - mean) / (std + 1.0) * self.target_std + self.target_mean

    def get_config(self):
        return {**super().get_config(), "target_mean": self.target_mean, "target_std": self.target_std}


def build_augmenter(config: Config) -> keras.Sequential:
    """Phase-2 augmentation (training only) on float images in 0..255."""
    seed = config.seed
    return keras.Sequential(
        [
            layers.RandomRotation(config.aug_rotation_deg / 360.0, fill_mode="constant", seed=seed),
            layers.RandomTranslation(config.aug_shift, config.aug_shift, fill_mode="constant", seed=seed + 1),
            layers.RandomZoom((-config.aug_zoom, config.aug_zoom), fill_mode="constant", seed=seed + 2),
            layers.RandomContrast(config.aug_contrast, value_range=(0, 255), seed=seed + 3),
            layers.RandomBrightness(config.aug_brightness, value_range=(0, 255), seed=seed + 4),
        ],
        name="augment",
    )


def resolve_weights(weights: str) -> str | None:
    """Map the config's weights setting to what keras.applications accepts."""
    if weights == "none":
        return None
    if weights == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ValueError(
            "weights must be 'imagenet', 'none' or an existing local .h5 file. "
            f"Received: weights={weights!r} (file not found)"
        )
    return str(path)


def build_micro_base(config: Config) -> keras.Model:
    """The "micro" test backbone: VGG-19's block structure and key layer names, 4-16 filters.

    (N, s, s, 3) -> (N, s/32, s/32, 16); block3_conv2 is (s/4, s/4), block5_conv4 (s/16, s/16).
    """
    f1, f2, f3, f4, f5 = config.backbone_spec["filters"]
    inputs = keras.Input(config.image_shape, name="micro_input")
    x = inputs
    for block, (filters, convs) in enumerate(
        ((f1, ("conv1",)), (f2, ("conv1", "conv2")), (f3, ("conv1", "conv2", "conv4")),
         (f4, ("conv1", "conv2", "conv4")), (f5, ("conv1", "conv4"))), start=1):
        for conv in convs:
            x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"block{block}_{conv}")(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    return keras.Model(inputs, x, name="micro")


def build_base(config: Config) -> keras.Model:
    """The convolutional base (VGG-19, no top), with the configured starting weights."""
    weights = resolve_weights(config.weights)
    if config.backbone_spec["builder"] == "micro":
        if weights == "imagenet":
            raise ValueError("The micro test backbone has no ImageNet weights. Allowed: 'none' or a local file. "
                             "Received: weights='imagenet'")
        base = build_micro_base(config)
        if weights is not None:
            base.load_weights(weights)
        base.name = BASE_NAME
        return base
    builder = getattr(keras.applications, config.backbone_spec["builder"])
    local = weights not in (None, "imagenet")
    # keras.applications only accepts a file path for weights when it is the Keras no-top
    # layout; load it ourselves afterwards so both legacy .h5 and .weights.h5 work.
    try:
        base = builder(include_top=False, weights=None if local else weights, input_shape=config.image_shape)
    except Exception as e:  # noqa: BLE001 - keras raises a bare Exception on download failure
        if weights != "imagenet":
            raise
        # Advice in the words of the admin form and the CLI flag, never in code syntax.
        raise ValueError(
            "Could not download the ImageNet VGG-19 weights (no internet access?). Start from random "
            'initialisation instead: choose "none (random initialisation)" as the starting weights on the '
            "admin page, or --weights none on the command line. Or download "
            "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5 on a connected machine and give its path "
            '("local file" on the admin page, --weights PATH on the command line). '
            f"Received: weights='imagenet' ({e})"
        ) from e
    if local:
        try:
            base.load_weights(weights)
        except Exception as e:  # noqa: BLE001 - re-raised with a human message
            raise ValueError(
                f"Could not load VGG-19 no-top weights from {weights}: {e}. Expected the Keras layout of "
                "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5 or a .weights.h5 saved from this base."
            ) from e
    base.name = BASE_NAME
    return base


def build_head(feature_shape: tuple[int, ...], config: Config) -> keras.Model:
    """GAP -> Dense(relu) -> Dropout -> Dense(1) "logit" -> sigmoid "prob". Input: base features (h, w, 512)."""
    inputs = keras.Input(feature_shape, name="features")
    x = layers.GlobalAveragePooling2D(name="gap")(inputs)
    x = layers.Dense(config.head_units, activation="relu", name="fc")(x)
    x = layers.Dropout(config.dropout, seed=config.seed, name="dropout")(x)
    # float32 output keeps the sigmoid and the loss stable under mixed precision. The linear
    # Dense and the sigmoid are two layers so that the logit is a tensor of the graph (logit_view).
    logit = layers.Dense(1, dtype="float32", name=LOGIT_NAME)(x)  # (N, 1)
    outputs = layers.Activation("sigmoid", dtype="float32", name=PROB_NAME)(logit)  # (N, 1)
    return keras.Model(inputs, outputs, name=HEAD_NAME)


def build_model(config: Config) -> keras.Model:
    """Full model: image (0..255) -> P(PNEUMONIA). Build inside a strategy scope to distribute."""
    inputs = keras.Input(config.image_shape, name="image")
    x = inputs
    if config.intensity_norm:
        x = IntensityStandardize(name="intensity_norm")(x)
    x = VGGPreprocess(config.backbone_spec["channel_means_bgr"], name="preprocess")(x)
    base = build_base(config)
    features = base(x)
    head = build_head(tuple(base.output.shape[1:]), config)
    outputs = head(features)
    return keras.Model(inputs, outputs, name=f"pneumoscope_{config.backbone}")


def get_base(model: keras.Model) -> keras.Model:
    return model.get_layer(BASE_NAME)


def get_head(model: keras.Model) -> keras.Model:
    return model.get_layer(HEAD_NAME)


def feature_extractor(model: keras.Model) -> keras.Model:
    """image -> base features, sharing the model's layers (no copy)."""
    x = model.inputs[0]
    if any(layer.name == "intensity_norm" for layer in model.layers):
        x = model.get_layer("intensity_norm")(x)
    x = model.get_layer("preprocess")(x)
    return keras.Model(model.inputs[0], get_base(model)(x), name="feature_extractor")


def float32_twin(model: keras.Model, config: Config) -> keras.Model:
    """A float32 copy with the same weights: what is saved, served and evaluated.

    A model trained under a mixed policy computes in bfloat16; its outputs differ from the
    float32 model that is served by up to ~1e-2 in probability, so calibration, threshold,
    OOD statistics and metrics are all computed on this twin.
    """
    policy = keras.mixed_precision.global_policy()
    try:
        keras.mixed_precision.set_global_policy("float32")
        twin = build_model(config.replace(weights="none"))
    finally:
        keras.mixed_precision.set_global_policy(policy)
    twin.set_weights(model.get_weights())
    return twin


def save_model(model: keras.Model, path: str | Path, config: Config) -> None:
    """Save without optimizer state (halves the file) and in float32 for portable serving."""
    float32_twin(model, config).save(str(path))


def load_model(path: str | Path) -> keras.Model:
    """Load a saved model with Keras safe mode on (no arbitrary code from the file)."""
    return keras.saving.load_model(str(path), compile=False, safe_mode=True)


# --- the logit of any model (built here or saved) -----------------------------------------------
def flat_layers(model: keras.Model) -> list:
    """The model's layers input to output with nested sub-models (base, head) expanded; no
    InputLayer. The models here are strictly sequential, so this list is their graph."""
    out = []
    for layer in model.layers:
        if isinstance(layer, layers.InputLayer):
            continue
        out.extend(flat_layers(layer) if isinstance(layer, keras.Model) else [layer])
    return out


def _activation_name(layer) -> str:
    return getattr(getattr(layer, "activation", None), "__name__", "")


class _PreActivation(layers.Layer):
    """The pre-sigmoid output of a saved model's last Dense(1, activation="sigmoid"):
    ``x @ kernel + bias`` on that Dense's own variables (shared, not copied). (N, C) -> (N, 1).
    Not serialisable: it only lives in a :func:`logit_view`, never in a saved model."""

    def __init__(self, dense: layers.Dense, **kwargs):
        super().__init__(name=LOGIT_NAME, dtype=dense.kernel.dtype, **kwargs)
        self.dense = dense

    def call(self, x):
        z = ops.matmul(ops.cast(x, self.dense.kernel.dtype), self.dense.kernel)
        return z if self.dense.bias is None else ops.add(z, self.dense.bias)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 1)


def _logit_layers(flat: list) -> tuple[list, layers.Layer]:
    """(the layers before the logit, the layer that outputs the logit) of a flattened model.

    A model built here ends Dense(1, linear) "logit" -> Activation(sigmoid); a saved one may end
    Dense(1, activation="sigmoid"), whose pre-activation is read with ``_PreActivation``."""
    last = flat[-1] if flat else None
    prev = flat[-2] if len(flat) > 1 else None
    if (isinstance(last, layers.Activation) and _activation_name(last) == "sigmoid"
            and isinstance(prev, layers.Dense) and int(prev.units) == 1 and _activation_name(prev) == "linear"):
        return flat[:-2], prev
    if isinstance(last, layers.Dense) and int(last.units) == 1 and _activation_name(last) == "sigmoid":
        return flat[:-1], _PreActivation(last)
    what = "nothing" if last is None else f"{last.name!r} ({type(last).__name__}, activation {_activation_name(last) or 'n/a'!r})"
    raise ValueError("The model must end in a Dense(1) (sigmoid) layer, or a linear Dense(1) followed by a sigmoid "
                     f"activation. Received: last layer {what}")


def logit_view(model: keras.Model, taps: tuple[str, ...] = ()) -> keras.Model:
    """A functional view of ``model`` that shares its layers and weights (no copy) and outputs
    named tensors, image (N, H, W, 3) 0..255 ->

    - ``"logit"`` (N, 1): the score before the sigmoid, exact (not recovered from the
      probability, which saturates at 1.0 in float32 above a logit of ~17);
    - ``"prob"`` (N, 1): sigmoid(logit), the model's own output;
    - ``"pooled"`` (N, C): the first GlobalAveragePooling2D's output (the pooled base features
      core.ood scores), else whatever reaches the logit layer;
    - one tensor per layer named in ``taps`` (its output, e.g. a conv layer's (N, h, w, C)).

    Nested sub-models are walked in order (a layer inside one is not an output of the outer
    graph in Keras 3). ValueError for a model that does not end in a sigmoid over a Dense(1),
    or an unknown tap.
    """
    flat = flat_layers(model)
    body, logit_layer = _logit_layers(flat)
    unknown = sorted(set(taps) - {layer.name for layer in body})
    if unknown:
        raise ValueError(f"taps must name layers of the model before its logit ({[layer.name for layer in body]}). "
                         f"Received: taps={unknown}")
    inputs = keras.Input(tuple(model.inputs[0].shape[1:]), name="image")
    x, pooled, out = inputs, None, {}
    for layer in body:
        x = layer(x)
        if layer.name in taps:
            out[layer.name] = x
        if pooled is None and isinstance(layer, layers.GlobalAveragePooling2D):
            pooled = x
    out["pooled"] = x if pooled is None else pooled
    out["logit"] = logit_layer(x)
    out["prob"] = layers.Activation("sigmoid", dtype="float32", name="logit_view_sigmoid")(out["logit"])
    return keras.Model(inputs, out, name=f"{model.name}_logit_view")

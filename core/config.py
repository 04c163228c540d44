"""One place for everything tied to the backbone and the training recipe.

A `Config` is saved next to every model (``config.json``) and reloaded from it, so
serving always uses the input size, class names and preprocessing the model was
trained with.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

# Class order is the label encoding: index 0 = NORMAL (negative), 1 = PNEUMONIA (positive).
CLASS_NAMES: tuple[str, str] = ("NORMAL", "PNEUMONIA")

# Everything that belongs to the VGG-19 backbone. Keeping it in one block means a new
# backbone is one new entry, not edits scattered over the code base.
BACKBONES: dict[str, dict[str, Any]] = {
    "vgg19": {
        # Keras application builder name (keras.applications.<name>).
        "builder": "VGG19",
        # Last convolution: classic Grad-CAM reads its activations (shape (h/16, w/16, 512)).
        "last_conv_layer": "block5_conv4",
        # Layers the explanation benchmark compares (benchmarks/bench_explanations.py);
        # at 64 px block3 is 16x16, block4 8x8, block5 4x4.
        "explain_layers": ("block2_conv2", "block3_conv2", "block3_conv4", "block4_conv2", "block4_conv4", "block5_conv4"),
        # keras.applications.vgg19.preprocess_input in "caffe" mode: RGB->BGR and
        # subtract the ImageNet channel means; no scaling. Implemented as a layer
        # inside the model (core.model.VGGPreprocess) so training and serving agree.
        "preprocess": "caffe",
        "channel_means_bgr": (103.939, 116.779, 123.68),
        # Smallest input the five 2x2 poolings accept.
        "min_input_size": 32,
    },
}
# Unit tests only: the same graph shape (five conv blocks, five 2x2 poolings, the key
# layer names of VGG-19, the same preprocessing) with 4-16 filters instead of 64-512,
# so a test model trains in seconds and saves in kilobytes instead of 80 MB. Random
# initialisation (or a local file saved from it) only; never a clinical model.
BACKBONES["micro"] = {
    **BACKBONES["vgg19"],  # layer names, preprocessing and minimum size stay VGG-19's
    "builder": "micro",  # core.model.build_micro_base, not keras.applications
    "filters": (4, 8, 8, 16, 16),
}

WEIGHTS_CHOICES = ("imagenet", "none", "<path to a local .h5/.weights.h5 file>")
STRATEGIES = ("default", "mirrored", "multiworker")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
THRESHOLD_POLICIES = ("youden", "sensitivity")
# Explanation methods (core.explain.METHODS): the gradient-based ones, then occlusion.
EXPLAIN_METHODS = ("gradcam", "hirescam", "gradcam++", "layercam", "occlusion")
FINETUNE_SCHEDULES = ("constant", "cosine")

DEFAULT_DATA_ROOT = "data/chest_xray"
DATA_ROOT_ENV = "PNEUMOSCOPE_DATA_ROOT"
ARTIFACTS_ENV = "PNEUMOSCOPE_ARTIFACTS"


_REPO = Path(__file__).resolve().parent.parent
# Where a dataset is looked for when $PNEUMOSCOPE_DATA_ROOT is not set, in order: ./data/chest_xray
# (the working directory), data/chest_xray in the repository, ../shared/data/chest_xray next to it.
DATA_ROOT_CANDIDATES: tuple[Path, ...] = (
    Path(DEFAULT_DATA_ROOT), _REPO / DEFAULT_DATA_ROOT, _REPO.parent / "shared" / "data" / "chest_xray",
)


def data_root_search_text() -> str:
    """The folders tried, in order, when ``$PNEUMOSCOPE_DATA_ROOT`` is not set (for messages)."""
    first, *rest = DATA_ROOT_CANDIDATES
    return ", ".join([f"{first} (in the working directory)", *(str(c) for c in rest)])


def default_data_root() -> Path:
    """``$PNEUMOSCOPE_DATA_ROOT`` when set; else the first of :data:`DATA_ROOT_CANDIDATES` that
    exists; else ``data/chest_xray`` (which then does not exist, and callers say so)."""
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env)
    for c in DATA_ROOT_CANDIDATES:
        try:
            if c.is_dir():
                return c
        except OSError:
            continue
    return Path(DEFAULT_DATA_ROOT)


def check_number(name: str, value: Any, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                 hi_open: bool = False, integer: bool = False, allow_none: bool = False) -> Any:
    """One number read from a file, checked keras-hub style: a ValueError that says what is allowed
    and ``Received: name=value`` when ``value`` is not a finite number (an ``int`` with
    ``integer=True``; never a bool, a string or NaN) within [lo, hi] (``lo_open``/``hi_open``:
    excluded). ``None`` passes only with ``allow_none``. Returns ``value``."""
    if value is None and allow_none:
        return None
    ok = not isinstance(value, bool) and isinstance(value, int if integer else (int, float))
    if ok and not integer:
        ok = math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if ok:
        return value
    if lo is not None and hi is not None:
        where = f" in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    elif lo is not None:
        where = f" {'>' if lo_open else '>='} {lo:g}"
    elif hi is not None:
        where = f" {'<' if hi_open else '<='} {hi:g}"
    else:
        where = ""
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    raise ValueError(f"{name} must be {'an integer' if integer else 'a finite number'}{where}"
                     f"{' or null' if allow_none else ''}. Received: {name}={shown}")


def default_artifacts_dir() -> Path:
    """Registry root from ``$PNEUMOSCOPE_ARTIFACTS``, else ``artifacts/`` next to the repo."""
    env = os.environ.get(ARTIFACTS_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "artifacts"


@dataclasses.dataclass
class Config:
    """Model + training recipe. Round-trips through ``to_dict``/``from_dict``."""

    # --- backbone / input -------------------------------------------------------------
    backbone: str = "vgg19"
    input_size: int = 64  # square side in pixels; the original study used 64x64 RGB
    channels: int = 3  # grayscale X-rays are replicated to RGB for the ImageNet backbone
    weights: str = "imagenet"  # "imagenet" | "none" | path to a local weights file
    class_names: tuple[str, ...] = CLASS_NAMES

    # --- head ---------------------------------------------------------------------------
    head_units: int = 256
    dropout: float = 0.5

    # --- training -----------------------------------------------------------------------
    seed: int = 1337
    batch_size: int = 32
    val_fraction: float = 0.1  # patient-wise fraction of train held out for validation
    head_epochs: int = 60  # phase 1 (base frozen); why 60: docs/ablation.md, "Defaults of core/config.py"
    head_learning_rate: float = 1e-3
    # Phase 2 (all layers trainable). How this recipe was chosen: docs/ablation.md, "Defaults of core/config.py".
    finetune_epochs: int = 4
    finetune_learning_rate: float = 1e-4  # "much smaller" than the head's (peak rate under "cosine")
    # Phase-2 learning-rate schedule: "constant", or "cosine" = linear warm-up over
    # warmup_fraction of the phase-2 steps, then cosine decay to 0 at the last step.
    finetune_schedule: str = "cosine"
    warmup_fraction: float = 0.1
    label_smoothing: float = 0.1  # binary cross-entropy targets 0/1 -> eps/2, 1-eps/2 (both phases)
    # Checkpoint averaging: the mean of the last k phase-2 epochs' weights replaces the best
    # single epoch only when its validation AUC is at least as high (0 = off).
    average_last_epochs: int = 0
    early_stopping_patience: int = 5
    class_weighting: bool = True
    # Phase 2 only: draw each batch ~50/50 NORMAL/PNEUMONIA (NORMAL oversampled, PNEUMONIA
    # undersampled, epochs keep the train split's length) instead of weighting the loss;
    # phase 1 keeps class weights. A lever of issue 6 (docs/ablation.md).
    balanced_sampling: bool = False
    precision: str = "float32"  # "mixed_bfloat16" roughly halves CPU time on AVX-512 BF16
    strategy: str = "default"  # tf.distribute: "default" | "mirrored" | "multiworker"
    cache_features: bool = True  # phase 1 trains the head on base features computed once
    # Per-image intensity standardisation inside the model (exposure/contrast differ between
    # machines and hospitals; the Kaggle test split is visibly different from train).
    intensity_norm: bool = True
    # Phase-2 augmentation suited to radiographs: small rotation/shift/zoom, contrast and
    # brightness. No flips: the heart is on the left and lateral markers are real cues.
    augment: bool = True
    aug_rotation_deg: float = 10.0
    aug_shift: float = 0.08
    aug_zoom: float = 0.10
    aug_contrast: float = 0.2
    aug_brightness: float = 0.15

    # --- operating point ----------------------------------------------------------------
    threshold_policy: str = "sensitivity"  # "youden" | "sensitivity"
    target_sensitivity: float = 0.95
    indeterminate_margin: float = 0.1  # +- around the threshold, in calibrated probability

    # --- explanation shown by default (docs/explanations.md) ----------------------------
    # How it was chosen: docs/explanations.md. A model carries its own choice in config.json,
    # so it travels with the weights.
    explain_method: str = "hirescam"
    explain_layer: str = "block3_conv2"

    # --- clinician feedback (core.feedback, issue 17) -------------------------------------
    # Add the accepted feedback images that have consented pixels to the TRAINING part only,
    # after the patient-wise train/validation split (never to validation or test).
    include_feedback: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.class_names, (list, tuple)):
            self.class_names = tuple(self.class_names)
        self.validate()

    # keras-hub style: every ValueError lists what is allowed and what was received.
    def validate(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(
                f"Unknown backbone. Allowed: {sorted(BACKBONES)}. Received: backbone={self.backbone!r}"
            )
        min_size = BACKBONES[self.backbone]["min_input_size"]
        if not isinstance(self.input_size, int) or not (min_size <= self.input_size <= 512):
            raise ValueError(
                f"input_size must be an integer in [{min_size}, 512]. Received: input_size={self.input_size!r}"
            )
        if self.channels != 3:
            raise ValueError(f"The backbone needs 3 channels. Received: channels={self.channels!r}")
        w = self.weights
        if w is None or (isinstance(w, str) and w.lower() in ("none", "")):
            self.weights = "none"
        elif w != "imagenet" and not str(w).endswith(".h5"):
            raise ValueError(
                f"weights must be one of {WEIGHTS_CHOICES} (a local file ends in .h5). Received: weights={w!r}"
            )
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}. Received: strategy={self.strategy!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}. Received: precision={self.precision!r}")
        if self.threshold_policy not in THRESHOLD_POLICIES:
            raise ValueError(
                f"threshold_policy must be one of {THRESHOLD_POLICIES}. Received: threshold_policy={self.threshold_policy!r}"
            )
        if self.explain_method not in EXPLAIN_METHODS:
            raise ValueError(
                f"explain_method must be one of {EXPLAIN_METHODS}. Received: explain_method={self.explain_method!r}"
            )
        if not isinstance(self.explain_layer, str) or not self.explain_layer:
            raise ValueError(f"explain_layer must be a layer name. Received: explain_layer={self.explain_layer!r}")
        if not isinstance(self.include_feedback, bool):
            raise ValueError(f"include_feedback must be true or false. Received: include_feedback={self.include_feedback!r}")
        if self.finetune_schedule not in FINETUNE_SCHEDULES:
            raise ValueError(
                f"finetune_schedule must be one of {FINETUNE_SCHEDULES}. Received: finetune_schedule={self.finetune_schedule!r}"
            )
        for name in ("head_epochs", "finetune_epochs", "average_last_epochs"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0. Received: {name}={v!r}")
        if isinstance(self.head_units, bool) or not isinstance(self.head_units, int) or not 1 <= self.head_units <= 65536:
            raise ValueError(f"head_units must be an integer in [1, 65536]. Received: head_units={self.head_units!r}")
        # A JSON config may carry "0.1" or null: say so as a ValueError, not a TypeError from '<'.
        for name, allowed in (
            ("val_fraction", "(0, 0.5)"), ("head_learning_rate", "(0, 1)"), ("finetune_learning_rate", "(0, 1)"),
            ("dropout", "[0, 1)"), ("target_sensitivity", "[0.5, 1)"), ("indeterminate_margin", "[0, 0.5)"),
            ("warmup_fraction", "[0, 1)"), ("label_smoothing", "[0, 0.5)"),
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"{name} must be a number in {allowed}. Received: {name}={v!r}")
        if not isinstance(self.batch_size, int) or not 1 <= self.batch_size <= 4096:
            raise ValueError(f"batch_size must be an integer in [1, 4096]. Received: batch_size={self.batch_size!r}")
        if not 0.0 < self.val_fraction < 0.5:
            raise ValueError(f"val_fraction must be in (0, 0.5). Received: val_fraction={self.val_fraction!r}")
        for name in ("head_learning_rate", "finetune_learning_rate"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 < v < 1):
                raise ValueError(f"{name} must be in (0, 1). Received: {name}={v!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1). Received: dropout={self.dropout!r}")
        if not 0.5 <= self.target_sensitivity < 1.0:
            raise ValueError(
                f"target_sensitivity must be in [0.5, 1). Received: target_sensitivity={self.target_sensitivity!r}"
            )
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1). Received: warmup_fraction={self.warmup_fraction!r}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5). Received: label_smoothing={self.label_smoothing!r}")
        if not 0.0 <= self.indeterminate_margin < 0.5:
            raise ValueError(
                f"indeterminate_margin must be in [0, 0.5). Received: indeterminate_margin={self.indeterminate_margin!r}"
            )
        # The rest is what a config.json of the registry may carry too (issue 21): the label
        # encoding, integers that must be integers, switches that must be switches, finite numbers.
        names = self.class_names
        if not isinstance(names, tuple) or len(names) != 2 or not all(isinstance(c, str) and c for c in names):
            raise ValueError(f"class_names must be a list of two non-empty names (negative class first). "
                             f"Received: class_names={names!r}")
        check_number("seed", self.seed, 0, 2**32 - 1, integer=True)
        check_number("early_stopping_patience", self.early_stopping_patience, 0, integer=True)
        for name in ("aug_rotation_deg", "aug_shift", "aug_zoom", "aug_contrast", "aug_brightness"):
            check_number(name, getattr(self, name), 0)
        for name in ("class_weighting", "balanced_sampling", "cache_features", "intensity_norm", "augment"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false. Received: {name}={getattr(self, name)!r}")

    # --- derived --------------------------------------------------------------------------
    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.input_size, self.input_size, self.channels)

    @property
    def backbone_spec(self) -> dict[str, Any]:
        return BACKBONES[self.backbone]

    @property
    def last_conv_layer(self) -> str:
        return self.backbone_spec["last_conv_layer"]

    @property
    def weights_source(self) -> str:
        """Human-readable provenance of the starting weights."""
        if self.weights == "imagenet":
            return "imagenet"
        if self.weights == "none":
            return "none (random initialisation)"
        return f"local file: {Path(self.weights).name}"

    # --- (de)serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["class_names"] = list(self.class_names)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        if not isinstance(d, dict):
            raise ValueError(f"A config must be a JSON object of settings. Received: a JSON {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            # A config from a newer version: keep going, but drop what we don't know.
            import logging

            logging.getLogger(__name__).warning("Ignoring unknown config keys: %s", unknown)
        return cls(**{k: v for k, v in d.items() if k in known})

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Config":
        return cls.from_dict(json.loads(Path(path).read_text()))

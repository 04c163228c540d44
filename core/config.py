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


def _shown(value: Any) -> str:
    """``repr(value)``, cut to 80 characters (a message names the value, never dumps a file)."""
    shown = repr(value)
    return shown[:77] + "..." if len(shown) > 80 else shown


def _num(x: float) -> str:
    # 4294967295, not 4.29497e+09; 0.5, not 0.500000.
    return str(x) if isinstance(x, int) else f"{x:g}"


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
        where = f" in {'(' if lo_open else '['}{_num(lo)}, {_num(hi)}{')' if hi_open else ']'}"
    elif lo is not None:
        where = f" {'>' if lo_open else '>='} {_num(lo)}"
    elif hi is not None:
        where = f" {'<' if hi_open else '<='} {_num(hi)}"
    else:
        where = ""
    raise ValueError(f"{name} must be {'an integer' if integer else 'a finite number'}{where}"
                     f"{' or null' if allow_none else ''}. Received: {name}={_shown(value)}")


@dataclasses.dataclass(frozen=True)
class Spec:
    """What one :class:`Config` field accepts, declared once, next to the field (its
    ``dataclasses.field`` metadata, see :func:`setting`). Three things are derived from it:
    ``Config.validate``, the ``train`` command's flags (core/cli.py) and the limits of the admin
    page's training form (``ui.admin_components.form_limits``).

    kind: "int" / "float" (a number in [lo, hi]; ``lo_open``/``hi_open`` exclude a bound),
    "bool", "choice" (one of ``choices``), "name" (a non-empty string) or "str" (checked by an
    explicit rule of ``Config.validate``, e.g. ``weights``).
    """

    kind: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[Any, ...] = ()
    # The ``train`` flag that sets it, e.g. "--head-lr" (its argparse dest is the field name);
    # None: not a flag (set it in a --config file).
    cli: str | None = None
    # Flag help besides the allowed choices and the default ("(reads TF_CONFIG)").
    help: str = ""
    # Admin form widget: "min"/"max" where the schema's bound is open or absent (a widget needs
    # a closed range inside the allowed one), "step", "format".
    form: tuple[tuple[str, Any], ...] = ()

    def check(self, name: str, value: Any) -> None:
        """Raise ValueError ("<name> must be ... Received: <name>=...") unless ``value`` fits."""
        if self.kind in ("int", "float"):
            check_number(name, value, self.lo, self.hi, lo_open=self.lo_open, hi_open=self.hi_open,
                         integer=self.kind == "int")
        elif self.kind == "bool" and not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false. Received: {name}={_shown(value)}")
        elif self.kind == "choice" and (isinstance(value, bool) or value not in self.choices):
            raise ValueError(f"{name} must be one of {self.choices}. Received: {name}={_shown(value)}")
        elif self.kind == "name" and not (isinstance(value, str) and value):
            raise ValueError(f"{name} must be a non-empty name. Received: {name}={_shown(value)}")

    def flag_help(self, default: Any) -> str:
        """The flag's help: allowed choices, the note, the Config default ("default 64")."""
        if self.kind == "bool":
            return self.help
        text = " ".join(t for t in (" | ".join(map(str, self.choices)), self.help) if t)
        return f"{text} (default {default})" if text else f"default {default}"


def setting(default: Any, kind: str, **spec: Any) -> Any:
    """A Config field with its :class:`Spec` (``form`` may be given as a dict)."""
    if isinstance(spec.get("form"), dict):
        spec["form"] = tuple(spec["form"].items())
    return dataclasses.field(default=default, metadata={"spec": Spec(kind, **spec)})


def field_spec(name: str) -> Spec:
    """The :class:`Spec` of Config field ``name`` (KeyError for a field without one)."""
    return SPECS[name]


def default_artifacts_dir() -> Path:
    """Registry root from ``$PNEUMOSCOPE_ARTIFACTS``, else ``artifacts/`` next to the repo."""
    env = os.environ.get(ARTIFACTS_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "artifacts"


# Smallest input any backbone accepts; a backbone's own minimum is a cross-field rule of validate().
_MIN_INPUT_SIZE = min(b["min_input_size"] for b in BACKBONES.values())


@dataclasses.dataclass
class Config:
    """Model + training recipe. Round-trips through ``to_dict``/``from_dict``.

    Each field's constraints are declared once, in its :func:`setting` (a :class:`Spec`):
    ``validate`` checks them, and the ``train`` flags and the admin form's limits are built from
    them. What a spec cannot say (a backbone's minimum input size, the weights spellings, the
    label encoding) is a small explicit rule in ``validate``.
    """

    # --- backbone / input -------------------------------------------------------------
    backbone: str = setting("vgg19", "choice", choices=tuple(BACKBONES))
    # Square side in pixels; the original study used 64x64 RGB.
    input_size: int = setting(64, "int", lo=_MIN_INPUT_SIZE, hi=512, cli="--input-size", form={"step": 16})
    # Grayscale X-rays are replicated to RGB for the ImageNet backbone.
    channels: int = setting(3, "choice", choices=(3,))
    # "imagenet" | "none" | path to a local weights file (the explicit rule in validate()).
    weights: str = setting("imagenet", "str", cli="--weights",
                           help="imagenet | none | path to a local VGG-19 no-top .h5 file")
    class_names: tuple[str, ...] = CLASS_NAMES

    # --- head ---------------------------------------------------------------------------
    head_units: int = setting(256, "int", lo=1, hi=65536)
    dropout: float = setting(0.5, "float", lo=0, hi=1, hi_open=True)

    # --- training -----------------------------------------------------------------------
    seed: int = setting(1337, "int", lo=0, hi=2**32 - 1, cli="--seed")
    batch_size: int = setting(32, "int", lo=1, hi=4096, cli="--batch-size")
    # Patient-wise fraction of train held out for validation.
    val_fraction: float = setting(0.1, "float", lo=0, hi=0.5, lo_open=True, hi_open=True, cli="--val-fraction",
                                  form={"min": 0.05, "max": 0.45, "step": 0.01})
    # Phase 1 (base frozen); why 60: docs/ablation.md, "Defaults of core/config.py".
    head_epochs: int = setting(60, "int", lo=0, cli="--head-epochs", form={"max": 500})
    head_learning_rate: float = setting(1e-3, "float", lo=0, hi=1, lo_open=True, hi_open=True, cli="--head-lr",
                                        form={"min": 1e-7, "max": 0.5, "step": 1e-4, "format": "%.6f"})
    # Phase 2 (all layers trainable). How this recipe was chosen: docs/ablation.md, "Defaults of core/config.py".
    finetune_epochs: int = setting(4, "int", lo=0, cli="--finetune-epochs", form={"max": 500})
    # "Much smaller" than the head's (peak rate under "cosine").
    finetune_learning_rate: float = setting(1e-4, "float", lo=0, hi=1, lo_open=True, hi_open=True, cli="--finetune-lr",
                                            form={"min": 1e-8, "max": 0.5, "step": 1e-5, "format": "%.7f"})
    # Phase-2 learning-rate schedule: "constant", or "cosine" = linear warm-up over
    # warmup_fraction of the phase-2 steps, then cosine decay to 0 at the last step.
    finetune_schedule: str = setting("cosine", "choice", choices=FINETUNE_SCHEDULES, cli="--finetune-schedule",
                                     help="(warm-up + cosine decay)")
    warmup_fraction: float = setting(0.1, "float", lo=0, hi=1, hi_open=True)
    # Binary cross-entropy targets 0/1 -> eps/2, 1-eps/2 (both phases).
    label_smoothing: float = setting(0.1, "float", lo=0, hi=0.5, hi_open=True, cli="--label-smoothing")
    # Checkpoint averaging: the mean of the last k phase-2 epochs' weights replaces the best
    # single epoch only when its validation AUC is at least as high (0 = off).
    average_last_epochs: int = setting(0, "int", lo=0, cli="--average-last-epochs",
                                       help="checkpoint averaging over the last k phase-2 epochs")
    early_stopping_patience: int = setting(5, "int", lo=0, cli="--patience")
    class_weighting: bool = setting(True, "bool")
    # Phase 2 only: draw each batch ~50/50 NORMAL/PNEUMONIA (NORMAL oversampled, PNEUMONIA
    # undersampled, epochs keep the train split's length) instead of weighting the loss;
    # phase 1 keeps class weights. A lever of issue 6 (docs/ablation.md).
    balanced_sampling: bool = setting(False, "bool")
    # "mixed_bfloat16" roughly halves CPU time on AVX-512 BF16.
    precision: str = setting("float32", "choice", choices=PRECISIONS, cli="--precision")
    # tf.distribute strategy.
    strategy: str = setting("default", "choice", choices=STRATEGIES, cli="--strategy", help="(reads TF_CONFIG)")
    # Phase 1 trains the head on base features computed once.
    cache_features: bool = setting(True, "bool")
    # Per-image intensity standardisation inside the model (exposure/contrast differ between
    # machines and hospitals; the Kaggle test split is visibly different from train).
    intensity_norm: bool = setting(True, "bool")
    # Phase-2 augmentation suited to radiographs: small rotation/shift/zoom, contrast and
    # brightness. No flips: the heart is on the left and lateral markers are real cues.
    augment: bool = setting(True, "bool")
    aug_rotation_deg: float = setting(10.0, "float", lo=0)
    aug_shift: float = setting(0.08, "float", lo=0)
    aug_zoom: float = setting(0.10, "float", lo=0)
    aug_contrast: float = setting(0.2, "float", lo=0)
    aug_brightness: float = setting(0.15, "float", lo=0)

    # --- operating point ----------------------------------------------------------------
    threshold_policy: str = setting("sensitivity", "choice", choices=THRESHOLD_POLICIES, cli="--threshold-policy")
    target_sensitivity: float = setting(0.95, "float", lo=0.5, hi=1, hi_open=True, cli="--target-sensitivity")
    # +- around the threshold, in calibrated probability.
    indeterminate_margin: float = setting(0.1, "float", lo=0, hi=0.5, hi_open=True)

    # --- explanation shown by default (docs/explanations.md) ----------------------------
    # How it was chosen: docs/explanations.md. A model carries its own choice in config.json,
    # so it travels with the weights.
    explain_method: str = setting("hirescam", "choice", choices=EXPLAIN_METHODS)
    explain_layer: str = setting("block3_conv2", "name")

    # --- clinician feedback (core.feedback, issue 17) -------------------------------------
    # Add the accepted feedback images that have consented pixels to the TRAINING part only,
    # after the patient-wise train/validation split (never to validation or test).
    include_feedback: bool = setting(False, "bool", cli="--include-feedback",
                                     help="add accepted clinician feedback images (with consented pixels) to the "
                                          "training part only")

    def __post_init__(self) -> None:
        if isinstance(self.class_names, (list, tuple)):
            self.class_names = tuple(self.class_names)
        self.validate()

    # keras-hub style: every ValueError lists what is allowed and what was received.
    def validate(self) -> None:
        # In field order: the backbone is known good before input_size is checked against it.
        for name, spec in SPECS.items():
            spec.check(name, getattr(self, name))
        # Cross-field and shape rules a Spec cannot say.
        check_number("input_size", self.input_size, BACKBONES[self.backbone]["min_input_size"], 512, integer=True)
        self.weights = _checked_weights(self.weights)
        # The label encoding a config.json of the registry carries too (issue 21).
        names = self.class_names
        if not isinstance(names, tuple) or len(names) != 2 or not all(isinstance(c, str) and c for c in names):
            raise ValueError(f"class_names must be a list of two non-empty names (negative class first). "
                             f"Received: class_names={_shown(names)}")

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


# Field name -> Spec, in field order: what validate() checks, the train flags and the admin form read.
SPECS: dict[str, Spec] = {f.name: f.metadata["spec"] for f in dataclasses.fields(Config) if "spec" in f.metadata}


def form_limits(name: str) -> dict[str, Any]:
    """``min_value``/``max_value`` (and ``step``/``format`` where declared) of the admin training
    form's widget for Config field ``name``, from its :class:`Spec`: the schema's closed bounds,
    or the spec's ``form`` values where a bound is open or absent (a widget needs a closed range).
    Numbers have the field's type (Streamlit refuses int and float mixed). Plain values, no
    Streamlit: ``st.number_input(label, value=..., **form_limits(name))``."""
    spec = field_spec(name)
    if spec.kind not in ("int", "float"):
        raise ValueError(f"form_limits needs a number field. Received: name={name!r} (kind {spec.kind!r})")
    form = dict(spec.form)
    num = int if spec.kind == "int" else float
    out: dict[str, Any] = {}
    for key, bound, is_open in (("min", spec.lo, spec.lo_open), ("max", spec.hi, spec.hi_open)):
        value = form.get(key, None if bound is None or is_open else bound)
        if value is None:  # a spec mistake, caught by tests/test_config.py
            raise ValueError(f"{name}: an open or absent bound needs form {key!r} in its setting(). Received: {spec}")
        out[f"{key}_value"] = num(value)
    if "step" in form:
        out["step"] = num(form["step"])
    if "format" in form:
        out["format"] = form["format"]
    return out


def _checked_weights(w: Any) -> str:
    """``weights`` normalised: None/"none"/"" (any case) -> "none"; else "imagenet" or a path ending in .h5."""
    if w is None or (isinstance(w, str) and w.lower() in ("none", "")):
        return "none"
    if w != "imagenet" and not str(w).endswith(".h5"):
        raise ValueError(f"weights must be one of {WEIGHTS_CHOICES} (a local file ends in .h5). "
                         f"Received: weights={_shown(w)}")
    return w

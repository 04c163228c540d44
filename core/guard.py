"""Input guard: is this a pediatric frontal chest X-ray the model can judge? And if not, why?

Runs before every verdict (``core.predict.Predictor`` calls :func:`assess` for each image the
app, the CLI batch and the Python API send). Two layers:

1. **Hard checks** on the decoded image, each with a measured value, the limit it was
   compared with and a plain-English reason: size, aspect ratio, colour, near-constant
   content, layout (similarity to the average training X-ray), 90- and 180-degree rotation
   and inverted polarity (a "negative").
2. **Learned out-of-distribution score** (``core.ood``): the Mahalanobis distance of the
   model's pooled base features to the training features, compared with the threshold
   stored with the model (99th percentile of the validation split's scores).

Outcome: :class:`GuardResult` ``status`` is ``"accepted"``, ``"warning"`` (verdict kept, the
reason shown) or ``"rejected"`` (no verdict). ``code`` is machine-readable (see
:data:`CODES`), ``message`` is for the clinician, ``checks`` lists every individual check
with its measured value.

Where the limits come from (see docs/guard.md and ``benchmarks/bench_guard.py --train-stats``):
all 5,216 training X-rays were measured with :func:`measure`. Each limit sits well outside
the range observed on them (min/max or the 0.1st percentile, with a margin), so that the
hard checks alone reject essentially no real training X-ray; the learned OOD check is the
one that is calibrated to a rate (about 1 % of validation X-rays exceed its threshold).
The training images of this dataset were resized to 224 x 224 without keeping the aspect
ratio, so size and aspect limits also use the 16 full-resolution official validation
X-rays (aspect 1.12 - 1.74).

This module never imports TensorFlow or Streamlit: the hard checks are pure NumPy/OpenCV.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import cv2
import numpy as np

from core.imageio import shrink_to

log = logging.getLogger(__name__)

STATUSES = ("accepted", "warning", "rejected")
_RANK = {s: i for i, s in enumerate(STATUSES)}

# Every code the guard can return, with a one-line meaning (docs, UI legends).
CODES: dict[str, str] = {
    "ok": "Looks like a frontal chest X-ray of the kind the model was trained on.",
    # rejections from the hard checks
    "too_small": "Smaller than the minimum size in pixels.",
    "aspect_ratio": "Extreme width/height ratio.",
    "color": "Strongly coloured: a photograph or colour image, not a radiograph.",
    "constant": "Nearly uniform (blank, flat or mostly one grey level).",
    "layout": "Does not have the layout of a frontal chest X-ray.",
    "rotated": "Looks like a chest X-ray rotated by 90 degrees.",
    "upside_down": "Looks like a chest X-ray turned upside down (180 degrees).",
    "inverted": "Looks like an inverted (negative) chest X-ray.",
    # rejections from facts of the decoded file (core.imageio info)
    "not_a_radiograph": "The DICOM Modality is not a radiograph (only CR, DX or unknown are accepted).",
    "nonfinite": "More than 1 % of the pixels are not numbers (NaN or infinite).",
    # rejection from the learned check
    "ood": "Does not look like a chest X-ray this model was trained on (learned OOD score).",
    # warnings (verdict kept)
    "low_resolution": "Smaller than the training images; detail may be lost.",
    "aspect_unusual": "Unusual width/height ratio for a chest X-ray.",
    "color_minor": "Contains some colour (annotations?); analysed in grayscale.",
    "low_contrast": "Low contrast.",
    "orientation_uncertain": "Top and bottom look less clearly upright than in almost all training X-rays.",
    "layout_unusual": "Less similar to a typical frontal chest X-ray than almost all training images.",
    "inverted_corrected": "Was inverted (negative) and analysed after inverting it back.",
    "ood_borderline": "Less typical than 99 % of validation X-rays (learned OOD score between the two thresholds).",
    "ood_unavailable": "The model has no OOD statistics; only the hard checks ran.",
    "nonfinite_minor": "Some pixels (at most 1 %) are not numbers (NaN or infinite); shown black.",
    # decode errors from core.imageio keep their own codes (empty, truncated, corrupt,
    # not_an_image, too_large, too_small, unsupported, ...) and are always "rejected".
}

# Order in which a rejection reason is reported when several checks fail: the most
# specific, actionable reason first; the learned score last.
_PRIORITY = ("modality", "nonfinite", "size", "aspect_ratio", "constant", "color", "layout", "ood")

# DICOM Modality values of a (chest) radiograph; "" = not stated. Anything else (CT, MR, US,
# NM, PT, MG, OT, SC...) is not the kind of image the model judges.
RADIOGRAPH_MODALITIES = ("CR", "DX", "")
_MODALITY_NAMES = {"CT": "computed tomography", "MR": "magnetic resonance", "US": "ultrasound",
                   "NM": "nuclear medicine", "PT": "PET", "MG": "mammography", "XA": "angiography",
                   "RF": "fluoroscopy", "OT": "other", "SC": "secondary capture", "IO": "intra-oral",
                   "PX": "panoramic dental", "OP": "ophthalmic photography", "XC": "photograph",
                   "ES": "endoscopy", "SM": "microscopy", "SR": "structured report"}
# One-click corrections: guard code -> fix name understood by Predictor (invert= / rotate180=).
FIXES = {"inverted": "invert", "upside_down": "rotate180"}

# Average layout of the training X-rays: each of the 5,216 train images was reduced to
# 16 x 16 gray (cv2.INTER_AREA, aspect ignored as the model does), standardised (zero mean,
# unit variance), averaged, and the average standardised again. Dark lung fields and body
# edges (negative), bright mediastinum/spine and abdomen (positive). Regenerate with
# ``python benchmarks/bench_guard.py --train-stats``.
_TEMPLATE_16 = (
    (-1.31, -0.83, -0.72, -0.60, -0.35, 0.15, 0.66, 0.90, 0.91, 0.65, 0.15, -0.37, -0.62, -0.75, -0.99, -1.34),
    (-1.21, -0.70, -0.40, -0.16, 0.08, 0.34, 0.60, 0.81, 0.81, 0.60, 0.34, 0.08, -0.18, -0.44, -0.79, -1.24),
    (-1.21, -0.67, -0.20, 0.20, 0.36, 0.34, 0.53, 0.83, 0.84, 0.51, 0.36, 0.38, 0.18, -0.24, -0.74, -1.23),
    (-1.36, -0.78, -0.08, 0.40, 0.31, 0.06, 0.38, 0.91, 0.94, 0.37, 0.09, 0.37, 0.37, -0.14, -0.82, -1.34),
    (-1.54, -0.90, -0.03, 0.43, 0.07, -0.19, 0.28, 0.98, 1.05, 0.36, -0.11, 0.17, 0.43, -0.09, -0.95, -1.51),
    (-1.73, -0.99, 0.02, 0.30, -0.17, -0.24, 0.33, 1.06, 1.17, 0.56, -0.04, -0.00, 0.34, -0.04, -1.04, -1.70),
    (-1.91, -1.03, 0.08, 0.10, -0.34, -0.21, 0.46, 1.18, 1.27, 0.85, 0.19, -0.08, 0.20, 0.02, -1.09, -1.87),
    (-1.99, -1.02, 0.09, -0.12, -0.46, -0.14, 0.61, 1.29, 1.36, 1.02, 0.48, -0.06, 0.04, 0.02, -1.09, -1.99),
    (-2.07, -0.99, 0.03, -0.30, -0.48, 0.00, 0.73, 1.35, 1.43, 1.12, 0.74, 0.07, -0.07, -0.04, -1.08, -2.08),
    (-2.17, -0.97, -0.09, -0.43, -0.46, 0.01, 0.75, 1.39, 1.47, 1.18, 0.90, 0.27, -0.13, -0.13, -1.08, -2.14),
    (-2.20, -0.96, -0.24, -0.51, -0.43, -0.06, 0.68, 1.38, 1.49, 1.17, 0.95, 0.40, -0.18, -0.24, -1.08, -2.18),
    (-2.21, -0.95, -0.34, -0.44, -0.24, 0.08, 0.70, 1.37, 1.50, 1.12, 0.90, 0.39, -0.24, -0.35, -1.08, -2.20),
    (-2.20, -0.92, -0.24, 0.01, 0.37, 0.64, 0.98, 1.44, 1.51, 1.12, 0.93, 0.52, -0.11, -0.39, -1.08, -2.21),
    (-2.17, -0.83, 0.11, 0.61, 0.97, 1.14, 1.26, 1.54, 1.57, 1.24, 1.12, 0.86, 0.34, -0.16, -1.04, -2.20),
    (-2.13, -0.71, 0.46, 1.01, 1.28, 1.40, 1.44, 1.61, 1.60, 1.36, 1.25, 1.07, 0.74, 0.19, -0.92, -2.18),
    (-2.08, -0.61, 0.64, 1.17, 1.41, 1.49, 1.52, 1.63, 1.60, 1.39, 1.26, 1.12, 0.90, 0.43, -0.82, -2.12),
)
TEMPLATE_SIZE = 16


def _standardise(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    sd = a.std()
    return (a - a.mean()) / sd if sd > 1e-9 else np.zeros_like(a)


TEMPLATE = _standardise(np.array(_TEMPLATE_16, dtype=np.float64))

# Upright vs upside down. The layout template is nearly symmetric top-to-bottom at 16 x 16,
# so a 180-degree turn keeps a high similarity; a linear score learned for the purpose
# tells the two apart. Logistic regression (C=0.1, no intercept) on all 5,216 training
# X-rays: features = top half minus the mirrored bottom half of the left-right-symmetrised
# 16 x 16 grid (so mirroring left/right changes nothing), upright images as positives and
# their 180-degree turns (the negated features) as negatives. These are the weights of the
# top eight rows; the bottom eight are their negated mirror image, so the score of a turned
# image is exactly minus the score of the upright one. Upright training X-rays score
# median 11.5, 0.1st percentile -0.16, minimum -2.66 (2 of 5,216 below -2).
# Regenerate with ``python benchmarks/bench_guard.py --train-stats``.
_UPRIGHT_TOP_8x16 = (
    (0.465, -0.325, -0.057, -0.283, -0.702, -0.460, 0.072, -0.008, -0.008, 0.072, -0.460, -0.702, -0.283, -0.057, -0.325, 0.465),
    (0.215, -0.158, 0.072, 0.008, -0.436, -0.240, -0.027, -0.245, -0.245, -0.027, -0.240, -0.436, 0.008, 0.072, -0.158, 0.215),
    (0.090, -0.031, 0.059, 0.089, -0.056, -0.198, -0.137, -0.346, -0.346, -0.137, -0.198, -0.056, 0.089, 0.059, -0.031, 0.090),
    (-0.035, 0.014, 0.088, 0.190, 0.041, -0.194, -0.239, -0.277, -0.277, -0.239, -0.194, 0.041, 0.190, 0.088, 0.014, -0.035),
    (0.040, 0.054, 0.090, 0.451, 0.101, -0.298, -0.217, -0.233, -0.233, -0.217, -0.298, 0.101, 0.451, 0.090, 0.054, 0.040),
    (0.061, 0.049, 0.250, 0.467, 0.038, -0.503, -0.296, -0.272, -0.272, -0.296, -0.503, 0.038, 0.467, 0.250, 0.049, 0.061),
    (0.035, 0.028, 0.104, 0.256, 0.022, -0.368, -0.232, -0.200, -0.200, -0.232, -0.368, 0.022, 0.256, 0.104, 0.028, 0.035),
    (0.003, -0.075, 0.097, 0.095, -0.078, -0.181, -0.109, -0.072, -0.072, -0.109, -0.181, -0.078, 0.095, 0.097, -0.075, 0.003)
)
UPRIGHT_WEIGHTS = np.vstack([np.array(_UPRIGHT_TOP_8x16), -np.array(_UPRIGHT_TOP_8x16)[::-1]])  # (16, 16)


def fit_upright_weights(grids: np.ndarray, c: float = 0.1) -> np.ndarray:
    """(N, 16, 16) upright standardised grids -> (8, 16) top-half weights of the upright score.

    Used by ``benchmarks/bench_guard.py --train-stats`` to regenerate ``_UPRIGHT_TOP_8x16``.
    """
    from sklearn.linear_model import LogisticRegression  # only for regeneration

    g = np.asarray(grids, dtype=np.float64)
    x = (g + g[:, :, ::-1]) / 2  # left-right symmetric: mirrored films are still upright
    half = g.shape[1] // 2
    d = (x[:, :half, :] - x[:, ::-1, :][:, :half, :]).reshape(len(x), -1)
    feats = np.vstack([d, -d])
    labels = np.r_[np.ones(len(d)), np.zeros(len(d))]
    w = LogisticRegression(C=c, fit_intercept=False, max_iter=5000).fit(feats, labels).coef_[0]
    w = w.reshape(half, g.shape[2])
    return (w + w[:, ::-1]) / 2


def upright_score(grid: np.ndarray) -> float:
    """Standardised 16 x 16 grid -> upright score (> 0 upright, < 0 upside down)."""
    return float((np.asarray(grid) * UPRIGHT_WEIGHTS).sum())


@dataclasses.dataclass(frozen=True)
class GuardSettings:
    """Limits of the hard checks. Defaults measured on the training X-rays (docs/guard.md).

    Train statistics (5,216 images; min / 0.1st pct / median / max):
    gray std 19.9 / 25.2 / 56.9 / 87.3; histogram entropy 5.95 / 6.19 / 7.36 / 7.79 bits;
    largest single-level share (mode +- 3) 0.015 / - / 0.087 / 0.334 (99.9th pct 0.283);
    strongly coloured pixel share 0 for every image; layout similarity 0.24 / 0.35 / 0.88 / 0.97.
    """

    # --- size (smaller side, pixels) ---
    # Below the model's input the picture would be up-sampled (detail invented): reject.
    # The effective limit is max(min_side, model input size) (see Predictor).
    min_side: int = 64
    # The training images are 224 x 224; below that the image is smaller than anything seen.
    warn_side: int = 224
    # --- aspect ratio (width / height) ---
    # Observed: 1.0 (train/test, resized squares) and 1.12 - 1.74 (full-resolution originals).
    # Portrait detectors (14 x 17 in, 0.82) are normal elsewhere; warn outside, reject far outside.
    aspect_warn: tuple[float, float] = (0.75, 2.0)
    aspect_reject: tuple[float, float] = (0.5, 2.5)
    # --- colour (on the colour version of the upload) ---
    # A pixel is "strongly coloured" when max(R,G,B) - min(R,G,B) exceeds this (0..255).
    # JPEG chroma noise on a gray image stays < 10; no training X-ray has a single such pixel.
    colour_pixel_chroma: int = 24
    # Share of strongly coloured pixels: above reject -> "color"; above warn -> "color_minor"
    # (room for coloured annotations, rulers or markers on an exported X-ray).
    colour_reject_fraction: float = 0.05
    colour_warn_fraction: float = 0.001
    # --- near-constant content (gray, 0..255) ---
    constant_std: float = 10.0  # half the smallest training std (19.9)
    min_entropy: float = 4.0  # bits; training minimum 5.95
    max_mode_fraction: float = 0.5  # training maximum 0.334
    low_contrast_std: float = 20.0  # warn: below the smallest training std
    # --- layout: Pearson correlation of the 16 x 16 standardised image with TEMPLATE ---
    layout_reject: float = 0.2  # training minimum 0.24; natural images mostly -0.3 .. 0.2
    layout_warn: float = 0.35  # training 0.1st percentile
    inverted_below: float = -0.2  # an inverted training X-ray scores -0.96 .. -0.24 (its negation)
    rotated_min: float = 0.5  # a 90-degree turn must restore a clearly X-ray-like layout
    # Upright score (see UPRIGHT_WEIGHTS): upright training X-rays median 11.5, minimum -2.66.
    upside_down_reject: float = -2.0  # 2 of 5,216 training X-rays score below it
    upside_down_warn: float = 0.0  # 8 of 5,216 below it: "orientation_uncertain"
    # Training statistics quoted in the messages (measured with the limits above; a refit of the
    # guard changes them here, not in the message text).
    upright_median: float = 11.5  # median upright score of the training X-rays
    upright_warn_share: float = 99.8  # % of training X-rays scoring above upside_down_warn
    layout_warn_share: float = 99.9  # % of training X-rays with a layout similarity of at least layout_warn
    # --- non-finite pixels (float TIFF / float DICOM): NaN and +-inf are shown black ---
    # Above this share of the pixels the image is refused; any non-finite pixel warns.
    nonfinite_reject_fraction: float = 0.01
    # --- statistics resolution ---
    stats_side: int = 256  # measurements on a copy whose longer side is at most this

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


DEFAULT_SETTINGS = GuardSettings()


@dataclasses.dataclass
class CheckResult:
    """One check: ``status`` is "pass", "warn", "fail" or "skipped"."""

    name: str
    status: str
    code: str
    value: Any = None
    limit: Any = None
    message: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class GuardResult:
    status: str  # "accepted" | "warning" | "rejected"
    code: str
    message: str
    checks: list[CheckResult] = dataclasses.field(default_factory=list)
    measurements: dict = dataclasses.field(default_factory=dict)

    @property
    def accepted(self) -> bool:
        return self.status != "rejected"

    def check(self, name: str) -> CheckResult | None:
        return next((c for c in self.checks if c.name == name), None)

    @property
    def suggested_fix(self) -> str | None:
        """"invert" / "rotate180" when that one correction is expected to help, else None."""
        return suggested_fix(self)

    def to_dict(self) -> dict:
        return {
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "suggested_fix": self.suggested_fix,
            "checks": [c.to_dict() for c in self.checks],
            "measurements": dict(self.measurements),
        }


# ======================================================================================
# Measurements
# ======================================================================================


def _channels_equal(a: np.ndarray) -> bool:
    """True for (H, W) arrays and for (H, W, 3+) arrays whose R, G, B agree (on a sub-grid)."""
    if a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 1):
        return True
    step = max(1, int(math.ceil(max(a.shape[:2]) / 512)))
    sub = a[::step, ::step, :3]
    return bool(np.array_equal(sub[..., 0], sub[..., 1]) and np.array_equal(sub[..., 0], sub[..., 2]))


def layout_grid(gray: np.ndarray) -> np.ndarray:
    """(H, W) uint8 -> standardised 16 x 16 grid (aspect ignored, as the model resizes)."""
    g = cv2.resize(np.ascontiguousarray(gray), (TEMPLATE_SIZE, TEMPLATE_SIZE), interpolation=cv2.INTER_AREA)
    return _standardise(g)


def _corr(grid: np.ndarray) -> float:
    return float((grid * TEMPLATE).sum() / TEMPLATE.size)


def measure(array: np.ndarray, original_rgb: np.ndarray | None = None, settings: GuardSettings | None = None) -> dict:
    """All numbers the hard checks use, as plain floats (JSON-ready).

    ``array``: the canonical image (H, W, 3) uint8 (or (H, W) gray). ``original_rgb``: the
    colour version when the upload had colour (``DecodedImage.original_rgb``); when it is
    None and ``array`` itself has differing channels, ``array`` is used for colour.
    """
    settings = settings or DEFAULT_SETTINGS
    stats_side = settings.stats_side
    a = np.asarray(array)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {a.shape}")
    a = a.astype(np.uint8, copy=False)
    h, w = int(a.shape[0]), int(a.shape[1])
    m: dict[str, float] = {"width": w, "height": h, "min_side": min(w, h), "aspect_ratio": w / h}

    gray_input = _channels_equal(a)
    if gray_input:  # the canonical layout (R == G == B): measure one channel only
        g = shrink_to(np.ascontiguousarray(a if a.ndim == 2 else a[..., 0]), stats_side)
        colour_small = None
    else:
        colour_small = shrink_to(np.ascontiguousarray(a[..., :3]), stats_side)
        g = cv2.cvtColor(colour_small, cv2.COLOR_RGB2GRAY)
    if original_rgb is not None:
        colour_small = shrink_to(np.ascontiguousarray(original_rgb[..., :3], dtype=np.uint8), stats_side)
    if colour_small is not None:
        c = colour_small.astype(np.int16)
        chroma = c.max(axis=2) - c.min(axis=2)
        strong = chroma > settings.colour_pixel_chroma
        m["colour_mean_chroma"] = float(chroma.mean())
        m["colour_fraction"] = float(strong.mean())
    else:
        m["colour_mean_chroma"] = m["colour_fraction"] = 0.0

    hist = np.bincount(g.ravel(), minlength=256).astype(np.float64) / g.size
    nz = hist[hist > 0]
    mode = int(hist.argmax())
    p1, p99 = np.percentile(g, [1, 99])
    m.update(
        gray_mean=float(g.mean()),
        gray_std=float(g.std()),
        entropy_bits=float(-(nz * np.log2(nz)).sum()),
        mode_fraction=float(hist[max(0, mode - 3) : mode + 4].sum()),
        dynamic_range=float(p99 - p1),
    )
    grid = layout_grid(g)
    m["layout_corr"] = _corr(grid)
    m["layout_corr_rot90"] = max(_corr(np.rot90(grid, 1)), _corr(np.rot90(grid, 3)))
    m["upright_score"] = upright_score(grid)
    return m


# ======================================================================================
# Checks
# ======================================================================================


def _check_size(m: dict, s: GuardSettings, min_side: int) -> CheckResult:
    side = int(m["min_side"])
    dims = f"{int(m['width'])} x {int(m['height'])} pixels"
    if side < min_side:
        return CheckResult("size", "fail", "too_small", side, min_side,
                           f"The image is too small ({dims}); the shorter side must be at least {min_side} pixels.")
    if side < s.warn_side:
        return CheckResult("size", "warn", "low_resolution", side, s.warn_side,
                           f"The image is small ({dims}); the model was trained on {s.warn_side} x {s.warn_side} images, "
                           "so fine detail may be missing.")
    return CheckResult("size", "pass", "ok", side, min_side, f"Size {dims}.")


def _check_aspect(m: dict, s: GuardSettings) -> CheckResult:
    r = float(m["aspect_ratio"])
    lo, hi = s.aspect_reject
    if not lo <= r <= hi:
        return CheckResult("aspect_ratio", "fail", "aspect_ratio", round(r, 3), list(s.aspect_reject),
                           f"The image's width/height ratio is {r:.2f}; a chest X-ray lies between {lo:g} and {hi:g}. "
                           "It may be a strip, a banner, a screenshot or a collage, not a single radiograph.")
    lo, hi = s.aspect_warn
    if not lo <= r <= hi:
        return CheckResult("aspect_ratio", "warn", "aspect_unusual", round(r, 3), list(s.aspect_warn),
                           f"Unusual width/height ratio {r:.2f} for a chest X-ray (typical {lo:g} - {hi:g}); "
                           "check that the whole chest is shown and nothing else.")
    return CheckResult("aspect_ratio", "pass", "ok", round(r, 3), list(s.aspect_reject), f"Width/height ratio {r:.2f}.")


def _check_colour(m: dict, s: GuardSettings) -> CheckResult:
    frac = float(m["colour_fraction"])
    pct = 100 * frac
    if frac > s.colour_reject_fraction:
        return CheckResult("color", "fail", "color", round(frac, 4), s.colour_reject_fraction,
                           f"The image is in colour ({pct:.0f} % of it is strongly coloured). An X-ray is grayscale; "
                           "this looks like a photograph or a colour image. Please upload the radiograph itself.")
    if frac > s.colour_warn_fraction:
        return CheckResult("color", "warn", "color_minor", round(frac, 4), s.colour_warn_fraction,
                           f"Part of the image ({pct:.1f} %) is coloured (annotations or markers?); "
                           "it was analysed in grayscale.")
    return CheckResult("color", "pass", "ok", round(frac, 4), s.colour_reject_fraction, "Grayscale.")


def _check_constant(m: dict, s: GuardSettings) -> CheckResult:
    std, ent, mode = float(m["gray_std"]), float(m["entropy_bits"]), float(m["mode_fraction"])
    value = {"gray_std": round(std, 2), "entropy_bits": round(ent, 2), "mode_fraction": round(mode, 3)}
    limit = {"gray_std": s.constant_std, "entropy_bits": s.min_entropy, "mode_fraction": s.max_mode_fraction}
    if std < s.constant_std:
        return CheckResult("constant", "fail", "constant", value, limit,
                           f"The image is nearly uniform (intensity spread {std:.1f} of 255; a chest X-ray has at least "
                           f"{s.constant_std:g}). It may be blank, over- or under-exposed, or a placeholder.")
    if mode > s.max_mode_fraction:
        return CheckResult("constant", "fail", "constant", value, limit,
                           f"{100 * mode:.0f} % of the image is a single flat grey level (a chest X-ray has at most "
                           f"{100 * s.max_mode_fraction:.0f} %): it looks like a document, a drawing or a mostly empty frame.")
    if ent < s.min_entropy:
        return CheckResult("constant", "fail", "constant", value, limit,
                           f"The image uses very few grey levels ({ent:.1f} bits; a chest X-ray has at least "
                           f"{s.min_entropy:g}): it looks like a document, a drawing or a graphic, not a radiograph.")
    if std < s.low_contrast_std:
        return CheckResult("constant", "warn", "low_contrast", value, limit,
                           f"The image has low contrast (intensity spread {std:.1f}; training X-rays have at least "
                           f"{s.low_contrast_std:g}); the result may be less reliable.")
    return CheckResult("constant", "pass", "ok", value, limit, "Enough contrast and grey levels.")


# The advice at the end of a rejection whose one-click fix the app offers (it replaces the advice
# with the button's name there: ui.components.rejection_text).
FIX_ADVICE = {
    "upside_down": "Please turn it by 180 degrees and upload it again.",
    "inverted": "Invert it and analyse it again.",
}


def _check_layout(m: dict, s: GuardSettings) -> CheckResult:
    """Layout, 90/180-degree rotation and polarity.

    Three explanations are compared with the template correlation: the image as uploaded
    (similarity ``c``), inverted (``-c``) and turned by 90 degrees either way (``c90``). An
    X-ray-like layout is then checked for being upside down with the upright score.
    """
    c, c90 = float(m["layout_corr"]), float(m["layout_corr_rot90"])
    u = float(m["upright_score"])
    value = {"layout_corr": round(c, 3), "layout_corr_rot90": round(c90, 3), "upright_score": round(u, 2)}
    if c >= s.layout_reject:
        if u < s.upside_down_reject:
            return CheckResult("layout", "fail", "upside_down", value, s.upside_down_reject,
                               f"The image looks like a chest X-ray turned upside down (upright score {u:.1f}; "
                               f"upright training X-rays score above {s.upside_down_reject:g}, median {s.upright_median:g}). "
                               + FIX_ADVICE["upside_down"])
        if c < s.layout_warn:
            return CheckResult("layout", "warn", "layout_unusual", value, s.layout_warn,
                               f"The image's layout is unusual for a frontal chest X-ray (similarity {c:.2f}; {s.layout_warn_share:g} % "
                               f"of training X-rays score at least {s.layout_warn:g}). Check the view and the cropping.")
        if u < s.upside_down_warn:
            return CheckResult("layout", "warn", "orientation_uncertain", value, s.upside_down_warn,
                               f"Top and bottom of the image are ambiguous (upright score {u:.1f}; {s.upright_warn_share:g} % of training "
                               f"X-rays score above {s.upside_down_warn:g}). Check that the film is upright.")
        return CheckResult("layout", "pass", "ok", value, s.layout_reject, f"Layout similarity {c:.2f}, upright score {u:.1f}.")
    if c90 >= s.rotated_min and c90 >= -c:
        return CheckResult("layout", "fail", "rotated", value, s.rotated_min,
                           f"The image looks like a chest X-ray turned by 90 degrees (similarity {c:.2f} as uploaded, "
                           f"{c90:.2f} when turned). Please upload it upright.")
    if c <= s.inverted_below:
        return CheckResult("layout", "fail", "inverted", value, s.inverted_below,
                           "The image looks inverted (a negative): lungs bright and the spine dark, the opposite of an "
                           f"X-ray (similarity to an average chest X-ray {c:.2f}; inverted {-c:.2f}). "
                           + FIX_ADVICE["inverted"])
    return CheckResult("layout", "fail", "layout", value, s.layout_reject,
                       f"The image does not have the layout of a frontal chest X-ray (similarity to the average "
                       f"training X-ray {c:.2f}; real ones score at least {s.layout_reject:g}). It may be cropped, "
                       "rotated, a different view or body part, or not an X-ray at all.")


def check_modality(info: dict | None) -> CheckResult | None:
    """DICOM Modality: a radiograph is CR or DX (or unstated); None for non-DICOM inputs."""
    dicom = (info or {}).get("dicom")
    if not isinstance(dicom, dict):
        return None
    modality = str(dicom.get("Modality") or "").strip().upper()
    if modality in RADIOGRAPH_MODALITIES:
        return CheckResult("modality", "pass", "ok", modality or "unknown", list(RADIOGRAPH_MODALITIES[:2]),
                           f"DICOM Modality {modality or 'not stated'}.")
    name = _MODALITY_NAMES.get(modality)
    what = f"{modality}, {name}" if name else modality
    return CheckResult("modality", "fail", "not_a_radiograph", modality, list(RADIOGRAPH_MODALITIES[:2]),
                       f"This DICOM file is not a radiograph (Modality {what}); the model only judges chest "
                       "radiographs (Modality CR or DX). No pneumonia verdict is given; turning or inverting "
                       "the image will not change that.")


def check_nonfinite(info: dict | None, settings: GuardSettings = DEFAULT_SETTINGS) -> CheckResult:
    """Share of NaN/+-inf pixels recorded by core.imageio (float TIFF / float DICOM)."""
    info = info or {}
    frac = float(info.get("nonfinite_fraction") or 0.0)
    n = int(info.get("nonfinite_pixels") or 0)
    limit = settings.nonfinite_reject_fraction
    if frac > limit:
        return CheckResult("nonfinite", "fail", "nonfinite", round(frac, 6), limit,
                           f"{100 * frac:.1f} % of the pixels ({n:,}) are not numbers (NaN or infinite): the image data "
                           f"is damaged or incompletely exported (at most {100 * limit:g} % is tolerated). "
                           "No pneumonia verdict is given; please export the image again.")
    if n > 0:
        return CheckResult("nonfinite", "warn", "nonfinite_minor", round(frac, 6), limit,
                           f"{n:,} pixel(s) ({100 * frac:.2g} % of the image) are not numbers (NaN or infinite) "
                           "and are shown black; check the image, the result may be less reliable.")
    return CheckResult("nonfinite", "pass", "ok", 0.0, limit, "Every pixel is a finite number.")


def input_checks(info: dict | None, settings: GuardSettings = DEFAULT_SETTINGS) -> list[CheckResult]:
    """Checks on facts of the decoded file (``DecodedImage.info``): DICOM Modality, NaN/inf pixels."""
    checks = [check_nonfinite(info, settings)]
    mod = check_modality(info)
    return ([mod] if mod is not None else []) + checks


def with_input_checks(g: GuardResult, info: dict | None, settings: GuardSettings = DEFAULT_SETTINGS) -> GuardResult:
    """``g`` with :func:`input_checks` added (idempotent). A failing input check rejects the image
    and is reported first; a warning is added to the message; otherwise ``g`` is kept as it is."""
    names = {c.name for c in g.checks}
    extra = [c for c in input_checks(info, settings) if c.name not in names]
    if not extra:
        return g
    checks = list(g.checks) + extra
    m = dict(g.measurements)
    m.setdefault("nonfinite_fraction", float((info or {}).get("nonfinite_fraction") or 0.0))
    if any(c.status == "fail" for c in extra):
        return combine(checks, m)
    warns = [c for c in extra if c.status == "warn"]
    if not warns or g.status == "rejected":
        return dataclasses.replace(g, checks=checks, measurements=m)
    if g.status == "accepted":
        return GuardResult("warning", warns[0].code, " ".join(c.message for c in warns), checks, measurements=m)
    return dataclasses.replace(g, message=" ".join([g.message] + [c.message for c in warns]), checks=checks,
                               measurements=m)


def suggested_fix(g: "GuardResult | dict | None") -> str | None:
    """The one-click correction for a rejection ("invert" | "rotate180"), or None.

    Offered only when the rejection is the polarity/orientation check alone: if any other check
    also fails (e.g. the learned OOD score of a turned film, the DICOM Modality, colour), the
    correction would not make the image acceptable, so none is offered. For a negative the OOD
    score of the upload itself is expected to be high; its inverse's score was checked already.
    """
    if g is None:
        return None
    d = g if isinstance(g, dict) else {"status": g.status, "code": g.code, "checks": [c.to_dict() for c in g.checks]}
    code = d.get("code")
    if d.get("status") != "rejected" or code not in FIXES:
        return None
    for c in d.get("checks") or []:
        if c.get("status") != "fail" or c.get("code") == code:
            continue
        if code == "inverted" and c.get("name") == "ood":
            continue
        return None
    return FIXES[code]


def check_ood(score: float | None, threshold: float | None, percentile: float | None = None,
              reject_threshold: float | None = None) -> CheckResult:
    """Learned check. ``threshold`` warns, ``reject_threshold`` (>= threshold; None = same) rejects.

    The check's ``limit`` is the reject threshold (the one that withholds a verdict).
    """
    if score is None or threshold is None or not math.isfinite(score):
        return CheckResult("ood", "skipped", "ood_unavailable", None, threshold,
                           "No learned out-of-distribution statistics for this model; only the hard checks ran.")
    reject = float(threshold) if reject_threshold is None else max(float(reject_threshold), float(threshold))
    if score > reject:
        return CheckResult("ood", "fail", "ood", round(float(score), 3), round(reject, 3),
                           "The image does not look like a chest X-ray this model was trained on "
                           f"(out-of-distribution score {score:.1f}, rejection threshold {reject:.1f}"
                           f"{_pct_text(percentile, reject != float(threshold))}). No pneumonia verdict is given.")
    if score > threshold:
        return CheckResult("ood", "warn", "ood_borderline", round(float(score), 3), round(reject, 3),
                           f"Unusual image for this model (out-of-distribution score {score:.1f}: above "
                           f"{threshold:.1f}"
                           + (f", which only {100 - float(percentile):g} % of validation X-rays exceed" if percentile is not None else "")
                           + f", below the rejection threshold {reject:.1f}). Check the heatmap and treat the verdict "
                           "with extra caution.")
    return CheckResult("ood", "pass", "ok", round(float(score), 3), round(reject, 3),
                       f"Out-of-distribution score {score:.1f} (warning above {threshold:.1f}, rejection above {reject:.1f}).")


def _pct_text(percentile: float | None, shifted: bool = False) -> str:
    if percentile is None:
        return ""
    if shifted:
        return (f": only {100 - float(percentile):g} % of validation X-rays score higher even after "
                "simulated changes of exposure, sharpness, noise, compression and framing")
    return f": only {100 - float(percentile):g} % of validation X-rays score higher"


# ======================================================================================
# Public API
# ======================================================================================


def check_image(array: np.ndarray, original_rgb: np.ndarray | None = None, *,
                settings: GuardSettings = DEFAULT_SETTINGS, min_side: int | None = None,
                info: dict | None = None) -> GuardResult:
    """Hard checks only (no model). ``min_side`` raises ``settings.min_side`` (model input size);
    ``info`` (``DecodedImage.info``) adds the DICOM Modality and NaN/inf checks."""
    m = measure(array, original_rgb, settings)
    g = combine(_hard_checks(m, settings, min_side), m)
    return g if info is None else with_input_checks(g, info, settings)


def _hard_checks(m: dict, s: GuardSettings, min_side: int | None) -> list[CheckResult]:
    checks = [
        _check_size(m, s, max(s.min_side, int(min_side or 0))),
        _check_aspect(m, s),
        _check_colour(m, s),
        _check_constant(m, s),
    ]
    checks.append(_check_layout(m, s))
    return checks


def assess(array: np.ndarray, original_rgb: np.ndarray | None = None, *,
           ood_score: float | None = None, ood_threshold: float | None = None,
           inverted_ood_score: float | None = None, ood_percentile: float | None = None,
           ood_reject_threshold: float | None = None,
           settings: GuardSettings = DEFAULT_SETTINGS, min_side: int | None = None) -> GuardResult:
    """Run every check and combine them into one :class:`GuardResult`.

    ``ood_score``/``ood_threshold``: the learned score of this image and the model's stored
    warning threshold (None when the model has no OOD statistics: the check is "skipped");
    ``ood_reject_threshold`` the rejection threshold (None: reject at ``ood_threshold``).
    ``inverted_ood_score``: the learned score of the *inverted* image, when the caller
    computed it for a suspected negative; it confirms (inverse in distribution) or refutes
    (inverse out of distribution too: then reported as "layout", not "inverted") the suspicion.
    The facts of the file (DICOM Modality, NaN/inf pixels) are :func:`with_input_checks`'s, which
    ``Predictor`` applies to every result.
    """
    m = measure(array, original_rgb, settings)
    checks = _hard_checks(m, settings, min_side)
    checks.append(check_ood(ood_score, ood_threshold, ood_percentile, ood_reject_threshold))
    lay = next(c for c in checks if c.name == "layout")
    if lay.code == "inverted" and inverted_ood_score is not None and ood_threshold is not None:
        lay.value["inverted_ood_score"] = round(float(inverted_ood_score), 3)
        if inverted_ood_score > ood_threshold:
            # The negative of this image is no chest X-ray either: not a polarity problem.
            lay.code = "layout"
            lay.message = (
                "The image does not have the layout of a chest X-ray, neither as uploaded nor inverted "
                f"(similarity {m['layout_corr']:.2f}; out-of-distribution score of the inverted image "
                f"{inverted_ood_score:.1f}, threshold {ood_threshold:.1f})."
            )
    m["ood_score"] = None if ood_score is None else float(ood_score)
    m["ood_threshold"] = None if ood_threshold is None else float(ood_threshold)
    m["ood_reject_threshold"] = None if ood_threshold is None else float(
        max(ood_threshold, ood_reject_threshold if ood_reject_threshold is not None else ood_threshold))
    return combine(checks, m)


def combine(checks: list[CheckResult], measurements: dict | None = None) -> GuardResult:
    """Checks -> overall status/code/message (first failure by priority, else warnings)."""
    fails = [c for c in checks if c.status == "fail"]
    warns = [c for c in checks if c.status == "warn"]
    order = {n: i for i, n in enumerate(_PRIORITY)}
    if fails:
        fails.sort(key=lambda c: order.get(c.name, len(order)))
        first = fails[0]
        message = first.message
        others = [c.code for c in fails[1:] if c.code != first.code]
        if others:
            message += f" (Also failed: {', '.join(dict.fromkeys(others))}.)"
        return GuardResult("rejected", first.code, message, checks, measurements=measurements or {})
    if warns:
        return GuardResult("warning", warns[0].code, " ".join(c.message for c in warns), checks,
                           measurements=measurements or {})
    ood = next((c for c in checks if c.name == "ood"), None)
    if ood is not None and ood.status == "skipped":
        return GuardResult("warning", "ood_unavailable", ood.message, checks, measurements=measurements or {})
    return GuardResult("accepted", "ok", CODES["ok"], checks, measurements=measurements or {})


def invert(array: np.ndarray) -> np.ndarray:
    """Photometric inversion of a uint8 image (255 - x)."""
    return (255 - np.asarray(array, dtype=np.uint8)).astype(np.uint8)


__all__ = [
    "CODES",
    "DEFAULT_SETTINGS",
    "STATUSES",
    "CheckResult",
    "GuardResult",
    "GuardSettings",
    "assess",
    "check_image",
    "check_modality",
    "check_nonfinite",
    "check_ood",
    "combine",
    "input_checks",
    "suggested_fix",
    "with_input_checks",
    "invert",
    "layout_grid",
    "measure",
]

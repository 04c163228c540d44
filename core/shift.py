"""Fixed, deterministic acquisition perturbations of X-ray batches (validation-time only).

Used for two things that must not depend on the test split:

- ``benchmarks/shift_validation.py``: a shift-aware validation score for choosing a recipe
  (the plain patient-wise validation split is saturated; see docs/ablation.md);
- ``core.training.calibrate_and_evaluate``: the OOD *reject* threshold is the 99th
  percentile of validation X-rays under these perturbations (``perturb_round_robin``), so
  real films from another machine or exposure land in the warning band, not in rejection.

No recipe trains on them: training augmentation is rotation/shift/zoom/contrast/brightness
(core.model.build_augmenter); these are gamma, blur, noise, JPEG, crop, border, contrast.
All functions take and return (N, s, s, 3) uint8 arrays.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

SEED = 7


def gamma(x, g):
    return (255.0 * (x / 255.0) ** g).round().clip(0, 255).astype(np.uint8)


def blur(x):
    return np.stack([cv2.GaussianBlur(im, (0, 0), 1.0) for im in x])


def noise(x):
    rng = np.random.default_rng(SEED)
    n = rng.normal(0, 10, x.shape[:3])[..., None]  # same noise in the 3 channels (grey film)
    return (x + n).round().clip(0, 255).astype(np.uint8)


def jpeg(x, q=20):
    out = []
    for im in x:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, "JPEG", quality=q)
        out.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    return np.stack(out)


def crop(x, keep=0.8):
    s = x.shape[1]
    m = int(round(s * (1 - keep) / 2))
    return np.stack([cv2.resize(im[m:s - m, m:s - m], (s, s), interpolation=cv2.INTER_AREA) for im in x])


def border(x, frac=0.12):
    s = x.shape[1]
    inner = int(round(s * (1 - 2 * frac)))
    out = np.zeros_like(x)
    o = (s - inner) // 2
    for i, im in enumerate(x):
        out[i, o:o + inner, o:o + inner] = cv2.resize(im, (inner, inner), interpolation=cv2.INTER_AREA)
    return out


def low_contrast(x):
    xf = x.astype(np.float32)
    m = xf.mean(axis=(1, 2, 3), keepdims=True)
    return (m + 0.5 * (xf - m)).round().clip(0, 255).astype(np.uint8)


PERTURBATIONS = {
    "gamma_0.6": lambda x: gamma(x, 0.6),
    "gamma_1.6": lambda x: gamma(x, 1.6),
    "blur_1px": blur,
    "noise_10": noise,
    "jpeg_q20": jpeg,
    "crop_80": crop,
    "border_12": border,
    "contrast_50": low_contrast,
}




def perturb_round_robin(x: np.ndarray) -> np.ndarray:
    """Each image under one perturbation, cycling through :data:`PERTURBATIONS` in order."""
    x = np.asarray(x, dtype=np.uint8)
    out = np.empty_like(x)
    names = list(PERTURBATIONS)
    for k, name in enumerate(names):
        idx = np.arange(k, len(x), len(names))
        if len(idx):
            out[idx] = PERTURBATIONS[name](x[idx])
    return out

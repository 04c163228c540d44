"""Out-of-distribution statistics: Mahalanobis distance of pooled base features.

Fitted at training time on the train split's pooled VGG-19 features (global average of
the base output, 512-d), with a Ledoit-Wolf shrunk covariance (512 dimensions from a few
thousand images is too few for a plain inverse). The threshold is a high percentile of
the *validation* split's scores, so about 1 % of in-distribution images exceed it.

Two thresholds (docs/guard.md):

- ``threshold`` (warning): the percentile of the plain validation scores. Above it the
  image is less typical than 99 % of validation X-rays: the verdict is kept, with a warning.
- ``reject_threshold``: the same percentile of validation X-rays under fixed acquisition
  perturbations (``core.shift.perturb_round_robin``: gamma, blur, noise, JPEG, crop,
  border, contrast), never below ``threshold``. Real films from another machine land
  between the two; above it there is no verdict. Both come from validation only.

Stored with the model as ``ood.npz`` (arrays) + ``ood.json`` (thresholds, percentile).
A model saved before the reject threshold existed rejects at ``threshold``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class OODStats:
    def __init__(self, mean: np.ndarray, precision: np.ndarray, threshold: float, percentile: float, val_scores=None,
                 reject_threshold: float | None = None, shifted_val_scores=None):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.precision = np.asarray(precision, dtype=np.float64)  # inverse shrunk covariance
        self.threshold = float(threshold)
        self.percentile = float(percentile)
        self.reject_threshold = float(threshold if reject_threshold is None else max(reject_threshold, threshold))
        self.val_scores = None if val_scores is None else np.asarray(val_scores, dtype=np.float64)
        self.shifted_val_scores = None if shifted_val_scores is None else np.asarray(shifted_val_scores, dtype=np.float64)

    def score(self, pooled: np.ndarray) -> np.ndarray:
        """sqrt Mahalanobis distance for (N, D) pooled features -> (N,)."""
        d = np.asarray(pooled, dtype=np.float64) - self.mean
        return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", d, self.precision, d), 0.0))

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        np.savez_compressed(directory / "ood.npz", mean=self.mean, precision=self.precision)
        meta = {"threshold": self.threshold, "reject_threshold": self.reject_threshold,
                "percentile": self.percentile, "dim": int(self.mean.shape[0])}
        for key, scores in (("val_score_quantiles", self.val_scores), ("shifted_val_score_quantiles", self.shifted_val_scores)):
            if scores is not None:
                meta[key] = {str(q): float(np.percentile(scores, q)) for q in (50, 90, 95, 99, 100)}
        (directory / "ood.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> "OODStats | None":
        directory = Path(directory)
        if not (directory / "ood.npz").is_file() or not (directory / "ood.json").is_file():
            return None
        arrays = np.load(directory / "ood.npz", allow_pickle=False)
        meta = json.loads((directory / "ood.json").read_text())
        return cls(arrays["mean"], arrays["precision"], meta["threshold"], meta["percentile"],
                   reject_threshold=meta.get("reject_threshold"))


def pool(features: np.ndarray) -> np.ndarray:
    """(N, h, w, C) base features -> (N, C) by global average, float64."""
    f = np.asarray(features, dtype=np.float64)
    return f.mean(axis=(1, 2)) if f.ndim == 4 else f


def fit(train_pooled: np.ndarray, val_pooled: np.ndarray, percentile: float = 99.0,
        shifted_val_pooled: np.ndarray | None = None) -> OODStats:
    """Fit mean/precision on train; thresholds from (plain, perturbed) validation scores."""
    from sklearn.covariance import LedoitWolf

    lw = LedoitWolf().fit(np.asarray(train_pooled, dtype=np.float64))
    stats = OODStats(lw.location_, lw.precision_, 0.0, percentile)
    val_scores = stats.score(val_pooled)
    stats.threshold = float(np.percentile(val_scores, percentile))
    stats.val_scores = val_scores
    stats.reject_threshold = stats.threshold
    if shifted_val_pooled is not None and len(shifted_val_pooled):
        stats.shifted_val_scores = stats.score(shifted_val_pooled)
        stats.reject_threshold = max(stats.threshold, float(np.percentile(stats.shifted_val_scores, percentile)))
    return stats

"""Out-of-distribution statistics: Mahalanobis distance of pooled base features.

Fitted at training time on the train split's pooled VGG-19 features (global average of
the base output, 512-d), with a Ledoit-Wolf shrunk covariance (512 dimensions from a few
thousand images is too few for a plain inverse). The threshold is a high percentile of
the *validation* split's scores, so about 1 % of in-distribution images exceed it.
Stored with the model as ``ood.npz`` (arrays) + ``ood.json`` (threshold, percentile).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class OODStats:
    def __init__(self, mean: np.ndarray, precision: np.ndarray, threshold: float, percentile: float, val_scores=None):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.precision = np.asarray(precision, dtype=np.float64)  # inverse shrunk covariance
        self.threshold = float(threshold)
        self.percentile = float(percentile)
        self.val_scores = None if val_scores is None else np.asarray(val_scores, dtype=np.float64)

    def score(self, pooled: np.ndarray) -> np.ndarray:
        """sqrt Mahalanobis distance for (N, D) pooled features -> (N,)."""
        d = np.asarray(pooled, dtype=np.float64) - self.mean
        return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", d, self.precision, d), 0.0))

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        np.savez_compressed(directory / "ood.npz", mean=self.mean, precision=self.precision)
        meta = {"threshold": self.threshold, "percentile": self.percentile, "dim": int(self.mean.shape[0])}
        if self.val_scores is not None:
            meta["val_score_quantiles"] = {
                str(q): float(np.percentile(self.val_scores, q)) for q in (50, 90, 95, 99, 100)
            }
        (directory / "ood.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> "OODStats | None":
        directory = Path(directory)
        if not (directory / "ood.npz").is_file() or not (directory / "ood.json").is_file():
            return None
        arrays = np.load(directory / "ood.npz", allow_pickle=False)
        meta = json.loads((directory / "ood.json").read_text())
        return cls(arrays["mean"], arrays["precision"], meta["threshold"], meta["percentile"])


def pool(features: np.ndarray) -> np.ndarray:
    """(N, h, w, C) base features -> (N, C) by global average, float64."""
    f = np.asarray(features, dtype=np.float64)
    return f.mean(axis=(1, 2)) if f.ndim == 4 else f


def fit(train_pooled: np.ndarray, val_pooled: np.ndarray, percentile: float = 99.0) -> OODStats:
    from sklearn.covariance import LedoitWolf

    lw = LedoitWolf().fit(np.asarray(train_pooled, dtype=np.float64))
    stats = OODStats(lw.location_, lw.precision_, 0.0, percentile)
    val_scores = stats.score(val_pooled)
    stats.threshold = float(np.percentile(val_scores, percentile))
    stats.val_scores = val_scores
    return stats

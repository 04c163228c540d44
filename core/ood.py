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
import os
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
        """The statistics saved in ``directory``, validated (issue 21: a NaN threshold or a NaN in
        the arrays would switch OOD rejection off without a word).

        None when neither file exists (a model saved before OOD statistics existed). Raises
        ValueError naming the file, the field, what is allowed and what was received (one of the
        two files missing, thresholds not finite numbers >= 0, percentile outside (0, 100],
        arrays of the wrong shape, type or with non-finite values) and
        :class:`core.fsutil.UnsafeFileError` (an OSError) for a file that is a symlink, not a
        regular file or too large. Nothing larger than :data:`MAX_NPZ_BYTES` is inflated."""
        from core.config import check_number
        from core.fsutil import read_json_file

        directory = Path(directory)
        present = [n for n in (NPZ_FILE, JSON_FILE) if os.path.lexists(directory / n)]
        if not present:
            return None
        if len(present) == 1:
            missing = JSON_FILE if present[0] == NPZ_FILE else NPZ_FILE
            raise ValueError(f"{missing} is missing but {present[0]} is there; the two are written together.")
        meta = read_json_file(directory / JSON_FILE)
        try:
            threshold = check_number("threshold", meta.get("threshold"), 0)
            reject = check_number("reject_threshold", meta.get("reject_threshold"), 0, allow_none=True)
            percentile = check_number("percentile", meta.get("percentile"), 0, 100, lo_open=True)
            dim = check_number("dim", meta.get("dim"), 1, MAX_DIM, integer=True, allow_none=True)
        except ValueError as e:
            raise ValueError(f"{JSON_FILE}: {e}") from None
        mean, precision = _read_arrays(directory / NPZ_FILE)
        if dim is not None and dim != mean.shape[0]:
            raise ValueError(f"{JSON_FILE}: dim must equal the length of the mean in {NPZ_FILE} ({mean.shape[0]}). "
                             f"Received: dim={dim!r}")
        return cls(mean, precision, threshold, percentile, reject_threshold=reject)


NPZ_FILE, JSON_FILE = "ood.npz", "ood.json"
MAX_DIM = 2048  # pooled feature width; VGG-19's is 512 (a 2048 x 2048 float64 precision is 32 MB)
MAX_NPZ_BYTES = 64 * 2**20  # the file, and every array it inflates to


def _read_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), precision (D, D)) of ``ood.npz``: a bounded regular file whose arrays are
    checked from their headers (shape, float type) before a byte is inflated, then for finite
    values. ValueError / UnsafeFileError otherwise."""
    import io
    import zipfile

    from core.fsutil import read_regular_bytes

    data = read_regular_bytes(path, MAX_NPZ_BYTES)
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        out = {}
        for key in ("mean", "precision"):
            want = 1 if key == "mean" else 2
            with zf.open(key + ".npy") as fh:  # the header only: shape and type before any data
                version = np.lib.format.read_magic(fh)
                header = {(1, 0): np.lib.format.read_array_header_1_0,
                          (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if header is None:
                    raise ValueError(f"{NPZ_FILE}: {key} has an unknown array format. Received: version {version}")
                shape, _, dtype = header(fh)
            if dtype.kind != "f" or len(shape) != want or not all(0 < n <= MAX_DIM for n in shape):
                raise ValueError(f"{NPZ_FILE}: {key} must be a float array of {want} dimension(s) of at most "
                                 f"{MAX_DIM} each. Received: {key} of type {dtype} and shape {shape}")
            with zf.open(key + ".npy") as fh:  # reads exactly the bytes the checked shape needs
                out[key] = np.asarray(np.lib.format.read_array(fh, allow_pickle=False), dtype=np.float64)
    except KeyError as e:
        raise ValueError(f"{NPZ_FILE} must hold the arrays 'mean' and 'precision'. Received: no {e}") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"{NPZ_FILE} is not a readable NumPy archive ({type(e).__name__}: {str(e)[:120]}).") from None
    mean, precision = out["mean"], out["precision"]
    if precision.shape != (mean.shape[0], mean.shape[0]):
        raise ValueError(f"{NPZ_FILE}: precision must be a square matrix as wide as mean ({mean.shape[0]}). "
                         f"Received: precision of shape {precision.shape}")
    for key, arr in (("mean", mean), ("precision", precision)):
        if not np.isfinite(arr).all():
            raise ValueError(f"{NPZ_FILE}: {key} must hold finite numbers only. Received: "
                             f"{int((~np.isfinite(arr)).sum())} values that are NaN or infinite")
    return mean, precision


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

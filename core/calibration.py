"""Temperature scaling, decision threshold and the indeterminate band.

All three are fitted on the patient-wise validation split (never on test) and stored
with the model as ``operating_point.json``.

Temperature scaling works on the model's logit (``core.model.logit_view``, the score before
the sigmoid): calibrated P = sigmoid(logit / T). Callers that hold only probabilities use the
``*probs`` forms, which recover the logit as log(p / (1 - p)) with p clipped to
[EPS, 1 - EPS], so |logit| <= ~13.8 there (a float32 sigmoid saturates at 1.0 anyway).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from core.config import CLASS_NAMES, check_number

EPS = 1e-6
INDETERMINATE = "INDETERMINATE"


def logit(probs) -> np.ndarray:
    """log(p / (1 - p)) of probabilities clipped to [EPS, 1 - EPS] (|logit| <= ~13.8), float64.

    Only for callers without the model's own logit (``core.model.logit_view``), which is exact."""
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def scale_logits(logits, temperature: float) -> np.ndarray:
    """Calibrated P = sigmoid(logit / T), float64. T > 1 softens over-confident outputs."""
    s = np.asarray(logits, dtype=np.float64) / float(temperature)
    with np.errstate(over="ignore"):  # exp(-s) = inf for s << 0: P = 1 / inf = 0, the right limit
        return 1.0 / (1.0 + np.exp(-s))


def apply_temperature(probs, temperature: float) -> np.ndarray:
    """:func:`scale_logits` for callers holding probabilities (their logit is clipped, see ``logit``)."""
    return scale_logits(logit(probs), temperature)


def fit_temperature(logits, labels) -> float:
    """T minimising the validation negative log-likelihood of sigmoid(logit / T) (Guo et al. 2017).

    ``logits``: the model's logits (N,) (for probabilities: ``fit_temperature(logit(p), y)``)."""
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)

    def nll(log_t: float) -> float:
        s = z / np.exp(log_t)
        # log(1 + exp(-s)) for y=1, log(1 + exp(s)) for y=0, computed stably.
        return float(np.mean(np.logaddexp(0.0, -s) * y + np.logaddexp(0.0, s) * (1 - y)))

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(50.0)), method="bounded")
    return float(np.exp(res.x))


def choose_threshold(probs, labels, policy: str = "sensitivity", target_sensitivity: float = 0.95) -> float:
    """Operating threshold on calibrated probabilities.

    - ``youden``: maximise sensitivity + specificity - 1.
    - ``sensitivity``: the highest threshold whose sensitivity >= target (screening: a
      missed pneumonia costs more than a second look at a normal film), i.e. the best
      specificity among those meeting the target.
    """
    from sklearn.metrics import roc_curve

    y = np.asarray(labels, dtype=int)
    p = np.asarray(probs, dtype=np.float64)
    if len(np.unique(y)) < 2:
        raise ValueError("Choosing a threshold needs both classes in the validation split.")
    fpr, tpr, thr = roc_curve(y, p)
    thr = np.clip(thr, 0.0, 1.0)  # sklearn puts +inf first
    if policy == "youden":
        i = int(np.argmax(tpr - fpr))
    elif policy == "sensitivity":
        ok = np.flatnonzero(tpr >= target_sensitivity)
        i = int(ok[0])  # roc_curve is ordered by decreasing threshold
    else:
        raise ValueError(f"policy must be one of ('youden', 'sensitivity'). Received: policy={policy!r}")
    return float(thr[i])


@dataclasses.dataclass
class OperatingPoint:
    temperature: float = 1.0
    threshold: float = 0.5
    band_low: float = 0.4  # calibrated P in [band_low, band_high] -> INDETERMINATE (refer)
    band_high: float = 0.6
    policy: str = "sensitivity"
    target_sensitivity: float = 0.95
    fitted_on: str = "validation"
    validation: dict = dataclasses.field(default_factory=dict)  # metrics at the threshold

    def calibrate_logits(self, logits) -> np.ndarray:
        """Calibrated P(PNEUMONIA) from the model's logits (what serving uses)."""
        return scale_logits(logits, self.temperature)

    def calibrate(self, probs) -> np.ndarray:
        """Calibrated P(PNEUMONIA) from raw probabilities (logit clipped, see ``logit``)."""
        return apply_temperature(probs, self.temperature)

    def decide(self, calibrated_prob: float) -> str:
        """NORMAL / PNEUMONIA / INDETERMINATE for one calibrated probability."""
        if self.band_low <= calibrated_prob <= self.band_high:
            return INDETERMINATE
        return CLASS_NAMES[1] if calibrated_prob >= self.threshold else CLASS_NAMES[0]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> "OperatingPoint":
        """Refuse values no fitted operating point has (issue 21: ``operating_point.json`` is input).

        A NaN threshold and band made every film NORMAL, 1e308 the same, a negative temperature
        inverted every probability, a string raised a TypeError at the first prediction.
        ValueError, keras-hub style (allowed values, ``Received: x=...``)."""
        check_number("temperature", self.temperature, 0, None, lo_open=True)
        for name in ("threshold", "band_low", "band_high"):
            check_number(name, getattr(self, name), 0, 1)
        if not self.band_low <= self.threshold <= self.band_high:
            raise ValueError("The indeterminate band must contain the threshold (band_low <= threshold <= band_high). "
                             f"Received: band_low={self.band_low!r}, threshold={self.threshold!r}, "
                             f"band_high={self.band_high!r}")
        check_number("target_sensitivity", self.target_sensitivity, 0, 1)
        for name in ("policy", "fitted_on"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string. Received: {name}={getattr(self, name)!r}")
        if not isinstance(self.validation, dict):
            raise ValueError(f"validation must be a JSON object of metrics. Received: validation={self.validation!r}")
        return self

    @classmethod
    def from_dict(cls, d: dict) -> "OperatingPoint":
        """An operating point from its JSON form, validated (:meth:`validate`; ValueError)."""
        if not isinstance(d, dict):
            raise ValueError(f"An operating point must be a JSON object. Received: a JSON {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known}).validate()

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path) -> "OperatingPoint":
        """Read ``operating_point.json`` as a bounded regular file (no symlink, no FIFO, no NaN
        literal; :func:`core.fsutil.read_json_file`) and validate it. Raises
        :class:`core.fsutil.UnsafeFileError` (an OSError), FileNotFoundError or ValueError."""
        from core.fsutil import read_json_file

        return cls.from_dict(read_json_file(path))


def fit_operating_point(
    val_probs, val_labels, policy: str = "sensitivity", target_sensitivity: float = 0.95, margin: float = 0.1,
    *, val_logits=None,
) -> OperatingPoint:
    """Temperature, threshold and band from validation predictions.

    ``val_probs``: the raw model outputs (N,); ``val_logits``: the model's logits for the same
    images (``core.model.logit_view``), used instead when given (exact where a probability's
    logit is clipped); then ``val_probs`` may be None.
    """
    from core.evaluation import rates

    if val_logits is None and val_probs is None:
        raise ValueError("fit_operating_point needs the validation probabilities or logits. "
                         "Received: val_probs=None, val_logits=None")
    z = logit(val_probs) if val_logits is None else np.asarray(val_logits, dtype=np.float64).reshape(-1)
    t = fit_temperature(z, val_labels)
    cal = scale_logits(z, t)
    thr = choose_threshold(cal, val_labels, policy, target_sensitivity)
    y = np.asarray(val_labels, dtype=int)
    r = rates(y, (cal >= thr).astype(int))
    low, high = max(0.0, thr - margin), min(1.0, thr + margin)
    in_band = (cal >= low) & (cal <= high)
    return OperatingPoint(
        temperature=t,
        threshold=thr,
        band_low=low,
        band_high=high,
        policy=policy,
        target_sensitivity=target_sensitivity,
        validation={
            "n": int(len(y)),
            "sensitivity": r["sensitivity"],
            "specificity": r["specificity"],
            "indeterminate_fraction": float(in_band.mean()),
            "nll_before": _nll(scale_logits(z, 1.0) if val_probs is None else val_probs, y),
            "nll_after": _nll(cal, y),
        },
    )


def _nll(p, y) -> float:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    y = np.asarray(y, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))

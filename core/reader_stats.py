"""Reader-study statistics: the three arms' sensitivity and specificity with Wilson 95 % CIs.

No hand-written statistics here: the Wilson score interval is scipy's
(``binomtest(k, n).proportion_ci(method="wilson")``), the confusion matrix scikit-learn's
(``confusion_matrix(labels=[0, 1])``) and sensitivity / specificity come from
:func:`core.evaluation.rates`, the one definition evaluation and calibration use too.

:func:`results` summarises a :class:`core.reader_study.Study`'s closed cases: the reader alone
(first reads), the model alone at its stored threshold and reader + AI (the revised read, else
the first read); how often the read changed after the AI was shown and whether each change was
right; the model's ROC on the same films with the reader's operating points; time per case.
**Model alone: INDETERMINATE (and REJECTED, which has no verdict) counts as positive** -- the
model says "refer", which is not a negative call.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from core.config import CLASS_NAMES

if TYPE_CHECKING:  # the study's state lives in core.reader_study, which never imports this module
    from core.reader_study import Study

READS = tuple(CLASS_NAMES)  # ("NORMAL", "PNEUMONIA"): index = the 0/1 label
ARM_LABELS = {"reader": "Reader alone", "model": "Model alone", "reader_ai": "Reader + AI"}
MODEL_RULE = "Model alone at its stored threshold; INDETERMINATE (and REJECTED) count as positive = refer."


def wilson_ci(k: int, n: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval (low, high) for ``k`` successes out of ``n`` (None when n == 0).

    scipy's ``proportion_ci(method="wilson")``; the bounds are clipped to [0, 1] (for k == 0
    and k == n the closed form lands on 0 and 1 up to rounding)."""
    if n <= 0:
        return None
    from scipy.stats import binomtest  # lazy: scipy.stats costs ~0.3 s to import

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return max(0.0, float(ci.low)), min(1.0, float(ci.high))


def confusion(truth: Sequence[int], called: Sequence[int]) -> list[list[int]]:
    """2x2 counts as plain ints, rows = true [NORMAL, PNEUMONIA], columns = called
    (scikit-learn's layout); all zeros for no cases (scikit-learn refuses empty input)."""
    if len(truth) == 0:
        return [[0, 0], [0, 0]]
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(truth, called, labels=[0, 1]).tolist()


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else value


def rates(truth: Sequence[int], called: Sequence[int]) -> dict:
    """Sensitivity, specificity (Wilson 95 % CIs), accuracy, confusion matrix and the number
    of cases. A rate whose class is absent is None (core.evaluation.rates says NaN)."""
    from core.evaluation import rates as point_rates

    cm = confusion(truth, called)
    (tn, fp), (fn, tp) = cm
    pos, neg = tp + fn, tn + fp
    point = point_rates(truth, called) if pos + neg else {"sensitivity": math.nan, "specificity": math.nan}
    return {
        "n": pos + neg,
        "confusion_matrix": cm,
        "sensitivity": _none_if_nan(point["sensitivity"]),
        "sensitivity_ci95": wilson_ci(tp, pos),
        "specificity": _none_if_nan(point["specificity"]),
        "specificity_ci95": wilson_ci(tn, neg),
        "accuracy": (tp + tn) / (pos + neg) if pos + neg else None,
    }


def _changes(study: "Study", cases: list) -> dict:
    """Reads changed after the AI was shown, and whether each change was right."""
    changes = [{
        "case": i + 1, "truth": c.truth, "from": c.first_read, "to": c.revised_read, "ai": c.ai_label,
        "toward_ai": (c.revised_read == "PNEUMONIA") == bool(c.ai_positive),
        "right": c.revised_read == c.truth,
    } for i, c in enumerate(study.cases) if c.done and c.changed]
    agreed = sum((c.first_read == "PNEUMONIA") == bool(c.ai_positive) for c in cases)
    return {
        "n_changed": len(changes),
        "rate": len(changes) / len(cases) if cases else None,
        "n_right": sum(ch["right"] for ch in changes),  # wrong -> right (the AI helped)
        "n_wrong": sum(not ch["right"] for ch in changes),  # right -> wrong (the AI misled)
        "n_toward_ai": sum(ch["toward_ai"] for ch in changes),
        "n_first_agreed_with_ai": agreed,
        "n_first_disagreed_with_ai": len(cases) - agreed,
        "cases": changes,
    }


def _roc(y: list[int], cases: list) -> dict | None:
    """The model's ROC on the study's closed cases (None without a probability for each, or
    without both classes)."""
    probs = [c.ai_probability for c in cases]
    if not cases or not all(p is not None and math.isfinite(p) for p in probs) or len(set(y)) != 2:
        return None
    from sklearn import metrics as skm

    fpr, tpr, thr = skm.roc_curve(y, probs)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": np.clip(thr, 0, 1).tolist(),
            "auc": float(skm.roc_auc_score(y, probs))}


def results(study: "Study") -> dict:
    """Metrics of the closed cases (a paused study gives the results so far)."""
    cases = [c for c in study.cases if c.done]
    y = [READS.index(c.truth) for c in cases]
    arms = {
        "reader": rates(y, [READS.index(c.first_read) for c in cases]),
        "model": rates(y, [int(bool(c.ai_positive)) for c in cases]),
        "reader_ai": rates(y, [READS.index(c.final_read) for c in cases]),
    }
    secs = [c.total_seconds for c in cases if c.total_seconds is not None]
    reads = [c.read_seconds for c in cases if c.read_seconds is not None]
    out: dict[str, Any] = {
        "n_cases": len(cases),
        "n_planned": len(study.cases),
        "arms": arms,
        "model_rule": MODEL_RULE,
        "changes": _changes(study, cases),
        "roc": _roc(y, cases),
        # Each arm's point on the model's ROC: (false-positive rate, sensitivity).
        "operating_points": {
            arm: None if r["specificity"] is None or r["sensitivity"] is None else (1 - r["specificity"], r["sensitivity"])
            for arm, r in arms.items()
        },
        "time": {
            "median_read_s": float(np.median(reads)) if reads else None,
            "median_case_s": float(np.median(secs)) if secs else None,
            "total_s": float(sum(secs)) if secs else None,
        },
    }
    return out


__all__ = ["ARM_LABELS", "MODEL_RULE", "confusion", "rates", "results", "wilson_ci"]

"""Evaluation with scikit-learn: point metrics, curves, bootstrap 95 % CIs, misclassified files.

Everything returned is plain JSON (``metrics.json`` next to the model) so the app can read
it without TensorFlow, and the per-file probabilities let the dashboard move the
threshold live.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn import metrics as skm

from core.config import CLASS_NAMES


def rates(y, pred) -> dict[str, float]:
    """{"sensitivity", "specificity"} of 0/1 predictions ``pred`` against labels ``y`` (NaN when
    a class is absent). Evaluation, calibration and the reader study (core.reader_stats.rates,
    which adds the counts and Wilson intervals) use it."""
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    sens = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    return {"sensitivity": float(sens), "specificity": float(spec)}


def threshold_metrics(y_true, probs, threshold: float) -> dict:
    """Metrics that depend on the threshold (used live by the dashboard slider)."""
    y = np.asarray(y_true, dtype=int)
    pred = (np.asarray(probs) >= threshold).astype(int)
    cm = skm.confusion_matrix(y, pred, labels=[0, 1])
    out = {
        "threshold": float(threshold),
        "accuracy": float(skm.accuracy_score(y, pred)),
        "precision": float(skm.precision_score(y, pred, zero_division=0)),
        "recall": float(skm.recall_score(y, pred, zero_division=0)),
        "f1": float(skm.f1_score(y, pred, zero_division=0)),
        "confusion_matrix": cm.tolist(),  # rows = true [NORMAL, PNEUMONIA], cols = predicted
    }
    out.update(rates(y, pred))
    return out


def _point_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    pred = (p >= threshold).astype(int)
    r = rates(y, pred)
    return {
        "accuracy": float(skm.accuracy_score(y, pred)),
        "sensitivity": r["sensitivity"],
        "specificity": r["specificity"],
        "precision": float(skm.precision_score(y, pred, zero_division=0)),
        "f1": float(skm.f1_score(y, pred, zero_division=0)),
        "roc_auc": float(skm.roc_auc_score(y, p)),
        "pr_auc": float(skm.average_precision_score(y, p)),
    }


def _fast_point_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """``_point_metrics`` in plain numpy (same values, ~50x faster): the bootstrap calls it
    a thousand times per split, and scikit-learn's input checks dominated (~7 s per split).

    ROC-AUC is the Mann-Whitney statistic with average ranks for ties (what
    ``roc_auc_score`` computes); average precision follows ``average_precision_score``:
    sum over distinct score thresholds of (recall step) x precision.
    """
    from scipy.stats import rankdata

    y = y.astype(bool)
    n1 = int(y.sum())
    n0 = len(y) - n1
    pred = p >= threshold
    tp = int(np.count_nonzero(pred & y))
    fp = int(np.count_nonzero(pred & ~y))
    fn, tn = n1 - tp, n0 - fp
    auc = (rankdata(p)[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)
    order = np.argsort(-p, kind="mergesort")
    ps, ys = p[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(ps)), len(ps) - 1]  # end of each run of tied scores
    tps = np.cumsum(ys)[last]
    precision_k = tps / (last + 1)
    recall_k = tps / n1
    ap = float(np.sum(np.diff(np.r_[0.0, recall_k]) * precision_k))
    prec = tp / (tp + fp) if tp + fp else 0.0
    sens = tp / n1 if n1 else float("nan")
    return {
        "accuracy": (tp + tn) / len(y),
        "sensitivity": float(sens),
        "specificity": float(tn / n0) if n0 else float("nan"),
        "precision": float(prec),
        "f1": float(2 * tp / (2 * tp + fp + fn)) if tp else 0.0,
        "roc_auc": float(auc),
        "pr_auc": ap,
    }


def bootstrap_ci(y, p, threshold: float, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Percentile bootstrap CIs; resamples missing a class are skipped (AUC undefined)."""
    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=np.float64)
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {}
    n = len(y)
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        yb = y[idx]
        if yb.min() == yb.max():
            continue
        for k, v in _fast_point_metrics(yb, p[idx], threshold).items():
            samples.setdefault(k, []).append(v)
    return {
        k: [float(np.nanpercentile(v, 100 * alpha / 2)), float(np.nanpercentile(v, 100 * (1 - alpha / 2)))]
        for k, v in samples.items()
    }


def _downsample(*arrays: np.ndarray, max_points: int = 400) -> list[list[float]]:
    n = len(arrays[0])
    idx = np.unique(np.linspace(0, n - 1, min(n, max_points)).astype(int)) if n else np.array([], int)
    return [np.asarray(a)[idx].astype(float).tolist() for a in arrays]


def portable_path(path: str | Path, data_root: str | Path | None) -> str:
    """``path`` relative to ``data_root`` as a POSIX string when it lies under it, else as given."""
    if data_root is None:
        return str(path)
    try:
        rel = Path(path).resolve().relative_to(Path(data_root).resolve())
    except (ValueError, OSError):
        return str(path)
    return rel.as_posix()


def evaluate(
    y_true,
    probs,
    threshold: float,
    paths: list[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    split: str = "test",
    data_root: str | Path | None = None,
) -> dict:
    """Full report for calibrated probabilities ``probs`` at ``threshold``.

    With ``data_root``, the per-image ``paths`` are recorded relative to it
    (``test/NORMAL/x.jpeg``), so the report stays usable on another machine: readers resolve
    them against their own configured data root (``ui.loaders.resolve_eval_path``).
    """
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(probs, dtype=np.float64)
    if len(y) == 0:
        raise ValueError("Cannot evaluate on an empty split.")
    if len(np.unique(y)) < 2:
        raise ValueError(f"Evaluation needs both classes; split {split!r} has only {CLASS_NAMES[int(y[0])]}.")
    pred = (p >= threshold).astype(int)
    report = skm.classification_report(
        y, pred, labels=[0, 1], target_names=list(CLASS_NAMES), output_dict=True, zero_division=0
    )
    per_class = {
        name: {k: float(report[name][k]) for k in ("precision", "recall", "f1-score", "support")}
        for name in CLASS_NAMES
    }
    fpr, tpr, roc_thr = skm.roc_curve(y, p)
    prec, rec, pr_thr = skm.precision_recall_curve(y, p)
    roc_thr = np.clip(roc_thr, 0, 1)
    pr_thr = np.append(pr_thr, 1.0)  # align lengths with prec/rec
    out = {
        "split": split,
        "n": int(len(y)),
        "threshold": float(threshold),
        **_point_metrics(y, p, threshold),
        "per_class": per_class,
        "confusion_matrix": skm.confusion_matrix(y, pred, labels=[0, 1]).tolist(),
        "confusion_matrix_labels": list(CLASS_NAMES),
        "ci95": bootstrap_ci(y, p, threshold, n_boot=n_boot, seed=seed),
        "n_bootstrap": int(n_boot),
        "roc_curve": dict(zip(("fpr", "tpr", "thresholds"), _downsample(fpr, tpr, roc_thr))),
        "pr_curve": dict(zip(("precision", "recall", "thresholds"), _downsample(prec, rec, pr_thr))),
    }
    if paths is not None:
        paths = [portable_path(pa, data_root) for pa in paths]
        out["predictions"] = [
            {"path": str(pa), "label": int(yy), "prob": float(pp)} for pa, yy, pp in zip(paths, y, p)
        ]
        out["misclassified"] = [
            {"path": str(pa), "label": CLASS_NAMES[int(yy)], "prob": float(pp)}
            for pa, yy, pp, pr in zip(paths, y, p, pred)
            if int(pr) != int(yy)
        ]
    return out


# --- comparing two versions (the admin page and the evaluation page show this one table) --------
PERCENT_METRICS = ("accuracy", "sensitivity", "specificity", "precision", "threshold")
COMPARE_METRICS = (
    ("accuracy", "Accuracy"), ("sensitivity", "Sensitivity"), ("specificity", "Specificity"),
    ("precision", "Precision (PPV)"), ("f1", "F1"), ("roc_auc", "ROC-AUC"), ("pr_auc", "PR-AUC"),
    ("threshold", "Threshold"), ("n", "Images"),
)


def report_split(metrics: dict | None) -> tuple[dict | None, str]:
    """(report, split) of a ``metrics.json`` dict: the test split, else validation, else (None, "")."""
    for split in ("test", "validation"):
        if (metrics or {}).get(split):
            return metrics[split], split
    return None, ""


NOT_COMPARABLE = "not comparable"


def image_keys(report: dict | None) -> frozenset[str] | None:
    """The images a split report was computed on, as ``split/CLASS/file`` keys (the part of a path
    that is the same on every machine); None when the report does not list every image."""
    preds = (report or {}).get("predictions")
    if not isinstance(preds, list) or not preds:
        return None
    keys = set()
    for p in preds:
        path = p.get("path") if isinstance(p, dict) else None
        if not isinstance(path, str) or not path:
            return None
        keys.add("/".join(path.replace("\\", "/").split("/")[-3:]))
    n = report.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n != len(preds):
        return None  # not the whole list
    return frozenset(keys)


def _class_counts(report: dict) -> tuple | None:
    cm = report.get("confusion_matrix")
    try:
        return tuple(int(sum(row)) for row in cm)
    except (TypeError, ValueError):
        return None


def _n(report: dict | None) -> int | None:
    n = (report or {}).get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def eval_set_relation(report_a: dict | None, report_b: dict | None, label_a: str = "A", label_b: str = "B",
                      split_a: str = "test", split_b: str = "test") -> dict:
    """Were two versions' figures computed on the same images? (issue 22: a 624-image test split
    and an 80-image subset were compared as if they were one test set.)

    Returns ``{"comparable", "relation", "n": (n_a, n_b), "shared", "text"}``. ``relation`` is
    ``same`` (the same images), ``same_size`` (the reports do not list their images; same size
    and class counts: taken as the same, and said so), ``subset`` (B's images are a part of A's),
    ``superset``, ``overlap``, ``disjoint``, ``different_size`` (no image lists, other sizes),
    ``different_split`` (test vs validation) or ``missing`` (a report is absent). Only ``same``
    and ``same_size`` are comparable. ``text`` says it in one sentence with both sizes.
    """
    na, nb = _n(report_a), _n(report_b)
    out = {"comparable": False, "n": (na, nb), "shared": None}

    def size(n, split):
        return f"{n if n is not None else 'an unknown number of'} {split} images"

    if not report_a or not report_b:
        missing = label_a if not report_a else label_b
        return {**out, "relation": "missing", "text": f"{missing} has no evaluation report."}
    if split_a != split_b:
        return {**out, "relation": "different_split",
                "text": f"{label_a} is reported on {size(na, split_a)} and {label_b} on {size(nb, split_b)}: "
                        "different images, so the figures are not comparable."}
    ka, kb = image_keys(report_a), image_keys(report_b)
    if ka is not None and kb is not None:
        shared = len(ka & kb)
        out["shared"] = shared
        if ka == kb:
            return {**out, "comparable": True, "relation": "same",
                    "text": f"Both were evaluated on the same {len(ka)} {split_a} images."}
        if kb < ka:
            rel, text = "subset", (f"{label_b} was evaluated on {size(nb, split_b)}, only a part of the {na} that "
                                   f"{label_a} was evaluated on")
        elif ka < kb:
            rel, text = "superset", (f"{label_a} was evaluated on {size(na, split_a)}, only a part of the {nb} that "
                                     f"{label_b} was evaluated on")
        elif shared:
            rel, text = "overlap", (f"{label_a} was evaluated on {size(na, split_a)} and {label_b} on {nb} partly "
                                    f"different ones ({shared} shared)")
        else:
            rel, text = "disjoint", (f"{label_a} was evaluated on {size(na, split_a)} and {label_b} on {nb} "
                                     "entirely different ones")
        return {**out, "relation": rel, "text": text + ": the figures are not comparable."}
    if na is not None and na == nb and _class_counts(report_a) == _class_counts(report_b):
        return {**out, "comparable": True, "relation": "same_size",
                "text": f"Both were evaluated on {na} {split_a} images with the same class counts (the reports "
                        "do not list their images, so that they are the same images is assumed, not checked)."}
    return {**out, "relation": "different_size",
            "text": f"{label_a} was evaluated on {size(na, split_a)} and {label_b} on {size(nb, split_b)} (or other "
                    "class counts): different test sets, so the figures are not comparable."}


def compare_reports(metrics_a: dict | None, metrics_b: dict | None, label_a: str, label_b: str,
                    card_a: dict | None = None, card_b: dict | None = None) -> dict:
    """Side-by-side table of two versions' ``metrics.json`` (and ``card.json``) as text cells.

    Each version is read on its test split, else its validation split. Returns
    ``{"rows": [{"metric", label_a, label_b, "difference"}], "confusion": {label_a: cm | None,
    label_b: cm | None}, "split": "test" | "validation" | "test / validation", "splits": (split of a,
    split of b), "labels": (a, b), "same_split": bool, "test_set": eval_set_relation(...), "comparable": bool}``;
    the two labels are made distinct when equal. Rates and the threshold are in percent with
    differences in points (core.formatting), other scores decimals. When the two were not
    evaluated on the same images (:func:`eval_set_relation`), no metric difference is given: the
    cell says ``not comparable`` (the image counts and the threshold keep theirs).
    """
    from core.formatting import counts, duration, num, pct, pts

    label_b = label_b if label_b != label_a else f"{label_b} (2)"
    (sa, split_a), (sb, split_b) = report_split(metrics_a), report_split(metrics_b)
    sa, sb = sa or {}, sb or {}
    splits = [s for s in dict.fromkeys((split_a, split_b)) if s]
    split = " / ".join(splits) or "test"
    rows = []
    if card_a is not None or card_b is not None:
        ca, cb = card_a or {}, card_b or {}
        for label, get in (
            ("Created", lambda c: str(c.get("created", ""))),
            ("Weights", lambda c: str(c.get("weights_source", ""))),
            ("Input size (px)", lambda c: str(c.get("input_size", ""))),
            ("Training data", lambda c: counts(c.get("counts"))),
            ("Feedback images (training)", lambda c: str(c.get("feedback_images", 0))),
            ("Wall time", lambda c: duration(c.get("wall_time_s"))),
        ):
            rows.append({"metric": label, label_a: get(ca), label_b: get(cb), "difference": ""})
    relation = eval_set_relation(sa, sb, label_a, label_b, split_a or "test", split_b or "test")
    for key, label in COMPARE_METRICS:
        va, vb = sa.get(key), sb.get(key)
        diff = (vb - va) if isinstance(va, (int, float)) and isinstance(vb, (int, float)) else None
        # Scores on different images are not comparable; the image counts and the threshold (fitted
        # on the validation split, not on these images) keep their difference.
        if diff is not None and key not in ("n", "threshold") and not relation["comparable"]:
            cells = (pct(va) if key in PERCENT_METRICS else num(va), pct(vb) if key in PERCENT_METRICS else num(vb),
                     NOT_COMPARABLE)
        elif key in PERCENT_METRICS:  # rates and the threshold: percent, like everywhere else
            cells = (pct(va), pct(vb), "" if diff is None else pts(diff))
        else:
            digits = 0 if key == "n" else 3
            cells = (num(va, digits), num(vb, digits), "" if diff is None else f"{diff:+.{digits}f}")
        rows.append({"metric": f"{label} ({split})", label_a: cells[0], label_b: cells[1], "difference": cells[2]})
    return {"rows": rows, "confusion": {label_a: sa.get("confusion_matrix"), label_b: sb.get("confusion_matrix")},
            "split": split, "splits": (split_a, split_b), "labels": (label_a, label_b), "same_split": len(splits) < 2,
            "test_set": relation, "comparable": relation["comparable"]}

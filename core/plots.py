"""Static figures (PNG) of an evaluation report: seaborn + matplotlib, Agg backend.

``python -m core evaluate --plots DIR`` writes them; the interactive pages keep plotly
(ui/charts.py). Inputs are the plain dicts of ``core.evaluation.evaluate`` (a split report)
and of a version's ``history.json``; nothing here needs TensorFlow or Streamlit.

Files: ``confusion_matrix.png`` (seaborn heatmap, counts and row percentages),
``roc_curve.png``, ``pr_curve.png`` (with the stored operating point) and
``training_curves.png`` (loss and ROC-AUC per epoch, both phases), 100 dpi.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from core.config import CLASS_NAMES
from core.formatting import pct

DPI = 100
TRAIN_COLOR, VAL_COLOR, CURVE_COLOR = "#1f77b4", "#d62728", "#2c6e9b"


def _pyplot():
    """matplotlib.pyplot on the Agg backend (no display; safe in a server or a CI job)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buf.getvalue()


def confusion_matrix_png(cm, labels=CLASS_NAMES, title: str = "Confusion matrix") -> bytes:
    """Seaborn heatmap of ``[[tn, fp], [fn, tp]]`` (rows = true class): count and row percent per
    cell, coloured by the row percentage so that the two classes are comparable."""
    import seaborn as sns

    plt = _pyplot()
    cm = np.asarray(cm, dtype=float)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    text = np.array([[f"{int(cm[i, j])}\n{pct(share[i, j])}" for j in range(cm.shape[1])] for i in range(cm.shape[0])])
    fig, ax = plt.subplots(figsize=(4.6, 3.8))
    sns.heatmap(100 * share, annot=text, fmt="", cmap="Blues", vmin=0, vmax=100, cbar_kws={"label": "% of the true class"},
                xticklabels=list(labels), yticklabels=list(labels), linewidths=0.5, linecolor="white", ax=ax,
                annot_kws={"fontsize": 11})
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _png(fig)


def roc_curve_png(curve: dict, auc: float | None = None, point: tuple[float, float] | None = None) -> bytes:
    """ROC curve from a report's ``roc_curve`` ({"fpr", "tpr"}); ``point`` = (1 - specificity, sensitivity)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot(curve.get("fpr") or [], curve.get("tpr") or [], color=CURVE_COLOR, lw=2,
            label="ROC" + (f" (AUC {auc:.3f})" if auc is not None else ""))
    ax.plot([0, 1], [0, 1], ls="--", color="#999", lw=1, label="chance")
    if point is not None:
        ax.plot(*point, marker="X", ms=10, color=VAL_COLOR, ls="none", label="stored operating point")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate (1 - specificity)",
           ylabel="true positive rate (sensitivity)", title="ROC curve")
    ax.legend(loc="lower right", fontsize=9)
    ax.grid(alpha=0.3)
    return _png(fig)


def pr_curve_png(curve: dict, ap: float | None = None, point: tuple[float, float] | None = None,
                 prevalence: float | None = None) -> bytes:
    """Precision-recall curve from a report's ``pr_curve`` ({"precision", "recall"}); ``point`` = (recall, precision)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot(curve.get("recall") or [], curve.get("precision") or [], color=CURVE_COLOR, lw=2,
            label="PR" + (f" (AP {ap:.3f})" if ap is not None else ""))
    if prevalence is not None:
        ax.axhline(prevalence, ls="--", color="#999", lw=1, label=f"chance ({pct(prevalence)} positives)")
    if point is not None:
        ax.plot(*point, marker="X", ms=10, color=VAL_COLOR, ls="none", label="stored operating point")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall (sensitivity)", ylabel="precision (PPV)",
           title="Precision-recall curve")
    ax.legend(loc="lower left", fontsize=9)
    ax.grid(alpha=0.3)
    return _png(fig)


def training_curves_png(hist: dict) -> bytes | None:
    """Loss and ROC-AUC per epoch (train and validation, head then fine-tuning, boundary
    dashed) from ``history.json``; None when no epochs are recorded."""
    head, fine = hist.get("head") or {}, hist.get("finetune") or {}
    if not head.get("loss") and not fine.get("loss"):
        return None
    plt = _pyplot()
    boundary = int(hist.get("phase_boundary_epoch") or len(head.get("loss", [])))
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.8), sharex=True)
    for ax, key, title in ((axes[0], "loss", "Loss"), (axes[1], "auc", "ROC-AUC")):
        for prefix, color, label in (("", TRAIN_COLOR, "train"), ("val_", VAL_COLOR, "validation")):
            h, f = list(head.get(prefix + key, [])), list(fine.get(prefix + key, []))
            if not h and not f:
                continue
            xs = list(range(1, len(h) + 1)) + list(range(boundary + 1, boundary + 1 + len(f)))
            ax.plot(xs, h + f, marker="o", ms=3, lw=1.5, color=color, label=label)
        if head.get("loss") and fine.get("loss"):
            ax.axvline(boundary + 0.5, ls="--", color="#666", lw=1)
        ax.set(title=title, xlabel="epoch (head, then fine-tuning)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=9)
    return _png(fig)


def write_evaluation_plots(report: dict, out_dir: str | Path, history: dict | None = None) -> list[Path]:
    """Write the figures of one split report (and of ``history`` when given) into ``out_dir``
    (created if needed). Returns the written paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sens, spec, prec = report.get("sensitivity"), report.get("specificity"), report.get("precision")
    threshold = report.get("threshold")
    title = f"Confusion matrix ({report.get('split', '')}" + (f", threshold {pct(threshold)})" if threshold is not None else ")")
    labels = report.get("per_class") and list(report["per_class"]) or list(CLASS_NAMES)
    y = [p.get("label") for p in report.get("predictions") or []]
    prevalence = float(np.mean(y)) if y else None
    figures = {
        "confusion_matrix.png": confusion_matrix_png(report["confusion_matrix"], labels, title),
        "roc_curve.png": roc_curve_png(report.get("roc_curve") or {}, report.get("roc_auc"),
                                       (1 - spec, sens) if sens is not None and spec is not None else None),
        "pr_curve.png": pr_curve_png(report.get("pr_curve") or {}, report.get("pr_auc"),
                                     (sens, prec) if sens is not None and prec is not None else None, prevalence),
    }
    if history:
        curves = training_curves_png(history)
        if curves is not None:
            figures["training_curves.png"] = curves
    paths = []
    for name, data in figures.items():
        path = out / name
        path.write_bytes(data)
        paths.append(path)
    return paths

"""Plotly figures used by the pages (pure functions: data in, figure out)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

CLASS_COLORS = {"NORMAL": "#2e7d5b", "PNEUMONIA": "#c0392b"}
TRAIN_COLOR, VAL_COLOR = "#1f5f99", "#e67e22"
_LAYOUT = dict(margin=dict(l=10, r=10, t=40, b=10), template="plotly_white")


def counts_bar(counts: dict[str, dict[str, int]]) -> go.Figure:
    """Grouped bars: images per split, one bar per class (imbalance visible)."""
    splits = list(counts)
    fig = go.Figure()
    for cls, color in CLASS_COLORS.items():
        ys = [counts[s].get(cls, 0) for s in splits]
        fig.add_bar(name=cls, x=splits, y=ys, marker_color=color, text=ys, textposition="outside")
    ratios = []
    for s in splits:
        n, p = counts[s].get("NORMAL", 0), counts[s].get("PNEUMONIA", 0)
        ratios.append(f"{s}: {p / n:.1f} pneumonia per normal" if n else f"{s}: no NORMAL images")
    fig.update_layout(
        barmode="group",
        title="Images per split and class",
        xaxis_title="split",
        yaxis_title="images",
        legend_title="class",
        height=360,
        **_LAYOUT,
    )
    fig.add_annotation(text=" | ".join(ratios), xref="paper", yref="paper", x=0, y=1.06, showarrow=False, font=dict(size=11, color="#555"), xanchor="left")
    return fig


def confusion_matrix(cm, labels=("NORMAL", "PNEUMONIA"), title: str = "Confusion matrix") -> go.Figure:
    """Heatmap with counts and row percentages (rows = true class).

    Cell text is short ("376 / 96.4 %") and the axis labels break over two lines, so the
    cells stay readable in a half-width column at 1024 px and nothing spills into the next
    cell; the hover and the axis title say what the percentage is of.
    """
    cm = np.asarray(cm, dtype=float)
    row = cm.sum(axis=1, keepdims=True)
    pct = np.divide(cm, row, out=np.zeros_like(cm), where=row > 0) * 100
    text = [[f"<b>{int(cm[i, j])}</b><br>{pct[i, j]:.1f} %" for j in range(cm.shape[1])] for i in range(cm.shape[0])]
    hover = [[f"{int(cm[i, j])} images: {pct[i, j]:.1f} % of true {labels[i]}" for j in range(cm.shape[1])] for i in range(cm.shape[0])]
    fig = go.Figure(
        go.Heatmap(
            z=pct,
            x=[f"predicted<br>{c}" for c in labels],
            y=[f"true<br>{c}" for c in labels],
            text=text,
            customdata=hover,
            texttemplate="%{text}",
            textfont=dict(size=14),
            colorscale="Blues",
            zmin=0,
            zmax=100,
            showscale=False,
            hovertemplate="%{customdata}<extra></extra>",
        )
    )
    # Never turned: in a narrow column Plotly rotates the tick labels by 90 degrees (unreadable);
    # the pages give each matrix at least ~300 px instead.
    fig.update_yaxes(autorange="reversed", tickfont=dict(size=12), tickangle=0)
    fig.update_xaxes(tickfont=dict(size=12), tickangle=0, title=dict(text="% of the true class (row)", font=dict(size=11, color="#555")))
    fig.update_layout(title=dict(text=title, font=dict(size=15)), height=340, **_LAYOUT)
    return fig


# Axis range of the unit square with room for a marker on its edge: an operating point at
# x = 1 or y = 1 (a reader who calls every film positive) was half cut off at range [0, 1].
UNIT_RANGE = [-0.04, 1.04]


def operating_marker(fig: go.Figure, point: tuple[float, float], name: str, **marker) -> None:
    """One marker trace, never clipped at the plot's edge (cliponaxis off, padded axes)."""
    fig.add_scatter(x=[point[0]], y=[point[1]], mode="markers", name=name, marker=marker, cliponaxis=False)


def roc_curve(curve: dict, auc: float | None, point: tuple[float, float] | None = None) -> go.Figure:
    fig = go.Figure()
    fig.add_scatter(x=curve.get("fpr", []), y=curve.get("tpr", []), mode="lines", name="ROC", line=dict(color=TRAIN_COLOR, width=2))
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line=dict(color="#999", dash="dot"))
    if point is not None:
        operating_marker(fig, point, "operating point", size=11, color="#c0392b", symbol="x")
    title = "ROC curve" + (f" (AUC {auc:.3f})" if auc is not None else "")
    fig.update_layout(title=title, xaxis_title="1 - specificity (false-positive rate)", yaxis_title="sensitivity (true-positive rate)", height=380, legend=dict(x=0.55, y=0.08), **_LAYOUT)
    fig.update_xaxes(range=UNIT_RANGE, tickvals=[0, 0.2, 0.4, 0.6, 0.8, 1], tickangle=0)
    fig.update_yaxes(range=UNIT_RANGE, tickvals=[0, 0.2, 0.4, 0.6, 0.8, 1], tickangle=0)
    return fig


def pr_curve(curve: dict, ap: float | None, point: tuple[float, float] | None = None) -> go.Figure:
    fig = go.Figure()
    fig.add_scatter(x=curve.get("recall", []), y=curve.get("precision", []), mode="lines", name="PR", line=dict(color=VAL_COLOR, width=2))
    if point is not None:
        operating_marker(fig, point, "operating point", size=11, color="#c0392b", symbol="x")
    title = "Precision-recall curve" + (f" (AP {ap:.3f})" if ap is not None else "")
    fig.update_layout(title=title, xaxis_title="recall (sensitivity)", yaxis_title="precision (PPV)", height=380, legend=dict(x=0.02, y=0.08), **_LAYOUT)
    fig.update_xaxes(range=UNIT_RANGE, tickvals=[0, 0.2, 0.4, 0.6, 0.8, 1], tickangle=0)
    fig.update_yaxes(range=UNIT_RANGE, tickvals=[0, 0.2, 0.4, 0.6, 0.8, 1], tickangle=0)
    return fig


def history(hist: dict) -> go.Figure | None:
    """Loss and AUC per epoch, train and validation, both phases, boundary marked."""
    head, fine = hist.get("head") or {}, hist.get("finetune") or {}
    n_head = len(head.get("loss", []))
    n_fine = len(fine.get("loss", []))
    if not n_head and not n_fine:
        return None
    # One epoch axis for both panels: the loss and AUC series can differ in length (a metric
    # missing in some epochs), and independent autoranges then disagree (78 vs 66 epochs).
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "ROC-AUC"), shared_xaxes="all")
    boundary = int(hist.get("phase_boundary_epoch") or n_head)  # last epoch of phase 1
    n_epochs = boundary + n_fine if n_fine else n_head
    for col, key in ((1, "loss"), (2, "auc")):
        for prefix, color, label in (("", TRAIN_COLOR, "train"), ("val_", VAL_COLOR, "validation")):
            h_ys, f_ys = list(head.get(prefix + key, [])), list(fine.get(prefix + key, []))
            if not h_ys and not f_ys:
                continue
            # Epoch numbers, not list positions: phase 2 starts after the phase boundary in both panels.
            xs = list(range(1, len(h_ys) + 1)) + list(range(boundary + 1, boundary + 1 + len(f_ys)))
            n_epochs = max(n_epochs, max(xs))
            fig.add_scatter(x=xs, y=h_ys + f_ys, mode="lines+markers", name=label, line=dict(color=color), legendgroup=label, showlegend=col == 1, row=1, col=col)
    if n_head and n_fine:
        b = boundary + 0.5
        for col in (1, 2):
            fig.add_vline(x=b, line=dict(color="#666", dash="dash"), row=1, col=col)
        fig.add_annotation(x=b, y=1.0, xref="x", yref="paper", text="fine-tuning starts", showarrow=False, xanchor="left", font=dict(size=11, color="#555"))
    fig.update_xaxes(title_text="epoch (head, then fine-tuning)", dtick=max(1, n_epochs // 10), range=[0.5, n_epochs + 0.5],
                     matches="x")
    fig.update_layout(height=360, **_LAYOUT)
    return fig


def intensity_histogram(gray: np.ndarray) -> go.Figure:
    g = np.asarray(gray)
    if g.ndim == 3:
        g = g[..., 0]
    counts = np.bincount(g.ravel().astype(np.uint8), minlength=256)
    fig = go.Figure(go.Bar(x=np.arange(256), y=counts, marker_color="#5a6f86", marker_line_width=0))
    fig.update_layout(title="Intensity histogram", xaxis_title="pixel value (0 = black, 255 = white)", yaxis_title="pixels", bargap=0, height=280, **_LAYOUT)
    return fig


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    return f"rgba({int(h[0:2], 16)}, {int(h[2:4], 16)}, {int(h[4:6], 16)}, {alpha})"


def size_scatter(df) -> go.Figure:
    """Width vs height, one bubble per (size, class), bubble area ~ number of images.

    Bubbles are rings with a faint fill: where both classes share a size (every 224 x 224 image
    of the shared copy) both rings stay visible, the smaller inside the larger (a filled
    PNEUMONIA bubble hid the NORMAL one)."""
    fig = go.Figure()
    g = df.groupby(["width", "height", "label"]).size().reset_index(name="n")
    biggest = max(int(g["n"].max()), 1) if len(g) else 1
    for cls, color in CLASS_COLORS.items():
        d = g[g["label"] == cls]
        if len(d):
            fig.add_scatter(
                x=d["width"], y=d["height"], mode="markers", name=cls, customdata=d["n"], cliponaxis=False,
                marker=dict(color=_rgba(color, 0.12), size=d["n"], sizemode="area", sizeref=2.0 * biggest / 40**2, sizemin=6,
                            line=dict(width=2, color=color)),
                hovertemplate="%{x} x %{y} px: %{customdata} images<extra>" + cls + "</extra>",
            )
    fig.update_layout(title="Image sizes (bubble area = images)", xaxis_title="width (px)", yaxis_title="height (px)", height=400, **_LAYOUT)
    return fig

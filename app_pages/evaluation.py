"""Evaluation dashboard of a registry version: metrics with CIs, curves, history, threshold."""

from __future__ import annotations

import math

import pandas as pd
import streamlit as st

from core.evaluation import compare_reports, report_split, threshold_metrics
from core.formatting import num, pct, pts
from core.imageio import ImageError
from core.registry import RegistryError
from ui import charts, compare_view, components, explain_view, loaders
from ui.text import MAX_MESSAGE, md, md_code, plain


CARDS = (
    ("accuracy", "Accuracy", True),
    ("sensitivity", "Sensitivity (recall)", True),
    ("specificity", "Specificity", True),
    ("precision", "Precision (PPV)", True),
    ("f1", "F1 score", False),
    ("roc_auc", "ROC-AUC", False),
)
GALLERY_PAGE = 8  # images per page of the misclassified gallery
# A gallery card's width: a wrapping row of fixed-width cards (2 across at 1024 px, 3 at 1440 px).
# Four columns made ~97 px images, names broken mid-word and a "Feed / back" button at 1024 px;
# 240 px leaves 206 px inside the border, room for the dataset's longest file name (202 px).
GALLERY_CARD_WIDTH = 240
GALLERY_KINDS = {
    "fn": ("False negatives", "missed pneumonia: true PNEUMONIA, predicted NORMAL"),
    "fp": ("False positives", "false alarms: true NORMAL, predicted PNEUMONIA"),
}


def version_ui(names: list[str], active: str | None, label: str, key: str, exclude: str | None = None) -> str | None:
    options = [n for n in names if n != exclude]
    if not options:
        return None
    default = options.index(active) if active in options else len(options) - 1
    return st.selectbox(label, options, index=default, key=key, format_func=lambda n: f"{plain(n)} (active)" if n == active else plain(n))


def report_of(version: str) -> tuple[dict | None, str]:
    """(report, split) from metrics.json: test, else validation, else (None, '')."""
    return report_split(loaders.metrics(version))


def cards(report: dict) -> None:
    ci = report.get("ci95") or {}
    for row in (CARDS[:3], CARDS[3:]):
        for col, (key, label, as_pct) in zip(st.columns(3), row):
            with col:
                components.metric_card(label, (pct if as_pct else num)(report.get(key)), tuple(ci[key]) if key in ci else None, as_pct)
    st.caption(f"95 % confidence intervals from {md(report.get('n_bootstrap', 'n/a'))} bootstrap resamples of the {md(report.get('n', '?'))} {md(report.get('split', ''))} images.")


def per_class_table(report: dict) -> pd.DataFrame:
    rows = []
    for cls, d in (report.get("per_class") or {}).items():
        rows.append({"Class": md(cls), "Precision": d.get("precision"), "Recall": d.get("recall"), "F1": d.get("f1-score"), "Support": int(d.get("support", 0))})
    return pd.DataFrame(rows)


def overview(report: dict) -> None:
    cards(report)
    # Side by side where there is room, one under the other in a narrow window: two fixed
    # columns squeezed the confusion matrix into a strip at 1024 px.
    row = st.container(horizontal=True, wrap=True, gap="large")
    with row, st.container(width=440):
        st.plotly_chart(charts.confusion_matrix(report["confusion_matrix"], title=f"Confusion matrix at threshold {pct(report.get('threshold'))}"), width="stretch", key="ev_cm")
    with row, st.container(width=380):
        st.markdown("**Per-class metrics**")
        table = per_class_table(report)
        for k in ("Precision", "Recall", "F1"):
            if k in table:
                table[k] = table[k].map(lambda v: num(v))
        st.table(table, hide_index=True)
        st.caption("Recall of PNEUMONIA is the sensitivity; recall of NORMAL is the specificity. Support = number of test images of that class.")


def curves(report: dict) -> None:
    sens, spec, prec = report.get("sensitivity"), report.get("specificity"), report.get("precision")
    c1, c2 = st.columns(2, gap="large")
    roc_pt = (1 - spec, sens) if sens is not None and spec is not None else None
    c1.plotly_chart(charts.roc_curve(report.get("roc_curve") or {}, report.get("roc_auc"), roc_pt), width="stretch", key="ev_roc")
    pr_pt = (sens, prec) if sens is not None and prec is not None else None
    c2.plotly_chart(charts.pr_curve(report.get("pr_curve") or {}, report.get("pr_auc"), pr_pt), width="stretch", key="ev_pr")
    st.caption("The cross marks the model's stored operating point (threshold chosen on validation data, never on test).")


def training(version: str) -> None:
    hist = loaders.history(version)
    fig = charts.history(hist)
    if fig is None:
        st.info("No training history is stored with this version.")
        return
    st.plotly_chart(fig, width="stretch", key="ev_hist")
    head_best, fine_best = hist.get("head_best_epoch"), hist.get("finetune_best_epoch")
    notes = []
    if head_best is not None:
        notes.append(f"phase 1 (head only, base frozen): best epoch {head_best}")
    if fine_best is not None:
        notes.append("phase 2 (fine-tuning): " + ("phase-1 weights were kept" if fine_best == 0 else f"best epoch {fine_best}"))
    if notes:
        st.caption("Weights kept at the best validation AUC — " + "; ".join(notes) + ".")


def threshold_ui(report: dict) -> None:
    preds = report.get("predictions") or []
    if not preds:
        st.info("This report has no per-image probabilities, so the threshold cannot be explored.")
        return
    stored = float(report.get("threshold", 0.5))
    # In percent like every probability in the app. Starts at the stored threshold itself (not
    # a rounded copy), so the explorer's first figures equal the cards above.
    value = st.slider("Decision threshold (calibrated probability, %)", 0.0, 100.0, min(max(100 * stored, 0.0), 100.0), 0.1,
                      format="%.1f %%", key="ev_thr", help=f"Stored threshold: {pct(stored)}")
    thr = value / 100
    at_stored = math.isclose(thr, stored, rel_tol=0, abs_tol=1e-12)
    thr = stored if at_stored else thr
    y = [int(p["label"]) for p in preds]
    probs = [float(p["prob"]) for p in preds]
    now = threshold_metrics(y, probs, thr)
    ref = now if at_stored else threshold_metrics(y, probs, stored)
    cols = [c for _ in range(2) for c in st.columns(2)]  # 2 x 2: four in a row cut "25.0 %" at 1024 px
    for col, (key, label) in zip(cols, (("sensitivity", "Sensitivity"), ("specificity", "Specificity"), ("precision", "Precision"), ("accuracy", "Accuracy"))):
        delta = now[key] - ref[key]
        col.metric(label, pct(now[key]), f"{pts(delta)} vs stored" if abs(delta) > 1e-9 else None, border=True)
    left, right = st.columns([3, 2], gap="large")
    left.plotly_chart(charts.confusion_matrix(now["confusion_matrix"], title=f"Confusion matrix at threshold {pct(thr)}"), width="stretch", key="ev_thr_cm")
    with right:
        (tn, fp), (fn, tp) = now["confusion_matrix"]
        st.markdown(
            f"At **{pct(thr)}**, of {tp + fn} children with pneumonia **{fn} would be missed**, and "
            f"**{fp}** of {tn + fp} normal films would be flagged for a second look."
        )
        split_name = md(report.get("split", ""))
        st.caption(f"Computed live from the {len(preds)} stored {split_name} probabilities. The deployed model keeps its stored threshold ({pct(stored)}); change it only by retraining.")


def split_misclassified(report: dict) -> dict[str, list[dict]]:
    """{"fn": false negatives, "fp": false positives}, each sorted most confident error first
    (a missed pneumonia with the lowest probability, a false alarm with the highest)."""
    mis = report.get("misclassified") or []
    fns = [m for m in mis if m.get("label") == "PNEUMONIA"]
    fps = [m for m in mis if m.get("label") != "PNEUMONIA"]
    return {"fn": sorted(fns, key=lambda d: float(d.get("prob", 0))),
            "fp": sorted(fps, key=lambda d: -float(d.get("prob", 0)))}


def gallery(version: str, report: dict) -> None:
    groups = split_misclassified(report)
    total = sum(len(v) for v in groups.values())
    if not total:
        st.success("No misclassified images in this report." if "misclassified" in report else "This report does not list misclassified images.")
        return
    by_name = {v[0]: k for k, v in GALLERY_KINDS.items()}
    choice = st.radio(
        f"Show ({len(groups['fn'])} false negatives, {len(groups['fp'])} false positives)", list(by_name), index=0,
        horizontal=True, key="ev_mis_kind",
        help="False negatives matter most clinically: a missed pneumonia goes untreated.",
    )
    kind = by_name.get(choice, "fn")
    items = groups[kind]
    name, what = GALLERY_KINDS[kind]
    if not items:
        st.success(f"No {name.lower()} ({what}) in this report.")
        return
    n_pages = max(1, math.ceil(len(items) / GALLERY_PAGE))
    page_no = st.pagination(n_pages, key=f"ev_mis_page-{version}-{kind}") if n_pages > 1 else 1
    start = (page_no - 1) * GALLERY_PAGE
    shown = items[start : start + GALLERY_PAGE]
    st.caption(
        f"{name} — {what}: {start + 1}–{start + len(shown)} of {len(items)} (page {page_no} of {n_pages}), "
        f"most confident error first. {total} misclassified {md(report.get('split', ''))} images in all; "
        "false negatives matter most clinically."
    )
    show_cam = st.toggle("Show heatmaps for these images", key="ev_cam", help="Loads this model version and computes a PNEUMONIA heatmap per image (takes a few seconds).")
    cam_method = None
    if show_cam:
        default = loaders.explain_default(version)
        cam_method = explain_view.method_ui(default, key="ev_cam_method")
    prov_root = (loaders.provenance(version) or {}).get("data_root")
    roots = (prov_root,) if prov_root else ()
    grid = st.container(horizontal=True, wrap=True, gap="small")
    for i, item in enumerate(shown):
        with grid, st.container(border=True, width=GALLERY_CARD_WIDTH):
            kind_label = "False negative" if item["label"] == "PNEUMONIA" else "False positive"
            st.markdown(f"**{kind_label}** · true {md(item['label'])}")
            path = loaders.resolve_eval_path(item["path"], roots)
            fname = item["path"].replace("\\", "/").rsplit("/", 1)[-1]
            if path is None:
                st.info(f"{md_code(fname)} is not on this machine (data folder {md_code(loaders.data_root())}).", icon=":material/image_not_supported:")
            else:
                try:
                    if show_cam:
                        img, hm, _, label = loaders.heatmap_for_file(loaders.registry_root(), version, str(path), cam_method)
                        ov = explain_view.overlay_arrays(img, hm)
                        if ov is None:
                            st.image(img, width="stretch")
                            st.caption(f"{md(label)}: flat map — no region raised the pneumonia score.")
                        else:
                            st.image(ov, width="stretch")
                            st.caption(f"{md(label)} · red = raised the pneumonia score")
                    else:
                        st.image(loaders.thumbnail(str(path)), width="stretch")
                except ImageError as e:
                    st.warning(f"{md_code(fname)}: {md(e, MAX_MESSAGE)}")
                except RegistryError as e:
                    st.warning(md(e, MAX_MESSAGE))
            st.caption(f"{md(fname)} · P(pneumonia) {pct(item['prob'])}")
            from ui import feedback_view

            feedback_view.gallery_feedback(version, item, path, report.get("threshold"), key=f"ev-{version}-{kind}-{start + i}")


def compare(names: list[str], active: str | None, version: str) -> None:
    other = version_ui(names, active, "Compare with", "ev_other", exclude=version)
    if other is None:
        st.info("Only one version is in the registry; train another one to compare.")
        return
    if report_of(other)[0] is None:
        st.warning(f"{md_code(other)} has no evaluation report.")
        return
    result = compare_reports(loaders.metrics(version), loaders.metrics(other), version, other,
                             loaders.card(version), loaders.card(other))
    compare_view.render(result, key="ev_cmp")


# --- page ------------------------------------------------------------------------------------
st.title("Model evaluation")
active = components.active_version()
all_versions = loaders.versions()
if not all_versions:
    components.no_model_notice()
    st.stop()
names = [v.name for v in all_versions]
top_l, top_r = st.columns([2, 3])
with top_l:
    version = version_ui(names, active, "Model version", "ev_version")
report, split = report_of(version)
card = loaders.card(version)
with top_r:
    st.markdown(" ")
    st.caption(
        f"Created {md(str(card.get('created', 'n/a'))[:16].replace('T', ' '))} · input {md(card.get('input_size', '?'))} px · "
        f"weights {md(card.get('weights_source', 'n/a'))} · threshold {pct(card.get('threshold'))}"
    )
if report is None:
    st.warning(f"{md_code(version)} has no evaluation report (metrics.json is missing or empty).")
    st.stop()
if split == "validation":
    st.warning("**No test-split report for this version — showing VALIDATION metrics.** The threshold was chosen on this split, so these numbers are optimistic.", icon=":material/info:")
else:
    st.caption(f"Held-out **test** split: {md(report.get('n', '?'))} images the model never trained on.")

# Short tab labels: the longer ones did not fit a 1024 px window ("Compa>").
t_over, t_curves, t_train, t_thr, t_mis, t_cmp = st.tabs(["Overview", "ROC & PR", "History", "Threshold", "Misclassified", "Compare"])
with t_over:
    overview(report)
with t_curves:
    curves(report)
with t_train:
    training(version)
with t_thr:
    threshold_ui(report)
with t_mis:
    gallery(version, report)
with t_cmp:
    compare(names, active, version)

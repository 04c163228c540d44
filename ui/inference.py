"""Prediction orchestration for the Predict page: one batch -> Predictions + audit lines.

Uploaded files are handled as bytes only (``UploadedFile.getvalue()``); nothing is written
to disk. Results live in ``st.session_state`` for the current batch, so moving a slider
does not re-run the model or write a second audit line.
"""

from __future__ import annotations

import logging

import streamlit as st

from core import audit
from core.predict import DISPLAY_MAX_SIDE
from ui import explain_view

log = logging.getLogger(__name__)

_STATE_KEY = "predict_batch"
__all__ = ["DISPLAY_MAX_SIDE", "apply_fix", "cached_batch", "ensure_heatmap", "run_batch"]


def run_batch(predictor, items: list[tuple[str, bytes]], source: str) -> list:
    """Predict every (name, bytes) item (errors become ok=False predictions) and audit each.

    The model's default heatmap comes out of the same compiled pass as the probability (about
    0.6x the bare throughput for a batch), so every image gets it up front; other methods are
    computed on request (ensure_heatmap).
    """
    preds = predictor.predict_bytes(items, with_gradcam=True)
    for p in preds:
        _audit(predictor, p, source)
    return preds


def _audit(predictor, p, source: str) -> None:
    """One "predict" audit line for prediction ``p`` (hash of the bytes, never the image):
    the same core function as ``python -m core predict``."""
    audit.prediction(p, source, model_version=predictor.version, threshold=predictor.op.threshold)


def cached_batch(predictor, batch_key: tuple, items_fn, source: str) -> tuple[list, int]:
    """(predictions, batch id) for ``batch_key`` (version + file ids); computed once per batch.

    The batch id changes with every new batch, so widget keys derived from it start fresh.
    Only the current batch is kept in the session, and each Prediction holds a display copy
    (<= 1024 px) and its exact model input, never the full-resolution array.
    """
    key = (predictor.version, batch_key)
    state = st.session_state.get(_STATE_KEY)
    if state is None or state["key"] != key:
        with st.spinner("Analysing..."):
            preds = run_batch(predictor, items_fn(), source)
        batch_id = (state["id"] + 1) if state else 1
        state = {"key": key, "preds": preds, "id": batch_id}
        st.session_state[_STATE_KEY] = state
    return state["preds"], state["id"]


def apply_fix(predictor, index: int, fix: str, items_fn, source: str) -> None:
    """Analyse item ``index`` of the current batch again with ``fix`` ("invert" | "rotate180")
    and replace its result in place (the upload itself is untouched; one audit line)."""
    if fix not in ("invert", "rotate180"):
        raise ValueError(f"fix must be 'invert' or 'rotate180'. Received: fix={fix!r}")
    state = st.session_state.get(_STATE_KEY)
    if state is None or not 0 <= index < len(state["preds"]):
        return
    name, data = items_fn()[index]
    p = predictor.predict_bytes([(name, data)], with_gradcam=True, invert=fix == "invert", rotate180=fix == "rotate180")[0]
    _audit(predictor, p, f"{source}+{fix}")
    state["preds"][index] = p


def ensure_heatmap(predictor, pred, method: str | None = None) -> None:
    """Make ``pred.heatmap`` the map of ``method`` (default: the model's stored default), in place.

    Maps already computed for this prediction are kept per method (occlusion takes seconds),
    so switching back and forth does not recompute them. A failure leaves the verdict
    standing without a heatmap.
    """
    if not pred.ok or pred.image is None:
        return
    try:
        method, layer = predictor.map_spec(method)
    except ValueError:
        log.warning("Unknown heatmap method %r; using the model default", method)
        method, layer = predictor.map_spec(None)
    explain_view.note_grid(predictor, method, layer)  # how coarse the map is, for its caption
    cache = pred.maps
    if pred.heatmap is not None and pred.heatmap_method:
        cache.setdefault((pred.heatmap_method, pred.heatmap_layer), pred.heatmap)
    if (method, layer) in cache:
        pred.heatmap, pred.heatmap_method, pred.heatmap_layer = cache[(method, layer)], method, layer
        return
    x = pred.model_input
    if x is None:
        from core.imageio import resize_for_model

        x = resize_for_model(pred.image, predictor.size)
    try:
        with st.spinner(f"Computing {explain_view.method_label(method)}..."):
            heat, method, layer = predictor.explain(x, method, layer)
        pred.heatmap, pred.heatmap_method, pred.heatmap_layer = heat, method, layer
        cache[(method, layer)] = heat
    except Exception:  # noqa: BLE001 - the verdict stands without a heatmap
        log.exception("Heatmap (%s) failed for %s", method, pred.filename)

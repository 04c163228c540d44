"""Prediction orchestration for the Predict page: one batch -> Predictions + audit lines.

Uploaded files are handled as bytes only (``UploadedFile.getvalue()``); nothing is written
to disk. Results live in ``st.session_state`` for the current batch, so moving a slider
does not re-run the model or write a second audit line. Every map is computed by the core
(``Predictor.explain_prediction``); this module only keeps the ones already computed, in
the session, keyed by the file's SHA-256, the method and the layer (:func:`map_key`).
"""

from __future__ import annotations

import dataclasses
import logging

import streamlit as st

from core import audit
from core.predict import DISPLAY_MAX_SIDE, Prediction
from ui import explain_view

log = logging.getLogger(__name__)

_STATE_KEY = "predict_batch"
_MAPS_KEY = "predict_maps"
MAPS_KEPT = 64  # maps kept in the session (64 x 64 float32 each at the shipped size: ~1 MB in all)
__all__ = ["DISPLAY_MAX_SIDE", "apply_fix", "cached_batch", "map_key", "run_batch", "with_method"]


def run_batch(predictor, items: list[tuple[str, bytes]], source: str) -> list:
    """Predict every (name, bytes) item (errors become ok=False predictions) and audit each.

    The model's default heatmap comes out of the same compiled pass as the probability (about
    0.6x the bare throughput for a batch), so every image gets it up front; other methods are
    computed on request (with_method).
    """
    preds = predictor.predict_bytes(items, with_map=True)
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
    p = predictor.predict_bytes([(name, data)], with_map=True, invert=fix == "invert", rotate180=fix == "rotate180")[0]
    _audit(predictor, p, f"{source}+{fix}")
    state["preds"][index] = p


def map_key(pred: Prediction, method: str, layer: str | None) -> tuple:
    """The session key of ``pred``'s map of ``method`` at ``layer``: (SHA-256 of the file bytes,
    method, layer), plus what makes the same bytes a different model input (the model version,
    an inversion or a 180-degree turn applied before analysis)."""
    info = pred.info or {}
    return (pred.sha256, method, layer, pred.model_version, info.get("inverted_for_analysis"),
            info.get("rotated_for_analysis"))


def with_method(predictor, pred: Prediction, method: str | None = None) -> Prediction:
    """``pred`` showing the map of ``method`` (default: the model's stored default).

    Maps already computed in this session are reused (occlusion takes seconds), so switching
    back and forth does not recompute them. A failure leaves the verdict standing: ``pred``
    comes back as it was (its caption names the map it does show).
    """
    if not pred.ok or pred.image is None or not pred.sha256:
        return pred
    try:
        method, layer = predictor.map_spec(method)
    except ValueError:
        log.exception("Heatmap method %r refused for %s", method, pred.filename)
        return pred
    explain_view.note_grid(predictor, method, layer)  # how coarse the map is, for its caption
    cache = st.session_state.setdefault(_MAPS_KEY, {})
    if pred.heatmap is not None and pred.heatmap_method:
        cache.setdefault(map_key(pred, pred.heatmap_method, pred.heatmap_layer), pred.heatmap)
    key = map_key(pred, method, layer)
    if key in cache:
        return dataclasses.replace(pred, heatmap=cache[key], heatmap_method=method, heatmap_layer=layer)
    try:
        with st.spinner(f"Computing {explain_view.method_label(method)}..."):
            shown = predictor.explain_prediction(pred, method, layer)
    except Exception:  # noqa: BLE001 - the verdict stands without this map
        log.exception("Heatmap (%s) failed for %s", method, pred.filename)
        return pred
    cache[key] = shown.heatmap
    while len(cache) > MAPS_KEPT:  # oldest first (dicts keep insertion order)
        cache.pop(next(iter(cache)))
    return shown

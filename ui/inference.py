"""Prediction orchestration for the Predict page: one batch -> Predictions + audit lines.

Uploaded files are handled as bytes only (``UploadedFile.getvalue()``); nothing is written
to disk. Results live in ``st.session_state`` for the current batch, so moving a slider
does not re-run the model or write a second audit line.
"""

from __future__ import annotations

import logging

import numpy as np
import streamlit as st

from core import audit

log = logging.getLogger(__name__)

_STATE_KEY = "predict_batch"
# Images are kept in the session for display at most this large (a 50-megapixel DICOM would
# otherwise hold ~150 MB per image); the exact model input is kept separately for Grad-CAM.
DISPLAY_MAX_SIDE = 1536


def run_batch(predictor, items: list[tuple[str, bytes]], source: str) -> list:
    """Predict every (name, bytes) item (errors become ok=False predictions) and audit each.

    Grad-CAM is computed up front for a single image, lazily (ensure_heatmap) for batches.
    """
    preds = predictor.predict_bytes(items, with_gradcam=len(items) == 1)
    for p in preds:
        _audit(predictor, p, source)
    return preds


def _audit(predictor, p, source: str) -> None:
    """One "predict" audit line for prediction ``p`` (hash of the bytes, never the image)."""
    audit.append(
        "predict",
        model_version=p.model_version or predictor.version,
        threshold=p.threshold if p.threshold is not None else predictor.op.threshold,
        outcome=p.label if p.ok else p.error_code,
        image_sha256=p.sha256,
        guard=p.guard_code,
        source=source,
    )


def cached_batch(predictor, batch_key: tuple, items_fn, source: str) -> tuple[list, int]:
    """(predictions, batch id) for ``batch_key`` (version + file ids); computed once per batch.

    The batch id changes with every new batch, so widget keys derived from it start fresh.
    """
    key = (predictor.version, batch_key)
    state = st.session_state.get(_STATE_KEY)
    if state is None or state["key"] != key:
        with st.spinner("Analysing..."):
            preds = run_batch(predictor, items_fn(), source)
        inputs = [_shrink_for_session(predictor, p) for p in preds]
        batch_id = (state["id"] + 1) if state else 1
        state = {"key": key, "preds": preds, "inputs": inputs, "id": batch_id}
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
    state["inputs"][index] = _shrink_for_session(predictor, p)


def model_input(pred) -> np.ndarray | None:
    """The exact (s, s, 3) array the model saw for ``pred`` in the current batch."""
    state = st.session_state.get(_STATE_KEY) or {}
    for p, x in zip(state.get("preds", []), state.get("inputs", [])):
        if p is pred:
            return x
    return None


def _shrink_for_session(predictor, pred) -> np.ndarray | None:
    """Keep the model input for lazy Grad-CAM; downscale a huge display image in place."""
    if not pred.ok or pred.image is None:
        return None
    from core.imageio import resize_for_model

    x = resize_for_model(pred.image, predictor.size)
    h, w = pred.image.shape[:2]
    if max(h, w) > DISPLAY_MAX_SIDE:
        import cv2

        s = DISPLAY_MAX_SIDE / max(h, w)
        pred.image = cv2.resize(pred.image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return x


def ensure_heatmap(predictor, pred) -> None:
    """Compute the Grad-CAM map of one prediction if it is missing (in place)."""
    if not pred.ok or pred.heatmap is not None or pred.image is None:
        return
    from core.gradcam import grad_cam
    from core.imageio import resize_for_model

    x = model_input(pred)
    try:
        with st.spinner("Computing Grad-CAM..."):
            batch = (x if x is not None else resize_for_model(pred.image, predictor.size))[None]
            pred.heatmap = np.asarray(grad_cam(predictor.model, batch, predictor.config.last_conv_layer)[0])
    except Exception:  # noqa: BLE001 - the verdict stands without a heatmap
        log.exception("Grad-CAM failed for %s", pred.filename)

"""How an explanation map is chosen, captioned and drawn (Predict page, gallery, reports).

The map is always the PNEUMONIA map, whatever the verdict (docs/explanations.md): red =
regions that raised the pneumonia score. A flat map is never drawn as if it were
informative: the caption says in words that no region raised the score.
"""

from __future__ import annotations

import numpy as np

from core.explain import METHOD_LABELS, METHOD_MEANING, METHODS, is_flat

# Opacity of the overlay in the PDF/PNG report: fixed, so a report is never "overlay at
# opacity 0" (identical to the original) because of where the on-screen slider was.
REPORT_ALPHA = 0.5
# Opacity on screen where there is no slider (reader study, gallery) and the slider's start.
DEFAULT_ALPHA = 0.45


def method_label(method: str | None, layer: str | None = None) -> str:
    """'HiResCAM (block3_conv2)', 'Occlusion sensitivity', 'Grad-CAM (block5_conv4)'."""
    if not method:
        return "Heatmap"
    name = METHOD_LABELS.get(method, method)
    return f"{name} ({layer})" if layer else name


def method_options(default: str) -> list[str]:
    """Every method, the model's stored default first."""
    return [default] + [m for m in METHODS if m != default]


def method_ui(default: str, key: str) -> str:
    """Heatmap method selector; returns a method name of core.explain.METHODS."""
    import streamlit as st

    opts = method_options(default)
    return st.selectbox(
        "Heatmap method",
        opts,
        format_func=lambda m: METHOD_LABELS[m] + (" — default, most faithful on validation" if m == default
                                                  else " — slow (~2 s)" if m == "occlusion" else ""),
        key=key,
        help="The default was chosen per model by a deletion test on the validation split "
             "(docs/explanations.md). Grad-CAM is always available.",
    )


def caption(pred) -> str:
    """What the overlay shows, in words: method, what red means, and what the verdict implies."""
    name = method_label(getattr(pred, "heatmap_method", None), getattr(pred, "heatmap_layer", None))
    if is_flat(pred.heatmap):
        return (f"{name}: no region raised the pneumonia score — the map is flat, so no overlay is drawn.")
    meaning = METHOD_MEANING.get(getattr(pred, "heatmap_method", None) or "", "red = regions that raised the score")
    text = f"{name} for PNEUMONIA: {meaning.replace('the score', 'the pneumonia score')}."
    if pred.label == "NORMAL":
        text += " The score stayed below the threshold: these are the strongest pneumonia-like regions, not a finding."
    elif pred.label == "INDETERMINATE":
        text += " The probability is inside the indeterminate band: refer, whatever the map shows."
    return text


def overlay_arrays(image: np.ndarray | None, heatmap: np.ndarray | None, alpha: float = DEFAULT_ALPHA) -> np.ndarray | None:
    """``image`` with ``heatmap`` blended at ``alpha``; None when there is no informative map."""
    from core.gradcam import overlay

    if image is None or is_flat(heatmap):
        return None
    return overlay(image, heatmap, alpha)


def overlay_image(pred, alpha: float) -> np.ndarray | None:
    """The prediction's image with its map blended at ``alpha``; None when there is no informative map."""
    return overlay_arrays(pred.image, pred.heatmap, alpha)


def render_overlay(pred, alpha: float = DEFAULT_ALPHA, where=None, alt: str | None = None,
                   missing: str | None = None) -> None:
    """Draw the overlay and its caption in ``where`` (a Streamlit container; default ``st``); a
    flat map is said in words, never drawn; ``missing``: the note when there is no map at all.
    The caption is plain text (it names the model's layer, read from disk): escaped for Markdown."""
    import streamlit as st

    from ui.text import MAX_MESSAGE, md

    where = where or st
    ov = overlay_image(pred, alpha)
    if ov is not None:
        where.image(ov, width="stretch", alt=alt or f"{method_label(pred.heatmap_method)} overlay")
        where.caption(md(caption(pred), MAX_MESSAGE))
    elif pred.heatmap is not None:
        where.info(md(caption(pred), MAX_MESSAGE), icon=":material/blur_off:")
    elif missing:
        where.info(missing)


def report_overlay(pred) -> np.ndarray | None:
    """The overlay for the PDF/PNG report, always at REPORT_ALPHA (never the slider's value)."""
    return overlay_image(pred, REPORT_ALPHA)

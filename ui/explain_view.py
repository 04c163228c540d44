"""How an explanation map is chosen, captioned and drawn (Predict page, gallery, reports).

The map is always the PNEUMONIA map, whatever the verdict (docs/explanations.md): red =
regions that raised the pneumonia score. A flat map is never drawn as if it were
informative: the caption says in words that no region raised the score.
"""

from __future__ import annotations

import numpy as np

from core.explain import METHOD_LABELS, METHOD_MEANING, METHODS, is_flat
from core.gradcam import CLEAR_BELOW  # one value for every overlay (app, reports, CLI, PACS)

# Opacity of the overlay in the PDF/PNG report: fixed, so a report is never "overlay at
# opacity 0" (identical to the original) because of where the on-screen slider was.
REPORT_ALPHA = 0.5
# Opacity on screen where there is no slider (reader study, gallery) and the slider's start.
DEFAULT_ALPHA = 0.45
# What a method is worth on this kind of model, said in the selector and under a flat map
# (docs/explanations.md: Grad-CAM at block5_conv4 is 4x4 at 64 px and was flat on 27 % of the
# 463 test films the shipped model calls positive; occlusion runs ~225 forward passes).
METHOD_NOTES = {
    "gradcam": "coarse, often flat on this model",
    "occlusion": "slow, several seconds",
}
GRADCAM_FLAT_NOTE = ("Grad-CAM at the last convolutional layer is coarse (a few cells across the film) and often flat "
                     "on this model: flat on 27 % of the test films the shipped model calls positive "
                     "(docs/explanations.md). The default method is the one measured most faithful.")
_GRIDS: dict = {}  # (model version, method, layer) -> (cells per side, model input px)


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
                                                  else f" — {METHOD_NOTES[m]}" if m in METHOD_NOTES else ""),
        key=key,
        help="The default was chosen per model by a deletion test on the validation split "
             "(docs/explanations.md). Every map is coarse (the model sees a small copy of the film) and the "
             "methods may disagree. Grad-CAM is always available, but on this model it is coarse and often flat "
             "(no region raised the score on 27 % of the test films the shipped model calls positive). Occlusion "
             "masks each patch of the image in turn: several seconds per image.",
    )


def note_grid(predictor, method: str | None, layer: str | None) -> None:
    """Remember how coarse ``method``'s map is for ``predictor``'s model (cells per side at its
    input size, ``Predictor.map_grid``), for :func:`coarseness`. Gradient maps have one cell per
    location of their layer; occlusion masks patches of 1/8 of the side (core.explain)."""
    key = (getattr(predictor, "version", None), method, layer)
    if key in _GRIDS or not method:
        return
    try:
        _GRIDS[key] = (predictor.map_grid(method, layer), int(predictor.size))
    except Exception:  # noqa: BLE001 - the caption only loses its figure
        return


def coarseness(pred) -> str:
    """'Coarse map: 16 x 16 cells over the 64 px model input, ...' for ``pred``'s map ('' when unknown)."""
    method = getattr(pred, "heatmap_method", None)
    grid = _GRIDS.get((getattr(pred, "model_version", None), method, getattr(pred, "heatmap_layer", None)))
    if grid is None:
        return "The map is coarse (the model sees a small copy of the film) and methods may disagree."
    cells, size = grid
    if cells is None:
        return (f"The map is coarse: patches of {max(2, size // 8)} px masked over the {size} px copy the model sees, "
                "drawn smoothly over the film; methods may disagree.")
    return (f"The map is coarse: {cells} x {cells} cells over the {size} px copy the model sees, drawn smoothly over "
            "the film; methods may disagree.")


def caption(pred) -> str:
    """What the overlay shows, in words: method, what red means, and what the verdict implies."""
    method = getattr(pred, "heatmap_method", None)
    name = method_label(method, getattr(pred, "heatmap_layer", None))
    if is_flat(pred.heatmap):
        text = f"{name}: no region raised the pneumonia score — the map is flat, so no overlay is drawn."
        return text + (" " + GRADCAM_FLAT_NOTE if method == "gradcam" else "")
    meaning = METHOD_MEANING.get(method or "", "red = regions that raised the score")
    text = (f"{name} for PNEUMONIA: {meaning.replace('the score', 'the pneumonia score')}; "
            f"values under {100 * CLEAR_BELOW:.0f} % of the map's maximum are left clear.")
    if pred.label == "NORMAL":
        text += " The score stayed below the threshold: these are the strongest pneumonia-like regions, not a finding."
    elif pred.label == "INDETERMINATE":
        text += " The probability is inside the indeterminate band: refer, whatever the map shows."
    return text + " " + coarseness(pred)


def overlay_arrays(image: np.ndarray | None, heatmap: np.ndarray | None, alpha: float = DEFAULT_ALPHA) -> np.ndarray | None:
    """``image`` with ``heatmap`` blended at ``alpha``; None when there is no informative map.
    Values under CLEAR_BELOW of the map's maximum are transparent (core.gradcam.map_overlay)."""
    from core.gradcam import map_overlay

    return map_overlay(image, heatmap, alpha)


def overlay_image(pred, alpha: float) -> np.ndarray | None:
    """The prediction's image with its map blended at ``alpha``; None when there is no informative map."""
    return overlay_arrays(pred.image, pred.heatmap, alpha)


def render_overlay(pred, alpha: float = DEFAULT_ALPHA, where=None, alt: str | None = None,
                   missing: str | None = None, caption_where=None) -> None:
    """Draw the overlay in ``where`` (a Streamlit container; default ``st``) and its caption in
    ``caption_where`` (default ``where``); a flat map is said in words, never drawn; ``missing``:
    the note when there is no map at all. The caption is plain text (it names the model's layer,
    read from disk): escaped for Markdown."""
    import streamlit as st

    from ui.text import MAX_MESSAGE, md

    where = where or st
    below = caption_where or where
    ov = overlay_image(pred, alpha)
    if ov is not None:
        where.image(ov, width="stretch", alt=alt or f"{method_label(pred.heatmap_method)} overlay")
        below.caption(md(caption(pred), MAX_MESSAGE))
    elif pred.heatmap is not None:
        below.info(md(caption(pred), MAX_MESSAGE), icon=":material/blur_off:")
    elif missing:
        where.info(missing)


def report_overlay(pred) -> np.ndarray | None:
    """The overlay for the PDF/PNG report, always at REPORT_ALPHA (never the slider's value)."""
    return overlay_image(pred, REPORT_ALPHA)

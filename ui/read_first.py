"""Read-first mode on the Predict page: the AI verdict (result card, probability, heatmap,
batch table) stays hidden until the clinician has recorded their own read of that image.

Reads are kept in ``st.session_state`` only, keyed by the image's SHA-256 (the same image
uploaded again keeps its read); nothing is written to disk or to the audit log.
"""

from __future__ import annotations

import streamlit as st

from core.reader_study import CONFIDENCE_HELP, CONFIDENCE_LEVELS, READS
from ui.text import plain

TOGGLE_KEY = "read_first"
READS_KEY = "read_first_reads"


def toggle_ui() -> bool:
    """The switch; True when read-first mode is on."""
    return st.toggle(
        "Read first", key=TOGGLE_KEY,
        help="Hide the AI verdict, probability and heatmap until you have recorded your own read of the image.",
    )


def _image_key(pred) -> str:
    return f"{pred.sha256 or ''}:{pred.filename}"


def recorded(pred) -> dict | None:
    """The read recorded for this image in this session, or None."""
    return st.session_state.get(READS_KEY, {}).get(_image_key(pred))


def pick_ui(preds: list, batch_id: int) -> int | None:
    """Image picker for a batch that shows file names only (no verdicts, no probabilities)."""
    viewable = [i for i, p in enumerate(preds) if p.ok]
    if not viewable:
        return None
    st.caption("Read-first mode: the results table is hidden; each image's verdict appears after your read.")
    return st.selectbox(
        "Image to read", viewable, key=f"read-first-pick-{batch_id}",
        format_func=lambda i: f"{i + 1}. {plain(preds[i].filename)}" + (" — read recorded" if recorded(preds[i]) else ""),
    )


def gate_ui(pred, key: str) -> bool:
    """True when the AI output of ``pred`` may be shown: a rejected or unreadable image (no
    verdict to hide) or a read already recorded. Otherwise draws the image with the read form
    and returns False."""
    if not pred.ok or pred.rejected:
        return True
    r = recorded(pred)
    if r is not None:
        st.info(f"Your read, recorded before the AI verdict: **{r['read']}** (confidence {r['confidence']} of 5).",
                icon=":material/edit_note:")
        return True
    left, right = st.columns(2, gap="large")
    if pred.image is not None:
        left.image(pred.image, caption="Image to read", width="stretch", alt="Chest X-ray to read")
    with right, st.container(border=True):
        st.markdown("**Read first:** record your own read; the AI verdict, probability and heatmap are shown after it.")
        label = st.radio("Your read", READS, index=None, horizontal=True, key=f"{key}-rf-read")
        conf = st.select_slider("Confidence", CONFIDENCE_LEVELS, value=3, key=f"{key}-rf-conf",
                                help=CONFIDENCE_HELP)
        if st.button("Record my read and show the AI verdict", type="primary", key=f"{key}-rf-record",
                     icon=":material/visibility:"):
            if label is None:
                st.error("Choose NORMAL or PNEUMONIA first.")
            else:
                st.session_state.setdefault(READS_KEY, {})[_image_key(pred)] = {"read": label, "confidence": int(conf)}
                st.rerun()
    return False

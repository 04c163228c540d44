"""The clinician feedback form shown under every verdict (issue 17 A).

Called from ``ui.components.render_case`` (Predict page: single result and batch detail) and
from the evaluation page's misclassified gallery. It records, through ``core.feedback``:
agree / disagree, the label the reader believes, an optional comment and, only when the
consent box is ticked, the de-identified grey pixels (never the uploaded file).
The reader id is random, one per browser session, never a name.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
import streamlit as st

from core import audit
from core.feedback import BELIEVED_LABELS, FeedbackError, FeedbackStore, default_feedback_dir, new_reader_id
from ui.text import MAX_MESSAGE, md, md_code

CONSENT_LABEL = "Keep the de-identified pixels for retraining"
CONSENT_HELP = ("Stores the decoded grey image only (no file, no DICOM header, no name) under the server's "
                "feedback folder, so an administrator can add it to a retraining if they accept your label. "
                "Off by default; an administrator can delete it at any time.")


def reader_id() -> str:
    """This browser session's anonymous reader id."""
    if "feedback_reader_id" not in st.session_state:
        st.session_state["feedback_reader_id"] = new_reader_id()
    return st.session_state["feedback_reader_id"]


def store() -> FeedbackStore:
    from ui import loaders

    root = loaders.registry_root()
    return FeedbackStore(default_feedback_dir(root), audit_path=audit.default_audit_path(root))


def _form(key: str, *, model_label: str | None, record: Callable[..., dict], container=None) -> None:
    done = st.session_state.get(f"fb-done-{key}")
    where = container if container is not None else st.expander("Your feedback on this verdict", icon=":material/rate_review:")
    with where:
        if done:
            st.success(f"Feedback recorded (id {md_code(done)}). Thank you.", icon=":material/check:")
        with st.form(f"fb-form-{key}", clear_on_submit=False, border=False):
            agree = st.radio("Do you agree with the verdict?", ("Agree", "Disagree"), horizontal=True, key=f"fb-agree-{key}")
            default = BELIEVED_LABELS.index(model_label) if model_label in BELIEVED_LABELS else BELIEVED_LABELS.index("unsure")
            believed = st.radio("The label you believe", BELIEVED_LABELS, index=default, horizontal=True, key=f"fb-label-{key}")
            comment = st.text_area("Comment (optional — no patient names or identifiers)", max_chars=2000, key=f"fb-comment-{key}")
            consent = st.checkbox(CONSENT_LABEL, value=False, help=CONSENT_HELP, key=f"fb-consent-{key}")
            sent = st.form_submit_button("Send feedback", key=f"fb-send-{key}", icon=":material/send:")
        if sent:
            try:
                rec = record(agree=agree == "Agree", believed_label=believed, comment=comment, consent=bool(consent))
            except (FeedbackError, OSError) as e:
                st.error(f"Feedback not recorded: {md(e, MAX_MESSAGE)}")
            else:
                st.session_state[f"fb-done-{key}"] = rec["id"]
                st.success(f"Feedback recorded (id {md_code(rec['id'])})" + (" with the de-identified pixels." if rec["pixels_stored"] else "."),
                           icon=":material/check:")


def case_feedback(pred, key: str, source: str = "app") -> None:
    """Feedback form for one ``Prediction`` with a verdict (not for unreadable or rejected images)."""
    if not getattr(pred, "ok", False) or getattr(pred, "guard_status", None) == "rejected" or not pred.sha256:
        return
    model_label = pred.label if pred.label in BELIEVED_LABELS else None

    def record(**kw) -> dict:
        return store().record_prediction(pred, reader_id=reader_id(), source=source, **kw)

    _form(key, model_label=model_label, record=record)


def gallery_feedback(version: str, item: dict, path: Path | None, threshold: float | None, key: str) -> None:
    """Compact feedback (a popover) for one misclassified image of an evaluation report. The
    model's verdict is the opposite of the reference label; the guard did not run on it."""
    if path is None:
        return
    model_label = "NORMAL" if item.get("label") == "PNEUMONIA" else "PNEUMONIA"

    def record(**kw) -> dict:
        from core.imageio import load_image

        data = Path(path).read_bytes()
        pixels = np.asarray(load_image(path).array) if kw.get("consent") else None
        return store().record(image_sha256=hashlib.sha256(data).hexdigest(), model_version=version,
                              probability=item.get("prob"), threshold=threshold, guard_status=None,
                              guard_code="not_checked", reader_id=reader_id(), pixels=pixels, source="evaluation", **kw)

    _form(key, model_label=model_label, record=record, container=st.popover("Feedback", icon=":material/rate_review:"))


__all__ = ["CONSENT_LABEL", "case_feedback", "gallery_feedback", "reader_id", "store"]

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

from core.db import DatabaseError
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
    return FeedbackStore(default_feedback_dir(root))  # records in that root's database, audited there


OTHER_LABEL = {"NORMAL": "PNEUMONIA", "PNEUMONIA": "NORMAL"}


def believed_default(agree: bool, model_label: str | None) -> str | None:
    """The label pre-selected as the one the reader believes: the model's own when they agree;
    when they disagree, the other label (NORMAL <-> PNEUMONIA), or none when the model's verdict
    was neither (an indeterminate one): never the verdict they just disagreed with."""
    if agree:
        return model_label if model_label in BELIEVED_LABELS else "unsure"
    return OTHER_LABEL.get(model_label)


def _form(key: str, *, model_label: str | None, record: Callable[..., dict], container=None) -> None:
    done = st.session_state.get(f"fb-done-{key}")
    where = container if container is not None else st.expander("Your feedback on this verdict", icon=":material/rate_review:")
    agree_key, label_key = f"fb-agree-{key}", f"fb-label-{key}"

    def follow() -> None:  # the believed label follows Agree / Disagree (outside the form: it reruns at once)
        st.session_state[label_key] = believed_default(st.session_state.get(agree_key) != "Disagree", model_label)

    if label_key not in st.session_state:
        st.session_state[label_key] = believed_default(True, model_label)
    with where:
        if done:
            st.success(f"Feedback recorded (id {md_code(done)}). Thank you.", icon=":material/check:")
        agree = st.radio("Do you agree with the verdict?", ("Agree", "Disagree"), horizontal=True, key=agree_key, on_change=follow)
        with st.form(f"fb-form-{key}", clear_on_submit=False, border=False):
            believed = st.radio("The label you believe", BELIEVED_LABELS, horizontal=True, key=label_key)
            comment = st.text_area("Comment (optional — no patient names or identifiers)", max_chars=2000, key=f"fb-comment-{key}")
            consent = st.checkbox(CONSENT_LABEL, value=False, help=CONSENT_HELP, key=f"fb-consent-{key}")
            sent = st.form_submit_button("Send feedback", key=f"fb-send-{key}", icon=":material/send:")
        if sent:
            if believed is None:
                st.error("Choose the label you believe first (or unsure).")
                return
            if agree == "Disagree" and believed == model_label:
                st.error(f"You disagree with the verdict {md(model_label)}, so the label you believe cannot be {md(model_label)}: "
                         "choose the other label, or unsure.")
                return
            try:
                rec = record(agree=agree == "Agree", believed_label=believed, comment=comment, consent=bool(consent))
            except (FeedbackError, OSError, DatabaseError) as e:
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


GALLERY_OPEN = "fb-gallery-open"  # the key of the gallery film whose feedback dialog is open


def _close_gallery_dialog() -> None:
    st.session_state.pop(GALLERY_OPEN, None)


@st.dialog("Feedback on a misclassified film", width="medium", on_dismiss=_close_gallery_dialog)
def _gallery_dialog(version: str, item: dict, path: Path, threshold: float | None, key: str, model_label: str) -> None:
    """The form in a dialog that names the film and shows it (a popover under the button covered
    the film it was about and did not say which one it was)."""
    from core.formatting import pct
    from ui import loaders

    name = Path(path).name
    kind = "False negative" if item.get("label") == "PNEUMONIA" else "False positive"
    st.markdown(f"**{md(name)}** — {kind}: reference label **{md(item.get('label'))}**, the model said "
                f"**{md(model_label)}** (P(pneumonia) {pct(item.get('prob'))}).")
    left, right = st.columns([2, 3], gap="medium")
    try:
        left.image(loaders.thumbnail(str(path)), width="stretch", alt=f"The film this feedback is about: {name}")
    except Exception:  # noqa: BLE001 - the form works without the picture
        left.caption("The film cannot be shown.")

    def record(**kw) -> dict:
        from core.imageio import load_image

        data = Path(path).read_bytes()
        pixels = np.asarray(load_image(path).array) if kw.get("consent") else None
        return store().record(image_sha256=hashlib.sha256(data).hexdigest(), model_version=version,
                              probability=item.get("prob"), threshold=threshold, guard_status=None,
                              guard_code="not_checked", reader_id=reader_id(), pixels=pixels, source="evaluation", **kw)

    _form(key, model_label=model_label, record=record, container=right.container())


def gallery_feedback(version: str, item: dict, path: Path | None, threshold: float | None, key: str) -> None:
    """Feedback on one misclassified image of an evaluation report: a button that opens a dialog
    naming and showing the film. The model's verdict is the opposite of the reference label; the
    guard did not run on it."""
    if path is None:
        return
    model_label = "NORMAL" if item.get("label") == "PNEUMONIA" else "PNEUMONIA"
    if st.button("Feedback", key=f"fb-open-{key}", icon=":material/rate_review:",
                 help="Agree or disagree with this verdict (opens a form that shows the film)."):
        st.session_state[GALLERY_OPEN] = key
    if st.session_state.get(GALLERY_OPEN) == key:
        _gallery_dialog(version, item, Path(path), threshold, key, model_label)


__all__ = ["CONSENT_LABEL", "case_feedback", "gallery_feedback", "reader_id", "store"]

"""Admin page, **Feedback** tab (issue 17 A): the relabel review queue, its CSV export, the
stored pixels (list, delete), the retrain form's "include accepted feedback images" option and
the validation effect of a feedback-trained version side by side with the active model.

Everything goes through ``core.feedback`` (the CLI ``python -m core feedback`` uses the same
code); reviews and deletions are audited there. Leftovers of interrupted pixel writes (a server
killed mid-write) are listed under the stored pixels with a **Clean up leftovers** button.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.feedback import DEBRIS_MIN_AGE_S, FeedbackError, FeedbackStore
from core.formatting import pct
from ui import components
from ui.text import MAX_COMMENT, MAX_MESSAGE, md, md_code, plain

# The queue grid fits a 1024 px window (issue 22: 13 columns scrolled and cut the comment): the
# rest of a record -- time, model output, input check, the whole comment, the stored image -- is
# in the review panel of the selected record, and every field is in the CSV export.
QUEUE_COLUMNS = ("id", "status", "clinician", "pixels", "comment")
COMMENT_PREVIEW = 28  # characters of the comment in the grid; the review panel shows all of it
VALIDATION_METRICS = (("roc_auc", "ROC-AUC", False), ("sensitivity", "Sensitivity", True),
                      ("specificity", "Specificity", True), ("accuracy", "Accuracy", True), ("n", "Images", None))


def _store() -> FeedbackStore:
    from ui import feedback_view

    return feedback_view.store()


# --- plain helpers (tested without Streamlit) -------------------------------------------------------
def clinician_text(it: dict) -> str:
    """'agree: PNEUMONIA' / 'disagree: NORMAL' (the label the clinician believes)."""
    return f"{'agree' if it.get('agree') else 'disagree'}: {it.get('believed_label') or '?'}"


def comment_preview(comment, limit: int = COMMENT_PREVIEW) -> str:
    """The comment on one line, shortened with an ellipsis (the review panel shows all of it)."""
    text = " ".join(str(comment or "").split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def short_hash(sha) -> str | None:
    """The first 16 hex digits of a SHA-256 and an ellipsis: 64 unbroken characters overflowed the
    panel and the stored-pixels grid at 1024 px (the CSV export has the whole hash)."""
    return None if sha is None else (str(sha)[:16] + "…" if len(str(sha)) > 16 else str(sha))


def pixel_rows(stored: list[dict]) -> list[dict]:
    """The stored-pixels table, narrow enough for 1024 px: the hash shortened, size as W x H."""
    return [{"image": short_hash(r.get("image_sha256")), "size": f"{r.get('width')} × {r.get('height')} px",
             "kB": round((r.get("bytes") or 0) / 1024, 1), "feedback": r.get("feedback_ids", ""),
             "status": r.get("statuses", "")} for r in stored]


def queue_rows(items: list[dict]) -> list[dict]:
    return [{"id": it.get("id"), "status": it.get("status"), "clinician": clinician_text(it),
             "pixels": "yes" if it.get("pixels_available") else "no", "comment": comment_preview(it.get("comment"))}
            for it in items]


def record_facts(it: dict) -> list[dict]:
    """The selected record in full, as {"field", "value"} rows (plain text; the page escapes them)."""
    prob, thr = it.get("probability"), it.get("threshold")
    model = "n/a" if prob is None else pct(prob) + ("" if thr is None else f" (threshold {pct(thr)})")
    review = str(it.get("status") or "")
    if it.get("reason"):
        review += f" — {it['reason']}"
    rows = [("Time (UTC)", it.get("time")), ("Model version", it.get("model_version")),
            ("Model output (P pneumonia)", model), ("Input check", it.get("guard_code")),
            ("Clinician", clinician_text(it)), ("Comment", it.get("comment") or "(none)"),
            ("Reader", it.get("reader_id")), ("Review", review),
            ("Pixels", "stored (consented)" if it.get("pixels_available") else "not stored"),
            ("Image hash", short_hash(it.get("image_sha256")))]
    return [{"field": k, "value": "" if v is None else str(v)} for k, v in rows]


def review_panel(store: FeedbackStore, it: dict) -> None:
    """The selected record: its stored image (when the clinician consented) beside every field,
    the whole comment included (issue 22: the panel showed neither)."""
    from ui.compare_view import table

    with st.container(border=True, key="fbq_record"):
        left, right = st.columns([2, 3], gap="medium")
        with left:
            if it.get("pixels_available"):
                try:
                    st.image(str(store.pixel_path(it["image_sha256"])), width="stretch",
                             caption="the film the feedback is about (stored de-identified pixels)")
                except Exception:  # noqa: BLE001 - a damaged or vanished file: say so, keep the panel
                    st.caption("The stored pixels could not be read.")
            else:
                st.info("No image: the clinician did not consent to keeping the pixels (only its SHA-256 is "
                        "recorded).", icon=":material/hide_image:")
        with right:
            rows = record_facts(it)
            # st.table wraps a long comment; cells are Markdown, so every value is escaped (table()).
            st.table(table(rows, max_len=MAX_COMMENT + 100), hide_index=True)


def validation_side_by_side(registry, version: str, active: str | None) -> list[dict]:
    """Validation metrics of ``version`` next to the active model's, plus how many feedback
    images each was trained with (from its card)."""
    from ui.admin_components import read_version_json

    names = [version] + ([active] if active and active != version else [])
    cards = {n: read_version_json(registry, n, "card.json") for n in names}
    vals = {n: read_version_json(registry, n, "metrics.json").get("validation") or {} for n in names}
    rows = [{"metric": "Feedback images in training", **{n: str(cards.get(n, {}).get("feedback_images", 0)) for n in names}}]
    for key, label, as_pct in VALIDATION_METRICS:
        row = {"metric": f"{label} (validation)"}
        for n in names:
            v = vals[n].get(key)
            row[n] = "" if v is None else (pct(v) if as_pct else (f"{v:.0f}" if as_pct is None else f"{v:.3f}"))
        rows.append(row)
    return rows


# --- retrain form option ----------------------------------------------------------------------------
def retrain_option() -> bool:
    """The retrain form's checkbox (call inside the form). Says how many images it would add."""
    try:
        n = len(_store().training_items())
    except OSError:
        n = 0
    return st.checkbox(
        f"Include accepted feedback images ({n} available)", value=False, key="retrain_include_feedback",
        help="Accepted relabels with consented pixels are added to the TRAINING part only, after the patient-wise "
             "train/validation split; never to validation or test. The new version's card and provenance record "
             "how many were used and their SHA-256 hashes.",
    )


def leftovers_ui(store: FeedbackStore) -> None:
    """Files in the images folder that are not pixels kept by a record (left by a server stopped
    mid-write, issue 21): listed with what the clean-up does, cleaned on request (audited)."""
    try:
        rows = store.debris()
    except OSError as e:
        st.warning(f"Cannot list the feedback images folder ({e.strerror or type(e).__name__}).")
        return
    if not rows:
        return
    st.markdown("#### Leftovers of interrupted writes")
    st.caption("Files in the feedback images folder that are not stored pixels kept by a feedback record, left by a "
               "server stopped while it wrote feedback. **Clean up** moves pixels whose record was written into "
               "place and removes the rest; files younger than "
               f"{int(DEBRIS_MIN_AGE_S)} s are kept (a write may be in progress) and files the store did not write "
               "are left for a person.")
    st.dataframe(pd.DataFrame(rows, columns=["name", "kind", "age_s", "bytes", "action"]), hide_index=True,
                 width="stretch")
    if st.button("Clean up leftovers", key="fbd_clean", icon=":material/cleaning_services:"):
        try:
            c = store.clean_debris(source="app")
        except OSError as e:
            st.error(f"The clean-up failed ({e.strerror or type(e).__name__}); nothing else was changed.")
            return
        components.flash("success", f"Leftovers: {c['finished']} finished, {c['removed']} removed, {c['too_young']} "
                                    f"kept (younger than {int(DEBRIS_MIN_AGE_S)} s), {c['left']} left for a person.")
        st.rerun()


# --- the tab --------------------------------------------------------------------------------------
def feedback_tab(registry) -> None:
    store = _store()
    st.caption(f"{md_code(store.root)} — clinician feedback on verdicts. Reviews and deletions are audited.")
    c1, c2, c3 = st.columns(3)
    only_dis = c1.checkbox("Disagreements only", value=False, key="fbq_disagree")
    versions = ["all"] + store.model_versions()
    ver = c2.selectbox("Model version", versions, key="fbq_version", format_func=plain)  # names from the log
    status = c3.selectbox("Status", ("pending", "accepted", "rejected", "all"), key="fbq_status")
    filters = {"disagreement": True if only_dis else None, "model_version": None if ver == "all" else ver,
               "status": None if status == "all" else status}
    items = store.items(**filters)
    # The CSV holds the rows shown (no second read of the log).
    st.download_button("Export CSV", lambda: store.export_csv(items), file_name="pneumoscope-feedback.csv", mime="text/csv",
                       icon=":material/download:", disabled=not items, key="fbq_csv")
    if not items:
        st.info("No feedback matches these filters.")
    else:
        st.dataframe(pd.DataFrame(queue_rows(items), columns=list(QUEUE_COLUMNS)), hide_index=True, width="stretch")
        st.caption("Newest first. Select a record below for its image, the whole comment and the model's output; "
                   "**Export CSV** has every field.")
        st.markdown("##### Review")
        ids = [it["id"] for it in items]
        by_id = {it["id"]: it for it in items}
        sel = st.selectbox(
            "Feedback record", ids, key="fbq_sel",
            format_func=lambda i: plain(f"{i} · {by_id[i]['believed_label']} · {'agree' if by_id[i]['agree'] else 'disagree'} · {by_id[i]['status']}"),
        )
        review_panel(store, by_id[sel])
        reason = st.text_input("Reason (required)", key="fbq_reason")
        b1, b2 = st.columns(2)
        decision = None
        if b1.button("Accept relabel", key="fbq_accept", type="primary", icon=":material/check:"):
            decision = "accepted"
        if b2.button("Reject", key="fbq_reject", icon=":material/close:"):
            decision = "rejected"
        if decision:
            try:
                store.review(sel, decision, reason, source="app")
            except FeedbackError as e:
                st.error(md(e, MAX_MESSAGE))
            else:
                components.flash("success", f"Feedback {md_code(sel)} {decision}.")
                st.rerun()

    st.markdown("#### Stored pixels (consented)")
    stored = store.stored_pixels()
    if not stored:
        st.caption("No pixels are stored.")
    else:
        st.dataframe(pd.DataFrame(pixel_rows(stored)), hide_index=True, width="stretch")
        d1, d2 = st.columns([3, 1])
        sha = d1.selectbox("Image", [r["image_sha256"] for r in stored], key="fbp_sel", format_func=short_hash)
        with d1:
            st.image(str(store.pixel_path(sha)), width=240, caption="stored de-identified pixels")
        if d2.button("Delete pixels", key="fbp_delete", icon=":material/delete:"):
            store.delete_pixels(sha, source="app")
            components.flash("success", f"Deleted the stored pixels of {md_code(sha[:16] + '…')}.")
            st.rerun()

    leftovers_ui(store)

    st.markdown("#### Effect on validation")
    fed = [v.name for v in registry.versions() if (v.card or {}).get("feedback_images")]
    if not fed:
        st.caption("No version has been trained with feedback yet (Retrain tab → **Include accepted feedback images**).")
        return
    active = registry.active_version()
    v = st.selectbox("Version trained with feedback", list(reversed(fed)), key="fbv_sel", format_func=plain)
    st.dataframe(pd.DataFrame(validation_side_by_side(registry, v, active)), hide_index=True, width="stretch")
    st.caption("Each version's own patient-wise validation split (the same when seed and validation fraction are the "
               "same). Promote in the **Models** tab only after comparing.")


__all__ = ["clinician_text", "comment_preview", "feedback_tab", "leftovers_ui", "queue_rows", "record_facts",
           "retrain_option", "review_panel", "validation_side_by_side"]

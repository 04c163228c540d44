"""Predict: upload chest X-rays (or pick a bundled sample) and get a verdict with Grad-CAM."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import streamlit as st

from core.csvsafe import csv_bytes
from core.imageio import FORMAT_SUFFIXES, batch_limit_error, upload_limits_text
from core.formatting import pct, pct_value, percent_row
from core.registry import RegistryError
from core.reports import verdict
from ui import components, explain_view, inference, loaders, read_first
from ui.text import MAX_MESSAGE, md, md_code, plain

log = logging.getLogger(__name__)


def _source(name: str) -> None:
    st.session_state["predict_source"] = name


def upload_ui() -> list:
    """The uploader; returns the UploadedFile list (bytes stay in memory).

    No file-type filter: a browser-side filter turns a DICOM exported from PACS without an
    extension into a red chip with the reason on hover only. The decoder recognises the
    format from the content (PNG/JPEG signatures, DICOM's 'DICM' at byte 128, raw DICOM data
    sets), so any file name works and anything else gets a clear message on the page. The
    formats named in the help are core.imageio's one list (``FORMAT_SUFFIXES``).
    """
    files = st.file_uploader(
        "Upload chest X-rays (PNG, JPEG or DICOM, up to 50 MB each)",
        type=None,
        help="Any file name works, with or without an extension (e.g. DICOM exported from PACS): "
             f"the file's content decides the format. Formats read: {', '.join(FORMAT_SUFFIXES)}. "
             f"Limits: {upload_limits_text()}.",
        accept_multiple_files=True,
        key="uploads",
        on_change=_source,
        args=("upload",),
    )
    return list(files or [])


def sample_ui(samples: list, hide_labels: bool = False) -> dict | None:
    """Sample picker over ``samples`` (``loaders.sample_files()``). Returns the sample last sent for
    analysis ({n, label, path}) or None. ``hide_labels`` (read-first mode): the picker names the
    files only, not their reference label."""
    if not samples:
        st.caption("No bundled samples found.")
        return None
    idx = st.selectbox(
        "Bundled test X-ray",
        range(len(samples)),
        format_func=lambda i: plain(samples[i][1].name) + ("" if hide_labels else f" (labelled {samples[i][0]})"),
        key="sample_pick",
    )
    if st.button("Analyse sample", key="sample_go", icon=":material/play_arrow:", type="primary"):
        prev = st.session_state.get("sample_run") or {"n": 0}
        label, path = samples[idx]
        st.session_state["sample_run"] = {"n": prev["n"] + 1, "label": label, "path": str(path)}
        _source("sample")
    return st.session_state.get("sample_run")


def _message(p) -> str:
    return p.error or (p.guard_message if p.guard_status in ("warning", "rejected") else "") or ""


# The results grid's wording of a verdict (core.reports.verdict titles), short enough for its column.
TABLE_RESULT = {
    "No pneumonia detected": "No pneumonia",
    "Indeterminate — refer": "Indeterminate",
    "No verdict — image rejected": "Rejected",
}
FILE_COLUMN_PX = 225  # a 29-character name such as person1946_bacteria_4874.jpeg, whole


def results_table_ui(preds: list, batch_id: int) -> int | None:
    """Sortable results table + CSV; returns the index of the image to show in detail.

    Probabilities in percent (core.formatting). The messages are sentences: they go to a
    wrapping table under the grid instead of a grid column that cuts them.
    """
    df = pd.DataFrame(
        [
            {
                "File": p.filename,
                "Result": TABLE_RESULT.get(verdict(p).title, verdict(p).title),
                "P(pneumonia)": pct_value(p.probability) if p.ok and p.guard_status != "rejected" else None,
                "Input check": ("error" if not p.ok else p.guard_status) or "—",
            }
            for i, p in enumerate(preds)
        ]
    )
    event = st.dataframe(
        df,
        hide_index=True,
        width="stretch",
        on_select="rerun",
        selection_mode="single-row",
        key=f"results-{batch_id}",
        # Fits a 1024 px window with the file names whole (the grid cannot wrap a cell; at 120 px
        # "person109_bacteri…" made rows look alike): short result words, the probability as a
        # number; the threshold is the same for every row (caption below).
        column_config={
            "File": st.column_config.TextColumn(width=FILE_COLUMN_PX),
            "Result": st.column_config.TextColumn(width=145),
            "P(pneumonia)": st.column_config.NumberColumn(format="%.1f %%", width=80),
            "Input check": st.column_config.TextColumn(width=75),
        },
    )
    thresholds = {p.threshold for p in preds if p.threshold is not None}
    st.caption((f"Decision threshold {pct(thresholds.pop())} (calibrated probability) for every image. " if len(thresholds) == 1 else "")
               + "Indeterminate = refer for expert reading; Rejected = the input check gave no verdict.")
    # st.table renders its cells as Markdown: names and messages are escaped (issue 21).
    notes = [{"File": md(p.filename), "Message": md(_message(p), MAX_MESSAGE)} for p in preds if _message(p)]
    if notes:
        st.markdown("**Messages**")
        st.table(pd.DataFrame(notes), hide_index=True)
    csv = csv_bytes([percent_row(p.to_row()) for p in preds])  # formula cells neutralised
    st.download_button("Download results (CSV)", csv, file_name="pneumoscope-results.csv", mime="text/csv", icon=":material/download:", on_click="ignore")
    viewable = [i for i, p in enumerate(preds) if p.ok]
    if not viewable:
        return None
    pick_key = f"detail-{batch_id}"
    rows = list(event.selection.rows) if event and event.selection else []
    # One key for the last clicked row, tagged with its batch (a key per batch piled up in the session).
    last = st.session_state.get("predict_last_row")
    last_row = last[1] if last and last[0] == batch_id else None
    if rows and rows[0] != last_row and rows[0] in viewable:
        st.session_state[pick_key] = rows[0]  # a clicked row drives the detail selector
    st.session_state["predict_last_row"] = (batch_id, rows[0] if rows else None)
    return st.selectbox(
        "Show details for (or click a row above)",
        viewable,
        format_func=lambda i: f"{i + 1}. {plain(preds[i].filename)} — {verdict(preds[i]).title}",
        key=pick_key,
    )


def retrain_notice() -> None:
    """Say so when a training job runs on this machine: it shares the CPU, predictions slow down."""
    from core import jobs
    from core.db import DatabaseError

    try:  # the job's state is in the shared database; "on this machine" = its host and a live pid here
        job = jobs.current_job(artifacts=loaders.registry_root())
    except (OSError, DatabaseError):
        return
    if not jobs.running_here(job):
        return
    since = md(str(job.state.get("started") or job.state.get("created") or "")[11:16])
    st.info(
        f"**A model retrain is running on this machine** (job {md_code(job.job_id)}{f', since {since} UTC' if since else ''}). "
        "It shares the processor with the app, so a prediction can take several seconds instead of about one. "
        "The active model is unchanged until an administrator promotes a new version.",
        icon=":material/hourglass_top:",
    )


def uploaded_colour(pred, items_fn, index: int, batch_id: int):
    """The upload as decoded, in colour, for a rejected colour image (else None).

    The model's grayscale copy of a rejected colour photo hides why it was rejected; the
    colour version is decoded again from the bytes (only for this case) and kept per batch.
    """
    if not pred.ok or pred.guard_status != "rejected" or not (pred.info or {}).get("was_color"):
        return None
    key = ("uploaded_rgb", batch_id, index)
    cache = st.session_state.setdefault("predict_uploaded_rgb", {})
    if key not in cache:
        cache.clear()  # one image at a time
        try:
            from core.decode_pool import decode_untrusted

            name, data = items_fn()[index]
            rgb = decode_untrusted(data, filename=name).original_rgb  # untrusted: in a decode worker
        except Exception:  # noqa: BLE001 - fall back to the analysed copy
            log.exception("Cannot decode %s again for display", pred.filename)
            rgb = None
        if rgb is not None:
            from core.imageio import shrink_to

            rgb = shrink_to(rgb, inference.DISPLAY_MAX_SIDE)
        cache[key] = rgb
    return cache[key]


# --- page ------------------------------------------------------------------------------------
st.title("Pneumonia check")
st.caption("Upload one or more paediatric chest X-rays, or try a bundled sample. Each image gets a calibrated probability of pneumonia, "
           "a verdict at the model's stored threshold and a heatmap of the regions that raised the score (by default the method measured most faithful for the model; Grad-CAM and others on request).")
version = components.active_version()
if version is None:
    components.no_model_notice()
    st.stop()
retrain_notice()
read_first_on = read_first.toggle_ui()  # hide the AI verdict until the clinician's own read

# Side by side where there is room, one under the other in a 1024 px window (fixed columns
# cut the sample picker's value there).
top = st.container(horizontal=True, wrap=True, gap="large")
with top, st.container(width=460):
    files = upload_ui()
with top, st.container(border=True, width=440):  # room for a sample's name and label in the picker
    st.markdown("**Try a sample**")
    samples = loaders.sample_files()  # read once per rerun
    sample = sample_ui(samples, hide_labels=read_first_on)
    st.caption(f"{len(samples)} real X-rays drawn at random (seeded, never by outcome) from the official test split, "
               "half of each class; never used for training. Expect some wrong or indeterminate verdicts: they are "
               "a fair picture of the model. " + loaders.SAMPLE_ATTRIBUTION)

source = st.session_state.get("predict_source")
if source == "upload" and not files:
    source = "sample" if sample else None
if source == "sample" and sample is None:
    source = None
if source is None and files:
    source = "upload"
if source is None:
    st.info("Upload an image or pick a sample to start.", icon=":material/upload:")
    components.disclaimer_footer()
    st.stop()

try:
    version, predictor = loaders.active_predictor()
except RegistryError as e:
    st.error(md(e, MAX_MESSAGE))  # one sentence that names the version and what to do
    st.stop()
except Exception as e:  # noqa: BLE001 - a damaged model file must not show a traceback
    log.exception("Loading the active model %s failed", version)
    st.error(
        f"The active model {md_code(version)} could not be loaded ({type(e).__name__}). "
        "Ask an administrator to check or re-activate a model version."
    )
    st.stop()
if predictor is None:  # the model was deactivated between two reruns
    components.no_model_notice()
    st.stop()

if source == "upload" and (limit_error := batch_limit_error([f.size for f in files])):
    st.error(limit_error, icon=":material/block:")  # nothing is decoded: bounded memory
    components.disclaimer_footer()
    st.stop()
if source == "upload":
    batch_key = ("upload", tuple((f.file_id, f.name, f.size) for f in files))
    items_fn = lambda: [(f.name, f.getvalue()) for f in files]  # noqa: E731
else:
    path = Path(sample["path"])
    batch_key = ("sample", sample["path"], sample["n"])
    items_fn = lambda: [(path.name, path.read_bytes())]  # noqa: E731
preds, batch_id = inference.cached_batch(predictor, batch_key, items_fn, source)
if source == "sample":  # in read-first mode the reference label waits for the clinician's read, like the verdict
    blind = read_first_on and preds and preds[0].ok and not preds[0].rejected and read_first.recorded(preds[0]) is None
    st.caption(f"Sample **{md(path.name)}** — " + ("reference label shown after your read." if blind else
                                                   f"reference label in the dataset: **{md(sample['label'])}**."))

st.divider()
for p in preds:
    if not p.ok:
        st.error(f"**{md(p.filename)}** could not be analysed: {md(p.error, MAX_MESSAGE)}", icon=":material/error:")

if len(preds) > 1:
    st.subheader(f"Results ({sum(p.ok for p in preds)} of {len(preds)} analysed)")
    chosen = read_first.pick_ui(preds, batch_id) if read_first_on else results_table_ui(preds, batch_id)
else:
    chosen = 0 if preds and preds[0].ok else None

if chosen is not None:
    pred = preds[chosen]
    if len(preds) > 1:
        st.subheader(md(pred.filename))  # a name is text, never a heading, link or image (issue 21)
    fix = components.fix_offer_ui(pred, key=f"case-{batch_id}-{chosen}")
    if fix:
        with st.spinner("Analysing again..."):
            inference.apply_fix(predictor, chosen, fix, items_fn, source)
        st.rerun()
    if not read_first_on or read_first.gate_ui(pred, key=f"case-{batch_id}-{chosen}"):
        # A rejected image gets no verdict, so no choice of explanation either: its (unreliable)
        # map, in the expander under it, is the model's default.
        method = None if pred.rejected else explain_view.method_ui(predictor.explain_method, key=f"map-method-{batch_id}")
        pred = inference.with_method(predictor, pred, method)
        components.render_case(pred, key=f"case-{batch_id}-{chosen}", uploaded_rgb=uploaded_colour(pred, items_fn, chosen, batch_id),
                               fix_button=components.fix_offered(pred))
components.disclaimer_footer()

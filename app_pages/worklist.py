"""PACS worklist: search CR/DX studies, analyse the frontal film of the ones picked, send the
result back to the PACS (a structured report and a heatmap image in the same study).

Thin page over core.pacs: the film is analysed exactly like an upload (isolated decoding,
input guard, calibrated probability, heatmap) and shown with the same result view.
"""

from __future__ import annotations

import datetime as dt
import logging

import pandas as pd
import streamlit as st

from core import pacs
from core.dicomweb import DicomWeb, PacsError
from core.formatting import plural, pct
from core.registry import RegistryError
from ui import components, loaders
from ui.text import MAX_MESSAGE, md

log = logging.getLogger(__name__)
PAGE_SIZE = 25


def search_ui() -> dict | None:
    """The search form; the query (dict of plain values) once submitted, else the last one."""
    today = dt.date.today()
    with st.form("pacs_search"):
        c1, c2, c3, c4, c5 = st.columns([1, 1, 1, 1, 1])
        date_from = c1.date_input("Study date from", today - dt.timedelta(days=7), key="pacs_from")
        date_to = c2.date_input("to", today, key="pacs_to")
        patient_id = c3.text_input("Patient ID", key="pacs_pid", max_chars=64)
        accession = c4.text_input("Accession number", key="pacs_acc", max_chars=64)
        modality = c5.selectbox("Modality", ["CR and DX", "CR", "DX"], key="pacs_mod")
        if st.form_submit_button("Search", icon=":material/search:", type="primary"):
            st.session_state["pacs_query"] = {
                "date_from": date_from.isoformat() if date_from else None,
                "date_to": date_to.isoformat() if date_to else None,
                "patient_id": patient_id.strip() or None, "accession": accession.strip() or None,
                "modalities": ("CR", "DX") if modality == "CR and DX" else (modality,),
            }
            st.session_state["pacs_page"] = 1
    return st.session_state.get("pacs_query")


def _date(da: str) -> str:
    return f"{da[:4]}-{da[4:6]}-{da[6:8]}" if len(da) >= 8 and da[:8].isdigit() else da


def table_ui(rows: list[dict], url: str, version: str) -> list[str]:
    """The worklist (one page) with row selection; the selected Study Instance UIDs."""
    pages = max(1, -(-len(rows) // PAGE_SIZE))
    page = st.number_input(f"Page (of {pages}, {PAGE_SIZE} studies each)", 1, pages,
                           value=min(st.session_state.get("pacs_page", 1), pages), key="pacs_page")
    shown = rows[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
    analysed = loaders.pacs_results(url, tuple(r["StudyInstanceUID"] for r in shown))
    frame = pd.DataFrame([{
        "Study date": _date(r["StudyDate"]),
        "Patient ID": r["PatientID"], "Patient name": str(r["PatientName"]).replace("^", " "),
        "Age": pacs.age_text(r["PatientBirthDate"], r["StudyDate"]) or r.get("PatientAge", ""),
        "Birth date": _date(r["PatientBirthDate"]), "Description": r["StudyDescription"],
        "Images": r["NumberOfStudyRelatedInstances"], "Modalities": ", ".join(r["ModalitiesInStudy"]),
        "PneumoScope": ", ".join(analysed.get(r["StudyInstanceUID"], [])) or "—",
    } for r in shown])
    event = st.dataframe(frame, hide_index=True, width="stretch", on_select="rerun", selection_mode="multi-row",
                         key=f"pacs_table_{page}",
                         column_config={"PneumoScope": st.column_config.TextColumn(
                             "Analysed", help=f"Model versions whose result is in the PACS (active: {version})")})
    picked = list(getattr(getattr(event, "selection", None), "rows", []) or [])
    return [shown[i]["StudyInstanceUID"] for i in picked if 0 <= i < len(shown)]


def render_result(res: pacs.StudyResult, key: str) -> None:
    """One study's outcome, then the film's result exactly as for an upload."""
    if res.status == "no_image":
        st.warning(md(res.message, MAX_MESSAGE), icon=":material/image_not_supported:")
        return
    if res.status == "already":
        st.info(md(res.message, MAX_MESSAGE), icon=":material/task_alt:")
        return
    if res.prediction is None:
        st.error(md(res.message, MAX_MESSAGE), icon=":material/cloud_off:")
        return
    note = f"Analysed {res.chosen}." + (f" Not analysed: {', '.join(sorted(set(res.skipped)))}." if res.skipped else "")
    st.caption(md(note, MAX_MESSAGE))
    if res.sent:
        st.success("Sent to PACS: a structured report and a heatmap image, in new series of this study.",
                   icon=":material/cloud_done:")
    else:
        st.error(md(f"Not sent to the PACS: {res.message}", MAX_MESSAGE), icon=":material/cloud_off:")
    components.render_case(res.prediction, key=key)


st.title("PACS worklist")
st.caption("Chest radiographs (CR/DX) from the hospital archive. PneumoScope analyses the frontal film of each "
           "study you pick, shows the result as for an upload, and stores it back in the study as a structured "
           "report and a heatmap image (research demo — not for diagnosis).")
try:
    settings = loaders.pacs_settings()
except PacsError as e:
    st.error(md(str(e), MAX_MESSAGE))
    st.stop()
if settings is None:
    st.info("No PACS is configured. Set `PNEUMOSCOPE_DICOMWEB_URL` (for example `http://127.0.0.1:8042/dicom-web`) "
            "or `url` in the `[pacs]` section of `.streamlit/secrets.toml`; see the README, section *PACS*.",
            icon=":material/settings:")
    components.disclaimer_footer()
    st.stop()
st.caption(f"PACS: {md(settings.display_url)}")
version = components.active_version()
if version is None:
    components.no_model_notice()
    st.stop()

query = search_ui()
if query is None:
    st.info("Search the archive to see studies (newest first).", icon=":material/search:")
    components.disclaimer_footer()
    st.stop()
try:
    rows, truncated = loaders.pacs_search(settings.url, query["date_from"], query["date_to"], query["patient_id"],
                                          query["accession"], tuple(query["modalities"]))
except PacsError as e:
    st.error(md(str(e), MAX_MESSAGE), icon=":material/cloud_off:")
    st.stop()
st.subheader(f"{plural(len(rows), 'study', 'studies')}, newest first")
if truncated:
    st.warning("More studies match than one search fetches; narrow the date range to see them all.")
if not rows:
    components.disclaimer_footer()
    st.stop()
picked = table_ui(rows, settings.url, version)
if st.button(f"Analyse {plural(len(picked), 'selected study', 'selected studies')} and send the results to the PACS",
             disabled=not picked, type="primary", icon=":material/play_arrow:", key="pacs_go"):
    try:
        _, predictor = loaders.active_predictor()
    except RegistryError as e:
        st.error(md(e, MAX_MESSAGE))
        st.stop()
    web = DicomWeb(settings)
    results = []
    with st.spinner("Retrieving, analysing and sending..."):
        for uid in picked:
            results.append(pacs.analyse_study(web, predictor, uid))
    loaders.pacs_results.clear()
    st.session_state["pacs_results"] = results
    st.rerun()  # the table's "Analysed" column now shows the results just sent
by_uid = {r["StudyInstanceUID"]: r for r in rows}
for i, res in enumerate(st.session_state.get("pacs_results", [])):
    row = by_uid.get(res.study_uid, {})
    verdict = ""
    if res.prediction is not None and res.prediction.ok:
        verdict = " · rejected" if res.prediction.rejected else f" · {res.prediction.label} {pct(res.prediction.probability)}"
    with st.expander(md(f"{row.get('PatientID', 'study')} · {_date(row.get('StudyDate', ''))}{verdict}"), expanded=True):
        render_result(res, key=f"pacs-{i}")
components.disclaimer_footer()

"""Reader study: read N films alone, then with the AI, and compare (core.reader_study holds the
study, core.reader_stats its statistics, core.reports its PDF and CSV).

One case at a time: the image only -> the clinician records a read (+ confidence) -> the AI
verdict, probability and default heatmap are revealed -> optional revised read -> next.
The study lives in ``st.session_state`` (pause / resume within the session) and is saved
after every step in the shared database (core.db; an unfinished saved study can be resumed from
the setup screen, on any app instance). One browser session writes a study at a time, across
instances: resuming a study another session writes needs an explicit **Take over**, after which
the other session's next save is refused (core.reader_study.save is a compare-and-swap on the
study's revision in the database).
"""

from __future__ import annotations

import logging
import time

import pandas as pd
import streamlit as st

from core import reader_stats, reports
from core import reader_study as rs
from core.formatting import pct, plural
from core.reports import verdict
from ui import charts, components, explain_view, loaders
from ui.text import MAX_MESSAGE, md, md_code, plain

log = logging.getLogger(__name__)

STUDY, PAUSED, CLOCK, PRED = "rs_study", "rs_paused", "rs_clock", "rs_pred"
WRITER, IN_USE, CONFLICT = "rs_writer", "rs_in_use", "rs_conflict"


# --- state helpers ----------------------------------------------------------------------------
def _writer() -> str:
    """This browser session's writer id (random; the one session allowed to save its study)."""
    if WRITER not in st.session_state:
        st.session_state[WRITER] = rs.new_writer_id()
    return st.session_state[WRITER]


def _save(study: rs.Study, step: str) -> bool:
    """Save after ``step`` (words for the message). False when the study cannot go on here.

    A refused save (another session took the study over) ends the study in this session and
    says which step was not saved; the saved study keeps every read confirmed before."""
    try:
        rs.save(study, loaders.registry_root())
    except rs.StudyConflict as e:
        log.warning("Reader study %s: save refused (%s)", study.study_id, e)
        _reset()
        st.session_state[CONFLICT] = f"{md(e, MAX_MESSAGE)} **Not saved:** {md(step)}."
        st.rerun()
    except rs.ReaderStudyError as e:  # database unreachable, or the stored study is damaged: nothing overwritten
        st.error(f"{md(e, MAX_MESSAGE)} Your last step ({md(step)}) was not saved.", icon=":material/error:")
        return False
    return True


def _film(study: rs.Study, i: int):
    """Case ``i``'s file, resolved inside the study's film folder (core.reader_study)."""
    return study.film_path(i, loaders.data_root())


def _elapsed(i: int) -> float:
    """Seconds on case ``i`` so far, pauses excluded."""
    clock = st.session_state.get(CLOCK)
    if not clock or clock["case"] != i:
        clock = {"case": i, "acc": 0.0, "t0": time.monotonic()}
        st.session_state[CLOCK] = clock
    return clock["acc"] + (time.monotonic() - clock["t0"] if clock["t0"] is not None else 0.0)


def _pause_clock(paused: bool) -> None:
    clock = st.session_state.get(CLOCK)
    if clock:
        if paused and clock["t0"] is not None:
            clock["acc"] += time.monotonic() - clock["t0"]
            clock["t0"] = None
        elif not paused and clock["t0"] is None:
            clock["t0"] = time.monotonic()
    st.session_state[PAUSED] = paused


def _begin(study: rs.Study) -> None:
    st.session_state[STUDY] = study
    st.session_state[PAUSED] = False
    st.session_state.pop(CLOCK, None)
    st.session_state.pop(PRED, None)


def _reset() -> None:
    for k in (STUDY, PAUSED, CLOCK, PRED):
        st.session_state.pop(k, None)


# --- setup --------------------------------------------------------------------------------------
def setup_ui(version: str) -> None:
    """N, seed, start; or resume an unfinished study saved on this machine."""
    root, pool, source, warning = loaders.film_pool(str(loaders.data_root()))
    if warning:
        st.warning(warning, icon=":material/warning:")
    st.markdown(f"**{len(pool)} films** available from the {source}. They are drawn stratified by class "
                "(in proportion, at least one of each) in a random order fixed by the seed.")
    if len(pool) < rs.MIN_N:
        st.error("There are not enough films to run a study.")
        return
    row = st.container(horizontal=True, wrap=True)
    n = row.number_input("Number of films (N)", min_value=rs.MIN_N, max_value=len(pool),
                         value=min(rs.DEFAULT_N, len(pool)), step=1, key="rs_n", width=220)
    seed = row.number_input("Seed", min_value=0, max_value=2**31 - 1, value=0, step=1, key="rs_seed", width=220,
                            help="The same seed and N give the same films in the same order.")
    st.caption("Each film: record your own read first; then the model's verdict, probability and heatmap are "
               "shown and you may revise your read. Time per case is recorded. Your reader id is random, not your name.")
    if st.button("Start the study", type="primary", icon=":material/play_arrow:", key="rs_start"):
        try:
            films = rs.draw_films(pool, n, seed)
            threshold = loaders.operating_point(version).get("threshold")
            study = rs.Study.create(films, root=root, model_version=version, seed=seed, source=source,
                                    threshold=threshold, writer=_writer())
        except (rs.ReaderStudyError, ValueError) as e:
            st.error(md(e, MAX_MESSAGE))
            return
        if _save(study, "the new study"):
            _begin(study)
            st.rerun()
    resume_saved_ui()


def _resume(study_id: str, take_over: bool = False) -> None:
    """Claim a saved study for this session (refused while another session writes it, unless
    ``take_over``) and open it; films leading outside their folder refuse the study by name."""
    try:
        study = rs.open_for_writing(study_id, _writer(), loaders.registry_root(), take_over=take_over)
    except rs.StudyInUse:
        st.session_state[IN_USE] = study_id
        st.rerun()
    except (rs.ReaderStudyError, OSError) as e:
        st.error(md(e, MAX_MESSAGE), icon=":material/error:")
        return
    problems = study.film_problems(loaders.data_root())
    if problems:
        st.error(f"Study {md_code(study_id)} cannot be resumed here: {md(problems[0], MAX_MESSAGE)}"
                 + (f" ({len(problems) - 1} more film(s) like it.)" if len(problems) > 1 else ""),
                 icon=":material/error:")
        return
    st.session_state.pop(IN_USE, None)
    _begin(study)
    st.rerun()


def _option(s: rs.Study) -> str:
    """A saved study in the picker (plain text: selectbox options are not Markdown)."""
    busy = " · open in another session" if s.writer not in (None, _writer()) else ""
    return (f"{plain(s.study_id)} · model {plain(s.model_version)} · "
            f"{sum(c.done for c in s.cases)} of {s.n} read{busy}")


def resume_saved_ui() -> None:
    try:
        saved, refused = rs.scan_studies(loaders.registry_root())
    except OSError:
        return
    open_studies = {s.study_id: s for s in saved if not s.complete}
    if refused:
        with st.expander(f"{len(refused)} saved study file(s) refused", icon=":material/warning:"):
            for msg in refused:
                st.caption(md(msg, MAX_MESSAGE))
    if not open_studies:
        return
    ids, in_use = list(open_studies), st.session_state.get(IN_USE)
    with st.expander(f"Resume an unfinished study ({len(ids)} saved)", expanded=in_use in open_studies):
        pick = st.selectbox("Saved study", ids, key="rs_saved", index=ids.index(in_use) if in_use in ids else 0,
                            format_func=lambda sid: _option(open_studies[sid]))
        if pick is not None and pick == in_use:
            other = open_studies[pick]
            st.warning(f"Study {md_code(pick)} is open in another browser session (last saved "
                       f"{md(other.saved or 'earlier')}, {sum(c.done for c in other.cases)} of {other.n} cases done). "
                       "Only one session can record reads. **Take over** only if that session is no longer used: it "
                       "will not be able to save any further read; every read saved so far stays in the study.",
                       icon=":material/group:")
            if st.button("Take over here", key="rs_take_over", type="primary", icon=":material/swap_horiz:"):
                _resume(pick, take_over=True)
        elif st.button("Resume", key="rs_resume_saved", icon=":material/history:"):
            _resume(pick)


# --- one case -----------------------------------------------------------------------------
def film_ui(study: rs.Study, i: int) -> bool:
    """The film alone; False when it cannot be read."""
    from core.imageio import ImageError

    try:
        image, _ = loaders.full_image(str(_film(study, i)))
    except rs.ReaderStudyError as e:  # a film path leading outside its folder: not read
        st.error(f"{md(e, MAX_MESSAGE)} Start a new study, or check the data folder.", icon=":material/error:")
        return False
    except (ImageError, OSError) as e:
        st.error(f"Film {i + 1} ({md(study.cases[i].path)}) cannot be read: {md(e, MAX_MESSAGE)}. Check the data folder, "
                 "or start a new study.", icon=":material/error:")
        return False
    st.image(image, caption=f"Film {i + 1} of {study.n}", width="stretch", alt="Chest X-ray to read")
    return True


def read_ui(study: rs.Study, i: int) -> None:
    """Step 1: the reader's own read, before any AI output."""
    key = f"rs-{study.study_id}-{i}"
    with st.container(border=True):
        st.markdown("**Your read** (the AI output is shown after you record it)")
        label = st.radio("Finding", rs.READS, index=None, horizontal=True, key=f"{key}-read")
        conf = st.select_slider("Confidence", rs.CONFIDENCE_LEVELS, value=3, key=f"{key}-conf", help=rs.CONFIDENCE_HELP)
        if st.button("Record my read", type="primary", key=f"{key}-record", icon=":material/edit_note:"):
            if label is None:
                st.error("Choose NORMAL or PNEUMONIA first.")
                return
            try:
                study.record_first_read(i, label, conf, _elapsed(i))
            except rs.ReaderStudyError as e:
                st.error(md(e, MAX_MESSAGE))
                return
            if _save(study, f"your read of case {i + 1} ({label}, confidence {conf})"):
                st.rerun()


def _prediction(study: rs.Study, i: int):
    """The model's Prediction for case ``i`` (with its default heatmap), once per case."""
    cached = st.session_state.get(PRED)
    if cached and cached[0] == (study.study_id, i):
        return cached[1]
    predictor = loaders.load_predictor(loaders.registry_root(), study.model_version)
    with st.spinner("Running the model..."):
        pred = predictor.predict_paths([_film(study, i)], with_map=True)[0]
    explain_view.note_grid(predictor, pred.heatmap_method, pred.heatmap_layer)  # the caption says how coarse the map is
    st.session_state[PRED] = ((study.study_id, i), pred)
    return pred


def reveal_ui(study: rs.Study, i: int) -> None:
    """Step 2: the AI verdict, probability and default heatmap; step 3: optional revision."""
    c = study.cases[i]
    try:
        pred = _prediction(study, i)
    except Exception as e:  # noqa: BLE001 - a missing or damaged model version: a message, not a traceback
        log.exception("Reader study %s: model %s failed", study.study_id, study.model_version)
        st.error(f"The study's model {md_code(study.model_version)} could not be run ({type(e).__name__}: {md(e, MAX_MESSAGE)}). "
                 "It may have been deleted; start a new study with the active model.")
        return
    if not c.revealed:
        study.reveal_ai(i, pred.label if pred.ok else "ERROR", pred.probability if pred.ok else None,
                        pred.threshold, pred.heatmap_method)
        if not _save(study, f"the AI output of case {i + 1}"):
            return
    st.markdown(f"Your read: **{md(c.first_read)}** (confidence {md(c.first_confidence)} of 5)")  # a resumed study is read from disk
    v = verdict(pred)
    with st.container(border=True):
        st.markdown(f"#### AI: :{v.color}[{v.title}]")
        if pred.ok and not pred.rejected:
            st.markdown(f"Probability of pneumonia **{pct(pred.probability)}** · threshold {pct(pred.threshold)}")
        st.caption(v.explanation)
    if pred.ok:
        explain_view.render_overlay(pred, alt="Heatmap overlay")
    revise_ui(study, i)


def revise_ui(study: rs.Study, i: int) -> None:
    c = study.cases[i]
    key = f"rs-{study.study_id}-{i}"
    last = study.current == len(study.cases) - 1
    with st.container(border=True):
        st.markdown("**Your final read** (change it if the AI changed your mind)")
        label = st.radio("Finding after the AI", rs.READS, index=rs.READS.index(c.first_read), horizontal=True, key=f"{key}-rev")
        conf = st.select_slider("Confidence after the AI", rs.CONFIDENCE_LEVELS, value=c.first_confidence,
                                key=f"{key}-rev-conf", help=rs.CONFIDENCE_HELP)
        if st.button("Finish the study" if last else "Next case", type="primary", key=f"{key}-next",
                     icon=":material/done_all:" if last else ":material/arrow_forward:"):
            try:
                same = label == c.first_read and conf == c.first_confidence
                study.record_revision(i, None if same else label, None if same else conf)
                study.finish_case(i, _elapsed(i))
            except rs.ReaderStudyError as e:
                st.error(md(e, MAX_MESSAGE))
                return
            if not _save(study, f"your final read of case {i + 1} ({label}, confidence {conf})"):
                return
            if study.complete:
                rs.audit_finished(study)
            st.session_state.pop(PRED, None)
            st.rerun()


def case_ui(study: rs.Study) -> None:
    i = study.current
    done = sum(c.done for c in study.cases)
    st.progress(done / study.n, text=f"Case {i + 1} of {study.n} · study {md_code(study.study_id)} · reader {md_code(study.reader_id)}")
    _elapsed(i)  # start the clock when the film is first shown
    if st.button("Pause", key="rs_pause", icon=":material/pause:"):
        _pause_clock(True)
        st.rerun()
    left, right = st.columns(2, gap="large")
    with left:
        ok = film_ui(study, i)
    if not ok:
        return
    with right:
        if study.cases[i].first_read is None:
            read_ui(study, i)
        else:
            reveal_ui(study, i)


def paused_ui(study: rs.Study) -> None:
    done = sum(c.done for c in study.cases)
    st.info(f"Study {md_code(study.study_id)} is paused after {done} of {study.n} cases. The film is hidden; "
            "the time per case does not run while paused.", icon=":material/pause_circle:")
    row = st.container(horizontal=True, wrap=True)
    if row.button("Resume", type="primary", key="rs_resume", icon=":material/play_arrow:"):
        _pause_clock(False)
        st.rerun()
    if row.button("Start a new study", key="rs_new_paused", icon=":material/restart_alt:",
                  help="This study stays saved; resume it later from the setup screen."):
        _reset()
        st.rerun()


# --- the end ----------------------------------------------------------------------------------
def roc_figure(res: dict, study: rs.Study):
    roc = res["roc"]
    model_pt = res["operating_points"]["model"]
    fig = charts.roc_curve(roc or {}, roc["auc"] if roc else None, point=model_pt)
    fig.data[-1].name = "model at its threshold" if model_pt else fig.data[-1].name
    test = (loaders.metrics(study.model_version) or {}).get("test") or {}
    curve = test.get("roc_curve") or {}
    if curve.get("fpr") and study.source == rs.SOURCE_TEST:  # the same model on the whole test split, for scale
        fig.add_scatter(x=curve["fpr"], y=curve["tpr"], mode="lines", name=f"model, whole test split (n = {test.get('n', '?')})",
                        line=dict(color="#999", width=1.5, dash="dash"))
    # The reader alone is a ring around where reader + AI is a small filled diamond: when the AI
    # changed no read the two points coincide and both stay visible (a filled circle under the
    # diamond was hidden). Never clipped at x = 1 or y = 1 (charts.operating_marker).
    for arm, marker in (("reader", dict(size=22, symbol="circle-open", color="#2e7d5b", line=dict(width=3))),
                        ("reader_ai", dict(size=11, symbol="diamond", color="#8e44ad", line=dict(width=1, color="#222")))):
        pt = res["operating_points"][arm]
        if pt is not None:
            charts.operating_marker(fig, pt, reader_stats.ARM_LABELS[arm].lower(), **marker)
    fig.update_layout(title=f"Model ROC on the {res['n_cases']} study films" + (f" (AUC {roc['auc']:.3f})" if roc else ""))
    return fig


def changes_ui(res: dict) -> None:
    ch = res["changes"]
    st.markdown(
        f"The AI output changed **{ch['n_changed']} of {res['n_cases']}** reads ({pct(ch['rate'])}): "
        f"**{ch['n_right']}** to the right answer, **{ch['n_wrong']}** to a wrong one; "
        f"{ch['n_toward_ai']} toward the AI's call. Your first read disagreed with the AI on "
        f"{plural(ch['n_first_disagreed_with_ai'], 'film')}."
    )
    if ch["cases"]:
        st.table(pd.DataFrame([{"Case": md(c["case"]), "Truth": md(c["truth"]), "First read": md(c["from"]), "AI": md(c["ai"]),
                                "Final read": md(c["to"]), "Change was": "right" if c["right"] else "wrong"}
                               for c in ch["cases"]]), hide_index=True)


def end_ui(study: rs.Study) -> None:
    res = reader_stats.results(study)
    # The ids on lines of their own: inside a sentence a narrow window broke them at a hyphen.
    st.success(f"Study complete: {plural(res['n_cases'], 'film')} read (seed {md(study.seed)}, films from the {md(study.source)}).\n\n"
               f"- study {md_code(study.study_id)}\n- reader {md_code(study.reader_id)}\n- model {md_code(study.model_version)}",
               icon=":material/task_alt:")
    st.subheader("Sensitivity and specificity")
    st.table(pd.DataFrame(reports.study_metrics_table(res)), hide_index=True)
    st.caption("95 % confidence intervals: Wilson score intervals. " + res["model_rule"] +
               " Reader + AI = the revised read where there is one, else the first read.")
    st.subheader("Confusion matrices")
    # Three across where there is room, fewer per row in a 1024 px window: three fixed columns
    # squeezed each matrix into a strip there (labels turned vertical, the axis title cut).
    row = st.container(horizontal=True, wrap=True, gap="small")
    for arm, r in res["arms"].items():
        with row, st.container(width=270):  # two across at 1024 px, three at 1440 px
            st.plotly_chart(charts.confusion_matrix(r["confusion_matrix"], title=reader_stats.ARM_LABELS[arm]), key=f"rs-cm-{arm}")
    st.subheader("Model ROC with your operating points")
    if res["roc"] is None:
        st.info("No ROC: the study films need both classes and a probability for every film.")
    st.plotly_chart(roc_figure(res, study), key="rs-roc")
    st.subheader("Did the AI change your reads?")
    changes_ui(res)
    t = res["time"]
    if t["median_case_s"] is not None:
        st.caption(f"Median time per case {t['median_case_s']:.0f} s (first read {t['median_read_s']:.0f} s); "
                   f"total {t['total_s'] / 60:.1f} min.")
    row = st.container(horizontal=True, wrap=True)
    row.download_button("Results (CSV)", reports.study_csv(study), file_name=f"{study.study_id}.csv", mime="text/csv",
                        icon=":material/download:", on_click="ignore", key="rs-csv")
    row.download_button("Report (PDF)", lambda: reports.study_pdf(study, res), file_name=f"{study.study_id}.pdf",
                        mime="application/pdf", icon=":material/picture_as_pdf:", on_click="ignore", key="rs-pdf")
    if row.button("Start a new study", key="rs_new", icon=":material/restart_alt:"):
        _reset()
        st.rerun()


# --- page ------------------------------------------------------------------------------------
st.title("Reader study")
st.caption("Read a set of films yourself, first without and then with the AI, and see how you compare with the "
           "model: sensitivity and specificity with 95 % CIs, confusion matrices and your operating points on "
           "the model's ROC.")
version = components.active_version()
study = st.session_state.get(STUDY)
if st.session_state.get(CONFLICT):  # this session's save was refused: say what was not saved
    st.error(st.session_state.pop(CONFLICT), icon=":material/sync_problem:")
if study is None:
    if version is None:
        components.no_model_notice()
    else:
        setup_ui(version)
elif st.session_state.get(PAUSED):
    paused_ui(study)
elif study.complete:
    end_ui(study)
else:
    case_ui(study)
components.disclaimer_footer()

"""The reader-study page (AppTest on the tiny model) and the Predict page's read-first mode."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest

from test_app_pages import SAMPLES, app_registry, empty_env, env, open_page, texts  # noqa: F401 - fixtures

PAGE = "app_pages/reader_study.py"


def _ai_shown(at) -> bool:
    return any("AI:" in str(m.value) for m in at.markdown)


def _study_audit(env, sid: str) -> list[dict]:
    """The ``reader_study`` audit events of one study (the module's tests share one artifacts root)."""
    from core import audit

    return [e for e in audit.read(env["root"], actions=["reader_study"]) if e.get("study_id") == sid]


def _start(at, n: int, seed: int = 1):
    at.number_input(key="rs_n").set_value(n)
    at.number_input(key="rs_seed").set_value(seed)
    at.button(key="rs_start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at.session_state["rs_study"]


@pytest.mark.slow
def test_reader_study_page_completes_a_5_case_study(env):
    at = open_page(PAGE)
    assert "films** available from the official test split" in texts(at.markdown)
    study = _start(at, 5)
    sid = study.study_id
    assert study.n == 5 and {c.truth for c in study.cases} == {"NORMAL", "PNEUMONIA"}
    assert re.fullmatch(r"r-[0-9a-f]{12}", study.reader_id) and study.model_version == "v0001-tiny"
    for i in range(5):
        assert not _ai_shown(at), f"AI output visible before the read of case {i + 1}"
        assert len(at.get("image")) == 1  # the film only: no heatmap overlay yet
        if i == 0:  # no finding chosen: a message, and still no AI output
            at.button(key=f"rs-{sid}-{i}-record").click().run()
            assert "Choose NORMAL or PNEUMONIA" in texts(at.error) and not _ai_shown(at)
        at.radio(key=f"rs-{sid}-{i}-read").set_value("NORMAL" if i % 2 else "PNEUMONIA")
        at.select_slider(key=f"rs-{sid}-{i}-conf").set_value(4)
        at.button(key=f"rs-{sid}-{i}-record").click().run()
        assert not at.exception, [e.value for e in at.exception]
        assert _ai_shown(at), texts(at.markdown)
        assert len(at.get("image")) == 2 or "no region raised" in texts(at.info)  # film + heatmap (or a flat map in words)
        if len(at.get("image")) == 2:  # the caption says how coarse the map is (issue 22)
            assert re.search(r"coarse: \d+ x \d+ cells over the 32 px copy", texts(at.caption)), texts(at.caption)
        assert "Probability of pneumonia" in texts(at.markdown) or "rejected" in texts(at.markdown).lower()
        c = at.session_state["rs_study"].cases[i]
        assert c.first_read and c.first_confidence == 4 and c.ai_label and c.read_seconds is not None
        if i == 1:  # the AI-assisted second read
            at.radio(key=f"rs-{sid}-{i}-rev").set_value("PNEUMONIA")
        at.button(key=f"rs-{sid}-{i}-next").click().run()
        assert not at.exception, [e.value for e in at.exception]
        if i == 2:  # pause and resume within the session: the film is hidden while paused
            at.button(key="rs_pause").click().run()
            assert "paused after 3 of 5" in texts(at.info) and not at.radio and not at.get("image")
            assert at.button(key="rs_new_paused") is not None  # leaves the study saved
            at.button(key="rs_resume").click().run()
            assert at.radio(key=f"rs-{sid}-3-read") is not None

    assert "Study complete: 5 films read" in texts(at.success) and f"- study `{sid}`" in texts(at.success)
    table = at.table[0].value
    assert list(table["Arm"]) == ["Reader alone", "Model alone", "Reader + AI"]
    assert {"Sensitivity 95 % CI", "Specificity 95 % CI"} <= set(table.columns)
    assert "INDETERMINATE" in texts(at.caption) and "positive" in texts(at.caption)
    assert "changed **1 of 5** reads" in texts(at.markdown)
    (m,) = re.findall(r"disagreed with the AI on (\d+) (films?)\.", texts(at.markdown))
    assert m[1] == ("film" if m[0] == "1" else "films")  # never "on 1 films" (issue 22)
    assert "5 films read" in texts(at.success)
    assert len(at.get("plotly_chart")) == 4  # three confusion matrices + the ROC
    roc = json.loads(at.get("plotly_chart")[-1].proto.spec)
    names = {t.get("name") for t in roc["data"]}
    assert {"reader alone", "reader + ai", "model at its threshold"} <= names
    assert any(str(n).startswith("model, whole test split") for n in names)  # the version's stored test ROC
    assert len(at.get("download_button")) == 2

    from core import reader_study as rs
    from core.reports import study_csv

    saved = rs.load(sid, env["root"]).to_dict()  # what the database holds
    assert saved["finished"] and len(saved["cases"]) == 5 and all(c["done"] for c in saved["cases"])
    assert saved["cases"][1]["revised_read"] == "PNEUMONIA" and saved["cases"][0]["revised_read"] is None
    (line,) = _study_audit(env, sid)
    assert line["outcome"] == "finished" and line["n_cases"] == 5 and line["reader_id"] == study.reader_id

    rows = list(csv.DictReader(io.StringIO(study_csv(rs.load(sid, env["root"])).decode())))
    assert [r["case"] for r in rows] == ["1", "2", "3", "4", "5"]

    at.button(key="rs_new").click().run()
    assert at.button(key="rs_start") is not None


def test_reader_study_without_dataset_uses_the_bundled_samples_with_a_warning(env, monkeypatch, tmp_path):
    monkeypatch.setenv("PNEUMOSCOPE_DATA_ROOT", str(tmp_path / "no-data"))
    at = open_page(PAGE)
    assert "bundled sample" in texts(at.warning) and "small" in texts(at.warning)
    assert "from the bundled samples" in texts(at.markdown)


# --- read-first mode on the Predict page ----------------------------------------------------
VERDICTS = ("Pneumonia suspected", "No pneumonia detected", "Indeterminate — refer", "No verdict")


def _verdict_shown(at) -> bool:
    shown = texts(at.markdown)
    return any(v in shown for v in VERDICTS) or any(m.label == "Probability" for m in at.metric)


@pytest.mark.slow
def test_read_first_hides_the_verdict_until_the_clinicians_read_is_recorded(env):
    at = open_page()
    at.toggle(key="read_first").set_value(True).run()
    at.button(key="sample_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not _verdict_shown(at), texts(at.markdown)
    assert not [s for s in at.slider if s.label == "Heatmap opacity"]  # no heatmap either
    assert not at.get("download_button")  # nor the report that carries the verdict
    record = [b for b in at.button if b.label.startswith("Record my read")][0]
    record.click().run()  # no read chosen yet
    assert "Choose NORMAL or PNEUMONIA first" in texts(at.error) and not _verdict_shown(at)
    [r for r in at.radio if r.label == "Your read"][0].set_value("PNEUMONIA")
    [b for b in at.button if b.label.startswith("Record my read")][0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert _verdict_shown(at), texts(at.markdown)
    assert "recorded before the AI verdict: **PNEUMONIA**" in texts(at.info)
    assert [s for s in at.slider if s.label == "Heatmap opacity"]

    # Off: the verdict shows straight away (nothing is asked).
    at.toggle(key="read_first").set_value(False).run()
    at.selectbox(key="sample_pick").set_value(1)
    at.button(key="sample_go").click().run()
    assert _verdict_shown(at) and not [r for r in at.radio if r.label == "Your read"]


@pytest.mark.slow
def test_read_first_hides_the_batch_results_table(env):
    files = sorted((SAMPLES / "test" / "NORMAL").iterdir())[:2]
    at = open_page()
    at.toggle(key="read_first").set_value(True).run()
    at.file_uploader[0].set_value([(f.name, f.read_bytes(), "image/jpeg") for f in files]).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.dataframe and not _verdict_shown(at)
    assert "results table is hidden" in texts(at.caption)
    [r for r in at.radio if r.label == "Your read"][0].set_value("NORMAL")
    [b for b in at.button if b.label.startswith("Record my read")][0].click().run()
    assert _verdict_shown(at)


def test_reader_study_page_without_a_model_says_so(empty_env):
    at = open_page(PAGE)
    assert "No model is available yet" in texts(at.info)
    assert not at.button


@pytest.mark.slow
def test_saved_unfinished_study_resumes_and_a_missing_model_is_a_message(env):
    from core import reader_study as rs

    root, pool, source, _ = rs.film_pool(SAMPLES)
    study = rs.Study.create(rs.draw_films(pool, 2, 0), root=root, model_version="v0099-deleted", seed=0, source=source)
    rs.save(study, env["root"])
    at = open_page(PAGE)
    at.selectbox(key="rs_saved").set_value(study.study_id)
    at.button(key="rs_resume_saved").click().run()
    assert at.session_state["rs_study"].study_id == study.study_id
    at.radio(key=f"rs-{study.study_id}-0-read").set_value("NORMAL")
    at.button(key=f"rs-{study.study_id}-0-record").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "v0099-deleted" in texts(at.error) and "could not be run" in texts(at.error)
    saved = rs.load(study.study_id, env["root"])
    assert saved.cases[0].first_read == "NORMAL" and saved.cases[0].ai_label is None  # nothing invented


@pytest.mark.slow
def test_a_second_session_must_take_over_and_the_first_sessions_next_save_is_refused(env):
    """Issue 21: two sessions resuming one study overwrote each other's reads. Now the second
    session is refused until it takes over explicitly; the first session's next step is refused
    with a message naming what was not saved; every confirmed read stays saved."""
    from core import reader_study as rs

    a = open_page(PAGE)
    sid = _start(a, 2).study_id
    a.radio(key=f"rs-{sid}-0-read").set_value("PNEUMONIA")
    a.select_slider(key=f"rs-{sid}-0-conf").set_value(5)
    a.button(key=f"rs-{sid}-0-record").click().run()  # confirmed: saved, the AI output shown
    assert _ai_shown(a) and rs.load(sid, env["root"]).cases[0].first_read == "PNEUMONIA"

    b = open_page(PAGE)
    b.selectbox(key="rs_saved").set_value(sid)
    b.button(key="rs_resume_saved").click().run()
    assert "rs_study" not in b.session_state  # refused: A is the writer
    assert "open in another browser session" in texts(b.warning)
    b.button(key="rs_take_over").click().run()
    assert not b.exception, [e.value for e in b.exception]
    assert b.session_state["rs_study"].study_id == sid and _ai_shown(b)  # B continues after A's confirmed read

    a.button(key=f"rs-{sid}-0-next").click().run()  # A's next save is refused
    assert not a.exception, [e.value for e in a.exception]
    assert "rs_study" not in a.session_state
    err = texts(a.error)
    assert "took this study over" in err and "Not saved:" in err and "final read of case 1" in err
    assert rs.load(sid, env["root"]).cases[0].done is False  # nothing from A's stale copy was written

    b.button(key=f"rs-{sid}-0-next").click().run()
    assert not b.exception, [e.value for e in b.exception]
    saved = rs.load(sid, env["root"])
    assert saved.cases[0].done and saved.cases[0].first_read == "PNEUMONIA" and saved.cases[0].first_confidence == 5
    assert [e["outcome"] for e in _study_audit(env, sid)] == ["taken_over"]


@pytest.mark.slow  # an AppTest flow of 1.4-2.3 s: CI's slow set keeps the default run under 3 min
def test_a_study_whose_film_leads_outside_the_data_folder_is_refused_by_name(env, tmp_path, monkeypatch):
    """A saved study with a symlinked film pointing out of the data folder cannot be resumed;
    a saved study with an absolute film path is listed as refused; nothing outside is read."""
    import os
    import shutil

    from core import db as dbm
    from core import reader_study as rs

    data = tmp_path / "data"
    shutil.copytree(SAMPLES, data)
    secret = tmp_path / "secret.png"
    shutil.copy(next((data / "test" / "NORMAL").iterdir()), secret)
    os.symlink(secret, data / "test" / "NORMAL" / "zz-link.png")
    monkeypatch.setenv("PNEUMOSCOPE_DATA_ROOT", str(data))
    films = [rs.Film("test/NORMAL/zz-link.png", "NORMAL"), rs.Film(
        next((data / "test" / "PNEUMONIA").iterdir()).relative_to(data).as_posix(), "PNEUMONIA")]
    linked = rs.Study.create(films, root=data, model_version="v0001-tiny", seed=0, source=rs.SOURCE_TEST)
    rs.save(linked, env["root"])
    absolute = rs.Study.create(films, root=data, model_version="v0001-tiny", seed=0, source=rs.SOURCE_TEST)
    rs.save(absolute, env["root"])
    db = dbm.connect(env["root"])
    d = absolute.to_dict()
    d["cases"][0]["path"] = str(secret)
    db.put(rs.KIND, absolute.study_id, d)  # a tampered row, written behind the store's back

    try:  # the registry is shared by this module's tests: remove both studies afterwards
        at = open_page(PAGE)
        assert "saved study file(s) refused" in " ".join(e.label for e in at.expander)
        refused = texts(at.caption)  # (ids are escaped Markdown: match their last, punctuation-free part)
        assert absolute.study_id.rsplit("-", 1)[1] in refused and "is absolute" in refused
        assert [o for o in at.selectbox(key="rs_saved").options if linked.study_id in o]
        at.selectbox(key="rs_saved").set_value(linked.study_id)
        at.button(key="rs_resume_saved").click().run()
        assert not at.exception, [e.value for e in at.exception]
        assert "rs_study" not in at.session_state
        assert "cannot be resumed here" in texts(at.error) and "leads outside the data folder" in texts(at.error)
    finally:
        for s in (linked, absolute):
            db.delete(rs.KIND, s.study_id)

"""core.pacs / core.dicomweb / core.dicom_results against a real Orthanc started by the test
(issue 24): search, pick the frontal film, analyse it like an upload, send back a Structured
Report and a Secondary Capture, re-read them from Orthanc; faults; the watch loop across a
restart. Orthanc comes from Debian's packages; without it these tests skip with that reason.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
import time

import numpy as np
import pydicom
import pytest
import requests

import orthanc as O
from core import audit, pacs
from core.dicomweb import DicomWeb, PacsError, PacsSettings
from core.pacs import WatchState, analyse_study, choose_frontal


# --- settings (no server needed) --------------------------------------------------------------
def test_settings_from_secrets_over_the_environment_and_credentials_never_shown(monkeypatch):
    monkeypatch.setenv("PNEUMOSCOPE_DICOMWEB_URL", "http://env-host:8042/dicom-web")
    monkeypatch.setenv("PNEUMOSCOPE_DICOMWEB_PASSWORD", "env-secret")
    s = PacsSettings.from_env({"url": "https://pacs.example:443/dicom-web/", "username": "u", "password": "s3cret"})
    assert s.url == "https://pacs.example:443/dicom-web" and s.verify is True  # TLS verification on by default
    assert "s3cret" not in repr(s) and "s3cret" not in s.display_url
    with pytest.raises(PacsError) as e:
        PacsSettings(url="http://admin:hunter2@pacs:8042/dicom-web")
    assert "hunter2" not in str(e.value) and "admin" not in str(e.value) and e.value.kind == "config"
    with pytest.raises(PacsError, match="Received: url='ftp://x'"):
        PacsSettings(url="ftp://x")
    monkeypatch.setenv("PNEUMOSCOPE_DICOMWEB_VERIFY", "off")
    assert PacsSettings.from_env().verify is False
    monkeypatch.delenv("PNEUMOSCOPE_DICOMWEB_URL")
    assert PacsSettings.from_env() is None


def _inst(view, modality="DX", frames=1, body="CHEST", number=1, rows=2000, cols=2000, **kw):
    return {"Modality": modality, "ViewPosition": view, "NumberOfFrames": frames, "BodyPartExamined": body,
            "InstanceNumber": number, "Rows": rows, "Columns": cols, "SOPInstanceUID": f"1.{number}",
            "SeriesInstanceUID": "1.9", **kw}


def test_choose_frontal_prefers_pa_and_says_what_it_skipped():
    chosen, why, skipped = choose_frontal([_inst("LL", number=1), _inst("AP", number=2), _inst("PA", number=3),
                                           _inst("", modality="CT", number=4), _inst("PA", frames=12, number=5),
                                           _inst("PA", body="HAND", number=6),
                                           _inst("PA", number=7, Manufacturer="PneumoScope (research demo)")])
    assert chosen["InstanceNumber"] == 3 and "PA (frontal)" in why
    text = " | ".join(skipped)
    assert "lateral view (LL" in text and "CT image (not a radiograph)" in text
    assert "multi-frame object (12 frames)" in text and "body part HAND" in text
    assert "another frontal candidate" in text  # the AP one
    chosen, why, _ = choose_frontal([_inst(""), _inst("LL", number=2)])
    assert chosen["InstanceNumber"] == 1 and "not recorded" in why
    assert choose_frontal([_inst("LL"), _inst("", modality="CT")])[0] is None


def test_age_text():
    assert pacs.age_text("20210314", "20261201") == "5 y"
    assert pacs.age_text("20260314", "20261201") == "8 mo"
    assert pacs.age_text("", "20261201") == ""


# --- against Orthanc (slow set: a server process per module, a model, real HTTP) ---------------
def test_versions_done_are_read_from_the_image_list_or_asked_for_when_it_lacks_descriptions():
    from core.dicom_results import RESULT_PREFIX

    rows = [{"Modality": "CR", "SeriesDescription": RESULT_PREFIX + "v9"},  # not an SR: not a result
            {"Modality": "SR", "SeriesDescription": RESULT_PREFIX + "v1"},
            {"Modality": "SR", "SeriesDescription": RESULT_PREFIX + "v1"},
            {"Modality": "SR", "SeriesDescription": "Radiologist report"},
            {"Modality": "SR", "SeriesDescription": RESULT_PREFIX + " v2 "}]
    assert pacs.result_versions(rows) == ["v1", "v2"]

    class Web:  # a PACS that answers the series query only
        asked = 0

        def series_of(self, study_uid, modality=None):
            Web.asked += 1
            return [{"Modality": "SR", "SeriesDescription": RESULT_PREFIX + "v3"}]

    assert pacs._versions_done(Web(), "1.2", rows) == ["v1", "v2"] and Web.asked == 0
    assert pacs._versions_done(Web(), "1.2", [{"Modality": "CR"}]) == [] and Web.asked == 0  # no SR: nothing to ask
    assert pacs._versions_done(Web(), "1.2", [{"Modality": "CR"}, {"Modality": "SR"}]) == ["v3"] and Web.asked == 1


# --- the watcher's state: one document per study in the shared database -----------------------
def test_watch_state_is_shared_by_instances_and_gives_a_failing_study_up(tmp_path):
    a, b = WatchState(tmp_path), WatchState(tmp_path)  # two instances (processes) on one database
    a.record("1.2.3", "failed", "v9", "did not answer")
    assert not b.done("1.2.3") and b.entry("1.2.3")["attempts"] == 1
    for _ in range(pacs.WATCH_MAX_ATTEMPTS - 1):
        b.record("1.2.3", "failed", "v9", "did not answer")
    assert a.done("1.2.3") and a.entry("1.2.3")["status"] == "given_up"
    a.record("1.2.4", "done", "v9")
    assert b.done("1.2.4") and b.entry("1.2.4")["reason"] == ""
    assert {d.key for d in a.db.list(pacs.STUDY_KIND)} == {pacs.uid_sha256("1.2.3"), pacs.uid_sha256("1.2.4")}


def test_the_old_state_file_is_imported_once_with_its_entries_bounded(tmp_path, caplog):
    sha = pacs.uid_sha256
    old = tmp_path / "pacs" / "watch_state.json"
    old.parent.mkdir()
    studies = {sha("1.1"): {"status": "done", "attempts": 0, "model_version": "v1", "time": "t", "reason": ""},
               sha("1.2"): {"status": "failed", "attempts": "2", "model_version": None, "reason": "x" * 5000},
               sha("1.3"): {"status": "hacked"}, "not-a-sha": {"status": "done"}, sha("1.4"): ["not", "a", "dict"]}
    old.write_text(json.dumps({"version": 1, "studies": studies}))
    with caplog.at_level(logging.INFO, logger="core.pacs"):
        state = WatchState(tmp_path)
    assert state.done("1.1") and not state.done("1.2") and state.entry("1.3") is None and state.entry("1.4") is None
    assert state.entry("1.2")["attempts"] == 2 and len(state.entry("1.2")["reason"]) == 300
    assert "Imported 2 studies" in caplog.text
    state.record("1.2", "failed", "v1", "again")  # the third failure: given up, as before the move
    assert state.done("1.2")
    old.write_text(json.dumps({"version": 1, "studies": {}}))
    assert WatchState(tmp_path).done("1.1")  # imported once: a second start does not import again
    assert json.loads(old.read_text()) == {"version": 1, "studies": {}}  # left where it was


def test_a_damaged_old_state_file_starts_over_with_a_warning(tmp_path, caplog):
    old = tmp_path / "pacs" / "watch_state.json"
    old.parent.mkdir()
    old.write_bytes(b"{not json")
    with caplog.at_level(logging.WARNING, logger="core.pacs"):
        assert not WatchState(tmp_path).done("1.1")
    assert "Ignoring the old watch state" in caplog.text


def test_the_state_keeps_the_newest_studies(tmp_path, monkeypatch):
    from core import db as dbm

    ticks = iter(range(10_000))  # one distinct write time per write (real ones can share a millisecond)
    monkeypatch.setattr(dbm, "_now_iso", lambda: f"2026-12-05T00:00:{next(ticks):06d}Z")
    monkeypatch.setattr(WatchState, "MAX_ENTRIES", 3)
    monkeypatch.setattr(WatchState, "PRUNE_EVERY", 4)
    state = WatchState(tmp_path)
    for i in range(6):
        state.record(f"1.{i}", "done", "v1")
    assert [i for i in range(6) if state.done(f"1.{i}")] == [1, 2, 3, 4, 5]  # the 4th record pruned to 3
    assert [i for i in range(6) if WatchState(tmp_path).done(f"1.{i}")] == [3, 4, 5]  # and so does a start


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with O.orthanc_server(tmp_path_factory.mktemp("orthanc")) as srv:
        yield srv


@pytest.fixture(scope="module")
def predictor(trained_registry):
    from core.predict import Predictor

    return Predictor.from_registry(trained_registry)


@pytest.fixture(scope="module")
def studies(server):
    """A: PA + lateral of one child; B: a CT; C: AP only, another child; D: a blank DX."""
    uids = {k: O.new_uid() for k in "ABCD"}
    up = lambda data: O.upload(server["url"], data)  # noqa: E731
    up(O.film(O.pneumonia_film(), study_uid=uids["A"], patient_id="PAT-A", patient_name="DOE^JANE", view="PA",
              accession="ACC-A", study_date="20261201", study_time="090000"))
    up(O.film(O.pneumonia_film(), study_uid=uids["A"], patient_id="PAT-A", patient_name="DOE^JANE", view="LL",
              accession="ACC-A", study_date="20261201", study_time="090000", series_number=2))
    up(O.film(O.normal_film(), study_uid=uids["B"], patient_id="PAT-B", patient_name="ROE^RICHARD", view=None,
              modality="CT", body="CHEST", study_date="20261202"))
    up(O.film(O.normal_film(), study_uid=uids["C"], patient_id="PAT-C", patient_name="POE^EDGAR", view="AP",
              modality="CR", accession="ACC-C", study_date="20261203"))
    up(O.film(O.normal_film(), study_uid=uids["D"], patient_id="PAT-D", patient_name="BLANK^FILM", view="PA",
              study_date="20261130", pixels=np.full((256, 256), 128, np.uint8)))
    return uids


@pytest.fixture
def web(server):
    return DicomWeb(PacsSettings(url=server["dicomweb"], timeout_s=10))


def _pacs_instance(server, study_uid, modality):
    out = []
    for inst in O.instances(server["url"]):
        tags = requests.get(f"{server['url']}/instances/{inst['ID']}/tags?simplify", timeout=10).json()
        if tags.get("StudyInstanceUID") == study_uid and tags.get("Modality") == modality:
            out.append(requests.get(f"{server['url']}/instances/{inst['ID']}/file", timeout=10).content)
    return out


@pytest.mark.slow
def test_search_is_newest_first_radiographs_only_and_filters(web, studies):
    rows, truncated = web.search_studies()
    uids = [r["StudyInstanceUID"] for r in rows]
    assert not truncated
    assert studies["B"] not in uids  # the CT study is not on a CR/DX worklist
    assert uids.index(studies["C"]) < uids.index(studies["A"]) < uids.index(studies["D"])  # newest first
    a = next(r for r in rows if r["StudyInstanceUID"] == studies["A"])
    assert (a["PatientID"], a["PatientName"], a["PatientBirthDate"], a["NumberOfStudyRelatedInstances"]) == \
        ("PAT-A", "DOE^JANE", "20210314", 2)
    assert [r["StudyInstanceUID"] for r in web.search_studies(patient_id="PAT-C")[0]] == [studies["C"]]
    assert [r["StudyInstanceUID"] for r in web.search_studies(accession="ACC-A")[0]] == [studies["A"]]
    assert {r["StudyInstanceUID"] for r in web.search_studies(date_from="2026-12-01", date_to="2026-12-02")[0]} == \
        {studies["A"]}
    with pytest.raises(PacsError, match="wildcards"):
        web.search_studies(patient_id="PAT*")


@pytest.mark.slow
def test_analyse_sends_a_structured_report_and_a_secondary_capture(web, server, studies, predictor, tmp_path):
    import highdicom as hd

    audit_log = tmp_path  # an artifacts root: the audit trail of its own database
    res = analyse_study(web, predictor, studies["A"], artifacts=audit_log)
    assert res.status == "analysed" and res.sent, res.message
    assert "PA (frontal)" in res.chosen and any("lateral view (LL" in s for s in res.skipped)
    p = res.prediction
    assert p.ok and p.label in ("NORMAL", "PNEUMONIA", "INDETERMINATE", "REJECTED")
    # the audit line: source pacs, hashed UIDs, no identifier
    rec = audit.read(audit_log)[-1]
    assert rec["source"] == "pacs" and rec["study_uid_sha256"] == pacs.uid_sha256(studies["A"])
    assert "PAT-A" not in json.dumps(audit.read(audit_log)) and "DOE" not in json.dumps(audit.read(audit_log))
    # both objects are in Orthanc, under the original study
    srs, scs = _pacs_instance(server, studies["A"], "SR"), _pacs_instance(server, studies["A"], "OT")
    assert len(srs) == 1 and len(scs) == 1
    sr = hd.sr.srread(io.BytesIO(srs[0]))
    assert sr.PatientID == "PAT-A" and sr.StudyInstanceUID == studies["A"]
    assert sr.SeriesDescription == f"PneumoScope result {predictor.version}"
    items = {item.ConceptNameCodeSequence[0].CodeMeaning: item for item in sr.ContentSequence}
    finding = items["Finding"].ConceptCodeSequence[0].CodeMeaning
    assert finding == {"NORMAL": "Normal", "PNEUMONIA": "Pneumonia", "INDETERMINATE": "Indeterminate - refer to a radiologist",
                       "REJECTED": "Not analysed - input rejected"}[p.label]
    if not p.rejected:
        prob = items["Calibrated probability of pneumonia"].MeasuredValueSequence[0]
        assert float(prob.NumericValue) == pytest.approx(round(100 * p.probability, 1))
        assert prob.MeasurementUnitsCodeSequence[0].CodeValue == "%"
    assert items["Algorithm Version"].TextValue == predictor.version
    ref = items["Source of Measurement"].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == res.sop_uid
    assert sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "COMPLETE"
    sc = pydicom.dcmread(io.BytesIO(scs[0]))
    assert sc.StudyInstanceUID == studies["A"] and sc.PatientID == "PAT-A"
    assert list(sc.ImageType)[:2] == ["DERIVED", "SECONDARY"] and sc.BurnedInAnnotation == "YES"
    assert sc.pixel_array.shape[2] == 3 and sc.pixel_array.shape[0] > sc.pixel_array.shape[1]  # legend below
    # results are found again; a second analysis does not duplicate them
    assert predictor.version in pacs.results_in_pacs(web, studies["A"])
    n = len(O.instances(server["url"]))
    again = analyse_study(web, predictor, studies["A"], artifacts=audit_log)
    assert again.status == "already"
    forced = analyse_study(web, predictor, studies["A"], force=True, artifacts=audit_log)
    assert forced.status == "analysed" and forced.sent
    assert len(O.instances(server["url"])) == n  # the same UIDs: stored once


@pytest.mark.slow
def test_a_ct_study_and_a_rejected_film_are_reported_and_only_results_are_sent(web, server, studies, predictor, tmp_path):
    ct = analyse_study(web, predictor, studies["B"], artifacts=tmp_path)
    assert ct.status == "no_image" and "CT image (not a radiograph)" in ct.message
    assert _pacs_instance(server, studies["B"], "SR") == []
    blank = analyse_study(web, predictor, studies["D"], artifacts=tmp_path)
    assert blank.prediction is not None and blank.prediction.rejected and blank.sent
    import highdicom as hd

    sr = hd.sr.srread(io.BytesIO(_pacs_instance(server, studies["D"], "SR")[0]))
    names = [i.ConceptNameCodeSequence[0].CodeMeaning for i in sr.ContentSequence]
    assert "Calibrated probability of pneumonia" not in names and "Decision threshold" not in names  # no probability
    comments = [i.TextValue for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning == "Comment"]
    assert any(c.startswith("Not analysed:") for c in comments)


@pytest.mark.slow
def test_faults_are_said_in_words_and_nothing_half_written(web, server, studies, predictor, tmp_path, monkeypatch):
    # PACS unreachable
    closed = O.free_port()
    down = DicomWeb(PacsSettings(url=f"http://127.0.0.1:{closed}/dicom-web", timeout_s=2))
    res = analyse_study(down, predictor, studies["C"])
    assert res.status == "failed" and "cannot be reached" in res.message and str(closed) in res.message
    # a server that never answers: timeout
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    slow = DicomWeb(PacsSettings(url=f"http://127.0.0.1:{silent.getsockname()[1]}/dicom-web", timeout_s=0.5))
    with pytest.raises(PacsError) as e:
        slow.search_studies()
    assert e.value.kind == "timeout" and "0.5 s" in str(e.value)
    silent.close()
    # the result upload refused after the heatmap image was stored: the SR (the "done" marker)
    # is missing, so the study is not done and a retry completes it without duplicates
    calls = {"n": 0}
    real_store = DicomWeb.store

    def flaky_store(self, datasets, study_uid):
        calls["n"] += 1
        if calls["n"] == 2:
            raise PacsError("refused", "The PACS refused 1 of 1 result object(s) (failure reason 272).")
        return real_store(self, datasets, study_uid)

    monkeypatch.setattr(DicomWeb, "store", flaky_store)
    res = analyse_study(web, predictor, studies["C"], artifacts=tmp_path)
    assert res.status == "failed" and "refused" in res.message and not res.sent
    assert predictor.version not in pacs.results_in_pacs(web, studies["C"])
    monkeypatch.setattr(DicomWeb, "store", real_store)
    retry = analyse_study(web, predictor, studies["C"], artifacts=tmp_path)
    assert retry.status == "analysed" and retry.sent
    assert len(_pacs_instance(server, studies["C"], "SR")) == 1 and len(_pacs_instance(server, studies["C"], "OT")) == 1
    # the PACS going away mid-study (after the image list, before the download)
    monkeypatch.setattr(DicomWeb, "retrieve_instance",
                        lambda *a, **k: (_ for _ in ()).throw(PacsError("unreachable", "The PACS at x cannot be reached.")))
    gone = analyse_study(web, predictor, studies["A"], force=True, artifacts=tmp_path)
    assert gone.status == "failed" and "cannot be reached" in gone.message and gone.prediction is None
    # a huge study
    monkeypatch.setattr(pacs, "MAX_STUDY_INSTANCES", 1)
    huge = analyse_study(web, predictor, studies["A"], force=True)
    assert huge.status == "no_image" and "more than a chest X-ray study has" in huge.message


@pytest.mark.slow
def test_the_report_is_sent_only_after_the_heatmap_image_is_stored(web, server, studies, predictor, tmp_path, monkeypatch):
    """The SC is uploaded on a helper thread while the SR is built: the SR (the "done" marker) must
    still start only once the SC is stored, never when the SC was refused, and never before the
    audit line of the prediction is written."""
    real_store, real_prediction, order = DicomWeb.store, audit.prediction, []

    def slow_store(self, datasets, study_uid):
        kind = datasets[0].Modality
        order.append(f"{kind} start")
        if kind == "OT":
            time.sleep(0.3)  # a slow PACS: the SR is long built by now
        real_store(self, datasets, study_uid)
        order.append(f"{kind} stored")

    def audited(*a, **k):
        time.sleep(0.1)
        real_prediction(*a, **k)
        order.append("audited")

    monkeypatch.setattr(DicomWeb, "store", slow_store)
    monkeypatch.setattr(audit, "prediction", audited)
    res = analyse_study(web, predictor, studies["A"], force=True, artifacts=tmp_path)
    assert res.sent and order == ["audited", "OT start", "OT stored", "SR start", "SR stored"]

    def refused(self, datasets, study_uid):
        order.append(datasets[0].Modality)
        raise PacsError("refused", "The PACS refused 1 of 1 result object(s) (failure reason 272).")

    order.clear()
    monkeypatch.setattr(DicomWeb, "store", refused)
    res = analyse_study(web, predictor, studies["C"], force=True, artifacts=tmp_path)
    assert res.status == "failed" and "refused" in res.message and not res.sent and order == ["audited", "OT"]

    def bad_sr(*a, **k):
        raise ValueError("a header highdicom cannot use")

    order.clear()
    monkeypatch.setattr(DicomWeb, "store", slow_store)
    monkeypatch.setattr(pacs, "build_sr", bad_sr)
    res = analyse_study(web, predictor, studies["A"], force=True, artifacts=tmp_path)
    assert res.status == "failed" and not res.sent and "could not be built" in res.message and "ValueError" in res.message
    assert "SR start" not in order


@pytest.mark.slow
def test_wrong_credentials_are_named_without_the_password(tmp_path, caplog):
    with O.orthanc_server(tmp_path, users={"pneumo": "right-password"}) as srv:
        caplog.set_level(logging.DEBUG)
        bad = DicomWeb(PacsSettings(url=srv["dicomweb"], username="pneumo", password="wrong-PASSWORD-123"))
        with pytest.raises(PacsError) as e:
            bad.ping()
        assert e.value.kind == "auth" and "refused the credentials" in str(e.value)
        assert "wrong-PASSWORD-123" not in str(e.value)
        assert all("wrong-PASSWORD-123" not in r.getMessage() for r in caplog.records)
        DicomWeb(PacsSettings(url=srv["dicomweb"], username="pneumo", password="right-password")).ping()


@pytest.mark.slow
def test_watch_analyses_each_new_study_once_across_a_restart(tmp_path, predictor, monkeypatch):
    import datetime as dt

    today = dt.date.today().strftime("%Y%m%d")
    with O.orthanc_server(tmp_path) as srv:
        web = DicomWeb(PacsSettings(url=srv["dicomweb"]))
        first, second = O.new_uid(), O.new_uid()
        O.upload(srv["url"], O.film(O.pneumonia_film(), study_uid=first, patient_id="W1", patient_name="A^B",
                                    view="PA", study_date=today))
        O.upload(srv["url"], O.film(O.normal_film(), study_uid=O.new_uid(), patient_id="W2", patient_name="C^D",
                                    view=None, modality="CT", study_date=today))  # not a CR/DX study: never listed
        seen = []
        counts = pacs.watch(web, predictor, WatchState(tmp_path), once=True, report=seen.append,
                            artifacts=tmp_path)
        assert counts["analysed"] == 1 and [r.study_uid for r in seen] == [first]
        kept = [d.key for d in WatchState(tmp_path).db.list(pacs.STUDY_KIND)]
        assert kept == [pacs.uid_sha256(first)] and first not in str(kept)  # hashed, never the UID
        # restart: a new process reads the state; a new study arrives
        O.upload(srv["url"], O.film(O.normal_film(), study_uid=second, patient_id="W3", patient_name="E^F",
                                    view="AP", modality="CR", study_date=today))
        seen.clear()
        counts = pacs.watch(web, predictor, WatchState(tmp_path), once=True, report=seen.append,
                            artifacts=tmp_path)
        assert counts["analysed"] == 1 and [r.study_uid for r in seen] == [second]
        # a crash after sending but before the state was written (here: a state that knows nothing,
        # another root's database): the PACS says it is done
        seen.clear()
        counts = pacs.watch(web, predictor, WatchState(tmp_path / "lost-state"), once=True, report=seen.append)
        assert counts["analysed"] == 0 and counts["already"] == 2
        assert len([i for i in O.instances(srv["url"]) if i["MainDicomTags"].get("SOPInstanceUID")]) == 2 + 1 + 2 * 2
        # one study that keeps failing is given up after a few attempts; the loop goes on
        state = WatchState(tmp_path)
        bad = O.new_uid()
        O.upload(srv["url"], O.film(O.normal_film(), study_uid=bad, patient_id="W4", patient_name="G^H",
                                    view="PA", study_date=today))
        monkeypatch.setattr(DicomWeb, "retrieve_instance",
                            lambda *a, **k: (_ for _ in ()).throw(PacsError("timeout", "did not answer")))
        for _ in range(pacs.WATCH_MAX_ATTEMPTS):
            pacs.watch(web, predictor, state, once=True)
        assert state.done(bad) and state.entry(bad)["status"] == "given_up"


@pytest.mark.slow
def test_cli_search_and_analyse(server, studies, registry_copy, monkeypatch, capsys):
    from core import cli

    monkeypatch.setenv("PNEUMOSCOPE_DICOMWEB_URL", server["dicomweb"])
    # a copy of the registry (with its database): the CLI's audit events stay out of the shared one's trail
    assert cli.main(["--artifacts", str(registry_copy.root), "pacs", "search", "--patient-id", "PAT-C"]) == 0
    out = capsys.readouterr().out
    assert studies["C"] in out and "1 study" in out
    code = cli.main(["--artifacts", str(registry_copy.root), "pacs", "analyse", studies["C"], "--force"])
    out = capsys.readouterr().out
    assert code == 0 and ("analysed" in out or "already" in out)
    assert cli.main(["--artifacts", str(registry_copy.root), "pacs", "analyse", studies["B"]]) == 3
    monkeypatch.setenv("PNEUMOSCOPE_DICOMWEB_URL", f"http://127.0.0.1:{O.free_port()}/dicom-web")
    assert cli.main(["--artifacts", str(registry_copy.root), "pacs", "search"]) == 7
    assert "cannot be reached" in capsys.readouterr().err
    monkeypatch.delenv("PNEUMOSCOPE_DICOMWEB_URL")
    assert cli.main(["--artifacts", str(registry_copy.root), "pacs", "search"]) == 2


@pytest.mark.slow
def test_two_callers_at_once_store_one_result(web, server, studies, predictor):
    out = []
    threads = [threading.Thread(target=lambda: out.append(analyse_study(web, predictor, studies["C"], force=True)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(r.status == "analysed" for r in out), [r.message for r in out]
    assert len(_pacs_instance(server, studies["C"], "SR")) == 1


def test_a_second_watcher_is_refused_across_instances(registry_copy, capsys, monkeypatch):
    """One `pacs watch` per registry, whichever host it runs on: the claim is a database lease
    (a watcher on another instance holds it here); the second one exits 6 naming the holder."""
    from core import cli, exitcodes
    from core import db as dbm

    monkeypatch.setenv("PNEUMOSCOPE_DICOMWEB_URL", "http://127.0.0.1:9/dicom-web")  # never contacted
    d = dbm.connect(registry_copy.root)
    assert d.try_lease("pacs-watch", "other-host:4242:abcd", 60)
    code = cli.main(["--artifacts", str(registry_copy.root), "pacs", "watch", "--once"])
    assert code == exitcodes.EXIT_BUSY == 6
    assert "another `pacs watch` is running" in capsys.readouterr().err
    d.release("pacs-watch", "other-host:4242:abcd")

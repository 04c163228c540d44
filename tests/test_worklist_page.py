"""The PACS worklist page (app_pages/worklist.py): AppTest without and with a real Orthanc, and
a real-browser test (pick a study, see the result, see "sent to PACS")."""

from __future__ import annotations

import re

import pytest

import orthanc as O
from test_app_pages import app_registry, env, open_page, texts  # noqa: F401 - fixtures

PAGE = "app_pages/worklist.py"


def test_without_a_pacs_the_page_says_how_to_configure_one(env, monkeypatch):
    monkeypatch.delenv("PNEUMOSCOPE_DICOMWEB_URL", raising=False)
    at = open_page(PAGE)
    assert "PNEUMOSCOPE_DICOMWEB_URL" in texts(at.info)


def test_a_url_with_credentials_is_refused_without_showing_them(env, monkeypatch):
    monkeypatch.setenv("PNEUMOSCOPE_DICOMWEB_URL", "http://admin:hunter2@127.0.0.1:1/dicom-web")
    at = open_page(PAGE)
    shown = texts(at.error)
    assert "user name or password" in shown and "hunter2" not in shown and "hunter2" not in str(at)


@pytest.mark.slow
def test_search_lists_studies_newest_first_and_an_unreachable_pacs_is_said(env, monkeypatch, tmp_path):
    from ui import loaders

    with O.orthanc_server(tmp_path) as srv:
        uids = [O.new_uid(), O.new_uid()]
        for uid, date, pid in ((uids[0], "20261110", "OLD-1"), (uids[1], "20261120", "NEW-2")):
            O.upload(srv["url"], O.film(O.pneumonia_film(), study_uid=uid, patient_id=pid, patient_name="X^Y",
                                        view="PA", study_date=date))
        monkeypatch.setenv("PNEUMOSCOPE_DICOMWEB_URL", srv["dicomweb"])
        loaders.pacs_search.clear()
        at = open_page(PAGE)
        at.date_input(key="pacs_from").set_value(__import__("datetime").date(2026, 11, 1))
        at.date_input(key="pacs_to").set_value(__import__("datetime").date(2026, 11, 30))
        at.button[0].click().run()  # the form's Search button
        assert not at.exception, [e.value for e in at.exception]
        assert any("2 studies, newest first" in s.value for s in at.subheader), [s.value for s in at.subheader]
        frame = at.dataframe[0].value
        assert list(frame["Patient ID"]) == ["NEW-2", "OLD-1"]
        assert list(frame["Age"]) == ["5 y", "5 y"]
    loaders.pacs_search.clear()
    at.button[0].click().run()  # Orthanc is gone
    assert "cannot be reached" in texts(at.error)


@pytest.mark.browser
def test_browser_pick_a_study_see_the_result_and_sent_to_pacs(trained_registry, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from test_browser_e2e import CHROMIUM, CHROMIUM_ARGS, REPO, streamlit_server

    O.require_orthanc()
    with O.orthanc_server(tmp_path / "pacs") as srv:
        import datetime as dt

        today = dt.date.today().strftime("%Y%m%d")
        study = O.new_uid()
        O.upload(srv["url"], O.film(O.pneumonia_film(), study_uid=study, patient_id="BROWSER-1",
                                    patient_name="TEST^CHILD", view="PA", study_date=today))
        O.upload(srv["url"], O.film(O.pneumonia_film(), study_uid=study, patient_id="BROWSER-1",
                                    patient_name="TEST^CHILD", view="LL", study_date=today, series_number=2))
        with streamlit_server(tmp_path / "app", trained_registry.root, REPO / "samples" / "chest_xray",
                              PNEUMOSCOPE_DICOMWEB_URL=srv["dicomweb"]) as app:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
                try:
                    page = browser.new_page(viewport={"width": 1440, "height": 2000})
                    page.set_default_timeout(120_000)
                    expect.set_options(timeout=120_000)
                    page.goto(app["url"] + "/worklist")
                    expect(page.get_by_role("heading", name="PACS worklist")).to_be_visible()
                    page.get_by_role("button", name="Search").click()
                    expect(page.get_by_text("1 study, newest first")).to_be_visible()
                    grid = page.locator('[data-testid="stDataFrame"]').first
                    expect(grid).to_be_visible()
                    page.wait_for_timeout(1000)
                    box = grid.bounding_box()
                    page.mouse.click(box["x"] + 18, box["y"] + 35 + 17)  # the first row's selection box
                    go = page.get_by_role("button", name=re.compile(r"Analyse 1 selected study"))
                    expect(go).to_be_enabled()
                    go.click()
                    expect(page.get_by_text("Sent to PACS").first).to_be_visible()
                    expect(page.get_by_text(re.compile("lateral view")).first).to_be_visible()
                    expect(page.locator("h3").filter(has_text=re.compile("NORMAL|PNEUMONIA|Indeterminate|Rejected",
                                                                         re.I)).first).to_be_visible()
                    page.screenshot(path=str(REPO / "test-output" / "worklist-1440.png"), full_page=True)
                    assert page.locator('[data-testid="stException"]').count() == 0
                finally:
                    browser.close()
        modalities = {i["MainDicomTags"].get("Modality") for i in O.instances(srv["url"])}
        series = __import__("requests").get(f"{srv['url']}/series?expand", timeout=10).json()
        assert {"SR", "OT"} <= {s["MainDicomTags"].get("Modality") for s in series} or {"SR", "OT"} <= modalities

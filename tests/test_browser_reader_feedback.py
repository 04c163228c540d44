"""Real-browser test of issue 17: a 5-case reader study, and a feedback -> accept ->
retrain-with-feedback cycle, in Chromium against `streamlit run` on the tiny test model.

The server runs on a free port with a copy of the tiny registry and its own data root: the
committed samples' train and val films, with 3 train films of each class moved to the test
split (the reader study draws from it; it needs at least N = 5 films). The Predict page's
bundled samples (``samples/chest_xray/test``) are then no part of that dataset, so an accepted
feedback image on one of them is not dropped as a held-out file and reaches training.
The retrain job uses the tiny "micro" recipe through the form's test hook
(``PNEUMOSCOPE_TEST_TINY_TRAINING=1``, see ``ui.admin_components.TEST_TINY_TRAINING``).
Screenshots: ``test-output/rsfb-<step>.png``.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path

import pytest

from test_browser_e2e import CHROMIUM, CHROMIUM_ARGS, REPO, SHOTS, _no_exception, _settle, require_browser, streamlit_server

pytestmark = pytest.mark.browser

ADMIN_PASSWORD = "rsfb admin password"
SAMPLES = REPO / "samples" / "chest_xray"
MOVED_TO_TEST = 3  # per class
VERDICT_LABEL = {"Pneumonia suspected": "PNEUMONIA", "No pneumonia detected": "NORMAL"}


def _data_root(dst: Path) -> Path:
    """train/val from the committed samples; the last 3 train films of each class form the test split."""
    for cls in ("NORMAL", "PNEUMONIA"):
        train = sorted((SAMPLES / "train" / cls).iterdir())
        for split, files in (("train", train[:-MOVED_TO_TEST]), ("test", train[-MOVED_TO_TEST:]),
                             ("val", sorted((SAMPLES / "val" / cls).iterdir()))):
            (dst / split / cls).mkdir(parents=True, exist_ok=True)
            for f in files:
                shutil.copy2(f, dst / split / cls / f.name)
    return dst


@pytest.fixture(scope="module")
def server(trained_registry, tmp_path_factory):
    require_browser()  # before building the data folder
    tmp = tmp_path_factory.mktemp("rsfb")
    data = _data_root(tmp / "data")
    with streamlit_server(tmp, trained_registry.root, data, PNEUMOSCOPE_ADMIN_PASSWORD=ADMIN_PASSWORD,
                          PNEUMOSCOPE_TEST_TINY_TRAINING="1") as srv:  # the retrain form trains the tiny micro recipe
        yield {**srv, "data": data}


@pytest.fixture()
def page(server):
    from playwright.sync_api import expect, sync_playwright

    SHOTS.mkdir(exist_ok=True)
    expect.set_options(timeout=120_000)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1440, "height": 2000}, accept_downloads=True)
            pg.set_default_timeout(120_000)
            pg.goto(server["url"])
            expect(pg.get_by_role("heading", name="Pneumonia check")).to_be_visible()
            yield pg
            assert "Traceback" not in server["log"].read_text()
        finally:
            browser.close()


def _shot(page, name: str) -> None:
    _settle(page)
    page.screenshot(path=str(SHOTS / f"rsfb-{name}.png"), full_page=True)


def _radio(page, label: str):
    """The radio group whose label is ``label``."""
    return page.locator('[data-testid="stRadio"]').filter(has=page.get_by_text(label, exact=True))


def _pick(page, group: str, option: str) -> None:
    _radio(page, group).get_by_text(option, exact=True).click()
    _settle(page)


def _nav(page, name: str) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=name).click()
    _settle(page)


def _audit(server, action: str) -> list[dict]:
    from core import audit

    return audit.read(artifacts=server["audit"], actions=[action])


def test_browser_five_case_reader_study(server, page):
    from playwright.sync_api import expect

    _nav(page, "Reader study")
    expect(page.get_by_role("heading", name="Reader study")).to_be_visible()
    expect(page.get_by_text(f"{2 * MOVED_TO_TEST} films").first).to_be_visible()  # the data root's test split
    n = page.get_by_label("Number of films (N)")
    n.fill("5")
    n.press("Enter")
    _settle(page)
    page.get_by_role("button", name="Start the study").click()
    reads = ("PNEUMONIA", "NORMAL", "PNEUMONIA", "NORMAL", "NORMAL")
    for i, read in enumerate(reads):
        expect(page.get_by_text(f"Case {i + 1} of 5").first).to_be_visible()
        expect(page.locator('img[alt="Chest X-ray to read"]')).to_be_visible()
        expect(page.get_by_role("button", name="Record my read")).to_be_visible()
        _settle(page)  # the previous case's elements are gone
        assert page.locator("h4").filter(has_text="AI:").count() == 0, f"case {i + 1}: AI output shown before the read"
        assert page.locator('img[alt="Heatmap overlay"]').count() == 0
        _pick(page, "Finding", read)
        page.get_by_role("button", name="Record my read").click()
        ai = page.locator("h4").filter(has_text="AI:")
        expect(ai).to_be_visible()  # revealed only now: verdict, probability, heatmap
        expect(page.get_by_text(f"Your read: {read}")).to_be_visible()
        if i == 0:
            _shot(page, "study-revealed")
            _pick(page, "Finding after the AI", "NORMAL")  # the AI-assisted second read changes case 1
        _no_exception(page)
        page.get_by_role("button", name="Finish the study" if i == 4 else "Next case").click()

    expect(page.get_by_text("complete: 5 films read").first).to_be_visible()
    table = page.locator('[data-testid="stTable"]').first
    expect(table).to_be_visible()
    rows = table.locator("tbody tr").all_inner_texts()
    assert [r.split("\t")[0].strip() for r in rows] == ["Reader alone", "Model alone", "Reader + AI"], rows
    assert all(re.search(r"\d+\.\d %", r) and r.rstrip().endswith("5") for r in rows), rows  # % values, 5 cases
    expect(page.get_by_text("The AI output changed 1 of 5").first).to_be_visible()
    _no_exception(page)
    _shot(page, "study-end")
    csv_button = page.get_by_role("button", name="Results (CSV)")
    expect(csv_button).to_be_visible()
    with page.expect_download() as dl:
        csv_button.click()
    got = list(csv.DictReader(io.StringIO(Path(dl.value.path()).read_text())))
    assert [r["first_read"] for r in got] == list(reads)
    assert [r["final_read"] for r in got] == ["NORMAL", *reads[1:]] and got[0]["changed"] == "True"
    assert all(r["film"].startswith("test/") for r in got)  # the official test split only
    assert len(_audit(server, "reader_study")) == 1


def test_browser_feedback_accept_and_retrain_with_feedback(server, page):
    from playwright.sync_api import expect

    # 1. Predict page: a bundled sample, disagreeing feedback with consent.
    page.get_by_role("button", name="Analyse sample").click()
    verdict = page.locator("h3").filter(has_text=re.compile("|".join([*VERDICT_LABEL, "Indeterminate"])))
    expect(verdict.first).to_be_visible()
    model_label = VERDICT_LABEL.get(verdict.first.inner_text().strip())
    believed = "NORMAL" if model_label == "PNEUMONIA" else "PNEUMONIA"
    page.locator('[data-testid="stExpander"] summary').filter(has_text="Your feedback on this verdict").click()
    _settle(page)
    _pick(page, "Do you agree with the verdict?", "Disagree")
    _pick(page, "The label you believe", believed)
    page.get_by_text("Keep the de-identified pixels for retraining").click()
    page.get_by_role("button", name="Send feedback").click()
    expect(page.get_by_text("with the de-identified pixels").first).to_be_visible()
    _no_exception(page)
    _shot(page, "feedback-sent")
    fb = _audit(server, "feedback")
    assert len(fb) == 1 and fb[0]["agree"] is False and fb[0]["believed_label"] == believed and fb[0]["pixels_stored"] is True

    # 2. Admin: sign in, accept the relabel with a reason.
    _nav(page, "Admin")
    page.get_by_label("Admin password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.get_by_role("tab", name="Feedback")).to_be_visible()
    page.get_by_role("tab", name="Feedback").click()
    _settle(page)
    expect(page.get_by_role("button", name="Accept relabel")).to_be_visible()
    page.get_by_label("Reason (required)").fill("second reader agrees with the relabel")
    page.get_by_label("Reason (required)").press("Enter")
    _settle(page)
    page.get_by_role("button", name="Accept relabel").click()
    expect(page.get_by_text(re.compile(r"Feedback \S+ accepted")).first).to_be_visible()
    _no_exception(page)
    _shot(page, "feedback-accepted")

    # 3. Retrain with the accepted feedback image (tiny micro recipe via the test hook).
    page.get_by_role("tab", name="Retrain").click()
    _settle(page)
    include = page.get_by_text("Include accepted feedback images (1 available)")
    expect(include).to_be_visible()
    include.click()
    _pick(page, "Starting weights", "none (random initialisation)")
    page.get_by_role("button", name="Start training").click()
    done = page.get_by_text(re.compile(r"Training finished: version"))
    expect(done.first).to_be_visible(timeout=150_000)
    _no_exception(page)
    _shot(page, "retrain-finished")
    version = re.search(r"version (\S+) is in the registry", done.first.inner_text()).group(1).strip("`")

    # 4. The new version's card: one feedback image; the audit trail says so too.
    card = json.loads((server["artifacts"] / "models" / version / "card.json").read_text())
    assert card["feedback_images"] == 1 and card["backbone"] == "micro"
    prov = json.loads((server["artifacts"] / "models" / version / "provenance.json").read_text())
    assert prov["feedback"]["images"] == 1 and len(prov["feedback"]["sha256"]) == 1
    assert prov["feedback"]["sha256"][0] == fb[0]["image_sha256"]
    retrain = [r for r in _audit(server, "retrain") if r["outcome"] == "succeeded"]
    assert retrain and retrain[-1]["version"] == version and retrain[-1]["feedback_images"] == 1
    # ... and the Feedback tab's "Effect on validation" shows it next to the active model.
    page.get_by_role("tab", name="Feedback").click()
    _settle(page)
    expect(page.get_by_text("Effect on validation")).to_be_visible()
    picker = page.locator('[data-testid="stSelectbox"]').filter(has_text="Version trained with feedback")
    expect(picker.locator("input")).to_have_value(version)
    _shot(page, "feedback-effect")

"""Real-browser test of the admin flow (issue 22 items 5-9 and the admin layout item), in Chromium
against `streamlit run` at 1024 px and 1440 px.

The registry holds the tiny active model and a "smoke" candidate evaluated on a part of its test
images, worse, from a `limit_per_class` run; the jobs folder holds a job cancelled after training;
the feedback store holds a consented record with a long comment. The test checks that

* the selected admin tab stays selected after Promote, Roll back, Accept and the next widget change
  (it jumped back to Retrain),
* the cancelled job has one status (no "publishing"),
* Promote asks first, shows both versions side by side with their test set sizes and warns loudly;
  Compare says "not comparable" instead of a difference, and no table cell is cut,
* Roll back steps back through the history,
* the Feedback review panel shows the selected record's image (not a thumbnail) and its whole comment,
* nothing is cut at either width (``TRUNCATION_JS``; the queue grid fits its frame).

Screenshots: ``test-output/admin-<step>-<width>.png``.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from test_browser_e2e import (
    CHROMIUM, CHROMIUM_ARGS, REPO, SHOTS, TRUNCATION_JS, WIDTHS, _no_exception, _settle, require_browser,
    streamlit_server,
)

from tests.helpers import copy_artifacts  # noqa: E402

pytestmark = pytest.mark.browser

ADMIN_PASSWORD = "admin flow password"
SMOKE = "v0002-smoke"
COMMENT = ("Right lower lobe looks clear on the lateral view, and the costophrenic angles are sharp; "
           "the opacity the model saw is the overlapping scapula. Relabel as NORMAL.")


def _registry(dst, trained_registry):
    """The tiny registry plus a smoke candidate: 4 of the active model's test images, worse, quick run."""
    copy_artifacts(trained_registry.root, dst, skip=("feedback", "jobs", "audit"))
    src, cand = dst / "models" / "v0001-tiny", dst / "models" / SMOKE
    shutil.copytree(src, cand)
    m = json.loads((cand / "metrics.json").read_text())
    m["test"]["predictions"] = m["test"]["predictions"][:4]
    m["test"]["n"], m["test"]["roc_auc"] = 4, 0.25
    (cand / "metrics.json").write_text(json.dumps(m))
    for name, change in (("card.json", {"version": SMOKE, "created": "2099-01-01T00:00:00+00:00"}),
                         ("provenance.json", {"limit_per_class": 40})):
        d = json.loads((cand / name).read_text())
        d.update(change)
        (cand / name).write_text(json.dumps(d))
    return dst


def _cancelled_job(artifacts) -> None:
    root = artifacts / "jobs"
    d = root / "job-cancelled"
    d.mkdir(parents=True)
    t = "2026-01-01T10:00:00+00:00"
    (d / "state.json").write_text(json.dumps({"job_id": "job-cancelled", "status": "cancelled", "created": t,
                                              "started": t, "finished": "2026-01-01T10:05:00+00:00",
                                              "error": "Training was cancelled before publishing."}))
    (d / "request.json").write_text(json.dumps({"job_id": "job-cancelled", "config": {}}))
    events = [{"kind": "phase_start", "phase": "finetune", "epochs": 1, "message": "Phase 2", "elapsed_s": 5.0},
              {"kind": "epoch_end", "phase": "finetune", "epoch": 1, "epochs": 1, "batches": 2,
               "metrics": {"loss": 0.5, "auc": 0.6, "val_loss": 0.6, "val_auc": 0.5}, "elapsed_s": 9.0},
              {"kind": "done", "metrics": {}, "elapsed_s": 12.0}]
    (d / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (root / "current").write_text("job-cancelled")


def _feedback(artifacts) -> str:
    import numpy as np

    from core.feedback import FeedbackStore, default_feedback_dir

    store = FeedbackStore(default_feedback_dir(artifacts))
    film = np.tile(np.linspace(20, 230, 320, dtype=np.uint8)[None, :, None], (400, 1, 3))
    rec = store.record(image_sha256=hashlib.sha256(b"film-1").hexdigest(), model_version="v0001-tiny",
                       reader_id="r-browser", agree=False, believed_label="NORMAL", consent=True, pixels=film,
                       probability=0.616, threshold=0.19, guard_status="accepted", guard_code="ok", comment=COMMENT)
    return rec["id"]


@pytest.fixture(scope="module")
def server(trained_registry, tmp_path_factory):
    require_browser()
    tmp = tmp_path_factory.mktemp("admin_flow")
    reg = _registry(tmp / "registry", trained_registry)
    _cancelled_job(reg)  # an ended job folder of an earlier release: the server imports it at first use
    with streamlit_server(tmp, reg, REPO / "samples" / "chest_xray", PNEUMOSCOPE_ADMIN_PASSWORD=ADMIN_PASSWORD) as srv:
        srv["feedback_id"] = _feedback(srv["artifacts"])
        yield srv


def _selected_tab(page) -> str:
    return page.locator('[role="tab"][aria-selected="true"]').first.inner_text().strip()


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()
    _settle(page)
    assert _selected_tab(page) == name


def _check(page, name: str, problems: list[str], extra=None) -> None:
    """At 1024 px and 1440 px: screenshot, the truncation check and ``extra(page, width)``."""
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 2000})
        _settle(page)
        page.screenshot(path=str(SHOTS / f"admin-{name}-{width}.png"), full_page=True)
        problems.extend(f"{name} @ {width} px: {p}" for p in page.evaluate(TRUNCATION_JS))
        if extra is not None:
            problems.extend(f"{name} @ {width} px: {p}" for p in extra(page, width))
    page.set_viewport_size({"width": 1440, "height": 2000})
    _settle(page)


def _active(server) -> str:
    from core.registry import Registry

    return Registry(server["artifacts"]).active_version()


def test_browser_admin_flow_keeps_the_tab_asks_before_activating_and_shows_the_feedback_record(server):
    from playwright.sync_api import expect, sync_playwright

    SHOTS.mkdir(exist_ok=True)
    expect.set_options(timeout=60_000)
    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 2000})
            page.set_default_timeout(60_000)
            page.goto(server["url"] + "/admin")
            page.get_by_label("Admin password").fill(ADMIN_PASSWORD)
            page.get_by_role("button", name="Sign in", exact=True).click()
            expect(page.get_by_role("tab", name="Models")).to_be_visible()
            _settle(page)

            # Retrain: the cancelled job has one status.
            head = page.locator('[data-testid="stMarkdown"]').filter(has_text="Job job-cancelled").first
            expect(head).to_contain_text("cancelled after training, before publishing; nothing was published")
            expect(page.get_by_text("Training was cancelled; the registry is unchanged")).to_be_visible()
            body = page.locator('[data-testid="stMain"]').inner_text()
            assert "publishing the version" not in body and "Finished training" not in body
            _check(page, "retrain-cancelled", problems)

            # Models: Promote asks first and warns; the tab stays selected through every rerun.
            _tab(page, "Models")
            page.get_by_role("button", name="Promote…").click()
            _settle(page)
            assert _selected_tab(page) == "Models"
            review = page.locator(".st-key-activation_review")
            expect(review.get_by_text(f"Promote {SMOKE}?")).to_be_visible()
            expect(review.get_by_text("only a part of the").first).to_be_visible()
            expect(review.get_by_text("is worse than the active").first).to_be_visible()
            expect(review.get_by_text("at most 40 images per class").first).to_be_visible()
            expect(review.locator('[data-testid="stTable"]').get_by_text("not comparable").first).to_be_visible()
            yes = review.get_by_role("button", name="Yes, promote it")
            expect(yes).to_be_disabled()
            assert _active(server) == "v0001-tiny"
            _check(page, "models-review", problems)
            # Compare: no difference between different test sets, a loud notice, no cell cut.
            expect(page.get_by_text("Not comparable: different test sets.").first).to_be_visible()
            review.get_by_text("I have read the warnings").click()
            _settle(page)
            yes.click()
            expect(page.get_by_text(f"{SMOKE} is now the active model").first).to_be_visible()
            _settle(page)
            assert _active(server) == SMOKE and _selected_tab(page) == "Models"
            # The next widget change keeps the tab too (it jumped back when the message went away).
            page.locator('[data-testid="stSelectbox"]').filter(has_text="Version B").click()
            page.get_by_role("option", name="v0001-tiny").click()
            _settle(page)
            expect(page.get_by_text(f"{SMOKE} is now the active model")).to_have_count(0)
            assert _selected_tab(page) == "Models"
            # two rows: v0001-tiny activated when it was published, then the promote above
            page.get_by_text("Activation history (2)").click()
            _check(page, "models-history", problems)
            page.get_by_role("button", name="Roll back…").click()
            _settle(page)
            review = page.locator(".st-key-activation_review")
            expect(review.get_by_text("Roll back to v0001-tiny?")).to_be_visible()
            # Back from the smoke model: its test set differs, so that is said (and acknowledged) too.
            expect(review.get_by_text("only a part of the").first).to_be_visible()
            review.get_by_text("I have read the warnings").click()
            _settle(page)
            page.get_by_role("button", name="Yes, roll back").click()
            expect(page.get_by_text("Rolled back: v0001-tiny is the active model again").first).to_be_visible()
            _settle(page)
            assert _active(server) == "v0001-tiny" and _selected_tab(page) == "Models"
            expect(page.get_by_role("button", name="Roll back…")).to_be_disabled()  # no toggle back to the smoke model

            # Feedback: the review panel shows the selected record's film and its whole comment.
            _tab(page, "Feedback")
            panel = page.locator(".st-key-fbq_record")
            expect(panel.get_by_text(COMMENT)).to_be_visible()
            film = panel.locator("img").first
            expect(film).to_be_visible()

            def film_size(pg, width):
                w = film.evaluate("el => el.getBoundingClientRect().width")
                return [] if w >= 160 else [f"feedback film only {w:.0f} px wide"]

            _check(page, "feedback-review", problems, extra=film_size)
            page.get_by_label("Reason (required)").fill("second reader agrees")
            page.get_by_label("Reason (required)").press("Enter")
            _settle(page)
            page.get_by_role("button", name="Accept relabel").click()
            expect(page.get_by_text(f"Feedback {server['feedback_id']} accepted").first).to_be_visible()
            _settle(page)
            assert _selected_tab(page) == "Feedback"
            page.locator('[data-testid="stSelectbox"]').filter(has_text="Status").click()  # the next widget change
            page.get_by_role("option", name="accepted").click()
            _settle(page)
            assert _selected_tab(page) == "Feedback"
            expect(page.locator(".st-key-fbq_record").get_by_text("second reader agrees")).to_be_visible()
            _no_exception(page)
            assert not problems, "\n".join(problems)
            assert "Traceback" not in server["log"].read_text()
        finally:
            browser.close()

"""Real-browser end-to-end test: `streamlit run` + Playwright driving Debian's Chromium.

Starts the app on a free port against a copy of the tiny trained registry, uploads a real
X-ray through the file uploader, waits for the verdict and the Grad-CAM image, uploads a
batch with one broken file, and visits every page. Screenshots go to ``test-output/``.
"""

from __future__ import annotations

import json
import re
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = REPO / "test-output"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--no-first-run",
]
PNEUMONIA_XRAY = REPO / "samples" / "chest_xray" / "test" / "PNEUMONIA" / "person36_virus_81.jpeg"
NORMAL_XRAY = REPO / "samples" / "chest_xray" / "test" / "NORMAL" / "IM-0041-0001.jpeg"
VERDICTS = ("Pneumonia suspected", "No pneumonia detected", "Indeterminate — refer", "No verdict — image rejected")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"streamlit did not become healthy within {timeout:.0f} s")


@pytest.fixture(scope="module")
def app_server(trained_registry, tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium) to run the browser test")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -r requirements-dev.txt)")
    tmp = tmp_path_factory.mktemp("e2e")
    artifacts = tmp / "artifacts"
    shutil.copytree(trained_registry.root, artifacts)
    audit_log = tmp / "audit.jsonl"
    port = _free_port()
    env = dict(
        os.environ,
        PNEUMOSCOPE_ARTIFACTS=str(artifacts),
        PNEUMOSCOPE_DATA_ROOT=str(REPO / "samples" / "chest_xray"),
        PNEUMOSCOPE_AUDIT_LOG=str(audit_log),
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    log_path = tmp / "server.log"
    cmd = [
        sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
        "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
    ]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", proc)
        yield {"url": f"http://127.0.0.1:{port}", "audit": audit_log, "tmp": tmp, "log": log_path}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def _no_exception(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, "the page shows an exception"


def test_browser_upload_predict_and_visit_pages(app_server):
    from playwright.sync_api import expect, sync_playwright

    SHOTS.mkdir(exist_ok=True)
    expect.set_options(timeout=120_000)  # first prediction loads TensorFlow + the model
    broken = app_server["tmp"] / "broken.png"
    broken.write_bytes(b"this is not an image at all")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 2000})
            page.set_default_timeout(120_000)
            page.goto(app_server["url"])
            expect(page.get_by_role("heading", name="Pneumonia check")).to_be_visible()
            expect(page.get_by_text("Research demo — not a medical device").first).to_be_visible()
            expect(page.get_by_text("v0001-tiny").first).to_be_visible()
            page.screenshot(path=str(SHOTS / "e2e-predict-start.png"))

            # One real X-ray through the real uploader: verdict, probability, heatmap.
            page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(PNEUMONIA_XRAY))
            expect(page.locator('img[alt="Grad-CAM overlay"]')).to_be_visible()
            expect(page.locator('img[alt="Original X-ray"]')).to_be_visible()
            expect(page.get_by_text("Probability", exact=True).first).to_be_visible()
            verdict = page.locator("h3").filter(has_text=re.compile("|".join(VERDICTS)))
            expect(verdict.first).to_be_visible()
            _no_exception(page)
            page.screenshot(path=str(SHOTS / "e2e-predict-one.png"))
            records = [json.loads(line) for line in app_server["audit"].read_text().splitlines()]
            assert records[-1]["action"] == "predict" and len(records[-1]["image_sha256"]) == 64

            # A batch with a broken file: its own error, the others still analysed.
            page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files([str(NORMAL_XRAY), str(broken)])
            expect(page.get_by_text("Results (2 of 3 analysed)")).to_be_visible()
            expect(page.locator('[data-testid="stAlert"]').filter(has_text="broken.png")).to_be_visible()
            expect(page.locator('[data-testid="stDataFrame"]').first).to_be_visible()
            expect(page.locator('img[alt="Grad-CAM overlay"]')).to_be_visible()
            _no_exception(page)
            page.screenshot(path=str(SHOTS / "e2e-predict-batch.png"))

            # Every other page, through the sidebar navigation.
            nav = page.locator('[data-testid="stSidebarNav"]')
            expect(nav.get_by_role("link", name="Dataset")).to_be_visible()
            nav.get_by_role("link", name="Dataset").click()
            expect(page.get_by_role("heading", name="Dataset")).to_be_visible()
            expect(page.locator('[data-testid="stPlotlyChart"]').first).to_be_visible()
            expect(page.get_by_text("IM-0320-0001.jpeg").first).to_be_visible()  # first train image
            _no_exception(page)
            page.screenshot(path=str(SHOTS / "e2e-dataset.png"))

            nav.get_by_role("link", name="Evaluation").click()
            expect(page.get_by_role("heading", name="Model evaluation")).to_be_visible()
            expect(page.get_by_text("ROC-AUC", exact=True).first).to_be_visible()
            expect(page.locator('[data-testid="stPlotlyChart"]').first).to_be_visible()
            _no_exception(page)
            page.screenshot(path=str(SHOTS / "e2e-evaluation.png"))
            for tab in ("ROC & PR curves", "Training history", "Threshold explorer", "Misclassified"):
                page.get_by_role("tab", name=tab).click()
                page.wait_for_timeout(500)
                _no_exception(page)
                page.screenshot(path=str(SHOTS / f"e2e-evaluation-{tab.split()[0].lower()}.png"))

            assert "Traceback" not in app_server["log"].read_text()
            if (REPO / "pages" / "admin.py").exists():  # another engineer's page: just visit it

                nav.get_by_role("link", name="Admin").click()
                page.wait_for_timeout(3000)
                page.screenshot(path=str(SHOTS / "e2e-admin.png"))
        finally:
            browser.close()

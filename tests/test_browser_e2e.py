"""Real-browser end-to-end test: `streamlit run` + Playwright driving Debian's Chromium.

Starts the app on a free port against a copy of the tiny trained registry, uploads a real
X-ray through the file uploader, waits for the verdict and the Grad-CAM image, uploads a
batch with one broken file, and visits every page (the admin page signed in). At every step
the page is checked and screenshotted at two window widths, 1024 px and 1440 px
(``test-output/e2e-<step>-<width>.png``): no truncated value or label (text cut by an
ellipsis or clipped: metric values and labels, buttons, tab and radio labels, table cells),
no data grid wider than its frame, no confusion-matrix cell whose text spills out of it or
a matrix squeezed into a strip. The browser must not try to reach any other host.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
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
WIDTHS = (1024, 1440)
ADMIN_PASSWORD = "e2e admin password"

# Elements whose text must never be cut, and the check itself (run in the page).
TRUNCATION_JS = r"""
() => {
  const bad = [];
  const visible = (el) => el.offsetParent !== null && el.getClientRects().length > 0;
  const label = (el) => (el.innerText || el.textContent || '').trim().slice(0, 60);
  const sel = [
    '[data-testid="stMetricValue"]', '[data-testid="stMetricValue"] *',
    '[data-testid="stMetricLabel"]', '[data-testid="stMetricLabel"] *',
    '[data-testid="stMetricDelta"]', '[data-testid="stMetricDelta"] *',
    'button', 'button *', '[data-baseweb="tab"]', '[data-baseweb="tab"] *',
    '[data-testid="stRadio"] label', '[data-testid="stRadio"] label *',
    '[data-testid="stTable"] td', '[data-testid="stTable"] th', '[data-testid="stTable"] td *',
    '[data-testid="stWidgetLabel"]', '[data-testid="stWidgetLabel"] *',
    '[data-testid="stExpander"] summary', '[data-testid="stExpander"] summary *',
  ].join(',');
  for (const el of document.querySelectorAll(sel)) {
    if (!visible(el) || !label(el)) continue;
    if (el.closest('[data-testid="stIconMaterial"], [aria-hidden="true"], [role="img"]')) continue;  // icon glyphs
    if (el.clientWidth < 3 && el.clientHeight < 3) continue;  // visually hidden text for screen readers
    const cs = getComputedStyle(el);
    const clips = cs.overflowX !== 'visible' || cs.textOverflow === 'ellipsis';
    if (clips && el.scrollWidth > el.clientWidth + 1) {
      bad.push(`cut: "${label(el)}" (${el.scrollWidth} > ${el.clientWidth} px, <${el.tagName.toLowerCase()} ${el.getAttribute('data-testid') || ''}>)`);
    }
  }
  // A word broken across lines ("Indeterminat / e") is cut too: no single word may be wider
  // than its heading or metric value.
  const ctx = document.createElement('canvas').getContext('2d');
  for (const el of document.querySelectorAll('h1, h2, h3, h4, [data-testid="stMetricValue"] > div')) {
    if (!visible(el) || !label(el)) continue;
    const cs = getComputedStyle(el);
    ctx.font = `${cs.fontStyle} ${cs.fontWeight} ${cs.fontSize} ${cs.fontFamily}`;
    const room = el.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
    for (const word of (el.innerText || '').split(/\s+/)) {
      if (word && ctx.measureText(word).width > room + 1) bad.push(`word broken: "${word}" in "${label(el)}" (${Math.round(ctx.measureText(word).width)} > ${Math.round(room)} px)`);
    }
  }
  // The value shown in a select box (e.g. the sample picker).
  for (const el of document.querySelectorAll('[data-testid="stSelectbox"] input')) {
    if (!visible(el) || !el.value) continue;
    if (el.scrollWidth > el.clientWidth + 1) bad.push(`select value cut: "${el.value}" (${el.scrollWidth} > ${el.clientWidth} px)`);
  }
  // Plotly titles and axis titles inside their figure.
  for (const plot of document.querySelectorAll('.js-plotly-plot')) {
    if (!visible(plot)) continue;
    const box = plot.getBoundingClientRect();
    for (const t of plot.querySelectorAll('.gtitle, .g-xtitle text, .g-ytitle text')) {
      const r = t.getBoundingClientRect();
      if (r.width && (r.left < box.left - 1 || r.right > box.right + 1)) bad.push(`chart title cut: "${t.textContent}"`);
    }
  }
  for (const tabs of document.querySelectorAll('[data-baseweb="tab-list"]')) {
    if (visible(tabs) && tabs.scrollWidth > tabs.clientWidth + 1) bad.push(`tab labels do not fit: ${tabs.scrollWidth} > ${tabs.clientWidth} px`);
  }
  for (const grid of document.querySelectorAll('[data-testid="stDataFrame"]')) {
    if (!visible(grid)) continue;
    const sc = grid.querySelector('.dvn-scroller');
    if (sc && sc.scrollWidth > sc.clientWidth + 1) bad.push(`grid wider than its frame: ${sc.scrollWidth} > ${sc.clientWidth} px`);
  }
  for (const plot of document.querySelectorAll('.js-plotly-plot')) {
    if (!visible(plot)) continue;
    const title = (plot.querySelector('.gtitle') || {}).textContent || '';
    if (!title.includes('onfusion matrix') && !plot.querySelector('.hm')) continue;
    const drag = plot.querySelector('.nsewdrag');
    if (!drag) continue;
    const area = drag.getBoundingClientRect();
    if (area.width < 160 || area.height < 120) bad.push(`confusion matrix squeezed: ${Math.round(area.width)} x ${Math.round(area.height)} px ("${title}")`);
    const cellW = area.width / 2, cellH = area.height / 2;
    for (const t of plot.querySelectorAll('.heatmaplayer text, g.textpoint text, .hm text')) {
      const r = t.getBoundingClientRect();
      if (!r.width) continue;
      const col = Math.floor((r.left + r.width / 2 - area.left) / cellW);
      const row = Math.floor((r.top + r.height / 2 - area.top) / cellH);
      const x0 = area.left + col * cellW, y0 = area.top + row * cellH;
      if (r.left < x0 - 1 || r.right > x0 + cellW + 1 || r.top < y0 - 1 || r.bottom > y0 + cellH + 1) {
        bad.push(`confusion-matrix text spills out of its cell: "${t.textContent}" ("${title}")`);
      }
    }
  }
  return bad;
}
"""


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


def require_browser() -> None:
    """Skip with a reason when Debian's Chromium or Playwright is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium) to run the browser test")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -r requirements-dev.txt)")


@contextlib.contextmanager
def streamlit_server(tmp: Path, registry: Path, data_root: Path, **extra_env: str):
    """``streamlit run streamlit_app.py`` on a free local port against a copy of ``registry``
    (``tmp/artifacts``, without its feedback store) and ``data_root``, its audit log and console
    log in ``tmp``; yields {url, artifacts, audit, log, tmp}. No file watcher: an edit to the
    working tree during the run must not raise the "source file changed" prompt (it keeps the
    status widget up). Usage statistics and the rest of the offline settings come from
    .streamlit/config.toml."""
    require_browser()
    artifacts = tmp / "artifacts"
    shutil.copytree(registry, artifacts, ignore=lambda d, names: ["feedback"] if Path(d) == Path(registry) else [])
    port = _free_port()
    audit_log, log_path = tmp / "audit.jsonl", tmp / "server.log"
    env = dict(os.environ, PNEUMOSCOPE_ARTIFACTS=str(artifacts), PNEUMOSCOPE_DATA_ROOT=str(data_root),
               PNEUMOSCOPE_AUDIT_LOG=str(audit_log), TF_CPP_MIN_LOG_LEVEL="2", **extra_env)
    cmd = [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
           "--server.port", str(port), "--server.address", "127.0.0.1", "--server.fileWatcherType", "none"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, proc)  # /_stcore/health runs no script
        yield {"url": url, "artifacts": artifacts, "audit": audit_log, "log": log_path, "tmp": tmp}
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def app_server(trained_registry, tmp_path_factory):
    with streamlit_server(tmp_path_factory.mktemp("e2e"), trained_registry.root, REPO / "samples" / "chest_xray",
                          PNEUMOSCOPE_ADMIN_PASSWORD=ADMIN_PASSWORD) as srv:
        yield srv


def stop_server(proc) -> None:
    """Terminate a test's streamlit server, killing it if it does not exit within 15 s."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


def _no_exception(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, "the page shows an exception"


def _settle(page) -> None:
    """Wait until Streamlit has finished the rerun and the layout (plotly resizes) is stable."""
    page.wait_for_timeout(300)
    page.wait_for_function("() => !document.querySelector('[data-testid=stStatusWidget]')", timeout=120_000)
    page.wait_for_timeout(900)


def _check_widths(page, name: str, problems: list[str], before=None) -> None:
    """At 1024 px and at 1440 px: screenshot, then record every truncated value or label."""
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 2000})
        _settle(page)
        if before is not None:
            before(page)
        page.screenshot(path=str(SHOTS / f"e2e-{name}-{width}.png"), full_page=True)
        problems.extend(f"{name} @ {width} px: {p}" for p in page.evaluate(TRUNCATION_JS))
    page.set_viewport_size({"width": 1440, "height": 2000})


def _open_expanders(page, *labels: str) -> None:
    for label in labels:
        exp = page.locator('[data-testid="stExpander"] summary').filter(has_text=label)
        for i in range(exp.count()):
            details = exp.nth(i).locator("xpath=..")
            if details.get_attribute("open") is None:
                exp.nth(i).click()
    page.wait_for_timeout(500)


def test_browser_upload_predict_and_visit_pages(app_server):
    from playwright.sync_api import expect, sync_playwright

    SHOTS.mkdir(exist_ok=True)
    expect.set_options(timeout=120_000)  # first prediction loads TensorFlow + the model
    broken = app_server["tmp"] / "broken.png"
    broken.write_bytes(b"this is not an image at all")
    problems: list[str] = []
    outside: list[str] = []  # requests to any host but the app's
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 2000})
            page.set_default_timeout(120_000)
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:")) else None)
            console_errors: list[str] = []
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.goto(app_server["url"])
            expect(page.get_by_role("heading", name="Pneumonia check")).to_be_visible()
            expect(page.get_by_text("Research demo — not a medical device").first).to_be_visible()
            expect(page.get_by_text("v0001-tiny").first).to_be_visible()
            _check_widths(page, "predict-start", problems)

            # One real X-ray through the real uploader: verdict, probability, heatmap.
            page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(PNEUMONIA_XRAY))
            expect(page.locator('img[alt$="overlay"]').first).to_be_visible()
            expect(page.locator('img[alt="Original X-ray"]')).to_be_visible()
            expect(page.get_by_text("Probability", exact=True).first).to_be_visible()
            verdict = page.locator("h3").filter(has_text=re.compile("|".join(VERDICTS)))
            expect(verdict.first).to_be_visible()
            _no_exception(page)
            # Probability and threshold in one unit (percent) on the card.
            values = page.locator('[data-testid="stMetricValue"]').all_inner_texts()
            assert len(values) >= 2 and all(v.strip().endswith("%") for v in values[:2]), values
            _check_widths(page, "predict-one", problems, before=lambda p: _open_expanders(p, "Image facts"))
            records = [json.loads(line) for line in app_server["audit"].read_text().splitlines()]
            assert records[-1]["action"] == "predict" and len(records[-1]["image_sha256"]) == 64

            # A batch with a broken file: its own error, the others still analysed.
            page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files([str(NORMAL_XRAY), str(broken)])
            expect(page.get_by_text("Results (2 of 3 analysed)")).to_be_visible()
            expect(page.locator('[data-testid="stAlert"]').filter(has_text="broken.png").first).to_be_visible()
            expect(page.locator('[data-testid="stDataFrame"]').first).to_be_visible()
            expect(page.locator('[data-testid="stTable"]').filter(has_text="broken.png").first).to_be_visible()
            expect(page.locator('img[alt$="overlay"]').first).to_be_visible()
            _no_exception(page)
            _check_widths(page, "predict-batch", problems)

            # Every other page, through the sidebar navigation.
            nav = page.locator('[data-testid="stSidebarNav"]')
            expect(nav.get_by_role("link", name="Dataset")).to_be_visible()
            nav.get_by_role("link", name="Dataset").click()
            expect(page.get_by_role("heading", name="Dataset")).to_be_visible()
            expect(page.locator('[data-testid="stPlotlyChart"]').first).to_be_visible()
            expect(page.get_by_text("IM-0320-0001.jpeg").first).to_be_visible()  # first train image
            expect(page.locator('[data-testid="stMetricLabel"]').filter(has_text="Class").first).to_be_visible()
            _no_exception(page)
            _check_widths(page, "dataset", problems)
            # The inspected image's class, in full (it read "PNEUM…" at 1024 px).
            page.get_by_role("button", name="PNEUMONIA").first.click()
            _settle(page)
            _check_widths(page, "dataset-pneumonia", problems)

            nav.get_by_role("link", name="Evaluation").click()
            expect(page.get_by_role("heading", name="Model evaluation")).to_be_visible()
            expect(page.get_by_text("ROC-AUC", exact=True).first).to_be_visible()
            expect(page.locator('[data-testid="stPlotlyChart"]').first).to_be_visible()
            _no_exception(page)
            _check_widths(page, "evaluation", problems)
            for tab in ("ROC & PR", "History", "Threshold", "Misclassified", "Compare"):
                page.get_by_role("tab", name=tab).click()
                _settle(page)
                _no_exception(page)
                _check_widths(page, f"evaluation-{tab.split()[0].lower()}", problems)

            assert "Traceback" not in app_server["log"].read_text()
            nav.get_by_role("link", name="Admin").click()
            page.get_by_label("Admin password").fill(ADMIN_PASSWORD)
            page.get_by_role("button", name="Sign in", exact=True).click()
            expect(page.get_by_role("tab", name="Models")).to_be_visible()
            _no_exception(page)
            _check_widths(page, "admin-retrain", problems)
            page.get_by_role("tab", name="Models").click()
            _settle(page)
            _check_widths(page, "admin-models", problems)
            assert not problems, "\n".join(problems)
            # Offline hygiene: the browser never tries another host (no usage statistics, fonts...).
            assert not outside, outside
            assert not [e for e in console_errors if "ERR_NAME_NOT_RESOLVED" in e or "ERR_INTERNET_DISCONNECTED" in e], console_errors
        finally:
            browser.close()

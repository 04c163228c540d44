"""Browser test: the upload limits hold on the server (issue 21, ui/upload_guard.py).

An attacker does not need the page: once a session exists, files can be PUT straight to
``/_stcore/upload_file/<session>/<file id>``. This test opens the app in Chromium, uploads one
X-ray through the real uploader to learn the session's upload URL and XSRF header (as an
attacker would, from the network tab), then PUTs more files directly from the page: the server
must answer 413 once the session holds MAX_UPLOAD_FILES files, and for a file over 50 MB.
"""

from __future__ import annotations

import re

import pytest

from core import imageio
from test_browser_e2e import CHROMIUM, CHROMIUM_ARGS, NORMAL_XRAY, REPO, streamlit_server

pytestmark = pytest.mark.browser

PUT_JS = """
async ([base, headers, n, size]) => {
  const statuses = [];
  for (let i = 0; i < n; i++) {
    const form = new FormData();
    form.append('file', new Blob([new Uint8Array(size)], {type: 'image/png'}), `direct${i}.png`);
    const r = await fetch(`${base}/${crypto.randomUUID()}`, {method: 'PUT', body: form, headers, credentials: 'include'});
    statuses.push(r.status);
  }
  return statuses;
}
"""


def test_direct_uploads_past_the_limits_are_refused_by_the_server(trained_registry, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with streamlit_server(tmp_path, trained_registry.root, REPO / "samples" / "chest_xray") as srv:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.set_default_timeout(120_000)
                puts = []
                page.on("request", lambda r: puts.append(r) if r.method == "PUT" and "upload_file" in r.url else None)
                page.goto(srv["url"])
                expect(page.locator('[data-testid="stFileUploader"]')).to_be_visible()
                page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(NORMAL_XRAY))
                page.wait_for_function("() => true")
                expect(page.locator("h3").filter(has_text=re.compile("NORMAL|PNEUMONIA|Indeterminate")).first).to_be_visible()
                assert puts, "the uploader made no PUT request"
                base = puts[0].url.rsplit("/", 1)[0]  # .../_stcore/upload_file/<session id>
                headers = {k: v for k, v in puts[0].headers.items() if k.lower() == "x-xsrftoken"}
                # the session holds 1 file; the server takes MAX_UPLOAD_FILES - 1 more, then refuses
                n = imageio.MAX_UPLOAD_FILES + 5
                statuses = page.evaluate(PUT_JS, [base, headers, n, 1000])
                ok = imageio.MAX_UPLOAD_FILES - 1
                assert statuses[:ok] == [204] * ok, statuses
                assert statuses[ok:] == [413] * 6 or statuses[ok:] == [413] * (n - ok), statuses
                # one file over the per-file limit (server.maxUploadSize) is refused too
                big = page.evaluate(PUT_JS, [base, headers, 1, imageio.MAX_BYTES + 2 * 2**20])
                assert big == [413], big
            finally:
                browser.close()
        log = srv["log"].read_text()
        assert "Upload refused (at most" in log

"""Benchmark the Streamlit app: cold start to first prediction, and page render times.

1. **Cold start** (real server + real browser): spawn ``streamlit run streamlit_app.py``,
   wait for ``/_stcore/health``, open the app in headless Chromium, upload a real X-ray and
   wait until the heatmap overlay is on screen. Reports server-ready, first page, first
   prediction (includes importing TensorFlow and loading the model) and a second, warm
   prediction. Falls back to an in-process AppTest sample prediction when
   ``/usr/bin/chromium`` or Playwright is missing.
2. **Page render** (``streamlit.testing.v1.AppTest``): each page run ``--reps`` times in one
   process; the first (cold) run and the p50 of the warm runs, plus a warm sample
   prediction (model cached, new image batch: one compiled pass with the default map + audit line).

Usage::

    python benchmarks/bench_app.py                       # ./artifacts, $PNEUMOSCOPE_DATA_ROOT
    python benchmarks/bench_app.py --artifacts /tmp/reg --data-root samples/chest_xray --reps 5

The audit trail of these runs goes to a throwaway database ($PNEUMOSCOPE_DATABASE_URL), never the registry's.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "streamlit_app.py"
CHROMIUM = Path("/usr/bin/chromium")
XRAYS = [
    REPO / "samples" / "chest_xray" / "test" / "PNEUMONIA" / "person36_virus_81.jpeg",
    REPO / "samples" / "chest_xray" / "test" / "NORMAL" / "IM-0041-0001.jpeg",
]
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--no-first-run",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cold_start(env: dict) -> dict:
    """Server spawn -> health -> first page -> first prediction (heatmap visible) -> warm one."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true", "--server.port", str(port),
        "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
    ]
    out: dict = {}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError("streamlit exited during start-up")
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                time.sleep(0.1)
            if time.perf_counter() - t0 > 120:
                raise TimeoutError("no health response within 120 s")
        out["server_ready_s"] = time.perf_counter() - t0
        if sync_playwright is None or not CHROMIUM.exists():
            out["browser"] = "unavailable (no /usr/bin/chromium or playwright)"
            return out
        with sync_playwright() as pw:
            tb = time.perf_counter()
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            out["browser_launch_s"] = time.perf_counter() - tb
            try:
                page = browser.new_page(viewport={"width": 1440, "height": 2000})
                page.set_default_timeout(180_000)
                t1 = time.perf_counter()
                page.goto(url)
                uploader = page.locator('[data-testid="stFileUploader"] input[type="file"]')
                uploader.wait_for(state="attached")
                out["first_page_s"] = time.perf_counter() - t1
                for i, xray in enumerate(XRAYS):
                    t2 = time.perf_counter()
                    uploader.set_input_files(str(xray))  # additive uploader: 1 file, then 2
                    if i:  # the 2-file batch: its results table, then the detail heatmap
                        page.get_by_text(f"Results ({i + 1} of {i + 1} analysed)").wait_for()
                    page.locator('img[alt$=" overlay"]').first.wait_for(state="visible")
                    key = "first_prediction_s" if i == 0 else "second_upload_s"
                    out[key] = time.perf_counter() - t2
                    if i == 0:
                        out["cold_start_to_first_prediction_s"] = time.perf_counter() - t0 - out["browser_launch_s"]
            finally:
                browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    return out


def page_renders(reps: int) -> dict:
    """AppTest run time per page: cold first run, p50 of warm runs; warm sample prediction."""
    from streamlit.testing.v1 import AppTest

    res: dict = {}
    pages = {"predict": None, "dataset": "app_pages/dataset.py", "evaluation": "app_pages/evaluation.py"}
    for name, path in pages.items():
        times = []
        for _ in range(reps + 1):
            at = AppTest.from_file(str(APP), default_timeout=300)
            t = time.perf_counter()
            at.run()
            if path:
                at.switch_page(path).run()
            times.append(time.perf_counter() - t)
            if at.exception:
                raise RuntimeError(f"{name}: {[e.value for e in at.exception]}")
        res[name] = {"first_s": times[0], "p50_s": statistics.median(times[1:]), "runs": len(times) - 1}
    at = AppTest.from_file(str(APP), default_timeout=300).run()
    if at.button:
        times = []
        for i in range(reps + 1):
            at.selectbox(key="sample_pick").set_value(i % 8)
            t = time.perf_counter()
            at.button(key="sample_go").click().run()
            times.append(time.perf_counter() - t)
            if at.exception:
                raise RuntimeError(f"sample prediction: {[e.value for e in at.exception]}")
        res["predict_sample"] = {"first_s": times[0], "p50_s": statistics.median(times[1:]), "runs": len(times) - 1}
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", default=os.environ.get("PNEUMOSCOPE_ARTIFACTS") or str(REPO / "artifacts"))
    ap.add_argument("--data-root", default=os.environ.get("PNEUMOSCOPE_DATA_ROOT") or "")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--skip-browser", action="store_true")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)

    scratch_db = Path(tempfile.mkdtemp(prefix="bench-app-")) / "bench.db"
    os.environ["PNEUMOSCOPE_ARTIFACTS"] = str(Path(args.artifacts).resolve())
    if args.data_root:
        os.environ["PNEUMOSCOPE_DATA_ROOT"] = str(Path(args.data_root).resolve())
    # a throwaway database (audit trail included), never the registry's
    os.environ["PNEUMOSCOPE_DATABASE_URL"] = f"sqlite:///{scratch_db}"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(REPO))
    from core.registry import Registry

    active = Registry(os.environ["PNEUMOSCOPE_ARTIFACTS"]).active_version()
    print(f"registry {os.environ['PNEUMOSCOPE_ARTIFACTS']} (active: {active}); data root {os.environ.get('PNEUMOSCOPE_DATA_ROOT') or '(default)'}; cpus {os.cpu_count()}")
    figures: dict = {"active_version": active}
    if not args.skip_browser:
        figures["cold_start"] = cold = cold_start(dict(os.environ))
        print("\nCold start (streamlit run + headless Chromium):")
        for k, v in cold.items():
            print(f"  {k:36s} {v:8.2f} s" if isinstance(v, float) else f"  {k:36s} {v}")
    figures["pages"] = pages = page_renders(args.reps)
    print(f"\nPage render (AppTest, in-process; first run, then p50 of {args.reps} warm runs):")
    print(f"  {'page':18s} {'first':>9s} {'p50':>9s}")
    for name, d in pages.items():
        print(f"  {name:18s} {d['first_s']:8.2f}s {d['p50_s']:8.2f}s")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

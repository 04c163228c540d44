"""PACS speed (issue 24): analysing a study that is in the PACS and storing both results, against
the same analysis from an upload, measured in one run; and the watch loop's studies per minute.

Starts its own Orthanc (Debian's `orthanc` + `orthanc-dicomweb`) on free local ports with a
temporary storage folder, loads N studies (the bundled films wrapped as DICOM, a lateral view in
every third study; tools/pacs_demo.py), loads the active model, then

* upload path: ``Predictor.predict_bytes`` on the frontal film's DICOM bytes, with the heatmap
  (what the Predict page does for an upload), per study;
* PACS path: ``core.pacs.analyse_study`` -- list the study, read the headers, choose the frontal
  film, download it, the same analysis, build and STOW the Secondary Capture and the Structured
  Report -- per study, interleaved with the upload path on other studies;
* the watch loop (``core.pacs.watch``, one poll) over the studies left.

    python benchmarks/bench_pacs.py                  # 100 studies, 20 of them timed both ways
    python benchmarks/bench_pacs.py --studies 40 --timed 10 --json out.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=100)
    ap.add_argument("--timed", type=int, default=20, help="studies timed on each path (default 20)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    import orthanc as O  # tests/orthanc.py: start/stop a local Orthanc

    from core import pacs
    from core.dicomweb import DicomWeb, PacsSettings
    from core.predict import Predictor
    from tools.pacs_demo import SAMPLES, film, new_uid

    films = sorted(SAMPLES.rglob("*.jpeg"))
    today = dt.date.today().strftime("%Y%m%d")
    with tempfile.TemporaryDirectory() as tmp, O.orthanc_server(Path(tmp)) as srv:
        uploads: dict[str, bytes] = {}
        for i in range(args.studies):
            uid = new_uid()
            tags = dict(study_uid=uid, patient_id=f"B{i:04d}", patient_name="BENCH^CHILD", study_date=today,
                        study_time=f"{(i // 60) % 24:02d}{i % 60:02d}00")
            frontal = film(films[i % len(films)], view="PA", **tags)
            O.upload(srv["url"], frontal)
            if i % 3 == 0:
                O.upload(srv["url"], film(films[i % len(films)], view="LL", series_number=2, **tags))
            uploads[uid] = frontal
        web = DicomWeb(PacsSettings(url=srv["dicomweb"]))
        predictor = Predictor.from_registry()
        uids = list(uploads)
        from core import db as dbm

        # the benchmark's own audit trail (a throwaway database), not the registry's
        audit = dbm.connect(url=f"sqlite:///{Path(tmp).resolve() / 'bench-audit.db'}")
        # warm both paths once
        predictor.predict_bytes([("warm.dcm", uploads[uids[0]])], with_map=True)
        pacs.analyse_study(web, predictor, uids[0], artifacts=audit)
        upload_s, pacs_s = [], []
        timed = uids[1:1 + 2 * args.timed]
        for a, b in zip(timed[0::2], timed[1::2]):  # interleaved: a load change hits both alike
            t0 = time.perf_counter()
            predictor.predict_bytes([("upload.dcm", uploads[a])], with_map=True)
            upload_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            r = pacs.analyse_study(web, predictor, b, artifacts=audit)
            pacs_s.append(time.perf_counter() - t0)
            assert r.sent, r.message
        state = pacs.WatchState(Path(tmp) / "watch-artifacts")
        for uid in [uids[0], *timed[1::2]]:
            state.record(uid, "done", predictor.version)
        left = len(uids) - 1 - len(timed[1::2])
        t0 = time.perf_counter()
        counts = pacs.watch(web, predictor, state, once=True, lookback_days=1, artifacts=audit)
        watch_s = time.perf_counter() - t0
    up, pa = statistics.median(upload_s), statistics.median(pacs_s)
    res = {
        "studies": args.studies, "timed_each": len(pacs_s),
        "upload_median_s": round(up, 3), "pacs_median_s": round(pa, 3), "pacs_over_upload": round(pa / up, 2),
        "watch_studies": left, "watch_counts": counts, "watch_wall_s": round(watch_s, 1),
        "watch_studies_per_minute": round(60 * counts["analysed"] / watch_s, 1) if watch_s > 0 else None,
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]},
    }
    print(f"{args.studies} studies in a local Orthanc; median of {len(pacs_s)} studies each way, interleaved")
    print(f"  upload path (bytes in, analysis with heatmap)         {1000 * up:8.0f} ms")
    print(f"  PACS path (list, headers, download, analysis, SC+SR)  {1000 * pa:8.0f} ms")
    print(f"  pacs_over_upload {res['pacs_over_upload']:.2f}  (target <= 2)  {'met' if res['pacs_over_upload'] <= 2 else 'MISSED'}")
    print(f"  watch loop: {counts['analysed']} of {left} new studies analysed and sent in {watch_s:.1f} s = "
          f"{res['watch_studies_per_minute']} studies per minute ({counts})")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

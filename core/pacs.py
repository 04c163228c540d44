"""The PACS workflow: pick the frontal film of a study, analyse it like an upload, send the
result back as DICOM (Structured Report + Secondary Capture), and the watch loop. No Streamlit.

One study, :func:`analyse_study`:

1. list the study's instances (QIDO-RS) and choose the frontal chest radiograph
   (:func:`choose_frontal`): CR/DX only, one frame, not one of our own results, PA before AP
   before a film whose view is not recorded; lateral views, other modalities, multi-frame
   objects and other body parts are skipped, each with its reason;
2. download it (WADO-RS, at most ``core.imageio.MAX_BYTES``) and analyse the bytes with the
   same ``Predictor.predict_bytes`` as an upload -- decoded in the isolated, resource-limited
   decode worker (files from a PACS are untrusted too), the same input guard, calibration and
   heatmap; one audit line with ``source="pacs"`` and the study and series UIDs as SHA-256
   (never a patient identifier);
3. send back (STOW-RS) the Secondary Capture, then the Structured Report, in new series of the
   same study (``core.dicom_results``: deterministic UIDs, so a retry stores the same objects and a
   result is never duplicated for the same image and model version; the SR, sent last, marks the
   study as done for this model version).

:func:`watch` polls for new CR/DX studies, analyses each once (state in the shared database,
keyed by the SHA-256 of the study UID, written after each study), survives restarts (a study
whose SR for this model version is already in the PACS is not analysed again), and goes on when
one study fails (retried, then given up with its reason).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable

from pydicom.dataset import Dataset

from core import audit, imageio
from core.dicom_results import RESULT_PREFIX, build_sc, build_sr, result_uids
from core.dicomweb import DicomWeb, PacsError, PacsSettings, flat
from core.formatting import plural, pct, printable, utc_now_iso
from core.fsutil import read_json_file

log = logging.getLogger(__name__)

RADIOGRAPH_MODALITIES = ("CR", "DX")
FRONTAL_VIEWS = ("PA", "AP")
LATERAL_VIEWS = ("LL", "RL", "LAT", "LATERAL", "LLD", "RLD", "LLO", "RLO", "XCL", "XCLL", "XCLR")
MAX_STUDY_INSTANCES = 500  # a chest X-ray study has a handful; thousands is a CT or a mistake
WATCH_MAX_ATTEMPTS = 3

WATCH_LEASE_TTL_S = 60.0  # how long a killed watcher's claim outlives it


def uid_sha256(uid: str) -> str:
    return hashlib.sha256(str(uid).encode()).hexdigest()


# --- choosing the film ------------------------------------------------------------------------
def _ours(inst: dict) -> bool:
    return str(inst.get("Manufacturer", "")).startswith("PneumoScope") or \
        str(inst.get("SeriesDescription", "")).startswith("PneumoScope")


def choose_frontal(instances: Iterable[dict]) -> tuple[dict | None, str, list[str]]:
    """(the instance to analyse or None, why it was chosen, what was skipped and why)."""
    frontal, unknown, skipped = [], [], []
    for inst in instances:
        if _ours(inst):
            continue  # an earlier PneumoScope result
        modality = str(inst.get("Modality", "")).upper()
        view = str(inst.get("ViewPosition", "")).upper().strip()
        body = str(inst.get("BodyPartExamined", "")).upper().strip()
        frames = inst.get("NumberOfFrames") or 1
        try:
            frames = int(frames)
        except (TypeError, ValueError):
            frames = 1
        if modality not in RADIOGRAPH_MODALITIES:
            skipped.append(f"{modality or 'unknown'} image (not a radiograph)")
        elif frames > 1:
            skipped.append(f"multi-frame object ({frames} frames)")
        elif body and body not in ("CHEST", "THORAX", "LUNG"):
            skipped.append(f"{modality} of body part {body}")
        elif view in LATERAL_VIEWS:
            skipped.append(f"lateral view ({view}, not analysed)")
        elif view in FRONTAL_VIEWS:
            frontal.append(inst)
        else:
            unknown.append(inst)
    pool = frontal or unknown

    def rank(inst: dict) -> tuple:
        view = str(inst.get("ViewPosition", "")).upper()
        size = int(inst.get("Rows") or 0) * int(inst.get("Columns") or 0)
        try:
            number = int(inst.get("InstanceNumber") or 0)
        except (TypeError, ValueError):
            number = 0
        return (0 if view == "PA" else 1 if view == "AP" else 2, -size, number)

    if not pool:
        return None, "", skipped
    pool.sort(key=rank)
    chosen = pool[0]
    view = str(chosen.get("ViewPosition", "")).upper()
    if view in FRONTAL_VIEWS:
        why = f"the {view} (frontal) {chosen.get('Modality')} image"
    else:
        why = f"the {chosen.get('Modality')} image whose view is not recorded (no lateral marking; taken as frontal)"
    others = len(pool) - 1
    if others:
        why += f"; {others} other frontal candidate(s) not analysed (largest {view or 'image'} first)"
        skipped.extend(["another frontal candidate"] * others)
    return chosen, why, skipped


# --- one study --------------------------------------------------------------------------------
@dataclasses.dataclass
class StudyResult:
    study_uid: str
    status: str  # "analysed" | "already" | "no_image" | "failed"
    message: str = ""
    prediction: Any = None  # core.predict.Prediction
    chosen: str = ""  # why this film
    skipped: list[str] = dataclasses.field(default_factory=list)
    sent: bool = False
    sop_uid: str | None = None
    series_uid: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("analysed", "already")


def results_in_pacs(web: DicomWeb, study_uid: str) -> list[str]:
    """Model versions PneumoScope has stored an SR for in this study (from its series descriptions)."""
    return result_versions(web.series_of(study_uid, modality="SR"))


def result_versions(rows: Iterable[dict]) -> list[str]:
    """The model versions of PneumoScope's SRs among series or instance rows (QIDO, flat)."""
    versions = set()
    for row in rows:
        desc = str(row.get("SeriesDescription", ""))
        if str(row.get("Modality", "SR")).upper() == "SR" and desc.startswith(RESULT_PREFIX):
            versions.add(desc[len(RESULT_PREFIX):].strip())
    return sorted(versions)


def _versions_done(web: DicomWeb, study_uid: str, instances: list[dict]) -> list[str]:
    """:func:`result_versions` from the study's image list; a PACS that leaves the series
    description out of instance rows is asked for the SR series themselves."""
    srs = [i for i in instances if str(i.get("Modality", "")).upper() == "SR"]
    if srs and not any("SeriesDescription" in i for i in srs):
        return results_in_pacs(web, study_uid)
    return result_versions(srs)


def _reference(meta: dict) -> Dataset:
    """The analysed image's header (DICOM JSON from WADO-RS metadata) as a Dataset for the
    result objects: patient, study, series and SOP attributes; bulk data left out."""
    clean = {k: v for k, v in meta.items() if isinstance(v, dict) and "BulkDataURI" not in v
             and "InlineBinary" not in v and str(k).upper() != "7FE00010"}
    try:
        return Dataset.from_json(clean)
    except Exception as exc:  # noqa: BLE001 - the PACS's JSON is untrusted
        raise PacsError("bad_answer", f"The image's header from the PACS cannot be read ({type(exc).__name__}).") from None


def analyse_study(web: DicomWeb, predictor, study_uid: str, *, send: bool = True, method: str | None = None,
                  force: bool = False, artifacts=None) -> StudyResult:
    """Analyse the frontal film of one study and (``send``) store the result in the PACS; the
    ``predict`` audit event goes to the trail of ``artifacts`` (a root or a ``core.db.Database``).
    Never raises for a bad study or a PACS fault: the result says what happened."""
    res = StudyResult(study_uid=str(study_uid), status="failed")
    try:
        version = predictor.version
        instances = web.study_instances(study_uid)  # one listing answers "already done?" and "which film?"
        if not force and send and version in _versions_done(web, study_uid, instances):
            res.status, res.message = "already", f"Already analysed with model {version}; its result is in the PACS."
            return res
        if len(instances) > MAX_STUDY_INSTANCES:
            res.status = "no_image"
            res.message = (f"The study has {len(instances)} images, more than a chest X-ray study has "
                           f"(at most {MAX_STUDY_INSTANCES}); it was not analysed.")
            return res
        instances = [_complete(web, study_uid, inst) for inst in instances]
        chosen, why, skipped = choose_frontal(instances)
        res.skipped = skipped
        if chosen is None:
            res.status = "no_image"
            res.message = ("No frontal chest radiograph (CR/DX) in this study"
                           + (f": {', '.join(sorted(set(skipped)))}" if skipped else " (it has no images)") + ".")
            return res
        res.chosen, res.sop_uid, res.series_uid = why, chosen["SOPInstanceUID"], chosen["SeriesInstanceUID"]
        data = web.retrieve_instance(study_uid, res.series_uid, res.sop_uid, imageio.MAX_BYTES)
        pred = predictor.predict_bytes([(f"{res.sop_uid}.dcm", data)], with_map=True, method=method)[0]
        pred = dataclasses.replace(pred, filename="PACS image")  # never a UID or a name in what is shown or exported
        res.prediction = pred
        if pred.ok:
            res.status, res.message = "analysed", f"Analysed {why}."
        else:  # unreadable: the report still says so (REJECTED with the reason)
            res.status, res.message = "failed", pred.error or "The image could not be read."
        # One helper thread does the waits (the audit line's commit, then the SC's upload) while
        # this thread builds the result objects: ~10 ms of a ~110 ms study. The audit line is
        # written before anything is sent, as before; a second worker would reorder them.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pacs-io") as io:
            audited = io.submit(audit.prediction, pred, "pacs", artifacts=artifacts, study_uid_sha256=uid_sha256(study_uid),
                                series_uid_sha256=uid_sha256(res.series_uid))
            if send:
                _send(web, study_uid, chosen, pred, why, res, io)
            audited.result()
    except PacsError as e:
        res.status, res.message = "failed", str(e)
        log.warning("PACS study %s: %s", uid_sha256(study_uid)[:12], e)
    return res


_VIEW_FIELDS = ("Modality", "ViewPosition", "BodyPartExamined", "NumberOfFrames", "Manufacturer", "SeriesDescription")


def _complete(web: DicomWeb, study_uid: str, inst: dict) -> dict:
    """QIDO-RS need not return ViewPosition, body part or frames (many servers answer only their
    indexed tags): read those from the instance's metadata (WADO-RS) when they are missing."""
    if "ViewPosition" in inst and "NumberOfFrames" in inst or str(inst.get("Modality", "")).upper() not in ("", *RADIOGRAPH_MODALITIES):
        return inst
    raw = web.instance_metadata(study_uid, inst["SeriesInstanceUID"], inst["SOPInstanceUID"])
    meta = flat(raw)
    return {**inst, **{k: meta[k] for k in _VIEW_FIELDS if k in meta}, **{k: "" for k in ("ViewPosition",) if k not in meta},
            "_metadata": raw}  # kept for the result objects' header (one request less)


def _method_label(pred) -> str | None:
    from core.explain import METHOD_LABELS

    if not pred.heatmap_method:
        return None
    name = METHOD_LABELS.get(pred.heatmap_method, pred.heatmap_method)
    return f"{name} ({pred.heatmap_layer})" if pred.heatmap_layer else name


def _send(web: DicomWeb, study_uid: str, chosen: dict, pred, why: str, res: StudyResult, io: ThreadPoolExecutor) -> None:
    """SC first, then SR (the SR marks the study as done for this model version). The SC is
    uploaded on ``io`` while the SR is built here; the SR is sent only once the SC is stored. A
    header that highdicom cannot use for the SR leaves the SC alone in the PACS: the study is not
    done, and a retry stores the same SC again (deterministic UIDs), as when the SR is refused."""
    meta = chosen.get("_metadata") or web.instance_metadata(study_uid, chosen["SeriesInstanceUID"], chosen["SOPInstanceUID"])
    ref = _reference(meta)
    uids = result_uids(study_uid, chosen["SOPInstanceUID"], pred.model_version or "unknown")
    sc = _built(lambda: build_sc(ref, pred, uids, _method_label(pred)))
    sc_stored = io.submit(web.store, [sc], study_uid)
    try:
        sr = _built(lambda: build_sr(ref, pred, uids, note=f"Analysed {why}."))
    finally:
        sc_stored.result()  # a refused SC raises its PacsError here, and the SR is not sent
    web.store([sr], study_uid)
    res.sent = True
    res.message += " The result was sent to the PACS (structured report and heatmap image)."


def _built(build: Callable[[], Any]) -> Any:
    try:
        return build()
    except Exception as exc:  # noqa: BLE001 - a header highdicom cannot use must not stop the watcher
        raise PacsError("bad_answer", f"The result objects could not be built from the image's header "
                                      f"({type(exc).__name__}: {str(exc)[:200]}).") from None


# --- the worklist ----------------------------------------------------------------------------
def worklist(web: DicomWeb, *, date_from=None, date_to=None, patient_id=None, accession=None,
             modalities=RADIOGRAPH_MODALITIES) -> tuple[list[dict], bool]:
    """Studies newest first (``DicomWeb.search_studies``); (rows, truncated)."""
    return web.search_studies(date_from=date_from, date_to=date_to, modalities=modalities, patient_id=patient_id,
                              accession=accession)


def age_text(birth: str, study_date: str) -> str:
    """'4 y' / '7 mo' from DICOM dates (empty when either is missing)."""
    try:
        b = _dt.datetime.strptime(str(birth)[:8], "%Y%m%d").date()
        d = _dt.datetime.strptime(str(study_date)[:8], "%Y%m%d").date()
    except ValueError:
        return ""
    months = (d.year - b.year) * 12 + d.month - b.month - (d.day < b.day)
    if months < 0:
        return ""
    return f"{months // 12} y" if months >= 24 else f"{months} mo"


# --- the watch loop ----------------------------------------------------------------------------
STUDY_KIND = "pacs-study"  # one database document per study the watcher finished, keyed by SHA-256 of its UID
_STATUSES = ("done", "no_image", "failed", "given_up")
_SHA = re.compile(r"[0-9a-f]{64}")


def _entry(v: Any) -> dict | None:
    """One study's state, fields and sizes bounded (an old state file is untrusted input)."""
    if not isinstance(v, dict) or v.get("status") not in _STATUSES:
        return None
    try:
        attempts = max(0, min(int(v.get("attempts") or 0), 1000))
    except (TypeError, ValueError, OverflowError):
        attempts = 0
    return {"status": v["status"], "attempts": attempts,
            "model_version": str(v["model_version"])[:100] if v.get("model_version") is not None else None,
            "time": str(v.get("time") or "")[:40], "reason": str(v.get("reason") or "")[:300]}


class WatchState:
    """Which studies the watcher has finished: one document per study in the shared database
    (``{"status", "attempts", "model_version", "time", "reason"}``), keyed by the SHA-256 of the
    study UID (no identifiers), written after every study. Every instance sees it, so a watcher that
    takes the lease over from one that died goes on where that one stopped. The pre-database file
    ``<artifacts>/pacs/watch_state.json`` is imported once, entries bounded; the file is left as it is."""

    MAX_ENTRIES = 200_000
    PRUNE_EVERY = 1_000  # records between two prunes (a prune is one DELETE over the index)

    def __init__(self, artifacts: str | os.PathLike | None = None) -> None:
        from core import db as dbm
        from core.layout import Layout

        self.layout = Layout.of(artifacts)
        self.db = dbm.connect(self.layout.root)
        self._since_prune = 0
        self._import_legacy()
        self.db.prune(STUDY_KIND, self.MAX_ENTRIES)

    def _import_legacy(self) -> None:
        path = self.layout.pacs_state
        source = self.layout.relative(path)
        if not path.is_file() or self.db.imported(source):
            return
        try:
            d = read_json_file(path, limit=64 * 2**20)
        except OSError as e:  # a damaged or tampered state file: start over (results in the PACS stop repeats)
            log.warning("Ignoring the old watch state %s: %s", path.name, e)
            return
        studies = d.get("studies") if isinstance(d, dict) else None
        docs = [(STUDY_KIND, k, e) for k, v in (studies.items() if isinstance(studies, dict) else ())
                if isinstance(k, str) and _SHA.fullmatch(k) and (e := _entry(v)) is not None]
        n = self.db.import_documents_once(source, docs)
        if n is not None:
            log.info("Imported %d studies of the watch state %s into the database", n, source)

    def entry(self, study_uid: str) -> dict | None:
        doc = self.db.get(STUDY_KIND, uid_sha256(study_uid))
        return doc.data if doc else None

    def done(self, study_uid: str) -> bool:
        entry = self.entry(study_uid)
        return bool(entry) and (entry.get("status") in ("done", "given_up", "no_image"))

    def record(self, study_uid: str, status: str, model_version: str | None, reason: str = "") -> str:
        """Store the outcome of one study; returns the status stored (a third failure: ``given_up``)."""
        entry = self.entry(study_uid) or {}
        attempts = int(entry.get("attempts") or 0) + (1 if status == "failed" else 0)
        if status == "failed" and attempts >= WATCH_MAX_ATTEMPTS:
            status = "given_up"
        # last writer wins: one watcher per registry holds the "pacs-watch" lease
        self.db.put(STUDY_KIND, uid_sha256(study_uid), {"status": status, "attempts": attempts, "model_version": model_version,
                                                        "time": utc_now_iso(), "reason": reason[:300]})
        self._since_prune += 1
        if self._since_prune >= self.PRUNE_EVERY:  # oldest first out
            self._since_prune = 0
            self.db.prune(STUDY_KIND, self.MAX_ENTRIES)
        return status


def watch(web: DicomWeb, predictor, state: WatchState, *, interval_s: float = 30.0, lookback_days: int = 2,
          once: bool = False, should_stop: Callable[[], bool] = lambda: False,
          report: Callable[[StudyResult], None] = lambda r: None, artifacts=None,
          clock: Callable[[], float] = time.monotonic) -> dict:
    """Poll for CR/DX studies of the last ``lookback_days`` days and analyse each new one once.
    Returns counts and the rate (studies per minute) of the studies analysed."""
    counts = {"analysed": 0, "already": 0, "no_image": 0, "failed": 0, "given_up": 0}
    worked_s = 0.0
    while True:
        today = _dt.date.today()
        try:
            rows, _ = web.search_studies(date_from=(today - _dt.timedelta(days=lookback_days)).isoformat(),
                                         date_to=(today + _dt.timedelta(days=1)).isoformat())
        except PacsError as e:
            log.warning("Watch: %s", e)
            rows = []
            if once:
                raise
        for row in reversed(rows):  # oldest first
            if should_stop():
                break
            uid = row["StudyInstanceUID"]
            if state.done(uid):
                continue
            t0 = clock()
            res = analyse_study(web, predictor, uid, artifacts=artifacts)
            worked_s += clock() - t0
            status = {"analysed": "done", "already": "done", "no_image": "no_image"}.get(res.status, "failed")
            if state.record(uid, status, predictor.version, res.message if status != "done" else "") == "given_up":
                counts["given_up"] += 1
            counts[res.status if res.status in counts else "failed"] += 1
            report(res)
        if once or should_stop():
            break
        end = clock() + interval_s
        while clock() < end and not should_stop():
            time.sleep(min(1.0, max(0.0, end - clock())))
    n = counts["analysed"]
    counts["studies_per_minute"] = round(60.0 * n / worked_s, 1) if worked_s > 0 and n else None
    return counts


# --- CLI ---------------------------------------------------------------------------------------
def add_cli(sub) -> None:
    """``python -m core pacs search | analyse STUDY_UID | watch`` (called by core.cli.build_parser)."""
    p = sub.add_parser("pacs", help="DICOMweb PACS: search studies, analyse one and send the result back, watch for new ones")
    p.add_argument("action", choices=["search", "analyse", "watch"])
    p.add_argument("study_uid", nargs="?", help="Study Instance UID (analyse)")
    p.add_argument("--from", dest="date_from", default=None, help="study date from, YYYY-MM-DD (search)")
    p.add_argument("--to", dest="date_to", default=None, help="study date to, YYYY-MM-DD (search)")
    p.add_argument("--patient-id", default=None, help="exact patient ID (search)")
    p.add_argument("--accession", default=None, help="exact accession number (search)")
    p.add_argument("--limit", type=int, default=25, help="rows to print (search; default 25)")
    p.add_argument("--no-send", action="store_true", help="analyse without sending the result to the PACS")
    p.add_argument("--force", action="store_true", help="analyse even when a result of this model version is in the PACS")
    p.add_argument("--interval", type=float, default=30.0, help="seconds between polls (watch; default 30)")
    p.add_argument("--lookback-days", type=int, default=2, help="studies of the last N days (watch; default 2)")
    p.add_argument("--once", action="store_true", help="one poll, then exit (watch)")
    p.add_argument("--model-version", default=None, help="registry version to use (default: the active one)")


def cmd_pacs(args, registry) -> int:
    import sys

    from core.exitcodes import EXIT_BUSY, EXIT_DATA, EXIT_OK, EXIT_PACS, EXIT_USAGE
    try:
        settings = PacsSettings.from_env()
    except PacsError as e:
        print(f"error: {printable(e)}", file=sys.stderr)
        return EXIT_USAGE
    if settings is None:
        print("error: no PACS is configured: set PNEUMOSCOPE_DICOMWEB_URL (e.g. http://127.0.0.1:8042/dicom-web); "
              "see README 'PACS'.", file=sys.stderr)
        return EXIT_USAGE
    web = DicomWeb(settings)
    try:
        if args.action == "search":
            rows, truncated = worklist(web, date_from=args.date_from, date_to=args.date_to,
                                       patient_id=args.patient_id, accession=args.accession)
            print(f"{'date':<10}  {'patient id':<16}  {'age':>5}  {'images':>6}  {'modalities':<10}  study uid")
            for r in rows[: max(0, args.limit)]:
                print(f"{printable(r['StudyDate'], 10):<10}  {printable(r['PatientID'], 16):<16}  "
                      f"{age_text(r['PatientBirthDate'], r['StudyDate']):>5}  {str(r['NumberOfStudyRelatedInstances'] or ''):>6}  "
                      f"{printable(','.join(r['ModalitiesInStudy']), 10):<10}  {printable(r['StudyInstanceUID'], 64)}")
            more = " (more matched than the search fetches: narrow the dates)" if truncated else ""
            print(f"{plural(len(rows), 'study', 'studies')}{more}")
            return EXIT_OK
        from core.predict import Predictor

        predictor = Predictor.from_registry(registry, args.model_version)
        if args.action == "analyse":
            if not args.study_uid:
                print("error: pacs analyse needs a STUDY_UID", file=sys.stderr)
                return EXIT_USAGE
            res = analyse_study(web, predictor, args.study_uid, send=not args.no_send, force=args.force,
                                artifacts=registry.root)
            _print_result(res)
            if res.status == "failed" and res.prediction is None:
                return EXIT_PACS
            return EXIT_OK if res.ok else EXIT_DATA
        # watch: one watcher per registry, across hosts (a lease in the shared database: a
        # watcher killed with -9 stops renewing it and it lapses after WATCH_LEASE_TTL_S)
        from core import db as dbm

        lease = dbm.Lease(dbm.connect(registry.root), "pacs-watch", ttl_s=WATCH_LEASE_TTL_S)
        if not lease.acquire():
            holder = (dbm.connect(registry.root).lease_holder("pacs-watch") or {}).get("holder", "another process")
            print(f"error: another `pacs watch` is running for this registry ({holder})", file=sys.stderr)
            return EXIT_BUSY
        try:
            state = WatchState(registry.root)
            print(f"watching {settings.display_url} every {args.interval:g} s (model {predictor.version}); Ctrl-C stops")
            counts = watch(web, predictor, state, interval_s=args.interval, lookback_days=args.lookback_days,
                           once=args.once, report=_print_result,
                           artifacts=registry.root)
        finally:
            lease.release()
        rate = counts.pop("studies_per_minute")
        print("; ".join(f"{k} {v}" for k, v in counts.items())
              + (f"; {rate} studies per minute" if rate is not None else ""))
        return EXIT_OK
    except PacsError as e:
        print(f"error: {printable(e)}", file=sys.stderr)
        return EXIT_PACS


def _print_result(res: StudyResult) -> None:
    p = res.prediction
    verdict = ""
    if p is not None and p.ok:
        verdict = "REJECTED" if p.rejected else f"{p.label} {pct(p.probability)}"
    print(f"{res.status:<9} {verdict:<22} {uid_sha256(res.study_uid)[:12]}  {printable(res.message, 300)}")

"""Training jobs that outlive the Streamlit script, one at a time across every instance, crash-safe.

A job is started by :func:`start_job` and runs in its own process::

    python -m core.job_runner <job_dir> --lease-holder H   (new session: reloads, closed tabs,
                                                          other users and Ctrl-C on the app
                                                          do not reach it)

``python -m core train`` registers a job too (:func:`create_job`, ``requested_by="cli"``) and
runs it in the foreground, so the admin page shows and can cancel it like its own.

Roles: this module is the job lifecycle API (register, start, cancel, status, reconcile, wait);
``core.job_runner`` runs a job (``core.runner.run_training`` does the training);
``core.progress`` reads progress for the UI; ``core.locks`` holds the training lock
(``core.locks.acquire_training_lock``). Import each name from the module that defines it.

Where a job lives (issue 25: the shared database, ``core.db``, so that several app instances
behind a load balancer behave as one)::

    documents  kind "job", key <job_id>:  {"state": {...}, "request": {...}}
                 state: status queued|running|succeeded|failed|cancelled, created, started,
                 finished, host + pid of the process running it, version, error,
                 cancel_requested_at, sigterm_sent, ...   (compare-and-swap updates)
                 request: Config.to_dict(), data root, artifacts root, options
               kind "job_pointer", key "current": {"job_id": the most recent job}
    stream     "job:<job_id>": core.events.ProgressEvent.to_dict() + "time", one per event
    lease      "training": held (and renewed) by the process running the job (core.locks)
    <artifacts>/jobs/<job_id>/job.log   free text (logging + stdout/stderr of the job
                 process), a file on the artifacts path all instances share

Job folders of releases before issue 25 (``jobs/<id>/state.json``, ``request.json``,
``events.jsonl``, ``current``) are imported once into the database (idempotent by their path
relative to the artifacts folder) the first time this process looks at that artifacts folder,
so the admin page's history keeps them; the files are left in place and no longer written.

**Exactly one training.** The starter takes the ``training`` lease (one atomic statement in
the database: two concurrent requests -- threads, processes, instances -- give exactly one
job; busy -> :class:`JobBusy`, naming the holder's job and host), registers the job, spawns the
job process and hands the lease over to it (``core.db.Lease.hand_over``): the child renews it
as the same holder, so it is never free between "checked" and "running".

**Crash safety.** Training publishes through ``core.publish.publish`` (staging + atomic
rename), never activates (a CLI job does with ``--activate``), and a job killed at any moment
leaves at most ``.staging`` debris. A job whose state says queued/running while nobody holds
the training lease for it is dead: a job killed with -9 stops renewing, its lease lapses after
the ttl (``core.locks.training_ttl_s``), and the next :func:`refresh` / :func:`start_job` on any
instance marks it ``failed`` ("the training process died"); a new job can start. On the job's
own host the pid is checked too, a fast path that does not wait for the ttl.

**Cancel.** :func:`cancel` sets ``cancel_requested_at`` in the job's document, from any
instance; the job polls it (``should_stop``, at most once a second) and stops at the next batch
with ``TrainingCancelled``. If the job is still running ``CANCEL_GRACE_S`` later, :func:`refresh`
on the job's host sends SIGTERM, whose handler raises ``TrainingCancelled`` in the job
(deferred while a version is being published).

This module never imports streamlit; the admin page (app_pages/admin.py) is a thin layer on it.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

from core import audit, locks
from core import db as dbm
from core.config import Config, default_artifacts_dir, default_data_root
from core.formatting import utc_now_iso
from core.fsutil import read_json_file, read_regular_text

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
ACTIVE_STATUSES = ("queued", "running")
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")
CANCEL_GRACE_S = 15.0  # cancel request first; SIGTERM if the job is still running after this
DIED_MESSAGE = "The training process died (killed or crashed) before finishing; nothing was published."
JOB_KIND = "job"
POINTER_KIND, POINTER_KEY = "job_pointer", "current"
HANDOFF_TTL_S = 120.0  # how long a spawned job process has to take the lease over (it starts in seconds)
HOST = locks.HOST
CAS_RETRIES = 50


class JobError(RuntimeError):
    """A job problem with a message meant for a person."""


class JobBusy(JobError):
    """Another training holds the training lock; ``holder`` says which (job, host), in words."""

    def __init__(self, message: str, holder: str = ""):
        super().__init__(message)
        self.holder = holder


def _parse_iso(s: str | None) -> float | None:
    if not s:
        return None
    try:
        return _dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _artifacts(artifacts: str | os.PathLike | None) -> Path:
    return Path(artifacts if artifacts is not None else default_artifacts_dir()).expanduser().resolve()


def jobs_root(artifacts: str | os.PathLike | None = None) -> Path:
    """``<artifacts>/jobs``, where each job's ``job.log`` is kept (default: ``$PNEUMOSCOPE_ARTIFACTS``
    or ./artifacts)."""
    from core.layout import Layout

    return Layout.of(artifacts).jobs


def events_stream(job_id: str) -> str:
    """The database stream of a job's progress events."""
    return f"job:{job_id}"


def database(artifacts: str | os.PathLike | None = None) -> dbm.Database:
    """The database of the artifacts folder ``artifacts``, its old job folders imported once."""
    art = _artifacts(artifacts)
    db = dbm.connect(art)
    _import_legacy(db, art)
    return db


def pid_alive(pid: int | None) -> bool:
    """True when ``pid`` exists on THIS host and is not a zombie (meaningless for another host's pid)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a dead child not yet reaped by its parent still answers kill(0)
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


# --- job records -------------------------------------------------------------------------
@dataclasses.dataclass
class JobInfo:
    job_id: str
    dir: Path  # <artifacts>/jobs/<job_id>: the job log's folder
    state: dict
    request: dict
    revision: int = 0  # of the job's document; 0 when there is none
    artifacts: Path | None = None

    @property
    def status(self) -> str:
        return self.state.get("status", "unknown")

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def pid(self) -> int | None:
        pid = self.state.get("pid")
        return pid if isinstance(pid, int) and not isinstance(pid, bool) else None

    @property
    def host(self) -> str | None:
        return self.state.get("host")

    @property
    def version(self) -> str | None:
        return self.state.get("version")

    @property
    def error(self) -> str | None:
        return self.state.get("error")

    @property
    def stream(self) -> str:
        return events_stream(self.job_id)

    @property
    def log_path(self) -> Path:
        return self.dir / "job.log"

    @property
    def cancel_requested(self) -> bool:
        return bool(self.state.get("cancel_requested_at"))


# state fields the code compares or sorts on: a value of another type (a tampered file) is dropped.
_STATE_TYPES = {"status": str, "created": str, "started": str, "finished": str, "updated": str, "version": str,
                "error": str, "job_id": str, "cancel_requested_at": str, "sigterm_sent": str, "host": str}


def _clean_state(state: Any) -> dict:
    if not isinstance(state, dict):
        return {}
    return {k: v for k, v in state.items() if k not in _STATE_TYPES or v is None or isinstance(v, _STATE_TYPES[k])}


def _valid_id(job_id: Any) -> bool:
    return isinstance(job_id, str) and 0 < len(job_id) <= 128 and "/" not in job_id and "\\" not in job_id \
        and not job_id.startswith(".")


def _info(job_id: str, doc: dbm.Document | None, art: Path) -> JobInfo:
    data = doc.data if doc is not None else {}
    request = data.get("request")
    return JobInfo(job_id, jobs_root(art) / job_id, _clean_state(data.get("state")),
                   request if isinstance(request, dict) else {}, doc.revision if doc is not None else 0, art)


def update_state(job_id: str, *, artifacts: str | os.PathLike | None = None, expect: Iterable[str] | None = None,
                 revision: int | None = None, **changes: Any) -> tuple[bool, dict]:
    """Merge ``changes`` into a job's state (compare-and-swap on its document, retried when
    another writer came first). With ``expect``, only applies when the current status is one of
    them; with ``revision``, only when the document is still at that revision (what the caller
    decided on). Returns (applied, state after)."""
    db = database(artifacts)
    for _ in range(CAS_RETRIES):
        doc = db.get(JOB_KIND, job_id)
        if doc is None:
            return False, {}
        state = _clean_state(doc.data.get("state"))
        if (expect is not None and state.get("status") not in tuple(expect)) or \
                (revision is not None and doc.revision != revision):
            return False, state
        state.update(changes)
        state["updated"] = utc_now_iso()
        try:
            db.put(JOB_KIND, job_id, {**doc.data, "state": state}, expect=doc.revision)
        except dbm.Conflict:
            continue
        return True, state
    raise JobError(f"The state of job {job_id} kept changing under this update ({CAS_RETRIES} tries); try again.")


def load_job(job: "JobInfo | str | os.PathLike", *, artifacts: str | os.PathLike | None = None) -> JobInfo:
    """A job, read afresh: ``job`` is a JobInfo, a job folder (``<artifacts>/jobs/<id>``, a Path)
    or a job id (a str; then ``artifacts`` says where). A job the database does not know has an
    empty state (status "unknown")."""
    if isinstance(job, JobInfo):
        job_id, art = job.job_id, job.artifacts if job.artifacts is not None else job.dir.parent.parent
    elif isinstance(job, str) and os.sep not in job:
        job_id, art = job, artifacts
    else:
        path = Path(job)
        job_id, art = path.name, path.parent.parent
    art = _artifacts(art)
    doc = database(art).get(JOB_KIND, job_id) if _valid_id(job_id) else None
    return _info(job_id, doc, art)


def get_job(job_id: str, *, artifacts: str | os.PathLike | None = None) -> JobInfo:
    """The job ``job_id``; raises JobError when there is none."""
    art = _artifacts(artifacts)
    doc = database(art).get(JOB_KIND, job_id) if _valid_id(job_id) else None
    if doc is None:
        raise JobError(f"No training job {job_id!r} in {art}.")
    return _info(job_id, doc, art)


def list_jobs(*, artifacts: str | os.PathLike | None = None) -> list[JobInfo]:
    """All jobs, newest first."""
    art = _artifacts(artifacts)
    out = [_info(d.key, d, art) for d in database(art).list(JOB_KIND)]
    out.sort(key=lambda j: (j.state.get("created", ""), j.job_id), reverse=True)
    return out


def current_job(*, artifacts: str | os.PathLike | None = None) -> JobInfo | None:
    """The most recently started job (any status), or None."""
    art = _artifacts(artifacts)
    db = database(art)
    ptr = db.get(POINTER_KIND, POINTER_KEY)
    job_id = (ptr.data.get("job_id") if ptr is not None else None)
    if not _valid_id(job_id):
        return None
    doc = db.get(JOB_KIND, job_id)
    return _info(job_id, doc, art) if doc is not None else None


def running_here(job: JobInfo | None) -> bool:
    """Whether ``job`` is running on THIS machine (it shares the processor with the app)."""
    return job is not None and job.active and job.host == HOST and pid_alive(job.pid)


# --- job folders of releases before issue 25: imported once ------------------------------------
STATE_LIMIT = 1 * 2**20  # state.json / request.json: a few hundred bytes when written by us
_IMPORTED: set[tuple[str, str]] = set()  # (database URL, artifacts root) looked at by this process
_IMPORT_LOCK = threading.Lock()


def _read_json(path: Path, default: Any = None) -> Any:
    """An old job's JSON file read as a bounded regular file (core.fsutil.read_json_file: a FIFO
    does not hang, a symlink to /dev/zero is not followed); ``default`` when absent or refused."""
    try:
        return read_json_file(path, STATE_LIMIT, expect=None)
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as e:  # UnsafeFileError is an OSError
        log.warning("Ignoring %s: %s", path, e)
        return default


def _import_folder(db: dbm.Database, art: Path, d: Path) -> None:
    state = _clean_state(_read_json(d / "state.json", {}))
    if not state:
        return
    request = _read_json(d / "request.json", {})
    state.setdefault("job_id", d.name)
    if (d / "cancel").exists() and not state.get("cancel_requested_at"):
        state["cancel_requested_at"] = state.get("updated") or utc_now_iso()
    try:
        n = db.import_documents_once(f"jobs/{d.name}/state.json", [
            (JOB_KIND, d.name, {"state": state, "request": request if isinstance(request, dict) else {}})])
        if (d / "events.jsonl").is_file() and not (d / "events.jsonl").is_symlink():
            dbm.import_jsonl_once(db, art, f"jobs/{d.name}/events.jsonl", events_stream(d.name))
    except (dbm.DatabaseError, OSError, ValueError) as e:  # one damaged old job must not hide the others
        log.warning("Could not import the old job folder %s: %s", d, e)
        return
    if n:
        log.info("Imported the old job folder %s into %s; its files are no longer written", d, db.describe())


def _import_pointer(db: dbm.Database, root: Path) -> None:
    try:  # bounded regular file: a FIFO does not hang, a link to /dev/zero is not followed
        job_id = read_regular_text(root / "current", 4096).strip()
    except FileNotFoundError:
        return
    except (OSError, ValueError) as e:
        log.warning("Ignoring the old current-job pointer in %s: %s", root, e)
        return
    if _valid_id(job_id) and db.get(JOB_KIND, job_id) is not None and db.get(POINTER_KIND, POINTER_KEY) is None:
        db.import_documents_once("jobs/current", [(POINTER_KIND, POINTER_KEY, {"job_id": job_id})])


def _import_legacy(db: dbm.Database, art: Path) -> None:
    """Import ``<art>/jobs/<id>/{state,request}.json`` + ``events.jsonl`` and ``jobs/current``, once
    per process and artifacts folder (each file once ever: ``core.db`` remembers its path)."""
    key = (db.url, str(art))
    if key in _IMPORTED:
        return
    with _IMPORT_LOCK:
        if key in _IMPORTED:
            return
        root = jobs_root(art)
        try:
            folders = sorted(d for d in root.iterdir() if not d.is_symlink() and d.is_dir()
                             and not d.name.startswith(".") and (d / "state.json").is_file())
        except OSError:  # no jobs folder: nothing to import
            folders = []
        for d in folders:
            _import_folder(db, art, d)
        if folders:
            _import_pointer(db, root)
        _IMPORTED.add(key)


# --- reconcile / refresh ------------------------------------------------------------------
def _death(job: JobInfo, holder: dict | None) -> str | None:
    """None when ``job`` is alive (the training lease is held for it and, on this host, its pid
    exists), else the detail of why it is dead."""
    gone = job.host == HOST and job.pid is not None and not pid_alive(job.pid)
    if holder is None or (holder.get("data") or {}).get("job_id") != job.job_id:
        return f" (pid {job.pid} is gone)" if gone else " (no process renews its training lock)"
    return f" (pid {job.pid} is gone)" if gone else None


def reconcile(*, artifacts: str | os.PathLike | None = None, all_jobs: bool = True) -> list[str]:
    """Detect jobs that died (kill -9, OOM, power loss of the job or of its host) and mark them
    failed; returns their ids. Works from any instance: a job is alive while the training lease
    is held for it (a dead holder's lease lapses after its ttl), and on the job's own host while
    its pid exists. Only the current job can be live, so the frequent check (``all_jobs=False``,
    every page refresh) looks at it alone; starting a job sweeps every job."""
    art = _artifacts(artifacts)
    db = database(art)
    if all_jobs:
        candidates = [j for j in list_jobs(artifacts=art) if j.active]
    else:
        cur = current_job(artifacts=art)
        candidates = [cur] if cur is not None and cur.active else []
    if not candidates:
        return []
    holder = db.lease_holder(locks.TRAINING_LEASE)
    dead = []
    for j in candidates:
        detail = _death(j, holder)
        if detail is None:
            continue
        applied, _ = update_state(j.job_id, artifacts=art, expect=ACTIVE_STATUSES, revision=j.revision,
                                  status="failed", error=DIED_MESSAGE + detail, finished=utc_now_iso())
        if not applied:  # it changed meanwhile (finished, or another instance marked it): decide next time
            continue
        if holder is not None and (holder.get("data") or {}).get("job_id") == j.job_id:
            db.release(locks.TRAINING_LEASE, holder["holder"])  # a dead pid's lease: free it now, not after the ttl
        dead.append(j.job_id)
        log.warning("Training job %s died without finishing%s", j.job_id, detail)
        audit.append("retrain", artifacts=db, outcome="failed", job_id=j.job_id, error=DIED_MESSAGE)
    return dead


_CHILDREN: list[subprocess.Popen] = []


def _reap() -> None:
    """Collect exited children of this process so they do not linger as zombies."""
    for p in list(_CHILDREN):
        if p.poll() is not None:
            _CHILDREN.remove(p)


def refresh(*, artifacts: str | os.PathLike | None = None) -> JobInfo | None:
    """The current job after housekeeping: reap children, mark dead jobs failed, and escalate a
    cancel that the job has not honoured within ``CANCEL_GRACE_S`` to SIGTERM (on its host)."""
    art = _artifacts(artifacts)
    _reap()
    reconcile(artifacts=art, all_jobs=False)
    job = current_job(artifacts=art)
    if job is not None and job.active and job.cancel_requested and not job.state.get("sigterm_sent"):
        asked = _parse_iso(job.state.get("cancel_requested_at"))
        if asked is not None and time.time() - asked >= CANCEL_GRACE_S and running_here(job):
            _signal(job, signal.SIGTERM)
            job = load_job(job)
    return job


def _signal(job: JobInfo, sig: int) -> bool:
    try:
        os.kill(job.pid, sig)
    except (ProcessLookupError, TypeError):
        return False
    except PermissionError as e:
        log.warning("Cannot signal job %s (pid %s): %s", job.job_id, job.pid, e)
        return False
    update_state(job.job_id, artifacts=job.artifacts, expect=ACTIVE_STATUSES, sigterm_sent=utc_now_iso())
    log.info("Sent signal %s to training job %s (pid %s)", sig, job.job_id, job.pid)
    return True


# --- start / cancel -----------------------------------------------------------------------
def _new_job_id() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def busy_error(db: dbm.Database, art: Path) -> JobBusy:
    """The JobBusy of a training lock held by someone else, naming the holder's job and host."""
    holder = db.lease_holder(locks.TRAINING_LEASE)
    data = (holder or {}).get("data") or {}
    doc = db.get(JOB_KIND, data["job_id"]) if _valid_id(data.get("job_id")) else None
    if doc is not None:
        status = _clean_state(doc.data.get("state")).get("status", "starting")
        where = f"job {data['job_id']} is {status}" + (f" on host {data['host']}" if data.get("host") else "")
    elif holder is not None:
        where = f"{locks.describe_holder(holder)} holds the training lock"
    else:
        where = "another process holds the training lock"
    return JobBusy(f"A training job is already running ({where}). Wait for it to finish or cancel it first.", where)


def create_job(
    config: Config | dict,
    data_root: str | os.PathLike | None = None,
    *,
    artifacts: str | os.PathLike | None = None,
    limit_per_class: int | None = None,
    n_bootstrap: int = 1000,
    requested_by: str = "admin",
    version: str | None = None,
    activate: bool = False,
    naive_phase1: bool = False,
) -> tuple[JobInfo, dbm.Lease]:
    """Register a queued job and take the training lock for it: returns ``(job, lease)``.

    The caller runs it (``core.job_runner``: :func:`start_job` hands the lease over to a child
    process, ``python -m core train`` runs it in the foreground) and releases the lease when the
    job is over. Raises JobBusy when a training holds the lock, ValueError for a bad request,
    ``core.db.DatabaseError`` when the database cannot be reached."""
    cfg = Config.from_dict(config) if isinstance(config, dict) else config
    cfg.validate()
    if limit_per_class is not None and (not isinstance(limit_per_class, int) or limit_per_class < 1):
        raise ValueError(f"limit_per_class must be a positive integer or None. Received: limit_per_class={limit_per_class!r}")
    art = _artifacts(artifacts)
    data = Path(data_root if data_root is not None else default_data_root()).expanduser().resolve()
    db = database(art)
    reconcile(artifacts=art)  # a dead job's lease is freed (its pid is gone) or lapses
    job_id = _new_job_id()
    lease = locks.training_lease(db, data={"job_id": job_id, "requested_by": requested_by})
    if not lease.acquire():
        raise busy_error(db, art)
    try:
        (jobs_root(art) / job_id).mkdir(parents=True)
        request = {"job_id": job_id, "config": cfg.to_dict(), "data_root": str(data), "artifacts": str(art),
                   "limit_per_class": limit_per_class, "n_bootstrap": int(n_bootstrap),
                   "requested_by": requested_by, "version": version, "activate": bool(activate),
                   "naive_phase1": bool(naive_phase1)}
        now = utc_now_iso()
        state = {"job_id": job_id, "status": "queued", "created": now, "updated": now, "host": HOST,
                 "pid": os.getpid(), "started": None, "finished": None, "version": None, "error": None}
        with db.transaction() as c:  # the job and the pointer to it, together
            db.put(JOB_KIND, job_id, {"state": state, "request": request}, expect=None, conn=c)
            db.put(POINTER_KIND, POINTER_KEY, {"job_id": job_id}, conn=c)
    except BaseException:
        lease.release()
        raise
    return get_job(job_id, artifacts=art), lease


def _spawn(job: JobInfo, holder: str, python: str | None) -> subprocess.Popen:
    """The job process (``python -m core.job_runner``) in a new session, taking over ``holder``'s lease."""
    env = dict(os.environ)
    env["PNEUMOSCOPE_ARTIFACTS"] = job.request["artifacts"]
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    # No TensorFlow/CUDA start-up noise in the job log (set before the child imports TF);
    # the few lines absl prints while loading are filtered when the log is shown.
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env.setdefault("GRPC_VERBOSITY", "ERROR")
    env["PYTHONUNBUFFERED"] = "1"
    with open(job.log_path, "ab") as logfh:
        return subprocess.Popen(
            [python or sys.executable, "-m", "core.job_runner", str(job.dir), "--lease-holder", holder],
            cwd=str(REPO_ROOT), env=env, stdin=subprocess.DEVNULL, stdout=logfh, stderr=subprocess.STDOUT,
            close_fds=True, start_new_session=True,
        )


def start_job(
    config: Config | dict,
    data_root: str | os.PathLike | None = None,
    *,
    artifacts: str | os.PathLike | None = None,
    limit_per_class: int | None = None,
    n_bootstrap: int = 1000,
    python: str | None = None,
    requested_by: str = "admin",
) -> JobInfo:
    """Start a training job in a separate process. Raises JobBusy when one is running,
    ValueError for a bad config, JobError when the process cannot be started.

    The job's "retrain started" audit line is written by the job process
    (``core.runner.run_training``), like a CLI training's."""
    job, lease = create_job(config, data_root, artifacts=artifacts, limit_per_class=limit_per_class,
                            n_bootstrap=n_bootstrap, requested_by=requested_by)
    try:
        proc = _spawn(job, lease.holder, python)
    except BaseException as e:
        lease.release()
        update_state(job.job_id, artifacts=job.artifacts, expect=ACTIVE_STATUSES, status="failed",
                     finished=utc_now_iso(), error=f"Could not start the training process: {e}")
        raise JobError(f"Could not start the training process: {e}") from e
    _CHILDREN.append(proc)
    # The child renews the lease as the same holder; until it does, the lease lives HANDOFF_TTL_S
    # (and on this host the pid says at once if the child died before taking it over).
    lease.hand_over(max(HANDOFF_TTL_S, lease.ttl_s))
    update_state(job.job_id, artifacts=job.artifacts, expect=ACTIVE_STATUSES, pid=proc.pid)
    log.info("Started training job %s (pid %s)", job.job_id, proc.pid)
    return load_job(job)


def cancel(job: JobInfo | str, *, artifacts: str | os.PathLike | None = None, sigterm: bool = False) -> JobInfo:
    """Ask a job to stop, from any instance: sets ``cancel_requested_at`` in its document (the job
    polls it and stops at the next batch). ``sigterm=True`` also signals it right away when it runs
    on this host (otherwise refresh() on its host does after a grace period)."""
    job = get_job(job, artifacts=artifacts) if isinstance(job, str) else load_job(job)
    applied, state = update_state(job.job_id, artifacts=job.artifacts, expect=ACTIVE_STATUSES,
                                  cancel_requested_at=utc_now_iso())
    if not applied:
        raise JobError(f"Job {job.job_id} is not running (status: {state.get('status', 'unknown')}); nothing to cancel.")
    audit.append("cancel", artifacts=job.artifacts, outcome="requested", job_id=job.job_id)
    job = load_job(job)
    if sigterm and running_here(job):
        _signal(job, signal.SIGTERM)
    return load_job(job)


def cancel_requested(job_id: str, *, artifacts: str | os.PathLike | None = None) -> bool:
    """Whether someone (on any instance) asked job ``job_id`` to stop."""
    doc = database(artifacts).get(JOB_KIND, job_id)
    return doc is not None and bool(_clean_state(doc.data.get("state")).get("cancel_requested_at"))


def wait(job: JobInfo | str, timeout: float = 600.0, poll: float = 0.2, *,
         artifacts: str | os.PathLike | None = None) -> JobInfo:
    """Block until the job is terminal (or dead -> marked failed). Raises TimeoutError."""
    job = get_job(job, artifacts=artifacts) if isinstance(job, str) else job
    deadline = time.monotonic() + timeout
    while True:
        _reap()
        j = load_job(job)
        if not j.active:
            return j
        reconcile(artifacts=j.artifacts)
        if time.monotonic() > deadline:
            raise TimeoutError(f"Job {job.job_id} still {j.status} after {timeout:.0f} s")
        time.sleep(poll)

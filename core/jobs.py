"""Training jobs that outlive the Streamlit script, one at a time, crash-safe.

A job is started by :func:`start_job` and runs in its own process::

    python -m core.job_runner <job_dir> --lock-fd N     (new session: reloads, closed tabs,
                                                         other users and Ctrl-C on the app
                                                         do not reach it)

``python -m core train`` registers a job too (:func:`create_job`, ``requested_by="cli"``) and
runs it in the foreground, so the admin page shows and can cancel it like its own.

Roles: this module is the job lifecycle API (register, start, cancel, status, reconcile, wait);
``core.job_runner`` runs a job (``core.runner.run_training`` does the training);
``core.progress`` reads progress for the UI; ``core.locks`` holds the locks
(``core.locks.acquire_training_lock``). Import each name from the module that defines it.

Layout under ``artifacts/jobs/`` (git-ignored)::

    train.lock            flock held by the running job's process for its whole life; the
                          kernel frees it when that process exits or is killed (even -9)
    start.lock            serialises starters and liveness probes (held for milliseconds;
                          ``core.locks.file_lock``)
    current               id of the most recent job
    <job_id>/
      request.json        Config.to_dict(), data root, registry root, options
      state.json          status queued|running|succeeded|failed|cancelled, pid, created,
                          started, finished, version, error, ...
      events.jsonl        core.events.ProgressEvent.to_dict() per line (core.jsonl)
      job.log             logging + stdout/stderr of the job process (a CLI job: its logging)
      cancel              present = cancellation requested (polled by should_stop)

**Exactly one job.** The starter takes ``start.lock``, then ``train.lock`` without blocking
(busy -> :class:`JobBusy`), writes the job folder and spawns the child with that very
descriptor inherited (``pass_fds``): the lock is never released between "checked" and
"running", so two concurrent requests (threads or processes) give exactly one job. The
starter closes its copy; the child's copy keeps the lock until the child exits.

**Crash safety.** Training publishes through ``core.publish.publish`` (staging + atomic
rename), never activates (a CLI job does with ``--activate``), and a job killed at any moment leaves at most ``.staging`` debris.
A job whose state says queued/running while ``train.lock`` is free is dead: the next
:func:`refresh` / :func:`start_job` marks it ``failed`` ("the training process died"), and a
new job can start.

**Cancel.** :func:`cancel` writes the ``cancel`` flag that ``should_stop`` polls (training
stops at the next batch with ``TrainingCancelled``); if the job is still running
``CANCEL_GRACE_S`` later, :func:`refresh` sends SIGTERM, whose handler raises
``TrainingCancelled`` in the job (deferred while a version is being published).

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
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

from core import audit, locks
from core.config import Config, default_artifacts_dir, default_data_root
from core.fsutil import atomic_write_text, read_json_file, read_regular_text, write_json_atomic
from core.formatting import utc_now_iso

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
ACTIVE_STATUSES = ("queued", "running")
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")
CANCEL_GRACE_S = 15.0  # cancel flag first; SIGTERM if the job is still running after this
DIED_MESSAGE = "The training process died (killed or crashed) before finishing; nothing was published."


class JobError(RuntimeError):
    """A job problem with a message meant for a person."""


class JobBusy(JobError):
    """Another training job is queued or running."""


def _parse_iso(s: str | None) -> float | None:
    if not s:
        return None
    try:
        return _dt.datetime.fromisoformat(s).timestamp()
    except ValueError:
        return None


def jobs_root(artifacts: str | os.PathLike | None = None) -> Path:
    """``<artifacts>/jobs`` (default: ``$PNEUMOSCOPE_ARTIFACTS`` or ./artifacts)."""
    from core.layout import Layout

    return Layout.of(artifacts).jobs


# --- small file primitives ---------------------------------------------------------------
STATE_LIMIT = 1 * 2**20  # state.json / request.json: a few hundred bytes when written by us


def _read_json(path: Path, default: Any = None) -> Any:
    """A job's JSON file read as a bounded regular file (core.fsutil.read_json_file: a FIFO does not
    hang, a symlink to /dev/zero is not followed); ``default`` when absent or refused."""
    try:
        return read_json_file(path, STATE_LIMIT, expect=None)
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as e:  # UnsafeFileError is an OSError
        log.warning("Ignoring %s: %s", path, e)
        return default


def pid_alive(pid: int | None) -> bool:
    """True when ``pid`` exists and is not a zombie."""
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
    dir: Path
    state: dict
    request: dict

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
    def version(self) -> str | None:
        return self.state.get("version")

    @property
    def error(self) -> str | None:
        return self.state.get("error")

    @property
    def events_path(self) -> Path:
        return self.dir / "events.jsonl"

    @property
    def log_path(self) -> Path:
        return self.dir / "job.log"

    @property
    def cancel_requested(self) -> bool:
        return (self.dir / "cancel").exists()


# state.json fields the code compares or sorts on: a value of another type (a tampered file) is dropped.
_STATE_TYPES = {"status": str, "created": str, "started": str, "finished": str, "updated": str, "version": str,
                "error": str, "job_id": str, "cancel_requested_at": str, "sigterm_sent": str}


def read_state(job_dir: str | os.PathLike) -> dict:
    """state.json of a job ({} when absent or refused); fields of the wrong type are dropped."""
    state = _read_json(Path(job_dir) / "state.json", {})
    if not isinstance(state, dict):
        return {}
    return {k: v for k, v in state.items() if k not in _STATE_TYPES or v is None or isinstance(v, _STATE_TYPES[k])}


def update_state(job_dir: str | os.PathLike, *, expect: Iterable[str] | None = None, **changes: Any) -> tuple[bool, dict]:
    """Merge ``changes`` into state.json atomically (read-modify-write under a per-job flock).

    With ``expect``, only applies when the current status is one of them. Returns
    (applied, state after).
    """
    job_dir = Path(job_dir)
    with locks.file_lock(job_dir / ".state.lock"):
        state = read_state(job_dir)
        if expect is not None and state.get("status") not in tuple(expect):
            return False, state
        state.update(changes)
        state["updated"] = utc_now_iso()
        write_json_atomic(job_dir / "state.json", state)
        return True, state


def load_job(job_dir: str | os.PathLike) -> JobInfo:
    d = Path(job_dir)
    request = _read_json(d / "request.json", {})
    return JobInfo(d.name, d, read_state(d), request if isinstance(request, dict) else {})


def get_job(job_id: str, *, root: Path | None = None) -> JobInfo:
    root = root or jobs_root()
    if not isinstance(job_id, str) or "/" in job_id or job_id.startswith(".") or (root / job_id).is_symlink() \
            or not (root / job_id).is_dir():
        raise JobError(f"No training job {job_id!r} in {root}.")
    return load_job(root / job_id)


def list_jobs(*, root: Path | None = None) -> list[JobInfo]:
    """All jobs, newest first. A job folder that is a symlink is skipped (never read or updated
    through the link)."""
    root = root or jobs_root()
    if not root.is_dir():
        return []
    out = [load_job(d) for d in root.iterdir()
           if not d.is_symlink() and d.is_dir() and not d.name.startswith(".") and (d / "state.json").is_file()]
    out.sort(key=lambda j: (j.state.get("created", ""), j.job_id), reverse=True)
    return out


def current_job(*, root: Path | None = None) -> JobInfo | None:
    """The most recently started job (any status), or None."""
    root = root or jobs_root()
    try:  # bounded regular file: a FIFO does not hang, a link to /dev/zero is not followed
        job_id = read_regular_text(root / "current", 4096).strip()
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("Ignoring the current-job pointer in %s: %s", root, e)
        return None
    if not job_id or "/" in job_id or job_id.startswith(".") or os.path.islink(root / job_id) \
            or not (root / job_id).is_dir():
        return None
    return load_job(root / job_id)


# --- reconcile / refresh ------------------------------------------------------------------
def _reconcile_locked(root: Path, audit_path: str | os.PathLike | None = None, all_jobs: bool = True) -> list[str]:
    """Mark queued/running jobs as failed when no process holds train.lock. Caller holds
    start.lock. Returns the ids marked dead.

    Only the current job can be live, so the frequent check (``all_jobs=False``, every page
    refresh) looks at it alone; starting a job sweeps every folder (e.g. one whose starter
    was killed between creating it and recording it as current)."""
    if not root.is_dir():
        return []
    if all_jobs:
        candidates = [j for j in list_jobs(root=root) if j.active]
    else:
        cur = current_job(root=root)
        candidates = [cur] if cur is not None and cur.active else []
    if not candidates or not locks.training_lock_is_free(root):  # we hold start.lock: no starter races
        return []
    dead = []
    for j in candidates:
        detail = f" (pid {j.pid} is gone)" if j.pid and not pid_alive(j.pid) else ""
        applied, _ = update_state(j.dir, expect=ACTIVE_STATUSES, status="failed", error=DIED_MESSAGE + detail,
                                  finished=utc_now_iso())
        if applied:
            dead.append(j.job_id)
            log.warning("Training job %s died without finishing%s", j.job_id, detail)
            audit.append("retrain", path=audit_path or j.request.get("audit_path"), outcome="failed",
                         job_id=j.job_id, error=DIED_MESSAGE)
    return dead


def reconcile(*, root: Path | None = None, audit_path: str | os.PathLike | None = None, all_jobs: bool = True) -> list[str]:
    """Detect jobs that died (kill -9, OOM, power loss of the job or of the app) and mark them failed."""
    root = root or jobs_root()
    if not root.is_dir():
        return []
    with locks.start_guard(root):
        return _reconcile_locked(root, audit_path, all_jobs)


_CHILDREN: list[subprocess.Popen] = []


def _reap() -> None:
    """Collect exited children of this process so they do not linger as zombies."""
    for p in list(_CHILDREN):
        if p.poll() is not None:
            _CHILDREN.remove(p)


def refresh(*, root: Path | None = None) -> JobInfo | None:
    """The current job after housekeeping: reap children, mark dead jobs failed, and
    escalate a cancel that the job has not honoured within ``CANCEL_GRACE_S`` to SIGTERM."""
    root = root or jobs_root()
    _reap()
    reconcile(root=root, all_jobs=False)
    job = current_job(root=root)
    if job is not None and job.active and job.cancel_requested and not job.state.get("sigterm_sent"):
        asked = _parse_iso(job.state.get("cancel_requested_at"))
        if asked is not None and time.time() - asked >= CANCEL_GRACE_S and pid_alive(job.pid):
            _signal(job, signal.SIGTERM)
            job = load_job(job.dir)
    return job


def _signal(job: JobInfo, sig: int) -> bool:
    try:
        os.kill(job.pid, sig)
    except (ProcessLookupError, TypeError):
        return False
    except PermissionError as e:
        log.warning("Cannot signal job %s (pid %s): %s", job.job_id, job.pid, e)
        return False
    update_state(job.dir, expect=ACTIVE_STATUSES, sigterm_sent=utc_now_iso())
    log.info("Sent signal %s to training job %s (pid %s)", sig, job.job_id, job.pid)
    return True


# --- start / cancel -----------------------------------------------------------------------
def _new_job_id() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def create_job(
    config: Config | dict,
    data_root: str | os.PathLike | None = None,
    *,
    artifacts: str | os.PathLike | None = None,
    limit_per_class: int | None = None,
    n_bootstrap: int = 1000,
    audit_path: str | os.PathLike | None = None,
    requested_by: str = "admin",
    version: str | None = None,
    activate: bool = False,
    naive_phase1: bool = False,
) -> tuple[JobInfo, int]:
    """Register a queued job and take the training lock for it: returns ``(job, lock_fd)``.

    The caller runs it (``core.job_runner``: :func:`start_job` hands ``lock_fd`` to a child
    process, ``python -m core train`` runs it in the foreground) and closes ``lock_fd`` when the
    job is over. Raises JobBusy when a training is running, ValueError for a bad request."""
    cfg = Config.from_dict(config) if isinstance(config, dict) else config
    cfg.validate()
    if limit_per_class is not None and (not isinstance(limit_per_class, int) or limit_per_class < 1):
        raise ValueError(f"limit_per_class must be a positive integer or None. Received: limit_per_class={limit_per_class!r}")
    art = Path(artifacts if artifacts is not None else default_artifacts_dir()).expanduser().resolve()
    root = jobs_root(art)
    data = Path(data_root if data_root is not None else default_data_root()).expanduser().resolve()
    audit_file = str(Path(audit_path).resolve()) if audit_path is not None else str(audit.default_audit_path(art).resolve())
    root.mkdir(parents=True, exist_ok=True)
    with locks.start_guard(root):
        _reconcile_locked(root, audit_file)
        fd = locks.try_training_lock(root)
        if fd is None:
            cur = current_job(root=root)
            what = f"job {cur.job_id} is {cur.status}" if cur is not None else "another process holds the training lock"
            raise JobBusy(f"A training job is already running ({what}). Wait for it to finish or cancel it first.")
        try:
            job_id = _new_job_id()
            job_dir = root / job_id
            job_dir.mkdir()
            write_json_atomic(job_dir / "request.json", {
                "job_id": job_id, "config": cfg.to_dict(), "data_root": str(data), "artifacts": str(art),
                "limit_per_class": limit_per_class, "n_bootstrap": int(n_bootstrap), "audit_path": audit_file,
                "requested_by": requested_by, "version": version, "activate": bool(activate),
                "naive_phase1": bool(naive_phase1),
            })
            update_state(job_dir, job_id=job_id, status="queued", created=utc_now_iso(), pid=None, started=None,
                         finished=None, version=None, error=None)
            (job_dir / "events.jsonl").touch()
            atomic_write_text(root / "current", job_id + "\n", fsync=False)
        except BaseException:
            os.close(fd)
            raise
    return load_job(job_dir), fd


def _spawn(job: JobInfo, fd: int, python: str | None) -> subprocess.Popen:
    """The job process (``python -m core.job_runner``) in a new session, holding ``fd``."""
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
            [python or sys.executable, "-m", "core.job_runner", str(job.dir), "--lock-fd", str(fd)],
            cwd=str(REPO_ROOT), env=env, stdin=subprocess.DEVNULL, stdout=logfh, stderr=subprocess.STDOUT,
            pass_fds=(fd,), close_fds=True, start_new_session=True,
        )


def start_job(
    config: Config | dict,
    data_root: str | os.PathLike | None = None,
    *,
    artifacts: str | os.PathLike | None = None,
    limit_per_class: int | None = None,
    n_bootstrap: int = 1000,
    audit_path: str | os.PathLike | None = None,
    python: str | None = None,
    requested_by: str = "admin",
) -> JobInfo:
    """Start a training job in a separate process. Raises JobBusy when one is running,
    ValueError for a bad config, JobError when the process cannot be started.

    The job's "retrain started" audit line is written by the job process
    (``core.runner.run_training``), like a CLI training's."""
    job, fd = create_job(config, data_root, artifacts=artifacts, limit_per_class=limit_per_class,
                         n_bootstrap=n_bootstrap, audit_path=audit_path, requested_by=requested_by)
    try:
        proc = _spawn(job, fd, python)
        _CHILDREN.append(proc)
        update_state(job.dir, pid=proc.pid)
    except BaseException as e:
        update_state(job.dir, expect=ACTIVE_STATUSES, status="failed", finished=utc_now_iso(),
                     error=f"Could not start the training process: {e}")
        raise JobError(f"Could not start the training process: {e}") from e
    finally:
        os.close(fd)  # the child holds its own inherited copy of the lock now
    log.info("Started training job %s (pid %s)", job.job_id, proc.pid)
    return load_job(job.dir)


def cancel(job: JobInfo | str, *, root: Path | None = None, audit_path: str | os.PathLike | None = None,
           sigterm: bool = False) -> JobInfo:
    """Ask a job to stop: writes the cancel flag (polled by should_stop at the next batch).
    ``sigterm=True`` also signals it right away (otherwise refresh() does after a grace period)."""
    job = get_job(job, root=root) if isinstance(job, str) else job
    if not job.active:
        raise JobError(f"Job {job.job_id} is not running (status: {job.status}); nothing to cancel.")
    atomic_write_text(job.dir / "cancel", utc_now_iso() + "\n", fsync=False)
    update_state(job.dir, expect=ACTIVE_STATUSES, cancel_requested_at=utc_now_iso())
    audit.append("cancel", path=audit_path or job.request.get("audit_path"), outcome="requested", job_id=job.job_id)
    job = load_job(job.dir)
    if sigterm and pid_alive(job.pid):
        _signal(job, signal.SIGTERM)
    return load_job(job.dir)


def wait(job: JobInfo | str, timeout: float = 600.0, poll: float = 0.2, *, root: Path | None = None) -> JobInfo:
    """Block until the job is terminal (or dead -> marked failed). Raises TimeoutError."""
    job = get_job(job, root=root) if isinstance(job, str) else job
    root = job.dir.parent
    deadline = time.monotonic() + timeout
    while True:
        _reap()
        j = load_job(job.dir)
        if not j.active:
            return j
        reconcile(root=root)
        if time.monotonic() > deadline:
            raise TimeoutError(f"Job {job.job_id} still {j.status} after {timeout:.0f} s")
        time.sleep(poll)

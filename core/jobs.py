"""Training jobs that outlive the Streamlit script, one at a time, crash-safe.

A job is started by :func:`start_job` and runs in its own process::

    python -m core.jobs run <job_dir> --lock-fd N       (new session: reloads, closed tabs,
                                                         other users and Ctrl-C on the app
                                                         do not reach it)

Layout under ``artifacts/jobs/`` (git-ignored)::

    train.lock            flock held by the running job's process for its whole life; the
                          kernel frees it when that process exits or is killed (even -9)
    start.lock            serialises starters and liveness probes (held for milliseconds)
    current               id of the most recent job
    active_history.json   activations (what "roll back" goes back to; written by core.admin)
    auth_lockout.json     admin login failures (core.auth)
    <job_id>/
      request.json        Config.to_dict(), data root, registry root, options
      state.json          status queued|running|succeeded|failed|cancelled, pid, created,
                          started, finished, version, error, ...
      events.jsonl        core.training.ProgressEvent.to_dict() per line
      job.log             logging + stdout/stderr of the job process
      cancel              present = cancellation requested (polled by should_stop)

**Exactly one job.** The starter takes ``start.lock``, then ``train.lock`` without blocking
(busy -> :class:`JobBusy`), writes the job folder and spawns the child with that very
descriptor inherited (``pass_fds``): the lock is never released between "checked" and
"running", so two concurrent requests (threads or processes) give exactly one job. The
starter closes its copy; the child's copy keeps the lock until the child exits.

**Crash safety.** Training publishes through ``core.training.publish`` (staging + atomic
rename), never activates, and a job killed at any moment leaves at most ``.staging`` debris.
A job whose state says queued/running while ``train.lock`` is free is dead: the next
:func:`refresh` / :func:`start_job` marks it ``failed`` ("the training process died"), and a
new job can start.

**Cancel.** :func:`cancel` writes the ``cancel`` flag that ``should_stop`` polls (training
stops at the next batch with ``TrainingCancelled``); if the job is still running
``CANCEL_GRACE_S`` later, :func:`refresh` sends SIGTERM, whose handler raises
``TrainingCancelled`` in the job (deferred while a version is being published).

This module never imports streamlit; the admin page (pages/admin.py) is a thin layer on it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import errno
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator

from core import audit
from core.config import Config, default_artifacts_dir, default_data_root
from core.registry import write_json_atomic

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
ACTIVE_STATUSES = ("queued", "running")
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")
CANCEL_GRACE_S = 15.0  # cancel flag first; SIGTERM if the job is still running after this
BATCH_EVENT_INTERVAL_S = 1.0  # batch events are thinned to at most one per second
DIED_MESSAGE = "The training process died (killed or crashed) before finishing; nothing was published."

EXIT_OK, EXIT_FAILED, EXIT_BUSY, EXIT_DATA, EXIT_CANCELLED = 0, 1, 2, 3, 130


class JobError(RuntimeError):
    """A job problem with a message meant for a person."""


class JobBusy(JobError):
    """Another training job is queued or running."""


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _parse_iso(s: str | None) -> float | None:
    if not s:
        return None
    try:
        return _dt.datetime.fromisoformat(s).timestamp()
    except ValueError:
        return None


def jobs_root(artifacts: str | os.PathLike | None = None) -> Path:
    """``<artifacts>/jobs`` (default: ``$PNEUMOSCOPE_ARTIFACTS`` or ./artifacts)."""
    return (Path(artifacts) if artifacts is not None else default_artifacts_dir()) / "jobs"


# --- small file primitives ---------------------------------------------------------------
def _read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


@contextlib.contextmanager
def _flocked(path: Path, mode: int = fcntl.LOCK_EX) -> Iterator[int]:
    """Hold ``flock(mode)`` on ``path`` (created if needed) for the ``with`` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(path), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, mode)
        yield fd
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def _start_guard(root: Path):
    return _flocked(root / "start.lock")


def _try_train_lock(root: Path) -> int | None:
    """An fd holding the exclusive training lock, or None when a job holds it."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(root / "train.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def acquire_training_lock(artifacts: str | os.PathLike | None = None) -> int | None:
    """For other entry points (the CLI): an fd holding the training lock, or None when busy.

    Taken under the start guard, like ``start_job``; close the fd to release it (the kernel
    does on exit, even on kill -9).
    """
    root = jobs_root(artifacts)
    root.mkdir(parents=True, exist_ok=True)
    with _start_guard(root):
        return _try_train_lock(root)


def _train_lock_free_locked(root: Path) -> bool:
    """Whether no process holds train.lock. Caller holds start.lock (so no starter races)."""
    fd = _try_train_lock(root)
    if fd is None:
        return False
    os.close(fd)
    return True


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
        return self.state.get("pid")

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


def read_state(job_dir: str | os.PathLike) -> dict:
    return _read_json(Path(job_dir) / "state.json", {}) or {}


def update_state(job_dir: str | os.PathLike, *, expect: Iterable[str] | None = None, **changes: Any) -> tuple[bool, dict]:
    """Merge ``changes`` into state.json atomically (read-modify-write under a per-job flock).

    With ``expect``, only applies when the current status is one of them. Returns
    (applied, state after).
    """
    job_dir = Path(job_dir)
    with _flocked(job_dir / ".state.lock"):
        state = read_state(job_dir)
        if expect is not None and state.get("status") not in tuple(expect):
            return False, state
        state.update(changes)
        state["updated"] = _now_iso()
        write_json_atomic(job_dir / "state.json", state)
        return True, state


def load_job(job_dir: str | os.PathLike) -> JobInfo:
    d = Path(job_dir)
    return JobInfo(d.name, d, read_state(d), _read_json(d / "request.json", {}) or {})


def get_job(job_id: str, *, root: Path | None = None) -> JobInfo:
    root = root or jobs_root()
    if not isinstance(job_id, str) or "/" in job_id or job_id.startswith(".") or not (root / job_id).is_dir():
        raise JobError(f"No training job {job_id!r} in {root}.")
    return load_job(root / job_id)


def list_jobs(*, root: Path | None = None) -> list[JobInfo]:
    """All jobs, newest first."""
    root = root or jobs_root()
    if not root.is_dir():
        return []
    out = [load_job(d) for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and (d / "state.json").is_file()]
    out.sort(key=lambda j: (j.state.get("created", ""), j.job_id), reverse=True)
    return out


def current_job(*, root: Path | None = None) -> JobInfo | None:
    """The most recently started job (any status), or None."""
    root = root or jobs_root()
    try:
        job_id = (root / "current").read_text().strip()
    except OSError:
        return None
    if not job_id or not (root / job_id).is_dir():
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
    if not candidates or not _train_lock_free_locked(root):
        return []
    dead = []
    for j in candidates:
        detail = f" (pid {j.pid} is gone)" if j.pid and not pid_alive(j.pid) else ""
        applied, _ = update_state(j.dir, expect=ACTIVE_STATUSES, status="failed", error=DIED_MESSAGE + detail,
                                  finished=_now_iso())
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
    with _start_guard(root):
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
    update_state(job.dir, expect=ACTIVE_STATUSES, sigterm_sent=_now_iso())
    log.info("Sent signal %s to training job %s (pid %s)", sig, job.job_id, job.pid)
    return True


# --- start / cancel -----------------------------------------------------------------------
def _new_job_id() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


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
    ValueError for a bad config, JobError when the process cannot be started."""
    cfg = Config.from_dict(config) if isinstance(config, dict) else config
    cfg.validate()
    if limit_per_class is not None and (not isinstance(limit_per_class, int) or limit_per_class < 1):
        raise ValueError(f"limit_per_class must be a positive integer or None. Received: limit_per_class={limit_per_class!r}")
    art = Path(artifacts if artifacts is not None else default_artifacts_dir()).expanduser().resolve()
    root = jobs_root(art)
    data = Path(data_root if data_root is not None else default_data_root()).expanduser().resolve()
    audit_file = str(Path(audit_path).resolve()) if audit_path is not None else str(audit.default_audit_path(art).resolve())
    root.mkdir(parents=True, exist_ok=True)

    with _start_guard(root):
        _reconcile_locked(root, audit_file)
        fd = _try_train_lock(root)
        if fd is None:
            cur = current_job(root=root)
            what = f"job {cur.job_id} is {cur.status}" if cur is not None else "another process holds the training lock"
            raise JobBusy(f"A training job is already running ({what}). Wait for it to finish or cancel it first.")
        job_id = _new_job_id()
        job_dir = root / job_id
        try:
            job_dir.mkdir()
            request = {
                "job_id": job_id, "config": cfg.to_dict(), "data_root": str(data), "artifacts": str(art),
                "limit_per_class": limit_per_class, "n_bootstrap": int(n_bootstrap), "audit_path": audit_file,
                "requested_by": requested_by,
            }
            write_json_atomic(job_dir / "request.json", request)
            update_state(job_dir, job_id=job_id, status="queued", created=_now_iso(), pid=None, started=None,
                         finished=None, version=None, error=None)
            (job_dir / "events.jsonl").touch()
            tmp = root / f".current.{uuid.uuid4().hex}.tmp"
            tmp.write_text(job_id + "\n")
            os.replace(tmp, root / "current")
            env = dict(os.environ)
            env["PNEUMOSCOPE_ARTIFACTS"] = str(art)
            env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
            # No TensorFlow/CUDA start-up noise in the job log (set before the child imports TF);
            # the few lines absl prints while loading are filtered when the log is shown.
            env["TF_CPP_MIN_LOG_LEVEL"] = "3"
            env.setdefault("GRPC_VERBOSITY", "ERROR")
            env["PYTHONUNBUFFERED"] = "1"
            with open(job_dir / "job.log", "ab") as logfh:
                proc = subprocess.Popen(
                    [python or sys.executable, "-m", "core.jobs", "run", str(job_dir), "--lock-fd", str(fd)],
                    cwd=str(REPO_ROOT), env=env, stdin=subprocess.DEVNULL, stdout=logfh, stderr=subprocess.STDOUT,
                    pass_fds=(fd,), close_fds=True, start_new_session=True,
                )
            _CHILDREN.append(proc)
            update_state(job_dir, pid=proc.pid)
        except BaseException as e:
            if job_dir.is_dir():
                update_state(job_dir, expect=ACTIVE_STATUSES, status="failed", finished=_now_iso(),
                             error=f"Could not start the training process: {e}")
            raise JobError(f"Could not start the training process: {e}") from e
        finally:
            os.close(fd)  # the child holds its own inherited copy of the lock now
    log.info("Started training job %s (pid %s)", job_id, proc.pid)
    audit.training("started", source="job", path=audit_file, config=cfg, job_id=job_id, requested_by=requested_by,
                   data_root=str(data))
    return load_job(job_dir)


def cancel(job: JobInfo | str, *, root: Path | None = None, audit_path: str | os.PathLike | None = None,
           sigterm: bool = False) -> JobInfo:
    """Ask a job to stop: writes the cancel flag (polled by should_stop at the next batch).
    ``sigterm=True`` also signals it right away (otherwise refresh() does after a grace period)."""
    job = get_job(job, root=root) if isinstance(job, str) else job
    if not job.active:
        raise JobError(f"Job {job.job_id} is not running (status: {job.status}); nothing to cancel.")
    tmp = job.dir / f".cancel.{uuid.uuid4().hex}.tmp"
    tmp.write_text(_now_iso() + "\n")
    os.replace(tmp, job.dir / "cancel")
    update_state(job.dir, expect=ACTIVE_STATUSES, cancel_requested_at=_now_iso())
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


# --- progress reading -----------------------------------------------------------------------
def read_events(job: JobInfo | str | os.PathLike, offset: int = 0) -> tuple[list[dict], int]:
    """Complete JSON lines of events.jsonl from byte ``offset``; returns (events, new offset)."""
    path = job.events_path if isinstance(job, JobInfo) else Path(job) / "events.jsonl"
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return [], offset
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset
    events = []
    for raw in data[: end + 1].splitlines():
        try:
            ev = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(ev, dict):
            events.append(ev)
    return events, offset + end + 1


TRAIN_PHASES = ("head", "finetune")


class ProgressSummary:
    """Folds progress events into what the page shows (phase, epoch, batch bar, curves, ETA).

    Incremental: keep one per job, ``update`` with the events read since the last offset.
    """

    def __init__(self) -> None:
        self.offset = 0
        self.phase: str | None = None
        self.message = ""
        self.epoch: int | None = None
        self.epochs: int | None = None
        self.batch: int | None = None
        self.batches: int | None = None
        self.batch_metrics: dict = {}
        self.elapsed_s = 0.0
        self.done = False
        self.n_events = 0
        self.curves: dict[str, dict[str, list[float]]] = {}
        self._phase_t0: dict[str, float] = {}

    def update(self, events: Iterable[dict]) -> "ProgressSummary":
        for ev in events:
            self.n_events += 1
            kind, phase = ev.get("kind"), ev.get("phase")
            before = self.elapsed_s
            self.elapsed_s = float(ev.get("elapsed_s") or self.elapsed_s)
            if kind == "done":
                self.done, self.phase, self.message = True, "done", "Training finished; publishing the version"
                continue
            if phase and phase != self.phase:
                # (Re-)entering a phase: it started when the previous event was written.
                self.phase = phase
                self._phase_t0[phase] = before if kind != "phase_start" else self.elapsed_s
                self.epoch = self.epochs = self.batch = self.batches = None
            if ev.get("message"):
                self.message = ev["message"]
            if kind == "phase_start":
                self._phase_t0[phase] = self.elapsed_s
                self.epochs = ev.get("epochs")
            elif kind == "batch":
                self.batch, self.batches = ev.get("batch"), ev.get("batches")
                if ev.get("epoch") is not None:
                    self.epoch, self.epochs = ev.get("epoch"), ev.get("epochs")
                self.batch_metrics = ev.get("metrics") or {}
            elif kind == "epoch_end":
                self.epoch, self.epochs = ev.get("epoch"), ev.get("epochs")
                self.batch = self.batches = ev.get("batches")
                c = self.curves.setdefault(phase or "?", {})
                for k, v in (ev.get("metrics") or {}).items():
                    c.setdefault(k, []).append(v)
        return self

    @property
    def fraction(self) -> float | None:
        """Fraction of the current phase done (None when unknown)."""
        if self.phase in TRAIN_PHASES and self.epochs:
            ep = (self.epoch or 1) - 1
            within = (self.batch / self.batches) if self.batch and self.batches else 0.0
            if self.batch and self.batches and self.batch == self.batches and self.epoch:
                ep, within = self.epoch, 0.0  # epoch complete
            return min(max((ep + within) / self.epochs, 0.0), 1.0)
        if self.batch and self.batches:
            return min(self.batch / self.batches, 1.0)
        return None

    @property
    def batch_fraction(self) -> float | None:
        if self.batch and self.batches:
            return min(self.batch / self.batches, 1.0)
        return None

    @property
    def eta_s(self) -> float | None:
        """Remaining time of the current phase, extrapolated (early stopping may end it sooner)."""
        f = self.fraction
        t0 = self._phase_t0.get(self.phase or "")
        if not f or f <= 0 or t0 is None or f >= 1:
            return None
        spent = self.elapsed_s - t0
        return max(spent * (1 - f) / f, 0.0) if spent > 0 else None

    def epoch_table(self) -> list[dict]:
        """One row per finished epoch over both phases: {'epoch', 'phase', metrics...}."""
        rows, n = [], 0
        for phase in TRAIN_PHASES:
            c = self.curves.get(phase, {})
            length = max((len(v) for v in c.values()), default=0)
            for i in range(length):
                n += 1
                rows.append({"epoch": n, "phase": phase, **{k: v[i] for k, v in c.items() if i < len(v)}})
        return rows

    def to_dict(self) -> dict:
        return {
            "phase": self.phase, "message": self.message, "epoch": self.epoch, "epochs": self.epochs,
            "batch": self.batch, "batches": self.batches, "batch_metrics": self.batch_metrics,
            "elapsed_s": self.elapsed_s, "eta_s": self.eta_s, "fraction": self.fraction, "done": self.done,
            "curves": self.curves, "n_events": self.n_events,
        }


def summarize(job: JobInfo | str | os.PathLike, summary: ProgressSummary | None = None) -> ProgressSummary:
    """Read new events of ``job`` into ``summary`` (a fresh one by default)."""
    summary = summary or ProgressSummary()
    events, summary.offset = read_events(job, summary.offset)
    return summary.update(events)


def log_tail(job: JobInfo | str | os.PathLike, lines: int = 40, max_bytes: int = 65536) -> str:
    path = job.log_path if isinstance(job, JobInfo) else Path(job) / "job.log"
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(size - max_bytes, 0))
            data = fh.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


# --- the job process --------------------------------------------------------------------------
class _Signals:
    """SIGTERM/SIGINT -> TrainingCancelled in the main thread, except while publishing."""

    def __init__(self) -> None:
        self.received = False
        self.defer = False

    def handler(self, signum, frame) -> None:  # noqa: ARG002
        first = not self.received
        self.received = True
        if first and not self.defer:
            from core.training import TrainingCancelled

            raise TrainingCancelled(f"Training was cancelled (signal {signal.Signals(signum).name}).")


def _setup_job_logging(job_dir: Path) -> None:
    handler = logging.FileHandler(job_dir / "job.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def _event_writer(job_dir: Path):
    fh = open(job_dir / "events.jsonl", "a", buffering=1)
    last = {"t": 0.0}
    elog = logging.getLogger("core.jobs.progress")

    def emit(ev) -> None:
        d = ev.to_dict() if hasattr(ev, "to_dict") else dict(ev)
        if d.get("kind") == "batch":
            now = time.monotonic()
            last_of_epoch = d.get("batch") is not None and d.get("batch") == d.get("batches")
            if now - last["t"] < BATCH_EVENT_INTERVAL_S and not last_of_epoch:
                return
            last["t"] = now
        else:
            if d.get("kind") == "epoch_end":
                m = " ".join(f"{k}={v:.4f}" for k, v in (d.get("metrics") or {}).items() if isinstance(v, (int, float)))
                elog.info("%s epoch %s/%s %s", d.get("phase"), d.get("epoch"), d.get("epochs"), m)
            elif d.get("kind") == "phase_start" and d.get("message"):
                elog.info("%s", d["message"])  # stage messages are logged by core.training itself
        fh.write(json.dumps(d, default=float, separators=(",", ":")) + "\n")

    return emit, fh


def _recover_registry(artifacts: str | os.PathLike | None, audit_path: str | os.PathLike | None = None) -> None:
    """Leftovers of a killed training (issue 14): remove stale ``.staging`` folders and finish an
    interrupted ``publish(activate=True)``. Only call it while holding the training lock."""
    from core import admin
    from core.registry import Registry

    try:
        reg = Registry(artifacts)
        n = reg.clean_staging()
        done = admin.complete_pending_activation(reg, source="job", audit_path=audit_path)
        if n or done:
            log.info("Registry recovery: %d stale staging entries removed; interrupted activation completed: %s", n, done)
    except Exception:  # noqa: BLE001 - housekeeping must not stop a training from starting
        log.warning("Registry recovery at job start failed", exc_info=True)


JOB_NICENESS = 10  # a clinician's prediction in the app must not wait behind training


def _lower_priority() -> None:
    """Lower this (training) process's CPU priority so the app's predictions stay fast."""
    try:
        os.nice(JOB_NICENESS)
    except (OSError, AttributeError) as e:  # pragma: no cover - not permitted / not POSIX
        log.info("Could not lower the training job's priority: %s", e)


def run(job_dir: str | os.PathLike, lock_fd: int | None = None) -> int:
    """Body of the job process (``python -m core.jobs run``). Returns the exit code."""
    job_dir = Path(job_dir).resolve()
    root = job_dir.parent
    _setup_job_logging(job_dir)
    _lower_priority()
    request = _read_json(job_dir / "request.json")
    if not isinstance(request, dict):
        log.error("No readable request.json in %s", job_dir)
        update_state(job_dir, status="failed", error="The job folder has no readable request.json.", finished=_now_iso())
        return EXIT_FAILED
    audit_path = request.get("audit_path")
    job_id = request.get("job_id", job_dir.name)

    if lock_fd is None:  # started by hand: take the lock like a starter would
        with _start_guard(root):
            lock_fd = _try_train_lock(root)
        if lock_fd is None:
            update_state(job_dir, status="failed", error="Another training job is running.", finished=_now_iso())
            return EXIT_BUSY
    else:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # already ours (inherited); asserts it

    _recover_registry(request.get("artifacts"), audit_path)  # we hold the training lock: no publish is running

    sigs = _Signals()
    cancel_flag = job_dir / "cancel"

    def should_stop() -> bool:
        return sigs.received or cancel_flag.exists()

    update_state(job_dir, status="running", pid=os.getpid(), started=_now_iso())
    log.info("Training job %s started (pid %d)", job_id, os.getpid())
    emit, events_fh = _event_writer(job_dir)
    outcome, fields, code = "failed", {}, EXIT_FAILED
    try:
        # Installed inside the try: a signal from here on always ends in a recorded state.
        signal.signal(signal.SIGTERM, sigs.handler)
        signal.signal(signal.SIGINT, sigs.handler)
        from core.dataset import DatasetError
        from core.registry import Registry, RegistryError
        from core.training import TrainingCancelled, publish, train

        try:
            cfg = Config.from_dict(request["config"])
            result = train(cfg, request["data_root"], progress=emit, should_stop=should_stop,
                           limit_per_class=request.get("limit_per_class"), n_bootstrap=int(request.get("n_bootstrap") or 1000))
            sigs.defer = True  # from here on a signal must not interrupt the atomic publish
            if should_stop():
                raise TrainingCancelled("Training was cancelled before publishing.")
            registry = Registry(request.get("artifacts"))
            version = publish(result, registry, activate=False)
            test = result.metrics.get("test", {})
            fields = {"version": version, "wall_time_s": result.provenance.get("wall_time_s"),
                      "test": {k: test.get(k) for k in ("accuracy", "roc_auc", "sensitivity", "specificity")} if test else {},
                      "val_roc_auc": result.metrics.get("validation", {}).get("roc_auc")}
            outcome, code = "succeeded", EXIT_OK
            log.info("Published version %s (not active)", version)
        except TrainingCancelled as e:
            sigs.defer = True
            outcome, code, fields = "cancelled", EXIT_CANCELLED, {"error": str(e) or "Training was cancelled."}
            log.info("Training job %s cancelled: %s", job_id, e)
        except (DatasetError, ValueError, RegistryError, FileNotFoundError) as e:
            sigs.defer = True
            outcome, code, fields = "failed", EXIT_DATA, {"error": str(e)}
            log.error("Training job %s failed: %s", job_id, e)
        except MemoryError:
            sigs.defer = True
            outcome, fields = "failed", {"error": "Out of memory: try a smaller input size or batch size."}
            log.exception("Training job %s ran out of memory", job_id)
        except Exception as e:  # noqa: BLE001 - the reason goes to the page, the traceback to the log
            sigs.defer = True
            outcome, fields = "failed", {"error": f"Unexpected error: {type(e).__name__}: {e} (see the job log)."}
            log.exception("Training job %s failed unexpectedly", job_id)
    except BaseException as e:  # noqa: BLE001 - a signal during the except blocks above, SystemExit...
        sigs.defer = True
        if outcome not in ("cancelled", "succeeded"):  # never relabel a version already published
            outcome, code = "cancelled", EXIT_CANCELLED
            fields = {"error": str(e) or type(e).__name__}
    finally:
        sigs.defer = True
        events_fh.close()
    update_state(job_dir, status=outcome, finished=_now_iso(), **fields)
    audit.training(outcome, source="job", path=audit_path, job_id=job_id, version=fields.get("version"),
                   error=fields.get("error"))
    log.info("Training job %s finished: %s", job_id, outcome)
    return code  # the lock is released when this process exits


# --- CLI --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.jobs", description="PneumoScope training jobs.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run a prepared job folder (normally started by start_job)")
    p.add_argument("job_dir")
    p.add_argument("--lock-fd", type=int, default=None, help="inherited descriptor holding train.lock")
    p = sub.add_parser("status", help="show the current job")
    p.add_argument("--artifacts", default=None)
    p = sub.add_parser("cancel", help="cancel a job")
    p.add_argument("job_id")
    p.add_argument("--artifacts", default=None)
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args.job_dir, args.lock_fd)
    root = jobs_root(args.artifacts)
    try:
        if args.command == "status":
            job = refresh(root=root)
            print(json.dumps(job.state if job else {"status": "none"}, indent=2))
            return EXIT_OK
        cancel(args.job_id, root=root)
        print(f"cancel requested for {args.job_id}")
        return EXIT_OK
    except JobError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())

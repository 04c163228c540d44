"""Running a registered training job: ``python -m core.job_runner JOB_DIR [--lease-holder H]``.

:func:`execute` runs the job of a job folder in the calling process and records it in the
shared database (``core.jobs``): its state (running with this host and pid, then succeeded /
failed / cancelled with the reason), its progress events (stream ``job:<id>``), ``job.log`` in
the job folder (logging); a cancel request in its document (set from any instance, polled at
most once a second) and SIGTERM cancel it. The training itself is
:func:`core.runner.run_training`. Two callers:

* :func:`run`, the body of the job process that :func:`core.jobs.start_job` spawns in a new
  session, taking over the training lease the starter took (``--lease-holder``: it renews it as
  the same holder; ``core.locks``). Started by hand without it, it takes the lease itself (busy:
  exit code 6). It lowers its CPU priority, and maps the outcome to an exit code of
  :mod:`core.exitcodes`: 0 published, 1 unexpected error, 3 data/config problem, 6 another job
  holds the lock, 130 cancelled. Killed with -9, it stops renewing the lease, which lapses after
  its ttl: any instance then marks the job failed and a new training can start.
* ``python -m core train`` (``core.cli.cmd_train``), in the foreground: its job is registered
  by ``core.jobs.create_job`` and executed here with the CLI's progress printer as ``echo``;
  SIGINT stays the terminal's Ctrl-C (KeyboardInterrupt), SIGTERM (the admin page's escalated
  cancel) cancels like in a job process.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from core import db as dbm
from core import jobs, locks
from core.config import Config
from core.events import ProgressFn, TrainingCancelled
from core.exitcodes import EXIT_BUSY, EXIT_CANCELLED, EXIT_DATA, EXIT_ERROR, EXIT_OK
from core.formatting import utc_now_iso
from core.jobs import load_job, update_state

log = logging.getLogger("core.jobs")  # the job log's lines keep the name they always had

BATCH_EVENT_INTERVAL_S = 1.0  # batch events are thinned to at most one per second
JOB_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # the job process: both cancel
JOB_NICENESS = 10  # a clinician's prediction in the app must not wait behind training
CANCEL_POLL_S = 1.0  # the job's document is read for a cancel request at most this often
LEASE_LOST_MESSAGE = ("The training lock was lost (the database could not be reached to renew it, or another "
                      "training took it over); stopped so that two trainings never run at once. Nothing was published.")


class _Signals:
    """The given signals -> TrainingCancelled in the main thread, until :meth:`hold` (publishing)."""

    def __init__(self, signums: tuple[int, ...]) -> None:
        self.signums = signums
        self.received = False
        self.defer = False
        self._saved: dict[int, object] = {}

    def handler(self, signum, frame) -> None:  # noqa: ARG002
        first = not self.received
        self.received = True
        if first and not self.defer:
            raise TrainingCancelled(f"Training was cancelled (signal {signal.Signals(signum).name}).")

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers; the cancel flag still works
        for s in self.signums:
            self._saved[s] = signal.signal(s, self.handler)

    def hold(self) -> None:
        """From here on a signal must not interrupt (the atomic publish, recording the outcome)."""
        self.defer = True

    def restore(self) -> None:
        for s, previous in self._saved.items():
            signal.signal(s, previous)
        self._saved.clear()


@contextlib.contextmanager
def job_log(job_dir: Path) -> Iterator[None]:
    """``logging`` (INFO and up) also goes to ``job_dir/job.log`` for the duration. Handlers that
    were there keep showing what they showed (the CLI's console stays at WARNING)."""
    root = logging.getLogger()
    before = root.level
    quiet = [h for h in root.handlers if h.level == logging.NOTSET]
    for h in quiet:
        h.setLevel(before)
    handler = logging.FileHandler(job_dir / "job.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(min(before, logging.INFO) if before else logging.NOTSET)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(before)
        for h in quiet:
            h.setLevel(logging.NOTSET)


def _event_writer(db: dbm.Database, job_id: str, echo: ProgressFn | None = None) -> ProgressFn:
    """Progress -> the job's stream (batch events thinned, epoch lines logged) and ``echo``."""
    stream = jobs.events_stream(job_id)
    last = {"t": 0.0}
    elog = logging.getLogger("core.jobs.progress")

    def emit(ev) -> None:
        if echo is not None:
            echo(ev)
        d = ev.to_dict() if hasattr(ev, "to_dict") else dict(ev)
        if d.get("kind") == "batch":
            now = time.monotonic()
            last_of_epoch = d.get("batch") is not None and d.get("batch") == d.get("batches")
            if now - last["t"] < BATCH_EVENT_INTERVAL_S and not last_of_epoch:
                return
            last["t"] = now
        elif d.get("kind") == "epoch_end":
            m = " ".join(f"{k}={v:.4f}" for k, v in (d.get("metrics") or {}).items() if isinstance(v, (int, float)))
            elog.info("%s epoch %s/%s %s", d.get("phase"), d.get("epoch"), d.get("epochs"), m)
        elif d.get("kind") == "phase_start" and d.get("message"):
            elog.info("%s", d["message"])  # stage messages are logged by core.training itself
        d["time"] = utc_now_iso("milliseconds", zulu=True)  # the page's ETA counts from the last event
        try:
            db.append(stream, d)
        except dbm.DatabaseError as e:  # the page loses a progress line, the training goes on
            elog.warning("Could not write a progress event: %s", e)

    return emit


def _log_failure(job_id: str, exc: BaseException, outcome: str, reason: str) -> None:
    if outcome == "cancelled":
        log.info("Training job %s cancelled: %s", job_id, reason)
    elif isinstance(exc, Exception) and reason.startswith(("Unexpected error", "Out of memory")):
        log.error("Training job %s failed: %s", job_id, reason, exc_info=exc)  # the traceback, in the log only
    else:
        log.error("Training job %s failed: %s", job_id, reason)


def _stop_poller(job_id: str, art, sigs: _Signals, lease: dbm.Lease | None):
    """``should_stop`` of a job: a signal, a lost lease, or a cancel request in its document (read
    at most every CANCEL_POLL_S: should_stop is called once per batch)."""
    seen = {"t": 0.0, "cancel": False}

    def should_stop() -> bool:
        if sigs.received or (lease is not None and lease.lost.is_set()):
            return True
        now = time.monotonic()
        if not seen["cancel"] and now - seen["t"] >= CANCEL_POLL_S:
            seen["t"] = now
            try:
                seen["cancel"] = jobs.cancel_requested(job_id, artifacts=art)
            except dbm.DatabaseError as e:  # the lease renewal says whether the database is gone for good
                log.warning("Could not read the cancel request of job %s: %s", job_id, e)
        return seen["cancel"]

    return should_stop


def execute(job_dir: str | os.PathLike, request: dict, *, lease: dbm.Lease | None, source: str = "job",
            echo: ProgressFn | None = None, signums: tuple[int, ...] = JOB_SIGNALS,
            on_recovered=None):
    """Run the job of ``job_dir`` (its ``request``) in this process and record its outcome in
    its document; returns the ``core.runner.TrainingRun``. Raises what the training raised (after
    recording it), ``core.jobs.JobBusy``, or ``core.jobs.JobError`` when the job is no longer
    queued or running (e.g. marked dead meanwhile). ``lease`` holds the training lock (None:
    taken here, for the run)."""
    from core.registry import Registry
    from core.runner import failure, run_training

    job_dir = Path(job_dir)
    job_id = request.get("job_id", job_dir.name)
    art = request.get("artifacts") or job_dir.parent.parent
    sigs = _Signals(signums)
    should_stop = _stop_poller(job_id, art, sigs, lease)
    applied, state = update_state(job_id, artifacts=art, expect=jobs.ACTIVE_STATUSES, status="running",
                                  pid=os.getpid(), host=jobs.HOST, started=utc_now_iso())
    if not applied:
        raise jobs.JobError(f"Job {job_id} is {state.get('status', 'unknown')}, not queued; it is not run.")
    log.info("Training job %s started (pid %d on %s)", job_id, os.getpid(), jobs.HOST)
    outcome, fields = "cancelled", {"error": "Training was cancelled."}  # a signal before the first line below
    try:
        sigs.install()  # inside the try: a signal from here on always ends in a recorded state
        run = run_training(
            Config.from_dict(request["config"]), Registry(request.get("artifacts")), data_root=Path(request["data_root"]),
            source=source, progress=_event_writer(jobs.database(art), job_id, echo), should_stop=should_stop, lease=lease,
            job_id=job_id, requested_by=request.get("requested_by"),
            limit_per_class=request.get("limit_per_class"), n_bootstrap=int(request.get("n_bootstrap") or 1000),
            naive_phase1=bool(request.get("naive_phase1")), version=request.get("version"),
            activate=bool(request.get("activate")), before_publish=sigs.hold, on_recovered=on_recovered,
        )
        outcome, fields = "succeeded", run.record()
        return run
    except BaseException as e:
        sigs.hold()
        outcome, reason = failure(e)
        if lease is not None and lease.lost.is_set():
            outcome, reason = "failed", LEASE_LOST_MESSAGE
        fields = {"error": reason}
        _log_failure(job_id, e, outcome, reason)
        raise
    finally:
        sigs.hold()
        update_state(job_id, artifacts=art, status=outcome, finished=utc_now_iso(), **fields)
        log.info("Training job %s finished: %s", job_id, outcome)
        sigs.restore()


def exit_code(exc: BaseException | None) -> int:
    """The job process's exit code for a training that raised ``exc`` (None: published)."""
    from core.distribute import DistributedTrainingError
    from core.db import DatabaseError
    from core.exitcodes import EXIT_DATABASE
    from core.runner import OOM_MESSAGE, failure

    if exc is None:
        return EXIT_OK
    if isinstance(exc, DistributedTrainingError):  # a lost worker: not a data problem (as in the CLI)
        return EXIT_ERROR
    if isinstance(exc, DatabaseError):
        return EXIT_DATABASE
    outcome, reason = failure(exc)
    if outcome == "cancelled":
        return EXIT_CANCELLED
    return EXIT_ERROR if reason == OOM_MESSAGE or reason.startswith("Unexpected error") else EXIT_DATA


def _lower_priority() -> None:
    """Lower this (training) process's CPU priority so the app's predictions stay fast."""
    try:
        os.nice(JOB_NICENESS)
    except (OSError, AttributeError) as e:  # pragma: no cover - not permitted / not POSIX
        log.info("Could not lower the training job's priority: %s", e)


def run(job_dir: str | os.PathLike, lease_holder: str | None = None) -> int:
    """Body of the job process (``python -m core.job_runner JOB_DIR``). Returns the exit code.
    ``lease_holder``: the holder id of the training lease the starter took and handed over."""
    job_dir = Path(job_dir).resolve()
    job_dir.mkdir(parents=True, exist_ok=True)
    with job_log(job_dir):
        _lower_priority()
        job = load_job(job_dir)
        if not job.request:
            log.error("Job %s is not registered in the database (no request)", job.job_id)
            return EXIT_ERROR
        lease = locks.training_lease(job.artifacts, holder=lease_holder,
                                     data={"job_id": job.job_id, "requested_by": job.request.get("requested_by")})
        if not lease.acquire():  # started by hand while another training runs, or the hand-over lapsed
            log.error("Training job %s: another training holds the lock (%s)", job.job_id,
                      locks.describe_holder(locks.training_lock_holder(job.artifacts)))
            update_state(job.job_id, artifacts=job.artifacts, expect=("queued",), status="failed",
                         error="Another training job is running.", finished=utc_now_iso())
            return EXIT_BUSY
        try:
            execute(job_dir, job.request, lease=lease)
        except BaseException as e:  # noqa: BLE001 - recorded by execute; the exit code says which kind
            return exit_code(e)
        finally:
            lease.release()  # after the outcome is recorded: a finished job is never taken for a dead one
        return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.job_runner",
                                     description="Run a prepared PneumoScope training job folder (normally started by "
                                                 "core.jobs.start_job).")
    parser.add_argument("job_dir")
    parser.add_argument("--lease-holder", default=None,
                        help="holder id of the training lease handed over by the starter (core.locks)")
    args = parser.parse_args(argv)
    return run(args.job_dir, args.lease_holder)


if __name__ == "__main__":
    sys.exit(main())

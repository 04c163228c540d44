"""The training job process: ``python -m core.job_runner JOB_DIR [--lock-fd N]``.

Started by :func:`core.jobs.start_job` in a new session with the training lock's descriptor
inherited (``--lock-fd``); started by hand without it, it takes the lock itself (busy: exit
code 6). It reads ``JOB_DIR/request.json``, trains, publishes the version (never activates)
and records the outcome in ``state.json`` and the audit log. Exit codes come from
:mod:`core.exitcodes`: 0 published, 1 unexpected error, 3 data/config problem,
6 another job holds the lock, 130 cancelled.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from core import audit, locks
from core.config import Config
from core.exitcodes import EXIT_BUSY, EXIT_CANCELLED, EXIT_DATA, EXIT_ERROR, EXIT_OK
from core.formatting import utc_now_iso
from core.jobs import (
    _read_json,
    _start_guard,
    _try_train_lock,
    update_state,
)

log = logging.getLogger("core.jobs")  # the job log's lines keep the name they always had

BATCH_EVENT_INTERVAL_S = 1.0  # batch events are thinned to at most one per second


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
        n, done = admin.recover(Registry(artifacts), source="job", audit_path=audit_path)
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
    """Body of the job process (``python -m core.job_runner JOB_DIR``). Returns the exit code."""
    job_dir = Path(job_dir).resolve()
    root = job_dir.parent
    _setup_job_logging(job_dir)
    _lower_priority()
    request = _read_json(job_dir / "request.json")
    if not isinstance(request, dict):
        log.error("No readable request.json in %s", job_dir)
        update_state(job_dir, status="failed", error="The job folder has no readable request.json.", finished=utc_now_iso())
        return EXIT_ERROR
    audit_path = request.get("audit_path")
    job_id = request.get("job_id", job_dir.name)

    if lock_fd is None:  # started by hand: take the lock like a starter would
        with _start_guard(root):
            lock_fd = _try_train_lock(root)
        if lock_fd is None:
            update_state(job_dir, status="failed", error="Another training job is running.", finished=utc_now_iso())
            return EXIT_BUSY
    else:
        locks.confirm_exclusive_fd(lock_fd)  # already ours (inherited); asserts it

    _recover_registry(request.get("artifacts"), audit_path)  # we hold the training lock: no publish is running

    sigs = _Signals()
    cancel_flag = job_dir / "cancel"

    def should_stop() -> bool:
        return sigs.received or cancel_flag.exists()

    update_state(job_dir, status="running", pid=os.getpid(), started=utc_now_iso())
    log.info("Training job %s started (pid %d)", job_id, os.getpid())
    emit, events_fh = _event_writer(job_dir)
    outcome, fields, code = "failed", {}, EXIT_ERROR
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
                      "val_roc_auc": result.metrics.get("validation", {}).get("roc_auc"),
                      "feedback_images": int((result.provenance.get("feedback") or {}).get("images") or 0)}
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
    update_state(job_dir, status=outcome, finished=utc_now_iso(), **fields)
    audit.training(outcome, source="job", path=audit_path, job_id=job_id, version=fields.get("version"),
                   error=fields.get("error"), feedback_images=fields.get("feedback_images"))
    log.info("Training job %s finished: %s", job_id, outcome)
    return code  # the lock is released when this process exits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.job_runner",
                                     description="Run a prepared PneumoScope training job folder (normally started by "
                                                 "core.jobs.start_job).")
    parser.add_argument("job_dir")
    parser.add_argument("--lock-fd", type=int, default=None, help="inherited descriptor holding train.lock")
    args = parser.parse_args(argv)
    return run(args.job_dir, args.lock_fd)


if __name__ == "__main__":
    sys.exit(main())

"""Locks, in one place: short file locks on this machine, and the training lock of the database.

* :func:`file_lock` - an inter-process lock on a lock file (the ``filelock`` package, which
  uses ``flock`` on POSIX: the kernel frees it when the holder exits or is killed, even with
  ``kill -9``). Used as a context manager for short critical sections of one machine: the admin
  login lockout, audit appends, the activation history, feedback.
* the **training lock** (:func:`acquire_training_lock`, :func:`training_lease`): the lease
  ``"training"`` of the shared database (``core.db.Lease``), so ONE training at a time holds
  across every app instance and host that share the database, not only on one kernel. The
  holder (the job process, ``python -m core train``, ``python -m core models clean-staging``)
  renews it every ttl/3 from a thread; a holder killed with ``-9`` stops renewing and the lease
  lapses after :func:`training_ttl_s` seconds (``$PNEUMOSCOPE_TRAINING_LEASE_TTL_S``, default
  30), so a dead training never wedges the others. Taking it is one atomic statement of the
  database, which is why two concurrent starters (threads, processes, instances) give exactly
  one training. ``core.jobs.start_job`` takes it for the job it registers and hands it to the
  job process it spawns (``core.db.Lease.hand_over``: the child renews it as the same holder).
"""

from __future__ import annotations

import logging
import os
import socket
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock, Timeout

if TYPE_CHECKING:  # core.db imports SQLAlchemy: only when a training lock is asked for
    from core.db import Database, Lease

__all__ = ["FileLock", "Timeout", "file_lock", "TRAINING_LEASE", "TRAINING_TTL_ENV", "training_ttl_s",
           "training_lease", "acquire_training_lock", "training_lock_holder", "describe_holder"]

TRAINING_LEASE = "training"  # the lease name in the shared database
TRAINING_TTL_ENV = "PNEUMOSCOPE_TRAINING_LEASE_TTL_S"
DEFAULT_TRAINING_TTL_S = 30.0  # how long a training killed with -9 keeps the lock (renewed every ttl/3)
HOST = socket.gethostname()[:60]

log = logging.getLogger(__name__)


def _no_link_in_place(path: Path) -> None:
    """A lock file is an empty regular file that only ever gets flocked. One that is a symlink
    (e.g. to a file outside the artifacts folder), a FIFO or a device was put there by someone
    else and is never held by our code: remove that entry itself (``unlink`` never touches what a
    link points to), so the lock is taken on a fresh regular file and nothing outside is opened,
    created or truncated through it (issue 21)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISREG(st.st_mode):
        return
    log.warning("Lock file %s was not a regular file (mode %o); replaced it", path, st.st_mode)
    os.unlink(path)


def file_lock(path: str | os.PathLike, timeout: float = -1, *, mode: int = 0o644) -> FileLock:
    """A ``filelock.FileLock`` on ``path`` (its folder is created; a symlink or FIFO in its place is
    removed first). ``timeout`` in seconds, -1 waits forever; on timeout acquiring raises
    ``filelock.Timeout``. Use as ``with file_lock(p):``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _no_link_in_place(path)
    return FileLock(str(path), timeout=timeout, mode=mode)


def training_ttl_s() -> float:
    """The training lease's ttl in seconds: ``$PNEUMOSCOPE_TRAINING_LEASE_TTL_S`` (tests use ~1 s),
    else 30. A value that is not a positive number is refused with a clear message."""
    raw = os.environ.get(TRAINING_TTL_ENV, "").strip()
    if not raw:
        return DEFAULT_TRAINING_TTL_S
    try:
        ttl = float(raw)
    except ValueError:
        ttl = -1.0
    if not 0.2 <= ttl <= 3600:
        raise ValueError(f"{TRAINING_TTL_ENV} must be a number of seconds between 0.2 and 3600. "
                         f"Received: {TRAINING_TTL_ENV}={raw!r}")
    return ttl


def _database(where: "Database | str | os.PathLike | None") -> "Database":
    from core import db as dbm

    return dbm.resolve(where)


def training_lease(where: "Database | str | os.PathLike | None" = None, *, holder: str | None = None,
                   data: dict | None = None, ttl_s: float | None = None) -> "Lease":
    """The training lease of the database of ``where`` (an artifacts root, None: the default one,
    or a ``core.db.Database``), not yet acquired. ``data`` says who holds it (job id, host, pid):
    :func:`describe_holder` shows it in "busy" messages. ``holder`` takes over a lease handed
    over by another process (``core.db.Lease.hand_over``)."""
    from core.db import Lease

    info = {"host": HOST, "pid": os.getpid(), **(data or {})}
    return Lease(_database(where), TRAINING_LEASE, ttl_s=ttl_s or training_ttl_s(), holder=holder, data=info)


def acquire_training_lock(where: "Database | str | os.PathLike | None" = None, *,
                          data: dict | None = None) -> "Lease | None":
    """The training lock of ``where`` (an artifacts root or a ``core.db.Database``), held and
    renewed by a thread of this process, or None when a training holds it. Release it with
    ``.release()``; if this process is killed, it lapses after :func:`training_ttl_s` seconds."""
    lease = training_lease(where, data=data)
    return lease if lease.acquire() else None


def training_lock_holder(where: "Database | str | os.PathLike | None" = None) -> dict | None:
    """``{"holder", "expires_in_s", "data"}`` of the live training lease of ``where``, or None."""
    return _database(where).lease_holder(TRAINING_LEASE)


def describe_holder(holder: dict | None) -> str:
    """Who holds the training lock, in words: ``job 2026...-ab12cd on host gpu-1 (pid 4242)``."""
    if not holder:
        return "no training holds the lock"
    data = holder.get("data") or {}
    what = f"job {data['job_id']}" if data.get("job_id") else str(data.get("purpose") or "a training process")
    host = f" on host {data['host']}" if data.get("host") else ""
    pid = f" (pid {data['pid']})" if isinstance(data.get("pid"), int) else ""
    return f"{what}{host}{pid}"

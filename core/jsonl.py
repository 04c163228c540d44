"""JSON-lines files: one appender and one reader for every append-only log of the project.

Used by the audit trail (``core.audit``), the feedback store (``core.feedback``) and a training
job's progress events (``core.job_runner`` writes, ``core.progress`` reads).

**Appending** (:func:`append`): one record is encoded as one compact line (at most
:data:`MAX_LINE_BYTES`), written with a single ``os.write`` on an ``O_APPEND`` descriptor and
``fsync``-ed before the call returns, so a line confirmed to the caller survives a crash or a
power loss. If the file does not end with a newline (a writer died mid-line), the new line starts
on a fresh line instead of gluing itself onto the torn one. The caller holds the lock that
serialises the writers of that file (``core.locks.file_lock``; a job's events have one writer):
checking the last byte and writing must not interleave with another writer.

**Reading** (:func:`read`): complete lines only. A torn last line (no final newline) is left for
the next read (an incremental reader gets it once it is complete); a damaged line, a line that is
not a JSON object, and a line longer than ``max_line_bytes`` (skipped in bounded chunks, never
held in memory whole) are skipped. Only a regular file is read: a FIFO there does not hang the
reader, a device is not read, and with ``follow_symlinks=False`` a symlink is not followed.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 1 * 2**20  # far above any record we write (audit lines: ~300 bytes)


def encode(record: dict, *, max_line_bytes: int = MAX_LINE_BYTES) -> bytes:
    """``record`` as one compact JSON line ending in ``\\n`` (values JSON cannot hold: ``str()``).

    Raises ValueError when the line would be longer than ``max_line_bytes``."""
    line = (json.dumps(record, default=str, separators=(",", ":")) + "\n").encode()
    if len(line) > max_line_bytes:
        raise ValueError(f"A JSON-lines record must encode to at most {max_line_bytes} bytes. "
                         f"Received: a record of {len(line)} bytes")
    return line


def append(path: str | os.PathLike, record: dict, *, fsync: bool = True, mode: int = 0o640,
           max_line_bytes: int = MAX_LINE_BYTES) -> bytes:
    """Append ``record`` as one line to ``path`` (created with ``mode``); returns the bytes written.

    The caller holds the lock serialising this file's writers. Raises OSError on I/O errors and
    ValueError for a record longer than ``max_line_bytes``."""
    line = encode(record, max_line_bytes=max_line_bytes)
    fd = os.open(str(path), os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line  # a torn last line (a crash mid-write): start a fresh one
        view = memoryview(line)
        while view:  # one write for a regular file; the loop only guards against a short write
            n = os.write(fd, view)
            view = view[n:]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    return line


def _open_for_reading(path: Path, follow_symlinks: bool):
    """``path`` opened for binary reading if it is a regular file, else None (logged).

    ``O_NONBLOCK``: a FIFO put there must not hang the reader; ``O_NOFOLLOW`` unless
    ``follow_symlinks``. Raises FileNotFoundError when the path does not exist."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(str(path), flags)
    except FileNotFoundError:
        raise
    except OSError as e:  # ELOOP: a symlink that is not followed; EACCES...
        log.warning("Not reading %s: %s", path, e)
        return None
    fh = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
        fh.close()
        log.warning("Not reading %s: not a regular file", path)
        return None
    return fh


def parse_object(raw: bytes | str) -> dict | None:
    """One JSON object from a line or a database cell; None for anything else (damaged, a list...)."""
    try:
        rec = json.loads(raw)
    except (TypeError, ValueError, UnicodeDecodeError):
        return None
    return rec if isinstance(rec, dict) else None


def read(path: str | os.PathLike, *, offset: int = 0, limit: int | None = None,
         max_line_bytes: int = MAX_LINE_BYTES, follow_symlinks: bool = False) -> tuple[list[dict], int]:
    """The JSON objects on the complete lines of ``path`` from byte ``offset``, oldest first.

    Returns ``(records, next_offset)``: ``next_offset`` is just past the last line consumed (a torn
    last line is not consumed). ``limit`` bounds the bytes consumed per call (None: to the end).
    A missing or refused file gives ``([], offset)``."""
    try:
        fh = _open_for_reading(Path(path), follow_symlinks)
    except FileNotFoundError:
        return [], offset
    if fh is None:
        return [], offset
    out: list[dict] = []
    pos = offset
    try:
        with fh:
            fh.seek(offset)
            while limit is None or pos - offset < limit:
                raw = fh.readline(max_line_bytes + 1)
                if not raw.endswith(b"\n"):
                    if len(raw) <= max_line_bytes:
                        break  # end of file, or a torn last line: left for the next read
                    pos += len(raw) + _skip_line(fh, max_line_bytes, None if limit is None else limit - (pos - offset))
                    continue  # an over-long line: skipped in bounded chunks
                pos += len(raw)
                rec = parse_object(raw)
                if rec is not None:
                    out.append(rec)
    except OSError as e:
        log.warning("Could not read %s: %s", path, e)
    return out, pos


def _skip_line(fh: Any, chunk: int, budget: int | None) -> int:
    """Bytes read to get past the rest of the current line (including its newline). Stops at the
    end of the file or once ``budget`` bytes are spent (the next read goes on from there)."""
    n = 0
    while budget is None or n < budget:
        raw = fh.readline(chunk)
        n += len(raw)
        if not raw or raw.endswith(b"\n"):
            break
    return n


def read_all(path: str | os.PathLike, *, max_line_bytes: int = MAX_LINE_BYTES,
             follow_symlinks: bool = False) -> list[dict]:
    """Every JSON object on a complete line of ``path``, oldest first ([] when missing)."""
    return read(path, max_line_bytes=max_line_bytes, follow_symlinks=follow_symlinks)[0]

"""Crash-safe file writes, in one place.

:func:`atomic_write_bytes` writes to a temporary file next to the target, fsyncs it and
``os.replace``-s it over the target: a reader (or a process killed mid-write, even with
``kill -9``) sees either the old file or the new one, never a partial write. Temporary files
are named ``.<name>.<random>.tmp`` in the same folder and removed when the write fails.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so a rename inside it survives a power loss (best effort)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, mode: int = 0o666, fsync: bool = True,
                       sync_dir: bool = False) -> Path:
    """Replace ``path`` with ``data`` atomically (temporary file + fsync + ``os.replace``).

    ``mode`` is the permission of a new file before the umask (like ``open``); ``fsync=False``
    skips the data fsync (atomic against crashes of the process, not against power loss);
    ``sync_dir=True`` also fsyncs the folder so the rename itself survives a power cut.
    Creates the parent folder. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if sync_dir:
        fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8", mode: int = 0o666,
                      fsync: bool = True, sync_dir: bool = False) -> Path:
    """:func:`atomic_write_bytes` for text."""
    return atomic_write_bytes(path, text.encode(encoding), mode=mode, fsync=fsync, sync_dir=sync_dir)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """``obj`` as indented JSON (non-JSON values via ``str``), written atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=str))

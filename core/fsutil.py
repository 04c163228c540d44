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


# --- reading files that a person or a process may have tampered with (issue 21) -------------
#
# Everything under artifacts/ (pointers, state files, JSON of a version) is input: a FIFO there
# would hang every reader, a symlink to /dev/zero grow memory without bound, and a symlink out
# of the folder make the app read (or clean up) somebody else's files. These helpers read a
# file only when it is a regular file reached without following a symlink, with a byte bound.

# Pointer / state / JSON files of the registry are small; a model card is a few KB.
DEFAULT_READ_LIMIT = 4 * 2**20


class UnsafeFileError(OSError):
    """A file that is refused before it is read: a symlink, not a regular file, too large,
    outside its root, or not the JSON expected. ``str(err)`` is one sentence for a person."""


def describe_mode(mode: int) -> str:
    """'a folder', 'a named pipe (FIFO)', 'a character device', ... for an ``st_mode``."""
    import stat

    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | os.PathLike):
    """``path`` opened for binary reading with ``O_NOFOLLOW | O_NONBLOCK`` and checked again on the
    descriptor: a symlink, or a FIFO or device swapped in, can neither redirect nor hang the read.
    Raises :class:`UnsafeFileError` for those, ``OSError`` otherwise (FileNotFoundError included)."""
    import stat

    p = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) \
        | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(str(p), flags)
    except OSError as exc:
        import errno

        if exc.errno == errno.ELOOP:
            raise UnsafeFileError(f"'{p.name}' is a symbolic link; it is not followed.") from None
        raise
    fh = os.fdopen(fd, "rb")
    mode = os.fstat(fh.fileno()).st_mode
    if not stat.S_ISREG(mode):
        fh.close()
        raise UnsafeFileError(f"'{p.name}' is {describe_mode(mode)}, not a regular file; it was not read.")
    return fh


def read_regular_bytes(path: str | os.PathLike, limit: int = DEFAULT_READ_LIMIT) -> bytes:
    """The bytes of ``path`` if it is a regular file that is not a symlink, at most ``limit``.

    Opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked again on the descriptor, so a FIFO or a
    link swapped in after the check can neither hang nor redirect the read. Raises
    ``FileNotFoundError`` when the path does not exist (callers often treat that as "unset"),
    :class:`UnsafeFileError` for everything refused, ``OSError`` for other read errors.
    """
    import stat

    p = Path(path)
    st = os.lstat(p)  # FileNotFoundError propagates
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeFileError(f"'{p.name}' is a symbolic link; it is not followed (files under the "
                              "artifacts folder must be regular files).")
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFileError(f"'{p.name}' is {describe_mode(st.st_mode)}, not a regular file; it was not read.")
    if st.st_size > limit:
        raise UnsafeFileError(f"'{p.name}' is {st.st_size} bytes, more than the {limit} bytes such a file "
                              "may have; it was not read.")
    with open_regular(p) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise UnsafeFileError(f"'{p.name}' is larger than the {limit} bytes such a file may have; it was not read.")
    return data


def read_regular_text(path: str | os.PathLike, limit: int = DEFAULT_READ_LIMIT, encoding: str = "utf-8") -> str:
    """:func:`read_regular_bytes` decoded; undecodable bytes raise :class:`UnsafeFileError`."""
    data = read_regular_bytes(path, limit)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        raise UnsafeFileError(f"'{Path(path).name}' is not {encoding} text; it was not read.") from None


def read_json_file(path: str | os.PathLike, limit: int = DEFAULT_READ_LIMIT, expect: type | None = dict, *,
                   allow_nonfinite: bool = False) -> Any:
    """JSON of a bounded regular file (no symlink). ``expect``: the JSON type the top level must
    have (``dict`` by default, ``list``, or ``None`` for any). NaN/Infinity literals are refused:
    they are not JSON and no file of ours writes them where a number must be finite
    (``allow_nonfinite=True`` for reports, where ``json.dumps`` writes an undefined metric as NaN)."""
    text = read_regular_text(path, limit)

    def _no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON value")

    try:
        obj = json.loads(text, **({} if allow_nonfinite else {"parse_constant": _no_constants}))
    except (ValueError, RecursionError) as exc:
        raise UnsafeFileError(f"'{Path(path).name}' is not valid JSON ({str(exc)[:120]}).") from None
    if expect is not None and not isinstance(obj, expect):
        raise UnsafeFileError(f"'{Path(path).name}' holds a JSON {type(obj).__name__}, not the "
                              f"{expect.__name__} expected.")
    return obj


def is_within(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """True when ``path``, with every symlink resolved, lies inside ``root`` (also resolved)."""
    try:
        real, base = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    except (OSError, ValueError):
        return False
    return real == base or base in real.parents

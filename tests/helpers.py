"""Small helpers shared by test modules (import with ``from helpers import ...``)."""

from __future__ import annotations

import ast
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any, Callable, Iterable


def run_with_timeout(fn: Callable[[], Any], timeout: float = 20.0, what: str = "the call") -> Any:
    """fn() in a daemon thread; fails the test (instead of hanging the run) when it does not
    return within ``timeout`` seconds — e.g. a reader blocked on a FIFO or /dev/zero."""
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.setdefault("v", fn()), daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{what} hung"
    return out["v"]


def shown(markdown: str) -> str:
    """The text a reader sees of Markdown that names went into through ``ui.text.md``: backslash
    escapes of ASCII punctuation resolved, the word joiners dropped, the leading-space entity
    read as a space. For asserting on words; tests of the escaping itself look at the source."""
    import re

    text = re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", str(markdown))
    return text.replace("\u2060", "").replace("&#32;", " ")


def free_port() -> int:
    """A free local TCP port (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_server(proc: subprocess.Popen, timeout: float = 15) -> None:
    """Terminate a server a test started, killing it if it does not exit within ``timeout`` s."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def copy_artifacts(src, dst, *, skip: tuple[str, ...] = ()) -> None:
    """Copy an artifacts root: its files (minus the top-level names in ``skip``) and its embedded
    database, the latter through SQLite's online backup (a consistent copy even while this process
    holds the source open in WAL mode; copying the file could miss what the WAL still holds)."""
    import shutil
    import sqlite3
    from pathlib import Path

    from core.db import SQLITE_NAME

    src, dst = Path(src), Path(dst)

    def ignore(d, names):
        if Path(d) != src:
            return []
        return [n for n in names if n.startswith(SQLITE_NAME) or n in skip]

    shutil.copytree(src, dst, ignore=ignore)
    if (src / SQLITE_NAME).is_file():
        with sqlite3.connect(src / SQLITE_NAME) as a, sqlite3.connect(dst / SQLITE_NAME) as b:
            a.backup(b)
        b.close()
        a.close()


def project_sources(repo: Path, folders: Iterable[str] = ("core", "ui", "app_pages", "benchmarks"), *,
                    entrypoint: bool = True) -> list[Path]:
    """The project's own Python files under ``folders`` (and streamlit_app.py), for structural lints."""
    files = [p for d in folders for p in sorted((repo / d).rglob("*.py"))]
    return files + ([repo / "streamlit_app.py"] if entrypoint else [])


def ast_findings(paths: Iterable[Path], match: Callable[[ast.AST], str | None]) -> list[str]:
    """``file:line: what`` for every syntax-tree node that ``match`` names: a structural lint that
    a comment, a string or a renamed variable cannot fool (a text grep can be fooled both ways)."""
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            what = match(node)
            if what:
                found.append(f"{path.name}:{node.lineno}: {what}")
    return found

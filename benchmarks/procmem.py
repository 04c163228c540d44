"""Memory of a process and its descendants, for the benchmarks (Linux /proc).

``tree_rss`` / :class:`Sampler` sample the RSS of a process tree (the server and its decode
workers); ``status`` / ``reset_peak`` read and reset this process's own VmHWM exactly, with the
same helpers the decode worker uses for its replies (``core.decode_worker``).
"""

from __future__ import annotations

import os
import threading
import time

from core.decode_worker import reset_peak, status_kb


def status(field: str) -> int:
    """A ``VmXxx`` figure of /proc/self/status in bytes."""
    return status_kb(field) * 1024


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                out += [int(c) for c in fh.read().split()]
    except OSError:
        pass
    return out


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def tree_rss(pid: int) -> tuple[int, dict[int, int]]:
    """(RSS of ``pid`` and all its descendants, {pid: rss})."""
    seen, todo = {}, [pid]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen[p] = _rss(p)
        todo += _children(p)
    return sum(seen.values()), seen


class Sampler:
    """Peak RSS of a process tree (and of each member), every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self.pid, self.interval = pid, interval
        self.peak, self.peaks = 0, {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total, parts = tree_rss(self.pid)
            self.peak = max(self.peak, total)
            for p, r in parts.items():
                self.peaks[p] = max(self.peaks.get(p, 0), r)
            time.sleep(self.interval)

    def __enter__(self) -> "Sampler":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


def _status(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")



def child_peak(peaks: dict[int, int], pid: int | None = None) -> int:
    """The largest peak among the processes of ``peaks`` other than ``pid`` (default: this one)."""
    me = os.getpid() if pid is None else pid
    return max([r for p, r in peaks.items() if p != me] or [0])


__all__ = ["Sampler", "child_peak", "reset_peak", "status", "tree_rss"]

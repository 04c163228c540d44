#!/usr/bin/env python
"""What the shared database costs per write and read, against the JSON-lines file of before.

    python benchmarks/bench_db.py [--n 300] [--no-postgres]

Measured in one run on this machine, interleaved: an fsynced JSON-lines append under a file lock
(``core.jsonl``, what the audit trail did before; the baseline), an audit-sized event appended to
the embedded SQLite database (WAL, synchronous=FULL) and to a throwaway local PostgreSQL
(``tests/postgres.py``; fsync on), a compare-and-swap document update (reader study / active
pointer), a lease renewal (training lock), and reading the newest 1,000 events of a stream (the
admin queue). Prints p50/p95 in ms and each p50 over the baseline's p50. A real deployment's
PostgreSQL is across a network: add its round-trip time to every figure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RECORD = {"action": "predict", "model_version": "v0003-shipped", "threshold": 0.47, "outcome": "PNEUMONIA",
          "image_sha256": "ab" * 32, "guard": "ok", "source": "upload"}


def timed(fn, n: int) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t) * 1000)
    return out


def summary(ms: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(ms, n=20)
    return statistics.median(ms), q[18]


def bench_backend(name: str, url: str, n: int, jsonl_path: Path) -> dict:
    from core import db as dbm
    from core import jsonl, locks

    d = dbm.connect(url=url)
    lock = locks.file_lock(jsonl_path.with_name(jsonl_path.name + ".lock"))

    def jsonl_append(i):
        with lock:
            jsonl.append(jsonl_path, {**RECORD, "i": i})

    d.put("reader_study", "s", {"cases": [RECORD] * 50}, expect=None)
    d.try_lease("training", "bench", 30)
    res = {}
    # interleave the baseline with the database so machine noise hits both alike
    base, app, cas, lease = [], [], [], []
    for _ in range(4):
        base += timed(jsonl_append, n // 4)
        app += timed(lambda i: d.append("audit", {**RECORD, "i": i}), n // 4)

        def cas_put(i):
            doc = d.get("reader_study", "s")
            d.put("reader_study", "s", {**doc.data, "i": i}, expect=doc.revision)

        cas += timed(cas_put, n // 4)
        lease += timed(lambda i: d.try_lease("training", "bench", 30), n // 4)
    for _ in range(1000 - len(d.events("audit"))):
        d.append("audit", RECORD)
    read = timed(lambda i: d.events("audit", after=max(0, d_count(d) - 1000)), 20)
    res["jsonl append (baseline)"] = summary(base)
    res[f"{name}: audit append"] = summary(app)
    res[f"{name}: CAS document update"] = summary(cas)
    res[f"{name}: lease renewal"] = summary(lease)
    res[f"{name}: read newest 1,000 events"] = summary(read)
    dbm.dispose_all()
    return res


def d_count(d) -> int:
    import sqlalchemy as sa

    with d.transaction() as c:
        return int(c.execute(sa.text("SELECT max(seq) FROM event_log")).scalar() or 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=300, help="operations per measurement (default 300)")
    ap.add_argument("--no-postgres", action="store_true", help="SQLite only")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-db-"))
    rows = bench_backend("sqlite", f"sqlite:///{tmp / 'a.db'}", args.n, tmp / "a.jsonl")
    if not args.no_postgres:
        from tests.postgres import postgres_server, unavailable_reason

        reason = unavailable_reason()
        if reason:
            print(f"PostgreSQL skipped: {reason}")
        else:
            with postgres_server() as url:
                rows.update(bench_backend("postgresql", url, args.n, tmp / "b.jsonl"))
    base = rows["jsonl append (baseline)"][0]
    print(f"{'operation':42s} {'p50 ms':>8s} {'p95 ms':>8s} {'p50/base':>9s}")
    for k, (p50, p95) in rows.items():
        print(f"{k:42s} {p50:8.2f} {p95:8.2f} {p50 / base:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

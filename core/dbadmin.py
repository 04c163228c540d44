"""``python -m core db status|upgrade|copy-to URL``: the shared database, from the command line.

``status``   where the database is (password hidden), its schema revision against the newest
             migration, what each store holds, which old files were imported, live leases.
``upgrade``  apply the Alembic migrations (every start does it too; this is for a deploy step
             that migrates once before N instances start).
``copy-to``  copy everything into another, empty database: how a department moves from the
             embedded SQLite file to PostgreSQL. Event order is kept; leases are not copied
             (they belong to running processes). Stop the app and any training first.
"""

from __future__ import annotations

import sys
from collections import Counter

import sqlalchemy as sa

from core import db as dbm
from core.dbschema import documents, event_log, head_revision, legacy_imports

COPY_BATCH = 1000


def add_cli(sub) -> None:
    """The ``db`` subcommand (called by core.cli.build_parser)."""
    p = sub.add_parser("db", help="the shared database: status, upgrade, copy-to (e.g. from SQLite to PostgreSQL)")
    p.add_argument("action", choices=["status", "upgrade", "copy-to"])
    p.add_argument("url", nargs="?", help="copy-to: the target database URL (it must be empty)")


def _family(stream: str) -> str:
    return "job:<id>" if stream.startswith("job:") else stream


def status(db: dbm.Database) -> dict:
    """What ``db status`` prints, as data."""
    with db.transaction() as c:
        streams = Counter()
        for stream, n in c.execute(sa.select(event_log.c.stream, sa.func.count()).group_by(event_log.c.stream)):
            streams[_family(stream)] += int(n)
        kinds = {k: int(n) for k, n in c.execute(sa.select(documents.c.kind, sa.func.count()).group_by(documents.c.kind))}
        imports = [r.source for r in c.execute(sa.select(legacy_imports.c.source).order_by(legacy_imports.c.source))]
    live = {n: db.lease_holder(n) for n in ("training", "registry")}
    return {"database": db.describe(), "backend": db.backend, "revision": db.revision(), "head": head_revision(),
            "events": dict(sorted(streams.items())), "documents": dict(sorted(kinds.items())),
            "imported": imports, "leases": {n: h["holder"] for n, h in live.items() if h}}


def copy_to(src: dbm.Database, dst: dbm.Database) -> dict:
    """Copy events (in order), documents and the import log from ``src`` into the empty ``dst``."""
    with dst.transaction() as c:
        if c.execute(sa.select(sa.func.count()).select_from(event_log)).scalar() or \
                c.execute(sa.select(sa.func.count()).select_from(documents)).scalar():
            raise dbm.DatabaseError(f"The target database {dst.describe()} is not empty; copy-to only fills an empty one.")
    counts = {"events": 0, "documents": 0, "imported": 0}
    with src.transaction() as s, dst.transaction() as d:
        last = 0
        while True:  # in batches, oldest first: the target's sequence keeps the source's order
            rows = s.execute(sa.select(event_log).where(event_log.c.seq > last).order_by(event_log.c.seq)
                             .limit(COPY_BATCH)).all()
            if not rows:
                break
            d.execute(event_log.insert(), [{"stream": r.stream, "at": r.at, "data": r.data} for r in rows])
            counts["events"] += len(rows)
            last = rows[-1].seq
        docs = [dict(r._mapping) for r in s.execute(sa.select(documents))]
        if docs:
            d.execute(documents.insert(), docs)
        imports = [dict(r._mapping) for r in s.execute(sa.select(legacy_imports))]
        if imports:
            d.execute(legacy_imports.insert(), imports)
        counts["documents"], counts["imported"] = len(docs), len(imports)
    return counts


def cmd_db(args, registry) -> int:
    from core.exitcodes import EXIT_OK, EXIT_USAGE

    db = dbm.connect(registry.root)
    if args.action == "status":
        st = status(db)
        print(f"database  {st['database']} ({st['backend']})")
        print(f"schema    {st['revision']}" + ("" if st["revision"] == st["head"] else f" (newest: {st['head']}: run `db upgrade`)"))
        for k, n in st["events"].items():
            print(f"events    {k:12s} {n:>9,d}")
        for k, n in st["documents"].items():
            print(f"documents {k:12s} {n:>9,d}")
        print(f"imported  {len(st['imported'])} old file(s)" + "".join(f"\n          {s}" for s in st["imported"]))
        for n, holder in st["leases"].items():
            print(f"lease     {n}: held by {holder}")
        return EXIT_OK
    if args.action == "upgrade":
        db.upgrade()
        print(f"{db.describe()}: schema at {db.revision()}")
        return EXIT_OK
    if not args.url:
        print("error: db copy-to needs the target URL, e.g. postgresql+psycopg://user@host/pneumoscope", file=sys.stderr)
        return EXIT_USAGE
    target = dbm.connect(url=args.url)
    counts = copy_to(db, target)
    print(f"copied {counts['events']:,} events, {counts['documents']:,} documents and {counts['imported']} import "
          f"records from {db.describe()} to {target.describe()}")
    print(f"next: set PNEUMOSCOPE_DATABASE_URL to the target for every instance (and keep {db.describe()} as a backup)",
          file=sys.stderr)
    return EXIT_OK

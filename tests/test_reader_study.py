"""core.reader_study: the stratified seeded draw, the order of a case (read before AI), the store
in the shared database (crash safety, the single writer across processes and on PostgreSQL, the
one-time import of the study files of before), the study's report (core.reports) and the audit
line. The statistics are tested in test_reader_stats.py."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core import audit, reports
from core import db as dbm
from core import reader_stats as stats
from core import reader_study as rs
from core.readerid import is_reader_id
from tests.dbfixtures import fresh_database, pg_url  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _sqlite_under_the_artifacts_root(monkeypatch):
    """Each test's tmp artifacts root gets its own SQLite database; connections closed afterwards."""
    monkeypatch.delenv(dbm.DATABASE_URL_ENV, raising=False)
    yield
    dbm.dispose_all()


def _db(root) -> dbm.Database:
    return dbm.connect(root)


def _tamper(root, study_id: str, edit) -> dict:
    """Edit a saved study's document behind the store's back (a damaged or tampered row)."""
    doc = _db(root).get(rs.KIND, study_id)
    d = json.loads(json.dumps(doc.data))
    edit(d)
    _db(root).put(rs.KIND, study_id, d)  # last writer wins: no compare-and-swap
    return d


def _legacy_file(root, d: dict | rs.Study, name: str | None = None) -> Path:
    """A study file as releases before issue 25 wrote it, under ``<root>/reader_studies/``."""
    d = d.to_dict() if isinstance(d, rs.Study) else d
    folder = Path(root) / "reader_studies"
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / (name or f"{d['study_id']}.json")
    p.write_text(json.dumps(d, indent=1))
    return p


def _pool(n_neg: int, n_pos: int) -> list[rs.Film]:
    return [rs.Film(f"test/NORMAL/n{i:03d}.jpeg", "NORMAL") for i in range(n_neg)] + \
           [rs.Film(f"test/PNEUMONIA/p{i:03d}.jpeg", "PNEUMONIA") for i in range(n_pos)]


def _study(films, threshold=0.5) -> rs.Study:
    return rs.Study.create(films, root="/data", model_version="v1", seed=3, source=rs.SOURCE_TEST, threshold=threshold)


def _complete(study: rs.Study, first, ai, revised, probs=None) -> rs.Study:
    probs = probs or [0.9 if a != "NORMAL" else 0.1 for a in ai]
    for i in range(len(study.cases)):
        study.record_first_read(i, first[i], 3, 4.0 + i)
        study.reveal_ai(i, ai[i], probs[i], study.threshold)
        if revised[i] is not None:
            study.record_revision(i, revised[i], 4)
        study.finish_case(i, 6.0 + i)
    return study


# --- the draw ----------------------------------------------------------------------------------
def test_draw_is_stratified_by_class_and_reproducible_with_the_seed():
    pool = _pool(30, 90)  # 1:3 like the dataset
    a = rs.draw_films(pool, 20, seed=7)
    assert a == rs.draw_films(pool, 20, seed=7)
    assert len(a) == 20 and len(set(a)) == 20 and set(a) <= set(pool)
    assert sum(f.truth == "NORMAL" for f in a) == 5 and sum(f.truth == "PNEUMONIA" for f in a) == 15
    b = rs.draw_films(pool, 20, seed=8)
    assert b != a and sum(f.truth == "NORMAL" for f in b) == 5  # another seed: other films, same strata
    # the order is shuffled, not class blocks
    assert [f.truth for f in a] != sorted(f.truth for f in a)
    # the order of the pool does not matter
    assert rs.draw_films(list(reversed(pool)), 20, seed=7) == a


def test_draw_keeps_one_film_of_each_class_when_n_is_small():
    pool = _pool(2, 40)
    for seed in range(5):
        d = rs.draw_films(pool, 3, seed)
        assert {f.truth for f in d} == {"NORMAL", "PNEUMONIA"}


@pytest.mark.parametrize("n,msg", [(1, "between 2 and"), (43, "between 2 and 42"), ("x", "whole numbers")])
def test_draw_refuses_bad_n_with_a_message(n, msg):
    with pytest.raises(rs.ReaderStudyError, match=msg):
        rs.draw_films(_pool(2, 40), n, 0)


def test_draw_needs_both_classes():
    with pytest.raises(rs.ReaderStudyError, match="no NORMAL"):
        rs.draw_films(_pool(0, 5), 3, 0)


def test_pool_uses_the_official_test_split_else_the_samples_with_a_warning(tmp_path):
    root, films, source, warning = rs.film_pool(REPO / "samples" / "chest_xray")
    assert source == rs.SOURCE_TEST and warning is None
    assert films and all(f.path.startswith("test/") for f in films)
    no_test = tmp_path / "d"
    (no_test / "train" / "NORMAL").mkdir(parents=True)
    (no_test / "train" / "NORMAL" / "a.jpeg").write_bytes(b"x")
    for data_root in (no_test, tmp_path / "missing", None):
        root, films, source, warning = rs.film_pool(data_root)
        assert source == rs.SOURCE_SAMPLES and root == rs.SAMPLES_ROOT
        assert "bundled sample" in warning and "small" in warning
        assert {f.truth for f in films} == {"NORMAL", "PNEUMONIA"}
        assert all((root / f.path).is_file() for f in films)


# --- a case, in order -----------------------------------------------------------------------------
def test_ai_output_cannot_be_stored_before_the_first_read_and_the_first_read_is_final():
    s = _study(_pool(1, 1))
    with pytest.raises(rs.ReaderStudyError, match="before the AI output"):
        s.reveal_ai(0, "PNEUMONIA", 0.9, 0.5)
    with pytest.raises(rs.ReaderStudyError, match="after the AI output"):
        s.record_revision(0, "NORMAL", 3)
    with pytest.raises(rs.ReaderStudyError, match="not finished"):
        s.finish_case(0, 1.0)
    s.record_first_read(0, "NORMAL", 2, 3.5)
    with pytest.raises(rs.ReaderStudyError, match="cannot be changed"):
        s.record_first_read(0, "PNEUMONIA", 2, 3.5)
    s.reveal_ai(0, "PNEUMONIA", 0.9, 0.5)
    s.record_revision(0, "PNEUMONIA", 4)
    s.finish_case(0, 9.0)
    c = s.cases[0]
    assert (c.first_read, c.final_read, c.changed, c.read_seconds, c.total_seconds) == ("NORMAL", "PNEUMONIA", True, 3.5, 9.0)
    assert s.current == 1 and not s.complete


@pytest.mark.parametrize("label,conf,msg", [("maybe", 3, "one of NORMAL, PNEUMONIA"), ("NORMAL", 0, "1 to 5"),
                                            ("NORMAL", 6, "1 to 5"), ("NORMAL", "high", "1 to 5"), ("NORMAL", None, "1 to 5")])
def test_bad_reads_get_a_message(label, conf, msg):
    s = _study(_pool(1, 1))
    with pytest.raises(rs.ReaderStudyError, match=msg):
        s.record_first_read(0, label, conf, 1.0)
    assert s.cases[0].first_read is None


def test_reader_ids_are_random_and_not_names():
    """One anonymous id for reader studies and feedback (core.readerid): r- + 12 hex digits."""
    from core import feedback

    assert rs.new_reader_id is feedback.new_reader_id
    ids = {rs.new_reader_id() for _ in range(20)}
    assert len(ids) == 20 and all(re.fullmatch(r"r-[0-9a-f]{12}", i) for i in ids)
    assert all(is_reader_id(i) for i in ids)
    assert _study(_pool(1, 1)).reader_id.startswith("r-")


def test_reader_id_check_takes_the_old_study_form_only_from_stored_files():
    assert is_reader_id("R-0123abcd", legacy=True) and not is_reader_id("R-0123abcd")
    for bad in ("Dr Smith", "r-Dr Smith", "R-0123ABCD", "R-0123abcd0", "r-", "", None, 12, "r-" + "a" * 65):
        assert not is_reader_id(bad, legacy=True), bad


def test_a_study_saved_with_an_old_reader_id_still_loads_and_shows_it(tmp_path):
    s = _complete(_study(_pool(1, 1)), ["NORMAL"] * 2, ["NORMAL"] * 2, [None, None])
    s.reader_id = "R-0123abcd"  # written by the code before issue 23
    rs.save(s, tmp_path)
    back = rs.load(s.study_id, tmp_path)
    assert back.reader_id == "R-0123abcd"
    assert reports.study_rows(back)[0]["reader_id"] == "R-0123abcd"
    assert b"R-0123abcd" in reports.study_csv(back)


@pytest.mark.parametrize("reader_id", ["Dr Smith", 7, None, "R-xyz"])
def test_a_saved_study_with_a_name_for_a_reader_id_is_refused(tmp_path, reader_id):
    s = _study(_pool(1, 1))
    rs.save(s, tmp_path)
    _tamper(tmp_path, s.study_id, lambda d: d.update(reader_id=reader_id))
    with pytest.raises(rs.ReaderStudyError, match="reader_id .* is not an anonymous reader id"):
        rs.load(s.study_id, tmp_path)


# --- store: the shared database, atomic -------------------------------------------------------
def test_save_load_round_trip_and_list(tmp_path):
    s = _complete(_study(_pool(2, 2)), ["NORMAL"] * 4, ["NORMAL", "PNEUMONIA"] * 2, [None, "PNEUMONIA", None, None])
    assert rs.save(s, tmp_path) == 1 == s.revision
    doc = _db(tmp_path).get(rs.KIND, s.study_id)
    assert doc.revision == 1 and doc.data["study_id"] == s.study_id and doc.data["saved"] == s.saved
    back = rs.load(s.study_id, tmp_path)
    assert back == s and back.finished is not None
    assert [x.study_id for x in rs.list_studies(tmp_path)] == [s.study_id]
    assert not (tmp_path / "reader_studies").exists()  # nothing is written to files any more


def test_a_crash_during_a_write_never_corrupts_the_saved_study(tmp_path, monkeypatch):
    import sqlalchemy as sa

    s = _study(_pool(2, 2))
    rs.save(s, tmp_path)
    before = _db(tmp_path).get(rs.KIND, s.study_id)
    s.record_first_read(0, "NORMAL", 3, 1.0)
    real_put = dbm.Database.put

    def crash(self, *a, **k):  # the row is written, then the connection dies before the commit
        real_put(self, *a, **k)
        raise sa.exc.OperationalError("COMMIT", {}, Exception("disk I/O error (simulated power cut)"))

    monkeypatch.setattr(dbm.Database, "put", crash)
    with pytest.raises(rs.ReaderStudyError, match=f"Study {s.study_id} was not saved: .*power cut"):
        rs.save(s, tmp_path)
    monkeypatch.setattr(dbm.Database, "put", real_put)
    assert _db(tmp_path).get(rs.KIND, s.study_id) == before  # the old revision, complete
    assert s.revision == 1  # this copy was not advanced: its next save is still a valid compare-and-swap
    assert rs.load(s.study_id, tmp_path).cases[0].first_read is None
    rs.save(s, tmp_path)
    assert rs.load(s.study_id, tmp_path).cases[0].first_read == "NORMAL" and s.revision == 2


def test_an_unreachable_database_is_a_sentence(tmp_path, monkeypatch):
    from tests.helpers import free_port

    s = _study(_pool(1, 1))
    monkeypatch.setenv(dbm.DATABASE_URL_ENV, f"postgresql+psycopg://u:hunter2@127.0.0.1:{free_port()}/x")
    for call in (lambda: rs.save(s, tmp_path), lambda: rs.load(s.study_id, tmp_path),
                 lambda: rs.open_for_writing(s.study_id, rs.new_writer_id(), tmp_path)):
        with pytest.raises(rs.ReaderStudyError, match="unavailable") as e:
            call()
        assert "hunter2" not in str(e.value)
    studies, problems = rs.scan_studies(tmp_path)
    assert studies == [] and len(problems) == 1 and "cannot be listed" in problems[0]


def test_load_gives_messages_for_bad_ids_and_damaged_rows(tmp_path):
    with pytest.raises(rs.ReaderStudyError, match="Not a reader-study id"):
        rs.load("../../etc/passwd", tmp_path)
    with pytest.raises(rs.ReaderStudyError, match="No saved reader study"):
        rs.load("rs-20260101-000000-abcdef", tmp_path)
    s = _study(_pool(1, 1))
    rs.save(s, tmp_path)
    with _db(tmp_path).transaction() as c:  # a row that is not JSON at all
        c.exec_driver_sql("UPDATE documents SET data = '{not json' WHERE key = ?", (s.study_id,))
    with pytest.raises(rs.ReaderStudyError, match=f"{s.study_id} is refused: Not a reader-study file"):
        rs.load(s.study_id, tmp_path)
    studies, refused = rs.scan_studies(tmp_path)
    assert studies == [] and len(refused) == 1 and s.study_id in refused[0]


# --- the study files of before issue 25: imported once -------------------------------------------
def test_old_study_files_are_imported_once_and_left_in_place(tmp_path, caplog):
    old = _complete(_study(_pool(2, 2)), ["NORMAL"] * 4, ["NORMAL", "PNEUMONIA"] * 2, [None, "PNEUMONIA", None, None])
    old.revision, old.writer, old.saved = 7, rs.new_writer_id(), "2026-01-01T00:00:00Z"
    unfinished = _study(_pool(1, 1))
    unfinished.record_first_read(0, "PNEUMONIA", 5, 2.5)
    files = [_legacy_file(tmp_path, old), _legacy_file(tmp_path, unfinished)]
    bad = _legacy_file(tmp_path, dict(unfinished.to_dict(), study_id="rs-20260101-000000-aaaaaa",
                                      reader_id="Dr Smith"), "rs-20260101-000000-aaaaaa.json")
    (tmp_path / "reader_studies" / "rs-20260101-000000-bbbbbb.json").write_text("{not json")
    stamps = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files + [bad]}

    studies, refused = rs.scan_studies(tmp_path)
    # nothing valid lost: every field of both studies, the writer too (the revision is the database's)
    by_id = {x.study_id: x for x in studies}
    assert set(by_id) == {old.study_id, unfinished.study_id}
    assert dataclasses_equal(by_id[old.study_id], old, but=("revision",)) and by_id[old.study_id].revision == 1
    assert by_id[unfinished.study_id].cases[0].first_read == "PNEUMONIA"
    assert len(refused) == 2 and "aaaaaa is refused: " in " ".join(refused) and "bbbbbb cannot be read" in " ".join(refused)
    assert "not imported" in caplog.text
    assert all((p.read_bytes(), p.stat().st_mtime_ns) == stamps[p] for p in stamps)  # left in place, untouched

    # Once: a new process (or another instance) does not import again, and a file edited after the
    # import changes nothing -- the database is the store now.
    rs.save(by_id[unfinished.study_id], tmp_path)
    files[0].write_text(json.dumps(dict(old.to_dict(), model_version="edited")))
    rs._imported.clear()
    dbm.dispose_all()
    assert _db(tmp_path).import_documents_once(rs.LEGACY_SOURCE, []) is None
    studies, refused = rs.scan_studies(tmp_path)
    assert sorted(x.study_id for x in studies) == sorted(by_id)
    assert rs.load(old.study_id, tmp_path).model_version == "v1"
    assert rs.load(unfinished.study_id, tmp_path).revision == 2
    assert len(refused) == 2
    bad.unlink()  # a refused file the operator removed is no longer listed
    assert len(rs.scan_studies(tmp_path)[1]) == 1


def dataclasses_equal(a: rs.Study, b: rs.Study, but=()) -> bool:
    da, db_ = a.to_dict(), b.to_dict()
    return {k: v for k, v in da.items() if k not in but} == {k: v for k, v in db_.items() if k not in but}


def test_a_root_without_old_files_imports_nothing_and_later_files_are_not_read(tmp_path):
    assert rs.scan_studies(tmp_path) == ([], [])
    assert _db(tmp_path).imported(rs.LEGACY_SOURCE)
    _legacy_file(tmp_path, _study(_pool(1, 1)))  # an old release writing after the switch: not imported
    rs._imported.clear()
    assert rs.scan_studies(tmp_path) == ([], [])


def test_reader_studies_folder_is_gitignored():
    assert "/artifacts/reader_studies/" in (REPO / ".gitignore").read_text().splitlines()


# --- exports and audit -----------------------------------------------------------------------
def test_csv_has_one_row_per_case_with_formula_cells_neutralised():
    films = [rs.Film("=HYPERLINK(\"x\").jpeg", "NORMAL"), rs.Film("b.jpeg", "PNEUMONIA")]
    s = _complete(_study(films), ["NORMAL", "NORMAL"], ["NORMAL", "INDETERMINATE"], [None, "PNEUMONIA"], [0.1, 0.42])
    rows = list(csv.DictReader(io.StringIO(reports.study_csv(s).decode())))
    assert len(rows) == 2
    assert rows[0]["film"].startswith("'=")
    assert rows[1]["ai_verdict"] == "INDETERMINATE" and rows[1]["ai_call"] == "PNEUMONIA (refer)"
    assert rows[1]["ai_probability_pct"] == "42.0" and rows[1]["changed"] == "True" and rows[1]["change_right"] == "True"
    assert rows[0]["reader_id"] == s.reader_id and rows[0]["seed"] == "3"


def test_pdf_is_a_pdf_with_the_study_facts():
    s = _complete(_study(_pool(1, 2)), ["NORMAL"] * 3, ["NORMAL", "PNEUMONIA", "PNEUMONIA"], [None, None, "PNEUMONIA"])
    pdf = reports.study_pdf(s)
    assert pdf.startswith(b"%PDF") and len(pdf) > 1000


def test_finished_study_writes_one_allow_listed_audit_line(tmp_path, caplog):
    s = _complete(_study(_pool(1, 1)), ["NORMAL"] * 2, ["NORMAL"] * 2, [None, None])
    rs.audit_finished(s, tmp_path)
    (line,) = audit.read(tmp_path)
    assert line["action"] == "reader_study" and line["study_id"] == s.study_id
    assert line["reader_id"] == s.reader_id and line["n_cases"] == 2 and line["seed"] == 3
    assert line["model_version"] == "v1" and line["outcome"] == "finished"
    assert "dropped" not in caplog.text
    assert "n000" not in json.dumps(line)  # no film names


# --- issue 21: one writer per study; films stay inside their folder; study files are input -------
def _case_step(study: rs.Study, i: int, label: str = "NORMAL") -> None:
    study.record_first_read(i, label, 4, 2.0)
    study.reveal_ai(i, "PNEUMONIA", 0.8, 0.5)
    study.finish_case(i, 5.0)


def test_a_second_session_is_refused_or_takes_over_and_the_first_sessions_next_save_is_refused(tmp_path):
    a_writer, b_writer = rs.new_writer_id(), rs.new_writer_id()
    a = rs.Study.create(_pool(2, 2), root="/data", model_version="v1", seed=0, source=rs.SOURCE_TEST, writer=a_writer)
    rs.save(a, tmp_path)
    _case_step(a, 0, "PNEUMONIA")
    rs.save(a, tmp_path)  # confirmed: case 1 read by session A
    a.record_first_read(1, "NORMAL", 2, 3.0)
    rs.save(a, tmp_path)  # confirmed: case 2's first read
    assert a.revision == 3
    # Session B resumes the same study: refused while A is its writer...
    with pytest.raises(rs.StudyInUse, match="open in another browser session") as refused:
        rs.open_for_writing(a.study_id, b_writer, tmp_path)
    assert refused.value.study.writer == a_writer
    assert rs.load(a.study_id, tmp_path).revision == 3  # refusing wrote nothing
    # ...until it takes it over explicitly.
    b = rs.open_for_writing(a.study_id, b_writer, tmp_path, take_over=True)
    assert b.writer == b_writer and b.revision == 4 and b.cases[0].first_read == "PNEUMONIA"
    # A's next step is refused, and nothing of the saved study changes.
    before = _db(tmp_path).get(rs.KIND, a.study_id)
    a.reveal_ai(1, "NORMAL", 0.1, 0.5)
    with pytest.raises(rs.StudyConflict, match="took this study over"):
        rs.save(a, tmp_path)
    assert _db(tmp_path).get(rs.KIND, a.study_id) == before and a.revision == 3
    # B goes on from what A confirmed; every confirmed read is saved.
    b.reveal_ai(1, "NORMAL", 0.1, 0.5)
    b.finish_case(1, 4.0)
    rs.save(b, tmp_path)
    final = rs.load(a.study_id, tmp_path)
    assert [c.first_read for c in final.cases[:2]] == ["PNEUMONIA", "NORMAL"] and final.revision == 5
    assert [e["outcome"] for e in audit.read(tmp_path, actions=["reader_study"])] == ["taken_over"]


def test_racing_saves_from_the_same_revision_one_wins_the_other_is_refused(tmp_path):
    import threading

    w = rs.new_writer_id()
    s = rs.Study.create(_pool(2, 2), root="/data", model_version="v1", seed=0, source=rs.SOURCE_TEST, writer=w)
    rs.save(s, tmp_path)
    copies = [rs.load(s.study_id, tmp_path) for _ in range(2)]  # e.g. two tabs of one session
    _case_step(copies[0], 0, "NORMAL")
    _case_step(copies[1], 0, "PNEUMONIA")
    outcomes, barrier = [], threading.Barrier(2)

    def go(c):
        barrier.wait()
        try:
            rs.save(c, tmp_path)
            outcomes.append(c.cases[0].first_read)
        except rs.StudyConflict:
            outcomes.append("refused")

    threads = [threading.Thread(target=go, args=(c,)) for c in copies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes, key=str) in (["NORMAL", "refused"], ["PNEUMONIA", "refused"])
    winner = next(o for o in outcomes if o != "refused")
    assert rs.load(s.study_id, tmp_path).cases[0].first_read == winner  # the refused one overwrote nothing


def test_the_same_session_and_unclaimed_studies_resume_without_a_take_over(tmp_path):
    w = rs.new_writer_id()
    s = _study(_pool(2, 2))  # a study saved before issue 21: no writer
    rs.save(s, tmp_path)
    assert rs.open_for_writing(s.study_id, w, tmp_path).writer == w  # claimed
    assert rs.open_for_writing(s.study_id, w, tmp_path).revision == 2  # again by its writer: no conflict
    with pytest.raises(rs.ReaderStudyError, match="writer id"):
        rs.open_for_writing(s.study_id, "", tmp_path)


# --- one writer across instances: separate processes on one database (SQLite file, PostgreSQL) ----
@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])  # PG: ~2.5 s with the server
def shared_db(request, tmp_path, monkeypatch):
    """Where every process of the test keeps its studies: the SQLite file of the tmp artifacts
    root, or one fresh database on a throwaway PostgreSQL server ($PNEUMOSCOPE_DATABASE_URL, which
    the child processes inherit)."""
    if request.param == "postgresql":
        monkeypatch.setenv(dbm.DATABASE_URL_ENV, fresh_database(request.getfixturevalue("pg_url")))
    return request.param


_CLAIM = textwrap.dedent("""
    import os, sys, time
    from core import reader_study as rs
    sid, writer, root, take_over, ready, peers = sys.argv[1:7]
    rs.load(sid, root)  # connected (and the schema checked) before the race starts
    open(os.path.join(ready, writer), "w").close()
    deadline = time.monotonic() + 30
    while len(os.listdir(ready)) < int(peers) and time.monotonic() < deadline:
        time.sleep(0.001)
    try:
        s = rs.open_for_writing(sid, writer, root, take_over=take_over == "1")
        print("claimed", s.revision, s.writer == writer, flush=True)
    except rs.StudyInUse as e:
        print("in_use", e.study.writer, flush=True)
""")


def _claims(tmp_path, sid: str, writers: list[str], take_over: bool = False) -> list[str]:
    """Each writer claims ``sid`` from its own process, all at the same moment; their answers."""
    ready = tmp_path / f"ready-{writers[0]}"
    ready.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", _CLAIM, sid, w, str(tmp_path), "1" if take_over else "0",
                               str(ready), str(len(writers))], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for w in writers]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-800:] for o in outs]
    return [o[0].strip() for o in outs]


def test_one_writer_across_processes_and_a_stale_writer_cannot_overwrite(tmp_path, shared_db):
    assert _db(tmp_path).backend == shared_db  # (PostgreSQL: through $PNEUMOSCOPE_DATABASE_URL)
    s = rs.Study.create(_pool(2, 2), root="/data", model_version="v1", seed=0, source=rs.SOURCE_TEST)
    rs.save(s, tmp_path)  # unclaimed (revision 1)
    w1, w2, w3 = (rs.new_writer_id() for _ in range(3))
    # Two instances claim it at once: exactly one gets it, the other is told it is in use by the winner.
    answers = _claims(tmp_path, s.study_id, [w1, w2])
    claimed = [a for a in answers if a.startswith("claimed")]
    assert claimed == ["claimed 2 True"], answers
    winner = (w1, w2)[answers.index(claimed[0])]
    assert f"in_use {winner}" in answers
    saved = rs.load(s.study_id, tmp_path)
    assert (saved.writer, saved.revision) == (winner, 2)
    # The winner's session (its copy here) records a read; then a third instance takes the study over.
    _case_step(saved, 0, "PNEUMONIA")
    rs.save(saved, tmp_path)
    assert _claims(tmp_path, s.study_id, [w3], take_over=True) == ["claimed 4 True"]
    # The winner's copy is now stale: its save is refused and overwrites nothing.
    before = rs.load(s.study_id, tmp_path)
    _case_step(saved, 1, "NORMAL")
    with pytest.raises(rs.StudyConflict, match="took this study over"):
        rs.save(saved, tmp_path)
    after = rs.load(s.study_id, tmp_path)
    assert after == before and (after.writer, after.revision) == (w3, 4) and after.cases[0].first_read == "PNEUMONIA"
    assert after.cases[1].first_read is None
    assert [e["outcome"] for e in audit.read(tmp_path, actions=["reader_study"])] == ["taken_over"]


def _films_tree(tmp_path):
    import os

    data = tmp_path / "data"
    for cls in ("NORMAL", "PNEUMONIA"):
        (data / "test" / cls).mkdir(parents=True)
        for i in range(2):
            (data / "test" / cls / f"{cls[0].lower()}{i}.png").write_bytes(b"png")
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"not for the app")
    os.symlink(secret, data / "test" / "NORMAL" / "link.png")
    return data, secret


def _write_study(tmp_path, paths, *, data_root="/anywhere", old_file=False) -> str:
    """A study with these film paths, written straight into the database (or as an old file)."""
    s = rs.Study.create([rs.Film("test/NORMAL/n0.png", "NORMAL"), rs.Film("test/PNEUMONIA/p0.png", "PNEUMONIA")],
                        root=data_root, model_version="v1", seed=0, source=rs.SOURCE_TEST)
    d = s.to_dict()
    d["cases"] = [dict(d["cases"][0], path=p, truth=("NORMAL", "PNEUMONIA")[k % 2]) for k, p in enumerate(paths)]
    d["n"] = len(paths)
    if old_file:
        _legacy_file(tmp_path / "art", d)
    else:
        _db(tmp_path / "art").put(rs.KIND, s.study_id, d, expect=None)
    return s.study_id


@pytest.mark.parametrize("bad, why", [("/etc/passwd", "is absolute"), ("SECRET", "is absolute"),
                                      ("../secret.png", "goes up"), ("test/../../secret.png", "goes up"),
                                      ("C:\\Windows\\win.ini", "is absolute")])
def test_a_study_with_an_absolute_or_dotdot_film_path_is_refused_by_name(tmp_path, bad, why):
    data, secret = _films_tree(tmp_path)
    bad = str(secret) if bad == "SECRET" else bad
    sid = _write_study(tmp_path, ["test/NORMAL/n0.png", bad])
    old = _write_study(tmp_path, [bad, "test/PNEUMONIA/p0.png"], old_file=True)
    with pytest.raises(rs.ReaderStudyError, match=f"{sid} is refused: .*case 2's film path .*{why}"):
        rs.load(sid, tmp_path / "art")
    studies, refused = rs.scan_studies(tmp_path / "art")
    assert studies == [] and len(refused) == 2
    assert sid in refused[0] and re.search(f"{old} is refused: .*case 1's film path .*{why}", refused[1])
    with pytest.raises(rs.ReaderStudyError, match="No saved reader study"):  # the old file was not imported
        rs.load(old, tmp_path / "art")


def test_films_resolve_inside_the_configured_data_root_and_a_symlink_out_is_not_read(tmp_path, monkeypatch):
    data, secret = _films_tree(tmp_path)
    # The study names "/" as its data root: ignored, films resolve under the root configured here.
    sid = _write_study(tmp_path, ["test/NORMAL/n0.png", "test/NORMAL/link.png", "test/PNEUMONIA/p0.png"], data_root="/",
                       old_file=True)  # (an old file: imported, then read from the database)
    s = rs.load(sid, tmp_path / "art")
    assert s.film_path(0, data) == (data / "test" / "NORMAL" / "n0.png").resolve()
    assert s.film_path(2, data).parent == (data / "test" / "PNEUMONIA").resolve()
    with pytest.raises(rs.ReaderStudyError, match="Film 2 .*leads outside the data folder"):
        s.film_path(1, data)
    problems = s.film_problems(data)
    assert len(problems) == 1 and problems[0].startswith("Film 2")
    with pytest.raises(rs.ReaderStudyError, match="No data folder is configured"):
        s.film_path(0, None)
    # The page reads films only through film_path: nothing outside the data folder is opened.
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: opened.append(str(f)) or real_open(f, *a, **k))
    for i in range(3):
        try:
            with open(s.film_path(i, data), "rb") as fh:
                fh.read()
        except rs.ReaderStudyError:
            pass
    assert str(secret) not in opened and all(o.startswith(str(data.resolve())) for o in opened)
    # The pool a new study is drawn from leaves the link out.
    root, films, source, _ = rs.film_pool(data)
    assert source == rs.SOURCE_TEST and "test/NORMAL/link.png" not in {f.path for f in films} and len(films) == 4


@pytest.mark.parametrize("edit, why", [
    (lambda d: d["cases"][0].update(truth="MAYBE"), "truth"),
    (lambda d: d["cases"][0].update(done=True), "marked done without a read"),
    (lambda d: d["cases"][0].update(first_read="NORMAL", first_confidence=9), "confidence"),
    (lambda d: d["cases"][0].update(ai_probability=7), "not a probability"),
    (lambda d: d.update(revision=-1), "revision"),
    (lambda d: d.update(study_id="rs-20260101-000000-ffffff"), "document names another study"),
    (lambda d: d.update(cases=[]), "0 cases"),
])
def test_a_tampered_study_is_refused_by_name(tmp_path, edit, why):
    s = _study(_pool(2, 2))
    rs.save(s, tmp_path)
    d = _tamper(tmp_path, s.study_id, edit)
    with pytest.raises(rs.ReaderStudyError, match=f"{s.study_id} .*{why}"):
        rs.load(s.study_id, tmp_path)
    with pytest.raises(rs.ReaderStudyError, match=s.study_id):  # and never overwritten by a save
        rs.save(s, tmp_path)
    assert _db(tmp_path).get(rs.KIND, s.study_id).data == d


def test_old_study_files_are_read_as_bounded_regular_files(tmp_path):
    from helpers import run_with_timeout

    folder = tmp_path / "reader_studies"
    folder.mkdir()
    os.mkfifo(folder / "rs-20260101-000000-aaaaaa.json")
    os.symlink("/dev/zero", folder / "rs-20260101-000000-bbbbbb.json")
    s = _study(_pool(2, 2))
    _legacy_file(tmp_path, s)
    os.symlink(folder / f"{s.study_id}.json", folder / "rs-20260101-000000-cccccc.json")
    studies, refused = run_with_timeout(lambda: rs.scan_studies(tmp_path), timeout=10, what="scan_studies")
    assert [x.study_id for x in studies] == [s.study_id]
    assert len(refused) == 3 and all("cannot be read" in m for m in refused)
    assert any("named pipe" in m for m in refused) and sum("symbolic link" in m for m in refused) == 2


# --- moved from test_issue16_helpers.py ------------------------------------------------------------
def test_reader_study_metrics_table_formats_rates_and_intervals_in_percent():
    assert reports._ci((0.712, 0.95)) == "71.2-95.0 %" and reports._ci(None) == "n/a"
    arm = next(iter(stats.ARM_LABELS))
    (row,) = reports.study_metrics_table({"arms": {arm: {"sensitivity": 0.75, "sensitivity_ci95": (0.3, 0.954),
                                               "specificity": None, "specificity_ci95": None, "n": 8}}})
    assert row["Sensitivity"] == "75.0 %" and row["Sensitivity 95 % CI"] == "30.0-95.4 %"
    assert row["Specificity"] == "n/a" and row["Specificity 95 % CI"] == "n/a"

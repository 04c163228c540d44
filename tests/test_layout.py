"""core.layout is the one owner of the artifacts folder's layout (issue 23): every module's files
land where the layout says; the state files of earlier releases (the ACTIVE pointer, the
activation history, the admin sign-in state, at their issue-23 place or under ``jobs/``) are
imported into the shared database once and left in place (issue 25)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from core import admin, audit, auth, feedback, jobs, locks, pacs, reader_study
from core import db as dbm
from core.layout import LEGACY_LOCATIONS, Layout
from core.registry import REQUIRED_FILES, Registry


def _writer(d):
    for f in REQUIRED_FILES:
        (d / f).write_text("{}")
    (d / "card.json").write_text("{}")


@pytest.fixture(autouse=True)
def _own_database(monkeypatch):
    monkeypatch.delenv(dbm.DATABASE_URL_ENV, raising=False)  # each artifacts root: its own SQLite file


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def test_layout_names_every_place(tmp_path, monkeypatch):
    lay = Layout(tmp_path)
    assert lay.models == tmp_path / "models" and lay.staging == tmp_path / ".staging"
    assert lay.active_pointer == tmp_path / "ACTIVE" and lay.pending_pointer == tmp_path / "PENDING_ACTIVATION"
    assert lay.version_file("v1", "card.json") == tmp_path / "models" / "v1" / "card.json"
    assert lay.active_history == tmp_path / "admin" / "active_history.json"
    assert lay.auth_lockout == tmp_path / "admin" / "auth_lockout.json"
    assert lay.audit_log == tmp_path / "audit" / "audit.jsonl"
    assert lay.legacy(lay.active_history) == tmp_path / "jobs" / "active_history.json"
    assert lay.legacy(lay.audit_log) is None and lay.legacy("/elsewhere/x.json") is None
    monkeypatch.setenv("PNEUMOSCOPE_ARTIFACTS", str(tmp_path / "env"))
    assert Layout.of(None).root == tmp_path / "env" and Layout.of(str(tmp_path)) == lay
    with pytest.raises(dataclasses.FrozenInstanceError):
        lay.root = tmp_path / "other"  # frozen: a layout is a value


def test_every_module_asks_the_layout_for_its_folder(tmp_path, monkeypatch):
    """Each module's default place, given the artifacts folder or through $PNEUMOSCOPE_ARTIFACTS."""
    lay = Layout(tmp_path)
    given = {"jobs": jobs.jobs_root(tmp_path), "feedback": feedback.default_feedback_dir(tmp_path),
             "studies": reader_study.studies_dir(tmp_path), "pacs_state": pacs.WatchState(tmp_path).layout.pacs_state,
             "models": Registry(tmp_path).models_dir, "root": auth.Lockout(tmp_path).root}
    assert given == {k: getattr(lay, k) for k in given}
    monkeypatch.setenv("PNEUMOSCOPE_ARTIFACTS", str(tmp_path))
    assert (jobs.jobs_root(), feedback.default_feedback_dir(), reader_study.studies_dir(), pacs.WatchState().layout.pacs_state,
            auth.Lockout().root, Registry().root) == \
        (lay.jobs, lay.feedback, lay.studies, lay.pacs_state, lay.root, lay.root)


def test_files_land_where_the_layout_says(tmp_path):
    """Publish, promote, roll back, a sign-in attempt and the training lease, each through its
    module's default paths: every file written is one the layout names (or inside a folder it
    names); the pointer, the history and the sign-in state are in the database, not in files."""
    root = tmp_path / "artifacts"
    lay, reg = Layout(root), Registry(root)
    reg.publish(_writer, "v0001-a")
    reg.publish(_writer, "v0002-b")
    admin.promote(reg, "v0001-a")
    admin.promote(reg, "v0002-b")
    assert admin.rollback(reg) == "v0001-a"
    auth.Lockout(root).attempt("wrong", "right", client="s1")
    lease = locks.acquire_training_lock(root)
    assert lease is not None
    lease.release()
    files = _files(root)
    assert not {lay.relative(p) for p in (lay.active_pointer, lay.active_history, lay.auth_lockout)} & files
    folders = [p.relative_to(root).as_posix() + "/" for p in (lay.models, lay.jobs, lay.staging)]  # + their locks
    strays = {f for f in files if not f.startswith(tuple(folders)) and not f.startswith(dbm.SQLITE_NAME)}
    assert strays == set()
    assert [h["version"] for h in admin.read_active_history(reg)] == ["v0001-a", "v0002-b", "v0001-a"]
    assert [a["action"] for a in audit.read(root)] == ["promote", "promote", "rollback"]


def test_old_places_are_imported_oldest_first(tmp_path):
    lay = Layout(tmp_path)
    assert lay.imported(lay.active_history) == [tmp_path / "jobs" / "active_history.json", lay.active_history]
    assert lay.imported(lay.auth_lockout) == [tmp_path / "jobs" / "auth_lockout.json", lay.auth_lockout]
    assert lay.imported(lay.active_pointer) == [lay.active_pointer]
    assert lay.relative(lay.auth_lockout) == "admin/auth_lockout.json"
    assert set(LEGACY_LOCATIONS) == {"admin/active_history.json", "admin/auth_lockout.json"}


def test_old_state_files_are_imported_once_nothing_lost_and_left_in_place(tmp_path):
    """A release before issue 25 (history and sign-in state under jobs/, ACTIVE): the first use of
    the database imports them; roll back still knows where to go; a drained sign-in bucket does not
    come back full; the files are left as they were."""
    root = tmp_path / "artifacts"
    for name in ("v0001-a", "v0002-b"):
        (root / "models" / name).mkdir(parents=True)
        _writer(root / "models" / name)
    (root / "jobs").mkdir()
    hist = [{"time": "t1", "action": "promote", "version": "v0001-a", "previous": None, "source": "cli"},
            {"time": "t2", "action": "promote", "version": "v0002-b", "previous": "v0001-a", "source": "app"}]
    (root / "jobs" / "active_history.json").write_text(json.dumps(hist))
    (root / "jobs" / "auth_lockout.json").write_text(json.dumps({"v": 2, "bucket": {"tokens": 0, "t": 2e9},
                                                                 "clients": {}, "code": None}))
    (root / "ACTIVE").write_text("v0002-b\n")
    before = _files(root)
    reg = Registry(root)
    assert reg.active_version() == "v0002-b" and admin.read_active_history(reg) == hist
    assert admin.rollback_target(reg) == "v0001-a"
    st = auth.Lockout(root, clock=lambda: 2e9).status()
    assert st.throttled and st.tokens < 1
    assert {f for f in _files(root) if not f.startswith(dbm.SQLITE_NAME)} == before  # nothing moved or deleted
    db = dbm.connect(root)
    assert all(db.imported(s) for s in ("ACTIVE", "jobs/active_history.json", "jobs/auth_lockout.json"))

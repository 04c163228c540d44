"""core.layout is the one owner of the artifacts folder's layout (issue 23): every module's files
land where the layout says, and the two state files that moved out of ``jobs/`` (activation
history, admin sign-in state) are moved once from their old place, nothing lost."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from core import admin, audit, auth, feedback, jobs, locks, pacs, reader_study
from core.layout import LEGACY_LOCATIONS, Layout
from core.registry import REQUIRED_FILES, Registry


def _writer(d):
    for f in REQUIRED_FILES:
        (d / f).write_text("{}")
    (d / "card.json").write_text("{}")


@pytest.fixture(autouse=True)
def _no_shared_audit_log(monkeypatch):
    monkeypatch.delenv("PNEUMOSCOPE_AUDIT_LOG", raising=False)


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
             "studies": reader_study.studies_dir(tmp_path), "pacs_state": pacs.default_state_path(tmp_path),
             "audit_log": audit.default_audit_path(tmp_path), "auth_lockout": auth.default_lockout_path(tmp_path),
             "active_history": admin.history_path(Registry(tmp_path)), "models": Registry(tmp_path).models_dir}
    assert given == {k: getattr(lay, k) for k in given}
    monkeypatch.setenv("PNEUMOSCOPE_ARTIFACTS", str(tmp_path))
    assert (jobs.jobs_root(), feedback.default_feedback_dir(), reader_study.studies_dir(), pacs.default_state_path(),
            audit.default_audit_path(), auth.default_lockout_path()) == \
        (lay.jobs, lay.feedback, lay.studies, lay.pacs_state, lay.audit_log, lay.auth_lockout)


def test_files_land_where_the_layout_says(tmp_path):
    """Publish, promote, roll back, a sign-in attempt and the training lock, each through its
    module's default paths: every file written is one the layout names (or inside a folder it names)."""
    root = tmp_path / "artifacts"
    lay, reg = Layout(root), Registry(root)
    reg.publish(_writer, "v0001-a")
    reg.publish(_writer, "v0002-b")
    admin.promote(reg, "v0001-a")
    admin.promote(reg, "v0002-b")
    assert admin.rollback(reg) == "v0001-a"
    auth.Lockout(auth.default_lockout_path(root)).attempt("wrong", "right", client="s1")
    fd = locks.acquire_training_lock(jobs.jobs_root(root))
    try:
        assert fd is not None
    finally:
        os.close(fd)
    files = _files(root)
    rel = {p.relative_to(root).as_posix() for p in (lay.active_pointer, lay.active_history, lay.auth_lockout,
                                                     lay.audit_log)}
    assert rel <= files
    folders = [p.relative_to(root).as_posix() + "/"
               for p in (lay.models, lay.jobs, lay.admin, lay.staging, lay.audit_log.parent)]  # + their locks
    strays = {f for f in files - rel if not f.startswith(tuple(folders))}
    assert strays == set()
    assert not any(f.startswith("jobs/") and f.endswith(".json") for f in files)  # state lives in admin/ now
    assert [h["version"] for h in admin.read_active_history(reg)] == ["v0001-a", "v0002-b", "v0001-a"]
    assert [a["action"] for a in audit.read(lay.audit_log)] == ["promote", "promote", "rollback"]


def test_old_activation_history_is_moved_once_nothing_lost(tmp_path):
    root = tmp_path / "artifacts"
    reg = Registry(root)
    reg.publish(_writer, "v0001-a")
    reg.publish(_writer, "v0002-b")
    old = root / "jobs" / "active_history.json"
    old.parent.mkdir(parents=True)
    hist = [{"time": "t1", "action": "promote", "version": "v0001-a", "previous": None, "source": "cli"},
            {"time": "t2", "action": "promote", "version": "v0002-b", "previous": "v0001-a", "source": "app"}]
    old.write_text(json.dumps(hist))
    (root / "ACTIVE").write_text("v0002-b\n")
    assert admin.read_active_history(reg) == hist  # read from the new place after the move
    new = Layout(root).active_history
    assert new.is_file() and not old.exists()
    assert admin.rollback_target(reg) == "v0001-a"  # roll back still knows where to go
    old.write_text("[]")  # an old file that appears later is not read: the move happened once
    assert admin.read_active_history(reg) == hist and old.exists()


def test_old_sign_in_state_is_moved_once_and_keeps_its_bucket(tmp_path):
    """A drained sign-in bucket must not come back full because the file moved."""
    root = tmp_path / "artifacts"
    old = root / "jobs" / "auth_lockout.json"
    lo = auth.Lockout(old)  # the state as a release before issue 23 wrote it
    for i in range(auth.BUCKET_CAPACITY):
        lo.attempt("guess", "right", client=f"attacker-{i}")
    assert lo.status().throttled
    path = auth.default_lockout_path(root)
    assert path == Layout(root).auth_lockout and path.is_file() and not old.exists()
    moved = auth.Lockout(path).status()
    assert moved.throttled and moved.tokens < 1
    assert path.stat().st_mode & 0o077 == 0  # still private to the server's user


def test_a_new_file_wins_over_an_old_one(tmp_path):
    lay = Layout(tmp_path)
    for new, old in LEGACY_LOCATIONS.items():
        (tmp_path / new).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / old).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / new).write_text('"new"')
        (tmp_path / old).write_text('"old"')
        assert lay.migrate(tmp_path / new).read_text() == '"new"'
        assert (tmp_path / old).read_text() == '"old"'  # left alone, not deleted


def test_an_old_symlink_is_moved_as_a_link_and_still_refused(tmp_path):
    """The move never follows a link: the link itself moves, and its reader refuses it as before
    (a link to a full bucket counts as an empty one)."""
    root = tmp_path / "artifacts"
    elsewhere = tmp_path / "full.json"
    elsewhere.write_text(json.dumps({"bucket": {"tokens": 10, "t": 0}, "clients": {}}))
    (root / "jobs").mkdir(parents=True)
    os.symlink(elsewhere, root / "jobs" / "auth_lockout.json")
    path = auth.default_lockout_path(root)
    assert path.is_symlink() and not (root / "jobs" / "auth_lockout.json").exists()
    st = auth.Lockout(path).status()
    assert st.throttled and st.state_error
    assert json.loads(elsewhere.read_text())["bucket"]["tokens"] == 10  # untouched


def test_an_old_folder_is_left_in_place(tmp_path, caplog):
    (tmp_path / "jobs" / "active_history.json").mkdir(parents=True)
    lay = Layout(tmp_path)
    assert lay.migrate(lay.active_history) == lay.active_history
    assert (tmp_path / "jobs" / "active_history.json").is_dir() and not lay.active_history.exists()
    assert admin.read_active_history(Registry(tmp_path)) == []

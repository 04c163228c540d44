"""Tests for core.registry: publish / activate / delete, crash safety, name validation, the active-version
pointer and its history in the shared database (issue 25)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from core import registry as registry_mod
from core.registry import POINTER_KEY, POINTER_KIND, REQUIRED_FILES, Registry, RegistryError, validate_version_name
from tests.dbfixtures import pg_url, python, shared_db  # noqa: F401 - fixtures


def _fake_writer(card: dict | None = None):
    """Writes the required files with placeholder content (enough for listing, not loading)."""

    def write(d):
        for f in REQUIRED_FILES:
            (d / f).write_text("{}")
        (d / "card.json").write_text(json.dumps(card or {}))

    return write


class Boom(Exception):
    pass


def _point(reg: Registry, value) -> None:
    """Store ``value`` as the pointer, as a hand edit of the database would."""
    reg.db.put(POINTER_KIND, POINTER_KEY, {"version": value})


# --- publish / activate / delete ---------------------------------------------------------------
def test_publish_activate_delete_cycle(tmp_path):
    reg = Registry(tmp_path / "artifacts")
    assert reg.versions() == [] and reg.active_version() is None
    a = reg.publish(_fake_writer({"created": "2026-01-01T00:00:00"}), "v0001-a")
    assert a == "v0001-a"
    assert reg.active_version() is None  # publishing does not activate by default
    b = reg.publish(_fake_writer({"created": "2026-01-02T00:00:00"}), "v0002-b", activate=True)
    assert reg.active_version() == b
    assert reg.pointer().version == b and not (tmp_path / "artifacts" / "ACTIVE").exists()  # in the database
    vs = reg.versions()
    assert [v.name for v in vs] == [a, b]  # oldest first
    assert [v.active for v in vs] == [False, True]
    assert vs[0].created == "2026-01-01T00:00:00" and vs[0].path == reg.models_dir / a
    reg.set_active(a)
    assert reg.active_version() == a
    reg.delete(b)
    assert [v.name for v in reg.versions()] == [a]
    assert not (reg.models_dir / b).exists()
    assert list(reg.staging_dir.iterdir()) == []  # the trash was emptied
    assert [(h["version"], h["previous"]) for h in reg.activation_history()] == [(b, None), (a, b)]


def test_publish_existing_name_refused(tmp_path):
    reg = Registry(tmp_path)
    reg.publish(_fake_writer(), "v1")
    with pytest.raises(RegistryError, match="already exists"):
        reg.publish(_fake_writer(), "v1")


def test_publish_with_missing_required_file_refused(tmp_path):
    reg = Registry(tmp_path)

    def partial(d):
        (d / "model.keras").write_text("x")

    with pytest.raises(RegistryError, match="missing"):
        reg.publish(partial, "v1")
    assert reg.versions() == [] and not (reg.models_dir / "v1").exists()
    assert list(reg.staging_dir.iterdir()) == []


def test_new_version_names_increment(tmp_path):
    reg = Registry(tmp_path)
    n1 = reg.publish(_fake_writer())
    assert n1.startswith("v0001-")
    n2 = reg.publish(_fake_writer({"created": "9999"}))
    assert n2.startswith("v0002-")
    validate_version_name(n1)


def test_publish_real_model_and_load(trained_registry):
    reg = trained_registry
    assert reg.active_version() == "v0001-tiny"
    (v,) = reg.versions()
    d = v.path
    for f in ("model.keras", "config.json", "operating_point.json", "history.json", "metrics.json",
              "provenance.json", "card.json", "ood.npz", "ood.json"):
        assert (d / f).is_file(), f
    card = v.card
    for k in ("version", "created", "labels", "input_size", "weights_source", "threshold", "indeterminate_band",
              "temperature", "val_roc_auc", "test", "counts", "wall_time_s"):
        assert k in card, k
    assert card["version"] == "v0001-tiny" and card["labels"] == ["NORMAL", "PNEUMONIA"]
    assert set(card["test"]) == {"accuracy", "roc_auc", "pr_auc", "sensitivity", "specificity", "n"}
    hist = reg.read_json(None, "history.json")
    assert {"head", "finetune", "phase_boundary_epoch"} <= set(hist)
    assert set(reg.read_json("v0001-tiny", "metrics.json")) == {"validation", "test"}
    assert reg.read_json(None, "provenance.json")["version"] == "v0001-tiny"
    assert reg.read_json(None, "no-such-file.json") == {}
    loaded = reg.load()
    assert loaded.name == "v0001-tiny" and loaded.config.input_size == 32
    assert loaded.metrics()["test"]["n"] == 8
    assert loaded.operating_point.band_low <= loaded.operating_point.threshold <= loaded.operating_point.band_high
    x = np.zeros((1, 32, 32, 3), np.float32)
    assert np.asarray(loaded.model(x)).shape == (1, 1)


# --- crash safety -----------------------------------------------------------------------------------
def _assert_untouched(reg: Registry, active: str, names: list[str]):
    assert reg.active_version() == active
    assert [v.name for v in reg.versions()] == names
    loaded = reg.load()  # the active version still loads
    assert loaded.name == active


def test_writer_crash_mid_publish_leaves_registry_intact(registry_copy):
    reg = registry_copy

    def crashing(d):
        (d / "model.keras").write_bytes(b"half a model")
        raise Boom("disk full")

    with pytest.raises(Boom):
        reg.publish(crashing, "v0002-crash", activate=True)
    _assert_untouched(reg, "v0001-tiny", ["v0001-tiny"])
    assert not (reg.models_dir / "v0002-crash").exists()
    assert list(reg.staging_dir.iterdir()) == []


def test_keyboard_interrupt_mid_publish_leaves_registry_intact(registry_copy):
    reg = registry_copy

    def interrupted(d):
        (d / "config.json").write_text("{")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        reg.publish(interrupted, "v0002-int", activate=True)
    _assert_untouched(reg, "v0001-tiny", ["v0001-tiny"])
    assert list(reg.staging_dir.iterdir()) == []


def test_rename_failure_leaves_registry_intact(registry_copy, monkeypatch):
    reg = registry_copy
    src = reg.models_dir / "v0001-tiny"

    def failing_rename(a, b):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(OSError):
        reg.publish(lambda d: [shutil.copy(src / f, d / f) for f in REQUIRED_FILES], "v0002-x", activate=True)
    monkeypatch.undo()
    _assert_untouched(reg, "v0001-tiny", ["v0001-tiny"])
    assert not (reg.models_dir / "v0002-x").exists()


def test_killed_process_debris_is_never_listed(registry_copy):
    """A SIGKILL mid-publish leaves a staging dir; a non-atomic copy leaves a partial folder."""
    reg = registry_copy
    stale = reg.staging_dir / "v0002-killed.deadbeef"
    stale.mkdir(parents=True)
    (stale / "model.keras").write_bytes(b"partial")
    partial = reg.models_dir / "v0003-partial"
    partial.mkdir()
    (partial / "model.keras").write_bytes(b"partial")  # config.json etc. missing
    _assert_untouched(reg, "v0001-tiny", ["v0001-tiny"])
    assert not reg.is_complete("v0003-partial")
    with pytest.raises(RegistryError, match="does not exist"):
        reg.load("v0003-partial")
    with pytest.raises(RegistryError, match="Cannot activate"):
        reg.set_active("v0003-partial")
    assert reg.active_version() == "v0001-tiny"
    # publishing still works with debris around, and clean_staging removes it
    reg.publish(lambda d: [shutil.copy(reg.models_dir / "v0001-tiny" / f, d / f) for f in REQUIRED_FILES], "v0004-ok")
    assert sorted(v.name for v in reg.versions()) == ["v0001-tiny", "v0004-ok"]
    assert reg.clean_staging() == 1
    assert list(reg.staging_dir.iterdir()) == []


def test_active_pointing_at_missing_version(registry_copy):
    reg = registry_copy
    _point(reg, "v0009-gone")
    assert reg.active_version() is None and "not a complete version" in reg.active_pointer_problem()
    assert all(not v.active for v in reg.versions())
    with pytest.raises(RegistryError, match="No active model"):
        reg.load()
    # an explicit version still loads
    assert reg.load("v0001-tiny").name == "v0001-tiny"


@pytest.mark.parametrize("content", ["", None, "   ", 3, ["v0001-tiny"]])
def test_active_empty_or_not_a_name(registry_copy, content):
    _point(registry_copy, content)
    assert registry_copy.active_version() is None


def test_active_missing_document(registry_copy):
    registry_copy.db.delete(POINTER_KIND, POINTER_KEY)
    assert registry_copy.active_version() is None and registry_copy.pointer().revision is None


def test_active_pointing_at_incomplete_version(registry_copy):
    reg = registry_copy
    (reg.models_dir / "v0001-tiny" / "config.json").unlink()
    assert reg.active_version() is None
    assert reg.versions() == []


def test_active_with_path_traversal_is_ignored(registry_copy):
    reg = registry_copy
    shutil.copytree(reg.models_dir / "v0001-tiny", reg.root / "outside")
    _point(reg, "../outside")
    assert reg.active_version() is None and "invalid version name" in reg.active_pointer_problem()


def test_delete_refuses_active(registry_copy):
    reg = registry_copy
    with pytest.raises(RegistryError, match="Refusing to delete the active version"):
        reg.delete("v0001-tiny")
    _assert_untouched(reg, "v0001-tiny", ["v0001-tiny"])


def test_delete_missing_version(registry_copy):
    with pytest.raises(RegistryError, match="does not exist"):
        registry_copy.delete("v0099-none")


def test_set_active_missing_version(registry_copy):
    with pytest.raises(RegistryError, match="Cannot activate"):
        registry_copy.set_active("v0099-none")
    assert registry_copy.active_version() == "v0001-tiny"


# --- names ---------------------------------------------------------------------------------------------
BAD_NAMES = ["../x", "..", ".", ".hidden", "a/b", "a\\b", "/abs", "", " v1", "v1 ", "x" * 65, "ä1", None, 3]


@pytest.mark.parametrize("name", BAD_NAMES, ids=[repr(n) for n in BAD_NAMES])
def test_invalid_version_names_rejected(tmp_path, name):
    reg = Registry(tmp_path / "artifacts")
    with pytest.raises(ValueError, match="Received: version="):
        validate_version_name(name)
    if name:  # '' and None mean "pick a name" for publish
        with pytest.raises(ValueError, match="Received: version="):
            reg.publish(_fake_writer(), name)
    if isinstance(name, str) and name:
        for op in (reg.set_active, reg.delete):
            with pytest.raises(ValueError, match="Received: version="):
                op(name)
    assert not (tmp_path / "x").exists()  # nothing escaped the registry
    assert not (tmp_path / "artifacts" / "models").exists() or reg.versions() == []


def test_version_name_with_trailing_newline_rejected(tmp_path):
    with pytest.raises(ValueError, match="Received: version="):
        validate_version_name("v1\n")


@pytest.mark.parametrize("name", ["v1", "v0001-20260101-120000", "my_model.2", "A-b_c.d", "x" * 64])
def test_valid_version_names(name):
    assert validate_version_name(name) == name


def test_path_traversal_in_load_and_delete(registry_copy):
    reg = registry_copy
    shutil.copytree(reg.models_dir / "v0001-tiny", reg.root / "outside")
    with pytest.raises(ValueError, match="Received: version="):
        reg.load("../outside")
    with pytest.raises(ValueError, match="Received: version="):
        reg.delete("../outside")
    assert (reg.root / "outside").is_dir()


# --- issue 14: interrupted --activate, stale staging, damaged model files -------------------------
def test_sigkill_between_rename_and_active_is_reported_and_completed(tmp_path):
    """A real kill -9 right after the rename, before the pointer is set."""
    import signal
    import subprocess
    import sys
    import textwrap

    root = tmp_path / "art"
    reg = Registry(root)
    reg.publish(_fake_writer(), "v0001-old", activate=True)
    code = textwrap.dedent(f"""
        import os, signal
        from core.registry import Registry, REQUIRED_FILES
        reg = Registry({str(root)!r})
        def write(d):
            for f in REQUIRED_FILES:
                (d / f).write_text("{{}}")
        Registry.set_active = lambda self, name, **kw: os.kill(os.getpid(), signal.SIGKILL)
        reg.publish(write, "v0002-new", activate=True)
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == -signal.SIGKILL
    assert reg.is_complete("v0002-new") and reg.active_version() == "v0001-old"
    assert reg.pending_activation() == "v0002-new"  # reported, not silent
    assert "v0002-new" in reg.pending_activation_message() and "--activate" in reg.pending_activation_message()
    assert reg.complete_pending_activation() == "v0002-new"
    assert reg.active_version() == "v0002-new" and reg.pending_activation() is None
    assert not reg.pending_file.exists()


def test_pending_marker_lifecycle(tmp_path):
    reg = Registry(tmp_path)
    reg.publish(_fake_writer(), "v0001-a", activate=True)
    assert not reg.pending_file.exists() and reg.active_version() == "v0001-a"
    with pytest.raises(Boom):  # the writer fails: nothing pending, nothing published
        reg.publish(lambda d: (_ for _ in ()).throw(Boom()), "v0002-b", activate=True)
    assert reg.pending_activation() is None and not reg.pending_file.exists()
    # an explicit activation supersedes an interrupted one
    reg.publish(_fake_writer(), "v0003-c")
    reg._write_pending("v0003-c")
    reg.publish(_fake_writer(), "v0004-d")
    reg.set_active("v0004-d")
    assert reg.pending_activation() is None
    assert reg.complete_pending_activation() is None and reg.active_version() == "v0004-d"


def test_clean_staging_removes_debris_and_skips_nothing_else(tmp_path):
    reg = Registry(tmp_path)
    reg.publish(_fake_writer(), "v0001-a", activate=True)
    (reg.staging_dir / "v0002-killed.1234abcd").mkdir()
    (reg.staging_dir / "v0002-killed.1234abcd" / "model.keras").write_bytes(b"x" * 100)
    (reg.staging_dir / "stray.tmp").write_text("x")
    assert reg.clean_staging() == 2
    assert list(reg.staging_dir.iterdir()) == [] and reg.is_complete("v0001-a")


@pytest.mark.parametrize("damage", ["garbage", "config"])
def test_damaged_model_files_raise_one_line_registry_error(registry_copy, damage):
    d = registry_copy.models_dir / "v0001-tiny"
    if damage == "garbage":
        (d / "model.keras").write_bytes(os.urandom(3000))
    else:
        (d / "config.json").write_text('{"input_size": "huge", "nonsense": [1, 2, 3]}')
    with pytest.raises(RegistryError) as e:
        registry_copy.load()
    msg = str(e.value)
    assert "\n" not in msg and "could not be loaded" in msg and "v0001-tiny" in msg


# --- registry files are input (issue 21) -------------------------------------------------------------
from core.registry import BrokenVersionError  # noqa: E402


def _two_versions(tmp_path, **files) -> Registry:
    """v0001-good (active) and v0002-bad, whose files named in ``files`` (name -> text) replace the
    placeholders: enough to be checked, listed, activated and deleted (not to run a model)."""
    reg = Registry(tmp_path / "artifacts")
    reg.publish(_fake_writer({"created": "2026-01-01T00:00:00"}), "v0001-good", activate=True)
    reg.publish(_fake_writer({"created": "2026-01-02T00:00:00"}), "v0002-bad")
    for name, text in files.items():
        (reg.models_dir / "v0002-bad" / name).write_text(text)
    return reg


OP = '{"temperature": 0.7, "threshold": 0.2, "band_low": 0.1, "band_high": 0.3}'


@pytest.mark.parametrize("text,field", [
    (OP.replace("0.2,", "NaN,").replace("0.1,", "NaN,").replace("0.3}", "NaN}"), "not valid JSON"),
    (OP.replace("0.2,", "1e308,"), "threshold"),
    (OP.replace("0.2,", "-0.5,"), "threshold"),
    (OP.replace("0.2,", '"0.2",'), "threshold"),
    (OP.replace("0.7,", "-0.7,"), "temperature"),
    ("[0.2]", "JSON object"),
])
def test_tampered_operating_point_refuses_the_version_by_name(tmp_path, text, field):
    """Before: NaN or 1e308 made every film NORMAL, a negative temperature inverted every
    probability, a string raised a TypeError (exit 1). Now the version is refused by name."""
    reg = _two_versions(tmp_path, **{"operating_point.json": text})
    problems = reg.check_version("v0002-bad")
    assert len(problems) == 1 and problems[0].lstrip("'").startswith("operating_point.json") and field in problems[0]
    with pytest.raises(BrokenVersionError) as e:
        reg.load("v0002-bad")
    msg = str(e.value)
    assert "'v0002-bad' could not be loaded" in msg and "operating_point.json" in msg and "\n" not in msg
    assert isinstance(e.value, RegistryError) and e.value.version == "v0002-bad"
    with pytest.raises(BrokenVersionError, match="'v0002-bad' cannot be activated"):
        reg.set_active("v0002-bad")
    assert reg.active_version() == "v0001-good" and reg.check_version("v0001-good") == []
    listed = {v.name: v for v in reg.versions()}
    assert listed["v0002-bad"].broken and not listed["v0001-good"].broken


def test_nan_ood_threshold_refuses_the_version(tmp_path):
    reg = _two_versions(tmp_path)
    d = reg.models_dir / "v0002-bad"
    np.savez_compressed(d / "ood.npz", mean=np.zeros(4), precision=np.eye(4))
    (d / "ood.json").write_text('{"threshold": 3.0, "percentile": 99.0, "dim": 4}')
    assert reg.check_version("v0002-bad") == []
    (d / "ood.json").write_text('{"threshold": NaN, "percentile": 99.0, "dim": 4}')
    (problem,) = reg.check_version("v0002-bad")
    assert "'ood.json' is not valid JSON" in problem
    (d / "ood.json").write_text('{"threshold": -3.0, "percentile": 99.0, "dim": 4}')
    (problem,) = reg.check_version("v0002-bad")
    assert problem.startswith("ood.json: threshold must be a finite number >= 0. Received: threshold=-3.0")
    with pytest.raises(BrokenVersionError, match="ood.json"):
        reg.load("v0002-bad")


@pytest.mark.parametrize("card", ['["a", "list"]', '"text"', '{"test": [1]}', '{"input_size": "64"}',
                                  '{"created": 5}', '{"threshold": 2.0}', '{"test": {"roc_auc": "high"}}'])
def test_card_of_the_wrong_type_lists_the_version_as_broken_and_nothing_raises(tmp_path, card):
    """A list as card.json raised on every page, the admin's included. Now the version is listed
    as broken with an empty card, and every other version works as before."""
    reg = _two_versions(tmp_path, **{"card.json": card})
    listed = {v.name: v for v in reg.versions()}  # sorting by card["created"] used to raise
    bad = listed["v0002-bad"]
    assert bad.broken and bad.card == {} and bad.created == "" and "card.json" in bad.problems[0]
    assert listed["v0001-good"].card == {"created": "2026-01-01T00:00:00"} and not listed["v0001-good"].broken
    with pytest.raises(RegistryError, match="card.json"):
        reg.read_json("v0002-bad", "card.json")


@pytest.mark.parametrize("name,text", [
    ("metrics.json", '{"test": {"roc_auc": "x"}}'), ("metrics.json", '{"test": {"confusion_matrix": [[1, 2]]}}'),
    ("metrics.json", '{"test": {"predictions": [{"path": 3, "prob": 0.5}]}}'), ("history.json", "[1, 2]"),
    ("history.json", '{"head": {"loss": "low"}}'), ("provenance.json", '{"data_root": ["/x"]}'),
    ("config.json", '{"input_size": "huge"}'), ("config.json", '{"class_names": "AB"}'),
])
def test_tampered_reports_and_config_are_refused_naming_the_file(tmp_path, name, text):
    reg = _two_versions(tmp_path, **{name: text})
    problems = reg.check_version("v0002-bad")
    assert problems and problems[0].startswith(name) and "Received:" in problems[0]


def test_real_version_passes_every_check_and_reports_may_carry_nan(registry_copy):
    """The files training writes pass the validators (metrics, history, provenance, card, OOD
    pair), and a report metric json.dumps wrote as NaN (undefined on a split) is accepted."""
    reg = registry_copy
    assert reg.check_version("v0001-tiny") == []
    p = reg.models_dir / "v0001-tiny" / "history.json"
    hist = json.loads(p.read_text())
    hist["head"]["loss"][0] = float("nan")
    p.write_text(json.dumps(hist))  # NaN literal
    assert reg.check_version("v0001-tiny") == []
    assert np.isnan(reg.read_json(None, "history.json")["head"]["loss"][0])


@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_old_pointer_files_as_fifo_or_link_to_dev_zero_are_not_followed(tmp_path, kind):
    """An ACTIVE (of a release before the database) or PENDING_ACTIVATION that is a named pipe or a
    link to /dev/zero: nothing hangs, nothing is imported, the link is never written through."""
    from helpers import run_with_timeout

    if kind == "dev_zero" and not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    reg = _two_versions(tmp_path)
    reg.db.delete(POINTER_KIND, POINTER_KEY)
    for pointer in (reg.active_file, reg.pending_file):
        pointer.unlink(missing_ok=True)
        os.mkfifo(pointer) if kind == "fifo" else pointer.symlink_to("/dev/zero")
    registry_mod._IMPORTED.clear()  # as a new process would: the old ACTIVE is looked at once
    assert run_with_timeout(reg.active_version, 10, "active_version()") is None  # not imported
    assert run_with_timeout(reg.pending_activation, 10, "pending_activation()") is None
    assert [v.name for v in run_with_timeout(reg.versions, 10, "versions()")] == ["v0001-good", "v0002-bad"]
    with pytest.raises(RegistryError, match="No active model"):
        reg.load()
    assert reg.complete_pending_activation() is None and not os.path.lexists(reg.pending_file)
    reg.set_active("v0002-bad")
    assert reg.active_version() == "v0002-bad" and os.path.lexists(reg.active_file)  # left alone


def test_symlinked_staging_is_never_emptied_by_clean_staging_publish_or_delete(tmp_path):
    """A symlinked artifacts/.staging made clean-staging (and every training start) empty the folder
    it pointed to. Now only the link itself is removed; the canary outside survives."""
    outside = tmp_path / "outside"
    (outside / "keep-dir").mkdir(parents=True)
    (outside / "canary.txt").write_text("precious")
    (outside / "keep-dir" / "inner.txt").write_text("precious too")
    reg = _two_versions(tmp_path)
    shutil.rmtree(reg.staging_dir)
    reg.staging_dir.symlink_to(outside, target_is_directory=True)
    assert reg.clean_staging() == 1  # the link
    assert not os.path.lexists(reg.staging_dir)
    assert (outside / "canary.txt").read_text() == "precious" and (outside / "keep-dir" / "inner.txt").is_file()
    for act in (lambda: reg.publish(_fake_writer(), "v0003-new"), lambda: reg.delete("v0002-bad")):
        if reg.staging_dir.is_dir():  # the real folder the previous step made: swap a link in again
            shutil.rmtree(reg.staging_dir)
        reg.staging_dir.symlink_to(outside, target_is_directory=True)
        act()
        assert reg.staging_dir.is_dir() and not reg.staging_dir.is_symlink()
        assert sorted(p.name for p in outside.iterdir()) == ["canary.txt", "keep-dir"]
    assert {v.name for v in reg.versions()} == {"v0001-good", "v0003-new"}


def test_symlinked_version_folder_is_refused_and_deleting_it_removes_only_the_link(tmp_path, registry_copy):
    reg = registry_copy
    outside = tmp_path / "outside-version"
    shutil.copytree(reg.models_dir / "v0001-tiny", outside)
    (reg.models_dir / "v0002-linked").symlink_to(outside, target_is_directory=True)
    listed = {v.name: v for v in reg.versions()}
    assert listed["v0002-linked"].broken and "symbolic link" in listed["v0002-linked"].problems[0]
    with pytest.raises(BrokenVersionError, match="'v0002-linked' could not be loaded.*symbolic link"):
        reg.load("v0002-linked")
    with pytest.raises(BrokenVersionError, match="cannot be activated"):
        reg.set_active("v0002-linked")
    reg.delete("v0002-linked")
    assert not os.path.lexists(reg.models_dir / "v0002-linked")
    assert (outside / "model.keras").is_file() and (outside / "card.json").is_file()  # nothing outside touched


def test_symlinked_file_inside_a_version_is_refused(tmp_path):
    reg = _two_versions(tmp_path)
    elsewhere = tmp_path / "op.json"
    elsewhere.write_text(OP)
    target = reg.models_dir / "v0002-bad" / "operating_point.json"
    target.unlink()
    target.symlink_to(elsewhere)
    (problem,) = reg.check_version("v0002-bad")
    assert problem == "'operating_point.json' is a symbolic link; files of a version are never read through a link."


def test_models_folder_linked_outside_the_artifacts_is_not_read_or_deleted(tmp_path):
    reg = _two_versions(tmp_path)
    outside = tmp_path / "outside-models"
    reg.models_dir.rename(outside)
    reg.models_dir.symlink_to(outside, target_is_directory=True)
    assert all(v.broken and "outside the artifacts folder" in v.problems[0] for v in reg.versions())
    with pytest.raises(RegistryError, match="outside"):
        reg.delete("v0002-bad")
    assert (outside / "v0002-bad" / "model.keras").is_file()
    reg.models_dir.unlink()
    reg.models_dir.symlink_to(os.devnull)  # not a folder at all: nothing listed, nothing raised
    assert reg.versions() == [] and reg.active_version() is None


def test_broken_pending_activation_is_dropped_not_activated(tmp_path):
    reg = _two_versions(tmp_path, **{"operating_point.json": OP.replace("0.7,", "-1,")})
    reg._write_pending("v0002-bad")
    assert reg.complete_pending_activation() is None
    assert reg.active_version() == "v0001-good" and not reg.pending_file.exists()


# --- the one tolerant reader of a version's files (issue 23) -------------------------------------
def _tamper_file(p, kind: str, tmp_path) -> None:
    """Put ``kind`` of damage in place of the file ``p``."""
    if p.exists():
        p.unlink()
    if kind == "torn":  # a write cut short
        p.write_text('{"head": {"loss": [0.5, 0.4')
    elif kind == "oversized":
        p.write_bytes(b"{" + b" " * (4 * 2**20) + b"}")
    elif kind == "symlink":
        (tmp_path / "elsewhere.json").write_text("{}")
        p.symlink_to(tmp_path / "elsewhere.json")
    elif kind == "fifo":
        os.mkfifo(p)
    elif kind == "list":
        p.write_text('[{"head": {}}]')
    elif kind == "nan":  # a NaN where a verdict depends on it (operating point) is refused
        p.write_text('{"temperature": NaN}')


@pytest.mark.parametrize("kind,filename,says", [
    ("torn", "history.json", "not valid JSON"), ("oversized", "card.json", "more than the 4194304 bytes"),
    ("symlink", "metrics.json", "symbolic link"), ("fifo", "provenance.json", "named pipe"),
    ("list", "history.json", "JSON object"), ("list", "notes.json", "JSON object"),
    ("nan", "operating_point.json", "not valid JSON"),
])
def test_tolerant_reader_gives_empty_data_and_one_sentence_never_raises(tmp_path, kind, filename, says):
    from helpers import run_with_timeout

    from core.registry import version_json

    reg = _two_versions(tmp_path)
    d = reg.models_dir / "v0002-bad"
    _tamper_file(d / filename, kind, tmp_path)
    data, problem = run_with_timeout(lambda: version_json(d, filename), 10, f"reading a {kind} {filename}")
    assert data == {} and says in problem and filename in problem
    data, problem = reg.version_json("v0002-bad", filename)
    assert data == {} and problem.startswith("Model version 'v0002-bad': ") and says in problem
    with pytest.raises(RegistryError, match=says):  # the strict reader refuses the same file
        reg.read_json("v0002-bad", filename)


def test_tolerant_reader_on_absent_files_folders_and_versions(tmp_path):
    from core.registry import version_json

    reg = _two_versions(tmp_path, **{"card.json": '{"created": "2026-01-02T00:00:00", "input_size": 64}'})
    assert reg.version_json("v0002-bad", "card.json") == ({"created": "2026-01-02T00:00:00", "input_size": 64}, None)
    assert reg.version_json("v0002-bad", "history.json") == ({}, None)  # absent: no problem, nothing to show
    assert reg.version_json(None, "card.json") == ({"created": "2026-01-01T00:00:00"}, None)  # the active one
    data, problem = reg.version_json("v0009-gone", "card.json")
    assert data == {} and "does not exist" in problem
    data, problem = reg.version_json("../escape", "card.json")
    assert data == {} and "Received: version='../escape'" in problem
    linked = tmp_path / "artifacts" / "models" / "v0003-linked"
    linked.symlink_to(reg.models_dir / "v0002-bad", target_is_directory=True)
    data, problem = version_json(linked, "card.json")  # a version is never read through a link
    assert data == {} and "symbolic link" in problem
    reg.db.delete(POINTER_KIND, POINTER_KEY)
    data, problem = reg.version_json(None, "card.json")
    assert data == {} and "No active model" in problem


# --- the pointer and its history in the shared database (issue 25) -----------------------------------
def test_set_active_is_a_compare_and_swap_with_its_history_row(tmp_path):
    reg = _two_versions(tmp_path)
    before = reg.pointer()
    assert before.version == "v0001-good" and before.revision == 1 and before.source == "api"
    assert reg.set_active("v0002-bad", source="test", expect=before.revision) == "v0001-good"
    with pytest.raises(RegistryError, match="changed by someone else.*now v0002-bad.*Reload"):
        reg.set_active("v0001-good", expect=before.revision)  # decided on a pointer that moved on
    assert reg.active_version() == "v0002-bad"
    assert reg.set_active("v0002-bad") == "v0002-bad"  # already active: no new revision, no row
    assert reg.pointer().revision == 2
    hist = reg.activation_history()
    assert [(h["action"], h["version"], h["previous"], h["source"]) for h in hist] == [
        ("promote", "v0001-good", None, "api"), ("promote", "v0002-bad", "v0001-good", "test")]


def test_a_failed_history_append_leaves_the_pointer_unchanged(tmp_path, monkeypatch):
    """One transaction: the history row cannot be written without the pointer, nor the other way."""
    from core import db as dbm

    reg = _two_versions(tmp_path)

    def refuse(self, stream, record, *, conn=None):
        raise dbm.DatabaseError("disk full")

    monkeypatch.setattr(dbm.Database, "append", refuse)
    with pytest.raises(dbm.DatabaseError):
        reg.set_active("v0002-bad")
    monkeypatch.undo()
    assert reg.active_version() == "v0001-good" and reg.pointer().revision == 1
    assert [h["version"] for h in reg.activation_history()] == ["v0001-good"]


def test_old_active_file_and_history_are_imported_once(tmp_path):
    """ACTIVE and admin/active_history.json (or jobs/, before issue 23) of an older release: imported
    at the first use of the database, once; the pointer only when the database has none; the files
    stay where they are and are not read again."""
    root = tmp_path / "artifacts"
    for name in ("v0001-a", "v0002-b"):
        (root / "models" / name).mkdir(parents=True)
        _fake_writer()(root / "models" / name)
    hist = [{"time": "t1", "action": "promote", "version": "v0001-a", "previous": None, "source": "cli"},
            {"time": "t2", "action": "promote", "version": "v0002-b", "previous": "v0001-a", "source": "app"}]
    (root / "jobs").mkdir()
    (root / "jobs" / "active_history.json").write_text(json.dumps(hist[:1]))
    (root / "admin").mkdir()
    (root / "admin" / "active_history.json").write_text(json.dumps(hist[1:] + ["not an entry"]))
    (root / "ACTIVE").write_text("v0002-b\n")
    reg = Registry(root)
    assert reg.active_version() == "v0002-b" and reg.pointer().source == "import"
    assert reg.activation_history() == hist  # the pre-issue-23 place first, then the newer one
    reg.set_active("v0001-a")
    (root / "ACTIVE").write_text("v0002-b\n")  # touched later: not read again
    registry_mod._IMPORTED.clear()  # a new process: the database remembers what it imported
    again = Registry(root)
    assert again.active_version() == "v0001-a" and len(again.activation_history()) == 3
    assert json.loads((root / "jobs" / "active_history.json").read_text()) == hist[:1]  # left untouched


def test_old_active_file_never_replaces_a_pointer_the_database_has(tmp_path):
    reg = _two_versions(tmp_path)  # the database already has a pointer
    reg.active_file.write_text("v0002-bad\n")
    registry_mod._IMPORTED.clear()
    assert Registry(reg.root).active_version() == "v0001-good"


_ACTIVE_READER = """
import sys, time
from core.registry import Registry
reg = Registry(sys.argv[1])
print(reg.active_version(), flush=True)
sys.stdin.readline()  # the other instance has promoted
print(reg.active_version(), flush=True)
"""


def test_a_promote_on_one_instance_is_what_another_serves_at_once(tmp_path, shared_db):
    """Two app instances: a promote on one is what the other's next active_version() returns (the
    UI reads it on every rerun, uncached, and keys its cached model by version)."""
    from core import admin

    reg = _two_versions(tmp_path)
    other = python(_ACTIVE_READER, str(reg.root))
    assert other.stdout.readline().strip() == "v0001-good"
    admin.promote(reg, "v0002-bad", source="instance-1")
    out, err = other.communicate("go\n", timeout=60)
    assert out.strip() == "v0002-bad", err[-800:]


_PROMOTER = """
import sys
from core import admin
from core.registry import Registry, RegistryError
reg = Registry(sys.argv[1])
target, how = sys.argv[2], sys.argv[3]
rev = reg.pointer().revision  # what this administrator reviewed
print("ready", flush=True)
sys.stdin.readline()
try:
    if how == "admin":
        admin.promote(reg, target, source=target, expect_active="v0001-a")
    else:
        reg.set_active(target, source=target, expect=rev)
    print("won", flush=True)
except RegistryError as e:
    print("lost:", e, flush=True)
"""


@pytest.mark.parametrize("how", ["admin", "cas"])
def test_two_instances_promoting_at_once_exactly_one_wins(tmp_path, shared_db, how):
    """Two processes promote different versions at the same moment, each decided on the same active
    version: exactly one wins, the other is told it changed and nothing of it is written; the
    history has one consistent row per change."""
    reg = Registry(tmp_path / "artifacts")
    for name in ("v0001-a", "v0002-b", "v0003-c"):
        reg.publish(_fake_writer(), name)
    reg.set_active("v0001-a")
    procs = [python(_PROMOTER, str(reg.root), name, how) for name in ("v0002-b", "v0003-c")]
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()[-800:]
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(o.split(":")[0] for o in outs) == ["lost", "won"], outs
    loser = next(o for o in outs if o.startswith("lost"))
    assert "someone else" in loser and "Reload" in loser
    winner = ("v0002-b", "v0003-c")[[o.startswith("won") for o in outs].index(True)]
    assert reg.active_version() == winner
    hist = reg.activation_history()
    assert [(h["version"], h["previous"]) for h in hist] == [("v0001-a", None), (winner, "v0001-a")]
    assert hist[-1]["source"] == winner

"""core.admin is the one path for promote / rollback / delete and the activation history, for the
app, the CLI and Python callers; CLI predictions and trainings are audited like the app's (issue 16,
"audit and activation go around each other")."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import admin, audit, cli
from core.registry import RegistryError

PAGE = str(Path(__file__).resolve().parent.parent / "app_pages" / "admin.py")
PASSWORD = "correct horse battery staple"


def _second_version(reg, name="v0002-b"):
    shutil.copytree(reg.models_dir / "v0001-tiny", reg.models_dir / name)
    return name


def _log(reg) -> Path:
    """Whose audit trail the CLI writes for ``--artifacts reg.root``: that root's database."""
    return reg.root


@pytest.fixture(autouse=True)
def _own_audit_log(monkeypatch):
    # Each registry keeps its own trail (its own SQLite database): nothing goes to a shared one.
    from core import db as dbm

    monkeypatch.delenv(dbm.DATABASE_URL_ENV, raising=False)
    yield
    dbm.dispose_all()


def _cli(capsys, *args):
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


# --- the core path --------------------------------------------------------------------------------
@pytest.mark.slow
def test_promote_rollback_delete_with_history_and_audit(registry_copy, tmp_path):
    reg = registry_copy
    log = reg.root
    _second_version(reg)
    assert admin.rollback_target(reg) is None  # nothing recorded yet
    with pytest.raises(RegistryError, match="Nothing to roll back"):
        admin.rollback(reg)
    assert admin.promote(reg, "v0002-b", source="tester") == "v0001-tiny"
    assert reg.active_version() == "v0002-b"
    assert admin.rollback_target(reg) == "v0001-tiny"
    with pytest.raises(RegistryError, match="already the active"):
        admin.promote(reg, "v0002-b")
    with pytest.raises(RegistryError):
        admin.promote(reg, "v9999-missing")
    assert admin.rollback(reg) == "v0001-tiny"
    assert reg.active_version() == "v0001-tiny"
    hist = admin.read_active_history(reg)  # after the fixture's publish --activate
    assert [(h["action"], h["version"], h["previous"], h["source"]) for h in hist] == [
        ("promote", "v0001-tiny", None, "api"), ("promote", "v0002-b", "v0001-tiny", "tester"),
        ("rollback", "v0001-tiny", "v0002-b", "api")]
    with pytest.raises(RegistryError, match="active"):
        admin.delete_version(reg, "v0001-tiny")
    admin.delete_version(reg, "v0002-b")
    assert not reg.is_complete("v0002-b")
    assert admin.rollback_target(reg) is None  # the previous version is gone
    recs = audit.read(log)
    assert [(r["action"], r["outcome"]) for r in recs] == [
        ("rollback", "failed"), ("promote", "ok"), ("promote", "failed"), ("promote", "failed"),
        ("rollback", "ok"), ("delete", "failed"), ("delete", "ok")]
    assert recs[1]["source"] == "tester" and recs[4]["source"] == "api"


def test_default_audit_log_follows_the_registry(registry_copy, monkeypatch, tmp_path):
    reg = registry_copy
    _second_version(reg)
    admin.promote(reg, "v0002-b")
    assert [r["model_version"] for r in audit.read(_log(reg), ["promote"])] == ["v0002-b"]
    admin.rollback(reg)
    assert [r["action"] for r in audit.read(reg.root)] == ["promote", "rollback"]


# --- CLI models activate / delete -------------------------------------------------------------------
@pytest.mark.slow  # an AppTest flow of 2+ s: CI's slow set keeps the default run under 3 min
def test_cli_activate_is_recorded_and_the_app_rolls_it_back(capsys, registry_copy, monkeypatch):
    reg = registry_copy
    _second_version(reg)
    assert _cli(capsys, "--artifacts", str(reg.root), "models", "activate", "v0002-b")[0] == 0
    assert reg.active_version() == "v0002-b"
    line = audit.read(_log(reg), ["promote"])[-1]
    assert (line["outcome"], line["model_version"], line["previous"], line["source"]) == ("ok", "v0002-b", "v0001-tiny", "cli")
    assert admin.rollback_target(reg) == "v0001-tiny"

    # The admin page (same registry and log) offers and performs the rollback of the CLI activation.
    monkeypatch.setenv("PNEUMOSCOPE_ARTIFACTS", str(reg.root))
    monkeypatch.setenv("PNEUMOSCOPE_ADMIN_PASSWORD", PASSWORD)
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.secrets = {"unrelated": "x"}
    at = at.run()
    at.text_input(key="admin_password_input").input(PASSWORD)
    at = next(b for b in at.button if b.label == "Sign in").click().run()
    assert any("to **`v0001-tiny`**" in c.value for c in at.caption if "Steps back one activation" in c.value)
    at = next(b for b in at.button if b.label == "Roll back…").click().run()
    at = next(b for b in at.button if b.label == "Yes, roll back").click().run()  # asked first (issue 22)
    assert not at.exception
    assert reg.active_version() == "v0001-tiny"
    line = audit.read(_log(reg), ["rollback"])[-1]
    assert (line["outcome"], line["model_version"], line["previous"], line["source"]) == ("ok", "v0001-tiny", "v0002-b", "app")
    assert [h["source"] for h in admin.read_active_history(reg)] == ["api", "cli", "app"]  # publish, CLI, page


def test_cli_activate_same_version_is_a_no_op(capsys, registry_copy):
    reg = registry_copy
    code, out, _ = _cli(capsys, "--artifacts", str(reg.root), "models", "activate", "v0001-tiny")
    assert code == 0 and "already the active" in out
    assert audit.read(_log(reg)) == [] and len(admin.read_active_history(reg)) == 1  # the fixture's publish only


def test_cli_delete_is_audited(capsys, registry_copy):
    reg = registry_copy
    _second_version(reg)
    code, _, err = _cli(capsys, "--artifacts", str(reg.root), "models", "delete", "v0001-tiny")
    assert code == 5 and "Refusing to delete the active version" in err
    assert _cli(capsys, "--artifacts", str(reg.root), "models", "delete", "v0002-b")[0] == 0
    assert not reg.is_complete("v0002-b")
    recs = audit.read(_log(reg), ["delete"])
    assert [(r["outcome"], r["model_version"], r["source"]) for r in recs] == [
        ("failed", "v0001-tiny", "cli"), ("ok", "v0002-b", "cli")]
    assert "Refusing" in recs[0]["error"]


def test_completed_interrupted_activation_is_recorded(capsys, registry_copy):
    reg = registry_copy
    _second_version(reg)
    (reg.root / "PENDING_ACTIVATION").write_text("v0002-b\n")
    assert _cli(capsys, "--artifacts", str(reg.root), "models", "clean-staging")[0] == 0
    assert reg.active_version() == "v0002-b"
    assert admin.rollback_target(reg) == "v0001-tiny"
    assert audit.read(_log(reg), ["promote"])[-1]["source"] == "cli"


# --- roll back steps back through the activation history (issue 22) ------------------------------
def _h(action, version, previous):
    return {"action": action, "version": version, "previous": previous}


def test_activation_stack_replays_the_history():
    stack = admin.activation_stack
    assert stack([]) == []
    assert stack([_h("promote", "b", "a"), _h("promote", "c", "b")]) == ["a", "b", "c"]
    # A roll back takes the version it left off: the next one goes further back, never to it.
    assert stack([_h("promote", "b", "a"), _h("promote", "c", "b"), _h("rollback", "b", "c")]) == ["a", "b"]
    assert stack([_h("promote", "b", "a"), _h("promote", "c", "b"), _h("rollback", "b", "c"),
                  _h("rollback", "a", "b")]) == ["a"]
    # Each version once, at its latest activation.
    assert stack([_h("promote", "b", "a"), _h("promote", "a", "b"), _h("promote", "b", "a")]) == ["a", "b"]
    # A "previous" that is not on top (ACTIVE written by hand, a history cut at HISTORY_KEEP) goes under.
    assert stack([_h("promote", "b", "a"), _h("promote", "d", "x")]) == ["a", "b", "x", "d"]
    assert stack([_h("promote", "b", None), {"action": "promote", "version": 3}]) == ["b"]


def test_second_rollback_steps_further_back_never_to_the_version_left(registry_copy, tmp_path):
    """Issue 22: a second Roll back re-activated the version just rolled back from."""
    reg = registry_copy
    log = reg.root
    _second_version(reg, "v0002-b")
    _second_version(reg, "v0003-c")
    admin.promote(reg, "v0002-b")
    admin.promote(reg, "v0003-c")
    assert admin.rollback_chain(reg) == ["v0002-b", "v0001-tiny"]
    assert admin.rollback(reg) == "v0002-b"
    assert admin.rollback_chain(reg) == ["v0001-tiny"]  # not v0003-c (just left)
    assert admin.rollback(reg) == "v0001-tiny"
    assert admin.rollback_target(reg) is None
    with pytest.raises(RegistryError, match="Nothing to roll back"):
        admin.rollback(reg)
    # Promoting again starts a new step; deleted versions are stepped over.
    admin.promote(reg, "v0002-b")
    admin.promote(reg, "v0003-c")
    admin.delete_version(reg, "v0002-b")
    assert admin.rollback_chain(reg) == ["v0001-tiny"]
    assert admin.rollback(reg) == "v0001-tiny"
    assert [r["model_version"] for r in audit.read(log, ["rollback"]) if r["outcome"] == "ok"] == [
        "v0002-b", "v0001-tiny", "v0001-tiny"]


def test_confirmed_activation_refuses_when_the_registry_changed(registry_copy, tmp_path):
    reg = registry_copy
    log = reg.root
    _second_version(reg)
    with pytest.raises(RegistryError, match="active version changed meanwhile"):
        admin.promote(reg, "v0002-b", expect_active="v0009-other")
    assert reg.active_version() == "v0001-tiny"
    admin.promote(reg, "v0002-b", expect_active="v0001-tiny")
    with pytest.raises(RegistryError, match="roll-back target changed meanwhile"):
        admin.rollback(reg, expect_active="v0002-b", expect_target="v0009-other")
    assert reg.active_version() == "v0002-b"
    assert admin.rollback(reg, expect_active="v0002-b", expect_target="v0001-tiny") == "v0001-tiny"
    assert [r["outcome"] for r in audit.read(log)] == ["failed", "ok", "failed", "ok"]


def test_cli_models_rollback_and_history_step_back_like_the_page(capsys, registry_copy):
    reg = registry_copy
    _second_version(reg, "v0002-b")
    _second_version(reg, "v0003-c")
    root = str(reg.root)
    for name in ("v0002-b", "v0003-c"):
        assert _cli(capsys, "--artifacts", root, "models", "activate", name)[0] == 0
    code, out, _ = _cli(capsys, "--artifacts", root, "models", "history")
    assert code == 0 and "rollback goes to: v0002-b -> v0001-tiny" in out
    assert len([ln for ln in out.splitlines() if " promote " in ln]) == 3  # the fixture's publish + 2
    code, out, _ = _cli(capsys, "--artifacts", root, "models", "rollback")
    assert code == 0 and "rolled back: v0002-b is active (was v0003-c)" in out
    code, out, _ = _cli(capsys, "--artifacts", root, "models", "rollback")
    assert code == 0 and "rolled back: v0001-tiny is active (was v0002-b)" in out
    code, _, err = _cli(capsys, "--artifacts", root, "models", "rollback")
    assert code == 5 and "Nothing to roll back to" in err and reg.active_version() == "v0001-tiny"
    assert _cli(capsys, "--artifacts", root, "models", "rollback", "v0003-c")[0] == 2
    recs = audit.read(_log(reg), ["rollback"])
    assert [(r["outcome"], r.get("model_version"), r["source"]) for r in recs] == [
        ("ok", "v0002-b", "cli"), ("ok", "v0001-tiny", "cli"), ("failed", "v0001-tiny", "cli")]


# --- what an activation changes (issue 22) -------------------------------------------------------------
def _candidate(reg, name, *, keep=None, auc=None, limit=None, drop_test=False):
    import json

    d = reg.models_dir / name
    shutil.copytree(reg.models_dir / "v0001-tiny", d)
    m = json.loads((d / "metrics.json").read_text())
    if drop_test:
        m.pop("test")
    else:
        if keep is not None:
            m["test"]["predictions"] = m["test"]["predictions"][:keep]
            m["test"]["n"] = keep
        if auc is not None:
            m["test"]["roc_auc"] = auc
    (d / "metrics.json").write_text(json.dumps(m))
    if limit is not None:
        prov = json.loads((d / "provenance.json").read_text())
        prov["limit_per_class"] = limit
        (d / "provenance.json").write_text(json.dumps(prov))
    return name


def test_activation_review_side_by_side_and_warnings(registry_copy):
    reg = registry_copy
    n = reg.read_json("v0001-tiny", "metrics.json")["test"]["n"]
    same = admin.activation_review(reg, _candidate(reg, "v0002-same"))
    assert same["active"] == "v0001-tiny" and same["warnings"] == [] and same["comparable"]
    rows = {r["metric"]: r for r in same["rows"]}
    assert [r["metric"] for r in same["rows"]][:3] == ["Created", "Training data", "Images (test)"]
    assert rows["Images (test)"]["v0002-same"] == rows["Images (test)"]["v0001-tiny"] == str(n)
    assert rows["ROC-AUC (test)"]["difference"] == "+0.000"

    smoke = admin.activation_review(reg, _candidate(reg, "v0003-smoke", keep=4, auc=0.2, limit=40))
    text = "\n".join(smoke["warnings"])
    assert not smoke["comparable"] and smoke["test_set"]["relation"] == "subset"
    assert f"v0003-smoke was evaluated on 4 test images, only a part of the {n}" in text
    assert "v0003-smoke is worse than the active v0001-tiny (each on its own test set" in text and "ROC-AUC 0.200" in text
    assert "at most 40 images per class" in text
    assert {r["metric"]: r for r in smoke["rows"]}["ROC-AUC (test)"]["difference"] == "not comparable"

    worse = admin.activation_review(reg, _candidate(reg, "v0004-worse", auc=0.1))
    assert worse["comparable"] and len(worse["warnings"]) == 1
    assert "worse than the active v0001-tiny (on the same images): ROC-AUC 0.100" in worse["warnings"][0]

    no_test = admin.activation_review(reg, _candidate(reg, "v0005-val", drop_test=True))
    assert any("has no test-split report (only validation)" in w for w in no_test["warnings"])
    assert any("not comparable" in w for w in no_test["warnings"])  # validation vs test images

    reg.db.put("pointer", "active", {"version": None})  # nothing active: nothing to compare, the candidate's own warnings stay
    first = admin.activation_review(reg, "v0003-smoke")
    assert first["active"] is None and first["rows"] == [] and any("at most 40" in w for w in first["warnings"])


# --- CLI predict ----------------------------------------------------------------------------------------
def test_cli_predict_writes_one_audit_line_per_image(capsys, registry_copy, sample_root, tmp_path):
    reg = registry_copy
    files = [sample_root / "test" / "NORMAL" / "IM-0041-0001.jpeg", sample_root / "test" / "PNEUMONIA" / "person36_virus_81.jpeg"]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    files.append(bad)
    code, _, _ = _cli(capsys, "--artifacts", str(reg.root), "predict", *map(str, files), "--csv", str(tmp_path / "o.csv"))
    assert code == 4  # one file rejected
    recs = audit.read(_log(reg))
    assert [r["action"] for r in recs] == ["predict"] * 3
    threshold = reg.load().operating_point.threshold
    for f, r in zip(files, recs):
        assert r["image_sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
        assert r["source"] == "cli" and r["model_version"] == "v0001-tiny"
        assert r["threshold"] == pytest.approx(threshold)
        assert set(r) <= audit.ALLOWED_FIELDS | {"time", "action"}
    assert [r["outcome"] in ("NORMAL", "PNEUMONIA", "INDETERMINATE") for r in recs] == [True, True, False]
    assert recs[2]["guard"] == recs[2]["outcome"]  # the unreadable file: its error code, no verdict
    text = json.dumps(audit.read(_log(reg)))
    assert len(text) < 3 * 600  # hashes and facts only, never pixels or file names
    assert "IM-0041" not in text and "broken" not in text

    _cli(capsys, "--artifacts", str(reg.root), "predict", str(files[0]), "--invert", "--csv", str(tmp_path / "o2.csv"))
    assert audit.read(_log(reg))[-1]["source"] == "cli+invert"


def test_prediction_audit_is_one_function_for_app_and_cli(tmp_path):
    from core.predict import Prediction

    log = tmp_path  # an artifacts root: its own database
    ok = Prediction(filename="PatientName.png", ok=True, label="PNEUMONIA", threshold=0.4, model_version="v7",
                    sha256="ab" * 32, guard_code=None)
    err = Prediction(filename="x.png", ok=False, error_code="not_an_image", sha256="cd" * 32, guard_code="not_an_image")
    audit.prediction(ok, "upload", artifacts=log)
    audit.prediction(err, "cli", model_version="v7", threshold=0.4, artifacts=log)
    a, b = audit.read(log)
    assert {k: a[k] for k in ("model_version", "threshold", "outcome", "image_sha256", "source")} == {
        "model_version": "v7", "threshold": 0.4, "outcome": "PNEUMONIA", "image_sha256": "ab" * 32, "source": "upload"}
    assert (b["outcome"], b["guard"], b["threshold"], b["model_version"]) == ("not_an_image", "not_an_image", 0.4, "v7")
    assert "PatientName" not in json.dumps(audit.read(log))


# --- CLI train ----------------------------------------------------------------------------------------------
def _fake_train(trained_registry):
    from core import training
    from core.ood import OODStats

    src = trained_registry.load()

    def fake_train(config, data_root, **kwargs):
        return training.TrainResult(
            model=src.model, config=config.replace(head_units=src.config.head_units, backbone=src.config.backbone),
            operating_point=src.operating_point,
            history=trained_registry.read_json(None, "history.json"), metrics=src.metrics(),
            provenance=trained_registry.read_json(None, "provenance.json"), ood=OODStats.load(src.path),
        )

    return fake_train


def test_cli_train_is_audited_and_its_activation_can_be_rolled_back(capsys, registry_copy, trained_registry, sample_root,
                                                                      monkeypatch):
    from core import training

    reg = registry_copy
    monkeypatch.setattr(training, "train", _fake_train(trained_registry))
    code, _, err = _cli(capsys, "--artifacts", str(reg.root), "train", "--data-root", str(sample_root), "--weights", "none",
                        "--input-size", "32", "--version", "v0002-cli", "--activate")
    assert code == 0, err
    recs = audit.read(_log(reg))
    assert [(r["action"], r["outcome"], r["source"]) for r in recs] == [
        ("retrain", "started", "cli"), ("retrain", "succeeded", "cli"), ("promote", "ok", "cli")]
    assert recs[0]["input_size"] == 32 and recs[0]["data_root"] == str(sample_root)
    assert recs[1]["version"] == "v0002-cli" and recs[2]["previous"] == "v0001-tiny"
    assert admin.rollback(reg, source="app") == "v0001-tiny"


def test_cli_train_failure_is_audited(capsys, tmp_path):
    art = tmp_path / "art"
    code, _, err = _cli(capsys, "--artifacts", str(art), "train", "--data-root", str(tmp_path / "missing"),
                        "--weights", "none", "--input-size", "32")
    assert code == 3, err
    recs = audit.read(art)
    assert [(r["action"], r["outcome"], r["source"]) for r in recs] == [("retrain", "started", "cli"), ("retrain", "failed", "cli")]
    assert "Data folder not found" in recs[1]["error"]


# --- the activation history and broken versions (issue 21) -----------------------------------------
def _tamper_operating_point(reg, name):
    p = reg.models_dir / name / "operating_point.json"
    p.write_text(p.read_text().replace('"temperature": ', '"temperature": -', 1))


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "entries"])
def test_old_history_file_as_fifo_or_link_to_dev_zero_is_not_imported_without_hanging(registry_copy, kind):
    """admin/active_history.json of a release before the database: imported once; a FIFO or a link to
    /dev/zero imports nothing (and does not hang), entries that are not objects are dropped."""
    import os

    from helpers import run_with_timeout

    from core import registry as registry_mod

    if kind == "dev_zero" and not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    reg = registry_copy
    p = reg.layout.active_history
    p.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "dev_zero":
        p.symlink_to("/dev/zero")
    else:
        p.write_text('[1, "x", null, {"version": "v0001-tiny", "previous": ["not", "a", "name"]}]')
    registry_mod._IMPORTED.clear()  # as a new process would
    hist = run_with_timeout(lambda: admin.read_active_history(reg), 10, f"importing a {kind} history")
    assert hist[1:] == ([{"version": "v0001-tiny", "previous": ["not", "a", "name"]}] if kind == "entries" else [])
    assert run_with_timeout(lambda: admin.rollback_target(reg), 10, "rollback_target") is None  # not a name
    name = _second_version(reg)
    admin.promote(reg, name, source="test")
    assert admin.rollback_target(reg) == "v0001-tiny" and os.path.lexists(p)  # the old file is left alone


def test_broken_versions_are_neither_promoted_nor_rolled_back_to_and_can_be_deleted(registry_copy):
    reg = registry_copy
    name = _second_version(reg)
    admin.promote(reg, name, source="test")
    assert admin.rollback_target(reg) == "v0001-tiny"
    _tamper_operating_point(reg, "v0001-tiny")
    assert admin.rollback_target(reg) is None  # the previous version is broken: nothing to go back to
    with pytest.raises(RegistryError, match="Nothing to roll back to"):
        admin.rollback(reg, source="test")
    with pytest.raises(RegistryError, match="'v0001-tiny' cannot be activated: it is broken.*temperature"):
        admin.promote(reg, "v0001-tiny", source="test")
    failed = audit.read(_log(reg), actions=["promote"])[-1]
    assert failed["outcome"] == "failed" and failed["model_version"] == "v0001-tiny"
    admin.delete_version(reg, "v0001-tiny", source="test")
    assert [v.name for v in reg.versions()] == [name] and reg.active_version() == name


def test_training_start_cleanup_never_empties_a_symlinked_staging(registry_copy, tmp_path):
    """What every training start runs (core.runner -> admin.recover): a symlinked .staging is
    removed as a link; the folder it pointed to keeps its files."""
    outside = tmp_path / "not-artifacts"
    outside.mkdir()
    (outside / "canary.txt").write_text("precious")
    reg = registry_copy
    if reg.staging_dir.exists():
        shutil.rmtree(reg.staging_dir)
    reg.staging_dir.symlink_to(outside, target_is_directory=True)
    admin.recover(reg, source="job")
    assert (outside / "canary.txt").read_text() == "precious" and not reg.staging_dir.is_symlink()
    reg.staging_dir.symlink_to(outside, target_is_directory=True)
    assert admin.recover(reg, source="test") == (1, None)
    assert sorted(p.name for p in outside.iterdir()) == ["canary.txt"]

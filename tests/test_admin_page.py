"""AppTest of app_pages/admin.py: locked (no password / wrong password / lockout) and unlocked
(registry table, promote + rollback, delete with confirmation, audit viewer)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import audit

PAGE = str(Path(__file__).resolve().parent.parent / "app_pages" / "admin.py")
PASSWORD = "correct horse battery staple"
TIMEOUT = 60


@pytest.fixture()
def env(monkeypatch, tmp_path, sample_root):
    """Empty registry in tmp (its database holds the audit trail); no admin password configured."""
    art = tmp_path / "empty_artifacts"
    art.mkdir()
    monkeypatch.setenv("PNEUMOSCOPE_ARTIFACTS", str(art))
    monkeypatch.setenv("PNEUMOSCOPE_DATA_ROOT", str(sample_root))
    monkeypatch.delenv("PNEUMOSCOPE_ADMIN_PASSWORD", raising=False)
    return {"artifacts": art, "audit": art}


@pytest.fixture()
def reg_env(env, monkeypatch, registry_copy):
    """The tiny trained registry (v0001-tiny active) plus a second version v0002-copy."""
    monkeypatch.setenv("PNEUMOSCOPE_ARTIFACTS", str(registry_copy.root))
    src = registry_copy.models_dir / "v0001-tiny"
    dst = registry_copy.models_dir / "v0002-copy"
    shutil.copytree(src, dst)
    card = json.loads((dst / "card.json").read_text())
    card.update(version="v0002-copy", created="2099-01-01T00:00:00+00:00")
    (dst / "card.json").write_text(json.dumps(card))
    env["registry"] = registry_copy
    env["audit"] = registry_copy.root
    return env


def _app(secrets: dict | None = None) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    # A non-empty dict replaces st.secrets entirely, so a developer's real
    # .streamlit/secrets.toml never leaks into these tests.
    at.secrets = secrets if secrets is not None else {"unrelated": "x"}
    return at


def _button(at: AppTest, label: str):
    found = [b for b in at.button if b.label == label]
    assert found, f"no button {label!r}; have {[b.label for b in at.button]}"
    return found[0]


def _login(at: AppTest, password: str) -> AppTest:
    at.text_input(key="admin_password_input").input(password)
    return _button(at, "Sign in").click().run()


def _text(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [e.value for e in at.error] + [w.value for w in at.warning]
    parts += [i.value for i in at.info] + [s.value for s in at.success] + [c.value for c in at.caption]
    return "\n".join(str(p) for p in parts)


def _dataframes(at: AppTest):
    return [d.value for d in at.dataframe]


def _confirm_promote(at: AppTest) -> AppTest:
    """Promote… then confirm (acknowledging the warnings when the review shows some)."""
    at = _button(at, "Promote…").click().run()
    for c in at.checkbox:
        if c.label.startswith("I have read the warnings"):
            at = c.check().run()
    return _button(at, "Yes, promote it").click().run()


def _shown_table(t):
    """An st.table's frame as the reader sees it (its cells are escaped Markdown, ui.text.md)."""
    from helpers import shown

    df = t.value.copy()
    df.columns = [shown(c) for c in df.columns]
    return df.map(shown)


def _compare_table(at: AppTest):
    """The Compare table (an st.table since issue 22: it wraps where a data grid cut cells)."""
    tables = [_shown_table(t) for t in at.table]
    return next(t for t in tables if "difference" in t.columns and "Wall time" in set(t["metric"])
                and not any(c.endswith("(active)") for c in t.columns))


def _review_table(at: AppTest):
    """The promote / roll back confirmation's side-by-side table."""
    tables = [_shown_table(t) for t in at.table]
    return next(t for t in tables if any(c.endswith("(active)") for c in t.columns))


def test_no_password_configured_stays_locked_with_instructions(env):
    at = _app().run()
    assert not at.exception
    txt = _text(at)
    assert "no admin password is configured" in txt
    assert "PNEUMOSCOPE_ADMIN_PASSWORD" in txt and "secrets.toml" in txt
    assert len(at.text_input) == 0  # no login form, nothing else drawn
    assert len(at.tabs) == 0


def test_blank_env_password_counts_as_not_configured(env, monkeypatch):
    monkeypatch.setenv("PNEUMOSCOPE_ADMIN_PASSWORD", "   ")
    at = _app().run()
    assert "no admin password is configured" in _text(at)
    assert len(at.tabs) == 0


def test_wrong_password_shows_error_and_is_audited_without_the_password(env, monkeypatch):
    monkeypatch.setenv("PNEUMOSCOPE_ADMIN_PASSWORD", PASSWORD)
    at = _app().run()
    assert [t.key for t in at.text_input] == ["admin_password_input", "admin_code_input"] and len(at.tabs) == 0
    at = _login(at, "guess-1")
    assert not at.exception
    assert any("Wrong password" in e.value for e in at.error)
    assert "4 attempt(s) left" in _text(at)
    assert len(at.tabs) == 0
    logins = audit.read(artifacts=env["audit"], actions=["login"])
    assert [r["outcome"] for r in logins] == ["failed"]
    raw = json.dumps(audit.read(artifacts=env["audit"]))
    assert "guess-1" not in raw and PASSWORD not in raw


@pytest.mark.slow
def test_lockout_after_five_failures_locks_that_session_only(env, monkeypatch):
    """Issue 14: the lockout was global, so anyone could lock the real admin out by failing 5 times."""
    monkeypatch.setenv("PNEUMOSCOPE_ADMIN_PASSWORD", PASSWORD)
    at = _app().run()
    for i in range(5):
        at = _login(at, f"wrong-{i}")
    assert any("locked" in e.value for e in at.error)
    # Even the right password is refused in that session while it is locked.
    at = _login(at, PASSWORD)
    assert len(at.tabs) == 0
    assert any("Too many failed attempts" in e.value for e in at.error)
    rerun = at.run()  # the lock is in the shared database: a rerun of that session still shows it
    assert any("locked here for another" in e.value for e in rerun.error)
    from core import auth

    state = auth.Lockout(env["artifacts"]).db.get(auth.STATE_KIND, auth.STATE_KEY).data
    assert [c["failures"] for c in state["clients"].values()] == [5]
    # Another browser session (the real admin) is not locked out and signs in.
    at2 = _app().run()
    assert not any("locked" in e.value for e in at2.error)
    at2 = _login(at2, PASSWORD)
    assert len(at2.tabs) > 0
    outcomes = [r["outcome"] for r in audit.read(artifacts=env["artifacts"], actions=["login"])]
    assert outcomes == ["failed"] * 5 + ["locked", "ok"]


@pytest.mark.slow  # an AppTest flow of ~2 s: CI's slow set keeps the default run well under 3 min
def test_throttled_sign_in_is_refused_at_once_and_a_one_time_code_signs_in_once(env, monkeypatch):
    """Issue 21: many wrong guesses from any sessions empty the global bucket; every password
    attempt is then refused at once (nobody sleeps) and the admin signs in with a code from
    `python -m core admin sign-in-code`, which works once."""
    from core import auth

    monkeypatch.setenv("PNEUMOSCOPE_ADMIN_PASSWORD", PASSWORD)
    lockout = auth.Lockout(env["artifacts"])  # the page's Lockout: same root, same database
    for i in range(auth.BUCKET_CAPACITY):  # an attacker rotating sessions
        assert lockout.attempt("guess", PASSWORD, client=f"attacker-{i}")[0] == "failed"
    at = _app().run()
    assert any("paused for everyone" in w.value for w in at.warning)
    at = _login(at, PASSWORD)  # even the right password is not checked now
    assert len(at.tabs) == 0
    assert any("try again in" in e.value and auth.CODE_COMMAND in e.value for e in at.error)
    code, _ = lockout.issue_code()
    at.text_input(key="admin_code_input").input(code)
    at = _button(at, "Sign in with code").click().run()
    assert not at.exception and len(at.tabs) > 0
    other = _app().run()  # the same code in another session: used already
    other.text_input(key="admin_code_input").input(code)
    other = _button(other, "Sign in with code").click().run()
    assert len(other.tabs) == 0 and any("not valid" in e.value for e in other.error)
    outcomes = [r["outcome"] for r in audit.read(artifacts=env["artifacts"], actions=["login"])]
    assert outcomes == ["throttled", "code_ok", "code_failed"]
    assert code not in json.dumps(audit.read(artifacts=env["artifacts"]))


def test_correct_password_via_env_unlocks_and_shows_registry(reg_env, monkeypatch):
    monkeypatch.setenv("PNEUMOSCOPE_ADMIN_PASSWORD", PASSWORD)
    at = _login(_app().run(), PASSWORD)
    assert not at.exception, at.exception
    assert [t.label for t in at.tabs] == ["Retrain", "Models", "Audit trail", "Feedback"]
    versions = [df for df in _dataframes(at) if "version" in getattr(df, "columns", [])]
    assert versions, "registry table not shown"
    table = versions[0]
    assert {v.split()[0] for v in table["version"]} == {"v0001-tiny", "v0002-copy"}
    assert "v0001-tiny ●" in set(table["version"]) and "v0002-copy" in set(table["version"])
    # Retrain tab: the data root and its counts, and a start button.
    assert any("Data root" in m.value for m in at.markdown)
    assert _button(at, "Start training")
    assert [r["outcome"] for r in audit.read(artifacts=reg_env["audit"], actions=["login"])] == ["ok"]
    # Compare: the active version (A) against the newest other one (B), metrics + confusion matrices.
    assert at.selectbox(key="cmp_a").value == "v0001-tiny" and at.selectbox(key="cmp_b").value == "v0002-copy"
    cmp = _compare_table(at)
    assert {"v0001-tiny", "v0002-copy", "difference"} <= set(cmp.columns)
    auc = cmp.set_index("metric").loc["ROC-AUC (test)"]
    assert auc["v0001-tiny"] == auc["v0002-copy"] and auc["difference"] == "+0.000"  # same weights
    assert len(at.get("plotly_chart")) == 2


def test_secrets_password_unlocks(reg_env):
    at = _login(_app({"admin_password": PASSWORD}).run(), PASSWORD)
    assert [t.label for t in at.tabs] == ["Retrain", "Models", "Audit trail", "Feedback"]


@pytest.mark.slow
def test_promote_then_rollback(reg_env, monkeypatch):
    """Issue 22: promote and roll back ask first, showing what changes side by side; the Models tab
    stays selected across those reruns (it jumped back to Retrain)."""
    from helpers import shown

    monkeypatch.setenv("PNEUMOSCOPE_ADMIN_PASSWORD", PASSWORD)
    reg = reg_env["registry"]
    at = _login(_app().run(), PASSWORD)
    at.session_state["admin_tab"] = "Models"  # the user opens the Models tab
    at = at.run()
    assert at.selectbox(key="promote_sel").value == "v0002-copy"
    at = _button(at, "Promote…").click().run()
    assert not at.exception
    assert reg.active_version() == "v0001-tiny"  # asked, not done
    assert any("Promote `v0002-copy`?" in m.value for m in at.markdown)
    review = _review_table(at).set_index("metric")
    assert list(review.columns) == ["v0001-tiny (active)", "v0002-copy (new)", "difference"]
    assert review.loc["Images (test)", "v0002-copy (new)"] == review.loc["Images (test)", "v0001-tiny (active)"]
    assert review.loc["ROC-AUC (test)", "difference"] == "+0.000"  # the same images: a difference is shown
    assert not at.error and not any(c.label.startswith("I have read") for c in at.checkbox)  # nothing to warn of
    assert at.session_state["admin_tab"] == "Models"
    at = _button(at, "Cancel").click().run()
    assert reg.active_version() == "v0001-tiny" and not any("Promote `" in m.value for m in at.markdown)
    assert not audit.read(artifacts=reg_env["audit"], actions=["promote"])
    at = _button(at, "Promote…").click().run()
    at = _button(at, "Yes, promote it").click().run()
    assert not at.exception
    assert reg.active_version() == "v0002-copy"
    assert any("v0002-copy" in s.value and "active" in s.value for s in at.success)
    assert at.session_state["admin_tab"] == "Models"  # still on the Models tab after the action
    promotes = audit.read(artifacts=reg_env["audit"], actions=["promote"])
    assert promotes[-1]["outcome"] == "ok" and promotes[-1]["model_version"] == "v0002-copy"
    assert promotes[-1]["previous"] == "v0001-tiny"
    # The page now offers the rollback to the previous version, also after confirmation.
    assert any("to **`v0001-tiny`**" in c.value for c in at.caption if "Steps back one activation" in c.value)
    at = _button(at, "Roll back…").click().run()
    assert reg.active_version() == "v0002-copy"
    assert any("Roll back to `v0001-tiny`?" in m.value for m in at.markdown)
    assert set(_review_table(at).columns) == {"metric", "v0002-copy (active)", "v0001-tiny (new)", "difference"}
    at = _button(at, "Yes, roll back").click().run()
    assert not at.exception and reg.active_version() == "v0001-tiny"
    assert audit.read(artifacts=reg_env["audit"], actions=["rollback"])[-1]["model_version"] == "v0001-tiny"
    assert at.session_state["admin_tab"] == "Models"
    # Nothing further back: the version just rolled back from is not offered (it is no toggle).
    assert _button(at, "Roll back…").disabled
    hist = next(df for df in _dataframes(at) if "activated" in getattr(df, "columns", []))
    # newest first; the last row is v0001-tiny's activation when it was published (nothing replaced)
    assert [tuple(r) for r in hist[["action", "activated", "replaced"]].fillna("").to_numpy()] == [
        ("rollback", "v0001-tiny", "v0002-copy"), ("promote", "v0002-copy", "v0001-tiny"), ("promote", "v0001-tiny", "")]
    assert any("Activation history (3)" in shown(e.label) for e in at.expander)


def _subset_candidate(reg, name: str = "v0003-smoke", n_keep: int = 4, auc: float = 0.5, limit: int | None = 40):
    """A version evaluated on a part of the active version's test images, worse, from a quick run."""
    src = reg.models_dir / "v0001-tiny"
    dst = reg.models_dir / name
    shutil.copytree(src, dst)
    m = json.loads((dst / "metrics.json").read_text())
    t = m["test"]
    t["predictions"] = t["predictions"][:n_keep]
    t["n"], t["roc_auc"] = n_keep, auc
    (dst / "metrics.json").write_text(json.dumps(m))
    card = json.loads((dst / "card.json").read_text())
    card.update(version=name, created="2099-02-01T00:00:00+00:00")
    (dst / "card.json").write_text(json.dumps(card))
    prov = json.loads((dst / "provenance.json").read_text())
    prov["limit_per_class"] = limit
    (dst / "provenance.json").write_text(json.dumps(prov))
    return name, json.loads((src / "metrics.json").read_text())["test"]


@pytest.mark.slow
def test_promote_of_a_smoke_model_on_a_smaller_test_set_warns_loudly_and_needs_acknowledging(reg_env, monkeypatch):
    """Issue 22: one click put a 40-images-per-class smoke model (AUC 0.76 on 80 images) in front of
    every clinician. The confirmation says it was evaluated on a part of the active model's test
    set (no difference shown), that it is worse and a quick run, and acts only once acknowledged."""
    from helpers import shown

    monkeypatch.setenv("PNEUMOSCOPE_ADMIN_PASSWORD", PASSWORD)
    reg = reg_env["registry"]
    name, active_test = _subset_candidate(reg)
    at = _login(_app().run(), PASSWORD)
    at.selectbox(key="promote_sel").select(name)
    at = _button(at, "Promote…").click().run()
    errors = [shown(e.value) for e in at.error]
    assert any(f"{name} was evaluated on 4 test images, only a part of the {active_test['n']}" in e for e in errors), errors
    assert any(f"{name} is worse than the active v0001-tiny" in e and "ROC-AUC 0.500" in e for e in errors), errors
    assert any("at most 40 images per class" in e for e in errors), errors
    review = _review_table(at).set_index("metric")
    assert review.loc["Images (test)", f"{name} (new)"] == "4"
    assert review.loc["Images (test)", "v0001-tiny (active)"] == str(active_test["n"])
    assert review.loc["ROC-AUC (test)", "difference"] == "not comparable"
    yes = _button(at, "Yes, promote it")
    assert yes.disabled  # not before the warnings are acknowledged
    ack = next(c for c in at.checkbox if c.label.startswith("I have read the warnings"))
    at = ack.check().run()
    at = _button(at, "Yes, promote it").click().run()
    assert not at.exception and reg.active_version() == name


@pytest.mark.slow
def test_confirmation_does_not_act_when_the_registry_changed_meanwhile(reg_env, monkeypatch):
    from core import admin

    monkeypatch.setenv("PNEUMOSCOPE_ADMIN_PASSWORD", PASSWORD)
    reg = reg_env["registry"]
    at = _login(_app().run(), PASSWORD)
    at = _button(at, "Promote…").click().run()
    admin.promote(reg, "v0002-copy", source="other admin")  # someone else, meanwhile
    at = at.run()
    assert any("registry changed since you asked" in w.value for w in at.warning)
    assert not any(b.label == "Yes, promote it" for b in at.button)
    assert reg.active_version() == "v0002-copy"


@pytest.mark.slow
def test_rollback_steps_back_through_the_activation_history(reg_env, monkeypatch):
    """Issue 22: a second Roll back re-activated the version just rolled back from (a toggle)."""
    from core import admin

    monkeypatch.setenv("PNEUMOSCOPE_ADMIN_PASSWORD", PASSWORD)
    reg = reg_env["registry"]
    shutil.copytree(reg.models_dir / "v0002-copy", reg.models_dir / "v0003-copy")
    admin.promote(reg, "v0002-copy", source="cli")
    admin.promote(reg, "v0003-copy", source="cli")
    at = _login(_app().run(), PASSWORD)
    caption = next(c.value for c in at.caption if "Steps back one activation" in c.value)
    assert "to **`v0002-copy`**" in caption and "then `v0001-tiny`" in caption
    for expected in ("v0002-copy", "v0001-tiny"):
        at = _button(at, "Roll back…").click().run()
        at = _button(at, "Yes, roll back").click().run()
        assert not at.exception and reg.active_version() == expected
    assert _button(at, "Roll back…").disabled  # never back to v0003-copy or v0002-copy
    hist = next(df for df in _dataframes(at) if "activated" in getattr(df, "columns", []))
    # newest first, down to v0001-tiny's activation when it was published
    assert list(hist["activated"]) == ["v0001-tiny", "v0002-copy", "v0003-copy", "v0002-copy", "v0001-tiny"]


@pytest.mark.slow
def test_delete_needs_confirmation(reg_env, monkeypatch):
    monkeypatch.setenv("PNEUMOSCOPE_ADMIN_PASSWORD", PASSWORD)
    reg = reg_env["registry"]
    at = _login(_app().run(), PASSWORD)
    at = _button(at, "Delete…").click().run()
    assert reg.is_complete("v0002-copy")  # nothing deleted yet
    assert any("permanently" in w.value for w in at.warning)
    at = _button(at, "Keep it").click().run()
    assert reg.is_complete("v0002-copy")
    at = _button(at, "Delete…").click().run()
    at = _button(at, "Yes, delete").click().run()
    assert not at.exception
    assert not reg.is_complete("v0002-copy") and reg.active_version() == "v0001-tiny"
    assert audit.read(artifacts=reg_env["audit"], actions=["delete"])[-1]["outcome"] == "ok"


@pytest.mark.slow
def test_audit_tab_filters_and_csv(reg_env, monkeypatch):
    monkeypatch.setenv("PNEUMOSCOPE_ADMIN_PASSWORD", PASSWORD)
    audit.append("predict", model_version="v0001-tiny", outcome="NORMAL", image_sha256="ab" * 32)
    audit.append("promote", model_version="v0002-copy", outcome="ok")
    at = _login(_app().run(), PASSWORD)
    audit_tables = [df for df in _dataframes(at) if "action" in getattr(df, "columns", []) and "activated" not in df.columns]
    assert audit_tables and set(audit_tables[0]["action"]) >= {"predict", "promote", "login"}
    at.multiselect(key="audit_actions").select("predict").run()
    table = [df for df in _dataframes(at) if "action" in getattr(df, "columns", []) and "activated" not in df.columns][0]
    assert list(table["action"]) == ["predict"]
    at.text_input(key="audit_version").input("v0002").run()
    assert any("No events match" in i.value for i in at.info)
    at.multiselect(key="audit_actions").unselect("predict").run()
    table = [df for df in _dataframes(at) if "action" in getattr(df, "columns", []) and "activated" not in df.columns][0]
    assert list(table["action"]) == ["promote"] and list(table["model_version"]) == ["v0002-copy"]
    at.text_input(key="audit_version").input("").run()
    today = dt.datetime.now(dt.timezone.utc).date()
    at.date_input(key="audit_dates").set_value((dt.date(2021, 1, 1), today - dt.timedelta(days=1))).run()
    assert any("No events match" in i.value for i in at.info)
    at.date_input(key="audit_dates").set_value((today, today)).run()
    table = [df for df in _dataframes(at) if "action" in getattr(df, "columns", []) and "activated" not in df.columns][0]
    assert len(table) == 3  # predict, promote, login
    assert at.get("download_button")  # CSV download offered


@pytest.mark.slow  # an AppTest flow of ~2 s: CI's slow set keeps the default run well under 3 min
def test_audit_table_in_percent_and_no_session_state_warning_after_a_rerun(reg_env, monkeypatch):
    """Issue 22: the audit table and CSV carry the threshold in percent; Accept relabel (a
    st.rerun()) no longer makes Streamlit log the "audit_dates ... default value but also had its
    value set via the Session State API" stack trace (the check runs only under a server runtime,
    which AppTest does not have: it is switched on here)."""
    import os

    from streamlit.elements.lib import policies

    from core.feedback import FeedbackStore, default_feedback_dir

    warned: list[str] = []
    monkeypatch.setattr(policies.runtime, "exists", lambda: True)
    monkeypatch.setattr(policies, "_shown_default_value_warning", False)
    monkeypatch.setattr(policies._LOGGER, "warning", lambda msg, *a, **k: warned.append(msg % a))
    monkeypatch.setenv("PNEUMOSCOPE_ADMIN_PASSWORD", PASSWORD)
    audit.append("predict", model_version="v0001-tiny", outcome="NORMAL", image_sha256="ab" * 32, threshold=0.19)
    store = FeedbackStore(default_feedback_dir(os.environ["PNEUMOSCOPE_ARTIFACTS"]))
    store.record(image_sha256="cd" * 32, model_version="v0001-tiny", probability=0.3, threshold=0.19,
                 guard_status="accepted", guard_code="ok", reader_id="r-1", agree=False, believed_label="NORMAL",
                 comment="", consent=False, pixels=None)
    at = _login(_app().run(), PASSWORD)
    # the audit tab's table (the models tab's activation history has an "action" column too, earlier)
    table = [df for df in _dataframes(at) if "image_sha256" in getattr(df, "columns", [])][0]
    assert "threshold" not in table.columns and list(table["threshold_pct"].dropna()) == [19.0]
    at.text_input(key="fbq_reason").input("second reader agrees")
    at = at.button(key="fbq_accept").click().run()
    assert not at.exception and store.items()[0]["status"] == "accepted"
    at.date_input(key="audit_dates").set_value((dt.date(2021, 1, 1), dt.date(2021, 1, 2))).run()
    assert any("No events match" in i.value for i in at.info)  # still a working range filter
    assert not any("audit_dates" in w for w in warned), warned


@pytest.mark.slow
def test_start_from_the_form_runs_a_background_job_and_cancel_button_stops_it(env, monkeypatch):
    from core import jobs

    monkeypatch.setenv("PNEUMOSCOPE_ADMIN_PASSWORD", PASSWORD)
    monkeypatch.setattr("ui.admin_components.imagenet_status", lambda *a, **k: (True, "reachable (test)"))
    at = _login(_app().run(), PASSWORD)
    assert any("No training job has run yet" in i.value for i in at.info)
    # Defaults come from core.config.Config().
    assert [n.value for n in at.number_input][:1] == [64]
    assert at.radio[0].value == "imagenet"
    at.number_input[0].set_value(32)
    at.radio[0].set_value("none")
    at = _button(at, "Start training").click().run()
    assert not at.exception, at.exception
    assert any("Started training job" in s.value for s in at.success)
    job = jobs.current_job(artifacts=env["artifacts"])
    assert job is not None and job.active and job.pid
    req = job.request
    assert req["config"]["input_size"] == 32 and req["config"]["weights"] == "none"
    assert Path(req["data_root"]) == Path(jobs.default_data_root()).resolve()
    # The page shows the running job; a second start is refused while it runs.
    assert _button(at, "Start training").disabled
    at = _button(at, "Cancel training").click().run()
    assert jobs.load_job(job.dir).cancel_requested
    done = jobs.wait(job, timeout=300)
    assert done.status == "cancelled"
    at = at.run()
    assert any("cancelled" in w.value for w in at.warning)
    assert [r["outcome"] for r in audit.read(artifacts=env["audit"], actions=["retrain"])] == ["started", "cancelled"]


@pytest.mark.slow
def test_broken_active_version_is_shown_and_the_admin_promotes_another_and_deletes_it(reg_env, monkeypatch):
    """Issue 21: card.json as a JSON list raised on every page, the admin's included, so the admin
    could not recover from the UI. Now the page renders, names the broken version and why, offers
    only usable versions for promotion, and deletes the broken one once it is not active."""
    from helpers import shown

    monkeypatch.setenv("PNEUMOSCOPE_ADMIN_PASSWORD", PASSWORD)
    reg = reg_env["registry"]
    (reg.models_dir / "v0001-tiny" / "card.json").write_text('["not", "a", "card"]')  # the active version
    at = _login(_app().run(), PASSWORD)
    assert not at.exception, at.exception
    errors = [shown(e.value) for e in at.error]
    assert any("v0001-tiny` is broken" in e and "card.json: card must be a JSON object" in e for e in errors), errors
    table = [df for df in _dataframes(at) if "ROC-AUC" in getattr(df, "columns", [])][0]
    assert sorted(table["version"]) == ["v0001-tiny ● — BROKEN", "v0002-copy"]
    assert at.selectbox(key="promote_sel").options == ["v0002-copy"]
    at = _confirm_promote(at)
    assert not at.exception and reg.active_version() == "v0002-copy"
    at.selectbox(key="delete_sel").select("v0001-tiny")
    at = _button(at, "Delete…").click().run()
    at = _button(at, "Yes, delete").click().run()
    assert not at.exception and [v.name for v in reg.versions()] == ["v0002-copy"]
    assert not any("is broken" in shown(e.value) for e in at.error)


def test_broken_version_is_never_offered_for_promotion(reg_env, monkeypatch):
    from helpers import shown

    monkeypatch.setenv("PNEUMOSCOPE_ADMIN_PASSWORD", PASSWORD)
    reg = reg_env["registry"]
    p = reg.models_dir / "v0002-copy" / "operating_point.json"
    p.write_text(p.read_text().replace('"threshold": ', '"threshold": 1e308, "was": ', 1))
    at = _login(_app().run(), PASSWORD)
    assert not at.exception, at.exception
    assert any("v0002-copy` is broken" in shown(e.value) and "threshold" in shown(e.value) for e in at.error)
    assert at.selectbox(key="promote_sel").options == []  # v0001-tiny is active; v0002-copy is broken
    assert reg.active_version() == "v0001-tiny"


# --- one status for an ended job (issue 22) ----------------------------------------------------------
def _ended_job(artifacts: Path, status: str, events: list[dict], error: str | None = None, version: str | None = None):
    from core import jobs

    root = jobs.jobs_root(artifacts)
    d = root / "job-ended"
    d.mkdir(parents=True)
    t = "2026-01-01T10:00:00+00:00"
    (d / "state.json").write_text(json.dumps({"job_id": "job-ended", "status": status, "created": t, "started": t,
                                              "finished": "2026-01-01T10:05:00+00:00", "error": error, "version": version}))
    (d / "request.json").write_text(json.dumps({"job_id": "job-ended", "config": {}}))
    (d / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (root / "current").write_text("job-ended")
    return jobs.load_job(d)


TRAINED = [{"kind": "phase_start", "phase": "finetune", "epochs": 4, "message": "Phase 2", "elapsed_s": 10.0},
           {"kind": "epoch_end", "phase": "finetune", "epoch": 4, "epochs": 4, "batches": 3, "metrics": {"loss": 0.4},
            "elapsed_s": 20.0},
           {"kind": "done", "metrics": {"test_roc_auc": 0.9}, "elapsed_s": 25.0}]


@pytest.mark.parametrize("status, events, error, stage, phase", [
    ("cancelled", TRAINED, "Training was cancelled before publishing.",
     "cancelled after training, before publishing; nothing was published", "cancelled"),
    pytest.param("cancelled", TRAINED[:1] + [{"kind": "batch", "phase": "finetune", "epoch": 2, "epochs": 4, "batch": 1,
                                               "batches": 3, "metrics": {}, "elapsed_s": 12.0}],
                 "Training was cancelled during phase 2.",
                 "cancelled during phase 2 — fine-tuning all layers (epoch 2/4); nothing was published", "cancelled",
                 marks=pytest.mark.slow),
    ("failed", TRAINED, "Unexpected error: OSError: disk full (see the job log).",
     "failed after training, before publishing; nothing was published", "failed"),
    pytest.param("failed", [], "The job process died.", "failed before training started; nothing was published",
                 "failed", marks=pytest.mark.slow),
])  # two cases in the default run, all four in CI's slow set
@pytest.mark.slow  # an AppTest flow of 1.4-2.3 s: CI's slow set keeps the default run under 3 min
def test_an_ended_job_has_one_consistent_status(env, monkeypatch, status, events, error, stage, phase):
    """Issue 22: a cancelled retrain read "cancelled · Finished training — publishing", phase
    "done", "publishing the version", and below it "Training was cancelled; the registry is unchanged"."""
    from helpers import shown

    monkeypatch.setenv("PNEUMOSCOPE_ADMIN_PASSWORD", PASSWORD)
    job = _ended_job(env["artifacts"], status, events, error)
    from core import progress
    from ui import admin_components as ac

    assert ac.job_stage(job, progress.summarize(job)) == stage
    at = _login(_app().run(), PASSWORD)
    assert not at.exception, at.exception
    head = next(shown(m.value) for m in at.markdown if "Job `job-ended`" in m.value)
    assert head.endswith(f"Job `job-ended` — {status}** · {stage}"), head
    page = shown(_text(at)) + head
    assert "publishing" not in page.replace("before publishing", "")  # never "publishing the version" / "— publishing"
    assert {m.label: m.value for m in at.metric}["Phase"] == phase
    if status == "cancelled":
        assert any("Training was cancelled; the registry is unchanged" in w.value for w in at.warning)
    else:
        assert any("Training failed; the registry is unchanged" in e.value for e in at.error)


def test_a_succeeded_job_says_where_it_was_published(env, monkeypatch):
    from helpers import shown

    monkeypatch.setenv("PNEUMOSCOPE_ADMIN_PASSWORD", PASSWORD)
    _ended_job(env["artifacts"], "succeeded", TRAINED, version="v0007-new")
    at = _login(_app().run(), PASSWORD)
    head = next(shown(m.value) for m in at.markdown if "Job `job-ended`" in m.value)
    assert head.endswith("succeeded** · published as v0007-new (not active)"), head
    assert {m.label: m.value for m in at.metric}["Phase"] == "done"
    assert "publishing the version" not in _text(at)


# --- moved from test_admin_issue15.py / test_issue16_streamlit.py: models table, ImageNet at form time,
# a promote that clears no cache -------------------------------------------------------------------
def test_models_table_puts_the_metrics_first_and_fits(reg_env, monkeypatch):
    monkeypatch.setenv("PNEUMOSCOPE_ADMIN_PASSWORD", PASSWORD)
    at = _login(_app().run(), PASSWORD)
    assert not at.exception, at.exception
    table = next(df for df in _dataframes(at) if "version" in getattr(df, "columns", []))
    cols = list(table.columns)
    assert cols[:5] == ["version", "ROC-AUC", "sensitivity", "specificity", "accuracy"]
    assert len(cols) <= 7  # the rest is in the Compare table
    card = json.loads((reg_env["registry"].models_dir / "v0001-tiny" / "card.json").read_text())
    row = table[table["version"].str.startswith("v0001-tiny")].iloc[0]
    assert row["sensitivity"] == pytest.approx(round(100 * card["test"]["sensitivity"], 1))  # percent


@pytest.mark.slow  # an AppTest flow of 1.4-2.3 s: CI's slow set keeps the default run under 3 min
def test_offline_machine_is_told_at_form_time_to_pick_random_initialisation(reg_env, monkeypatch):
    from core import jobs as jobs_mod

    monkeypatch.setenv("PNEUMOSCOPE_ADMIN_PASSWORD", PASSWORD)
    monkeypatch.setattr("ui.admin_components.imagenet_status",
                        lambda *a, **k: (False, "no cached copy in ~/.keras/models and storage.googleapis.com cannot be reached"))
    started = []
    monkeypatch.setattr(jobs_mod, "start_job", lambda *a, **k: started.append(a))
    at = _login(_app().run(), PASSWORD)
    warn = " ".join(w.value for w in at.warning)
    assert "ImageNet weights cannot be had on this machine" in warn
    assert "none (random initialisation)" in warn and "Starting weights" in warn
    radio = at.radio[0]
    assert radio.value == "none"  # preselected, since the default would fail here
    radio.set_value("imagenet")
    at = _button(at, "Start training").click().run()
    assert not at.exception
    errors = " ".join(e.value for e in at.error)
    assert "none (random initialisation)" in errors and not started
    page = _text(at)
    assert "weights='none'" not in page and 'weights="none"' not in page


@pytest.mark.slow
def test_promote_clears_no_cache_and_the_predict_page_uses_the_new_version(reg_env, monkeypatch):
    import streamlit
    from test_app_pages import audit_lines, open_page

    cleared: list[str] = []
    monkeypatch.setattr(streamlit.cache_data, "clear", lambda *a, **k: cleared.append("data"))
    monkeypatch.setattr(streamlit.cache_resource, "clear", lambda *a, **k: cleared.append("resource"))
    monkeypatch.setenv("PNEUMOSCOPE_ADMIN_PASSWORD", PASSWORD)
    predict = open_page()
    predict.selectbox(key="sample_pick").set_value(0)
    predict.button(key="sample_go").click().run()
    assert not predict.exception, [e.value for e in predict.exception]
    assert audit_lines(reg_env["audit"])[-1]["model_version"] == "v0001-tiny"  # model cached now

    admin = _login(_app().run(), PASSWORD)
    admin = _confirm_promote(admin)
    assert not admin.exception
    assert reg_env["registry"].active_version() == "v0002-copy"
    assert cleared == []  # other users' caches stay warm

    predict.button(key="sample_go").click().run()  # same session, same server caches
    assert not predict.exception, [e.value for e in predict.exception]
    preds = [r for r in audit_lines(reg_env["audit"]) if r["action"] == "predict"]
    assert [r["model_version"] for r in preds] == ["v0001-tiny", "v0002-copy"]

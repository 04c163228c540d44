"""Admin: retrain in the background, manage registry versions, read the audit trail.

Password-protected (``admin_password`` in .streamlit/secrets.toml or
$PNEUMOSCOPE_ADMIN_PASSWORD; no default). The logic lives in core.auth, core.jobs and core.admin; this
page only draws widgets and calls them.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import uuid

import pandas as pd
import streamlit as st

from core import admin, audit, auth, jobs, progress
from core.config import Config, default_data_root, form_limits
from core.dataset import DatasetError
from core.db import DatabaseError
from core.registry import Registry, RegistryError
from ui import admin_components as ac
from ui import compare_view, components, loaders
from ui.text import MAX_MESSAGE, md, md_code, plain


REFRESH_S = 2
TABS = ("Retrain", "Models", "Audit trail", "Feedback")
TAB_KEY = "admin_tab"
PENDING_ACTIVATION = "admin_pending_activation"


# --- access -------------------------------------------------------------------------------------
def _secret_password():
    """``admin_password`` from st.secrets; None when there is no secrets file or no such key."""
    try:
        return st.secrets.get(auth.SECRET_KEY)
    except Exception:  # noqa: BLE001 - no secrets.toml / unreadable: treat as not configured
        return None


def _token(expected: str) -> str:
    # Stored in the session instead of a bare "logged in" flag, so changing the password
    # signs every session out.
    return hashlib.sha256(("pneumoscope-admin:" + expected).encode()).hexdigest()


def _client_id() -> str:
    """The key of the per-client login lockout: a random id kept for this page session (not the
    address, which is the proxy's for everyone behind a reverse proxy). A reload starts a new
    session, and the messages say so (core.auth.session_scope_note); it gains an attacker nothing:
    core.auth's global wrong-guess bucket caps all sessions together."""
    if "login_client_id" not in st.session_state:
        st.session_state["login_client_id"] = f"session:{uuid.uuid4().hex}"
    return st.session_state["login_client_id"]


def gate() -> bool:
    """Draw the login form unless this session is signed in. Returns True when unlocked."""
    expected = auth.resolve_password(_secret_password())
    if expected is None:
        st.warning("The admin page is locked: no admin password is configured.", icon=":material/lock:")
        st.markdown(auth.SETUP_INSTRUCTIONS)
        return False
    if st.session_state.get("admin_token") == _token(expected):
        return True
    lockout = auth.Lockout()
    status = lockout.status(_client_id())
    if status.locked:
        st.error(auth.locked_message(status, lockout), icon=":material/lock_clock:")
    elif status.throttled:
        st.warning(f"Password sign-in is paused for everyone after many wrong passwords: try again in "
                   f"{status.retry_text}, or sign in with a one-time code (below).", icon=":material/hourglass_top:")
    with st.form("admin_login", clear_on_submit=True):
        attempt = st.text_input("Admin password", type="password", key="admin_password_input")
        submitted = st.form_submit_button("Sign in", type="primary")
    with st.expander("Sign in with a one-time code", expanded=status.throttled, icon=":material/key:"):
        st.caption(f"On the server, run `{auth.CODE_COMMAND}`: it prints a code that signs in once within "
                   f"{int(auth.CODE_TTL_S // 60)} minutes, also while password sign-in is paused.")
        with st.form("admin_code_login", clear_on_submit=True, border=False):
            code = st.text_input("One-time code", type="password", key="admin_code_input",
                                 placeholder="XXXX-XXXX-XXXX-XXXX")
            code_submitted = st.form_submit_button("Sign in with code")
    if submitted or code_submitted:
        try:
            if submitted:
                res = auth.login(attempt or "", expected, lockout=lockout, client=_client_id(), page="admin")
            else:
                res = auth.login_with_code(code or "", expected, lockout=lockout, client=_client_id(), page="admin")
        except OSError as e:
            st.error(f"Cannot record the login attempt ({md(e, MAX_MESSAGE)}); check that the artifacts folder is writable.")
            return False
        if res.ok:
            st.session_state["admin_token"] = _token(expected)
            st.rerun()
        st.error(res.message, icon=":material/error:")
    return False


# --- helpers ------------------------------------------------------------------------------------
def _registry_action(action, success_message) -> None:
    """Run a promote/rollback; on success rerun. No cache clearing: the loaders (ui.loaders) read
    ACTIVE on every run and key the model and reports on version and file time, so the next run
    of any page uses the new active version while other users keep their warm caches."""
    try:
        result = action()
    except (RegistryError, ValueError) as e:
        st.error(md(e, MAX_MESSAGE))
        return
    components.flash("success", success_message(result))
    st.rerun()


def _summary(job: jobs.JobInfo) -> progress.ProgressSummary:
    """Progress summary of ``job``, read incrementally (kept per job in the session)."""
    cache = st.session_state.setdefault("admin_progress", {})
    s = cache.get(job.job_id)
    if s is None:
        cache.clear()
        s = cache[job.job_id] = progress.ProgressSummary()
    return progress.summarize(job, s)


# --- retrain ------------------------------------------------------------------------------------
@st.fragment(run_every=REFRESH_S)
def job_panel() -> None:
    try:
        job = jobs.refresh()
        summary = _summary(job) if job is not None else None  # read here: the database may be unreachable
        log_text = progress.log_tail(job) if job is not None else ""
    except (OSError, DatabaseError) as e:  # the shared database is unreachable: a sentence, not a traceback
        st.error(f"Cannot read the training jobs: {md(e, MAX_MESSAGE)}")
        return
    if job is None:
        st.info("No training job has run yet. Fill in the form below and press **Start training**.")
        return
    was_active = st.session_state.get("admin_job_seen") == (job.job_id, True)
    st.session_state["admin_job_seen"] = (job.job_id, job.active)
    if was_active and not job.active:
        st.rerun()  # full rerun: the start button, the version table and the audit log change
    ac.progress_panel(job, summary, log_text)
    if job.active:
        if job.cancel_requested:
            st.warning("Cancel requested: the job stops at the next batch (it is sent SIGTERM if it has not "
                       f"stopped within {int(jobs.CANCEL_GRACE_S)} s). Nothing will be published.")
        elif st.button("Cancel training", key=f"cancel_{job.job_id}", icon=":material/stop_circle:"):
            try:
                jobs.cancel(job)
            except (jobs.JobError, DatabaseError) as e:
                st.warning(md(e, MAX_MESSAGE))
            st.rerun(scope="fragment")
    elif job.status == "succeeded":
        st.success(f"Training finished: version **{md_code(job.version)}** is in the registry, **not active**. "
                   "Compare it with the active model and promote it in the **Models** tab.")
    elif job.status == "cancelled":
        detail = (job.error or "").strip()
        generic = detail.rstrip(".").lower() in ("", "training was cancelled")
        st.warning("Training was cancelled; the registry is unchanged." + ("" if generic else f" ({md(detail, MAX_MESSAGE)})"))
    else:
        st.error(f"Training failed; the registry is unchanged. Reason: {md(job.error or 'unknown (see the log)', MAX_MESSAGE)}")


def start_form(data_ok: bool, busy: bool) -> None:
    d = Config()
    imagenet_ok, how = ac.imagenet_status()
    if not imagenet_ok:
        st.warning(ac.imagenet_unavailable_message(how), icon=":material/cloud_off:")
    with st.form("retrain_form"):
        c1, c2, c3 = st.columns(3)
        # Limits, steps and formats come from the Config fields' specs (core.config.form_limits).
        input_size = c1.number_input("Input size (px, square)", value=d.input_size, **form_limits("input_size"),
                                     help="The original study used 64 px. VGG-19 needs at least 32 px.")
        default_mode = ac.weights_mode(d.weights)
        if default_mode == "imagenet" and not imagenet_ok:
            default_mode = "none"  # the default would fail on this machine
        mode = c1.radio("Starting weights", ac.WEIGHT_MODES, index=ac.WEIGHT_MODES.index(default_mode),
                        format_func=ac.WEIGHT_LABELS.get, horizontal=True,
                        help="imagenet downloads the VGG-19 weights once (needs internet). 'local file' = a "
                             "VGG-19 no-top .h5 file on the server. 'none (random initialisation)' needs nothing.")
        weights_path = c1.text_input("Local weights file (for 'local file')", placeholder="/path/to/vgg19_notop.h5")
        head_epochs = c2.number_input("Head epochs (phase 1, base frozen)", value=d.head_epochs,
                                      **form_limits("head_epochs"))
        finetune_epochs = c2.number_input("Fine-tune epochs (phase 2, all layers)", value=d.finetune_epochs,
                                          **form_limits("finetune_epochs"))
        batch_size = c2.number_input("Batch size", value=d.batch_size, **form_limits("batch_size"))
        head_lr = c3.number_input("Head learning rate", value=d.head_learning_rate, **form_limits("head_learning_rate"))
        finetune_lr = c3.number_input("Fine-tune learning rate", value=d.finetune_learning_rate,
                                      **form_limits("finetune_learning_rate"))
        val_fraction = c3.slider("Validation fraction (split by patient)", value=float(d.val_fraction),
                                 **form_limits("val_fraction"))
        seed = c3.number_input("Seed", value=d.seed, **form_limits("seed"))
        limit = st.number_input("Use at most N images per class and split (0 = all; for quick smoke runs)", 0, 1_000_000, 0)
        from ui import feedback_admin

        include_feedback = feedback_admin.retrain_option()  # accepted feedback -> training part only
        submitted = st.form_submit_button("Start training", type="primary", disabled=busy or not data_ok,
                                          icon=":material/model_training:")
    if busy:
        st.caption("A training job is running; wait for it to finish or cancel it to start another.")
    if not submitted:
        return
    if mode == "imagenet" and not imagenet_ok:
        st.error(ac.imagenet_unavailable_message(how))
        return
    try:
        cfg = ac.build_config(d, input_size=input_size, weights_mode=mode, weights_path=weights_path,
                              head_epochs=head_epochs, finetune_epochs=finetune_epochs, head_learning_rate=head_lr,
                              finetune_learning_rate=finetune_lr, batch_size=batch_size,
                              val_fraction=val_fraction, seed=seed).replace(include_feedback=bool(include_feedback))
        job = jobs.start_job(cfg, default_data_root(), limit_per_class=int(limit) or None, requested_by="admin page")
    except jobs.JobBusy as e:
        st.warning(md(e, MAX_MESSAGE))
    except (ValueError, jobs.JobError, OSError, DatabaseError) as e:
        st.error(md(e, MAX_MESSAGE))
    else:
        components.flash("success", f"Started training job {md_code(job.job_id)} in the background (pid {job.pid}). "
                          "You can leave this page; progress is kept on disk.")
        st.rerun()


def retrain_tab() -> None:
    root = default_data_root()
    st.markdown(f"**Data root:** {md_code(root.expanduser().resolve())}")
    try:
        counts = loaders.dataset_counts(str(root))
        data_ok = bool(counts.get("train"))
        st.dataframe(pd.DataFrame(counts).T.rename_axis("split"), width="content")
        if not data_ok:
            st.error(f"No train split under {md_code(root)}: expected {md_code(f'{root}/train/{{NORMAL,PNEUMONIA}}/')}.")
    except DatasetError as e:
        data_ok = False
        st.error(md(e, MAX_MESSAGE))
    st.markdown("#### Current job")
    job_panel()
    try:
        job, history = jobs.current_job(), jobs.list_jobs()[:20]
    except DatabaseError:  # job_panel above said so
        job, history = None, []
    st.markdown("#### Start a new training")
    st.caption("Training runs in a separate process: reloading, closing the tab or other users do not stop it. "
               "The new version is published **not active**; promote it after comparing.")
    start_form(data_ok, busy=job is not None and job.active)
    if history:
        with st.expander(f"Recent training jobs ({len(history)})"):
            st.dataframe(pd.DataFrame(ac.jobs_rows(history)), hide_index=True, width="stretch")


# --- models -------------------------------------------------------------------------------------
def activation_confirm(reg: Registry, active: str | None, promotable: list[str], chain: list[str]) -> None:
    """The confirmation of a pending promote / roll back (issue 22: one click put a smoke model in
    front of every clinician): what changes, side by side with the test set sizes, and loud
    warnings (smaller or different test set, worse, no test report, a quick run) that must be
    acknowledged. It acts only if the active version and the target are still what was shown
    (``chain``: ``admin.rollback_chain``, read once per render by the caller)."""
    pending = st.session_state.get(PENDING_ACTIVATION)
    if not pending:
        return
    action, target, was_active = pending
    still = target in promotable if action == "promote" else chain[:1] == [target]
    if was_active != active or not still:
        st.session_state.pop(PENDING_ACTIVATION, None)
        st.warning("The registry changed since you asked (another administrator, or the CLI): nothing was "
                   "changed. Choose again.", icon=":material/sync_problem:")
        return
    review = admin.activation_review(reg, target, active)
    verb = "Promote" if action == "promote" else "Roll back to"
    with st.container(border=True, key="activation_review"):
        st.markdown(f"##### {verb} {md_code(target)}?")
        st.markdown(f"It becomes the model of **every** session, at its next image; {md_code(active)} "
                    "stops being used." if active else "It becomes the model of **every** session, at its next image.")
        for w in review["warnings"]:
            st.error(md(w, MAX_MESSAGE), icon=":material/warning:")
        if review["rows"]:
            rows = [{"metric": r["metric"], f"{active} (active)": r[active], f"{target} (new)": r[target],
                     "difference": r["difference"]} for r in review["rows"]]
            st.table(compare_view.table(rows), hide_index=True)
            if review["comparable"]:
                st.caption(md(review["test_set"]["text"]) + " Differences: new minus active.")
        ack = True
        if review["warnings"]:
            ack = st.checkbox("I have read the warnings and still want to make it the active model",
                              key=f"activation_ack_{action}")
        y, n = st.columns(2)
        label = "Yes, promote it" if action == "promote" else "Yes, roll back"
        if y.button(label, key="activation_yes", type="primary", disabled=not ack):
            st.session_state.pop(PENDING_ACTIVATION, None)
            if action == "promote":
                _registry_action(lambda: admin.promote(reg, target, source="app", expect_active=active),
                                 lambda prev: f"{md_code(target)} is now the active model (was {md_code(prev or 'none')}).")
            else:
                _registry_action(lambda: admin.rollback(reg, source="app", expect_active=active, expect_target=target),
                                 lambda back: f"Rolled back: {md_code(back)} is the active model again.")
        if n.button("Cancel", key="activation_no"):
            st.session_state.pop(PENDING_ACTIVATION, None)
            st.rerun()


def activation_history(reg: Registry) -> None:
    """Every recorded activation, newest first (what Roll back steps back through)."""
    hist = admin.read_active_history(reg)
    with st.expander(f"Activation history ({len(hist)})", icon=":material/history:"):
        if not hist:
            st.caption("No activation recorded yet (promote, roll back, `train --activate`).")
            return
        rows = [{"time": h.get("time", ""), "action": h.get("action", ""), "activated": h.get("version", ""),
                 "replaced": h.get("previous") or "", "by": h.get("source", "")} for h in reversed(hist)]
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")  # plain text: names read from disk
        st.caption("Roll back steps back through these activations one at a time: it never re-activates the "
                   "version it just left (promote that one again for it).")


def models_tab() -> None:
    reg = Registry()
    infos = reg.versions()  # one listing and check of the versions for the whole tab
    rows = ac.versions_rows(reg, infos)
    if not rows:
        st.info(f"The registry at {md_code(reg.root)} has no versions yet. Train one in the **Retrain** tab.")
        return
    active = reg.active_version()
    st.dataframe(
        pd.DataFrame(rows), hide_index=True, width="stretch",
        column_config={
            "version": st.column_config.TextColumn(width=ac.version_column_px(r["version"] for r in rows)),
            **{k: st.column_config.NumberColumn(format="%.3f") for k in ("ROC-AUC", "val ROC-AUC")},
            **{k: st.column_config.NumberColumn(format="%.1f %%") for k in ("sensitivity", "specificity", "accuracy")},
        },
    )
    st.caption("● = the active version. Test-split figures. Creation time, input size, training data and wall time: "
               "**Compare two versions** below.")
    pointer = reg.active_pointer_problem()
    if pointer:
        st.warning(f"{md(pointer, MAX_MESSAGE)} Promote a version below to write a new pointer.", icon=":material/link_off:")
    broken = dict(ac.broken_versions(reg, infos))  # refused for use; promote another one, then delete them
    for name, problems in broken.items():
        advice = ("Promote another version, then delete it." if name == active else "Delete it (or leave it: "
                  "it cannot be activated).")
        st.error(components.broken_notice(name, problems, advice)
                 + "".join(f"\n- {md(p, MAX_MESSAGE)}" for p in problems[1:]), icon=":material/report:")
    names = [r["version"].split()[0] for r in rows]  # "v0003 ●" -> "v0003" (names have no spaces)
    others = [n for n in names if n != active]
    promotable = [n for n in others if n not in broken]

    c1, c2, c3 = st.columns(3)
    chain = admin.rollback_chain(reg)
    target = chain[0] if chain else None
    with c1:
        st.markdown("##### Promote")
        sel = st.selectbox("Version to activate", promotable, key="promote_sel", disabled=not promotable, format_func=plain,
                           help="Broken versions cannot be activated. You confirm after seeing what changes.")
        if st.button("Promote…", key="promote_btn", disabled=not promotable, type="primary"):
            st.session_state[PENDING_ACTIVATION] = ("promote", sel, active)
            st.rerun()
    with c2:
        st.markdown("##### Roll back")
        if target:
            later = "".join(f", then {md_code(v)}" for v in chain[1:4]) + (", …" if len(chain) > 4 else "")
            st.caption(f"Steps back one activation, to **{md_code(target)}**" + (f" (further roll backs: {later[2:]})" if later else "")
                       + ". History: below.")
        else:
            st.caption("No earlier active version to go back to (none recorded, or deleted since).")
        if st.button("Roll back…", key="rollback_btn", disabled=target is None):
            st.session_state[PENDING_ACTIVATION] = ("rollback", target, active)
            st.rerun()
    with c3:
        st.markdown("##### Delete")
        pending = st.session_state.get("pending_delete")
        if pending and pending in others:
            st.warning(f"Delete **{md_code(pending)}** permanently? This cannot be undone.")
            y, n = st.columns(2)
            if y.button("Yes, delete", key="delete_confirm", type="primary"):
                st.session_state.pop("pending_delete", None)
                try:
                    admin.delete_version(reg, pending, source="app")
                except (RegistryError, ValueError, OSError) as e:
                    st.error(md(e, MAX_MESSAGE))
                else:
                    components.flash("success", f"Deleted {md_code(pending)}.")
                    st.rerun()
            if n.button("Keep it", key="delete_abort"):
                st.session_state.pop("pending_delete", None)
                st.rerun()
        else:
            dsel = st.selectbox("Version to delete (not the active one)", others, key="delete_sel", disabled=not others, format_func=plain)
            if st.button("Delete…", key="delete_btn", disabled=not others):
                st.session_state["pending_delete"] = dsel
                st.rerun()

    activation_confirm(reg, active, promotable, chain)
    activation_history(reg)

    st.markdown("#### Compare two versions")
    if len(names) < 2:
        st.caption("Compare needs at least two versions.")
        return
    default_a = names.index(active) if active in names else 0
    a_col, b_col = st.columns(2)
    a = a_col.selectbox("Version A", names, index=default_a, key="cmp_a", format_func=plain)
    b = b_col.selectbox("Version B", names, index=0 if default_a != 0 else 1, key="cmp_b", format_func=plain)
    compare_view.render(ac.compare(reg, a, b), key="cmp")


# --- audit --------------------------------------------------------------------------------------
def audit_tab() -> None:
    from core.db import DatabaseError

    try:  # the shared database: every app instance's events in one trail
        where, records = audit.database().describe(), audit.read()
    except DatabaseError as e:
        st.error(f"The audit trail cannot be read: {md(e, MAX_MESSAGE)}")
        return
    st.caption(f"Database {md_code(where)} — {len(records)} event(s). Predictions carry an image SHA-256, never the image.")
    if not records:
        st.info("The audit log is empty.")
        return
    c1, c2, c3 = st.columns(3)
    actions = c1.multiselect("Actions", list(audit.ACTIONS), key="audit_actions")
    today = _dt.datetime.now(_dt.timezone.utc).date()
    # The empty range comes from Session State, not value=(): with bounds, a value= default made
    # Streamlit log a "default value ... also set via the Session State API" stack trace after any
    # st.rerun() (Accept relabel, Promote...) (issue 22 item 11).
    st.session_state.setdefault("audit_dates", ())
    rng = c2.date_input("Dates (UTC; empty = all)", min_value=_dt.date(2020, 1, 1),
                        max_value=today + _dt.timedelta(days=1), key="audit_dates")
    rng = tuple(rng) if isinstance(rng, (tuple, list)) else ((rng,) if isinstance(rng, _dt.date) else ())
    start, end = (rng + (None, None))[:2]
    if start is not None and end is None:
        end = start  # one day picked so far
    version = c3.text_input("Model version contains", key="audit_version")
    rows = ac.filter_audit(records, actions, start, end, version)
    # built when clicked, not on every rerun of the page (all tabs run on each one)
    st.download_button("Download CSV", lambda: ac.audit_csv(rows), file_name="pneumoscope-audit.csv", mime="text/csv",
                       icon=":material/download:", disabled=not rows)
    if not rows:
        st.info("No events match these filters.")
        return
    shown = rows[:5000]
    if len(rows) > len(shown):
        st.caption(f"Showing the newest {len(shown)} of {len(rows)} matching events; the CSV has all of them.")
    shown = ac.percent_records(shown)  # the threshold in percent, as in the CSV
    st.dataframe(pd.DataFrame(shown, columns=ac.audit_columns(shown)), hide_index=True, width="stretch")


# --- page ---------------------------------------------------------------------------------------
def main() -> None:
    st.title("Administration")
    if not gate():
        return
    with st.sidebar:
        if st.button("Sign out", key="admin_signout", icon=":material/logout:"):
            st.session_state.pop("admin_token", None)
            st.rerun()
    with st.container():  # always drawn, so the tabs below keep their place whether a message shows or not
        components.show_flash()
    # The selected tab is widget state (key + on_change): it survives every rerun. Without it the
    # tabs jumped back to Retrain after Accept, Promote, Delete, Start training... (issue 22).
    # Every tab is still drawn on each run (the page's tests and the job fragment rely on it).
    t_retrain, t_models, t_audit, t_feedback = st.tabs(list(TABS), key=TAB_KEY, on_change="rerun")
    with t_retrain:
        retrain_tab()
    with t_models:
        models_tab()
    with t_audit:
        audit_tab()
    with t_feedback:
        from ui import feedback_admin

        feedback_admin.feedback_tab(Registry())  # review queue, stored pixels, effect on validation (issue 17)


main()

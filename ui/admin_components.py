"""Helpers of the admin page (app_pages/admin.py): plain values in, plain values out.

Tables are lists of dicts (the page turns them into DataFrames); nothing here writes to the
page except :func:`progress_panel`. Numbers are formatted by core.formatting; the version
comparison is core.evaluation.compare_reports, drawn by ui.compare_view.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from pathlib import Path
from typing import Any, Iterable

from core.config import Config

from core.formatting import duration, pct_value
from ui.text import MAX_MESSAGE, md, md_code


# --- retrain form -------------------------------------------------------------------------------
WEIGHT_MODES = ("imagenet", "local file", "none")
# Test hook for the real-browser test (tests/test_browser_reader_feedback.py): with
# $PNEUMOSCOPE_TEST_TINY_TRAINING=1 in the app server's environment, the retrain form's config is
# replaced by the tiny "micro" test backbone recipe, so a job finishes in seconds. Off by default;
# never set it on a real deployment.
TEST_TINY_TRAINING_ENV = "PNEUMOSCOPE_TEST_TINY_TRAINING"
TEST_TINY_TRAINING = dict(backbone="micro", input_size=32, weights="none", head_units=8, head_epochs=2,
                          finetune_epochs=1, batch_size=8, early_stopping_patience=3, val_fraction=0.3)
WEIGHT_LABELS = {"imagenet": "imagenet", "local file": "local file", "none": "none (random initialisation)"}
IMAGENET_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_HOST = ("storage.googleapis.com", 443)
IMAGENET_CHECK_TTL_S = 300.0
_imagenet_cache: dict = {}


def keras_models_dir() -> Path:
    """Where Keras caches downloaded weights: $KERAS_HOME/models, else ~/.keras/models."""
    base = os.environ.get("KERAS_HOME") or str(Path("~/.keras").expanduser())
    return Path(base) / "models"


def imagenet_status(timeout: float = 1.5, *, now: float | None = None) -> tuple[bool, str]:
    """(available, how) for the ImageNet VGG-19 weights, cheaply and cached for 5 minutes:
    a cached copy in the Keras models folder, else a TCP connect to the download host with a
    short timeout (no download, no DNS retry loop)."""
    import socket
    import time

    now = time.monotonic() if now is None else now
    hit = _imagenet_cache.get("v")
    if hit is not None and now - hit[0] < IMAGENET_CHECK_TTL_S:
        return hit[1]
    cached = keras_models_dir() / IMAGENET_FILE
    if cached.is_file():
        res = (True, f"cached copy in {cached.parent}")
    else:
        try:
            with socket.create_connection(IMAGENET_HOST, timeout=timeout):
                res = (True, f"{IMAGENET_HOST[0]} is reachable")
        except OSError:
            res = (False, f"no cached copy in {cached.parent} and {IMAGENET_HOST[0]} cannot be reached")
    _imagenet_cache["v"] = (now, res)
    return res


def imagenet_unavailable_message(how: str) -> str:
    return (
        f"**ImageNet weights cannot be had on this machine** ({md(how)}), so a training that starts from "
        f"them would fail. Choose **Starting weights → {WEIGHT_LABELS['none']}**, or **local file** with "
        f"a copy of `{IMAGENET_FILE}` on the server."
    )


def weights_mode(weights: str) -> str:
    if weights == "imagenet":
        return "imagenet"
    if weights in (None, "none", ""):
        return "none"
    return "local file"


def build_config(base: Config | None = None, *, input_size: int, weights_mode: str, weights_path: str = "",
                 head_epochs: int, finetune_epochs: int, head_learning_rate: float,
                 finetune_learning_rate: float, batch_size: int, val_fraction: float, seed: int) -> Config:
    """The form's values as a validated Config. Raises ValueError with a readable message."""
    base = base or Config()
    if weights_mode == "imagenet":
        weights = "imagenet"
    elif weights_mode == "none":
        weights = "none"
    elif weights_mode == "local file":
        weights = (weights_path or "").strip()
        if not weights:
            raise ValueError("Enter the path of a local VGG-19 weights file (.h5 / .weights.h5) on the server.")
        if not Path(weights).expanduser().is_file():
            raise ValueError(f"Weights file not found on the server: {weights}")
    else:
        raise ValueError(f"weights source must be one of {WEIGHT_MODES}. Received: {weights_mode!r}")
    cfg = base.replace(
        input_size=int(input_size), weights=weights, head_epochs=int(head_epochs),
        finetune_epochs=int(finetune_epochs), head_learning_rate=float(head_learning_rate),
        finetune_learning_rate=float(finetune_learning_rate), batch_size=int(batch_size),
        val_fraction=float(val_fraction), seed=int(seed),
    )  # dataclasses.replace runs __post_init__ -> validate()
    if os.environ.get(TEST_TINY_TRAINING_ENV) == "1":  # test hook, off by default (see TEST_TINY_TRAINING)
        cfg = cfg.replace(**TEST_TINY_TRAINING)
    return cfg


# --- registry tables -------------------------------------------------------------------------------
def _short_weights(source: Any) -> str:
    s = str(source or "n/a")
    return "none" if s.startswith("none") else ("local file" if s.startswith("local file") else s)


def _score(x: Any) -> float | None:
    """A score rounded to what the table shows (3 decimals): the grid's text is then the value drawn."""
    return round(float(x), 3) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def version_column_px(names: Iterable[str]) -> int:
    """Width of the models table's version column: its longest entry in full ("v0002-smoke ●",
    "… — BROKEN"), the same before and after a promote moves the ●."""
    return max([len(n) for n in names] + [8]) * 7 + 20


def versions_rows(registry, infos: list | None = None) -> list[dict]:
    """One row per complete version, newest first: the metrics right after the name, so they
    are visible without scrolling at 1024 px (creation time, input size, data counts and wall
    time are in the Compare table). ``infos``: ``registry.versions()`` when the caller has it."""
    rows = []
    for v in reversed(registry.versions() if infos is None else infos):
        c = v.card or {}  # {} for a broken version (its files are not used)
        t = c.get("test") or {}
        rows.append({
            # ● = the active version; BROKEN: refused for use, why in broken_versions() (issue 21)
            "version": v.name + (" ●" if v.active else "") + (" — BROKEN" if v.broken else ""),
            "ROC-AUC": _score(t.get("roc_auc")),
            "sensitivity": pct_value(t.get("sensitivity")),
            "specificity": pct_value(t.get("specificity")),
            "accuracy": pct_value(t.get("accuracy")),
            "val ROC-AUC": _score(c.get("val_roc_auc")),
            "weights": _short_weights(c.get("weights_source")),
        })
    return rows


def broken_versions(registry, infos: list | None = None) -> list[tuple[str, list[str]]]:
    """(name, problems) of every broken version, newest first: refused by name for use, listed so
    the admin can activate another one and delete it. ``infos`` as for :func:`versions_rows`."""
    return [(v.name, v.problems) for v in reversed(registry.versions() if infos is None else infos) if v.broken]


def read_version_json(registry, name: str, filename: str) -> dict:
    """``filename`` of version ``name`` ({} when absent, damaged or not a JSON object): core's
    tolerant reader (``Registry.version_json``); the broken-versions list says why."""
    return registry.version_json(name, filename)[0]


def compare(registry, a: str, b: str) -> dict:
    """Side-by-side view of two registry versions: :func:`core.evaluation.compare_reports` of
    their metrics.json and card.json (drawn by :func:`ui.compare_view.render`)."""
    from core.evaluation import compare_reports

    def read(name: str, filename: str) -> dict:
        return read_version_json(registry, name, filename)

    return compare_reports(read(a, "metrics.json"), read(b, "metrics.json"), a, b, read(a, "card.json"), read(b, "card.json"))


# --- audit viewer ---------------------------------------------------------------------------------
AUDIT_COLUMNS = ("time", "action", "outcome", "model_version", "version", "job_id", "previous", "error")


def _record_date(rec: dict) -> _dt.date | None:
    t = rec.get("time")
    if not isinstance(t, str):
        return None
    try:
        return _dt.datetime.fromisoformat(t.replace("Z", "+00:00")).date()
    except ValueError:
        return None


def record_version(rec: dict) -> str:
    return str(rec.get("model_version") or rec.get("version") or "")


def filter_audit(records: Iterable[dict], actions: Iterable[str] | None = None, start: _dt.date | None = None,
                 end: _dt.date | None = None, version: str | None = None) -> list[dict]:
    """Records matching every given filter (dates inclusive, UTC), newest first."""
    wanted = set(actions) if actions else None
    ver = (version or "").strip().lower()
    out = []
    for r in records:
        if wanted is not None and r.get("action") not in wanted:
            continue
        if start or end:
            d = _record_date(r)
            if d is None or (start and d < start) or (end and d > end):
                continue
        if ver and ver not in record_version(r).lower() and ver not in str(r.get("previous") or "").lower():
            continue
        out.append(r)
    out.reverse()
    return out


def audit_columns(records: Iterable[dict]) -> list[str]:
    """Known columns first (in a fixed order), then any others in first-seen order."""
    seen: list[str] = []
    for r in records:
        for k in r:
            if k not in seen:
                seen.append(k)
    return [c for c in AUDIT_COLUMNS if c in seen] + [c for c in seen if c not in AUDIT_COLUMNS]


def percent_records(records: list[dict]) -> list[dict]:
    """Audit events as shown and exported: the threshold in percent, as ``threshold_pct``
    (core.audit.PERCENT_FIELDS, core.formatting.pct_columns); the log itself keeps fractions."""
    from core.audit import PERCENT_FIELDS
    from core.formatting import pct_columns

    return [pct_columns(r, PERCENT_FIELDS) for r in records]


def audit_csv(records: list[dict]) -> bytes:
    """The audit rows as CSV (core.csvsafe: dict/list cells as JSON, formula cells neutralised),
    the threshold in percent (``threshold_pct``)."""
    from core.csvsafe import csv_bytes

    rows = percent_records(records)
    return csv_bytes(rows, audit_columns(rows))


# --- job display ----------------------------------------------------------------------------------
STATUS_ICONS = {"queued": ":material/hourglass_top:", "running": ":material/sync:", "succeeded": ":material/check_circle:",
                "failed": ":material/error:", "cancelled": ":material/cancel:"}
PHASE_NAMES = {
    "data": "Preparing data", "features": "Computing frozen-base features", "head": "Phase 1 — training the head",
    "finetune": "Phase 2 — fine-tuning all layers", "calibrate": "Calibrating (threshold, temperature, OOD)",
    "evaluate": "Evaluating", "done": "Finished training — publishing",
}


ENDED_PHASE = {"succeeded": "done", "cancelled": "cancelled", "failed": "failed"}


def stopped_where(summary) -> str:
    """Where an ended job stopped, in words, from its last progress events."""
    s = summary
    if not s.n_events or s.phase is None:
        return "before training started"
    if s.phase == "done":
        return "after training, before publishing"
    name = PHASE_NAMES.get(s.phase, s.phase.replace("_", " "))
    epoch = f" (epoch {s.epoch}/{s.epochs})" if s.epoch and s.epochs else ""
    return f"during {name[:1].lower() + name[1:]}{epoch}"


def job_stage(job, summary) -> str:
    """The one line after a job's status (plain text; the page escapes it). A running job: its
    phase. An ended one: what happened, never the last phase's own words -- a job cancelled
    after its "done" event read "cancelled · Finished training — publishing" (issue 22)."""
    s = summary
    if job.active:
        if not s.n_events:
            return "Starting the training process (loading TensorFlow)…"
        return PHASE_NAMES.get(s.phase or "", (s.phase or "").replace("_", " "))
    if job.status == "succeeded":
        return f"published as {job.version} (not active)" if job.version else "published"
    if job.status == "cancelled":
        return f"cancelled {stopped_where(s)}; nothing was published"
    if job.status == "failed":
        return f"failed {stopped_where(s)}; nothing was published"
    return ""


def jobs_rows(job_list) -> list[dict]:
    """Recent jobs for a small history table."""
    rows = []
    for j in job_list:
        cfg = (j.request or {}).get("config") or {}
        rows.append({
            "job": j.job_id, "status": j.status, "created": j.state.get("created", ""),
            "finished": j.state.get("finished") or "", "version": j.version or "",
            "input px": cfg.get("input_size"), "weights": cfg.get("weights", ""),
            "epochs": f"{cfg.get('head_epochs', '?')} + {cfg.get('finetune_epochs', '?')}",
            "reason": j.error or "",
        })
    return rows


def curves_rows(summary) -> list[dict]:
    """Epoch rows for the live loss / AUC charts."""
    return summary.epoch_table()


# Lines TensorFlow/CUDA/absl print at start-up, of no use to an administrator.
_NOISE = re.compile(
    r"absl::InitializeLog|cuInit|cudart_stub|cuda_(?:dnn|fft|blas|executor|platform|diagnostics)|oneDNN custom operations|"
    r"TF_ENABLE_ONEDNN_OPTS|cpu_feature_guard|This TensorFlow binary is optimized|rebuild TensorFlow with the appropriate|"
    r"computation_placer|Unable to register cu(?:DNN|FFT|BLAS) factory|TF-TRT Warning|port\.cc:\d+\]|"
    r"Could not find cuda drivers|GPU will not be used|no NVIDIA GPU|kernel driver does not appear"
)
_GLOG_INFO = re.compile(r"^I\d{4} \d\d:\d\d:\d\d")


def clean_log(text: str) -> str:
    """The job log without TensorFlow/CUDA start-up noise (our own log lines are kept)."""
    return "\n".join(ln for ln in (text or "").splitlines() if not (_NOISE.search(ln) or _GLOG_INFO.match(ln)))


def _parse_time(s: Any) -> float | None:
    if not isinstance(s, str) or not s:
        return None
    try:
        return _dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def live_figures(job, summary, now: float | None = None) -> dict[str, str]:
    """Phase / Epoch / Elapsed / Phase ETA as shown, computed at ``now`` (default: time.time()).

    Elapsed runs from the job's start time (it keeps moving between progress events); the ETA
    is the summary's estimate minus the time since the last event; Epoch says where the job is
    in phases without epochs instead of a bare dash.
    """
    import time

    now = time.time() if now is None else now
    s = summary
    started = _parse_time(job.state.get("started")) or _parse_time(job.state.get("created"))
    finished = _parse_time(job.state.get("finished"))
    end = now if job.active or finished is None else finished
    elapsed = duration(max(end - started, 0.0)) if started else "—"
    if s.epochs:
        epoch = f"{s.epoch or 0}/{s.epochs}"
    elif s.phase in (None, "data", "features"):
        epoch = "not started" if job.active else "—"
    elif s.phase in ("calibrate", "evaluate", "done"):
        epoch = "all done"
    else:
        epoch = "—"
    if not job.active and job.status in ("cancelled", "failed") and s.phase == "done":
        epoch = "all done"  # training itself had finished; the job stopped before publishing
    eta = s.eta_s
    if eta is not None and job.active:
        since = max(now - s.last_event_at, 0.0) if s.last_event_at is not None else 0.0
        eta_text = duration(max(eta - since, 0.0))
    elif job.active and s.phase not in ("done",):
        eta_text = "estimating…"
    else:
        eta_text = "—"
    if job.active:
        phase = (s.phase or "starting").replace("_", " ")
    else:  # an ended job shows its outcome, not the phase it was in (issue 22)
        phase = ENDED_PHASE.get(job.status, job.status)
    return {"phase": phase, "epoch": epoch, "elapsed": elapsed, "eta": eta_text}


def progress_panel(job, summary, log_text: str) -> None:
    """Live view of one job (called inside an auto-refreshing fragment)."""
    import pandas as pd
    import streamlit as st

    s = summary
    stage = job_stage(job, s)
    # The job's id, status, phase and messages are stored data: shown as text (issue 21).
    st.markdown(f"{STATUS_ICONS.get(job.status, '')} **Job {md_code(job.job_id)} — {md(job.status)}**"
                + (f" · {md(stage)}" if stage else ""))
    live = live_figures(job, s)
    # Two rows of two: four metrics side by side cut "1 min 40 s" at 1024 px.
    cols = [c for _ in range(2) for c in st.columns(2)]
    cols[0].metric("Phase", md(live["phase"]))
    cols[1].metric("Epoch", live["epoch"])
    cols[2].metric("Elapsed", live["elapsed"], help="Since the job started (including loading TensorFlow).")
    cols[3].metric("Phase ETA", live["eta"],
                   help="Extrapolated from this phase so far; early stopping may end it sooner.")
    if s.message and job.active:  # an ended job's outcome is said below the panel, once
        st.caption(md(s.message, MAX_MESSAGE))
    bf = s.batch_fraction
    if bf is not None and job.active:
        label = f"batch {s.batch}/{s.batches}"
        if s.batch_metrics.get("loss") is not None:
            label += f" · loss {s.batch_metrics['loss']:.4f}"
        st.progress(bf, text=label)
    rows = curves_rows(s)
    if rows:
        df = pd.DataFrame(rows).set_index("epoch")
        c1, c2 = st.columns(2)
        loss_cols = [c for c in ("loss", "val_loss") if c in df]
        auc_cols = [c for c in ("auc", "val_auc") if c in df]
        if loss_cols:
            c1.markdown("Loss per epoch")
            c1.line_chart(df[loss_cols], height=220)
        if auc_cols:
            c2.markdown("ROC-AUC per epoch")
            c2.line_chart(df[auc_cols], height=220)
    with st.expander("Log (last lines)", expanded=job.status == "failed"):
        st.code(clean_log(log_text) or "(empty)", language="text")

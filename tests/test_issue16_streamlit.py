"""Issue 16, Streamlit idioms: a promote clears no global cache (the loaders key on ACTIVE and
file times) and the Predict page keeps one session key for the clicked row, not one per batch;
the dataset page's counts are core.dataset.DatasetIndex.counts."""

from __future__ import annotations

import pytest
import streamlit
from test_admin_page import PASSWORD, _app, _confirm_promote, _login, env, reg_env  # noqa: F401 - fixtures
from test_app_pages import SAMPLES, audit_lines, open_page


@pytest.mark.slow
def test_promote_clears_no_cache_and_the_predict_page_uses_the_new_version(reg_env, monkeypatch):
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


def _files(cls: str, n: int):
    return [(p.name, p.read_bytes(), "image/jpeg") for p in sorted((SAMPLES / "test" / cls).iterdir())[:n]]


def test_batches_leave_one_row_key_in_the_session(reg_env):
    at = open_page()
    for files in (_files("NORMAL", 2), _files("PNEUMONIA", 2), _files("NORMAL", 3)):
        at.file_uploader[0].set_value(files).run()
        assert not at.exception, [e.value for e in at.exception]
        assert len(at.dataframe[0].value) == len(files)
    keys = [str(k) for k in at.session_state]
    assert not [k for k in keys if k.startswith("last-row-")], keys
    batch_id, row = at.session_state["predict_last_row"]
    assert row is None and isinstance(batch_id, int)


def test_dataset_page_counts_are_the_dataset_index_counts(env, monkeypatch):
    from core.dataset import discover
    from ui import charts

    seen = []
    orig = charts.counts_bar
    monkeypatch.setattr(charts, "counts_bar", lambda counts: seen.append(counts) or orig(counts))
    at = open_page("app_pages/dataset.py")
    assert not at.exception, [e.value for e in at.exception]
    assert seen and seen[-1] == discover(SAMPLES).counts()
    assert seen[-1] == {"train": {"NORMAL": 10, "PNEUMONIA": 10}, "val": {"NORMAL": 1, "PNEUMONIA": 1},
                        "test": {"NORMAL": 4, "PNEUMONIA": 4}}


def test_every_streamlit_cache_lives_in_ui_loaders():
    """ui/loaders.py says it holds every st.cache_data / st.cache_resource function, and no page
    clears the caches of all users."""
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    files = [repo / "streamlit_app.py", *(repo / "app_pages").glob("*.py"), *(repo / "ui").glob("*.py")]
    outside = [f.relative_to(repo).as_posix() for f in files if f.name != "loaders.py"
               and ("st.cache_data" in f.read_text(encoding="utf-8") or "st.cache_resource" in f.read_text(encoding="utf-8"))]
    assert outside == [], outside
    assert "st.cache_data" in (repo / "ui" / "loaders.py").read_text(encoding="utf-8")

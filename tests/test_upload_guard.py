"""Tests for ui.upload_guard: the upload limits hold in Streamlit's upload store on the server."""

from __future__ import annotations

import pytest
from starlette.exceptions import HTTPException
from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
from streamlit.runtime.uploaded_file_manager import UploadedFileRec

from core import imageio
from test_app_pages import app_registry, env, open_page  # noqa: F401 - fixtures
from ui import upload_guard


def rec(file_id: str, n: int) -> UploadedFileRec:
    return UploadedFileRec(file_id=file_id, name=f"{file_id}.png", type="image/png", data=b"x" * n)


@pytest.fixture
def store(monkeypatch):
    monkeypatch.setattr(imageio, "MAX_UPLOAD_FILES", 3)
    monkeypatch.setattr(imageio, "MAX_UPLOAD_TOTAL_BYTES", 1000)
    monkeypatch.setattr(upload_guard, "MAX_SERVER_BYTES", 1500)
    assert upload_guard.install()
    return MemoryUploadedFileManager("/_stcore/upload_file")


def test_a_session_cannot_store_more_files_than_the_limit(store):
    for i in range(3):
        store.add_file("s1", rec(f"f{i}", 10))
    with pytest.raises(HTTPException) as e:
        store.add_file("s1", rec("f3", 10))
    assert e.value.status_code == 413 and "at most 3 files" in e.value.detail
    assert len(store.file_storage["s1"]) == 3  # refused before it was stored
    store.add_file("s2", rec("f0", 10))  # another session is not affected
    store.remove_file("s1", "f0")
    store.add_file("s1", rec("f3", 10))  # room again after a removal


def test_a_session_cannot_store_more_bytes_than_the_limit(store):
    store.add_file("s1", rec("a", 600))
    with pytest.raises(HTTPException) as e:
        store.add_file("s1", rec("b", 401))
    assert e.value.status_code == 413 and "MB per session" in e.value.detail
    store.add_file("s1", rec("a", 900))  # replacing a file counts the difference only
    assert sum(len(f.data) for f in store.file_storage["s1"].values()) == 900


def test_all_sessions_together_are_capped(store):
    store.add_file("s1", rec("a", 800))
    store.add_file("s2", rec("a", 600))
    with pytest.raises(HTTPException) as e:
        store.add_file("s3", rec("a", 200))
    assert "uploads already" in e.value.detail
    store.remove_session_files("s1")
    store.add_file("s3", rec("a", 200))


def test_install_is_idempotent_and_the_app_installs_it(env, monkeypatch):
    assert upload_guard.install() and upload_guard.install()
    guarded = MemoryUploadedFileManager.add_file
    assert getattr(guarded, "pneumoscope_guard", False)
    assert not getattr(guarded.__wrapped__, "pneumoscope_guard", False)  # wrapped once, not twice
    # from a process without the guard, running the app installs it
    monkeypatch.setattr(MemoryUploadedFileManager, "add_file", guarded.__wrapped__)
    monkeypatch.setattr(upload_guard, "_installed", False)
    open_page()
    assert getattr(MemoryUploadedFileManager.add_file, "pneumoscope_guard", False)


def test_the_config_caps_each_file_at_the_decoder_limit():
    import tomllib
    from pathlib import Path

    cfg = tomllib.loads((Path(__file__).resolve().parent.parent / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["maxUploadSize"] * 2**20 == imageio.MAX_BYTES

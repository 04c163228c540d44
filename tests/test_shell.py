"""The app's frame (streamlit_app.py): the shared sidebar is drawn once, by the entrypoint, on every
page and on every rerun; the pages live outside a legacy ``pages/`` folder, so the first visit after
a server start through a deep link still runs the entrypoint (page config, our menu, the sidebar)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_app_pages import SAMPLES, VERDICT_TITLES, app_registry, env, open_page, texts  # noqa: F401 - fixtures
from tests.helpers import copy_artifacts

REPO = Path(__file__).resolve().parent.parent
PAGES = ["app_pages/predict.py", "app_pages/dataset.py", "app_pages/evaluation.py", "app_pages/worklist.py",
         "app_pages/reader_study.py", "app_pages/admin.py"]
MENU = ["Predict", "Dataset", "Evaluation", "PACS worklist", "Reader study", "Admin"]


def _cards(at) -> list[str]:
    return [m.value for m in at.sidebar.markdown if m.value == "#### Active model"]


@pytest.mark.parametrize("page", [p if p.endswith(("predict.py", "admin.py")) else pytest.param(p, marks=pytest.mark.slow)
                                  for p in PAGES])  # two pages in the default run, every page in CI's slow set
def test_every_page_gets_the_sidebar_once_from_the_entrypoint(env, page):  # noqa: F811
    at = open_page(None if page.endswith("predict.py") else page)
    assert _cards(at) == ["#### Active model"], texts(at.sidebar.markdown)
    assert "v0001-tiny" in texts(at.sidebar.markdown)
    assert "Research demo — not a medical device" in texts(at.sidebar.warning)
    at.run()  # a plain rerun keeps the frame (it used to vanish: the page ran without the entrypoint)
    assert not at.exception, [e.value for e in at.exception]
    assert _cards(at) == ["#### Active model"]


@pytest.mark.slow  # an AppTest flow of 1.4-2.3 s: CI's slow set keeps the default run under 3 min
def test_the_sidebar_survives_a_widget_rerun_on_the_predict_page(env):  # noqa: F811
    at = open_page()
    at.selectbox(key="sample_pick").set_value(0)
    at.button(key="sample_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    verdicts = [m.value for m in at.markdown if m.value.startswith("### ")]
    assert any(t in v for v in verdicts for t in VERDICT_TITLES), verdicts  # the page ran its body
    assert _cards(at) == ["#### Active model"]
    assert "v0001-tiny" in texts(at.sidebar.markdown)


def test_the_entrypoint_routes_every_page_from_app_pages_with_a_local_tab_icon(env, monkeypatch):  # noqa: F811
    """What streamlit_app.py hands Streamlit when it runs: the six pages of app_pages/ in the menu's
    order, and a tab icon that is a local file (a ":material/...:" page icon makes the browser fetch
    the favicon from fonts.gstatic.com: net::ERR_NAME_NOT_RESOLVED offline). No legacy pages/
    folder: Streamlit runs one next to the entrypoint as a v1 multipage app until the process's
    first st.navigation call (see test_deep_link_after_a_server_start)."""
    import streamlit as st

    seen: dict[str, list] = {"config": [], "pages": []}
    real_config, real_page = st.set_page_config, st.Page

    def set_page_config(*a, **k):
        seen["config"].append(k)
        return real_config(*a, **k)

    def page(target, **k):
        seen["pages"].append((str(target), k.get("title")))
        return real_page(target, **k)

    monkeypatch.setattr(st, "set_page_config", set_page_config)
    monkeypatch.setattr(st, "Page", page)
    open_page()
    assert seen["pages"] == list(zip(PAGES, MENU))
    assert all((REPO / p).is_file() for p in PAGES) and not (REPO / "pages").exists()
    [config] = seen["config"]
    icon = Path(str(config["page_icon"]))
    assert icon.is_absolute() and icon.is_file() and icon.suffix == ".png"


@pytest.mark.browser
def test_deep_link_after_a_server_start_runs_the_entrypoint(trained_registry, tmp_path):
    """The first request of a fresh server is /evaluation: the tab carries the app's page config,
    the menu is ours (five titled pages, no file names) and the sidebar card is there."""
    from test_browser_e2e import CHROMIUM, CHROMIUM_ARGS, require_browser, streamlit_server

    require_browser()
    from playwright.sync_api import sync_playwright

    with streamlit_server(tmp_path, trained_registry.root, SAMPLES) as srv, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(srv["url"] + "/evaluation")  # the server's very first script run
            page.get_by_role("heading", name="Model evaluation").wait_for(timeout=120_000)
            sidebar = page.locator('[data-testid="stSidebar"]')
            sidebar.get_by_text("Active model").wait_for(timeout=60_000)
            assert page.title().startswith("PneumoScope"), page.title()
            nav = [t.strip().splitlines()[-1] for t in page.locator('[data-testid="stSidebarNav"] a').all_inner_texts()]  # after the icon ligature
            assert nav == MENU, nav
            assert sidebar.get_by_text("v0001-tiny").count() >= 1
        finally:
            browser.close()


@pytest.mark.slow  # an AppTest flow of ~2 s: CI's slow set keeps the default run well under 3 min
def test_a_broken_card_or_registry_never_takes_a_page_down(env, monkeypatch):  # noqa: F811
    """The frame runs before every page, the admin page included: an unreadable card or registry
    folder shows 'n/a' or 'no model' in the sidebar, and the page still renders."""
    from ui import loaders

    def bad_card(version):
        raise ValueError(f"Received: version={version!r}")

    monkeypatch.setattr(loaders, "card", bad_card)
    at = open_page("app_pages/admin.py")
    assert at.title[0].value == "Administration"
    side = texts(at.sidebar.markdown)
    assert "v0001-tiny" in side and "Input size: **n/a**" in side and "Test ROC-AUC: **n/a**" in side

    def unreadable():
        raise PermissionError("registry folder not readable")

    monkeypatch.setattr(loaders, "active_version", unreadable)
    at = open_page("app_pages/admin.py")
    assert at.title[0].value == "Administration"
    assert "No model is active" in texts(at.sidebar.info)


@pytest.mark.slow
def test_a_broken_active_version_is_named_in_the_frame_and_no_page_goes_down(env, monkeypatch, trained_registry,  # noqa: F811
                                                                              tmp_path):
    """Issue 21: card.json of the wrong JSON type raised on every page. Now the frame names the
    broken active version and why on every page, and each page still renders."""

    root = tmp_path / "artifacts"
    copy_artifacts(trained_registry.root, root)
    (root / "models" / "v0001-tiny" / "card.json").write_text('["a", "list"]')
    monkeypatch.setenv("PNEUMOSCOPE_ARTIFACTS", str(root))
    for page in PAGES:
        at = open_page(page)  # asserts that no exception was raised
        side = texts(at.sidebar.error)
        assert "`v0001-tiny` is broken" in side and "card.json: card must be a JSON object" in side, (page, side)
        assert "Input size" not in texts(at.sidebar.markdown)  # no card drawn from a refused file
    at = open_page()  # asking the Predict page for a verdict: refused by name, no traceback
    at.button(key="sample_go").click().run()
    assert not at.exception and "'v0001-tiny' could not be loaded: it is broken" in texts(at.error)


@pytest.mark.parametrize("page", ["app_pages/predict.py",
                                  pytest.param("app_pages/admin.py", marks=pytest.mark.slow),
                                  pytest.param("app_pages/reader_study.py", marks=pytest.mark.slow)])
def test_an_unreachable_database_is_a_sentence_on_every_page(env, monkeypatch, page):  # noqa: F811
    """PNEUMOSCOPE_DATABASE_URL naming a PostgreSQL that is down: each page says so, no traceback,
    and the password in the URL is never shown."""
    from tests.helpers import free_port

    monkeypatch.setenv("PNEUMOSCOPE_DATABASE_URL", f"postgresql+psycopg://app:s3cret@127.0.0.1:{free_port()}/pneumoscope")
    at = open_page(None if page.endswith("predict.py") else page)
    assert not at.exception, [e.value for e in at.exception]
    shown = texts(at.error)
    assert "unavailable" in shown and "s3cret" not in shown and "database is back" in shown

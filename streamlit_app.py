"""PneumoScope: page config, the shared sidebar and routing. Every page lives in app_pages/.

The folder is not called ``pages/``: Streamlit treats a ``pages/`` folder next to the entrypoint as
a legacy (v1) multipage app until the first ``st.navigation`` call of the process, so the first
visit after a server start through a deep link (``/evaluation``) ran the page file alone — no page
config, no shared sidebar, and an auto-generated menu that listed every file (tests/test_shell.py).
"""

from pathlib import Path

import streamlit as st

from core.db import DatabaseError

from ui import components, upload_guard

# Upload count/size limits enforced by the server's upload store, before a file is kept in memory.
upload_guard.install()

HERE = Path(__file__).resolve().parent

st.set_page_config(
    page_title="PneumoScope — pneumonia on chest X-rays (research demo)",
    # A local file: a ":material/...:" page icon makes the browser fetch the favicon from
    # fonts.gstatic.com (net::ERR_NAME_NOT_RESOLVED offline).
    page_icon=str(HERE / "assets" / "favicon.png"),
    layout="wide",
    initial_sidebar_state="expanded",
    menu_items={"About": "PneumoScope — research demo, not a medical device."},
)

pages = [
    st.Page("app_pages/predict.py", title="Predict", icon=":material/radiology:", default=True),
    st.Page("app_pages/dataset.py", title="Dataset", icon=":material/photo_library:"),
    st.Page("app_pages/evaluation.py", title="Evaluation", icon=":material/monitoring:"),
    st.Page("app_pages/worklist.py", title="PACS worklist", icon=":material/lan:"),
    st.Page("app_pages/reader_study.py", title="Reader study", icon=":material/person_search:"),
    st.Page("app_pages/admin.py", title="Admin", icon=":material/admin_panel_settings:"),
]
# The entrypoint frames every page: the active-model card and the disclaimer are drawn once, here;
# pages read the active version with ui.components.active_version().
components.sidebar()
try:
    st.navigation(pages).run()
except DatabaseError as e:  # the shared database went away mid-page: a sentence, not a traceback
    st.error(components.database_unavailable(e), icon=":material/database:")

"""PneumoScope: page config + routing only. Every page lives in pages/."""

from pathlib import Path

import streamlit as st

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
    st.Page("pages/predict.py", title="Predict", icon=":material/radiology:", default=True),
    st.Page("pages/dataset.py", title="Dataset", icon=":material/photo_library:"),
    st.Page("pages/evaluation.py", title="Evaluation", icon=":material/monitoring:"),
    st.Page("pages/reader_study.py", title="Reader study", icon=":material/person_search:"),
    st.Page("pages/admin.py", title="Admin", icon=":material/admin_panel_settings:"),
]
# Each page draws the shared sidebar (ui.components.sidebar) itself: drawn here, in the
# entrypoint, it vanished from reruns under streamlit.testing (Streamlit 1.67, minimal repro in
# the commit log), which would leave the pages' sidebar untested.
st.navigation(pages).run()

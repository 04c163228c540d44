"""The "compare two versions" view, shared by the admin page and the evaluation page.

The table comes from :func:`core.evaluation.compare_reports` (plain values); this module only
draws it: the table, a note when the two reports use different splits, and the two
confusion matrices side by side.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ui.text import html_text, md


def confusion_rows(cm, labels=("NORMAL", "PNEUMONIA")) -> list[dict]:
    """``[[tn, fp], [fn, tp]]`` -> rows for a small table (rows = true class)."""
    if not cm:
        return []
    return [{"true \\ predicted": f"true {labels[i]}", **{f"pred. {labels[j]}": int(cm[i][j]) for j in range(len(cm[i]))}}
            for i in range(len(cm))]


def confusion(cm, title: str, key: str) -> None:
    """One confusion matrix (plotly; a small table when plotly cannot draw it). ``title`` is plain
    text (it names a version read from disk): escaped for Plotly's HTML and for Markdown."""
    if not cm:
        st.caption(f"{md(title)}: no confusion matrix recorded.")
        return
    try:
        from ui import charts

        st.plotly_chart(charts.confusion_matrix(cm, title=html_text(title)), width="stretch", key=key)
    except Exception:  # noqa: BLE001 - plotly/ui.charts missing: a table does the job
        st.markdown(md(title))
        st.dataframe(pd.DataFrame(confusion_rows(cm)), hide_index=True)


def render(result: dict, key: str) -> None:
    """Draw a :func:`core.evaluation.compare_reports` result; ``key`` prefixes the chart keys."""
    a, b = result["labels"]
    if not result.get("same_split", True):
        st.warning(f"The two reports use different splits ({md(result['split'])}); the numbers are not directly comparable.")
    st.dataframe(pd.DataFrame(result["rows"]), hide_index=True, width="stretch")
    c1, c2 = st.columns(2, gap="large")
    split_a, split_b = result.get("splits") or (result["split"], result["split"])
    with c1:
        confusion(result["confusion"].get(a), f"{a} ({split_a or 'no report'})", key=f"{key}_cm_a")
    with c2:
        confusion(result["confusion"].get(b), f"{b} ({split_b or 'no report'})", key=f"{key}_cm_b")

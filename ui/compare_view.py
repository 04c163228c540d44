"""The "compare two versions" view, shared by the admin page and the evaluation page.

The table comes from :func:`core.evaluation.compare_reports` (plain values); this module only
draws it: the table (``st.table``, which wraps), a loud notice when the two were not evaluated on
the same images, and the two confusion matrices side by side.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ui.text import MAX_LEN, html_text, md


MATRIX_PX = 400  # width of one confusion matrix (ui.charts wants at least ~300 px)


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


def table(rows: list[dict], max_len: int = MAX_LEN) -> pd.DataFrame:
    """The comparison rows as a frame for ``st.table``: it wraps long cells ("Training data", a
    weights path) where a data grid cut them at 1024 px (issue 22). st.table renders every cell
    and header as Markdown, and names and card fields come from disk: all escaped (ui.text.md)."""
    if not rows:
        return pd.DataFrame()
    cols = list(rows[0])
    return pd.DataFrame([[md(r.get(c, ""), max_len) for c in cols] for r in rows], columns=[md(c) for c in cols])


def test_set_notice(result: dict) -> None:
    """Loud when the two versions were not evaluated on the same images (no difference is shown
    then); a caption when that they were is assumed from equal counts."""
    rel = result.get("test_set") or {}
    if rel.get("relation") == "missing":
        return  # the table shows n/a; the pages say which report is absent
    if not result.get("comparable", True):
        st.error(f"**Not comparable: different test sets.** {md(rel.get('text', ''))} The difference column says "
                 "“not comparable” instead of a number.", icon=":material/warning:")
    elif rel.get("relation") == "same_size":
        st.caption(md(rel.get("text", "")))


def render(result: dict, key: str) -> None:
    """Draw a :func:`core.evaluation.compare_reports` result; ``key`` prefixes the chart keys."""
    a, b = result["labels"]
    test_set_notice(result)
    st.table(table(result["rows"]), hide_index=True)
    split_a, split_b = result.get("splits") or (result["split"], result["split"])
    # Side by side where two fit at MATRIX_PX each, else one below the other: two half-width
    # columns squeezed each matrix to ~160 px at 1024 px (issue 22).
    with st.container(horizontal=True, wrap=True, gap="large"):
        with st.container(width=MATRIX_PX):
            confusion(result["confusion"].get(a), f"{a} ({split_a or 'no report'})", key=f"{key}_cm_a")
        with st.container(width=MATRIX_PX):
            confusion(result["confusion"].get(b), f"{b} ({split_b or 'no report'})", key=f"{key}_cm_b")

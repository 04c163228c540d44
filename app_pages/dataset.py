"""Dataset browser: class balance per split, filtered image grid, single-image inspection."""

from __future__ import annotations

import math

import streamlit as st

from core.dataset import DatasetError
from core.imageio import ImageError
from ui import charts, components, loaders
from ui.text import MAX_MESSAGE, md, md_code, plain


# Grid cells of a fixed width in a wrapping row: 2 across at 1024 px, 4 at 1440 px. Six columns
# made ~85 px thumbnails whose captions broke file names mid-word over 3-4 lines; 220 px holds the
# dataset's longest file name (202 px in the caption font) on one line.
GRID_CELL_WIDTH = 220


def load_index_ui():
    """(table, root, is_fallback) or (None, None, None) after showing what to do."""
    root = loaders.data_root()
    try:
        return loaders.dataset_table(str(root)), root, False
    except DatasetError as e:
        configured_error = str(e)
    try:
        table = loaders.dataset_table(str(loaders.SAMPLES_ROOT))
    except DatasetError:
        st.error(f"**No dataset is available.** {md(configured_error, MAX_MESSAGE)}")
        st.markdown(components.DATA_HELP)
        return None, None, None
    import os

    from core.config import DATA_ROOT_ENV, data_root_search_text

    searched = "" if os.environ.get(DATA_ROOT_ENV) else f"Tried, in order: {md(data_root_search_text())}. "
    st.warning(
        f"**No dataset found at {md_code(root)}** — showing the {len(table)} bundled sample X-rays instead. "
        + searched + components.DATA_HELP,
        icon=":material/folder_off:",
    )
    return table, loaders.SAMPLES_ROOT, True


def filters_ui(table) -> tuple[str, str, int]:
    c1, c2, c3 = st.columns([1, 2, 1])
    splits = ["all"] + [s for s in ("train", "val", "test") if s in set(table["split"])]
    split = c1.selectbox("Split", splits, key="ds_split")
    label = c2.segmented_control("Class", ["all", "NORMAL", "PNEUMONIA"], default="all", key="ds_class") or "all"
    per_page = c3.selectbox("Images per page", [12, 24, 48], key="ds_per_page")
    return split, label, per_page


def grid_ui(view, root) -> None:
    grid = st.container(horizontal=True, wrap=True, gap="small")
    for row in view.itertuples():
        with grid, st.container(width=GRID_CELL_WIDTH):
            try:
                st.image(loaders.thumbnail(str(loaders.safe_path(root, row.path))), caption=f"{md(row.name)} · {md(row.label)}", width="stretch")
            except (ImageError, ValueError) as e:
                st.error(f"{md(row.name)}: {md(e, MAX_MESSAGE)}")


def inspect_ui(view, root) -> None:
    names = list(view["name"])
    pick = st.selectbox("Inspect an image from this page", range(len(names)), format_func=lambda i: plain(names[i]), key="ds_inspect")
    row = view.iloc[pick]
    try:
        path = loaders.safe_path(root, row["path"])
        arr, info = loaders.full_image(str(path))
    except ValueError as e:
        st.error(md(e, MAX_MESSAGE))
        return
    except ImageError as e:
        st.error(f"{md(row['name'])} cannot be opened: {md(e, MAX_MESSAGE)}")
        return
    # Side by side where there is room, one under the other in a 1024 px window (a 3:2 split
    # cut the histogram's axis title there).
    pair = st.container(horizontal=True, wrap=True, gap="large")
    with pair, st.container(width=440):
        st.image(arr, caption=f"{md(row['name'])} — {md(row['split'])} / {md(row['label'])} (full size {info['width']} × {info['height']} px)", width="stretch")
    with pair, st.container(width=380):
        # Content-width metrics in a wrapping row: two fixed columns cut "PNEUMONIA" at 1024 px.
        facts_row = st.container(horizontal=True, wrap=True)
        facts_row.metric("Size", f"{info['width']} × {info['height']}", width="content")
        facts_row.metric("Class", md(row["label"]), width="content")
        st.plotly_chart(charts.intensity_histogram(arr), width="stretch", key="ds_hist")
        facts, _ = components.facts_table(info)
        st.table(facts, hide_index=True)  # wraps long values; a data grid cut them in this narrow column


# --- page ------------------------------------------------------------------------------------
st.title("Dataset")
table, root, fallback = load_index_ui()
if table is None:
    st.stop()

counts = loaders.dataset_counts(str(root))  # core.dataset.DatasetIndex.counts
n_norm, n_pneu = int((table["label"] == "NORMAL").sum()), int((table["label"] == "PNEUMONIA").sum())
st.caption(f"Data folder: {md_code(root)}" + (" (bundled sample)" if fallback else ""))
# A wrapping row of content-width cards: four fixed columns cut "Pneumonia : normal" at 1024 px.
top = st.container(horizontal=True, wrap=True)
top.metric("Images", f"{len(table):,}", border=True, width="content")
top.metric("NORMAL", f"{n_norm:,}", border=True, width="content")
top.metric("PNEUMONIA", f"{n_pneu:,}", border=True, width="content")
top.metric("Pneumonia : normal", f"{n_pneu / n_norm:.2f} : 1" if n_norm else "n/a", border=True, width="content", help="Class imbalance over all splits. Training compensates with class weights.")
st.plotly_chart(charts.counts_bar(counts), width="stretch", key="ds_counts")

# The size chart reads every file's header (~5,900 files: about a second on a cold cache), so it
# runs only when its tab is open (a lazy tab), not on every first visit of the page.
tab_browse, tab_sizes = st.tabs(["Browse images", "Image sizes"], key="ds_tab", on_change="rerun")
with tab_browse:
    split, label, per_page = filters_ui(table)
    view = table
    if split != "all":
        view = view[view["split"] == split]
    if label != "all":
        view = view[view["label"] == label]
    if view.empty:
        st.info("No images match these filters.")
    else:
        n_pages = max(1, math.ceil(len(view) / per_page))
        page_no = st.pagination(n_pages, key=f"ds_page-{split}-{label}-{per_page}") if n_pages > 1 else 1
        start = (page_no - 1) * per_page
        page_view = view.iloc[start : start + per_page]
        st.caption(f"{len(view):,} images match · showing {start + 1}–{start + len(page_view)} (page {page_no} of {n_pages})")
        grid_ui(page_view, root)
        st.divider()
        inspect_ui(page_view, root)

with tab_sizes:
    sizes = loaders.image_sizes(str(root), tuple(table["path"])) if tab_sizes.open is not False else None
    if sizes is None:
        pass  # not open: nothing read
    elif sizes.empty:
        st.info("No image sizes could be read.")
    else:
        merged = sizes.merge(table[["path", "label", "name", "split"]], on="path")
        c1, c2, c3 = st.columns(3)
        c1.metric("Median width", f"{int(merged['width'].median())} px", border=True)
        c2.metric("Median height", f"{int(merged['height'].median())} px", border=True)
        c3.metric("Distinct sizes", f"{len(merged[['width', 'height']].drop_duplicates()):,}", border=True)
        # Chart and table side by side where there is room, one under the other at 1024 px (a 3:1
        # split cut the chart's title and the table's second column there).
        pair = st.container(horizontal=True, wrap=True, gap="large")
        with pair, st.container(width=560):
            st.plotly_chart(charts.size_scatter(merged), width="stretch", key="ds_sizes")
        common = merged.groupby(["width", "height"]).size().reset_index(name="images").sort_values("images", ascending=False).head(10)
        common.insert(0, "Size (px)", common.pop("width").astype(str) + " × " + common.pop("height").astype(str))
        with pair, st.container(width=260):
            st.markdown("**Most common sizes**")
            st.dataframe(common, hide_index=True, width="stretch")
        st.caption("Every image is resized to the model's square input without keeping its aspect ratio, exactly as in training.")
if fallback:
    st.caption(loaders.SAMPLE_ATTRIBUTION)

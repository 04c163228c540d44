"""app_pages/dataset.py: the counts the page charts are core.dataset.DatasetIndex.counts."""

from __future__ import annotations

from test_app_pages import SAMPLES, app_registry, env, open_page  # noqa: F401 - fixtures


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

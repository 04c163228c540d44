"""ui.charts: the Plotly figures of the app (training history panels on one epoch axis,
confusion-matrix cells that stay short)."""

from __future__ import annotations

from ui import charts


def _hist(n_head=60, n_fine=4, extra_loss=0):
    head = {k: [0.5] * n_head for k in ("loss", "val_loss", "auc", "val_auc")}
    head["loss"] = head["loss"] + [0.4] * extra_loss  # a metric recorded in more epochs than another
    fine = {k: [0.6] * n_fine for k in ("loss", "val_loss", "auc", "val_auc")}
    return {"head": head, "finetune": fine, "phase_boundary_epoch": n_head}


def test_history_loss_and_auc_axes_cover_the_same_epochs():
    fig = charts.history(_hist(extra_loss=12))
    x1, x2 = fig.layout.xaxis, fig.layout.xaxis2
    assert tuple(x1.range) == tuple(x2.range)
    assert x2.matches == "x"
    last = max(max(t.x) for t in fig.data)
    assert x1.range[0] <= 1 and x1.range[1] >= last
    # Phase 2 sits at the same epochs in both panels (after the boundary), whatever the lengths.
    fine_x = {tuple(t.x[-4:]) for t in fig.data}
    assert fine_x == {(61, 62, 63, 64)}


def test_history_without_finetune_and_empty():
    fig = charts.history({"head": {"loss": [1, 0.5], "auc": [0.6, 0.7]}})
    assert tuple(fig.layout.xaxis.range) == tuple(fig.layout.xaxis2.range) == (0.5, 2.5)
    assert charts.history({}) is None


def test_confusion_matrix_cell_text_is_short():
    fig = charts.confusion_matrix([[147, 87], [14, 376]])
    texts = [t for row in fig.data[0].text for t in row]
    assert texts[3] == "<b>376</b><br>96.4 %"
    # no long phrase per cell (it spilled into the next cell at 1440 px); the hover says it in full
    assert all(len(t.replace("<b>", "").replace("</b>", "").replace("<br>", " ")) <= 12 for t in texts)
    assert "of true PNEUMONIA" in fig.data[0].customdata[1][1]

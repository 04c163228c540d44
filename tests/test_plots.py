"""core.plots: the static PNG figures of ``python -m core evaluate --plots DIR`` (seaborn
confusion-matrix heatmap, matplotlib ROC / PR / training curves, Agg backend)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from core import plots
from core.evaluation import evaluate

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _report() -> dict:
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(60, int), np.ones(90, int)]
    p = np.clip(0.35 * y + rng.uniform(0, 0.65, len(y)), 0, 1)
    return evaluate(y, p, 0.4, [f"test/x{i}.jpeg" for i in range(len(y))], n_boot=20)


HISTORY = {
    "head": {"loss": [0.7, 0.5, 0.4], "val_loss": [0.72, 0.55, 0.5], "auc": [0.6, 0.8, 0.9], "val_auc": [0.58, 0.78, 0.85]},
    "finetune": {"loss": [0.3, 0.25], "val_loss": [0.45, 0.44], "auc": [0.93, 0.95], "val_auc": [0.88, 0.9]},
    "phase_boundary_epoch": 3,
}


def _image(data: bytes) -> Image.Image:
    assert data[:8] == PNG_MAGIC
    Image.open(io.BytesIO(data)).verify()  # a complete, valid PNG
    return Image.open(io.BytesIO(data)).convert("RGB")


def _check(path, min_wh=(250, 220), max_wh=(1400, 700)):
    img = _image(path.read_bytes())
    w, h = img.size
    assert min_wh[0] <= w <= max_wh[0] and min_wh[1] <= h <= max_wh[1], (path.name, img.size)
    a = np.asarray(img, dtype=float)
    assert a.std() > 10  # drawn, not a blank canvas
    return a


def test_write_evaluation_plots_writes_valid_pngs_of_a_sensible_size(tmp_path):
    import matplotlib

    out = tmp_path / "figs" / "nested"
    paths = plots.write_evaluation_plots(_report(), out, HISTORY)
    assert sorted(p.name for p in paths) == ["confusion_matrix.png", "pr_curve.png", "roc_curve.png", "training_curves.png"]
    assert all(p.parent == out and p.is_file() for p in paths)
    for p in paths:
        _check(p, max_wh=(1400, 700))
    curves = _image((out / "training_curves.png").read_bytes())
    assert curves.width > 1.5 * curves.height  # two panels side by side
    assert matplotlib.get_backend().lower() == "agg"


def test_without_history_no_training_curves(tmp_path):
    paths = plots.write_evaluation_plots(_report(), tmp_path, None)
    assert sorted(p.name for p in paths) == ["confusion_matrix.png", "pr_curve.png", "roc_curve.png"]
    assert plots.training_curves_png({"head": {}, "finetune": {}}) is None


def test_confusion_heatmap_shades_follow_the_row_shares():
    """The cell colour is the share of the true class: a perfect matrix is dark on the diagonal,
    light off it; swapping the errors in changes the picture."""
    good = np.asarray(_image(plots.confusion_matrix_png([[50, 0], [0, 50]])), dtype=float)
    bad = np.asarray(_image(plots.confusion_matrix_png([[0, 50], [50, 0]])), dtype=float)
    assert good.shape == bad.shape and np.abs(good - bad).mean() > 5


@pytest.mark.parametrize("fn,arg", [(plots.roc_curve_png, {"fpr": [0, 0.1, 1], "tpr": [0, 0.8, 1]}),
                                    (plots.pr_curve_png, {"recall": [0, 0.8, 1], "precision": [1, 0.9, 0.6]})])
def test_curves_draw_the_operating_point(fn, arg):
    plain = np.asarray(_image(fn(arg, 0.9)), dtype=float)
    marked = np.asarray(_image(fn(arg, 0.9, (0.1, 0.8))), dtype=float)
    assert plain.shape[2] == 3
    red = lambda a: int(((a[..., 0] > 180) & (a[..., 1] < 90) & (a[..., 2] < 90)).sum())  # noqa: E731
    assert red(marked) > red(plain) + 20  # the red cross of the stored operating point


def test_cli_evaluate_plots(capsys, registry_copy, sample_root, tmp_path):
    from core.cli import main

    out = tmp_path / "plots"
    code = main(["--artifacts", str(registry_copy.root), "evaluate", "--data-root", str(sample_root),
                 "--split", "test", "--plots", str(out)])
    err = capsys.readouterr().err
    assert code == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["confusion_matrix.png", "pr_curve.png", "roc_curve.png", "training_curves.png"]
    assert f"figure written to {out / 'roc_curve.png'}" in err
    for p in out.iterdir():
        _check(p)

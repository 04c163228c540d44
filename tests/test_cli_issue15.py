"""Issue 15, item 8: what a new user tripped on in ``python -m core``."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core import cli

REPO = Path(__file__).resolve().parent.parent
NOISE = re.compile(r"cuInit|cudart_stub|absl::InitializeLog|oneDNN custom operations|^[IWEF]\d{4} \d\d:\d\d:\d\d", re.M)


def _main(capsys, *args):
    code = cli.main(list(args))
    out = capsys.readouterr()
    assert "Traceback" not in out.err, out.err
    return code, out.out, out.err


def _colour_photo(path: Path) -> None:
    from PIL import Image

    h, w = 400, 360
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    img[..., 1] = 80
    img[..., 2] = np.linspace(255, 0, h, dtype=np.uint8)[:, None]
    Image.fromarray(img).save(path)


def test_models_without_action_lists(capsys, registry_copy):
    code, out, err = _main(capsys, "--artifacts", str(registry_copy.root), "models")
    assert code == 0, err
    assert out.startswith("* v0001-tiny")


def test_predict_prints_counts_per_outcome_and_csv_in_percent(capsys, registry_copy, sample_root, tmp_path):
    d = tmp_path / "inputs"
    d.mkdir()
    for g in sorted((sample_root / "test" / "PNEUMONIA").iterdir())[:2]:
        shutil.copy(g, d / g.name)
    (d / "zz_not_an_image.jpeg").write_text("hello")
    (d / "zz_empty.png").write_bytes(b"")
    _colour_photo(d / "zz_holiday.png")
    out_csv = tmp_path / "out.csv"
    code, _, err = _main(capsys, "--artifacts", str(registry_copy.root), "predict", str(d), "--csv", str(out_csv))
    assert code == cli.EXIT_PARTIAL
    assert "predicted 5/5" not in err
    m = re.search(r"5 files: (\d+) predicted, (\d+) indeterminate, 1 rejected, 2 unreadable", err)
    assert m and int(m.group(1)) + int(m.group(2)) == 2, err
    rows = list(csv.DictReader(out_csv.open()))
    assert {"probability_pneumonia_pct", "threshold_pct", "indeterminate_band_pct"} <= set(rows[0])
    assert "probability_pneumonia" not in rows[0] and "threshold" not in rows[0]
    ok = [r for r in rows if r["ok"] == "True" and r["guard_status"] != "rejected"]
    assert len(ok) == 2 and all(0.0 <= float(r["probability_pneumonia_pct"]) <= 100.0 for r in ok)
    thr = json.loads((registry_copy.models_dir / "v0001-tiny" / "operating_point.json").read_text())["threshold"]
    assert float(ok[0]["threshold_pct"]) == pytest.approx(round(100 * thr, 1))


def test_predict_table_shows_percent(capsys, registry_copy, sample_root):
    f = sorted((sample_root / "test" / "NORMAL").iterdir())[0]
    code, out, err = _main(capsys, "--artifacts", str(registry_copy.root), "predict", str(f))
    assert code in (0, 4)
    assert re.search(r"\d+\.\d %", out), out
    assert "1 file:" in err


def test_predict_model_version_flag_has_help_and_version_alias(capsys, registry_copy, sample_root):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["predict"]
    help_text = sub.format_help()
    assert "--model-version NAME, --version NAME" in help_text
    assert "registry version of the model" in help_text
    f = str(sorted((sample_root / "test" / "NORMAL").iterdir())[0])
    for flag in ("--model-version", "--version"):
        code, out, _ = _main(capsys, "--artifacts", str(registry_copy.root), "predict", f, flag, "v0001-tiny")
        assert code in (0, 4) and f in out
    code, _, err = _main(capsys, "--artifacts", str(registry_copy.root), "predict", f, "--model-version", "v9999-nope")
    assert code == cli.EXIT_MODEL and "v9999-nope" in err


def test_evaluate_prints_a_readable_table_and_json_on_request(capsys, registry_copy, sample_root, tmp_path):
    art = str(registry_copy.root)
    code, out, _ = _main(capsys, "--artifacts", art, "evaluate", "--data-root", str(sample_root))
    assert code == 0
    assert not out.lstrip().startswith("{")
    assert re.search(r"^Accuracy\s+\d+\.\d %\s+\d+\.\d % – \d+\.\d %$", out, re.M), out
    assert re.search(r"^ROC-AUC\s+\d\.\d{3}", out, re.M) and "confusion matrix" in out
    assert not re.search(r"\d\.\d{6,}", out)  # no 16-digit numbers
    assert "threshold" in out and "%" in out.splitlines()[0]
    code, out, _ = _main(capsys, "--artifacts", art, "evaluate", "--data-root", str(sample_root), "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["version"] == "v0001-tiny" and summary["n"] == 8
    # percent, as promised (issue 22 item 10): rates and threshold under *_pct keys, scores stay in [0, 1]
    stored = registry_copy.load().metrics()["test"]
    for key in ("threshold", "accuracy", "sensitivity", "specificity", "precision"):
        assert key not in summary and summary[f"{key}_pct"] == round(100 * stored[key], 1)
        assert key not in summary["ci95"] or key == "threshold"
    lo, hi = summary["ci95"]["accuracy_pct"]
    assert 0 <= lo <= summary["accuracy_pct"] <= hi <= 100 and hi - lo > 1  # percent, not a fraction
    assert 0 <= summary["roc_auc"] <= 1 and all(0 <= x <= 1 for x in summary["ci95"]["roc_auc"])
    report = tmp_path / "full.json"
    code, out, err = _main(capsys, "--artifacts", art, "evaluate", "--data-root", str(sample_root), "--report", str(report))
    assert code == 0 and "confusion matrix" in out and str(report) in err
    full = json.loads(report.read_text())
    # paths relative to the data root: portable to another machine
    assert all(not os.path.isabs(p["path"]) and p["path"].startswith("test/") for p in full["predictions"])


@pytest.mark.parametrize("verbose", [False, True])
@pytest.mark.slow
def test_cli_silences_tensorflow_start_up_noise_unless_verbose(registry_copy, sample_root, verbose):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_CPP", "GLOG", "GRPC"))}
    f = str(sorted((sample_root / "test" / "NORMAL").iterdir())[0])
    args = ["-v"] if verbose else []
    r = subprocess.run([sys.executable, "-m", "core", *args, "--artifacts", str(registry_copy.root), "predict", f],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode in (0, 4), r.stderr
    if verbose:
        return  # whatever TensorFlow says is shown (machine-dependent); it must still work
    assert not NOISE.search(r.stderr), r.stderr
    assert "1 file:" in r.stderr


@pytest.mark.slow
def test_cli_train_prints_progress_without_tensorflow_warnings(sample_root, tmp_path):
    """Issue 22 item 11: `train` without -v printed TensorFlow's retracing warnings; with -v each
    warning is printed once (one handler), not twice."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_CPP", "GLOG", "GRPC"))}
    cfg = tmp_path / "micro.json"
    cfg.write_text(json.dumps({"backbone": "micro", "input_size": 32, "weights": "none", "head_units": 8,
                               "head_epochs": 2, "finetune_epochs": 1, "batch_size": 8, "val_fraction": 0.3,
                               "early_stopping_patience": 3, "seed": 0}))
    outs = {}
    for verbose in (False, True):
        art = tmp_path / f"art-{verbose}"
        r = subprocess.run([sys.executable, "-m", "core", *(["-v"] if verbose else []), "--artifacts", str(art), "train",
                            "--config", str(cfg), "--data-root", str(sample_root)],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        outs[verbose] = r.stderr
    quiet = [ln for ln in outs[False].splitlines() if not re.match(r"^\[\s*\d+\.\d+s\] ", ln)]
    assert quiet == [], quiet  # progress lines only: no retracing warning, no start-up noise
    warnings = [ln for ln in outs[True].splitlines() if "retracing" in ln]
    assert len(warnings) == len(set(warnings))  # -v: shown, each once


def test_verbose_is_accepted_before_or_after_the_command():
    parser = cli.build_parser()
    assert parser.parse_args(["-v", "models"]).verbose is True
    assert parser.parse_args(["models", "list", "--verbose"]).verbose is True
    assert parser.parse_args(["predict", "x.png", "-v"]).verbose is True
    assert parser.parse_args(["predict", "x.png"]).verbose is False

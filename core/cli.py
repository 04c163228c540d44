"""``python -m core`` — train, evaluate, predict, data, models, export.

Exit codes (stable, scripted against):
  0 success · 1 unexpected error · 2 usage error · 3 data/input problem (missing or bad data
  root, all inputs unreadable) · 4 batch predict finished but some files were rejected ·
  5 no usable model / registry problem · 6 another training job is running · 130 cancelled (Ctrl-C)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from core.config import EXPLAIN_METHODS
from core.formatting import plural, printable  # names are text: control/bidi characters made visible (issue 21)
from core.exitcodes import (  # the one exit-code table: callers import core.exitcodes, not this module
    EXIT_BUSY,
    EXIT_CANCELLED,
    EXIT_DATA,
    EXIT_DATABASE,
    EXIT_ERROR,
    EXIT_MODEL,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_USAGE,
)

log = logging.getLogger("core.cli")


# Commands that load TensorFlow (the others never import it).
TF_COMMANDS = ("train", "evaluate", "predict", "export", "pacs")


def _quiet_tf() -> None:
    """Silence TensorFlow/CUDA start-up noise ("failed call to cuInit", "Could not find cuda
    drivers", oneDNN notices) before TensorFlow is imported; ``--verbose`` keeps it.

    TF_CPP_MIN_LOG_LEVEL=3 drops C++ log lines, errors included (the cuInit line is one); the
    lines absl prints while TensorFlow's libraries load ignore it, so stderr (fd 2) points at
    /dev/null during the import only. A real import error still surfaces: it is raised
    again, with its message, where the command imports TensorFlow.
    """
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    except Exception:  # noqa: BLE001 - reported by the command's own import, with its message
        pass
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    logging.getLogger("absl").setLevel(logging.ERROR)


_FLAG_TYPES = {"int": int, "float": float, "choice": str, "str": str, "name": str}


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from core.config import SPECS, Config

    p.add_argument("--data-root", help="dataset root (default: $PNEUMOSCOPE_DATA_ROOT or data/chest_xray)")
    # The recipe flags come from the Config fields' specs (core.config.setting): name, type,
    # choices, help and default are declared there once; dest is the field name. They default to
    # None = "not given": a --config file's value then survives, and the Config default applies
    # only when neither the file nor the flag sets it. Bounds are checked by Config, on the merge.
    d = Config()
    for name, spec in SPECS.items():
        if spec.cli is None:
            continue
        if spec.kind == "bool":  # a switch that turns the setting on
            p.add_argument(spec.cli, dest=name, action="store_true", default=None, help=spec.flag_help(None))
            continue
        p.add_argument(spec.cli, dest=name, type=_FLAG_TYPES[spec.kind], choices=spec.choices or None, default=None,
                       metavar=spec.cli.lstrip("-").replace("-", "_").upper(), help=spec.flag_help(getattr(d, name)))
    p.add_argument("--naive-phase1", action="store_true", help="recompute the frozen base every epoch (benchmarks)")
    p.add_argument("--limit-per-class", type=int, default=None, help="use at most N images per class and split (smoke runs)")
    p.add_argument("--version", default=None, help="registry version name (default: vNNNN-<timestamp>)")
    p.add_argument("--activate", action="store_true", help="make the new version active")
    p.add_argument("--config", default=None, help="JSON config file; command-line flags override it")


def config_from_args(base, args):
    """``base`` (a Config) with the recipe flags given on the command line (those not None)
    applied; validated, so a flag out of bounds is a ValueError ("Received: <field>=...")."""
    from core.config import SPECS

    given = {name: getattr(args, name) for name, spec in SPECS.items() if spec.cli is not None}
    return base.replace(**{k: v for k, v in given.items() if v is not None})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="PneumoScope core: pneumonia detection on pediatric chest X-rays (research demo, not a medical device).")
    parser.add_argument("--artifacts", default=None, help="registry root (default: $PNEUMOSCOPE_ARTIFACTS or ./artifacts)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log details and show TensorFlow/CUDA start-up messages (also accepted after the command)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="two-phase training; publishes a registry version")
    _add_train_args(p)

    p = sub.add_parser("evaluate", help="evaluate a version on a split")
    p.add_argument("--version", default=None, help="default: the active version")
    p.add_argument("--data-root", default=None)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                   help="print the summary as JSON on stdout, for scripts (instead of the table); "
                        "with PATH, also write the full report (per-image probabilities, curves) there")
    p.add_argument("--report", default=None, metavar="PATH", help="write the full report (JSON) here and print the table")
    p.add_argument("--plots", default=None, metavar="DIR",
                   help="also write PNG figures here: confusion matrix (seaborn), ROC and PR curves, training curves")

    p = sub.add_parser("predict", help="predict files or folders; CSV out")
    p.add_argument("inputs", nargs="+", help="image files (PNG/JPEG/DICOM) or folders")
    p.add_argument("--model-version", "--version", dest="version", default=None, metavar="NAME",
                   help="registry version of the model to use (default: the active one); --version is an alias")
    p.add_argument("--csv", default=None, help="write results here (default: print a table)")
    p.add_argument("--gradcam-dir", "--heatmap-dir", dest="gradcam_dir", default=None,
                   help="save heatmap overlays here as PNG (the model's default method unless --heatmap-method)")
    p.add_argument("--heatmap-method", default=None,
                   choices=EXPLAIN_METHODS,
                   help="explanation method for --gradcam-dir (default: the one stored with the model, "
                        "chosen by docs/explanations.md; gradcam = Grad-CAM at the last conv layer)")
    p.add_argument("--invert", action="store_true", help="invert every image first (the fix for guard code 'inverted')")
    p.add_argument("--rotate180", action="store_true", help="turn every image by 180 degrees first (the fix for 'upside_down')")

    p = sub.add_parser("data", help="inspect or download the dataset")
    p.add_argument("action", nargs="?", default="info", choices=["info", "download"])
    p.add_argument("--data-root", default=None)

    p = sub.add_parser("models", help="list / activate / delete registry versions; rollback steps back one activation "
                                      "(history lists them); clean-staging removes leftovers of killed trainings")
    p.add_argument("action", nargs="?", default="list",
                   choices=["list", "activate", "delete", "rollback", "history", "clean-staging"], help="default: list")
    p.add_argument("name", nargs="?")

    p = sub.add_parser("export", help="write a TF SavedModel with a serving signature (TF Serving)")
    p.add_argument("--version", default=None)
    p.add_argument("--out", required=True)

    from core.feedback import add_cli as _add_feedback_cli

    _add_feedback_cli(sub)  # python -m core feedback list|export|accept|reject (core/feedback.py)
    from core.auth import add_cli as _add_admin_cli

    _add_admin_cli(sub)  # python -m core admin sign-in-code (core/auth.py)
    from core.pacs import add_cli as _add_pacs_cli

    _add_pacs_cli(sub)  # python -m core pacs search|analyse|watch (core/pacs.py)
    from core.dbadmin import add_cli as _add_db_cli

    _add_db_cli(sub)  # python -m core db status|upgrade|copy-to (core/dbadmin.py)
    for p in sub.choices.values():  # `python -m core predict ... --verbose` works too
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="log details and show TensorFlow/CUDA start-up messages")
    return parser


def _progress_printer():
    state = {"last": 0.0}

    def show(ev) -> None:
        now = time.monotonic()
        if ev.kind == "batch" and now - state["last"] < 2.0:
            return
        state["last"] = now
        if ev.kind == "stage" or ev.kind == "phase_start":
            print(f"[{ev.elapsed_s:7.1f}s] {ev.message}", file=sys.stderr, flush=True)
        elif ev.kind == "batch":
            ep = f" epoch {ev.epoch}/{ev.epochs}" if ev.epoch else ""
            loss = f" loss={ev.metrics['loss']:.4f}" if "loss" in ev.metrics else ""
            print(f"[{ev.elapsed_s:7.1f}s] {ev.phase}{ep} batch {ev.batch}/{ev.batches}{loss} {ev.message}", file=sys.stderr, flush=True)
        elif ev.kind == "epoch_end":
            m = " ".join(f"{k}={v:.4f}" for k, v in ev.metrics.items())
            print(f"[{ev.elapsed_s:7.1f}s] {ev.phase} epoch {ev.epoch}/{ev.epochs} {m}", file=sys.stderr, flush=True)

    return show


def cmd_train(args, registry) -> int:
    from core.config import Config, default_data_root

    base = Config.load(args.config) if args.config else Config()
    cfg = config_from_args(base, args)  # only the flags given
    root = Path(args.data_root) if args.data_root else default_data_root()
    from core.distribute import describe, is_chief
    from core.training import get_strategy

    strategy = get_strategy(cfg.strategy)  # before TensorFlow runs anything (collective ops: core.distribute)
    if not is_chief(strategy):  # a multi-worker worker trains its share; the chief locks, audits, publishes
        from core.runner import run_training

        run_training(cfg, registry, data_root=root, source="cli", progress=_progress_printer(),
                     limit_per_class=args.limit_per_class or None, naive_phase1=args.naive_phase1)
        print(json.dumps({"worker": describe(strategy), "published": None}, indent=2))
        return EXIT_OK
    # A registered job run in the foreground (core.runner): the admin page shows its status,
    # progress and log, and its Cancel button stops it (cancel flag, then SIGTERM). Same lock as
    # the page's jobs: one training at a time per registry, whoever starts it.
    from core import jobs
    from core.job_runner import execute, job_log

    try:
        job, lease = jobs.create_job(cfg, root, artifacts=registry.root, limit_per_class=args.limit_per_class or None,
                                       requested_by="cli", version=args.version, activate=args.activate,
                                       naive_phase1=args.naive_phase1)
    except jobs.JobBusy as e:
        print(f"error: another training job is running for {registry.root} ({e.holder}; see the admin page).",
              file=sys.stderr)
        return EXIT_BUSY
    try:
        with job_log(job.dir):  # SIGINT stays Ctrl-C (KeyboardInterrupt); SIGTERM cancels like a job's
            run = execute(job.dir, job.request, lease=lease, source="cli", echo=_progress_printer(),
                          signums=(signal.SIGTERM,), on_recovered=lambda n, done: _print_notes(_recovery_notes(registry, n, done)))
    finally:
        lease.release()  # killed with -9 instead, the lease lapses after its ttl (core.locks)
    version, result = run.version, run.result
    summary = {"version": version, "active": run.active, "wall_time_s": result.provenance["wall_time_s"],
               "timings_s": result.provenance["timings_s"], "val_roc_auc": result.metrics["validation"]["roc_auc"]}
    if "test" in result.metrics:
        from core.formatting import pct_columns

        t = result.metrics["test"]  # rates in percent (*_pct), AUCs as scores, as evaluate --json
        summary["test"] = pct_columns({k: t[k] for k in ("accuracy", "roc_auc", "pr_auc", "sensitivity", "specificity", "n")},
                                      ("accuracy", "sensitivity", "specificity"))
    print(json.dumps(summary, indent=2))
    return EXIT_OK


def cmd_evaluate(args, registry) -> int:
    import numpy as np

    from core import dataset as ds
    from core.config import default_data_root
    from core.evaluation import evaluate

    pred = _predictor(registry, args.version)
    root = Path(args.data_root) if args.data_root else default_data_root()
    index = ds.discover(root)
    samples = index.split(args.split)
    if not samples:
        raise ds.DatasetError(f"Split {args.split!r} is empty or missing under {root}.")
    arr = ds.load_arrays(samples, pred.size)
    res = pred.predict_arrays(list(arr.x))
    probs = np.array([r.probability for r in res])
    report = evaluate(arr.y, probs, pred.op.threshold, arr.paths, split=args.split, seed=pred.config.seed, data_root=root)
    keys = ("n", "threshold", "accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc", "pr_auc")
    out = {"version": pred.version, **{k: report[k] for k in keys}, "ci95": report["ci95"], "confusion_matrix": report["confusion_matrix"]}
    if args.json is not None:
        print(json.dumps(evaluation_json(out), indent=2))
    else:
        print(evaluation_table(out, args.split))
    for path in (p for p in (args.report, args.json) if p not in (None, "-")):
        Path(path).write_text(json.dumps(report, indent=1))
        print(f"full report written to {path}", file=sys.stderr)
    if getattr(args, "plots", None):
        from core.plots import write_evaluation_plots

        try:
            history = registry.read_json(pred.version, "history.json")
        except Exception:  # noqa: BLE001 - no or damaged history: the other figures still help
            history = None
        for path in write_evaluation_plots(report, args.plots, history):
            print(f"figure written to {path}", file=sys.stderr)
    return EXIT_OK


EVAL_ROWS = (("accuracy", "Accuracy", True), ("sensitivity", "Sensitivity (recall)", True),
             ("specificity", "Specificity", True), ("precision", "Precision (PPV)", True),
             ("f1", "F1", False), ("roc_auc", "ROC-AUC", False), ("pr_auc", "PR-AUC", False))


def evaluation_json(summary: dict) -> dict:
    """The evaluate summary for ``--json``: the threshold and the rates in percent, one decimal,
    under ``*_pct`` keys (in ``ci95`` too), like the table and every CSV; ROC-AUC, PR-AUC and F1
    stay scores in [0, 1]. (The full report, ``--json PATH`` / ``--report``, is the registry's
    metrics.json format and keeps fractions.)"""
    from core.formatting import pct_columns, pct_value

    keys = ("threshold", *(k for k, _, as_pct in EVAL_ROWS if as_pct))
    out = pct_columns(summary, keys)
    out["ci95"] = {(f"{k}_pct" if k in keys else k): ([pct_value(x) for x in v] if k in keys and v else v)
                   for k, v in (summary.get("ci95") or {}).items()}
    return out


def evaluation_table(summary: dict, split: str) -> str:
    """The evaluate summary as a table for people (rates in percent, scores with 3 decimals)."""
    from core.formatting import num, pct

    ci = summary.get("ci95") or {}
    lines = [f"model {printable(summary.get('version'))} · {split} split · {summary.get('n')} images · "
             f"threshold {pct(summary.get('threshold'))} (calibrated probability)", "",
             f"{'metric':<22}{'value':>9}   95 % CI"]
    for key, label, as_pct in EVAL_ROWS:
        f = pct if as_pct else num
        lo_hi = ci.get(key)
        interval = f"{f(lo_hi[0])} – {f(lo_hi[1])}" if lo_hi else ""
        lines.append(f"{label:<22}{f(summary.get(key)):>9}   {interval}")
    cm = summary.get("confusion_matrix")
    if cm:
        (tn, fp), (fn, tp) = cm
        lines += ["", "confusion matrix (rows: true class, columns: predicted)",
                  f"{'':<16}{'NORMAL':>10}{'PNEUMONIA':>11}",
                  f"{'true NORMAL':<16}{tn:>10}{fp:>11}",
                  f"{'true PNEUMONIA':<16}{fn:>10}{tp:>11}"]
    return "\n".join(lines)


def _expand(inputs) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(files to predict, skipped folder entries with the reason).

    A folder is walked by content (core.imageio.scan_folder): a DICOM exported as ``IMG0001``
    or ``scan.dicom`` is analysed; anything else -- ``notes.txt``, pipes, devices, broken links,
    never opened -- is returned as skipped, to be counted and named, never dropped silently. A
    file named on the command line is always analysed (the decoder says what is wrong with it);
    one that is a device, pipe or socket is refused (ImageError -> exit 3).
    """
    from core.imageio import require_regular_file, scan_folder

    files: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for i in inputs:
        p = Path(i)
        if p.is_dir():
            found = scan_folder(p)
            files.extend(found.images)
            skipped.extend(found.skipped)
        else:
            if p.exists():
                require_regular_file(p)
            files.append(p)
    return files, skipped


# Names of skipped entries printed on stderr (all of them are rows of the CSV).
MAX_SKIPPED_NAMED = 20


def skipped_lines(skipped: list[tuple[Path, str]]) -> list[str]:
    """stderr lines naming the folder entries that were not analysed, with the reason."""
    if not skipped:
        return []
    n = len(skipped)
    lines = [f"skipped {plural(n, 'entry', 'entries')} that {'is' if n == 1 else 'are'} not an image file:"]
    lines += [f"  {printable(p)}: {why}" for p, why in skipped[:MAX_SKIPPED_NAMED]]
    if n > MAX_SKIPPED_NAMED:
        lines.append(f"  ... and {n - MAX_SKIPPED_NAMED} more (--csv lists every one)")
    return lines


def skipped_row(path: Path, why: str) -> dict:
    """The CSV/table row of a skipped folder entry: result SKIPPED, no probability."""
    return {"file": str(path), "ok": False, "result": "SKIPPED",
            "error_code": "not_a_file" if why.startswith("not a regular file") else "not_an_image",
            "message": f"skipped: {why}"}


OUTCOMES = ("predicted", "indeterminate", "rejected", "unreadable")


def outcome(r) -> str:
    """What happened to one input: predicted | indeterminate | rejected | unreadable."""
    if not r.ok:
        return "unreadable"
    if r.guard_status == "rejected":
        return "rejected"
    return "indeterminate" if r.label == "INDETERMINATE" else "predicted"


def outcome_summary(counts: dict) -> str:
    """'6 files: 3 predicted, 0 indeterminate, 1 rejected, 2 unreadable'; folder entries that
    were not images add ', 1 skipped (not an image)'."""
    n = sum(counts.values())
    text = f"{n} file{'s' if n != 1 else ''}: " + ", ".join(f"{counts.get(k, 0)} {k}" for k in OUTCOMES)
    if counts.get("skipped"):
        text += f", {counts['skipped']} skipped (not an image)"
    return text


def cmd_predict(args, registry) -> int:
    from core.formatting import pct, percent_row

    files, skipped = _expand(args.inputs)
    for line in skipped_lines(skipped):
        print(line, file=sys.stderr)
    if not files:
        extra = f" ({len(skipped)} skipped, named above)" if skipped else ""
        print(f"error: no image files found in the given inputs{extra}", file=sys.stderr)
        return EXIT_DATA
    pred = _predictor(registry, args.version)
    from core import audit

    # One "predict" line per image, as in the app (SHA-256 of the bytes, never the image).
    source = "cli" + "".join(f"+{fix}" for fix, on in (("invert", args.invert), ("rotate180", args.rotate180)) if on)
    rows = []
    counts = dict.fromkeys(OUTCOMES, 0)
    want_cam = bool(args.gradcam_dir)
    for start in range(0, len(files), 64):
        chunk = files[start : start + 64]
        results = pred.predict_paths(chunk, with_map=want_cam, method=args.heatmap_method, invert=args.invert,
                                     rotate180=args.rotate180)
        for f, r in zip(chunk, results):
            row = percent_row(r.to_row())  # probabilities in percent, like the app
            row["file"] = str(f)
            rows.append(row)
            counts[outcome(r)] += 1
            audit.prediction(r, source, model_version=pred.version, threshold=pred.op.threshold, artifacts=registry.root)
            if want_cam and r.ok and r.heatmap is not None and r.guard_status != "rejected":
                _save_overlay(r, Path(args.gradcam_dir), f)
        if len(files) > 64:
            print(f"processed {min(start + 64, len(files))}/{len(files)} files", file=sys.stderr, flush=True)
    n_analysed = len(rows)
    rows += [skipped_row(p, why) for p, why in skipped]  # marked in the CSV and the table, never left out
    counts["skipped"] = len(skipped)
    if args.csv:
        from core.csvsafe import write_csv

        # UTF-8 whatever the locale; a file name that is not valid UTF-8 keeps its bytes visible (\udcff)
        with open(args.csv, "w", newline="", encoding="utf-8", errors="backslashreplace") as fh:
            write_csv(fh, rows)  # cells that a spreadsheet would run as formulas are neutralised
        print(f"wrote {len(rows)} rows to {printable(args.csv)}", file=sys.stderr)
    else:
        for row in rows:  # one line per input: a name or message with a newline or ANSI codes cannot forge or erase a row
            msg = row["message"] or row.get("guard_message") or ""
            p = row.get("probability_pneumonia_pct")
            print(f"{row['result']:<14} {'' if p is None else pct(p / 100):>7}  {printable(row['file'])}  {printable(msg)}")
    print(outcome_summary(counts), file=sys.stderr)
    n_bad = counts["unreadable"] + counts["rejected"]
    if n_bad == n_analysed:
        return EXIT_DATA
    return EXIT_PARTIAL if n_bad else EXIT_OK


def _save_overlay(r, out_dir: Path, src: Path) -> None:
    import cv2

    from core.gradcam import map_overlay

    out_dir.mkdir(parents=True, exist_ok=True)
    img = map_overlay(r.image, r.heatmap, 0.4)
    if img is None:  # never write an overlay that looks informative when nothing is there
        print(f"{printable(src)}: flat {r.heatmap_method} map (no region raised the pneumonia score); no overlay written",
              file=sys.stderr)
        return
    cv2.imwrite(str(out_dir / heatmap_name(src, r.heatmap_method)), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


def heatmap_name(src: Path, method: str | None) -> str:
    """``<stem>_<8 hex of the full path>_<method>.png`` (``x_1a2b3c4d_hirescam.png``,
    ``gradcam++`` written ``gradcampp``): the file says which method drew it; inputs sharing a
    base name (a/x.png, b/x.png) get different maps, and the same input always gets the same name."""
    import hashlib

    digest = hashlib.sha256(str(Path(src).absolute()).encode("utf-8", "surrogateescape")).hexdigest()[:8]
    slug = "".join(ch if ch.isalnum() else "p" if ch == "+" else "-" for ch in (method or "heatmap"))
    return f"{Path(src).stem}_{digest}_{slug}.png"


def _predictor(registry, version):
    """A Predictor for ``version``; any failure to build it is a RegistryError (exit 5, one line)."""
    from core.predict import Predictor
    from core.registry import RegistryError, load_error_message

    loaded = registry.load(version)  # RegistryError with one line on damaged/hostile files
    try:
        return Predictor(loaded, warm_up=False)  # one-off process: a graph is traced when first used, not ahead
    except Exception as e:  # noqa: BLE001 - a model of the wrong shape
        log.info("Building the predictor failed", exc_info=True)
        raise RegistryError(load_error_message(loaded.name, e)) from None


def _recover_registry(registry) -> list[str]:
    """Remove stale .staging debris and finish an interrupted --activate. Caller holds the lock."""
    from core import admin

    n, done = admin.recover(registry, source="cli")
    return _print_notes(_recovery_notes(registry, n, done))


def _recovery_notes(registry, n: int, done: str | None) -> list[str]:
    """What a recovery (``admin.recover``: ``n`` stale entries removed, ``done`` activated) did, for people."""
    notes = []
    if n:
        notes.append(f"removed {plural(n, 'stale entry', 'stale entries')} from {registry.staging_dir}")
    if done:
        notes.append(f"activated {printable(done)}: an earlier `train --activate` was stopped before activating it")
    return notes


def _print_notes(notes: list[str]) -> list[str]:
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return notes


def cmd_data(args, registry) -> int:
    from core import dataset as ds
    from core.config import default_data_root

    if args.action == "download":
        root = ds.kagglehub_download()
        print(f"Downloaded. Use it with: export PNEUMOSCOPE_DATA_ROOT={root}")
        return EXIT_OK
    root = Path(args.data_root) if args.data_root else default_data_root()
    index = ds.discover(root)
    counts = index.counts()
    print(f"data root: {root.resolve()}")
    for split, c in counts.items():
        total = sum(c.values())
        ratio = f"{c['PNEUMONIA'] / c['NORMAL']:.2f}" if c["NORMAL"] else "n/a"
        print(f"  {split:<6} NORMAL={c['NORMAL']:>5}  PNEUMONIA={c['PNEUMONIA']:>5}  total={total:>5}  pneumonia:normal={ratio}")
    if "train" in counts:
        train = index.split("train")
        print(f"  train patients/studies: {len({s.group for s in train})}")
        w = ds.class_weights([s.label for s in train])
        print(f"  class weights: NORMAL={w[0]:.3f} PNEUMONIA={w[1]:.3f}")
    for line in skipped_lines(index.skipped):  # files in the class folders that are not images
        print(line, file=sys.stderr)
    return EXIT_OK


def _models_clean_staging(registry) -> int:
    from core import locks

    lock = locks.acquire_training_lock(registry.root, data={"purpose": "models clean-staging"})
    if lock is None:
        print(f"error: a training job is running for {registry.root}; its staging folder is in use. "
              "Try again when it has finished.", file=sys.stderr)
        return EXIT_BUSY
    try:
        notes = _recover_registry(registry)
    finally:
        lock.release()
    print("; ".join(notes) if notes else "nothing to clean")
    return EXIT_OK


def _models_list(registry) -> int:
    versions = registry.versions()
    pending = registry.pending_activation_message()
    if pending:
        print(f"warning: {pending}", file=sys.stderr)
    if not versions:
        print(f"no versions in {registry.models_dir}")
    for v in versions:
        mark = "*" if v.active else " "
        if v.broken:  # refused by name (issue 21): listed so it can be deleted, never used
            print(f"{mark} {printable(v.name):<28} BROKEN: {printable(v.problems[0])}")
            continue
        auc = v.card.get("test", {}).get("roc_auc")
        size, weights = printable(v.card.get("input_size", "?")), printable(v.card.get("weights_source", "?"))
        print(f"{mark} {printable(v.name):<28} {size:>4}px  weights={weights:<28} test_auc={'' if auc is None else f'{auc:.4f}'}")
    pointer = registry.active_pointer_problem()
    if pointer:
        print(f"warning: {pointer}", file=sys.stderr)
    broken = [v for v in versions if v.broken]
    for v in broken:
        print(f"error: model version {printable(v.name)} is broken: {printable(' '.join(v.problems))}",
              file=sys.stderr)
    return EXIT_MODEL if broken else EXIT_OK


def _models_history(registry) -> int:
    """The admin page's activation history and where roll back goes (core.admin)."""
    from core import admin

    hist = admin.read_active_history(registry)
    for h in hist:
        print(f"{printable(h.get('time', '')):<26} {printable(h.get('action', '')):<9} "
              f"{printable(h.get('version', '')):<28} replaced {printable(h.get('previous') or 'none'):<28} "
              f"{printable(h.get('source', ''))}")
    chain = admin.rollback_chain(registry)
    print(f"rollback goes to: {' -> '.join(printable(v) for v in chain)}" if chain else
          ("no activation recorded" if not hist else "nothing to roll back to"))
    return EXIT_OK


def _models_change(action: str, registry, name: str | None = None) -> int:
    """rollback (the admin page's Roll back), activate NAME or delete NAME, through core.admin
    (history + audit); one line out, exit 5 when the registry refuses."""
    from core import admin
    from core.registry import RegistryError

    previous = registry.active_version()
    try:
        if action == "rollback":
            back = admin.rollback(registry, source="cli")
        elif action == "activate":
            admin.promote(registry, name, source="cli")
        else:
            admin.delete_version(registry, name, source="cli")
    except (RegistryError, ValueError, OSError) as e:
        print(f"error: {printable(e)}", file=sys.stderr)
        return EXIT_MODEL
    if action == "rollback":
        print(f"rolled back: {printable(back)} is active (was {printable(previous or 'none')})")
    else:
        print(f"{action}d {printable(name)}")
    return EXIT_OK


def cmd_models(args, registry) -> int:
    if args.action == "clean-staging":
        return _models_clean_staging(registry)
    if args.action == "list":
        return _models_list(registry)
    if args.action in ("rollback", "history"):  # the admin page's Roll back and its history (core.admin)
        if args.name:
            print(f"error: `models {args.action}` takes no version name (roll back steps back one activation)",
                  file=sys.stderr)
            return EXIT_USAGE
        return _models_history(registry) if args.action == "history" else _models_change("rollback", registry)
    if not args.name:
        print(f"error: `models {args.action}` needs a version name", file=sys.stderr)
        return EXIT_USAGE
    if args.action == "activate" and args.name == registry.active_version():
        print(f"{printable(args.name)} is already the active version")  # idempotent for scripts: nothing to record
        return EXIT_OK
    return _models_change(args.action, registry, args.name)


def cmd_export(args, registry) -> int:
    from core.export import check_out_dir, export_saved_model

    from core.registry import RegistryError, load_error_message

    check_out_dir(args.out)  # a non-empty --out is a usage error (exit 2), before any model work
    loaded = registry.load(args.version)  # RegistryError (exit 5) with one line when damaged
    try:
        path = export_saved_model(loaded, args.out)
    except OSError:
        raise  # an unwritable --out is a data/input problem (exit 3), not a model problem
    except Exception as e:  # noqa: BLE001 - a model of the wrong shape: one line, exit 5, like predict
        log.info("Export failed", exc_info=True)
        raise RegistryError(load_error_message(loaded.name, e)) from None
    from core.export import signature_text

    print(f"SavedModel written to {printable(path)}; signature 'serving_default': {signature_text(loaded.config.input_size)}")
    return EXIT_OK


def cmd_feedback(args, registry) -> int:
    from core.feedback import cmd_feedback as run

    return run(args, registry)


def cmd_admin(args, registry) -> int:
    from core.auth import cmd_admin as run

    return run(args, registry)


def cmd_pacs(args, registry) -> int:
    from core.pacs import cmd_pacs as run

    return run(args, registry)


def cmd_db(args, registry) -> int:
    from core.dbadmin import cmd_db as run

    return run(args, registry)


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "data": cmd_data, "models": cmd_models, "export": cmd_export,
            "feedback": cmd_feedback, "admin": cmd_admin, "pacs": cmd_pacs, "db": cmd_db}


def _own_records(record: logging.LogRecord) -> bool:
    """This project's log records (``core.*``), not the libraries' (without ``-v``)."""
    return record.name == "core" or record.name.startswith("core.")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on usage errors
    if not args.verbose and args.command in TF_COMMANDS:
        _quiet_tf()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if not args.verbose:
        # Libraries (pydicom, Pillow, TensorFlow...) log tracebacks for files they cannot decode;
        # the command prints the one-line reason. Their records are shown with -v only.
        handler.addFilter(_own_records)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, handlers=[handler])
    if not args.verbose:
        # TensorFlow's Python warnings (tf.function retracing during training...) are TF noise too;
        # its logger got a handler of its own when _quiet_tf imported it before logging was set up.
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
    from core.dataset import DatasetError
    from core.db import DatabaseError
    from core.distribute import DistributedTrainingError
    from core.imageio import ImageError
    from core.registry import Registry, RegistryError
    from core.events import TrainingCancelled

    registry = Registry(args.artifacts)
    try:
        return COMMANDS[args.command](args, registry)
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except TrainingCancelled as e:
        print(f"cancelled: {printable(e)}", file=sys.stderr)
        return EXIT_CANCELLED
    except (DatasetError, ImageError) as e:  # messages name files: printed as one visible line
        print(f"error: {printable(e)}", file=sys.stderr)
        return EXIT_DATA
    except RegistryError as e:
        print(f"error: {printable(e)}", file=sys.stderr)
        return EXIT_MODEL
    except ValueError as e:
        print(f"error: {printable(e)}", file=sys.stderr)
        return EXIT_USAGE
    except DistributedTrainingError as e:  # a lost worker: names it, nothing was published
        print(f"error: {printable(e)}", file=sys.stderr)
        return EXIT_ERROR
    except DatabaseError as e:  # the shared database is down or refused a write: says which (no password)
        print(f"error: {printable(e)}", file=sys.stderr)
        return EXIT_DATABASE
    except Exception as e:  # noqa: BLE001 - last resort: one line, not a traceback
        log.info("unexpected error", exc_info=True)
        print(f"error: unexpected {type(e).__name__}: {printable(e)} (run with -v for details)", file=sys.stderr)
        return EXIT_ERROR

"""``python -m core`` — train, evaluate, predict, data, models, export.

Exit codes (stable, scripted against):
  0 success · 1 unexpected error · 2 usage error · 3 data/input problem (missing or bad data
  root, all inputs unreadable) · 4 batch predict finished but some files were rejected ·
  5 no usable model / registry problem · 6 another training job is running · 130 cancelled (Ctrl-C)
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from pathlib import Path

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_DATA, EXIT_PARTIAL, EXIT_MODEL, EXIT_CANCELLED = 0, 1, 2, 3, 4, 5, 130
EXIT_BUSY = 6

log = logging.getLogger("core.cli")


def _quiet_tf() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from core.config import Config

    d = Config()
    # Recipe flags default to None = "not given": a --config file's value then survives, and
    # the Config default applies only when neither the file nor the flag sets it.
    p.add_argument("--data-root", help="dataset root (default: $PNEUMOSCOPE_DATA_ROOT or data/chest_xray)")
    p.add_argument("--input-size", type=int, default=None, help=f"default {d.input_size}")
    p.add_argument("--weights", default=None, help=f"imagenet | none | path to a local VGG-19 no-top .h5 file (default {d.weights})")
    p.add_argument("--head-epochs", type=int, default=None, help=f"default {d.head_epochs}")
    p.add_argument("--finetune-epochs", type=int, default=None, help=f"default {d.finetune_epochs}")
    p.add_argument("--head-lr", type=float, default=None, help=f"default {d.head_learning_rate}")
    p.add_argument("--finetune-lr", type=float, default=None, help=f"default {d.finetune_learning_rate}")
    p.add_argument("--finetune-schedule", default=None, help=f"constant | cosine (warm-up + cosine decay) (default {d.finetune_schedule})")
    p.add_argument("--label-smoothing", type=float, default=None, help=f"default {d.label_smoothing}")
    p.add_argument("--average-last-epochs", type=int, default=None, help=f"checkpoint averaging over the last k phase-2 epochs (default {d.average_last_epochs})")
    p.add_argument("--batch-size", type=int, default=None, help=f"default {d.batch_size}")
    p.add_argument("--val-fraction", type=float, default=None, help=f"default {d.val_fraction}")
    p.add_argument("--seed", type=int, default=None, help=f"default {d.seed}")
    p.add_argument("--patience", type=int, default=None, help=f"default {d.early_stopping_patience}")
    p.add_argument("--precision", default=None, help=f"float32 | mixed_bfloat16 | mixed_float16 (default {d.precision})")
    p.add_argument("--strategy", default=None, help=f"default | mirrored | multiworker (reads TF_CONFIG) (default {d.strategy})")
    p.add_argument("--threshold-policy", default=None, help=f"youden | sensitivity (default {d.threshold_policy})")
    p.add_argument("--target-sensitivity", type=float, default=None, help=f"default {d.target_sensitivity}")
    p.add_argument("--naive-phase1", action="store_true", help="recompute the frozen base every epoch (benchmarks)")
    p.add_argument("--limit-per-class", type=int, default=None, help="use at most N images per class and split (smoke runs)")
    p.add_argument("--version", default=None, help="registry version name (default: vNNNN-<timestamp>)")
    p.add_argument("--activate", action="store_true", help="make the new version active")
    p.add_argument("--config", default=None, help="JSON config file; command-line flags override it")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="PneumoScope core: pneumonia detection on pediatric chest X-rays (research demo, not a medical device).")
    parser.add_argument("--artifacts", default=None, help="registry root (default: $PNEUMOSCOPE_ARTIFACTS or ./artifacts)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="two-phase training; publishes a registry version")
    _add_train_args(p)

    p = sub.add_parser("evaluate", help="evaluate a version on a split")
    p.add_argument("--version", default=None, help="default: the active version")
    p.add_argument("--data-root", default=None)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--json", default=None, help="write the full report here")

    p = sub.add_parser("predict", help="predict files or folders; CSV out")
    p.add_argument("inputs", nargs="+", help="image files (PNG/JPEG/DICOM) or folders")
    p.add_argument("--version", default=None)
    p.add_argument("--csv", default=None, help="write results here (default: print a table)")
    p.add_argument("--gradcam-dir", default=None, help="save Grad-CAM overlays here as PNG")
    p.add_argument("--invert", action="store_true", help="invert every image first (the fix for guard code 'inverted')")
    p.add_argument("--rotate180", action="store_true", help="turn every image by 180 degrees first (the fix for 'upside_down')")

    p = sub.add_parser("data", help="inspect or download the dataset")
    p.add_argument("action", nargs="?", default="info", choices=["info", "download"])
    p.add_argument("--data-root", default=None)

    p = sub.add_parser("models", help="list / activate / delete registry versions")
    p.add_argument("action", choices=["list", "activate", "delete"])
    p.add_argument("name", nargs="?")

    p = sub.add_parser("export", help="write a TF SavedModel with a serving signature (TF Serving)")
    p.add_argument("--version", default=None)
    p.add_argument("--out", required=True)
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
    from core.training import publish, train

    base = Config.load(args.config) if args.config else Config()
    flags = dict(
        input_size=args.input_size, weights=args.weights, head_epochs=args.head_epochs,
        finetune_epochs=args.finetune_epochs, head_learning_rate=args.head_lr,
        finetune_learning_rate=args.finetune_lr, finetune_schedule=args.finetune_schedule,
        label_smoothing=args.label_smoothing, average_last_epochs=args.average_last_epochs,
        batch_size=args.batch_size, val_fraction=args.val_fraction,
        seed=args.seed, early_stopping_patience=args.patience, precision=args.precision, strategy=args.strategy,
        threshold_policy=args.threshold_policy, target_sensitivity=args.target_sensitivity,
    )
    cfg = base.replace(**{k: v for k, v in flags.items() if v is not None})  # only the flags given
    root = Path(args.data_root) if args.data_root else default_data_root()
    # Same lock as the admin page's jobs: one training at a time per registry, whoever starts it.
    from core import jobs

    lock_fd = jobs.acquire_training_lock(registry.root)
    if lock_fd is None:
        print(f"error: another training job is running for {registry.root} (see the admin page).", file=sys.stderr)
        return EXIT_BUSY
    try:
        result = train(cfg, root, progress=_progress_printer(), naive_phase1=args.naive_phase1, limit_per_class=args.limit_per_class)
        version = publish(result, registry, args.version, activate=args.activate)
    finally:
        os.close(lock_fd)  # the kernel would release it on exit too, even on kill -9
    summary = {"version": version, "active": registry.active_version() == version, "wall_time_s": result.provenance["wall_time_s"],
               "timings_s": result.provenance["timings_s"], "val_roc_auc": result.metrics["validation"]["roc_auc"]}
    if "test" in result.metrics:
        t = result.metrics["test"]
        summary["test"] = {k: t[k] for k in ("accuracy", "roc_auc", "pr_auc", "sensitivity", "specificity", "n")}
    print(json.dumps(summary, indent=2))
    return EXIT_OK


def cmd_evaluate(args, registry) -> int:
    import numpy as np

    from core import dataset as ds
    from core.config import default_data_root
    from core.evaluation import evaluate
    from core.predict import Predictor

    pred = Predictor(registry.load(args.version))
    root = Path(args.data_root) if args.data_root else default_data_root()
    index = ds.discover(root)
    samples = index.split(args.split)
    if not samples:
        raise ds.DatasetError(f"Split {args.split!r} is empty or missing under {root}.")
    arr = ds.load_arrays(samples, pred.size)
    res = pred.predict_arrays(list(arr.x))
    probs = np.array([r["probability"] for r in res])
    report = evaluate(arr.y, probs, pred.op.threshold, arr.paths, split=args.split, seed=pred.config.seed)
    keys = ("n", "threshold", "accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc", "pr_auc")
    out = {"version": pred.version, **{k: report[k] for k in keys}, "ci95": report["ci95"], "confusion_matrix": report["confusion_matrix"]}
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return EXIT_OK


def _expand(inputs) -> list[Path]:
    from core.dataset import IMAGE_SUFFIXES

    files: list[Path] = []
    for i in inputs:
        p = Path(i)
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        else:
            files.append(p)
    return files


def cmd_predict(args, registry) -> int:
    from core.predict import Predictor

    files = _expand(args.inputs)
    if not files:
        print("error: no image files found in the given inputs", file=sys.stderr)
        return EXIT_DATA
    pred = Predictor(registry.load(args.version))
    rows, n_bad = [], 0
    want_cam = bool(args.gradcam_dir)
    for start in range(0, len(files), 64):
        chunk = files[start : start + 64]
        results = pred.predict_paths(chunk, with_gradcam=want_cam, invert=args.invert, rotate180=args.rotate180)
        for f, r in zip(chunk, results):
            row = r.to_row()
            row["file"] = str(f)
            rows.append(row)
            n_bad += (not r.ok) or r.guard_status == "rejected"
            if want_cam and r.ok and r.heatmap is not None:
                _save_overlay(r, Path(args.gradcam_dir), f)
        print(f"predicted {min(start + 64, len(files))}/{len(files)}", file=sys.stderr, flush=True)
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
            w.writeheader()
            w.writerows(rows)
        print(f"wrote {len(rows)} rows to {args.csv}", file=sys.stderr)
    else:
        for row in rows:
            msg = row["message"] or row.get("guard_message") or ""
            p = row["probability_pneumonia"]
            print(f"{row['result']:<14} {'' if p is None else f'{p:.3f}':>6}  {row['file']}  {msg}")
    if n_bad == len(rows):
        return EXIT_DATA
    return EXIT_PARTIAL if n_bad else EXIT_OK


def _save_overlay(r, out_dir: Path, src: Path) -> None:
    import cv2

    from core.gradcam import overlay

    out_dir.mkdir(parents=True, exist_ok=True)
    img = overlay(r.image, r.heatmap, 0.4)
    cv2.imwrite(str(out_dir / f"{src.stem}_gradcam.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


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
    return EXIT_OK


def cmd_models(args, registry) -> int:
    from core.registry import RegistryError

    if args.action == "list":
        versions = registry.versions()
        if not versions:
            print(f"no versions in {registry.models_dir}")
        for v in versions:
            t = v.card.get("test", {})
            auc = t.get("roc_auc")
            print(f"{'*' if v.active else ' '} {v.name:<28} {v.card.get('input_size', '?'):>4}px  weights={v.card.get('weights_source', '?'):<28} test_auc={'' if auc is None else f'{auc:.4f}'}")
        return EXIT_OK
    if not args.name:
        print(f"error: `models {args.action}` needs a version name", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.action == "activate":
            registry.set_active(args.name)
        else:
            registry.delete(args.name)
    except (RegistryError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_MODEL
    print(f"{args.action}d {args.name}")
    return EXIT_OK


def cmd_export(args, registry) -> int:
    from core.export import export_saved_model

    loaded = registry.load(args.version)
    path = export_saved_model(loaded, args.out)
    print(f"SavedModel written to {path} (signature 'serving_default': image uint8 [N,H,W,3] -> probability, label)")
    return EXIT_OK


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "data": cmd_data, "models": cmd_models, "export": cmd_export}


def main(argv=None) -> int:
    _quiet_tf()
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on usage errors
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from core.dataset import DatasetError
    from core.imageio import ImageError
    from core.registry import Registry, RegistryError
    from core.training import TrainingCancelled

    registry = Registry(args.artifacts)
    try:
        return COMMANDS[args.command](args, registry)
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except TrainingCancelled as e:
        print(f"cancelled: {e}", file=sys.stderr)
        return EXIT_CANCELLED
    except (DatasetError, ImageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DATA
    except RegistryError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_MODEL
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - last resort: one line, not a traceback
        log.info("unexpected error", exc_info=True)
        print(f"error: unexpected {type(e).__name__}: {e} (run with -v for details)", file=sys.stderr)
        return EXIT_ERROR

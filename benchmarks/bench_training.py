#!/usr/bin/env python
"""Phase 1 with cached base features vs the naive way (frozen base recomputed every epoch).

Both runs use ``core.training.train`` on the same data, seed and number of epochs
(``head_epochs=N``, ``finetune_epochs=0``, early stopping disabled so both run all N epochs);
only ``naive_phase1`` differs. Timings come from the run's provenance:
``phase1_s`` (includes the one-off feature pass when caching) and ``features_s``.

    python benchmarks/bench_training.py                        # subset: 300/class, 5 epochs, 64 px
    python benchmarks/bench_training.py --full --epochs 10     # the whole train split
    python benchmarks/bench_training.py --json out.json

Not a pytest file: it prints a table (and JSON) of the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

log = logging.getLogger("bench_training")


def _default_root() -> Path:
    from core.config import default_data_root

    root = default_data_root()
    if not root.is_absolute():
        root = REPO / root
    shared = REPO.parent / "shared" / "data" / "chest_xray"
    return root if root.is_dir() or not shared.is_dir() else shared


def run_mode(mode: str, args) -> dict:
    import keras

    from core.config import Config
    from core.training import train

    keras.backend.clear_session()
    cfg = Config(
        input_size=args.input_size, weights=args.weights, head_epochs=args.epochs, finetune_epochs=0,
        batch_size=args.batch_size, early_stopping_patience=args.epochs + 1, seed=args.seed,
    )
    limit = None if args.full else args.limit_per_class
    log.info("running phase 1 '%s' (%d epochs, %d px, limit/class=%s)", mode, args.epochs, args.input_size, limit)
    t = time.perf_counter()
    result = train(cfg, args.data_root, naive_phase1=(mode == "naive"), evaluate_test=False,
                   limit_per_class=limit, n_bootstrap=10)
    wall = time.perf_counter() - t
    tim = result.provenance["timings_s"]
    epochs_run = len(result.history["head"].get("loss", []))
    phase1 = float(tim["phase1_s"])
    features = float(tim.get("features_s", 0.0))
    counts = result.provenance["counts"]
    return {
        "mode": "cached_features" if mode == "cached" else "naive",
        "phase1_s": phase1,
        "features_s": features,
        "epochs": epochs_run,
        "per_epoch_s": (phase1 - features) / max(epochs_run, 1),
        "train_images": sum(counts["train"].values()),
        "validation_images": sum(counts["validation"].values()),
        "val_auc_last": result.history["head"]["val_auc"][-1] if epochs_run else None,
        "run_wall_s": wall,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", type=Path, default=None, help="default: $PNEUMOSCOPE_DATA_ROOT, data/chest_xray or ../shared/data/chest_xray")
    p.add_argument("--limit-per-class", type=int, default=300, help="images per class from train (ignored with --full)")
    p.add_argument("--full", action="store_true", help="use the whole train split")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--weights", default="none", help="none | imagenet | local .h5 (timing does not depend on the values)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--modes", default="cached,naive", help="comma-separated: cached,naive")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    args.data_root = args.data_root or _default_root()

    import tensorflow as tf

    rows = [run_mode(m.strip(), args) for m in args.modes.split(",") if m.strip()]
    by = {r["mode"]: r for r in rows}
    ratio = per_epoch_ratio = None
    if "naive" in by and "cached_features" in by:
        ratio = by["naive"]["phase1_s"] / by["cached_features"]["phase1_s"]
        if by["cached_features"]["per_epoch_s"] > 0:
            per_epoch_ratio = by["naive"]["per_epoch_s"] / by["cached_features"]["per_epoch_s"]

    print()
    print(f"Phase 1 (base frozen), {rows[0]['train_images']} train + {rows[0]['validation_images']} validation images, "
          f"{args.input_size} px, batch {args.batch_size}, {args.epochs} epochs")
    print(f"{'mode':<16} {'phase-1 s':>10} {'features s':>11} {'per-epoch s':>12} {'ratio':>7}")
    for r in rows:
        rr = by["naive"]["phase1_s"] / r["phase1_s"] if "naive" in by else float("nan")
        print(f"{r['mode']:<16} {r['phase1_s']:>10.2f} {r['features_s']:>11.2f} {r['per_epoch_s']:>12.3f} {rr:>6.2f}x")
    if ratio is not None:
        print(f"cached features make phase 1 {ratio:.1f}x faster overall"
              + (f" ({per_epoch_ratio:.0f}x per epoch after the one-off feature pass)" if per_epoch_ratio else ""))
    out = {
        "benchmark": "phase1_cached_vs_naive",
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "results": rows,
        "ratio_phase1": ratio,
        "ratio_per_epoch": per_epoch_ratio,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "tensorflow": tf.__version__,
                    "gpus": len(tf.config.list_physical_devices("GPU"))},
    }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

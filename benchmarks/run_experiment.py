"""Reproduce one row of docs/ablation.md.

    PYTHONPATH=. python benchmarks/run_experiment.py NAME '{"intensity_norm": true, ...}' \
        [--data-root ../shared/data/chest_xray] [--artifacts /tmp/art_exp]

Trains with ``Config(weights="none", precision="mixed_bfloat16", **overrides)`` on the full
train split (patient-wise validation carved out of it), publishes the version into the
given registry (not the app's) and prints one ``RESULT {json}`` line: validation AUC
(the only number any choice was made on), test figures (reported, never used to choose),
wall time and per-stage timings.
"""

import argparse
import json
import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from core.cli import _progress_printer  # noqa: E402
from core.config import Config  # noqa: E402
from core.registry import Registry  # noqa: E402
from core.publish import publish  # noqa: E402
from core.training import train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("overrides", help="JSON object of Config fields")
    ap.add_argument("--data-root", default="../shared/data/chest_xray")
    ap.add_argument("--artifacts", default="/tmp/art_exp")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    overrides = json.loads(args.overrides)
    cfg = Config(**{"weights": "none", "precision": "mixed_bfloat16", **overrides})
    r = train(cfg, args.data_root, progress=_progress_printer())
    publish(r, Registry(args.artifacts), args.name)
    t = r.metrics.get("test", {})
    print("RESULT", json.dumps({
        "name": args.name, "overrides": overrides, "val_auc": r.metrics["validation"]["roc_auc"],
        "test": {k: t.get(k) for k in ("accuracy", "roc_auc", "sensitivity", "specificity")},
        "wall_s": r.provenance["wall_time_s"], "timings": r.provenance["timings_s"],
        "ft_val_auc": r.history["finetune"].get("val_auc"), "head_best": r.history["head_best_epoch"],
        "ft_best": r.history["finetune_best_epoch"],
    }))


if __name__ == "__main__":
    main()

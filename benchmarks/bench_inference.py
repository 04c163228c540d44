#!/usr/bin/env python
"""Serving latency and throughput of ``core.predict.Predictor``, side by side with the bare model.

The baseline is the bare Keras model compiled with ``tf.function`` on an already-resized
(1, s, s, 3) array, measured **in the same process, interleaved** with the serving calls
(round-robin, so a load change on a shared machine hits every column alike). Warm-up is
excluded. Printed ratios are the issue-13 targets:

- predict 1 image (bytes in: decode + guard + forward + calibration + OOD), p50 / bare p50   (<= 1.3)
- the same with the model's default heatmap, p50 / bare p50                                   (<= 2.5)
- a batch of 64 decoded images with maps, throughput / bare batch-64 throughput              (>= 0.4)

    python benchmarks/bench_inference.py                          # active model in artifacts/
    python benchmarks/bench_inference.py --artifacts /tmp/reg --version v0001-tiny
    python benchmarks/bench_inference.py --runs 100 --json out.json

Not a pytest file: it prints a table and JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _percentiles(ms: list[float]) -> dict:
    import numpy as np

    a = np.asarray(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "mean_ms": float(a.mean()), "n": int(len(a))}


def interleaved(fns: dict, warmup: int, runs: int) -> dict:
    """Time every fn(i) once per round, rotating the order each round -> percentiles per name."""
    names = list(fns)
    for i in range(warmup):
        for n in names:
            fns[n](i)
    ms: dict = {n: [] for n in names}
    for i in range(runs):
        k = i % len(names)
        for n in names[k:] + names[:k]:
            t = time.perf_counter()
            fns[n](i)
            ms[n].append((time.perf_counter() - t) * 1000)
    return {n: _percentiles(v) for n, v in ms.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifacts", type=Path, default=None, help="registry root (default: $PNEUMOSCOPE_ARTIFACTS or ./artifacts)")
    p.add_argument("--version", default=None, help="default: the active version")
    p.add_argument("--images", type=Path, default=REPO / "samples" / "chest_xray" / "test",
                   help="folder of images to cycle through (default: the committed sample test images)")
    p.add_argument("--runs", type=int, default=60, help="timed rounds of single-image calls")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=64, help="batch size for the throughput comparison")
    p.add_argument("--batch-repeats", type=int, default=6, help="timed rounds of batches")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    from core.imageio import load_image, resize_for_model, scan_folder
    from core.predict import Predictor
    from core.registry import Registry

    reg = Registry(args.artifacts)
    t = time.perf_counter()
    pred = Predictor.from_registry(reg, args.version)  # traces + warms up its compiled passes
    load_s = time.perf_counter() - t
    files = scan_folder(args.images).images  # by content, like python -m core predict FOLDER
    if not files:
        print(f"error: no images under {args.images}", file=sys.stderr)
        return 3
    blobs = [(f.name, f.read_bytes()) for f in files]
    arrays = [load_image(f).array for f in files]
    inputs = [resize_for_model(a, pred.size)[None].astype("float32") for a in arrays]
    model = pred.model
    bare = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    single = interleaved({
        "bare": lambda i: bare(inputs[i % len(inputs)]).numpy(),
        "predict": lambda i: pred.predict_bytes([blobs[i % len(blobs)]]),
        "predict_map": lambda i: pred.predict_bytes([blobs[i % len(blobs)]], with_map=True),
    }, args.warmup, args.runs)

    bs = args.batch
    batch_arrays = [arrays[i % len(arrays)] for i in range(bs)]
    batch_x = np.concatenate([inputs[i % len(inputs)] for i in range(bs)])
    batch_blobs = [blobs[i % len(blobs)] for i in range(bs)]
    batch = interleaved({
        "bare": lambda i: bare(batch_x).numpy(),
        "arrays_map": lambda i: pred.predict_arrays(batch_arrays, with_map=True, batch_size=bs),
        "bytes_map": lambda i: pred.predict_bytes(batch_blobs, with_map=True),
    }, 1, args.batch_repeats)
    thr = {k: bs / (v["p50_ms"] / 1000) for k, v in batch.items()}

    b = single["bare"]["p50_ms"]
    ratios = {
        "predict_p50_over_bare": single["predict"]["p50_ms"] / b,
        "predict_map_p50_over_bare": single["predict_map"]["p50_ms"] / b,
        "batch_map_throughput_over_bare": thr["arrays_map"] / thr["bare"],
        "batch_bytes_map_throughput_over_bare": thr["bytes_map"] / thr["bare"],
    }
    targets = {"predict_p50_over_bare": ("<=", 1.3), "predict_map_p50_over_bare": ("<=", 2.5),
               "batch_map_throughput_over_bare": (">=", 0.4)}
    print()
    print(f"model {pred.version}: {pred.size} px, default map {pred.explain_method}@{pred.explain_layer}, "
          f"loaded + warmed up in {load_s:.1f} s; {len(files)} images cycled; {args.runs} interleaved rounds")
    print(f"{'single image':<44} {'p50 ms':>8} {'p95 ms':>8}")
    for name, label in (("bare", "bare model, compiled (baseline)"), ("predict", "predict (bytes in, no map)"),
                        ("predict_map", "predict + default map")):
        print(f"{label:<44} {single[name]['p50_ms']:>8.1f} {single[name]['p95_ms']:>8.1f}")
    print(f"{'batch of ' + str(bs):<44} {'img/s':>8}")
    for name, label in (("bare", "bare model, compiled (baseline)"), ("arrays_map", "decoded arrays + maps"),
                        ("bytes_map", "bytes in (decode + guard) + maps")):
        print(f"{label:<44} {thr[name]:>8.1f}")
    print(f"{'ratio':<44} {'value':>8} {'target':>8}")
    for k, v in ratios.items():
        op, goal = targets.get(k, ("", None))
        ok = "" if goal is None else ("  met" if (v <= goal if op == "<=" else v >= goal) else "  MISSED")
        print(f"{k:<44} {v:>8.2f} {(op + ' ' + str(goal)) if goal else '':>8}{ok}")
    out = {
        "benchmark": "inference",
        "model_version": pred.version,
        "input_size": pred.size,
        "default_map": [pred.explain_method, pred.explain_layer],
        "model_load_s": load_s,
        "images": len(files),
        "single": single,
        "batch": batch,
        "batch_images_per_s": thr,
        "ratios": ratios,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "tensorflow": tf.__version__,
                    "gpus": len(tf.config.list_physical_devices("GPU")),
                    "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
    }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Serving latency and throughput of ``core.predict.Predictor``.

Measures, after warm-up (excluded):
- single-image predict (JPEG bytes in: decode + checks + forward + calibration + OOD), p50/p95 ms
- the same with Grad-CAM, p50/p95 ms
- batch throughput on already-decoded images (``predict_arrays``), images/s per batch size

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


def _latency(fn, items, warmup: int, runs: int) -> dict:
    for i in range(warmup):
        fn(items[i % len(items)])
    ms = []
    for i in range(runs):
        t = time.perf_counter()
        fn(items[i % len(items)])
        ms.append((time.perf_counter() - t) * 1000)
    return _percentiles(ms)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifacts", type=Path, default=None, help="registry root (default: $PNEUMOSCOPE_ARTIFACTS or ./artifacts)")
    p.add_argument("--version", default=None, help="default: the active version")
    p.add_argument("--images", type=Path, default=REPO / "samples" / "chest_xray" / "test",
                   help="folder of images to cycle through (default: the committed sample test images)")
    p.add_argument("--runs", type=int, default=50, help="timed single-image calls per measurement")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--batch-repeats", type=int, default=5, help="timed batches per batch size")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)

    import tensorflow as tf

    from core.dataset import IMAGE_SUFFIXES
    from core.imageio import load_image
    from core.predict import Predictor
    from core.registry import Registry

    reg = Registry(args.artifacts)
    t = time.perf_counter()
    pred = Predictor.from_registry(reg, args.version)
    load_s = time.perf_counter() - t
    files = sorted(f for f in args.images.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        print(f"error: no images under {args.images}", file=sys.stderr)
        return 3
    blobs = [(f.name, f.read_bytes()) for f in files]
    arrays = [load_image(f).array for f in files]

    single = _latency(lambda it: pred.predict_bytes([it]), blobs, args.warmup, args.runs)
    cam = _latency(lambda it: pred.predict_bytes([it], with_gradcam=True), blobs, args.warmup, args.runs)
    forward = _latency(lambda a: pred.predict_arrays([a]), arrays, args.warmup, args.runs)

    throughput = {}
    for bs in args.batch_sizes:
        batch = [arrays[i % len(arrays)] for i in range(bs)]
        pred.predict_arrays(batch, batch_size=bs)  # warm-up (traces this batch shape)
        t = time.perf_counter()
        for _ in range(args.batch_repeats):
            pred.predict_arrays(batch, batch_size=bs)
        dt = time.perf_counter() - t
        throughput[str(bs)] = {"images_per_s": bs * args.batch_repeats / dt, "ms_per_batch": 1000 * dt / args.batch_repeats}

    rows = [
        ("predict 1 image (bytes in)", single),
        ("predict 1 image + Grad-CAM", cam),
        ("forward 1 decoded image", forward),
    ]
    print()
    print(f"model {pred.version}: {pred.size} px, loaded in {load_s:.1f} s; {len(files)} images cycled; "
          f"{args.runs} timed runs after {args.warmup} warm-up")
    print(f"{'measurement':<30} {'p50 ms':>9} {'p95 ms':>9} {'mean ms':>9}")
    for name, r in rows:
        print(f"{name:<30} {r['p50_ms']:>9.1f} {r['p95_ms']:>9.1f} {r['mean_ms']:>9.1f}")
    print(f"{'batch size':<30} {'images/s':>9} {'ms/batch':>9}")
    for bs, r in throughput.items():
        print(f"{bs:<30} {r['images_per_s']:>9.1f} {r['ms_per_batch']:>9.1f}")
    out = {
        "benchmark": "inference",
        "model_version": pred.version,
        "input_size": pred.size,
        "model_load_s": load_s,
        "images": len(files),
        "single_predict": single,
        "single_predict_gradcam": cam,
        "single_forward_decoded": forward,
        "batch_throughput": throughput,
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

"""Phase-2 step time on this CPU: float32 vs mixed bfloat16, with and without XLA.

    python benchmarks/bench_precision.py [--size 64] [--batch 32] [--steps 8] [--json out.json]

Builds the real model (``core.model.build_model``, random init, every layer trainable as in
phase 2), compiles it as phase 2 does (Adam, binary cross-entropy) and times
``train_on_batch`` and ``predict_on_batch`` on random data after two warm-up steps, for each
of the four combinations. Prints ms per training image and per inference image. Timing
depends on the weight values not at all, so random init is representative. Run it on an
otherwise idle machine: every combination shares the same cores.
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
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402


def time_combo(precision: str, jit: bool, size: int, batch: int, steps: int) -> dict:
    import keras

    from core.config import Config
    from core.model import build_model

    keras.mixed_precision.set_global_policy(precision)
    try:
        cfg = Config(weights="none", input_size=size, precision=precision)
        model = build_model(cfg)
        model.trainable = True
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="binary_crossentropy", jit_compile=jit)
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (batch, size, size, 3)).astype("float32")
        y = rng.integers(0, 2, (batch, 1)).astype("float32")
        for _ in range(2):  # warm-up: tracing / XLA compilation
            model.train_on_batch(x, y)
            model.predict_on_batch(x)
        t = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(x, y)
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(steps):
            model.predict_on_batch(x)
        infer_s = time.perf_counter() - t
    finally:
        keras.mixed_precision.set_global_policy("float32")
        keras.backend.clear_session()
    n = steps * batch
    return {"precision": precision, "xla": jit, "train_ms_per_image": 1000 * train_s / n,
            "infer_ms_per_image": 1000 * infer_s / n}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import tensorflow as tf

    rows = []
    for precision in ("float32", "mixed_bfloat16"):
        for jit in (False, True):
            try:
                rows.append(time_combo(precision, jit, args.size, args.batch, args.steps))
            except Exception as exc:  # noqa: BLE001 - XLA may be unavailable for some op on some builds
                rows.append({"precision": precision, "xla": jit, "error": f"{type(exc).__name__}: {exc}"[:300]})
    base = rows[0].get("train_ms_per_image")
    print(f"VGG-19 phase-2 step, {args.size} px, batch {args.batch}, {args.steps} timed steps, "
          f"{os.cpu_count()} CPUs, TF {tf.__version__}, load {os.getloadavg()[0]:.2f}")
    print(f"{'precision':<16}{'XLA':<6}{'train ms/img':>14}{'infer ms/img':>14}{'train speed-up':>16}")
    for r in rows:
        if "error" in r:
            print(f"{r['precision']:<16}{str(r['xla']):<6}  error: {r['error']}")
            continue
        up = base / r["train_ms_per_image"] if base else float("nan")
        print(f"{r['precision']:<16}{str(r['xla']):<6}{r['train_ms_per_image']:>14.1f}{r['infer_ms_per_image']:>14.1f}{up:>15.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"platform": platform.platform(), "cpus": os.cpu_count(),
                                               "tensorflow": tf.__version__, "size": args.size, "batch": args.batch,
                                               "steps": args.steps, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

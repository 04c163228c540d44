"""Peak memory of analysing huge images, over the loaded-model baseline (issue 14, item 5).

Writes a 7000 x 7000 16-bit grey PNG (a real sample X-ray scaled up, 10-bit values plus
noise, about 98 MB of pixels: under the 50-megapixel limit), then in a **fresh subprocess**:
loads the active model, warms it up on a small X-ray, reads the peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) as the baseline, analyses the big file(s)
with ``Predictor.predict_paths`` and reads the peak RSS again. Printed: baseline, peak and
the difference (the figure the target is about: <= 400 MB), and the peak of the decode worker
process that decoded the files (core.decode_pool; sampled every 5 ms), since issue 21 moved
decoding out of the server process.

    python benchmarks/bench_memory.py                 # one 7000x7000 16-bit grey PNG
    python benchmarks/bench_memory.py --batch 8       # eight such files in one call
    python benchmarks/bench_memory.py --kind rgb16 --side 4000   # 16-bit colour PNG (7000 px would exceed 50 MB)
    python benchmarks/bench_memory.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SIDE = 7000


def make_image(path: Path, kind: str, side: int = SIDE, seed: int = 0) -> None:
    import cv2
    import numpy as np

    sample = sorted((REPO / "samples" / "chest_xray").rglob("*.jpeg"))[0]
    g = cv2.imread(str(sample), cv2.IMREAD_GRAYSCALE)
    big = cv2.resize(g, (side, side), interpolation=cv2.INTER_LINEAR).astype(np.uint16) * 4  # 10-bit values
    rng = np.random.default_rng(seed)
    big += rng.integers(0, 4, size=big.shape, dtype=np.uint16)  # noise: a realistic file size
    if kind == "rgb16":
        big = np.dstack([big, big, big])
    cv2.imwrite(str(path), big)


def child(paths: list[str], with_gradcam: bool) -> dict:
    import resource

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from core.predict import Predictor

    def peak_mb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    from benchmarks.procmem import Sampler, child_peak, tree_rss

    pred = Predictor.from_registry()
    warm = sorted((REPO / "samples" / "chest_xray").rglob("*.jpeg"))[:2]
    pred.predict_paths(warm, with_map=with_gradcam)
    base = peak_mb()
    _, parts = tree_rss(os.getpid())
    worker_idle = child_peak(parts) / 2**20
    with Sampler(os.getpid()) as s:
        res = pred.predict_paths(paths, with_map=with_gradcam)
    peak = peak_mb()
    worker_peak = child_peak(s.peaks) / 2**20
    return {
        "baseline_peak_rss_mb": round(base, 1),
        "peak_rss_mb": round(peak, 1),
        "over_baseline_mb": round(peak - base, 1),
        # the file is decoded in a worker process (core.decode_pool): its peak, sampled every 5 ms
        "decode_worker_idle_mb": round(worker_idle, 1),
        "decode_worker_peak_mb": round(worker_peak, 1),
        "results": [{"label": r.label, "guard": r.guard_code, "image_shape": None if r.image is None else list(r.image.shape)}
                    for r in res],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=["grey16", "rgb16"], default="grey16")
    ap.add_argument("--batch", type=int, default=1, help="files analysed in one predict_paths call (default 1)")
    ap.add_argument("--side", type=int, default=SIDE, help=f"image side in pixels (default {SIDE})")
    ap.add_argument("--gradcam", action="store_true", help="also compute Grad-CAM")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child, args.gradcam)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        one = Path(tmp) / f"big_{args.kind}.png"
        make_image(one, args.kind, side=args.side)
        paths = [one]
        for i in range(1, args.batch):
            p = Path(tmp) / f"big_{args.kind}_{i}.png"
            os.link(one, p)
            paths.append(p)
        cmd = [sys.executable, __file__, "--child", *map(str, paths)] + (["--gradcam"] if args.gradcam else [])
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            return 1
        res = json.loads(out.stdout.strip().splitlines()[-1])
        res.update(kind=args.kind, side=args.side, batch=args.batch, file_mb=round(one.stat().st_size / 2**20, 1),
                   gradcam=bool(args.gradcam))
    print(f"{args.batch} x {args.side}x{args.side} {args.kind} PNG ({res['file_mb']} MB each): baseline peak RSS "
          f"{res['baseline_peak_rss_mb']:.0f} MB (model loaded, warmed up), peak {res['peak_rss_mb']:.0f} MB, "
          f"**+{res['over_baseline_mb']:.0f} MB** over the baseline (target <= 400 MB); decode worker "
          f"{res['decode_worker_idle_mb']:.0f} MB idle, peak {res['decode_worker_peak_mb']:.0f} MB; results: "
          f"{[(r['label'], r['guard']) for r in res['results']][:3]}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

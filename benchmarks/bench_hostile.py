"""Peak memory and time of each class of hostile file (issue 21), against the warm server.

Generates every file of ``benchmarks/hostile_files.py`` at the size the issue measured, then,
in a **fresh process** that loads and warms up the active model (the server), analyses each one
with ``Predictor.predict_bytes`` and prints, per class:

* ``server +MB``: peak RSS of the server process over its warm level (exact: VmHWM, reset
  before each file);
* ``worker +MB``: peak RSS of the decode worker over its idle level (exact VmHWM from the
  worker's reply; sampled every 5 ms when the worker was killed);
* ``total +MB``: the two together (what the machine spent on the file), and the wall time;
* the outcome the user sees (code and the start of the message).

Then the same files through the CLI (``python -m core predict FILE``, a process tree of its own,
sampled every 5 ms): peak RSS of the tree minus that of the same command on a normal film,
wall time, exit code. Targets (issue 21): <= 1 GB and <= 20 s per file, a clean message.

    python benchmarks/bench_hostile.py                      # every class, API + CLI
    python benchmarks/bench_hostile.py --classes webp_rgba_49mp png16_rgba_49mp --no-cli
    python benchmarks/bench_hostile.py --no-header-checks   # core.imageio's header checks off:
                                                            # the worker's limits alone
    python benchmarks/bench_hostile.py --sessions 4 --classes webp_rgba_49mp   # 4 callers at once
    python benchmarks/bench_hostile.py --calibrate          # memory estimate vs measured peak,
                                                            # ordinary images of every format
    python benchmarks/bench_hostile.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import hostile_files  # noqa: E402
from benchmarks.procmem import Sampler, child_peak, reset_peak, status, tree_rss  # noqa: E402

SAMPLE = sorted((REPO / "samples" / "chest_xray" / "test").rglob("*.jpeg"))[0]


# --- the server (child process) --------------------------------------------------------------
def child(files: list[str], sessions: int) -> list[dict]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from core import decode_pool
    from core.predict import Predictor

    pred = Predictor.from_registry()
    pred.predict_paths([SAMPLE, SAMPLE])  # warm: model traced, a decode worker running
    pool = decode_pool.default_pool()
    rows = []
    for f in files:
        data = Path(f).read_bytes()
        time.sleep(0.3)
        _, parts = tree_rss(os.getpid())
        idle_workers = {p: r for p, r in parts.items() if p != os.getpid()}
        worker_idle = child_peak(parts)
        reset_peak()
        server_warm = status("VmRSS")
        pool.stats["last_peak_rss"] = None
        t0 = time.monotonic()
        with Sampler(os.getpid()) as s:
            if sessions > 1:
                out: list = []
                item = [(Path(f).name, data)]
                ts = [threading.Thread(target=lambda o=out, it=item: o.extend(pred.predict_bytes(it)))
                      for _ in range(sessions)]
                for t in ts:
                    t.start()
                for t in ts:
                    t.join()
                res = out
            else:
                res = pred.predict_bytes([(Path(f).name, data)])
        wall = time.monotonic() - t0
        server_peak = status("VmHWM")
        reported = pool.stats.get("last_peak_rss")
        worker_peak = max(reported or 0, 0 if sessions == 1 and reported else child_peak(s.peaks))
        r = res[0]
        rows.append({
            "file": Path(f).name, "bytes": len(data), "sessions": sessions, "wall_s": round(wall, 2),
            "server_over_warm_mb": round((server_peak - server_warm) / 2**20, 1),
            "worker_over_idle_mb": round(max(0, worker_peak - worker_idle) / 2**20, 1),
            "tree_over_warm_mb": round(max(0, s.peak - server_warm - sum(idle_workers.values())) / 2**20, 1),
            "outcome": r.error_code if not r.ok else f"{r.label} (guard {r.guard_code})",
            "message": (r.error or r.guard_message or "")[:110],
        })
    return rows


# --- the CLI ---------------------------------------------------------------------------------
def run_cli(path: Path) -> dict:
    # a throwaway database: the CLI's audit lines stay out of the registry's trail
    scratch = Path(tempfile.mkdtemp(prefix="bench-hostile-db-"))
    env = {**os.environ, "PNEUMOSCOPE_DATABASE_URL": f"sqlite:///{scratch / 'bench.db'}", "TF_CPP_MIN_LOG_LEVEL": "2"}
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "core", "predict", str(path)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with Sampler(proc.pid, 0.005) as s:
        out, err = proc.communicate()
    lines = [ln for ln in (out + err).splitlines() if ln.strip()]
    return {"peak_tree_mb": round(s.peak / 2**20, 1), "wall_s": round(time.monotonic() - t0, 2),
            "exit": proc.returncode, "tail": " | ".join(lines[-2:])[:160],
            "traceback": "Traceback" in out + err}


# --- calibration: the memory estimate of core.imageio against measured peaks --------------------
def calibrate() -> list[dict]:
    import io

    import cv2
    import numpy as np
    from PIL import Image

    side = 3000
    rng = np.random.default_rng(0)
    g8 = rng.integers(0, 256, (side, side)).astype(np.uint8)
    g16 = g8.astype(np.uint16) * 16

    def pil(arr, fmt, mode=None, **kw):
        b = io.BytesIO()
        img = Image.fromarray(arr)
        (img.convert(mode) if mode else img).save(b, format=fmt, **kw)
        return b.getvalue()

    files = {
        "PNG L8": pil(g8, "PNG"), "PNG L16": cv2.imencode(".png", g16)[1].tobytes(),
        "PNG RGB8": pil(np.dstack([g8] * 3), "PNG"), "PNG RGBA8": pil(np.dstack([g8] * 4), "PNG"),
        "PNG RGB16": cv2.imencode(".png", np.dstack([g16] * 3))[1].tobytes(),
        "PNG RGBA16": cv2.imencode(".png", np.dstack([g16] * 4))[1].tobytes(),
        "PNG LA8": pil(np.dstack([g8] * 4), "PNG", "LA"), "PNG P": pil(np.dstack([g8] * 3), "PNG", "P"),
        "JPEG L": pil(g8, "JPEG"), "JPEG RGB": pil(np.dstack([g8] * 3), "JPEG"),
        "JPEG progressive": pil(g8, "JPEG", progressive=True), "JPEG CMYK": pil(np.dstack([g8] * 3), "JPEG", "CMYK"),
        "TIFF L16": cv2.imencode(".tiff", g16)[1].tobytes(), "TIFF F32": pil(g16.astype(np.float32), "TIFF"),
        "WebP RGB": pil(np.dstack([g8] * 3), "WEBP", lossless=True),
        "WebP RGBA": pil(np.dstack([g8] * 4), "WEBP", lossless=True),
        "BMP": pil(np.dstack([g8] * 3), "BMP"), "GIF": pil(g8, "GIF"), "JPEG 2000 L": pil(g8, "JPEG2000"),
        "DICOM 16-bit windowed": hostile_files._dicom(
            g16.tobytes(), rows=side, cols=side, tsyntax="1.2.840.10008.1.2.1", bits=16,
            extra=lambda ds: (setattr(ds, "WindowCenter", "2000"), setattr(ds, "WindowWidth", "4000"))),
        "DICOM JPEG 2000": hostile_files._dicom(hostile_files.j2k_codestream(g8), rows=side, cols=side,
                                                tsyntax="1.2.840.10008.1.2.4.90", encapsulate=True),
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            f = Path(tmp) / "f"
            f.write_bytes(data)
            out = subprocess.run([sys.executable, __file__, "--calibrate-one", str(f)], capture_output=True,
                                 text=True, cwd=REPO)
            if out.returncode != 0 or not out.stdout.strip():
                print(f"{name}: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else 'no output'}",
                      file=sys.stderr)
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["format"] = name
            rows.append(row)
    return rows


def calibrate_one(path: str) -> dict:
    import io

    from PIL import Image

    from core import imageio

    data = Path(path).read_bytes()
    kind = imageio._sniff(data)
    if kind == "DICOM":
        ds = imageio._read_dicom(data)
        ts = imageio._ensure_transfer_syntax(ds)
        est = imageio.dicom_bytes_per_pixel(int(ds.SamplesPerPixel), int(ds.BitsAllocated), bool(ts.is_compressed),
                                            str(ts).startswith("1.2.840.10008.1.2.4.9"))
        del ds
    else:
        img = Image.open(io.BytesIO(data))
        est = imageio.raster_bytes_per_pixel(img, data, kind)
        img.close()
    # VmHWM reset to the current RSS (ru_maxrss would carry the parent's peak across exec)
    reset_peak()
    base = status("VmHWM")
    d = imageio.decode_image(data, max_side=imageio.WORK_MAX_SIDE)
    peak = status("VmHWM") - base
    px = d.info["width"] * d.info["height"]
    return {"estimate_bpp": round(est, 1), "measured_bpp": round(peak / px, 1), "ratio": round(est * px / peak, 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", nargs="*", default=list(hostile_files.CLASSES), choices=list(hostile_files.CLASSES))
    ap.add_argument("--no-cli", action="store_true", help="only the Python API (Predictor.predict_bytes)")
    ap.add_argument("--no-header-checks", action="store_true",
                    help="switch core.imageio's declared-size checks off: only the worker's limits remain")
    ap.add_argument("--sessions", type=int, default=1, help="callers analysing the same file at once (threads)")
    ap.add_argument("--calibrate", action="store_true", help="memory estimate vs measured peak, ordinary images")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--calibrate-one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.calibrate_one:
        print(json.dumps(calibrate_one(args.calibrate_one)))
        return 0
    if args.child is not None:
        if os.environ.get("BENCH_NO_HEADER_CHECKS"):
            from core import imageio

            imageio.MAX_DECODE_BYTES = imageio.MAX_DICOM_DATASET_BYTES = 10**13
            imageio.MAX_JPEG_SCANS = 10**9
        print(json.dumps(child(args.child, args.sessions)))
        return 0
    if args.calibrate:
        rows = calibrate()
        print(f"{'format (3000 x 3000)':24s} {'estimate B/px':>14s} {'measured B/px':>14s} {'estimate/measured':>18s}")
        for r in rows:
            print(f"{r['format']:24s} {r['estimate_bpp']:14.1f} {r['measured_bpp']:14.1f} {r['ratio']:18.2f}")
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2))
        return 0

    result: dict = {"header_checks": not args.no_header_checks, "sessions": args.sessions}
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name in args.classes:
            p = Path(tmp) / f"{name}.bin"
            p.write_bytes(hostile_files.make(name))
            paths.append(p)
        env = {**os.environ, **({"BENCH_NO_HEADER_CHECKS": "1"} if args.no_header_checks else {})}
        out = subprocess.run([sys.executable, __file__, "--child", *map(str, paths), "--sessions",
                              str(args.sessions)], capture_output=True, text=True, cwd=REPO, env=env)
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            return 1
        rows = json.loads(out.stdout.strip().splitlines()[-1])
        result["api"] = rows
        print(f"Predictor.predict_bytes, warm server (model loaded, one decode worker idle); "
              f"header checks {'on' if not args.no_header_checks else 'OFF'}; {args.sessions} caller(s) per file")
        print(f"{'class':30s} {'file':>9s} {'server +MB':>10s} {'worker +MB':>10s} {'total +MB':>9s} "
              f"{'wall s':>7s}  outcome: message")
        for r in rows:
            print(f"{r['file'][:-4]:30s} {r['bytes']:9,d} {r['server_over_warm_mb']:10.0f} {r['worker_over_idle_mb']:10.0f} "
                  f"{r['tree_over_warm_mb']:9.0f} {r['wall_s']:7.2f}  {r['outcome']}: {r['message']}")
        if not args.no_cli:
            if os.environ.get("BENCH_NO_HEADER_CHECKS") or args.no_header_checks:
                print("(CLI runs use the shipped limits)")
            # TensorFlow's start-up peak varies by hundreds of MB from run to run: the baseline is
            # the highest of three runs on a normal film
            films = [run_cli(SAMPLE) for _ in range(3)]
            base = max(films, key=lambda r: r["peak_tree_mb"])
            result["cli_baseline"] = films
            print(f"\npython -m core predict FILE (whole process tree, sampled every 5 ms); on a normal film: peak "
                  f"{min(r['peak_tree_mb'] for r in films):.0f}-{base['peak_tree_mb']:.0f} MB over 3 runs, "
                  f"{base['wall_s']:.1f} s, exit {base['exit']}")
            print(f"{'class':30s} {'+MB vs film':>11s} {'wall s':>7s} {'exit':>4s}  traceback  last line")
            result["cli"] = []
            for p in paths:
                r = run_cli(p)
                r["file"] = p.name
                r["over_film_mb"] = round(r["peak_tree_mb"] - base["peak_tree_mb"], 1)
                result["cli"].append(r)
                print(f"{p.stem:30s} {r['over_film_mb']:11.0f} {r['wall_s']:7.2f} {r['exit']:4d}  "
                      f"{'YES' if r['traceback'] else 'no':9s}  {r['tail']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

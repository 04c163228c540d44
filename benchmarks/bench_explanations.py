#!/usr/bin/env python
"""Faithfulness of the explanation maps: deletion / insertion (Petsiuk et al. 2018, RISE).

For every film the model calls positive (calibrated P(PNEUMONIA) >= the stored threshold),
each method x layer gives a PNEUMONIA map (core.explain), and:

- ``blank``      share of maps that are flat (nothing raised the score)
- ``drop15``     mean drop of the *raw* probability when the 15 % most salient pixels are
                 filled with the image mean (deletion at 15 %)
- ``turned``     the same with the map turned by 180 degrees (same shape, wrong place)
- ``random``     the same with a uniform random map
- ``ratio``      drop15 / turned: how much the place matters (1 = not at all)
- ``del_auc``    area under the deletion curve (fractions 0, 5, 15, 30, 50, 100 %; lower =
                 better), ``ins_auc`` under the insertion curve (pixels of the original put
                 back into a blurred copy in map order; higher = better), on a seeded subset
- ``ms_per_img`` time to compute the maps, compiled, batches of 64

The default (method, layer) is chosen on the **validation** split (the patient-wise split of
train the model was calibrated on) by the rule written in docs/explanations.md before the
first run; the test split is only reported. ``--store`` publishes a copy of the version (a new version; published ones are immutable) with the choice in its
config.json and card.json so it travels with the weights.

    python benchmarks/bench_explanations.py --data-root ../shared/data/chest_xray
    python benchmarks/bench_explanations.py --splits test --methods hirescam --layers block3_conv2
    python benchmarks/bench_explanations.py --store --json docs/explanations.json

Not a pytest file: it prints a table and JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

log = logging.getLogger("bench_explanations")

DELETE_AT = 0.15
CURVE = (0.0, 0.05, 0.15, 0.30, 0.50, 1.0)
DEFAULT_METHODS = ("gradcam", "hirescam", "gradcam++", "layercam")
# Blank and drop floors a default must clear, and the serving budget (docs/explanations.md).
MAX_BLANK, MIN_DROP = 0.02, 0.15
SERVING_LAYERS = ("block3_conv2", "block3_conv4", "block4_conv2", "block4_conv4", "block5_conv4")


def _order(maps: np.ndarray) -> np.ndarray:
    """(N, H, W) -> (N, H*W) pixel indices, most salient first (stable for ties)."""
    return np.argsort(-maps.reshape(len(maps), -1), axis=1, kind="stable")


def deleted(x: np.ndarray, order: np.ndarray, frac: float) -> np.ndarray:
    """x with the first ``frac`` of ``order``'s pixels filled with each image's mean colour."""
    n, h, w, c = x.shape
    k = int(round(frac * h * w))
    out = x.copy().reshape(n, h * w, c)
    if k:
        mean = x.reshape(n, h * w, c).mean(axis=1, keepdims=True)
        idx = order[:, :k]
        np.put_along_axis(out, idx[..., None], np.broadcast_to(mean, (n, k, c)), axis=1)
    return out.reshape(n, h, w, c)


def inserted(x: np.ndarray, blurred: np.ndarray, order: np.ndarray, frac: float) -> np.ndarray:
    """The blurred copy with the first ``frac`` of ``order``'s pixels of x put back."""
    n, h, w, c = x.shape
    k = int(round(frac * h * w))
    out = blurred.copy().reshape(n, h * w, c)
    if k:
        src = x.reshape(n, h * w, c)
        idx = order[:, :k]
        np.put_along_axis(out, idx[..., None], np.take_along_axis(src, idx[..., None], axis=1), axis=1)
    return out.reshape(n, h, w, c)


def blur(x: np.ndarray) -> np.ndarray:
    import cv2

    s = max(1.0, x.shape[1] / 8)
    return np.stack([cv2.GaussianBlur(im, (0, 0), s) for im in x]).astype(np.float32)


def is_flat_batch(maps: np.ndarray) -> np.ndarray:
    from core.explain import is_flat

    return np.array([is_flat(m) for m in maps])


def random_drop(prob_fn, x: np.ndarray, p0: np.ndarray, seed: int) -> float:
    """Deletion at 15 % with a uniform random map: the same for every method, so once per split."""
    rng = np.random.default_rng(seed)
    return float((p0 - prob_fn(deleted(x, _order(rng.random(x.shape[:3])), DELETE_AT))).mean())


def ratio(drop: float, turned: float) -> float:
    """drop / turned; nan when either is not positive (no meaningful ratio)."""
    return drop / turned if drop > 0 and turned > 1e-9 else float("nan")


def score_maps(prob_fn, x: np.ndarray, p0: np.ndarray, maps: np.ndarray, curve_idx: np.ndarray) -> dict:
    """Deletion at 15 % (map, turned) on all films; curves on ``curve_idx``."""
    order = _order(maps)
    drop = p0 - prob_fn(deleted(x, order, DELETE_AT))
    turned = p0 - prob_fn(deleted(x, _order(maps[:, ::-1, ::-1]), DELETE_AT))
    out = {
        "n": int(len(x)),
        "blank": float(is_flat_batch(maps).mean()) if len(x) else float("nan"),
        "drop15": float(drop.mean()),
        "turned": float(turned.mean()),
    }
    out["ratio"] = ratio(out["drop15"], out["turned"])
    if len(curve_idx):
        xs, os_, p0s = x[curve_idx], order[curve_idx], p0[curve_idx]
        bl = blur(xs)
        dels, ins = [], []
        for f in CURVE:
            dels.append(p0s if f == 0 else prob_fn(deleted(xs, os_, f)))
            ins.append(p0s if f == 1 else prob_fn(inserted(xs, bl, os_, f)))
        dels, ins = np.stack(dels, 1), np.stack(ins, 1)  # (n, len(CURVE))
        out["del_auc"] = float(np.trapezoid(dels, CURVE, axis=1).mean())
        out["ins_auc"] = float(np.trapezoid(ins, CURVE, axis=1).mean())
        out["curve_n"] = int(len(curve_idx))
        out["deletion_curve"] = [float(v) for v in dels.mean(0)]
        out["insertion_curve"] = [float(v) for v in ins.mean(0)]
    return out


def choose(rows: list[dict]) -> dict | None:
    """The pre-registered rule (docs/explanations.md), on validation rows only.

    Candidates: gradient methods at a serving layer, blank <= 2 %, drop15 >= 0.15. Winner:
    the highest ratio (drop vs the same map turned by 180 degrees); a ratio within 0.1 of
    the best is a tie, broken by the lower deletion AUC.
    """
    cands = [r for r in rows if r["method"] != "occlusion" and r["layer"] in SERVING_LAYERS
             and r["blank"] <= MAX_BLANK and r["drop15"] >= MIN_DROP and np.isfinite(r["ratio"])]
    if not cands:
        return None
    best = max(r["ratio"] for r in cands)
    tied = [r for r in cands if r["ratio"] >= best - 0.1]
    return min(tied, key=lambda r: r.get("del_auc", 0.0))


def store_choice(registry, version: str, choice: dict, figures: dict, name: str | None = None) -> str:
    """Publish a copy of ``version`` whose config/card carry the chosen default map; returns its name.

    A published version is immutable (core.registry): the copy is a NEW version (same weights,
    operating point and metrics, files copied byte for byte), its provenance says
    ``explanation_from``. It is not activated: promote it on the admin page or with
    ``python -m core models activate NAME`` so the change is recorded and can be rolled back.
    """
    import shutil

    from core.config import Config

    src = registry.layout.version(version)
    cfg = Config.load(src / "config.json").replace(explain_method=choice["method"], explain_layer=choice["layer"])

    def writer(d: Path) -> None:
        for f in src.iterdir():
            if f.is_file() and not f.is_symlink():
                shutil.copy2(f, d / f.name)
        cfg.save(d / "config.json")
        card = json.loads((src / "card.json").read_text()) if (src / "card.json").is_file() else {}
        card["explanation"] = {"method": choice["method"], "layer": choice["layer"], "chosen_on": "validation",
                               "rule": "docs/explanations.md", **figures}
        prov = json.loads((src / "provenance.json").read_text())
        prov["explanation_from"] = version
        for fname, obj in (("card.json", card), ("provenance.json", prov)):
            (d / fname).write_text(json.dumps(obj, indent=1))

    return registry.publish(writer, name)


def parse_args(argv=None) -> argparse.Namespace:
    from core.config import DATA_ROOT_ENV

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", type=Path, default=None, help="registry root (default: $PNEUMOSCOPE_ARTIFACTS or ./artifacts)")
    ap.add_argument("--version", default=None, help="default: the active version")
    ap.add_argument("--data-root", type=Path,
                    default=Path(os.environ.get(DATA_ROOT_ENV) or REPO.parent / "shared" / "data" / "chest_xray"))
    ap.add_argument("--splits", nargs="+", default=["validation", "test"], choices=["validation", "test"])
    ap.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    ap.add_argument("--layers", nargs="+", default=None, help="default: the backbone's explain_layers")
    ap.add_argument("--positives-limit", type=int, default=0,
                    help="score a seeded subset of this many positives per split (0 = all)")
    ap.add_argument("--curve-limit", type=int, default=80, help="films per split for the deletion/insertion curves")
    ap.add_argument("--occlusion-limit", type=int, default=40, help="films per split for occlusion (0 = skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--store", action="store_true", help="publish a copy of the version with the validation choice in its config/card (a new version)")
    ap.add_argument("--json", type=Path, default=None)
    return ap.parse_args(argv)


def forward(ex, x: np.ndarray) -> dict:
    """Raw probabilities and logits (N,) of ``x`` through the compiled pass, in batches of 64."""
    outs = [ex.forward(x[i : i + 64]) for i in range(0, len(x), 64)]
    return {k: np.concatenate([o[k] for o in outs]) if outs else np.zeros(0) for k in ("prob", "logit")}


def maps_of(ex, x: np.ndarray, method: str, layer: str | None) -> tuple[np.ndarray, float]:
    """(maps (N, H, W), ms per image) of ``method`` at ``layer``, compiled, batches of 64."""
    ex.explain(x[:1], method, layer)  # trace outside the timing
    t = time.perf_counter()
    m = np.concatenate([ex.explain(x[i : i + 64], method, layer) for i in range(0, len(x), 64)])
    return m, 1000 * (time.perf_counter() - t) / max(1, len(x))


def score_split(ex, cfg, op, x: np.ndarray, split: str, layers: list[str], args) -> dict:
    """Every method x layer (and occlusion on a subset) on the films of ``split`` the model calls
    positive (calibrated from the logit, as served), plus the default's flat share on the rest."""
    from core.explain import is_flat

    def prob_fn(z: np.ndarray) -> np.ndarray:
        return forward(ex, z)["prob"]

    f = forward(ex, x)
    p, called = f["prob"], op.calibrate_logits(f["logit"]) >= op.threshold
    pos, neg = np.where(called)[0], np.where(~called)[0]
    rng = np.random.default_rng(args.seed)
    n_pos = len(pos)
    if args.positives_limit and len(pos) > args.positives_limit:
        pos = np.sort(rng.choice(pos, size=args.positives_limit, replace=False))
    xp, p0 = x[pos], p[pos]
    curve_idx = np.sort(rng.choice(len(xp), size=min(args.curve_limit, len(xp)), replace=False))
    log.info("%s: %d films, %d called positive, %d scored; curves on %d", split, len(x), n_pos, len(pos), len(curve_idx))
    rand = random_drop(prob_fn, xp, p0, args.seed)
    rows = []
    for method in args.methods:
        for layer in layers:
            maps, ms = maps_of(ex, xp, method, layer)
            r = {"method": method, "layer": layer, "ms_per_img": ms, "random": rand,
                 **score_maps(prob_fn, xp, p0, maps, curve_idx)}
            rows.append(r)
            log.info("%s %-10s %-13s blank %.3f drop15 %.3f turned %.3f ratio %.2f random %.3f del %.3f ins %.3f %.1f ms",
                     split, method, layer, r["blank"], r["drop15"], r["turned"], r["ratio"], r["random"],
                     r.get("del_auc", float("nan")), r.get("ins_auc", float("nan")), ms)
    if args.occlusion_limit:
        occ = np.sort(rng.choice(len(xp), size=min(args.occlusion_limit, len(xp)), replace=False))
        t = time.perf_counter()
        maps = ex.occlusion(xp[occ])
        ms = 1000 * (time.perf_counter() - t) / max(1, len(occ))
        r = {"method": "occlusion", "layer": None, "ms_per_img": ms,
             "random": random_drop(prob_fn, xp[occ], p0[occ], args.seed),
             **score_maps(prob_fn, xp[occ], p0[occ], maps, np.arange(len(occ)))}
        rows.append(r)
        log.info("%s occlusion (%d films) blank %.3f drop15 %.3f turned %.3f ratio %.2f %.0f ms",
                 split, len(occ), r["blank"], r["drop15"], r["turned"], r["ratio"], ms)
    # What a NORMAL verdict would show: the PNEUMONIA map of the default, flat share.
    default = (cfg.explain_method, cfg.explain_layer)
    neg_flat = None
    if len(neg) and default[0] != "occlusion":
        nm = np.concatenate([ex.explain(x[neg][i : i + 64], *default) for i in range(0, len(neg), 64)])
        neg_flat = float(np.mean([is_flat(m) for m in nm]))
    return {"n": int(len(x)), "positives": int(n_pos), "scored": int(len(pos)), "negatives": int(len(neg)),
            "rows": rows, "default_flat_share_on_negatives": neg_flat}


def print_split(name: str, split: str, res: dict, choice: dict | None, cfg, args) -> None:
    """One split's table (the validation choice marked) and the default's flat share on negatives."""
    print(f"\n{name} — {split}: {res['n']} films, {res['positives']} called positive, {res['scored']} scored "
          f"(curves on <= {args.curve_limit}; occlusion on <= {args.occlusion_limit})")
    print(f"{'method':<11} {'layer':<13} {'blank':>6} {'drop15':>7} {'turned':>7} {'ratio':>6} {'random':>7} "
          f"{'del AUC':>8} {'ins AUC':>8} {'ms/img':>7}")
    for r in res["rows"]:
        mark = " <- default" if choice and r["method"] == choice["method"] and r["layer"] == choice["layer"] else ""
        print(f"{r['method']:<11} {str(r['layer']):<13} {r['blank']:>6.3f} {r['drop15']:>7.3f} {r['turned']:>7.3f} "
              f"{r['ratio']:>6.2f} {r['random']:>7.3f} {r.get('del_auc', float('nan')):>8.3f} "
              f"{r.get('ins_auc', float('nan')):>8.3f} {r['ms_per_img']:>7.1f}{mark}")
    if res["default_flat_share_on_negatives"] is not None:
        print(f"stored default {cfg.explain_method}@{cfg.explain_layer}: flat PNEUMONIA map on "
              f"{100 * res['default_flat_share_on_negatives']:.1f} % of films called NORMAL")


def report_choice(results: dict, choice: dict | None, loaded, store: bool, registry=None) -> None:
    """Say what validation chose and, with ``store``, publish a copy of the version that carries it."""
    if choice is None:
        if "validation" in results["splits"]:
            print("\nno candidate met the rule on validation; the stored default is unchanged")
        return
    print(f"\nchosen on validation: {choice['method']} @ {choice['layer']} "
          f"(ratio {choice['ratio']:.2f}, drop15 {choice['drop15']:.3f}, blank {100 * choice['blank']:.1f} %)")
    if not store:
        return
    test_row = next((r for r in results["splits"].get("test", {}).get("rows", [])
                     if r["method"] == choice["method"] and r["layer"] == choice["layer"]), None)
    figs = {"validation": {k: choice[k] for k in ("blank", "drop15", "turned", "ratio")}}
    if test_row:
        figs["test"] = {k: test_row[k] for k in ("blank", "drop15", "turned", "ratio")}
    new = store_choice(registry, loaded.name, choice, figs)
    print(f"published {new}: a copy of {loaded.name} with this default map (not activated; "
          f"review and promote it: python -m core models activate {new})")


def main(argv=None) -> int:
    from core.config import DATA_ROOT_ENV

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from core import dataset as ds
    from core.explain import Explainer
    from core.registry import Registry

    reg = Registry(args.artifacts)
    loaded = reg.load(args.version)
    cfg, op = loaded.config, loaded.operating_point
    ex = Explainer(loaded.model)
    layers = args.layers or [lyr for lyr in cfg.backbone_spec.get("explain_layers", [cfg.last_conv_layer])
                             if lyr in SERVING_LAYERS]
    if not args.data_root.is_dir():
        print(f"error: no dataset at {args.data_root} (set --data-root or ${DATA_ROOT_ENV})", file=sys.stderr)
        return 3
    index = ds.discover(args.data_root)

    results: dict = {"version": loaded.name, "input_size": cfg.input_size, "weights": cfg.weights_source,
                     "threshold": op.threshold, "splits": {}}
    for split in args.splits:
        if split == "validation":
            _, samples = ds.patient_split(index.split("train"), cfg.val_fraction, cfg.seed)
        else:
            samples = index.split("test")
        x = ds.load_arrays(samples, cfg.input_size).x.astype(np.float32)
        results["splits"][split] = score_split(ex, cfg, op, x, split, layers, args)

    choice = None
    if "validation" in results["splits"]:
        choice = choose(results["splits"]["validation"]["rows"])
        results["choice"] = None if choice is None else {"method": choice["method"], "layer": choice["layer"]}
    for split, res in results["splits"].items():
        print_split(loaded.name, split, res, choice, cfg, args)
    report_choice(results, choice, loaded, args.store, reg)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Shift-aware validation and test-time augmentation (TTA) for trained versions.

    PYTHONPATH=. python benchmarks/shift_validation.py VERSION [VERSION ...] \
        [--artifacts /tmp/art_exp] [--data-root ../shared/data/chest_xray] [--tta] [--json out.json]

Why: the patient-wise validation split is drawn from the same distribution as train and is
saturated (AUC >= 0.995 for every fine-tuned model), so it cannot rank recipes, while the
official test split is shifted (harder NORMAL films). This script scores each version on
the *validation* images under fixed acquisition perturbations that no recipe trains on
(gamma, blur, noise, JPEG re-compression, crop, border, low contrast), deterministic and
identical for every version:

- ``shift_auc``: mean ROC-AUC over the perturbed copies of validation,
- ``shift_spec``: mean specificity over them at the version's stored threshold
  (the test split's failure is NORMAL films pushed over the threshold).

The selection rule in docs/ablation.md uses ``shift_auc`` (validation data only). Test
figures are printed for the report and never used to choose.

``--ensemble``: score the mean probability of all the given versions as one model (they
must share input size and validation split); its operating point is re-fitted on the
ensemble's validation outputs with the first version's policy. Report-only: the default
training run trains one model.

``--tta``: also score test-time augmentation (mean probability over the image and 4
small shifts + 2 zooms); the threshold for TTA is re-chosen on validation TTA outputs with
the version's own policy. Reported for validation, shifted validation and test.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from core import dataset as ds  # noqa: E402
from core.calibration import fit_operating_point  # noqa: E402
from core.registry import Registry  # noqa: E402
from core.shift import PERTURBATIONS, border, crop  # noqa: E402

log = logging.getLogger("shift_validation")


# --- TTA: the image, 4 shifts of 3 px-per-64, 2 zooms ------------------------------------------
def _shift(x, dx, dy):
    s = x.shape[1]
    d = max(1, int(round(3 * s / 64)))
    m = np.float32([[1, 0, dx * d], [0, 1, dy * d]])
    return np.stack([cv2.warpAffine(im, m, (s, s), borderMode=cv2.BORDER_CONSTANT) for im in x])


TTA_VIEWS = [
    lambda x: x,
    lambda x: _shift(x, 1, 0), lambda x: _shift(x, -1, 0), lambda x: _shift(x, 0, 1), lambda x: _shift(x, 0, -1),
    lambda x: crop(x, 0.92), lambda x: border(x, 0.04),
]


def predict(model, x, tta=False):
    if not tta:
        return model.predict(x, batch_size=128, verbose=0).ravel().astype(np.float64)
    return np.mean([model.predict(v(x), batch_size=128, verbose=0).ravel() for v in TTA_VIEWS], axis=0).astype(np.float64)


def spec_sens(y, calibrated, thr):
    pred = calibrated >= thr
    return float((~pred[y == 0]).mean()), float(pred[y == 1].mean()), float((pred == (y == 1)).mean())


def split_key(cfg) -> tuple:
    """What decides the validation arrays a version is scored on."""
    return (cfg.input_size, cfg.val_fraction, cfg.seed)


def model_outputs(model, views: dict, tta: bool) -> dict:
    """Raw outputs of ``model`` on every named input array of ``views`` (validation, its
    perturbed copies, test): the one place the models run, so an ensemble can reuse them."""
    return {name: predict(model, x, tta) for name, x in views.items()}


def score_outputs(name: str, cfg, stored_op, outs_by_mode: dict, va, te) -> dict:
    """Scores from raw outputs (``{"plain"|"tta": model_outputs(...)}``). The operating point
    is ``stored_op`` for plain outputs, else re-fitted on the validation outputs with the
    version's own policy (TTA, ensembles)."""
    out = {"version": name}
    for key, raw in outs_by_mode.items():
        o = stored_op if key == "plain" and stored_op is not None else fit_operating_point(
            raw["val"], va.y, cfg.threshold_policy, cfg.target_sensitivity, cfg.indeterminate_margin)
        res = {"val_auc": float(roc_auc_score(va.y, raw["val"]))}
        aucs, specs, senss = {}, {}, {}
        for pname in PERTURBATIONS:
            p = raw[pname]
            aucs[pname] = float(roc_auc_score(va.y, p))
            specs[pname], senss[pname], _ = spec_sens(va.y, o.calibrate(p), o.threshold)
        res.update(shift_auc=float(np.mean(list(aucs.values()))), shift_spec=float(np.mean(list(specs.values()))),
                   shift_sens=float(np.mean(list(senss.values()))), per_perturbation_auc=aucs,
                   per_perturbation_spec=specs)
        if te is not None:
            p = raw["test"]
            spec, sens, acc = spec_sens(te.y, o.calibrate(p), o.threshold)
            res["test"] = {"roc_auc": float(roc_auc_score(te.y, p)), "accuracy": acc, "sensitivity": sens, "specificity": spec}
        out[key] = res
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("versions", nargs="+")
    ap.add_argument("--artifacts", default="/tmp/art_exp")
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "chest_xray"))
    ap.add_argument("--tta", action="store_true")
    ap.add_argument("--ensemble", action="store_true", help="also score the mean of all given versions")
    ap.add_argument("--no-test", action="store_true", help="validation only")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    reg = Registry(args.artifacts)
    index = ds.discover(args.data_root)
    loaded_all = [reg.load(v) for v in args.versions]
    splits = {split_key(lv.config) for lv in loaded_all}
    if args.ensemble and len(splits) != 1:  # before any model runs
        raise SystemExit(f"--ensemble needs versions with one input size and validation split. Received: {sorted(splits)}")
    modes = {"plain": False, "tta": True} if args.tta else {"plain": False}
    cache: dict = {}
    results, all_outs = [], []
    for loaded in loaded_all:
        cfg = loaded.config
        key = split_key(cfg)
        if key not in cache:  # data and perturbed copies once per split
            _, val_s = ds.patient_split(index.split("train"), cfg.val_fraction, cfg.seed)
            va = ds.load_arrays(val_s, cfg.input_size)
            te = None if args.no_test else ds.load_arrays(index.split("test"), cfg.input_size)
            views = {"val": va.x, **{n: f(va.x) for n, f in PERTURBATIONS.items()}}
            if te is not None:
                views["test"] = te.x
            cache[key] = (va, te, views)
        va, te, views = cache[key]
        outs = {m: model_outputs(loaded.model, views, tta) for m, tta in modes.items()}
        all_outs.append(outs)
        r = score_outputs(loaded.name, cfg, loaded.operating_point, outs, va, te)
        results.append(r)
        print("SHIFT", json.dumps(r), flush=True)
    if args.ensemble and len(loaded_all) > 1:
        # the mean of the members' outputs (already computed), threshold re-fitted on validation
        mean = {m: {k: np.mean([o[m][k] for o in all_outs], axis=0) for k in all_outs[0][m]} for m in modes}
        name = "mean(" + ",".join(lv.name for lv in loaded_all) + ")"
        r = score_outputs(name, loaded_all[0].config, None, mean, va, te)
        results.append(r)
        print("SHIFT", json.dumps(r), flush=True)
    print(f"\n{'version':28s} {'mode':5s} {'val AUC':>8s} {'shift AUC':>9s} {'shift spec':>10s} {'test AUC':>8s} {'acc':>6s} {'sens':>6s} {'spec':>6s}")
    for r in results:
        for mode in ("plain", "tta"):
            if mode in r:
                m, t = r[mode], r[mode].get("test", {})
                print(f"{r['version']:28s} {mode:5s} {m['val_auc']:8.4f} {m['shift_auc']:9.4f} {m['shift_spec']:10.3f} "
                      f"{t.get('roc_auc', float('nan')):8.4f} {t.get('accuracy', float('nan')):6.3f} "
                      f"{t.get('sensitivity', float('nan')):6.3f} {t.get('specificity', float('nan')):6.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

"""Recompute a version's operating point, OOD statistics and metrics on its served float32 model.

    PYTHONPATH=. python benchmarks/recalibrate_version.py VERSION [--data-root ../shared/data/chest_xray]

``--ood-only`` refits only the OOD statistics (e.g. to add the reject threshold to a model
saved before it existed); the operating point and metrics files are left as they are.

Used once for the shipped model, which was trained before training calibrated on the
float32 twin (it calibrated on the bfloat16 training model; outputs differ by up to ~1e-2).
Rebuilds the same patient-wise split (same seed, same files), so validation is unchanged
and the test split is still only reported.
"""

import argparse
import datetime as dt
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from core import dataset as ds  # noqa: E402
from core.fsutil import write_json_atomic  # noqa: E402
from core.registry import Registry  # noqa: E402
from core.training import calibrate_and_evaluate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("version")
    ap.add_argument("--data-root", default="../shared/data/chest_xray")
    ap.add_argument("--artifacts", default=None)
    ap.add_argument("--ood-only", action="store_true",
                    help="only refit the OOD statistics (adds the reject threshold); operating point and metrics untouched")
    args = ap.parse_args()
    reg = Registry(args.artifacts)
    loaded = reg.load(args.version)
    cfg = loaded.config
    index = ds.discover(args.data_root)
    train_s, val_s = ds.patient_split(index.split("train"), cfg.val_fraction, cfg.seed)
    tr, va = ds.load_arrays(train_s, cfg.input_size), ds.load_arrays(val_s, cfg.input_size)
    d = loaded.path
    if args.ood_only:
        _, ood, _, t_cal, _ = calibrate_and_evaluate(loaded.model, cfg, tr, va, None)
        ood.save(d)
        prov = json.loads((d / "provenance.json").read_text())
        prov["ood_refit"] = {"at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "calibrate_s": round(t_cal, 1)}
        write_json_atomic(d / "provenance.json", prov)
        print(json.dumps({"version": loaded.name, "ood": json.loads((d / "ood.json").read_text())}, indent=2))
        return
    te = ds.load_arrays(index.split("test"), cfg.input_size)
    op, ood, metrics, t_cal, t_eval = calibrate_and_evaluate(loaded.model, cfg, tr, va, te)
    op.save(d / "operating_point.json")
    ood.save(d)
    (d / "metrics.json").write_text(json.dumps(metrics, indent=1))
    card = json.loads((d / "card.json").read_text())
    t = metrics["test"]
    card.update(threshold=op.threshold, indeterminate_band=[op.band_low, op.band_high], temperature=op.temperature,
                val_roc_auc=metrics["validation"]["roc_auc"],
                test={k: t.get(k) for k in ("accuracy", "roc_auc", "pr_auc", "sensitivity", "specificity", "n")})
    write_json_atomic(d / "card.json", card)
    prov = json.loads((d / "provenance.json").read_text())
    prov["recalibrated_float32"] = {"at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                                    "calibrate_s": round(t_cal, 1), "evaluate_s": round(t_eval, 1)}
    write_json_atomic(d / "provenance.json", prov)
    print(json.dumps({"version": loaded.name, "operating_point": op.to_dict(), "test": card["test"],
                      "val_roc_auc": card["val_roc_auc"]}, indent=2))


if __name__ == "__main__":
    main()

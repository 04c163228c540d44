"""Publish a recalibrated copy of a version: same weights, operating point, OOD statistics and
metrics recomputed on its served float32 model. The source version is never edited: a published
version is immutable (core.registry), so the result is a NEW version whose provenance says
``recalibrated_from``.

    PYTHONPATH=. python benchmarks/recalibrate_version.py VERSION [--data-root ../shared/data/chest_xray] [--name NEW]

``--ood-only`` refits only the OOD statistics (e.g. to add the reject threshold to a model
saved before it existed, docs/guard.md); the operating point and the metrics are copied as they
are. The new version is not activated: review it on the admin page and promote it there (or
``python -m core models activate NEW``), so the activation is recorded and can be rolled back.

Used for the shipped model, which was trained before training calibrated on the float32 twin
(it calibrated on the bfloat16 training model; outputs differ by up to ~1e-2). Rebuilds the
same patient-wise split (same seed, same files), so validation is unchanged and the test split
is still only reported.
"""

import argparse
import copy
import datetime as dt
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from core import dataset as ds  # noqa: E402
from core.publish import publish  # noqa: E402
from core.registry import Registry  # noqa: E402
from core.training import TrainResult, calibrate_and_evaluate  # noqa: E402


def recalibrate(reg: Registry, version: str, data_root: str, *, ood_only: bool = False, name: str | None = None) -> str:
    """Publish the recalibrated copy of ``version`` (through ``core.publish.publish``: staging
    folder + atomic rename); returns the new version's name."""
    loaded = reg.load(version)  # refuses a broken version by name
    cfg = loaded.config
    index = ds.discover(data_root)
    train_s, val_s = ds.patient_split(index.split("train"), cfg.val_fraction, cfg.seed)
    tr, va = ds.load_arrays(train_s, cfg.input_size), ds.load_arrays(val_s, cfg.input_size)
    te = None if ood_only else ds.load_arrays(index.split("test"), cfg.input_size)
    op, ood, metrics, t_cal, t_eval = calibrate_and_evaluate(loaded.model, cfg, tr, va, te, data_root=data_root)
    prov = copy.deepcopy(reg.read_json(loaded.name, "provenance.json"))
    prov["recalibrated_from"] = loaded.name
    prov["recalibration"] = {"at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                             "what": "ood" if ood_only else "operating_point, ood, metrics",
                             "calibrate_s": round(t_cal, 1), **({} if ood_only else {"evaluate_s": round(t_eval, 1)})}
    result = TrainResult(
        model=loaded.model, config=cfg,
        operating_point=loaded.operating_point if ood_only else op,
        history=reg.read_json(loaded.name, "history.json"),
        metrics=loaded.metrics() if ood_only else metrics,
        provenance=prov, ood=ood,
    )
    return publish(result, reg, name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("version", help="the version to recalibrate (left as it is)")
    ap.add_argument("--data-root", default="../shared/data/chest_xray")
    ap.add_argument("--artifacts", default=None)
    ap.add_argument("--name", default=None, help="name of the new version (default: the next vNNNN-<time>)")
    ap.add_argument("--ood-only", action="store_true",
                    help="only refit the OOD statistics (adds the reject threshold); operating point and metrics copied")
    args = ap.parse_args()
    reg = Registry(args.artifacts)
    new = recalibrate(reg, args.version, args.data_root, ood_only=args.ood_only, name=args.name)
    card = reg.read_json(new, "card.json")
    print(json.dumps({"version": new, "recalibrated_from": args.version,
                      "operating_point": reg.read_json(new, "operating_point.json"), "test": card.get("test"),
                      "val_roc_auc": card.get("val_roc_auc"),
                      "activate_with": f"python -m core models activate {new}"}, indent=2))


if __name__ == "__main__":
    main()

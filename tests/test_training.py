"""Tests for core.training on the committed samples (32 px, random init, a few epochs).

The expensive part is training, so one recorded run (module fixture) serves most checks:
it wraps ``core.model.build_model`` to keep a handle on the model and its initial weights,
snapshots weights from the ``progress`` callback at phase boundaries, and spies on
``keras.Model.fit`` and ``core.dataset.class_weights``.
"""

from __future__ import annotations

import json
import math
import shutil

import keras
import numpy as np
import pytest

from core import dataset as ds_mod
from core import model as model_mod
from core.config import Config
from core.dataset import DatasetError
from core.model import get_base, get_head
from core.events import ProgressEvent, TrainingCancelled
from core.training import train

# augment=False: the fit spies below read (x, y) arrays; the augmented path has its own test.
# The "micro" backbone (VGG-19's block layout and layer names, 4-16 filters) keeps these fast;
# the `recorded` run below is the honest end-to-end path on the real VGG-19.
CFG = dict(backbone="micro", input_size=32, weights="none", head_units=8, batch_size=8, val_fraction=0.3,
           early_stopping_patience=10, seed=0, augment=False)


def _snap(model) -> dict:
    return {"base": [w.copy() for w in get_base(model).get_weights()],
            "head": [w.copy() for w in get_head(model).get_weights()]}


def _same(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


class Recorder:
    """Spies installed with a MonkeyPatch; collects what train() did."""

    def __init__(self, mp: pytest.MonkeyPatch):
        self.events: list[ProgressEvent] = []
        self.fit_calls: list[dict] = []
        self.cw_calls: list[tuple[list[int], dict]] = []
        self.model = None
        self.initial = None
        self.after_head = None
        self.finetune_epochs: list[dict] = []

        orig_build, orig_fit, orig_cw = model_mod.build_model, keras.Model.fit, ds_mod.class_weights
        rec = self

        def build(config):
            m = orig_build(config)
            if rec.model is None:  # the training model; later builds are its float32 twin
                rec.model, rec.initial = m, _snap(m)
            return m

        def fit(self, x=None, y=None, *args, **kwargs):
            rec.fit_calls.append({"name": self.name, "class_weight": kwargs.get("class_weight"),
                                  "y": np.asarray(y).copy(), "n": len(x)})
            return orig_fit(self, x, y, *args, **kwargs)

        def class_weights(labels):
            labels = [int(v) for v in labels]
            out = orig_cw(labels)
            rec.cw_calls.append((labels, out))
            return out

        mp.setattr(model_mod, "build_model", build)
        mp.setattr(keras.Model, "fit", fit)
        mp.setattr(ds_mod, "class_weights", class_weights)

    def progress(self, ev: ProgressEvent) -> None:
        self.events.append(ev)
        if ev.kind == "phase_end" and ev.phase == "head":
            self.after_head = _snap(self.model)
        if ev.kind == "epoch_end" and ev.phase == "finetune":
            self.finetune_epochs.append(_snap(self.model))


@pytest.fixture(scope="module")
def recorded(sample_root):
    cfg = Config(**{**CFG, "backbone": "vgg19"}, head_epochs=2, finetune_epochs=2)  # the real VGG-19
    with pytest.MonkeyPatch.context() as mp:
        rec = Recorder(mp)
        rec.result = train(cfg, sample_root, progress=rec.progress, n_bootstrap=20)
    rec.config = cfg
    return rec


# --- the two phases change the right weights ----------------------------------------------------
def test_phase1_leaves_base_bit_identical_and_trains_head(recorded):
    # the result is the float32 twin (served + evaluated) carrying the trained weights
    assert _same(_snap(recorded.result.model)["base"], _snap(recorded.model)["base"])
    assert _same(recorded.after_head["base"], recorded.initial["base"])
    assert not _same(recorded.after_head["head"], recorded.initial["head"])
    assert recorded.result.provenance["phase1_mode"] == "cached_features"
    assert "features_s" in recorded.result.provenance["timings_s"]


def test_phase2_changes_base_weights(recorded):
    assert len(recorded.finetune_epochs) == 2
    for snap in recorded.finetune_epochs:
        assert not _same(snap["base"], recorded.after_head["base"])
    # every conv layer moved, not just the top one
    first = recorded.finetune_epochs[0]["base"]
    changed = [not np.array_equal(a, b) for a, b in zip(first[::2], recorded.after_head["base"][::2])]
    assert all(changed)


def test_final_weights_are_the_best_validation_weights(recorded):
    h = recorded.result.history
    final = _snap(recorded.result.model)
    best = h["finetune_best_epoch"]
    assert best in (0, 1, 2)
    expected = recorded.after_head if best == 0 else recorded.finetune_epochs[best - 1]
    assert _same(final["base"], expected["base"]) and _same(final["head"], expected["head"])
    if best == 0:  # fine-tuning did not beat the head: phase 1's weights were kept
        assert max(h["finetune"]["val_auc"]) <= max(h["head"]["val_auc"])
    else:
        assert h["finetune"]["val_auc"][best - 1] == max(h["finetune"]["val_auc"])


def test_compile_per_phase_with_own_learning_rate(recorded):
    names = [c["name"] for c in recorded.fit_calls]
    assert names == ["head", recorded.model.name]  # phase 1 on cached features, phase 2 on images
    # the last compile is phase 2's, with the much smaller learning rate (the default schedule
    # is warm-up + cosine: its peak is that rate, and it has decayed to ~0 by the last step)
    assert recorded.config.finetune_schedule == "cosine"
    sched = recorded.model.optimizer._learning_rate
    assert isinstance(sched, keras.optimizers.schedules.CosineDecay)
    sc = sched.get_config()  # tiny run: the warm-up may round to 0 steps, then the peak is the start
    assert (sc["warmup_target"] or sc["initial_learning_rate"]) == pytest.approx(recorded.config.finetune_learning_rate)
    assert recorded.config.finetune_learning_rate < recorded.config.head_learning_rate / 5
    lr = float(keras.ops.convert_to_numpy(recorded.model.optimizer.learning_rate))
    assert lr < 0.05 * recorded.config.finetune_learning_rate
    assert recorded.fit_calls[0]["n"] == recorded.fit_calls[1]["n"]  # same train images


def test_class_weights_are_used_in_both_phases(recorded):
    assert len(recorded.cw_calls) == 1
    labels, weights = recorded.cw_calls[0]
    counts = recorded.result.provenance["counts"]["train"]
    assert len(labels) == counts["NORMAL"] + counts["PNEUMONIA"]
    assert weights == ds_mod.class_weights(labels)  # the real function (spy removed after the run)
    n = len(labels)
    assert weights[0] == pytest.approx(n / (2 * counts["NORMAL"]))
    assert weights[1] == pytest.approx(n / (2 * counts["PNEUMONIA"]))
    for call in recorded.fit_calls:
        assert call["class_weight"] == weights
        assert sorted(call["y"].tolist()) == sorted(labels)


def test_history_and_provenance(recorded):
    r = recorded.result
    h = r.history
    for phase in ("head", "finetune"):
        assert {"loss", "auc", "accuracy", "val_loss", "val_auc", "val_accuracy"} <= set(h[phase])
        assert len(h[phase]["loss"]) == 2
    assert h["phase_boundary_epoch"] == 2
    json.dumps(h)
    p = r.provenance
    json.dumps(p)
    assert p["test_used_for_choices"] is False
    assert p["counts"]["test"] == {"NORMAL": 4, "PNEUMONIA": 4}
    assert p["counts"]["train_patients"] + p["counts"]["validation_patients"] == len(
        {s.group for s in ds_mod.discover(p["data_root"]).split("train")})
    assert {"decode_s", "phase1_s", "phase2_s", "calibrate_s", "evaluate_s"} <= set(p["timings_s"])
    assert set(r.metrics) == {"validation", "test"}
    assert r.metrics["test"]["n"] == 8
    assert 0 < r.operating_point.temperature and 0 <= r.operating_point.threshold <= 1
    assert r.ood is not None and np.isfinite(r.ood.threshold)


# --- progress events -----------------------------------------------------------------------------
def test_progress_events_in_order_with_fields(recorded):
    evs = recorded.events
    r = recorded.result
    assert all(isinstance(e, ProgressEvent) for e in evs)
    json.dumps([e.to_dict() for e in evs])
    elapsed = [e.elapsed_s for e in evs]
    assert elapsed == sorted(elapsed) and elapsed[0] >= 0

    coarse = [(e.kind, e.phase) for e in evs if e.kind != "batch"]
    expected = (
        [("stage", "data")] * 3
        + [("phase_start", "head"), ("stage", "features")]
        + [("epoch_end", "head")] * 2
        + [("phase_end", "head"), ("phase_start", "finetune")]
        + [("epoch_end", "finetune")] * 2
        + [("phase_end", "finetune"), ("stage", "calibrate"), ("stage", "evaluate"), ("done", None)]
    )
    assert coarse == expected

    n_train = sum(r.provenance["counts"]["train"].values())
    steps = math.ceil(n_train / recorded.config.batch_size)
    for phase, epochs in (("head", 2), ("finetune", 2)):
        start = next(e for e in evs if e.kind == "phase_start" and e.phase == phase)
        assert start.epochs == epochs and start.message
        ends = [e for e in evs if e.kind == "epoch_end" and e.phase == phase]
        assert [e.epoch for e in ends] == [1, 2] and all(e.epochs == epochs for e in ends)
        for e in ends:
            assert {"loss", "auc", "val_loss", "val_auc"} <= set(e.metrics)
            assert all(isinstance(v, float) for v in e.metrics.values())
        batches = [e for e in evs if e.kind == "batch" and e.phase == phase]
        assert batches and all(e.batches == steps and 1 <= e.batch <= steps for e in batches)
        assert all(e.epoch in (1, 2) for e in batches)
        assert any(e.batch == steps for e in batches)  # the last batch of an epoch is always sent
        pend = next(e for e in evs if e.kind == "phase_end" and e.phase == phase)
        assert "best_val_auc" in pend.metrics
    data_batches = [e for e in evs if e.kind == "batch" and e.phase == "data"]
    assert [e.message for e in data_batches] == ["decoding train", "decoding validation", "decoding test"]
    assert all(e.batch == e.batches for e in data_batches)
    done = evs[-1]
    assert done.metrics["test_roc_auc"] == pytest.approx(r.metrics["test"]["roc_auc"])
    assert done.elapsed_s <= r.provenance["wall_time_s"] + 0.05


# --- naive phase 1, local weights, no class weighting -----------------------------------------------
@pytest.mark.slow
def test_naive_phase1_with_local_weights_file(sample_root, tmp_path):
    keras.utils.set_random_seed(5)
    src = keras.applications.VGG19(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "vgg19_notop.weights.h5"
    src.save_weights(str(path))
    cfg = Config(**{**CFG, "backbone": "vgg19", "weights": str(path)}, head_epochs=2, finetune_epochs=0, class_weighting=False)
    with pytest.MonkeyPatch.context() as mp:
        rec = Recorder(mp)
        result = train(cfg, sample_root, progress=rec.progress, naive_phase1=True, limit_per_class=8,
                       evaluate_test=False, n_bootstrap=10)
    p = result.provenance
    assert p["phase1_mode"] == "naive" and "features_s" not in p["timings_s"]
    assert p["weights_source"] == "local file: vgg19_notop.weights.h5"
    # the base started from the file and phase 1 (naive: full model, base frozen) kept it
    assert _same(rec.initial["base"], src.get_weights())
    assert _same(get_base(result.model).get_weights(), src.get_weights())
    assert not _same(get_head(result.model).get_weights(), rec.initial["head"])
    # naive = the full model fitted on images; no head-only fit; no class weights
    assert [c["name"] for c in rec.fit_calls] == [result.model.name]
    assert rec.fit_calls[0]["class_weight"] is None and rec.cw_calls == []
    assert not any(e.phase == "features" for e in rec.events)
    assert not any(e.phase == "finetune" for e in rec.events)
    # limit_per_class caps images per class; no test evaluation requested
    c = p["counts"]
    assert c["train"]["NORMAL"] + c["validation"]["NORMAL"] == 8
    assert c["train"]["PNEUMONIA"] + c["validation"]["PNEUMONIA"] == 8
    assert p["limit_per_class"] == 8 and "test" not in result.metrics
    assert len(result.history["head"]["loss"]) == 2 and result.history["finetune"] == {}


# --- cancellation -------------------------------------------------------------------------------------
def _trigger(kind, phase):
    return lambda e: e.kind == kind and e.phase == phase


CANCEL_POINTS = {
    "data_stage": (lambda e: True, "cancelled."),
    "decoding": (_trigger("batch", "data"), "cancelled."),
    "features": (_trigger("batch", "features"), "cancelled."),
    "head_training": (_trigger("batch", "head"), "phase 1"),
    "finetune": (_trigger("phase_start", "finetune"), "phase 2"),
}


@pytest.mark.parametrize("where", list(CANCEL_POINTS))
@pytest.mark.slow
def test_should_stop_cancels(sample_root, where):
    trigger, msg = CANCEL_POINTS[where]
    events: list[ProgressEvent] = []
    # (the phase-2 case skips phase 1's epochs: it only needs phase 2 to start)
    cfg = Config(**CFG, head_epochs=0 if where == "finetune" else 2, finetune_epochs=1,
                 precision="mixed_bfloat16" if where == "features" else "float32")
    state = {"hit": None}

    def progress(e):
        events.append(e)
        if state["hit"] is None and trigger(e):
            state["hit"] = len(events) - 1

    def should_stop():
        return state["hit"] is not None

    with pytest.raises(TrainingCancelled, match=msg):
        train(cfg, sample_root, progress=progress, should_stop=should_stop, n_bootstrap=10)
    assert state["hit"] is not None
    after = events[state["hit"] + 1:]
    assert not any(e.kind == "done" for e in events)
    # stops promptly: no further batches of the interrupted phase, nothing of later phases
    # (phase 2's trigger is its phase_start: the stop is noticed at the end of its first batch)
    assert len([e for e in after if e.kind == "batch"]) <= (1 if where == "finetune" else 0)
    assert not any(e.kind in ("phase_start", "phase_end", "stage") for e in after)
    assert keras.mixed_precision.global_policy().name == "float32"  # restored on the way out


# --- distribution strategy and mixed precision ---------------------------------------------------------
@pytest.mark.slow
def test_mirrored_strategy_and_mixed_bfloat16(sample_root, tmp_path):
    """One run for both (each costs a full training): MirroredStrategy on the single CPU device
    with the mixed_bfloat16 policy, which must be restored afterwards."""
    import tensorflow as tf

    from core.model import load_model, save_model

    keras.mixed_precision.set_global_policy("float32")
    cfg = Config(**CFG, head_epochs=1, finetune_epochs=1, strategy="mirrored", precision="mixed_bfloat16")
    with pytest.MonkeyPatch.context() as mp:
        rec = Recorder(mp)
        result = train(cfg, sample_root, progress=rec.progress, evaluate_test=False, n_bootstrap=10)
    p = result.provenance
    assert p["strategy"] == "mirrored" and p["precision"] == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == "float32"
    # variables were created under the MirroredStrategy
    assert isinstance(rec.model.weights[0].value, tf.distribute.DistributedValues)
    assert rec.model.dtype_policy.name == "mixed_bfloat16"
    assert get_base(rec.model).get_layer("block1_conv1").compute_dtype == "bfloat16"
    # what is returned (and calibrated/evaluated) is the float32 twin with the trained weights
    assert result.model.dtype_policy.name == "float32"
    assert _same(_snap(result.model)["base"], [np.asarray(w) for w in get_base(rec.model).get_weights()])
    # both phases ran and changed the right weights
    assert _same(rec.after_head["base"], rec.initial["base"])
    assert not _same(rec.after_head["head"], rec.initial["head"])
    assert len(rec.finetune_epochs) == 1
    assert not _same(rec.finetune_epochs[0]["base"], rec.after_head["base"])
    h = result.history
    assert all(np.isfinite(h["head"]["loss"])) and all(np.isfinite(h["finetune"]["loss"]))
    assert np.isfinite(result.metrics["validation"]["roc_auc"])
    # the saved model is float32 and agrees with the bf16 model up to bf16 rounding
    path = tmp_path / "model.keras"
    save_model(result.model, path, cfg)
    loaded = load_model(path)
    assert all(str(w.dtype) == "float32" for w in loaded.weights)
    x = np.asarray(ds_mod.load_arrays(ds_mod.discover(sample_root).split("test"), 32).x, dtype="float32")
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(result.model(x), dtype="float32"), atol=1e-5)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(rec.model(x), dtype="float32"), atol=0.05)


# --- bad data ------------------------------------------------------------------------------------------
def test_missing_data_root_is_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="Data folder not found"):
        train(Config(**CFG, head_epochs=1, finetune_epochs=0), tmp_path / "missing")


def test_train_split_with_one_class_is_dataset_error(sample_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(sample_root / "train" / "NORMAL", root / "train" / "NORMAL")
    with pytest.raises(DatasetError, match="both classes"):
        train(Config(**CFG, head_epochs=1, finetune_epochs=0), root)


def test_no_train_split_is_dataset_error(sample_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(sample_root / "test", root / "test")
    with pytest.raises(DatasetError, match="No train split"):
        train(Config(**CFG, head_epochs=1, finetune_epochs=0), root)


def test_bad_weights_fail_before_decoding(tmp_path, sample_root):
    events = []
    with pytest.raises(ValueError, match="Received:"):
        train(Config(**{**CFG, "weights": str(tmp_path / "missing.h5")}, head_epochs=1), sample_root,
              progress=events.append)
    assert not any(e.kind == "batch" for e in events)  # nothing decoded


# --- phase-2 augmentation -------------------------------------------------------------------------
@pytest.mark.slow
def test_augmented_pipeline_and_training(sample_root):
    from core.training import _phase2_dataset

    x = np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    y = np.arange(10) % 2
    cfg = Config(**{**CFG, "augment": True})
    xb, yb = next(iter(_phase2_dataset(x, y, cfg)))
    xb = np.asarray(xb)
    assert xb.shape == (8, 32, 32, 3) and xb.dtype == np.float32
    assert 0.0 <= xb.min() and xb.max() <= 255.0
    assert not np.array_equal(np.sort(xb.ravel()), np.sort(x[:8].astype(np.float32).ravel()))  # changed
    result = train(Config(**{**CFG, "augment": True}, head_epochs=1, finetune_epochs=1), sample_root,
                   evaluate_test=False, n_bootstrap=10)
    assert len(result.history["finetune"]["loss"]) == 1
    assert np.isfinite(result.history["finetune"]["loss"][0])


def test_balanced_sampling_draws_both_classes_equally():
    from core.training import _phase2_dataset

    # 1:4 imbalance in, ~1:1 out; finite epochs come from steps_per_epoch (infinite stream).
    y = np.array([0] * 20 + [1] * 80)
    x = np.zeros((100, 32, 32, 3), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(100)  # identity of each image, survives without augmentation
    cfg = Config(**{**CFG, "augment": False, "balanced_sampling": True, "batch_size": 50})
    it = iter(_phase2_dataset(x, y, cfg))
    ys, ids = [], []
    for _ in range(40):
        xb, yb = next(it)
        ys.append(np.asarray(yb))
        ids.append(np.asarray(xb)[:, 0, 0, 0])
    ys, ids = np.concatenate(ys), np.concatenate(ids)
    assert len(ys) == 2000
    assert 0.45 < ys.mean() < 0.55
    assert np.all(y[ids.astype(int)] == ys)  # labels stay with their images
    assert len(np.unique(ids[ys == 0])) == 20  # every NORMAL image is drawn


@pytest.mark.slow
def test_training_with_balanced_sampling(sample_root):
    events = []
    cfg = Config(**{**CFG, "augment": True, "balanced_sampling": True}, head_epochs=1, finetune_epochs=2)
    result = train(cfg, sample_root, evaluate_test=False, n_bootstrap=10, progress=events.append)
    assert len(result.history["finetune"]["loss"]) == 2
    assert all(np.isfinite(result.history["finetune"]["loss"]))
    # each phase-2 epoch runs the train split's number of batches, then stops (infinite stream)
    ft = [e for e in events if e.phase == "finetune"]
    assert [e.epoch for e in ft if e.kind == "epoch_end"] == [1, 2]
    last = [(e.epoch, e.batch) for e in ft if e.kind == "batch" and e.batch == e.batches]
    assert [ep for ep, _ in last] == [1, 2]
    batches = [e for e in ft if e.kind == "batch"]
    assert max(e.batch for e in batches) == batches[0].batches  # never ran past the epoch's length
    assert Config.from_dict(result.config.to_dict()).balanced_sampling is True


# --- phase-2 recipe levers: LR schedule, label smoothing, checkpoint averaging --------------------
def test_cosine_schedule_warms_up_then_decays_to_zero():
    from core.training import finetune_learning_rate, finetune_optimizer

    cfg = Config(**{**CFG, "finetune_epochs": 2}, finetune_schedule="cosine", warmup_fraction=0.25,
                 finetune_learning_rate=1e-4)
    sched = finetune_learning_rate(cfg, steps_per_epoch=10)  # 20 steps, 5 of them warm-up
    assert callable(sched)
    values = [float(sched(s)) for s in range(21)]
    assert values[0] == pytest.approx(0.0, abs=1e-12)
    assert values[5] == pytest.approx(1e-4, rel=1e-5)  # peak at the end of warm-up
    assert all(a < b for a, b in zip(values[:5], values[1:6]))  # rising during warm-up
    assert all(a >= b for a, b in zip(values[5:], values[6:]))  # then never rising
    assert values[20] == pytest.approx(0.0, abs=1e-9)
    const = finetune_optimizer(Config(**CFG, finetune_schedule="constant"), 10)
    assert float(const.learning_rate) == pytest.approx(Config(**CFG).finetune_learning_rate)


@pytest.mark.parametrize("field,value", [("finetune_schedule", "step"), ("warmup_fraction", 1.0),
                                         ("label_smoothing", 0.5), ("average_last_epochs", -1)])
def test_new_recipe_fields_are_validated(field, value):
    with pytest.raises(ValueError, match=f"Received: {field}="):
        Config(**{**CFG, field: value})


@pytest.mark.slow
def test_checkpoint_average_and_label_smoothing_are_applied(sample_root):
    cfg = Config(**{**CFG, "head_epochs": 1, "finetune_epochs": 2}, average_last_epochs=2,
                 label_smoothing=0.1, finetune_schedule="cosine")
    result = train(cfg, sample_root, evaluate_test=False, n_bootstrap=10)
    avg = result.history["checkpoint_average"]
    assert avg["epochs"] == 2 and isinstance(avg["kept"], bool)
    assert 0.0 <= avg["val_auc"] <= 1.0
    # The rule: the average is kept exactly when it does not lose validation AUC.
    assert avg["kept"] == (avg["val_auc"] >= avg["best_single_val_auc"])
    assert Config.from_dict(result.config.to_dict()).label_smoothing == 0.1  # round-trips


def test_average_weights_is_elementwise_mean():
    from core.training import _average_weights

    a = [np.zeros((2, 2), np.float32), np.ones(3, np.float32)]
    b = [np.full((2, 2), 2, np.float32), np.full(3, 3, np.float32)]
    out = _average_weights([a, b])
    assert np.allclose(out[0], 1.0) and np.allclose(out[1], 2.0) and out[0].dtype == np.float32


def test_ood_subset_is_seeded_sorted_and_bounded():
    from core.training import _ood_subset

    assert _ood_subset(10, 0, max_n=20).tolist() == list(range(10))
    a = _ood_subset(5000, 3, max_n=2000)
    assert len(a) == 2000 and len(np.unique(a)) == 2000
    assert np.all(np.diff(a) > 0) and a[0] >= 0 and a[-1] < 5000
    assert np.array_equal(a, _ood_subset(5000, 3, max_n=2000))
    assert not np.array_equal(a, _ood_subset(5000, 4, max_n=2000))


# --- moved from test_evaluation_page_issue15.py ---------------------------------------------------
def test_training_writes_portable_paths(trained_registry):
    import os

    m = json.loads((trained_registry.root / "models" / "v0001-tiny" / "metrics.json").read_text())
    for split in ("validation", "test"):
        for p in m[split]["predictions"]:
            assert not os.path.isabs(p["path"]) and p["path"].split("/")[0] in ("train", "val", "test"), p

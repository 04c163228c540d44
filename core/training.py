"""Two-phase transfer learning, after keras-io's transfer_learning.py.

Phase 1 (base frozen): train the head. A frozen base computes the same features every
epoch, so by default (``cache_features``) they are computed **once** and the head is fitted
on them; the trained head is then plugged back into the full model unchanged (it is the
same layer object). ``benchmarks/bench_training.py`` measures this against the naive way.

Phase 2 (all trainable): recompile with a much smaller learning rate and fine-tune the
whole network on images.

Both phases use class weights, track validation ROC-AUC, stop early, and end on the best
validation weights (phase 2 only replaces phase 1's weights if it beats them). Progress is
reported as ``ProgressEvent``s; ``should_stop()`` returning True cancels cleanly at the next
batch with ``TrainingCancelled``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np

from core import dataset as ds
from core.calibration import OperatingPoint, fit_operating_point
from core.config import CLASS_NAMES, Config

log = logging.getLogger(__name__)


class TrainingCancelled(Exception):
    """Raised when ``should_stop()`` asked training to stop. Nothing is published."""


@dataclasses.dataclass
class ProgressEvent:
    kind: str  # "stage" | "phase_start" | "batch" | "epoch_end" | "phase_end" | "done"
    phase: str | None = None  # "data" | "features" | "head" | "finetune" | "calibrate" | "evaluate"
    epoch: int | None = None  # 1-based
    epochs: int | None = None
    batch: int | None = None  # 1-based
    batches: int | None = None
    metrics: dict = dataclasses.field(default_factory=dict)
    message: str = ""
    elapsed_s: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


ProgressFn = Callable[[ProgressEvent], None]


@dataclasses.dataclass
class TrainResult:
    model: object  # keras.Model (training precision)
    config: Config
    operating_point: OperatingPoint
    history: dict  # {"head": {metric: [..]}, "finetune": {...}, "phase_boundary_epoch": int}
    metrics: dict  # {"validation": {...}, "test": {...}}
    provenance: dict
    ood: object | None = None  # core.ood.OODStats


def get_strategy(name: str):
    """tf.distribute strategy for ``Config.strategy``: TensorFlow's engine, not ours."""
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()  # all local GPUs (or the CPU when none)
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()  # reads TF_CONFIG
    raise ValueError(f"strategy must be one of ('default', 'mirrored', 'multiworker'). Received: strategy={name!r}")


def _callbacks_module():
    import keras

    class Progress(keras.callbacks.Callback):
        """Forwards Keras events as ProgressEvents and implements cancellation."""

        def __init__(self, emit, phase, epochs, batches, should_stop, t0, min_interval=0.5):
            super().__init__()
            self.emit, self.phase, self.epochs, self.batches = emit, phase, epochs, batches
            self.should_stop, self.t0, self.min_interval = should_stop, t0, min_interval
            self.cancelled = False
            self._epoch = 0
            self._last = 0.0

        def _check(self):
            if self.should_stop is not None and self.should_stop():
                self.cancelled = True
                if self.model is not None:
                    self.model.stop_training = True
                return True
            return False

        def on_epoch_begin(self, epoch, logs=None):
            self._epoch = epoch + 1

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            last = batch + 1 == self.batches
            if now - self._last >= self.min_interval or last:
                self._last = now
                self.emit(
                    ProgressEvent(
                        "batch", self.phase, self._epoch, self.epochs, batch + 1, self.batches,
                        {k: float(v) for k, v in (logs or {}).items()}, elapsed_s=now - self.t0,
                    )
                )
            self._check()

        def on_predict_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            if now - self._last >= self.min_interval or batch + 1 == self.batches:
                self._last = now
                self.emit(ProgressEvent("batch", self.phase, None, None, batch + 1, self.batches, elapsed_s=now - self.t0))
            if self._check():
                raise TrainingCancelled("Training was cancelled.")

        def on_epoch_end(self, epoch, logs=None):
            self.emit(
                ProgressEvent(
                    "epoch_end", self.phase, epoch + 1, self.epochs, None, self.batches,
                    {k: float(v) for k, v in (logs or {}).items()}, elapsed_s=time.perf_counter() - self.t0,
                )
            )
            self._check()

    class BestWeights(keras.callbacks.Callback):
        """Early stopping on a max-metric with best-weights restore, seeded with a baseline.

        Unlike keras.callbacks.EarlyStopping it can start from phase 1's best score and
        weights, so a fine-tune that never beats the head leaves phase 1's model in place.
        """

        def __init__(self, monitor="val_auc", patience=5, best=-np.inf, weights=None):
            super().__init__()
            self.monitor, self.patience = monitor, patience
            self.best, self.best_weights = best, weights
            self.best_epoch = 0 if weights is not None else None
            self.wait = 0

        def on_epoch_end(self, epoch, logs=None):
            v = (logs or {}).get(self.monitor)
            if v is None or not np.isfinite(v):
                return
            if v > self.best:
                self.best, self.best_weights, self.best_epoch, self.wait = float(v), self.model.get_weights(), epoch + 1, 0
            else:
                self.wait += 1
                if self.wait >= self.patience:
                    self.model.stop_training = True

        def on_train_end(self, logs=None):
            if self.best_weights is not None:
                self.model.set_weights(self.best_weights)

    class EpochSnapshots(keras.callbacks.Callback):
        """Keeps the weights of the last ``k`` epochs (for checkpoint averaging)."""

        def __init__(self, k):
            super().__init__()
            self.k, self.snapshots = k, []

        def on_epoch_end(self, epoch, logs=None):
            if self.k:
                self.snapshots = (self.snapshots + [self.model.get_weights()])[-self.k:]

    return Progress, BestWeights, EpochSnapshots


def _loss(config: Config):
    import keras

    return keras.losses.BinaryCrossentropy(label_smoothing=config.label_smoothing)


def finetune_optimizer(config: Config, steps_per_epoch: int):
    """Adam at ``finetune_learning_rate``, constant or warm-up + cosine decay to 0."""
    import keras

    return keras.optimizers.Adam(finetune_learning_rate(config, steps_per_epoch))


def finetune_learning_rate(config: Config, steps_per_epoch: int):
    """A float ("constant") or a keras LearningRateSchedule ("cosine") for phase 2."""
    import keras

    if config.finetune_schedule == "constant":
        return config.finetune_learning_rate
    total = max(1, steps_per_epoch * config.finetune_epochs)
    warmup = int(round(config.warmup_fraction * total))
    # Keras 3 CosineDecay: linear warm-up from initial_learning_rate to warmup_target over
    # warmup_steps, then cosine decay over decay_steps (to alpha * warmup_target = 0).
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else config.finetune_learning_rate,
        decay_steps=max(1, total - warmup),
        alpha=0.0,
        warmup_target=config.finetune_learning_rate if warmup else None,
        warmup_steps=warmup,
    )


def _average_weights(snapshots: list) -> list:
    return [np.mean([w[i] for w in snapshots], axis=0).astype(snapshots[0][i].dtype) for i in range(len(snapshots[0]))]


def _phase2_dataset(x: np.ndarray, y: np.ndarray, config: Config):
    """tf.data pipeline for phase 2: shuffled (or class-balanced) batches, augmented if
    configured. Images stay uint8 in memory; (B, h, w, 3) float32 0..255 out.

    With ``balanced_sampling`` the two classes are separate shuffled, repeated streams drawn
    50/50, so the pipeline is infinite: fit it with ``steps_per_epoch``.
    """
    import tensorflow as tf

    if config.balanced_sampling:
        streams = []
        for c in (0, 1):
            idx = np.flatnonzero(y == c)
            streams.append(
                tf.data.Dataset.from_tensor_slices((x[idx], y[idx]))
                .shuffle(len(idx), seed=config.seed + c, reshuffle_each_iteration=True).repeat()
            )
        data = tf.data.Dataset.sample_from_datasets(streams, weights=[0.5, 0.5], seed=config.seed)
    else:
        data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=config.seed, reshuffle_each_iteration=True)
    data = data.batch(config.batch_size)
    if config.augment:
        from core.model import build_augmenter

        aug = build_augmenter(config)

        def apply(xb, yb):
            xb = aug(tf.cast(xb, tf.float32), training=True)
            return tf.clip_by_value(xb, 0.0, 255.0), yb

        data = data.map(apply, num_parallel_calls=tf.data.AUTOTUNE)
    return data.prefetch(tf.data.AUTOTUNE)


def _metrics():
    import keras

    return [keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")]


def _package_versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("tensorflow", "keras", "numpy", "scikit-learn", "opencv-python-headless", "pydicom"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _limit(samples, n_per_class: int | None, seed: int):
    if not n_per_class:
        return list(samples)
    rng = np.random.default_rng(seed)
    out = []
    for label in range(len(CLASS_NAMES)):
        items = [s for s in samples if s.label == label]
        idx = rng.permutation(len(items))[:n_per_class]
        out.extend(items[i] for i in sorted(idx))
    return out


@dataclasses.dataclass
class TrainingData:
    """What one training run sees: the split samples and their decoded arrays. ``tr`` holds the
    train part plus the feedback images (appended last); ``va`` / ``te`` never hold feedback."""

    all_train: list
    train_samples: list
    val_samples: list
    test_samples: list
    tr: object  # core.dataset.ArraySet
    va: object
    te: object | None
    feedback_hashes: list = dataclasses.field(default_factory=list)
    feedback_excluded: int = 0  # accepted feedback images dropped because they are validation/test files


def _file_sha256(path) -> str | None:
    import hashlib

    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def assemble_data(config: Config, data_root: str | Path, *, limit_per_class: int | None = None,
                  evaluate_test: bool = True, feedback_dir: str | Path | None = None, progress=None,
                  stage=None) -> TrainingData:
    """Index, split and decode the data of one run. The patient-wise train/validation split is
    made first, from the dataset alone; then, with ``config.include_feedback``, the accepted
    feedback images with consented pixels are appended to the **training part only**, minus any
    whose SHA-256 is that of a validation or test file (so feedback can never bring a held-out
    image into training). ``progress(i, n, name)`` may raise to cancel."""
    say = stage or (lambda phase, message: log.info(message))
    say("data", f"Indexing {data_root}")
    index = ds.discover(data_root)
    if not index.split("train"):
        raise ds.DatasetError(f"No train split under {data_root}: expected {data_root}/train/{{NORMAL,PNEUMONIA}}.")
    all_train = _limit(index.split("train"), limit_per_class, config.seed)
    train_s, val_s = ds.patient_split(all_train, config.val_fraction, config.seed)
    test_s = _limit(index.split("test"), limit_per_class, config.seed) if evaluate_test else []
    for name, items in (("train", train_s), ("validation", val_s)):
        if len({s.label for s in items}) < 2:
            raise ds.DatasetError(f"The {name} split needs images of both classes; got {len(items)} images.")

    def load(items, name):
        return ds.load_arrays(items, config.input_size,
                              progress=None if progress is None else (lambda i, n: progress(i, n, name)))

    say("data", f"Decoding {len(train_s)} train / {len(val_s)} validation / {len(test_s)} test images at {config.input_size} px")
    tr, va = load(train_s, "train"), load(val_s, "validation")
    te = load(test_s, "test") if test_s else None
    hashes: list[str] = []
    excluded = 0
    if config.include_feedback:
        from core.feedback import FeedbackStore

        fb, fb_hashes = FeedbackStore(feedback_dir).load_training_arrays(config.input_size)
        held_out = {_file_sha256(s.path) for s in list(val_s) + list(test_s)}
        keep = np.array([h not in held_out for h in fb_hashes], dtype=bool)
        excluded = int((~keep).sum())
        hashes = [h for h, k in zip(fb_hashes, keep) if k]
        if hashes:
            tr = ds.ArraySet(np.concatenate([tr.x, fb.x[keep]]), np.concatenate([tr.y, fb.y[keep].astype(tr.y.dtype)]),
                             list(tr.paths) + [p for p, k in zip(fb.paths, keep) if k], list(tr.errors) + list(fb.errors))
        say("data", f"Added {len(hashes)} accepted feedback image(s) to training"
                    + (f" ({excluded} dropped: validation/test files)" if excluded else ""))
    return TrainingData(all_train, train_s, val_s, test_s, tr, va, te, hashes, excluded)


def train(
    config: Config,
    data_root: str | Path,
    *,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    naive_phase1: bool = False,
    evaluate_test: bool = True,
    limit_per_class: int | None = None,
    n_bootstrap: int = 1000,
    feedback_dir: str | Path | None = None,
) -> TrainResult:
    """Train a model end to end. Raises TrainingCancelled, DatasetError, ValueError.

    With ``config.include_feedback`` the accepted, consented feedback images of ``feedback_dir``
    (default ``<artifacts>/feedback``) join the training part only (:func:`assemble_data`)."""
    import keras

    from core.model import build_model, feature_extractor, float32_twin, get_base, get_head

    config.validate()
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    emit = progress or (lambda e: None)

    def stage(phase: str, message: str) -> None:
        log.info(message)
        emit(ProgressEvent("stage", phase, message=message, elapsed_s=time.perf_counter() - t0))
        if should_stop is not None and should_stop():
            raise TrainingCancelled("Training was cancelled.")

    Progress, BestWeights, EpochSnapshots = _callbacks_module()

    # Fail fast on unusable starting weights (no internet for ImageNet, a bad local file)
    # before minutes of decoding; also warms keras' download cache.
    from core.model import build_base

    stage("data", f"Checking starting weights: {config.weights_source}")
    build_base(config)
    keras.backend.clear_session()

    # --- data ------------------------------------------------------------------------------
    def prog(i, n, name):
        emit(ProgressEvent("batch", "data", batch=i, batches=n, message=f"decoding {name}", elapsed_s=time.perf_counter() - t0))
        if should_stop is not None and should_stop():
            raise TrainingCancelled("Training was cancelled.")

    t = time.perf_counter()
    data = assemble_data(config, data_root, limit_per_class=limit_per_class, evaluate_test=evaluate_test,
                         feedback_dir=feedback_dir, progress=prog, stage=stage)
    train_s, val_s, test_s, all_train = data.train_samples, data.val_samples, data.test_samples, data.all_train
    tr, va, te = data.tr, data.va, data.te
    timings["decode_s"] = time.perf_counter() - t
    cw = ds.class_weights(tr.y) if config.class_weighting else None

    # --- model -----------------------------------------------------------------------------
    keras.utils.set_random_seed(config.seed)
    prev_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(config.precision)
    strategy = get_strategy(config.strategy)
    history: dict = {}
    try:
        with strategy.scope():
            model = build_model(config)
        base, head = get_base(model), get_head(model)
        bs = config.batch_size
        steps = int(np.ceil(len(tr) / bs))

        # --- phase 1: base frozen, train the head --------------------------------------------
        base.trainable = False
        emit(ProgressEvent("phase_start", "head", epochs=config.head_epochs, message="Phase 1: base frozen, training the head", elapsed_s=time.perf_counter() - t0))
        t = time.perf_counter()
        p1 = Progress(emit, "head", config.head_epochs, steps, should_stop, t0)
        best1 = BestWeights("val_auc", config.early_stopping_patience)
        if config.cache_features and not naive_phase1:
            # Frozen base => identical features every epoch: compute once, (N, h, w, 512).
            fe = feature_extractor(model)
            pf = Progress(emit, "features", None, int(np.ceil(len(tr) / 64)), should_stop, t0)
            stage("features", "Computing base features once (frozen base)")
            f_tr = fe.predict(tr.x, batch_size=64, verbose=0, callbacks=[pf])
            pf.batches = int(np.ceil(len(va) / 64))
            f_va = fe.predict(va.x, batch_size=64, verbose=0, callbacks=[pf])
            f_tr, f_va = f_tr.astype(np.float32), f_va.astype(np.float32)  # bf16 -> f32 for the head
            timings["features_s"] = time.perf_counter() - t
            with strategy.scope():
                head.compile(keras.optimizers.Adam(config.head_learning_rate), _loss(config), metrics=_metrics())
            h1 = head.fit(
                f_tr, tr.y, batch_size=bs, epochs=config.head_epochs, validation_data=(f_va, va.y),
                class_weight=cw, shuffle=True, verbose=0, callbacks=[p1, best1],
            ) if config.head_epochs else None
        else:
            with strategy.scope():
                model.compile(keras.optimizers.Adam(config.head_learning_rate), _loss(config), metrics=_metrics())
            h1 = model.fit(
                tr.x, tr.y, batch_size=bs, epochs=config.head_epochs, validation_data=(va.x, va.y),
                class_weight=cw, shuffle=True, verbose=0, callbacks=[p1, best1],
            ) if config.head_epochs else None

        if p1.cancelled:
            raise TrainingCancelled("Training was cancelled during phase 1.")
        timings["phase1_s"] = time.perf_counter() - t
        history["head"] = {k: [float(x) for x in v] for k, v in (h1.history.items() if h1 else [])}
        history["head_best_epoch"] = best1.best_epoch
        emit(ProgressEvent("phase_end", "head", metrics={"best_val_auc": float(best1.best)}, elapsed_s=time.perf_counter() - t0))

        # --- phase 2: unfreeze all, recompile with a much smaller LR, fine-tune ---------------
        base.trainable = True
        t = time.perf_counter()
        history["finetune"] = {}
        history["finetune_best_epoch"] = None
        if config.finetune_epochs:
            emit(ProgressEvent("phase_start", "finetune", epochs=config.finetune_epochs, message="Phase 2: fine-tuning all layers", elapsed_s=time.perf_counter() - t0))
            with strategy.scope():
                model.compile(finetune_optimizer(config, steps), _loss(config), metrics=_metrics())
            p2 = Progress(emit, "finetune", config.finetune_epochs, steps, should_stop, t0)
            start_best = best1.best if best1.best_weights is not None else -np.inf
            best2 = BestWeights("val_auc", config.early_stopping_patience, start_best, model.get_weights())
            best2.best_epoch = 0
            snaps = EpochSnapshots(config.average_last_epochs)
            if config.augment or config.balanced_sampling:
                balanced = config.balanced_sampling
                h2 = model.fit(
                    _phase2_dataset(tr.x, tr.y, config), epochs=config.finetune_epochs,
                    steps_per_epoch=steps if balanced else None, validation_data=(va.x, va.y),
                    class_weight=None if balanced else cw,  # balanced batches replace the weights
                    shuffle=False, verbose=0, callbacks=[p2, snaps, best2],  # shuffled in tf.data
                )
            else:
                h2 = model.fit(
                    tr.x, tr.y, batch_size=bs, epochs=config.finetune_epochs, validation_data=(va.x, va.y),
                    class_weight=cw, shuffle=True, verbose=0, callbacks=[p2, snaps, best2],
                )
            if p2.cancelled:
                raise TrainingCancelled("Training was cancelled during phase 2.")
            history["finetune"] = {k: [float(x) for x in v] for k, v in h2.history.items()}
            history["finetune_best_epoch"] = best2.best_epoch  # 0 = phase 1's weights were kept
            if config.average_last_epochs and len(snaps.snapshots) >= 2:
                history["checkpoint_average"] = _try_average(model, snaps.snapshots, va, best2.best)
            emit(ProgressEvent("phase_end", "finetune", metrics={"best_val_auc": float(best2.best)}, elapsed_s=time.perf_counter() - t0))
        timings["phase2_s"] = time.perf_counter() - t

        # --- operating point, OOD statistics, evaluation: on the float32 model that is served ---
        stage("calibrate", "Fitting temperature, threshold and OOD statistics on validation")
        model = float32_twin(model, config)
        op, ood_stats, metrics, t_cal, t_eval = calibrate_and_evaluate(
            model, config, tr, va, te, n_bootstrap=n_bootstrap, on_evaluate=lambda: stage("evaluate", "Evaluating"),
            data_root=data_root,
        )
        timings["calibrate_s"], timings["evaluate_s"] = t_cal, t_eval
    finally:
        keras.mixed_precision.set_global_policy(prev_policy)

    history["phase_boundary_epoch"] = len(history["head"].get("loss", []))
    counts = {
        "train": _count(tr.y), "validation": _count(va.y), "test": _count(te.y) if te is not None else {},
        "skipped_files": len(tr.errors) + len(va.errors) + (len(te.errors) if te is not None else 0),
        "train_patients": len({s.group for s in train_s}), "validation_patients": len({s.group for s in val_s}),
        "feedback": len(data.feedback_hashes),
    }
    provenance = {
        "data_root": str(Path(data_root).resolve()),
        "data_fingerprint": ds.fingerprint(all_train + test_s),
        "counts": counts,
        "weights": config.weights,
        "weights_source": config.weights_source,
        "seed": config.seed,
        "phase1_mode": "naive" if (naive_phase1 or not config.cache_features) else "cached_features",
        "limit_per_class": limit_per_class,
        "packages": _package_versions(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "strategy": config.strategy,
        "precision": config.precision,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "wall_time_s": round(time.perf_counter() - t0, 2),
        "test_used_for_choices": False,
        # clinician feedback added to training only (core.feedback): how many and which images
        "feedback": {"included": bool(config.include_feedback), "images": len(data.feedback_hashes),
                     "sha256": list(data.feedback_hashes), "excluded_overlap": data.feedback_excluded},
    }
    emit(ProgressEvent("done", metrics={"test_roc_auc": metrics.get("test", {}).get("roc_auc")}, elapsed_s=time.perf_counter() - t0))
    return TrainResult(model, config, op, history, metrics, provenance, ood_stats)


OOD_FIT_MAX = 2000


def _ood_subset(n: int, seed: int, max_n: int = OOD_FIT_MAX) -> np.ndarray:
    """Sorted indices of a seeded random subset of ``n`` items (all of them if n <= max_n)."""
    if n <= max_n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_n, replace=False))


def calibrate_and_evaluate(model, config: Config, tr, va, te=None, *, n_bootstrap: int = 1000, on_evaluate=None,
                           data_root=None):
    """Operating point + OOD statistics from validation, then validation/test reports.

    With ``data_root``, image paths in the reports are recorded relative to it (portable).

    ``tr``/``va``/``te`` are ``core.dataset.ArraySet``s. Returns
    (OperatingPoint, OODStats, metrics dict, calibrate seconds, evaluate seconds).
    The test split only feeds the report, never a choice.
    """
    from sklearn.metrics import roc_auc_score

    from core import ood as ood_mod
    from core.evaluation import evaluate
    from core.model import feature_extractor, get_head
    from core.shift import perturb_round_robin

    t = time.perf_counter()
    fe, head = feature_extractor(model), get_head(model)
    # OOD mean/covariance from at most OOD_FIT_MAX train images (a fixed, seeded subset):
    # 2,000 samples pin a 512-d Ledoit-Wolf covariance well, and the float32 pass over all
    # 4,692 train images cost ~60 s of a run that has a 15-minute budget.
    sub = _ood_subset(len(tr), config.seed)
    f_tr = np.asarray(fe.predict(tr.x[sub], batch_size=64, verbose=0), dtype=np.float32)
    f_va = np.asarray(fe.predict(va.x, batch_size=64, verbose=0), dtype=np.float32)
    val_raw = head.predict(f_va, batch_size=256, verbose=0).ravel().astype(np.float64)
    op = fit_operating_point(val_raw, va.y, config.threshold_policy, config.target_sensitivity, config.indeterminate_margin)
    # One perturbed copy of each validation image (round robin over core.shift's eight
    # acquisition perturbations) sets the OOD reject threshold: (N_val, h, w, 512) pooled.
    f_sh = np.asarray(fe.predict(perturb_round_robin(va.x), batch_size=64, verbose=0), dtype=np.float32)
    ood_stats = ood_mod.fit(ood_mod.pool(f_tr), ood_mod.pool(f_va), shifted_val_pooled=ood_mod.pool(f_sh))
    t_cal = time.perf_counter() - t
    if on_evaluate is not None:
        on_evaluate()
    t = time.perf_counter()
    metrics = {"validation": evaluate(va.y, op.calibrate(val_raw), op.threshold, va.paths, n_boot=n_bootstrap, seed=config.seed, split="validation", data_root=data_root)}
    if te is not None and len(te) and len(np.unique(te.y)) == 2:
        te_raw = model.predict(te.x, batch_size=64, verbose=0).ravel().astype(np.float64)
        metrics["test"] = evaluate(te.y, op.calibrate(te_raw), op.threshold, te.paths, n_boot=n_bootstrap, seed=config.seed, split="test", data_root=data_root)
        metrics["test"]["raw_roc_auc_uncalibrated"] = float(roc_auc_score(te.y, te_raw))
    return op, ood_stats, metrics, t_cal, time.perf_counter() - t


def _try_average(model, snapshots: list, va, best_single: float) -> dict:
    """Average the snapshots' weights; keep them only if validation AUC does not drop."""
    from sklearn.metrics import roc_auc_score

    single = model.get_weights()  # the best single epoch (restored by BestWeights)
    model.set_weights(_average_weights(snapshots))
    auc = float(roc_auc_score(va.y, model.predict(va.x, batch_size=64, verbose=0).ravel()))
    kept = auc >= best_single
    if not kept:
        model.set_weights(single)
    log.info("Checkpoint average of %d epochs: val AUC %.4f vs best single %.4f -> %s",
             len(snapshots), auc, best_single, "kept" if kept else "discarded")
    return {"epochs": len(snapshots), "val_auc": auc, "best_single_val_auc": float(best_single), "kept": kept}


def _count(y) -> dict:
    y = np.asarray(y)
    return {name: int((y == i).sum()) for i, name in enumerate(CLASS_NAMES)}


def make_card(result: TrainResult, version: str, created: str) -> dict:
    test = result.metrics.get("test", {})
    op = result.operating_point
    return {
        "version": version,
        "created": created,
        "labels": list(result.config.class_names),
        "input_size": result.config.input_size,
        "backbone": result.config.backbone,
        "weights_source": result.config.weights_source,
        # the heatmap shown by default (docs/explanations.md); travels with the weights
        "explanation": {"method": result.config.explain_method, "layer": result.config.explain_layer},
        "threshold": op.threshold,
        "indeterminate_band": [op.band_low, op.band_high],
        "temperature": op.temperature,
        "val_roc_auc": result.metrics.get("validation", {}).get("roc_auc"),
        "test": {k: test.get(k) for k in ("accuracy", "roc_auc", "pr_auc", "sensitivity", "specificity", "n")} if test else {},
        "counts": result.provenance.get("counts", {}),
        "wall_time_s": result.provenance.get("wall_time_s"),
        "feedback_images": (result.provenance.get("feedback") or {}).get("images", 0),
    }


def publish(result: TrainResult, registry, name: str | None = None, activate: bool = False) -> str:
    """Write a TrainResult into the registry atomically; returns the version name."""
    import datetime as _dt
    import json

    from core.model import save_model

    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    version = name or registry.new_version_name()
    result.provenance["version"] = version
    result.provenance["created"] = created

    def writer(d: Path) -> None:
        save_model(result.model, d / "model.keras", result.config)
        result.config.save(d / "config.json")
        result.operating_point.save(d / "operating_point.json")
        (d / "history.json").write_text(json.dumps(result.history, indent=2))
        (d / "metrics.json").write_text(json.dumps(result.metrics, indent=1))
        (d / "provenance.json").write_text(json.dumps(result.provenance, indent=2))
        (d / "card.json").write_text(json.dumps(make_card(result, version, created), indent=2))
        if result.ood is not None:
            result.ood.save(d)

    return registry.publish(writer, version, activate=activate)

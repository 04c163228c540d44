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
batch with ``TrainingCancelled`` (both in ``core.events``). Publishing the result into the
registry is ``core.publish``; the whole run as the CLI and the admin page's jobs do it (lock,
recovery, audit, train, publish) is ``core.runner.run_training``.
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
from core.events import ProgressEvent, ProgressFn, TrainingCancelled

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    model: object  # keras.Model (training precision)
    config: Config
    operating_point: OperatingPoint
    history: dict  # {"head": {metric: [..]}, "finetune": {...}, "phase_boundary_epoch": int}
    metrics: dict  # {"validation": {...}, "test": {...}}
    provenance: dict
    ood: object | None = None  # core.ood.OODStats
    # False on the workers of a multi-worker training other than the chief: they train their
    # share and stop; operating_point/ood/metrics are None/empty and nothing may be published.
    chief: bool = True


def get_strategy(name: str):
    """The process's tf.distribute strategy for ``Config.strategy`` (``core.distribute``): created
    once, before TensorFlow runs anything; TensorFlow's engine, not ours."""
    from core.distribute import get_strategy as create

    return create(name)


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
        # Read and hash every validation/test file only when there is feedback to check against them.
        held_out = {_file_sha256(s.path) for s in list(val_s) + list(test_s)} if fb_hashes else set()
        keep = np.array([h not in held_out for h in fb_hashes], dtype=bool)
        excluded = int((~keep).sum())
        hashes = [h for h, k in zip(fb_hashes, keep) if k]
        if hashes:
            tr = ds.ArraySet(np.concatenate([tr.x, fb.x[keep]]), np.concatenate([tr.y, fb.y[keep].astype(tr.y.dtype)]),
                             list(tr.paths) + [p for p, k in zip(fb.paths, keep) if k], list(tr.errors) + list(fb.errors))
        say("data", f"Added {len(hashes)} accepted feedback image(s) to training"
                    + (f" ({excluded} dropped: validation/test files)" if excluded else ""))
    return TrainingData(all_train, train_s, val_s, test_s, tr, va, te, hashes, excluded)


@dataclasses.dataclass
class _Run:
    """One training run's context: the config, the progress sink, cancellation, the clock."""

    config: Config
    emit: ProgressFn
    should_stop: Callable[[], bool] | None
    t0: float = dataclasses.field(default_factory=time.perf_counter)
    timings: dict = dataclasses.field(default_factory=dict)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise TrainingCancelled("Training was cancelled.")

    def stage(self, phase: str, message: str) -> None:
        log.info(message)
        self.emit(ProgressEvent("stage", phase, message=message, elapsed_s=self.elapsed()))
        self.check_stop()

    def progress_callback(self, phase: str, epochs: int | None, batches: int):
        from core.callbacks import Progress

        return Progress(self.emit, phase, epochs, batches, self.should_stop, self.t0)


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
    (default ``<artifacts>/feedback``) join the training part only (:func:`assemble_data`).
    Steps: :func:`_check_weights`, :func:`_load_data`, :func:`_phase1`, :func:`_phase2`,
    :func:`calibrate_and_evaluate`, :func:`_provenance`."""
    import keras

    from core.model import build_model, float32_twin, get_base

    from core.distribute import is_chief, peer_errors

    config.validate()
    # First: MultiWorkerMirroredStrategy and logical devices must exist before any TF operation.
    strategy = get_strategy(config.strategy)
    run = _Run(config, progress or (lambda e: None), should_stop)
    _check_weights(run)
    data = _load_data(run, data_root, limit_per_class=limit_per_class, evaluate_test=evaluate_test,
                      feedback_dir=feedback_dir)
    tr, va, te = data.tr, data.va, data.te
    cw = ds.class_weights(tr.y) if config.class_weighting else None

    # --- model -----------------------------------------------------------------------------
    keras.utils.set_random_seed(config.seed)
    prev_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(config.precision)
    history: dict = {}
    try:
        with peer_errors(strategy):  # a lost worker: one clear DistributedTrainingError
            with strategy.scope():
                model = build_model(config)
            # Global batch = config.batch_size, split between the replicas (core.distribute).
            steps = int(np.ceil(len(tr) / config.batch_size))
            best1 = _phase1(run, model, data, cw, strategy, steps, history, naive=naive_phase1)
            get_base(model).trainable = True
            _phase2(run, model, data, cw, strategy, steps, history, best1)
        if not is_chief(strategy):  # the chief alone calibrates, evaluates and publishes
            return _worker_result(run, model, history, data, data_root, naive_phase1, limit_per_class)

        # --- operating point, OOD statistics, evaluation: on the float32 model that is served ---
        run.stage("calibrate", "Fitting temperature, threshold and OOD statistics on validation")
        model = float32_twin(model, config)
        op, ood_stats, metrics, t_cal, t_eval = calibrate_and_evaluate(
            model, config, tr, va, te, n_bootstrap=n_bootstrap, on_evaluate=lambda: run.stage("evaluate", "Evaluating"),
            data_root=data_root,
        )
        run.timings["calibrate_s"], run.timings["evaluate_s"] = t_cal, t_eval
    finally:
        keras.mixed_precision.set_global_policy(prev_policy)

    history["phase_boundary_epoch"] = len(history["head"].get("loss", []))
    provenance = _provenance(run, data, data_root, naive_phase1=naive_phase1, limit_per_class=limit_per_class)
    run.emit(ProgressEvent("done", metrics={"test_roc_auc": metrics.get("test", {}).get("roc_auc")}, elapsed_s=run.elapsed()))
    return TrainResult(model, config, op, history, metrics, provenance, ood_stats)


def _worker_result(run: _Run, model, history: dict, data: TrainingData, data_root, naive_phase1: bool,
                   limit_per_class: int | None) -> TrainResult:
    """What a non-chief worker returns once both phases are done: the weights (the same as the
    chief's) and the history; no operating point, no metrics, never published."""
    from core.distribute import describe

    history["phase_boundary_epoch"] = len(history["head"].get("loss", []))
    provenance = _provenance(run, data, data_root, naive_phase1=naive_phase1, limit_per_class=limit_per_class)
    log.info("Training done on %s; the chief calibrates, evaluates and publishes", describe(get_strategy(run.config.strategy)))
    run.emit(ProgressEvent("done", message="worker done: the chief publishes", elapsed_s=run.elapsed()))
    return TrainResult(model, run.config, None, history, {}, provenance, None, chief=False)


def _check_weights(run: _Run) -> None:
    """Fail fast on unusable starting weights (no internet for ImageNet, a bad local file)
    before minutes of decoding; also warms keras' download cache."""
    import keras

    from core.model import build_base

    run.stage("data", f"Checking starting weights: {run.config.weights_source}")
    build_base(run.config)
    keras.backend.clear_session()


def _load_data(run: _Run, data_root: str | Path, *, limit_per_class: int | None, evaluate_test: bool,
               feedback_dir: str | Path | None) -> TrainingData:
    """:func:`assemble_data` with decoding progress events and cancellation."""

    def prog(i, n, name):
        run.emit(ProgressEvent("batch", "data", batch=i, batches=n, message=f"decoding {name}", elapsed_s=run.elapsed()))
        run.check_stop()

    t = time.perf_counter()
    data = assemble_data(run.config, data_root, limit_per_class=limit_per_class, evaluate_test=evaluate_test,
                         feedback_dir=feedback_dir, progress=prog, stage=run.stage)
    run.timings["decode_s"] = time.perf_counter() - t
    return data


def _fit(model, x, y, *, epochs: int, validation_data, class_weight, callbacks: list, batch_size: int | None = None,
         steps_per_epoch: int | None = None, shuffle: bool = True, strategy=None, seed: int = 0):
    """The one ``fit`` call of both phases (quiet; progress and early stopping via callbacks).

    Distributed (more than one replica), the training data go in as tf.data with an explicit
    auto-shard policy (batches of ``batch_size``, the global batch, split between the replicas)
    and validation is scored by :func:`_local_validation` (``core.distribute``)."""
    from core.distribute import distributed

    if distributed(strategy):
        # Keras 3 reports a multi-replica validation metric as the mean of the replicas' values (an
        # AUC of AUCs): score the whole validation set locally instead, on every worker alike.
        callbacks = [_local_validation(model, *validation_data), *callbacks]
        x, validation_data = _distributed_data(x, y, batch_size or 32, shuffle, seed), None
        y, batch_size, shuffle = None, None, False
    return model.fit(
        x, y, batch_size=batch_size, epochs=epochs, steps_per_epoch=steps_per_epoch, validation_data=validation_data,
        class_weight=class_weight, shuffle=shuffle, verbose=0, callbacks=callbacks,
    )


def _local_validation(model, x_va, y_va):
    """Callback: ``val_loss``/``val_auc``/``val_accuracy`` of the whole validation set, computed on
    this worker without the strategy (a view of ``model`` built outside its scope), added to the
    epoch logs before early stopping reads them. The same numbers on every worker: same weights,
    same data, so every worker keeps the same best epoch."""
    import keras

    view = keras.Model(model.inputs, model.outputs)  # shares the layers; predict is not distributed
    loss_fn = model.loss

    class LocalValidation(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            p = view.predict(x_va, batch_size=64, verbose=0)
            y = np.asarray(y_va, dtype=np.float32).reshape(p.shape)
            out = {"val_loss": float(loss_fn(y, p))}
            for m in _metrics():
                m.update_state(y, p)
                out[f"val_{m.name}"] = float(m.result())
            if logs is not None:
                logs.update(out)

    return LocalValidation()


def _distributed_data(x, y, batch_size: int, shuffle: bool, seed: int):
    """The training dataset, its batches (``batch_size`` = the global batch) sharded between workers."""
    import tensorflow as tf

    from core.distribute import SHARD, with_sharding

    if not isinstance(x, tf.data.Dataset):  # (N, ...) arrays -> shuffled batches of the global size
        data = tf.data.Dataset.from_tensor_slices((x, y))
        if shuffle:
            data = data.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        x = data.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    return with_sharding(x, SHARD)


def _phase1(run: _Run, model, data: TrainingData, cw, strategy, steps: int, history: dict, *, naive: bool = False):
    """Phase 1: base frozen, train the head. Returns the BestWeights callback (best score and
    weights) that phase 2 starts from."""
    import keras

    from core.callbacks import BestWeights
    from core.model import feature_extractor, get_base, get_head

    config, tr, va = run.config, data.tr, data.va
    get_base(model).trainable = False
    run.emit(ProgressEvent("phase_start", "head", epochs=config.head_epochs, message="Phase 1: base frozen, training the head", elapsed_s=run.elapsed()))
    t = time.perf_counter()
    p1 = run.progress_callback("head", config.head_epochs, steps)
    best1 = BestWeights("val_auc", config.early_stopping_patience)
    if config.cache_features and not naive:
        # Frozen base => identical features every epoch: compute once, (N, h, w, 512). Built
        # outside the strategy's scope, every worker computes all of them locally (the base's
        # weights are the same everywhere): no collective, no gather order to trust.
        fe = feature_extractor(model)
        pf = run.progress_callback("features", None, int(np.ceil(len(tr) / 64)))
        run.stage("features", "Computing base features once (frozen base)")
        f_tr = fe.predict(tr.x, batch_size=64, verbose=0, callbacks=[pf])
        pf.batches = int(np.ceil(len(va) / 64))
        f_va = fe.predict(va.x, batch_size=64, verbose=0, callbacks=[pf])
        f_tr, f_va = f_tr.astype(np.float32), f_va.astype(np.float32)  # bf16 -> f32 for the head
        run.timings["features_s"] = time.perf_counter() - t
        fit_model, x_tr, x_va = get_head(model), f_tr, f_va
    else:
        fit_model, x_tr, x_va = model, tr.x, va.x
    with strategy.scope():
        fit_model.compile(keras.optimizers.Adam(config.head_learning_rate), _loss(config), metrics=_metrics())
    h1 = _fit(fit_model, x_tr, tr.y, batch_size=config.batch_size, epochs=config.head_epochs,
              validation_data=(x_va, va.y), class_weight=cw, callbacks=[p1, best1], strategy=strategy,
              seed=config.seed) if config.head_epochs else None

    if p1.cancelled:
        raise TrainingCancelled("Training was cancelled during phase 1.")
    run.timings["phase1_s"] = time.perf_counter() - t
    history["head"] = {k: [float(x) for x in v] for k, v in (h1.history.items() if h1 else [])}
    history["head_best_epoch"] = best1.best_epoch
    run.emit(ProgressEvent("phase_end", "head", metrics={"best_val_auc": float(best1.best)}, elapsed_s=run.elapsed()))
    return best1


def _phase2(run: _Run, model, data: TrainingData, cw, strategy, steps: int, history: dict, best1) -> None:
    """Phase 2: everything trainable, recompiled with a much smaller learning rate, fine-tuned on
    (augmented / class-balanced) images. Keeps phase 1's weights unless it beats them."""
    from core.callbacks import BestWeights, EpochSnapshots

    config, tr, va = run.config, data.tr, data.va
    t = time.perf_counter()
    history["finetune"] = {}
    history["finetune_best_epoch"] = None
    if config.finetune_epochs:
        run.emit(ProgressEvent("phase_start", "finetune", epochs=config.finetune_epochs, message="Phase 2: fine-tuning all layers", elapsed_s=run.elapsed()))
        with strategy.scope():
            model.compile(finetune_optimizer(config, steps), _loss(config), metrics=_metrics())
        p2 = run.progress_callback("finetune", config.finetune_epochs, steps)
        start_best = best1.best if best1.best_weights is not None else -np.inf
        best2 = BestWeights("val_auc", config.early_stopping_patience, start_best, model.get_weights())
        best2.best_epoch = 0
        snaps = EpochSnapshots(config.average_last_epochs)
        callbacks = [p2, snaps, best2]
        if config.augment or config.balanced_sampling:
            balanced = config.balanced_sampling
            h2 = _fit(model, _phase2_dataset(tr.x, tr.y, config), None, epochs=config.finetune_epochs,
                      steps_per_epoch=steps if balanced else None, validation_data=(va.x, va.y),
                      class_weight=None if balanced else cw,  # balanced batches replace the weights
                      shuffle=False, callbacks=callbacks, strategy=strategy)  # shuffled in tf.data
        else:
            h2 = _fit(model, tr.x, tr.y, batch_size=config.batch_size, epochs=config.finetune_epochs,
                      validation_data=(va.x, va.y), class_weight=cw, callbacks=callbacks, strategy=strategy,
                      seed=config.seed)
        if p2.cancelled:
            raise TrainingCancelled("Training was cancelled during phase 2.")
        history["finetune"] = {k: [float(x) for x in v] for k, v in h2.history.items()}
        history["finetune_best_epoch"] = best2.best_epoch  # 0 = phase 1's weights were kept
        if config.average_last_epochs and len(snaps.snapshots) >= 2:
            history["checkpoint_average"] = _try_average(model, snaps.snapshots, va, best2.best)
        run.emit(ProgressEvent("phase_end", "finetune", metrics={"best_val_auc": float(best2.best)}, elapsed_s=run.elapsed()))
    run.timings["phase2_s"] = time.perf_counter() - t


def _provenance(run: _Run, data: TrainingData, data_root: str | Path, *, naive_phase1: bool,
                limit_per_class: int | None) -> dict:
    """provenance.json: data, counts, fingerprint, weights source, seeds, packages, timings."""
    config, tr, va, te = run.config, data.tr, data.va, data.te
    counts = {
        "train": _count(tr.y), "validation": _count(va.y), "test": _count(te.y) if te is not None else {},
        "skipped_files": len(tr.errors) + len(va.errors) + (len(te.errors) if te is not None else 0),
        "train_patients": len({s.group for s in data.train_samples}),
        "validation_patients": len({s.group for s in data.val_samples}),
        "feedback": len(data.feedback_hashes),
    }
    return {
        "data_root": str(Path(data_root).resolve()),
        "data_fingerprint": ds.fingerprint(data.all_train + data.test_samples),
        "counts": counts,
        "weights": config.weights,
        "weights_source": config.weights_source,
        "seed": config.seed,
        "phase1_mode": "naive" if (naive_phase1 or not config.cache_features) else "cached_features",
        "limit_per_class": limit_per_class,
        "packages": _package_versions(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "strategy": config.strategy,
        "replicas": _replicas(config),  # {"in_sync": n, "workers": m}: what the strategy really used
        "precision": config.precision,
        "timings_s": {k: round(v, 2) for k, v in run.timings.items()},
        "wall_time_s": round(run.elapsed(), 2),
        "test_used_for_choices": False,
        # clinician feedback added to training only (core.feedback): how many and which images
        "feedback": {"included": bool(config.include_feedback), "images": len(data.feedback_hashes),
                     "sha256": list(data.feedback_hashes), "excluded_overlap": data.feedback_excluded},
    }


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

    import keras

    single = model.get_weights()  # the best single epoch (restored by BestWeights)
    model.set_weights(_average_weights(snapshots))
    # A view built outside any strategy scope: a local, non-distributed predict (the same on every worker).
    view = keras.Model(model.inputs, model.outputs)
    auc = float(roc_auc_score(va.y, view.predict(va.x, batch_size=64, verbose=0).ravel()))
    kept = auc >= best_single
    if not kept:
        model.set_weights(single)
    log.info("Checkpoint average of %d epochs: val AUC %.4f vs best single %.4f -> %s",
             len(snapshots), auc, best_single, "kept" if kept else "discarded")
    return {"epochs": len(snapshots), "val_auc": auc, "best_single_val_auc": float(best_single), "kept": kept}


def _replicas(config: Config) -> dict:
    from core.distribute import num_workers

    strategy = get_strategy(config.strategy)
    return {"in_sync": int(strategy.num_replicas_in_sync), "workers": num_workers(strategy)}


def _count(y) -> dict:
    y = np.asarray(y)
    return {name: int((y == i).sum()) for i, name in enumerate(CLASS_NAMES)}

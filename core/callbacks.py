"""Keras callbacks of a training run (core.training): progress + cancellation, early stopping
with a seeded best-weights restore, and last-epoch snapshots for checkpoint averaging.

Imports Keras at import time: import this module lazily (core.training does, inside ``train``).
"""

from __future__ import annotations

import time

import keras
import numpy as np

from core.events import ProgressEvent, TrainingCancelled


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

"""What a training run reports and how it is stopped: :class:`ProgressEvent`, :class:`TrainingCancelled`.

A module of its own, importing nothing of the project, so that everything that reports or reads
progress (``core.training``, ``core.callbacks``, ``core.runner``, ``core.job_runner``, the CLI)
imports it without importing the others: no import circles. A job writes
``ProgressEvent.to_dict()`` per line to ``events.jsonl`` (``core.progress`` reads them).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

__all__ = ["ProgressEvent", "ProgressFn", "TrainingCancelled"]


class TrainingCancelled(Exception):
    """Raised when ``should_stop()`` asked training to stop (or a job got SIGTERM). Nothing is published."""


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

"""Dataset discovery, patient-wise splitting, class weights and in-memory image arrays.

Layout (the Kaggle "chest-xray-pneumonia" download)::

    <root>/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg

Only ``train`` is required. The official ``val`` split holds 16 images, far too few to
choose anything on, so a validation split is carved out of ``train`` *by patient*: file
names carry a patient id (``person123_bacteria_456.jpeg``) or a study id for NORMAL
(``IM-0115-0001.jpeg``, ``NORMAL2-IM-1427-0001.jpeg``), and all images of one child go to
the same side.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from core.config import CLASS_NAMES
from core.imageio import ImageError, load_image, resize_for_model, scan_folder

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")

_PERSON_RE = re.compile(r"^(person\d+)_", re.IGNORECASE)
_STUDY_RE = re.compile(r"^((?:NORMAL\d*-)?IM-\d+)", re.IGNORECASE)


class DatasetError(ValueError):
    """A dataset problem with a message meant for a person (no traceback)."""


@dataclasses.dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # index into CLASS_NAMES
    split: str
    group: str  # patient / study id; the unit of the train/val split

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.label]


def patient_id(filename: str) -> str:
    """Patient (or study) id carried by a Kaggle file name.

    >>> patient_id("person1000_bacteria_2931.jpeg"), patient_id("NORMAL2-IM-1427-0001.jpeg")
    ('person1000', 'NORMAL2-IM-1427')

    Unknown naming schemes fall back to the file stem, i.e. one image = one group,
    which is the safe default for a user's own folder.
    """
    name = Path(filename).name
    m = _PERSON_RE.match(name) or _STUDY_RE.match(name)
    return m.group(1) if m else Path(name).stem


@dataclasses.dataclass
class DatasetIndex:
    root: Path
    samples: dict[str, list[Sample]]
    # Files in the class folders that are not images, with the reason (core.imageio.scan_folder):
    # counted and named by `python -m core data`, never silently dropped.
    skipped: list[tuple[Path, str]] = dataclasses.field(default_factory=list)

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for split, items in self.samples.items():
            c = {name: 0 for name in CLASS_NAMES}
            for s in items:
                c[s.class_name] += 1
            out[split] = c
        return out

    def split(self, name: str) -> list[Sample]:
        return self.samples.get(name, [])

    @property
    def splits(self) -> list[str]:
        return [s for s in SPLITS if self.samples.get(s)]


def discover(root: str | Path) -> DatasetIndex:
    """Index ``root``. Raises DatasetError with instructions when it is unusable."""
    root = Path(root).expanduser()
    if not root.is_dir():
        from core.config import DATA_ROOT_ENV, DEFAULT_DATA_ROOT, data_root_search_text

        searched = ""
        if root == Path(DEFAULT_DATA_ROOT) and not os.environ.get(DATA_ROOT_ENV):  # the fallback: none existed
            searched = f" Without {DATA_ROOT_ENV}, the first existing folder of these is used: {data_root_search_text()}."
        raise DatasetError(
            f"Data folder not found: {root}.{searched} Download the Kaggle dataset with "
            "`python -m core data download` (needs internet and Kaggle credentials) or set "
            "PNEUMOSCOPE_DATA_ROOT to a folder laid out as <root>/train/{NORMAL,PNEUMONIA}."
        )
    samples: dict[str, list[Sample]] = {}
    skipped: list[tuple[Path, str]] = []
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        items: list[Sample] = []
        for label, cls in enumerate(CLASS_NAMES):
            cls_dir = split_dir / cls
            if not cls_dir.is_dir():
                continue
            # By content (a DICOM named IMG0001 counts), a known image name read without opening
            # the file; dot-files (.DS_Store) are not part of a dataset.
            found = scan_folder(cls_dir, recursive=False, hidden=False)
            items.extend(Sample(p, label, split, patient_id(p.name)) for p in found.images)
            skipped.extend(found.skipped)
        if items:
            samples[split] = items
    if not samples:
        raise DatasetError(
            f"No images found under {root}. Expected <root>/{{train,val,test}}/{{NORMAL,PNEUMONIA}}/*.jpeg."
        )
    return DatasetIndex(root, samples, skipped)


def patient_split(
    samples: Sequence[Sample], val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Split by patient group, per class, so no child is on both sides.

    Groups are shuffled with ``seed`` and taken until ``val_fraction`` of the class's images
    is reached, which keeps the class ratio of train in validation.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1). Received: val_fraction={val_fraction!r}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in range(len(CLASS_NAMES)):
        by_group: dict[str, list[Sample]] = {}
        for s in samples:
            if s.label == label:
                by_group.setdefault(s.group, []).append(s)
        groups = sorted(by_group)
        rng.shuffle(groups)
        n_total = sum(len(v) for v in by_group.values())
        target = val_fraction * n_total
        taken = 0
        for g in groups:
            if taken < target:
                val.extend(by_group[g])
                taken += len(by_group[g])
            else:
                train.extend(by_group[g])
    # A patient id could in principle carry both labels; enforce the invariant globally.
    val_groups = {s.group for s in val}
    moved = [s for s in train if s.group in val_groups]
    if moved:
        train = [s for s in train if s.group not in val_groups]
        val.extend(moved)
    return train, val


def class_weights(labels: Iterable[int]) -> dict[int, float]:
    """Balanced weights n / (k * n_c) via scikit-learn (1:3 imbalance -> ~{0: 1.94, 1: 0.67})."""
    from sklearn.utils.class_weight import compute_class_weight

    y = np.asarray(list(labels), dtype=int)
    classes = np.unique(y)
    if len(classes) < 2:
        raise DatasetError(f"Training needs both classes; found only {[CLASS_NAMES[c] for c in classes]}.")
    w = compute_class_weight("balanced", classes=classes, y=y)
    return {int(c): float(v) for c, v in zip(classes, w)}


@dataclasses.dataclass
class ArraySet:
    """Decoded, resized images in memory: x (N, s, s, 3) uint8, y (N,) int, paths."""

    x: np.ndarray
    y: np.ndarray
    paths: list[str]
    errors: list[tuple[str, str]]  # (path, message) of files that were skipped

    def __len__(self) -> int:
        return len(self.y)


def load_arrays(
    samples: Sequence[Sample],
    size: int,
    progress: Callable[[int, int], None] | None = None,
) -> ArraySet:
    """Decode + resize every sample once (uint8 keeps 5,216 images at 64 px in 64 MB).

    Unreadable files are skipped and reported, not fatal: one bad file in a folder of
    thousands must not stop a training run.
    """
    n = len(samples)
    x = np.zeros((n, size, size, 3), dtype=np.uint8)
    y = np.zeros((n,), dtype=np.int32)
    keep = np.zeros((n,), dtype=bool)
    paths, errors = [str(s.path) for s in samples], []
    t0 = time.perf_counter()

    def one(i: int):
        try:
            return resize_for_model(load_image(samples[i].path).array, size), None
        except ImageError as e:
            return None, str(e)

    # JPEG decoding (Pillow) and resizing (OpenCV) release the GIL, so threads use every
    # core: ~2x on this 2-core machine. Chunks keep the order, the progress callback on this
    # thread (it may raise to cancel) and at most one chunk in flight.
    chunk = 256
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            for i, (arr, err) in zip(range(start, stop), pool.map(one, range(start, stop))):
                if err is None:
                    x[i], y[i], keep[i] = arr, samples[i].label, True
                else:
                    log.warning("Skipping %s: %s", paths[i], err)
                    errors.append((paths[i], err))
            if progress is not None:
                progress(stop, n)
    log.info("Decoded %d images at %d px in %.1f s (%d skipped)", n, size, time.perf_counter() - t0, len(errors))
    return ArraySet(x[keep], y[keep], [p for p, k in zip(paths, keep) if k], errors)


def fingerprint(samples: Sequence[Sample]) -> str:
    """Short hash of (relative path, label) pairs: identifies the exact data a model saw."""
    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: str(s.path)):
        h.update(f"{s.split}/{s.class_name}/{s.path.name}\n".encode())
    return h.hexdigest()[:16]


def kagglehub_download() -> Path:
    """Download the Kaggle dataset (needs internet + Kaggle credentials) and return its root."""
    try:
        import kagglehub
    except ImportError as e:  # pragma: no cover - kagglehub is in requirements.txt
        raise DatasetError("kagglehub is not installed: pip install kagglehub") from e
    base = Path(kagglehub.dataset_download("paultimothymooney/chest-xray-pneumonia"))
    for cand in (base / "chest_xray", base / "chest_xray" / "chest_xray", base):
        if (cand / "train").is_dir():
            return cand
    raise DatasetError(f"Downloaded to {base}, but no train/ folder was found inside.")

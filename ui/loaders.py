"""The app's ``st.cache_*`` loaders: every ``st.cache_data`` / ``st.cache_resource`` function is here.

Per-session state (``st.session_state``: the predict page's analysed batch, decoded display
copies, the admin page's progress readers) is kept by the pages and ``ui.inference``, not here.

* ``st.cache_resource``: the Predictor (Keras model + operating point) of one registry
  version, keyed by **registry root + version name**. The ACTIVE pointer itself is read on
  every run, uncached (:func:`active_version`), and its value is passed into the cached
  loader, so activating another version in the admin page or the CLI is picked up on the
  next rerun without restarting the server.
* ``st.cache_data``: JSON reports of a version (metrics, history, card), the dataset index and counts,
  thumbnails / full images, image sizes and Grad-CAM maps of evaluation images.

Version folders are immutable once published (atomic rename), but a name can be deleted
and reused, so JSON loaders also key on the file's modification time.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import streamlit as st

from core.config import default_artifacts_dir, default_data_root
from core.imageio import image_file_check  # the one rule every folder walk uses: content, not name

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
SAMPLES_ROOT = REPO / "samples" / "chest_xray"
SAMPLE_DRAW_ROOT = REPO / "samples" / "test_draw"  # the Predict page's samples (samples/README.md)
SAMPLE_ATTRIBUTION = (
    "Sample X-rays: Kermany, Zhang & Goldbaum (2018), *Labeled Optical Coherence Tomography "
    "(OCT) and Chest X-Ray Images for Classification*, Mendeley Data, doi:10.17632/rscbjbr9sj.2, "
    "licensed CC BY 4.0."
)


def _stamp(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


# --- registry (uncached pointers, cached heavy objects) --------------------------------------
def registry_root() -> str:
    """Absolute registry root ($PNEUMOSCOPE_ARTIFACTS or ./artifacts), as a cache key."""
    return str(Path(default_artifacts_dir()).expanduser().resolve())


def registry(root: str | None = None):
    from core.registry import Registry

    return Registry(root or registry_root())


def active_version(root: str | None = None) -> str | None:
    """Read the ACTIVE pointer on every run (never cached)."""
    return registry(root).active_version()


def versions(root: str | None = None) -> list:
    """All complete versions, oldest first, broken ones included (``VersionInfo.problems``);
    validated once per folder until a file changes (core.registry), uncached here."""
    return registry(root).versions()


def version_problems(version: str, root: str | None = None) -> list[str]:
    """Why ``version`` is broken (one sentence per refused file), [] when it is usable. Uncached
    here: the registry re-checks a folder only when one of its files changed."""
    return registry(root).check_version(version)


@st.cache_resource(show_spinner="Loading the model...", max_entries=2)
def _load_predictor(root: str, version: str, stamp: int):
    del stamp  # cache key only: a version deleted and re-published under the same name reloads
    from core.tfquiet import import_tensorflow

    import_tensorflow()  # first model load of the server: TensorFlow's start-up noise filtered, errors kept
    from core.predict import Predictor

    log.info("Loading model %s from %s", version, root)
    return Predictor.from_registry(registry(root), version)


def load_predictor(root: str, version: str):
    """Predictor for one version; one copy per (root, version) for the whole server."""
    from core.layout import Layout

    return _load_predictor(root, version, _stamp(Layout(root).version_file(version, "model.keras")))


def active_predictor():
    """(version, Predictor) of the active model, or (None, None) when there is none.

    Raises core.registry.RegistryError (or OSError/ValueError for a damaged file) when the
    active version cannot be loaded; pages turn that into st.error.
    """
    root = registry_root()
    version = active_version(root)
    if version is None:
        return None, None
    return version, load_predictor(root, version)


@st.cache_data(show_spinner=False, max_entries=64)
def _read_version_json(root: str, version: str, filename: str, stamp: int) -> dict:
    del stamp  # part of the cache key only
    from core.layout import Layout
    from core.registry import version_json as read

    data, problem = read(Layout(root).version(version), filename)  # core's one tolerant reader
    if problem:  # the admin page lists the version as broken; here the page goes on without it
        log.warning("Cannot use %s of %s: %s", filename, version, problem)
    return data


def version_json(version: str, filename: str, root: str | None = None) -> dict:
    """metrics.json / history.json / card.json / provenance.json of a version: core.registry's
    tolerant reader (bounded, validated), cached here until the file changes; {} when absent or
    refused (the version is then listed as broken, :func:`version_problems`), so a tampered file
    never takes a page down."""
    from core.layout import Layout
    from core.registry import validate_version_name

    root = root or registry_root()
    validate_version_name(version)
    return _read_version_json(root, version, filename, _stamp(Layout(root).version_file(version, filename)))


def metrics(version: str) -> dict:
    return version_json(version, "metrics.json")


def history(version: str) -> dict:
    return version_json(version, "history.json")


def card(version: str) -> dict:
    return version_json(version, "card.json")


def provenance(version: str) -> dict:
    return version_json(version, "provenance.json")


def operating_point(version: str) -> dict:
    return version_json(version, "operating_point.json")


def explain_default(version: str) -> str:
    """The version's stored default heatmap method (config.json), without loading the model."""
    from core.config import EXPLAIN_METHODS, Config

    method = (version_json(version, "config.json") or {}).get("explain_method")
    return method if method in EXPLAIN_METHODS else Config.explain_method


# --- dataset ---------------------------------------------------------------------------------
def data_root() -> Path:
    return Path(default_data_root()).expanduser()


@st.cache_data(show_spinner="Indexing the dataset...", ttl=60, max_entries=4)
def dataset_index(root: str):
    """core.dataset.DatasetIndex of ``root``: one walk of the folder a minute at most, shared by
    the table and the counts (the bar chart and the grid agree). Raises core.dataset.DatasetError
    (not cached) when the folder is unusable."""
    from core.dataset import discover

    return discover(root)


@st.cache_data(show_spinner=False, ttl=60, max_entries=4)
def dataset_table(root: str):
    """DataFrame (split, label, name, path) of every image under ``root``."""
    import pandas as pd

    index = dataset_index(root)
    rows = [
        {"split": s.split, "label": s.class_name, "name": s.path.name, "path": str(s.path.absolute())}
        for split in index.splits
        for s in index.split(split)
    ]
    return pd.DataFrame(rows, columns=["split", "label", "name", "path"])


def dataset_counts(root: str) -> dict[str, dict[str, int]]:
    """{split: {class: images}} of ``root`` (core.dataset.DatasetIndex.counts; splits without
    images are left out), from the same cached index as :func:`dataset_table`."""
    return dataset_index(root).counts()


@st.cache_data(show_spinner="Listing the films...", ttl=60, max_entries=4)
def film_pool(root: str):
    """core.reader_study.film_pool of ``root`` (walks the dataset; cached like the index)."""
    from core import reader_study

    return reader_study.film_pool(root)


def safe_path(root: str | Path, path: str | Path) -> Path:
    """Resolve ``path`` (absolute or relative to ``root``) and refuse anything outside ``root``.

    Raises ValueError when the resolved file escapes the data root (``..``, symlinks).
    """
    base = Path(root).expanduser().resolve()
    p = Path(path)
    p = (p if p.is_absolute() else base / p).resolve()
    if not p.is_relative_to(base):
        raise ValueError(f"Refusing to open a file outside the data folder: {path}")
    return p


@st.cache_data(show_spinner=False, max_entries=1024)
def thumbnail(path: str, max_side: int = 256) -> np.ndarray:
    """Small RGB copy of an image file (raises core.imageio.ImageError)."""
    from core.imageio import load_image, shrink_to

    return shrink_to(load_image(path).array, max_side)


@st.cache_data(show_spinner=False, max_entries=32)
def full_image(path: str) -> tuple[np.ndarray, dict]:
    """(canonical RGB array, info) of an image file (raises core.imageio.ImageError)."""
    from core.imageio import load_image

    d = load_image(path)
    return d.array, d.info


@st.cache_data(show_spinner="Reading image sizes...", ttl=600, max_entries=4)
def image_sizes(root: str, paths: tuple[str, ...]):
    """DataFrame (path, width, height) read from the file headers only (no decoding).

    Files that resolve outside ``root`` are skipped.
    """
    import pandas as pd
    from PIL import Image

    rows = []
    for p in paths:
        try:
            safe_path(root, p)
        except ValueError:
            log.warning("Skipping %s: outside the data folder", p)
            continue
        try:
            with Image.open(p) as im:
                w, h = im.size
        except Exception:  # noqa: BLE001 - DICOM or unreadable: decode properly (slower, rare)
            try:
                info = full_image(p)[1]
                w, h = info["width"], info["height"]
            except Exception as e:  # noqa: BLE001 - one bad file must not break the chart
                log.info("No size for %s: %s", p, e)
                continue
        rows.append({"path": p, "width": int(w), "height": int(h)})
    return pd.DataFrame(rows, columns=["path", "width", "height"])


# --- bundled samples ---------------------------------------------------------------------------
def sample_files(root: Path | None = None) -> list[tuple[str, Path]]:
    """[(label, path)] of the 'Try a sample' films: ``samples/test_draw``, drawn at random from the
    official test split (samples/README.md), in the order ``draw.json`` records (the draw's own
    shuffle: the first film, the picker's default, is random too, never chosen by outcome).

    Entries of draw.json that are not a NORMAL/PNEUMONIA film inside the folder are left out;
    without a readable draw.json the class folders are listed by name."""
    import json

    root = Path(root or SAMPLE_DRAW_ROOT)
    out: list[tuple[str, Path]] = []
    try:
        films = json.loads((root / "draw.json").read_text(encoding="utf-8"))["films"]
        for f in films:
            label, path = f["label"], root / f["file"]
            if label in ("NORMAL", "PNEUMONIA") and path.parent == root / label and not path.is_symlink() \
                    and image_file_check(path) is None:
                out.append((label, path))
        if out:
            return out
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.info("No sample draw list in %s (%s); listing the folders", root, e)
    for cls in ("NORMAL", "PNEUMONIA"):
        d = root / cls
        if d.is_dir():
            out.extend((cls, p) for p in sorted(d.iterdir()) if image_file_check(p) is None)  # by content, as every walk
    return out


# --- evaluation images ------------------------------------------------------------------------
def resolve_eval_path(path: str, data_roots: tuple[str, ...] = ()) -> Path | None:
    """Find an image named in metrics.json on this machine, or None.

    Reports written since issue 15 record paths relative to the data root
    (``test/NORMAL/x.jpeg``): they are resolved against the **configured** data root first
    (never outside it). Older reports hold the path as it was at training time (absolute, or
    relative to that working directory): their trailing ``split/CLASS/file`` part is looked
    for under the configured root, then the path as written, then under ``data_roots`` (e.g.
    the training data root from provenance) and the bundled samples.
    """
    p = Path(str(path).replace("\\", "/"))
    tail = Path(*p.parts[-3:]) if len(p.parts) >= 3 else Path(p.name)
    configured = data_root()
    candidates: list[Path] = []
    if not p.is_absolute():
        try:
            candidates.append(safe_path(configured, p))
        except (ValueError, OSError):
            pass  # "../elsewhere/...": an old report's path relative to its working directory
    candidates.append(configured / tail)
    candidates += [p] if p.is_absolute() else [REPO / p, Path.cwd() / p]
    for root in (*data_roots, str(SAMPLES_ROOT)):
        if root:
            candidates.append(Path(root) / tail)
    for c in candidates:
        try:
            if c.is_file():
                return c
        except OSError:
            continue
    return None


@st.cache_data(show_spinner=False, max_entries=128)
def heatmap_for_file(root: str, version: str, path: str, method: str | None = None) -> tuple[np.ndarray, np.ndarray, float, str]:
    """(image, map, calibrated P(pneumonia), method label) of one evaluation image under
    ``version``; ``method`` None = the model's stored default (core.explain)."""
    from ui.explain_view import method_label

    predictor = load_predictor(root, version)
    pred = predictor.predict_paths([path], with_map=True, method=method)[0]  # map and probability: one pass
    if not pred.ok:
        from core.imageio import ImageError

        raise ImageError(pred.error_code or "unreadable", pred.error or "The image could not be read.")
    return pred.image, pred.heatmap, float(pred.probability), method_label(pred.heatmap_method, pred.heatmap_layer)


# --- PACS (core.pacs): searches and "already analysed" look-ups, cached briefly ------------------
def pacs_settings():
    """``core.dicomweb.PacsSettings`` from ``[pacs]`` in .streamlit/secrets.toml over the
    environment; None when no PACS is configured. Raises ``PacsError`` for a bad setting."""
    from core.dicomweb import PacsSettings

    try:
        secrets = dict(st.secrets.get("pacs") or {})
    except Exception:  # noqa: BLE001 - no secrets.toml: the environment decides
        secrets = {}
    return PacsSettings.from_env(secrets)


@st.cache_data(show_spinner=False, ttl=60, max_entries=32)
def pacs_search(url: str, date_from: str | None, date_to: str | None, patient_id: str | None, accession: str | None,
                modalities: tuple[str, ...]) -> tuple[list[dict], bool]:
    """Studies newest first (core.pacs.worklist). ``url`` keys the cache; the credentials are read
    again here, never passed as (cached) arguments."""
    from core import pacs
    from core.dicomweb import DicomWeb

    settings = pacs_settings()
    if settings is None or settings.url != url:
        return [], False
    return pacs.worklist(DicomWeb(settings), date_from=date_from, date_to=date_to, patient_id=patient_id,
                         accession=accession, modalities=modalities)


@st.cache_data(show_spinner=False, ttl=30, max_entries=64)
def pacs_results(url: str, study_uids: tuple[str, ...]) -> dict[str, list[str]]:
    """{study UID: model versions with a PneumoScope result in it} for one page of the worklist
    (core.pacs.results_in_pacs), with one client (one HTTP session) for the page."""
    from core import pacs
    from core.dicomweb import DicomWeb, PacsError

    settings = pacs_settings()
    if settings is None or settings.url != url:
        return {}
    web = DicomWeb(settings)
    out = {}
    for uid in study_uids:
        try:
            out[uid] = pacs.results_in_pacs(web, uid)
        except PacsError:
            out[uid] = []
    return out

"""Decode and validate uploaded images into one canonical array.

Every image that reaches the model -- a training JPEG, a PNG export, a DICOM from a
PACS -- goes through :func:`decode_image` and comes out the same way: an
``(H, W, 3)`` ``uint8`` array in which the three channels are identical (grayscale
replicated to RGB, which is what the ImageNet backbone expects). Training and
serving both use this module and :func:`resize_for_model`, so the model never sees
pixels prepared in two different ways.

Design decisions (the "why"):

* **Content, not name.** The format is detected from magic bytes; a file name is
  only a hint for DICOM files written without their 128-byte preamble.
* **Refuse early.** Dimensions are checked from the header *before* any pixel is
  decoded (decompression-bomb guard), and only a fixed list of Pillow plugins is
  ever tried (no EPS/Ghostscript or other exotic parsers on user uploads).
* **Typed rejections.** Every failure is an :class:`ImageError` with a stable
  ``code`` for the program and a plain-English ``message`` for the clinician; no
  raw exception escapes :func:`decode_image`. Details go to the log.
* **High bit depth.** Data with more than 8 bits per sample (16-bit PNG/TIFF,
  DICOM) is mapped to 8 bits by the 0.5th/99.5th percentiles of the *actual* data.
  Radiographs are usually 10-14-bit values stored in 16-bit containers, so scaling
  by the container range (0..65535) would give an almost black image, and a plain
  min/max would let a few hot or dead pixels flatten the contrast. DICOM files
  carrying a VOI LUT or a window (centre/width) are displayed with that instead,
  as a PACS viewer would.
* **Transparency** is composited onto black: fully transparent areas then look
  like the (dark) background of a radiograph instead of showing whatever colour
  happened to be stored under the alpha channel.
* **Colour** inputs are converted with ITU-R BT.601 luminance weights (as Pillow
  ``convert("L")`` and OpenCV do). Whether the input really had colour is recorded
  (``info["was_color"]``) and the colour version kept (``original_rgb``) so the
  input guard can flag photographs that are not X-rays.
* **Privacy.** ``info`` only ever holds technical, non-identifying facts; DICOM
  patient/study identifiers are never copied, and file names are not stored.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import re
import stat
import struct
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageOps, features

from core.fsutil import describe_mode

log = logging.getLogger(__name__)

# --- limits (module globals so tests and deployments can adjust them) ----------------
MAX_BYTES = 50 * 1024 * 1024  # larger files are refused before reading/decoding
MAX_PIXELS = 50_000_000  # decompression-bomb guard, checked from the header
MIN_SIDE = 32  # the smaller side must be at least this (VGG needs >= 32 px)
MAX_SIDE = 20_000  # no real radiograph is wider/taller than this
# One upload batch (the app's Predict page): at most this many files and bytes in total.
MAX_UPLOAD_FILES = 50
MAX_UPLOAD_TOTAL_BYTES = 200 * 1024 * 1024

# What one decode may cost (issue 21). Checked from what the format declares, *before* the
# decoder runs; core.decode_pool also runs untrusted decodes in a worker process whose address
# space and CPU time are capped, for whatever a declaration does not reveal.
MAX_DECODE_BYTES = 768 * 2**20  # estimated peak memory of one decode (pixels + conversions)
MAX_DICOM_DATASET_BYTES = 160 * 2**20  # a Deflated DICOM data set, inflated (50 MP RGB is 150 MB)
MAX_JPEG_SCANS = 100  # progressive JPEGs have ~10; each scan re-reads the whole image
# Images whose longer side exceeds this are area-reduced to it before anything else uses them
# (core.decode_pool returns such a working copy; resize_for_model reduces the same way first,
# so a model input is bit-identical whichever path decoded the file).
WORK_MAX_SIDE = 2048
# The limits a decode worker (core.decode_worker) takes from the process that asks: changing
# one of these module globals here (a deployment, a test) changes it for isolated decoding too.
WORKER_SETTINGS = ("MAX_BYTES", "MAX_PIXELS", "MIN_SIDE", "MAX_SIDE", "MAX_DECODE_BYTES",
                   "MAX_DICOM_DATASET_BYTES", "MAX_JPEG_SCANS", "WORK_MAX_SIDE", "COLOUR_TOLERANCE",
                   "PERCENTILE_LOW", "PERCENTILE_HIGH")

# Machine-readable rejection codes used by ImageError.
ERROR_CODES: tuple[str, ...] = (
    "empty",
    "not_found",
    "not_a_file",
    "unreadable",
    "too_large",
    "too_small",
    "decompression_bomb",
    "truncated",
    "corrupt",
    "not_an_image",
    "unsupported",
    "dicom_no_pixels",
    "memory_limit",  # decoding would need (or needed) more memory than allowed
    "time_limit",  # decoding took more CPU / wall time than allowed
    "decoder_failed",  # the decoder process stopped (crashed) on this file
)

# Robust intensity window for >8-bit data (percentiles of the actual pixel values).
PERCENTILE_LOW = 0.5
PERCENTILE_HIGH = 99.5

# Mean per-pixel channel spread (max - min over R, G, B; 0..255 scale) above which an
# image counts as having real colour. JPEG chroma noise on a gray image stays well
# below this; a photograph or a tinted screen capture is far above it.
COLOUR_TOLERANCE = 2.0

# Statistics (percentiles, colour test) are computed on a regular sub-grid of at most
# about this many pixels: exact enough, and fast on 50-megapixel inputs.
_STATS_MAX_PIXELS = 1_000_000

ACCEPTED_FORMATS_TEXT = "PNG, JPEG, DICOM, TIFF, BMP, WebP or GIF"

# Pillow plugins we are willing to run, by sniffed format.
_PIL_FORMATS: dict[str, tuple[str, ...]] = {
    "PNG": ("PNG",),
    "JPEG": ("JPEG", "MPO"),  # phone JPEGs with several pictures open as MPO
    "BMP": ("BMP",),
    "TIFF": ("TIFF",),
    "WEBP": ("WEBP",),
    "GIF": ("GIF",),
    "JPEG2000": ("JPEG2000",),
    "AVIF": ("AVIF",),
}
# Optional Pillow codecs: feature name to check before trying them.
_PIL_OPTIONAL_FEATURE = {"WEBP": "webp", "JPEG2000": "jpg_2000", "AVIF": "avif"}

# Bits per sample for each Pillow mode (reported as info["bit_depth"]).
_MODE_BITS = {
    "1": 1,
    "I;16": 16,
    "I;16L": 16,
    "I;16B": 16,
    "I;16N": 16,
    "I": 32,
    "F": 32,
}

_DICOM_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

# DICOM attributes copied into info["dicom"]. A whitelist, never a blacklist: only
# acquisition/technical facts, nothing that identifies a patient, a study or a site.
_DICOM_SAFE_KEYWORDS = (
    "Modality",
    "BodyPartExamined",
    "ViewPosition",
    "PatientOrientation",  # anatomical directions of rows/columns (e.g. ['P', 'F'])
    "ImageLaterality",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "PresentationLUTShape",
    "LossyImageCompression",
    "Manufacturer",
    "ManufacturerModelName",
    "SOPClassUID",
)


class ImageError(ValueError):
    """A typed, human-readable rejection of an input image.

    ``code`` is machine-readable (one of :data:`ERROR_CODES`); ``message`` is a
    sentence a clinician can act on, and ``str(err) == message``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"ImageError(code={self.code!r}, message={self.message!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the error picklable (e.g. across process pools / caches).
        return (type(self), (self.code, self.message))


@dataclass
class DecodedImage:
    """A decoded, validated image.

    ``array``: ``(H, W, 3)`` ``uint8``, grayscale replicated (R == G == B).
    ``info``: JSON-serialisable, non-identifying facts about the input: format,
    width, height (of ``array``), mode (Pillow mode or DICOM Photometric
    Interpretation), bit_depth, n_bytes, was_color, frames, exif_orientation,
    intensity_scaling (``"none"``, ``"unit_float"``, ``"percentile"``,
    ``"dicom_window"`` or ``"dicom_voi_lut"``), value_range (the raw values mapped
    to black and white, only when this module chose them), and for DICOM a
    whitelisted ``dicom`` dict.
    ``original_rgb``: ``(H, W, 3)`` ``uint8`` colour version, only when the input
    had real colour (``info["was_color"]``); otherwise ``None``.
    """

    array: np.ndarray
    info: dict[str, Any]
    original_rgb: np.ndarray | None = None


# ======================================================================================
# Public API
# ======================================================================================


def load_image(path: str | os.PathLike[str]) -> DecodedImage:
    """Read an image file and decode it with :func:`decode_image`.

    The file is read with :func:`read_file` (regular files only, at most ``MAX_BYTES``).
    """
    p = Path(path)
    return decode_image(read_file(p), filename=p.name)


def is_regular_file(path: str | os.PathLike[str]) -> bool:
    """True for a regular file (after following symlinks); never opens the path."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def require_regular_file(path: str | os.PathLike[str]) -> None:
    """Raise ``ImageError("not_a_file")`` for an existing device, pipe or socket (never opened)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise _reject("not_a_file", f"'{path}' is {describe_mode(mode)}, not a regular file; only image "
                                    "files (or folders of them) are accepted.")


@contextlib.contextmanager
def _open_regular(p: Path, limit: int | None = None):
    """An open binary handle on ``p`` if it is a **regular** file (at most ``limit`` bytes when
    given). Devices, named pipes, sockets and folders are refused (``not_a_file``; a missing file
    is ``not_found``) without being opened; the file is opened non-blocking and checked again on
    the descriptor, so swapping in a FIFO after the check cannot hang the caller either."""
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise _reject("not_found", f"The file '{p}' was not found.") from None
    except (OSError, ValueError) as exc:
        log.warning("Cannot stat %s: %s", p, exc)
        raise _reject("unreadable", f"The file '{p}' could not be read.") from None
    if stat.S_ISDIR(st.st_mode):
        raise _reject("not_a_file", f"The path '{p}' is a folder, not an image file.")
    if not stat.S_ISREG(st.st_mode):
        raise _reject("not_a_file", f"'{p}' is {describe_mode(st.st_mode)}, not a regular file; only image "
                                    "files (or folders of them) are accepted.")
    if limit is not None and st.st_size > limit:
        raise _reject("too_large", _too_many_bytes_message(st.st_size, limit))
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
                     | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise _reject("not_found", f"The file '{p}' was not found.") from None
    except OSError as exc:
        log.warning("Cannot open %s: %s", p, exc)
        raise _reject("unreadable", f"The file '{p}' could not be read.") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):  # replaced between stat() and open()
            raise _reject("not_a_file", f"'{p}' is {describe_mode(st.st_mode)}, not a regular file.")
        yield fh


def _read_bounded(fh, p: Path, n: int) -> bytes:
    try:
        return fh.read(n)
    except OSError as exc:
        log.warning("Cannot read %s: %s", p, exc)
        raise _reject("unreadable", f"The file '{p}' could not be read.") from None


def read_file(path: str | os.PathLike[str], max_bytes: int | None = None) -> bytes:
    """The bytes of a **regular** file, at most ``max_bytes`` (default ``MAX_BYTES``).

    Devices (``/dev/zero``), named pipes, sockets and folders are refused (code
    ``not_a_file``) without reading them: a pipe would block forever and a device can be
    endless. The size is checked before reading and the read itself is bounded, so a file
    that grows meanwhile is still refused (``too_large``).
    """
    p = Path(path)
    limit = MAX_BYTES if max_bytes is None else int(max_bytes)
    with _open_regular(p, limit) as fh:
        data = _read_bounded(fh, p, limit + 1)  # one byte more than allowed: a growing file is caught
    if len(data) > limit:
        raise _reject("too_large", _too_many_bytes_message(len(data), limit))
    return data


# --- what counts as an image input: content, not the name (issue 22) --------------------------
# The bytes a folder walk reads of each file to tell an image from anything else: every magic
# number _sniff knows lies in the first 132 bytes (DICOM's "DICM" at 128); the rest lets the
# text/PDF description of a skipped file be right.
SNIFF_BYTES = 4096
# File name endings of the formats decode_image reads, per sniffed format: the one list for file
# pickers and for folder listings that trust a name (core.dataset, the bundled samples). A name is
# only ever a shortcut: a file without one of these endings is still read when its content is an
# image (a DICOM exported from PACS as IMG0001), see image_file_check / scan_folder.
FORMAT_SUFFIXES: dict[str, tuple[str, ...]] = {
    "PNG": (".png",),
    "JPEG": (".jpeg", ".jpg", ".jpe", ".jfif"),
    "DICOM": (".dcm", ".dicom", ".dic"),
    "TIFF": (".tif", ".tiff"),
    "BMP": (".bmp",),
    "WEBP": (".webp",),
    "GIF": (".gif",),
    "JPEG2000": (".jp2", ".j2k", ".j2c", ".jpx"),
    "AVIF": (".avif",),
}
IMAGE_SUFFIXES: frozenset[str] = frozenset(s for suffixes in FORMAT_SUFFIXES.values() for s in suffixes)


def sniff_format(head: bytes) -> str | None:
    """The format the bytes ``head`` (the start of a file; ``SNIFF_BYTES`` are plenty) open
    like, from content only: a key of ``FORMAT_SUFFIXES``, ``"HEIC"`` (recognised, refused by
    the decoder with its reason) or ``None`` when no decoder here would take the file. A DICOM
    data set written without its 128-byte preamble counts by the same rule that
    ``decode_image`` uses for it."""
    head = bytes(head[:SNIFF_BYTES])
    kind = _sniff(head)
    if kind is None and _raw_dicom_start(head):
        kind = "DICOM"
    return kind


def describe_content(head: bytes) -> str:
    """What the start of a file that is not an image looks like, in a few words: 'empty',
    'text', 'a PDF document', 'a ZIP archive or an office document', 'unrecognised data'."""
    if not head:
        return "empty"
    what = _content_kind(bytes(head[:SNIFF_BYTES]))
    return what or "unrecognised data"


def read_head(path: str | os.PathLike[str], n: int = SNIFF_BYTES) -> bytes:
    """The first ``n`` bytes of a **regular** file (fewer when it is shorter), with the same
    refusals as :func:`read_file`: this never blocks and never reads an endless device."""
    p = Path(path)
    with _open_regular(p) as fh:
        return _read_bounded(fh, p, max(0, int(n)))


def image_file_check(path: str | os.PathLike[str]) -> str | None:
    """``None`` when a folder walk should analyse ``path``, else why it is skipped (a few words).

    Analysed: a regular file whose content is an image (:func:`sniff_format` on its first
    ``SNIFF_BYTES``), or whose name ends like one (``IMAGE_SUFFIXES``; the decoder then says
    what is wrong with it, so a damaged ``x.jpeg`` is reported, not dropped). Such a name is
    trusted without reading the file, so listing a dataset of ``.jpeg`` files reads nothing.
    Skipped: anything else, with the reason: 'not an image (text)', 'not an image (empty)',
    'not a regular file (a named pipe (FIFO))', 'could not be read'. Devices and pipes are never
    opened.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except (OSError, ValueError):
        return "not a regular file (a broken link)" if os.path.islink(p) else "could not be read"
    if not stat.S_ISREG(st.st_mode):
        return f"not a regular file ({describe_mode(st.st_mode)})"
    if p.suffix.lower() in IMAGE_SUFFIXES:
        return None
    try:
        head = read_head(p)
    except ImageError as e:
        return "could not be read" if e.code == "unreadable" else "not a regular file"
    if sniff_format(head) is not None:
        return None
    return f"not an image ({describe_content(head)})"


@dataclass
class FolderScan:
    """What a folder walk found: ``images`` to analyse (sorted) and ``skipped`` entries with
    the reason each is left out (``(path, reason)``, sorted): never silently dropped."""

    images: list[Path]
    skipped: list[tuple[Path, str]]


def scan_folder(folder: str | os.PathLike[str], recursive: bool = True, hidden: bool = True) -> FolderScan:
    """Sort the files under ``folder`` (recursively by default) into images and skipped entries
    by :func:`image_file_check`. ``hidden=False`` leaves dot-files (``.DS_Store``) out of both
    lists, as a dataset listing does. Folders are walked, never opened as files; symbolic links
    to folders are not followed."""
    root = Path(folder)
    images: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    entries = root.rglob("*") if recursive else root.iterdir()
    for p in sorted(entries):
        if not hidden and p.name.startswith("."):
            continue
        try:
            if p.is_dir():
                continue
        except OSError:
            pass
        why = image_file_check(p)
        if why is None:
            images.append(p)
        else:
            skipped.append((p, why))
    return FolderScan(images, skipped)


def decode_image(data: bytes, filename: str | None = None, max_side: int | None = None) -> DecodedImage:
    """Decode image bytes (PNG, JPEG, DICOM, TIFF, BMP, WebP, GIF, ...) and validate them.

    ``filename`` is only a hint (for DICOM files without preamble); the format is
    detected from the content. Raises :class:`ImageError` for every bad input,
    never another exception (except ``TypeError`` if ``data`` is not bytes-like).
    ``max_side``: area-reduce the result so its longer side is at most this (``info`` keeps
    the decoded size and records ``reduced_to``); ``None`` keeps full resolution.

    This runs the decoders **in this process**: use it for files you trust (the configured
    dataset). Bytes from users, the CLI's inputs or a PACS go through
    ``core.decode_pool.decode_untrusted``, which runs this function in a worker process with
    capped memory and CPU time.
    """
    data = checked_input(data)
    n_bytes = len(data)

    try:
        return _decode(data, filename, max_side)
    except ImageError:
        raise
    except MemoryError:
        log.warning("Out of memory while decoding a %d-byte image", n_bytes)
        raise memory_limit_error() from None
    except Exception as exc:  # the promise: no raw exception leaves this function
        text = str(exc).lower()
        if "insufficient memory" in text or "cannot allocate" in text or "failed to allocate" in text \
                or "out of memory" in text:  # C decoders (OpenCV, OpenJPEG) that ran out of memory
            log.warning("A decoder ran out of memory on a %d-byte image: %s", n_bytes, exc)
            raise memory_limit_error() from None
        log.exception("Unexpected error while decoding a %d-byte image", n_bytes)
        raise ImageError(
            "corrupt",
            "The file could not be decoded; it may be damaged or use an unusual "
            "variant of its format.",
        ) from exc


def checked_input(data: bytes | bytearray | memoryview) -> bytes:
    """``data`` as bytes, refused when empty or over ``MAX_BYTES`` (no decoder needed for that);
    ``TypeError`` when it is not bytes-like. The first step of every decode, in-process or not."""
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise TypeError(f"decode_image expects bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise _reject("empty", "The file is empty (0 bytes).")
    if len(data) > MAX_BYTES:
        raise _reject("too_large", _too_many_bytes_message(len(data)))
    return data


def to_grayscale_rgb(arr: np.ndarray) -> np.ndarray:
    """Convert any image array to the canonical ``(H, W, 3)`` ``uint8`` gray layout.

    Accepts ``(H, W)``, ``(H, W, 1)``, ``(H, W, 2)`` (gray + alpha), ``(H, W, 3)``
    (RGB) and ``(H, W, 4)`` (RGBA). Value rules by dtype:

    * ``uint8``: used as is; ``bool``: False/True -> 0/255.
    * any other integer type (``uint16``, ``int16``, ``int32`` ...): treated as
      high-bit-depth data and scaled by its 0.5/99.5 percentiles.
    * float: ``[0, 1]`` -> ``x * 255``; ``[0, 255]`` -> as is; otherwise percentiles.
      NaN/inf become black.

    Alpha is composited onto black; colour is reduced with BT.601 luminance weights.
    """
    gray, _rgb, _scaling, _range = _prepare_pixels(np.asarray(arr))
    return _replicate(gray)


def resize_for_model(arr: np.ndarray, size: int) -> np.ndarray:
    """Resize an ``(H, W, 3)`` ``uint8`` image to ``(size, size, 3)`` ``uint8``.

    A plain resize without keeping the aspect ratio, like Keras'
    ``image_dataset_from_directory``. An image whose longer side exceeds ``WORK_MAX_SIDE`` is
    first area-reduced to it (aspect kept), exactly as the working copy that
    ``core.decode_pool`` returns, so both give the same model input. ``cv2.INTER_AREA`` when any side shrinks
    (averages pixels, so no aliasing/moire on 2000 px -> 64 px), ``cv2.INTER_LINEAR``
    when enlarging. Used for both the training set and serving, and deterministic
    (same input, same output), so both see identical pixels.
    """
    a = np.asarray(arr)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ValueError(
            f"resize_for_model expects an (H, W, 3) uint8 array, got shape {a.shape} "
            f"dtype {a.dtype}"
        )
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    size = int(size)
    height, width = a.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"cannot resize an empty image of shape {a.shape}")
    if max(height, width) > WORK_MAX_SIDE:
        # the same first reduction as the working copy of core.decode_pool: a model input is
        # then bit-identical whether the full image or that copy is given (INTER_AREA twice)
        a = shrink_to(a, WORK_MAX_SIDE)
        height, width = a.shape[:2]
    if (height, width) == (size, size):
        return a.copy()
    shrinking = size < height or size < width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    out = cv2.resize(np.ascontiguousarray(a), (size, size), interpolation=interpolation)
    return np.ascontiguousarray(out, dtype=np.uint8)


def shrink_to(array: np.ndarray, max_side: int) -> np.ndarray:
    """``array`` area-reduced (``cv2.INTER_AREA``, aspect ratio kept) so that its longer side
    is at most ``max_side``; an array that already fits is returned as it is (not copied).

    The one "shrink the longest side" of the code base: thumbnails, display copies and the
    guard's statistics all use it.
    """
    if isinstance(max_side, bool) or not isinstance(max_side, (int, float, np.number)) or max_side < 1:
        raise ValueError(f"max_side must be a positive number, got {max_side!r}")
    h, w = array.shape[:2]
    if max(h, w) <= max_side:
        return array
    s = max_side / max(h, w)
    return cv2.resize(np.ascontiguousarray(array), (max(1, round(w * s)), max(1, round(h * s))),
                      interpolation=cv2.INTER_AREA)


# ======================================================================================
# Dispatch
# ======================================================================================


def _decode(data: bytes, filename: str | None, max_side: int | None = None) -> DecodedImage:
    kind = _sniff(data)
    if kind == "DICOM":
        _check_dicom_inflation(data)
        return _decode_dicom(_read_dicom(data), len(data), max_side)
    if kind in ("HEIC",):
        raise _reject(
            "unsupported",
            "HEIC/HEIF photos (the iPhone default) are not supported. Please upload the "
            f"image as {ACCEPTED_FORMATS_TEXT}.",
        )
    if kind in _PIL_FORMATS:
        feature = _PIL_OPTIONAL_FEATURE.get(kind)
        if feature is not None and not _pil_feature(feature):
            raise _reject(
                "unsupported",
                f"{kind} images cannot be decoded on this server. Please upload the image "
                f"as {ACCEPTED_FORMATS_TEXT}.",
            )
        return _decode_raster(data, kind, max_side)
    ds = _try_raw_dicom(data, filename)
    if ds is not None:
        return _decode_dicom(ds, len(data), max_side)
    raise _not_an_image(data)


def _sniff(data: bytes) -> str | None:
    """Identify the container from magic bytes (never from the file name)."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "DICOM"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n") or data.startswith(b"\xff\x4f\xff\x51"):
        return "JPEG2000"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"):
            return "HEIC"
    # BMP last: a two-byte magic is weak, and text starting with "BM" must still be
    # reported as text when Pillow refuses it (see _open_failure).
    if data[:2] == b"BM" and len(data) >= 26:
        return "BMP"
    return None


def _pil_feature(name: str) -> bool:
    try:
        return bool(features.check(name))
    except Exception:  # unknown feature name on an old/new Pillow
        return False


# ======================================================================================
# Raster formats via Pillow
# ======================================================================================


def _decode_raster(data: bytes, kind: str, max_side: int | None = None) -> DecodedImage:
    try:
        img = Image.open(io.BytesIO(data), formats=list(_PIL_FORMATS[kind]))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard (above 2x its MAX_IMAGE_PIXELS) fires inside open().
        log.info("Pillow refused a %s as a decompression bomb: %s", kind, exc)
        raise ImageError(
            "decompression_bomb",
            f"The image declares an enormous size (over {MAX_PIXELS / 1e6:g} megapixels) "
            "and was not decoded, to protect the server.",
        ) from None
    except Exception as exc:
        raise _open_failure(exc, data, kind) from None

    try:
        width, height = img.size
        _check_dimensions(width, height)  # header only: no pixel decoded yet
        fmt = str(img.format or kind)
        _check_raster_budget(img, data, kind)  # still header only
        if _deep_colour(img, data, kind):
            # Pillow keeps only the high byte of 16-bit colour samples (a 10-bit X-ray saved
            # as 16-bit RGB would come out nearly black and uniform): decode at full depth.
            orientation, n_frames, mode = _exif_orientation(img), _frame_count(img), f"{img.mode};16"
            img.close()
            pixels = _decode_deep_colour(data, fmt, (height, width), orientation)
            return _raster_result(pixels, data, fmt, mode, 16, n_frames, orientation, max_side, bgr=True)
        pixels, fmt, mode, orientation, n_frames = _decode_pil(img, fmt)
    finally:
        img.close()  # frees Pillow's copy of the pixels before the arrays below are built
    return _raster_result(pixels, data, fmt, mode, _MODE_BITS.get(mode, 8), n_frames, orientation, max_side)


def _decode_pil(img: Image.Image, fmt: str) -> tuple[np.ndarray, str, str, int, int]:
    """Pixels of an opened Pillow image -> (array, format, mode, EXIF orientation, frames)."""
    try:
        img.load()  # decodes the pixels; truncation surfaces here
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(
            "decompression_bomb",
            "The image expands to far more data than its size suggests and was not "
            "decoded, to protect the server.",
        ) from None
    except Exception as exc:
        raise _load_failure(exc, fmt) from None

    orientation = _exif_orientation(img)
    work: Image.Image = img
    if orientation in range(2, 9):
        try:
            work = ImageOps.exif_transpose(img)
        except Exception as exc:  # a broken EXIF block must not reject the image
            log.warning("Ignoring EXIF orientation %s: %s", orientation, exc)
            orientation = 1

    mode = img.mode
    pixels = _pil_to_numpy(work)
    n_frames = _frame_count(img)  # last: counting may seek through the file
    if work is not img:
        work.close()
    return pixels, fmt, mode, orientation, n_frames


def _raster_result(pixels: np.ndarray, data: bytes, fmt: str, mode: str, bits: int, n_frames: int,
                   orientation: int, max_side: int | None = None, bgr: bool = False) -> DecodedImage:
    out_height, out_width = int(pixels.shape[0]), int(pixels.shape[1])
    info: dict[str, Any] = {}
    _nonfinite_info(pixels, info)
    gray, rgb, scaling, value_range = _prepare_pixels(pixels, bgr=bgr)
    del pixels
    was_color = rgb is not None and _has_colour(rgb)
    info = {
        "format": fmt,
        "width": out_width,
        "height": out_height,
        "mode": mode,
        "bit_depth": bits,
        "n_bytes": len(data),
        "was_color": bool(was_color),
        "frames": n_frames,
        "exif_orientation": int(orientation),
        "intensity_scaling": scaling,
        **info,
    }
    if value_range is not None:
        info["value_range"] = value_range
    log.debug("Decoded %s %dx%d mode=%s", fmt, out_width, out_height, mode)
    return _result(gray, rgb if was_color else None, info, max_side)


def _deep_colour(img: Image.Image, data: bytes, kind: str) -> bool:
    """True for colour (or gray + alpha) images with 16-bit samples, which Pillow truncates."""
    if kind == "PNG":
        # IHDR is always the first chunk: bit depth at byte 24, colour type at byte 25
        # (2 RGB, 4 gray + alpha, 6 RGBA; 0 gray and 3 palette are decoded fine by Pillow).
        return len(data) > 25 and data[12:16] == b"IHDR" and data[24] == 16 and data[25] in (2, 4, 6)
    if kind == "TIFF" and img.mode in ("RGB", "RGBA", "LA", "RGBX"):
        try:
            bits = img.tag_v2.get(258)
            bits = bits if isinstance(bits, (tuple, list)) else (bits,)
            return any(int(b or 0) > 8 for b in bits)
        except Exception as exc:  # damaged tag: let Pillow decode it as before
            log.debug("Unreadable TIFF BitsPerSample: %s", exc)
    return False


def _decode_deep_colour(data: bytes, fmt: str, shape: tuple[int, int], orientation: int) -> np.ndarray:
    """16-bit colour PNG/TIFF -> (H, W, C) uint16 RGB(A) at full depth, via OpenCV."""
    try:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        log.info("OpenCV could not decode a 16-bit %s: %s", fmt, exc)
        arr = None
    if arr is None or arr.shape[:2] != tuple(shape):
        raise ImageError(
            "corrupt",
            f"The {fmt} file is damaged or incomplete and its 16-bit colour pixels could not be decoded.",
        )
    # OpenCV gives BGR(A); the channels are reordered by views, not copies (a 50-megapixel
    # 16-bit RGBA image is 400 MB): _prepare_pixels reads the planes it needs from them.
    return _orient(arr, orientation)


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (2..8) to an array, as ``ImageOps.exif_transpose`` does."""
    ops = {
        2: lambda x: x[:, ::-1],
        3: lambda x: x[::-1, ::-1],
        4: lambda x: x[::-1],
        5: lambda x: x.swapaxes(0, 1),
        6: lambda x: np.rot90(x, -1),
        7: lambda x: x[::-1, ::-1].swapaxes(0, 1),
        8: lambda x: np.rot90(x, 1),
    }
    return ops[orientation](a) if orientation in ops else a


def _pil_to_numpy(img: Image.Image) -> np.ndarray:
    """Pillow image -> numpy array in a layout _prepare_pixels understands."""
    mode = img.mode
    if mode in ("L", "LA", "RGB", "RGBA") or (mode in _MODE_BITS and mode != "1"):
        # 8-bit layouts, and 16/32-bit integer or float gray, convert losslessly.
        return np.asarray(img)
    if mode == "1":
        return np.asarray(img.convert("L"))
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in img.info
        return np.asarray(img.convert("RGBA" if has_alpha else "RGB"))
    if mode == "La":  # premultiplied alpha
        return np.asarray(img.convert("LA"))
    if mode == "RGBa":
        return np.asarray(img.convert("RGBA"))
    # CMYK, YCbCr, LAB, HSV, RGBX ...: Pillow knows how to reach RGB.
    return np.asarray(img.convert("RGB"))


def _frame_count(img: Image.Image) -> int:
    """Frames/pages in the file (only the first is used); 1 if unknown."""
    try:
        return max(1, int(getattr(img, "n_frames", 1) or 1))
    except Exception as exc:  # e.g. a damaged second TIFF page
        log.debug("Cannot count frames: %s", exc)
        return 1


def _exif_orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(0x0112, 1)
        return int(value) if value else 1
    except Exception as exc:
        log.debug("Unreadable EXIF block: %s", exc)
        return 1


def _open_failure(exc: BaseException, data: bytes, kind: str) -> ImageError:
    """Map an exception from Image.open on content whose magic matched ``kind``."""
    log.info(
        "Pillow could not open a %s (%d bytes): %s: %s", kind, len(data), type(exc).__name__, exc
    )
    if kind == "BMP" and _looks_like_text(data):
        return _not_an_image(data)
    text = str(exc).lower()
    if _is_truncation(exc) or len(data) < 1024:
        # The signature is right but even the header is incomplete.
        return ImageError(
            "truncated",
            f"The {kind} file is incomplete (it seems to have been cut off during upload "
            "or copying). Please upload the complete file again.",
        )
    if "decompressed data too large" in text:
        return ImageError(
            "decompression_bomb",
            f"The {kind} file contains a block that expands to an excessive size and was "
            "not decoded, to protect the server.",
        )
    return ImageError(
        "corrupt",
        f"The file looks like a {kind} image but its header is damaged, so it cannot be "
        "opened.",
    )


def _load_failure(exc: BaseException, fmt: str) -> ImageError:
    log.info("Pillow could not decode %s pixels: %s: %s", fmt, type(exc).__name__, exc)
    if _is_truncation(exc):
        return ImageError(
            "truncated",
            f"The {fmt} file is incomplete (it seems to have been cut off during upload or "
            "copying). Please upload the complete file again.",
        )
    return ImageError(
        "corrupt",
        f"The {fmt} file is damaged and its pixels could not be decoded.",
    )


def _is_truncation(exc: BaseException) -> bool:
    if isinstance(exc, (EOFError, struct.error)):
        return True
    text = str(exc).lower()
    markers = ("truncated", "broken data stream", "end of file", "premature end")
    return any(m in text for m in markers)


# ======================================================================================
# DICOM via pydicom
# ======================================================================================


def _read_dicom(data: bytes) -> Any:
    import pydicom  # imported lazily: keeps `import core.imageio` light

    try:
        return pydicom.dcmread(io.BytesIO(data), force=True)
    except MemoryError:
        raise memory_limit_error() from None
    except (EOFError, struct.error) as exc:
        log.info("Truncated DICOM header: %s", exc)
        raise ImageError(
            "truncated",
            "The DICOM file is incomplete (it seems to have been cut off). Please upload "
            "the complete file again.",
        ) from None
    except Exception as exc:
        log.info("Unreadable DICOM: %s: %s", type(exc).__name__, exc)
        raise ImageError("corrupt", "The DICOM file is damaged and could not be read.") from None


def _try_raw_dicom(data: bytes, filename: str | None) -> Any | None:
    """Parse a DICOM data set written without the 128-byte preamble + 'DICM'.

    Only tried when the data starts like a group 0002/0008 element or the name
    ends in .dcm/.dicom, and only accepted if image-related elements are found,
    because ``force=True`` happily "parses" arbitrary bytes.
    """
    named = bool(filename) and str(filename).lower().endswith(FORMAT_SUFFIXES["DICOM"])
    if not (named or _raw_dicom_start(data)):
        return None
    import pydicom

    _check_dicom_inflation(data)  # a meta group without preamble may still say "deflated"

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        plausible = any(
            k in ds for k in (*_DICOM_PIXEL_KEYWORDS, "Rows", "SOPClassUID", "Modality")
        )
    except Exception as exc:
        log.debug("Not a raw DICOM data set: %s", exc)
        return None
    return ds if plausible else None


def _raw_dicom_start(data: bytes) -> bool:
    """The data starts like a DICOM data set without preamble: a group 0002 (file meta) or 0008
    (identifying) element, little endian. The decoder then checks that image elements follow."""
    return data[:2] in (b"\x02\x00", b"\x08\x00")


def _decode_dicom(ds: Any, n_bytes: int, max_side: int | None = None) -> DecodedImage:
    from pydicom.pixels import apply_color_lut, pixel_array

    if not any(k in ds for k in _DICOM_PIXEL_KEYWORDS):
        raise _reject(
            "dicom_no_pixels",
            "The DICOM file contains no image (no Pixel Data); it may be a report, "
            "a structured document or a series index rather than an X-ray.",
        )
    rows, cols = _dicom_int(ds, "Rows"), _dicom_int(ds, "Columns")
    if rows is None or cols is None:
        raise _reject(
            "corrupt",
            "The DICOM file has pixel data but no image size (Rows/Columns), so it "
            "cannot be displayed.",
        )
    _check_dimensions(cols, rows)  # from the header, before decoding any pixel

    tsyntax = _ensure_transfer_syntax(ds)
    _check_dicom_decodable(tsyntax)
    frames = _dicom_int(ds, "NumberOfFrames") or 1
    samples = _dicom_int(ds, "SamplesPerPixel") or 1
    bits_alloc = _dicom_int(ds, "BitsAllocated") or 8
    if samples not in (1, 3, 4) or bits_alloc not in (1, 8, 16, 32, 64) or frames < 1:
        raise _reject("corrupt", f"The DICOM header declares {samples} samples per pixel, {bits_alloc} bits "
                                 f"allocated and {frames} frames, which is not a valid image; it was not decoded.")
    photometric = str(ds.get("PhotometricInterpretation", "") or "MONOCHROME2").strip().upper()
    _check_budget(rows * cols, dicom_bytes_per_pixel(samples, bits_alloc, bool(tsyntax.is_compressed),
                                                     str(tsyntax).startswith("1.2.840.10008.1.2.4.9"),
                                                     palette=photometric == "PALETTE COLOR"), "DICOM")
    if tsyntax.is_compressed and not tsyntax.is_deflated:
        _check_dicom_frame(ds, rows, cols, samples, frames)

    try:
        # index=0 decodes only the first frame of a multi-frame object.
        arr = pixel_array(ds, index=0)
    except NotImplementedError as exc:
        log.info("No DICOM decoder: %s", exc)
        raise _unsupported_tsyntax(tsyntax) from None
    except ValueError as exc:
        log.info("DICOM pixel data rejected: %s", exc)
        if "less than expected" in str(exc):
            raise ImageError(
                "truncated",
                "The DICOM file's image data is incomplete (the file seems to have been "
                "cut off). Please upload the complete file again.",
            ) from None
        raise ImageError(
            "corrupt", "The DICOM file's image data is inconsistent and cannot be decoded."
        ) from None
    except MemoryError:
        raise memory_limit_error() from None
    except Exception as exc:
        log.info("DICOM pixel decoding failed: %s: %s", type(exc).__name__, exc)
        raise _pixel_failure(exc, tsyntax) from None

    value_range: list[float] | None = None
    rgb: np.ndarray | None = None
    nonfinite: dict[str, Any] = {}
    _nonfinite_info(arr, nonfinite)  # float pixel data may carry NaN/inf (core.guard refuses many)
    if photometric in ("MONOCHROME1", "MONOCHROME2") and arr.ndim == 2:
        gray, scaling, value_range = _dicom_mono_to_uint8(arr, ds)
        if photometric == "MONOCHROME1":
            # MONOCHROME1: the lowest value is displayed white; invert after the VOI
            # transform so the canonical array always means "bright = dense".
            gray = 255 - gray
    else:
        if photometric == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)
            if arr.dtype == np.uint16:  # 16-bit palette entries span 0..65535
                arr = (arr >> 8).astype(np.uint8)
        # pydicom already converted YBR_* to RGB (as_rgb default).
        gray, rgb, scaling, value_range = _prepare_pixels(arr)

    was_color = rgb is not None and _has_colour(rgb)
    info: dict[str, Any] = {
        "format": "DICOM",
        "width": int(gray.shape[1]),
        "height": int(gray.shape[0]),
        "mode": photometric,
        "bit_depth": int(_dicom_int(ds, "BitsStored") or bits_alloc),
        "n_bytes": int(n_bytes),
        "was_color": bool(was_color),
        "frames": int(frames),
        "exif_orientation": 1,
        "intensity_scaling": scaling,
        "dicom": _dicom_safe_tags(ds, tsyntax),
        **nonfinite,
    }
    if value_range is not None:
        info["value_range"] = value_range
    return _result(gray, rgb if was_color else None, info, max_side)


def _ensure_transfer_syntax(ds: Any) -> Any:
    """Return the transfer syntax, inferring it for data sets without file meta."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import (
        ExplicitVRBigEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    )

    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = FileMetaDataset()
        ds.file_meta = meta
    if "TransferSyntaxUID" not in meta:
        # Preamble-less files often lack the meta group; pydicom recorded how it
        # actually parsed the data set, which is what the pixel decoder needs.
        implicit, little = getattr(ds, "original_encoding", (True, True))
        if implicit:
            meta.TransferSyntaxUID = ImplicitVRLittleEndian
        else:
            meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    return meta.TransferSyntaxUID


def _check_dicom_decodable(tsyntax: Any) -> None:
    from pydicom.pixels import get_decoder

    if not tsyntax.is_transfer_syntax:
        raise _unsupported_tsyntax(tsyntax)
    if not tsyntax.is_compressed:
        return
    try:
        available = bool(get_decoder(tsyntax).is_available)
    except NotImplementedError:
        available = False
    if not available:
        raise _unsupported_tsyntax(tsyntax)


def _tsyntax_label(tsyntax: Any) -> str:
    name = getattr(tsyntax, "name", "") or str(tsyntax)
    return f"'{name}' ({tsyntax})" if name != str(tsyntax) else f"'{tsyntax}'"


# The decoder packages requirements.txt installs for each compressed syntax (README: licences).
_LIBJPEG = "the pylibjpeg and pylibjpeg-libjpeg packages"
_OPENJPEG = "the pylibjpeg and pylibjpeg-openjpeg packages"
_DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.50": _LIBJPEG + " (or Pillow)",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51": _LIBJPEG,  # JPEG Extended (12-bit)
    "1.2.840.10008.1.2.4.57": _LIBJPEG,  # JPEG Lossless
    "1.2.840.10008.1.2.4.70": _LIBJPEG,  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": "the pyjpegls package (or " + _LIBJPEG + ")",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "the pyjpegls package (or " + _LIBJPEG + ")",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": _OPENJPEG + " (or Pillow with OpenJPEG)",
    "1.2.840.10008.1.2.4.91": _OPENJPEG + " (or Pillow with OpenJPEG)",
    "1.2.840.10008.1.2.4.201": _OPENJPEG, "1.2.840.10008.1.2.4.202": _OPENJPEG,
    "1.2.840.10008.1.2.4.203": _OPENJPEG,  # HTJ2K
}


def dicom_decoder_needs(tsyntax: Any) -> str:
    """What would decode ``tsyntax``, in words: the package requirements.txt installs for it, else
    the decoder plugins pydicom knows for it that are not installed here."""
    from pydicom.pixels import get_decoder

    if str(tsyntax) in _DECODER_PACKAGES:
        return _DECODER_PACKAGES[str(tsyntax)] + " (pip install -r requirements.txt)"
    try:
        missing = list(get_decoder(tsyntax).missing_dependencies)
    except (NotImplementedError, ValueError):
        return "a decoder that pydicom does not provide"
    needs = [str(m).split(" - requires ", 1)[-1] for m in missing]
    return " or ".join(needs) if needs else "a decoder plugin that supports this variant"


def _unsupported_tsyntax(tsyntax: Any, detail: str = "") -> ImageError:
    log.info("Unsupported DICOM transfer syntax %s%s", tsyntax, f" ({detail})" if detail else "")
    return ImageError(
        "unsupported",
        f"unsupported: the DICOM file is encoded as {_tsyntax_label(tsyntax)}{detail}, which this server cannot "
        f"decode; it needs {dicom_decoder_needs(tsyntax)}. Ask the administrator to install it, or export the "
        "film uncompressed (or as PNG/JPEG) and upload it again.",
    )


# What pydicom's plugins say when a file is of a variant they do not implement (as opposed to
# data they could read but found damaged).
_NOT_IMPLEMENTED_HINTS = ("does not support", "not supported", "unsupported", "not implemented",
                          "no decoder", "no plugin", "is not available")


def _pixel_failure(exc: BaseException, tsyntax: Any) -> ImageError:
    """The true reason when every available decoder failed: ``unsupported`` (with what it needs)
    when each one said it does not implement this variant, else ``corrupt`` (a capable decoder
    rejected the data)."""
    text = str(exc)
    # pydicom: "Unable to decode as exceptions were raised by all available plugins:\n  name: msg"
    reasons = [ln.split(":", 1)[1].strip().lower() for ln in text.splitlines()[1:] if ":" in ln]
    if isinstance(exc, NotImplementedError) or (
            reasons and all(any(h in r for h in _NOT_IMPLEMENTED_HINTS) for r in reasons)):
        detail = ""
        bits = re.search(r"(\d+)-bit precision", text)
        if bits:
            detail = f" with {bits.group(1)}-bit samples"
        return _unsupported_tsyntax(tsyntax, detail)
    if any("memory" in r or "alloc" in r for r in reasons):
        return memory_limit_error()
    return ImageError("corrupt", f"The DICOM file's image data is damaged: the decoder for {_tsyntax_label(tsyntax)} "
                                 "could not read it.")


def _dicom_mono_to_uint8(
    arr: np.ndarray, ds: Any
) -> tuple[np.ndarray, str, list[float] | None]:
    """Modality LUT -> VOI LUT / window (else robust range) -> uint8 (0 = black).

    Works on blocks of rows: pydicom's LUT functions return float64, so the whole image in one
    piece would cost 8 bytes per pixel per step (a 50-megapixel film: 400 MB each). Every step
    is element-wise, so blocks give exactly the whole-image result.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    rows = _block_rows(arr, itemsize=8)
    blocks = [slice(start, start + rows) for start in range(0, arr.shape[0], rows)]

    def values(sl: slice) -> np.ndarray:  # raw stored values -> e.g. Hounsfield/OD units
        return apply_modality_lut(arr[sl], ds)

    def scaled(fn, black: float, white: float) -> np.ndarray:
        out = np.empty(arr.shape, np.uint8)
        for sl in blocks:
            out[sl] = _scale_to_uint8(fn(sl), black, white)
        return out

    if _has_voi_lut_sequence(ds):
        try:
            def voi(sl: slice) -> np.ndarray:
                return apply_voi_lut(values(sl), ds, prefer_lut=True)

            ends = [(float(np.min(v)), float(np.max(v))) for v in map(voi, blocks)]  # one pass for both
            return scaled(voi, min(e[0] for e in ends), max(e[1] for e in ends)), "dicom_voi_lut", None
        except Exception as exc:
            log.warning("Ignoring unusable VOI LUT: %s", exc)

    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        try:
            def window(sl: slice) -> np.ndarray:
                with np.errstate(over="ignore"):
                    return apply_voi_lut(values(sl), ds, prefer_lut=False)

            with np.errstate(over="ignore"):
                # pydicom maps the window onto [y_min, y_max] (from BitsStored and the
                # rescale). Probing it with -huge/+huge gives exactly those ends for
                # LINEAR, LINEAR_EXACT and SIGMOID, without re-implementing the rules.
                ends = apply_voi_lut(np.array([-1e30, 1e30]), ds, prefer_lut=False)
            black, white = float(ends[0]), float(ends[1])
            return scaled(window, black, white), "dicom_window", None
        except Exception as exc:
            log.warning("Ignoring unusable DICOM window: %s", exc)

    # As _to_uint8 does for the whole array, decided on the values of all blocks / a sub-grid.
    probe = values(slice(0, 1))
    if probe.dtype.kind == "f":
        ends = [_finite_min_max(values(sl)) for sl in blocks]
        finite = [e for e in ends if e[0] is not None]
        if not finite:
            return np.zeros(arr.shape, np.uint8), "none", None
        lo, hi = min(e[0] for e in finite), max(e[1] for e in finite)
        if lo >= 0.0 and hi <= 1.0:
            return scaled(values, 0.0, 1.0), "unit_float", [0.0, 1.0]
        if lo >= 0.0 and hi <= 255.0:
            return scaled(values, 0.0, 255.0), "none", None
    elif probe.dtype == np.uint8:
        return np.concatenate([values(sl) for sl in blocks]), "none", None
    lo, hi = _robust_range(apply_modality_lut(_subgrid(arr), ds))
    return scaled(values, lo, hi), "percentile", [lo, hi]


def _has_voi_lut_sequence(ds: Any) -> bool:
    seq = ds.get("VOILUTSequence")
    if not seq:
        return False
    item = seq[0]
    return item.get("LUTDescriptor") is not None and item.get("LUTData") is not None


def _dicom_int(ds: Any, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        return int(value)
    except Exception:
        return None


def _dicom_safe_tags(ds: Any, tsyntax: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for keyword in _DICOM_SAFE_KEYWORDS:
        try:
            if keyword not in ds:
                continue
            value = _json_value(ds.get(keyword))
        except Exception as exc:  # malformed value in a forced read
            log.debug("Skipping DICOM %s: %s", keyword, exc)
            continue
        if value is not None and value != "" and value != []:
            out[keyword] = value
    out["TransferSyntaxUID"] = str(tsyntax)
    name = getattr(tsyntax, "name", "")
    if name and name != str(tsyntax):
        out["TransferSyntax"] = str(name)
    return out


def _json_value(value: Any) -> Any:
    """DICOM element value -> plain JSON type (or None to skip)."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        return value.strip() if isinstance(value, str) else None
    if isinstance(value, bool):
        return value
    if isinstance(value, int):  # includes pydicom IS
        return int(value)
    if isinstance(value, (float, Decimal)):  # includes pydicom DSfloat/DSdecimal
        f = float(value)
        return f if math.isfinite(f) else None
    try:  # MultiValue and other sequences of scalars
        items = [_json_value(v) for v in value]
    except TypeError:
        return str(value)
    return [v for v in items if v is not None]


# ======================================================================================
# Pixel pipeline shared by all formats
# ======================================================================================


def _prepare_pixels(
    a: np.ndarray, bgr: bool = False,
) -> tuple[np.ndarray, np.ndarray | None, str, list[float] | None]:
    """Array of any supported layout -> (gray uint8 (H, W), rgb uint8 or None, scaling, range).

    ``rgb`` is the 8-bit colour version (after alpha compositing) for 3/4-channel
    inputs, else None. ``bgr``: 3/4-channel input in OpenCV's B, G, R(, A) order.
    """
    if a.dtype.kind not in "biuf":
        raise ValueError(f"unsupported array dtype {a.dtype}")
    if a.ndim == 2:
        channels, alpha = a, None
    elif a.ndim == 3 and a.shape[2] in (1, 2, 3, 4):
        n = a.shape[2]
        channels = a[..., 0] if n in (1, 2) else (a[..., 2::-1] if bgr else a[..., :3])
        alpha = a[..., n - 1] if n in (2, 4) else None
    else:
        raise ValueError(
            f"expected an (H, W) or (H, W, 1|2|3|4) image array, got shape {a.shape}"
        )
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"empty image array of shape {a.shape}")

    u8, scaling, value_range = _to_uint8(channels)
    if alpha is not None:
        u8 = _composite_on_black(u8, alpha)
    if u8.ndim == 2:
        return u8, None, scaling, value_range
    gray = cv2.cvtColor(np.ascontiguousarray(u8), cv2.COLOR_RGB2GRAY)
    return gray, u8, scaling, value_range


def _to_uint8(a: np.ndarray) -> tuple[np.ndarray, str, list[float] | None]:
    """Map sample values to uint8; returns (array, scaling label, value range used)."""
    if a.dtype == np.uint8:
        return a, "none", None
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255, "none", None
    if a.dtype.kind == "f":
        lo, hi = _finite_min_max(a)
        if lo is None:
            return np.zeros(a.shape, np.uint8), "none", None
        if lo >= 0.0 and hi <= 1.0:
            return _scale_to_uint8(a, 0.0, 1.0), "unit_float", [0.0, 1.0]
        if lo >= 0.0 and hi <= 255.0:
            return _scale_to_uint8(a, 0.0, 255.0), "none", None
    lo, hi = _robust_range(a)
    return _scale_to_uint8(a, lo, hi), "percentile", [lo, hi]


def _finite_min_max(a: np.ndarray) -> tuple[float | None, float | None]:
    """Min and max of the finite values (None, None when there is none), block-wise."""
    lo = hi = None
    rows = _block_rows(a)
    for start in range(0, a.shape[0], rows):
        block = a[start : start + rows]
        finite = block[np.isfinite(block)]
        if finite.size:
            bl, bh = float(finite.min()), float(finite.max())
            lo = bl if lo is None else min(lo, bl)
            hi = bh if hi is None else max(hi, bh)
    return lo, hi


def _robust_range(a: np.ndarray) -> tuple[float, float]:
    """0.5th/99.5th percentiles of the finite values (min/max if they coincide)."""
    sample = _subgrid(a).astype(np.float64, copy=False).ravel()
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 0.0
    lo, hi = np.percentile(sample, [PERCENTILE_LOW, PERCENTILE_HIGH])
    if hi <= lo:  # very peaked histogram: fall back to the full range
        lo, hi = sample.min(), sample.max()
    return float(lo), float(hi)


def _scale_to_uint8(a: np.ndarray, black: float, white: float) -> np.ndarray:
    """Linear map ``black -> 0``, ``white -> 255`` with clipping (black may exceed white).

    Works on blocks of rows, so a 50-megapixel 16-bit image never needs a full float32
    copy (200 MB) next to its uint8 result.
    """
    if white == black:
        return np.zeros(a.shape, np.uint8)  # constant image: nothing to show
    out = np.empty(a.shape, np.uint8)
    rows = _block_rows(a)
    for start in range(0, a.shape[0], rows):
        x = a[start : start + rows].astype(np.float32)
        x -= np.float32(black)
        x *= np.float32(255.0 / (white - black))
        np.nan_to_num(x, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
        np.clip(x, 0.0, 255.0, out=x)
        np.rint(x, out=x)
        out[start : start + rows] = x
    return out


_BLOCK_BYTES = 16 * 2**20


def _block_rows(a: np.ndarray, itemsize: int = 4) -> int:
    """Rows per block so that one block of ``a`` as float32 (``itemsize`` 4; float64: 8) stays
    around ``_BLOCK_BYTES`` (16 MB)."""
    per_row = max(1, int(np.prod(a.shape[1:], dtype=np.int64)) * itemsize)
    return max(1, _BLOCK_BYTES // per_row)


def nonfinite_pixels(a: np.ndarray) -> int:
    """Pixels of an (H, W) or (H, W, C) array with a NaN or +-inf sample (0 for integer data).

    Block-wise: no full-size copy of a 50-megapixel float image.
    """
    a = np.asarray(a)
    if a.dtype.kind not in "fc" or a.ndim < 2:
        return 0
    rows = _block_rows(a)
    n = 0
    for start in range(0, a.shape[0], rows):
        ok = np.isfinite(a[start : start + rows])
        if ok.ndim == 3:
            ok = ok.all(axis=2)
        n += int(ok.size - np.count_nonzero(ok))
    return n


def _nonfinite_info(a: np.ndarray, info: dict[str, Any]) -> None:
    """Record NaN/inf pixels (count and share of all pixels) for the input guard (core.guard)."""
    n = nonfinite_pixels(a)
    if n:
        info["nonfinite_pixels"] = n
        info["nonfinite_fraction"] = round(n / max(1, int(a.shape[0]) * int(a.shape[1])), 6)


def _composite_on_black(u8: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Blend 8-bit colour/gray over black using ``alpha`` (any dtype).

    In blocks of rows: a 50-megapixel RGBA image needs no full float32 copy (600 MB) of it."""

    def unit_of(a: np.ndarray) -> np.ndarray:
        if a.dtype == np.bool_:
            unit = a.astype(np.float32)
        elif a.dtype.kind in "iu":
            unit = a.astype(np.float32) / np.float32(np.iinfo(a.dtype).max)
        else:
            unit = np.nan_to_num(a.astype(np.float32), nan=0.0)
        return np.clip(unit, 0.0, 1.0, out=unit)

    rows = _block_rows(u8)
    blocks = range(0, u8.shape[0], rows)
    if all(unit_of(alpha[start:start + rows]).min() >= 1.0 for start in blocks):
        return u8  # fully opaque: nothing to blend
    out = np.empty(u8.shape, np.uint8)
    for start in blocks:
        unit = unit_of(alpha[start:start + rows])
        if u8.ndim == 3:
            unit = unit[..., None]
        out[start:start + rows] = np.rint(u8[start:start + rows].astype(np.float32) * unit)
    return out


def _has_colour(rgb: np.ndarray) -> bool:
    """True when the channels really differ (see COLOUR_TOLERANCE)."""
    sub = _subgrid(rgb)
    r, g, b = sub[..., 0], sub[..., 1], sub[..., 2]
    # element-wise max/min of three planes: ~10x faster than a reduction over a length-3 axis,
    # and this runs on every request (it was half of the serving overhead next to the model)
    hi = np.maximum(np.maximum(r, g), b).astype(np.int16)
    lo = np.minimum(np.minimum(r, g), b).astype(np.int16)
    return float((hi - lo).mean()) > COLOUR_TOLERANCE


def _subgrid(a: np.ndarray) -> np.ndarray:
    """A regular row/column sub-grid of at most ~_STATS_MAX_PIXELS pixels (a view).

    Strides both axes (not the flattened array) so every part of the image is
    sampled, whatever its width.
    """
    pixels = a.shape[0] * a.shape[1]
    if pixels <= _STATS_MAX_PIXELS:
        return a
    step = int(math.ceil(math.sqrt(pixels / _STATS_MAX_PIXELS)))
    return a[::step, ::step]


def _result(gray: np.ndarray, rgb: np.ndarray | None, info: dict[str, Any], max_side: int | None) -> DecodedImage:
    """The DecodedImage of 8-bit grey (+ colour); with ``max_side``, area-reduced first (before the
    grey is replicated to three channels) and ``info["reduced_to"] = [width, height]``."""
    if max_side is not None and max(gray.shape[:2]) > max_side:
        gray = shrink_to(gray, max_side)
        rgb = None if rgb is None else shrink_to(rgb, max_side)
        info["reduced_to"] = [int(gray.shape[1]), int(gray.shape[0])]
    return DecodedImage(array=_replicate(gray), info=info, original_rgb=rgb)


def _replicate(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)



# ======================================================================================
# What a format declares, checked before its decoder runs (issue 21)
# ======================================================================================
#
# A decoder allocates what the data tells it, not what the header we size-checked says. These
# checks read those declarations (the inflated size of a deflated DICOM, the size inside a
# compressed frame, the scans of a progressive JPEG, what alpha or a palette expands to) and
# refuse the file before any decoder runs. core.decode_pool's worker limits catch the rest.

_DEFLATED_TS = "1.2.840.10008.1.2.1.99"
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
# Bytes per pixel Pillow keeps for a decoded image, by mode (every other mode: 4, its
# multi-band storage, and "I"/"F").
_PIL_STORED_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}  # 0xF7: JPEG-LS


def _check_budget(pixels: int, bytes_per_pixel: float, what: str) -> None:
    """Refuse a decode whose estimated peak memory exceeds ``MAX_DECODE_BYTES``."""
    need = int(pixels * bytes_per_pixel)
    if need > MAX_DECODE_BYTES:
        raise _reject(
            "memory_limit",
            f"Decoding this {what} image ({pixels / 1e6:.1f} megapixels) would need about "
            f"{need / 2**20:,.0f} MB of memory, more than the {MAX_DECODE_BYTES / 2**20:,.0f} MB allowed for "
            "one image on this server, so it was not decoded. Please export the X-ray in grey "
            "(without transparency) or at a smaller size.",
        )


def _check_raster_budget(img: Image.Image, data: bytes, kind: str) -> None:
    """Peak memory of decoding an opened (header-only) Pillow image, and the scans of a JPEG."""
    width, height = img.size
    if kind == "JPEG":
        _check_jpeg_scans(data.count(b"\xff\xda"))
    if kind == "JPEG2000":
        # a JP2 file's size comes from its 'ihdr' box; OpenJPEG allocates what the codestream's
        # SIZ marker says: the two must agree
        declared = codestream_size(data[:65536])
        if declared is not None and (declared[:2] != (width, height) or declared[2] > len(img.getbands())):
            raise _reject("corrupt", f"The JPEG 2000 file's header says {width} x {height} pixels but its image "
                                     f"data says {declared[0]} x {declared[1]} with {declared[2]} components; the file "
                                     "is inconsistent and was not decoded, to protect the server.")
    _check_budget(width * height, raster_bytes_per_pixel(img, data, kind), f"{kind} ({img.mode})")


# Decoders' own buffers next to the image they hand over, bytes per pixel (per band for
# JPEG 2000, whose decoder works in 32-bit integers). Calibrated against measured peaks
# (`python benchmarks/bench_hostile.py --calibrate` prints estimate and measurement side by side).
_DECODER_BUFFERS = {"WEBP": 8, "TIFF": 4}
_J2K_BYTES_PER_BAND = 4


def raster_bytes_per_pixel(img: Image.Image, data: bytes, kind: str) -> float:
    """Estimated peak bytes per pixel of decoding an opened Pillow image into 8-bit grey (+ colour):
    the decoder's buffers, Pillow's image, any conversion, the array, the 8-bit results."""
    if _deep_colour(img, data, kind):
        # OpenCV at 16 bits (grey + alpha arrives as 4 channels): its buffer and the array,
        # then 8-bit colour, the blended copy when there is alpha, and grey
        channels = 3 if (kind == "PNG" and data[25] == 2) or img.mode == "RGB" else 4
        return 2 * (2 * channels) + 3 + (3 if channels == 4 else 0) + 1
    mode = img.mode
    stored = _PIL_STORED_BYTES.get(mode, 4)
    alpha = mode in ("LA", "La", "RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in img.info)
    if mode in ("P", "PA"):
        convert, array = 4, (4 if alpha else 3)  # Pillow's RGB(A) copy, then its array
    elif mode == "1":
        convert, array = 1, 1  # through "L"
    elif mode in ("L", "LA", "RGB", "RGBA") or mode in _MODE_BITS:
        convert, array = 0, {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}.get(mode, _MODE_BITS.get(mode, 8) // 8)
    else:  # CMYK, YCbCr, LAB, ...: Pillow's RGB copy and its array
        convert, array = 4, 3
    colour = mode not in ("1", "L", "LA", "La", "I", "F") and not mode.startswith("I;16")
    results = (3 + 1 + (3 if alpha else 0)) if colour else (1 + (1 if alpha else 0))
    if mode in ("I", "F") or mode.startswith("I;16"):
        results += 4  # 16/32-bit samples are scaled in float32 blocks next to a copy
    buffers = _DECODER_BUFFERS.get(kind, 0)
    if kind == "JPEG2000":
        buffers = _J2K_BYTES_PER_BAND * len(img.getbands())
    elif kind == "JPEG" and img.info.get("progressive"):
        buffers = 2 * len(img.getbands())  # libjpeg keeps every coefficient of a progressive file
    orient = stored if _exif_orientation(img) in range(2, 9) else 0  # exif_transpose copies
    return buffers + stored + convert + array + results + orient


def dicom_bytes_per_pixel(samples: int, bits_allocated: int, compressed: bool, j2k: bool,
                          palette: bool = False) -> float:
    """Estimated peak bytes per pixel of decoding the first frame of a DICOM: the stored samples
    (the data set's copy, the decoder's, the array), a JPEG 2000 decoder's 32-bit bands, float64
    for colour conversions, and the 8-bit results (the grey path works in blocks of rows). A
    palette expands each index to 16-bit RGB, then 8-bit RGB."""
    stored = samples * max(1, bits_allocated // 8)
    colour = samples > 1 or palette
    return (5 * stored + (stored if compressed else 0) + (_J2K_BYTES_PER_BAND * samples if j2k else 0)
            + (6 + 3 if palette else 0) + (8 + 3 + 1 if colour else 1))


def _check_jpeg_scans(scans: int) -> None:
    if scans > MAX_JPEG_SCANS:
        raise _reject(
            "time_limit",
            f"The JPEG data has {scans:,} scans (progressive passes; an ordinary file has about 10); "
            f"decoding more than {MAX_JPEG_SCANS} would take too long, so it was not decoded.",
        )


def _dicom_meta(data: bytes) -> tuple[str | None, int]:
    """(Transfer Syntax UID of the file meta group or None, offset just after the group).

    Reads group 0002 the way pydicom does (explicit VR little endian; implicit tolerated),
    with or without the 128-byte preamble."""
    i = 132 if data[128:132] == b"DICM" else 0
    ts = None
    while i + 8 <= len(data):
        group, elem = struct.unpack_from("<HH", data, i)
        if group != 0x0002:
            break
        vr = data[i + 4:i + 6]
        if vr.isalpha() and vr.isupper():
            if vr in _LONG_VRS:
                if i + 12 > len(data):
                    break
                length, head = struct.unpack_from("<I", data, i + 8)[0], 12
            else:
                length, head = struct.unpack_from("<H", data, i + 6)[0], 8
        else:
            length, head = struct.unpack_from("<I", data, i + 4)[0], 8
        if length == 0xFFFFFFFF:
            break
        if elem == 0x0010:
            ts = data[i + head:i + head + length].rstrip(b"\x00 ").decode("ascii", "replace")
        i += head + length
    return ts, i


def _check_dicom_inflation(data: bytes) -> None:
    """A Deflated Explicit VR data set is inflated by pydicom in one piece, before any size check:
    inflate it here first, counting and discarding the output, and refuse it above
    ``MAX_DICOM_DATASET_BYTES``."""
    ts, start = _dicom_meta(data)
    if ts != _DEFLATED_TS:
        return
    import zlib

    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total, view, step = 0, memoryview(data)[start:], 1 << 20
    try:
        for off in range(0, len(view), step):
            pending: bytes | memoryview = view[off:off + step]
            while pending and not inflater.eof:
                total += len(inflater.decompress(pending, 16 << 20))
                if total > MAX_DICOM_DATASET_BYTES:
                    raise _reject(
                        "memory_limit",
                        f"The DICOM file is deflate-compressed and expands to more than "
                        f"{MAX_DICOM_DATASET_BYTES / 2**20:,.0f} MB ({len(data) / 2**20:.1f} MB as sent), more than "
                        "an X-ray needs; it was not decoded, to protect the server.",
                    )
                pending = inflater.unconsumed_tail
            if inflater.eof:
                break
    except zlib.error as exc:
        log.info("Damaged deflated DICOM: %s", exc)
        raise _reject("corrupt", "The DICOM file is deflate-compressed and its compressed data is damaged; "
                                 "it could not be read.") from None


def _check_dicom_frame(ds: Any, rows: int, cols: int, samples: int, frames: int) -> None:
    """The size inside the first compressed frame must be the one the header declares."""
    from pydicom.encaps import get_frame

    try:
        frame = get_frame(ds.PixelData, 0, number_of_frames=frames)
    except Exception as exc:
        log.info("No first frame in encapsulated DICOM pixel data: %s: %s", type(exc).__name__, exc)
        raise _reject("corrupt", "The DICOM file's compressed image data is damaged (its first frame "
                                 "cannot be found), so it cannot be decoded.") from None
    declared = codestream_size(bytes(frame[:65536]) if frame[:2] != b"\xff\xd8" else bytes(frame))
    if declared is None:
        return  # RLE (its output size is fixed by Rows/Columns) or a format we do not parse
    width, height, components, scans = declared
    if (width, height) != (cols, rows) or components > samples:
        raise _reject(
            "corrupt",
            f"The DICOM header says {cols} x {rows} pixels with {samples} sample(s) per pixel, but its "
            f"compressed image data says {width} x {height} with {components}; the file is inconsistent "
            "and was not decoded, to protect the server.",
        )
    _check_jpeg_scans(scans)


def codestream_size(frame: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, components, scans) declared by a JPEG / JPEG-LS / JPEG 2000 codestream
    (raw or in a JP2 box); ``None`` when ``frame`` is none of those. Damaged headers raise
    ``ImageError("corrupt")``."""
    if frame[:2] == b"\xff\xd8":
        return _jpeg_frame_header(frame)
    i = frame.find(b"\xff\x4f\xff\x51")  # SOC + SIZ
    if i < 0:
        return None
    if len(frame) < i + 40:
        raise _reject("corrupt", "The JPEG 2000 image data is cut off inside its header.")
    x, y, x0, y0 = struct.unpack_from(">IIII", frame, i + 8)
    components = struct.unpack_from(">H", frame, i + 40)[0] if len(frame) >= i + 42 else 0
    return max(0, x - x0), max(0, y - y0), components, 1


def _jpeg_frame_header(data: bytes) -> tuple[int, int, int, int]:
    i, size = 2, None
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            break
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # standalone markers
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / first scan: the header is over
            break
        length = struct.unpack_from(">H", data, i + 2)[0]
        if marker in _JPEG_SOF and i + 10 <= len(data):
            height, width = struct.unpack_from(">HH", data, i + 5)
            size = (width, height, data[i + 9])
        i += 2 + length
    if size is None or size[0] == 0 or size[1] == 0:
        raise _reject("corrupt", "The JPEG image data has no usable frame header (its size is missing), "
                                 "so it cannot be decoded.")
    return size[0], size[1], size[2], data.count(b"\xff\xda")


# ======================================================================================
# Validation and messages
# ======================================================================================


def _check_dimensions(width: int, height: int) -> None:
    """Refuse absurd sizes from header values, before any pixel is decoded."""
    width, height = int(width), int(height)
    pixels = width * height
    if pixels > MAX_PIXELS:
        raise _reject(
            "decompression_bomb",
            f"The image declares {width} x {height} pixels ({pixels / 1e6:.1f} megapixels), "
            f"more than the {MAX_PIXELS / 1e6:g}-megapixel safety limit, so it was not "
            "decoded. Please upload a smaller export of the X-ray.",
        )
    if max(width, height) > MAX_SIDE:
        raise _reject(
            "too_large",
            f"The image is too large ({width} x {height} pixels); neither side may exceed "
            f"{MAX_SIDE} pixels.",
        )
    if min(width, height) < MIN_SIDE:
        raise _reject(
            "too_small",
            f"The image is too small ({width} x {height} pixels); each side must be at "
            f"least {MIN_SIDE} pixels.",
        )


def memory_limit_error() -> ImageError:
    """The rejection of a file whose decoding ran out of the memory allowed."""
    return ImageError("memory_limit", "This file needs more memory than allowed to decode, so it was not "
                                      "analysed. Please export the X-ray in grey or at a smaller size.")


def time_limit_error(seconds: float) -> ImageError:
    """The rejection of a file whose decoding took longer than allowed."""
    return ImageError("time_limit", f"This file took longer than the {seconds:g} s allowed to decode, so it was "
                                    "not analysed. It may be damaged or built to be slow to decode; please "
                                    "export the X-ray again.")


def upload_limits_text() -> str:
    """The batch limits in words (uploader help, captions, docs)."""
    return (f"up to {MAX_UPLOAD_FILES} files and {MAX_UPLOAD_TOTAL_BYTES / 2**20:g} MB in total per batch, "
            f"{MAX_BYTES / 2**20:g} MB per file")


def batch_limit_error(sizes: list[int]) -> str | None:
    """A message when a batch of files with these byte sizes exceeds the upload limits, else None."""
    n, total = len(sizes), int(sum(int(s or 0) for s in sizes))
    if n > MAX_UPLOAD_FILES:
        return (f"Too many files: {n} were selected, at most {MAX_UPLOAD_FILES} can be analysed at once. "
                "Remove some files (or analyse them in several batches); nothing was analysed.")
    if total > MAX_UPLOAD_TOTAL_BYTES:
        return (f"The files are too large together: {_human_size(total)}, at most "
                f"{MAX_UPLOAD_TOTAL_BYTES / 2**20:g} MB can be analysed at once. Remove some files (or analyse "
                "them in several batches); nothing was analysed.")
    return None


def _reject(code: str, message: str) -> ImageError:
    log.info("Image rejected (%s): %s", code, message)
    return ImageError(code, message)


def _human_size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KB"
    return f"{n / (1024 * 1024):.1f} MB"


def _too_many_bytes_message(n: int, limit: int | None = None) -> str:
    return (
        f"The file is too large ({_human_size(n)}); the maximum accepted size is "
        f"{_human_size(MAX_BYTES if limit is None else limit)}."
    )


def _looks_like_text(data: bytes) -> bool:
    sample = data[:4096]
    if sample.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 byte-order mark
        return True
    if b"\x00" in sample:
        return False
    text = sample.decode("utf-8", errors="replace")
    if not text:
        return False
    printable = sum(ch.isprintable() or ch in "\t\r\n\f" for ch in text)
    return printable / len(text) > 0.95


def _content_kind(data: bytes) -> str | None:
    """'a PDF document', 'a ZIP archive or an office document (e.g. Word)', 'text' or None."""
    if data[:1024].lstrip().startswith(b"%PDF"):
        return "a PDF document"
    if data.startswith(b"PK\x03\x04"):
        return "a ZIP archive or an office document (e.g. Word)"
    if _looks_like_text(data):
        return "text"
    return None


def _not_an_image(data: bytes) -> ImageError:
    what = _content_kind(data)
    if what == "text":
        what = "text (for example a document, a web page or a vector drawing)"
    if what is not None:
        message = (
            f"This file is {what}, not an image. Please upload the chest X-ray itself "
            f"as {ACCEPTED_FORMATS_TEXT}."
        )
    else:
        message = (
            "The file's contents are not a recognised image format. Please upload a "
            f"chest X-ray as {ACCEPTED_FORMATS_TEXT}."
        )
    return _reject("not_an_image", message)


__all__ = [
    "ACCEPTED_FORMATS_TEXT",
    "ERROR_CODES",
    "FORMAT_SUFFIXES",
    "IMAGE_SUFFIXES",
    "FolderScan",
    "MAX_BYTES",
    "MAX_PIXELS",
    "MAX_UPLOAD_FILES",
    "MAX_UPLOAD_TOTAL_BYTES",
    "MAX_SIDE",
    "MIN_SIDE",
    "DecodedImage",
    "ImageError",
    "batch_limit_error",
    "decode_image",
    "describe_content",
    "image_file_check",
    "is_regular_file",
    "load_image",
    "read_file",
    "read_head",
    "require_regular_file",
    "resize_for_model",
    "scan_folder",
    "sniff_format",
    "to_grayscale_rgb",
    "upload_limits_text",
]

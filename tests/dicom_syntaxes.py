"""A chest film written in each DICOM transfer syntax a PACS sends (issue 26), for the tests.

Encoders: pydicom's own (RLE, Deflate; JPEG-LS through pyjpegls, JPEG 2000 through
pylibjpeg-openjpeg), Pillow (JPEG Baseline), and :func:`jpeg_lossless` below: a small encoder of
JPEG Lossless (Process 14, any of the seven predictors), because no installed package encodes
it. 12-bit JPEG Extended has no encoder here either; the tests use a real vendor file of it
(pydicom's ``JPGExtended.dcm``).
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
FILM = REPO / "samples" / "chest_xray" / "test" / "PNEUMONIA" / "person36_virus_81.jpeg"

EXPLICIT = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR = "1.2.840.10008.1.2.4.81"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K = "1.2.840.10008.1.2.4.91"
RLE = "1.2.840.10008.1.2.5"


def film12() -> np.ndarray:
    """The sample pneumonia film as 12-bit values in uint16 (a CR detector's range)."""
    g = cv2.imread(str(FILM), cv2.IMREAD_GRAYSCALE).astype(np.uint16)
    return (g << 4) | (g >> 4)  # 0..4095, every 12-bit code used


# --- JPEG Lossless (ITU T.81 Annex H), grey, point transform 0 --------------------------------
def _predict(a: np.ndarray, predictor: int, precision: int) -> np.ndarray:
    ra = np.zeros_like(a)
    rb = np.zeros_like(a)
    rc = np.zeros_like(a)
    ra[:, 1:], rb[1:, :], rc[1:, 1:] = a[:, :-1], a[:-1, :], a[:-1, :-1]
    px = {1: ra, 2: rb, 3: rc, 4: ra + rb - rc, 5: ra + ((rb - rc) >> 1), 6: rb + ((ra - rc) >> 1),
          7: (ra + rb) >> 1}[predictor].copy()
    px[0, 1:] = a[0, :-1]  # first line: the sample to the left
    px[1:, 0] = a[:-1, 0]  # first column: the sample above
    px[0, 0] = 1 << (precision - 1)
    return px


def jpeg_lossless(arr: np.ndarray, precision: int, predictor: int = 1) -> bytes:
    """A JPEG Lossless (SOF3) codestream of a 2-D unsigned array, with predictor 1..7 (1 =
    "SV1", the DICOM syntax 1.2.840.10008.1.2.4.70). One Huffman table in which every
    difference category 0..16 has a 5-bit code: valid and simple, not the smallest file."""
    a = np.asarray(arr).astype(np.int64)
    if a.ndim != 2 or not 2 <= precision <= 15 or a.min() < 0 or a.max() >= 1 << precision:
        raise ValueError(f"expected a 2-D array of {precision}-bit values")
    diff = a - _predict(a, predictor, precision)
    mag = np.abs(diff)
    ssss = np.zeros_like(mag)
    nz = mag > 0
    ssss[nz] = np.floor(np.log2(mag[nz])).astype(np.int64) + 1
    extra = np.where(diff >= 0, diff, diff + (1 << ssss) - 1)  # one's complement for negatives
    out = bytearray()
    acc = nbits = 0
    for s, e in zip(ssss.ravel().tolist(), extra.ravel().tolist()):
        acc = (acc << (5 + s)) | (s << s) | (e & ((1 << s) - 1))
        nbits += 5 + s
        while nbits >= 8:
            nbits -= 8
            byte = (acc >> nbits) & 0xFF
            out.append(byte)
            if byte == 0xFF:
                out.append(0)  # byte stuffing
        acc &= (1 << nbits) - 1
    if nbits:
        byte = ((acc << (8 - nbits)) | ((1 << (8 - nbits)) - 1)) & 0xFF  # pad with 1-bits
        out.append(byte)
        if byte == 0xFF:
            out.append(0)
    h, w = a.shape
    bits = bytes([0, 0, 0, 0, 17] + [0] * 11)  # 17 codes of length 5
    sof = b"\xff\xc3" + struct.pack(">HBHHB", 11, precision, h, w, 1) + bytes([1, 0x11, 0])
    dht = b"\xff\xc4" + struct.pack(">H", 2 + 1 + 16 + 17) + b"\x00" + bits + bytes(range(17))
    sos = b"\xff\xda" + struct.pack(">HB", 8, 1) + bytes([1, 0x00, predictor, 0, 0])
    return b"\xff\xd8" + sof + dht + sos + bytes(out) + b"\xff\xd9"


# --- DICOM files ------------------------------------------------------------------------------
def _dataset(arr: np.ndarray, bits_stored: int):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = EXPLICIT
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = 8 if arr.dtype == np.uint8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, 0
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    return ds


def _write(ds) -> bytes:
    from pydicom.filewriter import dcmwrite

    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _encapsulated(ds, frame: bytes, tsyntax: str) -> bytes:
    from pydicom.encaps import encapsulate

    ds.file_meta.TransferSyntaxUID = tsyntax
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return _write(ds)


def film_in(tsyntax: str) -> bytes:
    """The film (12-bit, or 8-bit for JPEG Baseline) as a DICOM file in ``tsyntax``."""
    if tsyntax == JPEG_BASELINE:
        from PIL import Image

        g8 = cv2.imread(str(FILM), cv2.IMREAD_GRAYSCALE)
        buf = io.BytesIO()
        Image.fromarray(g8).save(buf, format="JPEG", quality=92)
        return _encapsulated(_dataset(g8, 8), buf.getvalue(), tsyntax)
    arr = film12()
    ds = _dataset(arr, 12)
    if tsyntax == EXPLICIT:
        return _write(ds)
    if tsyntax == DEFLATED:
        ds.file_meta.TransferSyntaxUID = DEFLATED
        return _write(ds)
    if tsyntax in (JPEG_LOSSLESS_SV1, JPEG_LOSSLESS):
        return _encapsulated(ds, jpeg_lossless(arr, 12, 1 if tsyntax == JPEG_LOSSLESS_SV1 else 7), tsyntax)
    kwargs = {JPEG_LS_NEAR: {"jls_error": 3}, J2K: {"j2k_cr": [15]}}.get(tsyntax, {})
    ds.compress(tsyntax, **kwargs)
    return _write(ds)


LOSSLESS = (EXPLICIT, DEFLATED, RLE, JPEG_LOSSLESS_SV1, JPEG_LOSSLESS, JPEG_LS_LOSSLESS, J2K_LOSSLESS)
LOSSY = (JPEG_BASELINE, JPEG_LS_NEAR, J2K)

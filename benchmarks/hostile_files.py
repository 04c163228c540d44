"""Generators of hostile image files, one per class of decoder bomb (issue 21).

Each generator returns the file's bytes; nothing binary is committed. The tests
(``tests/test_decode_pool.py``, ``tests/test_imageio.py``) and the benchmark (``benchmarks/bench_hostile.py``) use
the same generators, the tests at smaller sizes where that keeps them fast.

Classes (what each one attacks):

* ``deflate_dicom``: Deflated Explicit VR Little Endian data set with a private element of
  zeros -- pydicom inflates the whole data set before any size check (~1000:1).
* ``dicom_j2k_codestream`` / ``dicom_jpeg_codestream``: the header says 512 x 512, the JPEG 2000
  / JPEG frame inside says 13000 x 13000 RGB -- a decoder allocates what the codestream says.
* ``webp_rgba`` / ``png16_rgba`` / ``tiff16_rgba`` / ``png16_grey_alpha`` / ``png_palette_trns``:
  near-50-megapixel images whose alpha or palette expands several bytes per pixel.
* ``rle16_dicom``: 16-bit RLE DICOM near 50 MP with a rescale and a window (float64 LUT copies).
* ``progressive_jpeg``: a progressive JPEG whose last scan is repeated thousands of times
  (~30 ms of CPU per scan at this size, no extra memory).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np

SIDE_50MP = 7000  # 49 megapixels: just under core.imageio.MAX_PIXELS (50 MP)


# --- PNG written by hand (any colour type, streamed: a 50 MP image never sits in memory) -------
def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, colour_type: int, bit_depth: int, *, row: bytes | None = None,
              plte: bytes | None = None, trns: bytes | None = None) -> bytes:
    """A PNG whose every row is ``row`` (default zeros), compressed as a stream."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour_type]
    row_bytes = (width * channels * bit_depth + 7) // 8
    line = b"\x00" + (row if row is not None else bytes(row_bytes))  # filter type 0
    assert len(line) == row_bytes + 1
    comp = zlib.compressobj(9)
    parts = []
    block = line * 64
    for _ in range(height // 64):
        parts.append(comp.compress(block))
    parts.append(comp.compress(line * (height % 64)))
    parts.append(comp.flush())
    out = [b"\x89PNG\r\n\x1a\n",
           _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0))]
    if plte is not None:
        out.append(_chunk(b"PLTE", plte))
    if trns is not None:
        out.append(_chunk(b"tRNS", trns))
    out += [_chunk(b"IDAT", b"".join(parts)), _chunk(b"IEND", b"")]
    return b"".join(out)


def png16_rgba(side: int = SIDE_50MP) -> bytes:
    return png_bytes(side, side, 6, 16, row=b"\x10\x00" * 4 * side)


def png16_grey_alpha(side: int = SIDE_50MP) -> bytes:
    return png_bytes(side, side, 4, 16, row=b"\x10\x00\xff\xff" * side)


def png_palette_trns(side: int = SIDE_50MP) -> bytes:
    # 1-bit palette, two entries, the first half transparent: 6 MB of rows -> 196 MB as RGBA
    return png_bytes(side, side, 3, 1, row=b"\x55" * ((side + 7) // 8), plte=b"\x00\x00\x00\xff\xff\xff",
                     trns=b"\x80")


def webp_rgba(side: int = SIDE_50MP) -> bytes:
    from PIL import Image

    img = Image.new("RGBA", (side, side), (40, 40, 40, 128))
    buf = io.BytesIO()
    img.save(buf, format="WEBP", lossless=True, quality=0, method=0)
    return buf.getvalue()


def tiff16_rgba(side: int = SIDE_50MP) -> bytes:
    """16-bit RGBA TIFF, deflate-compressed (OpenCV writes it; one constant plane compresses well)."""
    import cv2

    arr = np.full((side, side, 4), 4096, np.uint16)
    ok, enc = cv2.imencode(".tiff", arr, [cv2.IMWRITE_TIFF_COMPRESSION, 8])  # 8 = Adobe deflate
    assert ok
    return enc.tobytes()


# --- JPEG ---------------------------------------------------------------------------------
def _film(side: int = 256) -> np.ndarray:
    """A smooth film-like grey gradient (uint8)."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    return np.clip(80 + 120 * np.sin(np.pi * x) * np.sin(np.pi * y) + 20 * y, 0, 255).astype(np.uint8)


def jpeg_bytes(arr: np.ndarray, **save_kw) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", **save_kw)
    return buf.getvalue()


def progressive_jpeg(scans: int = 2000, side: int = 4000) -> bytes:
    """A valid progressive JPEG whose last scan (SOS .. before EOI, a few dozen bytes on a flat
    image) is repeated until the file has ``scans`` scans: each one makes the decoder walk every
    block of the image again."""
    base = np.full((side, side), 128, np.uint8)
    base[::2, ::2] = 130
    data = jpeg_bytes(base, progressive=True, quality=90)
    last = data.rfind(b"\xff\xda")
    assert last > 0 and data.endswith(b"\xff\xd9")
    scan = data[last:-2]
    return data[:-2] + scan * max(0, scans - data.count(b"\xff\xda")) + b"\xff\xd9"


def _patch_sof(data: bytes, height: int, width: int) -> bytes:
    """Rewrite the frame size of the first SOF marker of a JPEG."""
    i = 2
    while i < len(data) - 9:
        if data[i] != 0xFF:
            raise ValueError("not at a marker")
        marker = data[i + 1]
        seg_len = struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xF7):
            return data[:i + 5] + struct.pack(">HH", height, width) + data[i + 9:]
        i += 2 + seg_len
    raise ValueError("no SOF marker")


# --- DICOM --------------------------------------------------------------------------------
def _dicom(pixel_bytes: bytes | list[bytes], *, rows: int, cols: int, tsyntax, bits: int = 8, samples: int = 1,
           photometric: str = "MONOCHROME2", extra=None, encapsulate: bool = False) -> bytes:
    from pydicom.dataset import FileMetaDataset
    from pydicom.encaps import encapsulate as _encaps
    from pydicom.filewriter import dcmwrite
    from pydicom.dataset import Dataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, generate_uid

    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = tsyntax
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = 0
    if extra:
        extra(ds)
    if encapsulate:
        frames = pixel_bytes if isinstance(pixel_bytes, list) else [pixel_bytes]
        ds.PixelData = _encaps(frames)
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = pixel_bytes
        ds["PixelData"].VR = "OW" if bits > 8 else "OB"
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def plain_dicom(side: int = 512) -> bytes:
    """A normal uncompressed 8-bit DX film (a control)."""
    import cv2
    from pydicom.uid import ExplicitVRLittleEndian

    arr = cv2.resize(_film(256), (side, side), interpolation=cv2.INTER_LINEAR)
    return _dicom(arr.tobytes(), rows=side, cols=side, tsyntax=ExplicitVRLittleEndian)


def deflate_dicom(zeros_mb: float = 2000, side: int = 512) -> bytes:
    """A normal 512 x 512 film, Deflated Explicit VR LE, plus a private element of zeros that
    inflates to ``zeros_mb`` MB (the file stays ~1/1000 of that)."""
    import cv2
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    arr = cv2.resize(_film(256), (side, side), interpolation=cv2.INTER_LINEAR)
    n = int(zeros_mb * 2**20) & ~1

    # pydicom would deflate a data set that holds the zeros in memory; the body is written and
    # deflated here in pieces instead, so a 2 GB inflation costs the generator nothing.
    plain = _dicom(arr.tobytes(), rows=side, cols=side, tsyntax="1.2.840.10008.1.2.1")
    deflated = _dicom(arr.tobytes(), rows=side, cols=side, tsyntax=DeflatedExplicitVRLittleEndian)
    head, body = deflated[:_meta_end(deflated)], plain[_meta_end(plain):]
    # private element (0009,0010) creator, (0009,1001) OB of zeros, inserted in tag order:
    creator = b"\x09\x00\x10\x00LO" + struct.pack("<H", 10) + b"HOSTILE   "
    zeros_head = b"\x09\x00\x01\x10OB\x00\x00" + struct.pack("<I", n)
    idx = _first_tag_at_or_after(body, 0x0009, 0x0010)
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [comp.compress(body[:idx] + creator + zeros_head)]
    chunk = bytes(16 * 2**20)
    left = n
    while left:
        k = min(left, len(chunk))
        parts.append(comp.compress(chunk[:k]))
        left -= k
    parts.append(comp.compress(body[idx:]))
    parts.append(comp.flush())
    return head + b"".join(parts)


def _meta_end(data: bytes) -> int:
    """Offset of the end of the file meta group (preamble + DICM + group 0002)."""
    group_len = struct.unpack("<I", data[140:144])[0]  # (0002,0000) UL, explicit VR
    return 144 + group_len


def _first_tag_at_or_after(body: bytes, group: int, elem: int) -> int:
    """Offset in an explicit-VR-LE body of the first element whose tag is >= (group, elem)."""
    i = 0
    long_vrs = {b"OB", b"OD", b"OF", b"OL", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"OV"}
    while i < len(body):
        g, e = struct.unpack("<HH", body[i:i + 4])
        if (g, e) >= (group, elem):
            return i
        vr = body[i + 4:i + 6]
        if vr in long_vrs:
            length = struct.unpack("<I", body[i + 8:i + 12])[0]
            i += 12 + length
        else:
            length = struct.unpack("<H", body[i + 6:i + 8])[0]
            i += 8 + length
    return i


def dicom_jpeg_codestream(claim: int = 13000, header: int = 512) -> bytes:
    """DICOM JPEG Baseline whose header says ``header`` x ``header`` grey and whose frame says
    ``claim`` x ``claim``."""
    from pydicom.uid import JPEGBaseline8Bit

    frame = _patch_sof(jpeg_bytes(_film(64), quality=90), claim, claim)
    return _dicom(frame, rows=header, cols=header, tsyntax=JPEGBaseline8Bit, encapsulate=True)


def j2k_codestream(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG2000", no_jp2=True, irreversible=False)
    return buf.getvalue()


def _patch_siz(cs: bytes, width: int, height: int) -> bytes:
    """Rewrite Xsiz/Ysiz and the tile size XTsiz/YTsiz of a J2K codestream's SIZ marker."""
    i = cs.index(b"\xff\x51")
    # SIZ: marker(2) Lsiz(2) Rsiz(2) Xsiz Ysiz XOsiz YOsiz XTsiz YTsiz (4 bytes each)
    return cs[:i + 6] + struct.pack(">II", width, height) + cs[i + 14:i + 22] + \
        struct.pack(">II", width, height) + cs[i + 30:]


def dicom_j2k_codestream(claim: int = 13000, header: int = 512) -> bytes:
    """DICOM JPEG 2000 whose header says ``header`` x ``header`` RGB and whose codestream says
    ``claim`` x ``claim`` RGB (a few KB)."""
    from pydicom.uid import JPEG2000Lossless

    rgb = np.dstack([_film(64)] * 3)
    frame = _patch_siz(j2k_codestream(rgb), claim, claim)
    return _dicom(frame, rows=header, cols=header, tsyntax=JPEG2000Lossless, samples=3, photometric="RGB",
                  encapsulate=True)


def _rle_constant_segment(n: int, value: int) -> bytes:
    """PackBits segment of ``n`` bytes all equal to ``value`` (runs of 128), padded to even."""
    full, rest = divmod(n, 128)
    seg = bytes([0x81, value]) * full  # -127: repeat the next byte 128 times
    if rest:
        seg += bytes([(257 - rest) & 0xFF, value]) if rest > 1 else bytes([0, value])
    return seg + (b"\x00" if len(seg) % 2 else b"")


def rle16_dicom(side: int = SIDE_50MP) -> bytes:
    """16-bit RLE Lossless DX near 50 MP with a rescale slope/intercept and a window."""
    from pydicom.uid import RLELossless

    n = side * side
    segs = [_rle_constant_segment(n, 0x08), _rle_constant_segment(n, 0x00)]  # high byte, low byte
    header = struct.pack("<I", len(segs))
    offsets, off = [], 64
    for s in segs:
        offsets.append(off)
        off += len(s)
    header += b"".join(struct.pack("<I", o) for o in offsets) + bytes(4 * (15 - len(segs)))
    frame = header + b"".join(segs)

    def extra(ds):
        ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-100"
        ds.WindowCenter, ds.WindowWidth = "1000", "2000"

    return _dicom(frame, rows=side, cols=side, tsyntax=RLELossless, bits=16, extra=extra, encapsulate=True)


# name -> (generator, kwargs at full size as in the issue)
CLASSES = {
    "deflate_dicom_2gb": (deflate_dicom, {"zeros_mb": 2000}),
    "dicom_j2k_13000": (dicom_j2k_codestream, {}),
    "dicom_jpeg_13000": (dicom_jpeg_codestream, {}),
    "webp_rgba_49mp": (webp_rgba, {}),
    "png16_rgba_49mp": (png16_rgba, {}),
    "tiff16_rgba_49mp": (tiff16_rgba, {}),
    "png16_grey_alpha_49mp": (png16_grey_alpha, {}),
    "png_palette_trns_49mp": (png_palette_trns, {}),
    "rle16_dicom_49mp": (rle16_dicom, {}),
    "progressive_jpeg_2000_scans": (progressive_jpeg, {"scans": 2000}),
}


def make(name: str, **overrides) -> bytes:
    fn, kw = CLASSES[name]
    return fn(**{**kw, **overrides})

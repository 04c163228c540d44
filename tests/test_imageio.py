"""Tests for core.imageio: decoding, validation and the canonical array.

Every input is crafted in memory (Pillow, numpy, pydicom); nothing is downloaded.
The one test that reads the real dataset is marked ``data`` and skips without it.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from core import imageio
from core.imageio import (
    MIN_SIDE,
    DecodedImage,
    ImageError,
    decode_image,
    load_image,
    resize_for_model,
    to_grayscale_rgb,
)

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.filewriter import dcmwrite  # noqa: E402
from pydicom.uid import (  # noqa: E402
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


# ======================================================================================
# Builders
# ======================================================================================


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def gradient(h: int = 48, w: int = 64, hi: int = 255, dtype=np.uint8) -> np.ndarray:
    """Horizontal ramp 0..hi, identical on every row."""
    row = np.linspace(0, hi, w).round().astype(dtype)
    return np.tile(row, (h, 1))


def colour_photo(h: int = 48, w: int = 64) -> np.ndarray:
    """A saturated RGB image (red/green/blue bands), nothing like an X-ray."""
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:, : w // 3, 0] = 220
    rgb[:, w // 3 : 2 * w // 3, 1] = 200
    rgb[:, 2 * w // 3 :, 2] = 230
    rgb[..., 0] += np.linspace(0, 30, w).astype(np.uint8)
    return rgb


def png_header_only(width: int, height: int, bit_depth: int = 1, colour_type: int = 0) -> bytes:
    """A PNG whose IHDR claims ``width x height`` with a tiny (bogus) IDAT.

    Used for bomb/size checks: if the decoder ever tried to decode pixels it would
    fail with 'truncated', so the expected code proves the header check ran first.
    """

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def make_dicom(
    pixels: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    frames: int | None = None,
    rows_cols: tuple[int, int] | None = None,
    preamble: bool = True,
    transfer_syntax=ExplicitVRLittleEndian,
    pixel_bytes: bytes | None = None,
    **tags,
) -> bytes:
    """Build a DICOM file in memory (pydicom 3 API).

    ``pixels``: (rows, cols), (frames, rows, cols) or (rows, cols, 3) array; its
    dtype sets BitsAllocated and signedness. ``None`` -> no Pixel Data at all.
    """
    ds = Dataset()
    ds.SOPClassUID = CR_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.Manufacturer = "Acme Imaging"
    ds.PixelSpacing = [0.139, 0.139]

    if pixels is not None:
        arr = np.asarray(pixels)
        colour = photometric in ("RGB", "YBR_FULL")
        if rows_cols is not None:
            rows, cols = rows_cols
        elif frames:
            rows, cols = arr.shape[1:3]
        else:
            rows, cols = arr.shape[:2]
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 3 if colour else 1
        if colour:
            ds.PlanarConfiguration = 0
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = arr.dtype.itemsize * 8
        ds.BitsStored = bits_stored or arr.dtype.itemsize * 8
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0
        if frames:
            ds.NumberOfFrames = frames
        ds.PixelData = pixel_bytes if pixel_bytes is not None else arr.tobytes()

    for key, value in tags.items():
        setattr(ds, key, value)

    buf = io.BytesIO()
    if preamble:
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = transfer_syntax
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta = meta
        ds.save_as(buf, enforce_file_format=True)
    else:
        # A bare data set: no preamble, no 'DICM', no meta group (implicit VR LE).
        dcmwrite(buf, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    return buf.getvalue()


def assert_canonical(dec: DecodedImage, h: int, w: int) -> np.ndarray:
    """Common invariants; returns the gray plane."""
    assert isinstance(dec, DecodedImage)
    a = dec.array
    assert a.shape == (h, w, 3)
    assert a.dtype == np.uint8
    assert np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 1], a[..., 2])
    info = dec.info
    json.dumps(info)  # JSON-serialisable
    assert (info["width"], info["height"]) == (w, h)
    for key in ("format", "mode", "bit_depth", "n_bytes", "was_color"):
        assert key in info
    assert isinstance(info["was_color"], bool)
    if info["was_color"]:
        assert dec.original_rgb is not None
        assert dec.original_rgb.shape == (h, w, 3) and dec.original_rgb.dtype == np.uint8
    else:
        assert dec.original_rgb is None
    return a[..., 0]


def assert_rejected(excinfo: pytest.ExceptionInfo, code: str) -> None:
    err = excinfo.value
    assert isinstance(err, ImageError) and isinstance(err, ValueError)
    assert err.code == code, f"expected {code!r}, got {err.code!r}: {err.message}"
    assert err.code in imageio.ERROR_CODES
    assert_human_message(err)


def assert_human_message(err: ImageError) -> None:
    msg = err.message
    assert str(err) == msg
    assert len(msg) > 15 and " " in msg
    assert msg[0].isupper() and msg.rstrip().endswith(".")
    assert "Traceback" not in msg and "Error:" not in msg and "<" not in msg
    msg.encode("ascii")  # plain ASCII: safe for logs and PDF reports


# ======================================================================================
# Raster formats
# ======================================================================================


def test_png_8bit_gray_roundtrips_exactly():
    g = gradient()
    dec = decode_image(encode(Image.fromarray(g, "L"), "PNG"))
    gray = assert_canonical(dec, 48, 64)
    assert np.array_equal(gray, g)
    info = dec.info
    assert info["format"] == "PNG" and info["mode"] == "L" and info["bit_depth"] == 8
    assert info["was_color"] is False and info["intensity_scaling"] == "none"
    assert info["n_bytes"] > 0 and info["frames"] == 1


def test_png_16bit_with_12bit_values_is_stretched_to_full_range():
    # 12-bit detector data in a 16-bit container: scaling by 0..65535 would be black.
    raw = gradient(hi=4095, dtype=np.uint16)
    data = encode(Image.fromarray(raw), "PNG")
    dec = decode_image(data)
    gray = assert_canonical(dec, 48, 64)
    assert dec.info["mode"].startswith("I;16") and dec.info["bit_depth"] == 16
    assert dec.info["intensity_scaling"] == "percentile"
    lo, hi = dec.info["value_range"]
    assert 0 <= lo < 100 and 4000 < hi <= 4095
    assert gray[:, 0].max() == 0 and gray[:, -1].min() == 255
    assert np.all(np.diff(gray[0].astype(int)) >= 0)  # monotonic ramp stays monotonic
    assert 100 < gray.mean() < 155


def test_16bit_hot_pixels_do_not_flatten_contrast():
    raw = gradient(hi=3000, dtype=np.uint16)
    raw[0, 0] = 65535  # one saturated detector element
    raw[5, 7] = 65535
    dec = decode_image(encode(Image.fromarray(raw), "PNG"))
    gray = dec.array[..., 0]
    # With plain min/max the ramp would be squeezed into 0..12; percentiles keep it.
    assert gray[10, -1] == 255 and gray[10, 0] == 0
    assert gray[10, 32] > 100


def test_16bit_big_endian_tiff():
    raw = gradient(hi=1023, dtype=np.uint16)
    img = Image.frombytes("I;16B", (64, 48), raw.astype(">u2").tobytes())
    dec = decode_image(encode(img, "TIFF"))
    gray = assert_canonical(dec, 48, 64)
    assert dec.info["format"] == "TIFF" and dec.info["bit_depth"] == 16
    assert gray[0, 0] == 0 and gray[0, -1] == 255


def test_gray_content_in_rgb_jpeg_is_not_colour():
    g = gradient()
    rgb = np.stack([g, g, g], axis=2)
    dec = decode_image(encode(Image.fromarray(rgb, "RGB"), "JPEG", quality=95))
    gray = assert_canonical(dec, 48, 64)
    assert dec.info["format"] == "JPEG" and dec.info["mode"] == "RGB"
    assert dec.info["was_color"] is False and dec.original_rgb is None
    assert np.abs(gray.astype(int) - g).max() <= 4  # JPEG loss only


def test_colour_photo_sets_was_color_and_keeps_original():
    rgb = colour_photo()
    dec = decode_image(encode(Image.fromarray(rgb, "RGB"), "PNG"))
    gray = assert_canonical(dec, 48, 64)
    assert dec.info["was_color"] is True
    assert np.array_equal(dec.original_rgb, rgb)
    # Canonical gray = BT.601 luminance of the colour image.
    assert np.array_equal(gray, cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))


def test_colour_jpeg_sets_was_color():
    dec = decode_image(encode(Image.fromarray(colour_photo(), "RGB"), "JPEG", quality=90))
    assert_canonical(dec, 48, 64)
    assert dec.info["was_color"] is True


def test_rgba_png_is_composited_on_black():
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, :10, 3] = 0  # transparent -> black
    rgba[:, 10:20, 3] = 128  # half transparent -> about half
    rgba[:, 20:, 3] = 255  # opaque -> unchanged
    dec = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    gray = assert_canonical(dec, 40, 40)
    assert dec.info["mode"] == "RGBA" and dec.info["was_color"] is False
    assert gray[:, :10].max() == 0
    assert np.all(np.abs(gray[:, 10:20].astype(int) - 100) <= 1)
    assert np.all(gray[:, 20:] == 200)


def test_la_png_is_composited_on_black():
    la = np.zeros((40, 40, 2), np.uint8)
    la[..., 0] = 180
    la[:20, :, 1] = 255
    dec = decode_image(encode(Image.fromarray(la, "LA"), "PNG"))
    gray = assert_canonical(dec, 40, 40)
    assert np.all(gray[:20] == 180) and np.all(gray[20:] == 0)


def test_cmyk_jpeg():
    cmyk = np.zeros((40, 48, 4), np.uint8)
    cmyk[..., 3] = np.linspace(0, 255, 48).astype(np.uint8)  # black ink ramp only
    dec = decode_image(encode(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=95))
    gray = assert_canonical(dec, 40, 48)
    assert dec.info["mode"] == "CMYK"
    assert dec.info["was_color"] is False
    # More black ink = darker, whatever the Adobe inversion convention.
    assert int(gray[:, :4].mean()) > int(gray[:, -4:].mean()) + 100


def test_palette_png_gray_palette():
    g = (gradient() // 4 * 4).astype(np.uint8)
    img = Image.fromarray(g, "L").convert("P")  # Pillow uses a gray palette
    dec = decode_image(encode(img, "PNG"))
    gray = assert_canonical(dec, 48, 64)
    assert dec.info["mode"] == "P" and dec.info["was_color"] is False
    assert np.abs(gray.astype(int) - g).max() <= 1


def test_palette_png_colour_palette_and_transparency():
    img = Image.fromarray(colour_photo(), "RGB").quantize(colors=8)
    dec = decode_image(encode(img, "PNG"))
    assert_canonical(dec, 48, 64)
    assert dec.info["mode"] == "P" and dec.info["was_color"] is True

    transparent = Image.new("P", (40, 40), 0)
    transparent.putpalette([255, 255, 255] + [0, 0, 0] * 255)
    dec = decode_image(encode(transparent, "PNG", transparency=0))
    assert dec.array.max() == 0  # white but fully transparent -> black


def test_mode_1_bilevel():
    bits = np.zeros((40, 40), bool)
    bits[:, 20:] = True
    dec = decode_image(encode(Image.fromarray(bits), "PNG"))
    gray = assert_canonical(dec, 40, 40)
    assert dec.info["mode"] == "1" and dec.info["bit_depth"] == 1
    assert set(np.unique(gray)) == {0, 255}
    assert np.all(gray[:, 20:] == 255)


def test_exif_orientation_is_applied():
    stored = np.zeros((40, 64), np.uint8)  # stored: 64 wide, 40 high
    stored[:8, :8] = 255  # marker in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = encode(Image.fromarray(stored, "L"), "JPEG", quality=95, exif=exif.tobytes())
    dec = decode_image(data)
    gray = assert_canonical(dec, 64, 40)  # shape swapped
    assert dec.info["exif_orientation"] == 6
    # Clockwise rotation moves the top-left corner to the top-right.
    assert gray[:8, -8:].mean() > 200 and gray[:8, :8].mean() < 50


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "WEBP", "TIFF"])
def test_other_raster_formats(fmt):
    g = gradient()
    kwargs = {"lossless": True} if fmt == "WEBP" else {}
    dec = decode_image(encode(Image.fromarray(g, "L"), fmt, **kwargs))
    gray = assert_canonical(dec, 48, 64)
    assert dec.info["format"] == fmt
    assert np.abs(gray.astype(int) - g).max() <= 2


def test_format_comes_from_content_not_filename():
    png = encode(Image.fromarray(gradient(), "L"), "PNG")
    assert decode_image(png, filename="scan.jpg").info["format"] == "PNG"
    assert decode_image(png, filename="scan.dcm").info["format"] == "PNG"
    dcm = make_dicom(gradient(dtype=np.uint8))
    assert decode_image(dcm, filename="scan.png").info["format"] == "DICOM"


def test_bytearray_and_memoryview_inputs():
    png = encode(Image.fromarray(gradient(), "L"), "PNG")
    assert decode_image(bytearray(png)).array.shape == (48, 64, 3)
    assert decode_image(memoryview(png)).array.shape == (48, 64, 3)
    with pytest.raises(TypeError):
        decode_image("not bytes")  # type: ignore[arg-type]


# ======================================================================================
# DICOM
# ======================================================================================


def test_dicom_monochrome2_16bit():
    raw = gradient(hi=60000, dtype=np.uint16)
    dec = decode_image(make_dicom(raw))
    gray = assert_canonical(dec, 48, 64)
    info = dec.info
    assert info["format"] == "DICOM" and info["mode"] == "MONOCHROME2"
    assert info["bit_depth"] == 16 and info["frames"] == 1
    assert gray[0, 0] == 0 and gray[0, -1] == 255
    assert np.all(np.diff(gray[0].astype(int)) >= 0)
    tags = info["dicom"]
    assert tags["Modality"] == "CR" and tags["BodyPartExamined"] == "CHEST"
    assert tags["ViewPosition"] == "PA" and tags["Manufacturer"] == "Acme Imaging"
    assert tags["Rows"] == 48 and tags["Columns"] == 64 and tags["BitsStored"] == 16
    assert tags["PixelSpacing"] == [0.139, 0.139]
    assert tags["PhotometricInterpretation"] == "MONOCHROME2"
    assert tags["TransferSyntaxUID"] == str(ExplicitVRLittleEndian)


def test_dicom_monochrome1_is_inverted():
    raw = gradient(hi=4095, dtype=np.uint16)
    dec = decode_image(make_dicom(raw, photometric="MONOCHROME1", bits_stored=12))
    gray = assert_canonical(dec, 48, 64)
    assert dec.info["mode"] == "MONOCHROME1"
    assert gray[0, -1] <= 5  # raw maximum -> dark
    assert gray[0, 0] >= 250  # raw minimum -> bright


def test_dicom_12bit_window_center_width():
    raw = gradient(h=40, w=4096, hi=4095, dtype=np.uint16)[:, ::64]  # 64 columns
    raw = np.ascontiguousarray(raw)
    dec = decode_image(make_dicom(raw, bits_stored=12, WindowCenter=1000, WindowWidth=500))
    gray = assert_canonical(dec, 40, 64)
    assert dec.info["bit_depth"] == 12 and dec.info["intensity_scaling"] == "dicom_window"
    row, values = gray[0].astype(int), raw[0].astype(int)
    assert np.all(row[values <= 750] == 0)
    assert np.all(row[values >= 1250] == 255)
    inside = (values > 800) & (values < 1200)
    expected = (values[inside] - 999.5) / 499 + 0.5  # DICOM LINEAR window function
    assert np.all(np.abs(row[inside] - expected * 255) <= 1.5)


def test_dicom_signed_with_rescale_slope_intercept():
    raw = np.tile(np.linspace(-1000, 1000, 64).round().astype(np.int16), (40, 1))
    # No window: percentile range of the rescaled values; order must be preserved.
    dec = decode_image(make_dicom(raw, RescaleSlope=2, RescaleIntercept=-1024))
    gray = assert_canonical(dec, 40, 64)
    assert gray[0, 0] == 0 and gray[0, -1] == 255
    assert np.all(np.diff(gray[0].astype(int)) >= 0)
    assert dec.info["dicom"]["RescaleSlope"] == 2.0
    assert dec.info["dicom"]["RescaleIntercept"] == -1024.0

    # Window given in rescaled units: raw 512 -> 2*512-1024 = 0 = window centre.
    raw2 = np.full((40, 64), 512, np.int16)
    raw2[:, :16] = -1000  # far below the window
    raw2[:, -16:] = 1000  # far above the window
    dec = decode_image(
        make_dicom(raw2, RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=0, WindowWidth=400)
    )
    gray = dec.array[..., 0]
    assert np.all(gray[:, :16] == 0) and np.all(gray[:, -16:] == 255)
    assert np.all(np.abs(gray[:, 30].astype(int) - 128) <= 1)


def test_dicom_8bit_without_window_is_used_as_is():
    g = gradient(dtype=np.uint8)
    dec = decode_image(make_dicom(g))
    assert np.array_equal(dec.array[..., 0], g)
    assert dec.info["intensity_scaling"] == "none"


def test_dicom_voi_lut_sequence_is_applied():
    ds = pydicom.dcmread(io.BytesIO(make_dicom(gradient(hi=255, dtype=np.uint16), bits_stored=8)))
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.add_new(0x00283006, "US", list(range(255, -1, -1)))  # LUTData: inverting LUT
    ds.VOILUTSequence = [item]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    dec = decode_image(buf.getvalue())
    gray = assert_canonical(dec, 48, 64)
    assert dec.info["intensity_scaling"] == "dicom_voi_lut"
    assert gray[0, 0] == 255 and gray[0, -1] == 0


def test_dicom_multiframe_uses_first_frame():
    first = gradient(dtype=np.uint8)
    frames = np.stack([first, np.zeros_like(first), np.full_like(first, 9)])
    dec = decode_image(make_dicom(frames, frames=3))
    gray = assert_canonical(dec, 48, 64)
    assert dec.info["frames"] == 3
    assert np.array_equal(gray, frames[0])


def test_dicom_rgb_is_converted_to_gray():
    rgb = colour_photo()
    dec = decode_image(make_dicom(rgb, photometric="RGB"))
    gray = assert_canonical(dec, 48, 64)
    assert dec.info["mode"] == "RGB" and dec.info["was_color"] is True
    assert np.array_equal(gray, cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))


def test_dicom_without_preamble():
    g = gradient(dtype=np.uint8)
    data = make_dicom(g, preamble=False)
    assert data[128:132] != b"DICM"
    for name in ("image.dcm", None):  # by name, and by its first element (0008,xxxx)
        dec = decode_image(data, filename=name)
        assert dec.info["format"] == "DICOM"
        assert np.array_equal(dec.array[..., 0], g)


def test_dicom_rle_compressed_is_decoded():
    g = gradient(dtype=np.uint8)
    ds = pydicom.dcmread(io.BytesIO(make_dicom(g)))
    ds.compress(RLELossless)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    dec = decode_image(buf.getvalue())
    assert np.array_equal(dec.array[..., 0], g)
    assert dec.info["dicom"]["TransferSyntax"] == "RLE Lossless"


def test_dicom_jpeg_baseline_is_decoded():
    g = gradient(dtype=np.uint8)
    jpeg = encode(Image.fromarray(g, "L"), "JPEG", quality=95)
    data = make_dicom(g, transfer_syntax=JPEGBaseline8Bit, pixel_bytes=encapsulate([jpeg]))
    dec = decode_image(data)
    assert np.abs(dec.array[..., 0].astype(int) - g).max() <= 3


def test_dicom_without_pixel_data():
    with pytest.raises(ImageError) as excinfo:
        decode_image(make_dicom(None))
    assert_rejected(excinfo, "dicom_no_pixels")


def test_dicom_truncated_pixel_data():
    data = make_dicom(gradient(hi=4000, dtype=np.uint16))
    with pytest.raises(ImageError) as excinfo:
        decode_image(data[: len(data) - 1000])
    assert_rejected(excinfo, "truncated")


def test_dicom_identifying_tags_never_reach_info():
    secrets = {
        "PatientName": "Doe^Jane",
        "PatientID": "MRN-555-1234",
        "PatientBirthDate": "20190314",
        "AccessionNumber": "ACC-998877",
        "InstitutionName": "St Example Children's Hospital",
        "ReferringPhysicianName": "House^Gregory",
        "StudyDate": "20240102",
        "OtherPatientIDs": "ALT-4242",
    }
    data = make_dicom(gradient(dtype=np.uint8), StudyInstanceUID="1.2.3.4.5.6.7.8.9", **secrets)
    dec = decode_image(data)
    dumped = json.dumps(dec.info)
    for keyword, value in secrets.items():
        assert keyword not in dumped
        assert value not in dumped and value.split("^")[0] not in dumped
    assert "1.2.3.4.5.6.7.8.9" not in dumped
    assert "StudyInstanceUID" not in dumped and "SOPInstanceUID" not in dumped


def test_dicom_decompression_bomb_checked_before_pixels():
    # Header says 10000 x 10000 but the pixel data is tiny: decoding would say
    # 'truncated', so 'decompression_bomb' proves the header check came first.
    data = make_dicom(np.zeros((8, 8), np.uint16), rows_cols=(10000, 10000))
    with pytest.raises(ImageError) as excinfo:
        decode_image(data)
    assert_rejected(excinfo, "decompression_bomb")


def test_dicom_too_small():
    with pytest.raises(ImageError) as excinfo:
        decode_image(make_dicom(np.zeros((16, 16), np.uint16)))
    assert_rejected(excinfo, "too_small")


# ======================================================================================
# Rejections
# ======================================================================================


def _noise(h: int = 256, w: int = 256) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")


@pytest.mark.parametrize(
    "name, data, code",
    [
        ("empty", b"", "empty"),
        ("text", b"Chest X-ray report: no focal consolidation.\n" * 20, "not_an_image"),
        ("pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< >>\n" * 5, "not_an_image"),
        ("random", np.random.default_rng(1).bytes(4096), "not_an_image"),
        ("zip", b"PK\x03\x04" + bytes(200), "not_an_image"),
        ("html", b"<!DOCTYPE html><html><body>hello</body></html>", "not_an_image"),
        ("heic", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(100), "unsupported"),
        ("png_signature_only", b"\x89PNG\r\n\x1a\n", "truncated"),
    ],
)
def test_rejections_from_bytes(name, data, code):
    with pytest.raises(ImageError) as excinfo:
        decode_image(data)
    assert_rejected(excinfo, code)


def test_empty_message_exact():
    with pytest.raises(ImageError) as excinfo:
        decode_image(b"")
    assert excinfo.value.message == "The file is empty (0 bytes)."


def test_pdf_message_names_pdf():
    with pytest.raises(ImageError) as excinfo:
        decode_image(b"%PDF-1.4\n" + bytes(100))
    assert "PDF" in excinfo.value.message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("keep", [0.5, 0.9, 0.003])
def test_truncated_png_and_jpeg(fmt, keep):
    data = encode(_noise(), fmt)
    cut = data[: max(12, int(len(data) * keep))]
    with pytest.raises(ImageError) as excinfo:
        decode_image(cut)
    assert_rejected(excinfo, "truncated")


def test_corrupt_png_crc():
    data = bytearray(encode(_noise(64, 64), "PNG"))
    data[40:60] = bytes(20)  # smash the IDAT start and its CRC
    with pytest.raises(ImageError) as excinfo:
        decode_image(bytes(data))
    assert excinfo.value.code in ("corrupt", "truncated")
    assert_human_message(excinfo.value)


def test_too_small():
    with pytest.raises(ImageError) as excinfo:
        decode_image(encode(Image.new("L", (10, 10), 128), "PNG"))
    assert_rejected(excinfo, "too_small")
    msg = excinfo.value.message
    assert str(MIN_SIDE) in msg and "10 x 10" in msg


def test_minimum_size_is_accepted():
    dec = decode_image(encode(Image.new("L", (MIN_SIDE, MIN_SIDE), 128), "PNG"))
    assert dec.array.shape == (MIN_SIDE, MIN_SIDE, 3)


def test_too_large_side():
    data = encode(Image.new("1", (imageio.MAX_SIDE + 1, 40)), "PNG")
    with pytest.raises(ImageError) as excinfo:
        decode_image(data)
    assert_rejected(excinfo, "too_large")
    assert str(imageio.MAX_SIDE) in excinfo.value.message


def test_decompression_bomb_from_header():
    # 8000 x 8000 = 64 MP > MAX_PIXELS (50 MP), below Pillow's own warning level.
    with pytest.raises(ImageError) as excinfo:
        decode_image(png_header_only(8000, 8000))
    assert_rejected(excinfo, "decompression_bomb")


def test_decompression_bomb_caught_from_pillow():
    # 15000 x 15000 = 225 MP: Pillow itself raises DecompressionBombError in open().
    with pytest.raises(ImageError) as excinfo:
        decode_image(png_header_only(15000, 15000))
    assert_rejected(excinfo, "decompression_bomb")


def test_decompression_bomb_real_image_with_lower_limit(monkeypatch):
    # A real, tiny-to-store bilevel image rejected by a lowered limit.
    data = encode(Image.new("1", (1200, 1200)), "PNG")
    assert len(data) < 5000
    monkeypatch.setattr(imageio, "MAX_PIXELS", 1_000_000)
    with pytest.raises(ImageError) as excinfo:
        decode_image(data)
    assert_rejected(excinfo, "decompression_bomb")


def test_file_over_max_bytes(monkeypatch, tmp_path):
    data = encode(_noise(64, 64), "PNG")
    monkeypatch.setattr(imageio, "MAX_BYTES", len(data) - 1)
    with pytest.raises(ImageError) as excinfo:
        decode_image(data)
    assert_rejected(excinfo, "too_large")

    path = tmp_path / "big.png"
    path.write_bytes(data)
    with pytest.raises(ImageError) as excinfo:
        load_image(path)
    assert_rejected(excinfo, "too_large")


def test_missing_file(tmp_path):
    with pytest.raises(ImageError) as excinfo:
        load_image(tmp_path / "nope.png")
    assert_rejected(excinfo, "not_found")
    with pytest.raises(ImageError) as excinfo:
        load_image(tmp_path)  # a folder is not a file
    assert_rejected(excinfo, "not_a_file")


def test_load_image_reads_file(tmp_path):
    path = tmp_path / "xray.png"
    path.write_bytes(encode(Image.fromarray(gradient(), "L"), "PNG"))
    dec = load_image(path)
    assert np.array_equal(dec.array[..., 0], gradient())
    assert load_image(str(path)).info == dec.info
    assert "xray" not in json.dumps(dec.info)  # file names may identify patients


def test_unexpected_exception_is_wrapped(monkeypatch, caplog):
    def boom(img):
        raise RuntimeError("internal failure")

    monkeypatch.setattr(imageio, "_pil_to_numpy", boom)
    with caplog.at_level("ERROR", logger="core.imageio"):
        with pytest.raises(ImageError) as excinfo:
            decode_image(encode(Image.fromarray(gradient(), "L"), "PNG"))
    assert_rejected(excinfo, "corrupt")
    assert "internal failure" not in excinfo.value.message
    assert any("Unexpected error" in r.getMessage() for r in caplog.records)


def _valid_samples() -> dict[str, bytes]:
    g = gradient()
    return {
        "png": encode(Image.fromarray(g, "L"), "PNG"),
        "png16": encode(Image.fromarray(gradient(hi=4095, dtype=np.uint16)), "PNG"),
        "jpeg": encode(Image.fromarray(colour_photo(), "RGB"), "JPEG"),
        "tiff": encode(Image.fromarray(g, "L"), "TIFF"),
        "gif": encode(Image.fromarray(g, "L"), "GIF"),
        "bmp": encode(Image.fromarray(g, "L"), "BMP"),
        "webp": encode(Image.fromarray(g, "L"), "WEBP"),
        "dicom": make_dicom(gradient(hi=4095, dtype=np.uint16), bits_stored=12),
    }


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about broken TIFF tags
def test_fuzzed_inputs_only_ever_raise_image_error():
    """Random byte flips, cuts and splices: a DecodedImage or an ImageError, nothing else."""
    rng = np.random.default_rng(1234)
    for name, data in _valid_samples().items():
        for trial in range(30):
            buf = bytearray(data)
            kind = trial % 3
            if kind == 0:  # flip a few bytes anywhere
                for pos in rng.integers(0, len(buf), int(rng.integers(1, 12))):
                    buf[pos] = int(rng.integers(0, 256))
            elif kind == 1:  # cut at a random place
                buf = buf[: int(rng.integers(1, len(buf)))]
            else:  # overwrite a run of bytes after the signature
                start = int(rng.integers(8, len(buf) - 1))
                run = rng.bytes(int(rng.integers(1, 64)))
                buf[start : start + len(run)] = run
            try:
                dec = decode_image(bytes(buf))
            except ImageError as err:
                assert err.code in imageio.ERROR_CODES, (name, trial, err.code)
                assert_human_message(err)
            else:
                assert dec.array.ndim == 3 and dec.array.dtype == np.uint8
                json.dumps(dec.info)


def test_image_error_api():
    err = ImageError("too_small", "The image is too small.")
    assert err.code == "too_small" and err.message == "The image is too small."
    assert str(err) == err.message and isinstance(err, ValueError)
    clone = pickle.loads(pickle.dumps(err))
    assert (clone.code, clone.message) == (err.code, err.message)


# ======================================================================================
# to_grayscale_rgb
# ======================================================================================


def _is_gray_rgb(a: np.ndarray, h: int, w: int) -> bool:
    return (
        a.shape == (h, w, 3)
        and a.dtype == np.uint8
        and np.array_equal(a[..., 0], a[..., 1])
        and np.array_equal(a[..., 0], a[..., 2])
    )


def test_to_grayscale_rgb_uint8_layouts():
    g = gradient()
    for layout in (g, g[..., None], np.stack([g, g, g], axis=2)):
        out = to_grayscale_rgb(layout)
        assert _is_gray_rgb(out, 48, 64) and np.array_equal(out[..., 0], g)

    rgb = colour_photo()
    out = to_grayscale_rgb(rgb)
    assert _is_gray_rgb(out, 48, 64)
    assert np.array_equal(out[..., 0], cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))

    rgba = np.dstack([np.stack([g, g, g], axis=2), np.full_like(g, 255)])
    assert np.array_equal(to_grayscale_rgb(rgba)[..., 0], g)
    rgba[..., 3] = 0
    assert to_grayscale_rgb(rgba).max() == 0  # transparent -> black

    la = np.dstack([g, np.full_like(g, 255)])
    assert np.array_equal(to_grayscale_rgb(la)[..., 0], g)


def test_to_grayscale_rgb_high_bit_depth_and_float():
    raw12 = gradient(hi=4095, dtype=np.uint16)
    out = to_grayscale_rgb(raw12)
    assert _is_gray_rgb(out, 48, 64) and out[0, 0, 0] == 0 and out[0, -1, 0] == 255

    out = to_grayscale_rgb(np.stack([raw12] * 3, axis=2))  # 16-bit RGB
    assert _is_gray_rgb(out, 48, 64) and out[0, -1, 0] == 255

    unit = gradient().astype(np.float32) / 255.0
    assert np.array_equal(to_grayscale_rgb(unit)[..., 0], gradient())
    assert np.array_equal(to_grayscale_rgb(gradient().astype(np.float64))[..., 0], gradient())

    hu = gradient().astype(np.float64) * 10 - 1000  # arbitrary range -> percentiles
    out = to_grayscale_rgb(hu)
    assert out[0, 0, 0] == 0 and out[0, -1, 0] == 255

    with_nan = unit.copy()
    with_nan[0, 0] = np.nan
    out = to_grayscale_rgb(with_nan)
    assert out[0, 0, 0] == 0 and out[0, -1, 0] == 255

    signed = (gradient().astype(np.int16) - 128)
    out = to_grayscale_rgb(signed)
    assert out[0, 0, 0] == 0 and out[0, -1, 0] == 255

    bits = np.zeros((40, 40), bool)
    bits[:, 20:] = True
    assert set(np.unique(to_grayscale_rgb(bits))) == {0, 255}


@pytest.mark.parametrize(
    "bad",
    [np.zeros((4,), np.uint8), np.zeros((4, 4, 5), np.uint8), np.zeros((2, 4, 4, 3), np.uint8),
     np.zeros((0, 4), np.uint8), np.array([["a", "b"]])],
)
def test_to_grayscale_rgb_rejects_bad_layouts(bad):
    with pytest.raises(ValueError):
        to_grayscale_rgb(bad)


# ======================================================================================
# resize_for_model
# ======================================================================================


def test_resize_shrink_uses_area_and_is_deterministic():
    rng = np.random.default_rng(7)
    img = to_grayscale_rgb(rng.integers(0, 256, (300, 200), dtype=np.uint8))
    out = resize_for_model(img, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert np.array_equal(out, cv2.resize(img, (64, 64), interpolation=cv2.INTER_AREA))
    assert np.array_equal(out, resize_for_model(img.copy(), 64))  # deterministic
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])


def test_resize_enlarge_uses_linear():
    img = to_grayscale_rgb(gradient(h=40, w=40))
    out = resize_for_model(img, 128)
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8
    assert np.array_equal(out, cv2.resize(img, (128, 128), interpolation=cv2.INTER_LINEAR))


def test_resize_mixed_aspect_and_identity():
    img = to_grayscale_rgb(gradient(h=200, w=40))
    assert resize_for_model(img, 64).shape == (64, 64, 3)  # no aspect ratio kept
    same = resize_for_model(img[:40, :40].copy(), 40)
    assert np.array_equal(same, img[:40, :40])
    non_contiguous = img[::2, ::2]
    assert resize_for_model(non_contiguous, 32).shape == (32, 32, 3)


@pytest.mark.parametrize(
    "arr, size",
    [
        (np.zeros((40, 40), np.uint8), 32),
        (np.zeros((40, 40, 3), np.float32), 32),
        (np.zeros((40, 40, 4), np.uint8), 32),
        (np.zeros((40, 40, 3), np.uint8), 0),
        (np.zeros((40, 40, 3), np.uint8), 32.0),
    ],
)
def test_resize_rejects_bad_input(arr, size):
    with pytest.raises(ValueError):
        resize_for_model(arr, size)


# ======================================================================================
# Real data (optional)
# ======================================================================================


def test_committed_samples_decode(sample_root):
    paths = sorted(sample_root.glob("*/*/*.jp*g"))
    if not paths:
        pytest.skip("no committed samples")
    for path in paths:
        dec = load_image(path)
        assert_canonical(dec, dec.info["height"], dec.info["width"])
        assert dec.info["was_color"] is False, path


@pytest.mark.data
def test_real_dataset_jpegs_decode(full_data_root):
    root = Path(full_data_root)
    if not root.is_dir():
        pytest.skip(f"chest_xray dataset not available at {root}")
    train = sorted((root / "train").glob("*/*.jp*g"))
    val = sorted((root / "val").glob("*/*.jp*g"))
    if not train or not val:
        pytest.skip("dataset folders are incomplete")

    for path in (train[0], val[0]):
        dec = load_image(path)
        h, w = dec.info["height"], dec.info["width"]
        assert_canonical(dec, h, w)
        assert dec.info["format"] == "JPEG"
        assert dec.info["was_color"] is False  # X-rays, even when stored as RGB
        assert min(h, w) >= MIN_SIDE
        assert resize_for_model(dec.array, 64).shape == (64, 64, 3)
    # The val images are full resolution, unlike the resized train set.
    assert max(load_image(val[0]).array.shape[:2]) > 224


# ======================================================================================
# Issue 14: 16-bit colour at full depth, NaN/inf pixels, bounded-memory scaling
# ======================================================================================


def _xray10bit(h: int = 96, w: int = 80) -> np.ndarray:
    """A 10-bit 'radiograph': a structured ramp with values 0..1023 (only the low byte varies a lot)."""
    yy, xx = np.mgrid[0:h, 0:w]
    return ((np.sin(xx / 7.0) + np.cos(yy / 5.0) + 2) / 4 * 1023).round().astype(np.uint16)


@pytest.mark.parametrize("ext", [".png", ".tif"])
@pytest.mark.parametrize("alpha", [False, True])
def test_16bit_colour_png_and_tiff_keep_full_depth(ext, alpha):
    """Pillow keeps only the high byte of 16-bit colour: a 10-bit X-ray came out nearly uniform."""
    grey = _xray10bit()
    planes = [grey, grey, grey] + ([np.full_like(grey, 65535)] if alpha else [])
    ok, buf = cv2.imencode(ext, np.dstack(planes))  # cv2 writes BGR(A); grey so channel order is moot
    assert ok
    dec = decode_image(buf.tobytes())
    ref = decode_image(cv2.imencode(".png", grey)[1].tobytes())  # 16-bit grey PNG: full depth already
    assert dec.info["bit_depth"] == 16 and dec.info["mode"].endswith(";16")
    assert dec.info["intensity_scaling"] == "percentile"
    assert dec.array.std() > 40  # was ~1 (values 0..3 after truncation)
    assert np.abs(dec.array.astype(int) - ref.array.astype(int)).max() <= 1  # mapped like 16-bit grey


def test_16bit_colour_png_keeps_channel_order_and_colour():
    grey = _xray10bit()
    rgb = np.dstack([grey, np.zeros_like(grey), np.zeros_like(grey)])  # pure red
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    dec = decode_image(buf.tobytes())
    assert dec.info["was_color"] and dec.original_rgb is not None
    assert dec.original_rgb[..., 0].mean() > 50 and dec.original_rgb[..., 2].max() == 0


def test_16bit_colour_png_truncated_is_a_typed_error():
    grey = _xray10bit(200, 200)
    ok, buf = cv2.imencode(".png", np.dstack([grey, grey, grey]))
    with pytest.raises(ImageError) as e:
        decode_image(buf.tobytes()[: len(buf) // 2])
    assert e.value.code in ("truncated", "corrupt")


def _float_tiff(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a.astype(np.float32), mode="F").save(buf, format="TIFF")
    return buf.getvalue()


def test_nan_and_inf_pixels_are_counted():
    a = (_xray10bit() / 1023.0).astype(np.float32)
    a[:3] = np.nan  # 3 of 96 rows
    a[10, :4] = np.inf
    a[11, :2] = -np.inf
    dec = decode_image(_float_tiff(a))
    n = 3 * a.shape[1] + 6
    assert dec.info["nonfinite_pixels"] == n
    assert dec.info["nonfinite_fraction"] == pytest.approx(n / a.size, abs=1e-6)
    clean = decode_image(_float_tiff(np.nan_to_num(a, nan=0.5, posinf=0.5, neginf=0.5)))
    assert "nonfinite_pixels" not in clean.info


def test_float_dicom_nan_pixels_are_counted():
    a = _xray10bit().astype(np.float32)
    a[:30] = np.nan
    ds = pydicom.dcmread(io.BytesIO(make_dicom(_xray10bit())), force=True)
    del ds.PixelData
    ds.BitsAllocated = 32
    for k in ("BitsStored", "HighBit", "PixelRepresentation"):
        if k in ds:
            delattr(ds, k)
    ds.FloatPixelData = a.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    dec = decode_image(buf.getvalue())
    assert dec.info["nonfinite_fraction"] == pytest.approx(30 / 96, abs=1e-4)


def test_chunked_scaling_equals_the_one_shot_formula(monkeypatch):
    a = np.random.default_rng(3).normal(500, 200, (301, 77)).astype(np.float64)
    a[5, 5], a[6, 6], a[7, 7] = np.nan, np.inf, -np.inf
    x = (a.astype(np.float32) - np.float32(100)) * np.float32(255.0 / 800)
    expected = np.rint(np.clip(np.nan_to_num(x, nan=0, posinf=255, neginf=0), 0, 255)).astype(np.uint8)
    monkeypatch.setattr(imageio, "_block_rows", lambda arr: 7)  # many blocks, ragged last one
    assert np.array_equal(imageio._scale_to_uint8(a, 100.0, 900.0), expected)
    assert imageio.nonfinite_pixels(a) == 3


def test_upload_batch_limits():
    assert imageio.batch_limit_error([1024] * imageio.MAX_UPLOAD_FILES) is None
    msg = imageio.batch_limit_error([10] * (imageio.MAX_UPLOAD_FILES + 1))
    assert "Too many files" in msg and str(imageio.MAX_UPLOAD_FILES) in msg
    msg = imageio.batch_limit_error([imageio.MAX_UPLOAD_TOTAL_BYTES // 2 + 1] * 2)
    assert "too large together" in msg and "200 MB" in msg
    assert "50 files and 200 MB in total" in imageio.upload_limits_text()


def test_16bit_rgb_dicom_keeps_full_depth():
    """The README's claim covers DICOM too: 16-bit colour samples are not truncated."""
    grey = _xray10bit()
    dec = decode_image(make_dicom(np.dstack([grey, grey, grey]), photometric="RGB", bits_stored=16))
    ref = decode_image(cv2.imencode(".png", grey)[1].tobytes())
    assert dec.array.std() > 40
    assert np.abs(dec.array.astype(int) - ref.array.astype(int)).max() <= 1


# ======================================================================================
# What a format declares, checked before its decoder runs (issue 21)
# ======================================================================================
# The full-size bombs of the issue live in benchmarks/hostile_files.py (bench_hostile.py runs
# them); here each class is built small, or header-only: the checks must refuse it before a
# single pixel is decoded.

from benchmarks import hostile_files as hostile  # noqa: E402


def _png_header_only(width: int, height: int, colour_type: int, bit_depth: int, trns: bool = False) -> bytes:
    """A PNG with a real IHDR (and PLTE/tRNS) but a cut-off IDAT: enough for Pillow to open it
    (header only), nothing a decoder could expand."""
    from benchmarks.hostile_files import _chunk

    out = [b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0))]
    if colour_type == 3:
        out.append(_chunk(b"PLTE", b"\x00\x00\x00\xff\xff\xff"))
        if trns:
            out.append(_chunk(b"tRNS", b"\x00"))
    out.append(_chunk(b"IDAT", zlib.compress(b"\x00" * 64)))
    return b"".join(out) + b"\x00" * 2048  # no IEND


@pytest.mark.parametrize("colour_type,bit_depth,trns", [(6, 16, False), (4, 16, False), (2, 16, False),
                                                         (6, 8, False), (3, 8, True)])
def test_near_50_megapixel_expansions_are_estimated_before_decoding(colour_type, bit_depth, trns):
    data = _png_header_only(7000, 7000, colour_type, bit_depth, trns)
    img = Image.open(io.BytesIO(data))
    per_pixel = imageio.raster_bytes_per_pixel(img, data, "PNG")
    img.close()
    need = 7000 * 7000 * per_pixel
    if need > imageio.MAX_DECODE_BYTES:
        with pytest.raises(ImageError) as excinfo:
            decode_image(data)
        assert_rejected(excinfo, "memory_limit")
        assert "megapixels" in excinfo.value.message and "MB" in excinfo.value.message
    else:  # within the budget: the decoder runs and finds the data cut off
        with pytest.raises(ImageError) as excinfo:
            decode_image(data)
        assert excinfo.value.code in ("truncated", "corrupt")


def test_the_estimate_grows_with_what_the_pixels_expand_to():
    def per_pixel(colour_type: int, bit_depth: int, trns: bool = False) -> float:
        data = _png_header_only(100, 100, colour_type, bit_depth, trns)
        img = Image.open(io.BytesIO(data))
        try:
            return imageio.raster_bytes_per_pixel(img, data, "PNG")
        finally:
            img.close()

    grey8, grey16, rgba8, rgba16 = per_pixel(0, 8), per_pixel(0, 16), per_pixel(6, 8), per_pixel(6, 16)
    palette, palette_alpha = per_pixel(3, 8), per_pixel(3, 8, trns=True)
    assert grey8 < grey16 < rgba8 < rgba16
    assert grey8 < palette < palette_alpha  # a palette expands to RGB, with tRNS to RGBA
    # the 16-bit RGBA bomb of the issue (49 MP) is over the budget, an 8-bit grey film of the
    # same size is not
    assert 49e6 * rgba16 > imageio.MAX_DECODE_BYTES > 49e6 * grey8


def test_budget_refusal_names_the_need_and_the_limit(monkeypatch):
    monkeypatch.setattr(imageio, "MAX_DECODE_BYTES", 2 * 2**20)
    with pytest.raises(ImageError) as excinfo:
        decode_image(hostile.webp_rgba(side=1000))
    assert_rejected(excinfo, "memory_limit")
    assert "WEBP" in excinfo.value.message and "2 MB allowed" in excinfo.value.message


def test_deflated_dicom_is_inflated_with_a_bound_before_pydicom_reads_it():
    import resource

    bomb = hostile.deflate_dicom(zeros_mb=400)  # ~400 KB that inflate to 400 MB
    assert len(bomb) < 1_000_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageError) as excinfo:
        decode_image(bomb, "x.dcm")
    assert_rejected(excinfo, "memory_limit")
    assert "deflate" in excinfo.value.message
    # counted in 16 MB pieces, never held: the peak does not move by the inflated size
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024 < 100 * 2**20


def test_a_small_deflated_dicom_still_decodes():
    ok = decode_image(hostile.deflate_dicom(zeros_mb=1), "x.dcm")
    assert ok.info["format"] == "DICOM"
    assert ok.info["dicom"]["TransferSyntaxUID"] == "1.2.840.10008.1.2.1.99"
    assert ok.array.shape == (512, 512, 3)


def test_deflated_data_set_limit_is_a_setting(monkeypatch):
    monkeypatch.setattr(imageio, "MAX_DICOM_DATASET_BYTES", 512 * 1024)
    with pytest.raises(ImageError) as excinfo:
        decode_image(hostile.deflate_dicom(zeros_mb=1), "x.dcm")
    assert_rejected(excinfo, "memory_limit")


@pytest.mark.parametrize("make", [hostile.dicom_j2k_codestream, hostile.dicom_jpeg_codestream])
def test_compressed_frame_larger_than_the_dicom_header_is_refused(make):
    with pytest.raises(ImageError) as excinfo:
        decode_image(make(claim=13000, header=512), "x.dcm")
    assert_rejected(excinfo, "corrupt")
    assert "13000 x 13000" in excinfo.value.message and "512 x 512" in excinfo.value.message


def test_jp2_whose_codestream_is_larger_than_its_header_is_refused():
    rgb = np.dstack([hostile._film(64)] * 3)
    jp2 = encode(Image.fromarray(rgb), "JPEG2000")  # JP2 boxes: the size Pillow reports is the 'ihdr' box's
    assert decode_image(jp2).array.shape == (64, 64, 3)
    with pytest.raises(ImageError) as excinfo:
        decode_image(hostile._patch_siz(jp2, 13000, 13000))
    assert_rejected(excinfo, "corrupt")
    assert "13000 x 13000" in excinfo.value.message


def test_compressed_frame_that_matches_its_header_decodes():
    rgb = np.dstack([hostile._film(64)] * 3)
    frame = hostile.j2k_codestream(rgb)
    data = hostile._dicom(frame, rows=64, cols=64, tsyntax="1.2.840.10008.1.2.4.90", samples=3,
                          photometric="RGB", encapsulate=True)
    assert decode_image(data, "x.dcm").array.shape == (64, 64, 3)
    assert imageio.codestream_size(frame) == (64, 64, 3, 1)
    jpeg = hostile.jpeg_bytes(hostile._film(64))
    assert imageio.codestream_size(jpeg) == (64, 64, 1, 1)


def test_progressive_jpeg_with_too_many_scans_is_refused_unread():
    data = hostile.progressive_jpeg(scans=500, side=256)
    with pytest.raises(ImageError) as excinfo:
        decode_image(data)
    assert_rejected(excinfo, "time_limit")
    assert "500 scans" in excinfo.value.message
    normal = hostile.jpeg_bytes(hostile._film(256), progressive=True)
    assert decode_image(normal).info["format"] == "JPEG"


def test_alpha_blending_in_blocks_equals_the_one_shot_formula(monkeypatch):
    rng = np.random.default_rng(3)
    u8 = rng.integers(0, 256, (301, 257, 3), dtype=np.uint8)
    for alpha in (rng.integers(0, 65536, (301, 257), dtype=np.uint16), rng.random((301, 257), np.float32),
                  rng.integers(0, 2, (301, 257)).astype(bool)):
        monkeypatch.setattr(imageio, "_BLOCK_BYTES", 257 * 3 * 4 * 17)  # blocks of 17 rows, the last short
        got = imageio._composite_on_black(u8, alpha)
        if alpha.dtype == np.bool_:
            unit = alpha.astype(np.float32)
        elif alpha.dtype.kind == "u":
            unit = alpha.astype(np.float32) / np.float32(65535)
        else:
            unit = np.clip(alpha, 0, 1)
        assert np.array_equal(got, np.rint(u8.astype(np.float32) * unit[..., None]).astype(np.uint8))
    opaque = np.full((301, 257), 255, np.uint8)
    assert imageio._composite_on_black(u8, opaque) is u8


@pytest.mark.parametrize("extra", ["window", "voi_lut", "rescale_only", "none"])
def test_dicom_grey_in_blocks_equals_pydicom_on_the_whole_image(extra, monkeypatch):
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    rng = np.random.default_rng(7)
    arr = rng.integers(0, 4096, (700, 300), dtype=np.uint16)
    ds = Dataset()
    ds.BitsStored, ds.BitsAllocated, ds.PixelRepresentation = 12, 16, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    if extra != "none":
        ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-20"
    if extra == "window":
        ds.WindowCenter, ds.WindowWidth = "900", "1500"
    if extra == "voi_lut":
        item = Dataset()
        item.LUTDescriptor = [4096, -20, 16]
        item.LUTData = [int(v) for v in np.linspace(0, 65535, 4096)]
        ds.VOILUTSequence = [item]
    monkeypatch.setattr(imageio, "_subgrid", lambda a: a)  # percentiles on every pixel, both ways
    whole = apply_modality_lut(arr, ds)
    if extra == "voi_lut":
        out = apply_voi_lut(whole, ds, prefer_lut=True)
        expected = imageio._scale_to_uint8(out, float(out.min()), float(out.max()))
    elif extra == "window":
        ends = apply_voi_lut(np.array([-1e30, 1e30]), ds, prefer_lut=False)
        expected = imageio._scale_to_uint8(apply_voi_lut(whole, ds, prefer_lut=False), ends[0], ends[1])
    else:
        expected = imageio._to_uint8(np.asarray(whole))[0]
    monkeypatch.setattr(imageio, "_BLOCK_BYTES", 300 * 8 * 64)  # blocks of 64 rows: 11 blocks, the last short
    seen = []
    real_modality = apply_modality_lut
    monkeypatch.setattr("pydicom.pixels.apply_modality_lut", lambda a, d: seen.append(a.shape) or real_modality(a, d))
    got, _, _ = imageio._dicom_mono_to_uint8(arr, ds)
    assert (64, 300) in seen and (700 - 640, 300) in seen  # really worked in blocks
    assert np.array_equal(got, expected)


def test_resize_for_model_reduces_large_images_like_the_working_copy():
    rng = np.random.default_rng(11)
    gray = rng.integers(0, 256, (3100, 2300), dtype=np.uint8)
    full = np.repeat(gray[:, :, None], 3, axis=2)
    png_bytes = cv2.imencode(".png", gray)[1].tobytes()
    working = decode_image(png_bytes, max_side=imageio.WORK_MAX_SIDE)
    assert max(working.array.shape[:2]) == imageio.WORK_MAX_SIDE
    assert working.info["reduced_to"] == [working.array.shape[1], working.array.shape[0]]
    assert np.array_equal(resize_for_model(full, 64), resize_for_model(working.array, 64))
    assert np.array_equal(resize_for_model(full, 224), resize_for_model(working.array, 224))


# --- what counts as an image input: content, not the name (issue 22) -------------------------------
def _formats_by_content() -> dict[str, bytes]:
    grey = np.tile(np.arange(64, dtype=np.uint8), (64, 1))
    img = Image.fromarray(grey)
    out = {fmt: encode(img, fmt) for fmt in ("PNG", "JPEG", "TIFF", "BMP", "GIF")}
    if imageio._pil_feature("webp"):
        out["WEBP"] = encode(img, "WEBP")
    out["DICOM"] = make_dicom(grey)
    return out


def test_sniff_format_reads_content_and_every_format_has_its_file_endings():
    for fmt, data in _formats_by_content().items():
        assert imageio.sniff_format(data[: imageio.SNIFF_BYTES]) == fmt
        assert decode_image(data).info["format"]  # what the sniff calls an image, the decoder reads
    # A data set without the 128-byte preamble is DICOM by the decoder's own rule.
    bare = make_dicom(np.zeros((64, 64), np.uint8), preamble=False)
    assert imageio.sniff_format(bare[:64]) == "DICOM" and decode_image(bare).info["format"] == "DICOM"
    for not_image in (b"", b"hello, notes", b"%PDF-1.4\n", b"PK\x03\x04rest", bytes(range(1, 200))):
        assert imageio.sniff_format(not_image) is None
    # The one list of endings covers every format the dispatcher decodes (and nothing else).
    assert set(imageio.FORMAT_SUFFIXES) == set(imageio._PIL_FORMATS) | {"DICOM"}
    assert imageio.IMAGE_SUFFIXES == {s for v in imageio.FORMAT_SUFFIXES.values() for s in v}
    assert {".png", ".jpeg", ".jpg", ".dcm", ".dicom", ".tif", ".tiff", ".bmp"} <= imageio.IMAGE_SUFFIXES


def test_describe_content_says_what_a_skipped_file_is():
    assert imageio.describe_content(b"") == "empty"
    assert imageio.describe_content(b"some notes\n") == "text"
    assert imageio.describe_content(b"%PDF-1.7\n") == "a PDF document"
    assert imageio.describe_content(b"PK\x03\x04") == "a ZIP archive or an office document (e.g. Word)"
    assert imageio.describe_content(bytes(range(256))) == "unrecognised data"


def test_image_file_check_decides_by_content_and_never_opens_pipes(tmp_path):
    import os

    from helpers import run_with_timeout

    dcm = make_dicom(np.zeros((64, 64), np.uint8))
    (tmp_path / "IMG0001").write_bytes(dcm)
    (tmp_path / "scan.dicom").write_bytes(dcm)
    (tmp_path / "photo.txt").write_bytes(encode(Image.new("L", (64, 64)), "PNG"))  # a PNG misnamed .txt
    (tmp_path / "damaged.jpeg").write_text("not really a JPEG")  # the name says image: the decoder reports it
    (tmp_path / "notes.txt").write_text("notes")
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(100))
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "link.png").symlink_to(tmp_path / "gone.png")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "IMG0002").write_bytes(dcm)
    check = imageio.image_file_check
    assert check(tmp_path / "IMG0001") is None and check(tmp_path / "scan.dicom") is None
    assert check(tmp_path / "photo.txt") is None and check(tmp_path / "damaged.jpeg") is None
    assert check(tmp_path / "notes.txt") == "not an image (text)"
    assert check(tmp_path / "empty") == "not an image (empty)"
    assert run_with_timeout(lambda: check(tmp_path / "pipe.png"), 10) == "not a regular file (a named pipe (FIFO))"
    assert check(tmp_path / "link.png") == "not a regular file (a broken link)"
    assert check(tmp_path / "sub") == "not a regular file (a folder)"

    scan = run_with_timeout(lambda: imageio.scan_folder(tmp_path), 10)
    names = [p.relative_to(tmp_path).as_posix() for p in scan.images]
    assert names == ["IMG0001", "damaged.jpeg", "photo.txt", "scan.dicom", "sub/IMG0002"]
    skipped = {p.name: why for p, why in scan.skipped}
    assert set(skipped) == {".DS_Store", "empty", "link.png", "notes.txt", "pipe.png"}
    flat = imageio.scan_folder(tmp_path, recursive=False, hidden=False)
    assert "sub/IMG0002" not in [p.relative_to(tmp_path).as_posix() for p in flat.images]
    assert ".DS_Store" not in {p.name for p, _ in flat.skipped}


def test_read_head_is_bounded_and_refuses_devices(tmp_path):
    import os

    from helpers import run_with_timeout

    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 100_000)
    assert imageio.read_head(big) == b"x" * imageio.SNIFF_BYTES
    assert imageio.read_head(big, 10) == b"x" * 10
    os.mkfifo(tmp_path / "fifo")

    def fifo_error():
        try:
            imageio.read_head(tmp_path / "fifo")
        except ImageError as err:
            return err.code
        return None

    assert run_with_timeout(fifo_error, 10) == "not_a_file"
    with pytest.raises(ImageError) as e:
        imageio.read_head("/dev/zero")
    assert e.value.code == "not_a_file"
    with pytest.raises(ImageError) as e:
        imageio.read_head(tmp_path / "missing")
    assert e.value.code == "not_found"


# --- moved from test_issue16_helpers.py: shrink the longest side (core.imageio.shrink_to) ----------
@pytest.mark.parametrize("shape,side,want", [
    ((1000, 400, 3), 256, (256, 102, 3)), ((400, 1000), 100, (40, 100)), ((3000, 1, 3), 300, (300, 1, 3)),
])
def test_shrink_to_keeps_the_aspect_ratio(shape, side, want):
    from core.imageio import shrink_to

    a = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    out = shrink_to(a, side)
    assert out.shape == want and out.dtype == np.uint8
    # INTER_AREA averages: the mean grey is kept (no aliasing, no new range).
    assert abs(float(out.mean()) - float(a.mean())) < 4


def test_shrink_to_returns_small_images_as_they_are_and_checks_the_side():
    from core.imageio import shrink_to

    a = np.zeros((200, 100, 3), np.uint8)
    assert shrink_to(a, 200) is a and shrink_to(a, 999) is a
    for bad in (0, -5, True, "256"):
        with pytest.raises(ValueError):
            shrink_to(a, bad)

"""DICOM transfer syntaxes a PACS sends (issue 26): each decodes, through the isolated decoder,
to the same pixels (lossless) or nearly (lossy) and the same verdict as the uncompressed film;
a syntax no installed decoder supports says so and what it needs; "damaged" only when a capable
decoder rejected the data; no library traceback reaches the terminal.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dicom_syntaxes as S
from core import imageio
from core.decode_pool import decode_untrusted
from core.imageio import ImageError, decode_image

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.pixels import get_decoder  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def reference():
    return decode_untrusted(S.film_in(S.EXPLICIT), "film.dcm")


@pytest.mark.parametrize("tsyntax", S.LOSSLESS)
def test_lossless_syntaxes_decode_to_the_uncompressed_film(tsyntax, reference):
    d = decode_untrusted(S.film_in(tsyntax), "film.dcm")
    assert d.info["dicom"]["TransferSyntaxUID"] == tsyntax
    assert d.info["bit_depth"] == 12
    assert np.array_equal(d.array, reference.array)


@pytest.mark.parametrize("tsyntax", S.LOSSY)
def test_lossy_syntaxes_decode_close_to_the_uncompressed_film(tsyntax, reference):
    d = decode_untrusted(S.film_in(tsyntax), "film.dcm")
    assert d.info["dicom"]["TransferSyntaxUID"] == tsyntax
    if tsyntax == S.JPEG_BASELINE:  # an 8-bit film: compare with the 8-bit original
        import cv2

        ref = cv2.imread(str(S.FILM), cv2.IMREAD_GRAYSCALE).astype(int)
    else:
        ref = reference.array[..., 0].astype(int)
    err = np.abs(d.array[..., 0].astype(int) - ref)
    assert err.mean() < 2.0 and np.percentile(err, 99) <= 12, (err.mean(), err.max())


def test_every_syntax_gives_the_uncompressed_films_verdict():
    """The shipped model, the served path (isolated decode, guard, calibration)."""
    from core.predict import Predictor
    from core.registry import Registry

    registry = Registry(REPO / "artifacts")
    if registry.active_version() is None:
        pytest.skip("no shipped model in artifacts/")
    pred = Predictor.from_registry(registry)
    names = [S.EXPLICIT, *S.LOSSLESS[1:], *S.LOSSY]
    out = pred.predict_bytes([(f"{ts}.dcm", S.film_in(ts)) for ts in names])
    by = dict(zip(names, out))
    ref = by[S.EXPLICIT]
    assert ref.ok and ref.guard_status != "rejected", ref.guard_message
    for ts in S.LOSSLESS:
        p = by[ts]
        assert (p.label, p.guard_code) == (ref.label, ref.guard_code), ts
        assert abs(p.probability - ref.probability) < 1e-6, ts
    for ts in S.LOSSY:
        p = by[ts]
        assert p.ok and p.label == ref.label, (ts, p.label, p.probability, ref.probability)
        assert abs(p.probability - ref.probability) < 0.05, (ts, p.probability, ref.probability)


def test_the_jpeg_lossless_encoder_of_the_tests_is_exact_for_every_predictor():
    rng = np.random.default_rng(5)
    a = rng.integers(0, 4096, (37, 53), dtype=np.uint16)
    from libjpeg import decode

    for predictor in range(1, 8):
        assert np.array_equal(decode(S.jpeg_lossless(a, 12, predictor)), a), predictor


def test_12_bit_jpeg_extended_from_a_vendor_is_decoded_not_called_damaged():
    d = decode_untrusted(Path(get_testdata_file("JPGExtended.dcm")).read_bytes(), "JPGExtended.dcm")
    assert d.info["dicom"]["TransferSyntaxUID"] == "1.2.840.10008.1.2.4.51"
    assert d.info["bit_depth"] == 12
    assert d.array[..., 0].std() > 10  # an image, not a blank


@pytest.fixture
def only_plugins(monkeypatch):
    """Pretend that only these pydicom decoder plugins are installed for a syntax."""

    def restrict(tsyntax: str, keep: tuple[str, ...]) -> None:
        dec = get_decoder(tsyntax)
        kept = {k: v for k, v in dec._available.items() if k in keep}
        monkeypatch.setattr(dec, "_available", kept)
        gone = {k: v for k, v in dec._available.items() if k not in keep}
        monkeypatch.setattr(dec, "_unavailable", {**dec._unavailable, **{k: ("not installed",) for k in gone}})

    return restrict


def test_a_syntax_without_an_installed_decoder_is_unsupported_and_says_what_it_needs(only_plugins):
    only_plugins(S.JPEG_LOSSLESS_SV1, ())
    with pytest.raises(ImageError) as e:
        decode_image(S.film_in(S.JPEG_LOSSLESS_SV1), "x.dcm")
    assert e.value.code == "unsupported"
    msg = e.value.message
    assert msg.startswith("unsupported:") and "JPEG Lossless" in msg and "1.2.840.10008.1.2.4.70" in msg
    assert "needs the pylibjpeg and pylibjpeg-libjpeg packages" in msg


def test_12_bit_jpeg_with_only_pillow_is_unsupported_not_damaged(only_plugins):
    only_plugins("1.2.840.10008.1.2.4.51", ("pillow",))
    with pytest.raises(ImageError) as e:
        decode_image(Path(get_testdata_file("JPGExtended.dcm")).read_bytes(), "x.dcm")
    assert e.value.code == "unsupported", e.value.message
    assert "12-bit samples" in e.value.message and "pylibjpeg-libjpeg" in e.value.message


def test_damaged_only_when_a_capable_decoder_rejects_the_data():
    # pydicom's own broken file: libjpeg reads it and finds a misplaced marker
    with pytest.raises(ImageError) as e:
        decode_image(Path(get_testdata_file("JPEG-lossy.dcm")).read_bytes(), "x.dcm")
    assert e.value.code == "corrupt" and "damaged" in e.value.message
    # lossless frames with a damaged header: no Huffman table; a predictor that does not exist
    frame = S.jpeg_lossless(S.film12(), 12, 1)
    sos, dht = frame.index(b"\xff\xda"), frame.index(b"\xff\xc4")
    for damaged in (frame[:dht] + frame[sos:], frame[:sos + 7] + bytes([9]) + frame[sos + 8:]):
        data = S._encapsulated(S._dataset(S.film12(), 12), damaged, S.JPEG_LOSSLESS_SV1)
        with pytest.raises(ImageError) as e:
            decode_image(data, "x.dcm")
        assert e.value.code == "corrupt" and "damaged" in e.value.message, e.value.message


@pytest.mark.slow
def test_pydicoms_test_corpus_through_the_cli(tmp_path):
    """pydicom's vendor test files: nothing the installed plugins decode is 'unsupported', the
    12-bit JPEG Extended file is decoded, every reason is a known code, and no traceback (from
    pydicom, Pillow or TensorFlow) reaches the terminal without -v."""
    corpus = Path(get_testdata_file("CT_small.dcm")).parent
    files = sorted(corpus.glob("*.dcm"))
    assert len(files) > 50
    out_csv = tmp_path / "out.csv"
    run = subprocess.run([sys.executable, "-m", "core", "predict", str(corpus), "--csv", str(out_csv)],
                         cwd=REPO, capture_output=True, text=True, timeout=900,
                         env={**__import__("os").environ,  # the audit lines go to a throwaway database
                              "PNEUMOSCOPE_DATABASE_URL": f"sqlite:///{tmp_path / 'audit.db'}"})
    assert run.returncode in (0, 3, 4), run.stderr[-2000:]
    terminal = run.stdout + run.stderr
    assert "Traceback" not in terminal and "pydicom." not in terminal and "WARNING PIL" not in terminal, terminal[-3000:]
    rows = {Path(r["file"]).name: r for r in csv.DictReader(out_csv.open())}
    assert len(rows) >= len(files)  # every .dcm file has a row (the walk may take other images too)
    unsupported = [n for n, r in rows.items() if r["error_code"] == "unsupported"]
    assert unsupported == [], unsupported
    assert rows["JPGExtended.dcm"]["result"] != "ERROR", rows["JPGExtended.dcm"]
    codes = {r["error_code"] for r in rows.values() if r["error_code"]}
    assert codes <= set(imageio.ERROR_CODES), codes
    assert codes <= {"dicom_no_pixels", "too_small", "corrupt", "truncated", "not_an_image"}, codes

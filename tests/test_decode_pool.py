"""Tests for core.decode_pool / core.decode_worker: untrusted bytes decoded in worker processes
whose memory and time are capped, so a decoder bomb costs one worker and a clean message.

The bombs come from ``benchmarks/hostile_files.py`` at small sizes. Where a test shows that the
*worker* bounds a decoder, it switches the header checks of core.imageio off (they would refuse
the file first), to prove that isolation holds for a bomb nobody listed.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks import hostile_files as hostile
from core import decode_pool, imageio
from core.decode_pool import DecodePool, decode_untrusted
from core.imageio import ImageError, decode_image

SAMPLES = sorted((Path(__file__).resolve().parent.parent / "samples" / "chest_xray").rglob("*.jpeg"))


@pytest.fixture
def pool():
    p = DecodePool(workers=2)
    yield p
    p.close()


@pytest.fixture
def no_header_checks(monkeypatch):
    """The declared-size checks of core.imageio off: only the worker's limits remain."""
    monkeypatch.setattr(imageio, "MAX_DECODE_BYTES", 10**13)
    monkeypatch.setattr(imageio, "MAX_JPEG_SCANS", 10**9)
    monkeypatch.setattr(imageio, "MAX_DICOM_DATASET_BYTES", 10**13)


def _same(a, b) -> None:
    assert a.array.shape == b.array.shape and a.array.dtype == b.array.dtype == np.uint8
    assert np.array_equal(a.array, b.array)
    assert (a.original_rgb is None) == (b.original_rgb is None)
    if a.original_rgb is not None:
        assert np.array_equal(a.original_rgb, b.original_rgb)
    assert a.info == b.info


def test_worker_result_equals_the_in_process_decode(pool):
    import cv2

    colour = np.dstack([np.full((300, 400), v, np.uint8) for v in (200, 40, 90)])
    files = [SAMPLES[0].read_bytes(), hostile.plain_dicom(), cv2.imencode(".png", colour)[1].tobytes(),
             cv2.imencode(".png", (np.arange(3000 * 2500, dtype=np.uint32) % 4096).astype(np.uint16)
                          .reshape(3000, 2500))[1].tobytes()]
    for data in files:
        _same(pool.decode(data, "x"), decode_image(data, "x", max_side=imageio.WORK_MAX_SIDE))


def test_the_server_gets_a_working_copy_of_at_most_work_max_side(pool):
    import cv2

    big = (np.arange(3000 * 2600, dtype=np.uint32) % 251).astype(np.uint8).reshape(3000, 2600)
    d = pool.decode(cv2.imencode(".png", big)[1].tobytes())
    assert max(d.array.shape[:2]) == imageio.WORK_MAX_SIDE
    assert (d.info["width"], d.info["height"]) == (2600, 3000)  # the file's size is still reported
    assert d.info["reduced_to"] == [round(2600 * 2048 / 3000), 2048]
    # the model input is the same as from the full-resolution in-process decode
    full = decode_image(cv2.imencode(".png", big)[1].tobytes())
    assert np.array_equal(imageio.resize_for_model(full.array, 64), imageio.resize_for_model(d.array, 64))


def test_header_checks_refuse_each_bomb_class_in_the_worker(pool):
    cases = {
        "memory_limit": [hostile.deflate_dicom(zeros_mb=200)],
        "corrupt": [hostile.dicom_j2k_codestream(), hostile.dicom_jpeg_codestream()],
        "time_limit": [hostile.progressive_jpeg(scans=300, side=256)],
    }
    for code, files in cases.items():
        for data in files:
            with pytest.raises(ImageError) as e:
                pool.decode(data)
            assert e.value.code == code, e.value.message


def test_a_memory_bomb_costs_one_worker_and_the_next_request_is_served(no_header_checks):
    p = DecodePool(workers=1, memory_bytes=160 * 2**20)
    try:
        bomb = hostile.webp_rgba(side=4000)  # 16 MP RGBA: ~350 MB to decode, a few hundred bytes of file
        t0 = time.monotonic()
        with pytest.raises(ImageError) as e:
            p.decode(bomb)
        assert e.value.code == "memory_limit"
        assert "more memory than allowed" in e.value.message
        assert time.monotonic() - t0 < 20
        ok = p.decode(SAMPLES[0].read_bytes())
        assert ok.array.shape[2] == 3
        assert p.stats["replaced"] >= 1  # the worker that ran out was not reused
    finally:
        p.close()


@pytest.mark.slow
def test_a_cpu_bomb_is_stopped_by_the_cpu_limit(no_header_checks):
    p = DecodePool(workers=1, cpu_seconds=1, wall_seconds=30)
    try:
        slow = hostile.progressive_jpeg(scans=3000, side=2000)  # tens of seconds of decoding
        t0 = time.monotonic()
        with pytest.raises(ImageError) as e:
            p.decode(slow)
        elapsed = time.monotonic() - t0
        assert e.value.code == "time_limit" and "1 s allowed" in e.value.message
        assert elapsed < 10, elapsed
        assert p.decode(SAMPLES[1].read_bytes()).array.dtype == np.uint8
    finally:
        p.close()


@pytest.mark.slow
def test_the_wall_clock_deadline_kills_a_worker_the_cpu_limit_has_not_stopped(no_header_checks):
    p = DecodePool(workers=1, cpu_seconds=60, wall_seconds=1)
    try:
        slow = hostile.progressive_jpeg(scans=3000, side=2000)
        t0 = time.monotonic()
        with pytest.raises(ImageError) as e:
            p.decode(slow)
        assert e.value.code == "time_limit" and "1 s allowed" in e.value.message
        assert time.monotonic() - t0 < 8
        assert p.decode(SAMPLES[0].read_bytes()).array.shape[2] == 3
    finally:
        p.close()


def test_a_worker_that_dies_mid_decode_is_reported_and_replaced(no_header_checks):
    p = DecodePool(workers=1, cpu_seconds=60, wall_seconds=60)
    try:
        p.decode(SAMPLES[0].read_bytes())  # a worker is now idle
        pid = p._idle[0].pid
        threading.Timer(0.5, lambda: os.kill(pid, signal.SIGSEGV)).start()
        with pytest.raises(ImageError) as e:
            p.decode(hostile.progressive_jpeg(scans=3000, side=2000))
        assert e.value.code == "decoder_failed" and "Other files are not affected" in e.value.message
        assert p.decode(SAMPLES[0].read_bytes()).array.shape[2] == 3
        assert p._idle[0].pid != pid
    finally:
        p.close()


def test_concurrent_requests_share_a_bounded_pool(pool):
    datas = [s.read_bytes() for s in SAMPLES[:6]]
    expected = [decode_image(d, max_side=imageio.WORK_MAX_SIDE).array for d in datas]
    out: dict[int, np.ndarray] = {}

    def run(i: int) -> None:
        out[i] = pool.decode(datas[i % len(datas)]).array

    threads = [threading.Thread(target=run, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(out) == 12
    for i, a in out.items():
        assert np.array_equal(a, expected[i % len(datas)])
    assert pool.stats["started"] <= pool.workers  # never more processes than slots
    assert len(pool._idle) <= pool.workers


def test_limits_changed_in_the_server_apply_in_the_worker(pool, monkeypatch):
    monkeypatch.setattr(imageio, "MAX_PIXELS", 1000)
    with pytest.raises(ImageError) as e:
        pool.decode(SAMPLES[0].read_bytes())
    assert e.value.code == "decompression_bomb"


def test_cheap_refusals_need_no_worker(monkeypatch):
    p = DecodePool(workers=1)
    monkeypatch.setattr(imageio, "MAX_BYTES", 10)
    try:
        for data, code in ((b"", "empty"), (b"x" * 11, "too_large")):
            with pytest.raises(ImageError) as e:
                p.decode(data)
            assert e.value.code == code
        assert p.stats["started"] == 0
    finally:
        p.close()


def test_the_worker_gets_no_secrets_and_cannot_write_files(pool, monkeypatch):
    monkeypatch.setenv("PNEUMOSCOPE_ADMIN_PASSWORD", "hunter2-secret")
    pool.decode(SAMPLES[0].read_bytes())
    w = pool._idle[0]
    environ = Path(f"/proc/{w.pid}/environ").read_bytes()
    assert b"hunter2-secret" not in environ and b"PNEUMOSCOPE_ADMIN_PASSWORD" not in environ
    limits = Path(f"/proc/{w.pid}/limits").read_text()
    fsize = next(line for line in limits.splitlines() if line.startswith("Max file size"))
    assert fsize.split()[3] == "0"  # soft limit: no file can be written
    aspace = next(line for line in limits.splitlines() if line.startswith("Max address space"))
    assert aspace.split()[3] != "unlimited"


def test_bad_settings_in_the_environment_are_named(monkeypatch):
    monkeypatch.setenv(decode_pool.ENV_MEMORY_MB, "lots")
    with pytest.raises(ValueError, match="PNEUMOSCOPE_DECODE_MEMORY_MB.*Received"):
        DecodePool()


def test_decode_untrusted_and_load_untrusted_use_the_default_pool(tmp_path):
    f = tmp_path / "IMG0001"  # no extension: the content decides
    f.write_bytes(hostile.plain_dicom())
    d = decode_pool.load_untrusted(f)
    assert d.info["format"] == "DICOM"
    assert np.array_equal(d.array, decode_untrusted(f.read_bytes(), "IMG0001").array)
    with pytest.raises(ImageError) as e:
        decode_pool.load_untrusted(tmp_path / "missing.png")
    assert e.value.code == "not_found"

"""Decoding parity: ``bovw.decode_gray`` against OpenCV on the same files.

``bovw.decode_gray`` decodes with the ``image`` crate and converts RGB to gray
with OpenCV's fixed-point BT.601 weights. OpenCV's ``imdecode(...,
IMREAD_GRAYSCALE)`` lets libjpeg produce gray directly from the YCbCr planes
(no chroma upsampling, no RGB round trip), and its IDCT differs from the
``image`` crate's, so pixels may differ by a gray level or two; the mean
absolute difference must stay below 0.5. Against ``cvtColor(imdecode(...,
IMREAD_COLOR), COLOR_BGR2GRAY)`` only the JPEG decoders differ. PNG files are
lossless: gray PNGs decode exactly. The figures are printed (``pytest -s``).
"""

from __future__ import annotations

import numpy as np
import pytest

import bovw
from conftest import pick_images, shared_fruits_root

import cv2  # noqa: E402


@pytest.fixture(scope="module")
def jpeg_files(fruits_root):
    paths = pick_images(fruits_root, "Test", 500)
    return [p.read_bytes() for p in paths]


def _diff_stats(ours: list[np.ndarray], ref: list[np.ndarray]) -> tuple[int, float, float]:
    max_abs, total, n, exact = 0, 0.0, 0, 0
    for a, b in zip(ours, ref):
        assert a.shape == b.shape and a.dtype == np.uint8
        d = np.abs(a.astype(np.int16) - b.astype(np.int16))
        max_abs = max(max_abs, int(d.max()))
        total += float(d.sum())
        n += d.size
        exact += int((d == 0).sum())
    return max_abs, total / n, exact / n


def test_decode_gray_matches_opencv_grayscale_decode(jpeg_files):
    if shared_fruits_root() is not None:
        assert len(jpeg_files) >= 500
    ours = [bovw.decode_gray(b) for b in jpeg_files]
    ref = [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_GRAYSCALE) for b in jpeg_files]
    max_abs, mean_abs, exact = _diff_stats(ours, ref)
    print(
        f"decode parity vs cv2.imdecode(IMREAD_GRAYSCALE): images={len(ours)} "
        f"max_abs_diff={max_abs} mean_abs_diff={mean_abs:.4f} identical_pixels={exact:.4f}"
    )
    assert mean_abs < 0.5
    assert max_abs <= 16


def test_decode_gray_matches_opencv_color_decode_then_cvtcolor(jpeg_files):
    ours = [bovw.decode_gray(b) for b in jpeg_files]
    ref = [
        cv2.cvtColor(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2GRAY) for b in jpeg_files
    ]
    max_abs, mean_abs, exact = _diff_stats(ours, ref)
    print(
        f"decode parity vs cv2.cvtColor(cv2.imdecode(IMREAD_COLOR)): images={len(ours)} "
        f"max_abs_diff={max_abs} mean_abs_diff={mean_abs:.4f} identical_pixels={exact:.4f}"
    )
    assert mean_abs < 0.5


def test_png_decode(jpeg_files):
    """PNG is lossless: a gray PNG decodes exactly; for an RGB PNG only the gray
    conversion can differ (OpenCV's SIMD ``cvtColor`` rounds a few pixels the
    other way than the scalar fixed-point formula), by at most one level."""
    n_diff = n_px = 0
    for b in jpeg_files[:50]:
        bgr = cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)
        gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        ok, png = cv2.imencode(".png", bgr)
        assert ok
        d = np.abs(bovw.decode_gray(png.tobytes()).astype(np.int16) - gray)
        assert d.max() <= 1
        n_diff += int((d != 0).sum())
        n_px += d.size
        ok, png_gray = cv2.imencode(".png", gray)
        np.testing.assert_array_equal(bovw.decode_gray(png_gray.tobytes()), gray)
    print(f"decode parity on RGB PNG vs cvtColor: pixels off by one = {n_diff} of {n_px}")
    assert n_diff / n_px < 1e-3


def test_decode_errors_are_clear():
    with pytest.raises(ValueError, match="empty"):
        bovw.decode_gray(b"")
    with pytest.raises(ValueError, match="not a JPEG or PNG"):
        bovw.decode_gray(b"hello, I am text")
    with pytest.raises(ValueError, match="only JPEG and PNG"):
        bovw.decode_gray(b"GIF89a but not really")

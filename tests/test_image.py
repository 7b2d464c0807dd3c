"""Image listing, reading and decoding against OpenCV and known answers."""

from __future__ import annotations

import io
import zlib
import struct
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest

import bovw


def _png(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array)
    assert ok
    return buf.tobytes()


def test_read_images_sample_layout(sample_root):
    t = bovw.read_images(sample_root)
    assert t.num_rows == 550
    assert t.schema.names == ["path", "modificationTime", "length", "content", "label", "split"]
    assert t.schema.field("content").type == pa.binary()
    splits = t.column("split").to_pylist()
    assert splits.count("Training") == 400 and splits.count("Test") == 150
    labels = set(t.column("label").to_pylist())
    assert len(labels) == 10 and "Apple Braeburn" in labels
    # length is the file size, path a file URI like Spark's binaryFile
    p0 = t.column("path")[0].as_py()
    assert p0.startswith("file:///")
    assert t.column("length")[0].as_py() == len(t.column("content")[0].as_py())


def test_flat_layout_stratified_split(tmp_path, sample_root):
    src = sorted((sample_root / "Training" / "Banana").glob("*.jpg"))[:8]
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for f in src:
            (tmp_path / cls / f.name).write_bytes(f.read_bytes())
    (tmp_path / "a" / "notes.txt").write_text("ignored")
    rows = bovw.list_images(tmp_path, test_size=0.25, random_state=3)
    assert len(rows) == 16
    for cls in ("a", "b"):
        splits = [s for _, lab, s in rows if lab == cls]
        assert splits.count("Test") == 2 and splits.count("Training") == 6
    assert rows == bovw.list_images(tmp_path, test_size=0.25, random_state=3)


def test_missing_and_empty_roots(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        bovw.read_images(tmp_path / "nope")
    with pytest.raises(ValueError, match="no images"):
        bovw.read_images(tmp_path)


def test_gray_matches_cv2_cvtcolor_exactly_on_same_rgb():
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    ours = bovw.decode_gray(_png(bgr))
    ref = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    np.testing.assert_array_equal(ours, ref)
    bgra = np.dstack([bgr, rng.integers(0, 256, size=(37, 53), dtype=np.uint8)])
    np.testing.assert_array_equal(bovw.decode_gray(_png(bgra)), ref)
    gray = rng.integers(0, 256, size=(9, 4), dtype=np.uint8)
    np.testing.assert_array_equal(bovw.decode_gray(_png(gray)), gray)


def test_jpeg_gray_close_to_cv2(sample_root):
    files = sorted((sample_root / "Test").glob("*/*.jpg"))[::5]
    diffs = []
    for f in files:
        data = f.read_bytes()
        ours = bovw.decode_gray(data).astype(int)
        ref = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2GRAY)
        diffs.append(np.abs(ours - ref).mean())
    print(f"\nJPEG decode + gray vs cv2.imdecode + cvtColor: mean abs diff {np.mean(diffs):.4f} over {len(files)} files")
    assert np.mean(diffs) < 0.5


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"this is a text file, not an image", "not a JPEG or PNG"),
        (b"GIF89a" + b"\0" * 20, "only JPEG and PNG"),
    ],
)
def test_decode_errors(data, reason):
    with pytest.raises(ValueError, match=reason):
        bovw.decode_gray(data)


def test_truncated_jpeg_and_16bit_png_rejected(sample_root):
    data = next((sample_root / "Test" / "Banana").glob("*.jpg")).read_bytes()
    with pytest.raises(ValueError, match="truncated"):
        bovw.decode_gray(data[: len(data) // 2])
    img16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    with pytest.raises(ValueError, match="8-bit"):
        bovw.decode_gray(_png(img16))


def test_decode_batch_reports_per_row(sample_root):
    good = next((sample_root / "Test" / "Kiwi").glob("*.jpg")).read_bytes()
    arr = pa.array([good, b"", None, good[:100]], pa.binary())
    images, errors = bovw.decode_gray_batch(arr, n_threads=2)
    assert images[0].shape == (100, 100) and errors[0] is None
    assert images[1] is None and "empty" in errors[1]
    assert images[2] is None and "null" in errors[2]
    assert images[3] is None and errors[3]

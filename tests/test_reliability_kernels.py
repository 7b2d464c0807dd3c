"""The kernel half of issue #17: image bombs, strict decoding, parameter ranges.

Each test is a finding of the issue, written so that it fails on the code
before the fix (which aborted the process, accepted garbage or ran for
minutes) and passes now:

1. Image bombs (a 138-byte PNG whose header says 60000 x 60000, a small JPEG
   claiming 30000 x 30000, a real 20000 x 20000 uniform PNG, an image over
   the description memory budget) run in a subprocess whose address space
   is capped by the test (``resource.setrlimit(RLIMIT_AS)``), through
   ``bovw.extract_descriptors`` with every extractor and through ``bovw run``
   on a folder holding the bombs among good images: each bomb is an error
   row with stage ``decode`` (or, with ``oversize="downscale"``, a
   downscaled image with its ``image_scale``), the process exits 0 and every
   good image is processed. Memory the system cannot give is a
   ``MemoryError`` (single-image calls) or an error row (batches).
2. Strict decoding: a JPEG cut and given an end marker, or with damaged
   scan data, and a PNG with a bad checksum are error rows; a valid JPEG
   followed by bytes holding ``FF DA`` decodes to the same pixels.
6. Parameters: out-of-range values raise ``ValueError`` naming the
   parameter and its range, before any work; an empty table gives 0 rows.

The bombs are written by hand (``zlib``/``struct``) or by patching the size
fields of a small ``cv2.imencode`` JPEG; no image library beyond OpenCV.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import bovw
from bovw.features import ORB, SIFT

REPO = Path(__file__).resolve().parents[1]

#: Address-space cap of the bomb subprocesses: far below what any bomb would
#: take (10.8 GB, 3.6 GB, 112 GB), well above what bovw needs for the good images.
MEMORY_LIMIT = 4 << 30

# -- bombs, written by hand ----------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, idat: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray, no interlace
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def png_header_bomb(width: int = 60_000, height: int = 60_000) -> bytes:
    """A valid PNG header of ``width x height`` followed by one row of data."""
    return _png(width, height, zlib.compress(b"\0" * (width + 1), 9))


def uniform_png(width: int, height: int, value: int = 0) -> bytes:
    """A complete, valid ``width x height`` gray PNG of one value.

    The zlib stream is built from one compressed block of rows repeated:
    after ``Z_FULL_FLUSH`` the compressor starts afresh, so the same rows give
    the same bytes, and the stream ends with an empty final block and the
    Adler-32 of all rows. 20000 x 20000 takes well under a second (zlib over
    400 MB of rows takes 18 s).
    """
    rows_per_block = 100
    assert height % rows_per_block == 0
    block = (b"\0" + bytes([value]) * width) * rows_per_block
    c = zlib.compressobj(9)
    first = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    assert first[2:] == again  # first holds the 2-byte zlib header
    adler = 1
    for _ in range(height // rows_per_block):
        adler = zlib.adler32(block, adler)
    n = height // rows_per_block
    stream = first + again * (n - 1) + b"\x03\x00" + struct.pack(">I", adler)
    return _png(width, height, stream)


def jpeg_header_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A small real JPEG whose frame header claims ``width x height``."""
    img = (np.indices((16, 16)).sum(0) * 8).astype(np.uint8)
    b = bytearray(cv2.imencode(".jpg", img)[1].tobytes())
    o = _sof_offset(bytes(b))
    b[o + 5:o + 9] = struct.pack(">HH", height, width)
    return bytes(b)


def _sof_offset(b: bytes) -> int:
    i = 2
    while True:
        assert b[i] == 0xFF
        m = b[i + 1]
        if 0xC0 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC):
            return i
        i += 2 + struct.unpack(">H", b[i + 2:i + 4])[0]


def _scan_start(b: bytes) -> int:
    """Offset of the first byte of entropy-coded data (after the SOS header)."""
    i = b.index(b"\xff\xda")
    return i + 2 + struct.unpack(">H", b[i + 2:i + 4])[0]


def _run_limited(args: list[str], timeout: float = 240, **kw) -> subprocess.CompletedProcess:
    """Run ``args`` with the address space capped at :data:`MEMORY_LIMIT`."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(bovw.__file__).parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", RAYON_NUM_THREADS="2")
    return subprocess.run(args, preexec_fn=cap, env=env, capture_output=True, text=True, timeout=timeout, **kw)


def _python_limited(code: str, *argv: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return _run_limited([sys.executable, "-c", textwrap.dedent(code), *argv], timeout=timeout)


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bombs")
    files = {
        "png_60000.png": png_header_bomb(),
        "jpeg_30000.jpg": jpeg_header_bomb(),
        "uniform_20000.png": uniform_png(20_000, 20_000),
    }
    out = {}
    for name, data in files.items():
        (d / name).write_bytes(data)
        out[name] = d / name
    return out


def test_bombs_are_what_the_issue_describes(bombs):
    """The inputs themselves: tiny files whose headers ask for gigabytes, and
    a complete 20000 x 20000 PNG; the PNG writer checked against OpenCV on a
    smaller image."""
    assert bombs["png_60000.png"].stat().st_size < 500
    assert bombs["jpeg_30000.jpg"].stat().st_size < 1000
    assert bombs["uniform_20000.png"].stat().st_size < 600_000
    b = bombs["uniform_20000.png"].read_bytes()
    assert struct.unpack(">II", b[16:24]) == (20_000, 20_000)
    small = cv2.imdecode(np.frombuffer(uniform_png(3000, 2000, 7), np.uint8), cv2.IMREAD_UNCHANGED)
    assert small.shape == (2000, 3000) and (small == 7).all()
    with pytest.raises(cv2.error, match="CV_IO_MAX_IMAGE_PIXELS"):  # OpenCV reads the header: over 2^30 pixels
        cv2.imdecode(np.frombuffer(bombs["png_60000.png"].read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED)
    j = bombs["jpeg_30000.jpg"].read_bytes()
    o = _sof_offset(j)
    assert struct.unpack(">HH", j[o + 5:o + 9]) == (30_000, 30_000)


# -- 1. bombs through the Python API -------------------------------------------------------------

_EXTRACT_BOMBS = """
import json, sys, pyarrow as pa, bovw
paths = sys.argv[1:]
table = pa.table({"path": paths, "content": [open(p, "rb").read() for p in paths]})
out = {}
for method in sorted(bovw.EXTRACTORS):
    for oversize in ("refuse", "downscale"):
        ext = bovw.get_extractor(method).set_params(oversize=oversize)
        r = bovw.extract_descriptors(table, ext, n_threads=2)
        out[method, oversize] = {c: r.column(c).to_pylist() for c in ("error", "error_stage", "image_scale")}
print(json.dumps({f"{m} {o}": v for (m, o), v in out.items()}))
"""


def test_bombs_through_extract_descriptors_are_decode_error_rows(bombs, sample_root):
    """Every extractor (SIFT, ORB, dense SIFT, PHOW, colour, CNN), both oversize policies."""
    good = sorted((sample_root / "Test").rglob("*.jpg"))[:2]
    paths = [good[0], bombs["png_60000.png"], bombs["jpeg_30000.jpg"], bombs["uniform_20000.png"], good[1]]
    t = time.perf_counter()
    p = _python_limited(_EXTRACT_BOMBS, *map(str, paths))
    elapsed = time.perf_counter() - t
    assert p.returncode == 0, (p.returncode, p.stderr[-3000:])
    out = json.loads(p.stdout)
    assert len(out) == 2 * len(bovw.EXTRACTORS)
    for oversize, r in out.items():  # oversize: "method policy"
        assert r["error"][0] is None and r["error"][4] is None, (oversize, r["error"])
        assert r["image_scale"][0] == 1 and r["image_scale"][4] == 1
        sizes = {1: "60000x60000", 2: "30000x30000", 3: "20000x20000"}
        for i, size in sizes.items():
            assert r["error_stage"][i] == "decode", (oversize, i, r)
            assert "image too large" in r["error"][i] and size in r["error"][i], r["error"][i]
            assert "max_side=16384" in r["error"][i]
    assert elapsed < 120  # the 30000 x 30000 JPEG alone "decoded" for 16 s before


_DENSE_BOMB = """
import sys, pyarrow as pa, bovw
good, big = (open(p, "rb").read() for p in sys.argv[1:3])
for method in ("dsift", "phow"):
    r = bovw.extract_descriptors(pa.table({"content": [good, big, good]}), method, n_threads=2)
    print(method, r.column("error_stage").to_pylist(), r.column("error")[1].as_py())
"""


def test_dense_descriptors_are_bounded_too(tmp_path, sample_root):
    """A 49-megapixel image (under ``max_pixels``) through dense SIFT or PHOW
    (about 780 and 400 bytes per pixel) aborted with a failed 6.3 GB
    allocation: now refused from the header by the 1 GiB budget."""
    big = tmp_path / "big.png"
    big.write_bytes(uniform_png(7000, 7000, 100))
    good = sorted((sample_root / "Test").rglob("*.jpg"))[0]
    p = _python_limited(_DENSE_BOMB, str(good), str(big))
    assert p.returncode == 0, (p.returncode, p.stderr[-3000:])
    lines = p.stdout.splitlines()
    assert len(lines) == 2, lines
    for line in lines:
        assert "[None, 'decode', None]" in line, line
        assert "image too large to describe: 7000x7000" in line and "max_image_memory=1073741824" in line, line


def test_decode_limits_are_per_call(bombs, sample_root):
    """max_pixels / max_side: the reason names the limit; raising it decodes."""
    jpg = sorted((sample_root / "Test").rglob("*.jpg"))[0].read_bytes()  # 100 x 100
    table = pa.table({"content": [jpg, bombs["png_60000.png"].read_bytes()]})
    r = bovw.extract_descriptors(table, "sift", max_pixels=9_999)
    assert r.column("error_stage").to_pylist() == ["decode", "decode"]
    assert "max_pixels=9999" in r.column("error")[0].as_py()
    r = bovw.extract_descriptors(table, "orb", max_side=99)
    assert "100x100" in r.column("error")[0].as_py() and "max_side=99" in r.column("error")[0].as_py()
    with pytest.raises(ValueError, match="max_pixels.*between 1 and"):
        bovw.extract_descriptors(table, "sift", max_pixels=0)
    with pytest.raises(ValueError, match="max_side"):
        bovw.decode_gray(jpg, max_side=-3)
    with pytest.raises(ValueError, match="max_pixels=9999"):
        bovw.decode_gray(jpg, max_pixels=10_000 - 1)
    assert bovw.decode_gray(jpg, max_pixels=10_000).shape == (100, 100)


def test_memory_budget_refuse_or_downscale_with_image_scale(sample_root):
    """An image under the decode limits but over ``max_image_memory`` (SIFT:
    about 299 bytes per pixel): refused with the estimate, or downscaled to
    fit with its keypoints in the file's pixels and ``image_scale`` < 1."""
    src = cv2.imread(str(sorted((sample_root / "Test").rglob("*.jpg"))[0]), cv2.IMREAD_GRAYSCALE)
    big = cv2.resize(src, (800, 600), interpolation=cv2.INTER_CUBIC)
    table = pa.table({"content": [cv2.imencode(".png", big)[1].tobytes()]})
    budget = 64 << 20  # 64 MiB: 800 x 600 SIFT needs about 160 MiB
    r = bovw.extract_descriptors(table, "sift", max_image_memory=budget)
    err = r.column("error")[0].as_py()
    assert r.column("error_stage")[0].as_py() == "decode"
    assert "image too large to describe" in err and "800x600" in err and f"max_image_memory={budget}" in err
    r = bovw.extract_descriptors(table, "sift", max_image_memory=budget, oversize="downscale")
    assert r.column("error")[0].as_py() is None
    scale = r.column("image_scale")[0].as_py()
    assert r.column("image_width")[0].as_py() == 800 and r.column("image_height")[0].as_py() == 600
    # the largest size with the estimate under budget: (budget - 16 MiB) / 299 pixels
    fit = ((budget - (16 << 20)) / 299) ** 0.5 / (800 * 600) ** 0.5
    assert scale == pytest.approx(fit, rel=0.01)
    kp = np.array(r.column("keypoints")[0].as_py())
    assert len(kp) > 20
    # keypoints are in the file's pixels: they spread over the full 800 x 600
    assert kp[:, 0].max() > 0.8 * 800 and kp[:, 1].max() > 0.8 * 600
    assert kp[:, 0].min() >= -1 and kp[:, 0].max() <= 800 and kp[:, 1].max() <= 600
    # and match SIFT run on the image area-averaged to that size, mapped back
    small = cv2.resize(big, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    kp_small, _ = SIFT().detect_and_compute(small)
    assert abs(len(kp_small) - len(kp)) <= 0.1 * len(kp)


_MEMORY_ERROR = """
import numpy as np, pyarrow as pa, cv2, bovw
from bovw.features import SIFT, ORB
img = np.zeros((7000, 7000), np.uint8)  # 49 megapixels; SIFT: about 15 GB of work buffers
try:
    SIFT().detect_and_compute(img)
    print("no error")
except MemoryError as e:
    print("MemoryError:", e)
# a batch with the memory budget lifted: the row fails, the others do not
png = cv2.imencode(".png", img)[1].tobytes()
good = open(__import__("sys").argv[1], "rb").read()
r = bovw.extract_descriptors(pa.table({"content": [good, png, good]}), "sift", max_image_memory=2**50, n_threads=1)
print("rows:", r.column("error_stage").to_pylist(), r.column("error")[1].as_py())
try:
    bovw.bow_histograms([np.arange(3)] * 1000, n_words=2**31 - 1)
    print("no error")
except MemoryError as e:
    print("MemoryError:", e)
"""


def test_allocation_failure_is_memory_error_not_an_abort(sample_root):
    good = sorted((sample_root / "Test").rglob("*.jpg"))[0]
    p = _python_limited(_MEMORY_ERROR, str(good))
    assert p.returncode == 0, (p.returncode, p.stderr[-3000:])
    lines = p.stdout.splitlines()
    assert lines[0].startswith("MemoryError:") and "7000x7000" in lines[0], lines
    assert lines[1].startswith("rows: [None, 'descriptors', None]") and "cannot allocate" in lines[1], lines
    assert lines[2].startswith("MemoryError:") and "(1000, 2147483647)" in lines[2], lines


# -- 1. bombs through bovw run -------------------------------------------------------------------


@pytest.fixture(scope="module")
def bomb_folder(tmp_path_factory, sample_root, bombs) -> tuple[Path, int]:
    """Training/Test, 3 classes, 5 + 2 good images each; the three bombs and
    an image over SIFT's default 1 GiB budget (1900 x 1900) among them."""
    root = tmp_path_factory.mktemp("bombrun") / "images"
    classes = sorted(p.name for p in (sample_root / "Training").iterdir())[:3]
    n = 0
    for split, k in (("Training", 5), ("Test", 2)):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for f in sorted((sample_root / split / cls).glob("*.jpg"))[:k]:
                shutil.copy(f, root / split / cls / f.name)
                n += 1
    for name, path in bombs.items():
        shutil.copy(path, root / "Training" / classes[0] / name)
    (root / "Training" / classes[1] / "over_budget.png").write_bytes(
        cv2.imencode(".png", np.full((1900, 1900), 128, np.uint8))[1].tobytes())
    return root, n


@pytest.mark.parametrize("oversize", ["refuse", "downscale"])
def test_bovw_run_with_bombs_exits_0_with_error_rows(bomb_folder, tmp_path, oversize):
    root, n_good = bomb_folder
    out = tmp_path / "out"
    p = _run_limited([sys.executable, "-m", "bovw", "run", str(root), "--out", str(out), "--k", "8", "--pca", "3",
                      "--max-iter", "20", "--no-progress", "--n-threads", "2", "--oversize", oversize])
    assert p.returncode == 0, (p.returncode, p.stderr[-3000:])
    with open(out / "errors.csv") as f:
        errors = {Path(r["path"]).name: (r["stage"], r["reason"]) for r in csv.DictReader(f)}
    for name, size in (("png_60000.png", "60000x60000"), ("jpeg_30000.jpg", "30000x30000"),
                       ("uniform_20000.png", "20000x20000")):
        assert errors[name][0] == "decode" and size in errors[name][1], errors
    t = pq.read_table(out / "features.parquet")
    names = {Path(x).name for x in t.column("path").to_pylist()}
    if oversize == "refuse":
        assert errors["over_budget.png"][0] == "decode"
        assert "image too large to describe" in errors["over_budget.png"][1]
        assert len(errors) == 4 and t.num_rows == n_good
    else:
        assert len(errors) == 3 and t.num_rows == n_good + 1 and "over_budget.png" in names
    info = json.loads((out / "run.json").read_text())
    assert info["counts"]["images"] == n_good + 4 and info["counts"]["errors"] == len(errors)
    # the downscale is recorded: features.parquet's image_scale, run.json's count
    scale = dict(zip((Path(x).name for x in t.column("path").to_pylist()), t.column("image_scale").to_pylist()))
    if oversize == "downscale":
        assert 0.0 < scale.pop("over_budget.png") < 1.0
    assert set(scale.values()) == {1.0}
    assert info["counts"]["downscaled"] == (1 if oversize == "downscale" else 0)


# -- 2. strict decoding --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jpegs(sample_root) -> list[bytes]:
    return [p.read_bytes() for p in sorted((sample_root / "Test").rglob("*.jpg"))[::25][:8]]


def _rows(contents: list[bytes], method: str = "sift") -> pa.RecordBatch:
    return bovw.extract_descriptors(pa.table({"content": contents}), method, n_threads=1)


def test_cut_jpeg_with_end_marker_appended_is_refused(jpegs):
    cuts = []
    for b in jpegs:
        s = _scan_start(b)
        for frac in (0.3, 0.6, 0.9):
            cut = b[:s + int(frac * (len(b) - 2 - s))] + b"\xff\xd9"
            # the lenient decoder (libjpeg through OpenCV) returns a full-size
            # image whose lower part is wrong: what bovw accepted before
            lenient = cv2.imdecode(np.frombuffer(cut, np.uint8), cv2.IMREAD_GRAYSCALE)
            full = cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_GRAYSCALE)
            assert lenient is not None and lenient.shape == full.shape
            if frac <= 0.6:
                assert np.mean(np.abs(lenient.astype(int) - full) > 8) > 0.05
            cuts.append(cut)
    r = _rows(cuts)
    assert r.column("error_stage").to_pylist() == ["decode"] * len(cuts)
    for e in r.column("error").to_pylist():
        assert "JPEG" in e and ("premature" in e or "ends" in e or "truncated" in e or "before" in e), e
    for cut in cuts:
        with pytest.raises(ValueError):
            bovw.decode_gray(cut)


def test_damaged_scan_data_is_refused(jpegs):
    """32 bytes of the scan overwritten (never with FF, so no marker is made):
    the Huffman stream loses synchronisation and ends at the wrong place."""
    rng = np.random.default_rng(17)
    damaged = []
    for b in jpegs:
        s, e = _scan_start(b), len(b) - 2
        for _ in range(8):
            d = bytearray(b)
            p = int(rng.integers(s, e - 40))
            for i in range(p, p + 32):
                if d[i - 1] != 0xFF:
                    d[i] = int(rng.integers(0, 255))
            damaged.append(bytes(d))
    r = _rows(damaged)
    stages = r.column("error_stage").to_pylist()
    refused = sum(s == "decode" for s in stages)
    # every damaged file is refused but for the rare run that stays in sync
    assert refused >= 0.9 * len(damaged), (refused, len(damaged))
    assert all(s in ("decode", None) for s in stages)


def test_valid_jpeg_with_trailing_ff_da_bytes_decodes_to_the_same_pixels(jpegs):
    for b in jpegs[:4]:
        tail = b + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" + bytes(range(256)) + b"\xff\xd9garbage\xff\xda"
        np.testing.assert_array_equal(bovw.decode_gray(tail), bovw.decode_gray(b))
    r = _rows([b + b"\xff\xda\x12\x34" for b in jpegs])
    assert r.column("error").null_count == len(jpegs)


def test_png_with_a_bad_checksum_or_cut_is_refused(sample_root):
    img = cv2.imread(str(sorted((sample_root / "Test").rglob("*.jpg"))[0]))
    b = bytes(cv2.imencode(".png", img)[1].tobytes())
    idat = b.index(b"IDAT")
    n = struct.unpack(">I", b[idat - 4:idat])[0]
    bad_crc = bytearray(b)
    bad_crc[idat + 4 + n] ^= 0x01  # the IDAT chunk's CRC field: the data are intact
    flipped = bytearray(b)
    flipped[idat + 4 + n // 2] ^= 0x10  # inside the compressed data
    cut = b[:len(b) // 2]
    r = _rows([b, bytes(bad_crc), bytes(flipped), cut])
    assert r.column("error_stage").to_pylist() == [None, "decode", "decode", "decode"]
    errors = r.column("error").to_pylist()
    assert "crc" in errors[1].lower(), errors[1]
    assert all("PNG" in e for e in errors[1:]), errors
    assert "truncated" in errors[3], errors[3]


# -- 6. parameter ranges -------------------------------------------------------------------------


_GUARDED = """
import sys, time, numpy as np, bovw
from bovw.features import SIFT
case = sys.argv[1]
calls = {
    "n_words": lambda: bovw.bow_histograms([np.array([1, 2, 3])], n_words=10**12),
    "sigma": lambda: SIFT(sigma=1e4).detect_and_compute((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)),
    "n_threads": lambda: bovw.KMeans(n_clusters=2, n_threads=5000).fit(np.random.default_rng(0).random((50, 4))),
}
t = time.perf_counter()
try:
    calls[case]()
    print("no error")
except Exception as e:
    print(f"{type(e).__name__}: {e}")
print(f"{time.perf_counter() - t:.3f}")
"""


def _guarded(case: str) -> tuple[str, float]:
    """Run one call that aborted or hung before, in a capped subprocess with a
    time limit: (the error it raised, seconds)."""
    try:
        p = _python_limited(_GUARDED, case, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{case}: still running after 30 s")
    assert p.returncode == 0, (case, p.returncode, p.stderr[-2000:])
    err, secs = p.stdout.strip().splitlines()[-2:]
    return err, float(secs)


def test_n_words_beyond_memory_is_a_value_error_naming_it():
    """``n_words=10**12`` asked for a 4 TB histogram and aborted the interpreter."""
    err, secs = _guarded("n_words")
    assert err.startswith("ValueError: n_words") and "between 0 and 2147483647" in err and "1000000000000" in err, err
    assert secs < 1


def test_sift_sigma_range():
    """``SIFT(sigma=1e4)`` on 64 x 64 ran past 100 s: now refused at once."""
    err, secs = _guarded("sigma")
    assert err.startswith("ValueError: sigma") and "(0, 16]" in err and "10000" in err, err
    assert secs < 1
    img = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="sigma"):
            SIFT(sigma=bad).detect_and_compute(img)
    # the largest sigma allowed finishes at once
    t = time.perf_counter()
    SIFT(sigma=16).detect_and_compute(img)
    assert time.perf_counter() - t < 10


def test_thread_counts_are_capped():
    """``KMeans(n_threads=5000)`` built a 5000-thread pool per call (66 s)."""
    err, secs = _guarded("n_threads")
    assert err.startswith("ValueError: n_threads") and "between 1 and 256" in err and "5000" in err, err
    assert secs < 5
    x = np.random.default_rng(0).random((50, 4)).astype(np.float32)
    for call in (
        lambda: bovw.MiniBatchKMeans(n_clusters=2, n_threads=257).fit(x),
        lambda: bovw.PCA(n_components=2, n_threads=5000).fit(x),
        lambda: bovw.bow_histograms([np.arange(3)], n_words=3, n_threads=1000),
        lambda: bovw.decode_gray_batch(pa.array([b""], pa.binary()), n_threads=300),
    ):
        with pytest.raises(ValueError, match=r"n_threads.*256"):
            call()
    # a count in range works, and gives the same labels twice (one cached pool)
    km = bovw.KMeans(n_clusters=2, n_threads=3, random_state=0)
    np.testing.assert_array_equal(km.fit(x).labels_, bovw.KMeans(n_clusters=2, n_threads=3, random_state=0).fit(x).labels_)


@pytest.mark.parametrize("method", ["sift", "orb"])
def test_negative_counts_name_the_parameter(sample_root, method):
    img = np.zeros((64, 64), np.uint8)
    cls = SIFT if method == "sift" else ORB
    with pytest.raises(ValueError, match=r"n_features.*between 0 and"):
        cls(n_features=-1).detect_and_compute(img)
    table = pa.table({"content": [sorted((sample_root / "Test").rglob("*.jpg"))[0].read_bytes()]})
    with pytest.raises(ValueError, match=r"n_threads.*between 1 and 256.*-1"):
        bovw.extract_descriptors(table, method, n_threads=-1)
    with pytest.raises(ValueError, match="n_features"):
        bovw.extract_descriptors(table, method, n_features=-5)
    with pytest.raises(ValueError, match="n_threads"):
        bovw.KMeans(n_clusters=2, n_threads=-1).fit(np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="n_threads"):
        bovw.bow_histograms([np.arange(3)], n_words=3, n_threads=-2)


@pytest.mark.parametrize("method", sorted(bovw.EXTRACTORS))
def test_empty_table_gives_zero_rows(method):
    for table in (pa.table({"content": pa.array([], pa.binary())}),
                  pa.Table.from_batches([], schema=pa.schema([("path", pa.string()), ("content", pa.binary())])),
                  pa.RecordBatch.from_pydict({"content": pa.array([], pa.binary())})):
        r = bovw.extract_descriptors(table, method)
        assert r.num_rows == 0
        assert set(bovw.FEATURE_COLUMNS) <= set(r.schema.names)

"""Benchmark: bovw SIFT against OpenCV 4.12 ``cv2.SIFT_create()``.

Rows (see ``run``):

- per-image time on one thread: ``bovw.SIFT().detect_and_compute`` (always
  one thread per image) against ``detectAndCompute`` with
  ``cv2.setNumThreads(1)``, on 100x100 Fruits-360 Test images;
- batch throughput, decode included: ``bovw.extract_descriptors`` on an Arrow
  ``content`` column (1 thread, then all cores) against a loop of
  ``cv2.imdecode(IMREAD_GRAYSCALE)`` + ``detectAndCompute`` (1 thread, then
  OpenCV's default threads);
- growth with image size: square images of 100, 200, 400 and 800 pixels
  (Fruits-360 frames enlarged with ``cv2.resize``), one thread each.

Times are the best of several repeats (the machine may be shared), in
seconds per image: process CPU time for the one-thread rows, wall-clock time
for the all-core row. Run ``python benches/py/bench_sift.py`` to print the rows.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

import bovw

REPO = Path(__file__).resolve().parents[2]


def _fruits_root() -> Path:
    env = os.environ.get("BOVW_FRUITS360")
    for c in ([Path(env)] if env else []) + [REPO.parent / "shared" / "fruits-360", REPO / "shared" / "fruits-360"]:
        if (c / "Test").is_dir():
            return c
    return bovw.sample_data_path()


def _pick(root: Path, n: int) -> list[Path]:
    classes = sorted(p for p in (root / "Test").iterdir() if p.is_dir())
    files = [sorted(c.glob("*.jpg")) for c in classes]
    out: list[Path] = []
    i = 0
    while len(out) < n and any(i < len(f) for f in files):
        for f in files:
            if i < len(f) and len(out) < n:
                out.append(f[i])
        i += 1
    return out


def _best(fn, repeats: int, clock=time.perf_counter) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = clock()
        fn()
        best = min(best, clock() - t)
    return best


def _cpu(fn, repeats: int) -> float:
    """Best process CPU time: for one-thread cases it does not count the time
    the process waits for a core on a busy machine."""
    return _best(fn, repeats, time.process_time)


def _row(case: str, reference: str, ours_s: float, ref_s: float, notes: str) -> dict:
    return {
        "stage": "sift",
        "case": case,
        "reference": reference,
        "ours_s": ours_s,
        "ref_s": ref_s,
        "speedup": ref_s / ours_s,
        "notes": notes,
    }


def run(quick: bool = False) -> list[dict]:
    import cv2

    n_images = 100 if quick else 1000
    repeats = 2 if quick else 3
    paths = _pick(_fruits_root(), n_images)
    contents = [p.read_bytes() for p in paths]
    grays = [bovw.decode_gray(b) for b in contents]
    n_kp = sum(len(bovw.SIFT().detect(g)) for g in grays)
    cores = os.cpu_count() or 1
    default_threads = cv2.getNumThreads()
    ours = bovw.SIFT()
    ref = cv2.SIFT_create()
    rows = []

    # Per image, one thread.
    cv2.setNumThreads(1)
    try:
        t_ours = _cpu(lambda: [ours.detect_and_compute(g) for g in grays], repeats) / len(grays)
        t_ref = _cpu(lambda: [ref.detectAndCompute(g, None) for g in grays], repeats) / len(grays)
        rows.append(
            _row(
                "detect_and_compute, 100x100 gray, 1 thread",
                "cv2.SIFT detectAndCompute, setNumThreads(1)",
                t_ours,
                t_ref,
                f"{len(grays)} Fruits-360 Test images, {n_kp / len(grays):.1f} keypoints/image, s per image",
            )
        )

        # Batch with decoding, one thread.
        batch = pa.RecordBatch.from_arrays([pa.array(contents, pa.binary())], names=["content"])

        def cv2_batch():
            for b in contents:
                ref.detectAndCompute(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_GRAYSCALE), None)

        t_ours = _cpu(lambda: bovw.extract_descriptors(batch, method="sift", n_threads=1), repeats) / len(contents)
        t_ref = _cpu(cv2_batch, repeats) / len(contents)
        rows.append(
            _row(
                "decode + extract batch (JPEG), 1 thread",
                "cv2.imdecode(GRAYSCALE) + detectAndCompute loop, setNumThreads(1)",
                t_ours,
                t_ref,
                f"{len(contents)} images, bovw.extract_descriptors(n_threads=1), s per image",
            )
        )

        # Growth with size, one thread.
        sizes = [100, 200, 400] if quick else [100, 200, 400, 800]
        for size in sizes:
            k = max(4, min(50, 2_000_000 // (size * size)))
            imgs = [cv2.resize(g, (size, size), interpolation=cv2.INTER_LINEAR) for g in grays[:k]]
            kps = sum(len(ours.detect(i)) for i in imgs) / len(imgs)
            t_ours = _cpu(lambda: [ours.detect_and_compute(i) for i in imgs], repeats) / len(imgs)
            t_ref = _cpu(lambda: [ref.detectAndCompute(i, None) for i in imgs], repeats) / len(imgs)
            rows.append(
                _row(
                    f"detect_and_compute, {size}x{size}, 1 thread",
                    "cv2.SIFT detectAndCompute, setNumThreads(1)",
                    t_ours,
                    t_ref,
                    f"{len(imgs)} enlarged Fruits-360 images, {kps:.0f} keypoints/image, s per image",
                )
            )
    finally:
        cv2.setNumThreads(default_threads)

    # Batch with decoding, all cores.
    t_ours = _best(lambda: bovw.extract_descriptors(batch, method="sift"), repeats) / len(contents)
    t_ref = _best(cv2_batch, repeats) / len(contents)
    rows.append(
        _row(
            f"decode + extract batch (JPEG), all cores ({cores})",
            f"cv2.imdecode(GRAYSCALE) + detectAndCompute loop, cv2 default threads ({default_threads})",
            t_ours,
            t_ref,
            f"{len(contents)} images, bovw.extract_descriptors(n_threads=None: rayon over images), s per image",
        )
    )
    return rows


if __name__ == "__main__":
    import sys

    for r in run(quick="--quick" in sys.argv):
        print(
            f"{r['case']:<48} ours {r['ours_s'] * 1e3:8.3f} ms  ref {r['ref_s'] * 1e3:8.3f} ms  "
            f"speedup {r['speedup']:5.2f}  ({r['notes']})"
        )

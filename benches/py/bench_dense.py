"""Benchmark: dense SIFT, PHOW, SIFT at given keypoints and colour histograms.

References, measured in the same process on the same images:

- ``cyvlfeat.sift.dsift`` / ``cyvlfeat.sift.phow`` (cyvlfeat 0.7.1 on Debian's
  VLFeat 0.9.21) for :class:`bovw.DenseSIFT` and :class:`bovw.PHOW`. cyvlfeat's
  ``phow(color="hsv")`` fails on NumPy 2 (``ndarray.ptp``): this script swaps
  in a copy of its ``rgb_to_hsv`` that calls ``np.ptp`` (the same computation),
  in memory, for the run;
- OpenCV 4.12's ``SIFT.compute`` on a grid of ``cv2.KeyPoint(x, y, size)``
  (the usual "dense SIFT with OpenCV") for ``bovw.SIFT().compute``;
- ``cv2.cvtColor(RGB2HSV)`` + ``cv2.inRange`` (near-white mask) +
  ``cv2.calcHist`` + normalisation and square root for
  :class:`bovw.ColorHistogram`'s default recipe, and ``cvtColor`` +
  ``calcHist`` for plain counts.

One-thread rows: ``cv2.setNumThreads(1)``; cyvlfeat and bovw's per-image
calls run on one thread. Each side is timed in turn, several times, and the
best process CPU time is kept (on a shared machine this does not count the
time spent waiting for a core). Images: Fruits-360 Test frames (100 x 100)
and grocery-store photos (348 x 348, ``shared/grocery-store``; Fruits-360
frames enlarged to 348 x 348 when it is absent). The batch rows time
``bovw.extract_descriptors`` (decode included) on 1 and 2 threads, wall clock.

Run ``python benches/py/bench_dense.py [--quick]`` to print the rows, or
``python benches/run.py --only dense`` to write them to BENCHMARKS.md.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

import bovw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, image_files, row  # noqa: E402

STAGE = "dense"


def grocery_files(limit: int) -> list[Path]:
    for c in (REPO.parent / "shared" / "grocery-store", REPO / "shared" / "grocery-store"):
        if (c / "train").is_dir():
            paths = sorted(c.glob("train/*/*.jpg"))
            step = max(1, len(paths) // limit)
            return paths[::step][:limit]
    return []


def best_cpu_pair(ours, ref, repeat: int) -> tuple[float, float]:
    """Best process CPU times of ``ours`` and ``ref``, called in turn."""
    best = [float("inf"), float("inf")]
    for _ in range(repeat):
        for i, fn in enumerate((ours, ref)):
            t0 = time.process_time()
            fn()
            best[i] = min(best[i], time.process_time() - t0)
    return best[0], best[1]


def patched_cyvlfeat_hsv():
    """cyvlfeat's rgb_to_hsv with ``np.ptp(arr, -1)`` for ``arr.ptp(-1)``."""
    import cyvlfeat.sift  # noqa: F401 (loads the module; the package attribute is the function)

    phow_mod = sys.modules["cyvlfeat.sift.phow"]

    def rgb_to_hsv(arr):
        arr = np.asarray(arr)
        in_shape = arr.shape
        arr = np.array(arr, dtype=np.promote_types(arr.dtype, np.float32), ndmin=2)
        out = np.zeros_like(arr)
        arr_max = arr.max(-1)
        ipos = arr_max > 0
        delta = np.ptp(arr, -1)
        s = np.zeros_like(delta)
        s[ipos] = delta[ipos] / arr_max[ipos]
        ipos = delta > 0
        idx = (arr[..., 0] == arr_max) & ipos
        out[idx, 0] = (arr[idx, 1] - arr[idx, 2]) / delta[idx]
        idx = (arr[..., 1] == arr_max) & ipos
        out[idx, 0] = 2.0 + (arr[idx, 2] - arr[idx, 0]) / delta[idx]
        idx = (arr[..., 2] == arr_max) & ipos
        out[idx, 0] = 4.0 + (arr[idx, 0] - arr[idx, 1]) / delta[idx]
        out[..., 0] = (out[..., 0] / 6.0) % 1.0
        out[..., 1] = s
        out[..., 2] = arr_max
        return out.reshape(in_shape)

    phow_mod.rgb_to_hsv = rgb_to_hsv


def run(quick: bool = False) -> list[dict]:
    import cv2
    from cyvlfeat.sift import dsift, phow

    patched_cyvlfeat_hsv()
    repeat = 3 if quick else 7
    n_small, n_large = (20, 3) if quick else (60, 8)
    small = [bovw.decode_rgb(p.read_bytes()) for p in image_files("Test", n_small)]
    large_paths = grocery_files(n_large)
    if large_paths:
        large = [bovw.decode_rgb(p.read_bytes()) for p in large_paths]
        large = [cv2.resize(x, (348, 348)) if x.shape[:2] != (348, 348) else x for x in large]
        large_note = "grocery-store photos"
    else:
        large = [np.ascontiguousarray(cv2.resize(x, (348, 348))) for x in small[:n_large]]
        large_note = "Fruits-360 frames enlarged"
    sets = [("100x100", small, "Fruits-360 Test frames"), ("348x348", large, large_note)]
    rows = []
    default_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        for label, imgs, note in sets:
            grays = [cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in imgs]
            floats = [g.astype(np.float32) / 255 for g in grays]
            rgbf = [x.astype(np.float32) / 255 for x in imgs]
            n = len(imgs)

            # Dense SIFT, flat window, step 4, bin 8.
            ds = bovw.DenseSIFT(step=4, size=8, fast=True)
            nf = len(ds.compute(grays[0])[0])
            t_o, t_r = best_cpu_pair(lambda: [ds.compute(g) for g in grays],
                                     lambda: [dsift(f, step=4, size=8, fast=True) for f in floats], repeat)
            rows.append(row(STAGE, f"dsift fast, step 4, bin 8, {label}, 1 thread", "cyvlfeat dsift",
                            t_o / n, t_r / n, f"{n} {note}, {nf} descriptors/image, s per image"))
            # Gaussian window (VLFeat filters the image 16 times): a few images.
            dg = bovw.DenseSIFT(step=4, size=8)
            k = 2 if label == "348x348" else 10
            t_o, t_r = best_cpu_pair(lambda: [dg.compute(g) for g in grays[:k]],
                                     lambda: [dsift(f, step=4, size=8) for f in floats[:k]], max(2, repeat // 3))
            rows.append(row(STAGE, f"dsift gaussian window, step 4, bin 8, {label}, 1 thread", "cyvlfeat dsift",
                            t_o / k, t_r / k, f"{k} images, s per image"))

            # PHOW gray and hsv, defaults but step 4; hsv also with step 2.
            for color, step in (("gray", 4), ("hsv", 4), ("hsv", 2)):
                if quick and step == 2:
                    continue
                ph = bovw.PHOW(color=color, step=step)
                src = grays if color == "gray" else imgs
                ref_src = floats if color == "gray" else rgbf
                k = n if step == 4 else max(2, n // 4)
                nf = len(ph.compute(src[0])[0])
                t_o, t_r = best_cpu_pair(lambda: [ph.compute(x) for x in src[:k]],
                                         lambda: [phow(x, color=color, step=step) for x in ref_src[:k]],
                                         repeat if step == 4 else max(2, repeat // 2))
                rows.append(row(STAGE, f"phow {color}, step {step}, {label}, 1 thread", f"cyvlfeat phow(color={color!r})",
                                t_o / k, t_r / k, f"{k} images, {nf} frames/image, s per image"))

            # SIFT.compute at a 361-point grid (dsift's step 4, bin 8 frames).
            h, w = grays[0].shape
            xs = np.arange(12, w - 12, 4 * (w // 100 or 1))[:19]
            ys = np.arange(12, h - 12, 4 * (h // 100 or 1))[:19]
            sift, ref = bovw.SIFT(), cv2.SIFT_create()
            k = min(n, 6)
            for size in (8, 16, 32):
                kps = [cv2.KeyPoint(float(x), float(y), size) for y in ys for x in xs]
                recs = bovw.keypoints_from_cv2(kps)
                t_o, t_r = best_cpu_pair(lambda: [sift.compute(g, recs) for g in grays[:k]],
                                         lambda: [ref.compute(g, kps) for g in grays[:k]], max(2, repeat // 2))
                rows.append(row(STAGE, f"SIFT.compute, {len(kps)}-point grid, size {size}, {label}, 1 thread",
                                "cv2.SIFT compute (same cv2.KeyPoint grid)", t_o / k, t_r / k,
                                f"{k} images, keypoints cv2.KeyPoint(x, y, {size}) (angle -1, octave 0), s per image"))

            # Colour histogram: the recipe, and plain counts.
            hist = bovw.ColorHistogram()

            def cv2_recipe():
                for x in imgs:
                    hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV)
                    m = cv2.bitwise_not(cv2.inRange(hsv, (0, 0, 231), (180, 29, 255)))
                    c = cv2.calcHist([hsv], [0, 1, 2], m, [18, 4, 4], [0, 180, 0, 256, 0, 256]).ravel()
                    np.sqrt(c / max(c.sum(), 1.0))

            t_o, t_r = best_cpu_pair(lambda: [hist.compute(x) for x in imgs], cv2_recipe, repeat)
            rows.append(row(STAGE, f"colour histogram recipe (HSV 18x4x4, white masked, L1, sqrt), {label}, 1 thread",
                            "cv2 cvtColor + inRange + calcHist + normalise", t_o / n, t_r / n, f"{n} images, s per image"))
            counts = bovw.ColorHistogram(mask=None, normalize=None, sqrt=False)
            t_o, t_r = best_cpu_pair(
                lambda: [counts.compute(x) for x in imgs],
                lambda: [cv2.calcHist([cv2.cvtColor(x, cv2.COLOR_RGB2HSV)], [0, 1, 2], None, [18, 4, 4],
                                      [0, 180, 0, 256, 0, 256]) for x in imgs], repeat)
            rows.append(row(STAGE, f"colour histogram counts (HSV 18x4x4), {label}, 1 thread",
                            "cv2 cvtColor + calcHist", t_o / n, t_r / n, f"{n} images, s per image"))
    finally:
        cv2.setNumThreads(default_threads)

    # Batch decode + descriptors, 1 and 2 threads (wall clock).
    files = image_files("Test", 200 if quick else 1000) + grocery_files(20 if quick else 100)
    contents = [p.read_bytes() for p in files]
    batch = pa.table({"content": pa.array(contents, pa.binary())})
    cores = os.cpu_count() or 1
    for method, params in (("dsift", dict(step=4, size=8, fast=True)), ("phow", dict(color="hsv", step=4)),
                           ("color", {})):
        times = {}
        for nt in (1, 2):
            best = float("inf")
            for _ in range(2 if quick else 3):
                t0 = time.perf_counter()
                bovw.extract_descriptors(batch, method=method, n_threads=nt, **params)
                best = min(best, time.perf_counter() - t0)
            times[nt] = best
        rows.append(row(STAGE, f"batch decode + {method} {params or ''}, 2 threads vs 1 ({cores} cores)",
                        "bovw on 1 thread", times[2], times[1],
                        f"{len(contents)} JPEGs: {len(contents) / times[1]:.0f} images/s on 1 thread, "
                        f"{len(contents) / times[2]:.0f} on 2 (speedup = 1-thread time / 2-thread time)"))
    return rows


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(f"{r['case']:<92} ours {r['ours_s'] * 1e3:9.3f} ms  ref {r['ref_s'] * 1e3:9.3f} ms  "
              f"x{r['speedup']:6.2f}  ({r['reference']}; {r['notes']})", flush=True)

"""ORB and binary vocabularies: bovw vs OpenCV / scikit-learn.

Rows (``run(quick)`` -> list of dicts: stage, case, reference, ours_s, ref_s,
speedup = ref_s / ours_s, notes):

1. per image, one thread: ``bovw.ORB().detect_and_compute`` vs
   ``cv2.ORB_create().detectAndCompute`` with ``cv2.setNumThreads(1)``, on
   real 100x100 Fruits-360 images (defaults and the small-image settings
   nfeatures=100, edgeThreshold=patchSize=15) and on 640x480 images;
2. batch, all cores: ``bovw.extract_descriptors(method="orb")`` (decode +
   ORB) vs a Python loop of ``cv2.imdecode`` + ``cvtColor`` +
   ``detectAndCompute`` with OpenCV's default threads;
3. vocabulary on the same ORB descriptors: ``bovw.KMajority`` (Hamming)
   vs float K-Means on the bytes as float32 (``bovw.KMeans`` when present,
   else scikit-learn ``KMeans``), time and the accuracy of a bag-of-words +
   LogisticRegression classifier on a subset of Fruits-360 for each.

Run: ``python benches/py/bench_orb.py [--quick]`` or ``python benches/run.py --only orb``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

from common import best_of as _best, fruits_root as _fruits_root, row as _row
SMALL = dict(n_features=100, edge_threshold=15, patch_size=15)



def _files(split: str, n_classes: int | None = None, per_class: int | None = None, limit: int | None = None) -> list[tuple[Path, int]]:
    root = _fruits_root() / split
    classes = sorted(c for c in root.iterdir() if c.is_dir())
    if n_classes is not None:
        step = max(len(classes) // n_classes, 1)
        classes = classes[::step][:n_classes]
    out = []
    for ci, c in enumerate(classes):
        fs = sorted(c.glob("*.jpg"))
        if per_class is not None:
            fs = fs[:: max(len(fs) // per_class, 1)][:per_class]
        out += [(f, ci) for f in fs]
    if limit is not None and len(out) > limit:
        step = len(out) / limit
        out = [out[int(i * step)] for i in range(limit)]
    return out




def _cv2_orb(cv2, params):
    return cv2.ORB_create(
        nfeatures=params.get("n_features", 500),
        edgeThreshold=params.get("edge_threshold", 31),
        patchSize=params.get("patch_size", 31),
    )


def _binary_column_to_numpy(col) -> tuple[np.ndarray, np.ndarray]:
    """list<fixed_size_binary(32)> -> ((N, 32) uint8, row offsets)."""
    values = col.flatten()
    buf = values.buffers()[1]
    X = np.frombuffer(buf, np.uint8, count=len(values) * 32, offset=values.offset * 32).reshape(-1, 32)
    offsets = col.offsets.to_numpy().astype(np.int64)
    return X, offsets - offsets[0]


def run(quick: bool = False) -> list[dict]:
    import cv2
    import pyarrow as pa

    import bovw

    rows: list[dict] = []
    files = _files("Test", limit=300 if quick else 2000)
    gray = [bovw.decode_gray(f.read_bytes()) for f, _ in files]
    repeat = 2 if quick else 3

    # 1. per image, one thread
    for label, params in (("defaults", {}), ("nfeatures=100, edge=patch=15", SMALL)):
        cv2.setNumThreads(1)
        cvorb = _cv2_orb(cv2, params)
        ours = bovw.ORB(**params)
        ref_s = _best(lambda: [cvorb.detectAndCompute(g, None) for g in gray], repeat) / len(gray)
        ours_s = _best(lambda: [ours.detect_and_compute(g) for g in gray], repeat) / len(gray)
        nk = sum(len(ours.detect(g)) for g in gray[:200]) / min(len(gray), 200)
        rows.append(_row("orb", f"per image 100x100, 1 thread, {label}", "cv2.ORB (setNumThreads(1))", ours_s, ref_s,
                         f"{len(gray)} Fruits-360 Test images, {nk:.1f} keypoints/image; ours via Python API incl. call overhead"))

    # 640x480: mosaics of real images
    big = []
    for t in range(4 if quick else 10):
        tiles = [gray[(t * 48 + i) % len(gray)] for i in range(48)]
        mosaic = np.vstack([np.hstack(tiles[r * 8 : (r + 1) * 8]) for r in range(6)])
        big.append(cv2.resize(mosaic, (640, 480), interpolation=cv2.INTER_AREA))
    cv2.setNumThreads(1)
    cvorb = _cv2_orb(cv2, {})
    ours = bovw.ORB()
    ref_s = _best(lambda: [cvorb.detectAndCompute(g, None) for g in big], repeat) / len(big)
    ours_s = _best(lambda: [ours.detect_and_compute(g) for g in big], repeat) / len(big)
    rows.append(_row("orb", "per image 640x480, 1 thread, defaults", "cv2.ORB (setNumThreads(1))", ours_s, ref_s,
                     f"{len(big)} mosaics of real images, 500 keypoints/image"))

    # 2. batch on all cores, decode included
    contents = [f.read_bytes() for f, _ in files]
    batch = pa.record_batch({"content": pa.array(contents, pa.binary())})
    cv2.setNumThreads(os.cpu_count() or 1)

    def ref_batch():
        orb = _cv2_orb(cv2, SMALL)
        for c in contents:
            img = cv2.cvtColor(cv2.imdecode(np.frombuffer(c, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2GRAY)
            orb.detectAndCompute(img, None)

    ref_s = _best(ref_batch, repeat)
    ours_s = _best(lambda: bovw.extract_descriptors(batch, method="orb", **SMALL), repeat)
    rows.append(_row("orb", f"batch decode + ORB, {len(contents)} images, all cores", "cv2 imdecode+ORB loop (default threads)",
                     ours_s, ref_s, f"nfeatures=100, edge=patch=15; {os.cpu_count()} cores; bovw.extract_descriptors"))

    # 3. vocabularies on the same ORB descriptors + downstream accuracy
    n_classes = 10 if quick else 30
    k = 50 if quick else 200
    max_iter = 30 if quick else 100
    train = _files("Training", n_classes=n_classes, per_class=30 if quick else 60)
    test = _files("Test", n_classes=n_classes, per_class=20 if quick else 40)

    def orb_bow_inputs(items):
        tb = pa.record_batch({"content": pa.array([f.read_bytes() for f, _ in items], pa.binary())})
        res = bovw.extract_descriptors(tb, method="orb", **SMALL)
        return _binary_column_to_numpy(res.column("descriptors"))

    Xtr, off_tr = orb_bow_inputs(train)
    Xte, off_te = orb_bow_inputs(test)
    ytr = np.array([c for _, c in train])
    yte = np.array([c for _, c in test])

    def histograms(words, offsets, k):
        img_of = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
        H = np.zeros((len(offsets) - 1, k), np.float64)
        np.add.at(H, (img_of, words), 1.0)
        return H / np.maximum(H.sum(1, keepdims=True), 1.0)

    def accuracy(words_tr, words_te):
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        Htr, Hte = histograms(words_tr, off_tr, k), histograms(words_te, off_te, k)
        sc = StandardScaler().fit(Htr)
        clf = LogisticRegression(max_iter=2000).fit(sc.transform(Htr), ytr)
        return float((clf.predict(sc.transform(Hte)) == yte).mean())

    rng = np.random.default_rng(0)
    init_idx = rng.choice(len(Xtr), k, replace=False)

    t0 = time.perf_counter()
    km_bin = bovw.KMajority(n_clusters=k, max_iter=max_iter, init=Xtr[init_idx]).fit(Xtr)
    ours_s = time.perf_counter() - t0
    acc_bin = accuracy(km_bin.labels_, km_bin.predict(Xte))

    Ftr, Fte = bovw.orb_descriptors_as_float(Xtr), bovw.orb_descriptors_as_float(Xte)
    if hasattr(bovw, "KMeans"):
        float_name = "bovw.KMeans"
        make = lambda: bovw.KMeans(n_clusters=k, init=Ftr[init_idx], n_init=1, max_iter=max_iter)  # noqa: E731
    else:
        from sklearn.cluster import KMeans as SkKMeans

        float_name = "sklearn KMeans (bovw.KMeans not merged)"
        make = lambda: SkKMeans(n_clusters=k, init=Ftr[init_idx], n_init=1, max_iter=max_iter)  # noqa: E731
    t0 = time.perf_counter()
    km_f = make().fit(Ftr)
    ref_s = time.perf_counter() - t0
    acc_f = accuracy(km_f.labels_, km_f.predict(Fte))
    rows.append(_row("orb-vocabulary", f"K={k} on {len(Xtr):,} ORB descriptors", f"{float_name} on bytes as float32",
                     ours_s, ref_s,
                     f"same initial centers, max_iter={max_iter}; KMajority n_iter={km_bin.n_iter_}, "
                     f"BoW+LogisticRegression accuracy on {n_classes} classes ({len(train)} train / {len(test)} test images): "
                     f"KMajority {acc_bin:.3f} vs float K-Means {acc_f:.3f}; float K-Means n_iter={getattr(km_f, 'n_iter_', '?')}"))
    return rows


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    for r in run(quick):
        sp = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
        print(f"{r['stage']:15s} | {r['case']:55s} | ours {r['ours_s']:.6f} s | ref {r['ref_s']:.6f} s | {sp} | {r['reference']} | {r['notes']}")

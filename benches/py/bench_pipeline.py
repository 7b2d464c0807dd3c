"""The main job, stage by stage, against the Python reference doing the same work.

Reference = what the seed notebooks do without Spark: ``cv2.imdecode`` +
``cvtColor`` + ``cv2.SIFT_create().detectAndCompute`` per image in a Python
loop, scikit-learn ``KMeans`` (same initial centers, iterations and tol),
``KMeans.predict`` + ``np.bincount`` per image, scikit-learn ``PCA(0.95)``.
bovw = ``bovw.extract_descriptors`` on all cores, ``bovw.KMeans``,
``bovw.BagOfWords``/``bow_histograms``, ``bovw.PCA``.
"""

from __future__ import annotations

import os
import time

import numpy as np

from common import image_files, row


def run(quick: bool = False) -> list[dict]:
    import cv2
    import pyarrow as pa
    from sklearn.cluster import KMeans as SkKMeans
    from sklearn.decomposition import PCA as SkPCA

    import bovw

    n_images = 550 if quick else 2624
    k, max_iter = (50, 30) if quick else (100, 100)
    files = image_files("Training", n_images)
    contents = [f.read_bytes() for f in files]
    rows = []

    # 1. decode + SIFT
    cv2.setNumThreads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    ref_desc = []
    for c in contents:
        img = cv2.cvtColor(cv2.imdecode(np.frombuffer(c, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2GRAY)
        _, d = cv2.SIFT_create().detectAndCompute(img, None)
        ref_desc.append(d if d is not None else np.zeros((0, 128), np.float32))
    ref_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    batch = pa.record_batch({"content": pa.array(contents, pa.binary())})
    res = bovw.extract_descriptors(batch, method="sift")
    ours_s = time.perf_counter() - t0
    col = res.column("descriptors")
    X = col.flatten().flatten().to_numpy().reshape(-1, 128)
    offsets = col.offsets.to_numpy().astype(np.int64)
    n_ref = sum(len(d) for d in ref_desc)
    rows.append(row("pipeline", f"decode + SIFT, {len(files)} images", "cv2 per image (Python loop)",
                    ours_s, ref_s, f"{len(X):,} descriptors (cv2: {n_ref:,}); bovw on {os.cpu_count()} cores"))

    # 2. K-Means from the same initial centers
    rng = np.random.default_rng(0)
    init = X[rng.choice(len(X), k, replace=False)]
    t0 = time.perf_counter()
    km = bovw.KMeans(n_clusters=k, init=init, n_init=1, max_iter=max_iter, tol=1e-4).fit(X)
    ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sk = SkKMeans(n_clusters=k, init=init, n_init=1, max_iter=max_iter, tol=1e-4).fit(X)
    ref_s = time.perf_counter() - t0
    rows.append(row("pipeline", f"K-Means k={k}, {len(X):,} x 128", "scikit-learn KMeans (lloyd)",
                    ours_s, ref_s, f"inertia bovw {km.inertia_:.4g} / sklearn {sk.inertia_:.4g}; "
                    f"iterations {km.n_iter_} / {sk.n_iter_}"))

    # 3. bag of words
    t0 = time.perf_counter()
    words = km.predict(X)
    H = bovw.bow_histograms(words, offsets, n_words=k)
    ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    wr = sk.predict(X)
    Hr = np.stack([np.bincount(wr[offsets[i]:offsets[i + 1]], minlength=k) for i in range(len(files))])
    ref_s = time.perf_counter() - t0
    rows.append(row("pipeline", f"bag of words, {len(files)} images", "sklearn predict + np.bincount",
                    ours_s, ref_s, f"histograms equal: {bool(np.array_equal(H, Hr))}"))

    # 4. PCA(0.95)
    Hf = np.asarray(H, dtype=np.float64)
    t0 = time.perf_counter()
    p = bovw.PCA(n_components=0.95).fit(Hf)
    Z = p.transform(Hf)
    ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sp = SkPCA(n_components=0.95, svd_solver="full").fit(Hf)
    sp.transform(Hf)
    ref_s = time.perf_counter() - t0
    rows.append(row("pipeline", f"PCA(0.95) on {Hf.shape[0]} x {k}", "scikit-learn PCA (full)",
                    ours_s, ref_s, f"components {p.n_components_} / {sp.n_components_}; Z {Z.shape}"))
    return rows

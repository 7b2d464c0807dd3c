"""Bag of visual words: bovw vs scikit-learn + NumPy.

Rows (``run(quick)`` -> list of dicts: stage, case, reference, ours_s, ref_s,
speedup = ref_s / ours_s, notes):

1. descriptors -> histograms, ``bovw.BagOfWords(vocabulary).transform`` (nearest
   word + count fused in one Rust call) vs the usual Python loop
   ``np.bincount(KMeans.predict(d_i), minlength=K)`` per image;
2. the same against a stronger reference: one ``KMeans.predict`` over all
   descriptors then ``np.bincount`` per image;
3. the Arrow path (``list<fixed_size_list<float32, 128>>`` column, as
   ``extract_descriptors`` / Spark ``mapInArrow`` give it) vs reference 1;
4. word ids -> histograms, ``bovw.bow_histograms`` vs ``np.bincount`` per image.

Inputs: real OpenCV SIFT descriptors of real Fruits-360 images (cached in
``bench-out/``), vocabularies of K real descriptors drawn at random (the
vocabulary's quality does not change the cost).

Run: ``python benches/py/bench_bow.py [--quick]``.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from functools import partial

from common import CACHE, best_of as _best, fruits_root as _fruits_root, row

_row = partial(row, "bow")





def sift_descriptors(n_images: int) -> list[np.ndarray]:
    """cv2 SIFT descriptors of ``n_images`` real Training images (cached)."""
    import cv2

    CACHE.mkdir(exist_ok=True)
    root = _fruits_root()
    cache = CACHE / f"bow_sift_{root.name}_{n_images}.npz"
    if cache.exists():
        z = np.load(cache)
        return np.split(z["desc"], z["offsets"][1:-1])
    files = sorted((root / "Training").glob("*/*.jpg"))
    if len(files) > n_images:
        step = len(files) / n_images
        files = [files[int(i * step)] for i in range(n_images)]
    sift = cv2.SIFT_create()
    out = []
    for f in files:
        img = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
        _, d = sift.detectAndCompute(img, None)
        out.append(np.zeros((0, 128), np.float32) if d is None else d)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in out])])
    np.savez(cache, desc=np.concatenate(out), offsets=offsets)
    return out


def run(quick: bool = False) -> list[dict]:
    import pyarrow as pa
    from sklearn.cluster import KMeans

    import bovw

    n_images = 300 if quick else 3000
    descs = sift_descriptors(n_images)
    flat = np.concatenate(descs)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in descs])])
    n_desc = len(flat)
    rows = []
    threads = os.cpu_count()
    for k in ([100] if quick else [100, 500]):
        rng = np.random.default_rng(k)
        vocab = flat[rng.choice(n_desc, k, replace=False)].astype(np.float32)
        km = KMeans(n_clusters=k, init=vocab, n_init=1, max_iter=1).fit(vocab)
        km.cluster_centers_ = vocab.copy()
        bow = bovw.BagOfWords(vocab)

        def ref_per_image():
            return np.array(
                [np.bincount(km.predict(d), minlength=k) if len(d) else np.zeros(k, np.int64) for d in descs]
            )

        def ref_batched():
            labels = km.predict(flat)
            return np.array([np.bincount(labels[a:b], minlength=k) for a, b in zip(offsets[:-1], offsets[1:])])

        ours = bow.transform(descs)
        ref = ref_per_image()
        agree = 1.0 - np.abs(ours - ref).sum() / 2 / n_desc
        notes = f"{len(descs)} images, {n_desc} SIFT descriptors, K={k}, {threads} threads, word agreement {agree:.5f}"
        t_ours = _best(lambda: bow.transform(descs))
        t_ref = _best(ref_per_image, 1 if not quick else 2)
        rows.append(_row(f"descriptors->histograms K={k}", "KMeans.predict+np.bincount per image", t_ours, t_ref, notes))
        t_ref2 = _best(ref_batched)
        rows.append(_row(f"descriptors->histograms K={k}", "one KMeans.predict + np.bincount per image", t_ours, t_ref2, notes))
        col = pa.ListArray.from_arrays(
            pa.array(offsets.astype(np.int32)),
            pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), 128),
        )
        t_arrow = _best(lambda: bow.transform(col))
        rows.append(_row(f"Arrow descriptors column->histograms K={k}", "KMeans.predict+np.bincount per image", t_arrow, t_ref, notes))
        if k == 100:
            labels = km.predict(flat)
            words = [labels[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
            t_w = _best(lambda: bovw.bow_histograms(labels, offsets, n_words=k))
            t_wr = _best(lambda: np.array([np.bincount(w, minlength=k) for w in words]))
            rows.append(_row("words->histograms", "np.bincount per image", t_w, t_wr, f"{len(descs)} images, {n_desc} words, K={k}"))
    return rows


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(f"{r['case']:<42} vs {r['reference']:<44} ours {r['ours_s']:.4f}s ref {r['ref_s']:.4f}s x{r['speedup']:.1f}  {r['notes']}")

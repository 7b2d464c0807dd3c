"""Channel combinations and the logistic regression's C, on validation splits only.

The research behind the defaults of ``bovw.recipes`` (the table in its module
docstring). grocery: ``train`` -> ``val``; fruits: Fruits-360's Training
folder minus a seeded 25 % per class -> that 25 % (its Test folder is never
read). Each channel's per-image vectors are cached per (data set, channel) in
``$BOVW_RECIPES_CACHE`` (default: a folder under the system's temporary
folder); channels are L2-normalised (bag-of-words channels Hellinger-mapped
first), concatenated (``a*0.5`` weights a channel) and scored with
scikit-learn's LogisticRegression for C in 1, 10, 100, 1000.

Usage (from the repository root, ``../shared`` beside it)::

    python benches/py/recipes_c_grid.py grocery color cnn224 cnn224+color
    python benches/py/recipes_c_grid.py fruits color cnn_native cnn_native+color
    python benches/py/recipes_c_grid.py fruits cnn_native cnn96 cnn_native+color cnn96+color
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

import bovw
from bovw.image import list_images, seeded_splits

import tempfile

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
CACHE = Path(os.environ.get("BOVW_RECIPES_CACHE", Path(tempfile.gettempdir()) / "bovw-recipes-cache"))
CACHE.mkdir(parents=True, exist_ok=True)


def dataset(name):
    if name == "grocery":
        rows = list_images(str(SHARED / "grocery-store"))
        paths = [r[0] for r in rows]
        labels = [r[1] for r in rows]
        split = np.array(["train" if r[2] == "Training" else "val" for r in rows])
    else:
        rows = [r for r in list_images(str(SHARED / "fruits-360")) if r[2] == "Training"]
        paths = [r[0] for r in rows]
        labels = [r[1] for r in rows]
        s = seeded_splits(paths, labels, 0.25, 1)
        split = np.array(["train" if x == "Training" else "val" for x in s])
    return paths, np.array(labels), split


def load_contents(paths):
    return [open(p, "rb").read() for p in paths]


def describe(extractor, contents, batch=256):
    """list of (X, kps, size) per image"""
    out = []
    for s in range(0, len(contents), batch):
        rb = pa.record_batch({"content": pa.array(contents[s:s + batch], pa.binary())})
        res = extractor.extract(rb)
        X, off = bovw.descriptor_matrix(res.column("descriptors"))
        K, _ = bovw.descriptor_matrix(res.column("keypoints"))
        w = res.column("image_width").fill_null(0).to_numpy(zero_copy_only=False)
        h = res.column("image_height").fill_null(0).to_numpy(zero_copy_only=False)
        for i in range(res.num_rows):
            out.append((X[off[i]:off[i + 1]].copy(), K[off[i]:off[i + 1]].copy(), (int(w[i]), int(h[i]))))
    return out


def stack(items):
    off = np.zeros(len(items) + 1, np.int64)
    np.cumsum([len(x[0]) for x in items], out=off[1:])
    X = np.concatenate([x[0] for x in items])
    K = np.concatenate([x[1] for x in items])
    sizes = np.array([x[2] for x in items], np.int64)
    return X, off, K, sizes


def l2(F):
    n = np.linalg.norm(F, axis=1, keepdims=True)
    return F / np.maximum(n, 1e-12)


CHANNELS = {}


def channel(fn):
    CHANNELS[fn.__name__] = fn
    return fn


def _local_encode(ds, name, extractor, encoder_factory, contents, split, max_desc=200_000, seed=0):
    t0 = time.time()
    items = describe(extractor, contents)
    t1 = time.time()
    tr = np.flatnonzero(split == "train")
    Xtr = np.concatenate([items[i][0] for i in tr])
    rng = np.random.default_rng(seed)
    if len(Xtr) > max_desc:
        Xtr = Xtr[np.sort(rng.choice(len(Xtr), max_desc, replace=False))]
    enc = encoder_factory()
    enc.fit(np.ascontiguousarray(Xtr, np.float32))
    t2 = time.time()
    X, off, K, sizes = stack(items)
    F = enc.encode(np.ascontiguousarray(X, np.float32), off, K[:, :2], sizes)
    t3 = time.time()
    print(f"  {ds}/{name}: describe {t1 - t0:.1f}s fit {t2 - t1:.1f}s encode {t3 - t2:.1f}s dim {F.shape[1]}",
          flush=True)
    return F


def get(ds, name, contents, split):
    f = CACHE / f"{ds}-{name}.npy"
    if f.exists():
        return np.load(f)
    F = CHANNELS[name](ds, contents, split)
    np.save(f, F.astype(np.float32))
    return F


@channel
def color(ds, contents, split):
    ex = bovw.ColorHistogram()
    return np.stack([x[0][0] for x in describe(ex, contents)])


@channel
def color2x2(ds, contents, split):
    ex = bovw.ColorHistogram(grid=(1, 2))
    return np.stack([x[0][0] for x in describe(ex, contents)])


@channel
def cnn224(ds, contents, split):
    ex = bovw.CNNEmbedding(input_size=224)
    return np.stack([x[0][0] for x in describe(ex, contents, batch=64)])


@channel
def cnn_native(ds, contents, split):
    ex = bovw.CNNEmbedding(input_size=100 if ds == "fruits" else 224)
    return np.stack([x[0][0] for x in describe(ex, contents, batch=64)])


@channel
def cnn96(ds, contents, split):
    """Fruits-360 at 96 px: the native 100 px rounded down to the network's stride (32)."""
    ex = bovw.CNNEmbedding(input_size=96 if ds == "fruits" else 224)
    return np.stack([x[0][0] for x in describe(ex, contents, batch=64)])


def _phow(color_, step):
    return bovw.PHOW(color=color_, step=step)


@channel
def phow_gray_fv64(ds, contents, split):
    return _local_encode(ds, "phow_gray_fv64", _phow("gray", 4 if ds == "grocery" else 3),
                         lambda: bovw.FisherVector(n_components=64, spatial_pyramid=(1, 2)), contents, split)


@channel
def phow_hsv_fv64(ds, contents, split):
    return _local_encode(ds, "phow_hsv_fv64", _phow("hsv", 4 if ds == "grocery" else 3),
                         lambda: bovw.FisherVector(n_components=64, spatial_pyramid=(1, 2)), contents, split)


class BowEnc:
    def __init__(self, k, pyramid):
        self.k, self.pyramid = k, pyramid

    def fit(self, X):
        km = bovw.KMeans(self.k, random_state=0, max_iter=50).fit(X)
        self.b = bovw.BagOfWords(km.cluster_centers_, spatial_pyramid=self.pyramid)
        return self

    def encode(self, X, off, kxy, sizes):
        return self.b.encode(X, off, kxy, sizes)


@channel
def phow_hsv_bow600(ds, contents, split):
    return _local_encode(ds, "phow_hsv_bow600", _phow("hsv", 4 if ds == "grocery" else 3),
                         lambda: BowEnc(600, (1, 2, 4)), contents, split)


@channel
def phow_gray_bow600(ds, contents, split):
    return _local_encode(ds, "phow_gray_bow600", _phow("gray", 4 if ds == "grocery" else 3),
                         lambda: BowEnc(600, (1, 2, 4)), contents, split)


def evaluate(ds, names, Fs, y, split, Cs=(1, 10, 100, 1000), weights=None):
    from sklearn.linear_model import LogisticRegression

    parts = []
    weights = weights or [1.0] * len(names)
    for n, F, w in zip(names, Fs, weights):
        F = F.astype(np.float64)
        if "bow" in n:
            F = np.sqrt(np.abs(F) / np.maximum(np.abs(F).sum(1, keepdims=True), 1e-12))
        parts.append(w * l2(F))
    X = np.concatenate(parts, axis=1)
    tr, va = split == "train", split == "val"
    best = None
    for C in Cs:
        clf = LogisticRegression(C=C, max_iter=3000)
        clf.fit(X[tr], y[tr])
        acc = float((clf.predict(X[va]) == y[va]).mean())
        print(f"    {ds} {'+'.join(names)} C={C}: val acc {acc:.4f}", flush=True)
        if best is None or acc > best[1]:
            best = (C, acc)
    return best


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset")
    ap.add_argument("combos", nargs="+", help="a+b+c channel combos")
    args = ap.parse_args()
    paths, y, split = dataset(args.dataset)
    print(f"{args.dataset}: {len(paths)} images, train {int((split == 'train').sum())}, val {int((split == 'val').sum())}")
    contents = None
    results = {}
    for combo in args.combos:
        names = [c.split("*")[0] for c in combo.split("+")]
        weights = [float(c.split("*")[1]) if "*" in c else 1.0 for c in combo.split("+")]
        Fs = []
        for n in names:
            if not (CACHE / f"{args.dataset}-{n}.npy").exists() and contents is None:
                contents = load_contents(paths)
            Fs.append(get(args.dataset, n, contents, split))
        results[combo] = evaluate(args.dataset, names, Fs, y, split, weights=weights)
        print(f"  => {combo}: best C={results[combo][0]} val acc {results[combo][1]:.4f}", flush=True)
    with open(CACHE / f"results-{args.dataset}.jsonl", "a") as f:
        for k, v in results.items():
            f.write(json.dumps({"combo": k, "C": v[0], "val_acc": v[1]}) + "\n")

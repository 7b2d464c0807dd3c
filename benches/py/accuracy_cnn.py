"""Accuracy of CNN features (bovw.CNNEmbedding) + logistic regression.

Usage (from the repository root, bovw built, ``pip install 'bovw[cnn]'``)::

    python benches/py/accuracy_cnn.py ../shared/grocery-store                       # train -> val
    python benches/py/accuracy_cnn.py ../shared/fruits-360 --input-size 100 --crop-fraction 1
    python benches/py/accuracy_cnn.py ../shared/fruits-360                          # upsampled to 224

For a ``<root>/<split>/<class>/*.jpg`` layout (``train``/``Training`` is
trained on, ``val``/``Validation`` or ``Test`` measured; ``--eval-split``
picks one), it prints the top-1 accuracy of four classifiers on the same
split: the CNN features alone, an HSV colour histogram alone, and the two
concatenated, each with a multinomial logistic regression (CNN features standardised,
C = ``--C``; histograms as they are, C = 100; the concatenation with each
block scaled to unit mean norm, C = 100), plus the feature extraction's time. The colour histogram is the one of
``shared/NOTES.md``: 18 x 4 x 4 HSV bins (OpenCV's HSV, hue 0..180) over the
pixels that are not near-white background (V > 230 and S < 30), on the whole
image and its 2 x 2 quarters, L1-normalised and square-rooted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def colour_histogram(rgb: np.ndarray) -> np.ndarray:
    import cv2

    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    keep = ~((hsv[..., 2] > 230) & (hsv[..., 1] < 30))
    h, w = keep.shape
    cells = [(slice(0, h), slice(0, w))] + [
        (slice(i * h // 2, (i + 1) * h // 2), slice(j * w // 2, (j + 1) * w // 2)) for i in range(2) for j in range(2)
    ]
    out = []
    for ys, xs in cells:
        px = hsv[ys, xs][keep[ys, xs]]
        hist, _ = np.histogramdd(px.astype(np.float64), bins=(18, 4, 4), range=((0, 180), (0, 256), (0, 256)))
        hist = hist.ravel()
        out.append(np.sqrt(hist / max(hist.sum(), 1.0)))
    return np.concatenate(out).astype(np.float32)


def listing(root: Path, eval_split: str | None) -> tuple[list[Path], list[str], list[Path], list[str]]:
    splits = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    train = splits.get("train") or splits.get("training")
    test = splits.get((eval_split or "").lower()) or splits.get("val") or splits.get("validation") or splits.get("test")
    if train is None or test is None:
        raise SystemExit(f"{root}: expected train/Training and val/Validation/Test folders, found {sorted(splits)}")

    def files(d: Path) -> tuple[list[Path], list[str]]:
        fs = sorted(d.glob("*/*.jpg")) + sorted(d.glob("*/*.png"))
        return fs, [f.parent.name for f in fs]

    return (*files(train), *files(test))


def main(argv: list[str] | None = None) -> int:
    import bovw
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--crop-fraction", type=float, default=0.875)
    ap.add_argument("--eval-split", default=None)
    ap.add_argument("--n-threads", type=int, default=None)
    ap.add_argument("--C", type=float, default=1.0, help="inverse regularisation of the logistic regression")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--cache", type=Path, default=None, help="an .npz to keep the features in (reused when present)")
    args = ap.parse_args(argv)

    tr_f, tr_y, te_f, te_y = listing(args.root, args.eval_split)
    cnn = bovw.CNNEmbedding(input_size=args.input_size, crop_fraction=args.crop_fraction)
    if args.cache is not None and args.cache.exists():
        z = np.load(args.cache)
        X_cnn, X_col, t_cnn = z["cnn"], z["colour"], float(z["t_cnn"])
        print(f"features from {args.cache}", file=sys.stderr)
    else:
        X_cnn, X_col, t_cnn = extract(cnn, tr_f + te_f, args)
        if args.cache is not None:
            np.savez(args.cache, cnn=X_cnn, colour=X_col, t_cnn=t_cnn)
    n = len(tr_f)
    print(f"{args.root.name}: {n} training and {len(te_f)} evaluation images, {len(set(tr_y))} classes; "
          f"input {args.input_size} px, crop {args.crop_fraction}")
    print(f"CNN features: {t_cnn:.1f} s wall ({1000 * t_cnn / (n + len(te_f)):.2f} ms/image, decode excluded)")
    ytr, yte = np.array(tr_y), np.array(te_y)
    # CNN features standardised; colour histograms as they are (square-rooted
    # frequencies); the concatenation scales each block to unit mean norm
    scaler = StandardScaler().fit(X_cnn[:n])
    Z_cnn = scaler.transform(X_cnn)
    blocks = (Z_cnn / np.linalg.norm(Z_cnn[:n], axis=1).mean(), X_col / np.linalg.norm(X_col[:n], axis=1).mean())
    for name, X, C in (("cnn", Z_cnn, args.C), ("colour", X_col, 100.0), ("cnn+colour", np.hstack(blocks), 100.0)):
        clf = LogisticRegression(C=C, max_iter=5000)
        t = time.perf_counter()
        clf.fit(X[:n], ytr)
        acc = float((clf.predict(X[n:]) == yte).mean())
        print(f"  {name:11s} top-1 {100 * acc:5.1f} %  ({X.shape[1]} features, LogisticRegression(C={C:g}), "
              f"fit {time.perf_counter() - t:.1f} s)")
    return 0


def extract(cnn, paths, args) -> tuple[np.ndarray, np.ndarray, float]:
    import bovw

    feats, hists = [], []
    t_cnn = 0.0
    for i in range(0, len(paths), args.batch):
        ims = [bovw.decode_rgb(p.read_bytes()) for p in paths[i:i + args.batch]]
        t = time.perf_counter()
        feats.append(cnn.transform(ims, n_threads=args.n_threads))
        t_cnn += time.perf_counter() - t
        hists.extend(colour_histogram(im) for im in ims)
        print(f"\r{min(i + args.batch, len(paths))}/{len(paths)} images", end="", file=sys.stderr)
    print(file=sys.stderr)
    return np.concatenate(feats), np.stack(hists), t_cnn


if __name__ == "__main__":
    sys.exit(main())

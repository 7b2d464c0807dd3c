"""Accuracy of the colour-histogram recipe (``bovw.ColorHistogram`` defaults).

    python benches/py/accuracy_color.py [--per-class 60] [--grocery]

Fruits-360 (``shared/fruits-360``, else the committed sample): the HSV
18 x 4 x 4 histogram with the near-white background left out, L1-normalised
and square-rooted (the defaults), ``n`` training images per class (evenly
spaced in each sorted class folder), scikit-learn's
``LogisticRegression(C=100)``, accuracy on the whole Test split.
``--grocery`` adds the grocery-store photos (train -> val split) with the
1 x 1 + 2 x 2 grid. Decoding and histograms go through
``bovw.extract_descriptors(method="color")`` (all cores). Not a benchmark:
prints the accuracies and the time taken.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

import bovw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, fruits_root  # noqa: E402


def features(paths: list[Path], **params) -> np.ndarray:
    batch = pa.table({"content": pa.array([p.read_bytes() for p in paths], pa.binary())})
    out = bovw.extract_descriptors(batch, method="color", **params)
    errors = [e for e in out.column("error").to_pylist() if e is not None]
    assert not errors, errors[:3]
    width = bovw.ColorHistogram(**params).descriptor_width
    flat = out.column("descriptors").combine_chunks().flatten().flatten()
    return np.asarray(flat.to_numpy(zero_copy_only=False), np.float32).reshape(len(paths), width)


def evaluate(train: list[tuple[Path, str]], test: list[tuple[Path, str]], **params) -> float:
    from sklearn.linear_model import LogisticRegression

    Xtr = features([p for p, _ in train], **params)
    Xte = features([p for p, _ in test], **params)
    clf = LogisticRegression(C=100, max_iter=2000).fit(Xtr, [c for _, c in train])
    return float(np.mean(clf.predict(Xte) == np.array([c for _, c in test])))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=60)
    ap.add_argument("--grocery", action="store_true")
    args = ap.parse_args(argv)

    root = fruits_root()
    classes = sorted(p.name for p in (root / "Training").iterdir() if p.is_dir())
    train, test = [], []
    for c in classes:
        files = sorted((root / "Training" / c).glob("*.jpg"))
        step = max(1, len(files) // args.per_class)
        train += [(f, c) for f in files[::step][: args.per_class]]
        test += [(f, c) for f in sorted((root / "Test" / c).glob("*.jpg"))]
    t0 = time.perf_counter()
    acc = evaluate(train, test)
    print(f"Fruits-360 ({root}): {len(classes)} classes, {len(train)} training images, {len(test)} Test images: "
          f"colour histogram recipe + LogisticRegression(C=100): accuracy {acc:.4f} ({time.perf_counter() - t0:.0f} s)")

    if args.grocery:
        for g in (REPO.parent / "shared" / "grocery-store", REPO / "shared" / "grocery-store"):
            if (g / "train").is_dir():
                tr = [(p, p.parent.name) for p in sorted(g.glob("train/*/*.jpg"))]
                va = [(p, p.parent.name) for p in sorted(g.glob("val/*/*.jpg"))]
                t0 = time.perf_counter()
                for grid in (1, (1, 2)):
                    acc = evaluate(tr, va, grid=grid)
                    print(f"grocery-store train -> val ({len(tr)} / {len(va)} images): colour histogram, grid {grid}: "
                          f"accuracy {acc:.4f} ({time.perf_counter() - t0:.0f} s)")
                break
        else:
            print("grocery-store: not found beside the checkout")
    return 0


if __name__ == "__main__":
    sys.exit(main())

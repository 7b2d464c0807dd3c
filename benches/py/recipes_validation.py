"""Accuracy and time of the main job's recipes on validation splits.

Never reads a test split:

- ``grocery``: ``../shared/grocery-store`` as it is (``train`` -> Training,
  ``val`` -> Validation; its test split is held out and not present);
- ``fruits``: Fruits-360's ``Training`` folder only, split per class by
  :func:`bovw.image.seeded_splits` (25 %, seed 1) into Training and
  Validation (a folder of symbolic links); its ``Test`` folder is not read.

Each recipe runs through ``bovw.job.run`` exactly as ``bovw run --recipe``
does; the script prints one Markdown row per (data set, recipe) with the
validation accuracy, macro-F1 and the job's wall time, and appends them as
JSON lines to ``--out``.

Usage::

    python benches/py/recipes_validation.py grocery fruits \\
        --recipes cnn+color cnn color phow+fisher bow --out recipes-validation.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
SHARED = HERE.parents[2].parent / "shared"  # ../shared beside the repository


def fruits_validation_tree(shared: Path, dest: Path, test_size: float = 0.25, seed: int = 1) -> Path:
    """Fruits-360 Training split into Training/Validation folders of links."""
    from bovw.image import list_images, seeded_splits

    rows = [r for r in list_images(str(shared / "fruits-360")) if r[2] == "Training"]
    paths, labels = [r[0] for r in rows], [r[1] for r in rows]
    for p, label, s in zip(paths, labels, seeded_splits(paths, labels, test_size, seed)):
        folder = dest / ("Training" if s == "Training" else "Validation") / label
        folder.mkdir(parents=True, exist_ok=True)
        os.symlink(p, folder / Path(p).name)
    return dest


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="+", choices=["grocery", "fruits"])
    ap.add_argument("--recipes", nargs="+", default=["cnn+color", "cnn", "color"])
    ap.add_argument("--out", default="recipes-validation.jsonl")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shared", type=Path, default=None,
                    help="folder holding fruits-360/ and grocery-store/ (default: ../shared beside the repository)")
    args = ap.parse_args(argv)
    shared = args.shared or SHARED

    from bovw.job import RunConfig, run

    print("| data set | recipe | validation accuracy | macro-F1 | wall s |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for ds in args.datasets:
            root = (shared / "grocery-store" if ds == "grocery"
                    else fruits_validation_tree(shared, Path(tmp) / "fruits-val"))
            for recipe in args.recipes:
                t0 = time.perf_counter()
                res = run(RunConfig(root=str(root), out=str(Path(tmp) / f"out-{ds}-{recipe}"), recipe=recipe,
                                    seed=args.seed, progress=False))
                wall = time.perf_counter() - t0
                ev = res.info["evaluation"]["Validation"]
                row = {"dataset": ds, "recipe": recipe, "accuracy": ev["accuracy"], "macro_f1": ev["macro_f1"],
                       "n_images": res.n_images, "wall_s": wall, "stages": res.stages}
                print(f"| {ds} | {recipe} | {ev['accuracy']:.2%} | {ev['macro_f1']:.3f} | {wall:.0f} |", flush=True)
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

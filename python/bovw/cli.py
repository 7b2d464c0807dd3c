"""``bovw`` command line: ``bovw run`` runs the main job.

Examples
--------
On the Fruits-360 sample shipped with the package (seconds), with the
default recipe (CNN features + colour histogram, :mod:`bovw.recipes`)::

    bovw run

The seed notebooks' bag of visual words on a full copy, with ORB, 500
visual words and 50 PCA components::

    bovw run ../shared/fruits-360 --method orb --k 500 --pca 50 --out out-orb

A Fisher-vector recipe on PHOW descriptors::

    bovw run ../shared/grocery-store --recipe phow+fisher
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence, Union

__all__ = ["main", "build_parser"]


def _pca_arg(text: str) -> Union[int, float, str, None]:
    t = text.strip().lower()
    if t == "auto":
        return "auto"
    if t in ("none", "off", "0"):
        return None
    try:
        if any(c in t for c in ".e"):
            v = float(t)
            if not 0.0 < v <= 1.0:
                raise argparse.ArgumentTypeError(f"a variance fraction must be in (0, 1], got {text}")
            return 1 if v == 1.0 and "." not in t else v
        v = int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a component count (e.g. 50), a variance fraction (e.g. 0.95) or 'none', got {text!r}"
        ) from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"a component count must be at least 1, got {text}")
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    """The ``bovw`` argument parser."""
    from bovw import __version__
    from bovw.extractors import EXTRACTORS
    from bovw.model import CLASSIFIERS
    from bovw.recipes import ALIASES, DEFAULT_RECIPE, RECIPES

    parser = argparse.ArgumentParser(prog="bovw", description="Fast bag-of-visual-words pipelines on images.")
    parser.add_argument("--version", action="version", version=f"bovw {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    r = sub.add_parser(
        "run",
        help="run the whole pipeline: descriptors, vocabulary, bag of words, PCA, classifier",
        description=(
            "Run the bag-of-visual-words pipeline on a folder of images laid out as "
            "<root>/<split>/<class>/* (Fruits-360: Training/Test) or <root>/<class>/* "
            "(then a seeded stratified split). With no ROOT, uses the Fruits-360 sample "
            "shipped with bovw."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    r.add_argument("root", nargs="?", default=None, help="image folder (default: the shipped sample)")
    r.add_argument("--out", default="bovw-out", help="output folder")
    r.add_argument(
        "--recipe", choices=sorted([*RECIPES, *ALIASES]), default=None,
        help=f"descriptors, encodings and classifier (bovw.recipes); default: bow when --method or a vocabulary "
             f"option (--k, --vocabulary, --max-iter, --n-init, --n-features) is given, else {DEFAULT_RECIPE}",
    )
    r.add_argument("--method", choices=sorted(EXTRACTORS), default=None,
                   help="descriptor (extractor) of the bow recipe (default sift)")
    r.add_argument("--k", type=_positive_int, default=None,
                   help="vocabulary size (visual words) of the bow recipe (default 100)")
    r.add_argument("--seed", type=int, default=0, help="random seed (K-Means init, splits, classifier)")
    r.add_argument(
        "--pca", type=_pca_arg, default="auto",
        help="PCA components: a count (50), a variance fraction (0.95), 'none' or 'auto' (the recipe's: "
             "0.95 for bow, none for the others)",
    )
    r.add_argument("--max-iter", type=_positive_int, default=None, help="K-Means iterations at most (bow; default 100)")
    r.add_argument("--n-init", type=_positive_int, default=None, help="K-Means restarts (bow; default 1)")
    r.add_argument("--max-descriptors", type=_positive_int, default=None,
                   help="fit the vocabulary on a seeded sample of at most this many descriptors")
    r.add_argument("--vocabulary", choices=["kmeans", "kmajority"], default=None,
                   help="kmeans (float K-Means) or kmajority (Hamming; binary descriptors such as ORB's)")
    r.add_argument("--classifier", choices=list(CLASSIFIERS), default="logreg", help="scikit-learn classifier")
    r.add_argument("--n-features", type=_positive_int, default=None,
                   help="keep at most this many keypoints per image (SIFT/ORB nfeatures)")
    r.add_argument("--max-pixels", type=_positive_int, default=None,
                   help="refuse images of more pixels (an errors.csv row, stage decode), read from the header "
                        "before decoding (default 50,000,000)")
    r.add_argument("--max-side", type=_positive_int, default=None,
                   help="refuse images with a longer side, pixels (default 16384)")
    r.add_argument("--oversize", choices=["refuse", "downscale"], default=None,
                   help="an image whose descriptors would need more than the per-image memory budget "
                        "(docs/reliability.md) is refused (an error row, the default) or downscaled to fit")
    r.add_argument("--test-size", type=float, default=0.25, help="test fraction for a <root>/<class>/ layout")
    r.add_argument("--n-threads", type=_positive_int, default=None, help="threads (default: all cores)")
    r.add_argument("--batch-size", type=_positive_int, default=512, help="images per extraction batch")
    r.add_argument("--engine", choices=["local", "spark"], default="local", help="run in-process or on Spark")
    r.add_argument("--master", default=None, help="Spark master URL for --engine spark (default local[*])")
    r.add_argument("--no-progress", action="store_true", help="no progress bars or messages")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``bovw`` console script; returns the exit code.

    Exit codes: 0 success; 2 bad arguments, input or output, found before
    any work (missing or unreadable folder, no images, invalid parameter,
    ``--out`` a file, not writable, holding other files or in use by another
    run: one error line on stderr, no traceback); 130 interrupted (Ctrl-C:
    ``--out`` keeps one complete run).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "run":
        parser.print_help()
        return 2 if args.command is None else 0

    from bovw.job import OutputError, RunConfig, format_stage_table, run

    params = {}
    if args.n_features is not None:
        params["n_features"] = args.n_features
    bow_only = [f"--{n.replace('_', '-')}" for n in ("k", "vocabulary", "max_iter", "n_init", "n_features")
                if getattr(args, n) is not None]
    if bow_only and args.recipe is None and args.method is None:
        args.recipe = "bow"  # a vocabulary option asks for the bag of visual words (SIFT unless --method)
    elif bow_only and args.recipe not in (None, "bow", "seed"):
        parser.error(f"{', '.join(bow_only)}: options of the bow recipe, not of --recipe {args.recipe}")
    limits = {name: getattr(args, name) for name in ("max_pixels", "max_side", "oversize")
              if getattr(args, name) is not None}
    config = RunConfig(
        root=args.root, out=args.out, recipe=args.recipe, method=args.method, k=args.k or 100, seed=args.seed,
        pca=args.pca, max_iter=args.max_iter or 100, n_init=args.n_init or 1, max_descriptors=args.max_descriptors,
        vocabulary=args.vocabulary or "kmeans", classifier=args.classifier, test_size=args.test_size,
        n_threads=args.n_threads, batch_size=args.batch_size, extractor_params=params or None, limits=limits or None,
        progress=not args.no_progress, engine=args.engine, master=args.master,
    )
    try:
        result = run(config)
    except (OutputError, FileNotFoundError, NotADirectoryError, PermissionError, ValueError, TypeError,
            ImportError) as e:
        print(f"bovw: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bovw: interrupted; {args.out!r} holds one complete run (the previous one unless this one "
              "had finished writing; its run.json says which)", file=sys.stderr)
        return 130
    if not args.no_progress:
        print()
        print("Stage timings (Durée des opérations)")
        print(format_stage_table(result.stages))
        print()
    print(f"images: {result.n_images} used, {result.n_errors} in {result.out / 'errors.csv'}")
    from bovw.report import format_summary

    print(format_summary(result.info.get("evaluation") or {}, info=result.info))
    print(f"report: {result.out / 'report.html'}")
    print(f"outputs: {result.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Evaluation of a run: metrics, the printed summary and ``report.html``.

``bovw run`` calls :func:`evaluate_splits` after the classifier (one
:func:`evaluate` per evaluated split: ``Test``, and ``Validation`` when the
data set has one), stores the result in ``run.json`` under ``"evaluation"``,
prints :func:`format_summary` and writes :func:`write_report`'s
``report.html``: one self-contained file (inline CSS, inline SVG charts,
thumbnails as base64 ``data:`` URIs; no JavaScript, no network, no
plotting library) that opens from disk.

The report shows, for the data scientist who asks "where does it lose?":

- the run: data set root, recipe (extractor, vocabulary, PCA, classifier),
  counts, unusable images (with a link to ``errors.csv``), versions;
- accuracy and macro-F1 per split;
- per-class recall, worst first, as a horizontal bar chart;
- the confusion matrix as a heat map (classes sorted by name, correct
  predictions in blue on the diagonal, errors in red, hover titles on every
  non-empty cell and row), and a zoomed view of the block of classes that
  the most confused pairs involve;
- the most confused pairs (true -> predicted), each with a few thumbnails of
  misclassified images and of images of the class they were taken for;
- the stage times (seconds and share of the total; stages that ran beside
  another, such as the model fit beside the encoding, drawn apart).

Thumbnails are the original JPEG/PNG bytes when the file is already small
(Fruits-360's 100 x 100 JPEGs), otherwise the image decoded with
:func:`bovw.decode_rgb`, shrunk by pixel-area averaging (:func:`downscale`,
what OpenCV's ``INTER_AREA`` does) and written as PNG by the standard library
(:func:`encode_png`): neither Pillow nor matplotlib is needed.
"""

from __future__ import annotations

import base64
import csv
import html
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

__all__ = [
    "choose_examples",
    "downscale",
    "encode_png",
    "evaluate",
    "evaluate_splits",
    "format_summary",
    "missing_evaluation_reason",
    "thumbnail",
    "write_report",
    "write_run_report",
]

#: Splits that :func:`evaluate_splits` evaluates, in report order.
EVALUATED_SPLITS = ("Test", "Validation")


# ----------------------------------------------------------------------------------------------
# metrics


def _labels(values: Any, name: str) -> list[Optional[str]]:
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{name}: expected a sequence of labels, got a single {type(values).__name__}")
    try:
        seq = list(values)
    except TypeError:
        raise TypeError(f"{name}: expected a sequence of labels, got {type(values).__name__}") from None
    return [None if v is None else str(v) for v in seq]


def _strict_labels(values: Any, name: str) -> list[str]:
    out = _labels(values, name)
    for i, v in enumerate(out):
        if v is None:
            raise ValueError(f"{name}[{i}] is None: every row needs a label (drop the rows without a prediction)")
    return [str(v) for v in out]


def evaluate(y_true: Sequence[Any], y_pred: Sequence[Any], labels: Optional[Sequence[Any]] = None, *,
             top_pairs: Optional[int] = 20) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class scores and the most confused pairs.

    Parameters
    ----------
    y_true : sequence of str, length n_samples
        True labels (compared as strings).
    y_pred : sequence of str, length n_samples
        Predicted labels.
    labels : sequence of str, optional
        The classes of the confusion matrix, in its row/column order (the job
        passes every Training class, so classes never predicted show up);
        default: the sorted union of ``y_true`` and ``y_pred``. Must include
        every label of both.
    top_pairs : int or None, default 20
        How many confused pairs to keep (None: all).

    Returns
    -------
    dict
        JSON-serialisable:

        ``n_samples`` (int), ``n_classes`` (int: classes present in
        ``y_true``), ``n_errors`` (int),
        ``accuracy`` (float, or None when ``n_samples`` is 0),
        ``macro_f1`` (float or None): the unweighted mean of the per-class F1
        over the classes present in ``y_true`` (scikit-learn's
        ``f1_score(average="macro", labels=<classes of y_true>,
        zero_division=0)``: a class that is never predicted has precision 0),
        ``per_class``: one dict per ``labels`` entry with ``label``,
        ``support`` (true count), ``predicted`` (predicted count),
        ``correct``, ``precision`` (0.0 when never predicted), ``recall`` and
        ``f1`` (None when ``support`` is 0),
        ``confused_pairs``: the off-diagonal cells, largest first (ties: by
        share, then by name), each ``true``, ``predicted``, ``count`` and
        ``share`` (count / support of the true class),
        ``n_confused_pairs`` (int: non-zero off-diagonal cells, before
        ``top_pairs``),
        ``confusion``: ``labels`` and ``matrix`` (list of lists of int, rows =
        true, columns = predicted).

    Raises
    ------
    TypeError
        If ``y_true``/``y_pred`` is not a sequence of labels.
    ValueError
        If they differ in length, ``y_pred`` holds None (the message names
        the row), ``labels`` repeats a class or misses one that occurs, or
        ``top_pairs`` is negative.

    References
    ----------
    .. [1] scikit-learn, ``sklearn.metrics.f1_score``,
       ``precision_recall_fscore_support`` and ``confusion_matrix``.
    .. [2] M. Sokolova, G. Lapalme, "A systematic analysis of performance
       measures for classification tasks", Information Processing and
       Management 45(4), 2009 (macro-averaged F-score).

    Examples
    --------
    >>> from bovw.report import evaluate
    >>> ev = evaluate(["a", "a", "b", "b"], ["a", "b", "b", "b"])
    >>> ev["accuracy"], round(ev["macro_f1"], 4)
    (0.75, 0.7333)
    >>> ev["confused_pairs"]
    [{'true': 'a', 'predicted': 'b', 'count': 1, 'share': 0.5}]
    """
    from sklearn import metrics

    yt = _strict_labels(y_true, "y_true")
    yp = _strict_labels(y_pred, "y_pred")
    if len(yt) != len(yp):
        raise ValueError(f"y_true and y_pred differ in length: {len(yt)} and {len(yp)}")
    if top_pairs is not None and top_pairs < 0:
        raise ValueError(f"top_pairs: must be >= 0 or None, got {top_pairs}")
    occurring = set(yt) | set(yp)
    if labels is None:
        classes = sorted(occurring)
    else:
        classes = _strict_labels(labels, "labels")
        if len(set(classes)) != len(classes):
            dup = sorted({c for c in classes if classes.count(c) > 1})
            raise ValueError(f"labels: each class once, got repeated {dup[:5]}")
        missing = sorted(occurring - set(classes))
        if missing:
            raise ValueError(f"labels: misses {len(missing)} class(es) found in y_true/y_pred, e.g. {missing[:5]}")
    n = len(yt)
    k = len(classes)
    if n == 0:
        cm = np.zeros((k, k), np.int64)
    else:
        cm = metrics.confusion_matrix(yt, yp, labels=classes).astype(np.int64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    correct = np.diag(cm)
    present = sorted(set(yt))
    accuracy: Optional[float] = None
    macro_f1: Optional[float] = None
    if n:
        accuracy = float(correct.sum() / n)
        macro_f1 = float(metrics.f1_score(yt, yp, labels=present, average="macro", zero_division=0))
        p, r, f, _ = metrics.precision_recall_fscore_support(yt, yp, labels=classes, zero_division=0)
    else:
        p = r = f = np.zeros(k)
    per_class = []
    for j, c in enumerate(classes):
        s = int(support[j])
        per_class.append({
            "label": c,
            "support": s,
            "predicted": int(predicted[j]),
            "correct": int(correct[j]),
            "precision": float(p[j]),
            "recall": float(r[j]) if s else None,
            "f1": float(f[j]) if s else None,
        })
    off = cm.copy()
    np.fill_diagonal(off, 0)
    ti, pi = np.nonzero(off)
    pairs = [
        {"true": classes[a], "predicted": classes[b], "count": int(off[a, b]), "share": float(off[a, b] / support[a])}
        for a, b in zip(ti, pi)
    ]
    pairs.sort(key=lambda d: (-d["count"], -d["share"], d["true"], d["predicted"]))
    return {
        "n_samples": n,
        "n_classes": len(present),
        "n_errors": int(n - correct.sum()),
        "accuracy": accuracy,
        "macro_f1": macro_f1,
        "per_class": per_class,
        "confused_pairs": pairs if top_pairs is None else pairs[:top_pairs],
        "n_confused_pairs": len(pairs),
        "confusion": {"labels": classes, "matrix": cm.tolist()},
    }


def evaluate_splits(y_true: Sequence[Any], y_pred: Sequence[Any], splits: Sequence[Any],
                    labels: Optional[Sequence[Any]] = None, *, evaluated: Sequence[str] = EVALUATED_SPLITS,
                    top_pairs: Optional[int] = 20) -> dict[str, dict[str, Any]]:
    """:func:`evaluate` on each evaluated split: what ``run.json`` keeps under ``"evaluation"``.

    Parameters
    ----------
    y_true, y_pred, splits : sequences of length n_images
        Label, prediction (None for an image without one: unusable, or no
        classifier) and split name of every listed image.
    labels : sequence of str, optional
        Classes every matrix shows (the Training classes); each split adds
        the labels it holds.
    evaluated : sequence of str, default ("Test", "Validation")
        Splits to evaluate, in order.
    top_pairs : int or None, default 20
        Passed to :func:`evaluate`.

    Returns
    -------
    dict of str to dict
        ``{split: evaluate(...)}`` for each split of ``evaluated`` that has
        at least one image with a prediction, in ``evaluated`` order; empty
        when there is none (:func:`missing_evaluation_reason` says why).

    Raises
    ------
    ValueError
        If the three sequences differ in length.
    """
    yt = _labels(y_true, "y_true")
    yp = _labels(y_pred, "y_pred")
    sp = _labels(splits, "splits")
    if not (len(yt) == len(yp) == len(sp)):
        raise ValueError(f"y_true, y_pred and splits differ in length: {len(yt)}, {len(yp)}, {len(sp)}")
    base = set(_strict_labels(labels, "labels")) if labels is not None else set()
    out: dict[str, dict[str, Any]] = {}
    for split in evaluated:
        rows = [i for i in range(len(yt)) if sp[i] == split and yp[i] is not None and yt[i] is not None]
        if not rows:
            continue
        t = [str(yt[i]) for i in rows]
        p = [str(yp[i]) for i in rows]
        classes = sorted(base | set(t) | set(p))
        out[split] = evaluate(t, p, classes, top_pairs=top_pairs)
    return out


def missing_evaluation_reason(info: Optional[Mapping[str, Any]]) -> str:
    """Why a run has no evaluation, from its ``run.json`` info (``counts``)."""
    counts = dict((info or {}).get("counts") or {})
    n_classes = counts.get("training_classes")
    if n_classes is not None and n_classes < 2:
        return (f"no classifier: the Training split has {n_classes} class{'es' if n_classes != 1 else ''} "
                "with a usable image, a classifier needs at least two")
    if counts.get("test", 0) == 0:
        return "no usable Test image: nothing to evaluate"
    return "no image of the evaluated splits has a prediction"


def _as_splits(evaluation: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """A mapping split -> evaluation; a single :func:`evaluate` result becomes ``{"": ev}``."""
    if "confusion" in evaluation and "accuracy" in evaluation:
        return {"": evaluation}
    out = {}
    for k, v in evaluation.items():
        if not isinstance(v, Mapping) or "confusion" not in v:
            raise ValueError(f"evaluation[{k!r}]: expected the dict evaluate() returns")
        out[str(k)] = v
    return out


def _split_title(split: str) -> str:
    return f"{split} split" if split else "evaluation"


def format_summary(evaluation: Mapping[str, Any], top: int = 5, *, info: Optional[Mapping[str, Any]] = None) -> str:
    """The lines ``bovw run`` prints: accuracy, macro-F1, worst classes, most confused pairs.

    Parameters
    ----------
    evaluation : dict
        ``run.json``'s ``"evaluation"`` (split -> :func:`evaluate` result, as
        :func:`evaluate_splits` returns), or one :func:`evaluate` result.
    top : int, default 5
        Worst classes and confused pairs listed per split.
    info : dict, optional
        The run's info, to say why there is no evaluation.

    Returns
    -------
    str
        Lines without a trailing newline.

    Raises
    ------
    ValueError
        If ``top`` is negative or ``evaluation`` is not shaped as above.
    """
    if top < 0:
        raise ValueError(f"top: must be >= 0, got {top}")
    splits = _as_splits(evaluation)
    if not splits:
        return f"evaluation: none ({missing_evaluation_reason(info)})"
    lines: list[str] = []
    for split, ev in splits.items():
        head = f"{_split_title(split)} ({ev['n_samples']} images, {ev['n_classes']} classes)"
        if ev["accuracy"] is None:
            lines.append(f"{head}: no image")
            continue
        lines.append(f"{head}: accuracy {ev['accuracy']:.4f}, macro-F1 {ev['macro_f1']:.4f}")
        rows = [c for c in ev["per_class"] if c["recall"] is not None]
        rows.sort(key=lambda c: (c["recall"], -c["support"], c["label"]))
        if top and rows:
            lines.append("  worst classes by recall:")
            w = max(len(c["label"]) for c in rows[:top])
            for c in rows[:top]:
                lines.append(f"    {c['label']:<{w}}  {c['recall']:.3f}  ({c['correct']}/{c['support']})")
        pairs = ev["confused_pairs"][:top]
        if top and pairs:
            lines.append("  most confused pairs (true -> predicted):")
            names = [f"{p['true']} -> {p['predicted']}" for p in pairs]
            w = max(len(s) for s in names)
            for s, p in zip(names, pairs):
                lines.append(f"    {s:<{w}}  {p['count']:>4}  ({p['share']:.1%} of {p['true']})")
        elif top:
            lines.append("  no confused pair: every image is classified correctly")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# examples and thumbnails


def choose_examples(paths: Sequence[str], y_true: Sequence[Any], y_pred: Sequence[Any], splits: Sequence[Any],
                    pairs: Iterable[Mapping[str, Any]], *, split: str = "Test", n: int = 3,
                    seed: int = 0) -> list[dict[str, Any]]:
    """A few image paths for each confused pair, chosen with a seeded generator.

    Parameters
    ----------
    paths, y_true, y_pred, splits : sequences of length n_images
        The run's listing and predictions (None where an image has none).
    pairs : iterable of dict
        Confused pairs (``true``, ``predicted``), e.g. ``evaluate(...)["confused_pairs"][:8]``.
    split : str, default "Test"
        The split the pairs were counted on.
    n : int, default 3
        Paths per list.
    seed : int, default 0
        ``numpy.random.default_rng(seed)`` picks them (sorted back into listing order).

    Returns
    -------
    list of dict
        Per pair: ``true``, ``predicted``, ``misclassified`` (images of
        ``split`` labelled ``true`` and predicted ``predicted``) and
        ``predicted_class`` (images of the predicted class classified
        correctly, from ``split`` first, then other splits; images merely
        labelled so when none is classified correctly).

    Raises
    ------
    ValueError
        If the sequences differ in length or ``n`` is negative.
    """
    if n < 0:
        raise ValueError(f"n: must be >= 0, got {n}")
    yt = _labels(y_true, "y_true")
    yp = _labels(y_pred, "y_pred")
    sp = _labels(splits, "splits")
    if not (len(paths) == len(yt) == len(yp) == len(sp)):
        raise ValueError(f"paths, y_true, y_pred and splits differ in length: "
                         f"{len(paths)}, {len(yt)}, {len(yp)}, {len(sp)}")
    rng = np.random.default_rng(seed)
    yt_a = np.array(yt, dtype=object)
    yp_a = np.array(yp, dtype=object)
    sp_a = np.array(sp, dtype=object)

    def pick(candidates: list[np.ndarray]) -> list[str]:
        chosen: list[int] = []
        for rows in candidates:
            rows = np.setdiff1d(rows, chosen)
            need = n - len(chosen)
            if need <= 0:
                break
            if len(rows) > need:
                rows = rng.choice(rows, need, replace=False)
            chosen.extend(int(r) for r in np.sort(rows))
        return [str(paths[i]) for i in chosen]

    out = []
    for pair in pairs:
        a, b = str(pair["true"]), str(pair["predicted"])
        in_split = sp_a == split
        wrong = np.flatnonzero(in_split & (yt_a == a) & (yp_a == b))
        right_b = (yt_a == b) & (yp_a == b)
        out.append({
            "true": a,
            "predicted": b,
            "misclassified": pick([wrong]),
            "predicted_class": pick([np.flatnonzero(in_split & right_b), np.flatnonzero(~in_split & right_b),
                                     np.flatnonzero(yt_a == b)]),
        })
    return out


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float64: the share of input pixel j in output pixel i's footprint."""
    scale = n_in / n_out
    edges = np.arange(n_out + 1) * scale
    lo, hi = edges[:-1, None], edges[1:, None]
    j = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0.0, None)
    return np.asarray(overlap / scale, np.float64)


def downscale(image: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink an image to fit in ``max_side`` x ``max_side`` by pixel-area averaging.

    Each output pixel is the mean of the input pixels under its footprint,
    weighted by overlap, as OpenCV's ``resize(..., INTER_AREA)`` does when
    shrinking; the output size keeps the aspect ratio (each side
    ``round(side * max_side / longest side)``, at least 1). Images already
    small enough are returned unchanged.

    Parameters
    ----------
    image : ndarray of shape (height, width) or (height, width, channels), dtype uint8
    max_side : int
        Longest output side, pixels (>= 1).

    Returns
    -------
    ndarray, dtype uint8, same number of dimensions

    Raises
    ------
    ValueError
        If ``image`` is not 2-D/3-D uint8 with at least one pixel, or ``max_side`` < 1.
    """
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"image: expected a non-empty (h, w) or (h, w, c) uint8 array, got {a.dtype} {a.shape}")
    if max_side < 1:
        raise ValueError(f"max_side: must be >= 1, got {max_side}")
    h, w = a.shape[:2]
    longest = max(h, w)
    if longest <= max_side:
        return a
    oh = max(1, round(h * max_side / longest))
    ow = max(1, round(w * max_side / longest))
    wh = _area_weights(h, oh)
    ww = _area_weights(w, ow)
    f = a.astype(np.float64)
    if a.ndim == 2:
        out = wh @ f @ ww.T
    else:
        out = np.einsum("ih,hwc,jw->ijc", wh, f, ww, optimize=True)
    return np.asarray(np.clip(np.rint(out), 0, 255), np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(image: np.ndarray, level: int = 9) -> bytes:
    """Encode an 8-bit gray or RGB image as PNG, with the standard library only.

    Each scanline gets the filter (None, Sub, Up, Average or Paeth) whose
    output has the smallest sum of absolute values read as signed bytes
    (the heuristic of the PNG specification, 12.8), then the whole stream is
    deflated by ``zlib``.

    Parameters
    ----------
    image : ndarray of shape (height, width) or (height, width, 3), dtype uint8
    level : int, default 9
        ``zlib`` compression level, 0-9.

    Returns
    -------
    bytes
        A PNG file (colour type 0 or 2, bit depth 8, no interlace).

    Raises
    ------
    ValueError
        If ``image`` is not such an array (empty, other dtype, other channel count).

    References
    ----------
    .. [1] W3C, "Portable Network Graphics (PNG) Specification (Second
       Edition)", ISO/IEC 15948:2003, sections 9 (filtering) and 11 (chunks).
    """
    a = np.asarray(image)
    if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)) or a.size == 0:
        raise ValueError(f"image: expected a non-empty (h, w) or (h, w, 3) uint8 array, got {a.dtype} {a.shape}")
    if not 0 <= level <= 9:
        raise ValueError(f"level: must be in 0..9, got {level}")
    h, w = a.shape[:2]
    bpp = 1 if a.ndim == 2 else 3
    raw = np.ascontiguousarray(a).reshape(h, w * bpp).astype(np.int16)
    left = np.zeros_like(raw)
    left[:, bpp:] = raw[:, :-bpp]
    up = np.zeros_like(raw)
    up[1:] = raw[:-1]
    upleft = np.zeros_like(raw)
    upleft[1:, bpp:] = raw[:-1, :-bpp]
    p = left + up - upleft
    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - upleft)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
    candidates = np.stack([raw, raw - left, raw - up, raw - (left + up) // 2, raw - paeth]) & 0xFF
    signed = np.where(candidates > 127, 256 - candidates, candidates).sum(axis=2)  # (5, h)
    best = np.argmin(signed, axis=0)
    rows = candidates[best, np.arange(h)].astype(np.uint8)
    stream = np.concatenate([best.astype(np.uint8)[:, None], rows], axis=1).tobytes()
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0 if bpp == 1 else 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(stream, level))
            + _png_chunk(b"IEND", b""))


class _FileReader:
    """Reads listed images for thumbnails: local paths by :func:`bovw.image.read_file`,
    ``s3://`` URIs with one pyarrow S3 client (endpoint from ``AWS_ENDPOINT_URL_S3`` /
    ``AWS_ENDPOINT_URL``, as the engines and the output upload use)."""

    def __init__(self, limit: int = 50_000_000) -> None:
        self.limit = limit
        self._s3: Any = None

    def __call__(self, path: str) -> tuple[Optional[bytes], Optional[str]]:
        from bovw.image import read_file

        p = str(path)
        if not (p.startswith("s3://") or p.startswith("s3a://")):
            return read_file(p)
        try:
            from bovw.spark.io import s3_bucket_key, s3_filesystem

            if self._s3 is None:
                self._s3 = s3_filesystem(os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))
            with self._s3.open_input_stream(s3_bucket_key(p)) as f:
                data = f.read(self.limit + 1)
        except Exception as e:  # network, credentials, a missing object: the report shows the reason
            return None, f"cannot read from S3: {e}"
        return (None, f"larger than {self.limit} bytes") if len(data) > self.limit else (data, None)


def thumbnail(data: bytes, size: int = 96, *, embed_max_bytes: int = 24_000) -> tuple[str, bytes, int, int]:
    """A small image for the report: ``(mime type, bytes, width, height)``.

    The original bytes when the file is a JPEG or PNG whose longest side is
    at most 1.5 ``size`` and that weighs at most ``embed_max_bytes``;
    otherwise :func:`bovw.decode_rgb`, :func:`downscale` to ``size`` and
    :func:`encode_png`.

    Raises
    ------
    ValueError
        If the bytes are not a decodable JPEG/PNG (:func:`bovw.decode_rgb`'s message).
    """
    from bovw.image import decode_rgb

    rgb = decode_rgb(data)
    h, w = rgb.shape[:2]
    mime = "image/jpeg" if data[:3] == b"\xff\xd8\xff" else "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else None
    if mime is not None and max(h, w) <= 1.5 * size and len(data) <= embed_max_bytes:
        return mime, bytes(data), w, h
    small = downscale(rgb, size)
    return "image/png", encode_png(small), small.shape[1], small.shape[0]


# ----------------------------------------------------------------------------------------------
# HTML helpers


def _text(value: Any) -> str:
    """Printable text: undecodable bytes of file names (surrogate escapes) become ``\\xNN``."""
    s = str(value)
    try:
        b = s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        b = s.encode("utf-8", "backslashreplace")
    return b.decode("utf-8", "backslashreplace")


def _e(value: Any) -> str:
    """Escaped for HTML/SVG text and quoted attributes."""
    return html.escape(_text(value), quote=True)


def _pct(x: Optional[float], digits: int = 2) -> str:
    return "n/a" if x is None else f"{x * 100:.{digits}f} %"


def _hex(rgb: Sequence[float]) -> str:
    return "#" + "".join(f"{int(round(min(max(c, 0), 255))):02x}" for c in rgb)


def _ramp(stops: Sequence[str], t: float) -> str:
    """Linear interpolation in a list of ``#rrggbb`` stops, ``t`` in [0, 1]."""
    t = min(max(float(t), 0.0), 1.0) * (len(stops) - 1)
    i = min(int(t), len(stops) - 2)
    f = t - i
    a = [int(stops[i][k:k + 2], 16) for k in (1, 3, 5)]
    b = [int(stops[i + 1][k:k + 2], 16) for k in (1, 3, 5)]
    return _hex([x + (y - x) * f for x, y in zip(a, b)])


# ColorBrewer sequential schemes (Cynthia Brewer, colorbrewer2.org): Blues-9 and Reds-9.
_BLUES = ["#f7fbff", "#deebf7", "#c6dbef", "#9ecae1", "#6baed6", "#4292c6", "#2171b5", "#08519c", "#08306b"]
_REDS = ["#fff5f0", "#fee0d2", "#fcbba1", "#fc9272", "#fb6a4a", "#ef3b2c", "#cb181d", "#a50f15", "#67000d"]
# recall bars: below 50 %, below the split's accuracy, the rest (ColorBrewer RdYlBu)
_RECALL_LOW, _RECALL_BELOW, _RECALL_OK = "#d73027", "#fc8d59", "#4575b4"


def _recall_color(recall: float, accuracy: Optional[float]) -> str:
    if recall < 0.5:
        return _RECALL_LOW
    if accuracy is not None and recall < accuracy:
        return _RECALL_BELOW
    return _RECALL_OK


def _text_width(s: str, font_px: float) -> float:
    return len(_text(s)) * font_px * 0.58


_CSS = """
:root { --fg: #1f2328; --muted: #57606a; --line: #d0d7de; --bg2: #f6f8fa; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: var(--fg); margin: 0 auto; max-width: 1280px; padding: 24px 32px 48px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 36px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 18px 0 6px; }
p.lead { color: var(--muted); margin: 0 0 16px; word-break: break-all; }
p.note { color: var(--muted); font-size: 13px; margin: 4px 0 10px; }
.warn { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px; padding: 10px 14px; margin: 12px 0; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 12px 0; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 16px; min-width: 170px; background: #fff; }
.card .k { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card .v { font-size: 28px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .d { color: var(--muted); font-size: 12px; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr)); gap: 8px 24px; }
table { border-collapse: collapse; font-size: 13px; }
td, th { padding: 3px 10px 3px 0; text-align: left; vertical-align: top; }
th { color: var(--muted); font-weight: 500; white-space: nowrap; }
table.data th, table.data td { border-bottom: 1px solid var(--line); padding: 4px 10px; }
table.data td.n, table.data th.n { text-align: right; font-variant-numeric: tabular-nums; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; }
.scroll { max-height: 72vh; overflow: auto; border: 1px solid var(--line); border-radius: 6px; padding: 6px; }
.wide { overflow-x: auto; }
svg text { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }
.pair { border: 1px solid var(--line); border-radius: 8px; padding: 8px 14px 4px; margin: 10px 0; }
.pair h3 { margin: 0; display: inline-block; }
.pair .share { color: var(--muted); font-size: 13px; margin-left: 10px; }
.strips { display: flex; flex-wrap: wrap; gap: 4px 28px; }
.strip { display: flex; gap: 6px; align-items: flex-start; margin: 6px 0; }
.strip .cap { width: 112px; color: var(--muted); font-size: 12px; padding-top: 4px; }
figure.thumb { margin: 0; width: 100px; text-align: center; }
figure.thumb img { width: 96px; height: 96px; object-fit: contain; background: var(--bg2); border-radius: 4px;
                   border: 2px solid transparent; }
figure.thumb.bad img { border-color: #cf222e; }
figure.thumb.good img { border-color: #2da44e; }
figure.thumb figcaption { font-size: 10px; color: var(--muted); overflow: hidden; text-overflow: ellipsis;
                          white-space: nowrap; }
figure.thumb.missing { width: 96px; height: 96px; background: var(--bg2); color: var(--muted); font-size: 11px;
                       display: flex; align-items: center; justify-content: center; border-radius: 4px; }
details { margin: 8px 0; }
summary { cursor: pointer; color: #0969da; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
"""


# ----------------------------------------------------------------------------------------------
# charts (inline SVG)


def _recall_chart(ev: Mapping[str, Any]) -> str:
    rows = [c for c in ev["per_class"] if c["recall"] is not None]
    rows.sort(key=lambda c: (c["recall"], -c["support"], c["label"]))
    if not rows:
        return '<p class="note">No class has a test image.</p>'
    font = 12
    bar_h = 16
    label_w = min(320, max(_text_width(c["label"], font) for c in rows) + 10)
    plot_w = 520
    width = int(label_w + plot_w + 120)
    top = 22
    height = top + bar_h * len(rows) + 8
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="per-class recall">']
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = label_w + t * plot_w
        out.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - 6}" stroke="#d0d7de" '
                   f'stroke-width="1"/>')
        out.append(f'<text x="{x:.1f}" y="{top - 8}" font-size="11" fill="#57606a" text-anchor="middle">'
                   f'{t:.0%}</text>')
    for i, c in enumerate(rows):
        y = top + i * bar_h
        r = c["recall"]
        title = (f"{c['label']}: recall {r:.3f} ({c['correct']}/{c['support']}), precision {c['precision']:.3f} "
                 f"({c['correct']}/{c['predicted']} predicted), F1 {c['f1']:.3f}")
        out.append(f'<g class="bar"><title>{_e(title)}</title>')
        out.append(f'<text x="{label_w - 6:.1f}" y="{y + bar_h - 4}" font-size="{font}" text-anchor="end">'
                   f'{_e(c["label"])}</text>')
        out.append(f'<rect x="{label_w:.1f}" y="{y + 2}" width="{max(r * plot_w, 1.5):.1f}" height="{bar_h - 4}" '
                   f'fill="{_recall_color(r, ev["accuracy"])}"/>')
        out.append(f'<text x="{label_w + r * plot_w + 5:.1f}" y="{y + bar_h - 4}" font-size="11" fill="#1f2328" '
                   f'data-label="{_e(c["label"])}" data-recall="{r!r}">{r * 100:.1f} % '
                   f'<tspan fill="#57606a">({c["correct"]}/{c["support"]})</tspan></text></g>')
    out.append("</svg>")
    return "".join(out)


def _heatmap(labels: Sequence[str], cm: np.ndarray, *, cell: float, show_counts: bool, css_class: str,
             row_titles: bool = True) -> str:
    """Confusion heat map: diagonal in blue (recall), errors in red (share of the row), sqrt-scaled."""
    n = len(labels)
    support = cm.sum(axis=1)
    font = max(4.0, min(12.0, cell * 0.85))
    label_w = max(max((_text_width(s, font) for s in labels), default=0) + 8, 72.0)  # room for the axis names
    x0, y0 = label_w + 14, label_w + 14
    size = n * cell
    width, height = int(x0 + size + 12), int(y0 + size + 12)
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" class="{css_class}" width="{width}" height="{height}" '
         f'viewBox="0 0 {width} {height}" role="img" aria-label="confusion matrix">']
    o.append(f'<text x="{x0 - 6:.1f}" y="{y0 - 20:.1f}" font-size="11" fill="#57606a" text-anchor="end">'
             f'predicted &#8594;</text>')
    o.append(f'<text x="{x0 - 6:.1f}" y="{y0 - 6:.1f}" font-size="11" fill="#57606a" text-anchor="end">'
             f'true &#8595;</text>')
    o.append(f'<rect x="{x0}" y="{y0}" width="{size:.1f}" height="{size:.1f}" fill="#fbfbfc" stroke="#d0d7de"/>')
    if n > 20:
        for k in range(10, n, 10):
            o.append(f'<line x1="{x0 + k * cell:.1f}" y1="{y0}" x2="{x0 + k * cell:.1f}" y2="{y0 + size:.1f}" '
                     f'stroke="#eaeef2" stroke-width="0.6"/>')
            o.append(f'<line x1="{x0}" y1="{y0 + k * cell:.1f}" x2="{x0 + size:.1f}" y2="{y0 + k * cell:.1f}" '
                     f'stroke="#eaeef2" stroke-width="0.6"/>')
    for i, lab in enumerate(labels):
        cy = y0 + (i + 0.5) * cell + font * 0.35
        cx = x0 + (i + 0.5) * cell + font * 0.35
        o.append(f'<text x="{x0 - 4:.1f}" y="{cy:.2f}" font-size="{font:.1f}" text-anchor="end">{_e(lab)}</text>')
        o.append(f'<text x="{cx:.2f}" y="{y0 - 4:.1f}" font-size="{font:.1f}" '
                 f'transform="rotate(-90 {cx:.2f} {y0 - 4:.1f})">{_e(lab)}</text>')
    if row_titles:
        for i, lab in enumerate(labels):
            s = int(support[i])
            rec = f"recall {cm[i, i] / s:.3f} ({int(cm[i, i])}/{s})" if s else "no test image"
            o.append(f'<rect x="{x0}" y="{y0 + i * cell:.1f}" width="{size:.1f}" height="{cell:.2f}" '
                     f'fill="transparent"><title>{_e(f"true {lab}: {rec}")}</title></rect>')
    nz_i, nz_j = np.nonzero(cm)
    for i, j in zip(nz_i, nz_j):
        v = int(cm[i, j])
        share = v / support[i] if support[i] else 0.0
        color = _ramp(_BLUES[2:] if i == j else _REDS[2:], math.sqrt(share))
        title = (f"{labels[i]} predicted as {labels[j]}: {v} ({share:.1%} of {labels[i]})" if i != j
                 else f"{labels[i]} correct: {v} of {int(support[i])} ({share:.1%})")
        x, y = x0 + j * cell, y0 + i * cell
        o.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{cell:.2f}" height="{cell:.2f}" fill="{color}" '
                 f'data-true="{_e(labels[i])}" data-pred="{_e(labels[j])}" data-count="{v}">'
                 f'<title>{_e(title)}</title></rect>')
        if show_counts:
            fg = "#ffffff" if math.sqrt(share) > 0.55 else "#1f2328"
            o.append(f'<text x="{x + cell / 2:.1f}" y="{y + cell / 2 + 4:.1f}" font-size="11" fill="{fg}" '
                     f'text-anchor="middle" pointer-events="none">{v}</text>')
    o.append("</svg>")
    return "".join(o)


def _legend() -> str:
    def ramp(stops: Sequence[str], name: str, y: int) -> str:
        s = [f'<text x="0" y="{y + 11}" font-size="11" fill="#57606a">{name}</text>']
        for k in range(40):
            s.append(f'<rect x="{150 + k * 4}" y="{y}" width="4" height="12" '
                     f'fill="{_ramp(stops, math.sqrt((k + 0.5) / 40))}"/>')
        s.append(f'<text x="150" y="{y + 24}" font-size="10" fill="#57606a">0 %</text>')
        s.append(f'<text x="230" y="{y + 24}" font-size="10" fill="#57606a" text-anchor="middle">25 %</text>')
        s.append(f'<text x="310" y="{y + 24}" font-size="10" fill="#57606a" text-anchor="end">100 %</text>')
        return "".join(s)

    return ('<svg xmlns="http://www.w3.org/2000/svg" width="330" height="64" viewBox="0 0 330 64" '
            'role="img" aria-label="colour scales">' + ramp(_BLUES[2:], "correct (recall)", 0)
            + ramp(_REDS[2:], "errors (share of row)", 32) + "</svg>")


def _block_classes(pairs: Sequence[Mapping[str, Any]], max_classes: int = 16) -> list[str]:
    """The classes of the most confused pairs (whole pairs, at most ``max_classes``),
    grouped by connected component of the confusion graph, by name inside a group."""
    chosen: list[str] = []
    edges: list[tuple[str, str]] = []
    for p in pairs:
        a, b = str(p["true"]), str(p["predicted"])
        new = [c for c in (a, b) if c not in chosen]
        if len(chosen) + len(new) > max_classes:
            continue
        chosen.extend(new)
        edges.append((a, b))
    parent = {c: c for c in chosen}

    def find(c: str) -> str:
        while parent[c] != c:
            parent[c] = parent[parent[c]]
            c = parent[c]
        return c

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[rb] = ra
    order: dict[str, int] = {}
    for c in chosen:
        order.setdefault(find(c), len(order))
    return sorted(chosen, key=lambda c: (order[find(c)], c))


def _stage_chart(stages: Sequence[Mapping[str, Any]]) -> str:
    rows = [s for s in stages if "seconds" in s]
    if not rows:
        return '<p class="note">No stage time recorded.</p>'
    total = sum(float(s["seconds"]) for s in rows if not s.get("beside"))
    font = 12
    label_w = min(360, max(_text_width(s.get("stage", ""), font) for s in rows) + 10)
    plot_w = 480
    bar_h = 22
    width = int(label_w + plot_w + 260)
    height = bar_h * len(rows) + 10
    smax = max(float(s["seconds"]) for s in rows) or 1.0
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
         f'role="img" aria-label="stage times">']
    for i, s in enumerate(rows):
        sec = float(s["seconds"])
        share = sec / total if total > 0 else 0.0
        items, unit = s.get("items") or 0, s.get("unit", "items")
        rate = f", {items / sec:,.0f} {unit}/s" if items and sec > 0 else ""
        y = i * bar_h + 4
        beside = s.get("beside")
        title = (f"{s.get('stage', '')}: {sec:.3f} s, " + (f"on another thread beside {beside}" if beside else
                 f"{share:.1%} of {total:.2f} s") + f" ({items:,} {unit}{rate})")
        o.append(f'<g><title>{_e(title)}</title>')
        o.append(f'<text x="{label_w - 6:.1f}" y="{y + 14}" font-size="{font}" text-anchor="end">'
                 f'{_e(s.get("stage", ""))}</text>')
        o.append(f'<rect x="{label_w:.1f}" y="{y + 2}" width="{max(sec / smax * plot_w, 1.5):.1f}" '
                 f'height="{bar_h - 6}" fill="{"#d4a72c" if beside else "#54aeff"}"/>')
        o.append(f'<text x="{label_w + sec / smax * plot_w + 6:.1f}" y="{y + 14}" font-size="11" '
                 f'data-stage="{_e(s.get("stage", ""))}" data-seconds="{sec!r}">{sec:.2f} s '
                 f'<tspan fill="#57606a">({"beside the stage above" if beside else f"{share:.1%}"}{_e(rate)})'
                 '</tspan></text></g>')
    o.append("</svg>")
    return "".join(o)


# ----------------------------------------------------------------------------------------------
# report sections


def _kv_table(rows: Iterable[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _fmt_value(v: Any) -> str:
    if v is None:
        return '<span class="note">none</span>'
    if isinstance(v, float):
        return _e(f"{v:.6g}")
    if isinstance(v, Mapping):
        return ", ".join(f"{_e(k)}={_fmt_value(x)}" for k, x in v.items()) or "{}"
    return _e(v)


def _header(info: Mapping[str, Any], out_dir: Path) -> str:
    params = dict(info.get("parameters") or {})
    counts = dict(info.get("counts") or {})
    vocab = info.get("vocabulary") or {}
    pca = info.get("pca")
    engine = info.get("engine") or {}
    root = params.get("root") or (info.get("input") or {}).get("root") or "?"
    recipe: list[tuple[str, str]] = []
    if params.get("method") is not None:
        ext = info.get("extractor_params")
        recipe.append(("descriptor", _e(params["method"])
                       + (f' <span class="mono">{_fmt_value(ext)}</span>' if ext else "")))
    if vocab:
        recipe.append(("encoding", _e(f"{vocab.get('encoding', '')}") + (
            _e(f", {vocab.get('vocabulary')} vocabulary of {vocab.get('k')} visual words on "
               f"{vocab.get('descriptors', 0):,} descriptors") if vocab.get("encoding") == "bow" else "")))
    if pca:
        recipe.append(("PCA", _e(f"{pca['n_components']} components, {pca['explained_variance']:.1%} of the variance")))
    elif "pca" in params:
        recipe.append(("PCA", "none" if params.get("pca") in (None, 0) else _e(params.get("pca"))))
    for k in ("classifier", "seed", "k", "max_descriptors", "test_size"):
        if k in params:
            recipe.append((k, _fmt_value(params[k])))
    if engine:
        recipe.append(("engine", _fmt_value(engine)))
    count_rows = [(k.replace("_", " "), _e(f"{v:,}") if isinstance(v, int) else _fmt_value(v))
                  for k, v in counts.items()]
    n_err = int(counts.get("errors", 0) or 0)
    err_html = ""
    if n_err:
        err_html = (f'<p class="warn"><b>{n_err:,}</b> image{"s" if n_err != 1 else ""} could not be used: '
                    f'see <a href="errors.csv">errors.csv</a> (stage and reason per image).</p>')
        err_html += _error_preview(out_dir / "errors.csv")
    elif counts:
        err_html = '<p class="note">Every listed image was used (<a href="errors.csv">errors.csv</a> is empty).</p>'
    versions = info.get("versions") or {}
    inp = info.get("input") or {}
    ver_rows = [(k, _e(v)) for k, v in versions.items()]
    if inp.get("sha256"):
        ver_rows.append(("input sha256", f'<span class="mono" title="{_e(inp["sha256"])}">'
                                         f'{_e(str(inp["sha256"])[:16])}...</span>'))
    return (f'<h1>bovw run report</h1><p class="lead">{_e(root)}</p>{err_html}'
            '<div class="grid">'
            f'<div><h3>Recipe</h3>{_kv_table(recipe)}</div>'
            f'<div><h3>Counts</h3>{_kv_table(count_rows)}</div>'
            f'<div><h3>Versions</h3>{_kv_table(ver_rows)}</div>'
            '</div>'
            '<p class="note">Files: <a href="run.json">run.json</a> (parameters, stage times, this evaluation), '
            '<a href="features.parquet">features.parquet</a>, <a href="errors.csv">errors.csv</a>, '
            '<a href="confusion_matrix.csv">confusion_matrix.csv</a>.</p>')


def _error_preview(path: Path, n: int = 20) -> str:
    try:
        with open(path, newline="", encoding="utf-8", errors="backslashreplace") as f:
            rows = list(csv.reader(f))
    except OSError:
        return ""
    if len(rows) < 2:
        return ""
    head, body = rows[0], rows[1:]
    trs = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in body[:n])
    more = f'<p class="note">... and {len(body) - n:,} more in errors.csv</p>' if len(body) > n else ""
    return (f"<details><summary>first {min(n, len(body))} unusable images</summary><div class=\"wide\">"
            f'<table class="data"><tr>{"".join(f"<th>{_e(h)}</th>" for h in head)}</tr>{trs}</table></div>'
            f"{more}</details>")


def _cards(splits: Mapping[str, Mapping[str, Any]]) -> str:
    cards = []
    for split, ev in splits.items():
        name = split or "evaluation"
        n, err = ev["n_samples"], ev["n_errors"]
        cards.append(
            f'<div class="card"><div class="k">{_e(name)} accuracy</div>'
            f'<div class="v" data-metric="accuracy" data-split="{_e(split)}" data-value="{ev["accuracy"]!r}">'
            f'{_pct(ev["accuracy"])}</div><div class="d">{n - err:,} of {n:,} images correct</div></div>'
            f'<div class="card"><div class="k">{_e(name)} macro-F1</div>'
            f'<div class="v" data-metric="macro_f1" data-split="{_e(split)}" data-value="{ev["macro_f1"]!r}">'
            f'{_pct(ev["macro_f1"])}</div><div class="d">mean F1 over {ev["n_classes"]} classes</div></div>')
    return f'<div class="cards">{"".join(cards)}</div>'


def _where_it_loses(ev: Mapping[str, Any]) -> str:
    rows = [c for c in ev["per_class"] if c["recall"] is not None]
    rows.sort(key=lambda c: (c["recall"], -c["support"], c["label"]))
    bits = []
    if rows and rows[0]["recall"] < 1.0:
        worst = ", ".join(f"{_e(c['label'])} ({c['recall']:.0%})" for c in rows[:3] if c["recall"] < 1.0)
        bits.append(f"lowest recall: {worst}")
    if ev["confused_pairs"]:
        p = ev["confused_pairs"][0]
        bits.append(f"most frequent error: {_e(p['true'])} taken for {_e(p['predicted'])} "
                    f"({p['count']} image{'s' if p['count'] != 1 else ''}, {p['share']:.0%} of {_e(p['true'])})")
        if ev["n_confused_pairs"] > 5 and len(ev["confused_pairs"]) >= 5:
            share_top = sum(q["count"] for q in ev["confused_pairs"][:5]) / max(ev["n_errors"], 1)
            bits.append(f"the 5 most confused pairs make {share_top:.0%} of the {ev['n_errors']:,} errors, "
                        f"spread over {ev['n_confused_pairs']:,} pairs")
    if not bits:
        return '<p class="note">No error on this split.</p>'
    return "<p>Where it loses: " + "; ".join(bits) + ".</p>"


def _per_class_table(ev: Mapping[str, Any]) -> str:
    rows = []
    for c in ev["per_class"]:
        def f(x: Optional[float]) -> str:
            return "" if x is None else f"{x:.3f}"

        rows.append(f'<tr><td>{_e(c["label"])}</td><td class="n">{c["support"]}</td><td class="n">{c["predicted"]}'
                    f'</td><td class="n">{f(c["precision"]) if c["predicted"] else ""}</td>'
                    f'<td class="n">{f(c["recall"])}</td><td class="n">{f(c["f1"])}</td></tr>')
    return ('<details><summary>every class: support, precision, recall, F1</summary><div class="scroll">'
            '<table class="data"><tr><th>class</th><th class="n">support</th><th class="n">predicted</th>'
            '<th class="n">precision</th><th class="n">recall</th><th class="n">F1</th></tr>'
            + "".join(rows) + "</table></div></details>")


def _confusion_section(ev: Mapping[str, Any], split: str) -> str:
    labels = [str(c) for c in ev["confusion"]["labels"]]
    cm = np.asarray(ev["confusion"]["matrix"], np.int64).reshape(len(labels), len(labels))
    n = len(labels)
    cell = max(4.0, min(30.0, 1050.0 / max(n, 1)))
    parts = [f'<h2 id="confusion">Confusion matrix ({_e(_split_title(split))})</h2>',
             f'<p class="note">{n} classes sorted by name; rows are the true class, columns the prediction. '
             'Blue: correct (share of the row), red: errors (share of the row); colours on a square-root scale so '
             'that rare errors show. Hover a cell for its count, a row for its recall'
             + ("; zoom the page to read the labels" if cell < 8 else "") + '.</p>',
             _legend(),
             f'<div class="wide">{_heatmap(labels, cm, cell=cell, show_counts=cell >= 22, css_class="cm-full")}</div>']
    if n > 12 and ev["confused_pairs"]:
        block = _block_classes(ev["confused_pairs"])
        idx = [labels.index(c) for c in block]
        sub = cm[np.ix_(idx, idx)]
        parts.append('<h3>The most confused block</h3><p class="note">The classes of the most confused pairs, '
                     'grouped by which they are confused with; counts in the cells, colours as above (share of '
                     f'the whole true class, errors to classes outside this block included).'
                     '</p>')
        parts.append(f'<div class="wide">{_heatmap_block(block, sub, cm, idx)}</div>')
    return "".join(parts)


def _heatmap_block(block: Sequence[str], sub: np.ndarray, cm: np.ndarray, idx: Sequence[int]) -> str:
    """Zoomed sub-matrix: colours and shares relative to each true class's full support."""
    support = cm.sum(axis=1)[list(idx)]
    n = len(block)
    cell = 34.0
    font = 12.0
    label_w = max(_text_width(s, font) for s in block) + 8
    x0, y0 = label_w + 14, label_w * 0.87 + 14  # column labels rotated by 60 degrees
    size = n * cell
    width, height = int(x0 + size + label_w * 0.5 + 12), int(y0 + size + 12)
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" class="cm-block" width="{width}" height="{height}" '
         f'viewBox="0 0 {width} {height}" role="img" aria-label="most confused block">']
    o.append(f'<rect x="{x0}" y="{y0}" width="{size:.1f}" height="{size:.1f}" fill="#fbfbfc" stroke="#d0d7de"/>')
    for i, lab in enumerate(block):
        cy = y0 + (i + 0.5) * cell + 4
        cx = x0 + (i + 0.5) * cell + 4
        o.append(f'<text x="{x0 - 5:.1f}" y="{cy:.1f}" font-size="{font}" text-anchor="end">{_e(lab)}</text>')
        o.append(f'<text x="{cx:.1f}" y="{y0 - 5:.1f}" font-size="{font}" '
                 f'transform="rotate(-60 {cx:.1f} {y0 - 5:.1f})">{_e(lab)}</text>')
    for i in range(n):
        for j in range(n):
            v = int(sub[i, j])
            if v == 0:
                continue
            share = v / support[i] if support[i] else 0.0
            color = _ramp(_BLUES[2:] if i == j else _REDS[2:], math.sqrt(share))
            fg = "#ffffff" if math.sqrt(share) > 0.55 else "#1f2328"
            title = (f"{block[i]} predicted as {block[j]}: {v} ({share:.1%} of {block[i]})" if i != j
                     else f"{block[i]} correct: {v} of {int(support[i])} ({share:.1%})")
            x, y = x0 + j * cell, y0 + i * cell
            o.append(f'<g><title>{_e(title)}</title><rect x="{x:.1f}" y="{y:.1f}" width="{cell}" height="{cell}" '
                     f'fill="{color}" stroke="#ffffff" stroke-width="1"/><text x="{x + cell / 2:.1f}" '
                     f'y="{y + cell / 2 + 4:.1f}" font-size="11" fill="{fg}" text-anchor="middle">{v}</text></g>')
    o.append("</svg>")
    return "".join(o)


def _thumbs(paths: Sequence[str], css: str, size: int, cache: dict[str, tuple[Optional[str], str]],
            reader: _FileReader) -> str:
    """Figures for ``paths``; ``cache`` maps a path to (data URI and size, or None, and a reason)."""
    if not paths:
        return '<span class="note">none available</span>'
    out = []
    for p in paths:
        if p not in cache:
            data, err = reader(p)
            if data is None:
                cache[p] = (None, f"cannot read: {err}")
            else:
                try:
                    mime, small, w, h = thumbnail(data, size)
                except ValueError as e:
                    cache[p] = (None, f"cannot decode: {e}")
                else:
                    uri = f"data:{mime};base64,{base64.b64encode(small).decode('ascii')}"
                    cache[p] = (f'src="{uri}" width="{w}" height="{h}"', "")
        img, reason = cache[p]
        name = _text(p).replace("\\", "/").rsplit("/", 1)[-1]
        if img is None:
            out.append(f'<figure class="thumb missing" title="{_e(p)}: {_e(reason)}">'
                       f'{_e(reason.split(":")[0])}</figure>')
        else:
            out.append(f'<figure class="thumb {css}"><img {img} alt="{_e(name)}" title="{_e(p)}"/>'
                       f'<figcaption title="{_e(p)}">{_e(name)}</figcaption></figure>')
    return "".join(out)


def _pairs_section(ev: Mapping[str, Any], examples: Sequence[Mapping[str, Any]], n_pairs: int, size: int) -> str:
    pairs = ev["confused_pairs"][:n_pairs]
    if not pairs:
        return '<h2 id="pairs">Most confused pairs</h2><p class="note">No confused pair: no error.</p>'
    by_pair = {(str(x.get("true")), str(x.get("predicted"))): x for x in examples or []}
    cache: dict[str, tuple[Optional[str], str]] = {}
    reader = _FileReader()
    parts = ['<h2 id="pairs">Most confused pairs</h2><p class="note">True class &#8594; the class it was taken '
             'for. Red frames: misclassified images of the true class; green: images of the predicted class '
             'classified correctly. Hover a thumbnail for its path.</p>']
    for rank, p in enumerate(pairs, 1):
        ex = by_pair.get((str(p["true"]), str(p["predicted"])), {})
        parts.append(
            f'<div class="pair"><h3>{rank}. {_e(p["true"])} &#8594; {_e(p["predicted"])}</h3>'
            f'<span class="share"><span data-pair-count="{p["count"]}">{p["count"]} image'
            f'{"s" if p["count"] != 1 else ""}</span>, {p["share"]:.1%} of {_e(p["true"])}</span>'
            f'<div class="strips"><div class="strip"><div class="cap">{_e(p["true"])}, predicted '
            f'{_e(p["predicted"])}</div>{_thumbs(list(ex.get("misclassified", [])), "bad", size, cache, reader)}</div>'
            f'<div class="strip"><div class="cap">{_e(p["predicted"])}, correct</div>'
            f'{_thumbs(list(ex.get("predicted_class", [])), "good", size, cache, reader)}</div></div></div>')
    return "".join(parts)


def write_report(out_dir: Union[str, Path], evaluation: Mapping[str, Any], *,
                 stages: Sequence[Mapping[str, Any]] = (), info: Optional[Mapping[str, Any]] = None,
                 examples: Sequence[Mapping[str, Any]] = (), n_pairs: int = 8, thumb_size: int = 96) -> Path:
    """Write ``out_dir/report.html``: the run's evaluation as one self-contained page.

    Parameters
    ----------
    out_dir : str or Path
        Folder (created if missing); ``errors.csv`` there, if any, is
        previewed, and the page links to the run's other files by relative
        name.
    evaluation : dict
        ``run.json``'s ``"evaluation"`` (:func:`evaluate_splits`), or one
        :func:`evaluate` result. Details (recall, confusion, pairs) are shown
        for ``Test``, else the first split; accuracy and macro-F1 for every
        split. Empty: the page says why (:func:`missing_evaluation_reason`).
    stages : sequence of dict
        Stage rows ``stage``, ``seconds``, ``items``, ``unit`` (``run.json``'s ``stages``); a row
        with ``beside`` ran on another thread alongside that stage and is not counted in the total.
    info : dict, optional
        ``run.json``'s content: ``parameters``, ``counts``, ``versions``, ...
    examples : sequence of dict
        :func:`choose_examples`'s output: per pair ``true``, ``predicted``,
        ``misclassified`` and ``predicted_class`` (image paths, local or
        ``s3://``). The bytes are read here; an unreadable or undecodable
        file is shown as such.
    n_pairs : int, default 8
        Confused pairs shown with thumbnails.
    thumb_size : int, default 96
        Longest thumbnail side, pixels.

    Returns
    -------
    Path
        The report's path.

    Raises
    ------
    ValueError
        If ``evaluation`` is not shaped as above, or ``n_pairs``/``thumb_size`` is out of range.
    OSError
        If the file cannot be written.

    Notes
    -----
    No JavaScript and no external resource: charts are inline SVG (hover
    titles through SVG ``<title>``), thumbnails base64 ``data:`` URIs. All
    text, including file and class names, is HTML-escaped; bytes of file
    names that are not UTF-8 are shown as ``\\xNN``.
    """
    if n_pairs < 0:
        raise ValueError(f"n_pairs: must be >= 0, got {n_pairs}")
    if thumb_size < 8:
        raise ValueError(f"thumb_size: must be >= 8 pixels, got {thumb_size}")
    splits = _as_splits(evaluation)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = dict(info or {})
    body = [_header(info, out)]
    body.append('<h2 id="metrics">Accuracy and macro-F1</h2>')
    if not splits:
        body.append(f'<p class="warn" id="no-evaluation">No evaluation: {_e(missing_evaluation_reason(info))}.</p>')
    else:
        body.append(_cards(splits))
        main_split = "Test" if "Test" in splits else next(iter(splits))
        ev = splits[main_split]
        if main_split not in ("Test", ""):
            body.append(f'<p class="warn">No Test split: the details below are for the {_e(main_split)} split.</p>')
        if ev["n_samples"] == 0:
            body.append(f'<p class="warn">The {_e(main_split)} split has no image.</p>')
        else:
            if ev["n_classes"] == 1:
                body.append(f'<p class="warn">The {_e(_split_title(main_split))} has one class: accuracy is its '
                            'recall and macro-F1 its F1.</p>')
            body.append(_where_it_loses(ev))
            body.append(f'<h2 id="recall">Per-class recall ({_e(_split_title(main_split))}), worst first</h2>'
                        '<p class="note">Share of each class\'s images predicted correctly: '
                        f'<span style="color:{_RECALL_LOW}">&#9632;</span> below 50 %, '
                        f'<span style="color:{_RECALL_BELOW}">&#9632;</span> below the accuracy, '
                        f'<span style="color:{_RECALL_OK}">&#9632;</span> the rest. Hover a bar for precision '
                        'and F1.</p>')
            body.append(f'<div class="scroll">{_recall_chart(ev)}</div>')
            body.append(_per_class_table(ev))
            body.append(_confusion_section(ev, main_split))
            body.append(_pairs_section(ev, examples, n_pairs, thumb_size))
    body.append('<h2 id="stages">Stage times</h2>')
    total = sum(float(s["seconds"]) for s in stages if "seconds" in s and not s.get("beside"))
    body.append(f'<p class="note">Wall-clock seconds per stage and share of the {total:.2f} s total '
                '(writing the outputs, this page included, is not counted). Yellow bars ran on another '
                'thread beside the stage above them (the model fit beside the encoding of the other '
                'images) and are not part of the total.</p>')
    body.append(f'<div class="wide">{_stage_chart(stages)}</div>')
    version = (info.get("versions") or {}).get("bovw", "")
    body.append(f'<footer>Written by bovw {_e(version)} (bovw.report). Self-contained: no script, no network.'
                '</footer>')
    root = (info.get("parameters") or {}).get("root") or ""
    doc = ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"/>'
           '<meta name="viewport" content="width=device-width, initial-scale=1"/>'
           f'<title>bovw report: {_e(root)}</title><style>{_CSS}</style></head><body>'
           + "\n".join(body) + "</body></html>\n")
    path = out / "report.html"
    path.write_text(doc, encoding="utf-8")
    return path


def write_run_report(out_dir: Union[str, Path], paths: Sequence[str], y_true: Sequence[Any], y_pred: Sequence[Any],
                     splits: Sequence[Any], info: Mapping[str, Any], *, n_pairs: int = 8, n_examples: int = 3,
                     seed: int = 0) -> Path:
    """``report.html`` for a finished run: what ``bovw run`` calls after writing ``run.json``.

    Picks :func:`choose_examples` for the ``n_pairs`` most confused pairs of
    the detailed split (``Test``, else the first evaluated split) among the
    given images (the usable ones), then calls :func:`write_report` with
    ``info["evaluation"]`` and ``info["stages"]``.

    Parameters
    ----------
    out_dir : str or Path
    paths, y_true, y_pred, splits : sequences of length n_images
        The usable images of the run: path, label, prediction (None without
        a classifier), split.
    info : dict
        ``run.json``'s content, with ``evaluation`` (:func:`evaluate_splits`).
    n_pairs, n_examples : int
        Pairs shown, thumbnails per row.
    seed : int
        Seed of the thumbnails' choice.

    Returns
    -------
    Path
        The report's path.
    """
    evaluation = _as_splits(info.get("evaluation") or {})
    examples: list[dict[str, Any]] = []
    if evaluation:
        split = "Test" if "Test" in evaluation else next(iter(evaluation))
        pairs = evaluation[split]["confused_pairs"][:n_pairs]
        examples = choose_examples(paths, y_true, y_pred, splits, pairs, split=split, n=n_examples, seed=seed)
    return write_report(out_dir, evaluation, stages=info.get("stages") or (), info=info, examples=examples,
                        n_pairs=n_pairs)

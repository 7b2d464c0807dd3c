"""The main job: images -> descriptors -> vocabulary -> bag of words -> PCA -> classifier.

:func:`run` is what ``bovw run`` calls (``--engine local``). It reproduces the
seed notebooks' pipeline with bovw's kernels and writes everything a user
needs to check or reuse the run:

``<out>/features.parquet``
    One row per usable image: ``path``, ``label``, ``split``, ``n_keypoints``
    (int32), ``bow`` (list<float32>, length ``k``), ``pca_features``
    (list<float32>), ``prediction`` (string; the classifier's label, for
    every split).
``<out>/vocabulary.npy``
    The visual vocabulary, float32 array of shape (k, descriptor_size).
``<out>/model.joblib``
    The fitted stages (vocabulary, PCA, classifier, label list), reloadable
    with :func:`load_model`.
``<out>/pca.npz``
    ``components``, ``mean``, ``explained_variance``, ``explained_variance_ratio``.
``<out>/errors.csv``
    ``path, split, label, stage, reason`` for every image that could not be
    used (unreadable, corrupt, truncated, not an image, too small...).
``<out>/confusion_matrix.csv``
    Test-split confusion matrix, rows = true label, columns = predicted.
``<out>/run.json``
    Parameters, software versions, input fingerprint (file count, content
    hash), per-stage wall times, counts and accuracy.

Every listed image is either a row of ``features.parquet`` or a row of
``errors.csv``: nothing is dropped silently.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import platform
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import bovw
from bovw.image import input_fingerprint, list_images

__all__ = ["RunConfig", "RunResult", "StageTimer", "run", "load_model", "BovwModel", "format_stage_table", "write_model_files"]


@dataclass
class RunConfig:
    """Parameters of the main job (the ``bovw run`` flags)."""

    root: Optional[str] = None
    """Image folder: ``<root>/<split>/<class>/*`` or ``<root>/<class>/*``; None = the shipped sample."""
    out: str = "bovw-out"
    method: str = "sift"
    """``sift`` or ``orb``."""
    k: int = 100
    """Vocabulary size (number of visual words)."""
    seed: int = 0
    pca: Union[int, float, None] = 0.95
    """PCA components: an int count, a float variance fraction in (0, 1), or None for no PCA."""
    max_iter: int = 100
    """K-Means iterations at most."""
    n_init: int = 1
    max_descriptors: Optional[int] = None
    """Fit the vocabulary on at most this many training descriptors (seeded sample); None = all."""
    vocabulary: str = "kmeans"
    """``kmeans`` (float K-Means) or ``kmajority`` (Hamming, ORB only)."""
    classifier: str = "logreg"
    """``logreg`` (multinomial logistic regression), ``svm`` (RBF SVC) or ``rf`` (random forest)."""
    test_size: float = 0.25
    """Test fraction for a flat ``<root>/<class>/`` layout."""
    n_threads: Optional[int] = None
    batch_size: int = 512
    """Images per extraction batch."""
    extractor_params: Optional[dict] = None
    """Keyword arguments of :class:`bovw.SIFT` or :class:`bovw.ORB` (OpenCV's defaults when empty)."""
    progress: bool = True
    engine: str = "local"
    master: Optional[str] = None
    """Spark master URL for ``engine='spark'``."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class StageTimer:
    """Collects (stage, wall seconds, item count, item unit) rows."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    @contextmanager
    def stage(self, name: str, unit: str = "images") -> Iterator[dict[str, Any]]:
        row: dict[str, Any] = {"stage": name, "seconds": 0.0, "items": 0, "unit": unit}
        t0 = time.perf_counter()
        try:
            yield row
        finally:
            row["seconds"] = time.perf_counter() - t0
            self.rows.append(row)


def format_stage_table(rows: list[dict[str, Any]]) -> str:
    """The stage timing table ("Durée des opérations"): stage, seconds, throughput."""
    lines = [f"{'stage':<26}{'wall s':>10}{'items':>12}  {'per second':<24}", "-" * 74]
    total = 0.0
    for r in rows:
        total += r["seconds"]
        rate = f"{r['items'] / r['seconds']:,.0f} {r['unit']}/s" if r["items"] and r["seconds"] > 0 else ""
        lines.append(f"{r['stage']:<26}{r['seconds']:>10.2f}{r['items']:>12,}  {rate:<24}")
    lines.append("-" * 74)
    lines.append(f"{'total':<26}{total:>10.2f}")
    return "\n".join(lines)


@dataclass
class RunResult:
    """What :func:`run` returns (and writes to ``run.json``)."""

    out: Path
    accuracy: Optional[float]
    n_images: int
    n_errors: int
    stages: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


class BovwModel:
    """A fitted pipeline: descriptors -> visual words -> histogram -> PCA -> label.

    Attributes
    ----------
    method : str
        ``sift`` or ``orb``.
    extractor_params : dict
    vocabulary : ndarray of shape (k, descriptor_size)
        float32 centers (K-Means) or uint8 centers (k-majority).
    quantizer : object
        The fitted vocabulary estimator (``predict`` maps descriptors to words).
    pca : bovw.PCA or None
    classifier : scikit-learn estimator
    """

    def __init__(self, method, extractor_params, quantizer, pca, classifier, k, binary_words=False):
        self.method = method
        self.extractor_params = extractor_params
        self.quantizer = quantizer
        self.pca = pca
        self.classifier = classifier
        self.k = k
        self.binary_words = binary_words

    @property
    def vocabulary(self) -> np.ndarray:
        return self.quantizer.cluster_centers_

    def histograms(self, descriptors: list[np.ndarray]) -> np.ndarray:
        """Bag-of-visual-words counts, float32 array of shape (n_images, k)."""
        lengths = np.array([len(d) for d in descriptors], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        width = 32 if self.binary_words else 128
        if lengths.sum() == 0:
            return np.zeros((len(descriptors), self.k), dtype=np.float32)
        stacked = np.concatenate([np.asarray(d).reshape(-1, width) for d in descriptors])
        words = self.quantizer.predict(_as_quantizer_input(stacked, self.binary_words))
        return bovw.bow_histograms(words, offsets, n_words=self.k)

    def features(self, descriptors: list[np.ndarray]) -> np.ndarray:
        h = self.histograms(descriptors)
        return self.pca.transform(h) if self.pca is not None else h

    def predict(self, images: list[np.ndarray]) -> np.ndarray:
        """Labels for (H, W) uint8 grayscale images."""
        ex = bovw.SIFT(**self.extractor_params) if self.method == "sift" else bovw.ORB(**self.extractor_params)
        descs = [ex.detect_and_compute(img)[1] for img in images]
        return self.classifier.predict(self.features(descs))


def _as_quantizer_input(desc: np.ndarray, binary_words: bool) -> np.ndarray:
    if binary_words:
        return np.ascontiguousarray(desc, dtype=np.uint8)
    return np.ascontiguousarray(desc, dtype=np.float32)


def load_model(out: Union[str, os.PathLike]) -> BovwModel:
    """Reload the fitted pipeline that :func:`run` wrote to ``out/model.joblib``."""
    import joblib

    return joblib.load(Path(out) / "model.joblib")


def _versions() -> dict[str, str]:
    import sklearn

    v = {
        "bovw": bovw.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": np.__version__,
        "pyarrow": pa.__version__,
        "scikit-learn": sklearn.__version__,
    }
    return v


def _progress(iterable, *, total=None, desc="", unit="it", enabled=True):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled, leave=False, dynamic_ncols=True)


def _make_classifier(name: str, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "logreg":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0, random_state=seed))
    if name == "svm":
        from sklearn.svm import SVC

        return make_pipeline(StandardScaler(), SVC(kernel="rbf", C=10.0, gamma="scale", random_state=seed))
    if name == "rf":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(n_estimators=300, random_state=seed, n_jobs=-1)
    raise ValueError(f"classifier: expected 'logreg', 'svm' or 'rf', got {name!r}")


def _read_files(rows: list[tuple[str, str, str]], progress: bool) -> tuple[list[Optional[bytes]], list[Optional[str]]]:
    contents: list[Optional[bytes]] = []
    errors: list[Optional[str]] = []
    for path, _, _ in _progress(rows, desc="read", unit="img", enabled=progress):
        try:
            contents.append(Path(path).read_bytes())
            errors.append(None)
        except OSError as e:
            contents.append(None)
            errors.append(f"cannot read file: {e.strerror or e}")
    return contents, errors


def run(config: RunConfig) -> RunResult:
    """Run the main job on a local folder with bovw's Rust kernels.

    Parameters
    ----------
    config : RunConfig

    Returns
    -------
    RunResult
        Accuracy on the Test split (None when there is no Test image), counts,
        stage timings; the files listed in the module docstring are written to
        ``config.out``.

    Raises
    ------
    FileNotFoundError
        If the image folder does not exist.
    ValueError
        If it holds no image, a parameter is invalid, or no training image
        yields a descriptor.
    """
    _validate(config)
    root = Path(config.root) if config.root else bovw.sample_data_path()
    out = Path(config.out)
    timer = StageTimer()
    say = print if config.progress else (lambda *a, **k: None)

    with timer.stage("list + read files") as st:
        rows = list_images(root, test_size=config.test_size, random_state=config.seed)
        contents, read_errors = _read_files(rows, config.progress)
        st["items"] = len(rows)
    paths = [r[0] for r in rows]
    labels = [r[1] for r in rows]
    splits = [r[2] for r in rows]
    n = len(rows)
    say(f"bovw: {n} images under {root} ({splits.count('Training')} Training, {splits.count('Test')} Test)")

    # --- decode + descriptors, in batches so the progress bar moves -------------
    params = _extractor_params(config)
    n_keypoints = np.zeros(n, dtype=np.int32)
    errors: list[Optional[str]] = list(read_errors)
    error_stage: list[str] = ["read" if e else "" for e in read_errors]
    descriptors: list[Optional[np.ndarray]] = [None] * n
    width = 128 if config.method == "sift" else 32
    with timer.stage(f"decode + {config.method} descriptors") as st:
        bar = _progress(range(0, n, config.batch_size), desc=f"{config.method}", unit="batch", enabled=config.progress)
        for start in bar:
            stop = min(start + config.batch_size, n)
            batch = pa.record_batch(
                {"content": pa.array([c if c is not None else None for c in contents[start:stop]], pa.binary())}
            )
            res = bovw.extract_descriptors(batch, method=config.method, n_threads=config.n_threads, **params)
            errs = res.column("error").to_pylist()
            desc_col = res.column("descriptors")
            flat = desc_col.flatten()
            if config.method == "sift":
                values = flat.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
            else:
                values = np.frombuffer(flat.buffers()[1], dtype=np.uint8)[
                    flat.offset * width : (flat.offset + len(flat)) * width
                ].reshape(-1, width)
            offs = desc_col.offsets.to_numpy()
            offs = offs - offs[0]
            for j, e in enumerate(errs):
                i = start + j
                if errors[i] is not None:
                    continue
                if e is not None:
                    errors[i] = e
                    error_stage[i] = "decode" if "decode" in e or "JPEG" in e or "PNG" in e else "descriptors"
                    continue
                d = values[offs[j] : offs[j + 1]]
                descriptors[i] = d
                n_keypoints[i] = len(d)
        st["items"] = n
    ok = np.array([e is None for e in errors])
    n_desc_total = int(n_keypoints[ok].sum())
    say(f"bovw: {int(ok.sum())} images usable, {int((~ok).sum())} errors, {n_desc_total:,} descriptors")

    train = ok & (np.array(splits) == "Training")
    test = ok & (np.array(splits) != "Training")
    if not train.any():
        raise ValueError("no usable Training image: cannot fit the vocabulary")
    train_desc = [descriptors[i] for i in np.flatnonzero(train) if n_keypoints[i] > 0]
    if not train_desc:
        raise ValueError("no descriptor in any Training image: cannot fit the vocabulary")
    X = np.concatenate(train_desc)
    if config.max_descriptors and len(X) > config.max_descriptors:
        rng = np.random.default_rng(config.seed)
        X = X[np.sort(rng.choice(len(X), config.max_descriptors, replace=False))]
    k = min(config.k, len(X))

    # --- vocabulary ---------------------------------------------------------------
    binary_words = config.method == "orb" and config.vocabulary == "kmajority"
    with timer.stage(f"vocabulary ({config.vocabulary}, k={k})", unit="descriptors") as st:
        if binary_words:
            quantizer = bovw.KMajority(n_clusters=k, max_iter=config.max_iter, random_state=config.seed,
                                       n_threads=config.n_threads)
        else:
            quantizer = bovw.KMeans(n_clusters=k, n_init=config.n_init, max_iter=config.max_iter,
                                    algorithm="elkan", random_state=config.seed, n_threads=config.n_threads)
        quantizer.fit(_as_quantizer_input(X, binary_words))
        st["items"] = len(X)
    say(f"bovw: vocabulary of {k} visual words fitted on {len(X):,} descriptors "
        f"({getattr(quantizer, 'n_iter_', '?')} iterations)")

    model = BovwModel(config.method, params, quantizer, None, None, k, binary_words)
    idx_ok = np.flatnonzero(ok)
    with timer.stage("bag of visual words", unit="images") as st:
        empty = np.zeros((0, width), dtype=np.uint8 if config.method == "orb" else np.float32)
        hist = model.histograms([descriptors[i] if descriptors[i] is not None else empty for i in idx_ok])
        st["items"] = len(idx_ok)
    hist_all = np.zeros((n, k), dtype=np.float32)
    hist_all[idx_ok] = hist

    # --- PCA -----------------------------------------------------------------------
    with timer.stage("PCA", unit="images") as st:
        if config.pca is not None and config.pca != 0:
            n_comp = config.pca
            if isinstance(n_comp, int):
                n_comp = min(n_comp, k, int(train.sum()))
            pca = bovw.PCA(n_components=n_comp, random_state=config.seed)
            pca.fit(hist_all[train])
            feats_all = np.zeros((n, pca.n_components_), dtype=np.float32)
            feats_all[idx_ok] = pca.transform(hist_all[idx_ok]).astype(np.float32)
        else:
            pca = None
            feats_all = hist_all
        st["items"] = len(idx_ok)
    model.pca = pca
    if pca is not None:
        say(f"bovw: PCA keeps {pca.n_components_} components "
            f"({float(np.sum(pca.explained_variance_ratio_)):.1%} of the variance)")

    # --- classifier --------------------------------------------------------------------
    from sklearn.metrics import accuracy_score

    y = np.array(labels, dtype=object)
    predictions: list[Optional[str]] = [None] * n
    accuracy: Optional[float] = None
    classes = sorted(set(y[train]))
    with timer.stage(f"classifier ({config.classifier})", unit="images") as st:
        if len(classes) >= 2:
            clf = _make_classifier(config.classifier, config.seed)
            clf.fit(feats_all[train], y[train])
            pred = clf.predict(feats_all[idx_ok])
            for i, p in zip(idx_ok, pred):
                predictions[i] = str(p)
            if test.any():
                accuracy = float(accuracy_score(y[test], np.array(predictions, dtype=object)[test]))
        else:
            clf = None
        st["items"] = len(idx_ok)
    model.classifier = clf

    # --- outputs --------------------------------------------------------------------------
    with timer.stage("write outputs", unit="images") as st:
        out.mkdir(parents=True, exist_ok=True)
        table = pa.table(
            {
                "path": pa.array([paths[i] for i in idx_ok], pa.string()),
                "label": pa.array([labels[i] for i in idx_ok], pa.string()),
                "split": pa.array([splits[i] for i in idx_ok], pa.string()),
                "n_keypoints": pa.array(n_keypoints[idx_ok], pa.int32()),
                "bow": _list_column(hist_all[idx_ok]),
                "pca_features": _list_column(feats_all[idx_ok]),
                "prediction": pa.array([predictions[i] for i in idx_ok], pa.string()),
            }
        )
        pq.write_table(table, out / "features.parquet")
        err_rows = [(paths[i], splits[i], labels[i], error_stage[i] or "decode", errors[i]) for i in np.flatnonzero(~ok)]
        y_pred = np.array(predictions, dtype=object)
        write_model_files(out, model, err_rows, y[test], y_pred[test], sorted(set(y[test]) | set(classes)))
        st["items"] = len(idx_ok)

    fp_table = pa.table(
        {"path": pa.array([Path(p).as_uri() for p in paths]), "content": pa.array(contents, pa.binary())}
    )
    info = {
        "parameters": {**config.to_dict(), "root": str(root), "k_effective": k},
        "extractor_params": params,
        "versions": _versions(),
        "input": {**input_fingerprint(fp_table), "root": str(root)},
        "counts": {
            "images": n,
            "usable": int(ok.sum()),
            "errors": int((~ok).sum()),
            "training": int(train.sum()),
            "test": int(test.sum()),
            "descriptors": n_desc_total,
            "vocabulary_descriptors": int(len(X)),
            "images_without_keypoints": int(((n_keypoints == 0) & ok).sum()),
        },
        "vocabulary": {"k": k, "n_iter": int(getattr(quantizer, "n_iter_", 0)),
                        "inertia": float(getattr(quantizer, "inertia_", float("nan")))},
        "pca": None if pca is None else {
            "n_components": int(pca.n_components_),
            "explained_variance": float(np.sum(pca.explained_variance_ratio_)),
        },
        "accuracy": accuracy,
        "stages": timer.rows,
    }
    with open(out / "run.json", "w") as f:
        json.dump(info, f, indent=2, default=_json_default)
    return RunResult(out=out, accuracy=accuracy, n_images=int(ok.sum()), n_errors=int((~ok).sum()),
                     stages=timer.rows, info=info)


def write_model_files(
    out: Path,
    model: BovwModel,
    error_rows: list[tuple[str, str, str, str, str]],
    y_test: np.ndarray,
    y_pred_test: np.ndarray,
    labels: list[str],
) -> None:
    """Write ``vocabulary.npy``, ``pca.npz``, ``model.joblib``, ``errors.csv`` and
    ``confusion_matrix.csv`` to ``out`` (shared by the local and Spark engines).

    ``error_rows`` are ``(path, split, label, stage, reason)``; the confusion
    matrix is written only when there is a Test image and a classifier.
    """
    import joblib
    from sklearn.metrics import confusion_matrix

    np.save(out / "vocabulary.npy", np.asarray(model.quantizer.cluster_centers_))
    if model.pca is not None:
        np.savez(
            out / "pca.npz",
            components=model.pca.components_,
            mean=model.pca.mean_,
            explained_variance=model.pca.explained_variance_,
            explained_variance_ratio=model.pca.explained_variance_ratio_,
        )
    joblib.dump(model, out / "model.joblib")
    with open(out / "errors.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "split", "label", "stage", "reason"])
        w.writerows(error_rows)
    if len(y_test) and model.classifier is not None:
        cm = confusion_matrix(y_test, y_pred_test, labels=labels)
        with open(out / "confusion_matrix.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["true \\ predicted"] + list(labels))
            for lab, r in zip(labels, cm):
                w.writerow([lab] + [int(v) for v in r])


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _list_column(a: np.ndarray) -> pa.Array:
    a = np.ascontiguousarray(a, dtype=np.float32)
    n, w = a.shape
    offsets = pa.array(np.arange(0, (n + 1) * w, w, dtype=np.int32) if n else np.zeros(1, np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(a.reshape(-1)))


def _extractor_params(config: RunConfig) -> dict[str, Any]:
    # OpenCV's defaults unless the user chose otherwise, so results compare
    # with cv2.SIFT_create() / cv2.ORB_create().
    return dict(config.extractor_params or {})


def _validate(config: RunConfig) -> None:
    if config.method not in ("sift", "orb"):
        raise ValueError(f"method: expected 'sift' or 'orb', got {config.method!r}")
    if config.k < 1:
        raise ValueError(f"k: the vocabulary needs at least 1 visual word, got {config.k}")
    if config.vocabulary not in ("kmeans", "kmajority"):
        raise ValueError(f"vocabulary: expected 'kmeans' or 'kmajority', got {config.vocabulary!r}")
    if config.vocabulary == "kmajority" and config.method != "orb":
        raise ValueError("vocabulary: 'kmajority' clusters binary descriptors; use it with --method orb")
    if isinstance(config.pca, float) and not (0.0 < config.pca <= 1.0):
        raise ValueError(f"pca: a variance fraction must be in (0, 1], got {config.pca}")
    if isinstance(config.pca, int) and config.pca < 0:
        raise ValueError(f"pca: a component count must be positive, got {config.pca}")
    if config.batch_size < 1:
        raise ValueError(f"batch_size: must be at least 1, got {config.batch_size}")

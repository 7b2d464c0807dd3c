"""The fitted recipe: extractors, their encodings, PCA and a classifier.

A :class:`Channel` is one extractor and, for local descriptors, the encoding
that turns an image's many descriptors into one vector (a visual vocabulary
and its bag-of-words histogram, ...). Global descriptors (one per image) are
their own encoding. A :class:`BovwModel` is the channels (their vectors
concatenated), an optional PCA and a scikit-learn classifier: what ``bovw
run`` fits and saves as ``model.joblib`` (:func:`load_model`), and what
``predict`` applies to new encoded images or decoded arrays.

Encodings share one interface, so the job has one code path for all of them:

``fit(X)``
    Fit on training descriptors ``X`` of shape (n_descriptors, width), in
    the extractor's dtype.
``encode(X, offsets, keypoints=None, image_sizes=None)``
    One float32 vector per image: image ``i`` owns rows
    ``X[offsets[i]:offsets[i + 1]]`` (``keypoints``: their (x, y, size,
    angle) frames, ``image_sizes``: (n_images, 2) width, height in pixels,
    for encodings with a spatial layout). Images without descriptors get a
    defined vector (zeros for histograms).
``n_features_out_``
    Length of that vector.
``summary()``
    What ``run.json`` records about the fit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
from sklearn.base import BaseEstimator, TransformerMixin

from bovw.features import Extractor

__all__ = ["BagOfWordsEncoding", "EncoderEncoding", "Channel", "BovwModel", "GlobalDescriptor", "load_model", "make_classifier",
           "RowSpace", "CLASSIFIERS"]


class BagOfWordsEncoding:
    """A visual vocabulary and the bag-of-visual-words histogram it gives.

    Parameters
    ----------
    n_clusters : int, default 100
        Visual words.
    vocabulary : {"kmeans", "kmajority"}, default "kmeans"
        ``"kmeans"``: :class:`bovw.KMeans` (Euclidean; uint8 descriptors such as
        ORB's are cast to float32, as the seed notebooks do); ``"kmajority"``:
        :class:`bovw.KMajority` (Hamming distance, binary descriptors only).
    max_iter, n_init, random_state, n_threads
        As in :class:`bovw.KMeans`; K-Means uses the exact Yinyang path
        (``algorithm="elkan"``), the same result as Lloyd's, faster.

    Attributes
    ----------
    quantizer_ : bovw.KMeans or bovw.KMajority
        The fitted vocabulary estimator.
    n_features_out_ : int
        The number of visual words (``n_clusters``, or fewer when fitted on
        fewer descriptors).
    """

    def __init__(self, n_clusters: int = 100, vocabulary: str = "kmeans", *, max_iter: int = 100, n_init: int = 1,
                 random_state: int = 0, n_threads: Optional[int] = None) -> None:
        self.n_clusters = n_clusters
        self.vocabulary = vocabulary
        self.max_iter = max_iter
        self.n_init = n_init
        self.random_state = random_state
        self.n_threads = n_threads

    def _input(self, X: np.ndarray) -> np.ndarray:
        if self.vocabulary == "kmajority":
            if X.dtype != np.uint8:
                raise TypeError(f"vocabulary 'kmajority' needs binary (uint8) descriptors, got {X.dtype}")
            return np.ascontiguousarray(X)
        return np.ascontiguousarray(X, dtype=np.float32)

    def fit(self, X: np.ndarray) -> "BagOfWordsEncoding":
        """Fit the vocabulary on descriptors ``X`` (n, width).

        Raises
        ------
        ValueError
            If ``X`` has no rows or ``vocabulary`` is unknown.
        """
        import bovw

        if len(X) == 0:
            raise ValueError("no training descriptor: cannot fit the vocabulary")
        k = min(int(self.n_clusters), len(X))
        if self.vocabulary == "kmajority":
            q = bovw.KMajority(n_clusters=k, max_iter=self.max_iter, random_state=self.random_state,
                               n_threads=self.n_threads)
        elif self.vocabulary == "kmeans":
            q = bovw.KMeans(n_clusters=k, n_init=self.n_init, max_iter=self.max_iter, algorithm="elkan",
                            random_state=self.random_state, n_threads=self.n_threads)
        else:
            raise ValueError(f"vocabulary: expected 'kmeans' or 'kmajority', got {self.vocabulary!r}")
        self.quantizer_ = q.fit(self._input(X))
        self.vocabulary_ = np.asarray(self.quantizer_.cluster_centers_)
        self.n_features_out_ = k
        return self

    @classmethod
    def from_vocabulary(cls, vocabulary: np.ndarray, n_threads: Optional[int] = None) -> "BagOfWordsEncoding":
        """An encoding with given visual words: float words (K-Means) assign
        by Euclidean distance, uint8 words (k-majority) by Hamming distance.

        Raises
        ------
        ValueError
            If ``vocabulary`` is not 2-D with at least one word.
        """
        v = np.asarray(vocabulary)
        if v.ndim != 2 or v.shape[0] < 1 or v.shape[1] < 1:
            raise ValueError(f"vocabulary: expected shape (n_words, width) with n_words >= 1, got {v.shape}")
        enc = cls(v.shape[0], "kmajority" if v.dtype == np.uint8 else "kmeans", n_threads=n_threads)
        enc.vocabulary_ = np.ascontiguousarray(v) if v.dtype == np.uint8 else np.ascontiguousarray(v, np.float32)
        enc.n_features_out_ = v.shape[0]
        return enc

    def encode(self, X: np.ndarray, offsets: np.ndarray, keypoints: Any = None, image_sizes: Any = None,
               n_threads: Optional[int] = None) -> np.ndarray:
        """Word counts per image, float32 (n_images, n_features_out_); images
        without descriptors get zeros."""
        import bovw

        offsets = np.asarray(offsets, np.int64)
        k = self.n_features_out_
        if n_threads is None:
            n_threads = self.n_threads
        if X.shape[1] != self.vocabulary_.shape[1]:
            raise ValueError(f"descriptors of width {X.shape[1]} do not match the vocabulary's width "
                             f"{self.vocabulary_.shape[1]}")
        if offsets[-1] == 0:
            return np.zeros((len(offsets) - 1, k), np.float32)
        if self.vocabulary == "kmajority":
            from bovw import _bovw

            words, _ = _bovw.kmajority_predict(self._input(X), self.vocabulary_, n_threads=n_threads)
            return bovw.bow_histograms(np.asarray(words, np.int64), offsets, n_words=k, n_threads=n_threads)
        return bovw.BagOfWords(self.vocabulary_, n_threads=n_threads).counts(self._input(X), offsets)

    def summary(self) -> dict[str, Any]:
        q = getattr(self, "quantizer_", None)
        return {
            "encoding": "bow",
            "vocabulary": self.vocabulary,
            "k": int(self.n_features_out_),
            "n_iter": int(getattr(q, "n_iter_", 0)),
            "inertia": float(getattr(q, "inertia_", float("nan"))),
        }


class GlobalDescriptor:
    """The encoding of a global descriptor (one row per image): the row itself."""

    def __init__(self, width: int) -> None:
        self.n_features_out_ = int(width)

    def fit(self, X: np.ndarray) -> "GlobalDescriptor":
        return self

    def encode(self, X: np.ndarray, offsets: np.ndarray, keypoints: Any = None, image_sizes: Any = None,
               n_threads: Optional[int] = None) -> np.ndarray:
        offsets = np.asarray(offsets, np.int64)
        out = np.zeros((len(offsets) - 1, self.n_features_out_), np.float32)
        has = np.diff(offsets) > 0
        out[has] = X[offsets[:-1][has]]
        return out

    def summary(self) -> dict[str, Any]:
        return {"encoding": "global", "width": self.n_features_out_}


#: Descriptors an :class:`EncoderEncoding` projects and encodes per call.
ENCODE_ROWS = 1 << 17


class EncoderEncoding:
    """A bovw encoder (:class:`bovw.FisherVector`, :class:`bovw.VLAD`,
    :class:`bovw.BagOfWords`) as a job encoding (see the module docs).

    Descriptors are cast to float32 and, with ``descriptor_pca``, projected
    on their leading principal components first (fitted on the training
    sample with :class:`bovw.PCA`), as Fisher-vector systems decorrelate
    and shorten SIFT before the diagonal GMM (Sánchez, Perronnin, Mensink,
    Verbeek, IJCV 2013, section 4). Keypoint frames give the encoder their
    (x, y) for spatial pyramids.
    """

    def __init__(self, encoder: Any, descriptor_pca: Optional[int] = None) -> None:
        self.encoder = encoder
        self.descriptor_pca = descriptor_pca

    def _project(self, X: np.ndarray) -> np.ndarray:
        X = np.ascontiguousarray(X, np.float32)
        pca = getattr(self, "pca_", None)
        return X if pca is None or len(X) == 0 else np.ascontiguousarray(pca.transform(X), np.float32)

    def fit(self, X: np.ndarray) -> "EncoderEncoding":
        """Fit the descriptor PCA (if any), then the encoder's vocabulary or
        mixture, on descriptors ``X`` (n, width)."""
        import bovw

        if len(X) == 0:
            raise ValueError("no training descriptor: cannot fit the encoder")
        self.pca_ = None
        if self.descriptor_pca is not None and self.descriptor_pca < X.shape[1]:
            self.pca_ = bovw.PCA(n_components=int(self.descriptor_pca), random_state=0).fit(
                np.ascontiguousarray(X, np.float32))
        self.encoder.fit(self._project(X))
        self.n_features_out_ = int(self.encoder.n_features_out_)
        return self

    def encode(self, X: np.ndarray, offsets: np.ndarray, keypoints: Any = None, image_sizes: Any = None,
               n_threads: Optional[int] = None) -> np.ndarray:
        """One float32 vector per image (zeros without descriptors)."""
        offsets = np.asarray(offsets, np.int64)
        if offsets[-1] == 0:
            return np.zeros((len(offsets) - 1, self.n_features_out_), np.float32)
        xy = None if keypoints is None else np.ascontiguousarray(np.asarray(keypoints)[:, :2], np.float32)
        sizes = None if image_sizes is None else np.asarray(image_sizes, np.int64).reshape(-1, 2)
        # Groups of whole images of at most ENCODE_ROWS descriptors: the float
        # copy of a batch of dense uint8 descriptors (PHOW: 26k x 384 per
        # photo) would otherwise be four times the batch.
        n = len(offsets) - 1
        out = np.empty((n, self.n_features_out_), np.float32)
        i = 0
        while i < n:
            j = max(i + 1, int(np.searchsorted(offsets, offsets[i] + ENCODE_ROWS, side="right")) - 1)
            a, b = offsets[i], offsets[j]
            out[i:j] = self.encoder.encode(self._project(X[a:b]), offsets[i:j + 1] - a,
                                           None if xy is None else xy[a:b], None if sizes is None else sizes[i:j])
            i = j
        return out

    def summary(self) -> dict[str, Any]:
        params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.encoder.get_params().items()
                  if v is None or isinstance(v, (int, float, str, bool, tuple, list))}
        pca = getattr(self, "pca_", None)
        return {"encoding": type(self.encoder).__name__, "width": int(self.n_features_out_),
                "descriptor_pca": None if pca is None else int(pca.n_components_), **params}


@dataclass
class Channel:
    """One extractor and the encoding of its descriptors into one vector per image.

    Attributes
    ----------
    extractor : bovw.Extractor
    encoding : encoding
        See the module docs.
    normalize : {"l2", None}
        Applied to each image's encoded vector (rows of zeros stay zeros).
    weight : float
        The normalised vector is multiplied by it before the channels are concatenated.
    """

    extractor: Extractor
    encoding: Any
    normalize: Optional[str] = None
    weight: float = 1.0

    @property
    def name(self) -> str:
        return self.extractor.name

    def encode(self, X: np.ndarray, offsets: np.ndarray, keypoints: Any = None, image_sizes: Any = None,
               n_threads: Optional[int] = None) -> np.ndarray:
        """The encoding's vectors, normalised and weighted: float32 (n_images, n_features_out_)."""
        V = np.asarray(self.encoding.encode(X, offsets, keypoints, image_sizes, n_threads=n_threads), np.float32)
        norm = getattr(self, "normalize", None)
        if norm == "l2":
            n = np.linalg.norm(V.astype(np.float64), axis=1, keepdims=True)
            V = (V / np.maximum(n, 1e-12)).astype(np.float32)
        elif norm is not None:
            raise ValueError(f"normalize: expected 'l2' or None, got {norm!r}")
        w = float(getattr(self, "weight", 1.0))
        return V if w == 1.0 else (V * np.float32(w))


#: ``bovw run --classifier`` names.
CLASSIFIERS = ("logreg", "svm", "rf")


class RowSpace(TransformerMixin, BaseEstimator):
    """Rotate rows onto the span of the centred training rows when there are
    more features than training samples; otherwise pass them through.

    An L2-penalised linear model with an unpenalised intercept (scikit-learn's
    ``LogisticRegression``) has its optimal weights in that span (the
    representer theorem), and the rotation keeps inner products and the
    penalty, so fitting on the ``n_samples`` rotated coordinates gives the
    same decision function as fitting on the ``n_features`` originals, up to
    the solver's tolerance, at a fraction of the cost per iteration: a
    20,768-long Fisher vector of 1,500 training photos becomes 1,500 numbers.
    The rotation is scikit-learn's ``PCA(svd_solver="full")`` keeping every
    component.

    Attributes
    ----------
    pca_ : sklearn.decomposition.PCA or None
        The fitted rotation, None when ``n_features <= n_samples``.
    """

    def fit(self, X: Any, y: Any = None) -> "RowSpace":
        """Fit the rotation on training rows ``X`` (n_samples, n_features); ``y`` is ignored."""
        from sklearn.decomposition import PCA

        n, d = np.shape(X)
        self.pca_ = PCA(svd_solver="full").fit(X) if d > n else None
        return self

    def transform(self, X: Any) -> Any:
        """``X`` (n, n_features) in the fitted coordinates: (n, n_samples_fit) float, or ``X`` itself."""
        return X if self.pca_ is None else self.pca_.transform(X)


def make_classifier(name: str, seed: int, *, C: Optional[float] = None, standardize: bool = True) -> Any:
    """The scikit-learn classifier behind ``--classifier``.

    ``logreg``: multinomial logistic regression (``C``, default 1), after
    standardisation unless ``standardize=False`` (the recipes with
    L2-normalised channels use C=100 without it, see :mod:`bovw.recipes`),
    on :class:`RowSpace` coordinates (the same model, cheaper when there are
    more features than training images);
    ``svm``: standardisation + RBF SVC (``C``, default 10); ``rf``: a
    300-tree random forest.

    Raises
    ------
    ValueError
        If ``name`` is not one of :data:`CLASSIFIERS`.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "logreg":
        lr = LogisticRegression(max_iter=3000, C=1.0 if C is None else float(C), random_state=seed)
        return make_pipeline(StandardScaler(), RowSpace(), lr) if standardize else make_pipeline(RowSpace(), lr)
    if name == "svm":
        from sklearn.svm import SVC

        svc = SVC(kernel="rbf", C=10.0 if C is None else float(C), gamma="scale", random_state=seed)
        return make_pipeline(StandardScaler(), svc) if standardize else svc
    if name == "rf":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(n_estimators=300, random_state=seed, n_jobs=-1)
    raise ValueError(f"classifier: expected one of {CLASSIFIERS}, got {name!r}")


class BovwModel:
    """A fitted pipeline: images -> descriptors -> encodings -> PCA -> label.

    Attributes
    ----------
    channels : list of Channel
        Extractors and fitted encodings; their vectors are concatenated in order.
    pca : bovw.PCA or None
    classifier : scikit-learn estimator or None (fewer than two classes)
    """

    def __init__(self, channels: Sequence[Channel], pca: Any = None, classifier: Any = None) -> None:
        self.channels = list(channels)
        self.pca = pca
        self.classifier = classifier

    @property
    def vocabulary(self) -> Optional[np.ndarray]:
        """The first channel's visual vocabulary, when it has one."""
        for c in self.channels:
            if hasattr(c.encoding, "vocabulary_"):
                return np.asarray(c.encoding.vocabulary_)
        return None

    def encode(self, images: Sequence[Union[bytes, np.ndarray]], n_threads: Optional[int] = None) -> np.ndarray:
        """The concatenated channel vectors (before PCA), float32 (n_images, d).

        ``images``: encoded JPEG/PNG bytes, or decoded uint8 arrays ((H, W)
        gray or (H, W, 3) RGB). An image an extractor cannot use raises
        ``ValueError`` naming its index.
        """
        from bovw.columns import descriptor_matrix

        parts = []
        for ch in self.channels:
            if all(isinstance(im, (bytes, bytearray)) for im in images):
                batch = ch.extractor.extract(pa.record_batch({"content": pa.array(list(images), pa.binary())}),
                                             n_threads=n_threads)
                bad = [i for i, e in enumerate(batch.column("error").to_pylist()) if e is not None]
                if bad:
                    raise ValueError(f"image {bad[0]}: {batch.column('error')[bad[0]].as_py()}")
                X, offsets = descriptor_matrix(batch.column("descriptors"))
                kps, _ = descriptor_matrix(batch.column("keypoints"))
                sizes = np.stack([batch.column("image_width").to_numpy(zero_copy_only=False),
                                  batch.column("image_height").to_numpy(zero_copy_only=False)], axis=1)
            else:
                descs, frames, sizes_l = [], [], []
                for i, im in enumerate(images):
                    arr = np.asarray(im)
                    try:
                        kp, d = ch.extractor._rust.extract_image(np.ascontiguousarray(arr))
                    except ValueError as e:
                        raise ValueError(f"image {i}: {e}") from None
                    descs.append(d)
                    frames.append(kp[:, [0, 1, 2, 3]].astype(np.float32))
                    sizes_l.append((arr.shape[1], arr.shape[0]))
                offsets = np.concatenate([[0], np.cumsum([len(d) for d in descs])]).astype(np.int64)
                w = ch.extractor.descriptor_width
                X = np.concatenate(descs) if descs else np.zeros((0, w), ch.extractor.descriptor_dtype)
                kps = np.concatenate(frames) if frames else np.zeros((0, 4), np.float32)
                sizes = np.asarray(sizes_l, np.int64).reshape(-1, 2)
            parts.append(ch.encode(X, offsets, kps, sizes, n_threads=n_threads))
        return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]

    def features(self, encoded: np.ndarray) -> np.ndarray:
        """PCA projection of :meth:`encode`'s vectors (identity without PCA)."""
        return np.asarray(self.pca.transform(encoded), np.float32) if self.pca is not None else encoded

    def predict(self, images: Sequence[Union[bytes, np.ndarray]], n_threads: Optional[int] = None) -> np.ndarray:
        """Labels of images (encoded bytes or decoded uint8 arrays).

        Raises
        ------
        ValueError
            If the model has no classifier (fewer than two training classes)
            or an image cannot be used.
        """
        if self.classifier is None:
            raise ValueError("this model has no classifier (its training split had fewer than two classes)")
        return np.asarray(self.classifier.predict(self.features(self.encode(images, n_threads=n_threads))))


def load_model(out: Union[str, "os.PathLike[str]"]) -> BovwModel:
    """Reload the fitted pipeline that ``bovw run`` wrote to ``out/model.joblib``."""
    import joblib

    model = joblib.load(Path(out) / "model.joblib")
    if not isinstance(model, BovwModel):
        raise TypeError(f"{Path(out) / 'model.joblib'} holds a {type(model).__name__}, not a bovw model")
    return model

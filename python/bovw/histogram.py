"""Bag-of-visual-words histograms, in Rust.

:func:`bow_histograms` counts visual words per image (the counts of Spark's
``CountVectorizer`` on the same word lists, with the vocabulary in word-id
order) with optional idf weighting and L1/L2 normalisation.
:class:`BagOfWords` goes straight from descriptors to histograms: nearest
visual word and counting are fused in one Rust call per batch, with no
per-descriptor Python. Images without descriptors give all-zero rows; rows
are never dropped.

Output forms:

- a dense ``(n_images, n_words)`` float32 NumPy array (default);
- :func:`histograms_to_arrow` ``kind="fixed_size_list"``: an Arrow
  ``fixed_size_list<float32, n_words>`` column (zero-copy view of the array);
- ``kind="list_float64"``: an Arrow ``list<float64>`` column. In a Spark
  ``mapInArrow`` output schema this is ``array<double>``, which
  ``pyspark.ml.functions.array_to_vector`` turns into an ML ``Vector`` column
  without a row-by-row UDF::

      from pyspark.ml.functions import array_to_vector
      df = df.withColumn("features", array_to_vector("histogram"))

  (``kind="list"`` gives ``list<float32>`` = ``array<float>``, which
  ``array_to_vector`` accepts too.)
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from bovw import _bovw

__all__ = ["BagOfWords", "bow_histograms", "histograms_to_arrow"]

_IDF_KINDS = {"smooth": "sklearn_smooth", "sklearn_smooth": "sklearn_smooth", "sklearn": "sklearn", "spark": "spark"}


def _int64_1d(a: Any, what: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{what}: expected a 1-D integer array, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"{what}: expected integer ids, got dtype {arr.dtype}")
    if arr.dtype == np.uint64 and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{what}: id {arr.max()} is too large")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _is_count(value: object) -> bool:
    """An int >= 0 (a NumPy integer too; not a bool)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and int(value) >= 0


def _check_norm(norm: Any) -> str | None:
    if norm is None or norm in ("l1", "l2"):
        return None if norm is None else str(norm)
    raise ValueError(f"norm: expected None, 'l1' or 'l2', got {norm!r}")


def _idf_weights(counts: np.ndarray, idf: Any, n_words: int, min_doc_freq: int = 0) -> np.ndarray | None:
    if idf is None:
        return None
    if isinstance(idf, str):
        if idf not in _IDF_KINDS:
            raise ValueError(f"idf: expected None, an array of {n_words} weights or one of {sorted(_IDF_KINDS)}, got {idf!r}")
        return _bovw.bow_idf(counts, _IDF_KINDS[idf], int(min_doc_freq))
    w = np.ascontiguousarray(np.asarray(idf, dtype=np.float64))
    if w.shape != (n_words,):
        raise ValueError(f"idf: expected shape ({n_words},), got {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("idf: weights must be finite")
    return w


def bow_histograms(
    words: Any,
    offsets: Any = None,
    *,
    image_index: Any = None,
    n_images: int | None = None,
    n_words: int,
    norm: str | None = None,
    idf: Any = None,
    n_threads: int | None = None,
    spatial_pyramid: Sequence[int] | None = None,
    pyramid_weights: str = "uniform",
    keypoints: Any = None,
    image_sizes: Any = None,
) -> np.ndarray:
    """Visual-word histograms per image from word ids.

    Parameters
    ----------
    words : array-like of int, shape (n_descriptors,), or sequence of such arrays
        Visual-word id of each descriptor, in ``[0, n_words)``. A sequence of
        per-image arrays (``offsets`` and ``image_index`` left out) is
        concatenated, one image per entry.
    offsets : array-like of int, shape (n_images + 1,), optional
        Image ``i`` owns ``words[offsets[i]:offsets[i + 1]]``; ``offsets[0] == 0``,
        non-decreasing, ``offsets[-1] == n_descriptors``.
    image_index : array-like of int, shape (n_descriptors,), optional
        Instead of ``offsets``: the image of each descriptor, in
        ``[0, n_images)`` (any order); needs ``n_images``.
    n_images : int, optional
        Number of images with ``image_index`` (images without descriptors
        still get a row).
    n_words : int
        Vocabulary size (histogram width).
    norm : {None, "l1", "l2"}, default=None
        Row normalisation after idf weighting; all-zero rows stay zero.
    idf : None, array-like of shape (n_words,), or {"smooth", "sklearn", "spark"}
        Weights to multiply counts by (e.g. :attr:`BagOfWords.idf_`), or a
        formula fitted on these histograms themselves (document frequency
        ``df``, ``n`` images): ``"smooth"`` = scikit-learn's
        ``TfidfTransformer(smooth_idf=True)``: ``ln((1 + n) / (1 + df)) + 1``;
        ``"sklearn"``: ``ln(n / df) + 1``; ``"spark"`` = Spark ML ``IDF``:
        ``ln((n + 1) / (df + 1))``.
    n_threads : int, optional
        Threads (``None``: all cores).
    spatial_pyramid : sequence of int, optional
        Grids of a spatial pyramid (e.g. ``(1, 2, 4)``): one histogram per
        cell, concatenated (see :class:`BagOfWords`); needs ``offsets`` (or a
        list of per-image word arrays), ``keypoints`` and ``image_sizes``.
    pyramid_weights : {"uniform", "lazebnik"}, default="uniform"
    keypoints : array-like of shape (n_descriptors, >= 2), optional
        Keypoint x, y (pixels) of each word, with ``spatial_pyramid``.
    image_sizes : array-like of shape (n_images, 2), optional
        Width and height of each image (pixels), with ``spatial_pyramid``.

    Returns
    -------
    histograms : ndarray of shape (n_images, n_cells * n_words), float32
        Counts (Spark ``CountVectorizer``'s, in word-id order) or weighted rows.

    Raises
    ------
    ValueError
        A word id negative or ``>= n_words`` (the message gives its position
        and value), malformed ``offsets``, ``image_index`` of another length
        or out of range, both or neither of ``offsets``/``image_index``, an
        unknown ``norm`` or ``idf``.
    """
    if not _is_count(n_words):
        raise ValueError(f"n_words: expected an int >= 0, got {n_words!r}")
    norm = _check_norm(norm)
    if offsets is not None and image_index is not None:
        raise ValueError("pass either offsets or image_index, not both")
    if offsets is None and image_index is None:
        if isinstance(words, (list, tuple)):
            parts = [_int64_1d(np.asarray(w).reshape(-1) if w is not None else np.zeros(0, np.int64), f"words[{i}]")
                     for i, w in enumerate(words)]
            offsets = np.zeros(len(parts) + 1, dtype=np.int64)
            if parts:
                np.cumsum([p.size for p in parts], out=offsets[1:])
            words = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        else:
            raise ValueError("offsets or image_index is required when words is a flat array")
    w = _int64_1d(words, "words")
    if spatial_pyramid is not None:
        from bovw._batch import _kp_xy, _sizes
        from bovw.encoding import _check_pyramid

        grids = _check_pyramid(spatial_pyramid, pyramid_weights)
        assert grids is not None
        if image_index is not None or offsets is None:
            raise ValueError("spatial_pyramid: needs offsets (or per-image word arrays), not image_index")
        if keypoints is None or image_sizes is None:
            raise ValueError("spatial_pyramid: needs keypoints and image_sizes")
        o = _int64_1d(offsets, "offsets")
        if o.size == 0:
            raise ValueError("offsets: must have n_images + 1 >= 1 entries")
        if isinstance(keypoints, (list, tuple)) and keypoints and not np.isscalar(keypoints[0]) and np.ndim(keypoints[0]) != 1:
            keypoints = np.concatenate([_kp_xy(k, f"keypoints[{i}]") for i, k in enumerate(keypoints)])
        kp = keypoints if isinstance(keypoints, pa.Array) else np.ascontiguousarray(_kp_xy(keypoints, "keypoints"))
        sizes = _sizes(image_sizes, o.size - 1)
        assert sizes is not None
        counts = _bovw.bow_pyramid_counts(
            w, o, int(n_words), kp, sizes, grids,
            pyramid_weights=pyramid_weights, n_threads=n_threads,
        )
        counts = counts.reshape(o.size - 1, sum(g * g for g in grids) * int(n_words))
        weights = _idf_weights(counts, idf, counts.shape[1])
        if weights is None and norm is None:
            return counts
        return _bovw.bow_weight(counts, weights, norm)
    if image_index is not None:
        if n_images is None:
            raise ValueError("n_images is required with image_index")
        counts = _bovw.bow_counts_by_image(w, _int64_1d(image_index, "image_index"), int(n_images), int(n_words))
    else:
        o = _int64_1d(offsets, "offsets")
        if o.size == 0:
            raise ValueError("offsets: must have n_images + 1 >= 1 entries")
        counts = _bovw.bow_counts(w, o, int(n_words), n_threads=n_threads)
    weights = _idf_weights(counts, idf, int(n_words))
    if weights is None and norm is None:
        return counts
    return _bovw.bow_weight(counts, weights, norm)


def histograms_to_arrow(histograms: np.ndarray, kind: str = "fixed_size_list") -> pa.Array:
    """Histograms as an Arrow column, one row per image.

    Parameters
    ----------
    histograms : ndarray of shape (n_images, n_words)
    kind : {"fixed_size_list", "list", "list_float64"}, default="fixed_size_list"
        ``"fixed_size_list"``: ``fixed_size_list<float32, n_words>`` (zero-copy);
        ``"list"``: ``list<float32>`` (Spark ``array<float>``, zero-copy values);
        ``"list_float64"``: ``list<float64>`` (Spark ``array<double>``, for
        ``pyspark.ml.functions.array_to_vector``).

    Returns
    -------
    pyarrow.Array of length n_images

    Raises
    ------
    ValueError
        If histograms is not 2-D or ``kind`` is unknown.
    """
    h = np.asarray(histograms)
    if h.ndim != 2:
        raise ValueError(f"histograms: expected shape (n_images, n_words), got {h.shape}")
    n, k = h.shape
    if kind == "fixed_size_list":
        values = pa.array(np.ascontiguousarray(h, dtype=np.float32).reshape(-1))
        return pa.FixedSizeListArray.from_arrays(values, k)
    if kind in ("list", "list_float64"):
        dtype = np.float32 if kind == "list" else np.float64
        values = pa.array(np.ascontiguousarray(h, dtype=dtype).reshape(-1))
        if n * k < 2**31:
            return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * k), values)
        return pa.LargeListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int64) * k), values)
    raise ValueError(f"kind: expected 'fixed_size_list', 'list' or 'list_float64', got {kind!r}")


def _vocabulary_array(vocabulary: Any) -> np.ndarray:
    centers = getattr(vocabulary, "cluster_centers_", vocabulary)
    v = np.asarray(centers)
    if v.ndim != 2 or v.shape[0] == 0 or v.shape[1] == 0:
        raise ValueError(f"vocabulary: expected shape (n_words, n_features) with n_words >= 1, got {v.shape}")
    if not np.issubdtype(v.dtype, np.floating):
        raise TypeError(
            f"vocabulary: expected float centres, got dtype {v.dtype}; for binary (ORB) vocabularies "
            "assign words with Hamming distance and call bow_histograms(words, offsets, n_words=...)"
        )
    v = np.ascontiguousarray(v, dtype=np.float32)
    if not np.all(np.isfinite(v)):
        raise ValueError("vocabulary contains NaN or infinity")
    return v


def _arrow_descriptor_column(col: pa.Array, d: int) -> pa.Array:
    """Bring a descriptors column to ``list<fixed_size_list<float32, d>>``.

    Spark's Arrow conversion gives ``array<array<float>>`` as
    ``list<list<float32>>``; its values are re-wrapped without copying
    (after checking that every descriptor has ``d`` values). float64 values
    are cast to float32.
    """
    t = col.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
        raise TypeError(f"descriptors: expected an Arrow list<fixed_size_list<float32, {d}>> column, got {t}")
    inner_t = t.value_type
    if pa.types.is_fixed_size_list(inner_t) and inner_t.value_type == pa.float32() and pa.types.is_list(t):
        return col
    if not (pa.types.is_fixed_size_list(inner_t) or pa.types.is_list(inner_t) or pa.types.is_large_list(inner_t)):
        raise TypeError(f"descriptors: expected a list of descriptor lists, got {t}")
    if not (pa.types.is_floating(inner_t.value_type)):
        raise TypeError(
            f"descriptors: expected float values, got {inner_t.value_type} (binary descriptors need words)"
        )
    inner = col.values  # all descriptors of the referenced buffers
    if pa.types.is_fixed_size_list(inner_t):
        width = inner_t.list_size
        values = inner.flatten()
    else:
        lengths = np.asarray(inner.value_lengths().fill_null(0))
        if lengths.size and (lengths != d).any():
            bad = int(np.flatnonzero(lengths != d)[0])
            raise ValueError(f"descriptors: descriptor {bad} has {lengths[bad]} values, expected {d} like the vocabulary")
        width = d
        values = inner.flatten()
    if values.type != pa.float32():
        values = values.cast(pa.float32())
    fsl = pa.FixedSizeListArray.from_arrays(values, width)
    offsets = col.offsets
    if pa.types.is_large_list(t):
        offsets = offsets.cast(pa.int32())
    mask = col.is_null() if col.null_count else None
    return pa.ListArray.from_arrays(offsets, fsl, mask=mask)


def _descriptor_counts(X: Any, offsets: Any, vocab: np.ndarray, n_threads: int | None) -> np.ndarray:
    d = vocab.shape[1]
    if isinstance(X, pa.ChunkedArray):
        parts = [_descriptor_counts(c, None, vocab, n_threads) for c in X.chunks]
        return np.concatenate(parts) if parts else np.zeros((0, vocab.shape[0]), np.float32)
    if isinstance(X, pa.Array):
        return _bovw.bow_arrow_counts(_arrow_descriptor_column(X, d), vocab, n_threads=n_threads)
    if hasattr(X, "__arrow_c_array__") and not isinstance(X, np.ndarray):
        return _bovw.bow_arrow_counts(X, vocab, n_threads=n_threads)
    if offsets is not None:
        flat = np.asarray(X)
        if flat.ndim != 2 or (flat.shape[1] != d and flat.shape[0] > 0):
            raise ValueError(f"X: expected descriptors of shape (n, {d}) like the vocabulary, got {flat.shape}")
        if not np.issubdtype(flat.dtype, np.floating):
            raise TypeError(f"X: expected float descriptors, got dtype {flat.dtype} (binary descriptors need words)")
        flat = np.ascontiguousarray(flat.reshape(-1, d), dtype=np.float32)
        return _bovw.bow_descriptor_counts(flat, _int64_1d(offsets, "offsets"), vocab, n_threads=n_threads)
    if isinstance(X, np.ndarray) and X.dtype != object:
        raise ValueError("X: a flat (n, d) descriptor array needs offsets; pass a list of per-image arrays otherwise")
    if not isinstance(X, Sequence) and not (isinstance(X, np.ndarray) and X.dtype == object):
        raise TypeError(f"X: expected a list of (n_i, d) arrays, a flat array with offsets or an Arrow column, got {type(X).__name__}")
    parts = []
    for i, a in enumerate(X):
        if a is None:
            parts.append(np.zeros((0, d), np.float32))
            continue
        arr = np.asarray(a)
        if arr.size == 0:
            parts.append(np.zeros((0, d), np.float32))
            continue
        if arr.ndim != 2 or arr.shape[1] != d:
            raise ValueError(f"X[{i}]: expected descriptors of shape (n, {d}) like the vocabulary, got {arr.shape}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise TypeError(f"X[{i}]: expected float descriptors, got dtype {arr.dtype} (binary descriptors need words)")
        parts.append(arr)
    offs = np.zeros(len(parts) + 1, dtype=np.int64)
    if parts:
        np.cumsum([p.shape[0] for p in parts], out=offs[1:])
    flat = np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros((0, d), np.float32)
    return _bovw.bow_descriptor_counts(np.ascontiguousarray(flat), offs, vocab, n_threads=n_threads)


class BagOfWords(TransformerMixin, BaseEstimator):
    """Descriptors to bag-of-visual-words histograms (assign + count fused, in Rust).

    Each descriptor goes to its nearest visual word (squared Euclidean
    distance, ties to the lowest id, as ``KMeans.predict``), and words are
    counted per image; optional idf and normalisation as in
    :func:`bow_histograms`.

    Parameters
    ----------
    vocabulary : ndarray of shape (n_words, n_features) or a fitted KMeans
        Visual words (``cluster_centers_`` of a K-Means), float.
    norm : {None, "l1", "l2"}, default=None
        Row normalisation (after idf).
    use_idf : bool, default=False
        Learn inverse document frequencies in :meth:`fit` and weight counts.
    smooth_idf : bool, default=True
        scikit-learn's ``TfidfTransformer`` formula: ``ln((1 + n) / (1 + df)) + 1``
        if True, ``ln(n / df) + 1`` if False. Ignored with ``idf_formula="spark"``.
    idf_formula : {"sklearn", "spark"}, default="sklearn"
        ``"spark"``: Spark ML ``IDF``: ``ln((n + 1) / (df + 1))``, and 0 for
        words in fewer than ``min_doc_freq`` images.
    min_doc_freq : int, default=0
        Spark ``IDF.minDocFreq`` (``idf_formula="spark"`` only).
    n_threads : int or None, default=None
        Threads (``None``: all cores; 1 inside Spark tasks).
    spatial_pyramid : sequence of int, default=None
        Grids (cells per side) of a spatial pyramid (Lazebnik et al.), e.g.
        ``(1, 2, 4)``: one histogram per cell of each grid, concatenated
        (level by level, cells row-major); needs ``keypoints`` and
        ``image_sizes`` in :meth:`transform` (or a RecordBatch with the
        ``keypoints``, ``image_width`` and ``image_height`` columns). A
        keypoint at ``(x, y)`` (pixels, origin at the centre of the top-left
        pixel) of a ``width x height`` image is in column
        ``floor(((x + 0.5) * g) / width)``, clamped to ``[0, g - 1]`` (a point
        on a boundary goes to the cell on its right / below), likewise rows:
        see :func:`bovw.encoding.pyramid_cells`. ``norm`` and ``idf`` apply
        to the whole concatenated vector (idf per cell and word).
    pyramid_weights : {"uniform", "lazebnik"}, default="uniform"
        ``"uniform"``: every cell weight 1 (VLFeat's PHOW recipe);
        ``"lazebnik"``: the pyramid match weights ``1 / 2^L`` for level 0 and
        ``1 / 2^(L - l + 1)`` for level ``l`` (grids ``2^l``, ``L`` the finest).
    n_neighbors : int, default=1
        Soft assignment (kernel codebook, van Gemert et al.): each descriptor
        is spread over its ``n_neighbors`` nearest words with weights
        ``exp(-D_j / (2 sigma^2))`` normalised to sum 1 (``n_neighbors =
        n_words``: "codeword uncertainty"); 1 is hard assignment.
    sigma : float, default=None
        Kernel width of the soft assignment, in descriptor units; required
        when ``n_neighbors > 1``.

    Attributes
    ----------
    n_words_ : int
        Vocabulary size (histogram width per cell).
    n_features_out_ : int
        Output width: ``n_cells * n_words_``.
    idf_ : ndarray of shape (n_words_,), float64
        Only with ``use_idf``.
    n_features_in_ : int
        Descriptor width.

    Notes
    -----
    ``X`` is a batch of images' descriptors: a list of ``(n_i, d)`` arrays
    (``None`` or empty = no descriptors), a flat ``(N, d)`` array with
    ``offsets`` (n_images + 1), or an Arrow ``list<fixed_size_list<float32, d>>``
    column (pyarrow Array or ChunkedArray; null rows = no descriptors), read
    without copying, as ``bovw.extract_descriptors`` gives it. Inside Spark's
    ``mapInArrow`` an ``array<array<float>>`` column arrives as
    ``list<list<float32>>``: it is accepted too (re-wrapped without copying
    once every descriptor is checked to have ``d`` values; float64 is cast). Binary (ORB) descriptors are not accepted here:
    assign them with a Hamming vocabulary and use :func:`bow_histograms`.

    Because X is not a tabular ``(n_samples, n_features)`` array,
    scikit-learn's ``check_estimator`` does not apply to this class.

    It follows the encoder interface of :mod:`bovw.encoding` (``fit`` on
    descriptors, ``encode(X, offsets, keypoints_xy, image_sizes)``,
    ``n_features_out_``, ``get_feature_names_out``); ``vocabulary`` may also
    be an unfitted estimator (e.g. ``bovw.KMeans(100)``), cloned and fitted
    on the descriptors given to :meth:`fit`.

    References
    ----------
    .. [1] S. Lazebnik, C. Schmid, J. Ponce, "Beyond bags of features:
       spatial pyramid matching for recognizing natural scene categories",
       CVPR 2006.
    .. [2] J. C. van Gemert, C. J. Veenman, A. W. M. Smeulders, J.-M.
       Geusebroek, "Visual word ambiguity", IEEE TPAMI 32(7), 2010.

    Examples
    --------
    >>> import numpy as np, bovw
    >>> vocab = np.array([[0.0, 0.0], [10.0, 10.0]], dtype=np.float32)
    >>> bow = bovw.BagOfWords(vocab)
    >>> bow.transform([np.array([[1, 1], [9, 9], [11, 10]], np.float32), None])
    array([[1., 2.],
           [0., 0.]], dtype=float32)
    """

    def __init__(
        self,
        vocabulary: Any,
        norm: str | None = None,
        use_idf: bool = False,
        smooth_idf: bool = True,
        idf_formula: str = "sklearn",
        min_doc_freq: int = 0,
        n_threads: int | None = None,
        spatial_pyramid: Sequence[int] | None = None,
        pyramid_weights: str = "uniform",
        n_neighbors: int = 1,
        sigma: float | None = None,
    ) -> None:
        self.vocabulary = vocabulary
        self.norm = norm
        self.use_idf = use_idf
        self.smooth_idf = smooth_idf
        self.idf_formula = idf_formula
        self.min_doc_freq = min_doc_freq
        self.n_threads = n_threads
        self.spatial_pyramid = spatial_pyramid
        self.pyramid_weights = pyramid_weights
        self.n_neighbors = n_neighbors
        self.sigma = sigma

    def _validate(self) -> np.ndarray:
        _check_norm(self.norm)
        if self.idf_formula not in ("sklearn", "spark"):
            raise ValueError(f"idf_formula: expected 'sklearn' or 'spark', got {self.idf_formula!r}")
        self._check_options()
        return _vocabulary_array(self.vocabulary)

    def _check_options(self) -> None:
        from bovw.encoding import _check_pyramid

        if self.pyramid_weights not in ("uniform", "lazebnik"):
            raise ValueError(f"pyramid_weights: expected 'uniform' or 'lazebnik', got {self.pyramid_weights!r}")
        self._grids = _check_pyramid(self.spatial_pyramid, self.pyramid_weights)
        nn: Any = self.n_neighbors
        if isinstance(nn, bool) or not isinstance(nn, (int, np.integer)) or nn < 1:
            raise ValueError(f"n_neighbors: expected an int >= 1, got {nn!r}")
        if self.sigma is not None and not (np.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"sigma: expected a positive number, got {self.sigma!r}")
        if nn > 1 and self.sigma is None:
            raise ValueError(f"sigma: soft assignment (n_neighbors={nn}) needs a kernel width sigma > 0")

    def _plain(self) -> bool:
        """Today's path: hard assignment, no pyramid."""
        return self.spatial_pyramid is None and (self.n_neighbors == 1)

    def _vocab_for_fit(self, X: Any, offsets: Any) -> np.ndarray:
        """The vocabulary, fitting an unfitted estimator on X's descriptors."""
        v = self.vocabulary
        if hasattr(v, "fit") and not hasattr(v, "cluster_centers_"):
            from sklearn.base import clone

            from bovw._batch import flat_descriptors

            _check_norm(self.norm)
            if self.idf_formula not in ("sklearn", "spark"):
                raise ValueError(f"idf_formula: expected 'sklearn' or 'spark', got {self.idf_formula!r}")
            self._check_options()
            return _vocabulary_array(clone(v).fit(flat_descriptors(X, offsets)))
        return self._validate()

    def _counts(self, X: Any, offsets: Any, vocab: np.ndarray, keypoints: Any = None, image_sizes: Any = None) -> np.ndarray:
        if self._plain() and not isinstance(X, (pa.RecordBatch, pa.Table)):
            return _descriptor_counts(X, offsets, vocab, self.n_threads)
        from bovw._batch import iter_batches

        self._check_options()
        grids = self._grids
        parts = []
        for b in iter_batches(X, vocab.shape[1], offsets, keypoints, image_sizes):
            kw: dict = {}
            if grids is not None:
                if b.keypoints is None or b.image_sizes is None:
                    raise ValueError(
                        "spatial_pyramid needs keypoints and image_sizes (or a RecordBatch with the keypoints, "
                        "image_width and image_height columns)"
                    )
                kw = {"keypoints": b.keypoints, "image_sizes": b.image_sizes, "spatial_pyramid": grids,
                      "pyramid_weights": self.pyramid_weights}
            parts.append(_bovw.encode_bow(b.descriptors, vocab, b.offsets, n_neighbors=int(self.n_neighbors),
                                          sigma=self.sigma, n_threads=self.n_threads, **kw).reshape(-1, self._width(vocab)))
        if not parts:
            return np.zeros((0, self._width(vocab)), np.float32)
        return parts[0] if len(parts) == 1 else np.vstack(parts)

    def _width(self, vocab: np.ndarray) -> int:
        from bovw.encoding import n_cells

        return int(n_cells(self.spatial_pyramid) * vocab.shape[0])

    @property
    def n_features_out_(self) -> int:
        """Output width: ``n_cells * n_words``."""
        check_is_fitted(self, "n_words_")
        return self._width(self._vocab)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Output names ``bagofwords0``, ``bagofwords1``, ... (scikit-learn's
        convention for new features)."""
        check_is_fitted(self, "n_words_")
        return np.asarray([f"bagofwords{i}" for i in range(self.n_features_out_)], dtype=object)

    def encode(self, X: Any, offsets: Any, keypoints_xy: Any = None, image_sizes: Any = None) -> np.ndarray:
        """The generic encoder call (see :mod:`bovw.encoding`):
        :meth:`transform` with keypoint positions and image sizes.

        Returns
        -------
        histograms : ndarray of shape (n_images, n_features_out_), float32
        """
        return self.transform(X, offsets, keypoints_xy, image_sizes)

    def counts(self, X: Any, offsets: Any = None, keypoints: Any = None, image_sizes: Any = None) -> np.ndarray:
        """Raw word counts per image (no idf, no normalisation).

        Parameters
        ----------
        X : descriptors batch (see Notes)
        offsets : array-like of int, shape (n_images + 1,), optional
            With a flat ``(N, d)`` array.
        keypoints, image_sizes : optional
            Keypoint positions and image sizes, with ``spatial_pyramid`` (see
            :meth:`transform`).

        Returns
        -------
        counts : ndarray of shape (n_images, n_features_out_), float32
            Soft assignment gives fractional counts (each descriptor adds 1 in
            all); pyramids times their level weights.

        Raises
        ------
        ValueError
            Width different from the vocabulary's, NaN/inf descriptors (the
            row is named), malformed offsets.
        TypeError
            Non-float descriptors or an unsupported container.
        """
        vocab = self._vocab if hasattr(self, "_vocab") else self._validate()
        return self._counts(X, offsets, vocab, keypoints, image_sizes)

    def fit(self, X: Any = None, y: Any = None, offsets: Any = None, keypoints: Any = None, image_sizes: Any = None) -> BagOfWords:
        """Check the vocabulary (fitting it first if it is an unfitted
        estimator) and, with ``use_idf``, learn ``idf_`` from X.

        Returns
        -------
        self : BagOfWords
        """
        vocab = self._vocab_for_fit(X, offsets)
        self.n_words_ = vocab.shape[0]
        self.n_features_in_ = vocab.shape[1]
        self._vocab = vocab
        if self.use_idf:
            counts = self._counts(X, offsets, vocab, keypoints, image_sizes)
            kind = "spark" if self.idf_formula == "spark" else ("sklearn_smooth" if self.smooth_idf else "sklearn")
            self.idf_ = _bovw.bow_idf(counts, kind, int(self.min_doc_freq))
        return self

    def _weight(self, counts: np.ndarray) -> np.ndarray:
        weights = self.idf_ if self.use_idf else None
        if weights is None and self.norm is None:
            return counts
        return _bovw.bow_weight(counts, weights, self.norm)

    def transform(self, X: Any, offsets: Any = None, keypoints: Any = None, image_sizes: Any = None) -> np.ndarray:
        """Histograms of a batch of images.

        Parameters
        ----------
        X : descriptors batch (see Notes), or a RecordBatch with the columns
            of :func:`bovw.extract_descriptors`
        offsets : array-like of int, shape (n_images + 1,), optional
            With a flat ``(N, d)`` array.
        keypoints : per-image list, ``(N, >= 2)`` array or Arrow column, optional
            Keypoint positions (x, y first, pixels), with ``spatial_pyramid``.
        image_sizes : array-like of shape (n_images, 2), optional
            Width and height of each image in pixels, with ``spatial_pyramid``.

        Returns
        -------
        histograms : ndarray of shape (n_images, n_features_out_), float32
            One row per image, zeros for images without descriptors.
        """
        if self.use_idf:
            check_is_fitted(self, "idf_")
        vocab = self._vocab if hasattr(self, "_vocab") else self._validate()
        counts = self._counts(X, offsets, vocab, keypoints, image_sizes)
        return self._weight(counts)

    def fit_transform(self, X: Any, y: Any = None, offsets: Any = None, keypoints: Any = None, image_sizes: Any = None) -> np.ndarray:
        """Fit (idf) and transform in one pass over the descriptors."""
        vocab = self._vocab_for_fit(X, offsets)
        self.n_words_ = vocab.shape[0]
        self.n_features_in_ = vocab.shape[1]
        self._vocab = vocab
        counts = self._counts(X, offsets, vocab, keypoints, image_sizes)
        if self.use_idf:
            kind = "spark" if self.idf_formula == "spark" else ("sklearn_smooth" if self.smooth_idf else "sklearn")
            self.idf_ = _bovw.bow_idf(counts, kind, int(self.min_doc_freq))
        return self._weight(counts)

    def transform_arrow(
        self, X: Any, offsets: Any = None, kind: str = "fixed_size_list", keypoints: Any = None, image_sizes: Any = None
    ) -> pa.Array:
        """:meth:`transform` as an Arrow column (see :func:`histograms_to_arrow`)."""
        return histograms_to_arrow(self.transform(X, offsets, keypoints, image_sizes), kind)

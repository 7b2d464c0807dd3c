"""Visual vocabularies for binary descriptors (ORB): k-majority in Hamming space.

:class:`KMajority` clusters 256-bit ORB descriptors with popcount distances
and per-bit majority-vote centers (Grana et al. 2013), in Rust.
:func:`orb_descriptors_as_float` is the other route, the one the seed
notebooks take: ORB bytes as float vectors for Euclidean K-Means.
"""

from __future__ import annotations

from numbers import Integral
from typing import Any, Optional, Union

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from bovw import _bovw
from bovw._params import Constraints, NonBoolInterval, fit_context

__all__ = ["KMajority", "orb_descriptors_as_float"]


def _check_binary(X: Any, what: str = "X") -> np.ndarray:
    """X as a C-contiguous 2-D uint8 array (no copy when it already is).

    Raises
    ------
    TypeError
        If X is None, sparse, or not uint8.
    ValueError
        If X is not 2-D or has no columns.
    """
    if X is None:
        raise TypeError(f"{what}: expected a 2-D uint8 array of binary descriptors, got None")
    if sparse.issparse(X):
        raise TypeError(f"{what}: sparse input is not supported; pass a dense 2-D uint8 array of binary descriptors")
    arr = np.asarray(X)
    if arr.dtype != np.uint8:
        raise TypeError(
            f"{what}: expected dtype uint8 (packed binary descriptors such as ORB's (n, 32)), got {arr.dtype}"
        )
    if arr.ndim != 2:
        hint = " Reshape your data with X.reshape(1, -1) if it is one descriptor." if arr.ndim == 1 else ""
        raise ValueError(
            f"{what}: expected a 2-D array of shape (n_samples, n_bytes), got shape {arr.shape}.{hint}"
        )
    if arr.shape[1] == 0:
        raise ValueError(
            f"{what}: descriptors have no bytes: 0 feature(s) (shape={arr.shape}) while a minimum of 1 is required."
        )
    return np.ascontiguousarray(arr)


def _seed(random_state: Union[None, int, np.random.RandomState, np.random.Generator]) -> int:
    """The Rust seed: an int seed as it is, else a draw from the generator
    (the global RandomState for None). The type and range were checked by
    ``KMajority._parameter_constraints``."""
    if random_state is None:
        return int(np.random.randint(0, 2**31 - 1))
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**31 - 1))
    return int(random_state)


def orb_descriptors_as_float(descriptors: Any, bits: bool = False) -> np.ndarray:
    """Convert ORB descriptors to float32 vectors for Euclidean K-Means.

    Parameters
    ----------
    descriptors : ndarray of shape (n, 32), dtype uint8
        Packed binary descriptors (``bovw.ORB`` or ``cv2.ORB``).
    bits : bool, default False
        False: each byte becomes one float in 0..255, shape (n, 32): what the
        seed notebooks do with ``desc.astype(np.float32)``. True: each bit
        becomes a 0.0/1.0 float (least significant bit of each byte first, as
        ORB sets them), shape (n, 256); squared Euclidean distances between
        such vectors are exactly Hamming distances.

    Returns
    -------
    ndarray of shape (n, 32) or (n, 256), dtype float32

    Raises
    ------
    TypeError
        If ``descriptors`` is not uint8.
    ValueError
        If it is not 2-D.
    """
    arr = _check_binary(descriptors, "descriptors")
    if not bits:
        return arr.astype(np.float32)
    return np.unpackbits(arr, axis=1, bitorder="little").astype(np.float32)


class KMajority(ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin, BaseEstimator):
    """K-majority clustering of binary descriptors in Hamming space.

    Lloyd-style iterations where each descriptor is assigned to the center
    at the smallest Hamming distance (popcount of the XOR, ties to the lowest
    index) and each center becomes the per-bit majority vote of its members
    (a tie gives 0; an empty cluster keeps its center), until no center
    changes or ``max_iter`` updates. Seeding is k-means++ with the Hamming
    distance. The centers are a binary visual vocabulary; :meth:`predict`
    gives visual word ids for bag-of-words histograms.

    A scikit-learn estimator (``BaseEstimator``, ``ClusterMixin``,
    ``TransformerMixin``): ``get_params``/``set_params``/``clone``, parameters
    validated in ``fit`` against ``_parameter_constraints``, ``fit_predict``,
    ``fit_transform``, ``get_feature_names_out`` (``"kmajority0"``...) and
    ``set_output``; it works in a ``Pipeline``. Its input is packed binary
    descriptors, uint8 only: float data is refused with a ``TypeError``
    rather than rounded.

    Parameters
    ----------
    n_clusters : int, default 8
        Number of visual words.
    max_iter : int, default 100
        Maximum number of center updates.
    random_state : int, numpy RandomState/Generator or None, default None
        Seed of the k-means++ draws. Results depend on it only (never on
        ``n_threads``).
    init : "k-means++" or ndarray of shape (n_clusters, n_bytes), dtype uint8
        Seeding, or explicit initial centers.
    n_threads : int, optional
        Threads; default all cores (or ``RAYON_NUM_THREADS``).

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, n_bytes), dtype uint8
        The binary vocabulary.
    labels_ : ndarray of shape (n_samples,), dtype int64
    inertia_ : int
        Sum of the Hamming distances of the samples to their centers (bits).
    n_iter_ : int
        Number of center updates run.
    n_features_in_ : int
        Bytes per descriptor seen in ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Set when X has string column names (a pandas DataFrame).

    References
    ----------
    .. [1] C. Grana, D. Borghesani, M. Manfredi, R. Cucchiara, "A fast
       approach for integrating ORB descriptors in the bag of words model",
       Proc. SPIE 8667, 2013.
    .. [2] D. Arthur, S. Vassilvitskii, "k-means++: the advantages of careful
       seeding", SODA 2007.

    Examples
    --------
    >>> import numpy as np, bovw
    >>> rng = np.random.default_rng(0)
    >>> X = rng.integers(0, 256, size=(1000, 32), dtype=np.uint8)
    >>> km = bovw.KMajority(n_clusters=4, random_state=0).fit(X)
    >>> km.cluster_centers_.shape, km.cluster_centers_.dtype
    ((4, 32), dtype('uint8'))
    >>> bool((km.predict(X) == km.labels_).all())
    True
    >>> km.get_feature_names_out().tolist()
    ['kmajority0', 'kmajority1', 'kmajority2', 'kmajority3']
    """

    # Checked in fit (fit_context); a violation raises scikit-learn's
    # InvalidParameterError, a ValueError and a TypeError naming the parameter.
    _parameter_constraints: Constraints = {
        "n_clusters": [NonBoolInterval(Integral, 1, None, closed="left")],
        "max_iter": [NonBoolInterval(Integral, 1, None, closed="left")],
        "random_state": ["random_state", np.random.Generator],
        "init": [StrOptions({"k-means++"}), "array-like"],
        "n_threads": [NonBoolInterval(Integral, 1, None, closed="left"), None],
    }

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        max_iter: int = 100,
        random_state: Union[None, int, np.random.RandomState, np.random.Generator] = None,
        init: Any = "k-means++",
        n_threads: Optional[int] = None,
    ) -> None:
        self.n_clusters = n_clusters
        self.max_iter = max_iter
        self.random_state = random_state
        self.init = init
        self.n_threads = n_threads

    def __sklearn_tags__(self):  # type: ignore[no-untyped-def]  # scikit-learn's Tags are untyped
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        # transform gives int64 Hamming distances: no float dtype is kept.
        if tags.transformer_tags is not None:
            tags.transformer_tags.preserves_dtype = []
        return tags

    @property
    def _n_features_out(self) -> int:
        """Columns of ``transform``: one Hamming distance per center."""
        return int(self.cluster_centers_.shape[0])

    def _validate_X(self, X: Any, *, reset: bool) -> np.ndarray:
        """X as C-contiguous uint8, with ``n_features_in_`` and
        ``feature_names_in_`` set (``reset``) or checked against ``fit``."""
        arr = _check_binary(X)
        if not reset and arr.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {arr.shape[1]} features, but {type(self).__name__} is expecting {self.n_features_in_} "
                f"features as input (bytes per descriptor, as in fit)"
            )
        # Feature names and n_features_in_ as every scikit-learn estimator
        # keeps them; the array itself was checked above.
        validate_data(self, X, reset=reset, skip_check_array=True)
        return arr

    @fit_context
    def fit(self, X: Any, y: Any = None) -> "KMajority":
        """Compute the binary vocabulary.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_bytes), dtype uint8
            Packed binary descriptors (ORB: n_bytes = 32).
        y : ignored

        Returns
        -------
        self

        Raises
        ------
        TypeError
            If ``X`` is not uint8.
        ValueError
            If ``X`` is not 2-D or has fewer rows than ``n_clusters``, or
            ``init`` has the wrong shape.
        sklearn.utils._param_validation.InvalidParameterError
            (a ValueError and a TypeError) If a parameter has the wrong type
            or range (``_parameter_constraints``); the message names it.
        """
        X = self._validate_X(X, reset=True)
        if X.shape[0] < self.n_clusters:
            raise ValueError(f"n_clusters: n_samples={X.shape[0]} should be >= n_clusters={self.n_clusters}")
        init = None
        if not isinstance(self.init, str):
            init = _check_binary(self.init, "init")
            if init.shape != (self.n_clusters, X.shape[1]):
                raise ValueError(f"init: expected shape ({self.n_clusters}, {X.shape[1]}), got {init.shape}")
        centers, labels, inertia, n_iter = _bovw.kmajority_fit(
            X,
            int(self.n_clusters),
            max_iter=int(self.max_iter),
            seed=_seed(self.random_state),
            init=init,
            n_threads=self.n_threads,
        )
        self.cluster_centers_ = centers
        self.labels_ = labels
        self.inertia_ = int(inertia)
        self.n_iter_ = int(n_iter)
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Visual word of each descriptor: the nearest center by Hamming distance.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_bytes), dtype uint8

        Returns
        -------
        labels : ndarray of shape (n_samples,), dtype int64
            Ties go to the lowest center index.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            (a ValueError) If ``fit`` has not been called.
        ValueError
            If ``X`` has another number of bytes than in ``fit``.
        TypeError
            If ``X`` is not uint8.
        """
        check_is_fitted(self)
        X = self._validate_X(X, reset=False)
        if X.shape[0] == 0:
            return np.zeros(0, dtype=np.int64)
        labels, _ = _bovw.kmajority_predict(X, self.cluster_centers_, n_threads=self.n_threads)
        return labels

    def transform(self, X: Any) -> np.ndarray:
        """Hamming distance of each descriptor to each center.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_bytes), dtype uint8

        Returns
        -------
        distances : ndarray of shape (n_samples, n_clusters), dtype int64
            Bits that differ.

        Raises
        ------
        sklearn.exceptions.NotFittedError, ValueError, TypeError
            As :meth:`predict`.
        """
        check_is_fitted(self)
        X = self._validate_X(X, reset=False)
        x = np.unpackbits(X, axis=1).astype(np.int64)
        c = np.unpackbits(self.cluster_centers_, axis=1).astype(np.int64)
        distances: np.ndarray = x.sum(1)[:, None] + c.sum(1)[None, :] - 2 * x @ c.T
        return distances

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        """Fit, then return ``labels_``.

        Returns
        -------
        labels : ndarray of shape (n_samples,), dtype int64
        """
        labels: np.ndarray = self.fit(X).labels_
        return labels

    def score(self, X: Any, y: Any = None) -> float:
        """Opposite of the sum of Hamming distances of ``X`` to its nearest centers.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_bytes), dtype uint8
        y : ignored

        Returns
        -------
        score : float
            ``-sum_i min_j hamming(x_i, c_j)`` in bits (0.0 for no rows).
        """
        check_is_fitted(self)
        X = self._validate_X(X, reset=False)
        if X.shape[0] == 0:
            return 0.0
        _, dist = _bovw.kmajority_predict(X, self.cluster_centers_, n_threads=self.n_threads)
        return -float(dist.sum())

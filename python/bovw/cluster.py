"""K-Means visual vocabularies: scikit-learn's estimators on a Rust engine.

:class:`KMeans` and :class:`MiniBatchKMeans` follow scikit-learn's API and
semantics (parameters, fitted attributes, convergence rules, empty-cluster
handling); the work runs in Rust (``bovw._bovw``) on ``float32`` or
``float64`` data without copying it, on ``n_threads`` threads, with results
that do not depend on the number of threads.

The module also exposes the pieces of a distributed Lloyd iteration, for
Spark: :func:`assign` (labels and squared distances of a batch),
:func:`partial_sums` (per-center sums, counts and inertia of a batch),
:func:`kmeans_plusplus` and :func:`kmeans_parallel_round` (one k-means||
round on a batch). They take NumPy arrays or an Arrow
``list<fixed_size_list<float32, d>>`` descriptor column (read without copy).

References
----------
.. [1] S. Lloyd, "Least squares quantization in PCM", IEEE Transactions on
   Information Theory 28(2), 1982.
.. [2] D. Arthur and S. Vassilvitskii, "k-means++: the advantages of careful
   seeding", SODA 2007.
.. [3] C. Elkan, "Using the triangle inequality to accelerate k-means",
   ICML 2003; G. Hamerly, "Making k-means even faster", SDM 2010; Y. Ding
   et al., "Yinyang K-Means: a drop-in replacement of the classic K-Means
   with consistent speedup", ICML 2015.
.. [4] B. Bahmani et al., "Scalable K-Means++", PVLDB 5(7), 2012.
.. [5] D. Sculley, "Web-scale k-means clustering", WWW 2010.
.. [6] scikit-learn, ``sklearn/cluster/_kmeans.py``.
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real
from typing import Any, Callable, Optional, Union

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import Tags, check_array, check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from bovw import _bovw
from bovw._params import Constraints, NonBoolInterval, fit_context, validate_params

__all__ = [
    "KMeans",
    "MiniBatchKMeans",
    "assign",
    "kmeans_parallel_round",
    "kmeans_plusplus",
    "partial_sums",
]

_INT32_MAX = np.iinfo(np.int32).max


def _is_arrow(x: Any) -> bool:
    mod = type(x).__module__
    return mod.startswith("pyarrow") or hasattr(x, "__arrow_c_array__") and not isinstance(x, np.ndarray)


def _arrow_column(x: Any) -> Any:
    """A pyarrow Array (combining the chunks of a ChunkedArray)."""
    if hasattr(x, "combine_chunks"):
        x = x.combine_chunks()
    return x


def _as_float_2d(X: Any, name: str = "X", dtype: Any = None) -> np.ndarray:
    """A C-contiguous 2-D float32/float64 array (no copy when it already is)."""
    _reject_text(X, name)
    arr: np.ndarray = check_array(
        X,
        dtype=[np.float32, np.float64] if dtype is None else dtype,
        order="C",
        ensure_min_samples=1,
        input_name=name,
    )
    return arr


def _reject_text(X: Any, name: str) -> None:
    """TypeError for arrays of strings, bytes, dates or records (object
    arrays of numbers are converted; complex ones get scikit-learn's ValueError)."""
    if isinstance(X, np.ndarray) and X.dtype.kind in "USVMm":
        raise TypeError(f"{name}: expected a numeric array, got dtype {X.dtype}")


def _validated(estimator: BaseEstimator, X: Any, **kwargs: Any) -> np.ndarray:
    """``validate_data(estimator, X, **kwargs)``, typed."""
    arr: np.ndarray = validate_data(estimator, X, **kwargs)
    return arr


def _seed(random_state: Any) -> int:
    return int(check_random_state(random_state).randint(_INT32_MAX))


def _weights(sample_weight: Any, X: np.ndarray) -> Optional[np.ndarray]:
    if sample_weight is None:
        return None
    w = _check_sample_weight(sample_weight, X, dtype=np.float64)
    return np.ascontiguousarray(w, dtype=np.float64)


# ---------------------------------------------------------------------------
# Pieces for a distributed Lloyd iteration
# ---------------------------------------------------------------------------


def assign(X: Any, centers: Any, *, n_threads: Optional[int] = None) -> tuple:
    """Nearest center of each row of a batch.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features), dtype float32 or float64, or \
pyarrow Array of type list<fixed_size_list<float32, n_features>>
        The batch. An Arrow descriptor column (one row per image) is read
        without copy, its descriptors in order.
    centers : ndarray of shape (n_clusters, n_features)
        Cast to X's dtype (float32 for Arrow input).
    n_threads : int, optional
        Threads to use; all cores by default. Pass 1 inside Spark tasks.

    Returns
    -------
    labels : ndarray of shape (n_samples,), dtype int32
        Index of the nearest center by exact squared Euclidean distance
        (ties to the lowest index).
    sq_distances : ndarray of shape (n_samples,), dtype float64
        Squared distance to that center.

    Raises
    ------
    ValueError
        If X contains NaN or infinity, or the widths differ.
    TypeError
        If X is not numeric.
    """
    if _is_arrow(X):
        c = np.ascontiguousarray(centers, dtype=np.float32)
        labels, d2, _ = _bovw.kmeans_assign_arrow(_arrow_column(X), c, n_threads=n_threads)
        return labels, d2
    X = _as_float_2d(X)
    c = _as_float_2d(centers, "centers", dtype=X.dtype)
    return _bovw.kmeans_assign(X, c, n_threads=n_threads)


def partial_sums(X: Any, centers: Any, *, n_threads: Optional[int] = None) -> tuple:
    """Per-center sums, counts and inertia of a batch: one Lloyd iteration's
    statistics on one partition.

    Summing ``sums`` and ``counts`` over all partitions and dividing gives
    the new centers; summing ``inertia`` gives the inertia of the current
    centers.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features), dtype float32 or float64, or \
pyarrow Array of type list<fixed_size_list<float32, n_features>>
        The batch (an Arrow descriptor column is read without copy).
    centers : ndarray of shape (n_clusters, n_features)
    n_threads : int, optional
        Threads to use; all cores by default.

    Returns
    -------
    sums : ndarray of shape (n_clusters, n_features), dtype float64
        Sum of the rows nearest to each center.
    counts : ndarray of shape (n_clusters,), dtype int64
        Number of rows nearest to each center.
    inertia : float
        Sum of the squared distances of the rows to their nearest center.

    Raises
    ------
    ValueError
        If X contains NaN or infinity, or the widths differ.
    """
    if _is_arrow(X):
        c = np.ascontiguousarray(centers, dtype=np.float32)
        return _bovw.kmeans_partial_sums_arrow(_arrow_column(X), c, n_threads=n_threads)
    X = _as_float_2d(X)
    c = _as_float_2d(centers, "centers", dtype=X.dtype)
    return _bovw.kmeans_partial_sums(X, c, n_threads=n_threads)


def kmeans_parallel_round(
    X: Any,
    centers: Any,
    oversampling_factor: float,
    phi: float,
    *,
    random_state: Any = None,
    sample_weight: Any = None,
    n_threads: Optional[int] = None,
) -> tuple:
    """One k-means|| round on a batch (Bahmani et al. 2012).

    Keeps each row independently with probability
    ``min(1, oversampling_factor * w_i * D(x_i)^2 / phi)``, ``D`` being the
    distance to the nearest of ``centers`` and ``phi`` the current total cost.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features), dtype float32 or float64
    centers : ndarray of shape (n_candidates, n_features)
        The candidates chosen so far.
    oversampling_factor : float
        ``l``, the expected number of rows kept per round over all batches.
    phi : float
        The cost ``sum_i w_i D(x_i)^2`` over all batches (0 keeps nothing).
    random_state : int, RandomState or None
        Seed of the draws; give each partition its own.
    sample_weight : ndarray of shape (n_samples,), optional
    n_threads : int, optional

    Returns
    -------
    indices : ndarray of shape (n_kept,), dtype int64
        Rows of X to add to the candidates.
    cost : float
        This batch's ``sum_i w_i D(x_i)^2`` (the next round's ``phi`` is the
        sum over batches after adding the new candidates).
    """
    X = _as_float_2d(X)
    c = _as_float_2d(centers, "centers", dtype=X.dtype)
    return _bovw.kmeans_parallel_round(
        X,
        c,
        float(oversampling_factor),
        float(phi),
        seed=_seed(random_state),
        sample_weight=_weights(sample_weight, X),
        n_threads=n_threads,
    )


_POSITIVE_INT = NonBoolInterval(Integral, 1, None, closed="left")


@validate_params(
    {
        "X": ["array-like"],
        "n_clusters": [_POSITIVE_INT],
        "sample_weight": ["array-like", None],
        "x_squared_norms": ["array-like", None],
        "random_state": ["random_state"],
        "n_local_trials": [_POSITIVE_INT, None],
        "n_threads": [_POSITIVE_INT, None],
    }
)
def kmeans_plusplus(
    X: Any,
    n_clusters: int,
    *,
    sample_weight: Any = None,
    x_squared_norms: Any = None,
    random_state: Any = None,
    n_local_trials: Optional[int] = None,
    n_threads: Optional[int] = None,
) -> tuple:
    """Greedy k-means++ seeding, as ``sklearn.cluster.kmeans_plusplus``.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features), dtype float32 or float64
    n_clusters : int
    sample_weight : ndarray of shape (n_samples,), optional
    x_squared_norms : ignored
        Accepted for scikit-learn compatibility.
    random_state : int, RandomState or None
    n_local_trials : int, optional
        Candidates per step; ``2 + int(log(n_clusters))`` by default.
    n_threads : int, optional

    Returns
    -------
    centers : ndarray of shape (n_clusters, n_features), dtype of X
    indices : ndarray of shape (n_clusters,), dtype int64
        The rows of X chosen.

    Raises
    ------
    ValueError
        If X has NaN or infinity, or fewer rows than ``n_clusters``.
    sklearn.utils._param_validation.InvalidParameterError
        (a ValueError and a TypeError) If a parameter has the wrong type or
        range, e.g. ``n_clusters < 1``; the message names it.

    References
    ----------
    .. [1] Arthur and Vassilvitskii, "k-means++: the advantages of careful
       seeding", SODA 2007.
    """
    X = _as_float_2d(X)
    _check_n_samples(X.shape[0], n_clusters)
    return _bovw.kmeans_plusplus_init(
        X,
        int(n_clusters),
        _weights(sample_weight, X),
        seed=_seed(random_state),
        n_local_trials=n_local_trials,
        n_threads=n_threads,
    )


def _check_n_samples(n_samples: int, n_clusters: int) -> None:
    """The one data-dependent check on ``n_clusters`` (its type and range are
    in the constraints)."""
    if n_samples < n_clusters:
        raise ValueError(f"n_samples={n_samples} should be >= n_clusters={n_clusters}.")


# ---------------------------------------------------------------------------
# Estimators
# ---------------------------------------------------------------------------

InitType = Union[str, np.ndarray, Callable[..., Any]]


class _KMeansBase(ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin, BaseEstimator):
    """Shared parameter constraints, init and prediction.

    ``get_feature_names_out`` (from ``ClassNamePrefixFeaturesOutMixin``)
    names the columns of :meth:`transform` ``"kmeans0"``, ``"kmeans1"``...
    (``"minibatchkmeans0"``... for :class:`MiniBatchKMeans`).
    """

    # Checked in fit (fit_context); a violation raises scikit-learn's
    # InvalidParameterError, a ValueError and a TypeError naming the parameter.
    _parameter_constraints: Constraints = {
        "n_clusters": [_POSITIVE_INT],
        "init": [StrOptions({"k-means++", "random", "k-means||"}), callable, "array-like"],
        "n_init": [StrOptions({"auto"}), _POSITIVE_INT],
        "max_iter": [_POSITIVE_INT],
        "tol": [Interval(Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "random_state": ["random_state"],
        "n_threads": [_POSITIVE_INT, None],
    }

    # Parameters, set by the subclasses' __init__.
    n_clusters: int
    init: InitType
    n_init: Union[str, int]
    max_iter: int
    tol: float
    verbose: int
    random_state: Any
    n_threads: Optional[int]
    cluster_centers_: np.ndarray
    # Columns of transform (one distance per center), for get_feature_names_out;
    # set with cluster_centers_ (bovw.spark sets both on a distributed fit).
    _n_features_out: int

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        if tags.transformer_tags is not None:
            tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    def _check_common(self, X: np.ndarray, default_n_init: int) -> None:
        """Data-dependent checks and the resolved ``n_init`` (the parameters'
        types and ranges were checked by ``_parameter_constraints``)."""
        _check_n_samples(X.shape[0], self.n_clusters)
        init = self.init
        if self.n_init == "auto":
            if isinstance(init, str) and init in ("k-means++", "k-means||"):
                self._n_init = 1
            elif isinstance(init, str) or callable(init):
                self._n_init = default_n_init
            else:
                self._n_init = 1
        else:
            self._n_init = int(self.n_init)
        if not isinstance(init, str) and not callable(init) and self._n_init != 1:
            warnings.warn(
                "Explicit initial center position passed: performing only one init in "
                f"{type(self).__name__} instead of n_init={self._n_init}.",
                RuntimeWarning,
                stacklevel=3,
            )
            self._n_init = 1

    def _init_array(self, X: np.ndarray) -> Optional[np.ndarray]:
        init = self.init
        if isinstance(init, str) or callable(init):
            return None
        try:
            arr = np.asarray(init)
        except Exception as e:  # pragma: no cover - odd array-likes
            raise TypeError(f"init: cannot convert to an array ({e})") from e
        if arr.dtype.kind not in "fiub":
            raise TypeError(f"init: expected a numeric array, got dtype {arr.dtype}")
        arr = np.asarray(check_array(arr, dtype=X.dtype, copy=True, order="C", input_name="init"))
        if arr.shape[0] != self.n_clusters:
            raise ValueError(
                f"init: the shape of the initial centers {arr.shape} does not match the "
                f"number of clusters {self.n_clusters}."
            )
        if arr.shape[1] != X.shape[1]:
            raise ValueError(
                f"init: the shape of the initial centers {arr.shape} does not match the "
                f"number of features of the data {X.shape[1]}."
            )
        return arr

    def _init_centroids(
        self,
        X: np.ndarray,
        sample_weight: Optional[np.ndarray],
        random_state: np.random.RandomState,
        init_array: Optional[np.ndarray],
        n_centroids: Optional[int] = None,
    ) -> np.ndarray:
        k = self.n_clusters if n_centroids is None else n_centroids
        init = self.init
        if init_array is not None:
            return init_array
        if isinstance(init, str) and init == "k-means++":
            centers, _ = _bovw.kmeans_plusplus_init(
                X, k, sample_weight, seed=int(random_state.randint(_INT32_MAX)), n_threads=self.n_threads
            )
            return centers
        if isinstance(init, str) and init == "k-means||":
            return _bovw.kmeans_parallel_init(
                X, k, sample_weight, seed=int(random_state.randint(_INT32_MAX)), n_threads=self.n_threads
            )
        if isinstance(init, str) and init == "random":
            p = None if sample_weight is None else sample_weight / sample_weight.sum()
            seeds = random_state.choice(X.shape[0], size=k, replace=False, p=p)
            return np.ascontiguousarray(X[seeds])
        if not callable(init):  # (the constraints admit no other kind)
            raise TypeError(f"init must be a string, an array or a callable, got {type(init).__name__}")
        centers = np.asarray(
            check_array(init(X, k, random_state=random_state), dtype=X.dtype, copy=False, order="C", input_name="init")
        )
        if centers.shape != (k, X.shape[1]):
            raise ValueError(f"init: the callable returned shape {centers.shape}, expected {(k, X.shape[1])}")
        return np.ascontiguousarray(centers)

    def _check_test_data(self, X: Any) -> np.ndarray:
        _reject_text(X, "X")
        return _validated(
            self,
            X,
            accept_sparse=False,
            reset=False,
            dtype=[np.float64, np.float32],
            order="C",
            accept_large_sparse=False,
        )

    def _centers_like(self, X: np.ndarray) -> np.ndarray:
        c = self.cluster_centers_
        if c.dtype != X.dtype:
            c = np.ascontiguousarray(c, dtype=X.dtype)
        return c

    def predict(self, X: Any) -> np.ndarray:
        """Index of the nearest center (visual word) of each sample.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            float32 and float64 are used as they are (no copy when
            C-contiguous); other numeric types are converted to float64.

        Returns
        -------
        labels : ndarray of shape (n_samples,), dtype int32
            Nearest center by exact squared Euclidean distance, ties to the
            lowest index.

        Raises
        ------
        ValueError
            If X has NaN or infinity or the wrong number of features.
        """
        check_is_fitted(self)
        X = self._check_test_data(X)
        return _bovw.kmeans_predict(X, self._centers_like(X), n_threads=self.n_threads)

    def transform(self, X: Any) -> np.ndarray:
        """Euclidean distance of each sample to each center.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_clusters), dtype of X
            Computed in float64 (as scikit-learn's ``euclidean_distances``).
        """
        check_is_fitted(self)
        X = self._check_test_data(X)
        return _bovw.kmeans_distances(X, self._centers_like(X), n_threads=self.n_threads)

    def fit_predict(self, X: Any, y: Any = None, sample_weight: Any = None) -> np.ndarray:
        """Fit and return ``labels_``; see :meth:`fit`.

        Returns
        -------
        labels : ndarray of shape (n_samples,), dtype int32
        """
        labels: np.ndarray = self.fit(X, sample_weight=sample_weight).labels_
        return labels

    def fit_transform(self, X: Any, y: Any = None, sample_weight: Any = None) -> np.ndarray:
        """Fit and return the distances of X to the centers; see :meth:`fit`.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_clusters), dtype of X
        """
        distances: np.ndarray = self.fit(X, sample_weight=sample_weight).transform(X)
        return distances

    def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
        """Opposite of the (weighted) inertia of X with the fitted centers.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : ignored
        sample_weight : array-like of shape (n_samples,), optional

        Returns
        -------
        score : float
            ``-sum_i w_i min_j ||x_i - c_j||^2``.
        """
        check_is_fitted(self)
        X = self._check_test_data(X)
        w = _weights(sample_weight, X)
        _, d2 = _bovw.kmeans_assign(X, self._centers_like(X), check_finite=False, n_threads=self.n_threads)
        return -float(d2.sum() if w is None else d2 @ w)

    def _validate_fit_data(self, X: Any, reset: bool = True) -> np.ndarray:
        _reject_text(X, "X")
        return _validated(
            self,
            X,
            accept_sparse=False,
            dtype=[np.float64, np.float32],
            order="C",
            accept_large_sparse=False,
            reset=reset,
        )


class KMeans(_KMeansBase):
    """K-Means clustering (visual vocabulary), scikit-learn's ``KMeans`` in Rust.

    Parameters
    ----------
    n_clusters : int, default=8
        Number of clusters (visual words).
    init : {'k-means++', 'random', 'k-means||'}, callable or array-like of \
shape (n_clusters, n_features), default='k-means++'
        'k-means++': greedy k-means++ with ``2 + int(log(n_clusters))`` local
        trials [2]_. 'random': ``n_clusters`` distinct rows drawn with
        probability proportional to ``sample_weight``. 'k-means||': scalable
        k-means++ [4]_ (5 rounds, oversampling ``2 * n_clusters``). A callable
        is called as ``init(X, n_clusters, random_state=random_state)``.
    n_init : 'auto' or int, default='auto'
        Number of runs with different seeds; the one with the lowest inertia
        is kept. 'auto': 1 for 'k-means++', 'k-means||' or an array, 10 for
        'random' or a callable (scikit-learn >= 1.4).
    max_iter : int, default=300
        Maximum number of iterations of one run.
    tol : float, default=1e-4
        Relative tolerance: a run stops when the sum of squared center
        shifts is at most ``tol * mean(var(X, axis=0))``.
    verbose : int, default=0
        Print a line per run.
    random_state : int, RandomState instance or None, default=None
        Seeds the initialisation.
    copy_x : bool, default=True
        Accepted for compatibility; X is never modified nor copied.
    algorithm : {'elkan', 'lloyd'}, default='elkan'
        'elkan' (the default): Lloyd's iterations with triangle-inequality
        pruning [3]_ (Yinyang K-means: an upper bound and one lower bound per
        group of about ten centers, at most 32 groups, instead of Elkan's
        ``n_clusters`` bounds). It is exact: the same labels and centers as
        'lloyd', several times faster when the run goes to convergence (most
        points keep their label without any distance computed): on 72,000
        SIFT descriptors of Fruits-360 images, K=100 and 200, to convergence
        from the same init, it took 25 to 40 % of the time of 'lloyd' and
        15 to 30 % of scikit-learn's default (2 cores;
        ``benches/py/bench_kmeans.py --defaults``). 'lloyd' (scikit-learn's
        default): every distance computed at every iteration, by blocked
        GEMM [1]_. With ``n_clusters=1`` both are the same computation and
        'lloyd' runs.
    n_threads : int or None, default=None
        Threads to use (all cores by default). Results do not depend on it.

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, n_features), dtype of X
        The centers (the visual vocabulary).
    labels_ : ndarray of shape (n_samples,), dtype int32
        Label of each training sample.
    inertia_ : float
        Sum of (weighted) squared distances of the samples to their center.
    n_iter_ : int
        Iterations of the best run.
    n_features_in_ : int
        Number of features seen in fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Set when X has string column names.

    Notes
    -----
    The assignment step computes ``||x||^2 - 2 x.c + ||c||^2`` by blocks with
    a GEMM kernel and re-checks the centers within the rounding bound of the
    minimum by the direct formula, so labels are the exact nearest centers.
    Center sums are accumulated in float64 over fixed blocks: the same
    ``random_state`` gives the same centers and labels whatever the number of
    threads. Empty clusters are moved to the points farthest from their
    centers, as scikit-learn does.

    References
    ----------
    .. [1] S. Lloyd, "Least squares quantization in PCM", IEEE Trans.
       Information Theory 28(2), 1982.
    .. [2] D. Arthur and S. Vassilvitskii, "k-means++: the advantages of
       careful seeding", SODA 2007.
    .. [3] C. Elkan, "Using the triangle inequality to accelerate k-means",
       ICML 2003; G. Hamerly, "Making k-means even faster", SDM 2010; Y. Ding
       et al., "Yinyang K-Means: a drop-in replacement of the classic
       K-Means with consistent speedup", ICML 2015.
    .. [4] B. Bahmani et al., "Scalable K-Means++", PVLDB 5(7), 2012.
    .. [5] scikit-learn, ``sklearn/cluster/_kmeans.py``.

    Examples
    --------
    >>> import numpy as np
    >>> import bovw
    >>> X = np.array([[1, 2], [1, 4], [1, 0], [10, 2], [10, 4], [10, 0]], dtype=np.float32)
    >>> km = bovw.KMeans(n_clusters=2, random_state=0).fit(X)
    >>> sorted(km.cluster_centers_.tolist())
    [[1.0, 2.0], [10.0, 2.0]]
    >>> km.predict(np.array([[0, 0], [12, 3]], dtype=np.float32)).tolist() == \
[km.labels_[0], km.labels_[3]]
    True
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        init: InitType = "k-means++",
        n_init: Union[str, int] = "auto",
        max_iter: int = 300,
        tol: float = 1e-4,
        verbose: int = 0,
        random_state: Any = None,
        copy_x: bool = True,
        algorithm: str = "elkan",
        n_threads: Optional[int] = None,
    ) -> None:
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.verbose = verbose
        self.random_state = random_state
        self.copy_x = copy_x
        self.algorithm = algorithm
        self.n_threads = n_threads

    _parameter_constraints: Constraints = {
        **_KMeansBase._parameter_constraints,
        "copy_x": ["boolean"],
        "algorithm": [StrOptions({"lloyd", "elkan"})],
    }

    @fit_context
    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> "KMeans":
        """Compute the K-Means clustering.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training descriptors. float32 and float64 C-contiguous arrays are
            used in place; other numeric types are converted to float64.
        y : ignored
        sample_weight : array-like of shape (n_samples,), optional
            Weight of each sample (default 1).

        Returns
        -------
        self : KMeans
            Fitted estimator.

        Raises
        ------
        ValueError
            If X has NaN or infinity, no samples, fewer samples than
            ``n_clusters``; if ``init`` has the wrong shape.
        TypeError
            If X or ``init`` is not numeric, or X is sparse.
        sklearn.utils._param_validation.InvalidParameterError
            (a ValueError and a TypeError) If a parameter has the wrong type
            or range (``_parameter_constraints``); the message names it.
        """
        X = self._validate_fit_data(X)
        self._check_common(X, default_n_init=10)
        algorithm = self.algorithm
        if algorithm == "elkan" and self.n_clusters == 1:
            algorithm = "lloyd"
        random_state = check_random_state(self.random_state)
        w = _weights(sample_weight, X)
        init_array = self._init_array(X)
        tol = _bovw.kmeans_tolerance(X, float(self.tol), n_threads=self.n_threads)
        best = None
        for run in range(self._n_init):
            centers0 = self._init_centroids(X, w, random_state, init_array)
            if self.verbose:
                print(f"Initialization complete (run {run + 1}/{self._n_init})")
            centers, labels, inertia, n_iter = _bovw.kmeans_fit_single(
                X,
                centers0,
                w,
                max_iter=int(self.max_iter),
                tol=tol,
                algorithm=algorithm,
                n_threads=self.n_threads,
            )
            if self.verbose:
                print(f"Run {run + 1}: {n_iter} iterations, inertia {inertia}")
            if best is None or inertia < best[2]:
                best = (centers, labels, inertia, n_iter)
        assert best is not None
        centers, labels, inertia, n_iter = best
        distinct = len(np.unique(labels))
        if distinct < self.n_clusters:
            warnings.warn(
                f"Number of distinct clusters ({distinct}) found smaller than "
                f"n_clusters ({self.n_clusters}). Possibly due to duplicate points in X.",
                ConvergenceWarning,
                stacklevel=2,
            )
        self.cluster_centers_ = centers
        self._n_features_out = centers.shape[0]
        self.labels_ = labels
        self.inertia_ = float(inertia)
        self.n_iter_ = int(n_iter)
        return self


class MiniBatchKMeans(_KMeansBase):
    """Mini-batch K-Means (Sculley 2010), scikit-learn's ``MiniBatchKMeans``
    with the assignment and sums in Rust, for vocabularies over tens of
    millions of descriptors.

    Parameters
    ----------
    n_clusters : int, default=8
    init : {'k-means++', 'random', 'k-means||'}, callable or array-like of \
shape (n_clusters, n_features), default='k-means++'
        Run on ``init_size`` random samples.
    max_iter : int, default=100
        Maximum number of passes over the data (``max_iter * n_samples /
        batch_size`` steps).
    batch_size : int, default=1024
    verbose : int, default=0
    compute_labels : bool, default=True
        Compute ``labels_`` and ``inertia_`` on the whole data after fit.
    random_state : int, RandomState instance or None, default=None
    tol : float, default=0.0
        Stop when the squared change of the centers in one step is at most
        ``tol * mean(var(X, axis=0))`` (0 disables it).
    max_no_improvement : int or None, default=10
        Stop after this many steps without improvement of the smoothed batch
        inertia (None disables it).
    init_size : int, optional
        Samples used for the initialisation (``3 * batch_size`` by default,
        at least ``3 * n_clusters``).
    n_init : 'auto' or int, default='auto'
        Initialisations tried (evaluated on ``init_size`` samples); 'auto':
        1 for 'k-means++'/'k-means||'/array, 3 for 'random'/callable.
    reassignment_ratio : float, default=0.01
        Centers whose count is below this fraction of the largest count are
        moved to random samples.
    n_threads : int or None, default=None

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, n_features), dtype of X
    labels_ : ndarray of shape (n_samples,), dtype int32
    inertia_ : float
    n_iter_ : int
        Passes over the data.
    n_steps_ : int
        Mini-batches processed.
    n_features_in_ : int

    References
    ----------
    .. [1] D. Sculley, "Web-scale k-means clustering", WWW 2010.
    .. [2] scikit-learn, ``sklearn/cluster/_kmeans.py`` (``MiniBatchKMeans``).
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        init: InitType = "k-means++",
        max_iter: int = 100,
        batch_size: int = 1024,
        verbose: int = 0,
        compute_labels: bool = True,
        random_state: Any = None,
        tol: float = 0.0,
        max_no_improvement: Optional[int] = 10,
        init_size: Optional[int] = None,
        n_init: Union[str, int] = "auto",
        reassignment_ratio: float = 0.01,
        n_threads: Optional[int] = None,
    ) -> None:
        self.n_clusters = n_clusters
        self.init = init
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.verbose = verbose
        self.compute_labels = compute_labels
        self.random_state = random_state
        self.tol = tol
        self.max_no_improvement = max_no_improvement
        self.init_size = init_size
        self.n_init = n_init
        self.reassignment_ratio = reassignment_ratio
        self.n_threads = n_threads

    _parameter_constraints: Constraints = {
        **_KMeansBase._parameter_constraints,
        "batch_size": [_POSITIVE_INT],
        "compute_labels": ["boolean"],
        "max_no_improvement": [NonBoolInterval(Integral, 0, None, closed="left"), None],
        "init_size": [_POSITIVE_INT, None],
        "reassignment_ratio": [Interval(Real, 0, None, closed="left")],
    }

    # State of a fit, kept between partial_fit calls.
    _batch_size: int
    _init_size: int
    _tol: float
    _counts: np.ndarray
    _n_since_last_reassign: int
    _random_state: np.random.RandomState

    def _check_mb(self, X: np.ndarray) -> None:
        self._check_common(X, default_n_init=3)
        self._batch_size = min(int(self.batch_size), X.shape[0])
        init_size = self.init_size
        if init_size is None:
            init_size = 3 * self._batch_size
            if init_size < self.n_clusters:
                init_size = 3 * self.n_clusters
        elif init_size < self.n_clusters:
            warnings.warn(
                f"init_size={init_size} should be larger than n_clusters={self.n_clusters}. "
                f"Setting it to min(3*n_clusters, n_samples)",
                RuntimeWarning,
                stacklevel=3,
            )
            init_size = 3 * self.n_clusters
        self._init_size = min(init_size, X.shape[0])

    def _step(
        self,
        Xb: np.ndarray,
        wb: Optional[np.ndarray],
        centers: np.ndarray,
        random_state: np.random.RandomState,
        random_reassign: bool,
    ) -> tuple:
        """One mini-batch update in place of ``centers`` / ``self._counts``;
        returns (batch inertia before the update, centers before)."""
        k = centers.shape[0]
        if wb is None:
            sums, counts, inertia = _bovw.kmeans_partial_sums(Xb, centers, n_threads=self.n_threads)
            bw = counts.astype(np.float64)
        else:
            labels, d2 = _bovw.kmeans_assign(Xb, centers, check_finite=False, n_threads=self.n_threads)
            sums = np.zeros((k, Xb.shape[1]), dtype=np.float64)
            np.add.at(sums, labels, Xb * wb[:, None])
            bw = np.bincount(labels, weights=wb, minlength=k).astype(np.float64)
            inertia = float(d2 @ wb)
        old = centers.copy()
        hit = bw > 0
        cnt = self._counts
        new_cnt = cnt[hit] + bw[hit]
        centers[hit] = ((old[hit].astype(np.float64) * cnt[hit, None] + sums[hit]) / new_cnt[:, None]).astype(
            centers.dtype
        )
        cnt[hit] = new_cnt
        if random_reassign and self.reassignment_ratio > 0:
            to_reassign = cnt < self.reassignment_ratio * cnt.max()
            if to_reassign.sum() > 0.5 * Xb.shape[0]:
                keep = np.argsort(cnt, kind="stable")[int(0.5 * Xb.shape[0]) :]
                to_reassign[keep] = False
            n_re = int(to_reassign.sum())
            if n_re:
                picks = random_state.choice(Xb.shape[0], replace=False, size=n_re)
                if self.verbose:
                    print(f"[MiniBatchKMeans] Reassigning {n_re} cluster centers.")
                centers[to_reassign] = Xb[picks]
                cnt[to_reassign] = np.min(cnt[~to_reassign])
        return inertia, old

    def _random_reassign(self) -> bool:
        self._n_since_last_reassign += self._batch_size
        if (self._counts == 0).any() or self._n_since_last_reassign >= 10 * self.n_clusters:
            self._n_since_last_reassign = 0
            return True
        return False

    def _best_init(self, X: np.ndarray, w: Optional[np.ndarray], random_state: np.random.RandomState) -> np.ndarray:
        n = X.shape[0]
        init_array = self._init_array(X)
        valid = random_state.randint(0, n, self._init_size)
        Xv = X[valid]
        wv = None if w is None else w[valid]
        best, best_inertia = None, None
        for i in range(self._n_init):
            if init_array is not None:
                c = init_array
            else:
                idx = random_state.randint(0, n, self._init_size)
                Xi = np.ascontiguousarray(X[idx])
                c = self._init_centroids(Xi, None if w is None else w[idx], random_state, None)
            _, d2 = _bovw.kmeans_assign(Xv, c, check_finite=False, n_threads=self.n_threads)
            inertia = float(d2.sum() if wv is None else d2 @ wv)
            if self.verbose:
                print(f"Inertia for init {i + 1}/{self._n_init}: {inertia}")
            if best_inertia is None or inertia < best_inertia:
                best, best_inertia = c, inertia
        assert best is not None
        return np.array(best, dtype=X.dtype, order="C", copy=True)

    @fit_context
    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> "MiniBatchKMeans":
        """Compute the centers by mini-batch updates.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : ignored
        sample_weight : array-like of shape (n_samples,), optional
            Mini-batches are drawn with probability proportional to it.

        Returns
        -------
        self : MiniBatchKMeans

        Raises
        ------
        ValueError, TypeError
            As :meth:`KMeans.fit`.
        """
        X = self._validate_fit_data(X)
        self._check_mb(X)
        random_state = check_random_state(self.random_state)
        w = _weights(sample_weight, X)
        self._tol = _bovw.kmeans_tolerance(X, float(self.tol), n_threads=self.n_threads) if self.tol > 0 else 0.0
        n = X.shape[0]
        centers = self._best_init(X, w, random_state)
        self._counts = np.zeros(self.n_clusters, dtype=np.float64)
        self._ewa_inertia: Optional[float] = None
        self._ewa_inertia_min: Optional[float] = None
        self._no_improvement = 0
        self._n_since_last_reassign = 0
        n_steps = max((int(self.max_iter) * n) // self._batch_size, 1)
        p = None if w is None else w / w.sum()
        i = 0
        for i in range(n_steps):
            idx = random_state.choice(n, self._batch_size, p=p, replace=True)
            Xb = X[idx]
            inertia, old = self._step(Xb, None, centers, random_state, self._random_reassign())
            diff = float(np.sum((centers.astype(np.float64) - old) ** 2)) if self._tol > 0 else 0.0
            if self._converged(i, n_steps, n, diff, inertia):
                break
        self.cluster_centers_ = centers
        self._n_features_out = centers.shape[0]
        self.n_steps_ = i + 1
        self.n_iter_ = int(np.ceil(((i + 1) * self._batch_size) / n))
        if self.compute_labels:
            labels, d2 = _bovw.kmeans_assign(X, centers, check_finite=False, n_threads=self.n_threads)
            self.labels_ = labels
            self.inertia_ = float(d2.sum() if w is None else d2 @ w)
        else:
            self.inertia_ = None  # type: ignore[assignment]
        return self

    def _converged(self, step: int, n_steps: int, n_samples: int, diff: float, batch_inertia: float) -> bool:
        batch_inertia /= self._batch_size
        step += 1
        if step == 1:
            return False
        if self._ewa_inertia is None:
            self._ewa_inertia = batch_inertia
        else:
            alpha = min(self._batch_size * 2.0 / (n_samples + 1), 1.0)
            self._ewa_inertia = self._ewa_inertia * (1 - alpha) + batch_inertia * alpha
        if self.verbose:
            print(f"Minibatch step {step}/{n_steps}: mean batch inertia {batch_inertia}, ewa {self._ewa_inertia}")
        if self._tol > 0.0 and diff <= self._tol:
            return True
        if self._ewa_inertia_min is None or self._ewa_inertia < self._ewa_inertia_min:
            self._no_improvement = 0
            self._ewa_inertia_min = self._ewa_inertia
        else:
            self._no_improvement += 1
        return self.max_no_improvement is not None and self._no_improvement >= self.max_no_improvement

    @fit_context
    def partial_fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> "MiniBatchKMeans":
        """Update the centers with one mini-batch.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : ignored
        sample_weight : array-like of shape (n_samples,), optional

        Returns
        -------
        self : MiniBatchKMeans
        """
        has_centers = hasattr(self, "cluster_centers_")
        X = self._validate_fit_data(X, reset=not has_centers)
        self._random_state = getattr(self, "_random_state", None) or check_random_state(self.random_state)
        w = _weights(sample_weight, X)
        self.n_steps_ = getattr(self, "n_steps_", 0)
        if not has_centers:
            self._check_mb(X)
            self._batch_size = X.shape[0]
            init_array = self._init_array(X)
            self.cluster_centers_ = np.array(
                self._init_centroids(X, w, self._random_state, init_array), dtype=X.dtype, order="C", copy=True
            )
            self._counts = np.zeros(self.n_clusters, dtype=np.float64)
            self._n_since_last_reassign = 0
        else:
            self._batch_size = X.shape[0]
        centers = self._centers_like(X)
        if centers is not self.cluster_centers_:
            centers = centers.copy()
        self._step(X, w, centers, self._random_state, self._random_reassign())
        self.cluster_centers_ = centers
        self._n_features_out = centers.shape[0]
        if self.compute_labels:
            labels, d2 = _bovw.kmeans_assign(X, centers, check_finite=False, n_threads=self.n_threads)
            self.labels_ = labels
            self.inertia_ = float(d2.sum() if w is None else d2 @ w)
        self.n_steps_ += 1
        return self


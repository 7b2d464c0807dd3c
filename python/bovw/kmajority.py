"""Visual vocabularies for binary descriptors (ORB): k-majority in Hamming space.

:class:`KMajority` clusters 256-bit ORB descriptors with popcount distances
and per-bit majority-vote centers (Grana et al. 2013), in Rust.
:func:`orb_descriptors_as_float` is the other route, the one the seed
notebooks take: ORB bytes as float vectors for Euclidean K-Means.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bovw import _bovw

__all__ = ["KMajority", "orb_descriptors_as_float"]


def _check_binary(X: Any, what: str = "X") -> np.ndarray:
    if X is None:
        raise TypeError(f"{what}: expected a 2-D uint8 array of binary descriptors, got None")
    arr = np.asarray(X)
    if arr.dtype != np.uint8:
        raise TypeError(
            f"{what}: expected dtype uint8 (packed binary descriptors such as ORB's (n, 32)), got {arr.dtype}"
        )
    if arr.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D array of shape (n_samples, n_bytes), got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"{what}: descriptors have no bytes (shape {arr.shape})")
    return np.ascontiguousarray(arr)


def _seed(random_state: Any) -> int:
    if random_state is None:
        return int(np.random.randint(0, 2**31 - 1))
    if isinstance(random_state, (int, np.integer)):
        if random_state < 0:
            raise ValueError(f"random_state: expected a non-negative int, got {random_state}")
        return int(random_state)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**31 - 1))
    raise TypeError(f"random_state: expected None, an int or a numpy random generator, got {type(random_state).__name__}")


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


class KMajority:
    """K-majority clustering of binary descriptors in Hamming space.

    Lloyd-style iterations where each descriptor is assigned to the center
    at the smallest Hamming distance (popcount of the XOR, ties to the lowest
    index) and each center becomes the per-bit majority vote of its members
    (a tie gives 0; an empty cluster keeps its center), until no center
    changes or ``max_iter`` updates. Seeding is k-means++ with the Hamming
    distance. The centers are a binary visual vocabulary; :meth:`predict`
    gives visual word ids for bag-of-words histograms.

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
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        max_iter: int = 100,
        random_state: Any = None,
        init: Any = "k-means++",
        n_threads: int | None = None,
    ) -> None:
        self.n_clusters = n_clusters
        self.max_iter = max_iter
        self.random_state = random_state
        self.init = init
        self.n_threads = n_threads

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Parameters as a dict (scikit-learn convention)."""
        return {k: getattr(self, k) for k in ("n_clusters", "max_iter", "random_state", "init", "n_threads")}

    def set_params(self, **params: Any) -> "KMajority":
        """Set parameters (scikit-learn convention)."""
        for k, v in params.items():
            if k not in self.get_params():
                raise ValueError(f"Invalid parameter {k!r} for KMajority")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        return f"KMajority(n_clusters={self.n_clusters!r}, max_iter={self.max_iter!r}, random_state={self.random_state!r})"

    def _validate(self) -> None:
        for name in ("n_clusters", "max_iter"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
        if self.n_threads is not None and (not isinstance(self.n_threads, (int, np.integer)) or self.n_threads < 1):
            raise ValueError(f"n_threads: expected None or an int >= 1, got {self.n_threads!r}")

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
            If ``X`` is not 2-D, has fewer rows than ``n_clusters``, or a
            parameter is invalid.
        """
        self._validate()
        X = _check_binary(X)
        if X.shape[0] < self.n_clusters:
            raise ValueError(f"n_clusters: n_samples={X.shape[0]} should be >= n_clusters={self.n_clusters}")
        init = None
        if isinstance(self.init, str):
            if self.init != "k-means++":
                raise ValueError(f"init: expected 'k-means++' or an array of centers, got {self.init!r}")
        else:
            init = _check_binary(self.init, "init")
            if init.shape != (self.n_clusters, X.shape[1]):
                raise ValueError(f"init: expected shape ({self.n_clusters}, {X.shape[1]}), got {init.shape}")
        centers, labels, inertia, n_iter = _bovw.kmajority_fit(
            X, int(self.n_clusters), max_iter=int(self.max_iter), seed=_seed(self.random_state), init=init, n_threads=self.n_threads
        )
        self.cluster_centers_ = centers
        self.labels_ = labels
        self.inertia_ = int(inertia)
        self.n_iter_ = int(n_iter)
        self.n_features_in_ = int(X.shape[1])
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "cluster_centers_"):
            raise ValueError("This KMajority instance is not fitted yet: call fit first")

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
        ValueError
            If not fitted, or ``X`` has another number of bytes than in ``fit``.
        """
        self._check_fitted()
        X = _check_binary(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X: expected {self.n_features_in_} bytes per descriptor as in fit, got {X.shape[1]}")
        if X.shape[0] == 0:
            return np.zeros(0, dtype=np.int64)
        labels, _ = _bovw.kmajority_predict(X, self.cluster_centers_, n_threads=self.n_threads)
        return labels

    def transform(self, X: Any) -> np.ndarray:
        """Hamming distances of each descriptor to every center, shape (n_samples, n_clusters), int64."""
        self._check_fitted()
        X = _check_binary(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X: expected {self.n_features_in_} bytes per descriptor as in fit, got {X.shape[1]}")
        x = np.unpackbits(X, axis=1).astype(np.int64)
        c = np.unpackbits(self.cluster_centers_, axis=1).astype(np.int64)
        return x.sum(1)[:, None] + c.sum(1)[None, :] - 2 * x @ c.T

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        """Fit, then return ``labels_``."""
        return self.fit(X).labels_

    def score(self, X: Any, y: Any = None) -> float:
        """Opposite of the sum of Hamming distances of ``X`` to its nearest centers."""
        self._check_fitted()
        X = _check_binary(X)
        if X.shape[0] == 0:
            return 0.0
        _, dist = _bovw.kmajority_predict(X, self.cluster_centers_, n_threads=self.n_threads)
        return -float(dist.sum())

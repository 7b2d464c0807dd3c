"""Principal component analysis with scikit-learn's API and a Rust engine.

:class:`PCA` follows :class:`sklearn.decomposition.PCA` (same parameters,
attributes, solver choice and sign convention), so results compare directly.
The fit runs in Rust: for tall data, column means and the scatter matrix by
blocked matrix products (faer's) accumulated in float64, then the symmetric
eigendecomposition of the covariance (faer's Householder tridiagonalisation
and divide and conquer, as LAPACK's ``syevd`` that scikit-learn calls), of
which the leading eigenpairs are kept; otherwise a thin SVD or a randomized
SVD (Halko et al. 2011).

For Spark, the covariance is a sum over partitions:
:func:`pca_partial_sums` gives one batch's ``(count, sum, X^T X)`` in one Rust
call, the driver adds them, and :meth:`PCA.fit_partial_sums` turns the total
into a fitted model. ``PCA(mllib_compat=True)`` reproduces the output of
Spark's ``pyspark.ml.feature.PCA`` (no centring in ``transform``).
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from bovw import _bovw
from bovw._params import Constraints, NonBoolInterval, fit_context

if TYPE_CHECKING:
    from sklearn.utils import Tags

    from bovw._bovw import _PcaFit

__all__ = ["PCA", "pca_partial_sums"]


def _n_components_spec(n_components: Any) -> tuple[str, float]:
    """Translate a valid ``n_components`` (see ``PCA._parameter_constraints``)
    into the Rust (kind, value) pair."""
    if n_components is None:
        return "all", 0.0
    if isinstance(n_components, Integral):
        return "count", float(n_components)
    return "fraction", float(n_components)


def pca_partial_sums(X: Any, *, n_threads: int | None = None) -> tuple[int, np.ndarray, np.ndarray]:
    """Sufficient statistics of one batch of rows for a distributed PCA.

    One Rust call: count, column sums and the uncentred Gram matrix
    ``X.T @ X``, all in float64 (computed as mean + centred scatter, then
    uncentred, for accuracy). Statistics of several batches add
    element-wise; :meth:`PCA.fit_partial_sums` turns the total into a fit.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features), float32 or float64
        One batch (e.g. one Spark partition). Other dtypes are cast to float64.
    n_threads : int, optional
        Threads for this call (``None``: rayon's default pool). Use 1 inside
        Spark tasks.

    Returns
    -------
    count : int
    sum : ndarray of shape (n_features,), float64
    gram : ndarray of shape (n_features, n_features), float64

    Raises
    ------
    ValueError
        If X is not 2-D, or a row contains NaN or infinity (the message names it).
    """
    X = _as_float_2d(X, "X")
    return _bovw.pca_partial_sums(X, n_threads=n_threads)


def _plain_float_matrix(X: Any, *, min_samples: int) -> bool:
    """Whether X is a NumPy float32/float64 C-contiguous 2-D array with at
    least ``min_samples`` rows and one column: an input that scikit-learn's
    ``validate_data`` (with the dtypes and order PCA asks for) returns
    unchanged, so the estimator can skip it."""
    return (
        type(X) is np.ndarray
        and X.ndim == 2
        and X.dtype in (np.float32, np.float64)
        and X.flags.c_contiguous
        and X.shape[0] >= min_samples
        and X.shape[1] >= 1
    )


def _as_float_2d(X: Any, what: str) -> np.ndarray:
    arr = np.asarray(X)
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D array (n_samples, n_features), got shape {arr.shape}")
    return np.ascontiguousarray(arr)


class PCA(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Principal component analysis (scikit-learn API, Rust engine).

    Linear dimensionality reduction onto the directions of largest variance
    of the centred data, as :class:`sklearn.decomposition.PCA`.

    Parameters
    ----------
    n_components : int, float or None, default=None
        ``None``: keep ``min(n_samples, n_features)``; an int: that many;
        a float in (0, 1]: the smallest number of components whose cumulated
        explained-variance ratio is greater than the fraction (scikit-learn's
        rule, ``searchsorted(side="right") + 1``; ``1.0`` keeps all).
    whiten : bool, default=False
        Divide the projections by ``sqrt(explained_variance_)``.
    svd_solver : {"auto", "full", "covariance_eigh", "randomized"}, default="auto"
        ``"covariance_eigh"``: blocked-GEMM covariance + symmetric
        eigendecomposition, for ``n_samples >> n_features``; ``"full"``: thin
        SVD of the centred data; ``"randomized"``: randomized subspace
        iteration (Halko et al. 2011), integer ``n_components`` only.
        ``"auto"`` picks as scikit-learn 1.9 does: ``covariance_eigh`` if
        ``n_features <= 1000`` and ``n_samples >= 10 * n_features``, else
        ``full`` if ``max(shape) <= 500``, else ``randomized`` if
        ``1 <= n_components < 0.8 * min(shape)``, else ``full``.
    n_oversamples : int, default=10
        Randomized solver: extra random directions.
    iterated_power : int or "auto", default="auto"
        Randomized solver: power iterations (``"auto"``: 7 if
        ``n_components < 0.1 * min(shape)`` else 4).
    random_state : int, RandomState instance or None, default=None
        Seed of the randomized solver's Gaussian test matrix.
    mllib_compat : bool, default=False
        Reproduce Spark MLlib's PCA (``pyspark.ml.feature.PCA``,
        ``RowMatrix.computePrincipalComponentsAndExplainedVariance``):
        ``transform`` projects the *uncentred* data, ``X @ components_.T``,
        and ``inverse_transform`` adds no mean. The components (eigenvectors
        of the sample covariance) and ``explained_variance_ratio_`` (MLlib's
        ``explainedVariance``) are the same as without the flag. MLlib takes
        the signs LAPACK's SVD happens to return; bovw keeps scikit-learn's
        deterministic sign rule, so a column of MLlib's output may be the
        negation of bovw's. Cannot be combined with ``whiten``.
    n_threads : int or None, default=None
        Threads for fit and transform (``None``: all cores).

    Attributes
    ----------
    components_ : ndarray of shape (n_components_, n_features)
        Principal axes, in decreasing order of explained variance. Sign
        rule: in each row the entry of largest absolute value is positive
        (scikit-learn's ``svd_flip(u_based_decision=False)``, used by every
        solver in scikit-learn 1.9).
    explained_variance_ : ndarray of shape (n_components_,)
        Variance along each axis (denominator ``n_samples - 1``).
    explained_variance_ratio_ : ndarray of shape (n_components_,)
        Fraction of the total variance along each axis.
    singular_values_ : ndarray of shape (n_components_,)
        Singular values of the centred data.
    mean_ : ndarray of shape (n_features,)
    n_components_ : int
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Only when X has string column names.
    n_samples_ : int
    noise_variance_ : float
        Probabilistic PCA noise variance (Tipping and Bishop 1999): mean of
        the discarded eigenvalues (``full``/``covariance_eigh``), or the
        remaining variance averaged over the discarded dimensions (randomized).

    Attributes take the input dtype (float32 or float64), as in scikit-learn;
    the computation is in float64.

    Raises
    ------
    ValueError
        From ``fit``: NaN or infinity in X, fewer than 2 samples,
        ``n_components`` above ``min(n_samples, n_features)``, a fraction
        with the randomized solver, ``mllib_compat`` with ``whiten``. From
        ``transform``: a different number of features.
    sklearn.utils._param_validation.InvalidParameterError
        (a ValueError and a TypeError) From ``fit``: a parameter of the wrong
        type or range (``_parameter_constraints``: e.g. a fraction outside
        (0, 1], an unknown ``svd_solver``); the message names it.

    References
    ----------
    .. [1] Halko, Martinsson and Tropp, "Finding structure with randomness:
       Probabilistic algorithms for constructing approximate matrix
       decompositions", SIAM Review 53(2), 2011.
    .. [2] Tipping and Bishop, "Probabilistic principal component analysis",
       JRSS B 61(3), 1999.
    .. [3] scikit-learn ``sklearn/decomposition/_pca.py``; Spark
       ``mllib/linalg/distributed/RowMatrix.scala``.
    .. [4] Golub and Van Loan, "Matrix Computations", 4th ed., 2013,
       chapter 8 (Householder tridiagonalisation, divide and conquer);
       LAPACK ``dsyevd``, as implemented by the faer crate
       (``faer::linalg::evd::self_adjoint_evd``).

    Examples
    --------
    >>> import numpy as np, bovw
    >>> X = np.random.default_rng(0).normal(size=(200, 5)) * [5, 4, 3, 2, 1]
    >>> pca = bovw.PCA(n_components=0.8).fit(X)
    >>> pca.n_components_, pca.transform(X).shape
    (3, (200, 3))
    """

    # Checked in fit and fit_partial_sums (fit_context).
    _parameter_constraints: Constraints = {
        "n_components": [
            NonBoolInterval(Integral, 0, None, closed="left"),
            NonBoolInterval(Real, 0, 1, closed="right"),
            None,
        ],
        "whiten": ["boolean"],
        "svd_solver": [StrOptions({"auto", "full", "covariance_eigh", "randomized"})],
        "n_oversamples": [NonBoolInterval(Integral, 0, None, closed="left")],
        "iterated_power": [StrOptions({"auto"}), NonBoolInterval(Integral, 0, None, closed="left")],
        "random_state": ["random_state"],
        "mllib_compat": ["boolean"],
        "n_threads": [NonBoolInterval(Integral, 1, None, closed="left"), None],
    }

    # Fitted attributes (see the class docstring) and their float64 copies.
    components_: np.ndarray
    explained_variance_: np.ndarray
    explained_variance_ratio_: np.ndarray
    singular_values_: np.ndarray
    mean_: np.ndarray
    noise_variance_: np.floating
    n_components_: int
    n_samples_: int
    n_features_in_: int
    _components64: np.ndarray
    _mean64: np.ndarray
    _explained_variance64: np.ndarray

    def __init__(
        self,
        n_components: int | float | None = None,
        *,
        whiten: bool = False,
        svd_solver: str = "auto",
        n_oversamples: int = 10,
        iterated_power: int | str = "auto",
        random_state: Any = None,
        mllib_compat: bool = False,
        n_threads: int | None = None,
    ) -> None:
        self.n_components = n_components
        self.whiten = whiten
        self.svd_solver = svd_solver
        self.n_oversamples = n_oversamples
        self.iterated_power = iterated_power
        self.random_state = random_state
        self.mllib_compat = mllib_compat
        self.n_threads = n_threads

    # -- fitting -------------------------------------------------------------
    def _check_params(self) -> tuple[str, float]:
        """The check that spans two parameters (each one's type and range
        are in ``_parameter_constraints``), and the Rust ``n_components``."""
        if self.mllib_compat and self.whiten:
            raise ValueError("mllib_compat=True cannot be combined with whiten=True (MLlib does not whiten)")
        return _n_components_spec(self.n_components)

    def _set_fit(self, res: _PcaFit, dtype: np.dtype) -> None:
        self._components64 = np.ascontiguousarray(res["components"])
        self._mean64 = np.ascontiguousarray(res["mean"])
        self._explained_variance64 = res["explained_variance"]
        self.components_ = self._components64.astype(dtype, copy=False)
        self.explained_variance_ = res["explained_variance"].astype(dtype, copy=False)
        self.explained_variance_ratio_ = res["explained_variance_ratio"].astype(dtype, copy=False)
        self.singular_values_ = res["singular_values"].astype(dtype, copy=False)
        self.mean_ = self._mean64.astype(dtype, copy=False)
        self.noise_variance_ = dtype.type(res["noise_variance"])
        self.n_components_ = int(res["n_components"])
        self.n_samples_ = int(res["n_samples"])
        self._fit_svd_solver = res["solver"]

    @fit_context
    def fit(self, X: Any, y: Any = None) -> PCA:
        """Fit the model on X.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data; float32 stays float32 in the attributes, anything
            else is converted to float64.
        y : Ignored

        Returns
        -------
        self : PCA
        """
        kind, value = self._check_params()
        if _plain_float_matrix(X, min_samples=2):
            # What validate_data(reset=True) does for such an X, without its
            # ~0.15 ms of checks: record the width, forget feature names.
            self.n_features_in_ = X.shape[1]
            if hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        else:
            # Finiteness is checked in Rust, fused with the pass over X (the
            # error names the first bad row), so validate_data need not scan X.
            X = validate_data(
                self, X, dtype=[np.float64, np.float32], ensure_min_samples=2, order="C", ensure_all_finite=False
            )
        if kind == "count" and value > min(X.shape):
            raise ValueError(
                f"n_components={int(value)} must be between 0 and min(n_samples, n_features)={min(X.shape)}"
            )
        n_iter = None if self.iterated_power == "auto" else int(self.iterated_power)
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        res = _bovw.pca_fit(
            X,
            kind,
            value,
            svd_solver=self.svd_solver,
            n_oversamples=int(self.n_oversamples),
            n_iter=n_iter,
            seed=seed,
            n_threads=self.n_threads,
        )
        self._set_fit(res, X.dtype)
        return self

    def fit_transform(self, X: Any, y: Any = None) -> np.ndarray:
        """Fit on X and return its projection (see :meth:`transform`).

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_components_), X's float dtype
        """
        return self.fit(X).transform(X)

    @fit_context
    def fit_partial_sums(self, count: int, sum: Any, gram: Any) -> PCA:
        """Fit from reduced :func:`pca_partial_sums` (the distributed path).

        Uses the ``covariance_eigh`` solver: covariance
        ``(gram - count * mean mean^T) / (count - 1)`` then its
        eigendecomposition, one Rust call.

        Parameters
        ----------
        count : int
            Total number of rows.
        sum : array-like of shape (n_features,)
            Total column sums.
        gram : array-like of shape (n_features, n_features)
            Total ``X^T X``.

        Returns
        -------
        self : PCA
            With float64 attributes.

        Raises
        ------
        ValueError
            If ``count < 2``, shapes disagree, ``n_components`` is invalid or
            the sums are not finite.
        """
        kind, value = self._check_params()
        s = np.ascontiguousarray(np.asarray(sum, dtype=np.float64))
        g = np.ascontiguousarray(np.asarray(gram, dtype=np.float64))
        if s.ndim != 1 or g.shape != (s.shape[0], s.shape[0]):
            raise ValueError(f"gram: expected shape ({s.shape[0]}, {s.shape[0]}) matching sum, got {g.shape}")
        if int(count) < 2:
            raise ValueError(f"count: PCA needs at least 2 samples, got {count}")
        if not (np.isfinite(s).all() and np.isfinite(g).all()):
            raise ValueError("sum/gram contain NaN or infinity")
        res = _bovw.pca_fit_partial_sums(int(count), s, g, kind, value)
        self.n_features_in_ = s.shape[0]
        self._set_fit(res, np.dtype(np.float64))
        return self

    # -- projecting ----------------------------------------------------------
    def _scale(self) -> np.ndarray | None:
        if not self.whiten:
            return None
        scale: np.ndarray = np.maximum(np.sqrt(self._explained_variance64), np.finfo(self.components_.dtype).eps)
        return scale

    def transform(self, X: Any) -> np.ndarray:
        """Project X on the principal axes.

        ``(X - mean_) @ components_.T`` (divided by
        ``sqrt(explained_variance_)`` if ``whiten``); with ``mllib_compat``,
        ``X @ components_.T`` as Spark MLlib does.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_components_)
            float32 for float32 input, else float64.

        Raises
        ------
        ValueError
            If X has another number of features than in ``fit``, or NaN/inf.
        """
        check_is_fitted(self, "components_")
        plain = (
            _plain_float_matrix(X, min_samples=1)
            and X.shape[1] == self.n_features_in_
            and not hasattr(self, "feature_names_in_")
        )
        if not plain:  # (a plain X is what validate_data would return unchanged)
            X = validate_data(
                self, X, dtype=[np.float64, np.float32], reset=False, order="C", ensure_all_finite=False
            )  # finiteness: checked in Rust
        center = None if self.mllib_compat else self._mean64
        return _bovw.pca_transform(X, self._components64, center, self._scale(), n_threads=self.n_threads)

    def inverse_transform(self, X: Any) -> np.ndarray:
        """Map projections back to feature space.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_components_)

        Returns
        -------
        X_original : ndarray of shape (n_samples, n_features)
        """
        check_is_fitted(self, "components_")
        Y = np.asarray(X)
        if Y.dtype not in (np.float32, np.float64):
            Y = Y.astype(np.float64)
        if Y.ndim != 2 or Y.shape[1] != self.n_components_:
            raise ValueError(f"X: expected shape (n_samples, {self.n_components_}), got {Y.shape}")
        comps = self.components_
        if self.whiten:
            comps = np.sqrt(self.explained_variance_[:, None]) * comps
        out: np.ndarray = Y @ comps
        if not self.mllib_compat:
            out = out + self.mean_
        return out

    def get_covariance(self) -> np.ndarray:
        """Model covariance ``components_.T @ diag(ev - noise) @ components_ + noise * I``.

        Returns
        -------
        cov : ndarray of shape (n_features, n_features)
        """
        check_is_fitted(self, "components_")
        comps = self.components_
        ev = self.explained_variance_
        if self.whiten:
            comps = comps * np.sqrt(ev[:, None])
        diff = np.where(ev > self.noise_variance_, ev - self.noise_variance_, 0.0)
        cov: np.ndarray = (comps.T * diff) @ comps
        cov.flat[:: cov.shape[0] + 1] += self.noise_variance_
        return cov

    def get_precision(self) -> np.ndarray:
        """Inverse of :meth:`get_covariance`.

        Returns
        -------
        precision : ndarray of shape (n_features, n_features)
        """
        return np.linalg.inv(self.get_covariance())

    @property
    def _n_features_out(self) -> int:
        return int(self.components_.shape[0])

    def __sklearn_tags__(self) -> Tags:  # noqa: D105
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

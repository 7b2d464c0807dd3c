"""Gaussian mixtures with diagonal covariances, fitted by EM in Rust: the
vocabulary of Fisher vectors.

:class:`GaussianMixture` is scikit-learn's
``GaussianMixture(covariance_type="diag")`` with the E- and M-steps in
Rust: the same parameters, initialisations, stopping rule and attributes
(``weights_``, ``means_``, ``covariances_``, ``precisions_``,
``precisions_cholesky_``, ``lower_bound_``, ``lower_bounds_``, ``n_iter_``,
``converged_``) and the same methods (``predict_proba``, ``score_samples``,
``score``, ``predict``, ``sample``, ``bic``, ``aic``).

For a distributed fit (Spark), one EM iteration is
:func:`partial_stats` on every partition (one Rust call each), the sum of
the statistics, and :func:`params_from_stats`; :func:`em_from_stats` runs
that loop with scikit-learn's stopping rule, so that it gives the
in-process fit's parameters when the statistics are the same.

References
----------
.. [1] A. P. Dempster, N. M. Laird, D. B. Rubin, "Maximum likelihood from
   incomplete data via the EM algorithm", JRSS B 39(1), 1977.
.. [2] scikit-learn, ``sklearn/mixture/_gaussian_mixture.py``.
.. [3] VLFeat, ``vl/gmm.c`` (the same posteriors and log-likelihood).
"""

from __future__ import annotations

import math
import warnings
from numbers import Integral, Real
from typing import Any, Callable, Optional

import numpy as np
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from bovw import _bovw

__all__ = ["GaussianMixture", "em_from_stats", "params_from_stats", "partial_stats"]


def _eps_nk(dtype: Any) -> float:
    """scikit-learn's ``10 * eps`` added to each component's mass."""
    return 10.0 * float(np.finfo(dtype).eps)


def _mixture_arrays(gmm: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weights, means, covariances) as float64 from a fitted diagonal
    mixture (bovw's or scikit-learn's) or a tuple of arrays."""
    if isinstance(gmm, (tuple, list)):
        if len(gmm) != 3:
            raise ValueError("gmm: expected (weights, means, covariances)")
        w, m, c = gmm
    else:
        if getattr(gmm, "covariance_type", "diag") != "diag":
            raise ValueError(f"gmm: Fisher vectors need diagonal covariances, got covariance_type={gmm.covariance_type!r}")
        check_is_fitted(gmm, ["weights_", "means_", "covariances_"])
        w, m, c = gmm.weights_, gmm.means_, gmm.covariances_
    w = np.ascontiguousarray(w, dtype=np.float64)
    m = np.ascontiguousarray(m, dtype=np.float64)
    c = np.ascontiguousarray(c, dtype=np.float64)
    if m.ndim != 2 or c.shape != m.shape or w.shape != (m.shape[0],):
        raise ValueError(
            f"gmm: expected weights (K,), means (K, d) and covariances (K, d), got {w.shape}, {m.shape}, {c.shape}"
        )
    return w, m, c


def partial_stats(X: Any, weights: Any, means: Any, covariances: Any, *, n_threads: Optional[int] = None) -> tuple:
    """E-step sufficient statistics of a batch: one EM iteration's work on
    one partition.

    Summing the statistics over all partitions and calling
    :func:`params_from_stats` is one EM iteration over the whole data set.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features), float32 or float64, or \
pyarrow Array of type list<fixed_size_list<float32, n_features>>
        The batch (an Arrow descriptor column is read without copy).
    weights : array-like of shape (n_components,)
    means, covariances : array-like of shape (n_components, n_features)
        The current mixture (variances, not precisions).
    n_threads : int, optional
        Threads (all cores by default; 1 inside Spark tasks).

    Returns
    -------
    nk : ndarray of shape (n_components,), float64
        ``sum_i gamma_ik`` (posterior mass of each component).
    s1 : ndarray of shape (n_components, n_features), float64
        ``sum_i gamma_ik x_i``.
    s2 : ndarray of shape (n_components, n_features), float64
        ``sum_i gamma_ik x_i ** 2``.
    log_likelihood : float
        ``sum_i log p(x_i)`` under the current mixture.
    n_samples : int

    Raises
    ------
    ValueError
        If X has NaN or infinity, or its width is not the mixture's (both
        are named), or the mixture is invalid.
    """
    w, m, c = _mixture_arrays((weights, means, covariances))
    if type(X).__module__.startswith("pyarrow") or (hasattr(X, "__arrow_c_array__") and not isinstance(X, np.ndarray)):
        if hasattr(X, "combine_chunks"):
            X = X.combine_chunks()
        return _bovw.gmm_suff_stats_arrow(X, w, m, c, n_threads=n_threads)
    X = np.asarray(X)
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    X = np.ascontiguousarray(X)
    if X.ndim != 2:
        raise ValueError(f"X: expected shape (n_samples, n_features), got {X.shape}")
    return _bovw.gmm_suff_stats(X, w, m, c, n_threads=n_threads)


def params_from_stats(
    nk: Any,
    s1: Any,
    s2: Any,
    n_samples: int,
    *,
    reg_covar: float = 1e-6,
    eps: float = _eps_nk(np.float64),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The M-step: mixture parameters from summed statistics.

    ``nk' = nk + eps``, ``weights = nk' / sum(nk')``, ``means = s1 / nk'``,
    ``covariances = s2 / nk' - means ** 2 + reg_covar`` (scikit-learn's
    formulas; ``eps`` is ``10 * np.finfo(X.dtype).eps`` there).

    Returns
    -------
    weights : ndarray of shape (n_components,), float64
    means, covariances : ndarray of shape (n_components, n_features), float64

    Raises
    ------
    ValueError
        If a variance is not positive (a collapsed component: the message
        names it; increase ``reg_covar``), or the shapes disagree.
    """
    return _bovw.gmm_params_from_stats(
        np.ascontiguousarray(nk, dtype=np.float64),
        np.ascontiguousarray(s1, dtype=np.float64),
        np.ascontiguousarray(s2, dtype=np.float64),
        int(n_samples),
        reg_covar=float(reg_covar),
        eps_nk=float(eps),
        weights="sum",
    )


def em_from_stats(
    stats: Callable[[np.ndarray, np.ndarray, np.ndarray], tuple],
    weights: Any,
    means: Any,
    covariances: Any,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    eps: float = _eps_nk(np.float64),
    start_lower_bound: float = -math.inf,
) -> dict:
    """EM driven by a statistics function, scikit-learn's loop: for a
    distributed fit.

    Each iteration calls ``stats(weights, means, covariances)``, which must
    return the summed :func:`partial_stats` of the whole data set
    ``(nk, s1, s2, log_likelihood, n_samples)``, then the M-step
    (:func:`params_from_stats`). It stops after ``max_iter`` iterations or
    when the lower bound (mean log-likelihood under the parameters the
    iteration started from) changes by less than ``tol``.

    Returns
    -------
    dict
        ``weights``, ``means``, ``covariances`` (float64), ``lower_bound``,
        ``lower_bounds`` (list), ``n_iter`` and ``converged``.

    Raises
    ------
    ValueError
        If a component collapses (see :func:`params_from_stats`) or the data
        set is empty.
    """
    w, m, c = _mixture_arrays((weights, means, covariances))
    lower_bound = start_lower_bound
    lower_bounds: list[float] = []
    converged = False
    n_iter = 0
    for it in range(1, int(max_iter) + 1):
        n_iter = it
        prev = lower_bound
        nk, s1, s2, ll, n = stats(w, m, c)
        if n == 0:
            raise ValueError("X has no samples")
        w, m, c = params_from_stats(nk, s1, s2, n, reg_covar=reg_covar, eps=eps)
        lower_bound = float(ll) / n
        lower_bounds.append(lower_bound)
        if abs(lower_bound - prev) < tol:
            converged = True
            break
    return {
        "weights": w,
        "means": m,
        "covariances": c,
        "lower_bound": lower_bound,
        "lower_bounds": lower_bounds,
        "n_iter": n_iter,
        "converged": converged,
    }


class GaussianMixture(DensityMixin, BaseEstimator):
    """Gaussian mixture with diagonal covariances, scikit-learn's
    ``GaussianMixture(covariance_type="diag")`` with EM in Rust.

    Parameters
    ----------
    n_components : int, default=1
        Number of mixture components.
    covariance_type : {"diag"}, default="diag"
        Only diagonal covariances (what Fisher vectors use); for the other
        types use scikit-learn's class.
    tol : float, default=1e-3
        EM stops when the lower bound (mean log-likelihood per sample)
        changes by less than ``tol``.
    reg_covar : float, default=1e-6
        Added to every variance: this regularisation is what keeps a
        collapsing component (on one point, or on points equal in a feature)
        away from zero variance. With ``reg_covar=0`` a collapse raises
        ValueError naming the component.
    max_iter : int, default=100
        EM iterations per initialisation.
    n_init : int, default=1
        Initialisations; the fit with the highest lower bound is kept.
    init_params : {"kmeans", "k-means++", "random", "random_from_data"}, default="kmeans"
        Responsibilities the initial parameters are computed from:
        ``"kmeans"``: labels of :class:`bovw.KMeans` (one run);
        ``"k-means++"``: one-hot on :func:`bovw.cluster.kmeans_plusplus`
        seeds (initial variances ``reg_covar``, as in scikit-learn);
        ``"random"``: uniform random responsibilities;
        ``"random_from_data"``: one-hot on random samples. ``"random"`` and
        ``"random_from_data"`` draw from ``random_state`` exactly as
        scikit-learn does, so they give scikit-learn's initial parameters;
        the K-Means ones use bovw's K-Means and differ from scikit-learn's.
    weights_init : array-like of shape (n_components,), optional
        Initial weights (replace those from ``init_params``).
    means_init : array-like of shape (n_components, n_features), optional
    precisions_init : array-like of shape (n_components, n_features), optional
        Initial precisions (inverse variances).
    random_state : int, RandomState instance or None, default=None
    warm_start : bool, default=False
        Start from the previous fit's parameters (one initialisation).
    verbose : int, default=0
        Print one line per initialisation.
    verbose_interval : int, default=10
        Accepted for compatibility.
    n_threads : int or None, default=None
        Threads (all cores by default). Results do not depend on it.

    Attributes
    ----------
    weights_ : ndarray of shape (n_components,), float64
    means_ : ndarray of shape (n_components, n_features), float64
    covariances_ : ndarray of shape (n_components, n_features), float64
        Variances of each component.
    precisions_ : ndarray of shape (n_components, n_features), float64
        ``1 / covariances_``.
    precisions_cholesky_ : ndarray of shape (n_components, n_features), float64
        ``1 / sqrt(covariances_)``.
    converged_ : bool
    n_iter_ : int
    lower_bound_ : float
        Mean log-likelihood per sample at the start of the last iteration
        of the best initialisation (scikit-learn's definition).
    lower_bounds_ : list of float
        The lower bound of each iteration of the best initialisation.
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Set when X has string column names.

    Notes
    -----
    Parameters are float64 whatever the dtype of X (scikit-learn keeps X's
    dtype; with float64 X the two agree to rounding). Posteriors: every
    component within 70 nats of a sample's best is computed exactly in
    float64; the others (posterior below ``4e-31``) are left out of the
    statistics, which changes nothing at float64 precision. A component
    that receives no mass keeps a weight of about ``10 eps / n``, its mean
    goes to ~0 and its variance to ``reg_covar`` (scikit-learn's behaviour).
    Statistics are summed in float64 over fixed parts of the data, so the
    fit does not depend on ``n_threads``.

    References
    ----------
    .. [1] A. P. Dempster, N. M. Laird, D. B. Rubin, "Maximum likelihood from
       incomplete data via the EM algorithm", JRSS B 39(1), 1977.
    .. [2] scikit-learn, ``sklearn/mixture/_gaussian_mixture.py``.

    Examples
    --------
    >>> import numpy as np, bovw
    >>> X = np.array([[1, 2], [1, 4], [1, 0], [10, 2], [10, 4], [10, 0]], dtype=float)
    >>> gm = bovw.GaussianMixture(n_components=2, random_state=0).fit(X)
    >>> sorted(gm.means_[:, 0].round(3).tolist())
    [1.0, 10.0]
    >>> gm.predict([[0, 0], [12, 3]]).tolist() == [gm.predict(X[:1])[0], gm.predict(X[3:4])[0]]
    True
    """

    weights_: np.ndarray
    means_: np.ndarray
    covariances_: np.ndarray
    precisions_: np.ndarray
    precisions_cholesky_: np.ndarray
    converged_: bool
    n_iter_: int
    lower_bound_: float
    lower_bounds_: list[float]

    _parameter_constraints: dict = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "covariance_type": [StrOptions({"diag"})],
        "tol": [Interval(Real, 0.0, None, closed="left")],
        "reg_covar": [Interval(Real, 0.0, None, closed="left")],
        "max_iter": [Interval(Integral, 0, None, closed="left")],
        "n_init": [Interval(Integral, 1, None, closed="left")],
        "init_params": [StrOptions({"kmeans", "k-means++", "random", "random_from_data"})],
        "weights_init": ["array-like", None],
        "means_init": ["array-like", None],
        "precisions_init": ["array-like", None],
        "random_state": ["random_state"],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
        "verbose_interval": [Interval(Integral, 1, None, closed="left")],
        "n_threads": [Interval(Integral, 1, None, closed="left"), None],
    }

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: str = "diag",
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: str = "kmeans",
        weights_init: Any = None,
        means_init: Any = None,
        precisions_init: Any = None,
        random_state: Any = None,
        warm_start: bool = False,
        verbose: int = 0,
        verbose_interval: int = 10,
        n_threads: Optional[int] = None,
    ) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.n_threads = n_threads

    # -- checks and initialisation ------------------------------------------------

    def _check_inits(self, n_features: int) -> tuple:
        k = self.n_components
        w = m = p = None
        if self.weights_init is not None:
            w = np.asarray(self.weights_init, dtype=np.float64)
            if w.shape != (k,):
                raise ValueError(f"weights_init: expected shape ({k},), got {w.shape}")
            if np.any(w < 0) or np.any(w > 1) or not np.all(np.isfinite(w)):
                raise ValueError(f"weights_init: must be in [0, 1], got min {w.min()}, max {w.max()}")
            if not np.allclose(np.abs(1.0 - w.sum()), 0.0):
                raise ValueError(f"weights_init: must sum to 1, got {w.sum():.5f}")
        if self.means_init is not None:
            m = np.asarray(self.means_init, dtype=np.float64)
            if m.shape != (k, n_features):
                raise ValueError(f"means_init: expected shape ({k}, {n_features}), got {m.shape}")
            if not np.all(np.isfinite(m)):
                raise ValueError("means_init: contains NaN or infinity")
        if self.precisions_init is not None:
            p = np.asarray(self.precisions_init, dtype=np.float64)
            if p.shape != (k, n_features):
                raise ValueError(f"precisions_init: expected shape ({k}, {n_features}), got {p.shape}")
            if np.any(p <= 0) or not np.all(np.isfinite(p)):
                raise ValueError("precisions_init: must be positive and finite")
        return w, m, p

    def _initial_parameters(self, X: np.ndarray, random_state: np.random.RandomState, inits: tuple) -> tuple:
        w0, m0, p0 = inits
        n, k = X.shape[0], self.n_components
        eps = _eps_nk(X.dtype)
        if w0 is not None and m0 is not None and p0 is not None:
            return w0.copy(), m0.copy(), 1.0 / p0
        if self.init_params == "kmeans":
            from bovw.cluster import KMeans

            km_labels = KMeans(n_clusters=k, n_init=1, random_state=random_state, n_threads=self.n_threads).fit(X).labels_
            stats = _bovw.gmm_stats_from_labels(X, km_labels.astype(np.int64), k, n_threads=self.n_threads)
        elif self.init_params == "k-means++":
            from bovw.cluster import kmeans_plusplus

            _, seeds = kmeans_plusplus(X, k, random_state=random_state, n_threads=self.n_threads)
            one_hot = np.full(n, -1, dtype=np.int64)
            one_hot[np.asarray(seeds)] = np.arange(k)
            stats = _bovw.gmm_stats_from_labels(X, one_hot, k, n_threads=self.n_threads)
        elif self.init_params == "random":
            resp = random_state.uniform(size=(n, k)).astype(X.dtype)
            resp /= resp.sum(axis=1)[:, np.newaxis]
            stats = _bovw.gmm_stats_from_resp(X, np.ascontiguousarray(resp, dtype=np.float64), n_threads=self.n_threads)
        else:  # random_from_data
            rows = random_state.choice(n, size=k, replace=False)
            picked = np.full(n, -1, dtype=np.int64)
            picked[rows] = np.arange(k)
            stats = _bovw.gmm_stats_from_labels(X, picked, k, n_threads=self.n_threads)
        nk, s1, s2, _, n_samples = stats
        w, m, c = _bovw.gmm_params_from_stats(
            nk, s1, s2, n_samples, reg_covar=float(self.reg_covar), eps_nk=eps, weights="samples"
        )
        if w0 is not None:
            w = w0.copy()
        if m0 is not None:
            m = m0.copy()
        if p0 is not None:
            c = 1.0 / p0
        return w, m, c

    # -- fitting --------------------------------------------------------------

    def fit(self, X: Any, y: Any = None) -> "GaussianMixture":
        """Estimate the parameters with EM (``n_init`` initialisations).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            float32 and float64 arrays are used in place; other numeric
            types are converted to float64.
        y : ignored

        Returns
        -------
        self : GaussianMixture

        Raises
        ------
        ValueError
            If X has NaN or infinity, fewer than 2 samples or fewer samples
            than components; a parameter is out of range (named); an initial
            array has the wrong shape; or a component collapses with
            ``reg_covar=0``.
        """
        self._fit(self._validated(X))
        return self

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        """Fit and return the most probable component of each sample.

        Returns
        -------
        labels : ndarray of shape (n_samples,), int64
        """
        X = self._validated(X)
        self._fit(X)
        return self._predict(X)

    def _validated(self, X: Any) -> np.ndarray:
        """Check the parameters and the training data."""
        self._validate_params()
        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2, order="C")
        if X.shape[0] < self.n_components:
            raise ValueError(
                f"Expected n_samples >= n_components but got n_components = {self.n_components}, "
                f"n_samples = {X.shape[0]}"
            )
        checked: np.ndarray = X
        return checked

    def _fit(self, X: np.ndarray) -> None:
        """EM on checked data (``fit`` skips the final E-step that
        ``fit_predict`` needs for its labels)."""
        inits = self._check_inits(X.shape[1])
        do_init = not (self.warm_start and hasattr(self, "converged_"))
        n_init = self.n_init if do_init else 1
        random_state = check_random_state(self.random_state)
        max_lower_bound = -np.inf
        best: Optional[tuple[np.ndarray, np.ndarray, np.ndarray, float, list[float], int]] = None
        converged_best = False
        for init in range(n_init):
            if do_init:
                w, m, c = self._initial_parameters(X, random_state, inits)
                start = None
            else:
                w, m, c = self.weights_, self.means_, self.covariances_
                start = float(self.lower_bound_)
            if self.max_iter == 0:
                best = (w, m, c, -np.inf, [], 0)
                continue
            w, m, c, lb, bounds, n_iter, converged = _bovw.gmm_fit_em(
                X,
                np.ascontiguousarray(w, dtype=np.float64),
                np.ascontiguousarray(m, dtype=np.float64),
                np.ascontiguousarray(c, dtype=np.float64),
                max_iter=int(self.max_iter),
                tol=float(self.tol),
                reg_covar=float(self.reg_covar),
                start_lower_bound=start,
                n_threads=self.n_threads,
            )
            if self.verbose:
                print(f"Initialization {init}: {n_iter} iterations, lower bound {lb:.5f}, converged {converged}")
            if lb > max_lower_bound or max_lower_bound == -np.inf:
                max_lower_bound = lb
                best = (w, m, c, lb, [float(b) for b in bounds], n_iter)
                converged_best = bool(converged)
        assert best is not None
        if not converged_best and self.max_iter > 0:
            warnings.warn(
                "Best performing initialization did not converge. Try different init parameters, "
                "or increase max_iter, tol, or check for degenerate data.",
                ConvergenceWarning,
                stacklevel=2,
            )
        w, m, c, _, best_bounds, best_iter = best
        self._set(w, m, c)
        self.converged_ = converged_best
        self.n_iter_ = int(best_iter)
        self.lower_bound_ = float(max_lower_bound)
        self.lower_bounds_ = best_bounds

    def _set(self, w: np.ndarray, m: np.ndarray, c: np.ndarray) -> None:
        self.weights_ = np.asarray(w, dtype=np.float64)
        self.means_ = np.asarray(m, dtype=np.float64)
        self.covariances_ = np.asarray(c, dtype=np.float64)
        self.precisions_ = 1.0 / self.covariances_
        self.precisions_cholesky_ = 1.0 / np.sqrt(self.covariances_)

    # -- inference ------------------------------------------------------------

    def _params(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (
            np.ascontiguousarray(self.weights_, dtype=np.float64),
            np.ascontiguousarray(self.means_, dtype=np.float64),
            np.ascontiguousarray(self.covariances_, dtype=np.float64),
        )

    def _check_X(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        checked: np.ndarray = validate_data(self, X, reset=False, dtype=[np.float64, np.float32], order="C")
        return checked

    def _predict(self, X: np.ndarray) -> np.ndarray:
        return _bovw.gmm_predict(X, *self._params(), n_threads=self.n_threads)

    def score_samples(self, X: Any) -> np.ndarray:
        """Log-likelihood of each sample, ``log p(x)``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        log_prob : ndarray of shape (n_samples,), float64

        Raises
        ------
        ValueError
            If X has NaN or infinity or the wrong number of features.
        """
        X = self._check_X(X)
        return _bovw.gmm_log_prob(X, *self._params(), resp=False, n_threads=self.n_threads)[0]

    def score(self, X: Any, y: Any = None) -> float:
        """Mean log-likelihood per sample of X."""
        return float(np.mean(self.score_samples(X)))

    def predict(self, X: Any) -> np.ndarray:
        """Most probable component of each sample (ties to the lowest index).

        Returns
        -------
        labels : ndarray of shape (n_samples,), int64
        """
        X = self._check_X(X)
        return self._predict(X)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Posterior probability of each component for each sample.

        Returns
        -------
        resp : ndarray of shape (n_samples, n_components), float64
            Exact to float64 rounding for every component within 70 nats of
            the best; the others (below ``4e-31``) from a float32 estimate.
        """
        X = self._check_X(X)
        resp = _bovw.gmm_log_prob(X, *self._params(), resp=True, n_threads=self.n_threads)[1]
        assert resp is not None
        return resp

    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Draw samples from the fitted mixture (scikit-learn's procedure:
        component counts from a multinomial, then Gaussian draws).

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        y : ndarray of shape (n_samples,), int
            Component of each sample.
        """
        check_is_fitted(self)
        if n_samples < 1:
            raise ValueError(f"Invalid value for 'n_samples': {n_samples}. The sampling requires at least one sample.")
        rng = check_random_state(self.random_state)
        counts = rng.multinomial(n_samples, self.weights_)
        X = np.vstack(
            [mean + rng.standard_normal(size=(cnt, self.means_.shape[1])) * np.sqrt(cov)
             for mean, cov, cnt in zip(self.means_, self.covariances_, counts)]
        )
        y = np.concatenate([np.full(cnt, j, dtype=int) for j, cnt in enumerate(counts)])
        return X, y

    def _n_parameters(self) -> int:
        k, d = self.means_.shape
        return int(2 * k * d + k - 1)

    def bic(self, X: Any) -> float:
        """Bayesian information criterion on X (lower is better)."""
        X = self._check_X(X)
        return float(-2 * self.score(X) * X.shape[0] + self._n_parameters() * np.log(X.shape[0]))

    def aic(self, X: Any) -> float:
        """Akaike information criterion on X (lower is better)."""
        X = self._check_X(X)
        return float(-2 * self.score(X) * X.shape[0] + 2 * self._n_parameters())

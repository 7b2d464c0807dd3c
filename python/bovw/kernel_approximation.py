"""Feature maps for linear classifiers on histograms and encodings, in Rust.

- :class:`AdditiveChi2Sampler`: the additive χ² kernel map of Vedaldi and
  Zisserman, a drop-in for scikit-learn's class (same parameters, output
  layout and feature names);
- :class:`Hellinger`: the explicit map of the Hellinger (Bhattacharyya)
  kernel, the signed square root of L1-normalised rows;
- :class:`PowerNormalizer`: ``sign(z) |z| ** alpha`` then L2 (or L1) rows,
  the normalisation of "improved" Fisher vectors and VLAD.

Each is a stateless scikit-learn transformer (``fit`` only checks X) that
keeps float32 input in float32; the maps are computed in float64.

References
----------
.. [1] A. Vedaldi and A. Zisserman, "Efficient additive kernels via explicit
   feature maps", IEEE TPAMI 34(3), 2012.
.. [2] F. Perronnin, J. Sánchez, T. Mensink, "Improving the Fisher kernel for
   large-scale image classification", ECCV 2010.
.. [3] scikit-learn, ``sklearn/kernel_approximation.py``.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any, Optional

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import Tags
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import _check_feature_names_in, check_is_fitted, validate_data

from bovw import _bovw

__all__ = ["AdditiveChi2Sampler", "Hellinger", "PowerNormalizer", "chi2_map", "power_normalize"]


def _float_array(X: np.ndarray) -> np.ndarray:
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    return np.ascontiguousarray(X)


def chi2_map(X: Any, sample_steps: int = 2, sample_interval: Optional[float] = None, *, n_threads: Optional[int] = None) -> np.ndarray:
    """The additive χ² kernel map of a dense non-negative array.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features), values >= 0
    sample_steps : int, default=2
        ``s``: the output has ``2 s - 1`` values per feature.
    sample_interval : float, optional
        Sampling period ``L``; default 0.8, 0.5, 0.4 for ``s`` = 1, 2, 3.
    n_threads : int, optional

    Returns
    -------
    X_new : ndarray of shape (n_samples, n_features * (2 * sample_steps - 1))
        float32 for float32 input, else float64. Blocks: ``sqrt(x L)`` for
        every feature, then ``cos`` and ``sin`` of each step ``j``:
        ``sqrt(2 x L / cosh(pi j L)) * cos(j L log x)`` (0 where x is 0).

    Raises
    ------
    ValueError
        A negative or non-finite value (its row and column are named), or
        ``sample_steps > 3`` without ``sample_interval``.
    """
    X = _float_array(np.asarray(X))
    if X.ndim != 2:
        raise ValueError(f"X: expected shape (n_samples, n_features), got {X.shape}")
    out: np.ndarray = _bovw.chi2_map(X, sample_steps=int(sample_steps), sample_interval=sample_interval, n_threads=n_threads)
    return out


def power_normalize(
    X: Any,
    alpha: float = 0.5,
    *,
    pre_norm: Optional[str] = None,
    norm: Optional[str] = "l2",
    n_threads: Optional[int] = None,
) -> np.ndarray:
    """``sign(z) |z| ** alpha`` of every value, between optional row norms.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
    alpha : float, default=0.5
        The power (0.5: signed square root).
    pre_norm, norm : {None, "l1", "l2"}
        Row normalisation before and after the power (rows of zeros stay zero).
    n_threads : int, optional

    Returns
    -------
    X_new : ndarray of X's shape, float32 for float32 input, else float64

    Raises
    ------
    ValueError
        NaN or infinity (the row is named), ``alpha <= 0``, an unknown norm.
    """
    X = _float_array(np.asarray(X))
    if X.ndim != 2:
        raise ValueError(f"X: expected shape (n_samples, n_features), got {X.shape}")
    out: np.ndarray = _bovw.power_normalize(X, alpha=float(alpha), pre_norm=pre_norm, norm=norm, n_threads=n_threads)
    return out


class _StatelessMap(TransformerMixin, BaseEstimator):
    """Shared fit/tags of the stateless maps."""

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        if tags.transformer_tags is not None:
            tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    def _validate(self, X: Any, reset: bool) -> np.ndarray:
        checked: np.ndarray = validate_data(self, X, reset=reset, dtype=[np.float64, np.float32], order="C")
        return checked

    def _validate_light(self, X: Any) -> np.ndarray:
        """For transform: shape and dtype only; the Rust kernel checks the
        values (finite, and for the chi2 map >= 0) in the same pass, naming
        the row and column."""
        checked: np.ndarray = validate_data(
            self, X, reset=False, dtype=[np.float64, np.float32], order="C", ensure_all_finite=False
        )
        return checked

    def fit(self, X: Any, y: Any = None) -> Any:
        """Check X and the parameters (nothing is learnt).

        Returns
        -------
        self
        """
        self._validate_params()
        self._validate(X, reset=True)
        return self


class AdditiveChi2Sampler(_StatelessMap):
    """Approximate feature map of the additive χ² kernel, scikit-learn's
    ``AdditiveChi2Sampler`` with the map in Rust.

    For histograms (non-negative), ``k(x, y) = sum_t 2 x_t y_t / (x_t + y_t)``
    is approximated by a dot product of the maps.

    Parameters
    ----------
    sample_steps : int, default=2
        Sampling points: ``2 * sample_steps - 1`` output values per feature.
    sample_interval : float, default=None
        Sampling period; if None, 0.8, 0.5 or 0.4 for ``sample_steps`` 1, 2
        or 3 (other ``sample_steps`` need it).
    n_threads : int or None, default=None
        Threads for dense input (all cores by default).

    Attributes
    ----------
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Set when X has string column names.

    Notes
    -----
    Dense arrays are mapped in one parallel pass in Rust (float64
    arithmetic; float32 input gives float32 output). Sparse CSR input is
    handed to scikit-learn's implementation. Integer input is mapped in
    float64 (scikit-learn writes the map of a dense integer array into an
    integer array, truncating it). The output layout is
    scikit-learn's: the ``sqrt`` block of all features, then the ``cos 1``,
    ``sin 1``, ``cos 2``, ... blocks.

    References
    ----------
    .. [1] A. Vedaldi and A. Zisserman, "Efficient additive kernels via
       explicit feature maps", IEEE TPAMI 34(3), 2012.

    Examples
    --------
    >>> import numpy as np, bovw
    >>> X = np.array([[0.0, 1.0], [0.25, 0.5]])
    >>> bovw.AdditiveChi2Sampler(sample_steps=1).fit_transform(X).round(4).tolist()
    [[0.0, 0.8944], [0.4472, 0.6325]]
    """

    _parameter_constraints: dict = {
        "sample_steps": [Interval(Integral, 1, None, closed="left")],
        "sample_interval": [Interval(Real, 0, None, closed="left"), None],
        "n_threads": [Interval(Integral, 1, None, closed="left"), None],
    }

    def __init__(self, *, sample_steps: int = 2, sample_interval: Optional[float] = None, n_threads: Optional[int] = None) -> None:
        self.sample_steps = sample_steps
        self.sample_interval = sample_interval
        self.n_threads = n_threads

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        tags.input_tags.sparse = True
        return tags

    def _validate(self, X: Any, reset: bool) -> Any:
        X = validate_data(self, X, reset=reset, accept_sparse="csr", ensure_non_negative=True)
        if self.sample_interval is None and self.sample_steps not in (1, 2, 3):
            raise ValueError("If sample_steps is not in [1, 2, 3], you need to provide sample_interval")
        return X

    def transform(self, X: Any) -> Any:
        """Apply the approximate feature map to X.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Non-negative values.

        Returns
        -------
        X_new : ndarray or sparse matrix of shape (n_samples, n_features * (2 * sample_steps - 1))
            float32 for float32 input, else float64 (CSR for CSR input).

        Raises
        ------
        ValueError
            Negative values, NaN or infinity, or ``sample_steps > 3`` without
            ``sample_interval``.
        """
        self._validate_params()
        if sp.issparse(X):
            X = self._validate(X, reset=False)
            from sklearn.kernel_approximation import AdditiveChi2Sampler as _Sk

            return _Sk(sample_steps=self.sample_steps, sample_interval=self.sample_interval).fit(X).transform(X)
        if self.sample_interval is None and self.sample_steps not in (1, 2, 3):
            raise ValueError("If sample_steps is not in [1, 2, 3], you need to provide sample_interval")
        X = validate_data(self, X, reset=False, accept_sparse="csr", order="C", ensure_all_finite=False)
        if not sp.issparse(X) and X.dtype.kind not in "fiub":
            raise ValueError(f"X: expected numbers, got dtype {X.dtype}")
        return chi2_map(X, self.sample_steps, self.sample_interval, n_threads=self.n_threads)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Output feature names (scikit-learn's: ``additivechi2sampler_x0_sqrt``,
        then ``..._cos1``, ``..._sin1`` per step).

        Returns
        -------
        feature_names_out : ndarray of str objects
        """
        check_is_fitted(self, attributes="n_features_in_")
        input_features = _check_feature_names_in(self, input_features, generate_names=True)
        est_name = self.__class__.__name__.lower()
        names = [f"{est_name}_{name}_sqrt" for name in input_features]
        for j in range(1, self.sample_steps):
            names += [f"{est_name}_{name}_cos{j}" for name in input_features]
            names += [f"{est_name}_{name}_sin{j}" for name in input_features]
        return np.asarray(names, dtype=object)


class PowerNormalizer(_StatelessMap):
    """Signed power normalisation then row normalisation:
    ``z -> sign(z) |z| ** alpha``, rows divided by their L2 (or L1) norm.

    With ``alpha=0.5`` and ``norm="l2"`` this is the normalisation of the
    "improved" Fisher vector (Perronnin et al.) and of VLAD's signed square
    root variant.

    Parameters
    ----------
    alpha : float, default=0.5
        The power, > 0.
    norm : {"l2", "l1"} or None, default="l2"
        Row normalisation after the power (rows of zeros stay zero).
    n_threads : int or None, default=None

    Attributes
    ----------
    n_features_in_ : int

    References
    ----------
    .. [1] F. Perronnin, J. Sánchez, T. Mensink, "Improving the Fisher kernel
       for large-scale image classification", ECCV 2010.
    """

    _parameter_constraints: dict = {
        "alpha": [Interval(Real, 0, None, closed="neither")],
        "norm": [StrOptions({"l1", "l2"}), None],
        "n_threads": [Interval(Integral, 1, None, closed="left"), None],
    }

    def __init__(self, alpha: float = 0.5, *, norm: Optional[str] = "l2", n_threads: Optional[int] = None) -> None:
        self.alpha = alpha
        self.norm = norm
        self.n_threads = n_threads

    def transform(self, X: Any) -> np.ndarray:
        """Normalise X.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_features), X's float dtype

        Raises
        ------
        ValueError
            NaN or infinity (the row is named).
        """
        self._validate_params()
        X = self._validate_light(X)
        return power_normalize(X, self.alpha, norm=self.norm, n_threads=self.n_threads)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """The input feature names (the map keeps one value per feature)."""
        check_is_fitted(self, attributes="n_features_in_")
        names: np.ndarray = _check_feature_names_in(self, input_features)
        return names


class Hellinger(_StatelessMap):
    """Explicit map of the Hellinger (Bhattacharyya) kernel:
    ``x -> sign(x) sqrt(|x| / ||x||_1)``.

    On histograms, ``<map(x), map(y)> = sum_t sqrt(x_t y_t) / sqrt(|x|_1 |y|_1)``,
    the Hellinger kernel ("RootSIFT" for descriptors).

    Parameters
    ----------
    pre_norm : {"l1", "l2"} or None, default="l1"
        Row normalisation before the square root (None: square root only).
    n_threads : int or None, default=None

    Attributes
    ----------
    n_features_in_ : int

    References
    ----------
    .. [1] A. Vedaldi and A. Zisserman, "Efficient additive kernels via
       explicit feature maps", IEEE TPAMI 34(3), 2012.
    .. [2] R. Arandjelović and A. Zisserman, "Three things everyone should
       know to improve object retrieval", CVPR 2012.
    """

    _parameter_constraints: dict = {
        "pre_norm": [StrOptions({"l1", "l2"}), None],
        "n_threads": [Interval(Integral, 1, None, closed="left"), None],
    }

    def __init__(self, *, pre_norm: Optional[str] = "l1", n_threads: Optional[int] = None) -> None:
        self.pre_norm = pre_norm
        self.n_threads = n_threads

    def transform(self, X: Any) -> np.ndarray:
        """Map X.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_features), X's float dtype

        Raises
        ------
        ValueError
            NaN or infinity (the row is named).
        """
        self._validate_params()
        X = self._validate_light(X)
        return power_normalize(X, 0.5, pre_norm=self.pre_norm, norm=None, n_threads=self.n_threads)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """The input feature names (the map keeps one value per feature)."""
        check_is_fitted(self, attributes="n_features_in_")
        names: np.ndarray = _check_feature_names_in(self, input_features)
        return names

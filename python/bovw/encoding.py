"""Encoders: from each image's local descriptors to one vector, in Rust.

- :class:`VLAD`: vectors of locally aggregated descriptors (Jégou et al.),
  with VLFeat's normalisations: intra-normalisation (Arandjelović and
  Zisserman), signed square root, mass normalisation, L2; hard or k-nearest
  soft assignment;
- :class:`FisherVector`: Fisher vectors of a diagonal Gaussian mixture
  (Perronnin et al.), "improved" by default (signed square root + L2);
- :class:`bovw.BagOfWords` (in :mod:`bovw.histogram`): histograms of visual
  words, with the same spatial-pyramid and soft-assignment options.

All three take the same spatial pyramid options: ``spatial_pyramid``, the
grids (``(1, 2, 4)``: 1x1, 2x2 and 4x4 cells, Lazebnik et al.), computed
from the keypoint positions and image sizes (a point on a cell boundary goes
to the cell on its right / below; see :func:`pyramid_cells`), and
``pyramid_weights`` (``"uniform"`` or ``"lazebnik"``).

The encoder interface
---------------------
Every encoder is a scikit-learn transformer with one interface, so that one
job code path (in-process or Spark ``mapInArrow``) runs any of them:

``fit(X, y=None, offsets=None)``
    Learn what the encoder needs from descriptors: ``X`` is a ``(n, d)``
    sample of descriptors, or any image batch below (flattened). A given,
    already fitted vocabulary or mixture is only checked.
``encode(X, offsets, keypoints_xy=None, image_sizes=None)``
    ``(n_images, n_features_out_)`` float32, one row per image, zeros for
    images without descriptors (rows are never dropped, and no NaN is
    produced).
``transform(X, offsets=None, keypoints=None, image_sizes=None)``
    The same, for every batch form: a list of per-image ``(n_i, d)``
    arrays, a flat ``(N, d)`` array with ``offsets``, an Arrow
    ``list<fixed_size_list<float32, d>>`` column, or a pyarrow RecordBatch /
    Table with the columns of :func:`bovw.extract_descriptors`
    (``descriptors``, ``keypoints``, ``image_width``, ``image_height``),
    read without copying.
``transform_arrow(X, ..., kind="fixed_size_list")``
    The same as an Arrow column (see :func:`bovw.histograms_to_arrow`), for
    ``mapInArrow``.
``n_features_out_`` and ``get_feature_names_out()``
    The output width and names (``"vlad0"``, ``"vlad1"``, ...).

Descriptors whose width differs from the vocabulary's (mixture's) raise
ValueError naming both widths; NaN or infinite descriptors raise ValueError
naming the row.

References
----------
.. [1] H. Jégou, M. Douze, C. Schmid, P. Pérez, "Aggregating local
   descriptors into a compact image representation", CVPR 2010.
.. [2] R. Arandjelović and A. Zisserman, "All about VLAD", CVPR 2013.
.. [3] F. Perronnin, J. Sánchez, T. Mensink, "Improving the Fisher kernel for
   large-scale image classification", ECCV 2010.
.. [4] S. Lazebnik, C. Schmid, J. Ponce, "Beyond bags of features: spatial
   pyramid matching for recognizing natural scene categories", CVPR 2006.
.. [5] J. C. van Gemert et al., "Visual word ambiguity", IEEE TPAMI 32(7), 2010.
.. [6] VLFeat, ``vl/vlad.c``, ``vl/fisher.c``, ``apps/recognition/encodeImage.m``.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin, clone
from sklearn.utils import Tags
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from bovw import _bovw
from bovw._batch import ImageBatch, flat_descriptors, iter_batches

__all__ = ["FisherVector", "VLAD", "pyramid_cells", "soft_assign"]


def _check_pyramid(spatial_pyramid: Any, pyramid_weights: str) -> Optional[list[int]]:
    if spatial_pyramid is None:
        return None
    try:
        grids = [int(g) for g in spatial_pyramid]
    except TypeError as e:
        raise ValueError(f"spatial_pyramid: expected None or a sequence of grid sizes such as (1, 2, 4), got {spatial_pyramid!r}") from e
    if not grids or any(g < 1 for g in grids) or any(g != s for g, s in zip(grids, spatial_pyramid)):
        raise ValueError(f"spatial_pyramid: expected grid sizes >= 1 such as (1, 2, 4), got {spatial_pyramid!r}")
    if pyramid_weights == "lazebnik" and (any(g & (g - 1) for g in grids) or len(set(grids)) != len(grids)):
        raise ValueError(f"spatial_pyramid: Lazebnik weights need distinct powers of two, got {spatial_pyramid!r}")
    return grids


def n_cells(spatial_pyramid: Any) -> int:
    """Number of cells of a pyramid (1 without one)."""
    return 1 if spatial_pyramid is None else int(sum(int(g) ** 2 for g in spatial_pyramid))


def pyramid_cells(x: Any, y: Any, width: Any, height: Any, grid: int) -> np.ndarray:
    """Cell of each keypoint in a ``grid x grid`` division of its image (the
    rule every encoder here uses).

    ``cx = floor(((x + 0.5) * grid) / width)``, likewise ``cy``, in float64,
    clamped to ``[0, grid - 1]``; the cell is ``cy * grid + cx``. Positions
    are in pixels with the origin at the centre of the top-left pixel, so the
    image spans ``[-0.5, width - 0.5)``: cells are half-open and a point on
    a boundary goes to the cell on its right (below).

    Parameters
    ----------
    x, y : array-like of shape (n,)
    width, height : scalar or array-like of shape (n,), pixels
    grid : int

    Returns
    -------
    cells : ndarray of shape (n,), int64
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    cx = np.clip(np.floor((x + 0.5) * grid / np.asarray(width, dtype=np.float64)), 0, grid - 1)
    cy = np.clip(np.floor((y + 0.5) * grid / np.asarray(height, dtype=np.float64)), 0, grid - 1)
    cells: np.ndarray = (cy * grid + cx).astype(np.int64)
    return cells


def soft_assign(
    X: Any, vocabulary: Any, *, n_neighbors: int = 1, sigma: Optional[float] = None, n_threads: Optional[int] = None
) -> tuple[np.ndarray, np.ndarray]:
    """Assign descriptors to their ``n_neighbors`` nearest visual words with
    Gaussian-kernel weights (van Gemert et al.'s kernel codebook).

    ``w_j = exp(-D_j / (2 sigma^2)) / sum_{j' in the n_neighbors nearest} exp(-D_j' / (2 sigma^2))``
    over the exact squared distances ``D_j`` (ties to the lowest word);
    words more than ``140 sigma^2`` beyond the nearest get weight 0. With
    ``n_neighbors=1`` (or no ``sigma``) each descriptor goes to its nearest
    word with weight 1.

    Parameters
    ----------
    X : array-like of shape (n, d), float
    vocabulary : array-like of shape (n_words, d) or a fitted KMeans
    n_neighbors : int, default=1
    sigma : float, optional
        Kernel width, in descriptor units; required when ``n_neighbors > 1``.
    n_threads : int, optional

    Returns
    -------
    words : ndarray of shape (n, min(n_neighbors, n_words)), int64
        Nearest first.
    weights : ndarray of the same shape, float32
        Each row sums to 1.

    Raises
    ------
    ValueError
        Widths that differ (both named), NaN or infinity (the row is named),
        ``n_neighbors < 1``, or ``n_neighbors > 1`` without a positive ``sigma``.
    """
    from bovw.histogram import _vocabulary_array

    vocab = _vocabulary_array(vocabulary)
    X = np.ascontiguousarray(np.asarray(X), dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"X: expected shape (n, d), got {X.shape}")
    return _bovw.soft_assign(X, vocab, n_neighbors=int(n_neighbors), sigma=sigma, n_threads=n_threads)


class _Encoder(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """The encoder interface (see the module docs); subclasses implement
    ``_fit_model(X_flat or None)`` (returns the descriptor width),
    ``_cell_width()`` and ``_encode_batch(batch)``."""

    def _needs_data(self) -> bool:  # pragma: no cover - overridden
        return True

    def fit(self, X: Any = None, y: Any = None, offsets: Any = None) -> Any:
        """Fit (or check) the vocabulary or mixture on descriptors.

        Parameters
        ----------
        X : ndarray of shape (n, d), or an image batch (see the module docs)
            Descriptors to fit on; may be None when the model is given fitted.
        y : ignored
        offsets : array-like of int, optional
            With a flat image batch.

        Returns
        -------
        self

        Raises
        ------
        ValueError
            If a parameter is invalid (named), X's width differs from a
            given model's (both named) or X is needed and empty.
        """
        self._validate_params()
        self._grids = _check_pyramid(self.spatial_pyramid, self.pyramid_weights)
        flat = None
        if X is not None:
            flat = flat_descriptors(X, offsets)
            if flat.ndim != 2:
                raise ValueError(f"X: expected descriptors of shape (n, d), got {flat.shape}")
        elif self._needs_data():
            raise ValueError(f"{type(self).__name__}.fit needs descriptors X to fit its model")
        d = self._fit_model(flat)
        if flat is not None and flat.shape[0] > 0 and flat.shape[1] != d:
            raise ValueError(f"X: descriptors of width {flat.shape[1]}, but the model has width {d}")
        self.n_features_in_ = d
        self._n_features_out = n_cells(self._grids) * self._cell_width()
        return self

    @property
    def n_features_out_(self) -> int:
        """Width of the encoding: ``n_cells *`` the per-cell width."""
        check_is_fitted(self, "_n_features_out")
        return int(self._n_features_out)

    def _pyramid_args(self, b: ImageBatch) -> dict:
        if self._grids is None:
            return {}
        if b.keypoints is None or b.image_sizes is None:
            raise ValueError(
                "spatial_pyramid needs keypoints and image_sizes (or a RecordBatch with the keypoints, "
                "image_width and image_height columns)"
            )
        return {
            "keypoints": b.keypoints,
            "image_sizes": b.image_sizes,
            "spatial_pyramid": self._grids,
            "pyramid_weights": self.pyramid_weights,
        }

    def transform(self, X: Any, offsets: Any = None, keypoints: Any = None, image_sizes: Any = None) -> np.ndarray:
        """Encode a batch of images, one row each.

        Parameters
        ----------
        X : image batch (see the module docs)
        offsets : array-like of int of shape (n_images + 1,), optional
            With a flat ``(N, d)`` descriptor array.
        keypoints : per-image list, ``(N, >= 2)`` array or Arrow column, optional
            Keypoint positions (x, y first, pixels); needed with ``spatial_pyramid``.
        image_sizes : array-like of shape (n_images, 2), optional
            Width and height of each image, pixels; needed with ``spatial_pyramid``.

        Returns
        -------
        ndarray of shape (n_images, n_features_out_), float32
            Zeros for images without descriptors.

        Raises
        ------
        ValueError
            Descriptors of another width (both widths named), NaN or infinity
            (the row named), malformed offsets, frames or image sizes (the
            image named), a pyramid without keypoints.
        TypeError
            Non-float descriptors or an unsupported container.
        """
        check_is_fitted(self, "_n_features_out")
        w = self._n_features_out
        parts = [
            self._encode_batch(b).reshape(-1, w)
            for b in iter_batches(X, self.n_features_in_, offsets, keypoints, image_sizes)
        ]
        if not parts:
            return np.zeros((0, w), np.float32)
        return parts[0] if len(parts) == 1 else np.vstack(parts)

    def encode(self, X: Any, offsets: Any, keypoints_xy: Any = None, image_sizes: Any = None) -> np.ndarray:
        """The generic encoder call: :meth:`transform` of a flat ``(N, d)``
        batch with ``offsets`` (or of any batch form with ``offsets=None``).

        Returns
        -------
        ndarray of shape (n_images, n_features_out_), float32
        """
        return self.transform(X, offsets, keypoints_xy, image_sizes)

    def fit_transform(
        self, X: Any, y: Any = None, offsets: Any = None, keypoints: Any = None, image_sizes: Any = None
    ) -> np.ndarray:
        """Fit on the batch's descriptors, then encode it."""
        out: np.ndarray = self.fit(X, y, offsets).transform(X, offsets, keypoints, image_sizes)
        return out

    def transform_arrow(
        self, X: Any, offsets: Any = None, keypoints: Any = None, image_sizes: Any = None, kind: str = "fixed_size_list"
    ) -> pa.Array:
        """:meth:`transform` as an Arrow column (see :func:`bovw.histograms_to_arrow`)."""
        from bovw.histogram import histograms_to_arrow

        return histograms_to_arrow(self.transform(X, offsets, keypoints, image_sizes), kind)

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        return tags


_PYRAMID_CONSTRAINTS: dict = {
    "spatial_pyramid": [list, tuple, None],
    "pyramid_weights": [StrOptions({"uniform", "lazebnik"})],
    "n_threads": [Interval(Integral, 1, None, closed="left"), None],
}


class VLAD(_Encoder):
    """VLAD encoder: per visual word, the sum of the residuals of the
    descriptors assigned to it, normalised (in Rust).

    Parameters
    ----------
    vocabulary : ndarray of shape (n_words, d), a fitted KMeans, an unfitted \
estimator with ``cluster_centers_`` after fit, or None
        The visual words. An unfitted estimator is cloned and fitted on the
        descriptors given to :meth:`fit`; None fits
        ``bovw.KMeans(n_clusters, random_state=random_state)``.
    n_clusters : int, default=64
        Vocabulary size when ``vocabulary`` is None.
    normalize_components : bool, default=True
        Intra-normalisation: L2-normalise each word's residual block.
    square_root : bool, default=False
        Signed square root of every value (before intra-normalisation).
    normalize_mass : bool, default=False
        Divide each word's residual sum by the mass assigned to it.
    normalize : bool, default=True
        L2-normalise the vector (of each pyramid cell).
    n_neighbors : int, default=1
        Words each descriptor is assigned to (1: hard assignment).
    sigma : float, default=None
        Kernel width of the soft assignment (see :func:`soft_assign`);
        required when ``n_neighbors > 1``.
    spatial_pyramid : sequence of int, default=None
        Grids (cells per side) of a spatial pyramid, e.g. ``(1, 2)``; each
        cell is encoded and normalised on its own, cells are concatenated.
    pyramid_weights : {"uniform", "lazebnik"}, default="uniform"
    random_state : int, RandomState or None, default=None
        For the K-Means fitted when ``vocabulary`` is None.
    n_threads : int or None, default=None
        Threads (all cores by default; 1 in Spark tasks). Results do not
        depend on it.

    Attributes
    ----------
    vocabulary_ : ndarray of shape (n_words, d), float32
    n_features_in_ : int
        Descriptor width ``d``.
    n_features_out_ : int
        ``n_cells * n_words * d``.

    Notes
    -----
    The steps and their order are VLFeat's ``vl_vlad`` (``cyvlfeat.vlad.vlad``
    with ``normalize_mass``, ``square_root``, ``normalize_components`` and
    ``unnormalized = not normalize``), with the assignment matrix built from
    the nearest words. Sums are accumulated in float64. An image (or cell)
    without descriptors encodes to zeros.

    References
    ----------
    .. [1] H. Jégou, M. Douze, C. Schmid, P. Pérez, "Aggregating local
       descriptors into a compact image representation", CVPR 2010.
    .. [2] R. Arandjelović and A. Zisserman, "All about VLAD", CVPR 2013.
    .. [3] VLFeat, ``vl/vlad.c``.

    Examples
    --------
    >>> import numpy as np, bovw
    >>> vocab = np.array([[0.0, 0.0], [10.0, 10.0]], dtype=np.float32)
    >>> vlad = bovw.VLAD(vocab, normalize_components=False, normalize=False).fit()
    >>> vlad.transform([np.array([[1, 2], [9, 9], [11, 12]], np.float32), None]).tolist()
    [[1.0, 2.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]]
    """

    _parameter_constraints: dict = {
        "vocabulary": ["array-like", object, None],
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "normalize_components": ["boolean"],
        "square_root": ["boolean"],
        "normalize_mass": ["boolean"],
        "normalize": ["boolean"],
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "sigma": [Interval(Real, 0, None, closed="neither"), None],
        "random_state": ["random_state"],
        **_PYRAMID_CONSTRAINTS,
    }

    def __init__(
        self,
        vocabulary: Any = None,
        *,
        n_clusters: int = 64,
        normalize_components: bool = True,
        square_root: bool = False,
        normalize_mass: bool = False,
        normalize: bool = True,
        n_neighbors: int = 1,
        sigma: Optional[float] = None,
        spatial_pyramid: Optional[Sequence[int]] = None,
        pyramid_weights: str = "uniform",
        random_state: Any = None,
        n_threads: Optional[int] = None,
    ) -> None:
        self.vocabulary = vocabulary
        self.n_clusters = n_clusters
        self.normalize_components = normalize_components
        self.square_root = square_root
        self.normalize_mass = normalize_mass
        self.normalize = normalize
        self.n_neighbors = n_neighbors
        self.sigma = sigma
        self.spatial_pyramid = spatial_pyramid
        self.pyramid_weights = pyramid_weights
        self.random_state = random_state
        self.n_threads = n_threads

    def _needs_data(self) -> bool:
        v = self.vocabulary
        return v is None or (hasattr(v, "fit") and not hasattr(v, "cluster_centers_"))

    def _fit_model(self, flat: Optional[np.ndarray]) -> int:
        from bovw.histogram import _vocabulary_array

        if self.n_neighbors > 1 and self.sigma is None:
            raise ValueError(f"sigma: soft assignment (n_neighbors={self.n_neighbors}) needs a kernel width sigma > 0")
        v = self.vocabulary
        if v is None:
            from bovw.cluster import KMeans

            v = KMeans(n_clusters=self.n_clusters, random_state=self.random_state, n_threads=self.n_threads).fit(flat)
        elif hasattr(v, "fit") and not hasattr(v, "cluster_centers_"):
            v = clone(v).fit(flat)
        self.vocabulary_ = _vocabulary_array(v)
        return int(self.vocabulary_.shape[1])

    def _cell_width(self) -> int:
        return int(self.vocabulary_.size)

    def _encode_batch(self, b: ImageBatch) -> np.ndarray:
        return _bovw.encode_vlad(
            b.descriptors,
            self.vocabulary_,
            b.offsets,
            n_neighbors=int(self.n_neighbors),
            sigma=self.sigma,
            normalize_mass=bool(self.normalize_mass),
            square_root=bool(self.square_root),
            normalize_components=bool(self.normalize_components),
            normalize=bool(self.normalize),
            n_threads=self.n_threads,
            **self._pyramid_args(b),
        )


class FisherVector(_Encoder):
    """Fisher vector encoder of a diagonal Gaussian mixture (in Rust).

    Per component ``k`` (weights ``pi``, means ``mu``, variances
    ``sigma^2``, posteriors ``gamma``, ``N`` descriptors)::

        u_k = 1 / (N sqrt(pi_k))   sum_i gamma_ik (x_i - mu_k) / sigma_k
        v_k = 1 / (N sqrt(2 pi_k)) sum_i gamma_ik ((x_i - mu_k)^2 / sigma_k^2 - 1)

    laid out as all ``u_k`` then all ``v_k`` (VLFeat's order), then the
    signed square root and L2 normalisation of the "improved" Fisher vector.

    Parameters
    ----------
    gmm : fitted GaussianMixture (bovw's or scikit-learn's, diagonal), \
an unfitted one, a tuple (weights, means, covariances), or None
        The mixture. An unfitted estimator is cloned and fitted on the
        descriptors given to :meth:`fit`; None fits
        ``bovw.GaussianMixture(n_components, random_state=random_state)``.
    n_components : int, default=64
        Components when ``gmm`` is None.
    square_root : bool, default=True
        Signed square root (improved Fisher vector).
    normalize : bool, default=True
        L2 normalisation (of each pyramid cell) (improved Fisher vector).
    posterior_threshold : float, default=1e-6
        Posteriors below it are skipped (VLFeat's value).
    prior_threshold : float, default=1e-6
        Components with a smaller weight are left out (VLFeat's value).
    spatial_pyramid : sequence of int, default=None
        Grids of a spatial pyramid; each cell gets its own Fisher vector
        (its own ``N``), normalised, and cells are concatenated.
    pyramid_weights : {"uniform", "lazebnik"}, default="uniform"
    random_state : int, RandomState or None, default=None
        For the mixture fitted when ``gmm`` is None.
    n_threads : int or None, default=None

    Attributes
    ----------
    weights_ : ndarray of shape (n_components,), float64
    means_, covariances_ : ndarray of shape (n_components, d), float64
    n_features_in_ : int
    n_features_out_ : int
        ``n_cells * 2 * n_components * d``.

    Notes
    -----
    Equal to ``cyvlfeat.fisher.fisher(..., improved=True)`` on the same
    mixture (tested within 1e-4). Posteriors come from the mixture's exact
    E-step kernel; sums are accumulated in float64. An image (or cell)
    without descriptors encodes to zeros.

    References
    ----------
    .. [1] F. Perronnin, J. Sánchez, T. Mensink, "Improving the Fisher kernel
       for large-scale image classification", ECCV 2010.
    .. [2] J. Sánchez, F. Perronnin, T. Mensink, J. Verbeek, "Image
       classification with the Fisher vector: theory and practice", IJCV
       105(3), 2013.
    .. [3] VLFeat, ``vl/fisher.c``.
    """

    _parameter_constraints: dict = {
        "gmm": [object, None],
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "square_root": ["boolean"],
        "normalize": ["boolean"],
        "posterior_threshold": [Interval(Real, 0, None, closed="left")],
        "prior_threshold": [Interval(Real, 0, None, closed="left")],
        "random_state": ["random_state"],
        **_PYRAMID_CONSTRAINTS,
    }

    def __init__(
        self,
        gmm: Any = None,
        *,
        n_components: int = 64,
        square_root: bool = True,
        normalize: bool = True,
        posterior_threshold: float = 1e-6,
        prior_threshold: float = 1e-6,
        spatial_pyramid: Optional[Sequence[int]] = None,
        pyramid_weights: str = "uniform",
        random_state: Any = None,
        n_threads: Optional[int] = None,
    ) -> None:
        self.gmm = gmm
        self.n_components = n_components
        self.square_root = square_root
        self.normalize = normalize
        self.posterior_threshold = posterior_threshold
        self.prior_threshold = prior_threshold
        self.spatial_pyramid = spatial_pyramid
        self.pyramid_weights = pyramid_weights
        self.random_state = random_state
        self.n_threads = n_threads

    def _needs_data(self) -> bool:
        g = self.gmm
        return g is None or (not isinstance(g, (tuple, list)) and hasattr(g, "fit") and not hasattr(g, "weights_"))

    def _fit_model(self, flat: Optional[np.ndarray]) -> int:
        from bovw.mixture import GaussianMixture, _mixture_arrays

        g = self.gmm
        if getattr(g, "covariance_type", "diag") != "diag":
            raise ValueError(f"gmm: Fisher vectors need diagonal covariances, got covariance_type={g.covariance_type!r}")
        if g is None:
            g = GaussianMixture(n_components=self.n_components, random_state=self.random_state, n_threads=self.n_threads).fit(flat)
        elif not isinstance(g, (tuple, list)) and hasattr(g, "fit") and not hasattr(g, "weights_"):
            g = clone(g).fit(flat)
        w, m, c = _mixture_arrays(g)
        if np.any(c <= 0) or not np.all(np.isfinite(c)):
            raise ValueError("gmm: covariances must be positive and finite")
        self.weights_, self.means_, self.covariances_ = w, m, c
        return int(m.shape[1])

    def _cell_width(self) -> int:
        return int(2 * self.means_.size)

    def _encode_batch(self, b: ImageBatch) -> np.ndarray:
        return _bovw.encode_fisher(
            b.descriptors,
            self.weights_,
            self.means_,
            self.covariances_,
            b.offsets,
            square_root=bool(self.square_root),
            normalize=bool(self.normalize),
            posterior_threshold=float(self.posterior_threshold),
            prior_threshold=float(self.prior_threshold),
            n_threads=self.n_threads,
            **self._pyramid_args(b),
        )

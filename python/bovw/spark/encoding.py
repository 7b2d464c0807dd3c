"""Encodings on Spark: the encoders as ``mapInArrow`` stages, and the
Gaussian mixture of Fisher vectors fitted by distributed EM.

:func:`encode_descriptors` runs any fitted encoder of :mod:`bovw.encoding`
(:class:`bovw.VLAD`, :class:`bovw.FisherVector`, :class:`bovw.BagOfWords`
with its spatial pyramid and soft assignment options) on
:func:`bovw.spark.extract_descriptors`'s output: one ``encode(X, offsets,
keypoints, image_sizes)`` Rust call per slice of ``batch_size`` rows, the
same call the in-process job makes, so the vectors are the in-process ones.

:func:`fit_gmm` fits :class:`bovw.GaussianMixture` on the descriptors:
``algorithm="sample"`` fits a seeded driver sample in-process;
``algorithm="em"`` runs EM over *all* the descriptors, each iteration one
Spark job with one Rust call per partition
(:func:`bovw.mixture.partial_stats`: the posterior mass, first and second
moments and log-likelihood of the partition, float64) and the M-step on the
driver (:func:`bovw.mixture.em_from_stats`: scikit-learn's formulas and
stopping rule). Its result is the in-process fit of the partitions' rows from
the same initial parameters, up to the rounding of the partial sums.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa

from bovw.columns import descriptor_matrix, float_lists
from bovw.spark.io import ddl_schema, task_threads
from bovw.spark.stages import DEFAULT_BATCH_SIZE, _check_batch_size, _chunks, _col, _keep_columns, descriptor_layout

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame

__all__ = ["encode_descriptors", "encode_fn", "fit_gmm", "gmm_em"]


def _with_threads(encoder: Any, threads: int) -> Any:
    """A copy of ``encoder`` running on ``threads`` kernel threads."""
    import copy

    enc = copy.copy(encoder)
    if hasattr(enc, "n_threads"):
        enc.n_threads = threads
    return enc


def encode_fn(
    encoder: Any,
    *,
    layout: tuple[int, Any],
    output_col: str = "encoding",
    n_threads: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function behind :func:`encode_descriptors`.

    Reads ``descriptors`` (blob or nested, of the given ``(width, dtype)``
    layout), ``keypoints``, ``image_width`` and ``image_height`` and yields
    ``path``, ``label``, ``split``, ``n_keypoints``, ``output_col``
    (``array<float>``, null on error rows), ``error``, ``error_stage``.
    """
    _check_batch_size(batch_size)
    width, dtype = layout
    needs_frames = getattr(encoder, "spatial_pyramid", None) is not None

    def fn(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        enc = _with_threads(encoder, task_threads(n_threads))
        for rb in batches:
            for chunk in _chunks(rb, batch_size):
                keep, names = _keep_columns(chunk)
                desc = _col(chunk, "descriptors")
                if desc is None:
                    raise KeyError(f"no column 'descriptors' in the batch (columns: {chunk.schema.names})")
                X, offsets = descriptor_matrix(desc, width=width, dtype=dtype)
                if X.dtype != np.float32:  # uint8 descriptors encode as floats, as the seed notebooks do
                    X = X.astype(np.float32)
                kps = sizes = None
                if needs_frames:
                    kp_col = _col(chunk, "keypoints")
                    if kp_col is None:
                        raise KeyError("spatial_pyramid needs the 'keypoints' column")
                    kps, _ = descriptor_matrix(kp_col, width=4, dtype=np.float32)
                    sizes = np.stack([
                        _col(chunk, c).fill_null(0).to_numpy(zero_copy_only=False)  # type: ignore[union-attr]
                        for c in ("image_width", "image_height")
                    ], axis=1).astype(np.int64)
                V = enc.encode(X, offsets, kps, sizes)
                err, stage = _col(chunk, "error"), _col(chunk, "error_stage")
                if err is None:
                    err = pa.nulls(chunk.num_rows, pa.string())
                if stage is None:
                    stage = pa.nulls(chunk.num_rows, pa.string())
                n_kp = pa.array(np.diff(offsets).astype(np.int32))
                failed = err.is_valid().to_numpy(zero_copy_only=False)
                cols = keep + [n_kp, float_lists(V, failed, dtype=np.float32), err, stage]
                yield pa.RecordBatch.from_arrays(cols, names=names + ["n_keypoints", output_col, "error", "error_stage"])

    return fn


def encode_descriptors(
    descriptors: "DataFrame",
    encoder: Any,
    *,
    output_col: str = "encoding",
    n_threads: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> "DataFrame":
    """Encode every image's descriptors with a fitted encoder, in ``mapInArrow``.

    Example::

        fv = bovw.FisherVector(bovw.spark.fit_gmm(descriptors, 64)).fit()
        vectors = bovw.spark.encode_descriptors(descriptors, fv)

    Parameters
    ----------
    descriptors : pyspark.sql.DataFrame
        :func:`bovw.spark.extract_descriptors`'s output (any layout).
    encoder : fitted bovw.VLAD, bovw.FisherVector or bovw.BagOfWords
        Or any object with ``encode(X, offsets, keypoints_xy, image_sizes)``
        and ``n_features_out_``. Pickled to the executors; it runs with
        ``n_threads`` kernel threads per task.
    output_col : str, default "encoding"
    n_threads : int, optional
        Kernel threads per task; default the task's CPUs.
    batch_size : int, default 256
        Rows per kernel call.

    Returns
    -------
    pyspark.sql.DataFrame
        ``path``, ``label``, ``split``, ``n_keypoints``, ``output_col``
        (``array<float>`` of length ``encoder.n_features_out_``: zeros for an
        image without descriptors, null on error rows), ``error``,
        ``error_stage``. ``pyspark.ml.functions.array_to_vector`` (or
        :func:`bovw.spark.to_ml_vectors`) turns it into an ML vector.

    Raises
    ------
    ValueError
        If the encoder is not fitted, or its width is not the descriptors'
        (both named).
    """
    width, dtype = descriptor_layout(descriptors)
    n_in = getattr(encoder, "n_features_in_", None)
    if n_in is None or not hasattr(encoder, "encode"):
        raise ValueError("encoder: expected a fitted bovw encoder (call fit first)")
    if int(n_in) != width:
        raise ValueError(f"encoder: fitted on descriptors of width {n_in}, but the column has width {width}")
    schema = ddl_schema(
        f"path string, label string, split string, n_keypoints int, `{output_col}` array<float>, "
        "error string, error_stage string"
    )
    return descriptors.mapInArrow(
        encode_fn(encoder, layout=(width, dtype), output_col=output_col, n_threads=n_threads, batch_size=batch_size),
        schema,
    )


def _gmm_partial(X: np.ndarray, params: tuple[np.ndarray, np.ndarray, np.ndarray], threads: int) -> tuple:
    """One partition's EM statistics: one Rust call."""
    from bovw.mixture import partial_stats

    nk, s1, s2, ll, n = partial_stats(X, *params, n_threads=threads)
    return nk, s1, s2, float(ll), int(n)


def _add_stats(a: tuple, b: tuple) -> tuple:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3], a[4] + b[4])


def gmm_em(
    data: Any,
    weights: Any,
    means: Any,
    covariances: Any,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    n_threads: int | None = None,
) -> dict:
    """Distributed EM from given initial parameters.

    Each iteration broadcasts the mixture, makes one Rust call per partition
    (:func:`bovw.mixture.partial_stats`) and adds the statistics on the driver
    (``reduce``), then the M-step (:func:`bovw.mixture.em_from_stats`:
    scikit-learn's formulas, stopping when the mean log-likelihood changes by
    less than ``tol``).

    Parameters
    ----------
    data : RDD of ndarray (n_i, d) float32, or the descriptors DataFrame
        One matrix per partition (a descriptors DataFrame is turned into that
        and cached for the iterations).
    weights, means, covariances : array-like
        Initial mixture: ``(K,)``, ``(K, d)``, ``(K, d)`` (variances).
    max_iter, tol, reg_covar
        As in :class:`bovw.GaussianMixture`.
    n_threads : int, optional
        Kernel threads per task; default the task's CPUs.

    Returns
    -------
    dict
        As :func:`bovw.mixture.em_from_stats`.

    Raises
    ------
    ValueError
        If a component collapses (``reg_covar=0``), the widths differ or there
        are no descriptors.
    """
    from pyspark.rdd import RDD

    from bovw.mixture import _eps_nk, em_from_stats
    from bovw.spark.vocabulary import _partition_matrices

    owned = not isinstance(data, RDD)
    if owned:
        data = _partition_matrices(data)
    sc = data.context
    try:
        def stats(w: np.ndarray, m: np.ndarray, c: np.ndarray) -> tuple:
            bc = sc.broadcast((w, m, c))

            def part(X: np.ndarray) -> tuple:
                return _gmm_partial(X, bc.value, task_threads(n_threads))

            try:
                return data.map(part).reduce(_add_stats)  # type: ignore[no-any-return]
            finally:
                bc.unpersist()

        return em_from_stats(stats, weights, means, covariances, max_iter=max_iter, tol=tol, reg_covar=reg_covar,
                             eps=_eps_nk(np.float32), start_lower_bound=-math.inf)
    finally:
        if owned:
            data.unpersist()


def fit_gmm(
    descriptors: "DataFrame",
    n_components: int = 64,
    *,
    algorithm: str = "sample",
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    init_params: str = "kmeans",
    random_state: int = 0,
    sample_fraction: float = 1.0,
    max_sample: int | None = 200_000,
    n_threads: int | None = None,
    **gmm_params: Any,
) -> Any:
    """Fit the Gaussian mixture of Fisher vectors on the descriptors.

    Parameters
    ----------
    descriptors : pyspark.sql.DataFrame
        :func:`bovw.spark.extract_descriptors`'s output (float descriptors);
        cache it when ``algorithm="em"`` (read once per iteration).
    n_components : int, default 64
    algorithm : {"sample", "em"}, default "sample"
        ``"sample"``: :func:`bovw.spark.sample_descriptors` (``sample_fraction``,
        ``max_sample``) then :class:`bovw.GaussianMixture` on the driver.
        ``"em"``: the initial parameters from :class:`bovw.GaussianMixture`'s
        initialisation (``init_params``, ``random_state``, or
        ``weights_init``/``means_init``/``precisions_init``) on that driver
        sample, then :func:`gmm_em` over all the descriptors (one Spark job
        per iteration, one Rust call per partition).
    max_iter, tol, reg_covar, init_params, random_state
        As in :class:`bovw.GaussianMixture`.
    n_threads : int, optional
        Threads of the driver-side work (default all cores); executors use
        the task's CPUs.
    **gmm_params
        More :class:`bovw.GaussianMixture` parameters (``n_init``,
        ``weights_init``, ...).

    Returns
    -------
    bovw.GaussianMixture
        Fitted (``weights_``, ``means_``, ``covariances_``, ``lower_bound_``, ...).

    Raises
    ------
    ValueError
        If ``algorithm`` is unknown, a parameter is invalid, or the mixture
        collapses.
    """
    import bovw
    from bovw.spark.vocabulary import sample_descriptors

    if algorithm not in ("sample", "em"):
        raise ValueError(f"algorithm: expected 'sample' or 'em', got {algorithm!r}")
    X = sample_descriptors(descriptors, fraction=sample_fraction, max_descriptors=max_sample,
                           random_state=random_state, dtype=np.float32)
    gm = bovw.GaussianMixture(n_components, max_iter=max_iter, tol=tol, reg_covar=reg_covar,
                              init_params=init_params, random_state=random_state, n_threads=n_threads, **gmm_params)
    if algorithm == "sample":
        return gm.fit(X)
    init = bovw.GaussianMixture(**{**gm.get_params(), "max_iter": 0, "n_init": 1}).fit(X)
    res = gmm_em(descriptors, init.weights_, init.means_, init.covariances_, max_iter=max_iter, tol=tol,
                 reg_covar=reg_covar)
    gm._set(res["weights"], res["means"], res["covariances"])
    gm.converged_ = bool(res["converged"])
    gm.n_iter_ = int(res["n_iter"])
    gm.lower_bound_ = float(res["lower_bound"])
    gm.lower_bounds_ = list(res["lower_bounds"])
    gm.n_features_in_ = int(X.shape[1])
    return gm

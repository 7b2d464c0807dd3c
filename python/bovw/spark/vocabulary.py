"""Visual vocabularies on Spark: a seeded sample fitted on the driver, or a
distributed Lloyd where each iteration is one Rust call per partition."""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa

from bovw.columns import descriptor_matrix
from bovw.spark.io import collect_arrow, task_threads
from bovw.spark.stages import descriptor_layout

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame

__all__ = ["DEFAULT_MAX_DRIVER_BYTES", "fit_vocabulary", "kmeans_lloyd", "sample_descriptors"]

def _kmeans_partial(X: np.ndarray, centers: np.ndarray, n_threads: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-cluster sums (k, d) float64, counts (k,) int64 and inertia of ``X``
    assigned to ``centers`` (:func:`bovw.cluster.partial_sums`): one Rust call."""
    from bovw.cluster import partial_sums

    sums, counts, inertia = partial_sums(X, centers, n_threads=n_threads)
    return np.asarray(sums, np.float64), np.asarray(counts, np.int64), float(inertia)


def _kmeans_assign(X: np.ndarray, centers: np.ndarray, n_threads: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest center (int32) and squared distance (float64) of each row
    (:func:`bovw.cluster.assign`): one Rust call."""
    from bovw.cluster import assign

    labels, dist = assign(X, centers, n_threads=n_threads)
    return np.asarray(labels), np.asarray(dist, np.float64)


def _row_rng(seed: int, path: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(str(path).encode())])

def _native_descriptors(rb: pa.RecordBatch, layout: tuple[int, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The descriptors of a batch in their own dtype and the row offsets."""
    width, dtype = layout
    return descriptor_matrix(rb.column(rb.schema.get_field_index("descriptors")), width=width, dtype=dtype)


def _sample_fn(fraction: float, seed: int, layout: tuple[int, Any]) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """``mapInArrow``: per image, its descriptors kept with probability
    ``fraction`` (a generator seeded by ``(seed, crc32(path))``), as one blob
    (``n`` descriptors, native dtype)."""
    def fn(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for rb in batches:
            X, offsets = _native_descriptors(rb, layout)
            paths = rb.column(rb.schema.get_field_index("path")).to_pylist()
            out_p, out_n, out_b = [], [], []
            for p, a, b in zip(paths, offsets[:-1], offsets[1:]):
                c = int(b - a)
                if c == 0:
                    continue
                rows = X[a:b]
                if fraction < 1.0:
                    rows = rows[_row_rng(seed, p).random(c) < fraction]
                if len(rows) == 0:
                    continue
                out_p.append(p)
                out_n.append(len(rows))
                out_b.append(np.ascontiguousarray(rows).tobytes())
            yield pa.RecordBatch.from_arrays(
                [pa.array(out_p, pa.string()), pa.array(out_n, pa.int32()), pa.array(out_b, pa.binary())],
                names=["path", "n_keypoints", "descriptors"],
            )

    return fn


def _is_blob_column(df: "DataFrame", col: str = "descriptors") -> bool:
    from pyspark.sql.types import BinaryType

    return isinstance(df.schema[col].dataType, BinaryType)


def _collected_descriptors(descriptors: "DataFrame", fraction: float, random_state: int) -> np.ndarray:
    """The (sampled) descriptors of the rows without error, on the driver, in
    path order, native dtype. Blobs with ``fraction == 1`` go to the driver
    straight from the JVM (no Python worker); otherwise one ``mapInArrow``."""
    layout = descriptor_layout(descriptors)
    df = descriptors.where("error IS NULL")
    if fraction >= 1.0 and _is_blob_column(df) and "n_keypoints" in df.columns:
        table = collect_arrow(df.where("n_keypoints > 0").select("path", "n_keypoints", "descriptors"))
    else:
        cols = ["path", "descriptors"] + (["n_keypoints"] if "n_keypoints" in df.columns else [])
        table = collect_arrow(df.select(*cols).mapInArrow(
            _sample_fn(float(fraction), int(random_state), layout), "path string, n_keypoints int, descriptors binary"))
    if table.num_rows == 0:
        raise ValueError("sample_descriptors: no descriptor was sampled (no image had keypoints?)")
    table = table.sort_by("path")
    X, _ = descriptor_matrix(table.column("descriptors"), width=layout[0], dtype=layout[1])
    return X


def _pick_fn(picks: Any, layout: tuple[int, Any]) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """``mapInArrow``: the descriptors at the broadcast local indices of each
    path (``picks.value``: path -> sorted int array), one blob per image."""
    def fn(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        chosen = picks.value
        for rb in batches:
            X, offsets = _native_descriptors(rb, layout)
            out_p, out_n, out_b = [], [], []
            for i, p in enumerate(rb.column(rb.schema.get_field_index("path")).to_pylist()):
                idx = chosen.get(p)
                if idx is None or not len(idx):
                    continue
                out_p.append(p)
                out_n.append(len(idx))
                out_b.append(np.ascontiguousarray(X[offsets[i] + idx]).tobytes())
            yield pa.RecordBatch.from_arrays(
                [pa.array(out_p, pa.string()), pa.array(out_n, pa.int32()), pa.array(out_b, pa.binary())],
                names=["path", "n_keypoints", "descriptors"],
            )

    return fn


def _capped_descriptors(descriptors: "DataFrame", cap: int, random_state: int) -> np.ndarray | None:
    """``max_descriptors`` of all the descriptors without collecting them all:
    the per-image counts come to the driver (JVM only), the driver draws the
    same global indices as :func:`sample_descriptors` does on the full matrix
    (``default_rng(random_state).choice(n, cap)`` in path order), and the
    executors send only those descriptors. None when there are at most
    ``cap`` descriptors (then collect them all)."""
    layout = descriptor_layout(descriptors)
    df = descriptors.where("error IS NULL AND n_keypoints > 0")
    counts = collect_arrow(df.select("path", "n_keypoints")).sort_by("path")
    paths = counts.column("path").to_pylist()
    n = np.asarray(counts.column("n_keypoints").to_numpy(zero_copy_only=False), np.int64)
    if len(set(paths)) != len(paths) or int(n.sum()) <= cap:
        return None
    idx = np.sort(np.random.default_rng(random_state).choice(int(n.sum()), cap, replace=False))
    starts = np.concatenate([[0], np.cumsum(n)])
    row = np.searchsorted(starts, idx, side="right") - 1
    bounds = np.searchsorted(row, np.arange(len(paths) + 1))
    chosen = {paths[r]: (idx[bounds[r]:bounds[r + 1]] - starts[r]) for r in np.unique(row)}
    bc = descriptors.sparkSession.sparkContext.broadcast(chosen)
    try:
        cols = ["path", "n_keypoints", "descriptors"]
        table = collect_arrow(df.select(*cols).mapInArrow(
            _pick_fn(bc, layout), "path string, n_keypoints int, descriptors binary"))
    finally:
        bc.unpersist()
    table = table.sort_by("path")
    X, _ = descriptor_matrix(table.column("descriptors"), width=layout[0], dtype=layout[1])
    return X


def sample_descriptors(
    descriptors: "DataFrame",
    *,
    fraction: float = 1.0,
    max_descriptors: int | None = None,
    random_state: int = 0,
    dtype: Any = np.float32,
) -> np.ndarray:
    """Collect a seeded sample of the descriptors to the driver.

    Each image keeps each of its descriptors with probability ``fraction``,
    drawn from a generator seeded by ``(random_state, crc32(path))``, so the
    sample does not depend on the partitioning; rows come in path order. If
    more than ``max_descriptors`` remain, a seeded uniform subset is kept
    (``default_rng(random_state).choice`` over all of them in path order; with
    ``fraction=1`` the indices are drawn on the driver from the per-image
    counts and only those descriptors leave the executors). With the blob
    layout and ``fraction=1`` and no cap the descriptors go from the JVM to
    the driver as Arrow without any Python worker.

    Parameters
    ----------
    descriptors : pyspark.sql.DataFrame
        :func:`extract_descriptors`'s output (rows with an ``error`` are skipped).
    fraction : float in (0, 1], default 1.0
    max_descriptors : int, optional
    random_state : int, default 0
    dtype : numpy dtype or None, default float32
        None keeps the descriptors' own dtype (ORB: uint8, for
        :class:`bovw.KMajority`).

    Returns
    -------
    ndarray of shape (n_sampled, n_features), dtype ``dtype``

    Raises
    ------
    ValueError
        If ``fraction`` is not in (0, 1] or nothing is sampled.
    """
    if not (0.0 < float(fraction) <= 1.0):
        raise ValueError(f"fraction: expected a float in (0, 1], got {fraction!r}")
    if max_descriptors is not None and float(fraction) >= 1.0 and "n_keypoints" in descriptors.columns:
        X = _capped_descriptors(descriptors, int(max_descriptors), int(random_state))
        if X is not None:
            return X if dtype is None else np.ascontiguousarray(X, dtype=dtype)
    X = _collected_descriptors(descriptors, float(fraction), int(random_state))
    if max_descriptors is not None and X.shape[0] > max_descriptors:
        idx = np.sort(np.random.default_rng(random_state).choice(X.shape[0], int(max_descriptors), replace=False))
        X = X[idx]
    return X if dtype is None else np.ascontiguousarray(X, dtype=dtype)


def _concat_fn(layout: tuple[int, Any]) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """``mapInArrow``: the descriptors of each batch's rows without error as
    one blob (a slice of the batch's buffer when it holds blobs)."""
    def fn(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for rb in batches:
            X, _ = _native_descriptors(rb, layout)
            if X.shape[0]:
                yield pa.RecordBatch.from_arrays(
                    [pa.array([X.shape[0]], pa.int64()), pa.array([X.shape[1]], pa.int32()),
                     pa.array([str(X.dtype)], pa.string()), pa.array([np.ascontiguousarray(X).tobytes()], pa.binary())],
                    names=["n", "d", "dtype", "data"],
                )

    return fn


def _partition_matrices(descriptors: "DataFrame") -> Any:
    """RDD with one (n, d) float32 matrix per partition (the descriptors of
    its images, in order), persisted in memory."""
    from pyspark import StorageLevel

    cols = ["descriptors"] + (["n_keypoints"] if "n_keypoints" in descriptors.columns else [])
    df = descriptors.where("error IS NULL").select(*cols)
    blobs = df.mapInArrow(_concat_fn(descriptor_layout(descriptors)), "n bigint, d int, dtype string, data binary")

    def concat(rows: Iterable[Any]) -> Iterator[np.ndarray]:
        mats = [np.frombuffer(r.data, np.dtype(r.dtype)).reshape(r.n, r.d) for r in rows]
        if mats:
            yield np.concatenate(mats).astype(np.float32)

    return blobs.rdd.mapPartitions(concat).persist(StorageLevel.MEMORY_AND_DISK)


def _stats(X: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    X64 = X.astype(np.float64)
    return X.shape[0], X64.sum(0), (X64 * X64).sum(0)


def _add3(a: tuple, b: tuple) -> tuple:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2])


def kmeans_lloyd(
    data: Any,
    init: np.ndarray,
    *,
    max_iter: int = 300,
    tol: float = 1e-4,
    n_threads: int | None = None,
) -> tuple[np.ndarray, float, int]:
    """Distributed Lloyd iterations from given initial centers.

    Each iteration broadcasts the centers, makes one Rust call per partition
    (``kmeans_partial_sums``: per-cluster sums, counts and inertia of the
    partition's descriptors, float64) and adds the partial results on the
    driver (``reduce``); the new center is sum / count, rounded to the
    data's dtype. As in :class:`bovw.KMeans` (and scikit-learn), an empty
    cluster takes the point farthest from its center (farthest first, ties to
    the lowest row index in partition order; one more pass with
    ``kmeans_assign`` only when a cluster is empty), and the iterations stop
    when the total squared center shift is at most ``tol`` times the mean
    per-feature variance of the data, or after ``max_iter``. The result is
    therefore :class:`bovw.KMeans` run from ``init`` on the partitions'
    rows concatenated in order, up to the rounding of the partial sums.

    Parameters
    ----------
    data : RDD of ndarray (n_i, d) float32, or the descriptors DataFrame
        One matrix per partition (:func:`extract_descriptors`'s output is
        turned into that and cached for the iterations).
    init : ndarray of shape (n_clusters, d)
    max_iter : int, default 300
    tol : float, default 1e-4
    n_threads : int, optional
        Kernel threads per task; default the task's CPUs.

    Returns
    -------
    centers : ndarray of shape (n_clusters, d), the data's dtype
    inertia : float
        Sum of squared distances of the rows to their nearest returned center.
    n_iter : int

    Raises
    ------
    ValueError
        If ``init`` is not 2-D, its width differs from the data's, there are
        fewer rows than clusters, or ``max_iter < 1``.
    """
    from pyspark.rdd import RDD

    owned = not isinstance(data, RDD)
    if owned:
        data = _partition_matrices(data)
    init = np.asarray(init)
    if init.ndim != 2:
        raise ValueError(f"init: expected shape (n_clusters, n_features), got {init.shape}")
    if int(max_iter) < 1:
        raise ValueError(f"max_iter: expected >= 1, got {max_iter}")
    sc = data.context
    threads = n_threads
    try:
        first = data.first()
        dtype = first.dtype
        if first.shape[1] != init.shape[1]:
            raise ValueError(f"init: expected {first.shape[1]} features like the data, got {init.shape[1]}")
        n, s, sq = data.map(_stats).reduce(_add3)
        if n < init.shape[0]:
            raise ValueError(f"n_clusters={init.shape[0]} is larger than the number of descriptors ({n})")
        tol_abs = float(tol) * float(np.mean(sq / n - (s / n) ** 2))
        centers = np.ascontiguousarray(init, dtype=dtype)

        def partial_sums(C: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
            bc = sc.broadcast(C)

            def part(X: np.ndarray) -> tuple:
                return _kmeans_partial(X, bc.value, task_threads(threads))

            try:
                sums, counts, inertia = data.map(part).reduce(_add3)
                return sums, counts, float(inertia)
            finally:
                bc.unpersist()

        def farthest(C: np.ndarray, m: int) -> list:
            bc = sc.broadcast(C)

            def part(pid: int, it: Iterable[np.ndarray]) -> Iterator[tuple]:
                base = 0
                for X in it:
                    labels, dist = _kmeans_assign(X, bc.value, task_threads(threads))
                    top = np.lexsort((np.arange(len(dist)), -dist))[:m]
                    for i in top:
                        yield (-float(dist[i]), pid, base + int(i), X[i].astype(np.float64), int(labels[i]))
                    base += X.shape[0]

            try:
                return sorted(data.mapPartitionsWithIndex(part).collect(), key=lambda t: (t[0], t[1], t[2]))[:m]
            finally:
                bc.unpersist()

        n_iter = 0
        for n_iter in range(1, int(max_iter) + 1):
            sums, counts, _ = partial_sums(centers)
            counts = counts.astype(np.float64)
            empty = np.flatnonzero(counts == 0)
            if len(empty):
                for new_id, (_, _, _, row, old_id) in zip(empty, farthest(centers, len(empty))):
                    sums[old_id] -= row
                    sums[new_id] = row
                    counts[new_id] = 1.0
                    counts[old_id] -= 1.0
            new = centers.copy()
            nz = counts > 0
            new[nz] = (sums[nz] / counts[nz, None]).astype(dtype)
            shift = float(((new.astype(np.float64) - centers.astype(np.float64)) ** 2).sum())
            centers = new
            if shift <= tol_abs:
                break
        inertia = partial_sums(centers)[2]
        return centers, float(inertia), n_iter
    finally:
        if owned:
            data.unpersist()


#: Most bytes of descriptors that :func:`fit_vocabulary` (``algorithm="auto"``)
#: collects to the driver (float32: 1 GiB is about 2 million SIFT descriptors).
DEFAULT_MAX_DRIVER_BYTES = 1 << 30


def fit_vocabulary(
    descriptors: "DataFrame",
    n_clusters: int = 100,
    *,
    algorithm: str = "sample",
    kind: str = "kmeans",
    max_iter: int = 100,
    tol: float = 1e-4,
    random_state: int = 0,
    sample_fraction: float = 1.0,
    max_sample: int | None = 200_000,
    max_driver_bytes: int = DEFAULT_MAX_DRIVER_BYTES,
    n_threads: int | None = None,
    **kmeans_params: Any,
) -> Any:
    """Fit the visual vocabulary (K-Means on the descriptors).

    Parameters
    ----------
    descriptors : pyspark.sql.DataFrame
        :func:`extract_descriptors`'s output; cache it (``.cache()``) unless
        it is used once: ``"auto"`` and ``"lloyd"`` read it more than once,
        and every read of an uncached one extracts the descriptors again.
    n_clusters : int, default 100
    algorithm : {"sample", "auto", "lloyd"}, default "sample"
        ``"sample"``: :func:`sample_descriptors` (``sample_fraction``,
        ``max_sample``) then :class:`bovw.KMeans` on the driver, which is
        what is usually done in practice (a few hundred thousand descriptors
        fit in memory and K-Means on them takes seconds).
        ``"auto"``: K-Means on *all* the descriptors (no sampling, what
        MLlib's ``KMeans.train`` does): collected to the driver and fitted
        in-process when they take at most ``max_driver_bytes`` as float32
        (one job to count them, one to collect them), else ``"lloyd"``.
        ``"lloyd"``: initial centers by :class:`bovw.KMeans`'s initialisation
        (k-means++) on the same driver sample, then :func:`kmeans_lloyd` over
        all the descriptors, one Rust call per partition and iteration (one
        Spark job per iteration).
    kind : {"kmeans", "kmajority"}, default "kmeans"
        ``"kmajority"``: :class:`bovw.KMajority` (Hamming distance, binary
        words) on ORB descriptors, on the driver (``"sample"``/``"auto"``).
    max_iter, tol, random_state
        As in :class:`bovw.KMeans`.
    max_driver_bytes : int, default 1 GiB
        See ``algorithm="auto"``. Mind ``spark.driver.maxResultSize`` (1g by
        default) and the driver's memory.
    n_threads : int, optional
        Threads of the driver-side fit (default all cores).

    Returns
    -------
    bovw.KMeans or bovw.KMajority
        Fitted: ``cluster_centers_`` is the vocabulary.
    """
    import bovw

    if algorithm not in ("sample", "lloyd", "auto"):
        raise ValueError(f"algorithm: expected 'sample', 'auto' or 'lloyd', got {algorithm!r}")
    if kind not in ("kmeans", "kmajority"):
        raise ValueError(f"kind: expected 'kmeans' or 'kmajority', got {kind!r}")
    if kind == "kmajority" and algorithm == "lloyd":
        raise ValueError("kind='kmajority' is fitted on the driver: use algorithm='sample' or 'auto'")
    fraction, cap = sample_fraction, max_sample
    if algorithm == "auto":
        d, _ = descriptor_layout(descriptors)
        row = descriptors.where("error IS NULL AND n_keypoints > 0").selectExpr("sum(n_keypoints)").first()
        n_desc = (row[0] if row is not None else 0) or 0
        if n_desc * d * 4 <= max_driver_bytes:
            algorithm, fraction, cap = "sample", 1.0, None
        else:
            algorithm = "lloyd"
    X = sample_descriptors(descriptors, fraction=fraction, max_descriptors=cap, random_state=random_state,
                           dtype=np.uint8 if kind == "kmajority" else np.float32)
    if kind == "kmajority":
        km = bovw.KMajority(n_clusters=n_clusters, max_iter=max_iter, random_state=random_state,
                            **_with_threads(bovw.KMajority, n_threads, kmeans_params))
        return km.fit(X)
    if algorithm == "sample":
        # Yinyang bounds by default: the same result as Lloyd's, faster.
        params = {"algorithm": "elkan", **kmeans_params}
        km = bovw.KMeans(n_clusters=n_clusters, max_iter=max_iter, tol=tol, random_state=random_state,
                         **_with_threads(bovw.KMeans, n_threads, params))
        return km.fit(X)
    init = _kmeans_init(X, n_clusters, random_state, n_threads, kmeans_params)
    centers, inertia, n_iter = kmeans_lloyd(descriptors, init, max_iter=max_iter, tol=tol)
    return _fitted_kmeans(centers, inertia, n_iter, max_iter, tol, random_state)


def _with_threads(cls: Any, n_threads: int | None, params: dict) -> dict:
    import inspect

    params = dict(params)
    if n_threads is not None and "n_threads" in inspect.signature(cls).parameters:
        params["n_threads"] = n_threads
    return params


def _kmeans_init(X: np.ndarray, n_clusters: int, random_state: int, n_threads: int | None, params: dict) -> np.ndarray:
    """k-means++ (greedy, scikit-learn's) on the driver sample: one Rust call."""
    from bovw.cluster import kmeans_plusplus

    centers, _ = kmeans_plusplus(X, int(n_clusters), random_state=random_state, n_threads=n_threads)
    return np.asarray(centers)


def _fitted_kmeans(centers: np.ndarray, inertia: float, n_iter: int, max_iter: int, tol: float,
                   random_state: int) -> Any:
    """A :class:`bovw.KMeans` whose fitted attributes are the distributed result."""
    import bovw

    km = bovw.KMeans(n_clusters=centers.shape[0], init=centers, n_init=1, max_iter=max_iter, tol=tol,
                     random_state=random_state)
    km.cluster_centers_ = centers
    km.inertia_ = float(inertia)
    km.n_iter_ = int(n_iter)
    km.n_features_in_ = centers.shape[1]
    km._n_features_out = centers.shape[0]
    return km


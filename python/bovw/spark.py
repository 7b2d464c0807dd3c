"""bovw on Apache Spark: the drop-in path for the seed notebooks.

Every stage runs inside ``DataFrame.mapInArrow`` (Spark >= 3.3), so Spark
hands each Python worker whole Arrow record batches and bovw's Rust kernels
process a batch per call: no row-by-row UDF, no pandas in between, no cv2 in
the executors.

=====================  =====================================================
Stage                  bovw.spark
=====================  =====================================================
images                 :func:`read_images` (``binaryFile`` locally or on EMR;
                       driver-side listing + executor-side fetch for any
                       S3-compatible endpoint, no extra JVM jars)
descriptors            :func:`extract_descriptors` (SIFT or ORB)
vocabulary             :func:`fit_vocabulary`: a seeded sample collected to the
                       driver and :class:`bovw.KMeans` (``algorithm="sample"``),
                       or a distributed Lloyd where each iteration is one
                       Rust call per partition (``algorithm="lloyd"``)
bag of visual words    :func:`bow_histograms` (from images, fused, or from a
                       descriptors column)
PCA                    :func:`fit_pca` (per-partition partial sums) and
                       :func:`pca_transform`
Spark ML interop       :func:`to_ml_vectors` / :func:`from_ml_vectors`
output                 :func:`write_parquet` (local, HDFS, ``s3://``)
whole job              :func:`run_job` (``bovw run --engine spark``)
=====================  =====================================================

Rows keep ``path``, ``label`` (the parent folder of the file, URL-decoded:
Spark's ``binaryFile`` gives ``file:/.../Apple%20Braeburn/0_100.jpg``) and
``split`` (``Training``/``Test`` when the grandparent folder is one, else
null), and carry an ``error`` column (null when fine) instead of failing the
task on an image that cannot be decoded.

Threads
-------
Each Spark task is one Python worker; kernels run with ``n_threads`` threads
per task, by default the task's CPUs (``spark.task.cpus``, normally 1), so an
executor with ``c`` cores runs ``c`` single-threaded tasks and is not
oversubscribed. ``RAYON_NUM_THREADS`` is not needed on executors.

Batch sizes
-----------
``mapInArrow`` receives batches of at most
``spark.sql.execution.arrow.maxRecordsPerBatch`` rows (default 10,000). A
batch holds the encoded files of its rows, plus their descriptors once
extracted: with 5 MB photos that is 50 GB for the default. Call
:func:`configure_arrow_batches` (or set the option yourself) so that
``records x average file size`` stays around 64 MB per task; the functions
here also slice every incoming batch into chunks of ``batch_size`` rows
(default 256) before calling a kernel, which bounds the descriptor and output
memory. Decoding and SIFT work on one image at a time per thread, so their
peak memory depends on the image size, not the batch size.
"""

from __future__ import annotations

import json
import os
import sys
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence
from urllib.parse import unquote, urlparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "BINARY_FILE_SCHEMA",
    "BLOB_LAYOUTS",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_DRIVER_BYTES",
    "blob_matrix",
    "bow_histograms",
    "descriptor_blobs",
    "configure_arrow_batches",
    "descriptor_matrix",
    "vector_matrix",
    "descriptors_schema",
    "extract_descriptors",
    "fit_pca",
    "fit_vocabulary",
    "from_ml_vectors",
    "kmeans_lloyd",
    "label_from_path",
    "list_s3_images",
    "nested_descriptors",
    "pca_transform",
    "read_images",
    "run_job",
    "s3_filesystem",
    "sample_descriptors",
    "session",
    "split_from_path",
    "to_ml_vectors",
    "write_parquet",
]

#: Spark's ``binaryFile`` schema, as a DDL string.
BINARY_FILE_SCHEMA = "path string, modificationTime timestamp, length bigint, content binary"

#: Rows per kernel call inside a ``mapInArrow`` task (see "Batch sizes").
DEFAULT_BATCH_SIZE = 256

#: Target bytes of encoded images per Arrow batch (see :func:`configure_arrow_batches`).
DEFAULT_TARGET_BATCH_BYTES = 64 * 1024 * 1024

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_SPLIT_NAMES = {"training": "Training", "train": "Training", "test": "Test", "validation": "Validation"}
_GLOB = "*.{jpg,jpeg,png,JPG,JPEG,PNG}"


# --------------------------------------------------------------------------
# paths, labels
# --------------------------------------------------------------------------


def label_from_path(path: str) -> str | None:
    """The image's class: its parent folder's name, URL-decoded.

    Does what ``element_at(split(path, '/'), -2)`` does in the seed
    notebooks, then decodes ``%XX`` escapes (Spark's ``binaryFile`` source
    writes paths as URIs: ``file:/data/Apple%20Braeburn/0_100.jpg`` gives
    ``"Apple Braeburn"``). ``+`` is kept as is.

    Parameters
    ----------
    path : str
        A path or URI (``file:``, ``s3://``, ``hdfs://``...).

    Returns
    -------
    str, or None when the path has no parent folder.
    """
    if path is None:
        return None
    parts = path.rstrip("/").split("/")
    if len(parts) < 2 or parts[-2] in ("", "file:") or parts[-2].endswith(":"):
        return None
    return unquote(parts[-2])


def split_from_path(path: str) -> str | None:
    """``"Training"``/``"Test"``/``"Validation"`` when the grandparent folder is
    named so (case-insensitive, ``train`` too), else None."""
    if path is None:
        return None
    parts = path.rstrip("/").split("/")
    if len(parts) < 3:
        return None
    return _SPLIT_NAMES.get(unquote(parts[-3]).lower())


def _labels_and_splits(paths: pa.Array) -> tuple[pa.Array, pa.Array]:
    values = paths.to_pylist()
    return (
        pa.array([label_from_path(p) for p in values], pa.string()),
        pa.array([split_from_path(p) for p in values], pa.string()),
    )


def _is_s3(path: str) -> bool:
    return str(path).split("://", 1)[0].lower() in ("s3", "s3a", "s3n") and "://" in str(path)


# --------------------------------------------------------------------------
# kernel adapters (the only place that knows the Rust API's names)
# --------------------------------------------------------------------------


def _task_threads(n_threads: int | None) -> int:
    if n_threads is not None:
        return int(n_threads)
    try:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        if ctx is not None:
            return max(1, int(ctx.cpus()))
    except Exception:  # pragma: no cover - outside Spark or old Spark
        pass
    return 1


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


def _pca_partial(X: np.ndarray, n_threads: int | None) -> tuple[int, np.ndarray, np.ndarray]:
    """``(count, sum (d,), X^T X (d, d))`` in float64: one Rust call."""
    from bovw.decomposition import pca_partial_sums

    n, s, xtx = pca_partial_sums(X, n_threads=n_threads)
    return int(n), np.asarray(s, np.float64), np.asarray(xtx, np.float64)


def _bow_counts(X: np.ndarray, offsets: np.ndarray, vocabulary: np.ndarray, n_threads: int) -> np.ndarray:
    """(n_rows, k) word counts of the descriptors ``X`` (row i:
    ``X[offsets[i]:offsets[i+1]]``): :class:`bovw.BagOfWords` (float
    vocabulary, Euclidean) or ``kmajority_predict`` + ``bow_histograms``
    (uint8 vocabulary, Hamming); one or two Rust calls."""
    import bovw

    k = vocabulary.shape[0]
    if vocabulary.dtype == np.uint8:
        if X.dtype != np.uint8:
            raise TypeError("vocabulary: a binary (uint8, K-majority) vocabulary needs binary (ORB) descriptors")
        from bovw import _bovw

        if X.shape[0]:
            words, _ = _bovw.kmajority_predict(np.ascontiguousarray(X), vocabulary, n_threads=n_threads)
        else:
            words = np.zeros(0, np.int64)
        H = bovw.bow_histograms(np.asarray(words, np.int64), offsets, n_words=k)
    else:
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.shape[0] == 0:
            return np.zeros((len(offsets) - 1, k), np.float64)
        H = bovw.BagOfWords(vocabulary, n_threads=n_threads).counts(X, offsets)
    return np.asarray(H, np.float64)


# --------------------------------------------------------------------------
# Arrow helpers (run in the executors)
# --------------------------------------------------------------------------


def _chunks(rb: pa.RecordBatch, size: int) -> Iterator[pa.RecordBatch]:
    if rb.num_rows <= size:
        yield rb
        return
    for start in range(0, rb.num_rows, size):
        yield rb.slice(start, size)


def _col(rb: pa.RecordBatch, name: str) -> pa.Array | None:
    i = rb.schema.get_field_index(name)
    return rb.column(i) if i >= 0 else None


def descriptor_matrix(column: Any, width: int | None = None, n_keypoints: Any = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Flatten an Arrow descriptors column into one matrix.

    Parameters
    ----------
    column : pyarrow array, one row per image
        A blob column (``binary``: :func:`extract_descriptors`'s default
        layout, see :func:`blob_matrix`), ``list<list<float>>`` or
        ``list<fixed_size_list<float32, d>>`` (SIFT), ``list<binary>`` or
        ``list<fixed_size_binary(32)>`` (ORB: each byte becomes one float
        feature, 0..255, as cv2's uint8 descriptors do when given to a
        K-Means). Null rows count as empty.
    width : int, optional
        Expected descriptor width; checked when given.
    n_keypoints : array-like of int, optional
        The ``n_keypoints`` column: tells a blob column's layout (else ``width``).

    Returns
    -------
    X : ndarray of shape (n_descriptors, d), dtype float32
    counts : ndarray of shape (n_rows,), dtype int64
        Descriptors per row; ``X`` lists row 0's first.

    Raises
    ------
    ValueError
        If descriptor lengths differ within the column or from ``width``.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        X, offsets = blob_matrix(column, n_keypoints, width=width)
        if width is not None and X.shape[1] != width:
            raise ValueError(f"descriptors: expected width {width}, got {X.shape[1]}")
        return X.astype(np.float32, copy=False), np.diff(offsets)
    counts = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    inner = pc.list_flatten(column)
    t = inner.type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        d = t.byte_width if pa.types.is_fixed_size_binary(t) else None
        if d is None:
            lens = pc.binary_length(inner).to_numpy(zero_copy_only=False) if len(inner) else np.zeros(0, np.int64)
            d = int(lens[0]) if len(lens) else (width or 32)
            if len(lens) and (lens != d).any():
                raise ValueError(f"descriptors: binary descriptors of different lengths ({sorted(set(lens.tolist()))})")
            inner = inner.cast(pa.binary(d))
        if width is not None and d != width:
            raise ValueError(f"descriptors: expected width {width}, got {d}")
        buf = inner.buffers()[1]
        raw = np.frombuffer(buf, np.uint8) if buf is not None else np.zeros(0, np.uint8)
        raw = raw[inner.offset * d : (inner.offset + len(inner)) * d]
        return raw.reshape(-1, d).astype(np.float32), counts
    if pa.types.is_fixed_size_list(t):
        d = t.list_size
        values = pc.list_flatten(inner)
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        lens = pc.list_value_length(inner).to_numpy(zero_copy_only=False) if len(inner) else np.zeros(0, np.int64)
        d = int(lens[0]) if len(lens) else (width or 0)
        if len(lens) and (lens != d).any():
            raise ValueError(f"descriptors: descriptors of different lengths ({sorted(set(lens.tolist()))})")
        values = pc.list_flatten(inner)
    else:
        raise TypeError(f"descriptors: expected a list of float lists or binaries, got {column.type}")
    if width is not None and len(inner) and d != width:
        raise ValueError(f"descriptors: expected width {width}, got {d}")
    X = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return X.reshape(len(inner), d) if d else X.reshape(0, width or 0), counts


def vector_matrix(column: Any) -> np.ndarray:
    """An ``array<double>``/``array<float>`` column (one vector per row, no
    nulls) as an (n_rows, d) float64 matrix.

    Raises
    ------
    ValueError
        If the rows have different lengths.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    lens = pc.list_value_length(column).to_numpy(zero_copy_only=False) if n else np.zeros(0, np.int64)
    d = int(lens[0]) if n else 0
    if n and (lens != d).any():
        raise ValueError(f"vectors of different lengths ({sorted(set(lens.tolist()))[:5]})")
    values = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    return values.reshape(n, d)


def _canonical_descriptors(column: pa.Array, n_keypoints: Any = None) -> pa.Array:
    """A blob column or Spark's ``array<array<float>>`` / ``array<binary>`` back to bovw's
    ``list<fixed_size_list<float32, d>>`` / ``list<fixed_size_binary(32)>``."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_binary(column.type):
        return _blob_to_list(column, n_keypoints)
    t = column.type.value_type
    if pa.types.is_fixed_size_list(t) or pa.types.is_fixed_size_binary(t):
        return column
    offsets = column.offsets  # takes the slice offset into account
    inner = column.values.slice(offsets[0].as_py(), offsets[-1].as_py() - offsets[0].as_py())
    if pa.types.is_binary(t):
        lens = pc.binary_length(inner).to_numpy(zero_copy_only=False)
        d = int(lens[0]) if len(lens) else 32
        fixed = inner.cast(pa.binary(d))
    else:
        X, _ = descriptor_matrix(column)
        d = X.shape[1] if X.size else 128
        fixed = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1), pa.float32()), d)
    new_offsets = pa.array(np.asarray(offsets.to_numpy(zero_copy_only=False), np.int32) - offsets[0].as_py(), pa.int32())
    return pa.ListArray.from_arrays(new_offsets, fixed, mask=column.is_null())


def _spark_descriptors(column: pa.Array) -> pa.Array:
    """bovw's fixed-size descriptor lists to types Spark's Arrow reader takes."""
    t = column.type.value_type
    if pa.types.is_fixed_size_list(t):
        return column.cast(pa.list_(pa.list_(pa.float32())))
    if pa.types.is_fixed_size_binary(t):
        return column.cast(pa.list_(pa.binary()))
    return column


def _float_lists(X: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    """(n, d) float matrix as a ``list<double>`` array (Spark ``array<double>``)."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    n, d = X.shape
    offsets = pa.array(np.arange(0, n * d + 1, d, dtype=np.int32) if n else np.zeros(1, np.int32), pa.int32())
    arr = pa.ListArray.from_arrays(offsets, pa.array(X.reshape(-1), pa.float64()))
    if mask is not None and mask.any():
        arr = pa.ListArray.from_arrays(offsets, pa.array(X.reshape(-1), pa.float64()), mask=pa.array(mask))
    return arr


def _keep_columns(rb: pa.RecordBatch) -> tuple[list[pa.Array], list[str]]:
    """``path``, ``label``, ``split`` of a batch (label/split derived from the path when absent)."""
    path = _col(rb, "path")
    if path is None:
        raise KeyError(f"no column 'path' in the batch (columns: {rb.schema.names})")
    label, split = _col(rb, "label"), _col(rb, "split")
    if label is None or split is None:
        lab, spl = _labels_and_splits(path)
        label = lab if label is None else label
        split = spl if split is None else split
    return [path, label.cast(pa.string()), split.cast(pa.string())], ["path", "label", "split"]


# --------------------------------------------------------------------------
# descriptor blobs: one binary value per image (the default layout on Spark)
# --------------------------------------------------------------------------

#: Bytes per descriptor in a blob, and how to read them: SIFT is 128 float32
#: (little-endian, 512 bytes), ORB 32 uint8 bytes.
BLOB_LAYOUTS = {512: (np.dtype("<f4"), 128), 32: (np.dtype(np.uint8), 32)}


def _validity_buffer(column: pa.Array) -> pa.Buffer | None:
    if not column.null_count:
        return None
    return pc.is_valid(column).buffers()[1]


def descriptor_blobs(column: pa.Array) -> pa.Array:
    """bovw's ``list<fixed_size_list<float32, 128>>`` (SIFT) or
    ``list<fixed_size_binary(32)>`` (ORB) descriptors column as one binary
    value per image, without copying the descriptors.

    Each value holds the image's descriptors row-major: SIFT ``n x 128``
    float32 (little-endian, 512 bytes per descriptor), ORB ``n x 32`` bytes.
    Only the offsets are computed (list offsets x bytes per descriptor); the
    data buffer is the kernel's. Null rows stay null; an image without
    keypoints (or with an error) has an empty value.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    t = column.type
    if pa.types.is_binary(t):
        return column
    if not pa.types.is_list(t):
        raise TypeError(f"descriptors: expected list<fixed_size_list<float32>> or list<fixed_size_binary>, got {t}")
    inner = column.values  # ignores column.offset; column.offsets accounts for it
    vt = inner.type
    if pa.types.is_fixed_size_list(vt):
        values = inner.values  # ignores inner.offset
        if values.type != pa.float32():
            values = values.cast(pa.float32())
        width = vt.list_size * 4
        base = (values.offset + inner.offset * vt.list_size) * 4
        data = values.buffers()[1]
    elif pa.types.is_fixed_size_binary(vt):
        width = vt.byte_width
        base = inner.offset * width
        data = inner.buffers()[1]
    else:
        return descriptor_blobs(_canonical_descriptors(column))
    offsets = np.asarray(column.offsets.to_numpy(zero_copy_only=False), np.int64) * width + base
    if len(offsets) and offsets[-1] >= 2**31:
        raise ValueError("descriptors: more than 2 GB of descriptors in one batch; lower batch_size")
    if data is None:
        data = pa.py_buffer(b"")
    return pa.Array.from_buffers(
        pa.binary(), len(column), [_validity_buffer(column), pa.py_buffer(offsets.astype(np.int32)), data],
        null_count=column.null_count,
    )


def _blob_bytes_per_descriptor(blobs: pa.Array, n_keypoints: Any = None, width: int | None = None) -> int:
    """Bytes per descriptor of a blob column: from ``n_keypoints`` (length /
    count of the first row with keypoints), else from ``width`` (128: SIFT
    float32, 32: ORB bytes)."""
    if n_keypoints is not None:
        if isinstance(n_keypoints, (pa.Array, pa.ChunkedArray)):
            n_keypoints = pc.fill_null(n_keypoints, 0).to_numpy(zero_copy_only=False)
        n = np.asarray(n_keypoints, np.int64)
        lens = pc.fill_null(pc.binary_length(blobs), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        has = n > 0
        if has.any():
            per = lens[has] // n[has]
            if (per * n[has] != lens[has]).any() or (per != per[0]).any():
                raise ValueError("descriptors: blob lengths are not n_keypoints x one descriptor size")
            if int(per[0]) not in BLOB_LAYOUTS:
                raise ValueError(f"descriptors: {int(per[0])} bytes per descriptor; expected 512 (SIFT) or 32 (ORB)")
            return int(per[0])
    if width is not None:
        return 512 if int(width) == 128 else int(width)
    if n_keypoints is not None:
        return 512
    raise ValueError("descriptors: a binary descriptors column needs n_keypoints (or width) to be read")


def _binary_offsets(blobs: pa.Array) -> np.ndarray:
    """The n + 1 value offsets of a (large_)binary array, int64, slice-aware."""
    buf = blobs.buffers()[1]
    if buf is None or len(blobs) == 0:
        return np.zeros(1, np.int64)
    dtype = np.int64 if pa.types.is_large_binary(blobs.type) else np.int32
    return np.frombuffer(buf, dtype)[blobs.offset : blobs.offset + len(blobs) + 1].astype(np.int64)


def blob_matrix(blobs: Any, n_keypoints: Any = None, *, width: int | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Read a descriptor blob column (:func:`descriptor_blobs`) without copying.

    Parameters
    ----------
    blobs : pyarrow binary array (one value per image; nulls count as empty)
    n_keypoints : array-like of int, optional
        Descriptors per image (the ``n_keypoints`` column); gives the layout.
    width : int, optional
        128 (SIFT, float32) or 32 (ORB, bytes) when ``n_keypoints`` is not given.

    Returns
    -------
    X : ndarray of shape (n_descriptors, d)
        float32 for SIFT, uint8 for ORB; a view of the Arrow buffer (read-only).
    offsets : ndarray of shape (n_rows + 1,), dtype int64
        Row i's descriptors are ``X[offsets[i]:offsets[i + 1]]``.
    """
    if isinstance(blobs, pa.ChunkedArray):
        blobs = blobs.combine_chunks()
    per = _blob_bytes_per_descriptor(blobs, n_keypoints, width)
    dtype, d = BLOB_LAYOUTS.get(per, (np.dtype(np.uint8), per))
    offs = _binary_offsets(blobs)
    if blobs.null_count:  # null values may still span bytes in a foreign array: count them as empty
        lens = np.diff(offs)
        lens[~blobs.is_valid().to_numpy(zero_copy_only=False)] = 0
        if (np.cumsum(lens) + offs[0] != offs[1:]).any():
            keep = blobs.is_valid()
            blobs = pa.array([b if v else b"" for b, v in zip(blobs.to_pylist(), keep.to_pylist())], pa.binary())
            offs = _binary_offsets(blobs)
    if (np.diff(offs) % per).any():
        raise ValueError(f"descriptors: blob lengths are not multiples of {per} bytes")
    data = blobs.buffers()[2]
    start, stop = int(offs[0]), int(offs[-1])
    if data is None or stop == start:
        X = np.zeros((0, d), dtype)
    else:
        X = np.frombuffer(data, dtype, count=(stop - start) // dtype.itemsize, offset=start).reshape(-1, d)
    return X, (offs - start) // per


def nested_descriptors(df: "DataFrame", col: str = "descriptors") -> "DataFrame":
    """Turn a blob descriptors column into nested lists, for users who want them.

    SIFT blobs become ``array<array<float>>`` (one 128-value array per
    descriptor), ORB blobs ``array<binary>`` (one 32-byte value per
    descriptor), as ``extract_descriptors(..., layout="nested")`` gives. Needs
    the ``n_keypoints`` column (to tell the layouts apart); other columns are
    kept. Nested lists cost about 10x more to move between the JVM and Python
    than blobs: keep blobs for bovw's own stages.
    """
    from pyspark.sql.types import ArrayType, BinaryType, FloatType, StructField, StructType

    if "n_keypoints" not in df.columns:
        raise KeyError("nested_descriptors: needs the n_keypoints column")
    rows = df.where("n_keypoints > 0").select("n_keypoints", col).limit(1).collect()
    per = (len(rows[0][1]) // rows[0][0]) if rows else 512
    if per not in BLOB_LAYOUTS:
        raise ValueError(f"nested_descriptors: {per} bytes per descriptor; expected 512 (SIFT) or 32 (ORB)")
    new_type = ArrayType(ArrayType(FloatType())) if per == 512 else ArrayType(BinaryType())
    schema = StructType([StructField(f.name, new_type, True) if f.name == col else f for f in df.schema.fields])

    def fn(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for rb in batches:
            i = rb.schema.get_field_index(col)
            cols = list(rb.columns)
            cols[i] = _spark_descriptors(_blob_to_list(cols[i], _col(rb, "n_keypoints")))
            yield pa.RecordBatch.from_arrays(cols, names=rb.schema.names)

    return df.mapInArrow(fn, schema)


def _blob_to_list(blobs: pa.Array, n_keypoints: Any = None, width: int | None = None) -> pa.Array:
    """A blob column as bovw's canonical ``list<fixed_size_list<float32, 128>>``
    (SIFT) or ``list<fixed_size_binary(32)>`` (ORB), sharing the blob buffer."""
    X, offsets = blob_matrix(blobs, n_keypoints, width=width)
    d = X.shape[1]
    if X.dtype == np.uint8:
        inner = pa.Array.from_buffers(pa.binary(d), X.shape[0], [None, pa.py_buffer(X)])
    else:
        inner = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1), pa.float32()), d)
    mask = blobs.is_null() if blobs.null_count else None
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), inner, mask=mask)


# --------------------------------------------------------------------------
# mapInArrow functions
# --------------------------------------------------------------------------


def descriptors_schema(method: str = "sift", layout: str = "blob") -> str:
    """DDL schema of :func:`extract_descriptors`'s output for ``method`` and ``layout``."""
    if _check_layout(layout) == "blob":
        desc = "binary"
    else:
        desc = "array<array<float>>" if str(method).lower() == "sift" else "array<binary>"
    return f"path string, label string, split string, n_keypoints int, descriptors {desc}, error string"


def _check_layout(layout: str) -> str:
    if layout not in ("blob", "nested"):
        raise ValueError(f"layout: expected 'blob' or 'nested', got {layout!r}")
    return layout


#: DDL schema of :func:`bow_histograms`'s output.
BOW_SCHEMA = "path string, label string, split string, n_keypoints int, bow array<double>, error string"


def descriptors_fn(
    method: str = "sift", *, n_threads: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
    layout: str = "blob", keep: Sequence[str] = (), **params: Any
) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function behind :func:`extract_descriptors`.

    Takes batches with ``content`` and ``path`` (``label``/``split`` kept or
    derived from the path) and yields batches of :func:`descriptors_schema`
    (then the ``keep`` columns, passed through).
    """
    method = _check_method(method)
    _check_batch_size(batch_size)
    convert = descriptor_blobs if _check_layout(layout) == "blob" else _spark_descriptors
    keep = list(keep)

    def fn(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import bovw

        threads = _task_threads(n_threads)
        for rb in batches:
            for chunk in _chunks(rb, batch_size):
                cols0, names = _keep_columns(chunk)
                res = bovw.extract_descriptors(
                    chunk.select(["content"]), method, keep_columns=[], n_threads=threads, **params
                )
                cols = cols0 + [
                    res.column("n_keypoints"),
                    convert(res.column("descriptors")),
                    res.column("error"),
                ] + [chunk.column(chunk.schema.get_field_index(c)) for c in keep]
                yield pa.RecordBatch.from_arrays(cols, names=names + ["n_keypoints", "descriptors", "error"] + keep)

    return fn


def _check_method(method: str) -> str:
    m = str(method).lower()
    if m not in ("sift", "orb"):
        raise ValueError(f"method: expected 'sift' or 'orb', got {method!r}")
    return m


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")


def _histogram_matrix(descriptors: pa.Array, vocabulary: np.ndarray, n_threads: int,
                      n_keypoints: Any = None) -> np.ndarray:
    """(n_rows, k) float64 bag-of-words counts of an Arrow descriptors column
    (blobs or lists; null rows: zeros). A uint8 vocabulary (K-majority, ORB)
    assigns words by Hamming distance, a float one by Euclidean distance."""
    if isinstance(descriptors, pa.ChunkedArray):
        descriptors = descriptors.combine_chunks()
    if pa.types.is_binary(descriptors.type):
        X, offsets = blob_matrix(descriptors, n_keypoints, width=vocabulary.shape[1])
    elif vocabulary.dtype == np.uint8:
        X, offsets = blob_matrix(descriptor_blobs(_canonical_descriptors(descriptors)), width=vocabulary.shape[1])
    else:
        X, counts = descriptor_matrix(_canonical_descriptors(descriptors))
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return _bow_counts(X, offsets, vocabulary, n_threads)


def bow_fn(
    vocabulary: np.ndarray,
    method: str | None = None,
    *,
    n_threads: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    **params: Any,
) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function behind :func:`bow_histograms`.

    With ``method`` the input is images (``content``), descriptors are
    extracted and turned into histograms in one pass; without it the input
    has a ``descriptors`` column (and ``n_keypoints``/``error`` are kept).
    """
    vocabulary = np.asarray(vocabulary)
    vocabulary = np.ascontiguousarray(vocabulary, dtype=np.uint8 if vocabulary.dtype == np.uint8 else np.float32)
    if vocabulary.ndim != 2 or vocabulary.shape[0] < 1:
        raise ValueError(f"vocabulary: expected shape (n_clusters, n_features), got {vocabulary.shape}")
    if method is not None:
        method = _check_method(method)
    _check_batch_size(batch_size)

    def fn(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import bovw

        threads = _task_threads(n_threads)
        for rb in batches:
            for chunk in _chunks(rb, batch_size):
                keep, names = _keep_columns(chunk)
                if method is not None:
                    res = bovw.extract_descriptors(
                        chunk.select(["content"]), method, keep_columns=[], n_threads=threads, **params
                    )
                    n_kp, desc, err = res.column("n_keypoints"), res.column("descriptors"), res.column("error")
                else:
                    desc = chunk.column(chunk.schema.get_field_index("descriptors"))
                    n_kp = _col(chunk, "n_keypoints")
                    if n_kp is None and pa.types.is_binary(desc.type):
                        per = _blob_bytes_per_descriptor(desc, None, vocabulary.shape[1])
                        n_kp = pc.divide(pc.fill_null(pc.binary_length(desc), 0), per).cast(pa.int32())
                    elif n_kp is None:
                        n_kp = pc.list_value_length(desc).cast(pa.int32())
                    err = _col(chunk, "error")
                    if err is None:
                        err = pa.nulls(chunk.num_rows, pa.string())
                H = _histogram_matrix(desc, vocabulary, threads, n_kp)
                failed = err.is_valid().to_numpy(zero_copy_only=False)
                cols = keep + [n_kp.cast(pa.int32()), _float_lists(H, failed), err]
                yield pa.RecordBatch.from_arrays(cols, names=names + ["n_keypoints", "bow", "error"])

    return fn


def pca_fn(
    pca: Any, input_col: str = "bow", output_col: str = "pca_features", *, batch_size: int = DEFAULT_BATCH_SIZE
) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function behind :func:`pca_transform`: appends
    ``output_col`` (``array<double>``, null where ``input_col`` is null)."""
    _check_batch_size(batch_size)

    def fn(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for rb in batches:
            for chunk in _chunks(rb, batch_size):
                col = chunk.column(chunk.schema.get_field_index(input_col))
                valid = col.is_valid().to_numpy(zero_copy_only=False)
                X = np.zeros((chunk.num_rows, pca.n_features_in_), np.float64)
                if valid.any():
                    X[valid] = vector_matrix(col.filter(col.is_valid()))
                Z = np.asarray(pca.transform(X), np.float64) if chunk.num_rows else np.zeros((0, pca.n_components_))
                out = _float_lists(Z, ~valid)
                yield pa.RecordBatch.from_arrays(
                    [chunk.column(i) for i in range(chunk.num_columns)] + [out],
                    names=chunk.schema.names + [output_col],
                )

    return fn


# --------------------------------------------------------------------------
# DataFrame API
# --------------------------------------------------------------------------


def extract_descriptors(
    images: "DataFrame",
    method: str = "sift",
    *,
    n_threads: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    layout: str = "blob",
    keep: Sequence[str] = (),
    **params: Any,
) -> "DataFrame":
    """Keypoint descriptors of every image, one row per image.

    Replaces the seed notebooks' ``rdd.map(cv2 SIFT)`` /
    ``udf(extract_sift)`` stage::

        descriptors = bovw.spark.extract_descriptors(images, "sift")

    Parameters
    ----------
    images : pyspark.sql.DataFrame
        Spark's ``binaryFile`` schema (``path``, ``content``; ``label`` and
        ``split`` kept when present) as :func:`read_images` gives.
    method : {"sift", "orb"}
    n_threads : int, optional
        Kernel threads per task; default the task's CPUs (``spark.task.cpus``).
    batch_size : int, default 256
        Rows per kernel call.
    layout : {"blob", "nested"}, default "blob"
        ``"blob"``: ``descriptors`` is one ``binary`` value per image, the
        image's descriptors row-major (SIFT: ``n_keypoints x 128`` float32,
        little-endian, 512 bytes each; ORB: ``n_keypoints x 32`` bytes),
        built on the kernel's Arrow buffer without copying and read back the
        same way by :func:`fit_vocabulary`, :func:`bow_histograms`,
        :func:`sample_descriptors` (:func:`blob_matrix` in your own code).
        ``"nested"``: SIFT ``array<array<float>>``, ORB ``array<binary>``,
        as the seed notebooks' UDFs give; about 10x slower to move between
        the JVM and Python (:func:`nested_descriptors` converts blobs later).
    keep : sequence of str
        More input columns passed through, after ``error``.
    **params
        Parameters of :class:`bovw.SIFT` / :class:`bovw.ORB` (OpenCV names too).

    Returns
    -------
    pyspark.sql.DataFrame
        ``path``, ``label``, ``split`` (strings), ``n_keypoints`` (int, null
        on error), ``descriptors`` (see ``layout``; empty on error), ``error``
        (string, null when fine), then the ``keep`` columns.

    Raises
    ------
    ValueError
        If ``method``, ``batch_size`` or ``layout`` is invalid.
    """
    schema: Any = descriptors_schema(method, layout)
    if keep:
        from pyspark.sql.types import StructType

        schema = StructType.fromDDL(schema) if hasattr(StructType, "fromDDL") else None
        if schema is None:  # pragma: no cover - Spark < 4
            from pyspark.sql.types import _parse_datatype_string

            schema = _parse_datatype_string(descriptors_schema(method, layout))
        for c in keep:
            schema.add(images.schema[c])
    return images.mapInArrow(
        descriptors_fn(method, n_threads=n_threads, batch_size=batch_size, layout=layout, keep=keep, **params),
        schema,
    )


def bow_histograms(
    df: "DataFrame",
    vocabulary: Any,
    *,
    method: str | None = None,
    n_threads: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    **params: Any,
) -> "DataFrame":
    """Bag-of-visual-words histograms: counts of each visual word per image.

    Replaces ``explode`` + ``KMeansModel.transform`` + ``CountVectorizer``::

        bow = bovw.spark.bow_histograms(descriptors, kmeans.cluster_centers_)
        # or straight from the images, without storing the descriptors:
        bow = bovw.spark.bow_histograms(images, kmeans.cluster_centers_, method="sift")

    Parameters
    ----------
    df : pyspark.sql.DataFrame
        Images (``binaryFile`` schema) when ``method`` is given, else the
        output of :func:`extract_descriptors`.
    vocabulary : ndarray of shape (n_clusters, n_features) or a fitted KMeans
        The visual words (``cluster_centers_``).
    method : {"sift", "orb"}, optional
        Extract descriptors first (fused, one pass).

    Returns
    -------
    pyspark.sql.DataFrame
        ``path``, ``label``, ``split``, ``n_keypoints``, ``bow``
        (``array<double>`` of length n_clusters: the count of the image's
        descriptors nearest to each word, in index order; null on error),
        ``error``.
    """
    vocab = getattr(vocabulary, "cluster_centers_", vocabulary)
    fn = bow_fn(np.asarray(vocab), method, n_threads=n_threads, batch_size=batch_size, **params)
    return df.mapInArrow(fn, BOW_SCHEMA)


def pca_transform(
    df: "DataFrame", pca: Any, *, input_col: str = "bow", output_col: str = "pca_features",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> "DataFrame":
    """Project a vector column with a fitted :class:`bovw.PCA`.

    Replaces ``pyspark.ml.feature.PCA(...).fit(df).transform(df)``'s
    transform; all columns are kept and ``output_col`` (``array<double>`` of
    length ``pca.n_components_``) is appended.
    """
    from pyspark.sql.types import ArrayType, DoubleType, StructField, StructType

    if output_col in df.columns:
        raise ValueError(f"output_col: {output_col!r} is already a column")
    schema = StructType(list(df.schema.fields) + [StructField(output_col, ArrayType(DoubleType()), True)])
    return df.mapInArrow(pca_fn(pca, input_col, output_col, batch_size=batch_size), schema)


def to_ml_vectors(df: "DataFrame", cols: Sequence[str] = ("bow", "pca_features")) -> "DataFrame":
    """Turn ``array<double>`` columns into Spark ML ``Vector`` columns (in the
    JVM, with ``pyspark.ml.functions.array_to_vector``: no Python UDF)."""
    from pyspark.ml.functions import array_to_vector

    for c in cols:
        if c in df.columns:
            df = df.withColumn(c, array_to_vector(c))
    return df


def from_ml_vectors(df: "DataFrame", cols: Sequence[str] = ("features",)) -> "DataFrame":
    """Turn Spark ML ``Vector`` columns into ``array<double>`` (``vector_to_array``),
    e.g. before writing Parquet that pandas reads as plain arrays."""
    from pyspark.ml.functions import vector_to_array

    for c in cols:
        if c in df.columns:
            df = df.withColumn(c, vector_to_array(c))
    return df


# --------------------------------------------------------------------------
# session, batches
# --------------------------------------------------------------------------


def session(
    master: str | None = None,
    app_name: str = "bovw",
    *,
    conf: dict | None = None,
    max_records_per_batch: int | None = None,
) -> "SparkSession":
    """Get or create a SparkSession whose Python workers can import bovw.

    Sets ``spark.pyspark.python`` to this interpreter (driver and workers
    then run the same Python, the usual cause of "No module named numpy" in
    executors), ``spark.executorEnv.PYTHONPATH`` to the folder bovw is
    imported from (for a source checkout; harmless for an installed wheel),
    and ``spark.sql.execution.arrow.maxRecordsPerBatch`` when given.
    On a cluster where bovw is installed on every node (EMR bootstrap) pass
    ``conf={"spark.pyspark.python": "/usr/bin/python3"}`` or leave the
    cluster's own setting by calling ``SparkSession.builder`` yourself.

    Parameters
    ----------
    master : str, optional
        ``local[2]``, ``spark://host:7077``, ``yarn``...; default Spark's
        (``spark-submit``'s ``--master``, else ``local[*]``).
    conf : dict, optional
        More ``spark.*`` settings; they win over the defaults above.
    """
    from pyspark.sql import SparkSession

    import bovw

    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(bovw.__file__)))
    settings = {
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.executorEnv.PYTHONPATH": os.pathsep.join(
            [pkg_root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != pkg_root]
        ),
        "spark.ui.showConsoleProgress": "false",
    }
    if max_records_per_batch is not None:
        settings["spark.sql.execution.arrow.maxRecordsPerBatch"] = str(int(max_records_per_batch))
    settings.update(conf or {})
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    for k, v in settings.items():
        builder = builder.config(k, v)
    return builder.getOrCreate()


def recommended_records_per_batch(
    avg_image_bytes: float, target_bytes: int = DEFAULT_TARGET_BATCH_BYTES, max_records: int = 10_000
) -> int:
    """Rows per Arrow batch so that a batch holds about ``target_bytes`` of
    encoded images (at least 1, at most ``max_records``)."""
    if avg_image_bytes <= 0:
        raise ValueError(f"avg_image_bytes: expected > 0, got {avg_image_bytes}")
    return int(min(max_records, max(1, target_bytes // avg_image_bytes)))


def configure_arrow_batches(
    spark: "SparkSession",
    avg_image_bytes: float | None = None,
    *,
    target_bytes: int = DEFAULT_TARGET_BATCH_BYTES,
    records: int | None = None,
) -> int:
    """Set ``spark.sql.execution.arrow.maxRecordsPerBatch`` for images.

    ``records`` when given, else :func:`recommended_records_per_batch` of
    ``avg_image_bytes`` (default 1 MB: 64 images per batch). Fruits-360's
    5 KB images allow the 10,000 maximum; 5 MB photos get 12.

    Returns
    -------
    int : the value set.
    """
    if records is None:
        records = recommended_records_per_batch(avg_image_bytes or 1_000_000, target_bytes)
    if int(records) < 1:
        raise ValueError(f"records: expected >= 1, got {records}")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(int(records)))
    return int(records)


# --------------------------------------------------------------------------
# reading images (local, HDFS, EMR s3://, any S3-compatible endpoint)
# --------------------------------------------------------------------------


def s3_filesystem(endpoint_url: str | None = None, region: str | None = None, **options: Any) -> Any:
    """A ``pyarrow.fs.S3FileSystem`` for AWS or any S3-compatible server.

    Parameters
    ----------
    endpoint_url : str, optional
        ``http://127.0.0.1:9000`` (MinIO, moto, Ceph...); default AWS. The
        scheme picks http/https.
    region : str, optional
        Default ``AWS_DEFAULT_REGION``/``AWS_REGION`` or ``us-east-1``.
    **options
        Passed to ``S3FileSystem`` (``access_key``, ``secret_key``,
        ``session_token``, ``anonymous``...); credentials default to the
        AWS chain (env vars, ``~/.aws``, the EC2/EMR instance profile).
    """
    from pyarrow import fs

    kw: dict[str, Any] = dict(options)
    region = region or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
    kw.setdefault("region", region)
    if endpoint_url:
        u = urlparse(endpoint_url)
        if not u.scheme or not u.netloc:
            raise ValueError(f"endpoint_url: expected a URL like http://127.0.0.1:9000, got {endpoint_url!r}")
        kw["endpoint_override"] = u.netloc
        kw["scheme"] = u.scheme
        kw.setdefault("force_virtual_addressing", False)
    return fs.S3FileSystem(**kw)


def _s3_bucket_key(uri: str) -> str:
    """``s3://bucket/key`` -> ``bucket/key`` (pyarrow's S3 path)."""
    rest = str(uri).split("://", 1)[1]
    return rest.rstrip("/") if rest.endswith("/") else rest


def list_s3_images(
    uri: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    s3_options: dict | None = None,
) -> list[tuple[str, int, int]]:
    """List the images under an ``s3://bucket/prefix/`` URI, on the driver.

    Returns
    -------
    list of (uri, modification time in microseconds since the epoch, size in bytes), sorted by uri

    Raises
    ------
    FileNotFoundError
        If the prefix holds no image.
    """
    from pyarrow import fs as pafs

    filesystem = s3_filesystem(endpoint_url, region, **(s3_options or {}))
    base = _s3_bucket_key(uri)
    scheme = str(uri).split("://", 1)[0]
    exts = tuple(e.lower() for e in extensions)
    infos = filesystem.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    rows = []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        name = info.path.rsplit("/", 1)[-1]
        if name.startswith(".") or not name.lower().endswith(exts):
            continue
        mtime = int(info.mtime_ns // 1000) if info.mtime_ns is not None else 0
        rows.append((f"{scheme}://{info.path}", mtime, int(info.size or 0)))
    if not rows:
        raise FileNotFoundError(f"no images ({', '.join(exts)}) under {uri!r}")
    rows.sort()
    return rows


def _driver_s3_options(s3_options: dict | None) -> dict:
    """S3 options for the executors: the given ones, else the driver's
    ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN`` when
    set (executors may not share the driver's environment); empty otherwise,
    so that executors use their own chain (the EMR instance profile)."""
    if s3_options is not None:
        return dict(s3_options)
    out: dict = {}
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        out["access_key"] = os.environ["AWS_ACCESS_KEY_ID"]
        out["secret_key"] = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
        if os.environ.get("AWS_SESSION_TOKEN"):
            out["session_token"] = os.environ["AWS_SESSION_TOKEN"]
    return out


def _fetch_fn(endpoint_url: str | None, region: str | None, s3_options: dict | None, n_io_threads: int = 8):
    def fn(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from concurrent.futures import ThreadPoolExecutor

        filesystem = s3_filesystem(endpoint_url, region, **(s3_options or {}))

        def get(uri: str) -> bytes | None:
            try:
                with filesystem.open_input_stream(_s3_bucket_key(uri)) as f:
                    return f.read()
            except OSError:
                return None

        with ThreadPoolExecutor(n_io_threads) as pool:
            for rb in batches:
                paths = rb.column(0).to_pylist()
                contents = list(pool.map(get, paths))
                label, split = _labels_and_splits(rb.column(0))
                yield pa.RecordBatch.from_arrays(
                    [rb.column(0), rb.column(1), rb.column(2), pa.array(contents, pa.binary()), label, split],
                    names=["path", "modificationTime", "length", "content", "label", "split"],
                )

    return fn


def _with_label_columns(df: "DataFrame") -> "DataFrame":
    """Add ``label`` and ``split`` computed in the JVM from ``path`` (no Python)."""
    from pyspark.sql import functions as F

    def decoded(i: int) -> Any:
        # Spark 3.5's binaryFile keeps spaces, other sources give %20: decode only
        # valid %XX escapes (url_decode fails on others) and keep '+' (url_decode
        # would turn it into a space)
        part = f"element_at(split(path, '/'), {i})"
        return F.expr(
            f"CASE WHEN {part} RLIKE '%[0-9A-Fa-f]{{2}}' AND NOT {part} RLIKE '%([^0-9A-Fa-f]|.[^0-9A-Fa-f]|.?$)' "
            f"THEN url_decode(replace({part}, '+', '%2B')) ELSE {part} END"
        )

    label = decoded(-2)
    grand = F.lower(decoded(-3))
    split = (
        F.when(grand.isin("training", "train"), "Training")
        .when(grand == "test", "Test")
        .when(grand == "validation", "Validation")
    )
    return df.withColumn("label", label).withColumn("split", split)


def read_images(
    spark: "SparkSession",
    path: str | os.PathLike[str],
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    min_partitions: int | None = None,
    num_partitions: int | None = None,
    native: bool | None = None,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    s3_options: dict | None = None,
) -> "DataFrame":
    """Images as a DataFrame with Spark's ``binaryFile`` schema plus ``label`` and ``split``.

    Local, HDFS and (on EMR, with ``native=True``) ``s3://`` paths go through
    ``spark.read.format("binaryFile")`` with ``recursiveFileLookup`` and a
    ``pathGlobFilter`` for jpg/jpeg/png. Other ``s3://``/``s3a://`` URIs are
    listed on the driver (pyarrow's S3 client) and the bytes are fetched
    inside the executors, so no hadoop-aws jar is needed and
    ``endpoint_url`` can point at any S3-compatible server.

    Parameters
    ----------
    spark : SparkSession
    path : str or path-like
        A folder (``<root>/<split>/<class>/<file>`` or ``<root>/<class>/<file>``)
        or an ``s3://bucket/prefix/`` URI.
    endpoint_url : str, optional
        S3-compatible endpoint, e.g. ``http://127.0.0.1:9000``.
    region : str, optional
    min_partitions : int, optional
        Repartition to at least this many partitions (the seed notebooks'
        "minimum partitions").
    num_partitions : int, optional
        Exactly this many partitions (``coalesce`` when fewer, else
        ``repartition``). ``binaryFile`` counts 4 MB
        (``spark.sql.files.openCostInBytes``) per file, so small images land
        about 32 per partition: 18 tasks for the 550-image sample, each with
        its Python round trip; fewer, larger partitions are faster for
        small images.
    native : bool, optional
        Read ``s3://`` with Spark's own filesystem (EMRFS on EMR, or s3a with
        hadoop-aws). Default: False for S3 URIs, unused for others.
    extensions : sequence of str
        Lower-case extensions kept (S3 listing; locally jpg/jpeg/png).
    s3_options : dict, optional
        Extra ``pyarrow.fs.S3FileSystem`` arguments (credentials...), used on
        the driver and in the executors.

    Returns
    -------
    pyspark.sql.DataFrame
        ``path`` (string), ``modificationTime`` (timestamp), ``length``
        (bigint), ``content`` (binary, null if an S3 fetch failed), ``label``,
        ``split`` (strings).

    Raises
    ------
    FileNotFoundError
        If an S3 prefix holds no image.
    """
    path = os.fspath(path)
    if _is_s3(path) and not native:
        rows = list_s3_images(path, endpoint_url=endpoint_url, region=region, extensions=extensions,
                              s3_options=s3_options)
        sc = spark.sparkContext
        n = num_partitions or max(min_partitions or 0, sc.defaultParallelism)
        n = max(1, min(len(rows), n))
        keys = spark.createDataFrame(
            sc.parallelize([(p, m, s) for p, m, s in rows], n),
            "path string, mtime_us bigint, length bigint",
        )
        from pyspark.sql import functions as F

        keys = keys.select("path", F.timestamp_micros("mtime_us").alias("modificationTime"), "length")
        return keys.mapInArrow(
            _fetch_fn(endpoint_url, region, _driver_s3_options(s3_options)),
            BINARY_FILE_SCHEMA + ", label string, split string",
        )
    if not _is_s3(path) and "://" not in path and not path.startswith("file:"):
        if not os.path.exists(path):
            raise FileNotFoundError(f"image folder not found: {path!r}")
        path = os.path.abspath(path)
    df = (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .option("pathGlobFilter", _GLOB)
        .load(path)
    )
    have = df.rdd.getNumPartitions()
    if num_partitions:
        df = df.coalesce(int(num_partitions)) if num_partitions < have else df.repartition(int(num_partitions))
    elif min_partitions and have < min_partitions:
        df = df.repartition(int(min_partitions))
    return _with_label_columns(df)


# --------------------------------------------------------------------------
# vocabulary: sampled (driver) or distributed Lloyd
# --------------------------------------------------------------------------


def _row_rng(seed: int, path: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(str(path).encode())])


def _native_descriptors(rb: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray]:
    """The descriptors of a batch in their own dtype (SIFT float32, ORB
    uint8) and the row offsets, from blobs (zero-copy) or nested lists."""
    desc = _col(rb, "descriptors")
    if pa.types.is_binary(desc.type):
        return blob_matrix(desc, _col(rb, "n_keypoints"))
    return blob_matrix(descriptor_blobs(_canonical_descriptors(desc)))


def _sample_fn(fraction: float, seed: int):
    """``mapInArrow``: per image, its descriptors kept with probability
    ``fraction`` (a generator seeded by ``(seed, crc32(path))``), as one blob
    (``n`` descriptors, native dtype)."""
    def fn(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for rb in batches:
            X, offsets = _native_descriptors(rb)
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


def _collect_arrow(df: "DataFrame") -> pa.Table:
    """Collect a DataFrame to the driver as one Arrow table (no row objects)."""
    batches = df._collect_as_arrow() if hasattr(df, "_collect_as_arrow") else None
    if batches is None:  # pragma: no cover - Spark Connect
        return pa.Table.from_pandas(df.toPandas())
    if not batches:
        from pyspark.sql.pandas.types import to_arrow_schema

        return to_arrow_schema(df.schema).empty_table()
    return pa.Table.from_batches(batches)


def _is_blob_column(df: "DataFrame", col: str = "descriptors") -> bool:
    from pyspark.sql.types import BinaryType

    return isinstance(df.schema[col].dataType, BinaryType)


def _collected_descriptors(descriptors: "DataFrame", fraction: float, random_state: int) -> np.ndarray:
    """The (sampled) descriptors of the rows without error, on the driver, in
    path order, native dtype. Blobs with ``fraction == 1`` go to the driver
    straight from the JVM (no Python worker); otherwise one ``mapInArrow``."""
    df = descriptors.where("error IS NULL")
    if fraction >= 1.0 and _is_blob_column(df) and "n_keypoints" in df.columns:
        table = _collect_arrow(df.where("n_keypoints > 0").select("path", "n_keypoints", "descriptors"))
    else:
        cols = ["path", "descriptors"] + (["n_keypoints"] if "n_keypoints" in df.columns else [])
        table = _collect_arrow(df.select(*cols).mapInArrow(
            _sample_fn(float(fraction), int(random_state)), "path string, n_keypoints int, descriptors binary"))
    if table.num_rows == 0:
        raise ValueError("sample_descriptors: no descriptor was sampled (no image had keypoints?)")
    table = table.sort_by("path")
    X, _ = blob_matrix(table.column("descriptors"), table.column("n_keypoints"))
    return X


def _pick_fn(picks: Any):
    """``mapInArrow``: the descriptors at the broadcast local indices of each
    path (``picks.value``: path -> sorted int array), one blob per image."""
    def fn(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        chosen = picks.value
        for rb in batches:
            X, offsets = _native_descriptors(rb)
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
    df = descriptors.where("error IS NULL AND n_keypoints > 0")
    counts = _collect_arrow(df.select("path", "n_keypoints")).sort_by("path")
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
        table = _collect_arrow(df.select(*cols).mapInArrow(
            _pick_fn(bc), "path string, n_keypoints int, descriptors binary"))
    finally:
        bc.unpersist()
    table = table.sort_by("path")
    X, _ = blob_matrix(table.column("descriptors"), table.column("n_keypoints"))
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


def _concat_fn():
    """``mapInArrow``: the descriptors of each batch's rows without error as
    one blob (a slice of the batch's buffer when it holds blobs)."""
    def fn(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for rb in batches:
            X, _ = _native_descriptors(rb)
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
    blobs = df.mapInArrow(_concat_fn(), "n bigint, d int, dtype string, data binary")

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
                return _kmeans_partial(X, bc.value, _task_threads(threads))

            try:
                return data.map(part).reduce(_add3)
            finally:
                bc.unpersist()

        def farthest(C: np.ndarray, m: int) -> list:
            bc = sc.broadcast(C)

            def part(pid: int, it: Iterable[np.ndarray]) -> Iterator[tuple]:
                base = 0
                for X in it:
                    labels, dist = _kmeans_assign(X, bc.value, _task_threads(threads))
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
        ok = descriptors.where("error IS NULL AND n_keypoints > 0")
        if _is_blob_column(descriptors):
            row = ok.selectExpr("sum(n_keypoints)", "max(length(descriptors) DIV n_keypoints)").first()
            n_desc, d = row[0] or 0, 128 if (row[1] or 512) == 512 else (row[1] or 32)
        else:
            from pyspark.sql.types import ArrayType, BinaryType

            t = descriptors.schema["descriptors"].dataType
            n_desc = ok.selectExpr("sum(n_keypoints)").first()[0] or 0
            d = 32 if isinstance(t, ArrayType) and isinstance(t.elementType, BinaryType) else 128
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


# --------------------------------------------------------------------------
# PCA from per-partition partial sums
# --------------------------------------------------------------------------


def _pca_sums_fn(input_col: str, n_threads: int | None):
    def fn(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        mats = []
        for rb in batches:
            col = rb.column(rb.schema.get_field_index(input_col))
            col = col.filter(col.is_valid())
            if len(col):
                mats.append(vector_matrix(col))
        if mats:
            X = np.concatenate(mats)
            n, s, xtx = _pca_partial(X, _task_threads(n_threads))
            yield pa.RecordBatch.from_arrays(
                [pa.array([n], pa.int64()), pa.array([s.shape[0]], pa.int32()),
                 pa.array([s.tobytes()], pa.binary()), pa.array([xtx.tobytes()], pa.binary())],
                names=["n", "d", "sum", "xtx"],
            )

    return fn


def pca_partial_sums(df: "DataFrame", input_col: str = "bow", *, n_threads: int | None = None
                     ) -> tuple[int, np.ndarray, np.ndarray]:
    """Count, sum and ``X^T X`` of a vector column, reduced over partitions.

    One Rust call per partition (``bovw.decomposition.pca_partial_sums``),
    float64 accumulation; null rows are skipped.

    Returns
    -------
    n : int
    sum : ndarray of shape (d,), dtype float64
    xtx : ndarray of shape (d, d), dtype float64
    """
    parts = df.select(input_col).mapInArrow(_pca_sums_fn(input_col, n_threads),
                                            "n bigint, d int, sum binary, xtx binary").collect()
    if not parts:
        raise ValueError(f"fit_pca: column {input_col!r} has no non-null row")
    d = parts[0].d
    n = sum(r.n for r in parts)
    s = np.zeros(d)
    xtx = np.zeros((d, d))
    for r in sorted(parts, key=lambda r: (r.n, bytes(r.sum))):
        s += np.frombuffer(r.sum, np.float64)
        xtx += np.frombuffer(r.xtx, np.float64).reshape(d, d)
    return int(n), s, xtx


def fit_pca(df: "DataFrame", n_components: Any = 0.95, *, input_col: str = "bow",
            algorithm: str = "auto", max_driver_bytes: int = DEFAULT_MAX_DRIVER_BYTES,
            n_threads: int | None = None, **pca_params: Any) -> Any:
    """Fit :class:`bovw.PCA` on a vector column (null rows skipped).

    ``algorithm="sums"``: each partition reduces its rows to ``(count, sum,
    X^T X)`` (one Rust call in one Python pass); the driver adds them and
    builds the PCA from the covariance ``(X^T X - n mean mean^T) / (n - 1)``.
    ``algorithm="driver"``: the column goes to the driver as Arrow straight
    from the JVM (no Python worker: about 10x less time than a Python pass
    for a few thousand rows) and the same sums are taken there.
    ``algorithm="auto"`` (default): ``"driver"`` when ``df`` is cached
    (``.cache()``/``.persist()``: then counting its rows is cheap) and its
    ``n_rows x n_features`` float64 take at most ``max_driver_bytes``
    (30,000 histograms of 100 words: 24 MB), else ``"sums"``. Both are equal
    (up to rounding and the sign of each component) to
    ``bovw.PCA(n_components).fit(collected rows)``.

    Parameters
    ----------
    n_components : int or float in (0, 1), default 0.95
        As in :class:`bovw.PCA` (a float keeps the fewest components that
        explain that fraction of the variance).
    algorithm : {"auto", "sums", "driver"}, default "auto"
    max_driver_bytes : int, default 1 GiB
    **pca_params
        More :class:`bovw.PCA` parameters (e.g. its MLlib-compatible mode).

    Returns
    -------
    bovw.PCA, fitted
    """
    import bovw

    if algorithm not in ("auto", "sums", "driver"):
        raise ValueError(f"algorithm: expected 'auto', 'sums' or 'driver', got {algorithm!r}")
    if algorithm == "auto":
        algorithm = "sums"
        if df.is_cached:
            row = df.where(f"`{input_col}` IS NOT NULL").selectExpr("count(*)", f"max(size(`{input_col}`))").first()
            if (row[0] or 0) * (row[1] or 0) * 8 <= max_driver_bytes:
                algorithm = "driver"
    if algorithm == "driver":
        table = _collect_arrow(df.where(f"`{input_col}` IS NOT NULL").select(input_col))
        if table.num_rows == 0:
            raise ValueError(f"fit_pca: column {input_col!r} has no non-null row")
        n, s, xtx = _pca_partial(vector_matrix(table.column(input_col)), n_threads)
    else:
        n, s, xtx = pca_partial_sums(df, input_col, n_threads=n_threads)
    return bovw.PCA(n_components=n_components, **pca_params).fit_partial_sums(n, s, xtx)


# --------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------


def _write_fn(uri: str, endpoint_url: str | None, region: str | None, s3_options: dict | None):
    def fn(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow.parquet as pq
        from pyspark import TaskContext

        batches = [b for b in batches if b.num_rows]
        if not batches:
            return
        ctx = TaskContext.get()
        pid = ctx.partitionId() if ctx is not None else 0
        filesystem = s3_filesystem(endpoint_url, region, **(s3_options or {}))
        name = f"{_s3_bucket_key(uri)}/part-{pid:05d}.parquet"
        table = pa.Table.from_batches(batches)
        pq.write_table(table, name, filesystem=filesystem)
        yield pa.RecordBatch.from_arrays([pa.array([name]), pa.array([table.num_rows], pa.int64())],
                                         names=["file", "rows"])

    return fn


def write_parquet(
    df: "DataFrame",
    path: str,
    *,
    mode: str = "overwrite",
    endpoint_url: str | None = None,
    region: str | None = None,
    native: bool | None = None,
    s3_options: dict | None = None,
) -> int:
    """Write a DataFrame as Parquet (a folder of part files); returns the row count.

    ``array<double>`` columns stay plain lists, which ``pandas.read_parquet``
    reads as arrays (Spark ML ``Vector`` columns would come back as structs:
    convert them with :func:`from_ml_vectors` first). ``s3://`` URIs are
    written from the executors with pyarrow (one ``part-NNNNN.parquet`` per
    partition, no hadoop-aws jar) unless ``native=True`` (EMRFS on EMR).

    Parameters
    ----------
    mode : {"overwrite", "error"}, default "overwrite"
        ``overwrite`` empties the prefix first.
    """
    if mode not in ("overwrite", "error"):
        raise ValueError(f"mode: expected 'overwrite' or 'error', got {mode!r}")
    if _is_s3(path) and not native:
        from pyarrow import fs as pafs

        filesystem = s3_filesystem(endpoint_url, region, **(s3_options or {}))
        base = _s3_bucket_key(path)
        info = filesystem.get_file_info(base)
        existing = filesystem.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        if existing or info.type == pafs.FileType.File:
            if mode == "error":
                raise FileExistsError(f"path: {path!r} already exists (mode='error')")
            filesystem.delete_dir_contents(base, missing_dir_ok=True)
        out = df.mapInArrow(_write_fn(path, endpoint_url, region, _driver_s3_options(s3_options)),
                            "file string, rows bigint").collect()
        return int(sum(r.rows for r in out))
    df = df.persist()
    try:
        n = df.count()
        df.write.mode("overwrite" if mode == "overwrite" else "errorifexists").parquet(str(path))
    finally:
        df.unpersist()
    return int(n)


# --------------------------------------------------------------------------
# the whole job
# --------------------------------------------------------------------------


def _local_path(uri: str) -> str:
    """``file:/a/b%20c`` -> ``/a/b c`` (what the local engine writes); other URIs unchanged."""
    if uri.startswith("file:"):
        rest = uri[len("file:"):]
        if rest.startswith("//"):
            rest = rest[2:]
        return unquote(rest)
    return uri


def _seeded_splits(paths: list[str], labels: list[str], test_size: float, seed: int) -> list[str]:
    """The local engine's split for a flat ``<root>/<class>/`` layout
    (:func:`bovw.list_images`): per class, in path order, a seeded shuffle
    puts ``round(test_size * n)`` images (at least 1, at most n - 1) in Test."""
    import random
    from collections import defaultdict

    by_class: dict[str, list[int]] = defaultdict(list)
    for i in sorted(range(len(paths)), key=lambda i: paths[i]):
        by_class[labels[i]].append(i)
    rng = random.Random(seed)
    out = ["Training"] * len(paths)
    for label in sorted(by_class):
        idx = by_class[label]
        order = list(range(len(idx)))
        rng.shuffle(order)
        n_test = int(round(test_size * len(idx)))
        n_test = min(max(n_test, 1), len(idx) - 1) if len(idx) >= 2 else 0
        for j in order[:n_test]:
            out[idx[j]] = "Test"
    return out


def _input_fingerprint(paths: list[str], sha256: list[str]) -> dict:
    """:func:`bovw.image.input_fingerprint` from per-file SHA-256 digests
    computed in the executors: the same value as the local engine's for the
    same folder (names are the last three path parts, %-encoded as
    ``Path.as_uri`` does, whatever encoding Spark's path has)."""
    import hashlib
    from urllib.parse import quote

    named = sorted(("/".join(quote(unquote(part)) for part in p.rsplit("/", 3)[-3:]), d)
                   for p, d in zip(paths, sha256))
    h = hashlib.sha256()
    for name, d in named:
        h.update(name.encode())
        h.update(d.encode())
    return {"n_files": len(named), "sha256": h.hexdigest()}


def run_job(config: Any, spark: "SparkSession | None" = None) -> Any:
    """The main job on Spark: ``bovw run --engine spark [--master URL]``.

    Same stages and outputs as :func:`bovw.pipeline.run` (``features.parquet``,
    ``vocabulary.npy``, ``pca.npz``, ``model.joblib``, ``errors.csv``,
    ``confusion_matrix.csv``, ``run.json``), with the heavy stages on Spark:

    1. images: :func:`read_images` (local folder, HDFS or ``s3://``; an
       S3-compatible endpoint from ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``);
    2. descriptors: :func:`extract_descriptors` in the executors (blobs),
       cached, with each file's SHA-256 (Spark's ``sha2``, in the executors)
       for ``run.json``'s input fingerprint, the local engine's value;
    3. vocabulary: the Training descriptors (a seeded sample of at most
       ``max_descriptors``) collected to the driver and :class:`bovw.KMeans`
       (or :class:`bovw.KMajority` with ``vocabulary="kmajority"`` and ORB),
       as the local engine does, so both engines fit the same vocabulary;
    4. bag of words: :func:`bow_histograms` in the executors; the
       histograms (n_images x k) are collected;
    5. PCA and 6. classifier: on the driver, as the local engine (the
       histograms are small; no more Spark job).

    ``out`` may be an ``s3://`` URI: the files are written locally first and
    uploaded with pyarrow's S3 client.

    Parameters
    ----------
    config : bovw.pipeline.RunConfig
        ``root`` (folder or ``s3://`` URI; None: the shipped sample),
        ``out``, ``method``, ``k``, ``seed``, ``pca``, ``max_iter``,
        ``n_init``, ``max_descriptors``, ``vocabulary``, ``classifier``,
        ``test_size``, ``extractor_params``, ``master``, ``batch_size``.
    spark : SparkSession, optional
        Default: :func:`session` with ``config.master``.

    Returns
    -------
    bovw.pipeline.RunResult

    Raises
    ------
    FileNotFoundError, ValueError
        As the local engine (missing folder, no images, bad parameter, no
        Training descriptor).
    """
    import tempfile

    import pyarrow.parquet as pq
    from pyspark.sql import functions as F

    import bovw
    from bovw import pipeline as pl

    pl._validate(config)
    binary_words = config.method == "orb" and getattr(config, "vocabulary", "kmeans") == "kmajority"
    root = str(config.root) if config.root else str(bovw.sample_data_path())
    out_uri = str(config.out)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    timer = pl.StageTimer()
    say = print if config.progress else (lambda *a, **k: None)
    if spark is None:
        spark = session(config.master, "bovw run")
    params = pl._extractor_params(config)
    method = config.method
    batch = min(int(config.batch_size), DEFAULT_BATCH_SIZE)

    with timer.stage("list + read files") as st:
        images = read_images(spark, root, endpoint_url=endpoint,
                             num_partitions=2 * spark.sparkContext.defaultParallelism)
        meta = _collect_arrow(images.select("path", "label", "split", "length"))
        paths = meta.column("path").to_pylist()
        labels = meta.column("label").to_pylist()
        splits = meta.column("split").to_pylist()
        if any(s is None for s in splits):
            splits = _seeded_splits(paths, labels, config.test_size, config.seed)
            split_df = spark.createDataFrame(list(zip(paths, splits)), "path string, split2 string")
            images = images.join(split_df, "path").drop("split").withColumnRenamed("split2", "split")
        n = len(paths)
        if n == 0:
            raise ValueError(f"no images (.jpg, .jpeg, .png) found under {root!r}")
        st["items"] = n
    n_train = sum(s == "Training" for s in splits)
    say(f"bovw: {n} images under {root} ({n_train} Training, {n - n_train} Test) on {spark.sparkContext.master}")

    with timer.stage(f"decode + {method} descriptors") as st:
        # SHA-256 of each file in the executors (JVM), next to its descriptors: one read of the files
        hashed = images.withColumn("sha256", F.sha2(F.coalesce(F.col("content"), F.unhex(F.lit(""))), 256))
        desc = extract_descriptors(hashed, method, batch_size=batch, keep=["sha256"], **params).persist()
        status = _collect_arrow(desc.select("path", "label", "split", "n_keypoints", "error", "sha256"))
        st["items"] = n

    with timer.stage(f"vocabulary ({config.vocabulary}, k={config.k})", unit="descriptors") as st:
        train_desc = desc.where("split = 'Training'")
        try:
            X = sample_descriptors(train_desc, max_descriptors=config.max_descriptors, random_state=config.seed,
                                   dtype=np.uint8 if binary_words else np.float32)
        except ValueError:
            raise ValueError("no descriptor in any Training image: cannot fit the vocabulary") from None
        k = min(config.k, len(X))
        if binary_words:
            quantizer = bovw.KMajority(n_clusters=k, max_iter=config.max_iter, random_state=config.seed)
        else:
            quantizer = bovw.KMeans(n_clusters=k, n_init=config.n_init, max_iter=config.max_iter,
                                    algorithm="elkan", random_state=config.seed)
        quantizer.fit(X)
        st["items"] = len(X)
    vocab = np.asarray(quantizer.cluster_centers_, np.uint8 if binary_words else np.float32)

    with timer.stage("bag of visual words") as st:
        # the histograms (n_images x k) come to the driver: the classifier needs them there anyway
        bow = bow_histograms(desc, vocab, batch_size=batch).where("error IS NULL")
        table = _collect_arrow(bow.select("path", "label", "split", "n_keypoints", "bow")).sort_by("path")
        st["items"] = table.num_rows
    desc.unpersist()

    y = np.array(table.column("label").to_pylist(), dtype=object)
    split_arr = np.array(table.column("split").to_pylist(), dtype=object)
    train = split_arr == "Training"
    test = ~train
    H = vector_matrix(table.column("bow")).astype(np.float32)

    pca = None
    with timer.stage("PCA") as st:
        # n_images x k on the driver: fitted there as the local engine does (no Spark job)
        if config.pca is not None and config.pca != 0:
            n_comp = config.pca
            if isinstance(n_comp, int):
                n_comp = min(n_comp, k, n_train)
            pca = bovw.PCA(n_components=n_comp, random_state=config.seed).fit(H[train])
            F_ = np.asarray(pca.transform(H), np.float32)
        else:
            F_ = H
        st["items"] = table.num_rows

    from sklearn.metrics import accuracy_score

    classes = sorted(set(y[train]))
    predictions: list[Any] = [None] * table.num_rows
    accuracy = None
    clf = None
    with timer.stage(f"classifier ({config.classifier})") as st:
        if len(classes) >= 2:
            clf = pl._make_classifier(config.classifier, config.seed)
            clf.fit(F_[train], y[train])
            predictions = [str(p) for p in clf.predict(F_)]
            if test.any():
                accuracy = float(accuracy_score(y[test], np.array(predictions, dtype=object)[test]))
        st["items"] = table.num_rows

    model = pl.BovwModel(method, params, quantizer, pca, clf, k, binary_words)
    err_rows = [
        (p, s, lab, "decode" if ("decode" in e or "JPEG" in e or "PNG" in e) else "descriptors", e)
        for p, s, lab, e in zip(status.column("path").to_pylist(), status.column("split").to_pylist(),
                                status.column("label").to_pylist(), status.column("error").to_pylist())
        if e is not None
    ]
    n_kp = np.array([v or 0 for v in status.column("n_keypoints").to_pylist()], np.int64)
    ok_status = np.array([e is None for e in status.column("error").to_pylist()])
    with timer.stage("write outputs") as st:
        is_s3 = _is_s3(out_uri)
        tmp = tempfile.TemporaryDirectory() if is_s3 else None
        out = Path(tmp.name) if tmp else Path(out_uri)
        out.mkdir(parents=True, exist_ok=True)
        features = pa.table({
            "path": pa.array([_local_path(p) for p in table.column("path").to_pylist()], pa.string()),
            "label": table.column("label").cast(pa.string()),
            "split": table.column("split").cast(pa.string()),
            "n_keypoints": table.column("n_keypoints").cast(pa.int32()),
            "bow": pl._list_column(H),
            "pca_features": pl._list_column(F_),
            "prediction": pa.array(predictions, pa.string()),
        })
        pq.write_table(features, out / "features.parquet")
        pl.write_model_files(
            out, model, [(_local_path(r[0]), *r[1:]) for r in sorted(err_rows)], y[test],
            np.array(predictions, dtype=object)[test], sorted(set(y[test]) | set(classes)),
        )
        st["items"] = features.num_rows
        info = {
            "parameters": {**config.to_dict(), "root": root, "k_effective": k,
                           "spark_master": spark.sparkContext.master,
                           "spark_version": spark.version,
                           "default_parallelism": spark.sparkContext.defaultParallelism},
            "extractor_params": params,
            "versions": {**pl._versions(), "pyspark": spark.version},
            "input": {**_input_fingerprint(status.column("path").to_pylist(), status.column("sha256").to_pylist()),
                      "bytes": int(sum(v or 0 for v in meta.column("length").to_pylist())), "root": root},
            "counts": {
                "images": n,
                "usable": int(ok_status.sum()),
                "errors": len(err_rows),
                "training": int(train.sum()),
                "test": int(test.sum()),
                "descriptors": int(n_kp[ok_status].sum()),
                "vocabulary_descriptors": int(len(X)),
                "images_without_keypoints": int(((n_kp == 0) & ok_status).sum()),
            },
            "vocabulary": {"k": k, "n_iter": int(getattr(quantizer, "n_iter_", 0)),
                           "inertia": float(getattr(quantizer, "inertia_", float("nan")))},
            "pca": None if pca is None else {"n_components": int(pca.n_components_),
                                             "explained_variance": float(np.sum(pca.explained_variance_ratio_))},
            "accuracy": accuracy,
            "stages": timer.rows,
        }
        with open(out / "run.json", "w") as f:
            json.dump(info, f, indent=2, default=pl._json_default)
        if is_s3:
            filesystem = s3_filesystem(endpoint)
            base = _s3_bucket_key(out_uri)
            for name in sorted(os.listdir(out)):
                with open(out / name, "rb") as src, filesystem.open_output_stream(f"{base}/{name}") as dst:
                    dst.write(src.read())
            tmp.cleanup()
    return pl.RunResult(out=Path(out_uri) if not is_s3 else _S3Path(out_uri), accuracy=accuracy,
                        n_images=int(ok_status.sum()), n_errors=len(err_rows), stages=timer.rows, info=info)


class _S3Path(str):
    """An ``s3://`` URI that supports ``/`` like a Path (for printing)."""

    def __truediv__(self, other: str) -> "_S3Path":
        return _S3Path(self.rstrip("/") + "/" + str(other))


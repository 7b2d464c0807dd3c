"""bovw's ``mapInArrow`` stages: descriptors, encodings, PCA projections.

Every stage runs inside ``DataFrame.mapInArrow`` (Spark >= 3.3): Spark hands
each Python worker whole Arrow record batches and bovw's Rust kernels process
a slice of ``batch_size`` rows per call, with no row-by-row UDF and no pandas.
Rows keep ``path``, ``label``, ``split`` and carry ``error`` and
``error_stage`` columns (null when fine) instead of failing the task on an
image that cannot be used.

Descriptor columns are *blobs* by default (:func:`bovw.columns.to_blobs`):
one binary value per image, its descriptors row-major; the column's Spark
metadata (``bovw.width``, ``bovw.dtype``, ``bovw.extractor``) says how to
read them, so later stages and :func:`descriptor_layout` need no guess.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bovw.columns import descriptor_matrix, float_lists, from_blobs, to_blobs, to_spark_lists, vector_matrix
from bovw.spark.io import _labels_and_splits, ddl_schema, task_threads

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame

__all__ = [
    "BOW_SCHEMA",
    "DEFAULT_BATCH_SIZE",
    "bow_histograms",
    "descriptor_layout",
    "descriptors_schema",
    "encode_images",
    "extract_descriptors",
    "from_ml_vectors",
    "nested_descriptors",
    "pca_transform",
    "to_ml_vectors",
]

#: Rows per kernel call inside a ``mapInArrow`` task (see "Batch sizes" in :mod:`bovw.spark`).
DEFAULT_BATCH_SIZE = 256

def _chunks(rb: pa.RecordBatch, size: int) -> Iterator[pa.RecordBatch]:
    if rb.num_rows <= size:
        yield rb
        return
    for start in range(0, rb.num_rows, size):
        yield rb.slice(start, size)


def _col(rb: pa.RecordBatch, name: str) -> pa.Array | None:
    i = rb.schema.get_field_index(name)
    return rb.column(i) if i >= 0 else None


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

def _check_layout(layout: str) -> str:
    if layout not in ("blob", "nested"):
        raise ValueError(f"layout: expected 'blob' or 'nested', got {layout!r}")
    return layout


def _check_batch_size(batch_size: Any) -> None:
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")


def _layout_metadata(extractor: Any) -> dict[str, Any]:
    return {"bovw.width": int(extractor.descriptor_width), "bovw.dtype": str(extractor.descriptor_dtype),
            "bovw.extractor": extractor.name, "bovw.kind": extractor.kind}


def descriptor_layout(df: "DataFrame", col: str = "descriptors") -> tuple[int, np.dtype]:
    """(width, dtype) of a descriptors column that :func:`extract_descriptors` made.

    Raises
    ------
    ValueError
        If the column has no bovw layout metadata (it did not come from
        :func:`extract_descriptors`, or the metadata was dropped).
    """
    meta = df.schema[col].metadata or {}
    if "bovw.width" not in meta or "bovw.dtype" not in meta:
        raise ValueError(
            f"{col}: not a bovw descriptors column (no bovw.width / bovw.dtype metadata); "
            "make it with bovw.spark.extract_descriptors"
        )
    return int(meta["bovw.width"]), np.dtype(meta["bovw.dtype"])


def descriptors_schema(extractor: Any = "sift", layout: str = "blob") -> Any:
    """The Spark schema (``StructType``) of :func:`extract_descriptors`'s output.

    ``extractor``: an :class:`bovw.Extractor` or a method name.
    """
    from pyspark.sql.types import (ArrayType, BinaryType, FloatType, IntegerType, StringType, StructField,
                                   StructType)

    from bovw.extractors import get_extractor

    ex = get_extractor(extractor)
    if _check_layout(layout) == "blob":
        kp_type: Any = BinaryType()
        desc_type: Any = BinaryType()
    else:
        kp_type = ArrayType(ArrayType(FloatType()))
        desc_type = ArrayType(BinaryType()) if ex.descriptor_dtype == np.uint8 else ArrayType(ArrayType(FloatType()))
    return StructType([
        StructField("path", StringType()),
        StructField("label", StringType()),
        StructField("split", StringType()),
        StructField("n_keypoints", IntegerType()),
        StructField("image_width", IntegerType()),
        StructField("image_height", IntegerType()),
        StructField("keypoints", kp_type),
        StructField("descriptors", desc_type, metadata=_layout_metadata(ex)),
        StructField("error", StringType()),
        StructField("error_stage", StringType()),
    ])


def descriptors_fn(
    extractor: Any, *, n_threads: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
    layout: str = "blob", keep: Sequence[str] = (),
) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function behind :func:`extract_descriptors`.

    Takes batches with ``content`` and ``path`` (``label``/``split`` kept or
    derived from the path) and yields batches of :func:`descriptors_schema`
    (then the ``keep`` columns, passed through).
    """
    _check_batch_size(batch_size)
    convert = to_blobs if _check_layout(layout) == "blob" else to_spark_lists
    keep = list(keep)
    names = ["path", "label", "split", "n_keypoints", "image_width", "image_height", "keypoints", "descriptors",
             "error", "error_stage"] + keep

    def fn(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        threads = task_threads(n_threads)
        for rb in batches:
            for chunk in _chunks(rb, batch_size):
                cols, _ = _keep_columns(chunk)
                res = extractor.extract(chunk.select(["content"]), keep_columns=[], n_threads=threads)
                cols += [res.column("n_keypoints"), res.column("image_width"), res.column("image_height"),
                         convert(res.column("keypoints")), convert(res.column("descriptors")),
                         res.column("error"), res.column("error_stage")]
                cols += [chunk.column(chunk.schema.get_field_index(c)) for c in keep]
                yield pa.RecordBatch.from_arrays(cols, names=names)

    return fn


def extract_descriptors(
    images: "DataFrame",
    method: Any = "sift",
    *,
    n_threads: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    layout: str = "blob",
    keep: Sequence[str] = (),
    **params: Any,
) -> "DataFrame":
    """Descriptors of every image, one row per image.

    Replaces the seed notebooks' ``rdd.map(cv2 SIFT)`` /
    ``udf(extract_sift)`` stage::

        descriptors = bovw.spark.extract_descriptors(images, "sift")

    Parameters
    ----------
    images : pyspark.sql.DataFrame
        Spark's ``binaryFile`` schema (``path``, ``content``; ``label`` and
        ``split`` kept when present) as :func:`bovw.spark.read_images` gives.
    method : str or bovw.Extractor
        A name of :data:`bovw.EXTRACTORS` (``"sift"``, ``"orb"``, ...) or an extractor.
    n_threads : int, optional
        Kernel threads per task; default the task's CPUs (``spark.task.cpus``).
    batch_size : int, default 256
        Rows per kernel call.
    layout : {"blob", "nested"}, default "blob"
        ``"blob"``: ``keypoints`` and ``descriptors`` are one ``binary`` value
        per image, its rows row-major (float32 little-endian, or bytes for
        uint8 descriptors), built on the kernel's Arrow buffer without copying
        and read back by every bovw stage (:func:`bovw.descriptor_matrix` with
        :func:`descriptor_layout` in your own code). ``"nested"``: float
        descriptors as ``array<array<float>>``, uint8 ones as
        ``array<binary>``, as the seed notebooks' UDFs give; about 10x slower
        to move between the JVM and Python (:func:`nested_descriptors`
        converts blobs later).
    keep : sequence of str
        More input columns passed through, after ``error_stage``.
    **params
        Parameters of the extractor class (OpenCV names too for SIFT/ORB).

    Returns
    -------
    pyspark.sql.DataFrame
        ``path``, ``label``, ``split`` (strings), ``n_keypoints``,
        ``image_width``, ``image_height`` (int, null on error),
        ``keypoints`` (x, y, size, angle per descriptor), ``descriptors``
        (see ``layout``; empty on error; its metadata gives width and dtype),
        ``error``, ``error_stage`` (strings, null when fine), then ``keep``.

    Raises
    ------
    ValueError
        If ``method``, ``batch_size`` or ``layout`` is invalid.
    """
    from bovw.extractors import get_extractor

    extractor = get_extractor(method, **params)
    schema = descriptors_schema(extractor, layout)
    for c in keep:
        schema.add(images.schema[c])
    return images.mapInArrow(
        descriptors_fn(extractor, n_threads=n_threads, batch_size=batch_size, layout=layout, keep=keep), schema)


def nested_descriptors(df: "DataFrame", col: str = "descriptors") -> "DataFrame":
    """Turn a blob descriptors column into nested lists, for users who want them.

    Float descriptors become ``array<array<float>>`` (one array per
    descriptor), uint8 ones ``array<binary>``, as
    ``extract_descriptors(..., layout="nested")`` gives; other columns are
    kept. Nested lists cost about 10x more to move between the JVM and Python
    than blobs: keep blobs for bovw's own stages.
    """
    from pyspark.sql.types import ArrayType, BinaryType, FloatType, StructField, StructType

    width, dtype = descriptor_layout(df, col)
    new_type = ArrayType(BinaryType()) if dtype == np.uint8 else ArrayType(ArrayType(FloatType()))
    schema = StructType([StructField(f.name, new_type, True, f.metadata) if f.name == col else f
                         for f in df.schema.fields])

    def fn(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for rb in batches:
            i = rb.schema.get_field_index(col)
            cols = list(rb.columns)
            cols[i] = to_spark_lists(from_blobs(cols[i], width, dtype))
            yield pa.RecordBatch.from_arrays(cols, names=rb.schema.names)

    return df.mapInArrow(fn, schema)


#: DDL schema of :func:`bow_histograms`'s output.
BOW_SCHEMA = ("path string, label string, split string, n_keypoints int, bow array<double>, error string, "
              "error_stage string")


def _bow_encoding(vocabulary: Any) -> Any:
    from bovw.model import BagOfWordsEncoding

    return BagOfWordsEncoding.from_vocabulary(np.asarray(getattr(vocabulary, "cluster_centers_", vocabulary)))


def bow_fn(
    vocabulary: Any,
    extractor: Any = None,
    *,
    layout: tuple[int, Any] | None = None,
    n_threads: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function behind :func:`bow_histograms`.

    With ``extractor`` the input is images (``content``): descriptors are
    extracted and turned into histograms in one pass; without it the input
    has a ``descriptors`` column of the given ``layout`` (width, dtype).
    """
    encoding = _bow_encoding(vocabulary)
    _check_batch_size(batch_size)

    def fn(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        threads = task_threads(n_threads)
        for rb in batches:
            for chunk in _chunks(rb, batch_size):
                keep, names = _keep_columns(chunk)
                if extractor is not None:
                    res = extractor.extract(chunk.select(["content"]), keep_columns=[], n_threads=threads)
                    desc, n_kp = res.column("descriptors"), res.column("n_keypoints")
                    err, stage = res.column("error"), res.column("error_stage")
                    w, dt = extractor.descriptor_width, extractor.descriptor_dtype
                else:
                    desc, n_kp = _col(chunk, "descriptors"), _col(chunk, "n_keypoints")
                    err, stage = _col(chunk, "error"), _col(chunk, "error_stage")
                    w, dt = layout if layout is not None else (None, None)
                    if err is None:
                        err = pa.nulls(chunk.num_rows, pa.string())
                    if stage is None:
                        stage = pa.nulls(chunk.num_rows, pa.string())
                X, offsets = descriptor_matrix(desc, width=w, dtype=dt)
                if n_kp is None:
                    n_kp = pa.array(np.diff(offsets).astype(np.int32))
                H = encoding.encode(X, offsets, n_threads=threads)
                failed = err.is_valid().to_numpy(zero_copy_only=False)
                cols = keep + [n_kp.cast(pa.int32()), float_lists(H, failed), err, stage]
                yield pa.RecordBatch.from_arrays(cols, names=names + ["n_keypoints", "bow", "error", "error_stage"])

    return fn


def bow_histograms(
    df: "DataFrame",
    vocabulary: Any,
    *,
    method: Any = None,
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
    vocabulary : ndarray of shape (n_clusters, n_features) or a fitted KMeans / KMajority
        The visual words (``cluster_centers_``): float words assign by
        Euclidean distance (uint8 descriptors are cast to float, as the seed
        notebooks do), uint8 words (k-majority) by Hamming distance.
    method : str or bovw.Extractor, optional
        Extract descriptors first (fused, one pass); ``**params`` are its parameters.

    Returns
    -------
    pyspark.sql.DataFrame
        ``path``, ``label``, ``split``, ``n_keypoints``, ``bow``
        (``array<double>`` of length n_clusters: the count of the image's
        descriptors nearest to each word, in index order; null on error),
        ``error``, ``error_stage``.
    """
    from bovw.extractors import get_extractor

    extractor = get_extractor(method, **params) if method is not None else None
    layout = None if extractor is not None else descriptor_layout(df)
    return df.mapInArrow(bow_fn(vocabulary, extractor, layout=layout, n_threads=n_threads, batch_size=batch_size),
                         BOW_SCHEMA)


#: DDL schema of :func:`encode_images`'s output (then one ``array<float>`` column per channel).
ENCODE_SCHEMA = ("path string, n_keypoints int, error string, error_stage string, sha256 string, "
                 "length bigint")


def encode_fn(channels: Sequence[Any], *, n_threads: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
              keep: Sequence[str] = ()) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function behind :func:`encode_images`: decode,
    describe and encode each image with every channel, in one pass."""
    import hashlib

    from bovw.engine import extracted_batch
    from bovw.features import extract_many

    _check_batch_size(batch_size)

    def fn(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        threads = task_threads(n_threads)
        for rb in batches:
            for chunk in _chunks(rb, batch_size):
                content = chunk.column(chunk.schema.get_field_index("content"))
                read_err = _col(chunk, "read_error")
                errors = read_err.to_pylist() if read_err is not None else [None] * chunk.num_rows
                stages = ["read" if e else None for e in errors]
                blobs = content.to_pylist()
                sha = [hashlib.sha256(b).hexdigest() if b is not None else "" for b in blobs]
                lengths = [len(b) if b is not None else 0 for b in blobs]
                vectors, n_kp = [], None
                scale = np.ones(chunk.num_rows, np.float32)
                described = extract_many(pa.record_batch({"content": content}), [ch.extractor for ch in channels],
                                         n_threads=threads)
                for ch, res in zip(channels, described):
                    eb = extracted_batch(res, ch.extractor)
                    for i, (e, s) in enumerate(zip(eb.errors, eb.stages)):
                        if e is not None and errors[i] is None:
                            errors[i], stages[i] = e, s
                    if n_kp is None:
                        n_kp = np.diff(eb.offsets).astype(np.int32)
                    vectors.append(ch.encode(eb.X, eb.offsets, eb.keypoints, eb.sizes, n_threads=threads))
                    scale = np.minimum(scale, eb.scales)
                failed = np.array([e is not None for e in errors], bool)
                cols = [chunk.column(chunk.schema.get_field_index("path")), pa.array(n_kp, pa.int32()),
                        pa.array(errors, pa.string()), pa.array(stages, pa.string()), pa.array(sha, pa.string()),
                        pa.array(lengths, pa.int64())]
                cols += [float_lists(v, failed, dtype=np.float32) for v in vectors]
                cols += [chunk.column(chunk.schema.get_field_index(c)) for c in keep]
                cols.append(pa.array(scale, pa.float32()))
                names = ["path", "n_keypoints", "error", "error_stage", "sha256", "length"]
                names += [f"features_{c}" for c in range(len(vectors))] + list(keep) + ["image_scale"]
                yield pa.RecordBatch.from_arrays(cols, names=names)

    return fn


def encode_images(images: "DataFrame", channels: Sequence[Any], *, n_threads: int | None = None,
                  batch_size: int = DEFAULT_BATCH_SIZE, keep: Sequence[str] = ()) -> "DataFrame":
    """Encode every image with fitted channels (extractor + encoding), in one pass.

    Parameters
    ----------
    images : pyspark.sql.DataFrame
        ``path`` and ``content`` (binary; null when unreadable, then an optional
        ``read_error`` string column says why).
    channels : sequence of bovw.model.Channel, or a fitted bovw.model.BovwModel
        Fitted encodings (a vocabulary fitted on a sample, ...).

    Returns
    -------
    pyspark.sql.DataFrame
        ``path``, ``n_keypoints`` (first channel), ``error``, ``error_stage``,
        ``sha256`` (of the file's bytes), ``length``, then ``features_0``,
        ``features_1``, ... (``array<float>``, one per channel; null on
        error), then the ``keep`` columns, then ``image_scale`` (float: 1, or
        the smallest factor a channel downscaled the image by to fit its
        memory budget).
    """
    from pyspark.sql.types import FloatType, StructField

    channels = getattr(channels, "channels", channels)
    schema = ddl_schema(ENCODE_SCHEMA + "".join(f", features_{c} array<float>" for c in range(len(channels))))
    for c in keep:
        schema.add(images.schema[c])
    schema.add(StructField("image_scale", FloatType(), False))
    return images.mapInArrow(encode_fn(channels, n_threads=n_threads, batch_size=batch_size, keep=keep), schema)


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
                out = float_lists(Z, ~valid)
                yield pa.RecordBatch.from_arrays(
                    [chunk.column(i) for i in range(chunk.num_columns)] + [out],
                    names=chunk.schema.names + [output_col],
                )

    return fn


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
    from pyspark.sql import functions as F

    for c in cols:
        if c in df.columns:
            df = df.withColumn(c, array_to_vector(F.col(c)))
    return df


def from_ml_vectors(df: "DataFrame", cols: Sequence[str] = ("features",)) -> "DataFrame":
    """Turn Spark ML ``Vector`` columns into ``array<double>`` (``vector_to_array``),
    e.g. before writing Parquet that pandas reads as plain arrays."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    for c in cols:
        if c in df.columns:
            df = df.withColumn(c, vector_to_array(F.col(c)))
    return df


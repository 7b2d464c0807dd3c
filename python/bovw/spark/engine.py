"""The Spark engine of the main job (``bovw run --engine spark``).

:class:`SparkEngine` implements :class:`bovw.job.Engine` with ``mapInArrow``
stages: the driver lists the images exactly as the local engine does
(:func:`bovw.image.list_images` for a folder, :func:`list_s3_images` for an
``s3://`` prefix), the executors read the files, describe and encode them,
and the driver gets back one row per image, which it puts in listing order.
So both engines give the same split, the same vocabulary sample, the same
features and the same error rows.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa

from bovw.image import display_path
from bovw.job import DescriptorSample, Extraction, Listing
from bovw.spark.io import ImageReader, collect_arrow, default_endpoint_url, driver_s3_options, is_s3, \
    list_s3_images, session, split_and_label_rows
from bovw.spark.stages import DEFAULT_BATCH_SIZE, encode_images, extract_descriptors

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["SparkEngine", "run_job"]


def _read_fn(endpoint_url: Optional[str], s3_options: Optional[dict]
             ) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """``mapInArrow``: (row, path, raw path bytes) -> + content, read_error.
    Each executor reads with :class:`bovw.spark.io.ImageReader`, the local
    engine's reader (local files with :func:`bovw.image.read_file`, ``s3://``
    objects with retries and backoff); a failure is a ``read_error``, never a
    task failure."""
    reader = ImageReader(endpoint_url, s3_options=s3_options)

    def fn(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for rb in batches:
            raw = rb.column(rb.schema.get_field_index("path_bytes")).to_pylist()
            read = reader.read_many([os.fsdecode(b) for b in raw])
            yield pa.RecordBatch.from_arrays(
                [rb.column(rb.schema.get_field_index("row")), rb.column(rb.schema.get_field_index("path")),
                 pa.array([d for d, _ in read], pa.binary()), pa.array([e for _, e in read], pa.string())],
                names=["row", "path", "content", "read_error"],
            )

    return fn


def _sample_fn(max_descriptors: Optional[int], seed: int, width: int, dtype: np.dtype
               ) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """``mapInArrow``: (row, descriptors) -> one partition's
    :class:`bovw.job.DescriptorSample` (part, offered, row, pos, key, one
    descriptor per row as bytes); a partition that keeps nothing gives one
    row with ``row = -1`` so that its ``offered`` count still arrives."""

    def fn(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        from bovw.columns import descriptor_matrix, from_matrix

        sample = DescriptorSample(max_descriptors, seed, width, dtype)
        for rb in batches:
            X, offsets = descriptor_matrix(rb.column(rb.schema.get_field_index("descriptors")), width=width,
                                           dtype=dtype)
            rows = rb.column(rb.schema.get_field_index("row")).to_numpy(zero_copy_only=False)
            for j, i in enumerate(rows):
                sample.add(int(i), X[offsets[j]:offsets[j + 1]])
        keys, images, positions, X = sample.parts()
        ctx = TaskContext.get()
        part = ctx.partitionId() if ctx is not None else 0
        if len(keys) == 0:
            keys, images, positions = np.zeros(1), np.full(1, -1, np.int64), np.zeros(1, np.int64)
            X = np.zeros((1, width), dtype)
        n = len(keys)
        yield pa.record_batch([
            pa.array(np.full(n, part, np.int32)), pa.array(np.full(n, sample.n_offered, np.int64)),
            pa.array(images), pa.array(positions), pa.array(keys), from_matrix(X, np.arange(n + 1)),
        ], names=["part", "offered", "row", "pos", "key", "descriptor"])

    return fn


class SparkEngine:
    """Run the job's per-image stages on Spark.

    Parameters
    ----------
    spark : SparkSession, optional
        Default :func:`bovw.spark.session` with ``master``.
    master : str, optional
        Spark master URL (``local[2]``, ``spark://host:7077``, ``yarn``).
    n_threads : int, optional
        Kernel threads per task; default the task's CPUs.
    batch_size : int, default 256
        Rows per kernel call in a task.
    num_partitions : int, optional
        Partitions of the image rows; default 2 x the default parallelism.
    endpoint_url : str, optional
        S3-compatible endpoint (default ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``).
    """

    name = "spark"

    def __init__(self, spark: "SparkSession | None" = None, *, master: Optional[str] = None,
                 n_threads: Optional[int] = None, batch_size: int = DEFAULT_BATCH_SIZE,
                 num_partitions: Optional[int] = None, endpoint_url: Optional[str] = None,
                 progress: bool = True) -> None:
        self.spark = spark if spark is not None else session(master, "bovw run")
        self.n_threads = n_threads
        self.batch_size = min(int(batch_size), DEFAULT_BATCH_SIZE)
        self.num_partitions = num_partitions or 2 * self.spark.sparkContext.defaultParallelism
        self.endpoint_url = endpoint_url or default_endpoint_url()
        self.progress = progress

    def info(self) -> dict[str, Any]:
        sc = self.spark.sparkContext
        return {"name": self.name, "master": sc.master, "spark_version": self.spark.version,
                "default_parallelism": sc.defaultParallelism, "num_partitions": self.num_partitions,
                "batch_size": self.batch_size}

    def list_images(self, root: str, *, test_size: float, seed: int) -> Listing:
        from bovw.image import list_images

        if is_s3(root):
            uris = [u for u, _, _ in list_s3_images(root, endpoint_url=self.endpoint_url)]
            rows = split_and_label_rows(uris, root=root, test_size=test_size, seed=seed)
        elif "://" in root and not root.startswith("file:"):
            raise ValueError(f"root: the Spark engine reads local folders and s3:// URIs, got {root!r}; "
                             "read other file systems with bovw.spark.read_images and the bovw.spark stages")
        else:
            rows = list_images(root[len("file:"):] if root.startswith("file:") else root,
                               test_size=test_size, random_state=seed)
        return Listing([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], root)

    def _images(self, listing: Listing, rows: Iterable[int]) -> "DataFrame":
        """(row, path, content, read_error) of the listed images ``rows``, read in the executors."""
        data = [(int(i), display_path(listing.paths[i]), os.fsencode(listing.paths[i])) for i in rows]
        n = max(1, min(len(data), self.num_partitions))
        df = self.spark.createDataFrame(self.spark.sparkContext.parallelize(data, n),
                                        "row bigint, path string, path_bytes binary")
        return df.mapInArrow(_read_fn(self.endpoint_url, driver_s3_options(None)),
                             "row bigint, path string, content binary, read_error string")

    def sample_descriptors(self, listing: Listing, rows: np.ndarray, extractor: Any,
                           sample: DescriptorSample) -> np.ndarray:
        # Each partition keeps its own bottom-k sample; the driver merges them
        # (the same keys, so the same sample as the local engine's).
        from bovw.columns import descriptor_matrix

        df = extract_descriptors(self._images(listing, rows), extractor, n_threads=self.n_threads,
                                 batch_size=self.batch_size, keep=["row"])
        fn = _sample_fn(sample.max_descriptors, sample.seed, extractor.descriptor_width,
                        np.dtype(extractor.descriptor_dtype))
        table = collect_arrow(df.select("row", "descriptors").mapInArrow(
            fn, "part int, offered bigint, row bigint, pos bigint, key double, descriptor binary"))
        parts = table.column("part").to_numpy(zero_copy_only=False)
        offered = table.column("offered").to_numpy(zero_copy_only=False)
        _, first = np.unique(parts, return_index=True)
        real = table.column("row").to_numpy(zero_copy_only=False) >= 0
        X, _ = descriptor_matrix(table.column("descriptor").filter(pa.array(real)),
                                 width=extractor.descriptor_width, dtype=extractor.descriptor_dtype)
        sample.add_keyed(table.column("key").to_numpy(zero_copy_only=False)[real],
                         table.column("row").to_numpy(zero_copy_only=False)[real],
                         table.column("pos").to_numpy(zero_copy_only=False)[real], X,
                         offered=int(offered[first].sum()))
        return sample.matrix()

    def encode(self, listing: Listing, channels: Sequence[Any], rows: Optional[np.ndarray] = None) -> Extraction:
        from bovw.columns import vector_matrix

        want = np.arange(len(listing)) if rows is None else np.asarray(rows, np.int64)
        n = len(want)
        df = encode_images(self._images(listing, want.tolist()), channels, n_threads=self.n_threads,
                           batch_size=self.batch_size, keep=["row"])
        table = collect_arrow(df).sort_by("row")
        got = table.column("row").to_numpy(zero_copy_only=False).astype(np.int64)
        if table.num_rows != n or not np.array_equal(got, np.sort(want)):
            raise RuntimeError(f"the Spark engine returned {table.num_rows} rows for {n} listed images")
        if not np.all(want[1:] > want[:-1]):  # rows in the order asked for
            table = table.take(pa.array(np.argsort(np.argsort(want, kind="stable"), kind="stable")))
        feats = []
        for c, ch in enumerate(channels):
            col = table.column(f"features_{c}").combine_chunks()
            F = np.zeros((n, ch.encoding.n_features_out_), np.float32)
            valid = col.is_valid().to_numpy(zero_copy_only=False)
            if valid.any():
                F[valid] = vector_matrix(col.filter(pa.array(valid)), dtype=np.float32)
            feats.append(F)
        n_kp = table.column("n_keypoints").fill_null(0).to_numpy(zero_copy_only=False).astype(np.int32)
        errors: list[Optional[str]] = table.column("error").to_pylist()
        stages: list[Optional[str]] = table.column("error_stage").to_pylist()
        sha = table.column("sha256").to_pylist()
        n_kp[[e is not None for e in errors]] = 0
        n_bytes = int(sum(table.column("length").to_pylist()))
        scales = table.column("image_scale").fill_null(1.0).to_numpy(zero_copy_only=False).astype(np.float32)
        return Extraction(feats, n_kp, errors, stages, sha, n_bytes, scales)


def run_job(config: Any, spark: "SparkSession | None" = None) -> Any:
    """The main job on Spark: ``bovw run --engine spark [--master URL]``.

    :func:`bovw.job.run` with a :class:`SparkEngine` (``spark``, or a session
    on ``config.master``): the same stages and outputs as the local engine,
    with the per-image stages in the executors.

    Returns
    -------
    bovw.job.RunResult
    """
    from bovw.job import run

    engine = SparkEngine(spark, master=config.master, batch_size=config.batch_size, progress=config.progress)
    return run(config, engine)

"""Spark I/O for bovw: sessions, Arrow batch sizes, reading images (local,
HDFS, ``s3://`` on EMR or any S3-compatible endpoint) and writing Parquet.

Nothing here imports pyspark at module level: :func:`is_s3`, the S3 helpers
and the path helpers work without it (the local engine uses them).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence
from urllib.parse import unquote, urlparse

import numpy as np
import pyarrow as pa

from bovw.image import IMAGE_EXTENSIONS, label_split_rows, split_name

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "BINARY_FILE_SCHEMA",
    "DEFAULT_TARGET_BATCH_BYTES",
    "S3Path",
    "collect_arrow",
    "configure_arrow_batches",
    "is_s3",
    "label_from_path",
    "list_s3_images",
    "read_images",
    "recommended_records_per_batch",
    "s3_filesystem",
    "session",
    "split_from_path",
    "split_and_label_rows",
    "task_threads",
    "upload_folder",
    "write_parquet",
]

#: Spark's ``binaryFile`` schema, as a DDL string.
BINARY_FILE_SCHEMA = "path string, modificationTime timestamp, length bigint, content binary"


#: Target bytes of encoded images per Arrow batch (see :func:`configure_arrow_batches`).
DEFAULT_TARGET_BATCH_BYTES = 64 * 1024 * 1024


#: ``binaryFile``'s ``pathGlobFilter`` for :data:`bovw.image.IMAGE_EXTENSIONS` (case-sensitive: both cases).
_GLOB = "*.{" + ",".join([e[1:] for e in IMAGE_EXTENSIONS] + [e[1:].upper() for e in IMAGE_EXTENSIONS]) + "}"

def is_s3(path: Any) -> bool:
    """True for ``s3://``, ``s3a://`` and ``s3n://`` URIs."""
    return "://" in str(path) and str(path).split("://", 1)[0].lower() in ("s3", "s3a", "s3n")


def ddl_schema(ddl: str) -> Any:
    """A Spark ``StructType`` from a DDL string (``"path string, n int"``)."""
    from pyspark.sql.types import _parse_datatype_string

    return _parse_datatype_string(ddl)


def task_threads(n_threads: int | None) -> int:
    """Kernel threads for a Spark task: ``n_threads`` when given, else the
    task's CPUs (``spark.task.cpus``, normally 1), else 1."""
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


def label_from_path(path: str | None) -> str | None:
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


def split_from_path(path: str | None) -> str | None:
    """``"Training"``/``"Test"``/``"Validation"`` when the grandparent folder is
    a split name (:data:`bovw.image.SPLIT_NAMES`, case-insensitive), else None."""
    if path is None:
        return None
    parts = path.rstrip("/").split("/")
    if len(parts) < 3:
        return None
    return split_name(unquote(parts[-3]))


def _labels_and_splits(paths: pa.Array) -> tuple[pa.Array, pa.Array]:
    values = paths.to_pylist()
    return (
        pa.array([label_from_path(p) for p in values], pa.string()),
        pa.array([split_from_path(p) for p in values], pa.string()),
    )

def split_and_label_rows(uris: Sequence[str], *, root: str, test_size: float = 0.25, seed: int = 0
                         ) -> list[tuple[str, str, str]]:
    """(uri, label, split) rows of object URIs under ``root``, by the rules of
    a local folder (:func:`bovw.image.label_split_rows`)."""
    base = str(root).rstrip("/") + "/"
    relative = [unquote(u[len(base):]).split("/") if u.startswith(base) else unquote(u).split("/")[-3:]
                for u in uris]
    return label_split_rows(relative, list(uris), test_size=test_size, random_state=seed)


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


def s3_bucket_key(uri: str) -> str:
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
    base = s3_bucket_key(uri)
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


def driver_s3_options(s3_options: dict | None) -> dict:
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


def _fetch_fn(endpoint_url: str | None, region: str | None, s3_options: dict | None, n_io_threads: int = 8
              ) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    def fn(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from concurrent.futures import ThreadPoolExecutor

        filesystem = s3_filesystem(endpoint_url, region, **(s3_options or {}))

        def get(uri: str) -> bytes | None:
            try:
                with filesystem.open_input_stream(s3_bucket_key(uri)) as f:
                    return bytes(f.read())
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

    from bovw.image import SPLIT_NAMES

    label = decoded(-2)
    grand = F.lower(decoded(-3))
    names = list(SPLIT_NAMES.items())
    split = F.when(grand == names[0][0], names[0][1])
    for folder, name in names[1:]:
        split = split.when(grand == folder, name)
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
    if is_s3(path) and not native:
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
            _fetch_fn(endpoint_url, region, driver_s3_options(s3_options)),
            BINARY_FILE_SCHEMA + ", label string, split string",
        )
    if not is_s3(path) and "://" not in path and not path.startswith("file:"):
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


def collect_arrow(df: "DataFrame") -> pa.Table:
    """Collect a DataFrame to the driver as one Arrow table (no row objects)."""
    batches = df._collect_as_arrow() if hasattr(df, "_collect_as_arrow") else None
    if batches is None:  # pragma: no cover - Spark Connect
        return pa.Table.from_pandas(df.toPandas())
    if not batches:
        from pyspark.sql.pandas.types import to_arrow_schema

        return to_arrow_schema(df.schema).empty_table()
    return pa.Table.from_batches(batches)


def _write_fn(uri: str, endpoint_url: str | None, region: str | None, s3_options: dict | None) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    def fn(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow.parquet as pq
        from pyspark import TaskContext

        batches = [b for b in batches if b.num_rows]
        if not batches:
            return
        ctx = TaskContext.get()
        pid = ctx.partitionId() if ctx is not None else 0
        filesystem = s3_filesystem(endpoint_url, region, **(s3_options or {}))
        name = f"{s3_bucket_key(uri)}/part-{pid:05d}.parquet"
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
    if is_s3(path) and not native:
        from pyarrow import fs as pafs

        filesystem = s3_filesystem(endpoint_url, region, **(s3_options or {}))
        base = s3_bucket_key(path)
        info = filesystem.get_file_info(base)
        existing = filesystem.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        if existing or info.type == pafs.FileType.File:
            if mode == "error":
                raise FileExistsError(f"path: {path!r} already exists (mode='error')")
            filesystem.delete_dir_contents(base, missing_dir_ok=True)
        out = df.mapInArrow(_write_fn(path, endpoint_url, region, driver_s3_options(s3_options)),
                            "file string, rows bigint").collect()
        return int(sum(r.rows for r in out))
    df = df.persist()
    try:
        n = df.count()
        df.write.mode("overwrite" if mode == "overwrite" else "errorifexists").parquet(str(path))
    finally:
        df.unpersist()
    return int(n)


class S3Path(str):
    """An ``s3://`` URI that supports ``/`` like a Path (for printing)."""

    def __truediv__(self, other: str) -> "S3Path":
        return S3Path(self.rstrip("/") + "/" + str(other))

def upload_folder(folder: Path, uri: str, endpoint_url: str | None = None) -> None:
    """Copy every file of a local folder to ``uri`` (``s3://bucket/prefix``)
    with pyarrow's S3 client (endpoint from ``AWS_ENDPOINT_URL_S3`` /
    ``AWS_ENDPOINT_URL`` when not given)."""
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    filesystem = s3_filesystem(endpoint)
    base = s3_bucket_key(uri)
    for name in sorted(os.listdir(folder)):
        with open(Path(folder) / name, "rb") as src, filesystem.open_output_stream(f"{base}/{name}") as dst:
            dst.write(src.read())

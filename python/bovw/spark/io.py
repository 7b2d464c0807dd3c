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
    "COMMIT_MARKER",
    "DEFAULT_S3_REQUEST_ATTEMPTS",
    "DEFAULT_TARGET_BATCH_BYTES",
    "ImageReader",
    "RUN_OUTPUT_PATTERNS",
    "S3Path",
    "collect_arrow",
    "configure_arrow_batches",
    "default_endpoint_url",
    "is_s3",
    "is_transient_s3_error",
    "label_from_path",
    "list_s3_images",
    "previous_outputs",
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


#: Retries of one S3 request by the AWS SDK inside pyarrow (its "default" retry
#: strategy: exponential backoff from 25 ms on throttling, 5xx answers and
#: network errors, so at most about 6.4 s per request). The SDK's "standard"
#: strategy is not used: its retry quota (500 tokens, 5 per retry) runs out
#: under a sustained fault rate and it then stops retrying (measured: 26 of 550
#: objects lost against 0, docs/reliability-job.md).
DEFAULT_S3_REQUEST_ATTEMPTS = 8


def default_endpoint_url() -> str | None:
    """The S3 endpoint of the environment: ``AWS_ENDPOINT_URL_S3``, else
    ``AWS_ENDPOINT_URL``, else None (AWS)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_filesystem(endpoint_url: str | None = None, region: str | None = None, **options: Any) -> Any:
    """A ``pyarrow.fs.S3FileSystem`` for AWS or any S3-compatible server.

    Every request is retried by the AWS SDK with exponential backoff on
    throttling (503 SlowDown), other 5xx answers and dropped connections, up
    to :data:`DEFAULT_S3_REQUEST_ATTEMPTS` times
    (``pyarrow.fs.AwsDefaultS3RetryStrategy``; pass ``retry_strategy`` to
    change it). :class:`ImageReader` and :func:`upload_folder` add their
    own bounded retries of whole objects on top.

    Parameters
    ----------
    endpoint_url : str, optional
        ``http://127.0.0.1:9000`` (MinIO, moto, Ceph...); default
        :func:`default_endpoint_url` (the ``AWS_ENDPOINT_URL_S3`` /
        ``AWS_ENDPOINT_URL`` variables), else AWS. The scheme picks http/https.
    region : str, optional
        Default ``AWS_DEFAULT_REGION``/``AWS_REGION`` or ``us-east-1``.
    **options
        Passed to ``S3FileSystem`` (``access_key``, ``secret_key``,
        ``session_token``, ``anonymous``, ``retry_strategy``...); credentials
        default to the AWS chain (env vars, ``~/.aws``, the EC2/EMR instance profile).

    Raises
    ------
    ValueError
        If ``endpoint_url`` is not a URL with a scheme and a host.
    """
    from pyarrow import fs

    kw: dict[str, Any] = dict(options)
    region = region or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
    kw.setdefault("region", region)
    kw.setdefault("retry_strategy", fs.AwsDefaultS3RetryStrategy(max_attempts=DEFAULT_S3_REQUEST_ATTEMPTS))
    endpoint_url = endpoint_url or default_endpoint_url()
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


def is_transient_s3_error(error: BaseException) -> bool:
    """Whether an S3 error may go away on retry: throttling (503 SlowDown),
    other 5xx answers, timeouts and dropped or cut connections. A missing key
    (``FileNotFoundError``), access denied, a missing bucket or a bad request
    are not."""
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    text = str(error).upper()
    permanent = ("ACCESS_DENIED", "ACCESSDENIED", "HTTP STATUS 403", "HTTP STATUS 400", "HTTP STATUS 404",
                 "NO_SUCH_BUCKET", "NOSUCHBUCKET", "NO_SUCH_KEY", "NOSUCHKEY", "INVALID_ACCESS_KEY",
                 "SIGNATURE_DOES_NOT_MATCH")
    return not any(p in text for p in permanent)


class ImageReader:
    """Read listed images: local paths and ``s3://`` objects, with retries.

    The one reader of both engines (:class:`bovw.engine.LocalEngine` in
    process, :class:`bovw.spark.SparkEngine` in its executors). A read never
    raises for a bad entry: it gives ``(bytes, None)`` or ``(None, reason)``,
    and the job turns the reason into an ``errors.csv`` row of stage ``read``.

    - Local paths: :func:`bovw.image.read_file` (broken links, loops, FIFOs,
      folders and unreadable files each give a reason; no retry).
    - ``s3://`` objects: pyarrow's S3 client, whose SDK retries each request
      (:func:`s3_filesystem`); then the whole read is retried up to
      ``max_attempts`` times with exponential backoff and full jitter (sleep
      ``uniform(0, min(max_backoff, backoff * 2**(attempt - 1)))`` seconds,
      the AWS Architecture Blog's "Exponential Backoff And Jitter") while the
      error may be transient (:func:`is_transient_s3_error`): the object's
      HEAD and its GET each get ``max_attempts``. A body cut short is
      detected (its length differs from the object's) and retried. A key
      that no longer exists (deleted after the listing) gives ``"object not
      found (deleted after listing?)"`` without retrying.

    Instances pickle without their S3 client (Spark ships them to executors,
    which open their own).

    Parameters
    ----------
    endpoint_url : str, optional
        S3-compatible endpoint; default :func:`default_endpoint_url`.
    region : str, optional
    s3_options : dict, optional
        More ``S3FileSystem`` arguments (credentials...).
    max_attempts : int, default 5
        Attempts of the object's HEAD, and of its GET, at most (each made of
        SDK-retried requests).
    backoff : float, default 0.2
        Seconds: the first retry waits up to this long, doubling each time.
    max_backoff : float, default 10.0
        Seconds: the longest wait between two attempts.
    n_io_threads : int, default 8
        Concurrent S3 reads in :meth:`read_many` (local files are read in order).

    Raises
    ------
    ValueError
        If ``max_attempts`` < 1, ``backoff`` < 0 or ``n_io_threads`` < 1.
    """

    def __init__(self, endpoint_url: str | None = None, region: str | None = None, s3_options: dict | None = None,
                 *, max_attempts: int = 5, backoff: float = 0.2, max_backoff: float = 10.0,
                 n_io_threads: int = 8) -> None:
        if int(max_attempts) < 1:
            raise ValueError(f"max_attempts: must be at least 1, got {max_attempts}")
        if backoff < 0 or max_backoff < 0:
            raise ValueError(f"backoff: must be >= 0, got {backoff} (max_backoff {max_backoff})")
        if int(n_io_threads) < 1:
            raise ValueError(f"n_io_threads: must be at least 1, got {n_io_threads}")
        self.endpoint_url = endpoint_url or default_endpoint_url()
        self.region = region
        self.s3_options = dict(s3_options or {})
        self.max_attempts = int(max_attempts)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.n_io_threads = int(n_io_threads)
        self._filesystem: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_filesystem"] = None
        return state

    @property
    def filesystem(self) -> Any:
        """The S3 client, opened on first use."""
        if self._filesystem is None:
            self._filesystem = s3_filesystem(self.endpoint_url, self.region, **self.s3_options)
        return self._filesystem

    def _get_object(self, uri: str) -> bytes:
        """The object's bytes: its size (HEAD), then its body (GET), each
        retried on its own, so a failed GET does not repeat the HEAD."""
        def retry(fn: Any) -> Any:
            return _retry(uri, fn, self.max_attempts, self.backoff, self.max_backoff)

        with retry(lambda: self.filesystem.open_input_file(s3_bucket_key(uri))) as f:
            size = f.size()

            def body() -> bytes:
                data: bytes = f.read_at(size, 0)
                if len(data) != size:
                    raise OSError(f"body cut short: {len(data)} of {size} bytes")
                return data

            return retry(body) if size else b""

    def read(self, path: str) -> tuple[bytes | None, str | None]:
        """``(bytes, None)``, or ``(None, reason)`` when the entry cannot be read."""
        from bovw.image import read_file

        if not is_s3(path):
            return read_file(path)
        try:
            return self._get_object(path), None
        except FileNotFoundError:
            return None, "object not found (deleted after listing?)"
        except (OSError, ValueError) as e:
            if isinstance(e, OSError) and is_transient_s3_error(e):
                return None, f"cannot read object after {self.max_attempts} attempts: {e}"
            return None, f"cannot read object: {e}"

    __call__ = read

    def read_many(self, paths: Sequence[str]) -> list[tuple[bytes | None, str | None]]:
        """:meth:`read` of each path, in order (S3 objects fetched concurrently)."""
        if len(paths) > 1 and self.n_io_threads > 1 and any(is_s3(p) for p in paths):
            from concurrent.futures import ThreadPoolExecutor

            self.filesystem  # open the client once, before the threads
            with ThreadPoolExecutor(min(self.n_io_threads, len(paths))) as pool:
                return list(pool.map(self.read, paths))
        return [self.read(p) for p in paths]


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
    reader = ImageReader(endpoint_url, region, s3_options, n_io_threads=n_io_threads)

    def fn(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for rb in batches:
            contents = [data for data, _ in reader.read_many(rb.column(0).to_pylist())]
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

#: File names (``fnmatch`` patterns) that ``bovw run`` writes in its output
#: folder; :func:`upload_folder` and :class:`bovw.job.OutputFolder` remove
#: only these (and the names a previous ``run.json`` lists) from an earlier run.
RUN_OUTPUT_PATTERNS = ("features.parquet", "vocabulary*.npy", "pca.npz", "model.joblib", "errors.csv",
                       "confusion_matrix.csv", "report.html", "run.json")

#: The output folder's commit marker: written last, removed first.
COMMIT_MARKER = "run.json"


def previous_outputs(names: Sequence[str], manifest: dict | None) -> list[str]:
    """The names among ``names`` that an earlier run wrote: those its
    ``run.json`` lists under ``outputs`` (``manifest``) plus those matching
    :data:`RUN_OUTPUT_PATTERNS`."""
    import fnmatch

    listed = set((manifest or {}).get("outputs") or {})
    return [n for n in names if n in listed or any(fnmatch.fnmatchcase(n, p) for p in RUN_OUTPUT_PATTERNS)]


def _retry(what: str, fn: Any, attempts: int, backoff: float, max_backoff: float) -> Any:
    """Call ``fn()``; on an ``OSError`` that may be transient, retry with
    exponential backoff and full jitter (``attempts`` calls at most)."""
    import random
    import time

    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except OSError as e:
            if attempt == attempts or not is_transient_s3_error(e):
                raise
            time.sleep(random.uniform(0, min(max_backoff, backoff * 2 ** (attempt - 1))))
    raise AssertionError(what)  # pragma: no cover - the loop returns or raises


def upload_folder(folder: Path, uri: str, endpoint_url: str | None = None, *, filesystem: Any = None,
                  attempts: int = 5, backoff: float = 0.2) -> list[str]:
    """Publish a local folder of run outputs at ``uri`` (``s3://bucket/prefix``).

    S3 has no rename and no multi-object transaction, so the folder is
    published with ``run.json`` (:data:`COMMIT_MARKER`) as the commit marker:

    1. the previous run's ``run.json`` is deleted first (from then on the
       prefix does not look complete);
    2. every other file is uploaded (each PUT replaces an object atomically);
    3. ``run.json`` is uploaded last: the set is complete;
    4. the objects of the previous run that this one did not write (the names
       its ``run.json`` listed, or :data:`RUN_OUTPUT_PATTERNS`) are deleted.
       Other objects under the prefix are left alone.

    A reader that finds ``run.json`` finds the whole set of that run (its
    ``outputs`` field lists every file with its size and SHA-256); a run that
    dies during step 2 leaves no ``run.json``. What S3 cannot give: the
    previous run's files are not kept when the upload fails, and two runs
    into one prefix at the same time are not prevented (see
    ``docs/reliability-job.md``).

    Each upload is retried by the SDK (:func:`s3_filesystem`) and then, as a
    whole, up to ``attempts`` times with exponential backoff.

    Parameters
    ----------
    folder : Path
        Local folder; its files (not sub-folders) are uploaded.
    uri : str
        ``s3://bucket/prefix``.
    endpoint_url : str, optional
        Default :func:`default_endpoint_url`.
    filesystem : pyarrow.fs.S3FileSystem, optional
        Default :func:`s3_filesystem` of ``endpoint_url``.
    attempts : int, default 5
    backoff : float, default 0.2
        Seconds before the first whole-object retry (doubled each time, with jitter).

    Returns
    -------
    list of str
        The names uploaded, ``run.json`` last.

    Raises
    ------
    OSError
        If an upload or a delete still fails after the retries.
    """
    import json

    from pyarrow import fs as pafs

    filesystem = filesystem if filesystem is not None else s3_filesystem(endpoint_url)
    base = s3_bucket_key(uri)
    names = sorted(n for n in os.listdir(folder) if (Path(folder) / n).is_file())
    names = [n for n in names if n != COMMIT_MARKER] + ([COMMIT_MARKER] if COMMIT_MARKER in names else [])

    def call(what: str, fn: Any) -> Any:
        return _retry(what, fn, attempts, backoff, 10.0)

    infos = call("list", lambda: filesystem.get_file_info(pafs.FileSelector(base, allow_not_found=True)))
    existing = [i.base_name for i in infos if i.type == pafs.FileType.File]
    manifest = None
    if COMMIT_MARKER in existing:
        def read_marker() -> bytes:
            with filesystem.open_input_stream(f"{base}/{COMMIT_MARKER}") as f:
                data: bytes = f.read()
                return data

        try:
            manifest = json.loads(call("read run.json", read_marker))
        except (OSError, ValueError):
            manifest = None
        call("delete run.json", lambda: filesystem.delete_file(f"{base}/{COMMIT_MARKER}"))
    for name in names:
        data = (Path(folder) / name).read_bytes()

        def put(name: str = name, data: bytes = data) -> None:
            with filesystem.open_output_stream(f"{base}/{name}") as dst:
                dst.write(data)

        call(f"upload {name}", put)
    for name in previous_outputs(existing, manifest):
        if name not in names:
            def delete(name: str = name) -> None:
                try:
                    filesystem.delete_file(f"{base}/{name}")
                except FileNotFoundError:
                    pass

            call(f"delete {name}", delete)
    return names

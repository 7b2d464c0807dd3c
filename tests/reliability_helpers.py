"""Helpers of the job reliability tests (``test_reliability_job.py``, ``test_s3.py``).

Importable by Spark's Python workers too (the tests put ``tests/`` on their
``PYTHONPATH``), which is why :class:`CrashOnceSIFT` lives here.

- :class:`FaultyS3Proxy`: an HTTP proxy on 127.0.0.1 in front of an S3 server
  (moto) that answers every n-th request with 503 SlowDown or 500, drops
  every m-th connection without an answer and cuts every k-th GET body in the
  middle; it counts what it did.
- :class:`CrashOnceSIFT`: SIFT whose Python worker ``os._exit``s the first time
  it sees a given image (guarded by a marker file, so once per test).
- ``python reliability_helpers.py pause WHERE FLAG_DIR -- bovw run ...``:
  ``bovw run`` that stops at a chosen point of the output writing and waits
  for ``FLAG_DIR/go`` (the tests send signals there).
- :func:`drop_dac_capabilities`: ``preexec_fn`` that makes a root subprocess
  subject to file permissions (so ``chmod`` can make a folder unreadable).
- ``python reliability_helpers.py retry-modes``: the S3 retry figures of
  ``docs/reliability-job.md`` (:func:`retry_modes_main`).
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bovw.features import SIFT

# -- a faulty S3 endpoint ------------------------------------------------------------------------

_ERROR_XML = ('<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
              '<Message>injected by the bovw test proxy</Message></Error>')


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _hang_up(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _handle(self) -> None:
        body = self._body()
        proxy: FaultyS3Proxy = self.server.proxy  # type: ignore[attr-defined]
        fault = proxy.next_fault(self.command, self.path)
        if fault == "drop":
            self._hang_up()
            return
        if fault in ("slowdown", "internal"):
            status, code = (503, "SlowDown") if fault == "slowdown" else (500, "InternalError")
            data = _ERROR_XML.format(code=code).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
        if body or self.headers.get("Transfer-Encoding"):
            headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
            status, answer = r.status, r.getheaders()
            length = r.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
        finally:
            conn.close()
        self.send_response(status)
        for h, v in answer:
            if h.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                self.send_header(h, v)
        self.send_header("Content-Length", length or "0")
        self.end_headers()
        if self.command == "HEAD":
            return
        if fault == "cut":
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self._hang_up()
            return
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle


class FaultyS3Proxy:
    """A threaded HTTP proxy on 127.0.0.1 that forwards to ``upstream`` and
    injects faults by request count: request number ``i`` (from 1) is answered
    503 SlowDown when ``i % slowdown_every == 0``, else 500 when
    ``i % internal_every == 0``, else its connection is dropped without an
    answer when ``i % drop_every == 0``; a GET whose number is a multiple of
    ``cut_every`` gets its status, headers and half its body, then the
    connection is closed. 0 turns a fault off. ``counts`` says how many of
    each were injected and how many requests were forwarded intact; ``log``
    lists (method, path, fault or None) of every request in order.
    """

    def __init__(self, upstream: str, *, slowdown_every: int = 0, internal_every: int = 0, drop_every: int = 0,
                 cut_every: int = 0) -> None:
        host, port = upstream.split("://", 1)[-1].rstrip("/").split(":")
        self.upstream = (host, int(port))
        self.rules = {"slowdown": slowdown_every, "internal": internal_every, "drop": drop_every}
        self.cut_every = cut_every
        self.counts = {"requests": 0, "slowdown": 0, "internal": 0, "drop": 0, "cut": 0, "forwarded": 0}
        self.log: list[tuple[str, str, str | None]] = []
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ProxyHandler)
        self._server.daemon_threads = True
        self._server.proxy = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def next_fault(self, method: str, path: str = "") -> str | None:
        with self._lock:
            self.counts["requests"] += 1
            i = self.counts["requests"]
            fault = next((name for name, every in self.rules.items() if every and i % every == 0), None)
            if fault is None and self.cut_every and method == "GET" and i % self.cut_every == 0:
                fault = "cut"
            self.counts[fault or "forwarded"] += 1
            self.log.append((method, path, fault))
            return fault

    @property
    def faults(self) -> int:
        return sum(self.counts[k] for k in ("slowdown", "internal", "drop", "cut"))

    def __enter__(self) -> "FaultyS3Proxy":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()


# -- a Python worker that dies once -------------------------------------------------------------

class CrashOnceSIFT(SIFT):
    """SIFT whose process exits (``os._exit(3)``, as a killed worker) the
    first time a batch holds the image whose SHA-256 is ``crash_sha256``; the
    marker file ``crash_marker`` is created just before, so it happens once.
    Each call after the marker exists appends ``attempt <n>`` (Spark's task
    attempt number) to ``crash_marker + '.calls'`` for batches holding that image."""

    name = "sift-crash-once"

    def __init__(self, crash_marker: str = "", crash_sha256: str = "", **params: Any) -> None:
        super().__init__(**params)
        self.crash_marker = crash_marker
        self.crash_sha256 = crash_sha256

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "crash_marker": self.crash_marker, "crash_sha256": self.crash_sha256}

    def extract(self, batch: Any, **kw: Any) -> Any:
        import pyarrow as pa

        content = batch.column("content") if isinstance(batch, (pa.RecordBatch, pa.Table)) else None
        blobs = content.to_pylist() if content is not None else []
        if any(b is not None and hashlib.sha256(b).hexdigest() == self.crash_sha256 for b in blobs):
            if not os.path.exists(self.crash_marker):
                Path(self.crash_marker).write_text(f"pid {os.getpid()}\n")
                os._exit(3)
            try:
                from pyspark import TaskContext

                ctx = TaskContext.get()
                attempt = ctx.attemptNumber() if ctx is not None else -1
            except ImportError:
                attempt = -1
            with open(self.crash_marker + ".calls", "a") as f:
                f.write(f"attempt {attempt}\n")
        return super().extract(batch, **kw)


def spark_crash_job(root: str, out: str, marker: str, crash_sha256: str, master: str = "local[2,4]") -> None:
    """``bovw run --engine spark`` (``master``: 2 threads, 4 attempts per task)
    with :class:`CrashOnceSIFT` under the name ``sift-crash-once``."""
    from bovw.extractors import EXTRACTORS
    from bovw.job import RunConfig, run
    from bovw.spark import SparkEngine, session

    EXTRACTORS[CrashOnceSIFT.name] = CrashOnceSIFT
    spark = session(master, "bovw-crash-test", conf={"spark.ui.enabled": "false", "spark.default.parallelism": "4",
                                                     "spark.driver.memory": "1g"})
    spark.sparkContext.setLogLevel("ERROR")
    cfg = RunConfig(root=root, out=out, method=CrashOnceSIFT.name, k=16, pca=6, max_iter=20, seed=3,
                    progress=False, engine="spark", master=master,
                    extractor_params={"crash_marker": marker, "crash_sha256": crash_sha256})
    run(cfg, SparkEngine(spark, num_partitions=2, progress=False))
    spark.stop()


# -- running as root: obey file permissions ----------------------------------------------------

CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2
PR_CAPBSET_DROP = 24


def drop_dac_capabilities() -> None:
    """``preexec_fn``: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the
    bounding set, so that the program ``exec``'d next, even as root, is
    refused folders that its permissions refuse (``chmod 000``, ``chmod 555``).
    A no-op for other users."""
    if os.geteuid() != 0:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


# -- bovw run, paused at a chosen point ----------------------------------------------------------

def _wait_for(flag_dir: Path, what: str) -> None:
    (flag_dir / f"paused-{what}").write_text(str(os.getpid()))
    deadline = time.monotonic() + 300
    while not (flag_dir / "go").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("no go file")
        time.sleep(0.05)


def pause_main(argv: list[str]) -> int:
    """``pause WHERE FLAG_DIR -- ARGS``: ``bovw.cli.main(ARGS)``, stopping
    ``before-write`` (before the first output file) or ``mid-write`` (after
    ``vocabulary.npy``, ``pca.npz`` and ``model.joblib`` are written to the
    staging folder, ``features.parquet`` being written beside them) until
    ``FLAG_DIR/go`` exists."""
    where, flag_dir, sep, *args = argv
    assert sep == "--"
    flags = Path(flag_dir)
    import bovw.job as job
    from bovw.cli import main

    if where == "before-write":
        original = job._write_files

        def write_files(*a: Any, **k: Any) -> Any:
            _wait_for(flags, where)
            return original(*a, **k)

        job._write_files = write_files
    elif where == "mid-write":
        import joblib

        dump = joblib.dump

        def slow_dump(*a: Any, **k: Any) -> Any:
            out = dump(*a, **k)
            _wait_for(flags, where)
            return out

        joblib.dump = slow_dump
    else:
        raise ValueError(f"where: {where!r}")
    return main(args)


def retry_modes_main(argv: list[str]) -> int:
    """``retry-modes [SLOWDOWN INTERNAL DROP CUT]``: read the 550-image sample
    from moto through :class:`FaultyS3Proxy` (default 5 11 13 7) with the AWS
    SDK's "default" and "standard" retry strategies (8 attempts) under
    :class:`bovw.spark.io.ImageReader`'s own loop and with it off
    (``max_attempts=1``); print objects lost and faults injected (the figures
    of docs/reliability-job.md)."""
    import logging

    import moto.server as moto_server
    from pyarrow import fs as pafs

    import bovw
    from bovw.spark.io import ImageReader, list_s3_images, s3_filesystem

    logging.disable(logging.CRITICAL)
    every = [int(a) for a in argv] or [5, 11, 13, 7]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    creds = {"access_key": "testing", "secret_key": "testing"}
    upstream = f"http://127.0.0.1:{port}"
    fs = s3_filesystem(upstream, allow_bucket_creation=True, **creds)
    fs.create_dir("bovw-modes")
    root = bovw.sample_data_path()
    local = {}
    for f in sorted(root.rglob("*.jpg")):
        key = f"bovw-modes/fruits/{f.relative_to(root).as_posix()}"
        local[f"s3://{key}"] = f.read_bytes()
        with fs.open_output_stream(key) as out:
            out.write(local[f"s3://{key}"])
    print(f"faults: 503 every {every[0]}, 500 every {every[1]}, drop every {every[2]}, GET cut every {every[3]}")
    print(f"{'SDK strategy':<10} {'own loop':>8} {'objects':>8} {'lost':>5} {'wrong':>6} {'requests':>9} {'faults':>7}")
    try:
        for name, strategy in (("default", pafs.AwsDefaultS3RetryStrategy), ("standard", pafs.AwsStandardS3RetryStrategy)):
            for own in (5, 1):
                with FaultyS3Proxy(upstream, slowdown_every=every[0], internal_every=every[1], drop_every=every[2],
                                   cut_every=every[3]) as proxy:
                    uris = [u for u, _, _ in list_s3_images("s3://bovw-modes/fruits/", endpoint_url=proxy.endpoint,
                                                            s3_options=creds)]
                    reader = ImageReader(proxy.endpoint, s3_options={**creds, "retry_strategy": strategy(8)},
                                         max_attempts=own)
                    got = reader.read_many(uris)
                lost = sum(e is not None for _, e in got)
                wrong = sum(d is not None and d != local[u] for (d, _), u in zip(got, uris))
                print(f"{name:<10} {own:>8} {len(uris):>8} {lost:>5} {wrong:>6} {proxy.counts['requests']:>9} "
                      f"{proxy.faults:>7}")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "pause":
        sys.exit(pause_main(sys.argv[2:]))
    if sys.argv[1] == "retry-modes":
        sys.exit(retry_modes_main(sys.argv[2:]))
    raise SystemExit(f"unknown command {sys.argv[1]!r}")

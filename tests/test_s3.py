"""bovw.spark and S3: a real S3-compatible server (moto) on 127.0.0.1.

The committed sample is uploaded to the server, read back into Spark by
listing on the driver and fetching in the executors (no hadoop-aws jar),
results are written to the server from the executors and read back with
pyarrow; contents, labels and row counts are checked against the local files.

Faults (issue 17): the same server behind :class:`FaultyS3Proxy`, which
answers some requests 503 SlowDown or 500, drops connections and cuts
bodies short. Reads are retried (the SDK, then :class:`bovw.spark.io.ImageReader`'s
own loop) and the job's outputs through it, on both engines, equal a
fault-free run's; an object deleted between the listing and the reading is
an error row of stage ``read``; ``--out s3://`` is published with
``run.json`` last and the previous run's stale objects removed.
"""

from __future__ import annotations

import csv
import io
import json
import socket
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import bovw

import moto.server as moto_server  # noqa: E402
import bovw.spark as bs  # noqa: E402
from bovw.spark.io import ImageReader, upload_folder  # noqa: E402
from reliability_helpers import FaultyS3Proxy  # noqa: E402

pytestmark = [pytest.mark.spark]

BUCKET = "bovw-test"
CREDS = {"access_key": "testing", "secret_key": "testing"}
SMALL_CLASSES = ("Banana", "Kiwi", "Lemon")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    fs = bs.s3_filesystem(endpoint, allow_bucket_creation=True, **CREDS)
    fs.create_dir(BUCKET)
    root = bovw.sample_data_path()
    for f in sorted(root.rglob("*.jpg")):
        with fs.open_output_stream(f"{BUCKET}/fruits/{f.relative_to(root).as_posix()}") as out:
            out.write(f.read_bytes())
    with fs.open_output_stream(f"{BUCKET}/fruits/README.md") as out:  # not an image: skipped
        out.write(b"sample")
    for split, n in (("Training", 10), ("Test", 4)):  # a small layout for whole runs: 3 classes, 42 images
        for cls in SMALL_CLASSES:
            for f in sorted((root / split / cls).glob("*.jpg"))[:n]:
                with fs.open_output_stream(f"{BUCKET}/small/{split}/{cls}/{f.name}") as out:
                    out.write(f.read_bytes())
    yield endpoint
    server.stop()


@pytest.fixture(scope="module")
def spark():
    s = bs.session("local[2]", "bovw-tests", conf={"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "4"})
    s.sparkContext.setLogLevel("ERROR")
    return s


def _fs(endpoint):
    return bs.s3_filesystem(endpoint, **CREDS)


def test_list_s3_images(s3_endpoint):
    rows = bs.list_s3_images(f"s3://{BUCKET}/fruits/", endpoint_url=s3_endpoint, s3_options=CREDS)
    assert len(rows) == 550
    assert rows[0][0].startswith(f"s3://{BUCKET}/fruits/Test/Apple Braeburn/")
    assert all(size > 0 and mtime > 0 for _, mtime, size in rows)
    with pytest.raises(FileNotFoundError, match="no images"):
        bs.list_s3_images(f"s3://{BUCKET}/nothing-here/", endpoint_url=s3_endpoint, s3_options=CREDS)


def test_read_images_from_s3_matches_local(spark, s3_endpoint):
    df = bs.read_images(spark, f"s3://{BUCKET}/fruits/", endpoint_url=s3_endpoint, s3_options=CREDS,
                        num_partitions=3)
    assert df.columns == ["path", "modificationTime", "length", "content", "label", "split"]
    rows = df.collect()
    assert len(rows) == 550 and df.rdd.getNumPartitions() == 3
    local = bovw.read_images(bovw.sample_data_path())
    ref = {
        "/".join(Path(p.replace("%20", " ")).parts[-3:]): (lab, spl, c)
        for p, lab, spl, c in zip(local.column("path").to_pylist(), local.column("label").to_pylist(),
                                  local.column("split").to_pylist(), local.column("content").to_pylist())
    }
    got = {"/".join(r.path.split("/")[-3:]): (r.label, r.split, bytes(r.content)) for r in rows}
    assert got == ref
    assert all(r.length == len(r.content) for r in rows)


def test_write_parquet_to_s3_and_read_back(spark, s3_endpoint):
    df = bs.read_images(spark, f"s3://{BUCKET}/fruits/Test/", endpoint_url=s3_endpoint, s3_options=CREDS)
    desc = bs.extract_descriptors(df, "sift")
    uri = f"s3://{BUCKET}/out/descriptors"
    n = bs.write_parquet(desc, uri, endpoint_url=s3_endpoint, s3_options=CREDS)
    assert n == 150
    t = pq.read_table(f"{BUCKET}/out/descriptors", filesystem=_fs(s3_endpoint))
    assert t.num_rows == 150
    assert set(t.column("label").to_pylist()) == {p.name for p in (bovw.sample_data_path() / "Test").iterdir()}
    # overwrite replaces, "error" refuses
    n2 = bs.write_parquet(desc.limit(10), uri, endpoint_url=s3_endpoint, s3_options=CREDS)
    assert n2 == 10 and pq.read_table(f"{BUCKET}/out/descriptors", filesystem=_fs(s3_endpoint)).num_rows == 10
    with pytest.raises(FileExistsError):
        bs.write_parquet(desc, uri, mode="error", endpoint_url=s3_endpoint, s3_options=CREDS)


def test_credentials_from_driver_environment(spark, s3_endpoint, monkeypatch):
    """Executors get the driver's AWS_* credentials (they may not share its environment)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    df = bs.read_images(spark, f"s3://{BUCKET}/fruits/Test/Kiwi/", endpoint_url=s3_endpoint)
    assert df.where("content IS NOT NULL").count() == 15


def test_run_job_on_s3(spark, s3_endpoint, monkeypatch):
    from bovw.job import RunConfig

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    cfg = RunConfig(method="sift", root=f"s3://{BUCKET}/fruits/", out=f"s3://{BUCKET}/runs/r1", k=20, pca=5, max_iter=20,
                    progress=False, engine="spark")
    res = bs.run_job(cfg, spark=spark)
    assert res.n_images == 550 and res.n_errors == 0
    fs = _fs(s3_endpoint)
    t = pq.read_table(f"{BUCKET}/runs/r1/features.parquet", filesystem=fs)
    assert t.num_rows == 550
    assert t.schema.names == ["path", "label", "split", "n_keypoints", "features", "pca_features", "prediction", "image_scale"]
    assert t.column("path")[0].as_py().startswith(f"s3://{BUCKET}/fruits/")
    names = {i.base_name for i in fs.get_file_info(__import__("pyarrow.fs").fs.FileSelector(f"{BUCKET}/runs/r1"))}
    assert {"features.parquet", "vocabulary.npy", "model.joblib", "errors.csv", "run.json", "pca.npz"} <= names
    with fs.open_input_stream(f"{BUCKET}/runs/r1/vocabulary.npy") as f:
        import io

        assert np.load(io.BytesIO(f.read())).shape == (20, 128)


# -- faults (issue 17) ------------------------------------------------------------------------

def _local_bytes(uri: str) -> bytes:
    rel = uri.split(f"s3://{BUCKET}/fruits/", 1)[1]
    return (bovw.sample_data_path() / rel).read_bytes()


def test_reader_survives_a_faulty_endpoint(s3_endpoint):
    """550 objects through a proxy failing 60 % of the requests (503 SlowDown
    every 3rd, 500 every 5th, a dropped connection every 7th, a GET body cut
    in half every 4th): every object's bytes, none lost."""
    rows = bs.list_s3_images(f"s3://{BUCKET}/fruits/", endpoint_url=s3_endpoint, s3_options=CREDS)
    with FaultyS3Proxy(s3_endpoint, slowdown_every=3, internal_every=5, drop_every=7, cut_every=4) as proxy:
        listed = bs.list_s3_images(f"s3://{BUCKET}/fruits/", endpoint_url=proxy.endpoint, s3_options=CREDS)
        got = ImageReader(proxy.endpoint, s3_options=CREDS).read_many([u for u, _, _ in listed])
    assert [u for u, _, _ in listed] == [u for u, _, _ in rows]
    assert [e for _, e in got] == [None] * 550  # rows lost: 0
    assert all(d == _local_bytes(u) for (d, _), (u, _, _) in zip(got, rows))
    c = proxy.counts
    assert c["slowdown"] > 300 and c["internal"] > 100 and c["drop"] > 50 and c["cut"] > 50, c
    print(f"\nfigures (reader, SDK + own retries): 550 objects, faults {c}, rows lost 0")


def test_reader_own_retries_without_sdk_retries(s3_endpoint):
    """With the SDK's retries off and one thread (a fixed request sequence),
    :class:`ImageReader`'s own loop with backoff reads every object. The
    faults (503 every 4th request, 500 every 6th, a drop every 10th, a GET cut
    every 9th: 42 % of requests) never hit more than 3 requests in a row, so
    5 attempts always suffice; with 1 attempt the faults are error rows."""
    from pyarrow import fs as pafs

    rows = bs.list_s3_images(f"s3://{BUCKET}/fruits/Test/", endpoint_url=s3_endpoint, s3_options=CREDS)
    uris = [u for u, _, _ in rows]
    with FaultyS3Proxy(s3_endpoint, slowdown_every=4, internal_every=6, drop_every=10, cut_every=9) as proxy:
        reader = ImageReader(proxy.endpoint, s3_options={**CREDS, "retry_strategy": pafs.AwsDefaultS3RetryStrategy(0)},
                             backoff=0.001, n_io_threads=1)
        got = reader.read_many(uris)
        assert [e for _, e in got] == [None] * 150
        assert all(d == _local_bytes(u) for (d, _), u in zip(got, uris))
        assert proxy.counts["requests"] > 2 * 150 and proxy.faults > 100, proxy.counts
        print(f"\nfigures (reader, own retries only): 150 objects, faults {proxy.counts}, rows lost 0")
        # with one attempt, the same faults are error rows that say why
        once = ImageReader(proxy.endpoint, s3_options={**CREDS, "retry_strategy": pafs.AwsDefaultS3RetryStrategy(0)},
                           max_attempts=1, n_io_threads=1).read_many(uris)
    errors = [e for _, e in once if e is not None]
    assert errors and all(e.startswith("cannot read object after 1 attempts: ") for e in errors)
    assert any("503" in e or "SLOW_DOWN" in e for e in errors)


def test_reader_missing_object_is_not_retried(s3_endpoint):
    with FaultyS3Proxy(s3_endpoint) as proxy:
        data, err = ImageReader(proxy.endpoint, s3_options=CREDS).read(f"s3://{BUCKET}/fruits/no-such.jpg")
    assert data is None and err == "object not found (deleted after listing?)"
    assert proxy.counts["requests"] == 1  # one HEAD, no retry


def _run_small(engine_name: str, out: str, spark, endpoint: str, engine_cls=None) -> None:
    from bovw.job import RunConfig, run

    cfg = RunConfig(method="sift", root=f"s3://{BUCKET}/small/", out=out, k=12, pca=5, max_iter=20, seed=1, progress=False,
                    engine=engine_name)
    if engine_name == "spark":
        cls = engine_cls or bs.SparkEngine
        run(cfg, cls(spark, endpoint_url=endpoint, num_partitions=3, progress=False))
    else:
        from bovw.engine import LocalEngine

        cls = engine_cls or LocalEngine
        run(cfg, cls(progress=False))


def _read_run(fs, prefix: str) -> tuple:
    t = pq.read_table(f"{prefix}/features.parquet", filesystem=fs)
    with fs.open_input_stream(f"{prefix}/errors.csv") as f:
        errors = list(csv.DictReader(io.StringIO(f.read().decode())))
    with fs.open_input_stream(f"{prefix}/vocabulary.npy") as f:
        vocab = np.load(io.BytesIO(f.read()))
    with fs.open_input_stream(f"{prefix}/run.json") as f:
        info = json.loads(f.read())
    return t, errors, vocab, info


@pytest.fixture(scope="module")
def fault_free_run(s3_endpoint, spark):
    mp = pytest.MonkeyPatch()
    mp.setenv("AWS_ACCESS_KEY_ID", "testing")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    mp.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    _run_small("local", f"s3://{BUCKET}/runs/reference", spark, s3_endpoint)
    mp.undo()
    return _read_run(_fs(s3_endpoint), f"{BUCKET}/runs/reference")


@pytest.mark.parametrize("engine", ["local", "spark"])
def test_job_through_a_faulty_endpoint_gives_the_same_output(engine, s3_endpoint, spark, fault_free_run, monkeypatch):
    """The whole job, images and outputs through the faulty proxy (503 every
    4th request, 500 every 9th, a dropped connection every 11th, a GET body cut
    every 7th): the same rows, features, errors and vocabulary as without faults."""
    from bovw.job import verify_outputs

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with FaultyS3Proxy(s3_endpoint, slowdown_every=4, internal_every=9, drop_every=11, cut_every=7) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
        _run_small(engine, f"s3://{BUCKET}/runs/faulty-{engine}", spark, proxy.endpoint)
        assert verify_outputs(f"s3://{BUCKET}/runs/faulty-{engine}") == []
    assert proxy.faults > 40 and min(proxy.counts[k] for k in ("slowdown", "internal", "drop", "cut")) > 0, proxy.counts
    print(f"\nfigures (job, {engine} engine, images and outputs through the proxy): 42 images, "
          f"faults {proxy.counts}, rows lost 0")
    t, errors, vocab, info = _read_run(_fs(s3_endpoint), f"{BUCKET}/runs/faulty-{engine}")
    rt, rerrors, rvocab, rinfo = fault_free_run
    assert t.num_rows == rt.num_rows == 42 and errors == rerrors == []  # rows lost: 0
    for col in ("path", "label", "split", "n_keypoints", "features", "prediction"):
        assert t.column(col).to_pylist() == rt.column(col).to_pylist(), col
    np.testing.assert_allclose(np.array(t.column("pca_features").to_pylist()),
                               np.array(rt.column("pca_features").to_pylist()), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(vocab, rvocab)
    assert info["input"] == rinfo["input"] and info["counts"] == rinfo["counts"]


def _deleting(base):
    """An engine class that deletes one listed object right after the listing."""

    class Deleting(base):
        def list_images(self, root, **kw):
            listing = super().list_images(root, **kw)
            victim = next(p for p in listing.paths if "/Test/Kiwi/" in p)
            _fs(self._test_endpoint).delete_file(victim.split("://", 1)[1])
            self.deleted = victim
            return listing

    return Deleting


@pytest.mark.parametrize("engine", ["local", "spark"])
def test_object_deleted_after_listing_is_a_read_error_row(engine, s3_endpoint, spark, monkeypatch):
    from bovw.engine import LocalEngine

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    fs = _fs(s3_endpoint)
    src, prefix = f"{BUCKET}/small", f"{BUCKET}/vanish-{engine}"
    for info in fs.get_file_info(__import__("pyarrow.fs").fs.FileSelector(src, recursive=True)):
        if info.type == __import__("pyarrow.fs").fs.FileType.File:
            fs.copy_file(info.path, prefix + info.path[len(src):])
    cls = _deleting(bs.SparkEngine if engine == "spark" else LocalEngine)
    cls._test_endpoint = s3_endpoint
    from bovw.job import RunConfig, run

    cfg = RunConfig(method="sift", root=f"s3://{prefix}/", out=f"s3://{BUCKET}/runs/vanish-{engine}", k=12, pca=5, max_iter=20,
                    seed=1, progress=False, engine=engine)
    eng = cls(spark, endpoint_url=s3_endpoint, num_partitions=3, progress=False) if engine == "spark" \
        else cls(progress=False)
    res = run(cfg, eng)
    assert res.n_images == 41 and res.n_errors == 1
    t, errors, _, info = _read_run(fs, f"{BUCKET}/runs/vanish-{engine}")
    assert errors == [{"path": eng.deleted, "split": "Test", "label": "Kiwi", "stage": "read",
                       "reason": "object not found (deleted after listing?)"}]
    assert eng.deleted not in t.column("path").to_pylist() and t.num_rows == 41
    assert info["counts"]["images"] == 42


def test_s3_output_is_published_with_run_json_last(s3_endpoint, tmp_path):
    """upload_folder: the old run.json is deleted before any upload, the new
    one is the last upload, then the old run's stale objects go; an object
    bovw did not write stays."""
    from bovw.job import verify_outputs

    fs = _fs(s3_endpoint)
    prefix = f"{BUCKET}/publish"
    for name, data in (("features.parquet", b"old"), ("pca.npz", b"old"), ("notes.txt", b"mine"),
                       ("run.json", json.dumps({"outputs": {"features.parquet": {}, "pca.npz": {}}}).encode())):
        with fs.open_output_stream(f"{prefix}/{name}") as f:
            f.write(data)
    new = tmp_path / "new"
    new.mkdir()
    (new / "features.parquet").write_bytes(b"new features")
    (new / "errors.csv").write_bytes(b"path,split,label,stage,reason\n")
    import hashlib

    manifest = {n: {"bytes": (new / n).stat().st_size, "sha256": hashlib.sha256((new / n).read_bytes()).hexdigest()}
                for n in ("errors.csv", "features.parquet")}
    (new / "run.json").write_text(json.dumps({"outputs": manifest}))
    with FaultyS3Proxy(s3_endpoint, slowdown_every=3, drop_every=5) as proxy:
        names = upload_folder(new, f"s3://{prefix}", filesystem=bs.s3_filesystem(proxy.endpoint, **CREDS))
    assert names == ["errors.csv", "features.parquet", "run.json"]
    # the moments objects appear or go: a PUT (not a part), a multipart upload's completion, a DELETE
    done = []
    for method, path, fault in proxy.log:
        name, _, query = path.rsplit("/", 1)[-1].partition("?")
        if fault is not None or not name:  # a failed request, or a "folder/" marker
            continue
        if (method == "PUT" and "partNumber" not in query) or (method == "POST" and "uploadId=" in query):
            done.append(("PUT", name))
        elif method == "DELETE":
            done.append(("DELETE", name))
    assert done[0] == ("DELETE", "run.json")  # the old marker goes first
    puts = [n for m, n in done if m == "PUT"]
    assert puts[-1] == "run.json" and set(puts) == set(names)
    assert done[-1] == ("DELETE", "pca.npz")  # stale: after the new marker
    left = {i.base_name for i in fs.get_file_info(__import__("pyarrow.fs").fs.FileSelector(prefix))}
    assert left == {"errors.csv", "features.parquet", "notes.txt", "run.json"}
    with fs.open_input_stream(f"{prefix}/features.parquet") as f:
        assert f.read() == b"new features"
    import os

    os.environ["AWS_ENDPOINT_URL_S3"], old = s3_endpoint, os.environ.get("AWS_ENDPOINT_URL_S3")
    try:
        assert verify_outputs(f"s3://{prefix}") == []
    finally:
        if old is None:
            del os.environ["AWS_ENDPOINT_URL_S3"]
        else:
            os.environ["AWS_ENDPOINT_URL_S3"] = old


def test_s3_out_checks_before_any_work(s3_endpoint, monkeypatch, capsys):
    """--out s3://: an object, or a missing bucket: exit 2 with one line, before the work."""
    import bovw.job as job
    from bovw.cli import main

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    monkeypatch.setattr(job, "_run", lambda *a, **k: pytest.fail("the job started its work"))
    for out, words in ((f"s3://{BUCKET}/fruits/README.md", "is an object, not a prefix"),
                       ("s3://no-such-bucket-bovw/run", "bucket 'no-such-bucket-bovw'")):
        assert main(["run", "--out", out, "--no-progress"]) == 2
        cap = capsys.readouterr()
        assert cap.out == "" and len(cap.err.strip().splitlines()) == 1 and words in cap.err, cap

"""bovw.spark and S3: a real S3-compatible server (moto) on 127.0.0.1.

The committed sample is uploaded to the server, read back into Spark by
listing on the driver and fetching in the executors (no hadoop-aws jar),
results are written to the server from the executors and read back with
pyarrow; contents, labels and row counts are checked against the local files.
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import bovw

import moto.server as moto_server  # noqa: E402
import bovw.spark as bs  # noqa: E402

pytestmark = [pytest.mark.spark]

BUCKET = "bovw-test"
CREDS = {"access_key": "testing", "secret_key": "testing"}


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
    cfg = RunConfig(root=f"s3://{BUCKET}/fruits/", out=f"s3://{BUCKET}/runs/r1", k=20, pca=5, max_iter=20,
                    progress=False, engine="spark")
    res = bs.run_job(cfg, spark=spark)
    assert res.n_images == 550 and res.n_errors == 0
    fs = _fs(s3_endpoint)
    t = pq.read_table(f"{BUCKET}/runs/r1/features.parquet", filesystem=fs)
    assert t.num_rows == 550
    assert t.schema.names == ["path", "label", "split", "n_keypoints", "bow", "pca_features", "prediction"]
    assert t.column("path")[0].as_py().startswith(f"s3://{BUCKET}/fruits/")
    names = {i.base_name for i in fs.get_file_info(__import__("pyarrow.fs").fs.FileSelector(f"{BUCKET}/runs/r1"))}
    assert {"features.parquet", "vocabulary.npy", "model.joblib", "errors.csv", "run.json", "pca.npz"} <= names
    with fs.open_input_stream(f"{BUCKET}/runs/r1/vocabulary.npy") as f:
        import io

        assert np.load(io.BytesIO(f.read())).shape == (20, 128)

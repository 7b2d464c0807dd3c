"""The same bovw.spark pipeline on a real Spark standalone cluster and in-process.

A fixture starts one master and two one-core workers on 127.0.0.1 from
pyspark's own launcher (``bin/spark-class``), the pipeline runs there in a
separate driver process (one SparkContext per process), and its histograms
and PCA features are compared with the same pipeline run with local[2] in
this process and with bovw's in-process functions.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import bovw

import pyspark  # noqa: E402

pytestmark = [pytest.mark.spark, pytest.mark.cluster, pytest.mark.slow]

SPARK_HOME = Path(pyspark.__file__).parent
PYTHON_DIR = Path(bovw.__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ)
    env.update(
        SPARK_HOME=str(SPARK_HOME),
        SPARK_LOCAL_IP="127.0.0.1",
        SPARK_DAEMON_MEMORY="256m",
        PYSPARK_PYTHON=sys.executable,
        PYTHONPATH=os.pathsep.join([str(PYTHON_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]),
    )
    return env


def _alive_workers(ui_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=2) as r:
            return int(json.load(r).get("aliveworkers", 0))
    except OSError:
        return -1


@pytest.fixture(scope="module")
def standalone_cluster(tmp_path_factory):
    """spark://127.0.0.1:PORT with two workers of one core each; stopped at teardown."""
    if not (SPARK_HOME / "bin" / "spark-class").exists():
        pytest.skip("pyspark has no bin/spark-class")
    logs = tmp_path_factory.mktemp("cluster-logs")
    env = _env()
    port, ui = _free_port(), _free_port()
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    procs = []

    def start(args, name):
        f = open(logs / f"{name}.log", "w")
        procs.append((subprocess.Popen([spark_class, *args], env=env, stdout=f, stderr=subprocess.STDOUT), f))

    try:
        start(["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
               "--webui-port", str(ui)], "master")
        deadline = time.time() + 90
        while _alive_workers(ui) < 0:
            if time.time() > deadline or procs[0][0].poll() is not None:
                pytest.fail("standalone master did not start:\n" + (logs / "master.log").read_text()[-3000:])
            time.sleep(0.5)
        for i in range(2):
            work = tmp_path_factory.mktemp(f"worker{i}")
            start(["org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", "1", "--memory", "1g",
                   "--webui-port", str(_free_port()), "--work-dir", str(work), f"spark://127.0.0.1:{port}"],
                  f"worker{i}")
        while _alive_workers(ui) < 2:
            if time.time() > deadline:
                pytest.fail("workers did not register:\n" + (logs / "worker0.log").read_text()[-3000:])
            time.sleep(0.5)
        yield f"spark://127.0.0.1:{port}"
    finally:
        for p, f in reversed(procs):
            p.terminate()
        for p, f in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            f.close()


PIPELINE = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import bovw, bovw.spark as bs

    master, vocab_file, out = sys.argv[1], sys.argv[2], sys.argv[3]
    conf = {"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "4", "spark.executor.memory": "512m",
            "spark.driver.memory": "768m"}
    if master.startswith("spark://"):
        conf["spark.cores.max"] = "2"
    spark = bs.session(master, "bovw-cluster-test", conf=conf, max_records_per_batch=64)
    spark.sparkContext.setLogLevel("ERROR")
    images = bs.read_images(spark, bovw.sample_data_path(), num_partitions=4)
    if vocab_file == "none":  # plumbing only: descriptors
        n = bs.write_parquet(bs.extract_descriptors(images, "sift").drop("descriptors"), out)
    else:
        vocab = np.load(vocab_file)
        bow = bs.bow_histograms(images, vocab, method="sift").cache()
        pca = bs.fit_pca(bow, 10)
        feats = bs.pca_transform(bow, pca)
        n = bs.write_parquet(feats.select("path", "label", "split", "n_keypoints", "bow", "pca_features", "error"),
                             out)
    # where the tasks ran: executor processes, not the driver
    pids = sorted(set(spark.sparkContext.parallelize(range(8), 4).map(lambda _: os.getpid()).collect()))
    execs = [e.host() for e in spark.sparkContext._jsc.sc().statusTracker().getExecutorInfos()]
    json.dump({"rows": n, "driver_pid": os.getpid(), "task_pids": pids, "executors": execs,
               "master": spark.sparkContext.master}, open(out + ".json", "w"))
    spark.stop()
    """
)


def _run_pipeline(master: str, vocab_file, out: Path) -> dict:
    r = subprocess.run([sys.executable, "-c", PIPELINE, master, str(vocab_file), str(out)], env=_env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(Path(str(out) + ".json").read_text())


def _by_name(table):
    from urllib.parse import unquote

    names = ["/".join(unquote(p).split("/")[-3:]) for p in table.column("path").to_pylist()]
    order = np.argsort(names)
    return [names[i] for i in order], table.take(order)


def test_cluster_runs_bovw_in_its_executors(standalone_cluster, tmp_path):
    info = _run_pipeline(standalone_cluster, "none", tmp_path / "desc.parquet")
    assert info["master"] == standalone_cluster and info["rows"] == 550
    assert info["driver_pid"] not in info["task_pids"]
    assert len(info["executors"]) == 3  # the driver and one executor per worker
    t = pq.read_table(tmp_path / "desc.parquet")
    local = bovw.read_images(bovw.sample_data_path())
    assert sorted(t.column("label").to_pylist()) == sorted(local.column("label").to_pylist())
    assert sorted(t.column("split").to_pylist()) == sorted(local.column("split").to_pylist())


def test_cluster_and_local_give_equal_histograms_and_pca(standalone_cluster, tmp_path):
    table = bovw.read_images(bovw.sample_data_path())
    ref = bovw.extract_descriptors(table, "sift")
    X, _ = bovw.descriptor_matrix(ref.column("descriptors"))
    vocab = bovw.KMeans(n_clusters=30, random_state=0, max_iter=20).fit(X).cluster_centers_.astype(np.float32)
    np.save(tmp_path / "vocab.npy", vocab)

    info_c = _run_pipeline(standalone_cluster, tmp_path / "vocab.npy", tmp_path / "cluster.parquet")
    info_l = _run_pipeline("local[2]", tmp_path / "vocab.npy", tmp_path / "local.parquet")
    assert info_c["master"] == standalone_cluster and info_c["rows"] == info_l["rows"] == 550
    assert info_c["driver_pid"] not in info_c["task_pids"]  # tasks ran in the workers' executors
    assert len(info_c["executors"]) == 3  # the driver and one executor per worker

    nc, c = _by_name(pq.read_table(tmp_path / "cluster.parquet"))
    nl, l = _by_name(pq.read_table(tmp_path / "local.parquet"))
    assert nc == nl
    assert c.column("error").null_count == 550
    Hc = np.array(c.column("bow").to_pylist())
    Hl = np.array(l.column("bow").to_pylist())
    np.testing.assert_array_equal(Hc, Hl)
    np.testing.assert_allclose(np.array(c.column("pca_features").to_pylist()),
                               np.array(l.column("pca_features").to_pylist()), atol=1e-5, rtol=1e-5)

    # and both equal the in-process reference
    names = ["/".join(p.split("/")[-3:]) for p in table.column("path").to_pylist()]
    from urllib.parse import unquote

    names = [unquote(n) for n in names]
    H = bovw.BagOfWords(vocab).transform(ref.column("descriptors"))
    order = np.argsort(names)
    np.testing.assert_array_equal(np.asarray(H, np.float64)[order], Hc)
    pca = bovw.PCA(10).fit(np.asarray(H, np.float64))
    Z = pca.transform(np.asarray(H, np.float64))[order]
    Zc = np.array(c.column("pca_features").to_pylist())
    np.testing.assert_allclose(np.abs(Zc), np.abs(Z), atol=1e-5, rtol=1e-5)

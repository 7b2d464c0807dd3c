"""bovw.spark on a real local Spark (pyspark local[2]) and the committed sample.

References: bovw's in-process functions on the same images (descriptors,
histograms, KMeans, PCA), Spark's own binaryFile labels, Spark ML
(LogisticRegression on the array_to_vector columns) and pandas.read_parquet.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import bovw

import bovw.spark as bs  # noqa: E402
from bovw.columns import descriptor_matrix, to_blobs  # noqa: E402

pytestmark = pytest.mark.spark


@pytest.fixture(scope="session")
def local_table(sample_root: Path) -> pa.Table:
    return bovw.read_images(sample_root)


@pytest.fixture(scope="session")
def images(spark, sample_root: Path):
    return bs.read_images(spark, sample_root, num_partitions=4).cache()


@pytest.fixture(scope="session")
def sift_descriptors(images):
    return bs.extract_descriptors(images, "sift").cache()


def _name(path: str) -> str:
    """``<split>/<class>/<file>`` of a path or URI, URL-decoded."""
    from urllib.parse import unquote

    return "/".join(unquote(path).split("/")[-3:])


# ---------------------------------------------------------------- plumbing


def test_label_from_path():
    assert bs.label_from_path("file:/d/Training/Apple%20Braeburn/0_100.jpg") == "Apple Braeburn"
    assert bs.label_from_path("s3://b/p/Test/Tomato Cherry Red/r_1.jpg") == "Tomato Cherry Red"
    assert bs.label_from_path("hdfs://nn/x/a+b/1.png") == "a+b"
    assert bs.label_from_path("1.jpg") is None
    assert bs.split_from_path("file:/d/Training/Apple%20Braeburn/0_100.jpg") == "Training"
    assert bs.split_from_path("s3://b/test/Kiwi/1.jpg") == "Test"
    assert bs.split_from_path("s3://b/other/Kiwi/1.jpg") is None


def test_read_images_matches_binaryfile_and_local(spark, images, local_table):
    # the reference: Spark's own binaryFile + the seed notebooks' label expression
    from pyspark.sql import functions as F

    raw = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(str(bovw.sample_data_path()))
    raw = raw.where(F.col("path").endswith(".jpg"))
    seed_labels = {r.l for r in raw.select(F.element_at(F.split("path", "/"), -2).alias("l")).distinct().collect()}
    # Spark 3.5 keeps the space; other versions/filesystems give "%20": both decode the same
    assert "Apple Braeburn" in seed_labels or "Apple%20Braeburn" in seed_labels

    rows = images.select("path", "label", "split", "length", "content").collect()
    assert len(rows) == local_table.num_rows == 550
    ours = {_name(r.path): (r.label, r.split, bytes(r.content)) for r in rows}
    ref = {
        _name(p): (lab, spl, c)
        for p, lab, spl, c in zip(
            local_table.column("path").to_pylist(),
            local_table.column("label").to_pylist(),
            local_table.column("split").to_pylist(),
            local_table.column("content").to_pylist(),
        )
    }
    assert ours == ref
    assert {r.label for r in rows} >= {"Apple Braeburn", "Tomato Cherry Red", "Onion White"}
    assert images.rdd.getNumPartitions() >= 4


def test_read_images_missing_folder(spark, tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        bs.read_images(spark, tmp_path / "nope")


def test_max_records_per_batch_bounds_batches(spark, images):
    """The Arrow batches seen by mapInArrow follow the configured size."""

    def sizes(batches):
        for b in batches:
            yield pa.RecordBatch.from_arrays([pa.array([b.num_rows], pa.int64())], names=["n"])

    old = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")
    try:
        assert bs.configure_arrow_batches(spark, records=7) == 7
        got = [r.n for r in images.select("path", "content").mapInArrow(sizes, "n bigint").collect()]
    finally:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", old)
    assert sum(got) == 550 and max(got) == 7
    assert bs.recommended_records_per_batch(5_000_000) == 13
    assert bs.recommended_records_per_batch(5_000) == 10_000
    with pytest.raises(ValueError, match="avg_image_bytes"):
        bs.recommended_records_per_batch(0)


def test_descriptor_schema_and_errors_without_kernels(spark):
    """A corrupt image gives an error row; the task does not fail."""
    good = (bovw.sample_data_path() / "Test" / "Kiwi").glob("*.jpg")
    data = [(f"file:/x/Test/Kiwi/{p.name}", p.read_bytes()) for p in sorted(good)[:3]]
    data.append(("file:/x/Test/Kiwi/broken.jpg", b"\xff\xd8\xff\xe0 not a jpeg"))
    data.append(("file:/x/Test/Kiwi/empty.jpg", b""))
    df = spark.createDataFrame(data, "path string, content binary")
    out = bs.extract_descriptors(df, "sift", batch_size=2).collect()
    assert [r.label for r in out] == ["Kiwi"] * 5 and [r.split for r in out] == ["Test"] * 5
    by = {r.path.rsplit("/", 1)[-1]: r for r in out}
    assert by["broken.jpg"].error and by["broken.jpg"].n_keypoints is None and by["broken.jpg"].descriptors == b""
    assert by["broken.jpg"].error_stage == "decode" and by["empty.jpg"].error_stage == "decode"
    assert by["empty.jpg"].error
    assert all(by[n].error is None and by[n].n_keypoints > 0 for n in by if n.endswith("100.jpg"))
    assert all(by[n].image_width == 100 and len(by[n].keypoints) == 16 * by[n].n_keypoints
               for n in by if n.endswith("100.jpg"))


def test_bad_parameters(spark, images):
    with pytest.raises(ValueError, match="method"):
        bs.extract_descriptors(images, "surf")
    with pytest.raises(ValueError, match="batch_size"):
        bs.extract_descriptors(images, "sift", batch_size=0)
    with pytest.raises(ValueError, match="vocabulary"):
        bs.bow_histograms(images, np.zeros(5), method="sift")
    with pytest.raises(ValueError, match="bovw.width"):  # not made by extract_descriptors: no layout
        bs.bow_histograms(images.withColumn("descriptors", images.content), np.zeros((5, 128)))


# ---------------------------------------------------------------- kernels on Spark


def test_sift_descriptors_equal_in_process(sift_descriptors, local_table):
    ref = bovw.extract_descriptors(local_table, "sift", n_threads=1)
    ref_by = {
        _name(p): (n, d)
        for p, n, d in zip(
            ref.column("path").to_pylist(), ref.column("n_keypoints").to_pylist(), ref.column("descriptors")
        )
    }
    rows = sift_descriptors.collect()
    assert len(rows) == 550 and all(r.error is None for r in rows)
    assert len(bs.nested_descriptors(sift_descriptors).collect()) == 550
    nested = {_name(r.path): r for r in bs.nested_descriptors(sift_descriptors.limit(60)).collect()}
    for r in rows[:: 11]:
        n, d = ref_by[_name(r.path)]
        assert r.n_keypoints == n and len(r.descriptors) == n * 512  # blob: n x 128 float32
        ref = descriptor_matrix(pa.array([d.as_py()], pa.list_(pa.list_(pa.float32()))))[0]
        np.testing.assert_array_equal(np.frombuffer(r.descriptors, "<f4").reshape(n, 128), ref)
        if _name(r.path) in nested:
            np.testing.assert_array_equal(np.asarray(nested[_name(r.path)].descriptors, np.float32), ref)


def test_orb_descriptors_equal_in_process(images, local_table):
    ref = bovw.extract_descriptors(local_table, "orb", n_threads=1)
    ref_by = {_name(p): n for p, n in zip(ref.column("path").to_pylist(), ref.column("n_keypoints").to_pylist())}
    rows = bs.extract_descriptors(images, "orb", layout="nested").collect()
    assert {_name(r.path): r.n_keypoints for r in rows} == ref_by
    r = next(r for r in rows if r.n_keypoints)
    assert all(isinstance(b, (bytes, bytearray)) and len(b) == 32 for b in r.descriptors)
    blobs = {_name(x.path): x for x in bs.extract_descriptors(images, "orb").collect()}
    assert blobs[_name(r.path)].descriptors == b"".join(r.descriptors)


def test_sample_descriptors_is_partition_independent(images, sift_descriptors):
    a = bs.sample_descriptors(sift_descriptors, fraction=0.3, random_state=7)
    b = bs.sample_descriptors(sift_descriptors.repartition(1), fraction=0.3, random_state=7)
    np.testing.assert_array_equal(a, b)
    full = bs.sample_descriptors(sift_descriptors)
    assert full.dtype == np.float32 and full.shape[1] == 128
    assert 0.25 * len(full) < len(a) < 0.35 * len(full)
    capped = bs.sample_descriptors(sift_descriptors, max_descriptors=1000, random_state=1)
    assert capped.shape == (1000, 128)
    # only the drawn descriptors leave the executors, the same ones as drawn from the full matrix
    idx = np.sort(np.random.default_rng(1).choice(len(full), 1000, replace=False))
    np.testing.assert_array_equal(capped, full[idx])
    np.testing.assert_array_equal(bs.sample_descriptors(sift_descriptors.repartition(3), max_descriptors=1000,
                                                        random_state=1), capped)
    assert bs.sample_descriptors(sift_descriptors, max_descriptors=10**9).shape == full.shape
    with pytest.raises(ValueError, match="fraction"):
        bs.sample_descriptors(sift_descriptors, fraction=0)


def test_distributed_lloyd_equals_bovw_kmeans(sift_descriptors):
    from bovw.spark.vocabulary import _partition_matrices

    rdd = _partition_matrices(sift_descriptors)
    try:
        parts = rdd.collect()
        assert len(parts) >= 2
        X = np.concatenate(parts)
        k = 20
        init = X[np.random.default_rng(0).choice(len(X), k, replace=False)]
        # two identical seeds: one cluster starts empty and must be relocated
        init[1] = init[0]
        centers, inertia, n_iter = bs.kmeans_lloyd(rdd, init, max_iter=8, tol=1e-4)
    finally:
        rdd.unpersist()
    ref = bovw.KMeans(n_clusters=k, init=init, n_init=1, max_iter=8, tol=1e-4).fit(X)
    assert n_iter == ref.n_iter_
    np.testing.assert_allclose(centers, ref.cluster_centers_, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(inertia, ref.inertia_, rtol=1e-6)


def test_fit_vocabulary_sample_and_lloyd(sift_descriptors):
    X = bs.sample_descriptors(sift_descriptors, fraction=0.5, random_state=3)
    km = bs.fit_vocabulary(sift_descriptors, 10, algorithm="sample", sample_fraction=0.5, random_state=3,
                           max_iter=20)
    ref = bovw.KMeans(n_clusters=10, random_state=3, max_iter=20).fit(X)
    np.testing.assert_allclose(km.cluster_centers_, ref.cluster_centers_, rtol=1e-6)
    km2 = bs.fit_vocabulary(sift_descriptors, 10, algorithm="lloyd", sample_fraction=0.5, random_state=3,
                            max_iter=3)
    assert km2.cluster_centers_.shape == (10, 128) and km2.inertia_ > 0
    labels = km2.predict(bs.sample_descriptors(sift_descriptors, max_descriptors=2000))
    assert len(np.unique(labels)) > 5
    with pytest.raises(ValueError, match="algorithm"):
        bs.fit_vocabulary(sift_descriptors, 10, algorithm="spectral")


def test_bow_fused_and_two_step_equal_in_process(images, sift_descriptors, local_table):
    vocab = bs.sample_descriptors(sift_descriptors, max_descriptors=50, random_state=0)
    assert vocab.shape == (50, 128)
    fused = {_name(r.path): r for r in bs.bow_histograms(images, vocab, method="sift").collect()}
    two = {_name(r.path): r for r in bs.bow_histograms(sift_descriptors, vocab).collect()}
    ref_desc = bovw.extract_descriptors(local_table, "sift", n_threads=1)
    X, offsets = descriptor_matrix(ref_desc.column("descriptors"))
    counts = np.diff(offsets)
    # brute-force nearest word (NumPy) as the reference
    d2 = (X**2).sum(1)[:, None] - 2 * X @ vocab.T + (vocab**2).sum(1)[None]
    words = d2.argmin(1)
    img = np.repeat(np.arange(len(counts)), counts)
    H = np.zeros((len(counts), 50))
    np.add.at(H, (img, words), 1)
    names = [_name(p) for p in ref_desc.column("path").to_pylist()]
    for i, n in enumerate(names):
        assert fused[n].bow == two[n].bow
        assert np.abs(np.asarray(fused[n].bow) - H[i]).sum() <= 2  # float ties in argmin
        assert sum(fused[n].bow) == fused[n].n_keypoints


def test_fit_vocabulary_auto_on_the_driver_or_distributed(sift_descriptors):
    X = bs.sample_descriptors(sift_descriptors)
    km = bs.fit_vocabulary(sift_descriptors, 10, algorithm="auto", max_iter=15, random_state=3)
    ref = bovw.KMeans(n_clusters=10, max_iter=15, random_state=3).fit(X)
    np.testing.assert_array_equal(km.cluster_centers_, ref.cluster_centers_)
    dist = bs.fit_vocabulary(sift_descriptors, 10, algorithm="auto", max_iter=15, random_state=3,
                             max_driver_bytes=1000)  # too big for the driver: distributed Lloyd
    assert dist.cluster_centers_.shape == (10, 128) and dist.n_iter_ <= 15
    assert dist.inertia_ <= 1.05 * ref.inertia_
    nested = bs.extract_descriptors(sift_descriptors.sparkSession.createDataFrame([], "path string, content binary"),
                                    layout="nested")
    assert nested.schema["descriptors"].dataType.simpleString() == "array<array<float>>"
    with pytest.raises(ValueError, match="layout"):
        bs.extract_descriptors(sift_descriptors, layout="columns")


def test_kmajority_vocabulary_and_histograms(images):
    """ORB + K-majority on Spark: the driver fit and the Hamming histograms equal in-process."""
    desc = bs.extract_descriptors(images, "orb").cache()
    try:
        km = bs.fit_vocabulary(desc, 12, kind="kmajority", max_iter=10, random_state=0, max_sample=None)
        X = bs.sample_descriptors(desc, dtype=None)
        assert X.dtype == np.uint8 and X.shape[1] == 32
        ref = bovw.KMajority(n_clusters=12, max_iter=10, random_state=0).fit(X)
        np.testing.assert_array_equal(km.cluster_centers_, ref.cluster_centers_)
        rows = bs.bow_histograms(desc, km.cluster_centers_).where("error IS NULL").collect()
        nested = {r.path: r.bow for r in bs.bow_histograms(bs.nested_descriptors(desc), km.cluster_centers_).collect()}
        d = {r.path: r for r in desc.collect()}
        for r in rows[::25]:
            D = np.frombuffer(d[r.path].descriptors, np.uint8).reshape(-1, 32)
            H = np.bincount(ref.predict(D), minlength=12) if len(D) else np.zeros(12)
            np.testing.assert_array_equal(r.bow, H)
            assert nested[r.path] == r.bow
        with pytest.raises(ValueError, match="kmajority"):
            bs.fit_vocabulary(desc, 12, kind="kmajority", algorithm="lloyd")
    finally:
        desc.unpersist()


@pytest.mark.parametrize("vocabulary", ["kmeans", "kmajority"])
def test_run_orb_matches_the_local_engine(spark, tmp_path, vocabulary):
    """``bovw run --method orb`` with each vocabulary kind gives the same outputs on both engines."""
    import pyarrow.parquet as pq

    from bovw.cli import main

    # a descriptor cap: both engines draw the same bottom-k sample (partitions on Spark)
    args = ["run", "--method", "orb", "--vocabulary", vocabulary, "--k", "20", "--pca", "5", "--max-iter", "10",
            "--max-descriptors", "3000", "--seed", "0", "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "spark"), "--engine", "spark", "--master", "local[2]"]) == 0
    assert main(args + ["--out", str(tmp_path / "local")]) == 0
    va, vb = np.load(tmp_path / "spark" / "vocabulary.npy"), np.load(tmp_path / "local" / "vocabulary.npy")
    assert va.dtype == (np.uint8 if vocabulary == "kmajority" else np.float32) and va.shape == (20, 32)
    assert np.array_equal(va, vb)
    import json

    for side in ("spark", "local"):
        vocab = json.loads((tmp_path / side / "run.json").read_text())["vocabulary"]
        assert vocab["descriptors"] == 3000 and vocab["descriptors_described"] > 3000, vocab
    a = pq.read_table(tmp_path / "spark" / "features.parquet")
    b = pq.read_table(tmp_path / "local" / "features.parquet")
    assert a.column("path").to_pylist() == b.column("path").to_pylist()
    assert a.column("features").to_pylist() == b.column("features").to_pylist()
    assert a.column("prediction").to_pylist() == b.column("prediction").to_pylist()
    # every descriptor counted once (images without ORB keypoints have empty histograms)
    np.testing.assert_array_equal(np.array(a.column("features").to_pylist()).sum(1), a.column("n_keypoints").to_numpy())


def test_distributed_pca_equals_bovw_pca(images, sift_descriptors):
    vocab = bs.sample_descriptors(sift_descriptors, max_descriptors=40, random_state=1)
    bow = bs.bow_histograms(sift_descriptors, vocab).cache()
    try:
        pca = bs.fit_pca(bow, 0.9, algorithm="sums")
        drv = bs.fit_pca(bow, 0.9)  # cached and small: "auto" fits it on the driver
        np.testing.assert_allclose(drv.explained_variance_, pca.explained_variance_, rtol=1e-9)
        np.testing.assert_allclose(np.abs(drv.components_), np.abs(pca.components_), atol=1e-9)
        with pytest.raises(ValueError, match="algorithm"):
            bs.fit_pca(bow, 0.9, algorithm="svd")
        B = np.array([r.bow for r in bow.where("error IS NULL").collect()])
        ref = bovw.PCA(0.9).fit(B)
        assert pca.n_components_ == ref.n_components_
        np.testing.assert_allclose(pca.explained_variance_, ref.explained_variance_, rtol=1e-6)
        np.testing.assert_allclose(np.abs(pca.components_), np.abs(ref.components_), atol=1e-6)
        out = bs.pca_transform(bow, pca).collect()
        Z = np.array([r.pca_features for r in out])
        np.testing.assert_allclose(Z, pca.transform(np.array([r.bow for r in out])), rtol=1e-9, atol=1e-9)
        mll = bs.fit_pca(bow, 5, mllib_compat=True)
        z0 = bs.pca_transform(bow, mll).first()
        np.testing.assert_allclose(z0.pca_features, np.asarray(z0.bow) @ mll.components_.T, rtol=1e-9)
    finally:
        bow.unpersist()


def test_spark_ml_interop_and_parquet(spark, images, sift_descriptors, tmp_path):
    import pandas as pd
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import StringIndexer

    vocab = bs.sample_descriptors(sift_descriptors, max_descriptors=30, random_state=2)
    bow = bs.bow_histograms(sift_descriptors, vocab)
    pca = bs.fit_pca(bow, 8)
    feats = bs.pca_transform(bow, pca).cache()
    ml = bs.to_ml_vectors(feats, ["bow", "pca_features"])
    ml = StringIndexer(inputCol="label", outputCol="y").fit(ml).transform(ml)
    model = LogisticRegression(featuresCol="pca_features", labelCol="y", maxIter=20).fit(ml.where("split='Training'"))
    pred = model.transform(ml.where("split='Test'"))
    acc = pred.where("prediction = y").count() / pred.count()
    assert acc > 0.3  # 10 classes: chance is 0.1
    back = bs.from_ml_vectors(pred.select("path", "label", "pca_features"), ["pca_features"])
    n = bs.write_parquet(back, str(tmp_path / "out.parquet"))
    df = pd.read_parquet(tmp_path / "out.parquet")
    assert n == len(df) == 150 and len(df["pca_features"].iloc[0]) == 8
    assert isinstance(df["pca_features"].iloc[0], np.ndarray)


def test_run_job_matches_the_local_engine(spark, tmp_path):
    """``bovw run --engine spark`` writes the local engine's outputs with the same values."""
    import json

    import pyarrow.parquet as pq

    from bovw.cli import main

    args = ["run", "--k", "30", "--pca", "10", "--max-iter", "20", "--seed", "0", "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "spark"), "--engine", "spark", "--master", "local[2]"]) == 0
    assert main(args + ["--out", str(tmp_path / "local")]) == 0
    files = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert sorted(p.name for p in (tmp_path / "spark").iterdir()) == files
    a = pq.read_table(tmp_path / "spark" / "features.parquet").sort_by("path")
    b = pq.read_table(tmp_path / "local" / "features.parquet").sort_by("path")
    assert a.schema == b.schema and a.num_rows == b.num_rows == 550
    assert a.column("path").to_pylist() == b.column("path").to_pylist()
    np.testing.assert_array_equal(np.load(tmp_path / "spark" / "vocabulary.npy"),
                                  np.load(tmp_path / "local" / "vocabulary.npy"))
    assert a.column("features").to_pylist() == b.column("features").to_pylist()
    A = np.array(a.column("pca_features").to_pylist())
    B = np.array(b.column("pca_features").to_pylist())
    np.testing.assert_allclose(A, B, atol=1e-4 * np.abs(B).max())  # float32 (local) vs float64 (sums) PCA fit
    assert a.column("prediction").to_pylist() == b.column("prediction").to_pylist()
    ja = json.loads((tmp_path / "spark" / "run.json").read_text())
    jb = json.loads((tmp_path / "local" / "run.json").read_text())
    assert ja["accuracy"] == jb["accuracy"] and ja["counts"]["descriptors"] == jb["counts"]["descriptors"]
    assert ja["input"]["sha256"] == jb["input"]["sha256"] and ja["input"]["n_files"] == jb["input"]["n_files"] == 550
    assert ja["engine"]["master"].startswith("local") and jb["engine"]["name"] == "local"

"""Spark benchmark: the seed notebooks' pipeline vs bovw on Spark vs bovw in-process.

Same real Fruits-360 images, one Spark local[2] session, same K and K-Means
iterations:

* ``seed``: as the seed notebooks write it: an RDD ``map`` calling
  ``cv2.SIFT_create().detectAndCompute`` per image, every descriptor a
  ``Vectors.dense`` row for ``pyspark.mllib.clustering.KMeans.train``, words
  by ``model.predict`` per descriptor, ``CountVectorizer``, then
  ``pyspark.ml.feature.PCA``;
* ``bovw-spark``: :mod:`bovw.spark` (``extract_descriptors``,
  ``fit_vocabulary``, ``bow_histograms``, ``fit_pca`` + ``pca_transform``);
* ``bovw``: the same stages in-process (``bovw.extract_descriptors``,
  ``bovw.KMeans``, ``bovw.BagOfWords``, ``bovw.PCA``).

Each stage is materialised (``cache`` + ``count``) before the next one so the
per-stage times add up. Rows follow benches/run.py's protocol; ``speedup`` is
ref_s / ours_s.

Also: the floor that Spark itself sets (``spark/overhead``: an empty job, a
``mapInArrow`` pass over the cached images that does nothing), and how bovw
on Spark scales from 1,000 images to the whole dataset (``spark/scaling``).

Run: ``PYTHONPATH=python python benches/py/bench_spark.py [--quick] [--images N]
[--iters N] [--no-seed] [--scaling 1000,all|none]`` (or the environment
variables ``BOVW_SPARK_IMAGES``, ``BOVW_SPARK_ITERS``, ``BOVW_SPARK_SEED=0``,
``BOVW_SPARK_SCALING``). Defaults: 2,624 Training images, 100 iterations,
scaling on 1,000 images and all of them; ``--quick``: 150 images, 5
iterations, no scaling.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fruits_root, image_files, row  # noqa: E402

K = 100
SEED = 0


def _spark():
    import bovw.spark as bs

    s = bs.session("local[2]", "bovw-bench", conf={
        "spark.ui.enabled": "false",
        "spark.sql.shuffle.partitions": "4",
        "spark.driver.memory": "4g",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
    })
    s.sparkContext.setLogLevel("ERROR")
    return s


def _images_df(spark, files, partitions=4):
    import pandas as pd

    pdf = pd.DataFrame({"path": [f.as_uri() for f in files], "content": [f.read_bytes() for f in files]})
    return spark.createDataFrame(pdf, "path string, content binary").repartition(partitions).cache()


class _Timer:
    def __init__(self):
        self.t = {}

    def __call__(self, name):
        timer = self

        class _T:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *a):
                timer.t[name] = time.perf_counter() - self.t0

        return _T()


def seed_pipeline(spark, images, k, iters, n_components):
    """The seed notebooks' pipeline; returns per-stage seconds and notes."""
    from pyspark.ml.feature import PCA, CountVectorizer
    from pyspark.mllib.clustering import KMeans
    from pyspark.mllib.linalg import Vectors

    T = _Timer()

    def sift(content):
        import cv2
        import numpy as np

        cv2.setNumThreads(1)
        img = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_GRAYSCALE)
        _, des = cv2.SIFT_create().detectAndCompute(img, None)
        return [] if des is None else des.tolist()

    with T("descriptors"):
        desc = images.rdd.map(lambda r: (r.path, sift(r.content))).cache()
        desc.count()
    with T("kmeans"):
        flat = desc.flatMap(lambda t: [Vectors.dense(d) for d in t[1]]).cache()
        model = KMeans.train(flat, k, maxIterations=iters, seed=SEED)
    with T("bag of words"):
        words = desc.map(lambda t: (t[0], [str(model.predict(d)) for d in t[1]])).toDF(["path", "words"])
        cv = CountVectorizer(inputCol="words", outputCol="bow", vocabSize=k).fit(words)
        bow = cv.transform(words).cache()
        bow.count()
    with T("pca"):
        pca = PCA(k=n_components, inputCol="bow", outputCol="pca_features").fit(bow)
        pca.transform(bow).count()
    n_desc = flat.count()
    flat.unpersist()
    desc.unpersist()
    bow.unpersist()
    return T.t, f"{n_desc} descriptors"


def bovw_spark_pipeline(spark, images, k, iters, n_components, max_sample=None):
    import bovw.spark as bs

    T = _Timer()
    with T("descriptors"):
        desc = bs.extract_descriptors(images, "sift").cache()
        desc.count()
    with T("kmeans"):
        # all descriptors (as KMeans.train), on the driver when they fit in 1 GiB, else distributed Lloyd;
        # the scaling runs fit a seeded sample of max_sample descriptors
        km = bs.fit_vocabulary(desc, k, algorithm="sample" if max_sample else "auto", max_iter=iters, tol=0.0,
                               random_state=SEED, max_sample=max_sample)
    with T("bag of words"):
        bow = bs.bow_histograms(desc, km.cluster_centers_).cache()
        bow.count()
    with T("pca"):
        pca = bs.fit_pca(bow, n_components)
        bs.pca_transform(bow, pca).count()
    desc.unpersist()
    bow.unpersist()
    return T.t, f"kmeans {km.n_iter_} iterations on {max_sample or 'all'} descriptors"


def bovw_local_pipeline(files, k, iters, n_components):
    import pyarrow as pa

    import bovw
    from bovw import descriptor_matrix

    T = _Timer()
    with T("descriptors"):
        table = pa.table({"path": [str(f) for f in files], "content": [f.read_bytes() for f in files]})
        d = bovw.extract_descriptors(table, "sift")
    with T("kmeans"):
        X, _ = descriptor_matrix(d.column("descriptors"))
        km = bovw.KMeans(n_clusters=k, n_init=1, max_iter=iters, tol=0.0, random_state=SEED).fit(X)  # Yinyang (default)
    with T("bag of words"):
        H = bovw.BagOfWords(km.cluster_centers_).counts(d.column("descriptors"))
    with T("pca"):
        bovw.PCA(n_components).fit(H).transform(H)
    return T.t, f"kmeans {km.n_iter_} iterations"


def _warm_up(spark, images):
    """Start and warm the Python workers (imports of bovw, cv2, pyspark.ml) so
    that neither pipeline pays for them inside a timed stage."""
    import pyarrow as pa

    def imp(batches):
        import bovw  # noqa: F401
        import cv2  # noqa: F401

        for b in batches:
            yield pa.RecordBatch.from_arrays([pa.array([b.num_rows], pa.int64())], names=["n"])

    for _ in range(2):
        images.select("path").mapInArrow(imp, "n bigint").count()
        images.rdd.map(lambda r: __import__("cv2") is not None and __import__("bovw") is not None).count()


def _overhead(spark, images, repeat=5):
    """Spark's own floor: best seconds of an empty job and of a mapInArrow
    pass over the cached images that returns one row per batch."""
    import pyarrow as pa

    from common import best_of

    def nothing(batches):
        for b in batches:
            yield pa.RecordBatch.from_arrays([pa.array([b.num_rows], pa.int64())], names=["n"])

    empty = best_of(lambda: spark.range(1).count(), repeat)
    arrow = best_of(lambda: images.select("path", "content").mapInArrow(nothing, "n bigint").count(), repeat)
    return empty, arrow


def _reset(spark):
    """Between pipelines: drop cached data and collect garbage in the JVM and
    here, so that neither pipeline runs in the other's leftovers."""
    import gc

    spark.catalog.clearCache()
    spark.sparkContext._jvm.System.gc()
    gc.collect()


def _emit(rows, r):
    rows.append(r)
    if os.environ.get("BOVW_BENCH_VERBOSE"):
        print(r, flush=True)


def _total(t):
    return sum(t.values())


def _env_int(name, default):
    v = os.environ.get(name)
    return int(v) if v else default


def run(quick: bool = False) -> list[dict]:
    n_images = _env_int("BOVW_SPARK_IMAGES", 150 if quick else 2624)
    iters = _env_int("BOVW_SPARK_ITERS", 5 if quick else 100)
    with_seed = os.environ.get("BOVW_SPARK_SEED", "1") != "0"
    scaling = os.environ.get("BOVW_SPARK_SCALING", "none" if quick else "1000,all")
    n_components = 20
    files = image_files("Training", n_images)
    spark = _spark()
    rows = []
    try:
        images = _images_df(spark, files)
        images.count()
        _warm_up(spark, images)
        empty_s, arrow_s = _overhead(spark, images)
        case = f"{len(files)} images, K={K}, {iters} iterations, local[2]"
        _emit(rows, row("spark/overhead", case, "none", empty_s, None, "an empty Spark job (spark.range(1).count())"))
        _emit(rows, row("spark/overhead", case, "none", arrow_s, None,
                        "a mapInArrow pass over the cached images doing nothing (+ count)"))
        seed_t, seed_notes = seed_pipeline(spark, images, K, iters, n_components) if with_seed else ({}, "")
        _reset(spark)
        images.cache().count()
        ours_t, ours_notes = bovw_spark_pipeline(spark, images, K, iters, n_components)
        local_t, local_notes = bovw_local_pipeline(files, K, iters, n_components)
        for stage in seed_t:
            _emit(rows, row(f"spark/{stage}", case, "seed (cv2 RDD + MLlib)", ours_t[stage], seed_t[stage],
                            f"bovw on Spark vs seed; {seed_notes}; {ours_notes}"))
        if seed_t:
            _emit(rows, row("spark/end-to-end", case, "seed (cv2 RDD + MLlib)", _total(ours_t), _total(seed_t),
                            f"sum of the stages; {seed_notes}; {ours_notes}"))
        for stage in local_t:
            _emit(rows, row(f"spark/{stage}", case, "bovw in-process", ours_t[stage], local_t[stage],
                            f"bovw on Spark vs in-process (speedup < 1: Spark overhead); {local_notes}"))
        _emit(rows, row("spark/end-to-end", case, "bovw in-process", _total(ours_t), _total(local_t),
                        f"{os.cpu_count()} cores"))
        # scaling of bovw on Spark
        import bovw.spark as bs

        sizes = [] if scaling == "none" else [None if v == "all" else int(v) for v in scaling.split(",")]
        for n in sizes:
            if n is None:
                t0 = time.perf_counter()
                imgs = bs.read_images(spark, fruits_root(), num_partitions=8).cache()
                count = imgs.count()
                read_s = time.perf_counter() - t0
            else:
                sub = image_files("Training", n)
                t0 = time.perf_counter()
                imgs = _images_df(spark, sub)
                count = imgs.count()
                read_s = time.perf_counter() - t0
            _warm_up(spark, imgs)
            t, notes = bovw_spark_pipeline(spark, imgs, K, 10 if quick else 20, n_components, max_sample=200_000)
            imgs.unpersist()
            _emit(rows, row("spark/scaling", f"{count} images, K={K}, local[2]", "none", _total(t) + read_s, None,
                            f"read {read_s:.1f}s + " + ", ".join(f"{s} {v:.1f}s" for s, v in t.items())
                            + f"; {count / (_total(t) + read_s):.0f} images/s; {notes}"))
    finally:
        spark.stop()
    return rows


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--images", type=int, help="Training images (default 2624; quick 150)")
    ap.add_argument("--iters", type=int, help="K-Means iterations (default 100; quick 5)")
    ap.add_argument("--no-seed", action="store_true", help="skip the seed pipeline")
    ap.add_argument("--scaling", help="sizes for the scaling rows, e.g. 1000,all, or none")
    a = ap.parse_args()
    for flag, env in ((a.images, "BOVW_SPARK_IMAGES"), (a.iters, "BOVW_SPARK_ITERS"),
                      (a.scaling, "BOVW_SPARK_SCALING")):
        if flag is not None:
            os.environ[env] = str(flag)
    if a.no_seed:
        os.environ["BOVW_SPARK_SEED"] = "0"
    quick = a.quick
    t0 = time.perf_counter()
    out = run(quick=quick)
    for r in out:
        sp = f"{r['speedup']:.1f}x" if r["speedup"] else "-"
        ref = f"{r['ref_s']:.2f}" if r["ref_s"] else "-"
        print(f"{r['stage']:<22} {r['reference']:<24} ours {r['ours_s']:8.2f}s  ref {ref:>8}s  {sp:>8}  "
              f"{r['case']} | {r['notes']}")
    print(f"bench_spark: {time.perf_counter() - t0:.0f} s")

"""Bag-of-visual-words histograms against NumPy, scikit-learn and Spark.

Real data: OpenCV SIFT descriptors of real Fruits-360 images (conftest
fixtures) and a scikit-learn K-Means vocabulary; the reference histograms are
``KMeans.predict`` + ``np.bincount`` per image, scikit-learn's
``TfidfTransformer``/``normalize``, and Spark's ``CountVectorizer``/``IDF``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import bovw

import cv2  # noqa: E402

N_WORDS = 40


@pytest.fixture(scope="module")
def sift_descriptors(real_gray_images):
    """cv2 SIFT descriptors of 160 real images, plus 3 images without any."""
    sift = cv2.SIFT_create()
    out = []
    for _, img in real_gray_images[:160]:
        _, d = sift.detectAndCompute(img, None)
        out.append(np.zeros((0, 128), np.float32) if d is None else d.astype(np.float32))
    flat = np.zeros((100, 100), np.uint8)  # no keypoints on a flat image
    _, d = sift.detectAndCompute(flat, None)
    assert d is None or len(d) == 0
    empty = np.zeros((0, 128), np.float32)
    return [empty] + out[:80] + [empty] + out[80:] + [empty]


@pytest.fixture(scope="module")
def kmeans(sift_descriptors):
    from sklearn.cluster import KMeans

    X = np.concatenate(sift_descriptors)
    return KMeans(n_clusters=N_WORDS, n_init=1, max_iter=50, random_state=0).fit(X)


def reference_counts(descs, km):
    rows = []
    for d in descs:
        if len(d) == 0:
            rows.append(np.zeros(N_WORDS))
        else:
            rows.append(np.bincount(km.predict(d), minlength=N_WORDS))
    return np.array(rows, dtype=np.float64)


def exact_labels(d, centers):
    d64 = d.astype(np.float64)
    c64 = centers.astype(np.float64)
    dist = ((d64[:, None, :] - c64[None]) ** 2).sum(-1)
    return dist.argmin(1), np.sort(dist, 1)


def arrow_column(descs, null_rows=()):
    offsets = np.zeros(len(descs) + 1, np.int32)
    np.cumsum([len(d) for d in descs], out=offsets[1:])
    values = pa.array(np.concatenate(descs).reshape(-1).astype(np.float32))
    rows = pa.FixedSizeListArray.from_arrays(values, 128)
    mask = np.zeros(len(descs), bool)
    mask[list(null_rows)] = True
    return pa.ListArray.from_arrays(pa.array(offsets), rows, mask=pa.array(mask) if null_rows else None)


# -- counts -------------------------------------------------------------------
def test_bow_histograms_equal_bincount(sift_descriptors, kmeans):
    words = [kmeans.predict(d) if len(d) else np.zeros(0, np.int64) for d in sift_descriptors]
    ref = np.array([np.bincount(w, minlength=N_WORDS) for w in words], dtype=np.float32)
    # list of per-image arrays
    h = bovw.bow_histograms(words, n_words=N_WORDS)
    assert h.dtype == np.float32 and h.shape == (len(words), N_WORDS)
    np.testing.assert_array_equal(h, ref)
    # flat + offsets
    offsets = np.concatenate([[0], np.cumsum([len(w) for w in words])])
    np.testing.assert_array_equal(bovw.bow_histograms(np.concatenate(words), offsets, n_words=N_WORDS), ref)
    # image_index, shuffled order
    idx = np.repeat(np.arange(len(words)), [len(w) for w in words])
    flat = np.concatenate(words)
    perm = np.random.default_rng(0).permutation(flat.size)
    h2 = bovw.bow_histograms(flat[perm], image_index=idx[perm], n_images=len(words), n_words=N_WORDS)
    np.testing.assert_array_equal(h2, ref)
    # empty images stay, as zero rows
    assert h[0].sum() == 0 and h[81].sum() == 0 and h[-1].sum() == 0
    assert h.sum() == sum(len(w) for w in words)


def test_bag_of_words_matches_kmeans_predict(sift_descriptors, kmeans):
    bow = bovw.BagOfWords(kmeans)
    h = bow.fit_transform(sift_descriptors)
    ref = reference_counts(sift_descriptors, kmeans)
    assert h.shape == ref.shape and h.dtype == np.float32
    np.testing.assert_array_equal(h.sum(1), ref.sum(1))
    # Assignments can only differ on float32 near-ties: check against exact
    # float64 distances, and that disagreement with sklearn is rare.
    diff = np.abs(h - ref).sum() / 2
    assert diff <= 0.002 * ref.sum(), diff
    X = np.concatenate(sift_descriptors)
    lab, dist = exact_labels(X, kmeans.cluster_centers_)
    clear = (dist[:, 1] - dist[:, 0]) > 1e-3 * dist[:, 1]
    owner = np.repeat(np.arange(len(sift_descriptors)), [len(d) for d in sift_descriptors])
    exact = np.zeros_like(ref)
    np.add.at(exact, (owner[clear], lab[clear]), 1)
    ours_clear = bovw.bow_histograms(
        bovw.BagOfWords(kmeans.cluster_centers_).transform(X, offsets=np.arange(len(X) + 1)).argmax(1)[clear],
        image_index=owner[clear],
        n_images=len(sift_descriptors),
        n_words=N_WORDS,
    )
    np.testing.assert_array_equal(ours_clear, exact)


def test_descriptor_inputs_agree(sift_descriptors, kmeans):
    bow = bovw.BagOfWords(kmeans.cluster_centers_).fit(None)
    h_list = bow.transform(sift_descriptors)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in sift_descriptors])])
    flat = np.concatenate(sift_descriptors)
    np.testing.assert_array_equal(bow.transform(flat, offsets=offsets), h_list)
    col = arrow_column(sift_descriptors)
    np.testing.assert_array_equal(bow.transform(col), h_list)
    # a sliced column and a chunked column
    np.testing.assert_array_equal(bow.transform(col.slice(5, 30)), h_list[5:35])
    chunked = pa.chunked_array([col.slice(0, 50), col.slice(50)])
    np.testing.assert_array_equal(bow.transform(chunked), h_list)
    # null rows are images without descriptors
    descs = list(sift_descriptors)
    descs[3] = np.zeros((0, 128), np.float32)
    col_null = arrow_column(descs, null_rows=[3])
    h_null = bow.transform(col_null)
    assert h_null[3].sum() == 0
    np.testing.assert_array_equal(np.delete(h_null, 3, 0), np.delete(h_list, 3, 0))
    # None entries in a list
    h_none = bow.transform([None, sift_descriptors[1]])
    np.testing.assert_array_equal(h_none, np.stack([np.zeros(N_WORDS), h_list[1]]))


def test_extract_descriptors_column_to_histograms(sample_root, kmeans):
    """The Arrow batch from bovw.extract_descriptors goes straight in."""
    files = sorted(sample_root.glob("Test/*/*.jpg"))[:12]
    table = pa.table({"content": pa.array([f.read_bytes() for f in files], pa.binary())})
    batch = bovw.extract_descriptors(table, "sift")
    col = batch.column("descriptors")
    h = bovw.BagOfWords(kmeans).transform(col)
    assert h.shape == (12, N_WORDS)
    np.testing.assert_array_equal(h.sum(1), np.asarray(batch.column("n_keypoints").fill_null(0)))


# -- weighting ----------------------------------------------------------------
@pytest.mark.parametrize("smooth", [True, False])
@pytest.mark.parametrize("norm", [None, "l1", "l2"])
def test_tfidf_matches_sklearn(sift_descriptors, kmeans, smooth, norm):
    from sklearn.feature_extraction.text import TfidfTransformer

    descs = sift_descriptors[1:81]  # no empty images: sklearn's idf is inf for df = 0 without smoothing
    bow = bovw.BagOfWords(kmeans, norm=norm, use_idf=True, smooth_idf=smooth)
    ours = bow.fit_transform(descs)
    counts = bow.counts(descs).astype(np.float64)
    ref_t = TfidfTransformer(norm=norm, smooth_idf=smooth).fit(counts)
    ok = np.asarray((counts > 0).sum(0) > 0)
    np.testing.assert_allclose(bow.idf_[ok], ref_t.idf_[ok], rtol=1e-12)
    np.testing.assert_allclose(ours, ref_t.transform(counts).toarray(), rtol=1e-5, atol=1e-6)
    # the same weights through bow_histograms, fitted or given
    words = [kmeans.predict(d) for d in descs]
    kind = "smooth" if smooth else "sklearn"
    np.testing.assert_allclose(bovw.bow_histograms(words, n_words=N_WORDS, idf=kind, norm=norm), ours, rtol=1e-6)
    np.testing.assert_allclose(bovw.bow_histograms(words, n_words=N_WORDS, idf=bow.idf_, norm=norm), ours, rtol=1e-6)


def test_norms_match_sklearn_normalize(sift_descriptors, kmeans):
    from sklearn.preprocessing import normalize

    words = [kmeans.predict(d) if len(d) else [] for d in sift_descriptors]
    counts = bovw.bow_histograms(words, n_words=N_WORDS).astype(np.float64)
    for norm in ("l1", "l2"):
        h = bovw.bow_histograms(words, n_words=N_WORDS, norm=norm)
        np.testing.assert_allclose(h, normalize(counts, norm=norm), rtol=1e-6, atol=1e-7)
        assert h[0].sum() == 0  # empty image stays zero, no NaN


# -- Arrow outputs --------------------------------------------------------------
def test_histograms_to_arrow_types():
    h = np.arange(12, dtype=np.float32).reshape(3, 4)
    fsl = bovw.histograms_to_arrow(h)
    assert fsl.type == pa.list_(pa.float32(), 4)
    np.testing.assert_array_equal(np.asarray(fsl.flatten()).reshape(3, 4), h)
    lst = bovw.histograms_to_arrow(h, "list_float64")
    assert lst.type == pa.list_(pa.float64())
    assert lst.to_pylist()[2] == [8.0, 9.0, 10.0, 11.0]
    assert bovw.histograms_to_arrow(h, "list").type == pa.list_(pa.float32())
    with pytest.raises(ValueError, match="kind"):
        bovw.histograms_to_arrow(h, "dense")


# -- bad input -------------------------------------------------------------------
def test_bad_words():
    with pytest.raises(ValueError, match=r"word id 5 at position 2 .*n_words=5"):
        bovw.bow_histograms(np.array([0, 1, 5]), [0, 3], n_words=5)
    with pytest.raises(ValueError, match=r"word id -1"):
        bovw.bow_histograms(np.array([0, -1]), [0, 2], n_words=5)
    with pytest.raises(ValueError, match="offsets"):
        bovw.bow_histograms(np.array([0, 1]), [0, 3], n_words=5)
    with pytest.raises(ValueError, match="offsets"):
        bovw.bow_histograms(np.array([0, 1]), [1, 2], n_words=5)
    with pytest.raises(ValueError, match="offsets"):
        bovw.bow_histograms(np.array([0, 1]), [0, 2, 1, 2], n_words=5)
    with pytest.raises(ValueError, match="offsets or image_index"):
        bovw.bow_histograms(np.array([0, 1]), n_words=5)
    with pytest.raises(ValueError, match="image_index"):
        bovw.bow_histograms(np.array([0, 1]), image_index=[0], n_images=1, n_words=5)
    with pytest.raises(ValueError, match="image_index"):
        bovw.bow_histograms(np.array([0, 1]), image_index=[0, 3], n_images=2, n_words=5)
    with pytest.raises(ValueError, match="integer"):
        bovw.bow_histograms(np.array([0.5]), [0, 1], n_words=5)
    with pytest.raises(ValueError, match="norm"):
        bovw.bow_histograms(np.array([0]), [0, 1], n_words=5, norm="l3")
    with pytest.raises(ValueError, match="idf"):
        bovw.bow_histograms(np.array([0]), [0, 1], n_words=5, idf=np.ones(3))


def test_bad_descriptors():
    vocab = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)
    bow = bovw.BagOfWords(vocab)
    bad = np.ones((4, 16), np.float32)
    bad[2, 5] = np.nan
    with pytest.raises(ValueError, match="row 2 contains NaN"):
        bow.transform([bad])
    with pytest.raises(ValueError, match=r"X\[1\].*\(n, 16\)"):
        bow.transform([np.ones((2, 16), np.float32), np.ones((2, 15), np.float32)])
    with pytest.raises(TypeError, match="binary"):
        bow.transform([np.ones((2, 16), np.uint8)])
    with pytest.raises(ValueError, match="offsets"):
        bow.transform(np.ones((3, 16), np.float32), offsets=[0, 2])
    with pytest.raises(ValueError, match="vocabulary"):
        bovw.BagOfWords(np.ones((0, 16))).transform([bad])
    vb = vocab.copy()
    vb[0, 0] = np.inf
    with pytest.raises(ValueError, match="vocabulary"):
        bovw.BagOfWords(vb).transform([np.ones((2, 16), np.float32)])
    with pytest.raises(TypeError, match="Hamming"):
        bovw.BagOfWords(np.ones((4, 32), np.uint8)).transform([np.ones((2, 32), np.uint8)])
    col = arrow_column([np.ones((2, 128), np.float32)])
    with pytest.raises(ValueError, match="width 128"):
        bow.transform(col)


# -- Spark ---------------------------------------------------------------------------
@pytest.mark.spark
def test_counts_equal_spark_countvectorizer(spark, sift_descriptors, kmeans):
    from pyspark.ml.feature import IDF, CountVectorizer

    words = [kmeans.predict(d) if len(d) else np.zeros(0, np.int64) for d in sift_descriptors]
    rows = [(i, [f"w{int(x)}" for x in w]) for i, w in enumerate(words)]
    df = spark.createDataFrame(rows, "image long, words array<string>")
    cv = CountVectorizer(inputCol="words", outputCol="tf", vocabSize=N_WORDS, minDF=1.0).fit(df)
    tf = cv.transform(df)
    idf_model = IDF(inputCol="tf", outputCol="tfidf").fit(tf)
    out = tf.select("image", "tf").orderBy("image").collect()
    assert len(out) == len(words)  # no image dropped
    # CountVectorizer re-indexes terms by frequency: map back to word ids.
    term_to_word = np.array([int(t[1:]) for t in cv.vocabulary])
    spark_counts = np.zeros((len(words), N_WORDS))
    for r in out:
        v = r["tf"]
        spark_counts[r["image"], term_to_word[v.indices]] = v.values
    ours = bovw.bow_histograms(words, n_words=N_WORDS)
    np.testing.assert_array_equal(ours, spark_counts)
    # Spark's IDF formula, mapped the same way (words never seen are absent in Spark).
    spark_idf = np.asarray(idf_model.idf.toArray())
    ours_idf = bovw.BagOfWords(kmeans, use_idf=True, idf_formula="spark").fit(sift_descriptors).idf_
    np.testing.assert_allclose(ours_idf[term_to_word], spark_idf, rtol=1e-12)


@pytest.mark.spark
def test_histograms_become_spark_vectors_without_udf(spark, sift_descriptors, kmeans):
    """mapInArrow yields list<float64> histograms; array_to_vector makes ML vectors."""
    from pyspark.ml.functions import array_to_vector

    vocab = kmeans.cluster_centers_.astype(np.float32)
    descs = sift_descriptors[:20]
    rows = [(i, d.astype(np.float64).tolist()) for i, d in enumerate(descs)]
    sdf = spark.createDataFrame(rows, "image long, descriptors array<array<float>>").repartition(2)

    def to_histograms(batches):
        bow = bovw.BagOfWords(vocab, n_threads=1)
        for b in batches:
            h = bow.transform(b.column("descriptors"))
            yield pa.RecordBatch.from_arrays(
                [b.column("image"), bovw.histograms_to_arrow(h, "list_float64")], ["image", "histogram"]
            )

    res = sdf.mapInArrow(to_histograms, "image long, histogram array<double>")
    vec = res.select("image", array_to_vector("histogram").alias("features")).orderBy("image").collect()
    got = np.array([r["features"].toArray() for r in vec])
    np.testing.assert_array_equal(got, bovw.BagOfWords(vocab).transform(descs))

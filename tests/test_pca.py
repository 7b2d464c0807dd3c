"""PCA against scikit-learn and Spark MLlib.

Real data: bag-of-visual-words histograms of real Fruits-360 images (OpenCV
SIFT descriptors, a fixed vocabulary of real descriptors drawn at random,
bovw histograms), plus synthetic data with known spectra.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA as SkPCA
from sklearn.utils.estimator_checks import parametrize_with_checks

import bovw

import cv2  # noqa: E402


@pytest.fixture(scope="module")
def bow_histograms(real_gray_images):
    """(n_images, 100) float64 BoW histograms of real images (L1-normalised rows)."""
    sift = cv2.SIFT_create()
    descs = []
    for _, img in real_gray_images:
        _, d = sift.detectAndCompute(img, None)
        descs.append(np.zeros((0, 128), np.float32) if d is None else d)
    allx = np.concatenate(descs)
    rng = np.random.default_rng(0)
    vocab = allx[rng.choice(len(allx), 100, replace=False)]
    h = bovw.BagOfWords(vocab, norm="l1").transform(descs)
    return h.astype(np.float64)


def low_rank(n, d, rank=6, noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, rank)) * (10.0 / np.arange(1, rank + 1))
    return a @ rng.normal(size=(rank, d)) + noise * rng.normal(size=(n, d)) + 5.0


def anisotropic(n, d, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) * np.geomspace(10, 0.1, d) + rng.normal(size=d)


def assert_same_fit(ours, ref, X, *, rtol_var=1e-5, atol_comp=1e-4, atol_t=1e-4, n_check=None):
    assert ours.n_components_ == ref.n_components_
    k = ref.n_components_ if n_check is None else min(n_check, ref.n_components_)
    np.testing.assert_allclose(ours.explained_variance_[:k], ref.explained_variance_[:k], rtol=rtol_var)
    np.testing.assert_allclose(ours.explained_variance_ratio_[:k], ref.explained_variance_ratio_[:k], rtol=rtol_var)
    np.testing.assert_allclose(ours.singular_values_[:k], ref.singular_values_[:k], rtol=rtol_var)
    np.testing.assert_allclose(ours.mean_, ref.mean_, rtol=1e-6, atol=1e-9)
    # same sign convention: equal directly, which implies equal up to sign
    np.testing.assert_allclose(ours.components_[:k], ref.components_[:k], atol=atol_comp)
    scale = np.abs(ref.transform(X)[:, :k]).max()
    np.testing.assert_allclose(ours.transform(X)[:, :k], ref.transform(X)[:, :k], atol=atol_t * scale)


# -- scikit-learn parity ------------------------------------------------------------
@pytest.mark.parametrize("solver", ["auto", "full", "covariance_eigh"])
@pytest.mark.parametrize("n_components", [None, 10, 0.5, 0.9, 0.95])
def test_bow_histograms_match_sklearn(bow_histograms, solver, n_components):
    X = bow_histograms
    ours = bovw.PCA(n_components, svd_solver=solver).fit(X)
    ref = SkPCA(n_components, svd_solver=solver).fit(X)
    assert ours.n_components_ == ref.n_components_  # variance-fraction choice too
    # The trailing eigenvalues of real histograms cluster: compare the
    # components whose eigenvalue is separated from its neighbours.
    ev = ref.explained_variance_
    k = ref.n_components_
    gaps = np.minimum(np.abs(np.diff(np.r_[np.inf, ev])), np.abs(np.diff(np.r_[ev, 0.0])))
    sep = np.flatnonzero(gaps[:k] < 1e-3 * ev[0])
    n_check = k if sep.size == 0 else max(int(sep[0]), 1)
    assert n_check >= min(k, 10)
    assert_same_fit(ours, ref, X, n_check=n_check)
    np.testing.assert_allclose(ours.noise_variance_, ref.noise_variance_, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(ours.explained_variance_, ref.explained_variance_, rtol=1e-5, atol=1e-9 * ev[0])


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99, 0.999])
def test_variance_fraction_choice(bow_histograms, fraction):
    ours = bovw.PCA(fraction).fit(bow_histograms)
    ref = SkPCA(fraction).fit(bow_histograms)
    assert ours.n_components_ == ref.n_components_
    assert ours.explained_variance_ratio_.sum() > fraction


def test_float32_histograms(bow_histograms):
    X = bow_histograms.astype(np.float32)
    ours = bovw.PCA(20).fit(X)
    ref = SkPCA(20).fit(X)
    assert ours.components_.dtype == np.float32 and ours.transform(X).dtype == np.float32
    # float32 scikit-learn computes X^T X in float32: compare with the float64 fit instead
    ref64 = SkPCA(20).fit(X.astype(np.float64))
    assert_same_fit(ours, ref64, X.astype(np.float64), n_check=10, rtol_var=1e-5, atol_comp=1e-4, atol_t=1e-4)
    np.testing.assert_allclose(ours.explained_variance_[:10], ref.explained_variance_[:10], rtol=1e-3)


@pytest.mark.parametrize("shape", [(3000, 40), (400, 60), (80, 300)])
def test_random_data_match_sklearn(shape):
    X = anisotropic(*shape)
    for solver in ("full", "covariance_eigh", "auto"):
        ours = bovw.PCA(15, svd_solver=solver).fit(X)
        ref = SkPCA(15, svd_solver=solver if solver != "auto" else "full").fit(X)
        assert_same_fit(ours, ref, X)
        np.testing.assert_allclose(ours.noise_variance_, SkPCA(15, svd_solver="full").fit(X).noise_variance_, rtol=1e-5) if solver != "covariance_eigh" or shape[0] >= shape[1] else None


def test_randomized_solver():
    X = low_rank(600, 800)
    ours = bovw.PCA(5, svd_solver="randomized", random_state=0).fit(X)
    ref = SkPCA(5, svd_solver="full").fit(X)
    assert ours._fit_svd_solver == "randomized"
    assert_same_fit(ours, ref, X)
    np.testing.assert_allclose(
        ours.noise_variance_, SkPCA(5, svd_solver="randomized", random_state=0).fit(X).noise_variance_, rtol=1e-5
    )
    # auto picks randomized here, as scikit-learn does
    assert bovw.PCA(5).fit(X)._fit_svd_solver == SkPCA(5).fit(X)._fit_svd_solver == "randomized"
    # reproducible with a seed
    again = bovw.PCA(5, svd_solver="randomized", random_state=0).fit(X)
    np.testing.assert_array_equal(again.components_, ours.components_)


def test_whiten_inverse_and_covariance(bow_histograms):
    X = bow_histograms
    for whiten in (False, True):
        ours = bovw.PCA(12, whiten=whiten).fit(X)
        ref = SkPCA(12, whiten=whiten).fit(X)
        t, rt = ours.transform(X), ref.transform(X)
        np.testing.assert_allclose(t, rt, atol=1e-4 * np.abs(rt).max())
        np.testing.assert_allclose(ours.fit_transform(X), rt, atol=1e-4 * np.abs(rt).max())
        back, rback = ours.inverse_transform(t), ref.inverse_transform(rt)
        np.testing.assert_allclose(back, rback, atol=1e-4 * np.abs(rback).max())
        np.testing.assert_allclose(ours.get_covariance(), ref.get_covariance(), atol=1e-6 * np.abs(ref.get_covariance()).max())
        np.testing.assert_allclose(ours.get_precision(), ref.get_precision(), rtol=1e-3, atol=1e-3 * np.abs(ref.get_precision()).max())
    full = bovw.PCA().fit(X)
    np.testing.assert_allclose(full.inverse_transform(full.transform(X)), X, atol=1e-9)


def test_partial_sums_equal_one_fit(bow_histograms):
    X = bow_histograms
    parts = [X[:123], X[123:124], X[124:400], X[400:]]
    count, s, g = 0, 0.0, 0.0
    for p in parts:
        c, ps, pg = bovw.pca_partial_sums(p)
        assert ps.shape == (X.shape[1],) and pg.shape == (X.shape[1], X.shape[1])
        count, s, g = count + c, s + ps, g + pg
    assert count == len(X)
    np.testing.assert_allclose(g, X.T @ X, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(s, X.sum(0), rtol=1e-12, atol=1e-12)
    ours = bovw.PCA(0.9).fit_partial_sums(count, s, g)
    ref = SkPCA(0.9).fit(X)
    assert_same_fit(ours, ref, X, n_check=10)
    # float32 batches accumulate in float64
    X32 = X.astype(np.float32)
    c32, s32, g32 = bovw.pca_partial_sums(X32)
    assert s32.dtype == np.float64 and g32.dtype == np.float64
    ref_g = X32.astype(np.float64).T @ X32.astype(np.float64)
    np.testing.assert_allclose(g32, ref_g, rtol=1e-5, atol=1e-6 * np.abs(ref_g).max())


def test_thread_count_does_not_change_result(bow_histograms):
    X = np.tile(bow_histograms, (10, 1))  # several row blocks
    a = bovw.PCA(10, n_threads=1).fit(X)
    b = bovw.PCA(10, n_threads=2).fit(X)
    np.testing.assert_array_equal(a.components_, b.components_)
    np.testing.assert_array_equal(a.transform(X), b.transform(X))
    # d = 300 takes faer's eigendecomposition with a fixed parallel degree (d > 200).
    W = low_rank(3000, 300, rank=40, noise=0.05, seed=3)
    fits = [bovw.PCA(0.9, n_threads=t).fit(W) for t in (1, 2, 3)]
    for f in fits[1:]:
        np.testing.assert_array_equal(fits[0].explained_variance_, f.explained_variance_)
        np.testing.assert_array_equal(fits[0].components_, f.components_)


# -- scikit-learn estimator checks --------------------------------------------------
# check_array_api_input is skipped by scikit-learn itself unless SCIPY_ARRAY_API is set.
@parametrize_with_checks([bovw.PCA(), bovw.PCA(2, whiten=True)])
def test_sklearn_compatible(estimator, check):
    check(estimator)


# -- bad input ----------------------------------------------------------------------
def test_bad_input():
    X = anisotropic(50, 8)
    bad = X.copy()
    bad[4, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        bovw.PCA(2).fit(bad)
    bad[4, 2] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        bovw.PCA(2).fit(bad)
    with pytest.raises(ValueError, match="1 sample"):
        bovw.PCA(1).fit(X[:1])
    with pytest.raises(ValueError, match=r"n_components=9 must be between 0 and min\(n_samples, n_features\)=8"):
        bovw.PCA(9).fit(X)
    for f in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=r"'n_components' parameter of PCA must be .*a float in the range \(0\.0, 1\.0\]"):
            bovw.PCA(f).fit(X)
    with pytest.raises(TypeError, match=r"'n_components' parameter of PCA .* Got 'mle'"):
        bovw.PCA("mle").fit(X)
    with pytest.raises(TypeError, match=r"'n_components' parameter of PCA .* Got True"):
        bovw.PCA(True).fit(X)
    with pytest.raises(ValueError, match=r"'svd_solver' parameter of PCA must be a str among .*Got 'arpack'"):
        bovw.PCA(2, svd_solver="arpack").fit(X)
    with pytest.raises(ValueError, match=r"'iterated_power' parameter of PCA must be a str among \{'auto'\} or an int in the range \[0, inf\)"):
        bovw.PCA(2, iterated_power=-1).fit(X)
    with pytest.raises(ValueError, match=r"'n_oversamples' parameter of PCA must be an int in the range \[0, inf\)"):
        bovw.PCA(2, n_oversamples=-1).fit(X)
    with pytest.raises(ValueError, match=r"'n_threads' parameter of PCA must be an int in the range \[1, inf\) or None"):
        bovw.PCA(2, n_threads=0).fit(X)
    with pytest.raises(ValueError, match=r"'svd_solver' parameter of PCA"):  # fit_partial_sums validates too
        bovw.PCA(2, svd_solver="arpack").fit_partial_sums(10, X[0], np.outer(X[0], X[0]))
    with pytest.raises(ValueError, match="randomized"):
        bovw.PCA(0.5, svd_solver="randomized").fit(X)
    with pytest.raises(ValueError, match="mllib_compat"):
        bovw.PCA(2, whiten=True, mllib_compat=True).fit(X)
    pca = bovw.PCA(2).fit(X)
    with pytest.raises(ValueError, match="8 features"):
        pca.transform(X[:, :5])
    with pytest.raises(ValueError, match=r"\(n_samples, 2\)"):
        pca.inverse_transform(np.ones((3, 3)))
    with pytest.raises(ValueError, match="count"):
        bovw.PCA(2).fit_partial_sums(1, X[0], np.outer(X[0], X[0]))
    with pytest.raises(ValueError, match="gram"):
        bovw.PCA(2).fit_partial_sums(10, X[0], np.ones((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        bovw.pca_partial_sums(bad)
    # 1.0 is a valid fraction: everything
    assert bovw.PCA(1.0).fit(X).n_components_ == 8


# -- Spark MLlib parity ---------------------------------------------------------------
def _align_signs(a, ref):
    signs = np.sign((a * ref).sum(0))
    signs[signs == 0] = 1
    return a * signs


@pytest.mark.spark
@pytest.mark.parametrize("k", [5, 20])
def test_mllib_compat_matches_spark_pca(spark, bow_histograms, k):
    from pyspark.ml.feature import PCA as SparkPCA
    from pyspark.ml.linalg import Vectors

    X = bow_histograms
    df = spark.createDataFrame([(i, Vectors.dense(r)) for i, r in enumerate(X)], ["id", "features"])
    model = SparkPCA(k=k, inputCol="features", outputCol="pca").fit(df)
    out = model.transform(df).orderBy("id").collect()
    spark_t = np.array([r["pca"].toArray() for r in out])
    ours = bovw.PCA(k, mllib_compat=True).fit(X)
    t = ours.transform(X)
    # MLlib's signs are whatever LAPACK returns: align each column, then compare.
    t = _align_signs(t, spark_t)
    np.testing.assert_allclose(t, spark_t, rtol=1e-6, atol=1e-6 * np.abs(spark_t).max())
    np.testing.assert_allclose(ours.explained_variance_ratio_, model.explainedVariance.toArray(), rtol=1e-6)
    pc = model.pc.toArray()  # (d, k), columns are components
    np.testing.assert_allclose(_align_signs(ours.components_.T, pc), pc, atol=1e-6)
    # uncentred projection differs from the centred one by mean @ components.T
    centred = bovw.PCA(k).fit(X).transform(X)
    np.testing.assert_allclose(ours.transform(X) - ours.mean_ @ ours.components_.T, centred, atol=1e-10)


@pytest.mark.spark
def test_distributed_partial_sums_on_spark(spark, bow_histograms):
    """One Rust call per partition, sums reduced on the driver, one fit."""
    X = bow_histograms
    rdd = spark.sparkContext.parallelize(list(X), 3)

    def stats(rows):
        import numpy as np

        import bovw

        rows = list(rows)
        if rows:
            yield bovw.pca_partial_sums(np.array(rows), n_threads=1)

    count, s, g = rdd.mapPartitions(stats).reduce(lambda a, b: (a[0] + b[0], a[1] + b[1], a[2] + b[2]))
    ours = bovw.PCA(0.95).fit_partial_sums(count, s, g)
    ref = SkPCA(0.95).fit(X)
    assert_same_fit(ours, ref, X, n_check=10)

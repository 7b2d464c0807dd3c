"""bovw.KMeans / MiniBatchKMeans / bovw.cluster against scikit-learn, on real
SIFT descriptors (OpenCV's SIFT on Fruits-360 images) and synthetic data."""

from __future__ import annotations

import warnings

import numpy as np
import pyarrow as pa
import pytest
from sklearn.cluster import KMeans as SKKMeans
from sklearn.cluster import MiniBatchKMeans as SKMiniBatchKMeans
from sklearn.cluster import kmeans_plusplus as sk_kmeans_plusplus
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics.pairwise import euclidean_distances
from sklearn.utils.estimator_checks import parametrize_with_checks

import bovw
from bovw import cluster

import cv2  # noqa: E402


def _sift(images: list[np.ndarray]) -> np.ndarray:
    sift = cv2.SIFT_create()
    out = []
    for img in images:
        _, d = sift.detectAndCompute(img, None)
        if d is not None:
            out.append(d)
    return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)


@pytest.fixture(scope="module")
def sift_split(real_gray_images) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) OpenCV SIFT descriptors of two disjoint sets of real images."""
    imgs = [g for _, g in real_gray_images]
    return _sift(imgs[0::2]), _sift(imgs[1::2])


@pytest.fixture(scope="module")
def sift_train(sift_split) -> np.ndarray:
    return sift_split[0]


def _exact_labels(X: np.ndarray, C: np.ndarray) -> np.ndarray:
    X64, C64 = X.astype(np.float64), C.astype(np.float64)
    d2 = ((X64[:, None, :] - C64[None, :, :]) ** 2).sum(-1)
    return np.argmin(d2, axis=1)


def test_descriptors_are_real(sift_train):
    assert sift_train.shape[1] == 128 and sift_train.shape[0] > 5000
    assert sift_train.min() >= 0 and sift_train.max() <= 255


@pytest.mark.parametrize("algorithm", ["lloyd", "elkan"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_same_init_matches_sklearn(sift_train, algorithm, dtype):
    X = sift_train.astype(dtype)
    init, _ = sk_kmeans_plusplus(X, 40, random_state=0)
    ours = bovw.KMeans(40, init=init, n_init=1, algorithm=algorithm).fit(X)
    ref = SKKMeans(40, init=init, n_init=1, algorithm=algorithm).fit(X)
    agree = np.mean(ours.labels_ == ref.labels_)
    assert agree >= 0.999, f"labels agree on {agree:.5f} of points"
    np.testing.assert_allclose(ours.inertia_, ref.inertia_, rtol=1e-4)
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-3, atol=1e-2)
    assert ours.cluster_centers_.dtype == dtype
    assert ours.labels_.dtype == np.int32
    assert ours.n_features_in_ == 128
    # The labels are the nearest final centers, as scikit-learn's are.
    np.testing.assert_array_equal(ours.labels_, _exact_labels(X, ours.cluster_centers_))


def test_kmeans_plusplus_mean_inertia_matches_sklearn(sift_train):
    X = sift_train
    ours = [bovw.KMeans(32, random_state=s).fit(X).inertia_ for s in range(5)]
    ref = [SKKMeans(32, random_state=s).fit(X).inertia_ for s in range(5)]
    assert abs(np.mean(ours) / np.mean(ref) - 1) < 0.01, (ours, ref)


def test_kmeans_plusplus_function(sift_train):
    X = sift_train[:5000]
    centers, idx = cluster.kmeans_plusplus(X, 20, random_state=0)
    assert centers.shape == (20, 128) and centers.dtype == np.float32
    assert len(set(idx.tolist())) == 20
    np.testing.assert_array_equal(centers, X[idx])
    # Seeding quality like scikit-learn's greedy k-means++ (5 seeds).
    ours = np.mean([((X - cluster.kmeans_plusplus(X, 20, random_state=s)[0][_exact_labels(X, cluster.kmeans_plusplus(X, 20, random_state=s)[0])]) ** 2).sum() for s in range(3)])
    ref = np.mean([((X - sk_kmeans_plusplus(X, 20, random_state=s)[0][_exact_labels(X, sk_kmeans_plusplus(X, 20, random_state=s)[0])]) ** 2).sum() for s in range(3)])
    assert abs(ours / ref - 1) < 0.05


def test_kmeans_parallel_init(sift_train):
    X = sift_train
    a = np.mean([bovw.KMeans(32, init="k-means||", random_state=s).fit(X).inertia_ for s in range(3)])
    b = np.mean([SKKMeans(32, random_state=s).fit(X).inertia_ for s in range(3)])
    assert abs(a / b - 1) < 0.02


def test_random_init_n_init(sift_train):
    X = sift_train[:8000]
    km = bovw.KMeans(16, init="random", random_state=0).fit(X)
    ref = np.mean([SKKMeans(16, init="random", random_state=s).fit(X).inertia_ for s in range(2)])
    assert km.inertia_ <= ref * 1.01


def test_predict_is_the_exact_nearest_center(sift_split):
    train, test = sift_split
    km = bovw.KMeans(64, random_state=0, max_iter=50).fit(train)
    labels = km.predict(test)
    np.testing.assert_array_equal(labels, _exact_labels(test, km.cluster_centers_))
    # and float64 input too
    np.testing.assert_array_equal(km.predict(test.astype(np.float64)), labels)
    # Points far from the origin (the expansion loses digits there).
    far = test[:2000].astype(np.float32) + np.float32(3000.0)
    C = km.cluster_centers_ + np.float32(3000.0)
    lab, d2 = cluster.assign(far, C)
    np.testing.assert_array_equal(lab, _exact_labels(far, C))
    exact = ((far.astype(np.float64) - C[lab].astype(np.float64)) ** 2).sum(1)
    np.testing.assert_allclose(d2, exact, rtol=1e-12)
    # assign_labels ties: duplicate centers go to the lowest index.
    C2 = np.vstack([km.cluster_centers_[:3], km.cluster_centers_[:3]])
    lab2, _ = cluster.assign(test, C2)
    assert lab2.max() < 3


def test_transform_and_score_match_sklearn(sift_split):
    train, test = sift_split
    init = train[:24].copy()
    ours = bovw.KMeans(24, init=init, n_init=1).fit(train)
    ref = SKKMeans(24, init=init, n_init=1).fit(train)
    T = ours.transform(test)
    assert T.dtype == np.float32 and T.shape == (len(test), 24)
    np.testing.assert_allclose(T, euclidean_distances(test, ours.cluster_centers_), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(ours.score(test), ref.score(test), rtol=1e-4)
    np.testing.assert_array_equal(ours.fit_predict(train), ours.labels_)
    np.testing.assert_allclose(ours.fit_transform(train), ours.transform(train), rtol=1e-6)


def test_same_result_whatever_the_threads(sift_train):
    a = bovw.KMeans(48, random_state=3, n_threads=1).fit(sift_train)
    b = bovw.KMeans(48, random_state=3, n_threads=2).fit(sift_train)
    c = bovw.KMeans(48, random_state=3, n_threads=2, algorithm="lloyd").fit(sift_train)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    assert a.inertia_ == b.inertia_ and a.n_iter_ == b.n_iter_
    np.testing.assert_array_equal(a.labels_, c.labels_)
    m1 = bovw.MiniBatchKMeans(16, random_state=0, n_threads=1).fit(sift_train)
    m2 = bovw.MiniBatchKMeans(16, random_state=0, n_threads=2).fit(sift_train)
    np.testing.assert_array_equal(m1.cluster_centers_, m2.cluster_centers_)


def test_sample_weight_equals_repetition(sift_train):
    X = sift_train[:3000]
    w = np.random.default_rng(0).integers(1, 4, len(X))
    init = X[:10].copy()
    a = bovw.KMeans(10, init=init, n_init=1).fit(X, sample_weight=w)
    b = bovw.KMeans(10, init=init, n_init=1).fit(np.repeat(X, w, axis=0))
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(a.inertia_, b.inertia_, rtol=1e-6)
    ref = SKKMeans(10, init=init, n_init=1).fit(X, sample_weight=w)
    np.testing.assert_allclose(a.inertia_, ref.inertia_, rtol=1e-4)


def test_minibatch_close_to_sklearn(sift_train):
    X = sift_train
    ours = [bovw.MiniBatchKMeans(32, random_state=s).fit(X) for s in range(3)]
    ref = [SKMiniBatchKMeans(32, random_state=s).fit(X) for s in range(3)]
    a, b = np.mean([m.inertia_ for m in ours]), np.mean([m.inertia_ for m in ref])
    assert abs(a / b - 1) < 0.03, (a, b)
    full = SKKMeans(32, random_state=0).fit(X).inertia_
    assert a < full * 1.1
    m = ours[0]
    assert m.cluster_centers_.shape == (32, 128) and m.labels_.shape == (len(X),)
    np.testing.assert_array_equal(m.labels_, m.predict(X))
    # partial_fit over batches
    pf = bovw.MiniBatchKMeans(32, random_state=0)
    for i in range(0, len(X), 2048):
        pf.partial_fit(X[i : i + 2048])
    assert pf.n_steps_ == -(-len(X) // 2048)
    assert abs(-pf.score(X) / a - 1) < 0.1


def test_partial_sums_are_one_lloyd_iteration(sift_train):
    X = sift_train[:6000]
    C = X[:12].copy()
    s1, c1, i1 = cluster.partial_sums(X[:2500], C)
    s2, c2, i2 = cluster.partial_sums(X[2500:], C)
    assert s1.dtype == np.float64 and c1.dtype == np.int64 and s1.shape == (12, 128)
    sums, counts = s1 + s2, c1 + c2
    labels = _exact_labels(X, C)
    np.testing.assert_array_equal(counts, np.bincount(labels, minlength=12))
    ref = np.zeros((12, 128))
    np.add.at(ref, labels, X.astype(np.float64))
    np.testing.assert_allclose(sums, ref, rtol=1e-12)
    d2 = ((X.astype(np.float64) - C[labels]) ** 2).sum()
    np.testing.assert_allclose(i1 + i2, d2, rtol=1e-12)
    # The centers after one Lloyd step equal scikit-learn's after max_iter=1.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = SKKMeans(12, init=C, n_init=1, max_iter=1).fit(X)
    np.testing.assert_allclose(sums / counts[:, None], sk.cluster_centers_, rtol=1e-4, atol=1e-3)


def test_arrow_descriptor_column(sift_split):
    train, _ = sift_split
    X = train[:3000]
    C = X[:7].copy()
    # Three "images" with 1000 descriptors each, one null, one empty.
    flat = pa.array(X.ravel(), type=pa.float32())
    rows = pa.FixedSizeListArray.from_arrays(flat, 128)
    col = pa.ListArray.from_arrays(pa.array([0, 1000, 1000, 2000, 2000, 3000], type=pa.int32()), rows)
    lab_a, d_a = cluster.assign(col, C)
    lab_n, d_n = cluster.assign(X, C)
    np.testing.assert_array_equal(lab_a, lab_n)
    np.testing.assert_array_equal(d_a, d_n)
    s_a, c_a, i_a = cluster.partial_sums(pa.chunked_array([col]), C)
    s_n, c_n, i_n = cluster.partial_sums(X, C)
    np.testing.assert_array_equal(c_a, c_n)
    np.testing.assert_array_equal(s_a, s_n)
    # A slice of the column reads the right rows.
    lab_s, _ = cluster.assign(col.slice(3, 2), C)
    np.testing.assert_array_equal(lab_s, lab_n[2000:])


def test_kmeans_parallel_round(sift_train):
    X = sift_train[:4000]
    C = X[:1].copy()
    _, d2 = cluster.assign(X, C)
    phi = float(d2.sum())
    idx, cost = cluster.kmeans_parallel_round(X, C, 50.0, phi, random_state=0)
    np.testing.assert_allclose(cost, phi, rtol=1e-12)
    assert 20 < len(idx) < 100  # about l = 50 rows kept
    idx2, _ = cluster.kmeans_parallel_round(X, C, 50.0, phi, random_state=0, n_threads=1)
    np.testing.assert_array_equal(idx, idx2)


def test_duplicates_and_one_cluster():
    X = np.repeat(np.array([[0.0, 0.0], [5.0, 5.0]]), 50, axis=0)
    # scikit-learn's own ConvergenceWarning, so that filters on it apply.
    with pytest.warns(ConvergenceWarning, match=r"Number of distinct clusters \(2\) found smaller than n_clusters \(3\)"):
        km = bovw.KMeans(3, random_state=0).fit(X)
    assert km.inertia_ == pytest.approx(0.0, abs=1e-9)
    one = bovw.KMeans(1).fit(X)
    np.testing.assert_allclose(one.cluster_centers_, [[2.5, 2.5]])
    assert set(one.labels_.tolist()) == {0}
    np.testing.assert_allclose(one.inertia_, SKKMeans(1, n_init=1).fit(X).inertia_)
    e = bovw.KMeans(1, algorithm="elkan").fit(X)
    np.testing.assert_allclose(e.cluster_centers_, [[2.5, 2.5]])


@pytest.mark.parametrize(
    "X, exc, match",
    [
        (np.array([[1.0, np.nan], [0.0, 1.0], [2.0, 2.0]]), ValueError, "NaN"),
        (np.array([[1.0, np.inf], [0.0, 1.0], [2.0, 2.0]]), ValueError, "infinity"),
        (np.zeros((0, 4)), ValueError, "0 sample"),
        (np.zeros((2, 4)), ValueError, "n_samples=2 should be >= n_clusters=3"),
        (np.array([["a", "b"], ["c", "d"], ["e", "f"]]), TypeError, "dtype"),
        (np.array([["a", 1.0]] * 3, dtype=object), (TypeError, ValueError), "string|float"),
        (np.array([[1 + 1j, 1]] * 3), (TypeError, ValueError), "[Cc]omplex"),
    ],
)
def test_bad_input(X, exc, match):
    with pytest.raises(exc, match=match):
        bovw.KMeans(3).fit(X)


def test_bad_parameters_and_init():
    X = np.random.default_rng(0).random((20, 4))
    with pytest.raises(ValueError, match="init.*number of features"):
        bovw.KMeans(3, init=np.zeros((3, 5))).fit(X)
    with pytest.raises(ValueError, match="init.*number of clusters"):
        bovw.KMeans(3, init=np.zeros((2, 4))).fit(X)
    with pytest.raises(TypeError, match="init"):
        bovw.KMeans(3, init=np.array([["a"] * 4] * 3)).fit(X)
    with pytest.raises(ValueError, match=r"'n_clusters' parameter of KMeans must be an int in the range \[1, inf\)\. Got 0"):
        bovw.KMeans(0).fit(X)
    with pytest.raises(ValueError, match=r"'algorithm' parameter of KMeans must be a str among .*'lloyd'.*Got 'fast'"):
        bovw.KMeans(2, algorithm="fast").fit(X)
    with pytest.raises(ValueError, match=r"'max_iter' parameter of KMeans must be an int in the range \[1, inf\)\. Got 0"):
        bovw.KMeans(2, max_iter=0).fit(X)
    with pytest.raises(ValueError, match=r"'init' parameter of KMeans must be a str among .*Got 'kmeans'"):
        bovw.KMeans(2, init="kmeans").fit(X)
    km = bovw.KMeans(2, random_state=0).fit(X)
    with pytest.raises(ValueError, match="features"):
        km.predict(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="NaN"):
        km.predict(np.full((3, 4), np.nan))
    with pytest.raises(ValueError, match="NaN"):
        cluster.partial_sums(np.full((3, 4), np.nan), km.cluster_centers_)
    with pytest.raises(ValueError, match="centers"):
        cluster.assign(X, np.zeros((2, 5)))
    with pytest.warns(RuntimeWarning, match="one init"):
        bovw.KMeans(2, init=X[:2], n_init=3).fit(X)


# The one check skipped is the one scikit-learn's own KMeans and MiniBatchKMeans
# expect to fail (sklearn/utils/_test_common/instance_generator.py): fitting with
# integer sample_weight is not the same as repeating rows, because the random
# seeding draws from a different number of rows.
_EXPECTED_FAILED = {
    "check_sample_weight_equivalence_on_dense_data": (
        "sample_weight is not equivalent to removing/repeating samples (random seeding); "
        "scikit-learn's KMeans has the same expected failure"
    ),
}


@parametrize_with_checks(
    [bovw.KMeans(n_clusters=3, random_state=0), bovw.MiniBatchKMeans(n_clusters=3, random_state=0, batch_size=16)],
    expected_failed_checks=lambda est: _EXPECTED_FAILED,
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.mark.parametrize(
    "cls, params, match",
    [
        (bovw.KMeans, {"n_clusters": True}, r"'n_clusters' parameter of KMeans must be an int in the range \[1, inf\)\. Got True"),
        (bovw.KMeans, {"n_init": 0}, r"'n_init' parameter of KMeans must be a str among \{'auto'\} or an int in the range \[1, inf\)"),
        (bovw.KMeans, {"n_init": False}, r"'n_init' parameter of KMeans"),
        (bovw.KMeans, {"tol": -1e-4}, r"'tol' parameter of KMeans must be a float in the range \[0\.0, inf\)"),
        (bovw.KMeans, {"n_threads": 0}, r"'n_threads' parameter of KMeans must be an int in the range \[1, inf\) or None"),
        (bovw.KMeans, {"copy_x": "yes"}, r"'copy_x' parameter of KMeans must be an instance of 'bool'"),
        (bovw.KMeans, {"random_state": -1}, r"'random_state' parameter of KMeans"),
        (bovw.KMeans, {"init": 3}, r"'init' parameter of KMeans must be a str among .*, a callable or an array-like\. Got 3"),
        (bovw.MiniBatchKMeans, {"batch_size": 0}, r"'batch_size' parameter of MiniBatchKMeans must be an int in the range \[1, inf\)"),
        (bovw.MiniBatchKMeans, {"reassignment_ratio": -0.1}, r"'reassignment_ratio' parameter of MiniBatchKMeans"),
        (bovw.MiniBatchKMeans, {"max_no_improvement": -1}, r"'max_no_improvement' parameter of MiniBatchKMeans must be an int in the range \[0, inf\) or None"),
        (bovw.MiniBatchKMeans, {"init_size": 0}, r"'init_size' parameter of MiniBatchKMeans"),
        (bovw.MiniBatchKMeans, {"compute_labels": None}, r"'compute_labels' parameter of MiniBatchKMeans"),
    ],
)
def test_parameter_constraints(cls, params, match):
    """scikit-learn's InvalidParameterError, a ValueError and a TypeError whose
    message names the parameter, from fit and partial_fit."""
    from sklearn.utils._param_validation import InvalidParameterError

    X = np.random.default_rng(0).random((30, 4))
    with pytest.raises(InvalidParameterError, match=match) as info:
        cls(**{"n_clusters": 2, **params}).fit(X)
    assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)
    if cls is bovw.MiniBatchKMeans:
        with pytest.raises(InvalidParameterError, match=match):
            cls(**{"n_clusters": 2, **params}).partial_fit(X)


def test_kmeans_plusplus_function_validates_its_parameters():
    from sklearn.utils._param_validation import InvalidParameterError

    X = np.random.default_rng(0).random((30, 4))
    with pytest.raises(InvalidParameterError, match=r"'n_clusters' parameter of kmeans_plusplus must be an int"):
        cluster.kmeans_plusplus(X, 0)
    with pytest.raises(InvalidParameterError, match=r"'n_local_trials' parameter of kmeans_plusplus"):
        cluster.kmeans_plusplus(X, 3, n_local_trials=0)
    with pytest.raises(ValueError, match="n_samples=30 should be >= n_clusters=31"):
        cluster.kmeans_plusplus(X, 31)


def test_default_algorithm_is_the_exact_fast_path(sift_split):
    """KMeans() runs the Yinyang ('elkan') path by default, and it gives
    Lloyd's result: same labels, iterations and (up to summation order)
    centers and inertia, on real SIFT descriptors to convergence."""
    train, test = sift_split
    assert bovw.KMeans().algorithm == "elkan" and bovw.KMeans().get_params()["algorithm"] == "elkan"
    init, _ = sk_kmeans_plusplus(train, 30, random_state=1)
    default = bovw.KMeans(30, init=init, n_init=1).fit(train)
    lloyd = bovw.KMeans(30, init=init, n_init=1, algorithm="lloyd").fit(train)
    assert default.n_iter_ == lloyd.n_iter_ > 5
    np.testing.assert_array_equal(default.labels_, lloyd.labels_)
    np.testing.assert_allclose(default.cluster_centers_, lloyd.cluster_centers_, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(default.inertia_, lloyd.inertia_, rtol=1e-9)
    np.testing.assert_array_equal(default.predict(test), lloyd.predict(test))


@pytest.mark.parametrize("cls, prefix", [(bovw.KMeans, "kmeans"), (bovw.MiniBatchKMeans, "minibatchkmeans")])
def test_feature_names_out_and_pandas_output(sift_split, cls, prefix):
    """get_feature_names_out (ClassNamePrefixFeaturesOutMixin) names one column
    per center, and set_output(transform="pandas") uses the names."""
    import pandas as pd

    train, test = sift_split
    km = cls(n_clusters=5, random_state=0).fit(train[:3000])
    names = km.get_feature_names_out()
    assert names.tolist() == [f"{prefix}{i}" for i in range(5)]
    out = km.set_output(transform="pandas").transform(test[:100])
    assert isinstance(out, pd.DataFrame) and list(out.columns) == names.tolist()
    np.testing.assert_allclose(out.to_numpy(), euclidean_distances(test[:100], km.cluster_centers_), rtol=1e-4, atol=1e-2)

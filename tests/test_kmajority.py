"""bovw.KMajority (Hamming k-majority) against a NumPy reference, on real ORB descriptors."""

from __future__ import annotations

import numpy as np
import pytest

from sklearn.utils.estimator_checks import parametrize_with_checks

import bovw


def _hamming_matrix(X: np.ndarray, C: np.ndarray) -> np.ndarray:
    xb = np.unpackbits(X, axis=1).astype(np.int32)
    cb = np.unpackbits(C, axis=1).astype(np.int32)
    return xb.sum(1)[:, None] + cb.sum(1)[None, :] - 2 * xb @ cb.T


def _reference_kmajority(X, init, max_iter):
    """Plain NumPy k-majority: nearest center by Hamming (lowest index on ties),
    per-bit majority (> half; ties -> 0; empty cluster keeps its center),
    stop when the centers do not change."""
    C = init.copy()
    n_iter = 0
    xbits = np.unpackbits(X, axis=1, bitorder="little")
    for it in range(1, max_iter + 1):
        labels = np.argmin(_hamming_matrix(X, C), axis=1)
        new = C.copy()
        for j in range(len(C)):
            members = xbits[labels == j]
            if len(members):
                bits = (2 * members.sum(0) > len(members)).astype(np.uint8)
                new[j] = np.packbits(bits, bitorder="little")
        n_iter = it
        if np.array_equal(new, C):
            break
        C = new
    D = _hamming_matrix(X, C)
    labels = np.argmin(D, axis=1)
    return C, labels, int(D[np.arange(len(X)), labels].sum()), n_iter


@pytest.fixture(scope="module")
def orb_descriptors(real_gray_images):
    orb = bovw.ORB(n_features=100, edge_threshold=15, patch_size=15)
    descs = [orb.detect_and_compute(img)[1] for _, img in real_gray_images[:300]]
    X = np.concatenate(descs)
    assert X.shape[1] == 32 and len(X) > 2000
    return X


def test_matches_numpy_reference_from_same_init(orb_descriptors):
    X = orb_descriptors
    rng = np.random.default_rng(3)
    for k in (5, 40):
        init = X[rng.choice(len(X), k, replace=False)]
        km = bovw.KMajority(n_clusters=k, init=init, max_iter=30).fit(X)
        C, labels, inertia, n_iter = _reference_kmajority(X, init, 30)
        np.testing.assert_array_equal(km.cluster_centers_, C)
        np.testing.assert_array_equal(km.labels_, labels)
        assert km.inertia_ == inertia
        assert km.n_iter_ == n_iter
        print(f"\n[KMajority] k={k}: {len(X)} ORB descriptors, n_iter {n_iter}, inertia {inertia} "
              f"(mean {inertia / len(X):.1f} bits)")


def test_predict_is_exact_nearest_by_hamming(orb_descriptors):
    X = orb_descriptors
    km = bovw.KMajority(n_clusters=64, random_state=0, max_iter=20).fit(X)
    Y = X[::3]
    D = _hamming_matrix(Y, km.cluster_centers_)
    np.testing.assert_array_equal(km.predict(Y), np.argmin(D, axis=1))
    np.testing.assert_array_equal(km.transform(Y), D)
    np.testing.assert_array_equal(km.predict(X), km.labels_)
    assert km.score(X) == -km.inertia_
    assert km.labels_.dtype == np.int64 and km.predict(Y).dtype == np.int64
    assert km.cluster_centers_.dtype == np.uint8 and km.cluster_centers_.shape == (64, 32)
    # visual words feed a histogram
    hist = np.bincount(km.predict(Y), minlength=64)
    assert hist.sum() == len(Y)


def test_deterministic_whatever_the_thread_count(orb_descriptors):
    X = orb_descriptors
    runs = [bovw.KMajority(n_clusters=20, random_state=42, n_threads=t, max_iter=15).fit(X) for t in (1, 2, 3)]
    for r in runs[1:]:
        np.testing.assert_array_equal(r.cluster_centers_, runs[0].cluster_centers_)
        np.testing.assert_array_equal(r.labels_, runs[0].labels_)
        assert r.inertia_ == runs[0].inertia_
    other = bovw.KMajority(n_clusters=20, random_state=43, max_iter=15).fit(X)
    assert not np.array_equal(other.cluster_centers_, runs[0].cluster_centers_)


def test_kmeanspp_seeding_beats_random_init(orb_descriptors):
    X = orb_descriptors
    pp = bovw.KMajority(n_clusters=30, random_state=0, max_iter=1).fit(X)
    init = X[np.random.default_rng(0).choice(len(X), 30, replace=False)]
    rnd = bovw.KMajority(n_clusters=30, init=init, max_iter=1).fit(X)
    # k-means++ spreads the seeds: a lower objective after one update on real descriptors
    assert pp.inertia_ < rnd.inertia_ * 1.05


def test_two_clear_clusters_are_recovered():
    rng = np.random.default_rng(0)
    a = np.zeros((300, 32), np.uint8)
    b = np.full((300, 32), 255, np.uint8)
    flips = np.packbits(rng.random((600, 256)) < 0.1, axis=1)
    X = np.concatenate([a, b]) ^ flips
    labels = bovw.KMajority(n_clusters=2, random_state=1).fit_predict(X)
    assert len(set(labels[:300])) == 1 and len(set(labels[300:])) == 1 and labels[0] != labels[-1]


def test_orb_descriptors_as_float(orb_descriptors):
    X = orb_descriptors[:500]
    f = bovw.orb_descriptors_as_float(X)
    assert f.dtype == np.float32 and f.shape == (500, 32)
    np.testing.assert_array_equal(f, X.astype(np.float32))
    fb = bovw.orb_descriptors_as_float(X, bits=True)
    assert fb.shape == (500, 256) and set(np.unique(fb)) <= {0.0, 1.0}
    # squared Euclidean distances between bit vectors are Hamming distances
    d2 = ((fb[:20, None, :] - fb[None, :30, :]) ** 2).sum(-1)
    np.testing.assert_array_equal(d2.astype(np.int64), _hamming_matrix(X[:20], X[:30]))
    # bit order: least significant bit first, as ORB sets bit i of byte j for test 8 j + i
    one = np.zeros((1, 32), np.uint8)
    one[0, 0] = 1
    assert bovw.orb_descriptors_as_float(one, bits=True)[0, 0] == 1.0


def test_bad_inputs():
    X = np.zeros((10, 32), np.uint8)
    with pytest.raises(ValueError, match="n_clusters"):
        bovw.KMajority(n_clusters=11).fit(X)
    with pytest.raises(ValueError, match="n_clusters"):
        bovw.KMajority(n_clusters=0).fit(X)
    with pytest.raises(ValueError, match="max_iter"):
        bovw.KMajority(n_clusters=2, max_iter=0).fit(X)
    with pytest.raises(TypeError, match="uint8"):
        bovw.KMajority(n_clusters=2).fit(X.astype(np.float32))
    with pytest.raises(ValueError, match="2-D"):
        bovw.KMajority(n_clusters=2).fit(np.zeros(32, np.uint8))
    with pytest.raises(ValueError, match="init"):
        bovw.KMajority(n_clusters=2, init=np.zeros((3, 32), np.uint8)).fit(X)
    with pytest.raises(ValueError, match="not fitted"):
        bovw.KMajority().predict(X)
    km = bovw.KMajority(n_clusters=2, random_state=0).fit(np.random.default_rng(0).integers(0, 256, (50, 32), dtype=np.uint8))
    with pytest.raises(ValueError, match="bytes"):
        km.predict(np.zeros((4, 16), np.uint8))
    assert km.predict(np.zeros((0, 32), np.uint8)).shape == (0,)
    # identical descriptors: centers collapse, inertia 0
    same = bovw.KMajority(n_clusters=3, random_state=0).fit(np.full((20, 32), 7, np.uint8))
    assert same.inertia_ == 0


# -- scikit-learn conventions -------------------------------------------------------

def test_is_a_scikit_learn_estimator(orb_descriptors):
    """get_params/set_params/clone, Pipeline, get_feature_names_out and
    set_output on real ORB descriptors."""
    import pandas as pd
    from sklearn.base import clone
    from sklearn.pipeline import make_pipeline

    X = orb_descriptors[:1500]
    km = bovw.KMajority(n_clusters=6, random_state=0, max_iter=10)
    assert km.get_params() == {"n_clusters": 6, "max_iter": 10, "random_state": 0, "init": "k-means++", "n_threads": None}
    assert repr(km) == "KMajority(max_iter=10, n_clusters=6, random_state=0)"
    twin = clone(km).set_params(n_threads=1)
    a, b = km.fit(X), twin.fit(X)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    assert km.get_feature_names_out().tolist() == [f"kmajority{i}" for i in range(6)]
    # fit_transform (TransformerMixin) is fit then transform
    np.testing.assert_array_equal(clone(km).fit_transform(X), km.transform(X))
    # In a Pipeline, with pandas output named after the centers.
    pipe = make_pipeline(bovw.KMajority(n_clusters=6, random_state=0, max_iter=10)).set_output(transform="pandas")
    out = pipe.fit_transform(X)
    assert isinstance(out, pd.DataFrame) and list(out.columns) == [f"kmajority{i}" for i in range(6)]
    np.testing.assert_array_equal(out.to_numpy(), km.transform(X))
    # Feature names from a DataFrame of bytes are kept and checked.
    df = pd.DataFrame(X, columns=[f"byte{i}" for i in range(32)])
    kd = bovw.KMajority(n_clusters=6, random_state=0, max_iter=10).fit(df)
    assert kd.feature_names_in_.tolist() == list(df.columns) and kd.n_features_in_ == 32
    np.testing.assert_array_equal(kd.predict(df), km.predict(X))
    with pytest.raises(ValueError, match="Unexpected input features|feature names"):
        kd.transform(df.rename(columns={"byte0": "b0"}))
    with pytest.raises(ValueError, match="Invalid parameter"):
        km.set_params(k=3)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"n_clusters": True}, r"'n_clusters' parameter of KMajority must be an int in the range \[1, inf\)\. Got True"),
        ({"n_clusters": 2.0}, r"'n_clusters' parameter of KMajority must be an int"),
        ({"max_iter": -1}, r"'max_iter' parameter of KMajority must be an int in the range \[1, inf\)"),
        ({"n_threads": 0}, r"'n_threads' parameter of KMajority must be an int in the range \[1, inf\) or None"),
        ({"random_state": -1}, r"'random_state' parameter of KMajority"),
        ({"random_state": "seed"}, r"'random_state' parameter of KMajority"),
        ({"init": "random"}, r"'init' parameter of KMajority must be a str among \{'k-means\+\+'\} or an array-like"),
    ],
)
def test_parameter_constraints(params, match):
    from sklearn.utils._param_validation import InvalidParameterError

    X = np.random.default_rng(0).integers(0, 256, (20, 32), dtype=np.uint8)
    with pytest.raises(InvalidParameterError, match=match) as info:
        bovw.KMajority(**{"n_clusters": 2, **params}).fit(X)
    # scikit-learn's error is both: callers catching either keep working.
    assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)


def test_random_state_kinds_give_reproducible_fits(orb_descriptors):
    X = orb_descriptors[:1000]
    kw = dict(n_clusters=5, max_iter=5)
    for make in (lambda: 7, lambda: np.random.RandomState(7), lambda: np.random.default_rng(7)):
        a = bovw.KMajority(random_state=make(), **kw).fit(X)
        b = bovw.KMajority(random_state=make(), **kw).fit(X)
        np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)


# scikit-learn's checks generate float (and object, complex, NaN) data, which
# KMajority refuses by design: its input is packed binary descriptors, uint8
# only, and floats raise a TypeError rather than being rounded. Each check below
# fails for that reason alone; xfail_strict makes a check that starts passing
# fail the test, so the list cannot go stale. The same checks run on uint8 data
# in test_sklearn_checks_on_bytes.
_FLOAT_DATA = "scikit-learn's check feeds float data; KMajority takes uint8 descriptors only (TypeError)"
_KMAJORITY_FLOAT_CHECKS = [
    "check_fit_score_takes_y",
    "check_estimators_overwrite_params",
    "check_dont_overwrite_parameters",
    "check_estimators_fit_returns_self",
    "check_readonly_memmap_input",
    "check_n_features_in_after_fitting",
    "check_positive_only_tag_during_fit",
    "check_estimators_dtypes",
    "check_complex_data",
    "check_dtype_object",
    "check_estimators_empty_data_messages",
    "check_pipeline_consistency",
    "check_estimators_nan_inf",
    "check_estimators_pickle",
    "check_f_contiguous_array_estimator",
    "check_transformer_data_not_an_array",
    "check_transformer_general",
    "check_transformer_n_iter",
    "check_clustering",
    "check_methods_sample_order_invariance",
    "check_methods_subset_invariance",
    "check_fit2d_1sample",
    "check_fit2d_1feature",
    "check_dict_unchanged",
    "check_fit_idempotent",
    "check_fit_check_is_fitted",
    "check_n_features_in",
    "check_fit1d",
    "check_fit2d_predict1d",
]


@parametrize_with_checks(
    [bovw.KMajority(n_clusters=3, random_state=0)],
    expected_failed_checks=lambda est: {c: _FLOAT_DATA for c in _KMAJORITY_FLOAT_CHECKS},
    xfail_strict=True,
)
def test_sklearn_checks(estimator, check):
    check(estimator)


def _gray_bytes(X):
    """Each number of a scikit-learn check's data as one byte: quantised to
    256 levels over [-8, 8) then Gray-coded, so that neighbouring values
    differ in one bit. Elementwise, so shapes, row order and subsets are kept;
    data that is not a real numeric array (NaN, complex, object, sparse) is
    passed on unchanged for KMajority to refuse."""
    import scipy.sparse as sp

    if X is None or sp.issparse(X):
        return X
    a = np.asarray(X)
    if a.dtype.kind not in "fiu" or a.dtype == np.uint8 or not np.isfinite(a).all():
        return X
    q = np.clip(np.floor((a.astype(np.float64) + 8.0) * 16.0), 0, 255).astype(np.uint8)
    g = q ^ (q >> 1)
    if hasattr(X, "columns"):  # a DataFrame keeps its column names
        return type(X)(g, columns=X.columns, index=X.index)
    return g


class KMajorityOnBytes(bovw.KMajority):
    """KMajority with an elementwise float -> byte map in front of it (see
    ``_gray_bytes``), so that scikit-learn's checks, which generate float data,
    run on uint8 data. Nothing else is overridden: parameters, fit, predict,
    transform, score, tags, pickling and errors are KMajority's."""

    def _validate_X(self, X, *, reset):
        return super()._validate_X(_gray_bytes(X), reset=reset)


# On uint8 data every check passes but these, which test what uint8 cannot hold
# or what the byte map does not keep.
_ON_BYTES_EXPECTED = {
    "check_estimators_nan_inf": "NaN and infinity have no uint8 value: KMajority refuses float input (TypeError)",
    "check_complex_data": "complex input is refused with a TypeError (uint8 only), not the ValueError the check wants",
    "check_dtype_object": "object arrays are refused with a TypeError (uint8 only), not converted",
}


@parametrize_with_checks(
    [KMajorityOnBytes(n_clusters=3, random_state=0)],
    expected_failed_checks=lambda est: _ON_BYTES_EXPECTED,
    xfail_strict=True,
)
def test_sklearn_checks_on_bytes(estimator, check):
    check(estimator)

"""bovw.KMajority (Hamming k-majority) against a NumPy reference, on real ORB descriptors."""

from __future__ import annotations

import numpy as np
import pytest

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

"""Feature maps: bovw.AdditiveChi2Sampler against scikit-learn's on real
bag-of-words histograms of real images, Hellinger and power normalisation
against NumPy, and scikit-learn's estimator checks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.kernel_approximation import AdditiveChi2Sampler as SkChi2

import bovw
from encoding_data import sift_batch


@pytest.fixture(scope="module")
def hists(fruits_root) -> np.ndarray:
    """L1-normalised 1x1 + 2x2 pyramid histograms (100 words) of real images."""
    batch = sift_batch(str(fruits_root), 120)
    from encoding_data import flat

    d = flat(batch)[0]
    vocab = bovw.KMeans(100, random_state=0, max_iter=20).fit(d).cluster_centers_
    return bovw.BagOfWords(vocab, norm="l1", spatial_pyramid=(1, 2)).fit().transform(batch).astype(np.float64)


@pytest.mark.parametrize("steps,interval", [(1, None), (2, None), (3, None), (4, 0.3)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_chi2_map_equals_sklearn(hists, steps, interval, dtype):
    X = hists.astype(dtype)
    ours = bovw.AdditiveChi2Sampler(sample_steps=steps, sample_interval=interval).fit(X)
    ref = SkChi2(sample_steps=steps, sample_interval=interval).fit(X)
    a, b = ours.transform(X), ref.transform(X)
    assert a.dtype == b.dtype == dtype and a.shape == b.shape == (X.shape[0], X.shape[1] * (2 * steps - 1))
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    if dtype == np.float64:
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(ours.get_feature_names_out(), ref.get_feature_names_out())
    # many zeros in histograms: they stay exactly zero in every block
    zeros = X == 0
    assert zeros.any()
    for blk in range(2 * steps - 1):
        assert not a[:, blk * X.shape[1]:(blk + 1) * X.shape[1]][zeros].any()


def test_chi2_map_sparse_and_ints(hists):
    X = sp.csr_matrix(hists[:20])
    np.testing.assert_allclose(
        bovw.AdditiveChi2Sampler().fit(X).transform(X).toarray(), SkChi2().fit(X).transform(X).toarray()
    )
    # integer counts are mapped in float64 (scikit-learn writes the map into
    # an integer array, truncating it)
    counts = (hists[:20] * 50).round().astype(np.int64)
    ours = bovw.AdditiveChi2Sampler().fit_transform(counts)
    assert ours.dtype == np.float64
    np.testing.assert_allclose(ours, SkChi2().fit_transform(counts.astype(np.float64)), rtol=1e-12)


def test_chi2_map_bad_input():
    with pytest.raises(ValueError, match="Negative values"):
        bovw.AdditiveChi2Sampler().fit(np.array([[1.0, -1.0]]))
    with pytest.raises(ValueError, match="row 1, column 0"):
        bovw.kernel_approximation.chi2_map(np.array([[1.0, 0.0], [-2.0, 1.0]]))
    with pytest.raises(ValueError, match="NaN|infinity"):
        bovw.AdditiveChi2Sampler().fit_transform(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="sample_interval"):
        bovw.AdditiveChi2Sampler(sample_steps=5).fit(np.ones((2, 2)))
    # the input is checked while it is mapped, in parallel blocks of rows:
    # the error names the first bad value in row-major order, whichever
    # block finds one first
    X = np.zeros((300, 200))
    X[250, 3], X[130, 199], X[131, 0] = -1.0, np.inf, np.nan
    with pytest.raises(ValueError, match="row 130, column 199 is not finite"):
        bovw.kernel_approximation.chi2_map(X, n_threads=2)
    X[130, 199] = 0.5
    with pytest.raises(ValueError, match="row 131, column 0 is not finite"):
        bovw.kernel_approximation.chi2_map(X.astype(np.float32), n_threads=2)
    # an empty batch maps to an empty array
    assert bovw.kernel_approximation.chi2_map(np.zeros((0, 3))).shape == (0, 9)


def test_hellinger_and_power_normalizer_equal_numpy(hists):
    rng = np.random.default_rng(0)
    X = hists * 37.0
    np.testing.assert_allclose(bovw.Hellinger().fit_transform(X), np.sqrt(X / X.sum(1, keepdims=True)), rtol=1e-12)
    Z = rng.normal(size=(50, 30))
    Z[3] = 0.0
    for alpha in (0.5, 0.3, 1.0):
        p = np.sign(Z) * np.abs(Z) ** alpha
        n = np.linalg.norm(p, axis=1, keepdims=True)
        ref = np.divide(p, n, out=np.zeros_like(p), where=n > 0)
        np.testing.assert_allclose(bovw.PowerNormalizer(alpha).fit_transform(Z), ref, rtol=1e-12, atol=1e-15)
    l1 = bovw.PowerNormalizer(0.5, norm="l1").fit_transform(Z)
    np.testing.assert_allclose(np.abs(l1[np.abs(Z).sum(1) > 0]).sum(1), 1.0)
    assert not l1[3].any()
    assert bovw.PowerNormalizer().fit_transform(Z.astype(np.float32)).dtype == np.float32
    with pytest.raises(ValueError, match="NaN|infinity"):
        bovw.PowerNormalizer().fit_transform(np.array([[np.inf, 1.0]]))


def test_improved_fisher_is_power_normalised_raw_fisher(fruits_root):
    from encoding_data import flat

    batch = sift_batch(str(fruits_root), 40)
    d = flat(batch)[0]
    g = bovw.GaussianMixture(4, random_state=0, max_iter=10).fit(d)
    raw = bovw.FisherVector(g, square_root=False, normalize=False).fit().transform(batch)
    improved = bovw.FisherVector(g).fit().transform(batch)
    np.testing.assert_allclose(bovw.PowerNormalizer().fit_transform(raw), improved, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("est", [bovw.AdditiveChi2Sampler(), bovw.Hellinger(), bovw.PowerNormalizer()], ids=type)
def test_check_estimator(est):
    from sklearn.utils.estimator_checks import check_estimator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_estimator(est)

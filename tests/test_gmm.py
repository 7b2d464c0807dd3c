"""bovw.GaussianMixture (diagonal covariances, EM in Rust) against
scikit-learn's GaussianMixture(covariance_type="diag") and VLFeat's GMM
(cyvlfeat), on real SIFT descriptors of real Fruits-360 images."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGMM

import bovw
from bovw.mixture import em_from_stats, params_from_stats, partial_stats
from encoding_data import flat, sift_batch

K = 12


@pytest.fixture(scope="module")
def X(fruits_root) -> np.ndarray:
    """About 3,000 real SIFT descriptors (float64), scaled to [0, 1]."""
    d, *_ = flat(sift_batch(str(fruits_root), 50))
    return d.astype(np.float64) / 255.0


@pytest.fixture(scope="module")
def init(X):
    """A common starting point: random data rows, a shared variance."""
    rng = np.random.default_rng(0)
    means = X[rng.choice(len(X), K, replace=False)]
    cov = np.tile(X.var(0) + 1e-3, (K, 1))
    return np.full(K, 1.0 / K), means, cov


def _sk(init, **kw):
    w, m, c = init
    return SkGMM(K, covariance_type="diag", weights_init=w, means_init=m, precisions_init=1.0 / c, **kw)


def _ours(init, **kw):
    w, m, c = init
    return bovw.GaussianMixture(K, weights_init=w, means_init=m, precisions_init=1.0 / c, **kw)


def _assert_same_fit(ours, ref, rtol=1e-4):
    np.testing.assert_allclose(ours.weights_, ref.weights_, rtol=rtol)
    np.testing.assert_allclose(ours.means_, ref.means_, rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(ours.covariances_, ref.covariances_, rtol=rtol)
    np.testing.assert_allclose(ours.precisions_cholesky_, ref.precisions_cholesky_, rtol=rtol)
    assert ours.n_iter_ == ref.n_iter_
    assert ours.converged_ == ref.converged_
    assert ours.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-10)


def test_em_matches_sklearn_from_the_same_initial_parameters(X, init):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for max_iter in (1, 3, 40):
            ref = _sk(init, max_iter=max_iter, tol=1e-3).fit(X)
            ours = _ours(init, max_iter=max_iter, tol=1e-3).fit(X)
            _assert_same_fit(ours, ref)
            np.testing.assert_allclose(ours.lower_bounds_, ref.lower_bounds_, rtol=1e-10)
    # the tolerance above is loose for the report; the fit agrees far closer
    np.testing.assert_allclose(ours.means_, ref.means_, rtol=1e-7, atol=1e-12)
    assert ref.n_iter_ > 3


@pytest.mark.parametrize("init_params", ["random_from_data", "random"])
def test_random_initialisations_are_sklearns(X, init_params):
    # these draw from random_state as scikit-learn does: the whole fit agrees
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = SkGMM(K, covariance_type="diag", init_params=init_params, n_init=2, random_state=3, max_iter=15).fit(X)
        ours = bovw.GaussianMixture(K, init_params=init_params, n_init=2, random_state=3, max_iter=15).fit(X)
    _assert_same_fit(ours, ref)


def test_kmeans_initialisation_from_bovw_kmeans_labels(X):
    ours = bovw.GaussianMixture(K, init_params="kmeans", random_state=0, max_iter=0).fit(X)
    labels = bovw.KMeans(K, n_init=1, random_state=np.random.RandomState(0)).fit(X).labels_
    n = len(X)
    for j in range(K):
        xj = X[labels == j]
        nk = len(xj) + 10 * np.finfo(np.float64).eps
        assert ours.weights_[j] == pytest.approx(nk / n, rel=1e-12)
        np.testing.assert_allclose(ours.means_[j], xj.sum(0) / nk, rtol=1e-10)
        np.testing.assert_allclose(ours.covariances_[j], (xj**2).sum(0) / nk - (xj.sum(0) / nk) ** 2 + 1e-6, rtol=1e-8)
    assert ours.lower_bound_ == -np.inf and ours.n_iter_ == 0


def test_kmeans_plusplus_initialisation_is_one_hot_on_the_seeds(X):
    ours = bovw.GaussianMixture(K, init_params="k-means++", random_state=1, max_iter=0).fit(X)
    _, idx = bovw.cluster.kmeans_plusplus(X, K, random_state=np.random.RandomState(1))
    np.testing.assert_allclose(ours.means_, X[idx], rtol=1e-12)
    np.testing.assert_allclose(ours.covariances_, 1e-6, rtol=1e-6)
    # and EM runs from there (scikit-learn's k-means++ init is the same rule)
    fitted = bovw.GaussianMixture(K, init_params="k-means++", random_state=1).fit(X)
    assert fitted.converged_ and np.isfinite(fitted.lower_bound_)


def test_inference_matches_sklearn_and_vlfeat(X, init):
    ref = _sk(init, max_iter=20).fit(X)
    ours = bovw.GaussianMixture(K)
    ours.weights_, ours.means_, ours.covariances_ = ref.weights_, ref.means_, ref.covariances_
    ours.precisions_cholesky_ = ref.precisions_cholesky_
    ours.n_features_in_ = X.shape[1]
    np.testing.assert_allclose(ours.score_samples(X), ref.score_samples(X), rtol=1e-10)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-10)
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))
    assert ours.score(X) == pytest.approx(ref.score(X), rel=1e-10)
    assert ours.bic(X) == pytest.approx(ref.bic(X), rel=1e-10)
    assert ours.aic(X) == pytest.approx(ref.aic(X), rel=1e-10)
    # VLFeat's E-step (vl_get_gmm_data_posteriors) on the same mixture: with
    # zero EM iterations cy_gmm returns the log-likelihood and posteriors of
    # its custom initial parameters. (cyvlfeat.gmm.gmm's argument check fails
    # on array inits, so its Cython entry point is called directly; VLFeat
    # raises variances below its covariance bound, 1e-4 by default, so the
    # bound is lowered below every variance for the definitions to agree.)
    from cyvlfeat.gmm.cygmm import cy_gmm

    assert ref.covariances_.min() > 1e-12
    _, _, _, ll, post = cy_gmm(
        np.ascontiguousarray(X), K, 0, b"custom", 1, 0, covariance_bound=np.full(X.shape[1], 1e-12),
        init_priors=ref.weights_.copy(), init_means=ref.means_.copy(), init_covars=ref.covariances_.copy(),
    )
    assert ours.score_samples(X).sum() == pytest.approx(ll, rel=1e-10)
    np.testing.assert_allclose(ours.predict_proba(X), post, atol=1e-9)


def test_float32_input(X, init):
    X32 = X.astype(np.float32)
    X64 = X32.astype(np.float64)
    ours = _ours(init, max_iter=5, tol=0).fit(X32)
    assert ours.weights_.dtype == np.float64
    # float32 X is read exactly: the E-step statistics equal those of the same
    # values in float64 ...
    w, m, c = init
    for a, b in zip(partial_stats(X32, w, m, c), partial_stats(X64, w, m, c)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-300)
    # ... and the only other difference is scikit-learn's mass floor, 10 eps of
    # X's dtype: float64 EM with float32's floor gives the same fit.
    ref = em_from_stats(
        lambda w, m, c: partial_stats(X64, w, m, c), w, m, c, max_iter=5, tol=0, eps=10 * float(np.finfo(np.float32).eps)
    )
    np.testing.assert_allclose(ours.weights_, ref["weights"], rtol=1e-9)
    np.testing.assert_allclose(ours.means_, ref["means"], rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(ours.covariances_, ref["covariances"], rtol=1e-9)


def test_distributed_fit_equals_in_process(X, init):
    w, m, c = init
    parts = np.array_split(X, 3)

    def stats(w, m, c):
        s = [partial_stats(p, w, m, c, n_threads=1) for p in parts]
        return (sum(t[0] for t in s), sum(t[1] for t in s), sum(t[2] for t in s), sum(t[3] for t in s), sum(t[4] for t in s))

    res = em_from_stats(stats, w, m, c, max_iter=100, tol=1e-3)
    ref = _ours(init, max_iter=100, tol=1e-3).fit(X)
    np.testing.assert_allclose(res["weights"], ref.weights_, rtol=1e-9)
    np.testing.assert_allclose(res["means"], ref.means_, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(res["covariances"], ref.covariances_, rtol=1e-9)
    assert res["n_iter"] == ref.n_iter_ and res["converged"] == ref.converged_
    assert res["lower_bound"] == pytest.approx(ref.lower_bound_, rel=1e-12)
    # one partition's statistics by hand
    nk, s1, s2, ll, n = partial_stats(parts[0], ref.weights_, ref.means_, ref.covariances_)
    resp = ref.predict_proba(parts[0])
    np.testing.assert_allclose(nk, resp.sum(0), rtol=1e-10)
    np.testing.assert_allclose(s1, resp.T @ parts[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(s2, resp.T @ parts[0] ** 2, rtol=1e-10, atol=1e-12)
    assert ll == pytest.approx(ref.score_samples(parts[0]).sum(), rel=1e-12) and n == len(parts[0])
    # the M-step is scikit-learn's formula
    w2, m2, c2 = params_from_stats(nk, s1, s2, n, reg_covar=1e-6)
    nk2 = nk + 10 * np.finfo(np.float64).eps
    np.testing.assert_allclose(m2, s1 / nk2[:, None], rtol=1e-12)
    np.testing.assert_allclose(c2, s2 / nk2[:, None] - (s1 / nk2[:, None]) ** 2 + 1e-6, rtol=1e-9)
    np.testing.assert_allclose(w2, nk2 / nk2.sum(), rtol=1e-12)


def test_arrow_partial_stats_equal_numpy(fruits_root):
    batch = sift_batch(str(fruits_root), 60)
    d, *_ = flat(batch)
    g = bovw.GaussianMixture(4, random_state=0, max_iter=5).fit(d)
    a = partial_stats(batch.column("descriptors"), g.weights_, g.means_, g.covariances_)
    b = partial_stats(d, g.weights_, g.means_, g.covariances_)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


def test_results_do_not_depend_on_threads(X, init):
    one = _ours(init, max_iter=10, n_threads=1).fit(X)
    two = _ours(init, max_iter=10, n_threads=2).fit(X)
    np.testing.assert_array_equal(one.means_, two.means_)
    np.testing.assert_array_equal(one.covariances_, two.covariances_)
    assert one.lower_bound_ == two.lower_bound_


def test_collapse_raises_without_reg_covar_and_is_regularised_with_it():
    rng = np.random.RandomState(0)
    # two clusters; the second is one point repeated: its variance is 0
    X = np.vstack([rng.normal(size=(50, 3)), np.tile([[40.0, 40.0, 40.0]], (20, 1))])
    init = dict(means_init=np.array([[0.0, 0, 0], [40.0, 40, 40]]), weights_init=[0.5, 0.5],
                precisions_init=np.ones((2, 3)))
    with pytest.raises(ValueError, match="collapsed: component 1 .*reg_covar"):
        bovw.GaussianMixture(2, reg_covar=0.0, **init).fit(X)
    g = bovw.GaussianMixture(2, reg_covar=1e-6, **init).fit(X)
    ref = SkGMM(2, covariance_type="diag", reg_covar=1e-6, **init).fit(X)
    np.testing.assert_allclose(g.covariances_[1], 1e-6, rtol=1e-5)
    np.testing.assert_allclose(g.covariances_, ref.covariances_, rtol=1e-5)
    np.testing.assert_allclose(g.means_, ref.means_, rtol=1e-12)


def test_empty_component_behaves_as_sklearn():
    rng = np.random.RandomState(1)
    X = rng.normal(size=(200, 2))
    init = dict(means_init=np.array([[0.0, 0.0], [1e3, 1e3]]), weights_init=[0.5, 0.5], precisions_init=np.ones((2, 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        g = bovw.GaussianMixture(2, max_iter=3, **init).fit(X)
        ref = SkGMM(2, covariance_type="diag", max_iter=3, **init).fit(X)
    assert g.weights_[1] < 1e-15
    np.testing.assert_allclose(g.means_[1], 0.0, atol=1e-12)
    np.testing.assert_allclose(g.covariances_[1], 1e-6, rtol=1e-9)
    np.testing.assert_allclose(g.means_, ref.means_, atol=1e-12)
    np.testing.assert_allclose(g.covariances_, ref.covariances_, rtol=1e-9)


def test_bad_input_is_named(X):
    g = bovw.GaussianMixture(3, random_state=0, max_iter=5).fit(X[:300])
    with pytest.raises(ValueError, match="128 features"):
        g.predict(X[:5, :64])
    bad = X[:300].copy()
    bad[7, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        bovw.GaussianMixture(3).fit(bad)
    with pytest.raises(ValueError, match="n_components"):
        bovw.GaussianMixture(0).fit(X[:10])
    with pytest.raises(ValueError, match="n_samples >= n_components"):
        bovw.GaussianMixture(20).fit(X[:10])
    with pytest.raises(ValueError, match="covariance_type"):
        bovw.GaussianMixture(2, covariance_type="full").fit(X[:10])
    with pytest.raises(ValueError, match="means_init"):
        bovw.GaussianMixture(2, means_init=np.zeros((3, 128))).fit(X[:10])
    with pytest.raises(ValueError, match="width of the mixture"):
        partial_stats(X[:5, :64], g.weights_, g.means_, g.covariances_)


def test_check_estimator():
    from sklearn.utils.estimator_checks import check_estimator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_estimator(bovw.GaussianMixture())

"""Encoders on real SIFT descriptors of real Fruits-360 images: spatial
pyramid and soft-assignment bag of words against NumPy references, VLAD
against cyvlfeat.vlad.vlad, Fisher vectors against cyvlfeat.fisher.fisher,
and the encoder interface (batch forms, Arrow, bad input, threads)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import bovw
from encoding_data import flat, nearest_words, sift_batch

K = 24


@pytest.fixture(scope="module")
def batch(fruits_root) -> pa.RecordBatch:
    return sift_batch(str(fruits_root), 120)


@pytest.fixture(scope="module")
def data(batch):
    """(descriptors, offsets, keypoint xy, image sizes) of the batch."""
    return flat(batch)


@pytest.fixture(scope="module")
def vocab(data) -> np.ndarray:
    return bovw.KMeans(K, random_state=0, max_iter=30).fit(data[0]).cluster_centers_.astype(np.float32)


@pytest.fixture(scope="module")
def words(data, vocab) -> np.ndarray:
    return nearest_words(data[0], vocab)


def _np_cells(x, y, w, h, g):
    """NumPy reference of the cell rule: floor(((x + 0.5) * g) / w), clamped."""
    cx = np.minimum(np.maximum(np.floor((x.astype(np.float64) + 0.5) * g / w), 0), g - 1)
    cy = np.minimum(np.maximum(np.floor((y.astype(np.float64) + 0.5) * g / h), 0), g - 1)
    return (cy * g + cx).astype(np.int64)


def _np_pyramid(words, offsets, xy, sizes, k, grids, weights, values=None):
    """Bag-of-words pyramid by np.bincount per image and cell."""
    n_cells = sum(g * g for g in grids)
    out = np.zeros((len(offsets) - 1, n_cells * k))
    for i in range(len(offsets) - 1):
        a, b = offsets[i], offsets[i + 1]
        parts = []
        for g, wl in zip(grids, weights):
            c = _np_cells(xy[a:b, 0], xy[a:b, 1], sizes[i, 0], sizes[i, 1], g)
            wt = None if values is None else values[a:b]
            parts.append(wl * np.bincount(c * k + words[a:b], weights=wt, minlength=g * g * k))
        out[i] = np.concatenate(parts)
    return out


# -- spatial pyramid bag of words ---------------------------------------------------


@pytest.mark.parametrize("pyramid_weights,weights", [("uniform", (1, 1, 1)), ("lazebnik", (0.25, 0.25, 0.5))])
def test_pyramid_histograms_equal_numpy_bincount(batch, data, vocab, words, pyramid_weights, weights):
    d, offsets, xy, sizes = data
    bow = bovw.BagOfWords(vocab, spatial_pyramid=(1, 2, 4), pyramid_weights=pyramid_weights).fit()
    ours = bow.transform(batch)
    ref = _np_pyramid(words, offsets, xy, sizes, K, (1, 2, 4), weights)
    assert ours.shape == (batch.num_rows, 21 * K) == (batch.num_rows, bow.n_features_out_)
    np.testing.assert_array_equal(ours, ref.astype(np.float32))
    # the same from per-image lists and from a flat array with offsets
    per_image = [d[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    kps = [xy[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    np.testing.assert_array_equal(bow.transform(per_image, keypoints=kps, image_sizes=sizes), ours)
    np.testing.assert_array_equal(bow.encode(d, offsets, xy, sizes), ours)
    # level 0 is today's plain histogram
    plain = bovw.BagOfWords(vocab).fit().transform(per_image)
    np.testing.assert_array_equal(ours[:, :K] / weights[0], plain)


def test_pyramid_from_word_ids_equals_numpy_bincount(batch, data, words):
    d, offsets, xy, sizes = data
    ref = _np_pyramid(words, offsets, xy, sizes, K, (1, 2, 4), (0.25, 0.25, 0.5))
    h = bovw.bow_histograms(words, offsets, n_words=K, spatial_pyramid=(1, 2, 4), pyramid_weights="lazebnik",
                            keypoints=xy, image_sizes=sizes)
    np.testing.assert_array_equal(h, ref.astype(np.float32))
    # the Arrow keypoints column (x, y, size, angle) is read in place
    h2 = bovw.bow_histograms(words, offsets, n_words=K, spatial_pyramid=(1, 2, 4), pyramid_weights="lazebnik",
                             keypoints=batch.column("keypoints"), image_sizes=sizes)
    np.testing.assert_array_equal(h2, h)
    l2 = bovw.bow_histograms(words, offsets, n_words=K, spatial_pyramid=(1, 2), keypoints=xy, image_sizes=sizes, norm="l2")
    np.testing.assert_allclose(np.linalg.norm(l2[np.diff(offsets) > 0], axis=1), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="position 3"):
        bad = words.copy()
        bad[3] = K
        bovw.bow_histograms(bad, offsets, n_words=K, spatial_pyramid=(2,), keypoints=xy, image_sizes=sizes)


def test_pyramid_boundaries_and_outside_points(vocab):
    # keypoints on the 2x2 boundaries (x + 0.5 = 50 on a 100 px image) go
    # right / down; points outside the image go to the border cells
    xy = np.array([[49.5, 49.5], [49.4999, 10.0], [-3.0, 120.0], [99.5, -0.5], [24.5, 74.5]], np.float32)
    desc = np.repeat(vocab[:1], len(xy), axis=0)
    sizes = np.array([[100, 100]])
    bow = bovw.BagOfWords(vocab, spatial_pyramid=(2, 4)).fit()
    h = bow.transform(desc, [0, len(xy)], keypoints=xy, image_sizes=sizes)
    ref = _np_pyramid(np.zeros(len(xy), np.int64), np.array([0, len(xy)]), xy, sizes, K, (2, 4), (1, 1))
    np.testing.assert_array_equal(h, ref.astype(np.float32))
    cells2 = np.flatnonzero(h[0, : 4 * K]) // K
    assert set(cells2.tolist()) == {3, 0, 2, 1}  # (49.5, 49.5) -> cell 3 (right, below)
    np.testing.assert_array_equal(
        bovw.encoding.pyramid_cells(xy[:, 0], xy[:, 1], 100, 100, 2), _np_cells(xy[:, 0], xy[:, 1], 100, 100, 2)
    )


def test_soft_assignment_equals_numpy_kernel(data, vocab):
    d = data[0][:3000]
    sigma = 60.0
    words, weights = bovw.encoding.soft_assign(d, vocab, n_neighbors=4, sigma=sigma)
    d2 = ((d.astype(np.float64)[:, None, :] - vocab.astype(np.float64)[None]) ** 2).sum(-1)
    order = np.argsort(d2, axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(words, order)
    near = np.take_along_axis(d2, order, 1)
    w = np.exp(-(near - near[:, :1]) / (2 * sigma**2))
    np.testing.assert_allclose(weights, w / w.sum(1, keepdims=True), rtol=1e-5, atol=1e-7)
    # n_neighbors=1 is hard assignment
    w1, p1 = bovw.encoding.soft_assign(d, vocab, n_neighbors=1, sigma=sigma)
    np.testing.assert_array_equal(w1[:, 0], d2.argmin(1))
    assert (p1 == 1).all()


def test_soft_histograms_equal_numpy(batch, data, vocab):
    d, offsets, xy, sizes = data
    sigma = 60.0
    bow = bovw.BagOfWords(vocab, n_neighbors=3, sigma=sigma, spatial_pyramid=(1, 2)).fit()
    ours = bow.transform(batch)
    words, weights = bovw.encoding.soft_assign(d, vocab, n_neighbors=3, sigma=sigma)
    ref = sum(
        _np_pyramid(words[:, e], offsets, xy, sizes, K, (1, 2), (1, 1), values=weights[:, e].astype(np.float64))
        for e in range(3)
    )
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    # each descriptor adds 1 per level
    np.testing.assert_allclose(ours[:, :K].sum(1), np.diff(offsets), rtol=1e-5)


# -- VLAD ------------------------------------------------------------------------


def _cy_vlad(x, means, assign, **kw):
    from cyvlfeat.vlad import vlad

    return vlad(np.ascontiguousarray(x, np.float64), np.ascontiguousarray(means, np.float64),
                np.ascontiguousarray(assign, np.float64), **kw)


def _one_hot(w, k):
    a = np.zeros((len(w), k))
    a[np.arange(len(w)), w] = 1
    return a


def _assert_rel(ours, ref, rtol):
    """Every value within rtol of the image vector's largest value."""
    scale = np.abs(ref).max(axis=-1, keepdims=True)
    scale[scale == 0] = 1.0
    assert np.all(np.abs(ours - ref) <= rtol * scale), np.max(np.abs(ours - ref) / scale)


@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"square_root": True},
        {"normalize_mass": True, "normalize_components": False},
        {"normalize_components": False, "normalize": False},
        {"square_root": True, "normalize_components": False},
    ],
)
def test_vlad_matches_cyvlfeat(batch, data, vocab, words, opts):
    d, offsets, *_ = data
    enc = bovw.VLAD(vocab, **opts).fit()
    ours = enc.transform(batch)
    assert ours.shape == (batch.num_rows, K * 128) and ours.dtype == np.float32
    cy_kw = {
        "normalize_components": opts.get("normalize_components", True),
        "square_root": opts.get("square_root", False),
        "normalize_mass": opts.get("normalize_mass", False),
        "unnormalized": not opts.get("normalize", True),
    }
    for i in range(0, batch.num_rows, 7):
        a, b = offsets[i], offsets[i + 1]
        ref = _cy_vlad(d[a:b], vocab, _one_hot(words[a:b], K), **cy_kw)
        _assert_rel(ours[i], ref, 1e-5)


def test_soft_vlad_matches_cyvlfeat(batch, data, vocab):
    d, offsets, *_ = data
    enc = bovw.VLAD(vocab, n_neighbors=3, sigma=60.0, square_root=True).fit()
    ours = enc.transform(batch)
    words, weights = bovw.encoding.soft_assign(d, vocab, n_neighbors=3, sigma=60.0)
    for i in range(0, batch.num_rows, 9):
        a, b = offsets[i], offsets[i + 1]
        assign = np.zeros((b - a, K))
        for e in range(3):
            np.add.at(assign, (np.arange(b - a), words[a:b, e]), weights[a:b, e])
        ref = _cy_vlad(d[a:b], vocab, assign, square_root=True, normalize_components=True)
        _assert_rel(ours[i], ref, 1e-5)


def test_pyramid_vlad_is_per_cell_vlad(batch, data, vocab, words):
    d, offsets, xy, sizes = data
    enc = bovw.VLAD(vocab, spatial_pyramid=(1, 2)).fit()
    ours = enc.transform(batch).reshape(batch.num_rows, 5, K * 128)
    for i in range(0, batch.num_rows, 11):
        a, b = offsets[i], offsets[i + 1]
        _assert_rel(ours[i, 0], _cy_vlad(d[a:b], vocab, _one_hot(words[a:b], K), normalize_components=True), 1e-5)
        cells = _np_cells(xy[a:b, 0], xy[a:b, 1], sizes[i, 0], sizes[i, 1], 2)
        for c in range(4):
            sel = cells == c
            if sel.any():
                ref = _cy_vlad(d[a:b][sel], vocab, _one_hot(words[a:b][sel], K), normalize_components=True)
                _assert_rel(ours[i, 1 + c], ref, 1e-5)
            else:
                assert not ours[i, 1 + c].any()


# -- Fisher vectors ------------------------------------------------------------------


@pytest.fixture(scope="module")
def gmm(data):
    return bovw.GaussianMixture(8, random_state=0, max_iter=30).fit(data[0])


def test_fisher_matches_cyvlfeat_improved(batch, data, gmm):
    from cyvlfeat.fisher import fisher

    d, offsets, *_ = data
    fv = bovw.FisherVector(gmm).fit()
    ours = fv.transform(batch)
    assert ours.shape == (batch.num_rows, 2 * 8 * 128) == (batch.num_rows, fv.n_features_out_)
    w, m, c = gmm.weights_, gmm.means_, gmm.covariances_
    for i in range(0, batch.num_rows, 5):
        x = d[offsets[i]:offsets[i + 1]]
        ref = fisher(x.astype(np.float64), m, c, w, improved=True)
        _assert_rel(ours[i], ref, 1e-4)
        np.testing.assert_allclose(ours[i], ref, rtol=1e-4, atol=1e-6)
        # VLFeat in float32 rounds its posteriors: looser
        ref32 = fisher(x, m.astype(np.float32), c.astype(np.float32), w.astype(np.float32), improved=True)
        _assert_rel(ours[i], ref32, 2e-3)
    # without the improvements: the raw gradient statistics
    raw = bovw.FisherVector(gmm, square_root=False, normalize=False).fit().transform(batch)
    x = d[offsets[3]:offsets[4]]
    _assert_rel(raw[3], fisher(x.astype(np.float64), m, c, w), 1e-4)


def test_fisher_of_a_large_set_matches_cyvlfeat(data, gmm):
    """A set of more than 2,048 descriptors is summed in parallel parts:
    VLFeat's vector, the same bits for any thread count, and the images
    around it in the batch are unchanged."""
    from cyvlfeat.fisher import fisher

    d, offsets, *_ = data
    # the batch's descriptors repeated until the set has more than 2 x 2,048
    # (120 images give ~3,800 on the full data set and ~7,600 on the sample)
    d = np.concatenate([d] * (2 * 2048 // len(d) + 1))
    assert len(d) > 2 * 2048, len(d)
    w, m, c = gmm.weights_, gmm.means_, gmm.covariances_
    one = bovw.FisherVector(gmm, n_threads=1).fit()
    two = bovw.FisherVector(gmm, n_threads=2).fit()
    whole = one.transform(d, [0, len(d)])
    np.testing.assert_array_equal(whole, two.transform(d, [0, len(d)]))
    _assert_rel(whole[0], fisher(d.astype(np.float64), m, c, w, improved=True), 1e-4)
    # small, large, empty, small: the small ones as when encoded alone
    a, b = int(offsets[1]), int(offsets[2])
    mixed = two.transform(np.concatenate([d[a:b], d, d[:a]]), [0, b - a, b - a + len(d), b - a + len(d), b + len(d)])
    np.testing.assert_array_equal(mixed[1], whole[0])
    assert not mixed[2].any()
    np.testing.assert_array_equal(mixed[0], one.transform(d[a:b], [0, b - a])[0])
    np.testing.assert_array_equal(mixed[3], one.transform(d[:a], [0, a])[0])


def test_fisher_from_sklearn_mixture_and_tuple(batch, data, gmm):
    from sklearn.mixture import GaussianMixture as SkGMM

    sk = SkGMM(8, covariance_type="diag")
    sk.weights_, sk.means_, sk.covariances_ = gmm.weights_, gmm.means_, gmm.covariances_
    a = bovw.FisherVector(sk).fit().transform(batch)
    b = bovw.FisherVector((gmm.weights_, gmm.means_, gmm.covariances_)).fit().transform(batch)
    c = bovw.FisherVector(gmm).fit().transform(batch)
    np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(b, c)
    with pytest.raises(ValueError, match="diagonal"):
        bovw.FisherVector(SkGMM(2)).fit(data[0][:100])


def test_pyramid_fisher_is_per_cell_fisher(batch, data, gmm):
    from cyvlfeat.fisher import fisher

    d, offsets, xy, sizes = data
    fv = bovw.FisherVector(gmm, spatial_pyramid=(1, 2), pyramid_weights="lazebnik").fit()
    ours = fv.transform(batch).reshape(batch.num_rows, 5, -1)
    w, m, c = gmm.weights_, gmm.means_, gmm.covariances_
    for i in range(0, batch.num_rows, 13):
        a, b = offsets[i], offsets[i + 1]
        _assert_rel(ours[i, 0] / 0.5, fisher(d[a:b].astype(np.float64), m, c, w, improved=True), 1e-4)
        cells = _np_cells(xy[a:b, 0], xy[a:b, 1], sizes[i, 0], sizes[i, 1], 2)
        for cell in range(4):
            sel = cells == cell
            if sel.any():
                ref = fisher(d[a:b][sel].astype(np.float64), m, c, w, improved=True)
                _assert_rel(ours[i, 1 + cell] / 0.5, ref, 1e-4)
            else:
                assert not ours[i, 1 + cell].any()


# -- the encoder interface and bad input ---------------------------------------------


def _encoders(vocab, gmm):
    return [
        bovw.BagOfWords(vocab, spatial_pyramid=(1, 2)),
        bovw.VLAD(vocab, spatial_pyramid=(1, 2)),
        bovw.FisherVector(gmm, spatial_pyramid=(1, 2)),
    ]


def test_forms_agree_and_empty_images_give_zero_rows(batch, data, vocab, gmm):
    d, offsets, xy, sizes = data
    # put images without descriptors (and a failed image) in the middle
    n = batch.num_rows
    per_image = [d[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    kps = [xy[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    per_image[4:4] = [np.zeros((0, 128), np.float32), None]
    kps[4:4] = [np.zeros((0, 2), np.float32), None]
    sizes2 = np.insert(sizes, 4, [[100, 100], [0, 0]], axis=0)
    for enc in _encoders(vocab, gmm):
        enc.fit()
        ref = enc.transform(batch)
        out = enc.transform(per_image, keypoints=kps, image_sizes=sizes2)
        assert out.shape == (n + 2, enc.n_features_out_)
        assert np.isfinite(out).all()
        assert not out[4].any() and not out[5].any()
        np.testing.assert_array_equal(np.delete(out, [4, 5], axis=0), ref)
        # Arrow columns (zero-copy) and Spark's list<list<float>> form
        col = batch.column("descriptors")
        np.testing.assert_array_equal(enc.transform(col, keypoints=batch.column("keypoints"), image_sizes=sizes), ref)
        spark_form = pa.array(col.to_pylist(), pa.list_(pa.list_(pa.float32())))
        kp_form = pa.array(batch.column("keypoints").to_pylist(), pa.list_(pa.list_(pa.float32())))
        np.testing.assert_array_equal(enc.transform(spark_form, keypoints=kp_form, image_sizes=sizes), ref)
        arrow_out = enc.transform_arrow(batch)
        assert arrow_out.type == pa.list_(pa.float32(), enc.n_features_out_)
        assert len(enc.get_feature_names_out()) == enc.n_features_out_
        # an empty batch gives an empty array
        empty = enc.transform([], keypoints=[], image_sizes=np.zeros((0, 2)))
        assert empty.shape == (0, enc.n_features_out_)


def test_results_do_not_depend_on_threads(batch, vocab, gmm):
    for enc in _encoders(vocab, gmm):
        one = enc.set_params(n_threads=1).fit().transform(batch)
        two = enc.set_params(n_threads=2).fit().transform(batch)
        np.testing.assert_array_equal(one, two)


def test_fit_learns_the_model_from_descriptors(data):
    d, offsets, xy, sizes = data
    sample = d[::3]
    v = bovw.VLAD(bovw.KMeans(8, random_state=0, max_iter=20)).fit(sample)
    np.testing.assert_array_equal(v.vocabulary_, bovw.KMeans(8, random_state=0, max_iter=20).fit(sample).cluster_centers_)
    f = bovw.FisherVector(n_components=4, random_state=0).fit(sample)
    ref = bovw.GaussianMixture(4, random_state=0).fit(sample)
    np.testing.assert_array_equal(f.means_, ref.means_)
    b = bovw.BagOfWords(bovw.KMeans(8, random_state=0, max_iter=20)).fit(sample)
    assert b.n_features_out_ == 8
    np.testing.assert_array_equal(b.encode(d, offsets), bovw.BagOfWords(v.vocabulary_).fit().transform(d, offsets))


def test_bad_input_is_named(batch, data, vocab, gmm):
    d, offsets, xy, sizes = data
    for enc in _encoders(vocab, gmm):
        enc.fit()
        with pytest.raises(ValueError, match="width 64.*128|128.*width 64|shape \\(.*64\\).*128"):
            enc.transform([d[:10, :64]], keypoints=[xy[:10]], image_sizes=sizes[:1])
        bad = d[:20].copy()
        bad[13, 5] = np.nan
        with pytest.raises(ValueError, match="row 13"):
            enc.transform(bad, [0, 20], keypoints=xy[:20], image_sizes=sizes[:1])
        with pytest.raises(ValueError, match="keypoints"):
            enc.transform(d[:20], [0, 20])
        with pytest.raises(ValueError, match="image 1"):
            enc.transform(d[:20], [0, 10, 20], keypoints=xy[:20], image_sizes=[[100, 100], [0, 100]])
        with pytest.raises(ValueError, match="offsets"):
            enc.transform(d[:20], [0, 30], keypoints=xy[:20], image_sizes=sizes[:1])
    with pytest.raises(ValueError, match="X: descriptors of width 64, but the model has width 128"):
        bovw.VLAD(vocab).fit(d[:50, :64])
    with pytest.raises(ValueError, match="sigma"):
        bovw.VLAD(vocab, n_neighbors=3).fit()
    with pytest.raises(ValueError, match="spatial_pyramid"):
        bovw.VLAD(vocab, spatial_pyramid=(1, 3), pyramid_weights="lazebnik").fit()


def test_pipeline_classifies(sample_root):
    """The encoders plug into a scikit-learn Pipeline and the vectors classify
    real images far above chance (10 classes of the committed sample)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    train = sift_batch(str(sample_root), 200, "Training")
    test = sift_batch(str(sample_root), 100, "Test")
    per_image = lambda b: [x for x in np.split(flat(b)[0], flat(b)[1][1:-1])]  # noqa: E731
    y_train = train.column("label").to_pylist()
    y_test = test.column("label").to_pylist()
    pipe = make_pipeline(
        bovw.FisherVector(n_components=8, random_state=0),
        LogisticRegression(C=10, max_iter=2000),
    )
    pipe.fit(per_image(train), y_train)
    acc = float(np.mean(pipe.predict(per_image(test)) == np.asarray(y_test)))
    assert acc > 0.5, acc


def test_uint8_arrow_descriptors_are_read_as_their_values(sample_root):
    """PHOW's uint8 descriptors (fixed_size_binary in Arrow) encode as their float32 values."""
    import bovw

    files = sorted((sample_root / "Training").glob("*/*.jpg"))[:6]
    table = pa.table({"content": pa.array([f.read_bytes() for f in files], pa.binary())})
    phow = bovw.extract_descriptors(table, method="phow", step=6)
    assert pa.types.is_fixed_size_binary(phow.column("descriptors").type.value_type)
    X, offsets = bovw.descriptor_matrix(phow.column("descriptors"))
    K, _ = bovw.descriptor_matrix(phow.column("keypoints"))
    sizes = np.stack([phow.column("image_width").to_numpy(), phow.column("image_height").to_numpy()], 1)
    fv = bovw.FisherVector(n_components=4, spatial_pyramid=(1, 2), random_state=0).fit(X.astype(np.float32))
    want = fv.transform(X.astype(np.float32), offsets, K[:, :2], sizes)
    np.testing.assert_array_equal(fv.transform(phow), want)
    with pytest.raises(ValueError, match="width 128, expected width 3"):
        bovw.FisherVector(gmm=(np.ones(1), np.zeros((1, 3)), np.ones((1, 3)))).fit().transform(phow)

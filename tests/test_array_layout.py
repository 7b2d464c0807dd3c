"""The extension's bindings read NumPy arrays in row-major order whatever
their memory layout: a Fortran-ordered or strided array gives what its
C-ordered copy gives (images, descriptor matrices, weight tensors), or, where
a binding reads the array in place, a ValueError that says it must be
C-contiguous. rust-numpy's ``as_slice`` accepts Fortran order as contiguous,
so a binding that used it read such arrays transposed; the public classes
copy to C order before they call the extension, which is why these tests go
through the raw bindings (``bovw._bovw``, ``extractor._rust``)."""

from __future__ import annotations

import numpy as np
import pytest

import bovw
from bovw import _bovw
from bovw.extractors import get_extractor
from conftest import pick_images


@pytest.fixture(scope="module")
def images(fruits_root):
    data = pick_images(fruits_root, "Test", 1)[0].read_bytes()
    return bovw.decode_gray(data), bovw.decode_rgb(data)


def _layouts(a):
    f = np.asfortranarray(a)
    assert not f.flags.c_contiguous  # the case under test
    strided = np.repeat(a, 2, axis=1)[:, ::2]  # same values, non-contiguous
    return f, strided


def _equal(x, y):
    xs, ys = (x, y) if isinstance(x, tuple) else ((x,), (y,))
    return all(np.array_equal(np.asarray(p), np.asarray(q)) for p, q in zip(xs, ys))


@pytest.mark.parametrize("name,color", [("sift", False), ("orb", False), ("dsift", False),
                                         ("phow", True), ("color", True)])
def test_extract_image_reads_any_layout(images, name, color):
    gray, rgb = images
    img = rgb if color else gray
    rust = get_extractor(name)._rust
    want = rust.extract_image(np.ascontiguousarray(img))
    for a in _layouts(img):
        assert _equal(rust.extract_image(a), want), name


def test_color_histogram_image_and_mask_any_layout(images):
    _, rgb = images
    rust = get_extractor("color", mask=None)._rust
    mask = (np.arange(rgb.shape[0] * rgb.shape[1]).reshape(rgb.shape[:2]) % 3 != 0).astype(np.uint8)
    want = rust.compute(rgb, mask)
    for a, m in zip(_layouts(rgb), _layouts(mask)):
        np.testing.assert_array_equal(rust.compute(a, m), want)
    for a in _layouts(rgb):
        np.testing.assert_array_equal(_bovw.rgb_to_hsv_image(a), _bovw.rgb_to_hsv_image(rgb))


def test_cnn_image_any_layout(images):
    _, rgb = images
    rust = get_extractor("cnn", input_size=64)._rust
    want = rust.extract_image(rgb)
    for a in _layouts(rgb):
        assert _equal(rust.extract_image(a), want)


def test_matrices_any_layout_or_a_clear_error():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 12)).astype(np.float32)
    B = rng.integers(0, 256, (200, 32), dtype=np.uint8)
    init = X[:5].copy()
    want = _bovw.kmeans_fit_single(X, init, max_iter=5)
    for a in _layouts(X):
        assert _equal(_bovw.kmeans_fit_single(a, init, max_iter=5), want)
    for a in _layouts(init):
        assert _equal(_bovw.kmeans_fit_single(X, a, max_iter=5), want)
    want_b = _bovw.kmajority_fit(B, 3, max_iter=5)
    for a in _layouts(B):
        assert _equal(_bovw.kmajority_fit(a, 3, max_iter=5), want_b)
    count, s, gram = _bovw.pca_partial_sums(X.astype(np.float64))
    fit = _bovw.pca_fit_partial_sums(count, s, gram)
    fit_f = _bovw.pca_fit_partial_sums(count, s, np.asfortranarray(gram))
    np.testing.assert_array_equal(np.asarray(fit_f["components"]), np.asarray(fit["components"]))
    # read in place: Fortran order is refused, not transposed
    for a in _layouts(X):
        with pytest.raises(ValueError, match="X must be C-contiguous"):
            _bovw.pca_fit(a)
    hist = rng.random((6, 10)).astype(np.float32)
    for a in _layouts(hist):
        np.testing.assert_array_equal(_bovw.bow_weight(a, None, "l2"), _bovw.bow_weight(hist, None, "l2"))
        with pytest.raises(ValueError, match="counts must be C-contiguous"):
            _bovw.bow_idf(a)

"""Colour histograms and 8-bit HSV: parity with OpenCV 4.12.

- ``bovw.rgb_to_hsv`` equals ``cv2.cvtColor(..., COLOR_RGB2HSV)`` on all
  2**24 colours.
- ``bovw.ColorHistogram`` counts (``normalize=None, sqrt=False``) equal
  ``cv2.calcHist`` on the same channels, mask, bins and ranges, on real
  Fruits-360 and grocery-store photos, for HSV, RGB and opponent colour,
  with the near-white rule, a mask array and spatial grids (each cell
  against ``calcHist`` of the cell's slice).
- Normalisations against their NumPy formulas; the batch path against the
  single-image path; bad input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import bovw
from conftest import REPO, pick_images

import cv2  # noqa: E402

RANGES = {
    "hsv": [0, 180, 0, 256, 0, 256],
    "rgb": [0, 256, 0, 256, 0, 256],
    "opponent": [-255, 256, -510, 511, 0, 766],
}


@pytest.fixture(scope="module")
def images(fruits_root) -> list[np.ndarray]:
    """16 Fruits-360 Test images and (when ../shared has them) 4 grocery photos, RGB."""
    imgs = [bovw.decode_rgb(p.read_bytes()) for p in pick_images(fruits_root, "Test", 16)]
    for c in (REPO.parent / "shared" / "grocery-store", REPO / "shared" / "grocery-store"):
        if (c / "train").is_dir():
            paths = sorted(c.glob("train/*/*.jpg"))
            imgs += [bovw.decode_rgb(p.read_bytes()) for p in paths[:: max(1, len(paths) // 4)][:4]]
            break
    return imgs


def channels(rgb: np.ndarray, space: str) -> np.ndarray:
    """The channels bovw bins, computed with OpenCV / NumPy."""
    if space == "hsv":
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    if space == "rgb":
        return rgb
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    return np.ascontiguousarray(np.stack([r - g, r + g - 2 * b, r + g + b], axis=-1))


def white_keep(rgb: np.ndarray) -> np.ndarray:
    """1 where the pixel is kept by the near-white rule (OpenCV HSV V > 230 and S < 30 are left out)."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    return (~((hsv[..., 2] > 230) & (hsv[..., 1] < 30))).astype(np.uint8)


def calc_hist(rgb, space, bins, mask=None) -> np.ndarray:
    return cv2.calcHist([channels(rgb, space)], [0, 1, 2], mask, list(bins), RANGES[space]).ravel()


def test_hsv_equals_opencv_on_every_colour():
    v = np.arange(1 << 24, dtype=np.uint32)
    rgb = np.stack([(v >> 16) & 255, (v >> 8) & 255, v & 255], axis=-1).astype(np.uint8).reshape(4096, 4096, 3)
    ours = bovw.rgb_to_hsv(rgb)
    ref = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    assert ours.shape == ref.shape and ours.dtype == np.uint8
    assert np.array_equal(ours, ref), int((ours != ref).any(axis=-1).sum())
    assert ours[..., 0].max() == 179


@pytest.mark.parametrize(
    "space,bins",
    [("hsv", (18, 4, 4)), ("hsv", (30, 8, 5)), ("hsv", (180, 1, 1)), ("rgb", (8, 8, 8)), ("rgb", (5, 3, 7)),
     ("opponent", (8, 8, 8)), ("opponent", (7, 5, 6))],
)
def test_counts_equal_calc_hist(images, space, bins):
    h = bovw.ColorHistogram(space=space, bins=bins, mask=None, normalize=None, sqrt=False)
    hw = bovw.ColorHistogram(space=space, bins=bins, mask="white", normalize=None, sqrt=False)
    for rgb in images:
        ours = h.compute(rgb)
        assert ours.dtype == np.float32 and ours.shape == (int(np.prod(bins)),)
        np.testing.assert_array_equal(ours, calc_hist(rgb, space, bins))
        assert ours.sum() == rgb.shape[0] * rgb.shape[1]
        np.testing.assert_array_equal(hw.compute(rgb), calc_hist(rgb, space, bins, white_keep(rgb)))


def test_white_rule_removes_the_fruits_background(images):
    rgb = images[0]
    keep = white_keep(rgb)
    assert 0 < keep.sum() < keep.size  # a real Fruits-360 frame: fruit on white
    counts = bovw.ColorHistogram(mask="white", normalize=None, sqrt=False).compute(rgb)
    assert counts.sum() == keep.sum()


def test_mask_array_like_calc_hist(images):
    rng = np.random.default_rng(3)
    for rgb in images[:6]:
        m = (rng.random(rgb.shape[:2]) < 0.4).astype(np.uint8) * rng.integers(1, 256, rgb.shape[:2]).astype(np.uint8)
        h = bovw.ColorHistogram(mask=None, normalize=None, sqrt=False)
        np.testing.assert_array_equal(h.compute(rgb, mask=m), calc_hist(rgb, "hsv", (18, 4, 4), m))
        # as a parameter, and combined with the rule (both must keep the pixel)
        hm = bovw.ColorHistogram(mask=m, normalize=None, sqrt=False)
        np.testing.assert_array_equal(hm.compute(rgb), calc_hist(rgb, "hsv", (18, 4, 4), m))
        hw = bovw.ColorHistogram(mask="white", normalize=None, sqrt=False)
        both = ((m > 0) & (white_keep(rgb) > 0)).astype(np.uint8)
        np.testing.assert_array_equal(hw.compute(rgb, mask=m > 0), calc_hist(rgb, "hsv", (18, 4, 4), both))


def test_strided_images_equal_their_copies(images):
    # compute's fast path hands non-contiguous arrays to Rust, which copies them
    h = bovw.ColorHistogram(mask="white", normalize=None, sqrt=False, grid=(1, 2))
    rgb = images[3]
    for view in (rgb[:, ::-1], rgb[::2, 1::3], np.asfortranarray(rgb), rgb[5:80, 7:91]):
        assert not view.flags.c_contiguous
        copy = np.ascontiguousarray(view)
        np.testing.assert_array_equal(h.compute(view), h.compute(copy))
        np.testing.assert_array_equal(h.compute(view)[:288], calc_hist(copy, "hsv", (18, 4, 4), white_keep(copy)))


@pytest.mark.parametrize("grid", [2, 3, (1, 2), (1, 2, 4)])
def test_grid_cells_equal_calc_hist_of_the_cells(images, grid):
    grids = [grid] if isinstance(grid, int) else list(grid)
    bins = (8, 3, 3)
    h = bovw.ColorHistogram(bins=bins, grid=grid, mask="white", normalize=None, sqrt=False)
    nb = int(np.prod(bins))
    assert h.descriptor_width == nb * sum(g * g for g in grids)
    for rgb in images[:8] + [np.ascontiguousarray(cv2.resize(images[0], (37, 23)))]:
        ours = h.compute(rgb)
        H, W = rgb.shape[:2]
        k = 0
        for g in grids:
            for i in range(g):
                for j in range(g):
                    cell = np.ascontiguousarray(rgb[i * H // g:(i + 1) * H // g, j * W // g:(j + 1) * W // g])
                    np.testing.assert_array_equal(ours[k * nb:(k + 1) * nb], calc_hist(cell, "hsv", bins, white_keep(cell)))
                    k += 1


def test_normalisations(images):
    rgb = images[5]
    counts = bovw.ColorHistogram(grid=(1, 2), normalize=None, sqrt=False).compute(rgb).astype(np.float64)
    cells = counts.reshape(-1, 288)
    l1 = bovw.ColorHistogram(grid=(1, 2), sqrt=False).compute(rgb)
    np.testing.assert_allclose(l1, (cells / cells.sum(1, keepdims=True)).ravel(), rtol=1e-6)
    l1s = bovw.ColorHistogram(grid=(1, 2)).compute(rgb)  # the default: L1 then square root
    np.testing.assert_allclose(l1s, np.sqrt(cells / cells.sum(1, keepdims=True)).ravel(), rtol=1e-6)
    assert np.allclose((l1s.reshape(-1, 288) ** 2).sum(1), 1.0, atol=1e-5)
    l2 = bovw.ColorHistogram(grid=(1, 2), normalize="l2", sqrt=False).compute(rgb)
    np.testing.assert_allclose(l2, (cells / np.linalg.norm(cells, axis=1, keepdims=True)).ravel(), rtol=1e-6)


def test_recipe_defaults():
    h = bovw.ColorHistogram()
    assert h.get_params() == dict(space="hsv", bins=(18, 4, 4), mask="white", grid=1, normalize="l1", sqrt=True,
                                  **bovw.RESOURCE_LIMITS)
    assert (h.descriptor_width, h.descriptor_dtype, h.kind, h.needs_color) == (288, np.float32, "global", True)
    assert bovw.EXTRACTORS["color"] is bovw.ColorHistogram
    assert bovw.ColorHistogram.vocabularies == ()


def test_batch_equals_single_images(sample_root):
    paths = sorted(sample_root.glob("Test/*/*.jpg"))[:30]
    contents = [p.read_bytes() for p in paths] + [b"\xff\xd8 truncated", None]
    batch = pa.table({"path": [str(p) for p in paths] + ["bad", "null"], "content": pa.array(contents, pa.binary())})
    params = dict(space="opponent", bins=(6, 6, 6), grid=(1, 2))
    one = bovw.extract_descriptors(batch, method="color", n_threads=1, **params)
    two = bovw.extract_descriptors(batch, method="color", n_threads=2, **params)
    assert one.equals(two)
    assert one.column("n_keypoints").to_pylist()[:30] == [1] * 30
    assert one.column("error_stage").to_pylist()[-2:] == ["decode", "decode"]
    h = bovw.ColorHistogram(**params)
    for i, p in enumerate(paths):
        img = bovw.decode_rgb(p.read_bytes())
        row = np.array(one.column("descriptors")[i].as_py(), np.float32)
        assert row.shape == (1, 216 * 5)
        np.testing.assert_array_equal(row[0], h.compute(img))
        kp = one.column("keypoints")[i].as_py()[0]
        H, W = img.shape[:2]
        assert kp == [(W - 1) / 2, (H - 1) / 2, max(W, H), 0.0]


def test_gray_images_are_replicated():
    g = (np.arange(40 * 50) % 256).astype(np.uint8).reshape(40, 50)
    rep = np.repeat(g[:, :, None], 3, axis=2)
    for space in ("hsv", "rgb", "opponent"):
        h = bovw.ColorHistogram(space=space, normalize=None, sqrt=False, mask=None)
        np.testing.assert_array_equal(h.compute(g), h.compute(rep))
    # in HSV every gray pixel has H = S = 0: only the (0, 0, v) bins count
    counts = bovw.ColorHistogram(normalize=None, sqrt=False, mask=None).compute(g).reshape(18, 4, 4)
    assert counts[0, 0].sum() == g.size


@pytest.mark.parametrize("shape", [(1, 1, 3), (7, 300, 3), (300, 7, 3), (2, 3, 3)])
def test_tiny_and_thin_images(shape):
    img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    out = bovw.ColorHistogram(grid=(1, 2, 3)).compute(img)
    assert out.shape == (288 * 14,) and np.isfinite(out).all()
    counts = bovw.ColorHistogram(grid=(1, 2, 3), normalize=None, sqrt=False, mask=None).compute(img)
    # each grid counts every pixel once (empty cells of a 1 x 1 image stay zero)
    for start, g in ((0, 1), (288, 2), (288 * 5, 3)):
        assert counts[start:start + 288 * g * g].sum() == shape[0] * shape[1]


def test_all_masked_gives_zeros_not_nan():
    white = np.full((20, 20, 3), 255, np.uint8)
    for norm in ("l1", "l2", None):
        out = bovw.ColorHistogram(normalize=norm, grid=(1, 2)).compute(white)
        assert np.isfinite(out).all() and not out.any()


@pytest.mark.parametrize(
    "params,word",
    [(dict(bins=(0, 4, 4)), "bins"), (dict(bins=(181, 4, 4)), "bins"), (dict(bins=(4, 4)), "bins"),
     (dict(bins=-3), "bins"), (dict(space="lab"), "space"), (dict(grid=0), "grid"), (dict(grid=()), "grid"),
     (dict(mask="black"), "mask"), (dict(normalize="l3"), "normalize"), (dict(space="opponent", bins=(512, 2, 2)), "bins")],
)
def test_bad_parameters(params, word):
    with pytest.raises(ValueError, match=word):
        bovw.ColorHistogram(**params).compute(np.zeros((4, 4, 3), np.uint8))


def test_bad_masks_and_images():
    img = np.zeros((10, 12, 3), np.uint8)
    with pytest.raises(ValueError, match="mask"):
        bovw.ColorHistogram().compute(img, mask=np.ones((12, 10), np.uint8))
    with pytest.raises(TypeError, match="mask"):
        bovw.ColorHistogram().compute(img, mask=np.ones((10, 12), np.float32))
    with pytest.raises(ValueError, match="mask"):  # an array mask cannot serve a batch
        bovw.ColorHistogram(mask=np.ones((10, 12), np.uint8)).extract(pa.table({"content": pa.array([b""], pa.binary())}))
    with pytest.raises(TypeError):
        bovw.ColorHistogram().compute(img.astype(np.float32))
    with pytest.raises(ValueError):
        bovw.ColorHistogram().compute(np.zeros((10, 12, 4), np.uint8))
    with pytest.raises(ValueError):
        bovw.rgb_to_hsv(np.zeros((10, 12), np.uint8))

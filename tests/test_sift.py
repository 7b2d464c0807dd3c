"""SIFT parity with OpenCV 4.12 (``cv2.SIFT_create``) and input checks.

Both implementations get the same 8-bit gray arrays (``bovw.decode_gray``).
A keypoint of ours *matches* one of OpenCV's when the positions are within
0.5 px, the sizes within 5 % and the angles within 5 degrees (pairs are
assigned greedily, closest first, one to one). Over the whole set we require

- recall (matched / OpenCV's keypoints) and precision (matched / ours) >= 0.999 (what the README claims),
- total keypoint count within 2 % of OpenCV's,
- for >= 95 % of matched pairs, ``||ours - cv2|| <= 0.05 ||cv2||`` for the
  128-float descriptors.

Exact equality is not expected and not asserted: OpenCV's Gaussian blur may
run through IPP or fused multiply-adds, its ``exp`` (``hal::exp32f``) and its
SIMD sums (descriptor norm, histogram smoothing) round differently in the
last bits, and a last-bit difference can move a gradient sample across a
histogram bin, a candidate across the contrast threshold, or a descriptor
value across a rounding boundary. The figures are printed (``pytest -s``)
with a one-line summary.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import bovw
from conftest import shared_fruits_root

import cv2  # noqa: E402

POS_TOL = 0.5
SIZE_TOL = 0.05
ANGLE_TOL = 5.0
DESC_TOL = 0.05


# ---------------------------------------------------------------------------
# Matching


def match_keypoints(ours: np.ndarray, ref: np.ndarray) -> list[tuple[int, int]]:
    """Greedy one-to-one matching of KEYPOINT_DTYPE records (ours, OpenCV's)."""
    if len(ours) == 0 or len(ref) == 0:
        return []
    a = np.stack([ours["x"], ours["y"]], 1).astype(np.float64)
    b = np.stack([ref["x"], ref["y"]], 1).astype(np.float64)
    pairs: list[tuple[int, int]] = []
    # Blocks of rows keep the (n, m) matrices small for large images.
    cand_i, cand_j, cand_d = [], [], []
    for s in range(0, len(a), 512):
        d = np.linalg.norm(a[s : s + 512, None] - b[None], axis=2)
        size_ok = np.abs(ours["size"][s : s + 512, None] - ref["size"][None]) <= SIZE_TOL * ref["size"][None]
        da = np.abs(ours["angle"][s : s + 512, None] - ref["angle"][None])
        da = np.minimum(da, 360.0 - da)
        ok = (d <= POS_TOL) & size_ok & (da <= ANGLE_TOL)
        i, j = np.nonzero(ok)
        cand_i.append(i + s)
        cand_j.append(j)
        cand_d.append(d[i, j] + 1e-3 * da[i, j])
    ii, jj, dd = (np.concatenate(c) for c in (cand_i, cand_j, cand_d))
    used_a, used_b = set(), set()
    for k in np.argsort(dd, kind="stable"):
        i, j = int(ii[k]), int(jj[k])
        if i in used_a or j in used_b:
            continue
        used_a.add(i)
        used_b.add(j)
        pairs.append((i, j))
    return pairs


class Parity:
    """Accumulated agreement figures over a set of images."""

    def __init__(self, name: str):
        self.name = name
        self.n_images = self.n_ours = self.n_ref = self.n_matched = 0
        self.desc_ok = 0
        self.rel_dists: list[float] = []
        self.octave_equal = 0

    def add(self, ours_kp, ours_desc, ref_kp, ref_desc) -> None:
        self.n_images += 1
        self.n_ours += len(ours_kp)
        self.n_ref += len(ref_kp)
        pairs = match_keypoints(ours_kp, ref_kp)
        self.n_matched += len(pairs)
        for i, j in pairs:
            dist = float(np.linalg.norm(ours_desc[i] - ref_desc[j]))
            rel = dist / max(float(np.linalg.norm(ref_desc[j])), 1e-12)
            self.rel_dists.append(rel)
            self.desc_ok += rel <= DESC_TOL
            self.octave_equal += int(ours_kp["octave"][i]) == int(ref_kp["octave"][j])

    @property
    def recall(self) -> float:
        return self.n_matched / max(self.n_ref, 1)

    @property
    def precision(self) -> float:
        return self.n_matched / max(self.n_ours, 1)

    @property
    def count_ratio(self) -> float:
        return self.n_ours / max(self.n_ref, 1)

    @property
    def desc_rate(self) -> float:
        return self.desc_ok / max(self.n_matched, 1)

    def summary(self) -> str:
        med = float(np.median(self.rel_dists)) if self.rel_dists else 0.0
        return (
            f"SIFT parity [{self.name}]: images={self.n_images} keypoints ours={self.n_ours} "
            f"cv2={self.n_ref} matched={self.n_matched} recall={self.recall:.4f} "
            f"precision={self.precision:.4f} count_ratio={self.count_ratio:.4f} "
            f"descriptors_within_5%={self.desc_rate:.4f} median_rel_dist={med:.5f} "
            f"octave_field_equal={self.octave_equal / max(self.n_matched, 1):.4f}"
        )


def run_both(img: np.ndarray, ours: bovw.SIFT, ref, mask=None):
    kp, desc = ours.detect_and_compute(img, mask)
    rk, rd = ref.detectAndCompute(img, mask)
    rk = bovw.keypoints_from_cv2(rk)
    if rd is None:
        rd = np.zeros((0, 128), np.float32)
    return kp, desc, rk, rd


# ---------------------------------------------------------------------------
# Image sets


def larger_images(real: list[tuple[str, np.ndarray]]) -> list[np.ndarray]:
    """640x480 images made from Fruits-360 frames: a mosaic of 48 crops, two
    frames enlarged (bilinear, bicubic) and four mirrored copies of a third."""
    n = len(real)
    tiles = [real[(i * 7) % n][1][10:90, 10:90] for i in range(48)]
    mosaic = np.vstack([np.hstack(tiles[r * 8 : (r + 1) * 8]) for r in range(6)])
    big1 = cv2.resize(real[n // 5][1], (640, 480), interpolation=cv2.INTER_LINEAR)
    big2 = cv2.resize(real[2 * n // 5][1], (640, 480), interpolation=cv2.INTER_CUBIC)
    small = cv2.resize(real[3 * n // 5][1], (320, 240), interpolation=cv2.INTER_AREA)
    quad = np.vstack([np.hstack([small, small[:, ::-1]]), np.hstack([small[::-1], small[::-1, ::-1]])])
    return [np.ascontiguousarray(mosaic), big1, big2, np.ascontiguousarray(quad)]


def synthetic_images() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = []
    # Gaussian blobs of several sizes on a gradient.
    yy, xx = np.mgrid[0:160, 0:200].astype(np.float64)
    img = 40 + 0.3 * xx
    for cx, cy, s, a in [(40, 40, 3, 150), (120, 50, 6, -90), (60, 120, 9, 120), (160, 110, 4.5, 100), (100, 90, 2, 80)]:
        img = img + a * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
    out.append(("blobs", np.clip(img, 0, 255).astype(np.uint8)))
    # Checkerboard, slightly rotated and blurred so that corners are not exact ties.
    board = ((np.floor((xx * 0.98 + yy * 0.2) / 12) + np.floor((yy * 0.98 - xx * 0.2) / 12)) % 2) * 160 + 40
    out.append(("checkerboard", cv2.GaussianBlur(board.astype(np.uint8), (5, 5), 1.0)))
    # Noise: white, and smoothed.
    out.append(("noise", rng.integers(0, 256, (128, 128), dtype=np.uint8)))
    out.append(("smooth-noise", cv2.GaussianBlur(rng.integers(0, 256, (150, 170), dtype=np.uint8), (7, 7), 2.0)))
    # Rectangles and a disc.
    shapes = np.full((120, 140), 30, np.uint8)
    cv2.rectangle(shapes, (20, 20), (60, 80), 200, -1)
    cv2.circle(shapes, (100, 60), 22, 140, -1)
    out.append(("shapes", shapes))
    return out


@pytest.fixture(scope="module")
def sift_pair():
    return bovw.SIFT(), cv2.SIFT_create()


# ---------------------------------------------------------------------------
# Parity


def test_parity_with_opencv_on_real_larger_and_synthetic_images(real_gray_images, sift_pair):
    ours, ref = sift_pair
    total = Parity("all")
    groups = {"real": Parity("real 100x100"), "larger": Parity("larger 640x480"), "synthetic": Parity("synthetic")}
    sets = [("real", [g for _, g in real_gray_images]), ("larger", larger_images(real_gray_images))]
    sets.append(("synthetic", [g for _, g in synthetic_images()]))
    for name, images in sets:
        for img in images:
            r = run_both(img, ours, ref)
            groups[name].add(*r)
            total.add(*r)
    if shared_fruits_root() is not None:
        assert len(real_gray_images) >= 500
    for g in groups.values():
        print(g.summary())
    print(total.summary())
    assert total.recall >= 0.999
    assert total.precision >= 0.999
    assert abs(total.count_ratio - 1.0) <= 0.001
    assert total.desc_rate >= 0.999
    # Each group on its own too.
    for g in groups.values():
        assert g.recall >= 0.999 and g.precision >= 0.999, g.summary()


def test_compute_on_opencv_keypoints_matches_opencv(real_gray_images, sift_pair):
    """``compute`` at OpenCV's keypoints (same pyramid rule: doubled when a
    keypoint is in octave -1) gives OpenCV's descriptors."""
    ours, ref = sift_pair
    ok = total = 0
    for _, img in real_gray_images[:60]:
        kps = ref.detect(img, None)
        if not kps:
            continue
        rk, rd = ref.compute(img, kps)
        k2, d2 = ours.compute(img, kps)
        assert d2.shape == rd.shape and d2.dtype == np.float32
        np.testing.assert_array_equal(k2["x"], bovw.keypoints_from_cv2(rk)["x"])
        rel = np.linalg.norm(d2 - rd, axis=1) / np.maximum(np.linalg.norm(rd, axis=1), 1e-12)
        ok += int((rel <= DESC_TOL).sum())
        total += len(rel)
    print(f"SIFT compute parity: descriptors within 5% = {ok / total:.4f} of {total}")
    assert ok / total >= 0.999


def test_compute_without_doubled_octave_follows_opencv(real_gray_images, sift_pair):
    """With no keypoint in octave -1 OpenCV's compute builds the pyramid from the
    undoubled image; so do we (descriptors then differ from detect_and_compute's)."""
    ours, ref = sift_pair
    ok = total = 0
    for _, img in real_gray_images[:60]:
        kps = [k for k in ref.detect(img, None) if (k.octave & 255) != 255]
        if not kps:
            continue
        _, rd = ref.compute(img, kps)
        _, d2 = ours.compute(img, kps)
        rel = np.linalg.norm(d2 - rd, axis=1) / np.maximum(np.linalg.norm(rd, axis=1), 1e-12)
        ok += int((rel <= DESC_TOL).sum())
        total += len(rel)
    assert total > 0
    assert ok / total >= 0.999


@pytest.mark.parametrize(
    "params",
    [
        dict(n_octave_layers=4, contrast_threshold=0.03, edge_threshold=12.0, sigma=1.4),
        dict(n_octave_layers=2, contrast_threshold=0.06, edge_threshold=6.0, sigma=2.0),
    ],
)
def test_parity_with_other_parameters(real_gray_images, params):
    ours = bovw.SIFT(**params)
    ref = cv2.SIFT_create(
        nOctaveLayers=params["n_octave_layers"],
        contrastThreshold=params["contrast_threshold"],
        edgeThreshold=params["edge_threshold"],
        sigma=params["sigma"],
    )
    p = Parity(str(params))
    for _, img in real_gray_images[::5]:
        p.add(*run_both(img, ours, ref))
    print(p.summary())
    assert p.recall >= 0.999 and p.precision >= 0.999 and p.desc_rate >= 0.999


def test_n_features_keeps_the_strongest_like_opencv(real_gray_images):
    ours = bovw.SIFT(n_features=15)
    ref = cv2.SIFT_create(nfeatures=15)
    p = Parity("n_features=15")
    for _, img in real_gray_images[::10]:
        kp, desc, rk, rd = run_both(img, ours, ref)
        full = bovw.SIFT().detect(img)
        if len(full) > 15:
            # At least 15 kept, and all at least as strong as the 15th strongest.
            cut = np.sort(full["response"])[::-1][14]
            assert len(kp) >= 15 and (kp["response"] >= cut).all()
        p.add(kp, desc, rk, rd)
    print(p.summary())
    assert p.recall >= 0.999 and p.precision >= 0.999


def test_mask_parity(real_gray_images):
    ours, ref = bovw.SIFT(), cv2.SIFT_create()
    p = Parity("mask")
    for _, img in real_gray_images[::10]:
        mask = np.zeros_like(img)
        mask[:, : img.shape[1] * 3 // 5] = 255
        mask[70:, :] = 0
        kp, desc, rk, rd = run_both(img, ours, ref, mask)
        assert ((kp["x"] + 0.5).astype(int) < img.shape[1] * 3 // 5).all()
        p.add(kp, desc, rk, rd)
    print(p.summary())
    assert p.recall >= 0.999 and p.precision >= 0.999


def test_keypoint_fields_follow_opencv_conventions(real_gray_images, sift_pair):
    ours, ref = sift_pair
    img = real_gray_images[7][1]
    kp, desc, rk, rd = run_both(img, ours, ref)
    assert kp.dtype == bovw.KEYPOINT_DTYPE and desc.dtype == np.float32 and desc.shape == (len(kp), 128)
    # Sorted by x then y (KeyPointsFilter::removeDuplicatedSorted), like OpenCV.
    order = np.lexsort((kp["y"], kp["x"]))
    np.testing.assert_array_equal(order, np.arange(len(kp)))
    # Octave -1 (doubled image) is packed as 255 in the low byte; layer in 1..3.
    octv = kp["octave"] & 255
    assert set(np.unique(octv)) <= {255, 0, 1, 2, 3, 4, 5}
    assert ((kp["octave"] >> 8) & 255).min() >= 1 and ((kp["octave"] >> 8) & 255).max() <= 3
    assert (kp["angle"] >= 0).all() and (kp["angle"] < 360).all()
    assert (kp["class_id"] == -1).all()
    # Descriptors: whole numbers in 0..255.
    assert (desc >= 0).all() and (desc <= 255).all() and (desc == np.round(desc)).all()
    pairs = match_keypoints(kp, rk)
    i, j = np.array(pairs).T
    np.testing.assert_allclose(kp["response"][i], rk["response"][j], rtol=1e-3)
    np.testing.assert_allclose(kp["size"][i], rk["size"][j], rtol=1e-4)


def test_detect_and_compute_agree(real_gray_images, sift_pair):
    ours, _ = sift_pair
    for _, img in real_gray_images[:20]:
        kp, desc = ours.detect_and_compute(img)
        kp2 = ours.detect(img)
        np.testing.assert_array_equal(kp, kp2)
        k3, d3 = ours.compute(img, kp)
        if (kp["octave"] & 255 == 255).any():
            np.testing.assert_array_equal(d3, desc)


# ---------------------------------------------------------------------------
# Batches, threads, determinism


def _encode_png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def test_batch_extraction_matches_single_images_and_is_thread_independent(real_gray_images):
    images = [g for _, g in real_gray_images[:40]] + [np.full((64, 64), 7, np.uint8)]
    content = [_encode_png(g) for g in images] + [b"not an image", None]
    batch = pa.RecordBatch.from_arrays(
        [pa.array(range(len(content))), pa.array(content, pa.binary())], names=["id", "content"]
    )
    out1 = bovw.extract_descriptors(batch, method="sift", n_threads=1)
    out2 = bovw.extract_descriptors(batch, method="sift", n_threads=2)
    assert out1.equals(out2)
    assert out1.column("id").to_pylist() == list(range(len(content)))
    n_kp = out1.column("n_keypoints").to_pylist()
    errors = out1.column("error").to_pylist()
    sift = bovw.SIFT()
    for i, g in enumerate(images):
        kp, desc = sift.detect_and_compute(g)
        assert n_kp[i] == len(kp) and errors[i] is None
        got = np.array(out1.column("descriptors")[i].as_py(), dtype=np.float32).reshape(-1, 128)
        np.testing.assert_array_equal(got, desc)
    assert n_kp[len(images) - 1] == 0
    assert n_kp[-2] is None and errors[-2]
    assert n_kp[-1] is None and errors[-1]


def test_results_do_not_depend_on_call_order(real_gray_images):
    """Scratch buffers are reused across images of different sizes."""
    sift = bovw.SIFT()
    a = real_gray_images[3][1]
    big = cv2.resize(a, (300, 220))
    first = sift.detect_and_compute(a)
    sift.detect_and_compute(big)
    sift.detect_and_compute(np.ascontiguousarray(big[:50, :70]))
    again = sift.detect_and_compute(a)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])


# ---------------------------------------------------------------------------
# Bad input


def test_uniform_image_gives_empty_arrays():
    kp, desc = bovw.SIFT().detect_and_compute(np.full((80, 90), 200, np.uint8))
    assert kp.shape == (0,) and kp.dtype == bovw.KEYPOINT_DTYPE
    assert desc is not None and desc.shape == (0, 128) and desc.dtype == np.float32
    assert bovw.SIFT().detect(np.zeros((30, 30), np.uint8)).shape == (0,)


@pytest.mark.parametrize(
    "image, exc, words",
    [
        (np.zeros((50, 50), np.float32), TypeError, "uint8"),
        (np.zeros((50, 50), np.uint16), TypeError, "uint8"),
        (np.zeros((50, 50, 3), np.uint8), ValueError, "2-D"),
        (np.zeros((50,), np.uint8), ValueError, "2-D"),
        (np.zeros((0, 50), np.uint8), ValueError, "empty"),
        (np.zeros((5, 40), np.uint8), ValueError, "too small"),
        (np.zeros((40, 3), np.uint8), ValueError, "too small"),
    ],
)
def test_bad_images_raise_clear_errors(image, exc, words):
    for call in (bovw.SIFT().detect, bovw.SIFT().detect_and_compute):
        with pytest.raises(exc, match=words):
            call(image)


def test_smallest_accepted_image():
    kp, desc = bovw.SIFT().detect_and_compute(np.zeros((6, 6), np.uint8))
    assert desc.shape == (0, 128)


def test_bad_mask_and_parameters():
    img = np.zeros((40, 40), np.uint8)
    with pytest.raises(ValueError, match="mask"):
        bovw.SIFT().detect_and_compute(img, np.ones((40, 41), np.uint8))
    with pytest.raises(TypeError, match="mask"):
        bovw.SIFT().detect(img, np.ones((40, 40), np.float64))
    with pytest.raises(ValueError, match="sigma"):
        bovw.SIFT(sigma=0).detect(img)
    with pytest.raises(ValueError, match="n_octave_layers"):
        bovw.SIFT(n_octave_layers=0).detect(img)
    with pytest.raises(ValueError, match="contrast_threshold"):
        bovw.SIFT(contrast_threshold=float("nan")).detect(img)
    with pytest.raises(ValueError, match="octave"):
        kp = np.zeros(1, bovw.KEYPOINT_DTYPE)
        kp["octave"] = 254  # octave -2
        bovw.SIFT().compute(img, kp)


def test_opencv_parameter_names_are_accepted():
    s = bovw.SIFT(nfeatures=5, nOctaveLayers=4, contrastThreshold=0.05, edgeThreshold=8)
    assert (s.n_features, s.n_octave_layers, s.contrast_threshold, s.edge_threshold) == (5, 4, 0.05, 8)

"""ORB parity with OpenCV 4.12 (``cv2.ORB_create``) on real and synthetic images.

A keypoint of ours matches an OpenCV keypoint when both are on the same
pyramid level, their positions differ by at most one pixel of that level
(``1.2 ** octave`` input pixels) on each axis and their angles by at most 5
degrees. Recall = matched / OpenCV's keypoints, precision = matched / ours;
for matched pairs we report the Hamming distance of the descriptors. The
figures are printed (``pytest -s``) and asserted: recall and precision
>= 0.999 (what the README claims), Hamming distance <= 16 bits for >= 99.9 % of the matches.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import bovw

import cv2  # noqa: E402

SMALL = dict(n_features=100, edge_threshold=15, patch_size=15)  # peers' settings for 100x100 fruits


def _cv2_orb(**kw):
    return cv2.ORB_create(
        nfeatures=kw.get("n_features", 500),
        scaleFactor=kw.get("scale_factor", 1.2),
        nlevels=kw.get("n_levels", 8),
        edgeThreshold=kw.get("edge_threshold", 31),
        firstLevel=kw.get("first_level", 0),
        WTA_K=kw.get("wta_k", 2),
        scoreType=cv2.ORB_FAST_SCORE if kw.get("score_type", "harris") == "fast" else cv2.ORB_HARRIS_SCORE,
        patchSize=kw.get("patch_size", 31),
        fastThreshold=kw.get("fast_threshold", 20),
    )


def _match(kc, dc, ko, do, scale_factor=1.2):
    """Greedy one-to-one matching; returns (n_cv, n_ours, Hamming distances of matches)."""
    if len(kc) == 0 or len(ko) == 0:
        return len(kc), len(ko), []
    cx = np.array([k.pt[0] for k in kc], np.float64)
    cy = np.array([k.pt[1] for k in kc], np.float64)
    ca = np.array([k.angle for k in kc], np.float64)
    co = np.array([k.octave for k in kc])
    tol = scale_factor ** co.astype(np.float64)
    ok = (
        (co[:, None] == ko["octave"][None, :])
        & (np.abs(cx[:, None] - ko["x"][None, :]) <= tol[:, None] + 1e-4)
        & (np.abs(cy[:, None] - ko["y"][None, :]) <= tol[:, None] + 1e-4)
        & (np.abs((ko["angle"][None, :] - ca[:, None] + 180.0) % 360.0 - 180.0) <= 5.0)
    )
    used = np.zeros(len(ko), bool)
    ham = []
    for i in range(len(kc)):
        cand = np.flatnonzero(ok[i] & ~used)
        if cand.size == 0:
            continue
        d = np.hypot(ko["x"][cand] - cx[i], ko["y"][cand] - cy[i])
        j = cand[np.argmin(d)]
        used[j] = True
        ham.append(int(np.unpackbits(dc[i] ^ do[j]).sum()))
    return len(kc), len(ko), ham


def _parity(images, label, **params):
    cvorb = _cv2_orb(**params)
    ours = bovw.ORB(**params)
    n_cv = n_ours = 0
    hams: list[int] = []
    for img in images:
        kc, dc = cvorb.detectAndCompute(img, None)
        ko, do = ours.detect_and_compute(img)
        assert do.dtype == np.uint8 and do.shape == (len(ko), 32)
        if dc is None:
            dc = np.zeros((0, 32), np.uint8)
        a, b, h = _match(kc, dc, ko, do, params.get("scale_factor", 1.2))
        n_cv += a
        n_ours += b
        hams += h
    h = np.array(hams)
    recall = len(h) / max(n_cv, 1)
    precision = len(h) / max(n_ours, 1)
    close = float(np.mean(h <= 16)) if len(h) else 1.0
    exact = float(np.mean(h == 0)) if len(h) else 1.0
    print(
        f"\n[ORB parity] {label} {params or 'defaults'}: {len(images)} images, cv2 {n_cv} kp, ours {n_ours} kp, "
        f"matched {len(h)}, recall {recall:.4f}, precision {precision:.4f}, "
        f"hamming<=16 {close:.4f}, identical descriptors {exact:.4f}, mean hamming {h.mean() if len(h) else 0:.3f}"
    )
    assert n_cv > 0
    assert recall >= 0.999 and precision >= 0.999
    assert close >= 0.999
    return recall, precision, close


@pytest.fixture(scope="module")
def real_images(real_gray_images, fruits_root):
    """>= 500 real images: the Test images of the fixture, topped up from
    Training when only the committed sample (150 Test images) is present."""
    imgs = [img for _, img in real_gray_images]
    if len(imgs) < 500:
        from conftest import pick_images

        extra = pick_images(fruits_root, "Training", 500 - len(imgs))
        imgs += [bovw.decode_gray(p.read_bytes()) for p in extra]
    return imgs


@pytest.fixture(scope="module")
def large_images(real_images):
    """640x480 images: 8x6 tiles of real 100x100 images resized, and 2x upscales of real images."""
    out = []
    for t in range(4):
        tiles = [real_images[(t * 48 + i) % len(real_images)] for i in range(48)]
        rows = [np.hstack(tiles[r * 8 : (r + 1) * 8]) for r in range(6)]
        mosaic = np.vstack(rows)  # 600 x 800
        out.append(cv2.resize(mosaic, (640, 480), interpolation=cv2.INTER_AREA))
    for img in real_images[200:204]:
        out.append(cv2.resize(img, (640, 480), interpolation=cv2.INTER_CUBIC))
    return out


@pytest.fixture(scope="module")
def synthetic_images():
    rng = np.random.default_rng(6)
    out = []
    for s in range(6):
        h, w = (240, 320) if s % 2 else (150, 200)
        img = np.full((h, w), 60 + 20 * s, np.uint8)
        for _ in range(25):
            x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
            x1, y1 = x0 + int(rng.integers(8, 60)), y0 + int(rng.integers(8, 60))
            color = int(rng.integers(0, 256))
            if rng.random() < 0.5:
                cv2.rectangle(img, (x0, y0), (x1, y1), color, -1)
            else:
                cv2.circle(img, (x0, y0), int(rng.integers(5, 30)), color, -1)
        noise = rng.normal(0, 6, img.shape)
        out.append(np.clip(img + noise, 0, 255).astype(np.uint8))
    # a checkerboard rotated by 17 degrees
    cb = ((np.indices((300, 300)).sum(0) // 1) % 2).astype(np.uint8)
    cb = np.kron((np.add.outer(np.arange(15), np.arange(15)) % 2).astype(np.uint8) * 200 + 30, np.ones((20, 20), np.uint8))
    m = cv2.getRotationMatrix2D((150, 150), 17, 1.0)
    out.append(cv2.warpAffine(cb, m, (300, 300), borderMode=cv2.BORDER_REFLECT))
    del cb
    return out


def test_parity_real_defaults(real_images):
    assert len(real_images) >= 500
    _parity(real_images, "fruits-360 Test 100x100")


def test_parity_real_small_image_settings(real_images):
    _parity(real_images, "fruits-360 Test 100x100", **SMALL)


def test_parity_large_images(large_images):
    _parity(large_images, "640x480 mosaics/upscales")
    _parity(large_images[:3], "640x480 mosaics/upscales", **SMALL)


def test_parity_synthetic(synthetic_images):
    _parity(synthetic_images, "synthetic shapes + noise")
    _parity(synthetic_images, "synthetic shapes + noise", **SMALL)


@pytest.mark.parametrize(
    "params",
    [
        dict(wta_k=3),
        dict(wta_k=4),
        dict(score_type="fast"),
        dict(n_features=1000, fast_threshold=10, n_levels=4, scale_factor=1.5),
        dict(first_level=2, n_levels=5),
        dict(n_features=200, patch_size=21, edge_threshold=21),
    ],
    ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()),
)
def test_parity_other_parameters(real_images, large_images, params):
    _parity(real_images[:150] + large_images[:2], "real + 640x480", **params)


def test_compute_on_opencv_keypoints(real_images, large_images):
    """Descriptors at OpenCV's own keypoints (ORB::compute) agree bit for bit on almost all."""
    cvorb = _cv2_orb()
    ours = bovw.ORB()
    same = total = 0
    for img in real_images[:100] + large_images[:2]:
        kc, dc = cvorb.detectAndCompute(img, None)
        if not kc:
            continue
        kp, desc = ours.compute(img, kc)
        assert len(kp) == len(kc)
        same += int((desc == dc).all(axis=1).sum())
        total += len(kc)
    print(f"\n[ORB compute] identical descriptors at cv2 keypoints: {same}/{total}")
    assert same >= 0.99 * total


def test_mask_parity(large_images):
    img = large_images[0]
    mask = np.zeros(img.shape, np.uint8)
    mask[50:300, 100:500] = 255
    kc, dc = _cv2_orb().detectAndCompute(img, mask)
    ko, do = bovw.ORB().detect_and_compute(img, mask)
    a, b, h = _match(kc, dc, ko, do)
    assert len(h) >= 0.999 * a and len(h) >= 0.999 * b
    assert np.all((ko["x"] >= 50) & (ko["x"] < 550))


def test_keypoint_fields(real_images):
    img = max(real_images[:50], key=lambda im: len(_cv2_orb().detect(im, None)))
    ko, do = bovw.ORB().detect_and_compute(img)
    kc = _cv2_orb().detect(img, None)
    assert len(ko) == len(kc) > 0
    np.testing.assert_allclose(np.sort(ko["size"]), np.sort([k.size for k in kc]), rtol=1e-6)
    np.testing.assert_allclose(np.sort(ko["response"]), np.sort([k.response for k in kc]), rtol=1e-5)
    assert set(ko["octave"]) <= set(range(8))
    assert np.all((ko["angle"] >= 0) & (ko["angle"] < 360))
    # detect alone gives the same keypoints
    kd = bovw.ORB().detect(img)
    np.testing.assert_array_equal(kd, ko)


def test_batch_extract_matches_single_images(sample_root):
    table = bovw.read_images(sample_root)
    rb = bovw.extract_descriptors(table.slice(0, 60), method="orb", n_threads=2)
    col = rb.column("descriptors")
    assert col.type == pa.list_(pa.binary(32)) or pa.types.is_fixed_size_binary(col.type.value_type)
    ours = bovw.ORB()
    contents = table.column("content").to_pylist()[:60]
    for i in range(60):
        _, d = ours.detect_and_compute(bovw.decode_gray(contents[i]))
        row = col[i].values.to_numpy(zero_copy_only=False) if len(col[i]) else []
        got = np.frombuffer(b"".join(row), np.uint8).reshape(-1, 32) if len(row) else np.zeros((0, 32), np.uint8)
        np.testing.assert_array_equal(got, d)
        assert rb.column("n_keypoints")[i].as_py() == len(d)
    # same result with one thread
    rb1 = bovw.extract_descriptors(table.slice(0, 60), method="orb", n_threads=1)
    assert rb1.column("descriptors").equals(col)


def test_deterministic(real_images):
    ours = bovw.ORB(**SMALL)
    a = [ours.detect_and_compute(img) for img in real_images[:30]]
    b = [ours.detect_and_compute(img) for img in real_images[:30]]
    for (k1, d1), (k2, d2) in zip(a, b):
        np.testing.assert_array_equal(k1, k2)
        np.testing.assert_array_equal(d1, d2)


@pytest.mark.parametrize("shape", [(1, 1), (5, 5), (20, 30), (62, 62), (1, 500)])
def test_tiny_images_give_empty_results(shape):
    img = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    kp, desc = bovw.ORB().detect_and_compute(img)
    assert desc is not None and desc.shape == (0, 32) and desc.dtype == np.uint8
    assert len(kp) == 0
    kc = _cv2_orb().detect(img, None) if min(shape) > 1 else []
    assert len(kc) == 0


def test_uniform_image_gives_empty_results():
    for v in (0, 128, 255):
        kp, desc = bovw.ORB().detect_and_compute(np.full((200, 300), v, np.uint8))
        assert len(kp) == 0 and desc.shape == (0, 32)


def test_bad_inputs_raise_clear_errors():
    orb = bovw.ORB()
    with pytest.raises(ValueError, match="empty"):
        orb.detect_and_compute(np.zeros((0, 10), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        orb.detect_and_compute(np.zeros((100, 100), np.float32))
    with pytest.raises(TypeError, match="None"):
        orb.detect_and_compute(None)
    with pytest.raises(ValueError, match="2-D"):
        orb.detect_and_compute(np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(ValueError, match="mask"):
        orb.detect_and_compute(np.zeros((100, 100), np.uint8), np.zeros((50, 50), np.uint8))
    with pytest.raises(ValueError, match="wta_k"):
        bovw.ORB(wta_k=5).detect_and_compute(np.zeros((100, 100), np.uint8))
    with pytest.raises(ValueError, match="scale_factor"):
        bovw.ORB(scale_factor=1.0).detect_and_compute(np.zeros((100, 100), np.uint8))
    with pytest.raises(ValueError, match="score_type"):
        bovw.ORB(score_type="sobel").detect(np.zeros((100, 100), np.uint8))
    with pytest.raises(ValueError, match="octave"):
        kp = np.zeros(1, bovw.KEYPOINT_DTYPE)
        kp["x"], kp["y"], kp["octave"] = 50, 50, -2
        orb.compute(np.zeros((100, 100), np.uint8), kp)


def test_opencv_names_are_accepted():
    img = np.zeros((100, 100), np.uint8)
    cv2.circle(img, (50, 50), 20, 255, -1)
    a = bovw.ORB(nfeatures=100, edgeThreshold=15, patchSize=15, scoreType=cv2.ORB_FAST_SCORE)
    assert a.score_type == "fast" and a.n_features == 100
    b = bovw.ORB(n_features=100, edge_threshold=15, patch_size=15, score_type="fast")
    np.testing.assert_array_equal(a.detect_and_compute(img)[1], b.detect_and_compute(img)[1])

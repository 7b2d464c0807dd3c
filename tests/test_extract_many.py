"""``bovw.features.extract_many``: several extractors over the same encoded
images, each image decoded once per pixel layout, give exactly what each
extractor's own ``extract`` gives (values, error rows and their messages),
on real Fruits-360 images mixed with bad entries and under memory limits
that refuse or downscale an image for some extractors only."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import bovw
from bovw.extractors import get_extractor
from bovw.features import extract_many
from conftest import pick_images


@pytest.fixture(scope="module")
def batch(fruits_root) -> pa.RecordBatch:
    good = [p.read_bytes() for p in pick_images(fruits_root, "Test", 24)]
    bad = [b"", b"not an image at all", None, good[0][: len(good[0]) // 3]]
    contents = good[:12] + bad + good[12:]
    return pa.record_batch({"content": pa.array(contents, pa.binary())})


def _assert_same(extractors, batch, n_threads=2):
    many = extract_many(batch, extractors, n_threads=n_threads)
    assert len(many) == len(extractors)
    for x, got in zip(extractors, many):
        want = x.extract(batch, keep_columns=[], n_threads=1)
        assert got.schema == want.schema, x
        for name in want.schema.names:
            assert got.column(name).equals(want.column(name)), (x, name)
    return many


@pytest.mark.parametrize("names", [
    ("cnn", "color"),           # RGB and RGB: one decode
    ("sift", "orb", "dsift"),   # gray, gray, gray
    ("sift", "color", "orb"),   # gray, RGB, gray: two decodes
    ("color",),
])
def test_equal_to_each_extract(batch, names):
    params = {"cnn": {"input_size": 96}}
    extractors = [get_extractor(n, **params.get(n, {})) for n in names]
    many = _assert_same(extractors, batch)
    stages = many[0].column("error_stage").to_pylist()
    # the bad entries are error rows at stage "decode" for every extractor, the rest described
    assert stages[12:16] == ["decode"] * 4 and stages[:12] == [None] * 12
    assert all(m.column("error").to_pylist()[12:16] == many[0].column("error").to_pylist()[12:16] for m in many)


def test_memory_limits_per_extractor(batch):
    # 1 MiB: PHOW and SIFT need more for 100 x 100 pixels, the colour
    # histogram has no estimate: refused for the first two (each with its
    # own estimate in the message) at their header, described for the third
    lim = {"max_image_memory": 1 << 20}
    extractors = [get_extractor("phow", color="gray", **lim), get_extractor("sift", **lim),
                  get_extractor("color").set_params(**lim), get_extractor("phow", color="hsv", **lim)]
    many = _assert_same(extractors, batch)
    refused = [m.column("error").to_pylist()[0] for m in many]
    assert "max_image_memory" in refused[0] and "max_image_memory" in refused[1] and refused[0] != refused[1]
    assert refused[2] is None and "max_image_memory" in refused[3]
    # downscaled: two real images enlarged to 800 x 800 (SIFT's estimate,
    # about 300 bytes a pixel, is over 64 MiB there), next to a 100 x 100 one
    import cv2

    rgb = [bovw.decode_rgb(b) for b in batch.column(0).to_pylist()[:2]]
    big = [cv2.imencode(".jpg", cv2.resize(im[:, :, ::-1], (800, 800)))[1].tobytes() for im in rgb]
    mixed = pa.record_batch({"content": pa.array(big + batch.column(0).to_pylist()[2:3], pa.binary())})
    down = {"max_image_memory": 64 << 20, "oversize": "downscale"}
    extractors = [get_extractor("sift", **down), get_extractor("color").set_params(**down),
                  get_extractor("orb", **down)]
    many = _assert_same(extractors, mixed)
    scales = [m.column("image_scale").to_pylist() for m in many]
    assert scales[0][0] < 1 and scales[0][1] < 1 and scales[0][2] == 1
    assert scales[1] == [1, 1, 1] and scales[2] == [1, 1, 1]


def test_different_limits_and_thread_counts(batch):
    # extractors with different limits are run one after the other: same result
    a, b = get_extractor("sift", max_image_memory=1 << 20), get_extractor("orb")
    _assert_same([a, b], batch)
    one = extract_many(batch, [get_extractor("color"), get_extractor("dsift")], n_threads=1)
    two = extract_many(batch, [get_extractor("color"), get_extractor("dsift")], n_threads=2)
    assert all(x.equals(y) for x, y in zip(one, two))
    with pytest.raises(KeyError, match="no column 'content'"):
        extract_many(batch.rename_columns(["bytes"]), [get_extractor("color"), get_extractor("cnn")])
    with pytest.raises(TypeError, match="extractor"):
        bovw._bovw.extract_many(batch.column(0), [get_extractor("color")._rust, "sift"])
    assert [m.num_rows for m in extract_many(batch.slice(0, 0), [get_extractor("color"), get_extractor("sift")])] == [0, 0]


def test_rgb_channels_share_one_decode(batch, monkeypatch):
    # the main job's default channels (CNN + colour histogram) go through one
    # Rust call per batch, not one extract per extractor (ColorHistogram's
    # batch check must not turn sharing off)
    import bovw.features as bf

    calls = []
    real = bf._bovw.extract_many
    monkeypatch.setattr(bf._bovw, "extract_many", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))

    def no_single(*a, **k):
        raise AssertionError("extract_many fell back to one extract per extractor")

    extractors = [get_extractor("cnn", input_size=96), get_extractor("color", mask="white")]
    monkeypatch.setattr(bf.Extractor, "extract", no_single)
    many = extract_many(batch, extractors)
    assert calls == [2] and [m.num_rows for m in many] == [batch.num_rows] * 2
    # a mask array applies to one image only: refused for batches, by extract_many too
    masked = get_extractor("color").set_params(mask=np.ones((100, 100), np.uint8))
    with pytest.raises(ValueError, match="a mask array applies to one image"):
        extract_many(batch, [extractors[0], masked])


def test_a_bare_array_is_a_clear_type_error(batch):
    # a binary array (not a table) is refused with a message that says what to
    # pass, by extract and extract_many alike, rather than pyarrow's schema error
    content = batch.column("content")
    for data in (content, pa.chunked_array([content])):
        with pytest.raises(TypeError, match=r"RecordBatch or Table .*pa\.table\(\{'content': array\}\)"):
            get_extractor("color").extract(data)
        with pytest.raises(TypeError, match="binary column of encoded images"):
            extract_many(data, [get_extractor("color"), get_extractor("sift")])
    # a struct array is a table: accepted, same rows as the batch
    struct = pa.StructArray.from_arrays([content], names=["content"])
    assert get_extractor("color").extract(struct).column("n_keypoints").equals(
        get_extractor("color").extract(batch).column("n_keypoints"))

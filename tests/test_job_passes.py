"""The main job's two encoding passes and the model fitted beside the second.

``bovw.job.run`` encodes the Training (and Validation) images first, fits
PCA / model selection / the classifier on a background thread while the
engine encodes the other images, then predicts every image. These tests
check that the split into passes changes nothing: an engine's ``encode`` of
some rows, in any order, gives those rows of the whole pass bit for bit
(vocabulary cache included); the classifier is the one fitted on the Training rows alone; the fit's
stage rows are marked ``beside`` and left out of the total; an error in the
fit reaches the caller and leaves ``--out`` as it was.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import LogisticRegression

from bovw.engine import LocalEngine
from bovw.job import RunConfig, build_channels, format_stage_table, run


def _fit_vocabularies(engine, listing, channels, fit=True):
    """What the job does before encoding: sample Training descriptors (filling the engine's
    descriptor cache) and fit each local channel's vocabulary (unless ``fit`` is False)."""
    from bovw.job import DescriptorSample

    train = np.flatnonzero(np.array(listing.splits) == "Training")
    for ch in channels:
        if ch.extractor.kind == "local":
            sample = DescriptorSample(None, 0, ch.extractor.descriptor_width, ch.extractor.descriptor_dtype)
            X = engine.sample_descriptors(listing, train, ch.extractor, sample)
            if fit:
                ch.encoding.fit(X)


@pytest.mark.parametrize("recipe", ["bow", "color"])
def test_encoding_some_rows_gives_those_rows_of_the_whole_pass(sample_root, recipe):
    config = RunConfig(root=str(sample_root), recipe=recipe, k=20, max_iter=10, seed=0, progress=False)
    one = LocalEngine(batch_size=64, progress=False)
    listing = one.list_images(str(sample_root), test_size=0.25, seed=0)
    channels = build_channels(config)
    _fit_vocabularies(one, listing, channels)
    whole = one.encode(listing, channels)
    assert not one._cache  # the whole pass used and dropped the cached descriptors

    # the same fitted channels, a new engine whose cache holds the same descriptors
    two = LocalEngine(batch_size=48, progress=False)
    _fit_vocabularies(two, listing, channels, fit=False)
    splits = np.array(listing.splits)
    first = np.flatnonzero(splits == "Training")
    rest = np.flatnonzero(splits != "Training")[::-1].copy()  # any order
    a = two.encode(listing, channels, rows=first)
    b = two.encode(listing, channels, rows=rest)
    if recipe == "bow":
        assert two._cache and all(not c for c in two._cache.values())  # every cached image was used
    assert two._cache_bytes == 0
    for rows, part in ((first, a), (rest, b)):
        assert len(part.errors) == len(rows)
        for c in range(len(channels)):
            np.testing.assert_array_equal(part.features[c], whole.features[c][rows])
        np.testing.assert_array_equal(part.n_keypoints, whole.n_keypoints[rows])
        assert part.sha256 == [whole.sha256[i] for i in rows]
        assert part.errors == [whole.errors[i] for i in rows]
    assert a.n_bytes + b.n_bytes == whole.n_bytes


@pytest.fixture(scope="module")
def color_run(tmp_path_factory, sample_root):
    out = tmp_path_factory.mktemp("passes") / "out"
    res = run(RunConfig(root=str(sample_root), out=str(out), recipe="color", seed=5, progress=False))
    return out, res


def test_classifier_is_fitted_on_the_training_rows_alone(color_run):
    out, res = color_run
    t = pq.read_table(out / "features.parquet")
    assert "pca_features" not in t.schema.names  # no PCA in this recipe: the features are not written twice
    X = np.array(t.column("features").to_pylist(), np.float32)
    y = np.array(t.column("label").to_pylist())
    train = np.array(t.column("split").to_pylist()) == "Training"
    assert 0 < train.sum() < len(y)
    # the recipe's classifier (logistic regression, C = 100, no standardisation) fitted on the
    # Training rows of the written features, in their written order: the same model
    ref = LogisticRegression(C=100.0, max_iter=3000, random_state=5).fit(X[train], y[train])
    assert np.array_equal(ref.predict(X), np.array(t.column("prediction").to_pylist()))
    from bovw.model import load_model

    lr = load_model(out).classifier.steps[-1][1]
    np.testing.assert_allclose(lr.coef_, ref.coef_, rtol=1e-4, atol=1e-4)


def test_fit_rows_are_marked_beside_and_left_out_of_the_total(color_run):
    out, res = color_run
    stages = json.loads((out / "run.json").read_text())["stages"]
    names = [s["stage"] for s in stages]
    encode_test = next(n for n in names if n.startswith("decode") and n.endswith("(Test)"))
    assert any(n.startswith("decode") and n.endswith("(Training)") for n in names)
    beside = [s for s in stages if s.get("beside")]
    assert [s["stage"] for s in beside] == ["classifier (logreg, fit)"]
    assert beside[0]["beside"] == encode_test
    assert names.index("classifier (logreg, fit)") == names.index(encode_test) + 1
    table = format_stage_table(stages)
    total = float(table.splitlines()[-1].split()[-1])
    assert total == pytest.approx(sum(s["seconds"] for s in stages if not s.get("beside")), abs=0.006)
    assert "    beside: classifier (logreg, fit)" in table


def test_an_error_in_the_fit_reaches_the_caller_and_keeps_the_outputs(color_run, sample_root, monkeypatch):
    import bovw.model

    out, _ = color_run
    before = (out / "run.json").read_bytes()

    def broken(*a, **k):
        raise RuntimeError("classifier exploded")

    monkeypatch.setattr(bovw.model, "make_classifier", broken)
    with pytest.raises(RuntimeError, match="classifier exploded"):
        run(RunConfig(root=str(sample_root), out=str(out), recipe="color", seed=5, progress=False))
    assert (out / "run.json").read_bytes() == before


@pytest.mark.spark
def test_spark_engine_encodes_rows_in_the_order_asked(spark, sample_root):
    from bovw.spark import SparkEngine

    config = RunConfig(root=str(sample_root), recipe="color", seed=0, progress=False)
    channels = build_channels(config)
    local = LocalEngine(progress=False)
    listing = local.list_images(str(sample_root), test_size=0.25, seed=0)
    rows = np.array([41, 3, 518, 7, 260, 8])  # not sorted
    got = SparkEngine(spark, progress=False).encode(listing, channels, rows=rows)
    want = local.encode(listing, channels, rows=rows)
    np.testing.assert_array_equal(got.features[0], want.features[0])
    assert got.sha256 == want.sha256 and got.errors == want.errors
    whole = local.encode(listing, channels)
    np.testing.assert_array_equal(got.features[0], whole.features[0][rows])

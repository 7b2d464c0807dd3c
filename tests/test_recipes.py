"""The main job's recipes (bovw.recipes): the default CNN + colour recipe on
the committed Fruits-360 sample, Fisher vectors on PHOW, the bow recipe's
selection from the command line, per-channel normalisation, and both engines
giving the same model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import bovw
from bovw.cli import main
from bovw.job import RunConfig, build_channels, run
from bovw.model import Channel, EncoderEncoding, GlobalDescriptor, load_model
from bovw.recipes import DEFAULT_RECIPE, RECIPES, cnn_input_size, get_recipe

CLASSES = ["Banana", "Kiwi", "Lemon"]


@pytest.fixture(scope="module")
def small_root(tmp_path_factory, sample_root) -> Path:
    """Training/Test layout: 3 classes, 10 training and 5 test images each."""
    root = tmp_path_factory.mktemp("small") / "images"
    for split, n in (("Training", 10), ("Test", 5)):
        for cls in CLASSES:
            (root / split / cls).mkdir(parents=True)
            for f in sorted((sample_root / split / cls).glob("*.jpg"))[:n]:
                shutil.copy(f, root / split / cls / f.name)
    return root


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("default") / "out"
    result = run(RunConfig(out=str(out), progress=False))
    return out, result


def test_default_recipe_is_cnn_and_colour_and_recognises_the_sample(default_run):
    out, result = default_run
    info = json.loads((out / "run.json").read_text())
    assert info["recipe"]["name"] == DEFAULT_RECIPE == "cnn+color"
    cnn, color = info["recipe"]["channels"]
    assert (cnn["method"], color["method"]) == ("cnn", "color")
    # the sample's images are 100 x 100: the CNN runs at 96, their size
    # rounded down to the network's stride
    assert cnn["params"]["input_size"] == 96
    assert color["params"]["bins"] == [18, 4, 4] and color["params"]["mask"] == "white"
    assert info["recipe"]["pca"] is None and info["pca"] is None
    assert info["recipe"]["classifier"] == {"name": "logreg", "C": 100.0, "standardize": False}
    # ten fruit classes of 15 test images each: the recipe gets them all right
    assert info["counts"]["test"] == 150 and info["counts"]["errors"] == 0
    assert result.accuracy >= 0.98
    t = pq.read_table(out / "features.parquet")
    H = np.array(t.column("features").to_pylist(), dtype=np.float64)
    assert H.shape == (550, 1280 + 288)
    # each channel is L2-normalised (weight 1) before the concatenation
    np.testing.assert_allclose(np.linalg.norm(H[:, :1280], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(H[:, 1280:], axis=1), 1.0, rtol=1e-5)


def test_default_model_reloads_and_predicts_from_bytes_and_arrays(default_run):
    out, _ = default_run
    model = load_model(out)
    t = pq.read_table(out / "features.parquet")
    paths = t.column("path").to_pylist()[::37]
    want = np.array(t.column("prediction").to_pylist()[::37])
    blobs = [Path(p).read_bytes() for p in paths]
    np.testing.assert_array_equal(model.predict(blobs), want)
    np.testing.assert_array_equal(model.predict([bovw.decode_rgb(b) for b in blobs]), want)
    H = np.array(t.column("features").to_pylist(), dtype=np.float32)[::37]
    np.testing.assert_allclose(model.encode(blobs), H, rtol=1e-5, atol=1e-6)


def test_channel_normalises_then_weights():
    rng = np.random.default_rng(0)
    X = rng.random((3, 5)).astype(np.float32)
    X[1] = 0.0
    offsets = np.arange(4)
    ch = Channel(bovw.ColorHistogram(), GlobalDescriptor(5), "l2", 0.5)
    V = ch.encode(X, offsets)
    want = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12) * 0.5
    np.testing.assert_allclose(V, want, rtol=1e-6)
    assert not V[1].any()  # an image without a vector stays zeros
    raw = Channel(bovw.ColorHistogram(), GlobalDescriptor(5)).encode(X, offsets)
    np.testing.assert_array_equal(raw, X)


def test_fisher_encoding_with_descriptor_pca_is_fisher_of_the_projection():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(3000, 24)).astype(np.float32) * np.linspace(3, 0.1, 24, dtype=np.float32)
    enc = EncoderEncoding(bovw.FisherVector(n_components=4, random_state=0), descriptor_pca=6).fit(X)
    assert enc.pca_.n_components_ == 6 and enc.n_features_out_ == 2 * 4 * 6
    offsets = np.array([0, 1000, 1000, 3000])
    V = enc.encode(X, offsets)
    P = np.asarray(enc.pca_.transform(X), np.float32)
    ref = bovw.FisherVector(gmm=(enc.encoder.weights_, enc.encoder.means_, enc.encoder.covariances_)).fit()
    np.testing.assert_allclose(V, ref.transform(P, offsets), rtol=1e-6, atol=1e-7)
    assert not V[1].any()
    s = enc.summary()
    assert s["encoding"] == "FisherVector" and s["descriptor_pca"] == 6 and s["width"] == 48


def test_encoding_in_groups_of_images_is_the_same(monkeypatch):
    """EncoderEncoding encodes a batch in groups of whole images (bounded
    memory for dense descriptors): the vectors do not depend on the groups,
    keypoints and image sizes included (a spatial pyramid)."""
    import bovw.model

    rng = np.random.default_rng(2)
    X = rng.normal(size=(3000, 24)).astype(np.float32)
    kps = np.zeros((3000, 4), np.float32)
    kps[:, :2] = rng.uniform(0, 100, size=(3000, 2))
    sizes = np.array([[100, 100], [100, 100], [120, 100], [100, 80]])
    offsets = np.array([0, 1000, 1000, 2200, 3000])
    enc = EncoderEncoding(bovw.FisherVector(n_components=4, spatial_pyramid=(1, 2), random_state=0),
                          descriptor_pca=6).fit(X)
    whole = enc.encode(X, offsets, kps, sizes)
    monkeypatch.setattr(bovw.model, "ENCODE_ROWS", 1500)  # groups: images 0-1, 2, 3
    np.testing.assert_array_equal(enc.encode(X, offsets, kps, sizes), whole)
    monkeypatch.setattr(bovw.model, "ENCODE_ROWS", 1)  # one image per group
    np.testing.assert_array_equal(enc.encode(X, offsets, kps, sizes), whole)
    assert whole[0].any() and not whole[1].any() and whole[3].any()


def test_cnn_input_size_follows_the_images():
    assert cnn_input_size([]) == 224
    # below 224: the median shorter side rounded down to the stride, 32
    assert cnn_input_size([(100, 100)] * 5) == 96
    assert cnn_input_size([(348, 348), (640, 480), (300, 200)]) == 224
    assert cnn_input_size([(224, 300)]) == 224
    assert cnn_input_size([(223, 300)]) == 192
    assert cnn_input_size([(10, 12)]) == 32
    assert cnn_input_size([(100, 180), (150, 120), (90, 90)]) == 96  # median shorter side 100
    assert cnn_input_size([(130, 180), (150, 128), (90, 90)]) == 128


def test_every_recipe_builds_its_channels():
    for name, recipe in RECIPES.items():
        config = RunConfig(recipe=name)
        chans = build_channels(config, [(100, 100)])
        if name == "bow":
            assert [c.name for c in chans] == ["sift"]
        else:
            assert [c.name for c in chans] == [s.method for s in recipe.channels]
            assert all(c.normalize == "l2" for c in chans)
    with pytest.raises(ValueError, match="recipe: expected one of"):
        get_recipe("nope")


def test_phow_fisher_recipe_runs(small_root, tmp_path):
    res = run(RunConfig(root=str(small_root), out=str(tmp_path / "o"), recipe="phow+fisher", progress=False))
    info = res.info
    phow, color = info["recipe"]["channels"]
    assert phow["encoding"]["encoding"] == "FisherVector" and phow["encoding"]["descriptor_pca"] == 64
    assert phow["encoding"]["width"] == 5 * 2 * 32 * 64  # 1x1 + 2x2 cells, means and variances
    assert info["vocabulary"]["descriptors"] <= 100_000
    t = pq.read_table(tmp_path / "o" / "features.parquet")
    assert len(t.column("features")[0].as_py()) == 5 * 2 * 32 * 64 + 288
    assert res.accuracy >= 0.8  # three very different fruits


def test_vocabulary_options_select_the_bow_recipe(small_root, tmp_path):
    out = tmp_path / "bow"
    assert main(["run", str(small_root), "--out", str(out), "--k", "8", "--pca", "3", "--no-progress"]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["recipe"]["name"] == "bow" and info["recipe"]["channels"][0]["method"] == "sift"
    assert info["vocabulary"]["k"] == 8 and info["pca"]["n_components"] == 3


def test_options_of_another_recipe_are_refused(small_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", str(small_root), "--out", str(tmp_path / "a"), "--recipe", "cnn", "--k", "5"])
    assert e.value.code == 2 and "--k: options of the bow recipe" in capsys.readouterr().err
    code = main(["run", str(small_root), "--out", str(tmp_path / "b"), "--recipe", "color", "--method", "orb",
                 "--no-progress"])
    assert code == 2 and "only the 'bow' recipe takes a method" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


@pytest.mark.spark
def test_spark_engine_gives_the_default_recipe_s_model(small_root, tmp_path, spark):
    local = run(RunConfig(root=str(small_root), out=str(tmp_path / "local"), progress=False))
    remote = run(RunConfig(root=str(small_root), out=str(tmp_path / "spark"), engine="spark", progress=False))
    a = pq.read_table(tmp_path / "local" / "features.parquet").sort_by("path")
    b = pq.read_table(tmp_path / "spark" / "features.parquet").sort_by("path")
    assert [Path(p).name for p in a.column("path").to_pylist()] == [Path(p).name for p in b.column("path").to_pylist()]
    np.testing.assert_array_equal(np.array(a.column("features").to_pylist()), np.array(b.column("features").to_pylist()))
    assert a.column("prediction").to_pylist() == b.column("prediction").to_pylist()
    assert local.accuracy == remote.accuracy


def test_validation_split_chooses_c(small_root, sample_root, tmp_path):
    root = tmp_path / "with-val"
    shutil.copytree(small_root, root)
    for cls in CLASSES:
        (root / "val" / cls).mkdir(parents=True)
        for f in sorted((sample_root / "Training" / cls).glob("*.jpg"))[-5:]:
            shutil.copy(f, root / "val" / cls / f.name)
    res = run(RunConfig(root=str(root), out=str(tmp_path / "o"), recipe="color", progress=False))
    sel = res.info["recipe"]["model_selection"]
    assert set(sel["scores"]) == {"1.0", "10.0", "100.0", "1000.0"}
    best = max(sel["scores"].values())
    assert sel["scores"][str(sel["C"])] == best
    assert sel["C"] == min(float(c) for c, s in sel["scores"].items() if s == best)  # ties: stronger regularisation
    assert res.info["recipe"]["classifier"]["C"] == sel["C"]
    assert res.info["evaluation"]["Validation"]["n_samples"] == 15
    assert res.info["evaluation"]["Validation"]["accuracy"] == pytest.approx(best)


def test_seed_is_the_bow_recipe(small_root, tmp_path):
    assert get_recipe("seed") is get_recipe("bow")
    out = tmp_path / "seed"
    assert main(["run", str(small_root), "--out", str(out), "--recipe", "seed", "--k", "8", "--no-progress"]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["recipe"]["name"] == "bow" and info["pca"] is not None and info["vocabulary"]["k"] == 8


def _grid_histograms(sample_root, split, n):
    """Colour histograms with a 2x2 grid (1,440 values, float64) of the first
    ``n`` images of each sample class in ``split``, and their labels."""
    hist = bovw.ColorHistogram(grid=(1, 2))
    X, y = [], []
    for cls in CLASSES:
        for f in sorted((sample_root / split / cls).glob("*.jpg"))[:n]:
            X.append(hist.compute(bovw.decode_rgb(f.read_bytes())))
            y.append(cls)
    return np.array(X, dtype=np.float64), np.array(y)


def test_logistic_regression_on_row_space_is_the_same_model(sample_root):
    """More features than training images (colour histograms with a 2x2
    grid, 1,440 values, of 45 images): the job's classifier, fitted on the
    rotated row-space coordinates, gives scikit-learn's plain logistic
    regression's probabilities on held-out images."""
    from sklearn.linear_model import LogisticRegression

    from bovw.model import RowSpace, make_classifier

    X, y = _grid_histograms(sample_root, "Training", 15)
    X_test, _ = _grid_histograms(sample_root, "Test", 5)
    assert X.shape[1] > X.shape[0]
    for standardize in (False, True):
        ours = make_classifier("logreg", 0, C=10.0, standardize=standardize).set_params(logisticregression__tol=1e-10)
        ours.fit(X, y)
        assert ours.named_steps["rowspace"].pca_.n_components_ == len(X)
        ref = make_classifier("logreg", 0, C=10.0, standardize=standardize)
        ref.steps = [s for s in ref.steps if s[0] != "rowspace"]
        ref.set_params(logisticregression__tol=1e-10).fit(X, y)
        assert isinstance(ref.steps[-1][1], LogisticRegression)
        np.testing.assert_allclose(ours.predict_proba(X_test), ref.predict_proba(X_test), atol=1e-5)
    # fewer features than samples: rows pass through unchanged
    narrow = X[:, :10]
    rs = RowSpace().fit(narrow)
    assert rs.pca_ is None and rs.transform(narrow) is narrow


def test_select_c_scores_equal_full_pipeline_fits(sample_root):
    """select_c fits the C-independent steps once; its scores equal fitting
    the whole classifier for every C (standardised or not, RowSpace active:
    more features than training images)."""
    from sklearn.metrics import accuracy_score

    from bovw.job import select_c
    from bovw.model import make_classifier

    X, y = _grid_histograms(sample_root, "Training", 15)
    Xv, yv = _grid_histograms(sample_root, "Test", 5)
    for standardize in (False, True):
        params = {"C": 100.0, "standardize": standardize}
        got = select_c("logreg", 0, params, X, y, Xv, yv, grid=(0.01, 1.0, 1000.0))
        ref = {str(c): float(accuracy_score(yv, make_classifier("logreg", 0, C=c, standardize=standardize)
                                            .fit(X, y).predict(Xv)))
               for c in (0.01, 1.0, 100.0, 1000.0)}
        assert got["scores"] == ref

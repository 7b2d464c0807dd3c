"""bovw.spark.encoding on a real local Spark (local[2]) and the committed
sample: the encoder stages and the distributed GMM fit equal bovw's
in-process results on the same images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import bovw

pytestmark = pytest.mark.spark

import bovw.spark as bs  # noqa: E402


def _name(path: str) -> str:
    from urllib.parse import unquote

    return "/".join(unquote(path).split("/")[-3:])


@pytest.fixture(scope="module")
def local_batch(sample_root: Path) -> pa.RecordBatch:
    table = bovw.read_images(sample_root)
    return bovw.extract_descriptors(table, "sift")


@pytest.fixture(scope="module")
def descriptors(spark, sample_root: Path):
    images = bs.read_images(spark, sample_root, num_partitions=3)
    return bs.extract_descriptors(images, "sift").cache()


@pytest.fixture(scope="module")
def all_descriptors(local_batch) -> np.ndarray:
    col = local_batch.column("descriptors")
    return np.asarray(col.values.flatten(), np.float32).reshape(-1, 128).copy()


def _by_name(rows, col):
    return {_name(r.path): (None if r[col] is None else np.asarray(r[col], np.float32)) for r in rows}


def test_encoders_on_spark_equal_in_process(descriptors, local_batch, all_descriptors):
    vocab = bovw.KMeans(16, random_state=0, max_iter=20).fit(all_descriptors[::5]).cluster_centers_
    gmm = bovw.GaussianMixture(4, random_state=0, max_iter=10).fit(all_descriptors[::5])
    encoders = [
        bovw.VLAD(vocab, square_root=True),
        bovw.FisherVector(gmm, spatial_pyramid=(1, 2)),
        bovw.BagOfWords(vocab, spatial_pyramid=(1, 2), n_neighbors=3, sigma=60.0),
    ]
    names = [_name(p) for p in local_batch.column("path").to_pylist()]
    for enc in encoders:
        enc.fit()
        ref = dict(zip(names, enc.transform(local_batch)))
        out = bs.encode_descriptors(descriptors, enc, output_col="v").select("path", "v", "n_keypoints").collect()
        ours = _by_name(out, "v")
        assert set(ours) == set(ref) and len(ours) == 550
        for k, v in ours.items():
            np.testing.assert_array_equal(v, ref[k], err_msg=f"{type(enc).__name__} {k}")
    with pytest.raises(ValueError, match="width 64.*width 128"):
        bs.encode_descriptors(descriptors, bovw.VLAD(np.zeros((4, 64), np.float32)).fit())


def test_nested_layout_is_read_too(spark, sample_root, local_batch, all_descriptors):
    vocab = bovw.KMeans(8, random_state=0, max_iter=10).fit(all_descriptors[::7]).cluster_centers_
    enc = bovw.VLAD(vocab).fit()
    images = bs.read_images(spark, sample_root, num_partitions=2).limit(40)
    nested = bs.extract_descriptors(images, "sift", layout="nested")
    out = bs.encode_descriptors(nested, enc).select("path", "encoding").collect()
    names = [_name(p) for p in local_batch.column("path").to_pylist()]
    ref = dict(zip(names, enc.transform(local_batch)))
    for k, v in _by_name(out, "encoding").items():
        np.testing.assert_array_equal(v, ref[k])


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_distributed_gmm_equals_in_process(descriptors, all_descriptors):
    rng = np.random.default_rng(0)
    k = 4
    init = dict(
        weights_init=np.full(k, 1.0 / k),
        means_init=all_descriptors[rng.choice(len(all_descriptors), k, replace=False)].astype(np.float64),
        precisions_init=np.full((k, 128), 1.0 / 400.0),
    )
    dist = bs.fit_gmm(descriptors, k, algorithm="em", max_iter=5, tol=1e-3, **init)
    ref = bovw.GaussianMixture(k, max_iter=5, tol=1e-3, **init).fit(all_descriptors)
    assert dist.n_iter_ == ref.n_iter_ and dist.converged_ == ref.converged_
    np.testing.assert_allclose(dist.weights_, ref.weights_, rtol=1e-9)
    np.testing.assert_allclose(dist.means_, ref.means_, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(dist.covariances_, ref.covariances_, rtol=1e-9)
    assert dist.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-12)
    # the driver-sample fit is the in-process fit of the same sample
    sample = bs.sample_descriptors(descriptors, max_descriptors=5000, random_state=0)
    s = bs.fit_gmm(descriptors, k, algorithm="sample", max_sample=5000, max_iter=5, random_state=0)
    r = bovw.GaussianMixture(k, max_iter=5, random_state=0).fit(sample)
    np.testing.assert_array_equal(s.means_, r.means_)
    with pytest.raises(ValueError, match="algorithm"):
        bs.fit_gmm(descriptors, k, algorithm="lloyd")

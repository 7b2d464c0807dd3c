"""One job, two engines: ``bovw run --engine local`` and ``--engine spark`` on
the same folder give the same split, error rows, features and accuracy.

The folder is a flat ``<root>/<class>/<file>`` layout (so the seeded split is
used) of real Fruits-360 images plus bad entries of every kind the job must
report rather than drop: an empty file, a truncated JPEG, a text file named
``.jpg``, a 16-bit PNG, a 1 x 1 PNG (too small for SIFT), a broken symbolic
link, a loop of symbolic links, a link to a FIFO, a FIFO named ``.jpg``, a
name with a literal ``%20``, a name that is not UTF-8 and a link to a good
image (a row under the link's name).

Issue 17, finding 4: every listed entry with an image extension is a row of
``features.parquet`` or of ``errors.csv`` on both engines, named by its own
name (a link is not reported under its target's name), and ``run.json``
counts them all (the Spark engine used to drop 0-byte files and turn a
literal ``%20`` into a space).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import bovw
from bovw.job import RunConfig, run

pytestmark = pytest.mark.spark

#: file name -> (stage, a word of the reason)
BAD = {
    "empty.jpg": ("decode", "empty"),
    "truncated.jpg": ("decode", "truncated"),
    "text.jpg": ("decode", "not a JPEG or PNG"),
    "sixteen.png": ("decode", "8-bit"),
    "tiny.png": ("descriptors", "small"),
    "dangling.jpg": ("read", "broken symbolic link"),
    "fifo.jpg": ("read", "FIFO"),
    "loop.jpg": ("read", "Too many levels of symbolic links"),
    "link-to-fifo.jpg": ("read", "FIFO"),
}


@pytest.fixture(scope="module")
def flat_folder(tmp_path_factory, sample_root):
    root = tmp_path_factory.mktemp("flat") / "images"
    n_good = 0
    for cls in ("Banana", "Kiwi", "Lemon"):
        (root / cls).mkdir(parents=True)
        for f in sorted((sample_root / "Training" / cls).glob("*.jpg"))[:12]:
            (root / cls / f.name).write_bytes(f.read_bytes())
            n_good += 1
    jpeg = next((sample_root / "Test" / "Kiwi").glob("*.jpg")).read_bytes()
    (root / "Kiwi" / "bad%20pct.jpg").write_bytes(jpeg)  # a literal %20, not a space
    (root / "Kiwi" / os.fsdecode(b"caf\xe9.jpg")).write_bytes(jpeg)  # a file name that is not UTF-8
    n_good += 2
    bad = root / "Banana"
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (bad / "text.jpg").write_text("not an image\n")
    (bad / "sixteen.png").write_bytes(cv2.imencode(".png", np.full((64, 64), 40000, np.uint16))[1].tobytes())
    (bad / "tiny.png").write_bytes(cv2.imencode(".png", np.full((1, 1, 3), 128, np.uint8))[1].tobytes())
    os.symlink(root / "Banana" / "no-such-file.jpg", bad / "dangling.jpg")
    os.mkfifo(bad / "fifo.jpg")
    os.symlink(bad / "loop.jpg", bad / "loop.jpg")  # a link to itself
    os.symlink(bad / "fifo.jpg", bad / "link-to-fifo.jpg")
    os.symlink(root / "Kiwi" / "bad%20pct.jpg", root / "Lemon" / "link-good.jpg")  # readable: a row named by the link
    n_good += 1
    return root, n_good


def _errors(out: Path) -> list[dict[str, str]]:
    with open(out / "errors.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def both_runs(flat_folder, tmp_path_factory, spark):
    root, _ = flat_folder
    outs = {}
    for engine in ("local", "spark"):
        out = tmp_path_factory.mktemp(engine) / "out"
        cfg = RunConfig(method="sift", root=str(root), out=str(out), k=16, pca=6, max_iter=20, seed=3, progress=False,
                        engine=engine, master="local[2]")
        if engine == "spark":
            from bovw.spark import SparkEngine

            run(cfg, SparkEngine(spark, progress=False))
        else:
            run(cfg)
        outs[engine] = out
    return outs


def test_every_entry_is_a_row_or_an_error(both_runs, flat_folder):
    _, n_good = flat_folder
    for engine, out in both_runs.items():
        t = pq.read_table(out / "features.parquet")
        errors = _errors(out)
        assert t.num_rows == n_good and len(errors) == len(BAD), engine
        got = {Path(r["path"]).name: (r["stage"], r["reason"]) for r in errors}
        assert set(got) == set(BAD), (engine, got)
        for name, (stage, word) in BAD.items():
            assert got[name][0] == stage and word in got[name][1], (engine, name, got[name])
        paths = t.column("path").to_pylist()
        assert any(p.endswith("bad%20pct.jpg") for p in paths)
        assert any(p.endswith("/Lemon/link-good.jpg") for p in paths)  # the link's own name and class
        assert any(p.endswith("caf\\xe9.jpg") for p in paths)  # named as escaped text
        info = json.loads((out / "run.json").read_text())
        assert info["counts"]["images"] == n_good + len(BAD) and info["counts"]["errors"] == len(BAD)


def test_engines_give_the_same_outputs(both_runs):
    a, b = both_runs["local"], both_runs["spark"]
    assert _errors(a) == _errors(b)  # same rows, stages, reasons and splits
    ta, tb = pq.read_table(a / "features.parquet"), pq.read_table(b / "features.parquet")
    for col in ("path", "label", "split", "n_keypoints", "features", "prediction"):
        assert ta.column(col).to_pylist() == tb.column(col).to_pylist(), col
    np.testing.assert_array_equal(np.load(a / "vocabulary.npy"), np.load(b / "vocabulary.npy"))
    np.testing.assert_allclose(np.array(ta.column("pca_features").to_pylist()),
                               np.array(tb.column("pca_features").to_pylist()), rtol=1e-5, atol=1e-5)
    ja, jb = json.loads((a / "run.json").read_text()), json.loads((b / "run.json").read_text())
    assert ja["accuracy"] == jb["accuracy"] and ja["input"] == jb["input"]
    assert ja["counts"] == jb["counts"]
    # the flat layout's seeded split: about a quarter of each class in Test, on both engines
    splits = ta.column("split").to_pylist()
    assert 0.15 < splits.count("Test") / len(splits) < 0.35


def test_descriptor_sample_is_uniform_bottom_k_in_bounded_memory(fruits_root):
    """The vocabulary sample equals the brute-force one (all keys, the
    smallest ``cap``), whatever the order and grouping of the images, and
    never holds much more than twice ``cap`` descriptors."""
    from bovw.job import DescriptorSample

    paths = sorted((fruits_root / "Training").rglob("*.jpg"))[:60]
    table = pa.table({"content": [p.read_bytes() for p in paths]})
    res = bovw.SIFT().extract(table)
    X, offsets = bovw.descriptor_matrix(res.column("descriptors"))
    per = [X[offsets[i]:offsets[i + 1]] for i in range(len(paths))]
    cap = 300
    assert len(X) > 4 * cap
    # brute force: every key, the cap smallest (ties by image, position), in listing order
    ref = DescriptorSample(cap, 7, 128, np.float32)
    keys = np.concatenate([ref.keys(i, len(d)) for i, d in enumerate(per)])
    img = np.concatenate([np.full(len(d), i) for i, d in enumerate(per)])
    pos = np.concatenate([np.arange(len(d)) for d in per])
    keep = np.sort(np.lexsort((pos, img, keys))[:cap])
    expected = X[keep]
    for order in (range(len(per)), reversed(range(len(per))), np.random.default_rng(1).permutation(len(per))):
        s = DescriptorSample(cap, 7, 128, np.float32)
        for i in order:
            s.add(int(i), per[i])
            assert s._held <= 2 * cap + max(len(d) for d in per)
        np.testing.assert_array_equal(s.matrix(), expected)
        assert s.n_offered == len(X)
    # two partial samples merged (Spark's partitions) give the same sample
    a, b = DescriptorSample(cap, 7, 128, np.float32), DescriptorSample(cap, 7, 128, np.float32)
    for i, d in enumerate(per):
        (a if i % 3 else b).add(i, d)
    merged = DescriptorSample(cap, 7, 128, np.float32)
    for part in (a, b):
        merged.add_keyed(*part.parts(), offered=part.n_offered)
    np.testing.assert_array_equal(merged.matrix(), expected)
    assert merged.n_offered == len(X)
    # another seed, another sample; no cap keeps everything in listing order
    other = DescriptorSample(cap, 8, 128, np.float32)
    for i, d in enumerate(per):
        other.add(i, d)
    assert not np.array_equal(other.matrix(), expected)
    every = DescriptorSample(None, 7, 128, np.float32)
    for i, d in enumerate(per):
        every.add(i, d)
    np.testing.assert_array_equal(every.matrix(), X)


def test_local_batches_follow_descriptor_bytes(flat_folder, both_runs, tmp_path, monkeypatch):
    """Batches shrink to hold about BATCH_BYTES of descriptors (dense
    descriptors of large photos), and the outputs do not depend on them:
    with one image per batch, the flat folder's run (bad files included)
    gives the same features and errors as with the default batches."""
    from bovw import engine

    b = engine._Batches(100, 512, "", False)
    per_image = engine.BATCH_BYTES // 10  # 10 images fill a batch
    sizes = []
    for start, stop in b:
        sizes.append(stop - start)
        b.done(stop - start, per_image * (stop - start))
    assert sizes[0] == 16 and set(sizes[1:-1]) == {10} and sum(sizes) == 100
    # with read-ahead the next range is fixed (peek) before the current one
    # is done: sizes adapt one batch later, and peek is what comes next
    b = engine._Batches(100, 512, "", False)
    ranges, peeks = [], []
    for start, stop in b:
        ranges.append((start, stop))
        peeks.append(b.peek())
        assert b.peek() == peeks[-1]
        b.done(stop - start, per_image * (stop - start))
    assert peeks == ranges[1:] + [None]
    sizes = [b - a for a, b in ranges]
    assert sizes[:2] == [16, 16] and set(sizes[2:-1]) == {10} and sum(sizes) == 100

    monkeypatch.setattr(engine, "BATCH_BYTES", 1)
    root, _ = flat_folder
    out = tmp_path / "one-per-batch"
    run(RunConfig(method="sift", root=str(root), out=str(out), k=16, pca=6, max_iter=20, seed=3, progress=False))
    a = pq.read_table(out / "features.parquet")
    ref = pq.read_table(both_runs["local"] / "features.parquet")
    assert a.column("path").to_pylist() == ref.column("path").to_pylist()
    assert a.column("features").to_pylist() == ref.column("features").to_pylist()
    assert _errors(out) == _errors(both_runs["local"])

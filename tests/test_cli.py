"""The main job, ``bovw run``, end to end on real images and on bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

import bovw
from bovw.cli import main


def _read_errors(out: Path) -> dict[str, list[str]]:
    with open(out / "errors.csv") as f:
        return {Path(r["path"]).name: [r["stage"], r["reason"]] for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    code = main(["run", "--out", str(out), "--k", "50", "--seed", "0", "--no-progress"])
    assert code == 0
    return out


def test_run_on_sample_writes_every_output(sample_run):
    out = sample_run
    for name in ("features.parquet", "vocabulary.npy", "pca.npz", "model.joblib", "errors.csv",
                 "confusion_matrix.csv", "run.json"):
        assert (out / name).is_file(), name
    t = pq.read_table(out / "features.parquet")
    assert t.schema.names == ["path", "label", "split", "n_keypoints", "features", "pca_features", "prediction", "image_scale"]
    assert t.num_rows == 550
    bow = np.array(t.column("features").to_pylist(), dtype=np.float32)
    assert bow.shape == (550, 50)
    # each histogram counts every descriptor of its image exactly once
    np.testing.assert_array_equal(bow.sum(1), np.array(t.column("n_keypoints").to_pylist()))
    voc = np.load(out / "vocabulary.npy")
    assert voc.shape == (50, 128) and voc.dtype == np.float32
    info = json.loads((out / "run.json").read_text())
    assert info["counts"]["images"] == 550 and info["counts"]["errors"] == 0
    assert info["input"]["n_files"] == 550 and len(info["input"]["sha256"]) == 64
    assert {"bovw", "numpy", "pyarrow", "scikit-learn"} <= set(info["versions"])
    assert [s["stage"] for s in info["stages"]][0] == "list files"
    pca = np.load(out / "pca.npz")
    assert info["pca"]["explained_variance"] >= 0.95
    assert pca["components"].shape == (info["pca"]["n_components"], 50)
    # Ten distinct fruit classes: a SIFT bag of words is far above chance (0.10).
    assert info["accuracy"] > 0.6
    test = np.array(t.column("split").to_pylist()) == "Test"
    acc = np.mean(np.array(t.column("prediction").to_pylist())[test] == np.array(t.column("label").to_pylist())[test])
    assert acc == pytest.approx(info["accuracy"])
    cm = list(csv.reader(open(out / "confusion_matrix.csv")))
    assert sum(int(v) for r in cm[1:] for v in r[1:]) == int(test.sum())


def test_saved_model_reloads_and_predicts(sample_run, sample_root):
    from bovw.model import load_model

    model = load_model(sample_run)
    t = pq.read_table(sample_run / "features.parquet")
    paths = t.column("path").to_pylist()[:20]
    imgs = [bovw.decode_gray(Path(p).read_bytes()) for p in paths]
    np.testing.assert_array_equal(model.predict(imgs), np.array(t.column("prediction").to_pylist()[:20]))


def test_same_seed_same_results(sample_run, tmp_path):
    out = tmp_path / "again"
    assert main(["run", "--out", str(out), "--k", "50", "--seed", "0", "--no-progress", "--n-threads", "1"]) == 0
    a = pq.read_table(sample_run / "features.parquet")
    b = pq.read_table(out / "features.parquet")
    assert a.column("features").to_pylist() == b.column("features").to_pylist()
    np.testing.assert_array_equal(np.load(sample_run / "vocabulary.npy"), np.load(out / "vocabulary.npy"))


@pytest.fixture()
def bad_folder(tmp_path, sample_root):
    root = tmp_path / "imgs"
    good = []
    for cls in ("Banana", "Kiwi"):
        for split, n in (("Training", 6), ("Test", 3)):
            d = root / split / cls
            d.mkdir(parents=True)
            for f in sorted((sample_root / split / cls).glob("*.jpg"))[:n]:
                (d / f.name).write_bytes(f.read_bytes())
                good.append(f.name)
    bad = root / "Training" / "Banana"
    jpeg = next((sample_root / "Test" / "Banana").glob("*.jpg")).read_bytes()
    (bad / "zero.jpg").write_bytes(b"")
    (bad / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (bad / "text.jpg").write_text("not an image at all\n")
    (bad / "one_pixel.png").write_bytes(cv2.imencode(".png", np.full((1, 1, 3), 128, np.uint8))[1].tobytes())
    (bad / "sixteen_bit.png").write_bytes(
        cv2.imencode(".png", (np.arange(100 * 100, dtype=np.uint16).reshape(100, 100) * 6))[1].tobytes()
    )
    (root / "Test" / "Kiwi" / "uniform.png").write_bytes(
        cv2.imencode(".png", np.full((100, 100), 128, np.uint8))[1].tobytes()
    )
    return root, len(good) + 6


def test_bad_inputs_are_reported_not_lost(bad_folder, tmp_path):
    root, n_files = bad_folder
    out = tmp_path / "out"
    assert main(["run", str(root), "--out", str(out), "--k", "8", "--pca", "3", "--no-progress"]) == 0
    errors = _read_errors(out)
    expected = {  # file: (stage, a word of the reason)
        "zero.jpg": ("decode", "empty"),
        "truncated.jpg": ("decode", "truncated"),
        "text.jpg": ("decode", "not a JPEG or PNG"),
        "one_pixel.png": ("descriptors", "small"),
        "sixteen_bit.png": ("decode", "8-bit"),
    }
    assert set(errors) == set(expected), errors
    for name, (stage, word) in expected.items():
        assert errors[name][0] == stage and word in errors[name][1], (name, errors[name])
    t = pq.read_table(out / "features.parquet")
    assert t.num_rows + len(errors) == n_files
    rows = {Path(p).name: i for i, p in enumerate(t.column("path").to_pylist())}
    u = rows["uniform.png"]
    assert t.column("n_keypoints")[u].as_py() == 0
    assert not any(t.column("features")[u].as_py())
    info = json.loads((out / "run.json").read_text())
    assert info["counts"]["images"] == n_files and info["counts"]["errors"] == 5


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_bad_root_is_one_line_and_exit_2(tmp_path, make):
    root = tmp_path / "nothing"
    if make == "empty":
        root.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "bovw", "run", str(root), "--out", str(tmp_path / "o"), "--no-progress"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bovw: error:"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--pca", "1.5"])
    assert e.value.code == 2
    assert "variance fraction" in capsys.readouterr().err

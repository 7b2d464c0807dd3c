"""bovw.report: the metrics against scikit-learn on real predictions, and
report.html well-formed, self-contained and showing the numbers it claims.

Predictions come from the job itself on the shipped Fruits-360 sample
(``bovw.job.run``), and from a LogisticRegression on colour histograms of
real Fruits-360 images (all 131 classes when ``../shared`` is there).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

import bovw
from bovw.cli import main
from bovw.job import RunConfig, run
from bovw.report import (
    choose_examples,
    downscale,
    encode_png,
    evaluate,
    evaluate_splits,
    format_summary,
    thumbnail,
    write_report,
)
from conftest import pick_images

VOID = {"meta", "img", "br", "hr", "input", "link", "source", "wbr", "col", "area", "base", "embed", "param",
        "track"}


class StrictParser(HTMLParser):
    """Checks that every element is closed in order and collects what the tests read."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.texts: dict[int, list[str]] = {}  # element index -> its direct text
        self.open_idx: list[int] = []
        self.doctype = False

    def handle_decl(self, decl: str) -> None:
        self.doctype = self.doctype or decl.lower() == "doctype html"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)
            self.open_idx.append(len(self.elements) - 1)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
            return
        self.stack.pop()
        self.open_idx.pop()

    def handle_data(self, data: str) -> None:
        if self.open_idx:
            self.texts.setdefault(self.open_idx[-1], []).append(data)

    def text_of(self, i: int) -> str:
        return "".join(self.texts.get(i, []))


def parse(doc: str) -> StrictParser:
    p = StrictParser()
    p.feed(doc)
    p.close()
    assert p.doctype, "no <!DOCTYPE html>"
    assert not p.problems, p.problems[:5]
    assert p.stack == [], f"unclosed: {p.stack}"
    return p


def check_images(p: StrictParser, max_side: int) -> list[np.ndarray]:
    """Every <img> is a base64 data URI of a JPEG/PNG that decodes (bovw and OpenCV agree on its size)."""
    out = []
    for tag, a in p.elements:
        if tag != "img":
            continue
        m = re.fullmatch(r"data:(image/(?:jpeg|png));base64,([A-Za-z0-9+/=]+)", a.get("src") or "")
        assert m, (a.get("src") or "")[:80]
        data = base64.b64decode(m.group(2), validate=True)
        assert data[:3] == b"\xff\xd8\xff" if m.group(1) == "image/jpeg" else data[:8] == b"\x89PNG\r\n\x1a\n"
        rgb = bovw.decode_rgb(data)
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert bgr is not None and bgr.shape == rgb.shape
        assert max(rgb.shape[:2]) <= max_side
        assert (int(a["width"]), int(a["height"])) == (rgb.shape[1], rgb.shape[0])
        out.append(rgb)
    return out


def no_external_resources(p: StrictParser, doc: str) -> None:
    assert "<script" not in doc.lower()
    for tag, a in p.elements:
        for k in ("src", "href"):
            v = a.get(k)
            if v is not None:
                assert not re.match(r"^[a-z]+://", v) and not v.startswith("//"), (tag, k, v[:60])
        assert not (tag == "link" and a.get("rel") == "stylesheet")


def sklearn_pairs(yt, yp):
    """Confused pairs by direct counting: (true, pred) -> count, off the diagonal."""
    return Counter((t, p) for t, p in zip(yt, yp) if t != p)


def check_against_sklearn(ev, yt, yp, labels):
    assert ev["n_samples"] == len(yt)
    assert ev["accuracy"] == pytest.approx(accuracy_score(yt, yp), abs=1e-15)
    present = sorted(set(yt))
    assert ev["n_classes"] == len(present)
    assert ev["macro_f1"] == pytest.approx(f1_score(yt, yp, labels=present, average="macro", zero_division=0),
                                           abs=1e-12)
    p, r, f, s = precision_recall_fscore_support(yt, yp, labels=labels, zero_division=0)
    cm = confusion_matrix(yt, yp, labels=labels)
    assert ev["confusion"]["labels"] == list(labels)
    np.testing.assert_array_equal(np.array(ev["confusion"]["matrix"]), cm)
    for j, c in enumerate(ev["per_class"]):
        assert c["label"] == labels[j]
        assert c["support"] == s[j] and c["correct"] == cm[j, j] and c["predicted"] == cm[:, j].sum()
        assert c["precision"] == pytest.approx(p[j], abs=1e-12)
        if s[j]:
            assert c["recall"] == pytest.approx(r[j], abs=1e-12) and c["f1"] == pytest.approx(f[j], abs=1e-12)
        else:
            assert c["recall"] is None and c["f1"] is None
    counted = sklearn_pairs(yt, yp)
    support = Counter(yt)
    expected = sorted(counted.items(), key=lambda kv: (-kv[1], -kv[1] / support[kv[0][0]], kv[0][0], kv[0][1]))
    assert ev["n_confused_pairs"] == len(counted)
    assert ev["n_errors"] == sum(counted.values())
    got = [(q["true"], q["predicted"], q["count"]) for q in ev["confused_pairs"]]
    assert got == [(t, pr, n) for (t, pr), n in expected][:len(got)]
    for q in ev["confused_pairs"]:
        assert q["share"] == pytest.approx(q["count"] / support[q["true"]])


# --------------------------------------------------------------------------------------------
# the job on the shipped sample


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory, sample_root):
    out = tmp_path_factory.mktemp("report") / "out"
    result = run(RunConfig(method="sift", root=str(sample_root), out=str(out), k=50, seed=0, max_descriptors=20000,
                           progress=False))
    t = pq.read_table(out / "features.parquet").to_pydict()
    return result, out, t


def test_evaluate_matches_sklearn_on_the_job_predictions(sample_run):
    result, out, t = sample_run
    rows = [i for i, s in enumerate(t["split"]) if s == "Test"]
    yt = [t["label"][i] for i in rows]
    yp = [t["prediction"][i] for i in rows]
    labels = sorted(set(t["label"]))
    ev = evaluate(yt, yp, labels, top_pairs=None)
    check_against_sklearn(ev, yt, yp, labels)
    assert 0 < ev["n_errors"] < len(yt)  # the sample run makes some errors: the pairs are exercised
    assert ev["accuracy"] == result.accuracy
    info = json.loads((out / "run.json").read_text())
    assert list(info["evaluation"]) == ["Test"]  # the sample has no Validation split
    stored = info["evaluation"]["Test"]
    assert stored == json.loads(json.dumps(evaluate(yt, yp, labels)))
    assert info["counts"]["training_classes"] == len(labels)
    # the confusion_matrix.csv the job writes is the same matrix
    import csv

    cm_rows = list(csv.reader(open(out / "confusion_matrix.csv", encoding="utf-8")))
    assert cm_rows[0][1:] == stored["confusion"]["labels"]
    assert [[int(v) for v in r[1:]] for r in cm_rows[1:]] == stored["confusion"]["matrix"]


def test_report_html_is_well_formed_and_shows_the_evaluation(sample_run):
    result, out, t = sample_run
    doc = (out / "report.html").read_text(encoding="utf-8")
    p = parse(doc)
    no_external_resources(p, doc)
    info = json.loads((out / "run.json").read_text())
    ev = info["evaluation"]["Test"]

    def metric(name):
        hits = [i for i, (tag, a) in enumerate(p.elements) if a.get("data-metric") == name
                and a.get("data-split") == "Test"]
        assert len(hits) == 1, name
        return p.text_of(hits[0]).strip(), float(p.elements[hits[0]][1]["data-value"])

    text, value = metric("accuracy")
    assert value == ev["accuracy"] == result.accuracy
    assert text == f"{ev['accuracy'] * 100:.2f} %"
    text, value = metric("macro_f1")
    assert value == ev["macro_f1"] and text == f"{ev['macro_f1'] * 100:.2f} %"

    # per-class recall bars: every class with test images, worst first, values equal evaluate's
    bars = [(a["data-label"], float(a["data-recall"])) for _, a in p.elements if "data-recall" in a]
    per = {c["label"]: c["recall"] for c in ev["per_class"] if c["recall"] is not None}
    assert dict(bars) == per and len(bars) == len(per)
    assert [r for _, r in bars] == sorted(r for _, r in bars)

    # heat map: one cell per non-zero entry of the matrix, with its count and names
    labels, cm = ev["confusion"]["labels"], np.array(ev["confusion"]["matrix"])
    cells = {(a["data-true"], a["data-pred"]): int(a["data-count"]) for _, a in p.elements if "data-count" in a}
    assert cells == {(labels[i], labels[j]): int(cm[i, j]) for i, j in zip(*np.nonzero(cm))}

    # pairs with thumbnails: counts in order, as many misclassified images as the pair has (up to 3)
    counts = [int(a["data-pair-count"]) for _, a in p.elements if "data-pair-count" in a]
    assert counts == [q["count"] for q in ev["confused_pairs"][:8]]
    figures = [a.get("class", "") for tag, a in p.elements if tag == "figure"]
    assert figures.count("thumb bad") == sum(min(3, q["count"]) for q in ev["confused_pairs"][:8])
    assert figures.count("thumb good") == 3 * len(counts)
    imgs = check_images(p, 144)
    assert len(imgs) == len(figures) > 0

    # stage chart: every stage of run.json with its seconds; the errors link
    secs = {a["data-stage"]: float(a["data-seconds"]) for _, a in p.elements if "data-seconds" in a}
    assert secs == {s["stage"]: s["seconds"] for s in info["stages"]}
    assert any(tag == "a" and a.get("href") == "errors.csv" for tag, a in p.elements)
    assert "fruits-360-sample" in doc


def test_format_summary_lines(sample_run):
    result, out, t = sample_run
    ev = result.info["evaluation"]["Test"]
    text = format_summary(result.info["evaluation"], top=3)
    lines = text.splitlines()
    assert lines[0] == (f"Test split ({ev['n_samples']} images, {ev['n_classes']} classes): "
                        f"accuracy {ev['accuracy']:.4f}, macro-F1 {ev['macro_f1']:.4f}")
    worst = sorted((c for c in ev["per_class"] if c["recall"] is not None),
                   key=lambda c: (c["recall"], -c["support"], c["label"]))[:3]
    i = lines.index("  worst classes by recall:")
    for line, c in zip(lines[i + 1:i + 4], worst):
        assert line.split() [-2:] == [f"{c['recall']:.3f}", f"({c['correct']}/{c['support']})"]
        assert line.strip().startswith(c["label"])
    j = lines.index("  most confused pairs (true -> predicted):")
    for line, q in zip(lines[j + 1:j + 4], ev["confused_pairs"]):
        assert line.strip().startswith(f"{q['true']} -> {q['predicted']}")
        assert f" {q['count']}  ({q['share']:.1%} of {q['true']})" in line
    assert len(lines) == j + 4
    # a single evaluate() result works too, and an empty evaluation says why
    assert format_summary(ev, top=0).startswith("evaluation (")
    assert "no usable Test image" in format_summary({}, info={"counts": {"test": 0, "training_classes": 3}})


# --------------------------------------------------------------------------------------------
# a real classifier on real features, many classes


def colour_histograms(paths):
    out = []
    for p in paths:
        rgb = bovw.decode_rgb(Path(p).read_bytes())
        q = (rgb // 64).reshape(-1, 3).astype(np.int64)
        h = np.bincount(q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2], minlength=64).astype(np.float64)
        out.append(np.sqrt(h / h.sum()))
    return np.array(out)


@pytest.fixture(scope="module")
def colour_predictions(fruits_root):
    """Test predictions of a LogisticRegression on 4x4x4 RGB histograms (3 Training images per class)."""
    n_classes = len([d for d in (fruits_root / "Training").iterdir() if d.is_dir()])
    train = pick_images(fruits_root, "Training", 3 * n_classes)
    test = pick_images(fruits_root, "Test", 4 * n_classes)
    ytr = [p.parent.name for p in train]
    yte = [p.parent.name for p in test]
    clf = LogisticRegression(C=10.0, max_iter=300).fit(colour_histograms(train), ytr)
    return [str(p) for p in test], yte, [str(v) for v in clf.predict(colour_histograms(test))], sorted(set(ytr))


def test_evaluate_matches_sklearn_on_a_real_classifier(colour_predictions):
    paths, yt, yp, classes = colour_predictions
    labels = sorted(classes + ["zz class never seen"])  # a class with no image: recall undefined, precision 0
    ev = evaluate(yt, yp, labels, top_pairs=None)
    check_against_sklearn(ev, yt, yp, labels)
    assert 0 < ev["n_errors"] < len(yt)
    extra = ev["per_class"][labels.index("zz class never seen")]
    assert extra == {"label": "zz class never seen", "support": 0, "predicted": 0, "correct": 0,
                     "precision": 0.0, "recall": None, "f1": None}
    # macro-F1 is over the classes of y_true, not the union with the predictions
    yp2 = list(yp)
    yp2[0] = "zz class never seen"
    ev2 = evaluate(yt, yp2, labels)
    assert ev2["macro_f1"] == pytest.approx(f1_score(yt, yp2, labels=sorted(set(yt)), average="macro",
                                                     zero_division=0))
    assert ev2["macro_f1"] != pytest.approx(f1_score(yt, yp2, average="macro", zero_division=0))


def test_report_on_many_classes(colour_predictions, tmp_path):
    paths, yt, yp, classes = colour_predictions
    splits = ["Test"] * len(yt)
    evaluation = evaluate_splits(yt, yp, splits, classes)
    ev = evaluation["Test"]
    examples = choose_examples(paths, yt, yp, splits, ev["confused_pairs"][:8], n=2, seed=1)
    stages = [{"stage": "describe", "seconds": 3.0, "items": len(yt), "unit": "images"},
              {"stage": "classifier", "seconds": 1.0, "items": len(yt), "unit": "images"}]
    path = write_report(tmp_path, evaluation, stages=stages, info={"parameters": {"root": "colour"}},
                        examples=examples, n_pairs=8, thumb_size=48)
    doc = path.read_text(encoding="utf-8")
    p = parse(doc)
    no_external_resources(p, doc)
    imgs = check_images(p, 48)  # 100 px JPEGs shrunk to 48 px PNGs
    assert imgs and all(max(im.shape[:2]) == 48 for im in imgs)
    labels, cm = ev["confusion"]["labels"], np.array(ev["confusion"]["matrix"])
    full = [a for tag, a in p.elements if "data-count" in a]
    assert len(full) == np.count_nonzero(cm)
    # the zoomed block (shown above 12 classes) repeats the counts of the top pairs in its cells
    if len(labels) > 12:
        assert 'class="cm-block"' in doc
        for q in ev["confused_pairs"][:3]:
            assert f"{q['true']} predicted as {q['predicted']}: {q['count']} (" in doc
    shares = [a["data-seconds"] for _, a in p.elements if "data-seconds" in a]
    assert [float(s) for s in shares] == [3.0, 1.0]
    assert "75.0%" in doc and "25.0%" in doc  # stage shares of the 4 s total


# --------------------------------------------------------------------------------------------
# examples, thumbnails, PNG


def test_choose_examples_picks_the_right_images_reproducibly(colour_predictions):
    paths, yt, yp, classes = colour_predictions
    splits = ["Test"] * len(yt)
    pairs = evaluate(yt, yp)["confused_pairs"][:5]
    a = choose_examples(paths, yt, yp, splits, pairs, n=2, seed=7)
    assert a == choose_examples(paths, yt, yp, splits, pairs, n=2, seed=7)
    row = {p: i for i, p in enumerate(paths)}
    for ex, q in zip(a, pairs):
        assert (ex["true"], ex["predicted"]) == (q["true"], q["predicted"])
        assert len(ex["misclassified"]) == min(2, q["count"])
        for path in ex["misclassified"]:
            assert (yt[row[path]], yp[row[path]]) == (q["true"], q["predicted"])
        for path in ex["predicted_class"]:
            assert yt[row[path]] == q["predicted"]
        right = sum(1 for t, pr in zip(yt, yp) if t == pr == q["predicted"])
        assert sum(yp[row[path]] == q["predicted"] for path in ex["predicted_class"]) == min(2, right)
    with pytest.raises(ValueError, match="differ in length"):
        choose_examples(paths[:-1], yt, yp, splits, pairs)


def test_downscale_is_opencv_inter_area(sample_root):
    img = bovw.decode_rgb(pick_images(sample_root, "Test", 1)[0].read_bytes())
    for im, side in [(img, 96), (img, 40), (img, 33), (img[:, :70], 48), (img[..., 0].copy(), 17)]:
        got = downscale(np.ascontiguousarray(im), side)
        h, w = im.shape[:2]
        oh, ow = round(h * side / max(h, w)), round(w * side / max(h, w))
        ref = cv2.resize(np.ascontiguousarray(im), (ow, oh), interpolation=cv2.INTER_AREA)
        assert got.shape == ref.shape
        assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1
    assert downscale(img, 100) is img or np.array_equal(downscale(img, 100), img)
    with pytest.raises(ValueError, match="max_side"):
        downscale(img, 0)
    with pytest.raises(ValueError, match="image"):
        downscale(img.astype(np.float32), 10)


def test_png_round_trips_through_bovw_and_opencv(sample_root):
    paths = pick_images(sample_root, "Test", 4)
    for path in paths:
        rgb = bovw.decode_rgb(path.read_bytes())
        for im in (rgb, rgb[7:60, 3:91], rgb[:1, :1]):
            im = np.ascontiguousarray(im)
            png = encode_png(im)
            np.testing.assert_array_equal(bovw.decode_rgb(png), im)
            np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[..., ::-1], im)
        gray = bovw.decode_gray(path.read_bytes())
        np.testing.assert_array_equal(bovw.decode_gray(encode_png(gray)), gray)
        # the per-row filters pay off on photos: smaller than the unfiltered stream
        import zlib

        assert len(encode_png(rgb)) < len(zlib.compress(b"\x00" + rgb.tobytes(), 9))
    with pytest.raises(ValueError, match="image"):
        encode_png(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="image"):
        encode_png(np.zeros((0, 4), np.uint8))


def test_thumbnail_embeds_small_files_and_shrinks_large_ones(sample_root):
    data = pick_images(sample_root, "Test", 1)[0].read_bytes()
    mime, out, w, h = thumbnail(data, 96)
    assert (mime, out, w, h) == ("image/jpeg", data, 100, 100)  # 100 px JPEG: embedded as is
    mime, out, w, h = thumbnail(data, 30)
    assert mime == "image/png" and (w, h) == (30, 30)
    ref = cv2.resize(bovw.decode_rgb(data), (30, 30), interpolation=cv2.INTER_AREA)
    assert np.abs(bovw.decode_rgb(out).astype(int) - ref.astype(int)).max() <= 1
    with pytest.raises(ValueError):
        thumbnail(b"not an image")


# --------------------------------------------------------------------------------------------
# odd names, missing inputs, the CLI


def make_tree(root: Path, sample_root: Path, layout: dict[str, dict[str, int]], names: dict[str, str] | None = None):
    """``root/<split>/<class>/`` with real sample images; ``names`` maps class -> sample class to copy from."""
    names = names or {}
    for split, classes in layout.items():
        for cls, n in classes.items():
            src_split = "Test" if split == "Test" else "Training"
            src = sorted((sample_root / src_split / names.get(cls, cls)).glob("*.jpg"))
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for f in src[:n]:
                shutil.copy(f, d / f.name)
    return root


def test_escapes_script_and_odd_file_names(tmp_path, sample_root):
    bad_class = "<script>alert(1)"  # a folder name: no "/"
    root = make_tree(tmp_path / "data", sample_root,
                     {"Training": {bad_class: 8, "Kiwi & \"Lemon\"": 8, "Walnut": 8},
                      "Test": {bad_class: 4, "Kiwi & \"Lemon\"": 4, "Walnut": 4}},
                     names={bad_class: "Banana", "Kiwi & \"Lemon\"": "Kiwi"})
    odd = root / "Test" / bad_class / "<img src=x onerror=alert(2)>.jpg"
    shutil.copy(next((root / "Test" / "Walnut").glob("*.jpg")), odd)
    out = tmp_path / "out"
    res = run(RunConfig(method="sift", root=str(root), out=str(out), k=10, pca=None, seed=0, progress=False))
    doc = (out / "report.html").read_text(encoding="utf-8")
    p = parse(doc)
    no_external_resources(p, doc)
    assert "&lt;script&gt;alert(1)" in doc
    assert "Kiwi &amp; &quot;Lemon&quot;" in doc
    assert not any(tag == "img" and a.get("onerror") for tag, a in p.elements)
    check_images(p, 144)
    assert res.info["evaluation"]["Test"]["n_samples"] == 13

    # a file name that is not UTF-8 (Linux bytes), shown as \xe9; its path read from disk
    raw = os.fsencode(str(root / "Test" / "Walnut")) + b"/caf\xe9 <b>.jpg"
    shutil.copy(next((root / "Test" / "Walnut").glob("*.jpg")), raw)
    odd_path = os.fsdecode(raw)
    assert "\udce9" in odd_path
    yt = [bad_class, bad_class, "Walnut"]
    yp = ["Walnut", bad_class, "Walnut"]
    paths = [odd_path, str(odd), str(next((root / "Test" / "Walnut").glob("*_100.jpg")))]
    ev = evaluate_splits(yt, yp, ["Test"] * 3)
    ex = choose_examples(paths, yt, yp, ["Test"] * 3, ev["Test"]["confused_pairs"], n=3)
    assert ex[0]["misclassified"] == [odd_path] and ex[0]["predicted_class"] == [paths[2]]
    path = write_report(tmp_path / "r2", ev, stages=[{"stage": "<b>x</b>", "seconds": 1.0}],
                        info={"parameters": {"root": odd_path}}, examples=ex)
    doc = path.read_text(encoding="utf-8")
    p = parse(doc)
    assert "caf\\xe9 &lt;b&gt;.jpg" in doc and "<b>x</b>" not in doc
    assert len(check_images(p, 144)) == 2


def test_missing_inputs_give_a_report_that_says_so(tmp_path, sample_root):
    # no Test split: a classifier, nothing to evaluate
    root = make_tree(tmp_path / "a", sample_root, {"Training": {"Kiwi": 6, "Walnut": 6}})
    res = run(RunConfig(method="sift", root=str(root), out=str(tmp_path / "oa"), k=8, pca=None, progress=False))
    assert res.info["evaluation"] == {}
    doc = (tmp_path / "oa" / "report.html").read_text(encoding="utf-8")
    parse(doc)
    assert "No evaluation: no usable Test image" in doc
    # one class: no classifier
    root = make_tree(tmp_path / "b", sample_root, {"Training": {"Kiwi": 6}, "Test": {"Kiwi": 3}})
    res = run(RunConfig(method="sift", root=str(root), out=str(tmp_path / "ob"), k=8, pca=None, progress=False))
    assert res.info["evaluation"] == {}
    doc = (tmp_path / "ob" / "report.html").read_text(encoding="utf-8")
    parse(doc)
    assert "No evaluation: no classifier: the Training split has 1 class with a usable image" in doc
    assert "no classifier" in format_summary(res.info["evaluation"], info=res.info)
    # nothing at all
    doc = write_report(tmp_path / "oc", {}).read_text(encoding="utf-8")
    parse(doc)
    assert "No evaluation" in doc and "No stage time recorded" in doc
    empty = evaluate([], [], ["a", "b"])
    assert empty["accuracy"] is None and empty["macro_f1"] is None and empty["confused_pairs"] == []
    assert empty["confusion"]["matrix"] == [[0, 0], [0, 0]]
    doc = write_report(tmp_path / "od", {"Test": empty}).read_text(encoding="utf-8")
    parse(doc)
    assert "The Test split has no image" in doc


def test_cli_prints_the_summary_with_a_validation_split(tmp_path, sample_root, capsys):
    root = make_tree(tmp_path / "d", sample_root,
                     {"train": {"Kiwi": 8, "Lemon": 8, "Walnut": 8}, "val": {"Kiwi": 3, "Lemon": 3, "Walnut": 3},
                      "test": {"Kiwi": 4, "Lemon": 4, "Walnut": 4}})
    out = tmp_path / "out"
    assert main(["run", str(root), "--out", str(out), "--k", "10", "--pca", "none", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    info = json.loads((out / "run.json").read_text())
    assert list(info["evaluation"]) == ["Test", "Validation"]
    assert format_summary(info["evaluation"]) in printed
    for split, n in (("Test", 12), ("Validation", 9)):
        ev = info["evaluation"][split]
        assert ev["n_samples"] == n
        assert f"{split} split ({n} images, 3 classes): accuracy {ev['accuracy']:.4f}" in printed
    doc = (out / "report.html").read_text(encoding="utf-8")
    p = parse(doc)
    vals = {a["data-split"]: float(a["data-value"]) for _, a in p.elements if a.get("data-metric") == "accuracy"}
    assert vals == {s: info["evaluation"][s]["accuracy"] for s in ("Test", "Validation")}


def test_bad_input_errors_name_the_problem():
    with pytest.raises(ValueError, match="differ in length"):
        evaluate(["a", "b"], ["a"])
    with pytest.raises(ValueError, match=r"y_pred\[1\] is None"):
        evaluate(["a", "b"], ["a", None])
    with pytest.raises(ValueError, match="labels: misses 1 class"):
        evaluate(["a", "b"], ["a", "c"], ["a", "b"])
    with pytest.raises(ValueError, match="labels: each class once"):
        evaluate(["a"], ["a"], ["a", "a"])
    with pytest.raises(TypeError, match="y_true"):
        evaluate("ab", ["a", "b"])
    with pytest.raises(ValueError, match="top"):
        format_summary({}, top=-1)
    with pytest.raises(ValueError, match="evaluation"):
        write_report(Path("/nonexistent-bovw"), {"Test": {"accuracy": 1.0}})


def test_thumbnails_read_from_s3(tmp_path, sample_root, monkeypatch):
    """Listed ``s3://`` images (the Spark engine's paths) are read with the run's endpoint for the thumbnails."""
    import socket

    import moto.server as moto_server

    import bovw.spark as bs

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
        fs = bs.s3_filesystem(endpoint, allow_bucket_creation=True, access_key="testing", secret_key="testing")
        fs.create_dir("bovw-report")
        files = pick_images(sample_root, "Test", 20)[::7]  # Apple Braeburn, Lemon, Walnut... (round robin)
        uris = []
        for f in files:
            key = f"bovw-report/{f.parent.name}/{f.name}"
            with fs.open_output_stream(key) as out:
                out.write(f.read_bytes())
            uris.append(f"s3://{key}")
        yt = [f.parent.name for f in files]
        yp = [yt[1], yt[1], yt[2]]  # the first image taken for the second's class
        ev = evaluate_splits(yt, yp, ["Test"] * 3)
        examples = choose_examples(uris + ["s3://bovw-report/missing.jpg"], yt + [yt[0]], yp + [yt[1]],
                                   ["Test"] * 4, ev["Test"]["confused_pairs"], n=3)
        assert examples[0]["misclassified"] == [uris[0], "s3://bovw-report/missing.jpg"]
        doc = write_report(tmp_path, ev, examples=examples).read_text(encoding="utf-8")
    finally:
        server.stop()
    p = parse(doc)
    imgs = check_images(p, 144)
    assert len(imgs) == 2  # the misclassified image and the correct one of the predicted class
    np.testing.assert_array_equal(imgs[0], bovw.decode_rgb(files[0].read_bytes()))
    missing = [a for tag, a in p.elements if tag == "figure" and a.get("class") == "thumb missing"]
    assert len(missing) == 1 and "cannot read from S3" in missing[0]["title"]

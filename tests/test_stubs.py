"""python/bovw/_bovw.pyi against what the extension really returns.

stubtest (scripts/test.sh) checks the stub's names, parameter kinds and
defaults, and mypy trusts its types; neither runs the code. Here every
function and method of the stub is called on real data (Fruits-360 images,
their SIFT/ORB descriptors) and its result is checked against the stub's
return annotation: tuple arity, NumPy dtypes (``NDArray[_Float]``: the dtype
of ``x``), unions (one alternative must fit), Python scalar types, pyarrow
types and the ``_PcaFit`` keys. A function added to the extension needs a
call below, a class an instance and its methods' calls (the test says which).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pytest

import bovw
from bovw import _bovw
from conftest import pick_images

STUB = Path(bovw.__file__).with_name("_bovw.pyi")


def _stub() -> tuple[dict[str, ast.expr], dict[str, dict[str, ast.expr]], dict[str, ast.expr]]:
    """(function -> return annotation, class -> {member -> annotation}, TypedDict fields)."""
    tree = ast.parse(STUB.read_text())
    funcs: dict[str, ast.expr] = {}
    classes: dict[str, dict[str, ast.expr]] = {}
    typed_dict: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            assert node.returns is not None, node.name
            funcs[node.name] = node.returns
        elif isinstance(node, ast.ClassDef) and node.name == "_PcaFit":
            typed_dict = {n.target.id: n.annotation for n in node.body if isinstance(n, ast.AnnAssign)}
        elif isinstance(node, ast.ClassDef):
            members = {}
            for m in node.body:
                if isinstance(m, ast.FunctionDef) and m.name != "__new__":
                    assert m.returns is not None, f"{node.name}.{m.name}"
                    members[m.name] = m.returns
            classes[node.name] = members
    return funcs, classes, typed_dict


FUNCS, CLASSES, PCA_FIT = _stub()


def _conforms(value: Any, ann: ast.expr, float_dtype: np.dtype | None, path: str = "result") -> None:
    """Assert that ``value`` is of the annotated type."""
    text = ast.unparse(ann)
    if isinstance(ann, ast.BinOp) and isinstance(ann.op, ast.BitOr):
        errors = []
        for alt in (ann.left, ann.right):
            try:
                _conforms(value, alt, float_dtype, path)
                return
            except AssertionError as e:
                errors.append(str(e))
        raise AssertionError(f"{path}: fits no alternative of {text} ({'; '.join(errors)})")
    if isinstance(ann, ast.Subscript):
        head = ast.unparse(ann.value)
        args = ann.slice.elts if isinstance(ann.slice, ast.Tuple) else [ann.slice]
        if head == "NDArray":
            assert isinstance(value, np.ndarray), f"{path}: {type(value).__name__}, stub says {text}"
            want = ast.unparse(args[0])
            if want == "_Float":
                assert value.dtype in (np.float32, np.float64) and value.dtype == float_dtype, (
                    f"{path}: dtype {value.dtype}, stub says {text} with X of dtype {float_dtype}"
                )
            elif want.startswith("np."):
                assert value.dtype == np.dtype(want.removeprefix("np.")), f"{path}: dtype {value.dtype}, stub says {text}"
            else:
                raise AssertionError(f"{path}: the test does not know {text} (give the dtype)")
            return
        if head == "tuple":
            assert isinstance(value, tuple) and len(value) == len(args), f"{path}: {value!r:.80}, stub says {text}"
            for i, (v, a) in enumerate(zip(value, args)):
                _conforms(v, a, float_dtype, f"{path}[{i}]")
            return
        if head == "list":
            assert isinstance(value, list), f"{path}: {type(value).__name__}, stub says {text}"
            for i, v in enumerate(value):
                _conforms(v, args[0], float_dtype, f"{path}[{i}]")
            return
        if head == "Optional":
            if value is not None:
                _conforms(value, args[0], float_dtype, path)
            return
        raise AssertionError(f"{path}: the test does not know {text}")
    scalars: dict[str, Callable[[Any], bool]] = {
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, float),
        "str": lambda v: isinstance(v, str),
        "bool": lambda v: isinstance(v, bool),
        "bytes": lambda v: isinstance(v, bytes),
        "pa.RecordBatch": lambda v: isinstance(v, pa.RecordBatch),
        "pa.Array": lambda v: isinstance(v, pa.Array),
    }
    if text in scalars:
        assert scalars[text](value), f"{path}: {type(value).__name__} {value!r:.60}, stub says {text}"
        return
    if text == "_PcaFit":
        assert isinstance(value, dict) and set(value) == set(PCA_FIT), f"{path}: keys {sorted(value)}"
        for k, a in PCA_FIT.items():
            _conforms(value[k], a, np.dtype(np.float64), f"{path}[{k!r}]")
        return
    raise AssertionError(f"{path}: the test does not know {text}")


@pytest.fixture(scope="module")
def data(fruits_root):
    """Real inputs: encoded images, gray and RGB images, SIFT/ORB descriptors
    with their keypoints and image offsets, a vocabulary."""
    files = pick_images(fruits_root, "Training", 12)
    content = pa.array([f.read_bytes() for f in files], type=pa.binary())
    grays = [_bovw.decode_gray_image(f.read_bytes()) for f in files]
    rgb = _bovw.decode_rgb_image(files[0].read_bytes())
    sift = _bovw.Sift()
    per_image = [sift.detect_and_compute(g) for g in grays]
    desc = np.concatenate([dsc for _, dsc in per_image])
    assert len(desc) > 200
    kp_xy = np.ascontiguousarray(np.concatenate([kp[:, :2] for kp, _ in per_image]), dtype=np.float32)
    image_offsets = np.concatenate([[0], np.cumsum([len(dsc) for _, dsc in per_image])]).astype(np.int64)
    sizes = np.array([(g.shape[1], g.shape[0]) for g in grays], dtype=np.int64)  # (width, height)
    orb = _bovw.Orb(n_features=100, edge_threshold=15, patch_size=15)
    bits = np.concatenate([orb.detect_and_compute(g)[1] for g in grays])
    assert len(bits) > 50
    batch = sift.extract(content)
    col = batch.column("descriptors")  # list<fixed_size_list<float32, 128>>
    kp_col = batch.column("keypoints")  # list<fixed_size_list<float32, 4>> (x, y, size, angle)
    mask = np.zeros(rgb.shape[:2], dtype=np.uint8)
    mask[20:80, 20:80] = 1
    return dict(files=files, content=content, gray=grays[0], rgb=rgb, mask=mask, sift=desc, kp_xy=kp_xy,
                image_offsets=image_offsets, sizes=sizes, orb=bits, col=col, kp_col=kp_col, vocab=desc[:20].copy())


def _calls(d: dict[str, Any], dtype: type) -> dict[str, Callable[[], Any]]:
    """One call per function of the extension, on X of ``dtype``.

    The encoders take float32 descriptors only: with float32 they get NumPy
    arrays (descriptors, keypoints, offsets), with float64 the Arrow columns
    of ``Sift.extract`` (the other type the stub allows).
    """
    X = np.ascontiguousarray(d["sift"][:300], dtype=dtype)
    C = np.ascontiguousarray(X[:8])
    w = np.ones(len(X))
    words = _bovw.kmeans_predict(d["sift"], d["vocab"]).astype(np.int64)
    offsets = np.array([0, 100, len(words)], dtype=np.int64)
    counts = _bovw.bow_counts(words, offsets, 20)
    count, s, g = _bovw.pca_partial_sums(X)
    fit = _bovw.pca_fit(X, "count", 3.0)
    # a 3-component diagonal mixture from K-Means labels (GaussianMixture's "kmeans" init)
    labels = _bovw.kmeans_predict(X, np.ascontiguousarray(C[:3])).astype(np.int64)
    nk, s1, s2, _, n = _bovw.gmm_stats_from_labels(X, labels, 3)
    gmm = _bovw.gmm_params_from_stats(nk, s1, s2, n, reg_covar=1e-3, weights="samples")
    resp = _bovw.gmm_log_prob(X, *gmm, resp=True)[1]
    # encoder inputs: per-image SIFT (NumPy) or the Arrow columns; a 1x1 + 2x2 pyramid
    vocab = d["vocab"]
    if dtype == np.float32:
        desc, kp, enc_offsets = d["sift"], d["kp_xy"], d["image_offsets"]
        img_words, word_offsets = words, d["image_offsets"]  # words: of d["sift"] on the vocabulary
    else:
        desc, kp, enc_offsets = d["col"], d["kp_col"], None
        arrow_labels, _, word_offsets = _bovw.kmeans_assign_arrow(d["col"], vocab)
        img_words = arrow_labels.astype(np.int64)
    pyramid: dict[str, Any] = dict(keypoints=kp, image_sizes=d["sizes"], spatial_pyramid=[1, 2])
    return {
        "bow_pyramid_counts": lambda: _bovw.bow_pyramid_counts(
            img_words, word_offsets, 20, kp, d["sizes"], [1, 2], pyramid_weights="lazebnik"),
        "chi2_map": lambda: _bovw.chi2_map(X, sample_steps=2),
        "encode_bow": lambda: _bovw.encode_bow(desc, vocab, enc_offsets, n_neighbors=3, sigma=100.0, **pyramid),
        "encode_fisher": lambda: _bovw.encode_fisher(desc, *gmm, enc_offsets, **pyramid),
        "encode_vlad": lambda: _bovw.encode_vlad(desc, vocab, enc_offsets, square_root=True),
        "gmm_fit_em": lambda: _bovw.gmm_fit_em(X, *gmm, max_iter=3),
        "gmm_log_prob": lambda: _bovw.gmm_log_prob(X, *gmm, resp=True),
        "gmm_params_from_stats": lambda: gmm,
        "gmm_predict": lambda: _bovw.gmm_predict(X, *gmm),
        "gmm_stats_from_labels": lambda: _bovw.gmm_stats_from_labels(X, labels, 3),
        "gmm_stats_from_resp": lambda: _bovw.gmm_stats_from_resp(X, resp),
        "gmm_suff_stats": lambda: _bovw.gmm_suff_stats(X, *gmm),
        "gmm_suff_stats_arrow": lambda: _bovw.gmm_suff_stats_arrow(d["col"], *gmm),
        "power_normalize": lambda: _bovw.power_normalize(X, alpha=0.5, pre_norm="l1", norm="l2"),
        "rgb_to_hsv_image": lambda: _bovw.rgb_to_hsv_image(d["rgb"]),
        "soft_assign": lambda: _bovw.soft_assign(np.ascontiguousarray(X, dtype=np.float32), vocab, n_neighbors=3, sigma=100.0),
        "bow_arrow_counts": lambda: _bovw.bow_arrow_counts(d["col"], d["vocab"]),
        "bow_counts": lambda: counts,
        "bow_counts_by_image": lambda: _bovw.bow_counts_by_image(words, (np.arange(len(words)) % 3).astype(np.int64), 3, 20),
        "bow_descriptor_counts": lambda: _bovw.bow_descriptor_counts(d["sift"], offsets, d["vocab"]),
        "bow_idf": lambda: _bovw.bow_idf(counts),
        "bow_weight": lambda: _bovw.bow_weight(counts, _bovw.bow_idf(counts), "l2"),
        "extract_many": lambda: _bovw.extract_many(d["content"], [_bovw.Sift(), _bovw.ColorHistogram()]),
        "decode_gray_batch": lambda: _bovw.decode_gray_batch(pa.array([d["files"][0].read_bytes(), b"not an image"])),
        "decode_gray_image": lambda: _bovw.decode_gray_image(d["files"][0].read_bytes()),
        "decode_rgb_image": lambda: _bovw.decode_rgb_image(d["files"][0].read_bytes()),
        "kmajority_fit": lambda: _bovw.kmajority_fit(d["orb"], 4, max_iter=5),
        "kmajority_predict": lambda: _bovw.kmajority_predict(d["orb"], d["orb"][:4].copy()),
        "kmeans_assign": lambda: _bovw.kmeans_assign(X, C),
        "kmeans_assign_arrow": lambda: _bovw.kmeans_assign_arrow(d["col"], d["vocab"]),
        "kmeans_distances": lambda: _bovw.kmeans_distances(X, C),
        "kmeans_fit_single": lambda: _bovw.kmeans_fit_single(X, C.copy(), w, max_iter=5, algorithm="elkan"),
        "kmeans_parallel_init": lambda: _bovw.kmeans_parallel_init(X, 8, seed=1),
        "kmeans_parallel_round": lambda: _bovw.kmeans_parallel_round(X, C, 4.0, 1.0e6, seed=1),
        "kmeans_partial_sums": lambda: _bovw.kmeans_partial_sums(X, C),
        "kmeans_partial_sums_arrow": lambda: _bovw.kmeans_partial_sums_arrow(d["col"], d["vocab"]),
        "kmeans_plusplus_init": lambda: _bovw.kmeans_plusplus_init(X, 8, w, seed=1),
        "kmeans_predict": lambda: _bovw.kmeans_predict(X, C),
        "kmeans_tolerance": lambda: _bovw.kmeans_tolerance(X, 1e-4),
        "pca_fit": lambda: fit,
        "pca_fit_partial_sums": lambda: _bovw.pca_fit_partial_sums(count, s, g, "count", 3.0),
        "pca_partial_sums": lambda: (count, s, g),
        "pca_transform": lambda: _bovw.pca_transform(X, fit["components"], fit["mean"]),
    }


def _extractor_calls(d: dict[str, Any], obj: Any, image: np.ndarray) -> dict[str, Callable[[], Any]]:
    """The members every extractor class has (``extractor_methods!``)."""
    return {
        "descriptor_dtype": lambda: obj.descriptor_dtype,
        "descriptor_width": lambda: obj.descriptor_width,
        "kind": lambda: obj.kind,
        "needs_color": lambda: obj.needs_color,
        "extract": lambda: obj.extract(d["content"]),
        "extract_image": lambda: obj.extract_image(image),
    }


def _feature2d_calls(d: dict[str, Any], obj: Any) -> dict[str, Callable[[], Any]]:
    """OpenCV's Feature2D methods (SIFT, ORB) on a gray image."""
    kps = obj.detect(d["gray"])
    return {
        **_extractor_calls(d, obj, d["gray"]),
        "detect": lambda: kps,
        "detect_and_compute": lambda: obj.detect_and_compute(d["gray"]),
        "compute": lambda: obj.compute(d["gray"], kps),
    }


def _dense_calls(d: dict[str, Any], obj: Any) -> dict[str, Callable[[], Any]]:
    """Dense SIFT and PHOW on an RGB image."""
    return {**_extractor_calls(d, obj, d["rgb"]), "compute": lambda: obj.compute(d["rgb"])}


def _color_calls(d: dict[str, Any], obj: Any) -> dict[str, Callable[[], Any]]:
    return {**_extractor_calls(d, obj, d["rgb"]), "compute": lambda: obj.compute(d["rgb"], d["mask"])}


def _cnn_calls(d: dict[str, Any], obj: Any) -> dict[str, Callable[[], Any]]:
    return {
        **_extractor_calls(d, obj, d["rgb"]),
        "forward": lambda: obj.forward([d["rgb"], d["gray"]], logits=True),
        "preprocess": lambda: obj.preprocess(d["rgb"]),
        "input_size": lambda: obj.input_size,
        "n_features": lambda: obj.n_features,
        "n_layers": lambda: obj.n_layers,
        "n_logits": lambda: obj.n_logits,
    }


def _cnn() -> Any:
    """EfficientNet-Lite0 as bovw.CNNEmbedding builds it, on a small 64x64 input."""
    return bovw.CNNEmbedding(input_size=64)._rust


# Per class: its instances (each descriptor dtype it can give) and the calls of its members.
INSTANCES: dict[str, tuple[list[Callable[[], Any]], Callable[[dict[str, Any], Any], dict[str, Callable[[], Any]]]]] = {
    "Sift": ([lambda: _bovw.Sift()], _feature2d_calls),
    "Orb": ([lambda: _bovw.Orb(n_features=100, edge_threshold=15, patch_size=15)], _feature2d_calls),
    "DenseSift": ([lambda: _bovw.DenseSift(step=4, size=4), lambda: _bovw.DenseSift(step=4, size=4, float_descriptors=True)],
                  _dense_calls),
    "Phow": ([lambda: _bovw.Phow(step=4), lambda: _bovw.Phow(step=4, color="hsv", float_descriptors=True)], _dense_calls),
    "ColorHistogram": ([lambda: _bovw.ColorHistogram()], _color_calls),
    "CnnEmbedding": ([_cnn], _cnn_calls),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_functions_return_what_the_stub_says(data, dtype):
    calls = _calls(data, dtype)
    missing = sorted(set(FUNCS) - set(calls))
    assert not missing, f"add a call for {missing} to tests/test_stubs.py"
    for name, ann in FUNCS.items():
        _conforms(calls[name](), ann, np.dtype(dtype), name)


def test_classes_return_what_the_stub_says(data):
    missing = sorted(set(CLASSES) - set(INSTANCES))
    assert not missing, f"add an instance of {missing} to tests/test_stubs.py"
    for cls, members in CLASSES.items():
        makers, methods = INSTANCES[cls]
        for i, make in enumerate(makers):
            obj = make()
            assert type(obj).__name__ == cls, f"INSTANCES[{cls!r}] builds a {type(obj).__name__}"
            calls = methods(data, obj)
            absent = sorted(set(members) - set(calls))
            assert not absent, f"add a call for {cls}.{absent} to tests/test_stubs.py"
            for name, ann in members.items():
                _conforms(calls[name](), ann, None, f"{cls}[{i}].{name}")


def test_conformance_check_catches_a_wrong_annotation(data):
    """The checker itself: a wrong dtype, arity or scalar type fails."""
    ann = ast.parse("tuple[NDArray[np.int32], NDArray[np.float64]]", mode="eval").body
    X = np.ascontiguousarray(data["sift"][:50])
    _conforms(_bovw.kmeans_assign(X, X[:3].copy()), ann, np.dtype(np.float32))
    for wrong in ("tuple[NDArray[np.int64], NDArray[np.float64]]", "tuple[NDArray[np.int32]]", "NDArray[np.int32]"):
        with pytest.raises(AssertionError):
            _conforms(_bovw.kmeans_assign(X, X[:3].copy()), ast.parse(wrong, mode="eval").body, np.dtype(np.float32))
    union = ast.parse("NDArray[np.uint8] | NDArray[np.float32]", mode="eval").body
    _conforms(X, union, None)
    with pytest.raises(AssertionError, match="fits no alternative"):
        _conforms(X.astype(np.float64), union, None)
    with pytest.raises(AssertionError, match="dtype float32"):
        _conforms(_bovw.kmeans_distances(X, X[:3].copy()), ast.parse("NDArray[_Float]", mode="eval").body, np.dtype(np.float64))

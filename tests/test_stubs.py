"""python/bovw/_bovw.pyi against what the extension really returns.

stubtest (scripts/test.sh) checks the stub's names, parameter kinds and
defaults, and mypy trusts its types; neither runs the code. Here every
function and method of the stub is called on real data (Fruits-360 images,
their SIFT/ORB descriptors) and its result is checked against the stub's
return annotation: tuple arity, NumPy dtypes (``NDArray[_Float]``: the dtype
of ``x``), Python scalar types, pyarrow types and the ``_PcaFit`` keys.
A function added to the extension needs a call below (the test says which).
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
            else:
                assert value.dtype == np.dtype(want.removeprefix("np.")), f"{path}: dtype {value.dtype}, stub says {text}"
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
    """Real inputs: encoded images, gray images, SIFT/ORB descriptors, a vocabulary."""
    files = pick_images(fruits_root, "Training", 12)
    content = pa.array([f.read_bytes() for f in files], type=pa.binary())
    grays = [_bovw.decode_gray_image(f.read_bytes()) for f in files]
    sift = _bovw.Sift()
    desc = np.concatenate([sift.detect_and_compute(g)[1] for g in grays])
    assert len(desc) > 200
    orb = _bovw.Orb(n_features=100, edge_threshold=15, patch_size=15)
    bits = np.concatenate([orb.detect_and_compute(g)[1] for g in grays])
    assert len(bits) > 50
    col = sift.extract(content).column("descriptors")  # list<fixed_size_list<float32, 128>>
    return dict(files=files, content=content, gray=grays[0], sift=desc, orb=bits, col=col, vocab=desc[:20].copy())


def _calls(d: dict[str, Any], dtype: type) -> dict[str, Callable[[], Any]]:
    """One call per function of the extension, on X of ``dtype``."""
    X = np.ascontiguousarray(d["sift"][:300], dtype=dtype)
    C = np.ascontiguousarray(X[:8])
    w = np.ones(len(X))
    words = _bovw.kmeans_predict(d["sift"], d["vocab"]).astype(np.int64)
    offsets = np.array([0, 100, len(words)], dtype=np.int64)
    counts = _bovw.bow_counts(words, offsets, 20)
    count, s, g = _bovw.pca_partial_sums(X)
    fit = _bovw.pca_fit(X, "count", 3.0)
    return {
        "bow_arrow_counts": lambda: _bovw.bow_arrow_counts(d["col"], d["vocab"]),
        "bow_counts": lambda: counts,
        "bow_counts_by_image": lambda: _bovw.bow_counts_by_image(words, (np.arange(len(words)) % 3).astype(np.int64), 3, 20),
        "bow_descriptor_counts": lambda: _bovw.bow_descriptor_counts(d["sift"], offsets, d["vocab"]),
        "bow_idf": lambda: _bovw.bow_idf(counts),
        "bow_weight": lambda: _bovw.bow_weight(counts, _bovw.bow_idf(counts), "l2"),
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


def _methods(d: dict[str, Any], obj: Any) -> dict[str, Callable[[], Any]]:
    """One call per method of an extractor class, on a real image."""
    kps = obj.detect(d["gray"])
    return {
        "descriptor_dtype": lambda: obj.descriptor_dtype,
        "descriptor_width": lambda: obj.descriptor_width,
        "kind": lambda: obj.kind,
        "needs_color": lambda: obj.needs_color,
        "extract": lambda: obj.extract(d["content"]),
        "extract_image": lambda: obj.extract_image(d["gray"]),
        "detect": lambda: kps,
        "detect_and_compute": lambda: obj.detect_and_compute(d["gray"]),
        "compute": lambda: obj.compute(d["gray"], kps),
    }


INSTANCES: dict[str, Callable[[], Any]] = {
    "Sift": lambda: _bovw.Sift(),
    "Orb": lambda: _bovw.Orb(n_features=100, edge_threshold=15, patch_size=15),
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
        obj = INSTANCES[cls]()
        calls = _methods(data, obj)
        absent = sorted(set(members) - set(calls))
        assert not absent, f"add a call for {cls}.{absent} to tests/test_stubs.py"
        for name, ann in members.items():
            _conforms(calls[name](), ann, None, f"{cls}.{name}")


def test_conformance_check_catches_a_wrong_annotation(data):
    """The checker itself: a wrong dtype, arity or scalar type fails."""
    ann = ast.parse("tuple[NDArray[np.int32], NDArray[np.float64]]", mode="eval").body
    X = np.ascontiguousarray(data["sift"][:50])
    _conforms(_bovw.kmeans_assign(X, X[:3].copy()), ann, np.dtype(np.float32))
    for wrong in ("tuple[NDArray[np.int64], NDArray[np.float64]]", "tuple[NDArray[np.int32]]", "NDArray[np.int32]"):
        with pytest.raises(AssertionError):
            _conforms(_bovw.kmeans_assign(X, X[:3].copy()), ast.parse(wrong, mode="eval").body, np.dtype(np.float32))
    with pytest.raises(AssertionError, match="dtype float32"):
        _conforms(_bovw.kmeans_distances(X, X[:3].copy()), ast.parse("NDArray[_Float]", mode="eval").body, np.dtype(np.float64))

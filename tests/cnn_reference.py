"""An independent, slow float64 NumPy forward pass of EfficientNet-Lite0.

The reference for ``tests/test_cnn.py``: written from the architecture's
description (Tan & Le 2019, EfficientNet-Lite's changes: no squeeze-and-
excitation, ReLU6, fixed stem and head) and lukemelas/EfficientNet-PyTorch's
parameter names, sharing no code with bovw's Rust kernels. Convolutions are
explicit sums over kernel taps (``np.einsum`` per tap) on zero-padded NHWC
arrays with TensorFlow's "SAME" padding; BatchNorm is applied as
``(x - mean) / sqrt(var + eps) * gamma + beta`` with eps 1e-3 (not folded).

Preprocessing: bilinear resize with half-pixel centres and edge clamping
(OpenCV's ``INTER_LINEAR`` formula, no antialiasing) of the shorter side to
``round(input_size / crop_fraction)``, centre crop ``(resized - input_size) // 2``,
then ``(x - 127.5) / 127.5``.
"""

from __future__ import annotations

import math

import numpy as np

#: (repeats, kernel, stride, expand ratio, in channels, out channels) of
#: EfficientNet-B0's seven stages (EfficientNet-Lite0 uses the same table).
B0_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
BN_EPS = 1e-3


def resize_bilinear(img: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """(H, W, C) -> (out_h, out_w, C) float64, half-pixel centres, clamped edges."""
    h, w = img.shape[:2]
    src = img.astype(np.float64)

    def coords(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        s = np.clip(s, 0, n_in - 1)
        i0 = np.floor(s).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, s - i0

    y0, y1, fy = coords(out_h, h)
    x0, x1, fx = coords(out_w, w)
    top = src[y0] * (1 - fy)[:, None, None] + src[y1] * fy[:, None, None]
    return top[:, x0] * (1 - fx)[None, :, None] + top[:, x1] * fx[None, :, None]


def preprocess(rgb: np.ndarray, input_size: int = 224, crop_fraction: float = 0.875) -> np.ndarray:
    """(H, W, 3) uint8 -> (input_size, input_size, 3) float64 in [-1, 1]."""
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    h, w = rgb.shape[:2]
    short = round(input_size / crop_fraction)
    if w <= h:
        nw, nh = short, max(round(h * short / w), short)
    else:
        nw, nh = max(round(w * short / h), short), short
    # resize the whole image, then crop its centre
    big = resize_bilinear(rgb, nw, nh)
    oy, ox = (nh - input_size) // 2, (nw - input_size) // 2
    crop = big[oy:oy + input_size, ox:ox + input_size]
    return (crop - 127.5) / 127.5


def same_pads(n: int, k: int, s: int) -> tuple[int, int]:
    out = math.ceil(n / s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def conv2d(x: np.ndarray, w: np.ndarray, stride: int, depthwise: bool = False) -> np.ndarray:
    """x (H, W, Cin), w torch layout (Cout, Cin/groups, k, k) -> (H', W', Cout), SAME padding."""
    h, wd, _ = x.shape
    k = w.shape[2]
    pt, pb = same_pads(h, k, stride)
    pl, pr = same_pads(wd, k, stride)
    xp = np.pad(x, ((pt, pb), (pl, pr), (0, 0)))
    oh, ow = math.ceil(h / stride), math.ceil(wd / stride)
    out = np.zeros((oh, ow, w.shape[0]))
    for ky in range(k):
        for kx in range(k):
            patch = xp[ky:ky + stride * (oh - 1) + 1:stride, kx:kx + stride * (ow - 1) + 1:stride]
            if depthwise:
                out += patch * w[:, 0, ky, kx][None, None, :]
            else:
                out += np.einsum("hwc,oc->hwo", patch, w[:, :, ky, kx])
    return out


def batchnorm(x: np.ndarray, sd: dict, name: str) -> np.ndarray:
    g, b = sd[name + ".weight"], sd[name + ".bias"]
    m, v = sd[name + ".running_mean"], sd[name + ".running_var"]
    return (x - m) / np.sqrt(v + BN_EPS) * g + b


def relu6(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 6.0)


def forward(sd: dict, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """EfficientNet-Lite0 on one preprocessed (H, W, 3) image: (features (1280,), logits (1000,))."""
    sd = {k: np.asarray(v, dtype=np.float64) for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    x = relu6(batchnorm(conv2d(x, sd["_conv_stem.weight"], 2), sd, "_bn0"))
    i = 0
    for repeats, k, stride, expand, cin, cout in B0_STAGES:
        for r in range(repeats):
            s = stride if r == 0 else 1
            c_in = cin if r == 0 else cout
            p = f"_blocks.{i}."
            inp = x
            if expand != 1:
                x = relu6(batchnorm(conv2d(x, sd[p + "_expand_conv.weight"], 1), sd, p + "_bn0"))
            assert sd[p + "_depthwise_conv.weight"].shape[2] == k
            x = relu6(batchnorm(conv2d(x, sd[p + "_depthwise_conv.weight"], s, depthwise=True), sd, p + "_bn1"))
            x = batchnorm(conv2d(x, sd[p + "_project_conv.weight"], 1), sd, p + "_bn2")
            if s == 1 and c_in == cout:
                x = x + inp
            i += 1
    x = relu6(batchnorm(conv2d(x, sd["_conv_head.weight"], 1), sd, "_bn1"))
    features = x.mean(axis=(0, 1))
    logits = sd["_fc.weight"] @ features + sd["_fc.bias"]
    return features, logits

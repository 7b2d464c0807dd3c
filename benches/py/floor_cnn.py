"""How close the CNN runs to the machine's limits (not a bench_* stage:
``benches/run.py`` does not run it).

Prints:

- EfficientNet-Lite0's multiply-adds per image at 96 and 224 px, by kind
  (1 x 1 convolutions and the fully connected layer, depthwise, stem),
  counted from the ONNX export of bovw's network
  (``bovw.cnn.efficientnet_lite0_onnx``) with ONNX shape inference;
- the float32 multiply-add rate of OpenBLAS's matrix product (numpy
  ``A @ B``, 2048 x 2048, best of 5) on 1 and 2 threads: the practical
  ceiling of a GEMM on this machine;
- bovw's images/s at 96 px (crop 0.875, the main job's case) and 224 px on
  1 and 2 threads (batches of 64 real Fruits-360 images, best of 3) and the
  multiply-add rate that makes, as a fraction of OpenBLAS's;
- the main job's CNN floor: all 30,548 Fruits-360 images at 96 px at
  OpenBLAS's 2-thread rate.

The theoretical fp32 peak (two 8-wide FMAs per cycle) is measured apart,
with a register-only loop: ``cc -O3 -mavx2 -mfma benches/fma_peak.c -o
/tmp/fma_peak && /tmp/fma_peak``.

Run: ``BOVW_FRUITS360=../shared/fruits-360 python benches/py/floor_cnn.py``.
Needs ``pip install 'bovw[cnn]' onnx``.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import best_of, image_files  # noqa: E402

FRUITS_IMAGES = 30_548


def macs(size: int) -> dict[str, int]:
    """Multiply-adds of one image at ``size`` x ``size``, by layer kind."""
    from onnx import shape_inference

    from bovw.cnn import efficientnet_lite0_onnx

    m = efficientnet_lite0_onnx()
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_value, dims[2].dim_value, dims[3].dim_value = 1, size, size
    m = shape_inference.infer_shapes(m)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*m.graph.value_info, *m.graph.output, *m.graph.input]}
    weights = {i.name: list(i.dims) for i in m.graph.initializer}
    out = {"1x1 + fc": 0, "depthwise": 0, "stem": 0}
    for node in m.graph.node:
        if node.op_type == "Conv":
            w, y = weights[node.input[1]], shapes[node.output[0]]
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            n = y[1] * y[2] * y[3] * w[1] * w[2] * w[3]
            out["depthwise" if group > 1 else "1x1 + fc" if w[2] == 1 else "stem"] += n
        elif node.op_type in ("Gemm", "MatMul"):
            w = weights[node.input[1]]
            out["1x1 + fc"] += w[0] * w[1]
    return out


def blas_gmacs(threads: int) -> float:
    """OpenBLAS's float32 matrix product, multiply-adds per second / 1e9."""
    from threadpoolctl import threadpool_limits

    n = 2048
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    with threadpool_limits(threads, user_api="blas"):
        a @ b
        best = best_of(lambda: a @ b, 5)
    return n ** 3 / best / 1e9


def cnn_images_per_s(size: int, crop: float, threads: int, images: list) -> float:
    import bovw

    cnn = bovw.CNNEmbedding(input_size=size, crop_fraction=crop)
    cnn.transform(images[:8], n_threads=threads)
    return len(images) / best_of(lambda: cnn.transform(images, n_threads=threads), 3)


def main() -> None:
    import bovw

    images = [bovw.decode_rgb(f.read_bytes()) for f in image_files("Test", limit=64)]
    counts = {s: macs(s) for s in (96, 224)}
    for s, c in counts.items():
        total = sum(c.values())
        print(f"{s} px: {total / 1e6:.1f} M multiply-adds per image ("
              + ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in c.items()) + ")")
    blas = {t: blas_gmacs(t) for t in (1, 2)}
    for t, r in blas.items():
        print(f"OpenBLAS float32 2048^3 matrix product, {t} thread{'s' if t > 1 else ''}: {r:.1f} GMAC/s")
    for s, crop in ((96, 0.875), (224, 1.0)):
        total = sum(counts[s].values())
        for t in (1, 2):
            ips = cnn_images_per_s(s, crop, t, images)
            rate = ips * total / 1e9
            print(f"bovw {s} px, {t} thread{'s' if t > 1 else ''}: {ips:.0f} images/s = {rate:.1f} GMAC/s, "
                  f"{rate / blas[t]:.0%} of OpenBLAS's rate")
    floor = FRUITS_IMAGES * sum(counts[96].values()) / (blas[2] * 1e9)
    print(f"floor of the main job's CNN (all {FRUITS_IMAGES:,} Fruits-360 images at 96 px at OpenBLAS's "
          f"2-thread rate): {floor:.1f} s")


if __name__ == "__main__":
    main()

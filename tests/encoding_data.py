"""Real SIFT descriptors of real Fruits-360 images, for the encoding tests
(``test_encoding.py``, ``test_gmm.py``, ``test_kernel_map.py``)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pyarrow as pa

import bovw
from conftest import pick_images


@functools.lru_cache(maxsize=4)
def sift_batch(root: str, n_images: int, split: str = "Test") -> pa.RecordBatch:
    """``bovw.extract_descriptors(..., "sift")`` of ``n_images`` images of
    ``root/split`` spread over the classes: the columns ``descriptors``,
    ``keypoints``, ``image_width``, ``image_height``, ...; plus ``label``."""
    paths = pick_images(Path(root), split, n_images)
    table = pa.table({"content": [p.read_bytes() for p in paths], "label": [p.parent.name for p in paths]})
    return bovw.extract_descriptors(table, "sift")


def flat(batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(descriptors (N, 128) float32, offsets (n + 1,) int64, keypoint x, y
    (N, 2) float32, image sizes (n, 2) int64) of a SIFT batch, as writable copies."""
    desc = batch.column("descriptors")
    offsets = np.asarray(desc.offsets, dtype=np.int64)
    offsets = offsets - offsets[0]
    d = np.asarray(desc.values.flatten(), dtype=np.float32).reshape(-1, 128).copy()
    kp = np.asarray(batch.column("keypoints").values.flatten(), dtype=np.float32).reshape(-1, 4)[:, :2].copy()
    sizes = np.stack(
        [np.asarray(batch.column("image_width").fill_null(0)), np.asarray(batch.column("image_height").fill_null(0))],
        axis=1,
    ).astype(np.int64)
    return d, offsets, kp, sizes


def nearest_words(x: np.ndarray, vocabulary: np.ndarray) -> np.ndarray:
    """Exact nearest word of each row by float64 direct distances (NumPy reference)."""
    x64 = x.astype(np.float64)
    v64 = vocabulary.astype(np.float64)
    out = np.empty(len(x), dtype=np.int64)
    for s in range(0, len(x), 2048):
        d2 = ((x64[s:s + 2048, None, :] - v64[None, :, :]) ** 2).sum(-1)
        out[s:s + 2048] = d2.argmin(1)
    return out

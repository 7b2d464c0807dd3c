"""Batches of images' descriptors and keypoints, in the forms the encoders accept.

An encoder (:class:`bovw.BagOfWords`, :class:`bovw.VLAD`,
:class:`bovw.FisherVector`) takes ``X`` as

- a list of per-image ``(n_i, d)`` arrays (``None`` or empty: no descriptors),
  with ``keypoints`` a list of per-image ``(n_i, >= 2)`` arrays (x, y first)
  or :data:`bovw.KEYPOINT_DTYPE` records;
- a flat ``(N, d)`` array with ``offsets`` (``n_images + 1``), and
  ``keypoints`` an ``(N, >= 2)`` array;
- an Arrow ``list<fixed_size_list<float32, d>>`` descriptors column
  (pyarrow Array or ChunkedArray; also ``list<list<float>>`` as Spark's
  ``mapInArrow`` gives ``array<array<float>>``), read without copying, with
  ``keypoints`` the Arrow ``keypoints`` column;
- a pyarrow RecordBatch or Table with the columns that
  :func:`bovw.extract_descriptors` writes (``descriptors``, ``keypoints``,
  ``image_width``, ``image_height``).

``image_sizes`` is ``(n_images, 2)``: width, height in pixels (ignored for
RecordBatch input, which carries its own). This module turns each form into
:class:`ImageBatch` objects for the Rust kernels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa

__all__ = ["ImageBatch", "iter_batches", "flat_descriptors"]


@dataclass
class ImageBatch:
    """One batch for the Rust encoders.

    Attributes
    ----------
    descriptors : ndarray of shape (N, d), float32, C-contiguous, or pyarrow.Array
        ``list<fixed_size_list<float32, d>>`` when Arrow.
    offsets : ndarray of shape (n_images + 1,), int64, or None (Arrow input)
    keypoints : ndarray of shape (N, >= 2), float32, or pyarrow.Array, or None
    image_sizes : ndarray of shape (n_images, 2), int64, or None
    n_images : int
    """

    descriptors: Any
    offsets: Any
    keypoints: Any
    image_sizes: Any
    n_images: int


def _int64_1d(a: Any, what: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{what}: expected a 1-D integer array, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what}: expected integers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _sizes(image_sizes: Any, n_images: int) -> np.ndarray | None:
    if image_sizes is None:
        return None
    s = np.asarray(image_sizes)
    if s.shape != (n_images, 2):
        raise ValueError(f"image_sizes: expected shape ({n_images}, 2) (width, height per image), got {s.shape}")
    if s.size and not np.issubdtype(s.dtype, np.number):
        raise ValueError(f"image_sizes: expected numbers, got dtype {s.dtype}")
    return np.ascontiguousarray(s, dtype=np.int64)


def _kp_xy(k: Any, what: str) -> np.ndarray:
    """An image's keypoints as (n, 2) float32 x, y."""
    if k is None:
        return np.zeros((0, 2), np.float32)
    if isinstance(k, np.ndarray) and k.dtype.names:
        return np.stack([k["x"], k["y"]], axis=1).astype(np.float32).reshape(-1, 2)
    if isinstance(k, (list, tuple)) and k and hasattr(k[0], "pt"):
        return np.array([p.pt for p in k], dtype=np.float32).reshape(-1, 2)
    arr = np.asarray(k, dtype=np.float32)
    if arr.size == 0:
        return np.zeros((0, 2), np.float32)
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise ValueError(f"{what}: expected keypoints of shape (n, >= 2) (x, y first), got {arr.shape}")
    return arr[:, :2]


def _arrow_float_rows(col: pa.Array, d: int | None, what: str) -> pa.Array:
    """``col`` as ``list<fixed_size_list<float32, w>>`` (re-wrapped without copying)."""
    t = col.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
        raise TypeError(f"{what}: expected an Arrow list<fixed_size_list<float32, w>> column, got {t}")
    inner_t = t.value_type
    if pa.types.is_fixed_size_list(inner_t) and inner_t.value_type == pa.float32() and pa.types.is_list(t):
        if d is not None and inner_t.list_size != d and len(col.values):
            raise ValueError(f"{what}: descriptors of width {inner_t.list_size}, expected width {d}")
        return col
    if pa.types.is_fixed_size_binary(inner_t):
        # uint8 descriptors (VLFeat-style dense SIFT / PHOW bytes): their values as float32
        width = inner_t.byte_width
        inner = col.values
        if d is not None and width != d and len(inner):
            raise ValueError(f"{what}: descriptors of width {width}, expected width {d}")
        buf = inner.buffers()[1]
        raw = np.frombuffer(buf, np.uint8, count=len(inner) * width, offset=inner.offset * width) if buf else \
            np.zeros(0, np.uint8)
        values = pa.array(raw.astype(np.float32))
    else:
        if not (pa.types.is_fixed_size_list(inner_t) or pa.types.is_list(inner_t) or pa.types.is_large_list(inner_t)):
            raise TypeError(f"{what}: expected a list of float lists, got {t}")
        if not pa.types.is_floating(inner_t.value_type):
            raise TypeError(f"{what}: expected float values, got {inner_t.value_type} (binary descriptors need words)")
        inner = col.values
        if pa.types.is_fixed_size_list(inner_t):
            width = inner_t.list_size
        else:
            lengths = np.asarray(inner.value_lengths().fill_null(0))
            width = int(lengths[0]) if d is None and lengths.size else (d or 0)
            if lengths.size and (lengths != width).any():
                bad = int(np.flatnonzero(lengths != width)[0])
                raise ValueError(f"{what}: row {bad} has {lengths[bad]} values, expected {width}")
        values = inner.flatten()
        if values.type != pa.float32():
            values = values.cast(pa.float32())
    fsl = pa.FixedSizeListArray.from_arrays(values, width)
    offsets = col.offsets
    if pa.types.is_large_list(t):
        offsets = offsets.cast(pa.int32())
    mask = col.is_null() if col.null_count else None
    return pa.ListArray.from_arrays(offsets, fsl, mask=mask)


def _from_record_batch(rb: pa.RecordBatch, d: int | None) -> ImageBatch:
    names = rb.schema.names
    if "descriptors" not in names:
        raise KeyError(f"no column 'descriptors' in the batch (columns: {names})")
    desc = _arrow_float_rows(rb.column("descriptors"), d, "descriptors")
    kp = _arrow_float_rows(rb.column("keypoints"), None, "keypoints") if "keypoints" in names else None
    sizes = None
    if "image_width" in names and "image_height" in names:
        w = np.asarray(rb.column("image_width").fill_null(0), dtype=np.int64)
        h = np.asarray(rb.column("image_height").fill_null(0), dtype=np.int64)
        sizes = np.ascontiguousarray(np.stack([w, h], axis=1))
    return ImageBatch(desc, None, kp, sizes, rb.num_rows)


def iter_batches(
    X: Any,
    d: int | None,
    offsets: Any = None,
    keypoints: Any = None,
    image_sizes: Any = None,
) -> Iterator[ImageBatch]:
    """The batches of ``X`` (see the module docs), in order.

    Raises
    ------
    ValueError
        Descriptors of another width than ``d`` (both widths named), ragged or
        mismatched keypoints, malformed offsets or image sizes.
    TypeError
        Non-float descriptors or an unsupported container.
    """
    if isinstance(X, pa.Table):
        for rb in X.to_batches():
            yield _from_record_batch(rb, d)
        return
    if isinstance(X, pa.RecordBatch):
        yield _from_record_batch(X, d)
        return
    if isinstance(X, pa.ChunkedArray):
        kchunks = keypoints.chunks if isinstance(keypoints, pa.ChunkedArray) else None
        start = 0
        for i, c in enumerate(X.chunks):
            k = kchunks[i] if kchunks is not None else None
            s = None if image_sizes is None else np.asarray(image_sizes)[start:start + len(c)]
            start += len(c)
            yield from iter_batches(c, d, None, k, s)
        return
    if isinstance(X, pa.Array) or (hasattr(X, "__arrow_c_array__") and not isinstance(X, np.ndarray)):
        col = X if isinstance(X, pa.Array) else pa.array(X)
        desc = _arrow_float_rows(col, d, "descriptors")
        kp = None
        if keypoints is not None:
            if isinstance(keypoints, pa.ChunkedArray):
                keypoints = keypoints.combine_chunks()
            if isinstance(keypoints, pa.Array):
                kp = _arrow_float_rows(keypoints, None, "keypoints")
            else:
                kp = np.ascontiguousarray(_kp_xy(keypoints, "keypoints"))
        yield ImageBatch(desc, None, kp, _sizes(image_sizes, len(col)), len(col))
        return
    if offsets is not None:
        flat = np.asarray(X)
        if flat.ndim != 2:
            raise ValueError(f"X: expected descriptors of shape (N, {d}), got {flat.shape}")
        if d is not None and flat.shape[1] != d and flat.shape[0] > 0:
            raise ValueError(f"X: descriptors of width {flat.shape[1]}, expected width {d} like the vocabulary/mixture")
        if flat.size and not np.issubdtype(flat.dtype, np.floating):
            raise TypeError(f"X: expected float descriptors, got dtype {flat.dtype} (binary descriptors need words)")
        flat = np.ascontiguousarray(flat, dtype=np.float32)
        o = _int64_1d(offsets, "offsets")
        if o.size == 0:
            raise ValueError("offsets: must have n_images + 1 >= 1 entries")
        kp = None if keypoints is None else np.ascontiguousarray(_kp_xy(keypoints, "keypoints"))
        if kp is not None and kp.shape[0] != flat.shape[0]:
            raise ValueError(f"keypoints: {kp.shape[0]} frames for {flat.shape[0]} descriptors")
        yield ImageBatch(flat, o, kp, _sizes(image_sizes, o.size - 1), o.size - 1)
        return
    if isinstance(X, np.ndarray) and X.dtype != object:
        raise ValueError("X: a flat (N, d) descriptor array needs offsets; pass a list of per-image arrays otherwise")
    if not isinstance(X, Sequence) and not (isinstance(X, np.ndarray) and X.dtype == object):
        raise TypeError(
            f"X: expected a list of (n_i, d) arrays, a flat array with offsets, an Arrow column or a RecordBatch, "
            f"got {type(X).__name__}"
        )
    parts: list[np.ndarray] = []
    width = d
    for i, a in enumerate(X):
        arr = None if a is None else np.asarray(a)
        if arr is None or arr.size == 0:
            parts.append(np.zeros((0, width or 0), np.float32))
            continue
        if arr.ndim != 2 or (width is not None and arr.shape[1] != width):
            raise ValueError(f"X[{i}]: descriptors of shape {arr.shape}, expected (n, {width}) like the vocabulary/mixture")
        if not np.issubdtype(arr.dtype, np.floating):
            raise TypeError(f"X[{i}]: expected float descriptors, got dtype {arr.dtype} (binary descriptors need words)")
        width = arr.shape[1]
        parts.append(arr)
    w = width or 0
    parts = [p.reshape(-1, w) if p.size == 0 else p for p in parts]
    o = np.zeros(len(parts) + 1, dtype=np.int64)
    if parts:
        np.cumsum([p.shape[0] for p in parts], out=o[1:])
    flat = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32) if parts else np.zeros((0, w), np.float32)
    kp = None
    if keypoints is not None:
        if len(keypoints) != len(parts):
            raise ValueError(f"keypoints: {len(keypoints)} entries for {len(parts)} images")
        ks = [_kp_xy(k, f"keypoints[{i}]") for i, k in enumerate(keypoints)]
        for i, (k, p) in enumerate(zip(ks, parts)):
            if k.shape[0] != p.shape[0]:
                raise ValueError(f"keypoints[{i}]: {k.shape[0]} frames for {p.shape[0]} descriptors")
        kp = np.ascontiguousarray(np.concatenate(ks), dtype=np.float32) if ks else np.zeros((0, 2), np.float32)
    yield ImageBatch(flat, o, kp, _sizes(image_sizes, len(parts)), len(parts))


def flat_descriptors(X: Any, offsets: Any = None) -> np.ndarray:
    """All descriptors of ``X`` (any form above, or a plain ``(n, d)``
    sample) as one ``(n, d)`` float array (float32 unless X is a float64
    array), for fitting a vocabulary or a mixture."""
    if isinstance(X, np.ndarray) and X.dtype != object and offsets is None:
        if X.ndim != 2:
            raise ValueError(f"X: expected descriptors of shape (n_samples, n_features), got {X.shape}")
        return X
    parts = []
    for b in iter_batches(X, None, offsets):
        desc = b.descriptors
        if isinstance(desc, pa.Array):
            n = len(desc.values) if len(desc) else 0
            first = desc.offsets[0].as_py() if len(desc) else 0
            last = desc.offsets[-1].as_py() if len(desc) else 0
            values = desc.values.slice(first, last - first) if n else desc.values
            width = desc.type.value_type.list_size
            parts.append(np.asarray(values.flatten()).reshape(-1, width))
        else:
            parts.append(desc)
    if not parts:
        raise ValueError("X has no descriptors")
    return np.concatenate(parts) if len(parts) > 1 else parts[0]

"""Arrow descriptor columns <-> NumPy matrices, without copying where possible.

Every extractor writes one row per image (see :data:`bovw.FEATURE_COLUMNS`):
``descriptors`` is ``list<fixed_size_list<float32, d>>`` (float descriptors)
or ``list<fixed_size_binary(d)>`` (uint8 descriptors such as ORB's), and
``keypoints`` is ``list<fixed_size_list<float32, 4>>`` (x, y, size, angle).
Spark moves them as *blobs*: one ``binary`` value per image holding its rows
row-major (:func:`to_blobs`), about 10x cheaper between the JVM and Python
than nested lists. Spark's own nested types (``array<array<float>>``,
``array<binary>``) come back from the JVM as ``list<list<float32>>`` and
``list<binary>``.

:func:`descriptor_matrix` reads any of these layouts into one matrix plus
per-image offsets, the form every kernel takes::

    X, offsets = bovw.descriptor_matrix(batch.column("descriptors"))
    # image i's descriptors: X[offsets[i]:offsets[i + 1]]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["descriptor_matrix", "to_blobs", "from_blobs", "to_spark_lists", "vector_matrix", "float_lists"]


def _array(column: Any) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        return column.combine_chunks()
    if isinstance(column, pa.Array):
        return column
    return pa.array(column)


def _binary_offsets(blobs: pa.Array) -> np.ndarray:
    """The n + 1 value offsets of a (large_)binary array, int64, slice-aware."""
    buf = blobs.buffers()[1]
    if buf is None or len(blobs) == 0:
        return np.zeros(1, np.int64)
    dtype = np.int64 if pa.types.is_large_binary(blobs.type) else np.int32
    return np.frombuffer(buf, dtype)[blobs.offset: blobs.offset + len(blobs) + 1].astype(np.int64)


def _null_rows_empty(offsets: np.ndarray, column: pa.Array) -> np.ndarray:
    """Offsets with null rows counted as empty (a foreign array may give a null row a span)."""
    if not column.null_count:
        return offsets
    lens = np.diff(offsets)
    lens[~column.is_valid().to_numpy(zero_copy_only=False)] = 0
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)


def _blob_matrix(blobs: pa.Array, width: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    per = width * dtype.itemsize
    offs = _binary_offsets(blobs)
    if blobs.null_count:
        lens = np.diff(offs)
        valid = blobs.is_valid().to_numpy(zero_copy_only=False)
        if lens[~valid].any():  # null values spanning bytes: copy the valid ones
            blobs = pa.array([b if v else b"" for b, v in zip(blobs.to_pylist(), valid)], pa.binary())
            offs = _binary_offsets(blobs)
    lens = np.diff(offs)
    if (lens % per).any():
        row = int(np.flatnonzero(lens % per)[0])
        raise ValueError(
            f"descriptors: row {row} holds {int(lens[row])} bytes, not a multiple of {per} "
            f"({width} x {dtype} per descriptor)"
        )
    data = blobs.buffers()[2]
    start, stop = int(offs[0]), int(offs[-1])
    if data is None or stop == start:
        X = np.zeros((0, width), dtype)
    else:
        X = np.frombuffer(data, dtype, count=(stop - start) // dtype.itemsize, offset=start).reshape(-1, width)
    return X, (offs - start) // per


def descriptor_matrix(column: Any, *, width: int | None = None, dtype: Any = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """One matrix of all the descriptors of an Arrow column, and each row's offsets.

    Parameters
    ----------
    column : pyarrow Array or ChunkedArray, one row per image
        ``list<fixed_size_list<float32, d>>`` or ``list<fixed_size_binary(d)>``
        (an extractor's ``descriptors`` or ``keypoints`` column), Spark's
        ``list<list<float>>`` / ``list<binary>``, or a blob column
        (``binary``, :func:`to_blobs`; needs ``width`` and ``dtype``). Null
        rows count as images without descriptors.
    width : int, optional
        Values per descriptor: checked when given; required for blobs.
    dtype : numpy dtype, optional
        Element type of a blob column (float32 or uint8); required for blobs.
        For list columns the result keeps the column's own type (float32,
        or uint8 for binary descriptors).

    Returns
    -------
    X : ndarray of shape (n_descriptors, width)
        float32 or uint8; a read-only view of the Arrow buffer when the layout
        allows (fixed-size lists and blobs), else a copy.
    offsets : ndarray of shape (n_rows + 1,), dtype int64
        Row i's descriptors are ``X[offsets[i]:offsets[i + 1]]``.

    Raises
    ------
    ValueError
        If descriptors of one column have different widths, differ from
        ``width``, or a blob's length is not a multiple of one descriptor;
        or a blob column is given without ``width`` and ``dtype``.
    TypeError
        If the column is not one of the layouts above.
    """
    column = _array(column)
    t = column.type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        if width is None or dtype is None:
            raise ValueError("descriptors: a blob (binary) column needs width and dtype to be read")
        return _blob_matrix(column, int(width), np.dtype(dtype))
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
        raise TypeError(f"descriptors: expected a list of descriptors or a blob column, got {t}")
    offsets = _null_rows_empty(np.asarray(column.offsets.to_numpy(zero_copy_only=False), np.int64), column)
    base = int(offsets[0])
    offsets = offsets - base
    n = int(offsets[-1])
    inner = column.values.slice(base, n)
    it = inner.type
    if pa.types.is_fixed_size_list(it):
        d = it.list_size
        values = inner.flatten()
        if not pa.types.is_floating(values.type):
            raise TypeError(f"descriptors: expected float values, got {values.type}")
        X = values.to_numpy(zero_copy_only=False)
        X = X.astype(np.float32, copy=False).reshape(n, d)
    elif pa.types.is_fixed_size_binary(it):
        d = it.byte_width
        buf = inner.buffers()[1]
        raw = np.frombuffer(buf, np.uint8) if buf is not None else np.zeros(0, np.uint8)
        X = raw[inner.offset * d: (inner.offset + n) * d].reshape(n, d)
    elif pa.types.is_binary(it) or pa.types.is_large_binary(it):
        lens = pc.binary_length(inner).to_numpy(zero_copy_only=False) if n else np.zeros(0, np.int64)
        d = int(lens[0]) if n else int(width or 0)
        if n and (lens != d).any():
            raise ValueError(f"descriptors: binary descriptors of different lengths ({sorted(set(lens.tolist()))[:5]})")
        X = _blob_matrix(pa.array([b"".join(inner.to_pylist())], pa.binary()), d, np.dtype(np.uint8))[0] \
            if n else np.zeros((0, d), np.uint8)
    elif pa.types.is_list(it) or pa.types.is_large_list(it):
        lens = pc.list_value_length(inner).to_numpy(zero_copy_only=False) if n else np.zeros(0, np.int64)
        d = int(lens[0]) if n else int(width or 0)
        if n and (lens != d).any():
            raise ValueError(f"descriptors: descriptors of different lengths ({sorted(set(lens.tolist()))[:5]})")
        X = pc.list_flatten(inner).to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(n, d)
    else:
        raise TypeError(f"descriptors: expected fixed-size lists, lists or binaries per descriptor, got {it}")
    if width is not None and n and d != int(width):
        raise ValueError(f"descriptors: expected width {width}, got {d}")
    if dtype is not None:
        X = np.ascontiguousarray(X, dtype=np.dtype(dtype))
    return X, offsets


def to_blobs(column: Any) -> pa.Array:
    """A descriptors (or keypoints) list column as one ``binary`` value per row.

    Each value holds the row's descriptors row-major (float32 little-endian,
    or bytes), built on the column's data buffer without copying it (only the
    offsets are computed). Null rows stay null; empty rows are empty values.

    Raises
    ------
    ValueError
        If the column holds 2 GB or more (a ``binary`` array's limit): use smaller batches.
    TypeError
        If the column is not a list of fixed-size lists / binaries.
    """
    column = _array(column)
    t = column.type
    if pa.types.is_binary(t):
        return column
    if not pa.types.is_list(t):
        raise TypeError(f"descriptors: expected list<fixed_size_list<float32>> or list<fixed_size_binary>, got {t}")
    inner = column.values  # ignores column.offset; column.offsets accounts for it
    vt = inner.type
    if pa.types.is_fixed_size_list(vt):
        values = inner.values  # ignores inner.offset
        if values.type != pa.float32():
            values = values.cast(pa.float32())
        per = vt.list_size * 4
        base = (values.offset + inner.offset * vt.list_size) * 4
        data = values.buffers()[1]
    elif pa.types.is_fixed_size_binary(vt):
        per = vt.byte_width
        base = inner.offset * per
        data = inner.buffers()[1]
    else:
        X, offsets = descriptor_matrix(column)
        return from_matrix(X, offsets, column.is_null() if column.null_count else None)
    offsets = np.asarray(column.offsets.to_numpy(zero_copy_only=False), np.int64) * per + base
    if len(offsets) and offsets[-1] >= 2**31:
        raise ValueError("descriptors: 2 GB or more of descriptors in one batch; use smaller batches")
    validity = pc.is_valid(column).buffers()[1] if column.null_count else None
    return pa.Array.from_buffers(
        pa.binary(), len(column), [validity, pa.py_buffer(offsets.astype(np.int32)), data or pa.py_buffer(b"")],
        null_count=column.null_count,
    )


def from_matrix(X: np.ndarray, offsets: np.ndarray, mask: Any = None) -> pa.Array:
    """Blobs from a matrix and row offsets (copies ``X`` once)."""
    X = np.ascontiguousarray(X)
    per = X.shape[1] * X.dtype.itemsize
    offs = np.asarray(offsets, np.int64) * per
    if len(offs) and offs[-1] >= 2**31:
        raise ValueError("descriptors: 2 GB or more of descriptors in one batch; use smaller batches")
    arr = pa.Array.from_buffers(pa.binary(), len(offs) - 1,
                                [None, pa.py_buffer(offs.astype(np.int32)), pa.py_buffer(X.tobytes())])
    if mask is not None:
        arr = pc.if_else(mask, pa.scalar(None, pa.binary()), arr)
    return arr


def from_blobs(blobs: Any, width: int, dtype: Any) -> pa.Array:
    """Blobs back to ``list<fixed_size_list<float32, width>>`` (float32) or
    ``list<fixed_size_binary(width)>`` (uint8), sharing the blob buffer."""
    blobs = _array(blobs)
    X, offsets = descriptor_matrix(blobs, width=width, dtype=dtype)
    if X.dtype == np.uint8:
        inner = pa.Array.from_buffers(pa.binary(width), X.shape[0], [None, pa.py_buffer(X)])
    else:
        inner = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1), pa.float32()), width)
    mask = blobs.is_null() if blobs.null_count else None
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), inner, mask=mask)


def to_spark_lists(column: Any) -> pa.Array:
    """bovw's fixed-size descriptor lists as types Spark's Arrow reader takes
    (``array<array<float>>``, ``array<binary>``)."""
    column = _array(column)
    t = column.type.value_type
    if pa.types.is_fixed_size_list(t):
        return column.cast(pa.list_(pa.list_(pa.float32())))
    if pa.types.is_fixed_size_binary(t):
        return column.cast(pa.list_(pa.binary()))
    return column


def vector_matrix(column: Any, dtype: Any = np.float64) -> np.ndarray:
    """A column of one vector per row (``list<float>``, ``fixed_size_list``;
    no nulls) as an (n_rows, d) matrix.

    Raises
    ------
    ValueError
        If the rows have different lengths or a row is null.
    """
    column = _array(column)
    n = len(column)
    if column.null_count:
        raise ValueError(f"vectors: {column.null_count} null rows")
    if pa.types.is_fixed_size_list(column.type):
        d = column.type.list_size
    else:
        lens = pc.list_value_length(column).to_numpy(zero_copy_only=False) if n else np.zeros(0, np.int64)
        d = int(lens[0]) if n else 0
        if n and (lens != d).any():
            raise ValueError(f"vectors of different lengths ({sorted(set(lens.tolist()))[:5]})")
    values = np.asarray(pc.list_flatten(column).to_numpy(zero_copy_only=False), dtype=dtype)
    return values.reshape(n, d)


def float_lists(X: np.ndarray, mask: Any = None, dtype: Any = np.float64) -> pa.Array:
    """(n, d) matrix as a ``list<double>`` (or ``list<float>``) array, Spark
    ``array<double>``; rows where ``mask`` is True are null."""
    X = np.ascontiguousarray(X, dtype=dtype)
    n, d = X.shape
    offsets = pa.array(np.arange(0, n * d + 1, d, dtype=np.int32) if n else np.zeros(1, np.int32), pa.int32())
    values = pa.array(X.reshape(-1))
    if mask is not None and np.asarray(mask).any():
        return pa.ListArray.from_arrays(offsets, values, mask=pa.array(np.asarray(mask, bool)))
    return pa.ListArray.from_arrays(offsets, values)

"""A restricted reader of PyTorch checkpoints (``.pth``/``.pt``) without torch.

PyTorch saves a ``state_dict`` with :mod:`pickle`, and unpickling runs any
callable the file names: a checkpoint from the internet is code. This reader
unpickles with a :class:`pickle.Unpickler` whose ``find_class`` allows four
kinds of global and nothing else:

- ``collections.OrderedDict`` (the ``state_dict`` container and the empty
  ``backward_hooks`` of each tensor),
- ``torch._utils._rebuild_tensor_v2`` (one tensor: a view of a storage),
- the typed storage classes ``torch.FloatStorage``, ``torch.DoubleStorage``,
  ``torch.HalfStorage``, ``torch.BFloat16Storage``, ``torch.LongStorage``,
  ``torch.IntStorage``, ``torch.ShortStorage``, ``torch.CharStorage``,
  ``torch.ByteStorage``, ``torch.BoolStorage``,

each replaced by a function of this module that only builds NumPy arrays.
Any other global raises :class:`UnsafeCheckpointError` naming it, before
anything is called.

Both of torch's file layouts are read:

- the legacy one (``torch.save(..., _use_new_zipfile_serialization=False)``,
  torch < 1.6): five pickles in a row (magic number, protocol version 1001,
  ``sys_info``, the object with persistent storage ids, the list of storage
  keys) followed by each storage as a little-endian int64 element count and
  its raw little-endian elements;
- the zip one (torch >= 1.6): ``<name>/data.pkl`` plus one
  ``<name>/data/<key>`` member per storage.

Reference: PyTorch, ``torch/serialization.py`` (``_legacy_load``,
``_load``) and ``torch/_utils.py`` (``_rebuild_tensor_v2``), read to learn
the format.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections import OrderedDict
from typing import IO, Any

import numpy as np

__all__ = ["UnsafeCheckpointError", "load_torch_checkpoint"]

#: The magic number torch's legacy format starts with (``torch.serialization.MAGIC_NUMBER``).
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
#: The legacy format's protocol version.
LEGACY_PROTOCOL = 1001

#: Storage class -> NumPy dtype (``BFloat16`` is read as float32).
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint tried to load a global outside the allowed set (or is malformed)."""


class _StorageType(str):
    """Stands for ``torch.<X>Storage`` inside the pickle."""


class _Storage:
    """A storage named by a persistent id; its data arrive later (legacy) or at once (zip)."""

    def __init__(self, kind: str, key: str, numel: int) -> None:
        self.kind = kind
        self.key = key
        self.numel = numel
        self.data: np.ndarray | None = None


class _Tensor:
    """A tensor not yet materialised: a strided view of a storage."""

    def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride

    def materialise(self, name: str) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise UnsafeCheckpointError(f"{name}: storage {self.storage.key!r} has no data in the file")
        if self.storage.kind == "BFloat16Storage":
            data = (data.astype(np.uint32) << 16).view(np.float32)
        if len(self.size) == 0:
            return np.array(data[self.offset])
        item = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset:], shape=self.size, strides=tuple(s * item for s in self.stride), writeable=False
        )
        return np.array(view, order="C")


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any, *rest: Any) -> _Tensor:
    """``torch._utils._rebuild_tensor_v2`` for the reader: checks the view fits its storage."""
    if not isinstance(storage, _Storage):
        raise UnsafeCheckpointError("_rebuild_tensor_v2: the first argument is not a storage")
    ints = (storage_offset, *size, *stride)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints):
        raise UnsafeCheckpointError("_rebuild_tensor_v2: offset, size and stride must be integers")
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride) or any(v < 0 for v in ints):
        raise UnsafeCheckpointError(f"_rebuild_tensor_v2: bad size {size} / stride {stride}")
    if 0 not in size:
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.numel:
            raise UnsafeCheckpointError(
                f"_rebuild_tensor_v2: view (offset {storage_offset}, size {size}, stride {stride}) "
                f"reads past its storage of {storage.numel} elements"
            )
    return _Tensor(storage, storage_offset, size, stride)


def _ordered_dict(*args: Any) -> OrderedDict:
    if args and not isinstance(args[0], (list, tuple, dict)):
        raise UnsafeCheckpointError("collections.OrderedDict called with a non-sequence argument")
    return OrderedDict(*args)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], storages: dict[str, _Storage], zip_reader: Any = None) -> None:
        super().__init__(file)
        self._storages = storages
        self._zip_reader = zip_reader

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return _ordered_dict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafeCheckpointError(
            f"the checkpoint tries to load the global {module}.{name}: only collections.OrderedDict, "
            "torch._utils._rebuild_tensor_v2 and torch's storage classes are allowed (a state_dict "
            "of tensors); refusing to unpickle it"
        )

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsafeCheckpointError(f"unexpected persistent id {pid!r:.80}")
        kind, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(kind, _StorageType):
            raise UnsafeCheckpointError(f"persistent id {pid!r:.80}: not a storage class")
        if not isinstance(numel, int) or numel < 0:
            if self._zip_reader is None:
                raise UnsafeCheckpointError(f"persistent id {pid!r:.80}: bad element count")
        key = str(key)
        st = self._storages.get(key)
        if st is None:
            st = _Storage(str(kind), key, int(numel) if isinstance(numel, int) else -1)
            if self._zip_reader is not None:
                st.data = self._zip_reader(st)
                st.numel = len(st.data)
            self._storages[key] = st
        return st


def _plain_load(f: IO[bytes]) -> Any:
    """One pickle that may name no global at all (the legacy headers)."""
    return _RestrictedUnpickler(f, {}).load()


def _materialise(obj: Any, name: str = "") -> Any:
    if isinstance(obj, _Tensor):
        return obj.materialise(name or "tensor")
    if isinstance(obj, dict):
        return OrderedDict((k, _materialise(v, f"{name}.{k}" if name else str(k))) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v, f"{name}[{i}]") for i, v in enumerate(obj))
    return obj


def _load_legacy(f: IO[bytes]) -> Any:
    magic = _plain_load(f)
    if magic != LEGACY_MAGIC:
        raise UnsafeCheckpointError("not a torch checkpoint (no magic number)")
    protocol = _plain_load(f)
    if protocol != LEGACY_PROTOCOL:
        raise UnsafeCheckpointError(f"unsupported torch legacy protocol {protocol!r}")
    sys_info = _plain_load(f)
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise UnsafeCheckpointError("big-endian torch checkpoints are not supported")
    storages: dict[str, _Storage] = {}
    result = _RestrictedUnpickler(f, storages).load()
    keys = _plain_load(f)
    if not isinstance(keys, list):
        raise UnsafeCheckpointError("the storage key list is missing")
    for key in keys:
        st = storages.get(str(key))
        if st is None:
            raise UnsafeCheckpointError(f"storage {key!r} is listed but no tensor uses it")
        header = f.read(8)
        if len(header) != 8:
            raise UnsafeCheckpointError(f"storage {key!r}: the file ends before its data")
        numel = int.from_bytes(header, "little", signed=True)
        dtype = STORAGE_DTYPES[st.kind]
        raw = f.read(numel * dtype.itemsize)
        if numel != st.numel or len(raw) != numel * dtype.itemsize:
            raise UnsafeCheckpointError(f"storage {key!r}: expected {st.numel} elements, found {len(raw) // dtype.itemsize}")
        st.data = np.frombuffer(raw, dtype=dtype)
    return _materialise(result)


def _load_zip(path_or_file: Any) -> Any:
    with zipfile.ZipFile(path_or_file) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if not pkl:
            raise UnsafeCheckpointError("a zip file without <name>/data.pkl is not a torch checkpoint")
        prefix = pkl[0][: -len("data.pkl")]

        def read_storage(st: _Storage) -> np.ndarray:
            member = f"{prefix}data/{st.key}"
            try:
                raw = zf.read(member)
            except KeyError:
                raise UnsafeCheckpointError(f"storage {st.key!r}: no member {member} in the zip") from None
            dtype = STORAGE_DTYPES[st.kind]
            if len(raw) % dtype.itemsize:
                raise UnsafeCheckpointError(f"storage {st.key!r}: {len(raw)} bytes is not a whole number of {dtype}")
            return np.frombuffer(raw, dtype=dtype)

        with zf.open(pkl[0]) as f:
            result = _RestrictedUnpickler(io.BytesIO(f.read()), {}, zip_reader=read_storage).load()
    return _materialise(result)


def load_torch_checkpoint(path: str | os.PathLike[str]) -> "OrderedDict[str, np.ndarray]":
    """Read a PyTorch ``state_dict`` checkpoint as NumPy arrays, without torch.

    Parameters
    ----------
    path : str or path-like
        A ``.pth``/``.pt`` file written by ``torch.save(model.state_dict())``
        in the legacy or the zip layout.

    Returns
    -------
    OrderedDict of str to ndarray
        Each tensor as a C-contiguous array of its dtype (float32, float64,
        float16, int64, ...; bfloat16 is widened to float32), in file order.
        A checkpoint that wraps its state_dict (``{"state_dict": ...}``,
        ``{"model": ...}``) is unwrapped.

    Raises
    ------
    UnsafeCheckpointError
        If the pickle names any global other than ``collections.OrderedDict``,
        ``torch._utils._rebuild_tensor_v2`` and torch's storage classes (the
        message names the global), or the file is malformed.
    FileNotFoundError
        If ``path`` does not exist.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(0)
        if head == b"PK\x03\x04":
            result = _load_zip(f)
        else:
            try:
                result = _load_legacy(f)
            except UnsafeCheckpointError:
                raise
            except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
                raise UnsafeCheckpointError(f"{path}: not a readable torch checkpoint ({e})") from e
    for wrapper in ("state_dict", "model"):
        if isinstance(result, dict) and set(result) == {wrapper} or (
            isinstance(result, dict) and wrapper in result and isinstance(result[wrapper], dict)
            and all(isinstance(v, np.ndarray) for v in result[wrapper].values())
        ):
            result = result[wrapper]
            break
    if not isinstance(result, dict):
        raise UnsafeCheckpointError(f"{path}: the checkpoint holds a {type(result).__name__}, not a state_dict")
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for k, v in result.items():
        if isinstance(v, np.ndarray):
            out[str(k)] = v
    return out

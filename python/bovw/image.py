"""Listing and decoding images.

`read_images` gives the same columns as Spark's ``binaryFile`` source
(``path``, ``modificationTime``, ``length``, ``content``) plus ``label`` and
``split``, so that the functions that take a Spark batch take this table too.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa

from bovw import _bovw

__all__ = [
    "IMAGE_EXTENSIONS",
    "list_images",
    "read_images",
    "decode_gray",
    "decode_gray_batch",
    "input_fingerprint",
    "sample_data_path",
]

#: File extensions (lower case) picked up when listing a folder.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

#: The split names recognised in a ``<root>/<split>/<class>/`` layout.
SPLIT_NAMES = {"training": "Training", "train": "Training", "test": "Test", "validation": "Validation"}


def sample_data_path() -> Path:
    """Path of the Fruits-360 sample shipped with the package.

    10 classes, 40 ``Training`` and 15 ``Test`` 100x100 JPEG images each
    (Fruits-360, Muresan & Oltean 2018, CC BY-SA 4.0; see its README.md).
    """
    return Path(__file__).parent / "data" / "fruits-360-sample"


def list_images(
    root: str | os.PathLike[str],
    *,
    test_size: float = 0.25,
    random_state: int = 0,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> list[tuple[str, str, str]]:
    """List the images under ``root`` with their label and split.

    Two layouts are recognised:

    - ``<root>/<split>/<class>/<file>`` where ``<split>`` is ``Training``/``Test``
      (Fruits-360; case-insensitive, ``train``/``test`` too): the split is the
      folder name;
    - ``<root>/<class>/<file>``: a seeded stratified split puts ``test_size``
      of each class (at least one image when the class has two or more) in
      ``Test`` and the rest in ``Training``.

    The label is the name of the image's parent folder. Files whose extension
    is not in ``extensions`` are ignored; hidden files and folders are skipped.

    Parameters
    ----------
    root : str or path-like
        The folder to list.
    test_size : float, default 0.25
        Fraction of each class put in ``Test`` for the flat layout.
    random_state : int, default 0
        Seed of the flat layout's split.
    extensions : sequence of str
        Lower-case extensions to keep, with the dot.

    Returns
    -------
    list of (path, label, split) tuples, sorted by path
        ``path`` is absolute.

    Raises
    ------
    FileNotFoundError
        If ``root`` does not exist or is not a folder.
    ValueError
        If no image is found under ``root``.
    """
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"image folder not found: {os.fspath(root)!r}")
    exts = tuple(e.lower() for e in extensions)
    subdirs = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_dirs = [p for p in subdirs if p.name.lower() in SPLIT_NAMES]
    rows: list[tuple[str, str, str]] = []

    def files_of(folder: Path) -> list[Path]:
        return sorted(
            f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in exts
        )

    if split_dirs:
        for sdir in split_dirs:
            split = SPLIT_NAMES[sdir.name.lower()]
            for cdir in sorted(p for p in sdir.iterdir() if p.is_dir() and not p.name.startswith(".")):
                rows.extend((str(f.resolve()), cdir.name, split) for f in files_of(cdir))
    else:
        by_class: dict[str, list[Path]] = defaultdict(list)
        for cdir in subdirs:
            by_class[cdir.name].extend(files_of(cdir))
        rng = random.Random(random_state)
        for label in sorted(by_class):
            files = by_class[label]
            order = list(range(len(files)))
            rng.shuffle(order)
            n_test = int(round(test_size * len(files)))
            if len(files) >= 2:
                n_test = min(max(n_test, 1), len(files) - 1)
            else:
                n_test = 0
            test_idx = set(order[:n_test])
            rows.extend(
                (str(f.resolve()), label, "Test" if i in test_idx else "Training") for i, f in enumerate(files)
            )
    if not rows:
        raise ValueError(
            f"no images ({', '.join(exts)}) found under {os.fspath(root)!r}: expected "
            "<root>/<split>/<class>/<file> or <root>/<class>/<file>"
        )
    rows.sort()
    return rows


def read_images(
    root: str | os.PathLike[str],
    *,
    test_size: float = 0.25,
    random_state: int = 0,
) -> pa.Table:
    """Read the images under ``root`` into a pyarrow Table.

    The columns are those of Spark's ``binaryFile`` source plus the label and
    split: ``path`` (string, a ``file:`` URI as Spark writes it),
    ``modificationTime`` (timestamp[us, UTC]), ``length`` (int64, bytes),
    ``content`` (binary, the encoded file), ``label`` (string, the parent
    folder's name) and ``split`` (string, ``Training`` or ``Test``). One row per
    file; unreadable files are not skipped silently: the OS error is raised.

    See :func:`list_images` for the folder layouts and the split.

    Returns
    -------
    pyarrow.Table with n_images rows

    Raises
    ------
    FileNotFoundError
        If ``root`` does not exist.
    ValueError
        If it holds no image.
    """
    rows = list_images(root, test_size=test_size, random_state=random_state)
    paths, mtimes, lengths, contents, labels, splits = [], [], [], [], [], []
    for path, label, split in rows:
        p = Path(path)
        st = p.stat()
        data = p.read_bytes()
        paths.append(p.as_uri())
        mtimes.append(int(st.st_mtime * 1_000_000))
        lengths.append(len(data))
        contents.append(data)
        labels.append(label)
        splits.append(split)
    return pa.table(
        {
            "path": pa.array(paths, pa.string()),
            "modificationTime": pa.array(mtimes, pa.timestamp("us", tz="UTC")),
            "length": pa.array(lengths, pa.int64()),
            "content": pa.array(contents, pa.binary()),
            "label": pa.array(labels, pa.string()),
            "split": pa.array(splits, pa.string()),
        }
    )


def input_fingerprint(table: pa.Table) -> dict[str, object]:
    """Count and SHA-256 of the ``content`` column, in path order.

    Returns
    -------
    dict with ``n_files`` (int) and ``sha256`` (hex str): the hash of each
    file's SHA-256 digest in sorted-path order, so it does not depend on
    where the folder lives.
    """
    digests = []
    names = [p.rsplit("/", 3)[-3:] for p in table.column("path").to_pylist()]
    for name, content in zip(names, table.column("content").to_pylist()):
        digests.append(("/".join(name), hashlib.sha256(content or b"").hexdigest()))
    h = hashlib.sha256()
    for name, d in sorted(digests):
        h.update(name.encode())
        h.update(d.encode())
    return {"n_files": len(digests), "sha256": h.hexdigest()}


def decode_gray(data: bytes) -> np.ndarray:
    """Decode JPEG or PNG bytes to an 8-bit grayscale image.

    Color images are reduced with OpenCV's ``cvtColor(BGR2GRAY)`` fixed-point
    weights (0.299 R + 0.587 G + 0.114 B, 14-bit); alpha is dropped.

    Returns
    -------
    ndarray of shape (height, width), dtype uint8

    Raises
    ------
    ValueError
        If the bytes are empty, not a JPEG/PNG, truncated or corrupt, or the
        image is not 8-bit; the message says which.
    """
    return _bovw.decode_gray_image(bytes(data))


def decode_gray_batch(content: object, n_threads: int | None = None) -> tuple[list, list]:
    """Decode a binary Arrow array of encoded images in parallel.

    Parameters
    ----------
    content : pyarrow binary Array (or any ``__arrow_c_array__`` object)
    n_threads : int, optional
        Threads to use; default all cores (``RAYON_NUM_THREADS``).

    Returns
    -------
    images : list of (ndarray of shape (h, w), dtype uint8) or None
    errors : list of str or None
        One entry per row; exactly one of ``images[i]`` and ``errors[i]`` is None.
    """
    if isinstance(content, pa.ChunkedArray):
        content = content.combine_chunks()
    return _bovw.decode_gray_batch(content, n_threads=n_threads)


def _iter_batches(data: object) -> Iterable[pa.RecordBatch]:
    if isinstance(data, pa.RecordBatch):
        yield data
    elif isinstance(data, pa.Table):
        yield from data.to_batches()
    elif hasattr(data, "__arrow_c_stream__"):
        yield from pa.RecordBatchReader.from_stream(data)
    elif hasattr(data, "__arrow_c_array__"):
        yield pa.record_batch(data)
    else:
        raise TypeError(f"expected a pyarrow RecordBatch or Table (or an Arrow C data object), got {type(data).__name__}")

"""Listing and decoding images.

`read_images` gives the same columns as Spark's ``binaryFile`` source
(``path``, ``modificationTime``, ``length``, ``content``) plus ``label`` and
``split``, so that the functions that take a Spark batch take this table too.
"""

from __future__ import annotations

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
    "decode_rgb",
    "display_path",
    "label_split_rows",
    "read_file",
    "seeded_splits",
    "split_name",
    "sample_data_path",
]

#: File extensions (lower case) picked up when listing a folder.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

#: Split folder names (lower case) and the split they stand for. Model choices
#: use ``Validation`` when there is one; accuracy is reported on ``Test``.
SPLIT_NAMES = {
    "training": "Training",
    "train": "Training",
    "test": "Test",
    "testing": "Test",
    "validation": "Validation",
    "val": "Validation",
    "valid": "Validation",
}


def sample_data_path() -> Path:
    """Path of the Fruits-360 sample shipped with the package.

    10 classes, 40 ``Training`` and 15 ``Test`` 100x100 JPEG images each
    (Fruits-360, Muresan & Oltean 2018, CC BY-SA 4.0; see its README.md).
    """
    return Path(__file__).parent / "data" / "fruits-360-sample"


def split_name(folder: str) -> str | None:
    """The split a folder name stands for (:data:`SPLIT_NAMES`, case-insensitive), or None."""
    return SPLIT_NAMES.get(folder.lower())


def seeded_splits(paths: Sequence[str], labels: Sequence[str], test_size: float, seed: int) -> list[str]:
    """The split of a flat ``<root>/<class>/`` layout: per class, in path
    order, a seeded shuffle (``random.Random(seed)``, classes in sorted order)
    puts ``round(test_size * n)`` images in ``Test`` (at least 1 and at most
    ``n - 1`` when the class has two or more images), the rest in ``Training``.

    Both engines call this on the same listing, so they split alike.
    """
    by_class: dict[str, list[int]] = defaultdict(list)
    for i in sorted(range(len(paths)), key=lambda i: paths[i]):
        by_class[labels[i]].append(i)
    rng = random.Random(seed)
    out = ["Training"] * len(paths)
    for label in sorted(by_class):
        idx = by_class[label]
        order = list(range(len(idx)))
        rng.shuffle(order)
        n_test = int(round(test_size * len(idx)))
        n_test = min(max(n_test, 1), len(idx) - 1) if len(idx) >= 2 else 0
        for j in order[:n_test]:
            out[idx[j]] = "Test"
    return out


def label_split_rows(relative: Sequence[Sequence[str]], names: Sequence[str], *, test_size: float = 0.25,
                     random_state: int = 0) -> list[tuple[str, str, str]]:
    """(name, label, split) rows of a layout from each image's path parts below the root.

    ``relative[i]`` lists the folders and file name of image ``names[i]``
    below the root. When some image is at ``<split>/<class>/<file>`` with a
    split name (:data:`SPLIT_NAMES`), the layout is a split one: those images
    are the rows, with their folder's split (others, e.g. in a ``docs/``
    folder, are not images of the layout). Otherwise the rows are the
    ``<class>/<file>`` images, split by :func:`seeded_splits`. The label is
    the class folder's name. Rows come sorted by name. Local folders
    (:func:`list_images`) and S3 prefixes are listed by these same rules.
    """
    split_rows = [i for i, p in enumerate(relative) if len(p) == 3 and split_name(p[0])]
    if split_rows:
        rows = [(names[i], display_path(relative[i][1]), split_name(relative[i][0]) or "") for i in split_rows]
    else:
        flat = [i for i, p in enumerate(relative) if len(p) == 2]
        labels = [display_path(relative[i][0]) for i in flat]
        splits = seeded_splits([names[i] for i in flat], labels, test_size, random_state)
        rows = [(names[i], lab, sp) for i, lab, sp in zip(flat, labels, splits)]
    rows.sort(key=lambda r: r[0])
    return rows


def list_images(
    root: str | os.PathLike[str],
    *,
    test_size: float = 0.25,
    random_state: int = 0,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> list[tuple[str, str, str]]:
    """List the images under ``root`` with their label and split.

    Two layouts are recognised:

    - ``<root>/<split>/<class>/<file>`` where ``<split>`` is a split name
      (:data:`SPLIT_NAMES`: ``Training``/``Test`` as in Fruits-360,
      ``train``/``val``/``test``, ``training``/``testing``, ``validation``;
      case-insensitive): the split is the folder's;
    - ``<root>/<class>/<file>``: :func:`seeded_splits` puts ``test_size`` of
      each class in ``Test`` and the rest in ``Training``.

    The label is the name of the image's parent folder. Every entry whose
    name has an image extension is listed, whatever it is: a regular file, a
    symbolic link (also a broken one or a loop), a FIFO or a device. Reading
    it (:func:`read_file`) then either gives its bytes or says why not, so no
    entry is dropped silently. Hidden files and folders (``.name``) are skipped.

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
        ``path`` is absolute, symbolic links not resolved (an image is named
        by the link that lists it).

    Raises
    ------
    FileNotFoundError
        If ``root`` does not exist or is not a folder.
    PermissionError
        If ``root`` or a class folder cannot be listed (the message names it).
    ValueError
        If no image is found under ``root``.
    """
    base = Path(os.path.abspath(os.fspath(root)))
    if not base.is_dir():
        raise FileNotFoundError(f"image folder not found: {os.fspath(root)!r}")
    exts = tuple(e.lower() for e in extensions)

    def entries(folder: Path) -> list[os.DirEntry]:
        try:
            with os.scandir(folder) as it:
                return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        except PermissionError as e:
            raise PermissionError(f"cannot list folder {str(folder)!r}: {e.strerror}") from None

    def is_dir(e: os.DirEntry) -> bool:
        try:
            return e.is_dir()  # follows symbolic links
        except OSError:
            return False

    relative: list[list[str]] = []
    names: list[str] = []

    def visit(folder: Path, parts: list[str], depth: int) -> None:
        for e in entries(folder):
            if is_dir(e):
                if depth < 2:
                    visit(Path(e.path), parts + [e.name], depth + 1)
            elif os.path.splitext(e.name)[1].lower() in exts and depth >= 1:
                relative.append(parts + [e.name])
                names.append(e.path)

    visit(base, [], 0)
    rows = label_split_rows(relative, names, test_size=test_size, random_state=random_state)
    if not rows:
        raise ValueError(
            f"no images ({', '.join(exts)}) found under {os.fspath(root)!r}: expected "
            "<root>/<split>/<class>/<file> or <root>/<class>/<file>"
        )
    return rows


def display_path(path: str) -> str:
    """A path as valid UTF-8 text: bytes of a file name that are not UTF-8
    (kept by Python as surrogate escapes) are written ``\\xNN``. Outputs
    (``features.parquet``, ``errors.csv``, the report) name files this way."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def read_file(path: str) -> tuple[bytes | None, str | None]:
    """Read one listed image file: ``(bytes, None)`` or ``(None, reason)``.

    Never raises for a bad entry: a broken symbolic link, a loop of links, a
    FIFO or device (refused without opening, so a FIFO cannot block the
    job), a folder, a file that cannot be opened or read each give a reason.
    """
    import stat

    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return None, "broken symbolic link (its target does not exist)"
        return None, "file not found (removed after listing?)"
    except OSError as e:
        return None, f"cannot read file: {e.strerror or e}"
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        return None, f"not a regular file ({kind})"
    try:
        with open(path, "rb") as f:
            return f.read(), None
    except OSError as e:
        return None, f"cannot read file: {e.strerror or e}"


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


#: Default decode limits: 50 megapixels, 16384 pixels a side.
MAX_PIXELS = 50_000_000
MAX_SIDE = 16_384


def decode_gray(data: bytes, *, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE) -> np.ndarray:
    """Decode JPEG or PNG bytes to an 8-bit grayscale image.

    Color images are reduced with OpenCV's ``cvtColor(BGR2GRAY)`` fixed-point
    weights (0.299 R + 0.587 G + 0.114 B, 14-bit); alpha is dropped.

    Decoding is strict (corrupt, cut-off or resynchronised scan data is an
    error; bytes after a JPEG's end marker are ignored; PNG checksums are
    verified), and the size in the header is checked against the limits
    before any pixel buffer is allocated. See ``docs/reliability.md``.

    Parameters
    ----------
    data : bytes
        The encoded file.
    max_pixels : int, default 50_000_000
        Largest ``width * height`` decoded, 1 to 2**32 - 1.
    max_side : int, default 16384
        Largest width or height decoded, 1 to 2**32 - 1.

    Returns
    -------
    ndarray of shape (height, width), dtype uint8

    Raises
    ------
    ValueError
        If the bytes are empty, not a JPEG/PNG, truncated or corrupt, the
        image is not 8-bit or is over a limit (the message gives its size and
        the limit), or a limit is out of range.
    """
    return _bovw.decode_gray_image(bytes(data), max_pixels=max_pixels, max_side=max_side)


def decode_rgb(data: bytes, *, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE) -> np.ndarray:
    """Decode JPEG or PNG bytes to an 8-bit RGB image.

    Channels are in R, G, B order (``cv2.imread`` gives B, G, R: reverse the
    last axis to compare). Gray files have their level replicated in the three
    channels, as ``cv2.imread(..., IMREAD_COLOR)`` does; alpha is dropped.
    Strict, and limited, as :func:`decode_gray`.

    Parameters
    ----------
    data : bytes
    max_pixels, max_side : int
        As :func:`decode_gray`.

    Returns
    -------
    ndarray of shape (height, width, 3), dtype uint8

    Raises
    ------
    ValueError
        As :func:`decode_gray`.
    """
    return _bovw.decode_rgb_image(bytes(data), max_pixels=max_pixels, max_side=max_side)


def decode_gray_batch(
    content: object,
    n_threads: int | None = None,
    *,
    max_pixels: int = MAX_PIXELS,
    max_side: int = MAX_SIDE,
) -> tuple[list, list]:
    """Decode a binary Arrow array of encoded images in parallel.

    Parameters
    ----------
    content : pyarrow binary Array (or any ``__arrow_c_array__`` object)
    n_threads : int, optional
        Threads to use, 1 to 256; default all cores (``RAYON_NUM_THREADS``).
    max_pixels, max_side : int
        As :func:`decode_gray`; an image over a limit gets an error entry.

    Returns
    -------
    images : list of (ndarray of shape (h, w), dtype uint8) or None
    errors : list of str or None
        One entry per row; exactly one of ``images[i]`` and ``errors[i]`` is None.
    """
    if isinstance(content, pa.ChunkedArray):
        content = content.combine_chunks()
    return _bovw.decode_gray_batch(content, n_threads=n_threads, max_pixels=max_pixels, max_side=max_side)


def _iter_batches(data: object) -> Iterable[pa.RecordBatch]:
    """The record batches of a RecordBatch, Table, or Arrow C stream/array of
    struct type (a table); raises TypeError for anything else, naming it."""
    if isinstance(data, pa.RecordBatch):
        yield data
        return
    if isinstance(data, pa.Table):
        yield from data.to_batches()
        return
    try:
        if hasattr(data, "__arrow_c_stream__"):
            batches: Iterable[pa.RecordBatch] = pa.RecordBatchReader.from_stream(data)
        elif hasattr(data, "__arrow_c_array__"):
            batches = [pa.record_batch(data)]
        else:
            raise TypeError(f"expected a pyarrow RecordBatch or Table (or an Arrow C data object), "
                            f"got {type(data).__name__}")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        # a plain (non-struct) array or stream, such as the binary column alone
        raise TypeError(f"expected a pyarrow RecordBatch or Table with a binary column of encoded images, got "
                        f"{type(data).__name__} ({e}); wrap an array: pa.table({{'content': array}})") from None
    yield from batches
